//! The public training loss (MyTrain_LungInf.py), forward and gradient together since it ends the graph.
//!
//! loss = BCEWithLogits(lateral_edge, edges) (mean, unweighted)
//!      + Σ over lateral_map_5, _4, _3, _2 of joint_loss(map, mask), where
//! joint_loss(pred, mask):
//!   weit = 1 + 5·|avg_pool2d(mask, 31, stride 1, pad 15) − mask|   (count_include_pad default: ÷ 961)
//!   wbce: the public call passes `reduce='none'`, which PyTorch's legacy-argument rule reads as
//!         reduce=True, so it is the *scalar mean* BCE over the whole batch; the following
//!         `(weit·wbce).sum / weit.sum` per image then gives that same mean back. The weights do not
//!         weight the BCE at all in the public code, and we reproduce that.
//!   wiou_i = 1 − (inter_i + 1)/(union_i − inter_i + 1), inter = Σ σ(pred)·mask·weit, union = Σ (σ(pred)+mask)·weit
//!   joint = mean_i(wbce + wiou_i) = wbce + mean_i wiou_i.

use super::ops::{sigmoid, Real};

/// Weights weit = 1 + 5·|box31(mask) − mask| with the zero-padded 31×31 box mean (÷ 961 everywhere).
/// mask: N×1×H×W → N×1×H×W. Uses 2-D prefix sums so the cost does not depend on the window.
pub fn structure_weight<T: Real>(mask: &[T], n: usize, h: usize, w: usize) -> Vec<T> {
    const R: isize = 15;
    let mut out = vec![T::ZERO; mask.len()];
    let mut integral = vec![0.0f64; (h + 1) * (w + 1)];
    for i in 0..n {
        let m = &mask[i * h * w..][..h * w];
        for y in 0..h {
            let mut row = 0.0;
            for x in 0..w {
                row += m[y * w + x].to_f64();
                integral[(y + 1) * (w + 1) + x + 1] = integral[y * (w + 1) + x + 1] + row;
            }
        }
        for y in 0..h {
            let (y0, y1) = ((y as isize - R).max(0) as usize, ((y as isize + R + 1) as usize).min(h));
            for x in 0..w {
                let (x0, x1) = ((x as isize - R).max(0) as usize, ((x as isize + R + 1) as usize).min(w));
                let s = integral[y1 * (w + 1) + x1] - integral[y0 * (w + 1) + x1] - integral[y1 * (w + 1) + x0]
                    + integral[y0 * (w + 1) + x0];
                let avg = s / 961.0;
                out[i * h * w + y * w + x] = T::from_f64(1.0 + 5.0 * (avg - m[y * w + x].to_f64()).abs());
            }
        }
    }
    out
}

/// Numerically stable BCE with logits: max(p, 0) − p·z + ln(1 + e^−|p|).
fn bce(p: f64, z: f64) -> f64 {
    p.max(0.0) - p * z + (-p.abs()).exp().ln_1p()
}

/// Mean BCE-with-logits over all elements; adds `scale`·∂/∂pred into dpred. pred, target, dpred: same length.
pub fn bce_mean<T: Real>(pred: &[T], target: &[T], scale: f64, dpred: &mut [T]) -> f64 {
    let count = pred.len() as f64;
    let mut sum = 0.0;
    for ((&p, &z), d) in pred.iter().zip(target).zip(dpred.iter_mut()) {
        let (p, z) = (p.to_f64(), z.to_f64());
        sum += bce(p, z);
        *d += T::from_f64(scale * (sigmoid(p) - z) / count);
    }
    sum / count
}

/// The public `joint_loss(pred, mask)`; adds `scale`·∂/∂pred into dpred.
/// pred, mask, weit, dpred: N×1×H×W (n images of hw pixels).
pub fn joint_loss<T: Real>(pred: &[T], mask: &[T], weit: &[T], n: usize, hw: usize, scale: f64, dpred: &mut [T]) -> f64 {
    let wbce = bce_mean(pred, mask, scale, dpred);
    let mut wiou_sum = 0.0;
    for i in 0..n {
        let r = i * hw..(i + 1) * hw;
        let (p, m, wt) = (&pred[r.clone()], &mask[r.clone()], &weit[r.clone()]);
        let (mut inter, mut union) = (0.0f64, 0.0f64);
        for ((&p, &m), &wt) in p.iter().zip(m).zip(wt) {
            let (s, m, wt) = (sigmoid(p.to_f64()), m.to_f64(), wt.to_f64());
            inter += s * m * wt;
            union += (s + m) * wt;
        }
        let den = union - inter + 1.0;
        wiou_sum += 1.0 - (inter + 1.0) / den;
        // wiou = 1 − (I+1)/D, D = U − I + 1:  ∂wiou/∂I = −1/D − (I+1)/D²,  ∂wiou/∂U = (I+1)/D².
        let d_inter = -1.0 / den - (inter + 1.0) / (den * den);
        let d_union = (inter + 1.0) / (den * den);
        for (((&p, &m), &wt), d) in p.iter().zip(m).zip(wt).zip(dpred[r].iter_mut()) {
            let s = sigmoid(p.to_f64());
            let ds = (d_inter * m.to_f64() + d_union) * wt.to_f64();
            *d += T::from_f64(scale / n as f64 * ds * s * (1.0 - s));
        }
    }
    wbce + wiou_sum / n as f64
}

/// The loss terms as the public script names them.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossParts {
    /// loss1: BCE of lateral_edge against the edge map.
    pub edge: f64,
    /// loss5, loss4, loss3, loss2: joint_loss of lateral_map_5, _4, _3, _2 against the mask.
    pub maps: [f64; 4],
}

impl LossParts {
    pub fn total(&self) -> f64 {
        self.edge + self.maps.iter().sum::<f64>()
    }
}

/// The whole public loss. maps: lateral_map_5, _4, _3, _2 (each N×1×H×W logits), edge: lateral_edge;
/// mask, edges: N×1×H×W targets. Adds ∂loss/∂(each output) into d_maps / d_edge.
#[allow(clippy::too_many_arguments)]
pub fn infnet_loss<T: Real>(
    maps: [&[T]; 4],
    edge: &[T],
    mask: &[T],
    edges: &[T],
    n: usize,
    h: usize,
    w: usize,
    d_maps: [&mut [T]; 4],
    d_edge: &mut [T],
) -> LossParts {
    let weit = structure_weight(mask, n, h, w);
    let mut parts = LossParts { edge: bce_mean(edge, edges, 1.0, d_edge), maps: [0.0; 4] };
    for (k, (pred, d)) in maps.iter().zip(d_maps).enumerate() {
        parts.maps[k] = joint_loss(pred, mask, &weit, n, h * w, 1.0, d);
    }
    parts
}
