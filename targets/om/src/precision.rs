//! ATC's `--precision_mode` as a per-node choice of fp16 or the IR's own float types.
//!
//! - `force_fp16` (ATC's default): every node computes in fp16;
//! - `allow_fp32_to_fp16`: the cube ops (convolutions, matrix products), which have no fp32
//!   kernel on the inference SoCs, compute in fp16; every other node keeps fp32;
//! - `must_keep_origin_dtype`: every node keeps its types;
//! - `allow_mix_precision`: every node computes in fp16 except the ops of
//!   [`KEEP_FP32`] (ATC's mix-precision "black list": reductions, normalizations, softmax,
//!   exponentials), which keep fp32.
//!
//! Only f32 becomes f16: integer, bool and f64 values are untouched. A value crossing between
//! an fp16 and an fp32 node gets a `Cast`, and the model's inputs and outputs keep the IR's
//! types (a `Cast` after a `Data`, before `NetOutput`), as ATC's default `--input_fp16_nodes`
//! / `--output_type` leave them.

use kiln_ir::ops::{ReduceKind, UnaryOp};
use kiln_ir::{Graph, Op};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionMode {
    #[default]
    ForceFp16,
    AllowFp32ToFp16,
    MustKeepOriginDtype,
    AllowMixPrecision,
}

impl PrecisionMode {
    pub const ALL: [PrecisionMode; 4] = [
        PrecisionMode::ForceFp16,
        PrecisionMode::AllowFp32ToFp16,
        PrecisionMode::MustKeepOriginDtype,
        PrecisionMode::AllowMixPrecision,
    ];
    /// ATC's name.
    pub fn name(self) -> &'static str {
        match self {
            PrecisionMode::ForceFp16 => "force_fp16",
            PrecisionMode::AllowFp32ToFp16 => "allow_fp32_to_fp16",
            PrecisionMode::MustKeepOriginDtype => "must_keep_origin_dtype",
            PrecisionMode::AllowMixPrecision => "allow_mix_precision",
        }
    }
}

impl std::str::FromStr for PrecisionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PrecisionMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown precision mode '{s}' (force_fp16, allow_fp32_to_fp16, must_keep_origin_dtype, allow_mix_precision)"
                )
            })
    }
}

/// The IR ops `allow_mix_precision` keeps in fp32, with the GE op types they are written as
/// (the `--modify_mixlist` black list kiln writes for ATC).
pub const KEEP_FP32: &[(&str, &[&str])] = &[
    ("softmax", &["SoftmaxV2", "LogSoftmaxV2"]),
    ("layer_norm", &["LayerNorm"]),
    ("batch_norm", &["BatchNorm"]),
    ("reduce_sum", &["ReduceSumD"]),
    ("reduce_mean", &["ReduceMeanD"]),
    ("reduce_prod", &["ReduceProdD"]),
    ("exp", &["Exp"]),
    ("log", &["Log"]),
    ("pow", &["Pow"]),
    ("erf", &["Erf"]),
    ("div", &["RealDiv"]),
    ("reciprocal", &["Reciprocal"]),
    ("sqrt", &["Sqrt"]),
];

/// The [`KEEP_FP32`] entry of an op, if it has one.
fn keep_fp32(op: &Op) -> Option<&'static str> {
    let name = match op {
        Op::Softmax { .. } => "softmax",
        Op::LayerNorm { .. } => "layer_norm",
        Op::BatchNorm { .. } => "batch_norm",
        Op::Reduce { kind, .. } => match kind {
            ReduceKind::Sum => "reduce_sum",
            ReduceKind::Mean => "reduce_mean",
            ReduceKind::Prod => "reduce_prod",
            _ => return None,
        },
        Op::Unary(u) => match u {
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Erf => "erf",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Sqrt => "sqrt",
            _ => return None,
        },
        Op::Binary(kiln_ir::ops::BinaryOp::Pow) => "pow",
        Op::Binary(kiln_ir::ops::BinaryOp::Div) => "div",
        _ => return None,
    };
    KEEP_FP32.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)
}

fn is_cube(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm(_) | Op::MatMul(_)
    )
}

/// Per node (indexed by `NodeId`): whether it computes in fp16 under `mode`.
pub fn fp16_nodes(g: &Graph, mode: PrecisionMode) -> Vec<bool> {
    let mut v = vec![false; g.nodes.len()];
    for (id, n) in g.iter_nodes() {
        v[id.index()] = match mode {
            PrecisionMode::ForceFp16 => true,
            PrecisionMode::AllowFp32ToFp16 => is_cube(&n.op),
            PrecisionMode::MustKeepOriginDtype => false,
            PrecisionMode::AllowMixPrecision => keep_fp32(&n.op).is_none(),
        };
    }
    // a weight packed at compile time is stored in its readers' precision
    let users = g.users();
    for (id, n) in g.iter_nodes() {
        if matches!(n.op, Op::Relayout { .. }) && g.const_data(n.inputs[0]).is_some() {
            v[id.index()] = users[n.outputs[0].index()].iter().any(|u| v[u.index()]);
        }
    }
    v
}

/// The nodes `allow_mix_precision` keeps in fp32 (node name, IR op), for the model attribute
/// and the report.
pub fn fp32_list(g: &Graph, mode: PrecisionMode) -> Vec<(String, &'static str)> {
    if mode != PrecisionMode::AllowMixPrecision {
        return vec![];
    }
    g.iter_nodes()
        .filter_map(|(_, n)| keep_fp32(&n.op).map(|k| (n.name.clone(), k)))
        .collect()
}
