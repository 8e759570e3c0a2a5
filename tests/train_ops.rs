//! Backward of every training op, two ways: against central finite differences in f64 (the ops are
//! generic), and against PyTorch autograd (tools/gen_train_fixtures.py quotes the code for each case).
//! Each case computes L = Σ y·dy for a random dy, so the gradients checked are full vector-Jacobian
//! products with respect to every input.

mod common;

use common::{fixture, random, rel_l2};
use infnet::cpu::ops::{pool_out_size, resize_out_size};
use infnet::cpu::tensor::Shape;
use infnet::graph::ResizeMode;
use infnet::train::loss;
use infnet::train::ops::{self, ConvGeom, Real};
use infnet::weights::Tensor;

#[derive(Clone, Debug)]
enum Op {
    Conv { g: ConvGeom, bias: bool },
    Bn { relu: bool, rm0: Vec<f64>, rv0: Vec<f64> },
    Relu,
    Sigmoid,
    AddRelu,
    Mul,
    Copy,
    MaxPool,
    AvgPool { k: usize, s: usize, p: usize, ceil: bool, cip: bool },
    Resize { oh: usize, ow: usize, mode: ResizeMode },
    ReverseAttention,
}

fn dense(d: &[usize]) -> Shape {
    Shape::dense(d[0], d[1], d[2], d[3])
}

/// Output shape of `op` for first-input shape `xs` (and the second input's for reverse attention).
fn out_shape(op: &Op, shapes: &[Shape]) -> Shape {
    let xs = shapes[0];
    match op {
        Op::Conv { g, .. } => {
            let (oh, ow) = g.out_size(xs.h, xs.w);
            Shape::dense(xs.n, g.cout, oh, ow)
        }
        Op::MaxPool => Shape::dense(xs.n, xs.c, pool_out_size(xs.h, 3, 2, 1, false), pool_out_size(xs.w, 3, 2, 1, false)),
        Op::AvgPool { k, s, p, ceil, .. } => Shape::dense(xs.n, xs.c, pool_out_size(xs.h, *k, *s, *p, *ceil), pool_out_size(xs.w, *k, *s, *p, *ceil)),
        Op::Resize { oh, ow, .. } => Shape::dense(xs.n, xs.c, *oh, *ow),
        Op::ReverseAttention => shapes[1],
        _ => xs,
    }
}

/// Forward, then backward of Σ y·dy. Returns (y, gradient of each input, running stats for BN).
fn run<T: Real>(op: &Op, ins: &[Vec<T>], shapes: &[Shape], dy: &[T]) -> (Vec<T>, Vec<Vec<T>>, Vec<Vec<T>>) {
    let ys = out_shape(op, shapes);
    let mut y = vec![T::from_f64(f64::NAN); ys.span()];
    let mut grads: Vec<Vec<T>> = ins.iter().map(|v| vec![T::ZERO; v.len()]).collect();
    let xs = shapes[0];
    let mut extra = Vec::new();
    match op {
        Op::Conv { g, bias } => {
            let mut scratch = vec![T::ZERO; g.scratch_len(xs.h, xs.w)];
            let b = if *bias { Some(&ins[2][..]) } else { None };
            ops::conv_forward(g, &ins[0], xs, &ins[1], b, &mut y, ys, &mut scratch);
            let (gx, rest) = grads.split_at_mut(1);
            let (gw, gb) = rest.split_at_mut(1);
            let db = if *bias { Some(&mut gb[0][..]) } else { None };
            ops::conv_backward(g, &ins[0], xs, &ins[1], dy, ys, Some((&mut gx[0][..], xs)), &mut gw[0], db, &mut scratch);
        }
        Op::Bn { relu, rm0, rv0 } => {
            let mut rm: Vec<T> = rm0.iter().map(|&v| T::from_f64(v)).collect();
            let mut rv: Vec<T> = rv0.iter().map(|&v| T::from_f64(v)).collect();
            let (mut mean, mut invstd) = (vec![T::ZERO; xs.c], vec![T::ZERO; xs.c]);
            ops::batchnorm_forward(&ins[0], xs, &ins[1], &ins[2], &mut rm, &mut rv, *relu, &mut y, ys, &mut mean, &mut invstd);
            let (gx, rest) = grads.split_at_mut(1);
            let (gg, gb) = rest.split_at_mut(1);
            ops::batchnorm_backward(&ins[0], xs, &y, ys, &ins[1], &mean, &invstd, *relu, dy, ys, &mut gx[0], xs, &mut gg[0], &mut gb[0]);
            extra = vec![rm, rv];
        }
        Op::Relu => {
            ops::relu_forward(&ins[0], xs, &mut y, ys);
            ops::relu_backward(&y, ys, dy, ys, &mut grads[0], xs);
        }
        Op::Sigmoid => {
            ops::sigmoid_forward(&ins[0], xs, &mut y, ys);
            ops::sigmoid_backward(&y, ys, dy, ys, &mut grads[0], xs);
        }
        Op::AddRelu => {
            ops::add_forward(&ins[0], xs, &ins[1], shapes[1], true, &mut y, ys);
            for g in grads.iter_mut() {
                ops::add_backward(&y, ys, true, dy, ys, g, xs);
            }
        }
        Op::Mul => {
            ops::mul_forward(&ins[0], xs, &ins[1], shapes[1], &mut y, ys);
            ops::mul_backward(&ins[1], xs, dy, ys, &mut grads[0], xs);
            ops::mul_backward(&ins[0], xs, dy, ys, &mut grads[1], xs);
        }
        Op::Copy => {
            ops::copy_forward(&ins[0], xs, &mut y, ys);
            ops::copy_backward(dy, ys, &mut grads[0], xs);
        }
        Op::MaxPool => {
            ops::max_pool_forward(&ins[0], xs, &mut y, ys, 3, 2, 1);
            ops::max_pool_backward(&ins[0], xs, dy, ys, &mut grads[0], xs, 3, 2, 1);
        }
        Op::AvgPool { k, s, p, cip, .. } => {
            ops::avg_pool_forward(&ins[0], xs, &mut y, ys, *k, *s, *p, *cip);
            ops::avg_pool_backward(dy, ys, &mut grads[0], xs, *k, *s, *p, *cip);
        }
        Op::Resize { mode, .. } => {
            ops::resize_forward(&ins[0], xs, &mut y, ys, *mode);
            ops::resize_backward(dy, ys, &mut grads[0], xs, *mode);
        }
        Op::ReverseAttention => {
            let (ms, xs) = (shapes[0], shapes[1]);
            ops::reverse_attention_forward(&ins[0], ms, &ins[1], xs, &mut y, ys);
            let (gm, gx) = grads.split_at_mut(1);
            ops::reverse_attention_backward(&ins[0], ms, &ins[1], xs, dy, ys, &mut gm[0], ms, &mut gx[0], xs);
        }
    }
    (y, grads, extra)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks every input's analytic gradient against central differences of L = Σ y·dy, in f64.
fn finite_difference_check(name: &str, op: &Op, shapes: &[Shape], seed: u64) {
    let ins: Vec<Vec<f64>> = shapes
        .iter()
        .enumerate()
        .map(|(j, s)| random(s.span(), seed + j as u64).iter().map(|&v| v as f64 * 1.5).collect())
        .collect();
    let ins = match op {
        // BatchNorm's gamma near 1 and beta small, as in a network.
        Op::Bn { .. } => vec![ins[0].clone(), ins[1].iter().map(|v| 1.0 + 0.3 * v).collect(), ins[2].iter().map(|v| 0.2 * v).collect()],
        _ => ins,
    };
    let ys = out_shape(op, shapes);
    let dy: Vec<f64> = random(ys.span(), seed + 100).iter().map(|&v| v as f64).collect();
    let (_, grads, _) = run(op, &ins, shapes, &dy);
    // Step 1e-6 in f64: truncation error O(h²)·f''' ≈ 1e-12, rounding ≈ 1e-16/1e-6 = 1e-10 relative.
    let h = 1e-6;
    for (j, input) in ins.iter().enumerate() {
        let mut numeric = vec![0.0; input.len()];
        for e in 0..input.len() {
            let mut plus = ins.clone();
            plus[j][e] += h;
            let mut minus = ins.clone();
            minus[j][e] -= h;
            numeric[e] = (dot(&run(op, &plus, shapes, &dy).0, &dy) - dot(&run(op, &minus, shapes, &dy).0, &dy)) / (2.0 * h);
        }
        let num: f64 = grads[j].iter().zip(&numeric).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        let den: f64 = numeric.iter().map(|b| b * b).sum::<f64>().sqrt();
        let err = num / den.max(1e-300);
        eprintln!("{name} input {j}: finite-difference rel L2 {err:.2e}");
        assert!(den > 0.0, "{name} input {j}: zero gradient, the check would be vacuous");
        assert!(err < 1e-6, "{name} input {j}: analytic vs finite-difference gradient rel L2 {err:.3e}");
    }
}

fn conv_geom(cin: usize, cout: usize, kh: usize, kw: usize, stride: usize, pad_h: usize, pad_w: usize, dil: usize) -> ConvGeom {
    ConvGeom { cin, cout, kh, kw, stride, pad_h, pad_w, dil }
}

#[test]
fn every_backward_matches_finite_differences() {
    let s = |n, c, h, w| Shape::dense(n, c, h, w);
    let x = s(3, 2, 7, 9);
    let mut cases: Vec<(&str, Op, Vec<Shape>)> = vec![
        ("conv1x1+bias", Op::Conv { g: conv_geom(3, 2, 1, 1, 1, 0, 0, 1), bias: true }, vec![s(3, 3, 5, 7), s(2, 3, 1, 1), s(1, 1, 1, 2)]),
        ("conv3x3s2", Op::Conv { g: conv_geom(2, 3, 3, 3, 2, 1, 1, 1), bias: false }, vec![s(3, 2, 7, 9), s(3, 2, 3, 3)]),
        ("conv1x3", Op::Conv { g: conv_geom(2, 2, 1, 3, 1, 0, 1, 1), bias: false }, vec![s(3, 2, 5, 7), s(2, 2, 1, 3)]),
        ("conv7x1", Op::Conv { g: conv_geom(2, 2, 7, 1, 1, 3, 0, 1), bias: false }, vec![s(3, 2, 5, 7), s(2, 2, 7, 1)]),
        ("conv_dil3", Op::Conv { g: conv_geom(2, 2, 3, 3, 1, 3, 3, 3), bias: false }, vec![s(3, 2, 7, 8), s(2, 2, 3, 3)]),
        ("conv5x5+bias", Op::Conv { g: conv_geom(2, 2, 5, 5, 1, 2, 2, 1), bias: true }, vec![s(3, 2, 6, 7), s(2, 2, 5, 5), s(1, 1, 1, 2)]),
        ("bn", Op::Bn { relu: false, rm0: vec![0.0; 2], rv0: vec![1.0; 2] }, vec![x, s(1, 1, 1, 2), s(1, 1, 1, 2)]),
        ("bn+relu", Op::Bn { relu: true, rm0: vec![0.0; 2], rv0: vec![1.0; 2] }, vec![x, s(1, 1, 1, 2), s(1, 1, 1, 2)]),
        ("relu", Op::Relu, vec![x]),
        ("sigmoid", Op::Sigmoid, vec![x]),
        ("add+relu", Op::AddRelu, vec![x, x]),
        ("mul", Op::Mul, vec![x, x]),
        ("copy", Op::Copy, vec![x]),
        ("maxpool 3/2/1", Op::MaxPool, vec![x]),
        ("avgpool 3/1/1", Op::AvgPool { k: 3, s: 1, p: 1, ceil: false, cip: true }, vec![x]),
        ("avgpool 3/2/1", Op::AvgPool { k: 3, s: 2, p: 1, ceil: false, cip: true }, vec![x]),
        ("avgpool 2/2 ceil", Op::AvgPool { k: 2, s: 2, p: 0, ceil: true, cip: false }, vec![x]),
        ("resize align_corners", Op::Resize { oh: 11, ow: 5, mode: ResizeMode::AlignCorners }, vec![x]),
        ("reverse attention", Op::ReverseAttention, vec![s(3, 1, 7, 9), s(3, 3, 7, 9)]),
    ];
    for (sf, (h, w)) in [(0.25, (19, 13)), (0.5, (7, 9)), (2.0, (5, 7)), (8.0, (3, 2))] {
        let mode = ResizeMode::ScaleFactor(sf);
        let op = Op::Resize { oh: resize_out_size(h, sf), ow: resize_out_size(w, sf), mode };
        cases.push(("resize scale factor", op, vec![s(3, 1, h, w)]));
    }
    for (k, (name, op, shapes)) in cases.iter().enumerate() {
        finite_difference_check(name, op, shapes, 10 * k as u64 + 1);
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data.iter().map(|&v| v as f64).collect()
}

fn check(name: &str, got: &[f32], want: &Tensor, tol: f64) {
    assert_eq!(got.len(), want.data.len(), "{name}: length");
    let e = rel_l2(got, &want.data);
    eprintln!("{name}: rel L2 vs PyTorch {e:.2e}");
    assert!(e <= tol, "{name}: relative L2 error {e:.3e} > {tol:.0e}");
}

// f32 against PyTorch's f32: the forward values agree to rounding (~1e-7); gradients are sums of up to
// a few hundred products accumulated in a different order, so 1e-5 relative L2 leaves a wide margin
// over the ~1e-6 observed while still catching any wrong index or missing term.
const FWD_TOL: f64 = 2e-6;
const GRAD_TOL: f64 = 1e-5;

#[test]
fn every_backward_matches_pytorch_autograd() {
    let f = fixture("train_ops.safetensors");
    let t = |k: String| f.get(&k).unwrap_or_else(|| panic!("fixture lacks {k}"));
    let mut cases: Vec<(String, Op, Vec<&str>)> = Vec::new();
    for name in f.keys().filter_map(|k| k.strip_suffix(".cfg")).filter(|k| k.starts_with("conv")) {
        let (cfg, w) = (&t(format!("{name}.cfg")).data, &t(format!("{name}.w")).shape);
        let g = conv_geom(w[1], w[0], w[2], w[3], cfg[0] as usize, cfg[1] as usize, cfg[2] as usize, cfg[3] as usize);
        let bias = cfg[4] != 0.0;
        let ins = if bias { vec!["x", "w", "b"] } else { vec!["x", "w"] };
        cases.push((name.to_string(), Op::Conv { g, bias }, ins));
    }
    assert!(cases.len() >= 9, "every conv geometry should be in the fixture");
    for (name, relu) in [("bn", false), ("bn_relu", true)] {
        let op = Op::Bn { relu, rm0: f64s(t(format!("{name}.rm0"))), rv0: f64s(t(format!("{name}.rv0"))) };
        cases.push((name.into(), op, vec!["x", "gamma", "beta"]));
    }
    cases.push(("relu".into(), Op::Relu, vec!["x"]));
    cases.push(("sigmoid".into(), Op::Sigmoid, vec!["x"]));
    cases.push(("add_relu".into(), Op::AddRelu, vec!["a", "b"]));
    cases.push(("mul".into(), Op::Mul, vec!["a", "b"]));
    cases.push(("maxpool".into(), Op::MaxPool, vec!["x"]));
    cases.push(("avgpool3s1".into(), Op::AvgPool { k: 3, s: 1, p: 1, ceil: false, cip: true }, vec!["x"]));
    cases.push(("avgpool3s2".into(), Op::AvgPool { k: 3, s: 2, p: 1, ceil: false, cip: true }, vec!["x"]));
    cases.push(("avgpool2ceil".into(), Op::AvgPool { k: 2, s: 2, p: 0, ceil: true, cip: false }, vec!["x"]));
    for name in ["up_ac2", "ac_size"] {
        let y = &t(format!("{name}.y")).shape;
        cases.push((name.into(), Op::Resize { oh: y[2], ow: y[3], mode: ResizeMode::AlignCorners }, vec!["x"]));
    }
    for tag in ["0.25", "0.5", "2", "4", "8"] {
        let name = format!("interp_{tag}");
        let sf = t(format!("{name}.cfg")).data[0] as f64;
        let y = &t(format!("{name}.y")).shape;
        cases.push((name, Op::Resize { oh: y[2], ow: y[3], mode: ResizeMode::ScaleFactor(sf) }, vec!["x"]));
    }
    cases.push(("reverse_att".into(), Op::ReverseAttention, vec!["m", "x"]));

    for (name, op, inputs) in &cases {
        let tensors: Vec<&Tensor> = inputs.iter().map(|i| t(format!("{name}.{i}"))).collect();
        let shapes: Vec<Shape> = tensors.iter().map(|x| if x.shape.len() == 4 { dense(&x.shape) } else { Shape::dense(1, 1, 1, x.numel()) }).collect();
        let ins: Vec<Vec<f32>> = tensors.iter().map(|x| x.data.clone()).collect();
        let (y, grads, extra) = run(op, &ins, &shapes, &t(format!("{name}.dy")).data);
        check(&format!("{name} forward"), &y, t(format!("{name}.y")), FWD_TOL);
        for (i, g) in inputs.iter().zip(&grads) {
            check(&format!("{name} d{i}"), g, t(format!("{name}.d{i}")), GRAD_TOL);
        }
        if !extra.is_empty() {
            check(&format!("{name} running_mean"), &extra[0], t(format!("{name}.rm")), FWD_TOL);
            check(&format!("{name} running_var"), &extra[1], t(format!("{name}.rv")), FWD_TOL);
        }
    }
}

#[test]
fn loss_matches_public_joint_loss_and_bce() {
    let f = fixture("train_ops.safetensors");
    let (pred, mask) = (&f["joint_loss.pred"], &f["joint_loss.mask"]);
    let (n, h, w) = (pred.shape[0], pred.shape[2], pred.shape[3]);
    let weit = loss::structure_weight(&mask.data, n, h, w);
    let mut dpred = vec![0.0f32; pred.data.len()];
    let l = loss::joint_loss(&pred.data, &mask.data, &weit, n, h * w, 1.0, &mut dpred);
    let want = f["joint_loss.loss"].data[0] as f64;
    eprintln!("joint_loss {l} vs PyTorch {want}");
    assert!((l - want).abs() <= 1e-6 * want.abs(), "joint_loss {l} vs {want}");
    check("joint_loss dpred", &dpred, &f["joint_loss.dpred"], GRAD_TOL);

    let (pred, edges) = (&f["edge_bce.pred"], &f["edge_bce.edges"]);
    let mut dpred = vec![0.0f32; pred.data.len()];
    let l = loss::bce_mean(&pred.data, &edges.data, 1.0, &mut dpred);
    let want = f["edge_bce.loss"].data[0] as f64;
    assert!((l - want).abs() <= 1e-6 * want.abs(), "edge BCE {l} vs {want}");
    check("edge_bce dpred", &dpred, &f["edge_bce.dpred"], GRAD_TOL);
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let (n, h, w) = (2, 9, 11);
    let pred: Vec<f64> = random(n * h * w, 7).iter().map(|&v| 3.0 * v as f64).collect();
    let mask: Vec<f64> = random(n * h * w, 8).iter().map(|&v| if v > 0.2 { 1.0 } else { 0.0 }).collect();
    // The four maps and the edge all read the same logits here, so every term is exercised.
    let total = |p: &[f64]| {
        let mut d = vec![vec![0.0; p.len()]; 5];
        let (d0, rest) = d.split_at_mut(1);
        let (d1, rest) = rest.split_at_mut(1);
        let (d2, rest) = rest.split_at_mut(1);
        let (d3, d4) = rest.split_at_mut(1);
        let parts = loss::infnet_loss([p, p, p, p], p, &mask, &mask, n, h, w, [&mut d0[0], &mut d1[0], &mut d2[0], &mut d3[0]], &mut d4[0]);
        let grad: Vec<f64> = (0..p.len()).map(|e| d.iter().map(|g| g[e]).sum()).collect();
        (parts.total(), grad)
    };
    let (_, grad) = total(&pred);
    let hstep = 1e-6;
    let numeric: Vec<f64> = (0..pred.len())
        .map(|e| {
            let (mut a, mut b) = (pred.clone(), pred.clone());
            a[e] += hstep;
            b[e] -= hstep;
            (total(&a).0 - total(&b).0) / (2.0 * hstep)
        })
        .collect();
    let err = (grad.iter().zip(&numeric).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / numeric.iter().map(|b| b * b).sum::<f64>()).sqrt();
    eprintln!("loss finite-difference rel L2 {err:.2e}");
    assert!(err < 1e-6, "loss gradient vs finite differences: rel L2 {err:.3e}");
}
