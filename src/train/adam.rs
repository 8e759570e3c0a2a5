//! The public optimisation recipe (MyTrain_LungInf.py with Code/utils/utils.py):
//! torch.optim.Adam(params, lr) with β = (0.9, 0.999), eps 1e-8, no weight decay; before every step each
//! gradient element is clamped to ±clip (`clip_gradient`, clip 0.5); the learning rate follows
//! `adjust_lr`; every batch is used at three scales, one optimiser step each.

use super::net::Param;
use super::ops::{resize_forward, Real};
use crate::cpu::tensor::Shape;
use crate::graph::ResizeMode;
use crate::weights::Tensor;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;
/// The public `--clip` default.
pub const CLIP: f32 = 0.5;
/// The public `size_rates`.
pub const SIZE_RATES: [f64; 3] = [0.75, 1.0, 1.25];

/// Adam state, one moment pair per parameter (same order as `TrainNet::params`).
#[derive(Clone, Debug)]
pub struct Adam {
    pub step: u64,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

impl Adam {
    pub fn new(params: &[Param]) -> Adam {
        Adam {
            step: 0,
            exp_avg: params.iter().map(|p| vec![0.0; p.data.len()]).collect(),
            exp_avg_sq: params.iter().map(|p| vec![0.0; p.data.len()]).collect(),
        }
    }

    /// One step with PyTorch's single-tensor Adam arithmetic (bias corrections in f64 as Python floats,
    /// moments and the update in f32).
    pub fn update(&mut self, params: &mut [Param], lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - BETA1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - BETA2.powi(self.step as i32)).sqrt();
        let step_size = (lr / bc1) as f32;
        let (b1, b2, bc2_sqrt, eps) = ((1.0 - BETA1) as f32, BETA2 as f32, bc2_sqrt as f32, EPS as f32);
        let c2 = (1.0 - BETA2) as f32;
        // Element-wise and memory bound (four arrays of every parameter): chunks of one tensor go to
        // different threads, so the large layer-4 weights do not leave one core doing most of the work.
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 14;
        for ((p, m), v) in params.iter_mut().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
            p.data
                .par_chunks_mut(CHUNK)
                .zip(p.grad.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((w, g), m), v)| {
                    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        *m += b1 * (g - *m);
                        *v = *v * b2 + c2 * g * g;
                        let denom = v.sqrt() / bc2_sqrt + eps;
                        *w -= step_size * (*m / denom);
                    }
                });
        }
    }
}

/// The public `clip_gradient`: clamps every gradient element to [−clip, clip].
pub fn clip_gradients(params: &mut [Param], clip: f32) {
    use rayon::prelude::*;
    for p in params {
        p.grad.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|g| *g = g.clamp(-clip, clip)));
    }
}

/// The learning rate in epoch `epoch` (1-based, as the public loop counts) under the public
/// `adjust_lr`, which runs at the start of every epoch and does `lr *= decay_rate^(epoch // decay_epoch)`
/// on the optimiser's *current* lr. The factors therefore compound: lr stays at init_lr until epoch
/// decay_epoch−1, then drops ×decay_rate every epoch (×decay_rate² per epoch after 2·decay_epoch). This
/// is the public code's actual behaviour, reproduced as is.
pub fn public_lr(init_lr: f64, epoch: usize, decay_rate: f64, decay_epoch: usize) -> f64 {
    (1..=epoch).fold(init_lr, |lr, e| lr * decay_rate.powi((e / decay_epoch.max(1)) as i32))
}

/// The schedule as the paper and the issue describe it: lr × decay_rate^⌊epoch / decay_epoch⌋, i.e. one
/// ×decay_rate step every decay_epoch epochs, without compounding (`--lr-schedule step`).
pub fn step_lr(init_lr: f64, epoch: usize, decay_rate: f64, decay_epoch: usize) -> f64 {
    init_lr * decay_rate.powi((epoch / decay_epoch.max(1)) as i32)
}

/// Python's round(): halves go to the even neighbour.
pub fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// The public `trainsize = int(round(size * rate / 32) * 32)`.
pub fn multiscale_size(size: usize, rate: f64) -> usize {
    (round_half_even(size as f64 * rate / 32.0) * 32.0) as usize
}

/// Bilinear resize (align_corners=True) of an N×C×H×W tensor to side×side, as the public rescaling.
pub fn rescale(t: &Tensor, side: usize) -> Tensor {
    let (n, c, h, w) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let ys = Shape::dense(n, c, side, side);
    let mut data = vec![f32::ZERO; ys.span()];
    resize_forward(&t.data, Shape::dense(n, c, h, w), &mut data, ys, ResizeMode::AlignCorners);
    Tensor { shape: vec![n, c, side, side], data }
}
