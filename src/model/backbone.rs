//! Res2Net-50 v1b (26w×4s) backbone: deep stem, four stages of Bottle2neck blocks.

use super::{Builder, Config, Geom};
use crate::graph::{Node, View};

pub(crate) struct Features {
    /// layer1 output, H/4
    pub x1: View,
    /// layer2 output, H/8
    pub x2: View,
    /// layer3 output, H/16
    pub x3: View,
    /// layer4 output, H/32
    pub x4: View,
    pub config: Config,
}

pub(crate) fn build(b: &mut Builder, input: View, blocks: [usize; 4], nums: usize, downsample: [bool; 4]) -> Features {
    // Stem: conv3×3/2 BN ReLU, conv3×3 BN ReLU, conv3×3 (+ resnet.bn1) ReLU, max-pool 3/2/1.
    let c0 = b.conv("resnet.conv1.0.weight", None, Some("resnet.conv1.1"), 3, Geom::strided(3, 2));
    let s0 = c0.cout;
    let t = b.conv_node(c0, input, true, "stem0");
    let c1 = b.conv("resnet.conv1.3.weight", None, Some("resnet.conv1.4"), s0, Geom::k(3));
    let t = b.conv_node(c1, t, true, "stem1");
    let c2 = b.conv("resnet.conv1.6.weight", None, Some("resnet.bn1"), t.c, Geom::k(3));
    let s1 = c2.cout;
    let t = b.conv_node(c2, t, true, "stem2");
    let mut x = b.g.add_buf("stem_pool", s1, 4);
    b.g.push(Node::MaxPool { x: t, y: x, k: 3, s: 2, p: 1 });

    let mut outs = [input; 4];
    let mut widths = [0; 4];
    let mut stage_out = [0; 4];
    for s in 0..4 {
        let stride = if s == 0 { 1 } else { 2 };
        for blk in 0..blocks[s] {
            let p = format!("resnet.layer{}.{}", s + 1, blk);
            let stage = blk == 0;
            x = bottle2neck(b, &p, x, if stage { stride } else { 1 }, stage, nums, stage && downsample[s]);
        }
        widths[s] = b.cout_of(&format!("resnet.layer{}.0.convs.0.weight", s + 1));
        stage_out[s] = x.c;
        outs[s] = x;
    }
    Features {
        x1: outs[0],
        x2: outs[1],
        x3: outs[2],
        x4: outs[3],
        config: Config {
            blocks,
            scale: nums + 1,
            widths,
            stage_out,
            stem: [s0, s1],
            rfb_channel: 0,
            ra_widths: [0; 3],
            edge_channel: 0,
        },
    }
}

/// One Bottle2neck. Split and concatenation are views into buffers, so no copy is made.
/// Normal block: one buffer `[spx_0 … spx_n | y_1 … y_n]` (n = nums): conv1 writes all s = n + 1 splits
/// in one GEMM, conv i reads spx_i (+ y_i for i > 0) and writes y_{i+1}, and conv3 reads the contiguous
/// `[spx_n, y_1 … y_n]` with its input channels rotated to that order (the public order is
/// `[y_1 … y_n, spx_n]`). Stage block: conv1 writes `split`; `cat` (at the strided size) receives the
/// strided 3×3 outputs and the 3×3 average pool of the last split.
fn bottle2neck(b: &mut Builder, p: &str, x: View, stride: usize, stage: bool, nums: usize, has_down: bool) -> View {
    let width = b.cout_of(&format!("{p}.convs.0.weight"));
    let scale = nums + 1;
    let conv1 = b.conv(&format!("{p}.conv1.weight"), None, Some(&format!("{p}.bn1")), x.c, Geom::k(1));
    if conv1.cout != width * scale {
        b.errors.push(format!("{p}.conv1.weight has {} outputs, expected {} splits of {width}", conv1.cout, scale));
        return x;
    }
    let div_in = b.g.div_of(x);
    let head = nums * width;
    // (where spx_i is, where conv i's output goes, what conv3 reads)
    let (spx, ys, conv3_in) = if stage {
        let split = b.g.add_buf(format!("{p}.split"), width * scale, div_in);
        let cat = b.g.add_buf(format!("{p}.cat"), width * scale, div_in * stride);
        b.conv_into(conv1, x, split, None, true, None);
        (split, cat, cat)
    } else {
        let all = b.g.add_buf(format!("{p}.splits"), width * (scale + nums), div_in);
        b.conv_into(conv1, x, all.slice(0, width * scale), None, true, None);
        (all, all.slice(width * scale, head), all.slice(head, width * scale))
    };
    for i in 0..nums {
        let c = b.conv(
            &format!("{p}.convs.{i}.weight"),
            None,
            Some(&format!("{p}.bns.{i}")),
            width,
            Geom::strided(3, stride),
        );
        if c.cout != width {
            b.errors.push(format!("{p}.convs.{i}.weight has {} outputs, expected {width}", c.cout));
            continue;
        }
        let conv = b.g.add_conv(c);
        let x_add = if i > 0 && !stage { Some(ys.slice((i - 1) * width, width)) } else { None };
        b.g.push(Node::Conv {
            conv,
            x: spx.slice(i * width, width),
            x_add,
            y: ys.slice(i * width, width),
            residual: None,
            relu: true,
            mul: None,
        });
    }
    if stage {
        b.g.push(Node::AvgPool {
            x: spx.slice(head, width),
            y: ys.slice(head, width),
            k: 3,
            s: stride,
            p: 1,
            ceil: false,
            count_include_pad: true,
        });
    }
    let conv3 = b.conv(&format!("{p}.conv3.weight"), None, Some(&format!("{p}.bn3")), width * scale, Geom::k(1));
    let conv3 = if stage { conv3 } else { rotate_inputs(conv3, head) };
    let cout = conv3.cout;
    let residual = if has_down {
        let src = if stride != 1 {
            let pooled = b.g.add_buf(format!("{p}.down_pool"), x.c, div_in * stride);
            b.g.push(Node::AvgPool { x, y: pooled, k: stride, s: stride, p: 0, ceil: true, count_include_pad: false });
            pooled
        } else {
            x
        };
        let d = b.conv(&format!("{p}.downsample.1.weight"), None, Some(&format!("{p}.downsample.2")), x.c, Geom::k(1));
        b.conv_node(d, src, false, &format!("{p}.down"))
    } else {
        if x.c != cout || stride != 1 {
            b.errors.push(format!("{p} has no downsample but its input has {} channels and output {cout}", x.c));
        }
        x
    };
    let out = b.g.add_buf(format!("{p}.out"), cout, div_in * stride);
    b.conv_into(conv3, conv3_in, out, Some(residual), true, None);
    out
}

/// Reorders a conv's input channels so that channels `at..cin` come first, then `0..at`.
fn rotate_inputs(mut c: crate::graph::ConvParam, at: usize) -> crate::graph::ConvParam {
    let taps = c.kh * c.kw;
    let per = c.cin * taps;
    for o in 0..c.cout {
        c.weight[o * per..(o + 1) * per].rotate_left(at * taps);
    }
    c
}

