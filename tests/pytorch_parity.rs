//! The CPU path against golden values produced by PyTorch (tools/gen_fixtures.py, which quotes the
//! PyTorch code for each case): every op on small random inputs with odd sizes and batch 3, and the
//! whole reduced model built from the public Inf-Net classes.

mod common;

use common::{fixture, rel_l2};
use infnet::cpu::conv::{conv2d_im2col, conv2d_reference, scratch_len, Epilogue};
use infnet::cpu::implicit_gemm::{self, PackedConv};
use infnet::cpu::microkernel::Isa;
use infnet::cpu::ops;
use infnet::cpu::tensor::{In, Out, Shape};
use infnet::graph::{ConvParam, ResizeMode};
use infnet::weights::Tensor;
use infnet::{Device, InfNet, StateDict};

fn shape4(t: &Tensor) -> Shape {
    Shape::dense(t.shape[0], t.shape[1], t.shape[2], t.shape[3])
}

fn check(name: &str, got: &[f32], want: &Tensor, tol: f64) {
    let e = rel_l2(got, &want.data);
    eprintln!("{name}: rel L2 {e:.2e}");
    assert!(e <= tol, "{name}: relative L2 error {e:.3e} > {tol:.0e}");
}

fn conv_param(w: &Tensor, b: Vec<f32>, cfg: &[f32]) -> ConvParam {
    ConvParam {
        name: "test".into(),
        cout: w.shape[0],
        cin: w.shape[1],
        kh: w.shape[2],
        kw: w.shape[3],
        stride: cfg[0] as usize,
        pad_h: cfg[1] as usize,
        pad_w: cfg[2] as usize,
        dil: cfg[3] as usize,
        weight: w.data.clone(),
        bias: b,
    }
}

/// Runs the reference and both fast convolutions (implicit GEMM with this CPU's micro-kernel, which the
/// engine uses for every conv but 1×1; im2col + gemm crate, which it uses for 1×1) into NaN-poisoned outputs.
fn run_conv(p: &ConvParam, x: &Tensor) -> [(&'static str, Vec<f32>); 3] {
    let xs = shape4(x);
    let (oh, ow) = p.out_size(xs.h, xs.w);
    let ys = Shape::dense(xs.n, p.cout, oh, ow);
    let mut reference = vec![f32::NAN; ys.span()];
    conv2d_reference(p, In::new(&x.data, xs), None, Out::new(&mut reference, ys), Epilogue::default());
    let mut im2col = vec![f32::NAN; ys.span()];
    let mut scratch = vec![f32::NAN; scratch_len(p, xs.h, xs.w, false)];
    conv2d_im2col(p, In::new(&x.data, xs), None, Out::new(&mut im2col, ys), Epilogue::default(), &mut scratch, 2);
    let pk = PackedConv::new(p, Isa::detect());
    let mut implicit = vec![f32::NAN; ys.span()];
    let mut panels = vec![f32::NAN; rayon::current_num_threads() * pk.panel_len()];
    implicit_gemm::conv2d(p, &pk, In::new(&x.data, xs), None, Out::new(&mut implicit, ys), Epilogue::default(), &mut panels);
    [("reference", reference), ("im2col+gemm", im2col), ("implicit GEMM", implicit)]
}

#[test]
fn convolutions_match_pytorch() {
    let f = fixture("ops.safetensors");
    let names: Vec<String> = f.keys().filter_map(|k| k.strip_suffix(".cfg")).filter(|k| k.starts_with("conv")).map(String::from).collect();
    assert!(names.len() >= 14, "expected every conv geometry in the fixture, found {names:?}");
    for name in names {
        let t = |s: &str| &f[&format!("{name}.{s}")];
        let p = conv_param(t("w"), t("b").data.clone(), &t("cfg").data);
        let want = t("y");
        assert_eq!(want.shape[0], 3);
        for (path, y) in run_conv(&p, t("x")) {
            check(&format!("{name} ({path})"), &y, want, if path == "reference" { 1e-6 } else { 1e-5 });
        }
    }
}

#[test]
fn batchnorm_folding_matches_pytorch() {
    let f = fixture("ops.safetensors");
    let w = &f["conv_bn.w"];
    let mut p = conv_param(w, vec![0.0; w.shape[0]], &[1.0, 1.0, 1.0, 1.0]);
    let g = |k: &str| f[&format!("conv_bn.bn_{k}")].data.clone();
    infnet::model::fold_batchnorm(&mut p.weight, &mut p.bias, &g("weight"), &g("bias"), &g("running_mean"), &g("running_var"));
    for (path, y) in run_conv(&p, &f["conv_bn.x"]) {
        check(&format!("conv_bn ({path})"), &y, &f["conv_bn.y"], if path == "reference" { 1e-6 } else { 1e-5 });
    }
}

type PoolOp = Box<dyn Fn(In, Out)>;

fn run_unary(x: &Tensor, out_hw: (usize, usize), op: impl Fn(In, Out)) -> Vec<f32> {
    let xs = shape4(x);
    let ys = Shape::dense(xs.n, xs.c, out_hw.0, out_hw.1);
    let mut y = vec![f32::NAN; ys.span()];
    op(In::new(&x.data, xs), Out::new(&mut y, ys));
    y
}

#[test]
fn pools_match_pytorch() {
    let f = fixture("ops.safetensors");
    let x = &f["maxpool.x"];
    let (h, w) = (x.shape[2], x.shape[3]);
    let out = |k, s, p, ceil| (ops::pool_out_size(h, k, s, p, ceil), ops::pool_out_size(w, k, s, p, ceil));
    let cases: Vec<(&str, (usize, usize), PoolOp)> = vec![
        ("maxpool", out(3, 2, 1, false), Box::new(|a, b| ops::max_pool(a, b, 3, 2, 1))),
        ("avgpool3s2", out(3, 2, 1, false), Box::new(|a, b| ops::avg_pool(a, b, 3, 2, 1, true))),
        ("avgpool3s1", out(3, 1, 1, false), Box::new(|a, b| ops::avg_pool(a, b, 3, 1, 1, true))),
        ("avgpool2ceil", out(2, 2, 0, true), Box::new(|a, b| ops::avg_pool(a, b, 2, 2, 0, false))),
    ];
    for (name, hw, op) in cases {
        let want = &f[&format!("{name}.y")];
        assert_eq!((want.shape[2], want.shape[3]), hw, "{name}: output size");
        let y = run_unary(&f[&format!("{name}.x")], hw, op);
        check(name, &y, want, 1e-6);
    }
}

#[test]
fn bilinear_resizes_match_pytorch() {
    let f = fixture("ops.safetensors");
    let x = &f["up_ac2.x"];
    let want = &f["up_ac2.y"];
    let y = run_unary(x, (want.shape[2], want.shape[3]), |a, b| ops::resize_bilinear(a, b, ResizeMode::AlignCorners));
    check("up_ac2", &y, want, 1e-6);
    let tags: Vec<String> = f.keys().filter_map(|k| k.strip_prefix("interp_")?.strip_suffix(".cfg")).map(String::from).collect();
    assert_eq!(tags.len(), 8, "scale-factor cases: {tags:?}");
    for tag in tags {
        let x = &f[&format!("interp_{tag}.x")];
        let want = &f[&format!("interp_{tag}.y")];
        let s: f64 = tag.parse().expect("scale tag");
        let hw = (ops::resize_out_size(x.shape[2], s), ops::resize_out_size(x.shape[3], s));
        assert_eq!(hw, (want.shape[2], want.shape[3]), "interp_{tag}: output size");
        let y = run_unary(x, hw, |a, b| ops::resize_bilinear(a, b, ResizeMode::ScaleFactor(s)));
        check(&format!("interp_{tag}"), &y, want, 1e-6);
    }
}

#[test]
fn reverse_attention_matches_pytorch() {
    let f = fixture("ops.safetensors");
    let (m, x, want) = (&f["reverse_att.m"], &f["reverse_att.x"], &f["reverse_att.y"]);
    let xs = shape4(x);
    let mut y = vec![f32::NAN; xs.span()];
    ops::reverse_attention(In::new(&m.data, shape4(m)), In::new(&x.data, xs), Out::new(&mut y, xs));
    check("reverse_att", &y, want, 1e-6);
}

fn run_model(sd: &StateDict, input: &Tensor) -> infnet::Outputs {
    let model = InfNet::from_state_dict(sd).expect("tiny fixture loads");
    let mut e = infnet::engine::create(&model, Device::Cpu, 2).expect("cpu engine");
    e.forward(input).expect("forward")
}

#[test]
fn whole_reduced_model_matches_pytorch() {
    let sd = StateDict::load(common::fixture_path("tiny.safetensors")).expect("load tiny");
    let io = fixture("tiny_io.safetensors");
    let outs = run_model(&sd, &io["input"]);
    let names: Vec<&str> = outs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["lateral_map_5", "lateral_map_4", "lateral_map_3", "lateral_map_2", "lateral_edge"]);
    for (name, t) in &outs {
        let want = &io[name];
        assert_eq!(t.shape, want.shape, "{name} shape");
        check(name, &t.data, want, 1e-4);
    }
}

#[test]
fn half_precision_and_dataparallel_checkpoints_load() {
    use infnet::io::write_safetensors;
    let sd = StateDict::load(common::fixture_path("tiny.safetensors")).expect("load tiny");
    let dir = common::temp_dir("dtypes");
    let io = fixture("tiny_io.safetensors");
    let reference = run_model(&sd, &io["input"]);
    // `module.`-prefixed (DataParallel) f32 checkpoint: identical outputs.
    let prefixed: Vec<(String, Tensor)> = sd.tensors.iter().map(|(k, v)| (format!("module.{k}"), v.clone())).collect();
    let p = dir.join("module.safetensors");
    write_safetensors(&p, &prefixed).expect("write");
    let outs = run_model(&StateDict::load(&p).expect("load module."), &io["input"]);
    for ((n, a), (_, b)) in outs.iter().zip(&reference) {
        assert_eq!(a.data, b.data, "{n}: module. prefix changed the result");
    }
    // f16 and bf16 checkpoints: every value decodes to the rounded f32 value.
    for (dtype, round) in [
        (safetensors::Dtype::F16, (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32),
        (safetensors::Dtype::BF16, |v: f32| half::bf16::from_f32(v).to_f32()),
    ] {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = sd
            .tensors
            .iter()
            .map(|(k, v)| {
                let b: Vec<u8> = match dtype {
                    safetensors::Dtype::F16 => v.data.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                    _ => v.data.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                };
                (k.clone(), b, v.shape.clone())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(k, b, s)| (k.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).expect("view")))
            .collect();
        let p = dir.join(format!("{dtype:?}.safetensors"));
        std::fs::write(&p, safetensors::serialize(views, None).expect("serialise")).expect("write");
        let loaded = StateDict::load(&p).expect("half checkpoint loads");
        assert_eq!(loaded.tensors.len(), sd.tensors.len());
        for (k, v) in &sd.tensors {
            let got = &loaded.tensors[k];
            assert!(got.data.iter().zip(&v.data).all(|(g, w)| *g == round(*w)), "{k}: {dtype:?} decoding");
        }
        let outs = run_model(&loaded, &io["input"]);
        for ((n, a), (_, b)) in outs.iter().zip(&reference) {
            let e = rel_l2(&a.data, &b.data);
            assert!(e < 0.05, "{n}: {dtype:?} weights moved the output by {e}");
        }
    }
}
