//! The model as data: a list of nodes over channel slices of planned buffers.
//!
//! The model builder (`model/`) turns a state_dict into a `Graph`; an executor (`cpu/`, later `cuda/`)
//! instantiates it for one (N, H, W) and runs the nodes in order. Every activation buffer is
//! N×C×H/div×W/div (NCHW, f32); a `View` is a contiguous channel range of such a buffer, so a
//! concatenation is just several nodes writing into slices of one buffer, and a split is several views.

pub type BufId = usize;
pub type ConvId = usize;

/// An activation buffer: `c` channels at spatial size (H/div, W/div) of the network input.
#[derive(Clone, Debug)]
pub struct BufDesc {
    pub name: String,
    pub c: usize,
    pub div: usize,
}

/// Channels `c_off .. c_off + c` of buffer `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub buf: BufId,
    pub c_off: usize,
    pub c: usize,
}

/// A convolution with BatchNorm folded in: y = W * x + b. Weight layout OIHW.
#[derive(Clone, Debug)]
pub struct ConvParam {
    /// The state_dict prefix it came from (for messages and debugging).
    pub name: String,
    pub cout: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub dil: usize,
    /// cout × cin × kh × kw
    pub weight: Vec<f32>,
    /// cout
    pub bias: Vec<f32>,
}

impl ConvParam {
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let eh = self.dil * (self.kh - 1) + 1;
        let ew = self.dil * (self.kw - 1) + 1;
        ((h + 2 * self.pad_h - eh) / self.stride + 1, (w + 2 * self.pad_w - ew) / self.stride + 1)
    }
    /// Multiply-accumulates for one image producing an oh×ow output.
    pub fn macs(&self, oh: usize, ow: usize) -> u64 {
        (self.cout * self.cin * self.kh * self.kw * oh * ow) as u64
    }
}

/// How a bilinear resize maps output to input coordinates (PyTorch `upsample_bilinear2d`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeMode {
    /// align_corners=True: src = dst · (in−1)/(out−1).
    AlignCorners,
    /// align_corners=False with `scale_factor` given: src = (dst+0.5)/scale − 0.5, clamped at 0.
    /// The output size is floor(in · scale).
    ScaleFactor(f64),
}

#[derive(Clone, Debug)]
pub enum Node {
    /// y = epilogue(conv(x [+ x_add])) where epilogue is: + bias, + residual, ReLU, × mul (in that order).
    /// `x_add` is summed into the input before the convolution (Res2Net's `sp = sp + spx[i]`).
    Conv { conv: ConvId, x: View, x_add: Option<View>, y: View, residual: Option<View>, relu: bool, mul: Option<View> },
    /// MaxPool2d(k, s, p), floor mode.
    MaxPool { x: View, y: View, k: usize, s: usize, p: usize },
    /// AvgPool2d(k, s, p, ceil_mode, count_include_pad).
    AvgPool { x: View, y: View, k: usize, s: usize, p: usize, ceil: bool, count_include_pad: bool },
    /// Bilinear resize from x's spatial size to y's.
    Resize { x: View, y: View, mode: ResizeMode },
    /// y = (1 − sigmoid(map)) · x, `map` one channel broadcast over x's channels.
    ReverseAttention { map: View, x: View, y: View },
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub bufs: Vec<BufDesc>,
    pub convs: Vec<ConvParam>,
    pub nodes: Vec<Node>,
    /// The network input, 3 channels at div 1.
    pub input: BufId,
    /// Named outputs in the public order: lateral_map_5, _4, _3, _2, lateral_edge.
    pub outputs: Vec<(String, BufId)>,
}

impl Graph {
    pub fn add_buf(&mut self, name: impl Into<String>, c: usize, div: usize) -> View {
        self.bufs.push(BufDesc { name: name.into(), c, div });
        View { buf: self.bufs.len() - 1, c_off: 0, c }
    }
    pub fn add_conv(&mut self, p: ConvParam) -> ConvId {
        self.convs.push(p);
        self.convs.len() - 1
    }
    pub fn push(&mut self, n: Node) {
        self.nodes.push(n);
    }
    pub fn div_of(&self, v: View) -> usize {
        self.bufs[v.buf].div
    }
    /// Total parameters after BN folding.
    pub fn param_count(&self) -> usize {
        self.convs.iter().map(|c| c.weight.len() + c.bias.len()).sum()
    }
    /// Multiply-accumulates of one forward for one image at h×w.
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        self.nodes
            .iter()
            .map(|n| match n {
                Node::Conv { conv, y, .. } => {
                    let d = self.bufs[y.buf].div;
                    self.convs[*conv].macs(h / d, w / d)
                }
                _ => 0,
            })
            .sum()
    }
}

impl View {
    /// Channels `off .. off + c` of this view.
    pub fn slice(&self, off: usize, c: usize) -> View {
        assert!(off + c <= self.c, "view slice out of range");
        View { buf: self.buf, c_off: self.c_off + off, c }
    }
}
