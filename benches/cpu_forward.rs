//! Criterion benchmarks: the whole forward at 352×352 batch 1 (synthetic weights, published
//! architecture) and one representative convolution of each kind, on 2 threads, through the fast
//! paths the engine uses and (for comparison) the previous im2col + `gemm` crate path.
//! `cargo bench --bench cpu_forward` (add a filter such as `conv/` to run part of it).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use infnet::cpu::conv::{conv2d_im2col, scratch_len, Epilogue};
use infnet::cpu::implicit_gemm::{self, PackedConv};
use infnet::cpu::microkernel::Isa;
use infnet::cpu::tensor::{In, Out, Shape};
use infnet::cpu::winograd::{WinogradConv, WinogradF4};
use infnet::cpu::CpuEngine;
use infnet::model::synthetic::{state_dict, Spec};
use infnet::{Engine, InfNet, Tensor};
use std::time::Duration;

const THREADS: usize = 2;

fn forward(c: &mut Criterion) {
    let model = InfNet::from_state_dict(&state_dict(&Spec::full(), 1)).expect("synthetic model");
    let mut eng = CpuEngine::new(model.graph.clone(), THREADS).expect("engine");
    let s = 352;
    let x = Tensor { shape: vec![1, 3, s, s], data: (0..3 * s * s).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect() };
    let mut g = c.benchmark_group("forward");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("352x352_batch1", |b| b.iter(|| black_box(eng.forward(&x).expect("forward"))));
    g.finish();
}

fn convs(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().expect("pool");
    let isa = Isa::detect();
    let mut rng = common::Rng(0xbe4c);
    let mut param = |cin, cout, kh, kw, stride, pad_h, pad_w, dil| common::conv_param(&mut rng, cin, cout, kh, kw, stride, pad_h, pad_w, dil);
    // (name, conv, input side)
    let cases = [
        ("1x1_1024to832_22", param(1024, 832, 1, 1, 1, 0, 0, 1), 22),
        ("1x1_104to256_88", param(104, 256, 1, 1, 1, 0, 0, 1), 88),
        ("1x1_1024to64_22", param(1024, 64, 1, 1, 1, 0, 0, 1), 22),
        ("1x1_256to64_88", param(256, 64, 1, 1, 1, 0, 0, 1), 88),
        ("1x1_512to64_44", param(512, 64, 1, 1, 1, 0, 0, 1), 44),
        ("1x1_2048to256_11", param(2048, 256, 1, 1, 1, 0, 0, 1), 11),
        ("1x1_2048to832_11", param(2048, 832, 1, 1, 1, 0, 0, 1), 11),
        ("1x1_1024to2048_11", param(1024, 2048, 1, 1, 1, 0, 0, 1), 11),
        ("3x3_52to52_44", param(52, 52, 3, 3, 1, 1, 1, 1), 44),
        ("3x3_64to64_88", param(64, 64, 3, 3, 1, 1, 1, 1), 88),
        ("3x3_32to64_176", param(32, 64, 3, 3, 1, 1, 1, 1), 176),
        ("3x3_26to26_88", param(26, 26, 3, 3, 1, 1, 1, 1), 88),
        ("3x3_104to104_22", param(104, 104, 3, 3, 1, 1, 1, 1), 22),
        ("3x3s2_52to52_88", param(52, 52, 3, 3, 2, 1, 1, 1), 88),
        ("3x3d5_32to32_22", param(32, 32, 3, 3, 1, 5, 5, 5), 22),
        ("1x7_32to32_22", param(32, 32, 1, 7, 1, 0, 3, 1), 22),
        ("5x5_256to256_11", param(256, 256, 5, 5, 1, 2, 2, 1), 11),
    ];
    let mut g = c.benchmark_group("conv");
    g.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (name, p, side) in cases {
        let (oh, ow) = p.out_size(side, side);
        let x = vec![0.5f32; p.cin * side * side];
        let mut y = vec![0.0f32; p.cout * oh * ow];
        let (xs, ys) = (Shape::dense(1, p.cin, side, side), Shape::dense(1, p.cout, oh, ow));
        let ep = Epilogue { relu: true, ..Epilogue::default() };
        let pk = PackedConv::new(&p, isa);
        let mut scratch = vec![0.0; THREADS * pk.panel_len()];
        g.bench_function(format!("{name}/implicit_gemm"), |b| {
            b.iter(|| pool.install(|| implicit_gemm::conv2d(&p, &pk, In::new(&x, xs), None, Out::new(&mut y, ys), ep, &mut scratch)))
        });
        if WinogradConv::applies(&p) {
            let wk = WinogradConv::new(&p, isa);
            let mut ws = vec![0.0; THREADS * wk.scratch_len(&p, 1, side, side, &Default::default())];
            g.bench_function(format!("{name}/winograd_f2"), |b| {
                b.iter(|| pool.install(|| wk.run(&p, In::new(&x, xs), None, Out::new(&mut y, ys), ep, &mut ws)))
            });
        }
        if WinogradF4::available(&p, isa) {
            let wk = WinogradF4::new(&p);
            let mut ws = vec![0.0; THREADS * WinogradF4::scratch_len_for(p.cin)];
            g.bench_function(format!("{name}/winograd_f4"), |b| {
                b.iter(|| pool.install(|| wk.run(&p, In::new(&x, xs), None, Out::new(&mut y, ys), ep, &mut ws)))
            });
        }
        let mut cols = vec![0.0; scratch_len(&p, side, side, false)];
        g.bench_function(format!("{name}/im2col_gemm_crate"), |b| {
            b.iter(|| pool.install(|| conv2d_im2col(&p, In::new(&x, xs), None, Out::new(&mut y, ys), ep, &mut cols, THREADS)))
        });
    }
    g.finish();
}

criterion_group!(benches, forward, convs);
criterion_main!(benches);
