//! One generated function per op: the lowering of every IR op to Cranelift, with all shapes
//! known at compile time (strides become immediates). Kernels take one pointer per input and
//! then one per output.

use crate::ew::{Num, apply, fconst_like, load_num, store_num};
use crate::kb::{F32, F32X4, I64, Kb, int_ty};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{FuncRef, InstBuilder, Value, types};
use cranelift_frontend::Variable;
use kiln_ir::ops::{
    BinaryOp, CmpOp, ConvAttrs, ConvTransposeAttrs, CoordTransform, EpilogueStep, GemmAttrs,
    LogicOp, MatMulAttrs, NearestMode, PoolAttrs, ReduceKind, ResizeAttrs, ResizeMode, SliceAttrs,
    SoftmaxKind, UnaryOp, broadcast_shapes,
};
use kiln_ir::types::strides_of;
use kiln_ir::{DType, Node, Op, TensorType};

/// Why an op cannot be lowered (names the op; the caller adds the node).
pub(crate) type KResult = Result<(), String>;

pub(crate) fn emit(kb: &mut Kb, node: &Node, ins: &[&TensorType], outs: &[&TensorType]) -> KResult {
    let float_only = |t: &TensorType| -> KResult {
        if t.dtype == DType::F32 {
            Ok(())
        } else {
            Err(format!(
                "{} on {} is not supported by the CPU back end yet",
                node.op.name(),
                t.dtype
            ))
        }
    };
    let blocked = ins.iter().chain(outs).any(|t| !t.layout.is_plain());
    match &node.op {
        Op::Relayout { .. } => {
            if let Some((rk, f)) = kb.rows.clone() {
                // to or from the wide kernels' block: the LLVM transposing row kernel
                let zero = kb.ic(0);
                let (xp, op) = (kb.params[0], kb.params[1]);
                call_wide(kb, f, [xp, zero, zero, zero, op], rk.work(), rk.parallel);
            } else {
                relayout(kb, ins[0], outs[0]);
            }
            return Ok(());
        }
        // channel-blocked convolutions and pools exist only as wide kernels
        Op::Conv(_) | Op::MaxPool(_) if blocked && kb.ukernel.is_none() => {
            return Err(format!(
                "{} with layouts {} -> {} has no CPU kernel (blocked convolutions and pools are \
                 wide LLVM kernels on blocks of the target's vector width)",
                node.op.name(),
                ins[0].layout,
                outs[0].layout
            ));
        }
        Op::GlobalAveragePool if blocked => {
            float_only(ins[0])?;
            blocked_global_pool(kb, ins[0]);
            return Ok(());
        }
        // elementwise ops see operands of one shape and layout: the same loop serves
        op if op.is_elementwise() => {}
        Op::Conv(_) | Op::MaxPool(_) => {}
        // along the channels a blocked part is one run of whole blocks per image, where the
        // plain part would be: the same block copies serve
        Op::Concat { axis: 1 } | Op::Split { axis: 1, .. } => {}
        _ if blocked => {
            return Err(format!(
                "{} on layouts other than plain is not supported by the CPU back end",
                node.op.name()
            ));
        }
        _ => {}
    }
    match &node.op {
        Op::Relayout { .. } => unreachable!("handled above"),
        Op::If(_) | Op::Loop(_) => Err("control flow is emitted by flow::emit".into()),
        Op::Unary(_)
        | Op::Clip { .. }
        | Op::Act { .. }
        | Op::Binary(_)
        | Op::IsNaN
        | Op::IsInf { .. } => crate::ew::elementwise(kb, &node.op, ins, outs[0]),
        Op::Chain { steps } => crate::ew::chain(kb, steps, ins, outs[0]),
        Op::Cast { to } => cast(kb, ins[0], *to),
        Op::BitCast { .. } => {
            copy(kb, 0, 1, ins[0].size_bytes());
            Ok(())
        }
        Op::Compare(c) => compare(kb, *c, ins, outs[0]),
        Op::ArgExtreme {
            max,
            axis,
            select_last,
            ..
        } => {
            float_only(ins[0])?;
            arg_extreme(kb, *max, *axis, *select_last, ins[0]);
            Ok(())
        }
        Op::Logical(_) | Op::Not | Op::Where => {
            logic_where(kb, &node.op, ins, outs[0]);
            Ok(())
        }
        Op::Conv(a)
            if a.kernel.len() > 2
                || ins[0].dtype != DType::F32
                || (kb.ukernel.is_none()
                    && (!taps_unrollable(&a.kernel)
                        || Geom::tiled(
                            (&a.kernel, &a.strides, &a.pads, &a.dilations),
                            a.groups,
                            ins[0],
                            outs[0],
                        )
                        .is_err())) =>
        {
            crate::direct::conv(kb, a, ins, outs[0])
        }
        Op::Conv(a) => conv(kb, a, ins, outs[0]),
        Op::ConvTranspose(a) if a.kernel.len() > 2 || ins[0].dtype != DType::F32 => {
            crate::direct::conv_transpose(kb, a, ins, outs[0])
        }
        Op::ConvTranspose(a) => conv_transpose(kb, a, ins, outs[0]),
        Op::Gemm(a) => {
            float_only(ins[0])?;
            gemm(kb, a, ins, outs[0]);
            // a fused activation: a pass over the (small) output in the same kernel function
            let op = kb.params[ins.len()];
            epilogue_passes(kb, &a.epilogue, &[], op, outs[0])
        }
        Op::MatMul(a) => matmul(kb, a, ins, outs[0]),
        Op::BatchNorm { epsilon } => {
            float_only(ins[0])?;
            batch_norm(kb, *epsilon, ins[0]);
            Ok(())
        }
        Op::MaxPool(a) | Op::AveragePool(a) if a.kernel.len() > 2 || ins[0].dtype != DType::F32 => {
            crate::direct::pool(kb, a, matches!(node.op, Op::MaxPool(_)), ins[0], outs[0])
        }
        Op::MaxPool(_) if kb.ukernel.is_some() => {
            wide_pool(kb, ins[0], outs[0]);
            Ok(())
        }
        Op::MaxPool(a) => pool(kb, a, true, ins[0], outs[0]),
        Op::MaxPoolIndices {
            attrs,
            storage_order,
        } => crate::direct::max_pool_indices(kb, attrs, *storage_order, ins[0], outs[0]),
        Op::AveragePool(a) => pool(kb, a, false, ins[0], outs[0]),
        Op::GlobalAveragePool => {
            float_only(ins[0])?;
            let x = ins[0];
            let (nc, hw) = (
                x.shape[0] * x.shape[1],
                x.shape[2..].iter().product::<usize>(),
            );
            reduce_rows(kb, nc, hw, 1.0 / hw as f32);
            Ok(())
        }
        Op::Reshape { .. } => {
            // a view: the memory planner gives it its input's storage; only reached when the
            // planner had to separate them (never today), so copy.
            copy(kb, 0, 1, ins[0].size_bytes());
            Ok(())
        }
        Op::Expand { .. } => {
            let es = outs[0].dtype.size();
            let (xp, op) = (kb.params[0], kb.params[1]);
            broadcast_loop(kb, ins, outs[0], &mut |kb, offs, oo| {
                copy_elem(kb, es, xp, offs[0], op, oo);
            });
            Ok(())
        }
        Op::Transpose { perm } => {
            transpose(kb, perm, ins[0], outs[0]);
            Ok(())
        }
        Op::Concat { axis } => {
            concat(kb, *axis, ins, outs[0], true);
            Ok(())
        }
        Op::Split { axis, .. } => {
            concat(kb, *axis, outs, ins[0], false);
            Ok(())
        }
        Op::Slice(a) => {
            slice(kb, a, ins[0]);
            Ok(())
        }
        Op::Softmax { axis, kind } => softmax(kb, *axis, *kind, ins[0]),
        Op::LayerNorm { axis, epsilon } => layer_norm(kb, *axis, *epsilon, ins),
        Op::Pad { pads, mode, value } => {
            crate::index::pad(kb, pads, *mode, *value, ins[0], outs[0]);
            Ok(())
        }
        Op::Resample { axis, fill } => crate::index::resample(kb, *axis, *fill, ins),
        Op::CumSum {
            axis,
            exclusive,
            reverse,
            prod,
        } => crate::scan::cum(kb, *axis, *exclusive, *reverse, *prod, ins[0]),
        Op::TopK { axis, k, largest } => crate::scan::top_k(kb, *axis, *k, *largest, ins[0]),
        Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::ScatterElements { .. }
        | Op::GatherND { .. }
        | Op::ScatterND { .. } => crate::index::emit(kb, &node.op, ins),
        Op::Reduce { kind, axes, .. } => reduce(kb, *kind, axes, ins[0]),
        Op::Resize(a) => {
            float_only(ins[0])?;
            resize(kb, a, ins[0])
        }
    }
}

/// Strides of `t` broadcast to `out` (0 on broadcast dims), aligned to the right.
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

/// ArgMax / ArgMin along one axis: i64 indices.
fn arg_extreme(kb: &mut Kb, max: bool, axis: usize, select_last: bool, x: &TensorType) {
    let outer: usize = x.shape[..axis].iter().product();
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let (xp, op) = (kb.params[0], kb.params[1]);
    let cc = match (max, select_last) {
        (true, false) => FloatCC::GreaterThan,
        (true, true) => FloatCC::GreaterThanOrEqual,
        (false, false) => FloatCC::LessThan,
        (false, true) => FloatCC::LessThanOrEqual,
    };
    kb.for_nd(&[outer, inner], &mut |kb, idx| {
        let base = kb.offset(idx, &[len * inner, 1]);
        let first = kb.load_f32(xp, base);
        let best = kb.var(F32, first);
        let z = kb.ic(0);
        let at = kb.var(I64, z);
        kb.for_range(1, len, 1, &mut |kb, l| {
            let o = kb.b.ins().imul_imm_u(l, inner as i64);
            let o = kb.b.ins().iadd(o, base);
            let v = kb.load_f32(xp, o);
            let b0 = kb.b.use_var(best);
            let better = kb.b.ins().fcmp(cc, v, b0);
            let b1 = kb.b.ins().select(better, v, b0);
            kb.b.def_var(best, b1);
            let a0 = kb.b.use_var(at);
            let a1 = kb.b.ins().select(better, l, a0);
            kb.b.def_var(at, a1);
        });
        let oo = kb.offset(idx, &[inner, 1]);
        let a = kb.b.use_var(at);
        let oa = kb.addr(op, oo, 8);
        kb.b.ins().store(crate::kb::flags(), a, oa, 0);
    });
}

/// Nested loops over `out` with each input's broadcast element offset.
pub(crate) fn broadcast_loop(
    kb: &mut Kb,
    ins: &[&TensorType],
    out: &TensorType,
    body: &mut dyn FnMut(&mut Kb, &[Value], Value),
) {
    let strides: Vec<Vec<usize>> = ins
        .iter()
        .map(|t| bcast_strides(&t.shape, &out.shape))
        .collect();
    let so = strides_of(&out.shape);
    kb.for_nd(&out.shape.clone(), &mut |kb, idx| {
        let offs: Vec<Value> = strides.iter().map(|s| kb.offset(idx, s)).collect();
        let oo = kb.offset(idx, &so);
        body(kb, &offs, oo);
    });
}

fn compare(kb: &mut Kb, c: CmpOp, ins: &[&TensorType], out: &TensorType) -> KResult {
    let dt = ins[0].dtype;
    let num = Num::of(dt).ok_or_else(|| {
        format!(
            "{} on {dt} is not supported by the CPU back end yet",
            c.name()
        )
    })?;
    let (ap, bp, op) = (kb.params[0], kb.params[1], kb.params[2]);
    broadcast_loop(kb, ins, out, &mut |kb, offs, oo| {
        let a = load_num(kb, dt, ap, offs[0]);
        let b = load_num(kb, dt, bp, offs[1]);
        let r = match num {
            Num::F32 | Num::F64 => {
                let cc = match c {
                    CmpOp::Equal => FloatCC::Equal,
                    CmpOp::Less => FloatCC::LessThan,
                    CmpOp::Greater => FloatCC::GreaterThan,
                    CmpOp::LessOrEqual => FloatCC::LessThanOrEqual,
                    CmpOp::GreaterOrEqual => FloatCC::GreaterThanOrEqual,
                };
                kb.b.ins().fcmp(cc, a, b)
            }
            Num::Int { signed, .. } => {
                let cc = match (c, signed) {
                    (CmpOp::Equal, _) => IntCC::Equal,
                    (CmpOp::Less, true) => IntCC::SignedLessThan,
                    (CmpOp::Less, false) => IntCC::UnsignedLessThan,
                    (CmpOp::Greater, true) => IntCC::SignedGreaterThan,
                    (CmpOp::Greater, false) => IntCC::UnsignedGreaterThan,
                    (CmpOp::LessOrEqual, true) => IntCC::SignedLessThanOrEqual,
                    (CmpOp::LessOrEqual, false) => IntCC::UnsignedLessThanOrEqual,
                    (CmpOp::GreaterOrEqual, true) => IntCC::SignedGreaterThanOrEqual,
                    (CmpOp::GreaterOrEqual, false) => IntCC::UnsignedGreaterThanOrEqual,
                };
                kb.b.ins().icmp(cc, a, b)
            }
        };
        let oa = kb.addr(op, oo, 1);
        kb.b.ins().store(crate::kb::flags(), r, oa, 0);
    });
    Ok(())
}

/// And/Or/Xor/Not on bytes holding 0/1, and Where (a bit copy of either operand, any dtype).
fn logic_where(kb: &mut Kb, op: &Op, ins: &[&TensorType], out: &TensorType) {
    let ps = kb.params.clone();
    let es = out.dtype.size();
    let flags = crate::kb::flags();
    broadcast_loop(kb, ins, out, &mut |kb, offs, oo| {
        let byte = |kb: &mut Kb, k: usize| {
            let a = kb.addr(ps[k], offs[k], 1);
            kb.b.ins().load(types::I8, flags, a, 0)
        };
        let r = match op {
            Op::Logical(l) => {
                let (a, b) = (byte(kb, 0), byte(kb, 1));
                match l {
                    LogicOp::And => kb.b.ins().band(a, b),
                    LogicOp::Or => kb.b.ins().bor(a, b),
                    LogicOp::Xor => kb.b.ins().bxor(a, b),
                }
            }
            Op::Not => {
                let a = byte(kb, 0);
                kb.b.ins().bxor_imm_u(a, 1)
            }
            _ => {
                let c = byte(kb, 0);
                let xa = kb.addr(ps[1], offs[1], es);
                let x = kb.b.ins().load(int_ty(es), flags, xa, 0);
                let ya = kb.addr(ps[2], offs[2], es);
                let y = kb.b.ins().load(int_ty(es), flags, ya, 0);
                kb.b.ins().select(c, x, y)
            }
        };
        let oa = kb.addr(ps[ins.len()], oo, es);
        kb.b.ins().store(flags, r, oa, 0);
    });
}

fn load_as(kb: &mut Kb, dt: DType, base: Value, i: Value) -> Value {
    let a = kb.addr(base, i, dt.size());
    let f = crate::kb::flags();
    match dt {
        DType::F32 => kb.b.ins().load(F32, f, a, 0),
        DType::F64 => kb.b.ins().load(types::F64, f, a, 0),
        _ => kb.b.ins().load(int_ty(dt.size()), f, a, 0),
    }
}

fn cast(kb: &mut Kb, x: &TensorType, to: DType) -> KResult {
    let (xp, op) = (kb.params[0], kb.params[1]);
    let from = x.dtype;
    kb.for_n(x.numel(), &mut |kb, i| {
        // canonical: floats as f64, integers as i64 (16-bit floats load as f32)
        let (fv, iv) = match from {
            DType::F32 | DType::F16 | DType::BF16 => {
                let v = load_num(kb, from, xp, i);
                (Some(kb.b.ins().fpromote(types::F64, v)), None)
            }
            DType::F64 => (Some(load_num(kb, from, xp, i)), None),
            DType::I64 | DType::U64 => (None, Some(load_as(kb, from, xp, i))),
            DType::U8 | DType::U16 | DType::U32 | DType::Bool => {
                let v = load_as(kb, from, xp, i);
                (None, Some(kb.b.ins().uextend(I64, v)))
            }
            _ => {
                let v = load_as(kb, from, xp, i);
                (None, Some(kb.b.ins().sextend(I64, v)))
            }
        };
        let unsigned_src = from == DType::U64;
        let r = match to {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                let f = match (fv, iv) {
                    (Some(f), _) => f,
                    (None, Some(i)) if unsigned_src => kb.b.ins().fcvt_from_uint(types::F64, i),
                    (None, Some(i)) => kb.b.ins().fcvt_from_sint(types::F64, i),
                    _ => unreachable!(),
                };
                if to == DType::F64 {
                    f
                } else {
                    let f = kb.b.ins().fdemote(F32, f);
                    match to {
                        DType::F16 => crate::fp16::f32_to_f16(kb, f),
                        DType::BF16 => crate::fp16::f32_to_bf16(kb, f),
                        _ => f,
                    }
                }
            }
            DType::Bool => match (fv, iv) {
                (Some(f), _) => {
                    let z = kb.b.ins().f64const(0.0);
                    kb.b.ins().fcmp(FloatCC::NotEqual, f, z)
                }
                (None, Some(i)) => kb.b.ins().icmp_imm_s(IntCC::NotEqual, i, 0),
                _ => unreachable!(),
            },
            _ => {
                let i = match (fv, iv) {
                    (Some(f), _) if to == DType::U64 => kb.b.ins().fcvt_to_uint_sat(I64, f),
                    (Some(f), _) => kb.b.ins().fcvt_to_sint_sat(I64, f),
                    (None, Some(i)) => i,
                    _ => unreachable!(),
                };
                if to.size() == 8 {
                    i
                } else {
                    kb.b.ins().ireduce(int_ty(to.size()), i)
                }
            }
        };
        let a = kb.addr(op, i, to.size());
        kb.b.ins().store(crate::kb::flags(), r, a, 0);
    });
    Ok(())
}

/// Shapes of a 2-D (or 1-D as 2-D) convolution: window, batch, channels, input and output planes.
#[derive(Debug, Clone)]
pub(crate) struct Geom {
    pub k: [usize; 2],
    pub s: [usize; 2],
    pub p: [usize; 4],
    pub d: [usize; 2],
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub oh: usize,
    pub ow: usize,
    pub cg: usize,
    pub mg: usize,
}

impl Geom {
    pub(crate) fn new(
        (kernel, strides, pads, dil): (&[usize], &[usize], &[usize], &[usize]),
        groups: usize,
        x: &TensorType,
        out: &TensorType,
    ) -> Result<Geom, String> {
        let (k, s, p, d) = spatial2d(kernel, strides, pads, dil)?;
        let (n, c, m) = (x.shape[0], x.shape[1], out.shape[1]);
        let ((h, w), (oh, ow)) = (hw(&x.shape), hw(&out.shape));
        let (cg, mg) = (c / groups, m / groups);
        Ok(Geom {
            k,
            s,
            p,
            d,
            n,
            c,
            h,
            w,
            m,
            oh,
            ow,
            cg,
            mg,
        })
    }
}

impl Geom {
    /// Whether the tiled window kernels (Cranelift's and LLVM's convolutions and max pools)
    /// may run this window. They read a packed copy of the padded input with every stride
    /// phase ([`Packing`]), as big as the padded image and unrolled per phase; a file may ask
    /// for strides, dilations or pads far beyond the image (a stride of 2^20 on a 4x4 input
    /// is 2^40 phases). Such windows take the loop-based kernels (`direct.rs`, `pool`), whose
    /// code and scratch do not depend on them. Every size here is within `kiln_ir::limits`,
    /// so nothing overflows.
    pub(crate) fn tiles_fit(&self) -> bool {
        let (hp, wp) = (
            self.h + self.p[0] + self.p[2],
            self.w + self.p[1] + self.p[3],
        );
        let padded = (hp as u128) * (wp as u128);
        self.s[0] <= hp
            && self.s[1] <= wp
            && self.d[0] <= hp
            && self.d[1] <= wp
            && padded <= 16 * (self.h as u128) * (self.w as u128) + (1 << 16)
    }

    /// [`Geom::new`] for a convolution or max pool the tiled kernels can run
    /// ([`Geom::tiles_fit`]).
    pub(crate) fn tiled(
        attrs: (&[usize], &[usize], &[usize], &[usize]),
        groups: usize,
        x: &TensorType,
        out: &TensorType,
    ) -> Result<Geom, String> {
        let g = Geom::new(attrs, groups, x, out)?;
        if g.tiles_fit() {
            Ok(g)
        } else {
            Err(format!(
                "strides {:?}, dilations {:?} or pads {:?} are out of proportion to the {}x{} \
                 input for the tiled kernels",
                g.s, g.d, g.p, g.h, g.w
            ))
        }
    }
}

/// Kernel parameters of conv-like ops: input, weight, optional bias, output.
fn conv_params(kb: &Kb, n_in: usize) -> (Value, Value, Option<Value>, Value) {
    let bias = if n_in >= 3 { Some(kb.params[2]) } else { None };
    (kb.params[0], kb.params[1], bias, kb.params[n_in])
}

/// kernel, strides, pads (top, left, bottom, right), dilations of a 2-D window.
type Spatial2d = ([usize; 2], [usize; 2], [usize; 4], [usize; 2]);

/// View 1-D spatial attributes as 2-D (H = 1); error on other ranks.
fn spatial2d(
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dil: &[usize],
) -> Result<Spatial2d, String> {
    match kernel.len() {
        2 => Ok((
            [kernel[0], kernel[1]],
            [strides[0], strides[1]],
            [pads[0], pads[1], pads[2], pads[3]],
            [dil[0], dil[1]],
        )),
        1 => Ok((
            [1, kernel[0]],
            [1, strides[0]],
            [0, pads[0], 0, pads[1]],
            [1, dil[0]],
        )),
        n => Err(format!(
            "{n}-D spatial ops are not supported by the CPU back end yet"
        )),
    }
}

fn hw(shape: &[usize]) -> (usize, usize) {
    if shape.len() == 4 {
        (shape[2], shape[3])
    } else {
        (1, shape[2])
    }
}

fn conv(kb: &mut Kb, a: &ConvAttrs, ins: &[&TensorType], out: &TensorType) -> KResult {
    let g = Geom::tiled(
        (&a.kernel, &a.strides, &a.pads, &a.dilations),
        a.groups,
        ins[0],
        out,
    )?;
    let (xp, wp, bp, op) = conv_params(kb, ins.len());
    let rp = (ins.len() == 4).then(|| kb.params[3]);
    if let Some((ck, f)) = kb.ukernel.clone() {
        wide_conv(kb, &ck, f, ins.len());
        return Ok(());
    }
    let pk = Packing::of(&g);
    let tile = Tile {
        g: &g,
        pk: &pk,
        wp,
        bp,
        op,
        rp,
        epilogue: &a.epilogue,
        err: std::cell::RefCell::new(None),
    };
    kb.for_n(g.n, &mut |kb, ni| {
        let q = if pk.needed {
            let sp = kb.params[ins.len() + 1];
            pack_input(kb, &g, &pk, xp, ni, sp);
            sp
        } else {
            let off = kb.b.ins().imul_imm_u(ni, (g.c * g.h * g.w * 4) as i64);
            kb.b.ins().iadd(xp, off)
        };
        let mblocks = g.mg / 4;
        let mtail = g.mg % 4;
        kb.for_n(a.groups, &mut |kb, gi| {
            let mfirst = kb.b.ins().imul_imm_u(gi, g.mg as i64);
            let cfirst = kb.b.ins().imul_imm_u(gi, g.cg as i64);
            kb.for_n(mblocks, &mut |kb, mb| {
                let m0 = kb.b.ins().imul_imm_u(mb, 4);
                let m0 = kb.b.ins().iadd(m0, mfirst);
                tile.rows(kb, q, ni, m0, cfirst, 4);
            });
            if mtail > 0 {
                let m0 = kb.b.ins().iadd_imm_u(mfirst, (mblocks * 4) as i64);
                tile.rows(kb, q, ni, m0, cfirst, mtail);
            }
        });
    });
    match tile.err.into_inner() {
        Some(e) => Err(format!("conv epilogue: {e}")),
        None => Ok(()),
    }
}

/// Kernel windows up to this many taps are unrolled into straight-line code (the tiled kernels,
/// Cranelift's and LLVM's); bigger ones (a file can ask for any size) take the loop-based
/// `direct.rs` kernel, so code size and compile time stay bounded.
pub(crate) const MAX_UNROLLED_TAPS: usize = 1024;

pub(crate) fn taps_unrollable(kernel: &[usize]) -> bool {
    kernel.iter().product::<usize>() <= MAX_UNROLLED_TAPS
}

/// A convolution whose tiles run in an LLVM kernel (`ukernel.rs`): pack each image (if its
/// layout needs it), then call the kernel over all its work items.
fn wide_conv(kb: &mut Kb, ck: &crate::ukernel::ConvKernel, f: FuncRef, n_in: usize) {
    let (xp, wp, bp, op) = conv_params(kb, n_in);
    let rp = (n_in == 4).then(|| kb.params[3]);
    let g = &ck.g;
    let zero = kb.ic(0);
    let out_img = (g.m * g.oh * g.ow * 4) as i64;
    // image ni's output and residual (null without one)
    let out_res = |kb: &mut Kb, ni: Value| {
        let oo = kb.b.ins().imul_imm_u(ni, out_img);
        let o = kb.b.ins().iadd(op, oo);
        let r = match rp {
            Some(rp) => kb.b.ins().iadd(rp, oo),
            None => zero,
        };
        (o, r)
    };
    if let Some(wn) = &ck.wino {
        // Winograd: pack, input transform, 16 products, output transform (`wino.rs`)
        let [wi, wo] = kb.wino.expect("winograd transforms");
        let pack = kb.pack.expect("packing function");
        let (qb, vb, _) = wn.scratch;
        let par = ck.parallel;
        kb.for_n(g.n, &mut |kb, ni| {
            let sp = kb.params[n_in + 1];
            let off = kb.b.ins().imul_imm_u(ni, (g.c * g.h * g.w * 4) as i64);
            let x = kb.b.ins().iadd(xp, off);
            call_wide(kb, pack, [x, zero, zero, zero, sp], g.c, par);
            let v = kb.b.ins().iadd_imm_u(sp, qb as i64);
            let mm = kb.b.ins().iadd_imm_u(v, vb as i64);
            call_wide(kb, wi, [sp, zero, zero, zero, v], g.c, par);
            let f = kb.ukernel.as_ref().expect("wide kernel").1;
            call_wide(kb, f, [v, wp, zero, zero, mm], ck.work(), par);
            let (o, r) = out_res(kb, ni);
            let b = bp.unwrap_or(zero);
            call_wide(kb, wo, [mm, zero, b, r, o], g.m, par);
        });
        return;
    }
    kb.for_n(g.n, &mut |kb, ni| {
        let q = if ck.pk.needed {
            let sp = kb.params[n_in + 1];
            let off = kb.b.ins().imul_imm_u(ni, (g.c * g.h * g.w * 4) as i64);
            let x = kb.b.ins().iadd(xp, off);
            let pack = kb.pack.expect("packing function");
            call_wide(kb, pack, [x, zero, zero, zero, sp], g.c, ck.parallel);
            sp
        } else {
            let off = kb.b.ins().imul_imm_u(ni, (g.c * g.h * g.w * 4) as i64);
            kb.b.ins().iadd(xp, off)
        };
        let (o, r) = out_res(kb, ni);
        let b = bp.unwrap_or(zero);
        call_wide(kb, f, [q, wp, b, r, o], ck.work(), ck.parallel);
    });
}

/// A pooling run by a wide (depthwise-style) kernel, image by image.
fn wide_pool(kb: &mut Kb, x: &TensorType, out: &TensorType) {
    let (ck, f) = kb.ukernel.clone().expect("wide kernel");
    let (xp, op) = (kb.params[0], kb.params[1]);
    let zero = kb.ic(0);
    let (xi, oi) = (x.size_bytes() / x.shape[0], out.size_bytes() / out.shape[0]);
    kb.for_n(x.shape[0], &mut |kb, ni| {
        let xo = kb.b.ins().imul_imm_u(ni, xi as i64);
        let xn = kb.b.ins().iadd(xp, xo);
        let oo = kb.b.ins().imul_imm_u(ni, oi as i64);
        let on = kb.b.ins().iadd(op, oo);
        call_wide(kb, f, [xn, zero, zero, zero, on], ck.work(), ck.parallel);
    });
}

/// Call a wide kernel over its work items `0..work`: directly, or — when the kernel function's
/// last parameter (the `kiln_pool`) is not null — split over the pool's threads through the
/// task trampoline, with the kernel's arguments and address in a stack block.
/// Single-threaded when `parallel` is false (`ConvKernel::parallel`: too little work to be worth
/// waking the pool).
fn call_wide(kb: &mut Kb, f: FuncRef, args: [Value; 5], work: usize, parallel: bool) {
    use cranelift_codegen::ir::{AbiParam, Signature, StackSlotData, StackSlotKind};
    let pool = *kb.params.last().expect("pool parameter");
    let zero = kb.ic(0);
    let n = kb.ic(work as i64);
    let (seq, par, done) = (
        kb.b.create_block(),
        kb.b.create_block(),
        kb.b.create_block(),
    );
    if work > 1 && parallel {
        kb.b.ins().brif(pool, par, &[], seq, &[]);
    } else {
        kb.b.ins().jump(seq, &[]);
    }
    kb.b.switch_to_block(seq);
    kb.b.ins()
        .call(f, &[args[0], args[1], args[2], args[3], args[4], zero, n]);
    kb.b.ins().jump(done, &[]);
    kb.b.switch_to_block(par);
    let slot =
        kb.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 48, 3));
    for (i, a) in args.iter().enumerate() {
        kb.b.ins().stack_store(I64, *a, slot, (8 * i) as i32);
    }
    let fa = kb.b.ins().func_addr(I64, f);
    kb.b.ins().stack_store(I64, fa, slot, 40);
    let block = kb.b.ins().stack_addr(I64, slot, 0);
    let flags = crate::kb::flags();
    let ctx = kb.b.ins().load(I64, flags, pool, 0);
    let pf = kb.b.ins().load(I64, flags, pool, 16);
    let task = kb.task.expect("wide kernels come with the task trampoline");
    let tramp = kb.b.ins().func_addr(I64, task);
    let mut sig = Signature::new(kb.b.func.signature.call_conv);
    sig.params.extend([AbiParam::new(I64); 4]);
    let sr = kb.b.import_signature(sig);
    kb.b.ins().call_indirect(sr, pf, &[ctx, tramp, block, n]);
    kb.b.ins().jump(done, &[]);
    kb.b.switch_to_block(done);
}

/// Scratch bytes a node's CPU kernel needs (a padded, stride-phase-split copy of the input).
pub(crate) fn scratch_bytes(node: &Node, ins: &[&TensorType], outs: &[&TensorType]) -> usize {
    match &node.op {
        Op::Conv(a) if ins[0].dtype == DType::F32 => {
            match Geom::tiled(
                (&a.kernel, &a.strides, &a.pads, &a.dilations),
                a.groups,
                ins[0],
                outs[0],
            ) {
                Ok(g) => {
                    let pk = Packing::of(&g);
                    if pk.needed {
                        (g.c * pk.per_c() + pack_slack(&g)) * 4
                    } else {
                        0
                    }
                }
                Err(_) => 0,
            }
        }
        Op::MatMul(_) if ins[0].dtype == DType::F32 => match matmul_dims(ins[0], ins[1]) {
            Some((m, k, _)) => matmul_pack_floats(m, k) * 4,
            _ => 0,
        },
        Op::Gemm(a) if ins[0].dtype == DType::F32 => {
            let k = if a.trans_a {
                ins[0].shape[0]
            } else {
                ins[0].shape[1]
            };
            matmul_pack_floats(outs[0].shape[0], k) * 4
        }
        _ => 0,
    }
}

/// The convolution input as the tiled kernels read it: per channel, `s0 x s1` row and column
/// stride phases of the zero-padded input, so that every kernel tap reads contiguous columns of
/// consecutive output pixels for any stride:
/// `q[c][r0][r1][yq][xq] = padded[c][yq * s0 + r0][xq * s1 + r1]`. Output pixel `(y, x)` and tap
/// `(th, tw)` read `q[c][(th d0) % s0][(tw d1) % s1][y + (th d0) / s0][x + (tw d1) / s1]`.
/// Without padding or strides the input itself is that layout (`needed == false`).
#[derive(Debug, Clone)]
pub(crate) struct Packing {
    pub needed: bool,
    pub s0: usize,
    pub s1: usize,
    pub hq: usize,
    pub wq: usize,
}

/// Floats after the packed input that the wide kernels may read (discarded columns of the last
/// row; see `ukernel.rs`).
pub(crate) fn pack_slack(g: &Geom) -> usize {
    g.k[1] * g.d[1] + 16
}

impl Packing {
    pub(crate) fn of(g: &Geom) -> Packing {
        let needed = g.p != [0, 0, 0, 0] || g.s != [1, 1] || g.k[1] > 1;
        let hp = g.h + g.p[0] + g.p[2];
        let wp = g.w + g.p[1] + g.p[3];
        let (s0, s1) = if needed { (g.s[0], g.s[1]) } else { (1, 1) };
        Packing {
            needed,
            s0,
            s1,
            hq: hp.div_ceil(s0),
            wq: wp.div_ceil(s1),
        }
    }
    /// Element offset of (channel 0, row phase r0, column phase r1, row, column xq).
    pub(crate) fn at(&self, r0: usize, r1: usize, row: usize, xq: usize) -> usize {
        ((r0 * self.s1 + r1) * self.hq + row) * self.wq + xq
    }
    /// Floats per channel.
    pub(crate) fn per_c(&self) -> usize {
        self.s0 * self.s1 * self.hq * self.wq
    }
}

fn pack_input(kb: &mut Kb, g: &Geom, pk: &Packing, xp: Value, ni: Value, sp: Value) {
    let per_c = pk.per_c();
    let total = g.c * per_c + pack_slack(g);
    let z = kb.fc(0.0);
    let zv = kb.b.ins().splat(F32X4, z);
    let nv = total / 4 * 4;
    kb.for_range(0, nv, 4, &mut |kb, i| kb.store_f32x4(zv, sp, i));
    kb.for_range(nv, total, 1, &mut |kb, i| kb.store_f32(z, sp, i));
    let xb = kb.b.ins().imul_imm_u(ni, (g.c * g.h * g.w) as i64);
    // the input indices `i < n` with (i + pad) % s == r: first, count
    let phase = |n: usize, pad: usize, s: usize, r: usize| {
        let first = (r + s * n - pad % s) % s;
        (
            first,
            if first < n {
                (n - first).div_ceil(s)
            } else {
                0
            },
        )
    };
    for r0 in 0..pk.s0 {
        let (h0, hn) = phase(g.h, g.p[0], pk.s0, r0);
        kb.for_nd(&[g.c, hn], &mut |kb, idx| {
            // input row h = h0 + idx[1] * s0 lands in packed row (h + pt) / s0
            let h = kb.b.ins().imul_imm_u(idx[1], pk.s0 as i64);
            let h = kb.b.ins().iadd_imm_u(h, h0 as i64);
            let src_c = kb.b.ins().imul_imm_u(idx[0], (g.h * g.w) as i64);
            let src_h = kb.b.ins().imul_imm_u(h, g.w as i64);
            let src_row = kb.b.ins().iadd(src_c, src_h);
            let src_row = kb.b.ins().iadd(src_row, xb);
            let dst_c = kb.b.ins().imul_imm_u(idx[0], per_c as i64);
            let dst_row = kb.b.ins().imul_imm_u(idx[1], pk.wq as i64);
            let dst = kb.b.ins().iadd(dst_c, dst_row);
            for r1 in 0..pk.s1 {
                let (first, count) = phase(g.w, g.p[1], pk.s1, r1);
                if count == 0 {
                    continue;
                }
                let dst0 = pk.at(r0, r1, (h0 + g.p[0]) / pk.s0, (first + g.p[1]) / pk.s1);
                let src0 = kb.b.ins().iadd_imm_u(src_row, first as i64);
                let dst0 = kb.b.ins().iadd_imm_u(dst, dst0 as i64);
                if pk.s1 == 1 {
                    let nv = count / 4 * 4;
                    kb.for_range(0, nv, 4, &mut |kb, t| {
                        let si = kb.b.ins().iadd(src0, t);
                        let di = kb.b.ins().iadd(dst0, t);
                        let v = kb.load_f32x4(xp, si);
                        kb.store_f32x4(v, sp, di);
                    });
                    kb.for_range(nv, count, 1, &mut |kb, t| {
                        let si = kb.b.ins().iadd(src0, t);
                        let di = kb.b.ins().iadd(dst0, t);
                        let v = kb.load_f32(xp, si);
                        kb.store_f32(v, sp, di);
                    });
                } else {
                    kb.for_n(count, &mut |kb, t| {
                        let si = kb.b.ins().imul_imm_u(t, pk.s1 as i64);
                        let si = kb.b.ins().iadd(si, src0);
                        let di = kb.b.ins().iadd(t, dst0);
                        let v = kb.load_f32(xp, si);
                        kb.store_f32(v, sp, di);
                    });
                }
            }
        });
    }
}

/// Register-blocked convolution tiles: `mrows` output channels x 8/4/1 output columns kept in
/// F32X4 accumulators across all input channels and kernel taps (taps unrolled, their offsets
/// immediates).
struct Tile<'g> {
    g: &'g Geom,
    pk: &'g Packing,
    wp: Value,
    bp: Option<Value>,
    op: Value,
    /// Residual operand of a fused epilogue (shaped like the output).
    rp: Option<Value>,
    epilogue: &'g [kiln_ir::ops::EpilogueStep],
    /// First epilogue lowering error (the kernel is then discarded).
    err: std::cell::RefCell<Option<String>>,
}

impl Tile<'_> {
    /// All output rows and columns of channels `m0..m0+mrows`.
    fn rows(&self, kb: &mut Kb, q: Value, ni: Value, m0: Value, cfirst: Value, mrows: usize) {
        let g = self.g;
        let (x8, rem) = (g.ow / 8, g.ow % 8);
        kb.for_n(g.oh, &mut |kb, y| {
            kb.for_n(x8, &mut |kb, xb| {
                let x = kb.b.ins().imul_imm_u(xb, 8);
                self.tile(kb, q, ni, m0, cfirst, y, x, mrows, 8);
            });
            let mut x0 = x8 * 8;
            if rem >= 4 {
                let x = kb.ic(x0 as i64);
                self.tile(kb, q, ni, m0, cfirst, y, x, mrows, 4);
                x0 += 4;
            }
            kb.for_range(x0, g.ow, 1, &mut |kb, x| {
                self.tile(kb, q, ni, m0, cfirst, y, x, mrows, 1)
            });
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        kb: &mut Kb,
        q: Value,
        ni: Value,
        m0: Value,
        cfirst: Value,
        y: Value,
        x: Value,
        mrows: usize,
        width: usize,
    ) {
        let (g, pk) = (self.g, self.pk);
        let flags = crate::kb::flags();
        let nvec = width / 4;
        let kk = g.k[0] * g.k[1];
        let (vty, lanes) = if nvec > 0 { (F32X4, nvec) } else { (F32, 1) };
        // accumulators start at the bias
        let mut acc = Vec::new();
        for mi in 0..mrows {
            let b = match self.bp {
                Some(bp) => {
                    let m = kb.b.ins().iadd_imm_u(m0, mi as i64);
                    kb.load_f32(bp, m)
                }
                None => kb.fc(0.0),
            };
            let b = if nvec > 0 {
                kb.b.ins().splat(F32X4, b)
            } else {
                b
            };
            for _ in 0..lanes {
                acc.push(kb.var(vty, b));
            }
        }
        // q + (y*s0*wq + x) for the tile's first input row/column, per input channel below
        let ys = kb.b.ins().imul_imm_u(y, pk.wq as i64);
        let yx = kb.b.ins().iadd(ys, x);
        let wrow = kb.b.ins().imul_imm_u(m0, (g.cg * kk) as i64);
        let per_c = pk.per_c();
        kb.for_n(g.cg, &mut |kb, ci| {
            let c = kb.b.ins().iadd(cfirst, ci);
            let cq = kb.b.ins().imul_imm_u(c, per_c as i64);
            let e = kb.b.ins().iadd(cq, yx);
            let xa = kb.addr(q, e, 4);
            let wc = kb.b.ins().imul_imm_u(ci, kk as i64);
            let we = kb.b.ins().iadd(wc, wrow);
            let wa = kb.addr(self.wp, we, 4);
            for th in 0..g.k[0] {
                for tw in 0..g.k[1] {
                    let (row, col) = (th * g.d[0], tw * g.d[1]);
                    let off = pk.at(row % pk.s0, col % pk.s1, row / pk.s0, col / pk.s1) * 4;
                    let xs: Vec<Value> = (0..lanes)
                        .map(|l| kb.b.ins().load(vty, flags, xa, (off + 16 * l) as i32))
                        .collect();
                    for mi in 0..mrows {
                        let woff = ((mi * g.cg * kk) + th * g.k[1] + tw) * 4;
                        let wv = kb.b.ins().load(F32, flags, wa, woff as i32);
                        let wv = if nvec > 0 {
                            kb.b.ins().splat(F32X4, wv)
                        } else {
                            wv
                        };
                        for (l, xv) in xs.iter().enumerate() {
                            let v = acc[mi * lanes + l];
                            let a0 = kb.b.use_var(v);
                            let a1 = kb.b.ins().fma(*xv, wv, a0);
                            kb.b.def_var(v, a1);
                        }
                    }
                }
            }
        });
        // out[n, m0+mi, y, x..]
        let plane = g.oh * g.ow;
        let nm = kb.b.ins().imul_imm_u(ni, g.m as i64);
        let nm = kb.b.ins().iadd(nm, m0);
        let ob = kb.b.ins().imul_imm_u(nm, plane as i64);
        let yo = kb.b.ins().imul_imm_u(y, g.ow as i64);
        let ob = kb.b.ins().iadd(ob, yo);
        let ob = kb.b.ins().iadd(ob, x);
        let oa = kb.addr(self.op, ob, 4);
        let ra = self.rp.map(|rp| kb.addr(rp, ob, 4));
        for mi in 0..mrows {
            for l in 0..lanes {
                let off = ((mi * plane + 4 * l) * 4) as i32;
                let mut v = kb.b.use_var(acc[mi * lanes + l]);
                if !self.epilogue.is_empty() {
                    let res = ra.map(|ra| kb.b.ins().load(vty, flags, ra, off));
                    match crate::ew::epilogue(kb, self.epilogue, v, res, vty) {
                        Ok(r) => v = r,
                        Err(e) => *self.err.borrow_mut() = Some(e),
                    }
                }
                kb.b.ins().store(flags, v, oa, off);
            }
        }
    }
}

fn conv_transpose(
    kb: &mut Kb,
    a: &ConvTransposeAttrs,
    ins: &[&TensorType],
    out: &TensorType,
) -> KResult {
    let Geom {
        k,
        s,
        p,
        d,
        n,
        c,
        h,
        w,
        m,
        oh,
        ow,
        cg,
        mg,
    } = Geom::new(
        (&a.kernel, &a.strides, &a.pads, &a.dilations),
        a.groups,
        ins[0],
        out,
    )?;
    let (xp, wp, bp, op) = conv_params(kb, ins.len());
    // init with bias
    kb.for_nd(&[n, m, oh * ow], &mut |kb, idx| {
        let v = match bp {
            Some(bp) => kb.load_f32(bp, idx[1]),
            None => kb.fc(0.0),
        };
        let o = kb.offset(idx, &[m * oh * ow, oh * ow, 1]);
        kb.store_f32(v, op, o);
    });
    // scatter: out[n, g*mg+mo, ih*s - p + kh*d, ...] += x[n, ci, ih, iw] * w[ci, mo, kh, kw]
    kb.for_nd(&[n, c, h, w], &mut |kb, idx| {
        let (ni, ci, ihv, iwv) = (idx[0], idx[1], idx[2], idx[3]);
        let xo = kb.offset(idx, &[c * h * w, h * w, w, 1]);
        let xv = kb.load_f32(xp, xo);
        let g = kb.b.ins().udiv_imm_u(ci, cg as i64);
        let mbase = kb.b.ins().imul_imm_u(g, mg as i64);
        kb.for_n(k[0], &mut |kb, khi| {
            let t = kb.b.ins().imul_imm_u(ihv, s[0] as i64);
            let dh = kb.b.ins().imul_imm_u(khi, d[0] as i64);
            let t = kb.b.ins().iadd(t, dh);
            let ohv = kb.b.ins().iadd_imm_s(t, -(p[0] as i64));
            kb.if_in_range(ohv, oh, &mut |kb| {
                kb.for_n(k[1], &mut |kb, kwi| {
                    let t = kb.b.ins().imul_imm_u(iwv, s[1] as i64);
                    let dw = kb.b.ins().imul_imm_u(kwi, d[1] as i64);
                    let t = kb.b.ins().iadd(t, dw);
                    let owv = kb.b.ins().iadd_imm_s(t, -(p[1] as i64));
                    kb.if_in_range(owv, ow, &mut |kb| {
                        kb.for_n(mg, &mut |kb, mo| {
                            let wo = kb.offset(
                                &[ci, mo, khi, kwi],
                                &[mg * k[0] * k[1], k[0] * k[1], k[1], 1],
                            );
                            let wv = kb.load_f32(wp, wo);
                            let mi = kb.b.ins().iadd(mbase, mo);
                            let oo = kb.offset(&[ni, mi, ohv, owv], &[m * oh * ow, oh * ow, ow, 1]);
                            let ov = kb.load_f32(op, oo);
                            let r = kb.b.ins().fma(xv, wv, ov);
                            kb.store_f32(r, op, oo);
                        });
                    });
                });
            });
        });
    });
    Ok(())
}

/// Generic strided matrix multiply core: for one (i, j) tile computes `sum_k a[i,k] b[k,j]`.
/// `ab`/`bb` are base element offsets; `out[ob + i*n + j] = alpha*acc + epilogue`.
struct Mm {
    m: usize,
    n: usize,
    k: usize,
    a_i: usize,
    a_k: usize,
    b_k: usize,
    b_j: usize,
}

fn mm_core(
    kb: &mut Kb,
    mm: &Mm,
    ap: Value,
    ab: Value,
    bp: Value,
    bb: Value,
    store: &mut dyn FnMut(&mut Kb, Value, Value, Value, bool),
) {
    if mm.b_j == 1 && mm.n >= 4 {
        // i-k-j with F32X4 accumulators over j (B rows contiguous)
        let nv = mm.n / 4 * 4;
        kb.for_n(mm.m, &mut |kb, i| {
            let arow = kb.b.ins().imul_imm_u(i, mm.a_i as i64);
            let arow = kb.b.ins().iadd(arow, ab);
            kb.for_range(0, nv, 4, &mut |kb, j| {
                let z = kb.fc(0.0);
                let z = kb.b.ins().splat(F32X4, z);
                let acc = kb.var(F32X4, z);
                kb.for_n(mm.k, &mut |kb, kk| {
                    let ao = kb.b.ins().imul_imm_u(kk, mm.a_k as i64);
                    let ao = kb.b.ins().iadd(ao, arow);
                    let av = kb.load_f32(ap, ao);
                    let av = kb.b.ins().splat(F32X4, av);
                    let bo = kb.b.ins().imul_imm_u(kk, mm.b_k as i64);
                    let bo = kb.b.ins().iadd(bo, bb);
                    let bo = kb.b.ins().iadd(bo, j);
                    let bv = kb.load_f32x4(bp, bo);
                    let a0 = kb.b.use_var(acc);
                    let a1 = kb.b.ins().fma(av, bv, a0);
                    kb.b.def_var(acc, a1);
                });
                let r = kb.b.use_var(acc);
                store(kb, i, j, r, true);
            });
            kb.for_range(nv, mm.n, 1, &mut |kb, j| {
                let r = mm_dot_scalar(kb, mm, ap, arow, bp, bb, j);
                store(kb, i, j, r, false);
            });
        });
    } else {
        kb.for_n(mm.m, &mut |kb, i| {
            let arow = kb.b.ins().imul_imm_u(i, mm.a_i as i64);
            let arow = kb.b.ins().iadd(arow, ab);
            kb.for_n(mm.n, &mut |kb, j| {
                let r = if mm.a_k == 1 && mm.b_k == 1 && mm.k >= 8 {
                    mm_dot_vec(kb, mm, ap, arow, bp, bb, j)
                } else {
                    mm_dot_scalar(kb, mm, ap, arow, bp, bb, j)
                };
                store(kb, i, j, r, false);
            });
        });
    }
}

/// `acc += a[arow + kk*a_k] * b[bcol + kk*b_k]` for `kk` in `start..end`; with `vec` the
/// accumulator is F32X4 and `kk` steps by 4 over contiguous (stride 1) operands.
#[allow(clippy::too_many_arguments)]
fn fma_dot(
    kb: &mut Kb,
    acc: Variable,
    vec: bool,
    (start, end): (usize, usize),
    (ap, arow, a_k): (Value, Value, usize),
    (bp, bcol, b_k): (Value, Value, usize),
) {
    let step = if vec { 4 } else { 1 };
    kb.for_range(start, end, step, &mut |kb, kk| {
        let ao = kb.offset(&[kk], &[a_k]);
        let ao = kb.b.ins().iadd(ao, arow);
        let bo = kb.offset(&[kk], &[b_k]);
        let bo = kb.b.ins().iadd(bo, bcol);
        let (av, bv) = if vec {
            (kb.load_f32x4(ap, ao), kb.load_f32x4(bp, bo))
        } else {
            (kb.load_f32(ap, ao), kb.load_f32(bp, bo))
        };
        let a0 = kb.b.use_var(acc);
        let a1 = kb.b.ins().fma(av, bv, a0);
        kb.b.def_var(acc, a1);
    });
}

fn mm_dot_scalar(
    kb: &mut Kb,
    mm: &Mm,
    ap: Value,
    arow: Value,
    bp: Value,
    bb: Value,
    j: Value,
) -> Value {
    let z = kb.fc(0.0);
    let acc = kb.var(F32, z);
    let bcol = kb.b.ins().imul_imm_u(j, mm.b_j as i64);
    let bcol = kb.b.ins().iadd(bcol, bb);
    fma_dot(
        kb,
        acc,
        false,
        (0, mm.k),
        (ap, arow, mm.a_k),
        (bp, bcol, mm.b_k),
    );
    kb.b.use_var(acc)
}

/// Dot product with contiguous k in both operands: F32X4 accumulation + horizontal sum.
fn mm_dot_vec(
    kb: &mut Kb,
    mm: &Mm,
    ap: Value,
    arow: Value,
    bp: Value,
    bb: Value,
    j: Value,
) -> Value {
    let z = kb.fc(0.0);
    let zv = kb.b.ins().splat(F32X4, z);
    let acc = kb.var(F32X4, zv);
    let bcol = kb.b.ins().imul_imm_u(j, mm.b_j as i64);
    let bcol = kb.b.ins().iadd(bcol, bb);
    let kv = mm.k / 4 * 4;
    fma_dot(kb, acc, true, (0, kv), (ap, arow, 1), (bp, bcol, 1));
    let v = kb.b.use_var(acc);
    let l0 = kb.b.ins().extractlane(v, 0);
    let l1 = kb.b.ins().extractlane(v, 1);
    let l2 = kb.b.ins().extractlane(v, 2);
    let l3 = kb.b.ins().extractlane(v, 3);
    let s01 = kb.b.ins().fadd(l0, l1);
    let s23 = kb.b.ins().fadd(l2, l3);
    let s = kb.b.ins().fadd(s01, s23);
    let sacc = kb.var(F32, s);
    fma_dot(kb, sacc, false, (kv, mm.k), (ap, arow, 1), (bp, bcol, 1));
    kb.b.use_var(sacc)
}

/// Gemm with a constant B through the wide kernel: A packed at run time, B re-laid out at
/// compile time as the `[k][n]` image (`ConvKernel::pack_b`), then `alpha` and `beta * C`.
fn wide_gemm(kb: &mut Kb, a: &GemmAttrs, ins: &[&TensorType], out: &TensorType) {
    let (ck, f) = kb.ukernel.clone().expect("wide kernel");
    let (m, n) = (out.shape[0], out.shape[1]);
    let k = ck.g.c;
    let (ap, bp) = (kb.params[0], kb.params[1]);
    let op = kb.params[ins.len()];
    let sp = kb.params[ins.len() + 1];
    assert!(
        ck.packed_len() <= matmul_pack_floats(m, k),
        "scratch too small"
    );
    let zero = kb.ic(0);
    let pack = kb.pack.expect("operand packing function");
    call_wide(kb, pack, [ap, zero, zero, zero, sp], ck.mb, ck.parallel);
    call_wide(kb, f, [bp, sp, zero, zero, op], ck.work(), ck.parallel);
    let c = (ins.len() == 3 && a.beta != 0.0)
        .then(|| (kb.params[2], bcast_strides(&ins[2].shape, &out.shape)));
    if a.alpha == 1.0 && c.is_none() {
        return;
    }
    kb.for_nd(&[m, n], &mut |kb, ij| {
        let oo = kb.offset(ij, &[n, 1]);
        let mut r = kb.load_f32(op, oo);
        if a.alpha != 1.0 {
            let al = kb.fc(a.alpha);
            r = kb.b.ins().fmul(r, al);
        }
        if let Some((cp, cs)) = &c {
            let co = kb.offset(ij, cs);
            let mut cv = kb.load_f32(*cp, co);
            if a.beta != 1.0 {
                let be = kb.fc(a.beta);
                cv = kb.b.ins().fmul(cv, be);
            }
            r = kb.b.ins().fadd(r, cv);
        }
        kb.store_f32(r, op, oo);
    });
}

fn gemm(kb: &mut Kb, a: &GemmAttrs, ins: &[&TensorType], out: &TensorType) {
    if kb.ukernel.is_some() {
        return wide_gemm(kb, a, ins, out);
    }
    if let Some((rk, f)) = kb.rows.clone() {
        // one row times a `[n][k]` weight: the GEMV row kernel (bias included)
        let zero = kb.ic(0);
        let c = if ins.len() == 3 { kb.params[2] } else { zero };
        let args = [kb.params[0], kb.params[1], c, zero, kb.params[ins.len()]];
        call_wide(kb, f, args, rk.work(), rk.parallel);
        return;
    }
    let (m, n) = (out.shape[0], out.shape[1]);
    let x = ins[0];
    let k = if a.trans_a { x.shape[0] } else { x.shape[1] };
    let (a_i, a_k) = if a.trans_a { (1, m) } else { (k, 1) };
    let (b_k, b_j) = if a.trans_b { (1, k) } else { (n, 1) };
    let mm = Mm {
        m,
        n,
        k,
        a_i,
        a_k,
        b_k,
        b_j,
    };
    let (ap, bp) = (kb.params[0], kb.params[1]);
    let cp = if ins.len() == 3 {
        Some((kb.params[2], bcast_strides(&ins[2].shape, &out.shape)))
    } else {
        None
    };
    let op = kb.params[ins.len()];
    let (alpha, beta) = (a.alpha, a.beta);
    let zero = kb.ic(0);
    mm_core(kb, &mm, ap, zero, bp, zero, &mut |kb, i, j, acc, vec| {
        let mut r = acc;
        if alpha != 1.0 {
            let al = fconst_like(kb, alpha, vec);
            r = kb.b.ins().fmul(r, al);
        }
        if let Some((cp, cs)) = &cp
            && beta != 0.0
        {
            let co = kb.offset(&[i, j], cs);
            let cv = if vec {
                if cs[1] == 1 {
                    kb.load_f32x4(*cp, co)
                } else {
                    let s = kb.load_f32(*cp, co);
                    // cs[1] == 0: broadcast along j
                    kb.b.ins().splat(F32X4, s)
                }
            } else {
                kb.load_f32(*cp, co)
            };
            let cv = if beta != 1.0 {
                let be = fconst_like(kb, beta, vec);
                kb.b.ins().fmul(cv, be)
            } else {
                cv
            };
            r = kb.b.ins().fadd(r, cv);
        }
        let oo = kb.offset(&[i, j], &[n, 1]);
        if vec {
            kb.store_f32x4(r, op, oo)
        } else {
            kb.store_f32(r, op, oo)
        }
    });
}

/// `(m, k, n)` of a MatMul's matrices (1-D operands promoted as ONNX does).
pub(crate) fn matmul_dims(a: &TensorType, b: &TensorType) -> Option<(usize, usize, usize)> {
    let (a, b) = (&a.shape, &b.shape);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let m = if a.len() == 1 { 1 } else { a[a.len() - 2] };
    let n = if b.len() == 1 { 1 } else { b[b.len() - 1] };
    Some((m, a[a.len() - 1], n))
}

/// Whether an f32 MatMul runs through the convolution tiles (else a row-dot kernel).
pub(crate) fn matmul_tiled(m: usize, n: usize) -> bool {
    m >= 4 && n >= 8
}

/// Scratch floats a wide MatMul needs for its run-time packed left operand (for any tile height
/// up to 8 rows).
pub(crate) fn matmul_pack_floats(m: usize, k: usize) -> usize {
    m.div_ceil(4) * 4 * k + 8 * k
}

/// A MatMul and its fused epilogue: the wide kernel applies as much of the epilogue as it has
/// a vector lowering for, the rest runs as elementwise passes over the output (in place).
fn matmul(kb: &mut Kb, attrs: &MatMulAttrs, ins: &[&TensorType], out: &TensorType) -> KResult {
    let operands: Vec<Value> = kb.params[2..ins.len()].to_vec();
    let saved = kb.params.clone();
    // the product sees the parameters of a plain MatMul: a, b, out, scratch, pool
    kb.params.drain(2..ins.len());
    let r = matmul_product(kb, &ins[..2], (&operands, &ins[2..]), &out.shape);
    kb.params = saved;
    let done = r?;
    let op = kb.params[ins.len()];
    let (fused, rest) = attrs.epilogue.split_at(done);
    let used = fused.iter().filter(|s| **s == EpilogueStep::Add).count();
    let operands: Vec<(Value, &TensorType)> = operands
        .iter()
        .copied()
        .zip(ins[2..].iter().copied())
        .skip(used)
        .collect();
    epilogue_passes(kb, rest, &operands, op, out)
}

/// Epilogue `steps` as elementwise passes over the output at `op` (in place); each `add` step
/// reads the next of `operands` (pointer and type, broadcast to the output).
fn epilogue_passes(
    kb: &mut Kb,
    steps: &[EpilogueStep],
    operands: &[(Value, &TensorType)],
    op: Value,
    out: &TensorType,
) -> KResult {
    let mut operands = operands.iter();
    for step in steps {
        let saved = kb.params.clone();
        let r = if *step == EpilogueStep::Add {
            let &(v, t) = operands.next().ok_or("epilogue operand missing")?;
            kb.params = vec![op, v, op];
            crate::ew::elementwise(kb, &step.as_op(), &[out, t], out)
        } else {
            kb.params = vec![op, op];
            crate::ew::elementwise(kb, &step.as_op(), &[out], out)
        };
        kb.params = saved;
        r?;
    }
    Ok(())
}

/// `C = A B` (the plain product, parameters a, b, out, scratch, pool), then the steps of the
/// epilogue the wide kernel fuses (reading `operands`); returns how many steps were applied.
fn matmul_product(
    kb: &mut Kb,
    ins: &[&TensorType],
    (operands, operand_tys): (&[Value], &[&TensorType]),
    out_shape: &[usize],
) -> Result<usize, String> {
    let a = &ins[0].shape;
    let b = &ins[1].shape;
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.clone()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.clone()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let batch = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2]).unwrap();
    let sa: Vec<usize> = bcast_strides(&a2[..a2.len() - 2], &batch)
        .iter()
        .map(|s| s * m * k)
        .collect();
    let sb: Vec<usize> = bcast_strides(&b2[..b2.len() - 2], &batch)
        .iter()
        .map(|s| s * k * n)
        .collect();
    let so: Vec<usize> = strides_of(&batch).iter().map(|s| s * m * n).collect();
    let mm = Mm {
        m,
        n,
        k,
        a_i: k,
        a_k: 1,
        b_k: n,
        b_j: 1,
    };
    let (ap, bp, op) = (kb.params[0], kb.params[1], kb.params[2]);
    let dt = ins[0].dtype;
    if dt != DType::F32 {
        // other element types (f64, integers, 16-bit floats): a plain scalar triple loop with
        // the accumulator in the type's register form (integers wrap like the interpreter)
        let Some(num) = Num::of(dt).filter(|_| dt != DType::Bool) else {
            return Err(format!(
                "matmul on {dt} is not supported by the CPU back end yet"
            ));
        };
        let (add, mul) = (Op::Binary(BinaryOp::Add), Op::Binary(BinaryOp::Mul));
        let mut err = None;
        kb.for_nd(&batch, &mut |kb, idx| {
            let ab = kb.offset(idx, &sa);
            let bb = kb.offset(idx, &sb);
            let ob = kb.offset(idx, &so);
            kb.for_nd(&[m, n], &mut |kb, ij| {
                let z = match num {
                    Num::F32 | Num::F64 => crate::ew::fconst(kb, 0.0, num.ty()),
                    Num::Int { ty, .. } => kb.b.ins().iconst(ty, 0),
                };
                let acc = kb.var(num.ty(), z);
                let ar = kb.b.ins().imul_imm_u(ij[0], k as i64);
                let ar = kb.b.ins().iadd(ar, ab);
                let bc = kb.b.ins().iadd(ij[1], bb);
                kb.for_n(k, &mut |kb, l| {
                    let ai = kb.b.ins().iadd(ar, l);
                    let bi = kb.b.ins().imul_imm_u(l, n as i64);
                    let bi = kb.b.ins().iadd(bi, bc);
                    let x = load_num(kb, dt, ap, ai);
                    let y = load_num(kb, dt, bp, bi);
                    let a0 = kb.b.use_var(acc);
                    let r = apply(kb, &mul, num, x, Some(y))
                        .and_then(|p| apply(kb, &add, num, a0, Some(p)));
                    match r {
                        Ok(a1) => kb.b.def_var(acc, a1),
                        Err(e) => err = Some(e),
                    }
                });
                let oo = kb.b.ins().imul_imm_u(ij[0], n as i64);
                let oo = kb.b.ins().iadd(oo, ij[1]);
                let oo = kb.b.ins().iadd(oo, ob);
                let a = kb.b.use_var(acc);
                store_num(kb, dt, a, op, oo);
            });
        });
        return err.map_or(Ok(0), Err);
    }
    if let Some((ck, f)) = kb.ukernel.clone() {
        // the wide kernel: pack A per batch into scratch (a constant A was packed at compile
        // time and comes in its place), then C = A B as a 1x1 convolution
        let sp = (!ck.prepacked).then(|| kb.params[3]);
        assert!(
            ck.prepacked || ck.packed_len() <= matmul_pack_floats(m, k),
            "scratch too small"
        );
        let zero = kb.ic(0);
        // the epilogue operands' batch strides (their row and column strides are in the kernel)
        let s_ops: Vec<Vec<usize>> = operand_tys
            .iter()
            .take(ck.operands.len())
            .map(|t| {
                let s = bcast_strides(&t.shape, out_shape);
                s[..s.len() - 2].to_vec()
            })
            .collect();
        kb.for_nd(&batch, &mut |kb, idx| {
            let ab = kb.offset(idx, &sa);
            let bo = kb.offset(idx, &sb);
            let oo = kb.offset(idx, &so);
            let a = kb.addr(ap, ab, 4);
            let w = match sp {
                Some(sp) => {
                    let pack = kb.pack.expect("operand packing function");
                    call_wide(kb, pack, [a, zero, zero, zero, sp], ck.mb, ck.parallel);
                    sp
                }
                None => a,
            };
            let q = kb.addr(bp, bo, 4);
            let o = kb.addr(op, oo, 4);
            let mut e = [zero, zero];
            for (k, st) in s_ops.iter().enumerate() {
                let off = kb.offset(idx, st);
                e[k] = kb.addr(operands[k], off, 4);
            }
            call_wide(kb, f, [q, w, e[0], e[1], o], ck.work(), ck.parallel);
        });
        return Ok(ck.epilogue.len());
    }
    if matmul_tiled(m, n) {
        // C[m,n] = A[m,k] B[k,n] is a 1x1 convolution with weights A over a k-channel image B
        // of n pixels: run the register-tiled convolution kernel on each batch's matrices.
        let a1 = ConvAttrs {
            kernel: vec![1, 1],
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            groups: 1,
            epilogue: Vec::new(),
            layout: kiln_ir::Layout::Plain,
        };
        let (xt, wt, ot) = (
            TensorType::f32([1, k, 1, n]),
            TensorType::f32([m, k, 1, 1]),
            TensorType::f32([1, m, 1, n]),
        );
        let saved = kb.params.clone();
        let mut err = None;
        kb.for_nd(&batch, &mut |kb, idx| {
            let ptr = |kb: &mut Kb, base: Value, strides: &[usize]| {
                let o = kb.offset(idx, strides);
                kb.addr(base, o, 4)
            };
            let (a_ptr, b_ptr, o_ptr) = (ptr(kb, ap, &sa), ptr(kb, bp, &sb), ptr(kb, op, &so));
            kb.params = vec![b_ptr, a_ptr, o_ptr];
            if let Err(e) = conv(kb, &a1, &[&xt, &wt], &ot) {
                err = Some(e);
            }
        });
        kb.params = saved;
        return err.map_or(Ok(0), Err);
    }
    kb.for_nd(&batch, &mut |kb, idx| {
        let ab = kb.offset(idx, &sa);
        let bb = kb.offset(idx, &sb);
        let ob = kb.offset(idx, &so);
        mm_core(kb, &mm, ap, ab, bp, bb, &mut |kb, i, j, r, vec| {
            let oo = kb.offset(&[i, j], &[n, 1]);
            let oo = kb.b.ins().iadd(oo, ob);
            if vec {
                kb.store_f32x4(r, op, oo)
            } else {
                kb.store_f32(r, op, oo)
            }
        });
    });
    Ok(0)
}

fn batch_norm(kb: &mut Kb, eps: f32, x: &TensorType) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let rest: usize = x.shape[2..].iter().product();
    let p = kb.params.clone();
    kb.for_n(c, &mut |kb, ci| {
        let sc = kb.load_f32(p[1], ci);
        let bi = kb.load_f32(p[2], ci);
        let mean = kb.load_f32(p[3], ci);
        let var = kb.load_f32(p[4], ci);
        let e = kb.fc(eps);
        let ve = kb.b.ins().fadd(var, e);
        let sd = kb.b.ins().sqrt(ve);
        let s = kb.b.ins().fdiv(sc, sd);
        let ms = kb.b.ins().fmul(mean, s);
        let t = kb.b.ins().fsub(bi, ms);
        kb.for_nd(&[n, rest], &mut |kb, idx| {
            let o = kb.offset(&[idx[0], ci, idx[1]], &[c * rest, rest, 1]);
            let v = kb.load_f32(p[0], o);
            let r = kb.b.ins().fma(v, s, t);
            kb.store_f32(r, p[5], o);
        });
    });
}

fn pool(kb: &mut Kb, a: &PoolAttrs, is_max: bool, x: &TensorType, out: &TensorType) -> KResult {
    let (k, s, p, d) = spatial2d(&a.kernel, &a.strides, &a.pads, &a.dilations)?;
    let nc = x.shape[0] * x.shape[1];
    let (h, w) = hw(&x.shape);
    let (oh, ow) = hw(&out.shape);
    let (xp, op) = (kb.params[0], kb.params[1]);
    let include_pad = a.count_include_pad;
    kb.for_nd(&[nc, oh, ow], &mut |kb, idx| {
        let (ci, y, xo) = (idx[0], idx[1], idx[2]);
        let init = kb.fc(if is_max { f32::NEG_INFINITY } else { 0.0 });
        let acc = kb.var(F32, init);
        let z = kb.ic(0);
        let cnt = kb.var(I64, z);
        let ih0 = kb.b.ins().imul_imm_u(y, s[0] as i64);
        let ih0 = kb.b.ins().iadd_imm_s(ih0, -(p[0] as i64));
        let iw0 = kb.b.ins().imul_imm_u(xo, s[1] as i64);
        let iw0 = kb.b.ins().iadd_imm_s(iw0, -(p[1] as i64));
        let xbase = kb.b.ins().imul_imm_u(ci, (h * w) as i64);
        kb.for_n(k[0], &mut |kb, khi| {
            let dh = kb.b.ins().imul_imm_u(khi, d[0] as i64);
            let ih = kb.b.ins().iadd(ih0, dh);
            kb.for_n(k[1], &mut |kb, kwi| {
                let dw = kb.b.ins().imul_imm_u(kwi, d[1] as i64);
                let iw = kb.b.ins().iadd(iw0, dw);
                if include_pad {
                    // count positions inside the padded input
                    let ihp = kb.b.ins().iadd_imm_s(ih, p[0] as i64);
                    let iwp = kb.b.ins().iadd_imm_s(iw, p[1] as i64);
                    kb.if_in_range(ihp, h + p[0] + p[2], &mut |kb| {
                        kb.if_in_range(iwp, w + p[1] + p[3], &mut |kb| {
                            let c0 = kb.b.use_var(cnt);
                            let c1 = kb.b.ins().iadd_imm_u(c0, 1);
                            kb.b.def_var(cnt, c1);
                        });
                    });
                }
                kb.if_in_range(ih, h, &mut |kb| {
                    kb.if_in_range(iw, w, &mut |kb| {
                        let xo = kb.b.ins().imul_imm_u(ih, w as i64);
                        let xo = kb.b.ins().iadd(xo, iw);
                        let xo = kb.b.ins().iadd(xo, xbase);
                        let v = kb.load_f32(xp, xo);
                        let a0 = kb.b.use_var(acc);
                        let a1 = if is_max {
                            kb.fmax(v, a0)
                        } else {
                            kb.b.ins().fadd(a0, v)
                        };
                        kb.b.def_var(acc, a1);
                        if !include_pad {
                            let c0 = kb.b.use_var(cnt);
                            let c1 = kb.b.ins().iadd_imm_u(c0, 1);
                            kb.b.def_var(cnt, c1);
                        }
                    });
                });
            });
        });
        let mut r = kb.b.use_var(acc);
        if !is_max {
            let c = kb.b.use_var(cnt);
            let one = kb.ic(1);
            let cmax = kb.b.ins().smax(c, one);
            let cf = kb.b.ins().fcvt_from_sint(F32, cmax);
            r = kb.b.ins().fdiv(r, cf);
        }
        let oo = kb.offset(idx, &[oh * ow, ow, 1]);
        kb.store_f32(r, op, oo);
    });
    Ok(())
}

/// out[r] = scale * sum_j x[r*len + j]
fn reduce_rows(kb: &mut Kb, rows: usize, len: usize, scale: f32) {
    let (xp, op) = (kb.params[0], kb.params[1]);
    let nv = len / 4 * 4;
    kb.for_n(rows, &mut |kb, r| {
        let base = kb.b.ins().imul_imm_u(r, len as i64);
        // four lanes of partial sums, added up, then the tail
        let z = kb.fc(0.0);
        let zv = kb.b.ins().splat(F32X4, z);
        let vacc = kb.var(F32X4, zv);
        kb.for_range(0, nv, 4, &mut |kb, j| {
            let o = kb.b.ins().iadd(base, j);
            let v = kb.load_f32x4(xp, o);
            let a0 = kb.b.use_var(vacc);
            let a1 = kb.b.ins().fadd(a0, v);
            kb.b.def_var(vacc, a1);
        });
        let v = kb.b.use_var(vacc);
        let l: Vec<Value> = (0..4u8).map(|l| kb.b.ins().extractlane(v, l)).collect();
        let s01 = kb.b.ins().fadd(l[0], l[1]);
        let s23 = kb.b.ins().fadd(l[2], l[3]);
        let s = kb.b.ins().fadd(s01, s23);
        let acc = kb.var(F32, s);
        kb.for_range(nv, len, 1, &mut |kb, j| {
            let o = kb.b.ins().iadd(base, j);
            let v = kb.load_f32(xp, o);
            let a0 = kb.b.use_var(acc);
            let a1 = kb.b.ins().fadd(a0, v);
            kb.b.def_var(acc, a1);
        });
        let a = kb.b.use_var(acc);
        let sc = kb.fc(scale);
        let v = kb.b.ins().fmul(a, sc);
        kb.store_f32(v, op, r);
    });
}

/// The identity of a reduction's combine step in `dt` (integers: the type's extremes).
fn reduce_init(kb: &mut Kb, kind: ReduceKind, num: Num, dt: DType) -> Value {
    match num {
        Num::F32 | Num::F64 => crate::ew::fconst(kb, kind.init(), num.ty()),
        Num::Int { ty, .. } => {
            let (lo, hi): (i64, i64) = match dt {
                DType::Bool => (0, 1),
                DType::I8 => (i8::MIN as i64, i8::MAX as i64),
                DType::U8 => (0, u8::MAX as i64),
                DType::I16 => (i16::MIN as i64, i16::MAX as i64),
                DType::U16 => (0, u16::MAX as i64),
                DType::I32 => (i32::MIN as i64, i32::MAX as i64),
                DType::U32 => (0, u32::MAX as i64),
                DType::I64 => (i64::MIN, i64::MAX),
                _ => (0, -1),
            };
            let v = match kind {
                ReduceKind::Max => lo,
                ReduceKind::Min => hi,
                ReduceKind::Prod => 1,
                _ => 0,
            };
            kb.b.ins().iconst(ty, v)
        }
    }
}

/// Reduce* over `axes`: the output buffer is the accumulator (init, combine, finalize).
/// Floats (f32/f64) support every kind; integers Sum/Prod/Max/Min/SumSquare/L1; bool Max/Min.
fn reduce(kb: &mut Kb, kind: ReduceKind, axes: &[usize], x: &TensorType) -> KResult {
    let dt = x.dtype;
    let num = Num::of(dt).ok_or_else(|| {
        format!(
            "{} on {dt} is not supported by the CPU back end yet",
            kind.name()
        )
    })?;
    let float = matches!(num, Num::F32 | Num::F64);
    let int_ok = matches!(
        kind,
        ReduceKind::Sum
            | ReduceKind::Prod
            | ReduceKind::Max
            | ReduceKind::Min
            | ReduceKind::SumSquare
            | ReduceKind::L1
    );
    if !float
        && (!int_ok || (dt == DType::Bool && !matches!(kind, ReduceKind::Max | ReduceKind::Min)))
    {
        return Err(format!(
            "{} on {dt} is not supported by the CPU back end yet",
            kind.name()
        ));
    }
    let (xp, op) = (kb.params[0], kb.params[1]);
    let out_numel: usize = (0..x.rank())
        .filter(|d| !axes.contains(d))
        .map(|d| x.shape[d])
        .product();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    // strides of the output (with reduced dims collapsed to 0)
    let kept: Vec<usize> = (0..x.rank())
        .map(|d| if axes.contains(&d) { 1 } else { x.shape[d] })
        .collect();
    let ks = strides_of(&kept);
    let os: Vec<usize> = (0..x.rank())
        .map(|d| if axes.contains(&d) { 0 } else { ks[d] })
        .collect();
    let xs = strides_of(&x.shape);
    kb.for_n(out_numel, &mut |kb, i| {
        let z = reduce_init(kb, kind, num, dt);
        store_num(kb, dt, z, op, i);
    });
    let bin = |b| Op::Binary(b);
    let un = |u| Op::Unary(u);
    let mut err = None;
    kb.for_nd(&x.shape.clone(), &mut |kb, idx| {
        let xo = kb.offset(idx, &xs);
        let oo = kb.offset(idx, &os);
        let v = load_num(kb, dt, xp, xo);
        let a = load_num(kb, dt, op, oo);
        let r = (|| -> Result<Value, String> {
            Ok(match kind {
                ReduceKind::Max => apply(kb, &bin(BinaryOp::Max), num, v, Some(a))?,
                ReduceKind::Min => apply(kb, &bin(BinaryOp::Min), num, v, Some(a))?,
                ReduceKind::Prod => apply(kb, &bin(BinaryOp::Mul), num, a, Some(v))?,
                ReduceKind::SumSquare | ReduceKind::L2 if num == Num::F32 => {
                    kb.b.ins().fma(v, v, a)
                }
                ReduceKind::SumSquare | ReduceKind::L2 => {
                    let sq = apply(kb, &bin(BinaryOp::Mul), num, v, Some(v))?;
                    apply(kb, &bin(BinaryOp::Add), num, a, Some(sq))?
                }
                ReduceKind::L1 => {
                    let t = apply(kb, &un(UnaryOp::Abs), num, v, None)?;
                    apply(kb, &bin(BinaryOp::Add), num, a, Some(t))?
                }
                ReduceKind::LogSumExp => {
                    let t = apply(kb, &un(UnaryOp::Exp), num, v, None)?;
                    apply(kb, &bin(BinaryOp::Add), num, a, Some(t))?
                }
                ReduceKind::Sum | ReduceKind::Mean | ReduceKind::LogSum => {
                    apply(kb, &bin(BinaryOp::Add), num, a, Some(v))?
                }
            })
        })();
        match r {
            Ok(r) => store_num(kb, dt, r, op, oo),
            Err(e) => err = Some(e),
        }
    });
    let inv = 1.0 / count.max(1) as f64;
    if float
        && matches!(
            kind,
            ReduceKind::Mean | ReduceKind::L2 | ReduceKind::LogSum | ReduceKind::LogSumExp
        )
    {
        kb.for_n(out_numel, &mut |kb, i| {
            let a = load_num(kb, dt, op, i);
            let r = match kind {
                ReduceKind::Mean => {
                    let c = crate::ew::fconst(kb, inv, num.ty());
                    Ok(kb.b.ins().fmul(a, c))
                }
                ReduceKind::L2 => Ok(kb.b.ins().sqrt(a)),
                _ => apply(kb, &un(UnaryOp::Log), num, a, None),
            };
            match r {
                Ok(r) => store_num(kb, dt, r, op, i),
                Err(e) => err = Some(e),
            }
        });
    }
    err.map_or(Ok(()), Err)
}

/// LayerNorm over contiguous rows: the LLVM row kernel, or a scalar loop per row (mean, then
/// the variance of the centred values, then the normalized, scaled and shifted row).
fn layer_norm(kb: &mut Kb, axis: usize, eps: f32, ins: &[&TensorType]) -> KResult {
    let x = ins[0];
    if x.dtype != DType::F32 {
        return Err(format!(
            "layer_norm on {} is not supported by the CPU back end yet",
            x.dtype
        ));
    }
    let len: usize = x.shape[axis..].iter().product();
    let rows = x.numel() / len.max(1);
    let p = kb.params.clone();
    let (xp, op) = (p[0], p[ins.len()]);
    let (sp, bp) = (
        (ins.len() >= 2).then(|| p[1]),
        (ins.len() >= 3).then(|| p[2]),
    );
    if let Some((rk, f)) = kb.rows.clone() {
        let zero = kb.ic(0);
        let args = [xp, sp.unwrap_or(zero), bp.unwrap_or(zero), zero, op];
        call_wide(kb, f, args, rk.work(), rk.parallel);
        return Ok(());
    }
    let n = kb.fc(len as f32);
    kb.for_n(rows, &mut |kb, r| {
        let base = kb.b.ins().imul_imm_u(r, len as i64);
        let z = kb.fc(0.0);
        let sum = kb.var(F32, z);
        kb.for_n(len, &mut |kb, i| {
            let o = kb.b.ins().iadd(base, i);
            let v = kb.load_f32(xp, o);
            let s = kb.b.use_var(sum);
            let s = kb.b.ins().fadd(s, v);
            kb.b.def_var(sum, s);
        });
        let s = kb.b.use_var(sum);
        let mean = kb.b.ins().fdiv(s, n);
        let z = kb.fc(0.0);
        let sq = kb.var(F32, z);
        kb.for_n(len, &mut |kb, i| {
            let o = kb.b.ins().iadd(base, i);
            let v = kb.load_f32(xp, o);
            let d = kb.b.ins().fsub(v, mean);
            let a = kb.b.use_var(sq);
            let a = kb.b.ins().fma(d, d, a);
            kb.b.def_var(sq, a);
        });
        let a = kb.b.use_var(sq);
        let var = kb.b.ins().fdiv(a, n);
        let e = kb.fc(eps);
        let ve = kb.b.ins().fadd(var, e);
        let sd = kb.b.ins().sqrt(ve);
        let one = kb.fc(1.0);
        let inv = kb.b.ins().fdiv(one, sd);
        kb.for_n(len, &mut |kb, i| {
            let o = kb.b.ins().iadd(base, i);
            let v = kb.load_f32(xp, o);
            let d = kb.b.ins().fsub(v, mean);
            let mut y = kb.b.ins().fmul(d, inv);
            if let Some(sp) = sp {
                let g = kb.load_f32(sp, i);
                y = kb.b.ins().fmul(y, g);
            }
            if let Some(bp) = bp {
                let b = kb.load_f32(bp, i);
                y = kb.b.ins().fadd(y, b);
            }
            kb.store_f32(y, op, o);
        });
    });
    Ok(())
}

fn softmax(kb: &mut Kb, axis: usize, kind: SoftmaxKind, x: &TensorType) -> KResult {
    if let Some((rk, f)) = kb.rows.clone() {
        // contiguous f32 rows: the LLVM row kernel, rows split over the pool
        let zero = kb.ic(0);
        let (xp, op) = (kb.params[0], kb.params[1]);
        call_wide(kb, f, [xp, zero, zero, zero, op], rk.work(), rk.parallel);
        return Ok(());
    }
    let dt = x.dtype;
    let num = Num::of(dt)
        .filter(|n| matches!(n, Num::F32 | Num::F64))
        .ok_or_else(|| format!("softmax on {dt} is not supported by the CPU back end yet"))?;
    let t = num.ty();
    let outer: usize = x.shape[..axis].iter().product();
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let (xp, op) = (kb.params[0], kb.params[1]);
    let (exp, log) = (Op::Unary(UnaryOp::Exp), Op::Unary(UnaryOp::Log));
    let mut err = None;
    kb.for_nd(&[outer, inner], &mut |kb, idx| {
        let base = kb.offset(idx, &[len * inner, 1]);
        let at = |kb: &mut Kb, l: Value| {
            let o = kb.b.ins().imul_imm_u(l, inner as i64);
            kb.b.ins().iadd(o, base)
        };
        let ninf = crate::ew::fconst(kb, f64::NEG_INFINITY, t);
        let mx = kb.var(t, ninf);
        let z = kb.ic(0);
        let arg = kb.var(I64, z);
        kb.for_n(len, &mut |kb, l| {
            let o = at(kb, l);
            let v = load_num(kb, dt, xp, o);
            let m0 = kb.b.use_var(mx);
            // first maximum: only a strictly greater value moves it
            let gt = kb.b.ins().fcmp(FloatCC::GreaterThan, v, m0);
            let m1 = kb.b.ins().select(gt, v, m0);
            kb.b.def_var(mx, m1);
            let a0 = kb.b.use_var(arg);
            let a1 = kb.b.ins().select(gt, l, a0);
            kb.b.def_var(arg, a1);
        });
        if kind == SoftmaxKind::Hardmax {
            let a = kb.b.use_var(arg);
            kb.for_n(len, &mut |kb, l| {
                let o = at(kb, l);
                let hit = kb.b.ins().icmp(IntCC::Equal, l, a);
                let one = crate::ew::fconst(kb, 1.0, t);
                let zero = crate::ew::fconst(kb, 0.0, t);
                let r = kb.b.ins().select(hit, one, zero);
                store_num(kb, dt, r, op, o);
            });
            return;
        }
        let m = kb.b.use_var(mx);
        let z = crate::ew::fconst(kb, 0.0, t);
        let sum = kb.var(t, z);
        kb.for_n(len, &mut |kb, l| {
            let o = at(kb, l);
            let v = load_num(kb, dt, xp, o);
            let d = kb.b.ins().fsub(v, m);
            match apply(kb, &exp, num, d, None) {
                Ok(e) => {
                    if kind == SoftmaxKind::Softmax && matches!(dt, DType::F32 | DType::F64) {
                        store_num(kb, dt, e, op, o);
                    }
                    let s0 = kb.b.use_var(sum);
                    let s1 = kb.b.ins().fadd(s0, e);
                    kb.b.def_var(sum, s1);
                }
                Err(e) => err = Some(e),
            }
        });
        let s = kb.b.use_var(sum);
        if kind == SoftmaxKind::LogSoftmax {
            // x - max - ln(sum)
            let ls = match apply(kb, &log, num, s, None) {
                Ok(v) => v,
                Err(e) => {
                    err = Some(e);
                    return;
                }
            };
            let sh = kb.b.ins().fadd(m, ls);
            kb.for_n(len, &mut |kb, l| {
                let o = at(kb, l);
                let v = load_num(kb, dt, xp, o);
                let r = kb.b.ins().fsub(v, sh);
                store_num(kb, dt, r, op, o);
            });
            return;
        }
        let one = crate::ew::fconst(kb, 1.0, t);
        let inv = kb.b.ins().fdiv(one, s);
        kb.for_n(len, &mut |kb, l| {
            let o = at(kb, l);
            // 16-bit outputs recompute exp (the stored value would be rounded twice)
            let e = if matches!(dt, DType::F32 | DType::F64) {
                Ok(load_num(kb, dt, op, o))
            } else {
                let v = load_num(kb, dt, xp, o);
                let d = kb.b.ins().fsub(v, m);
                apply(kb, &exp, num, d, None)
            };
            match e {
                Ok(e) => {
                    let r = kb.b.ins().fmul(e, inv);
                    store_num(kb, dt, r, op, o);
                }
                Err(e) => err = Some(e),
            }
        });
    });
    err.map_or(Ok(()), Err)
}

pub(crate) fn copy_elem(kb: &mut Kb, esize: usize, src: Value, si: Value, dst: Value, di: Value) {
    let a = kb.addr(src, si, esize);
    let v = kb.b.ins().load(int_ty(esize), crate::kb::flags(), a, 0);
    let b = kb.addr(dst, di, esize);
    kb.b.ins().store(crate::kb::flags(), v, b, 0);
}

/// Byte copy from param `from` to param `to`.
pub(crate) fn copy(kb: &mut Kb, from: usize, to: usize, bytes: usize) {
    let (s, d) = (kb.params[from], kb.params[to]);
    copy_bytes(kb, s, d, bytes);
}

/// Copy `bytes` bytes from address `s` to address `d` (not overlapping): libc's `memcpy` for
/// blocks of 256 bytes and more (it picks the widest copy the running CPU has), else 8-byte
/// words and a byte tail.
pub(crate) fn copy_bytes(kb: &mut Kb, s: Value, d: Value, bytes: usize) {
    if bytes >= 256 {
        let n = kb.ic(bytes as i64);
        let cfg = kb.fcfg;
        kb.b.call_memcpy(cfg, d, s, n);
        return;
    }
    let words = bytes / 8;
    kb.for_n(words, &mut |kb, i| copy_elem(kb, 8, s, i, d, i));
    kb.for_range(words * 8, bytes, 1, &mut |kb, i| {
        copy_elem(kb, 1, s, i, d, i)
    });
}

/// `Relayout`: plain `[N, C, H, W]` to or from channel-blocked `[N, C/c, H, W, c]`, as the
/// transpose of `[N, C/c, c, H*W]` to `[N, C/c, H*W, c]` (or back).
fn relayout(kb: &mut Kb, x: &TensorType, out: &TensorType) {
    let block = |t: &TensorType| match t.layout {
        kiln_ir::Layout::Nchwc(c) => Some(c as usize),
        _ => None,
    };
    let (n, ch, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    let t = |shape: [usize; 4]| TensorType::new(x.dtype, shape);
    match (block(x), block(out)) {
        (None, Some(c)) => transpose(
            kb,
            &[0, 1, 3, 2],
            &t([n, ch / c, c, hw]),
            &t([n, ch / c, hw, c]),
        ),
        (Some(c), None) => transpose(
            kb,
            &[0, 1, 3, 2],
            &t([n, ch / c, hw, c]),
            &t([n, ch / c, c, hw]),
        ),
        (Some(a), Some(b)) if a != b => {
            // through the plain order: element (n, ch, p) is read from block layout a and
            // written in block layout b
            let es = x.dtype.size();
            let (xp, op) = (kb.params[0], kb.params[1]);
            kb.for_nd(&[n, ch, hw], &mut |kb, idx| {
                let xo = blocked_offset(kb, idx, (ch, hw), a);
                let oo = blocked_offset(kb, idx, (ch, hw), b);
                copy_elem(kb, es, xp, xo, op, oo);
            });
        }
        _ => copy(kb, 0, 1, x.size_bytes()),
    }
}

/// The element offset of `(n, channel, pixel)` in a `Nchwc(c)` tensor of `ch` channels and
/// `hw` pixels.
fn blocked_offset(kb: &mut Kb, idx: &[Value], (ch, hw): (usize, usize), c: usize) -> Value {
    let cb = kb.b.ins().udiv_imm_u(idx[1], c as i64);
    let ci = kb.b.ins().urem_imm_u(idx[1], c as i64);
    let base = kb.offset(&[idx[0], cb, idx[2]], &[ch * hw, hw * c, c]);
    kb.b.ins().iadd(base, ci)
}

/// GlobalAveragePool of a channel-blocked input: per block of `c` channels, `H*W` pixels of
/// `c` lanes summed four lanes at a time (the last `c % 4` lanes one at a time); the
/// `[N, C, 1, 1]` output is plain (its blocked and plain orders agree).
fn blocked_global_pool(kb: &mut Kb, x: &TensorType) {
    let kiln_ir::Layout::Nchwc(c) = x.layout else {
        unreachable!("a blocked input")
    };
    let c = c as usize;
    let (xp, op) = (kb.params[0], kb.params[1]);
    let hw = x.shape[2] * x.shape[3];
    let rows = x.shape[0] * x.shape[1] / c;
    let scale = 1.0 / hw as f32;
    kb.for_n(rows, &mut |kb, r| {
        let base = kb.b.ins().imul_imm_u(r, (hw * c) as i64);
        // lanes q..q + 4 as one F32X4, or lane q alone: never past the block
        for q in (0..c).step_by(4) {
            let (ty, n) = if q + 4 <= c { (F32X4, 4) } else { (F32, 1) };
            for q in (q..(q + 4).min(c)).step_by(n) {
                let z = kb.fc(0.0);
                let z = if n == 4 {
                    kb.b.ins().splat(F32X4, z)
                } else {
                    z
                };
                let acc = kb.var(ty, z);
                kb.for_range(0, hw * c, c, &mut |kb, p| {
                    let o = kb.b.ins().iadd(base, p);
                    let o = kb.b.ins().iadd_imm_u(o, q as i64);
                    let v = if n == 4 {
                        kb.load_f32x4(xp, o)
                    } else {
                        kb.load_f32(xp, o)
                    };
                    let a0 = kb.b.use_var(acc);
                    let a1 = kb.b.ins().fadd(a0, v);
                    kb.b.def_var(acc, a1);
                });
                let a = kb.b.use_var(acc);
                let sc = kb.fc(scale);
                let sc = if n == 4 {
                    kb.b.ins().splat(F32X4, sc)
                } else {
                    sc
                };
                let m = kb.b.ins().fmul(a, sc);
                let oo = kb.b.ins().imul_imm_u(r, c as i64);
                let oo = kb.b.ins().iadd_imm_u(oo, q as i64);
                if n == 4 {
                    kb.store_f32x4(m, op, oo);
                } else {
                    kb.store_f32(m, op, oo);
                }
            }
        }
    });
}

fn transpose(kb: &mut Kb, perm: &[usize], x: &TensorType, out: &TensorType) {
    let xs = strides_of(&x.shape);
    let ps: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let os = strides_of(&out.shape);
    let es = x.dtype.size();
    let (xp, op) = (kb.params[0], kb.params[1]);
    let r = perm.len();
    if r > 1 && perm[r - 1] == r - 1 {
        // the last axis stays: contiguous runs of it in both tensors
        let run = out.shape[r - 1] * es;
        kb.for_nd(&out.shape[..r - 1], &mut |kb, idx| {
            let xo = kb.offset(idx, &ps[..r - 1]);
            let oo = kb.offset(idx, &os[..r - 1]);
            let xa = kb.addr(xp, xo, es);
            let oa = kb.addr(op, oo, es);
            copy_bytes(kb, xa, oa, run);
        });
        return;
    }
    if r > 1 && out.shape[r - 1] <= 8 && out.shape[r - 1] * ps[r - 1] * es < i32::MAX as usize {
        // a short last output axis (a pixel shuffle's 2): unrolled, its offsets immediates
        let (n, step) = (out.shape[r - 1], ps[r - 1] * es);
        kb.for_nd(&out.shape[..r - 1], &mut |kb, idx| {
            let xo = kb.offset(idx, &ps[..r - 1]);
            let oo = kb.offset(idx, &os[..r - 1]);
            let xa = kb.addr(xp, xo, es);
            let oa = kb.addr(op, oo, es);
            for j in 0..n {
                let v =
                    kb.b.ins()
                        .load(int_ty(es), crate::kb::flags(), xa, (j * step) as i32);
                kb.b.ins().store(crate::kb::flags(), v, oa, (j * es) as i32);
            }
        });
        return;
    }
    kb.for_nd(&out.shape.clone(), &mut |kb, idx| {
        let xo = kb.offset(idx, &ps);
        let oo = kb.offset(idx, &os);
        copy_elem(kb, es, xp, xo, op, oo);
    });
}

/// Concat (`gather == true`: parts are the inputs, whole is the output) or Split (the reverse).
fn concat(kb: &mut Kb, axis: usize, parts: &[&TensorType], whole: &TensorType, gather: bool) {
    let outer: usize = whole.shape[..axis].iter().product();
    let rest: usize = whole.shape[axis + 1..].iter().product();
    let whole_inner = whole.shape[axis] * rest;
    let es = whole.dtype.size();
    let np = parts.len();
    let mut off = 0usize;
    for (pi, t) in parts.iter().enumerate() {
        let inner = t.shape[axis] * rest;
        let (pp, wp) = if gather {
            (kb.params[pi], kb.params[np])
        } else {
            (kb.params[1 + pi], kb.params[0])
        };
        // one contiguous block of `inner` elements per outer index
        kb.for_n(outer, &mut |kb, o| {
            let po = kb.b.ins().imul_imm_u(o, (inner * es) as i64);
            let po = kb.b.ins().iadd(pp, po);
            let wo = kb.b.ins().imul_imm_u(o, (whole_inner * es) as i64);
            let wo = kb.b.ins().iadd_imm_u(wo, (off * es) as i64);
            let wo = kb.b.ins().iadd(wp, wo);
            if gather {
                copy_bytes(kb, po, wo, inner * es)
            } else {
                copy_bytes(kb, wo, po, inner * es)
            }
        });
        off += inner;
    }
}

fn slice(kb: &mut Kb, a: &SliceAttrs, x: &TensorType) {
    let xs = strides_of(&x.shape);
    let os = strides_of(&a.sizes);
    let es = x.dtype.size();
    let base: usize = a.starts.iter().zip(&xs).map(|(s, st)| s * st).sum();
    let (xp, op) = (kb.params[0], kb.params[1]);
    kb.for_nd(&a.sizes.clone(), &mut |kb, idx| {
        let mut xo = kb.ic(base as i64);
        for d in 0..idx.len() {
            // a dim of one element reads only its start, whatever the step (a file may give
            // i64::MAX); otherwise |step| * (size - 1) < dim, so the product fits
            if a.sizes[d] <= 1 {
                continue;
            }
            let step = a.steps[d] * xs[d] as i64;
            let t = kb.b.ins().imul_imm_s(idx[d], step);
            xo = kb.b.ins().iadd(xo, t);
        }
        let oo = kb.offset(idx, &os);
        copy_elem(kb, es, xp, xo, op, oo);
    });
}

/// Source coordinate (f32) of output index `i` along one dim.
fn src_coord(
    kb: &mut Kb,
    coord: CoordTransform,
    i: Value,
    scale: f32,
    in_len: usize,
    out_len: usize,
) -> Value {
    let fi = kb.b.ins().fcvt_from_sint(F32, i);
    match coord {
        CoordTransform::Asymmetric => {
            let s = kb.fc(1.0 / scale);
            kb.b.ins().fmul(fi, s)
        }
        CoordTransform::AlignCorners => {
            let r = if out_len > 1 {
                (in_len as f32 - 1.0) / (in_len as f32 * scale - 1.0)
            } else {
                0.0
            };
            let s = kb.fc(r);
            kb.b.ins().fmul(fi, s)
        }
        CoordTransform::HalfPixel | CoordTransform::PytorchHalfPixel => {
            if coord == CoordTransform::PytorchHalfPixel && out_len <= 1 {
                return kb.fc(0.0);
            }
            let h = kb.fc(0.5);
            let t = kb.b.ins().fadd(fi, h);
            let s = kb.fc(1.0 / scale);
            let t = kb.b.ins().fmul(t, s);
            kb.b.ins().fsub(t, h)
        }
    }
}

fn clamp_idx(kb: &mut Kb, v: Value, len: usize) -> Value {
    let z = kb.ic(0);
    let hi = kb.ic(len as i64 - 1);
    let t = kb.b.ins().smax(v, z);
    kb.b.ins().smin(t, hi)
}

/// A nearest Resize that repeats every element an integer number of times per dim (the usual
/// 2x/4x upsampling, any coordinate mode that comes to `out i <- in i / f`): the factors.
fn integer_upsampling(a: &ResizeAttrs, x: &TensorType) -> Option<Vec<usize>> {
    if a.mode != ResizeMode::Nearest || x.rank() == 0 || x.numel() == 0 {
        return None;
    }
    (0..x.rank())
        .map(|d| {
            let (n, o) = (x.shape[d], a.out_shape[d]);
            if o % n != 0 || (o / n) > 16 {
                return None;
            }
            let f = o / n;
            let src = kiln_ir::interp::nearest_sources(a, d, n);
            src.iter()
                .enumerate()
                .all(|(i, &s)| s == i / f)
                .then_some(f)
        })
        .collect()
}

fn resize(kb: &mut Kb, a: &ResizeAttrs, x: &TensorType) -> KResult {
    let r = x.rank();
    let xs = strides_of(&x.shape);
    let os = strides_of(&a.out_shape);
    let interp: Vec<usize> = (0..r)
        .filter(|&d| a.out_shape[d] != x.shape[d] || a.scales[d] != 1.0)
        .collect();
    if a.mode == ResizeMode::Linear && interp.len() > 3 {
        return Err("linear resize over more than 3 dims is not supported".into());
    }
    let (xp, op) = (kb.params[0], kb.params[1]);
    if let Some(f) = integer_upsampling(a, x) {
        // out[.., y, x] = in[.., y / f_y, x / f_x]: per output row, each input element of the
        // source row stored f times
        let w = x.shape[r - 1];
        let fx = f[r - 1];
        let es = x.dtype.size();
        kb.for_nd(&a.out_shape[..r - 1], &mut |kb, idx| {
            let mut xo = kb.ic(0);
            for d in 0..r - 1 {
                let s = if f[d] > 1 {
                    kb.b.ins().udiv_imm_u(idx[d], f[d] as i64)
                } else {
                    idx[d]
                };
                let t = kb.b.ins().imul_imm_u(s, xs[d] as i64);
                xo = kb.b.ins().iadd(xo, t);
            }
            let oo = kb.offset(idx, &os[..r - 1]);
            kb.for_n(w, &mut |kb, xi| {
                let si = kb.b.ins().iadd(xo, xi);
                let a = kb.addr(xp, si, es);
                let v = kb.b.ins().load(int_ty(es), crate::kb::flags(), a, 0);
                let o = kb.b.ins().imul_imm_u(xi, fx as i64);
                let o = kb.b.ins().iadd(o, oo);
                let ob = kb.addr(op, o, es);
                for j in 0..fx {
                    kb.b.ins().store(crate::kb::flags(), v, ob, (j * es) as i32);
                }
            });
        });
        return Ok(());
    }
    kb.for_nd(&a.out_shape.clone(), &mut |kb, idx| {
        let oo = kb.offset(idx, &os);
        match a.mode {
            ResizeMode::Nearest => {
                let mut src = idx.to_vec();
                for &d in &interp {
                    let c = src_coord(kb, a.coord, idx[d], a.scales[d], x.shape[d], a.out_shape[d]);
                    let c = match a.nearest {
                        NearestMode::Floor => kb.b.ins().floor(c),
                        NearestMode::Ceil => kb.b.ins().ceil(c),
                        NearestMode::RoundPreferFloor => {
                            let h = kb.fc(0.5);
                            let t = kb.b.ins().fsub(c, h);
                            kb.b.ins().ceil(t)
                        }
                        NearestMode::RoundPreferCeil => {
                            let h = kb.fc(0.5);
                            let t = kb.b.ins().fadd(c, h);
                            kb.b.ins().floor(t)
                        }
                    };
                    let iv = kb.b.ins().fcvt_to_sint_sat(I64, c);
                    src[d] = clamp_idx(kb, iv, x.shape[d]);
                }
                let xo = kb.offset(&src, &xs);
                let v = kb.load_f32(xp, xo);
                kb.store_f32(v, op, oo);
            }
            ResizeMode::Linear => {
                // per interpolated dim: (i0, i1, w1)
                let mut lo = Vec::new();
                for &d in &interp {
                    let c = src_coord(kb, a.coord, idx[d], a.scales[d], x.shape[d], a.out_shape[d]);
                    let zero = kb.fc(0.0);
                    let maxc = kb.fc(x.shape[d] as f32 - 1.0);
                    let c = kb.fmax(c, zero);
                    let c = kb.fmin(c, maxc);
                    let f = kb.b.ins().floor(c);
                    let w1 = kb.b.ins().fsub(c, f);
                    let i0 = kb.b.ins().fcvt_to_sint_sat(I64, f);
                    let i1 = kb.b.ins().iadd_imm_u(i0, 1);
                    let i1 = clamp_idx(kb, i1, x.shape[d]);
                    lo.push((d, i0, i1, w1));
                }
                let z = kb.fc(0.0);
                let mut acc = z;
                for corner in 0..(1usize << lo.len()) {
                    let mut src = idx.to_vec();
                    let mut wgt = kb.fc(1.0);
                    for (bit, &(d, i0, i1, w1)) in lo.iter().enumerate() {
                        if corner >> bit & 1 == 1 {
                            src[d] = i1;
                            wgt = kb.b.ins().fmul(wgt, w1);
                        } else {
                            src[d] = i0;
                            let one = kb.fc(1.0);
                            let w0 = kb.b.ins().fsub(one, w1);
                            wgt = kb.b.ins().fmul(wgt, w0);
                        }
                    }
                    let xo = kb.offset(&src, &xs);
                    let v = kb.load_f32(xp, xo);
                    acc = kb.b.ins().fma(v, wgt, acc);
                }
                kb.store_f32(acc, op, oo);
            }
        }
    });
    Ok(())
}
