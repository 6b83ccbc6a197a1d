//! `mind_ir.ModelProto` -> [`kiln_ir::Graph`], with MindSpore primitive semantics.
//!
//! Node op types come in two encodings: `REF::<Prim>:<uid>` (MindSpore ≥ 1.7), resolved through
//! `ModelProto.primitives` which carries the attributes, and the bare primitive name of ≤ 1.6
//! with the attributes on the node (`ref_attr_name` encodings). MindSpore 2.x "primitive
//! functions" pass most attributes as constant inputs instead (`BatchNorm(x, .., is_training,
//! epsilon, momentum, data_format)`), so every attribute is looked up as "constant input k, else
//! primitive attribute `name`".
//!
//! Values during import are [`V`]: graph tensors, compile-time scalars/tuples (from `Constant`
//! nodes), tuples of node outputs (`MakeTuple`, multi-output primitives) and monads. The
//! side-effect plumbing (`Load`, `UpdateState`, `Depend`, `MakeTuple`, `TupleGetItem`) is
//! resolved on these values and produces no IR.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use kiln_ir::ops::{BinaryOp, ConvAttrs, GemmAttrs, PoolAttrs, ReduceKind, SliceAttrs, UnaryOp};
use kiln_ir::{DType, Graph, Op, TensorType, ValueId};
use prost::Message;

use super::MsError;
use super::crypto::{self, DecryptKey};
use super::proto::mind_ir::{
    AttributeProto, GraphProto, ModelProto, NodeProto, PrimitiveProto, TensorProto,
};
use crate::frontend::data::{self, External, ExternalFiles, RawTensor, map_file};
use crate::frontend::tf::{STRIDED_SLICE_MASKS, reshape_target, same_pads, strided_slice};
use crate::frontend::{
    Dim, GraphBuilder, InputFixes, Source, Unsupported, node_label, norm_axis, reduce_kind,
};

type R<T> = Result<T, String>;

/// Options for loading a MindIR model.
#[derive(Debug, Clone, Default)]
pub struct MindirOptions {
    /// `--input-shape` / `--freeze`, as every importer takes them.
    pub inputs: InputFixes,
    /// Key for encrypted files.
    pub key: Option<DecryptKey>,
}

/// Primitives with IR translations (plus the plumbing in [`PLUMBING`]).
const SUPPORTED: &[&str] = &[
    "Conv2D",
    "MatMul",
    "BatchMatMul",
    "Dense",
    "BiasAdd",
    "ReLU",
    "ReLU6",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Rsqrt",
    "Neg",
    "Abs",
    "Reciprocal",
    "Floor",
    "Ceil",
    "HSwish",
    "GeLU",
    "FastGeLU",
    "Add",
    "Sub",
    "Mul",
    "Muls",
    "RealDiv",
    "Div",
    "Maximum",
    "Minimum",
    "Pow",
    "MaxPool",
    "AvgPool",
    "BatchNorm",
    "LayerNorm",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "ExpandDims",
    "Concat",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "Cast",
    "StridedSlice",
    "LSTM",
    "Identity",
    "StopGradient",
];

/// Side-effect and tuple plumbing, resolved on import values.
const PLUMBING: &[&str] = &[
    "Load",
    "UpdateState",
    "Depend",
    "MakeTuple",
    "TupleGetItem",
    "Return",
    "Constant",
];

/// An import-time value.
#[derive(Debug, Clone)]
enum V {
    T(ValueId),
    I(i64),
    F(f64),
    B(bool),
    S(String),
    Seq(Vec<V>),
    Dtype(DType),
    Monad,
    None,
    /// An output kiln does not compute (e.g. BatchNorm's training statistics).
    Unavailable(String),
}

impl V {
    fn kind(&self) -> &'static str {
        match self {
            V::T(_) => "tensor",
            V::I(_) => "integer",
            V::F(_) => "float",
            V::B(_) => "bool",
            V::S(_) => "string",
            V::Seq(_) => "tuple",
            V::Dtype(_) => "dtype",
            V::Monad => "monad",
            V::None => "None",
            V::Unavailable(_) => "unavailable output",
        }
    }
    fn int(&self) -> R<i64> {
        match self {
            V::I(i) => Ok(*i),
            V::B(b) => Ok(*b as i64),
            V::Seq(s) if s.len() == 1 => s[0].int(),
            _ => Err(format!("expected an integer, got {}", self.kind())),
        }
    }
    fn float(&self) -> R<f64> {
        match self {
            V::F(f) => Ok(*f),
            V::I(i) => Ok(*i as f64),
            _ => Err(format!("expected a float, got {}", self.kind())),
        }
    }
    fn bool(&self) -> R<bool> {
        match self {
            V::B(b) => Ok(*b),
            V::I(i) => Ok(*i != 0),
            _ => Err(format!("expected a bool, got {}", self.kind())),
        }
    }
    fn ints(&self) -> R<Vec<i64>> {
        match self {
            V::Seq(s) => s.iter().map(V::int).collect(),
            V::I(i) => Ok(vec![*i]),
            _ => Err(format!("expected an integer tuple, got {}", self.kind())),
        }
    }
}

/// DataType code of `mind_ir.TensorProto` -> kiln dtype (1..16 equal ONNX's = kiln's ABI codes).
fn dtype_of(code: i32) -> R<DType> {
    if code == 17 {
        return Ok(DType::F64);
    }
    DType::ALL
        .into_iter()
        .find(|d| d.abi_code() == code)
        .ok_or_else(|| {
            let name = super::proto::mind_ir::tensor_proto::DataType::try_from(code)
                .map(|d| d.as_str_name().to_string())
                .unwrap_or_else(|_| format!("code {code}"));
            format!("unsupported element type {name}")
        })
}

/// Decode an attribute into an import value.
fn attr_value(a: &AttributeProto) -> R<V> {
    const FLOAT: i32 = 1;
    const STRING: i32 = 8;
    const BOOL: i32 = 9;
    const DOUBLE: i32 = 11;
    const TENSOR: i32 = 17;
    const TENSORS: i32 = 19;
    const TUPLE: i32 = 20;
    const LIST: i32 = 21;
    const UMONAD: i32 = 23;
    const IOMONAD: i32 = 24;
    const NONE: i32 = 25;
    let ty = a.r#type.unwrap_or(0);
    let r = a.ref_attr_name.as_deref().unwrap_or("");
    let is_int = |t: i32| matches!(t, 2..=7 | 12 | 13);
    let s_of = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if matches!(ty, UMONAD | IOMONAD) || r.starts_with("Monad:") {
        return Ok(V::Monad);
    }
    if ty == NONE || r.starts_with("none") {
        return Ok(V::None);
    }
    if matches!(ty, TUPLE | LIST) && (!a.values.is_empty() || !r.starts_with("scalar:")) {
        return Ok(V::Seq(a.values.iter().map(attr_value).collect::<R<_>>()?));
    }
    // legacy and plural encodings of sequences: `scalar:List[value1,value2,]`, `Tuple[..]`
    let legacy_seq = r.starts_with("scalar:List[") || r.starts_with("scalar:Tuple[");
    if legacy_seq || matches!(ty, TUPLE | LIST) {
        let seq: Vec<V> = if !a.ints.is_empty() {
            a.ints.iter().map(|&i| V::I(i)).collect()
        } else if !a.floats.is_empty() {
            a.floats.iter().map(|&f| V::F(f as f64)).collect()
        } else if !a.doubles.is_empty() {
            a.doubles.iter().map(|&f| V::F(f)).collect()
        } else if !a.strings.is_empty() {
            a.strings.iter().map(|s| V::S(s_of(s))).collect()
        } else {
            a.values.iter().map(attr_value).collect::<R<_>>()?
        };
        return Ok(V::Seq(seq));
    }
    if matches!(ty, TENSOR | TENSORS) || r.starts_with("tensor:") || r.starts_with("type:") {
        let t = a.tensors.first().or(a.t.as_ref());
        let Some(t) = t else {
            return Err("tensor attribute without a tensor".into());
        };
        let dt = dtype_of(t.data_type())?;
        if t.raw_data.is_none() && t.dims.is_empty() && t.float_data.is_empty() {
            return Ok(V::Dtype(dt));
        }
        // a tensor value: materialised by the caller (it needs the graph)
        return Err("TENSOR".into());
    }
    match ty {
        FLOAT => Ok(V::F(a.f.or(a.floats.first().copied()).unwrap_or(0.0) as f64)),
        DOUBLE => Ok(V::F(a.d.or(a.doubles.first().copied()).unwrap_or(0.0))),
        BOOL => Ok(V::B(a.i.or(a.ints.first().copied()).unwrap_or(0) != 0)),
        STRING => Ok(V::S(
            a.s.as_deref()
                .or(a.strings.first().map(|s| s.as_ref()))
                .map(s_of)
                .unwrap_or_default(),
        )),
        t if is_int(t) => Ok(V::I(a.i.or(a.ints.first().copied()).unwrap_or(0))),
        _ => {
            // untyped legacy scalars: whichever field is set
            if let Some(i) = a.i {
                Ok(V::I(i))
            } else if let Some(f) = a.f {
                Ok(V::F(f as f64))
            } else if let Some(s) = &a.s {
                Ok(V::S(s_of(s)))
            } else {
                Err(format!(
                    "attribute '{}' of type {ty} ({r}) is not supported",
                    a.name()
                ))
            }
        }
    }
}

struct Imp<'a> {
    b: GraphBuilder<'a, V>,
    prims: HashMap<&'a str, &'a PrimitiveProto>,
    base_dir: Option<&'a Path>,
    ext: ExternalFiles,
}

/// One node being translated.
struct Ctx<'n> {
    n: &'n NodeProto,
    name: String,
    op: String,
    attrs: BTreeMap<String, &'n AttributeProto>,
}

/// The graph-local part of a MindIR name: `graph:cnode:uid` -> `cnode:uid`, `graph:x` -> `x`.
fn short(name: &str, graph: &str) -> String {
    name.strip_prefix(graph)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(name)
        .to_string()
}

/// Resolve a node's primitive: (op type, attributes).
fn resolve<'n>(
    n: &'n NodeProto,
    prims: &HashMap<&str, &'n PrimitiveProto>,
) -> (String, BTreeMap<String, &'n AttributeProto>) {
    let ot = n.op_type();
    if let Some(r) = ot.strip_prefix("REF::") {
        if let Some(p) = prims.get(r) {
            let attrs = p
                .attribute
                .iter()
                .filter(|a| !a.name().is_empty())
                .map(|a| (a.name().to_string(), a))
                .collect();
            let op = if p.op_type().is_empty() {
                r.split(':').next().unwrap_or(r).to_string()
            } else {
                p.op_type().to_string()
            };
            return (op, attrs);
        }
        // `REF::<funcgraph>` and other closures: not a primitive
        return (format!("call {r}"), BTreeMap::new());
    }
    let attrs = n
        .attribute
        .iter()
        .filter(|a| !a.name().is_empty())
        .map(|a| (a.name().to_string(), a))
        .collect();
    (ot.to_string(), attrs)
}

impl<'a> Imp<'a> {
    fn ty(&self, v: ValueId) -> &TensorType {
        self.b.ty(v)
    }

    /// Decode a tensor (inline raw_data, typed fields, or external data) as a graph constant.
    fn tensor_const(&mut self, t: &TensorProto, name: &str) -> R<ValueId> {
        let dtype = dtype_of(t.data_type())?;
        if t.compression_type.is_some_and(|c| c != 0) || !t.quant_params.is_empty() {
            return Err(format!(
                "compressed or quantized parameters (compression_type {}) are not supported",
                t.compression_type.unwrap_or(0)
            ));
        }
        let raw = RawTensor {
            dims: &t.dims,
            raw: t.raw_data.clone(),
            floats: &t.float_data,
            doubles: &t.double_data,
            int32s: &t.int32_data,
            int64s: &t.int64_data,
            uint64s: &t.uint64_data,
            external: t.external_data.as_ref().map(|e| External {
                location: e.location().to_string(),
                offset: e.offset(),
                length: e.length,
            }),
        };
        let (ty, data) = data::decode_tensor(raw, dtype, self.base_dir, &mut self.ext)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        self.b.add_const(name, ty, data)
    }

    /// A scalar constant of `dtype`.
    fn scalar(&mut self, v: f64, dtype: DType, name: &str) -> R<ValueId> {
        self.b.scalar(v, dtype, name)
    }

    fn value(&self, c: &Ctx, i: usize) -> R<V> {
        let name =
            c.n.input
                .get(i)
                .ok_or_else(|| format!("missing input {i}"))?;
        self.b.lookup(name).cloned().ok_or_else(|| {
            format!("input '{name}' is not defined by an earlier node, parameter or graph input")
        })
    }

    fn tensor(&self, c: &Ctx, i: usize) -> R<ValueId> {
        match self.value(c, i)? {
            V::T(v) => Ok(v),
            V::Unavailable(w) => Err(format!("input {i} uses {w}, which kiln does not compute")),
            v => Err(format!("input {i} must be a tensor, got {}", v.kind())),
        }
    }

    /// Input `i` as a tensor; scalars become constants of `like`'s dtype.
    fn tensor_like(&mut self, c: &Ctx, i: usize, like: Option<DType>) -> R<ValueId> {
        match self.value(c, i)? {
            V::I(x) => self.scalar(
                x as f64,
                like.unwrap_or(DType::I64),
                &format!("{}/c{i}", c.name),
            ),
            V::F(x) => self.scalar(x, like.unwrap_or(DType::F32), &format!("{}/c{i}", c.name)),
            V::B(x) => self.scalar(
                x as i64 as f64,
                like.unwrap_or(DType::F32),
                &format!("{}/c{i}", c.name),
            ),
            _ => self.tensor(c, i),
        }
    }

    /// An attribute: constant input `idx` if present (primitive functions), else primitive
    /// attribute `name`.
    fn arg(&self, c: &Ctx, idx: Option<usize>, name: &str) -> R<Option<V>> {
        if let Some(i) = idx
            && i < c.n.input.len()
        {
            let v = self.value(c, i)?;
            if !matches!(v, V::T(_) | V::Monad | V::None) {
                return Ok(Some(v));
            }
            if matches!(v, V::None) {
                return Ok(None);
            }
        }
        match c.attrs.get(name) {
            Some(a) => attr_value(a)
                .map(Some)
                .map_err(|e| format!("attribute '{name}': {e}")),
            None => Ok(None),
        }
    }

    fn arg_req(&self, c: &Ctx, idx: Option<usize>, name: &str) -> R<V> {
        self.arg(c, idx, name)?
            .ok_or_else(|| format!("missing attribute '{name}'"))
    }

    fn node(&mut self, c: &Ctx, op: Op, inputs: Vec<ValueId>, suffix: &str) -> R<ValueId> {
        self.b
            .node1(&c.name, op, inputs, &format!("{}{suffix}", c.name))
    }

    fn bin(&mut self, c: &Ctx, op: BinaryOp, a: ValueId, b: ValueId, sfx: &str) -> R<ValueId> {
        self.node(c, Op::Binary(op), vec![a, b], sfx)
    }

    fn reshape(&mut self, c: &Ctx, x: ValueId, shape: Vec<usize>, sfx: &str) -> R<ValueId> {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        self.node(c, Op::Reshape { shape }, vec![x], sfx)
    }

    fn check_nchw(&self, c: &Ctx, idx: Option<usize>) -> R<()> {
        let f = match self.arg(c, idx, "format")? {
            Some(f) => Some(f),
            None => self.arg(c, None, "data_format")?,
        };
        match f {
            None => Ok(()),
            Some(V::S(s)) if s.eq_ignore_ascii_case("NCHW") => Ok(()),
            Some(V::I(0)) => Ok(()),
            Some(v) => Err(format!("data format {v:?} is not supported (only NCHW)")),
        }
    }

    /// Translate one primitive; returns its value (a tensor or a tuple).
    fn translate(&mut self, c: &Ctx) -> R<V> {
        let op = c.op.as_str();
        if let Some(u) = match op {
            "ReLU" => Some(UnaryOp::Relu),
            "Sigmoid" => Some(UnaryOp::Sigmoid),
            "Tanh" => Some(UnaryOp::Tanh),
            "Erf" => Some(UnaryOp::Erf),
            "Exp" => Some(UnaryOp::Exp),
            "Log" => Some(UnaryOp::Log),
            "Sqrt" => Some(UnaryOp::Sqrt),
            "Neg" => Some(UnaryOp::Neg),
            "Abs" => Some(UnaryOp::Abs),
            "Reciprocal" => Some(UnaryOp::Reciprocal),
            "Floor" => Some(UnaryOp::Floor),
            "Ceil" => Some(UnaryOp::Ceil),
            "HSwish" => Some(UnaryOp::HardSwish),
            _ => None,
        } {
            let x = self.tensor(c, 0)?;
            return Ok(V::T(self.node(c, Op::Unary(u), vec![x], "")?));
        }
        if let Some(b) = match op {
            "Add" => Some(BinaryOp::Add),
            "Sub" => Some(BinaryOp::Sub),
            "Mul" | "Muls" => Some(BinaryOp::Mul),
            "RealDiv" | "Div" => Some(BinaryOp::Div),
            "Maximum" => Some(BinaryOp::Max),
            "Minimum" => Some(BinaryOp::Min),
            "Pow" => Some(BinaryOp::Pow),
            _ => None,
        } {
            let dt = [0, 1].iter().find_map(|&i| match self.value(c, i) {
                Ok(V::T(v)) => Some(self.ty(v).dtype),
                _ => None,
            });
            let a = self.tensor_like(c, 0, dt)?;
            let b2 = self.tensor_like(c, 1, dt)?;
            return Ok(V::T(self.bin(c, b, a, b2, "")?));
        }
        match op {
            "Identity" | "StopGradient" => Ok(self.value(c, 0)?),
            "ReLU6" => {
                let x = self.tensor(c, 0)?;
                Ok(V::T(self.node(
                    c,
                    Op::Clip { min: 0.0, max: 6.0 },
                    vec![x],
                    "",
                )?))
            }
            "Rsqrt" => {
                let x = self.tensor(c, 0)?;
                let s = self.node(c, Op::Unary(UnaryOp::Sqrt), vec![x], "/sqrt")?;
                Ok(V::T(self.node(
                    c,
                    Op::Unary(UnaryOp::Reciprocal),
                    vec![s],
                    "",
                )?))
            }
            "GeLU" => self.gelu(c),
            "FastGeLU" => {
                // x / (1 + exp(-1.702 |x|)) * exp(0.851 (x - |x|))
                let x = self.tensor(c, 0)?;
                let dt = self.ty(x).dtype;
                let ax = self.node(c, Op::Unary(UnaryOp::Abs), vec![x], "/abs")?;
                let k1 = self.scalar(-1.702, dt, &format!("{}/k1", c.name))?;
                let e1 = self.bin(c, BinaryOp::Mul, ax, k1, "/m1")?;
                let e1 = self.node(c, Op::Unary(UnaryOp::Exp), vec![e1], "/e1")?;
                let one = self.scalar(1.0, dt, &format!("{}/one", c.name))?;
                let den = self.bin(c, BinaryOp::Add, e1, one, "/den")?;
                let q = self.bin(c, BinaryOp::Div, x, den, "/q")?;
                let d = self.bin(c, BinaryOp::Sub, x, ax, "/d")?;
                let k2 = self.scalar(0.851, dt, &format!("{}/k2", c.name))?;
                let e2 = self.bin(c, BinaryOp::Mul, d, k2, "/m2")?;
                let e2 = self.node(c, Op::Unary(UnaryOp::Exp), vec![e2], "/e2")?;
                Ok(V::T(self.bin(c, BinaryOp::Mul, q, e2, "")?))
            }
            "Conv2D" => self.conv2d(c),
            "MatMul" | "BatchMatMul" => {
                let ta = self
                    .arg(c, Some(2), "transpose_a")?
                    .map(|v| v.bool())
                    .transpose()?;
                let tb = self
                    .arg(c, Some(3), "transpose_b")?
                    .map(|v| v.bool())
                    .transpose()?;
                // ≤ 1.x also used transpose_x1 / transpose_x2
                let ta = match ta {
                    Some(t) => t,
                    None => self
                        .arg(c, None, "transpose_x1")?
                        .map(|v| v.bool())
                        .transpose()?
                        .unwrap_or(false),
                };
                let tb = match tb {
                    Some(t) => t,
                    None => self
                        .arg(c, None, "transpose_x2")?
                        .map(|v| v.bool())
                        .transpose()?
                        .unwrap_or(false),
                };
                let a = self.tensor(c, 0)?;
                let b = self.tensor(c, 1)?;
                Ok(V::T(self.matmul(c, a, b, ta, tb, None)?))
            }
            "Dense" => {
                // y = x @ w^T + b
                let x = self.tensor(c, 0)?;
                let w = self.tensor(c, 1)?;
                let b = match c.n.input.get(2) {
                    Some(_) => match self.value(c, 2)? {
                        V::T(b) => Some(b),
                        _ => None,
                    },
                    None => None,
                };
                Ok(V::T(self.matmul(c, x, w, false, true, b)?))
            }
            "BiasAdd" => {
                self.check_nchw(c, Some(2))?;
                let x = self.tensor(c, 0)?;
                let b = self.tensor(c, 1)?;
                let r = self.ty(x).rank();
                let bshape = self.ty(b).shape.clone();
                if r < 2 || bshape.len() != 1 || bshape[0] != self.ty(x).shape[1] {
                    return Err(format!(
                        "bias {} does not match channel dim 1 of {}",
                        self.ty(b),
                        self.ty(x)
                    ));
                }
                let mut s = bshape.clone();
                s.extend(std::iter::repeat_n(1, r - 2));
                let b = self.reshape(c, b, s, "/bias")?;
                Ok(V::T(self.bin(c, BinaryOp::Add, x, b, "")?))
            }
            "MaxPool" | "AvgPool" => self.pool(c),
            "BatchNorm" => {
                let training = self
                    .arg(c, Some(5), "is_training")?
                    .map(|v| v.bool())
                    .transpose()?;
                if training == Some(true) {
                    return Err(
                        "is_training=True (training-mode batch statistics) is not supported".into(),
                    );
                }
                self.check_nchw(c, Some(8))?;
                let eps = self
                    .arg(c, Some(6), "epsilon")?
                    .map(|v| v.float())
                    .transpose()?
                    .unwrap_or(1e-5);
                let ins = (0..5).map(|i| self.tensor(c, i)).collect::<R<Vec<_>>>()?;
                let y = self.node(
                    c,
                    Op::BatchNorm {
                        epsilon: eps as f32,
                    },
                    ins,
                    "",
                )?;
                let mut out = vec![V::T(y)];
                for k in 1..5 {
                    out.push(V::Unavailable(format!(
                        "output {k} of BatchNorm '{}' (training statistics)",
                        c.name
                    )));
                }
                Ok(V::Seq(out))
            }
            "LayerNorm" => self.layer_norm(c),
            "LSTM" => self.lstm(c),
            "Flatten" => {
                let x = self.tensor(c, 0)?;
                let s = &self.ty(x).shape;
                let n = s.first().copied().unwrap_or(1);
                let rest = s.iter().skip(1).product();
                Ok(V::T(self.reshape(c, x, vec![n, rest], "")?))
            }
            "Reshape" => {
                let x = self.tensor(c, 0)?;
                let spec = match self.value(c, 1)? {
                    V::T(t) => self
                        .b
                        .const_ints(t)
                        .map_err(|e| format!("the shape input {e}"))?,
                    v => v.ints()?,
                };
                let numel = self.ty(x).numel();
                let shape = reshape_target(numel, &spec)?;
                Ok(V::T(self.reshape(c, x, shape, "")?))
            }
            "Transpose" => {
                let x = self.tensor(c, 0)?;
                let r = self.ty(x).rank();
                let perm = self
                    .arg_req(c, Some(1), "perm")?
                    .ints()?
                    .into_iter()
                    .map(|p| norm_axis(p, r))
                    .collect::<R<Vec<_>>>()?;
                Ok(V::T(self.node(c, Op::Transpose { perm }, vec![x], "")?))
            }
            "Squeeze" => {
                let x = self.tensor(c, 0)?;
                let shape = self.ty(x).shape.clone();
                let axes = self
                    .arg(c, Some(1), "axis")?
                    .map(|v| v.ints())
                    .transpose()?
                    .unwrap_or_default();
                let axes = axes
                    .iter()
                    .map(|&a| norm_axis(a, shape.len()))
                    .collect::<R<Vec<_>>>()?;
                let out: Vec<usize> = shape
                    .iter()
                    .enumerate()
                    .filter(|(i, d)| {
                        if axes.is_empty() {
                            **d != 1
                        } else {
                            !axes.contains(i)
                        }
                    })
                    .map(|(_, d)| *d)
                    .collect();
                if axes.iter().any(|&a| shape[a] != 1) {
                    return Err(format!("cannot squeeze axes {axes:?} of {shape:?}"));
                }
                Ok(V::T(self.reshape(c, x, out, "")?))
            }
            "ExpandDims" => {
                let x = self.tensor(c, 0)?;
                let mut shape = self.ty(x).shape.clone();
                let a = self.arg_req(c, Some(1), "axis")?.int()?;
                let a = norm_axis(a, shape.len() + 1)?;
                shape.insert(a, 1);
                Ok(V::T(self.reshape(c, x, shape, "")?))
            }
            "Concat" => {
                let items = match self.value(c, 0)? {
                    V::Seq(s) => s,
                    _ => (0..c.n.input.len())
                        .map(|i| self.value(c, i))
                        .filter(|v| !matches!(v, Ok(V::I(_))))
                        .collect::<R<Vec<_>>>()?,
                };
                let ts = items
                    .iter()
                    .map(|v| match v {
                        V::T(t) => Ok(*t),
                        v => Err(format!("Concat operand is a {}", v.kind())),
                    })
                    .collect::<R<Vec<_>>>()?;
                let first = *ts.first().ok_or("Concat of nothing")?;
                let axis = self
                    .arg(c, Some(1), "axis")?
                    .map(|v| v.int())
                    .transpose()?
                    .unwrap_or(0);
                let axis = norm_axis(axis, self.ty(first).rank())?;
                Ok(V::T(self.node(c, Op::Concat { axis }, ts, "")?))
            }
            "Softmax" => {
                let x = self.tensor(c, 0)?;
                let axes = self
                    .arg(c, Some(1), "axis")?
                    .map(|v| v.ints())
                    .transpose()?
                    .unwrap_or(vec![-1]);
                if axes.len() != 1 {
                    return Err(format!(
                        "softmax over axes {axes:?} (only one axis is supported)"
                    ));
                }
                let axis = norm_axis(axes[0], self.ty(x).rank())?;
                Ok(V::T(self.node(
                    c,
                    Op::Softmax {
                        axis,
                        kind: kiln_ir::ops::SoftmaxKind::Softmax,
                    },
                    vec![x],
                    "",
                )?))
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
                let kind = reduce_kind(op).ok_or("not a reduction")?;
                let x = self.tensor(c, 0)?;
                let r = self.ty(x).rank();
                let axes = match self.arg(c, Some(1), "axis")? {
                    None => vec![],
                    Some(v) => v.ints()?,
                };
                let mut axes = axes
                    .iter()
                    .map(|&a| norm_axis(a, r))
                    .collect::<R<Vec<_>>>()?;
                if axes.is_empty() {
                    // MindSpore: an empty axis tuple reduces every dim
                    axes = (0..r).collect();
                }
                axes.sort_unstable();
                axes.dedup();
                let keepdims = self
                    .arg(c, Some(2), "keep_dims")?
                    .map(|v| v.bool())
                    .transpose()?
                    .unwrap_or(false);
                Ok(V::T(self.node(
                    c,
                    Op::Reduce {
                        kind,
                        axes,
                        keepdims,
                    },
                    vec![x],
                    "",
                )?))
            }
            "StridedSlice" => {
                let x = self.tensor(c, 0)?;
                let shape = self.ty(x).shape.clone();
                let begin = self.arg_req(c, Some(1), "begin")?.ints()?;
                let end = self.arg_req(c, Some(2), "end")?.ints()?;
                let strides = self.arg_req(c, Some(3), "strides")?.ints()?;
                let mut masks = [0i64; 5];
                for (k, name) in STRIDED_SLICE_MASKS.iter().enumerate() {
                    masks[k] = self
                        .arg(c, Some(4 + k), name)?
                        .map(|v| v.int())
                        .transpose()?
                        .unwrap_or(0);
                }
                let (a, out) = strided_slice(&shape, &begin, &end, &strides, masks)?;
                let y = if a.starts.iter().all(|&s| s == 0)
                    && a.steps.iter().all(|&s| s == 1)
                    && a.sizes == shape
                {
                    x
                } else {
                    self.node(c, Op::Slice(a), vec![x], "/slice")?
                };
                Ok(V::T(self.reshape(c, y, out, "")?))
            }
            "Cast" => {
                let x = self.tensor(c, 0)?;
                let to = match self.arg(c, Some(1), "dst_type")? {
                    Some(V::Dtype(d)) => d,
                    Some(V::I(id)) => {
                        type_id(id).ok_or_else(|| format!("unknown MindSpore TypeId {id}"))?
                    }
                    Some(v) => return Err(format!("destination type is a {}", v.kind())),
                    None => return Err("missing destination type".into()),
                };
                if self.ty(x).dtype == to {
                    return Ok(V::T(x));
                }
                Ok(V::T(self.node(c, Op::Cast { to }, vec![x], "")?))
            }
            _ => Err("unsupported primitive".into()),
        }
    }

    /// `a @ b` with MindSpore's transpose flags, plus an optional bias row.
    fn matmul(
        &mut self,
        c: &Ctx,
        a: ValueId,
        b: ValueId,
        ta: bool,
        tb: bool,
        bias: Option<ValueId>,
    ) -> R<ValueId> {
        let (ra, rb) = (self.ty(a).rank(), self.ty(b).rank());
        if ra == 2 && rb == 2 {
            let mut ins = vec![a, b];
            ins.extend(bias);
            return self.node(
                c,
                Op::Gemm(GemmAttrs {
                    alpha: 1.0,
                    beta: 1.0,
                    trans_a: ta,
                    trans_b: tb,
                    epilogue: Vec::new(),
                }),
                ins,
                "",
            );
        }
        let swap_last = |imp: &mut Self, v: ValueId, sfx: &str| -> R<ValueId> {
            let r = imp.ty(v).rank();
            if r < 2 {
                return Err("transpose flag on a 1-D operand".into());
            }
            let mut perm: Vec<usize> = (0..r).collect();
            perm.swap(r - 1, r - 2);
            imp.node(c, Op::Transpose { perm }, vec![v], sfx)
        };
        let a = if ta { swap_last(self, a, "/ta")? } else { a };
        let b = if tb { swap_last(self, b, "/tb")? } else { b };
        let y = self.node(
            c,
            Op::matmul(),
            vec![a, b],
            if bias.is_some() { "/mm" } else { "" },
        )?;
        match bias {
            Some(bv) => self.bin(c, BinaryOp::Add, y, bv, ""),
            None => Ok(y),
        }
    }

    /// MindSpore's `GeLU` primitive. Its CPU kernel computes the tanh form
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    fn gelu(&mut self, c: &Ctx) -> R<V> {
        let x = self.tensor(c, 0)?;
        Ok(V::T(self.node(
            c,
            Op::Unary(UnaryOp::GeluTanh),
            vec![x],
            "",
        )?))
    }

    /// `LayerNorm(x, gamma, beta)` over the axes from `begin_norm_axis`:
    /// `(x - mean) / sqrt(var + eps) * gamma + beta`. Outputs: (y, mean, rstd) — only y computed.
    fn layer_norm(&mut self, c: &Ctx) -> R<V> {
        let x = self.tensor(c, 0)?;
        let gamma = self.tensor(c, 1)?;
        let beta = self.tensor(c, 2)?;
        let xt = self.ty(x).clone();
        let r = xt.rank();
        let bna = self
            .arg(c, Some(3), "begin_norm_axis")?
            .map(|v| v.int())
            .transpose()?
            .unwrap_or(-1);
        let bpa = self
            .arg(c, Some(4), "begin_params_axis")?
            .map(|v| v.int())
            .transpose()?
            .unwrap_or(-1);
        let eps = self
            .arg(c, Some(5), "epsilon")?
            .map(|v| v.float())
            .transpose()?
            .unwrap_or(1e-7);
        let a = norm_axis(bna, r)?;
        let pa = norm_axis(bpa, r)?;
        let pshape = xt.shape[pa..].to_vec();
        for p in [gamma, beta] {
            if self.ty(p).shape != pshape {
                return Err(format!(
                    "parameter {} does not match {:?}",
                    self.ty(p),
                    pshape
                ));
            }
        }
        let axes: Vec<usize> = (a..r).collect();
        let red = |imp: &mut Self, v: ValueId, sfx: &str| {
            imp.node(
                c,
                Op::Reduce {
                    kind: ReduceKind::Mean,
                    axes: axes.clone(),
                    keepdims: true,
                },
                vec![v],
                sfx,
            )
        };
        let mean = red(self, x, "/mean")?;
        let d = self.bin(c, BinaryOp::Sub, x, mean, "/d")?;
        let d2 = self.bin(c, BinaryOp::Mul, d, d, "/d2")?;
        let var = red(self, d2, "/var")?;
        let e = self.scalar(eps, xt.dtype, &format!("{}/eps", c.name))?;
        let ve = self.bin(c, BinaryOp::Add, var, e, "/ve")?;
        let sd = self.node(c, Op::Unary(UnaryOp::Sqrt), vec![ve], "/std")?;
        let n = self.bin(c, BinaryOp::Div, d, sd, "/norm")?;
        let s = self.bin(c, BinaryOp::Mul, n, gamma, "/scaled")?;
        let y = self.bin(c, BinaryOp::Add, s, beta, "")?;
        Ok(V::Seq(vec![
            V::T(y),
            V::Unavailable(format!("output 1 of LayerNorm '{}' (mean)", c.name)),
            V::Unavailable(format!("output 2 of LayerNorm '{}' (rstd)", c.name)),
        ]))
    }

    /// MindSpore's `LSTM` primitive (one layer, one direction, inference), unrolled over the
    /// sequence into primitive ops. Inputs: x `[seq, batch, I]`, h0/c0 `[1, batch, H]` and one
    /// flat weight `[W_ih (4H x I), W_hh (4H x H), b (4H)]` (+ a second bias when its size says
    /// so). Gates in the order i, f, g, o. Outputs: (y, hy, cy, reserve, state).
    fn lstm(&mut self, c: &Ctx) -> R<V> {
        let x = self.tensor(c, 0)?;
        let h0 = self.tensor(c, 1)?;
        let c0 = self.tensor(c, 2)?;
        let w = self.tensor(c, 3)?;
        let int = |imp: &Self, k: &str| -> R<i64> { imp.arg_req(c, None, k)?.int() };
        let flag = |imp: &Self, k: &str| -> R<bool> {
            Ok(imp
                .arg(c, None, k)?
                .map(|v| v.bool())
                .transpose()?
                .unwrap_or(false))
        };
        if int(self, "num_layers")? != 1 || flag(self, "bidirectional")? {
            return Err("only num_layers=1, bidirectional=False is supported".into());
        }
        let xt = self.ty(x).clone();
        if xt.rank() != 3 {
            return Err(format!("input {xt} must be [seq, batch, input_size]"));
        }
        let (seq, batch, isz) = (xt.shape[0], xt.shape[1], xt.shape[2]);
        let hsz = usize::try_from(int(self, "hidden_size")?).map_err(|_| "bad hidden_size")?;
        if int(self, "input_size")? != isz as i64 || hsz == 0 || seq == 0 {
            return Err(format!("input_size/hidden_size do not match input {xt}"));
        }
        for v in [h0, c0] {
            if self.ty(v).shape != [1, batch, hsz] {
                return Err(format!("state {} must be [1, {batch}, {hsz}]", self.ty(v)));
            }
        }
        let g4 = 4 * hsz;
        let wn = self.ty(w).numel();
        let base = g4 * isz + g4 * hsz;
        let n_bias = match (flag(self, "has_bias")?, wn) {
            (false, n) if n == base => 0,
            (true, n) if n == base + g4 => 1,
            (true, n) if n == base + 2 * g4 => 2,
            _ => {
                return Err(format!(
                    "weight {} does not fit input_size {isz}, hidden_size {hsz}",
                    self.ty(w)
                ));
            }
        };
        let flat = self.reshape(c, w, vec![wn], "/w")?;
        let piece = |imp: &mut Self, off: usize, shape: Vec<usize>, sfx: &str| -> R<ValueId> {
            let len = shape.iter().product();
            let s = imp.node(
                c,
                Op::Slice(SliceAttrs {
                    starts: vec![off],
                    steps: vec![1],
                    sizes: vec![len],
                }),
                vec![flat],
                &format!("{sfx}_flat"),
            )?;
            imp.reshape(c, s, shape, sfx)
        };
        let w_ih = piece(self, 0, vec![g4, isz], "/w_ih")?;
        let w_hh = piece(self, g4 * isz, vec![g4, hsz], "/w_hh")?;
        let mut bias = None;
        for k in 0..n_bias {
            let b = piece(self, base + k * g4, vec![g4], &format!("/b{k}"))?;
            bias = Some(match bias {
                None => b,
                Some(a) => self.bin(c, BinaryOp::Add, a, b, "/b")?,
            });
        }
        let gemm = Op::Gemm(GemmAttrs {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
            epilogue: Vec::new(),
        });
        let mut h = self.reshape(c, h0, vec![batch, hsz], "/h0")?;
        let mut cs = self.reshape(c, c0, vec![batch, hsz], "/c0")?;
        let mut ys = vec![];
        for t in 0..seq {
            let s = format!("/t{t}");
            let xs = self.node(
                c,
                Op::Slice(SliceAttrs {
                    starts: vec![t, 0, 0],
                    steps: vec![1, 1, 1],
                    sizes: vec![1, batch, isz],
                }),
                vec![x],
                &format!("{s}/x3"),
            )?;
            let xs = self.reshape(c, xs, vec![batch, isz], &format!("{s}/x"))?;
            let mut ins = vec![xs, w_ih];
            ins.extend(bias);
            let gx = self.node(c, gemm.clone(), ins, &format!("{s}/gx"))?;
            let gh = self.node(c, gemm.clone(), vec![h, w_hh], &format!("{s}/gh"))?;
            let gates = self.bin(c, BinaryOp::Add, gx, gh, &format!("{s}/gates"))?;
            let names = (0..4)
                .map(|k| format!("{}{s}/gate{k}", c.name))
                .collect::<Vec<_>>();
            let parts = self.b.node(
                &c.name,
                Op::Split {
                    axis: 1,
                    sizes: vec![hsz; 4],
                },
                vec![gates],
                &names,
            )?;
            let act = |imp: &mut Self, u: UnaryOp, v: ValueId, n: &str| {
                imp.node(c, Op::Unary(u), vec![v], &format!("{s}/{n}"))
            };
            let i = act(self, UnaryOp::Sigmoid, parts[0], "i")?;
            let f = act(self, UnaryOp::Sigmoid, parts[1], "f")?;
            let g = act(self, UnaryOp::Tanh, parts[2], "g")?;
            let o = act(self, UnaryOp::Sigmoid, parts[3], "o")?;
            let fc = self.bin(c, BinaryOp::Mul, f, cs, &format!("{s}/fc"))?;
            let ig = self.bin(c, BinaryOp::Mul, i, g, &format!("{s}/ig"))?;
            cs = self.bin(c, BinaryOp::Add, fc, ig, &format!("{s}/c"))?;
            let tc = act(self, UnaryOp::Tanh, cs, "tc")?;
            h = self.bin(c, BinaryOp::Mul, o, tc, &format!("{s}/h"))?;
            ys.push(self.reshape(c, h, vec![1, batch, hsz], &format!("{s}/y"))?);
        }
        let y = if ys.len() == 1 {
            ys[0]
        } else {
            self.node(c, Op::Concat { axis: 0 }, ys, "/y")?
        };
        let hy = self.reshape(c, h, vec![1, batch, hsz], "/hy")?;
        let cy = self.reshape(c, cs, vec![1, batch, hsz], "/cy")?;
        Ok(V::Seq(vec![
            V::T(y),
            V::T(hy),
            V::T(cy),
            V::Unavailable(format!("output 3 of LSTM '{}' (reserve)", c.name)),
            V::Unavailable(format!("output 4 of LSTM '{}' (state)", c.name)),
        ]))
    }

    fn conv2d(&mut self, c: &Ctx) -> R<V> {
        self.check_nchw(c, None)?;
        let x = self.tensor(c, 0)?;
        let w = self.tensor(c, 1)?;
        let (xt, wt) = (self.ty(x).clone(), self.ty(w).clone());
        if xt.rank() != 4 || wt.rank() != 4 {
            return Err(format!(
                "Conv2D needs 4-D input and weight, got {xt} and {wt}"
            ));
        }
        let kernel = vec![wt.shape[2], wt.shape[3]];
        if kernel.contains(&0) {
            return Err(format!("weight {wt} has an empty kernel"));
        }
        let stride = hw(
            &self
                .arg(c, None, "stride")?
                .map(|v| v.ints())
                .transpose()?
                .unwrap_or(vec![1]),
            "stride",
        )?;
        let dil = hw(
            &self
                .arg(c, None, "dilation")?
                .map(|v| v.ints())
                .transpose()?
                .unwrap_or(vec![1]),
            "dilation",
        )?;
        let group = match self.arg(c, None, "group")? {
            Some(v) => v.int()?,
            None => self
                .arg(c, None, "groups")?
                .map(|v| v.int())
                .transpose()?
                .unwrap_or(1),
        };
        let group = usize::try_from(group)
            .ok()
            .filter(|&g| g > 0)
            .ok_or("bad group")?;
        let mode = pad_mode(self.arg(c, None, "pad_mode")?)?;
        let pads = match mode {
            PadMode::Valid => vec![0; 4],
            PadMode::Same => same_pads(&xt.shape[2..], &kernel, &stride, &dil),
            PadMode::Pad => {
                let p = self
                    .arg(c, None, "pad")?
                    .map(|v| v.ints())
                    .transpose()?
                    .unwrap_or(vec![0]);
                let p = match p.len() {
                    1 => vec![p[0]; 4],
                    4 => p,
                    _ => return Err(format!("pad {p:?} must have 1 or 4 values")),
                };
                let p = p
                    .iter()
                    .map(|&v| usize::try_from(v).map_err(|_| format!("negative pad {v}")))
                    .collect::<R<Vec<_>>>()?;
                // MindSpore: (top, bottom, left, right) -> IR: (top, left, bottom, right)
                vec![p[0], p[2], p[1], p[3]]
            }
        };
        let y = self.node(
            c,
            Op::Conv(ConvAttrs {
                kernel,
                strides: stride,
                pads,
                dilations: dil,
                groups: group,
                epilogue: Vec::new(),
                layout: kiln_ir::Layout::Plain,
            }),
            vec![x, w],
            "",
        )?;
        Ok(V::T(y))
    }

    fn pool(&mut self, c: &Ctx) -> R<V> {
        self.check_nchw(c, Some(4))?;
        let x = self.tensor(c, 0)?;
        let xt = self.ty(x).clone();
        if xt.rank() != 4 {
            return Err(format!("pooling needs a 4-D input, got {xt}"));
        }
        let kernel = hw(
            &self.arg_req(c, Some(1), "kernel_size")?.ints()?,
            "kernel_size",
        )?;
        let strides = hw(
            &self
                .arg(c, Some(2), "strides")?
                .map(|v| v.ints())
                .transpose()?
                .unwrap_or(vec![1]),
            "strides",
        )?;
        let mode = pad_mode(self.arg(c, Some(3), "pad_mode")?)?;
        let dil = vec![1, 1];
        let pads = match mode {
            PadMode::Valid => vec![0; 4],
            PadMode::Same => same_pads(&xt.shape[2..], &kernel, &strides, &dil),
            PadMode::Pad => return Err("pad_mode 'pad' is not supported for pooling".into()),
        };
        let a = PoolAttrs {
            kernel,
            strides,
            pads,
            dilations: dil,
            ceil_mode: false,
            count_include_pad: false,
        };
        let op = if c.op == "MaxPool" {
            Op::MaxPool(a)
        } else {
            Op::AveragePool(a)
        };
        Ok(V::T(self.node(c, op, vec![x], "")?))
    }
}

#[derive(Debug, Clone, Copy)]
enum PadMode {
    Pad,
    Same,
    Valid,
}

/// `pad_mode` as a string (any case) or MindSpore's `PadMode` enum (PAD=0, SAME=1, VALID=2).
fn pad_mode(v: Option<V>) -> R<PadMode> {
    match v {
        None => Ok(PadMode::Valid),
        Some(V::S(s)) => match s.to_ascii_lowercase().as_str() {
            "same" => Ok(PadMode::Same),
            "valid" => Ok(PadMode::Valid),
            "pad" => Ok(PadMode::Pad),
            _ => Err(format!("pad_mode '{s}' is not supported")),
        },
        Some(V::I(0)) => Ok(PadMode::Pad),
        Some(V::I(1)) => Ok(PadMode::Same),
        Some(V::I(2)) => Ok(PadMode::Valid),
        Some(v) => Err(format!("pad_mode {v:?} is not supported")),
    }
}

/// A kernel/stride/dilation attribute: 1 value, (h, w) or (n, c, h, w).
fn hw(v: &[i64], what: &str) -> R<Vec<usize>> {
    let p = match v.len() {
        1 => vec![v[0], v[0]],
        2 => v.to_vec(),
        4 => v[2..].to_vec(),
        _ => return Err(format!("{what} {v:?} must have 1, 2 or 4 values")),
    };
    p.iter()
        .map(|&d| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .ok_or_else(|| format!("{what} {v:?} must be positive"))
        })
        .collect()
}

/// MindSpore `TypeId` numbers (`mindspore/core/ir/dtype/type_id.h`) for the dtypes kiln has.
fn type_id(id: i64) -> Option<DType> {
    Some(match id {
        30 => DType::Bool,
        32 => DType::I8,
        33 => DType::I16,
        34 => DType::I32,
        35 => DType::I64,
        37 => DType::U8,
        38 => DType::U16,
        39 => DType::U32,
        40 => DType::U64,
        42 => DType::F16,
        43 => DType::F32,
        44 => DType::F64,
        _ => return None,
    })
}

/// Read and import a `.mindir` file (decrypting it when a key is given and it is encrypted).
pub fn load(path: &Path, opts: &MindirOptions) -> Result<Graph, MsError> {
    let file = path.display().to_string();
    let bytes = map_file(path).map_err(|e| MsError::io(&file, e))?;
    load_bytes(bytes, data::model_dir(path), &file, opts)
}

/// Decode (and decrypt) a MindIR model from bytes.
pub fn decode(bytes: Bytes, file: &str, key: Option<&DecryptKey>) -> Result<ModelProto, MsError> {
    let bytes = match crypto::cipher_mode(&bytes) {
        Some(mode) => {
            let Some(key) = key else {
                return Err(MsError::Model {
                    file: file.into(),
                    msg: format!(
                        "model is encrypted ({mode}); give the key with --decrypt-key-file FILE or the {} environment variable",
                        crypto::KEY_ENV
                    ),
                });
            };
            Bytes::from(crypto::decrypt(&bytes, key).map_err(|msg| MsError::Model {
                file: file.into(),
                msg,
            })?)
        }
        None => bytes,
    };
    ModelProto::decode(bytes).map_err(|source| MsError::Decode {
        file: file.into(),
        what: "MindIR model",
        source,
    })
}

/// Import a MindIR model held in `bytes`. `base_dir` is where external data lives.
pub fn load_bytes(
    bytes: Bytes,
    base_dir: Option<&Path>,
    file: &str,
    opts: &MindirOptions,
) -> Result<Graph, MsError> {
    let model = decode(bytes, file, opts.key.as_ref())?;
    import_model(&model, Source::new(file, base_dir), opts)
}

/// Op histogram and interface of a MindIR model (for `kiln inspect`).
pub fn describe(model: &ModelProto) -> String {
    let prims: HashMap<&str, &PrimitiveProto> =
        model.primitives.iter().map(|p| (p.name(), p)).collect();
    let mut s = format!(
        "MindIR ir_version {} from {} {}\n",
        model.ir_version(),
        model.producer_name(),
        model.model_version()
    );
    let Some(g) = &model.graph else {
        return s + "no graph\n";
    };
    let gname = g.name();
    for i in &g.input {
        let t = i.tensor.first();
        s += &format!(
            "input  {} {}{:?}\n",
            short(i.name(), gname),
            t.map(|t| dtype_of(t.data_type()).map(|d| d.name()).unwrap_or("?"))
                .unwrap_or("?"),
            t.map(|t| t.dims.clone()).unwrap_or_default()
        );
    }
    for o in &g.output {
        let t = o.tensor.first();
        s += &format!(
            "output {} {}{:?}\n",
            short(o.name(), gname),
            t.map(|t| dtype_of(t.data_type()).map(|d| d.name()).unwrap_or("?"))
                .unwrap_or("?"),
            t.map(|t| t.dims.clone()).unwrap_or_default()
        );
    }
    let bytes: usize = g
        .parameter
        .iter()
        .map(|p| p.raw_data.as_ref().map_or(0, |r| r.len()))
        .sum();
    s += &format!("{} parameters ({bytes} bytes inline)\n", g.parameter.len());
    let mut hist: BTreeMap<String, usize> = BTreeMap::new();
    for n in &g.node {
        *hist.entry(resolve(n, &prims).0).or_default() += 1;
    }
    s += &format!("{} nodes:\n", g.node.len());
    for (op, k) in hist {
        s += &format!("  {k:5}  {op}\n");
    }
    if !model.functions.is_empty() {
        s += &format!("{} sub-graphs (functions)\n", model.functions.len());
    }
    s
}

/// Unsupported primitives with their nodes.
fn unsupported(g: &GraphProto, prims: &HashMap<&str, &PrimitiveProto>) -> Unsupported {
    let mut bad = Unsupported::default();
    for (i, n) in g.node.iter().enumerate() {
        let (op, _) = resolve(n, prims);
        if !SUPPORTED.contains(&op.as_str()) && !PLUMBING.contains(&op.as_str()) {
            let name = node_label(&short(n.name(), g.name()), &op, i);
            bad.add(op, name);
        }
    }
    bad
}

pub fn import_model(
    model: &ModelProto,
    src: Source,
    opts: &MindirOptions,
) -> Result<Graph, MsError> {
    let g = src.need(model.graph.as_ref(), "model has no graph")?;
    let (file, base_dir) = (src.file, src.dir);
    let prims: HashMap<&str, &PrimitiveProto> =
        model.primitives.iter().map(|p| (p.name(), p)).collect();
    unsupported(g, &prims).check(file)?;
    let gname = g.name();
    let fixes = opts.inputs.clone();
    let mut imp = Imp {
        b: GraphBuilder::new(file, if gname.is_empty() { "mindir" } else { gname }, fixes),
        prims,
        base_dir,
        ext: ExternalFiles::default(),
    };
    // inputs
    let names: Vec<String> = g.input.iter().map(|i| short(i.name(), gname)).collect();
    imp.b.check_fixes(names.iter().map(|n| n.as_str()))?;
    for i in &g.input {
        let name = short(i.name(), gname);
        let t = i
            .tensor
            .first()
            .ok_or_else(|| src.err(format!("input '{name}' has no tensor type")))?;
        let dtype = dtype_of(t.data_type()).map_err(|e| src.err(format!("input '{name}': {e}")))?;
        let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::from_i64(d)).collect();
        let v = imp.b.input(&name, dtype, Some(&dims))?;
        imp.b
            .bind(i.name(), V::T(v))
            .map_err(|e| src.err(format!("input '{name}': {e}")))?;
    }
    // parameters: named by their checkpoint name (ref_key, or the text after the graph prefix)
    for p in &g.parameter {
        let pname = p
            .ref_key
            .clone()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| short(p.name(), gname));
        let perr = |e: String| src.err(format!("parameter '{pname}': {e}"));
        let v = imp.tensor_const(p, &pname).map_err(perr)?;
        imp.b.bind(p.name(), V::T(v)).map_err(perr)?;
    }
    for n in &g.node {
        imp.import_node(n)?;
    }
    for o in &g.output {
        let v = imp.b.lookup(o.name()).cloned().ok_or_else(|| {
            src.err(format!(
                "graph output '{}' is not produced by any node",
                o.name()
            ))
        })?;
        imp.add_output(v, o.name())?;
    }
    let mut g = imp.b.finish()?;
    g.remove_dead_nodes();
    Ok(g)
}

impl Imp<'_> {
    fn add_output(&mut self, v: V, name: &str) -> Result<(), MsError> {
        match v {
            V::T(t) => self.b.output(t, None),
            V::Seq(s) => {
                for x in s {
                    self.add_output(x, name)?;
                }
                Ok(())
            }
            V::Monad | V::None => Ok(()),
            other => Err(self.b.err(format!(
                "graph output '{name}' is a {} (not a tensor)",
                other.kind()
            ))),
        }
    }

    fn import_node(&mut self, n: &NodeProto) -> Result<(), MsError> {
        let gname = self.b.g.name.clone();
        let (op, attrs) = resolve(n, &self.prims);
        let node_name = if n.name().is_empty() {
            n.output.first().cloned().unwrap_or_default()
        } else {
            n.name().to_string()
        };
        let c = Ctx {
            n,
            name: short(&node_name, &gname),
            op: op.clone(),
            attrs,
        };
        let file = self.b.file;
        let nerr = |msg: String| MsError::node(file, &c.name, &op, msg);
        let v = match op.as_str() {
            "Constant" => self.constant(n, &c.name).map_err(nerr)?,
            "Load" | "Depend" => self.value(&c, 0).map_err(nerr)?,
            "UpdateState" => V::Monad,
            "MakeTuple" => V::Seq(
                (0..n.input.len())
                    .map(|i| self.value(&c, i))
                    .collect::<R<_>>()
                    .map_err(nerr)?,
            ),
            "TupleGetItem" => {
                let t = self.value(&c, 0).map_err(nerr)?;
                let i = self.value(&c, 1).and_then(|v| v.int()).map_err(nerr)?;
                match t {
                    V::Seq(s) => usize::try_from(i)
                        .ok()
                        .and_then(|i| s.get(i).cloned())
                        .ok_or_else(|| {
                            nerr(format!("index {i} out of range for a {}-tuple", s.len()))
                        })?,
                    v => return Err(nerr(format!("TupleGetItem on a {}", v.kind()))),
                }
            }
            "Return" => return Ok(()),
            _ => self.translate(&c).map_err(nerr)?,
        };
        for o in &n.output {
            self.b.bind(o, v.clone()).map_err(nerr)?;
        }
        Ok(())
    }

    /// A `Constant` node: one attribute `value`.
    fn constant(&mut self, n: &NodeProto, name: &str) -> R<V> {
        let a = n
            .attribute
            .iter()
            .find(|a| a.name() == "value")
            .or(n.attribute.first())
            .ok_or("Constant without a value")?;
        match attr_value(a) {
            Ok(v) => Ok(v),
            Err(e) if e == "TENSOR" => {
                let t = a.tensors.first().or(a.t.as_ref()).ok_or("no tensor")?;
                let out = n.output.first().map(String::as_str).unwrap_or(name);
                Ok(V::T(self.tensor_const(t, out)?))
            }
            Err(e) => Err(e),
        }
    }
}
