//! `infnet semi-train`: Semi-Inf-Net as the public `PseudoGenerator.py` and README describe it.
//!
//! 1. **Labelled model**: Inf-Net trained on the labelled set (public: 100 epochs, lr 1e-4, batch 24),
//!    or given with `--labeled-model`.
//! 2. **Rounds**: the unlabelled images, shuffled once (seeded), are taken `--per-round` at a time
//!    (public K = 5). Each round the current model predicts them; the pseudo-label is sigmoid(lateral_map_2)
//!    min–max normalised per image (what the public inference writes; *not* binarised, unless
//!    `--pseudo-threshold`), its edge map the boundary of that map binarised at 128 (public: threshold 128 +
//!    Canny). Images, pseudo-labels and edges join the pool (labelled + pseudo-labelled, the public
//!    "Hybrid-label" folder), and the model is fine-tuned on the whole pool from the current weights with a
//!    fresh Adam (public: lr 3e-4, batch 16, `--epoch 10`, whose `range(1, 10)` runs 9 epochs; our
//!    `--epochs-per-round N` runs N).
//! 3. **Semi-Inf-Net**: a model trained on the whole pool from the initial weights (public: from ImageNet,
//!    100 epochs), then fine-tuned on the labelled set (public: 100 epochs, lr 1e-4, batch 24).
//!
//! Differences from the public script: pseudo-labels are resized back to each image's size (the public
//! script stores them at 352×352 beside full-size images and lets the loader resize both); the edge is the
//! 4-neighbour boundary of the binarised map (`data::edge_from_mask`) rather than OpenCV's Canny, which on
//! a binary map marks the same boundary up to one pixel.
//!
//! Everything lives in `--out`: `semi-state.json` (what is done), `semi.log`, `pool/{Imgs,GT,Edge}`,
//! `models/` (the labelled model, the latest round, the pool model), `stages/<stage>/` (the stage being
//! trained, removed once its weights are in `models/`) and `Semi-Inf-Net.safetensors`. Rerunning with
//! `--resume` skips completed stages and rounds and continues an interrupted stage from its last epoch.

use super::cli::{self, TrainArgs, Variant};
use super::data;
use crate::engine::{self, Device};
use crate::error::{Error, Result};
use crate::weights::Tensor;
use crate::InfNet;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct SemiTrainArgs {
    /// Labelled set in the COVID-SemiSeg layout: Imgs/, GT/ and optionally Edge/.
    #[arg(long)]
    pub labeled: PathBuf,
    /// Unlabelled images: a folder of .jpg/.png slices, or a folder holding Imgs/ (other subfolders are ignored).
    #[arg(long)]
    pub unlabeled: PathBuf,
    /// Unlabelled images pseudo-labelled per round (public K = 5).
    #[arg(long, default_value_t = 5)]
    pub per_round: usize,
    /// Rounds to run (default: until every unlabelled image is in the pool). Can be raised on --resume.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Fine-tuning epochs per round.
    #[arg(long, default_value_t = 10)]
    pub epochs_per_round: usize,
    /// Fine-tuning learning rate per round (public 3e-4).
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Fine-tuning batch per round (public 16).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Training and pseudo-labelling size (multiple of 32).
    #[arg(long, default_value_t = 352)]
    pub size: usize,
    /// Seed of the unlabelled order, the shuffles and the random initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (see the module documentation).
    #[arg(long)]
    pub out: PathBuf,
    /// Inf-Net already trained on the labelled set (public Inf-Net-100.pth); skips step 1.
    #[arg(long)]
    pub labeled_model: Option<PathBuf>,
    /// Initial weights of the stages the public code starts from ImageNet (labelled model, pool model);
    /// without it they start from random weights of --variant.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Widths of the random initialisation.
    #[arg(long, value_enum, default_value_t = Variant::Full)]
    pub variant: Variant,
    /// Epochs of the labelled model (step 1).
    #[arg(long, default_value_t = 100)]
    pub labeled_epochs: usize,
    /// Epochs of the pool model (step 3; 0 skips it and fine-tunes the last round's model).
    #[arg(long, default_value_t = 100)]
    pub pool_epochs: usize,
    /// Epochs of the final fine-tuning on the labelled set (step 3; 0 skips it).
    #[arg(long, default_value_t = 100)]
    pub finetune_epochs: usize,
    /// Learning rate of steps 1 and 3 (public MyTrain_LungInf default 1e-4).
    #[arg(long, default_value_t = 1e-4)]
    pub train_lr: f64,
    /// Batch of steps 1 and 3 (public 24).
    #[arg(long, default_value_t = 24)]
    pub train_batch: usize,
    /// Binarise pseudo-labels at this probability instead of storing the public min–max normalised map.
    #[arg(long)]
    pub pseudo_threshold: Option<f32>,
    /// Continue the run recorded in OUT/semi-state.json.
    #[arg(long)]
    pub resume: bool,
    /// Also write Semi-Inf-Net as f16 safetensors to this path.
    #[arg(long)]
    pub export_f16: Option<PathBuf>,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

const STATE: &str = "semi-state.json";
const IMAGE_EXTS: [&str; 3] = ["jpg", "jpeg", "png"];

fn has_ext(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn mkdir(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).map_err(|e| Error::file(d, format!("cannot create directory: {e}")))
}

fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|e| Error::file(src, format!("cannot read: {e}")))?;
    crate::io::write_atomic(dst, &bytes)
}

fn write_gray_png(path: &Path, img: &image::GrayImage) -> Result<()> {
    use image::ImageEncoder;
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::L8)
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    crate::io::write_atomic(path, &buf)
}

/// The unlabelled images, sorted by name, each header decoded; names must not clash with the labelled set.
fn scan_unlabeled(dir: &Path, labeled: &[data::Sample]) -> Result<(PathBuf, Vec<String>)> {
    let root = if dir.join("Imgs").is_dir() { dir.join("Imgs") } else { dir.to_path_buf() };
    let rd = std::fs::read_dir(&root).map_err(|e| Error::file(&root, format!("cannot list unlabelled images: {e}")))?;
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && has_ext(p)).collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::file(&root, "contains no .jpg or .png images"));
    }
    let mut seen: std::collections::BTreeMap<String, PathBuf> =
        labeled.iter().map(|s| (stem(&s.image), s.image.clone())).collect();
    for f in &files {
        image::image_dimensions(f).map_err(|e| Error::file(f, format!("cannot read image: {e}")))?;
        if let Some(other) = seen.insert(stem(f), f.clone()) {
            return Err(Error::file(
                f,
                format!("has the same name as {} (the pool pairs images and labels by name)", other.display()),
            ));
        }
    }
    Ok((root, files.iter().map(|f| file_name(f)).collect()))
}

/// What is done, and the identity of the run (checked on --resume).
struct State {
    path: PathBuf,
    seed: u64,
    per_round: usize,
    size: usize,
    order: Vec<String>,
    done: Vec<String>,
}

impl State {
    fn to_json(&self) -> Value {
        json!({
            "version": 1,
            "seed": self.seed,
            "per_round": self.per_round,
            "size": self.size,
            "order": self.order,
            "done": self.done,
        })
    }
    fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| Error::file(&self.path, format!("cannot serialise state: {e}")))?;
        crate::io::write_atomic(&self.path, text.as_bytes())
    }
    fn load(path: &Path) -> Result<State> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read state: {e}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not a valid state file: {e}")))?;
        let bad = |k: &str| Error::file(path, format!("state file lacks a valid `{k}`"));
        let strings = |k: &str| -> Result<Vec<String>> {
            v.get(k)
                .and_then(|x| x.as_array())
                .ok_or_else(|| bad(k))?
                .iter()
                .map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad(k)))
                .collect()
        };
        Ok(State {
            path: path.to_path_buf(),
            seed: v.get("seed").and_then(|x| x.as_u64()).ok_or_else(|| bad("seed"))?,
            per_round: v.get("per_round").and_then(|x| x.as_u64()).ok_or_else(|| bad("per_round"))? as usize,
            size: v.get("size").and_then(|x| x.as_u64()).ok_or_else(|| bad("size"))? as usize,
            order: strings("order")?,
            done: strings("done")?,
        })
    }
    fn is_done(&self, stage: &str) -> bool {
        self.done.iter().any(|d| d == stage)
    }
    fn mark(&mut self, stage: &str) -> Result<()> {
        if !self.is_done(stage) {
            self.done.push(stage.to_string());
        }
        self.save()
    }
    fn rounds_done(&self) -> usize {
        self.done.iter().filter(|d| d.starts_with("round-")).count()
    }
}

struct Log(PathBuf);

impl Log {
    fn line(&self, s: &str) -> Result<()> {
        use std::io::Write;
        eprintln!("semi-train: {s}");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .map_err(|e| Error::file(&self.0, format!("cannot open log: {e}")))?;
        writeln!(f, "{s}").map_err(|e| Error::file(&self.0, format!("cannot write log: {e}")))
    }
}

fn round_model(out: &Path, r: usize) -> PathBuf {
    out.join("models").join(format!("round-{r:03}.safetensors"))
}

struct Runner<'a> {
    a: &'a SemiTrainArgs,
    log: Log,
}

impl Runner<'_> {
    /// Trains one stage with the public recipe in OUT/stages/NAME (resuming it if it was interrupted),
    /// then copies its final weights to `dest` and removes the stage folder.
    #[allow(clippy::too_many_arguments)]
    fn stage(&self, name: &str, data: &Path, init: Option<&Path>, epochs: usize, lr: f64, batch: usize, seed: u64, dest: &Path) -> Result<()> {
        let dir = self.a.out.join("stages").join(name);
        let resume = dir.join("last.safetensors").is_file() && dir.join("last.optim.safetensors").is_file();
        self.log.line(&format!(
            "stage {name}: {epochs} epochs on {} (lr {lr}, batch {batch}){}",
            data.display(),
            if resume { ", resuming" } else { "" }
        ))?;
        let args = TrainArgs {
            data: data.to_path_buf(),
            epochs,
            batch,
            lr,
            size: self.a.size,
            init: init.map(Path::to_path_buf),
            seed,
            resume,
            out: dir.clone(),
            save_every: epochs,
            clip: super::adam::CLIP,
            decay_rate: 0.1,
            decay_epoch: 50,
            lr_schedule: cli::LrSchedule::Public,
            threads: self.a.threads,
            variant: self.a.variant,
            export_f16: None,
        };
        cli::train(&args)?;
        let ckpt = dir.join(format!("Inf-Net-{epochs}.safetensors"));
        if !ckpt.is_file() {
            return Err(Error::file(&ckpt, "missing after training (remove the stage folder to retrain it)"));
        }
        copy_atomic(&ckpt, dest)?;
        let stage_log = dir.join("train.log");
        if let Ok(text) = std::fs::read_to_string(&stage_log) {
            // This invocation's part of the stage log (an interrupted stage's log holds earlier runs too).
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.iter().rposition(|l| l.starts_with("start:")).unwrap_or(0);
            for l in lines[from..].iter().filter(|l| l.starts_with("epoch ") || l.starts_with("start:") || l.starts_with("nothing")) {
                self.log.line(&format!("  {name} {l}"))?;
            }
        }
        Ok(())
    }

    fn remove_stage_dir(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.a.out.join("stages").join(name));
    }

    /// Predicts pseudo-labels for `names` with `model` and adds images, labels and edges to the pool.
    fn pseudo_label(&self, model: &Path, src_dir: &Path, names: &[String], pool: &Path) -> Result<()> {
        let net = InfNet::load(model)?;
        let mut eng = engine::create(&net, Device::Cpu, self.a.threads)?;
        let s = self.a.size;
        for name in names {
            let src = src_dir.join(name);
            let slice = crate::preprocess::decode(&src)?;
            let input = Tensor { shape: vec![1, 3, s, s], data: slice.to_network_input(s) };
            let outs = eng.forward(&input)?;
            let logits = outs
                .iter()
                .find(|(n, _)| n == "lateral_map_2")
                .map(|(_, t)| t)
                .ok_or_else(|| Error::file(model, "the network returned no lateral_map_2"))?;
            let (w, h) = (slice.width, slice.height);
            let map: Vec<f32> = match self.a.pseudo_threshold {
                None => crate::segment::minmax(&logits.data, s, w, h),
                Some(t) => crate::segment::probability(&logits.data, s, w, h).iter().map(|&p| if p >= t { 1.0 } else { 0.0 }).collect(),
            };
            let pixels: Vec<u8> = map.iter().map(|&v| crate::segment::to_u8(v)).collect();
            let gt = image::GrayImage::from_raw(w as u32, h as u32, pixels)
                .ok_or_else(|| Error::file(&src, "internal error: pseudo-label size mismatch"))?;
            let edge = data::edge_from_mask(&gt);
            let st = stem(&src);
            // Labels first: the pool never holds an image without its label.
            write_gray_png(&pool.join("GT").join(format!("{st}.png")), &gt)?;
            write_gray_png(&pool.join("Edge").join(format!("{st}.png")), &edge)?;
            copy_atomic(&src, &pool.join("Imgs").join(name))?;
        }
        Ok(())
    }
}

fn check_args(a: &SemiTrainArgs) -> Result<()> {
    if a.per_round == 0 || a.epochs_per_round == 0 || a.batch == 0 || a.train_batch == 0 {
        return Err(Error::invalid("--per-round, --epochs-per-round, --batch and --train-batch must be at least 1"));
    }
    if a.labeled_model.is_none() && a.labeled_epochs == 0 {
        return Err(Error::invalid("--labeled-epochs must be at least 1 (or pass --labeled-model)"));
    }
    if a.size == 0 || !a.size.is_multiple_of(32) {
        return Err(Error::invalid(format!("--size {} must be a positive multiple of 32", a.size)));
    }
    if let Some(t) = a.pseudo_threshold {
        if !(t > 0.0 && t < 1.0) {
            return Err(Error::invalid(format!("--pseudo-threshold {t}: must be strictly between 0 and 1")));
        }
    }
    for p in [&a.labeled_model, &a.init].into_iter().flatten() {
        if !p.is_file() {
            return Err(Error::file(p, "weights file not found"));
        }
    }
    Ok(())
}

pub fn run(a: &SemiTrainArgs) -> Result<()> {
    check_args(a)?;
    let labeled = data::scan(&a.labeled)?;
    let (unl_dir, names) = scan_unlabeled(&a.unlabeled, &labeled)?;
    let order: Vec<String> = data::shuffled(names.len(), a.seed).into_iter().map(|i| names[i].clone()).collect();
    let total_rounds = order.len().div_ceil(a.per_round);
    let rounds = a.rounds.unwrap_or(total_rounds);
    if rounds > total_rounds {
        return Err(Error::invalid(format!(
            "--rounds {rounds}: {} unlabelled images at --per-round {} make only {total_rounds} rounds",
            order.len(),
            a.per_round
        )));
    }

    mkdir(&a.out)?;
    let state_path = a.out.join(STATE);
    let mut state = if state_path.is_file() {
        if !a.resume {
            return Err(Error::file(&state_path, "exists: this folder holds a semi-train run; pass --resume to continue it or choose another --out"));
        }
        let s = State::load(&state_path)?;
        if s.seed != a.seed || s.per_round != a.per_round || s.size != a.size || s.order != order {
            return Err(Error::file(
                &state_path,
                format!(
                    "was started with seed {}, per-round {}, size {} and {} unlabelled images; this call has seed {}, per-round {}, size {} and {} (same unlabelled folder needed)",
                    s.seed, s.per_round, s.size, s.order.len(), a.seed, a.per_round, a.size, order.len()
                ),
            ));
        }
        s
    } else {
        if a.resume {
            return Err(Error::file(&state_path, "not found: nothing to resume"));
        }
        let s = State { path: state_path, seed: a.seed, per_round: a.per_round, size: a.size, order, done: Vec::new() };
        s.save()?;
        s
    };
    let run = Runner { a, log: Log(a.out.join("semi.log")) };
    let log = &run.log;
    log.line(&format!(
        "{} labelled images from {}, {} unlabelled from {}, {} per round: {rounds} of {total_rounds} rounds, {} done",
        labeled.len(),
        a.labeled.display(),
        state.order.len(),
        unl_dir.display(),
        a.per_round,
        state.rounds_done()
    ))?;

    // The pool starts as the labelled set (public: Doctor-label copied into Hybrid-label).
    let pool = a.out.join("pool");
    for d in ["Imgs", "GT", "Edge"] {
        mkdir(&pool.join(d))?;
    }
    for s in &labeled {
        let st = stem(&s.image);
        copy_atomic(&s.mask, &pool.join("GT").join(format!("{st}.png")))?;
        let edge_dst = pool.join("Edge").join(format!("{st}.png"));
        match &s.edge {
            Some(e) => copy_atomic(e, &edge_dst)?,
            None => {
                let m = image::open(&s.mask).map_err(|e| Error::file(&s.mask, format!("cannot decode image: {e}")))?.to_luma8();
                write_gray_png(&edge_dst, &data::edge_from_mask(&m))?;
            }
        }
        copy_atomic(&s.image, &pool.join("Imgs").join(file_name(&s.image)))?;
    }
    let models = a.out.join("models");
    mkdir(&models)?;

    // Step 1: the labelled model.
    let labeled_model = models.join("labeled.safetensors");
    if state.is_done("labeled") && labeled_model.is_file() {
        log.line("labelled model: done, skipping")?;
    } else {
        match &a.labeled_model {
            Some(w) => {
                copy_atomic(w, &labeled_model)?;
                log.line(&format!("labelled model: {}", w.display()))?;
            }
            None => run.stage("labeled", &a.labeled, a.init.as_deref(), a.labeled_epochs, a.train_lr, a.train_batch, a.seed, &labeled_model)?,
        }
        state.mark("labeled")?;
        run.remove_stage_dir("labeled");
    }

    // Step 2: pseudo-label rounds.
    let mut current = match state.rounds_done() {
        0 => labeled_model.clone(),
        r => round_model(&a.out, r),
    };
    if !current.is_file() {
        return Err(Error::file(&current, "missing: the state file says its round is done; cannot continue the chain"));
    }
    for r in 1..=rounds {
        let tag = format!("round-{r:03}");
        if state.is_done(&tag) {
            log.line(&format!("round {r}/{rounds}: done, skipping"))?;
            continue;
        }
        let lo = (r - 1) * a.per_round;
        let picked = &state.order[lo..(lo + a.per_round).min(state.order.len())];
        run.pseudo_label(&current, &unl_dir, picked, &pool)?;
        let pool_size = data::scan(&pool)?.len();
        log.line(&format!("round {r}/{rounds}: pseudo-labelled {} with {}; pool {pool_size} images", picked.join(", "), file_name(&current)))?;
        let next = round_model(&a.out, r);
        run.stage(&tag, &pool, Some(&current), a.epochs_per_round, a.lr, a.batch, a.seed.wrapping_add(r as u64), &next)?;
        state.mark(&tag)?;
        run.remove_stage_dir(&tag);
        if r > 1 {
            let _ = std::fs::remove_file(&current);
        }
        current = next;
    }

    // Step 3: Semi-Inf-Net = pool model (from the initial weights) fine-tuned on the labelled set.
    let done_rounds = state.rounds_done();
    let mut base = current.clone();
    if a.pool_epochs > 0 && done_rounds > 0 {
        let tag = format!("pool-after-{done_rounds}");
        let pool_model = models.join("pool.safetensors");
        if state.is_done(&tag) && pool_model.is_file() {
            log.line(&format!("{tag}: done, skipping"))?;
        } else {
            run.stage(&tag, &pool, a.init.as_deref(), a.pool_epochs, a.train_lr, a.train_batch, a.seed, &pool_model)?;
            state.mark(&tag)?;
            run.remove_stage_dir(&tag);
        }
        base = pool_model;
    }
    let final_path = a.out.join("Semi-Inf-Net.safetensors");
    if a.finetune_epochs > 0 {
        let tag = format!("finetune-after-{done_rounds}");
        if state.is_done(&tag) && final_path.is_file() {
            log.line(&format!("{tag}: done, skipping"))?;
        } else {
            run.stage(&tag, &a.labeled, Some(&base), a.finetune_epochs, a.train_lr, a.train_batch, a.seed, &final_path)?;
            state.mark(&tag)?;
            run.remove_stage_dir(&tag);
        }
    } else {
        copy_atomic(&base, &final_path)?;
    }
    if let Some(dst) = &a.export_f16 {
        super::export::write_f16(&final_path, dst)?;
        log.line(&format!("exported f16 weights to {}", dst.display()))?;
    }
    log.line(&format!("done: {}", final_path.display()))?;
    Ok(())
}
