//! `infnet eval` from the command line: outputs and one-line errors that name the file.

mod common;

use std::path::Path;
use std::process::Command;

fn infnet(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_infnet")).args(args).output().expect("run infnet");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn copy_pngs(from: &Path, to: &Path, names: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for n in names {
        std::fs::copy(from.join(format!("{n}.png")), to.join(format!("{n}.png"))).unwrap();
    }
}

#[test]
fn table_json_and_csv() {
    let fx = common::fixture_path("eval");
    let dir = common::temp_dir("eval-cli");
    let csv = dir.join("scores.csv");
    let (pred, gt) = (fx.join("pred"), fx.join("gt"));
    let (ok, table, err) = infnet(&["eval", "--pred", pred.to_str().unwrap(), "--gt", gt.to_str().unwrap(), "--csv", csv.to_str().unwrap()]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].contains("Dice") && lines[0].contains("Sα") && lines[0].contains("MAE"));
    // Dataset Dice mean of the fixtures (expected.json "all"): 0.43554.
    assert!(lines[1].starts_with("pred") && lines[1].contains(" 17 ") && lines[1].contains("0.436"), "{table}");
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), 1 + 17 + 1);
    assert!(csv_text.lines().last().unwrap().starts_with("pred,(all),0.43553"), "{csv_text}");

    let (ok, json, err) = infnet(&["eval", "--pred", pred.to_str().unwrap(), "--gt", gt.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let r = &v["results"][0];
    assert_eq!(r["images"], 17);
    assert_eq!(r["per_image"].as_array().unwrap().len(), 17);
    assert_eq!(r["curves"]["dice"].as_array().unwrap().len(), 256);
    assert!((r["summary"]["dice_mean"].as_f64().unwrap() - 0.43554).abs() < 1e-5);
}

#[test]
fn missing_pair_is_named() {
    let fx = common::fixture_path("eval");
    let dir = common::temp_dir("eval-missing");
    copy_pngs(&fx.join("pred"), &dir.join("pred"), &["blobs_01", "blobs_02"]);
    copy_pngs(&fx.join("gt"), &dir.join("gt"), &["blobs_01"]);
    let (ok, _, err) = infnet(&["eval", "--pred", dir.join("pred").to_str().unwrap(), "--gt", dir.join("gt").to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no ground truth for prediction(s) blobs_02"), "{err}");

    copy_pngs(&fx.join("gt"), &dir.join("gt"), &["blobs_02", "blobs_03"]);
    let (ok, _, err) = infnet(&["eval", "--pred", dir.join("pred").to_str().unwrap(), "--gt", dir.join("gt").to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no prediction for ground truth(s) blobs_03"), "{err}");
}

#[test]
fn unreadable_image_and_bad_arguments() {
    let fx = common::fixture_path("eval");
    let dir = common::temp_dir("eval-corrupt");
    copy_pngs(&fx.join("pred"), &dir.join("pred"), &["blobs_01"]);
    copy_pngs(&fx.join("gt"), &dir.join("gt"), &["blobs_01"]);
    std::fs::write(dir.join("gt/blobs_01.png"), b"not a png").unwrap();
    let (ok, _, err) = infnet(&["eval", "--pred", dir.join("pred").to_str().unwrap(), "--gt", dir.join("gt").to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("gt/blobs_01.png") && err.contains("cannot decode"), "{err}");

    let (ok, _, err) = infnet(&["eval", "--pred", dir.join("nope").to_str().unwrap(), "--gt", dir.join("gt").to_str().unwrap()]);
    assert!(!ok && err.contains("nope") && err.contains("cannot list folder"), "{err}");

    let p = dir.join("pred");
    let (ok, _, err) = infnet(&["eval", "--pred", p.to_str().unwrap(), "--pred", p.to_str().unwrap(), "--pred", p.to_str().unwrap(), "--gt", p.to_str().unwrap(), "--gt", p.to_str().unwrap()]);
    assert!(!ok && err.contains("once per --pred"), "{err}");
}
