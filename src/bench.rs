//! `infnet bench`: forward latency and throughput, one line (or one JSON object) per (size, batch).

use crate::engine::{self, Device};
use crate::error::{Error, Result};
use crate::model::synthetic::{state_dict, Spec};
use crate::{InfNet, Tensor};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Weights (safetensors state_dict); without it, the published architecture with synthetic weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Input sides (square), comma-separated; each a positive multiple of 32.
    #[arg(long, value_delimiter = ',', default_value = "352")]
    pub size: Vec<usize>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Timed forwards per configuration.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Untimed forwards before timing (plan allocation, caches, clocks).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Latency statistics of one configuration, in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    /// Only with at least 100 samples.
    pub p99: Option<f64>,
}

/// Percentile `q` (0..=1) with linear interpolation between order statistics (numpy's default), so
/// that `tools/bench_peers.py` computes the peers' numbers the same way.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        Stats {
            median: percentile(&s, 0.5),
            p10: percentile(&s, 0.1),
            p90: percentile(&s, 0.9),
            p99: (s.len() >= 100).then(|| percentile(&s, 0.99)),
        }
    }
}

/// CPU model name from /proc/cpuinfo ("unknown" elsewhere).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// Peak resident set size of this process in MiB (VmHWM), if the OS reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn validate(a: &BenchArgs) -> Result<()> {
    if a.iters == 0 {
        return Err(Error::invalid("--iters must be at least 1"));
    }
    if a.size.is_empty() || a.batch.is_empty() {
        return Err(Error::invalid("--size and --batch need at least one value"));
    }
    for &s in &a.size {
        engine::check_size(s, s)?;
    }
    if let Some(&b) = a.batch.iter().find(|&&b| b == 0 || b > 4096) {
        return Err(Error::invalid(format!("--batch {b}: batch sizes must be between 1 and 4096")));
    }
    Ok(())
}

pub fn run(a: &BenchArgs) -> Result<()> {
    validate(a)?;
    let (model, weights) = match &a.weights {
        Some(p) => (InfNet::load(p)?, p.display().to_string()),
        None => (InfNet::from_state_dict(&state_dict(&Spec::full(), 1))?, "synthetic".to_string()),
    };
    let threads = if a.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { a.threads };
    let mut eng = engine::create(&model, a.device, threads)?;
    let device = eng.device_name();
    let cpu = cpu_model();
    if !a.json {
        match &a.weights {
            Some(p) => println!("weights   {}", p.display()),
            None => println!("weights   synthetic: the published Inf-Net architecture (Res2Net-50 v1b 26w×4s) with random values"),
        }
        println!("device    {device}");
        println!("cpu       {cpu} ({threads} threads)");
        println!("timing    {} warm-up + {} timed forwards per configuration", a.warmup, a.iters);
    }
    for &size in &a.size {
        for &batch in &a.batch {
            let n = batch * 3 * size * size;
            // Deterministic values in [-1, 1): the engine's speed does not depend on them.
            let data = (0..n).map(|i| ((i.wrapping_mul(7919) % 2001) as f32) / 1000.0 - 1.0).collect();
            let x = Tensor { shape: vec![batch, 3, size, size], data };
            for _ in 0..a.warmup {
                eng.forward(&x)?;
            }
            let mut samples = Vec::with_capacity(a.iters);
            // Accelerators also time the forward on the device (CUDA events around the graph replay).
            let mut device_samples = Vec::with_capacity(a.iters);
            for _ in 0..a.iters {
                let t = Instant::now();
                let out = eng.forward(&x)?;
                samples.push(t.elapsed().as_secs_f64());
                device_samples.extend(eng.last_device_ms().map(|ms| ms / 1e3));
                drop(out);
            }
            let s = Stats::of(&samples);
            let dev = (device_samples.len() == samples.len()).then(|| Stats::of(&device_samples));
            let dev_mem = eng.device_memory_bytes();
            let ips = batch as f64 / s.median;
            let gflop = 2.0 * model.graph.macs(size, size) as f64 / 1e9;
            let rss = peak_rss_mib();
            if a.json {
                let line = serde_json::json!({
                    "size": size,
                    "batch": batch,
                    "iters": a.iters,
                    "warmup": a.warmup,
                    "median_ms": s.median * 1e3,
                    "p10_ms": s.p10 * 1e3,
                    "p90_ms": s.p90 * 1e3,
                    "p99_ms": s.p99.map(|v| v * 1e3),
                    "images_per_s": ips,
                    "gflop_per_image": gflop,
                    "device": device,
                    "cpu": cpu,
                    "threads": threads,
                    "weights": weights,
                    "peak_rss_mib": rss,
                    "device_median_ms": dev.as_ref().map(|d| d.median * 1e3),
                    "device_p99_ms": dev.as_ref().and_then(|d| d.p99).map(|v| v * 1e3),
                    "device_memory_bytes": dev_mem,
                });
                println!("{line}");
            } else {
                let p99 = s.p99.map_or(String::new(), |v| format!("  p99 {:8.2}", v * 1e3));
                println!(
                    "{size}×{size} batch {batch:<3} median {:8.2} ms  p10 {:8.2}  p90 {:8.2}{p99}  {:8.2} images/s  ({:.1} GFLOP/s)",
                    s.median * 1e3,
                    s.p10 * 1e3,
                    s.p90 * 1e3,
                    ips,
                    gflop * ips
                );
                if let Some(d) = &dev {
                    let p99 = d.p99.map_or(String::new(), |v| format!("  p99 {:8.2}", v * 1e3));
                    println!(
                        "{:>22} device median {:8.2} ms  p10 {:8.2}  p90 {:8.2}{p99}  (CUDA events, host copies excluded)",
                        "",
                        d.median * 1e3,
                        d.p10 * 1e3,
                        d.p90 * 1e3
                    );
                }
                if let Some(m) = dev_mem {
                    println!("{:>22} device memory {:.0} MiB (weights + activation arena)", "", m as f64 / 1048576.0);
                }
            }
        }
    }
    if !a.json {
        match peak_rss_mib() {
            Some(m) => println!("peak RSS  {m:.0} MiB"),
            None => println!("peak RSS  unavailable"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&s, 0.5), 2.5);
        assert!((percentile(&s, 0.1) - 1.3).abs() < 1e-12);
        assert_eq!(Stats::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Stats::of(&[1.0; 99]).p99, None);
        assert!(Stats::of(&[1.0; 100]).p99.is_some());
    }
}
