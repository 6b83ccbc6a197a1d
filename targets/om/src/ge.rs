//! Any kiln graph -> a GraphEngine `ModelDef`, in two styles.
//!
//! - **AIR** ([`export`]), the way MindSpore's exporter writes an `.air` file: `Data` ops with
//!   `index`, `Const` ops named `<param>_const` holding their weight inline in ND/NCHW layout, GE
//!   op types with their attributes, descriptors with `origin_format`/`origin_shape`/
//!   `format_for_int`, `_input_name_key`/`_output_name_key` metadata and `GraphDef.input/output`
//!   (no `NetOutput`: GE inserts it when it compiles).
//! - **Compiled** ([`export_with`] with [`GeOptions::compiled`]), the graph of an offline model
//!   as ATC leaves it: a `NetOutput` op, every descriptor in its device format (NC1HWC0,
//!   FRACTAL_Z, FRACTAL_NZ with the physical shape, `origin_format`/`origin_shape` logical),
//!   `relayout` nodes as `TransData`, relayouts of constants folded into packed `Const`s, and
//!   per-node precision: a node computing in fp16 reads and writes `DT_FLOAT16` where the IR
//!   has f32, with `Cast` ops where a value crosses precisions and constants converted when they
//!   are written (the OM writer then moves weights into WEIGHTS_DATA and plans memory).
//!
//! Each output descriptor is named after its kiln value, so reading the file back gives the
//! same value names. Each IR op maps to the GE op the importer maps back to the same IR op, so
//! an AIR round trip is exact; fused epilogues and elementwise chains are written as their
//! separate GE ops. An op with no GE equivalent is an error naming the node (no decomposition
//! ATC would not accept).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use kiln_ir::ops::{
    ActKind, BinaryOp, CoordTransform, EpilogueStep, NearestMode, PadMode, ReduceKind, ResizeMode,
    SoftmaxKind, UnaryOp,
};
use kiln_ir::{DType, Graph, Layout, Op, TensorType, ValueDef, ValueId};

use crate::names::{BINARY, COMPARE, UNARY, format, ge_of_dtype, proto_of_dtype};
use crate::proto::attr_def::Value as AV;
use crate::proto::attr_def::{ListValue, list_value};
use crate::proto::{AttrDef, GraphDef, ModelDef, OpDef, ShapeDef, TensorDef, TensorDescriptor};

type R<T> = Result<T, String>;

/// How [`export_with`] writes the graph.
#[derive(Debug, Clone, Default)]
pub struct GeOptions {
    /// The compiled-graph style of an offline model (see the module docs); `false`: AIR.
    pub compiled: bool,
    /// Per node (indexed by `NodeId`): whether it computes in fp16 (its f32 operands and
    /// results become `DT_FLOAT16`). Empty: every node keeps the IR's types.
    pub fp16: Vec<bool>,
}

pub(crate) fn av(v: AV) -> AttrDef {
    AttrDef { value: Some(v) }
}
pub(crate) fn a_i(i: i64) -> AttrDef {
    av(AV::I(i))
}
fn a_f(f: f32) -> AttrDef {
    av(AV::F(f))
}
pub(crate) fn a_b(b: bool) -> AttrDef {
    av(AV::B(b))
}
pub(crate) fn a_s(s: &str) -> AttrDef {
    av(AV::S(Bytes::from(s.to_string())))
}
pub(crate) fn a_ints(v: &[i64]) -> AttrDef {
    av(AV::List(ListValue {
        i: v.to_vec(),
        val_type: list_value::ListValueType::VtListInt as i32,
        ..Default::default()
    }))
}
pub(crate) fn a_strs(v: &[&str]) -> AttrDef {
    av(AV::List(ListValue {
        s: v.iter().map(|s| Bytes::from(s.to_string())).collect(),
        val_type: list_value::ListValueType::VtListString as i32,
        ..Default::default()
    }))
}
fn us(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// The GE format name and `ge::Format` number of a layout for a tensor of rank `rank` (the
/// origin format of a plain tensor: NCHW for rank 4, else ND).
pub fn ge_format(layout: Layout, rank: usize) -> (&'static str, i64) {
    match layout {
        Layout::Nc1hwc0(_) => ("NC1HWC0", format::NC1HWC0),
        Layout::FractalZ { .. } => ("FRACTAL_Z", format::FRACTAL_Z),
        Layout::FractalNz(_) => ("FRACTAL_NZ", format::FRACTAL_NZ),
        Layout::Nhwc => ("NHWC", format::NHWC),
        _ if rank == 4 => ("NCHW", format::NCHW),
        _ => ("ND", format::ND),
    }
}

/// The descriptor of a tensor of type `ty`: plain (NCHW for rank 4, else ND), or in a device
/// layout with its physical shape (`origin_format`/`origin_shape` keep the logical ones).
pub fn descriptor(ty: &TensorType, name: &str) -> TensorDescriptor {
    let (origin, ofmt) = ge_format(Layout::Plain, ty.rank());
    let (layout, fmt) = match ty.layout {
        Layout::Nchwc(_) => (origin, ofmt),
        l => ge_format(l, ty.rank()),
    };
    let logical = us(&ty.shape);
    let dims = match ty.layout {
        Layout::Plain | Layout::Nchwc(_) => logical.clone(),
        l => kiln_ir::layout::physical_shape(l, &ty.shape)
            .map(|s| us(&s))
            .unwrap_or_else(|| logical.clone()),
    };
    let mut attr = BTreeMap::new();
    attr.insert("origin_format".into(), a_s(origin));
    attr.insert("origin_shape".into(), a_ints(&logical));
    attr.insert("origin_shape_initialized".into(), a_b(true));
    attr.insert("format_for_int".into(), a_i(fmt));
    attr.insert("origin_format_for_int".into(), a_i(ofmt));
    if let Layout::FractalZ { groups, .. } = ty.layout
        && groups > 1
    {
        attr.insert("groups".into(), a_i(groups as i64));
    }
    TensorDescriptor {
        name: name.to_string(),
        dtype: proto_of_dtype(ty.dtype),
        real_dim_cnt: dims.len() as i64,
        shape: Some(ShapeDef { dim: dims }),
        layout: layout.into(),
        attr,
        device_type: "NPU".into(),
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
    opts: &'g GeOptions,
    ops: Vec<OpDef>,
    /// The op output (`"op:idx"`) that holds each value, and the type it has there.
    edge: HashMap<Val, (String, TensorType)>,
    /// The same value in another element type (a `Cast`, or a converted constant).
    converted: HashMap<(Val, DType), String>,
    /// Constants not yet written (graph constants, writer-made operands): a `Const` op is
    /// written when an op first reads one, in the element type it reads.
    consts: HashMap<Val, (TensorType, Bytes)>,
    aux: Vec<TensorType>,
    /// Names of the writer-made constants (by `Val::Aux` index).
    aux_names: HashMap<usize, String>,
    names: HashSet<String>,
    /// Whether the node being written computes in fp16.
    fp16: bool,
}

/// f32 -> f16 bytes (round to nearest even), for weights written in fp16.
pub fn f32_to_f16_bytes(b: &[u8]) -> Vec<u8> {
    b.chunks_exact(4)
        .flat_map(|c| {
            half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
        })
        .collect()
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

    /// The IR type of a value.
    fn ty(&self, v: Val) -> TensorType {
        match v {
            Val::G(v) => self.g.ty(v).clone(),
            Val::Aux(i) => self.aux[i].clone(),
        }
    }

    /// `t` as the node being written reads or writes it (f32 -> f16 in an fp16 node).
    fn map(&self, t: &TensorType) -> TensorType {
        if self.fp16 && t.dtype == DType::F32 {
            t.with_dtype(DType::F16)
        } else {
            t.clone()
        }
    }

    /// The edge reading `v` in the type the node being written wants (a constant is written
    /// on first use; a value of another float type gets a `Cast`).
    fn input(&mut self, v: Val) -> (String, TensorType) {
        let want = self.map(&self.ty(v));
        if let Some((e, t)) = self.edge.get(&v) {
            if t.dtype == want.dtype {
                return (e.clone(), t.clone());
            }
        } else if let Some((t, data)) = self.consts.get(&v).cloned() {
            let e = self.write_const(v, &t, data, want.dtype);
            self.edge.insert(v, (e.clone(), want.clone()));
            return (e, want);
        }
        if let Some(e) = self.converted.get(&(v, want.dtype)) {
            return (e.clone(), want);
        }
        let (src, st) = self.edge[&v].clone();
        let e = if let Some((t, data)) = self.consts.get(&v).cloned() {
            self.write_const(v, &t, data, want.dtype)
        } else {
            let base = format!(
                "{}_cast_{}",
                src.rsplit_once(':').map_or(&*src, |p| p.0),
                want.dtype
            );
            let name = self.fresh(&base);
            let mut attr = BTreeMap::new();
            attr.insert("dst_type".to_string(), a_i(ge_of_dtype(want.dtype)));
            self.push(OpDef {
                name: name.clone(),
                r#type: "Cast".into(),
                input: vec![src],
                attr,
                input_desc: vec![descriptor(&st, "")],
                output_desc: vec![descriptor(&want, &name)],
                ..Default::default()
            });
            format!("{name}:0")
        };
        self.converted.insert((v, want.dtype), e.clone());
        (e, want)
    }

    /// A `Const` op holding `data` (of type `t`) converted to `dtype` (f32 -> f16 only); its
    /// value is named after the IR value.
    fn write_const(&mut self, v: Val, t: &TensorType, data: Bytes, dtype: DType) -> String {
        let name = match v {
            Val::G(v) => self.g.value(v).name.clone(),
            Val::Aux(_) => String::new(),
        };
        let (t, data) = if dtype != t.dtype && t.dtype == DType::F32 && dtype == DType::F16 {
            (t.with_dtype(dtype), Bytes::from(f32_to_f16_bytes(&data)))
        } else {
            (t.clone(), data)
        };
        let vname = if name.is_empty() {
            self.consts_name(v)
        } else if self.edge.contains_key(&v) || self.converted.keys().any(|(x, _)| *x == v) {
            format!("{name}_{}", t.dtype)
        } else {
            name
        };
        self.const_op(&vname, &t, data)
    }

    fn consts_name(&self, v: Val) -> String {
        match v {
            Val::Aux(i) => self
                .aux_names
                .get(&i)
                .cloned()
                .unwrap_or_else(|| format!("const_{i}")),
            Val::G(v) => self.g.value(v).name.clone(),
        }
    }

    fn push(&mut self, op: OpDef) {
        self.ops.push(op);
    }

    /// Append op `ty` named after `name`, reading `ins` (`None`: an absent optional input;
    /// `ports` name them), with outputs of types and names `outs` (IR types: mapped to the
    /// node's precision). Returns the op name.
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
        let mut input = Vec::new();
        let mut input_desc = Vec::new();
        for v in ins {
            match v {
                Some(v) => {
                    let (e, t) = self.input(*v);
                    input.push(e);
                    input_desc.push(descriptor(&t, ""));
                }
                None => {
                    input.push(String::new());
                    input_desc.push(TensorDescriptor::default());
                }
            }
        }
        let output_desc = outs
            .iter()
            .map(|(t, n)| descriptor(&self.map(t), n))
            .collect();
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
        self.push(OpDef {
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

    /// Record that output `k` of op `op` holds `v` (of IR type `t`, in the node's precision).
    fn bind(&mut self, v: Val, op: &str, k: usize, t: &TensorType) {
        let t = self.map(t);
        self.edge.insert(v, (format!("{op}:{k}"), t));
    }

    /// A `Const` op named `<name>_const` holding `data` (its value is named `name`).
    fn const_op(&mut self, name: &str, ty: &TensorType, data: Bytes) -> String {
        let t = TensorDef {
            desc: Some(descriptor(ty, name)),
            data,
        };
        let fp16 = std::mem::replace(&mut self.fp16, false);
        let op = self.op(
            "Const",
            &format!("{name}_const"),
            &[],
            &[],
            &[(ty.clone(), name.to_string())],
            vec![("value", av(AV::T(t)))],
        );
        self.fp16 = fp16;
        format!("{op}:0")
    }

    /// A constant input the writer creates (an axis, shape or scalar GE takes as a tensor).
    fn aux(&mut self, name: &str, ty: TensorType, bytes: Vec<u8>) -> Val {
        self.aux_names.insert(self.aux.len(), name.to_string());
        let v = Val::Aux(self.aux.len());
        self.aux.push(ty.clone());
        self.consts.insert(v, (ty, Bytes::from(bytes)));
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
        let op = self.op(ty, &n, ins, ports, &[(t.clone(), n.clone())], attrs);
        self.bind(v, &op, 0, &t);
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
                    ActKind::Affine => {
                        // alpha x + beta: a Mul and an Add of scalar constants
                        let base = match &out {
                            Out::Value(v) => self.g.value(*v).name.clone(),
                            Out::Temp(_, n) => n.clone(),
                        };
                        let t = self.ty(x);
                        let dt = t.dtype;
                        let a = self.aux_scalar(&format!("{base}/alpha"), alpha as f64, dt)?;
                        let b = self.aux_scalar(&format!("{base}/beta"), beta as f64, dt)?;
                        let m = self.emit1(
                            "Mul",
                            Out::Temp(t, format!("{base}/scaled")),
                            &[Some(x), Some(a)],
                            &["x1", "x2"],
                            vec![],
                        );
                        return Ok(self.emit1(
                            "Add",
                            out,
                            &[Some(m), Some(b)],
                            &["x1", "x2"],
                            vec![],
                        ));
                    }
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
                let device = matches!(a.layout, Layout::Plain | Layout::Nc1hwc0(_));
                if a.kernel.len() != 2 || !(a.layout.is_plain() || self.opts.compiled && device) {
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
                let t = self.g.ty(out).clone();
                self.bind(Val::G(out), &n, 0, &t);
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
                    let t = self.g.ty(o).clone();
                    self.bind(Val::G(o), &n, k, &t);
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
                let t = self.g.ty(out).clone();
                self.bind(Val::G(out), &n, 0, &t);
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
            Op::Relayout { to } if self.opts.compiled => {
                let src = ity(0);
                let v = Val::G(ins[0]);
                if let Some((t, data)) = self.consts.get(&v).cloned() {
                    // a weight packed at compile time: a Const in the device layout
                    let want = self.map(&t);
                    let data = if want.dtype != t.dtype {
                        Bytes::from(f32_to_f16_bytes(&data))
                    } else {
                        data
                    };
                    let packed = kiln_ir::layout::pack(*to, &t.shape, want.dtype.size(), &data)
                        .ok_or_else(|| format!("cannot pack {t} as {to}"))?;
                    let oty = self.g.ty(out).with_dtype(want.dtype);
                    let e = self.const_op(&oname, &oty, Bytes::from(packed));
                    self.edge.insert(Val::G(out), (e, oty));
                } else {
                    let (sf, _) = ge_format(src.layout, src.rank());
                    let (df, _) = ge_format(*to, src.rank());
                    let mut attrs = vec![("src_format", a_s(sf)), ("dst_format", a_s(df))];
                    if let Layout::FractalZ { groups, .. } = to {
                        attrs.push(("groups", a_i(*groups as i64)));
                    }
                    self.emit1("TransData", Out::Value(out), &[x(0)], &["src"], attrs);
                }
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

/// The ModelDef of `g` in the AIR style. Weights are referenced, not copied, except into the
/// protobuf bytes.
pub fn export(g: &Graph) -> R<ModelDef> {
    export_with(g, &GeOptions::default())
}

/// The ModelDef of `g` in the style `opts` asks for.
pub fn export_with(g: &Graph, opts: &GeOptions) -> R<ModelDef> {
    let mut w = Writer {
        g,
        opts,
        ops: vec![],
        edge: HashMap::new(),
        converted: HashMap::new(),
        consts: HashMap::new(),
        aux: vec![],
        aux_names: HashMap::new(),
        names: HashSet::new(),
        fp16: false,
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
        w.bind(Val::G(v), &n, 0, &val.ty);
    }
    let consts = g.live_consts();
    for &v in &consts {
        let val = g.value(v);
        let ValueDef::Const(d) = &val.def else {
            continue;
        };
        w.consts
            .insert(Val::G(v), (val.ty.clone(), Bytes::from_owner(d.clone())));
    }
    if !opts.compiled {
        // MindSpore's exporter writes every parameter first
        for &v in &consts {
            w.input(Val::G(v));
        }
    }
    for (id, n) in g.iter_nodes() {
        if !opts.compiled {
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
        }
        w.fp16 = opts.fp16.get(id.index()).copied().unwrap_or(false);
        w.node(&n.op, &n.inputs, &n.outputs)
            .map_err(|e| format!("node '{}' ({}): {e}", n.name, n.op.name()))?;
    }
    w.fp16 = false;
    let mut outputs: Vec<String> = Vec::new();
    for &v in &g.outputs {
        // the interface keeps the IR's types (a Cast back from fp16), and its names: the Cast
        // takes the output's name, the fp16 value is renamed
        let native = w.edge.get(&Val::G(v)).map(|(e, _)| e.clone());
        let e = w.input(Val::G(v)).0;
        if opts.compiled && native.as_ref().is_some_and(|n| *n != e) {
            let name = g.value(v).name.clone();
            let find = |edge: &str| {
                edge.rsplit_once(':')
                    .map(|(op, k)| (op.to_string(), k.parse::<usize>().unwrap_or(0)))
            };
            if let (Some((pop, pk)), Some((cop, _))) = (native.as_deref().and_then(find), find(&e))
            {
                for op in w.ops.iter_mut() {
                    if op.name == pop
                        && let Some(d) = op.output_desc.get_mut(pk)
                    {
                        d.name = format!("{name}_fp16");
                    }
                    if op.name == cop
                        && let Some(d) = op.output_desc.get_mut(0)
                    {
                        d.name = name.clone();
                    }
                }
            }
        }
        outputs.push(e);
    }
    let mut graph = GraphDef {
        name: g.name.clone(),
        ..Default::default()
    };
    if opts.compiled {
        let input_desc = g.outputs.iter().map(|&v| descriptor(g.ty(v), "")).collect();
        let name = w.fresh("Node_Output");
        w.ops.push(OpDef {
            name,
            r#type: "NetOutput".into(),
            input: outputs,
            input_desc,
            ..Default::default()
        });
    } else {
        graph.input = inputs;
        graph.output = outputs;
    }
    graph.op = w.ops;
    Ok(ModelDef {
        name: g.name.clone(),
        version: 1,
        custom_version: String::new(),
        graph: vec![graph],
        ..Default::default()
    })
}
