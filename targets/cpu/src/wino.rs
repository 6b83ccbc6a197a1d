//! Winograd F(2x2, 3x3) convolution (Lavin & Gray, arXiv 1509.09308) for the wide kernels:
//! 3x3, stride 1, ungrouped f32 convolutions compute each 2x2 output tile from a 4x4 input
//! tile with 16 multiplies per (input, output) channel pair instead of 36.
//!
//! Per image, four LLVM functions run one after the other over the caller's pool:
//! 1. the convolution's input packing (`ConvKernel::pack_ir`: zero-padded, one extra row and
//!    column so that every 4x4 tile is inside it);
//! 2. the input transform `V[e][c][t] = (B^T d B)[e]` of every tile `t` (16 tiles per vector,
//!    de-interleaved from two row loads), work items = channels;
//! 3. the 16 products `M[e] = U[e] V[e]` as one grouped 1x1 convolution with 16 groups, run
//!    by an ordinary `ConvKernel` (the transformed weights `U = G g G^T` are packed at compile
//!    time);
//! 4. the output transform `Y = A^T M A` plus bias and the fused epilogue (residual add,
//!    activations), interleaving the two output columns of each tile into contiguous masked
//!    stores, work items = output channels.
//!
//! The transforms are exact in real arithmetic; in f32 the result differs from direct
//! convolution by a few ulps of the largest partial sums (the op tests allow 1e-4 relative).

use kiln_ir::ops::EpilogueStep;

use crate::emit::{Emit, Src, iota, splat_const_i32};
use crate::kernels::{Geom, Packing};
use crate::llvm::LlvmTarget;
use crate::ukernel::{ConvKernel, ConvSchedule};

/// B^T of F(2, 3).
const BT: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
/// G of F(2, 3).
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
/// A^T of F(2, 3).
const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// Whether a convolution of this geometry can run as Winograd F(2x2, 3x3).
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

/// The geometry the input packing uses: one extra zero row and column at the bottom and right,
/// so that the last tile's 4x4 window is inside the packed image for odd output sizes.
fn packing_geom(g: &Geom) -> Geom {
    let mut p = g.clone();
    p.p[2] += 1;
    p.p[3] += 1;
    p
}

/// A Winograd convolution's shapes and its product kernel.
#[derive(Debug, Clone)]
pub(crate) struct Wino {
    /// Tile rows and columns (2x2 outputs each) and tiles per image.
    pub th: usize,
    pub tw: usize,
    pub tiles: usize,
    /// Scratch bytes of the packed input, `V` and `M` ([`scratch_parts`]).
    pub scratch: (usize, usize, usize),
    /// The 16 products as one grouped 1x1 convolution (`[16 * m][c]` weights).
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
    let pg = packing_geom(g);
    let pk = Packing::of(&pg);
    let tiles = g.oh.div_ceil(2) * g.ow.div_ceil(2);
    (
        al((g.c * pk.per_c() + crate::kernels::pack_slack(&pg)) * 4),
        al(16 * g.c * tiles * 4),
        al(16 * g.m * tiles * 4),
    )
}

impl ConvKernel {
    /// A 3x3 stride-1 convolution as Winograd F(2x2, 3x3) ([`eligible`] shapes only).
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
        let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
        let tiles = th * tw;
        let gg = Geom {
            k: [1, 1],
            s: [1, 1],
            p: [0; 4],
            d: [1, 1],
            n: 1,
            c: 16 * g.c,
            h: 1,
            w: tiles,
            m: 16 * g.m,
            oh: 1,
            ow: tiles,
            cg: g.c,
            mg: g.m,
        };
        let gemm = ConvKernel::new(name.clone(), gg, 16, false, false, &[], t)?
            .with_schedule(ConvSchedule::Auto, t);
        // the convolution itself: its input packing (with the extra row and column) and the
        // epilogue the output transform applies
        let mut ck = ConvKernel::new(name, packing_geom(&g), 1, has_bias, has_res, epilogue, t)?;
        ck.wino = Some(Box::new(Wino {
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
        let mut u = vec![0f32; 16 * m * c];
        for mi in 0..m {
            for ci in 0..c {
                let k = &w[(mi * c + ci) * 9..(mi * c + ci) * 9 + 9];
                // G g (4x3), then (G g) G^T (4x4)
                let mut gk = [[0f32; 3]; 4];
                for (i, row) in gk.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|r| G[i][r] * k[r * 3 + j]).sum();
                    }
                }
                for i in 0..4 {
                    for j in 0..4 {
                        let v: f32 = (0..3).map(|r| gk[i][r] * G[j][r]).sum();
                        u[((i * 4 + j) * m + mi) * c + ci] = v;
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
        let w = self.lanes;
        let per_c = pk.per_c();
        let mut e = Emit::new(w);
        let vt = e.vt.clone();
        let b = &mut e;
        let [wi, _] = self.wino_names();
        b.items_begin(&wi, PARAMS, attrs_group, "c", "next");
        b.line(&format!("  %qo = mul i64 %c, {per_c}"));
        b.line("  %qc = getelementptr float, float* %q, i64 %qo");
        let ty = b.loop_begin("ty", 0, wn.th);
        for tx0 in (0..wn.tw).step_by(w) {
            // rows 2 ty + i, columns 2 tx0 + (0..2w) and 2 tx0 + 2 + (0..2w), masked to the row
            let mut d: [[String; 4]; 4] = Default::default();
            for (i, di) in d.iter_mut().enumerate() {
                let r = b.tmp();
                b.line(&format!("  {r} = mul i64 {ty}, 2"));
                let r2 = b.tmp();
                b.line(&format!("  {r2} = add i64 {r}, {i}"));
                let ro = b.tmp();
                b.line(&format!("  {ro} = mul i64 {r2}, {}", pk.wq));
                let rp = b.tmp();
                b.line(&format!(
                    "  {rp} = getelementptr float, float* %qc, i64 {ro}"
                ));
                for (half, off) in [(0, 0), (1, 2)] {
                    let mut v2 = Vec::new();
                    for part in 0..2 {
                        let col = 2 * tx0 + off + part * w;
                        let m = b.tmp();
                        b.line(&format!(
                            "  {m} = icmp slt <{w} x i32> {}, {}",
                            iota(w, col),
                            splat_const_i32(w, pk.wq as i64)
                        ));
                        let p = b.gep_vec(&rp, col);
                        v2.push(b.masked_load(&p, &m));
                    }
                    let even: Vec<String> = (0..w).map(|l| format!("i32 {}", 2 * l)).collect();
                    let odd: Vec<String> = (0..w).map(|l| format!("i32 {}", 2 * l + 1)).collect();
                    for (k, idx) in [(0, &even), (1, &odd)] {
                        let x = b.tmp();
                        b.line(&format!(
                            "  {x} = shufflevector {vt} {}, {vt} {}, <{w} x i32> <{}>",
                            v2[0],
                            v2[1],
                            idx.join(", ")
                        ));
                        di[2 * half + k] = x;
                    }
                }
            }
            // B^T d B
            let rows = combine4(b, &BT, &d);
            let t: Vec<Vec<String>> = rows.iter().map(|r| combine_vec(b, &BT, r)).collect();
            // V[e][c][ty * tw + tx0 ..], masked to the tiles of the row
            let m = b.tmp();
            b.line(&format!(
                "  {m} = icmp slt <{w} x i32> {}, {}",
                iota(w, tx0),
                splat_const_i32(w, wn.tw as i64)
            ));
            let tb = b.tmp();
            b.line(&format!("  {tb} = mul i64 {ty}, {}", wn.tw));
            for (i, row) in t.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let ei = i * 4 + j;
                    let o0 = b.tmp();
                    b.line(&format!("  {o0} = add i64 %c, {}", ei * g.c));
                    let o1 = b.tmp();
                    b.line(&format!("  {o1} = mul i64 {o0}, {}", wn.tiles));
                    let o2 = b.tmp();
                    b.line(&format!("  {o2} = add i64 {o1}, {tb}"));
                    let o = b.tmp();
                    b.line(&format!("  {o} = add i64 {o2}, {tx0}"));
                    let p = b.gep_vec_at("%o", &o);
                    b.line(&format!(
                        "  call void @llvm.masked.store.v{w}f32.p0v{w}f32({vt} {v}, {vt}* {p}, i32 4, <{w} x i1> {m})"
                    ));
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
        let w = self.lanes;
        let plane = g.oh * g.ow;
        let mut e = Emit::new(w);
        let vt = e.vt.clone();
        let b = &mut e;
        let [_, wo] = self.wino_names();
        b.items_begin(&wo, PARAMS, attrs_group, "mi", "next");
        let bias = if self.has_bias {
            b.line("  %bp = getelementptr float, float* %b, i64 %mi");
            b.line("  %bs = load float, float* %bp, align 4");
            Some(b.splat("%bs"))
        } else {
            None
        };
        b.line(&format!("  %ob = mul i64 %mi, {plane}"));
        b.line("  %oc = getelementptr float, float* %o, i64 %ob");
        b.line("  %rc = getelementptr float, float* %r, i64 %ob");
        let ty = b.loop_begin("ty", 0, wn.th);
        for tx0 in (0..wn.tw).step_by(w) {
            let m = b.tmp();
            b.line(&format!(
                "  {m} = icmp slt <{w} x i32> {}, {}",
                iota(w, tx0),
                splat_const_i32(w, wn.tw as i64)
            ));
            let tb = b.tmp();
            b.line(&format!("  {tb} = mul i64 {ty}, {}", wn.tw));
            let mut mv: [[String; 4]; 4] = Default::default();
            for (i, row) in mv.iter_mut().enumerate() {
                for (j, slot) in row.iter_mut().enumerate() {
                    let ei = i * 4 + j;
                    let o0 = b.tmp();
                    b.line(&format!("  {o0} = add i64 %mi, {}", ei * g.m));
                    let o1 = b.tmp();
                    b.line(&format!("  {o1} = mul i64 {o0}, {}", wn.tiles));
                    let o2 = b.tmp();
                    b.line(&format!("  {o2} = add i64 {o1}, {tb}"));
                    let o = b.tmp();
                    b.line(&format!("  {o} = add i64 {o2}, {tx0}"));
                    let p = b.gep_vec_at("%q", &o);
                    *slot = b.masked_load(&p, &m);
                }
            }
            // A^T M A: rows, then columns
            let s = combine4(b, &AT, &mv);
            for (i, si) in s.iter().enumerate() {
                let y = combine_vec(b, &AT, si);
                // output row 2 ty + i (the last one may be past an odd height)
                let oy0 = b.tmp();
                b.line(&format!("  {oy0} = mul i64 {ty}, 2"));
                let oy = b.tmp();
                b.line(&format!("  {oy} = add i64 {oy0}, {i}"));
                let inb = b.tmp();
                b.line(&format!("  {inb} = icmp ult i64 {oy}, {}", g.oh));
                let (yes, no) = (format!("st_{tx0}_{i}"), format!("sk_{tx0}_{i}"));
                b.line(&format!("  br i1 {inb}, label %{yes}, label %{no}"));
                b.line(&format!("{yes}:"));
                let ro = b.tmp();
                b.line(&format!("  {ro} = mul i64 {oy}, {}", g.ow));
                let op = b.tmp();
                b.line(&format!(
                    "  {op} = getelementptr float, float* %oc, i64 {ro}"
                ));
                let rp = b.tmp();
                b.line(&format!(
                    "  {rp} = getelementptr float, float* %rc, i64 {ro}"
                ));
                // columns 2 (tx0 + l) and 2 (tx0 + l) + 1, interleaved
                for half in 0..2 {
                    let idx: Vec<String> = (0..w)
                        .map(|k| {
                            let l = half * w / 2 + k / 2;
                            format!("i32 {}", if k % 2 == 0 { l } else { w + l })
                        })
                        .collect();
                    let v = b.tmp();
                    b.line(&format!(
                        "  {v} = shufflevector {vt} {}, {vt} {}, <{w} x i32> <{}>",
                        y[0],
                        y[1],
                        idx.join(", ")
                    ));
                    let v = match &bias {
                        Some(bs) => b.bin("fadd", &v, bs),
                        None => v,
                    };
                    let col = 2 * tx0 + half * w;
                    let cm = b.tmp();
                    b.line(&format!(
                        "  {cm} = icmp slt <{w} x i32> {}, {}",
                        iota(w, col),
                        splat_const_i32(w, g.ow as i64)
                    ));
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

/// `out[i][j] = sum_r k[i][r] x[r][j]` for 4 rows of 4 vectors (`k` with 4 columns).
fn combine4<const R: usize>(
    b: &mut Emit,
    k: &[[f32; 4]; R],
    x: &[[String; 4]; 4],
) -> Vec<[String; 4]> {
    (0..R)
        .map(|i| {
            let mut row: [String; 4] = Default::default();
            for (j, slot) in row.iter_mut().enumerate() {
                let col = [
                    x[0][j].clone(),
                    x[1][j].clone(),
                    x[2][j].clone(),
                    x[3][j].clone(),
                ];
                *slot = dot(b, &k[i], &col);
            }
            row
        })
        .collect()
}

/// `k x` for one vector of 4 operands per output (`k` with 4 columns).
fn combine_vec<const R: usize>(b: &mut Emit, k: &[[f32; 4]; R], x: &[String; 4]) -> Vec<String> {
    (0..R).map(|i| dot(b, &k[i], x)).collect()
}

/// `sum_r c[r] x[r]` with coefficients 0, 1 or -1.
fn dot(b: &mut Emit, c: &[f32; 4], x: &[String; 4]) -> String {
    let mut acc: Option<String> = None;
    for (r, &cr) in c.iter().enumerate() {
        if cr == 0.0 {
            continue;
        }
        debug_assert!(cr == 1.0 || cr == -1.0);
        acc = Some(match (acc, cr > 0.0) {
            (None, true) => x[r].clone(),
            (None, false) => b.bin("fsub", "zeroinitializer", &x[r]),
            (Some(a), true) => b.bin("fadd", &a, &x[r]),
            (Some(a), false) => b.bin("fsub", &a, &x[r]),
        });
    }
    acc.unwrap_or_else(|| "zeroinitializer".into())
}

/// Parameters of the transforms (the kernels' C signature): source, two unused or bias and
/// residual, destination.
const PARAMS: &str =
    "float* noalias %q, float* noalias %w, float* noalias %b, float* noalias %r, float* noalias %o";
