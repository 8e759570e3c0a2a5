//! `CudaEngine`: the graph on an NVIDIA GPU through our own kernels (kernels/*.cu).
//!
//! Weights are uploaded once, in the kernels' layout. Per (N, H, W) a plan holds one device arena for
//! every activation and the forward captured as a CUDA graph; a forward is then: copy the input in,
//! replay the graph, copy the five maps out (the only host synchronisation). Nothing is allocated on
//! the device after the first forward at a given shape.
//!
//! cudarc loads libcuda lazily and panics when a library or symbol is missing, so creation checks for
//! the library first and contains any remaining panic: no path here panics on a machine without CUDA.

use super::kernels::{Kernel, Launch, Module, Params};
use super::plan::{self, ArenaLayout, WeightPack};
use crate::engine::{check_input, Engine, Outputs};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::weights::Tensor;
use cudarc::driver::{result as cu, sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::sync::Arc;

fn device_err(what: &str) -> impl Fn(cu::DriverError) -> Error + '_ {
    move |e| Error::Device(format!("CUDA: {what}: {e:?}"))
}

/// Loaded modules, one per kernel source, and their functions.
struct ModuleCache {
    _modules: HashMap<Module, Arc<CudaModule>>,
    functions: HashMap<Kernel, CudaFunction>,
}

impl ModuleCache {
    /// Picks the image for compute capability (major, minor): the sm_90 cubin on 9.0 (a cubin only
    /// runs on its own major.minor family), else PTX for the newest target ≤ the device (JIT).
    fn load(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<ModuleCache> {
        let mut modules = HashMap::new();
        let mut functions = HashMap::new();
        for m in Module::ALL {
            let images = m.images().ok_or_else(not_built)?;
            let image = match cc {
                (9, 0) if images.cubin_sm90.is_some() => images.cubin_sm90.map(|b| cudarc::nvrtc::Ptx::from_binary(b.to_vec())),
                (major, _) if major >= 9 => images.ptx_sm90.map(ptx),
                (8, _) => images.ptx_sm80.map(ptx),
                (major, minor) => {
                    return Err(Error::Device(format!(
                        "CUDA device has compute capability {major}.{minor}; infnet's kernels need 8.0 or newer"
                    )))
                }
            };
            let image = image.ok_or_else(not_built)?;
            let module = ctx.load_module(image).map_err(device_err(&format!("loading module {}", m.name())))?;
            for k in Kernel::ALL.into_iter().filter(|k| k.module() == m) {
                let f = module.load_function(k.symbol()).map_err(device_err(k.symbol()))?;
                functions.insert(k, f);
            }
            modules.insert(m, module);
        }
        Ok(ModuleCache { _modules: modules, functions })
    }
}

fn ptx(bytes: &'static [u8]) -> cudarc::nvrtc::Ptx {
    let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    cudarc::nvrtc::Ptx::from_src(String::from_utf8_lossy(text).into_owned())
}

fn not_built() -> Error {
    Error::Device(
        "this infnet was built without CUDA kernels (NVRTC was not found at build time); rebuild with libnvrtc.so.13 on LD_LIBRARY_PATH, or use --device cpu".into(),
    )
}

/// Everything for one (N, H, W).
struct DevicePlan {
    layout: ArenaLayout,
    arena: CudaSlice<f32>,
    graph: CudaGraph,
}

pub struct CudaEngine {
    graph: Arc<Graph>,
    pack: WeightPack,
    name: String,
    // Field order = drop order: device objects go before the stream, module and context.
    plan: Option<DevicePlan>,
    weights: CudaSlice<f32>,
    timing: (CudaEvent, CudaEvent),
    last_gpu_ms: Option<f32>,
    modules: ModuleCache,
    stream: Arc<CudaStream>,
    _ctx: Arc<CudaContext>,
}

/// Why CUDA cannot be used here, or Ok if a driver, a device and the kernels are present.
/// Cheap and never panics; does not create a context.
pub fn probe() -> Result<()> {
    if !super::kernels::kernels_built() {
        return Err(not_built());
    }
    // SAFETY: only tries to dlopen the library.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Device("no CUDA driver found (libcuda.so.1 could not be loaded)".into()));
    }
    Ok(())
}

impl CudaEngine {
    /// Uses device 0.
    pub fn new(graph: Arc<Graph>) -> Result<CudaEngine> {
        probe()?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::create(graph))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            Err(Error::Device(format!("CUDA driver unusable: {msg}")))
        })
    }

    fn create(graph: Arc<Graph>) -> Result<CudaEngine> {
        cu::init().map_err(device_err("cuInit (is an NVIDIA driver installed and a GPU visible?)"))?;
        let count = CudaContext::device_count().map_err(device_err("counting devices"))?;
        if count < 1 {
            return Err(Error::Device("no CUDA device found".into()));
        }
        let ctx = CudaContext::new(0).map_err(device_err("creating a context on device 0"))?;
        // One stream, no cross-stream hazards: cudarc's per-allocation events would only add work
        // (and event records inside graph capture).
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability().map_err(device_err("compute capability"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let modules = ModuleCache::load(&ctx, cc)?;
        let stream = ctx.new_stream().map_err(device_err("creating a stream"))?;
        let pack = WeightPack::new(&graph);
        let weights = stream.clone_htod(&pack.data).map_err(device_err("uploading weights"))?;
        let timing = (
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(device_err("creating an event"))?,
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(device_err("creating an event"))?,
        );
        stream.synchronize().map_err(device_err("weight upload"))?;
        Ok(CudaEngine {
            graph,
            pack,
            name: format!("cuda ({name}, sm_{}{})", cc.0, cc.1),
            plan: None,
            weights,
            timing,
            last_gpu_ms: None,
            modules,
            stream,
            _ctx: ctx,
        })
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(device_err("synchronize"))
    }

    /// GPU time of the last forward's graph replay (input/output copies excluded), in milliseconds.
    pub fn last_forward_gpu_ms(&self) -> Option<f32> {
        self.last_gpu_ms
    }

    /// Device memory this engine holds: weights plus the current plan's activation arena, in bytes.
    pub fn device_memory_bytes(&self) -> usize {
        4 * (self.weights.len() + self.plan.as_ref().map_or(0, |p| p.arena.len()))
    }

    fn launch(&self, l: &Launch) -> Result<()> {
        let f = self.modules.functions.get(&l.kernel).ok_or_else(not_built)?;
        let arg: *mut std::ffi::c_void = match &l.params {
            Params::Conv(p) => p as *const _ as *mut _,
            Params::Pool(p) => p as *const _ as *mut _,
            Params::Resize(p) => p as *const _ as *mut _,
            Params::Attention(p) => p as *const _ as *mut _,
        };
        let mut args = [arg];
        let (g, b) = (l.grid, l.block);
        // SAFETY: the kernel takes exactly one argument, the parameter struct `arg` points at, which
        // lives until this call returns (the driver copies kernel arguments at launch / capture).
        unsafe { cu::launch_kernel(f.cu_function(), (g[0], g[1], g[2]), (b[0], b[1], b[2]), 0, self.stream.cu_stream(), &mut args) }
            .map_err(device_err(l.kernel.symbol()))
    }

    fn prepare(&mut self, n: usize, h: usize, w: usize) -> Result<()> {
        if matches!(&self.plan, Some(p) if (p.layout.n, p.layout.h, p.layout.w) == (n, h, w)) {
            return Ok(());
        }
        self.plan = None; // free the old arena first
        let g = self.graph.clone();
        let layout = ArenaLayout::new(&g, n, h, w);
        let arena = self.stream.alloc_zeros::<f32>(layout.len).map_err(device_err("allocating the activation arena"))?;
        let (arena_ptr, _) = arena.device_ptr(&self.stream);
        let (weights_ptr, _) = self.weights.device_ptr(&self.stream);
        let launches = plan::launches(&g, &layout, arena_ptr, &self.pack, weights_ptr)?;
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(device_err("starting graph capture"))?;
        let queued = launches.iter().try_for_each(|l| self.launch(l));
        let captured = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let graph = captured
            .map_err(device_err("instantiating the forward graph"))?
            .ok_or_else(|| Error::Device("CUDA: graph capture produced no graph".into()))?;
        graph.upload().map_err(device_err("uploading the forward graph"))?;
        self.plan = Some(DevicePlan { layout, arena, graph });
        Ok(())
    }
}

impl Engine for CudaEngine {
    fn device_name(&self) -> String {
        self.name.clone()
    }

    fn last_device_ms(&self) -> Option<f64> {
        self.last_forward_gpu_ms().map(f64::from)
    }

    fn device_memory_bytes(&self) -> Option<usize> {
        Some(CudaEngine::device_memory_bytes(self))
    }

    fn forward(&mut self, input: &Tensor) -> Result<Outputs> {
        let (n, h, w) = check_input(input)?;
        self.prepare(n, h, w)?;
        let g = self.graph.clone();
        let Some(plan) = self.plan.as_mut() else { unreachable!("prepared above") };
        let at = plan.layout.offsets[g.input];
        let mut dst = plan.arena.slice_mut(at..at + input.data.len());
        self.stream.memcpy_htod(&input.data, &mut dst).map_err(device_err("copying the input"))?;
        self.timing.0.record(&self.stream).map_err(device_err("event"))?;
        plan.graph.launch().map_err(device_err("launching the forward graph"))?;
        self.timing.1.record(&self.stream).map_err(device_err("event"))?;
        let mut outs = Vec::with_capacity(g.outputs.len());
        for (name, b) in &g.outputs {
            let off = plan.layout.offsets[*b];
            let mut data = vec![0.0f32; plan.layout.buf_len(&g, *b)];
            self.stream
                .memcpy_dtoh(&plan.arena.slice(off..off + data.len()), &mut data)
                .map_err(device_err("copying an output"))?;
            outs.push((name.clone(), Tensor { shape: vec![n, 1, h, w], data }));
        }
        self.stream.synchronize().map_err(device_err("forward"))?;
        self.last_gpu_ms = self.timing.0.elapsed_ms(&self.timing.1).ok();
        Ok(outs)
    }
}
