//! Memory plan for one (N, H, W): every activation buffer gets a slot for the span of steps between
//! its first and last use, and buffers whose spans do not overlap share a slot, so peak memory is
//! what is live at once rather than the sum of every intermediate. Allocated once, reused by every
//! forward; slots start as NaN so that a read of something never written cannot go unnoticed.

use super::tensor::{In, Out};
use super::{node_views, view_shape, Step};
use crate::graph::{Graph, Node, View};

pub struct Plan {
    n: usize,
    h: usize,
    w: usize,
    slots: Vec<Vec<f32>>,
    /// Slot of each graph buffer; None for buffers no step touches (a folded attention product).
    slot_of: Vec<Option<usize>>,
    len_of: Vec<usize>,
    scratch: Vec<f32>,
    /// 1 − σ(map) for a fused attention conv (N × H × W of its level).
    attention: Vec<f32>,
}

/// (views read, views written) by a step.
fn step_views(g: &Graph, step: Step) -> Vec<View> {
    match step {
        Step::Node(i) => {
            let (mut r, w) = node_views(&g.nodes[i]);
            r.extend(w);
            r
        }
        Step::AttentionConv { ra, conv } => {
            let Node::ReverseAttention { map, x, .. } = g.nodes[ra] else { return Vec::new() };
            let (r, w) = node_views(&g.nodes[conv]);
            // The conv's own `x` is the attention product, which is never formed.
            let mut v: Vec<View> = r.into_iter().skip(1).collect();
            v.extend([map, x]);
            v.extend(w);
            v
        }
    }
}

impl Plan {
    pub fn new(g: &Graph, steps: &[Step], n: usize, h: usize, w: usize, scratch: usize) -> Plan {
        let len_of: Vec<usize> = g.bufs.iter().map(|b| n * b.c * (h / b.div) * (w / b.div)).collect();
        let nb = g.bufs.len();
        let (mut first, mut last) = (vec![usize::MAX; nb], vec![0usize; nb]);
        let mut attention = 0;
        for (s, &step) in steps.iter().enumerate() {
            for v in step_views(g, step) {
                first[v.buf] = first[v.buf].min(s);
                last[v.buf] = last[v.buf].max(s);
            }
            if let Step::AttentionConv { ra, .. } = step {
                if let Node::ReverseAttention { map, .. } = g.nodes[ra] {
                    attention = attention.max(len_of[map.buf]);
                }
            }
        }
        first[g.input] = 0;
        for (_, b) in &g.outputs {
            last[*b] = usize::MAX;
        }
        // Greedy assignment in step order: best-fitting free slot, else the largest free one (grown),
        // else a new slot. Slots freed after a step are reusable from the next step on.
        let mut slot_size: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut slot_of = vec![None; nb];
        let mut by_first: Vec<usize> = (0..nb).filter(|&b| first[b] != usize::MAX).collect();
        by_first.sort_by_key(|&b| (first[b], std::cmp::Reverse(len_of[b])));
        let mut by_last: Vec<usize> = by_first.iter().copied().filter(|&b| last[b] != usize::MAX).collect();
        by_last.sort_by_key(|&b| last[b]);
        let (mut fi, mut li) = (0, 0);
        for s in 0..steps.len().max(1) {
            while fi < by_first.len() && first[by_first[fi]] == s {
                let b = by_first[fi];
                let need = len_of[b];
                let fit = free.iter().enumerate().filter(|(_, &sl)| slot_size[sl] >= need).min_by_key(|(_, &sl)| slot_size[sl]);
                let pick = fit.or_else(|| free.iter().enumerate().max_by_key(|(_, &sl)| slot_size[sl])).map(|(i, _)| i);
                let sl = match pick {
                    Some(i) => free.swap_remove(i),
                    None => {
                        slot_size.push(0);
                        slot_size.len() - 1
                    }
                };
                slot_size[sl] = slot_size[sl].max(need);
                slot_of[b] = Some(sl);
                fi += 1;
            }
            while li < by_last.len() && last[by_last[li]] == s {
                if let Some(sl) = slot_of[by_last[li]] {
                    free.push(sl);
                }
                li += 1;
            }
        }
        let slots = slot_size.iter().map(|&n| vec![f32::NAN; n]).collect();
        Plan { n, h, w, slots, slot_of, len_of, scratch: vec![0.0; scratch], attention: vec![0.0; attention] }
    }

    pub fn dims(&self) -> (usize, usize, usize) {
        (self.n, self.h, self.w)
    }

    /// Bytes of activations, scratch and attention scales.
    pub fn bytes(&self) -> usize {
        4 * (self.slots.iter().map(|s| s.len()).sum::<usize>() + self.scratch.len() + self.attention.len())
    }

    /// Whole buffer `b` (the input before the first step, outputs after the last).
    pub fn buf(&self, b: usize) -> &[f32] {
        let sl = self.slot_of[b].expect("buffer has no slot");
        &self.slots[sl][..self.len_of[b]]
    }

    pub fn buf_mut(&mut self, b: usize) -> &mut [f32] {
        let sl = self.slot_of[b].expect("buffer has no slot");
        &mut self.slots[sl][..self.len_of[b]]
    }

    pub fn scratch(&mut self) -> &mut [f32] {
        &mut self.scratch
    }

    pub fn input(&self, g: &Graph, v: View) -> In {
        let (off, shape) = view_shape(g, v, self.n, self.h, self.w);
        let buf = self.buf(v.buf);
        assert!(off + shape.span() <= buf.len());
        In { ptr: buf[off..].as_ptr(), shape }
    }

    pub fn output(&mut self, g: &Graph, v: View) -> Out {
        let (off, shape) = view_shape(g, v, self.n, self.h, self.w);
        let buf = self.buf_mut(v.buf);
        assert!(off + shape.span() <= buf.len());
        Out { ptr: buf[off..].as_mut_ptr(), shape }
    }

    /// Fills the attention-scale buffer with 1 − σ(map) and returns it as an N×1×H×W view.
    pub fn attention_scale(&mut self, g: &Graph, map: View) -> In {
        let m = self.input(g, map);
        let len = m.shape.n * m.shape.hw();
        let dst = &mut self.attention[..len];
        for i in 0..m.shape.n {
            // SAFETY: the map view is live (planned buffer).
            let src = unsafe { m.plane(i, 0) };
            for (d, &v) in dst[i * m.shape.hw()..(i + 1) * m.shape.hw()].iter_mut().zip(src) {
                *d = 1.0 - super::ops::sigmoid(v);
            }
        }
        In::new(dst, super::tensor::Shape::dense(m.shape.n, 1, m.shape.h, m.shape.w))
    }
}
