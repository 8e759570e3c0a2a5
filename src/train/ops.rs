//! Training ops: each op's forward and its backward side by side (llm.c style).
//!
//! Conventions shared by every op here:
//! - tensors are NCHW channel slices described by `Shape` (`batch_stride` lets a slice live inside a
//!   wider concatenation buffer); each slice argument starts at the slice's first element;
//! - forward *writes* its output; backward *adds* into every gradient it produces (inputs and
//!   parameters), so a tensor read by several ops simply collects all contributions, and callers zero
//!   gradient buffers once before a backward pass;
//! - everything is generic over `Real` (f32 for training, f64 for the finite-difference tests).

use crate::cpu::ops::{pool_out_size, resize_taps};
use crate::cpu::tensor::Shape;
use crate::graph::ResizeMode;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The floating types the ops run in.
pub trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! real_impl {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
real_impl!(f32);
real_impl!(f64);

fn plane<T>(x: &[T], s: Shape, i: usize, c: usize) -> &[T] {
    &x[s.plane(i, c)..][..s.hw()]
}
fn plane_mut<T>(x: &mut [T], s: Shape, i: usize, c: usize) -> &mut [T] {
    &mut x[s.plane(i, c)..][..s.hw()]
}
/// Channels 0..c of image i: contiguous even inside a wider concatenation buffer.
fn image<T>(x: &[T], s: Shape, i: usize) -> &[T] {
    &x[s.plane(i, 0)..][..s.c * s.hw()]
}

/// A raw pointer that rayon tasks may share: each task writes a part of the buffer no other task touches.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    fn of(x: &mut [T]) -> SyncPtr<T> {
        SyncPtr(x.as_mut_ptr())
    }
    /// Element k (a method, so closures capture the Sync wrapper rather than the raw field).
    /// SAFETY: the caller guarantees k is in bounds.
    unsafe fn at(&self, k: usize) -> *mut T {
        self.0.add(k)
    }
    /// Plane (i, c) of the view `s` the pointer starts.
    /// SAFETY: the caller guarantees the plane is in bounds and no other live reference covers it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn plane(&self, s: Shape, i: usize, c: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(s.plane(i, c)), s.hw())
    }
}

/// Below this many elements an op stays on the calling thread: spawning costs more than it saves.
const PAR_MIN_DEFAULT: usize = 1 << 15;

/// `INFNET_TRAIN_PAR_MIN` overrides the threshold, so the split's effect can be measured on a given
/// machine (a huge value keeps every element-wise op serial) without rebuilding.
fn par_min() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("INFNET_TRAIN_PAR_MIN").ok().and_then(|v| v.parse().ok()).unwrap_or(PAR_MIN_DEFAULT))
}

/// Runs `f(i, c)` for every (image, channel) of an n×c map of hw pixels, in parallel when large enough.
fn for_planes(n: usize, c: usize, hw: usize, f: impl Fn(usize, usize) + Sync + Send) {
    use rayon::prelude::*;
    if n * c * hw < par_min() || rayon::current_num_threads() < 2 {
        (0..n * c).for_each(|k| f(k / c, k % c));
    } else {
        (0..n * c).into_par_iter().for_each(|k| f(k / c, k % c));
    }
}

/// Runs `f(c)` for every channel, in parallel when the map is large enough.
fn for_channels(c: usize, elems: usize, f: impl Fn(usize) + Sync + Send) {
    use rayon::prelude::*;
    if elems < par_min() || rayon::current_num_threads() < 2 {
        (0..c).for_each(f);
    } else {
        (0..c).into_par_iter().for_each(f);
    }
}

pub fn sigmoid<T: Real>(v: T) -> T {
    T::ONE / (T::ONE + (-v).exp())
}

// ------------------------------------------------------------------------------------------------
// Convolution (no bias-free special cases: bias is optional). Lowered to GEMM per image:
//   forward   Y[cout × ohw]  = W[cout × K] · cols[K × ohw] + b
//   backward  dW[cout × K]  += dY · colsᵀ,   db += Σ_ohw dY,   dcols = Wᵀ · dY → col2im adds into dx
// with K = cin·kh·kw and cols the im2col unfolding of the (zero-padded) input.
// ------------------------------------------------------------------------------------------------

/// Geometry of a Conv2d (groups = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub dil: usize,
}

impl ConvGeom {
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let eh = self.dil * (self.kh - 1) + 1;
        let ew = self.dil * (self.kw - 1) + 1;
        ((h + 2 * self.pad_h - eh) / self.stride + 1, (w + 2 * self.pad_w - ew) / self.stride + 1)
    }
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// 1×1, stride 1, no padding: the input image *is* the column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_h == 0 && self.pad_w == 0
    }
    /// Scratch elements `conv_forward` / `conv_backward` need at input size h×w.
    pub fn scratch_len(&self, h: usize, w: usize) -> usize {
        let (oh, ow) = self.out_size(h, w);
        if self.pointwise() {
            0
        } else {
            self.k() * oh * ow
        }
    }
}

fn parallelism(flops: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if flops >= 1 << 18 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// dst[m × n] (row-major, row stride `dst_rs`) = (accumulate ? dst : 0) + lhs[m × k] · rhs[k × n],
/// each operand given by (pointer, column stride, row stride) so transposes cost nothing.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const T,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const T,
    rhs_cs: isize,
    rhs_rs: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        parallelism(m * n * k),
    );
}

/// Unfolds one image: cols[(ci·kh + ky)·kw + kx][oy·ow + ox] = x[ci][iy][ix], zero in the padding.
fn im2col<T: Real>(g: &ConvGeom, x_img: &[T], h: usize, w: usize, oh: usize, ow: usize, cols: &mut [T]) {
    let ohw = oh * ow;
    let cols = SyncPtr::of(cols);
    for_channels(g.cin, g.k() * ohw, |ci| {
        // SAFETY: channel ci owns rows ci·kh·kw .. (ci+1)·kh·kw of cols.
        let cols = unsafe { std::slice::from_raw_parts_mut(cols.at(ci * g.kh * g.kw * ohw), g.kh * g.kw * ohw) };
        let src = &x_img[ci * h * w..][..h * w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &mut cols[(ky * g.kw + kx) * ohw..][..ohw];
                for oy in 0..oh {
                    let iy = (oy * g.stride + ky * g.dil) as isize - g.pad_h as isize;
                    let out = &mut row[oy * ow..][..ow];
                    if iy < 0 || iy >= h as isize {
                        out.fill(T::ZERO);
                        continue;
                    }
                    let src_row = &src[iy as usize * w..][..w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kx * g.dil) as isize - g.pad_w as isize;
                        *o = if ix < 0 || ix >= w as isize { T::ZERO } else { src_row[ix as usize] };
                    }
                }
            }
        }
    });
}

/// The adjoint of `im2col`: adds each column entry back onto the input pixel it was read from.
fn col2im_add<T: Real>(g: &ConvGeom, cols: &[T], h: usize, w: usize, oh: usize, ow: usize, dx_img: &mut [T]) {
    let ohw = oh * ow;
    let dx = SyncPtr::of(dx_img);
    for_channels(g.cin, g.k() * ohw, |ci| {
        // SAFETY: channel ci owns plane ci of dx.
        let dst = unsafe { std::slice::from_raw_parts_mut(dx.at(ci * h * w), h * w) };
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &cols[((ci * g.kh + ky) * g.kw + kx) * ohw..][..ohw];
                for oy in 0..oh {
                    let iy = (oy * g.stride + ky * g.dil) as isize - g.pad_h as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst_row = &mut dst[iy as usize * w..][..w];
                    for (ox, &v) in row[oy * ow..][..ow].iter().enumerate() {
                        let ix = (ox * g.stride + kx * g.dil) as isize - g.pad_w as isize;
                        if ix >= 0 && ix < w as isize {
                            dst_row[ix as usize] += v;
                        }
                    }
                }
            }
        }
    });
}

/// y = conv(x, weight) + bias.
/// x: N×cin×H×W (`xs`), weight: cout×cin×kh×kw, bias: cout, y: N×cout×OH×OW (`ys`),
/// scratch: ≥ `g.scratch_len(H, W)`.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward<T: Real>(
    g: &ConvGeom,
    x: &[T],
    xs: Shape,
    weight: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
    ys: Shape,
    scratch: &mut [T],
) {
    assert_eq!((xs.c, ys.c, ys.n), (g.cin, g.cout, xs.n));
    assert_eq!(g.out_size(xs.h, xs.w), (ys.h, ys.w));
    assert_eq!(weight.len(), g.cout * g.k());
    let (k, ohw) = (g.k(), ys.hw());
    for i in 0..xs.n {
        let rhs = if g.pointwise() {
            image(x, xs, i).as_ptr()
        } else {
            im2col(g, image(x, xs, i), xs.h, xs.w, ys.h, ys.w, &mut scratch[..k * ohw]);
            scratch.as_ptr()
        };
        let dst = &mut y[ys.plane(i, 0)..][..g.cout * ohw];
        unsafe {
            gemm_strided(g.cout, ohw, k, dst.as_mut_ptr(), ohw as isize, false, weight.as_ptr(), 1, k as isize, rhs, 1, ohw as isize);
        }
        if let Some(b) = bias {
            let d = SyncPtr::of(dst);
            let s1 = Shape::dense(1, g.cout, ys.h, ys.w);
            // SAFETY: one task per output plane.
            for_planes(1, g.cout, ohw, |_, o| unsafe { d.plane(s1, 0, o) }.iter_mut().for_each(|v| *v += b[o]));
        }
    }
}

/// Adds the conv's gradients: dx (if wanted), dweight, dbias (if the conv has a bias).
/// x: N×cin×H×W (`xs`), weight: cout×cin×kh×kw, dy: N×cout×OH×OW (`dys`), dx: like x (`dxs`),
/// dweight: like weight, dbias: cout, scratch: ≥ `g.scratch_len(H, W)`.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward<T: Real>(
    g: &ConvGeom,
    x: &[T],
    xs: Shape,
    weight: &[T],
    dy: &[T],
    dys: Shape,
    dx: Option<(&mut [T], Shape)>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    scratch: &mut [T],
) {
    assert_eq!((xs.c, dys.c, dys.n), (g.cin, g.cout, xs.n));
    assert_eq!(g.out_size(xs.h, xs.w), (dys.h, dys.w));
    let (k, ohw) = (g.k(), dys.hw());
    let mut dx = dx;
    if let Some(db) = dbias {
        assert_eq!(db.len(), g.cout);
        let dbp = SyncPtr::of(db);
        for_channels(g.cout, dys.n * g.cout * ohw, |o| {
            for i in 0..xs.n {
                let mut acc = 0.0f64;
                plane(dy, dys, i, o).iter().for_each(|v| acc += v.to_f64());
                // SAFETY: one task per output channel.
                unsafe { *dbp.at(o) += T::from_f64(acc) };
            }
        });
    }
    for i in 0..xs.n {
        let dy_i = &dy[dys.plane(i, 0)..][..g.cout * ohw];
        // dW += dY[cout × ohw] · colsᵀ[ohw × K]
        let cols = if g.pointwise() {
            image(x, xs, i).as_ptr()
        } else {
            im2col(g, image(x, xs, i), xs.h, xs.w, dys.h, dys.w, &mut scratch[..k * ohw]);
            scratch.as_ptr()
        };
        unsafe {
            gemm_strided(g.cout, k, ohw, dweight.as_mut_ptr(), k as isize, true, dy_i.as_ptr(), 1, ohw as isize, cols, ohw as isize, 1);
        }
        // dcols[K × ohw] = Wᵀ[K × cout] · dY[cout × ohw]
        if let Some((dx, dxs)) = dx.as_mut() {
            let dx_img = &mut dx[dxs.plane(i, 0)..][..g.cin * xs.hw()];
            if g.pointwise() {
                unsafe {
                    gemm_strided(k, ohw, g.cout, dx_img.as_mut_ptr(), ohw as isize, true, weight.as_ptr(), k as isize, 1, dy_i.as_ptr(), 1, ohw as isize);
                }
            } else {
                let dcols = &mut scratch[..k * ohw];
                unsafe {
                    gemm_strided(k, ohw, g.cout, dcols.as_mut_ptr(), ohw as isize, false, weight.as_ptr(), k as isize, 1, dy_i.as_ptr(), 1, ohw as isize);
                }
                col2im_add(g, dcols, xs.h, xs.w, dys.h, dys.w, dx_img);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// BatchNorm2d in training mode (batch statistics over N·H·W per channel), optionally fused with the
// ReLU that follows it in most of the network (the ReLU's backward needs only the output's sign).
// ------------------------------------------------------------------------------------------------

pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// y = relu?((x − mean_c) · invstd_c · gamma_c + beta_c) with the batch mean and biased variance;
/// running_mean/var move towards the batch mean and the *unbiased* batch variance (PyTorch).
/// x, y: N×C×H×W (`xs`, `ys`); gamma, beta, running_mean, running_var, save_mean, save_invstd: C.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward<T: Real>(
    x: &[T],
    xs: Shape,
    gamma: &[T],
    beta: &[T],
    running_mean: &mut [T],
    running_var: &mut [T],
    relu: bool,
    y: &mut [T],
    ys: Shape,
    save_mean: &mut [T],
    save_invstd: &mut [T],
) {
    assert_eq!((xs.n, xs.c, xs.h, xs.w), (ys.n, ys.c, ys.h, ys.w));
    let count = (xs.n * xs.hw()) as f64;
    assert!(y.len() >= ys.span() && x.len() >= xs.span());
    assert!([gamma.len(), beta.len(), running_mean.len(), running_var.len(), save_mean.len(), save_invstd.len()].iter().all(|&l| l == xs.c));
    let (yp, rm, rv, sm, si) =
        (SyncPtr::of(y), SyncPtr::of(running_mean), SyncPtr::of(running_var), SyncPtr::of(save_mean), SyncPtr::of(save_invstd));
    for_channels(xs.c, xs.n * xs.c * xs.hw(), |c| {
        // Two passes in f64: the shifted sum of squares keeps the variance accurate for large means.
        let mut sum = 0.0f64;
        for i in 0..xs.n {
            plane(x, xs, i, c).iter().for_each(|v| sum += v.to_f64());
        }
        let mean = sum / count;
        let mut ss = 0.0f64;
        for i in 0..xs.n {
            plane(x, xs, i, c).iter().for_each(|v| ss += (v.to_f64() - mean).powi(2));
        }
        let var = ss / count;
        let invstd = 1.0 / (var + BN_EPS).sqrt();
        let unbiased = if count > 1.0 { ss / (count - 1.0) } else { f64::INFINITY };
        // SAFETY: one task per channel: element c of the per-channel vectors and the channel's planes of y.
        unsafe {
            *sm.at(c) = T::from_f64(mean);
            *si.at(c) = T::from_f64(invstd);
            let (m, v) = (&mut *rm.at(c), &mut *rv.at(c));
            *m = T::from_f64((1.0 - BN_MOMENTUM) * m.to_f64() + BN_MOMENTUM * mean);
            *v = T::from_f64((1.0 - BN_MOMENTUM) * v.to_f64() + BN_MOMENTUM * unbiased);
        }
        let scale = T::from_f64(invstd) * gamma[c];
        let shift = beta[c] - T::from_f64(mean) * scale;
        for i in 0..xs.n {
            let src = plane(x, xs, i, c);
            for (d, &s) in unsafe { yp.plane(ys, i, c) }.iter_mut().zip(src) {
                let v = s * scale + shift;
                *d = if relu && v < T::ZERO { T::ZERO } else { v };
            }
        }
    });
}

/// Adds dx, dgamma, dbeta. With x̂ = (x − mean)·invstd and g = dy masked by y > 0 when `relu`:
/// dbeta += Σg, dgamma += Σg·x̂, dx += gamma·invstd·(g − Σg/M − x̂·Σ(g·x̂)/M), M = N·H·W.
/// x, y, dy, dx: N×C×H×W; gamma, save_mean, save_invstd, dgamma, dbeta: C.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Real>(
    x: &[T],
    xs: Shape,
    y: &[T],
    ys: Shape,
    gamma: &[T],
    save_mean: &[T],
    save_invstd: &[T],
    relu: bool,
    dy: &[T],
    dys: Shape,
    dx: &mut [T],
    dxs: Shape,
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let count = (xs.n * xs.hw()) as f64;
    let masked = |yv: T, g: T| if relu && !(yv > T::ZERO) { T::ZERO } else { g };
    assert!(dx.len() >= dxs.span() && (dxs.n, dxs.c, dxs.hw()) == (xs.n, xs.c, xs.hw()));
    assert!(dgamma.len() == xs.c && dbeta.len() == xs.c);
    let (dxp, dgp, dbp) = (SyncPtr::of(dx), SyncPtr::of(dgamma), SyncPtr::of(dbeta));
    for_channels(xs.c, xs.n * xs.c * xs.hw(), |c| {
        let (mean, invstd) = (save_mean[c].to_f64(), save_invstd[c].to_f64());
        let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
        for i in 0..xs.n {
            let (xp, yp, gp) = (plane(x, xs, i, c), plane(y, ys, i, c), plane(dy, dys, i, c));
            for ((&xv, &yv), &gv) in xp.iter().zip(yp).zip(gp) {
                let g = masked(yv, gv).to_f64();
                sum_g += g;
                sum_gx += g * (xv.to_f64() - mean) * invstd;
            }
        }
        // SAFETY: one task per channel: element c of dgamma/dbeta and the channel's planes of dx.
        unsafe {
            *dbp.at(c) += T::from_f64(sum_g);
            *dgp.at(c) += T::from_f64(sum_gx);
        }
        let k = gamma[c].to_f64() * invstd;
        let (mg, mgx) = (sum_g / count, sum_gx / count);
        for i in 0..xs.n {
            let (xp, yp, gp) = (plane(x, xs, i, c), plane(y, ys, i, c), plane(dy, dys, i, c));
            let dp = unsafe { dxp.plane(dxs, i, c) };
            for (((d, &xv), &yv), &gv) in dp.iter_mut().zip(xp).zip(yp).zip(gp) {
                let xhat = (xv.to_f64() - mean) * invstd;
                *d += T::from_f64(k * (masked(yv, gv).to_f64() - mg - xhat * mgx));
            }
        }
    });
}

// ------------------------------------------------------------------------------------------------
// Element-wise ops. `y` never aliases an input; backward reads the forward's inputs or output.
// ------------------------------------------------------------------------------------------------

/// Applies `f(plane of y, plane of a, plane of b)` over every (image, channel).
fn zip3<T: Real>(a: &[T], as_: Shape, b: &[T], bs: Shape, y: &mut [T], ys: Shape, f: impl Fn(&mut [T], &[T], &[T]) + Sync + Send) {
    assert_eq!((as_.n, as_.c, as_.hw()), (ys.n, ys.c, ys.hw()));
    assert_eq!((bs.n, bs.c, bs.hw()), (ys.n, ys.c, ys.hw()));
    assert!(y.len() >= ys.span());
    let yp = SyncPtr::of(y);
    // SAFETY: in bounds (asserted); one task per output plane.
    for_planes(ys.n, ys.c, ys.hw(), |i, c| f(unsafe { yp.plane(ys, i, c) }, plane(a, as_, i, c), plane(b, bs, i, c)));
}

/// y = relu?(a + b). a, b, y: N×C×H×W.
pub fn add_forward<T: Real>(a: &[T], as_: Shape, b: &[T], bs: Shape, relu: bool, y: &mut [T], ys: Shape) {
    zip3(a, as_, b, bs, y, ys, |y, a, b| {
        for ((d, &a), &b) in y.iter_mut().zip(a).zip(b) {
            let v = a + b;
            *d = if relu && v < T::ZERO { T::ZERO } else { v };
        }
    });
}

/// da += g, db += g with g = dy (masked by y > 0 when `relu`). y, dy, da, db: N×C×H×W.
/// `da` and `db` may be slices of the same gradient buffer, so they are passed one at a time.
pub fn add_backward<T: Real>(y: &[T], ys: Shape, relu: bool, dy: &[T], dys: Shape, dst: &mut [T], ds: Shape) {
    zip3(y, ys, dy, dys, dst, ds, |d, y, g| {
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            if !relu || y > T::ZERO {
                *d += g;
            }
        }
    });
}

/// y = a · b. a, b, y: N×C×H×W.
pub fn mul_forward<T: Real>(a: &[T], as_: Shape, b: &[T], bs: Shape, y: &mut [T], ys: Shape) {
    zip3(a, as_, b, bs, y, ys, |y, a, b| {
        for ((d, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *d = a * b;
        }
    });
}

/// d_self += dy · other (call once per factor). other, dy, d_self: N×C×H×W.
pub fn mul_backward<T: Real>(other: &[T], os: Shape, dy: &[T], dys: Shape, d_self: &mut [T], ds: Shape) {
    zip3(other, os, dy, dys, d_self, ds, |d, o, g| {
        for ((d, &o), &g) in d.iter_mut().zip(o).zip(g) {
            *d += o * g;
        }
    });
}

/// y = relu(x). x, y: N×C×H×W.
pub fn relu_forward<T: Real>(x: &[T], xs: Shape, y: &mut [T], ys: Shape) {
    zip3(x, xs, x, xs, y, ys, |y, x, _| {
        for (d, &v) in y.iter_mut().zip(x) {
            *d = if v > T::ZERO { v } else { T::ZERO };
        }
    });
}

/// dx += dy where y > 0 (PyTorch's threshold_backward on the output). y, dy, dx: N×C×H×W.
pub fn relu_backward<T: Real>(y: &[T], ys: Shape, dy: &[T], dys: Shape, dx: &mut [T], dxs: Shape) {
    add_backward(y, ys, true, dy, dys, dx, dxs);
}

/// y = σ(x). x, y: N×C×H×W.
pub fn sigmoid_forward<T: Real>(x: &[T], xs: Shape, y: &mut [T], ys: Shape) {
    zip3(x, xs, x, xs, y, ys, |y, x, _| {
        for (d, &v) in y.iter_mut().zip(x) {
            *d = sigmoid(v);
        }
    });
}

/// dx += dy · y(1 − y). y, dy, dx: N×C×H×W.
pub fn sigmoid_backward<T: Real>(y: &[T], ys: Shape, dy: &[T], dys: Shape, dx: &mut [T], dxs: Shape) {
    zip3(y, ys, dy, dys, dx, dxs, |d, y, g| {
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d += g * y * (T::ONE - y);
        }
    });
}

/// y = x (a channel-slice copy, e.g. the untouched last Res2Net split into the concatenation).
pub fn copy_forward<T: Real>(x: &[T], xs: Shape, y: &mut [T], ys: Shape) {
    zip3(x, xs, x, xs, y, ys, |y, x, _| y.copy_from_slice(x));
}

/// dx += dy.
pub fn copy_backward<T: Real>(dy: &[T], dys: Shape, dx: &mut [T], dxs: Shape) {
    add_backward(dy, dys, false, dy, dys, dx, dxs);
}

/// Reverse attention y = (1 − σ(m)) · x, m one channel broadcast over x's channels.
/// m: N×1×H×W (`ms`), x, y: N×C×H×W.
pub fn reverse_attention_forward<T: Real>(m: &[T], ms: Shape, x: &[T], xs: Shape, y: &mut [T], ys: Shape) {
    assert_eq!((ms.n, ms.c, ms.hw()), (xs.n, 1, xs.hw()));
    for i in 0..xs.n {
        let att: Vec<T> = plane(m, ms, i, 0).iter().map(|&v| T::ONE - sigmoid(v)).collect();
        for c in 0..xs.c {
            for ((d, &s), &a) in plane_mut(y, ys, i, c).iter_mut().zip(plane(x, xs, i, c)).zip(&att) {
                *d = a * s;
            }
        }
    }
}

/// dx += (1 − σ(m))·dy, dm += −σ(m)(1 − σ(m)) · Σ_c dy·x. m, dm: N×1×H×W; x, dy, dx: N×C×H×W.
#[allow(clippy::too_many_arguments)]
pub fn reverse_attention_backward<T: Real>(
    m: &[T],
    ms: Shape,
    x: &[T],
    xs: Shape,
    dy: &[T],
    dys: Shape,
    dm: &mut [T],
    dms: Shape,
    dx: &mut [T],
    dxs: Shape,
) {
    for i in 0..xs.n {
        let sig: Vec<T> = plane(m, ms, i, 0).iter().map(|&v| sigmoid(v)).collect();
        let mut dsum = vec![T::ZERO; xs.hw()];
        for c in 0..xs.c {
            let (xp, gp) = (plane(x, xs, i, c), plane(dy, dys, i, c));
            for (((d, ds), (&xv, &g)), &s) in plane_mut(dx, dxs, i, c).iter_mut().zip(dsum.iter_mut()).zip(xp.iter().zip(gp)).zip(&sig) {
                *d += (T::ONE - s) * g;
                *ds += g * xv;
            }
        }
        for ((d, &ds), &s) in plane_mut(dm, dms, i, 0).iter_mut().zip(&dsum).zip(&sig) {
            *d += -(s * (T::ONE - s)) * ds;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Pooling and resizing: the same PyTorch index arithmetic as the inference ops in `cpu::ops`.
// ------------------------------------------------------------------------------------------------

/// Window [start, end) of output index `o` along one axis, clipped to the input.
fn window(o: usize, k: usize, s: usize, p: usize, size: usize) -> (usize, usize) {
    let start = (o * s) as isize - p as isize;
    (start.max(0) as usize, ((start + k as isize).max(0) as usize).min(size))
}

/// MaxPool2d(k, s, p), floor mode. x: N×C×H×W → y: N×C×OH×OW.
pub fn max_pool_forward<T: Real>(x: &[T], xs: Shape, y: &mut [T], ys: Shape, k: usize, s: usize, p: usize) {
    assert_eq!(ys.h, pool_out_size(xs.h, k, s, p, false));
    assert!(y.len() >= ys.span());
    let yp = SyncPtr::of(y);
    for_planes(xs.n, xs.c, xs.hw(), |i, c| {
        let src = plane(x, xs, i, c);
        // SAFETY: in bounds (asserted); one task per output plane.
        let dst = unsafe { yp.plane(ys, i, c) };
        for oy in 0..ys.h {
            for ox in 0..ys.w {
                dst[oy * ys.w + ox] = src[max_pool_argmax(src, xs, oy, ox, k, s, p)];
            }
        }
    });
}

/// Index of the window's maximum: the first one in row-major order, NaN winning (PyTorch's rule).
fn max_pool_argmax<T: Real>(src: &[T], xs: Shape, oy: usize, ox: usize, k: usize, s: usize, p: usize) -> usize {
    let (ya, yb) = window(oy, k, s, p, xs.h);
    let (xa, xb) = window(ox, k, s, p, xs.w);
    let mut best = ya * xs.w + xa;
    for yy in ya..yb {
        for xx in xa..xb {
            let j = yy * xs.w + xx;
            if src[j] > src[best] || (src[j].is_nan() && !src[best].is_nan()) {
                best = j;
            }
        }
    }
    best
}

/// dx[argmax] += dy. x: N×C×H×W, dy: N×C×OH×OW, dx: like x.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_backward<T: Real>(x: &[T], xs: Shape, dy: &[T], dys: Shape, dx: &mut [T], dxs: Shape, k: usize, s: usize, p: usize) {
    assert!(dx.len() >= dxs.span() && (dxs.n, dxs.c, dxs.hw()) == (xs.n, xs.c, xs.hw()));
    let dp = SyncPtr::of(dx);
    for_planes(xs.n, xs.c, xs.hw(), |i, c| {
        let src = plane(x, xs, i, c);
        let g = plane(dy, dys, i, c);
        // SAFETY: in bounds (asserted); one task per plane.
        let d = unsafe { dp.plane(dxs, i, c) };
        for oy in 0..dys.h {
            for ox in 0..dys.w {
                d[max_pool_argmax(src, xs, oy, ox, k, s, p)] += g[oy * dys.w + ox];
            }
        }
    });
}

/// (ya, yb, xa, xb, divisor) of output (oy, ox): PyTorch's avg_pool2d window and divisor rules.
#[allow(clippy::too_many_arguments)]
fn avg_window(oy: usize, ox: usize, xs: Shape, k: usize, s: usize, p: usize, count_include_pad: bool) -> (usize, usize, usize, usize, f64) {
    let span = |o: usize, size: usize| {
        let start = (o * s) as isize - p as isize;
        let end = (start + k as isize).min((size + p) as isize);
        let padded = end - start;
        (start.max(0) as usize, end.min(size as isize) as usize, padded)
    };
    let (ya, yb, ph) = span(oy, xs.h);
    let (xa, xb, pw) = span(ox, xs.w);
    let div = if count_include_pad { (ph * pw) as f64 } else { ((yb - ya) * (xb - xa)) as f64 };
    (ya, yb, xa, xb, div)
}

/// AvgPool2d(k, s, p, ceil_mode, count_include_pad); the output size in `ys` decides ceil vs floor.
/// x: N×C×H×W → y: N×C×OH×OW.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool_forward<T: Real>(x: &[T], xs: Shape, y: &mut [T], ys: Shape, k: usize, s: usize, p: usize, count_include_pad: bool) {
    assert!(y.len() >= ys.span() && (ys.n, ys.c) == (xs.n, xs.c));
    let yp = SyncPtr::of(y);
    for_planes(xs.n, xs.c, xs.hw(), |i, c| {
        let src = plane(x, xs, i, c);
        // SAFETY: in bounds (asserted); one task per output plane.
        let dst = unsafe { yp.plane(ys, i, c) };
        {
            for oy in 0..ys.h {
                for ox in 0..ys.w {
                    let (ya, yb, xa, xb, div) = avg_window(oy, ox, xs, k, s, p, count_include_pad);
                    let mut acc = T::ZERO;
                    for yy in ya..yb {
                        for xx in xa..xb {
                            acc += src[yy * xs.w + xx];
                        }
                    }
                    dst[oy * ys.w + ox] = acc / T::from_f64(div);
                }
            }
        }
    });
}

/// dx[window] += dy / divisor. dy: N×C×OH×OW, dx: N×C×H×W.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool_backward<T: Real>(dy: &[T], dys: Shape, dx: &mut [T], dxs: Shape, k: usize, s: usize, p: usize, count_include_pad: bool) {
    assert!(dx.len() >= dxs.span() && (dys.n, dys.c) == (dxs.n, dxs.c));
    let dp = SyncPtr::of(dx);
    for_planes(dxs.n, dxs.c, dxs.hw(), |i, c| {
        let g = plane(dy, dys, i, c);
        // SAFETY: in bounds (asserted); one task per plane.
        let d = unsafe { dp.plane(dxs, i, c) };
        {
            for oy in 0..dys.h {
                for ox in 0..dys.w {
                    let (ya, yb, xa, xb, div) = avg_window(oy, ox, dxs, k, s, p, count_include_pad);
                    let v = g[oy * dys.w + ox] / T::from_f64(div);
                    for yy in ya..yb {
                        for xx in xa..xb {
                            d[yy * dxs.w + xx] += v;
                        }
                    }
                }
            }
        }
    });
}

type Taps<T> = Vec<(usize, usize, T, T)>;

fn taps<T: Real>(in_size: usize, out_size: usize, mode: ResizeMode) -> Taps<T> {
    resize_taps(in_size, out_size, mode)
        .into_iter()
        .map(|(i0, i1, l0, l1)| (i0, i1, T::from_f64(l0 as f64), T::from_f64(l1 as f64)))
        .collect()
}

/// Bilinear resize from x's spatial size to y's (PyTorch upsample_bilinear2d index math).
/// x: N×C×H×W → y: N×C×OH×OW.
pub fn resize_forward<T: Real>(x: &[T], xs: Shape, y: &mut [T], ys: Shape, mode: ResizeMode) {
    let (th, tw) = (taps::<T>(xs.h, ys.h, mode), taps::<T>(xs.w, ys.w, mode));
    assert!(y.len() >= ys.span() && (ys.n, ys.c) == (xs.n, xs.c));
    let yp = SyncPtr::of(y);
    for_planes(xs.n, xs.c, ys.hw(), |i, c| {
        let src = plane(x, xs, i, c);
        // SAFETY: in bounds (asserted); one task per output plane.
        let dst = unsafe { yp.plane(ys, i, c) };
        {
            for (oy, &(h0, h1, lh0, lh1)) in th.iter().enumerate() {
                let (r0, r1) = (&src[h0 * xs.w..][..xs.w], &src[h1 * xs.w..][..xs.w]);
                for (ox, &(w0, w1, lw0, lw1)) in tw.iter().enumerate() {
                    dst[oy * ys.w + ox] = lh0 * (lw0 * r0[w0] + lw1 * r0[w1]) + lh1 * (lw0 * r1[w0] + lw1 * r1[w1]);
                }
            }
        }
    });
}

/// The transpose of `resize_forward`: scatter-adds each output gradient onto its four taps.
/// dy: N×C×OH×OW, dx: N×C×H×W.
pub fn resize_backward<T: Real>(dy: &[T], dys: Shape, dx: &mut [T], dxs: Shape, mode: ResizeMode) {
    let (th, tw) = (taps::<T>(dxs.h, dys.h, mode), taps::<T>(dxs.w, dys.w, mode));
    assert!(dx.len() >= dxs.span() && (dys.n, dys.c) == (dxs.n, dxs.c));
    let dp = SyncPtr::of(dx);
    for_planes(dxs.n, dxs.c, dys.hw(), |i, c| {
        let g = plane(dy, dys, i, c);
        // SAFETY: in bounds (asserted); one task per plane.
        let d = unsafe { dp.plane(dxs, i, c) };
        {
            for (oy, &(h0, h1, lh0, lh1)) in th.iter().enumerate() {
                for (ox, &(w0, w1, lw0, lw1)) in tw.iter().enumerate() {
                    let v = g[oy * dys.w + ox];
                    d[h0 * dxs.w + w0] += lh0 * lw0 * v;
                    d[h0 * dxs.w + w1] += lh0 * lw1 * v;
                    d[h1 * dxs.w + w0] += lh1 * lw0 * v;
                    d[h1 * dxs.w + w1] += lh1 * lw1 * v;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    //! The ops split their work over rayon tasks only above `PAR_MIN_DEFAULT` elements, which the PyTorch
    //! fixtures (small odd sizes) never reach: here every op runs on maps large enough to split, inside
    //! a wider concatenation buffer, on 1 and on 3 threads, and the results must agree bit for bit (each
    //! task owns disjoint planes and keeps the serial summation order).
    use super::*;

    fn rand(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every op's outputs and gradients, concatenated.
    fn run_all() -> Vec<f32> {
        let (n, c, h, w) = (2, 12, 40, 44);
        // x is channels 2..2+c of a (c+4)-channel buffer, so batch_stride differs from c·h·w.
        let xs = Shape { n, c, h, w, batch_stride: (c + 4) * h * w };
        let xoff = 2 * h * w;
        let xbuf = rand(n * (c + 4) * h * w, 1);
        let x = &xbuf[xoff..];
        let dense = Shape::dense(n, c, h, w);
        let mut out = Vec::new();

        let g = ConvGeom { cin: c, cout: 10, kh: 3, kw: 3, stride: 1, pad_h: 1, pad_w: 1, dil: 1 };
        let ys = Shape::dense(n, g.cout, h, w);
        let (wt, b) = (rand(g.cout * c * 9, 2), rand(g.cout, 3));
        let mut y = vec![0.0; ys.span()];
        let mut scratch = vec![0.0; g.scratch_len(h, w)];
        conv_forward(&g, x, xs, &wt, Some(&b), &mut y, ys, &mut scratch);
        let dy = rand(ys.span(), 4);
        let (mut dx, mut dw, mut db) = (vec![0.0; dense.span()], vec![0.0; wt.len()], vec![0.0; b.len()]);
        conv_backward(&g, x, xs, &wt, &dy, ys, Some((&mut dx, dense)), &mut dw, Some(&mut db), &mut scratch);
        out.extend(y.iter().chain(&dx).chain(&dw).chain(&db));

        let (gamma, beta) = (rand(c, 5), rand(c, 6));
        let (mut rm, mut rv, mut sm, mut si) = (vec![0.0; c], vec![1.0; c], vec![0.0; c], vec![0.0; c]);
        let mut y = vec![0.0; dense.span()];
        batchnorm_forward(x, xs, &gamma, &beta, &mut rm, &mut rv, true, &mut y, dense, &mut sm, &mut si);
        let dy = rand(dense.span(), 7);
        let (mut dx, mut dg, mut dbt) = (vec![0.0; dense.span()], vec![0.0; c], vec![0.0; c]);
        batchnorm_backward(x, xs, &y, dense, &gamma, &sm, &si, true, &dy, dense, &mut dx, dense, &mut dg, &mut dbt);
        out.extend(y.iter().chain(&rm).chain(&rv).chain(&dx).chain(&dg).chain(&dbt));

        let other = rand(dense.span(), 8);
        let mut y = vec![0.0; dense.span()];
        add_forward(x, xs, &other, dense, true, &mut y, dense);
        let mut da = vec![0.0; dense.span()];
        add_backward(&y, dense, true, &dy, dense, &mut da, dense);
        mul_backward(&other, dense, &dy, dense, &mut da, dense);
        out.extend(y.iter().chain(&da));

        let ps = Shape::dense(n, c, pool_out_size(h, 3, 2, 1, false), pool_out_size(w, 3, 2, 1, false));
        let mut y = vec![0.0; ps.span()];
        max_pool_forward(x, xs, &mut y, ps, 3, 2, 1);
        let dyp = rand(ps.span(), 9);
        let mut dx = vec![0.0; dense.span()];
        max_pool_backward(x, xs, &dyp, ps, &mut dx, dense, 3, 2, 1);
        avg_pool_backward(&dyp, ps, &mut dx, dense, 3, 2, 1, true);
        out.extend(y.iter().chain(&dx));
        avg_pool_forward(x, xs, &mut y, ps, 3, 2, 1, true);
        out.extend(&y);

        let rs = Shape::dense(n, c, 2 * h, 2 * w);
        let mut y = vec![0.0; rs.span()];
        resize_forward(x, xs, &mut y, rs, ResizeMode::AlignCorners);
        let mut dx = vec![0.0; dense.span()];
        resize_backward(&y, rs, &mut dx, dense, ResizeMode::AlignCorners);
        out.extend(y.iter().chain(&dx));
        out
    }

    #[test]
    fn parallel_ops_match_serial_bit_for_bit() {
        let on = |t: usize| rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("thread pool").install(run_all);
        let (one, three) = (on(1), on(3));
        assert_eq!(one.len(), three.len());
        let differ = one.iter().zip(&three).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{differ} of {} values differ between 1 and 3 threads", one.len());
    }
}
