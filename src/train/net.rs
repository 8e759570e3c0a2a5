//! Inf-Net in training mode: BatchNorm unfolded with batch statistics, every parameter under its public
//! key, and a backward pass over the same node list in reverse.
//!
//! The builder mirrors `model/` (same structure detection and key names; the state_dict is first
//! validated by `InfNet::from_state_dict`, so a bad file gets exactly the inference loader's errors)
//! but emits unfused nodes: Conv, BatchNorm(+ReLU), Add(+ReLU), Mul, Copy, pools, resizes and reverse
//! attention, each over channel `View`s of planned buffers. Concatenation and split stay free: nodes
//! write into and read from channel slices, and gradient buffers have the activations' layout, so the
//! backward of a concat or split is the same slicing. No node reads the buffer it writes, so a node's
//! input and output (and their gradients) can be borrowed at once.

use super::loss::{infnet_loss, LossParts};
use super::ops::{self, ConvGeom};
use crate::cpu::tensor::Shape;
use crate::error::{Error, Result};
use crate::graph::{BufDesc, BufId, ResizeMode, View};
use crate::model::Config;
use crate::weights::{StateDict, Tensor};
use std::collections::BTreeMap;

/// A trainable tensor: its public key, shape, values and gradient.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub grad: Vec<f32>,
}

/// A BatchNorm2d: its affine parameters (indices into `params`) and its running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub prefix: String,
    pub weight: usize,
    pub bias: usize,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub num_batches_tracked: i64,
}

#[derive(Clone, Debug)]
struct Conv {
    geom: ConvGeom,
    weight: usize,
    bias: Option<usize>,
}

#[derive(Clone, Debug)]
enum Node {
    Conv { conv: usize, x: View, y: View },
    BatchNorm { bn: usize, x: View, y: View, relu: bool },
    Add { a: View, b: View, y: View, relu: bool },
    Mul { a: View, b: View, y: View },
    Copy { x: View, y: View },
    MaxPool { x: View, y: View },
    AvgPool { x: View, y: View, k: usize, s: usize, p: usize, count_include_pad: bool },
    Resize { x: View, y: View, mode: ResizeMode },
    ReverseAttention { map: View, x: View, y: View },
}

/// Activations, their gradients and the BatchNorm batch statistics for one (N, H, W), allocated once
/// and reused by every step at that size.
///
/// Every activation is kept (backward reads them), but a gradient is only live between the first
/// backward node that adds into it and the backward of the node that produced it, so gradients share
/// `grad_slots` whenever their live ranges (in node order) are disjoint.
struct Plan {
    n: usize,
    h: usize,
    w: usize,
    acts: Vec<Vec<f32>>,
    grad_slots: Vec<Vec<f32>>,
    /// Slot of each buffer's gradient (`NO_GRAD` for the input and untouched buffers).
    grad_slot: Vec<usize>,
    /// zero_at[k]: buffers whose gradient is first touched by node k's backward (k = nodes.len(): the
    /// loss), zeroed just before.
    zero_at: Vec<Vec<BufId>>,
    sizes: Vec<usize>,
    bn_mean: Vec<Vec<f32>>,
    bn_invstd: Vec<Vec<f32>>,
    scratch: Vec<f32>,
    /// Per-thread gather panels of `fast_conv_forward`, grown on the first step only.
    fast_scratch: Vec<f32>,
}

pub struct TrainNet {
    pub config: Config,
    pub params: Vec<Param>,
    pub bns: Vec<BatchNorm>,
    convs: Vec<Conv>,
    nodes: Vec<Node>,
    bufs: Vec<BufDesc>,
    input: BufId,
    /// lateral_map_5, _4, _3, _2, lateral_edge.
    outputs: [BufId; 5],
    plan: Option<Plan>,
    /// Opt-in (`INFNET_TRAIN_CONV=implicit`): forward spatial convs through the inference engine's
    /// implicit GEMM (`cpu::implicit_gemm`) instead of im2col + `gemm`. Its 3×3 convs measured ~35% faster,
    /// but its different summation order, amplified by Adam where gradients are ~0 in exact arithmetic,
    /// puts the third step of `three_adam_steps_match_pytorch_on_tiny` at 2.9e-5 relative loss error
    /// (tolerance 1e-5; im2col + `gemm` gives 2.2e-7), so it is not the default.
    fast_conv: bool,
    /// Opt-in per-op timing (`INFNET_TRAIN_PROFILE=1`), printed to stderr after each step.
    profile: Option<BTreeMap<String, (f64, usize)>>,
}

/// Batch tensors for one step: images N×3×H×W, masks and edges N×1×H×W.
pub struct Batch<'a> {
    pub images: &'a Tensor,
    pub masks: &'a Tensor,
    pub edges: &'a Tensor,
}

impl TrainNet {
    /// `num_batches_tracked`: the counters stored beside the weights (missing ones start at 0).
    pub fn from_state_dict(sd: &StateDict, num_batches_tracked: &BTreeMap<String, i64>) -> Result<TrainNet> {
        let config = crate::model::InfNet::from_state_dict(sd)?.config;
        let mut b = Builder { sd, nbt: num_batches_tracked, params: Vec::new(), bns: Vec::new(), convs: Vec::new(), nodes: Vec::new(), bufs: Vec::new() };
        let input = b.buf("input", 3, 1);
        let f = build_backbone(&mut b, input, &config);
        let rfb2 = build_rfb(&mut b, "rfb2_1", f[1]);
        let rfb3 = build_rfb(&mut b, "rfb3_1", f[2]);
        let rfb4 = build_rfb(&mut b, "rfb4_1", f[3]);
        let ra5 = build_decoder(&mut b, rfb4, rfb3, rfb2);
        let outputs = build_heads(&mut b, f, ra5);
        Ok(TrainNet {
            config,
            params: b.params,
            bns: b.bns,
            convs: b.convs,
            nodes: b.nodes,
            bufs: b.bufs,
            input: input.buf,
            outputs,
            plan: None,
            fast_conv: std::env::var("INFNET_TRAIN_CONV").is_ok_and(|v| v == "implicit"),
            profile: std::env::var("INFNET_TRAIN_PROFILE").ok().filter(|v| !v.is_empty() && v != "0").map(|_| BTreeMap::new()),
        })
    }

    /// MiB planned for the current (N, H, W): (activations, gradient slots, conv scratch); the
    /// gradients as one buffer per activation would take as much as the activations.
    pub fn planned_mib(&self) -> Option<(f64, f64, f64)> {
        let p = self.plan.as_ref()?;
        let mib = |v: usize| (v * std::mem::size_of::<f32>()) as f64 / (1 << 20) as f64;
        let sum = |v: &[Vec<f32>]| mib(v.iter().map(|b| b.len()).sum());
        Some((sum(&p.acts), sum(&p.grad_slots), mib(p.scratch.len() + p.fast_scratch.len())))
    }

    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.data.len()).sum()
    }

    fn prepare(&mut self, n: usize, h: usize, w: usize) {
        if matches!(&self.plan, Some(p) if (p.n, p.h, p.w) == (n, h, w)) {
            return;
        }
        self.plan = None; // free the old buffers before allocating new ones
        let sizes: Vec<usize> = self.bufs.iter().map(|b| n * b.c * (h / b.div) * (w / b.div)).collect();
        let (grad_slot, slot_sizes, zero_at) = self.plan_gradients(&sizes);
        let mut scratch = 0;
        for node in &self.nodes {
            if let Node::Conv { conv, x, .. } = node {
                let d = self.bufs[x.buf].div;
                scratch = scratch.max(self.convs[*conv].geom.scratch_len(h / d, w / d));
            }
        }
        self.plan = Some(Plan {
            n,
            h,
            w,
            acts: sizes.iter().map(|&s| vec![0.0; s]).collect(),
            grad_slots: slot_sizes.iter().map(|&s| vec![0.0; s]).collect(),
            grad_slot,
            zero_at,
            sizes,
            bn_mean: self.bns.iter().map(|b| vec![0.0; b.running_mean.len()]).collect(),
            bn_invstd: self.bns.iter().map(|b| vec![0.0; b.running_mean.len()]).collect(),
            scratch: vec![0.0; scratch],
            fast_scratch: Vec::new(),
        });
    }

    /// Live range [first, last] (node indices) of each buffer's gradient: every node that reads or writes
    /// the buffer touches its gradient in backward; the outputs' gradients are also touched by the loss
    /// (index nodes.len()). Buffers are packed greedily, largest first, into slots whose ranges are
    /// disjoint. A node's input and output gradients are both live at that node, so they never share.
    fn plan_gradients(&self, sizes: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<Vec<BufId>>) {
        let nodes = self.nodes.len();
        let mut range: Vec<Option<(usize, usize)>> = vec![None; self.bufs.len()];
        let mut touch = |b: BufId, k: usize| {
            let r = range[b].get_or_insert((k, k));
            *r = (r.0.min(k), r.1.max(k));
        };
        for (k, node) in self.nodes.iter().enumerate() {
            let (out, reads) = node_io(node);
            touch(out.buf, k);
            reads.iter().for_each(|v| touch(v.buf, k));
        }
        self.outputs.iter().for_each(|&b| touch(b, nodes));
        let mut order: Vec<BufId> = (0..self.bufs.len()).filter(|&b| range[b].is_some()).collect();
        order.sort_by_key(|&b| std::cmp::Reverse(sizes[b]));
        let mut slot_of = vec![NO_GRAD; self.bufs.len()];
        let mut slots: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
        for b in order {
            let Some((lo, hi)) = range[b] else { continue };
            let free = slots.iter().position(|(_, used)| used.iter().all(|&(a, z)| hi < a || lo > z));
            let s = free.unwrap_or_else(|| {
                slots.push((0, Vec::new()));
                slots.len() - 1
            });
            slots[s].0 = slots[s].0.max(sizes[b]);
            slots[s].1.push((lo, hi));
            slot_of[b] = s;
        }
        let mut zero_at = vec![Vec::new(); nodes + 1];
        for (b, r) in range.iter().enumerate() {
            if let Some((_, hi)) = r {
                zero_at[*hi].push(b);
            }
        }
        (slot_of, slots.iter().map(|s| s.0).collect(), zero_at)
    }

    /// Checks a batch: shapes consistent, H and W multiples of 32, finite values.
    pub fn check_batch(batch: &Batch) -> Result<(usize, usize, usize)> {
        let (n, h, w) = crate::engine::check_input(batch.images)?;
        for (name, t) in [("masks", batch.masks), ("edges", batch.edges)] {
            if t.shape != [n, 1, h, w] {
                return Err(Error::invalid(format!("`{name}` is {:?}, expected [{n}, 1, {h}, {w}] to match `images`", t.shape)));
            }
        }
        for (name, t) in [("images", batch.images), ("masks", batch.masks), ("edges", batch.edges)] {
            if t.data.iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid(format!("`{name}` contains NaN or infinite values")));
            }
        }
        Ok((n, h, w))
    }

    /// One forward in training mode (updating the BN running statistics), the public loss, and the
    /// backward: every `Param::grad` is overwritten with d loss / d param.
    pub fn forward_backward(&mut self, batch: &Batch) -> Result<LossParts> {
        let (n, h, w) = Self::check_batch(batch)?;
        if n < 2 && h / 32 * (w / 32) < 2 {
            return Err(Error::invalid(format!(
                "a batch of {n} image(s) at {h}×{w} leaves one value per channel in the deepest BatchNorm; training mode needs more (larger batch or input)"
            )));
        }
        self.prepare(n, h, w);
        let mut plan = self.plan.take().expect("plan prepared");
        let t_start = std::time::Instant::now();
        plan.acts[self.input].copy_from_slice(&batch.images.data);
        self.forward(&mut plan);
        let t_fwd = t_start.elapsed().as_secs_f64();
        zero_grads(&mut plan, self.nodes.len());
        {
            use rayon::prelude::*;
            self.params.par_iter_mut().for_each(|p| p.grad.fill(0.0));
        }
        let mut d: Vec<Vec<f32>> = self.outputs.iter().map(|&b| std::mem::take(&mut plan.grad_slots[plan.grad_slot[b]])).collect();
        let parts = {
            let a = |k: usize| &plan.acts[self.outputs[k]][..];
            let len = plan.acts[self.outputs[0]].len();
            let d: Vec<&mut [f32]> = d.iter_mut().map(|g| &mut g[..len]).collect();
            let [d0, d1, d2, d3, d4]: [&mut [f32]; 5] = d.try_into().expect("five outputs");
            infnet_loss(
                [a(0), a(1), a(2), a(3)],
                a(4),
                &batch.masks.data,
                &batch.edges.data,
                n,
                h,
                w,
                [d0, d1, d2, d3],
                d4,
            )
        };
        for (k, g) in d.into_iter().enumerate() {
            plan.grad_slots[plan.grad_slot[self.outputs[k]]] = g;
        }
        let t_loss = t_start.elapsed().as_secs_f64() - t_fwd;
        self.backward(&mut plan);
        self.report_profile(t_start.elapsed().as_secs_f64(), &[("zero grads + loss", t_loss)]);
        self.plan = Some(plan);
        Ok(parts)
    }

    /// The five output maps of the last forward (lateral_map_5, _4, _3, _2, lateral_edge).
    pub fn outputs(&self) -> Vec<(&'static str, &[f32])> {
        let names = ["lateral_map_5", "lateral_map_4", "lateral_map_3", "lateral_map_2", "lateral_edge"];
        match &self.plan {
            Some(p) => names.iter().zip(self.outputs).map(|(n, b)| (*n, &p.acts[b][..])).collect(),
            None => Vec::new(),
        }
    }


    fn forward(&mut self, plan: &mut Plan) {
        let dims = (plan.n, plan.h, plan.w);
        let mut prof = self.profile.take();
        for node in &self.nodes {
            let t0 = prof.as_ref().map(|_| std::time::Instant::now());
            let (outv, reads) = node_io(node);
            let (yo, ys) = view_shape(&self.bufs, dims, outv);
            let ins: Vec<(&[f32], Shape)> = reads
                .iter()
                .map(|&v| {
                    assert_ne!(v.buf, outv.buf, "a node reads the buffer it writes");
                    let (o, s) = view_shape(&self.bufs, dims, v);
                    // SAFETY: read buffers differ from the written one (asserted), and the Vec is not resized.
                    (unsafe { &*(&plan.acts[v.buf][o..] as *const [f32]) }, s)
                })
                .collect();
            let y = &mut plan.acts[outv.buf][yo..];
            match *node {
                Node::Conv { conv, .. } => {
                    let c = &self.convs[conv];
                    // Pointwise convs are already a plain GEMM on the input; there `gemm` measured faster
                    // than packing the (large, 1×1) weights every step for the implicit GEMM.
                    let pointwise = c.geom.kh == 1 && c.geom.kw == 1 && c.geom.stride == 1 && c.geom.pad_h == 0 && c.geom.pad_w == 0;
                    if self.fast_conv && !pointwise {
                        fast_conv_forward(c, &mut self.params, ins[0].0, ins[0].1, y, ys, &mut plan.fast_scratch);
                    } else {
                        let bias = c.bias.map(|b| &self.params[b].data[..]);
                        ops::conv_forward(&c.geom, ins[0].0, ins[0].1, &self.params[c.weight].data, bias, y, ys, &mut plan.scratch);
                    }
                }
                Node::BatchNorm { bn, relu, .. } => {
                    let b = &mut self.bns[bn];
                    let (g, be) = (&self.params[b.weight].data, &self.params[b.bias].data);
                    ops::batchnorm_forward(
                        ins[0].0,
                        ins[0].1,
                        g,
                        be,
                        &mut b.running_mean,
                        &mut b.running_var,
                        relu,
                        y,
                        ys,
                        &mut plan.bn_mean[bn],
                        &mut plan.bn_invstd[bn],
                    );
                    b.num_batches_tracked += 1;
                }
                Node::Add { relu, .. } => ops::add_forward(ins[0].0, ins[0].1, ins[1].0, ins[1].1, relu, y, ys),
                Node::Mul { .. } => ops::mul_forward(ins[0].0, ins[0].1, ins[1].0, ins[1].1, y, ys),
                Node::Copy { .. } => ops::copy_forward(ins[0].0, ins[0].1, y, ys),
                Node::MaxPool { .. } => ops::max_pool_forward(ins[0].0, ins[0].1, y, ys, 3, 2, 1),
                Node::AvgPool { k, s, p, count_include_pad, .. } => {
                    ops::avg_pool_forward(ins[0].0, ins[0].1, y, ys, k, s, p, count_include_pad)
                }
                Node::Resize { mode, .. } => ops::resize_forward(ins[0].0, ins[0].1, y, ys, mode),
                Node::ReverseAttention { .. } => ops::reverse_attention_forward(ins[0].0, ins[0].1, ins[1].0, ins[1].1, y, ys),
            }
            if let (Some(p), Some(t0)) = (prof.as_mut(), t0) {
                let e = p.entry(format!("fwd {}", op_label(&self.convs, node))).or_default();
                e.0 += t0.elapsed().as_secs_f64();
                e.1 += 1;
            }
        }
        self.profile = prof;
    }


    /// Prints and clears the accumulated profile.
    fn report_profile(&mut self, total: f64, other: &[(&str, f64)]) {
        let Some(p) = self.profile.as_mut() else { return };
        let mut rows: Vec<(String, f64, usize)> = p.iter().map(|(k, v)| (k.clone(), v.0, v.1)).collect();
        rows.extend(other.iter().map(|(k, t)| (k.to_string(), *t, 1)));
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        eprintln!("infnet train profile: {:.1} ms per forward+loss+backward", total * 1e3);
        for (k, t, c) in rows {
            eprintln!("  {:9.1} ms {:5.1}%  {c:4}×  {k}", t * 1e3, 100.0 * t / total);
        }
        p.clear();
    }

    fn backward(&mut self, plan: &mut Plan) {
        let dims = (plan.n, plan.h, plan.w);
        let mut prof = self.profile.take();
        for (k, node) in self.nodes.iter().enumerate().rev() {
            let t0 = prof.as_ref().map(|_| std::time::Instant::now());
            zero_grads(plan, k);
            let Plan { acts, grad_slots: grads, grad_slot, bn_mean, bn_invstd, scratch, .. } = &mut *plan;
            let (params, bufs) = (&mut self.params, &self.bufs);
            let (outv, _) = node_io(node);
            let (yo, ys) = view_shape(bufs, dims, outv);
            let act = |v: View| {
                let (o, s) = view_shape(bufs, dims, v);
                (&acts[v.buf][o..], s)
            };
            let (y, _) = act(outv);
            // SAFETY: dy lives in the output's gradient buffer, which no gradient written below aliases
            // (every read buffer differs from the written one); the Vec is not resized.
            let dy = unsafe { &*(&grads[grad_slot[outv.buf]][yo..] as *const [f32]) };
            let grad_of = |v: View, grads: &mut Vec<Vec<f32>>| -> (&mut [f32], Shape) {
                let (o, s) = view_shape(bufs, dims, v);
                // SAFETY: as above (live gradients never share a slot); each returned slice is used
                // before the next one is taken.
                (unsafe { &mut *(&mut grads[grad_slot[v.buf]][o..] as *mut [f32]) }, s)
            };
            match *node {
                Node::Conv { conv, x, .. } => {
                    let c = &self.convs[conv];
                    let (xa, xs) = act(x);
                    let dx = if x.buf == self.input { None } else { Some(grad_of(x, grads)) };
                    let mut dw = std::mem::take(&mut params[c.weight].grad);
                    let mut db = c.bias.map(|b| std::mem::take(&mut params[b].grad));
                    ops::conv_backward(&c.geom, xa, xs, &params[c.weight].data, dy, ys, dx, &mut dw, db.as_deref_mut(), scratch);
                    params[c.weight].grad = dw;
                    if let (Some(b), Some(g)) = (c.bias, db) {
                        params[b].grad = g;
                    }
                }
                Node::BatchNorm { bn, x, relu, .. } => {
                    let b = &self.bns[bn];
                    let (xa, xs) = act(x);
                    let (dx, dxs) = grad_of(x, grads);
                    let mut dg = std::mem::take(&mut params[b.weight].grad);
                    let mut dbeta = std::mem::take(&mut params[b.bias].grad);
                    ops::batchnorm_backward(
                        xa,
                        xs,
                        y,
                        ys,
                        &params[b.weight].data,
                        &bn_mean[bn],
                        &bn_invstd[bn],
                        relu,
                        dy,
                        ys,
                        dx,
                        dxs,
                        &mut dg,
                        &mut dbeta,
                    );
                    params[b.weight].grad = dg;
                    params[b.bias].grad = dbeta;
                }
                Node::Add { a, b, relu, .. } => {
                    for v in [a, b] {
                        let (d, ds) = grad_of(v, grads);
                        ops::add_backward(y, ys, relu, dy, ys, d, ds);
                    }
                }
                Node::Mul { a, b, .. } => {
                    for (v, other) in [(a, b), (b, a)] {
                        let (o, os) = act(other);
                        let (d, ds) = grad_of(v, grads);
                        ops::mul_backward(o, os, dy, ys, d, ds);
                    }
                }
                Node::Copy { x, .. } => {
                    let (d, ds) = grad_of(x, grads);
                    ops::copy_backward(dy, ys, d, ds);
                }
                Node::MaxPool { x, .. } => {
                    let (xa, xs) = act(x);
                    let (d, ds) = grad_of(x, grads);
                    ops::max_pool_backward(xa, xs, dy, ys, d, ds, 3, 2, 1);
                }
                Node::AvgPool { x, k, s, p, count_include_pad, .. } => {
                    let (d, ds) = grad_of(x, grads);
                    ops::avg_pool_backward(dy, ys, d, ds, k, s, p, count_include_pad);
                }
                Node::Resize { x, mode, .. } => {
                    let (d, ds) = grad_of(x, grads);
                    ops::resize_backward(dy, ys, d, ds, mode);
                }
                Node::ReverseAttention { map, x, .. } => {
                    let ((ma, ms), (xa, xs)) = (act(map), act(x));
                    let (dm, dms) = grad_of(map, grads);
                    let (dx, dxs) = grad_of(x, grads);
                    ops::reverse_attention_backward(ma, ms, xa, xs, dy, ys, dm, dms, dx, dxs);
                }
            }
            if let (Some(p), Some(t0)) = (prof.as_mut(), t0) {
                let label = op_label(&self.convs, node);
                let e = p.entry(format!("bwd {label}")).or_default();
                e.0 += t0.elapsed().as_secs_f64();
                e.1 += 1;
            }
        }
        self.profile = prof;
    }

    /// Every parameter's gradient under its public key.
    pub fn gradients(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|p| (p.name.clone(), Tensor { shape: p.shape.clone(), data: p.grad.clone() })).collect()
    }

    /// Parameters and BN running statistics under their public keys (num_batches_tracked separately).
    pub fn float_state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> =
            self.params.iter().map(|p| (p.name.clone(), Tensor { shape: p.shape.clone(), data: p.data.clone() })).collect();
        for b in &self.bns {
            let c = b.running_mean.len();
            out.push((format!("{}.running_mean", b.prefix), Tensor { shape: vec![c], data: b.running_mean.clone() }));
            out.push((format!("{}.running_var", b.prefix), Tensor { shape: vec![c], data: b.running_var.clone() }));
        }
        out
    }
}

const NO_GRAD: usize = usize::MAX;

/// y = conv(x) + bias through `cpu::implicit_gemm`. The weights change every step, so they are packed
/// per call; the weight vector is moved into the `ConvParam` and back, not copied.
fn fast_conv_forward(c: &Conv, params: &mut [Param], x: &[f32], xs: Shape, y: &mut [f32], ys: Shape, scratch: &mut Vec<f32>) {
    use crate::cpu::{conv::Epilogue, implicit_gemm, microkernel::Isa, tensor};
    let g = &c.geom;
    assert!(x.len() >= xs.span() && y.len() >= ys.span());
    let p = crate::graph::ConvParam {
        name: String::new(),
        cout: g.cout,
        cin: g.cin,
        kh: g.kh,
        kw: g.kw,
        stride: g.stride,
        pad_h: g.pad_h,
        pad_w: g.pad_w,
        dil: g.dil,
        weight: std::mem::take(&mut params[c.weight].data),
        bias: match c.bias {
            Some(b) => std::mem::take(&mut params[b].data),
            None => vec![0.0; g.cout],
        },
    };
    let pk = implicit_gemm::PackedConv::new(&p, Isa::detect());
    let need = pk.panel_len() * rayon::current_num_threads();
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    implicit_gemm::conv2d(
        &p,
        &pk,
        tensor::In { ptr: x.as_ptr(), shape: xs },
        None,
        tensor::Out { ptr: y.as_mut_ptr(), shape: ys },
        Epilogue::default(),
        scratch,
    );
    params[c.weight].data = p.weight;
    if let Some(b) = c.bias {
        params[b].data = p.bias;
    }
}

/// Zeroes the gradients whose live range starts at node k's backward (k = nodes.len(): the loss).
fn zero_grads(plan: &mut Plan, k: usize) {
    use rayon::prelude::*;
    for &b in &plan.zero_at[k] {
        let g = &mut plan.grad_slots[plan.grad_slot[b]][..plan.sizes[b]];
        if g.len() < 1 << 16 {
            g.fill(0.0);
        } else {
            g.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
        }
    }
}

/// Profile bucket of a node: its op and, for convs, the kernel geometry.
fn op_label(convs: &[Conv], node: &Node) -> String {
    match node {
        Node::Conv { conv, .. } => {
            let g = &convs[*conv].geom;
            format!("conv {}x{} s{} d{}", g.kh, g.kw, g.stride, g.dil)
        }
        Node::BatchNorm { relu, .. } => format!("batchnorm{}", if *relu { "+relu" } else { "" }),
        Node::Add { .. } => "add".into(),
        Node::Mul { .. } => "mul".into(),
        Node::Copy { .. } => "copy".into(),
        Node::MaxPool { .. } => "maxpool".into(),
        Node::AvgPool { .. } => "avgpool".into(),
        Node::Resize { .. } => "resize".into(),
        Node::ReverseAttention { .. } => "reverse_attention".into(),
    }
}

/// Offset and shape of view `v` at batch size n and input size h×w.
fn view_shape(bufs: &[BufDesc], (n, h, w): (usize, usize, usize), v: View) -> (usize, Shape) {
    let b = &bufs[v.buf];
    let (h, w) = (h / b.div, w / b.div);
    (v.c_off * h * w, Shape { n, c: v.c, h, w, batch_stride: b.c * h * w })
}

/// The view a node writes and the views it reads.
fn node_io(n: &Node) -> (View, Vec<View>) {
    match *n {
        Node::Conv { x, y, .. } | Node::BatchNorm { x, y, .. } | Node::Copy { x, y } | Node::MaxPool { x, y } => (y, vec![x]),
        Node::AvgPool { x, y, .. } | Node::Resize { x, y, .. } => (y, vec![x]),
        Node::Add { a, b, y, .. } | Node::Mul { a, b, y } => (y, vec![a, b]),
        Node::ReverseAttention { map, x, y } => (y, vec![map, x]),
    }
}

// ---------------------------------------------------------------------------------------------------
// Builder. Shapes were validated by the inference loader, so tensors are read without re-checking.
// ---------------------------------------------------------------------------------------------------

struct Builder<'a> {
    sd: &'a StateDict,
    nbt: &'a BTreeMap<String, i64>,
    params: Vec<Param>,
    bns: Vec<BatchNorm>,
    convs: Vec<Conv>,
    nodes: Vec<Node>,
    bufs: Vec<BufDesc>,
}

impl Builder<'_> {
    fn buf(&mut self, name: &str, c: usize, div: usize) -> View {
        self.bufs.push(BufDesc { name: name.to_string(), c, div });
        View { buf: self.bufs.len() - 1, c_off: 0, c }
    }
    fn div(&self, v: View) -> usize {
        self.bufs[v.buf].div
    }
    fn param(&mut self, key: &str) -> usize {
        let t = &self.sd.tensors[key];
        self.params.push(Param { name: key.to_string(), shape: t.shape.clone(), data: t.data.clone(), grad: vec![0.0; t.data.len()] });
        self.params.len() - 1
    }

    /// Conv2d `wkey` (+ `bkey` bias) from x into `dest` or a new buffer.
    fn conv(&mut self, wkey: &str, bkey: Option<&str>, k: (usize, usize), stride: usize, pad: (usize, usize), dil: usize, x: View, dest: Option<View>) -> View {
        let weight = self.param(wkey);
        let cout = self.params[weight].shape[0];
        let bias = bkey.map(|b| self.param(b));
        let geom = ConvGeom { cin: x.c, cout, kh: k.0, kw: k.1, stride, pad_h: pad.0, pad_w: pad.1, dil };
        let div = self.div(x) * stride;
        let y = dest.unwrap_or_else(|| self.buf(wkey, cout, div));
        self.convs.push(Conv { geom, weight, bias });
        self.nodes.push(Node::Conv { conv: self.convs.len() - 1, x, y });
        y
    }

    fn batchnorm(&mut self, prefix: &str, x: View, relu: bool, dest: Option<View>) -> View {
        let weight = self.param(&format!("{prefix}.weight"));
        let bias = self.param(&format!("{prefix}.bias"));
        let get = |s: &str| self.sd.tensors[&format!("{prefix}.{s}")].data.clone();
        self.bns.push(BatchNorm {
            prefix: prefix.to_string(),
            weight,
            bias,
            running_mean: get("running_mean"),
            running_var: get("running_var"),
            num_batches_tracked: self.nbt.get(&format!("{prefix}.num_batches_tracked")).copied().unwrap_or(0),
        });
        let y = dest.unwrap_or_else(|| {
            let div = self.div(x);
            self.buf(prefix, x.c, div)
        });
        self.nodes.push(Node::BatchNorm { bn: self.bns.len() - 1, x, y, relu });
        y
    }

    /// conv (no bias) + BatchNorm (+ ReLU), the pair almost every layer is made of.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(&mut self, wkey: &str, bn: &str, k: (usize, usize), stride: usize, pad: (usize, usize), dil: usize, x: View, relu: bool, dest: Option<View>) -> View {
        let t = self.conv(wkey, None, k, stride, pad, dil, x, None);
        self.batchnorm(bn, t, relu, dest)
    }

    /// The public BasicConv2d (conv + bn, no activation inside), square kernel, "same" padding.
    fn basic(&mut self, p: &str, k: usize, x: View, relu: bool, dest: Option<View>) -> View {
        self.conv_bn(&format!("{p}.conv.weight"), &format!("{p}.bn"), (k, k), 1, (k / 2, k / 2), 1, x, relu, dest)
    }

    fn add(&mut self, name: &str, a: View, b: View, relu: bool) -> View {
        let div = self.div(a);
        let y = self.buf(name, a.c, div);
        self.nodes.push(Node::Add { a, b, y, relu });
        y
    }

    fn resize(&mut self, x: View, scale: f64, name: &str, dest: Option<View>) -> View {
        let d = self.div(x);
        let div = if scale >= 1.0 { d / scale as usize } else { d * (1.0 / scale).round() as usize };
        let y = dest.unwrap_or_else(|| self.buf(name, x.c, div));
        self.nodes.push(Node::Resize { x, y, mode: ResizeMode::ScaleFactor(scale) });
        y
    }

    fn upsample2(&mut self, x: View, name: &str) -> View {
        let div = self.div(x) / 2;
        let y = self.buf(name, x.c, div);
        self.nodes.push(Node::Resize { x, y, mode: ResizeMode::AlignCorners });
        y
    }
}

/// Res2Net v1b stem and four stages; returns the stage outputs x1..x4 (H/4 .. H/32).
fn build_backbone(b: &mut Builder, input: View, cfg: &Config) -> [View; 4] {
    let t = b.conv_bn("resnet.conv1.0.weight", "resnet.conv1.1", (3, 3), 2, (1, 1), 1, input, true, None);
    let t = b.conv_bn("resnet.conv1.3.weight", "resnet.conv1.4", (3, 3), 1, (1, 1), 1, t, true, None);
    let t = b.conv_bn("resnet.conv1.6.weight", "resnet.bn1", (3, 3), 1, (1, 1), 1, t, true, None);
    let mut x = b.buf("stem_pool", t.c, 4);
    b.nodes.push(Node::MaxPool { x: t, y: x });
    let mut outs = [input; 4];
    for s in 0..4 {
        for blk in 0..cfg.blocks[s] {
            let p = format!("resnet.layer{}.{}", s + 1, blk);
            let stride = if blk == 0 && s > 0 { 2 } else { 1 };
            let has_down = blk == 0 && b.sd.tensors.contains_key(&format!("{p}.downsample.1.weight"));
            x = bottle2neck(b, &p, x, stride, blk == 0, cfg.scale - 1, has_down);
        }
        outs[s] = x;
    }
    outs
}

/// One Bottle2neck: conv1 → splits; chained 3×3 convs (adding the previous output in normal blocks);
/// the last split copied (normal) or average-pooled (stage) into the concatenation; conv3; residual.
fn bottle2neck(b: &mut Builder, p: &str, x: View, stride: usize, stage: bool, nums: usize, has_down: bool) -> View {
    let width = b.sd.tensors[&format!("{p}.convs.0.weight")].shape[0];
    let split = b.conv_bn(&format!("{p}.conv1.weight"), &format!("{p}.bn1"), (1, 1), 1, (0, 0), 1, x, true, None);
    let div_in = b.div(x);
    let cat = b.buf(&format!("{p}.cat"), width * (nums + 1), div_in * stride);
    for i in 0..nums {
        let sp = if i == 0 || stage {
            split.slice(i * width, width)
        } else {
            b.add(&format!("{p}.sp{i}"), cat.slice((i - 1) * width, width), split.slice(i * width, width), false)
        };
        let (wk, bk) = (format!("{p}.convs.{i}.weight"), format!("{p}.bns.{i}"));
        b.conv_bn(&wk, &bk, (3, 3), stride, (1, 1), 1, sp, true, Some(cat.slice(i * width, width)));
    }
    let (last, dst) = (split.slice(nums * width, width), cat.slice(nums * width, width));
    if stage {
        b.nodes.push(Node::AvgPool { x: last, y: dst, k: 3, s: stride, p: 1, count_include_pad: true });
    } else {
        b.nodes.push(Node::Copy { x: last, y: dst });
    }
    let out = b.conv_bn(&format!("{p}.conv3.weight"), &format!("{p}.bn3"), (1, 1), 1, (0, 0), 1, cat, false, None);
    let residual = if has_down {
        let src = if stride != 1 {
            let pooled = b.buf(&format!("{p}.down_pool"), x.c, div_in * stride);
            b.nodes.push(Node::AvgPool { x, y: pooled, k: stride, s: stride, p: 0, count_include_pad: false });
            pooled
        } else {
            x
        };
        b.conv_bn(&format!("{p}.downsample.1.weight"), &format!("{p}.downsample.2"), (1, 1), 1, (0, 0), 1, src, false, None)
    } else {
        x
    };
    b.add(&format!("{p}.out"), out, residual, true)
}

fn build_rfb(b: &mut Builder, p: &str, x: View) -> View {
    let ch = b.sd.tensors[&format!("{p}.branch0.0.conv.weight")].shape[0];
    let div = b.div(x);
    let cat = b.buf(&format!("{p}.cat"), 4 * ch, div);
    b.basic(&format!("{p}.branch0.0"), 1, x, false, Some(cat.slice(0, ch)));
    for br in 1..4 {
        let k = 2 * br + 1;
        let q = |j: usize| (format!("{p}.branch{br}.{j}.conv.weight"), format!("{p}.branch{br}.{j}.bn"));
        let (w, n) = q(0);
        let t = b.conv_bn(&w, &n, (1, 1), 1, (0, 0), 1, x, false, None);
        let (w, n) = q(1);
        let t = b.conv_bn(&w, &n, (1, k), 1, (0, k / 2), 1, t, false, None);
        let (w, n) = q(2);
        let t = b.conv_bn(&w, &n, (k, 1), 1, (k / 2, 0), 1, t, false, None);
        let (w, n) = q(3);
        b.conv_bn(&w, &n, (3, 3), 1, (k, k), k, t, false, Some(cat.slice(br * ch, ch)));
    }
    let xc = b.basic(&format!("{p}.conv_cat"), 3, cat, false, None);
    let xr = b.basic(&format!("{p}.conv_res"), 1, x, false, None);
    b.add(&format!("{p}.out"), xc, xr, true)
}

/// The partial decoder (`aggregation`): x1 = rfb4 (H/32), x2 = rfb3 (H/16), x3 = rfb2 (H/8) → ra5_feat.
fn build_decoder(b: &mut Builder, x1: View, x2: View, x3: View) -> View {
    let ch = x1.c;
    let mul = |b: &mut Builder, a: View, c: View, y: Option<View>| {
        let y = y.unwrap_or_else(|| {
            let div = b.div(a);
            b.buf("ParDec.mul", a.c, div)
        });
        b.nodes.push(Node::Mul { a, b: c, y });
        y
    };
    let u1 = b.upsample2(x1, "ParDec.up(x1)");
    let uu1 = b.upsample2(u1, "ParDec.up(up(x1))");
    let u2 = b.upsample2(x2, "ParDec.up(x2)");
    let cat2 = b.buf("ParDec.cat2", 2 * ch, 16);
    let cat3 = b.buf("ParDec.cat3", 3 * ch, 8);
    // x2_1 = conv_upsample1(up(x1)) * x2
    let c1 = b.basic("ParDec.conv_upsample1", 3, u1, false, None);
    mul(b, c1, x2, Some(cat2.slice(0, ch)));
    // x3_1 = conv_upsample2(up(up(x1))) * conv_upsample3(up(x2)) * x3, evaluated left to right
    let c2 = b.basic("ParDec.conv_upsample2", 3, uu1, false, None);
    let c3 = b.basic("ParDec.conv_upsample3", 3, u2, false, None);
    let t = mul(b, c2, c3, None);
    mul(b, t, x3, Some(cat3.slice(0, ch)));
    b.basic("ParDec.conv_upsample4", 3, u1, false, Some(cat2.slice(ch, ch)));
    let x2_2 = b.basic("ParDec.conv_concat2", 3, cat2, false, None);
    let u22 = b.upsample2(x2_2, "ParDec.up(x2_2)");
    b.basic("ParDec.conv_upsample5", 3, u22, false, Some(cat3.slice(ch, 2 * ch)));
    let x3_2 = b.basic("ParDec.conv_concat3", 3, cat3, false, None);
    let x = b.basic("ParDec.conv4", 3, x3_2, false, None);
    b.conv("ParDec.conv5.weight", Some("ParDec.conv5.bias"), (1, 1), 1, (0, 0), 1, x, None)
}

/// Edge branch, global map and the three reverse-attention branches. Returns the output buffers.
fn build_heads(b: &mut Builder, f: [View; 4], ra5: View) -> [BufId; 5] {
    let e = b.basic("edge_conv1", 1, f[0], false, None);
    let e = b.basic("edge_conv2", 3, e, false, None);
    let edge_guidance = b.basic("edge_conv3", 3, e, false, None);
    let e = b.basic("edge_conv4", 3, edge_guidance, false, None);
    let lateral_edge = b.resize(e, 4.0, "lateral_edge", None);
    let lateral_map_5 = b.resize(ra5, 8.0, "lateral_map_5", None);
    let crop4 = b.resize(ra5, 0.25, "crop_4", None);
    let x = ra_branch(b, "ra4", 5, f[3], crop4, edge_guidance, 1.0 / 8.0);
    let lateral_map_4 = b.resize(x, 32.0, "lateral_map_4", None);
    let crop3 = b.resize(x, 2.0, "crop_3", None);
    let x = ra_branch(b, "ra3", 4, f[2], crop3, edge_guidance, 1.0 / 4.0);
    let lateral_map_3 = b.resize(x, 16.0, "lateral_map_3", None);
    let crop2 = b.resize(x, 2.0, "crop_2", None);
    let x = ra_branch(b, "ra2", 4, f[1], crop2, edge_guidance, 1.0 / 2.0);
    let lateral_map_2 = b.resize(x, 8.0, "lateral_map_2", None);
    [lateral_map_5.buf, lateral_map_4.buf, lateral_map_3.buf, lateral_map_2.buf, lateral_edge.buf]
}

/// x = (1 − σ(crop))·feat → conv1, concatenated with the resized edge guidance → convs 2..n−1 with
/// ReLU → conv n → + crop. Branch 4 uses 5×5 convs and a 1×1 last conv, branches 3 and 2 3×3.
fn ra_branch(b: &mut Builder, p: &str, n: usize, feat: View, crop: View, edge: View, edge_scale: f64) -> View {
    let div = b.div(feat);
    let att = b.buf(&format!("{p}.attended"), feat.c, div);
    b.nodes.push(Node::ReverseAttention { map: crop, x: feat, y: att });
    let width = b.sd.tensors[&format!("{p}_conv1.conv.weight")].shape[0];
    let cat = b.buf(&format!("{p}.cat"), width + edge.c, div);
    b.basic(&format!("{p}_conv1"), 1, att, false, Some(cat.slice(0, width)));
    b.resize(edge, edge_scale, "edge", Some(cat.slice(width, edge.c)));
    let k = if p == "ra4" { 5 } else { 3 };
    let mut x = cat;
    for i in 2..n {
        x = b.basic(&format!("{p}_conv{i}"), k, x, true, None);
    }
    let last_k = if p == "ra4" { 1 } else { 3 };
    let f = b.basic(&format!("{p}_conv{n}"), last_k, x, false, None);
    b.add(&format!("{p}.out"), f, crop, false)
}
