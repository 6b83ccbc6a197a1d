//! The `com.microsoft` contrib ops that ONNX Runtime's transformer optimizer and quantizer
//! write into models people ship, each expanded into standard ONNX nodes that the importer then
//! translates with the standard ops' exact semantics (ORT's contrib-op documentation defines
//! them as such compositions; the tests check the expansions against ORT itself).
//!
//! An expansion sees the node, the types of its inputs and the values of its constant inputs
//! (quantized weights are dequantized at compile time). Intermediate values are named
//! `<node>/<what>`; errors name the contrib node.

use kiln_ir::{ConstData, DType, TensorType};

use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::{AttributeProto, NodeProto, TensorProto};

type R<T> = Result<T, String>;

/// What each contrib op becomes (for `docs/ops.md`).
pub const EXPANSIONS: &[(&str, &str)] = &[
    (
        "FusedConv",
        "Conv (+ Add of input Z) + activation (Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid)",
    ),
    ("FusedGemm", "Gemm + activation"),
    (
        "FusedMatMul",
        "Transpose (transA/transB) + MatMul (* alpha); transBatchA/B unsupported",
    ),
    ("Gelu", "Gelu"),
    ("FastGelu", "Add bias + Gelu (tanh)"),
    ("BiasGelu", "Add + Gelu"),
    ("QuickGelu", "x * sigmoid(alpha x)"),
    ("BiasAdd", "Add + Add"),
    (
        "SkipLayerNormalization",
        "Add (input + skip + bias) + LayerNormalization; mean, inv_std_var and the sum as outputs",
    ),
    (
        "SkipSimplifiedLayerNormalization",
        "Add + RMSNormalization; the sum as output",
    ),
    (
        "SimplifiedLayerNormalization",
        "RMSNormalization (default domain)",
    ),
    (
        "LayerNormalization",
        "LayerNormalization (the contrib form before opset 17)",
    ),
    (
        "Attention",
        "MatMul + bias, Split into Q/K/V, Attention; 2-D key mask or key lengths as an additive mask_filter_value, unidirectional as causal; no past state",
    ),
    (
        "MultiHeadAttention",
        "Q/K/V bias adds + Attention; key padding mask and attention bias; no past state",
    ),
    (
        "RotaryEmbedding",
        "RotaryEmbedding (position ids, or an offset expanded to positions)",
    ),
    (
        "GroupNorm",
        "NHWC -> NCHW, GroupNormalization, Swish activation, back to NHWC",
    ),
    ("NhwcConv", "Transpose + Conv + Transpose"),
    (
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLinear + MatMulInteger + Cast + scale (+ bias)",
    ),
    (
        "MatMulNBits",
        "2/4/8-bit block-quantized weights dequantized at compile time + MatMul (+ bias)",
    ),
    ("QLinearAdd", "DequantizeLinear x2 + Add + QuantizeLinear"),
    ("QLinearMul", "DequantizeLinear x2 + Mul + QuantizeLinear"),
    (
        "QLinearConcat",
        "DequantizeLinear per input + Concat + QuantizeLinear",
    ),
    (
        "QLinearSigmoid",
        "DequantizeLinear + Sigmoid + QuantizeLinear",
    ),
    (
        "QLinearLeakyRelu",
        "DequantizeLinear + LeakyRelu + QuantizeLinear",
    ),
    (
        "QLinearGlobalAveragePool",
        "DequantizeLinear + GlobalAveragePool (or mean over H,W when channels_last) + QuantizeLinear",
    ),
];

/// Contrib ops (domain `com.microsoft`) with an expansion.
pub const CONTRIB: &[&str] = &[
    "FusedConv",
    "FusedGemm",
    "FusedMatMul",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "QuickGelu",
    "BiasAdd",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
    "LayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "GroupNorm",
    "NhwcConv",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearGlobalAveragePool",
];

/// Contrib ops ORT registers in the default domain (before ONNX had them).
pub const DEFAULT_DOMAIN: &[&str] = &["SimplifiedLayerNormalization"];

/// What an expansion may ask about the node's inputs.
pub trait Inputs {
    /// The type of value `name` (an input of the node).
    fn ty(&self, name: &str) -> Option<TensorType>;
    /// The bytes of value `name` when it is a constant.
    fn data(&self, name: &str) -> Option<ConstData>;
}

/// Builds the standard nodes replacing one contrib node.
struct Ex<'n> {
    n: &'n NodeProto,
    base: String,
    nodes: Vec<NodeProto>,
}

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}
fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}
fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}
fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

impl<'n> Ex<'n> {
    fn attr(&self, k: &str) -> Option<&'n AttributeProto> {
        self.n.attribute.iter().find(|a| a.name() == k)
    }
    fn i(&self, k: &str, def: i64) -> i64 {
        self.attr(k).map_or(def, |a| a.i())
    }
    fn f(&self, k: &str, def: f32) -> f32 {
        self.attr(k).map_or(def, |a| a.f())
    }
    fn s(&self, k: &str, def: &str) -> String {
        self.attr(k).map_or(def.to_string(), |a| {
            String::from_utf8_lossy(a.s()).into_owned()
        })
    }
    fn floats(&self, k: &str) -> Vec<f32> {
        self.attr(k).map_or(vec![], |a| a.floats.clone())
    }
    /// Input `i`'s name (`""` when absent).
    fn input(&self, i: usize) -> &'n str {
        self.n.input.get(i).map_or("", |s| s.as_str())
    }
    fn req(&self, i: usize) -> R<&'n str> {
        match self.input(i) {
            "" => Err(format!("missing required input {i}")),
            s => Ok(s),
        }
    }
    /// Output `i`'s name (`""` when not requested).
    fn output(&self, i: usize) -> &'n str {
        self.n.output.get(i).map_or("", |s| s.as_str())
    }
    fn tmp(&self, what: &str) -> String {
        format!("{}/{what}", self.base)
    }
    /// Append a standard node; returns its first output.
    fn node(
        &mut self,
        op: &str,
        ins: &[&str],
        outs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            name: Some(format!("{}/{op}_{}", self.base, self.nodes.len())),
            op_type: Some(op.into()),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        outs[0].to_string()
    }
    /// A one-output node whose output is a new intermediate named `<node>/<what>`, or the
    /// contrib node's output `out` when given.
    fn op(&mut self, op: &str, ins: &[&str], what: &str, attrs: Vec<AttributeProto>) -> String {
        let o = self.tmp(what);
        self.node(op, ins, &[&o], attrs)
    }
    /// A constant tensor node.
    fn constant(&mut self, what: &str, dtype: DType, dims: &[usize], bytes: Vec<u8>) -> String {
        let t = TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype.abi_code()),
            raw_data: Some(bytes.into()),
            ..Default::default()
        };
        let o = self.tmp(what);
        let a = AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(t),
            ..Default::default()
        };
        self.node("Constant", &[], &[&o], vec![a])
    }
    fn scalar(&mut self, what: &str, dtype: DType, v: f64) -> R<String> {
        let bytes = match dtype {
            DType::F32 => (v as f32).to_le_bytes().to_vec(),
            DType::F64 => v.to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
            d => return Err(format!("a {d} scalar is not supported")),
        };
        Ok(self.constant(what, dtype, &[], bytes))
    }
    fn ints(&mut self, what: &str, v: &[i64]) -> String {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(what, DType::I64, &[v.len()], bytes)
    }
    /// The contrib node's output `i` if requested, else an intermediate `<node>/<what>`.
    fn out_or(&self, i: usize, what: &str) -> String {
        match self.output(i) {
            "" => self.tmp(what),
            s => s.to_string(),
        }
    }
}

fn ty(inp: &dyn Inputs, name: &str) -> R<TensorType> {
    inp.ty(name)
        .ok_or_else(|| format!("the type of input '{name}' is unknown"))
}

/// Transpose of the last two axes for rank `r`.
fn swap_last2(r: usize) -> Vec<i64> {
    let mut p: Vec<i64> = (0..r as i64).collect();
    if r >= 2 {
        p.swap(r - 2, r - 1);
    }
    p
}

/// Expand contrib node `n` (reported as `name`) into standard ONNX nodes.
pub fn expand(n: &NodeProto, name: &str, inp: &dyn Inputs) -> R<Vec<NodeProto>> {
    let mut e = Ex {
        n,
        base: name.to_string(),
        nodes: vec![],
    };
    let op = n.op_type();
    match op {
        "FusedConv" | "FusedGemm" => {
            let (base_op, nin) = if op == "FusedConv" {
                ("Conv", 3)
            } else {
                ("Gemm", 3)
            };
            let keep: Vec<AttributeProto> = n
                .attribute
                .iter()
                .filter(|a| !a.name().starts_with("activation"))
                .cloned()
                .collect();
            let ins: Vec<&str> = (0..nin.min(n.input.len())).map(|i| e.input(i)).collect();
            let mut y = e.op(base_op, &ins, "product", keep);
            if op == "FusedConv" && !e.input(3).is_empty() {
                let z = e.input(3);
                y = e.op("Add", &[&y, z], "sum", vec![]);
            }
            activation(&mut e, &y, 0)?;
        }
        "FusedMatMul" => {
            if e.i("transBatchA", 0) != 0 || e.i("transBatchB", 0) != 0 {
                return Err("transBatchA/transBatchB are not supported".into());
            }
            let (a, b) = (e.req(0)?, e.req(1)?);
            let mut ops = [a.to_string(), b.to_string()];
            for (k, (t, v)) in [("transA", a), ("transB", b)].iter().enumerate() {
                if e.i(t, 0) != 0 {
                    let r = ty(inp, v)?.rank();
                    ops[k] = e.op(
                        "Transpose",
                        &[v],
                        t,
                        vec![attr_ints("perm", &swap_last2(r))],
                    );
                }
            }
            let alpha = e.f("alpha", 1.0);
            let y = e.output(0);
            if alpha == 1.0 {
                e.node("MatMul", &[&ops[0], &ops[1]], &[y], vec![]);
            } else {
                let p = e.op("MatMul", &[&ops[0], &ops[1]], "product", vec![]);
                let dt = ty(inp, a)?.dtype;
                let s = e.scalar("alpha", dt, alpha as f64)?;
                e.node("Mul", &[&p, &s], &[y], vec![]);
            }
        }
        "Gelu" => {
            e.node("Gelu", &[e.req(0)?], &[e.output(0)], vec![]);
        }
        "FastGelu" | "BiasGelu" => {
            let mut x = e.req(0)?.to_string();
            if !e.input(1).is_empty() {
                x = e.op("Add", &[&x, e.input(1)], "biased", vec![]);
            }
            let approx = if op == "FastGelu" { "tanh" } else { "none" };
            e.node(
                "Gelu",
                &[&x],
                &[e.output(0)],
                vec![attr_s("approximate", approx)],
            );
        }
        "QuickGelu" => {
            let alpha = e.f("alpha", 1.702);
            e.node(
                "Swish",
                &[e.req(0)?],
                &[e.output(0)],
                vec![attr_f("alpha", alpha)],
            );
        }
        "BiasAdd" => {
            let s = e.op("Add", &[e.req(0)?, e.req(1)?], "biased", vec![]);
            e.node("Add", &[&s, e.req(2)?], &[e.output(0)], vec![]);
        }
        "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization" => {
            let rms = op == "SkipSimplifiedLayerNormalization";
            let (bias_at, beta) = if rms { (3, "") } else { (4, e.input(3)) };
            // input + skip (+ bias), in ORT's order
            let sum_out = e.out_or(3, "sum");
            let bias = e.input(bias_at);
            if bias.is_empty() {
                e.node("Add", &[e.req(0)?, e.req(1)?], &[&sum_out], vec![]);
            } else {
                let s = e.op("Add", &[e.req(0)?, e.req(1)?], "skip_sum", vec![]);
                e.node("Add", &[&s, bias], &[&sum_out], vec![]);
            }
            let eps = attr_f("epsilon", e.f("epsilon", 1e-12));
            let gamma = e.req(2)?;
            if rms {
                e.node(
                    "RMSNormalization",
                    &[&sum_out, gamma],
                    &[e.output(0)],
                    vec![attr_i("axis", -1), eps],
                );
                if !e.output(2).is_empty() {
                    return Err(
                        "output inv_std_var of SkipSimplifiedLayerNormalization is not supported"
                            .into(),
                    );
                }
            } else {
                let outs = [e.output(0), e.output(1), e.output(2)];
                let n_out = outs
                    .iter()
                    .rposition(|o| !o.is_empty())
                    .map_or(1, |p| p + 1);
                let ins: Vec<&str> = if beta.is_empty() {
                    vec![&sum_out, gamma]
                } else {
                    vec![&sum_out, gamma, beta]
                };
                e.node(
                    "LayerNormalization",
                    &ins,
                    &outs[..n_out],
                    vec![attr_i("axis", -1), eps],
                );
            }
        }
        "SimplifiedLayerNormalization" => {
            if !e.output(1).is_empty() {
                return Err("output inv_std_var is not supported".into());
            }
            e.node(
                "RMSNormalization",
                &[e.req(0)?, e.req(1)?],
                &[e.output(0)],
                vec![
                    attr_i("axis", e.i("axis", -1)),
                    attr_f("epsilon", e.f("epsilon", 1e-5)),
                ],
            );
        }
        "LayerNormalization" => {
            let keep: Vec<AttributeProto> = n.attribute.clone();
            let ins: Vec<&str> = (0..n.input.len()).map(|i| e.input(i)).collect();
            let outs: Vec<&str> = (0..n.output.len()).map(|i| e.output(i)).collect();
            e.node("LayerNormalization", &ins, &outs, keep);
        }
        "Attention" => attention(&mut e, inp)?,
        "MultiHeadAttention" => multi_head_attention(&mut e, inp)?,
        "RotaryEmbedding" => rotary(&mut e, inp)?,
        "GroupNorm" => {
            let x = e.req(0)?;
            let xt = ty(inp, x)?;
            let nhwc = e.i("channels_last", 1) != 0;
            let r = xt.rank();
            let (mut perm_in, mut perm_out): (Vec<i64>, Vec<i64>) =
                (vec![0, r as i64 - 1], vec![0]);
            perm_in.extend(1..r as i64 - 1);
            perm_out.extend(2..r as i64);
            perm_out.push(1);
            let xin = if nhwc {
                e.op("Transpose", &[x], "nchw", vec![attr_ints("perm", &perm_in)])
            } else {
                x.to_string()
            };
            let groups = e.i("groups", 0);
            let y = e.op(
                "GroupNormalization",
                &[&xin, e.req(1)?, e.req(2)?],
                "normed",
                vec![
                    attr_i("num_groups", groups),
                    attr_f("epsilon", e.f("epsilon", 1e-5)),
                ],
            );
            let y = match e.i("activation", 0) {
                0 => y,
                1 => e.op("Swish", &[&y], "swish", vec![attr_f("alpha", 1.0)]),
                a => return Err(format!("activation {a} is not supported")),
            };
            if nhwc {
                e.node(
                    "Transpose",
                    &[&y],
                    &[e.output(0)],
                    vec![attr_ints("perm", &perm_out)],
                );
            } else {
                e.node("Identity", &[&y], &[e.output(0)], vec![]);
            }
        }
        "NhwcConv" => {
            let x = e.req(0)?;
            let r = ty(inp, x)?.rank();
            let mut perm_in: Vec<i64> = vec![0, r as i64 - 1];
            perm_in.extend(1..r as i64 - 1);
            let mut perm_out: Vec<i64> = vec![0];
            perm_out.extend(2..r as i64);
            perm_out.push(1);
            let xin = e.op("Transpose", &[x], "nchw", vec![attr_ints("perm", &perm_in)]);
            let mut ins: Vec<&str> = vec![&xin];
            ins.extend((1..n.input.len()).map(|i| e.input(i)));
            let ins: Vec<String> = ins.iter().map(|s| s.to_string()).collect();
            let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
            let y = e.op("Conv", &ins, "conv", n.attribute.clone());
            e.node(
                "Transpose",
                &[&y],
                &[e.output(0)],
                vec![attr_ints("perm", &perm_out)],
            );
        }
        "DynamicQuantizeMatMul" => {
            let (a, b, bs) = (e.req(0)?, e.req(1)?, e.req(2)?);
            let q = e.tmp("a_q");
            let qs = e.tmp("a_scale");
            let qz = e.tmp("a_zero_point");
            e.node("DynamicQuantizeLinear", &[a], &[&q, &qs, &qz], vec![]);
            let bz = e.input(3);
            let y = e.op("MatMulInteger", &[&q, b, &qz, bz], "product_i32", vec![]);
            let dt = ty(inp, a)?.dtype;
            let yf = e.op(
                "Cast",
                &[&y],
                "product",
                vec![attr_i("to", dt.abi_code() as i64)],
            );
            let m = e.op("Mul", &[&qs, bs], "multiplier", vec![]);
            let bias = e.input(4);
            if bias.is_empty() {
                e.node("Mul", &[&yf, &m], &[e.output(0)], vec![]);
            } else {
                let s = e.op("Mul", &[&yf, &m], "scaled", vec![]);
                e.node("Add", &[&s, bias], &[e.output(0)], vec![]);
            }
        }
        "MatMulNBits" => matmul_nbits(&mut e, inp)?,
        "QLinearAdd" | "QLinearMul" => {
            let a = dq(&mut e, 0, 1, 2, "a")?;
            let b = dq(&mut e, 3, 4, 5, "b")?;
            let f = if op == "QLinearAdd" { "Add" } else { "Mul" };
            let y = e.op(f, &[&a, &b], "float", vec![]);
            q(&mut e, &y, 6, 7)?;
        }
        "QLinearSigmoid" | "QLinearLeakyRelu" => {
            let x = dq(&mut e, 0, 1, 2, "x")?;
            let y = if op == "QLinearSigmoid" {
                e.op("Sigmoid", &[&x], "float", vec![])
            } else {
                let alpha = e.f("alpha", 0.01);
                e.op("LeakyRelu", &[&x], "float", vec![attr_f("alpha", alpha)])
            };
            q(&mut e, &y, 3, 4)?;
        }
        "QLinearGlobalAveragePool" => {
            let x = dq(&mut e, 0, 1, 2, "x")?;
            let r = ty(inp, e.req(0)?)?.rank();
            let y = if e.i("channels_last", 0) != 0 {
                let axes: Vec<i64> = (1..r as i64 - 1).collect();
                let ax = e.ints("axes", &axes);
                e.op(
                    "ReduceMean",
                    &[&x, &ax],
                    "float",
                    vec![attr_i("keepdims", 1)],
                )
            } else {
                e.op("GlobalAveragePool", &[&x], "float", vec![])
            };
            q(&mut e, &y, 3, 4)?;
        }
        "QLinearConcat" => {
            // Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
            let parts = n.input.len().saturating_sub(2);
            if parts == 0 || !parts.is_multiple_of(3) {
                return Err(format!("expects 2 + 3k inputs, got {}", n.input.len()));
            }
            let mut xs = vec![];
            for k in 0..parts / 3 {
                let i = 2 + 3 * k;
                xs.push(dq(&mut e, i, i + 1, i + 2, &format!("x{k}"))?);
            }
            let xs: Vec<&str> = xs.iter().map(|s| s.as_str()).collect();
            let y = e.op("Concat", &xs, "float", vec![attr_i("axis", e.i("axis", 0))]);
            q(&mut e, &y, 0, 1)?;
        }
        _ => return Err(format!("contrib op {op} is not supported")),
    }
    Ok(e.nodes)
}

/// DequantizeLinear of inputs (x, scale, zero point) at positions `x`, `s`, `z`.
fn dq(e: &mut Ex, x: usize, s: usize, z: usize, what: &str) -> R<String> {
    let ins = [e.req(x)?, e.req(s)?, e.input(z)];
    Ok(e.op("DequantizeLinear", &ins, &format!("{what}_float"), vec![]))
}

/// QuantizeLinear of `y` with (scale, zero point) inputs `s`, `z`, into output 0.
fn q(e: &mut Ex, y: &str, s: usize, z: usize) -> R<()> {
    let ins = [y, e.req(s)?, e.input(z)];
    e.node("QuantizeLinear", &ins, &[e.output(0)], vec![]);
    Ok(())
}

/// The fused activation of FusedConv/FusedGemm (`activation`, `activation_params` or
/// `activation_alpha`/`activation_beta`) applied to `y`, into output `out`.
fn activation(e: &mut Ex, y: &str, out: usize) -> R<()> {
    let act = e.s("activation", "");
    let mut params = e.floats("activation_params");
    if params.is_empty()
        && let Some(a) = e.attr("activation_alpha")
    {
        params.push(a.f());
        if let Some(b) = e.attr("activation_beta") {
            params.push(b.f());
        }
    }
    let p = |k: usize, def: f32| params.get(k).copied().unwrap_or(def);
    let o = e.output(out);
    match act.as_str() {
        "" | "Identity" => {
            e.node("Identity", &[y], &[o], vec![]);
        }
        "Relu" | "Tanh" | "Sigmoid" => {
            e.node(&act, &[y], &[o], vec![]);
        }
        "LeakyRelu" => {
            e.node("LeakyRelu", &[y], &[o], vec![attr_f("alpha", p(0, 0.01))]);
        }
        "HardSigmoid" => {
            e.node(
                "HardSigmoid",
                &[y],
                &[o],
                vec![attr_f("alpha", p(0, 0.2)), attr_f("beta", p(1, 0.5))],
            );
        }
        "Clip" => {
            let lo = e.scalar("clip_min", DType::F32, p(0, f32::MIN) as f64)?;
            let hi = e.scalar("clip_max", DType::F32, p(1, f32::MAX) as f64)?;
            e.node("Clip", &[y, &lo, &hi], &[o], vec![]);
        }
        a => return Err(format!("fused activation '{a}' is not supported")),
    }
    Ok(())
}

/// `Attention`: packed QKV projection of `input` [B, S, Hin] by `weights` [Hin, Dq+Dk+Dv]
/// (+ `bias`), split, ONNX Attention over `num_heads` heads (3-D form), with ORT's key mask
/// (`mask_index` [B, S_kv] of 1/0, or [B] valid lengths) as an additive `mask_filter_value`.
fn attention(e: &mut Ex, inp: &dyn Inputs) -> R<()> {
    let x = e.req(0)?;
    let w = e.req(1)?;
    let xt = ty(inp, x)?;
    let wt = ty(inp, w)?;
    if xt.rank() != 3 || wt.rank() != 2 {
        return Err(format!("input {xt} must be 3-D and weights {wt} 2-D"));
    }
    for i in 4..n_inputs(e) {
        if !e.input(i).is_empty() {
            return Err(format!(
                "input {i} (past state / attention bias) is not supported"
            ));
        }
    }
    if e.i("do_rotary", 0) != 0 || e.i("past_present_share_buffer", 0) != 0 {
        return Err("do_rotary / past_present_share_buffer are not supported".into());
    }
    let heads = e.i("num_heads", 0);
    if heads <= 0 {
        return Err("num_heads must be positive".into());
    }
    let total = wt.shape[1] as i64;
    let sizes: Vec<i64> = match e.attr("qkv_hidden_sizes") {
        Some(a) if !a.ints.is_empty() => a.ints.clone(),
        _ => vec![total / 3; 3],
    };
    if sizes.len() != 3 || sizes.iter().sum::<i64>() != total {
        return Err(format!(
            "qkv_hidden_sizes {sizes:?} do not add up to {total}"
        ));
    }
    let proj = e.op("MatMul", &[x, w], "qkv", vec![]);
    let proj = match e.input(2) {
        "" => proj,
        b => e.op("Add", &[&proj, b], "qkv_biased", vec![]),
    };
    let split = e.ints("qkv_sizes", &sizes);
    let (qn, kn, vn) = (e.tmp("q"), e.tmp("k"), e.tmp("v"));
    e.node(
        "Split",
        &[&proj, &split],
        &[&qn, &kn, &vn],
        vec![attr_i("axis", 2)],
    );
    let mask = key_mask(e, inp, 3, xt.shape[0], xt.shape[1], xt.dtype)?;
    let mut attrs = vec![attr_i("q_num_heads", heads), attr_i("kv_num_heads", heads)];
    if let Some(s) = e.attr("scale").map(|a| a.f()).filter(|&s| s != 0.0) {
        attrs.push(attr_f("scale", s));
    }
    if e.i("unidirectional", 0) != 0 {
        attrs.push(attr_i("is_causal", 1));
    }
    let mut ins = vec![qn.as_str(), kn.as_str(), vn.as_str()];
    if let Some(m) = &mask {
        ins.push(m);
    }
    if !e.output(1).is_empty() {
        return Err("the present state output is not supported".into());
    }
    e.node("Attention", &ins, &[e.output(0)], attrs);
    Ok(())
}

fn n_inputs(e: &Ex) -> usize {
    e.n.input.len()
}

/// ORT's key mask at input `i` (`[B, S_kv]` 1 = attend, or `[B]` valid lengths) as an additive
/// float mask `[B, 1, 1, S_kv]` (`mask_filter_value` where masked).
fn key_mask(
    e: &mut Ex,
    inp: &dyn Inputs,
    i: usize,
    batch: usize,
    kv_len: usize,
    dt: DType,
) -> R<Option<String>> {
    let m = e.input(i);
    if m.is_empty() {
        return Ok(None);
    }
    let mt = ty(inp, m)?;
    let filter = e.f("mask_filter_value", -10000.0);
    let keep = match mt.shape[..] {
        [b, s] if b == batch && s == kv_len => e.op(
            "Cast",
            &[m],
            "mask_f",
            vec![attr_i("to", dt.abi_code() as i64)],
        ),
        [b] if b == batch => {
            // valid lengths: position < length
            let pos: Vec<i64> = (0..kv_len as i64).collect();
            let p = e.ints("positions", &pos);
            let len_axes = e.ints("len_axes", &[1]);
            let l = e.op("Unsqueeze", &[m, &len_axes], "lengths", vec![]);
            let l = e.op(
                "Cast",
                &[&l],
                "lengths_i64",
                vec![attr_i("to", DType::I64.abi_code() as i64)],
            );
            let k = e.op("Less", &[&p, &l], "valid", vec![]);
            e.op(
                "Cast",
                &[&k],
                "mask_f",
                vec![attr_i("to", dt.abi_code() as i64)],
            )
        }
        _ => return Err(format!("mask {mt} is not supported ([B, S] or [B])")),
    };
    // (1 - keep) * filter
    let one = e.scalar("one", dt, 1.0)?;
    let inv = e.op("Sub", &[&one, &keep], "masked", vec![]);
    let fv = e.scalar("filter", dt, filter as f64)?;
    let add = e.op("Mul", &[&inv, &fv], "mask_add", vec![]);
    let axes = e.ints("mask_axes", &[1, 2]);
    Ok(Some(e.op("Unsqueeze", &[&add, &axes], "mask_bias", vec![])))
}

/// `MultiHeadAttention` with separate query/key/value [B, S, D] (+ packed `bias`), a key
/// padding mask and an additive attention bias.
fn multi_head_attention(e: &mut Ex, inp: &dyn Inputs) -> R<()> {
    let (q, k, v) = (e.req(0)?, e.req(1)?, e.req(2)?);
    let qt = ty(inp, q)?;
    let kt = ty(inp, k)?;
    if qt.rank() != 3 || kt.rank() != 3 {
        return Err(format!("query {qt} and key {kt} must be 3-D [B, S, D]"));
    }
    for i in 6..n_inputs(e) {
        if !e.input(i).is_empty() {
            return Err(format!("input {i} (past state) is not supported"));
        }
    }
    let heads = e.i("num_heads", 0);
    if heads <= 0 {
        return Err("num_heads must be positive".into());
    }
    let (mut q, mut k, mut v) = (q.to_string(), k.to_string(), v.to_string());
    let bias = e.input(3);
    if !bias.is_empty() {
        let vt = ty(inp, &v)?;
        let sizes = [qt.shape[2] as i64, kt.shape[2] as i64, vt.shape[2] as i64];
        let split = e.ints("bias_sizes", &sizes);
        let (bq, bk, bv) = (e.tmp("bias_q"), e.tmp("bias_k"), e.tmp("bias_v"));
        e.node(
            "Split",
            &[bias, &split],
            &[&bq, &bk, &bv],
            vec![attr_i("axis", 0)],
        );
        q = e.op("Add", &[&q, &bq], "q_biased", vec![]);
        k = e.op("Add", &[&k, &bk], "k_biased", vec![]);
        v = e.op("Add", &[&v, &bv], "v_biased", vec![]);
    }
    let mut mask = key_mask(e, inp, 4, qt.shape[0], kt.shape[1], qt.dtype)?;
    let ab = e.input(5);
    if !ab.is_empty() {
        mask = Some(match mask {
            Some(m) => e.op("Add", &[&m, ab], "bias_mask", vec![]),
            None => ab.to_string(),
        });
    }
    let mut attrs = vec![attr_i("q_num_heads", heads), attr_i("kv_num_heads", heads)];
    if let Some(s) = e.attr("scale").map(|a| a.f()).filter(|&s| s != 0.0) {
        attrs.push(attr_f("scale", s));
    }
    if e.i("unidirectional", 0) != 0 {
        attrs.push(attr_i("is_causal", 1));
    }
    let mut ins = vec![q.as_str(), k.as_str(), v.as_str()];
    if let Some(m) = &mask {
        ins.push(m);
    }
    e.node("Attention", &ins, &[e.output(0)], attrs);
    Ok(())
}

/// `RotaryEmbedding` (contrib: input, position_ids, cos_cache, sin_cache; `position_ids` may be
/// a single offset) as the ONNX op (input, cos_cache, sin_cache, position_ids).
fn rotary(e: &mut Ex, inp: &dyn Inputs) -> R<()> {
    let (x, pos, cos, sin) = (e.req(0)?, e.req(1)?, e.req(2)?, e.req(3)?);
    if e.i("is_packed_batching", 0) != 0 {
        return Err("is_packed_batching is not supported".into());
    }
    if e.f("scale", 1.0) != 1.0 {
        return Err("scale other than 1 is not supported".into());
    }
    let xt = ty(inp, x)?;
    let pt = ty(inp, pos)?;
    let (b, s) = match xt.rank() {
        3 => (xt.shape[0], xt.shape[1]),
        4 => (xt.shape[0], xt.shape[2]),
        _ => return Err(format!("input {xt} must be 3-D or 4-D")),
    };
    let pos = if pt.numel() == 1 && (b, s) != (1, 1) || pt.rank() == 1 && pt.numel() == 1 {
        // an offset: positions offset + [0, S), the same for every batch row
        let r: Vec<i64> = (0..s as i64).collect();
        let range = e.ints("range", &r);
        let off = e.op(
            "Cast",
            &[pos],
            "offset",
            vec![attr_i("to", DType::I64.abi_code() as i64)],
        );
        let p = e.op("Add", &[&range, &off], "positions", vec![]);
        let shape = e.ints("pos_shape", &[1, s as i64]);
        let p = e.op("Reshape", &[&p, &shape], "positions_row", vec![]);
        let shape = e.ints("pos_batch", &[b as i64, s as i64]);
        e.op("Expand", &[&p, &shape], "positions_b", vec![])
    } else {
        pos.to_string()
    };
    let mut attrs = vec![attr_i("interleaved", e.i("interleaved", 0))];
    if xt.rank() == 3 {
        attrs.push(attr_i("num_heads", e.i("num_heads", 0)));
    }
    let rd = e.i("rotary_embedding_dim", 0);
    if rd != 0 {
        attrs.push(attr_i("rotary_embedding_dim", rd));
    }
    e.node(
        "RotaryEmbedding",
        &[x, cos, sin, &pos],
        &[e.output(0)],
        attrs,
    );
    Ok(())
}

/// `MatMulNBits`: A [.., K] times B dequantized at compile time from `bits`-bit codes
/// (`B` [N, k_blocks, blob] uint8, low bits first along K), per-block `scales` [N * k_blocks]
/// and optional `zero_points` (packed uint8 like B, or one float per block; default
/// 2^(bits-1)): `W[k][n] = (code - zp) * scale`, then MatMul (+ bias).
fn matmul_nbits(e: &mut Ex, inp: &dyn Inputs) -> R<()> {
    let a = e.req(0)?;
    let at = ty(inp, a)?;
    let k = usize::try_from(e.i("K", 0)).map_err(|_| "bad K")?;
    let n = usize::try_from(e.i("N", 0)).map_err(|_| "bad N")?;
    let bits = usize::try_from(e.i("bits", 4)).map_err(|_| "bad bits")?;
    let bs = usize::try_from(e.i("block_size", 0)).map_err(|_| "bad block_size")?;
    if !matches!(bits, 2 | 4 | 8) || bs < 16 || !bs.is_power_of_two() || k == 0 || n == 0 {
        return Err(format!(
            "bits {bits}, block_size {bs}, K {k}, N {n} are not supported"
        ));
    }
    if k.checked_mul(n).is_none_or(|x| x > 1 << 28) {
        return Err(format!("K x N = {k} x {n} is too large"));
    }
    if at.shape.last() != Some(&k) {
        return Err(format!("A {at} does not have K = {k} columns"));
    }
    if n_inputs(e) > 4 && !e.input(4).is_empty() {
        return Err("g_idx is not supported".into());
    }
    let blocks = k.div_ceil(bs);
    let blob = bs * bits / 8;
    let get = |name: &str, what: &str| -> R<(TensorType, ConstData)> {
        let t = ty(inp, name)?;
        let d = inp
            .data(name)
            .ok_or_else(|| format!("{what} must be a constant"))?;
        Ok((t, d))
    };
    let (bt, b) = get(e.req(1)?, "B")?;
    if bt.dtype != DType::U8 || bt.numel() != n * blocks * blob {
        return Err(format!("B {bt} must be uint8 [{n}, {blocks}, {blob}]"));
    }
    let (st, sc) = get(e.req(2)?, "scales")?;
    if st.numel() != n * blocks || st.dtype != DType::F32 {
        return Err(format!("scales {st} must be float [{}]", n * blocks));
    }
    let scales: Vec<f32> = sc
        .bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mask = (1u32 << bits) - 1;
    let code = |bytes: &[u8], idx: usize| -> u32 {
        let bit = idx * bits;
        (u32::from(bytes[bit / 8]) >> (bit % 8)) & mask
    };
    let zp: Box<dyn Fn(usize, usize) -> f32> = match e.input(3) {
        "" => {
            let d = (1u32 << (bits - 1)) as f32;
            Box::new(move |_, _| d)
        }
        z => {
            let (zt, zd) = get(z, "zero_points")?;
            match zt.dtype {
                DType::U8 => {
                    let per_row = (blocks * bits).div_ceil(8);
                    if zt.numel() != n * per_row {
                        return Err(format!("zero_points {zt} must be uint8 [{}]", n * per_row));
                    }
                    let bytes = zd.bytes().to_vec();
                    Box::new(move |row, blk| {
                        code(&bytes[row * per_row..(row + 1) * per_row], blk) as f32
                    })
                }
                DType::F32 if zt.numel() == n * blocks => {
                    let v: Vec<f32> = zd
                        .bytes()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    Box::new(move |row, blk| v[row * blocks + blk])
                }
                _ => return Err(format!("zero_points {zt} are not supported")),
            }
        }
    };
    // W [K, N] row-major
    let bb = b.bytes();
    let mut w = vec![0f32; k * n];
    for row in 0..n {
        for blk in 0..blocks {
            let s = scales[row * blocks + blk];
            let z = zp(row, blk);
            let codes = &bb[(row * blocks + blk) * blob..(row * blocks + blk + 1) * blob];
            for j in 0..bs {
                let kk = blk * bs + j;
                if kk >= k {
                    break;
                }
                w[kk * n + row] = (code(codes, j) as f32 - z) * s;
            }
        }
    }
    let wb: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    let wn = e.constant("weight", DType::F32, &[k, n], wb);
    let bias = if n_inputs(e) > 5 { e.input(5) } else { "" };
    if bias.is_empty() {
        e.node("MatMul", &[a, &wn], &[e.output(0)], vec![]);
    } else {
        let p = e.op("MatMul", &[a, &wn], "product", vec![]);
        e.node("Add", &[&p, bias], &[e.output(0)], vec![]);
    }
    Ok(())
}
