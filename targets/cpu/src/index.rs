//! Indexed data movement: Gather, GatherElements, ScatterElements, GatherND, ScatterND.
//!
//! Indices are read at run time (i32 or i64) and negative ones count from the end. An index
//! still outside its dimension (ONNX calls it an error) makes the kernel return
//! `KILN_ERR_INDEX` before it is used, so a bad index never addresses memory outside the
//! tensors and never gives a wrong answer.

use crate::ew::{Num, apply, load_num, store_num};
use crate::kb::{I64, Kb, flags, int_ty};
use crate::kernels::{KResult, copy, copy_elem};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::ops::{BinaryOp, PadMode, ScatterReduction};
use kiln_ir::types::strides_of;
use kiln_ir::{DType, Op, TensorType};

/// Element `i` of an index tensor, as i64 in `0..len` (a negative index counts from the
/// end); any other index returns `KILN_ERR_INDEX` from the kernel.
fn load_index(kb: &mut Kb, it: &TensorType, base: Value, i: Value, len: usize) -> Value {
    let raw = load_num(kb, it.dtype, base, i);
    let v = if it.dtype == DType::I32 {
        kb.b.ins().sextend(I64, raw)
    } else {
        raw
    };
    // v + len cannot overflow for a negative v (len <= 2^40)
    let wrapped = kb.b.ins().iadd_imm_s(v, len as i64);
    let neg = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, v, 0);
    let v = kb.b.ins().select(neg, wrapped, v);
    // unsigned: a still-negative index is huge
    let ok =
        kb.b.ins()
            .icmp_imm_u(IntCC::UnsignedLessThan, v, len as i64);
    kb.fail_unless(ok, kiln_runtime::KILN_ERR_INDEX);
    v
}

/// Element `i` of a `resample` table clamped into `0..len`: the op's defined semantics (its
/// tables come from the compiler; a negative first index marks an extrapolated position).
fn load_index_clamped(kb: &mut Kb, it: &TensorType, base: Value, i: Value, len: usize) -> Value {
    let raw = load_num(kb, it.dtype, base, i);
    let v = kb.b.ins().sextend(I64, raw);
    let zero = kb.ic(0);
    let hi = kb.ic(len.saturating_sub(1) as i64);
    let lo_c = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, v, 0);
    let v = kb.b.ins().select(lo_c, zero, v);
    let hi_c = kb.b.ins().icmp(IntCC::SignedGreaterThan, v, hi);
    kb.b.ins().select(hi_c, hi, v)
}

fn reduction_op(r: ScatterReduction) -> Option<Op> {
    Some(Op::Binary(match r {
        ScatterReduction::None => return None,
        ScatterReduction::Add => BinaryOp::Add,
        ScatterReduction::Mul => BinaryOp::Mul,
        ScatterReduction::Max => BinaryOp::Max,
        ScatterReduction::Min => BinaryOp::Min,
    }))
}

/// `out[d] = upd[u]` or `out[d] = out[d] (op) upd[u]`.
fn scatter_one(
    kb: &mut Kb,
    dt: DType,
    red: &Option<Op>,
    (out, d): (Value, Value),
    (upd, u): (Value, Value),
) -> KResult {
    match red {
        None => {
            copy_elem(kb, dt.size(), upd, u, out, d);
            Ok(())
        }
        Some(op) => {
            let num = Num::of(dt).ok_or_else(|| format!("scatter reduction on {dt}"))?;
            let a = load_num(kb, dt, out, d);
            let b = load_num(kb, dt, upd, u);
            let r = apply(kb, op, num, a, Some(b))?;
            store_num(kb, dt, r, out, d);
            Ok(())
        }
    }
}

pub(crate) fn emit(kb: &mut Kb, op: &Op, ins: &[&TensorType]) -> KResult {
    let x = ins[0];
    let it = ins[1];
    let es = x.dtype.size();
    let ps = kb.params.clone();
    let mut err: Option<String> = None;
    match op {
        Op::Gather { axis } => {
            let outer: usize = x.shape[..*axis].iter().product();
            let len = x.shape[*axis];
            let inner: usize = x.shape[axis + 1..].iter().product();
            let nidx = it.numel();
            let op_ = ps[2];
            kb.for_nd(&[outer, nidx], &mut |kb, ix| {
                let (o, n) = (ix[0], ix[1]);
                let k = load_index(kb, it, ps[1], n, len);
                // src = (o*len + k)*inner, dst = (o*nidx + n)*inner
                let s = kb.b.ins().imul_imm_u(o, len as i64);
                let s = kb.b.ins().iadd(s, k);
                let s = kb.b.ins().imul_imm_u(s, inner as i64);
                let d = kb.b.ins().imul_imm_u(o, nidx as i64);
                let d = kb.b.ins().iadd(d, n);
                let d = kb.b.ins().imul_imm_u(d, inner as i64);
                kb.for_n(inner, &mut |kb, i| {
                    let si = kb.b.ins().iadd(s, i);
                    let di = kb.b.ins().iadd(d, i);
                    copy_elem(kb, es, ps[0], si, op_, di);
                });
            });
        }
        Op::GatherElements { axis } | Op::ScatterElements { axis, .. } => {
            let xs = strides_of(&x.shape);
            let is = strides_of(&it.shape);
            let len = x.shape[*axis];
            let red = match op {
                Op::ScatterElements { reduction, .. } => Some(reduction_op(*reduction)),
                _ => None,
            };
            let op_ = ps[ins.len()];
            if red.is_some() {
                copy(kb, 0, ins.len(), x.size_bytes());
            }
            let mut xs_wo = xs.clone();
            xs_wo[*axis] = 0;
            kb.for_nd(&it.shape.clone(), &mut |kb, ix| {
                let io = kb.offset(ix, &is);
                let k = load_index(kb, it, ps[1], io, len);
                let base = kb.offset(ix, &xs_wo);
                let kk = kb.b.ins().imul_imm_u(k, xs[*axis] as i64);
                let xo = kb.b.ins().iadd(base, kk);
                match &red {
                    None => copy_elem(kb, es, ps[0], xo, op_, io),
                    Some(r) => {
                        if let Err(e) = scatter_one(kb, x.dtype, r, (op_, xo), (ps[2], io)) {
                            err = Some(e);
                        }
                    }
                }
            });
        }
        Op::GatherND { .. } | Op::ScatterND { .. } => {
            let b = match op {
                Op::GatherND { batch_dims } => *batch_dims,
                _ => 0,
            };
            let q = it.rank();
            let k = it.shape[q - 1];
            let xs = strides_of(&x.shape);
            let slice: usize = x.shape[b + k..].iter().product();
            let batch: usize = x.shape[..b].iter().product();
            let per_batch: usize = x.shape[b..].iter().product();
            let tuples = it.numel() / k.max(1);
            let per = (tuples / batch.max(1)).max(1);
            let red = match op {
                Op::ScatterND { reduction } => {
                    copy(kb, 0, 3, x.size_bytes());
                    Some(reduction_op(*reduction))
                }
                _ => None,
            };
            let op_ = ps[ins.len()];
            kb.for_n(tuples, &mut |kb, t| {
                // batch offset + sum of index * stride
                let bi = kb.b.ins().udiv_imm_u(t, per as i64);
                let mut off = kb.b.ins().imul_imm_u(bi, per_batch as i64);
                let tk = kb.b.ins().imul_imm_u(t, k as i64);
                for d in 0..k {
                    let ii = kb.b.ins().iadd_imm_u(tk, d as i64);
                    let v = load_index(kb, it, ps[1], ii, x.shape[b + d]);
                    let v = kb.b.ins().imul_imm_u(v, xs[b + d] as i64);
                    off = kb.b.ins().iadd(off, v);
                }
                let ts = kb.b.ins().imul_imm_u(t, slice as i64);
                kb.for_n(slice, &mut |kb, s| {
                    let xo = kb.b.ins().iadd(off, s);
                    let uo = kb.b.ins().iadd(ts, s);
                    match &red {
                        None => copy_elem(kb, es, ps[0], xo, op_, uo),
                        Some(r) => {
                            if let Err(e) = scatter_one(kb, x.dtype, r, (op_, xo), (ps[2], uo)) {
                                err = Some(e);
                            }
                        }
                    }
                });
            });
        }
        _ => return Err(format!("{} is not an index op", op.name())),
    }
    err.map_or(Ok(()), Err)
}

/// The fill value's bytes in `dt` (as the integer of the same width).
fn fill_bits(dt: DType, v: f64) -> i64 {
    match dt {
        DType::F32 => (v as f32).to_bits() as i64,
        DType::F64 => v.to_bits() as i64,
        DType::F16 => half::f16::from_f64(v).to_bits() as i64,
        DType::BF16 => half::bf16::from_f64(v).to_bits() as i64,
        DType::Bool => (v != 0.0) as i64,
        DType::U8 | DType::U16 | DType::U32 | DType::U64 => v as u64 as i64,
        _ => v as i64,
    }
}

/// Pad: every output element reads one input element (edge/wrap/reflect) or the fill (constant).
pub(crate) fn pad(
    kb: &mut Kb,
    pads: &[i64],
    mode: PadMode,
    value: f64,
    x: &TensorType,
    out: &TensorType,
) {
    let r = x.rank();
    let es = x.dtype.size();
    let it = int_ty(es);
    let xs = strides_of(&x.shape);
    let os = strides_of(&out.shape);
    let (xp, op) = (kb.params[0], kb.params[1]);
    let fill = fill_bits(x.dtype, value);
    if x.numel() == 0 {
        // nothing to read: every element is the fill
        kb.for_n(out.numel(), &mut |kb, i| {
            let f = kb.b.ins().iconst(it, fill);
            let oa = kb.addr(op, i, es);
            kb.b.ins().store(flags(), f, oa, 0);
        });
        return;
    }
    kb.for_nd(&out.shape.clone(), &mut |kb, ix| {
        let mut off = kb.ic(0);
        let mut valid: Option<Value> = None;
        for d in 0..r {
            let len = x.shape[d] as i64;
            let j = kb.b.ins().iadd_imm_s(ix[d], -pads[d]);
            let jj = match mode {
                PadMode::Constant => {
                    let ok = kb.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, j, len);
                    valid = Some(match valid {
                        Some(v) => kb.b.ins().band(v, ok),
                        None => ok,
                    });
                    let z = kb.ic(0);
                    kb.b.ins().select(ok, j, z)
                }
                _ if len <= 1 => kb.ic(0),
                PadMode::Edge => {
                    let z = kb.ic(0);
                    let hi = kb.ic(len - 1);
                    let lo = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, j, 0);
                    let v = kb.b.ins().select(lo, z, j);
                    let big = kb.b.ins().icmp(IntCC::SignedGreaterThan, v, hi);
                    kb.b.ins().select(big, hi, v)
                }
                PadMode::Wrap | PadMode::Reflect => {
                    let p = if mode == PadMode::Wrap {
                        len
                    } else {
                        2 * (len - 1)
                    };
                    let pv = kb.ic(p);
                    let m = kb.b.ins().srem(j, pv);
                    let neg = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, m, 0);
                    let mp = kb.b.ins().iadd(m, pv);
                    let m = kb.b.ins().select(neg, mp, m);
                    if mode == PadMode::Wrap {
                        m
                    } else {
                        // m in [0, p): reflect the upper half back
                        let back = kb.b.ins().isub(pv, m);
                        let up =
                            kb.b.ins()
                                .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, m, len);
                        kb.b.ins().select(up, back, m)
                    }
                }
            };
            let t = kb.b.ins().imul_imm_u(jj, xs[d] as i64);
            off = kb.b.ins().iadd(off, t);
        }
        let a = kb.addr(xp, off, es);
        let v = kb.b.ins().load(it, flags(), a, 0);
        let v = match valid {
            Some(ok) => {
                let f = kb.b.ins().iconst(it, fill);
                kb.b.ins().select(ok, v, f)
            }
            None => v,
        };
        let oo = kb.offset(ix, &os);
        let oa = kb.addr(op, oo, es);
        kb.b.ins().store(flags(), v, oa, 0);
    });
}

/// Resample along `axis` through the (i32 index, f32 weight) tables: each output element is a
/// weighted sum of `taps` input elements, or `fill` where the first index is negative.
pub(crate) fn resample(kb: &mut Kb, axis: usize, fill: f32, ins: &[&TensorType]) -> KResult {
    let x = ins[0];
    let dt = x.dtype;
    let num = Num::of(dt)
        .filter(|n| matches!(n, Num::F32 | Num::F64))
        .ok_or_else(|| format!("resample on {dt} is not supported by the CPU back end yet"))?;
    let (out_len, taps) = (ins[1].shape[0], ins[1].shape[1]);
    let outer: usize = x.shape[..axis].iter().product();
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let ps = kb.params.clone();
    let (xp, ip, wp, op) = (ps[0], ps[1], ps[2], ps[3]);
    kb.for_nd(&[outer, out_len, inner], &mut |kb, ix| {
        let (o, j, i) = (ix[0], ix[1], ix[2]);
        let xb = kb.b.ins().imul_imm_u(o, (len * inner) as i64);
        let xb = kb.b.ins().iadd(xb, i);
        let tb = kb.b.ins().imul_imm_u(j, taps as i64);
        let z = crate::ew::fconst(kb, 0.0, num.ty());
        let acc = kb.var(num.ty(), z);
        kb.for_n(taps, &mut |kb, t| {
            let ti = kb.b.ins().iadd(tb, t);
            let k = load_index_clamped(kb, ins[1], ip, ti, len);
            let wv = load_num(kb, DType::F32, wp, ti);
            let wv = if num == Num::F64 {
                kb.b.ins().fpromote(cranelift_codegen::ir::types::F64, wv)
            } else {
                wv
            };
            let xo = kb.b.ins().imul_imm_u(k, inner as i64);
            let xo = kb.b.ins().iadd(xo, xb);
            let v = load_num(kb, dt, xp, xo);
            let a0 = kb.b.use_var(acc);
            let a1 = kb.b.ins().fma(v, wv, a0);
            kb.b.def_var(acc, a1);
        });
        let first = load_num(kb, DType::I32, ip, tb);
        let outside = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, first, 0);
        let f = crate::ew::fconst(kb, fill as f64, num.ty());
        let a = kb.b.use_var(acc);
        let r = kb.b.ins().select(outside, f, a);
        let oo = kb.b.ins().imul_imm_u(o, (out_len * inner) as i64);
        let jj = kb.b.ins().imul_imm_u(j, inner as i64);
        let oo = kb.b.ins().iadd(oo, jj);
        let oo = kb.b.ins().iadd(oo, i);
        store_num(kb, dt, r, op, oo);
    });
    Ok(())
}
