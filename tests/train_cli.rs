//! `infnet train` end to end on generated slices: the loss falls, checkpoints and optimiser state are
//! written and resumable, bad datasets are refused before training with the file named, and (where
//! INFNET_TORCH_PY names a Python with torch) a checkpoint loads into the public PyTorch model strictly.

mod common;

use common::{fixture_path, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes `n` synthetic CT-like slices (noisy background, one brighter ellipse = the infection mask).
fn synthetic_dataset(root: &Path, n: usize, w: u32, h: u32) {
    for d in ["Imgs", "GT"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..n {
        let (cx, cy) = (w as f32 * (0.3 + 0.1 * i as f32), h as f32 * (0.6 - 0.08 * i as f32));
        let (rx, ry) = (w as f32 * 0.18, h as f32 * 0.14);
        let inside = |x: u32, y: u32| ((x as f32 - cx) / rx).powi(2) + ((y as f32 - cy) / ry).powi(2) <= 1.0;
        let noise = common::random((w * h) as usize, 40 + i as u64);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = if inside(x, y) { 190.0 } else { 70.0 } + 25.0 * noise[(y * w + x) as usize];
            image::Rgb([v as u8; 3])
        });
        let mask = image::GrayImage::from_fn(w, h, |x, y| image::Luma([if inside(x, y) { 255 } else { 0 }]));
        img.save(root.join("Imgs").join(format!("slice{i}.jpg"))).unwrap();
        mask.save(root.join("GT").join(format!("slice{i}.png"))).unwrap();
    }
}

fn infnet(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_infnet"));
    c.args(args);
    for p in extra {
        c.arg(p);
    }
    c.output().unwrap()
}

fn train(data: &Path, out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let init = fixture_path("tiny.safetensors");
    let mut args = vec!["train", "--epochs", epochs, "--batch", "2", "--size", "64", "--lr", "1e-3", "--seed", "3", "--threads", "2"];
    args.extend_from_slice(extra);
    let mut c = Command::new(env!("CARGO_BIN_EXE_infnet"));
    c.args(&args).arg("--data").arg(data).arg("--out").arg(out);
    if !extra.contains(&"--resume") {
        c.arg("--init").arg(&init);
    }
    c.output().unwrap()
}

/// The mean loss of each epoch, from train.log.
fn epoch_losses(out: &Path) -> Vec<f64> {
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    log.lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "loss").unwrap();
            w[i + 1].parse().unwrap()
        })
        .collect()
}

#[test]
fn training_lowers_the_loss_and_resumes() {
    let dir = temp_dir("train-e2e");
    let (data, out) = (dir.join("data"), dir.join("out"));
    synthetic_dataset(&data, 4, 80, 72);
    let r = train(&data, &out, "4", &[]);
    assert!(r.status.success(), "train failed: {}", String::from_utf8_lossy(&r.stderr));
    let losses = epoch_losses(&out);
    eprintln!("epoch losses {losses:?}");
    assert_eq!(losses.len(), 4);
    assert!(losses[3] < 0.9 * losses[0], "loss did not fall: {losses:?}");
    for f in ["Inf-Net-4.safetensors", "last.safetensors", "last.optim.safetensors"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The checkpoint is a complete state_dict for inference as well.
    infnet::InfNet::load(out.join("Inf-Net-4.safetensors")).unwrap();

    let r = train(&data, &out, "5", &["--resume"]);
    assert!(r.status.success(), "resume failed: {}", String::from_utf8_lossy(&r.stderr));
    let losses = epoch_losses(&out);
    assert_eq!(losses.len(), 5, "resume should run only epoch 5");
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.contains("epochs 5..=5"), "resume should start at epoch 5:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_datasets_are_refused_before_training_naming_the_file() {
    let dir = temp_dir("train-bad");
    let data = dir.join("data");
    synthetic_dataset(&data, 2, 40, 40);
    std::fs::remove_file(data.join("GT").join("slice1.png")).unwrap();
    let r = train(&data, &dir.join("out"), "1", &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("slice1.jpg") && err.contains("no mask"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error expected: {err}");

    image::GrayImage::new(39, 40).save(data.join("GT").join("slice1.png")).unwrap();
    let r = train(&data, &dir.join("out"), "1", &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("slice1.png") && err.contains("39×40"), "{err}");

    std::fs::write(data.join("GT").join("slice1.png"), b"not a png").unwrap();
    let r = train(&data, &dir.join("out"), "1", &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("slice1.png"), "{err}");
    assert!(!dir.join("out").join("last.safetensors").exists(), "nothing may be trained on a bad dataset");

    let batch = dir.join("batch.safetensors");
    std::fs::write(&batch, b"garbage").unwrap();
    let r = infnet(&["train-step", "--weights"], &[&fixture_path("tiny.safetensors"), Path::new("--batch"), &batch, Path::new("--dump-grads"), &dir.join("g.safetensors")]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("batch.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn torch_python() -> Option<PathBuf> {
    std::env::var_os("INFNET_TORCH_PY").map(PathBuf::from)
}

#[test]
fn checkpoint_loads_in_pytorch_strict() {
    let Some(py) = torch_python() else {
        eprintln!("skipped: set INFNET_TORCH_PY to a Python with torch and safetensors to run this test");
        return;
    };
    let dir = temp_dir("train-torch");
    let (data, out) = (dir.join("data"), dir.join("out"));
    synthetic_dataset(&data, 2, 64, 64);
    let r = train(&data, &out, "1", &[]);
    assert!(r.status.success(), "train failed: {}", String::from_utf8_lossy(&r.stderr));
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools");
    let script = r#"
import sys
sys.path.insert(0, sys.argv[1])
import torch, public_infnet as P
from safetensors.torch import load_file
sd = load_file(sys.argv[2])
model = P.build_model(P.TINY, seed=0)
model.load_state_dict(sd, strict=True)
nbt = [v for k, v in model.state_dict().items() if k.endswith('num_batches_tracked')]
assert all(v.dtype == torch.int64 and v.dim() == 0 for v in nbt)
# 2 images, 1 batch, 3 scales: every BN saw 3 batches on top of the fixture's 7.
assert all(int(v) == 10 for v in nbt), set(int(v) for v in nbt)
assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
print('ok', len(sd))
"#;
    let r = Command::new(py).arg("-c").arg(script).arg(&tools).arg(out.join("Inf-Net-1.safetensors")).output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    assert!(r.status.success() && so.starts_with("ok"), "PyTorch strict load failed:\n{so}\n{se}");
    eprintln!("PyTorch load_state_dict(strict=True): {}", so.trim());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench-train` times whole steps on a batch file; its first loss is the one-step fixture's loss.
#[test]
fn bench_train_reports_steps_and_memory() {
    let (w, b) = (fixture_path("tiny.safetensors"), fixture_path("train_step.safetensors"));
    let out = infnet(&["bench-train", "--steps", "2", "--warmup", "1", "--threads", "2", "--json", "--weights"], &[&w, Path::new("--batch"), &b]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step_s"].as_array().unwrap().len(), 2);
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 0.0);
    let losses: Vec<f64> = v["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 3);
    let want = infnet::weights::read_safetensors(&b).unwrap()["loss"].data[0] as f64;
    assert!((losses[0] - want).abs() <= 1e-5 * want, "first loss {} vs PyTorch {want}", losses[0]);

    let bad = infnet(&["bench-train", "--steps", "0", "--weights"], &[&w, Path::new("--batch"), &b]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--steps must be at least 1"));
}
