//! The paper's table from the published prediction maps. Needs the COVID-SemiSeg test set and the
//! published maps, extracted by `tools/extract_covid_semiseg.sh DIR`, and `INFNET_COVID_SEMISEG=DIR`;
//! skipped (with a note) otherwise.
//!
//! Expected values: EvaluateResults/*-mat/*.mat of the public repository (what the MATLAB tool saved
//! when it produced the paper's table), and the rounded figures of Table 1/Table 3 of the paper.

use infnet::eval::{self, EMeasureRule, Summary};
use std::path::{Path, PathBuf};

fn data_dir() -> Option<PathBuf> {
    match std::env::var_os("INFNET_COVID_SEMISEG") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("skipped: set INFNET_COVID_SEMISEG to a folder made by tools/extract_covid_semiseg.sh to check the paper's table");
            None
        }
    }
}

/// (Dice mean, Dice max, Sen. mean, Sen. max, Spec. mean, Spec. max, Sα, Eφ mean, Eφ max, MAE).
type Row = [f64; 10];

fn row(s: &Summary) -> Row {
    [s.dice.mean, s.dice.max, s.sensitivity.mean, s.sensitivity.max, s.specificity.mean, s.specificity.max, s.s_measure, s.e_measure.mean, s.e_measure.max, s.mae]
}

const NAMES: [&str; 10] = ["Dice", "Dice max", "Sen.", "Sen. max", "Spec.", "Spec. max", "S-alpha", "E-phi mean", "E-phi max", "MAE"];

/// Published .mat values (printed with 12 decimals).
const INF_NET: Row = [0.681812381595, 0.745847289542, 0.691897266890, 1.0, 0.942690514107, 0.998699770765, 0.781492757854, 0.838277032893, 0.915657385074, 0.082165913276];
const SEMI_INF_NET: Row = [0.738790461035, 0.774711719257, 0.725091300192, 1.0, 0.959798935552, 0.999137589356, 0.800417385629, 0.893779733519, 0.933761267892, 0.064399228551];
const SEMI_INF_NET_UNET_GGO: Row = [0.623731593487, 0.625433692099, 0.618417150593, 1.0, 0.965591061762, 0.969377693377, 0.705708797045, 0.889380013765, 0.891887376660, 0.067178705772];
const SEMI_INF_NET_UNET_CONSOLIDATION: Row = [0.362043071244, 0.363136390247, 0.402734666115, 0.791666666667, 0.765760596639, 0.768763579371, 0.683361205887, 0.813225858323, 0.814821826333, 0.039395793379];

/// The paper's figures: Dice, Sen., Spec., Sα, Eφ^mean, MAE.
const PAPER_INF_NET: [f64; 6] = [0.682, 0.692, 0.943, 0.781, 0.838, 0.082];
const PAPER_SEMI_INF_NET: [f64; 6] = [0.739, 0.725, 0.960, 0.800, 0.894, 0.064];

fn evaluate(pred: &Path, gt: &Path, rule: EMeasureRule) -> Row {
    assert!(pred.is_dir() && gt.is_dir(), "{} or {} missing: re-run tools/extract_covid_semiseg.sh", pred.display(), gt.display());
    let scores = eval::evaluate_dirs(pred, gt, rule).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scores.images.len(), 48);
    row(&scores.summary)
}

fn paper_columns(r: &Row) -> [f64; 6] {
    [r[0], r[2], r[4], r[6], r[7], r[9]]
}

fn print_row(label: &str, r: &Row) {
    eprintln!("{label:<40} Dice {:.4} Sen {:.4} Spec {:.4} Sα {:.4} Eφ {:.4} MAE {:.4}", r[0], r[2], r[4], r[6], r[7], r[9]);
}

#[test]
fn published_maps_reproduce_the_papers_table() {
    let Some(root) = data_dir() else { return };
    let results = root.join("Results");
    let test_set = root.join("Dataset/TestingSet");
    let cases: [(&str, PathBuf, PathBuf, Row, Option<[f64; 6]>); 4] = [
        ("Inf-Net", results.join("Lung infection segmentation/Inf-Net"), test_set.join("LungInfection-Test/GT"), INF_NET, Some(PAPER_INF_NET)),
        ("Semi-Inf-Net", results.join("Lung infection segmentation/Semi-Inf-Net"), test_set.join("LungInfection-Test/GT"), SEMI_INF_NET, Some(PAPER_SEMI_INF_NET)),
        (
            "Semi-Inf-Net+UNet, ground-glass",
            results.join("Multi-class lung infection segmentation/Ground-glass opacities/Semi-Inf-Net_UNet"),
            test_set.join("MultiClassInfection-Test/GT-1"),
            SEMI_INF_NET_UNET_GGO,
            None,
        ),
        (
            "Semi-Inf-Net+UNet, consolidation",
            results.join("Multi-class lung infection segmentation/Consolidation/Semi-Inf-Net_UNet"),
            test_set.join("MultiClassInfection-Test/GT-2"),
            SEMI_INF_NET_UNET_CONSOLIDATION,
            None,
        ),
    ];
    for (label, pred, gt, published, paper) in cases {
        // The rule the tool used when it saved the published results: every value to 1e-9.
        let as_published = evaluate(&pred, &gt, EMeasureRule::Above);
        print_row(&format!("{label} (Eφ with P > t)"), &as_published);
        for (i, (got, want)) in as_published.iter().zip(&published).enumerate() {
            assert!((got - want).abs() < 1e-9, "{label} {}: {got} vs published {want}", NAMES[i]);
        }
        if let Some(paper) = paper {
            for (i, (got, want)) in paper_columns(&as_published).iter().zip(&paper).enumerate() {
                assert_eq!((got * 1000.0).round(), (want * 1000.0).round(), "{label} column {i}: {got:.4} vs paper {want}");
            }
        }
        // The tool at HEAD binarises with P ≥ t for Eφ; everything else is unchanged.
        let at_head = evaluate(&pred, &gt, EMeasureRule::AtLeast);
        print_row(&format!("{label} (tool at HEAD)"), &at_head);
        for i in (0..10).filter(|&i| i != 7 && i != 8) {
            assert_eq!(at_head[i], as_published[i], "{label} {}", NAMES[i]);
        }
        assert!((at_head[7] - as_published[7]).abs() < 1e-3, "{label} Eφ moves by {}", at_head[7] - as_published[7]);
    }
}
