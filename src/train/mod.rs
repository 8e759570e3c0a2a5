//! Training: backward ops, the public loss, the whole network in training mode, Adam and the public
//! recipe (multi-scale, gradient clamping, step decay), the `train` / `train-step` commands.
//!
//! - `ops`: every op's forward and backward side by side, generic over f32/f64;
//! - `loss`: the public `joint_loss` and edge BCE with their gradients;

pub mod adam;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod loss;
pub mod net;
pub mod ops;
