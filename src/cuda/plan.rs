//! From a `Graph` to a launch list, independent of where memory lives: the packed weights (one blob,
//! every conv in the kernel layout), the activation arena (every buffer at a fixed offset for one
//! (N, H, W)), and the kernel launches that run the graph over them. The CUDA engine and the
//! emulator both execute this list, so the emulated whole-model test covers the planning too.

use super::kernels::{self, Launch, Slice};
use crate::cpu::tensor::Shape;
use crate::error::Result;
use crate::graph::{Graph, Node, ResizeMode, View};

/// Every allocation starts on a 256-byte boundary (coalescing; also what cudaMalloc guarantees).
const ALIGN_FLOATS: usize = 64;

fn align(v: usize) -> usize {
    v.div_ceil(ALIGN_FLOATS) * ALIGN_FLOATS
}

/// All conv weights and biases in one blob, weights as `kernels::conv_weight_layout`.
pub struct WeightPack {
    pub data: Vec<f32>,
    /// Per conv of the graph: (weight offset, bias offset) in floats.
    pub offsets: Vec<(usize, usize)>,
}

impl WeightPack {
    pub fn new(g: &Graph) -> WeightPack {
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(g.convs.len());
        for p in &g.convs {
            let w = data.len();
            data.extend(kernels::conv_weight_layout(p));
            data.resize(align(data.len()), 0.0);
            let b = data.len();
            data.extend_from_slice(&p.bias);
            data.resize(align(data.len()), 0.0);
            offsets.push((w, b));
        }
        WeightPack { data, offsets }
    }
}

/// Where each buffer of the graph lives in the activation arena for one (N, H, W).
pub struct ArenaLayout {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Per buffer: offset in floats.
    pub offsets: Vec<usize>,
    /// Floats in the arena.
    pub len: usize,
}

impl ArenaLayout {
    /// Every buffer gets its own range: simple, and the arena (≈ 0.5 GB for the full model at
    /// 352×352, batch 8) is far from a modern GPU's limit; liveness-based reuse would cut it.
    pub fn new(g: &Graph, n: usize, h: usize, w: usize) -> ArenaLayout {
        let mut offsets = Vec::with_capacity(g.bufs.len());
        let mut len = 0;
        for b in &g.bufs {
            offsets.push(len);
            len += align(n * b.c * (h / b.div) * (w / b.div));
        }
        ArenaLayout { n, h, w, offsets, len }
    }

    /// Floats of buffer `buf` (its whole N × C × H/div × W/div extent).
    pub fn buf_len(&self, g: &Graph, buf: usize) -> usize {
        let b = &g.bufs[buf];
        self.n * b.c * (self.h / b.div) * (self.w / b.div)
    }

    /// The slice of view `v`, with the arena at `base` (bytes).
    pub fn slice(&self, g: &Graph, base: u64, v: View) -> Slice {
        let b = &g.bufs[v.buf];
        let (h, w) = (self.h / b.div, self.w / b.div);
        let off = self.offsets[v.buf] + v.c_off * h * w;
        Slice { addr: base + 4 * off as u64, shape: Shape { n: self.n, c: v.c, h, w, batch_stride: b.c * h * w } }
    }
}

/// Whether two views share memory (same buffer, intersecting channel ranges).
fn overlap(a: View, b: View) -> bool {
    a.buf == b.buf && a.c_off < b.c_off + b.c && b.c_off < a.c_off + a.c
}

/// The views a node reads.
fn reads(n: &Node) -> Vec<View> {
    match *n {
        Node::Conv { x, x_add, residual, mul, .. } => [Some(x), x_add, residual, mul].into_iter().flatten().collect(),
        Node::MaxPool { x, .. } | Node::AvgPool { x, .. } | Node::Resize { x, .. } => vec![x],
        Node::ReverseAttention { map, x, .. } => vec![map, x],
    }
}

/// The views a node writes.
fn writes(n: &Node) -> View {
    match *n {
        Node::Conv { y, .. } | Node::MaxPool { y, .. } | Node::AvgPool { y, .. } | Node::Resize { y, .. } => y,
        Node::ReverseAttention { y, .. } => y,
    }
}

/// Align-corners resizes that need not be materialised: node `i` resizes `x` into the whole of a
/// buffer that nothing else writes, that is no graph output, and whose only readers are convs taking
/// it as their whole input `x` (not `x_add`, residual or mul), with `x` unchanged from the resize to
/// each of them. Those convs sample the resize in their input gather (`kernels::conv_resized`) and
/// the resize launch is dropped. Returns, per node, the resize source a conv reads through (for the
/// convs) and whether the node is dropped (for the resizes).
fn resizes_into_convs(g: &Graph) -> (Vec<Option<View>>, Vec<bool>) {
    let mut through = vec![None; g.nodes.len()];
    let mut dropped = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let Node::Resize { x, y, mode: ResizeMode::AlignCorners } = *n else { continue };
        let whole = y.c_off == 0 && y.c == g.bufs[y.buf].c;
        if !whole || y.buf == g.input || g.outputs.iter().any(|o| o.1 == y.buf) || x.buf == y.buf {
            continue;
        }
        let mut readers = Vec::new();
        let mut ok = true;
        for (j, m) in g.nodes.iter().enumerate() {
            if j != i && writes(m).buf == y.buf {
                ok = false;
            }
            if !reads(m).iter().any(|r| r.buf == y.buf) {
                continue;
            }
            match *m {
                Node::Conv { x: cx, x_add: None, residual, mul, y: cy, .. }
                    if j > i && cx == y && cy.buf != y.buf && [residual, mul].iter().flatten().all(|v| v.buf != y.buf) =>
                {
                    // The source must still hold what the resize would have read.
                    ok &= g.nodes[i + 1..j].iter().all(|w| !overlap(writes(w), x)) && !overlap(cy, x);
                    readers.push(j);
                }
                _ => ok = false,
            }
        }
        if ok && !readers.is_empty() {
            dropped[i] = true;
            for j in readers {
                through[j] = Some(x);
            }
        }
    }
    (through, dropped)
}

/// The edge-guidance Resize of a reverse-attention branch that can run inside the attention launch
/// of node `ra` (writing `att`, and `crop` when the map resize is fused too): node `ra + 1` is the
/// branch's first conv, reading `att` into a channel slice of the concat buffer, and node `ra + 2`
/// resizes the edge guidance into another slice of that same buffer. Moving that resize before the
/// conv is safe when neither reads what the other writes and it neither reads nor writes what the
/// attention launch touches.
fn edge_resize_after(g: &Graph, ra: usize, att: View, crop: Option<View>) -> Option<(usize, View, View, ResizeMode)> {
    let conv = g.nodes.get(ra + 1)?;
    let Node::Conv { x: cx, y: cy, .. } = *conv else { return None };
    let idx = ra + 2;
    let Node::Resize { x: ex, y: ey, mode } = *g.nodes.get(idx)? else { return None };
    let Node::ReverseAttention { map, x: feat, .. } = g.nodes[ra] else { return None };
    let ok = cx == att
        && ey.buf == cy.buf
        && !overlap(ey, cy)
        && !overlap(ex, cy)
        && reads(conv).iter().all(|&r| !overlap(r, ey))
        && [att, map, feat].into_iter().chain(crop).all(|v| !overlap(v, ey))
        && [att].into_iter().chain(crop).all(|v| !overlap(v, ex))
        && g.bufs[ey.buf].div == g.bufs[att.buf].div;
    ok.then_some((idx, ex, ey, mode))
}

/// The launches of one forward. `arena` and `weights` are the base addresses (bytes) of the arena
/// laid out as `layout` and of `pack.data`.
///
/// Fusion, per reverse-attention branch: a Resize whose whole output is the map of the immediately
/// following ReverseAttention becomes one reverse-attention launch that also writes the resized map
/// (still needed as the branch's residual); and the Resize of the edge guidance into the concat
/// buffer that the branch's first conv writes (`edge_resize_after`) joins that launch as extra blocks.
///
/// Per align-corners resize read only by convs (the partial decoder's up(·) feeding conv_upsample*):
/// the convs read through the resize and the resize launch is dropped (`resizes_into_convs`).
pub fn launches(g: &Graph, layout: &ArenaLayout, arena: u64, pack: &WeightPack, weights: u64) -> Result<Vec<Launch>> {
    let s = |v: View| layout.slice(g, arena, v);
    let edge_of = |ra: usize, att: View, crop: Option<View>| {
        edge_resize_after(g, ra, att, crop).map(|(idx, x, y, mode)| (idx, kernels::EdgeResize { x: s(x), y: s(y), mode }))
    };
    let (through, mut folded) = resizes_into_convs(g);
    let mut out = Vec::with_capacity(g.nodes.len());
    let mut i = 0;
    while i < g.nodes.len() {
        if folded[i] {
            i += 1;
            continue;
        }
        let launch = match g.nodes[i] {
            Node::Conv { conv, x, x_add, y, residual, relu, mul } => {
                let (w_off, b_off) = pack.offsets[conv];
                if let Some(src) = through[i] {
                    let xs = s(x).shape;
                    kernels::conv_resized(
                        &g.convs[conv],
                        weights + 4 * w_off as u64,
                        weights + 4 * b_off as u64,
                        s(src),
                        xs.h,
                        xs.w,
                        s(y),
                        residual.map(s),
                        relu,
                        mul.map(s),
                    )?
                } else {
                    kernels::conv(
                        &g.convs[conv],
                        weights + 4 * w_off as u64,
                        weights + 4 * b_off as u64,
                        s(x),
                        x_add.map(s),
                        s(y),
                        residual.map(s),
                        relu,
                        mul.map(s),
                    )?
                }
            }
            Node::MaxPool { x, y, k, s: st, p } => kernels::pool(kernels::Pool::Max, s(x), s(y), k, st, p)?,
            Node::AvgPool { x, y, k, s: st, p, count_include_pad, .. } => {
                kernels::pool(kernels::Pool::Avg { count_include_pad }, s(x), s(y), k, st, p)?
            }
            Node::Resize { x, y, mode } => {
                let whole = y.c_off == 0 && y.c == g.bufs[y.buf].c;
                match g.nodes.get(i + 1) {
                    Some(&Node::ReverseAttention { map, x: feat, y: att }) if whole && map == y && x.c == 1 => {
                        i += 1;
                        let edge = edge_of(i, att, Some(y));
                        if let Some((idx, _)) = edge {
                            folded[idx] = true;
                        }
                        kernels::reverse_attention(s(x), Some(mode), s(feat), s(att), Some(s(y)), edge.map(|e| e.1))?
                    }
                    _ => kernels::resize(s(x), s(y), mode)?,
                }
            }
            Node::ReverseAttention { map, x, y } => {
                let edge = edge_of(i, y, None);
                if let Some((idx, _)) = edge {
                    folded[idx] = true;
                }
                kernels::reverse_attention(s(map), None, s(x), s(y), None, edge.map(|e| e.1))?
            }
        };
        out.push(launch);
        i += 1;
    }
    Ok(out)
}
