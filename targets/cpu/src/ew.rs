//! Elementwise kernels over every numeric dtype: unary ops, broadcasting binary ops, the
//! parameterized activations, Clip, IsNaN/IsInf.
//!
//! Values are computed in a register type chosen per dtype ([`Num`]): f32 (with an F32X4 path
//! for the ops that have vector instructions), f64, and integers widened to i32 (8/16/32-bit) or
//! i64, with signedness kept for division, shifts, comparisons and min/max. Narrow results are
//! truncated on store, which gives the wrapping semantics of the interpreter.

use crate::kb::{F32, F32X4, Kb, flags, int_ty};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, Type, Value, types};
use kiln_ir::ops::{ActKind, BinaryOp, UnaryOp};
use kiln_ir::{DType, Op, TensorType};

use crate::kernels::KResult;

/// How elements of a dtype live in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Num {
    F32,
    F64,
    /// An integer of `bits` bits widened to `ty` (I32 or I64).
    Int {
        ty: Type,
        signed: bool,
        bits: u32,
    },
}

impl Num {
    pub fn of(dt: DType) -> Option<Num> {
        Some(match dt {
            DType::F32 => Num::F32,
            DType::F64 => Num::F64,
            DType::I8 | DType::I16 | DType::I32 => Num::Int {
                ty: types::I32,
                signed: true,
                bits: 8 * dt.size() as u32,
            },
            DType::U8 | DType::U16 | DType::U32 | DType::Bool => Num::Int {
                ty: types::I32,
                signed: false,
                bits: 8 * dt.size() as u32,
            },
            DType::I64 => Num::Int {
                ty: types::I64,
                signed: true,
                bits: 64,
            },
            DType::U64 => Num::Int {
                ty: types::I64,
                signed: false,
                bits: 64,
            },
            // 16-bit floats are computed in f32 (converted on load and store)
            DType::F16 | DType::BF16 => Num::F32,
        })
    }
    /// The scalar register type.
    pub fn ty(self) -> Type {
        match self {
            Num::F32 => F32,
            Num::F64 => types::F64,
            Num::Int { ty, .. } => ty,
        }
    }
}

/// Load element `i` of a `dt` tensor at `base`, widened to its [`Num`] register type.
pub(crate) fn load_num(kb: &mut Kb, dt: DType, base: Value, i: Value) -> Value {
    let a = kb.addr(base, i, dt.size());
    if matches!(dt, DType::F16 | DType::BF16) {
        let h = kb.b.ins().load(types::I16, flags(), a, 0);
        return if dt == DType::F16 {
            crate::fp16::f16_to_f32(kb, h)
        } else {
            crate::fp16::bf16_to_f32(kb, h)
        };
    }
    match Num::of(dt) {
        Some(Num::F32) => kb.b.ins().load(F32, flags(), a, 0),
        Some(Num::F64) => kb.b.ins().load(types::F64, flags(), a, 0),
        Some(Num::Int { ty, signed, .. }) => {
            let raw = kb.b.ins().load(int_ty(dt.size()), flags(), a, 0);
            if int_ty(dt.size()) == ty {
                raw
            } else if signed {
                kb.b.ins().sextend(ty, raw)
            } else {
                kb.b.ins().uextend(ty, raw)
            }
        }
        None => kb.b.ins().load(int_ty(dt.size()), flags(), a, 0),
    }
}

/// Store a [`Num`] register value as element `i` of a `dt` tensor (narrow ints truncate).
pub(crate) fn store_num(kb: &mut Kb, dt: DType, v: Value, base: Value, i: Value) {
    let a = kb.addr(base, i, dt.size());
    if matches!(dt, DType::F16 | DType::BF16) && kb.b.func.dfg.value_type(v) == F32 {
        let h = if dt == DType::F16 {
            crate::fp16::f32_to_f16(kb, v)
        } else {
            crate::fp16::f32_to_bf16(kb, v)
        };
        kb.b.ins().store(flags(), h, a, 0);
        return;
    }
    let v = match Num::of(dt) {
        Some(Num::Int { .. }) if kb.b.func.dfg.value_type(v) != int_ty(dt.size()) => {
            kb.b.ins().ireduce(int_ty(dt.size()), v)
        }
        _ => v,
    };
    kb.b.ins().store(flags(), v, a, 0);
}

/// A float constant of type `t` (F32, F64 or a splatted F32X4).
pub(crate) fn fconst(kb: &mut Kb, v: f64, t: Type) -> Value {
    if t == types::F64 {
        kb.b.ins().f64const(v)
    } else if t == F32X4 {
        let c = kb.b.ins().f32const(v as f32);
        kb.b.ins().splat(F32X4, c)
    } else {
        kb.b.ins().f32const(v as f32)
    }
}

/// A float constant of the same type as the lanes being computed (scalar f32 or F32X4).
pub(crate) fn fconst_like(kb: &mut Kb, v: f32, vec: bool) -> Value {
    fconst(kb, v as f64, if vec { F32X4 } else { F32 })
}

/// `if x <cc> y { a } else { b }` for scalars (select) or F32X4 lanes (bitselect on the mask).
pub(crate) fn select_if(
    kb: &mut Kb,
    cc: FloatCC,
    x: Value,
    y: Value,
    a: Value,
    b: Value,
    t: Type,
) -> Value {
    let c = kb.b.ins().fcmp(cc, x, y);
    if t.is_vector() {
        let le = cranelift_codegen::ir::MemFlagsData::new()
            .with_endianness(cranelift_codegen::ir::Endianness::Little);
        let m = kb.b.ins().bitcast(t, le, c);
        kb.b.ins().bitselect(m, a, b)
    } else {
        kb.b.ins().select(c, a, b)
    }
}

/// max(a, b) as compare + select (x64: one `maxps`), not IEEE `fmax`.
fn select_gt(kb: &mut Kb, a: Value, b: Value, t: Type) -> Value {
    select_if(kb, FloatCC::GreaterThan, a, b, a, b, t)
}
fn select_lt(kb: &mut Kb, a: Value, b: Value, t: Type) -> Value {
    select_if(kb, FloatCC::LessThan, a, b, a, b, t)
}

/// libm functions kernels may call: (name, arity, f64?). Resolved by the linker for artefacts,
/// registered with the JIT from this process's libm.
pub(crate) const LIBM: [(&str, usize, bool); 36] = [
    ("expf", 1, false),
    ("logf", 1, false),
    ("tanhf", 1, false),
    ("erff", 1, false),
    ("powf", 2, false),
    ("sinf", 1, false),
    ("cosf", 1, false),
    ("tanf", 1, false),
    ("asinf", 1, false),
    ("acosf", 1, false),
    ("atanf", 1, false),
    ("sinhf", 1, false),
    ("coshf", 1, false),
    ("asinhf", 1, false),
    ("acoshf", 1, false),
    ("atanhf", 1, false),
    ("fmodf", 2, false),
    ("log1pf", 1, false),
    ("exp", 1, true),
    ("log", 1, true),
    ("tanh", 1, true),
    ("erf", 1, true),
    ("pow", 2, true),
    ("sin", 1, true),
    ("cos", 1, true),
    ("tan", 1, true),
    ("asin", 1, true),
    ("acos", 1, true),
    ("atan", 1, true),
    ("sinh", 1, true),
    ("cosh", 1, true),
    ("asinh", 1, true),
    ("acosh", 1, true),
    ("atanh", 1, true),
    ("fmod", 2, true),
    ("log1p", 1, true),
];

/// Call libm `base` (the f64 name, e.g. "exp") in the precision of `t`.
fn libm(kb: &mut Kb, base: &'static str, t: Type, args: &[Value]) -> Value {
    let name = if t == types::F64 {
        base
    } else {
        LIBM.iter()
            .find(|(n, _, f64_)| !f64_ && n.strip_suffix('f') == Some(base))
            .expect("libm function")
            .0
    };
    let fr = kb.libm[name];
    let c = kb.b.ins().call(fr, args);
    kb.b.inst_results(c)[0]
}

/// Ops with an F32X4 lowering (no libm calls).
fn is_vector_op(op: &Op) -> bool {
    match op {
        Op::Unary(u) => matches!(
            u,
            UnaryOp::Relu
                | UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Sqrt
                | UnaryOp::Floor
                | UnaryOp::Ceil
                | UnaryOp::Round
                | UnaryOp::HardSwish
                | UnaryOp::Reciprocal
                | UnaryOp::Softsign
        ),
        Op::Binary(b) => matches!(
            b,
            BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Mul
                | BinaryOp::Div
                | BinaryOp::Max
                | BinaryOp::Min
                | BinaryOp::PRelu
        ),
        Op::Clip { .. } => true,
        Op::Act { kind, .. } => matches!(
            kind,
            ActKind::HardSigmoid
                | ActKind::LeakyRelu
                | ActKind::ThresholdedRelu
                | ActKind::Shrink
                | ActKind::Affine
        ),
        _ => false,
    }
}

fn clamp01(kb: &mut Kb, x: Value, t: Type) -> Value {
    let z = fconst(kb, 0.0, t);
    let o = fconst(kb, 1.0, t);
    let x = select_gt(kb, x, z, t);
    select_lt(kb, x, o, t)
}

fn sigmoid(kb: &mut Kb, x: Value, t: Type) -> Value {
    // 1 / (1 + exp(-x)): no overflow for large |x|
    let nx = kb.b.ins().fneg(x);
    let e = libm(kb, "exp", t, &[nx]);
    let one = fconst(kb, 1.0, t);
    let d = kb.b.ins().fadd(one, e);
    kb.b.ins().fdiv(one, d)
}

/// `ln(1 + e^x)`, as `max(x, 0) + log1p(exp(-|x|))` so it neither overflows nor loses small values.
fn softplus(kb: &mut Kb, x: Value, t: Type) -> Value {
    let a = kb.b.ins().fabs(x);
    let na = kb.b.ins().fneg(a);
    let e = libm(kb, "exp", t, &[na]);
    let l = libm(kb, "log1p", t, &[e]);
    let z = fconst(kb, 0.0, t);
    let m = select_gt(kb, x, z, t);
    kb.b.ins().fadd(m, l)
}

/// `alpha * (e^x - 1)`
fn expm1_scaled(kb: &mut Kb, x: Value, alpha: f64, t: Type) -> Value {
    let e = libm(kb, "exp", t, &[x]);
    let one = fconst(kb, 1.0, t);
    let e = kb.b.ins().fsub(e, one);
    let a = fconst(kb, alpha, t);
    kb.b.ins().fmul(e, a)
}

/// The float body of an elementwise op on scalars of type `t` (F32, F64) or F32X4 lanes.
fn apply_float(kb: &mut Kb, op: &Op, x: Value, y: Option<Value>, t: Type) -> Result<Value, String> {
    Ok(match op {
        Op::Unary(u) => match u {
            UnaryOp::Relu => {
                let z = fconst(kb, 0.0, t);
                select_gt(kb, x, z, t)
            }
            UnaryOp::Neg => kb.b.ins().fneg(x),
            UnaryOp::Abs => kb.b.ins().fabs(x),
            UnaryOp::Sqrt => kb.b.ins().sqrt(x),
            UnaryOp::Floor => kb.b.ins().floor(x),
            UnaryOp::Ceil => kb.b.ins().ceil(x),
            UnaryOp::Round => kb.b.ins().nearest(x),
            UnaryOp::Reciprocal => {
                let one = fconst(kb, 1.0, t);
                kb.b.ins().fdiv(one, x)
            }
            UnaryOp::HardSwish => {
                let a = fconst(kb, 1.0 / 6.0, t);
                let h = fconst(kb, 0.5, t);
                let v = kb.b.ins().fmul(x, a);
                let v = kb.b.ins().fadd(v, h);
                let v = clamp01(kb, v, t);
                kb.b.ins().fmul(x, v)
            }
            UnaryOp::Exp => libm(kb, "exp", t, &[x]),
            UnaryOp::Log => libm(kb, "log", t, &[x]),
            UnaryOp::Tanh => libm(kb, "tanh", t, &[x]),
            UnaryOp::Erf => libm(kb, "erf", t, &[x]),
            UnaryOp::Sin => libm(kb, "sin", t, &[x]),
            UnaryOp::Cos => libm(kb, "cos", t, &[x]),
            UnaryOp::Tan => libm(kb, "tan", t, &[x]),
            UnaryOp::Asin => libm(kb, "asin", t, &[x]),
            UnaryOp::Acos => libm(kb, "acos", t, &[x]),
            UnaryOp::Atan => libm(kb, "atan", t, &[x]),
            UnaryOp::Sinh => libm(kb, "sinh", t, &[x]),
            UnaryOp::Cosh => libm(kb, "cosh", t, &[x]),
            UnaryOp::Asinh => libm(kb, "asinh", t, &[x]),
            UnaryOp::Acosh => libm(kb, "acosh", t, &[x]),
            UnaryOp::Atanh => libm(kb, "atanh", t, &[x]),
            UnaryOp::Sigmoid => sigmoid(kb, x, t),
            UnaryOp::Sign => {
                let (z, one, mone) = (fconst(kb, 0.0, t), fconst(kb, 1.0, t), fconst(kb, -1.0, t));
                let neg = select_if(kb, FloatCC::LessThan, x, z, mone, x, t);
                select_if(kb, FloatCC::GreaterThan, x, z, one, neg, t)
            }
            UnaryOp::Softplus => softplus(kb, x, t),
            UnaryOp::Softsign => {
                let a = kb.b.ins().fabs(x);
                let one = fconst(kb, 1.0, t);
                let d = kb.b.ins().fadd(one, a);
                kb.b.ins().fdiv(x, d)
            }
            UnaryOp::Mish => {
                let sp = softplus(kb, x, t);
                let th = libm(kb, "tanh", t, &[sp]);
                kb.b.ins().fmul(x, th)
            }
            UnaryOp::Gelu => {
                let r = fconst(kb, std::f64::consts::FRAC_1_SQRT_2, t);
                let v = kb.b.ins().fmul(x, r);
                let e = libm(kb, "erf", t, &[v]);
                let one = fconst(kb, 1.0, t);
                let e = kb.b.ins().fadd(e, one);
                let h = fconst(kb, 0.5, t);
                let hx = kb.b.ins().fmul(x, h);
                kb.b.ins().fmul(hx, e)
            }
            UnaryOp::GeluTanh => {
                let k = fconst(kb, (2.0 / std::f64::consts::PI).sqrt(), t);
                let c = fconst(kb, 0.044715, t);
                let x2 = kb.b.ins().fmul(x, x);
                let x3 = kb.b.ins().fmul(x2, x);
                let v = kb.b.ins().fmul(x3, c);
                let v = kb.b.ins().fadd(x, v);
                let v = kb.b.ins().fmul(v, k);
                let th = libm(kb, "tanh", t, &[v]);
                let one = fconst(kb, 1.0, t);
                let th = kb.b.ins().fadd(th, one);
                let h = fconst(kb, 0.5, t);
                let hx = kb.b.ins().fmul(x, h);
                kb.b.ins().fmul(hx, th)
            }
            UnaryOp::BitNot => return Err("bit_not needs an integer type".into()),
        },
        Op::Binary(b) => {
            let y = y.expect("binary operand");
            match b {
                BinaryOp::Add => kb.b.ins().fadd(x, y),
                BinaryOp::Sub => kb.b.ins().fsub(x, y),
                BinaryOp::Mul => kb.b.ins().fmul(x, y),
                BinaryOp::Div => kb.b.ins().fdiv(x, y),
                BinaryOp::Max => select_gt(kb, x, y, t),
                BinaryOp::Min => select_lt(kb, x, y, t),
                BinaryOp::Pow => libm(kb, "pow", t, &[x, y]),
                BinaryOp::Fmod => libm(kb, "fmod", t, &[x, y]),
                BinaryOp::Mod => {
                    // fmod, then move a remainder whose sign differs from the divisor's
                    let r = libm(kb, "fmod", t, &[x, y]);
                    let z = fconst(kb, 0.0, t);
                    let rn = kb.b.ins().fcmp(FloatCC::LessThan, r, z);
                    let yn = kb.b.ins().fcmp(FloatCC::LessThan, y, z);
                    let differ = kb.b.ins().bxor(rn, yn);
                    let nz = kb.b.ins().fcmp(FloatCC::NotEqual, r, z);
                    let fix = kb.b.ins().band(differ, nz);
                    let ry = kb.b.ins().fadd(r, y);
                    kb.b.ins().select(fix, ry, r)
                }
                BinaryOp::PRelu => {
                    let z = fconst(kb, 0.0, t);
                    let n = kb.b.ins().fmul(x, y);
                    select_if(kb, FloatCC::LessThan, x, z, n, x, t)
                }
                BinaryOp::BitAnd
                | BinaryOp::BitOr
                | BinaryOp::BitXor
                | BinaryOp::Shl
                | BinaryOp::Shr => return Err(format!("{} needs an integer type", b.name())),
            }
        }
        Op::Clip { min, max } => {
            let lo = fconst(kb, *min as f64, t);
            let hi = fconst(kb, *max as f64, t);
            let v = select_gt(kb, x, lo, t);
            select_lt(kb, v, hi, t)
        }
        Op::Act { kind, alpha, beta } => {
            let (a, bt) = (*alpha as f64, *beta as f64);
            let z = fconst(kb, 0.0, t);
            match kind {
                ActKind::HardSigmoid => {
                    let av = fconst(kb, a, t);
                    let bv = fconst(kb, bt, t);
                    let v = kb.b.ins().fmul(x, av);
                    let v = kb.b.ins().fadd(v, bv);
                    clamp01(kb, v, t)
                }
                ActKind::LeakyRelu => {
                    let av = fconst(kb, a, t);
                    let neg = kb.b.ins().fmul(x, av);
                    select_if(kb, FloatCC::LessThan, x, z, neg, x, t)
                }
                ActKind::Elu => {
                    let neg = expm1_scaled(kb, x, a, t);
                    select_if(kb, FloatCC::LessThan, x, z, neg, x, t)
                }
                ActKind::Selu => {
                    let neg = expm1_scaled(kb, x, a, t);
                    let v = select_if(kb, FloatCC::LessThanOrEqual, x, z, neg, x, t);
                    let g = fconst(kb, bt, t);
                    kb.b.ins().fmul(v, g)
                }
                ActKind::Celu => {
                    let ia = fconst(kb, 1.0 / a, t);
                    let xa = kb.b.ins().fmul(x, ia);
                    let neg = expm1_scaled(kb, xa, a, t);
                    let neg = select_lt(kb, neg, z, t);
                    let pos = select_gt(kb, x, z, t);
                    kb.b.ins().fadd(pos, neg)
                }
                ActKind::ThresholdedRelu => {
                    let av = fconst(kb, a, t);
                    select_if(kb, FloatCC::GreaterThan, x, av, x, z, t)
                }
                ActKind::Shrink => {
                    let (bias, lambd) = (fconst(kb, a, t), fconst(kb, bt, t));
                    let nl = fconst(kb, -bt, t);
                    let up = kb.b.ins().fsub(x, bias);
                    let dn = kb.b.ins().fadd(x, bias);
                    let hi = select_if(kb, FloatCC::GreaterThan, x, lambd, up, z, t);
                    select_if(kb, FloatCC::LessThan, x, nl, dn, hi, t)
                }
                ActKind::Swish => {
                    let av = fconst(kb, a, t);
                    let ax = kb.b.ins().fmul(x, av);
                    let s = sigmoid(kb, ax, t);
                    kb.b.ins().fmul(x, s)
                }
                ActKind::Affine => {
                    let (av, bv) = (fconst(kb, a, t), fconst(kb, bt, t));
                    let ax = kb.b.ins().fmul(x, av);
                    kb.b.ins().fadd(ax, bv)
                }
            }
        }
        Op::IsNaN => kb.b.ins().fcmp(FloatCC::Unordered, x, x),
        Op::IsInf { pos, neg } => {
            let inf = fconst(kb, f64::INFINITY, t);
            let ninf = fconst(kb, f64::NEG_INFINITY, t);
            let p = kb.b.ins().fcmp(FloatCC::Equal, x, inf);
            let n = kb.b.ins().fcmp(FloatCC::Equal, x, ninf);
            match (pos, neg) {
                (true, true) => kb.b.ins().bor(p, n),
                (true, false) => p,
                (false, true) => n,
                (false, false) => kb.b.ins().iconst(types::I8, 0),
            }
        }
        _ => return Err(format!("{} is not elementwise", op.name())),
    })
}

/// Integer division-like ops of `bits`-bit integers (widened to `ty`) without traps: a zero
/// divisor (ONNX leaves it undefined), and a signed `MIN / -1` whose quotient does not fit,
/// return `KILN_ERR_DIVIDE` from the kernel.
fn int_divlike(
    kb: &mut Kb,
    b: BinaryOp,
    (x, y): (Value, Value),
    ty: Type,
    (signed, bits): (bool, u32),
) -> Value {
    let zero = kb.b.ins().iconst(ty, 0);
    let one = kb.b.ins().iconst(ty, 1);
    let nz = kb.b.ins().icmp_imm_s(IntCC::NotEqual, y, 0);
    kb.fail_unless(nz, kiln_runtime::KILN_ERR_DIVIDE);
    if signed && b == BinaryOp::Div {
        let min = -1i64 << (bits - 1);
        let xm = kb.b.ins().icmp_imm_s(IntCC::Equal, x, min);
        let ym = kb.b.ins().icmp_imm_s(IntCC::Equal, y, -1);
        let both = kb.b.ins().band(xm, ym);
        let fits = kb.b.ins().icmp_imm_s(IntCC::Equal, both, 0);
        kb.fail_unless(fits, kiln_runtime::KILN_ERR_DIVIDE);
    }
    let mut ys = y;
    let mut neg_one = None;
    if signed {
        // y == -1: x / -1 = -x (wrapping), x % -1 = 0; divide by 1 instead so nothing traps
        let ym = kb.b.ins().icmp_imm_s(IntCC::Equal, y, -1);
        ys = kb.b.ins().select(ym, one, ys);
        neg_one = Some(ym);
    }
    let q = match (b, signed) {
        (BinaryOp::Div, true) => kb.b.ins().sdiv(x, ys),
        (BinaryOp::Div, false) => kb.b.ins().udiv(x, ys),
        (_, true) => kb.b.ins().srem(x, ys),
        (_, false) => kb.b.ins().urem(x, ys),
    };
    let q = if let Some(ym) = neg_one {
        let alt = if b == BinaryOp::Div {
            kb.b.ins().ineg(x)
        } else {
            zero
        };
        kb.b.ins().select(ym, alt, q)
    } else {
        q
    };
    if b == BinaryOp::Mod && signed {
        // sign of the divisor: r != 0 && (r < 0) != (y < 0) => r + y
        let rn = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, q, 0);
        let yn = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, y, 0);
        let differ = kb.b.ins().bxor(rn, yn);
        let nz = kb.b.ins().icmp_imm_s(IntCC::NotEqual, q, 0);
        let fix = kb.b.ins().band(differ, nz);
        let qy = kb.b.ins().iadd(q, y);
        kb.b.ins().select(fix, qy, q)
    } else {
        q
    }
}

/// The integer body of an elementwise op (values widened to `ty`).
fn apply_int(
    kb: &mut Kb,
    op: &Op,
    x: Value,
    y: Option<Value>,
    ty: Type,
    (signed, bits): (bool, u32),
) -> Result<Value, String> {
    let lt = if signed {
        IntCC::SignedLessThan
    } else {
        IntCC::UnsignedLessThan
    };
    let gt = if signed {
        IntCC::SignedGreaterThan
    } else {
        IntCC::UnsignedGreaterThan
    };
    Ok(match op {
        Op::Unary(u) => match u {
            UnaryOp::Relu => {
                let z = kb.b.ins().iconst(ty, 0);
                let c = kb.b.ins().icmp(lt, x, z);
                kb.b.ins().select(c, z, x)
            }
            UnaryOp::Neg => kb.b.ins().ineg(x),
            UnaryOp::Abs if signed => kb.b.ins().iabs(x),
            UnaryOp::Abs => x,
            UnaryOp::Sign => {
                let z = kb.b.ins().iconst(ty, 0);
                let one = kb.b.ins().iconst(ty, 1);
                let mone = kb.b.ins().iconst(ty, -1);
                let n = kb.b.ins().icmp(lt, x, z);
                let p = kb.b.ins().icmp(gt, x, z);
                let v = kb.b.ins().select(n, mone, z);
                kb.b.ins().select(p, one, v)
            }
            UnaryOp::BitNot => kb.b.ins().bnot(x),
            _ => return Err(format!("{} needs a float type", u.name())),
        },
        Op::Binary(b) => {
            let y = y.expect("binary operand");
            match b {
                BinaryOp::Add => kb.b.ins().iadd(x, y),
                BinaryOp::Sub => kb.b.ins().isub(x, y),
                BinaryOp::Mul => kb.b.ins().imul(x, y),
                BinaryOp::Div | BinaryOp::Mod | BinaryOp::Fmod => {
                    int_divlike(kb, *b, (x, y), ty, (signed, bits))
                }
                BinaryOp::Max => {
                    let c = kb.b.ins().icmp(gt, x, y);
                    kb.b.ins().select(c, x, y)
                }
                BinaryOp::Min => {
                    let c = kb.b.ins().icmp(lt, x, y);
                    kb.b.ins().select(c, x, y)
                }
                BinaryOp::BitAnd => kb.b.ins().band(x, y),
                BinaryOp::BitOr => kb.b.ins().bor(x, y),
                BinaryOp::BitXor => kb.b.ins().bxor(x, y),
                BinaryOp::Shl | BinaryOp::Shr => {
                    // shifting by the register width or more gives 0 (Cranelift masks the amount)
                    let bits = ty.bits() as i64;
                    let big =
                        kb.b.ins()
                            .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, y, bits);
                    let s = match (b, signed) {
                        (BinaryOp::Shl, _) => kb.b.ins().ishl(x, y),
                        (_, true) => kb.b.ins().sshr(x, y),
                        (_, false) => kb.b.ins().ushr(x, y),
                    };
                    let z = kb.b.ins().iconst(ty, 0);
                    kb.b.ins().select(big, z, s)
                }
                BinaryOp::PRelu => {
                    let z = kb.b.ins().iconst(ty, 0);
                    let c = kb.b.ins().icmp(lt, x, z);
                    let n = kb.b.ins().imul(x, y);
                    kb.b.ins().select(c, n, x)
                }
                BinaryOp::Pow => {
                    // exact for results below 2^53, like every integer pow in practice
                    let f = types::F64;
                    let (xf, yf) = if signed {
                        (
                            kb.b.ins().fcvt_from_sint(f, x),
                            kb.b.ins().fcvt_from_sint(f, y),
                        )
                    } else {
                        (
                            kb.b.ins().fcvt_from_uint(f, x),
                            kb.b.ins().fcvt_from_uint(f, y),
                        )
                    };
                    let p = libm(kb, "pow", f, &[xf, yf]);
                    if signed {
                        kb.b.ins().fcvt_to_sint_sat(ty, p)
                    } else {
                        kb.b.ins().fcvt_to_uint_sat(ty, p)
                    }
                }
            }
        }
        Op::Clip { min, max } => {
            // bounds saturate to the register type's range (the default bounds are +-inf)
            let bound = |kb: &mut Kb, v: f32| {
                let v = v as f64;
                let c = match (ty == types::I64, signed) {
                    (true, true) => v as i64,
                    (true, false) => v as u64 as i64,
                    (false, true) => v as i32 as i64,
                    (false, false) => v as u32 as i64,
                };
                kb.b.ins().iconst(ty, c)
            };
            let (lo, hi) = (*min, *max);
            let (l, h) = (bound(kb, lo), bound(kb, hi));
            let c = kb.b.ins().icmp(lt, x, l);
            let v = kb.b.ins().select(c, l, x);
            let c = kb.b.ins().icmp(gt, v, h);
            kb.b.ins().select(c, h, v)
        }
        _ => return Err(format!("{} needs a float type", op.name())),
    })
}

pub(crate) fn apply(
    kb: &mut Kb,
    op: &Op,
    num: Num,
    x: Value,
    y: Option<Value>,
) -> Result<Value, String> {
    match num {
        Num::F32 | Num::F64 => apply_float(kb, op, x, y, num.ty()),
        Num::Int { ty, signed, bits } => apply_int(kb, op, x, y, ty, (signed, bits)),
    }
}

/// Elementwise op over `ins` (same dtype, broadcast to `out`). Unsupported op/dtype pairs are
/// reported without generating anything.
pub(crate) fn elementwise(kb: &mut Kb, op: &Op, ins: &[&TensorType], out: &TensorType) -> KResult {
    let dt = ins[0].dtype;
    let num = Num::of(dt).filter(|_| dt != DType::Bool).ok_or_else(|| {
        format!(
            "{} on {dt} is not supported by the CPU back end yet",
            op.name()
        )
    })?;
    let vector = dt == DType::F32 && is_vector_op(op);
    loops(kb, ins, out, num, vector, &mut |kb, v, t| {
        if t == F32X4 {
            apply_float(kb, op, v[0], v.get(1).copied(), t)
        } else {
            apply(kb, op, num, v[0], v.get(1).copied())
        }
    })
    .map_or(Ok(()), |e| Err(format!("{} on {dt}: {e}", op.name())))
}

/// A fused elementwise chain (`Op::Chain`, f32): input 0 with the steps applied, each binary
/// step reading the next input (broadcast). Vectorized (F32X4) where every step is.
pub(crate) fn chain(
    kb: &mut Kb,
    steps: &[kiln_ir::ops::EpilogueStep],
    ins: &[&TensorType],
    out: &TensorType,
) -> KResult {
    let vector = steps.iter().all(|s| is_vector_op(&s.as_op()));
    loops(kb, ins, out, Num::F32, vector, &mut |kb, v, t| {
        epilogue_with(kb, steps, v[0], &v[1..], t)
    })
    .map_or(Ok(()), |e| Err(format!("chain: {e}")))
}

/// One output element (or F32X4 lanes) from the operands, in the given register type.
type ElementBody<'a> = dyn FnMut(&mut Kb, &[Value], Type) -> Result<Value, String> + 'a;

/// The loops of an elementwise kernel: `body(operands, register type)` computes one output
/// element (or 4 lanes, type F32X4, when `vector`) from the operands read at the broadcast
/// positions. Returns the first lowering error.
fn loops(
    kb: &mut Kb,
    ins: &[&TensorType],
    out: &TensorType,
    num: Num,
    vector: bool,
    body: &mut ElementBody,
) -> Option<String> {
    // The first lowering error is kept and returned; the caller then discards the function.
    let mut err: Option<String> = None;
    let dt = ins[0].dtype;
    let odt = out.dtype;
    let n = out.numel();
    let ps = kb.params.clone();
    let op_ = ps[ins.len()];
    let f32_out = dt == DType::F32 && odt == DType::F32;
    if ins.iter().all(|t| t.shape == out.shape) {
        let nv = if dt == DType::F32 && vector {
            n / 4 * 4
        } else {
            0
        };
        kb.for_range(0, nv, 4, &mut |kb, i| {
            let v: Vec<Value> = (0..ins.len()).map(|j| kb.load_f32x4(ps[j], i)).collect();
            match body(kb, &v, F32X4) {
                Ok(r) => kb.store_f32x4(r, op_, i),
                Err(e) => err = Some(e),
            }
        });
        kb.for_range(nv, n, 1, &mut |kb, i| {
            let v: Vec<Value> = (0..ins.len()).map(|j| load_num(kb, dt, ps[j], i)).collect();
            match body(kb, &v, num.ty()) {
                Ok(r) => store_num(kb, odt, r, op_, i),
                Err(e) => err = Some(e),
            }
        });
        return err;
    }
    if f32_out
        && vector
        && let Some(k) = broadcast_split(ins, out)
    {
        // the trailing dims k.. are contiguous in the output and in every operand that is
        // not broadcast over all of them: F32X4 rows, broadcast operands splatted once
        let inner: usize = out.shape[k..].iter().product();
        let strides: Vec<Vec<usize>> = ins
            .iter()
            .map(|t| crate::kernels::bcast_strides(&t.shape, &out.shape))
            .collect();
        let so = kiln_ir::types::strides_of(&out.shape);
        let nv = inner / 4 * 4;
        kb.for_nd(&out.shape[..k], &mut |kb, idx| {
            let oo = kb.offset(idx, &so[..k]);
            // per operand: base element offset, and whether it is broadcast over the row
            let bases: Vec<(Value, bool)> = strides
                .iter()
                .map(|st| {
                    let bc = (k..st.len()).all(|d| st[d] == 0 || out.shape[d] == 1);
                    (kb.offset(idx, &st[..k]), bc)
                })
                .collect();
            let splats: Vec<Option<(Value, Value)>> = bases
                .iter()
                .zip(&ps)
                .map(|(&(b, bc), &p)| {
                    bc.then(|| {
                        let v = kb.load_f32(p, b);
                        let vv = kb.b.ins().splat(F32X4, v);
                        (v, vv)
                    })
                })
                .collect();
            let operand = |kb: &mut Kb, j: usize, i: Value, vector: bool| match splats[j] {
                Some((v, vv)) => {
                    if vector {
                        vv
                    } else {
                        v
                    }
                }
                None => {
                    let at = kb.b.ins().iadd(bases[j].0, i);
                    if vector {
                        kb.load_f32x4(ps[j], at)
                    } else {
                        kb.load_f32(ps[j], at)
                    }
                }
            };
            for (lo, hi, step) in [(0, nv, 4), (nv, inner, 1)] {
                let vector = step == 4;
                kb.for_range(lo, hi, step, &mut |kb, i| {
                    let v: Vec<Value> = (0..ins.len()).map(|j| operand(kb, j, i, vector)).collect();
                    let t = if vector { F32X4 } else { F32 };
                    let at = kb.b.ins().iadd(oo, i);
                    match body(kb, &v, t) {
                        Ok(r) if vector => kb.store_f32x4(r, op_, at),
                        Ok(r) => kb.store_f32(r, op_, at),
                        Err(e) => err = Some(e),
                    }
                });
            }
        });
        return err;
    }
    crate::kernels::broadcast_loop(kb, ins, out, &mut |kb, offs, oo| {
        let v: Vec<Value> = (0..ins.len())
            .map(|j| load_num(kb, dt, ps[j], offs[j]))
            .collect();
        match body(kb, &v, num.ty()) {
            Ok(r) => store_num(kb, odt, r, op_, oo),
            Err(e) => err = Some(e),
        }
    });
    err
}

/// The first dim `k` such that over dims `k..` every operand is either laid out like the output
/// (contiguous) or broadcast over all of them, with at least 16 elements per row; `None` when
/// there is no such split worth vectorizing.
fn broadcast_split(ins: &[&TensorType], out: &TensorType) -> Option<usize> {
    let r = out.rank();
    let so = kiln_ir::types::strides_of(&out.shape);
    let strides: Vec<Vec<usize>> = ins
        .iter()
        .map(|t| crate::kernels::bcast_strides(&t.shape, &out.shape))
        .collect();
    let ok = |k: usize| {
        strides.iter().all(|st| {
            (k..r).all(|d| st[d] == so[d] || out.shape[d] == 1)
                || (k..r).all(|d| st[d] == 0 || out.shape[d] == 1)
        })
    };
    let k = (0..r).find(|&k| ok(k))?;
    (out.shape[k..].iter().product::<usize>() >= 16).then_some(k)
}

/// Apply a fused kernel epilogue to `x` (F32 scalar or F32X4 lanes; `res` is the residual
/// operand in the same form). Steps without a vector lowering run lane by lane.
pub(crate) fn epilogue(
    kb: &mut Kb,
    steps: &[kiln_ir::ops::EpilogueStep],
    x: Value,
    res: Option<Value>,
    t: Type,
) -> Result<Value, String> {
    let res: Vec<Value> = res.into_iter().collect();
    epilogue_with(kb, steps, x, &res, t)
}

/// [`epilogue`] with one operand per binary step (`add`, `mul`), in order.
pub(crate) fn epilogue_with(
    kb: &mut Kb,
    steps: &[kiln_ir::ops::EpilogueStep],
    mut x: Value,
    operands: &[Value],
    t: Type,
) -> Result<Value, String> {
    let mut operands = operands.iter();
    for step in steps {
        let op = step.as_op();
        let y = if step.is_binary() {
            Some(
                *operands
                    .next()
                    .ok_or("epilogue add without a residual operand")?,
            )
        } else {
            None
        };
        x = if t != F32X4 || is_vector_op(&op) {
            apply_float(kb, &op, x, y, t)?
        } else {
            let mut v = x;
            for l in 0..4u8 {
                let xl = kb.b.ins().extractlane(x, l);
                let yl = y.map(|y| kb.b.ins().extractlane(y, l));
                let r = apply_float(kb, &op, xl, yl, F32)?;
                v = kb.b.ins().insertlane(v, r, l);
            }
            v
        };
    }
    Ok(x)
}
