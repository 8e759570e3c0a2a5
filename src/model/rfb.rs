//! RFB_modified: four branches (1×1; 1×k, k×1, dilated 3×3 for k = 3, 5, 7) concatenated, a 3×3
//! fusion, and ReLU(conv_cat + conv_res(x)). Every conv is BasicConv2d (conv + BN, no ReLU inside).
//!
//! The five 1×1 convs that read x (the first conv of each branch and conv_res) run as one GEMM with
//! their weights stacked, writing into one buffer laid out as
//! `[b1.0 | b2.0 | b3.0 | res | b0 | b1 | b2 | b3]` (one slice per branch width): the stacked conv writes
//! the first five slices, each branch's last conv writes its slice of the last four, and conv_cat reads
//! those four, `[b0, b1, b2, b3]` in the public concatenation order, adding `res` in its epilogue.

use super::{Builder, Geom};
use crate::graph::{ConvParam, View};

pub(crate) fn build(b: &mut Builder, p: &str, x: View, div: usize) -> View {
    debug_assert_eq!(b.g.div_of(x), div);
    let b0 = b.basic(&format!("{p}.branch0.0"), x.c, Geom::k(1));
    let ch = b0.cout;
    let heads: Vec<ConvParam> = (1..4).map(|br| b.basic(&format!("{p}.branch{br}.0"), x.c, Geom::k(1))).collect();
    let res = b.basic(&format!("{p}.conv_res"), x.c, Geom::k(1));
    let all = b.g.add_buf(format!("{p}.branches"), 8 * ch, div);
    let stacked: Vec<ConvParam> = heads.into_iter().chain([res, b0]).collect();
    if let Some(c) = stacked.iter().find(|c| c.cout != ch) {
        b.errors.push(format!("{} has {} outputs, expected {ch} like {p}.branch0.0", c.name, c.cout));
        return x;
    }
    b.conv_into(stack_outputs(stacked), x, all.slice(0, 5 * ch), None, false, None);
    for br in 1..4 {
        let k = 2 * br + 1;
        let t = all.slice((br - 1) * ch, ch);
        let c = b.basic(&format!("{p}.branch{br}.1"), t.c, Geom::rect(1, k));
        let t = b.conv_node(c, t, false, &format!("{p}.branch{br}.1"));
        let c = b.basic(&format!("{p}.branch{br}.2"), t.c, Geom::rect(k, 1));
        let t = b.conv_node(c, t, false, &format!("{p}.branch{br}.2"));
        let c = b.basic(&format!("{p}.branch{br}.3"), t.c, Geom::dilated(k));
        b.conv_into(c, t, all.slice((4 + br) * ch, ch), None, false, None);
    }
    let c = b.basic(&format!("{p}.conv_cat"), 4 * ch, Geom::k(3));
    let out = b.g.add_buf(format!("{p}.out"), ch, div);
    b.conv_into(c, all.slice(4 * ch, 4 * ch), out, Some(all.slice(3 * ch, ch)), true, None);
    out
}

/// One conv computing all of `convs` (same input and geometry), their outputs stacked in order.
fn stack_outputs(convs: Vec<ConvParam>) -> ConvParam {
    let mut it = convs.into_iter();
    let mut first = it.next().expect("at least one conv to stack");
    for c in it {
        first.name = format!("{}+{}", first.name, c.name);
        first.cout += c.cout;
        first.weight.extend(c.weight);
        first.bias.extend(c.bias);
    }
    first
}
