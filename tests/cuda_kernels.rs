//! The CUDA kernels, emulated on the host (kernels/emulation.h), against their CPU twins in src/cpu,
//! plus a whole-model forward through the emulated kernels, plus the GPU engine where a GPU exists.
//!
//! Every output buffer is poisoned with NaN first and is larger than the slice a kernel writes
//! (channel slices of concat buffers), so a missed element and a stray write both fail. Sizes are
//! deliberately awkward: batch 3, spatial sizes that are not multiples of the 64-wide tiles, channel
//! counts that are not multiples of 8, cout > 64 (two tile rows).
//!
//! Tolerances: the CPU reference convolution accumulates in f64, the kernel in f32 in tile order; for
//! K = cin·kh·kw terms of unit scale the f32 rounding walk is ≈ √K · 2⁻²⁴ ≈ 2e-6 for K ≈ 1000, so
//! a relative L2 bound of 1e-5 and an elementwise bound of 1e-4·(1 + |ref|) hold with margin and still
//! catch any indexing error (which shows up as O(1) differences). Pools sum in the CPU's order and are
//! compared at 1e-6; resizes and the attention differ only by FMA contraction / expf rounding (1e-6).

mod common;

use common::{conv_param, Rng};
use infnet::cpu::conv::{conv2d_reference, Epilogue};
use infnet::cpu::ops;
use infnet::cpu::tensor::{In, Out, Shape};
use infnet::cuda::emulated::{self, EmulatedEngine};
use infnet::cuda::kernels::{self, Launch, Pool, Slice};
use infnet::engine::{Device, Engine};
use infnet::graph::{ConvParam, ResizeMode};
use infnet::model::synthetic::{state_dict, Spec};
use infnet::{InfNet, Tensor};

/// An N × ctotal × h × w host buffer, of which tests use channel slices.
struct Buf {
    data: Vec<f32>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Buf {
    fn random(rng: &mut Rng, n: usize, c: usize, h: usize, w: usize) -> Buf {
        Buf { data: rng.vec(n * c * h * w, 1.0), n, c, h, w }
    }
    fn nan(n: usize, c: usize, h: usize, w: usize) -> Buf {
        Buf { data: vec![f32::NAN; n * c * h * w], n, c, h, w }
    }
    fn shape(&self, c: usize) -> Shape {
        Shape { n: self.n, c, h: self.h, w: self.w, batch_stride: self.c * self.h * self.w }
    }
    fn off(&self, c_off: usize) -> usize {
        c_off * self.h * self.w
    }
    /// Channels c_off .. c_off + c as the kernels see them.
    fn dev(&mut self, c_off: usize, c: usize) -> Slice {
        let off = self.off(c_off);
        Slice { addr: self.data[off..].as_mut_ptr() as u64, shape: self.shape(c) }
    }
    fn cpu_in(&self, c_off: usize, c: usize) -> In {
        In::new(&self.data[self.off(c_off)..], self.shape(c))
    }
    fn cpu_out(&mut self, c_off: usize, c: usize) -> Out {
        let (off, shape) = (self.off(c_off), self.shape(c));
        Out::new(&mut self.data[off..], shape)
    }
}

fn run(l: Launch) {
    // SAFETY: every Slice in these tests points into a live Buf of the extent its shape describes.
    unsafe { emulated::run(&l) }
}

/// Compares two whole buffers (including what lies outside the written slice: NaN in both there).
fn compare(what: &str, got: &[f32], want: &[f32], rel_l2_max: f64, elem_tol: f32) {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} should be untouched (NaN) but is {g}");
            continue;
        }
        assert!(g.is_finite(), "{what}: element {i} is {g}, want {w}");
        let d = (g - w).abs();
        assert!(d <= elem_tol * (1.0 + w.abs()), "{what}: element {i}: got {g}, want {w} (|diff| {d})");
        num += (d as f64).powi(2);
        den += (w as f64).powi(2);
    }
    let rel = (num / den.max(1e-30)).sqrt();
    assert!(rel <= rel_l2_max, "{what}: relative L2 {rel:e} > {rel_l2_max:e}");
}

#[test]
fn parameter_structs_match_the_c_side() {
    let c = emulated::c_param_sizes();
    for (i, (name, rust, expected)) in kernels::PARAM_SIZES.iter().enumerate() {
        assert_eq!(rust, expected, "{name}: Rust size");
        assert_eq!(c[i], *expected, "{name}: C size");
    }
}

#[derive(Clone, Copy, Default)]
struct ConvCase {
    x_add: bool,
    residual: bool,
    relu: bool,
    mul: bool,
}

/// One conv through the emulated kernel and the reference: input and output are channel slices of
/// larger buffers (2 extra channels before, 1 after), batch 3.
fn check_conv(p: &ConvParam, h: usize, w: usize, case: ConvCase, seed: u64) {
    let mut rng = Rng(seed);
    let n = 3;
    let (oh, ow) = p.out_size(h, w);
    let mut x = Buf::random(&mut rng, n, p.cin + 3, h, w);
    let mut xa = Buf::random(&mut rng, n, p.cin + 1, h, w);
    let mut res = Buf::random(&mut rng, n, p.cout + 2, oh, ow);
    let mut mul = Buf::random(&mut rng, n, p.cout, oh, ow);
    let mut y = Buf::nan(n, p.cout + 3, oh, ow);
    let mut want = Buf::nan(n, p.cout + 3, oh, ow);

    let wt = kernels::conv_weight_layout(p);
    let launch = kernels::conv(
        p,
        wt.as_ptr() as u64,
        p.bias.as_ptr() as u64,
        x.dev(2, p.cin),
        case.x_add.then(|| xa.dev(1, p.cin)),
        y.dev(2, p.cout),
        case.residual.then(|| res.dev(2, p.cout)),
        case.relu,
        case.mul.then(|| mul.dev(0, p.cout)),
    )
    .expect("valid conv");
    assert_eq!(launch.kernel, kernels::conv_kernel(p).0);
    run(launch);

    let ep = Epilogue {
        residual: case.residual.then(|| res.cpu_in(2, p.cout)),
        relu: case.relu,
        scale: None,
        mul: case.mul.then(|| mul.cpu_in(0, p.cout)),
    };
    conv2d_reference(p, x.cpu_in(2, p.cin), case.x_add.then(|| xa.cpu_in(1, p.cin)), want.cpu_out(2, p.cout), ep);
    compare(&p.name, &y.data, &want.data, 1e-5, 1e-4);
}

#[test]
fn conv_every_graph_geometry() {
    let mut rng = Rng(0x5eed);
    // (cin, cout, kh, kw, stride, pad_h, pad_w, dil, h, w): every geometry Inf-Net uses.
    let cases = [
        (13, 70, 1, 1, 1, 0, 0, 1, 13, 11),  // 1×1 (pointwise kernel), two tile rows
        (3, 9, 3, 3, 2, 1, 1, 1, 17, 15),    // stem 3×3 / 2
        (7, 11, 3, 3, 1, 1, 1, 1, 13, 11),   // 3×3
        (7, 40, 3, 3, 1, 1, 1, 1, 13, 11),   // 3×3, wide tile (cout > 32)
        (9, 33, 3, 3, 2, 1, 1, 1, 13, 10),   // 3×3 / 2, wide tile
        (13, 32, 1, 1, 1, 0, 0, 1, 13, 11),  // 1×1, narrow tile at its limit
        (6, 5, 3, 3, 2, 1, 1, 1, 13, 10),    // Res2Net stage 3×3 / 2
        (5, 7, 1, 3, 1, 0, 1, 1, 9, 12),     // RFB 1×k, k×1
        (5, 7, 3, 1, 1, 1, 0, 1, 9, 12),
        (5, 6, 1, 5, 1, 0, 2, 1, 9, 12),
        (5, 6, 5, 1, 1, 2, 0, 1, 9, 12),
        (4, 6, 1, 7, 1, 0, 3, 1, 11, 9),
        (4, 6, 7, 1, 1, 3, 0, 1, 11, 9),
        (5, 7, 3, 3, 1, 3, 3, 3, 9, 12),     // dilated 3, 5, 7
        (5, 7, 3, 3, 1, 5, 5, 5, 9, 12),
        (5, 7, 3, 3, 1, 7, 7, 7, 11, 9),
        (9, 10, 5, 5, 1, 2, 2, 1, 7, 9),     // ra4 5×5
        (19, 1, 1, 1, 1, 0, 0, 1, 9, 7),     // single output channel
        (11, 1, 3, 3, 1, 1, 1, 1, 9, 7),
    ];
    for (i, &(cin, cout, kh, kw, s, ph, pw, d, h, w)) in cases.iter().enumerate() {
        let p = conv_param(&mut rng, cin, cout, kh, kw, s, ph, pw, d);
        check_conv(&p, h, w, ConvCase::default(), 100 + i as u64);
    }
}

#[test]
fn conv_fused_epilogues_and_input_sum() {
    let mut rng = Rng(0xe91);
    let p3 = conv_param(&mut rng, 7, 9, 3, 3, 1, 1, 1, 1);
    let p3w = conv_param(&mut rng, 7, 45, 3, 3, 1, 1, 1, 1);
    let p1 = conv_param(&mut rng, 10, 67, 1, 1, 1, 0, 0, 1);
    let p1n = conv_param(&mut rng, 10, 19, 1, 1, 1, 0, 0, 1);
    let all = ConvCase { x_add: true, residual: true, relu: true, mul: true };
    for (i, case) in [
        ConvCase { x_add: true, relu: true, ..Default::default() }, // Res2Net sp + spx[i]
        ConvCase { residual: true, relu: true, ..Default::default() }, // bottleneck conv3 / RFB
        ConvCase { residual: true, ..Default::default() },             // reverse-attention residual
        ConvCase { mul: true, ..Default::default() },                  // decoder conv·x
        all,
    ]
    .into_iter()
    .enumerate()
    {
        check_conv(&p3, 11, 13, case, 200 + i as u64);
        check_conv(&p3w, 11, 13, case, 250 + i as u64);
        check_conv(&p1, 9, 10, case, 300 + i as u64);
        check_conv(&p1n, 9, 10, case, 350 + i as u64);
    }
}

/// A K long enough for many tiles of 16 (and its rounding error) with a large output.
#[test]
fn conv_long_reduction() {
    let mut rng = Rng(0x10c);
    let p = conv_param(&mut rng, 37, 20, 5, 5, 1, 2, 2, 1); // K = 925
    check_conv(&p, 12, 13, ConvCase { residual: true, relu: true, ..Default::default() }, 400);
}

/// A conv reading its input through an align_corners resize of a smaller source (the partial
/// decoder's up(·) → conv_upsample*), against ops::resize_bilinear + the reference conv. Source,
/// mul and output are channel slices of larger buffers, batch 3, output NaN-poisoned.
fn check_conv_resized(p: &ConvParam, sh: usize, sw: usize, h: usize, w: usize, case: ConvCase, seed: u64) {
    let mut rng = Rng(seed);
    let n = 3;
    let (oh, ow) = p.out_size(h, w);
    let mut src = Buf::random(&mut rng, n, p.cin + 3, sh, sw);
    let mut res = Buf::random(&mut rng, n, p.cout + 2, oh, ow);
    let mut mul = Buf::random(&mut rng, n, p.cout + 1, oh, ow);
    let mut up = Buf::nan(n, p.cin, h, w);
    let mut y = Buf::nan(n, p.cout + 3, oh, ow);
    let mut want = Buf::nan(n, p.cout + 3, oh, ow);

    let wt = kernels::conv_weight_layout(p);
    let launch = kernels::conv_resized(
        p,
        wt.as_ptr() as u64,
        p.bias.as_ptr() as u64,
        src.dev(2, p.cin),
        h,
        w,
        y.dev(1, p.cout),
        case.residual.then(|| res.dev(2, p.cout)),
        case.relu,
        case.mul.then(|| mul.dev(1, p.cout)),
    )
    .expect("valid resized conv");
    assert_eq!(launch.kernel, kernels::conv_resized_kernel(p).0);
    run(launch);

    ops::resize_bilinear(src.cpu_in(2, p.cin), up.cpu_out(0, p.cin), ResizeMode::AlignCorners);
    let ep = Epilogue {
        residual: case.residual.then(|| res.cpu_in(2, p.cout)),
        relu: case.relu,
        scale: None,
        mul: case.mul.then(|| mul.cpu_in(1, p.cout)),
    };
    conv2d_reference(p, up.cpu_in(0, p.cin), None, want.cpu_out(1, p.cout), ep);
    compare(&format!("{} on {sh}×{sw} → {h}×{w}", p.name), &y.data, &want.data, 1e-5, 1e-4);
}

#[test]
fn conv_reading_through_align_corners_resize() {
    let mut rng = Rng(0xdec);
    let p3 = conv_param(&mut rng, 7, 9, 3, 3, 1, 1, 1, 1); // narrow tile
    let p3w = conv_param(&mut rng, 6, 45, 3, 3, 1, 1, 1, 1); // wide tile
    let p5 = conv_param(&mut rng, 5, 7, 3, 3, 2, 2, 2, 2); // stride, dilation
    let p1 = conv_param(&mut rng, 10, 11, 1, 1, 1, 0, 0, 1); // 1×1 takes the general resized kernel
    let all = ConvCase { residual: true, relu: true, mul: true, ..Default::default() };
    let sizes = [(6, 5, 12, 10), (7, 4, 14, 8), (1, 3, 2, 6), (5, 6, 11, 13)];
    for (i, &(sh, sw, h, w)) in sizes.iter().enumerate() {
        for (j, case) in [ConvCase::default(), ConvCase { mul: true, ..Default::default() }, all].into_iter().enumerate() {
            let seed = 500 + 10 * i as u64 + j as u64;
            check_conv_resized(&p3, sh, sw, h, w, case, seed);
            check_conv_resized(&p3w, sh, sw, h, w, case, seed + 1000);
            check_conv_resized(&p5, sh, sw, h, w, case, seed + 2000);
            check_conv_resized(&p1, sh, sw, h, w, case, seed + 3000);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_pool(kind: Pool, c: usize, h: usize, w: usize, k: usize, s: usize, p: usize, ceil: bool, seed: u64) {
    let mut rng = Rng(seed);
    let n = 3;
    let (oh, ow) = (ops::pool_out_size(h, k, s, p, ceil), ops::pool_out_size(w, k, s, p, ceil));
    let mut x = Buf::random(&mut rng, n, c + 2, h, w);
    if kind == Pool::Max {
        // NaN propagates through max like PyTorch: image 0, slice channel 0, row 0, column 2.
        let at = x.off(1) + 2;
        x.data[at] = f32::NAN;
    }
    let mut y = Buf::nan(n, c + 1, oh, ow);
    let mut want = Buf::nan(n, c + 1, oh, ow);
    run(kernels::pool(kind, x.dev(1, c), y.dev(1, c), k, s, p).expect("valid pool"));
    match kind {
        Pool::Max => ops::max_pool(x.cpu_in(1, c), want.cpu_out(1, c), k, s, p),
        Pool::Avg { count_include_pad } => ops::avg_pool(x.cpu_in(1, c), want.cpu_out(1, c), k, s, p, count_include_pad),
    }
    let what = format!("{kind:?} k{k} s{s} p{p} ceil {ceil} on {h}×{w}");
    // NaN where the reference has NaN (untouched, or the propagated input NaN), nowhere else.
    for (i, (g, wv)) in y.data.iter().zip(&want.data).enumerate() {
        assert_eq!(g.is_nan(), wv.is_nan(), "{what}: element {i}: got {g}, want {wv}");
    }
    let mask = |v: &[f32]| v.iter().map(|&a| if a.is_nan() { 0.0 } else { a }).collect::<Vec<_>>();
    compare(&what, &mask(&y.data), &mask(&want.data), 1e-6, 1e-6);
}

#[test]
fn pools() {
    check_pool(Pool::Max, 5, 13, 10, 3, 2, 1, false, 1); // stem max-pool
    check_pool(Pool::Max, 3, 8, 8, 3, 2, 1, false, 2);
    check_pool(Pool::Avg { count_include_pad: true }, 5, 13, 11, 3, 1, 1, false, 3); // layer1 stage block
    check_pool(Pool::Avg { count_include_pad: true }, 5, 13, 11, 3, 2, 1, false, 4); // later stage blocks
    check_pool(Pool::Avg { count_include_pad: false }, 6, 13, 11, 2, 2, 0, true, 5); // downsample, ceil
    check_pool(Pool::Avg { count_include_pad: false }, 6, 8, 10, 2, 2, 0, true, 6);
}

fn check_resize(c: usize, h: usize, w: usize, oh: usize, ow: usize, mode: ResizeMode, seed: u64) {
    let mut rng = Rng(seed);
    let n = 3;
    let mut x = Buf::random(&mut rng, n, c + 1, h, w);
    let mut y = Buf::nan(n, c + 2, oh, ow);
    let mut want = Buf::nan(n, c + 2, oh, ow);
    run(kernels::resize(x.dev(1, c), y.dev(2, c), mode).expect("valid resize"));
    ops::resize_bilinear(x.cpu_in(1, c), want.cpu_out(2, c), mode);
    compare(&format!("resize {h}×{w} → {oh}×{ow} {mode:?}"), &y.data, &want.data, 1e-6, 1e-6);
}

#[test]
fn resizes_both_modes() {
    let sf = |h: usize, s: f64| ops::resize_out_size(h, s);
    // Decoder: ×2 align_corners=True.
    check_resize(5, 3, 4, 6, 8, ResizeMode::AlignCorners, 1);
    check_resize(3, 7, 5, 14, 10, ResizeMode::AlignCorners, 2);
    check_resize(2, 1, 3, 2, 6, ResizeMode::AlignCorners, 3);
    // Heads: scale factors up and down, sizes that do not divide.
    for (i, s) in [8.0, 32.0, 4.0, 2.0, 0.25, 0.5].into_iter().enumerate() {
        let (h, w) = (7, 5);
        let (oh, ow) = (sf(h, s), sf(w, s));
        if oh == 0 || ow == 0 {
            continue;
        }
        check_resize(3, h, w, oh, ow, ResizeMode::ScaleFactor(s), 10 + i as u64);
    }
    check_resize(2, 9, 13, 2, 3, ResizeMode::ScaleFactor(0.25), 20);
}

fn check_attention(c: usize, h: usize, w: usize, map_hw: (usize, usize), mode: Option<ResizeMode>, seed: u64) {
    let mut rng = Rng(seed);
    let n = 3;
    let mut map = Buf::random(&mut rng, n, 2, map_hw.0, map_hw.1);
    for v in &mut map.data {
        *v *= 4.0; // logits over the sigmoid's whole range
    }
    let mut x = Buf::random(&mut rng, n, c + 1, h, w);
    let mut y = Buf::nan(n, c + 2, h, w);
    let mut crop = Buf::nan(n, 2, h, w);
    let mut want = Buf::nan(n, c + 2, h, w);
    let mut want_crop = Buf::nan(n, 2, h, w);
    let fused_crop = mode.map(|_| crop.dev(1, 1));
    run(kernels::reverse_attention(map.dev(1, 1), mode, x.dev(1, c), y.dev(2, c), fused_crop, None).expect("valid attention"));
    let m = match mode {
        Some(mode) => {
            ops::resize_bilinear(map.cpu_in(1, 1), want_crop.cpu_out(1, 1), mode);
            want_crop.cpu_in(1, 1)
        }
        None => map.cpu_in(1, 1),
    };
    ops::reverse_attention(m, x.cpu_in(1, c), want.cpu_out(2, c));
    let what = format!("reverse attention {map_hw:?} → {h}×{w} {mode:?}");
    compare(&what, &y.data, &want.data, 1e-6, 1e-6);
    if mode.is_some() {
        compare(&format!("{what} (crop)"), &crop.data, &want_crop.data, 1e-6, 1e-6);
    }
}

#[test]
fn reverse_attention_fused_with_resize() {
    check_attention(5, 9, 7, (9, 7), None, 1);
    check_attention(5, 3, 2, (13, 11), Some(ResizeMode::ScaleFactor(0.25)), 2); // crop_4 = resize(ra5, 1/4)
    check_attention(7, 10, 8, (5, 4), Some(ResizeMode::ScaleFactor(2.0)), 3); // crop_3, crop_2
}

/// The whole branch head in one launch: resize of the coarse map (also written as the crop),
/// (1 − σ) × feature into `att`, and the edge guidance resized by `edge_scale` into channels
/// [w, w + ec) of a concat buffer (whose other channels, and one extra after, stay NaN).
#[allow(clippy::too_many_arguments)]
fn check_attention_with_edge(c: usize, h: usize, w: usize, map_hw: (usize, usize), mode: ResizeMode, ec: usize, edge_scale: f64, seed: u64) {
    let mut rng = Rng(seed);
    let n = 3;
    let (eh, ew) = ((h as f64 / edge_scale).round() as usize, (w as f64 / edge_scale).round() as usize);
    let mut map = Buf::random(&mut rng, n, 2, map_hw.0, map_hw.1);
    for v in &mut map.data {
        *v *= 4.0;
    }
    let mut x = Buf::random(&mut rng, n, c + 1, h, w);
    let mut edge = Buf::random(&mut rng, n, ec + 2, eh, ew);
    let width = 4;
    let (mut y, mut want) = (Buf::nan(n, c + 2, h, w), Buf::nan(n, c + 2, h, w));
    let (mut crop, mut want_crop) = (Buf::nan(n, 2, h, w), Buf::nan(n, 2, h, w));
    let (mut cat, mut want_cat) = (Buf::nan(n, width + ec + 1, h, w), Buf::nan(n, width + ec + 1, h, w));
    let emode = ResizeMode::ScaleFactor(edge_scale);
    let e = kernels::EdgeResize { x: edge.dev(1, ec), y: cat.dev(width, ec), mode: emode };
    let launch = kernels::reverse_attention(map.dev(1, 1), Some(mode), x.dev(1, c), y.dev(2, c), Some(crop.dev(1, 1)), Some(e))
        .expect("valid attention");
    assert!(launch.grid[0] as usize > (n * h * w).div_ceil(256), "edge blocks missing from the grid");
    run(launch);
    ops::resize_bilinear(map.cpu_in(1, 1), want_crop.cpu_out(1, 1), mode);
    ops::reverse_attention(want_crop.cpu_in(1, 1), x.cpu_in(1, c), want.cpu_out(2, c));
    ops::resize_bilinear(edge.cpu_in(1, ec), want_cat.cpu_out(width, ec), emode);
    let what = format!("reverse attention {map_hw:?} → {h}×{w} {mode:?}, edge {ec}×{eh}×{ew} × {edge_scale}");
    compare(&what, &y.data, &want.data, 1e-6, 1e-6);
    compare(&format!("{what} (crop)"), &crop.data, &want_crop.data, 1e-6, 1e-6);
    compare(&format!("{what} (edge)"), &cat.data, &want_cat.data, 1e-6, 1e-6);

    // Without the map resize (map already at h × w), the edge part still runs.
    let (mut y2, mut cat2) = (Buf::nan(n, c + 2, h, w), Buf::nan(n, width + ec + 1, h, w));
    let e = kernels::EdgeResize { x: edge.dev(1, ec), y: cat2.dev(width, ec), mode: emode };
    run(kernels::reverse_attention(crop.dev(1, 1), None, x.dev(1, c), y2.dev(2, c), None, Some(e)).expect("valid attention"));
    compare(&format!("{what} (unfused map)"), &y2.data, &want.data, 1e-6, 1e-6);
    compare(&format!("{what} (unfused map, edge)"), &cat2.data, &want_cat.data, 1e-6, 1e-6);
}

#[test]
fn reverse_attention_fused_with_resize_and_edge_concat() {
    // The model's three branches: crop_4 = resize(ra5, 1/4), edge × 1/8; crop_3/crop_2 × 2, edge × 1/4, × 1/2.
    check_attention_with_edge(5, 3, 2, (13, 11), ResizeMode::ScaleFactor(0.25), 3, 1.0 / 8.0, 41);
    check_attention_with_edge(7, 9, 7, (5, 4), ResizeMode::ScaleFactor(2.0), 5, 1.0 / 4.0, 42);
    check_attention_with_edge(6, 13, 11, (7, 6), ResizeMode::ScaleFactor(2.0), 3, 1.0 / 2.0, 43);
    // More edge work than attention work (edge blocks outnumber attention blocks), odd sizes.
    check_attention_with_edge(3, 19, 17, (10, 9), ResizeMode::ScaleFactor(2.0), 9, 1.0 / 2.0, 44);
}

/// The planner folds, in every reverse-attention branch, the crop resize and the edge-guidance
/// resize into the attention launch: 6 launches fewer than nodes, 3 attention launches each with
/// its crop and edge part, and only the non-branch resizes left as resize launches.
#[test]
fn plan_fuses_every_reverse_attention_branch() {
    use infnet::cuda::plan::{launches, ArenaLayout, WeightPack};
    use infnet::graph::Node;
    for model in [tiny_model(), InfNet::from_state_dict(&state_dict(&Spec::full(), 3)).expect("full model")] {
        let g = &model.graph;
        let layout = ArenaLayout::new(g, 2, 64, 64);
        let pack = WeightPack::new(g);
        let ls = launches(g, &layout, 1 << 20, &pack, 1 << 40).expect("plan");
        let count = |f: &dyn Fn(&Node) -> bool| g.nodes.iter().filter(|n| f(n)).count();
        let resizes = count(&|n| matches!(n, Node::Resize { .. }));
        assert_eq!(count(&|n| matches!(n, Node::ReverseAttention { .. })), 3);
        assert_eq!(ls.len(), g.nodes.len() - 9, "3 crop + 3 edge resizes folded, 3 decoder upsamples read through");
        let att: Vec<_> = ls
            .iter()
            .filter_map(|l| match l.params {
                kernels::Params::Attention(p) => Some((l, p)),
                _ => None,
            })
            .collect();
        assert_eq!(att.len(), 3);
        for (l, p) in att {
            assert_eq!(l.kernel, kernels::Kernel::ReverseAttention);
            assert!(p.crop != 0 && p.resize == 1, "crop resize not fused");
            assert!(p.edge != 0 && p.edge_y != 0 && p.ec > 0, "edge resize not fused");
            let edge_blocks = (p.n as usize * p.ec as usize * (p.h * p.w) as usize).div_ceil(256);
            assert_eq!(l.grid[0] as usize, p.attention_blocks as usize + edge_blocks);
        }
        assert_eq!(ls.iter().filter(|l| l.kernel == kernels::Kernel::ResizeBilinear).count(), resizes - 9);
    }
}

/// The partial decoder's ×2 align_corners upsamples: up(up(x1)), up(x2) and up(x2_2) are read only by
/// conv_upsample2/3/5, which sample them in their input gather, so their resize launches are gone;
/// up(x1) is also the source of up(up(x1)) and stays materialised (its two convs read it directly).
#[test]
fn plan_reads_decoder_upsamples_through_the_convs() {
    use infnet::cuda::plan::{launches, ArenaLayout, WeightPack};
    for model in [tiny_model(), InfNet::from_state_dict(&state_dict(&Spec::full(), 3)).expect("full model")] {
        let g = &model.graph;
        let layout = ArenaLayout::new(g, 2, 64, 64);
        let pack = WeightPack::new(g);
        let base = 1u64 << 20;
        let ls = launches(g, &layout, base, &pack, 1 << 40).expect("plan");
        let buf = |name: &str| g.bufs.iter().position(|b| b.name == name).unwrap_or_else(|| panic!("no buffer {name}"));
        let addr = |b: usize| base + 4 * layout.offsets[b] as u64;
        let resized_into = |b: usize| {
            ls.iter().filter(|l| matches!(l.params, kernels::Params::Resize(p) if p.y == addr(b))).count()
        };
        let u1 = buf("ParDec.up(x1)");
        assert_eq!(resized_into(u1), 1, "up(x1) feeds up(up(x1)): still materialised");
        for name in ["ParDec.up(up(x1))", "ParDec.up(x2)", "ParDec.up(x2_2)"] {
            assert_eq!(resized_into(buf(name)), 0, "{name}: resize launch should be gone");
        }
        let through: Vec<_> = ls
            .iter()
            .filter_map(|l| match l.params {
                kernels::Params::Conv(p) if p.src != 0 => Some((l.kernel, p)),
                _ => None,
            })
            .collect();
        assert_eq!(through.len(), 3, "conv_upsample2, 3, 5 read through the resize");
        for (k, p) in &through {
            assert!(matches!(k, kernels::Kernel::Conv2dResized | kernels::Kernel::Conv2dResizedM32));
            assert_eq!((p.kh, p.kw), (3, 3));
            assert_eq!((p.h, p.w), (2 * p.src_h, 2 * p.src_w));
        }
        for src in [u1, buf("ParDec.x2_2")] {
            assert!(through.iter().any(|(_, p)| p.src == addr(src)), "{}: no conv reads through its upsample", g.bufs[src].name);
        }
        // Every other conv keeps the plain kernels.
        assert!(ls
            .iter()
            .filter(|l| matches!(l.params, kernels::Params::Conv(p) if p.src == 0))
            .all(|l| !matches!(l.kernel, kernels::Kernel::Conv2dResized | kernels::Kernel::Conv2dResizedM32)));
    }
}

fn tiny_model() -> InfNet {
    InfNet::from_state_dict(&state_dict(&Spec::tiny(), 7)).expect("synthetic tiny model builds")
}

fn input(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = Rng(seed);
    Tensor { shape: vec![n, 3, h, w], data: rng.vec(n * 3 * h * w, 1.0) }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn compare_outputs(what: &str, got: &infnet::Outputs, want: &infnet::Outputs, tol: f64) {
    assert_eq!(got.len(), 5);
    for ((gn, g), (wn, w)) in got.iter().zip(want) {
        assert_eq!(gn, wn);
        assert_eq!(g.shape, w.shape, "{what} {gn}");
        assert!(g.data.iter().all(|v| v.is_finite()), "{what} {gn}: non-finite values (unwritten element?)");
        let e = rel_l2(&g.data, &w.data);
        eprintln!("{what} {gn}: relative L2 {e:.2e}");
        assert!(e <= tol, "{what} {gn}: relative L2 {e:e} > {tol:e}");
    }
}

/// The tiny variant end to end: the CUDA engine's plan (weight packing, arena layout, fusions, launch
/// configs) and every kernel, emulated, against the CPU engine. f32 everywhere, different summation
/// orders through ~40 layers: 1e-4 relative L2.
#[test]
fn emulated_whole_model_matches_cpu() {
    let model = tiny_model();
    let graph = model.graph.clone();
    let x = input(2, 64, 64, 11);
    let want = infnet::cpu::CpuEngine::new(graph.clone(), 2).expect("cpu engine").forward(&x).expect("cpu forward");
    let mut emu = EmulatedEngine::new(graph);
    let got = emu.forward(&x).expect("emulated forward");
    compare_outputs("emulated", &got, &want, 1e-4);
}

/// On a machine with a GPU: the real engine against the CPU, twice (graph replay), then at another
/// shape (new plan). Without one: creating it must fail with a device error, not panic, and `auto`
/// must fall back to a working CPU engine.
#[test]
fn cuda_engine_or_clear_error() {
    let model = tiny_model();
    let x = input(2, 64, 64, 12);
    match infnet::engine::create(&model, Device::Cuda, 2) {
        Err(e) => {
            eprintln!("skipped GPU comparison: no usable CUDA device: {e}");
            assert!(matches!(e, infnet::Error::Device(_)), "expected a device error, got {e:?}");
            assert!(!e.to_string().is_empty());
            let mut auto = infnet::engine::create(&model, Device::Auto, 2).expect("auto falls back to the CPU");
            assert!(auto.device_name().starts_with("cpu"));
            assert_eq!(auto.forward(&x).expect("cpu forward").len(), 5);
        }
        Ok(mut gpu) => {
            let mut cpu = infnet::engine::create(&model, Device::Cpu, 2).expect("cpu engine");
            let want = cpu.forward(&x).expect("cpu forward");
            let first = gpu.forward(&x).expect("gpu forward");
            compare_outputs(&gpu.device_name(), &first, &want, 1e-4);
            let again = gpu.forward(&x).expect("gpu forward (replay)");
            for ((_, a), (_, b)) in first.iter().zip(&again) {
                assert_eq!(a.data, b.data, "graph replay is not deterministic");
            }
            let x2 = input(3, 96, 64, 13);
            compare_outputs("gpu 3×96×64", &gpu.forward(&x2).expect("gpu forward"), &cpu.forward(&x2).expect("cpu"), 1e-4);
        }
    }
}

/// The published widths (Res2Net-50 26w×4s: up to 2048 channels, K up to 4608) at a small input,
/// emulated, against the CPU engine.
#[test]
fn emulated_full_width_model_matches_cpu() {
    let model = InfNet::from_state_dict(&state_dict(&Spec::full(), 3)).expect("synthetic full model builds");
    let graph = model.graph.clone();
    let x = input(1, 64, 64, 21);
    let want = infnet::cpu::CpuEngine::new(graph.clone(), 2).expect("cpu engine").forward(&x).expect("cpu forward");
    let got = EmulatedEngine::new(graph).forward(&x).expect("emulated forward");
    compare_outputs("emulated full", &got, &want, 1e-4);
}

/// On a GPU: the published widths at the published input size (352×352, batch 2) against the CPU,
/// with the GPU time of a replayed forward. Without one: prints why and checks the error kind.
#[test]
fn cuda_engine_full_model_352() {
    let model = InfNet::from_state_dict(&state_dict(&Spec::full(), 4)).expect("synthetic full model builds");
    let graph = model.graph.clone();
    let mut gpu = match infnet::cuda::CudaEngine::new(graph.clone()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipped: no usable CUDA device: {e}");
            assert!(matches!(e, infnet::Error::Device(_)));
            assert!(infnet::cuda::probe().is_err() || !e.to_string().is_empty());
            return;
        }
    };
    let x = input(2, 352, 352, 31);
    let want = infnet::cpu::CpuEngine::new(graph, 0).expect("cpu engine").forward(&x).expect("cpu forward");
    let got = gpu.forward(&x).expect("gpu forward");
    compare_outputs("gpu full 2×352×352", &got, &want, 1e-4);
    let mut best = f32::INFINITY;
    for _ in 0..20 {
        gpu.forward(&x).expect("gpu forward");
        best = best.min(gpu.last_forward_gpu_ms().unwrap_or(f32::INFINITY));
    }
    eprintln!(
        "{}: full model 2×3×352×352, best GPU time {best:.3} ms per forward, device memory {:.1} MiB",
        gpu.device_name(),
        gpu.device_memory_bytes() as f64 / (1 << 20) as f64
    );
}
