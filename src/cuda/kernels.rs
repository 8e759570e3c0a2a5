//! The kernels' interface on the Rust side: one `#[repr(C)]` parameter struct per kernel (mirrored
//! field for field in kernels/*.cu, sizes checked by `tests/cuda_kernels.rs` against the C side), the
//! kernel and module names, the embedded PTX/cubin images, and the launch configuration of each op.
//!
//! A `Launch` is backend-neutral: addresses are plain `u64`, device pointers for the CUDA engine and
//! host pointers for the emulator, so both run exactly the same launch list.

use crate::cpu::tensor::Shape;
use crate::error::{Error, Result};
use crate::graph::{ConvParam, ResizeMode};

/// PTX and cubin images of one kernel source file, embedded at build time (build.rs).
pub struct ModuleImages {
    pub name: &'static str,
    pub ptx_sm80: Option<&'static [u8]>,
    pub ptx_sm90: Option<&'static [u8]>,
    pub cubin_sm90: Option<&'static [u8]>,
}

// Defines `EMBEDDED: Option<&[ModuleImages]>`, None when NVRTC was absent at build time.
include!(concat!(env!("OUT_DIR"), "/embedded_kernels.rs"));

/// Whether this build carries compiled kernels.
pub fn kernels_built() -> bool {
    EMBEDDED.is_some()
}

/// One kernel source file = one CUDA module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    Conv,
    Pool,
    Resize,
}

impl Module {
    pub const ALL: [Module; 3] = [Module::Conv, Module::Pool, Module::Resize];
    /// The file stem under kernels/ (and the `name` of its `ModuleImages`).
    pub fn name(self) -> &'static str {
        match self {
            Module::Conv => "conv",
            Module::Pool => "pool",
            Module::Resize => "resize",
        }
    }
    pub fn images(self) -> Option<&'static ModuleImages> {
        EMBEDDED.and_then(|all| all.iter().find(|m| m.name == self.name()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// 64 output channels × 64 pixels per block.
    Conv2d,
    Conv2dPointwise,
    /// 32 output channels × 128 pixels per block, for cout ≤ 32.
    Conv2dM32,
    Conv2dPointwiseM32,
    /// Input read through an align_corners bilinear resize of a smaller source (`conv_resized`).
    Conv2dResized,
    Conv2dResizedM32,
    MaxPool2d,
    AvgPool2d,
    ResizeBilinear,
    ReverseAttention,
}

impl Kernel {
    pub const ALL: [Kernel; 10] = [
        Kernel::Conv2d,
        Kernel::Conv2dPointwise,
        Kernel::Conv2dM32,
        Kernel::Conv2dPointwiseM32,
        Kernel::Conv2dResized,
        Kernel::Conv2dResizedM32,
        Kernel::MaxPool2d,
        Kernel::AvgPool2d,
        Kernel::ResizeBilinear,
        Kernel::ReverseAttention,
    ];
    /// The `extern "C"` symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Kernel::Conv2d => "conv2d_f32",
            Kernel::Conv2dPointwise => "conv2d_pointwise_f32",
            Kernel::Conv2dM32 => "conv2d_m32_f32",
            Kernel::Conv2dPointwiseM32 => "conv2d_pointwise_m32_f32",
            Kernel::Conv2dResized => "conv2d_resized_f32",
            Kernel::Conv2dResizedM32 => "conv2d_resized_m32_f32",
            Kernel::MaxPool2d => "max_pool2d_f32",
            Kernel::AvgPool2d => "avg_pool2d_f32",
            Kernel::ResizeBilinear => "resize_bilinear_f32",
            Kernel::ReverseAttention => "reverse_attention_f32",
        }
    }
    pub fn module(self) -> Module {
        match self {
            Kernel::Conv2d
            | Kernel::Conv2dPointwise
            | Kernel::Conv2dM32
            | Kernel::Conv2dPointwiseM32
            | Kernel::Conv2dResized
            | Kernel::Conv2dResizedM32 => Module::Conv,
            Kernel::MaxPool2d | Kernel::AvgPool2d => Module::Pool,
            Kernel::ResizeBilinear | Kernel::ReverseAttention => Module::Resize,
        }
    }
}

/// kernels/conv.cu `ConvParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvParams {
    /// n × cin × h × w, image stride x_bs
    pub x: u64,
    /// like x (image stride xa_bs), summed into x; or 0
    pub x_add: u64,
    /// K × cout (transposed OIHW), K = cin·kh·kw
    pub weight: u64,
    /// cout
    pub bias: u64,
    /// n × cout × oh × ow, image stride r_bs; or 0
    pub residual: u64,
    /// n × cout × oh × ow, image stride m_bs; or 0
    pub mul: u64,
    /// n × cout × oh × ow, image stride y_bs
    pub y: u64,
    /// resized kernels: n × cin × src_h × src_w, image stride src_bs (x unused); else 0
    pub src: u64,
    pub n: i32,
    pub cin: i32,
    pub h: i32,
    pub w: i32,
    pub cout: i32,
    pub oh: i32,
    pub ow: i32,
    pub kh: i32,
    pub kw: i32,
    pub stride: i32,
    pub pad_h: i32,
    pub pad_w: i32,
    pub dil: i32,
    pub relu: i32,
    pub x_bs: i32,
    pub xa_bs: i32,
    pub r_bs: i32,
    pub m_bs: i32,
    pub y_bs: i32,
    pub src_h: i32,
    pub src_w: i32,
    pub src_bs: i32,
    /// align_corners src/dst ratios (`resize_scale`)
    pub src_scale_h: f32,
    pub src_scale_w: f32,
}

/// kernels/pool.cu `PoolParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolParams {
    /// n × c × h × w, image stride x_bs
    pub x: u64,
    /// n × c × oh × ow, image stride y_bs
    pub y: u64,
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub k: i32,
    pub s: i32,
    pub p: i32,
    pub count_include_pad: i32,
    pub x_bs: i32,
    pub y_bs: i32,
}

/// kernels/resize.cu `ResizeParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResizeParams {
    /// n × c × h × w, image stride x_bs
    pub x: u64,
    /// n × c × oh × ow, image stride y_bs
    pub y: u64,
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub scale_h: f32,
    pub scale_w: f32,
    pub align_corners: i32,
    pub x_bs: i32,
    pub y_bs: i32,
    pub pad_: i32,
}

/// kernels/resize.cu `AttentionParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionParams {
    /// n × 1 × mh × mw, image stride map_bs
    pub map: u64,
    /// n × c × h × w, image stride x_bs
    pub x: u64,
    /// n × c × h × w, image stride y_bs
    pub y: u64,
    /// n × 1 × h × w, image stride crop_bs: the resized map itself; or 0
    pub crop: u64,
    /// n × ec × eh × ew, image stride edge_bs: the edge guidance; or 0
    pub edge: u64,
    /// n × ec × h × w, image stride edge_y_bs: the resized edge guidance (a concat slice); or 0
    pub edge_y: u64,
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub mh: i32,
    pub mw: i32,
    pub scale_h: f32,
    pub scale_w: f32,
    pub align_corners: i32,
    /// 0: map is already h × w
    pub resize: i32,
    pub map_bs: i32,
    pub x_bs: i32,
    pub y_bs: i32,
    pub crop_bs: i32,
    pub ec: i32,
    pub eh: i32,
    pub ew: i32,
    pub edge_scale_h: f32,
    pub edge_scale_w: f32,
    pub edge_align_corners: i32,
    pub edge_bs: i32,
    pub edge_y_bs: i32,
    /// Blocks [0, attention_blocks) of the grid do the attention, the rest the edge resize.
    pub attention_blocks: i32,
    pub pad_: i32,
}

/// The C-side `sizeof` each struct must have (the static_asserts in kernels/*.cu).
pub const PARAM_SIZES: [(&str, usize, usize); 4] = [
    ("ConvParams", std::mem::size_of::<ConvParams>(), 8 * 8 + 24 * 4),
    ("PoolParams", std::mem::size_of::<PoolParams>(), 2 * 8 + 12 * 4),
    ("ResizeParams", std::mem::size_of::<ResizeParams>(), 2 * 8 + 12 * 4),
    ("AttentionParams", std::mem::size_of::<AttentionParams>(), 6 * 8 + 24 * 4),
];

#[derive(Clone, Copy, Debug)]
pub enum Params {
    Conv(ConvParams),
    Pool(PoolParams),
    Resize(ResizeParams),
    Attention(AttentionParams),
}

/// One kernel launch, ready for either backend.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub kernel: Kernel,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub params: Params,
}

/// A channel slice in memory: `addr` is the first float of (image 0, channel 0) of the slice.
#[derive(Clone, Copy, Debug)]
pub struct Slice {
    pub addr: u64,
    pub shape: Shape,
}

/// Conv block tiles (output channels, pixels), as instantiated in kernels/conv.cu.
const CONV_TILE_WIDE: (usize, usize) = (64, 64);
const CONV_TILE_NARROW: (usize, usize) = (32, 128);
const CONV_THREADS: u32 = 256;

/// The conv kernel for `p` and its block tile (output channels, pixels).
pub fn conv_kernel(p: &ConvParam) -> (Kernel, (usize, usize)) {
    match (is_pointwise(p), p.cout <= CONV_TILE_NARROW.0) {
        (false, false) => (Kernel::Conv2d, CONV_TILE_WIDE),
        (true, false) => (Kernel::Conv2dPointwise, CONV_TILE_WIDE),
        (false, true) => (Kernel::Conv2dM32, CONV_TILE_NARROW),
        (true, true) => (Kernel::Conv2dPointwiseM32, CONV_TILE_NARROW),
    }
}
/// The kernel of a conv whose input is read through a resize (`conv_resized`) and its block tile.
pub fn conv_resized_kernel(p: &ConvParam) -> (Kernel, (usize, usize)) {
    if p.cout <= CONV_TILE_NARROW.0 {
        (Kernel::Conv2dResizedM32, CONV_TILE_NARROW)
    } else {
        (Kernel::Conv2dResized, CONV_TILE_WIDE)
    }
}

/// Threads per block of the elementwise kernels (POOL_THREADS, RESIZE_THREADS).
const ELEMENTWISE_THREADS: u32 = 256;

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(format!("{what} = {v} exceeds the CUDA kernels' 32-bit index range")))
}

fn blocks(items: usize, per_block: usize) -> Result<u32> {
    u32::try_from(items.div_ceil(per_block).max(1)).map_err(|_| Error::invalid(format!("{items} elements: grid too large")))
}

fn addr_or_zero(s: Option<Slice>) -> u64 {
    s.map_or(0, |s| s.addr)
}

/// Whether the conv takes the pointwise kernel (no spatial gather).
pub fn is_pointwise(p: &ConvParam) -> bool {
    p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad_h == 0 && p.pad_w == 0
}

/// The weight as the conv kernel reads it: K × cout with K = (ci, ky, kx), from OIHW.
pub fn conv_weight_layout(p: &ConvParam) -> Vec<f32> {
    let k = p.cin * p.kh * p.kw;
    let mut t = vec![0.0f32; k * p.cout];
    for o in 0..p.cout {
        for (kk, &v) in p.weight[o * k..(o + 1) * k].iter().enumerate() {
            t[kk * p.cout + o] = v;
        }
    }
    t
}

/// A conv node. `weight` holds `conv_weight_layout(p)`, `bias` p.bias.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    p: &ConvParam,
    weight: u64,
    bias: u64,
    x: Slice,
    x_add: Option<Slice>,
    y: Slice,
    residual: Option<Slice>,
    relu: bool,
    mul: Option<Slice>,
) -> Result<Launch> {
    let (xs, ys) = (x.shape, y.shape);
    if xs.c != p.cin || ys.c != p.cout || p.out_size(xs.h, xs.w) != (ys.h, ys.w) || xs.n != ys.n {
        return Err(Error::invalid(format!("{}: input {xs:?} / output {ys:?} do not fit the conv", p.name)));
    }
    let params = ConvParams {
        x: x.addr,
        x_add: addr_or_zero(x_add),
        weight,
        bias,
        residual: addr_or_zero(residual),
        mul: addr_or_zero(mul),
        y: y.addr,
        n: int(xs.n, "batch")?,
        cin: int(p.cin, "cin")?,
        h: int(xs.h, "height")?,
        w: int(xs.w, "width")?,
        cout: int(p.cout, "cout")?,
        oh: int(ys.h, "height")?,
        ow: int(ys.w, "width")?,
        kh: p.kh as i32,
        kw: p.kw as i32,
        stride: p.stride as i32,
        pad_h: p.pad_h as i32,
        pad_w: p.pad_w as i32,
        dil: p.dil as i32,
        relu: relu as i32,
        x_bs: int(xs.batch_stride, "image stride")?,
        xa_bs: int(x_add.map_or(0, |a| a.shape.batch_stride), "image stride")?,
        r_bs: int(residual.map_or(0, |a| a.shape.batch_stride), "image stride")?,
        m_bs: int(mul.map_or(0, |a| a.shape.batch_stride), "image stride")?,
        y_bs: int(ys.batch_stride, "image stride")?,
        ..Default::default()
    };
    int(xs.n * xs.batch_stride, "input span")?;
    int(ys.n * ys.batch_stride, "output span")?;
    let (kernel, (bm, bn)) = conv_kernel(p);
    Ok(Launch {
        kernel,
        grid: [blocks(ys.n * ys.hw(), bn)?, blocks(p.cout, bm)?, 1],
        block: [CONV_THREADS, 1, 1],
        params: Params::Conv(params),
    })
}

/// A conv node whose input is the bilinear align_corners resize of `src` to `h` × `w` (`Node::Resize`
/// with `ResizeMode::AlignCorners`), sampled inside the conv's input gather instead of read from a
/// materialised upsampled buffer. Otherwise as `conv` (no `x_add`).
#[allow(clippy::too_many_arguments)]
pub fn conv_resized(
    p: &ConvParam,
    weight: u64,
    bias: u64,
    src: Slice,
    h: usize,
    w: usize,
    y: Slice,
    residual: Option<Slice>,
    relu: bool,
    mul: Option<Slice>,
) -> Result<Launch> {
    let ss = src.shape;
    if ss.h == 0 || ss.w == 0 {
        return Err(Error::invalid(format!("{}: empty resize source {ss:?}", p.name)));
    }
    let up = Slice { addr: 0, shape: Shape { n: ss.n, c: ss.c, h, w, batch_stride: ss.c * h * w } };
    let mut l = conv(p, weight, bias, up, None, y, residual, relu, mul)?;
    let Params::Conv(ref mut c) = l.params else { unreachable!("conv() builds conv params") };
    let (scale_h, scale_w, _) = resize_scales(ss, h, w, ResizeMode::AlignCorners);
    c.x_bs = 0;
    c.src = src.addr;
    c.src_h = int(ss.h, "height")?;
    c.src_w = int(ss.w, "width")?;
    c.src_bs = int(ss.batch_stride, "image stride")?;
    c.src_scale_h = scale_h;
    c.src_scale_w = scale_w;
    int(ss.n * ss.batch_stride, "input span")?;
    l.kernel = conv_resized_kernel(p).0;
    Ok(l)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Max,
    Avg { count_include_pad: bool },
}

pub fn pool(kind: Pool, x: Slice, y: Slice, k: usize, s: usize, p: usize) -> Result<Launch> {
    let (xs, ys) = (x.shape, y.shape);
    if (xs.n, xs.c) != (ys.n, ys.c) || k == 0 || s == 0 {
        return Err(Error::invalid(format!("pool: input {xs:?} / output {ys:?} / k {k} s {s} do not fit")));
    }
    let params = PoolParams {
        x: x.addr,
        y: y.addr,
        n: int(xs.n, "batch")?,
        c: int(xs.c, "channels")?,
        h: int(xs.h, "height")?,
        w: int(xs.w, "width")?,
        oh: int(ys.h, "height")?,
        ow: int(ys.w, "width")?,
        k: int(k, "kernel")?,
        s: int(s, "stride")?,
        p: int(p, "padding")?,
        count_include_pad: matches!(kind, Pool::Avg { count_include_pad: true }) as i32,
        x_bs: int(xs.batch_stride, "image stride")?,
        y_bs: int(ys.batch_stride, "image stride")?,
    };
    int(ys.n * ys.c * ys.hw(), "output elements")?;
    Ok(Launch {
        kernel: if kind == Pool::Max { Kernel::MaxPool2d } else { Kernel::AvgPool2d },
        grid: [blocks(ys.n * ys.c * ys.hw(), ELEMENTWISE_THREADS as usize)?, 1, 1],
        block: [ELEMENTWISE_THREADS, 1, 1],
        params: Params::Pool(params),
    })
}

fn resize_scales(xs: Shape, oh: usize, ow: usize, mode: ResizeMode) -> (f32, f32, i32) {
    use crate::cpu::ops::resize_scale;
    (resize_scale(xs.h, oh, mode), resize_scale(xs.w, ow, mode), matches!(mode, ResizeMode::AlignCorners) as i32)
}

pub fn resize(x: Slice, y: Slice, mode: ResizeMode) -> Result<Launch> {
    let (xs, ys) = (x.shape, y.shape);
    if (xs.n, xs.c) != (ys.n, ys.c) || xs.h == 0 || xs.w == 0 {
        return Err(Error::invalid(format!("resize: input {xs:?} / output {ys:?} do not fit")));
    }
    let (scale_h, scale_w, align_corners) = resize_scales(xs, ys.h, ys.w, mode);
    let params = ResizeParams {
        x: x.addr,
        y: y.addr,
        n: int(xs.n, "batch")?,
        c: int(xs.c, "channels")?,
        h: int(xs.h, "height")?,
        w: int(xs.w, "width")?,
        oh: int(ys.h, "height")?,
        ow: int(ys.w, "width")?,
        scale_h,
        scale_w,
        align_corners,
        x_bs: int(xs.batch_stride, "image stride")?,
        y_bs: int(ys.batch_stride, "image stride")?,
        pad_: 0,
    };
    int(ys.n * ys.c * ys.hw(), "output elements")?;
    Ok(Launch {
        kernel: Kernel::ResizeBilinear,
        grid: [blocks(ys.n * ys.c * ys.hw(), ELEMENTWISE_THREADS as usize)?, 1, 1],
        block: [ELEMENTWISE_THREADS, 1, 1],
        params: Params::Resize(params),
    })
}

/// The edge-guidance resize folded into a reverse-attention launch: `y` = resize(`x`) with `mode`, at
/// the attention's spatial size (in the model, the edge channels of the branch's concat buffer).
#[derive(Clone, Copy, Debug)]
pub struct EdgeResize {
    pub x: Slice,
    pub y: Slice,
    pub mode: ResizeMode,
}

/// y = (1 − σ(m)) · x where m = resize(map) to x's size (`resize` = Some(mode)) or map itself (None,
/// same size as x). `crop`, when given, receives m. `edge`, when given, is resized in the same launch
/// (extra blocks after the attention's).
pub fn reverse_attention(
    map: Slice,
    resize: Option<ResizeMode>,
    x: Slice,
    y: Slice,
    crop: Option<Slice>,
    edge: Option<EdgeResize>,
) -> Result<Launch> {
    let (ms, xs, ys) = (map.shape, x.shape, y.shape);
    let same = |a: Shape, b: Shape| (a.n, a.c, a.h, a.w) == (b.n, b.c, b.h, b.w);
    let crop_ok = crop.is_none_or(|c| (c.shape.n, c.shape.c, c.shape.h, c.shape.w) == (xs.n, 1, xs.h, xs.w));
    let map_ok = ms.n == xs.n && ms.c == 1 && ms.h > 0 && ms.w > 0 && (resize.is_some() || (ms.h, ms.w) == (xs.h, xs.w));
    let edge_ok = edge.is_none_or(|e| {
        let (es, eys) = (e.x.shape, e.y.shape);
        es.n == xs.n && es.c == eys.c && es.c > 0 && es.h > 0 && es.w > 0 && (eys.n, eys.h, eys.w) == (xs.n, xs.h, xs.w)
    });
    if !same(xs, ys) || !crop_ok || !map_ok || !edge_ok {
        return Err(Error::invalid(format!(
            "reverse attention: map {ms:?} / x {xs:?} / y {ys:?} / edge {:?} do not fit",
            edge.map(|e| (e.x.shape, e.y.shape))
        )));
    }
    let (scale_h, scale_w, align_corners) = match resize {
        Some(mode) => resize_scales(ms, xs.h, xs.w, mode),
        None => (1.0, 1.0, 0),
    };
    let (edge_scale_h, edge_scale_w, edge_align_corners) = match edge {
        Some(e) => resize_scales(e.x.shape, xs.h, xs.w, e.mode),
        None => (1.0, 1.0, 0),
    };
    let attention_blocks = blocks(xs.n * xs.hw(), ELEMENTWISE_THREADS as usize)?;
    let edge_blocks = match edge {
        Some(e) => {
            int(e.y.shape.n * e.y.shape.c * e.y.shape.hw(), "edge output elements")?;
            blocks(e.y.shape.n * e.y.shape.c * e.y.shape.hw(), ELEMENTWISE_THREADS as usize)?
        }
        None => 0,
    };
    let es = edge.map(|e| e.x.shape);
    let params = AttentionParams {
        map: map.addr,
        x: x.addr,
        y: y.addr,
        crop: addr_or_zero(crop),
        edge: edge.map_or(0, |e| e.x.addr),
        edge_y: edge.map_or(0, |e| e.y.addr),
        n: int(xs.n, "batch")?,
        c: int(xs.c, "channels")?,
        h: int(xs.h, "height")?,
        w: int(xs.w, "width")?,
        mh: int(ms.h, "height")?,
        mw: int(ms.w, "width")?,
        scale_h,
        scale_w,
        align_corners,
        resize: resize.is_some() as i32,
        map_bs: int(ms.batch_stride, "image stride")?,
        x_bs: int(xs.batch_stride, "image stride")?,
        y_bs: int(ys.batch_stride, "image stride")?,
        crop_bs: int(crop.map_or(0, |c| c.shape.batch_stride), "image stride")?,
        ec: int(es.map_or(0, |s| s.c), "edge channels")?,
        eh: int(es.map_or(0, |s| s.h), "edge height")?,
        ew: int(es.map_or(0, |s| s.w), "edge width")?,
        edge_scale_h,
        edge_scale_w,
        edge_align_corners,
        edge_bs: int(es.map_or(0, |s| s.batch_stride), "image stride")?,
        edge_y_bs: int(edge.map_or(0, |e| e.y.shape.batch_stride), "image stride")?,
        attention_blocks: int(attention_blocks as usize, "attention blocks")?,
        pad_: 0,
    };
    int(ys.n * ys.batch_stride, "output span")?;
    let grid = attention_blocks
        .checked_add(edge_blocks)
        .ok_or_else(|| Error::invalid("reverse attention: grid too large".to_string()))?;
    Ok(Launch { kernel: Kernel::ReverseAttention, grid: [grid, 1, 1], block: [ELEMENTWISE_THREADS, 1, 1], params: Params::Attention(params) })
}
