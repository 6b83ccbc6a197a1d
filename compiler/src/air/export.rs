//! Any kiln graph -> a GraphEngine `ModelDef` (an `.air` file), the way MindSpore's exporter
//! writes one: `Data` ops with `index`, `Const` ops named `<param>_const` holding their weight
//! inline in ND/NCHW layout, GE op types with their attributes, descriptors with
//! `origin_format`/`origin_shape`/`format_for_int`, `_input_name_key`/`_output_name_key`
//! metadata and `GraphDef.input/output` (no `NetOutput`: GE inserts it when it compiles).
//! Each output descriptor is named after its kiln value, so reading the file back gives the
//! same value names.
//!
//! Each IR op maps to the GE op the importer maps back to the same IR op, so a round trip is
//! exact; fused epilogues and elementwise chains are written as their separate GE ops. An op with
//! no GE equivalent is an error naming the node (no decomposition ATC would not accept).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kiln_ir::ops::{
    ActKind, BinaryOp, CoordTransform, EpilogueStep, NearestMode, PadMode, ReduceKind, ResizeMode,
    SoftmaxKind, UnaryOp,
};
use kiln_ir::{DType, Graph, Layout, Op, TensorType, ValueDef, ValueId};
use prost::Message;

use super::import::{BINARY, COMPARE, UNARY};
use super::proto::attr_def::Value as AV;
use super::proto::attr_def::{ListValue, list_value};
use super::proto::{AttrDef, GraphDef, ModelDef, OpDef, ShapeDef, TensorDef, TensorDescriptor};
use super::{ge_of_dtype, proto_of_dtype};

type R<T> = Result<T, String>;

/// Models whose weights exceed this are written with external weight files (protobuf's 2 GB
/// message limit), as GraphEngine's `SeparateModelDef` does.
pub const EXTERNAL_WEIGHTS_THRESHOLD: usize = (1 << 31) - (1 << 24);

#[derive(Debug, Clone)]
pub struct AirExportOptions {
    /// Weights of more bytes than this in total go to `air_weight/<model>/...` files beside
    /// the `.air` file.
    pub external_threshold: usize,
}

impl Default for AirExportOptions {
    fn default() -> Self {
        AirExportOptions {
            external_threshold: EXTERNAL_WEIGHTS_THRESHOLD,
        }
    }
}

fn av(v: AV) -> AttrDef {
    AttrDef { value: Some(v) }
}
fn a_i(i: i64) -> AttrDef {
    av(AV::I(i))
}
fn a_f(f: f32) -> AttrDef {
    av(AV::F(f))
}
fn a_b(b: bool) -> AttrDef {
    av(AV::B(b))
}
fn a_s(s: &str) -> AttrDef {
    av(AV::S(Bytes::from(s.to_string())))
}
fn a_ints(v: &[i64]) -> AttrDef {
    av(AV::List(ListValue {
        i: v.to_vec(),
        val_type: list_value::ListValueType::VtListInt as i32,
        ..Default::default()
    }))
}
fn a_strs(v: &[&str]) -> AttrDef {
    av(AV::List(ListValue {
        s: v.iter().map(|s| Bytes::from(s.to_string())).collect(),
        val_type: list_value::ListValueType::VtListString as i32,
        ..Default::default()
    }))
}
fn us(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// `ge::Format` numbers of the formats kiln writes.
const FORMAT_NCHW: i64 = 0;
const FORMAT_ND: i64 = 2;

/// The descriptor of a plain tensor of type `ty` (NCHW for rank 4, else ND).
pub fn descriptor(ty: &TensorType, name: &str) -> TensorDescriptor {
    let (layout, fmt) = if ty.rank() == 4 {
        ("NCHW", FORMAT_NCHW)
    } else {
        ("ND", FORMAT_ND)
    };
    let dims = us(&ty.shape);
    let mut attr = BTreeMap::new();
    attr.insert("origin_format".into(), a_s(layout));
    attr.insert("origin_shape".into(), a_ints(&dims));
    attr.insert("origin_shape_initialized".into(), a_b(true));
    attr.insert("format_for_int".into(), a_i(fmt));
    attr.insert("origin_format_for_int".into(), a_i(fmt));
    TensorDescriptor {
        name: name.to_string(),
        dtype: proto_of_dtype(ty.dtype),
        shape: Some(ShapeDef { dim: dims }),
        layout: layout.into(),
        attr,
        device_type: "NPU".into(),
        real_dim_cnt: ty.rank() as i64,
        ..Default::default()
    }
}

/// What the writer refers to: a graph value, or a constant it created (a shape, axis or scalar
/// input that GE takes as a tensor).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Val {
    G(ValueId),
    Aux(usize),
}

impl From<ValueId> for Val {
    fn from(v: ValueId) -> Val {
        Val::G(v)
    }
}

struct Writer<'g> {
    g: &'g Graph,
    ops: Vec<OpDef>,
    /// The op output (`"op:idx"`) that holds each value.
    edge: HashMap<Val, String>,
    aux: Vec<TensorType>,
    names: HashSet<String>,
}

impl<'g> Writer<'g> {
    fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "op" } else { base };
        if self.names.insert(base.to_string()) {
            return base.to_string();
        }
        (1..)
            .map(|k| format!("{base}_{k}"))
            .find(|n| self.names.insert(n.clone()))
            .unwrap_or_default()
    }

    fn ty(&self, v: Val) -> TensorType {
        match v {
            Val::G(v) => self.g.ty(v).clone(),
            Val::Aux(i) => self.aux[i].clone(),
        }
    }

    /// Append op `ty` named after `name`, reading `ins` (`None`: an absent optional input;
    /// `ports` name them), with outputs of types and names `outs`. Returns the op name.
    fn op(
        &mut self,
        ty: &str,
        name: &str,
        ins: &[Option<Val>],
        ports: &[&str],
        outs: &[(TensorType, String)],
        attrs: Vec<(&str, AttrDef)>,
    ) -> String {
        let name = self.fresh(name);
        let input = ins
            .iter()
            .map(|v| v.map_or(String::new(), |v| self.edge[&v].clone()))
            .collect();
        let input_desc = ins
            .iter()
            .map(|v| v.map_or_else(TensorDescriptor::default, |v| descriptor(&self.ty(v), "")))
            .collect();
        let output_desc = outs.iter().map(|(t, n)| descriptor(t, n)).collect();
        let mut attr: BTreeMap<String, AttrDef> =
            attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let in_ports: Vec<String> = (0..ins.len())
            .map(|i| {
                ports
                    .get(i)
                    .map_or_else(|| format!("x{i}"), |p| p.to_string())
            })
            .collect();
        let out_ports: Vec<String> = (0..outs.len())
            .map(|i| if i == 0 { "y".into() } else { format!("y{i}") })
            .collect();
        for (k, p) in [("_input_name", &in_ports), ("_output_name", &out_ports)] {
            let refs: Vec<&str> = p.iter().map(|s| s.as_str()).collect();
            attr.insert(format!("{k}_key"), a_strs(&refs));
            attr.insert(
                format!("{k}_value"),
                a_ints(&(0..p.len() as i64).collect::<Vec<_>>()),
            );
        }
        self.ops.push(OpDef {
            name: name.clone(),
            r#type: ty.into(),
            input,
            attr,
            input_desc,
            output_desc,
            ..Default::default()
        });
        name
    }

    /// A `Const` op named `<name>_const` holding `data` (its value is named `name`).
    fn const_op(&mut self, name: &str, ty: &TensorType, data: Bytes) -> String {
        let t = TensorDef {
            desc: Some(descriptor(ty, name)),
            data,
        };
        self.op(
            "Const",
            &format!("{name}_const"),
            &[],
            &[],
            &[(ty.clone(), name.to_string())],
            vec![("value", av(AV::T(t)))],
        )
    }

    /// A constant input the writer creates (an axis, shape or scalar GE takes as a tensor).
    fn aux(&mut self, name: &str, ty: TensorType, bytes: Vec<u8>) -> Val {
        let op = self.const_op(name, &ty, Bytes::from(bytes));
        let v = Val::Aux(self.aux.len());
        self.aux.push(ty);
        self.edge.insert(v, format!("{op}:0"));
        v
    }

    fn aux_i64(&mut self, name: &str, v: &[i64], scalar: bool) -> Val {
        let shape = if scalar { vec![] } else { vec![v.len()] };
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.aux(name, TensorType::new(DType::I64, shape), bytes)
    }

    fn aux_i32(&mut self, name: &str, v: &[i64]) -> Val {
        let bytes = v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
        self.aux(name, TensorType::new(DType::I32, vec![v.len()]), bytes)
    }

    fn aux_scalar(&mut self, name: &str, x: f64, dtype: DType) -> R<Val> {
        let bytes = match dtype {
            DType::F32 => (x as f32).to_le_bytes().to_vec(),
            DType::F64 => x.to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f64(x).to_le_bytes().to_vec(),
            d => return Err(format!("a {d} scalar operand is not supported")),
        };
        Ok(self.aux(name, TensorType::new(dtype, vec![]), bytes))
    }

    /// Write one op whose single output is the IR value `out` (or, for an intermediate step of
    /// a fused op, a new value of type `ty` named `name`).
    fn emit1(
        &mut self,
        ty: &str,
        out: Out,
        ins: &[Option<Val>],
        ports: &[&str],
        attrs: Vec<(&str, AttrDef)>,
    ) -> Val {
        let (t, n, v) = match out {
            Out::Value(v) => (
                self.g.ty(v).clone(),
                self.g.value(v).name.clone(),
                Val::G(v),
            ),
            Out::Temp(t, n) => {
                let v = Val::Aux(self.aux.len());
                self.aux.push(t.clone());
                (t, n, v)
            }
        };
        let op = self.op(ty, &n, ins, ports, &[(t, n.clone())], attrs);
        self.edge.insert(v, format!("{op}:0"));
        v
    }
}

/// Where an op's output goes.
enum Out {
    /// The node's IR value.
    Value(ValueId),
    /// An intermediate of a fused op, with its type and name.
    Temp(TensorType, String),
}

fn unary_name(u: UnaryOp) -> Option<&'static str> {
    match u {
        UnaryOp::Gelu => Some("GeluV2"),
        UnaryOp::GeluTanh => Some("Gelu"),
        u => UNARY.iter().find(|(_, x)| *x == u).map(|(n, _)| *n),
    }
}

fn binary_name(b: BinaryOp) -> Option<&'static str> {
    match b {
        BinaryOp::Div => Some("RealDiv"),
        b => BINARY.iter().find(|(_, x)| *x == b).map(|(n, _)| *n),
    }
}

/// GE padding `[top, bottom, left, right]` of IR pads `[top, left, bottom, right]`.
fn ge_pads(p: &[usize]) -> Vec<i64> {
    vec![p[0] as i64, p[2] as i64, p[1] as i64, p[3] as i64]
}

fn nchw4(v: &[usize]) -> Vec<i64> {
    vec![1, 1, v[0] as i64, v[1] as i64]
}

impl Writer<'_> {
    /// An elementwise step (epilogue / chain) on `x`, `operand` for Add/Mul, writing `out`.
    fn step(&mut self, s: &EpilogueStep, x: Val, operand: Option<Val>, out: Out) -> R<Val> {
        let xin = [Some(x)];
        Ok(match *s {
            EpilogueStep::Add | EpilogueStep::Mul => {
                let o = operand.ok_or("an epilogue add/mul without its operand")?;
                let t = if matches!(s, EpilogueStep::Add) {
                    "Add"
                } else {
                    "Mul"
                };
                self.emit1(t, out, &[Some(x), Some(o)], &["x1", "x2"], vec![])
            }
            EpilogueStep::Unary(u) => {
                let t = unary_name(u).ok_or_else(|| format!("{} has no GE op", u.name()))?;
                let attrs = if u == UnaryOp::Gelu {
                    vec![("approximate", a_s("none"))]
                } else {
                    vec![]
                };
                self.emit1(t, out, &xin, &["x"], attrs)
            }
            EpilogueStep::Clip { min, max } => {
                if min == 0.0 && max == 6.0 {
                    self.emit1("Relu6", out, &xin, &["x"], vec![])
                } else {
                    let dt = self.ty(x).dtype;
                    let lo = self.aux_scalar("clip_min", min as f64, dt)?;
                    let hi = self.aux_scalar("clip_max", max as f64, dt)?;
                    self.emit1(
                        "ClipByValue",
                        out,
                        &[Some(x), Some(lo), Some(hi)],
                        &["x", "clip_value_min", "clip_value_max"],
                        vec![],
                    )
                }
            }
            EpilogueStep::Act { kind, alpha, beta } => {
                let (t, attrs) = match kind {
                    ActKind::LeakyRelu => ("LeakyRelu", vec![("negative_slope", a_f(alpha))]),
                    ActKind::Elu => ("Elu", vec![("alpha", a_f(alpha))]),
                    ActKind::HardSigmoid => (
                        "HardSigmoid",
                        vec![("alpha", a_f(alpha)), ("beta", a_f(beta))],
                    ),
                    ActKind::Swish => ("Swish", vec![("scale", a_f(alpha))]),
                    ActKind::Selu if alpha == 1.673_263_2 && beta == 1.050_701 => ("Selu", vec![]),
                    k => return Err(format!("activation {} has no GE op", k.name())),
                };
                self.emit1(t, out, &xin, &["x"], attrs)
            }
        })
    }

    /// Apply a fused epilogue after `x` (the product / convolution), the last step writing the
    /// node's output `out`; `operands` are the Add/Mul operands in order.
    fn epilogue(
        &mut self,
        steps: &[EpilogueStep],
        mut x: Val,
        operands: &[ValueId],
        out: ValueId,
        name: &str,
    ) -> R<()> {
        let mut ops = operands.iter();
        let ty = self.g.ty(out).clone();
        for (k, s) in steps.iter().enumerate() {
            let operand = if s.is_binary() {
                Some(Val::G(*ops.next().ok_or("missing epilogue operand")?))
            } else {
                None
            };
            let o = if k + 1 == steps.len() {
                Out::Value(out)
            } else {
                Out::Temp(ty.clone(), format!("{name}/{k}"))
            };
            x = self.step(s, x, operand, o)?;
        }
        Ok(())
    }

    /// The op's result: straight into `out`, or into a temporary the epilogue continues from.
    fn head(&self, out: ValueId, steps: &[EpilogueStep], name: &str) -> Out {
        if steps.is_empty() {
            Out::Value(out)
        } else {
            Out::Temp(self.g.ty(out).clone(), format!("{name}/op"))
        }
    }

    fn node(&mut self, op: &Op, ins: &[ValueId], outs: &[ValueId]) -> R<()> {
        let x = |i: usize| Some(Val::G(ins[i]));
        let opt = |i: usize| ins.get(i).map(|v| Val::G(*v));
        let out = outs[0];
        let oname = self.g.value(out).name.clone();
        let ity = |i: usize| self.g.ty(ins[i]).clone();
        match op {
            Op::Conv(a) => {
                if a.kernel.len() != 2 || a.layout != Layout::Plain {
                    return Err("only plain 2-D convolutions have a GE op (Conv2D)".into());
                }
                let head = self.head(out, &a.epilogue, &oname);
                let y = self.emit1(
                    "Conv2D",
                    head,
                    &[x(0), x(1), opt(2)],
                    &["x", "filter", "bias"],
                    vec![
                        ("strides", a_ints(&nchw4(&a.strides))),
                        ("pads", a_ints(&ge_pads(&a.pads))),
                        ("dilations", a_ints(&nchw4(&a.dilations))),
                        ("groups", a_i(a.groups as i64)),
                        ("data_format", a_s("NCHW")),
                        ("offset_x", a_i(0)),
                    ],
                );
                self.epilogue(&a.epilogue, y, ins.get(3..).unwrap_or(&[]), out, &oname)?;
            }
            Op::ConvTranspose(a) => {
                if a.kernel.len() != 2 {
                    return Err("only 2-D transposed convolutions have a GE op".into());
                }
                let size = us(&self.g.ty(out).shape);
                self.emit1(
                    "Conv2DTransposeD",
                    Out::Value(out),
                    &[x(0), x(1), opt(2)],
                    &["x", "filter", "bias"],
                    vec![
                        ("input_size", a_ints(&size)),
                        ("strides", a_ints(&nchw4(&a.strides))),
                        ("pads", a_ints(&ge_pads(&a.pads))),
                        ("dilations", a_ints(&nchw4(&a.dilations))),
                        ("groups", a_i(a.groups as i64)),
                        ("data_format", a_s("NCHW")),
                        ("output_padding", a_ints(&[0, 0, 0, 0])),
                    ],
                );
            }
            Op::Gemm(a) => {
                let bias_ok = ins
                    .get(2)
                    .is_none_or(|&c| self.g.ty(c).rank() == 1 && a.beta == 1.0);
                let head = self.head(out, &a.epilogue, &oname);
                let y = if a.alpha == 1.0 && bias_ok {
                    self.emit1(
                        "MatMulV2",
                        head,
                        &[x(0), x(1), opt(2)],
                        &["x1", "x2", "bias"],
                        vec![
                            ("transpose_x1", a_b(a.trans_a)),
                            ("transpose_x2", a_b(a.trans_b)),
                            ("offset_x", a_i(0)),
                        ],
                    )
                } else {
                    let dt = ity(0).dtype;
                    let c = match opt(2) {
                        Some(c) => c,
                        None => self.aux_scalar(&format!("{oname}/c"), 0.0, dt)?,
                    };
                    let al = self.aux_scalar(&format!("{oname}/alpha"), a.alpha as f64, dt)?;
                    let be = self.aux_scalar(&format!("{oname}/beta"), a.beta as f64, dt)?;
                    self.emit1(
                        "GEMM",
                        head,
                        &[x(0), x(1), Some(c), Some(al), Some(be)],
                        &["a", "b", "c", "alpha", "beta"],
                        vec![
                            ("transpose_a", a_b(a.trans_a)),
                            ("transpose_b", a_b(a.trans_b)),
                        ],
                    )
                };
                self.epilogue(&a.epilogue, y, &[], out, &oname)?;
            }
            Op::MatMul(a) => {
                if ity(0).rank() < 2 || ity(1).rank() < 2 {
                    return Err("a matrix product with a 1-D operand has no GE op".into());
                }
                let head = self.head(out, &a.epilogue, &oname);
                let y = self.emit1(
                    "BatchMatMulV2",
                    head,
                    &[x(0), x(1)],
                    &["x1", "x2"],
                    vec![("adj_x1", a_b(false)), ("adj_x2", a_b(false))],
                );
                self.epilogue(&a.epilogue, y, &ins[2..], out, &oname)?;
            }
            Op::Chain { steps } => {
                let y = Val::G(ins[0]);
                self.epilogue(steps, y, &ins[1..], out, &oname)?;
            }
            Op::Binary(b) => {
                let t = binary_name(*b).ok_or_else(|| format!("{b:?} has no GE op"))?;
                self.emit1(t, Out::Value(out), &[x(0), x(1)], &["x1", "x2"], vec![]);
            }
            Op::Unary(u) => {
                self.step(
                    &EpilogueStep::Unary(*u),
                    Val::G(ins[0]),
                    None,
                    Out::Value(out),
                )?;
            }
            Op::Clip { min, max } => {
                let s = EpilogueStep::Clip {
                    min: *min,
                    max: *max,
                };
                self.step(&s, Val::G(ins[0]), None, Out::Value(out))?;
            }
            Op::Act { kind, alpha, beta } => {
                let s = EpilogueStep::Act {
                    kind: *kind,
                    alpha: *alpha,
                    beta: *beta,
                };
                self.step(&s, Val::G(ins[0]), None, Out::Value(out))?;
            }
            Op::BatchNorm { epsilon } => {
                let mut outs_d = vec![(self.g.ty(out).clone(), oname.clone())];
                for k in 1..5 {
                    outs_d.push((ity(3 + (k + 1) % 2), format!("{oname}:{k}")));
                }
                let n = self.op(
                    "BatchNorm",
                    &oname,
                    &[x(0), x(1), x(2), x(3), x(4)],
                    &["x", "scale", "offset", "mean", "variance"],
                    &outs_d,
                    vec![
                        ("epsilon", a_f(*epsilon)),
                        ("is_training", a_b(false)),
                        ("data_format", a_s("NCHW")),
                    ],
                );
                self.edge.insert(Val::G(out), format!("{n}:0"));
            }
            Op::MaxPool(a) | Op::AveragePool(a) => {
                if a.kernel.len() != 2 || a.dilations.iter().any(|&d| d != 1) {
                    return Err("only 2-D pools without dilation have a GE op".into());
                }
                let max = matches!(op, Op::MaxPool(_));
                let mut attrs = vec![
                    ("ksize", a_ints(&nchw4(&a.kernel))),
                    ("strides", a_ints(&nchw4(&a.strides))),
                    ("padding_mode", a_s("CALCULATED")),
                    ("pads", a_ints(&ge_pads(&a.pads))),
                    ("data_format", a_s("NCHW")),
                    ("global_pooling", a_b(false)),
                    ("ceil_mode", a_b(a.ceil_mode)),
                ];
                if !max {
                    attrs.push(("exclusive", a_b(!a.count_include_pad)));
                }
                let t = if max { "MaxPoolV3" } else { "AvgPoolV2" };
                self.emit1(t, Out::Value(out), &[x(0)], &["x"], attrs);
            }
            Op::GlobalAveragePool => {
                self.emit1(
                    "GlobalAveragePool",
                    Out::Value(out),
                    &[x(0)],
                    &["x"],
                    vec![],
                );
            }
            Op::Reshape { shape } => {
                let s = self.aux_i64(&format!("{oname}/shape"), &us(shape), false);
                self.emit1(
                    "Reshape",
                    Out::Value(out),
                    &[x(0), Some(s)],
                    &["x", "shape"],
                    vec![],
                );
            }
            Op::Transpose { perm } => {
                let p = self.aux_i64(&format!("{oname}/perm"), &us(perm), false);
                self.emit1(
                    "Transpose",
                    Out::Value(out),
                    &[x(0), Some(p)],
                    &["x", "perm"],
                    vec![],
                );
            }
            Op::Expand { .. } => {
                let s = us(&self.g.ty(out).shape);
                let s = self.aux_i64(&format!("{oname}/shape"), &s, false);
                self.emit1(
                    "BroadcastTo",
                    Out::Value(out),
                    &[x(0), Some(s)],
                    &["x", "shape"],
                    vec![],
                );
            }
            Op::Concat { axis } => {
                let xs: Vec<Option<Val>> = ins.iter().map(|v| Some(Val::G(*v))).collect();
                self.emit1(
                    "ConcatD",
                    Out::Value(out),
                    &xs,
                    &[],
                    vec![
                        ("concat_dim", a_i(*axis as i64)),
                        ("N", a_i(ins.len() as i64)),
                    ],
                );
            }
            Op::Split { axis, sizes } => {
                let outs_d: Vec<(TensorType, String)> = outs
                    .iter()
                    .map(|&o| (self.g.ty(o).clone(), self.g.value(o).name.clone()))
                    .collect();
                let n = self.op(
                    "SplitVD",
                    &oname,
                    &[x(0)],
                    &["x"],
                    &outs_d,
                    vec![
                        ("size_splits", a_ints(&us(sizes))),
                        ("split_dim", a_i(*axis as i64)),
                        ("num_split", a_i(sizes.len() as i64)),
                    ],
                );
                for (k, &o) in outs.iter().enumerate() {
                    self.edge.insert(Val::G(o), format!("{n}:{k}"));
                }
                return Ok(());
            }
            Op::Slice(a) => {
                if a.steps.iter().all(|&s| s == 1) {
                    self.emit1(
                        "SliceD",
                        Out::Value(out),
                        &[x(0)],
                        &["x"],
                        vec![
                            ("offsets", a_ints(&us(&a.starts))),
                            ("size", a_ints(&us(&a.sizes))),
                        ],
                    );
                } else {
                    let (mut begin, mut end, mut end_mask) = (vec![], vec![], 0i64);
                    for d in 0..a.starts.len() {
                        let (b, n, s) = (a.starts[d] as i64, a.sizes[d] as i64, a.steps[d]);
                        let e = if n == 0 {
                            b
                        } else {
                            b + (n - 1) * s + s.signum()
                        };
                        if e < 0 {
                            end_mask |= 1 << d;
                        }
                        begin.push(b);
                        end.push(e.max(0));
                    }
                    self.emit1(
                        "StridedSliceD",
                        Out::Value(out),
                        &[x(0)],
                        &["x"],
                        vec![
                            ("begin", a_ints(&begin)),
                            ("end", a_ints(&end)),
                            ("strides", a_ints(&a.steps)),
                            ("begin_mask", a_i(0)),
                            ("end_mask", a_i(end_mask)),
                            ("ellipsis_mask", a_i(0)),
                            ("new_axis_mask", a_i(0)),
                            ("shrink_axis_mask", a_i(0)),
                        ],
                    );
                }
            }
            Op::LayerNorm { axis, epsilon } => {
                let mut outs_d = vec![(self.g.ty(out).clone(), oname.clone())];
                let mut stat = ity(0).shape.clone();
                for d in stat.iter_mut().skip(*axis) {
                    *d = 1;
                }
                for k in 1..3 {
                    outs_d.push((ity(0).with_shape(stat.clone()), format!("{oname}:{k}")));
                }
                let n = self.op(
                    "LayerNorm",
                    &oname,
                    &[x(0), opt(1), opt(2)],
                    &["x", "gamma", "beta"],
                    &outs_d,
                    vec![
                        ("begin_norm_axis", a_i(*axis as i64)),
                        ("begin_params_axis", a_i(*axis as i64)),
                        ("epsilon", a_f(*epsilon)),
                    ],
                );
                self.edge.insert(Val::G(out), format!("{n}:0"));
            }
            Op::Softmax { axis, kind } => {
                let t = match kind {
                    SoftmaxKind::Softmax => "SoftmaxV2",
                    SoftmaxKind::LogSoftmax => "LogSoftmaxV2",
                    _ => return Err("Hardmax has no GE op".into()),
                };
                self.emit1(
                    t,
                    Out::Value(out),
                    &[x(0)],
                    &["x"],
                    vec![("axes", a_ints(&[*axis as i64]))],
                );
            }
            Op::Gather { axis } => {
                let a = self.aux_i64(&format!("{oname}/axis"), &[*axis as i64], true);
                self.emit1(
                    "GatherV2",
                    Out::Value(out),
                    &[x(0), x(1), Some(a)],
                    &["x", "indices", "axis"],
                    vec![("batch_dims", a_i(0))],
                );
            }
            Op::Compare(c) => {
                let t = COMPARE
                    .iter()
                    .find(|(_, x, not)| x == c && !not)
                    .map(|(n, ..)| *n)
                    .ok_or("comparison has no GE op")?;
                self.emit1(t, Out::Value(out), &[x(0), x(1)], &["x1", "x2"], vec![]);
            }
            Op::Logical(l) => {
                let t = match l {
                    kiln_ir::ops::LogicOp::And => "LogicalAnd",
                    kiln_ir::ops::LogicOp::Or => "LogicalOr",
                    kiln_ir::ops::LogicOp::Xor => return Err("Xor has no GE op".into()),
                };
                self.emit1(t, Out::Value(out), &[x(0), x(1)], &["x1", "x2"], vec![]);
            }
            Op::Not => {
                self.emit1("LogicalNot", Out::Value(out), &[x(0)], &["x"], vec![]);
            }
            Op::Where => {
                self.emit1(
                    "SelectV2",
                    Out::Value(out),
                    &[x(0), x(1), x(2)],
                    &["condition", "then", "else"],
                    vec![],
                );
            }
            Op::ArgExtreme {
                max,
                axis,
                keepdims,
                select_last,
            } => {
                if *select_last {
                    return Err("select_last_index has no GE equivalent".into());
                }
                let d = self.aux_i64(&format!("{oname}/dimension"), &[*axis as i64], true);
                let t = if *max { "ArgMaxV2" } else { "ArgMin" };
                let attrs = vec![("dtype", a_i(ge_of_dtype(DType::I64)))];
                if *keepdims {
                    let mut s = self.g.ty(out).shape.clone();
                    s.remove(*axis);
                    let tmp = Out::Temp(self.g.ty(out).with_shape(s), format!("{oname}/index"));
                    let y = self.emit1(t, tmp, &[x(0), Some(d)], &["x", "dimension"], attrs);
                    self.emit1(
                        "Unsqueeze",
                        Out::Value(out),
                        &[Some(y)],
                        &["x"],
                        vec![("axes", a_ints(&[*axis as i64]))],
                    );
                } else {
                    self.emit1(
                        t,
                        Out::Value(out),
                        &[x(0), Some(d)],
                        &["x", "dimension"],
                        attrs,
                    );
                }
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                if axes.is_empty() {
                    self.emit1("Identity", Out::Value(out), &[x(0)], &["x"], vec![]);
                    return Ok(());
                }
                let t = match kind {
                    ReduceKind::Sum => "ReduceSumD",
                    ReduceKind::Mean => "ReduceMeanD",
                    ReduceKind::Max => "ReduceMaxD",
                    ReduceKind::Min => "ReduceMinD",
                    ReduceKind::Prod => "ReduceProdD",
                    k => return Err(format!("{} has no GE op", k.name())),
                };
                self.emit1(
                    t,
                    Out::Value(out),
                    &[x(0)],
                    &["x"],
                    vec![("axes", a_ints(&us(axes))), ("keep_dims", a_b(*keepdims))],
                );
            }
            Op::Resize(a) => {
                let xs = ity(0).shape;
                let os = &a.out_shape;
                let spatial_only = xs.len() == 4 && os[..2] == xs[..2];
                let exact = (2..4).all(|d| a.scales[d] == os[d] as f32 / xs[d] as f32);
                let flags = match (a.mode, a.coord, a.nearest) {
                    (ResizeMode::Nearest, CoordTransform::Asymmetric, NearestMode::Floor)
                    | (ResizeMode::Linear, CoordTransform::Asymmetric, _) => Some((false, false)),
                    (
                        ResizeMode::Nearest,
                        CoordTransform::AlignCorners,
                        NearestMode::RoundPreferCeil,
                    )
                    | (ResizeMode::Linear, CoordTransform::AlignCorners, _) => Some((true, false)),
                    (
                        ResizeMode::Nearest,
                        CoordTransform::HalfPixel,
                        NearestMode::RoundPreferCeil,
                    )
                    | (ResizeMode::Linear, CoordTransform::HalfPixel, _) => Some((false, true)),
                    _ => None,
                };
                let (Some((ac, hp)), true, true) = (flags, spatial_only, exact) else {
                    return Err(format!(
                        "resize ({:?}, {:?}, {:?}, scales {:?}) has no GE equivalent",
                        a.mode, a.coord, a.nearest, a.scales
                    ));
                };
                let t = if a.mode == ResizeMode::Nearest {
                    "ResizeNearestNeighborV2"
                } else {
                    "ResizeBilinearV2"
                };
                let size = self.aux_i32(&format!("{oname}/size"), &[os[2] as i64, os[3] as i64]);
                self.emit1(
                    t,
                    Out::Value(out),
                    &[x(0), Some(size)],
                    &["x", "size"],
                    vec![("align_corners", a_b(ac)), ("half_pixel_centers", a_b(hp))],
                );
            }
            Op::Cast { to } => {
                self.emit1(
                    "Cast",
                    Out::Value(out),
                    &[x(0)],
                    &["x"],
                    vec![("dst_type", a_i(ge_of_dtype(*to)))],
                );
            }
            Op::Pad { pads, mode, value } => {
                let r = ity(0).rank();
                let mode = match mode {
                    PadMode::Constant => "constant",
                    PadMode::Reflect => "reflect",
                    PadMode::Edge => "edge",
                    PadMode::Wrap => return Err("wrap padding has no GE op".into()),
                };
                let pairs: Vec<i64> = (0..r).flat_map(|d| [pads[d], pads[r + d]]).collect();
                let p = self.aux(
                    &format!("{oname}/paddings"),
                    TensorType::new(DType::I64, vec![r, 2]),
                    pairs.iter().flat_map(|x| x.to_le_bytes()).collect(),
                );
                let v = self.aux_scalar(&format!("{oname}/value"), *value, ity(0).dtype)?;
                self.emit1(
                    "PadV3",
                    Out::Value(out),
                    &[x(0), Some(p), Some(v)],
                    &["x", "paddings", "constant_values"],
                    vec![("mode", a_s(mode)), ("paddings_contiguous", a_b(true))],
                );
            }
            other => return Err(format!("op {} has no GE equivalent", other.name())),
        }
        if outs.len() > 1 && !matches!(op, Op::BatchNorm { .. } | Op::LayerNorm { .. }) {
            return Err(format!(
                "op {} with {} outputs has no GE equivalent",
                op.name(),
                outs.len()
            ));
        }
        Ok(())
    }
}

/// The ModelDef of `g`. Weights are referenced, not copied, except into the protobuf bytes.
pub fn export(g: &Graph) -> R<ModelDef> {
    let mut w = Writer {
        g,
        ops: vec![],
        edge: HashMap::new(),
        aux: vec![],
        names: HashSet::new(),
    };
    let mut inputs = vec![];
    for (i, &v) in g.inputs.iter().enumerate() {
        let val = g.value(v);
        let n = w.op(
            "Data",
            &val.name,
            &[],
            &[],
            &[(val.ty.clone(), val.name.clone())],
            vec![("index", a_i(i as i64))],
        );
        // a Data op also describes its input
        if let Some(op) = w.ops.last_mut() {
            op.input_desc = vec![descriptor(&val.ty, "")];
        }
        inputs.push(format!("{n}:0"));
        w.edge.insert(Val::G(v), format!("{n}:0"));
    }
    for v in g.live_consts() {
        let val = g.value(v);
        let ValueDef::Const(d) = &val.def else {
            continue;
        };
        let n = w.const_op(&val.name, &val.ty, Bytes::from_owner(d.clone()));
        w.edge.insert(Val::G(v), format!("{n}:0"));
    }
    for (_, n) in g.iter_nodes() {
        for &o in &n.outputs {
            if g.ty(o).layout != Layout::Plain {
                return Err(format!(
                    "node '{}' ({}): value '{}' is in a blocked layout; export the graph before the layout pass",
                    n.name,
                    n.op.name(),
                    g.value(o).name
                ));
            }
        }
        w.node(&n.op, &n.inputs, &n.outputs)
            .map_err(|e| format!("node '{}' ({}): {e}", n.name, n.op.name()))?;
    }
    let outputs: Vec<String> = g
        .outputs
        .iter()
        .map(|v| w.edge[&Val::G(*v)].clone())
        .collect();
    let graph = GraphDef {
        name: g.name.clone(),
        input: inputs,
        output: outputs,
        op: w.ops,
        ..Default::default()
    };
    Ok(ModelDef {
        name: g.name.clone(),
        version: 1,
        custom_version: String::new(),
        graph: vec![graph],
        ..Default::default()
    })
}

/// Write `g` as an `.air` file, atomically. Weights beyond `opts.external_threshold` bytes in
/// total go to `air_weight/<model>/<Const>_<graph>_<op>_file` beside it (GE's large-model
/// layout), each referenced by the op's `location`/`length` attributes.
pub fn write_file(g: &Graph, path: &Path, opts: &AirExportOptions) -> R<()> {
    let mut md = export(g)?;
    let total: usize = md.graph[0]
        .op
        .iter()
        .filter_map(
            |o| match o.attr.get("value").and_then(|a| a.value.as_ref()) {
                Some(AV::T(t)) => Some(t.data.len()),
                _ => None,
            },
        )
        .sum();
    let mut written: Vec<PathBuf> = vec![];
    let res = (|| -> R<()> {
        if total > opts.external_threshold {
            let dir = path.parent().unwrap_or(Path::new("."));
            let model = kiln_target_cpu::sym(&md.name);
            let rel = Path::new("air_weight").join(&model);
            std::fs::create_dir_all(dir.join(&rel))
                .map_err(|e| format!("{}: {e}", dir.join(&rel).display()))?;
            let gname = kiln_target_cpu::sym(&md.graph[0].name);
            for o in &mut md.graph[0].op {
                let Some(AV::T(t)) = o.attr.get_mut("value").and_then(|a| a.value.as_mut()) else {
                    continue;
                };
                let file = rel.join(format!(
                    "{}_{gname}_{}_file",
                    o.r#type,
                    kiln_target_cpu::sym(&o.name)
                ));
                let full = dir.join(&file);
                kiln_target_cpu::link::write_atomic(&full, &t.data).map_err(|e| e.to_string())?;
                written.push(full);
                let len = t.data.len() as i64;
                t.data = Bytes::new();
                o.attr
                    .insert("location".into(), a_s(&file.to_string_lossy()));
                o.attr.insert("length".into(), a_i(len));
            }
        }
        kiln_target_cpu::link::write_atomic(path, &md.encode_to_vec()).map_err(|e| e.to_string())
    })();
    if res.is_err() {
        for f in written {
            let _ = std::fs::remove_file(f);
        }
    }
    res
}
