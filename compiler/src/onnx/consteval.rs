//! A small constant evaluator for the ops that appear in shape arithmetic (`Shape`, `Gather`,
//! `Concat`, `Slice`, `Cast`, elementwise arithmetic, `Range`, `Where`, ...). Integers are computed
//! in i64 and floats in f64, then stored back in the tensor's element type.

use half::{bf16, f16};
use kiln_ir::ops::{SliceAttrs, broadcast_shapes};
use kiln_ir::types::strides_of;
use kiln_ir::{ConstData, DType, TensorType};

/// Largest constant (elements) the evaluator computes with.
pub const FOLD_LIMIT: usize = 1 << 22;

#[derive(Debug, Clone, PartialEq)]
pub enum Vals {
    I(Vec<i64>),
    F(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CT {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub v: Vals,
}

fn is_int(d: DType) -> bool {
    !d.is_float()
}

impl CT {
    pub fn i64s(shape: Vec<usize>, v: Vec<i64>) -> CT {
        CT {
            dtype: DType::I64,
            shape,
            v: Vals::I(v),
        }
    }

    pub fn numel(&self) -> usize {
        match &self.v {
            Vals::I(v) => v.len(),
            Vals::F(v) => v.len(),
        }
    }

    /// Decode constant bytes.
    pub fn from_bytes(ty: &TensorType, data: &ConstData) -> CT {
        let b = data.bytes();
        let v = match ty.dtype {
            DType::F32 => Vals::F(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
            ),
            DType::F64 => Vals::F(
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::F16 => Vals::F(
                b.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
            ),
            DType::BF16 => Vals::F(
                b.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
            ),
            DType::I64 | DType::U64 => Vals::I(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I32 => Vals::I(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            DType::U32 => Vals::I(
                b.chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            DType::I16 => Vals::I(
                b.chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            ),
            DType::U16 => Vals::I(
                b.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            ),
            DType::I8 => Vals::I(b.iter().map(|&x| x as i8 as i64).collect()),
            DType::U8 => Vals::I(b.iter().map(|&x| x as i64).collect()),
            DType::Bool => Vals::I(b.iter().map(|&x| (x != 0) as i64).collect()),
        };
        CT {
            dtype: ty.dtype,
            shape: ty.shape.clone(),
            v,
        }
    }

    /// Encode as constant bytes of `self.dtype`.
    pub fn to_bytes(&self) -> (TensorType, ConstData) {
        let c = self.cast(self.dtype);
        let mut out = Vec::with_capacity(c.numel() * c.dtype.size());
        match (&c.v, c.dtype) {
            (Vals::F(v), DType::F32) => {
                v.iter().for_each(|x| out.extend((*x as f32).to_le_bytes()))
            }
            (Vals::F(v), DType::F64) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            (Vals::F(v), DType::F16) => v
                .iter()
                .for_each(|x| out.extend(f16::from_f64(*x).to_le_bytes())),
            (Vals::F(v), DType::BF16) => v
                .iter()
                .for_each(|x| out.extend(bf16::from_f64(*x).to_le_bytes())),
            (Vals::I(v), d) => {
                let sz = d.size();
                v.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()[..sz]));
            }
            (Vals::F(_), _) => unreachable!("cast produced floats for an integer type"),
        }
        (
            TensorType::new(self.dtype, self.shape.clone()),
            ConstData::from_vec(out),
        )
    }

    pub fn as_i64(&self) -> Vec<i64> {
        match &self.v {
            Vals::I(v) => v.clone(),
            Vals::F(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    pub fn as_f64(&self) -> Vec<f64> {
        match &self.v {
            Vals::I(v) => v.iter().map(|&x| x as f64).collect(),
            Vals::F(v) => v.clone(),
        }
    }

    /// Convert to another element type (C-style truncation for float -> int).
    pub fn cast(&self, to: DType) -> CT {
        let v = if to == DType::Bool {
            Vals::I(self.as_f64().iter().map(|&x| (x != 0.0) as i64).collect())
        } else if is_int(to) {
            let bits = (to.size() * 8) as u32;
            let wrap = |x: i64| -> i64 {
                if bits >= 64 {
                    x
                } else if matches!(to, DType::U8 | DType::U16 | DType::U32) {
                    x & ((1i64 << bits) - 1)
                } else {
                    (x << (64 - bits)) >> (64 - bits)
                }
            };
            Vals::I(self.as_i64().into_iter().map(wrap).collect())
        } else {
            let f = self.as_f64();
            Vals::F(match to {
                DType::F32 => f.iter().map(|&x| x as f32 as f64).collect(),
                DType::F16 => f.iter().map(|&x| f16::from_f64(x).to_f64()).collect(),
                DType::BF16 => f.iter().map(|&x| bf16::from_f64(x).to_f64()).collect(),
                _ => f,
            })
        };
        CT {
            dtype: to,
            shape: self.shape.clone(),
            v,
        }
    }

    pub fn reshape(mut self, shape: Vec<usize>) -> CT {
        self.shape = shape;
        self
    }

    fn take(&self, idx: &[usize]) -> Vals {
        match &self.v {
            Vals::I(v) => Vals::I(idx.iter().map(|&i| v[i]).collect()),
            Vals::F(v) => Vals::F(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// For every element of `out`, the flat index of the broadcast source element in `src`.
fn bcast_map(out: &[usize], src: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let r = out.len();
    let ss = strides_of(src);
    // Source stride per output dim (0 where broadcast).
    let st: Vec<usize> = (0..r)
        .map(|d| {
            if d + src.len() < r {
                0
            } else {
                let sd = d + src.len() - r;
                if src[sd] == 1 { 0 } else { ss[sd] }
            }
        })
        .collect();
    let mut res = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        res.push(idx.iter().zip(&st).map(|(i, s)| i * s).sum());
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < out[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    res
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Equal,
    Less,
    Greater,
}

pub fn binary(op: BinOp, a: &CT, b: &CT) -> Result<CT, String> {
    if a.dtype != b.dtype {
        return Err(format!("operand types differ: {} vs {}", a.dtype, b.dtype));
    }
    let shape = broadcast_shapes(&a.shape, &b.shape)?;
    let ia = bcast_map(&shape, &a.shape);
    let ib = bcast_map(&shape, &b.shape);
    let cmp = matches!(op, BinOp::Equal | BinOp::Less | BinOp::Greater);
    let v = match (&a.v, &b.v) {
        (Vals::I(x), Vals::I(y)) => {
            let mut out = Vec::with_capacity(ia.len());
            for (&i, &j) in ia.iter().zip(&ib) {
                let (p, q) = (x[i], y[j]);
                out.push(match op {
                    BinOp::Add => p.wrapping_add(q),
                    BinOp::Sub => p.wrapping_sub(q),
                    BinOp::Mul => p.wrapping_mul(q),
                    BinOp::Div => {
                        if q == 0 {
                            return Err("integer division by zero".into());
                        }
                        // the quotient of MIN / -1 does not fit the element type
                        let min = match a.dtype {
                            DType::I8 => i8::MIN as i64,
                            DType::I16 => i16::MIN as i64,
                            DType::I32 => i32::MIN as i64,
                            DType::I64 => i64::MIN,
                            _ => 0,
                        };
                        if q == -1 && p == min && min != 0 {
                            return Err(format!(
                                "integer division overflows ({p} / -1 in {})",
                                a.dtype
                            ));
                        }
                        p.wrapping_div(q)
                    }
                    BinOp::Pow => {
                        if q < 0 {
                            return Err("negative integer exponent".into());
                        }
                        p.wrapping_pow(q.min(u32::MAX as i64) as u32)
                    }
                    BinOp::Max => p.max(q),
                    BinOp::Min => p.min(q),
                    BinOp::Equal => (p == q) as i64,
                    BinOp::Less => (p < q) as i64,
                    BinOp::Greater => (p > q) as i64,
                });
            }
            Vals::I(out)
        }
        _ => {
            let (x, y) = (a.as_f64(), b.as_f64());
            if cmp {
                Vals::I(
                    ia.iter()
                        .zip(&ib)
                        .map(|(&i, &j)| match op {
                            BinOp::Equal => (x[i] == y[j]) as i64,
                            BinOp::Less => (x[i] < y[j]) as i64,
                            _ => (x[i] > y[j]) as i64,
                        })
                        .collect(),
                )
            } else {
                Vals::F(
                    ia.iter()
                        .zip(&ib)
                        .map(|(&i, &j)| {
                            let (p, q) = (x[i], y[j]);
                            match op {
                                BinOp::Add => p + q,
                                BinOp::Sub => p - q,
                                BinOp::Mul => p * q,
                                BinOp::Div => p / q,
                                BinOp::Pow => p.powf(q),
                                BinOp::Max => p.max(q),
                                _ => p.min(q),
                            }
                        })
                        .collect(),
                )
            }
        }
    };
    let dtype = if cmp { DType::Bool } else { a.dtype };
    // Round float results to the element type.
    Ok(CT { dtype, shape, v }.cast(dtype))
}

pub fn where_(c: &CT, x: &CT, y: &CT) -> Result<CT, String> {
    if x.dtype != y.dtype {
        return Err(format!("Where branches differ: {} vs {}", x.dtype, y.dtype));
    }
    let shape = broadcast_shapes(&broadcast_shapes(&c.shape, &x.shape)?, &y.shape)?;
    let (ic, ix, iy) = (
        bcast_map(&shape, &c.shape),
        bcast_map(&shape, &x.shape),
        bcast_map(&shape, &y.shape),
    );
    let cv = c.as_i64();
    let v = match (&x.v, &y.v) {
        (Vals::I(a), Vals::I(b)) => Vals::I(
            (0..ic.len())
                .map(|k| if cv[ic[k]] != 0 { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        _ => {
            let (a, b) = (x.as_f64(), y.as_f64());
            Vals::F(
                (0..ic.len())
                    .map(|k| if cv[ic[k]] != 0 { a[ix[k]] } else { b[iy[k]] })
                    .collect(),
            )
        }
    };
    Ok(CT {
        dtype: x.dtype,
        shape,
        v,
    })
}

pub fn neg(x: &CT) -> CT {
    let v = match &x.v {
        Vals::I(v) => Vals::I(v.iter().map(|a| a.wrapping_neg()).collect()),
        Vals::F(v) => Vals::F(v.iter().map(|a| -a).collect()),
    };
    CT { v, ..x.clone() }
}

/// ONNX Gather along `axis` (already normalized); negative indices count from the end.
pub fn gather(data: &CT, idx: &CT, axis: usize) -> Result<CT, String> {
    if axis >= data.shape.len() {
        return Err(format!(
            "axis {axis} out of range for shape {:?}",
            data.shape
        ));
    }
    let dim = data.shape[axis] as i64;
    let outer: usize = data.shape[..axis].iter().product();
    let inner: usize = data.shape[axis + 1..].iter().product();
    let ids: Vec<usize> = idx
        .as_i64()
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + dim } else { i };
            if j < 0 || j >= dim {
                Err(format!("gather index {i} out of range for dim {dim}"))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Result<_, _>>()?;
    let mut src = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &j in &ids {
            for k in 0..inner {
                src.push((o * dim as usize + j) * inner + k);
            }
        }
    }
    let mut shape = data.shape[..axis].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&data.shape[axis + 1..]);
    Ok(CT {
        dtype: data.dtype,
        shape,
        v: data.take(&src),
    })
}

pub fn concat(parts: &[CT], axis: usize) -> Result<CT, String> {
    let first = &parts[0];
    if axis >= first.shape.len() {
        return Err(format!("axis {axis} out of range"));
    }
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for p in parts {
        if p.dtype != first.dtype
            || p.shape.len() != first.shape.len()
            || (0..p.shape.len()).any(|d| d != axis && p.shape[d] != first.shape[d])
        {
            return Err(format!(
                "concat operands {:?} and {:?} do not match",
                first.shape, p.shape
            ));
        }
        shape[axis] += p.shape[axis];
    }
    let outer: usize = shape[..axis].iter().product();
    let float = parts.iter().any(|p| matches!(p.v, Vals::F(_)));
    let mut iv = Vec::new();
    let mut fv = Vec::new();
    for o in 0..outer {
        for p in parts {
            let chunk: usize = p.shape[axis..].iter().product();
            let r = o * chunk..(o + 1) * chunk;
            if float {
                fv.extend_from_slice(&p.as_f64()[r]);
            } else if let Vals::I(v) = &p.v {
                iv.extend_from_slice(&v[r]);
            }
        }
    }
    Ok(CT {
        dtype: first.dtype,
        shape,
        v: if float { Vals::F(fv) } else { Vals::I(iv) },
    })
}

pub fn slice(x: &CT, a: &SliceAttrs) -> CT {
    let st = strides_of(&x.shape);
    let n: usize = a.sizes.iter().product();
    let r = a.sizes.len();
    let mut src = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        let off: i64 = (0..r)
            .map(|d| (a.starts[d] as i64 + idx[d] as i64 * a.steps[d]) * st[d] as i64)
            .sum();
        src.push(off as usize);
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < a.sizes[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    CT {
        dtype: x.dtype,
        shape: a.sizes.clone(),
        v: x.take(&src),
    }
}

pub fn transpose(x: &CT, perm: &[usize]) -> CT {
    let st = strides_of(&x.shape);
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let n: usize = shape.iter().product();
    let r = shape.len();
    let mut src = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        src.push((0..r).map(|d| idx[d] * st[perm[d]]).sum());
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    CT {
        dtype: x.dtype,
        shape,
        v: x.take(&src),
    }
}

/// Broadcast `x` to `shape` (ONNX Expand: the result shape is the broadcast of both).
pub fn expand(x: &CT, shape: &[usize]) -> Result<CT, String> {
    let out = broadcast_shapes(&x.shape, shape)?;
    let m = bcast_map(&out, &x.shape);
    Ok(CT {
        dtype: x.dtype,
        v: x.take(&m),
        shape: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_concat_slice() {
        let s = CT::i64s(vec![4], vec![1, 3, 224, 224]);
        let g = gather(&s, &CT::i64s(vec![], vec![0]), 0).unwrap();
        assert_eq!(g.shape, Vec::<usize>::new());
        assert_eq!(g.as_i64(), vec![1]);
        let c = concat(&[g.reshape(vec![1]), CT::i64s(vec![1], vec![-1])], 0).unwrap();
        assert_eq!(c.as_i64(), vec![1, -1]);
        let sl = slice(
            &s,
            &SliceAttrs {
                starts: vec![3],
                steps: vec![-2],
                sizes: vec![2],
            },
        );
        assert_eq!(sl.as_i64(), vec![224, 3]);
        let m = binary(BinOp::Mul, &s, &CT::i64s(vec![], vec![2])).unwrap();
        assert_eq!(m.as_i64(), vec![2, 6, 448, 448]);
    }

    #[test]
    fn integer_division_errors() {
        let div = |dt: DType, a: i64, b: i64| {
            let t = |v: i64| CT {
                dtype: dt,
                shape: vec![1],
                v: Vals::I(vec![v]),
            };
            binary(BinOp::Div, &t(a), &t(b)).map(|r| r.as_i64()[0])
        };
        assert!(div(DType::I64, 5, 0).unwrap_err().contains("by zero"));
        assert!(
            div(DType::I64, i64::MIN, -1)
                .unwrap_err()
                .contains("overflows")
        );
        assert!(
            div(DType::I32, i32::MIN as i64, -1)
                .unwrap_err()
                .contains("overflows")
        );
        assert!(div(DType::I8, -128, -1).unwrap_err().contains("overflows"));
        assert_eq!(div(DType::I32, i32::MIN as i64, 1), Ok(i32::MIN as i64));
        assert_eq!(div(DType::I64, -7, -1), Ok(7));
    }
}
