//! Reference interpreter: a slow, simple and exact evaluator of every op, used as the oracle in
//! tests and by constant folding.
//!
//! Float ops compute in `f64` and round once to the tensor's element type, so results are at
//! least as accurate as any back end's. Layouts are ignored: tensors are always in logical
//! row-major order.

use crate::ops::{
    ActKind, BinaryOp, ConvAttrs, ConvTransposeAttrs, CoordTransform, GemmAttrs, LoopAttrs,
    NearestMode, PadMode, PoolAttrs, ReduceKind, ResizeAttrs, ResizeMode, ScatterReduction,
    SliceAttrs, SoftmaxKind, UnaryOp, broadcast_shapes,
};
use crate::types::strides_of;
use crate::{ConstData, DType, Graph, IrError, Op, TensorType, ValueDef};

/// Element storage of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// Apply `$e` (with the element vector bound to `$v`) to every variant, rewrapping the result.
macro_rules! map_data {
    ($d:expr, $v:ident => $e:expr) => {
        match $d {
            TensorData::F32($v) => TensorData::F32($e),
            TensorData::F64($v) => TensorData::F64($e),
            TensorData::I64($v) => TensorData::I64($e),
            TensorData::I32($v) => TensorData::I32($e),
            TensorData::I8($v) => TensorData::I8($e),
            TensorData::U8($v) => TensorData::U8($e),
            TensorData::Bool($v) => TensorData::Bool($e),
        }
    };
}

/// Apply `$e` to every variant, returning a plain value.
macro_rules! with_data {
    ($d:expr, $v:ident => $e:expr) => {
        match $d {
            TensorData::F32($v) => $e,
            TensorData::F64($v) => $e,
            TensorData::I64($v) => $e,
            TensorData::I32($v) => $e,
            TensorData::I8($v) => $e,
            TensorData::U8($v) => $e,
            TensorData::Bool($v) => $e,
        }
    };
}

impl TensorData {
    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::Bool(_) => DType::Bool,
        }
    }
    /// Elements at the given flat indices (all must be in range).
    fn gather(&self, idx: &[usize]) -> TensorData {
        map_data!(self, v => idx.iter().map(|&i| v[i]).collect())
    }
    /// Concatenate flat data of the same variant.
    fn concat(parts: &[&TensorData]) -> Result<TensorData, String> {
        macro_rules! cat {
            ($var:ident) => {{
                let mut out = Vec::new();
                for p in parts {
                    match p {
                        TensorData::$var(v) => out.extend_from_slice(v),
                        other => {
                            return Err(format!(
                                "mixed element types {} and {}",
                                parts[0].dtype(),
                                other.dtype()
                            ));
                        }
                    }
                }
                TensorData::$var(out)
            }};
        }
        let Some(first) = parts.first() else {
            return Err("nothing to concatenate".into());
        };
        Ok(match first {
            TensorData::F32(_) => cat!(F32),
            TensorData::F64(_) => cat!(F64),
            TensorData::I64(_) => cat!(I64),
            TensorData::I32(_) => cat!(I32),
            TensorData::I8(_) => cat!(I8),
            TensorData::U8(_) => cat!(U8),
            TensorData::Bool(_) => cat!(Bool),
        })
    }
}

/// A dense tensor in logical row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        Tensor {
            shape: shape.into(),
            data: TensorData::F32(data),
        }
    }
    pub fn f64(shape: impl Into<Vec<usize>>, data: Vec<f64>) -> Self {
        Tensor {
            shape: shape.into(),
            data: TensorData::F64(data),
        }
    }
    pub fn i64(shape: impl Into<Vec<usize>>, data: Vec<i64>) -> Self {
        Tensor {
            shape: shape.into(),
            data: TensorData::I64(data),
        }
    }
    pub fn i32(shape: impl Into<Vec<usize>>, data: Vec<i32>) -> Self {
        Tensor {
            shape: shape.into(),
            data: TensorData::I32(data),
        }
    }
    pub fn bool(shape: impl Into<Vec<usize>>, data: Vec<bool>) -> Self {
        Tensor {
            shape: shape.into(),
            data: TensorData::Bool(data),
        }
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The plain-layout type of this tensor.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), self.shape.clone())
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.data {
            TensorData::F64(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<&[bool]> {
        match &self.data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// Decode a graph constant.
    pub fn from_const(ty: &TensorType, d: &ConstData) -> crate::Result<Tensor> {
        Self::from_bytes(ty, d.bytes())
    }

    /// Decode little-endian bytes of type `ty`.
    pub fn from_bytes(ty: &TensorType, bytes: &[u8]) -> crate::Result<Tensor> {
        let numel = ty
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| IrError::Msg(format!("type {ty} is too large")))?;
        let need = numel.checked_mul(ty.dtype.size());
        if need != Some(bytes.len()) {
            return Err(IrError::Msg(format!(
                "type {ty} needs {} bytes, got {}",
                need.map_or("too many".to_string(), |n| n.to_string()),
                bytes.len()
            )));
        }
        macro_rules! dec {
            ($t:ty, $n:expr) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
        }
        let data = match ty.dtype {
            DType::F32 => TensorData::F32(dec!(f32, 4)),
            DType::F64 => TensorData::F64(dec!(f64, 8)),
            DType::I64 => TensorData::I64(dec!(i64, 8)),
            DType::I32 => TensorData::I32(dec!(i32, 4)),
            DType::I8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
            DType::U8 => TensorData::U8(bytes.to_vec()),
            DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            d => {
                return Err(IrError::Msg(format!(
                    "the interpreter does not support element type {d}"
                )));
            }
        };
        Ok(Tensor {
            shape: ty.shape.clone(),
            data,
        })
    }

    /// Little-endian bytes of the elements.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// Float elements widened to f64 (f32 or f64 tensors only).
    pub fn floats(&self) -> Result<Vec<f64>, String> {
        match &self.data {
            TensorData::F32(v) => Ok(v.iter().map(|&x| x as f64).collect()),
            TensorData::F64(v) => Ok(v.clone()),
            _ => Err(format!(
                "expected a float tensor (f32/f64), got {}",
                self.dtype()
            )),
        }
    }
}

/// Build a float tensor of `dtype` (f32 rounds once from f64).
fn from_f64(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Result<Tensor, String> {
    let data = match dtype {
        DType::F32 => TensorData::F32(v.into_iter().map(|x| x as f32).collect()),
        DType::F64 => TensorData::F64(v),
        d => return Err(format!("cannot produce float results of type {d}")),
    };
    Ok(Tensor { shape, data })
}

/// Write the multi-index of flat index `i` in `shape` into `idx`.
fn unravel(mut i: usize, shape: &[usize], idx: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        let s = shape[d].max(1);
        idx[d] = i % s;
        i /= s;
    }
}

/// For every element of `out_shape`, the flat index of the element of `in_shape` that NumPy
/// broadcasting reads.
fn broadcast_index(out_shape: &[usize], in_shape: &[usize]) -> Vec<usize> {
    let r = out_shape.len();
    let in_strides = strides_of(in_shape);
    let mut st = vec![0usize; r];
    for (k, &d) in in_shape.iter().enumerate() {
        let od = r - in_shape.len() + k;
        st[od] = if d == 1 { 0 } else { in_strides[k] };
    }
    let n: usize = out_shape.iter().product();
    let mut idx = vec![0usize; r];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        unravel(i, out_shape, &mut idx);
        out.push(idx.iter().zip(&st).map(|(a, b)| a * b).sum());
    }
    out
}

/// Evaluate one op. Input types are checked with the op's shape inference first.
pub fn eval_op(op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>, String> {
    for (i, t) in inputs.iter().enumerate() {
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("shape too large")?;
        if n != t.data.len() {
            return Err(format!(
                "input {i}: shape {:?} needs {n} elements, data has {}",
                t.shape,
                t.data.len()
            ));
        }
    }
    let tys: Vec<TensorType> = inputs.iter().map(|t| t.ty()).collect();
    let refs: Vec<&TensorType> = tys.iter().collect();
    // tensors here are logical: a layout only says where a back end stores them
    let out_tys = op.infer_logical(&refs)?;
    let out_shape = out_tys.first().map(|t| t.shape.clone()).unwrap_or_default();
    let x = inputs[0];
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Op::Conv(a) if !a.epilogue.is_empty() => {
            let has_res = inputs.len() == 4;
            let base = &inputs[..if has_res { 3 } else { inputs.len() }];
            let t = conv(a, base, out_shape)?;
            one(epilogue(t, &a.epilogue, &inputs[3.min(inputs.len())..])?)
        }
        Op::Conv(a) => one(conv(a, inputs, out_shape)?),
        Op::ConvTranspose(a) => one(conv_transpose(a, inputs, out_shape)?),
        Op::Gemm(a) => one(epilogue(gemm(a, inputs, out_shape)?, &a.epilogue, &[])?),
        Op::MatMul(a) => {
            let t = matmul(inputs[0], inputs[1], out_shape)?;
            one(epilogue(t, &a.epilogue, &inputs[2..])?)
        }
        Op::Binary(b) => one(binary(*b, inputs[0], inputs[1], out_shape)?),
        Op::Chain { steps } => one(epilogue(inputs[0].clone(), steps, &inputs[1..])?),
        Op::Compare(c) => {
            let (ia, ib) = (
                broadcast_index(&out_shape, &x.shape),
                broadcast_index(&out_shape, &inputs[1].shape),
            );
            let cmp = |p: &dyn Fn(usize, usize) -> bool| -> Vec<bool> {
                ia.iter().zip(&ib).map(|(&i, &j)| p(i, j)).collect()
            };
            let out: Vec<bool> = match (&x.data, &inputs[1].data) {
                (TensorData::I64(p), TensorData::I64(q)) => cmp(&|i, j| c.eval(p[i], q[j])),
                (TensorData::I32(p), TensorData::I32(q)) => cmp(&|i, j| c.eval(p[i], q[j])),
                (TensorData::I8(p), TensorData::I8(q)) => cmp(&|i, j| c.eval(p[i], q[j])),
                (TensorData::U8(p), TensorData::U8(q)) => cmp(&|i, j| c.eval(p[i], q[j])),
                (TensorData::Bool(p), TensorData::Bool(q)) => cmp(&|i, j| c.eval(p[i], q[j])),
                _ => {
                    let (p, q) = (x.floats()?, inputs[1].floats()?);
                    cmp(&|i, j| c.eval(p[i], q[j]))
                }
            };
            one(Tensor {
                shape: out_shape,
                data: TensorData::Bool(out),
            })
        }
        Op::Logical(l) => {
            let (ia, ib) = (
                broadcast_index(&out_shape, &x.shape),
                broadcast_index(&out_shape, &inputs[1].shape),
            );
            let (TensorData::Bool(p), TensorData::Bool(q)) = (&x.data, &inputs[1].data) else {
                return Err("logical ops need bool operands".into());
            };
            let out = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| l.eval(p[i], q[j]))
                .collect();
            one(Tensor {
                shape: out_shape,
                data: TensorData::Bool(out),
            })
        }
        Op::ArgExtreme {
            max,
            axis,
            select_last,
            ..
        } => {
            let v = x.floats()?;
            let outer: usize = x.shape[..*axis].iter().product();
            let len = x.shape[*axis];
            let inner: usize = x.shape[*axis + 1..].iter().product();
            let mut out = Vec::with_capacity(outer * inner);
            for o in 0..outer {
                for i in 0..inner {
                    let at = |l: usize| v[(o * len + l) * inner + i];
                    let mut best = 0usize;
                    for l in 1..len {
                        let (a, b) = (at(l), at(best));
                        let better = if *max {
                            a > b || (*select_last && a == b)
                        } else {
                            a < b || (*select_last && a == b)
                        };
                        if better {
                            best = l;
                        }
                    }
                    out.push(best as i64);
                }
            }
            one(Tensor {
                shape: out_shape,
                data: TensorData::I64(out),
            })
        }
        Op::Not => {
            let TensorData::Bool(p) = &x.data else {
                return Err("not needs a bool operand".into());
            };
            one(Tensor {
                shape: out_shape,
                data: TensorData::Bool(p.iter().map(|b| !b).collect()),
            })
        }
        Op::Where => {
            let TensorData::Bool(cond) = &x.data else {
                return Err("where needs a bool condition".into());
            };
            let ic = broadcast_index(&out_shape, &x.shape);
            let ia = broadcast_index(&out_shape, &inputs[1].shape);
            let ib = broadcast_index(&out_shape, &inputs[2].shape);
            let yd = &inputs[2].data;
            macro_rules! pick {
                ($a:ident, $var:ident) => {{
                    let TensorData::$var(b) = yd else {
                        return Err("where: x and y types differ".into());
                    };
                    TensorData::$var(
                        (0..ic.len())
                            .map(|k| if cond[ic[k]] { $a[ia[k]] } else { b[ib[k]] })
                            .collect(),
                    )
                }};
            }
            let data = match &inputs[1].data {
                TensorData::F32(a) => pick!(a, F32),
                TensorData::F64(a) => pick!(a, F64),
                TensorData::I64(a) => pick!(a, I64),
                TensorData::I32(a) => pick!(a, I32),
                TensorData::I8(a) => pick!(a, I8),
                TensorData::U8(a) => pick!(a, U8),
                TensorData::Bool(a) => pick!(a, Bool),
            };
            one(Tensor {
                shape: out_shape,
                data,
            })
        }
        Op::Unary(u) => one(unary(*u, x)?),
        Op::Clip { min, max } if !x.dtype().is_float() => {
            let (lo, hi) = (*min as f64, *max as f64);
            macro_rules! clampi {
                ($v:expr, $t:ty) => {
                    $v.iter()
                        .map(|&a| {
                            let f = a as f64;
                            if f < lo {
                                lo as $t
                            } else if f > hi {
                                hi as $t
                            } else {
                                a
                            }
                        })
                        .collect()
                };
            }
            let data = match &x.data {
                TensorData::I64(v) => TensorData::I64(clampi!(v, i64)),
                TensorData::I32(v) => TensorData::I32(clampi!(v, i32)),
                TensorData::I8(v) => TensorData::I8(clampi!(v, i8)),
                TensorData::U8(v) => TensorData::U8(clampi!(v, u8)),
                _ => return Err(format!("clip is not defined on {}", x.dtype())),
            };
            one(Tensor {
                shape: out_shape,
                data,
            })
        }
        Op::Clip { min, max } => {
            let (lo, hi) = (*min as f64, *max as f64);
            one(float_map(x, |v| v.max(lo).min(hi))?)
        }
        Op::Act { kind, alpha, beta } => {
            let (a, b) = (*alpha as f64, *beta as f64);
            one(float_map(x, |v| act(*kind, a, b, v))?)
        }
        Op::IsNaN | Op::IsInf { .. } => {
            let v = x.floats()?;
            let f = |e: f64| match op {
                Op::IsInf { pos, neg } => {
                    (*pos && e == f64::INFINITY) || (*neg && e == f64::NEG_INFINITY)
                }
                _ => e.is_nan(),
            };
            one(Tensor {
                shape: out_shape,
                data: TensorData::Bool(v.into_iter().map(f).collect()),
            })
        }
        Op::BatchNorm { epsilon } => one(batch_norm(*epsilon, inputs)?),
        Op::MaxPool(a) => one(pool(a, x, out_shape, true)?),
        Op::MaxPoolIndices {
            attrs: a,
            storage_order,
        } => {
            let v = x.floats()?;
            let sp = a.kernel.len();
            let in_sp = &x.shape[2..];
            let out_sp = &out_shape[2..];
            let in_size: usize = in_sp.iter().product();
            let out_size: usize = out_sp.iter().product();
            let planes = x.shape[0] * x.shape[1];
            let kpos = kernel_positions(&a.kernel);
            let mut out = vec![0i64; planes * out_size];
            let mut oidx = vec![0; sp];
            let mut coord = vec![0isize; sp];
            for o in 0..out_size {
                unravel(o, out_sp, &mut oidx);
                let mut offs = Vec::new();
                for k in &kpos {
                    for d in 0..sp {
                        coord[d] = (oidx[d] * a.strides[d] + k[d] * a.dilations[d]) as isize
                            - a.pads[d] as isize;
                    }
                    if let Some(off) = spatial_offset(&coord, in_sp) {
                        // column-major spatial index for storage_order 1
                        let cm = if *storage_order {
                            let mut idx = 0usize;
                            for d in (0..sp).rev() {
                                idx = idx * in_sp[d] + coord[d] as usize;
                            }
                            idx
                        } else {
                            off
                        };
                        offs.push((off, cm));
                    }
                }
                for p in 0..planes {
                    let base = p * in_size;
                    let mut best: Option<(f64, usize)> = None;
                    for &(off, cm) in &offs {
                        let val = v[base + off];
                        if best.is_none_or(|(m, _)| val > m) {
                            best = Some((val, cm));
                        }
                    }
                    out[p * out_size + o] = (base + best.map_or(0, |b| b.1)) as i64;
                }
            }
            one(Tensor::i64(out_shape, out))
        }
        Op::AveragePool(a) => one(pool(a, x, out_shape, false)?),
        Op::GlobalAveragePool => {
            let v = x.floats()?;
            let plane: usize = x.shape[2..].iter().product();
            let planes = x.shape[0] * x.shape[1];
            let out = (0..planes)
                .map(|p| {
                    let s: f64 = v[p * plane..(p + 1) * plane].iter().sum();
                    if plane == 0 { 0.0 } else { s / plane as f64 }
                })
                .collect();
            one(from_f64(x.dtype(), out_shape, out)?)
        }
        Op::Relayout { .. } => one((*x).clone()),
        Op::Reshape { .. } => one(Tensor {
            shape: out_shape,
            data: x.data.clone(),
        }),
        Op::Expand { .. } => {
            let map = broadcast_index(&out_shape, &x.shape);
            one(Tensor {
                shape: out_shape,
                data: x.data.gather(&map),
            })
        }
        Op::Transpose { perm } => {
            let in_strides = strides_of(&x.shape);
            let n: usize = out_shape.iter().product();
            let mut idx = vec![0; out_shape.len()];
            let map: Vec<usize> = (0..n)
                .map(|i| {
                    unravel(i, &out_shape, &mut idx);
                    perm.iter()
                        .enumerate()
                        .map(|(d, &p)| idx[d] * in_strides[p])
                        .sum()
                })
                .collect();
            one(Tensor {
                shape: out_shape,
                data: x.data.gather(&map),
            })
        }
        Op::Concat { axis } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let mut bases = Vec::new();
            let mut b = 0;
            for t in inputs {
                bases.push(b);
                b += t.data.len();
            }
            let mut map = Vec::with_capacity(out_shape.iter().product());
            for o in 0..outer {
                for (t, &base) in inputs.iter().zip(&bases) {
                    let chunk = t.shape[*axis] * inner;
                    map.extend((0..chunk).map(|j| base + o * chunk + j));
                }
            }
            let parts: Vec<&TensorData> = inputs.iter().map(|t| &t.data).collect();
            one(Tensor {
                shape: out_shape,
                data: TensorData::concat(&parts)?.gather(&map),
            })
        }
        Op::Split { axis, sizes } => {
            let outer: usize = x.shape[..*axis].iter().product();
            let inner: usize = x.shape[axis + 1..].iter().product();
            let len = x.shape[*axis];
            let mut start = 0;
            let mut outs = Vec::new();
            for (s, ty) in sizes.iter().zip(out_tys) {
                let mut map = Vec::with_capacity(outer * s * inner);
                for o in 0..outer {
                    let base = (o * len + start) * inner;
                    map.extend(base..base + s * inner);
                }
                outs.push(Tensor {
                    shape: ty.shape,
                    data: x.data.gather(&map),
                });
                start += s;
            }
            Ok(outs)
        }
        Op::Slice(a) => one(slice(a, x, out_shape)),
        Op::LayerNorm { axis, epsilon } => {
            let v = x.floats()?;
            let len: usize = x.shape[*axis..].iter().product();
            let scale = inputs.get(1).map(|t| t.floats()).transpose()?;
            let bias = inputs.get(2).map(|t| t.floats()).transpose()?;
            let mut out = vec![0f64; v.len()];
            for (row, o) in v.chunks(len.max(1)).zip(out.chunks_mut(len.max(1))) {
                let n = row.len() as f64;
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n;
                let inv = 1.0 / (var + *epsilon as f64).sqrt();
                for (k, (y, a)) in o.iter_mut().zip(row).enumerate() {
                    *y = (a - mean) * inv * scale.as_ref().map_or(1.0, |s| s[k])
                        + bias.as_ref().map_or(0.0, |b| b[k]);
                }
            }
            one(from_f64(x.dtype(), out_shape, out)?)
        }
        Op::Softmax { axis, kind } => {
            let v = x.floats()?;
            let outer: usize = x.shape[..*axis].iter().product();
            let len = x.shape[*axis];
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut out = vec![0f64; v.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| (o * len + k) * inner + i;
                    let m = (0..len).map(|k| v[at(k)]).fold(f64::NEG_INFINITY, f64::max);
                    if *kind == SoftmaxKind::Hardmax {
                        if let Some(k) = (0..len).find(|&k| v[at(k)] == m) {
                            out[at(k)] = 1.0;
                        }
                        continue;
                    }
                    let s: f64 = (0..len).map(|k| (v[at(k)] - m).exp()).sum();
                    for k in 0..len {
                        out[at(k)] = if *kind == SoftmaxKind::LogSoftmax {
                            v[at(k)] - m - s.ln()
                        } else {
                            (v[at(k)] - m).exp() / s
                        };
                    }
                }
            }
            one(from_f64(x.dtype(), out_shape, out)?)
        }
        Op::Gather { axis } => {
            let idx = indices(inputs[1], x.shape[*axis])?;
            let outer: usize = x.shape[..*axis].iter().product();
            let len = x.shape[*axis];
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut map = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &k in &idx {
                    for i in 0..inner {
                        map.push((o * len + k) * inner + i);
                    }
                }
            }
            one(Tensor {
                shape: out_shape,
                data: x.data.gather(&map),
            })
        }
        Op::GatherElements { axis } => {
            let it = inputs[1];
            let idx = indices(it, x.shape[*axis])?;
            let xs = strides_of(&x.shape);
            let mut pos = vec![0; it.shape.len()];
            let map = (0..idx.len())
                .map(|n| {
                    unravel(n, &it.shape, &mut pos);
                    pos[*axis] = idx[n];
                    pos.iter().zip(&xs).map(|(a, b)| a * b).sum()
                })
                .collect::<Vec<usize>>();
            one(Tensor {
                shape: out_shape,
                data: x.data.gather(&map),
            })
        }
        Op::ScatterElements { axis, reduction } => {
            let (it, upd) = (inputs[1], inputs[2]);
            let idx = indices(it, x.shape[*axis])?;
            let xs = strides_of(&x.shape);
            let mut pos = vec![0; it.shape.len()];
            let pairs: Vec<(usize, usize)> = (0..idx.len())
                .map(|n| {
                    unravel(n, &it.shape, &mut pos);
                    pos[*axis] = idx[n];
                    (pos.iter().zip(&xs).map(|(a, b)| a * b).sum(), n)
                })
                .collect();
            one(scatter(x, upd, &pairs, *reduction)?)
        }
        Op::GatherND { batch_dims } => {
            let (map, _) = nd_index_map(x, inputs[1], *batch_dims)?;
            one(Tensor {
                shape: out_shape,
                data: x.data.gather(&map),
            })
        }
        Op::ScatterND { reduction } => {
            let (map, slice) = nd_index_map(x, inputs[1], 0)?;
            let pairs: Vec<(usize, usize)> =
                map.into_iter().enumerate().map(|(n, d)| (d, n)).collect();
            let _ = slice;
            one(scatter(x, inputs[2], &pairs, *reduction)?)
        }
        Op::Reduce { kind, axes, .. } => {
            let v = x.floats()?;
            let kept: Vec<usize> = x
                .shape
                .iter()
                .enumerate()
                .map(|(d, &s)| if axes.contains(&d) { 1 } else { s })
                .collect();
            let kst = strides_of(&kept);
            let count: usize = axes
                .iter()
                .enumerate()
                .filter(|(i, a)| !axes[..*i].contains(a))
                .map(|(_, &a)| x.shape[a])
                .product();
            let mut out = vec![kind.init(); kept.iter().product()];
            let mut idx = vec![0; x.shape.len()];
            for (i, &val) in v.iter().enumerate() {
                unravel(i, &x.shape, &mut idx);
                let o: usize = (0..idx.len())
                    .map(|d| {
                        if axes.contains(&d) {
                            0
                        } else {
                            idx[d] * kst[d]
                        }
                    })
                    .sum();
                out[o] = match kind {
                    ReduceKind::Max => out[o].max(val),
                    ReduceKind::Min => out[o].min(val),
                    ReduceKind::Prod => out[o] * val,
                    ReduceKind::SumSquare | ReduceKind::L2 => out[o] + val * val,
                    ReduceKind::L1 => out[o] + val.abs(),
                    ReduceKind::LogSumExp => out[o] + val.exp(),
                    _ => out[o] + val,
                };
            }
            for o in out.iter_mut() {
                *o = match kind {
                    ReduceKind::Mean => *o / count.max(1) as f64,
                    ReduceKind::L2 => o.sqrt(),
                    ReduceKind::LogSum | ReduceKind::LogSumExp => o.ln(),
                    _ => *o,
                };
            }
            one(from_f64(x.dtype(), out_shape, out)?)
        }
        Op::Resize(a) => one(resize(a, x, out_shape)?),
        Op::Pad { pads, mode, value } => {
            let r = x.shape.len();
            let n = x.numel();
            let xs = strides_of(&x.shape);
            let total: usize = out_shape.iter().product();
            let mut idx = vec![0; r];
            let mut map = Vec::with_capacity(total);
            for o in 0..total {
                unravel(o, &out_shape, &mut idx);
                let mut off = Some(0usize);
                for d in 0..r {
                    let len = x.shape[d] as i64;
                    let j = idx[d] as i64 - pads[d];
                    let j = match mode {
                        _ if (0..len).contains(&j) => Some(j),
                        PadMode::Constant => None,
                        _ if len == 0 => None,
                        PadMode::Edge => Some(j.clamp(0, len - 1)),
                        PadMode::Wrap => Some(j.rem_euclid(len)),
                        PadMode::Reflect => {
                            // reflect without repeating the edge; period 2(len-1)
                            if len == 1 {
                                Some(0)
                            } else {
                                let p = 2 * (len - 1);
                                let m = j.rem_euclid(p);
                                Some(if m < len { m } else { p - m })
                            }
                        }
                    };
                    off = match (off, j) {
                        (Some(o), Some(j)) => Some(o + j as usize * xs[d]),
                        _ => None,
                    };
                }
                map.push(off.unwrap_or(n));
            }
            let fill = fill_of(x.dtype(), *value)?;
            let all = TensorData::concat(&[&x.data, &fill])?;
            one(Tensor {
                shape: out_shape,
                data: all.gather(&map),
            })
        }
        Op::Resample { axis, fill } => {
            let v = x.floats()?;
            let (it, wt) = (inputs[1], inputs[2]);
            let TensorData::I32(idx) = &it.data else {
                return Err("resample indices must be i32".into());
            };
            let w = wt.floats()?;
            let (out_len, taps) = (it.shape[0], it.shape[1]);
            let outer: usize = x.shape[..*axis].iter().product();
            let len = x.shape[*axis];
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut out = vec![0f64; outer * out_len * inner];
            for o in 0..outer {
                for j in 0..out_len {
                    for i in 0..inner {
                        let dst = (o * out_len + j) * inner + i;
                        if idx[j * taps] < 0 {
                            out[dst] = *fill as f64;
                            continue;
                        }
                        let mut acc = 0.0;
                        for t in 0..taps {
                            let k = (idx[j * taps + t].max(0) as usize).min(len.saturating_sub(1));
                            acc += w[j * taps + t] * v[(o * len + k) * inner + i];
                        }
                        out[dst] = acc;
                    }
                }
            }
            one(from_f64(x.dtype(), out_shape, out)?)
        }
        Op::CumSum {
            axis,
            exclusive,
            reverse,
            prod,
        } => {
            let outer: usize = x.shape[..*axis].iter().product();
            let len = x.shape[*axis];
            let inner: usize = x.shape[axis + 1..].iter().product();
            macro_rules! scan {
                ($v:expr, $zero:expr, $one:expr, $add:expr, $mul:expr) => {{
                    let v = $v;
                    let mut out = v.clone();
                    for o in 0..outer {
                        for i in 0..inner {
                            let mut acc = if *prod { $one } else { $zero };
                            for s in 0..len {
                                let k = if *reverse { len - 1 - s } else { s };
                                let at = (o * len + k) * inner + i;
                                let before = acc;
                                acc = if *prod {
                                    $mul(acc, v[at])
                                } else {
                                    $add(acc, v[at])
                                };
                                out[at] = if *exclusive { before } else { acc };
                            }
                        }
                    }
                    out
                }};
            }
            let data = match &x.data {
                TensorData::F32(v) => {
                    TensorData::F32(scan!(v, 0f32, 1f32, |a: f32, b| a + b, |a: f32, b| a * b))
                }
                TensorData::F64(v) => {
                    TensorData::F64(scan!(v, 0f64, 1f64, |a: f64, b| a + b, |a: f64, b| a * b))
                }
                TensorData::I64(v) => TensorData::I64(scan!(
                    v,
                    0i64,
                    1i64,
                    |a: i64, b| a.wrapping_add(b),
                    |a: i64, b| a.wrapping_mul(b)
                )),
                TensorData::I32(v) => TensorData::I32(scan!(
                    v,
                    0i32,
                    1i32,
                    |a: i32, b| a.wrapping_add(b),
                    |a: i32, b| a.wrapping_mul(b)
                )),
                _ => return Err(format!("cum_sum is not defined on {}", x.dtype())),
            };
            one(Tensor {
                shape: out_shape,
                data,
            })
        }
        Op::TopK { axis, k, largest } => {
            let keys: Vec<f64> = match &x.data {
                TensorData::F32(v) => v.iter().map(|&a| a as f64).collect(),
                TensorData::F64(v) => v.clone(),
                TensorData::I64(v) => v.iter().map(|&a| a as f64).collect(),
                TensorData::I32(v) => v.iter().map(|&a| a as f64).collect(),
                TensorData::I8(v) => v.iter().map(|&a| a as f64).collect(),
                TensorData::U8(v) => v.iter().map(|&a| a as f64).collect(),
                TensorData::Bool(_) => return Err("top_k is not defined on bool".into()),
            };
            let outer: usize = x.shape[..*axis].iter().product();
            let len = x.shape[*axis];
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut map = vec![0usize; outer * k * inner];
            let mut ids = vec![0i64; outer * k * inner];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * len + j) * inner + i;
                    let mut order: Vec<usize> = (0..len).collect();
                    // stable: equal keys keep index order
                    order.sort_by(|&a, &b| {
                        let (ka, kb) = (keys[at(a)], keys[at(b)]);
                        let c = ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal);
                        if *largest { c.reverse() } else { c }
                    });
                    for (r, &j) in order.iter().take(*k).enumerate() {
                        let dst = (o * k + r) * inner + i;
                        map[dst] = at(j);
                        ids[dst] = j as i64;
                    }
                }
            }
            let mut shape = x.shape.clone();
            shape[*axis] = *k;
            Ok(vec![
                Tensor {
                    shape: shape.clone(),
                    data: x.data.gather(&map),
                },
                Tensor::i64(shape, ids),
            ])
        }
        Op::BitCast { to } => one(Tensor::from_bytes(
            &TensorType::new(*to, out_shape),
            &x.to_bytes(),
        )
        .map_err(|e| e.to_string())?),
        Op::Cast { to } => one(Tensor {
            shape: out_shape,
            data: cast(&x.data, *to)?,
        }),
        Op::If(b) => {
            let c = x.as_bool().ok_or("the condition is not bool")?;
            let g = if c[0] { &b.then_branch } else { &b.else_branch };
            let caps: Vec<Tensor> = inputs[1..].iter().map(|t| (*t).clone()).collect();
            run(g, &caps).map_err(|e| e.to_string())
        }
        Op::Loop(l) => eval_loop(l, inputs, &out_tys),
    }
}

/// [`Op::Loop`]: the body runs while `iter < m` and the condition hold; scan outputs are
/// stacked into `max_trip` rows, the rows of iterations that never ran zero.
fn eval_loop(
    l: &LoopAttrs,
    inputs: &[&Tensor],
    out_tys: &[TensorType],
) -> Result<Vec<Tensor>, String> {
    let n = l.n_carried;
    let g = &l.body;
    let m = inputs[0].as_i64().ok_or("the trip count is not i64")?[0];
    let mut cond = inputs[1].as_bool().ok_or("the condition is not bool")?[0];
    let mut carried: Vec<Tensor> = inputs[2..2 + n].iter().map(|t| (*t).clone()).collect();
    let caps: Vec<Tensor> = inputs[2 + n..].iter().map(|t| (*t).clone()).collect();
    let (iter_ty, cond_ty) = (g.ty(g.inputs[0]).clone(), g.ty(g.inputs[1]).clone());
    let n_scan = g.outputs.len() - 1 - n;
    let mut rows: Vec<Vec<u8>> = vec![Vec::new(); n_scan];
    let mut i: i64 = 0;
    while i < m && cond {
        if i as u64 >= l.max_trip as u64 {
            return Err(format!(
                "the loop needs more than its bound of {} iterations",
                l.max_trip
            ));
        }
        let mut ins = vec![
            Tensor::i64(iter_ty.shape.clone(), vec![i]),
            Tensor::bool(cond_ty.shape.clone(), vec![cond]),
        ];
        ins.append(&mut carried);
        ins.extend(caps.iter().cloned());
        let mut outs = run(g, &ins).map_err(|e| e.to_string())?.into_iter();
        cond = outs
            .next()
            .and_then(|c| c.as_bool().map(|b| b[0]))
            .ok_or("no condition")?;
        carried = outs.by_ref().take(n).collect();
        for (r, t) in rows.iter_mut().zip(outs) {
            r.extend(t.to_bytes());
        }
        i += 1;
    }
    let mut res = carried;
    for (r, ty) in rows.into_iter().zip(&out_tys[n..]) {
        let mut bytes = r;
        bytes.resize(ty.size_bytes(), 0);
        res.push(Tensor::from_bytes(ty, &bytes).map_err(|e| e.to_string())?);
    }
    Ok(res)
}

/// A one-element tensor of `dtype` holding `v` (the Pad fill).
fn fill_of(dtype: DType, v: f64) -> Result<TensorData, String> {
    Ok(match dtype {
        DType::F32 => TensorData::F32(vec![v as f32]),
        DType::F64 => TensorData::F64(vec![v]),
        DType::I64 => TensorData::I64(vec![v as i64]),
        DType::I32 => TensorData::I32(vec![v as i32]),
        DType::I8 => TensorData::I8(vec![v as i8]),
        DType::U8 => TensorData::U8(vec![v as u8]),
        DType::Bool => TensorData::Bool(vec![v != 0.0]),
        d => return Err(format!("no {d} tensors in the interpreter")),
    })
}

/// The values of an i32/i64 index tensor.
fn index_values(t: &Tensor) -> Result<Vec<i64>, String> {
    match &t.data {
        TensorData::I64(v) => Ok(v.clone()),
        TensorData::I32(v) => Ok(v.iter().map(|&i| i as i64).collect()),
        _ => Err(format!("indices must be i32/i64, got {}", t.dtype())),
    }
}

/// Index tensor values (i32/i64) normalized against `len` (negative = from the end).
fn indices(t: &Tensor, len: usize) -> Result<Vec<usize>, String> {
    index_values(t)?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + len as i64 } else { i };
            if j < 0 || j >= len as i64 {
                Err(format!("index {i} out of range for a dimension of {len}"))
            } else {
                Ok(j as usize)
            }
        })
        .collect()
}

/// GatherND/ScatterND addressing: for every element of the result (gather) or of the updates
/// (scatter), its flat offset in `data`. Also returns the size of one addressed slice.
fn nd_index_map(x: &Tensor, it: &Tensor, b: usize) -> Result<(Vec<usize>, usize), String> {
    let q = it.shape.len();
    let k = it.shape[q - 1];
    let raw = index_values(it)?;
    let xs = strides_of(&x.shape);
    let slice: usize = x.shape[b + k..].iter().product();
    let batch: usize = x.shape[..b].iter().product();
    let per_batch: usize = x.shape[b..].iter().product();
    let tuples = raw.len() / k.max(1);
    let tuples_per_batch = tuples / batch.max(1);
    let mut map = Vec::with_capacity(tuples * slice);
    for t in 0..tuples {
        let bi = t / tuples_per_batch.max(1);
        let mut off = bi * per_batch;
        for d in 0..k {
            let len = x.shape[b + d] as i64;
            let i = raw[t * k + d];
            let j = if i < 0 { i + len } else { i };
            if j < 0 || j >= len {
                return Err(format!("index {i} out of range for a dimension of {len}"));
            }
            off += j as usize * xs[b + d];
        }
        map.extend((0..slice).map(|s| off + s));
    }
    Ok((map, slice))
}

/// A copy of `x` with `x[dst] (op)= upd[src]` for every `(dst, src)` pair, in order.
fn scatter(
    x: &Tensor,
    upd: &Tensor,
    pairs: &[(usize, usize)],
    red: ScatterReduction,
) -> Result<Tensor, String> {
    if red == ScatterReduction::None {
        // gather from [data ++ updates]
        let n = x.numel();
        let mut map: Vec<usize> = (0..n).collect();
        for &(d, u) in pairs {
            map[d] = n + u;
        }
        let all = TensorData::concat(&[&x.data, &upd.data])?;
        return Ok(Tensor {
            shape: x.shape.clone(),
            data: all.gather(&map),
        });
    }
    let mut v = x.floats()?;
    let u = upd.floats()?;
    for &(d, s) in pairs {
        v[d] = match red {
            ScatterReduction::Add => v[d] + u[s],
            ScatterReduction::Mul => v[d] * u[s],
            ScatterReduction::Max => v[d].max(u[s]),
            ScatterReduction::Min => v[d].min(u[s]),
            ScatterReduction::None => u[s],
        };
    }
    from_f64(x.dtype(), x.shape.clone(), v)
}

fn float_map(x: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor, String> {
    let v = x.floats()?;
    from_f64(x.dtype(), x.shape.clone(), v.into_iter().map(f).collect())
}

/// Error function, accurate to a few ulps of f64.
///
/// For |x| < 6 it sums the everywhere-convergent series
/// `erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1))`, whose terms are all
/// positive (no cancellation). Beyond that `erf(x)` rounds to ±1 in f64.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= 6.0 {
        return x.signum();
    }
    let x2 = a * a;
    let mut term = a;
    let mut sum = a;
    let mut n = 0.0;
    loop {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
        if term <= sum * 1e-17 || n > 500.0 {
            break;
        }
    }
    let r = 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum;
    r.min(1.0).copysign(x)
}

/// A parameterized activation on one value (see [`ActKind`]).
pub fn act(kind: ActKind, a: f64, b: f64, v: f64) -> f64 {
    match kind {
        ActKind::HardSigmoid => (a * v + b).clamp(0.0, 1.0),
        ActKind::LeakyRelu => {
            if v < 0.0 {
                a * v
            } else {
                v
            }
        }
        ActKind::Elu => {
            if v < 0.0 {
                a * (v.exp() - 1.0)
            } else {
                v
            }
        }
        ActKind::Selu => b * if v <= 0.0 { a * (v.exp() - 1.0) } else { v },
        ActKind::Celu => v.max(0.0) + (a * ((v / a).exp() - 1.0)).min(0.0),
        ActKind::ThresholdedRelu => {
            if v > a {
                v
            } else {
                0.0
            }
        }
        ActKind::Shrink => {
            if v < -b {
                v + a
            } else if v > b {
                v - a
            } else {
                0.0
            }
        }
        ActKind::Swish => v / (1.0 + (-a * v).exp()),
        ActKind::Affine => v * a + b,
    }
}

fn softplus(v: f64) -> f64 {
    (v.exp() + 1.0).ln()
}

fn unary(u: UnaryOp, x: &Tensor) -> Result<Tensor, String> {
    // A few ops are also defined on integers.
    macro_rules! ints {
        ($v:expr, $var:ident, $t:ty) => {{
            let f = match u {
                UnaryOp::Neg => |a: $t| a.wrapping_neg(),
                UnaryOp::Abs => |a: $t| a.wrapping_abs(),
                UnaryOp::Relu => |a: $t| a.max(0),
                UnaryOp::Sign => |a: $t| a.signum(),
                UnaryOp::BitNot => |a: $t| !a,
                _ => return Err(format!("{} is not defined on {}", u.name(), x.dtype())),
            };
            return Ok(Tensor {
                shape: x.shape.clone(),
                data: TensorData::$var($v.iter().map(|&a| f(a)).collect()),
            });
        }};
    }
    match &x.data {
        TensorData::I64(v) => ints!(v, I64, i64),
        TensorData::I32(v) => ints!(v, I32, i32),
        TensorData::I8(v) => ints!(v, I8, i8),
        TensorData::U8(v) => {
            let f: fn(u8) -> u8 = match u {
                UnaryOp::Neg => |a| a.wrapping_neg(),
                UnaryOp::Abs | UnaryOp::Relu => |a| a,
                UnaryOp::Sign => |a| (a != 0) as u8,
                UnaryOp::BitNot => |a| !a,
                _ => return Err(format!("{} is not defined on {}", u.name(), x.dtype())),
            };
            return Ok(Tensor {
                shape: x.shape.clone(),
                data: TensorData::U8(v.iter().map(|&a| f(a)).collect()),
            });
        }
        _ => {}
    }
    let f: fn(f64) -> f64 = match u {
        UnaryOp::Relu => |v| if v < 0.0 { 0.0 } else { v },
        UnaryOp::Sigmoid => |v| 1.0 / (1.0 + (-v).exp()),
        UnaryOp::Tanh => f64::tanh,
        UnaryOp::Erf => erf,
        UnaryOp::Exp => f64::exp,
        UnaryOp::Log => f64::ln,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Neg => |v| -v,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Reciprocal => |v| 1.0 / v,
        UnaryOp::Floor => f64::floor,
        UnaryOp::Ceil => f64::ceil,
        UnaryOp::HardSwish => |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0),
        UnaryOp::Sin => f64::sin,
        UnaryOp::Cos => f64::cos,
        UnaryOp::Tan => f64::tan,
        UnaryOp::Asin => f64::asin,
        UnaryOp::Acos => f64::acos,
        UnaryOp::Atan => f64::atan,
        UnaryOp::Sinh => f64::sinh,
        UnaryOp::Cosh => f64::cosh,
        UnaryOp::Asinh => f64::asinh,
        UnaryOp::Acosh => f64::acosh,
        UnaryOp::Atanh => f64::atanh,
        UnaryOp::Round => f64::round_ties_even,
        UnaryOp::Sign => |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        UnaryOp::Softplus => softplus,
        UnaryOp::Softsign => |v| v / (1.0 + v.abs()),
        UnaryOp::Mish => |v| v * softplus(v).tanh(),
        UnaryOp::Gelu => |v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)),
        UnaryOp::GeluTanh => |v| {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
        },
        UnaryOp::BitNot => return Err(format!("bit_not is not defined on {}", x.dtype())),
    };
    float_map(x, f)
}

fn binary(b: BinaryOp, x: &Tensor, y: &Tensor, out_shape: Vec<usize>) -> Result<Tensor, String> {
    let ia = broadcast_index(&out_shape, &x.shape);
    let ib = broadcast_index(&out_shape, &y.shape);
    macro_rules! ints {
        ($p:expr, $q:expr, $var:ident, $t:ty) => {{
            let mut out = Vec::with_capacity(ia.len());
            for (&i, &j) in ia.iter().zip(&ib) {
                let (a, c): ($t, $t) = ($p[i], $q[j]);
                out.push(match b {
                    BinaryOp::Add => a.wrapping_add(c),
                    BinaryOp::Sub => a.wrapping_sub(c),
                    BinaryOp::Mul => a.wrapping_mul(c),
                    BinaryOp::Div => {
                        if c == 0 {
                            return Err("integer division by zero".into());
                        }
                        a.checked_div(c)
                            .ok_or_else(|| format!("integer division overflows ({a} / {c})"))?
                    }
                    BinaryOp::Pow => {
                        let (ai, ci) = (a as i64, c as i64);
                        if ci >= 0 {
                            a.wrapping_pow(u32::try_from(ci).unwrap_or(u32::MAX))
                        } else if ai == 1 {
                            1
                        } else if ai == 0 {
                            return Err("integer zero to a negative power".into());
                        } else if ai == -1 {
                            (if ci % 2 == 0 { 1i64 } else { -1i64 }) as $t
                        } else {
                            0
                        }
                    }
                    BinaryOp::Max => a.max(c),
                    BinaryOp::Min => a.min(c),
                    BinaryOp::Mod | BinaryOp::Fmod => {
                        if c == 0 {
                            return Err("integer division by zero".into());
                        }
                        let r = a.wrapping_rem(c);
                        #[allow(unused_comparisons)]
                        let wrong_sign = b == BinaryOp::Mod && r != 0 && ((r < 0) != (c < 0));
                        if wrong_sign { r.wrapping_add(c) } else { r }
                    }
                    BinaryOp::BitAnd => a & c,
                    BinaryOp::BitOr => a | c,
                    BinaryOp::BitXor => a ^ c,
                    BinaryOp::Shl => a.checked_shl(c as u32).unwrap_or(0),
                    BinaryOp::Shr => a.checked_shr(c as u32).unwrap_or(0),
                    #[allow(unused_comparisons)]
                    BinaryOp::PRelu => {
                        if a < 0 {
                            a.wrapping_mul(c)
                        } else {
                            a
                        }
                    }
                });
            }
            return Ok(Tensor {
                shape: out_shape,
                data: TensorData::$var(out),
            });
        }};
    }
    match (&x.data, &y.data) {
        (TensorData::I64(p), TensorData::I64(q)) => ints!(p, q, I64, i64),
        (TensorData::I32(p), TensorData::I32(q)) => ints!(p, q, I32, i32),
        (TensorData::I8(p), TensorData::I8(q)) => ints!(p, q, I8, i8),
        (TensorData::U8(p), TensorData::U8(q)) => ints!(p, q, U8, u8),
        _ => {}
    }
    let (p, q) = (x.floats()?, y.floats()?);
    let f: fn(f64, f64) -> f64 = match b {
        BinaryOp::Add => |a, c| a + c,
        BinaryOp::Sub => |a, c| a - c,
        BinaryOp::Mul => |a, c| a * c,
        BinaryOp::Div => |a, c| a / c,
        BinaryOp::Pow => f64::powf,
        BinaryOp::Max => |a, c| {
            if a.is_nan() || c.is_nan() {
                f64::NAN
            } else {
                a.max(c)
            }
        },
        BinaryOp::Min => |a, c| {
            if a.is_nan() || c.is_nan() {
                f64::NAN
            } else {
                a.min(c)
            }
        },
        BinaryOp::Fmod => |a, c| a % c,
        BinaryOp::Mod => |a, c| {
            let r = a % c;
            if r != 0.0 && ((r < 0.0) != (c < 0.0)) {
                r + c
            } else {
                r
            }
        },
        BinaryOp::PRelu => |a, c| if a < 0.0 { a * c } else { a },
        BinaryOp::BitAnd | BinaryOp::BitOr | BinaryOp::BitXor | BinaryOp::Shl | BinaryOp::Shr => {
            return Err(format!("{} is not defined on {}", b.name(), x.dtype()));
        }
    };
    let out = ia.iter().zip(&ib).map(|(&i, &j)| f(p[i], q[j])).collect();
    from_f64(x.dtype(), out_shape, out)
}

/// Kernel window offsets: for each kernel position, its multi-index.
fn kernel_positions(kernel: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = kernel.iter().product();
    (0..n)
        .map(|i| {
            let mut k = vec![0; kernel.len()];
            unravel(i, kernel, &mut k);
            k
        })
        .collect()
}

/// Flat spatial offset of `coord` in `shape`, or `None` when outside.
fn spatial_offset(coord: &[isize], shape: &[usize]) -> Option<usize> {
    let mut off = 0usize;
    for (&c, &s) in coord.iter().zip(shape) {
        if c < 0 || c as usize >= s {
            return None;
        }
        off = off * s + c as usize;
    }
    Some(off)
}

fn conv(a: &ConvAttrs, ins: &[&Tensor], out_shape: Vec<usize>) -> Result<Tensor, String> {
    let (xt, wt) = (ins[0], ins[1]);
    let x = xt.floats()?;
    let w = wt.floats()?;
    let bias = match ins.get(2) {
        Some(b) => Some(b.floats()?),
        None => None,
    };
    let sp = a.kernel.len();
    let (n, c) = (xt.shape[0], xt.shape[1]);
    let (m, cg) = (wt.shape[0], wt.shape[1]);
    let mg = m / a.groups;
    let in_sp = &xt.shape[2..];
    let out_sp = &out_shape[2..];
    let in_size: usize = in_sp.iter().product();
    let out_size: usize = out_sp.iter().product();
    let kpos = kernel_positions(&a.kernel);
    let ksize = kpos.len();
    let mut out = vec![0f64; out_shape.iter().product()];
    let mut oidx = vec![0; sp];
    let mut coord = vec![0isize; sp];
    for o in 0..out_size {
        unravel(o, out_sp, &mut oidx);
        let offs: Vec<Option<usize>> = kpos
            .iter()
            .map(|k| {
                for d in 0..sp {
                    coord[d] = (oidx[d] * a.strides[d] + k[d] * a.dilations[d]) as isize
                        - a.pads[d] as isize;
                }
                spatial_offset(&coord, in_sp)
            })
            .collect();
        for b in 0..n {
            for mo in 0..m {
                let g = mo / mg;
                let mut acc = bias.as_ref().map_or(0.0, |bv| bv[mo]);
                for ci in 0..cg {
                    let xbase = (b * c + g * cg + ci) * in_size;
                    let wbase = (mo * cg + ci) * ksize;
                    for (kk, off) in offs.iter().enumerate() {
                        if let Some(off) = off {
                            acc += x[xbase + off] * w[wbase + kk];
                        }
                    }
                }
                out[(b * m + mo) * out_size + o] = acc;
            }
        }
    }
    from_f64(xt.dtype(), out_shape, out)
}

fn conv_transpose(
    a: &ConvTransposeAttrs,
    ins: &[&Tensor],
    out_shape: Vec<usize>,
) -> Result<Tensor, String> {
    let (xt, wt) = (ins[0], ins[1]);
    let x = xt.floats()?;
    let w = wt.floats()?;
    let sp = a.kernel.len();
    let (n, c) = (xt.shape[0], xt.shape[1]);
    let mg = wt.shape[1];
    let cg = c / a.groups;
    let m = out_shape[1];
    let in_sp = &xt.shape[2..];
    let out_sp = &out_shape[2..];
    let in_size: usize = in_sp.iter().product();
    let out_size: usize = out_sp.iter().product();
    let kpos = kernel_positions(&a.kernel);
    let ksize = kpos.len();
    let mut out = vec![0f64; out_shape.iter().product()];
    if let Some(bt) = ins.get(2) {
        let bv = bt.floats()?;
        for (i, o) in out.iter_mut().enumerate() {
            *o = bv[(i / out_size) % m];
        }
    }
    let mut iidx = vec![0; sp];
    let mut coord = vec![0isize; sp];
    for i in 0..in_size {
        unravel(i, in_sp, &mut iidx);
        let offs: Vec<Option<usize>> = kpos
            .iter()
            .map(|k| {
                for d in 0..sp {
                    coord[d] = (iidx[d] * a.strides[d] + k[d] * a.dilations[d]) as isize
                        - a.pads[d] as isize;
                }
                spatial_offset(&coord, out_sp)
            })
            .collect();
        for b in 0..n {
            for ch in 0..c {
                let g = ch / cg;
                let xv = x[(b * c + ch) * in_size + i];
                for mo in 0..mg {
                    let obase = (b * m + g * mg + mo) * out_size;
                    let wbase = (ch * mg + mo) * ksize;
                    for (kk, off) in offs.iter().enumerate() {
                        if let Some(off) = off {
                            out[obase + off] += xv * w[wbase + kk];
                        }
                    }
                }
            }
        }
    }
    from_f64(xt.dtype(), out_shape, out)
}

fn gemm(a: &GemmAttrs, ins: &[&Tensor], out_shape: Vec<usize>) -> Result<Tensor, String> {
    let (at, bt) = (ins[0], ins[1]);
    let av = at.floats()?;
    let bv = bt.floats()?;
    let (m, n) = (out_shape[0], out_shape[1]);
    let k = if a.trans_a { at.shape[0] } else { at.shape[1] };
    let cv = match ins.get(2) {
        Some(ct) if a.beta != 0.0 => Some((ct.floats()?, broadcast_index(&out_shape, &ct.shape))),
        _ => None,
    };
    let (alpha, beta) = (a.alpha as f64, a.beta as f64);
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for kk in 0..k {
                let x = if a.trans_a {
                    av[kk * m + i]
                } else {
                    av[i * k + kk]
                };
                let y = if a.trans_b {
                    bv[j * k + kk]
                } else {
                    bv[kk * n + j]
                };
                s += x * y;
            }
            let mut r = alpha * s;
            if let Some((c, ci)) = &cv {
                r += beta * c[ci[i * n + j]];
            }
            out[i * n + j] = r;
        }
    }
    from_f64(at.dtype(), out_shape, out)
}

fn matmul(at: &Tensor, bt: &Tensor, out_shape: Vec<usize>) -> Result<Tensor, String> {
    let av = at.floats()?;
    let bv = bt.floats()?;
    let a2: Vec<usize> = if at.shape.len() == 1 {
        vec![1, at.shape[0]]
    } else {
        at.shape.clone()
    };
    let b2: Vec<usize> = if bt.shape.len() == 1 {
        vec![bt.shape[0], 1]
    } else {
        bt.shape.clone()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch = broadcast_shapes(ab, bb)?;
    let ia = broadcast_index(&batch, ab);
    let ib = broadcast_index(&batch, bb);
    let mut out = Vec::with_capacity(ia.len() * m * n);
    for (&pa, &pb) in ia.iter().zip(&ib) {
        let (oa, ob) = (pa * m * k, pb * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for kk in 0..k {
                    s += av[oa + i * k + kk] * bv[ob + kk * n + j];
                }
                out.push(s);
            }
        }
    }
    from_f64(at.dtype(), out_shape, out)
}

fn batch_norm(eps: f32, ins: &[&Tensor]) -> Result<Tensor, String> {
    let xt = ins[0];
    let x = xt.floats()?;
    let p: Vec<Vec<f64>> = ins[1..]
        .iter()
        .map(|t| t.floats())
        .collect::<Result<_, _>>()?;
    let (scale, bias, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let c = xt.shape[1];
    let inner: usize = xt.shape[2..].iter().product();
    let out = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / inner.max(1)) % c;
            (v - mean[ch]) / (var[ch] + eps as f64).sqrt() * scale[ch] + bias[ch]
        })
        .collect();
    from_f64(xt.dtype(), xt.shape.clone(), out)
}

fn pool(a: &PoolAttrs, xt: &Tensor, out_shape: Vec<usize>, max: bool) -> Result<Tensor, String> {
    let x = xt.floats()?;
    let sp = a.kernel.len();
    let in_sp = &xt.shape[2..];
    let out_sp = &out_shape[2..];
    let in_size: usize = in_sp.iter().product();
    let out_size: usize = out_sp.iter().product();
    let planes = xt.shape[0] * xt.shape[1];
    let kpos = kernel_positions(&a.kernel);
    let mut out = vec![0f64; planes * out_size];
    let mut oidx = vec![0; sp];
    let mut coord = vec![0isize; sp];
    for o in 0..out_size {
        unravel(o, out_sp, &mut oidx);
        let mut offs = Vec::new();
        // Window positions inside input + pads (the count_include_pad divisor).
        let mut in_padded = 0usize;
        for k in &kpos {
            let mut inside_padded = true;
            for d in 0..sp {
                coord[d] =
                    (oidx[d] * a.strides[d] + k[d] * a.dilations[d]) as isize - a.pads[d] as isize;
                if coord[d] >= (in_sp[d] + a.pads[sp + d]) as isize {
                    inside_padded = false;
                }
            }
            if inside_padded {
                in_padded += 1;
            }
            if let Some(off) = spatial_offset(&coord, in_sp) {
                offs.push(off);
            }
        }
        for p in 0..planes {
            let base = p * in_size;
            out[p * out_size + o] = if max {
                offs.iter()
                    .map(|&off| x[base + off])
                    .fold(
                        f64::NEG_INFINITY,
                        |m, v| if v > m || v.is_nan() { v } else { m },
                    )
            } else {
                let s: f64 = offs.iter().map(|&off| x[base + off]).sum();
                let div = if a.count_include_pad {
                    in_padded
                } else {
                    offs.len()
                };
                if div == 0 { 0.0 } else { s / div as f64 }
            };
        }
    }
    from_f64(xt.dtype(), out_shape, out)
}

fn slice(a: &SliceAttrs, xt: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let st = strides_of(&xt.shape);
    let n: usize = out_shape.iter().product();
    let mut idx = vec![0; out_shape.len()];
    let map: Vec<usize> = (0..n)
        .map(|i| {
            unravel(i, &out_shape, &mut idx);
            (0..idx.len())
                .map(|d| (a.starts[d] as i64 + idx[d] as i64 * a.steps[d]) as usize * st[d])
                .sum()
        })
        .collect();
    Tensor {
        shape: out_shape,
        data: xt.data.gather(&map),
    }
}

/// Source coordinate of output index `x` along a dim (ONNX coordinate transforms, in f32 like
/// onnxruntime).
fn resize_coord(ct: CoordTransform, x: usize, scale: f32, in_len: usize, out_len: usize) -> f32 {
    let xf = x as f32;
    match ct {
        CoordTransform::HalfPixel => (xf + 0.5) / scale - 0.5,
        CoordTransform::PytorchHalfPixel => {
            if out_len > 1 {
                (xf + 0.5) / scale - 0.5
            } else {
                0.0
            }
        }
        CoordTransform::AlignCorners => {
            if out_len == 1 {
                0.0
            } else {
                // The resized length is `in * scale` before flooring (ONNX reference).
                xf * (in_len as f32 - 1.0) / (in_len as f32 * scale - 1.0)
            }
        }
        CoordTransform::Asymmetric => xf / scale,
    }
}

fn nearest_index(mode: NearestMode, v: f32, in_len: usize) -> usize {
    let r = match mode {
        NearestMode::Floor => v.floor(),
        NearestMode::Ceil => v.ceil(),
        NearestMode::RoundPreferFloor => {
            if v - v.floor() == 0.5 {
                v.floor()
            } else {
                v.round()
            }
        }
        NearestMode::RoundPreferCeil => {
            if v - v.floor() == 0.5 {
                v.ceil()
            } else {
                v.round()
            }
        }
    };
    (r.max(0.0) as usize).min(in_len - 1)
}

/// A fused kernel epilogue (or chain) applied to `t` step by step; each `add`/`mul` step reads
/// the next of `operands` (broadcast to `t`).
fn epilogue(
    mut t: Tensor,
    steps: &[crate::ops::EpilogueStep],
    operands: &[&Tensor],
) -> Result<Tensor, String> {
    let mut operands = operands.iter();
    for step in steps {
        let op = step.as_op();
        let r = if step.is_binary() {
            let r = operands.next().ok_or("epilogue operand missing")?;
            eval_op(&op, &[&t, r])?
        } else {
            eval_op(&op, &[&t])?
        };
        t = r
            .into_iter()
            .next()
            .ok_or("epilogue step produced nothing")?;
    }
    Ok(t)
}

/// A nearest-mode Resize's source index along dim `d` (input length `in_len`) for each output
/// index; back ends use it to recognise integer upsampling.
pub fn nearest_sources(a: &ResizeAttrs, d: usize, in_len: usize) -> Vec<usize> {
    let out_len = a.out_shape[d];
    (0..out_len)
        .map(|o| {
            let c = resize_coord(a.coord, o, a.scales[d], in_len, out_len);
            nearest_index(a.nearest, c, in_len)
        })
        .collect()
}

/// A linear-mode Resize's taps along dim `d` (input length `in_len`, at least 1): for each
/// output index, (lower source index, upper source index, upper weight); the output is the
/// product over dims of these 1-D interpolations.
pub fn linear_taps(a: &ResizeAttrs, d: usize, in_len: usize) -> Vec<(usize, usize, f64)> {
    let out_len = a.out_shape[d];
    (0..out_len)
        .map(|o| {
            if a.scales[d] == 1.0 && in_len == out_len {
                return (o, o, 0.0);
            }
            let c = resize_coord(a.coord, o, a.scales[d], in_len, out_len)
                .clamp(0.0, (in_len - 1) as f32);
            let i0 = (c.floor() as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, (c - i0 as f32) as f64)
        })
        .collect()
}

fn resize(a: &ResizeAttrs, xt: &Tensor, out_shape: Vec<usize>) -> Result<Tensor, String> {
    let r = xt.shape.len();
    let n: usize = out_shape.iter().product();
    if n > 0 && xt.shape.contains(&0) {
        return Err("cannot resize an empty tensor to a non-empty one".into());
    }
    let in_st = strides_of(&xt.shape);
    let mut idx = vec![0; r];
    match a.mode {
        ResizeMode::Nearest => {
            // Per dim, per output index: the source index.
            let src: Vec<Vec<usize>> = (0..r).map(|d| nearest_sources(a, d, xt.shape[d])).collect();
            let map: Vec<usize> = (0..n)
                .map(|i| {
                    unravel(i, &out_shape, &mut idx);
                    (0..r).map(|d| src[d][idx[d]] * in_st[d]).sum()
                })
                .collect();
            Ok(Tensor {
                shape: out_shape,
                data: xt.data.gather(&map),
            })
        }
        ResizeMode::Linear => {
            let x = xt.floats()?;
            let taps: Vec<Vec<(usize, usize, f64)>> =
                (0..r).map(|d| linear_taps(a, d, xt.shape[d])).collect();
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                unravel(i, &out_shape, &mut idx);
                let mut s = 0.0;
                for corner in 0..(1usize << r) {
                    let mut w = 1.0;
                    let mut off = 0;
                    for d in 0..r {
                        let (i0, i1, t) = taps[d][idx[d]];
                        if corner >> d & 1 == 1 {
                            w *= t;
                            off += i1 * in_st[d];
                        } else {
                            w *= 1.0 - t;
                            off += i0 * in_st[d];
                        }
                        if w == 0.0 {
                            break;
                        }
                    }
                    if w != 0.0 {
                        s += w * x[off];
                    }
                }
                out.push(s);
            }
            from_f64(xt.dtype(), out_shape, out)
        }
    }
}

fn cast(src: &TensorData, to: DType) -> Result<TensorData, String> {
    macro_rules! to_num {
        ($t:ty) => {
            match src {
                TensorData::F32(v) => v.iter().map(|&x| x as $t).collect::<Vec<$t>>(),
                TensorData::F64(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::I64(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::I32(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::I8(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::U8(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::Bool(v) => v.iter().map(|&x| x as u8 as $t).collect(),
            }
        };
    }
    Ok(match to {
        DType::F32 => TensorData::F32(to_num!(f32)),
        DType::F64 => TensorData::F64(to_num!(f64)),
        DType::I64 => TensorData::I64(to_num!(i64)),
        DType::I32 => TensorData::I32(to_num!(i32)),
        DType::I8 => TensorData::I8(to_num!(i8)),
        DType::U8 => TensorData::U8(to_num!(u8)),
        DType::Bool => TensorData::Bool(match src {
            TensorData::F32(v) => v.iter().map(|&x| x != 0.0).collect(),
            TensorData::F64(v) => v.iter().map(|&x| x != 0.0).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::Bool(v) => v.clone(),
        }),
        d => return Err(format!("the interpreter does not support casting to {d}")),
    })
}

/// Run a whole graph on `inputs` (in `g.inputs` order); returns the values of `g.outputs`.
pub fn run(g: &Graph, inputs: &[Tensor]) -> crate::Result<Vec<Tensor>> {
    if inputs.len() != g.inputs.len() {
        return Err(IrError::Msg(format!(
            "graph '{}' takes {} inputs, {} given",
            g.name,
            g.inputs.len(),
            inputs.len()
        )));
    }
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    for (t, &v) in inputs.iter().zip(&g.inputs) {
        let ty = g.ty(v);
        if t.shape != ty.shape || t.dtype() != ty.dtype || t.data.len() != ty.numel() {
            return Err(IrError::Msg(format!(
                "input '{}' must be {}, got {}[{:?}] with {} elements",
                g.value(v).name,
                ty,
                t.dtype(),
                t.shape,
                t.data.len()
            )));
        }
        vals[v.index()] = Some(t.clone());
    }
    let load = |vals: &mut Vec<Option<Tensor>>, v: crate::ValueId| -> crate::Result<()> {
        if vals[v.index()].is_none() {
            let val = g.value(v);
            match &val.def {
                ValueDef::Const(d) => vals[v.index()] = Some(Tensor::from_const(&val.ty, d)?),
                _ => {
                    return Err(IrError::Msg(format!(
                        "value '{}' is used before it is computed",
                        val.name
                    )));
                }
            }
        }
        Ok(())
    };
    for (_, n) in g.iter_nodes() {
        for &i in &n.inputs {
            load(&mut vals, i)?;
        }
        let ins: Vec<&Tensor> = n
            .inputs
            .iter()
            .map(|i| vals[i.index()].as_ref().unwrap())
            .collect();
        let outs = eval_op(&n.op, &ins).map_err(|msg| IrError::Node {
            node: n.name.clone(),
            op: n.op.name().into(),
            msg,
        })?;
        for (&o, t) in n.outputs.iter().zip(outs) {
            vals[o.index()] = Some(t);
        }
    }
    let mut res = Vec::with_capacity(g.outputs.len());
    for &o in &g.outputs {
        load(&mut vals, o)?;
        res.push(vals[o.index()].clone().unwrap());
    }
    Ok(res)
}
