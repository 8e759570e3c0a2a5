//! Every fast convolution path against `conv2d_reference`, for every micro-kernel this CPU runs, and
//! the tiny synthetic model through the engine against a plain executor that uses only reference ops.

mod common;

use common::{conv_param, rel_l2, Rng};
use infnet::cpu::conv::{conv2d_im2col, conv2d_reference, scratch_len, Epilogue};
use infnet::cpu::implicit_gemm::{self, PackedConv};
use infnet::cpu::microkernel::Isa;
use infnet::cpu::tensor::{In, Out, Shape};
use infnet::cpu::winograd::{WinogradConv, WinogradF4};
use infnet::cpu::{ops, plan_steps, CpuEngine, Step};
use infnet::graph::{ConvParam, Graph, Node, View};
use infnet::model::synthetic::{state_dict, Spec};
use infnet::{Engine, InfNet, Tensor};

#[derive(Clone, Copy, Debug)]
struct Variant {
    x_add: bool,
    residual: bool,
    relu: bool,
    mul: bool,
    scale: bool,
}

const VARIANTS: [Variant; 5] = [
    Variant { x_add: false, residual: false, relu: false, mul: false, scale: false },
    Variant { x_add: true, residual: false, relu: true, mul: false, scale: false },
    Variant { x_add: false, residual: true, relu: true, mul: false, scale: false },
    Variant { x_add: true, residual: true, relu: false, mul: true, scale: false },
    Variant { x_add: false, residual: false, relu: true, mul: true, scale: true },
];

/// Runs `fast` and the reference on the same random data (output poisoned with NaN first) and checks them.
fn check(p: &ConvParam, n: usize, h: usize, w: usize, v: Variant, label: &str, fast: &dyn Fn(In, Option<In>, Out, Epilogue)) {
    let mut rng = Rng(0x9e37_79b9 ^ (p.cin * 131 + p.cout * 7 + h) as u64);
    let (oh, ow) = p.out_size(h, w);
    let xs = Shape::dense(n, p.cin, h, w);
    let ys = Shape::dense(n, p.cout, oh, ow);
    let x = rng.vec(n * p.cin * h * w, 1.0);
    let xa = rng.vec(n * p.cin * h * w, 1.0);
    let res = rng.vec(n * p.cout * oh * ow, 1.0);
    let mul = rng.vec(n * p.cout * oh * ow, 1.0);
    let scale = rng.vec(n * oh * ow, 1.0);
    let ep = Epilogue {
        scale: v.scale.then(|| In::new(&scale, Shape::dense(n, 1, oh, ow))),
        residual: v.residual.then(|| In::new(&res, ys)),
        relu: v.relu,
        mul: v.mul.then(|| In::new(&mul, ys)),
    };
    let xi = In::new(&x, xs);
    let xai = v.x_add.then(|| In::new(&xa, xs));
    let mut want = vec![f32::NAN; n * p.cout * oh * ow];
    conv2d_reference(p, xi, xai, Out::new(&mut want, ys), ep);
    let mut got = vec![f32::NAN; want.len()];
    fast(xi, xai, Out::new(&mut got, ys), ep);
    let e = rel_l2(&got, &want);
    assert!(e <= 1e-5, "{label} {} {v:?} at {n}×{h}×{w}: relative L2 error {e:e}", p.name);
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap()
}

/// Every conv kind of the network (and the odd ones around it), at odd sizes and channel counts.
fn conv_cases(rng: &mut Rng) -> Vec<ConvParam> {
    vec![
        conv_param(rng, 13, 11, 1, 1, 1, 0, 0, 1),  // 1×1
        conv_param(rng, 37, 19, 1, 1, 1, 0, 0, 1),  // 1×1, more than one row block
        conv_param(rng, 11, 13, 3, 3, 1, 1, 1, 1),  // 3×3 (Winograd when it runs through the engine)
        conv_param(rng, 3, 10, 3, 3, 2, 1, 1, 1),   // 3×3 stride 2 (stem)
        conv_param(rng, 9, 7, 3, 3, 2, 1, 1, 1),    // 3×3 stride 2 (stage blocks)
        conv_param(rng, 7, 9, 3, 3, 1, 3, 3, 3),    // dilation 3
        conv_param(rng, 7, 9, 3, 3, 1, 5, 5, 5),    // dilation 5
        conv_param(rng, 7, 9, 3, 3, 1, 7, 7, 7),    // dilation 7
        conv_param(rng, 7, 9, 1, 3, 1, 0, 1, 1),    // 1×3
        conv_param(rng, 7, 9, 3, 1, 1, 1, 0, 1),    // 3×1
        conv_param(rng, 7, 9, 1, 7, 1, 0, 3, 1),    // 1×7
        conv_param(rng, 7, 9, 7, 1, 1, 3, 0, 1),    // 7×1
        conv_param(rng, 9, 11, 5, 5, 1, 2, 2, 1),   // 5×5
        conv_param(rng, 5, 1, 3, 3, 1, 1, 1, 1),    // one output channel
        conv_param(rng, 600, 21, 1, 1, 1, 0, 0, 1), // 1×1, K in 3 chunks
        conv_param(rng, 70, 75, 3, 3, 1, 1, 1, 1),  // 3×3, K = 630 in 3 chunks, 10 row blocks
        conv_param(rng, 23, 9, 5, 5, 1, 2, 2, 1),   // 5×5, K = 575 in 3 chunks
        conv_param(rng, 19, 26, 3, 3, 1, 1, 1, 1),  // AVX-512 kernel with 13 rows
        conv_param(rng, 21, 28, 1, 1, 1, 0, 0, 1),  // 14 rows
        conv_param(rng, 29, 24, 3, 3, 1, 1, 1, 1),  // 12 rows
        conv_param(rng, 17, 8, 3, 3, 1, 1, 1, 1),   // 8 rows
    ]
}

#[test]
fn implicit_gemm_matches_reference() {
    let mut rng = Rng(7);
    let pool = pool();
    for isa in Isa::all_supported() {
        for p in conv_cases(&mut rng) {
            let pk = PackedConv::new(&p, isa);
            let mut scratch = vec![0.0; 2 * pk.panel_len()];
            for v in VARIANTS {
                for (n, h, w) in [(3, 13, 17), (1, 5, 3)] {
                    check(&p, n, h, w, v, &format!("implicit GEMM {isa:?}"), &|x, xa, y, ep| {
                        pool.install(|| implicit_gemm::conv2d(&p, &pk, x, xa, y, ep, &mut scratch.clone()))
                    });
                }
            }
            scratch.clear();
        }
    }
}

#[test]
fn winograd_matches_reference() {
    let mut rng = Rng(11);
    let pool = pool();
    for isa in Isa::all_supported() {
        for (cin, cout) in [(11, 13), (3, 1), (17, 9), (40, 21)] {
            let p = conv_param(&mut rng, cin, cout, 3, 3, 1, 1, 1, 1);
            assert!(WinogradConv::applies(&p));
            let wk = WinogradConv::new(&p, isa);
            let scratch = vec![0.0; 2 * wk.scratch_len(&p, 0, 0, 0, &Graph::default())];
            for v in VARIANTS {
                for (n, h, w) in [(3, 13, 17), (1, 1, 1), (2, 2, 5), (1, 11, 11)] {
                    check(&p, n, h, w, v, &format!("Winograd {isa:?}"), &|x, xa, y, ep| {
                        pool.install(|| wk.run(&p, x, xa, y, ep, &mut scratch.clone()))
                    });
                }
            }
        }
    }
}

#[test]
fn winograd_f4_matches_reference() {
    if !Isa::all_supported().contains(&Isa::Avx512) {
        println!("skipped: Winograd F(4×4) runs on AVX-512 only and this CPU has none");
        return;
    }
    let mut rng = Rng(23);
    let pool = pool();
    for (cin, cout) in [(11, 13), (3, 1), (17, 9), (40, 21), (26, 26)] {
        let p = conv_param(&mut rng, cin, cout, 3, 3, 1, 1, 1, 1);
        assert!(WinogradF4::available(&p, Isa::Avx512));
        let wk = WinogradF4::new(&p);
        let scratch = vec![0.0; 2 * WinogradF4::scratch_len_for(cin)];
        for v in VARIANTS {
            for (n, h, w) in [(3, 13, 17), (1, 1, 1), (2, 2, 5), (1, 11, 11), (1, 44, 44), (1, 6, 41)] {
                check(&p, n, h, w, v, "Winograd F(4×4)", &|x, xa, y, ep| pool.install(|| wk.run(&p, x, xa, y, ep, &mut scratch.clone())));
            }
        }
    }
}

#[test]
fn one_output_conv_matches_reference() {
    if !Isa::all_supported().contains(&Isa::Avx512) {
        println!("skipped: the one-output conv path runs on AVX-512 only and this CPU has none");
        return;
    }
    let mut rng = Rng(29);
    let pool = pool();
    for p in [
        conv_param(&mut rng, 64, 1, 3, 3, 1, 1, 1, 1), // edge_conv4, ra*_conv4
        conv_param(&mut rng, 7, 1, 5, 5, 1, 2, 2, 1),
        conv_param(&mut rng, 5, 1, 3, 3, 1, 3, 3, 3), // dilated
        conv_param(&mut rng, 6, 1, 1, 7, 1, 0, 3, 1),
    ] {
        assert!(implicit_gemm::one_output_applies(&p, Isa::Avx512));
        for v in VARIANTS {
            for (n, h, w) in [(3, 13, 17), (1, 1, 1), (1, 40, 37), (2, 5, 33)] {
                check(&p, n, h, w, v, "one-output conv", &|x, xa, y, ep| pool.install(|| implicit_gemm::conv2d_one_output(&p, x, xa, y, ep)));
            }
        }
    }
}

#[test]
fn im2col_gemm_matches_reference() {
    let mut rng = Rng(13);
    for p in conv_cases(&mut rng) {
        for v in VARIANTS {
            let (n, h, w) = (3, 13, 17);
            let mut scratch = vec![0.0; scratch_len(&p, h, w, v.x_add)];
            check(&p, n, h, w, v, "im2col", &|x, xa, y, ep| conv2d_im2col(&p, x, xa, y, ep, &mut scratch.clone(), 2));
            scratch.clear();
        }
    }
}

/// The graph run node by node with one buffer per graph buffer and only reference ops.
fn reference_forward(g: &Graph, input: &Tensor) -> Vec<Vec<f32>> {
    let (n, h, w) = (input.shape[0], input.shape[2], input.shape[3]);
    let mut bufs: Vec<Vec<f32>> = g.bufs.iter().map(|b| vec![f32::NAN; n * b.c * (h / b.div) * (w / b.div)]).collect();
    bufs[g.input].copy_from_slice(&input.data);
    let shape = |v: View| {
        let b = &g.bufs[v.buf];
        let (bh, bw) = (h / b.div, w / b.div);
        (v.c_off * bh * bw, Shape { n, c: v.c, h: bh, w: bw, batch_stride: b.c * bh * bw })
    };
    let inp = |bufs: &Vec<Vec<f32>>, v: View| {
        let (off, s) = shape(v);
        In::new(&bufs[v.buf][off..], s)
    };
    let out = |bufs: &mut Vec<Vec<f32>>, v: View| {
        let (off, s) = shape(v);
        Out::new(&mut bufs[v.buf][off..], s)
    };
    for node in &g.nodes {
        match *node {
            Node::Conv { conv, x, x_add, y, residual, relu, mul } => {
                let ep = Epilogue { scale: None, residual: residual.map(|r| inp(&bufs, r)), relu, mul: mul.map(|m| inp(&bufs, m)) };
                let (xi, xa) = (inp(&bufs, x), x_add.map(|a| inp(&bufs, a)));
                conv2d_reference(&g.convs[conv], xi, xa, out(&mut bufs, y), ep);
            }
            Node::MaxPool { x, y, k, s, p } => ops::max_pool(inp(&bufs, x), out(&mut bufs, y), k, s, p),
            Node::AvgPool { x, y, k, s, p, count_include_pad, .. } => {
                ops::avg_pool(inp(&bufs, x), out(&mut bufs, y), k, s, p, count_include_pad)
            }
            Node::Resize { x, y, mode } => ops::resize_bilinear(inp(&bufs, x), out(&mut bufs, y), mode),
            Node::ReverseAttention { map, x, y } => ops::reverse_attention(inp(&bufs, map), inp(&bufs, x), out(&mut bufs, y)),
        }
    }
    g.outputs.iter().map(|(_, b)| bufs[*b].clone()).collect()
}

#[test]
fn tiny_model_engine_matches_reference_executor() {
    let model = InfNet::from_state_dict(&state_dict(&Spec::tiny(), 3)).unwrap();
    let g = model.graph.clone();
    let fused = plan_steps(&g).iter().filter(|s| matches!(s, Step::AttentionConv { .. })).count();
    assert_eq!(fused, 3, "each reverse-attention branch should fold into its 1×1 conv");
    let (n, h, w) = (2, 64, 96);
    let mut rng = Rng(5);
    let x = Tensor { shape: vec![n, 3, h, w], data: rng.vec(n * 3 * h * w, 1.0) };
    let want = reference_forward(&g, &x);
    for isa in Isa::all_supported() {
        let mut eng = CpuEngine::with_isa(g.clone(), 2, isa).unwrap();
        for _ in 0..2 {
            // twice: the second forward reuses the plan (and its slots' stale contents)
            let got = eng.forward(&x).unwrap();
            for ((name, t), r) in got.iter().zip(&want) {
                let e = rel_l2(&t.data, r);
                assert!(e <= 1e-5, "{isa:?} {name}: relative L2 error {e:e}");
            }
        }
    }
}

#[test]
fn max_pool_matches_reference() {
    let mut rng = Rng(17);
    for (n, c, h, w, k, s, p) in [(2, 3, 13, 17, 3, 2, 1), (1, 5, 8, 8, 3, 2, 1), (1, 2, 7, 5, 2, 2, 0), (1, 1, 1, 3, 3, 2, 1), (1, 3, 46, 38, 3, 2, 1)] {
        let mut x = rng.vec(n * c * h * w, 1.0);
        let mid = x.len() / 2;
        x[mid] = f32::NAN; // NaN propagates as in PyTorch
        let (oh, ow) = (ops::pool_out_size(h, k, s, p, false), ops::pool_out_size(w, k, s, p, false));
        let (xs, ys) = (Shape::dense(n, c, h, w), Shape::dense(n, c, oh, ow));
        let mut want = vec![0.0; n * c * oh * ow];
        let mut got = vec![f32::NAN; want.len()];
        ops::max_pool_reference(In::new(&x, xs), Out::new(&mut want, ys), k, s, p);
        ops::max_pool(In::new(&x, xs), Out::new(&mut got, ys), k, s, p);
        for (a, b) in got.iter().zip(&want) {
            assert!(a == b || (a.is_nan() && b.is_nan()), "max pool {h}×{w} k{k} s{s} p{p}: {a} vs {b}");
        }
    }
}

#[test]
fn avg_pool_matches_reference() {
    let mut rng = Rng(19);
    // (n, c, h, w, k, s, p, ceil_mode, count_include_pad): the network's 2×2/2 ceil-mode pools and 3×3/1 ones.
    for (n, c, h, w, k, s, p, ceil, cip) in [
        (2, 3, 13, 17, 2, 2, 0, true, false),
        (1, 5, 8, 8, 2, 2, 0, true, false),
        (2, 2, 7, 5, 3, 1, 1, false, true),
        (1, 2, 7, 5, 3, 1, 1, false, false),
        (1, 1, 1, 3, 3, 2, 1, true, true),
        (1, 3, 11, 9, 3, 2, 1, true, false),
        (2, 3, 45, 37, 2, 2, 0, true, false),
        (1, 3, 46, 38, 3, 2, 1, false, true),
        (1, 3, 40, 35, 3, 1, 1, false, true),
    ] {
        let x = rng.vec(n * c * h * w, 1.0);
        let (oh, ow) = (ops::pool_out_size(h, k, s, p, ceil), ops::pool_out_size(w, k, s, p, ceil));
        let (xs, ys) = (Shape::dense(n, c, h, w), Shape::dense(n, c, oh, ow));
        let mut want = vec![0.0; n * c * oh * ow];
        let mut got = vec![f32::NAN; want.len()];
        ops::avg_pool_reference(In::new(&x, xs), Out::new(&mut want, ys), k, s, p, cip);
        ops::avg_pool(In::new(&x, xs), Out::new(&mut got, ys), k, s, p, cip);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "avg pool {h}×{w} k{k} s{s} p{p} ceil {ceil} cip {cip}: {a} vs {b}");
        }
    }
}

/// The published architecture (synthetic weights) at a small input, so that both Winograd paths and
/// the implicit GEMM run inside the engine: whole-model result within 1e-4 of the reference.
#[test]
fn full_model_small_input_matches_reference_executor() {
    let model = InfNet::from_state_dict(&state_dict(&Spec::full(), 1)).unwrap();
    let g = model.graph.clone();
    let mut rng = Rng(23);
    // 96×96: the stem's 3×3 convs (48×48) take Winograd F(4×4), layer1's and the edge convs (24×24) F(2×2).
    let x = Tensor { shape: vec![1, 3, 96, 96], data: rng.vec(3 * 96 * 96, 1.0) };
    let want = reference_forward(&g, &x);
    let mut eng = CpuEngine::new(g.clone(), 2).unwrap();
    let got = eng.forward(&x).unwrap();
    for ((name, t), r) in got.iter().zip(&want) {
        let e = rel_l2(&t.data, r);
        eprintln!("full model 96×96 {name}: relative L2 {e:e}");
        assert!(e <= 1e-4, "{name}: relative L2 error {e:e}");
    }
}
