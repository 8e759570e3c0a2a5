//! The explicit edge-attention branch and the three reverse-attention branches, coarse to fine,
//! with the five side outputs. Follows the public code's behaviour: the edge convs are BasicConv2d
//! without activation; resizes other than the decoder's use align_corners=False with the scale factor.

use super::backbone::Features;
use super::{Builder, Geom};
use crate::graph::{Node, ResizeMode, View};

pub(crate) struct Heads {
    pub ra_widths: [usize; 3],
    pub edge_channel: usize,
}

fn resize(b: &mut Builder, x: View, scale: f64, name: &str) -> View {
    let div_in = b.g.div_of(x);
    let div = if scale >= 1.0 { div_in / scale as usize } else { div_in * (1.0 / scale).round() as usize };
    let y = b.g.add_buf(name, x.c, div);
    b.g.push(Node::Resize { x, y, mode: ResizeMode::ScaleFactor(scale) });
    y
}

pub(crate) fn build(b: &mut Builder, f: &Features, ra5: View) -> Heads {
    let mut outputs = Vec::new();

    // ---- edge guidance (H/4) ----
    let c = b.basic("edge_conv1", f.x1.c, Geom::k(1));
    let e = b.conv_node(c, f.x1, false, "edge_conv1");
    let c = b.basic("edge_conv2", e.c, Geom::k(3));
    let e = b.conv_node(c, e, false, "edge_conv2");
    let c = b.basic("edge_conv3", e.c, Geom::k(3));
    let edge_guidance = b.conv_node(c, e, false, "edge_guidance");
    let c = b.basic("edge_conv4", edge_guidance.c, Geom::k(3));
    let e = b.conv_node(c, edge_guidance, false, "edge_conv4");
    let lateral_edge = resize(b, e, 4.0, "lateral_edge");

    // ---- global guidance ----
    let lateral_map_5 = resize(b, ra5, 8.0, "lateral_map_5");

    // ---- reverse attention, branch 4 (H/32), 3 (H/16), 2 (H/8) ----
    let crop4 = resize(b, ra5, 0.25, "crop_4");
    let (x, w4) = branch(b, "ra4", 5, f.x4, crop4, edge_guidance, 1.0 / 8.0);
    let lateral_map_4 = resize(b, x, 32.0, "lateral_map_4");
    let crop3 = resize(b, x, 2.0, "crop_3");
    let (x, w3) = branch(b, "ra3", 4, f.x3, crop3, edge_guidance, 1.0 / 4.0);
    let lateral_map_3 = resize(b, x, 16.0, "lateral_map_3");
    let crop2 = resize(b, x, 2.0, "crop_2");
    let (x, w2) = branch(b, "ra2", 4, f.x2, crop2, edge_guidance, 1.0 / 2.0);
    let lateral_map_2 = resize(b, x, 8.0, "lateral_map_2");

    for (n, v) in [
        ("lateral_map_5", lateral_map_5),
        ("lateral_map_4", lateral_map_4),
        ("lateral_map_3", lateral_map_3),
        ("lateral_map_2", lateral_map_2),
        ("lateral_edge", lateral_edge),
    ] {
        outputs.push((n.to_string(), v.buf));
    }
    b.g.outputs = outputs;
    Heads { ra_widths: [w4, w3, w2], edge_channel: edge_guidance.c }
}

/// One reverse-attention branch: x = (1 − σ(crop)) · feat, conv1, concat with the resized edge
/// guidance, convs 2..n−1 each followed by ReLU, last conv plus crop (the residual refinement).
/// Branch 4 uses 5×5 convs and a 1×1 last conv; branches 3 and 2 use 3×3 throughout.
fn branch(b: &mut Builder, p: &str, n: usize, feat: View, crop: View, edge: View, edge_scale: f64) -> (View, usize) {
    let div = b.g.div_of(feat);
    let att = b.g.add_buf(format!("{p}.attended"), feat.c, div);
    b.g.push(Node::ReverseAttention { map: crop, x: feat, y: att });
    let c1 = b.basic(&format!("{p}_conv1"), feat.c, Geom::k(1));
    let width = c1.cout;
    let cat = b.g.add_buf(format!("{p}.cat"), width + edge.c, div);
    b.conv_into(c1, att, cat.slice(0, width), None, false, None);
    let ediv = b.g.div_of(edge);
    let ey = cat.slice(width, edge.c);
    debug_assert_eq!(ediv as f64 / edge_scale, div as f64);
    b.g.push(Node::Resize { x: edge, y: ey, mode: ResizeMode::ScaleFactor(edge_scale) });
    let k = if p == "ra4" { 5 } else { 3 };
    let mut x = cat;
    for i in 2..n {
        let c = b.basic(&format!("{p}_conv{i}"), x.c, Geom::k(k));
        x = b.conv_node(c, x, true, &format!("{p}_conv{i}"));
    }
    let last_k = if p == "ra4" { 1 } else { 3 };
    let c = b.basic(&format!("{p}_conv{n}"), x.c, Geom::k(last_k));
    let out = b.g.add_buf(format!("{p}.out"), 1, div);
    b.conv_into(c, x, out, Some(crop), false, None);
    (out, width)
}
