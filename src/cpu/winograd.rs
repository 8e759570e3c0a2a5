//! Winograd F(2×2, 3×3) for stride-1, dilation-1, padding-1 3×3 convolutions: each 2×2 output tile
//! costs 16 multiply-adds per (in, out) channel pair instead of 36. Weights are transformed once
//! (U = G·g·Gᵀ, 16 matrices of cout × cin, packed for the micro-kernel); per panel of NR tiles the
//! input patches are transformed (V = Bᵀ·d·B), 16 GEMMs with K = cin run on the micro-kernel, and the
//! output transform (Aᵀ·M·A) feeds the same epilogue as the direct path. F(2×2) rather than F(4×4):
//! its transforms have only ±1 and ½ entries, so the result stays within a few ulps of direct
//! convolution, and the tiles (2×2) waste little at the 11×11 and 22×22 maps of this network.

use super::conv::Epilogue;
use super::microkernel::{self, Isa, MAX_TILE};
use super::tensor::SendPtr;
use super::tensor::{In, Out};
use crate::graph::{ConvParam, Graph};
use rayon::prelude::*;

pub struct WinogradConv {
    isa: Isa,
    /// Output rows per GEMM block: `isa.mr_for(cout)` on AVX-512, `isa.mr()` otherwise.
    mr: usize,
    cin: usize,
    cout: usize,
    blocks: usize,
    /// [pos 0..16][block][cin][MR]
    u: Vec<f32>,
    /// The 4×4 input patches of the tiles as the taps of a stride-2 conv (AVX-512 path's gather).
    patch: ConvParam,
}

impl WinogradConv {
    pub fn applies(p: &ConvParam) -> bool {
        p.kh == 3 && p.kw == 3 && p.stride == 1 && p.dil == 1 && p.pad_h == 1 && p.pad_w == 1
    }

    pub fn new(p: &ConvParam, isa: Isa) -> WinogradConv {
        assert!(WinogradConv::applies(p));
        let (mr, cin, cout) = (if isa == Isa::Avx512 { isa.mr_for(p.cout) } else { isa.mr() }, p.cin, p.cout);
        let blocks = cout.div_ceil(mr);
        let mut u = vec![0.0f32; 16 * blocks * cin * mr];
        const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        for o in 0..cout {
            for c in 0..cin {
                let g = &p.weight[(o * cin + c) * 9..][..9];
                // t = G·g (4×3), then U = t·Gᵀ (4×4)
                let mut t = [[0.0f32; 3]; 4];
                for (i, gi) in G.iter().enumerate() {
                    for j in 0..3 {
                        t[i][j] = gi[0] * g[j] + gi[1] * g[3 + j] + gi[2] * g[6 + j];
                    }
                }
                for i in 0..4 {
                    for (j, gj) in G.iter().enumerate() {
                        let v = t[i][0] * gj[0] + t[i][1] * gj[1] + t[i][2] * gj[2];
                        let pos = i * 4 + j;
                        u[((pos * blocks + o / mr) * cin + c) * mr + o % mr] = v;
                    }
                }
            }
        }
        let patch = ConvParam {
            name: format!("{} (Winograd patches)", p.name),
            cout: 0,
            cin,
            kh: 4,
            kw: 4,
            stride: 2,
            pad_h: 1,
            pad_w: 1,
            dil: 1,
            weight: Vec::new(),
            bias: Vec::new(),
        };
        WinogradConv { isa, mr, cin, cout, blocks, u, patch }
    }

    /// Floats of per-thread scratch: transformed inputs (16 × cin × NR), patches and GEMM results.
    pub fn scratch_len(&self, _p: &ConvParam, _n: usize, _h: usize, _w: usize, _g: &Graph) -> usize {
        let nr = self.isa.nr();
        if self.isa == Isa::Avx512 {
            // gathered patches, transformed patches, GEMM results
            return 2 * 16 * self.cin * nr + 16 * MAX_TILE;
        }
        16 * self.cin * nr + 16 * nr + 16 * MAX_TILE
    }

    pub fn run(&self, p: &ConvParam, x: In, x_add: Option<In>, y: Out, ep: Epilogue, scratch: &mut [f32]) {
        let (xs, ys) = (x.shape, y.shape);
        assert_eq!((xs.c, ys.c), (self.cin, self.cout));
        assert_eq!((p.cin, p.cout), (self.cin, self.cout));
        assert_eq!((xs.h, xs.w), (ys.h, ys.w));
        let (isa, mr, nr) = (self.isa, self.mr, self.isa.nr());
        let per = self.scratch_len(p, 0, 0, 0, &Graph::default());
        let tw = ys.w.div_ceil(2);
        for_each_panel(xs.n, ys.h.div_ceil(2) * tw, nr, self.blocks, per, scratch, |i, t0, cnt, blocks, s| {
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: the isa was detected; the views are live for the whole conv.
                unsafe { self.task_avx512(x, x_add, i, t0, cnt, tw, blocks, y, &ep, &p.bias, s) };
                return;
            }
            let (v, rest) = s.split_at_mut(16 * self.cin * nr);
            let (d, m) = rest.split_at_mut(16 * nr);
            self.transform_input(x, x_add, i, t0, cnt, tw, v, d);
            for blk in blocks {
                // SAFETY: the isa was detected; u, v and m are sized for 16 positions.
                unsafe { position_gemms(isa, &self.u, 16, self.blocks, blk, self.cin, mr, v, nr, m) };
                self.transform_output(p, m, blk, i, t0, cnt, tw, y, &ep);
            }
        });
    }

    /// v[pos][c][j] = (Bᵀ·d·B)[pos] for tile t0 + j's 4×4 input patch d (rows 2ty−1.., cols 2tx−1..).
    #[allow(clippy::too_many_arguments)]
    fn transform_input(&self, x: In, x_add: Option<In>, i: usize, t0: usize, cnt: usize, tw: usize, v: &mut [f32], d: &mut [f32]) {
        let nr = self.isa.nr();
        let xs = x.shape;
        for c in 0..self.cin {
            // SAFETY: views are live for the whole conv.
            let (src, add) = unsafe { (x.plane(i, c), x_add.map(|a| a.plane(i, c))) };
            d.fill(0.0);
            for j in 0..cnt {
                let (ty, tx) = ((t0 + j) / tw, (t0 + j) % tw);
                for r in 0..4 {
                    let iy = (2 * ty + r) as isize - 1;
                    if iy < 0 || iy >= xs.h as isize {
                        continue;
                    }
                    let row = iy as usize * xs.w;
                    for q in 0..4 {
                        let ix = (2 * tx + q) as isize - 1;
                        if ix >= 0 && ix < xs.w as isize {
                            let at = row + ix as usize;
                            d[(r * 4 + q) * nr + j] = src[at] + add.map_or(0.0, |a| a[at]);
                        }
                    }
                }
            }
            // Bᵀ·d·B over all lanes at once: rows first (t = Bᵀ·d), then columns.
            let lane = |k: usize| k * nr..(k + 1) * nr;
            let mut t = [[0.0f32; 64]; 16];
            for q in 0..4 {
                for j in 0..nr {
                    let (d0, d1, d2, d3) = (d[lane(q)][j], d[lane(4 + q)][j], d[lane(8 + q)][j], d[lane(12 + q)][j]);
                    t[q][j] = d0 - d2;
                    t[4 + q][j] = d1 + d2;
                    t[8 + q][j] = d2 - d1;
                    t[12 + q][j] = d1 - d3;
                }
            }
            for r in 0..4 {
                for j in 0..nr {
                    let (a0, a1, a2, a3) = (t[r * 4][j], t[r * 4 + 1][j], t[r * 4 + 2][j], t[r * 4 + 3][j]);
                    let out = [a0 - a2, a1 + a2, a2 - a1, a1 - a3];
                    for (q, val) in out.into_iter().enumerate() {
                        v[((r * 4 + q) * self.cin + c) * nr + j] = val;
                    }
                }
            }
        }
    }

    /// Aᵀ·M·A for rows blk·MR.. of every tile in the panel, through the epilogue into y.
    #[allow(clippy::too_many_arguments)]
    fn transform_output(&self, p: &ConvParam, m: &[f32], blk: usize, i: usize, t0: usize, cnt: usize, tw: usize, y: Out, ep: &Epilogue) {
        let (mr, nr) = (self.mr, self.isa.nr());
        let ys = y.shape;
        // SAFETY (planes): views are live; this task is the only writer of these rows' tiles.
        let scale = ep.scale.map(|s| unsafe { s.plane(i, 0) });
        for r in 0..mr.min(self.cout - blk * mr) {
            let o = blk * mr + r;
            let dst = unsafe { y.plane(i, o) };
            let res = ep.residual.map(|v| unsafe { v.plane(i, o) });
            let mul = ep.mul.map(|v| unsafe { v.plane(i, o) });
            let b = p.bias[o];
            for j in 0..cnt {
                let mm = |pos: usize| m[pos * MAX_TILE + r * nr + j];
                // t = Aᵀ·M (2×4), out = t·A (2×2); Aᵀ = [[1,1,1,0],[0,1,−1,−1]].
                let mut t = [[0.0f32; 4]; 2];
                for q in 0..4 {
                    let (m0, m1, m2, m3) = (mm(q), mm(4 + q), mm(8 + q), mm(12 + q));
                    t[0][q] = m0 + m1 + m2;
                    t[1][q] = m1 - m2 - m3;
                }
                let (ty, tx) = ((t0 + j) / tw, (t0 + j) % tw);
                for (dy, tr) in t.iter().enumerate() {
                    let oy = 2 * ty + dy;
                    if oy >= ys.h {
                        break;
                    }
                    let outs = [tr[0] + tr[1] + tr[2], tr[1] - tr[2] - tr[3]];
                    for (dx, &acc) in outs.iter().enumerate() {
                        let ox = 2 * tx + dx;
                        if ox >= ys.w {
                            break;
                        }
                        let at = oy * ys.w + ox;
                        let mut val = acc * scale.map_or(1.0, |s| s[at]) + b;
                        if let Some(res) = res {
                            val += res[at];
                        }
                        if ep.relu {
                            val = val.max(0.0);
                        }
                        if let Some(mul) = mul {
                            val *= mul[at];
                        }
                        dst[at] = val;
                    }
                }
            }
        }
    }

    /// One panel of up to 32 tiles (t0 .. t0 + cnt of image i) for the row blocks `blocks`, with
    /// AVX-512: the patches are gathered as a stride-2 4×4 conv's taps, transformed 16 lanes at a time,
    /// the 16 GEMMs write straight into `m`, and the output transform interleaves each tile's two
    /// columns in registers so every output row segment is one masked store through the epilogue.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn task_avx512(
        &self,
        x: In,
        x_add: Option<In>,
        i: usize,
        t0: usize,
        cnt: usize,
        tw: usize,
        blocks: std::ops::Range<usize>,
        y: Out,
        ep: &Epilogue,
        bias: &[f32],
        s: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        const NR: usize = 32;
        let (cin, mr) = (self.cin, self.mr);
        let (cols, rest) = s.split_at_mut(16 * cin * NR);
        let (v, m) = rest.split_at_mut(16 * cin * NR);
        super::implicit_gemm::gather_strided_avx512::<2>(&self.patch, x, x_add, i, t0, cnt, tw, 0..cin, cols);
        // V = Bᵀ·d·B per channel; Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]].
        for c in 0..cin {
            for h in 0..2 {
                let d = |pos: usize| _mm512_loadu_ps(cols.as_ptr().add((c * 16 + pos) * NR + 16 * h));
                let mut t = [_mm512_setzero_ps(); 16];
                for q in 0..4 {
                    let (d0, d1, d2, d3) = (d(q), d(4 + q), d(8 + q), d(12 + q));
                    t[q] = _mm512_sub_ps(d0, d2);
                    t[4 + q] = _mm512_add_ps(d1, d2);
                    t[8 + q] = _mm512_sub_ps(d2, d1);
                    t[12 + q] = _mm512_sub_ps(d1, d3);
                }
                for r in 0..4 {
                    let (a0, a1, a2, a3) = (t[r * 4], t[r * 4 + 1], t[r * 4 + 2], t[r * 4 + 3]);
                    let out = [_mm512_sub_ps(a0, a2), _mm512_add_ps(a1, a2), _mm512_sub_ps(a2, a1), _mm512_sub_ps(a1, a3)];
                    for (q, val) in out.into_iter().enumerate() {
                        _mm512_storeu_ps(v.as_mut_ptr().add(((r * 4 + q) * cin + c) * NR + 16 * h), val);
                    }
                }
            }
        }
        let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let zero = _mm512_setzero_ps();
        for blk in blocks {
            position_gemms(Isa::Avx512, &self.u, 16, self.blocks, blk, cin, mr, v, NR, m);
            for r in 0..mr.min(self.cout - blk * mr) {
                let o = blk * mr + r;
                // z[dy][e]: output row dy of the panel's tiles, tile columns interleaved (element e = 2·lane + dx).
                let mut z = [[zero; 4]; 2];
                for h in 0..2 {
                    let mm = |pos: usize| _mm512_loadu_ps(m.as_ptr().add(pos * MAX_TILE + r * NR + 16 * h));
                    // t = Aᵀ·M, out = t·A; Aᵀ = [[1,1,1,0],[0,1,−1,−1]].
                    let mut t = [[zero; 4]; 2];
                    for q in 0..4 {
                        let (m0, m1, m2, m3) = (mm(q), mm(4 + q), mm(8 + q), mm(12 + q));
                        t[0][q] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                        t[1][q] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                    }
                    for dy in 0..2 {
                        let [a0, a1, a2, a3] = t[dy];
                        let o0 = _mm512_add_ps(_mm512_add_ps(a0, a1), a2);
                        let o1 = _mm512_sub_ps(_mm512_sub_ps(a1, a2), a3);
                        z[dy][2 * h] = _mm512_permutex2var_ps(o0, lo_idx, o1);
                        z[dy][2 * h + 1] = _mm512_permutex2var_ps(o0, hi_idx, o1);
                    }
                }
                store_tile_rows(&z, 2, i, o, t0, cnt, tw, y, ep, bias[o]);
            }
        }
    }
}

/// Winograd F(4×4, 3×3) (Lavin & Gray's points 0, ±1, ±2), AVX-512 only: each 4×4 output tile costs
/// 36 multiply-adds per (in, out) channel pair instead of 144, 1.8× fewer than F(2×2), at the price of
/// transforms with coefficients up to 8 (a few more ulps; relative L2 error stays ~1e-6) and tiles that
/// only fit maps whose sides are multiples of 4 without waste. The engine uses it on maps of at least
/// 40×40 (44×44 and up at 352 input) and F(2×2) on smaller ones.
pub struct WinogradF4 {
    mr: usize,
    cin: usize,
    cout: usize,
    blocks: usize,
    /// [pos 0..36][block][cin][MR]
    u: Vec<f32>,
    /// The 6×6 input patches of the tiles as the taps of a stride-4 conv.
    patch: ConvParam,
}

const NR4: usize = 32;

impl WinogradF4 {
    /// Whether this CPU and conv can take F(4×4).
    pub fn available(p: &ConvParam, isa: Isa) -> bool {
        isa == Isa::Avx512 && WinogradConv::applies(p)
    }

    pub fn new(p: &ConvParam) -> WinogradF4 {
        assert!(WinogradConv::applies(p));
        let (mr, cin, cout) = (Isa::Avx512.mr_for(p.cout), p.cin, p.cout);
        let blocks = cout.div_ceil(mr);
        const G: [[f64; 3]; 6] = [
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0.0f32; 36 * blocks * cin * mr];
        for o in 0..cout {
            for c in 0..cin {
                let g = &p.weight[(o * cin + c) * 9..][..9];
                // U = G·g·Gᵀ (6×6), in f64 so the transformed weights are rounded once.
                let mut t = [[0.0f64; 3]; 6];
                for (i, gi) in G.iter().enumerate() {
                    for j in 0..3 {
                        t[i][j] = gi[0] * g[j] as f64 + gi[1] * g[3 + j] as f64 + gi[2] * g[6 + j] as f64;
                    }
                }
                for i in 0..6 {
                    for (j, gj) in G.iter().enumerate() {
                        let v = t[i][0] * gj[0] + t[i][1] * gj[1] + t[i][2] * gj[2];
                        u[(((i * 6 + j) * blocks + o / mr) * cin + c) * mr + o % mr] = v as f32;
                    }
                }
            }
        }
        let patch = ConvParam {
            name: format!("{} (Winograd F(4×4) patches)", p.name),
            cout: 0,
            cin,
            kh: 6,
            kw: 6,
            stride: 4,
            pad_h: 1,
            pad_w: 1,
            dil: 1,
            weight: Vec::new(),
            bias: Vec::new(),
        };
        WinogradF4 { mr, cin, cout, blocks, u, patch }
    }

    /// Floats of per-thread scratch for a conv with `cin` input channels.
    pub fn scratch_len_for(cin: usize) -> usize {
        2 * 36 * cin * NR4 + 36 * MAX_TILE
    }

    pub fn run(&self, p: &ConvParam, x: In, x_add: Option<In>, y: Out, ep: Epilogue, scratch: &mut [f32]) {
        let (xs, ys) = (x.shape, y.shape);
        assert_eq!((xs.c, ys.c), (self.cin, self.cout));
        assert_eq!((p.cin, p.cout), (self.cin, self.cout));
        assert_eq!((xs.h, xs.w), (ys.h, ys.w));
        #[cfg(target_arch = "x86_64")]
        assert!(std::is_x86_feature_detected!("avx512f"), "Winograd F(4×4) needs AVX-512");
        let tw = ys.w.div_ceil(4);
        for_each_panel(xs.n, ys.h.div_ceil(4) * tw, NR4, self.blocks, WinogradF4::scratch_len_for(self.cin), scratch, |i, t0, cnt, blocks, s| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F was checked above; the views are live for the whole conv.
            unsafe {
                self.task(x, x_add, i, t0, cnt, tw, blocks, y, &ep, &p.bias, s)
            };
        });
    }

    /// One panel of up to 32 tiles for the row blocks `blocks` (see `WinogradConv::task_avx512`).
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn task(
        &self,
        x: In,
        x_add: Option<In>,
        i: usize,
        t0: usize,
        cnt: usize,
        tw: usize,
        blocks: std::ops::Range<usize>,
        y: Out,
        ep: &Epilogue,
        bias: &[f32],
        s: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        const NR: usize = NR4;
        let (cin, mr) = (self.cin, self.mr);
        let (cols, rest) = s.split_at_mut(36 * cin * NR);
        let (v, m) = rest.split_at_mut(36 * cin * NR);
        super::implicit_gemm::gather_strided_avx512::<4>(&self.patch, x, x_add, i, t0, cnt, tw, 0..cin, cols);
        let c4 = _mm512_set1_ps(4.0);
        let c5 = _mm512_set1_ps(5.0);
        let c2 = _mm512_set1_ps(2.0);
        let c8 = _mm512_set1_ps(8.0);
        // Bᵀ·d for one column of six values.
        let bt = |d: [__m512; 6]| -> [__m512; 6] {
            [
                _mm512_fmadd_ps(c4, d[0], _mm512_fnmadd_ps(c5, d[2], d[4])),
                _mm512_fnmadd_ps(c4, _mm512_add_ps(d[1], d[2]), _mm512_add_ps(d[3], d[4])),
                _mm512_fmadd_ps(c4, _mm512_sub_ps(d[1], d[2]), _mm512_sub_ps(d[4], d[3])),
                _mm512_fmadd_ps(c2, _mm512_sub_ps(d[3], d[1]), _mm512_sub_ps(d[4], d[2])),
                _mm512_fmadd_ps(c2, _mm512_sub_ps(d[1], d[3]), _mm512_sub_ps(d[4], d[2])),
                _mm512_fmadd_ps(c4, d[1], _mm512_fnmadd_ps(c5, d[3], d[5])),
            ]
        };
        // V = Bᵀ·d·B per channel.
        for c in 0..cin {
            for h in 0..2 {
                let at = |pos: usize| cols.as_ptr().add((c * 36 + pos) * NR + 16 * h);
                let mut t = [[_mm512_setzero_ps(); 6]; 6];
                for q in 0..6 {
                    let col = bt(std::array::from_fn(|r| _mm512_loadu_ps(at(r * 6 + q))));
                    for r in 0..6 {
                        t[r][q] = col[r];
                    }
                }
                for (r, tr) in t.iter().enumerate() {
                    let row = bt(*tr);
                    for (q, val) in row.into_iter().enumerate() {
                        _mm512_storeu_ps(v.as_mut_ptr().add(((r * 6 + q) * cin + c) * NR + 16 * h), val);
                    }
                }
            }
        }
        // Aᵀ·m for one column of six values: Aᵀ = [[1,1,1,1,1,0],[0,1,−1,2,−2,0],[0,1,1,4,4,0],[0,1,−1,8,−8,1]].
        let at = |m: [__m512; 6]| -> [__m512; 4] {
            let (s12, d12) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
            let (s34, d34) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
            [
                _mm512_add_ps(_mm512_add_ps(m[0], s12), s34),
                _mm512_fmadd_ps(c2, d34, d12),
                _mm512_fmadd_ps(c4, s34, s12),
                _mm512_add_ps(_mm512_fmadd_ps(c8, d34, d12), m[5]),
            ]
        };
        let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let pair_lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
        let pair_hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
        let zero = _mm512_setzero_ps();
        for blk in blocks {
            position_gemms(Isa::Avx512, &self.u, 36, self.blocks, blk, cin, mr, v, NR, m);
            for r in 0..mr.min(self.cout - blk * mr) {
                let o = blk * mr + r;
                // z[dy][q]: output row dy of the panel's tiles, element e = 4·lane + dx over 8 registers.
                let mut z = [[zero; 8]; 4];
                for h in 0..2 {
                    let mm = |pos: usize| _mm512_loadu_ps(m.as_ptr().add(pos * MAX_TILE + r * NR + 16 * h));
                    // t = Aᵀ·M (4×6), out = t·A (4×4)
                    let mut t = [[zero; 6]; 4];
                    for q in 0..6 {
                        let col = at(std::array::from_fn(|k| mm(k * 6 + q)));
                        for dy in 0..4 {
                            t[dy][q] = col[dy];
                        }
                    }
                    for dy in 0..4 {
                        let o4 = at(t[dy]);
                        let (a_lo, a_hi) = (_mm512_permutex2var_ps(o4[0], lo_idx, o4[1]), _mm512_permutex2var_ps(o4[0], hi_idx, o4[1]));
                        let (b_lo, b_hi) = (_mm512_permutex2var_ps(o4[2], lo_idx, o4[3]), _mm512_permutex2var_ps(o4[2], hi_idx, o4[3]));
                        let inter = |a: __m512, b: __m512, idx: __m512i| {
                            _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(a), idx, _mm512_castps_pd(b)))
                        };
                        z[dy][4 * h] = inter(a_lo, b_lo, pair_lo);
                        z[dy][4 * h + 1] = inter(a_lo, b_lo, pair_hi);
                        z[dy][4 * h + 2] = inter(a_hi, b_hi, pair_lo);
                        z[dy][4 * h + 3] = inter(a_hi, b_hi, pair_hi);
                    }
                }
                store_tile_rows(&z, 4, i, o, t0, cnt, tw, y, ep, bias[o]);
            }
        }
    }
}

/// Writes one output channel `o` of a panel's tiles through the epilogue: `z[dy][q]` holds output row
/// dy of every tile, the m columns of each tile interleaved (element e = m·lane + dx over registers
/// q = e / 16). Each run of tiles along a tile row becomes one masked store per 16 elements; masked-off
/// lanes (outside the run or past the image's right edge) are neither read nor written.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile_rows<const Q: usize>(z: &[[std::arch::x86_64::__m512; Q]], m: usize, i: usize, o: usize, t0: usize, cnt: usize, tw: usize, y: Out, ep: &Epilogue, bias: f32) {
    use std::arch::x86_64::*;
    debug_assert!(z.len() == m && Q * 16 == 32 * m);
    let ys = y.shape;
    let dst = y.ptr.add(ys.plane(i, o));
    let res = ep.residual.map(|v| v.ptr.add(v.shape.plane(i, o)));
    let mul = ep.mul.map(|v| v.ptr.add(v.shape.plane(i, o)));
    let scale = ep.scale.map(|v| v.ptr.add(v.shape.plane(i, 0)));
    let (b, zero) = (_mm512_set1_ps(bias), _mm512_setzero_ps());
    let mut j = 0;
    while j < cnt {
        let (ty, tx0) = ((t0 + j) / tw, (t0 + j) % tw);
        let len = (tw - tx0).min(cnt - j);
        // Element e of an interleaved row is output column base + e, for m·j ≤ e < m·(j + len).
        let base = (m * tx0) as isize - (m * j) as isize;
        let hi = ((m * (j + len)) as isize).min(ys.w as isize - base).max((m * j) as isize) as u32;
        let upto = if hi >= 128 { u128::MAX } else { (1u128 << hi) - 1 };
        let mask = upto & !((1u128 << (m * j)) - 1);
        for (dy, zr) in z.iter().enumerate() {
            let oy = m * ty + dy;
            if oy >= ys.h {
                break;
            }
            let at = (oy * ys.w) as isize + base;
            for (q, &zv) in zr.iter().enumerate() {
                let mk = (mask >> (16 * q)) as u16;
                if mk == 0 {
                    continue;
                }
                let off = at + 16 * q as isize;
                // Masked-off lanes are never dereferenced, so the offsets may point outside the plane.
                let mut val = zv;
                if let Some(sc) = scale {
                    val = _mm512_mul_ps(val, _mm512_maskz_loadu_ps(mk, sc.wrapping_offset(off)));
                }
                val = _mm512_add_ps(val, b);
                if let Some(rp) = res {
                    val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(mk, rp.wrapping_offset(off)));
                }
                if ep.relu {
                    val = _mm512_max_ps(val, zero);
                }
                if let Some(mp) = mul {
                    val = _mm512_mul_ps(val, _mm512_maskz_loadu_ps(mk, mp.wrapping_offset(off)));
                }
                _mm512_mask_storeu_ps(dst.wrapping_offset(off), mk, val);
            }
        }
        j += len;
    }
}

/// Runs `task(image, first tile, tiles, row blocks, scratch)` for every panel of `nr` tiles (`tiles` per
/// image, `n` images) on the current pool. Row blocks are split into groups only below two panels per
/// thread, since each group repeats its panel's gather and input transform. Each task gets its worker
/// thread's `per`-float slice of `scratch`.
#[allow(clippy::type_complexity)]
fn for_each_panel(
    n: usize,
    tiles: usize,
    nr: usize,
    blocks: usize,
    per: usize,
    scratch: &mut [f32],
    task: impl Fn(usize, usize, usize, std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    let workers = rayon::current_num_threads();
    assert!(scratch.len() >= workers * per, "winograd scratch too small");
    let panels = tiles.div_ceil(nr);
    let total = n * panels;
    let groups = if total >= 2 * workers { 1 } else { blocks.min((2 * workers).div_ceil(total)) };
    let per_group = blocks.div_ceil(groups);
    let scratch_ptr = SendPtr(scratch.as_mut_ptr());
    (0..total * groups).into_par_iter().for_each(|t| {
        let (panel, group) = (t / groups, t % groups);
        let (i, t0) = (panel / panels, (panel % panels) * nr);
        let me = rayon::current_thread_index().unwrap_or(0);
        assert!(me < workers, "conv run outside the pool it was sized for");
        // SAFETY: each worker thread uses only its own slice of the scratch.
        let s = unsafe { std::slice::from_raw_parts_mut(scratch_ptr.get().add(me * per), per) };
        let b0 = group * per_group;
        task(i, t0, nr.min(tiles - t0), b0..(b0 + per_group).min(blocks), s);
    });
}

/// The per-position GEMMs of one row block: m[pos] (an MR×NR tile, MAX_TILE apart) = U[pos][blk] · V[pos]
/// for every transform position, U packed [pos][block][cin][MR] and V [pos][cin][NR].
///
/// # Safety
/// `isa` is supported by this CPU; `u`, `v` and `m` hold `positions` such blocks.
#[allow(clippy::too_many_arguments)]
unsafe fn position_gemms(isa: Isa, u: &[f32], positions: usize, blocks: usize, blk: usize, cin: usize, mr: usize, v: &[f32], nr: usize, m: &mut [f32]) {
    assert!(u.len() >= positions * blocks * cin * mr && v.len() >= positions * cin * nr && m.len() >= positions * MAX_TILE);
    for pos in 0..positions {
        let w = u.as_ptr().add((pos * blocks + blk) * cin * mr);
        microkernel::run(isa, mr, cin, w, v.as_ptr().add(pos * cin * nr), m.as_mut_ptr().add(pos * MAX_TILE), false);
    }
}
