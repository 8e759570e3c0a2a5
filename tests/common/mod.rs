//! Helpers shared by the integration tests.
#![allow(dead_code)]

use infnet::weights::{read_safetensors, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A committed fixture. Test binaries staged onto another machine (tools/gpu_check.sh) run from the
/// project root there, where the build machine's absolute path does not exist.
pub fn fixture_path(name: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name);
    if built.exists() {
        built
    } else {
        PathBuf::from("tests").join("fixtures").join(name)
    }
}

pub fn fixture(name: &str) -> BTreeMap<String, Tensor> {
    let p = fixture_path(name);
    read_safetensors(&p).unwrap_or_else(|e| panic!("fixture {}: {e} (regenerate with tools/gen_fixtures.py)", p.display()))
}

/// ‖a − b‖₂ / ‖b‖₂ (b the reference).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    assert!(a.iter().all(|v| v.is_finite()), "result has non-finite values");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// A fresh, unique temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!("infnet-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32) / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Xorshift generator for fresh random test data (kernels are checked against their references on
/// these, never on zeros).
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// n values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// A conv (BN folded) with random weights scaled by √(3 / fan-in), so outputs stay O(1), and random
/// biases; named by its geometry for failure messages.
#[allow(clippy::too_many_arguments)]
pub fn conv_param(rng: &mut Rng, cin: usize, cout: usize, kh: usize, kw: usize, stride: usize, pad_h: usize, pad_w: usize, dil: usize) -> infnet::graph::ConvParam {
    let k = cin * kh * kw;
    infnet::graph::ConvParam {
        name: format!("conv {cin}->{cout} {kh}x{kw}/s{stride} p{pad_h},{pad_w} d{dil}"),
        cout,
        cin,
        kh,
        kw,
        stride,
        pad_h,
        pad_w,
        dil,
        weight: rng.vec(cout * k, (3.0 / k as f32).sqrt()),
        bias: rng.vec(cout, 0.5),
    }
}
