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
    cin: usize,
    cout: usize,
    blocks: usize,
    /// [pos 0..16][block][cin][MR]
    u: Vec<f32>,
}

impl WinogradConv {
    pub fn applies(p: &ConvParam) -> bool {
        p.kh == 3 && p.kw == 3 && p.stride == 1 && p.dil == 1 && p.pad_h == 1 && p.pad_w == 1
    }

    pub fn new(p: &ConvParam, isa: Isa) -> WinogradConv {
        assert!(WinogradConv::applies(p));
        let (mr, cin, cout) = (isa.mr(), p.cin, p.cout);
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
        WinogradConv { isa, cin, cout, blocks, u }
    }

    /// Floats of per-thread scratch: transformed inputs (16 × cin × NR), patches and GEMM results.
    pub fn scratch_len(&self, _p: &ConvParam, _n: usize, _h: usize, _w: usize, _g: &Graph) -> usize {
        let nr = self.isa.nr();
        16 * self.cin * nr + 16 * nr + 16 * MAX_TILE
    }

    pub fn run(&self, p: &ConvParam, x: In, x_add: Option<In>, y: Out, ep: Epilogue, scratch: &mut [f32]) {
        let (xs, ys) = (x.shape, y.shape);
        assert_eq!((xs.c, ys.c), (self.cin, self.cout));
        assert_eq!((p.cin, p.cout), (self.cin, self.cout));
        assert_eq!((xs.h, xs.w), (ys.h, ys.w));
        let (isa, mr, nr) = (self.isa, self.isa.mr(), self.isa.nr());
        let workers = rayon::current_num_threads();
        let per = self.scratch_len(p, 0, 0, 0, &Graph::default());
        assert!(scratch.len() >= workers * per, "winograd scratch too small");
        let (th, tw) = (ys.h.div_ceil(2), ys.w.div_ceil(2));
        let tiles = th * tw;
        let panels = tiles.div_ceil(nr);
        let total = xs.n * panels;
        let groups = if total >= 4 * workers { 1 } else { self.blocks.min((4 * workers).div_ceil(total)) };
        let per_group = self.blocks.div_ceil(groups);
        let scratch_ptr = SendPtr(scratch.as_mut_ptr());
        (0..total * groups).into_par_iter().for_each(|task| {
            let (t, group) = (task / groups, task % groups);
            let (i, t0) = (t / panels, (t % panels) * nr);
            let cnt = nr.min(tiles - t0);
            let me = rayon::current_thread_index().unwrap_or(0);
            assert!(me < workers, "conv run outside the pool it was sized for");
            // SAFETY: each worker thread uses only its own slice of the scratch.
            let s = unsafe { std::slice::from_raw_parts_mut(scratch_ptr.get().add(me * per), per) };
            let (v, rest) = s.split_at_mut(16 * self.cin * nr);
            let (d, m) = rest.split_at_mut(16 * nr);
            self.transform_input(x, x_add, i, t0, cnt, tw, v, d);
            let mut tile = [0.0f32; MAX_TILE];
            let b0 = group * per_group;
            for blk in b0..(b0 + per_group).min(self.blocks) {
                for pos in 0..16 {
                    let w = &self.u[(pos * self.blocks + blk) * self.cin * mr..];
                    // SAFETY: w holds cin·mr floats, v[pos] cin·nr; the isa was detected.
                    unsafe { microkernel::run(isa, mr, self.cin, w.as_ptr(), v[pos * self.cin * nr..].as_ptr(), tile.as_mut_ptr(), false) };
                    m[pos * MAX_TILE..pos * MAX_TILE + mr * nr].copy_from_slice(&tile[..mr * nr]);
                }
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
        let (mr, nr) = (self.isa.mr(), self.isa.nr());
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
}

