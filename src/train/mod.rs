//! Training: backward ops, the public loss, the whole network in training mode, Adam and the public
//! recipe (multi-scale, gradient clamping, lr decay), the `train` / `train-step` commands.
//!
//! - `ops`: every op's forward and backward side by side, generic over f32/f64 (backward adds);
//! - `loss`: the public `joint_loss` and edge BCE with their gradients;
//! - `net`: Inf-Net in training mode (BN with batch statistics) for any variant of the state_dict,
//!   activations and gradients planned once per (N, H, W);
//! - `adam`: Adam, `clip_gradient`, `adjust_lr`, multi-scale sizes and rescaling, as the public script;
//! - `data`: the COVID-SemiSeg folder layout, validated before training;
//! - `checkpoint`: state_dicts PyTorch loads with strict=True, plus optimiser state for `--resume`;
//! - `export`: f16 copies of checkpoints (the bundled demo model);
//! - `semi`: the public pseudo-label procedure (Semi-Inf-Net), the `semi-train` command;
//! - `cli`: the commands.

pub mod adam;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod export;
pub mod loss;
pub mod net;
pub mod ops;
pub mod semi;
