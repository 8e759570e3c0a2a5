//! The CPU executor: instantiates a `Graph` for one (N, H, W) — every buffer and the conv scratch
//! allocated once — and runs its nodes on a private thread pool.

pub mod conv;
pub mod ops;
pub mod profile;
pub mod tensor;

use crate::engine::{check_input, Engine, Outputs};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, View};
use crate::weights::Tensor;
use std::sync::Arc;
use tensor::{In, Out, Shape};

/// Buffers for one (N, H, W): allocated when the shape is first seen, reused by every forward.
struct Plan {
    n: usize,
    h: usize,
    w: usize,
    bufs: Vec<Vec<f32>>,
    scratch: Vec<f32>,
}

impl Plan {
    fn new(g: &Graph, n: usize, h: usize, w: usize) -> Plan {
        let bufs = g.bufs.iter().map(|b| vec![0.0f32; n * b.c * (h / b.div) * (w / b.div)]).collect();
        let mut scratch = 0;
        for node in &g.nodes {
            if let Node::Conv { conv, x, x_add, .. } = node {
                let d = g.bufs[x.buf].div;
                scratch = scratch.max(conv::scratch_len(&g.convs[*conv], h / d, w / d, x_add.is_some()));
            }
        }
        Plan { n, h, w, bufs, scratch: vec![0.0; scratch] }
    }

    fn shape(&self, g: &Graph, v: View) -> (usize, Shape) {
        let b = &g.bufs[v.buf];
        let (h, w) = (self.h / b.div, self.w / b.div);
        (v.c_off * h * w, Shape { n: self.n, c: v.c, h, w, batch_stride: b.c * h * w })
    }
    fn input(&self, g: &Graph, v: View) -> In {
        let (off, shape) = self.shape(g, v);
        let buf = &self.bufs[v.buf];
        assert!(off + shape.span() <= buf.len());
        In { ptr: buf[off..].as_ptr(), shape }
    }
    fn output(&mut self, g: &Graph, v: View) -> Out {
        let (off, shape) = self.shape(g, v);
        let buf = &mut self.bufs[v.buf];
        assert!(off + shape.span() <= buf.len());
        Out { ptr: buf[off..].as_mut_ptr(), shape }
    }
}

pub struct CpuEngine {
    graph: Arc<Graph>,
    pool: rayon::ThreadPool,
    threads: usize,
    plan: Option<Plan>,
    profile: Option<profile::Profile>,
}

impl CpuEngine {
    /// `threads` = 0 uses every core.
    pub fn new(graph: Arc<Graph>, threads: usize) -> Result<CpuEngine> {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Device(format!("cannot start {threads} CPU threads: {e}")))?;
        let profile = profile::Profile::from_env(&graph);
        Ok(CpuEngine { graph, pool, threads, plan: None, profile })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

}

fn run_nodes(g: &Graph, plan: &mut Plan, threads: usize, mut profile: Option<&mut profile::Profile>) {
        for (idx, node) in g.nodes.iter().enumerate() {
            let t0 = profile.as_ref().map(|_| std::time::Instant::now());
            match *node {
                Node::Conv { conv, x, x_add, y, residual, relu, mul } => {
                    let ep = conv::Epilogue {
                        residual: residual.map(|r| plan.input(g, r)),
                        relu,
                        mul: mul.map(|m| plan.input(g, m)),
                    };
                    let (xi, xa, yo) = (plan.input(g, x), x_add.map(|a| plan.input(g, a)), plan.output(g, y));
                    conv::conv2d(&g.convs[conv], xi, xa, yo, ep, &mut plan.scratch, threads);
                }
                Node::MaxPool { x, y, k, s, p } => {
                    let (xi, yo) = (plan.input(g, x), plan.output(g, y));
                    ops::max_pool(xi, yo, k, s, p);
                }
                Node::AvgPool { x, y, k, s, p, count_include_pad, .. } => {
                    let (xi, yo) = (plan.input(g, x), plan.output(g, y));
                    ops::avg_pool(xi, yo, k, s, p, count_include_pad);
                }
                Node::Resize { x, y, mode } => {
                    let (xi, yo) = (plan.input(g, x), plan.output(g, y));
                    ops::resize_bilinear(xi, yo, mode);
                }
                Node::ReverseAttention { map, x, y } => {
                    let (mi, xi, yo) = (plan.input(g, map), plan.input(g, x), plan.output(g, y));
                    ops::reverse_attention(mi, xi, yo);
                }
            }
            if let (Some(p), Some(t0)) = (profile.as_deref_mut(), t0) {
                p.record(idx, t0.elapsed());
            }
        }
}

impl Engine for CpuEngine {
    fn device_name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn forward(&mut self, input: &Tensor) -> Result<Outputs> {
        let (n, h, w) = check_input(input)?;
        if !matches!(&self.plan, Some(p) if (p.n, p.h, p.w) == (n, h, w)) {
            self.plan = None; // free the old plan before allocating the new one
            self.plan = Some(Plan::new(&self.graph, n, h, w));
        }
        let g = self.graph.clone();
        let plan = self.plan.as_mut().expect("plan just prepared");
        plan.bufs[g.input].copy_from_slice(&input.data);
        let threads = self.threads;
        let profile = self.profile.as_mut();
        let prof_ref = self.pool.install(|| {
            let mut profile = profile;
            run_nodes(&g, plan, threads, profile.as_deref_mut());
            profile
        });
        if let Some(p) = prof_ref {
            p.finish_forward(&g, n, h, w);
        }
        let plan = self.plan.as_ref().expect("plan just prepared");
        Ok(g.outputs
            .iter()
            .map(|(name, b)| (name.clone(), Tensor { shape: vec![n, 1, h, w], data: plan.bufs[*b].clone() }))
            .collect())
    }
}
