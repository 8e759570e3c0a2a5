//! Image slices in, network input out — matching the public Inf-Net test script:
//!
//! ```python
//! image = Image.open(path).convert('RGB')
//! transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
//!                     transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(image)
//! ```
//!
//! `Resize` on a PIL image is `Image.resize(.., BILINEAR)`, Pillow's two-pass separable resampler
//! (`libImaging/Resample.c`): a triangle filter whose support grows with the reduction ratio (so
//! downscaling antialiases), half-pixel centres, weights normalised over the pixels inside the image,
//! horizontal pass first. For 8-bit RGB Pillow uses 22-bit fixed-point weights and rounds to uint8
//! after *each* pass; `resize_plane_u8` reproduces that bit for bit, since the network sees the
//! rounded values. `image::imageops` uses different kernels and centres, hence our own resampler.
//!
//! 16-bit slices: Pillow's `convert('RGB')` of mode `I;16` clips every value above 255 to white,
//! which would destroy a 16-bit CT slice. We instead scale by 1/257 (65535 → 255) and keep the result
//! as float, resampled like Pillow's float mode `F` (double weights, no rounding), i.e. the 16-bit
//! slice behaves like an 8-bit one with extra precision rather than like what Pillow would do to it.
//!
//! Decoding is the `image` crate's, not libjpeg-turbo's: PNG and TIFF give identical samples, gray
//! JPEGs agree with Pillow within one level, colour JPEGs can differ by several levels (chroma
//! upsampling), so only the resampling onwards is bit-exact for them.

use crate::error::{Error, Result};
use image::DynamicImage;
use std::path::Path;

pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Sample storage of a decoded slice, interleaved by channel.
#[derive(Clone, Debug)]
pub enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// A decoded slice with 1 (gray) or 3 (RGB) channels; alpha is dropped like `convert('RGB')` does.
#[derive(Clone, Debug)]
pub struct Slice {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub samples: Samples,
}

/// Reads and decodes an image file (format guessed from the content, then the extension).
pub fn decode(path: &Path) -> Result<Slice> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot read image: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::file(path, "cannot decode image: unrecognised format (expected PNG, JPEG or TIFF)"));
    }
    let img = reader.decode().map_err(|e| Error::file(path, format!("cannot decode image: {}", one_line(&e.to_string()))))?;
    let slice = Slice::from_dynamic(img);
    if slice.width == 0 || slice.height == 0 {
        return Err(Error::file(path, "image is empty (0 pixels)"));
    }
    Ok(slice)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Slice {
    pub fn from_dynamic(img: DynamicImage) -> Slice {
        let (width, height) = (img.width() as usize, img.height() as usize);
        let (channels, samples) = match img {
            DynamicImage::ImageLuma8(b) => (1, Samples::U8(b.into_raw())),
            DynamicImage::ImageLumaA8(_) => (1, Samples::U8(img.to_luma8().into_raw())),
            DynamicImage::ImageRgb8(b) => (3, Samples::U8(b.into_raw())),
            DynamicImage::ImageRgba8(_) => (3, Samples::U8(img.to_rgb8().into_raw())),
            DynamicImage::ImageLuma16(b) => (1, Samples::U16(b.into_raw())),
            DynamicImage::ImageLumaA16(_) => (1, Samples::U16(img.to_luma16().into_raw())),
            DynamicImage::ImageRgb16(b) => (3, Samples::U16(b.into_raw())),
            // Float and any future layouts: 16 bits keeps their precision (floats are taken as 0..1).
            _ => (3, Samples::U16(img.to_rgb16().into_raw())),
        };
        Slice { width, height, channels, samples }
    }

    /// One channel as floats on the 0..255 scale (16-bit values divided by 257).
    fn plane_f32(&self, c: usize) -> Vec<f32> {
        let ch = self.channels;
        match &self.samples {
            Samples::U8(d) => d.iter().skip(c).step_by(ch).map(|&v| v as f32).collect(),
            Samples::U16(d) => d.iter().skip(c).step_by(ch).map(|&v| v as f32 / 257.0).collect(),
        }
    }

    /// The slice as interleaved 8-bit RGB (gray replicated, 16-bit rounded from value/257), for overlays.
    pub fn to_rgb8(&self) -> Vec<u8> {
        let n = self.width * self.height;
        let mut out = Vec::with_capacity(3 * n);
        for i in 0..n {
            for c in 0..3 {
                let j = i * self.channels + if self.channels == 1 { 0 } else { c };
                out.push(match &self.samples {
                    Samples::U8(d) => d[j],
                    Samples::U16(d) => ((d[j] as u32 * 255 + 32767) / 65535) as u8,
                });
            }
        }
        out
    }

    /// The network input for this slice: 3×size×size, resized, scaled to 0..1 and normalised.
    pub fn to_network_input(&self, size: usize) -> Vec<f32> {
        let plane = size * size;
        let mut out = vec![0.0f32; 3 * plane];
        // Gray slices resize once; `convert('RGB')` makes the three channels identical anyway.
        let resized: Vec<Vec<f32>> = (0..self.channels)
            .map(|c| match &self.samples {
                Samples::U8(d) => {
                    let p: Vec<u8> = d.iter().skip(c).step_by(self.channels).copied().collect();
                    resize_plane_u8(&p, self.width, self.height, size, size).into_iter().map(|v| v as f32).collect()
                }
                Samples::U16(_) => resize_plane_f32(&self.plane_f32(c), self.width, self.height, size, size),
            })
            .collect();
        for c in 0..3 {
            let src = &resized[if self.channels == 1 { 0 } else { c }];
            for (o, &v) in out[c * plane..(c + 1) * plane].iter_mut().zip(src) {
                *o = (v / 255.0 - MEAN[c]) / STD[c];
            }
        }
        out
    }
}

/// Pillow's resampling weights for one axis (`precompute_coeffs` with the bilinear filter).
struct Coeffs {
    ksize: usize,
    /// First input index and number of taps per output index.
    bounds: Vec<(usize, usize)>,
    weights: Vec<f64>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support 1.0, widened when reducing
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // `as i64` truncates toward zero like Pillow's `(int)` cast.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let k = &mut weights[xx * ksize..xx * ksize + n];
        for (x, w) in k.iter_mut().enumerate() {
            *w = triangle(((x + xmin) as f64 - center + 0.5) / filterscale);
        }
        let total: f64 = k.iter().sum();
        if total != 0.0 {
            k.iter_mut().for_each(|w| *w /= total);
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, weights }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn fixed_point(weights: &[f64]) -> Vec<i32> {
    let one = (1i64 << PRECISION_BITS) as f64;
    weights.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect()
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resamples one 8-bit plane like Pillow's `Image.resize(.., BILINEAR)` on mode L/RGB, bit-exact.
pub fn resize_plane_u8(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    let mut cur = src.to_vec();
    let mut cw = w;
    if ow != w {
        let co = precompute(w, ow);
        let k = fixed_point(&co.weights);
        let mut out = vec![0u8; ow * h];
        for y in 0..h {
            let row = &cur[y * w..(y + 1) * w];
            for (xx, &(xmin, n)) in co.bounds.iter().enumerate() {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (x, &kw) in k[xx * co.ksize..xx * co.ksize + n].iter().enumerate() {
                    ss += row[xmin + x] as i32 * kw;
                }
                out[y * ow + xx] = clip8(ss);
            }
        }
        cur = out;
        cw = ow;
    }
    if oh != h {
        let co = precompute(h, oh);
        let k = fixed_point(&co.weights);
        let mut out = vec![0u8; cw * oh];
        for (yy, &(ymin, n)) in co.bounds.iter().enumerate() {
            let ks = &k[yy * co.ksize..yy * co.ksize + n];
            for x in 0..cw {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (y, &kw) in ks.iter().enumerate() {
                    ss += cur[(ymin + y) * cw + x] as i32 * kw;
                }
                out[yy * cw + x] = clip8(ss);
            }
        }
        cur = out;
    }
    cur
}

/// Resamples one float plane like Pillow's `Image.resize(.., BILINEAR)` on mode F (double weights).
pub fn resize_plane_f32(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let mut cur = src.to_vec();
    let mut cw = w;
    if ow != w {
        let co = precompute(w, ow);
        let mut out = vec![0f32; ow * h];
        for y in 0..h {
            let row = &cur[y * w..(y + 1) * w];
            for (xx, &(xmin, n)) in co.bounds.iter().enumerate() {
                let ks = &co.weights[xx * co.ksize..xx * co.ksize + n];
                let ss: f64 = ks.iter().enumerate().map(|(x, &kw)| row[xmin + x] as f64 * kw).sum();
                out[y * ow + xx] = ss as f32;
            }
        }
        cur = out;
        cw = ow;
    }
    if oh != h {
        let co = precompute(h, oh);
        let mut out = vec![0f32; cw * oh];
        for (yy, &(ymin, n)) in co.bounds.iter().enumerate() {
            let ks = &co.weights[yy * co.ksize..yy * co.ksize + n];
            for x in 0..cw {
                let ss: f64 = ks.iter().enumerate().map(|(y, &kw)| cur[(ymin + y) * cw + x] as f64 * kw).sum();
                out[yy * cw + x] = ss as f32;
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let src: Vec<u8> = (0..35).map(|i| (i * 7) as u8).collect();
        assert_eq!(resize_plane_u8(&src, 7, 5, 7, 5), src);
        let flat = vec![200u8; 13 * 9];
        assert!(resize_plane_u8(&flat, 13, 9, 4, 20).iter().all(|&v| v == 200));
        let f = vec![3.5f32; 13 * 9];
        assert!(resize_plane_f32(&f, 13, 9, 31, 2).iter().all(|&v| (v - 3.5).abs() < 1e-6));
    }

    #[test]
    fn rgba_drops_alpha() {
        let img = image::RgbaImage::from_raw(1, 1, vec![10, 20, 30, 0]).unwrap();
        let s = Slice::from_dynamic(DynamicImage::ImageRgba8(img));
        assert_eq!(s.channels, 3);
        assert_eq!(s.to_rgb8(), vec![10, 20, 30]);
    }
}
