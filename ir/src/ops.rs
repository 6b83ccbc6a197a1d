//! Typed ops. Front ends resolve defaults, opset differences and `auto_pad` once; passes and back
//! ends match on these types. Each op's life: this enum (+ attrs and shape rule here), the
//! interpreter (`interp.rs`), and each back end's lowering.

use crate::limits;
use crate::types::{Layout, TensorType};
use crate::{DType, Graph};

#[derive(Debug, Clone, PartialEq)]
pub struct ConvAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// `[begin_0, begin_1, .., end_0, end_1, ..]` per spatial dim (ONNX order).
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub groups: usize,
    /// Fused epilogue applied to each output element after the bias, in order (empty for a plain
    /// convolution). An [`EpilogueStep::Add`] reads a fourth input (the residual, same type as
    /// the output); a convolution with a residual always has a bias input.
    pub epilogue: Vec<EpilogueStep>,
    /// The output's layout (`Plain`, or `Nchwc(c)` for a 2-D convolution whose output
    /// channels are a multiple of `c`); the input may be plain or channel-blocked. Chosen by
    /// the `layout` pass, never by a front end.
    pub layout: Layout,
}

/// One elementwise step of a fused kernel epilogue (see [`ConvAttrs::epilogue`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpilogueStep {
    /// Add the residual operand (the op's last input, shaped like the output).
    Add,
    /// Multiply by the next operand (only in [`Op::Chain`]; product epilogues reject it).
    Mul,
    Unary(UnaryOp),
    Clip {
        min: f32,
        max: f32,
    },
    Act {
        kind: ActKind,
        alpha: f32,
        beta: f32,
    },
}

impl EpilogueStep {
    /// The standalone op this step performs (`Add` is a binary add with the residual).
    pub fn as_op(&self) -> Op {
        match *self {
            EpilogueStep::Add => Op::Binary(BinaryOp::Add),
            EpilogueStep::Mul => Op::Binary(BinaryOp::Mul),
            EpilogueStep::Unary(u) => Op::Unary(u),
            EpilogueStep::Clip { min, max } => Op::Clip { min, max },
            EpilogueStep::Act { kind, alpha, beta } => Op::Act { kind, alpha, beta },
        }
    }

    /// Whether the step reads an operand (`Add`, `Mul`).
    pub fn is_binary(&self) -> bool {
        matches!(self, EpilogueStep::Add | EpilogueStep::Mul)
    }

    /// The step for an elementwise activation op, if it is one that epilogues support.
    pub fn from_activation(op: &Op) -> Option<EpilogueStep> {
        Some(match *op {
            Op::Unary(u) if EPILOGUE_UNARY.contains(&u) => EpilogueStep::Unary(u),
            Op::Clip { min, max } => EpilogueStep::Clip { min, max },
            Op::Act { kind, alpha, beta } => EpilogueStep::Act { kind, alpha, beta },
            _ => return None,
        })
    }

    /// Text form: `add`, `relu`, `clip(0.0,6.0)`, `leaky_relu(0.01,0.0)`.
    pub fn text(&self) -> String {
        match self {
            EpilogueStep::Add => "add".into(),
            EpilogueStep::Mul => "mul".into(),
            EpilogueStep::Unary(u) => u.name().into(),
            EpilogueStep::Clip { min, max } => format!("clip({min:?},{max:?})"),
            EpilogueStep::Act { kind, alpha, beta } => {
                format!("{}({alpha:?},{beta:?})", kind.name())
            }
        }
    }

    fn parse(s: &str) -> Result<EpilogueStep, String> {
        let s = s.trim();
        let (name, args) = match s.split_once('(') {
            Some((n, rest)) => {
                let inner = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("epilogue step '{s}': missing ')'"))?;
                let v = inner
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<f32>()
                            .map_err(|_| format!("epilogue step '{s}': bad number '{x}'"))
                    })
                    .collect::<Result<Vec<f32>, String>>()?;
                if v.len() != 2 {
                    return Err(format!("epilogue step '{s}' needs two parameters"));
                }
                (n.trim(), Some((v[0], v[1])))
            }
            None => (s, None),
        };
        match (name, args) {
            ("add", None) => Ok(EpilogueStep::Add),
            ("mul", None) => Ok(EpilogueStep::Mul),
            ("clip", Some((min, max))) => Ok(EpilogueStep::Clip { min, max }),
            (n, Some((alpha, beta))) => match ACTS.iter().find(|(_, an)| *an == n) {
                Some((kind, _)) => Ok(EpilogueStep::Act {
                    kind: *kind,
                    alpha,
                    beta,
                }),
                None => Err(format!("unknown epilogue step '{s}'")),
            },
            (n, None) => match UNARY.iter().find(|(_, un)| *un == n) {
                Some((u, _)) => Ok(EpilogueStep::Unary(*u)),
                None => Err(format!("unknown epilogue step '{s}'")),
            },
        }
    }
}

/// Unary ops a kernel epilogue may apply (float activations).
pub const EPILOGUE_UNARY: [UnaryOp; 9] = [
    UnaryOp::Relu,
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::HardSwish,
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Softplus,
    UnaryOp::Mish,
    UnaryOp::Softsign,
];

/// Print an epilogue as the text form's `epilogue` attribute (`add+relu`).
pub fn epilogue_text(steps: &[EpilogueStep]) -> String {
    steps.iter().map(|s| s.text()).collect::<Vec<_>>().join("+")
}

/// Parse the `epilogue` attribute (inverse of [`epilogue_text`]).
pub fn parse_epilogue(s: &str) -> Result<Vec<EpilogueStep>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '+' if depth == 0 => {
                steps.push(EpilogueStep::parse(&s[start..i])?);
                start = i + 1;
            }
            _ => {}
        }
    }
    steps.push(EpilogueStep::parse(&s[start..])?);
    Ok(steps)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConvTransposeAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub groups: usize,
    pub output_padding: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub ceil_mode: bool,
    /// AveragePool only: divide by the full window including padding.
    pub count_include_pad: bool,
}

/// A matrix product's fused epilogue: steps applied to each output element in order. Each
/// [`EpilogueStep::Add`] reads the next operand after `a` and `b` (a bias `[N]`, a residual
/// shaped like the output, or anything unidirectionally broadcast to it); at most two, and both
/// matrices have rank >= 2 when there is an epilogue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatMulAttrs {
    pub epilogue: Vec<EpilogueStep>,
}

/// Most operands a fused [`MatMulAttrs::epilogue`] reads (bias and residual).
pub const MATMUL_EPILOGUE_OPERANDS: usize = 2;

impl MatMulAttrs {
    /// Inputs the epilogue reads after a and b (one per `add` step).
    pub fn operand_count(&self) -> usize {
        self.epilogue
            .iter()
            .filter(|s| **s == EpilogueStep::Add)
            .count()
    }
}

impl Op {
    /// The fused epilogue of a product that has one (Conv, MatMul, Gemm).
    pub fn epilogue_steps(&self) -> Option<&[EpilogueStep]> {
        match self {
            Op::Conv(a) => Some(&a.epilogue),
            Op::MatMul(a) => Some(&a.epilogue),
            Op::Gemm(a) => Some(&a.epilogue),
            _ => None,
        }
    }

    /// [`Self::epilogue_steps`], mutable.
    pub fn epilogue_mut(&mut self) -> Option<&mut Vec<EpilogueStep>> {
        match self {
            Op::Conv(a) => Some(&mut a.epilogue),
            Op::MatMul(a) => Some(&mut a.epilogue),
            Op::Gemm(a) => Some(&mut a.epilogue),
            _ => None,
        }
    }

    /// A plain matrix product (no epilogue).
    pub fn matmul() -> Op {
        Op::MatMul(MatMulAttrs::default())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GemmAttrs {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Fused activation steps applied to each output element after `alpha A B + beta C` (no
    /// `add` steps: the bias is C).
    pub epilogue: Vec<EpilogueStep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Remainder with the sign of the divisor (Python `%`, ONNX Mod fmod=0).
    Mod,
    /// Remainder with the sign of the dividend (C `fmod`, ONNX Mod fmod=1).
    Fmod,
    BitAnd,
    BitOr,
    BitXor,
    /// Integer shifts (ONNX BitShift); the shift amount is the second operand.
    Shl,
    Shr,
    /// `x < 0 ? slope * x : x` with a broadcast slope.
    PRelu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Reciprocal,
    Floor,
    Ceil,
    HardSwish,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    /// Round half to even.
    Round,
    Sign,
    /// `ln(1 + e^x)`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// Bitwise complement (integers).
    BitNot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftmaxKind {
    Softmax,
    LogSoftmax,
    /// 1 at the first maximum along the axis, 0 elsewhere.
    Hardmax,
}

/// How ScatterElements / ScatterND combine an update with the existing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl ScatterReduction {
    pub const ALL: [(ScatterReduction, &'static str); 5] = [
        (ScatterReduction::None, "none"),
        (ScatterReduction::Add, "add"),
        (ScatterReduction::Mul, "mul"),
        (ScatterReduction::Max, "max"),
        (ScatterReduction::Min, "min"),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(o, _)| *o == self).unwrap().1
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(o, _)| *o)
    }
}

/// Activations with up to two float parameters (`alpha`, `beta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActKind {
    /// `clamp(alpha x + beta, 0, 1)`
    HardSigmoid,
    /// `x < 0 ? alpha x : x`
    LeakyRelu,
    /// `x < 0 ? alpha (e^x - 1) : x`
    Elu,
    /// `beta * (x <= 0 ? alpha (e^x - 1) : x)` (beta = gamma)
    Selu,
    /// `max(0, x) + min(0, alpha (e^(x/alpha) - 1))`
    Celu,
    /// `x > alpha ? x : 0`
    ThresholdedRelu,
    /// `x < -beta ? x + alpha : x > beta ? x - alpha : 0` (alpha = bias, beta = lambd)
    Shrink,
    /// `x * sigmoid(alpha x)`
    Swish,
    /// `alpha x + beta` (a scale and shift, e.g. PP-LCNet's learnable affine after an
    /// activation; fused into convolution epilogues)
    Affine,
}

pub const ACTS: [(ActKind, &str); 9] = [
    (ActKind::HardSigmoid, "hard_sigmoid"),
    (ActKind::LeakyRelu, "leaky_relu"),
    (ActKind::Elu, "elu"),
    (ActKind::Selu, "selu"),
    (ActKind::Celu, "celu"),
    (ActKind::ThresholdedRelu, "thresholded_relu"),
    (ActKind::Shrink, "shrink"),
    (ActKind::Swish, "swish"),
    (ActKind::Affine, "affine"),
];

impl ActKind {
    pub fn name(self) -> &'static str {
        ACTS.iter().find(|(o, _)| *o == self).unwrap().1
    }
}

/// Elementwise comparisons (broadcasting; boolean result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
}

/// Elementwise boolean logic (broadcasting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogicOp {
    And,
    Or,
    Xor,
}

const CMP: [(CmpOp, &str); 5] = [
    (CmpOp::Equal, "equal"),
    (CmpOp::Less, "less"),
    (CmpOp::Greater, "greater"),
    (CmpOp::LessOrEqual, "less_or_equal"),
    (CmpOp::GreaterOrEqual, "greater_or_equal"),
];
const LOGIC: [(LogicOp, &str); 3] = [
    (LogicOp::And, "and"),
    (LogicOp::Or, "or"),
    (LogicOp::Xor, "xor"),
];

impl CmpOp {
    pub fn name(self) -> &'static str {
        CMP.iter().find(|(o, _)| *o == self).unwrap().1
    }
    /// Apply to two ordered values.
    pub fn eval<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Equal => a == b,
            CmpOp::Less => a < b,
            CmpOp::Greater => a > b,
            CmpOp::LessOrEqual => a <= b,
            CmpOp::GreaterOrEqual => a >= b,
        }
    }
}
impl LogicOp {
    pub fn name(self) -> &'static str {
        LOGIC.iter().find(|(o, _)| *o == self).unwrap().1
    }
    pub fn eval(self, a: bool, b: bool) -> bool {
        match self {
            LogicOp::And => a && b,
            LogicOp::Or => a || b,
            LogicOp::Xor => a != b,
        }
    }
}

/// The ONNX Reduce* family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    SumSquare,
    L1,
    L2,
    LogSum,
    LogSumExp,
}

impl ReduceKind {
    pub const ALL: [(ReduceKind, &'static str); 10] = [
        (ReduceKind::Sum, "reduce_sum"),
        (ReduceKind::Mean, "reduce_mean"),
        (ReduceKind::Max, "reduce_max"),
        (ReduceKind::Min, "reduce_min"),
        (ReduceKind::Prod, "reduce_prod"),
        (ReduceKind::SumSquare, "reduce_sum_square"),
        (ReduceKind::L1, "reduce_l1"),
        (ReduceKind::L2, "reduce_l2"),
        (ReduceKind::LogSum, "reduce_log_sum"),
        (ReduceKind::LogSumExp, "reduce_log_sum_exp"),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(k, _)| *k == self).unwrap().1
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(k, _)| *k)
    }
    /// Accumulator start value.
    pub fn init(self) -> f64 {
        match self {
            ReduceKind::Max => f64::NEG_INFINITY,
            ReduceKind::Min => f64::INFINITY,
            ReduceKind::Prod => 1.0,
            _ => 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    Nearest,
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordTransform {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResizeAttrs {
    pub mode: ResizeMode,
    pub coord: CoordTransform,
    pub nearest: NearestMode,
    /// Per-dim scale used by the coordinate transform (`out = floor(in * scale)` or given sizes).
    pub scales: Vec<f32>,
    pub out_shape: Vec<usize>,
}

/// Per-dimension normalized slice: element `i` of dim `d` reads input index
/// `starts[d] + i * steps[d]`, for `i < sizes[d]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceAttrs {
    pub starts: Vec<usize>,
    pub steps: Vec<i64>,
    pub sizes: Vec<usize>,
}

/// The two sub-graphs of a run-time [`Op::If`]. Each takes the node's captured values (its
/// inputs after the condition) as its graph inputs, in order and with their types, and
/// produces the node's outputs (one static type each, the same in both branches).
#[derive(Debug, Clone)]
pub struct Branches {
    pub then_branch: Graph,
    pub else_branch: Graph,
}

/// A run-time [`Op::Loop`]: `body` runs while `iter < m` and `cond` hold, at most `max_trip`
/// times.
///
/// Node inputs: `m` (i64, one element: the trip count), `cond` (bool, one element), the
/// `n_carried` initial loop-carried values, then the captured values the body reads.
/// Body inputs: `iter` (i64, one element), `cond` (bool, one element), the carried values,
/// the captured values (the node's types). Body outputs: `cond_out` (bool, one element), the
/// carried values' next state (same types), then one scan output per remaining output.
/// Node outputs: the final carried values, then each scan output stacked along a new leading
/// axis of `max_trip` rows (row `i` from iteration `i`; rows of iterations that never ran are
/// zero). A loop that would need more than `max_trip` iterations stops with a run-time error.
#[derive(Debug, Clone)]
pub struct LoopAttrs {
    pub body: Graph,
    pub n_carried: usize,
    pub max_trip: usize,
}

/// Sub-graphs compare by their exact text form (constants bit by bit).
impl PartialEq for Branches {
    fn eq(&self, o: &Self) -> bool {
        crate::text::print(&self.then_branch) == crate::text::print(&o.then_branch)
            && crate::text::print(&self.else_branch) == crate::text::print(&o.else_branch)
    }
}
impl PartialEq for LoopAttrs {
    fn eq(&self, o: &Self) -> bool {
        self.n_carried == o.n_carried
            && self.max_trip == o.max_trip
            && crate::text::print(&self.body) == crate::text::print(&o.body)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// inputs: x `[N,C,spatial..]`, w `[M,C/groups,k..]`, optional bias `[M]`.
    Conv(ConvAttrs),
    /// inputs: x `[N,C,spatial..]`, w `[C,M/groups,k..]`, optional bias `[M]`.
    ConvTranspose(ConvTransposeAttrs),
    /// inputs: a, b, optional c (unidirectionally broadcast to `[M,N]`).
    Gemm(GemmAttrs),
    /// NumPy matmul: batched with broadcasting, 1-D operands promoted. inputs: a, b, then one
    /// operand per `Add` step of a fused epilogue (see [`MatMulAttrs`]).
    MatMul(MatMulAttrs),
    /// Elementwise with multidirectional broadcasting.
    Binary(BinaryOp),
    /// A fused chain of f32 elementwise steps (`fuse_elementwise_chain`): the output is
    /// input 0 with `steps` applied in order, each binary step (`add`, `mul`) reading the next
    /// input, unidirectionally broadcast to input 0's shape.
    Chain {
        steps: Vec<EpilogueStep>,
    },
    Unary(UnaryOp),
    Clip {
        min: f32,
        max: f32,
    },
    /// A parameterized activation (elementwise).
    Act {
        kind: ActKind,
        alpha: f32,
        beta: f32,
    },
    /// Elementwise float classification; output is `bool`.
    IsNaN,
    IsInf {
        pos: bool,
        neg: bool,
    },
    /// Inference batch norm; inputs: x, scale, bias, mean, var (all params `[C]`).
    BatchNorm {
        epsilon: f32,
    },
    MaxPool(PoolAttrs),
    /// The i64 flat input index of each MaxPool maximum (the first one on ties); with
    /// `storage_order` the spatial part of the index is column-major (ONNX MaxPool output 1).
    MaxPoolIndices {
        attrs: PoolAttrs,
        storage_order: bool,
    },
    AveragePool(PoolAttrs),
    GlobalAveragePool,
    /// The same tensor in another physical layout (inserted by the `layout` pass where a
    /// channel-blocked value meets an op that reads plain ones).
    Relayout {
        to: Layout,
    },
    /// Shape-only: the bytes are unchanged (covers Flatten, Squeeze, Unsqueeze).
    Reshape {
        shape: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// Broadcast copy to `shape` (ONNX Expand: the result shape is the broadcast of the input's
    /// shape and `shape`).
    Expand {
        shape: Vec<usize>,
    },
    Concat {
        axis: usize,
    },
    Split {
        axis: usize,
        sizes: Vec<usize>,
    },
    Slice(SliceAttrs),
    /// Layer normalization over the axes `axis..`: `(x - mean) / sqrt(var + epsilon)` (population
    /// variance), times `scale`, plus `bias`. inputs: x, optional scale, optional bias (bias
    /// only with scale); each has one element per normalized row element (shape `x[axis..]`,
    /// leading 1s allowed).
    LayerNorm {
        axis: usize,
        epsilon: f32,
    },
    /// Softmax / LogSoftmax / Hardmax along one axis (opset-13 semantics).
    Softmax {
        axis: usize,
        kind: SoftmaxKind,
    },
    /// `out[.., i, ..] = data[.., idx[.., i, ..], ..]`: ONNX Gather along `axis` (indices i32/i64,
    /// negative = from the end); out shape = data[..axis] + idx + data[axis+1..].
    Gather {
        axis: usize,
    },
    /// ONNX GatherElements: `out[i][j][k] = data[i][idx[i][j][k]][k]` (axis 1); out shape = idx.
    GatherElements {
        axis: usize,
    },
    /// ONNX ScatterElements: a copy of data with `data[.., idx[..], ..] (op)= updates[..]`.
    ScatterElements {
        axis: usize,
        reduction: ScatterReduction,
    },
    /// ONNX GatherND with `batch_dims`.
    GatherND {
        batch_dims: usize,
    },
    /// ONNX ScatterND: a copy of data with slices at `idx` replaced (or reduced) by updates.
    ScatterND {
        reduction: ScatterReduction,
    },
    /// Comparison with broadcasting; output is `bool`.
    Compare(CmpOp),
    /// Boolean logic with broadcasting.
    Logical(LogicOp),
    /// Boolean negation.
    Not,
    /// `cond ? x : y` with three-way broadcasting; inputs: cond (bool), x, y.
    Where,
    /// Index of the max (or min) along `axis` as i64; ties pick the first index unless
    /// `select_last`.
    ArgExtreme {
        max: bool,
        axis: usize,
        keepdims: bool,
        select_last: bool,
    },
    /// Reduction over `axes` (sorted, unique; may be empty = identity-like copy).
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
        keepdims: bool,
    },
    Resize(ResizeAttrs),
    Cast {
        to: DType,
    },
    /// Reinterpret the bytes as `to` (ONNX BitCast): same element size keeps the shape; a
    /// smaller type adds a last dim of the size ratio, a larger one consumes it.
    BitCast {
        to: DType,
    },
    /// Pad (or crop, for negative pads) every dim: `pads` = begins then ends, like ONNX.
    Pad {
        pads: Vec<i64>,
        mode: PadMode,
        /// Fill for `PadMode::Constant` (converted to the element type).
        value: f64,
    },
    /// Separable resampling along one axis through weight tables: inputs x, `idx` (i32
    /// `[out, taps]`) and `w` (f32 `[out, taps]`); `out[.., o, ..] = sum_t w[o,t] *
    /// x[.., idx[o,t], ..]`, or `fill` where `idx[o,0] < 0` (extrapolated positions). Every
    /// Resize mode (cubic, antialias, tf_crop_and_resize, ...) is a chain of these.
    Resample {
        axis: usize,
        fill: f32,
    },
    /// Running sum (or product) along `axis`.
    CumSum {
        axis: usize,
        exclusive: bool,
        reverse: bool,
        prod: bool,
    },
    /// The `k` largest (or smallest) elements along `axis`, sorted, ties by lower index;
    /// outputs values and i64 indices.
    TopK {
        axis: usize,
        k: usize,
        largest: bool,
    },
    /// Run-time conditional (see [`Branches`]): inputs `cond` (bool, one element), then the
    /// values both branches capture.
    If(Box<Branches>),
    /// Run-time loop (see [`LoopAttrs`]).
    Loop(Box<LoopAttrs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

impl PadMode {
    pub const ALL: [(PadMode, &'static str); 4] = [
        (PadMode::Constant, "constant"),
        (PadMode::Reflect, "reflect"),
        (PadMode::Edge, "edge"),
        (PadMode::Wrap, "wrap"),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(o, _)| *o == self).unwrap().1
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(o, _)| *o)
    }
}

fn index_type(t: &TensorType) -> Result<(), String> {
    if matches!(t.dtype, DType::I64 | DType::I32) {
        Ok(())
    } else {
        Err(format!("indices must be i32 or i64, got {t}"))
    }
}

/// A scalar or list attribute, for the text form.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
}

impl Attr {
    fn int(&self) -> Result<i64, String> {
        match self {
            Attr::Int(i) => Ok(*i),
            _ => Err(format!("expected an integer, got {self:?}")),
        }
    }
    fn uint(&self) -> Result<usize, String> {
        usize::try_from(self.int()?)
            .map_err(|_| format!("expected a non-negative integer, got {self:?}"))
    }
    fn float(&self) -> Result<f32, String> {
        match self {
            Attr::Float(f) => Ok(*f),
            Attr::Int(i) => Ok(*i as f32),
            _ => Err(format!("expected a float, got {self:?}")),
        }
    }
    fn ints(&self) -> Result<Vec<i64>, String> {
        match self {
            Attr::Ints(v) => Ok(v.clone()),
            _ => Err(format!("expected an integer list, got {self:?}")),
        }
    }
    fn uints(&self) -> Result<Vec<usize>, String> {
        self.ints()?
            .into_iter()
            .map(|i| usize::try_from(i).map_err(|_| format!("negative value {i} in list")))
            .collect()
    }
    fn floats(&self) -> Result<Vec<f32>, String> {
        match self {
            Attr::Floats(v) => Ok(v.clone()),
            Attr::Ints(v) => Ok(v.iter().map(|&i| i as f32).collect()),
            _ => Err(format!("expected a float list, got {self:?}")),
        }
    }
    fn str(&self) -> Result<&str, String> {
        match self {
            Attr::Str(s) => Ok(s),
            _ => Err(format!("expected a string, got {self:?}")),
        }
    }
}

fn us(v: &[usize]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

const UNARY: [(UnaryOp, &str); 32] = [
    (UnaryOp::Relu, "relu"),
    (UnaryOp::Sigmoid, "sigmoid"),
    (UnaryOp::Tanh, "tanh"),
    (UnaryOp::Erf, "erf"),
    (UnaryOp::Exp, "exp"),
    (UnaryOp::Log, "log"),
    (UnaryOp::Sqrt, "sqrt"),
    (UnaryOp::Neg, "neg"),
    (UnaryOp::Abs, "abs"),
    (UnaryOp::Reciprocal, "reciprocal"),
    (UnaryOp::Floor, "floor"),
    (UnaryOp::Ceil, "ceil"),
    (UnaryOp::HardSwish, "hard_swish"),
    (UnaryOp::Sin, "sin"),
    (UnaryOp::Cos, "cos"),
    (UnaryOp::Tan, "tan"),
    (UnaryOp::Asin, "asin"),
    (UnaryOp::Acos, "acos"),
    (UnaryOp::Atan, "atan"),
    (UnaryOp::Sinh, "sinh"),
    (UnaryOp::Cosh, "cosh"),
    (UnaryOp::Asinh, "asinh"),
    (UnaryOp::Acosh, "acosh"),
    (UnaryOp::Atanh, "atanh"),
    (UnaryOp::Round, "round"),
    (UnaryOp::Sign, "sign"),
    (UnaryOp::Softplus, "softplus"),
    (UnaryOp::Softsign, "softsign"),
    (UnaryOp::Mish, "mish"),
    (UnaryOp::Gelu, "gelu"),
    (UnaryOp::GeluTanh, "gelu_tanh"),
    (UnaryOp::BitNot, "bit_not"),
];
const BINARY: [(BinaryOp, &str); 15] = [
    (BinaryOp::Add, "add"),
    (BinaryOp::Sub, "sub"),
    (BinaryOp::Mul, "mul"),
    (BinaryOp::Div, "div"),
    (BinaryOp::Pow, "pow"),
    (BinaryOp::Max, "max"),
    (BinaryOp::Min, "min"),
    (BinaryOp::Mod, "mod"),
    (BinaryOp::Fmod, "fmod"),
    (BinaryOp::BitAnd, "bit_and"),
    (BinaryOp::BitOr, "bit_or"),
    (BinaryOp::BitXor, "bit_xor"),
    (BinaryOp::Shl, "shl"),
    (BinaryOp::Shr, "shr"),
    (BinaryOp::PRelu, "prelu"),
];

impl UnaryOp {
    pub fn name(self) -> &'static str {
        UNARY.iter().find(|(o, _)| *o == self).unwrap().1
    }
}
impl BinaryOp {
    pub fn name(self) -> &'static str {
        BINARY.iter().find(|(o, _)| *o == self).unwrap().1
    }
}

impl ResizeMode {
    fn name(self) -> &'static str {
        match self {
            ResizeMode::Nearest => "nearest",
            ResizeMode::Linear => "linear",
        }
    }
}
impl CoordTransform {
    pub const ALL: [(CoordTransform, &'static str); 4] = [
        (CoordTransform::HalfPixel, "half_pixel"),
        (CoordTransform::PytorchHalfPixel, "pytorch_half_pixel"),
        (CoordTransform::AlignCorners, "align_corners"),
        (CoordTransform::Asymmetric, "asymmetric"),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(o, _)| *o == self).unwrap().1
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(o, _)| *o)
    }
}
impl NearestMode {
    pub const ALL: [(NearestMode, &'static str); 4] = [
        (NearestMode::RoundPreferFloor, "round_prefer_floor"),
        (NearestMode::RoundPreferCeil, "round_prefer_ceil"),
        (NearestMode::Floor, "floor"),
        (NearestMode::Ceil, "ceil"),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(o, _)| *o == self).unwrap().1
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(o, _)| *o)
    }
}

impl Op {
    /// Stable op name used by the text form and diagnostics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "conv",
            Op::ConvTranspose(_) => "conv_transpose",
            Op::Gemm(_) => "gemm",
            Op::MatMul(_) => "matmul",
            Op::Chain { .. } => "chain",
            Op::Binary(b) => b.name(),
            Op::Unary(u) => u.name(),
            Op::Clip { .. } => "clip",
            Op::Act { kind, .. } => kind.name(),
            Op::IsNaN => "is_nan",
            Op::IsInf { .. } => "is_inf",
            Op::BatchNorm { .. } => "batch_norm",
            Op::MaxPool(_) => "max_pool",
            Op::MaxPoolIndices { .. } => "max_pool_indices",
            Op::AveragePool(_) => "average_pool",
            Op::GlobalAveragePool => "global_average_pool",
            Op::Reshape { .. } => "reshape",
            Op::Relayout { .. } => "relayout",
            Op::Transpose { .. } => "transpose",
            Op::Expand { .. } => "expand",
            Op::Concat { .. } => "concat",
            Op::Split { .. } => "split",
            Op::Slice(_) => "slice",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Softmax { kind, .. } => match kind {
                SoftmaxKind::Softmax => "softmax",
                SoftmaxKind::LogSoftmax => "log_softmax",
                SoftmaxKind::Hardmax => "hardmax",
            },
            Op::Gather { .. } => "gather",
            Op::GatherElements { .. } => "gather_elements",
            Op::ScatterElements { .. } => "scatter_elements",
            Op::GatherND { .. } => "gather_nd",
            Op::ScatterND { .. } => "scatter_nd",
            Op::Reduce { kind, .. } => kind.name(),
            Op::Compare(c) => c.name(),
            Op::Logical(l) => l.name(),
            Op::Not => "not",
            Op::ArgExtreme { max: true, .. } => "arg_max",
            Op::ArgExtreme { max: false, .. } => "arg_min",
            Op::Where => "where",
            Op::Resize(_) => "resize",
            Op::Cast { .. } => "cast",
            Op::BitCast { .. } => "bit_cast",
            Op::Pad { .. } => "pad",
            Op::Resample { .. } => "resample",
            Op::CumSum { prod: false, .. } => "cum_sum",
            Op::CumSum { prod: true, .. } => "cum_prod",
            Op::TopK { .. } => "top_k",
            Op::If(_) => "if",
            Op::Loop(_) => "loop",
        }
    }

    /// Elementwise ops of any layout (`Op::layouts`): the output element `i` depends on
    /// element `i` of each operand of the output's shape (and on scalars) only.
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary(_)
                | Op::Clip { .. }
                | Op::Act { .. }
                | Op::Binary(_)
                | Op::Chain { .. }
                | Op::IsNaN
                | Op::IsInf { .. }
                | Op::Compare(_)
                | Op::Logical(_)
                | Op::Not
                | Op::Where
                | Op::Cast { .. }
        )
    }

    /// The sub-graphs of a control-flow op (`if`: then, else; `loop`: the body).
    pub fn bodies(&self) -> Vec<&Graph> {
        match self {
            Op::If(b) => vec![&b.then_branch, &b.else_branch],
            Op::Loop(l) => vec![&l.body],
            _ => vec![],
        }
    }

    /// [`bodies`](Self::bodies), mutable (passes run on sub-graphs through this).
    pub fn bodies_mut(&mut self) -> Vec<&mut Graph> {
        match self {
            Op::If(b) => vec![&mut b.then_branch, &mut b.else_branch],
            Op::Loop(l) => vec![&mut l.body],
            _ => vec![],
        }
    }

    /// Control flow: an op with sub-graphs.
    pub fn is_control_flow(&self) -> bool {
        matches!(self, Op::If(_) | Op::Loop(_))
    }

    /// True for ops that only reinterpret the bytes (no data movement).
    pub fn is_view(&self) -> bool {
        matches!(self, Op::Reshape { .. })
    }

    /// Ops that only move, select or convert their input's elements (no output is larger
    /// than its inputs together, but for a gather's repeated rows): on constant inputs they
    /// are folded whatever their size, so a weight's transpose, slice, concatenation or cast
    /// never runs at run time.
    pub fn moves_data(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Slice(_)
                | Op::Concat { .. }
                | Op::Split { .. }
                | Op::Cast { .. }
                | Op::Gather { .. }
        )
    }

    /// The op's attributes as name/value pairs (the text form prints these).
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        match self {
            Op::Conv(a) => {
                let mut v = vec![
                    ("kernel", us(&a.kernel)),
                    ("strides", us(&a.strides)),
                    ("pads", us(&a.pads)),
                    ("dilations", us(&a.dilations)),
                    ("groups", Attr::Int(a.groups as i64)),
                ];
                if !a.epilogue.is_empty() {
                    v.push(("epilogue", Attr::Str(epilogue_text(&a.epilogue))));
                }
                if !a.layout.is_plain() {
                    v.push(("layout", Attr::Str(a.layout.to_string())));
                }
                v
            }
            Op::ConvTranspose(a) => vec![
                ("kernel", us(&a.kernel)),
                ("strides", us(&a.strides)),
                ("pads", us(&a.pads)),
                ("dilations", us(&a.dilations)),
                ("groups", Attr::Int(a.groups as i64)),
                ("output_padding", us(&a.output_padding)),
            ],
            Op::Gemm(a) => {
                let mut v = vec![
                    ("alpha", Attr::Float(a.alpha)),
                    ("beta", Attr::Float(a.beta)),
                    ("trans_a", Attr::Int(a.trans_a as i64)),
                    ("trans_b", Attr::Int(a.trans_b as i64)),
                ];
                if !a.epilogue.is_empty() {
                    v.push(("epilogue", Attr::Str(epilogue_text(&a.epilogue))));
                }
                v
            }
            Op::MatMul(a) if !a.epilogue.is_empty() => {
                vec![("epilogue", Attr::Str(epilogue_text(&a.epilogue)))]
            }
            Op::Chain { steps } => vec![("steps", Attr::Str(epilogue_text(steps)))],
            Op::Clip { min, max } => vec![("min", Attr::Float(*min)), ("max", Attr::Float(*max))],
            Op::Act { alpha, beta, .. } => {
                vec![("alpha", Attr::Float(*alpha)), ("beta", Attr::Float(*beta))]
            }
            Op::IsInf { pos, neg } => vec![
                ("pos", Attr::Int(*pos as i64)),
                ("neg", Attr::Int(*neg as i64)),
            ],
            Op::BatchNorm { epsilon } => vec![("epsilon", Attr::Float(*epsilon))],
            Op::MaxPoolIndices {
                attrs: a,
                storage_order,
            } => vec![
                ("kernel", us(&a.kernel)),
                ("strides", us(&a.strides)),
                ("pads", us(&a.pads)),
                ("dilations", us(&a.dilations)),
                ("ceil_mode", Attr::Int(a.ceil_mode as i64)),
                ("storage_order", Attr::Int(*storage_order as i64)),
            ],
            Op::MaxPool(a) | Op::AveragePool(a) => {
                let mut v = vec![
                    ("kernel", us(&a.kernel)),
                    ("strides", us(&a.strides)),
                    ("pads", us(&a.pads)),
                    ("dilations", us(&a.dilations)),
                    ("ceil_mode", Attr::Int(a.ceil_mode as i64)),
                ];
                if matches!(self, Op::AveragePool(_)) {
                    v.push(("count_include_pad", Attr::Int(a.count_include_pad as i64)));
                }
                v
            }
            Op::Reshape { shape } => vec![("shape", us(shape))],
            Op::Relayout { to } => vec![("to", Attr::Str(to.to_string()))],
            Op::Transpose { perm } => vec![("perm", us(perm))],
            Op::Expand { shape } => vec![("shape", us(shape))],
            Op::Concat { axis } => vec![("axis", Attr::Int(*axis as i64))],
            Op::Split { axis, sizes } => {
                vec![("axis", Attr::Int(*axis as i64)), ("sizes", us(sizes))]
            }
            Op::Slice(a) => vec![
                ("starts", us(&a.starts)),
                ("steps", Attr::Ints(a.steps.clone())),
                ("sizes", us(&a.sizes)),
            ],
            Op::Softmax { axis, .. } | Op::Gather { axis } | Op::GatherElements { axis } => {
                vec![("axis", Attr::Int(*axis as i64))]
            }
            Op::LayerNorm { axis, epsilon } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("epsilon", Attr::Float(*epsilon)),
            ],
            Op::ScatterElements { axis, reduction } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("reduction", Attr::Str(reduction.name().into())),
            ],
            Op::GatherND { batch_dims } => vec![("batch_dims", Attr::Int(*batch_dims as i64))],
            Op::ScatterND { reduction } => {
                vec![("reduction", Attr::Str(reduction.name().into()))]
            }
            Op::ArgExtreme {
                axis,
                keepdims,
                select_last,
                ..
            } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("keepdims", Attr::Int(*keepdims as i64)),
                ("select_last", Attr::Int(*select_last as i64)),
            ],
            Op::Reduce { axes, keepdims, .. } => vec![
                ("axes", us(axes)),
                ("keepdims", Attr::Int(*keepdims as i64)),
            ],
            Op::Resize(a) => vec![
                ("mode", Attr::Str(a.mode.name().into())),
                ("coord", Attr::Str(a.coord.name().into())),
                ("nearest", Attr::Str(a.nearest.name().into())),
                ("scales", Attr::Floats(a.scales.clone())),
                ("out_shape", us(&a.out_shape)),
            ],
            Op::Cast { to } | Op::BitCast { to } => vec![("to", Attr::Str(to.name().into()))],
            Op::Resample { axis, fill } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("fill", Attr::Float(*fill)),
            ],
            Op::Pad { pads, mode, value } => vec![
                ("pads", Attr::Ints(pads.clone())),
                ("mode", Attr::Str(mode.name().into())),
                ("value", Attr::Float(*value as f32)),
            ],
            Op::CumSum {
                axis,
                exclusive,
                reverse,
                ..
            } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("exclusive", Attr::Int(*exclusive as i64)),
                ("reverse", Attr::Int(*reverse as i64)),
            ],
            Op::TopK { axis, k, largest } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("k", Attr::Int(*k as i64)),
                ("largest", Attr::Int(*largest as i64)),
            ],
            // the sub-graphs are printed after the node by the text form
            Op::If(_) => vec![],
            Op::Loop(l) => vec![
                ("n_carried", Attr::Int(l.n_carried as i64)),
                ("max_trip", Attr::Int(l.max_trip as i64)),
            ],
            Op::MatMul(_)
            | Op::Binary(_)
            | Op::Unary(_)
            | Op::GlobalAveragePool
            | Op::Compare(_)
            | Op::Logical(_)
            | Op::Not
            | Op::IsNaN
            | Op::Where => vec![],
        }
    }

    /// [`from_parts`](Self::from_parts) for any op, control flow included: `if` takes two
    /// sub-graphs (then, else), `loop` one (the body); other ops none.
    pub fn from_parts_with_bodies(
        name: &str,
        attrs: &[(String, Attr)],
        bodies: Vec<Graph>,
    ) -> Result<Op, String> {
        let int = |k: &str| -> Result<usize, String> {
            attrs
                .iter()
                .find(|(n, _)| n == k)
                .ok_or_else(|| format!("op '{name}' needs attribute '{k}'"))?
                .1
                .uint()
        };
        let n = bodies.len();
        let mut it = bodies.into_iter();
        match (name, n) {
            ("if", 2) => Ok(Op::If(Box::new(Branches {
                then_branch: it.next().unwrap(),
                else_branch: it.next().unwrap(),
            }))),
            ("loop", 1) => Ok(Op::Loop(Box::new(LoopAttrs {
                body: it.next().unwrap(),
                n_carried: int("n_carried")?,
                max_trip: int("max_trip")?,
            }))),
            ("if", _) => Err(format!("'if' needs 2 sub-graphs (then, else), got {n}")),
            ("loop", _) => Err(format!("'loop' needs 1 sub-graph (its body), got {n}")),
            (_, 0) => Op::from_parts(name, attrs),
            _ => Err(format!("op '{name}' takes no sub-graphs")),
        }
    }

    /// Rebuild an op from its name and attributes (inverse of `name` + `attrs`).
    pub fn from_parts(name: &str, attrs: &[(String, Attr)]) -> Result<Op, String> {
        let get = |k: &str| -> Result<&Attr, String> {
            attrs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, a)| a)
                .ok_or_else(|| format!("op '{name}' needs attribute '{k}'"))
        };
        let flag = |k: &str| -> Result<bool, String> { Ok(get(k)?.int()? != 0) };
        if let Some((u, _)) = UNARY.iter().find(|(_, n)| *n == name) {
            return Ok(Op::Unary(*u));
        }
        if let Some((b, _)) = BINARY.iter().find(|(_, n)| *n == name) {
            return Ok(Op::Binary(*b));
        }
        if let Some((c, _)) = CMP.iter().find(|(_, n)| *n == name) {
            return Ok(Op::Compare(*c));
        }
        if let Some((l, _)) = LOGIC.iter().find(|(_, n)| *n == name) {
            return Ok(Op::Logical(*l));
        }
        if let Some((kind, _)) = ACTS.iter().find(|(_, n)| *n == name) {
            return Ok(Op::Act {
                kind: *kind,
                alpha: get("alpha")?.float()?,
                beta: get("beta")?.float()?,
            });
        }
        match name {
            "not" => return Ok(Op::Not),
            "is_nan" => return Ok(Op::IsNaN),
            "is_inf" => {
                return Ok(Op::IsInf {
                    pos: flag("pos")?,
                    neg: flag("neg")?,
                });
            }
            "arg_max" | "arg_min" => {
                return Ok(Op::ArgExtreme {
                    max: name == "arg_max",
                    axis: get("axis")?.uint()?,
                    keepdims: flag("keepdims")?,
                    select_last: flag("select_last")?,
                });
            }
            "where" => return Ok(Op::Where),
            _ => {}
        }
        let pool = || -> Result<PoolAttrs, String> {
            Ok(PoolAttrs {
                kernel: get("kernel")?.uints()?,
                strides: get("strides")?.uints()?,
                pads: get("pads")?.uints()?,
                dilations: get("dilations")?.uints()?,
                ceil_mode: flag("ceil_mode")?,
                count_include_pad: if name == "average_pool" {
                    flag("count_include_pad")?
                } else {
                    false
                },
            })
        };
        Ok(match name {
            "conv" => Op::Conv(ConvAttrs {
                kernel: get("kernel")?.uints()?,
                strides: get("strides")?.uints()?,
                pads: get("pads")?.uints()?,
                dilations: get("dilations")?.uints()?,
                groups: get("groups")?.uint()?,
                epilogue: match attrs.iter().find(|(n, _)| n == "epilogue") {
                    Some((_, a)) => parse_epilogue(a.str()?)?,
                    None => Vec::new(),
                },
                layout: match attrs.iter().find(|(n, _)| n == "layout") {
                    Some((_, a)) => a.str()?.parse()?,
                    None => Layout::Plain,
                },
            }),
            "conv_transpose" => Op::ConvTranspose(ConvTransposeAttrs {
                kernel: get("kernel")?.uints()?,
                strides: get("strides")?.uints()?,
                pads: get("pads")?.uints()?,
                dilations: get("dilations")?.uints()?,
                groups: get("groups")?.uint()?,
                output_padding: get("output_padding")?.uints()?,
            }),
            "gemm" => Op::Gemm(GemmAttrs {
                alpha: get("alpha")?.float()?,
                beta: get("beta")?.float()?,
                trans_a: flag("trans_a")?,
                trans_b: flag("trans_b")?,
                epilogue: match attrs.iter().find(|(n, _)| n == "epilogue") {
                    Some((_, a)) => parse_epilogue(a.str()?)?,
                    None => Vec::new(),
                },
            }),
            "chain" => Op::Chain {
                steps: parse_epilogue(get("steps")?.str()?)?,
            },
            "matmul" => Op::MatMul(MatMulAttrs {
                epilogue: match attrs.iter().find(|(n, _)| n == "epilogue") {
                    Some((_, a)) => parse_epilogue(a.str()?)?,
                    None => Vec::new(),
                },
            }),
            "clip" => Op::Clip {
                min: get("min")?.float()?,
                max: get("max")?.float()?,
            },
            "batch_norm" => Op::BatchNorm {
                epsilon: get("epsilon")?.float()?,
            },
            "max_pool" => Op::MaxPool(pool()?),
            "max_pool_indices" => Op::MaxPoolIndices {
                attrs: pool()?,
                storage_order: flag("storage_order")?,
            },
            "average_pool" => Op::AveragePool(pool()?),
            "global_average_pool" => Op::GlobalAveragePool,
            "reshape" => Op::Reshape {
                shape: get("shape")?.uints()?,
            },
            "relayout" => Op::Relayout {
                to: get("to")?.str()?.parse()?,
            },
            "transpose" => Op::Transpose {
                perm: get("perm")?.uints()?,
            },
            "expand" => Op::Expand {
                shape: get("shape")?.uints()?,
            },
            "concat" => Op::Concat {
                axis: get("axis")?.uint()?,
            },
            "split" => Op::Split {
                axis: get("axis")?.uint()?,
                sizes: get("sizes")?.uints()?,
            },
            "slice" => Op::Slice(SliceAttrs {
                starts: get("starts")?.uints()?,
                steps: get("steps")?.ints()?,
                sizes: get("sizes")?.uints()?,
            }),
            "layer_norm" => Op::LayerNorm {
                axis: get("axis")?.uint()?,
                epsilon: get("epsilon")?.float()?,
            },
            "softmax" | "log_softmax" | "hardmax" => Op::Softmax {
                axis: get("axis")?.uint()?,
                kind: match name {
                    "softmax" => SoftmaxKind::Softmax,
                    "log_softmax" => SoftmaxKind::LogSoftmax,
                    _ => SoftmaxKind::Hardmax,
                },
            },
            "gather" => Op::Gather {
                axis: get("axis")?.uint()?,
            },
            "gather_elements" => Op::GatherElements {
                axis: get("axis")?.uint()?,
            },
            "scatter_elements" | "scatter_nd" => {
                let r = get("reduction")?.str()?;
                let reduction = ScatterReduction::from_name(r)
                    .ok_or_else(|| format!("unknown reduction '{r}'"))?;
                if name == "scatter_nd" {
                    Op::ScatterND { reduction }
                } else {
                    Op::ScatterElements {
                        axis: get("axis")?.uint()?,
                        reduction,
                    }
                }
            }
            "gather_nd" => Op::GatherND {
                batch_dims: get("batch_dims")?.uint()?,
            },
            _ if ReduceKind::from_name(name).is_some() => Op::Reduce {
                kind: ReduceKind::from_name(name).unwrap(),
                axes: get("axes")?.uints()?,
                keepdims: flag("keepdims")?,
            },
            "resize" => Op::Resize(ResizeAttrs {
                mode: match get("mode")?.str()? {
                    "nearest" => ResizeMode::Nearest,
                    "linear" => ResizeMode::Linear,
                    m => return Err(format!("unknown resize mode '{m}'")),
                },
                coord: CoordTransform::from_name(get("coord")?.str()?)
                    .ok_or("unknown coordinate transform")?,
                nearest: NearestMode::from_name(get("nearest")?.str()?)
                    .ok_or("unknown nearest mode")?,
                scales: get("scales")?.floats()?,
                out_shape: get("out_shape")?.uints()?,
            }),
            "pad" => {
                let m = get("mode")?.str()?;
                Op::Pad {
                    pads: get("pads")?.ints()?,
                    mode: PadMode::from_name(m).ok_or_else(|| format!("unknown pad mode '{m}'"))?,
                    value: get("value")?.float()? as f64,
                }
            }
            "resample" => Op::Resample {
                axis: get("axis")?.uint()?,
                fill: get("fill")?.float()?,
            },
            "cum_sum" | "cum_prod" => Op::CumSum {
                axis: get("axis")?.uint()?,
                exclusive: flag("exclusive")?,
                reverse: flag("reverse")?,
                prod: name == "cum_prod",
            },
            "top_k" => Op::TopK {
                axis: get("axis")?.uint()?,
                k: get("k")?.uint()?,
                largest: flag("largest")?,
            },
            "if" | "loop" => {
                return Err(format!(
                    "op '{name}' needs its sub-graphs (see Op::from_parts_with_bodies)"
                ));
            }
            "cast" | "bit_cast" => {
                let s = get("to")?.str()?;
                let to = DType::from_name(s).ok_or_else(|| format!("unknown dtype '{s}'"))?;
                if name == "cast" {
                    Op::Cast { to }
                } else {
                    Op::BitCast { to }
                }
            }
            _ => return Err(format!("unknown op '{name}'")),
        })
    }

    /// Shape and type inference: output types from input types, layouts included (see
    /// [`Self::layouts`]). Errors are plain messages; the caller adds the node name.
    ///
    /// Every input and output type is checked against [`crate::limits`]: an output too large
    /// for the size policy is an error of the node that computes it.
    pub fn infer(&self, ins: &[&TensorType]) -> Result<Vec<TensorType>, String> {
        let mut out = self.infer_logical(ins)?;
        let layouts = self.layouts(ins, &out)?;
        for (t, l) in out.iter_mut().zip(layouts) {
            t.layout = l;
        }
        Ok(out)
    }

    /// The layout rule: which physical layouts the op reads and which it writes. Layouts never
    /// change values, only where they are stored: every op reads plain (row-major) tensors and
    /// writes plain outputs, except
    /// - `conv`: input 0 in any activation layout (plain, channel-blocked, NC1HWC0), the
    ///   filter plain or in FRACTAL_Z of the convolution's groups, output in
    ///   [`ConvAttrs::layout`], a residual in the output's layout;
    /// - `gemm`/`matmul`: the right operand plain or FRACTAL_NZ (a packed constant);
    /// - elementwise ops (and `chain`): any layout when every operand with more than one
    ///   element has the output's shape and one common layout (no broadcasting through a
    ///   blocked layout); the output takes it;
    /// - `max_pool`/`average_pool`: the input's layout;
    /// - `global_average_pool`: a blocked input, a plain output (a `[N,C,1,1]` tensor is
    ///   stored the same way in both);
    /// - `concat`/`split` along the channels (axis 1): every operand in one layout (each part's
    ///   channels a multiple of the block);
    /// - `relayout`: any input layout, output `to`.
    ///
    /// Every layout must fit its tensor ([`Layout::fits`]): a blocked layout `Nchwc(c)` needs
    /// a rank-4 tensor whose channels are a multiple of `c`; the weight layouts (FRACTAL_Z,
    /// FRACTAL_NZ) appear only where a weight is read.
    pub fn layouts(&self, ins: &[&TensorType], outs: &[TensorType]) -> Result<Vec<Layout>, String> {
        let valid = |t: &TensorType, l: Layout| -> Result<(), String> {
            if l.fits(t) {
                return Ok(());
            }
            Err(match l {
                Layout::Nchwc(_) => format!(
                    "layout {l} needs a rank-4 tensor whose channels are a multiple of the block, got {}",
                    t.with_layout(Layout::Plain)
                ),
                _ => format!("layout {l} does not fit {}", t.with_layout(Layout::Plain)),
            })
        };
        for t in ins {
            valid(t, t.layout)?;
        }
        // inputs `from..to` (clipped to the inputs there are) must be plain
        let plain_only = |from: usize, to: usize| -> Result<(), String> {
            match ins
                .iter()
                .enumerate()
                .take(to)
                .skip(from)
                .find(|(_, t)| !t.layout.is_plain())
            {
                Some((i, t)) => Err(format!(
                    "{} reads input {i} in the plain layout, got {t}",
                    self.name()
                )),
                None => Ok(()),
            }
        };
        let all = |l: Layout| Ok(vec![l; outs.len()]);
        match self {
            Op::Relayout { to } => {
                valid(&outs[0], *to)?;
                all(*to)
            }
            Op::Conv(a) => {
                // a filter in FRACTAL_Z with the convolution's groups, plain bias
                match ins[1].layout {
                    Layout::Plain => {}
                    Layout::FractalZ { groups, .. } if groups as usize == a.groups => {}
                    l => {
                        return Err(format!(
                            "conv reads its filter plain or in FRACTAL_Z of {} groups, got {l}",
                            a.groups
                        ));
                    }
                }
                plain_only(2, 3)?;
                if !ins[0].layout.is_activation() || !a.layout.is_activation() {
                    return Err(format!(
                        "conv input {} / output layout {}: not an activation layout",
                        ins[0], a.layout
                    ));
                }
                if !a.layout.is_plain() && a.kernel.len() != 2 {
                    return Err(format!("layout {} needs a 2-D convolution", a.layout));
                }
                valid(&outs[0], a.layout)?;
                if ins.len() == 4 && ins[3].layout != a.layout {
                    return Err(format!(
                        "the residual {} must be in the output's layout {}",
                        ins[3], a.layout
                    ));
                }
                all(a.layout)
            }
            // a constant right operand packed as FRACTAL_NZ
            Op::Gemm(_) | Op::MatMul(_) if matches!(ins[1].layout, Layout::FractalNz(_)) => {
                plain_only(0, 1)?;
                plain_only(2, ins.len())?;
                all(Layout::Plain)
            }
            _ if self.is_elementwise() => {
                let big: Vec<&&TensorType> = ins.iter().filter(|t| t.numel() > 1).collect();
                let l = big.first().map_or(Layout::Plain, |t| t.layout);
                if !l.is_activation() {
                    return Err(format!("{} on weight layout {l}", self.name()));
                }
                if !l.is_plain()
                    && big
                        .iter()
                        .any(|t| t.layout != l || t.shape != outs[0].shape)
                {
                    return Err(format!(
                        "{} on layout {l} needs every operand in it with the output's shape",
                        self.name()
                    ));
                }
                if l.is_plain() {
                    plain_only(0, ins.len())?;
                }
                all(l)
            }
            Op::MaxPool(a) | Op::AveragePool(a) => {
                if !ins[0].layout.is_activation() {
                    return Err(format!(
                        "{} on weight layout {}",
                        self.name(),
                        ins[0].layout
                    ));
                }
                if !ins[0].layout.is_plain() && a.kernel.len() != 2 {
                    return Err(format!("layout {} needs a 2-D pool", ins[0].layout));
                }
                all(ins[0].layout)
            }
            Op::GlobalAveragePool if !ins[0].layout.is_activation() => Err(format!(
                "global_average_pool on weight layout {}",
                ins[0].layout
            )),
            Op::GlobalAveragePool => all(Layout::Plain),
            // along the channels, a channel-blocked part is a run of whole blocks, stored
            // where the plain part would be
            Op::Concat { axis: 1 } | Op::Split { axis: 1, .. } if !ins[0].layout.is_plain() => {
                let l = ins[0].layout;
                if ins.iter().any(|t| t.layout != l) {
                    return Err(format!("{} operands in different layouts", self.name()));
                }
                for t in outs {
                    valid(t, l)?;
                }
                // NC1HWC0 parts pad their channels: only whole blocks are stored contiguously
                if let Layout::Nc1hwc0(c0) = l
                    && ins
                        .iter()
                        .copied()
                        .chain(outs)
                        .any(|t| !t.shape[1].is_multiple_of(c0 as usize))
                {
                    return Err(format!(
                        "{} along the channels in {l} needs every part's channels a multiple of {c0}",
                        self.name()
                    ));
                }
                all(l)
            }
            _ => {
                plain_only(0, ins.len())?;
                all(Layout::Plain)
            }
        }
    }

    /// Shape and dtype inference alone: every output `Plain` (the interpreter, which holds
    /// every tensor in its logical order whatever its layout, uses this).
    pub fn infer_logical(&self, ins: &[&TensorType]) -> Result<Vec<TensorType>, String> {
        for (i, t) in ins.iter().enumerate() {
            crate::limits::check_type(t).map_err(|e| format!("input {i}: {e}"))?;
        }
        let mut out = self.infer_shapes(ins)?;
        for (i, t) in out.iter_mut().enumerate() {
            t.layout = Layout::Plain;
            crate::limits::check_type(t).map_err(|e| format!("output {i}: {e}"))?;
        }
        Ok(out)
    }

    fn infer_shapes(&self, ins: &[&TensorType]) -> Result<Vec<TensorType>, String> {
        let arity = |lo: usize, hi: usize| -> Result<(), String> {
            if ins.len() < lo || ins.len() > hi {
                Err(format!("expects {lo}..={hi} inputs, got {}", ins.len()))
            } else {
                Ok(())
            }
        };
        let float_in = |i: usize| -> Result<(), String> {
            if ins[i].dtype.is_float() {
                Ok(())
            } else {
                Err(format!("input {i} must be a float tensor, got {}", ins[i]))
            }
        };
        match self {
            Op::Conv(_) | Op::Gemm(_) | Op::MatMul(_)
                if self
                    .epilogue_steps()
                    .is_some_and(|e| e.contains(&EpilogueStep::Mul)) =>
            {
                Err(format!("a {} epilogue has no mul step", self.name()))
            }
            Op::Chain { steps } => {
                let operands = steps.iter().filter(|s| s.is_binary()).count();
                arity(1 + operands, 1 + operands)?;
                let x = ins[0];
                if x.dtype != DType::F32 {
                    return Err(format!("a chain runs on f32, got {x}"));
                }
                for (i, t) in ins.iter().enumerate().skip(1) {
                    if t.dtype != x.dtype
                        || broadcast_shapes(&t.shape, &x.shape).ok().as_ref() != Some(&x.shape)
                    {
                        return Err(format!(
                            "chain operand {} ({t}) does not broadcast to {x}",
                            i - 1
                        ));
                    }
                }
                Ok(vec![x.clone()])
            }
            Op::Conv(a) => {
                let residual = a
                    .epilogue
                    .iter()
                    .filter(|s| **s == EpilogueStep::Add)
                    .count();
                if residual > 1 {
                    return Err("an epilogue adds at most one residual".into());
                }
                if residual == 1 {
                    arity(4, 4)?;
                    if !ins[0].dtype.is_float() {
                        return Err(format!(
                            "a fused epilogue needs a float conv, got {}",
                            ins[0]
                        ));
                    }
                } else {
                    arity(2, 3)?;
                }
                if residual == 0 && !a.epilogue.is_empty() && !ins[0].dtype.is_float() {
                    return Err(format!(
                        "a fused epilogue needs a float conv, got {}",
                        ins[0]
                    ));
                }
                // floats, or integers for exact integer convolution (ConvInteger)
                if ins[0].dtype == DType::Bool || ins[1].dtype != ins[0].dtype {
                    return Err(format!(
                        "conv operands {} and {} must share a numeric type",
                        ins[0], ins[1]
                    ));
                }
                let (x, w) = (ins[0], ins[1]);
                let sp = a.kernel.len();
                check_spatial(x, sp, &a.strides, &a.pads, &a.dilations)?;
                if a.kernel.contains(&0) {
                    return Err(format!("kernel {:?} has a zero dimension", a.kernel));
                }
                if w.rank() != sp + 2 || w.shape[2..] != a.kernel[..] {
                    return Err(format!("weight {w} does not match kernel {:?}", a.kernel));
                }
                if a.groups == 0
                    || x.shape[1] % a.groups != 0
                    || w.shape[0] % a.groups != 0
                    || w.shape[1].checked_mul(a.groups) != Some(x.shape[1])
                {
                    return Err(format!(
                        "channels: input {x}, weight {w}, groups {}",
                        a.groups
                    ));
                }
                if ins.len() >= 3 && ins[2].shape != [w.shape[0]] {
                    return Err(format!("bias {} must be [{}]", ins[2], w.shape[0]));
                }
                let mut out = vec![x.shape[0], w.shape[0]];
                for d in 0..sp {
                    let ext = window_extent(a.kernel[d], a.dilations[d])?;
                    let padded = padded_dim(x.shape[2 + d], a.pads[d], a.pads[sp + d])?;
                    if padded < ext {
                        return Err(format!(
                            "kernel extent {ext} exceeds padded input {padded} in spatial dim {d}"
                        ));
                    }
                    out.push((padded - ext) / a.strides[d] + 1);
                }
                if ins.len() == 4 && (ins[3].shape != out || ins[3].dtype != x.dtype) {
                    return Err(format!(
                        "residual {} must match the output {}",
                        ins[3],
                        x.with_shape(out)
                    ));
                }
                Ok(vec![x.with_shape(out)])
            }
            Op::ConvTranspose(a) => {
                arity(2, 3)?;
                float_in(0)?;
                let (x, w) = (ins[0], ins[1]);
                let sp = a.kernel.len();
                check_spatial(x, sp, &a.strides, &a.pads, &a.dilations)?;
                if a.kernel.contains(&0) {
                    return Err(format!("kernel {:?} has a zero dimension", a.kernel));
                }
                if w.rank() != sp + 2 || w.shape[2..] != a.kernel[..] || w.shape[0] != x.shape[1] {
                    return Err(format!(
                        "weight {w} does not match input {x} / kernel {:?}",
                        a.kernel
                    ));
                }
                if a.groups == 0 || x.shape[1] % a.groups != 0 || a.output_padding.len() != sp {
                    return Err("bad groups or output_padding".into());
                }
                let m = limits::mul(w.shape[1], a.groups, "output channels")?;
                if ins.len() == 3 && ins[2].shape != [m] {
                    return Err(format!("bias {} must be [{m}]", ins[2]));
                }
                let mut out = vec![x.shape[0], m];
                for d in 0..sp {
                    let what = "transposed convolution output";
                    let full = limits::mul(a.strides[d], x.shape[2 + d] - 1, what)?;
                    let full = limits::add(full, a.output_padding[d], what)?;
                    let full =
                        limits::add(full, window_extent(a.kernel[d], a.dilations[d])?, what)?;
                    let p = limits::add(a.pads[d], a.pads[sp + d], "pads")?;
                    if full <= p {
                        return Err("pads remove the whole output".into());
                    }
                    out.push(full - p);
                }
                Ok(vec![x.with_shape(out)])
            }
            Op::Gemm(a) => {
                arity(2, 3)?;
                float_in(0)?;
                if a.epilogue.contains(&EpilogueStep::Add) {
                    return Err("a gemm epilogue has no add step (its bias is C)".into());
                }
                let (x, y) = (ins[0], ins[1]);
                if x.rank() != 2 || y.rank() != 2 {
                    return Err(format!("gemm needs 2-D operands, got {x} and {y}"));
                }
                let (m, k) = if a.trans_a {
                    (x.shape[1], x.shape[0])
                } else {
                    (x.shape[0], x.shape[1])
                };
                let (k2, n) = if a.trans_b {
                    (y.shape[1], y.shape[0])
                } else {
                    (y.shape[0], y.shape[1])
                };
                if k != k2 {
                    return Err(format!("inner dimensions differ: {x} x {y}"));
                }
                if ins.len() == 3 {
                    let b = broadcast_shapes(&ins[2].shape, &[m, n])?;
                    if b != [m, n] {
                        return Err(format!("c {} does not broadcast to [{m},{n}]", ins[2]));
                    }
                }
                Ok(vec![x.with_shape(vec![m, n])])
            }
            Op::MatMul(a) => {
                let operands = a.operand_count();
                if operands > MATMUL_EPILOGUE_OPERANDS {
                    return Err(format!(
                        "a matmul epilogue reads at most {MATMUL_EPILOGUE_OPERANDS} operands"
                    ));
                }
                arity(2 + operands, 2 + operands)?;
                let out = ins[0].with_shape(matmul_shape(&ins[0].shape, &ins[1].shape)?);
                if !a.epilogue.is_empty() {
                    if !out.dtype.is_float() || ins[1].dtype != out.dtype {
                        return Err(format!("a fused epilogue needs a float matmul, got {out}"));
                    }
                    if ins[0].shape.len() < 2 || ins[1].shape.len() < 2 {
                        return Err("a matmul with an epilogue needs operands of rank >= 2".into());
                    }
                }
                for (i, t) in ins.iter().enumerate().skip(2) {
                    if t.dtype != out.dtype
                        || broadcast_shapes(&t.shape, &out.shape).ok().as_ref() != Some(&out.shape)
                    {
                        return Err(format!(
                            "epilogue operand {} ({t}) does not broadcast to {out}",
                            i - 2
                        ));
                    }
                }
                Ok(vec![out])
            }
            Op::Binary(_) => {
                arity(2, 2)?;
                if ins[0].dtype != ins[1].dtype {
                    return Err(format!("operand types differ: {} vs {}", ins[0], ins[1]));
                }
                Ok(vec![ins[0].with_shape(broadcast_shapes(
                    &ins[0].shape,
                    &ins[1].shape,
                )?)])
            }
            Op::Compare(_) | Op::Logical(_) => {
                arity(2, 2)?;
                if ins[0].dtype != ins[1].dtype {
                    return Err(format!("operand types differ: {} vs {}", ins[0], ins[1]));
                }
                if matches!(self, Op::Logical(_)) && ins[0].dtype != DType::Bool {
                    return Err(format!("logical ops need bool operands, got {}", ins[0]));
                }
                let shape = broadcast_shapes(&ins[0].shape, &ins[1].shape)?;
                Ok(vec![TensorType::new(DType::Bool, shape)])
            }
            Op::ArgExtreme { axis, keepdims, .. } => {
                arity(1, 1)?;
                let x = ins[0];
                if *axis >= x.rank() || x.shape[*axis] == 0 {
                    return Err(format!("axis {axis} out of range (or empty) for {x}"));
                }
                let mut shape = x.shape.clone();
                if *keepdims {
                    shape[*axis] = 1;
                } else {
                    shape.remove(*axis);
                }
                Ok(vec![TensorType::new(DType::I64, shape)])
            }
            Op::Not => {
                arity(1, 1)?;
                if ins[0].dtype != DType::Bool {
                    return Err(format!("not needs a bool operand, got {}", ins[0]));
                }
                Ok(vec![ins[0].clone()])
            }
            Op::Where => {
                arity(3, 3)?;
                if ins[0].dtype != DType::Bool || ins[1].dtype != ins[2].dtype {
                    return Err(format!(
                        "where needs (bool, T, T), got ({}, {}, {})",
                        ins[0], ins[1], ins[2]
                    ));
                }
                let s = broadcast_shapes(&ins[0].shape, &ins[1].shape)?;
                let s = broadcast_shapes(&s, &ins[2].shape)?;
                Ok(vec![ins[1].with_shape(s)])
            }
            Op::Unary(_) | Op::Clip { .. } | Op::Act { .. } => {
                arity(1, 1)?;
                Ok(vec![ins[0].clone()])
            }
            Op::IsNaN | Op::IsInf { .. } => {
                arity(1, 1)?;
                float_in(0)?;
                Ok(vec![ins[0].with_dtype(DType::Bool)])
            }
            Op::BatchNorm { .. } => {
                arity(5, 5)?;
                float_in(0)?;
                let x = ins[0];
                if x.rank() < 2 {
                    return Err(format!("input {x} needs a channel dim"));
                }
                for (i, p) in ins[1..].iter().enumerate() {
                    if p.shape != [x.shape[1]] {
                        return Err(format!(
                            "parameter {} is {p}, expected [{}]",
                            i + 1,
                            x.shape[1]
                        ));
                    }
                }
                Ok(vec![x.clone()])
            }
            Op::MaxPoolIndices { attrs, .. } => {
                let t = Op::MaxPool(attrs.clone()).infer(ins)?;
                Ok(vec![t[0].with_dtype(DType::I64)])
            }
            Op::MaxPool(a) | Op::AveragePool(a) => {
                arity(1, 1)?;
                let x = ins[0];
                let sp = a.kernel.len();
                check_spatial(x, sp, &a.strides, &a.pads, &a.dilations)?;
                let mut out = vec![x.shape[0], x.shape[1]];
                for d in 0..sp {
                    out.push(pool_out_dim(
                        x.shape[2 + d],
                        a.kernel[d],
                        a.strides[d],
                        a.pads[d],
                        a.pads[sp + d],
                        a.dilations[d],
                        a.ceil_mode,
                    )?);
                }
                Ok(vec![x.with_shape(out)])
            }
            Op::GlobalAveragePool => {
                arity(1, 1)?;
                let x = ins[0];
                if x.rank() < 3 {
                    return Err(format!("input {x} needs spatial dims"));
                }
                let mut out = x.shape[..2].to_vec();
                out.extend(std::iter::repeat_n(1, x.rank() - 2));
                Ok(vec![x.with_shape(out)])
            }
            Op::Relayout { .. } => {
                arity(1, 1)?;
                Ok(vec![ins[0].clone()])
            }
            Op::Reshape { shape } => {
                arity(1, 1)?;
                if limits::numel(shape) != Some(ins[0].numel()) {
                    return Err(format!("cannot reshape {} to {shape:?}", ins[0]));
                }
                Ok(vec![ins[0].with_shape(shape.clone())])
            }
            Op::Expand { shape } => {
                arity(1, 1)?;
                Ok(vec![
                    ins[0].with_shape(broadcast_shapes(&ins[0].shape, shape)?),
                ])
            }
            Op::Transpose { perm } => {
                arity(1, 1)?;
                let x = ins[0];
                let mut seen = vec![false; x.rank()];
                if perm.len() != x.rank()
                    || perm
                        .iter()
                        .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!(
                        "perm {perm:?} is not a permutation of rank {}",
                        x.rank()
                    ));
                }
                Ok(vec![x.with_shape(
                    perm.iter().map(|&p| x.shape[p]).collect::<Vec<_>>(),
                )])
            }
            Op::Concat { axis } => {
                if ins.is_empty() {
                    return Err("concat needs inputs".into());
                }
                let first = ins[0];
                if *axis >= first.rank() {
                    return Err(format!("axis {axis} out of range for {first}"));
                }
                let mut out = first.shape.clone();
                out[*axis] = 0;
                for t in ins {
                    if t.rank() != first.rank()
                        || t.dtype != first.dtype
                        || (0..t.rank()).any(|d| d != *axis && t.shape[d] != first.shape[d])
                    {
                        return Err(format!(
                            "input {t} does not match {first} outside axis {axis}"
                        ));
                    }
                    out[*axis] = limits::add(out[*axis], t.shape[*axis], "concat length")?;
                }
                Ok(vec![first.with_shape(out)])
            }
            Op::Split { axis, sizes } => {
                arity(1, 1)?;
                let x = ins[0];
                if *axis >= x.rank()
                    || sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s))
                        != Some(x.shape[*axis])
                {
                    return Err(format!(
                        "split sizes {sizes:?} along axis {axis} do not match {x}"
                    ));
                }
                Ok(sizes
                    .iter()
                    .map(|&s| {
                        let mut sh = x.shape.clone();
                        sh[*axis] = s;
                        x.with_shape(sh)
                    })
                    .collect())
            }
            Op::Slice(a) => {
                arity(1, 1)?;
                let x = ins[0];
                if a.starts.len() != x.rank()
                    || a.steps.len() != x.rank()
                    || a.sizes.len() != x.rank()
                {
                    return Err(format!("slice attributes must have rank {}", x.rank()));
                }
                for d in 0..x.rank() {
                    if a.steps[d] == 0 {
                        return Err("slice step 0".into());
                    }
                    if a.sizes[d] > 0 {
                        let last = i64::try_from(a.sizes[d] - 1)
                            .ok()
                            .and_then(|n| n.checked_mul(a.steps[d]))
                            .and_then(|o| o.checked_add(a.starts[d] as i64));
                        if a.starts[d] >= x.shape[d]
                            || last.is_none_or(|l| l < 0 || l >= x.shape[d] as i64)
                        {
                            return Err(format!(
                                "slice of dim {d} reads outside 0..{}",
                                x.shape[d]
                            ));
                        }
                    }
                }
                Ok(vec![x.with_shape(a.sizes.clone())])
            }
            Op::LayerNorm { axis, .. } => {
                arity(1, 3)?;
                float_in(0)?;
                let x = ins[0];
                if *axis >= x.rank() {
                    return Err(format!("axis {axis} out of range for {x}"));
                }
                let row = strip_ones(&x.shape[*axis..]);
                for (i, t) in ins.iter().enumerate().skip(1) {
                    if t.dtype != x.dtype || strip_ones(&t.shape) != row {
                        return Err(format!(
                            "layer_norm {} {t} does not match the rows {:?} of {x}",
                            if i == 1 { "scale" } else { "bias" },
                            &x.shape[*axis..]
                        ));
                    }
                }
                Ok(vec![x.clone()])
            }
            Op::Softmax { axis, .. } => {
                arity(1, 1)?;
                float_in(0)?;
                if *axis >= ins[0].rank() {
                    return Err(format!("axis {axis} out of range for {}", ins[0]));
                }
                Ok(vec![ins[0].clone()])
            }
            Op::Gather { axis } => {
                arity(2, 2)?;
                let (x, idx) = (ins[0], ins[1]);
                index_type(idx)?;
                if *axis >= x.rank() {
                    return Err(format!("axis {axis} out of range for {x}"));
                }
                let mut shape = x.shape[..*axis].to_vec();
                shape.extend_from_slice(&idx.shape);
                shape.extend_from_slice(&x.shape[axis + 1..]);
                Ok(vec![x.with_shape(shape)])
            }
            Op::GatherElements { axis } => {
                arity(2, 2)?;
                let (x, idx) = (ins[0], ins[1]);
                index_type(idx)?;
                if *axis >= x.rank() || idx.rank() != x.rank() {
                    return Err(format!("indices {idx} do not match data {x} (axis {axis})"));
                }
                Ok(vec![x.with_shape(idx.shape.clone())])
            }
            Op::ScatterElements { axis, .. } => {
                arity(3, 3)?;
                let (x, idx, upd) = (ins[0], ins[1], ins[2]);
                index_type(idx)?;
                if *axis >= x.rank()
                    || idx.rank() != x.rank()
                    || upd.shape != idx.shape
                    || upd.dtype != x.dtype
                {
                    return Err(format!(
                        "scatter_elements: data {x}, indices {idx}, updates {upd}"
                    ));
                }
                Ok(vec![x.clone()])
            }
            Op::GatherND { batch_dims } => {
                arity(2, 2)?;
                let (x, idx) = (ins[0], ins[1]);
                index_type(idx)?;
                let b = *batch_dims;
                let q = idx.rank();
                let k = *idx.shape.last().unwrap_or(&0);
                if q == 0 || b >= q || b + k > x.rank() || x.shape[..b] != idx.shape[..b] {
                    return Err(format!(
                        "gather_nd: data {x}, indices {idx}, batch_dims {b}"
                    ));
                }
                let mut shape = idx.shape[..q - 1].to_vec();
                shape.extend_from_slice(&x.shape[b + k..]);
                Ok(vec![x.with_shape(shape)])
            }
            Op::ScatterND { .. } => {
                arity(3, 3)?;
                let (x, idx, upd) = (ins[0], ins[1], ins[2]);
                index_type(idx)?;
                let q = idx.rank();
                let k = *idx.shape.last().unwrap_or(&0);
                let mut want = idx.shape[..q.max(1) - 1].to_vec();
                if k <= x.rank() {
                    want.extend_from_slice(&x.shape[k..]);
                }
                if q == 0 || k > x.rank() || upd.shape != want || upd.dtype != x.dtype {
                    return Err(format!(
                        "scatter_nd: data {x}, indices {idx}, updates {upd}"
                    ));
                }
                Ok(vec![x.clone()])
            }
            Op::Reduce { axes, keepdims, .. } => {
                arity(1, 1)?;
                let x = ins[0];
                if axes.iter().any(|&a| a >= x.rank()) {
                    return Err(format!("axes {axes:?} out of range for {x}"));
                }
                let mut out = Vec::new();
                for d in 0..x.rank() {
                    if axes.contains(&d) {
                        if *keepdims {
                            out.push(1);
                        }
                    } else {
                        out.push(x.shape[d]);
                    }
                }
                Ok(vec![x.with_shape(out)])
            }
            Op::Resize(a) => {
                arity(1, 1)?;
                let x = ins[0];
                if a.out_shape.len() != x.rank() || a.scales.len() != x.rank() {
                    return Err(format!(
                        "resize output shape {:?} must have rank {}",
                        a.out_shape,
                        x.rank()
                    ));
                }
                Ok(vec![x.with_shape(a.out_shape.clone())])
            }
            Op::Cast { to } => {
                arity(1, 1)?;
                Ok(vec![ins[0].with_dtype(*to)])
            }
            Op::BitCast { to } => {
                arity(1, 1)?;
                let x = ins[0];
                let (a, b) = (x.dtype.size(), to.size());
                let mut shape = x.shape.clone();
                if a > b {
                    shape.push(a / b);
                } else if a < b {
                    if shape.last() != Some(&(b / a)) {
                        return Err(format!(
                            "bit_cast {x} to {to}: the last dim must be {}",
                            b / a
                        ));
                    }
                    shape.pop();
                }
                Ok(vec![TensorType::new(*to, shape)])
            }
            Op::Pad { pads, .. } => {
                arity(1, 1)?;
                let x = ins[0];
                let r = x.rank();
                if pads.len() != 2 * r {
                    return Err(format!("pads must have {} entries for {x}", 2 * r));
                }
                let mut shape = Vec::with_capacity(r);
                for d in 0..r {
                    let n = (x.shape[d] as i64)
                        .checked_add(pads[d])
                        .and_then(|n| n.checked_add(pads[r + d]))
                        .ok_or_else(|| format!("pads {pads:?} of {x} overflow"))?;
                    if n < 0 {
                        return Err(format!("pads {pads:?} remove more than dim {d} of {x}"));
                    }
                    shape.push(n as usize);
                }
                Ok(vec![x.with_shape(shape)])
            }
            Op::Resample { axis, .. } => {
                arity(3, 3)?;
                float_in(0)?;
                let (x, idx, w) = (ins[0], ins[1], ins[2]);
                if *axis >= x.rank()
                    || idx.dtype != DType::I32
                    || w.dtype != DType::F32
                    || idx.rank() != 2
                    || w.shape != idx.shape
                {
                    return Err(format!("resample: data {x}, indices {idx}, weights {w}"));
                }
                if x.shape[*axis] == 0 {
                    return Err(format!("resample: axis {axis} of {x} is empty"));
                }
                let mut shape = x.shape.clone();
                shape[*axis] = idx.shape[0];
                Ok(vec![x.with_shape(shape)])
            }
            Op::CumSum { axis, .. } => {
                arity(1, 1)?;
                if *axis >= ins[0].rank() {
                    return Err(format!("axis {axis} out of range for {}", ins[0]));
                }
                Ok(vec![ins[0].clone()])
            }
            Op::If(b) => infer_if(b, ins),
            Op::Loop(l) => infer_loop(l, ins),
            Op::TopK { axis, k, .. } => {
                arity(1, 1)?;
                let x = ins[0];
                if *axis >= x.rank() || *k > x.shape[*axis] {
                    return Err(format!("top_k: k={k} along axis {axis} of {x}"));
                }
                let mut shape = x.shape.clone();
                shape[*axis] = *k;
                Ok(vec![
                    x.with_shape(shape.clone()),
                    TensorType::new(DType::I64, shape),
                ])
            }
        }
    }
}

/// One element of `dtype` (a scalar or a one-element tensor: trip counts, conditions).
fn one_of(t: &TensorType, dtype: DType, what: &str) -> Result<(), String> {
    if t.dtype != dtype || t.numel() != 1 {
        return Err(format!("{what} must be one {dtype} element, got {t}"));
    }
    Ok(())
}

/// `have` (a node's operands or a body's interface) has the types `want`, in order (dtype and
/// shape; sub-graph interfaces are plain).
fn same_types<'a>(
    have: impl ExactSizeIterator<Item = &'a TensorType>,
    want: impl ExactSizeIterator<Item = &'a TensorType>,
    what: &str,
) -> Result<(), String> {
    if have.len() != want.len() {
        return Err(format!(
            "{what}: {} values, {} expected",
            have.len(),
            want.len()
        ));
    }
    for (k, (h, w)) in have.zip(want).enumerate() {
        if h.dtype != w.dtype || h.shape != w.shape {
            return Err(format!("{what} {k}: {h}, the sub-graph has {w}"));
        }
    }
    Ok(())
}

fn infer_if(b: &Branches, ins: &[&TensorType]) -> Result<Vec<TensorType>, String> {
    let Some((cond, caps)) = ins.split_first() else {
        return Err("if needs a condition".into());
    };
    one_of(cond, DType::Bool, "the condition")?;
    for (g, name) in [(&b.then_branch, "then"), (&b.else_branch, "else")] {
        same_types(
            caps.iter().copied(),
            g.inputs.iter().map(|v| g.ty(*v)),
            &format!("captured value (the {name} branch's input)"),
        )?;
    }
    let (t, e) = (&b.then_branch, &b.else_branch);
    same_types(
        e.outputs.iter().map(|v| e.ty(*v)),
        t.outputs.iter().map(|v| t.ty(*v)),
        "else branch output (vs the then branch)",
    )?;
    Ok(t.outputs
        .iter()
        .map(|v| t.ty(*v).with_layout(Layout::Plain))
        .collect())
}

fn infer_loop(l: &LoopAttrs, ins: &[&TensorType]) -> Result<Vec<TensorType>, String> {
    let (g, n) = (&l.body, l.n_carried);
    if ins.len() < 2 + n {
        return Err(format!(
            "loop needs m, cond and {n} carried values, got {} inputs",
            ins.len()
        ));
    }
    one_of(ins[0], DType::I64, "the trip count m")?;
    one_of(ins[1], DType::Bool, "the condition")?;
    let bin: Vec<&TensorType> = g.inputs.iter().map(|v| g.ty(*v)).collect();
    let bout: Vec<&TensorType> = g.outputs.iter().map(|v| g.ty(*v)).collect();
    if bin.len() < 2 + n || bout.len() < 1 + n {
        return Err(format!(
            "the body takes {} inputs and yields {} outputs: it needs iter, cond and {n} carried values in, cond and {n} carried values out",
            bin.len(),
            bout.len()
        ));
    }
    one_of(bin[0], DType::I64, "the body's iteration number")?;
    one_of(bin[1], DType::Bool, "the body's condition input")?;
    one_of(bout[0], DType::Bool, "the body's condition output")?;
    same_types(
        ins[2..].iter().copied(),
        bin[2..].iter().copied(),
        "loop operand (carried or captured; the body's input)",
    )?;
    same_types(
        bout[1..1 + n].iter().copied(),
        bin[2..2 + n].iter().copied(),
        "carried value out of the body (vs in)",
    )?;
    let mut out: Vec<TensorType> = bin[2..2 + n]
        .iter()
        .map(|t| t.with_layout(Layout::Plain))
        .collect();
    for t in &bout[1 + n..] {
        let mut shape = vec![l.max_trip];
        shape.extend(&t.shape);
        out.push(TensorType::new(t.dtype, shape));
    }
    Ok(out)
}

fn check_spatial(
    x: &TensorType,
    sp: usize,
    strides: &[usize],
    pads: &[usize],
    dil: &[usize],
) -> Result<(), String> {
    if sp == 0 || x.rank() != sp + 2 {
        return Err(format!("input {x} must have rank {}", sp + 2));
    }
    if strides.len() != sp || pads.len() != 2 * sp || dil.len() != sp {
        return Err(format!(
            "strides/pads/dilations must have {sp}/{}/{sp} entries",
            2 * sp
        ));
    }
    if strides.contains(&0) || dil.contains(&0) {
        return Err("strides and dilations must be positive".into());
    }
    if x.shape.contains(&0) {
        return Err(format!("input {x} has an empty dimension"));
    }
    Ok(())
}

/// `d (k - 1) + 1`, the extent of a window of `k >= 1` taps `d` apart.
fn window_extent(k: usize, d: usize) -> Result<usize, String> {
    limits::mul(d, k - 1, "window extent").and_then(|e| limits::add(e, 1, "window extent"))
}

/// `input + pb + pe`.
fn padded_dim(input: usize, pb: usize, pe: usize) -> Result<usize, String> {
    limits::add(input, pb, "padded input").and_then(|p| limits::add(p, pe, "padded input"))
}

/// Output length of a pooling window along one dim (ONNX semantics incl. ceil_mode).
pub fn pool_out_dim(
    input: usize,
    k: usize,
    s: usize,
    pb: usize,
    pe: usize,
    d: usize,
    ceil: bool,
) -> Result<usize, String> {
    let ext = window_extent(k.max(1), d)?;
    let padded = padded_dim(input, pb, pe)?;
    if padded < ext || k == 0 {
        return Err(format!("window {ext} larger than padded input {padded}"));
    }
    let span = padded - ext;
    let mut out = if ceil {
        span.div_ceil(s) + 1
    } else {
        span / s + 1
    };
    // The last window must start inside the input or the left padding.
    if ceil && (out - 1).checked_mul(s).is_none_or(|o| o >= input + pb) {
        out -= 1;
    }
    Ok(out)
}

/// `shape` without its leading 1s.
pub fn strip_ones(shape: &[usize]) -> &[usize] {
    let k = shape.iter().take_while(|&&d| d == 1).count();
    &shape[k..]
}

/// NumPy multidirectional broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(format!("shapes {a:?} and {b:?} do not broadcast"));
        };
    }
    Ok(out)
}

/// Output shape of NumPy matmul.
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("matmul operands must have rank >= 1".into());
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(format!("matmul inner dimensions differ: {a:?} x {b:?}"));
    }
    let mut out = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}
