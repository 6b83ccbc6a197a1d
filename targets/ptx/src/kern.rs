//! The GPU kernels of every op but the dense products (`gemm.rs`): one thread per output
//! element for elementwise ops, data movement, depthwise convolutions and pools; one warp per
//! row (warp shuffles) for reductions, Softmax and LayerNorm. Every shape is a constant in
//! the body. Written with the shared layer's [`Emit`] over scalars (`Emit::new(1)`: the vector
//! math and epilogues on `<1 x float>`).

use kiln_ir::ops::{
    ActKind, BinaryOp, CmpOp, EpilogueStep, LogicOp, PadMode, ReduceKind, ResizeMode, SoftmaxKind,
    UnaryOp,
};
use kiln_ir::{DType, Graph, Node, Op, ValueId};
use kiln_target_llvm::{Emit, GpuKernel, fconst};

/// What a kernel parameter is bound to.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// A value of the graph (its planned storage).
    Val(ValueId),
    /// Bytes computed at compile time (tables, re-laid-out weights), stored with the weights.
    Table(Vec<u8>),
}

/// A kernel and the buffers of its parameters.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub kernel: GpuKernel,
    pub args: Vec<Arg>,
}

/// Threads per block of the one-thread-per-element kernels.
pub(crate) const THREADS: u32 = 256;

pub(crate) fn prod(s: &[usize]) -> usize {
    s.iter().product()
}

pub(crate) fn strides_of(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for d in (0..s.len().saturating_sub(1)).rev() {
        st[d] = st[d + 1] * s[d + 1];
    }
    st
}

/// Strides of `t` read at the coordinates of `out` (multidirectional broadcasting: missing
/// leading dims and size-1 dims read the same element).
pub(crate) fn bcast_strides(t: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides_of(t);
    let r = out.len();
    (0..r)
        .map(|d| {
            if d + t.len() < r {
                0
            } else {
                let k = d + t.len() - r;
                if t[k] == 1 && out[d] != 1 { 0 } else { st[k] }
            }
        })
        .collect()
}

/// The LLVM type of an element (bit-exact storage).
pub(crate) fn lty(d: DType) -> &'static str {
    match d.size() {
        1 => "i8",
        2 => "i16",
        8 if d == DType::F64 => "double",
        8 => "i64",
        _ if d == DType::F32 => "float",
        _ => "i32",
    }
}

/// The integer type of the same width (for copies).
pub(crate) fn ity(d: DType) -> &'static str {
    match d.size() {
        1 => "i8",
        2 => "i16",
        8 => "i64",
        _ => "i32",
    }
}

/// Body text of a kernel: the header, then `e`'s lines, then `ret`.
pub(crate) struct Body {
    pub e: Emit,
}

impl Body {
    pub fn new(name: &str, params: &[String]) -> Body {
        let mut e = Emit::new(1);
        e.line(&GpuKernel::body_header(name, params));
        Body { e }
    }
    pub fn finish(mut self) -> String {
        self.e.line("  br label %exit");
        self.e.line("exit:");
        self.e.line("  ret void");
        self.e.function_end();
        self.e.s
    }
}

/// `i64` constant text.
pub(crate) fn c64(v: i64) -> String {
    v.to_string()
}

impl Body {
    /// `%tid` and the block index as `i64`s, and the global index `bx * threads + tid`.
    pub fn gid(&mut self, threads: u32) -> String {
        let e = &mut self.e;
        let t = e.tmp();
        e.line(&format!("  {t} = zext i32 %tid to i64"));
        let b = e.tmp();
        e.line(&format!("  {b} = zext i32 %bx to i64"));
        let bb = e.iop("mul", "i64", &b, &threads.to_string());
        e.iop("add", "i64", &bb, &t)
    }
    /// Leave the kernel (to `exit`) unless `cond` holds; continues in a fresh block.
    pub fn guard(&mut self, cond: &str) {
        let l = self.e.label();
        self.e
            .line(&format!("  br i1 {cond}, label %{l}_in, label %exit"));
        self.e.line(&format!("{l}_in:"));
    }
    /// The coordinates of the row-major linear index `lin` (i64) over `shape` (`"0"` for
    /// dims of size 1).
    pub fn coords(&mut self, lin: &str, shape: &[usize]) -> Vec<String> {
        let mut out = vec![String::from("0"); shape.len()];
        let mut rest = lin.to_string();
        for d in (0..shape.len()).rev() {
            let n = shape[d];
            if n == 1 {
                continue;
            }
            if d == 0 {
                out[d] = rest.clone();
                break;
            }
            out[d] = self.e.iop("urem", "i64", &rest, &n.to_string());
            rest = self.e.iop("udiv", "i64", &rest, &n.to_string());
        }
        out
    }
    /// `base + sum c[i] * s[i]` (i64; constant terms folded).
    pub fn affine(&mut self, c: &[String], s: &[i64], base: i64) -> String {
        let mut acc: Option<String> = None;
        for (ci, &si) in c.iter().zip(s) {
            if si == 0 || ci == "0" {
                continue;
            }
            let t = if si == 1 {
                ci.clone()
            } else {
                self.e.iop("mul", "i64", ci, &si.to_string())
            };
            acc = Some(match acc {
                None => t,
                Some(a) => self.e.iop("add", "i64", &a, &t),
            });
        }
        match acc {
            None => c64(base),
            Some(a) if base == 0 => a,
            Some(a) => self.e.iop("add", "i64", &a, &base.to_string()),
        }
    }
    /// Load element `idx` (i64) of type `ty` of pointer `p`.
    pub fn ld(&mut self, ty: &str, p: &str, idx: &str) -> String {
        let a = self.e.gep_ty(ty, p, idx);
        let al = ty_align(ty);
        self.e.load_ty(ty, &a, al)
    }
    pub fn st(&mut self, ty: &str, v: &str, p: &str, idx: &str) {
        let a = self.e.gep_ty(ty, p, idx);
        let al = ty_align(ty);
        self.e.store_ty(ty, v, &a, al);
    }
    /// `cond ? a : b` on `ty`.
    pub fn sel(&mut self, ty: &str, cond: &str, a: &str, b: &str) -> String {
        let r = self.e.tmp();
        self.e
            .line(&format!("  {r} = select i1 {cond}, {ty} {a}, {ty} {b}"));
        r
    }
    pub fn icmp(&mut self, cc: &str, ty: &str, a: &str, b: &str) -> String {
        let r = self.e.tmp();
        self.e.line(&format!("  {r} = icmp {cc} {ty} {a}, {b}"));
        r
    }
    pub fn fcmp(&mut self, cc: &str, a: &str, b: &str) -> String {
        let r = self.e.tmp();
        self.e.line(&format!("  {r} = fcmp {cc} float {a}, {b}"));
        r
    }
    pub fn and(&mut self, a: &str, b: &str) -> String {
        self.e.iop("and", "i1", a, b)
    }
}

fn ty_align(ty: &str) -> usize {
    match ty {
        "i8" => 1,
        "i16" => 2,
        "i64" | "double" => 8,
        _ => 4,
    }
}

/// A one-thread-per-element kernel over `shape`; `f(body, coords, linear index)` writes the
/// element's code.
pub(crate) fn map_kernel(
    name: &str,
    params: Vec<String>,
    shape: &[usize],
    f: impl FnOnce(&mut Body, &[String], &str) -> Result<(), String>,
) -> Result<GpuKernel, String> {
    let n = prod(shape).max(1);
    let blocks = n.div_ceil(THREADS as usize);
    if blocks > i32::MAX as usize {
        return Err(format!("{n} elements are too many for one grid"));
    }
    let mut b = Body::new(name, &params);
    let gid = b.gid(THREADS);
    let inb = b.icmp("ult", "i64", &gid, &n.to_string());
    b.guard(&inb);
    let c = b.coords(&gid, shape);
    f(&mut b, &c, &gid)?;
    Ok(GpuKernel {
        name: name.into(),
        params,
        threads: THREADS,
        grid: [blocks as u32, 1, 1],
        smem: 0,
        sync: false,
        body: b.finish(),
    })
}

// ---------------------------------------------------------------- scalar arithmetic (f32)

/// `f` of the vector math on a scalar.
fn v1(b: &mut Body, x: &str, f: impl FnOnce(&mut Emit, &str) -> String) -> String {
    let v = b.e.to_v1(x);
    let r = f(&mut b.e, &v);
    b.e.from_v1(&r)
}

fn fc(v: f32) -> String {
    fconst(v)
}

fn call_f(b: &mut Body, f: &str, x: &str) -> String {
    let r = b.e.tmp();
    b.e.line(&format!("  {r} = call float @llvm.{f}.f32(float {x})"));
    r
}

/// `ln x` (the shared layer's vector log).
fn log_f(b: &mut Body, x: &str) -> String {
    v1(b, x, |e, v| e.log(v))
}

fn exp_f(b: &mut Body, x: &str) -> String {
    v1(b, x, |e, v| e.exp(v))
}

/// A unary op on f32, in the arithmetic of the CPU's `ew.rs` where it has a vector form.
pub(crate) fn unary_f32(b: &mut Body, u: UnaryOp, x: &str) -> Option<String> {
    if kiln_target_llvm::step_supported(&EpilogueStep::Unary(u)) {
        return Some(v1(b, x, |e, v| {
            e.epilogue(&[EpilogueStep::Unary(u)], v, &[])
        }));
    }
    Some(match u {
        UnaryOp::Exp => exp_f(b, x),
        UnaryOp::Log => log_f(b, x),
        UnaryOp::Erf => v1(b, x, |e, v| e.erf(v)),
        UnaryOp::Sqrt => call_f(b, "sqrt", x),
        UnaryOp::Neg => b.e.sop("fsub", "-0.0", x),
        UnaryOp::Abs => call_f(b, "fabs", x),
        UnaryOp::Reciprocal => b.e.sop("fdiv", "1.0", x),
        UnaryOp::Floor => call_f(b, "floor", x),
        UnaryOp::Ceil => call_f(b, "ceil", x),
        UnaryOp::Round => call_f(b, "roundeven", x),
        UnaryOp::Sign => {
            let pos = b.fcmp("ogt", x, "0.0");
            let neg = b.fcmp("olt", x, "0.0");
            let s = b.sel("float", &neg, "-1.0", x);
            let s = b.sel("float", &pos, "1.0", &s);
            // zero (and NaN) stay
            s
        }
        UnaryOp::Softplus => {
            // ln(1 + e^x), and x itself where e^x overflows the sum's precision
            let ex = exp_f(b, x);
            let s = b.e.sop("fadd", &ex, "1.0");
            let l = log_f(b, &s);
            let big = b.fcmp("ogt", x, &fc(20.0));
            b.sel("float", &big, x, &l)
        }
        UnaryOp::Softsign => {
            let a = call_f(b, "fabs", x);
            let d = b.e.sop("fadd", &a, "1.0");
            b.e.sop("fdiv", x, &d)
        }
        _ => return None,
    })
}

/// A binary op on f32.
pub(crate) fn binary_f32(b: &mut Body, op: BinaryOp, x: &str, y: &str) -> Option<String> {
    Some(match op {
        BinaryOp::Add => b.e.sop("fadd", x, y),
        BinaryOp::Sub => b.e.sop("fsub", x, y),
        BinaryOp::Mul => b.e.sop("fmul", x, y),
        BinaryOp::Div => b.e.sop("fdiv", x, y),
        BinaryOp::Max | BinaryOp::Min => {
            // NaN propagates (ONNX Max/Min)
            let (cc, pick) = if op == BinaryOp::Max {
                ("ogt", "fmax")
            } else {
                ("olt", "fmin")
            };
            let _ = pick;
            let c = b.fcmp(cc, x, y);
            let r = b.sel("float", &c, x, y);
            let nx = b.fcmp("uno", x, x);
            b.sel("float", &nx, x, &r)
        }
        BinaryOp::PRelu => {
            let neg = b.fcmp("olt", x, "0.0");
            let m = b.e.sop("fmul", x, y);
            b.sel("float", &neg, &m, x)
        }
        BinaryOp::Pow => {
            // x^y: e^(y ln|x|), the sign of an odd integer power, 1 for y = 0, NaN for a
            // negative base with a fractional exponent
            let ax = call_f(b, "fabs", x);
            let l = log_f(b, &ax);
            let p = b.e.sop("fmul", y, &l);
            let r = exp_f(b, &p);
            let yi = call_f(b, "trunc", y);
            let is_int = b.fcmp("oeq", &yi, y);
            let half = b.e.sop("fmul", y, "0.5");
            let hi = call_f(b, "trunc", &half);
            let even = b.fcmp("oeq", &hi, &half);
            let neg = b.fcmp("olt", x, "0.0");
            let nr = b.e.sop("fsub", "-0.0", &r);
            let odd = b.e.iop("xor", "i1", &even, "true");
            let flip = b.and(&neg, &odd);
            let r = b.sel("float", &flip, &nr, &r);
            let notint = b.e.iop("xor", "i1", &is_int, "true");
            let nan_case = b.and(&neg, &notint);
            let r = b.sel("float", &nan_case, "0x7FF8000000000000", &r);
            let y0 = b.fcmp("oeq", y, "0.0");
            b.sel("float", &y0, "1.0", &r)
        }
        _ => return None,
    })
}

/// One step of a chain or epilogue on f32 (`operand` for `add`/`mul`).
pub(crate) fn step_f32(
    b: &mut Body,
    s: &EpilogueStep,
    x: &str,
    operand: Option<&str>,
) -> Option<String> {
    Some(match s {
        EpilogueStep::Add => b.e.sop("fadd", x, operand?),
        EpilogueStep::Mul => b.e.sop("fmul", x, operand?),
        EpilogueStep::Unary(u) => unary_f32(b, *u, x)?,
        s if kiln_target_llvm::step_supported(s) => {
            v1(b, x, |e, v| e.epilogue(std::slice::from_ref(s), v, &[]))
        }
        EpilogueStep::Act { kind, alpha, beta } => act_f32(b, *kind, *alpha, *beta, x)?,
        _ => return None,
    })
}

/// Whether every step has a GPU lowering.
pub(crate) fn steps_supported(steps: &[EpilogueStep]) -> bool {
    steps.iter().all(|s| match s {
        EpilogueStep::Add | EpilogueStep::Mul => true,
        EpilogueStep::Unary(u) => unary_ok(*u),
        EpilogueStep::Clip { .. } => true,
        EpilogueStep::Act { kind, .. } => act_ok(*kind),
    })
}

fn unary_ok(u: UnaryOp) -> bool {
    kiln_target_llvm::step_supported(&EpilogueStep::Unary(u))
        || matches!(
            u,
            UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Erf
                | UnaryOp::Sqrt
                | UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Reciprocal
                | UnaryOp::Floor
                | UnaryOp::Ceil
                | UnaryOp::Round
                | UnaryOp::Sign
                | UnaryOp::Softplus
                | UnaryOp::Softsign
        )
}

fn act_ok(k: ActKind) -> bool {
    matches!(
        k,
        ActKind::HardSigmoid
            | ActKind::LeakyRelu
            | ActKind::Affine
            | ActKind::Swish
            | ActKind::Elu
            | ActKind::ThresholdedRelu
    )
}

fn act_f32(b: &mut Body, k: ActKind, alpha: f32, beta: f32, x: &str) -> Option<String> {
    let step = EpilogueStep::Act {
        kind: k,
        alpha,
        beta,
    };
    if kiln_target_llvm::step_supported(&step) {
        return Some(v1(b, x, |e, v| e.epilogue(&[step], v, &[])));
    }
    Some(match k {
        ActKind::Elu => {
            // alpha (e^x - 1) below 0
            let ex = exp_f(b, x);
            let m = b.e.sop("fsub", &ex, "1.0");
            let m = b.e.sop("fmul", &m, &fc(alpha));
            let neg = b.fcmp("olt", x, "0.0");
            b.sel("float", &neg, &m, x)
        }
        ActKind::ThresholdedRelu => {
            let c = b.fcmp("ogt", x, &fc(alpha));
            b.sel("float", &c, x, "0.0")
        }
        _ => return None,
    })
}

// ------------------------------------------------------------------- elementwise ops

fn f32_all(g: &Graph, n: &Node) -> bool {
    n.inputs
        .iter()
        .chain(&n.outputs)
        .all(|&v| g.ty(v).dtype == DType::F32)
}

/// Elementwise ops (broadcasting): Unary, Binary, Clip, Act, Chain, Cast, Compare, Logical,
/// Not, Where, IsNaN, IsInf, BatchNorm.
pub(crate) fn elementwise(g: &Graph, n: &Node, name: &str) -> Result<Vec<Launch>, String> {
    let out = g.ty(n.outputs[0]);
    let oshape = out.shape.clone();
    let ins: Vec<(DType, Vec<i64>)> = n
        .inputs
        .iter()
        .map(|&v| {
            let t = g.ty(v);
            (
                t.dtype,
                bcast_strides(&t.shape, &oshape)
                    .iter()
                    .map(|&s| s as i64)
                    .collect(),
            )
        })
        .collect();
    let np = n.inputs.len();
    let mut params = vec![String::new(); np + 1];
    for p in params.iter_mut().take(np) {
        *p = "readonly".into();
    }
    let od = out.dtype;
    let op = n.op.clone();
    let f32s = f32_all(g, n);
    let k = map_kernel(name, params, &oshape, |b, c, gid| {
        let mut xs = Vec::new();
        for (i, (d, st)) in ins.iter().enumerate() {
            let idx = b.affine(c, st, 0);
            xs.push(b.ld(lty(*d), &format!("%p{i}"), &idx));
        }
        let unsup = || format!("no GPU kernel for this dtype combination ({})", od.name());
        let r = match &op {
            Op::Unary(u) if f32s => unary_f32(b, *u, &xs[0]).ok_or_else(unsup)?,
            Op::Binary(o) if f32s => binary_f32(b, *o, &xs[0], &xs[1]).ok_or_else(unsup)?,
            Op::Binary(o) if matches!(od, DType::I32 | DType::I64) => {
                let t = lty(od);
                let inst = match o {
                    BinaryOp::Add => "add",
                    BinaryOp::Sub => "sub",
                    BinaryOp::Mul => "mul",
                    BinaryOp::BitAnd => "and",
                    BinaryOp::BitOr => "or",
                    BinaryOp::BitXor => "xor",
                    BinaryOp::Max | BinaryOp::Min => {
                        let cc = if *o == BinaryOp::Max { "sgt" } else { "slt" };
                        let c = b.icmp(cc, t, &xs[0], &xs[1]);
                        let r = b.sel(t, &c, &xs[0], &xs[1]);
                        b.st(lty(od), &r, &format!("%p{np}"), gid);
                        return Ok(());
                    }
                    _ => return Err(unsup()),
                };
                b.e.iop(inst, t, &xs[0], &xs[1])
            }
            Op::Clip { min, max } if f32s => v1(b, &xs[0], |e, v| {
                e.epilogue(
                    &[EpilogueStep::Clip {
                        min: *min,
                        max: *max,
                    }],
                    v,
                    &[],
                )
            }),
            Op::Act { kind, alpha, beta } if f32s => {
                act_f32(b, *kind, *alpha, *beta, &xs[0]).ok_or_else(unsup)?
            }
            Op::Chain { steps } if f32s => {
                let mut x = xs[0].clone();
                let mut next = 1;
                for s in steps {
                    let opd = if matches!(s, EpilogueStep::Add | EpilogueStep::Mul) {
                        next += 1;
                        Some(xs[next - 1].clone())
                    } else {
                        None
                    };
                    x = step_f32(b, s, &x, opd.as_deref()).ok_or_else(unsup)?;
                }
                x
            }
            Op::BatchNorm { epsilon } if f32s => {
                // (x - mean) / sqrt(var + eps) * scale + bias, as the interpreter
                let d = b.e.sop("fsub", &xs[0], &xs[3]);
                let v = b.e.sop("fadd", &xs[4], &fc(*epsilon));
                let s = call_f(b, "sqrt", &v);
                let q = b.e.sop("fdiv", &d, &s);
                let m = b.e.sop("fmul", &q, &xs[1]);
                b.e.sop("fadd", &m, &xs[2])
            }
            Op::Cast { to } => cast(b, ins[0].0, *to, &xs[0]).ok_or_else(unsup)?,
            Op::Compare(cmp) => {
                let d = ins[0].0;
                let c = if d == DType::F32 {
                    let cc = match cmp {
                        CmpOp::Equal => "oeq",
                        CmpOp::Less => "olt",
                        CmpOp::Greater => "ogt",
                        CmpOp::LessOrEqual => "ole",
                        CmpOp::GreaterOrEqual => "oge",
                    };
                    b.fcmp(cc, &xs[0], &xs[1])
                } else if matches!(d, DType::I32 | DType::I64 | DType::I8 | DType::I16) {
                    let cc = match cmp {
                        CmpOp::Equal => "eq",
                        CmpOp::Less => "slt",
                        CmpOp::Greater => "sgt",
                        CmpOp::LessOrEqual => "sle",
                        CmpOp::GreaterOrEqual => "sge",
                    };
                    b.icmp(cc, lty(d), &xs[0], &xs[1])
                } else {
                    return Err(unsup());
                };
                zext_bool(b, &c)
            }
            Op::Logical(l) => {
                let i = match l {
                    LogicOp::And => "and",
                    LogicOp::Or => "or",
                    LogicOp::Xor => "xor",
                };
                let a = b.icmp("ne", "i8", &xs[0], "0");
                let c = b.icmp("ne", "i8", &xs[1], "0");
                let r = b.e.iop(i, "i1", &a, &c);
                zext_bool(b, &r)
            }
            Op::Not => {
                let a = b.icmp("eq", "i8", &xs[0], "0");
                zext_bool(b, &a)
            }
            Op::Where => {
                let c = b.icmp("ne", "i8", &xs[0], "0");
                b.sel(lty(od), &c, &xs[1], &xs[2])
            }
            Op::IsNaN if ins[0].0 == DType::F32 => {
                let c = b.fcmp("uno", &xs[0], &xs[0]);
                zext_bool(b, &c)
            }
            Op::IsInf { pos, neg } if ins[0].0 == DType::F32 => {
                let p = b.fcmp("oeq", &xs[0], "0x7FF0000000000000");
                let m = b.fcmp("oeq", &xs[0], "0xFFF0000000000000");
                let r = match (pos, neg) {
                    (true, true) => b.e.iop("or", "i1", &p, &m),
                    (true, false) => p,
                    (false, true) => m,
                    (false, false) => "false".into(),
                };
                zext_bool(b, &r)
            }
            _ => return Err(unsup()),
        };
        b.st(lty(od), &r, &format!("%p{np}"), gid);
        Ok(())
    })?;
    let mut args: Vec<Arg> = n.inputs.iter().map(|&v| Arg::Val(v)).collect();
    args.push(Arg::Val(n.outputs[0]));
    Ok(vec![Launch { kernel: k, args }])
}

fn zext_bool(b: &mut Body, c: &str) -> String {
    let r = b.e.tmp();
    b.e.line(&format!("  {r} = zext i1 {c} to i8"));
    r
}

/// Casts between f32, f64, the integers and bool (f32 -> integer truncates toward zero and
/// saturates, NaN -> 0, as the CPU back end).
fn cast(b: &mut Body, from: DType, to: DType, x: &str) -> Option<String> {
    use DType::*;
    let int = |d: DType| matches!(d, I8 | I16 | I32 | I64 | U8 | U16 | U32 | U64);
    let signed = |d: DType| matches!(d, I8 | I16 | I32 | I64);
    let (ft, tt) = (lty(from), lty(to));
    let r = b.e.tmp();
    match (from, to) {
        (a, c) if a == c => return Some(x.to_string()),
        (F32, F64) => b.e.line(&format!("  {r} = fpext float {x} to double")),
        (F64, F32) => b.e.line(&format!("  {r} = fptrunc double {x} to float")),
        (a, Bool) if int(a) => {
            let c = b.icmp("ne", ft, x, "0");
            return Some(zext_bool(b, &c));
        }
        (F32, Bool) => {
            let c = b.fcmp("une", x, "0.0");
            return Some(zext_bool(b, &c));
        }
        (Bool, c) if int(c) => b.e.line(&format!("  {r} = zext i8 {x} to {tt}")),
        (Bool, F32) => b.e.line(&format!("  {r} = uitofp i8 {x} to float")),
        (a, c) if int(a) && int(c) => {
            let (wa, wc) = (a.size(), c.size());
            if wa == wc {
                return Some(x.to_string());
            } else if wa > wc {
                b.e.line(&format!("  {r} = trunc {ft} {x} to {tt}"));
            } else if signed(a) {
                b.e.line(&format!("  {r} = sext {ft} {x} to {tt}"));
            } else {
                b.e.line(&format!("  {r} = zext {ft} {x} to {tt}"));
            }
        }
        (a, F32) if int(a) => {
            let i = if signed(a) { "sitofp" } else { "uitofp" };
            b.e.line(&format!("  {r} = {i} {ft} {x} to float"));
        }
        (F32, c) if int(c) => {
            // saturating, NaN -> 0
            let i = if signed(c) { "fptosi" } else { "fptoui" };
            let _ = i;
            let f = if signed(c) {
                "llvm.fptosi.sat"
            } else {
                "llvm.fptoui.sat"
            };
            b.e.line(&format!("  {r} = call {tt} @{f}.{tt}.f32(float {x})"));
        }
        _ => return None,
    }
    Some(r)
}

/// The saturating conversions [`cast`] calls.
pub(crate) const CAST_DECLS: &str = "declare i8 @llvm.fptosi.sat.i8.f32(float)\n\
declare i16 @llvm.fptosi.sat.i16.f32(float)\n\
declare i32 @llvm.fptosi.sat.i32.f32(float)\n\
declare i64 @llvm.fptosi.sat.i64.f32(float)\n\
declare i8 @llvm.fptoui.sat.i8.f32(float)\n\
declare i16 @llvm.fptoui.sat.i16.f32(float)\n\
declare i32 @llvm.fptoui.sat.i32.f32(float)\n\
declare i64 @llvm.fptoui.sat.i64.f32(float)\n";

/// Whether [`elementwise`] has a kernel for `n`.
pub(crate) fn elementwise_ok(g: &Graph, n: &Node) -> bool {
    let f32s = f32_all(g, n);
    let od = g.ty(n.outputs[0]).dtype;
    let d0 = g.ty(n.inputs[0]).dtype;
    match &n.op {
        Op::Unary(u) => f32s && unary_ok(*u),
        Op::Binary(o) if f32s => matches!(
            o,
            BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Mul
                | BinaryOp::Div
                | BinaryOp::Max
                | BinaryOp::Min
                | BinaryOp::PRelu
                | BinaryOp::Pow
        ),
        Op::Binary(o) => {
            matches!(od, DType::I32 | DType::I64)
                && matches!(
                    o,
                    BinaryOp::Add
                        | BinaryOp::Sub
                        | BinaryOp::Mul
                        | BinaryOp::BitAnd
                        | BinaryOp::BitOr
                        | BinaryOp::BitXor
                        | BinaryOp::Max
                        | BinaryOp::Min
                )
        }
        Op::Clip { .. } | Op::BatchNorm { .. } => f32s,
        Op::Act { kind, .. } => f32s && act_ok(*kind),
        Op::Chain { steps } => f32s && steps_supported(steps),
        Op::Cast { to } => {
            use DType::*;
            let ok = |d: DType| {
                matches!(
                    d,
                    F32 | F64 | I8 | I16 | I32 | I64 | U8 | U16 | U32 | U64 | Bool
                )
            };
            ok(d0)
                && ok(*to)
                && !(d0 == F64 && *to != F32 && *to != F64)
                && !(*to == F64 && d0 != F32)
        }
        Op::Compare(_) => matches!(
            d0,
            DType::F32 | DType::I32 | DType::I64 | DType::I8 | DType::I16
        ),
        Op::Logical(_) | Op::Not => true,
        Op::Where => true,
        Op::IsNaN | Op::IsInf { .. } => d0 == DType::F32,
        _ => false,
    }
}

// ------------------------------------------------------------------------ data movement

/// How one output dimension's coordinate maps to the source's.
#[derive(Debug, Clone)]
enum DimMap {
    /// `src = dst * step + off`, valid when `0 <= src < len` (else the fill).
    Affine { step: i64, off: i64, len: i64 },
    /// Pad modes other than constant: `dst - pad` brought inside `0..len`.
    Fold { mode: PadMode, pad: i64, len: i64 },
}

/// A copy kernel: `out[c] = src[map(c)]` (or `fill` where a coordinate falls outside), over
/// `oshape`, the source with strides `sstrides` (elements) and `base`, the destination with
/// strides `ostrides` and base `obase`.
#[allow(clippy::too_many_arguments)]
fn copy_kernel(
    name: &str,
    d: DType,
    oshape: &[usize],
    maps: Vec<DimMap>,
    sstrides: Vec<i64>,
    ostrides: Vec<i64>,
    obase: i64,
    fill: Option<f64>,
) -> Result<GpuKernel, String> {
    let t = ity(d);
    let fillv = match fill {
        Some(v) => fill_bits(d, v)?,
        None => "0".into(),
    };
    map_kernel(
        name,
        vec!["readonly".into(), String::new()],
        oshape,
        |b, c, _| {
            let mut valid: Option<String> = None;
            let mut sc = Vec::new();
            for (ci, m) in c.iter().zip(&maps) {
                match m {
                    DimMap::Affine { step, off, len } => {
                        let s = if *step == 1 && *off == 0 {
                            ci.clone()
                        } else {
                            let m = if *step == 1 {
                                ci.clone()
                            } else {
                                b.e.iop("mul", "i64", ci, &step.to_string())
                            };
                            b.e.iop("add", "i64", &m, &off.to_string())
                        };
                        let needs = !(*step >= 0 && *off >= 0) || fill.is_some();
                        if needs {
                            let lo = b.icmp("sge", "i64", &s, "0");
                            let hi = b.icmp("slt", "i64", &s, &len.to_string());
                            let ok = b.and(&lo, &hi);
                            valid = Some(match valid {
                                None => ok,
                                Some(v) => b.and(&v, &ok),
                            });
                            sc.push(b.sel("i64", &valid.clone().unwrap(), &s, "0"));
                        } else {
                            sc.push(s);
                        }
                    }
                    DimMap::Fold { mode, pad, len } => {
                        let s = b.e.iop("sub", "i64", ci, &pad.to_string());
                        sc.push(fold(b, *mode, &s, *len));
                    }
                }
            }
            let si = b.affine(&sc, &sstrides, 0);
            let v = b.ld(t, "%p0", &si);
            let v = match &valid {
                Some(ok) => b.sel(t, ok, &v, &fillv),
                None => v,
            };
            let oi = b.affine(c, &ostrides, obase);
            b.st(t, &v, "%p1", &oi);
            Ok(())
        },
    )
}

/// `s` (which may lie outside `0..len`) folded inside by a pad mode.
fn fold(b: &mut Body, mode: PadMode, s: &str, len: i64) -> String {
    match mode {
        PadMode::Edge | PadMode::Constant => {
            let lo = b.icmp("slt", "i64", s, "0");
            let s1 = b.sel("i64", &lo, "0", s);
            let hi = b.icmp("sge", "i64", &s1, &len.to_string());
            b.sel("i64", &hi, &(len - 1).to_string(), &s1)
        }
        PadMode::Wrap => {
            let r = b.e.iop("srem", "i64", s, &len.to_string());
            let neg = b.icmp("slt", "i64", &r, "0");
            let a = b.e.iop("add", "i64", &r, &len.to_string());
            b.sel("i64", &neg, &a, &r)
        }
        PadMode::Reflect => {
            if len == 1 {
                return "0".into();
            }
            // period 2 (len - 1): t = |s| mod p, then p - t past len - 1
            let p = 2 * (len - 1);
            let neg = b.icmp("slt", "i64", s, "0");
            let ns = b.e.iop("sub", "i64", "0", s);
            let a = b.sel("i64", &neg, &ns, s);
            let t = b.e.iop("urem", "i64", &a, &p.to_string());
            let hi = b.icmp("sge", "i64", &t, &len.to_string());
            let r = b.e.iop("sub", "i64", &p.to_string(), &t);
            b.sel("i64", &hi, &r, &t)
        }
    }
}

fn fill_bits(d: DType, v: f64) -> Result<String, String> {
    Ok(match d {
        DType::F32 => ((v as f32).to_bits() as i32).to_string(),
        DType::F64 => (v.to_bits() as i64).to_string(),
        DType::F16 => (half_bits(v) as i16).to_string(),
        DType::Bool => ((v != 0.0) as i8).to_string(),
        d if d.size() == 1 => (v as i64 as i8).to_string(),
        d if d.size() == 2 => (v as i64 as i16).to_string(),
        d if d.size() == 4 => (v as i64 as i32).to_string(),
        _ => (v as i64).to_string(),
    })
}

fn half_bits(v: f64) -> u16 {
    // round-to-nearest f16 of finite values in range (pad fills)
    let f = v as f32;
    let b = f.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if f == 0.0 {
        return sign;
    }
    if exp >= 31 {
        return sign | 0x7c00;
    }
    if exp <= 0 {
        return sign;
    }
    let m = (b >> 13) & 0x3ff;
    sign | ((exp as u16) << 10) | m as u16
}

/// Data movement: Transpose, Expand, Slice, Concat, Split, Pad, Relayout between plain
/// layouts. One copy kernel per output (per input part for Concat).
pub(crate) fn movement(g: &Graph, n: &Node, name: &str) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let d = x.dtype;
    let ish = x.shape.clone();
    let ist: Vec<i64> = strides_of(&ish).iter().map(|&s| s as i64).collect();
    let one = |shape: &[usize], maps, sst, fill| -> Result<Vec<Launch>, String> {
        let o = n.outputs[0];
        let ost = strides_of(shape).iter().map(|&s| s as i64).collect();
        let k = copy_kernel(name, d, shape, maps, sst, ost, 0, fill)?;
        Ok(vec![Launch {
            kernel: k,
            args: vec![Arg::Val(n.inputs[0]), Arg::Val(o)],
        }])
    };
    let ident = |shape: &[usize]| -> Vec<DimMap> {
        shape
            .iter()
            .map(|&l| DimMap::Affine {
                step: 1,
                off: 0,
                len: l as i64,
            })
            .collect()
    };
    match &n.op {
        Op::Transpose { perm } => {
            let osh = g.ty(n.outputs[0]).shape.clone();
            let sst: Vec<i64> = perm.iter().map(|&p| ist[p]).collect();
            one(&osh, ident(&osh), sst, None)
        }
        Op::Relayout { .. } if x.layout.is_plain() && g.ty(n.outputs[0]).layout.is_plain() => {
            one(&ish, ident(&ish), ist, None)
        }
        Op::Expand { .. } => {
            let osh = g.ty(n.outputs[0]).shape.clone();
            let sst = bcast_strides(&ish, &osh)
                .iter()
                .map(|&s| s as i64)
                .collect();
            one(&osh, ident(&osh), sst, None)
        }
        Op::Slice(a) => {
            let osh = g.ty(n.outputs[0]).shape.clone();
            let maps = (0..osh.len())
                .map(|i| DimMap::Affine {
                    step: a.steps[i],
                    off: a.starts[i] as i64,
                    len: ish[i] as i64,
                })
                .collect();
            one(&osh, maps, ist, None)
        }
        Op::Pad { pads, mode, value } => {
            let osh = g.ty(n.outputs[0]).shape.clone();
            let r = osh.len();
            let maps = (0..r)
                .map(|i| match mode {
                    PadMode::Constant => DimMap::Affine {
                        step: 1,
                        off: -pads[i],
                        len: ish[i] as i64,
                    },
                    m => DimMap::Fold {
                        mode: *m,
                        pad: pads[i],
                        len: ish[i] as i64,
                    },
                })
                .collect();
            let fill = (*mode == PadMode::Constant).then_some(*value);
            one(&osh, maps, ist, fill)
        }
        Op::Concat { axis } => {
            let osh = g.ty(n.outputs[0]).shape.clone();
            let ost: Vec<i64> = strides_of(&osh).iter().map(|&s| s as i64).collect();
            let mut at = 0usize;
            let mut ls = Vec::new();
            for (i, &v) in n.inputs.iter().enumerate() {
                let sh = g.ty(v).shape.clone();
                let len = sh[*axis];
                if prod(&sh) > 0 {
                    let sst = strides_of(&sh).iter().map(|&s| s as i64).collect();
                    let k = copy_kernel(
                        &format!("{name}_{i}"),
                        d,
                        &sh,
                        ident(&sh),
                        sst,
                        ost.clone(),
                        at as i64 * ost[*axis],
                        None,
                    )?;
                    ls.push(Launch {
                        kernel: k,
                        args: vec![Arg::Val(v), Arg::Val(n.outputs[0])],
                    });
                }
                at += len;
            }
            Ok(ls)
        }
        Op::Split { axis, sizes } => {
            let mut at = 0usize;
            let mut ls = Vec::new();
            for (i, (&o, &len)) in n.outputs.iter().zip(sizes).enumerate() {
                let osh = g.ty(o).shape.clone();
                if prod(&osh) > 0 {
                    let mut maps = ident(&osh);
                    maps[*axis] = DimMap::Affine {
                        step: 1,
                        off: at as i64,
                        len: ish[*axis] as i64,
                    };
                    let ost = strides_of(&osh).iter().map(|&s| s as i64).collect();
                    let k = copy_kernel(
                        &format!("{name}_{i}"),
                        d,
                        &osh,
                        maps,
                        ist.clone(),
                        ost,
                        0,
                        None,
                    )?;
                    ls.push(Launch {
                        kernel: k,
                        args: vec![Arg::Val(n.inputs[0]), Arg::Val(o)],
                    });
                }
                at += len;
            }
            Ok(ls)
        }
        _ => Err("no GPU kernel".into()),
    }
}

/// Gather along `axis` (runtime i32/i64 indices, negative from the end; an index outside the
/// axis reads element 0 of it rather than outside the tensor).
pub(crate) fn gather(g: &Graph, n: &Node, name: &str, axis: usize) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let it = g.ty(n.inputs[1]);
    let osh = g.ty(n.outputs[0]).shape.clone();
    let (d, idt) = (x.dtype, it.dtype);
    let xst: Vec<i64> = strides_of(&x.shape).iter().map(|&s| s as i64).collect();
    let ir = it.shape.len();
    let ist: Vec<i64> = strides_of(&it.shape).iter().map(|&s| s as i64).collect();
    let len = x.shape[axis] as i64;
    let k = map_kernel(
        name,
        vec!["readonly".into(), "readonly".into(), String::new()],
        &osh,
        |b, c, gid| {
            // out coords: x[..axis], idx[..], x[axis+1..]
            let ic = &c[axis..axis + ir];
            let ii = b.affine(ic, &ist, 0);
            let iv = b.ld(lty(idt), "%p1", &ii);
            let iv = if idt == DType::I32 {
                let r = b.e.tmp();
                b.e.line(&format!("  {r} = sext i32 {iv} to i64"));
                r
            } else {
                iv
            };
            let neg = b.icmp("slt", "i64", &iv, "0");
            let w = b.e.iop("add", "i64", &iv, &len.to_string());
            let iv = b.sel("i64", &neg, &w, &iv);
            let lo = b.icmp("sge", "i64", &iv, "0");
            let hi = b.icmp("slt", "i64", &iv, &len.to_string());
            let ok = b.and(&lo, &hi);
            let iv = b.sel("i64", &ok, &iv, "0");
            let mut xc: Vec<String> = c[..axis].to_vec();
            xc.push(iv);
            xc.extend_from_slice(&c[axis + ir..]);
            let xi = b.affine(&xc, &xst, 0);
            let t = ity(d);
            let v = b.ld(t, "%p0", &xi);
            b.st(t, &v, "%p2", gid);
            Ok(())
        },
    )?;
    Ok(vec![Launch {
        kernel: k,
        args: vec![
            Arg::Val(n.inputs[0]),
            Arg::Val(n.inputs[1]),
            Arg::Val(n.outputs[0]),
        ],
    }])
}

/// Resize: nearest (bit copies) or linear (f32) through per-axis tables computed at compile
/// time with the interpreter's own coordinate rules (`kiln_ir::interp::nearest_sources`,
/// `linear_taps`).
pub(crate) fn resize(
    g: &Graph,
    n: &Node,
    name: &str,
    a: &kiln_ir::ops::ResizeAttrs,
) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let osh = g.ty(n.outputs[0]).shape.clone();
    let r = osh.len();
    let xst: Vec<i64> = strides_of(&x.shape).iter().map(|&s| s as i64).collect();
    let d = x.dtype;
    // axes that change
    let axes: Vec<usize> = (0..r).filter(|&i| osh[i] != x.shape[i]).collect();
    let mut table: Vec<u8> = Vec::new();
    let mut offs = Vec::new(); // per resized axis: byte offset of its table
    match a.mode {
        ResizeMode::Nearest => {
            for &ax in &axes {
                offs.push(table.len());
                for s in kiln_ir::interp::nearest_sources(a, ax, x.shape[ax]) {
                    table.extend_from_slice(&(s as i32).to_le_bytes());
                }
            }
        }
        ResizeMode::Linear => {
            if d != DType::F32 {
                return Err("linear Resize of non-f32 data".into());
            }
            for &ax in &axes {
                offs.push(table.len());
                // (i0, i1, w1) as i32, i32, f32 per output position
                for (i0, i1, w) in kiln_ir::interp::linear_taps(a, ax, x.shape[ax]) {
                    table.extend_from_slice(&(i0 as i32).to_le_bytes());
                    table.extend_from_slice(&(i1 as i32).to_le_bytes());
                    table.extend_from_slice(&(w as f32).to_le_bytes());
                }
            }
        }
    }
    let mode = a.mode;
    let k = map_kernel(
        name,
        vec!["readonly".into(), "readonly".into(), String::new()],
        &osh,
        |b, c, gid| {
            let mut base: Vec<String> = c.to_vec();
            match mode {
                ResizeMode::Nearest => {
                    for (&ax, &off) in axes.iter().zip(&offs) {
                        let ti = b.e.iop("add", "i64", &c[ax], &(off / 4).to_string());
                        let s = b.ld("i32", "%p1", &ti);
                        let s64 = b.e.tmp();
                        b.e.line(&format!("  {s64} = sext i32 {s} to i64"));
                        base[ax] = s64;
                    }
                    let xi = b.affine(&base, &xst, 0);
                    let t = ity(d);
                    let v = b.ld(t, "%p0", &xi);
                    b.st(t, &v, "%p2", gid);
                }
                ResizeMode::Linear => {
                    // per resized axis: two sources and the weight of the second
                    let mut taps = Vec::new();
                    for (&ax, &off) in axes.iter().zip(&offs) {
                        let ti = b.e.iop("mul", "i64", &c[ax], "3");
                        let ti = b.e.iop("add", "i64", &ti, &(off / 4).to_string());
                        let i0 = b.ld("i32", "%p1", &ti);
                        let t1 = b.e.iop("add", "i64", &ti, "1");
                        let i1 = b.ld("i32", "%p1", &t1);
                        let t2 = b.e.iop("add", "i64", &ti, "2");
                        let wb = b.ld("i32", "%p1", &t2);
                        let w = b.e.tmp();
                        b.e.line(&format!("  {w} = bitcast i32 {wb} to float"));
                        let s0 = b.e.tmp();
                        b.e.line(&format!("  {s0} = sext i32 {i0} to i64"));
                        let s1 = b.e.tmp();
                        b.e.line(&format!("  {s1} = sext i32 {i1} to i64"));
                        taps.push((ax, s0, s1, w));
                    }
                    // multilinear: fold the axes one by one, last first
                    let mut acc: Option<String> = None;
                    let nt = 1usize << taps.len();
                    for combo in 0..nt {
                        let mut cc = base.clone();
                        let mut wt: Option<String> = None;
                        for (t, (ax, s0, s1, w)) in taps.iter().enumerate() {
                            let hi = combo >> t & 1 == 1;
                            cc[*ax] = if hi { s1.clone() } else { s0.clone() };
                            let f = if hi {
                                w.clone()
                            } else {
                                b.e.sop("fsub", "1.0", w)
                            };
                            wt = Some(match wt {
                                None => f,
                                Some(p) => b.e.sop("fmul", &p, &f),
                            });
                        }
                        let xi = b.affine(&cc, &xst, 0);
                        let v = b.ld("float", "%p0", &xi);
                        let term = match wt {
                            Some(w) => b.e.sop("fmul", &v, &w),
                            None => v,
                        };
                        acc = Some(match acc {
                            None => term,
                            Some(a) => b.e.sop("fadd", &a, &term),
                        });
                    }
                    b.st("float", &acc.unwrap(), "%p2", gid);
                }
            }
            Ok(())
        },
    )?;
    if table.is_empty() {
        table.extend_from_slice(&[0; 4]);
    }
    Ok(vec![Launch {
        kernel: k,
        args: vec![
            Arg::Val(n.inputs[0]),
            Arg::Table(table),
            Arg::Val(n.outputs[0]),
        ],
    }])
}

// ------------------------------------------------------------ direct convolution and pools

/// Spatial geometry of a 1-D or 2-D window op (1-D as height 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Win {
    pub n: usize,
    pub c: usize,
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
    /// Pads at the end (for the count_include_pad divisor).
    pub ph_end: usize,
    pub pw_end: usize,
    pub dh: usize,
    pub dw: usize,
}

impl Win {
    pub fn new(
        xs: &[usize],
        os: &[usize],
        (k, s, p, d): (&[usize], &[usize], &[usize], &[usize]),
    ) -> Option<Win> {
        let sp = xs.len().checked_sub(2)?;
        Some(match sp {
            1 => Win {
                n: xs[0],
                c: xs[1],
                h: 1,
                w: xs[2],
                oh: 1,
                ow: os[2],
                kh: 1,
                kw: k[0],
                sh: 1,
                sw: s[0],
                ph: 0,
                pw: p[0],
                ph_end: 0,
                pw_end: p[1],
                dh: 1,
                dw: d[0],
            },
            2 => Win {
                n: xs[0],
                c: xs[1],
                h: xs[2],
                w: xs[3],
                oh: os[2],
                ow: os[3],
                kh: k[0],
                kw: k[1],
                sh: s[0],
                sw: s[1],
                ph: p[0],
                pw: p[1],
                ph_end: p[2],
                pw_end: p[3],
                dh: d[0],
                dw: d[1],
            },
            _ => return None,
        })
    }
}

/// Coordinates of tap (ky, kx) for output (oy, ox): `(iy, ix, inside)`.
fn tap(
    b: &mut Body,
    g: &Win,
    oy: &str,
    ox: &str,
    ky: usize,
    kx: usize,
) -> (String, String, String) {
    let iy = if g.h == 1 && g.kh == 1 {
        "0".to_string()
    } else {
        let m = b.e.iop("mul", "i64", oy, &g.sh.to_string());
        b.e.iop(
            "add",
            "i64",
            &m,
            &((ky * g.dh) as i64 - g.ph as i64).to_string(),
        )
    };
    let m = b.e.iop("mul", "i64", ox, &g.sw.to_string());
    let ix = b.e.iop(
        "add",
        "i64",
        &m,
        &((kx * g.dw) as i64 - g.pw as i64).to_string(),
    );
    let mut conds = Vec::new();
    for (v, len) in [(&iy, g.h), (&ix, g.w)] {
        if v == "0" {
            continue;
        }
        let lo = b.icmp("sge", "i64", v, "0");
        let hi = b.icmp("slt", "i64", v, &len.to_string());
        conds.push(b.and(&lo, &hi));
    }
    let ok = match conds.len() {
        0 => "true".to_string(),
        1 => conds.pop().unwrap(),
        _ => b.and(&conds[0], &conds[1]),
    };
    (iy, ix, ok)
}

/// A convolution whose groups have one input channel each (depthwise, any multiplier): one
/// thread per output element, the taps unrolled, bias/residual/epilogue before the store.
pub(crate) fn depthwise(
    g: &Graph,
    n: &Node,
    name: &str,
    a: &kiln_ir::ops::ConvAttrs,
) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let o = g.ty(n.outputs[0]);
    let gm = Win::new(
        &x.shape,
        &o.shape,
        (&a.kernel, &a.strides, &a.pads, &a.dilations),
    )
    .ok_or("convolution of more than 2 spatial dims")?;
    let cout = o.shape[1];
    let mult = cout / a.groups;
    let (bias, res) = (n.inputs.len() >= 3, n.inputs.len() == 4);
    let np = n.inputs.len();
    let steps = a.epilogue.clone();
    let osh = [gm.n, cout, gm.oh, gm.ow];
    let taps = gm.kh * gm.kw;
    let mut params = vec!["readonly".to_string(); np];
    params.push(String::new());
    let k = map_kernel(name, params, &osh, |b, c, gid| {
        let (bi, co, oy, ox) = (&c[0], &c[1], &c[2], &c[3]);
        let ci = if mult == 1 {
            co.clone()
        } else {
            b.e.iop("udiv", "i64", co, &mult.to_string())
        };
        let plane = b.e.iop("mul", "i64", bi, &gm.c.to_string());
        let plane = b.e.iop("add", "i64", &plane, &ci);
        let xbase = b.e.iop("mul", "i64", &plane, &(gm.h * gm.w).to_string());
        let wbase = b.e.iop("mul", "i64", co, &taps.to_string());
        let mut acc = "0.0".to_string();
        for ky in 0..gm.kh {
            for kx in 0..gm.kw {
                let (iy, ix, ok) = tap(b, &gm, oy, ox, ky, kx);
                let row = b.e.iop("mul", "i64", &iy, &gm.w.to_string());
                let sp = b.e.iop("add", "i64", &row, &ix);
                let sp = b.sel("i64", &ok, &sp, "0");
                let xi = b.e.iop("add", "i64", &xbase, &sp);
                let xv = b.ld("float", "%p0", &xi);
                let xv = b.sel("float", &ok, &xv, "0.0");
                let wi =
                    b.e.iop("add", "i64", &wbase, &(ky * gm.kw + kx).to_string());
                let wv = b.ld("float", "%p1", &wi);
                let r = b.e.tmp();
                b.e.line(&format!(
                    "  {r} = call float @llvm.fma.f32(float {xv}, float {wv}, float {acc})"
                ));
                acc = r;
            }
        }
        if bias {
            let bv = b.ld("float", "%p2", co);
            acc = b.e.sop("fadd", &acc, &bv);
        }
        for s in &steps {
            let opd = if matches!(s, EpilogueStep::Add) && res {
                Some(b.ld("float", "%p3", gid))
            } else {
                None
            };
            acc = step_f32(b, s, &acc, opd.as_deref()).ok_or("epilogue step")?;
        }
        b.st("float", &acc, &format!("%p{np}"), gid);
        Ok(())
    })?;
    let mut args: Vec<Arg> = n.inputs.iter().map(|&v| Arg::Val(v)).collect();
    args.push(Arg::Val(n.outputs[0]));
    Ok(vec![Launch { kernel: k, args }])
}

/// Max and average pools over 1-D/2-D windows: one thread per output element (the
/// interpreter's rules: NaN wins a max, an empty window is -inf / 0, `count_include_pad`
/// counts pads but not positions past them).
pub(crate) fn pool(
    g: &Graph,
    n: &Node,
    name: &str,
    a: &kiln_ir::ops::PoolAttrs,
    max: bool,
) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let o = g.ty(n.outputs[0]);
    let gm = Win::new(
        &x.shape,
        &o.shape,
        (&a.kernel, &a.strides, &a.pads, &a.dilations),
    )
    .ok_or("pool over more than 2 spatial dims")?;
    let osh = [gm.n, gm.c, gm.oh, gm.ow];
    let include = a.count_include_pad;
    let k = map_kernel(
        name,
        vec!["readonly".into(), String::new()],
        &osh,
        |b, c, gid| {
            let (bi, ci, oy, ox) = (&c[0], &c[1], &c[2], &c[3]);
            let plane = b.e.iop("mul", "i64", bi, &gm.c.to_string());
            let plane = b.e.iop("add", "i64", &plane, ci);
            let xbase = b.e.iop("mul", "i64", &plane, &(gm.h * gm.w).to_string());
            let mut acc = if max {
                "0xFFF0000000000000".to_string()
            } else {
                "0.0".to_string()
            };
            let mut cnt = "0".to_string();
            for ky in 0..gm.kh {
                for kx in 0..gm.kw {
                    let (iy, ix, ok) = tap(b, &gm, oy, ox, ky, kx);
                    let row = b.e.iop("mul", "i64", &iy, &gm.w.to_string());
                    let sp = b.e.iop("add", "i64", &row, &ix);
                    let sp = b.sel("i64", &ok, &sp, "0");
                    let xi = b.e.iop("add", "i64", &xbase, &sp);
                    let xv = b.ld("float", "%p0", &xi);
                    if max {
                        // v > m || isnan(v)
                        let gt = b.fcmp("ugt", &xv, &acc);
                        let take = b.and(&gt, &ok);
                        acc = b.sel("float", &take, &xv, &acc);
                    } else {
                        let xv = b.sel("float", &ok, &xv, "0.0");
                        acc = b.e.sop("fadd", &acc, &xv);
                        let counted = if include {
                            // inside input + pads: iy < h + ph_end and ix < w + pw_end
                            let mut cs = Vec::new();
                            if iy != "0" {
                                cs.push(b.icmp("slt", "i64", &iy, &(gm.h + gm.ph_end).to_string()));
                            }
                            cs.push(b.icmp("slt", "i64", &ix, &(gm.w + gm.pw_end).to_string()));
                            if cs.len() == 2 {
                                b.and(&cs[0], &cs[1])
                            } else {
                                cs.pop().unwrap()
                            }
                        } else {
                            ok
                        };
                        let inc = b.e.tmp();
                        b.e.line(&format!("  {inc} = zext i1 {counted} to i32"));
                        cnt = b.e.iop("add", "i32", &cnt, &inc);
                    }
                }
            }
            if !max {
                let cf = b.e.tmp();
                b.e.line(&format!("  {cf} = sitofp i32 {cnt} to float"));
                let q = b.e.sop("fdiv", &acc, &cf);
                let z = b.icmp("eq", "i32", &cnt, "0");
                acc = b.sel("float", &z, "0.0", &q);
            }
            b.st("float", &acc, "%p1", gid);
            Ok(())
        },
    )?;
    Ok(vec![Launch {
        kernel: k,
        args: vec![Arg::Val(n.inputs[0]), Arg::Val(n.outputs[0])],
    }])
}

// ------------------------------------------------------------ warp-per-row kernels

/// Warps per block of the row kernels.
const ROW_WARPS: u32 = 8;

/// A kernel with one warp per row `r` in `0..rows`: `f(body, row (i64), lane (i64))` writes
/// the row's code; every lane runs it (shuffles need the whole warp).
fn row_kernel(
    name: &str,
    params: Vec<String>,
    rows: usize,
    f: impl FnOnce(&mut Body, &str, &str) -> Result<(), String>,
) -> Result<GpuKernel, String> {
    let threads = 32 * ROW_WARPS;
    let blocks = rows.div_ceil(ROW_WARPS as usize).max(1);
    let mut b = Body::new(name, &params);
    let t = b.e.tmp();
    b.e.line(&format!("  {t} = zext i32 %tid to i64"));
    let warp = b.e.iop("lshr", "i64", &t, "5");
    let lane = b.e.iop("and", "i64", &t, "31");
    let bx = b.e.tmp();
    b.e.line(&format!("  {bx} = zext i32 %bx to i64"));
    let r0 = b.e.iop("mul", "i64", &bx, &ROW_WARPS.to_string());
    let row = b.e.iop("add", "i64", &r0, &warp);
    // whole warps leave together
    let inb = b.icmp("ult", "i64", &row, &rows.to_string());
    b.guard(&inb);
    f(&mut b, &row, &lane)?;
    Ok(GpuKernel {
        name: name.into(),
        params,
        threads,
        grid: [blocks as u32, 1, 1],
        smem: 0,
        sync: true,
        body: b.finish(),
    })
}

/// A loop `for j in lane..len step 32` with float accumulator `init`; `f(body, j, acc)`
/// returns the new accumulator. Returns the lane's partial result.
fn lane_loop(
    b: &mut Body,
    lane: &str,
    len: usize,
    init: &str,
    f: &mut dyn FnMut(&mut Body, &str, &str) -> String,
) -> String {
    let l = b.e.label();
    let pre = b.e.label();
    b.e.line(&format!("  br label %{pre}"));
    b.e.line(&format!("{pre}:"));
    let enter = b.icmp("ult", "i64", lane, &len.to_string());
    b.e.line(&format!(
        "  br i1 {enter}, label %{l}_body, label %{l}_exit"
    ));
    b.e.line(&format!("{l}_body:"));
    let j = format!("%{l}_j");
    let acc = format!("%{l}_acc");
    b.e.line(&format!(
        "  {j} = phi i64 [ {lane}, %{pre} ], [ %{l}_jn, %{l}_latch ]"
    ));
    b.e.line(&format!(
        "  {acc} = phi float [ {init}, %{pre} ], [ %{l}_accn, %{l}_latch ]"
    ));
    let next = f(b, &j, &acc);
    b.e.line(&format!("  br label %{l}_latch"));
    b.e.line(&format!("{l}_latch:"));
    b.e.copy_to(&format!("%{l}_accn"), "float", &next);
    b.e.line(&format!("  %{l}_jn = add i64 {j}, 32"));
    b.e.line(&format!("  %{l}_c = icmp ult i64 %{l}_jn, {len}"));
    b.e.line(&format!("  br i1 %{l}_c, label %{l}_body, label %{l}_exit"));
    b.e.line(&format!("{l}_exit:"));
    let r = b.e.tmp();
    b.e.line(&format!(
        "  {r} = phi float [ {init}, %{pre} ], [ %{l}_accn, %{l}_latch ]"
    ));
    r
}

/// A loop `for j in lane..len step 32` without an accumulator.
fn lane_for(b: &mut Body, lane: &str, len: usize, f: &mut dyn FnMut(&mut Body, &str)) {
    lane_loop(b, lane, len, "0.0", &mut |b, j, acc| {
        f(b, j);
        acc.to_string()
    });
}

/// Softmax / LogSoftmax / Hardmax along `axis`: one warp per (outer, inner) row.
pub(crate) fn softmax(
    g: &Graph,
    n: &Node,
    name: &str,
    axis: usize,
    kind: SoftmaxKind,
) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let sh = &x.shape;
    let (outer, len, inner) = (prod(&sh[..axis]), sh[axis], prod(&sh[axis + 1..]));
    let k = row_kernel(
        name,
        vec!["readonly".into(), String::new()],
        outer * inner,
        |b, row, lane| {
            let o = b.e.iop("udiv", "i64", row, &inner.to_string());
            let i = b.e.iop("urem", "i64", row, &inner.to_string());
            let base = b.e.iop("mul", "i64", &o, &(len * inner).to_string());
            let base = b.e.iop("add", "i64", &base, &i);
            let at = |b: &mut Body, j: &str| -> String {
                let m = b.e.iop("mul", "i64", j, &inner.to_string());
                b.e.iop("add", "i64", &base, &m)
            };
            // max (NaN-propagating like maxnum's caller: the CPU takes maxnum too)
            let m = lane_loop(b, lane, len, "0xFFF0000000000000", &mut |b, j, acc| {
                let a = at(b, j);
                let v = b.ld("float", "%p0", &a);
                b.e.sop("fmax", acc, &v)
            });
            let m = b.e.warp_reduce_f32("fmax", &m);
            match kind {
                SoftmaxKind::Hardmax => {
                    // first index of the maximum: min over lanes of the first j with x == max
                    let big = (len as i64).to_string();
                    let l = b.e.label();
                    let _ = l;
                    let first = lane_loop(b, lane, len, &fc(len as f32), &mut |b, j, acc| {
                        let a = at(b, j);
                        let v = b.ld("float", "%p0", &a);
                        let eq = b.fcmp("oeq", &v, &m);
                        let jf = b.e.tmp();
                        b.e.line(&format!("  {jf} = uitofp i64 {j} to float"));
                        let cand = b.sel("float", &eq, &jf, &fc(len as f32));
                        b.e.sop("fmin", acc, &cand)
                    });
                    let _ = big;
                    let first = b.e.warp_reduce_f32("fmin", &first);
                    lane_for(b, lane, len, &mut |b, j| {
                        let a = at(b, j);
                        let jf = b.e.tmp();
                        b.e.line(&format!("  {jf} = uitofp i64 {j} to float"));
                        let eq = b.fcmp("oeq", &jf, &first);
                        let v = b.sel("float", &eq, "1.0", "0.0");
                        b.st("float", &v, "%p1", &a);
                    });
                }
                _ => {
                    let s = lane_loop(b, lane, len, "0.0", &mut |b, j, acc| {
                        let a = at(b, j);
                        let v = b.ld("float", "%p0", &a);
                        let d = b.e.sop("fsub", &v, &m);
                        let ex = exp_f(b, &d);
                        b.e.sop("fadd", acc, &ex)
                    });
                    let s = b.e.warp_reduce_f32("fadd", &s);
                    let log = kind == SoftmaxKind::LogSoftmax;
                    let ls = if log { log_f(b, &s) } else { s.clone() };
                    lane_for(b, lane, len, &mut |b, j| {
                        let a = at(b, j);
                        let v = b.ld("float", "%p0", &a);
                        let d = b.e.sop("fsub", &v, &m);
                        let r = if log {
                            b.e.sop("fsub", &d, &ls)
                        } else {
                            let ex = exp_f(b, &d);
                            b.e.sop("fdiv", &ex, &ls)
                        };
                        b.st("float", &r, "%p1", &a);
                    });
                }
            }
            Ok(())
        },
    )?;
    Ok(vec![Launch {
        kernel: k,
        args: vec![Arg::Val(n.inputs[0]), Arg::Val(n.outputs[0])],
    }])
}

/// LayerNorm over the axes from `axis`: one warp per row, mean then variance (two passes),
/// `(x - mean) * (1 / sqrt(var + eps))`, times scale, plus bias.
pub(crate) fn layer_norm(
    g: &Graph,
    n: &Node,
    name: &str,
    axis: usize,
    eps: f32,
) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let (rows, len) = (prod(&x.shape[..axis]), prod(&x.shape[axis..]));
    let (scale, bias) = (n.inputs.len() >= 2, n.inputs.len() >= 3);
    let np = n.inputs.len();
    let mut params = vec!["readonly".to_string(); np];
    params.push(String::new());
    let k = row_kernel(name, params, rows, |b, row, lane| {
        let base = b.e.iop("mul", "i64", row, &len.to_string());
        let at = |b: &mut Body, j: &str| b.e.iop("add", "i64", &base, j);
        let s = lane_loop(b, lane, len, "0.0", &mut |b, j, acc| {
            let a = at(b, j);
            let v = b.ld("float", "%p0", &a);
            b.e.sop("fadd", acc, &v)
        });
        let s = b.e.warp_reduce_f32("fadd", &s);
        let mean = b.e.sop("fdiv", &s, &fc(len as f32));
        let q = lane_loop(b, lane, len, "0.0", &mut |b, j, acc| {
            let a = at(b, j);
            let v = b.ld("float", "%p0", &a);
            let d = b.e.sop("fsub", &v, &mean);
            let r = b.e.tmp();
            b.e.line(&format!(
                "  {r} = call float @llvm.fma.f32(float {d}, float {d}, float {acc})"
            ));
            r
        });
        let q = b.e.warp_reduce_f32("fadd", &q);
        let var = b.e.sop("fdiv", &q, &fc(len as f32));
        let ve = b.e.sop("fadd", &var, &fc(eps));
        let sd = call_f(b, "sqrt", &ve);
        let inv = b.e.sop("fdiv", "1.0", &sd);
        lane_for(b, lane, len, &mut |b, j| {
            let a = at(b, j);
            let v = b.ld("float", "%p0", &a);
            let d = b.e.sop("fsub", &v, &mean);
            let mut y = b.e.sop("fmul", &d, &inv);
            if scale {
                let sv = b.ld("float", "%p1", j);
                y = b.e.sop("fmul", &y, &sv);
            }
            if bias {
                let bv = b.ld("float", "%p2", j);
                y = b.e.sop("fadd", &y, &bv);
            }
            b.st("float", &y, &format!("%p{np}"), &a);
        });
        Ok(())
    })?;
    let mut args: Vec<Arg> = n.inputs.iter().map(|&v| Arg::Val(v)).collect();
    args.push(Arg::Val(n.outputs[0]));
    Ok(vec![Launch { kernel: k, args }])
}

/// Reductions over any axes (and GlobalAveragePool): one warp per output element, the lanes
/// striding over the reduced elements.
pub(crate) fn reduce(
    g: &Graph,
    n: &Node,
    name: &str,
    kind: ReduceKind,
    axes: &[usize],
) -> Result<Vec<Launch>, String> {
    let x = g.ty(n.inputs[0]);
    let sh = &x.shape;
    let st = strides_of(sh);
    let kept: Vec<usize> = (0..sh.len()).filter(|d| !axes.contains(d)).collect();
    let kshape: Vec<usize> = kept.iter().map(|&d| sh[d]).collect();
    let kst: Vec<i64> = kept.iter().map(|&d| st[d] as i64).collect();
    let rshape: Vec<usize> = axes.iter().map(|&d| sh[d]).collect();
    let rst: Vec<i64> = axes.iter().map(|&d| st[d] as i64).collect();
    let (rows, len) = (prod(&kshape), prod(&rshape));
    let k = row_kernel(
        name,
        vec!["readonly".into(), String::new()],
        rows,
        |b, row, lane| {
            let kc = b.coords(row, &kshape);
            let base = b.affine(&kc, &kst, 0);
            let (init, op) = match kind {
                ReduceKind::Max => ("0xFFF0000000000000", "fmax"),
                ReduceKind::Min => ("0x7FF0000000000000", "fmin"),
                ReduceKind::Prod => ("1.0", "fmul"),
                _ => ("0.0", "fadd"),
            };
            let s = lane_loop(b, lane, len, init, &mut |b, j, acc| {
                let rc = b.coords(j, &rshape);
                let off = b.affine(&rc, &rst, 0);
                let a = b.e.iop("add", "i64", &base, &off);
                let v = b.ld("float", "%p0", &a);
                let v = match kind {
                    ReduceKind::SumSquare | ReduceKind::L2 => b.e.sop("fmul", &v, &v),
                    ReduceKind::L1 => call_f(b, "fabs", &v),
                    ReduceKind::LogSumExp => exp_f(b, &v),
                    _ => v,
                };
                b.e.sop(op, acc, &v)
            });
            let s = b.e.warp_reduce_f32(op, &s);
            let r = match kind {
                ReduceKind::Mean => b.e.sop("fdiv", &s, &fc(len.max(1) as f32)),
                ReduceKind::L2 => call_f(b, "sqrt", &s),
                ReduceKind::LogSum | ReduceKind::LogSumExp => log_f(b, &s),
                _ => s,
            };
            let z = b.icmp("eq", "i64", lane, "0");
            let l = b.e.if_begin(&z);
            b.st("float", &r, "%p1", row);
            b.e.if_end(&l);
            Ok(())
        },
    )?;
    Ok(vec![Launch {
        kernel: k,
        args: vec![Arg::Val(n.inputs[0]), Arg::Val(n.outputs[0])],
    }])
}

/// ConvTranspose over 1-D/2-D windows: one thread per output element gathering every input
/// position and tap that reaches it (`oy + pad - ky d = iy s`), weights `[C][M/groups][k..]`.
pub(crate) fn conv_transpose(
    g: &Graph,
    n: &Node,
    name: &str,
    a: &kiln_ir::ops::ConvTransposeAttrs,
) -> Result<Vec<Launch>, String> {
    if !f32_all(g, n) {
        return Err("non-f32 ConvTranspose".into());
    }
    let x = g.ty(n.inputs[0]);
    let o = g.ty(n.outputs[0]);
    let sp = x.shape.len() - 2;
    if !(1..=2).contains(&sp) {
        return Err("ConvTranspose over more than 2 spatial dims".into());
    }
    let two = |v: &[usize], d: usize| -> (usize, usize) {
        if sp == 1 { (d, v[0]) } else { (v[0], v[1]) }
    };
    let (kh, kw) = two(&a.kernel, 1);
    let (sh, sw) = two(&a.strides, 1);
    let (dh, dw) = two(&a.dilations, 1);
    let (ph, pw) = if sp == 1 {
        (0, a.pads[0])
    } else {
        (a.pads[0], a.pads[1])
    };
    let (h, w) = if sp == 1 {
        (1, x.shape[2])
    } else {
        (x.shape[2], x.shape[3])
    };
    let (oh, ow) = if sp == 1 {
        (1, o.shape[2])
    } else {
        (o.shape[2], o.shape[3])
    };
    let (nb, c, m) = (x.shape[0], x.shape[1], o.shape[1]);
    let (cg, mg) = (c / a.groups, m / a.groups);
    let bias = n.inputs.len() >= 3;
    let np = n.inputs.len();
    let mut params = vec!["readonly".to_string(); np];
    params.push(String::new());
    let osh = [nb, m, oh, ow];
    let k = map_kernel(name, params, &osh, |b, cc, gid| {
        let (bi, mo, oy, ox) = (&cc[0], &cc[1], &cc[2], &cc[3]);
        let gi = b.e.iop("udiv", "i64", mo, &mg.to_string());
        let mi = b.e.iop("urem", "i64", mo, &mg.to_string());
        let mut acc;
        // taps whose input position is integral and inside, for each output coordinate
        let mut pos = Vec::new();
        for ky in 0..kh {
            for kx in 0..kw {
                let mut conds = Vec::new();
                let mut coords = Vec::new();
                for (oc, k, d, p, s, len) in [(oy, ky, dh, ph, sh, h), (ox, kx, dw, pw, sw, w)] {
                    if len == 1 && s == 1 && k == 0 && p == 0 && oc == "0" {
                        coords.push("0".to_string());
                        continue;
                    }
                    let t =
                        b.e.iop("add", "i64", oc, &(p as i64 - (k * d) as i64).to_string());
                    let q = b.e.iop("sdiv", "i64", &t, &s.to_string());
                    let r = b.e.iop("srem", "i64", &t, &s.to_string());
                    let ok0 = b.icmp("eq", "i64", &r, "0");
                    let lo = b.icmp("sge", "i64", &t, "0");
                    let hi = b.icmp("slt", "i64", &q, &len.to_string());
                    let ok = b.and(&ok0, &lo);
                    conds.push(b.and(&ok, &hi));
                    coords.push(q);
                }
                let ok = conds
                    .into_iter()
                    .reduce(|p, q| b.and(&p, &q))
                    .unwrap_or_else(|| "true".into());
                pos.push((ky, kx, coords, ok));
            }
        }
        let lp = b.e.label();
        let pre = b.e.label();
        b.e.line(&format!("  br label %{pre}"));
        b.e.line(&format!("{pre}:"));
        b.e.line(&format!("  br label %{lp}_body"));
        b.e.line(&format!("{lp}_body:"));
        let ci = format!("%{lp}_ci");
        let accp = format!("%{lp}_acc");
        b.e.line(&format!(
            "  {ci} = phi i64 [ 0, %{pre} ], [ %{lp}_cn, %{lp}_body ]"
        ));
        b.e.line(&format!(
            "  {accp} = phi float [ 0.0, %{pre} ], [ %{lp}_an, %{lp}_body ]"
        ));
        acc = accp.clone();
        let cin = b.e.iop("mul", "i64", &gi, &cg.to_string());
        let cin = b.e.iop("add", "i64", &cin, &ci);
        let plane = b.e.iop("mul", "i64", bi, &c.to_string());
        let plane = b.e.iop("add", "i64", &plane, &cin);
        let xbase = b.e.iop("mul", "i64", &plane, &(h * w).to_string());
        let wrow = b.e.iop("mul", "i64", &cin, &mg.to_string());
        let wrow = b.e.iop("add", "i64", &wrow, &mi);
        let wbase = b.e.iop("mul", "i64", &wrow, &(kh * kw).to_string());
        for (ky, kx, coords, ok) in &pos {
            let row = b.e.iop("mul", "i64", &coords[0], &w.to_string());
            let sp_ = b.e.iop("add", "i64", &row, &coords[1]);
            let sp_ = b.sel("i64", ok, &sp_, "0");
            let xi = b.e.iop("add", "i64", &xbase, &sp_);
            let xv = b.ld("float", "%p0", &xi);
            let xv = b.sel("float", ok, &xv, "0.0");
            let wi = b.e.iop("add", "i64", &wbase, &(ky * kw + kx).to_string());
            let wv = b.ld("float", "%p1", &wi);
            let r = b.e.tmp();
            b.e.line(&format!(
                "  {r} = call float @llvm.fma.f32(float {xv}, float {wv}, float {acc})"
            ));
            acc = r;
        }
        b.e.copy_to(&format!("%{lp}_an"), "float", &acc);
        b.e.line(&format!("  %{lp}_cn = add i64 {ci}, 1"));
        b.e.line(&format!("  %{lp}_cc = icmp ult i64 %{lp}_cn, {cg}"));
        b.e.line(&format!(
            "  br i1 %{lp}_cc, label %{lp}_body, label %{lp}_exit"
        ));
        b.e.line(&format!("{lp}_exit:"));
        let mut v = format!("%{lp}_an");
        if bias {
            let bv = b.ld("float", "%p2", mo);
            v = b.e.sop("fadd", &v, &bv);
        }
        b.st("float", &v, &format!("%p{np}"), gid);
        Ok(())
    })?;
    let mut args: Vec<Arg> = n.inputs.iter().map(|&v| Arg::Val(v)).collect();
    args.push(Arg::Val(n.outputs[0]));
    Ok(vec![Launch { kernel: k, args }])
}
