//! CPU implementations of the non-convolution ops, with PyTorch's exact index arithmetic.
//! Each op is parallel over (image, channel) planes.

use super::tensor::{In, Out};
use crate::graph::ResizeMode;
use rayon::prelude::*;

fn for_each_plane(n: usize, c: usize, f: impl Fn(usize, usize) + Sync + Send) {
    (0..n * c).into_par_iter().for_each(|p| f(p / c, p % c));
}

/// Output size of a pooling window sweep (PyTorch `pooling_output_shape`).
pub fn pool_out_size(size: usize, k: usize, s: usize, p: usize, ceil: bool) -> usize {
    let num = size as i64 + 2 * p as i64 - k as i64 + if ceil { s as i64 - 1 } else { 0 };
    let mut out = num.div_euclid(s as i64) + 1;
    if ceil && (out - 1) * s as i64 >= size as i64 + p as i64 {
        out -= 1;
    }
    out.max(0) as usize
}

/// MaxPool2d(k, s, p), floor mode. x: N×C×H×W → y: N×C×OH×OW.
///
/// Separable: per output row, the column-wise max of its k input rows (one vectorised pass over whole
/// rows), then the max over k columns of that. Exact (max is order-independent); planes holding a NaN
/// take the per-window path, which propagates it as PyTorch does.
pub fn max_pool(x: In, y: Out, k: usize, s: usize, p: usize) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!((xs.n, xs.c), (ys.n, ys.c));
    let fast = pool_avx512(s);
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
        #[cfg(target_arch = "x86_64")]
        if fast && pool_plane_avx512(src, xs.h, xs.w, dst, ys.h, ys.w, k, s, p, PoolKind::Max) {
            return;
        }
        let nan = src.iter().fold(false, |a, v| a | v.is_nan());
        let mut tmp = vec![f32::NEG_INFINITY; xs.w];
        for oy in 0..ys.h {
            let y0 = (oy * s) as i64 - p as i64;
            let (ya, yb) = (y0.max(0) as usize, ((y0 + k as i64).max(0) as usize).min(xs.h));
            if nan {
                for ox in 0..ys.w {
                    let x0 = (ox * s) as i64 - p as i64;
                    let (xa, xb) = (x0.max(0) as usize, ((x0 + k as i64).max(0) as usize).min(xs.w));
                    dst[oy * ys.w + ox] = window_max(src, xs.w, ya, yb, xa, xb);
                }
                continue;
            }
            tmp.fill(f32::NEG_INFINITY);
            for yy in ya..yb {
                for (t, &v) in tmp.iter_mut().zip(&src[yy * xs.w..(yy + 1) * xs.w]) {
                    *t = if v > *t { v } else { *t };
                }
            }
            for (ox, d) in dst[oy * ys.w..(oy + 1) * ys.w].iter_mut().enumerate() {
                let x0 = (ox * s) as i64 - p as i64;
                let (xa, xb) = (x0.max(0) as usize, ((x0 + k as i64).max(0) as usize).min(xs.w));
                let mut m = f32::NEG_INFINITY;
                for &v in &tmp[xa..xb] {
                    m = if v > m { v } else { m };
                }
                *d = m;
            }
        }
    });
}

/// Max over rows ya..yb, columns xa..xb; NaN propagates as in PyTorch.
fn window_max(src: &[f32], w: usize, ya: usize, yb: usize, xa: usize, xb: usize) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for yy in ya..yb {
        for xx in xa..xb {
            let v = src[yy * w + xx];
            if v > m || v.is_nan() {
                m = v;
            }
        }
    }
    m
}

/// The original per-window loop, kept as the reference that `max_pool`'s fast interior is tested against.
pub fn max_pool_reference(x: In, y: Out, k: usize, s: usize, p: usize) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!((xs.n, xs.c), (ys.n, ys.c));
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
        for oy in 0..ys.h {
            let y0 = (oy * s) as i64 - p as i64;
            let (ya, yb) = (y0.max(0) as usize, ((y0 + k as i64) as usize).min(xs.h));
            for ox in 0..ys.w {
                let x0 = (ox * s) as i64 - p as i64;
                let (xa, xb) = (x0.max(0) as usize, ((x0 + k as i64) as usize).min(xs.w));
                let mut m = f32::NEG_INFINITY;
                for yy in ya..yb {
                    for xx in xa..xb {
                        let v = src[yy * xs.w + xx];
                        // NaN propagates as in PyTorch.
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                dst[oy * ys.w + ox] = m;
            }
        }
    });
}

/// AvgPool2d(k, s, p, ceil_mode, count_include_pad). x: N×C×H×W → y: N×C×OH×OW.
///
/// Separable: per output row, the column sums of its window rows (one vectorised pass over whole rows),
/// then the sum of those over each window's columns. Same terms as the per-window sum, in a different
/// order (a few ulp); `avg_pool_reference` is the per-window loop it is tested against.
pub fn avg_pool(x: In, y: Out, k: usize, s: usize, p: usize, count_include_pad: bool) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!((xs.n, xs.c), (ys.n, ys.c));
    let fast = pool_avx512(s);
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
        #[cfg(target_arch = "x86_64")]
        if fast && pool_plane_avx512(src, xs.h, xs.w, dst, ys.h, ys.w, k, s, p, PoolKind::Avg { count_include_pad }) {
            return;
        }
        let mut tmp = vec![0.0f32; xs.w];
        for oy in 0..ys.h {
            let hs = (oy * s) as i64 - p as i64;
            let he = (hs + k as i64).min((xs.h + p) as i64);
            let ph = he - hs;
            let (ya, yb) = (hs.max(0) as usize, he.clamp(0, xs.h as i64) as usize);
            tmp.fill(0.0);
            for yy in ya..yb {
                for (t, &v) in tmp.iter_mut().zip(&src[yy * xs.w..(yy + 1) * xs.w]) {
                    *t += v;
                }
            }
            for (ox, d) in dst[oy * ys.w..(oy + 1) * ys.w].iter_mut().enumerate() {
                let ws = (ox * s) as i64 - p as i64;
                let we = (ws + k as i64).min((xs.w + p) as i64);
                let pw = we - ws;
                let (xa, xb) = (ws.max(0) as usize, we.clamp(0, xs.w as i64) as usize);
                let acc: f32 = tmp[xa..xb.max(xa)].iter().sum();
                let div = if count_include_pad { ph * pw } else { ((yb.saturating_sub(ya)) * (xb.saturating_sub(xa))) as i64 };
                *d = acc / div as f32;
            }
        }
    });
}

/// Whether the AVX-512 pooling path applies: strides 1 and 2 on a CPU with AVX-512F.
fn pool_avx512(s: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        (s == 1 || s == 2) && *AVX512.get_or_init(|| super::microkernel::Isa::detect() == super::microkernel::Isa::Avx512)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = s;
        false
    }
}

#[derive(Clone, Copy, PartialEq)]
enum PoolKind {
    Max,
    Avg { count_include_pad: bool },
}

thread_local! {
    /// One padded row per worker thread for the AVX-512 pools (no allocation per plane).
    static POOL_ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One plane of a max or average pool with stride 1 or 2, separably: per output row, the column-wise
/// max or sum of its window rows goes into a padded row (−∞ or 0 in the padding), then each output
/// is the max or sum over k entries of that row, 16 outputs per step (stride 2 keeps the even lanes of
/// two loads). Same terms as the scalar separable path. Returns false, having written nothing final,
/// when the plane holds a NaN (the caller's per-window path propagates it as PyTorch does).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn pool_plane_avx512(src: &[f32], h: usize, w: usize, dst: &mut [f32], oh: usize, ow: usize, k: usize, s: usize, p: usize, kind: PoolKind) -> bool {
    use std::arch::x86_64::*;
    let max = kind == PoolKind::Max;
    let fill = if max { f32::NEG_INFINITY } else { 0.0 };
    let len = p + w + s * ow + k + 64;
    POOL_ROW.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < len + ow + 16 {
            buf.resize(len + ow + 16, 0.0);
        }
        let (row, cols) = buf.split_at_mut(len);
        row.fill(fill);
        // Window width per output column (what the average divides by, with the window's row count).
        if let PoolKind::Avg { count_include_pad } = kind {
            for (ox, c) in cols.iter_mut().enumerate().take(ow) {
                let ws = (ox * s) as i64 - p as i64;
                let we = (ws + k as i64).min((w + p) as i64);
                *c = if count_include_pad { we - ws } else { we.min(w as i64) - ws.max(0) } as f32;
            }
        }
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut nan: u16 = 0;
        for oy in 0..oh {
            let hs = (oy * s) as i64 - p as i64;
            let he = (hs + k as i64).min((h + p) as i64);
            let (ya, yb) = (hs.max(0) as usize, he.clamp(0, h as i64) as usize);
            // The next output row's new input rows, a row ahead: these planes come from L3 in short
            // row-long streams that the hardware prefetcher barely starts on.
            for yy in yb..(yb + s).min(h) {
                let r = src.as_ptr().add(yy * w);
                for c in (0..w).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(r.add(c) as *const i8);
                }
            }
            // Column pass into row[p .. p + w].
            let mut x0 = 0;
            while x0 < w {
                let m: u16 = if w - x0 >= 16 { 0xffff } else { ((1u32 << (w - x0)) - 1) as u16 };
                let mut acc = _mm512_set1_ps(fill);
                for yy in ya..yb {
                    let v = _mm512_maskz_loadu_ps(m, src.as_ptr().add(yy * w + x0));
                    nan |= _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(m, v, v);
                    acc = if max { _mm512_max_ps(acc, v) } else { _mm512_add_ps(acc, v) };
                }
                _mm512_mask_storeu_ps(row.as_mut_ptr().add(p + x0), m, acc);
                x0 += 16;
            }
            let rows = if let PoolKind::Avg { count_include_pad: true } = kind { he - hs } else { (yb - ya) as i64 };
            // Row pass: out[ox] = reduce over kx of row[ox·s + kx].
            let mut o0 = 0;
            while o0 < ow {
                let m: u16 = if ow - o0 >= 16 { 0xffff } else { ((1u32 << (ow - o0)) - 1) as u16 };
                let mut acc = _mm512_set1_ps(fill);
                for kx in 0..k {
                    let at = row.as_ptr().add(o0 * s + kx);
                    let v = if s == 1 { _mm512_loadu_ps(at) } else { _mm512_permutex2var_ps(_mm512_loadu_ps(at), even, _mm512_loadu_ps(at.add(16))) };
                    acc = if max { _mm512_max_ps(acc, v) } else { _mm512_add_ps(acc, v) };
                }
                if !max {
                    // rows · cols is a small integer, exact in f32, so this is the reference's division.
                    let div = _mm512_mul_ps(_mm512_set1_ps(rows as f32), _mm512_maskz_loadu_ps(m, cols.as_ptr().add(o0)));
                    acc = _mm512_maskz_div_ps(m, acc, div);
                }
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(oy * ow + o0), m, acc);
                o0 += 16;
            }
        }
        nan == 0
    })
}

/// The original per-window AvgPool2d loop (PyTorch's summation order), the reference for `avg_pool`.
pub fn avg_pool_reference(x: In, y: Out, k: usize, s: usize, p: usize, count_include_pad: bool) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!((xs.n, xs.c), (ys.n, ys.c));
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
        for oy in 0..ys.h {
            let hs = (oy * s) as i64 - p as i64;
            let he = (hs + k as i64).min((xs.h + p) as i64);
            let ph = he - hs;
            let (ya, yb) = (hs.max(0) as usize, he.min(xs.h as i64) as usize);
            for ox in 0..ys.w {
                let ws = (ox * s) as i64 - p as i64;
                let we = (ws + k as i64).min((xs.w + p) as i64);
                let pw = we - ws;
                let (xa, xb) = (ws.max(0) as usize, we.min(xs.w as i64) as usize);
                let mut acc = 0.0f32;
                for yy in ya..yb {
                    for xx in xa..xb {
                        acc += src[yy * xs.w + xx];
                    }
                }
                let div = if count_include_pad { ph * pw } else { ((yb - ya) * (xb - xa)) as i64 };
                dst[oy * ys.w + ox] = acc / div as f32;
            }
        }
    });
}

/// Source-coordinate ratio of a bilinear resize (PyTorch `area_pixel_compute_scale`).
pub fn resize_scale(in_size: usize, out_size: usize, mode: ResizeMode) -> f32 {
    match mode {
        ResizeMode::AlignCorners => {
            if out_size > 1 {
                (in_size as f32 - 1.0) / (out_size as f32 - 1.0)
            } else {
                0.0
            }
        }
        ResizeMode::ScaleFactor(s) if s > 0.0 => (1.0 / s) as f32,
        ResizeMode::ScaleFactor(_) => in_size as f32 / out_size as f32,
    }
}

/// Output size of a resize with a scale factor (PyTorch: floor(in · scale)).
pub fn resize_out_size(in_size: usize, scale: f64) -> usize {
    (in_size as f64 * scale).floor() as usize
}

/// Per output coordinate: (index0, index1, lambda0, lambda1), as PyTorch's linear index/weight tables.
pub fn resize_taps(in_size: usize, out_size: usize, mode: ResizeMode) -> Vec<(usize, usize, f32, f32)> {
    let mut taps = Vec::with_capacity(out_size);
    resize_taps_into(in_size, out_size, mode, &mut taps);
    taps
}

/// `resize_taps` into an existing vector.
fn resize_taps_into(in_size: usize, out_size: usize, mode: ResizeMode, taps: &mut Vec<(usize, usize, f32, f32)>) {
    let scale = resize_scale(in_size, out_size, mode);
    taps.clear();
    taps.extend((0..out_size).map(|d| {
            let real = match mode {
                ResizeMode::AlignCorners => scale * d as f32,
                ResizeMode::ScaleFactor(_) => (scale * (d as f32 + 0.5) - 0.5).max(0.0),
            };
            let i0 = (real.floor() as usize).min(in_size - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
    }));
}

/// Bilinear resize from x's spatial size to y's.
pub fn resize_bilinear(x: In, y: Out, mode: ResizeMode) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!((xs.n, xs.c), (ys.n, ys.c));
    RESIZE_TAPS.with(|taps| match taps.try_borrow_mut() {
        Ok(mut taps) => {
            let (th, tw) = &mut *taps;
            resize_taps_into(xs.h, ys.h, mode, th);
            resize_taps_into(xs.w, ys.w, mode, tw);
            resize_with_taps(x, y, th, tw);
        }
        // A resize started inside another one's parallel loop on this thread: fresh taps.
        Err(_) => resize_with_taps(x, y, &resize_taps(xs.h, ys.h, mode), &resize_taps(xs.w, ys.w, mode)),
    });
}

thread_local! {
    /// Row and column taps of the current resize, reused across calls (no allocation per op).
    static RESIZE_TAPS: std::cell::RefCell<(Vec<(usize, usize, f32, f32)>, Vec<(usize, usize, f32, f32)>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn resize_with_taps(x: In, y: Out, th: &[(usize, usize, f32, f32)], tw: &[(usize, usize, f32, f32)]) {
    let (xs, ys) = (x.shape, y.shape);
    // Bands of output rows as well as planes, so that the one-channel side outputs (resized to the
    // full input size, one plane each) use every thread.
    let planes = xs.n * xs.c;
    let bands = (4 * rayon::current_num_threads()).div_ceil(planes).clamp(1, ys.h.max(1));
    (0..planes * bands).into_par_iter().for_each(|task| unsafe {
        let (plane, band) = (task / bands, task % bands);
        let (i, ch) = (plane / xs.c, plane % xs.c);
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
        let rows = ys.h * band / bands..ys.h * (band + 1) / bands;
        for (oy, &(h0, h1, lh0, lh1)) in th.iter().enumerate().skip(rows.start).take(rows.len()) {
            let r0 = &src[h0 * xs.w..(h0 + 1) * xs.w];
            let r1 = &src[h1 * xs.w..(h1 + 1) * xs.w];
            for (ox, &(w0, w1, lw0, lw1)) in tw.iter().enumerate() {
                dst[oy * ys.w + ox] = lh0 * (lw0 * r0[w0] + lw1 * r0[w1]) + lh1 * (lw0 * r1[w0] + lw1 * r1[w1]);
            }
        }
    });
}

pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Reverse attention: y = (1 − σ(map)) · x, map N×1×H×W broadcast over x's channels.
pub fn reverse_attention(map: In, x: In, y: Out) {
    let (ms, xs) = (map.shape, x.shape);
    assert_eq!((ms.n, ms.c, ms.h, ms.w), (xs.n, 1, xs.h, xs.w));
    let att: Vec<f32> = (0..xs.n)
        .flat_map(|i| unsafe { map.plane(i, 0) }.iter().map(|&v| 1.0 - sigmoid(v)).collect::<Vec<_>>())
        .collect();
    let hw = xs.hw();
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let a = &att[i * hw..(i + 1) * hw];
        for ((d, s), a) in y.plane(i, ch).iter_mut().zip(x.plane(i, ch)).zip(a) {
            *d = a * s;
        }
    });
}
