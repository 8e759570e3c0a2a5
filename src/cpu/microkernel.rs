//! The register-blocked inner product of the convolution GEMM, one per instruction set, chosen at run
//! time: acc[MR rows × NR pixels] = Σ_k W[k][row] · B[k][pixel], with W packed k-major in MR-row
//! panels and B packed k-major in NR-pixel panels (see `implicit_gemm`). The result goes to a small
//! MR×NR tile that the caller's epilogue reads; at K ≥ ~30 that extra pass costs well under 5 %.

/// Which micro-kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 8 rows × 32 pixels (16 zmm accumulators).
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

    /// Output rows per panel.
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

/// Largest MR × NR over all kernels: the size of a caller's tile buffer.
pub const MAX_TILE: usize = 8 * 32;

/// tile[r * nr + j] = Σ_{k < kn} w[k * mr + r] · b[k * nr + j].
///
/// # Safety
/// `w` holds kn·mr floats, `b` kn·nr floats, for `isa`'s mr and nr; `isa` is supported by this CPU.
pub unsafe fn run(isa: Isa, kn: usize, w: *const f32, b: *const f32, tile: &mut [f32; MAX_TILE]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512(kn, w, b, tile),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => avx2(kn, w, b, tile),
        _ => portable(kn, w, b, tile),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(kn: usize, w: *const f32, b: *const f32, tile: &mut [f32; MAX_TILE]) {
    use std::arch::x86_64::*;
    const MR: usize = 8;
    const NR: usize = 32;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for k in 0..kn {
        let bp = b.add(k * NR);
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        let wp = w.add(k * MR);
        for r in 0..MR {
            let a = _mm512_set1_ps(*wp.add(r));
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    let t = tile.as_mut_ptr();
    for r in 0..MR {
        _mm512_storeu_ps(t.add(r * NR), acc[r][0]);
        _mm512_storeu_ps(t.add(r * NR + 16), acc[r][1]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(kn: usize, w: *const f32, b: *const f32, tile: &mut [f32; MAX_TILE]) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
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
    let t = tile.as_mut_ptr();
    for r in 0..MR {
        _mm256_storeu_ps(t.add(r * NR), acc[r][0]);
        _mm256_storeu_ps(t.add(r * NR + 8), acc[r][1]);
    }
}

unsafe fn portable(kn: usize, w: *const f32, b: *const f32, tile: &mut [f32; MAX_TILE]) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0.0f32; NR]; MR];
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
