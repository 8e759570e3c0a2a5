//! `infnet phantom`: deterministic synthetic axial chest CT slices with infection masks, in the
//! COVID-SemiSeg folder layout, for exercising segmentation and evaluation without the dataset.
//!
//! Each slice is built in Hounsfield units: air outside a body ellipse; skin, subcutaneous fat and a
//! muscle layer; mediastinum with heart, aorta and oesophagus; sternum, vertebra and ribs as bone
//! (cortex brighter than marrow); two lungs of aerated parenchyma with a posterior density gradient,
//! vessels (bright discs and short in-plane segments, larger near the hila) and bronchi (air lumen,
//! soft-tissue wall). Lesions lie inside the lungs, preferring the posterior periphery as COVID-19
//! opacities do: ground-glass (hazy, raised to about −550 HU so that vessels stay visible) and
//! consolidation (near soft-tissue density, hiding vessels). The HU map is blurred to a CT-like point
//! spread, given quantum noise and mapped through the lung window W1500/L−600 to 8 bits.
//!
//! Output: `Imgs/NAME.png` (8-bit gray), `GT/NAME.png` (0/255 infection), `Edge/NAME.png` (0/255, the
//! 4-connected boundary band on both sides of the mask, as the dataset's edge maps), and with
//! `--multiclass` `GT-1/NAME.png` (ground-glass) and `GT-2/NAME.png` (consolidation) as in the
//! public multi-class test set. Slice `i` of seed `s` depends only on (s, i).

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Lung window: level and width in HU.
pub const WINDOW_LEVEL: f32 = -600.0;
pub const WINDOW_WIDTH: f32 = 1500.0;

/// SplitMix64: small, seedable and identical on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
        r.next_u64();
        r
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// Smooth random texture in about [−1, 1]: bilinear value noise over a few octaves.
struct ValueNoise {
    grids: Vec<(usize, Vec<f32>)>,
}

impl ValueNoise {
    fn new(rng: &mut Rng, base_cells: usize, octaves: usize) -> ValueNoise {
        let grids = (0..octaves)
            .map(|o| {
                let cells = base_cells << o;
                (cells, (0..(cells + 1) * (cells + 1)).map(|_| rng.range(-1.0, 1.0)).collect())
            })
            .collect();
        ValueNoise { grids }
    }
    /// At normalised coordinates u, v in [0, 1].
    fn at(&self, u: f32, v: f32) -> f32 {
        let mut total = 0.0;
        let mut amplitude = 1.0;
        let mut norm = 0.0;
        for (cells, grid) in &self.grids {
            let (fx, fy) = (u.clamp(0.0, 1.0) * *cells as f32, v.clamp(0.0, 1.0) * *cells as f32);
            let (ix, iy) = ((fx as usize).min(cells - 1), (fy as usize).min(cells - 1));
            let (tx, ty) = (fx - ix as f32, fy - iy as f32);
            let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
            let g = |x: usize, y: usize| grid[y * (cells + 1) + x];
            let top = g(ix, iy) + (g(ix + 1, iy) - g(ix, iy)) * sx;
            let bottom = g(ix, iy + 1) + (g(ix + 1, iy + 1) - g(ix, iy + 1)) * sx;
            total += amplitude * (top + (bottom - top) * sy);
            norm += amplitude;
            amplitude *= 0.5;
        }
        total / norm
    }
}

/// An ellipse in normalised coordinates (x right, y down, both in [−1, 1]), rotated by `angle`.
#[derive(Clone, Copy)]
struct Ellipse {
    cx: f32,
    cy: f32,
    ax: f32,
    ay: f32,
    angle: f32,
}

impl Ellipse {
    fn new(cx: f32, cy: f32, ax: f32, ay: f32) -> Ellipse {
        Ellipse { cx, cy, ax, ay, angle: 0.0 }
    }
    /// < 1 inside, 1 on the boundary.
    fn radius(&self, x: f32, y: f32) -> f32 {
        let (s, c) = self.angle.sin_cos();
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
        ((u / self.ax).powi(2) + (v / self.ay).powi(2)).sqrt()
    }
    fn scaled(&self, k: f32) -> Ellipse {
        Ellipse { ax: self.ax * k, ay: self.ay * k, ..*self }
    }
}

/// One generated slice: HU map, 8-bit image and masks, row-major `size × size`.
pub struct Slice {
    pub size: usize,
    pub hu: Vec<f32>,
    pub image: Vec<u8>,
    pub lungs: Vec<bool>,
    pub ground_glass: Vec<bool>,
    pub consolidation: Vec<bool>,
}

impl Slice {
    /// Any infection: ground-glass or consolidation.
    pub fn infection(&self) -> Vec<bool> {
        self.ground_glass.iter().zip(&self.consolidation).map(|(&g, &c)| g || c).collect()
    }
}

/// Maps HU through the lung window to 0..=255.
pub fn window(hu: f32) -> u8 {
    let lo = WINDOW_LEVEL - WINDOW_WIDTH / 2.0;
    (((hu - lo) / WINDOW_WIDTH).clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The dataset's edge maps: mask pixels with a 4-neighbour outside the mask, and non-mask pixels
/// with a 4-neighbour inside it (a two-pixel band straddling the boundary).
pub fn edge_band(mask: &[bool], size: usize) -> Vec<bool> {
    let at = |x: isize, y: isize| x >= 0 && y >= 0 && (x as usize) < size && (y as usize) < size && mask[y as usize * size + x as usize];
    let mut edge = vec![false; size * size];
    for y in 0..size as isize {
        for x in 0..size as isize {
            let here = at(x, y);
            let neighbours = [at(x - 1, y), at(x + 1, y), at(x, y - 1), at(x, y + 1)];
            let inside_image = [x > 0, (x as usize) + 1 < size, y > 0, (y as usize) + 1 < size];
            edge[y as usize * size + x as usize] =
                neighbours.iter().zip(&inside_image).any(|(&n, &inside)| inside && n != here);
        }
    }
    edge
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Separable Gaussian blur (the scanner's point spread), edges clamped.
fn blur(data: &mut [f32], size: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / sum).collect();
    let last = size as isize - 1;
    let mut tmp = vec![0.0; data.len()];
    for y in 0..size {
        for x in 0..size {
            tmp[y * size + x] = (-radius..=radius).map(|i| kernel[(i + radius) as usize] * data[y * size + (x as isize + i).clamp(0, last) as usize]).sum();
        }
    }
    for y in 0..size {
        for x in 0..size {
            data[y * size + x] = (-radius..=radius).map(|i| kernel[(i + radius) as usize] * tmp[(y as isize + i).clamp(0, last) as usize * size + x]).sum();
        }
    }
}

/// Paints `value` (HU) over pixels where `inside(x, y)` holds, within a bounding box.
fn paint(hu: &mut [f32], size: usize, bbox: (f32, f32, f32, f32), mut f: impl FnMut(f32, f32, &mut f32)) {
    let to_px = |v: f32| (((v + 1.0) / 2.0) * size as f32).floor() as isize;
    let (x0, y0) = (to_px(bbox.0).max(0) as usize, to_px(bbox.1).max(0) as usize);
    let (x1, y1) = ((to_px(bbox.2) + 1).clamp(0, size as isize) as usize, (to_px(bbox.3) + 1).clamp(0, size as isize) as usize);
    for py in y0..y1 {
        for px in x0..x1 {
            let (x, y) = (coord(px, size), coord(py, size));
            f(x, y, &mut hu[py * size + px]);
        }
    }
}

fn coord(p: usize, size: usize) -> f32 {
    (p as f32 + 0.5) / size as f32 * 2.0 - 1.0
}

fn ellipse_bbox(e: &Ellipse) -> (f32, f32, f32, f32) {
    let r = e.ax.max(e.ay);
    (e.cx - r, e.cy - r, e.cx + r, e.cy + r)
}

/// A bone cross-section: bright cortex around marrow.
fn paint_bone(hu: &mut [f32], size: usize, e: Ellipse, cortex_hu: f32, marrow_hu: f32) {
    let marrow = e.scaled(0.7);
    paint(hu, size, ellipse_bbox(&e), |x, y, v| {
        if e.radius(x, y) < 1.0 {
            *v = if marrow.radius(x, y) < 1.0 { marrow_hu } else { cortex_hu };
        }
    });
}

/// Generates slice `index` of the series `seed`.
pub fn generate(seed: u64, index: u64, size: usize) -> Slice {
    let mut rng = Rng::new(seed, index);
    let n = size * size;
    let pixel = 2.0 / size as f32;
    // Anatomy is sized for a 512-pixel field of view and scales with it.
    let unit = 2.0 / 512.0;
    let mut hu = vec![-1000.0f32; n];

    // Body: skin, subcutaneous fat, muscle, then the thoracic cavity.
    let body = Ellipse::new(rng.range(-0.02, 0.02), rng.range(0.02, 0.08), rng.range(0.84, 0.92), rng.range(0.62, 0.7));
    let fat_inner = body.scaled(1.0 - rng.range(0.05, 0.1));
    let muscle_inner = fat_inner.scaled(1.0 - rng.range(0.05, 0.08));
    let texture = ValueNoise::new(&mut rng, 8, 4);
    paint(&mut hu, size, ellipse_bbox(&body), |x, y, v| {
        let r = body.radius(x, y);
        if r >= 1.0 {
            return;
        }
        let t = texture.at((x + 1.0) / 2.0, (y + 1.0) / 2.0);
        *v = if r > 1.0 - 1.5 * pixel / body.ax.min(body.ay) {
            30.0
        } else if fat_inner.radius(x, y) >= 1.0 {
            -100.0 + 15.0 * t
        } else if muscle_inner.radius(x, y) >= 1.0 {
            45.0 + 10.0 * t
        } else {
            35.0 + 8.0 * t
        };
    });

    // Lungs: rounded fields either side of the mediastinum, indented by the heart.
    let cavity = muscle_inner.scaled(0.97);
    let heart = Ellipse { angle: rng.range(-0.5, -0.2), ..Ellipse::new(rng.range(-0.12, -0.04), rng.range(0.0, 0.12), rng.range(0.26, 0.34), rng.range(0.2, 0.27)) };
    let spine_y = body.cy + body.ay * rng.range(0.68, 0.74);
    let left_lung = Ellipse::new(cavity.cx - cavity.ax * 0.5, cavity.cy - 0.02, cavity.ax * 0.47, cavity.ay * 0.86);
    let right_lung = Ellipse::new(cavity.cx + cavity.ax * 0.5, cavity.cy - 0.02, cavity.ax * 0.47, cavity.ay * 0.86);
    let vertebra = Ellipse::new(body.cx, spine_y - 0.05, 0.11, 0.09);
    let mediastinum_half_width = rng.range(0.1, 0.14);
    let is_lung = |x: f32, y: f32| {
        let in_field = left_lung.radius(x, y) < 1.0 || right_lung.radius(x, y) < 1.0;
        in_field
            && cavity.radius(x, y) < 1.0
            && (x - cavity.cx).abs() > mediastinum_half_width * (1.0 - 0.5 * ((y - cavity.cy + 0.6) / 1.2).clamp(0.0, 1.0))
            && heart.radius(x, y) > 1.0
            && vertebra.scaled(1.3).radius(x, y) > 1.0
    };
    let mut lungs = vec![false; n];
    let parenchyma = ValueNoise::new(&mut rng, 16, 4);
    let fine = ValueNoise::new(&mut rng, 64, 2);
    for py in 0..size {
        for px in 0..size {
            let (x, y) = (coord(px, size), coord(py, size));
            if is_lung(x, y) {
                lungs[py * size + px] = true;
                // Dependent (posterior) lung is denser; parenchyma has a fine reticular texture.
                let posterior = ((y - cavity.cy) / cavity.ay).clamp(-1.0, 1.0);
                hu[py * size + px] = -865.0 + 45.0 * posterior + 25.0 * parenchyma.at((x + 1.0) / 2.0, (y + 1.0) / 2.0) + 15.0 * fine.at((x + 1.0) / 2.0, (y + 1.0) / 2.0);
            }
        }
    }
    let in_lung = |x: f32, y: f32, lungs: &[bool]| {
        let (px, py) = (((x + 1.0) / 2.0 * size as f32) as isize, ((y + 1.0) / 2.0 * size as f32) as isize);
        px >= 0 && py >= 0 && (px as usize) < size && (py as usize) < size && lungs[py as usize * size + px as usize]
    };

    // Vessels and bronchi, larger towards the hila.
    let hila = [(left_lung.cx + left_lung.ax * 0.55, cavity.cy), (right_lung.cx - right_lung.ax * 0.55, cavity.cy)];
    let vessel_count = 260 + (rng.unit() * 160.0) as usize;
    for _ in 0..vessel_count {
        let (x, y) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
        if !in_lung(x, y, &lungs) {
            continue;
        }
        let d_hilum = hila.iter().map(|(hx, hy)| ((x - hx).powi(2) + (y - hy).powi(2)).sqrt()).fold(f32::MAX, f32::min);
        let radius = unit * (0.8 + 5.0 * (1.0 - (d_hilum / 0.6).min(1.0)).powi(2) * rng.range(0.5, 1.2));
        let vessel_hu = rng.range(20.0, 60.0);
        if rng.unit() < 0.35 {
            // An in-plane segment, pointing roughly away from the hilum.
            let (hx, hy) = hila.iter().copied().min_by(|a, b| ((x - a.0).powi(2) + (y - a.1).powi(2)).total_cmp(&((x - b.0).powi(2) + (y - b.1).powi(2)))).unwrap_or((0.0, 0.0));
            let angle = (y - hy).atan2(x - hx) + rng.range(-0.4, 0.4);
            let length = rng.range(6.0, 18.0) * unit;
            let seg = Ellipse { angle, ..Ellipse::new(x, y, length, radius) };
            let lungs_ref = &lungs;
            paint(&mut hu, size, ellipse_bbox(&seg), |px, py, v| {
                if seg.radius(px, py) < 1.0 && in_lung(px, py, lungs_ref) {
                    *v = vessel_hu;
                }
            });
        } else {
            let disc = Ellipse::new(x, y, radius, radius);
            let lungs_ref = &lungs;
            paint(&mut hu, size, ellipse_bbox(&disc), |px, py, v| {
                if disc.radius(px, py) < 1.0 && in_lung(px, py, lungs_ref) {
                    *v = vessel_hu;
                }
            });
        }
    }
    for _ in 0..(6 + (rng.unit() * 8.0) as usize) {
        let (hx, hy) = hila[(rng.unit() * 2.0) as usize % 2];
        let (x, y) = (hx + rng.normal() * 0.12, hy + rng.normal() * 0.15);
        if !in_lung(x, y, &lungs) {
            continue;
        }
        let outer = rng.range(2.5, 7.0) * unit;
        let wall = Ellipse::new(x, y, outer, outer);
        let lumen = wall.scaled(rng.range(0.55, 0.75));
        let lungs_ref = &lungs;
        paint(&mut hu, size, ellipse_bbox(&wall), |px, py, v| {
            if wall.radius(px, py) < 1.0 && in_lung(px, py, lungs_ref) {
                *v = if lumen.radius(px, py) < 1.0 { -990.0 } else { -80.0 };
            }
        });
    }

    // Lesions: irregular blobs inside the lungs, mostly peripheral and posterior.
    let mut ground_glass_alpha = vec![0.0f32; n];
    let mut consolidation_alpha = vec![0.0f32; n];
    let lesion_count = (rng.unit() * 7.0) as usize;
    let mut placed = 0;
    let mut attempts = 0;
    while placed < lesion_count && attempts < 200 {
        attempts += 1;
        let (x, y) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
        if !in_lung(x, y, &lungs) {
            continue;
        }
        let posterior = ((y - cavity.cy) / cavity.ay + 1.0) / 2.0;
        let peripheral = cavity.radius(x, y);
        if rng.unit() > 0.25 + 0.4 * posterior + 0.35 * peripheral {
            continue;
        }
        placed += 1;
        let is_consolidation = rng.unit() < 0.35;
        let scale = rng.range(0.03, 0.16) * if is_consolidation { 0.7 } else { 1.0 };
        let bumps: Vec<(f32, f32, f32)> = (0..(2 + (rng.unit() * 5.0) as usize))
            .map(|_| (x + rng.normal() * scale * 0.6, y + rng.normal() * scale * 0.6, scale * rng.range(0.4, 1.0)))
            .collect();
        let edge_noise = ValueNoise::new(&mut rng, 24, 3);
        let target = if is_consolidation { &mut consolidation_alpha } else { &mut ground_glass_alpha };
        let reach = 2.5 * scale;
        let (x0, x1, y0, y1) = (x - 2.0 * reach, x + 2.0 * reach, y - 2.0 * reach, y + 2.0 * reach);
        let to_px = |v: f32| (((v + 1.0) / 2.0) * size as f32) as isize;
        for py in to_px(y0).max(0) as usize..(to_px(y1) + 1).clamp(0, size as isize) as usize {
            for px in to_px(x0).max(0) as usize..(to_px(x1) + 1).clamp(0, size as isize) as usize {
                let (u, v) = (coord(px, size), coord(py, size));
                let field: f32 = bumps.iter().map(|(bx, by, s)| (-((u - bx).powi(2) + (v - by).powi(2)) / (2.0 * s * s)).exp()).sum();
                let field = field + 0.35 * edge_noise.at((u + 1.0) / 2.0, (v + 1.0) / 2.0);
                // Ground-glass fades out over a wide margin; consolidation has a sharper edge.
                let alpha = if is_consolidation { smoothstep(0.42, 0.58, field) } else { smoothstep(0.2, 0.8, field) };
                let i = py * size + px;
                target[i] = target[i].max(alpha);
            }
        }
    }
    let haze = ValueNoise::new(&mut rng, 48, 3);
    let mut ground_glass = vec![false; n];
    let mut consolidation = vec![false; n];
    for py in 0..size {
        for px in 0..size {
            let i = py * size + px;
            if !lungs[i] {
                continue;
            }
            let (x, y) = (coord(px, size), coord(py, size));
            let h = haze.at((x + 1.0) / 2.0, (y + 1.0) / 2.0);
            let g = ground_glass_alpha[i];
            if g > 0.0 {
                // Hazy and patchy: the density increase varies inside the lesion, and never darkens
                // vessels, which stay visible through ground glass.
                let strength = g * (0.55 + 0.45 * h);
                hu[i] = hu[i].max(hu[i] + strength * ((-600.0 + 70.0 * h) - hu[i]));
            }
            let c = consolidation_alpha[i];
            if c > 0.0 {
                hu[i] += c * ((-30.0 + 40.0 * h) - hu[i]);
            }
            consolidation[i] = c >= 0.5;
            ground_glass[i] = g >= 0.5 && !consolidation[i];
        }
    }

    // Mediastinum, bones and vessels outside the lungs (painted over the cavity, never over lung).
    let lungs_ref = &lungs;
    let aorta = Ellipse::new(body.cx + rng.range(0.08, 0.14), spine_y - rng.range(0.2, 0.26), 0.075, 0.075);
    let oesophagus = Ellipse::new(body.cx - 0.02, spine_y - 0.2, 0.035, 0.03);
    for (e, value) in [(aorta, 48.0), (oesophagus, 20.0)] {
        paint(&mut hu, size, ellipse_bbox(&e), |x, y, v| {
            if e.radius(x, y) < 1.0 && !in_lung(x, y, lungs_ref) {
                *v = value;
            }
        });
    }
    paint(&mut hu, size, ellipse_bbox(&oesophagus.scaled(0.35)), |x, y, v| {
        if oesophagus.scaled(0.35).radius(x, y) < 1.0 {
            *v = -950.0;
        }
    });
    paint_bone(&mut hu, size, vertebra, 900.0, 280.0);
    let canal = Ellipse::new(vertebra.cx, vertebra.cy + vertebra.ay + 0.05, 0.05, 0.045);
    let arch = canal.scaled(1.6);
    paint(&mut hu, size, ellipse_bbox(&arch), |x, y, v| {
        if arch.radius(x, y) < 1.0 {
            *v = if canal.radius(x, y) < 1.0 { 15.0 } else { 700.0 };
        }
    });
    let spinous = Ellipse::new(canal.cx, canal.cy + 0.1, 0.025, 0.07);
    paint_bone(&mut hu, size, spinous, 750.0, 300.0);
    let sternum = Ellipse::new(body.cx + rng.range(-0.02, 0.02), body.cy - fat_inner.ay * 0.93, 0.09, 0.035);
    paint_bone(&mut hu, size, sternum, 650.0, 250.0);
    // Ribs: oblique cross-sections just outside the lungs, along the chest wall.
    let rib_ring = muscle_inner.scaled(1.0 + rng.range(0.0, 0.03));
    let rib_count = 7 + (rng.unit() * 3.0) as usize;
    for side in [-1.0f32, 1.0] {
        for k in 0..rib_count {
            let t = -1.2 + 2.5 * (k as f32 + rng.range(0.3, 0.7)) / rib_count as f32;
            let theta = if side > 0.0 { t } else { std::f32::consts::PI - t };
            let (x, y) = (rib_ring.cx + rib_ring.ax * theta.cos(), rib_ring.cy + rib_ring.ay * theta.sin());
            let rib = Ellipse { angle: theta + std::f32::consts::FRAC_PI_2, ..Ellipse::new(x, y, rng.range(0.04, 0.07), rng.range(0.015, 0.022)) };
            paint(&mut hu, size, ellipse_bbox(&rib), |px, py, v| {
                if rib.radius(px, py) < 1.0 && !in_lung(px, py, lungs_ref) {
                    *v = if rib.scaled(0.6).radius(px, py) < 1.0 { 250.0 } else { 850.0 };
                }
            });
        }
    }

    // Scanner point spread, then quantum noise (slightly correlated) and windowing.
    blur(&mut hu, size, 0.6 * size as f32 / 512.0 + 0.3);
    let mut noise: Vec<f32> = (0..n).map(|_| rng.normal() * 22.0).collect();
    blur(&mut noise, size, 0.5);
    for (v, e) in hu.iter_mut().zip(&noise) {
        *v += 1.6 * e;
    }
    let image = hu.iter().map(|&v| window(v)).collect();
    Slice { size, hu, image, lungs, ground_glass, consolidation }
}

#[derive(clap::Args, Debug)]
pub struct PhantomArgs {
    /// Output folder (created); receives Imgs/, GT/, Edge/ (and GT-1/, GT-2/ with --multiclass).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of slices.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
    /// Side of the square slices in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write ground-glass (GT-1) and consolidation (GT-2) masks, as the multi-class test set.
    #[arg(long)]
    pub multiclass: bool,
}

fn png_bytes(path: &Path, data: &[u8], size: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(data, size as u32, size as u32, image::ExtendedColorType::L8)
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    Ok(bytes)
}

use image::ImageEncoder;

fn write_png(path: &Path, data: &[u8], size: usize) -> Result<()> {
    crate::io::write_atomic(path, &png_bytes(path, data, size)?)
}

fn mask_bytes(mask: &[bool]) -> Vec<u8> {
    mask.iter().map(|&m| if m { 255 } else { 0 }).collect()
}

pub fn run(args: &PhantomArgs) -> Result<()> {
    if !(32..=4096).contains(&args.size) {
        return Err(Error::invalid(format!("--size {} out of range (32..=4096)", args.size)));
    }
    if args.count == 0 {
        return Err(Error::invalid("--count must be at least 1"));
    }
    let mut folders = vec!["Imgs", "GT", "Edge"];
    if args.multiclass {
        folders.extend(["GT-1", "GT-2"]);
    }
    for f in &folders {
        let dir = args.out.join(f);
        std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, format!("cannot create folder: {e}")))?;
    }
    let progress = indicatif::ProgressBar::new(args.count);
    (0..args.count).into_par_iter().try_for_each(|i| {
        let slice = generate(args.seed, i, args.size);
        let name = format!("{i}.png");
        let infection = slice.infection();
        write_png(&args.out.join("Imgs").join(&name), &slice.image, args.size)?;
        write_png(&args.out.join("GT").join(&name), &mask_bytes(&infection), args.size)?;
        write_png(&args.out.join("Edge").join(&name), &mask_bytes(&edge_band(&infection, args.size)), args.size)?;
        if args.multiclass {
            write_png(&args.out.join("GT-1").join(&name), &mask_bytes(&slice.ground_glass), args.size)?;
            write_png(&args.out.join("GT-2").join(&name), &mask_bytes(&slice.consolidation), args.size)?;
        }
        progress.inc(1);
        Ok(())
    })?;
    progress.finish_and_clear();
    eprintln!("wrote {} slices of {}×{} to {}", args.count, args.size, args.size, args.out.display());
    Ok(())
}
