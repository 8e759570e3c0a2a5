//! Convolution on the CPU: the direct reference (`conv2d_reference`), the shared epilogue description,
//! and `conv2d_im2col` (explicit im2col + `gemm` crate), the previous fast path, kept for comparison.
//! The executor's fast paths are `implicit_gemm` and `winograd`.

use super::tensor::{In, Out};
use crate::graph::ConvParam;

/// What happens after the convolution sum, in this order: × scale, + bias, + residual, ReLU, × mul.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue {
    /// One channel (N×1×OH×OW) multiplying the sum per pixel before the bias: W·(a ⊙ x) = a ⊙ (W·x) for a
    /// 1×1 conv, so reverse attention feeding a 1×1 conv becomes this scale (see `cpu::Step`).
    pub scale: Option<In>,
    pub residual: Option<In>,
    pub relu: bool,
    pub mul: Option<In>,
}

/// Direct convolution, one output at a time. The reference that the fast path and every CUDA
/// kernel are checked against; also the readable statement of what a conv node computes.
/// x: N×Cin×H×W (plus `x_add`, same shape, summed into the input), y: N×Cout×OH×OW.
pub fn conv2d_reference(p: &ConvParam, x: In, x_add: Option<In>, y: Out, ep: Epilogue) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!(xs.c, p.cin);
    assert_eq!(ys.c, p.cout);
    assert_eq!(p.out_size(xs.h, xs.w), (ys.h, ys.w));
    for i in 0..xs.n {
        for o in 0..p.cout {
            for oy in 0..ys.h {
                for ox in 0..ys.w {
                    let mut acc = 0.0f64;
                    for ci in 0..p.cin {
                        let (src, add) = unsafe { (x.plane(i, ci), x_add.map(|a| a.plane(i, ci))) };
                        for ky in 0..p.kh {
                            let iy = (oy * p.stride + ky * p.dil) as i64 - p.pad_h as i64;
                            if iy < 0 || iy >= xs.h as i64 {
                                continue;
                            }
                            for kx in 0..p.kw {
                                let ix = (ox * p.stride + kx * p.dil) as i64 - p.pad_w as i64;
                                if ix < 0 || ix >= xs.w as i64 {
                                    continue;
                                }
                                let idx = iy as usize * xs.w + ix as usize;
                                let v = src[idx] + add.map_or(0.0, |a| a[idx]);
                                let wv = p.weight[((o * p.cin + ci) * p.kh + ky) * p.kw + kx];
                                acc += v as f64 * wv as f64;
                            }
                        }
                    }
                    let at = oy * ys.w + ox;
                    let scale = ep.scale.map_or(1.0, |s| unsafe { s.plane(i, 0)[at] });
                    let mut v = (acc * scale as f64) as f32 + p.bias[o];
                    unsafe {
                        if let Some(r) = ep.residual {
                            v += r.plane(i, o)[at];
                        }
                        if ep.relu {
                            v = v.max(0.0);
                        }
                        if let Some(m) = ep.mul {
                            v *= m.plane(i, o)[at];
                        }
                        y.plane(i, o)[at] = v;
                    }
                }
            }
        }
    }
}

/// Floats of im2col scratch that `conv2d_im2col` needs for this conv at input size h×w.
pub fn scratch_len(p: &ConvParam, h: usize, w: usize, has_add: bool) -> usize {
    let (oh, ow) = p.out_size(h, w);
    if p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad_h == 0 && p.pad_w == 0 {
        if has_add {
            p.cin * h * w
        } else {
            0
        }
    } else {
        p.cin * p.kh * p.kw * oh * ow
    }
}

/// Convolution by explicit im2col + the `gemm` crate + a separate epilogue pass. No longer on the
/// executor's path (`implicit_gemm` replaced it); kept as a second fast implementation that tests and
/// benchmarks compare against. `scratch` must hold at least `scratch_len` floats.
pub fn conv2d_im2col(p: &ConvParam, x: In, x_add: Option<In>, y: Out, ep: Epilogue, scratch: &mut [f32], threads: usize) {
    let (xs, ys) = (x.shape, y.shape);
    assert_eq!(xs.c, p.cin);
    assert_eq!(ys.c, p.cout);
    assert_eq!(p.out_size(xs.h, xs.w), (ys.h, ys.w));
    let k = p.cin * p.kh * p.kw;
    let ohw = ys.hw();
    let pointwise = p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad_h == 0 && p.pad_w == 0;
    for i in 0..xs.n {
        let rhs: *const f32 = if pointwise && x_add.is_none() {
            unsafe { x.image(i).as_ptr() }
        } else if pointwise {
            let cols = &mut scratch[..k * ohw];
            unsafe {
                let (a, b) = (x.image(i), x_add.unwrap_or(x).image(i));
                for ((c, a), b) in cols.iter_mut().zip(a).zip(b) {
                    *c = a + b;
                }
            }
            cols.as_ptr()
        } else {
            let cols = &mut scratch[..k * ohw];
            im2col(p, x, x_add, i, ys.h, ys.w, cols);
            cols.as_ptr()
        };
        let dst = unsafe { y.image(i) };
        let par = if (p.cout * ohw * k) >= 1 << 18 && threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // dst[cout × ohw] = W[cout × k] · cols[k × ohw]; all row-major.
        unsafe {
            gemm::gemm(
                p.cout,
                ohw,
                k,
                dst.as_mut_ptr(),
                1,
                ohw as isize,
                false,
                p.weight.as_ptr(),
                1,
                k as isize,
                rhs,
                1,
                ohw as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
        epilogue(p, y, i, ep);
    }
}

fn epilogue(p: &ConvParam, y: Out, i: usize, ep: Epilogue) {
    use rayon::prelude::*;
    (0..p.cout).into_par_iter().with_min_len(8).for_each(|o| unsafe {
        let d = y.plane(i, o);
        let b = p.bias[o];
        if let Some(s) = ep.scale {
            d.iter_mut().zip(s.plane(i, 0)).for_each(|(v, s)| *v *= s);
        }
        match (ep.residual, ep.relu, ep.mul) {
            (None, false, None) => d.iter_mut().for_each(|v| *v += b),
            (None, true, None) => d.iter_mut().for_each(|v| *v = (*v + b).max(0.0)),
            (Some(r), relu, None) => {
                for (v, r) in d.iter_mut().zip(r.plane(i, o)) {
                    let t = *v + b + r;
                    *v = if relu { t.max(0.0) } else { t };
                }
            }
            (r, relu, Some(m)) => {
                let r = r.map(|r| r.plane(i, o));
                for (j, (v, m)) in d.iter_mut().zip(m.plane(i, o)).enumerate() {
                    let mut t = *v + b + r.map_or(0.0, |r| r[j]);
                    if relu {
                        t = t.max(0.0);
                    }
                    *v = t * m;
                }
            }
        }
    });
}

/// Unfolds image `i` into cols[(ci·kh + ky)·kw + kx][oy·ow + ox], zero outside the padded input.
fn im2col(p: &ConvParam, x: In, x_add: Option<In>, i: usize, oh: usize, ow: usize, cols: &mut [f32]) {
    use rayon::prelude::*;
    let xs = x.shape;
    let ohw = oh * ow;
    cols.par_chunks_mut(p.kh * p.kw * ohw).enumerate().for_each(|(ci, rows)| {
        let (src, add) = unsafe { (x.plane(i, ci), x_add.map(|a| a.plane(i, ci))) };
        for ky in 0..p.kh {
            for kx in 0..p.kw {
                let row = &mut rows[(ky * p.kw + kx) * ohw..][..ohw];
                for oy in 0..oh {
                    let iy = (oy * p.stride + ky * p.dil) as i64 - p.pad_h as i64;
                    let out = &mut row[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= xs.h as i64 {
                        out.fill(0.0);
                        continue;
                    }
                    let base = iy as usize * xs.w;
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * p.stride + kx * p.dil) as i64 - p.pad_w as i64;
                        *o = if ix < 0 || ix >= xs.w as i64 {
                            0.0
                        } else {
                            let j = base + ix as usize;
                            src[j] + add.map_or(0.0, |a| a[j])
                        };
                    }
                }
            }
        }
    });
}
