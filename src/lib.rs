//! infnet: an Inf-Net (Fan et al., IEEE TMI 2020) inference engine.
//!
//! - `weights`: safetensors state_dicts with the public PyTorch key names;
//! - `model`: the network as a `graph::Graph` of nodes over planned buffers (backbone, RFB, decoder, attention);
//! - `cpu`: the CPU executor and ops (the reference for every other backend);
//! - `cuda`: the CUDA executor and its kernels (and their host emulation for tests);
//! - `engine`: the backend interface and device selection;
//! - `preprocess`, `segment`: image slices to network input (Pillow-exact) and `infnet segment`;
//! - `train`: backward ops, the public loss and recipe, `infnet train`;
//! - `eval`, `phantom`: the paper's metrics as the public MATLAB tool computes them; synthetic CT slices.

pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod error;
pub mod eval;
pub mod bench;
pub mod graph;
pub mod io;
pub mod model;
pub mod preprocess;
pub mod phantom;
pub mod segment;
pub mod train;
pub mod weights;

pub use engine::{Device, Engine, Outputs};
pub use error::{Error, Result};
pub use model::InfNet;
pub use weights::{StateDict, Tensor};
