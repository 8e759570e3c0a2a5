//! `infnet eval`: segmentation metrics computed as the public Inf-Net MATLAB EvaluationTool computes
//! them (`EvaluationTool/main.m` and the functions it calls), so that published tables can be
//! reproduced exactly.
//!
//! Per image (prediction P, ground truth G):
//! - G is binarised at `> 128` (on the first channel after RGB→gray; 1-bit PNGs are already binary);
//! - P's first channel is resized to G's size when they differ ([`imresize`], MATLAB's default
//!   bicubic with antialiasing), scaled to [0, 1] by its integer range and min-max normalised like
//!   `mapminmax(p, 0, 1)` (a constant map passes through unchanged, as mapminmax leaves it);
//! - at the 256 thresholds `1:-1/255:0`, P ≥ t is scored by Dice, sensitivity and specificity
//!   (`Fmeasure_calu.m`: all three are 0 when there is no true positive) and by the enhanced-alignment
//!   measure (`Enhancedmeasure.m`);
//! - the structure measure Sα (α = 0.5, `StructureMeasure.m`, `S_object.m`, `S_region.m`) and the MAE
//!   are computed on the continuous map.
//!
//! Over a folder: per-threshold curves are averaged over images; "mean" is the mean of that curve over
//! thresholds, "max" its maximum; Sα and MAE are averaged over images.
//!
//! Maps are held column-major and every sum runs in the order MATLAB/Octave's `sum`, `mean` and `mean2`
//! run it: the tool compares floating-point results exactly (`alpha ~= 0` in the region SSIM, `>=`
//! against the thresholds), so summation order can flip a score, not just its last bits. Where the tool
//! produces NaN (a ground-truth centroid on the last row or column leaves an empty quadrant in
//! `S_region.m`; an all-foreground mask makes specificity 0/0), so does this module.
//!
//! Known differences from MATLAB: JPEG files are decoded by the `image` crate, not libjpeg (pixel
//! values may differ by a level; the tool itself only reads .png); palette PNGs are expanded to RGB
//! where MATLAB's imread returns the indices. Eφ binarisation follows the tool at HEAD (P ≥ t);
//! `--e-measure-rule above` gives the P > t of the version that computed the paper's table.

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Number of thresholds in `1:-1/255:0`.
pub const THRESHOLD_COUNT: usize = 256;

/// The thresholds `1:-1/255:0` as MATLAB's colon operator evaluates them: the first half counts up
/// from the start (1 + k·(−1/255)), the second half counts down from the end (k·(1/255) for the k-th
/// value from the end). Pixels equal to a threshold count as foreground, so the exact doubles matter:
/// Octave's range (start + k·increment throughout) differs by an ulp at some low thresholds, which
/// moves the published Dice/Sen./Spec. in the third decimal.
pub fn thresholds() -> [f64; THRESHOLD_COUNT] {
    let increment = -1.0 / 255.0;
    let n = THRESHOLD_COUNT - 1;
    let mut t = [0.0; THRESHOLD_COUNT];
    for k in 0..=n / 2 {
        t[k] = 1.0 + k as f64 * increment;
        t[n - k] = 0.0 - k as f64 * increment;
    }
    t
}

/// A real-valued map, column-major like a MATLAB matrix: element (r, c) at `c * rows + r`.
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

/// A binary ground-truth mask, column-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<bool>,
}

/// Sequential sum, the order of MATLAB/Octave's `sum` over a vector.
fn sum_seq(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |acc, v| acc + v)
}

/// `mean`/`mean2` over the given elements: sequential sum divided by the count (NaN when empty).
fn mean_seq(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n as f64
}

/// `std` (n − 1 normalisation, 0 for a single element), two-pass as Octave's `var`.
fn std_seq(values: &[f64]) -> f64 {
    if values.len() <= 1 {
        return if values.is_empty() { f64::NAN } else { 0.0 };
    }
    let mean = mean_seq(values.iter().copied());
    let sum_sq = sum_seq(values.iter().map(|v| (v - mean) * (v - mean)));
    (sum_sq / (values.len() - 1) as f64).sqrt()
}

/// `mapminmax(x, 0, 1)` over all elements: (x − min)·(1/(max − min)). When max == min (or the gain
/// would exceed 1e14) mapminmax uses gain 1 and offset 0, leaving the values unchanged.
pub fn normalise_min_max(values: &mut [f64]) {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = hi - lo;
    let mut gain = 1.0 / range;
    let mut offset = lo;
    if gain.abs() > 1e14 || !range.is_finite() || range == 0.0 {
        gain = 1.0;
        offset = 0.0;
    }
    for v in values.iter_mut() {
        *v = (*v - offset) * gain + 0.0;
    }
}

/// Scores of one image: per-threshold curves and the threshold-free measures.
#[derive(Clone, Debug)]
pub struct ImageScores {
    pub name: String,
    pub dice: Vec<f64>,
    pub sensitivity: Vec<f64>,
    pub specificity: Vec<f64>,
    pub e_measure: Vec<f64>,
    pub s_measure: f64,
    pub mae: f64,
}

/// Mean and maximum of a curve over thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanMax {
    pub mean: f64,
    pub max: f64,
}

impl MeanMax {
    fn of(curve: &[f64]) -> MeanMax {
        // MATLAB's max ignores NaN; so does f64::max.
        MeanMax { mean: mean_seq(curve.iter().copied()), max: curve.iter().copied().fold(f64::NAN, f64::max) }
    }
}

/// The table row: the paper reports the means (Dice, Sen., Spec., Sα, Eφ^mean, MAE).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub dice: MeanMax,
    pub sensitivity: MeanMax,
    pub specificity: MeanMax,
    pub e_measure: MeanMax,
    pub s_measure: f64,
    pub mae: f64,
}

impl ImageScores {
    pub fn summary(&self) -> Summary {
        Summary {
            dice: MeanMax::of(&self.dice),
            sensitivity: MeanMax::of(&self.sensitivity),
            specificity: MeanMax::of(&self.specificity),
            e_measure: MeanMax::of(&self.e_measure),
            s_measure: self.s_measure,
            mae: self.mae,
        }
    }
}

/// Scores of a folder of predictions against a folder of ground truths.
#[derive(Clone, Debug)]
pub struct DatasetScores {
    /// Sorted by name, the order the tool's `dir` lists them.
    pub images: Vec<ImageScores>,
    pub dice: Vec<f64>,
    pub sensitivity: Vec<f64>,
    pub specificity: Vec<f64>,
    pub e_measure: Vec<f64>,
    pub summary: Summary,
}

/// Averages per-image curves over images (as `mean(M, 1)`) and summarises them.
pub fn aggregate(mut images: Vec<ImageScores>) -> DatasetScores {
    images.sort_by(|a, b| a.name.cmp(&b.name));
    let column_mean = |pick: fn(&ImageScores) -> &Vec<f64>| -> Vec<f64> {
        (0..THRESHOLD_COUNT).map(|t| mean_seq(images.iter().map(|im| pick(im)[t]))).collect()
    };
    let dice = column_mean(|s| &s.dice);
    let sensitivity = column_mean(|s| &s.sensitivity);
    let specificity = column_mean(|s| &s.specificity);
    let e_measure = column_mean(|s| &s.e_measure);
    let summary = Summary {
        dice: MeanMax::of(&dice),
        sensitivity: MeanMax::of(&sensitivity),
        specificity: MeanMax::of(&specificity),
        e_measure: MeanMax::of(&e_measure),
        s_measure: mean_seq(images.iter().map(|s| s.s_measure)),
        mae: mean_seq(images.iter().map(|s| s.mae)),
    };
    DatasetScores { images, dice, sensitivity, specificity, e_measure, summary }
}

/// How the map is binarised for the enhanced-alignment measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EMeasureRule {
    /// P ≥ t, as the tool does since commit e723632 (Nov 2020) and as Dice/Sen./Spec. always did.
    #[default]
    AtLeast,
    /// P > t, as the tool did when it produced the published figures (EvaluateResults/*.mat).
    Above,
}

/// All scores of one normalised prediction (values in [0, 1]) against its mask.
pub fn score_image(name: &str, pred: &Map, gt: &Mask, rule: EMeasureRule) -> ImageScores {
    assert_eq!((pred.rows, pred.cols), (gt.rows, gt.cols), "prediction and mask sizes differ");
    let n = pred.data.len();
    // Foreground/background prediction values, sorted: counts above a threshold are then a search.
    let mut on_fg: Vec<f64> = Vec::new();
    let mut on_bg: Vec<f64> = Vec::new();
    for (&p, &g) in pred.data.iter().zip(&gt.data) {
        if g { on_fg.push(p) } else { on_bg.push(p) }
    }
    on_fg.sort_by(f64::total_cmp);
    on_bg.sort_by(f64::total_cmp);
    let count_at_least = |sorted: &[f64], t: f64| sorted.len() - sorted.partition_point(|&v| v < t);
    let count_above = |sorted: &[f64], t: f64| sorted.len() - sorted.partition_point(|&v| v <= t);
    let num_obj = on_fg.len();

    let mut scores = ImageScores {
        name: name.to_string(),
        dice: Vec::with_capacity(THRESHOLD_COUNT),
        sensitivity: Vec::with_capacity(THRESHOLD_COUNT),
        specificity: Vec::with_capacity(THRESHOLD_COUNT),
        e_measure: Vec::with_capacity(THRESHOLD_COUNT),
        s_measure: s_measure(pred, gt),
        mae: mean_seq(pred.data.iter().zip(&gt.data).map(|(&p, &g)| ((g as u8 as f64) - p).abs())),
    };
    for t in thresholds() {
        let tp = count_at_least(&on_fg, t);
        let fp = count_at_least(&on_bg, t);
        let predicted = tp + fp;
        let fn_ = num_obj - tp;
        let tn = (n - predicted) - fn_;
        if tp == 0 {
            scores.dice.push(0.0);
            scores.sensitivity.push(0.0);
            scores.specificity.push(0.0);
        } else {
            scores.dice.push(2.0 * tp as f64 / (num_obj + predicted) as f64);
            scores.sensitivity.push(tp as f64 / num_obj as f64);
            scores.specificity.push(tn as f64 / (tn + fp) as f64);
        }
        if rule == EMeasureRule::Above {
            let tp = count_above(&on_fg, t);
            let fp = count_above(&on_bg, t);
            let fn_ = num_obj - tp;
            scores.e_measure.push(enhanced_alignment(tp, fp, fn_, n - tp - fp - fn_));
        } else {
            scores.e_measure.push(enhanced_alignment(tp, fp, fn_, tn));
        }
    }
    scores
}

/// `Enhancedmeasure.m` for a binary map given its confusion counts: every pixel's enhanced alignment
/// depends only on its (prediction, truth) pair, so the sum over pixels is a sum over the four pairs.
pub fn enhanced_alignment(tp: usize, fp: usize, fn_: usize, tn: usize) -> f64 {
    let n = tp + fp + fn_ + tn;
    let num_obj = tp + fn_;
    let predicted = tp + fp;
    let total = if num_obj == 0 {
        (n - predicted) as f64
    } else if num_obj == n {
        predicted as f64
    } else {
        let mu_fm = predicted as f64 / n as f64;
        let mu_gt = num_obj as f64 / n as f64;
        let enhanced = |fm: f64, g: f64| {
            let (a_fm, a_gt) = (fm - mu_fm, g - mu_gt);
            let align = 2.0 * (a_gt * a_fm) / (a_gt * a_gt + a_fm * a_fm + f64::EPSILON);
            (align + 1.0) * (align + 1.0) / 4.0
        };
        tp as f64 * enhanced(1.0, 1.0) + fp as f64 * enhanced(1.0, 0.0) + fn_ as f64 * enhanced(0.0, 1.0) + tn as f64 * enhanced(0.0, 0.0)
    };
    total / (n as f64 - 1.0 + f64::EPSILON)
}

/// `StructureMeasure.m` with α = 0.5.
pub fn s_measure(pred: &Map, gt: &Mask) -> f64 {
    let y = mean_seq(gt.data.iter().map(|&g| g as u8 as f64));
    if y == 0.0 {
        return 1.0 - mean_seq(pred.data.iter().copied());
    }
    if y == 1.0 {
        return mean_seq(pred.data.iter().copied());
    }
    let alpha = 0.5;
    let q = alpha * s_object(pred, gt) + (1.0 - alpha) * s_region(pred, gt);
    if q < 0.0 {
        0.0
    } else {
        q
    }
}

fn s_object(pred: &Map, gt: &Mask) -> f64 {
    let object = |values: &[f64]| {
        let x = mean_seq(values.iter().copied());
        let sigma = std_seq(values);
        2.0 * x / (x * x + 1.0 + sigma + f64::EPSILON)
    };
    let fg: Vec<f64> = pred.data.iter().zip(&gt.data).filter(|(_, &g)| g).map(|(&p, _)| p).collect();
    let bg: Vec<f64> = pred.data.iter().zip(&gt.data).filter(|(_, &g)| !g).map(|(&p, _)| 1.0 - p).collect();
    let u = mean_seq(gt.data.iter().map(|&g| g as u8 as f64));
    u * object(&fg) + (1.0 - u) * object(&bg)
}

fn s_region(pred: &Map, gt: &Mask) -> f64 {
    let (rows, cols) = (gt.rows, gt.cols);
    // Centroid, 1-based, rounded half away from zero like MATLAB's round. All sums are exact integers.
    let total = gt.data.iter().filter(|&&g| g).count() as f64;
    let mut x_moment = 0.0;
    let mut y_moment = 0.0;
    for c in 0..cols {
        for r in 0..rows {
            if gt.data[c * rows + r] {
                x_moment += (c + 1) as f64;
                y_moment += (r + 1) as f64;
            }
        }
    }
    let x = (x_moment / total).round() as usize;
    let y = (y_moment / total).round() as usize;
    let area = (cols * rows) as f64;
    let w1 = (x * y) as f64 / area;
    let w2 = ((cols - x) * y) as f64 / area;
    let w3 = (x * (rows - y)) as f64 / area;
    let w4 = 1.0 - w1 - w2 - w3;
    let q1 = region_ssim(pred, gt, 0..y, 0..x);
    let q2 = region_ssim(pred, gt, 0..y, x..cols);
    let q3 = region_ssim(pred, gt, y..rows, 0..x);
    let q4 = region_ssim(pred, gt, y..rows, x..cols);
    w1 * q1 + w2 * q2 + w3 * q3 + w4 * q4
}

/// The `ssim` of `S_region.m` on the block rows × cols (0-based, half-open).
fn region_ssim(pred: &Map, gt: &Mask, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> f64 {
    let n = rows.len() * cols.len();
    if n == 0 {
        // mean2 of an empty block is NaN, and NaN survives every later step of the tool.
        return f64::NAN;
    }
    let stride = pred.rows;
    let column_major: Vec<usize> = cols.clone().flat_map(|c| rows.clone().map(move |r| c * stride + r)).collect();
    let x = mean_seq(column_major.iter().map(|&i| pred.data[i]));
    let y = mean_seq(column_major.iter().map(|&i| gt.data[i] as u8 as f64));
    // sum(sum(M)): column sums first, then their sum.
    let sum_sum = |f: &dyn Fn(usize) -> f64| {
        sum_seq(column_major.chunks(rows.len()).map(|column| sum_seq(column.iter().map(|&i| f(i)))))
    };
    let denom = n as f64 - 1.0 + f64::EPSILON;
    let sigma_x2 = sum_sum(&|i| (pred.data[i] - x) * (pred.data[i] - x)) / denom;
    let sigma_y2 = sum_sum(&|i| (gt.data[i] as u8 as f64 - y) * (gt.data[i] as u8 as f64 - y)) / denom;
    let sigma_xy = sum_sum(&|i| (pred.data[i] - x) * (gt.data[i] as u8 as f64 - y)) / denom;
    let alpha = 4.0 * x * y * sigma_xy;
    let beta = (x * x + y * y) * (sigma_x2 + sigma_y2);
    if alpha != 0.0 {
        alpha / (beta + f64::EPSILON)
    } else if beta == 0.0 {
        1.0
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Resizing
// ---------------------------------------------------------------------------------------------

/// Keys' cubic convolution kernel (a = −0.5), MATLAB's "bicubic".
fn cubic(x: f64) -> f64 {
    let ax = x.abs();
    let ax2 = ax * ax;
    let ax3 = ax2 * ax;
    if ax <= 1.0 {
        1.5 * ax3 - 2.5 * ax2 + 1.0
    } else if ax <= 2.0 {
        -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    } else {
        0.0
    }
}

/// For each output position: the (input index, weight) pairs of MATLAB's imresize along one dimension.
/// Output pixel x (1-based) samples input position u = x/scale + (1 − 1/scale)/2; when shrinking the
/// kernel is stretched by 1/scale (antialiasing); weights are normalised to sum 1; taps beyond the
/// border mirror back (symmetric padding, edge pixel repeated).
fn resize_taps(in_len: usize, out_len: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = out_len as f64 / in_len as f64;
    let (kernel_width, stretch) = if scale < 1.0 { (4.0 / scale, scale) } else { (4.0, 1.0) };
    let taps = kernel_width.ceil() as i64 + 2;
    let period = 2 * in_len as i64;
    (1..=out_len)
        .map(|x| {
            let u = x as f64 / scale + 0.5 * (1.0 - 1.0 / scale);
            let left = (u - kernel_width / 2.0).floor() as i64;
            let weights: Vec<f64> = (0..taps).map(|k| stretch * cubic(stretch * (u - (left + k) as f64))).collect();
            let sum = sum_seq(weights.iter().copied());
            (0..taps)
                .map(|k| {
                    let m = (left + k - 1).rem_euclid(period);
                    let index = if m < in_len as i64 { m } else { period - 1 - m };
                    (index as usize, weights[k as usize] / sum)
                })
                .collect()
        })
        .collect()
}

/// MATLAB's `imresize(A, [rows cols])` default (bicubic, antialiasing) for an integer image with
/// values in 0..=max_value, column-major. Like MATLAB, the dimension with the smaller scale factor is
/// resized first and each pass rounds back to the integer class (half away from zero, saturating).
pub fn imresize(src: &[f64], rows: usize, cols: usize, out_rows: usize, out_cols: usize, max_value: f64) -> Vec<f64> {
    let quantise = |v: f64| v.round().clamp(0.0, max_value);
    let resize_rows = |src: &[f64], cols: usize| -> Vec<f64> {
        let taps = resize_taps(rows, out_rows);
        let mut out = vec![0.0; out_rows * cols];
        for c in 0..cols {
            for (r, row_taps) in taps.iter().enumerate() {
                out[c * out_rows + r] = quantise(row_taps.iter().fold(0.0, |acc, &(i, w)| acc + w * src[c * rows + i]));
            }
        }
        out
    };
    let resize_cols = |src: &[f64], rows: usize| -> Vec<f64> {
        let taps = resize_taps(cols, out_cols);
        let mut out = vec![0.0; rows * out_cols];
        for (c, col_taps) in taps.iter().enumerate() {
            for r in 0..rows {
                out[c * rows + r] = quantise(col_taps.iter().fold(0.0, |acc, &(i, w)| acc + w * src[i * rows + r]));
            }
        }
        out
    };
    let row_scale = out_rows as f64 / rows as f64;
    let col_scale = out_cols as f64 / cols as f64;
    if row_scale <= col_scale {
        let tmp = resize_rows(src, cols);
        resize_cols(&tmp, out_rows)
    } else {
        let tmp = resize_cols(src, rows);
        resize_rows(&tmp, out_cols)
    }
}

// ---------------------------------------------------------------------------------------------
// Image files
// ---------------------------------------------------------------------------------------------

/// One channel of an integer image, column-major, with the largest value its class can hold.
struct Channel {
    rows: usize,
    cols: usize,
    values: Vec<f64>,
    max_value: f64,
}

fn decode(path: &Path) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .decode()
        .map_err(|e| Error::file(path, format!("cannot decode image: {e}")))
}

fn column_major<P: Copy>(width: usize, height: usize, row_major: &[P], channels: usize, f: impl Fn(&[P]) -> f64) -> Vec<f64> {
    let mut out = vec![0.0; width * height];
    for r in 0..height {
        for c in 0..width {
            let i = (r * width + c) * channels;
            out[c * height + r] = f(&row_major[i..i + channels]);
        }
    }
    out
}

/// The first channel (`A(:,:,1)`), or with `to_gray` MATLAB's `rgb2gray` of a colour image.
/// Palette images arrive expanded to RGB (MATLAB would read the indices).
fn read_channel(path: &Path, to_gray: bool) -> Result<Channel> {
    use image::DynamicImage as D;
    let img = decode(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    // rgb2gray's luminance row; integer classes round the result.
    let gray = |p: &[f64], max: f64| (0.298936021293775 * p[0] + 0.587043074451121 * p[1] + 0.114020904255103 * p[2]).round().clamp(0.0, max);
    let color = |p: &[f64], max: f64| if to_gray { gray(p, max) } else { p[0] };
    let (values, max_value) = match &img {
        D::ImageLuma8(b) => (column_major(w, h, b.as_raw(), 1, |p| p[0] as f64), 255.0),
        D::ImageLumaA8(b) => (column_major(w, h, b.as_raw(), 2, |p| p[0] as f64), 255.0),
        D::ImageRgb8(b) => (column_major(w, h, b.as_raw(), 3, |p| color(&[p[0] as f64, p[1] as f64, p[2] as f64], 255.0)), 255.0),
        D::ImageRgba8(b) => (column_major(w, h, b.as_raw(), 4, |p| color(&[p[0] as f64, p[1] as f64, p[2] as f64], 255.0)), 255.0),
        D::ImageLuma16(b) => (column_major(w, h, b.as_raw(), 1, |p| p[0] as f64), 65535.0),
        D::ImageLumaA16(b) => (column_major(w, h, b.as_raw(), 2, |p| p[0] as f64), 65535.0),
        D::ImageRgb16(b) => (column_major(w, h, b.as_raw(), 3, |p| color(&[p[0] as f64, p[1] as f64, p[2] as f64], 65535.0)), 65535.0),
        D::ImageRgba16(b) => (column_major(w, h, b.as_raw(), 4, |p| color(&[p[0] as f64, p[1] as f64, p[2] as f64], 65535.0)), 65535.0),
        other => return Err(Error::file(path, format!("unsupported pixel format {:?} (expected 8- or 16-bit gray or RGB)", other.color()))),
    };
    if w == 0 || h == 0 {
        return Err(Error::file(path, "empty image"));
    }
    Ok(Channel { rows: h, cols: w, values, max_value })
}

/// A ground-truth mask: gray value > 128 (on the raw value, for 16-bit images too, as the tool does).
pub fn load_mask(path: &Path) -> Result<Mask> {
    let ch = read_channel(path, true)?;
    Ok(Mask { rows: ch.rows, cols: ch.cols, data: ch.values.iter().map(|&v| v > 128.0).collect() })
}

/// A prediction map brought to `rows × cols`, scaled to [0, 1] by its class range and min-max
/// normalised, as the tool prepares it.
pub fn load_prediction(path: &Path, rows: usize, cols: usize) -> Result<Map> {
    let ch = read_channel(path, false)?;
    let mut values = if (ch.rows, ch.cols) == (rows, cols) {
        ch.values
    } else {
        imresize(&ch.values, ch.rows, ch.cols, rows, cols, ch.max_value)
    };
    for v in values.iter_mut() {
        *v /= ch.max_value;
    }
    normalise_min_max(&mut values);
    Ok(Map { rows, cols, data: values })
}

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Image files of a folder keyed by file stem.
fn list_images(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list folder: {e}")))?;
    let mut by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::file(dir, format!("cannot list folder: {e}")))?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
        if !is_image || !path.is_file() {
            continue;
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(previous) = by_stem.insert(stem.clone(), path.clone()) {
            return Err(Error::file(dir, format!("two images named {stem}: {} and {}", file_name(&previous), file_name(&path))));
        }
    }
    if by_stem.is_empty() {
        return Err(Error::file(dir, "no .png or .jpg images"));
    }
    Ok(by_stem)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn name_list(names: &[&String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(|s| s.as_str()).collect();
    let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// Pairs predictions with ground truths by file stem; every image must have its partner.
pub fn pair_images(pred_dir: &Path, gt_dir: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    let preds = list_images(pred_dir)?;
    let gts = list_images(gt_dir)?;
    let no_gt: Vec<&String> = preds.keys().filter(|k| !gts.contains_key(*k)).collect();
    if !no_gt.is_empty() {
        return Err(Error::file(gt_dir, format!("no ground truth for prediction(s) {} of {}", name_list(&no_gt), pred_dir.display())));
    }
    let no_pred: Vec<&String> = gts.keys().filter(|k| !preds.contains_key(*k)).collect();
    if !no_pred.is_empty() {
        return Err(Error::file(pred_dir, format!("no prediction for ground truth(s) {} of {}", name_list(&no_pred), gt_dir.display())));
    }
    Ok(preds.into_iter().map(|(stem, pred)| (stem.clone(), pred, gts[&stem].clone())).collect())
}

/// Scores every prediction in `pred_dir` against the same-named mask in `gt_dir`.
pub fn evaluate_dirs(pred_dir: &Path, gt_dir: &Path, rule: EMeasureRule) -> Result<DatasetScores> {
    let pairs = pair_images(pred_dir, gt_dir)?;
    let images = pairs
        .par_iter()
        .map(|(stem, pred_path, gt_path)| {
            let gt = load_mask(gt_path)?;
            let pred = load_prediction(pred_path, gt.rows, gt.cols)?;
            Ok(score_image(stem, &pred, &gt, rule))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(aggregate(images))
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Folder of prediction maps (.png/.jpg); repeat to compare several models.
    #[arg(long, required = true)]
    pub pred: Vec<PathBuf>,
    /// Folder of ground-truth masks: once for all --pred, or once per --pred (e.g. one per class).
    #[arg(long, required = true)]
    pub gt: Vec<PathBuf>,
    /// Print JSON (summary, threshold curves and per-image scores) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write per-image and summary rows to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Binarisation for Eφ: at-least (P ≥ t, the tool at HEAD) or above (P > t, the tool version
    /// that computed the paper's published table).
    #[arg(long, value_enum, default_value = "at-least")]
    pub e_measure_rule: EMeasureRule,
}

/// One evaluated (prediction folder, ground-truth folder) pair.
pub struct Evaluation {
    pub label: String,
    pub pred_dir: PathBuf,
    pub gt_dir: PathBuf,
    pub scores: DatasetScores,
}

fn label_of(dir: &Path) -> String {
    dir.components().next_back().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string())
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.gt.len() != 1 && args.gt.len() != args.pred.len() {
        return Err(Error::invalid(format!(
            "give --gt once, or once per --pred (got {} --pred and {} --gt)",
            args.pred.len(),
            args.gt.len()
        )));
    }
    let mut evaluations = Vec::new();
    for (i, pred_dir) in args.pred.iter().enumerate() {
        let gt_dir = if args.gt.len() == 1 { &args.gt[0] } else { &args.gt[i] };
        let scores = evaluate_dirs(pred_dir, gt_dir, args.e_measure_rule)?;
        let mut label = label_of(pred_dir);
        if args.gt.len() > 1 {
            label = format!("{label} vs {}", label_of(gt_dir));
        }
        evaluations.push(Evaluation { label, pred_dir: pred_dir.clone(), gt_dir: gt_dir.clone(), scores });
    }
    if let Some(csv) = &args.csv {
        crate::io::write_atomic(csv, csv_text(&evaluations).as_bytes())?;
    }
    if args.json {
        let text = serde_json::to_string_pretty(&json_value(&evaluations)).map_err(|e| Error::invalid(format!("cannot format JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", table(&evaluations));
    }
    Ok(())
}

/// The paper's table (Dice, Sen., Spec., Sα, Eφ^mean, MAE) followed by the max-over-threshold variants.
pub fn table(evaluations: &[Evaluation]) -> String {
    let width = evaluations.iter().map(|e| e.label.chars().count()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<width$}  {:>6}  {:>6} {:>6} {:>6} {:>6} {:>7} {:>6}   {:>8} {:>7} {:>8} {:>6}\n",
        "Model", "images", "Dice", "Sen.", "Spec.", "Sα", "Eφmean", "MAE", "Dice max", "Sen.max", "Spec.max", "Eφmax"
    );
    for e in evaluations {
        let s = &e.scores.summary;
        out += &format!(
            "{:<width$}  {:>6}  {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>7.3} {:>6.3}   {:>8.3} {:>7.3} {:>8.3} {:>6.3}\n",
            e.label,
            e.scores.images.len(),
            s.dice.mean,
            s.sensitivity.mean,
            s.specificity.mean,
            s.s_measure,
            s.e_measure.mean,
            s.mae,
            s.dice.max,
            s.sensitivity.max,
            s.specificity.max,
            s.e_measure.max
        );
    }
    out
}

fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "dice_mean": s.dice.mean, "dice_max": s.dice.max,
        "sensitivity_mean": s.sensitivity.mean, "sensitivity_max": s.sensitivity.max,
        "specificity_mean": s.specificity.mean, "specificity_max": s.specificity.max,
        "s_measure": s.s_measure,
        "e_measure_mean": s.e_measure.mean, "e_measure_max": s.e_measure.max,
        "mae": s.mae,
    })
}

pub fn json_value(evaluations: &[Evaluation]) -> serde_json::Value {
    let results: Vec<serde_json::Value> = evaluations
        .iter()
        .map(|e| {
            let per_image: Vec<serde_json::Value> = e
                .scores
                .images
                .iter()
                .map(|im| {
                    let mut v = summary_json(&im.summary());
                    v["name"] = serde_json::json!(im.name);
                    v
                })
                .collect();
            serde_json::json!({
                "label": e.label,
                "pred": e.pred_dir.display().to_string(),
                "gt": e.gt_dir.display().to_string(),
                "images": e.scores.images.len(),
                "summary": summary_json(&e.scores.summary),
                "curves": {
                    "thresholds": thresholds().to_vec(),
                    "dice": e.scores.dice, "sensitivity": e.scores.sensitivity,
                    "specificity": e.scores.specificity, "e_measure": e.scores.e_measure,
                },
                "per_image": per_image,
            })
        })
        .collect();
    serde_json::json!({ "results": results })
}

pub fn csv_text(evaluations: &[Evaluation]) -> String {
    let quote = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let row = |label: &str, image: &str, s: &Summary| {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            quote(label),
            quote(image),
            s.dice.mean,
            s.dice.max,
            s.sensitivity.mean,
            s.sensitivity.max,
            s.specificity.mean,
            s.specificity.max,
            s.s_measure,
            s.e_measure.mean,
            s.e_measure.max,
            s.mae
        )
    };
    let mut out = String::from("model,image,dice_mean,dice_max,sensitivity_mean,sensitivity_max,specificity_mean,specificity_max,s_measure,e_measure_mean,e_measure_max,mae\n");
    for e in evaluations {
        for im in &e.scores.images {
            out += &row(&e.label, &im.name, &im.summary());
        }
        out += &row(&e.label, "(all)", &e.scores.summary);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_matlab_colon() {
        let t = thresholds();
        assert_eq!(t[0], 1.0);
        assert_eq!(t[255], 0.0);
        assert_eq!(t[1], 1.0 - 1.0 / 255.0);
        // The second half counts down from 0, so these are multiples of 1/255, not 1 − k/255.
        assert_eq!(t[250], 5.0 * (1.0 / 255.0));
        assert!(t.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn constant_map_passes_min_max_unchanged() {
        let mut v = vec![0.25; 4];
        normalise_min_max(&mut v);
        assert_eq!(v, vec![0.25; 4]);
        let mut w = vec![0.2, 0.6, 0.4];
        normalise_min_max(&mut w);
        assert_eq!(w[0], 0.0);
        assert!((w[2] - 0.5).abs() < 1e-15);
    }

    #[test]
    fn resize_same_size_rows_is_identity_and_upscale_keeps_constants() {
        let src: Vec<f64> = (0..12).map(|v| (v * 20) as f64).collect();
        assert_eq!(imresize(&src, 3, 4, 3, 4, 255.0), src);
        let flat = vec![77.0; 20];
        assert!(imresize(&flat, 4, 5, 9, 3, 255.0).iter().all(|&v| v == 77.0));
    }

    #[test]
    fn perfect_prediction_scores() {
        let gt = Mask { rows: 4, cols: 4, data: (0..16).map(|i| i % 4 < 2 && i / 4 < 2).collect() };
        let pred = Map { rows: 4, cols: 4, data: gt.data.iter().map(|&g| g as u8 as f64).collect() };
        let s = score_image("x", &pred, &gt, EMeasureRule::AtLeast).summary();
        // Every threshold but 0 reproduces the mask; at 0 all 16 pixels are foreground: 2·4/(4+16).
        assert_eq!(s.dice.max, 1.0);
        assert!((s.dice.mean - (255.0 + 0.4) / 256.0).abs() < 1e-15, "{}", s.dice.mean);
        assert_eq!(s.mae, 0.0);
        assert!((s.s_measure - 1.0).abs() < 1e-12, "{}", s.s_measure);
    }
}
