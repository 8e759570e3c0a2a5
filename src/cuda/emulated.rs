//! The kernels built as host C++ over kernels/emulation.h (see build.rs), and an `Engine` that runs
//! a graph's launch list through them on host memory. Slow (every CUDA thread is a fiber), meant for
//! tests on machines without a GPU: same sources, same launch configurations as the CUDA engine.

use super::kernels::{self, AttentionParams, ConvParams, Launch, Params, PoolParams, ResizeParams};
use super::plan::{self, ArenaLayout, WeightPack};
use crate::engine::{check_input, Engine, Outputs};
use crate::error::Result;
use crate::graph::Graph;
use crate::weights::Tensor;
use std::sync::Arc;

#[repr(C)]
#[derive(Clone, Copy)]
struct EmuDim {
    x: u32,
    y: u32,
    z: u32,
}

extern "C" {
    fn infnet_emu_conv2d_f32(p: *const ConvParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_conv2d_pointwise_f32(p: *const ConvParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_conv2d_m32_f32(p: *const ConvParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_conv2d_pointwise_m32_f32(p: *const ConvParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_conv2d_resized_f32(p: *const ConvParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_conv2d_resized_m32_f32(p: *const ConvParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_max_pool2d_f32(p: *const PoolParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_avg_pool2d_f32(p: *const PoolParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_resize_bilinear_f32(p: *const ResizeParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_reverse_attention_f32(p: *const AttentionParams, grid: EmuDim, block: EmuDim);
    fn infnet_emu_param_size(which: i32) -> u64;
}

/// `sizeof` of the C parameter structs, in `kernels::PARAM_SIZES` order.
pub fn c_param_sizes() -> [usize; 4] {
    // SAFETY: a pure function of its argument.
    std::array::from_fn(|i| unsafe { infnet_emu_param_size(i as i32) } as usize)
}

/// Runs one launch on the host.
///
/// # Safety
/// Every address in the launch's parameters must point at live host memory of the extent the
/// parameters describe, and outputs must not overlap inputs other than as the graph allows.
pub unsafe fn run(l: &Launch) {
    let d = |v: [u32; 3]| EmuDim { x: v[0], y: v[1], z: v[2] };
    let (g, b) = (d(l.grid), d(l.block));
    match (l.kernel, &l.params) {
        (kernels::Kernel::Conv2d, Params::Conv(p)) => infnet_emu_conv2d_f32(p, g, b),
        (kernels::Kernel::Conv2dPointwise, Params::Conv(p)) => infnet_emu_conv2d_pointwise_f32(p, g, b),
        (kernels::Kernel::Conv2dM32, Params::Conv(p)) => infnet_emu_conv2d_m32_f32(p, g, b),
        (kernels::Kernel::Conv2dPointwiseM32, Params::Conv(p)) => infnet_emu_conv2d_pointwise_m32_f32(p, g, b),
        (kernels::Kernel::Conv2dResized, Params::Conv(p)) => infnet_emu_conv2d_resized_f32(p, g, b),
        (kernels::Kernel::Conv2dResizedM32, Params::Conv(p)) => infnet_emu_conv2d_resized_m32_f32(p, g, b),
        (kernels::Kernel::MaxPool2d, Params::Pool(p)) => infnet_emu_max_pool2d_f32(p, g, b),
        (kernels::Kernel::AvgPool2d, Params::Pool(p)) => infnet_emu_avg_pool2d_f32(p, g, b),
        (kernels::Kernel::ResizeBilinear, Params::Resize(p)) => infnet_emu_resize_bilinear_f32(p, g, b),
        (kernels::Kernel::ReverseAttention, Params::Attention(p)) => infnet_emu_reverse_attention_f32(p, g, b),
        (k, p) => unreachable!("launch of {k:?} with {p:?}: the constructors in kernels.rs pair them"),
    }
}

/// The whole network through the emulated kernels, with the CUDA engine's plan.
pub struct EmulatedEngine {
    graph: Arc<Graph>,
    pack: WeightPack,
    plan: Option<(ArenaLayout, Vec<f32>)>,
}

impl EmulatedEngine {
    pub fn new(graph: Arc<Graph>) -> EmulatedEngine {
        let pack = WeightPack::new(&graph);
        EmulatedEngine { graph, pack, plan: None }
    }
}

impl Engine for EmulatedEngine {
    fn device_name(&self) -> String {
        "cuda kernels, emulated on the host".into()
    }

    fn forward(&mut self, input: &Tensor) -> Result<Outputs> {
        let (n, h, w) = check_input(input)?;
        let g = self.graph.clone();
        if !matches!(&self.plan, Some((l, _)) if (l.n, l.h, l.w) == (n, h, w)) {
            let layout = ArenaLayout::new(&g, n, h, w);
            let arena = vec![0.0f32; layout.len];
            self.plan = Some((layout, arena));
        }
        let Some((layout, arena)) = self.plan.as_mut() else { unreachable!("plan prepared above") };
        // Poison: an element a kernel fails to write shows up as NaN in the outputs.
        arena.fill(f32::NAN);
        let at = layout.offsets[g.input];
        arena[at..at + input.data.len()].copy_from_slice(&input.data);
        let launches = plan::launches(&g, layout, arena.as_mut_ptr() as u64, &self.pack, self.pack.data.as_ptr() as u64)?;
        for l in &launches {
            // SAFETY: the plan addresses lie inside `arena` and `pack.data`, sized by the same layout.
            unsafe { run(l) };
        }
        Ok(g.outputs
            .iter()
            .map(|(name, b)| {
                let off = layout.offsets[*b];
                let data = arena[off..off + layout.buf_len(&g, *b)].to_vec();
                (name.clone(), Tensor { shape: vec![n, 1, h, w], data })
            })
            .collect())
    }
}
