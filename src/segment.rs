//! `infnet segment`: image slices in, probability maps (and masks, overlays) out.
//!
//! Every input is decoded before the first forward so that one bad file in a long list fails the
//! command up front, having written nothing. Inputs are decoded a second time batch by batch rather
//! than kept, which keeps memory bounded for long lists; decoding is cheap next to a forward.

use crate::engine::{self, Device};
use crate::error::{Error, Result};
use crate::preprocess::{self, Slice};
use crate::weights::Tensor;
use crate::InfNet;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Where a bundled demo model would live, relative to the crate or the current directory.
pub const BUNDLED_WEIGHTS: &str = "weights/infnet-demo.safetensors";

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Normalize {
    /// The infection probability, sigmoid(lateral_map_2).
    #[default]
    Prob,
    /// (p - min) / (max - min + 1e-8) per image, as the public test script saves its maps.
    Minmax,
}

#[derive(clap::Args, Debug)]
pub struct SegmentArgs {
    /// Weights (.safetensors). Defaults to the bundled model, weights/infnet-demo.safetensors, if present.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Input slices: PNG, JPEG or TIFF; 8- or 16-bit; gray, RGB or RGBA (alpha ignored).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output directory (created if missing). Per input NAME: NAME_prob.png, and NAME_mask.png,
    /// NAME_overlay.png when asked for.
    #[arg(long)]
    pub out: PathBuf,
    /// Network input side (a positive multiple of 32); every slice is resized to size×size.
    #[arg(long, default_value_t = 352)]
    pub size: usize,
    /// Also write NAME_mask.png: 255 where the probability ≥ T (0 < T < 1).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Also write NAME_overlay.png: the slice with infection (probability ≥ threshold, default 0.5) tinted red.
    #[arg(long)]
    pub overlay: bool,
    /// What NAME_prob.png holds.
    #[arg(long, value_enum, default_value_t = Normalize::Prob)]
    pub normalize: Normalize,
    /// Slices per forward.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// cpu, cuda or auto (CUDA when a GPU is usable, else CPU).
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// The threshold for the summary and the overlay when `--threshold` is not given.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// How strongly a certain (p = 1) infection pixel is tinted; below 1 so the anatomy stays visible.
const OVERLAY_MAX_ALPHA: f32 = 0.6;

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Probability at the original slice size: sigmoid at network resolution, then the bilinear resize
/// used for inputs (Pillow's, which for upscaling equals `F.interpolate(.., align_corners=False)`
/// to 1e-5; when a slice is smaller than the network input it also antialiases, unlike `interpolate`).
pub fn probability(logits: &[f32], size: usize, width: usize, height: usize) -> Vec<f32> {
    let p: Vec<f32> = logits.iter().map(|&x| sigmoid(x)).collect();
    preprocess::resize_plane_f32(&p, size, size, width, height)
}

/// The public test script's min–max normalisation, computed at network resolution then resized.
pub fn minmax(logits: &[f32], size: usize, width: usize, height: usize) -> Vec<f32> {
    let p: Vec<f32> = logits.iter().map(|&x| sigmoid(x)).collect();
    let lo = p.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n: Vec<f32> = p.iter().map(|&v| (v - lo) / (hi - lo + 1e-8)).collect();
    preprocess::resize_plane_f32(&n, size, size, width, height)
}

pub fn to_u8(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

fn encode_png(path: &Path, width: usize, height: usize, pixels: &[u8], color: image::ExtendedColorType) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(pixels, width as u32, height as u32, color)
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    Ok(buf)
}

fn write_png(path: &Path, width: usize, height: usize, pixels: &[u8], color: image::ExtendedColorType) -> Result<()> {
    crate::io::write_atomic(path, &encode_png(path, width, height, pixels, color)?)
}

fn resolve_weights(given: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(w) = given {
        return Ok(w.clone());
    }
    let candidates = [Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_WEIGHTS), PathBuf::from(BUNDLED_WEIGHTS)];
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::invalid(format!("no --weights given and no bundled model at {BUNDLED_WEIGHTS}; pass --weights"))
    })
}

/// Output names are the input stems; two inputs with one stem would overwrite each other's maps.
fn output_names(images: &[PathBuf]) -> Result<Vec<String>> {
    let mut seen: BTreeMap<String, &Path> = BTreeMap::new();
    let mut names = Vec::with_capacity(images.len());
    for p in images {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::file(p, "not an image file name"))?;
        if let Some(first) = seen.insert(name.clone(), p) {
            return Err(Error::file(
                p,
                format!("has the same name `{name}` as {} (their outputs would overwrite each other)", first.display()),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// Creates `dir` if needed and proves it writable with a probe file, before any forward runs.
fn prepare_out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create output directory: {e}")))?;
    if !dir.is_dir() {
        return Err(Error::file(dir, "output path exists and is not a directory"));
    }
    let probe = dir.join(format!(".infnet-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::file(dir, format!("cannot write to output directory: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn check_args(a: &SegmentArgs) -> Result<()> {
    engine::check_size(a.size, a.size).map_err(|e| Error::invalid(format!("--size {}: {e}", a.size)))?;
    if let Some(t) = a.threshold {
        // Written so that NaN fails too.
        if !(t > 0.0 && t < 1.0) {
            return Err(Error::invalid(format!("--threshold {t}: must be strictly between 0 and 1")));
        }
    }
    if a.batch == 0 {
        return Err(Error::invalid("--batch 0: must be at least 1"));
    }
    Ok(())
}

/// Per-slice results, also used by the summary line.
pub struct SliceMaps {
    pub width: usize,
    pub height: usize,
    /// Probability at the original size.
    pub prob: Vec<f32>,
    /// What NAME_prob.png shows (the probability, or its min–max normalisation).
    pub shown: Vec<f32>,
}

pub fn slice_maps(logits: &[f32], size: usize, width: usize, height: usize, normalize: Normalize) -> SliceMaps {
    let prob = probability(logits, size, width, height);
    let shown = match normalize {
        Normalize::Prob => prob.clone(),
        Normalize::Minmax => minmax(logits, size, width, height),
    };
    SliceMaps { width, height, prob, shown }
}

fn overlay(slice: &Slice, prob: &[f32], threshold: f32) -> Vec<u8> {
    let mut rgb = slice.to_rgb8();
    for (px, &p) in rgb.chunks_exact_mut(3).zip(prob) {
        if p >= threshold {
            let a = OVERLAY_MAX_ALPHA * p.clamp(0.0, 1.0);
            let tint = [255.0, 0.0, 0.0];
            for (c, t) in px.iter_mut().zip(tint) {
                *c = ((1.0 - a) * *c as f32 + a * t).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    rgb
}

fn write_outputs(a: &SegmentArgs, name: &str, slice: &Slice, maps: &SliceMaps) -> Result<f32> {
    use image::ExtendedColorType::{Rgb8, L8};
    let (w, h) = (maps.width, maps.height);
    let shown: Vec<u8> = maps.shown.iter().map(|&v| to_u8(v)).collect();
    write_png(&a.out.join(format!("{name}_prob.png")), w, h, &shown, L8)?;
    let t = a.threshold.unwrap_or(DEFAULT_THRESHOLD);
    if a.threshold.is_some() {
        let mask: Vec<u8> = maps.prob.iter().map(|&p| if p >= t { 255 } else { 0 }).collect();
        write_png(&a.out.join(format!("{name}_mask.png")), w, h, &mask, L8)?;
    }
    if a.overlay {
        write_png(&a.out.join(format!("{name}_overlay.png")), w, h, &overlay(slice, &maps.prob, t), Rgb8)?;
    }
    let infected = maps.prob.iter().filter(|&&p| p >= t).count();
    Ok(infected as f32 / (w * h) as f32)
}

pub fn run(a: &SegmentArgs) -> Result<()> {
    check_args(a)?;
    let weights = resolve_weights(&a.weights)?;
    let names = output_names(&a.images)?;
    for p in &a.images {
        preprocess::decode(p)?;
    }
    let model = InfNet::load(&weights)?;
    prepare_out_dir(&a.out)?;
    let mut eng = engine::create(&model, a.device, a.threads)?;

    let batches = a.images.len().div_ceil(a.batch);
    let bar = if batches > 1 && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(a.images.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} slices {elapsed_precise} (eta {eta})") {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let plane = a.size * a.size;
    let threshold = a.threshold.unwrap_or(DEFAULT_THRESHOLD);
    for (paths, batch_names) in a.images.chunks(a.batch).zip(names.chunks(a.batch)) {
        let slices = paths.iter().map(|p| preprocess::decode(p)).collect::<Result<Vec<_>>>()?;
        let mut data = Vec::with_capacity(slices.len() * 3 * plane);
        for s in &slices {
            data.extend(s.to_network_input(a.size));
        }
        let input = Tensor { shape: vec![slices.len(), 3, a.size, a.size], data };
        let outputs = eng.forward(&input)?;
        let logits = outputs
            .iter()
            .find(|(n, _)| n == "lateral_map_2")
            .map(|(_, t)| t)
            .ok_or_else(|| Error::invalid("the engine returned no lateral_map_2"))?;
        for (i, (slice, name)) in slices.iter().zip(batch_names).enumerate() {
            let maps = slice_maps(&logits.data[i * plane..(i + 1) * plane], a.size, slice.width, slice.height, a.normalize);
            let fraction = write_outputs(a, name, slice, &maps)?;
            bar.suspend(|| {
                println!(
                    "{name}  {}×{}  infected {:.2}% (p ≥ {threshold})",
                    slice.width,
                    slice.height,
                    100.0 * fraction
                )
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}
