//! The register-blocked inner product of the convolution GEMM, one per instruction set, chosen at run
//! time: acc[MR rows × NR pixels] = Σ_k W[k][row] · B[k][pixel], with W packed k-major in MR-row
//! panels and B packed k-major in NR-pixel panels (see `implicit_gemm`). The result goes to a small
//! MR×NR tile that the caller's epilogue reads; at K ≥ ~30 that extra pass costs well under 5 %.

/// Which micro-kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 8 to 14 rows × 32 pixels (up to 28 zmm accumulators), rows chosen per conv.
    Avx512,
    /// AVX2 + FMA: 6 rows × 16 pixels (12 ymm accumulators).
    Avx2Fma,
    /// Plain Rust, for every other CPU.
    Portable,
}

impl Isa {
    /// The best kernel this CPU supports. `INFNET_ISA=avx512|avx2|portable` caps it (for tests and comparisons).
    pub fn detect() -> Isa {
        let best = Isa::best_supported();
        match std::env::var("INFNET_ISA").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") if best != Isa::Portable => Isa::Avx2Fma,
            _ => best,
        }
    }

    fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// Every kernel this CPU can run, best first (tests check each against the reference).
    pub fn all_supported() -> Vec<Isa> {
        match Isa::best_supported() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2Fma, Isa::Portable],
            Isa::Avx2Fma => vec![Isa::Avx2Fma, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }

    /// Output rows per panel for a conv with `cout` output channels. AVX-512 has kernels for 8 to 14
    /// rows: more rows means fewer B loads per FMA (≈ 180 GFLOP/s/core at 8 rows, ≈ 190 at 12–14,
    /// peak 212 on the reference machine), but rows past `cout` in the last block are wasted work, so
    /// the choice weighs both (26, 52, 104, 208 take 13; 64 and 256 take 13 with one to four spare rows).
    pub fn mr_for(self, cout: usize) -> usize {
        match self {
            Isa::Avx512 => {
                let cost = |mr: usize| cout.div_ceil(mr) as f64 * mr as f64 / (0.80 + 0.01 * mr as f64);
                (AVX512_MIN_MR..=AVX512_MAX_MR).rev().min_by(|a, b| cost(*a).total_cmp(&cost(*b))).unwrap_or(8)
            }
            _ => self.mr(),
        }
    }

    /// Default output rows per panel (the Winograd path's GEMM uses it).
    pub fn mr(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2Fma => 6,
            Isa::Portable => 4,
        }
    }

    /// Pixels per panel.
    pub fn nr(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2Fma => 16,
            Isa::Portable => 16,
        }
    }
}

const AVX512_MIN_MR: usize = 8;
const AVX512_MAX_MR: usize = 14;

/// Largest MR × NR over all kernels: the size of a caller's tile buffer.
pub const MAX_TILE: usize = AVX512_MAX_MR * 32;

/// tile[r * nr + j] (+)= Σ_{k < kn} w[k * mr + r] · b[k * nr + j]: `accumulate` adds to what the tile
/// holds (a K-blocked GEMM's later chunks), otherwise the tile is overwritten.
///
/// # Safety
/// `w` holds kn·mr floats, `b` kn·nr floats and `tile` mr·nr floats, for `isa`'s nr; `mr` is
/// `isa.mr_for(..)` for some cout (for AVX-512, 8 to 14; otherwise `isa.mr()`); `isa` is supported by this CPU.
pub unsafe fn run(isa: Isa, mr: usize, kn: usize, w: *const f32, b: *const f32, tile: *mut f32, accumulate: bool) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match mr {
            8 => avx512::<8>(kn, w, b, tile, accumulate),
            9 => avx512::<9>(kn, w, b, tile, accumulate),
            10 => avx512::<10>(kn, w, b, tile, accumulate),
            11 => avx512::<11>(kn, w, b, tile, accumulate),
            12 => avx512::<12>(kn, w, b, tile, accumulate),
            13 => avx512::<13>(kn, w, b, tile, accumulate),
            14 => avx512::<14>(kn, w, b, tile, accumulate),
            _ => unreachable!("no AVX-512 kernel for {mr} rows"),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => avx2(kn, w, b, tile, accumulate),
        _ => portable(kn, w, b, tile, accumulate),
    }
}

/// MR rows × 32 pixels. The k loop is unrolled by four: without it the loop overhead and the
/// dependent address arithmetic cost ~15 % at 8 rows (criterion `microkernel/*`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<const MR: usize>(kn: usize, w: *const f32, b: *const f32, tile: *mut f32, accumulate: bool) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if accumulate {
        for r in 0..MR {
            acc[r] = [_mm512_loadu_ps(tile.add(r * NR)), _mm512_loadu_ps(tile.add(r * NR + 16))];
        }
    }
    macro_rules! step {
        ($k:expr) => {{
            let bp = b.add($k * NR);
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            let wp = w.add($k * MR);
            for r in 0..MR {
                let a = _mm512_set1_ps(*wp.add(r));
                acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
            }
        }};
    }
    let mut k = 0;
    while k + 4 <= kn {
        step!(k);
        step!(k + 1);
        step!(k + 2);
        step!(k + 3);
        k += 4;
    }
    while k < kn {
        step!(k);
        k += 1;
    }
    let t = tile;
    for r in 0..MR {
        _mm512_storeu_ps(t.add(r * NR), acc[r][0]);
        _mm512_storeu_ps(t.add(r * NR + 16), acc[r][1]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(kn: usize, w: *const f32, b: *const f32, tile: *mut f32, accumulate: bool) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if accumulate {
        for r in 0..MR {
            acc[r] = [_mm256_loadu_ps(tile.add(r * NR)), _mm256_loadu_ps(tile.add(r * NR + 8))];
        }
    }
    for k in 0..kn {
        let bp = b.add(k * NR);
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        let wp = w.add(k * MR);
        for r in 0..MR {
            let a = _mm256_broadcast_ss(&*wp.add(r));
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    let t = tile;
    for r in 0..MR {
        _mm256_storeu_ps(t.add(r * NR), acc[r][0]);
        _mm256_storeu_ps(t.add(r * NR + 8), acc[r][1]);
    }
}

unsafe fn portable(kn: usize, w: *const f32, b: *const f32, tile: *mut f32, accumulate: bool) {
    const MR: usize = 4;
    const NR: usize = 16;
    let tile = std::slice::from_raw_parts_mut(tile, MR * NR);
    let mut acc = [[0.0f32; NR]; MR];
    if accumulate {
        for r in 0..MR {
            acc[r].copy_from_slice(&tile[r * NR..(r + 1) * NR]);
        }
    }
    let (w, b) = (std::slice::from_raw_parts(w, kn * MR), std::slice::from_raw_parts(b, kn * NR));
    for k in 0..kn {
        let bk = &b[k * NR..(k + 1) * NR];
        for r in 0..MR {
            let a = w[k * MR + r];
            for j in 0..NR {
                acc[r][j] += a * bk[j];
            }
        }
    }
    for r in 0..MR {
        tile[r * NR..(r + 1) * NR].copy_from_slice(&acc[r]);
    }
}
