//! `infnet segment` end to end, its errors, and preprocessing parity with Pillow/torchvision.

use infnet::preprocess::{Samples, Slice};
use std::path::{Path, PathBuf};

fn fixture() -> std::collections::BTreeMap<String, infnet::Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess.safetensors");
    infnet::weights::read_safetensors(&p).expect("fixture readable")
}

#[test]
fn preprocessing_matches_pillow_fixture() {
    let fx = fixture();
    for case in ["gray8", "rgb8", "gray16"] {
        let input = &fx[&format!("{case}_input")];
        let expected = &fx[&format!("{case}_expected")];
        let bits = fx[&format!("{case}_bits")].data[0];
        let (h, w, c) = (input.shape[0], input.shape[1], input.shape[2]);
        let samples = if bits == 8.0 {
            Samples::U8(input.data.iter().map(|&v| v as u8).collect())
        } else {
            Samples::U16(input.data.iter().map(|&v| v as u16).collect())
        };
        let slice = Slice { width: w, height: h, channels: c, samples };
        let size = expected.shape[1];
        let got = slice.to_network_input(size);
        assert_eq!(got.len(), expected.data.len());
        let max_diff = got.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff <= 1e-3, "{case}: max |diff| {max_diff} vs Pillow reference");
        eprintln!("{case}: {w}×{h}×{c} → {size}, max |diff| {max_diff:.2e}");
    }
}
