//! `infnet segment` end to end, its errors, and preprocessing parity with Pillow/torchvision.

use infnet::engine::{self, Device};
use infnet::preprocess::{self, Samples, Slice};
use infnet::segment;
use infnet::{InfNet, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, unique per test and process, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("infnet-seg-{tag}-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny_weights(dir: &TempDir) -> PathBuf {
    let sd = infnet::model::synthetic::state_dict(&infnet::model::synthetic::Spec::tiny(), 7);
    let path = dir.join("tiny.safetensors");
    let tensors: Vec<(String, Tensor)> = sd.tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    infnet::io::write_safetensors(&path, &tensors).unwrap();
    path
}

/// Smooth structure with hard edges, on 0..1, so the tiny net's maps vary across the slice.
fn pattern(x: u32, y: u32, seed: u32) -> f32 {
    let (xf, yf) = (x as f32, y as f32);
    let s = seed as f32;
    let v = 0.5 + 0.3 * (xf / (3.0 + s)).sin() * (yf / (4.0 + 0.5 * s)).cos() + 0.2 * (((x / 7 + y / 5 + seed) % 2) as f32 - 0.5);
    v.clamp(0.0, 1.0)
}

fn gray8(w: u32, h: u32, seed: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([(pattern(x, y, seed) * 255.0).round() as u8]))
}

/// Five slices of different sizes and formats; returns their paths.
fn write_inputs(dir: &TempDir) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> =
        ["gray8.png", "gray16.png", "rgb_jpeg.jpg", "rgb_tiff.tiff", "rgba.png"].iter().map(|n| dir.join(n)).collect();
    gray8(70, 45, 1).save(&paths[0]).unwrap();
    image::ImageBuffer::<image::Luma<u16>, _>::from_fn(33, 50, |x, y| image::Luma([(pattern(x, y, 2) * 65535.0) as u16]))
        .save(&paths[1])
        .unwrap();
    image::RgbImage::from_fn(96, 40, |x, y| {
        image::Rgb([(pattern(x, y, 3) * 255.0) as u8, (pattern(x, y, 4) * 255.0) as u8, (pattern(x, y, 5) * 255.0) as u8])
    })
    .save(&paths[2])
    .unwrap();
    image::RgbImage::from_fn(41, 29, |x, y| image::Rgb([(pattern(x, y, 6) * 255.0) as u8, 90, (pattern(y, x, 7) * 255.0) as u8]))
        .save(&paths[3])
        .unwrap();
    image::RgbaImage::from_fn(64, 64, |x, y| image::Rgba([(pattern(x, y, 8) * 255.0) as u8, 40, 200, (x * 3) as u8]))
        .save(&paths[4])
        .unwrap();
    paths
}

fn infnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infnet")).args(args).output().expect("the infnet binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SIZE: usize = 64;

/// What the library makes of one slice on its own: forward at batch 1, sigmoid, resize back.
fn library_probability(model: &InfNet, path: &Path) -> (Slice, Vec<f32>) {
    let slice = preprocess::decode(path).unwrap();
    let input = Tensor { shape: vec![1, 3, SIZE, SIZE], data: slice.to_network_input(SIZE) };
    let mut eng = engine::create(model, Device::Cpu, 2).unwrap();
    let outs = eng.forward(&input).unwrap();
    let logits = &outs.iter().find(|(n, _)| n == "lateral_map_2").unwrap().1;
    let p = segment::probability(&logits.data, SIZE, slice.width, slice.height);
    (slice, p)
}

fn read_gray(path: &Path) -> image::GrayImage {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(matches!(img, image::DynamicImage::ImageLuma8(_)), "{} is not 8-bit gray", path.display());
    img.into_luma8()
}

#[test]
fn end_to_end_batched_matches_library() {
    let dir = TempDir::new("e2e");
    let weights = tiny_weights(&dir);
    let inputs = write_inputs(&dir);
    let model = InfNet::load(&weights).unwrap();
    let expected: Vec<(Slice, Vec<f32>)> = inputs.iter().map(|p| library_probability(&model, p)).collect();

    // A threshold at the median probability puts pixels on both sides of it.
    let mut all: Vec<f32> = expected.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    all.sort_by(f32::total_cmp);
    let threshold = all[all.len() / 2];
    assert!(threshold > 0.0 && threshold < 1.0);
    assert!(all[all.len() - 1] - all[0] > 0.01, "the tiny net's maps are flat; the comparison would prove little");

    let out = dir.join("out/nested");
    let t = threshold.to_string();
    let mut args = vec!["segment", "--weights", s(&weights), "--out", s(&out), "--size", "64", "--batch", "2"];
    args.extend(["--threshold", &t, "--overlay", "--device", "cpu", "--threads", "2"]);
    args.extend(inputs.iter().map(|p| s(p)));
    let o = infnet(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), inputs.len(), "one summary line per image: {stdout}");

    let (mut tinted, mut kept) = (0, 0);
    for ((path, (slice, prob)), line) in inputs.iter().zip(&expected).zip(&lines) {
        let name = path.file_stem().unwrap().to_str().unwrap();
        let (w, h) = (slice.width as u32, slice.height as u32);
        assert!(line.starts_with(name) && line.contains(&format!("{w}×{h}")), "summary `{line}`");

        let written = read_gray(&out.join(format!("{name}_prob.png")));
        assert_eq!(written.dimensions(), (w, h), "{name}_prob.png size");
        let mut max_lsb = 0i32;
        let mut exact = 0usize;
        for (&got, &p) in written.as_raw().iter().zip(prob) {
            let d = (got as i32 - segment::to_u8(p) as i32).abs();
            max_lsb = max_lsb.max(d);
            exact += (d == 0) as usize;
        }
        // Batched and single forwards may differ in the last float bits, which can flip a rounding.
        assert!(max_lsb <= 1, "{name}: prob map differs from the library by {max_lsb} levels");
        assert!(exact * 100 >= prob.len() * 99, "{name}: only {exact}/{} pixels exact", prob.len());

        let mask = read_gray(&out.join(format!("{name}_mask.png")));
        assert_eq!(mask.dimensions(), (w, h));
        for (&m, &p) in mask.as_raw().iter().zip(prob) {
            assert!(m == 0 || m == 255);
            if (p - threshold).abs() > 1e-4 {
                assert_eq!(m == 255, p >= threshold, "{name}: mask disagrees with p = {p}");
            }
        }
        let fraction = prob.iter().filter(|&&p| p >= threshold).count() as f32 / prob.len() as f32;
        assert!(line.contains(&format!("{:.2}%", 100.0 * fraction)) || fraction_close(line, fraction), "summary `{line}`");

        let overlay = image::open(out.join(format!("{name}_overlay.png"))).unwrap().into_rgb8();
        assert_eq!(overlay.dimensions(), (w, h));
        let base = slice.to_rgb8();
        for ((px, orig), &p) in overlay.as_raw().chunks_exact(3).zip(base.chunks_exact(3)).zip(prob) {
            if p < threshold - 1e-4 {
                assert_eq!(px, orig, "{name}: overlay changed a pixel below the threshold");
                kept += 1;
            } else if p > threshold + 1e-4 {
                assert!(px[0] >= orig[0] && px[1] <= orig[1], "{name}: overlay pixel not tinted red");
                tinted += 1;
            }
        }
    }
    // The threshold is the median over all slices, so both kinds of overlay pixel were checked.
    assert!(tinted > 0 && kept > 0, "tinted {tinted}, kept {kept}");
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
    assert!(leftovers.is_empty(), "temporary files left in the output directory");
}

/// The summary rounds to two decimals; a fraction at a rounding boundary may print either way.
fn fraction_close(line: &str, fraction: f32) -> bool {
    line.split_whitespace()
        .find_map(|w| w.strip_suffix('%').and_then(|v| v.parse::<f32>().ok()))
        .is_some_and(|v| (v - 100.0 * fraction).abs() <= 0.011)
}

#[test]
fn minmax_spans_full_range() {
    let dir = TempDir::new("minmax");
    let weights = tiny_weights(&dir);
    // 64×64 needs no resize; 192 is an odd multiple of 64, so every network pixel is hit exactly.
    let a = dir.join("same.png");
    let b = dir.join("triple.png");
    gray8(64, 64, 3).save(&a).unwrap();
    gray8(192, 192, 4).save(&b).unwrap();
    let out = dir.join("out");
    let o = infnet(&[
        "segment", "--weights", s(&weights), "--out", s(&out), "--size", "64", "--normalize", "minmax", "--device", "cpu", s(&a), s(&b),
    ]);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    for name in ["same", "triple"] {
        let m = read_gray(&out.join(format!("{name}_prob.png")));
        let lo = m.as_raw().iter().min().copied();
        let hi = m.as_raw().iter().max().copied();
        assert_eq!((lo, hi), (Some(0), Some(255)), "{name}_prob.png range");
    }
    // Without minmax the same slice does not span the range: the option changes what is written.
    let out2 = dir.join("out2");
    let o = infnet(&["segment", "--weights", s(&weights), "--out", s(&out2), "--size", "64", "--device", "cpu", s(&a)]);
    assert!(o.status.success());
    let m = read_gray(&out2.join("same_prob.png"));
    assert_ne!((m.as_raw().iter().min(), m.as_raw().iter().max()), (Some(&0), Some(&255)));
}

/// Runs a command that must fail: non-zero exit, one stderr line naming `names`, no panic, no outputs.
fn expect_failure(args: &[&str], names: &str, out: &Path) -> String {
    let o = infnet(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "should fail: {args:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.contains(names), "stderr should name `{names}`: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic: {stderr}");
    let written = std::fs::read_dir(out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "files were written to {}", out.display());
    stderr
}

#[test]
fn errors_name_the_problem_and_write_nothing() {
    let dir = TempDir::new("errors");
    let weights = tiny_weights(&dir);
    let good = dir.join("good.png");
    gray8(40, 40, 1).save(&good).unwrap();
    let garbage = dir.join("garbage.png");
    std::fs::write(&garbage, b"this is not a PNG at all").unwrap();
    let truncated = dir.join("truncated.png");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let missing = dir.join("missing.png");
    let out = dir.join("out");
    let w = s(&weights);
    let o = s(&out);

    expect_failure(&["segment", "--weights", w, "--out", o, "--device", "cpu", s(&good), s(&garbage)], s(&garbage), &out);
    expect_failure(&["segment", "--weights", w, "--out", o, "--device", "cpu", s(&good), s(&truncated)], s(&truncated), &out);
    expect_failure(&["segment", "--weights", w, "--out", o, "--device", "cpu", s(&missing), s(&good)], s(&missing), &out);

    // Output directory that cannot be created: under /proc, and under a regular file.
    expect_failure(&["segment", "--weights", w, "--out", "/proc/forbidden_dir", "--device", "cpu", s(&good)], "/proc/forbidden_dir", &out);
    let under_file = dir.join("good.png/sub");
    expect_failure(&["segment", "--weights", w, "--out", s(&under_file), "--device", "cpu", s(&good)], s(&under_file), &out);

    let e = expect_failure(&["segment", "--weights", w, "--out", o, "--size", "100", s(&good)], "--size 100", &out);
    assert!(e.contains("multiples of 32"), "{e}");
    expect_failure(&["segment", "--weights", w, "--out", o, "--threshold", "1.5", s(&good)], "--threshold", &out);

    let no_weights = dir.join("nope.safetensors");
    expect_failure(&["segment", "--weights", s(&no_weights), "--out", o, s(&good)], s(&no_weights), &out);
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    expect_failure(&["segment", "--weights", s(&corrupt), "--out", o, s(&good)], s(&corrupt), &out);

    if !Path::new(env!("CARGO_MANIFEST_DIR")).join(segment::BUNDLED_WEIGHTS).exists() && !Path::new(segment::BUNDLED_WEIGHTS).exists() {
        let e = expect_failure(&["segment", "--out", o, s(&good)], segment::BUNDLED_WEIGHTS, &out);
        assert!(e.contains("no --weights given") && e.contains("pass --weights"), "{e}");
    }

    // Two inputs with one stem would overwrite each other's outputs.
    std::fs::create_dir_all(dir.join("other")).unwrap();
    let twin = dir.join("other/good.png");
    std::fs::copy(&good, &twin).unwrap();
    expect_failure(&["segment", "--weights", w, "--out", o, s(&good), s(&twin)], s(&twin), &out);
}

fn fixture() -> std::collections::BTreeMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess.safetensors");
    infnet::weights::read_safetensors(&p).expect("fixture readable")
}

/// tools/gen_preprocess_fixture.py runs the public pipeline (PIL convert('RGB'), torchvision Resize,
/// ToTensor, Normalize) on synthetic slices; ours must agree within a quarter of an 8-bit level.
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
    }
}
