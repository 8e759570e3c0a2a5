//! The CPU executor: turns a `Graph` into steps once (weights packed for the detected micro-kernel,
//! reverse attention folded into the 1×1 conv that consumes it), instantiates the steps for one
//! (N, H, W) with a memory plan, and runs them on a private thread pool.

pub mod conv;
pub mod implicit_gemm;
pub mod microkernel;
pub mod ops;
pub mod plan;
pub mod profile;
pub mod tensor;
pub mod winograd;

use crate::engine::{check_input, Engine, Outputs};
use crate::error::{Error, Result};
use crate::graph::{ConvParam, Graph, Node, View};
use crate::weights::Tensor;
use implicit_gemm::PackedConv;
use microkernel::Isa;
use plan::Plan;
use std::sync::Arc;
use tensor::Shape;
use winograd::{WinogradConv, WinogradF4};

/// What the executor runs for one or two graph nodes.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Graph node `i`, as it is.
    Node(usize),
    /// `ReverseAttention { map, x, y: att }` (node `ra`) followed by a 1×1 conv reading exactly `att`
    /// (node `conv`), `att` read by nothing else: the conv runs on `x` with the per-pixel scale
    /// 1 − σ(map) applied to its sum, W·(a ⊙ x) = a ⊙ (W·x), so the C-channel product is never formed.
    AttentionConv { ra: usize, conv: usize },
}

/// How one conv is computed, chosen once per graph.
pub enum ConvKernel {
    /// 3×3, stride 1, dilation 1, padding 1 (AVX-512 only): Winograd F(4×4, 3×3) on maps of at least
    /// 40×40 (built when a plan first needs it: its weights are 4× the conv's), F(2×2, 3×3) on maps of
    /// at least 16×16, the implicit GEMM on smaller ones (where tiles and 32-tile panels waste too much).
    Winograd(WinogradConv, Option<WinogradF4>, PackedConv),
    /// 1×1, stride 1, unpadded: the input planes already are the GEMM's right-hand matrix. The `gemm`
    /// crate's cache-blocked kernels beat our implicit GEMM on most of these shapes by 3–18 %, but not
    /// on deep ones that narrow (K ≥ 1024 with fewer outputs than inputs: 1024→416 at 22×22, 2048→832
    /// at 11×11, 1024→64, 2048→256: 1.06–1.9× slower) nor on ≤ 64 outputs over ≥ 4096 pixels (1.1×);
    /// for those the packed weights are kept and `pointwise_prefers_implicit_gemm` picks them.
    Pointwise(Option<PackedConv>),
    /// One output channel, stride 1 (the side-output heads), on AVX-512: `implicit_gemm::conv2d_one_output`.
    OneOutput,
    /// Everything else: implicit GEMM.
    Gemm(PackedConv),
}

/// The graph's nodes, each moved as early as its inputs allow (a stable list schedule). A branch then
/// runs right after the layer that feeds it (the edge convs after layer1, each RFB after its stage),
/// while that layer's output is still in cache, instead of re-reading it from L3 at the end.
fn early_order(g: &Graph) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let (reads, writes) = node_views(node);
        // After every placed node that writes what this one reads, or touches what it writes.
        let after = order
            .iter()
            .rposition(|&j| {
                let (r2, w2) = node_views(&g.nodes[j]);
                let overlap = |a: &View, b: &View| a.buf == b.buf && a.c_off < b.c_off + b.c && b.c_off < a.c_off + a.c;
                reads.iter().any(|r| w2.iter().any(|w| overlap(r, w)))
                    || writes.iter().any(|w| w2.iter().chain(&r2).any(|o| overlap(w, o)))
            })
            .map_or(0, |p| p + 1);
        order.insert(after, i);
    }
    order
}

/// Finds the steps of a graph: its nodes in `early_order`, with the one fusion of `Step::AttentionConv`.
pub fn plan_steps(g: &Graph) -> Vec<Step> {
    let mut reads = vec![0usize; g.bufs.len()];
    for node in &g.nodes {
        for v in node_views(node).0 {
            reads[v.buf] += 1;
        }
    }
    for (_, b) in &g.outputs {
        reads[*b] += 1;
    }
    let order = early_order(g);
    let mut steps = Vec::with_capacity(g.nodes.len());
    let mut at = 0;
    while at < order.len() {
        let i = order[at];
        let next = order.get(at + 1).map(|&j| (j, &g.nodes[j]));
        if let (Node::ReverseAttention { y: att, .. }, Some((j, Node::Conv { conv, x, x_add: None, .. }))) = (&g.nodes[i], next) {
            let p = &g.convs[*conv];
            let pointwise = p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad_h == 0 && p.pad_w == 0;
            let whole = att.c_off == 0 && att.c == g.bufs[att.buf].c;
            if pointwise && x == att && whole && reads[att.buf] == 1 {
                steps.push(Step::AttentionConv { ra: i, conv: j });
                at += 2;
                continue;
            }
        }
        steps.push(Step::Node(i));
        at += 1;
    }
    steps
}

/// (views read, views written) by a node.
pub fn node_views(node: &Node) -> (Vec<View>, Vec<View>) {
    match *node {
        Node::Conv { x, x_add, y, residual, mul, .. } => {
            let mut r = vec![x];
            r.extend(x_add);
            r.extend(residual);
            r.extend(mul);
            (r, vec![y])
        }
        Node::MaxPool { x, y, .. } | Node::AvgPool { x, y, .. } | Node::Resize { x, y, .. } => (vec![x], vec![y]),
        Node::ReverseAttention { map, x, y } => (vec![map, x], vec![y]),
    }
}

pub struct CpuEngine {
    graph: Arc<Graph>,
    pool: rayon::ThreadPool,
    threads: usize,
    isa: Isa,
    steps: Vec<Step>,
    kernels: Vec<ConvKernel>,
    plan: Option<Plan>,
    profile: Option<profile::Profile>,
}

impl CpuEngine {
    /// `threads` = 0 uses every core.
    pub fn new(graph: Arc<Graph>, threads: usize) -> Result<CpuEngine> {
        CpuEngine::with_isa(graph, threads, Isa::detect())
    }

    /// As `new`, with a given micro-kernel (it must be one of `Isa::all_supported()`).
    pub fn with_isa(graph: Arc<Graph>, threads: usize, isa: Isa) -> Result<CpuEngine> {
        if !Isa::all_supported().contains(&isa) {
            return Err(Error::Device(format!("this CPU cannot run the {isa:?} kernels")));
        }
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Device(format!("cannot start {threads} CPU threads: {e}")))?;
        // Winograd F(2×2, 3×3) on AVX-512, where its transforms are vectorised: 1.3–1.9× faster than the
        // implicit GEMM on this network's 3×3 convs at 22×22 and up (criterion `conv/3x3_*`).
        // `INFNET_WINOGRAD=0` turns it off (for comparisons); other ISAs keep the implicit GEMM.
        let winograd_on = isa == Isa::Avx512 && std::env::var("INFNET_WINOGRAD").as_deref() != Ok("0");
        let kernels = pool.install(|| {
            use rayon::prelude::*;
            graph
                .convs
                .par_iter()
                .map(|p| {
                    let pointwise = p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad_h == 0 && p.pad_w == 0;
                    if pointwise {
                        let narrow = (p.cin >= 1024 && p.cout < p.cin) || p.cout <= 64;
                        ConvKernel::Pointwise((isa == Isa::Avx512 && narrow).then(|| PackedConv::new(p, isa)))
                    } else if implicit_gemm::one_output_applies(p, isa) {
                        ConvKernel::OneOutput
                    } else if winograd_on && WinogradConv::applies(p) {
                        ConvKernel::Winograd(WinogradConv::new(p, isa), None, PackedConv::new(p, isa))
                    } else {
                        ConvKernel::Gemm(PackedConv::new(p, isa))
                    }
                })
                .collect()
        });
        let steps = plan_steps(&graph);
        let profile = profile::Profile::from_env(&graph);
        Ok(CpuEngine { graph, pool, threads, isa, steps, kernels, plan: None, profile })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes held by the current memory plan (activations and scratch), 0 before the first forward.
    pub fn planned_bytes(&self) -> usize {
        self.plan.as_ref().map_or(0, |p| p.bytes())
    }
}

fn run_steps(g: &Graph, steps: &[Step], kernels: &[ConvKernel], plan: &mut Plan, mut profile: Option<&mut profile::Profile>) {
    for &step in steps {
        let t0 = profile.as_ref().map(|_| std::time::Instant::now());
        let node = match step {
            Step::Node(i) => {
                run_node(g, &g.nodes[i], kernels, plan, None);
                i
            }
            Step::AttentionConv { ra, conv } => {
                let Node::ReverseAttention { map, x, .. } = g.nodes[ra] else { unreachable!("fusion of a non-attention node") };
                let scale = plan.attention_scale(g, map);
                let Node::Conv { conv: c, x_add, y, residual, relu, mul, .. } = g.nodes[conv] else {
                    unreachable!("fusion of a non-conv node")
                };
                let fused = Node::Conv { conv: c, x, x_add, y, residual, relu, mul };
                run_node(g, &fused, kernels, plan, Some(scale));
                conv
            }
        };
        if let (Some(p), Some(t0)) = (profile.as_deref_mut(), t0) {
            p.record(node, t0.elapsed());
        }
    }
}

fn run_node(g: &Graph, node: &Node, kernels: &[ConvKernel], plan: &mut Plan, scale: Option<tensor::In>) {
    match *node {
        Node::Conv { conv, x, x_add, y, residual, relu, mul } => {
            let ep = conv::Epilogue { scale, residual: residual.map(|r| plan.input(g, r)), relu, mul: mul.map(|m| plan.input(g, m)) };
            let (xi, xa, yo) = (plan.input(g, x), x_add.map(|a| plan.input(g, a)), plan.output(g, y));
            let p = &g.convs[conv];
            match &kernels[conv] {
                ConvKernel::Gemm(pk) => implicit_gemm::conv2d(p, pk, xi, xa, yo, ep, plan.scratch()),
                ConvKernel::OneOutput => implicit_gemm::conv2d_one_output(p, xi, xa, yo, ep),
                ConvKernel::Pointwise(Some(pk)) if pointwise_prefers_implicit_gemm(p, yo.shape.hw()) => {
                    implicit_gemm::conv2d(p, pk, xi, xa, yo, ep, plan.scratch())
                }
                ConvKernel::Pointwise(_) => {
                    let threads = rayon::current_num_threads();
                    conv::conv2d_im2col(p, xi, xa, yo, ep, plan.scratch(), threads)
                }
                ConvKernel::Winograd(_, Some(f4), _) if uses_f4(yo.shape.h, yo.shape.w) => f4.run(p, xi, xa, yo, ep, plan.scratch()),
                ConvKernel::Winograd(wk, ..) if yo.shape.h >= 16 && yo.shape.w >= 16 => wk.run(p, xi, xa, yo, ep, plan.scratch()),
                ConvKernel::Winograd(.., pk) => implicit_gemm::conv2d(p, pk, xi, xa, yo, ep, plan.scratch()),
            }
        }
        Node::MaxPool { x, y, k, s, p } => ops::max_pool(plan.input(g, x), plan.output(g, y), k, s, p),
        Node::AvgPool { x, y, k, s, p, count_include_pad, .. } => {
            ops::avg_pool(plan.input(g, x), plan.output(g, y), k, s, p, count_include_pad)
        }
        Node::Resize { x, y, mode } => ops::resize_bilinear(plan.input(g, x), plan.output(g, y), mode),
        Node::ReverseAttention { map, x, y } => ops::reverse_attention(plan.input(g, map), plan.input(g, x), plan.output(g, y)),
    }
}

/// Whether a Winograd conv with an oh×ow output takes F(4×4): from 40×40 its 4×4 tiles waste ≤ 10 %
/// (none at 44, 88, 176), and it beats F(2×2) by 1.3–1.6× (criterion `conv/3x3_*`).
fn uses_f4(oh: usize, ow: usize) -> bool {
    oh >= 40 && ow >= 40
}

/// Where our implicit GEMM beats the `gemm` crate on a 1×1 conv over `hw` output pixels (2 threads;
/// `cargo bench --bench cpu_forward conv/1x1` times both on these shapes; see `ConvKernel::Pointwise`).
fn pointwise_prefers_implicit_gemm(p: &ConvParam, hw: usize) -> bool {
    (p.cin >= 1024 && p.cout < p.cin) || (p.cout <= 64 && hw >= 4096)
}

impl Engine for CpuEngine {
    fn device_name(&self) -> String {
        let isa = match self.isa {
            Isa::Avx512 => "AVX-512",
            Isa::Avx2Fma => "AVX2+FMA",
            Isa::Portable => "portable",
        };
        format!("cpu ({} threads, {isa} kernels)", self.threads)
    }

    fn forward(&mut self, input: &Tensor) -> Result<Outputs> {
        let (n, h, w) = check_input(input)?;
        if !matches!(&self.plan, Some(p) if p.dims() == (n, h, w)) {
            self.plan = None; // free the old plan before allocating the new one
            // F(4×4) weights for the Winograd convs that run on maps of 40×40 and up at this size.
            for node in &self.graph.nodes {
                if let Node::Conv { conv, y, .. } = *node {
                    let d = self.graph.bufs[y.buf].div;
                    let p = &self.graph.convs[conv];
                    if let ConvKernel::Winograd(_, f4 @ None, _) = &mut self.kernels[conv] {
                        if uses_f4(h / d, w / d) && WinogradF4::available(p, self.isa) {
                            *f4 = Some(WinogradF4::new(p));
                        }
                    }
                }
            }
            let per_thread = self
                .kernels
                .iter()
                .zip(&self.graph.convs)
                .map(|(k, p)| match k {
                    ConvKernel::Gemm(pk) => pk.panel_len(),
                    ConvKernel::OneOutput => 0,
                    ConvKernel::Winograd(wk, f4, pk) => {
                        let f4 = f4.as_ref().map_or(0, |_| WinogradF4::scratch_len_for(p.cin));
                        wk.scratch_len(p, n, h, w, &self.graph).max(pk.panel_len()).max(f4)
                    }
                    ConvKernel::Pointwise(pk) => pk.as_ref().map_or(0, |pk| pk.panel_len()),
                })
                .max()
                .unwrap_or(0);
            // A pointwise conv needs scratch only for a summed `x_add` input (none in the published graph).
            let pointwise = self
                .graph
                .nodes
                .iter()
                .filter_map(|node| match node {
                    Node::Conv { conv, x, x_add: Some(_), .. } if matches!(self.kernels[*conv], ConvKernel::Pointwise(_)) => {
                        let d = self.graph.bufs[x.buf].div;
                        Some(conv::scratch_len(&self.graph.convs[*conv], h / d, w / d, true))
                    }
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let scratch = (self.threads * per_thread).max(pointwise);
            self.plan = Some(Plan::new(&self.graph, &self.steps, n, h, w, scratch));
        }
        let g = self.graph.clone();
        let plan = self.plan.as_mut().expect("plan just prepared");
        plan.buf_mut(g.input).copy_from_slice(&input.data);
        let (steps, kernels) = (&self.steps, &self.kernels);
        let profile = self.profile.as_mut();
        let profile = self.pool.install(|| {
            let mut profile = profile;
            run_steps(&g, steps, kernels, plan, profile.as_deref_mut());
            profile
        });
        if let Some(p) = profile {
            p.finish_forward(&g, n, h, w);
        }
        let plan = self.plan.as_ref().expect("plan just prepared");
        Ok(g.outputs
            .iter()
            .map(|(name, b)| (name.clone(), Tensor { shape: vec![n, 1, h, w], data: plan.buf(*b).to_vec() }))
            .collect())
    }
}

/// Shape of a view for an (N, H, W) instantiation: (float offset in its buffer, shape).
pub(crate) fn view_shape(g: &Graph, v: View, n: usize, h: usize, w: usize) -> (usize, Shape) {
    let b = &g.bufs[v.buf];
    let (bh, bw) = (h / b.div, w / b.div);
    (v.c_off * bh * bw, Shape { n, c: v.c, h: bh, w: bw, batch_stride: b.c * bh * bw })
}
