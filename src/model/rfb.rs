//! RFB_modified: four branches (1×1; 1×k, k×1, dilated 3×3 for k = 3, 5, 7) concatenated, a 3×3
//! fusion, and ReLU(conv_cat + conv_res(x)). Every conv is BasicConv2d (conv + BN, no ReLU inside).

use super::{Builder, Geom};
use crate::graph::View;

pub(crate) fn build(b: &mut Builder, p: &str, x: View, div: usize) -> View {
    debug_assert_eq!(b.g.div_of(x), div);
    let b0 = b.basic(&format!("{p}.branch0.0"), x.c, Geom::k(1));
    let ch = b0.cout;
    let cat = b.g.add_buf(format!("{p}.cat"), 4 * ch, div);
    b.conv_into(b0, x, cat.slice(0, ch), None, false, None);
    for br in 1..4 {
        let k = 2 * br + 1;
        let c = b.basic(&format!("{p}.branch{br}.0"), x.c, Geom::k(1));
        let t = b.conv_node(c, x, false, &format!("{p}.branch{br}.0"));
        let c = b.basic(&format!("{p}.branch{br}.1"), t.c, Geom::rect(1, k));
        let t = b.conv_node(c, t, false, &format!("{p}.branch{br}.1"));
        let c = b.basic(&format!("{p}.branch{br}.2"), t.c, Geom::rect(k, 1));
        let t = b.conv_node(c, t, false, &format!("{p}.branch{br}.2"));
        let c = b.basic(&format!("{p}.branch{br}.3"), t.c, Geom::dilated(k));
        b.conv_into(c, t, cat.slice(br * ch, ch), None, false, None);
    }
    let c = b.basic(&format!("{p}.conv_cat"), 4 * ch, Geom::k(3));
    let xc = b.conv_node(c, cat, false, &format!("{p}.conv_cat"));
    let c = b.basic(&format!("{p}.conv_res"), x.c, Geom::k(1));
    let out = b.g.add_buf(format!("{p}.out"), ch, div);
    b.conv_into(c, x, out, Some(xc), true, None);
    out
}
