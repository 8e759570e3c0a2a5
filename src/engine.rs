//! The engine interface shared by the CPU and CUDA backends, and device selection.

use crate::error::{Error, Result};
use crate::weights::Tensor;

/// Named output maps in the public order (lateral_map_5, _4, _3, _2, lateral_edge), each N×1×H×W logits.
pub type Outputs = Vec<(String, Tensor)>;

pub trait Engine {
    /// A short description of where it runs, e.g. "cpu (2 threads)".
    fn device_name(&self) -> String;
    /// One forward of an N×3×H×W f32 input.
    fn forward(&mut self, input: &Tensor) -> Result<Outputs>;
    /// Device time of the last forward in milliseconds where the backend measures it (CUDA events around
    /// the graph replay, host copies excluded); None for the CPU, whose wall time is the latency.
    fn last_device_ms(&self) -> Option<f64> {
        None
    }
    /// Accelerator memory this engine holds (weights + activation arena), in bytes; None for the CPU.
    fn device_memory_bytes(&self) -> Option<usize> {
        None
    }
}

/// Checks an input tensor: N×3×H×W with H and W positive multiples of 32. Returns (N, H, W).
pub fn check_input(t: &Tensor) -> Result<(usize, usize, usize)> {
    let s = &t.shape;
    if s.len() != 4 || s[1] != 3 || s[0] == 0 {
        return Err(Error::invalid(format!("input must be N×3×H×W with N ≥ 1, got shape {s:?}")));
    }
    check_size(s[2], s[3])?;
    if t.data.len() != s.iter().product::<usize>() {
        return Err(Error::invalid("input data length does not match its shape"));
    }
    Ok((s[0], s[2], s[3]))
}

/// Inf-Net downsamples by 32: both sides must be positive multiples of 32.
pub fn check_size(h: usize, w: usize) -> Result<()> {
    if h == 0 || w == 0 || !h.is_multiple_of(32) || !w.is_multiple_of(32) {
        return Err(Error::invalid(format!(
            "input size {h}×{w} is not supported: height and width must be positive multiples of 32 (e.g. 352×352)"
        )));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            _ => Err(format!("unknown device `{s}` (expected cpu, cuda or auto)")),
        }
    }
}

/// Builds an engine for `device`. `Auto` takes CUDA when usable, else the CPU with a one-line notice on stderr.
pub fn create(model: &crate::model::InfNet, device: Device, threads: usize) -> Result<Box<dyn Engine>> {
    let graph = model.graph.clone();
    match device {
        Device::Cpu => Ok(Box::new(crate::cpu::CpuEngine::new(graph, threads)?)),
        Device::Cuda => Ok(Box::new(crate::cuda::CudaEngine::new(graph)?)),
        Device::Auto => match crate::cuda::CudaEngine::new(graph.clone()) {
            Ok(e) => Ok(Box::new(e)),
            Err(why) => {
                eprintln!("infnet: CUDA not usable ({why}); running on the CPU");
                Ok(Box::new(crate::cpu::CpuEngine::new(graph, threads)?))
            }
        },
    }
}
