//! Ops that walk one axis with state: CumSum/CumProd and TopK.

use crate::ew::{Num, apply, load_num, store_num};
use crate::kb::{I64, Kb};
use crate::kernels::KResult;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::ops::BinaryOp;
use kiln_ir::{DType, Op, TensorType};

fn num_of(dt: DType, what: &str) -> Result<Num, String> {
    Num::of(dt)
        .filter(|_| dt != DType::Bool)
        .ok_or_else(|| format!("{what} on {dt} is not supported by the CPU back end yet"))
}

/// Running sum/product along `axis` (exclusive: the value before the element; reverse: from
/// the end).
pub(crate) fn cum(
    kb: &mut Kb,
    axis: usize,
    exclusive: bool,
    reverse: bool,
    prod: bool,
    x: &TensorType,
) -> KResult {
    let num = num_of(x.dtype, if prod { "cum_prod" } else { "cum_sum" })?;
    let outer: usize = x.shape[..axis].iter().product();
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let (xp, op) = (kb.params[0], kb.params[1]);
    let f = Op::Binary(if prod { BinaryOp::Mul } else { BinaryOp::Add });
    let dt = x.dtype;
    let mut err = None;
    kb.for_nd(&[outer, inner], &mut |kb, ix| {
        let init = match num {
            Num::F32 => kb.b.ins().f32const(if prod { 1.0 } else { 0.0 }),
            Num::F64 => kb.b.ins().f64const(if prod { 1.0 } else { 0.0 }),
            Num::Int { ty, .. } => kb.b.ins().iconst(ty, prod as i64),
        };
        let acc = kb.var(num.ty(), init);
        let base = kb.offset(ix, &[len * inner, 1]);
        kb.for_n(len, &mut |kb, s| {
            let k = if reverse {
                let l = kb.ic(len as i64 - 1);
                kb.b.ins().isub(l, s)
            } else {
                s
            };
            let t = kb.b.ins().imul_imm_u(k, inner as i64);
            let at = kb.b.ins().iadd(base, t);
            let v = load_num(kb, dt, xp, at);
            let before = kb.b.use_var(acc);
            match apply(kb, &f, num, before, Some(v)) {
                Ok(now) => {
                    kb.b.def_var(acc, now);
                    store_num(kb, dt, if exclusive { before } else { now }, op, at);
                }
                Err(e) => err = Some(e),
            }
        });
    });
    err.map_or(Ok(()), Err)
}

/// `a` strictly before `b` in the order TopK emits (descending for largest).
fn before(kb: &mut Kb, num: Num, largest: bool, a: Value, b: Value) -> Value {
    match num {
        Num::F32 | Num::F64 => {
            let cc = if largest {
                FloatCC::GreaterThan
            } else {
                FloatCC::LessThan
            };
            kb.b.ins().fcmp(cc, a, b)
        }
        Num::Int { signed, .. } => {
            let cc = match (largest, signed) {
                (true, true) => IntCC::SignedGreaterThan,
                (true, false) => IntCC::UnsignedGreaterThan,
                (false, true) => IntCC::SignedLessThan,
                (false, false) => IntCC::UnsignedLessThan,
            };
            kb.b.ins().icmp(cc, a, b)
        }
    }
}

fn equal(kb: &mut Kb, num: Num, a: Value, b: Value) -> Value {
    match num {
        Num::F32 | Num::F64 => kb.b.ins().fcmp(FloatCC::Equal, a, b),
        Num::Int { .. } => kb.b.ins().icmp(IntCC::Equal, a, b),
    }
}

/// TopK by `k` selection passes over each row: pass `r` picks the best element that comes
/// after pick `r-1` in the (value, then lower index) order, so ties keep index order. O(k·n),
/// no scratch memory.
pub(crate) fn top_k(kb: &mut Kb, axis: usize, k: usize, largest: bool, x: &TensorType) -> KResult {
    let num = num_of(x.dtype, "top_k")?;
    let outer: usize = x.shape[..axis].iter().product();
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let (xp, vp, ip) = (kb.params[0], kb.params[1], kb.params[2]);
    let dt = x.dtype;
    kb.for_nd(&[outer, inner], &mut |kb, ix| {
        let (o, i) = (ix[0], ix[1]);
        let start = match num {
            Num::F32 => kb.b.ins().f32const(if largest {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            }),
            Num::F64 => kb.b.ins().f64const(if largest {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            }),
            Num::Int { ty, signed, .. } => {
                let wide = ty.bits() == 64;
                let v: i64 = match (largest, signed) {
                    (true, true) if wide => i64::MAX,
                    (true, true) => i32::MAX as i64,
                    (true, false) => -1,
                    (false, true) if wide => i64::MIN,
                    (false, true) => i32::MIN as i64,
                    (false, false) => 0,
                };
                kb.b.ins().iconst(ty, v)
            }
        };
        let prev_v = kb.var(num.ty(), start);
        let m1 = kb.ic(-1);
        let prev_j = kb.var(I64, m1);
        let row = kb.b.ins().imul_imm_u(o, (len * inner) as i64);
        let row = kb.b.ins().iadd(row, i);
        let orow = kb.b.ins().imul_imm_u(o, (k * inner) as i64);
        let orow = kb.b.ins().iadd(orow, i);
        kb.for_n(k, &mut |kb, r| {
            let (pv, pj) = (kb.b.use_var(prev_v), kb.b.use_var(prev_j));
            let best_v = kb.var(num.ty(), pv);
            let m1 = kb.ic(-1);
            let best_j = kb.var(I64, m1);
            kb.for_n(len, &mut |kb, j| {
                let t = kb.b.ins().imul_imm_u(j, inner as i64);
                let at = kb.b.ins().iadd(row, t);
                let v = load_num(kb, dt, xp, at);
                // eligible: after the previous pick
                let after = before(kb, num, largest, pv, v);
                let same = equal(kb, num, v, pv);
                let later = kb.b.ins().icmp(IntCC::SignedGreaterThan, j, pj);
                let tie_after = kb.b.ins().band(same, later);
                let eligible = kb.b.ins().bor(after, tie_after);
                // improves: the first eligible, or strictly better than the best so far
                let (bv, bj) = (kb.b.use_var(best_v), kb.b.use_var(best_j));
                let none = kb.b.ins().icmp_imm_s(IntCC::Equal, bj, -1);
                let better = before(kb, num, largest, v, bv);
                let improves = kb.b.ins().bor(none, better);
                let take = kb.b.ins().band(eligible, improves);
                let nv = kb.b.ins().select(take, v, bv);
                let nj = kb.b.ins().select(take, j, bj);
                kb.b.def_var(best_v, nv);
                kb.b.def_var(best_j, nj);
            });
            let (bv, bj) = (kb.b.use_var(best_v), kb.b.use_var(best_j));
            let t = kb.b.ins().imul_imm_u(r, inner as i64);
            let oo = kb.b.ins().iadd(orow, t);
            store_num(kb, dt, bv, vp, oo);
            // a row of NaNs picks nothing: report index 0 rather than -1
            let z = kb.ic(0);
            let none = kb.b.ins().icmp_imm_s(IntCC::Equal, bj, -1);
            let idx = kb.b.ins().select(none, z, bj);
            store_num(kb, DType::I64, idx, ip, oo);
            kb.b.def_var(prev_v, bv);
            kb.b.def_var(prev_j, bj);
        });
    });
    Ok(())
}
