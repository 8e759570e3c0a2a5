//! The parallel partial decoder (`aggregation` in the public code): fuses the three RFB outputs into
//! the global map ra5_feat at H/8. Its upsampling is bilinear ×2 with align_corners=True.

use super::{Builder, Geom};
use crate::graph::{Node, ResizeMode, View};

/// x1 = rfb4 (H/32), x2 = rfb3 (H/16), x3 = rfb2 (H/8). Returns ra5_feat (1 channel, H/8).
pub(crate) fn build(b: &mut Builder, x1: View, x2: View, x3: View) -> View {
    let ch = x1.c;
    let up = |b: &mut Builder, v: View, name: &str| {
        let div = b.g.div_of(v) / 2;
        let y = b.g.add_buf(name, v.c, div);
        b.g.push(Node::Resize { x: v, y, mode: ResizeMode::AlignCorners });
        y
    };
    let u1 = up(b, x1, "ParDec.up(x1)");
    let uu1 = up(b, u1, "ParDec.up(up(x1))");
    let u2 = up(b, x2, "ParDec.up(x2)");

    let cat2 = b.g.add_buf("ParDec.cat2", 2 * ch, 16);
    let cat3 = b.g.add_buf("ParDec.cat3", 3 * ch, 8);
    // x2_1 = conv_upsample1(up(x1)) * x2
    let c = b.basic("ParDec.conv_upsample1", ch, Geom::k(3));
    b.conv_into(c, u1, cat2.slice(0, ch), None, false, Some(x2));
    // x3_1 = conv_upsample2(up(up(x1))) * conv_upsample3(up(x2)) * x3
    let c = b.basic("ParDec.conv_upsample3", ch, Geom::k(3));
    let t = b.g.add_buf("ParDec.cu3*x3", ch, 8);
    b.conv_into(c, u2, t, None, false, Some(x3));
    let c = b.basic("ParDec.conv_upsample2", ch, Geom::k(3));
    b.conv_into(c, uu1, cat3.slice(0, ch), None, false, Some(t));
    // x2_2 = conv_concat2(cat(x2_1, conv_upsample4(up(x1))))
    let c = b.basic("ParDec.conv_upsample4", ch, Geom::k(3));
    b.conv_into(c, u1, cat2.slice(ch, ch), None, false, None);
    let c = b.basic("ParDec.conv_concat2", 2 * ch, Geom::k(3));
    let x2_2 = b.conv_node(c, cat2, false, "ParDec.x2_2");
    // x3_2 = conv_concat3(cat(x3_1, conv_upsample5(up(x2_2))))
    let u22 = up(b, x2_2, "ParDec.up(x2_2)");
    let c = b.basic("ParDec.conv_upsample5", 2 * ch, Geom::k(3));
    b.conv_into(c, u22, cat3.slice(ch, 2 * ch), None, false, None);
    let c = b.basic("ParDec.conv_concat3", 3 * ch, Geom::k(3));
    let x3_2 = b.conv_node(c, cat3, false, "ParDec.x3_2");
    let c = b.basic("ParDec.conv4", 3 * ch, Geom::k(3));
    let x = b.conv_node(c, x3_2, false, "ParDec.conv4");
    let c = b.conv("ParDec.conv5.weight", Some("ParDec.conv5.bias"), None, 3 * ch, Geom::k(1));
    b.conv_node(c, x, false, "ra5_feat")
}
