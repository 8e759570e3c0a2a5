//! The CUDA backend: our own kernels (kernels/*.cu, no cuDNN/cuBLAS), compiled at build time by NVRTC
//! and also built as host C++ for GPU-less tests.
//!
//! - `kernels`: parameter structs mirrored in C, kernel/module names, embedded images, launch configs;
//! - `plan`: graph → packed weights, activation arena layout, launch list (shared by both backends);
//! - `engine`: `CudaEngine` on a GPU through the driver API, with the forward replayed as a CUDA graph;
//! - `emulated`: the same launch list run through the host-compiled kernels (`EmulatedEngine`).

pub mod emulated;
pub mod engine;
pub mod kernels;
pub mod plan;

pub use emulated::EmulatedEngine;
pub use engine::{probe, CudaEngine};
