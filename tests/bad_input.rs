//! Bad input ends in one clear line on stderr naming the file and the problem, a non-zero exit, no
//! panic, and no output file.

mod common;

use infnet::io::write_safetensors;
use infnet::weights::Tensor;
use infnet::{InfNet, StateDict};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tiny() -> StateDict {
    StateDict::load(common::fixture_path("tiny.safetensors")).expect("tiny fixture")
}

fn save(sd: &StateDict, path: &Path) {
    let v: Vec<(String, Tensor)> = sd.tensors.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
    write_safetensors(path, &v).expect("write weights");
}

fn input_file(dir: &Path, n: usize, h: usize, w: usize) -> PathBuf {
    let p = dir.join(format!("in_{n}x{h}x{w}.safetensors"));
    let t = Tensor { shape: vec![n, 3, h, w], data: common::random(n * 3 * h * w, 9) };
    write_safetensors(&p, &[("input".into(), t)]).expect("write input");
    p
}

/// Runs `infnet run` and asserts a clean failure whose message contains every one of `needles`.
fn expect_run_error(weights: &Path, input: &Path, output: &Path, needles: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_infnet"))
        .args(["run", "--device", "cpu", "--threads", "1", "--weights"])
        .arg(weights)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .expect("spawn infnet");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "error must be one line: {err}");
    assert!(err.starts_with("infnet: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "error should mention `{n}`: {err}");
    }
    assert!(!output.exists(), "no output may be written on failure");
    err
}

#[test]
fn corrupt_and_truncated_weights_are_clear_errors() {
    let dir = common::temp_dir("corrupt");
    let good = std::fs::read(common::fixture_path("tiny.safetensors")).expect("read fixture");
    let input = input_file(&dir, 1, 64, 64);
    let out = dir.join("out.safetensors");
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() / 2]).expect("write");
    expect_run_error(&truncated, &input, &out, &["truncated.safetensors", "not a valid safetensors file"]);
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, common::random(1000, 3).iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).expect("write");
    expect_run_error(&garbage, &input, &out, &["garbage.safetensors", "not a valid safetensors file"]);
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").expect("write");
    expect_run_error(&empty, &input, &out, &["empty.safetensors"]);
    expect_run_error(&dir.join("nonexistent.safetensors"), &input, &out, &["nonexistent.safetensors", "cannot read"]);
}

#[test]
fn missing_and_unexpected_keys_are_all_listed() {
    let dir = common::temp_dir("keys");
    let mut sd = tiny();
    sd.tensors.remove("ra3_conv2.bn.running_var");
    sd.tensors.remove("resnet.layer3.1.convs.2.weight");
    sd.tensors.insert("decoder.extra.weight".into(), Tensor { shape: vec![2], data: vec![0.0, 1.0] });
    let w = dir.join("keys.safetensors");
    save(&sd, &w);
    let err = expect_run_error(
        &w,
        &input_file(&dir, 1, 64, 64),
        &dir.join("out.safetensors"),
        &["keys.safetensors", "2 missing", "ra3_conv2.bn.running_var", "resnet.layer3.1.convs.2.weight", "1 unexpected", "decoder.extra.weight"],
    );
    assert!(!err.contains("resnet.fc"), "{err}");
}

#[test]
fn wrong_shapes_are_all_listed() {
    let mut sd = tiny();
    let t = sd.tensors.get_mut("ra2_conv3.conv.weight").expect("key");
    t.shape[1] += 1;
    t.data.resize(t.shape.iter().product(), 0.1);
    sd.tensors.get_mut("edge_conv4.bn.running_mean").expect("key").shape = vec![1, 1];
    let err = match InfNet::from_state_dict(&sd) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("mis-shaped weights must not load"),
    };
    assert!(err.contains("2 tensor(s) with the wrong shape"), "{err}");
    assert!(err.contains("ra2_conv3.conv.weight") && err.contains("edge_conv4.bn.running_mean"), "{err}");
    // Through the CLI too.
    let dir = common::temp_dir("shape");
    let w = dir.join("shape.safetensors");
    save(&sd, &w);
    expect_run_error(&w, &input_file(&dir, 1, 64, 64), &dir.join("o.safetensors"), &["shape.safetensors", "ra2_conv3.conv.weight"]);
}

#[test]
fn unsupported_dtypes_are_named() {
    let dir = common::temp_dir("dtype");
    let sd = tiny();
    // Re-encode one weight as f64, which Inf-Net checkpoints never carry.
    let mut owned: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = Vec::new();
    for (k, t) in &sd.tensors {
        if k == "edge_conv2.conv.weight" {
            owned.push((k.clone(), t.data.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(), safetensors::Dtype::F64, t.shape.clone()));
        } else {
            owned.push((k.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), safetensors::Dtype::F32, t.shape.clone()));
        }
    }
    // num_batches_tracked (i64) is accepted and ignored.
    owned.push(("resnet.bn1.num_batches_tracked".into(), 7i64.to_le_bytes().to_vec(), safetensors::Dtype::I64, vec![]));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(k, b, d, s)| (k.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let w = dir.join("f64.safetensors");
    std::fs::write(&w, safetensors::serialize(views, None).expect("serialise")).expect("write");
    let err = expect_run_error(&w, &input_file(&dir, 1, 64, 64), &dir.join("o.safetensors"), &["f64.safetensors", "unsupported dtype", "edge_conv2.conv.weight"]);
    assert!(!err.contains("num_batches_tracked"), "{err}");
}

#[test]
fn bad_inputs_and_outputs_are_clear_errors() {
    let dir = common::temp_dir("io");
    let w = common::fixture_path("tiny.safetensors");
    let out = dir.join("out.safetensors");
    expect_run_error(&w, &input_file(&dir, 1, 50, 64), &out, &["in_1x50x64.safetensors", "multiples of 32"]);
    expect_run_error(&w, &input_file(&dir, 1, 64, 0), &out, &["in_1x64x0.safetensors"]);
    let other = dir.join("other.safetensors");
    write_safetensors(&other, &[("image".into(), Tensor { shape: vec![1, 3, 64, 64], data: vec![0.5; 3 * 64 * 64] })]).expect("write");
    expect_run_error(&w, &other, &out, &["other.safetensors", "no tensor named `input`"]);
    let bad_channels = dir.join("c4.safetensors");
    write_safetensors(&bad_channels, &[("input".into(), Tensor { shape: vec![1, 4, 64, 64], data: vec![0.5; 4 * 64 * 64] })]).expect("write");
    expect_run_error(&w, &bad_channels, &out, &["c4.safetensors", "N×3×H×W"]);
    let good_input = input_file(&dir, 1, 64, 64);
    let unwritable = dir.join("no_such_dir").join("out.safetensors");
    expect_run_error(&w, &good_input, &unwritable, &["out.safetensors", "does not exist"]);
    expect_run_error(&w, &dir.join("missing_input.safetensors"), &out, &["missing_input.safetensors", "cannot read"]);
}

#[test]
fn run_writes_all_five_maps() {
    let dir = common::temp_dir("ok");
    let out = dir.join("maps.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_infnet"))
        .args(["run", "--device", "cpu", "--weights"])
        .arg(common::fixture_path("tiny.safetensors"))
        .arg("--input")
        .arg(common::fixture_path("tiny_io.safetensors"))
        .arg("--output")
        .arg(&out)
        .status()
        .expect("spawn");
    assert!(status.success());
    let got = infnet::weights::read_safetensors(&out).expect("read output");
    let want = common::fixture("tiny_io.safetensors");
    for name in ["lateral_map_5", "lateral_map_4", "lateral_map_3", "lateral_map_2", "lateral_edge"] {
        assert_eq!(got[name].shape, vec![2, 1, 64, 96]);
        assert!(common::rel_l2(&got[name].data, &want[name].data) <= 1e-4, "{name}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("dir").filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}
