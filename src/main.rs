//! The `infnet` command line.

use clap::{Parser, Subcommand};
use infnet::engine::{self, Device};
use infnet::error::{Error, Result};
use infnet::InfNet;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "infnet", version, about = "Inf-Net lung infection segmentation (CPU and CUDA engine)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the network on a tensor: IN holds `input` (N×3×H×W f32); OUT receives the five logit maps.
    Run {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// cpu, cuda or auto (CUDA when a GPU is usable, else CPU).
        #[arg(long, default_value = "auto")]
        device: Device,
        /// CPU threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Segment CT slices (PNG/JPEG/TIFF) into infection probability maps.
    Segment(infnet::segment::SegmentArgs),
    /// Describe a weights file: variant, parameters, dtypes, GFLOPs.
    Info {
        #[arg(long)]
        weights: PathBuf,
        /// Input side for the GFLOP count.
        #[arg(long, default_value_t = 352)]
        size: usize,
    },
    /// Measure forward latency and throughput.
    Bench(infnet::bench::BenchArgs),
    /// One training-mode forward/backward on a batch; dump the loss and every parameter's gradient.
    TrainStep(infnet::train::cli::TrainStepArgs),
    /// Train on a COVID-SemiSeg-style folder with the public recipe (Adam, multi-scale, clamped gradients).
    Train(infnet::train::cli::TrainArgs),
    /// Semi-Inf-Net: pseudo-label unlabelled slices round by round, as the public PseudoGenerator, then train on the pool.
    SemiTrain(infnet::train::semi::SemiTrainArgs),
    /// Time whole training steps (forward, loss, backward, clamp, Adam) on one batch.
    BenchTrain(infnet::train::cli::BenchTrainArgs),
    /// Score prediction maps against ground-truth masks as the public Inf-Net MATLAB EvaluationTool does.
    Eval(infnet::eval::EvalArgs),
    /// Write synthetic chest CT slices with infection masks in the COVID-SemiSeg layout.
    Phantom(infnet::phantom::PhantomArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infnet: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run { weights, input, output, device, threads } => run(weights, input, output, device, threads),
        Cmd::Segment(a) => infnet::segment::run(&a),
        Cmd::Info { weights, size } => info(weights, size),
        Cmd::Bench(a) => infnet::bench::run(&a),
        Cmd::TrainStep(a) => infnet::train::cli::train_step(&a),
        Cmd::Train(a) => infnet::train::cli::train(&a),
        Cmd::SemiTrain(a) => infnet::train::semi::run(&a),
        Cmd::BenchTrain(a) => infnet::train::cli::bench_train(&a),
        Cmd::Eval(a) => infnet::eval::run(&a),
        Cmd::Phantom(a) => infnet::phantom::run(&a),
    }
}

fn run(weights: PathBuf, input: PathBuf, output: PathBuf, device: Device, threads: usize) -> Result<()> {
    // Fail on an unwritable destination before spending time on the forward.
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::file(&output, format!("cannot write: directory {} does not exist", dir.display())));
        }
    }
    let model = InfNet::load(&weights)?;
    let tensors = infnet::weights::read_safetensors(&input)?;
    let x = tensors
        .get("input")
        .ok_or_else(|| Error::file(&input, format!("no tensor named `input` (found: {})", tensors.keys().cloned().collect::<Vec<_>>().join(", "))))?;
    engine::check_input(x).map_err(|e| Error::file(&input, e.to_string()))?;
    let mut eng = engine::create(&model, device, threads)?;
    let outs = eng.forward(x)?;
    infnet::io::write_safetensors(&output, &outs)
}

fn info(weights: PathBuf, size: usize) -> Result<()> {
    engine::check_size(size, size)?;
    let sd = infnet::StateDict::load(&weights)?;
    let model = InfNet::from_state_dict(&sd)?;
    let c = &model.config;
    let params: usize = sd.tensors.values().map(|t| t.numel()).sum();
    let variant = if c.is_public_full() { "Inf-Net (Res2Net-50 v1b 26w×4s, as published)" } else { "reduced Inf-Net variant" };
    println!("weights        {}", weights.display());
    println!("variant        {variant}");
    println!("blocks         {:?} (scale {})", c.blocks, c.scale);
    println!("split widths   {:?}", c.widths);
    println!("stage outputs  {:?}", c.stage_out);
    println!("stem           {:?}", c.stem);
    println!("rfb channel    {}", c.rfb_channel);
    println!("ra widths      {:?} (ra4, ra3, ra2)", c.ra_widths);
    println!("edge channel   {}", c.edge_channel);
    println!("parameters     {} ({} after folding BatchNorm)", params, model.graph.param_count());
    let dt: Vec<String> = sd.dtype_summary().into_iter().map(|(d, n)| format!("{d}: {n}")).collect();
    println!("dtypes         {}", dt.join(", "));
    let macs = model.graph.macs(size, size);
    println!("GFLOPs         {:.2} at {size}×{size} per image ({:.2} G multiply-adds)", 2.0 * macs as f64 / 1e9, macs as f64 / 1e9);
    Ok(())
}
