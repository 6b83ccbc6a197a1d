//! Direct N-D convolution and pooling for any spatial rank and numeric dtype: scalar loops over
//! the output and the kernel window, out-of-range taps masked. The 1-D/2-D f32 cases take the
//! tiled kernels in `kernels.rs`; this path covers 3-D volumes, integer convolution
//! (ConvInteger/QLinearConv accumulate exactly in i32) and f64/f16.

use crate::ew::{Num, apply, fconst, load_num, store_num};
use crate::kb::{I64, Kb};
use crate::kernels::KResult;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;
use kiln_ir::ops::{BinaryOp, ConvAttrs, PoolAttrs};
use kiln_ir::types::strides_of;
use kiln_ir::{DType, Op, TensorType};

fn num_of(dt: DType, what: &str) -> Result<Num, String> {
    Num::of(dt)
        .filter(|_| dt != DType::Bool)
        .ok_or_else(|| format!("{what} on {dt} is not supported by the CPU back end yet"))
}

/// `acc += x * w` in the accumulator's register form.
fn mac(kb: &mut Kb, num: Num, acc: Variable, x: Value, w: Value) -> Result<(), String> {
    let (add, mul) = (Op::Binary(BinaryOp::Add), Op::Binary(BinaryOp::Mul));
    let a0 = kb.b.use_var(acc);
    let p = apply(kb, &mul, num, x, Some(w))?;
    let a1 = apply(kb, &add, num, a0, Some(p))?;
    kb.b.def_var(acc, a1);
    Ok(())
}

/// Element index of output position `o` (strides `os`) of image `n`, channel `c` of `m`.
fn out_index(
    kb: &mut Kb,
    o: &[Value],
    os: &[usize],
    (n, c): (Value, Value),
    m: usize,
    plane: usize,
) -> Value {
    let oo = kb.offset(o, os);
    let ob = kb.b.ins().imul_imm_u(n, (m * plane) as i64);
    let oc = kb.b.ins().imul_imm_u(c, plane as i64);
    let oo = kb.b.ins().iadd(oo, ob);
    kb.b.ins().iadd(oo, oc)
}

fn zero(kb: &mut Kb, num: Num) -> Value {
    match num {
        Num::F32 | Num::F64 => fconst(kb, 0.0, num.ty()),
        Num::Int { ty, .. } => kb.b.ins().iconst(ty, 0),
    }
}

/// Input coordinates of one kernel tap: `o*s - p + k*d` per spatial dim, whether all are inside
/// the input, and the flat spatial offset (0 when outside, so the load stays in bounds).
fn tap(
    kb: &mut Kb,
    o: &[Value],
    k: &[Value],
    (strides, pads, dil): (&[usize], &[usize], &[usize]),
    in_sp: &[usize],
) -> (Value, Value, Vec<Value>) {
    let sp = in_sp.len();
    let st = strides_of(in_sp);
    let mut ok: Option<Value> = None;
    let mut off = kb.ic(0);
    let mut pos = Vec::with_capacity(sp);
    for d in 0..sp {
        let a = kb.b.ins().imul_imm_u(o[d], strides[d] as i64);
        let b = kb.b.ins().imul_imm_u(k[d], dil[d] as i64);
        let i = kb.b.ins().iadd(a, b);
        let i = kb.b.ins().iadd_imm_s(i, -(pads[d] as i64));
        pos.push(i);
        let inside =
            kb.b.ins()
                .icmp_imm_u(IntCC::UnsignedLessThan, i, in_sp[d] as i64);
        ok = Some(match ok {
            Some(v) => kb.b.ins().band(v, inside),
            None => inside,
        });
        let t = kb.b.ins().imul_imm_u(i, st[d] as i64);
        off = kb.b.ins().iadd(off, t);
    }
    let ok = ok.expect("spatial dims");
    let z = kb.ic(0);
    let off = kb.b.ins().select(ok, off, z);
    (ok, off, pos)
}

/// Convolution with groups/strides/pads/dilations over any number of spatial dims.
pub(crate) fn conv(kb: &mut Kb, a: &ConvAttrs, ins: &[&TensorType], out: &TensorType) -> KResult {
    let (x, w) = (ins[0], ins[1]);
    let dt = x.dtype;
    let num = num_of(dt, "conv")?;
    if w.dtype != dt || out.dtype != dt {
        return Err(format!("conv needs one element type, got {} and {}", x, w));
    }
    let sp = a.kernel.len();
    let (n, c, m) = (x.shape[0], x.shape[1], out.shape[1]);
    let (cg, mg) = (c / a.groups, m / a.groups);
    let in_sp = x.shape[2..].to_vec();
    let out_sp = out.shape[2..].to_vec();
    let in_plane: usize = in_sp.iter().product();
    let out_plane: usize = out_sp.iter().product();
    let kn: usize = a.kernel.iter().product();
    let ps = kb.params.clone();
    let (xp, wp) = (ps[0], ps[1]);
    let bp = (ins.len() >= 3).then(|| ps[2]);
    let rp = (ins.len() == 4).then(|| ps[3]);
    let op = ps[ins.len()];
    let os = strides_of(&out_sp);
    let ks = strides_of(&a.kernel);
    let pads = &a.pads[..sp];
    let mut err = None;
    let mut dims = vec![n, m];
    dims.extend_from_slice(&out_sp);
    kb.for_nd(&dims, &mut |kb, ix| {
        let (ni, mi) = (ix[0], ix[1]);
        let o = &ix[2..];
        let init = match bp {
            Some(b) => load_num(kb, dt, b, mi),
            None => zero(kb, num),
        };
        let acc = kb.var(num.ty(), init);
        let g = kb.b.ins().udiv_imm_u(mi, mg as i64);
        let c0 = kb.b.ins().imul_imm_u(g, cg as i64);
        let nb = kb.b.ins().imul_imm_u(ni, (c * in_plane) as i64);
        let wb = kb.b.ins().imul_imm_u(mi, (cg * kn) as i64);
        kb.for_n(cg, &mut |kb, ci| {
            let ch = kb.b.ins().iadd(c0, ci);
            let xb = kb.b.ins().imul_imm_u(ch, in_plane as i64);
            let xb = kb.b.ins().iadd(xb, nb);
            let wc = kb.b.ins().imul_imm_u(ci, kn as i64);
            let wc = kb.b.ins().iadd(wc, wb);
            kb.for_nd(&a.kernel.clone(), &mut |kb, k| {
                let (ok, off, _) = tap(kb, o, k, (&a.strides, pads, &a.dilations), &in_sp);
                let xo = kb.b.ins().iadd(xb, off);
                let xv = load_num(kb, dt, xp, xo);
                let z = zero(kb, num);
                let xv = kb.b.ins().select(ok, xv, z);
                let ko = kb.offset(k, &ks);
                let wo = kb.b.ins().iadd(wc, ko);
                let wv = load_num(kb, dt, wp, wo);
                if let Err(e) = mac(kb, num, acc, xv, wv) {
                    err = Some(e);
                }
            });
        });
        let oo = out_index(kb, o, &os, (ni, mi), m, out_plane);
        let mut r = kb.b.use_var(acc);
        if !a.epilogue.is_empty() {
            let res = rp.map(|rp| load_num(kb, dt, rp, oo));
            for step in &a.epilogue {
                let y = if *step == kiln_ir::ops::EpilogueStep::Add {
                    res
                } else {
                    None
                };
                match apply(kb, &step.as_op(), num, r, y) {
                    Ok(v) => r = v,
                    Err(e) => err = Some(e),
                }
            }
        }
        store_num(kb, dt, r, op, oo);
    });
    err.map_or(Ok(()), Err)
}

/// Max or average pooling over any number of spatial dims (average: divide by the taps inside
/// the input, or inside the padded input with `count_include_pad`).
pub(crate) fn pool(
    kb: &mut Kb,
    a: &PoolAttrs,
    is_max: bool,
    x: &TensorType,
    out: &TensorType,
) -> KResult {
    let dt = x.dtype;
    let num = num_of(dt, if is_max { "max_pool" } else { "average_pool" })?;
    if !is_max && !matches!(num, Num::F32 | Num::F64) {
        return Err(format!("average_pool on {dt} is not supported"));
    }
    let sp = a.kernel.len();
    let nc = x.shape[0] * x.shape[1];
    let in_sp = x.shape[2..].to_vec();
    let out_sp = out.shape[2..].to_vec();
    let in_plane: usize = in_sp.iter().product();
    let out_plane: usize = out_sp.iter().product();
    let (xp, op) = (kb.params[0], kb.params[1]);
    let os = strides_of(&out_sp);
    let pads = &a.pads[..sp];
    let padded: Vec<usize> = (0..sp)
        .map(|d| in_sp[d] + a.pads[d] + a.pads[sp + d])
        .collect();
    let red = Op::Binary(if is_max { BinaryOp::Max } else { BinaryOp::Add });
    let mut err = None;
    let mut dims = vec![nc];
    dims.extend_from_slice(&out_sp);
    kb.for_nd(&dims, &mut |kb, ix| {
        let o = &ix[1..];
        let init = match (is_max, num) {
            (true, Num::F32 | Num::F64) => fconst(kb, f64::NEG_INFINITY, num.ty()),
            (true, Num::Int { ty, signed, .. }) => {
                let v = match (ty.bits(), signed) {
                    (64, true) => i64::MIN,
                    (_, true) => i32::MIN as i64,
                    _ => 0,
                };
                kb.b.ins().iconst(ty, v)
            }
            _ => zero(kb, num),
        };
        let acc = kb.var(num.ty(), init);
        let z = kb.ic(0);
        let cnt = kb.var(I64, z);
        let xb = kb.b.ins().imul_imm_u(ix[0], in_plane as i64);
        kb.for_nd(&a.kernel.clone(), &mut |kb, k| {
            let (ok, off, pos) = tap(kb, o, k, (&a.strides, pads, &a.dilations), &in_sp);
            let xo = kb.b.ins().iadd(xb, off);
            let v = load_num(kb, dt, xp, xo);
            let a0 = kb.b.use_var(acc);
            match apply(kb, &red, num, a0, Some(v)) {
                Ok(a1) => {
                    let a1 = kb.b.ins().select(ok, a1, a0);
                    kb.b.def_var(acc, a1);
                }
                Err(e) => err = Some(e),
            }
            // taps that count for the average
            let counted = if a.count_include_pad {
                let mut inpad: Option<Value> = None;
                for d in 0..sp {
                    let q = kb.b.ins().iadd_imm_s(pos[d], a.pads[d] as i64);
                    let t =
                        kb.b.ins()
                            .icmp_imm_u(IntCC::UnsignedLessThan, q, padded[d] as i64);
                    inpad = Some(match inpad {
                        Some(v) => kb.b.ins().band(v, t),
                        None => t,
                    });
                }
                inpad.expect("spatial dims")
            } else {
                ok
            };
            let c0 = kb.b.use_var(cnt);
            let one = kb.b.ins().uextend(I64, counted);
            let c1 = kb.b.ins().iadd(c0, one);
            kb.b.def_var(cnt, c1);
        });
        let mut r = kb.b.use_var(acc);
        if !is_max {
            let c = kb.b.use_var(cnt);
            let one = kb.ic(1);
            let c = kb.b.ins().smax(c, one);
            let cf = kb.b.ins().fcvt_from_sint(num.ty(), c);
            r = kb.b.ins().fdiv(r, cf);
        }
        let oo = kb.offset(o, &os);
        let ob = kb.b.ins().imul_imm_u(ix[0], out_plane as i64);
        let oo = kb.b.ins().iadd(oo, ob);
        store_num(kb, dt, r, op, oo);
    });
    err.map_or(Ok(()), Err)
}

/// Transposed convolution over any number of spatial dims: every output position gathers the
/// input positions `i = (o + pad - k*dil) / stride` that divide exactly and lie inside.
pub(crate) fn conv_transpose(
    kb: &mut Kb,
    a: &kiln_ir::ops::ConvTransposeAttrs,
    ins: &[&TensorType],
    out: &TensorType,
) -> KResult {
    let x = ins[0];
    let dt = x.dtype;
    let num = num_of(dt, "conv_transpose")?;
    let sp = a.kernel.len();
    let (n, c, m) = (x.shape[0], x.shape[1], out.shape[1]);
    let (cg, mg) = (c / a.groups, m / a.groups);
    let in_sp = x.shape[2..].to_vec();
    let out_sp = out.shape[2..].to_vec();
    let in_plane: usize = in_sp.iter().product();
    let out_plane: usize = out_sp.iter().product();
    let kn: usize = a.kernel.iter().product();
    let ps = kb.params.clone();
    let (xp, wp) = (ps[0], ps[1]);
    let bp = (ins.len() == 3).then(|| ps[2]);
    let op = ps[ins.len()];
    let os = strides_of(&out_sp);
    let ks = strides_of(&a.kernel);
    let xs = strides_of(&in_sp);
    let mut err = None;
    let mut dims = vec![n, m];
    dims.extend_from_slice(&out_sp);
    kb.for_nd(&dims, &mut |kb, ix| {
        let (ni, mi) = (ix[0], ix[1]);
        let o = &ix[2..];
        let init = match bp {
            Some(b) => load_num(kb, dt, b, mi),
            None => zero(kb, num),
        };
        let acc = kb.var(num.ty(), init);
        let g = kb.b.ins().udiv_imm_u(mi, mg as i64);
        let mr = kb.b.ins().imul_imm_u(g, mg as i64);
        let mr = kb.b.ins().isub(mi, mr);
        let c0 = kb.b.ins().imul_imm_u(g, cg as i64);
        let nb = kb.b.ins().imul_imm_u(ni, (c * in_plane) as i64);
        kb.for_nd(&a.kernel.clone(), &mut |kb, k| {
            // input position per dim, valid when exact and inside
            let mut ok: Option<Value> = None;
            let mut off = kb.ic(0);
            for d in 0..sp {
                let kd = kb.b.ins().imul_imm_u(k[d], a.dilations[d] as i64);
                let t = kb.b.ins().iadd_imm_s(o[d], a.pads[d] as i64);
                let t = kb.b.ins().isub(t, kd);
                let s = a.strides[d] as i64;
                let nonneg = kb.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, t, 0);
                let z = kb.ic(0);
                let t = kb.b.ins().select(nonneg, t, z);
                let q = kb.b.ins().udiv_imm_u(t, s);
                let back = kb.b.ins().imul_imm_u(q, s);
                let exact = kb.b.ins().icmp(IntCC::Equal, back, t);
                let inside =
                    kb.b.ins()
                        .icmp_imm_u(IntCC::UnsignedLessThan, q, in_sp[d] as i64);
                let v = kb.b.ins().band(nonneg, exact);
                let v = kb.b.ins().band(v, inside);
                ok = Some(match ok {
                    Some(p) => kb.b.ins().band(p, v),
                    None => v,
                });
                let q = kb.b.ins().select(v, q, z);
                let t = kb.b.ins().imul_imm_u(q, xs[d] as i64);
                off = kb.b.ins().iadd(off, t);
            }
            let ok = ok.expect("spatial dims");
            let ko = kb.offset(k, &ks);
            kb.for_n(cg, &mut |kb, ci| {
                let ch = kb.b.ins().iadd(c0, ci);
                let xo = kb.b.ins().imul_imm_u(ch, in_plane as i64);
                let xo = kb.b.ins().iadd(xo, nb);
                let xo = kb.b.ins().iadd(xo, off);
                let xv = load_num(kb, dt, xp, xo);
                let z = zero(kb, num);
                let xv = kb.b.ins().select(ok, xv, z);
                // w[ch, mr, k..]
                let wo = kb.b.ins().imul_imm_u(ch, (mg * kn) as i64);
                let wm = kb.b.ins().imul_imm_u(mr, kn as i64);
                let wo = kb.b.ins().iadd(wo, wm);
                let wo = kb.b.ins().iadd(wo, ko);
                let wv = load_num(kb, dt, wp, wo);
                if let Err(e) = mac(kb, num, acc, xv, wv) {
                    err = Some(e);
                }
            });
        });
        let oo = out_index(kb, o, &os, (ni, mi), m, out_plane);
        let r = kb.b.use_var(acc);
        store_num(kb, dt, r, op, oo);
    });
    err.map_or(Ok(()), Err)
}

/// MaxPool's index output: the flat input index (batch and channel included) of each window's
/// first maximum; `storage_order` makes the spatial part column-major.
pub(crate) fn max_pool_indices(
    kb: &mut Kb,
    a: &PoolAttrs,
    storage_order: bool,
    x: &TensorType,
    out: &TensorType,
) -> KResult {
    let dt = x.dtype;
    let num = num_of(dt, "max_pool")?;
    let sp = a.kernel.len();
    let nc = x.shape[0] * x.shape[1];
    let in_sp = x.shape[2..].to_vec();
    let out_sp = out.shape[2..].to_vec();
    let in_plane: usize = in_sp.iter().product();
    let out_plane: usize = out_sp.iter().product();
    let (xp, op) = (kb.params[0], kb.params[1]);
    let os = strides_of(&out_sp);
    // column-major strides of the spatial dims
    let mut cm = vec![1usize; sp];
    for d in 1..sp {
        cm[d] = cm[d - 1] * in_sp[d - 1];
    }
    let pads = &a.pads[..sp];
    let mut dims = vec![nc];
    dims.extend_from_slice(&out_sp);
    kb.for_nd(&dims, &mut |kb, ix| {
        let o = &ix[1..];
        let xb = kb.b.ins().imul_imm_u(ix[0], in_plane as i64);
        let init = match num {
            Num::F32 | Num::F64 => fconst(kb, f64::NEG_INFINITY, num.ty()),
            Num::Int { ty, .. } => kb.b.ins().iconst(ty, i64::MIN),
        };
        let best = kb.var(num.ty(), init);
        let m1 = kb.ic(-1);
        let best_i = kb.var(I64, m1);
        kb.for_nd(&a.kernel.clone(), &mut |kb, k| {
            let (ok, off, pos) = tap(kb, o, k, (&a.strides, pads, &a.dilations), &in_sp);
            let xo = kb.b.ins().iadd(xb, off);
            let v = load_num(kb, dt, xp, xo);
            let (b0, i0) = (kb.b.use_var(best), kb.b.use_var(best_i));
            let better = match num {
                Num::F32 | Num::F64 => kb.b.ins().fcmp(
                    cranelift_codegen::ir::condcodes::FloatCC::GreaterThan,
                    v,
                    b0,
                ),
                Num::Int { signed, .. } => {
                    let cc = if signed {
                        IntCC::SignedGreaterThan
                    } else {
                        IntCC::UnsignedGreaterThan
                    };
                    kb.b.ins().icmp(cc, v, b0)
                }
            };
            let first = kb.b.ins().icmp_imm_s(IntCC::Equal, i0, -1);
            let take = kb.b.ins().bor(better, first);
            let take = kb.b.ins().band(take, ok);
            let idx = if storage_order {
                let mut acc = kb.ic(0);
                for d in 0..sp {
                    let t = kb.b.ins().imul_imm_u(pos[d], cm[d] as i64);
                    acc = kb.b.ins().iadd(acc, t);
                }
                kb.b.ins().iadd(acc, xb)
            } else {
                xo
            };
            let nb = kb.b.ins().select(take, v, b0);
            let ni = kb.b.ins().select(take, idx, i0);
            kb.b.def_var(best, nb);
            kb.b.def_var(best_i, ni);
        });
        let oo = kb.offset(o, &os);
        let ob = kb.b.ins().imul_imm_u(ix[0], out_plane as i64);
        let oo = kb.b.ins().iadd(oo, ob);
        let i = kb.b.use_var(best_i);
        let z = kb.ic(0);
        let none = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, i, 0);
        let i = kb.b.ins().select(none, z, i);
        store_num(kb, DType::I64, i, op, oo);
    });
    Ok(())
}
