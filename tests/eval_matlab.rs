//! `infnet eval` against the public MATLAB EvaluationTool run under GNU Octave on synthetic pairs
//! (tests/fixtures/eval, made by tools/gen_eval_fixtures.sh): every metric within 1e-6.

mod common;

use infnet::eval::{self, EMeasureRule, Summary};
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-6;

fn fixture_dir() -> PathBuf {
    common::fixture_path("eval")
}

fn expected() -> Value {
    let path = fixture_dir().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (regenerate with tools/gen_eval_fixtures.sh)", path.display()));
    serde_json::from_str(&text).expect("expected.json parses")
}

/// JSON null is the tool's NaN.
fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn assert_close(what: &str, got: f64, want: f64) {
    let same = (got.is_nan() && want.is_nan()) || (got - want).abs() <= TOLERANCE;
    assert!(same, "{what}: infnet {got} vs Octave {want} (difference {:e})", got - want);
}

fn assert_summary(what: &str, got: &Summary, want: &Value) {
    let pairs = [
        ("dice_mean", got.dice.mean),
        ("dice_max", got.dice.max),
        ("sensitivity_mean", got.sensitivity.mean),
        ("sensitivity_max", got.sensitivity.max),
        ("specificity_mean", got.specificity.mean),
        ("specificity_max", got.specificity.max),
        ("s_measure", got.s_measure),
        ("e_measure_mean", got.e_measure.mean),
        ("e_measure_max", got.e_measure.max),
        ("mae", got.mae),
    ];
    for (key, value) in pairs {
        assert_close(&format!("{what} {key}"), value, number(&want[key]));
    }
}

fn expected_image<'a>(expected: &'a Value, name: &str) -> &'a Value {
    expected["images"].as_array().expect("images").iter().find(|im| im["name"] == name).unwrap_or_else(|| panic!("no expected scores for {name}"))
}

#[test]
fn per_image_and_dataset_scores_match_octave() {
    let expected = expected();
    let dir = fixture_dir();
    let scores = eval::evaluate_dirs(&dir.join("pred"), &dir.join("gt"), EMeasureRule::AtLeast).expect("evaluate fixtures");
    assert_eq!(scores.images.len(), 17);
    for image in &scores.images {
        assert_summary(&image.name, &image.summary(), expected_image(&expected, &image.name));
    }
    assert_summary("dataset", &scores.summary, &expected["all"]);
    let curves = &expected["all_curves"];
    for (key, got) in [("dice", &scores.dice), ("sensitivity", &scores.sensitivity), ("specificity", &scores.specificity), ("e_measure", &scores.e_measure)] {
        let want = curves[key].as_array().expect("curve");
        assert_eq!(want.len(), eval::THRESHOLD_COUNT);
        for (t, (g, w)) in got.iter().zip(want).enumerate() {
            assert_close(&format!("dataset {key} at threshold {t}"), *g, number(w));
        }
    }
}

#[test]
fn published_e_measure_rule_matches_octave() {
    let expected = expected();
    let dir = fixture_dir();
    let scores = eval::evaluate_dirs(&dir.join("pred"), &dir.join("gt"), EMeasureRule::Above).expect("evaluate fixtures");
    assert_summary("dataset (E-phi with P > t)", &scores.summary, &expected["all_e_measure_above"]);
    // The rule changes Eφ only; it must change it here, or this test proves nothing.
    assert!((number(&expected["all_e_measure_above"]["e_measure_max"]) - number(&expected["all"]["e_measure_max"])).abs() > 1e-5);
}

#[test]
fn nan_cases_stay_nan_like_the_tool() {
    let expected = expected();
    let dir = fixture_dir().join("nan_cases");
    let scores = eval::evaluate_dirs(&dir.join("pred"), &dir.join("gt"), EMeasureRule::AtLeast).expect("evaluate NaN cases");
    for image in &scores.images {
        assert_summary(&image.name, &image.summary(), expected_image(&expected, &image.name));
    }
    let by_name = |n: &str| scores.images.iter().find(|i| i.name == n).expect(n).summary();
    assert!(by_name("corner").s_measure.is_nan(), "centroid on the last row/column leaves an empty S_region block");
    assert!(by_name("gt_full").specificity.mean.is_nan(), "all-foreground GT has TN + FP = 0");
}

fn gray(path: &Path) -> (usize, usize, Vec<f64>) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut col_major = vec![0.0; w * h];
    for (x, y, p) in img.enumerate_pixels() {
        col_major[x as usize * h + y as usize] = p[0] as f64;
    }
    (h, w, col_major)
}

#[test]
fn resize_matches_matlab_default_and_stays_near_octaves_imresize() {
    let dir = fixture_dir();
    for case in ["pred_larger", "pred_smaller", "pred_mixed_size"] {
        let (rows, cols, src) = gray(&dir.join("pred").join(format!("{case}.png")));
        let (out_rows, out_cols, matlab) = gray(&dir.join("resize").join(format!("{case}.matlab.png")));
        let (_, _, octave) = gray(&dir.join("resize").join(format!("{case}.octave.png")));
        let ours = eval::imresize(&src, rows, cols, out_rows, out_cols, 255.0);
        assert_ne!((rows, cols), (out_rows, out_cols), "{case} must need resizing");
        let differing = ours.iter().zip(&matlab).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{case}: {differing} pixels differ from the MATLAB-default resize");
        let worst = ours.iter().zip(&octave).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let off = ours.iter().zip(&octave).filter(|(a, b)| a != b).count();
        eprintln!("{case}: {off} of {} pixels differ from Octave's imresize, by at most {worst}", ours.len());
        // Enlarging, Octave differs only by its single-precision accumulation (±1 after rounding).
        // Shrinking, Octave does not renormalise the stretched kernel: at these scales its taps sum to
        // 1 ± 1.6% per dimension (computed with the same kernel), up to ~3% over both, i.e. 8 levels.
        let shrinks = out_rows < rows || out_cols < cols;
        let bound = if shrinks { 1.0 + (255.0 * 0.03f64).ceil() } else { 1.0 };
        assert!(worst <= bound, "{case}: differs from Octave's imresize by {worst} gray levels (bound {bound})");
    }
}
