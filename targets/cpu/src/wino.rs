//! Winograd convolution F(m x m, 3x3) (Lavin & Gray, arXiv 1509.09308), m = 4 or 2, for the
//! wide kernels: 3x3, stride 1, ungrouped f32 convolutions compute each m x m output tile from
//! an (m+2) x (m+2) input tile with (m+2)^2 multiplies per (input, output) channel pair instead
//! of 9 m^2 (F(4x4): 36 instead of 144; F(2x2): 16 instead of 36).
//!
//! Per image, four LLVM functions run one after the other over the caller's pool:
//! 1. the convolution's input packing (`ConvKernel::pack_ir`: zero-padded, m - 1 extra rows
//!    and columns so that every input tile is inside it);
//! 2. the input transform `V[e][c][t] = (B^T d B)[e]` of every tile `t` (one tile per lane,
//!    de-interleaved from row loads by shuffles), work items = channels;
//! 3. the (m+2)^2 products `M[e] = U[e] V[e]` as one grouped 1x1 convolution with (m+2)^2
//!    groups, run by an ordinary `ConvKernel` (the transformed weights `U = G g G^T` are
//!    packed at compile time);
//! 4. the output transform `Y = A^T M A` plus bias and the fused epilogue (residual add,
//!    activations), interleaving the m output columns of each tile into contiguous masked
//!    stores, work items = output channels.
//!
//! The transforms are exact in real arithmetic; in f32 the result differs from direct
//! convolution by a few ulps of the largest partial sums (F(4x4): ~5e-6 relative over 256
//! channels; the op tests allow 1e-4).

use kiln_ir::ops::EpilogueStep;

use kiln_target_llvm::{Emit, LlvmTarget, Src};

use crate::kernels::{Geom, Packing};
use crate::ukernel::{ConvKernel, ConvSchedule};

/// The transform matrices of F(m, 3): B^T ((m+2) x (m+2)), G ((m+2) x 3), A^T (m x (m+2)),
/// as rows.
struct Mats {
    bt: Vec<Vec<f32>>,
    g: Vec<Vec<f32>>,
    at: Vec<Vec<f32>>,
}

fn mats(m: usize) -> Mats {
    let rows = |r: &[&[f32]]| r.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    match m {
        2 => Mats {
            bt: rows(&[
                &[1.0, 0.0, -1.0, 0.0],
                &[0.0, 1.0, 1.0, 0.0],
                &[0.0, -1.0, 1.0, 0.0],
                &[0.0, 1.0, 0.0, -1.0],
            ]),
            g: rows(&[
                &[1.0, 0.0, 0.0],
                &[0.5, 0.5, 0.5],
                &[0.5, -0.5, 0.5],
                &[0.0, 0.0, 1.0],
            ]),
            at: rows(&[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]]),
        },
        4 => Mats {
            bt: rows(&[
                &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
                &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
                &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
                &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
                &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
                &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
            ]),
            g: rows(&[
                &[0.25, 0.0, 0.0],
                &[-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                &[-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                &[1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                &[1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                &[0.0, 0.0, 1.0],
            ]),
            at: rows(&[
                &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
                &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
                &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
                &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
            ]),
        },
        _ => unreachable!("F({m}, 3) is not implemented"),
    }
}

/// The output tile size for a convolution: 4x4 from 24x24 outputs, 2x2 below. The transforms
/// run one tile per lane along a tile row, so a row of few tiles leaves lanes idle, and the
/// products' 1x1 convolution gets few pixels: at 14x14 and 13x13, F(4x4) transforms cost 4-16x
/// F(2x2)'s and the products gained nothing (ResNet-18 layer 3, SqueezeNet's last fire
/// modules); at 28x28 and up F(4x4) ran the layers ~40 % faster.
pub(crate) fn tile_size(g: &Geom) -> usize {
    if g.oh >= 24 && g.ow >= 24 { 4 } else { 2 }
}

/// Whether a convolution of this geometry can run as Winograd F(m x m, 3x3).
pub(crate) fn eligible(g: &Geom) -> bool {
    g.k == [3, 3]
        && g.s == [1, 1]
        && g.d == [1, 1]
        && g.cg == g.c
        && g.mg == g.m
        && g.oh >= 2
        && g.ow >= 2
}

/// Whether `Auto` picks Winograd: enough channels for the products to dominate the
/// transforms (each transform costs about as much as a 1x1 convolution over 4 channels).
pub(crate) fn profitable(g: &Geom) -> bool {
    eligible(g) && g.c >= 16 && g.m >= 16
}

/// The geometry the input packing uses: m - 1 extra zero rows and columns at the bottom and
/// right, so that the last tile's window is inside the packed image whatever the output size.
fn packing_geom(g: &Geom, m: usize) -> Geom {
    let mut p = g.clone();
    p.p[2] += m - 1;
    p.p[3] += m - 1;
    p
}

/// A Winograd convolution's shapes and its product kernel.
#[derive(Debug, Clone)]
pub(crate) struct Wino {
    /// Output tile size (F(m x m, 3x3)).
    pub m: usize,
    /// Tile rows and columns (m x m outputs each) and tiles per image.
    pub th: usize,
    pub tw: usize,
    pub tiles: usize,
    /// Scratch bytes of the packed input, `V` and `M` ([`scratch_parts`]).
    pub scratch: (usize, usize, usize),
    /// The (m+2)^2 products as one grouped 1x1 convolution (`[(m+2)^2 * M][C]` weights).
    pub gemm: ConvKernel,
}

/// Scratch bytes of a Winograd convolution: packed input, then `V`, then `M` (each 64-byte
/// aligned).
pub(crate) fn scratch_bytes(g: &Geom) -> usize {
    let (q, v, m) = scratch_parts(g);
    q + v + m
}

/// The three scratch regions' sizes in bytes.
pub(crate) fn scratch_parts(g: &Geom) -> (usize, usize, usize) {
    let al = |b: usize| b.div_ceil(64) * 64;
    let m = tile_size(g);
    let e = (m + 2) * (m + 2);
    let pg = packing_geom(g, m);
    let pk = Packing::of(&pg);
    let tiles = g.oh.div_ceil(m) * g.ow.div_ceil(m);
    (
        al((g.c * pk.per_c() + crate::kernels::pack_slack(&pg)) * 4),
        al(e * g.c * tiles * 4),
        al(e * g.m * tiles * 4),
    )
}

impl ConvKernel {
    /// A 3x3 stride-1 convolution as Winograd F(m x m, 3x3), m from [`tile_size`] ([`eligible`]
    /// shapes only).
    pub fn winograd(
        name: String,
        g: Geom,
        has_bias: bool,
        has_res: bool,
        epilogue: &[EpilogueStep],
        t: &LlvmTarget,
    ) -> Option<ConvKernel> {
        if !eligible(&g) {
            return None;
        }
        let m = tile_size(&g);
        let e = (m + 2) * (m + 2);
        let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
        let tiles = th * tw;
        let gg = Geom {
            k: [1, 1],
            s: [1, 1],
            p: [0; 4],
            d: [1, 1],
            n: 1,
            c: e * g.c,
            h: 1,
            w: tiles,
            m: e * g.m,
            oh: 1,
            ow: tiles,
            cg: g.c,
            mg: g.m,
        };
        let gemm = ConvKernel::new(name.clone(), gg, e, false, false, &[], t)?
            .with_schedule(ConvSchedule::Auto, t);
        // the convolution itself: its input packing (with the extra rows and columns) and the
        // epilogue the output transform applies
        let mut ck = ConvKernel::new(name, packing_geom(&g, m), 1, has_bias, has_res, epilogue, t)?;
        ck.wino = Some(Box::new(Wino {
            m,
            th,
            tw,
            tiles,
            scratch: scratch_parts(&g),
            gemm,
        }));
        Some(ck)
    }

    /// The symbols of the input and output transforms.
    pub fn wino_names(&self) -> [String; 2] {
        [format!("{}_wi", self.name), format!("{}_wo", self.name)]
    }

    /// `U[e][m][c] = (G g G^T)[e]` of weights `[m][c][3][3]`, packed for the product kernel.
    pub fn wino_weights(&self, w: &[f32]) -> Vec<f32> {
        let (c, m) = (self.g.c, self.g.m);
        let wn = self.wino.as_ref().expect("winograd");
        let mt = mats(wn.m);
        let a = wn.m + 2;
        let mut u = vec![0f32; a * a * m * c];
        for mi in 0..m {
            for ci in 0..c {
                let k = &w[(mi * c + ci) * 9..(mi * c + ci) * 9 + 9];
                // G g (a x 3) in f64, then (G g) G^T (a x a)
                let gk: Vec<[f64; 3]> = (0..a)
                    .map(|i| {
                        std::array::from_fn(|j| {
                            (0..3)
                                .map(|r| mt.g[i][r] as f64 * k[r * 3 + j] as f64)
                                .sum()
                        })
                    })
                    .collect();
                for i in 0..a {
                    for j in 0..a {
                        let v: f64 = (0..3).map(|r| gk[i][r] * mt.g[j][r] as f64).sum();
                        u[((i * a + j) * m + mi) * c + ci] = v as f32;
                    }
                }
            }
        }
        wn.gemm.pack_weights(&u)
    }

    /// IR of the product kernel (under this kernel's name) and of the two transforms.
    pub(crate) fn wino_ir(&self, wn: &Wino, attrs_group: usize, out: &mut String) {
        let mut gemm = wn.gemm.clone();
        gemm.name = self.name.clone();
        gemm.ir(attrs_group, out);
        self.wino_input_ir(wn, attrs_group, out);
        self.wino_output_ir(wn, attrs_group, out);
    }

    /// `void name_wi(q, _, _, _, v, c0, c1)`: the input transform of channels `c0..c1`.
    fn wino_input_ir(&self, wn: &Wino, attrs_group: usize, out: &mut String) {
        let (g, pk) = (&self.g, &self.pk);
        let (w, m) = (self.lanes, wn.m);
        let a = m + 2;
        let mt = mats(m);
        let per_c = pk.per_c();
        let mut e = Emit::new(w);
        let b = &mut e;
        let [wi, _] = self.wino_names();
        b.items_begin(&wi, PARAMS, attrs_group, "c", "next");
        b.line(&format!("  %qo = mul i64 %c, {per_c}"));
        b.line("  %qc = getelementptr float, ptr %q, i64 %qo");
        let ty = b.loop_begin("ty", 0, wn.th);
        for tx0 in (0..wn.tw).step_by(w) {
            // d[i][j]: lane l = packed row m ty + i, column m (tx0 + l) + j
            let mut d: Vec<Vec<String>> = Vec::new();
            for i in 0..a {
                let r = b.tmp();
                b.line(&format!("  {r} = mul i64 {ty}, {m}"));
                let r2 = b.tmp();
                b.line(&format!("  {r2} = add i64 {r}, {i}"));
                let ro = b.tmp();
                b.line(&format!("  {ro} = mul i64 {r2}, {}", pk.wq));
                let rp = b.gep("%qc", &ro);
                // m vectors from each column block start m tx0 + o (o = 0, m), masked to the row
                let mut blocks: Vec<Vec<String>> = Vec::new();
                for o in (0..a).step_by(m) {
                    let vs = (0..m)
                        .map(|v| {
                            let col = m * tx0 + o + v * w;
                            let mk = b.lanes_below(col, pk.wq);
                            let p = b.gep_vec(&rp, col);
                            b.masked_load(&p, &mk)
                        })
                        .collect();
                    blocks.push(vs);
                }
                let row: Vec<String> = (0..a)
                    .map(|j| {
                        let (blk, ph) = (j / m, j % m);
                        let picks: Vec<Option<(usize, usize)>> = (0..w)
                            .map(|l| Some(((l * m + ph) / w, (l * m + ph) % w)))
                            .collect();
                        b.gather_lanes(&blocks[blk], &picks)
                    })
                    .collect();
                d.push(row);
            }
            // B^T d B
            let rows = b.mat_rows(&mt.bt, &d);
            let t: Vec<Vec<String>> = rows.iter().map(|r| b.mat_vec(&mt.bt, r)).collect();
            // V[e][c][ty * tw + tx0 ..], masked to the tiles of the row
            let mk = b.lanes_below(tx0, wn.tw);
            let tb = b.tmp();
            b.line(&format!("  {tb} = mul i64 {ty}, {}", wn.tw));
            for (i, row) in t.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let p = transformed_at(b, "%o", ("%c", g.c), (i * a + j, wn.tiles), (&tb, tx0));
                    b.masked_store(v, &p, &mk);
                }
            }
        }
        b.loop_end("ty", &ty);
        b.line("  br label %next");
        b.line("next:");
        b.items_end("c");
        out.push_str(&e.s);
    }

    /// `void name_wo(mm, _, bias, res, out, m0, m1)`: the output transform, bias and epilogue
    /// of output channels `m0..m1`.
    fn wino_output_ir(&self, wn: &Wino, attrs_group: usize, out: &mut String) {
        let g = &self.g;
        let (w, m) = (self.lanes, wn.m);
        let a = m + 2;
        let mt = mats(m);
        let plane = g.oh * g.ow;
        let mut e = Emit::new(w);
        let b = &mut e;
        let [_, wo] = self.wino_names();
        b.items_begin(&wo, PARAMS, attrs_group, "mi", "next");
        let bias = if self.has_bias {
            b.line("  %bp = getelementptr float, ptr %b, i64 %mi");
            b.line("  %bs = load float, ptr %bp, align 4");
            Some(b.splat("%bs"))
        } else {
            None
        };
        b.line(&format!("  %ob = mul i64 %mi, {plane}"));
        b.line("  %oc = getelementptr float, ptr %o, i64 %ob");
        b.line("  %rc = getelementptr float, ptr %r, i64 %ob");
        let ty = b.loop_begin("ty", 0, wn.th);
        for tx0 in (0..wn.tw).step_by(w) {
            let mk = b.lanes_below(tx0, wn.tw);
            let tb = b.tmp();
            b.line(&format!("  {tb} = mul i64 {ty}, {}", wn.tw));
            let mut mv: Vec<Vec<String>> = Vec::new();
            for i in 0..a {
                let row = (0..a)
                    .map(|j| {
                        let at = (i * a + j, wn.tiles);
                        let p = transformed_at(b, "%q", ("%mi", g.m), at, (&tb, tx0));
                        b.masked_load(&p, &mk)
                    })
                    .collect();
                mv.push(row);
            }
            // A^T M A: rows, then columns
            let s = b.mat_rows(&mt.at, &mv);
            for (i, si) in s.iter().enumerate() {
                let y = b.mat_vec(&mt.at, si);
                // output row m ty + i (the last tile row may be past the output)
                let oy0 = b.tmp();
                b.line(&format!("  {oy0} = mul i64 {ty}, {m}"));
                let oy = b.tmp();
                b.line(&format!("  {oy} = add i64 {oy0}, {i}"));
                let inb = b.tmp();
                b.line(&format!("  {inb} = icmp ult i64 {oy}, {}", g.oh));
                let (yes, no) = (format!("st_{tx0}_{i}"), format!("sk_{tx0}_{i}"));
                b.line(&format!("  br i1 {inb}, label %{yes}, label %{no}"));
                b.line(&format!("{yes}:"));
                let ro = b.tmp();
                b.line(&format!("  {ro} = mul i64 {oy}, {}", g.ow));
                let op = b.gep("%oc", &ro);
                let rp = b.gep("%rc", &ro);
                // output columns m tx0 + h w + k: tile (h w + k) / m, column (h w + k) % m
                for h in 0..m {
                    let picks: Vec<Option<(usize, usize)>> = (0..w)
                        .map(|k| Some(((h * w + k) % m, (h * w + k) / m)))
                        .collect();
                    let v = b.gather_lanes(&y, &picks);
                    let v = match &bias {
                        Some(bs) => b.bin("fadd", &v, bs),
                        None => v,
                    };
                    let col = m * tx0 + h * w;
                    let cm = b.lanes_below(col, g.ow);
                    let srcs: Vec<Src> = if self.has_res {
                        vec![Src::Vec(rp.clone())]
                    } else {
                        Vec::new()
                    };
                    b.store_tile(&self.epilogue, &v, &cm, (&op, &srcs), col);
                }
                b.line(&format!("  br label %{no}"));
                b.line(&format!("{no}:"));
            }
        }
        b.loop_end("ty", &ty);
        b.line("  br label %next");
        b.line("next:");
        b.items_end("mi");
        out.push_str(&e.s);
    }
}

/// The address of element `[e][ch][row + tx0]` of a transformed tensor `V` or `M` laid out
/// `[e][channels][tiles]`: `ch` = (SSA name, channel count), `e` = (element, tiles per image),
/// `row` = the SSA offset of the tile row.
fn transformed_at(
    b: &mut Emit,
    base: &str,
    (ch, chans): (&str, usize),
    (e, tiles): (usize, usize),
    (row, tx0): (&str, usize),
) -> String {
    let o0 = b.tmp();
    b.line(&format!("  {o0} = add i64 {ch}, {}", e * chans));
    let o1 = b.tmp();
    b.line(&format!("  {o1} = mul i64 {o0}, {tiles}"));
    let o2 = b.tmp();
    b.line(&format!("  {o2} = add i64 {o1}, {row}"));
    let o = b.tmp();
    b.line(&format!("  {o} = add i64 {o2}, {tx0}"));
    b.gep(base, &o)
}

/// Parameters of the transforms (the kernels' C signature): source, two unused or bias and
/// residual, destination.
const PARAMS: &str =
    "ptr noalias %q, ptr noalias %w, ptr noalias %b, ptr noalias %r, ptr noalias %o";
