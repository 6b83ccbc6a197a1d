//! Row kernels generated as LLVM IR: ops that reduce and rewrite contiguous rows of a tensor
//! (Softmax over the last axis, LayerNorm over the trailing axes). One work item is one row,
//! so a caller splits rows over its pool like the convolution kernels' work items (same C
//! signature: five pointers and the item range). Rows are read with full vectors and one masked
//! tail vector; the reductions keep a vector accumulator and reduce it once per row.

use crate::emit::{Emit, iota, splat_const_i32};
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
}

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
        };
        self.rows * self.len * per
    }

    /// LLVM IR of `void name(x, scale, bias, _, out, t0, t1)`: rows `t0..t1`.
    pub fn ir(&self, attrs_group: usize, out: &mut String) {
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
        }
        e.line("  br label %row_end");
        e.line("row_end:");
        e.items_end("t");
        out.push_str(&e.s);
    }
}

/// The body of a row loop: `(emit, float offset, tail mask, accumulator) -> new accumulator`.
type VecBody<'a> = dyn FnMut(&mut Emit, &str, Option<&str>, &str) -> String + 'a;

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
            let m = e.tmp();
            e.line(&format!(
                "  {m} = icmp slt <{w} x i32> {}, {}",
                iota(w, 0),
                splat_const_i32(w, tail as i64)
            ));
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
    let p = e.tmp();
    e.line(&format!(
        "  {p} = getelementptr float, float* {base}, i64 {off}"
    ));
    let vt = e.vt.clone();
    let c = e.tmp();
    e.line(&format!("  {c} = bitcast float* {p} to {vt}*"));
    match m {
        Some(m) => e.masked_load_or(&c, m, other),
        None => {
            let x = e.tmp();
            e.line(&format!("  {x} = load {vt}, {vt}* {c}, align 4"));
            x
        }
    }
}

fn store(e: &mut Emit, v: &str, base: &str, off: &str, m: Option<&str>) {
    let (w, vt) = (e.w, e.vt.clone());
    let p = e.tmp();
    e.line(&format!(
        "  {p} = getelementptr float, float* {base}, i64 {off}"
    ));
    let c = e.tmp();
    e.line(&format!("  {c} = bitcast float* {p} to {vt}*"));
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
    e.line(&format!("  {mean} = fdiv float {s}, {}", fconst_f(n)));
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
    e.line(&format!("  {var} = fdiv float {ss}, {}", fconst_f(n)));
    let ve = e.tmp();
    e.line(&format!("  {ve} = fadd float {var}, {}", fconst_f(eps)));
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

fn fconst_f(v: f32) -> String {
    crate::emit::fconst(v)
}
