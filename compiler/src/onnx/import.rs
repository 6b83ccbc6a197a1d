//! ModelProto -> Graph translation.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kiln_ir::ops::{
    ActKind, BinaryOp, CmpOp, ConvAttrs, ConvTransposeAttrs, CoordTransform, GemmAttrs, LogicOp,
    NearestMode, PoolAttrs, ReduceKind, ResizeAttrs, ResizeMode, ScatterReduction, SliceAttrs,
    SoftmaxKind, UnaryOp,
};
use kiln_ir::{ConstData, DType, Graph, Op, TensorType, ValueDef, ValueId};

use super::consteval::{self as ce, BinOp, CT, FOLD_LIMIT};
#[path = "attention.rs"]
mod attention;
use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, tensor_shape_proto::dimension,
    type_proto,
};
use super::tensor::{decode_tensor, dtype_from_onnx};
use super::{OnnxError, OnnxOptions};
use crate::frontend::data::ExternalFiles;
use crate::frontend::{Dim, FrontendError, GraphBuilder, Source, Unsupported, ir_msg, node_label};
use crate::frontend::{norm_axis, reduce_kind, tf};

pub const MIN_OPSET: i64 = 6;
pub const MAX_OPSET: i64 = 27;

#[path = "arity.rs"]
mod arity;
#[path = "contrib.rs"]
pub(crate) mod contrib;
mod lower;

/// Largest constant the importer materializes (ConstantOfShape splats): 1 GiB.
const MAX_CONST_BYTES: usize = 1 << 30;

/// Largest table/mask/zero constant a lowering builds from shapes and attributes (elements):
/// sizes come from the file, so they are checked before anything is allocated.
const MAX_LOWERED_ELEMS: usize = 1 << 26;

/// `n` elements for a lowering-built constant, or an error naming it when the product
/// overflows or exceeds [`MAX_LOWERED_ELEMS`].
fn lowered_elems(dims: &[usize], what: &str) -> R<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_LOWERED_ELEMS)
        .ok_or_else(|| {
            format!("{what} {dims:?} is too large to build at compile time (limit {MAX_LOWERED_ELEMS} elements)")
        })
}

type R<T> = Result<T, String>;

/// Every op type the importer knows (some only on constant inputs).
const SUPPORTED: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Neg",
    "Abs",
    "Reciprocal",
    "Floor",
    "Ceil",
    "HardSwish",
    "Clip",
    "HardSigmoid",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "ThresholdedRelu",
    "Shrink",
    "Swish",
    "Gelu",
    "IsNaN",
    "IsInf",
    "Mod",
    "BitShift",
    "Mean",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Round",
    "Sign",
    "Softplus",
    "Softsign",
    "Mish",
    "BitwiseNot",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "PRelu",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "Resize",
    "Upsample",
    "Cast",
    "CastLike",
    "Constant",
    "Identity",
    "Dropout",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Reshape",
    "Softmax",
    "NegativeLogLikelihoodLoss",
    "SoftmaxCrossEntropyLoss",
    "Trilu",
    "LRN",
    "Pad",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
    "InstanceNormalization",
    "GroupNormalization",
    "MeanVarianceNormalization",
    "LpNormalization",
    "GlobalMaxPool",
    "GlobalLpPool",
    "EyeLike",
    "OneHot",
    "QuantizeLinear",
    "LpPool",
    "DFT",
    "RNN",
    "GRU",
    "LSTM",
    "BitCast",
    "CenterCropPad",
    "Compress",
    "HannWindow",
    "HammingWindow",
    "BlackmanWindow",
    "Col2Im",
    "MaxUnpool",
    "ConvInteger",
    "QLinearConv",
    "NonZero",
    "Einsum",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "CumSum",
    "CumProd",
    "TopK",
    "LogSoftmax",
    "Hardmax",
    "GatherElements",
    "GatherND",
    "ScatterElements",
    "Scatter",
    "ScatterND",
    // Shape arithmetic (folded; constant inputs only where the IR has no op).
    "Shape",
    "Size",
    "Gather",
    "Range",
    "ConstantOfShape",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "ArgMax",
    "ArgMin",
    "LayerNormalization",
    "RMSNormalization",
    "Where",
    "Expand",
    "Attention",
    "RotaryEmbedding",
    "LinearAttention",
    // With a condition known at compile time (constant after folding / --freeze).
    "If",
];

fn unary_of(op: &str) -> Option<UnaryOp> {
    Some(match op {
        "Relu" => UnaryOp::Relu,
        "Sigmoid" => UnaryOp::Sigmoid,
        "Tanh" => UnaryOp::Tanh,
        "Erf" => UnaryOp::Erf,
        "Exp" => UnaryOp::Exp,
        "Log" => UnaryOp::Log,
        "Sqrt" => UnaryOp::Sqrt,
        "Neg" => UnaryOp::Neg,
        "Abs" => UnaryOp::Abs,
        "Reciprocal" => UnaryOp::Reciprocal,
        "Floor" => UnaryOp::Floor,
        "Ceil" => UnaryOp::Ceil,
        "HardSwish" => UnaryOp::HardSwish,
        "Sin" => UnaryOp::Sin,
        "Cos" => UnaryOp::Cos,
        "Tan" => UnaryOp::Tan,
        "Asin" => UnaryOp::Asin,
        "Acos" => UnaryOp::Acos,
        "Atan" => UnaryOp::Atan,
        "Sinh" => UnaryOp::Sinh,
        "Cosh" => UnaryOp::Cosh,
        "Asinh" => UnaryOp::Asinh,
        "Acosh" => UnaryOp::Acosh,
        "Atanh" => UnaryOp::Atanh,
        "Round" => UnaryOp::Round,
        "Sign" => UnaryOp::Sign,
        "Softplus" => UnaryOp::Softplus,
        "Softsign" => UnaryOp::Softsign,
        "Mish" => UnaryOp::Mish,
        "BitwiseNot" => UnaryOp::BitNot,
        _ => return None,
    })
}

fn binary_of(op: &str) -> Option<BinaryOp> {
    Some(match op {
        "Add" | "Sum" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Pow" => BinaryOp::Pow,
        "Max" => BinaryOp::Max,
        "Min" => BinaryOp::Min,
        "BitwiseAnd" => BinaryOp::BitAnd,
        "BitwiseOr" => BinaryOp::BitOr,
        "BitwiseXor" => BinaryOp::BitXor,
        "PRelu" => BinaryOp::PRelu,
        _ => return None,
    })
}

fn fold_of(b: BinaryOp) -> Option<BinOp> {
    Some(match b {
        BinaryOp::Add => BinOp::Add,
        BinaryOp::Sub => BinOp::Sub,
        BinaryOp::Mul => BinOp::Mul,
        BinaryOp::Div => BinOp::Div,
        BinaryOp::Pow => BinOp::Pow,
        BinaryOp::Max => BinOp::Max,
        BinaryOp::Min => BinOp::Min,
        _ => return None,
    })
}

fn to_usizes(v: &[i64], what: &str) -> R<Vec<usize>> {
    v.iter()
        .map(|&x| usize::try_from(x).map_err(|_| format!("{what} has negative value {x}")))
        .collect()
}

/// One node being translated, with attribute accessors.
struct Ctx<'n> {
    n: &'n NodeProto,
    name: String,
    op: &'n str,
}

impl Ctx<'_> {
    fn attr(&self, k: &str) -> Option<&AttributeProto> {
        self.n.attribute.iter().find(|a| a.name() == k)
    }
    fn i(&self, k: &str, def: i64) -> i64 {
        self.attr(k).map(|a| a.i()).unwrap_or(def)
    }
    fn f(&self, k: &str, def: f32) -> f32 {
        self.attr(k).map(|a| a.f()).unwrap_or(def)
    }
    fn ints(&self, k: &str) -> Option<Vec<i64>> {
        self.attr(k).map(|a| a.ints.clone())
    }
    fn floats(&self, k: &str) -> Option<Vec<f32>> {
        self.attr(k).map(|a| a.floats.clone())
    }
    fn s(&self, k: &str, def: &str) -> String {
        self.attr(k)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
            .unwrap_or_else(|| def.to_string())
    }
    fn out(&self, i: usize) -> Option<&str> {
        self.n
            .output
            .get(i)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }
}

struct Imp<'a> {
    opset: i64,
    b: GraphBuilder<'a>,
    ext: ExternalFiles,
    base_dir: Option<&'a Path>,
    /// Names read by some node or listed as graph outputs.
    used: HashSet<String>,
    cache: HashMap<ValueId, CT>,
}

impl<'a> Imp<'a> {
    fn ty(&self, v: ValueId) -> &TensorType {
        self.b.ty(v)
    }

    /// The value of a constant (decoded), if `v` is a constant small enough to evaluate.
    fn cval(&mut self, v: ValueId) -> Option<CT> {
        if let Some(c) = self.cache.get(&v) {
            return Some(c.clone());
        }
        let val = self.b.g.value(v);
        let ValueDef::Const(d) = &val.def else {
            return None;
        };
        if val.ty.numel() > FOLD_LIMIT {
            return None;
        }
        let c = CT::from_bytes(&val.ty, d);
        self.cache.insert(v, c.clone());
        Some(c)
    }

    fn add_ct(&mut self, base: &str, ct: CT) -> R<ValueId> {
        let (ty, data) = ct.to_bytes();
        let v = self.b.add_const(base, ty, data)?;
        self.cache.insert(v, ct);
        Ok(v)
    }

    fn inp(&self, c: &Ctx, i: usize) -> R<Option<ValueId>> {
        match c.n.input.get(i).map(|s| s.as_str()) {
            None | Some("") => Ok(None),
            Some(n) => self.b.lookup(n).copied().map(Some).ok_or_else(|| {
                format!("input '{n}' is not defined by an earlier node, initializer or graph input")
            }),
        }
    }

    fn req(&self, c: &Ctx, i: usize) -> R<ValueId> {
        self.inp(c, i)?
            .ok_or_else(|| format!("missing required input {i}"))
    }

    /// A constant input's value (`None` when the input is absent).
    fn const_in(&mut self, c: &Ctx, i: usize) -> R<Option<CT>> {
        let Some(v) = self.inp(c, i)? else {
            return Ok(None);
        };
        self.cval(v).map(Some).ok_or_else(|| {
            format!(
                "input {i} ('{}') must be a constant (after folding)",
                c.n.input[i]
            )
        })
    }

    fn set_out(&mut self, c: &Ctx, i: usize, v: ValueId) -> R<()> {
        match c.out(i) {
            Some(n) => self.b.bind(n, v),
            None => Ok(()),
        }
    }

    fn out_name(&self, c: &Ctx, i: usize) -> String {
        c.out(i)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}/out{i}", c.name))
    }

    fn out_const(&mut self, c: &Ctx, i: usize, ct: CT) -> R<()> {
        let name = self.out_name(c, i);
        let v = self.add_ct(&name, ct)?;
        self.set_out(c, i, v)?;
        Ok(())
    }

    /// Add an IR node named after the ONNX node, with value names `names` (folded into
    /// constants when its inputs are small constants).
    fn node(&mut self, c: &Ctx, op: Op, inputs: Vec<ValueId>, names: &[String]) -> R<Vec<ValueId>> {
        self.b.node(&c.name, op, inputs, names)
    }

    /// Emit a node whose outputs are the ONNX node's outputs.
    fn emit(&mut self, c: &Ctx, op: Op, inputs: Vec<ValueId>) -> R<()> {
        let n_out = op
            .infer(&inputs.iter().map(|v| self.b.g.ty(*v)).collect::<Vec<_>>())
            .map_err(|e| format!("{}: {e}", op.name()))?
            .len();
        let names: Vec<String> = (0..n_out).map(|i| self.out_name(c, i)).collect();
        let outs = self.node(c, op, inputs, &names)?;
        for (i, v) in outs.into_iter().enumerate() {
            self.set_out(c, i, v)?;
        }
        Ok(())
    }

    /// LayerNormalization / RMSNormalization, lowered to primitive IR ops over the axes from
    /// `axis` to the last: `(x - mean) / sqrt(var + eps) * scale + bias` (RMS: no centring, no
    /// bias). LayerNormalization's optional Mean and InvStdDev outputs are those intermediates.
    fn normalization(&mut self, c: &Ctx, op: &str) -> R<()> {
        let layer = op == "LayerNormalization";
        let x = self.req(c, 0)?;
        let scale = self.req(c, 1)?;
        let bias = if layer { self.inp(c, 2)? } else { None };
        let r = self.ty(x).rank();
        let axis = norm_axis(c.i("axis", -1), r)?;
        let axes: Vec<usize> = (axis..r).collect();
        let mean_op = Op::Reduce {
            kind: ReduceKind::Mean,
            axes,
            keepdims: true,
        };
        let base = c.name.clone();
        let step = |s: &mut Self, what: &str, op: Op, ins: Vec<ValueId>| -> R<ValueId> {
            Ok(s.node(c, op, ins, &[format!("{base}/{what}")])?[0])
        };
        let (centred, mean) = if layer {
            let mean = step(self, "mean", mean_op.clone(), vec![x])?;
            (
                step(self, "centred", Op::Binary(BinaryOp::Sub), vec![x, mean])?,
                Some(mean),
            )
        } else {
            (x, None)
        };
        let sq = step(
            self,
            "square",
            Op::Binary(BinaryOp::Mul),
            vec![centred, centred],
        )?;
        let var = step(self, "var", mean_op, vec![sq])?;
        let eps_name = self.b.fresh(&format!("{base}/epsilon"));
        let eps_ty = TensorType::new(self.ty(x).dtype, Vec::<usize>::new());
        if eps_ty.dtype != DType::F32 {
            return Err(format!("{op} on {} is not supported", eps_ty.dtype));
        }
        let eps = self
            .b
            .g
            .add_const(
                eps_name,
                eps_ty,
                kiln_ir::ConstData::from_f32(&[c.f("epsilon", 1e-5)]),
            )
            .map_err(ir_msg)?;
        let ve = step(self, "var_eps", Op::Binary(BinaryOp::Add), vec![var, eps])?;
        let sd = step(self, "std", Op::Unary(UnaryOp::Sqrt), vec![ve])?;
        let inv = step(self, "inv_std", Op::Unary(UnaryOp::Reciprocal), vec![sd])?;
        let normed = step(
            self,
            "normed",
            Op::Binary(BinaryOp::Mul),
            vec![centred, inv],
        )?;
        let y_name = self.out_name(c, 0);
        let y = match bias {
            Some(b) => {
                let scaled = step(
                    self,
                    "scaled",
                    Op::Binary(BinaryOp::Mul),
                    vec![normed, scale],
                )?;
                self.node(c, Op::Binary(BinaryOp::Add), vec![scaled, b], &[y_name])?[0]
            }
            None => self.node(c, Op::Binary(BinaryOp::Mul), vec![normed, scale], &[y_name])?[0],
        };
        self.set_out(c, 0, y)?;
        if let Some(m) = mean {
            self.set_out(c, 1, m)?;
            self.set_out(c, 2, inv)?;
        }
        Ok(())
    }

    /// `x` reshaped to `shape`: a constant view, an alias, or a Reshape node.
    fn reshape(&mut self, c: &Ctx, x: ValueId, shape: Vec<usize>, out: &str) -> R<ValueId> {
        let v = self.b.reshape(&c.name, x, shape.clone(), out)?;
        if v != x
            && let Some(ct) = self.cache.get(&x).cloned()
        {
            self.cache.insert(v, ct.reshape(shape));
        }
        Ok(v)
    }

    fn reshape_out(&mut self, c: &Ctx, x: ValueId, shape: Vec<usize>) -> R<()> {
        let name = self.out_name(c, 0);
        let v = self.reshape(c, x, shape, &name)?;
        self.set_out(c, 0, v)?;
        Ok(())
    }

    /// `a op b`, folded when both are small constants. A constant operand of another element
    /// type is converted to the other operand's type.
    fn binary(&mut self, c: &Ctx, op: BinaryOp, a: ValueId, b: ValueId, out: &str) -> R<ValueId> {
        let (mut a, mut b) = (a, b);
        let (da, db) = (self.ty(a).dtype, self.ty(b).dtype);
        if da != db {
            if let Some(cb) = self.cval(b) {
                b = self.add_ct(&format!("{}/cast_b", c.name), cb.cast(da))?;
            } else if let Some(ca) = self.cval(a) {
                a = self.add_ct(&format!("{}/cast_a", c.name), ca.cast(db))?;
            } else {
                return Err(format!("operand types differ: {da} vs {db}"));
            }
        }
        if let (Some(f), Some(x), Some(y)) = (fold_of(op), self.cval(a), self.cval(b)) {
            let r = ce::binary(f, &x, &y)?;
            if r.numel() <= FOLD_LIMIT {
                return self.add_ct(out, r);
            }
        }
        Ok(self.node(c, Op::Binary(op), vec![a, b], &[out.to_string()])?[0])
    }

    fn import_node(&mut self, n: &mut NodeProto, index: usize) -> Result<(), OnnxError> {
        let name = if n.name().is_empty() {
            format!("{}_{index}", n.op_type())
        } else {
            n.name().to_string()
        };
        // Constant nodes may carry large tensors: move them out instead of copying.
        let mut value_t: Option<TensorProto> = None;
        if n.op_type() == "Constant" {
            value_t = n
                .attribute
                .iter_mut()
                .find(|a| a.name() == "value")
                .and_then(|a| a.t.take());
        }
        let c = Ctx {
            n,
            name: name.clone(),
            op: n.op_type(),
        };
        let domain = n.domain();
        if domain == "com.microsoft" || domain.is_empty() && contrib::DEFAULT_DOMAIN.contains(&c.op)
        {
            return self.import_contrib(n, &name);
        }
        if let Some(&(_, lo_in, hi_in, lo_out, hi_out)) =
            arity::ARITY.iter().find(|a| a.0 == n.op_type())
        {
            let (ni, no) = (n.input.len() as u64, n.output.len() as u64);
            let range = |lo: u32, hi: u32| {
                if hi == u32::MAX {
                    format!("at least {lo}")
                } else if lo == hi {
                    format!("{lo}")
                } else {
                    format!("{lo} to {hi}")
                }
            };
            let msg = if ni < lo_in as u64 || ni > hi_in as u64 {
                Some(format!(
                    "has {ni} inputs, the op takes {}",
                    range(lo_in, hi_in)
                ))
            } else if no < lo_out as u64 || no > hi_out as u64 {
                Some(format!(
                    "has {no} outputs, the op has {}",
                    range(lo_out, hi_out)
                ))
            } else {
                None
            };
            if let Some(m) = msg {
                return Err(FrontendError::node(self.b.file, &name, n.op_type(), m));
            }
        }
        self.translate(&c, value_t)
            .map_err(|msg| FrontendError::node(self.b.file, &name, n.op_type(), msg))
    }

    /// `If` whose condition is known at compile time (a constant after shape folding and
    /// `--freeze`): the taken branch is inlined (its nodes see the outer scope; its own names
    /// shadow it) and the other dropped. A run-time condition is an error that says which
    /// input to freeze.
    fn if_op(&mut self, c: &Ctx) -> R<()> {
        let cond = self.req(c, 0)?;
        let cv = self.cval(cond).ok_or_else(|| {
            format!(
                "input 0 ('{}') must be a constant (after folding): the condition is only known at run time; fix the inputs it depends on with --freeze NAME=FILE.npy (run-time control flow is not supported yet)",
                c.n.input[0]
            )
        })?;
        let bits = cv.as_i64();
        let [b] = bits[..] else {
            return Err(format!(
                "the condition must have one element, has {}",
                bits.len()
            ));
        };
        let which = if b != 0 { "then_branch" } else { "else_branch" };
        let g = c
            .attr(which)
            .and_then(|a| a.g.as_ref())
            .ok_or_else(|| format!("missing graph attribute '{which}'"))?;
        if g.output.len() != c.n.output.len() {
            return Err(format!(
                "{which} has {} outputs, the node {}",
                g.output.len(),
                c.n.output.len()
            ));
        }
        if !g.sparse_initializer.is_empty() {
            return Err(format!("{which}: sparse initializers are not supported"));
        }
        self.b.push_scope();
        let res = (|| -> R<Vec<ValueId>> {
            for t in &g.initializer {
                let mut t = t.clone();
                let (ty, data) = decode_tensor(&mut t, self.base_dir, &mut self.ext)
                    .map_err(|e| format!("{which} initializer '{}': {e}", t.name()))?;
                let v = self
                    .b
                    .add_const(&format!("{}/{}", c.name, t.name()), ty, data)?;
                self.b.bind(t.name(), v)?;
            }
            for (i, n) in g.node.iter().enumerate() {
                let mut n = n.clone();
                let label = node_label(n.name(), n.op_type(), i);
                n.name = Some(format!("{}/{which}/{label}", c.name));
                self.import_node(&mut n, i).map_err(|e| match e {
                    FrontendError::Node { node, op, msg, .. } => format!("{node} ({op}): {msg}"),
                    e => e.to_string(),
                })?;
            }
            g.output
                .iter()
                .map(|o| {
                    self.b
                        .lookup(o.name())
                        .copied()
                        .ok_or_else(|| format!("{which} output '{}' is not produced", o.name()))
                })
                .collect()
        })();
        self.b.pop_scope();
        for (i, v) in res?.into_iter().enumerate() {
            self.set_out(c, i, v)?;
        }
        Ok(())
    }

    /// A contrib op: expanded into standard ONNX nodes, imported with the newest opset's
    /// semantics (the expansion writes them in that form); errors name the contrib node.
    fn import_contrib(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        struct Vals<'i, 'a>(&'i Imp<'a>);
        impl contrib::Inputs for Vals<'_, '_> {
            fn ty(&self, name: &str) -> Option<TensorType> {
                self.0.b.lookup(name).map(|v| self.0.ty(*v).clone())
            }
            fn data(&self, name: &str) -> Option<ConstData> {
                self.0
                    .b
                    .lookup(name)
                    .and_then(|v| self.0.b.g.const_data(*v).cloned())
            }
        }
        let op = format!("com.microsoft:{}", n.op_type());
        let file = self.b.file;
        let nodes = contrib::expand(n, name, &Vals(self))
            .map_err(|m| FrontendError::node(file, name, &op, m))?;
        let saved = self.opset;
        self.opset = MAX_OPSET;
        let mut res = Ok(());
        for (i, mut sub) in nodes.into_iter().enumerate() {
            if let Err(e) = self.import_node(&mut sub, i) {
                let msg = match e {
                    FrontendError::Node { node, op, msg, .. } => format!("in {node} ({op}): {msg}"),
                    e => e.to_string(),
                };
                res = Err(FrontendError::node(file, name, &op, msg));
                break;
            }
        }
        self.opset = saved;
        res
    }

    fn translate(&mut self, c: &Ctx, value_t: Option<TensorProto>) -> R<()> {
        let op = c.op;
        if let Some(u) = unary_of(op) {
            let x = self.req(c, 0)?;
            if u == UnaryOp::Neg
                && let Some(cx) = self.cval(x)
            {
                return self.out_const(c, 0, ce::neg(&cx));
            }
            return self.emit(c, Op::Unary(u), vec![x]);
        }
        if let Some(b) = binary_of(op) {
            let ins: Vec<ValueId> = (0..c.n.input.len())
                .map(|i| self.req(c, i))
                .collect::<R<_>>()?;
            let variadic = matches!(op, "Max" | "Min" | "Sum");
            if ins.is_empty() || (!variadic && ins.len() != 2) {
                return Err(format!("expects 2 inputs, got {}", ins.len()));
            }
            let mut ins = ins;
            if self.opset < 7 && !variadic && c.i("broadcast", 0) != 0 {
                // legacy broadcasting: B's dims line up with A's from `axis` (default: suffix)
                let (ra, sb) = (self.ty(ins[0]).rank(), self.ty(ins[1]).shape.clone());
                let axis = match c.attr("axis") {
                    Some(a) => norm_axis(a.i(), ra)?,
                    None => ra
                        .checked_sub(sb.len())
                        .ok_or("B has a higher rank than A")?,
                };
                if axis + sb.len() > ra {
                    return Err(format!(
                        "B {sb:?} does not fit A's rank {ra} at axis {axis}"
                    ));
                }
                let mut shape = vec![1; axis];
                shape.extend_from_slice(&sb);
                shape.resize(ra, 1);
                ins[1] = self.reshape(c, ins[1], shape, &format!("{}/legacy_broadcast", c.name))?;
            }
            if op == "PRelu" && self.opset < 7 {
                // legacy PRelu: a 1-D slope of length C applies per channel (axis 1)
                let (xs, ss) = (self.ty(ins[0]).shape.clone(), self.ty(ins[1]).shape.clone());
                if ss.len() == 1 && xs.len() >= 2 && ss[0] == xs[1] && ss[0] != 1 {
                    let mut shape = vec![ss[0]];
                    shape.resize(xs.len() - 1, 1);
                    ins[1] = self.reshape(c, ins[1], shape, &format!("{}/slope", c.name))?;
                }
            }
            let mut acc = ins[0];
            for (k, &v) in ins.iter().enumerate().skip(1) {
                let out = if k + 1 == ins.len() {
                    self.out_name(c, 0)
                } else {
                    format!("{}/partial{k}", c.name)
                };
                acc = self.binary(c, b, acc, v, &out)?;
            }
            self.set_out(c, 0, acc)?;
            return Ok(());
        }
        match op {
            "Identity" => {
                let x = self.req(c, 0)?;
                self.set_out(c, 0, x)?;
            }
            "Dropout" => {
                if let Some(t) = self.inp(c, 2)? {
                    let t = self.cval(t).ok_or("training_mode must be a constant")?;
                    if t.as_i64().iter().any(|&x| x != 0) {
                        return Err("training_mode=true is not supported".into());
                    }
                }
                let x = self.req(c, 0)?;
                self.set_out(c, 0, x)?;
                if let Some(m) = c.out(1)
                    && self.used.contains(m)
                {
                    // inference keeps every element: the mask is all true
                    let n = self.ty(x).numel();
                    let shape = self.ty(x).shape.clone();
                    let ones = CT {
                        dtype: DType::Bool,
                        shape,
                        v: ce::Vals::I(vec![1; n]),
                    };
                    self.out_const(c, 1, ones)?;
                }
            }
            "Constant" => {
                let ct = self.constant_value(c, value_t)?;
                match ct {
                    Ok((ty, data)) => {
                        let name = self.b.fresh(&self.out_name(c, 0));
                        let v = self.b.g.add_const(name, ty, data).map_err(ir_msg)?;
                        self.set_out(c, 0, v)?;
                    }
                    Err(ct) => self.out_const(c, 0, ct)?,
                }
            }
            "Shape" => {
                let x = self.req(c, 0)?;
                let sh = self.ty(x).shape.clone();
                let r = sh.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let s = clampi(c.i("start", 0));
                let e = clampi(c.i("end", r)).max(s);
                let v: Vec<i64> = sh[s..e].iter().map(|&d| d as i64).collect();
                self.out_const(c, 0, CT::i64s(vec![v.len()], v))?;
            }
            "Size" => {
                let x = self.req(c, 0)?;
                let n = self.ty(x).numel() as i64;
                self.out_const(c, 0, CT::i64s(vec![], vec![n]))?;
            }
            "Gather" => {
                let (dv, iv) = (self.req(c, 0)?, self.req(c, 1)?);
                if let (Some(data), Some(idx)) = (self.cval(dv), self.cval(iv)) {
                    let axis = norm_axis(c.i("axis", 0), data.shape.len())?;
                    let r = ce::gather(&data, &idx, axis)?;
                    self.out_const(c, 0, r)?;
                } else {
                    let axis = norm_axis(c.i("axis", 0), self.ty(dv).rank())?;
                    self.emit(c, Op::Gather { axis }, vec![dv, iv])?;
                }
            }
            "GatherElements" | "GatherND" => {
                let (dv, iv) = (self.req(c, 0)?, self.req(c, 1)?);
                let o = if op == "GatherND" {
                    Op::GatherND {
                        batch_dims: usize::try_from(c.i("batch_dims", 0))
                            .map_err(|_| "negative batch_dims")?,
                    }
                } else {
                    Op::GatherElements {
                        axis: norm_axis(c.i("axis", 0), self.ty(dv).rank())?,
                    }
                };
                self.emit(c, o, vec![dv, iv])?;
            }
            "ScatterElements" | "Scatter" | "ScatterND" => {
                let ins = vec![self.req(c, 0)?, self.req(c, 1)?, self.req(c, 2)?];
                let r = c.s("reduction", "none");
                let reduction = ScatterReduction::from_name(&r)
                    .ok_or_else(|| format!("unknown reduction '{r}'"))?;
                let o = if op == "ScatterND" {
                    Op::ScatterND { reduction }
                } else {
                    Op::ScatterElements {
                        axis: norm_axis(c.i("axis", 0), self.ty(ins[0]).rank())?,
                        reduction,
                    }
                };
                self.emit(c, o, ins)?;
            }
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => {
                let (a, b) = (self.req(c, 0)?, self.req(c, 1)?);
                let folded = match (self.cval(a), self.cval(b), op) {
                    (Some(ca), Some(cb), "Equal" | "Less" | "Greater") => {
                        let cb = if ca.dtype != cb.dtype {
                            cb.cast(ca.dtype)
                        } else {
                            cb
                        };
                        let f = match op {
                            "Equal" => BinOp::Equal,
                            "Less" => BinOp::Less,
                            _ => BinOp::Greater,
                        };
                        Some(ce::binary(f, &ca, &cb)?)
                    }
                    _ => None,
                };
                if let Some(r) = folded {
                    self.out_const(c, 0, r)?;
                } else {
                    let cmp = match op {
                        "Equal" => CmpOp::Equal,
                        "Less" => CmpOp::Less,
                        "Greater" => CmpOp::Greater,
                        "LessOrEqual" => CmpOp::LessOrEqual,
                        _ => CmpOp::GreaterOrEqual,
                    };
                    self.emit(c, Op::Compare(cmp), vec![a, b])?;
                }
            }
            "And" | "Or" | "Xor" => {
                let (a, b) = (self.req(c, 0)?, self.req(c, 1)?);
                let l = match op {
                    "And" => LogicOp::And,
                    "Or" => LogicOp::Or,
                    _ => LogicOp::Xor,
                };
                self.emit(c, Op::Logical(l), vec![a, b])?;
            }
            "LayerNormalization" | "RMSNormalization" => self.normalization(c, op)?,
            "NegativeLogLikelihoodLoss" => self.nll_loss(c)?,
            "SoftmaxCrossEntropyLoss" => self.softmax_cross_entropy(c)?,
            "Trilu" => self.trilu(c)?,
            "LRN" => self.lrn(c)?,
            "Pad" => self.pad(c)?,
            "Tile" => self.tile(c)?,
            "DepthToSpace" => self.depth_space(c, true)?,
            "SpaceToDepth" => self.depth_space(c, false)?,
            "InstanceNormalization" => self.instance_norm(c)?,
            "GroupNormalization" => self.group_norm(c)?,
            "MeanVarianceNormalization" => self.mean_variance_norm(c)?,
            "LpNormalization" => self.lp_norm(c)?,
            "GlobalMaxPool" => self.global_pool(c, true)?,
            "GlobalLpPool" => self.global_pool(c, false)?,
            "EyeLike" => self.eye_like(c)?,
            "OneHot" => self.one_hot(c)?,
            "QuantizeLinear" => self.quantize_linear(c)?,
            "LpPool" => self.lp_pool(c)?,
            "DFT" => self.dft(c)?,
            "RNN" | "GRU" | "LSTM" => self.recurrent(c, op)?,
            "BitCast" => self.bit_cast(c)?,
            "CenterCropPad" => self.center_crop_pad(c)?,
            "Compress" => self.compress(c)?,
            "HannWindow" | "HammingWindow" | "BlackmanWindow" => self.window_fn(c, op)?,
            "Col2Im" => self.col2im(c)?,
            "MaxUnpool" => self.max_unpool(c)?,
            "ConvInteger" => self.conv_integer(c, false)?,
            "QLinearConv" => self.conv_integer(c, true)?,
            "NonZero" => self.non_zero(c)?,
            "Einsum" => self.einsum(c)?,
            "DequantizeLinear" => self.dequantize_linear(c)?,
            "DynamicQuantizeLinear" => self.dynamic_quantize_linear(c)?,
            "MatMulInteger" => self.matmul_integer(c)?,
            "QLinearMatMul" => self.qlinear_matmul(c)?,
            "CumSum" | "CumProd" => {
                let x = self.req(c, 0)?;
                let axis = self.const_in(c, 1)?.ok_or("missing axis")?;
                let axis = norm_axis(
                    *axis.as_i64().first().ok_or("axis must be a scalar")?,
                    self.ty(x).rank(),
                )?;
                let o = Op::CumSum {
                    axis,
                    exclusive: c.i("exclusive", 0) != 0,
                    reverse: c.i("reverse", 0) != 0,
                    prod: op == "CumProd",
                };
                self.emit(c, o, vec![x])?;
            }
            "TopK" => {
                let x = self.req(c, 0)?;
                let k = if self.opset < 10 {
                    c.i("k", -1)
                } else {
                    *self
                        .const_in(c, 1)?
                        .ok_or("missing K")?
                        .as_i64()
                        .first()
                        .ok_or("K must have one element")?
                };
                let k = usize::try_from(k).map_err(|_| format!("k={k} must be non-negative"))?;
                let axis = norm_axis(c.i("axis", -1), self.ty(x).rank())?;
                let largest = c.i("largest", 1) != 0;
                self.emit(c, Op::TopK { axis, k, largest }, vec![x])?;
            }
            "ArgMax" | "ArgMin" => {
                let x = self.req(c, 0)?;
                let axis = norm_axis(c.i("axis", 0), self.ty(x).rank())?;
                let op = Op::ArgExtreme {
                    max: op == "ArgMax",
                    axis,
                    keepdims: c.i("keepdims", 1) != 0,
                    select_last: c.i("select_last_index", 0) != 0,
                };
                self.emit(c, op, vec![x])?;
            }
            "Not" => {
                let a = self.req(c, 0)?;
                self.emit(c, Op::Not, vec![a])?;
            }
            "Where" => {
                let (cv, xv, yv) = (self.req(c, 0)?, self.req(c, 1)?, self.req(c, 2)?);
                if let (Some(cond), Some(x), Some(y)) =
                    (self.cval(cv), self.cval(xv), self.cval(yv))
                {
                    let r = ce::where_(&cond, &x, &y)?;
                    if r.numel() <= FOLD_LIMIT {
                        self.out_const(c, 0, r)?;
                        return Ok(());
                    }
                }
                self.emit(c, Op::Where, vec![cv, xv, yv])?;
            }
            "Expand" => {
                let xv = self.req(c, 0)?;
                let s = self.const_in(c, 1)?.ok_or("missing shape")?;
                let shape = to_usizes(&s.as_i64(), "shape")?;
                let Some(x) = self.cval(xv) else {
                    self.emit(c, Op::Expand { shape }, vec![xv])?;
                    return Ok(());
                };
                let n = shape
                    .iter()
                    .try_fold(x.numel().max(1), |a, &d| a.checked_mul(d.max(1)));
                if n.is_none_or(|n| n > FOLD_LIMIT) {
                    return Err("result too large to fold".into());
                }
                let r = ce::expand(&x, &shape)?;
                self.out_const(c, 0, r)?;
            }
            "Range" => {
                let s = self.const_in(c, 0)?.ok_or("missing start")?;
                let l = self.const_in(c, 1)?.ok_or("missing limit")?;
                let d = self.const_in(c, 2)?.ok_or("missing delta")?;
                if s.numel() != 1 || l.numel() != 1 || d.numel() != 1 {
                    return Err("start, limit and delta must be scalars".into());
                }
                let r = if s.dtype.is_float() {
                    let (s0, l0, d0) = (s.as_f64()[0], l.as_f64()[0], d.as_f64()[0]);
                    let n = ((l0 - s0) / d0).ceil();
                    if n.is_nan() || n == f64::INFINITY {
                        return Err("range is infinite".into());
                    }
                    let n = n.max(0.0);
                    if n > FOLD_LIMIT as f64 {
                        return Err("range too long".into());
                    }
                    let v: Vec<f64> = (0..n as usize).map(|i| s0 + i as f64 * d0).collect();
                    CT {
                        dtype: s.dtype,
                        shape: vec![v.len()],
                        v: ce::Vals::F(v),
                    }
                    .cast(s.dtype)
                } else {
                    let (s0, l0, d0) = (
                        s.as_i64()[0] as i128,
                        l.as_i64()[0] as i128,
                        d.as_i64()[0] as i128,
                    );
                    if d0 == 0 {
                        return Err("delta is 0".into());
                    }
                    let span = l0 - s0;
                    let n = if (span > 0) == (d0 > 0) && span != 0 {
                        (span.abs() + d0.abs() - 1) / d0.abs()
                    } else {
                        0
                    };
                    if n > FOLD_LIMIT as i128 {
                        return Err("range too long".into());
                    }
                    let v: Vec<i64> = (0..n).map(|i| (s0 + i * d0) as i64).collect();
                    CT {
                        dtype: s.dtype,
                        shape: vec![v.len()],
                        v: ce::Vals::I(v),
                    }
                };
                self.out_const(c, 0, r)?;
            }
            "ConstantOfShape" => {
                let s = self.const_in(c, 0)?.ok_or("missing shape")?;
                let shape = to_usizes(&s.as_i64(), "shape")?;
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or("shape overflows")?;
                let fill = match c.attr("value").and_then(|a| a.t.clone()) {
                    Some(mut t) => {
                        let (ty, d) = decode_tensor(&mut t, None, &mut self.ext)?;
                        if ty.numel() != 1 {
                            return Err("value must have one element".into());
                        }
                        CT::from_bytes(&ty, &d)
                    }
                    None => CT {
                        dtype: DType::F32,
                        shape: vec![1],
                        v: ce::Vals::F(vec![0.0]),
                    },
                };
                if n > FOLD_LIMIT {
                    // a large splat (weights of test models): build the bytes directly
                    let (ty, one) = CT {
                        shape: vec![],
                        ..fill
                    }
                    .to_bytes();
                    if n.checked_mul(ty.dtype.size())
                        .is_none_or(|b| b > MAX_CONST_BYTES)
                    {
                        return Err(format!("a constant of shape {shape:?} is too large"));
                    }
                    let data = ConstData::from_vec(one.bytes().repeat(n));
                    let name = self.b.fresh(&self.out_name(c, 0));
                    let v = self
                        .b
                        .g
                        .add_const(name, ty.with_shape(shape), data)
                        .map_err(ir_msg)?;
                    self.set_out(c, 0, v)?;
                    return Ok(());
                }
                let v = match &fill.v {
                    ce::Vals::I(v) => ce::Vals::I(vec![v[0]; n]),
                    ce::Vals::F(v) => ce::Vals::F(vec![v[0]; n]),
                };
                self.out_const(
                    c,
                    0,
                    CT {
                        dtype: fill.dtype,
                        shape,
                        v,
                    },
                )?;
            }
            "Cast" | "CastLike" => {
                let x = self.req(c, 0)?;
                let to = if op == "CastLike" {
                    // the target type is the type of input 1
                    self.ty(self.req(c, 1)?).dtype
                } else {
                    dtype_from_onnx(c.i("to", 0) as i32)?
                };
                if self.ty(x).dtype == to {
                    self.set_out(c, 0, x)?;
                } else if let Some(cx) = self.cval(x) {
                    self.out_const(c, 0, cx.cast(to))?;
                } else {
                    self.emit(c, Op::Cast { to }, vec![x])?;
                }
            }
            "Reshape" => {
                let x = self.req(c, 0)?;
                let s = self.const_in(c, 1)?.ok_or("missing shape input")?;
                let shape = reshape_target(
                    &self.ty(x).shape,
                    &s.as_i64(),
                    self.opset >= 14 && c.i("allowzero", 0) != 0,
                )?;
                self.reshape_out(c, x, shape)?;
            }
            "Flatten" => {
                let x = self.req(c, 0)?;
                let sh = self.ty(x).shape.clone();
                let r = sh.len() as i64;
                let a = c.i("axis", 1);
                let a = if a < 0 { a + r } else { a };
                if a < 0 || a > r {
                    return Err(format!("axis {} out of range for rank {r}", c.i("axis", 1)));
                }
                let a = a as usize;
                let shape = vec![sh[..a].iter().product(), sh[a..].iter().product()];
                self.reshape_out(c, x, shape)?;
            }
            "Unsqueeze" | "Squeeze" => {
                let x = self.req(c, 0)?;
                let axes = if self.opset >= 13 {
                    self.const_in(c, 1)?.map(|a| a.as_i64())
                } else {
                    c.ints("axes")
                };
                let sh = self.ty(x).shape.clone();
                let shape = if op == "Unsqueeze" {
                    let axes = axes.ok_or("missing axes")?;
                    let r = sh.len() + axes.len();
                    let mut ax = axes
                        .iter()
                        .map(|&a| norm_axis(a, r))
                        .collect::<R<Vec<_>>>()?;
                    ax.sort_unstable();
                    ax.dedup();
                    if ax.len() != axes.len() {
                        return Err(format!("repeated axes {axes:?}"));
                    }
                    let mut it = sh.iter();
                    (0..r)
                        .map(|d| {
                            if ax.contains(&d) {
                                1
                            } else {
                                *it.next().unwrap()
                            }
                        })
                        .collect()
                } else {
                    match axes {
                        Some(axes) if !axes.is_empty() => {
                            let ax = axes
                                .iter()
                                .map(|&a| norm_axis(a, sh.len()))
                                .collect::<R<Vec<_>>>()?;
                            if let Some(&d) = ax.iter().find(|&&d| sh[d] != 1) {
                                return Err(format!("cannot squeeze dim {d} of shape {sh:?}"));
                            }
                            (0..sh.len())
                                .filter(|d| !ax.contains(d))
                                .map(|d| sh[d])
                                .collect()
                        }
                        _ => sh.iter().copied().filter(|&d| d != 1).collect(),
                    }
                };
                self.reshape_out(c, x, shape)?;
            }
            "Concat" => {
                let ins: Vec<ValueId> = (0..c.n.input.len())
                    .map(|i| self.req(c, i))
                    .collect::<R<_>>()?;
                if ins.is_empty() {
                    return Err("no inputs".into());
                }
                let axis = norm_axis(
                    c.attr("axis").ok_or("missing attribute 'axis'")?.i(),
                    self.ty(ins[0]).rank(),
                )?;
                let consts: Option<Vec<CT>> = ins.iter().map(|&v| self.cval(v)).collect();
                if let Some(cs) = consts {
                    let r = ce::concat(&cs, axis)?;
                    return self.out_const(c, 0, r);
                }
                if ins.len() == 1 {
                    self.set_out(c, 0, ins[0])?;
                    return Ok(());
                }
                self.emit(c, Op::Concat { axis }, ins)?;
            }
            "Slice" => self.slice(c)?,
            "Transpose" => {
                let x = self.req(c, 0)?;
                let r = self.ty(x).rank();
                let perm = match c.ints("perm") {
                    Some(p) => to_usizes(&p, "perm")?,
                    None => (0..r).rev().collect(),
                };
                let mut seen = vec![false; r];
                if perm.len() != r
                    || perm
                        .iter()
                        .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!("perm {perm:?} is not a permutation of rank {r}"));
                }
                if perm.iter().enumerate().all(|(i, &p)| i == p) {
                    self.set_out(c, 0, x)?;
                } else if let Some(cx) = self.cval(x) {
                    self.out_const(c, 0, ce::transpose(&cx, &perm))?;
                } else {
                    self.emit(c, Op::Transpose { perm }, vec![x])?;
                }
            }
            "Clip" => {
                let x = self.req(c, 0)?;
                let (min, max) = if self.opset < 11 {
                    (c.f("min", f32::MIN), c.f("max", f32::MAX))
                } else {
                    let scalar = |v: Option<CT>, def: f32| -> R<f32> {
                        match v {
                            None => Ok(def),
                            Some(t) if t.numel() == 1 => Ok(t.as_f64()[0] as f32),
                            Some(_) => Err("min/max must be scalars".into()),
                        }
                    };
                    let lo = self.const_in(c, 1)?;
                    let hi = self.const_in(c, 2)?;
                    (scalar(lo, f32::NEG_INFINITY)?, scalar(hi, f32::INFINITY)?)
                };
                self.emit(c, Op::Clip { min, max }, vec![x])?;
            }
            "HardSigmoid" | "LeakyRelu" | "Elu" | "Selu" | "Celu" | "ThresholdedRelu"
            | "Shrink" | "Swish" => {
                let x = self.req(c, 0)?;
                let (kind, alpha, beta) = match op {
                    "HardSigmoid" => (ActKind::HardSigmoid, c.f("alpha", 0.2), c.f("beta", 0.5)),
                    "LeakyRelu" => (ActKind::LeakyRelu, c.f("alpha", 0.01), 0.0),
                    "Elu" => (ActKind::Elu, c.f("alpha", 1.0), 0.0),
                    "Selu" => (
                        ActKind::Selu,
                        c.f("alpha", 1.673_263_2),
                        c.f("gamma", 1.050_701),
                    ),
                    "Celu" => (ActKind::Celu, c.f("alpha", 1.0), 0.0),
                    "ThresholdedRelu" => (ActKind::ThresholdedRelu, c.f("alpha", 1.0), 0.0),
                    "Shrink" => (ActKind::Shrink, c.f("bias", 0.0), c.f("lambd", 0.5)),
                    _ => (ActKind::Swish, c.f("alpha", 1.0), 0.0),
                };
                self.emit(c, Op::Act { kind, alpha, beta }, vec![x])?;
            }
            "Gelu" => {
                let x = self.req(c, 0)?;
                let u = match c.s("approximate", "none").as_str() {
                    "none" => UnaryOp::Gelu,
                    "tanh" => UnaryOp::GeluTanh,
                    a => return Err(format!("unknown approximate='{a}'")),
                };
                self.emit(c, Op::Unary(u), vec![x])?;
            }
            "IsNaN" => {
                let x = self.req(c, 0)?;
                self.emit(c, Op::IsNaN, vec![x])?;
            }
            "IsInf" => {
                let x = self.req(c, 0)?;
                let (pos, neg) = (
                    c.i("detect_positive", 1) != 0,
                    c.i("detect_negative", 1) != 0,
                );
                self.emit(c, Op::IsInf { pos, neg }, vec![x])?;
            }
            "Mod" | "BitShift" => {
                let (a, b) = (self.req(c, 0)?, self.req(c, 1)?);
                let f = if op == "Mod" {
                    if c.i("fmod", 0) != 0 {
                        BinaryOp::Fmod
                    } else if self.ty(a).dtype.is_float() {
                        return Err("fmod=0 is only defined for integers".into());
                    } else {
                        BinaryOp::Mod
                    }
                } else {
                    match c.s("direction", "").as_str() {
                        "LEFT" => BinaryOp::Shl,
                        "RIGHT" => BinaryOp::Shr,
                        d => return Err(format!("direction must be LEFT or RIGHT, got '{d}'")),
                    }
                };
                let out = self.out_name(c, 0);
                let v = self.binary(c, f, a, b, &out)?;
                self.set_out(c, 0, v)?;
            }
            "Mean" => {
                let ins: Vec<ValueId> = (0..c.n.input.len())
                    .map(|i| self.req(c, i))
                    .collect::<R<_>>()?;
                let mut acc = *ins.first().ok_or("expects at least one input")?;
                for (k, &v) in ins.iter().enumerate().skip(1) {
                    acc = self.binary(c, BinaryOp::Add, acc, v, &format!("{}/sum{k}", c.name))?;
                }
                let dt = self.ty(acc).dtype;
                let n = self.add_ct(
                    &format!("{}/count", c.name),
                    CT {
                        dtype: DType::F64,
                        shape: vec![],
                        v: ce::Vals::F(vec![ins.len() as f64]),
                    }
                    .cast(dt),
                )?;
                let out = self.out_name(c, 0);
                let v = self.binary(c, BinaryOp::Div, acc, n, &out)?;
                self.set_out(c, 0, v)?;
            }
            "MatMul" => {
                let (a, b) = (self.req(c, 0)?, self.req(c, 1)?);
                self.emit(c, Op::matmul(), vec![a, b])?;
            }
            "Gemm" => {
                let mut ins = vec![self.req(c, 0)?, self.req(c, 1)?];
                if let Some(b) = self.inp(c, 2)? {
                    ins.push(b);
                }
                let a = GemmAttrs {
                    alpha: c.f("alpha", 1.0),
                    beta: c.f("beta", 1.0),
                    trans_a: c.i("transA", 0) != 0,
                    trans_b: c.i("transB", 0) != 0,
                    epilogue: Vec::new(),
                };
                self.emit(c, Op::Gemm(a), ins)?;
            }
            "BatchNormalization" => {
                for i in 1..c.n.output.len() {
                    if let Some(o) = c.out(i)
                        && self.used.contains(o)
                    {
                        return Err(format!(
                            "output {i} ('{o}') is training-only and unsupported"
                        ));
                    }
                }
                if c.i("training_mode", 0) != 0 {
                    return Err("training_mode=1 is not supported".into());
                }
                if self.opset < 9 && c.i("spatial", 1) == 0 {
                    return Err("spatial=0 is not supported".into());
                }
                let ins = (0..5).map(|i| self.req(c, i)).collect::<R<Vec<_>>>()?;
                let epsilon = c.f("epsilon", 1e-5);
                let names = [self.out_name(c, 0)];
                let v = self.node(c, Op::BatchNorm { epsilon }, ins, &names)?[0];
                self.set_out(c, 0, v)?;
            }
            "Conv" => self.conv(c)?,
            "ConvTranspose" => self.conv_transpose(c)?,
            "MaxPool" | "AveragePool" => self.pool(c)?,
            "GlobalAveragePool" => {
                let x = self.req(c, 0)?;
                self.emit(c, Op::GlobalAveragePool, vec![x])?;
            }
            "Split" => {
                let x = self.req(c, 0)?;
                let sh = self.ty(x).shape.clone();
                let axis = norm_axis(c.i("axis", 0), sh.len())?;
                let dim = sh[axis];
                let given = if self.opset >= 13 {
                    self.const_in(c, 1)?.map(|t| t.as_i64())
                } else {
                    c.ints("split")
                };
                let n_out = c.n.output.len();
                let sizes = if let Some(s) = given {
                    to_usizes(&s, "split")?
                } else if self.opset >= 18 && c.attr("num_outputs").is_some() {
                    let n = usize::try_from(c.i("num_outputs", 0))
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or("num_outputs must be positive")?;
                    let chunk = dim.div_ceil(n);
                    (0..n)
                        .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
                        .collect()
                } else {
                    if n_out == 0 || !dim.is_multiple_of(n_out) {
                        return Err(format!("cannot split dim {dim} into {n_out} equal parts"));
                    }
                    vec![dim / n_out; n_out]
                };
                if sizes.len() != n_out {
                    return Err(format!("{} split sizes for {n_out} outputs", sizes.len()));
                }
                self.emit(c, Op::Split { axis, sizes }, vec![x])?;
            }
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let kind = match op {
                    "Softmax" => SoftmaxKind::Softmax,
                    "LogSoftmax" => SoftmaxKind::LogSoftmax,
                    _ => SoftmaxKind::Hardmax,
                };
                let x = self.req(c, 0)?;
                let sh = self.ty(x).shape.clone();
                let r = sh.len();
                let def = if self.opset >= 13 { -1 } else { 1 };
                let axis = norm_axis(c.i("axis", def), r)?;
                if self.opset >= 13 || axis + 1 == r {
                    self.emit(c, Op::Softmax { axis, kind }, vec![x])?;
                } else {
                    let flat = vec![sh[..axis].iter().product(), sh[axis..].iter().product()];
                    let t = self.reshape(c, x, flat, &format!("{}/reshape_in", c.name))?;
                    let names = [format!("{}/softmax", c.name)];
                    let s = self.node(c, Op::Softmax { axis: 1, kind }, vec![t], &names)?[0];
                    let out = self.out_name(c, 0);
                    let o = self.reshape(c, s, sh, &out)?;
                    self.set_out(c, 0, o)?;
                }
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd"
            | "ReduceSumSquare" | "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" => {
                let kind = reduce_kind(op).ok_or("not a reduction")?;
                let x = self.req(c, 0)?;
                let r = self.ty(x).rank();
                // axes moved from an attribute to an input in opset 13 (ReduceSum) / 18 (others)
                let axes_as_input = if op == "ReduceSum" { 13 } else { 18 };
                let axes = if self.opset >= axes_as_input {
                    self.const_in(c, 1)?.map(|t| t.as_i64())
                } else {
                    c.ints("axes")
                }
                .unwrap_or_default();
                let keepdims = c.i("keepdims", 1) != 0;
                let mut ax = if axes.is_empty() {
                    if c.i("noop_with_empty_axes", 0) != 0 {
                        self.set_out(c, 0, x)?;
                        return Ok(());
                    }
                    (0..r).collect()
                } else {
                    axes.iter()
                        .map(|&a| norm_axis(a, r))
                        .collect::<R<Vec<_>>>()?
                };
                ax.sort_unstable();
                ax.dedup();
                self.emit(
                    c,
                    Op::Reduce {
                        kind,
                        axes: ax,
                        keepdims,
                    },
                    vec![x],
                )?;
            }
            "Resize" | "Upsample" => self.resize(c)?,
            "Attention" => self.attention(c)?,
            "RotaryEmbedding" => self.rotary_embedding(c)?,
            "LinearAttention" => self.linear_attention(c)?,
            "FlexAttention" if c.n.domain() == "ai.onnx.preview" => self.flex_attention(c)?,
            "If" => self.if_op(c)?,
            _ => return Err("unsupported op".into()),
        }
        Ok(())
    }

    /// A Constant node's value: decoded bytes (tensor) or an evaluated constant.
    #[allow(clippy::type_complexity)]
    fn constant_value(
        &mut self,
        c: &Ctx,
        value_t: Option<TensorProto>,
    ) -> R<Result<(TensorType, kiln_ir::ConstData), CT>> {
        if let Some(mut t) = value_t {
            return Ok(Ok(decode_tensor(&mut t, self.base_dir, &mut self.ext)?));
        }
        if let Some(a) = c.attr("value_float") {
            return Ok(Err(CT {
                dtype: DType::F32,
                shape: vec![],
                v: ce::Vals::F(vec![a.f() as f64]),
            }));
        }
        if let Some(a) = c.attr("value_floats") {
            return Ok(Err(CT {
                dtype: DType::F32,
                shape: vec![a.floats.len()],
                v: ce::Vals::F(a.floats.iter().map(|&x| x as f64).collect()),
            }));
        }
        if let Some(a) = c.attr("value_int") {
            return Ok(Err(CT::i64s(vec![], vec![a.i()])));
        }
        if let Some(a) = c.attr("value_ints") {
            return Ok(Err(CT::i64s(vec![a.ints.len()], a.ints.clone())));
        }
        Err("only value, value_float(s) and value_int(s) constants are supported".into())
    }

    fn slice(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let sh = self.ty(x).shape.clone();
        let r = sh.len();
        let (starts, ends, axes, steps) = if self.opset < 10 {
            (
                c.ints("starts").ok_or("missing starts")?,
                c.ints("ends").ok_or("missing ends")?,
                c.ints("axes"),
                None,
            )
        } else {
            (
                self.const_in(c, 1)?.ok_or("missing starts")?.as_i64(),
                self.const_in(c, 2)?.ok_or("missing ends")?.as_i64(),
                self.const_in(c, 3)?.map(|t| t.as_i64()),
                self.const_in(c, 4)?.map(|t| t.as_i64()),
            )
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err("starts, ends, axes and steps must have the same length".into());
        }
        let mut a = SliceAttrs {
            starts: vec![0; r],
            steps: vec![1; r],
            sizes: sh.clone(),
        };
        let mut seen = vec![false; r];
        for k in 0..starts.len() {
            let d = norm_axis(axes[k], r)?;
            if std::mem::replace(&mut seen[d], true) {
                return Err(format!("axis {} repeated", axes[k]));
            }
            let (start, size) = slice_dim(sh[d], starts[k], ends[k], steps[k])?;
            a.starts[d] = start;
            a.steps[d] = steps[k];
            a.sizes[d] = size;
        }
        if a.sizes == sh && a.starts.iter().all(|&s| s == 0) && a.steps.iter().all(|&s| s == 1) {
            self.set_out(c, 0, x)?;
        } else if let Some(cx) = self.cval(x) {
            self.out_const(c, 0, ce::slice(&cx, &a))?;
        } else {
            self.emit(c, Op::Slice(a), vec![x])?;
        }
        Ok(())
    }

    /// Common conv/pool attributes: (kernel, strides, dilations, pads).
    fn window(
        &self,
        c: &Ctx,
        x: ValueId,
        kernel: Vec<usize>,
    ) -> R<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        let sp = kernel.len();
        let xs = &self.ty(x).shape;
        if xs.len() != sp + 2 {
            return Err(format!(
                "input {} must have rank {} for a {sp}-D kernel",
                self.ty(x),
                sp + 2
            ));
        }
        let get = |k: &str, n: usize, def: usize| -> R<Vec<usize>> {
            match c.ints(k) {
                Some(v) => {
                    if v.len() != n {
                        return Err(format!("{k} must have {n} entries, got {v:?}"));
                    }
                    to_usizes(&v, k)
                }
                None => Ok(vec![def; n]),
            }
        };
        let strides = get("strides", sp, 1)?;
        let dilations = get("dilations", sp, 1)?;
        if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
            return Err("kernel, strides and dilations must be positive".into());
        }
        let auto = c.s("auto_pad", "NOTSET");
        let pads = match auto.as_str() {
            "NOTSET" | "" => get("pads", 2 * sp, 0)?,
            "VALID" => vec![0; 2 * sp],
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = vec![0; 2 * sp];
                for d in 0..sp {
                    let i = xs[2 + d];
                    let out = i.div_ceil(strides[d]);
                    let ext = (kernel[d] - 1) * dilations[d] + 1;
                    let total = ((out.max(1) - 1) * strides[d] + ext).saturating_sub(i);
                    let small = total / 2;
                    let (b, e) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    p[d] = b;
                    p[sp + d] = e;
                }
                p
            }
            other => return Err(format!("unknown auto_pad '{other}'")),
        };
        Ok((strides, dilations, pads))
    }

    fn conv(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let w = self.req(c, 1)?;
        let ws = self.ty(w).shape.clone();
        if ws.len() < 3 {
            return Err(format!("weight {} must have rank >= 3", self.ty(w)));
        }
        let kernel = match c.ints("kernel_shape") {
            Some(k) => to_usizes(&k, "kernel_shape")?,
            None => ws[2..].to_vec(),
        };
        let (strides, dilations, pads) = self.window(c, x, kernel.clone())?;
        let groups = usize::try_from(c.i("group", 1)).map_err(|_| "negative group")?;
        let mut ins = vec![x, w];
        if let Some(b) = self.inp(c, 2)? {
            ins.push(b);
        }
        let a = ConvAttrs {
            kernel,
            strides,
            pads,
            dilations,
            groups,
            epilogue: Vec::new(),
            layout: kiln_ir::Layout::Plain,
        };
        self.emit(c, Op::Conv(a), ins)
    }

    fn conv_transpose(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let w = self.req(c, 1)?;
        let ws = self.ty(w).shape.clone();
        let xs = self.ty(x).shape.clone();
        if ws.len() < 3 || xs.len() != ws.len() {
            return Err(format!(
                "input {} and weight {} must have the same rank >= 3",
                self.ty(x),
                self.ty(w)
            ));
        }
        let sp = ws.len() - 2;
        let kernel = match c.ints("kernel_shape") {
            Some(k) => to_usizes(&k, "kernel_shape")?,
            None => ws[2..].to_vec(),
        };
        if kernel.len() != sp {
            return Err(format!(
                "kernel_shape {kernel:?} does not match weight rank"
            ));
        }
        let get = |k: &str, def: usize| -> R<Vec<usize>> {
            match c.ints(k) {
                Some(v) if v.len() == sp => to_usizes(&v, k),
                Some(v) => Err(format!("{k} must have {sp} entries, got {v:?}")),
                None => Ok(vec![def; sp]),
            }
        };
        let strides = get("strides", 1)?;
        let dilations = get("dilations", 1)?;
        let mut output_padding = get("output_padding", 0)?;
        if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
            return Err("kernel, strides and dilations must be positive".into());
        }
        let auto = c.s("auto_pad", "NOTSET");
        let mut out_shape = match c.ints("output_shape") {
            Some(o) => {
                let o = to_usizes(&o, "output_shape")?;
                Some(if o.len() == sp + 2 {
                    o[2..].to_vec()
                } else {
                    o
                })
            }
            None => None,
        };
        if out_shape.is_none() && matches!(auto.as_str(), "SAME_UPPER" | "SAME_LOWER") {
            out_shape = Some((0..sp).map(|d| xs[2 + d] * strides[d]).collect());
        }
        let pads = if let Some(os) = out_shape {
            if os.len() != sp {
                return Err(format!("output_shape {os:?} must have {sp} entries"));
            }
            let mut p = vec![0; 2 * sp];
            for d in 0..sp {
                let full = strides[d] * (xs[2 + d].max(1) - 1)
                    + output_padding[d]
                    + (kernel[d] - 1) * dilations[d]
                    + 1;
                if os[d] > full {
                    // a larger requested output extends the end, like output_padding
                    output_padding[d] += os[d] - full;
                    continue;
                }
                let total = full - os[d];
                let (b, e) = if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                p[d] = b;
                p[sp + d] = e;
            }
            p
        } else {
            match auto.as_str() {
                "NOTSET" | "" => match c.ints("pads") {
                    Some(v) if v.len() == 2 * sp => to_usizes(&v, "pads")?,
                    Some(v) => return Err(format!("pads must have {} entries, got {v:?}", 2 * sp)),
                    None => vec![0; 2 * sp],
                },
                "VALID" => vec![0; 2 * sp],
                other => return Err(format!("unknown auto_pad '{other}'")),
            }
        };
        let groups = usize::try_from(c.i("group", 1)).map_err(|_| "negative group")?;
        let mut ins = vec![x, w];
        if let Some(b) = self.inp(c, 2)? {
            ins.push(b);
        }
        let a = ConvTransposeAttrs {
            kernel,
            strides,
            pads,
            dilations,
            groups,
            output_padding,
        };
        if self.patch_upsample(c, &a, &ins)? {
            return Ok(());
        }
        self.emit(c, Op::ConvTranspose(a), ins)
    }

    /// A 2-D transposed convolution whose windows do not overlap (stride == kernel, no pads,
    /// dilation 1, one group, f32) is a GEMM followed by a pixel shuffle:
    /// `out[n, m, i*s0+a, j*s1+b] = sum_c w[c, m, a, b] x[n, c, i, j] (+ bias[m])`. Emitted as
    /// MatMul(W^T [m*k0*k1, c], X [n, c, h*w]) -> reshape -> transpose -> reshape, which runs on
    /// the tiled matrix kernel (the decoder upsampling of segmentation/detection heads).
    fn patch_upsample(&mut self, c: &Ctx, a: &ConvTransposeAttrs, ins: &[ValueId]) -> R<bool> {
        let xs = self.ty(ins[0]).shape.clone();
        let ws = self.ty(ins[1]).shape.clone();
        if a.kernel.len() != 2
            || a.strides != a.kernel
            || a.pads.iter().any(|&p| p != 0)
            || a.dilations.iter().any(|&d| d != 1)
            || a.output_padding.iter().any(|&p| p != 0)
            || a.groups != 1
            || self.ty(ins[0]).dtype != DType::F32
            || self.ty(ins[1]).dtype != DType::F32
        {
            return Ok(false);
        }
        let [n, ch, h, w] = xs[..] else {
            return Ok(false);
        };
        let (m, k0, k1) = (ws[1], a.kernel[0], a.kernel[1]);
        let base = c.name.clone();
        // W [c, m, k0, k1] -> W^T [m*k0*k1, c]
        let w2 = self.reshape(c, ins[1], vec![ch, m * k0 * k1], &format!("{base}/w_2d"))?;
        let wt = self.node(
            c,
            Op::Transpose { perm: vec![1, 0] },
            vec![w2],
            &[format!("{base}/w_t")],
        )?[0];
        let x3 = self.reshape(c, ins[0], vec![n, ch, h * w], &format!("{base}/x_3d"))?;
        let y = self.node(c, Op::matmul(), vec![wt, x3], &[format!("{base}/gemm")])?[0];
        let y = self.reshape(c, y, vec![n, m, k0, k1, h, w], &format!("{base}/patches"))?;
        let y = self.node(
            c,
            Op::Transpose {
                perm: vec![0, 1, 4, 2, 5, 3],
            },
            vec![y],
            &[format!("{base}/shuffle")],
        )?[0];
        let out_shape = vec![n, m, h * k0, w * k1];
        match ins.get(2) {
            Some(&b) => {
                let y = self.reshape(c, y, out_shape, &format!("{base}/image"))?;
                let b = self.reshape(c, b, vec![m, 1, 1], &format!("{base}/bias_c"))?;
                let name = self.out_name(c, 0);
                let v = self.node(c, Op::Binary(BinaryOp::Add), vec![y, b], &[name])?[0];
                self.set_out(c, 0, v)?;
            }
            None => {
                let name = self.out_name(c, 0);
                let v = self.reshape(c, y, out_shape, &name)?;
                self.set_out(c, 0, v)?;
            }
        }
        Ok(true)
    }

    fn pool(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let kernel = to_usizes(
            &c.ints("kernel_shape").ok_or("missing kernel_shape")?,
            "kernel_shape",
        )?;
        let max = c.op == "MaxPool";
        if (max && self.opset < 10 || !max && self.opset < 19) && c.attr("dilations").is_some() {
            return Err(format!(
                "dilations are not defined for opset {}",
                self.opset
            ));
        }
        let (strides, dilations, pads) = self.window(c, x, kernel.clone())?;
        let a = PoolAttrs {
            kernel,
            strides,
            pads,
            dilations,
            ceil_mode: c.i("ceil_mode", 0) != 0,
            count_include_pad: !max && c.i("count_include_pad", 0) != 0,
        };
        if max
            && let Some(o) = c.out(1)
            && self.used.contains(o)
        {
            let so = c.i("storage_order", 0) != 0;
            let op = Op::MaxPoolIndices {
                attrs: a.clone(),
                storage_order: so,
            };
            let names = [self.out_name(c, 1)];
            let v = self.node(c, op, vec![x], &names)?[0];
            self.set_out(c, 1, v)?;
        }
        let op = if max {
            Op::MaxPool(a)
        } else {
            Op::AveragePool(a)
        };
        let names = [self.out_name(c, 0)];
        let v = self.node(c, op, vec![x], &names)?[0];
        self.set_out(c, 0, v)?;
        Ok(())
    }

    /// Resize/Upsample scales or sizes (per listed axis) and the axes they apply to.
    #[allow(clippy::type_complexity)]
    fn resize_params(
        &mut self,
        c: &Ctx,
        legacy: bool,
        r: usize,
    ) -> R<(Option<Vec<f64>>, Option<Vec<i64>>, Vec<usize>)> {
        let (scales_in, sizes_in): (Option<Vec<f64>>, Option<Vec<i64>>) =
            if c.op == "Upsample" && self.opset < 9 {
                let s = c.floats("scales").ok_or("missing scales")?;
                (Some(s.iter().map(|&v| v as f64).collect()), None)
            } else if legacy {
                (
                    Some(self.const_in(c, 1)?.ok_or("missing scales")?.as_f64()),
                    None,
                )
            } else {
                let s = self.const_in(c, 2)?.filter(|t| t.numel() > 0);
                let z = self.const_in(c, 3)?.filter(|t| t.numel() > 0);
                (s.map(|t| t.as_f64()), z.map(|t| t.as_i64()))
            };
        let axes: Vec<usize> = match c.ints("axes").filter(|_| self.opset >= 18) {
            Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?,
            None => (0..r).collect(),
        };
        Ok((scales_in, sizes_in, axes))
    }

    fn resize(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let xs = self.ty(x).shape.clone();
        let r = xs.len();
        let mode_s = c.s("mode", "nearest");
        let legacy = c.op == "Upsample" || self.opset < 11;
        // cubic, antialiasing, cropping and aspect-ratio policies: separable weight tables
        let ct = c.s("coordinate_transformation_mode", "half_pixel");
        if !legacy
            && (mode_s == "cubic"
                || c.i("antialias", 0) != 0
                || matches!(ct.as_str(), "tf_crop_and_resize" | "half_pixel_symmetric")
                || c.s("keep_aspect_ratio_policy", "stretch") != "stretch")
        {
            return self.resize_general(c);
        }
        let mode = match mode_s.as_str() {
            "nearest" => ResizeMode::Nearest,
            "linear" | "bilinear" => ResizeMode::Linear,
            m => return Err(format!("mode '{m}' is not supported")),
        };
        let (coord, nearest) = if legacy {
            (CoordTransform::Asymmetric, NearestMode::Floor)
        } else {
            let ct = c.s("coordinate_transformation_mode", "half_pixel");
            let coord = CoordTransform::from_name(&ct)
                .ok_or_else(|| format!("coordinate_transformation_mode '{ct}' is not supported"))?;
            let nm = c.s("nearest_mode", "round_prefer_floor");
            let nearest = NearestMode::from_name(&nm)
                .ok_or_else(|| format!("nearest_mode '{nm}' is not supported"))?;
            (coord, nearest)
        };
        let (scales_in, sizes_in, axes) = self.resize_params(c, legacy, r)?;
        let (scale64, out_shape) = resize_output(&xs, &axes, scales_in, sizes_in.as_deref())?;
        // the direct kernel computes coordinates in f32, like onnxruntime
        let scales: Vec<f32> = (0..r)
            .map(|d| {
                if sizes_in.is_some() && xs[d] != 0 && axes.contains(&d) {
                    out_shape[d] as f32 / xs[d] as f32
                } else {
                    scale64[d] as f32
                }
            })
            .collect();
        if out_shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none_or(|n| n > (1 << 40))
        {
            return Err(format!("output shape {out_shape:?} is too large"));
        }
        let a = ResizeAttrs {
            mode,
            coord,
            nearest,
            scales,
            out_shape,
        };
        let names = [self.out_name(c, 0)];
        let v = self.node(c, Op::Resize(a), vec![x], &names)?[0];
        self.set_out(c, 0, v)?;
        Ok(())
    }
}

/// ONNX Reshape target shape: 0 copies the input dim (unless `allowzero`), -1 is inferred.
fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    let resolved = spec
        .iter()
        .enumerate()
        .map(|(i, &s)| match s {
            0 if !allowzero => input
                .get(i)
                .and_then(|&d| i64::try_from(d).ok())
                .ok_or_else(|| format!("shape {spec:?}: 0 at {i} has no input dim")),
            s => Ok(s),
        })
        .collect::<R<Vec<i64>>>()?;
    let numel = input
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("input too large")?;
    tf::reshape_target(numel, &resolved).map_err(|e| format!("reshape of {input:?}: {e}"))
}

/// Normalized (start, size) of one sliced dim, clamped per the ONNX spec.
fn slice_dim(dim: usize, start: i64, end: i64, step: i64) -> R<(usize, usize)> {
    if step == 0 {
        return Err("slice step 0".into());
    }
    let d = dim as i128;
    let (mut s, mut e, st) = (start as i128, end as i128, step as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let size = if st > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
        if e > s { (e - s + st - 1) / st } else { 0 }
    } else {
        if d == 0 {
            return Ok((0, 0));
        }
        s = s.clamp(0, d - 1);
        e = e.clamp(-1, d - 1);
        if s > e {
            (s - e + (-st) - 1) / (-st)
        } else {
            0
        }
    };
    if size == 0 {
        return Ok((0, 0));
    }
    Ok((s as usize, size as usize))
}

/// Op types (or op variants) the importer cannot translate, with their node names.
fn unsupported(nodes: &[NodeProto]) -> Unsupported {
    let mut bad = Unsupported::default();
    for (i, n) in nodes.iter().enumerate() {
        let op = n.op_type();
        let domain = n.domain();
        let label = if domain == "ai.onnx.preview" && op == "FlexAttention"
            || domain == "com.microsoft" && contrib::CONTRIB.contains(&op)
            || domain.is_empty() && contrib::DEFAULT_DOMAIN.contains(&op)
        {
            None
        } else if !(domain.is_empty() || domain == "ai.onnx") {
            Some(format!("{domain}:{op}"))
        } else if !SUPPORTED.contains(&op) {
            Some(op.to_string())
        } else {
            let attr = |k: &str| {
                n.attribute
                    .iter()
                    .find(|a| a.name() == k)
                    .map(|a| String::from_utf8_lossy(a.s()).into_owned())
            };
            match op {
                "Resize" | "Upsample" => {
                    let mode = attr("mode").unwrap_or_default();
                    let ct = attr("coordinate_transformation_mode").unwrap_or_default();
                    let known = ["tf_crop_and_resize", "half_pixel_symmetric"];
                    if !mode.is_empty()
                        && !["nearest", "linear", "bilinear", "cubic"].contains(&mode.as_str())
                    {
                        Some(format!("{op} (mode={mode})"))
                    } else if !ct.is_empty()
                        && CoordTransform::from_name(&ct).is_none()
                        && !known.contains(&ct.as_str())
                    {
                        Some(format!("{op} (coordinate_transformation_mode={ct})"))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        if let Some(l) = label {
            bad.add(l, node_label(n.name(), op, i));
        }
    }
    bad
}

pub fn import_model(
    mut model: ModelProto,
    src: Source,
    opts: &OnnxOptions,
) -> Result<Graph, OnnxError> {
    let opset = src.need(
        model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version()),
        "no opset_import for the default ONNX domain",
    )?;
    let (file, base_dir) = (src.file, src.dir);
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(src.err(format!(
            "opset {opset} is not supported (supported: {MIN_OPSET}..={MAX_OPSET})"
        )));
    }
    let mut graph = src.need(model.graph.take(), "model has no graph")?;

    let mut used: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    used.extend(graph.output.iter().map(|o| o.name().to_string()));

    unsupported(&graph.node).check(file)?;
    if !graph.sparse_initializer.is_empty() {
        return Err(src.err("sparse initializers are not supported"));
    }

    let gname = if graph.name().is_empty() {
        Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    } else {
        graph.name().to_string()
    };
    let fixes = opts.clone();
    let mut imp = Imp {
        opset,
        b: GraphBuilder::new(file, &gname, fixes),
        ext: ExternalFiles::default(),
        base_dir,
        used,
        cache: HashMap::new(),
    };

    // Initializers.
    let mut init_names = HashSet::new();
    for t in graph.initializer.iter_mut() {
        let tname = t.name().to_string();
        let ierr = |e: String| src.err(format!("initializer '{tname}': {e}"));
        let (ty, data) = decode_tensor(t, base_dir, &mut imp.ext).map_err(ierr)?;
        let v = imp.b.add_const(&tname, ty, data).map_err(ierr)?;
        imp.b.bind(&tname, v).map_err(ierr)?;
        init_names.insert(tname);
    }

    // Graph inputs (an initializer listed as an input too, as IR < 4 requires, is a constant).
    imp.b.check_fixes(
        graph
            .input
            .iter()
            .map(|i| i.name())
            .filter(|n| !init_names.contains(*n)),
    )?;
    for vi in &graph.input {
        let iname = vi.name().to_string();
        if init_names.contains(&iname) {
            continue;
        }
        let Some(type_proto::Value::TensorType(tt)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(src.err(format!("input '{iname}' is not a tensor")));
        };
        let dtype = dtype_from_onnx(tt.elem_type())
            .map_err(|e| src.err(format!("input '{iname}': {e}")))?;
        let dims: Option<Vec<Dim>> = tt.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as usize),
                    Some(dimension::Value::DimParam(p)) => Dim::Dynamic(format!("'{p}'")),
                    Some(dimension::Value::DimValue(v)) => Dim::Dynamic(format!("{v}")),
                    None => Dim::Dynamic("unknown".into()),
                })
                .collect()
        });
        let v = imp.b.input(&iname, dtype, dims.as_deref())?;
        imp.b
            .bind(&iname, v)
            .map_err(|e| src.err(format!("input '{iname}': {e}")))?;
    }
    // Reserve all node output names so generated names never take them; each is released
    // when its node is imported.
    for n in &graph.node {
        for o in &n.output {
            if !o.is_empty() && !imp.b.is_bound(o) {
                imp.b.reserve(o);
            }
        }
    }
    let nodes = std::mem::take(&mut graph.node);
    for (i, mut n) in nodes.into_iter().enumerate() {
        for o in &n.output {
            if !o.is_empty() && !imp.b.is_bound(o) {
                imp.b.release(o);
            }
        }
        imp.import_node(&mut n, i)?;
    }

    for o in &graph.output {
        let v = *imp.b.lookup(o.name()).ok_or_else(|| {
            src.err(format!(
                "graph output '{}' is not produced by any node, initializer or input",
                o.name()
            ))
        })?;
        imp.b.output(v, Some(o.name()))?;
    }
    imp.b.finish()
}

/// Resize output sizes and per-dim scale factors (f64) from `scales` or `sizes` given for
/// `axes`; the other dims keep scale 1. A scale must be positive and finite and the output
/// size sane.
#[allow(clippy::type_complexity)]
fn resize_output(
    xs: &[usize],
    axes: &[usize],
    scales_in: Option<Vec<f64>>,
    sizes_in: Option<&[i64]>,
) -> R<(Vec<f64>, Vec<usize>)> {
    let mut scale = vec![1f64; xs.len()];
    let mut out = xs.to_vec();
    match (scales_in, sizes_in) {
        (Some(_), Some(_)) => return Err("only one of scales and sizes may be given".into()),
        (None, None) => return Err("one of scales and sizes is required".into()),
        (Some(s), None) => {
            if s.len() != axes.len() {
                return Err(format!("{} scales for {} axes", s.len(), axes.len()));
            }
            for (k, &d) in axes.iter().enumerate() {
                let f = s[k] as f32 as f64;
                if !(f > 0.0 && f.is_finite()) || xs[d] as f64 * f > (1u64 << 40) as f64 {
                    return Err(format!("invalid scale {f}"));
                }
                scale[d] = f;
                out[d] = (f * xs[d] as f64).floor() as usize;
            }
        }
        (None, Some(z)) => {
            if z.len() != axes.len() {
                return Err(format!("{} sizes for {} axes", z.len(), axes.len()));
            }
            let z = to_usizes(z, "sizes")?;
            for (k, &d) in axes.iter().enumerate() {
                out[d] = z[k];
                scale[d] = if xs[d] == 0 {
                    1.0
                } else {
                    z[k] as f64 / xs[d] as f64
                };
            }
        }
    }
    if out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none_or(|n| n > (1 << 40))
    {
        return Err(format!("output shape {out:?} is too large"));
    }
    Ok((scale, out))
}
