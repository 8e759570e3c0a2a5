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
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
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
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
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
    let scale = resize_scale(in_size, out_size, mode);
    (0..out_size)
        .map(|d| {
            let real = match mode {
                ResizeMode::AlignCorners => scale * d as f32,
                ResizeMode::ScaleFactor(_) => (scale * (d as f32 + 0.5) - 0.5).max(0.0),
            };
            let i0 = (real.floor() as usize).min(in_size - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Bilinear resize from x's spatial size to y's.
pub fn resize_bilinear(x: In, y: Out, mode: ResizeMode) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!((xs.n, xs.c), (ys.n, ys.c));
    let th = resize_taps(xs.h, ys.h, mode);
    let tw = resize_taps(xs.w, ys.w, mode);
    for_each_plane(xs.n, xs.c, |i, ch| unsafe {
        let src = x.plane(i, ch);
        let dst = y.plane(i, ch);
        for (oy, &(h0, h1, lh0, lh1)) in th.iter().enumerate() {
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
