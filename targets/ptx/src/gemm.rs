//! Dense products on the GPU: one tiled SGEMM body for MatMul (batched, broadcasting), Gemm and
//! convolutions as implicit GEMM (any stride, dilation, padding and groups; 1x1 stride-1
//! convolutions read the image as a plain `[K][N]` matrix).
//!
//! A block computes a `BM x BN` tile of `C[z] = A[z] B[z]` over `K` in steps of `BK`: 256
//! threads load the next `A` and `B` tiles from global memory into registers while the current
//! ones, in shared memory, feed each thread's `TM x TN` register tile (fused multiply-adds in
//! f32: `--gpu-precision fp32` is exact f32 arithmetic); then two barriers and a store of the
//! prefetched tiles. Loads outside the matrices read zero (selects, no branches); the
//! epilogue (bias, residual, Gemm's `alpha`/`beta C`, activations — the CPU's steps) runs on
//! the registers before each bounds-checked store.
//!
//! Constant left operands (convolution weights) are re-laid out at compile time as `[z][K][M]`
//! and constant transposed right operands as `[K][N]`, so both tile loads are coalesced and
//! their shared-memory stores conflict-free.

use crate::kern::{Arg, Body, Launch, prod, step_f32, strides_of};
use kiln_ir::ops::EpilogueStep;
use kiln_ir::{DType, Graph, Node};
use kiln_target_llvm::GpuKernel;

/// A tile shape: `bm x bn` per block over `bk`, `tm x tn` per thread, 256 threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tile {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
}

const NT: usize = 256;

pub const TILES: [Tile; 3] = [
    Tile {
        bm: 128,
        bn: 128,
        bk: 8,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 4,
        tn: 4,
    },
    Tile {
        bm: 32,
        bn: 32,
        bk: 32,
        tm: 2,
        tn: 2,
    },
];

/// The largest tile that still gives enough blocks to fill a GPU (about two per SM of an
/// A100/H100), else the smallest.
pub fn pick_tile(z: usize, m: usize, n: usize) -> Tile {
    for t in TILES {
        let blocks = z * m.div_ceil(t.bm) * n.div_ceil(t.bn);
        if blocks >= 200 && m >= t.bm / 2 {
            return t;
        }
    }
    TILES[2]
}

/// A batch index's offset: `z` decomposed row-major over `dims`, times `strides`.
#[derive(Debug, Clone, Default)]
pub struct ZOff {
    pub dims: Vec<usize>,
    pub strides: Vec<i64>,
}

impl ZOff {
    fn emit(&self, b: &mut Body, z: &str) -> String {
        let c = b.coords(z, &self.dims);
        b.affine(&c, &self.strides, 0)
    }
}

/// Where the right operand's element `(k, n)` is.
#[derive(Debug, Clone)]
pub enum BSrc {
    /// `p[zoff + k ks + n ns]`.
    Dense { zoff: ZOff, ks: i64, ns: i64 },
    /// The image of a convolution (group `z`): `n = (image, oy, ox)`, `k = (c, ky, kx)`.
    Conv(ConvB),
}

/// Implicit-GEMM geometry of a convolution's right operand.
#[derive(Debug, Clone, Copy)]
pub struct ConvB {
    pub c: usize,
    pub cg: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
}

impl ConvB {
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.ph == 0
            && self.pw == 0
            && self.oh == self.h
            && self.ow == self.w
    }
}

/// Where output element `(z, m, n)` goes (and a same-shaped operand is read).
#[derive(Debug, Clone)]
pub enum OutMap {
    /// `zoff + m ms + n ns`.
    Dense { zoff: ZOff, ms: i64, ns: i64 },
    /// `[image][z mg + m][p]` with `n = image * p_len + p`.
    Conv { mg: usize, cout: usize, plen: usize },
}

/// An epilogue operand read per output element.
#[derive(Debug, Clone)]
pub enum Opd {
    /// Param `p` at the output's own index.
    AtOut(usize),
    /// Param `p` at `zoff + m ms + n ns` (broadcast strides may be 0).
    Strided {
        p: usize,
        zoff: ZOff,
        ms: i64,
        ns: i64,
    },
}

/// A product and its epilogue. Params: 0 = A, 1 = B, 2 = output, then the epilogue's.
#[derive(Debug, Clone)]
pub struct Gemm {
    pub z: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A's element `(m, k)` at `zoff + m ms + k ks`.
    pub a: (ZOff, i64, i64),
    pub b: BSrc,
    pub out: OutMap,
    pub alpha: f32,
    /// `beta * C` (param, strides).
    pub c: Option<(f32, Opd)>,
    /// A bias per output row (`z mg + m`): param.
    pub bias: Option<usize>,
    pub steps: Vec<EpilogueStep>,
    /// The operands of the `Add` steps, in order.
    pub step_ops: Vec<Opd>,
    pub nparams: usize,
}

impl Gemm {
    /// The kernel for tile `t`.
    // the register tile's indices also name SSA values and offsets, not only `acc` slots
    #[allow(clippy::needless_range_loop)]
    pub fn kernel(&self, name: &str, t: Tile) -> Result<GpuKernel, String> {
        let mut params = vec![String::from("readonly"); self.nparams];
        params[2] = String::new();
        let (bm, bn, bk, tm, tn) = (t.bm, t.bn, t.bk, t.tm, t.tn);
        let (zoff_a, ams, aks) = self.a.clone();
        // tile-load layouts: along m or k for A, along n or k for B
        let a_m_major = ams == 1 && aks != 1;
        let b_n_major = match &self.b {
            BSrc::Dense { ks, ns, .. } => *ns == 1 || *ks != 1,
            BSrc::Conv(_) => true,
        };
        let lda = bm + if a_m_major { 0 } else { 4 };
        let ldb = bn + if b_n_major { 0 } else { 4 };
        let smem = 4 * bk * (lda + ldb);
        let la = bm * bk / NT;
        let lb = bk * bn / NT;
        let kt_n = self.k.div_ceil(bk).max(1);
        let mut b = Body::new(name, &params);
        let tid = {
            let t = b.e.tmp();
            b.e.line(&format!("  {t} = zext i32 %tid to i64"));
            t
        };
        let bx = {
            let t = b.e.tmp();
            b.e.line(&format!("  {t} = zext i32 %bx to i64"));
            t
        };
        let by = {
            let t = b.e.tmp();
            b.e.line(&format!("  {t} = zext i32 %by to i64"));
            t
        };
        let z = {
            let t = b.e.tmp();
            b.e.line(&format!("  {t} = zext i32 %bz to i64"));
            t
        };
        let n0 = b.e.iop("mul", "i64", &bx, &bn.to_string());
        let m0 = b.e.iop("mul", "i64", &by, &bm.to_string());
        let (mm, nn, kk) = (self.m as i64, self.n as i64, self.k as i64);
        // ---- per-thread A load slots: (m in tile, k in tile step) fixed part
        let (a_m0, a_k0, a_mstep, a_kstep) = if a_m_major {
            (
                b.e.iop("urem", "i64", &tid, &bm.to_string()),
                b.e.iop("udiv", "i64", &tid, &bm.to_string()),
                0,
                NT / bm,
            )
        } else {
            (
                b.e.iop("udiv", "i64", &tid, &bk.to_string()),
                b.e.iop("urem", "i64", &tid, &bk.to_string()),
                NT / bk,
                0,
            )
        };
        let abase = zoff_a.emit(&mut b, &z);
        // global row of each A slot, its validity and base address (without k)
        let mut a_rows = Vec::new();
        for i in 0..la {
            let ml = b.e.iop("add", "i64", &a_m0, &(i * a_mstep).to_string());
            let mg = b.e.iop("add", "i64", &m0, &ml);
            let ok = b.icmp("slt", "i64", &mg, &mm.to_string());
            let mo = b.e.iop("mul", "i64", &mg, &ams.to_string());
            let base = b.e.iop("add", "i64", &abase, &mo);
            let kl = b.e.iop("add", "i64", &a_k0, &(i * a_kstep).to_string());
            // shared slot: As[kl][ml]
            let so = b.e.iop("mul", "i64", &kl, &lda.to_string());
            let so = b.e.iop("add", "i64", &so, &ml);
            a_rows.push((ok, base, kl, so));
        }
        // ---- per-thread B load slots
        let (b_n0, b_k0, b_nstep, b_kstep) = if b_n_major {
            (
                b.e.iop("urem", "i64", &tid, &bn.to_string()),
                b.e.iop("udiv", "i64", &tid, &bn.to_string()),
                0,
                NT / bn,
            )
        } else {
            (
                b.e.iop("udiv", "i64", &tid, &bk.to_string()),
                b.e.iop("urem", "i64", &tid, &bk.to_string()),
                NT / bk,
                0,
            )
        };
        struct BSlot {
            ok_n: String,
            nbase: String,
            kl: String,
            so: String,
            // conv: iy0, ix0
            iy0: String,
            ix0: String,
        }
        let mut b_slots = Vec::new();
        let bzoff = match &self.b {
            BSrc::Dense { zoff, .. } => zoff.emit(&mut b, &z),
            BSrc::Conv(c) => b.e.iop("mul", "i64", &z, &(c.cg * c.h * c.w).to_string()),
        };
        for i in 0..lb {
            let nl = b.e.iop("add", "i64", &b_n0, &(i * b_nstep).to_string());
            let ng = b.e.iop("add", "i64", &n0, &nl);
            let ok_n = b.icmp("slt", "i64", &ng, &nn.to_string());
            let kl = b.e.iop("add", "i64", &b_k0, &(i * b_kstep).to_string());
            let so = b.e.iop("mul", "i64", &kl, &ldb.to_string());
            let so = b.e.iop("add", "i64", &so, &nl);
            let (nbase, iy0, ix0) = match &self.b {
                BSrc::Dense { ns, .. } => {
                    let o = b.e.iop("mul", "i64", &ng, &ns.to_string());
                    (
                        b.e.iop("add", "i64", &bzoff, &o),
                        String::new(),
                        String::new(),
                    )
                }
                BSrc::Conv(c) => {
                    let plen = c.oh * c.ow;
                    let img = b.e.iop("udiv", "i64", &ng, &plen.to_string());
                    let p = b.e.iop("urem", "i64", &ng, &plen.to_string());
                    let ib = b.e.iop("mul", "i64", &img, &(c.c * c.h * c.w).to_string());
                    let base = b.e.iop("add", "i64", &ib, &bzoff);
                    if c.pointwise() {
                        (
                            b.e.iop("add", "i64", &base, &p),
                            String::new(),
                            String::new(),
                        )
                    } else {
                        let oy = b.e.iop("udiv", "i64", &p, &c.ow.to_string());
                        let ox = b.e.iop("urem", "i64", &p, &c.ow.to_string());
                        let iy = b.e.iop("mul", "i64", &oy, &c.sh.to_string());
                        let iy = b.e.iop("sub", "i64", &iy, &c.ph.to_string());
                        let ix = b.e.iop("mul", "i64", &ox, &c.sw.to_string());
                        let ix = b.e.iop("sub", "i64", &ix, &c.pw.to_string());
                        (base, iy, ix)
                    }
                }
            };
            b_slots.push(BSlot {
                ok_n,
                nbase,
                kl,
                so,
                iy0,
                ix0,
            });
        }
        let bs_off = 4 * bk * lda; // bytes to Bs
        let bs = b.e.gep_ty("i8", "%smem", &bs_off.to_string());
        // one tile's global loads at k offset `k0` (i64): the A and B register values
        let load_tiles = |b: &mut Body, k0: &str| -> (Vec<String>, Vec<String>) {
            let mut ra = Vec::new();
            for (ok, base, kl, _) in &a_rows {
                let kg = b.e.iop("add", "i64", k0, kl);
                let okk = b.icmp("slt", "i64", &kg, &kk.to_string());
                let v = b.and(ok, &okk);
                let ko = b.e.iop("mul", "i64", &kg, &aks.to_string());
                let ad = b.e.iop("add", "i64", base, &ko);
                let ad = b.sel("i64", &v, &ad, "0");
                let x = b.ld("float", "%p0", &ad);
                ra.push(b.sel("float", &v, &x, "0.0"));
            }
            let mut rb = Vec::new();
            for s in &b_slots {
                let kg = b.e.iop("add", "i64", k0, &s.kl);
                let okk = b.icmp("slt", "i64", &kg, &kk.to_string());
                let mut v = b.and(&s.ok_n, &okk);
                let ad = match &self.b {
                    BSrc::Dense { ks, .. } => {
                        let ko = b.e.iop("mul", "i64", &kg, &ks.to_string());
                        b.e.iop("add", "i64", &s.nbase, &ko)
                    }
                    BSrc::Conv(c) => {
                        let hw = (c.h * c.w).to_string();
                        if c.pointwise() {
                            let ko = b.e.iop("mul", "i64", &kg, &hw);
                            b.e.iop("add", "i64", &s.nbase, &ko)
                        } else {
                            let taps = (c.kh * c.kw).to_string();
                            let ci = b.e.iop("udiv", "i64", &kg, &taps);
                            let r = b.e.iop("urem", "i64", &kg, &taps);
                            let ky = b.e.iop("udiv", "i64", &r, &c.kw.to_string());
                            let kx = b.e.iop("urem", "i64", &r, &c.kw.to_string());
                            let dy = b.e.iop("mul", "i64", &ky, &c.dh.to_string());
                            let iy = b.e.iop("add", "i64", &s.iy0, &dy);
                            let dx = b.e.iop("mul", "i64", &kx, &c.dw.to_string());
                            let ix = b.e.iop("add", "i64", &s.ix0, &dx);
                            for (q, len) in [(&iy, c.h), (&ix, c.w)] {
                                let lo = b.icmp("sge", "i64", q, "0");
                                let hi = b.icmp("slt", "i64", q, &len.to_string());
                                let in_ = b.and(&lo, &hi);
                                v = b.and(&v, &in_);
                            }
                            let co = b.e.iop("mul", "i64", &ci, &hw);
                            let ro = b.e.iop("mul", "i64", &iy, &c.w.to_string());
                            let a = b.e.iop("add", "i64", &s.nbase, &co);
                            let a = b.e.iop("add", "i64", &a, &ro);
                            b.e.iop("add", "i64", &a, &ix)
                        }
                    }
                };
                let ad = b.sel("i64", &v, &ad, "0");
                let x = b.ld("float", "%p1", &ad);
                rb.push(b.sel("float", &v, &x, "0.0"));
            }
            (ra, rb)
        };
        let store_tiles = |b: &mut Body, ra: &[String], rb: &[String]| {
            for (x, (_, _, _, so)) in ra.iter().zip(&a_rows) {
                b.st("float", x, "%smem", so);
            }
            for (x, s) in rb.iter().zip(&b_slots) {
                b.st("float", x, &bs, &s.so);
            }
        };
        let (ra, rb) = load_tiles(&mut b, "0");
        store_tiles(&mut b, &ra, &rb);
        b.e.barrier();
        // thread's register tile
        let tx = b.e.iop("urem", "i64", &tid, &(bn / tn).to_string());
        let ty = b.e.iop("udiv", "i64", &tid, &(bn / tn).to_string());
        let am_t = b.e.iop("mul", "i64", &ty, &tm.to_string());
        let bn_t = b.e.iop("mul", "i64", &tx, &tn.to_string());
        b.e.line("  br label %kloop");
        b.e.line("kloop:");
        b.e.line("  %kt = phi i64 [ 0, %entry_end ], [ %ktn, %kloop_end ]");
        for i in 0..tm {
            for j in 0..tn {
                b.e.line(&format!(
                    "  %acc{i}_{j} = phi float [ 0.0, %entry_end ], [ %acc{i}_{j}_n, %kloop_end ]"
                ));
            }
        }
        // prefetch the next tile
        let k1 = b.e.iop("add", "i64", "%kt", "1");
        let k1o = b.e.iop("mul", "i64", &k1, &bk.to_string());
        let (na, nb) = load_tiles(&mut b, &k1o);
        // multiply-adds from shared memory
        let mut acc: Vec<Vec<String>> = (0..tm)
            .map(|i| (0..tn).map(|j| format!("%acc{i}_{j}")).collect())
            .collect();
        let vecs = |b: &mut Body, base: &str, ld: usize, kq: usize, off: &str, cnt: usize| {
            let row = b.e.iop("add", "i64", off, &(kq * ld).to_string());
            let mut out = Vec::new();
            let mut at = 0;
            while at < cnt {
                let w = (cnt - at).min(4);
                let idx = b.e.iop("add", "i64", &row, &at.to_string());
                let p = b.e.gep_ty("float", base, &idx);
                let v = b.e.tmp();
                b.e.line(&format!(
                    "  {v} = load <{w} x float>, ptr {p}, align {}",
                    4 * w
                ));
                for l in 0..w {
                    let x = b.e.tmp();
                    b.e.line(&format!(
                        "  {x} = extractelement <{w} x float> {v}, i32 {l}"
                    ));
                    out.push(x);
                }
                at += w;
            }
            out
        };
        for q in 0..bk {
            let av = vecs(&mut b, "%smem", lda, q, &am_t, tm);
            let bv = vecs(&mut b, &bs, ldb, q, &bn_t, tn);
            for i in 0..tm {
                for j in 0..tn {
                    let r = b.e.tmp();
                    b.e.line(&format!(
                        "  {r} = call float @llvm.fma.f32(float {}, float {}, float {})",
                        av[i], bv[j], acc[i][j]
                    ));
                    acc[i][j] = r;
                }
            }
        }
        b.e.barrier();
        store_tiles(&mut b, &na, &nb);
        b.e.barrier();
        for i in 0..tm {
            for j in 0..tn {
                b.e.copy_to(&format!("%acc{i}_{j}_n"), "float", &acc[i][j]);
            }
        }
        b.e.line("  %ktn = add i64 %kt, 1");
        b.e.line(&format!("  %ktc = icmp ult i64 %ktn, {kt_n}"));
        b.e.line("  br label %kloop_end");
        b.e.line("kloop_end:");
        b.e.line("  br i1 %ktc, label %kloop, label %epi");
        b.e.line("epi:");
        // epilogue and stores
        let zo_out = match &self.out {
            OutMap::Dense { zoff, .. } => zoff.emit(&mut b, &z),
            OutMap::Conv { mg, plen, .. } => b.e.iop("mul", "i64", &z, &(mg * plen).to_string()),
        };
        let mut zoffs = Vec::new();
        for o in self.step_ops.iter().chain(self.c.iter().map(|(_, o)| o)) {
            zoffs.push(match o {
                Opd::Strided { zoff, .. } => zoff.emit(&mut b, &z),
                Opd::AtOut(_) => String::new(),
            });
        }
        for i in 0..tm {
            let ml = b.e.iop("add", "i64", &am_t, &i.to_string());
            let mg = b.e.iop("add", "i64", &m0, &ml);
            for j in 0..tn {
                let nl = b.e.iop("add", "i64", &bn_t, &j.to_string());
                let ng = b.e.iop("add", "i64", &n0, &nl);
                let okm = b.icmp("slt", "i64", &mg, &mm.to_string());
                let okn = b.icmp("slt", "i64", &ng, &nn.to_string());
                let ok = b.and(&okm, &okn);
                let l = b.e.if_begin(&ok);
                let oi = match &self.out {
                    OutMap::Dense { ms, ns, .. } => {
                        let a = b.e.iop("mul", "i64", &mg, &ms.to_string());
                        let c = b.e.iop("mul", "i64", &ng, &ns.to_string());
                        let s = b.e.iop("add", "i64", &a, &c);
                        b.e.iop("add", "i64", &s, &zo_out)
                    }
                    OutMap::Conv { cout, plen, .. } => {
                        let img = b.e.iop("udiv", "i64", &ng, &plen.to_string());
                        let p = b.e.iop("urem", "i64", &ng, &plen.to_string());
                        let ib = b.e.iop("mul", "i64", &img, &(cout * plen).to_string());
                        let mo = b.e.iop("mul", "i64", &mg, &plen.to_string());
                        let s = b.e.iop("add", "i64", &ib, &mo);
                        let s = b.e.iop("add", "i64", &s, &zo_out);
                        b.e.iop("add", "i64", &s, &p)
                    }
                };
                let read = |b: &mut Body, o: &Opd, zo: &str| -> String {
                    match o {
                        Opd::AtOut(p) => b.ld("float", &format!("%p{p}"), &oi),
                        Opd::Strided { p, ms, ns, .. } => {
                            let a = b.e.iop("mul", "i64", &mg, &ms.to_string());
                            let c = b.e.iop("mul", "i64", &ng, &ns.to_string());
                            let s = b.e.iop("add", "i64", &a, &c);
                            let s = b.e.iop("add", "i64", &s, zo);
                            b.ld("float", &format!("%p{p}"), &s)
                        }
                    }
                };
                let mut v = acc[i][j].clone();
                if self.alpha != 1.0 {
                    v = b.e.sop("fmul", &v, &kiln_target_llvm::fconst(self.alpha));
                }
                if let Some((beta, o)) = &self.c {
                    let cv = read(&mut b, o, &zoffs[self.step_ops.len()]);
                    let cv = if *beta != 1.0 {
                        b.e.sop("fmul", &cv, &kiln_target_llvm::fconst(*beta))
                    } else {
                        cv
                    };
                    v = b.e.sop("fadd", &v, &cv);
                }
                if let Some(p) = self.bias {
                    let row = match &self.out {
                        OutMap::Conv { mg: g, .. } => {
                            let zr = b.e.iop("mul", "i64", &z, &g.to_string());
                            b.e.iop("add", "i64", &zr, &mg)
                        }
                        _ => mg.clone(),
                    };
                    let bv = b.ld("float", &format!("%p{p}"), &row);
                    v = b.e.sop("fadd", &v, &bv);
                }
                let mut next = 0;
                for s in &self.steps {
                    let opd = if matches!(s, EpilogueStep::Add | EpilogueStep::Mul) {
                        next += 1;
                        Some(read(&mut b, &self.step_ops[next - 1], &zoffs[next - 1]))
                    } else {
                        None
                    };
                    v = step_f32(&mut b, s, &v, opd.as_deref()).ok_or("epilogue step")?;
                }
                b.st("float", &v, "%p2", &oi);
                b.e.if_end(&l);
            }
        }
        let body = b.finish();
        // the loop's entry edge comes from the block before `kloop`: name it
        let body = name_entry_end(&body);
        Ok(GpuKernel {
            name: name.into(),
            params,
            threads: NT as u32,
            grid: [
                self.n.div_ceil(bn) as u32,
                self.m.div_ceil(bm) as u32,
                self.z as u32,
            ],
            smem,
            sync: true,
            body,
        })
    }
}

/// Put a block `entry_end:` right before `br label %kloop` of the prologue (the phis name
/// it as the loop's entry edge), whatever block the prologue ended in.
fn name_entry_end(body: &str) -> String {
    body.replacen(
        "  br label %kloop\nkloop:",
        "  br label %entry_end\nentry_end:\n  br label %kloop\nkloop:",
        1,
    )
}

fn f32s(g: &Graph, n: &Node) -> bool {
    n.inputs
        .iter()
        .chain(&n.outputs)
        .all(|&v| g.ty(v).dtype == DType::F32)
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(g: &Graph, v: kiln_ir::ValueId) -> Option<Vec<f32>> {
    let d = g.const_data(v)?;
    let b: &[u8] = d.as_ref();
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

/// A convolution as implicit GEMM per group: `A` = the weights re-laid out as `[g][K][Mg]`.
pub(crate) fn conv(
    g: &Graph,
    n: &Node,
    name: &str,
    a: &kiln_ir::ops::ConvAttrs,
) -> Result<Vec<Launch>, String> {
    if !f32s(g, n) {
        return Err("non-f32 convolution".into());
    }
    let x = g.ty(n.inputs[0]);
    let o = g.ty(n.outputs[0]);
    let w = crate::kern::Win::new(
        &x.shape,
        &o.shape,
        (&a.kernel, &a.strides, &a.pads, &a.dilations),
    )
    .ok_or("convolution of more than 2 spatial dims")?;
    let groups = a.groups;
    let cout = o.shape[1];
    let (mg, cg) = (cout / groups, w.c / groups);
    let kdim = cg * w.kh * w.kw;
    let ndim = w.n * w.oh * w.ow;
    let wt = floats(g, n.inputs[1]).ok_or("convolution weights must be constant")?;
    let mut packed = vec![0f32; wt.len()];
    for gi in 0..groups {
        for m in 0..mg {
            for k in 0..kdim {
                packed[gi * kdim * mg + k * mg + m] = wt[(gi * mg + m) * kdim + k];
            }
        }
    }
    let (bias, res) = (n.inputs.len() >= 3, n.inputs.len() == 4);
    let gm = Gemm {
        z: groups,
        m: mg,
        n: ndim,
        k: kdim,
        a: (
            ZOff {
                dims: vec![groups],
                strides: vec![(kdim * mg) as i64],
            },
            1,
            mg as i64,
        ),
        b: BSrc::Conv(ConvB {
            c: w.c,
            cg,
            h: w.h,
            w: w.w,
            oh: w.oh,
            ow: w.ow,
            kh: w.kh,
            kw: w.kw,
            sh: w.sh,
            sw: w.sw,
            ph: w.ph,
            pw: w.pw,
            dh: w.dh,
            dw: w.dw,
        }),
        out: OutMap::Conv {
            mg,
            cout,
            plen: w.oh * w.ow,
        },
        alpha: 1.0,
        c: None,
        bias: bias.then_some(3),
        steps: a.epilogue.clone(),
        step_ops: if res { vec![Opd::AtOut(4)] } else { vec![] },
        nparams: 3 + bias as usize + res as usize,
    };
    let k = gm.kernel(name, pick_tile(groups, mg, ndim))?;
    let mut args = vec![
        Arg::Table(le_f32(&packed)),
        Arg::Val(n.inputs[0]),
        Arg::Val(n.outputs[0]),
    ];
    for &v in &n.inputs[2..] {
        args.push(Arg::Val(v));
    }
    Ok(vec![Launch { kernel: k, args }])
}

/// Batch offsets of an operand of shape `s` (rank >= 2) read at the output's batch dims.
fn batch_zoff(s: &[usize], out_batch: &[usize]) -> ZOff {
    let r = s.len();
    let st = strides_of(s);
    let ob = out_batch.len();
    let strides = (0..ob)
        .map(|d| {
            // align right with the operand's batch dims
            let k = d as isize - (ob as isize - (r as isize - 2));
            if k < 0 || s[k as usize] == 1 {
                0
            } else {
                st[k as usize] as i64
            }
        })
        .collect();
    ZOff {
        dims: out_batch.to_vec(),
        strides,
    }
}

/// NumPy MatMul (batched with broadcasting, 1-D operands promoted) with its epilogue.
pub(crate) fn matmul(
    g: &Graph,
    n: &Node,
    name: &str,
    a: &kiln_ir::ops::MatMulAttrs,
) -> Result<Vec<Launch>, String> {
    if !f32s(g, n) {
        return Err("non-f32 MatMul".into());
    }
    let mut sa = g.ty(n.inputs[0]).shape.clone();
    let mut sb = g.ty(n.inputs[1]).shape.clone();
    if sa.len() == 1 {
        sa.insert(0, 1);
    }
    if sb.len() == 1 {
        sb.push(1);
    }
    let (m, k, nn) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let ba = &sa[..sa.len() - 2];
    let bb = &sb[..sb.len() - 2];
    let rb = ba.len().max(bb.len());
    let batch: Vec<usize> = (0..rb)
        .map(|d| {
            let pa = (d + ba.len()).checked_sub(rb).map(|i| ba[i]).unwrap_or(1);
            let pb = (d + bb.len()).checked_sub(rb).map(|i| bb[i]).unwrap_or(1);
            pa.max(pb)
        })
        .collect();
    let z = prod(&batch).max(1);
    let out_full: Vec<usize> = batch.iter().copied().chain([m, nn]).collect();
    let ost = strides_of(&out_full);
    let zo = |s: &[usize]| batch_zoff(s, &batch);
    // a constant B is stored [k][n] already (row-major): coalesced
    let opd = |v: kiln_ir::ValueId, p: usize| -> Opd {
        let s = &g.ty(v).shape;
        let st = crate::kern::bcast_strides(s, &out_full);
        let r = out_full.len();
        Opd::Strided {
            p,
            zoff: ZOff {
                dims: batch.clone(),
                strides: st[..r - 2].iter().map(|&x| x as i64).collect(),
            },
            ms: st[r - 2] as i64,
            ns: st[r - 1] as i64,
        }
    };
    let step_ops: Vec<Opd> = n.inputs[2..]
        .iter()
        .enumerate()
        .map(|(i, &v)| opd(v, 3 + i))
        .collect();
    let gm = Gemm {
        z,
        m,
        n: nn,
        k,
        a: (zo(&sa), k as i64, 1),
        b: BSrc::Dense {
            zoff: zo(&sb),
            ks: nn as i64,
            ns: 1,
        },
        out: OutMap::Dense {
            zoff: ZOff {
                dims: batch.clone(),
                strides: ost[..batch.len()].iter().map(|&x| x as i64).collect(),
            },
            ms: nn as i64,
            ns: 1,
        },
        alpha: 1.0,
        c: None,
        bias: None,
        steps: a.epilogue.clone(),
        step_ops,
        nparams: 3 + n.inputs.len() - 2,
    };
    let kern = gm.kernel(name, pick_tile(z, m, nn))?;
    let mut args = vec![
        Arg::Val(n.inputs[0]),
        Arg::Val(n.inputs[1]),
        Arg::Val(n.outputs[0]),
    ];
    for &v in &n.inputs[2..] {
        args.push(Arg::Val(v));
    }
    Ok(vec![Launch { kernel: kern, args }])
}

/// ONNX Gemm: `alpha op(A) op(B) + beta C`, then the activations.
pub(crate) fn gemm(
    g: &Graph,
    n: &Node,
    name: &str,
    a: &kiln_ir::ops::GemmAttrs,
) -> Result<Vec<Launch>, String> {
    if !f32s(g, n) {
        return Err("non-f32 Gemm".into());
    }
    let sa = &g.ty(n.inputs[0]).shape;
    let sb = &g.ty(n.inputs[1]).shape;
    let (m, k) = if a.trans_a {
        (sa[1], sa[0])
    } else {
        (sa[0], sa[1])
    };
    let nn = if a.trans_b { sb[0] } else { sb[1] };
    let (ams, aks) = if a.trans_a {
        (1, m as i64)
    } else {
        (k as i64, 1)
    };
    // a constant transposed B is stored as [k][n]
    let mut b_arg = Arg::Val(n.inputs[1]);
    let (mut bks, mut bns) = if a.trans_b {
        (1, k as i64)
    } else {
        (nn as i64, 1)
    };
    if a.trans_b
        && let Some(w) = floats(g, n.inputs[1])
    {
        let mut t = vec![0f32; w.len()];
        for r in 0..nn {
            for c in 0..k {
                t[c * nn + r] = w[r * k + c];
            }
        }
        b_arg = Arg::Table(le_f32(&t));
        (bks, bns) = (nn as i64, 1);
    }
    let c = if n.inputs.len() == 3 && a.beta != 0.0 {
        let s = &g.ty(n.inputs[2]).shape;
        let st = crate::kern::bcast_strides(s, &[m, nn]);
        Some((
            a.beta,
            Opd::Strided {
                p: 3,
                zoff: ZOff::default(),
                ms: st[0] as i64,
                ns: st[1] as i64,
            },
        ))
    } else {
        None
    };
    let gm = Gemm {
        z: 1,
        m,
        n: nn,
        k,
        a: (ZOff::default(), ams, aks),
        b: BSrc::Dense {
            zoff: ZOff::default(),
            ks: bks,
            ns: bns,
        },
        out: OutMap::Dense {
            zoff: ZOff::default(),
            ms: nn as i64,
            ns: 1,
        },
        alpha: a.alpha,
        c: c.clone(),
        bias: None,
        steps: a.epilogue.clone(),
        step_ops: vec![],
        nparams: 3 + c.is_some() as usize,
    };
    let kern = gm.kernel(name, pick_tile(1, m, nn))?;
    let mut args = vec![Arg::Val(n.inputs[0]), b_arg, Arg::Val(n.outputs[0])];
    if c.is_some() {
        args.push(Arg::Val(n.inputs[2]));
    }
    Ok(vec![Launch { kernel: kern, args }])
}
