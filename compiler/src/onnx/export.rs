//! ONNX writer: any kiln graph -> a standard ONNX model (default opset 21) with the same
//! semantics, which ONNX Runtime loads and runs.
//!
//! Every kiln value keeps its name (graph inputs and outputs, constants as initializers with
//! little-endian `raw_data`, node outputs); helper values the translation needs are named
//! `<kiln node>/<what>` and never collide with a kiln name. Each [`Op`] becomes the standard
//! ONNX op or op sequence with exactly the IR's semantics (the reference interpreter
//! `kiln_ir::interp` is the definition):
//! - fused epilogues (`conv`/`matmul`/`gemm` `epilogue`, `chain` steps) become the product
//!   followed by one standard op per step; `layer_norm` is LayerNormalization, `gelu` /
//!   `gelu_tanh` are Gelu (opset 20), `hard_swish` HardSwish, `mish` Mish;
//! - ops without an ONNX counterpart are compositions: `swish` and `affine` (Mul/Sigmoid/Add),
//!   `resample` (Gather + Mul + ReduceSum, Where for the fill), float `mod` (Mod fmod=1 and a
//!   sign fix), signed shifts (BitShift on the unsigned type), `cum_prod` below opset 26 (a
//!   doubling scan of Mul), integer convolutions (im2col slices + MatMul), empty-axes
//!   reductions (over an inserted unit axis);
//! - layouts never change values, so a channel-blocked graph is written as its logical graph
//!   (`relayout` is Identity).
//!
//! Opset 21 (IR version 10) is the default: every op used exists there (Gelu needs 20,
//! LayerNormalization 17, axes-as-input reductions and Split/Pad/ScatterND reductions 18,
//! AveragePool dilations and Pad `wrap` 19), onnx 1.22's checker knows it and ONNX Runtime
//! implements it since 1.20 (1.32 is the project's version). `bit_cast` needs opset 26 (ONNX
//! BitCast), where `cum_prod` also becomes CumProd ([`ExportOptions::opset`]; the op tests run
//! every op in ONNX Runtime at 21 and 26). Where ONNX Runtime has no kernel for an element type
//! and a standard form it runs exists, that form is written (i64 Relu as Max, PRelu outside
//! f32/f16 as Where, signed right shifts without a Where on unsigned types); f64 activations
//! stay the standard ops (valid ONNX, though ONNX Runtime implements many for f32 only).
//!
//! NaN inputs follow ONNX where the interpreter's `f64::max`/`min` drop NaN (`clip`, reduce
//! max/min): ONNX Runtime propagates it.
//!
//! Models whose initializers exceed [`ExportOptions::external_threshold`] (2e9 bytes by default,
//! below protobuf's 2 GiB limit) keep their tensors of at least
//! [`ExportOptions::external_min_bytes`] in `<output>.data` beside the model, at 4 KiB-aligned
//! offsets (`location`/`offset`/`length`); [`write_file`] writes both files atomically.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_ir::ops::{
    ActKind, BinaryOp, CmpOp, ConvAttrs, CoordTransform, EpilogueStep, LogicOp, NearestMode,
    PadMode, PoolAttrs, ReduceKind, ResizeMode, ScatterReduction, SoftmaxKind, UnaryOp,
    broadcast_shapes,
};
use kiln_ir::{ConstData, DType, Graph, Op, TensorType, ValueDef, ValueId};
use prost::Message;

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto, tensor_shape_proto, type_proto,
};

/// The default opset (see the module docs for why).
pub const DEFAULT_OPSET: i64 = 21;
/// Opsets [`ExportOptions::opset`] accepts: every op kiln emits has the same semantics in all.
pub const OPSETS: std::ops::RangeInclusive<i64> = 21..=26;
/// Alignment of tensors in the external data file (the page size, so a reader can map them).
pub const EXTERNAL_ALIGN: u64 = 4096;
/// Largest serialized protobuf message (protobuf's 2 GiB limit).
const MAX_PROTO_BYTES: usize = i32::MAX as usize;

/// Options for [`write`] / [`write_file`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// ONNX opset of the default domain, in [`OPSETS`] (default [`DEFAULT_OPSET`]).
    pub opset: i64,
    /// External data is used when the initializers hold more than this many bytes
    /// (default 2e9: a model over 2 GB; tests set 0 to force it on small models).
    pub external_threshold: u64,
    /// With external data, tensors smaller than this stay inline (default 1024 bytes, as
    /// onnx's `convert_model_to_external_data`).
    pub external_min_bytes: usize,
    /// Write `value_info` (type and shape) for every intermediate kiln value (default true).
    pub value_info: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            external_threshold: 2_000_000_000,
            external_min_bytes: 1024,
            value_info: true,
        }
    }
}

/// Why a graph could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A node (op + attributes + types) with no ONNX expression.
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    /// Several such nodes, every one listed.
    #[error("graph '{graph}': {} nodes have no ONNX expression: {}", .nodes.len(), list(.nodes))]
    Nodes {
        graph: String,
        /// (node, op, why) per node.
        nodes: Vec<(String, String, String)>,
    },
    #[error("graph '{graph}': {msg}")]
    Graph { graph: String, msg: String },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
}

fn list(nodes: &[(String, String, String)]) -> String {
    nodes
        .iter()
        .map(|(n, op, msg)| format!("node '{n}' ({op}): {msg}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The model with every initializer inline.
pub fn to_model(g: &Graph, opts: &ExportOptions) -> Result<ModelProto, ExportError> {
    let b = build(g, opts)?;
    let total = b.data_bytes();
    if total > opts.external_threshold {
        return Err(b.graph_err(format!(
            "{total} bytes of initializers exceed the external data threshold {}: write it \
             with write_file (external data)",
            opts.external_threshold
        )));
    }
    Ok(b.inline_all())
}

/// The serialized model with every initializer inline (see [`write_file`] for external data).
pub fn write(g: &Graph, opts: &ExportOptions) -> Result<Vec<u8>, ExportError> {
    let m = to_model(g, opts)?;
    encode(g, &m)
}

/// Write `g` to `path` as an ONNX model: inline, or with external data in `<path>.data` when
/// the initializers exceed `opts.external_threshold`. The file(s) appear atomically: on any
/// error nothing is left behind (an existing file at `path` is kept).
pub fn write_file(g: &Graph, path: &Path, opts: &ExportOptions) -> Result<(), ExportError> {
    let b = build(g, opts)?;
    let io = |msg: String| ExportError::Io {
        path: path.to_path_buf(),
        msg,
    };
    if b.data_bytes() <= opts.external_threshold {
        let bytes = encode(g, &b.inline_all())?;
        return kiln_target_cpu::link::write_atomic(path, &bytes).map_err(|e| io(e.to_string()));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io("the model path needs a UTF-8 file name".into()))?;
    let location = format!("{name}.data");
    let data_path = path.with_file_name(&location);
    let (model, layout) = b.externalize(&location, opts.external_min_bytes);
    let bytes = encode(g, &model)?;
    // the data file first (streamed into a private directory beside it, then renamed), then
    // the model; a failed model write takes the data file away again
    kiln_runtime::atomic::produce(
        &data_path,
        |p, e| io(format!("{}: {e}", p.display())),
        |tmp| {
            let err = |e: std::io::Error| io(format!("{}: {e}", tmp.display()));
            let f = std::fs::File::create(tmp).map_err(err)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let mut at = 0u64;
            for (data, offset) in &layout {
                let zeros = [0u8; EXTERNAL_ALIGN as usize];
                while at < *offset {
                    let n = ((*offset - at) as usize).min(zeros.len());
                    w.write_all(&zeros[..n]).map_err(err)?;
                    at += n as u64;
                }
                w.write_all(data.bytes()).map_err(err)?;
                at += data.bytes().len() as u64;
            }
            let f = w.into_inner().map_err(|e| err(e.into_error()))?;
            f.sync_all().map_err(err)
        },
    )?;
    if let Err(e) = kiln_target_cpu::link::write_atomic(path, &bytes) {
        let _ = std::fs::remove_file(&data_path);
        return Err(io(e.to_string()));
    }
    Ok(())
}

fn encode(g: &Graph, m: &ModelProto) -> Result<Vec<u8>, ExportError> {
    let n = m.encoded_len();
    if n > MAX_PROTO_BYTES {
        return Err(ExportError::Graph {
            graph: g.name.clone(),
            msg: format!(
                "the model needs {n} bytes, over protobuf's 2 GiB limit: lower the external \
                 data threshold"
            ),
        });
    }
    Ok(m.encode_to_vec())
}

/// Initializer bytes: a window into a kiln constant (no copy) or bytes made here.
enum Data {
    Const(ConstData),
    Owned(Vec<u8>),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Const(c) => c.bytes(),
            Data::Owned(v) => v,
        }
    }

    /// The bytes as a protobuf `bytes` field (a constant's window is shared, not copied).
    fn to_proto(&self) -> bytes::Bytes {
        match self {
            Data::Const(c) => bytes::Bytes::from_owner(c.clone()),
            Data::Owned(v) => bytes::Bytes::copy_from_slice(v),
        }
    }
}

/// A translated model whose initializers have no data yet; `data[i]` belongs to initializer `i`.
struct Built {
    graph_name: String,
    model: ModelProto,
    data: Vec<Data>,
}

impl Built {
    fn data_bytes(&self) -> u64 {
        self.data.iter().map(|d| d.bytes().len() as u64).sum()
    }

    fn graph_err(&self, msg: String) -> ExportError {
        ExportError::Graph {
            graph: self.graph_name.clone(),
            msg,
        }
    }

    fn inline_all(self) -> ModelProto {
        let mut m = self.model;
        let gp = m.graph.as_mut().expect("graph");
        for (t, d) in gp.initializer.iter_mut().zip(&self.data) {
            t.raw_data = Some(d.to_proto());
        }
        m
    }

    /// Tensors of at least `min` bytes go to `location`; returns the model and the external
    /// file's contents as (data, offset) in offset order.
    fn externalize(self, location: &str, min: usize) -> (ModelProto, Vec<(Data, u64)>) {
        let mut m = self.model;
        let gp = m.graph.as_mut().expect("graph");
        let mut layout = Vec::new();
        let mut at = 0u64;
        for (t, d) in gp.initializer.iter_mut().zip(self.data) {
            let len = d.bytes().len();
            if len < min.max(1) {
                t.raw_data = Some(d.to_proto());
                continue;
            }
            let offset = at.div_ceil(EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
            let kv = |k: &str, v: String| StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            };
            t.data_location = Some(tensor_proto::DataLocation::External as i32);
            t.external_data = vec![
                kv("location", location.to_string()),
                kv("offset", offset.to_string()),
                kv("length", len.to_string()),
            ];
            at = offset + len as u64;
            layout.push((d, offset));
        }
        (m, layout)
    }
}

/// IR version for an opset (onnx's `VERSION_TABLE`).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=22 => 10,
        23 => 11,
        24 => 12,
        _ => 13,
    }
}

fn build(g: &Graph, opts: &ExportOptions) -> Result<Built, ExportError> {
    let gerr = |msg: String| ExportError::Graph {
        graph: g.name.clone(),
        msg,
    };
    if !OPSETS.contains(&opts.opset) {
        return Err(gerr(format!(
            "opset {} is not supported (supported: {}..={})",
            opts.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let mut ex = Ex::new(g, opts.opset);
    let mut graph = GraphProto {
        name: Some(if g.name.is_empty() {
            "kiln".into()
        } else {
            g.name.clone()
        }),
        ..Default::default()
    };
    for &v in &g.inputs {
        let name = ex.names[v.index()].clone();
        graph.input.push(value_info(&name, g.ty(v)));
    }
    for v in g.live_consts() {
        let ValueDef::Const(d) = &g.value(v).def else {
            continue;
        };
        let ty = g.ty(v);
        // a constant that is also a graph output is stored under a helper name and copied
        // to its own name by an Identity (a graph output must be a node's or input's value)
        let name = if g.outputs.contains(&v) {
            let t = ex.fresh(&format!("{}/const", g.value(v).name));
            ex.raw_node(
                "Identity",
                &g.value(v).name,
                std::slice::from_ref(&t),
                &[ex.names[v.index()].clone()],
                vec![],
            );
            t
        } else {
            ex.names[v.index()].clone()
        };
        ex.init(name, ty.dtype, &ty.shape, Data::Const(d.clone()));
    }
    let mut seen_out = HashSet::new();
    for &o in &g.outputs {
        if !seen_out.insert(o) {
            return Err(gerr(format!(
                "value '{}' is listed twice as a graph output (ONNX output names are unique)",
                g.value(o).name
            )));
        }
    }
    // every node without an ONNX expression is reported, not just the first
    let mut failed = Vec::new();
    for (_, n) in g.iter_nodes() {
        ex.cur = n.name.clone();
        let ins: Vec<V> = n.inputs.iter().map(|&v| ex.val(v)).collect();
        let outs: Vec<V> = n.outputs.iter().map(|&v| ex.val(v)).collect();
        if let Err(msg) = ex.op(&n.op, &ins, &outs) {
            failed.push((n.name.clone(), n.op.name().to_string(), msg));
        }
    }
    if failed.len() == 1 {
        let (node, op, msg) = failed.remove(0);
        return Err(ExportError::Node { node, op, msg });
    }
    if !failed.is_empty() {
        return Err(ExportError::Nodes {
            graph: g.name.clone(),
            nodes: failed,
        });
    }
    for &o in &g.outputs {
        graph.output.push(value_info(&ex.names[o.index()], g.ty(o)));
    }
    if opts.value_info {
        for (_, n) in g.iter_nodes() {
            for &o in &n.outputs {
                if !g.outputs.contains(&o) {
                    graph
                        .value_info
                        .push(value_info(&ex.names[o.index()], g.ty(o)));
                }
            }
        }
    }
    let (nodes, inits) = (std::mem::take(&mut ex.nodes), std::mem::take(&mut ex.inits));
    graph.node = nodes;
    let mut data = Vec::with_capacity(inits.len());
    for (t, d) in inits {
        graph.initializer.push(t);
        data.push(d);
    }
    let model = ModelProto {
        ir_version: Some(ir_version(opts.opset)),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opts.opset),
        }],
        producer_name: Some("kiln".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(Built {
        graph_name: g.name.clone(),
        model,
        data,
    })
}

fn tensor_type(ty: &TensorType) -> TypeProto {
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(ty.dtype.abi_code()),
            shape: Some(TensorShapeProto {
                dim: ty
                    .shape
                    .iter()
                    .map(|&d| tensor_shape_proto::Dimension {
                        value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                        denotation: None,
                    })
                    .collect(),
            }),
        })),
        denotation: None,
    }
}

fn value_info(name: &str, ty: &TensorType) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(tensor_type(ty)),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// attributes

fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn a_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn a_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn a_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// A scalar of `dtype` holding `v`, converted as the interpreter does (`as` casts).
fn scalar_bytes(dtype: DType, v: f64) -> Result<Vec<u8>, String> {
    Ok(match dtype {
        DType::F32 => (v as f32).to_le_bytes().to_vec(),
        DType::F64 => v.to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        DType::I8 => (v as i8).to_le_bytes().to_vec(),
        DType::U8 => (v as u8).to_le_bytes().to_vec(),
        DType::I16 => (v as i16).to_le_bytes().to_vec(),
        DType::U16 => (v as u16).to_le_bytes().to_vec(),
        DType::I32 => (v as i32).to_le_bytes().to_vec(),
        DType::U32 => (v as u32).to_le_bytes().to_vec(),
        DType::I64 => (v as i64).to_le_bytes().to_vec(),
        DType::U64 => (v as u64).to_le_bytes().to_vec(),
        DType::Bool => vec![(v != 0.0) as u8],
    })
}

/// The unsigned type of a signed integer's width (for BitShift, defined on unsigned types).
fn unsigned_of(d: DType) -> Option<DType> {
    Some(match d {
        DType::I8 | DType::U8 => DType::U8,
        DType::I16 | DType::U16 => DType::U16,
        DType::I32 | DType::U32 => DType::U32,
        DType::I64 | DType::U64 => DType::U64,
        _ => return None,
    })
}

fn is_signed_int(d: DType) -> bool {
    matches!(d, DType::I8 | DType::I16 | DType::I32 | DType::I64)
}

// ---------------------------------------------------------------------------------------------
// the translation

/// An ONNX value: its name and kiln type (logical: layouts are ignored).
#[derive(Clone, Debug)]
struct V {
    name: String,
    ty: TensorType,
    /// The kiln value, when it is one (not a helper).
    id: Option<ValueId>,
}

struct Ex<'g> {
    g: &'g Graph,
    opset: i64,
    /// ONNX name of every kiln value.
    names: Vec<String>,
    taken: HashSet<String>,
    node_names: HashSet<String>,
    nodes: Vec<NodeProto>,
    inits: Vec<(TensorProto, Data)>,
    /// Helper constants by (dtype, dims, bytes), written once.
    consts: HashMap<(i32, Vec<usize>, Vec<u8>), String>,
    /// The kiln node being translated (helper names and node names derive from it).
    cur: String,
    /// The next suffix to try for a base name (so that uniquifying stays linear).
    next: HashMap<String, usize>,
}

type R<T> = Result<T, String>;

impl<'g> Ex<'g> {
    fn new(g: &'g Graph, opset: i64) -> Self {
        let mut taken: HashSet<String> = g.values.iter().map(|v| v.name.clone()).collect();
        let mut names = Vec::with_capacity(g.values.len());
        for (i, v) in g.values.iter().enumerate() {
            if v.name.is_empty() {
                let mut k = i;
                let n = loop {
                    let n = format!("kiln_value_{k}");
                    if !taken.contains(&n) {
                        break n;
                    }
                    k += g.values.len();
                };
                taken.insert(n.clone());
                names.push(n);
            } else {
                names.push(v.name.clone());
            }
        }
        Ex {
            g,
            opset,
            names,
            taken,
            node_names: HashSet::new(),
            nodes: Vec::new(),
            inits: Vec::new(),
            consts: HashMap::new(),
            cur: String::new(),
            next: HashMap::new(),
        }
    }

    fn val(&self, v: ValueId) -> V {
        V {
            name: self.names[v.index()].clone(),
            ty: self.g.ty(v).with_layout(kiln_ir::Layout::Plain),
            id: Some(v),
        }
    }

    /// A new value name `<base>` or `<base>_<k>`, unused by kiln and by earlier helpers.
    fn fresh(&mut self, base: &str) -> String {
        let n = unique(&self.taken, &mut self.next, base, base);
        self.taken.insert(n.clone());
        n
    }

    /// A helper value name for the current node.
    fn tmp(&mut self, what: &str) -> String {
        let base = format!("{}/{what}", self.cur);
        self.fresh(&base)
    }

    fn raw_node(
        &mut self,
        op_type: &str,
        base_name: &str,
        inputs: &[String],
        outputs: &[String],
        attrs: Vec<AttributeProto>,
    ) {
        let name = if base_name.is_empty() || self.node_names.contains(base_name) {
            let base = format!("{base_name}/{op_type}");
            unique(
                &self.node_names,
                &mut self.next,
                &base,
                &format!("node:{base}"),
            )
        } else {
            base_name.to_string()
        };
        self.node_names.insert(name.clone());
        self.nodes.push(NodeProto {
            input: inputs.to_vec(),
            output: outputs.to_vec(),
            name: Some(name),
            op_type: Some(op_type.into()),
            domain: Some(String::new()),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Add an ONNX node of the current kiln node.
    fn node(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        let base = self.cur.clone();
        let ins: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
        let outs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
        self.raw_node(op_type, &base, &ins, &outs, attrs);
    }

    /// A one-output node writing a new helper value; returns its name.
    fn node1(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let o = self.tmp(&op_type.to_ascii_lowercase());
        self.node(op_type, inputs, &[&o], attrs);
        o
    }

    fn init(&mut self, name: String, dtype: DType, dims: &[usize], data: Data) {
        let t = TensorProto {
            dims: i64s(dims),
            data_type: Some(dtype.abi_code()),
            name: Some(name),
            ..Default::default()
        };
        self.inits.push((t, data));
    }

    /// A helper constant (shared between nodes when equal).
    fn konst(&mut self, dtype: DType, dims: &[usize], bytes: Vec<u8>, what: &str) -> String {
        let key = (dtype.abi_code(), dims.to_vec(), bytes);
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.tmp(what);
        self.init(name.clone(), dtype, dims, Data::Owned(key.2.clone()));
        self.consts.insert(key, name.clone());
        name
    }

    fn k_i64(&mut self, v: &[i64], what: &str) -> String {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.konst(DType::I64, &[v.len()], bytes, what)
    }

    fn k_usize(&mut self, v: &[usize], what: &str) -> String {
        self.k_i64(&i64s(v), what)
    }

    /// A rank-0 constant of `dtype`.
    fn k_scalar(&mut self, dtype: DType, v: f64, what: &str) -> String {
        let bytes = scalar_bytes(dtype, v).expect("every dtype has scalars");
        self.konst(dtype, &[], bytes, what)
    }

    fn need_opset(&self, min: i64, what: &str) -> R<()> {
        if self.opset < min {
            Err(format!(
                "{what} needs opset {min} or newer (exporting opset {})",
                self.opset
            ))
        } else {
            Ok(())
        }
    }

    // -----------------------------------------------------------------------------------------

    fn op(&mut self, op: &Op, ins: &[V], outs: &[V]) -> R<()> {
        let x = ins.first().cloned().ok_or("no inputs")?;
        let out = outs.first().cloned().ok_or("no outputs")?;
        let (xn, on) = (x.name.as_str(), out.name.as_str());
        match op {
            Op::If(_) | Op::Loop(_) => {
                Err("run-time control flow (if/loop) is not exported yet".into())
            }
            Op::Conv(a) => {
                let has_res = a.epilogue.contains(&EpilogueStep::Add);
                let base = &ins[..if has_res { 3 } else { ins.len() }];
                if !x.ty.dtype.is_float() {
                    if !a.epilogue.is_empty() {
                        return Err("an integer convolution has no epilogue".into());
                    }
                    return self.int_conv(a, base, &out);
                }
                let names: Vec<&str> = base.iter().map(|v| v.name.as_str()).collect();
                let attrs = vec![
                    a_ints("kernel_shape", &a.kernel),
                    a_ints("strides", &a.strides),
                    a_ints("pads", &a.pads),
                    a_ints("dilations", &a.dilations),
                    a_int("group", a.groups as i64),
                ];
                let operands = &ins[base.len()..];
                self.with_epilogue("Conv", &names, attrs, &a.epilogue, operands, &out)
            }
            Op::ConvTranspose(a) => {
                let names: Vec<&str> = ins.iter().map(|v| v.name.as_str()).collect();
                let attrs = vec![
                    a_ints("kernel_shape", &a.kernel),
                    a_ints("strides", &a.strides),
                    a_ints("pads", &a.pads),
                    a_ints("dilations", &a.dilations),
                    a_int("group", a.groups as i64),
                    a_ints("output_padding", &a.output_padding),
                ];
                self.node("ConvTranspose", &names, &[on], attrs);
                Ok(())
            }
            Op::Gemm(a) => {
                // beta = 0 ignores C entirely (the interpreter never reads it)
                let mut names = vec![xn, ins[1].name.as_str()];
                if ins.len() == 3 && a.beta != 0.0 {
                    names.push(ins[2].name.as_str());
                }
                let attrs = vec![
                    a_float("alpha", a.alpha),
                    a_float("beta", a.beta),
                    a_int("transA", a.trans_a as i64),
                    a_int("transB", a.trans_b as i64),
                ];
                self.with_epilogue("Gemm", &names, attrs, &a.epilogue, &[], &out)
            }
            Op::MatMul(a) => {
                let dt = x.ty.dtype;
                if !dt.is_float()
                    && !matches!(dt, DType::I32 | DType::I64 | DType::U32 | DType::U64)
                {
                    return Err(format!(
                        "a {dt} matmul has no ONNX expression (MatMul takes floats and 32/64-bit \
                         integers)"
                    ));
                }
                let names = [xn, ins[1].name.as_str()];
                self.with_epilogue("MatMul", &names, vec![], &a.epilogue, &ins[2..], &out)
            }
            Op::Chain { steps } => {
                let mut cur = x.clone();
                let mut operands = ins[1..].iter();
                for (i, s) in steps.iter().enumerate() {
                    let dst = if i + 1 == steps.len() {
                        out.clone()
                    } else {
                        V {
                            name: self.tmp(&format!("step{i}")),
                            ty: out.ty.clone(),
                            id: None,
                        }
                    };
                    self.step(s, &cur, &mut operands, &dst)?;
                    cur = dst;
                }
                if steps.is_empty() {
                    self.node("Identity", &[xn], &[on], vec![]);
                }
                Ok(())
            }
            Op::Binary(b) => self.binary(*b, &x, &ins[1], &out),
            Op::Unary(u) => self.unary(*u, &x, &out),
            Op::Clip { min, max } => self.clip(*min, *max, &x, &out),
            Op::Act { kind, alpha, beta } => self.act(*kind, *alpha, *beta, &x, &out),
            Op::IsNaN => {
                self.node("IsNaN", &[xn], &[on], vec![]);
                Ok(())
            }
            Op::IsInf { pos, neg } => {
                let attrs = vec![
                    a_int("detect_positive", *pos as i64),
                    a_int("detect_negative", *neg as i64),
                ];
                self.node("IsInf", &[xn], &[on], attrs);
                Ok(())
            }
            Op::BatchNorm { epsilon } => {
                let names: Vec<&str> = ins.iter().map(|v| v.name.as_str()).collect();
                self.node(
                    "BatchNormalization",
                    &names,
                    &[on],
                    vec![a_float("epsilon", *epsilon)],
                );
                Ok(())
            }
            Op::MaxPool(a) => {
                self.node("MaxPool", &[xn], &[on], pool_attrs(a, false));
                Ok(())
            }
            Op::MaxPoolIndices {
                attrs,
                storage_order,
            } => {
                let values = self.tmp("values");
                let mut at = pool_attrs(attrs, false);
                at.push(a_int("storage_order", *storage_order as i64));
                self.node("MaxPool", &[xn], &[&values, on], at);
                Ok(())
            }
            Op::AveragePool(a) => {
                self.node("AveragePool", &[xn], &[on], pool_attrs(a, true));
                Ok(())
            }
            Op::GlobalAveragePool => {
                self.node("GlobalAveragePool", &[xn], &[on], vec![]);
                Ok(())
            }
            // a layout never changes a value
            Op::Relayout { .. } => {
                self.node("Identity", &[xn], &[on], vec![]);
                Ok(())
            }
            Op::Reshape { shape } => {
                let s = self.k_usize(shape, "shape");
                let attrs = if shape.contains(&0) {
                    vec![a_int("allowzero", 1)]
                } else {
                    vec![]
                };
                self.node("Reshape", &[xn, &s], &[on], attrs);
                Ok(())
            }
            Op::Transpose { perm } => {
                self.node("Transpose", &[xn], &[on], vec![a_ints("perm", perm)]);
                Ok(())
            }
            Op::Expand { shape } => {
                let s = self.k_usize(shape, "shape");
                self.node("Expand", &[xn, &s], &[on], vec![]);
                Ok(())
            }
            Op::Concat { axis } => {
                let names: Vec<&str> = ins.iter().map(|v| v.name.as_str()).collect();
                self.node("Concat", &names, &[on], vec![a_int("axis", *axis as i64)]);
                Ok(())
            }
            Op::Split { axis, sizes } => {
                let s = self.k_usize(sizes, "split");
                let names: Vec<&str> = outs.iter().map(|v| v.name.as_str()).collect();
                self.node(
                    "Split",
                    &[xn, &s],
                    &names,
                    vec![a_int("axis", *axis as i64)],
                );
                Ok(())
            }
            Op::Slice(a) => {
                let (mut starts, mut ends, mut axes, mut steps) = (vec![], vec![], vec![], vec![]);
                for d in 0..x.ty.rank() {
                    let (s, t, n) = (a.starts[d] as i64, a.steps[d], a.sizes[d] as i64);
                    if s == 0 && t == 1 && n == x.ty.shape[d] as i64 {
                        continue;
                    }
                    let (s, e, t) = if n == 0 {
                        (0, 0, 1)
                    } else {
                        let e = s + n * t;
                        // a negative end counts from the back: past the front is i64::MIN
                        (s, if e < 0 { i64::MIN } else { e }, t)
                    };
                    starts.push(s);
                    ends.push(e);
                    axes.push(d as i64);
                    steps.push(t);
                }
                if axes.is_empty() {
                    self.node("Identity", &[xn], &[on], vec![]);
                    return Ok(());
                }
                let s = self.k_i64(&starts, "starts");
                let e = self.k_i64(&ends, "ends");
                let ax = self.k_i64(&axes, "axes");
                let st = self.k_i64(&steps, "steps");
                self.node("Slice", &[xn, &s, &e, &ax, &st], &[on], vec![]);
                Ok(())
            }
            Op::LayerNorm { axis, epsilon } => {
                let row = x.ty.shape[*axis..].to_vec();
                let scale = match ins.get(1) {
                    Some(s) => self.reshaped(s, &row, "scale"),
                    None => {
                        let n: usize = row.iter().product();
                        let one = scalar_bytes(x.ty.dtype, 1.0)?;
                        let bytes = one.repeat(n);
                        self.konst(x.ty.dtype, &row, bytes, "scale")
                    }
                };
                let mut names = vec![xn.to_string(), scale];
                if let Some(b) = ins.get(2) {
                    names.push(self.reshaped(b, &row, "bias"));
                }
                let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                let attrs = vec![
                    a_int("axis", *axis as i64),
                    a_float("epsilon", *epsilon),
                    a_int("stash_type", 1),
                ];
                self.node("LayerNormalization", &names, &[on], attrs);
                Ok(())
            }
            Op::Softmax { axis, kind } => {
                let t = match kind {
                    SoftmaxKind::Softmax => "Softmax",
                    SoftmaxKind::LogSoftmax => "LogSoftmax",
                    SoftmaxKind::Hardmax => "Hardmax",
                };
                self.node(t, &[xn], &[on], vec![a_int("axis", *axis as i64)]);
                Ok(())
            }
            Op::Gather { axis } => {
                let attrs = vec![a_int("axis", *axis as i64)];
                self.node("Gather", &[xn, &ins[1].name], &[on], attrs);
                Ok(())
            }
            Op::GatherElements { axis } => {
                let attrs = vec![a_int("axis", *axis as i64)];
                self.node("GatherElements", &[xn, &ins[1].name], &[on], attrs);
                Ok(())
            }
            Op::ScatterElements { axis, reduction } => {
                let attrs = vec![
                    a_int("axis", *axis as i64),
                    a_str("reduction", reduction_name(*reduction)),
                ];
                let names = [xn, ins[1].name.as_str(), ins[2].name.as_str()];
                self.node("ScatterElements", &names, &[on], attrs);
                Ok(())
            }
            Op::GatherND { batch_dims } => {
                let attrs = vec![a_int("batch_dims", *batch_dims as i64)];
                self.node("GatherND", &[xn, &ins[1].name], &[on], attrs);
                Ok(())
            }
            Op::ScatterND { reduction } => {
                let attrs = vec![a_str("reduction", reduction_name(*reduction))];
                let names = [xn, ins[1].name.as_str(), ins[2].name.as_str()];
                self.node("ScatterND", &names, &[on], attrs);
                Ok(())
            }
            Op::Compare(c) => {
                let t = match c {
                    CmpOp::Equal => "Equal",
                    CmpOp::Less => "Less",
                    CmpOp::Greater => "Greater",
                    CmpOp::LessOrEqual => "LessOrEqual",
                    CmpOp::GreaterOrEqual => "GreaterOrEqual",
                };
                let (mut a, mut b) = (xn.to_string(), ins[1].name.clone());
                if x.ty.dtype == DType::Bool && *c != CmpOp::Equal {
                    // ONNX orders numbers only: false < true as 0 < 1
                    let to = vec![a_int("to", DType::I32.abi_code() as i64)];
                    a = self.node1("Cast", &[&a], to.clone());
                    b = self.node1("Cast", &[&b], to);
                }
                self.node(t, &[&a, &b], &[on], vec![]);
                Ok(())
            }
            Op::Logical(l) => {
                let t = match l {
                    LogicOp::And => "And",
                    LogicOp::Or => "Or",
                    LogicOp::Xor => "Xor",
                };
                self.node(t, &[xn, &ins[1].name], &[on], vec![]);
                Ok(())
            }
            Op::Not => {
                self.node("Not", &[xn], &[on], vec![]);
                Ok(())
            }
            Op::Where => {
                let names = [xn, ins[1].name.as_str(), ins[2].name.as_str()];
                self.node("Where", &names, &[on], vec![]);
                Ok(())
            }
            Op::ArgExtreme {
                max,
                axis,
                keepdims,
                select_last,
            } => {
                let attrs = vec![
                    a_int("axis", *axis as i64),
                    a_int("keepdims", *keepdims as i64),
                    a_int("select_last_index", *select_last as i64),
                ];
                let t = if *max { "ArgMax" } else { "ArgMin" };
                self.node(t, &[xn], &[on], attrs);
                Ok(())
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let t = match kind {
                    ReduceKind::Sum => "ReduceSum",
                    ReduceKind::Mean => "ReduceMean",
                    ReduceKind::Max => "ReduceMax",
                    ReduceKind::Min => "ReduceMin",
                    ReduceKind::Prod => "ReduceProd",
                    ReduceKind::SumSquare => "ReduceSumSquare",
                    ReduceKind::L1 => "ReduceL1",
                    ReduceKind::L2 => "ReduceL2",
                    ReduceKind::LogSum => "ReduceLogSum",
                    ReduceKind::LogSumExp => "ReduceLogSumExp",
                };
                if axes.is_empty() {
                    // no axes: each element goes through the reduction alone (SumSquare
                    // squares it, LogSum takes its log, ...): reduce over a new unit axis
                    let zero = self.k_i64(&[0], "axes");
                    let u = self.node1("Unsqueeze", &[xn, &zero], vec![]);
                    self.node(t, &[&u, &zero], &[on], vec![a_int("keepdims", 0)]);
                    return Ok(());
                }
                let ax = self.k_usize(axes, "axes");
                self.node(
                    t,
                    &[xn, &ax],
                    &[on],
                    vec![a_int("keepdims", *keepdims as i64)],
                );
                Ok(())
            }
            Op::Resize(a) => self.resize(a, &x, &out),
            Op::Cast { to } => {
                self.node(
                    "Cast",
                    &[xn],
                    &[on],
                    vec![a_int("to", to.abi_code() as i64)],
                );
                Ok(())
            }
            Op::BitCast { to } => {
                self.need_opset(26, "bit_cast (ONNX BitCast)")?;
                self.bit_cast(&x, *to, &out)
            }
            Op::Pad { pads, mode, .. } if *mode != PadMode::Constant => {
                self.pad_indexed(*mode, pads, &x, &out)
            }
            Op::Pad { pads, value, .. } => {
                let p = self.k_i64(pads, "pads");
                let v = self.k_scalar(x.ty.dtype, *value, "value");
                self.node("Pad", &[xn, &p, &v], &[on], vec![a_str("mode", "constant")]);
                Ok(())
            }
            Op::Resample { axis, fill } => self.resample(*axis, *fill, ins, &out),
            Op::CumSum {
                axis,
                exclusive,
                reverse,
                prod,
            } => {
                if *prod && self.opset < 26 {
                    return self.cum_prod_scan(*axis, *exclusive, *reverse, &x, &out);
                }
                let ax = self.k_scalar(DType::I64, *axis as f64, "axis");
                let attrs = vec![
                    a_int("exclusive", *exclusive as i64),
                    a_int("reverse", *reverse as i64),
                ];
                let t = if *prod { "CumProd" } else { "CumSum" };
                self.node(t, &[xn, &ax], &[on], attrs);
                Ok(())
            }
            Op::TopK { axis, k, largest } => {
                let kk = self.k_usize(&[*k], "k");
                let attrs = vec![
                    a_int("axis", *axis as i64),
                    a_int("largest", *largest as i64),
                    a_int("sorted", 1),
                ];
                self.node("TopK", &[xn, &kk], &[on, &outs[1].name], attrs);
                Ok(())
            }
        }
    }

    /// Edge, reflect and wrap padding. ONNX Pad is used where its semantics are the IR's
    /// (pads >= 0, reflect pads below the axis length, wrap pads up to it); otherwise (crops
    /// with these modes, which ONNX Runtime applies before padding; larger pads; reflecting a
    /// length-1 axis) each padded axis is a Gather of the interpreter's source indices.
    fn pad_indexed(&mut self, mode: PadMode, pads: &[i64], x: &V, out: &V) -> R<()> {
        let r = x.ty.rank();
        let direct = (0..r).all(|d| {
            let (len, b, e) = (x.ty.shape[d] as i64, pads[d], pads[r + d]);
            if b == 0 && e == 0 {
                return true;
            }
            b >= 0
                && e >= 0
                && match mode {
                    PadMode::Edge => len >= 1,
                    PadMode::Reflect => len >= 2 && b < len && e < len,
                    _ => len >= 1 && b <= len && e <= len,
                }
        });
        let m = match mode {
            PadMode::Reflect => "reflect",
            PadMode::Edge => "edge",
            _ => "wrap",
        };
        if direct {
            let p = self.k_i64(pads, "pads");
            self.node("Pad", &[&x.name, &p], &[&out.name], vec![a_str("mode", m)]);
            return Ok(());
        }
        let mut cur = x.name.clone();
        for d in 0..r {
            let (len, b) = (x.ty.shape[d] as i64, pads[d]);
            let n = out.ty.shape[d];
            if b == 0 && pads[r + d] == 0 {
                continue;
            }
            if len == 0 {
                return Err(format!("{m} padding of the empty axis {d}"));
            }
            // as the interpreter: source index of each output index
            let idx: Vec<i64> = (0..n as i64)
                .map(|o| {
                    let j = o - b;
                    match mode {
                        _ if (0..len).contains(&j) => j,
                        PadMode::Edge => j.clamp(0, len - 1),
                        PadMode::Wrap => j.rem_euclid(len),
                        _ if len == 1 => 0,
                        _ => {
                            let p = 2 * (len - 1);
                            let k = j.rem_euclid(p);
                            if k < len { k } else { p - k }
                        }
                    }
                })
                .collect();
            let i = self.k_i64(&idx, &format!("{m}_indices"));
            cur = self.node1("Gather", &[&cur, &i], vec![a_int("axis", d as i64)]);
        }
        self.node("Identity", &[&cur], &[&out.name], vec![]);
        Ok(())
    }

    /// `v` reshaped to `shape` (itself when it has that shape already).
    fn reshaped(&mut self, v: &V, shape: &[usize], what: &str) -> String {
        if v.ty.shape == shape {
            return v.name.clone();
        }
        let s = self.k_usize(shape, &format!("{what}_shape"));
        let o = self.tmp(what);
        self.node("Reshape", &[&v.name, &s], &[&o], vec![]);
        o
    }

    /// A product node followed by its fused epilogue, one standard op per step.
    fn with_epilogue(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        steps: &[EpilogueStep],
        operands: &[V],
        out: &V,
    ) -> R<()> {
        if steps.is_empty() {
            self.node(op_type, inputs, &[&out.name], attrs);
            return Ok(());
        }
        let t = self.tmp(&op_type.to_ascii_lowercase());
        self.node(op_type, inputs, &[&t], attrs);
        let mut cur = V {
            name: t,
            ty: out.ty.clone(),
            id: None,
        };
        let mut operands = operands.iter();
        for (i, s) in steps.iter().enumerate() {
            let dst = if i + 1 == steps.len() {
                out.clone()
            } else {
                V {
                    name: self.tmp(&format!("epilogue{i}")),
                    ty: out.ty.clone(),
                    id: None,
                }
            };
            self.step(s, &cur, &mut operands, &dst)?;
            cur = dst;
        }
        Ok(())
    }

    /// One epilogue/chain step from `cur` into `dst`; `add`/`mul` read the next operand.
    fn step<'a>(
        &mut self,
        s: &EpilogueStep,
        cur: &V,
        operands: &mut impl Iterator<Item = &'a V>,
        dst: &V,
    ) -> R<()> {
        if s.is_binary() {
            let r = operands.next().ok_or("an epilogue operand is missing")?;
            self.op(
                &s.as_op(),
                &[cur.clone(), r.clone()],
                std::slice::from_ref(dst),
            )
        } else {
            self.op(
                &s.as_op(),
                std::slice::from_ref(cur),
                std::slice::from_ref(dst),
            )
        }
    }

    fn binary(&mut self, b: BinaryOp, x: &V, y: &V, out: &V) -> R<()> {
        let dt = x.ty.dtype;
        let (xn, yn, on) = (x.name.as_str(), y.name.as_str(), out.name.as_str());
        let simple = match b {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
            BinaryOp::Pow => "Pow",
            BinaryOp::Max => "Max",
            BinaryOp::Min => "Min",
            BinaryOp::BitAnd | BinaryOp::BitOr | BinaryOp::BitXor
                if dt.is_float() || dt == DType::Bool =>
            {
                return Err(format!("{} is not defined on {dt}", b.name()));
            }
            BinaryOp::BitAnd => "BitwiseAnd",
            BinaryOp::BitOr => "BitwiseOr",
            BinaryOp::BitXor => "BitwiseXor",
            BinaryOp::Fmod => {
                self.node("Mod", &[xn, yn], &[on], vec![a_int("fmod", 1)]);
                return Ok(());
            }
            BinaryOp::Mod if !dt.is_float() => {
                self.node("Mod", &[xn, yn], &[on], vec![a_int("fmod", 0)]);
                return Ok(());
            }
            BinaryOp::Mod => {
                // ONNX has the divisor-signed remainder for integers only: take C's fmod
                // and add the divisor where the signs differ (r != 0)
                let r = self.node1("Mod", &[xn, yn], vec![a_int("fmod", 1)]);
                let zero = self.k_scalar(dt, 0.0, "zero");
                let rz = self.node1("Equal", &[&r, &zero], vec![]);
                let nz = self.node1("Not", &[&rz], vec![]);
                let rn = self.node1("Less", &[&r, &zero], vec![]);
                let yneg = self.node1("Less", &[yn, &zero], vec![]);
                let diff = self.node1("Xor", &[&rn, &yneg], vec![]);
                let fix = self.node1("And", &[&nz, &diff], vec![]);
                let sum = self.node1("Add", &[&r, yn], vec![]);
                self.node("Where", &[&fix, &sum, &r], &[on], vec![]);
                return Ok(());
            }
            BinaryOp::Shl | BinaryOp::Shr => return self.shift(b == BinaryOp::Shl, x, y, out),
            BinaryOp::PRelu => {
                // ONNX Runtime implements PRelu for f32/f16 only
                if broadcast_shapes(&x.ty.shape, &y.ty.shape).ok().as_ref() == Some(&x.ty.shape)
                    && matches!(dt, DType::F32 | DType::F16)
                {
                    self.node("PRelu", &[xn, yn], &[on], vec![]);
                } else {
                    // `x < 0 ? x * slope : x` with the output's (multidirectional) shape
                    let zero = self.k_scalar(dt, 0.0, "zero");
                    let neg = self.node1("Less", &[xn, &zero], vec![]);
                    let m = self.node1("Mul", &[xn, yn], vec![]);
                    self.node("Where", &[&neg, &m, xn], &[on], vec![]);
                }
                return Ok(());
            }
        };
        self.node(simple, &[xn, yn], &[on], vec![]);
        Ok(())
    }

    /// Integer shifts: ONNX BitShift is defined on unsigned types; a signed operand is shifted
    /// as its two's-complement bits, and a right shift of a negative value is arithmetic (as
    /// Rust's `>>` on signed integers).
    fn shift(&mut self, left: bool, x: &V, y: &V, out: &V) -> R<()> {
        let dt = x.ty.dtype;
        let u = unsigned_of(dt).ok_or_else(|| format!("shifts are not defined on {dt}"))?;
        let dir = a_str("direction", if left { "LEFT" } else { "RIGHT" });
        let to_u = vec![a_int("to", u.abi_code() as i64)];
        if dt == u {
            self.node("BitShift", &[&x.name, &y.name], &[&out.name], vec![dir]);
            return Ok(());
        }
        let yu = self.node1("Cast", &[&y.name], to_u.clone());
        let back = vec![a_int("to", dt.abi_code() as i64)];
        if left {
            let xu = self.node1("Cast", &[&x.name], to_u);
            let s = self.node1("BitShift", &[&xu, &yu], vec![dir]);
            self.node("Cast", &[&s], &[&out.name], back);
            return Ok(());
        }
        // m = -(x < 0) (all ones or zero): x >> s = ((x ^ m) >>> s) ^ m
        let zero = self.k_scalar(dt, 0.0, "zero");
        let isneg = self.node1("Less", &[&x.name, &zero], vec![]);
        let b = self.node1("Cast", &[&isneg], back.clone());
        let m = self.node1("Neg", &[&b], vec![]);
        let t = self.node1("BitwiseXor", &[&x.name, &m], vec![]);
        let tu = self.node1("Cast", &[&t], vec![a_int("to", u.abi_code() as i64)]);
        let sh = self.node1("BitShift", &[&tu, &yu], vec![dir]);
        let s = self.node1("Cast", &[&sh], back);
        self.node("BitwiseXor", &[&s, &m], &[&out.name], vec![]);
        Ok(())
    }

    fn unary(&mut self, u: UnaryOp, x: &V, out: &V) -> R<()> {
        let dt = x.ty.dtype;
        let (xn, on) = (x.name.as_str(), out.name.as_str());
        if !dt.is_float()
            && !matches!(
                u,
                UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sign | UnaryOp::BitNot
            )
        {
            return Err(format!("{} is not defined on {dt}", u.name()));
        }
        if dt.is_float() && u == UnaryOp::BitNot {
            return Err(format!("bit_not is not defined on {dt}"));
        }
        let (t, attrs) = match u {
            // unsigned: max(x, 0) = x
            UnaryOp::Relu if matches!(dt, DType::U8 | DType::U16 | DType::U32 | DType::U64) => {
                ("Identity", vec![])
            }
            UnaryOp::Neg if !dt.is_float() && !is_signed_int(dt) => {
                // wrapping negation of an unsigned value (Neg is signed-only): negate in a
                // wide enough signed type, then cast back (modulo 2^bits)
                let wide = if dt.size() <= 2 {
                    DType::I32
                } else {
                    DType::I64
                };
                let w = self.node1("Cast", &[xn], vec![a_int("to", wide.abi_code() as i64)]);
                let n = self.node1("Neg", &[&w], vec![]);
                self.node(
                    "Cast",
                    &[&n],
                    &[on],
                    vec![a_int("to", dt.abi_code() as i64)],
                );
                return Ok(());
            }
            UnaryOp::Relu if dt == DType::I64 => {
                // ONNX Runtime has no i64 Relu kernel
                let zero = self.k_scalar(dt, 0.0, "zero");
                self.node("Max", &[xn, &zero], &[on], vec![]);
                return Ok(());
            }
            UnaryOp::Relu => ("Relu", vec![]),
            UnaryOp::Sigmoid => ("Sigmoid", vec![]),
            UnaryOp::Tanh => ("Tanh", vec![]),
            UnaryOp::Erf => ("Erf", vec![]),
            UnaryOp::Exp => ("Exp", vec![]),
            UnaryOp::Log => ("Log", vec![]),
            UnaryOp::Sqrt => ("Sqrt", vec![]),
            UnaryOp::Neg => ("Neg", vec![]),
            UnaryOp::Abs => ("Abs", vec![]),
            UnaryOp::Reciprocal => ("Reciprocal", vec![]),
            UnaryOp::Floor => ("Floor", vec![]),
            UnaryOp::Ceil => ("Ceil", vec![]),
            UnaryOp::HardSwish => ("HardSwish", vec![]),
            UnaryOp::Sin => ("Sin", vec![]),
            UnaryOp::Cos => ("Cos", vec![]),
            UnaryOp::Tan => ("Tan", vec![]),
            UnaryOp::Asin => ("Asin", vec![]),
            UnaryOp::Acos => ("Acos", vec![]),
            UnaryOp::Atan => ("Atan", vec![]),
            UnaryOp::Sinh => ("Sinh", vec![]),
            UnaryOp::Cosh => ("Cosh", vec![]),
            UnaryOp::Asinh => ("Asinh", vec![]),
            UnaryOp::Acosh => ("Acosh", vec![]),
            UnaryOp::Atanh => ("Atanh", vec![]),
            UnaryOp::Round => ("Round", vec![]),
            UnaryOp::Sign => ("Sign", vec![]),
            UnaryOp::Softplus => ("Softplus", vec![]),
            UnaryOp::Softsign => ("Softsign", vec![]),
            UnaryOp::Mish => ("Mish", vec![]),
            UnaryOp::Gelu => ("Gelu", vec![a_str("approximate", "none")]),
            UnaryOp::GeluTanh => ("Gelu", vec![a_str("approximate", "tanh")]),
            UnaryOp::BitNot => ("BitwiseNot", vec![]),
        };
        self.node(t, &[xn], &[on], attrs);
        Ok(())
    }

    fn clip(&mut self, min: f32, max: f32, x: &V, out: &V) -> R<()> {
        let dt = x.ty.dtype;
        if !dt.is_float() {
            if dt == DType::Bool {
                return Err("clip is not defined on bool".into());
            }
            // integers: below min -> min as T (truncated, saturated), above max -> max as T;
            // with min > max the interpreter's order (min first) differs from Clip's
            if min > max {
                return Err(format!(
                    "an integer clip with min {min} > max {max} has no ONNX Clip expression"
                ));
            }
        }
        let lo = self.k_scalar(dt, min as f64, "min");
        let hi = self.k_scalar(dt, max as f64, "max");
        self.node("Clip", &[&x.name, &lo, &hi], &[&out.name], vec![]);
        Ok(())
    }

    fn act(&mut self, kind: ActKind, alpha: f32, beta: f32, x: &V, out: &V) -> R<()> {
        let dt = x.ty.dtype;
        if !dt.is_float() {
            return Err(format!("{} is not defined on {dt}", kind.name()));
        }
        let (xn, on) = (x.name.as_str(), out.name.as_str());
        let single = |t: &str, attrs: Vec<AttributeProto>| (t.to_string(), attrs);
        let (t, attrs) = match kind {
            ActKind::HardSigmoid => single(
                "HardSigmoid",
                vec![a_float("alpha", alpha), a_float("beta", beta)],
            ),
            ActKind::LeakyRelu => single("LeakyRelu", vec![a_float("alpha", alpha)]),
            ActKind::Elu => single("Elu", vec![a_float("alpha", alpha)]),
            ActKind::Selu => single(
                "Selu",
                vec![a_float("alpha", alpha), a_float("gamma", beta)],
            ),
            ActKind::Celu if dt == DType::F32 => single("Celu", vec![a_float("alpha", alpha)]),
            ActKind::Celu => {
                // Celu is float32-only in ONNX: max(0, x) + min(0, alpha (exp(x / alpha) - 1))
                let (a, zero, one) = (
                    self.k_scalar(dt, alpha as f64, "alpha"),
                    self.k_scalar(dt, 0.0, "zero"),
                    self.k_scalar(dt, 1.0, "one"),
                );
                let q = self.node1("Div", &[xn, &a], vec![]);
                let e = self.node1("Exp", &[&q], vec![]);
                let em1 = self.node1("Sub", &[&e, &one], vec![]);
                let s = self.node1("Mul", &[&a, &em1], vec![]);
                let neg = self.node1("Min", &[&zero, &s], vec![]);
                let pos = self.node1("Max", &[xn, &zero], vec![]);
                self.node("Add", &[&pos, &neg], &[on], vec![]);
                return Ok(());
            }
            ActKind::ThresholdedRelu => single("ThresholdedRelu", vec![a_float("alpha", alpha)]),
            ActKind::Shrink => single(
                "Shrink",
                vec![a_float("bias", alpha), a_float("lambd", beta)],
            ),
            ActKind::Swish => {
                // x * sigmoid(alpha x) (ONNX Swish is opset 24)
                let z = if alpha == 1.0 {
                    xn.to_string()
                } else {
                    let a = self.k_scalar(dt, alpha as f64, "alpha");
                    self.node1("Mul", &[xn, &a], vec![])
                };
                let s = self.node1("Sigmoid", &[&z], vec![]);
                self.node("Mul", &[xn, &s], &[on], vec![]);
                return Ok(());
            }
            ActKind::Affine => {
                let a = self.k_scalar(dt, alpha as f64, "alpha");
                let b = self.k_scalar(dt, beta as f64, "beta");
                let m = self.node1("Mul", &[xn, &a], vec![]);
                self.node("Add", &[&m, &b], &[on], vec![]);
                return Ok(());
            }
        };
        self.node(&t, &[xn], &[on], attrs);
        Ok(())
    }

    fn resize(&mut self, a: &kiln_ir::ops::ResizeAttrs, x: &V, out: &V) -> R<()> {
        let coord = match a.coord {
            CoordTransform::HalfPixel => "half_pixel",
            CoordTransform::PytorchHalfPixel => "pytorch_half_pixel",
            CoordTransform::AlignCorners => "align_corners",
            CoordTransform::Asymmetric => "asymmetric",
        };
        let nearest = match a.nearest {
            NearestMode::RoundPreferFloor => "round_prefer_floor",
            NearestMode::RoundPreferCeil => "round_prefer_ceil",
            NearestMode::Floor => "floor",
            NearestMode::Ceil => "ceil",
        };
        let mode = match a.mode {
            ResizeMode::Nearest => "nearest",
            ResizeMode::Linear => "linear",
        };
        let xs = &x.ty.shape;
        // ONNX derives the coordinate scale from `sizes` as out / in (in f32, as the IR's
        // importer does), or takes `scales` and floors in * scale for the output (ONNX
        // Runtime and onnx's shape inference multiply in f32)
        let from_sizes = (0..xs.len())
            .all(|d| xs[d] != 0 && a.scales[d] == a.out_shape[d] as f32 / xs[d] as f32);
        let from_scales = (0..xs.len()).all(|d| {
            let s = a.scales[d];
            s > 0.0 && (xs[d] as f32 * s).floor() as usize == a.out_shape[d]
        });
        let unit = |d: usize| xs[d] == a.out_shape[d] && a.scales[d] == 1.0;
        let ort_linear = match xs.len() {
            2 | 3 => true,
            4 => unit(0) && (unit(1) || unit(3)),
            5 => unit(0) && unit(1),
            _ => false,
        };
        if a.mode == ResizeMode::Linear && !ort_linear {
            return self.resize_separable(a, x, out);
        }
        let attrs = vec![
            a_str("mode", mode),
            a_str("coordinate_transformation_mode", coord),
            a_str("nearest_mode", nearest),
        ];
        if from_sizes {
            let s = self.k_usize(&a.out_shape, "sizes");
            self.node("Resize", &[&x.name, "", "", &s], &[&out.name], attrs);
        } else if from_scales {
            let bytes = a.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            let s = self.konst(DType::F32, &[a.scales.len()], bytes, "scales");
            self.node("Resize", &[&x.name, "", &s], &[&out.name], attrs);
        } else {
            return Err(format!(
                "scales {:?} give neither the output shape {:?} nor out/in of {xs:?}",
                a.scales, a.out_shape
            ));
        }
        Ok(())
    }

    /// `out[.., o, ..] = sum_t w[o,t] x[.., clamp(idx[o,t]), ..]`, or `fill` where
    /// `idx[o,0] < 0`: Gather of the clamped indices, Mul by the weights (reshaped to broadcast
    /// over the trailing axes), ReduceSum over the taps, Where for the fill.
    fn resample(&mut self, axis: usize, fill: f32, ins: &[V], out: &V) -> R<()> {
        let (x, idx, w) = (&ins[0], &ins[1], &ins[2]);
        let dt = x.ty.dtype;
        let len = x.ty.shape[axis];
        let (n_out, taps) = (idx.ty.shape[0], idx.ty.shape[1]);
        if len == 0 {
            return Err("resampling an empty axis".into());
        }
        let trailing = x.ty.rank() - axis - 1;
        let const_idx = idx
            .id
            .and_then(|v| self.g.const_data(v))
            .map(|d| {
                d.bytes()
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<i32>>()
            })
            .filter(|v| v.len() == n_out * taps);
        // clamped indices (folded here when the table is a constant, as it always is from
        // the importers)
        let (clamped, needs_fill) = match &const_idx {
            Some(v) => {
                let c: Vec<u8> = v
                    .iter()
                    .flat_map(|&i| (i.max(0).min(len as i32 - 1)).to_le_bytes())
                    .collect();
                let needs = taps > 0 && (0..n_out).any(|o| v[o * taps] < 0);
                (self.konst(DType::I32, &[n_out, taps], c, "indices"), needs)
            }
            None => {
                let lo = self.k_scalar(DType::I32, 0.0, "zero_i32");
                let hi = self.k_scalar(DType::I32, len as f64 - 1.0, "last_i32");
                let a = self.node1("Max", &[&idx.name, &lo], vec![]);
                (self.node1("Min", &[&a, &hi], vec![]), true)
            }
        };
        let mut wshape = vec![n_out, taps];
        wshape.extend(std::iter::repeat_n(1, trailing));
        let mut wv = self.reshaped(w, &wshape, "weights");
        if dt != DType::F32 {
            wv = self.node1("Cast", &[&wv], vec![a_int("to", dt.abi_code() as i64)]);
        }
        if !needs_fill {
            self.weighted_sum(&x.name, axis, &clamped, &wv, Some(&out.name));
            return Ok(());
        }
        let sum = self.weighted_sum(&x.name, axis, &clamped, &wv, None);
        // the fill mask: the first tap's index < 0, shaped [out, 1, ..] over the trailing axes
        let first = match &const_idx {
            Some(v) => {
                let m: Vec<u8> = (0..n_out).map(|o| (v[o * taps] < 0) as u8).collect();
                let mut s = vec![n_out];
                s.extend(std::iter::repeat_n(1, trailing));
                self.konst(DType::Bool, &s, m, "fill_mask")
            }
            None => {
                let st = self.k_i64(&[0], "zero");
                let en = self.k_i64(&[1], "one");
                let ax = self.k_i64(&[1], "one");
                let col = self.node1("Slice", &[&idx.name, &st, &en, &ax], vec![]);
                let zero = self.k_scalar(DType::I32, 0.0, "zero_i32");
                let neg = self.node1("Less", &[&col, &zero], vec![]);
                let mut s = vec![n_out];
                s.extend(std::iter::repeat_n(1, trailing));
                let sv = self.k_usize(&s, "mask_shape");
                self.node1("Reshape", &[&neg, &sv], vec![])
            }
        };
        let f = self.k_scalar(dt, fill as f64, "fill");
        self.node("Where", &[&first, &f, &sum], &[&out.name], vec![]);
        Ok(())
    }

    /// `sum_t w[o,t] x[.., idx[o,t], ..]` along `axis` (`idx` `[out, taps]` in range, `w`
    /// `[out, taps, 1, ..]` of x's type): Gather, Mul, ReduceSum over the taps; into `out` or a
    /// new value, whose name is returned.
    fn weighted_sum(
        &mut self,
        x: &str,
        axis: usize,
        idx: &str,
        w: &str,
        out: Option<&str>,
    ) -> String {
        let gathered = self.node1("Gather", &[x, idx], vec![a_int("axis", axis as i64)]);
        let prod = self.node1("Mul", &[&gathered, w], vec![]);
        let tap_axis = self.k_usize(&[axis + 1], "taps_axis");
        let attrs = vec![a_int("keepdims", 0)];
        match out {
            Some(o) => {
                self.node("ReduceSum", &[&prod, &tap_axis], &[o], attrs);
                o.to_string()
            }
            None => self.node1("ReduceSum", &[&prod, &tap_axis], attrs),
        }
    }

    /// A linear Resize that ONNX Runtime's Resize kernel does not take (it interpolates 2-D
    /// and 3-D tensors, and 4-D/5-D ones whose outer two scales are 1): one two-tap weighted
    /// sum per resized axis with the interpreter's taps (`interp::linear_taps`).
    fn resize_separable(&mut self, a: &kiln_ir::ops::ResizeAttrs, x: &V, out: &V) -> R<()> {
        let dt = x.ty.dtype;
        let r = x.ty.rank();
        let dims: Vec<usize> = (0..r)
            .filter(|&d| !(a.scales[d] == 1.0 && x.ty.shape[d] == a.out_shape[d]))
            .collect();
        let mut cur = x.name.clone();
        for (k, &d) in dims.iter().enumerate() {
            let il = x.ty.shape[d];
            if il == 0 {
                return Err(format!("resizing the empty axis {d}"));
            }
            let taps = kiln_ir::interp::linear_taps(a, d, il);
            let n = taps.len();
            let idx: Vec<u8> = taps
                .iter()
                .flat_map(|&(i0, i1, _)| [i0 as i32, i1 as i32])
                .flat_map(|i| i.to_le_bytes())
                .collect();
            let mut w = Vec::with_capacity(n * 2 * dt.size());
            for &(_, _, t) in &taps {
                w.extend(scalar_bytes(dt, 1.0 - t)?);
                w.extend(scalar_bytes(dt, t)?);
            }
            let mut wshape = vec![n, 2];
            wshape.extend(std::iter::repeat_n(1, r - d - 1));
            let iv = self.konst(DType::I32, &[n, 2], idx, "linear_indices");
            let wv = self.konst(dt, &wshape, w, "linear_weights");
            let last = k + 1 == dims.len();
            cur = self.weighted_sum(&cur, d, &iv, &wv, last.then_some(out.name.as_str()));
        }
        if dims.is_empty() {
            self.node("Identity", &[&x.name], &[&out.name], vec![]);
        }
        Ok(())
    }

    /// CumProd before opset 26: the inclusive scan by doubling, `y *= shift(y, s)` for
    /// s = 1, 2, 4, .. (shift pads with 1); exclusive shifts the input by one first, reverse
    /// scans the flipped axis. Integers are exact (wrapping products commute); floats differ
    /// from the sequential product by reassociation only.
    fn cum_prod_scan(
        &mut self,
        axis: usize,
        exclusive: bool,
        reverse: bool,
        x: &V,
        out: &V,
    ) -> R<()> {
        let dt = x.ty.dtype;
        let len = x.ty.shape[axis];
        let rank = x.ty.rank();
        let flip = |ex: &mut Self, v: &str| -> String {
            let s = ex.k_i64(&[-1], "flip_start");
            let e = ex.k_i64(&[i64::MIN], "flip_end");
            let a = ex.k_usize(&[axis], "flip_axis");
            let st = ex.k_i64(&[-1], "flip_step");
            ex.node1("Slice", &[v, &s, &e, &a, &st], vec![])
        };
        let one = self.k_scalar(dt, 1.0, "one");
        // shift right by s along the axis, filling with 1
        let shift = |ex: &mut Self, v: &str, s: usize| -> String {
            let mut pads = vec![0i64; 2 * rank];
            pads[axis] = s as i64;
            pads[rank + axis] = -(s as i64);
            let p = ex.k_i64(&pads, "shift_pads");
            ex.node1("Pad", &[v, &p, &one], vec![a_str("mode", "constant")])
        };
        let mut y = x.name.clone();
        if reverse {
            y = flip(self, &y);
        }
        if exclusive && len > 0 {
            y = shift(self, &y, 1);
        }
        let mut s = 1;
        while s < len {
            let sh = shift(self, &y, s);
            y = self.node1("Mul", &[&y, &sh], vec![]);
            s *= 2;
        }
        if reverse {
            y = flip(self, &y);
        }
        self.node("Identity", &[&y], &[&out.name], vec![]);
        Ok(())
    }

    /// BitCast. ONNX's keeps the element width; kiln's may change it (a narrower type adds a
    /// last dim of the size ratio, a wider one consumes it), which is done on the unsigned
    /// integers of each width: little-endian chunks split off by shifts and masks, or joined
    /// by shifts and ors.
    fn bit_cast(&mut self, x: &V, to: DType, out: &V) -> R<()> {
        let (from, a, b) = (x.ty.dtype, x.ty.dtype.size(), to.size());
        let bits = |ex: &mut Self, v: &str, from: DType, to: DType| -> String {
            if from == to {
                v.to_string()
            } else {
                ex.node1("BitCast", &[v], vec![a_int("to", to.abi_code() as i64)])
            }
        };
        if a == b {
            self.node(
                "BitCast",
                &[&x.name],
                &[&out.name],
                vec![a_int("to", to.abi_code() as i64)],
            );
            return Ok(());
        }
        let uint = |n: usize| {
            unsigned_of(match n {
                1 => DType::I8,
                2 => DType::I16,
                4 => DType::I32,
                _ => DType::I64,
            })
            .expect("an integer width")
        };
        let (ua, ub) = (uint(a), uint(b));
        let xu = bits(self, &x.name, from, ua);
        let joined = if a > b {
            let r = a / b;
            let mask = if b == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * b)) - 1
            };
            let m = self.k_scalar(ua, mask as f64, "mask");
            let last = self.k_i64(&[-1], "last_axis");
            let mut parts = Vec::with_capacity(r);
            for k in 0..r {
                let v = if k == 0 {
                    xu.clone()
                } else {
                    let s = self.k_scalar(ua, (8 * b * k) as f64, "shift");
                    self.node1("BitShift", &[&xu, &s], vec![a_str("direction", "RIGHT")])
                };
                let v = self.node1("BitwiseAnd", &[&v, &m], vec![]);
                let v = self.node1("Cast", &[&v], vec![a_int("to", ub.abi_code() as i64)]);
                parts.push(self.node1("Unsqueeze", &[&v, &last], vec![]));
            }
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            self.node1("Concat", &refs, vec![a_int("axis", -1)])
        } else {
            let r = b / a;
            let mut acc: Option<String> = None;
            for k in 0..r {
                let i = self.k_scalar(DType::I64, k as f64, "chunk");
                let v = self.node1("Gather", &[&xu, &i], vec![a_int("axis", -1)]);
                let v = self.node1("Cast", &[&v], vec![a_int("to", ub.abi_code() as i64)]);
                let v = if k == 0 {
                    v
                } else {
                    let s = self.k_scalar(ub, (8 * a * k) as f64, "shift");
                    self.node1("BitShift", &[&v, &s], vec![a_str("direction", "LEFT")])
                };
                acc = Some(match acc {
                    None => v,
                    Some(p) => self.node1("BitwiseOr", &[&p, &v], vec![]),
                });
            }
            acc.expect("at least two chunks")
        };
        let r = bits(self, &joined, ub, to);
        self.node("Identity", &[&r], &[&out.name], vec![]);
        Ok(())
    }

    /// An integer convolution (ONNX Conv is float-only, ConvInteger 8-bit): the padded input's
    /// strided window slices stacked per kernel tap (im2col) times the weights as one batched
    /// integer MatMul per group, plus the bias.
    fn int_conv(&mut self, a: &ConvAttrs, ins: &[V], out: &V) -> R<()> {
        let (x, w) = (&ins[0], &ins[1]);
        let dt = x.ty.dtype;
        if !matches!(dt, DType::I32 | DType::I64 | DType::U32 | DType::U64) {
            return Err(format!(
                "a {dt} convolution has no ONNX expression (integer MatMul takes 32/64-bit)"
            ));
        }
        let sp = a.kernel.len();
        let (n, c) = (x.ty.shape[0], x.ty.shape[1]);
        let m = w.ty.shape[0];
        let g = a.groups;
        let osp = out.ty.shape[2..].to_vec();
        let mut pads = vec![0usize; 2 * (sp + 2)];
        for d in 0..sp {
            pads[2 + d] = a.pads[d];
            pads[sp + 2 + 2 + d] = a.pads[sp + d];
        }
        let xp = if pads.iter().any(|&p| p > 0) {
            let p = self.k_usize(&pads, "pads");
            let z = self.k_scalar(dt, 0.0, "zero");
            self.node1("Pad", &[&x.name, &p, &z], vec![a_str("mode", "constant")])
        } else {
            x.name.clone()
        };
        let taps: usize = a.kernel.iter().product();
        let axes: Vec<usize> = (2..2 + sp).collect();
        let ax = self.k_usize(&axes, "axes");
        let st = self.k_usize(&a.strides, "strides");
        let unsq = self.k_usize(&[2], "tap_axis");
        let mut cols = Vec::with_capacity(taps);
        let mut k = vec![0usize; sp];
        for t in 0..taps {
            let mut r = t;
            for d in (0..sp).rev() {
                k[d] = r % a.kernel[d];
                r /= a.kernel[d];
            }
            let starts: Vec<usize> = (0..sp).map(|d| k[d] * a.dilations[d]).collect();
            let ends: Vec<usize> = (0..sp)
                .map(|d| starts[d] + (osp[d] - 1) * a.strides[d] + 1)
                .collect();
            let s = self.k_usize(&starts, "starts");
            let e = self.k_usize(&ends, "ends");
            let sl = self.node1("Slice", &[&xp, &s, &e, &ax, &st], vec![]);
            cols.push(self.node1("Unsqueeze", &[&sl, &unsq], vec![]));
        }
        let refs: Vec<&str> = cols.iter().map(|s| s.as_str()).collect();
        let stacked = self.node1("Concat", &refs, vec![a_int("axis", 2)]);
        let p: usize = osp.iter().product();
        let cg = c / g;
        let xs = self.k_usize(&[n, g, cg * taps, p], "cols_shape");
        let xcol = self.node1("Reshape", &[&stacked, &xs], vec![]);
        let ws = self.k_usize(&[g, m / g, cg * taps], "w_shape");
        let wr = self.node1("Reshape", &[&w.name, &ws], vec![]);
        let prod = self.node1("MatMul", &[&wr, &xcol], vec![]);
        let mut oshape = vec![n, m];
        oshape.extend(&osp);
        let os = self.k_usize(&oshape, "out_shape");
        match ins.get(2) {
            None => self.node("Reshape", &[&prod, &os], &[&out.name], vec![]),
            Some(b) => {
                let y = self.node1("Reshape", &[&prod, &os], vec![]);
                let mut bs = vec![m];
                bs.extend(std::iter::repeat_n(1, sp));
                let bv = self.reshaped(b, &bs, "bias");
                self.node("Add", &[&y, &bv], &[&out.name], vec![]);
            }
        }
        Ok(())
    }
}

/// `base` if `taken` lacks it, else the first free `<base>_<k>`; `next[key]` remembers where
/// the search for `key` stopped.
fn unique(
    taken: &HashSet<String>,
    next: &mut HashMap<String, usize>,
    base: &str,
    key: &str,
) -> String {
    if !taken.contains(base) {
        return base.to_string();
    }
    let k = next.entry(key.to_string()).or_insert(1);
    loop {
        let n = format!("{base}_{k}");
        *k += 1;
        if !taken.contains(&n) {
            return n;
        }
    }
}

fn pool_attrs(a: &PoolAttrs, average: bool) -> Vec<AttributeProto> {
    let mut v = vec![
        a_ints("kernel_shape", &a.kernel),
        a_ints("strides", &a.strides),
        a_ints("pads", &a.pads),
        a_ints("dilations", &a.dilations),
        a_int("ceil_mode", a.ceil_mode as i64),
    ];
    if average {
        v.push(a_int("count_include_pad", a.count_include_pad as i64));
    }
    v
}

fn reduction_name(r: ScatterReduction) -> &'static str {
    match r {
        ScatterReduction::None => "none",
        ScatterReduction::Add => "add",
        ScatterReduction::Mul => "mul",
        ScatterReduction::Max => "max",
        ScatterReduction::Min => "min",
    }
}
