//! Convolution as an implicit GEMM: y[cout × pixels] = W[cout × K] · cols[K × pixels], K = cin·kh·kw,
//! without materialising im2col. The output pixels are cut into panels of NR; each panel's K×NR slice
//! of `cols` is gathered (with padding, stride, dilation and `x_add`) into a per-thread buffer that
//! stays in L2, then every MR-row block of the pre-packed weights runs the micro-kernel over it and
//! the epilogue (scale, bias, residual, ReLU, mul) is applied while the tile is still in registers'
//! reach, so the output is written exactly once.
//!
//! Work is split over (image, panel range, row-block range) tasks: wide maps split by panels only
//! (each panel gathered once); small maps (11×11, 22×22) also split the output channels so that both
//! cores stay busy.

use super::conv::Epilogue;
use super::microkernel::{self, Isa, MAX_TILE};
use super::tensor::SendPtr;
use super::tensor::{In, Out};
use crate::graph::ConvParam;
use rayon::prelude::*;

/// Weights re-laid out for one micro-kernel: for each block of MR output rows, K rows of MR floats
/// (rows past cout are zero).
pub struct PackedConv {
    pub isa: Isa,
    /// Output rows per block (`isa.mr_for(cout)`).
    pub mr: usize,
    k: usize,
    blocks: usize,
    /// Input channels per K chunk: K is cut into chunks of `ci_chunk · kh · kw` rows (≈ 256) so that
    /// one weight block's chunk (≤ 14 KiB) stays in L1 while it runs over every gathered panel.
    ci_chunk: usize,
    taps: usize,
    w: Vec<f32>,
}

/// Rows of K per chunk that the chunking aims for.
const K_CHUNK: usize = 256;

impl PackedConv {
    pub fn new(p: &ConvParam, isa: Isa) -> PackedConv {
        let (mr, taps) = (isa.mr_for(p.cout), p.kh * p.kw);
        let k = p.cin * taps;
        let blocks = p.cout.div_ceil(mr);
        let mut w = vec![0.0f32; blocks * k * mr];
        for o in 0..p.cout {
            let (blk, r) = (o / mr, o % mr);
            for kk in 0..k {
                w[(blk * k + kk) * mr + r] = p.weight[o * k + kk];
            }
        }
        // Equal chunks, e.g. 1024 channels → 4 × 256, 416 → 2 × 208, 3×3 over 208 → 8 × 26 (234 rows).
        let target = (K_CHUNK / taps).max(1);
        let ci_chunk = p.cin.div_ceil(p.cin.div_ceil(target));
        PackedConv { isa, mr, k, blocks, ci_chunk, taps, w }
    }

    fn k_chunks(&self) -> usize {
        (self.k / self.taps).div_ceil(self.ci_chunk)
    }

    /// Panels gathered together: each MR-row weight block's K chunk is then reused over all of them
    /// while it is in L1, and the gathered chunk stays in L2 (≤ 512 KiB). With more than one K chunk,
    /// the partial sums of every (panel, block) tile are kept too (≤ 512 KiB).
    fn max_chunk(&self) -> usize {
        let nr = self.isa.nr();
        let gathered = 131072 / (self.ci_chunk * self.taps * nr).max(1);
        let sums = if self.k_chunks() > 1 { 131072 / (self.blocks * self.mr * nr) } else { usize::MAX };
        gathered.min(sums).clamp(1, 16)
    }

    /// Floats of scratch one worker thread needs for this conv: the gathered panels and the tiles.
    pub fn panel_len(&self) -> usize {
        let nr = self.isa.nr();
        let tiles = if self.k_chunks() > 1 { self.max_chunk() * self.blocks } else { 1 };
        self.max_chunk() * self.ci_chunk * self.taps * nr + tiles * MAX_TILE
    }
}

/// Runs the conv. `scratch` must hold `panel_len()` floats for each thread of the current rayon pool.
pub fn conv2d(p: &ConvParam, pk: &PackedConv, x: In, x_add: Option<In>, y: Out, ep: Epilogue, scratch: &mut [f32]) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!(xs.c, p.cin);
    assert_eq!(ys.c, p.cout);
    assert_eq!(p.out_size(xs.h, xs.w), (ys.h, ys.w));
    assert_eq!(pk.k, p.cin * p.kh * p.kw);
    let (isa, nr, mr) = (pk.isa, pk.isa.nr(), pk.mr);
    let workers = rayon::current_num_threads();
    let per_thread = pk.panel_len();
    assert!(scratch.len() >= workers * per_thread, "conv scratch too small");
    let pixels = ys.hw();
    let panels = pixels.div_ceil(nr);
    let total = xs.n * panels;
    let (groups, panels_per_task) = if total <= 4 {
        // A handful of panels (one 11×11 image): every thread takes a share of the row blocks over
        // all panels, so each weight is read once per conv rather than once per panel.
        (pk.blocks.min(workers), total.min(pk.max_chunk()))
    } else {
        // Enough tasks to balance the threads; row-block groups only when the panels alone are too
        // few; several tasks per thread for balance, each as many panels as the gather buffer holds.
        let groups = if total >= 4 * workers { 1 } else { pk.blocks.min((4 * workers).div_ceil(total)) };
        (groups, pk.max_chunk().min((total / (4 * workers)).max(1)))
    };
    let blocks_per_group = pk.blocks.div_ceil(groups);
    let chunks = total.div_ceil(panels_per_task);
    let k_chunks = pk.k_chunks();
    let gather_len = pk.max_chunk() * pk.ci_chunk * pk.taps * nr;
    let pointwise = pk.taps == 1 && p.stride == 1 && p.pad_h == 0 && p.pad_w == 0 && x_add.is_none();
    let scratch_ptr = SendPtr(scratch.as_mut_ptr());
    (0..chunks * groups).into_par_iter().for_each(|task| {
        let (chunk, group) = (task / groups, task % groups);
        let me = rayon::current_thread_index().unwrap_or(0);
        assert!(me < workers, "conv run outside the pool it was sized for");
        // SAFETY: each worker thread uses only its own `per_thread`-sized slice of the scratch.
        let mine = unsafe { std::slice::from_raw_parts_mut(scratch_ptr.get().add(me * per_thread), per_thread) };
        let (cols, tiles) = mine.split_at_mut(gather_len);
        let b0 = group * blocks_per_group;
        let b1 = (b0 + blocks_per_group).min(pk.blocks);
        let ts = chunk * panels_per_task..((chunk + 1) * panels_per_task).min(total);
        for kc in 0..k_chunks {
            let ci0 = kc * pk.ci_chunk;
            let ci1 = (ci0 + pk.ci_chunk).min(p.cin);
            let kn = (ci1 - ci0) * pk.taps;
            let one = kn * nr;
            if pointwise {
                // 1×1 without x_add: each input plane is read as one run over the task's panels (long
                // sequential streams the hardware prefetcher follows) rather than 32 pixels at a time.
                for ci in ci0..ci1 {
                    for (c, t) in ts.clone().enumerate() {
                        let (i, p0) = (t / panels, (t % panels) * nr);
                        let cnt = nr.min(pixels - p0);
                        // SAFETY: the view is live for the whole conv.
                        let src = unsafe { &x.plane(i, ci)[p0..p0 + cnt] };
                        let row = &mut cols[c * one + (ci - ci0) * nr..][..nr];
                        row[..cnt].copy_from_slice(src);
                        row[cnt..].fill(0.0);
                    }
                }
            } else {
                for (c, t) in ts.clone().enumerate() {
                    let (i, p0) = (t / panels, (t % panels) * nr);
                    gather(p, x, x_add, i, p0, nr.min(pixels - p0), nr, ys.w, ci0..ci1, isa == Isa::Avx512, &mut cols[c * one..(c + 1) * one]);
                }
            }
            let last = kc + 1 == k_chunks;
            for blk in b0..b1 {
                let w = pk.w[(blk * pk.k + ci0 * pk.taps) * mr..].as_ptr();
                for (c, t) in ts.clone().enumerate() {
                    let (i, p0) = (t / panels, (t % panels) * nr);
                    // One tile per (panel, block) while partial sums carry over K chunks, else one tile.
                    let tile = if k_chunks > 1 { &mut tiles[(c * pk.blocks + blk) * MAX_TILE..][..MAX_TILE] } else { &mut tiles[..MAX_TILE] };
                    // SAFETY: the weight chunk holds kn·mr floats, each gathered panel kn·nr, a tile MAX_TILE; the isa was detected.
                    unsafe { microkernel::run(isa, mr, kn, w, cols[c * one..].as_ptr(), tile.as_mut_ptr(), kc > 0) };
                    if last {
                        let tile: &[f32; MAX_TILE] = (&*tile).try_into().expect("tile of MAX_TILE floats");
                        store(p, tile, isa, mr, blk, i, p0, nr.min(pixels - p0), y, &ep);
                    }
                }
            }
        }
    });
}

/// cols[k · nr + j] = input value that kernel tap k (= (ci·kh + ky)·kw + kx) sees at output pixel p0 + j,
/// for j < cnt; zero for j ≥ cnt. Output pixels are walked in runs along one output row, so that for
/// stride 1 each tap is one contiguous copy with zeroed borders.
#[allow(clippy::too_many_arguments)]
fn gather(p: &ConvParam, x: In, x_add: Option<In>, i: usize, p0: usize, cnt: usize, nr: usize, ow: usize, cis: std::ops::Range<usize>, avx512: bool, cols: &mut [f32]) {
    let xs = x.shape;
    let taps = p.kh * p.kw;
    let pointwise = taps == 1 && p.stride == 1 && p.pad_h == 0 && p.pad_w == 0;
    let ci0 = cis.start;
    #[cfg(target_arch = "x86_64")]
    if avx512 && nr == 32 && !pointwise && p.stride <= 2 {
        // SAFETY: the caller detected AVX-512F; the views are live for the whole conv.
        unsafe {
            match p.stride {
                1 => gather_strided_avx512::<1>(p, x, x_add, i, p0, cnt, ow, cis, cols),
                _ => gather_strided_avx512::<2>(p, x, x_add, i, p0, cnt, ow, cis, cols),
            }
        }
        return;
    }
    if cnt < nr {
        for k in 0..cis.len() * taps {
            cols[k * nr + cnt..(k + 1) * nr].fill(0.0);
        }
    }
    for ci in cis {
        // SAFETY: the views are live for the whole conv (executor contract).
        let (src, add) = unsafe { (x.plane(i, ci), x_add.map(|a| a.plane(i, ci))) };
        if pointwise {
            let out = &mut cols[(ci - ci0) * nr..(ci - ci0) * nr + cnt];
            match add {
                None => out.copy_from_slice(&src[p0..p0 + cnt]),
                Some(a) => {
                    for ((o, s), a) in out.iter_mut().zip(&src[p0..p0 + cnt]).zip(&a[p0..p0 + cnt]) {
                        *o = s + a;
                    }
                }
            }
            continue;
        }
        let mut j = 0;
        while j < cnt {
            let (oy, ox0) = ((p0 + j) / ow, (p0 + j) % ow);
            let len = (ow - ox0).min(cnt - j);
            for ky in 0..p.kh {
                let iy = (oy * p.stride + ky * p.dil) as isize - p.pad_h as isize;
                for kx in 0..p.kw {
                    let k = ((ci - ci0) * p.kh + ky) * p.kw + kx;
                    let out = &mut cols[k * nr + j..k * nr + j + len];
                    if iy < 0 || iy >= xs.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let row = iy as usize * xs.w;
                    // Input column of run element t: ox0·s + kx·d − pad + t·s.
                    let c0 = (ox0 * p.stride + kx * p.dil) as isize - p.pad_w as isize;
                    if p.stride == 1 {
                        let lo = (-c0).clamp(0, len as isize) as usize;
                        let hi = (xs.w as isize - c0).clamp(lo as isize, len as isize) as usize;
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if lo == hi {
                            continue;
                        }
                        let s0 = row + (c0 + lo as isize) as usize;
                        let s = &src[s0..s0 + (hi - lo)];
                        match add {
                            None => out[lo..hi].copy_from_slice(s),
                            Some(a) => {
                                for ((o, s), a) in out[lo..hi].iter_mut().zip(s).zip(&a[s0..s0 + (hi - lo)]) {
                                    *o = s + a;
                                }
                            }
                        }
                    } else {
                        for (t, o) in out.iter_mut().enumerate() {
                            let ix = c0 + (t * p.stride) as isize;
                            *o = if ix < 0 || ix >= xs.w as isize {
                                0.0
                            } else {
                                let at = row + ix as usize;
                                src[at] + add.map_or(0.0, |a| a[at])
                            };
                        }
                    }
                }
            }
            j += len;
        }
    }
}

/// Store masks (lanes 0–15, 16–31) of one run of a 32-lane panel: lanes j..j+len belong to the run, and
/// the panel's last run (j + len = cnt) also writes the zero tail cnt..32.
fn run_store_masks(j: usize, len: usize, cnt: usize) -> (u16, u16) {
    let upto = if j + len >= cnt { 32 } else { j + len };
    let m = (((1u64 << upto) - 1) & !((1u64 << j) - 1)) as u32;
    (m as u16, (m >> 16) as u16)
}

/// `gather` for stride S ∈ {1, 2, 4} with AVX-512 (nr = 32), one run of output pixels along one row at a
/// time with the masks of each kx computed once per run: panel lane t reads input column c0 + S·t, so
/// each tap loads the 32·S columns from c0 (masked to the row and to the run) and keeps every S-th —
/// stride 2 with one two-register permute per 16 lanes, stride 4 with two permutes and a 128-bit-lane
/// shuffle. Stride 4 serves Winograd F(4×4)'s 6×6 patches, stride 2 F(2×2)'s 4×4 ones and the
/// stride-2 convs.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gather_strided_avx512<const S: usize>(p: &ConvParam, x: In, x_add: Option<In>, i: usize, p0: usize, cnt: usize, ow: usize, cis: std::ops::Range<usize>, cols: &mut [f32]) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    const MAX_KW: usize = 16;
    let xs = x.shape;
    let (taps, ci0) = (p.kh * p.kw, cis.start);
    assert!((S == 1 || S == 2 || S == 4) && p.stride == S && p.kw <= MAX_KW && cols.len() >= cis.len() * taps * NR);
    let every = if S == 2 {
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
    } else {
        _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0)
    };
    let out = cols.as_mut_ptr();
    let mut j = 0;
    while j < cnt {
        let (oy, ox0) = ((p0 + j) / ow, (p0 + j) % ow);
        let len = (ow - ox0).min(cnt - j);
        let (sm0, sm1) = run_store_masks(j, len, cnt);
        // Element e of the 32·S-float window from c0 is lane e / S when e % S == 0.
        let mut load_mask = [0u128; MAX_KW];
        let mut off = [0isize; MAX_KW];
        for kx in 0..p.kw {
            let c0 = (S * ox0) as isize - (S * j) as isize + (kx * p.dil) as isize - p.pad_w as isize;
            let lo = (-c0).clamp((S * j) as isize, (S * (j + len)) as isize) as u32;
            let hi = (xs.w as isize - c0).clamp(lo as isize, (S * (j + len)) as isize) as u32;
            let upto = if hi >= 128 { u128::MAX } else { (1u128 << hi) - 1 };
            load_mask[kx] = upto & !((1u128 << lo) - 1);
            off[kx] = c0;
        }
        for ci in cis.clone() {
            let src = x.ptr.add(xs.plane(i, ci));
            let add = x_add.map(|a| a.ptr.add(a.shape.plane(i, ci)));
            for ky in 0..p.kh {
                let iy = (oy * S + ky * p.dil) as isize - p.pad_h as isize;
                let inside = iy >= 0 && iy < xs.h as isize;
                let row = iy * xs.w as isize;
                for kx in 0..p.kw {
                    let k = ((ci - ci0) * p.kh + ky) * p.kw + kx;
                    let dst = out.add(k * NR);
                    let m = if inside { load_mask[kx] } else { 0 };
                    let load = |base: *const f32| {
                        let q = |h: usize| _mm512_maskz_loadu_ps((m >> (16 * h)) as u16, base.wrapping_add(16 * h));
                        if S == 1 {
                            (q(0), q(1))
                        } else if S == 2 {
                            (_mm512_permutex2var_ps(q(0), every, q(1)), _mm512_permutex2var_ps(q(2), every, q(3)))
                        } else {
                            let e = |h: usize| _mm512_permutex2var_ps(q(2 * h), every, q(2 * h + 1));
                            (_mm512_shuffle_f32x4::<0x44>(e(0), e(1)), _mm512_shuffle_f32x4::<0x44>(e(2), e(3)))
                        }
                    };
                    let (mut v0, mut v1) = load(src.wrapping_offset(row + off[kx]));
                    if let Some(a) = add {
                        let (a0, a1) = load(a.wrapping_offset(row + off[kx]));
                        v0 = _mm512_add_ps(v0, a0);
                        v1 = _mm512_add_ps(v1, a1);
                    }
                    _mm512_mask_storeu_ps(dst, sm0, v0);
                    _mm512_mask_storeu_ps(dst.add(16), sm1, v1);
                }
            }
        }
        j += len;
    }
}

/// Writes rows blk·MR.. of a finished tile through the epilogue: (acc · scale) + bias + residual, ReLU, × mul.
#[allow(clippy::too_many_arguments)]
#[inline]
fn store(p: &ConvParam, tile: &[f32; MAX_TILE], isa: Isa, mr: usize, blk: usize, i: usize, p0: usize, cnt: usize, y: Out, ep: &Epilogue) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: the isa was detected; same contract as below.
        unsafe { store_avx512(p, tile, mr, blk, i, p0, cnt, y, ep) };
        return;
    }
    store_generic(p, tile, mr, isa.nr(), blk, i, p0, cnt, y, ep)
}

/// `store` for the AVX-512 tile (mr × 32): one masked pass per row instead of up to four SSE passes.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn store_avx512(p: &ConvParam, tile: &[f32; MAX_TILE], mr: usize, blk: usize, i: usize, p0: usize, cnt: usize, y: Out, ep: &Epilogue) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    let m0: __mmask16 = if cnt >= 16 { 0xffff } else { ((1u32 << cnt) - 1) as u16 };
    let m1: __mmask16 = if cnt >= 32 { 0xffff } else if cnt > 16 { ((1u32 << (cnt - 16)) - 1) as u16 } else { 0 };
    macro_rules! ld {
        ($ptr:expr) => {{
            let ptr: *const f32 = $ptr;
            (_mm512_maskz_loadu_ps(m0, ptr), _mm512_maskz_loadu_ps(m1, ptr.wrapping_add(16)))
        }};
    }
    let scale = ep.scale.map(|s| ld!(s.plane(i, 0).as_ptr().add(p0)));
    let zero = _mm512_setzero_ps();
    for r in 0..mr.min(p.cout - blk * mr) {
        let o = blk * mr + r;
        let t = tile.as_ptr().add(r * NR);
        let (mut a, mut b) = (_mm512_loadu_ps(t), _mm512_loadu_ps(t.add(16)));
        if let Some((s0, s1)) = scale {
            a = _mm512_mul_ps(a, s0);
            b = _mm512_mul_ps(b, s1);
        }
        let bias = _mm512_set1_ps(p.bias[o]);
        a = _mm512_add_ps(a, bias);
        b = _mm512_add_ps(b, bias);
        if let Some(res) = ep.residual {
            let (r0, r1) = ld!(res.plane(i, o).as_ptr().add(p0));
            a = _mm512_add_ps(a, r0);
            b = _mm512_add_ps(b, r1);
        }
        if ep.relu {
            a = _mm512_max_ps(a, zero);
            b = _mm512_max_ps(b, zero);
        }
        if let Some(m) = ep.mul {
            let (x0, x1) = ld!(m.plane(i, o).as_ptr().add(p0));
            a = _mm512_mul_ps(a, x0);
            b = _mm512_mul_ps(b, x1);
        }
        let dst = y.plane(i, o).as_mut_ptr().add(p0);
        _mm512_mask_storeu_ps(dst, m0, a);
        _mm512_mask_storeu_ps(dst.wrapping_add(16), m1, b);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn store_generic(p: &ConvParam, tile: &[f32; MAX_TILE], mr: usize, nr: usize, blk: usize, i: usize, p0: usize, cnt: usize, y: Out, ep: &Epilogue) {
    // SAFETY (all plane accesses): views are live; this task is the only writer of these pixels of these rows.
    let scale = ep.scale.map(|s| unsafe { &s.plane(i, 0)[p0..p0 + cnt] });
    for r in 0..mr.min(p.cout - blk * mr) {
        let o = blk * mr + r;
        let acc = &tile[r * nr..r * nr + cnt];
        let dst = unsafe { &mut y.plane(i, o)[p0..p0 + cnt] };
        let b = p.bias[o];
        match scale {
            None => dst.iter_mut().zip(acc).for_each(|(d, a)| *d = a + b),
            Some(s) => dst.iter_mut().zip(acc).zip(s).for_each(|((d, a), s)| *d = a * s + b),
        }
        if let Some(res) = ep.residual {
            let res = unsafe { &res.plane(i, o)[p0..p0 + cnt] };
            dst.iter_mut().zip(res).for_each(|(d, r)| *d += r);
        }
        if ep.relu {
            dst.iter_mut().for_each(|d| *d = d.max(0.0));
        }
        if let Some(m) = ep.mul {
            let m = unsafe { &m.plane(i, o)[p0..p0 + cnt] };
            dst.iter_mut().zip(m).for_each(|(d, m)| *d *= m);
        }
    }
}

/// Whether `conv2d_one_output` runs this conv: one output channel, stride 1, on AVX-512.
pub fn one_output_applies(p: &ConvParam, isa: Isa) -> bool {
    p.cout == 1 && p.stride == 1 && p.kw <= 16 && isa == Isa::Avx512
}

/// A conv with one output channel (the side-output heads: edge_conv4, ra*_conv4), directly: 16 output
/// pixels of a row per register, one masked load and FMA per input channel and tap, the epilogue
/// applied before the store. The implicit GEMM would run 8 rows for this one (7 of them zero) after
/// gathering every tap.
pub fn conv2d_one_output(p: &ConvParam, x: In, x_add: Option<In>, y: Out, ep: Epilogue) {
    let (xs, ys) = (x.shape, y.shape);
    assert!(p.cout == 1 && p.stride == 1 && p.kw <= 16);
    assert_eq!((xs.c, ys.c), (p.cin, 1));
    assert_eq!(p.out_size(xs.h, xs.w), (ys.h, ys.w));
    #[cfg(target_arch = "x86_64")]
    {
        assert!(std::is_x86_feature_detected!("avx512f"), "conv2d_one_output needs AVX-512");
        (0..xs.n * ys.h).into_par_iter().for_each(|r| {
            // SAFETY: AVX-512F checked above; each task writes one output row.
            unsafe { one_output_row_avx512(p, x, x_add, y, &ep, r / ys.h, r % ys.h) }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x_add, ep);
        unreachable!("conv2d_one_output runs on AVX-512 only");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn one_output_row_avx512(p: &ConvParam, x: In, x_add: Option<In>, y: Out, ep: &Epilogue, i: usize, oy: usize) {
    use std::arch::x86_64::*;
    const MAX_KW: usize = 16;
    let (xs, ys) = (x.shape, y.shape);
    let taps = p.kh * p.kw;
    let zero = _mm512_setzero_ps();
    let at = ys.plane(i, 0) + oy * ys.w;
    let mut ox0 = 0;
    while ox0 < ys.w {
        let n = (ys.w - ox0).min(16);
        let lanes: u16 = if n == 16 { 0xffff } else { ((1u32 << n) - 1) as u16 };
        // Lane t of kx reads input column c0 + t; valid inside 0..w and t < n.
        let mut mask = [0u16; MAX_KW];
        let mut off = [0isize; MAX_KW];
        for kx in 0..p.kw {
            let c0 = (ox0 + kx * p.dil) as isize - p.pad_w as isize;
            let lo = (-c0).clamp(0, n as isize) as u32;
            let hi = (xs.w as isize - c0).clamp(lo as isize, n as isize) as u32;
            mask[kx] = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16;
            off[kx] = c0;
        }
        let mut acc = zero;
        for ci in 0..p.cin {
            let src = x.ptr.add(xs.plane(i, ci));
            let add = x_add.map(|a| a.ptr.add(a.shape.plane(i, ci)));
            for ky in 0..p.kh {
                let iy = (oy + ky * p.dil) as isize - p.pad_h as isize;
                if iy < 0 || iy >= xs.h as isize {
                    continue;
                }
                let row = iy * xs.w as isize;
                let w = &p.weight[ci * taps + ky * p.kw..][..p.kw];
                for kx in 0..p.kw {
                    // Masked-off lanes are never dereferenced, so the offset may point outside the row.
                    let mut v = _mm512_maskz_loadu_ps(mask[kx], src.wrapping_offset(row + off[kx]));
                    if let Some(a) = add {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[kx], a.wrapping_offset(row + off[kx])));
                    }
                    acc = _mm512_fmadd_ps(v, _mm512_set1_ps(w[kx]), acc);
                }
            }
        }
        let o = at + ox0;
        if let Some(s) = ep.scale {
            acc = _mm512_mul_ps(acc, _mm512_maskz_loadu_ps(lanes, s.ptr.add(s.shape.plane(i, 0) + oy * ys.w + ox0)));
        }
        acc = _mm512_add_ps(acc, _mm512_set1_ps(p.bias[0]));
        if let Some(r) = ep.residual {
            acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(lanes, r.ptr.add(r.shape.plane(i, 0) + oy * ys.w + ox0)));
        }
        if ep.relu {
            acc = _mm512_max_ps(acc, zero);
        }
        if let Some(m) = ep.mul {
            acc = _mm512_mul_ps(acc, _mm512_maskz_loadu_ps(lanes, m.ptr.add(m.shape.plane(i, 0) + oy * ys.w + ox0)));
        }
        _mm512_mask_storeu_ps(y.ptr.add(o), lanes, acc);
        ox0 += 16;
    }
}
