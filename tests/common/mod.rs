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
