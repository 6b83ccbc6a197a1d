//! Row kernels generated as LLVM IR: ops that reduce and rewrite contiguous rows of a tensor
//! (Softmax over the last axis, LayerNorm over the trailing axes). One work item is one row,
//! so a caller splits rows over its pool like the convolution kernels' work items (same C
//! signature: five pointers and the item range). Rows are read with full vectors and one masked
//! tail vector; the reductions keep a vector accumulator and reduce it once per row.

use crate::emit::{Emit, fconst};
use crate::llvm::LlvmTarget;

/// What a row kernel computes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RowOp {
    /// `exp(x - max) / sum(exp(x - max))` over each row.
    Softmax,
    /// `(x - mean) / sqrt(var + epsilon) * scale + bias` over each row (population variance);
    /// `scale` and `bias` are rows of the same length (absent: 1 and 0).
    LayerNorm {
        epsilon: f32,
        scale: bool,
        bias: bool,
    },
    /// `y[j] = dot(x, w[j]) + bias[j]` for a weight matrix `w` stored `[n][len]` (a Gemm with
    /// one row and `transB`: a classifier's last layer): `rows` is `n`, one work item is
    /// [`GEMV_COLS`] outputs; each weight row is streamed once, contiguously.
    Gemv { bias: bool },
    /// Plain `[C][H*W]` to channel-blocked `[C/w][H*W][w]` (`to_blocked`) or back: one row is
    /// one block of `w = lanes` channels (`len` pixels), transposed `w x w` at a time in
    /// registers.
    Relayout { to_blocked: bool },
}

/// Outputs per work item of a [`RowOp::Gemv`] (one vector accumulator each).
pub(crate) const GEMV_COLS: usize = 8;

/// One row kernel: `rows` rows of `len` contiguous f32s per call of the node.
#[derive(Debug, Clone)]
pub(crate) struct RowKernel {
    /// The LLVM function's symbol.
    pub name: String,
    pub op: RowOp,
    pub rows: usize,
    pub len: usize,
    pub lanes: usize,
    /// Split over the caller's pool (else on the calling thread: too little work).
    pub parallel: bool,
}

/// Parameters: input rows, scale row, bias row, unused, output rows (then the work range).
const ROW_PARAMS: &str =
    "float* noalias %x, float* noalias %sc, float* noalias %bi, float* %u3, float* noalias %o";

impl RowKernel {
    pub fn new(name: String, op: RowOp, rows: usize, len: usize, t: &LlvmTarget) -> RowKernel {
        RowKernel {
            name,
            op,
            rows,
            len,
            lanes: t.lanes,
            parallel: true,
        }
    }

    /// Arithmetic per call (for the decision to split over threads): exp is ~20 operations.
    pub fn work_ops(&self) -> usize {
        let per = match self.op {
            RowOp::Softmax => 24,
            RowOp::LayerNorm { .. } => 8,
            RowOp::Gemv { .. } => 2,
            RowOp::Relayout { .. } => self.lanes,
        };
        self.rows * self.len * per
    }

    /// Work items per call.
    pub fn work(&self) -> usize {
        match self.op {
            RowOp::Gemv { .. } => self.rows.div_ceil(GEMV_COLS),
            _ => self.rows,
        }
    }

    /// LLVM IR of `void name(x, scale, bias, _, out, t0, t1)`: rows `t0..t1`.
    pub fn ir(&self, attrs_group: usize, out: &mut String) {
        if let RowOp::Gemv { bias } = self.op {
            return self.gemv_ir(bias, attrs_group, out);
        }
        if let RowOp::Relayout { to_blocked } = self.op {
            return self.relayout_ir(to_blocked, attrs_group, out);
        }
        let mut e = Emit::new(self.lanes);
        e.items_begin(&self.name, ROW_PARAMS, attrs_group, "t", "row_end");
        e.line(&format!("  %ro = mul i64 %t, {}", self.len));
        e.line("  %xr = getelementptr float, float* %x, i64 %ro");
        e.line("  %or = getelementptr float, float* %o, i64 %ro");
        let rl = RowLoops {
            w: self.lanes,
            len: self.len,
        };
        match &self.op {
            RowOp::Softmax => softmax(&mut e, &rl),
            RowOp::LayerNorm {
                epsilon,
                scale,
                bias,
            } => layer_norm(&mut e, &rl, *epsilon, (*scale, *bias)),
            RowOp::Gemv { .. } | RowOp::Relayout { .. } => unreachable!("own generators"),
        }
        e.line("  br label %row_end");
        e.line("row_end:");
        e.items_end("t");
        out.push_str(&e.s);
    }
}

/// The body of a row loop: `(emit, float offset, tail mask, accumulator) -> new accumulator`.
type VecBody<'a> = dyn FnMut(&mut Emit, &str, Option<&str>, &str) -> String + 'a;

impl RowKernel {
    /// `void name(x, _, _, _, y, t0, t1)`: channel blocks `t0..t1` (each `w * len` floats in
    /// both layouts) from plain to blocked (`to_blocked`) or back, `w` pixels at a time: `w`
    /// vector loads, an in-register transpose, `w` vector stores; the last `len % w` pixels
    /// with masked loads and stores.
    fn relayout_ir(&self, to_blocked: bool, attrs_group: usize, out: &mut String) {
        let (w, len) = (self.lanes, self.len);
        let mut e = Emit::new(w);
        e.items_begin(&self.name, ROW_PARAMS, attrs_group, "t", "item_end");
        e.line(&format!("  %bo = mul i64 %t, {}", w * len));
        e.line("  %xb = getelementptr float, float* %x, i64 %bo");
        e.line("  %ob = getelementptr float, float* %o, i64 %bo");
        // pixels p0 .. p0 + n (n = w, or the tail) of the block
        let chunk = |e: &mut Emit, p0: &str, n: usize| {
            let m = (n < w).then(|| e.lanes_below(0, n));
            let mut rows = Vec::new();
            for i in 0..w {
                // plain: channel i's pixels; blocked: pixel i's channels (only n of them)
                let off = e.tmp();
                if to_blocked {
                    e.line(&format!("  {off} = add i64 {p0}, {}", i * len));
                    rows.push(load(e, "%xb", &off, m.as_deref(), "zeroinitializer"));
                } else if i < n {
                    e.line(&format!("  {off} = mul i64 {p0}, {w}"));
                    let o2 = e.tmp();
                    e.line(&format!("  {o2} = add i64 {off}, {}", i * w));
                    rows.push(load(e, "%xb", &o2, None, "zeroinitializer"));
                } else {
                    e.line(&format!("  {off} = add i64 0, 0"));
                    rows.push("zeroinitializer".into());
                }
            }
            let cols = e.transpose(&rows);
            for (j, c) in cols.iter().enumerate() {
                let off = e.tmp();
                if to_blocked {
                    if j >= n {
                        continue;
                    }
                    e.line(&format!("  {off} = mul i64 {p0}, {w}"));
                    let o2 = e.tmp();
                    e.line(&format!("  {o2} = add i64 {off}, {}", j * w));
                    store(e, c, "%ob", &o2, None);
                } else {
                    e.line(&format!("  {off} = add i64 {p0}, {}", j * len));
                    store(e, c, "%ob", &off, m.as_deref());
                }
            }
        };
        let nv = len / w;
        if nv > 0 {
            e.line("  br label %p_head");
            e.line("p_head:");
            e.line("  %p_i = phi i64 [ 0, %item ], [ %p_n, %p_head ]");
            e.line(&format!("  %p0 = mul i64 %p_i, {w}"));
            chunk(&mut e, "%p0", w);
            e.line("  %p_n = add i64 %p_i, 1");
            e.line(&format!("  %p_c = icmp eq i64 %p_n, {nv}"));
            e.line("  br i1 %p_c, label %p_exit, label %p_head");
            e.line("p_exit:");
        }
        if len % w > 0 {
            chunk(&mut e, &(nv * w).to_string(), len % w);
        }
        e.line("  br label %item_end");
        e.line("item_end:");
        e.items_end("t");
        out.push_str(&e.s);
    }

    /// `void name(x, w, bias, _, y, t0, t1)`: outputs `t * GEMV_COLS ..` for items `t0..t1`.
    /// Rows past `n` read the last row (always valid memory) and are not stored.
    fn gemv_ir(&self, bias: bool, attrs_group: usize, out: &mut String) {
        let (w, k, n, c) = (self.lanes, self.len, self.rows, GEMV_COLS);
        let mut e = Emit::new(w);
        let vt = e.vt.clone();
        e.items_begin(&self.name, ROW_PARAMS, attrs_group, "t", "item_end");
        e.line(&format!("  %n0 = mul i64 %t, {c}"));
        let mut rows = Vec::new();
        for i in 0..c {
            let (ni, ok, nc, ro, rp) = (e.tmp(), e.tmp(), e.tmp(), e.tmp(), e.tmp());
            e.line(&format!("  {ni} = add i64 %n0, {i}"));
            e.line(&format!("  {ok} = icmp ult i64 {ni}, {n}"));
            e.line(&format!("  {nc} = select i1 {ok}, i64 {ni}, i64 {}", n - 1));
            e.line(&format!("  {ro} = mul i64 {nc}, {k}"));
            e.line(&format!(
                "  {rp} = getelementptr float, float* %sc, i64 {ro}"
            ));
            rows.push((ni, ok, rp));
        }
        let nv = k / w;
        let mut accs: Vec<String> = vec!["zeroinitializer".into(); c];
        if nv > 0 {
            e.line("  br label %k_head");
            e.line("k_head:");
            e.line("  %k_i = phi i64 [ 0, %item ], [ %k_n, %k_head ]");
            for (i, a) in accs.iter().enumerate() {
                e.line(&format!(
                    "  %acc{i} = phi {vt} [ {a}, %item ], [ %accn{i}, %k_head ]"
                ));
            }
            let off = e.tmp();
            e.line(&format!("  {off} = mul i64 %k_i, {w}"));
            let xv = load(&mut e, "%x", &off, None, "zeroinitializer");
            for (i, (_, _, rp)) in rows.iter().enumerate() {
                let wv = load(&mut e, rp, &off, None, "zeroinitializer");
                let f = e.fma(&xv, &wv, &format!("%acc{i}"));
                e.line(&format!("  %accn{i} = {}", copy(&vt, &f)));
            }
            e.line("  %k_n = add i64 %k_i, 1");
            e.line(&format!("  %k_c = icmp eq i64 %k_n, {nv}"));
            e.line("  br i1 %k_c, label %k_exit, label %k_head");
            e.line("k_exit:");
            accs = (0..c).map(|i| format!("%accn{i}")).collect();
        }
        if k % w > 0 {
            let m = e.lanes_below(0, k % w);
            let off = (nv * w).to_string();
            let xv = load(&mut e, "%x", &off, Some(&m), "zeroinitializer");
            for (i, (_, _, rp)) in rows.iter().enumerate() {
                let wv = load(&mut e, rp, &off, Some(&m), "zeroinitializer");
                accs[i] = e.fma(&xv, &wv, &accs[i]);
            }
        }
        for (i, (ni, ok, _)) in rows.iter().enumerate() {
            let mut s = hsum(&mut e, &accs[i]);
            if bias {
                let (bp, bv, t) = (e.tmp(), e.tmp(), e.tmp());
                let nc = e.tmp();
                e.line(&format!("  {nc} = select i1 {ok}, i64 {ni}, i64 {}", n - 1));
                e.line(&format!(
                    "  {bp} = getelementptr float, float* %bi, i64 {nc}"
                ));
                e.line(&format!("  {bv} = load float, float* {bp}, align 4"));
                e.line(&format!("  {t} = fadd float {s}, {bv}"));
                s = t;
            }
            e.line(&format!("  br i1 {ok}, label %st{i}, label %sk{i}"));
            e.line(&format!("st{i}:"));
            let op = e.tmp();
            e.line(&format!(
                "  {op} = getelementptr float, float* %o, i64 {ni}"
            ));
            e.line(&format!("  store float {s}, float* {op}, align 4"));
            e.line(&format!("  br label %sk{i}"));
            e.line(&format!("sk{i}:"));
        }
        e.line("  br label %item_end");
        e.line("item_end:");
        e.items_end("t");
        out.push_str(&e.s);
    }
}

/// Loops over one row: `len / w` full vectors, then a masked tail.
struct RowLoops {
    w: usize,
    len: usize,
}

impl RowLoops {
    /// A loop over the row's vectors with one vector accumulator starting at `init`, then the
    /// tail (if any); `body(e, ptr_offset, mask, acc)` returns the new accumulator. Returns
    /// the final accumulator.
    fn fold(&self, e: &mut Emit, tag: &str, init: &str, body: &mut VecBody) -> String {
        let (w, vt) = (self.w, e.vt.clone());
        let nv = self.len / w;
        let mut acc = init.to_string();
        if nv > 0 {
            e.line(&format!("  br label %{tag}_pre"));
            e.line(&format!("{tag}_pre:"));
            e.line(&format!("  br label %{tag}_head"));
            e.line(&format!("{tag}_head:"));
            e.line(&format!(
                "  %{tag}_i = phi i64 [ 0, %{tag}_pre ], [ %{tag}_n, %{tag}_head ]"
            ));
            e.line(&format!(
                "  %{tag}_acc = phi {vt} [ {acc}, %{tag}_pre ], [ %{tag}_accn, %{tag}_head ]"
            ));
            let off = e.tmp();
            e.line(&format!("  {off} = mul i64 %{tag}_i, {w}"));
            let next = body(e, &off, None, &format!("%{tag}_acc"));
            e.line(&format!("  %{tag}_accn = {}", copy(&vt, &next)));
            e.line(&format!("  %{tag}_n = add i64 %{tag}_i, 1"));
            e.line(&format!("  %{tag}_c = icmp eq i64 %{tag}_n, {nv}"));
            e.line(&format!(
                "  br i1 %{tag}_c, label %{tag}_exit, label %{tag}_head"
            ));
            e.line(&format!("{tag}_exit:"));
            acc = format!("%{tag}_accn");
        }
        let tail = self.len % w;
        if tail > 0 {
            let m = e.lanes_below(0, tail);
            let off = (nv * w).to_string();
            acc = body(e, &off, Some(&m), &acc);
        }
        acc
    }
}

/// `%r = <value>` as an instruction (a vector select that always takes `v`).
fn copy(vt: &str, v: &str) -> String {
    format!("select i1 true, {vt} {v}, {vt} {v}")
}

/// Load the vector at float offset `off` of row `base` (masked lanes read `other`).
fn load(e: &mut Emit, base: &str, off: &str, m: Option<&str>, other: &str) -> String {
    let c = e.gep_vec_at(base, off);
    match m {
        Some(m) => e.masked_load_or(&c, m, other),
        None => {
            let vt = e.vt.clone();
            let x = e.tmp();
            e.line(&format!("  {x} = load {vt}, {vt}* {c}, align 4"));
            x
        }
    }
}

fn store(e: &mut Emit, v: &str, base: &str, off: &str, m: Option<&str>) {
    let (w, vt) = (e.w, e.vt.clone());
    let c = e.gep_vec_at(base, off);
    match m {
        Some(m) => e.line(&format!(
            "  call void @llvm.masked.store.v{w}f32.p0v{w}f32({vt} {v}, {vt}* {c}, i32 4, <{w} x i1> {m})"
        )),
        None => e.line(&format!("  store {vt} {v}, {vt}* {c}, align 4")),
    }
}

/// Horizontal sum of a vector (in lane order, like a scalar loop would not: the lanes hold
/// strided partial sums).
fn hsum(e: &mut Emit, v: &str) -> String {
    let (w, vt) = (e.w, e.vt.clone());
    let s = e.tmp();
    e.line(&format!(
        "  {s} = call float @llvm.vector.reduce.fadd.v{w}f32(float 0.0, {vt} {v})"
    ));
    s
}

fn softmax(e: &mut Emit, rl: &RowLoops) {
    let (w, vt) = (rl.w, e.vt.clone());
    let ninf = e.fsplat(f32::NEG_INFINITY);
    // the maximum: only a strictly greater value moves a lane (NaN never does), as Cranelift's
    let mx = rl.fold(e, "mx", &ninf, &mut |e, off, m, acc| {
        let v = load(e, "%xr", off, m, &e.fsplat(f32::NEG_INFINITY));
        e.select("ogt", &v, acc, &v, acc)
    });
    let m = e.tmp();
    e.line(&format!(
        "  {m} = call float @llvm.vector.reduce.fmax.v{w}f32({vt} {mx})"
    ));
    let ms = e.splat(&m);
    // exp(x - max), stored, and summed
    let sum = rl.fold(e, "ex", "zeroinitializer", &mut |e, off, mask, acc| {
        let v = load(e, "%xr", off, mask, "zeroinitializer");
        let d = e.bin("fsub", &v, &ms);
        let x = e.exp(&d);
        store(e, &x, "%or", off, mask);
        let x = match mask {
            Some(mask) => {
                let r = e.tmp();
                e.line(&format!(
                    "  {r} = select <{w} x i1> {mask}, {vt} {x}, {vt} zeroinitializer"
                ));
                r
            }
            None => x,
        };
        e.bin("fadd", acc, &x)
    });
    let s = hsum(e, &sum);
    let ss = e.splat(&s);
    rl.fold(e, "dv", "zeroinitializer", &mut |e, off, mask, acc| {
        let v = load(e, "%or", off, mask, "zeroinitializer");
        let q = e.bin("fdiv", &v, &ss);
        store(e, &q, "%or", off, mask);
        acc.to_string()
    });
}

fn layer_norm(e: &mut Emit, rl: &RowLoops, eps: f32, (scale, bias): (bool, bool)) {
    let (w, vt) = (rl.w, e.vt.clone());
    let n = rl.len as f32;
    let sum = rl.fold(e, "mu", "zeroinitializer", &mut |e, off, m, acc| {
        let v = load(e, "%xr", off, m, "zeroinitializer");
        e.bin("fadd", acc, &v)
    });
    let s = hsum(e, &sum);
    let mean = e.tmp();
    e.line(&format!("  {mean} = fdiv float {s}, {}", fconst(n)));
    let ms = e.splat(&mean);
    // the variance from the centred values (two passes: no cancellation)
    let sq = rl.fold(e, "va", "zeroinitializer", &mut |e, off, m, acc| {
        let v = load(e, "%xr", off, m, "zeroinitializer");
        let d = e.bin("fsub", &v, &ms);
        let d = match m {
            Some(m) => {
                let r = e.tmp();
                e.line(&format!(
                    "  {r} = select <{w} x i1> {m}, {vt} {d}, {vt} zeroinitializer"
                ));
                r
            }
            None => d,
        };
        e.fma(&d, &d, acc)
    });
    let ss = hsum(e, &sq);
    let var = e.tmp();
    e.line(&format!("  {var} = fdiv float {ss}, {}", fconst(n)));
    let ve = e.tmp();
    e.line(&format!("  {ve} = fadd float {var}, {}", fconst(eps)));
    let sd = e.tmp();
    e.line(&format!("  {sd} = call float @llvm.sqrt.f32(float {ve})"));
    let inv = e.tmp();
    e.line(&format!("  {inv} = fdiv float 1.0, {sd}"));
    let is = e.splat(&inv);
    rl.fold(e, "nm", "zeroinitializer", &mut |e, off, m, acc| {
        let v = load(e, "%xr", off, m, "zeroinitializer");
        let d = e.bin("fsub", &v, &ms);
        let mut y = e.bin("fmul", &d, &is);
        if scale {
            let g = load(e, "%sc", off, m, "zeroinitializer");
            y = e.bin("fmul", &y, &g);
        }
        if bias {
            let b = load(e, "%bi", off, m, "zeroinitializer");
            y = e.bin("fadd", &y, &b);
        }
        store(e, &y, "%or", off, m);
        acc.to_string()
    });
}
