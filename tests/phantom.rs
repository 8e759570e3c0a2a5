//! `infnet phantom`: determinism, anatomy-consistent masks, files and sizes.

mod common;

use infnet::phantom::{self, edge_band, generate};
use std::process::Command;

#[test]
fn same_seed_same_slice_other_seed_other_slice() {
    let a = generate(3, 1, 128);
    let b = generate(3, 1, 128);
    assert_eq!(a.image, b.image);
    assert_eq!(a.infection(), b.infection());
    assert_ne!(a.image, generate(4, 1, 128).image);
    assert_ne!(a.image, generate(3, 2, 128).image);
}

#[test]
fn lesions_lie_in_the_lungs_and_look_like_ct() {
    let mut slices_with_lesions = 0;
    for i in 0..6 {
        let s = generate(11, i, 160);
        assert_eq!(s.image.len(), 160 * 160);
        let infection = s.infection();
        for p in 0..infection.len() {
            assert!(!infection[p] || s.lungs[p], "slice {i}: infection outside the lungs at pixel {p}");
            assert!(!(s.ground_glass[p] && s.consolidation[p]), "slice {i}: pixel {p} in both classes");
        }
        let mean = |pick: &dyn Fn(usize) -> bool| {
            let v: Vec<f64> = (0..s.image.len()).filter(|&p| pick(p)).map(|p| s.image[p] as f64).collect();
            (v.iter().sum::<f64>() / v.len().max(1) as f64, v.len())
        };
        // Lung window W1500/L−600: aerated lung (≈ −865 HU) maps near 82, air (−1000 HU) near 60.
        let (healthy_lung, n_lung) = mean(&|p| s.lungs[p] && !infection[p]);
        assert!(n_lung > 160 * 160 / 8, "slice {i}: lungs too small ({n_lung} px)");
        assert!((70.0..110.0).contains(&healthy_lung), "slice {i}: healthy lung mean {healthy_lung}");
        let (corner, _) = mean(&|p| p % 160 < 4 && p / 160 < 4);
        assert!((45.0..75.0).contains(&corner), "slice {i}: air {corner}");
        if infection.iter().any(|&m| m) {
            slices_with_lesions += 1;
            let (lesion, _) = mean(&|p| infection[p]);
            assert!(lesion > healthy_lung + 20.0, "slice {i}: lesions ({lesion}) not denser than lung ({healthy_lung})");
        }
        let (consolidation, n) = mean(&|p| s.consolidation[p]);
        if n > 20 {
            assert!(consolidation > 180.0, "slice {i}: consolidation mean {consolidation} is not near soft tissue");
        }
    }
    assert!(slices_with_lesions >= 3, "only {slices_with_lesions} of 6 slices have lesions");
}

#[test]
fn edge_band_straddles_the_boundary() {
    // A 3×3 square in a 7×7 image: 8 mask pixels touch the outside, 12 outside pixels touch the mask.
    let mut mask = vec![false; 49];
    for y in 2..5 {
        for x in 2..5 {
            mask[y * 7 + x] = true;
        }
    }
    let edge = edge_band(&mask, 7);
    assert_eq!(edge.iter().filter(|&&e| e).count(), 20);
    assert!(!edge[3 * 7 + 3] && edge[2 * 7 + 2] && edge[1 * 7 + 3] && !edge[1 * 7 + 1]);
}

fn gray(path: &std::path::Path) -> image::GrayImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_luma8()
}

#[test]
fn cli_writes_the_covid_semiseg_layout_deterministically() {
    let a = common::temp_dir("phantom-a");
    let b = common::temp_dir("phantom-b");
    for dir in [&a, &b] {
        let out = Command::new(env!("CARGO_BIN_EXE_infnet"))
            .args(["phantom", "--out", dir.to_str().unwrap(), "--count", "3", "--size", "96", "--seed", "5", "--multiclass"])
            .output()
            .expect("run infnet phantom");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for folder in ["Imgs", "GT", "Edge", "GT-1", "GT-2"] {
        for i in 0..3 {
            let name = format!("{folder}/{i}.png");
            let bytes = std::fs::read(a.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(bytes, std::fs::read(b.join(&name)).unwrap(), "{name} differs between identical runs");
            let img = gray(&a.join(&name));
            assert_eq!(img.dimensions(), (96, 96), "{name}");
            if folder != "Imgs" {
                assert!(img.pixels().all(|p| p[0] == 0 || p[0] == 255), "{name} is not a 0/255 mask");
            }
        }
    }
    for i in 0..3 {
        let gt = gray(&a.join(format!("GT/{i}.png")));
        let ggo = gray(&a.join(format!("GT-1/{i}.png")));
        let cons = gray(&a.join(format!("GT-2/{i}.png")));
        let union: Vec<bool> = ggo.pixels().zip(cons.pixels()).map(|(g, c)| g[0] == 255 || c[0] == 255).collect();
        let mask: Vec<bool> = gt.pixels().map(|p| p[0] == 255).collect();
        assert_eq!(mask, union, "GT {i} is not GT-1 ∪ GT-2");
        let edge: Vec<bool> = gray(&a.join(format!("Edge/{i}.png"))).pixels().map(|p| p[0] == 255).collect();
        assert_eq!(edge, edge_band(&mask, 96), "Edge {i}");
        let slice = phantom::generate(5, i, 96);
        assert_eq!(gray(&a.join(format!("Imgs/{i}.png"))).into_raw(), slice.image, "Imgs {i} is not generate(5, {i})");
    }
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let dir = common::temp_dir("phantom-bad");
    let out = Command::new(env!("CARGO_BIN_EXE_infnet")).args(["phantom", "--out", dir.to_str().unwrap(), "--size", "8"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--size 8") && err.lines().count() == 1, "{err}");
}
