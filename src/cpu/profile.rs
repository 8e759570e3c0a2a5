//! Opt-in per-node timing (`INFNET_PROFILE=1`): after each forward, prints the nodes that took the
//! most time to stderr, so that optimisation work goes where the time is.

use crate::graph::{Graph, Node};
use std::time::Duration;

pub struct Profile {
    /// Accumulated time per node index, over every forward since the last report.
    times: Vec<Duration>,
    forwards: usize,
    top: usize,
}

impl Profile {
    /// `Some` when `INFNET_PROFILE` is set to something other than "0"; its value, if a number > 1, is how many nodes to list.
    pub fn from_env(g: &Graph) -> Option<Profile> {
        let v = std::env::var("INFNET_PROFILE").ok()?;
        if v.is_empty() || v == "0" {
            return None;
        }
        let top = v.parse::<usize>().ok().filter(|&n| n > 1).unwrap_or(25);
        Some(Profile { times: vec![Duration::ZERO; g.nodes.len()], forwards: 0, top })
    }

    pub fn record(&mut self, node: usize, t: Duration) {
        self.times[node] += t;
    }

    pub fn finish_forward(&mut self, g: &Graph, n: usize, h: usize, w: usize) {
        self.forwards += 1;
        let total: Duration = self.times.iter().sum();
        let mut order: Vec<usize> = (0..self.times.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.times[i]));
        eprintln!("infnet profile: forward {} at {n}×3×{h}×{w}: {:.2} ms in nodes", self.forwards, total.as_secs_f64() * 1e3);
        for &i in order.iter().take(self.top) {
            let t = self.times[i].as_secs_f64();
            let (what, gflop) = describe(g, &g.nodes[i], n, h, w);
            let rate = if gflop > 0.0 { format!("{:6.1} GFLOP/s", gflop / t) } else { String::new() };
            eprintln!("  {:7.3} ms {:5.1}%  {rate:>15}  {what}", t * 1e3, 100.0 * t / total.as_secs_f64());
        }
        self.times.iter_mut().for_each(|t| *t = Duration::ZERO);
    }
}

/// A one-line description of a node and its GFLOP (2 per multiply-add) for N images at h×w.
fn describe(g: &Graph, node: &Node, n: usize, h: usize, w: usize) -> (String, f64) {
    let size = |v: crate::graph::View| {
        let d = g.bufs[v.buf].div;
        (h / d, w / d)
    };
    match node {
        Node::Conv { conv, y, x_add, residual, mul, .. } => {
            let p = &g.convs[*conv];
            let (oh, ow) = size(*y);
            let extra = [(x_add.is_some(), " +x_add"), (residual.is_some(), " +res"), (mul.is_some(), " ×mul")]
                .iter()
                .filter(|e| e.0)
                .map(|e| e.1)
                .collect::<String>();
            (
                format!(
                    "conv {}×{}/{} d{} {}→{} @{}×{}{extra}  {}",
                    p.kh, p.kw, p.stride, p.dil, p.cin, p.cout, oh, ow, p.name
                ),
                2.0 * n as f64 * p.macs(oh, ow) as f64 / 1e9,
            )
        }
        Node::MaxPool { y, .. } => (format!("maxpool → {}", g.bufs[y.buf].name), 0.0),
        Node::AvgPool { y, .. } => (format!("avgpool → {}", g.bufs[y.buf].name), 0.0),
        Node::Resize { y, .. } => (format!("resize → {}", g.bufs[y.buf].name), 0.0),
        Node::ReverseAttention { y, .. } => (format!("reverse attention → {}", g.bufs[y.buf].name), 0.0),
    }
}
