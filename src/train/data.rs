//! The COVID-SemiSeg training layout: DIR/Imgs/*.jpg|png, DIR/GT/*.png (masks) and optionally
//! DIR/Edge/*.png, paired by file stem. Preprocessing follows the public loader: resize to size×size,
//! images to [0, 1] then normalised with the ImageNet mean/std, masks and edges to [0, 1] (not
//! binarised). Without Edge/, edges are derived from the mask (see `edge_from_mask`).

use crate::error::{Error, Result};
use crate::weights::Tensor;
use std::path::{Path, PathBuf};


#[derive(Clone, Debug)]
pub struct Sample {
    pub image: PathBuf,
    pub mask: PathBuf,
    pub edge: Option<PathBuf>,
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn list(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && has_ext(p, exts)).collect();
    v.sort();
    Ok(v)
}

/// Lists and validates the whole dataset before any training: every image has a mask (and an edge map
/// when Edge/ exists) of the same size, and every file's header decodes. Errors name the file.
pub fn scan(root: &Path) -> Result<Vec<Sample>> {
    let (imgs, gts, edges) = (root.join("Imgs"), root.join("GT"), root.join("Edge"));
    for d in [&imgs, &gts] {
        if !d.is_dir() {
            return Err(Error::file(d, "missing: a training set holds Imgs/ and GT/ (and optionally Edge/)"));
        }
    }
    let have_edges = edges.is_dir();
    let images = list(&imgs, &["jpg", "jpeg", "png"])?;
    if images.is_empty() {
        return Err(Error::file(&imgs, "contains no .jpg or .png images"));
    }
    let mut samples = Vec::with_capacity(images.len());
    for image in images {
        let stem = image.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let mask = gts.join(format!("{stem}.png"));
        if !mask.is_file() {
            return Err(Error::file(&image, format!("no mask {} for this image", mask.display())));
        }
        let edge = if have_edges {
            let e = edges.join(format!("{stem}.png"));
            if !e.is_file() {
                return Err(Error::file(&image, format!("no edge map {} for this image (Edge/ exists, so every image needs one)", e.display())));
            }
            Some(e)
        } else {
            None
        };
        let dims = |p: &Path| image::image_dimensions(p).map_err(|e| Error::file(p, format!("cannot read image: {e}")));
        let d = dims(&image)?;
        for other in std::iter::once(&mask).chain(edge.as_ref()) {
            let od = dims(other)?;
            if od != d {
                return Err(Error::file(other, format!("is {}×{} but its image {} is {}×{}", od.0, od.1, image.display(), d.0, d.1)));
            }
        }
        samples.push(Sample { image, mask, edge });
    }
    Ok(samples)
}

fn open(p: &Path) -> Result<image::DynamicImage> {
    image::open(p).map_err(|e| Error::file(p, format!("cannot decode image: {e}")))
}

/// 1 where a binarised (≥ 128) mask pixel differs from one of its 4-neighbours, else 0.
pub fn edge_from_mask(mask: &image::GrayImage) -> image::GrayImage {
    let (w, h) = mask.dimensions();
    let on = |x: i64, y: i64| mask.get_pixel(x.clamp(0, w as i64 - 1) as u32, y.clamp(0, h as i64 - 1) as u32)[0] >= 128;
    image::GrayImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as i64, y as i64);
        let c = on(x, y);
        let edge = [(1, 0), (-1, 0), (0, 1), (0, -1)].iter().any(|(dx, dy)| on(x + dx, y + dy) != c);
        image::Luma([if edge { 255 } else { 0 }])
    })
}

/// `transforms.Resize((size, size))` + `ToTensor()` on a mode-L image, Pillow-exact.
fn gray_to(img: &image::GrayImage, size: usize, out: &mut [f32]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let r = crate::preprocess::resize_plane_u8(img.as_raw(), w, h, size, size);
    for (o, p) in out.iter_mut().zip(r) {
        *o = p as f32 / 255.0;
    }
}

/// Loads samples into a batch at size×size: images N×3×S×S, masks and edges N×1×S×S.
pub fn load_batch(samples: &[&Sample], size: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, hw) = (samples.len(), size * size);
    let mut images = vec![0.0f32; n * 3 * hw];
    let mut masks = vec![0.0f32; n * hw];
    let mut edges = vec![0.0f32; n * hw];
    for (i, smp) in samples.iter().enumerate() {
        // The same Pillow-exact preprocessing as inference (`infnet segment`).
        let slice = crate::preprocess::decode(&smp.image)?;
        images[i * 3 * hw..(i + 1) * 3 * hw].copy_from_slice(&slice.to_network_input(size));
        let mask = open(&smp.mask)?.to_luma8();
        gray_to(&mask, size, &mut masks[i * hw..(i + 1) * hw]);
        let edge = match &smp.edge {
            Some(p) => open(p)?.to_luma8(),
            None => edge_from_mask(&mask),
        };
        gray_to(&edge, size, &mut edges[i * hw..(i + 1) * hw]);
    }
    Ok((
        Tensor { shape: vec![n, 3, size, size], data: images },
        Tensor { shape: vec![n, 1, size, size], data: masks },
        Tensor { shape: vec![n, 1, size, size], data: edges },
    ))
}

/// A seeded permutation of 0..n (Fisher–Yates over SplitMix64), reproducible across runs and platforms.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}
