//! `infnet semi-train` end to end on tiny phantoms (64×64, the tiny variant, one epoch per stage): the
//! pool grows by --per-round images a round with pseudo-labels and edges in the COVID-SemiSeg layout,
//! --resume skips completed rounds and stages, bad inputs fail naming the file; and the f16 export of a
//! checkpoint loads and predicts like the f32 original.

mod common;

use common::temp_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn infnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infnet")).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Labelled phantoms in DIR/lab, unlabelled ones (renamed u*.png so names differ) in DIR/unl.
fn phantoms(dir: &Path, labelled: u64, unlabelled: u64) -> (PathBuf, PathBuf) {
    let (lab, unl0, unl) = (dir.join("lab"), dir.join("unl0"), dir.join("unl"));
    for (out, n, seed) in [(&lab, labelled, "1"), (&unl0, unlabelled, "2")] {
        let r = infnet(&["phantom", "--out", s(out), "--count", &n.to_string(), "--size", "64", "--seed", seed]);
        assert!(r.status.success(), "phantom: {}", String::from_utf8_lossy(&r.stderr));
    }
    std::fs::create_dir_all(&unl).unwrap();
    for i in 0..unlabelled {
        std::fs::copy(unl0.join("Imgs").join(format!("{i}.png")), unl.join(format!("u{i}.png"))).unwrap();
    }
    (lab, unl)
}

fn semi(lab: &Path, unl: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "semi-train", "--labeled", s(lab), "--unlabeled", s(unl), "--out", s(out), "--per-round", "2", "--epochs-per-round", "1",
        "--batch", "2", "--size", "64", "--variant", "tiny", "--labeled-epochs", "2", "--train-batch", "2", "--lr", "1e-3",
        "--train-lr", "1e-3", "--seed", "5", "--threads", "2",
    ];
    for (opt, v) in [("--pool-epochs", "1"), ("--finetune-epochs", "1")] {
        if !extra.contains(&opt) {
            args.extend([opt, v]);
        }
    }
    args.extend_from_slice(extra);
    infnet(&args)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pool_grows_by_round_and_resume_skips_done_rounds() {
    let dir = temp_dir("semi-e2e");
    let (lab, unl) = phantoms(&dir, 3, 4);
    let out = dir.join("out");

    let r = semi(&lab, &unl, &out, &["--rounds", "1"]);
    assert!(r.status.success(), "semi-train failed: {}", stderr(&r));
    let pool = out.join("pool");
    let imgs = names(&pool.join("Imgs"));
    assert_eq!(imgs.len(), 5, "3 labelled + 2 pseudo-labelled: {imgs:?}");
    let pseudo: Vec<&String> = imgs.iter().filter(|n| n.starts_with('u')).collect();
    assert_eq!(pseudo.len(), 2);
    for n in &pseudo {
        for sub in ["GT", "Edge"] {
            let p = pool.join(sub).join(n.as_str());
            let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_luma8();
            assert_eq!(img.dimensions(), (64, 64), "{} has the image's size", p.display());
            if sub == "Edge" {
                assert!(img.pixels().all(|p| p[0] == 0 || p[0] == 255), "edges are binary");
            } else {
                // The public pseudo-label is min-max normalised: it spans 0..255.
                let (lo, hi) = img.pixels().fold((255u8, 0u8), |(l, h), p| (l.min(p[0]), h.max(p[0])));
                assert!(lo == 0 && hi == 255, "{} spans {lo}..{hi}", p.display());
            }
        }
    }
    let semi_w = out.join("Semi-Inf-Net.safetensors");
    infnet::InfNet::load(&semi_w).unwrap();
    assert!(out.join("models/round-001.safetensors").is_file());
    assert!(names(&out.join("stages")).is_empty(), "finished stage folders are removed");

    // Same folder without --resume: refused, naming the state file.
    let r = semi(&lab, &unl, &out, &["--rounds", "1"]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("semi-state.json"), "{}", stderr(&r));

    // Resume with one more round: round 1 and the labelled model are skipped, the pool grows to 7.
    let r = semi(&lab, &unl, &out, &["--resume", "--rounds", "2"]);
    let e = stderr(&r);
    assert!(r.status.success(), "resume failed: {e}");
    assert!(e.contains("labelled model: done, skipping"), "{e}");
    assert!(e.contains("round 1/2: done, skipping"), "{e}");
    assert!(!e.contains("stage round-001"), "round 1 retrained: {e}");
    assert!(e.contains("stage round-002"), "{e}");
    assert_eq!(names(&pool.join("Imgs")).len(), 7);
    assert_eq!(names(&pool.join("GT")).len(), 7);
    assert_eq!(names(&pool.join("Edge")).len(), 7);
    assert!(out.join("models/round-002.safetensors").is_file());
    assert!(!out.join("models/round-001.safetensors").exists(), "older round weights are dropped");
    let state = std::fs::read_to_string(out.join("semi-state.json")).unwrap();
    for tag in ["round-001", "round-002", "pool-after-2", "finetune-after-2"] {
        assert!(state.contains(tag), "{tag} not in state: {state}");
    }

    // Everything done: a further resume trains nothing.
    let r = semi(&lab, &unl, &out, &["--resume"]);
    let e = stderr(&r);
    assert!(r.status.success(), "{e}");
    assert!(!e.contains("stage "), "retrained something: {e}");

    // A different unlabelled set cannot continue this run.
    std::fs::remove_file(unl.join("u3.png")).unwrap();
    let r = semi(&lab, &unl, &out, &["--resume"]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("semi-state.json"), "{}", stderr(&r));
}

#[test]
fn interrupted_stage_resumes_from_its_last_epoch() {
    let dir = temp_dir("semi-stage");
    let (lab, unl) = phantoms(&dir, 2, 2);
    let out = dir.join("out");
    // A labelled stage interrupted after 1 of 2 epochs: its folder holds last.safetensors from epoch 1.
    let stage = out.join("stages").join("labeled");
    let r = infnet(&[
        "train", "--data", s(&lab), "--out", s(&stage), "--epochs", "1", "--batch", "2", "--size", "64", "--variant", "tiny",
        "--lr", "1e-3", "--seed", "5", "--threads", "2",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let first = std::fs::read_to_string(stage.join("train.log")).unwrap();
    // semi-train refuses to adopt a folder without a state file via --resume, so start it plainly: it
    // finds the stage checkpoint and continues from epoch 2.
    let r = semi(&lab, &unl, &out, &["--rounds", "1"]);
    let e = stderr(&r);
    assert!(r.status.success(), "{e}");
    assert!(e.contains("stage labeled: 2 epochs") && e.contains("resuming"), "{e}");
    assert!(e.contains("epochs 2..=2") && e.contains("labeled epoch 2 "), "only epoch 2 trained: {e}\n(first run: {first})");
}

#[test]
fn bad_inputs_name_the_file() {
    let dir = temp_dir("semi-bad");
    let (lab, unl) = phantoms(&dir, 2, 2);
    // An unlabelled image with a labelled image's name.
    std::fs::copy(unl.join("u0.png"), unl.join("0.png")).unwrap();
    let r = semi(&lab, &unl, &dir.join("o1"), &[]);
    assert!(!r.status.success());
    let e = stderr(&r);
    assert!(e.contains("0.png") && e.contains("same name"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one-line error: {e}");
    std::fs::remove_file(unl.join("0.png")).unwrap();

    // A missing unlabelled folder, an undecodable image, too many rounds, --resume with nothing to resume.
    let missing = dir.join("nope");
    let r = semi(&lab, &missing, &dir.join("o2"), &[]);
    assert!(!r.status.success() && stderr(&r).contains("nope"), "{}", stderr(&r));
    std::fs::write(unl.join("broken.png"), b"not a png").unwrap();
    let r = semi(&lab, &unl, &dir.join("o3"), &[]);
    assert!(!r.status.success() && stderr(&r).contains("broken.png"), "{}", stderr(&r));
    std::fs::remove_file(unl.join("broken.png")).unwrap();
    let r = semi(&lab, &unl, &dir.join("o4"), &["--rounds", "5"]);
    assert!(!r.status.success() && stderr(&r).contains("--rounds 5"), "{}", stderr(&r));
    let r = semi(&lab, &unl, &dir.join("o5"), &["--resume"]);
    assert!(!r.status.success() && stderr(&r).contains("nothing to resume"), "{}", stderr(&r));
}

#[test]
fn f16_export_loads_and_predicts_like_f32() {
    let dir = temp_dir("semi-f16");
    let (lab, _) = phantoms(&dir, 2, 1);
    let out = dir.join("t");
    let f16 = dir.join("w16.safetensors");
    let r = infnet(&[
        "train", "--data", s(&lab), "--out", s(&out), "--epochs", "1", "--batch", "2", "--size", "64", "--variant", "tiny",
        "--threads", "2", "--export-f16", s(&f16),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let sd = infnet::StateDict::load(&f16).unwrap();
    assert!(sd.dtypes.values().all(|d| d == "f16"), "{:?}", sd.dtype_summary());
    let f32_len = std::fs::metadata(out.join("Inf-Net-1.safetensors")).unwrap().len();
    assert!(std::fs::metadata(&f16).unwrap().len() * 10 < f32_len * 6, "f16 file is about half the size");
    let a = infnet::InfNet::load(out.join("Inf-Net-1.safetensors")).unwrap();
    let b = infnet::InfNet::load(&f16).unwrap();
    let x = infnet::weights::Tensor { shape: vec![1, 3, 64, 64], data: common::random(3 * 64 * 64, 9) };
    let ya = infnet::engine::create(&a, infnet::engine::Device::Cpu, 1).unwrap().forward(&x).unwrap();
    let yb = infnet::engine::create(&b, infnet::engine::Device::Cpu, 1).unwrap().forward(&x).unwrap();
    for ((n, ta), (_, tb)) in ya.iter().zip(&yb) {
        let err = common::rel_l2(&tb.data, &ta.data);
        assert!(err < 2e-2, "{n}: f16 vs f32 relative error {err}");
    }
}

/// The bundled demo model is the default of `infnet segment` and finds the phantom lesions of the
/// bundled held-out example slice.
#[test]
fn bundled_demo_model_segments_the_example_slice() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (weights, slice) = (root.join(infnet::segment::BUNDLED_WEIGHTS), root.join("weights/example_slice.png"));
    if !weights.is_file() || !slice.is_file() {
        eprintln!("no bundled demo model; skipped");
        return;
    }
    assert!(std::fs::metadata(&weights).unwrap().len() <= 10 << 20, "the demo model stays under 10 MB");
    let sd = infnet::StateDict::load(&weights).unwrap();
    assert!(sd.dtypes.values().all(|d| d == "f16"));
    let out = temp_dir("semi-demo");
    let r = Command::new(env!("CARGO_BIN_EXE_infnet"))
        .current_dir(root)
        .args(["segment", "--device", "cpu", "--threshold", "0.5", "--overlay", "--out", s(&out), s(&slice)])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", stderr(&r));
    let mask = image::open(out.join("example_slice_mask.png")).unwrap().to_luma8();
    let on = mask.pixels().filter(|p| p[0] == 255).count();
    let frac = on as f64 / (mask.width() * mask.height()) as f64;
    assert!(frac > 0.0005 && frac < 0.05, "infected fraction {frac} (the phantom's lesions cover about 0.5%)");
    assert!(out.join("example_slice_overlay.png").is_file());
}

#[test]
fn pseudo_threshold_binarises_the_pseudo_labels() {
    let dir = temp_dir("semi-thr");
    let (lab, unl) = phantoms(&dir, 2, 2);
    let out = dir.join("out");
    let r = semi(&lab, &unl, &out, &["--rounds", "1", "--pseudo-threshold", "0.5", "--pool-epochs", "0", "--finetune-epochs", "0"]);
    assert!(r.status.success(), "{}", stderr(&r));
    for n in names(&out.join("pool/GT")).iter().filter(|n| n.starts_with('u')) {
        let img = image::open(out.join("pool/GT").join(n)).unwrap().to_luma8();
        assert!(img.pixels().all(|p| p[0] == 0 || p[0] == 255), "{n} is binary");
    }
    // Without the final stages, Semi-Inf-Net is the last round's model.
    assert!(out.join("Semi-Inf-Net.safetensors").is_file());
    assert!(!stderr(&r).contains("stage pool-after"), "{}", stderr(&r));
}
