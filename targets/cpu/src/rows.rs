//! Row kernels generated as LLVM IR: ops that reduce and rewrite contiguous rows of a tensor
//! (Softmax over the last axis, LayerNorm over the trailing axes). One work item is one row,
//! so a caller splits rows over its pool like the convolution kernels' work items (same C
//! signature: five pointers and the item range). Rows are read with full vectors and one masked
//! tail vector; the reductions keep a vector accumulator and reduce it once per row.

use kiln_target_llvm::{Emit, LlvmTarget, fconst};

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
    "ptr noalias %x, ptr noalias %sc, ptr noalias %bi, ptr %u3, ptr noalias %o";

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
        e.line("  %xr = getelementptr float, ptr %x, i64 %ro");
        e.line("  %or = getelementptr float, ptr %o, i64 %ro");
        match &self.op {
            RowOp::Softmax => softmax(&mut e, self.len),
            RowOp::LayerNorm {
                epsilon,
                scale,
                bias,
            } => layer_norm(&mut e, self.len, *epsilon, (*scale, *bias)),
            RowOp::Gemv { .. } | RowOp::Relayout { .. } => unreachable!("own generators"),
        }
        e.line("  br label %row_end");
        e.line("row_end:");
        e.items_end("t");
        out.push_str(&e.s);
    }
}

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
        e.line("  %xb = getelementptr float, ptr %x, i64 %bo");
        e.line("  %ob = getelementptr float, ptr %o, i64 %bo");
        // pixels p0 .. p0 + n (n = w, or the tail) of the block
        let chunk = |e: &mut Emit, p0: &str, n: usize| {
            let m = (n < w).then(|| e.lanes_below(0, n));
            let mut rows = Vec::new();
            for i in 0..w {
                // plain: channel i's pixels; blocked: pixel i's channels (only n of them)
                let off = e.tmp();
                if to_blocked {
                    e.line(&format!("  {off} = add i64 {p0}, {}", i * len));
                    rows.push(e.load_at("%xb", &off, m.as_deref(), "zeroinitializer"));
                } else if i < n {
                    e.line(&format!("  {off} = mul i64 {p0}, {w}"));
                    let o2 = e.tmp();
                    e.line(&format!("  {o2} = add i64 {off}, {}", i * w));
                    rows.push(e.load_at("%xb", &o2, None, "zeroinitializer"));
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
                    e.store_at(c, "%ob", &o2, None);
                } else {
                    e.line(&format!("  {off} = add i64 {p0}, {}", j * len));
                    e.store_at(c, "%ob", &off, m.as_deref());
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
            let (ni, ok, nc, ro) = (e.tmp(), e.tmp(), e.tmp(), e.tmp());
            e.line(&format!("  {ni} = add i64 %n0, {i}"));
            e.line(&format!("  {ok} = icmp ult i64 {ni}, {n}"));
            e.line(&format!("  {nc} = select i1 {ok}, i64 {ni}, i64 {}", n - 1));
            e.line(&format!("  {ro} = mul i64 {nc}, {k}"));
            let rp = e.gep("%sc", &ro);
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
            let xv = e.load_at("%x", &off, None, "zeroinitializer");
            for (i, (_, _, rp)) in rows.iter().enumerate() {
                let wv = e.load_at(rp, &off, None, "zeroinitializer");
                let f = e.fma(&xv, &wv, &format!("%acc{i}"));
                e.copy_to(&format!("%accn{i}"), &vt, &f);
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
            let xv = e.load_at("%x", &off, Some(&m), "zeroinitializer");
            for (i, (_, _, rp)) in rows.iter().enumerate() {
                let wv = e.load_at(rp, &off, Some(&m), "zeroinitializer");
                accs[i] = e.fma(&xv, &wv, &accs[i]);
            }
        }
        for (i, (ni, ok, _)) in rows.iter().enumerate() {
            let mut s = e.hsum(&accs[i]);
            if bias {
                let nc = e.tmp();
                e.line(&format!("  {nc} = select i1 {ok}, i64 {ni}, i64 {}", n - 1));
                let bp = e.gep("%bi", &nc);
                let bv = e.load_f32(&bp);
                let t = e.tmp();
                e.line(&format!("  {t} = fadd float {s}, {bv}"));
                s = t;
            }
            e.line(&format!("  br i1 {ok}, label %st{i}, label %sk{i}"));
            e.line(&format!("st{i}:"));
            let op = e.gep("%o", ni);
            e.store_f32(&s, &op);
            e.line(&format!("  br label %sk{i}"));
            e.line(&format!("sk{i}:"));
        }
        e.line("  br label %item_end");
        e.line("item_end:");
        e.items_end("t");
        out.push_str(&e.s);
    }
}

/// Softmax of the row at `%xr` into `%or`: the maximum, `exp(x - max)` stored and summed, the
/// division (each a loop over the row's vectors, then a masked tail).
fn softmax(e: &mut Emit, len: usize) {
    let ninf = e.fsplat(f32::NEG_INFINITY);
    // the maximum: only a strictly greater value moves a lane (NaN never does), as Cranelift's
    let mx = e.fold_row("mx", len, &ninf, &mut |e, off, m, acc| {
        let v = e.load_at("%xr", off, m, &e.fsplat(f32::NEG_INFINITY));
        e.select("ogt", &v, acc, &v, acc)
    });
    let m = e.hmax(&mx);
    let ms = e.splat(&m);
    // exp(x - max), stored, and summed
    let sum = e.fold_row("ex", len, "zeroinitializer", &mut |e, off, mask, acc| {
        let v = e.load_at("%xr", off, mask, "zeroinitializer");
        let d = e.bin("fsub", &v, &ms);
        let x = e.exp(&d);
        e.store_at(&x, "%or", off, mask);
        let x = match mask {
            Some(mask) => e.zero_unless(mask, &x),
            None => x,
        };
        e.bin("fadd", acc, &x)
    });
    let s = e.hsum(&sum);
    let ss = e.splat(&s);
    e.fold_row("dv", len, "zeroinitializer", &mut |e, off, mask, acc| {
        let v = e.load_at("%or", off, mask, "zeroinitializer");
        let q = e.bin("fdiv", &v, &ss);
        e.store_at(&q, "%or", off, mask);
        acc.to_string()
    });
}

fn layer_norm(e: &mut Emit, len: usize, eps: f32, (scale, bias): (bool, bool)) {
    let n = len as f32;
    let sum = e.fold_row("mu", len, "zeroinitializer", &mut |e, off, m, acc| {
        let v = e.load_at("%xr", off, m, "zeroinitializer");
        e.bin("fadd", acc, &v)
    });
    let s = e.hsum(&sum);
    let mean = e.tmp();
    e.line(&format!("  {mean} = fdiv float {s}, {}", fconst(n)));
    let ms = e.splat(&mean);
    // the variance from the centred values (two passes: no cancellation)
    let sq = e.fold_row("va", len, "zeroinitializer", &mut |e, off, m, acc| {
        let v = e.load_at("%xr", off, m, "zeroinitializer");
        let d = e.bin("fsub", &v, &ms);
        let d = match m {
            Some(m) => e.zero_unless(m, &d),
            None => d,
        };
        e.fma(&d, &d, acc)
    });
    let ss = e.hsum(&sq);
    let var = e.tmp();
    e.line(&format!("  {var} = fdiv float {ss}, {}", fconst(n)));
    let ve = e.tmp();
    e.line(&format!("  {ve} = fadd float {var}, {}", fconst(eps)));
    let sd = e.tmp();
    e.line(&format!("  {sd} = call float @llvm.sqrt.f32(float {ve})"));
    let inv = e.tmp();
    e.line(&format!("  {inv} = fdiv float 1.0, {sd}"));
    let is = e.splat(&inv);
    e.fold_row("nm", len, "zeroinitializer", &mut |e, off, m, acc| {
        let v = e.load_at("%xr", off, m, "zeroinitializer");
        let d = e.bin("fsub", &v, &ms);
        let mut y = e.bin("fmul", &d, &is);
        if scale {
            let g = e.load_at("%sc", off, m, "zeroinitializer");
            y = e.bin("fmul", &y, &g);
        }
        if bias {
            let b = e.load_at("%bi", off, m, "zeroinitializer");
            y = e.bin("fadd", &y, &b);
        }
        e.store_at(&y, "%or", off, m);
        acc.to_string()
    });
}
