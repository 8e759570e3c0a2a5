//! The `train-step` and `train` commands.

use super::checkpoint;
use super::net::{Batch, TrainNet};
use crate::error::{Error, Result};
use crate::weights::{read_safetensors, Tensor};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct TrainStepArgs {
    /// Weights (safetensors state_dict with the public key names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Batch: `images` N×3×H×W, `masks` and `edges` N×1×H×W (f32/f16/bf16), H and W multiples of 32.
    #[arg(long)]
    pub batch: PathBuf,
    /// Output: `loss` (scalar) and the gradient of every parameter under its public key.
    #[arg(long)]
    pub dump_grads: PathBuf,
}

fn check_writable(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(Error::file(path, format!("cannot write: directory {} does not exist", dir.display()))),
        _ => Ok(()),
    }
}

/// Reads `images`, `masks`, `edges` from a safetensors file.
pub fn read_batch(path: &Path) -> Result<(Tensor, Tensor, Tensor)> {
    let mut t = read_safetensors(path)?;
    let mut take = |name: &str| {
        t.remove(name).ok_or_else(|| Error::file(path, format!("no tensor named `{name}` (a batch holds `images`, `masks`, `edges`)")))
    };
    let (images, masks, edges) = (take("images")?, take("masks")?, take("edges")?);
    let batch = Batch { images: &images, masks: &masks, edges: &edges };
    TrainNet::check_batch(&batch).map_err(|e| Error::file(path, e.to_string()))?;
    Ok((images, masks, edges))
}

/// One forward/backward in training mode; writes the loss and every parameter's gradient.
pub fn train_step(a: &TrainStepArgs) -> Result<()> {
    check_writable(&a.dump_grads)?;
    let loaded = checkpoint::load(&a.weights)?;
    let mut net = TrainNet::from_state_dict(&loaded.state, &loaded.num_batches_tracked)?;
    let (images, masks, edges) = read_batch(&a.batch)?;
    let parts = net
        .forward_backward(&Batch { images: &images, masks: &masks, edges: &edges })
        .map_err(|e| Error::file(&a.batch, e.to_string()))?;
    let mut out = vec![("loss".to_string(), Tensor { shape: vec![], data: vec![parts.total() as f32] })];
    out.extend(net.gradients());
    crate::io::write_safetensors(&a.dump_grads, &out)?;
    eprintln!(
        "loss {:.6} (edge {:.6}, map5 {:.6}, map4 {:.6}, map3 {:.6}, map2 {:.6})",
        parts.total(),
        parts.edge,
        parts.maps[0],
        parts.maps[1],
        parts.maps[2],
        parts.maps[3]
    );
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    Public,
    Step,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Training set in the COVID-SemiSeg layout: Imgs/, GT/ and optionally Edge/.
    #[arg(long)]
    pub data: PathBuf,
    /// Epochs to train (numbered from 1, as the public loop counts for its lr schedule).
    #[arg(long)]
    pub epochs: usize,
    /// Images per batch (public default 24).
    #[arg(long)]
    pub batch: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Training size (multiple of 32); each batch is also used at 0.75× and 1.25× of it.
    #[arg(long, default_value_t = 352)]
    pub size: usize,
    /// Initial weights (safetensors, public key names). Without it, weights are random (the public
    /// recipe starts from an ImageNet Res2Net).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Seed of the shuffling (and of the random initialisation without --init).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from OUT/last.safetensors and OUT/last.optim.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Output directory: checkpoints, optimiser state, train.log.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep a numbered checkpoint every N epochs (public: 10); the last epoch always gets one.
    #[arg(long, default_value_t = 10)]
    pub save_every: usize,
    /// Gradient clamp (public --clip).
    #[arg(long, default_value_t = 0.5)]
    pub clip: f32,
    /// lr decay factor and period of the public adjust_lr.
    #[arg(long, default_value_t = 0.1)]
    pub decay_rate: f64,
    #[arg(long, default_value_t = 50)]
    pub decay_epoch: usize,
    /// `public`: the public adjust_lr's actual, compounding decay (default; it produced the published
    /// models); `step`: a plain ×decay_rate every decay_epoch epochs, as the paper's text reads.
    #[arg(long, value_enum, default_value = "public")]
    pub lr_schedule: LrSchedule,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Widths of the randomly initialised network when no --init is given (ignored with --init/--resume).
    #[arg(long, value_enum, default_value_t = Variant::Full)]
    pub variant: Variant,
    /// Also write the final weights as f16 safetensors (public key names) to this path.
    #[arg(long)]
    pub export_f16: Option<PathBuf>,
}

/// Channel widths and blocks of a randomly initialised network.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Variant {
    /// Inf-Net as published (Res2Net-50 v1b 26w×4s, channel 32).
    #[default]
    Full,
    /// The reduced demo model: one Res2Net block per stage at a quarter of the public widths.
    Demo,
    /// The test variant (blocks 2,1,2,1; widths 8..32).
    Tiny,
}

impl Variant {
    pub fn spec(self) -> crate::model::synthetic::Spec {
        use crate::model::synthetic::Spec;
        match self {
            Variant::Full => Spec::full(),
            Variant::Demo => Spec::demo(),
            Variant::Tiny => Spec::tiny(),
        }
    }
}

const LAST: &str = "last.safetensors";
const LAST_OPTIM: &str = "last.optim.safetensors";

fn meta_map(pairs: &[(&str, String)]) -> std::collections::HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Adam moments under `exp_avg.<key>` / `exp_avg_sq.<key>`, with the epoch and step count in the metadata.
fn save_optimizer(path: &Path, net: &TrainNet, opt: &super::adam::Adam, epoch: usize, seed: u64) -> Result<()> {
    let mut t = Vec::new();
    for ((p, m), v) in net.params.iter().zip(&opt.exp_avg).zip(&opt.exp_avg_sq) {
        for (tag, d) in [("exp_avg", m), ("exp_avg_sq", v)] {
            t.push((format!("{tag}.{}", p.name), checkpoint::f32_raw(&Tensor { shape: p.shape.clone(), data: d.clone() })));
        }
    }
    let meta = meta_map(&[("epoch", epoch.to_string()), ("step", opt.step.to_string()), ("seed", seed.to_string())]);
    crate::io::write_atomic(path, &checkpoint::serialize(&t, Some(meta))?)
}

fn load_optimizer(path: &Path, net: &TrainNet) -> Result<(super::adam::Adam, usize)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read optimiser state: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let get = |k: &str| -> Result<u64> {
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::file(path, format!("optimiser state lacks metadata `{k}`")))
    };
    let (epoch, step) = (get("epoch")? as usize, get("step")?);
    let t = read_safetensors(path)?;
    let mut opt = super::adam::Adam::new(&net.params);
    opt.step = step;
    for ((p, m), v) in net.params.iter().zip(&mut opt.exp_avg).zip(&mut opt.exp_avg_sq) {
        for (tag, d) in [("exp_avg", m), ("exp_avg_sq", v)] {
            let k = format!("{tag}.{}", p.name);
            let src = t.get(&k).ok_or_else(|| Error::file(path, format!("optimiser state lacks `{k}`")))?;
            if src.shape != p.shape {
                return Err(Error::file(path, format!("`{k}` is {:?}, the weights say {:?}", src.shape, p.shape)));
            }
            d.copy_from_slice(&src.data);
        }
    }
    Ok((opt, epoch))
}

/// Appends a line to the log file.
struct Log(std::fs::File, PathBuf);

impl Log {
    fn line(&mut self, s: &str) -> Result<()> {
        use std::io::Write;
        writeln!(self.0, "{s}").map_err(|e| Error::file(&self.1, format!("cannot write log: {e}")))
    }
}

/// The public training loop: per epoch a seeded shuffle, per batch three scales with one Adam step each.
pub fn train(a: &TrainArgs) -> Result<()> {
    if a.epochs == 0 || a.batch == 0 {
        return Err(Error::invalid("--epochs and --batch must be at least 1"));
    }
    if a.size == 0 || !a.size.is_multiple_of(32) {
        return Err(Error::invalid(format!("--size {} must be a positive multiple of 32", a.size)));
    }
    for r in super::adam::SIZE_RATES {
        if super::adam::multiscale_size(a.size, r) == 0 {
            return Err(Error::invalid(format!("--size {} is too small for the 0.75× scale", a.size)));
        }
    }
    let samples = super::data::scan(&a.data)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::file(&a.out, format!("cannot create output directory: {e}")))?;
    let log_path = a.out.join("train.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::file(&log_path, format!("cannot open log: {e}")))?;
    let mut log = Log(file, log_path);

    let (loaded, first_epoch, opt) = if a.resume {
        let w = a.out.join(LAST);
        let loaded = checkpoint::load(&w)?;
        let net = TrainNet::from_state_dict(&loaded.state, &loaded.num_batches_tracked)?;
        let (opt, done) = load_optimizer(&a.out.join(LAST_OPTIM), &net)?;
        let saved = checkpoint::metadata_value(&w, "epoch")?;
        if saved.as_deref() != Some(done.to_string().as_str()) {
            return Err(Error::file(&w, format!("is from epoch {} but the optimiser state is from epoch {done}; cannot resume consistently", saved.unwrap_or_else(|| "?".into()))));
        }
        (loaded, done + 1, Some(opt))
    } else if let Some(init) = &a.init {
        (checkpoint::load(init)?, 1, None)
    } else {
        let sd = crate::model::synthetic::state_dict(&a.variant.spec(), a.seed);
        (checkpoint::Loaded { state: sd, num_batches_tracked: Default::default(), passthrough: Default::default() }, 1, None)
    };
    let mut net = TrainNet::from_state_dict(&loaded.state, &loaded.num_batches_tracked)?;
    let mut opt = opt.unwrap_or_else(|| super::adam::Adam::new(&net.params));
    let threads = if a.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { a.threads };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Device(format!("cannot start {threads} CPU threads: {e}")))?;

    let batches_per_epoch = samples.len().div_ceil(a.batch);
    log.line(&format!(
        "start: {} samples from {}, epochs {first_epoch}..={}, batch {}, size {} (scales {:?}), lr {}, seed {}, {} parameters, {threads} threads",
        samples.len(),
        a.data.display(),
        a.epochs,
        a.batch,
        a.size,
        super::adam::SIZE_RATES.map(|r| super::adam::multiscale_size(a.size, r)),
        a.lr,
        a.seed,
        net.param_count()
    ))?;
    if first_epoch > a.epochs {
        log.line(&format!("nothing to do: {} epochs already done", first_epoch - 1))?;
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(((a.epochs + 1 - first_epoch) * batches_per_epoch) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} batches, eta {eta} {msg}")
            .map_err(|e| Error::invalid(format!("progress bar: {e}")))?
            .progress_chars("=> "),
    );
    for epoch in first_epoch..=a.epochs {
        let lr = match a.lr_schedule {
            LrSchedule::Public => super::adam::public_lr(a.lr, epoch, a.decay_rate, a.decay_epoch),
            LrSchedule::Step => super::adam::step_lr(a.lr, epoch, a.decay_rate, a.decay_epoch),
        };
        let order = super::data::shuffled(samples.len(), a.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut sums = super::loss::LossParts::default();
        for chunk in order.chunks(a.batch) {
            let picked: Vec<&super::data::Sample> = chunk.iter().map(|&i| &samples[i]).collect();
            let (images, masks, edges) = super::data::load_batch(&picked, a.size)?;
            for rate in super::adam::SIZE_RATES {
                let side = super::adam::multiscale_size(a.size, rate);
                let scaled;
                let (im, ma, ed) = if rate != 1.0 {
                    scaled = (super::adam::rescale(&images, side), super::adam::rescale(&masks, side), super::adam::rescale(&edges, side));
                    (&scaled.0, &scaled.1, &scaled.2)
                } else {
                    (&images, &masks, &edges)
                };
                let parts = pool.install(|| net.forward_backward(&Batch { images: im, masks: ma, edges: ed }))?;
                if !parts.total().is_finite() {
                    return Err(Error::invalid(format!("loss became {} in epoch {epoch} (try a lower --lr)", parts.total())));
                }
                super::adam::clip_gradients(&mut net.params, a.clip);
                opt.update(&mut net.params, lr);
                // The public script records the losses of the rate-1 pass.
                if rate == 1.0 {
                    sums.edge += parts.edge;
                    for k in 0..4 {
                        sums.maps[k] += parts.maps[k];
                    }
                    bar.set_message(format!("epoch {epoch} loss {:.4}", parts.total()));
                }
            }
            bar.inc(1);
        }
        let nb = batches_per_epoch as f64;
        let mean = |v: f64| v / nb;
        log.line(&format!(
            "epoch {epoch} lr {lr:.3e} loss {:.6} edge {:.6} map5 {:.6} map4 {:.6} map3 {:.6} map2 {:.6}",
            mean(sums.total()),
            mean(sums.edge),
            mean(sums.maps[0]),
            mean(sums.maps[1]),
            mean(sums.maps[2]),
            mean(sums.maps[3])
        ))?;
        if epoch % a.save_every.max(1) == 0 || epoch == a.epochs {
            let p = a.out.join(format!("Inf-Net-{epoch}.safetensors"));
            checkpoint::save(&p, &net, &loaded.passthrough, None)?;
            log.line(&format!("saved {}", p.display()))?;
        }
        // Both files carry the epoch; a crash between the two writes is caught on resume, not silently mixed.
        save_optimizer(&a.out.join(LAST_OPTIM), &net, &opt, epoch, a.seed)?;
        checkpoint::save(&a.out.join(LAST), &net, &loaded.passthrough, Some(meta_map(&[("epoch", epoch.to_string())])))?;
    }
    bar.finish_and_clear();
    if let Some(dst) = &a.export_f16 {
        super::export::write_f16(&a.out.join(format!("Inf-Net-{}.safetensors", a.epochs)), dst)?;
        log.line(&format!("exported f16 weights to {}", dst.display()))?;
    }
    log.line("done")?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct BenchTrainArgs {
    /// Weights (safetensors state_dict with the public key names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Batch: `images` N×3×H×W, `masks` and `edges` N×1×H×W, as for `train-step`.
    #[arg(long)]
    pub batch: PathBuf,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed steps first: the first one plans the buffers, later ones are what training repeats.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Learning rate of the Adam steps.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Gradient clamp (public --clip).
    #[arg(long, default_value_t = 0.5)]
    pub clip: f32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Times whole training steps (training-mode forward, public loss, backward, clamp, Adam) on one batch,
/// the unit `tools/bench_train_peers.py` compares with PyTorch.
pub fn bench_train(a: &BenchTrainArgs) -> Result<()> {
    if a.steps == 0 {
        return Err(Error::invalid("--steps must be at least 1"));
    }
    let loaded = checkpoint::load(&a.weights)?;
    let mut net = TrainNet::from_state_dict(&loaded.state, &loaded.num_batches_tracked)?;
    let (images, masks, edges) = read_batch(&a.batch)?;
    let batch = Batch { images: &images, masks: &masks, edges: &edges };
    let (n, h, w) = TrainNet::check_batch(&batch)?;
    let threads = if a.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { a.threads };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Device(format!("cannot start {threads} CPU threads: {e}")))?;
    let mut opt = super::adam::Adam::new(&net.params);
    let mut times = Vec::with_capacity(a.steps);
    let mut losses = Vec::with_capacity(a.warmup + a.steps);
    for k in 0..a.warmup + a.steps {
        let t = std::time::Instant::now();
        let parts = pool.install(|| -> Result<_> {
            let parts = net.forward_backward(&batch).map_err(|e| Error::file(&a.batch, e.to_string()))?;
            super::adam::clip_gradients(&mut net.params, a.clip);
            opt.update(&mut net.params, a.lr);
            Ok(parts)
        })?;
        let dt = t.elapsed().as_secs_f64();
        if k >= a.warmup {
            times.push(dt);
        }
        losses.push(parts.total());
    }
    let st = crate::bench::Stats::of(&times);
    let rss = crate::bench::peak_rss_mib();
    let (acts, grads, scratch) = net.planned_mib().unwrap_or_default();
    let params_mib = (net.param_count() * std::mem::size_of::<f32>()) as f64 / (1 << 20) as f64;
    if a.json {
        let v = serde_json::json!({
            "engine": "infnet",
            "batch": n, "height": h, "width": w, "threads": threads,
            "warmup": a.warmup, "steps": a.steps,
            "step_s": times, "median_s": st.median,
            "images_per_s": n as f64 / st.median,
            "peak_rss_mib": rss, "losses": losses,
            "planned_mib": {"activations": acts, "gradients": grads, "scratch": scratch, "parameters_x4": 4.0 * params_mib},
        });
        println!("{v}");
    } else {
        println!(
            "infnet train step: batch {n} at {h}×{w}, {threads} threads: median {:.3} s ({:.2} images/s) over {} steps, peak RSS {} MiB (planned: activations {acts:.0}, gradients {grads:.0}, scratch {scratch:.0}; parameters, gradients and Adam moments {:.0}), losses {:?}",
            st.median,
            n as f64 / st.median,
            a.steps,
            rss.map_or("?".into(), |r| format!("{r:.0}")),
            4.0 * params_mib,
            losses
        );
    }
    Ok(())
}
