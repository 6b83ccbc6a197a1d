//! `ge.proto.ModelDef` -> [`kiln_ir::Graph`], with GraphEngine op semantics.
//!
//! The main graph is `ModelDef.graph[0]`; sub-graphs called by `PartitionedCall` (through
//! `OpDef.subgraph_name`) are inlined, their `Data` ops bound to the call's inputs by
//! `_parent_node_index`. Ops are imported in dependency order (GE lists them in any order;
//! a cycle is an error). Values are bound as `"<op>:<output>"`, the edge syntax of `OpDef.input`,
//! where `""` is an absent optional input and `"<op>:-1"` a control edge (ignored for dataflow).
//! A value is named by its producer's output descriptor name when set (kiln's writer records the
//! IR value names there), else by its op (`<op>` for output 0, `<op>:<k>` after).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use kiln_ir::ops::{
    ActKind, BinaryOp, CmpOp, ConvAttrs, ConvTransposeAttrs, CoordTransform, GemmAttrs, LogicOp,
    MatMulAttrs, NearestMode, PoolAttrs, ReduceKind, ResizeAttrs, ResizeMode, SliceAttrs,
    SoftmaxKind, UnaryOp,
};
use kiln_ir::{ConstData, DType, Graph, Layout, Op, TensorType, ValueId};

use super::proto::attr_def::Value as AV;
use super::proto::{GraphDef, ModelDef, OpDef, TensorDescriptor};
use super::{dtype_of_ge, dtype_of_proto};
use crate::frontend::data::{self, External, ExternalFiles, RawTensor};
use crate::frontend::norm_axis;
use crate::frontend::tf::{STRIDED_SLICE_MASKS, reshape_target, same_pads, strided_slice};
use crate::frontend::{
    Dim, FrontendError, GraphBuilder, InputFixes, Source, Unsupported, node_label,
};
pub use kiln_target_om::names::{BINARY, COMPARE, UNARY};

type R<T> = Result<T, String>;

/// Options for loading an AIR model (or an OM's graph).
#[derive(Debug, Clone, Default)]
pub struct AirOptions {
    /// `--input-shape` / `--freeze` (inputs named by their `Data` op), as every importer takes
    /// them.
    pub inputs: InputFixes,
    /// An offline model's WEIGHTS_DATA partition: constants without inline data are read from
    /// it at `data_offset` (or the `merged_offset` attribute), `weight_size` bytes.
    pub weights: Option<bytes::Bytes>,
    /// Read an offline model's compiled graph: fp16 tensors become f32 (the CPU computes what
    /// the NPU computes in fp16 in f32, on the fp16 weights; a `Cast` to fp16 rounds there).
    pub widen_fp16: bool,
}

/// Most ops inlined from `PartitionedCall` sub-graphs into one model (each call inlines its
/// sub-graph again, so calls that call twice multiply).
pub const MAX_INLINED_OPS: usize = 1 << 16;

/// GE op types with IR translations (plus the graph structure ops in [`STRUCTURE`]).
pub const SUPPORTED: &[&str] = &[
    "Conv2D",
    "DepthwiseConv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropInputD",
    "Conv2DTranspose",
    "Conv2DTransposeD",
    "MatMul",
    "MatMulV2",
    "GEMM",
    "BatchMatMul",
    "BatchMatMulV2",
    "BiasAdd",
    "Relu",
    "Relu6",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "GeluV2",
    "FastGelu",
    "HardSwish",
    "HardSigmoid",
    "Swish",
    "Elu",
    "Selu",
    "Softplus",
    "Softsign",
    "Mish",
    "MaxPool",
    "MaxPoolV3",
    "AvgPool",
    "AvgPoolV2",
    "GlobalAveragePool",
    "BatchNorm",
    "BNInference",
    "BNInferenceD",
    "LayerNorm",
    "SoftmaxV2",
    "LogSoftmaxV2",
    "Add",
    "AddV2",
    "Sub",
    "Mul",
    "RealDiv",
    "Div",
    "Maximum",
    "Minimum",
    "Pow",
    "Square",
    "Sqrt",
    "Rsqrt",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Erf",
    "Sin",
    "Cos",
    "ClipByValue",
    "Cast",
    "Reshape",
    "Flatten",
    "FlattenV2",
    "Transpose",
    "TransposeD",
    "Squeeze",
    "Unsqueeze",
    "ExpandDims",
    "Concat",
    "ConcatD",
    "ConcatV2",
    "ConcatV2D",
    "Split",
    "SplitD",
    "SplitV",
    "SplitVD",
    "StridedSlice",
    "StridedSliceD",
    "Slice",
    "SliceD",
    "Pad",
    "PadD",
    "PadV3",
    "Tile",
    "TileD",
    "BroadcastTo",
    "BroadcastToD",
    "GatherV2",
    "GatherV2D",
    "ReduceSum",
    "ReduceSumD",
    "ReduceMax",
    "ReduceMaxD",
    "ReduceMin",
    "ReduceMinD",
    "ReduceMean",
    "ReduceMeanD",
    "ReduceProd",
    "ReduceProdD",
    "ArgMaxD",
    "ArgMaxV2",
    "ArgMin",
    "ResizeNearestNeighborV2",
    "ResizeNearestNeighborV2D",
    "ResizeBilinearV2",
    "ResizeBilinearV2D",
    "Select",
    "SelectV2",
    "Equal",
    "NotEqual",
    "Less",
    "LessEqual",
    "Greater",
    "GreaterEqual",
    "LogicalAnd",
    "LogicalOr",
    "LogicalNot",
    "TransData",
    "Aipp",
    "Identity",
    "StopGradient",
    "Rank",
    "Shape",
    "Size",
];

/// Graph structure: inputs, constants, outputs, calls.
pub const STRUCTURE: &[&str] = &["Data", "Const", "Constant", "NetOutput", "PartitionedCall"];

/// A node attribute value, as GE stores it.
fn attr<'a>(op: &'a OpDef, k: &str) -> Option<&'a AV> {
    op.attr.get(k).and_then(|a| a.value.as_ref())
}

/// One op being translated, with attribute accessors.
struct Ctx<'o> {
    op: &'o OpDef,
    /// Data inputs (control edges dropped), `None` for an absent optional input.
    ins: Vec<Option<ValueId>>,
}

impl Ctx<'_> {
    fn name(&self) -> &str {
        &self.op.name
    }
    fn i(&self, k: &str) -> R<Option<i64>> {
        match attr(self.op, k) {
            None => Ok(None),
            Some(AV::I(i)) => Ok(Some(*i)),
            Some(AV::B(b)) => Ok(Some(*b as i64)),
            Some(AV::Dt(d)) => Ok(Some(*d)),
            Some(_) => Err(format!("attribute '{k}' must be an integer")),
        }
    }
    fn i_or(&self, k: &str, def: i64) -> R<i64> {
        Ok(self.i(k)?.unwrap_or(def))
    }
    fn f_or(&self, k: &str, def: f32) -> R<f32> {
        match attr(self.op, k) {
            None => Ok(def),
            Some(AV::F(f)) => Ok(*f),
            Some(AV::I(i)) => Ok(*i as f32),
            Some(_) => Err(format!("attribute '{k}' must be a float")),
        }
    }
    fn b_or(&self, k: &str, def: bool) -> R<bool> {
        match attr(self.op, k) {
            None => Ok(def),
            Some(AV::B(b)) => Ok(*b),
            Some(AV::I(i)) => Ok(*i != 0),
            Some(_) => Err(format!("attribute '{k}' must be a bool")),
        }
    }
    fn s(&self, k: &str) -> R<Option<String>> {
        match attr(self.op, k) {
            None => Ok(None),
            Some(AV::S(s)) => Ok(Some(String::from_utf8_lossy(s).into_owned())),
            Some(_) => Err(format!("attribute '{k}' must be a string")),
        }
    }
    fn ints(&self, k: &str) -> R<Option<Vec<i64>>> {
        match attr(self.op, k) {
            None => Ok(None),
            Some(AV::List(l)) => Ok(Some(l.i.clone())),
            Some(AV::I(i)) => Ok(Some(vec![*i])),
            Some(_) => Err(format!("attribute '{k}' must be an integer list")),
        }
    }
    fn ints_req(&self, k: &str) -> R<Vec<i64>> {
        self.ints(k)?
            .ok_or_else(|| format!("missing attribute '{k}'"))
    }
    fn list_list(&self, k: &str) -> R<Option<Vec<Vec<i64>>>> {
        match attr(self.op, k) {
            None => Ok(None),
            Some(AV::ListListInt(l)) => Ok(Some(
                l.list_list_i.iter().map(|x| x.list_i.clone()).collect(),
            )),
            Some(_) => Err(format!("attribute '{k}' must be a list of integer lists")),
        }
    }
    fn input(&self, i: usize) -> R<Option<ValueId>> {
        Ok(self.ins.get(i).copied().flatten())
    }
    fn req(&self, i: usize) -> R<ValueId> {
        self.input(i)?
            .ok_or_else(|| format!("missing required input {i}"))
    }
    /// The logical format of input `i` (its descriptor's layout, or for a device format its
    /// `origin_format`; `""` when absent).
    fn in_layout(&self, i: usize) -> &str {
        self.op.input_desc.get(i).map_or("", logical_format)
    }
}

struct Imp<'a> {
    b: GraphBuilder<'a>,
    graphs: HashMap<&'a str, &'a GraphDef>,
    base_dir: Option<&'a Path>,
    ext: ExternalFiles,
    /// Sub-graphs being inlined (to refuse recursion).
    stack: Vec<String>,
    /// Ops inlined from sub-graphs so far (at most [`MAX_INLINED_OPS`]).
    inlined: usize,
    /// WEIGHTS_DATA of an offline model.
    weights: Option<bytes::Bytes>,
    /// fp16 read as f32 (an offline model's compiled graph).
    widen: bool,
}

/// Every op type in `g` and the sub-graphs it calls that kiln cannot translate.
fn unsupported(md: &ModelDef) -> Unsupported {
    let mut bad = Unsupported::default();
    let mut seen = HashSet::new();
    let graphs: HashMap<&str, &GraphDef> = md.graph.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut todo = vec![&md.graph[0]];
    while let Some(g) = todo.pop() {
        if !seen.insert(g.name.as_str()) {
            continue;
        }
        for (i, op) in g.op.iter().enumerate() {
            let t = op.r#type.as_str();
            if !SUPPORTED.contains(&t) && !STRUCTURE.contains(&t) {
                bad.add(t, node_label(&op.name, t, i));
            }
            for s in &op.subgraph_name {
                if let Some(sg) = graphs.get(s.as_str()) {
                    todo.push(sg);
                }
            }
        }
    }
    bad
}

/// Which ops of the model use each op type (for `kiln inspect`).
pub fn op_histogram(md: &ModelDef) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for g in &md.graph {
        for op in &g.op {
            *h.entry(op.r#type.clone()).or_default() += 1;
        }
    }
    h
}

/// Op types the model uses that kiln does not translate, with their ops.
pub fn unsupported_ops(md: &ModelDef) -> Vec<(String, Vec<String>)> {
    unsupported(md)
        .ops()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// A tensor descriptor's static type: for a device format (an offline model's compiled graph)
/// the logical `origin_shape`.
fn desc_type(d: &TensorDescriptor) -> R<(DType, Vec<i64>)> {
    let dt = dtype_of_proto(d.dtype)?;
    if device_format(d).is_some() {
        let dims = origin_shape(d)
            .ok_or_else(|| format!("a {} descriptor without origin_shape", d.layout))?;
        return Ok((dt, dims));
    }
    let dims = d.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default();
    Ok((dt, dims))
}

/// The device format of a descriptor (NC1HWC0, FRACTAL_Z, FRACTAL_NZ), if it has one.
fn device_format(d: &TensorDescriptor) -> Option<&str> {
    match d.layout.as_str() {
        l @ ("NC1HWC0" | "FRACTAL_Z" | "FRACTAL_NZ") => Some(l),
        _ => None,
    }
}

/// A descriptor's `origin_shape` attribute.
fn origin_shape(d: &TensorDescriptor) -> Option<Vec<i64>> {
    match d.attr.get("origin_shape").and_then(|a| a.value.as_ref()) {
        Some(AV::List(l)) => Some(l.i.clone()),
        _ => None,
    }
}

/// The format a value's logical (framework) order follows: the descriptor's layout, or for a
/// device format its `origin_format` (NCHW when unset).
fn logical_format(d: &TensorDescriptor) -> &str {
    if device_format(d).is_none() {
        return d.layout.as_str();
    }
    match d.attr.get("origin_format").and_then(|a| a.value.as_ref()) {
        Some(AV::S(s)) => std::str::from_utf8(s).unwrap_or("NCHW"),
        _ => "NCHW",
    }
}

/// Split an edge `"op:idx"`; `None` for a control edge (`idx` -1).
fn parse_edge(e: &str) -> R<Option<(&str, usize)>> {
    let (op, idx) = e
        .rsplit_once(':')
        .ok_or_else(|| format!("input '{e}' is not of the form 'op:index'"))?;
    if idx == "-1" {
        return Ok(None);
    }
    let i = idx
        .parse::<usize>()
        .map_err(|_| format!("input '{e}' has a bad output index"))?;
    Ok(Some((op, i)))
}

/// The ops of `g` in dependency order (data edges and control edges within the graph).
fn topo_order(g: &GraphDef) -> R<Vec<usize>> {
    let index: HashMap<&str, usize> =
        g.op.iter()
            .enumerate()
            .map(|(i, o)| (o.name.as_str(), i))
            .collect();
    if index.len() != g.op.len() {
        let mut seen = HashSet::new();
        let dup =
            g.op.iter()
                .find(|o| !seen.insert(o.name.as_str()))
                .map_or("", |o| o.name.as_str());
        return Err(format!("two ops are named '{dup}'"));
    }
    let n = g.op.len();
    let mut deps: Vec<Vec<usize>> = vec![vec![]; n];
    for (i, o) in g.op.iter().enumerate() {
        for e in &o.input {
            if e.is_empty() {
                continue;
            }
            let prod = e.rsplit_once(':').map_or(e.as_str(), |(p, _)| p);
            let p = *index
                .get(prod)
                .ok_or_else(|| format!("op '{}' reads '{e}', but no op '{prod}' exists", o.name))?;
            deps[i].push(p);
        }
    }
    // iterative DFS post-order; a node on the stack seen again is a cycle
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut order = Vec::with_capacity(n);
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (v, ref mut k)) = stack.last_mut() {
            if let Some(&d) = deps[v].get(*k) {
                *k += 1;
                match state[d] {
                    0 => {
                        state[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        return Err(format!(
                            "the graph has a cycle through ops '{}' and '{}'",
                            g.op[v].name, g.op[d].name
                        ));
                    }
                    _ => {}
                }
            } else {
                state[v] = 2;
                order.push(v);
                stack.pop();
            }
        }
    }
    Ok(order)
}

/// Import the main graph of a ModelDef.
pub fn import_model(md: &ModelDef, src: Source, opts: &AirOptions) -> Result<Graph, FrontendError> {
    let main = src.need(md.graph.first(), "the ModelDef has no graph")?;
    let (file, base_dir) = (src.file, src.dir);
    unsupported(md).check(file)?;
    let name = if main.name.is_empty() {
        md.name.as_str()
    } else {
        main.name.as_str()
    };
    let fixes = opts.inputs.clone();
    let mut imp = Imp {
        b: GraphBuilder::new(file, if name.is_empty() { "air" } else { name }, fixes),
        graphs: md.graph.iter().map(|g| (g.name.as_str(), g)).collect(),
        base_dir,
        ext: ExternalFiles::default(),
        stack: vec![main.name.clone()],
        inlined: 0,
        weights: opts.weights.clone(),
        widen: opts.widen_fp16,
    };
    imp.b.check_fixes(
        main.op
            .iter()
            .filter(|o| o.r#type == "Data")
            .map(|o| o.name.as_str()),
    )?;
    let outs = imp.graph(main, None)?;
    for v in outs {
        imp.b.output(v, None)?;
    }
    let mut g = imp.b.finish()?;
    g.remove_dead_nodes();
    Ok(g)
}

impl<'a> Imp<'a> {
    /// Import graph `g`; `args` are the call's inputs for an inlined sub-graph (`None`: the
    /// main graph, whose `Data` ops are the model inputs). Returns the graph's outputs.
    fn graph(
        &mut self,
        g: &'a GraphDef,
        args: Option<&[Option<ValueId>]>,
    ) -> Result<Vec<ValueId>, FrontendError> {
        let file = self.b.file;
        let gerr = |m: String| FrontendError::model(file, format!("graph '{}': {m}", g.name));
        let order = topo_order(g).map_err(gerr)?;
        // model inputs: Data ops in `index` order
        if args.is_none() {
            let mut data: Vec<(i64, usize)> = Vec::new();
            for (k, op) in g.op.iter().enumerate() {
                if op.r#type == "Data" {
                    let idx = match attr(op, "index") {
                        Some(AV::I(i)) => *i,
                        _ => k as i64,
                    };
                    data.push((idx, k));
                }
            }
            data.sort();
            for w in data.windows(2) {
                if w[0].0 == w[1].0 {
                    return Err(gerr(format!(
                        "Data ops '{}' and '{}' both have index {}",
                        g.op[w[0].1].name, g.op[w[1].1].name, w[0].0
                    )));
                }
            }
            for (_, k) in data {
                let op = &g.op[k];
                let nerr = |m: String| FrontendError::node(file, &op.name, "Data", m);
                let d = op
                    .output_desc
                    .first()
                    .or(op.input_desc.first())
                    .ok_or_else(|| nerr("no tensor descriptor".into()))?;
                let (dt, dims) = desc_type(d).map_err(nerr)?;
                let dt = if self.widen && dt == DType::F16 {
                    DType::F32
                } else {
                    dt
                };
                check_plain(d).map_err(nerr)?;
                let dims: Vec<Dim> = dims.iter().map(|&x| Dim::from_i64(x)).collect();
                let v = self.b.input(&op.name, dt, Some(&dims))?;
                self.b.bind(&format!("{}:0", op.name), v).map_err(nerr)?;
            }
        } else {
            self.b.push_scope();
        }
        let res = self.ops(g, &order, args);
        if args.is_some() {
            self.b.pop_scope();
        }
        res
    }

    fn ops(
        &mut self,
        g: &'a GraphDef,
        order: &[usize],
        args: Option<&[Option<ValueId>]>,
    ) -> Result<Vec<ValueId>, FrontendError> {
        let file = self.b.file;
        let mut outputs: Option<Vec<ValueId>> = None;
        for &k in order {
            let op = &g.op[k];
            let t = op.r#type.as_str();
            let nerr = |m: String| FrontendError::node(file, &op.name, t, m);
            let mut ins = Vec::new();
            for e in &op.input {
                if e.is_empty() {
                    ins.push(None);
                    continue;
                }
                let Some((p, i)) = parse_edge(e).map_err(nerr)? else {
                    continue; // control edge
                };
                let v = *self
                    .b
                    .lookup(&format!("{p}:{i}"))
                    .ok_or_else(|| nerr(format!("input '{e}': op '{p}' has no output {i}")))?;
                ins.push(Some(v));
            }
            let c = Ctx { op, ins };
            let outs: Vec<ValueId> = match t {
                "Data" if args.is_none() => continue, // bound above
                "Data" => {
                    let args = args.unwrap_or_default();
                    let idx = c
                        .i("_parent_node_index")
                        .map_err(nerr)?
                        .or(c.i("index").map_err(nerr)?)
                        .ok_or_else(|| nerr("sub-graph Data op without an index".into()))?;
                    let v = usize::try_from(idx)
                        .ok()
                        .and_then(|i| args.get(i).copied().flatten())
                        .ok_or_else(|| {
                            nerr(format!(
                                "index {idx} does not name one of the call's {} inputs",
                                args.len()
                            ))
                        })?;
                    vec![v]
                }
                "NetOutput" => {
                    if outputs.is_some() {
                        return Err(nerr("a graph has two NetOutput ops".into()));
                    }
                    let vs = c
                        .ins
                        .iter()
                        .map(|v| v.ok_or_else(|| nerr("an output is absent".into())))
                        .collect::<Result<Vec<_>, _>>()?;
                    outputs = Some(vs);
                    continue;
                }
                "PartitionedCall" => self.call(&c).map_err(|e| match e {
                    FrontendError::Model { file, msg } => FrontendError::Node {
                        file,
                        node: op.name.clone(),
                        op: t.into(),
                        msg,
                    },
                    e => e,
                })?,
                _ => {
                    let mut outs = self.translate(&c).map_err(nerr)?;
                    if let Some(a) = fused_activation(op) {
                        outs[0] = self.fused(&c, a, outs[0]).map_err(nerr)?;
                    }
                    outs
                }
            };
            for (i, v) in outs.into_iter().enumerate() {
                self.b.bind(&format!("{}:{i}", op.name), v).map_err(nerr)?;
            }
        }
        if let Some(o) = outputs {
            return Ok(o);
        }
        // no NetOutput (a pre-compilation graph, as MindSpore exports it): GraphDef.output
        let mut o = Vec::new();
        for e in &g.output {
            let gerr = |m: String| FrontendError::model(file, format!("graph '{}': {m}", g.name));
            let (p, i) = parse_edge(e)
                .map_err(gerr)?
                .ok_or_else(|| gerr(format!("output '{e}' is a control edge")))?;
            let v = *self
                .b
                .lookup(&format!("{p}:{i}"))
                .ok_or_else(|| gerr(format!("output '{e}' names no op output")))?;
            o.push(v);
        }
        if o.is_empty() {
            return Err(FrontendError::model(
                file,
                format!("graph '{}' has no NetOutput op and no outputs", g.name),
            ));
        }
        Ok(o)
    }

    /// `PartitionedCall`: inline the called sub-graph.
    fn call(&mut self, c: &Ctx) -> Result<Vec<ValueId>, FrontendError> {
        let file = self.b.file;
        let [name] = &c.op.subgraph_name[..] else {
            return Err(FrontendError::model(
                file,
                format!("expects one sub-graph, has {}", c.op.subgraph_name.len()),
            ));
        };
        let g = *self.graphs.get(name.as_str()).ok_or_else(|| {
            FrontendError::model(file, format!("sub-graph '{name}' is not in the model"))
        })?;
        if self.stack.contains(name) || self.stack.len() > 64 {
            return Err(FrontendError::model(
                file,
                format!("sub-graph '{name}' calls itself"),
            ));
        }
        // a chain of graphs each calling the next twice multiplies: 40 levels of a small file
        // would inline 2^40 ops
        self.inlined = self.inlined.saturating_add(g.op.len());
        if self.inlined > MAX_INLINED_OPS {
            return Err(FrontendError::model(
                file,
                format!(
                    "sub-graph calls inline more than {MAX_INLINED_OPS} ops (at '{name}', called by '{}')",
                    c.op.name
                ),
            ));
        }
        self.stack.push(name.clone());
        let r = self.graph(g, Some(&c.ins));
        self.stack.pop();
        r
    }

    /// A `Const` op's tensor: inline data, external weights (`location`/`length`), or an
    /// offline model's WEIGHTS_DATA (`data_offset` or `merged_offset`, `weight_size`), in a
    /// plain format or a device format (FRACTAL_Z, NC1HWC0, FRACTAL_NZ: unpacked to the
    /// `origin_shape` in its `origin_format`); fp16 widened to f32 when reading a compiled
    /// graph.
    fn constant(&mut self, c: &Ctx) -> R<ValueId> {
        let Some(AV::T(t)) = attr(c.op, "value") else {
            return Err("Const without a tensor 'value'".into());
        };
        let desc = t
            .desc
            .as_ref()
            .or(c.op.output_desc.first())
            .ok_or("constant without a descriptor")?;
        let device = device_format(desc);
        if device.is_none() {
            check_plain(desc)?;
        }
        let (dt, dims) = desc_type(desc)?;
        let external = match attr(c.op, "location") {
            Some(AV::S(loc)) => Some(External {
                location: String::from_utf8_lossy(loc).into_owned(),
                offset: 0,
                length: c.i("length")?,
            }),
            _ => None,
        };
        let mut raw = if external.is_none() {
            Some(t.data.clone())
        } else {
            None
        };
        if external.is_none() && t.data.is_empty() && desc.weight_size > 0 {
            raw = Some(self.weight_bytes(desc)?);
        }
        if let Some(fmt) = device {
            let bytes = raw.ok_or("a device-format constant must be in the model")?;
            let (ty, data) = self.unpack_device(c, desc, fmt, dt, &dims, bytes)?;
            return self.add_const_widened(c, ty, data);
        }
        let raw = RawTensor {
            dims: &dims,
            raw,
            external,
            ..Default::default()
        };
        let (ty, data) = data::decode_tensor(raw, dt, self.base_dir, &mut self.ext)?;
        self.add_const_widened(c, ty, data)
    }

    /// A constant's bytes in WEIGHTS_DATA, range-checked.
    fn weight_bytes(&self, desc: &TensorDescriptor) -> R<bytes::Bytes> {
        let w = self
            .weights
            .as_ref()
            .ok_or("constant without data, and the model has no WEIGHTS_DATA")?;
        let off = match desc
            .attr
            .get("merged_offset")
            .and_then(|a| a.value.as_ref())
        {
            Some(AV::I(o)) => *o,
            _ => desc.data_offset,
        };
        let (o, n) = (usize::try_from(off), usize::try_from(desc.weight_size));
        match (o, n) {
            (Ok(o), Ok(n)) if o.checked_add(n).is_some_and(|e| e <= w.len()) => {
                Ok(w.slice(o..o + n))
            }
            _ => Err(format!(
                "weights at offset {off}, {} bytes, lie outside WEIGHTS_DATA ({} bytes)",
                desc.weight_size,
                w.len()
            )),
        }
    }

    /// A device-format constant's logical tensor (in its origin format's order).
    fn unpack_device(
        &self,
        c: &Ctx,
        desc: &TensorDescriptor,
        fmt: &str,
        dt: DType,
        dims: &[i64],
        bytes: bytes::Bytes,
    ) -> R<(TensorType, ConstData)> {
        let (origin_shape, _) = data::checked_shape(dims, dt)?;
        let origin = logical_format(desc);
        let c0 = if dt.size() == 1 { 32 } else { 16 };
        // the IR layouts are defined on NCHW (filters [Cout, Cin, kh, kw]) or a matrix
        let (nchw, to_origin): (Vec<usize>, Option<Vec<usize>>) = match (fmt, origin) {
            ("FRACTAL_Z" | "NC1HWC0", _) if origin_shape.len() != 4 => {
                return Err(format!("{fmt} with origin shape {origin_shape:?}: not 4-D"));
            }
            ("FRACTAL_Z" | "NC1HWC0", "NCHW" | "ND" | "") => (origin_shape.clone(), None),
            ("FRACTAL_Z" | "NC1HWC0", "NHWC") => {
                let s = &origin_shape;
                (vec![s[0], s[3], s[1], s[2]], Some(vec![0, 2, 3, 1]))
            }
            ("FRACTAL_Z", "HWCN") => {
                let s = &origin_shape;
                (vec![s[3], s[2], s[0], s[1]], Some(vec![2, 3, 1, 0]))
            }
            ("FRACTAL_NZ", _) => (origin_shape.clone(), None),
            _ => {
                return Err(format!(
                    "{fmt} with origin format {origin} is not supported"
                ));
            }
        };
        let layout = match fmt {
            "NC1HWC0" => Layout::Nc1hwc0(c0),
            "FRACTAL_NZ" => Layout::FractalNz(c0),
            _ => {
                let groups = match desc.attr.get("groups").and_then(|a| a.value.as_ref()) {
                    Some(AV::I(g)) => *g,
                    _ => 1,
                };
                let groups = u32::try_from(groups)
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or_else(|| format!("bad groups {groups}"))?;
                Layout::FractalZ { c0, groups }
            }
        };
        let elem = dt.size();
        let logical = kiln_ir::layout::unpack(layout, &nchw, elem, &bytes).ok_or_else(|| {
            format!(
                "{fmt} weights of {} bytes do not hold a {} tensor of shape {nchw:?} ({:?} stored)",
                bytes.len(),
                dt,
                kiln_ir::layout::physical_shape(layout, &nchw)
            )
        })?;
        let _ = c;
        let data = match to_origin {
            None => logical,
            Some(perm) => transpose_bytes(&logical, &nchw, &perm, elem),
        };
        Ok((TensorType::new(dt, origin_shape), ConstData::from_vec(data)))
    }

    /// Add a constant named after the op's output, fp16 widened to f32 when reading a compiled
    /// graph.
    fn add_const_widened(&mut self, c: &Ctx, ty: TensorType, data: ConstData) -> R<ValueId> {
        let (ty, data) = if self.widen && ty.dtype == DType::F16 {
            let f: Vec<u8> = data
                .as_ref()
                .chunks_exact(2)
                .flat_map(|b| {
                    half::f16::from_le_bytes([b[0], b[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect();
            (ty.with_dtype(DType::F32), ConstData::from_vec(f))
        } else {
            (ty, data)
        };
        let name = value_name(c.op, 0);
        self.b.add_const(&name, ty, data)
    }

    fn node(&mut self, c: &Ctx, op: Op, ins: Vec<ValueId>) -> R<Vec<ValueId>> {
        let n = op
            .infer(&ins.iter().map(|v| self.b.ty(*v)).collect::<Vec<_>>())
            .map_err(|e| format!("{}: {e}", op.name()))?
            .len();
        let names: Vec<String> = (0..n).map(|i| value_name(c.op, i)).collect();
        self.b.node(c.name(), op, ins, &names)
    }

    fn node1(&mut self, c: &Ctx, op: Op, ins: Vec<ValueId>) -> R<Vec<ValueId>> {
        Ok(vec![self.b.node1(
            c.name(),
            op,
            ins,
            &value_name(c.op, 0),
        )?])
    }

    /// An intermediate node of a lowering (`<op>/<what>`).
    fn step(&mut self, c: &Ctx, what: &str, op: Op, ins: Vec<ValueId>) -> R<ValueId> {
        self.b
            .node1(c.name(), op, ins, &format!("{}/{what}", c.name()))
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        self.b.ty(v)
    }

    /// A constant input's integer values.
    fn const_ints(&self, c: &Ctx, i: usize) -> R<Vec<i64>> {
        self.b
            .const_ints(c.req(i)?)
            .map_err(|e| format!("input {i} {e}"))
    }

    /// Attribute `k`, else constant input `i` (the `...D` variants take attributes).
    fn ints_attr_or_input(&self, c: &Ctx, k: &str, i: usize) -> R<Vec<i64>> {
        match c.ints(k)? {
            Some(v) => Ok(v),
            None => self.const_ints(c, i),
        }
    }

    /// `x` in NCHW when the op's data format is NHWC (and the inverse transpose for the
    /// result), `None` for NCHW.
    fn data_format(&self, c: &Ctx, default: &str) -> R<bool> {
        let f = match c.s("data_format")? {
            Some(f) => f,
            None => match c.in_layout(0) {
                "NCHW" | "NHWC" => c.in_layout(0).to_string(),
                _ => default.to_string(),
            },
        };
        match f.as_str() {
            "NCHW" => Ok(false),
            "NHWC" => Ok(true),
            f => Err(format!("data_format {f} is not supported (NCHW, NHWC)")),
        }
    }

    fn nchw_in(&mut self, c: &Ctx, x: ValueId, nhwc: bool) -> R<ValueId> {
        if !nhwc {
            return Ok(x);
        }
        let r = self.ty(x).rank();
        let mut perm = vec![0, r - 1];
        perm.extend(1..r - 1);
        self.step(c, "to_nchw", Op::Transpose { perm }, vec![x])
    }

    fn nchw_out(&mut self, c: &Ctx, y: ValueId, nhwc: bool) -> R<Vec<ValueId>> {
        if !nhwc {
            return Ok(vec![y]);
        }
        let r = self.ty(y).rank();
        let mut perm = vec![0];
        perm.extend(2..r);
        perm.push(1);
        self.node1(c, Op::Transpose { perm }, vec![y])
    }

    /// Spatial part of a 4-value stride/dilation/ksize attribute in the op's data format.
    fn spatial(&self, v: &[i64], nhwc: bool, what: &str) -> R<Vec<usize>> {
        let p: Vec<i64> = match v.len() {
            4 if nhwc => v[1..3].to_vec(),
            4 => v[2..4].to_vec(),
            2 => v.to_vec(),
            1 => vec![v[0], v[0]],
            _ => return Err(format!("{what} {v:?} must have 1, 2 or 4 values")),
        };
        p.iter()
            .map(|&d| {
                usize::try_from(d)
                    .ok()
                    .filter(|&d| d > 0 && d < (1 << 31))
                    .ok_or_else(|| format!("{what} {v:?} must be positive"))
            })
            .collect()
    }

    /// GE pads `[top, bottom, left, right]` -> IR pads `[top, left, bottom, right]`.
    fn pads4(&self, v: &[i64]) -> R<Vec<usize>> {
        let [t, b, l, r] = v[..] else {
            return Err(format!("pads {v:?} must have 4 values"));
        };
        [t, l, b, r]
            .iter()
            .map(|&p| {
                usize::try_from(p)
                    .ok()
                    .filter(|&p| p < (1 << 31))
                    .ok_or_else(|| format!("pads {v:?} must be non-negative"))
            })
            .collect()
    }

    /// Conv2D / DepthwiseConv2D.
    fn conv(&mut self, c: &Ctx, depthwise: bool) -> R<Vec<ValueId>> {
        let nhwc = self.data_format(c, "NHWC")?;
        let x = self.nchw_in(c, c.req(0)?, nhwc)?;
        let w = c.req(1)?;
        let bias = c.input(2)?;
        if c.input(3)?.is_some() {
            return Err("quantized convolution (offset_w) is not supported".into());
        }
        let xs = self.ty(x).shape.clone();
        let ws = self.ty(w).shape.clone();
        if xs.len() != 4 || ws.len() != 4 {
            return Err(format!("input {xs:?} and filter {ws:?} must be 4-D"));
        }
        // filter -> IR [M, C/groups, kh, kw]
        let wl = c.in_layout(1);
        let (w, groups) = if depthwise {
            // [K, C, kh, kw] (NCHW) or [kh, kw, C, K] (HWCN): output channel c*K + k
            let perm = match wl {
                "HWCN" => vec![2, 3, 0, 1],
                "NCHW" | "" | "ND" => vec![1, 0, 2, 3],
                l => return Err(format!("filter layout {l} is not supported")),
            };
            let t = self.step(c, "filter", Op::Transpose { perm }, vec![w])?;
            let s = self.ty(t).shape.clone();
            let r = self.b.reshape(
                c.name(),
                t,
                vec![s[0] * s[1], 1, s[2], s[3]],
                &format!("{}/filter_oihw", c.name()),
            )?;
            (r, s[0])
        } else {
            let perm = match wl {
                "HWCN" => Some(vec![3, 2, 0, 1]),
                "NHWC" => Some(vec![0, 3, 1, 2]),
                "NCHW" | "" | "ND" => None,
                l => return Err(format!("filter layout {l} is not supported")),
            };
            let w = match perm {
                Some(perm) => self.step(c, "filter", Op::Transpose { perm }, vec![w])?,
                None => w,
            };
            (
                w,
                usize::try_from(c.i_or("groups", 1)?).map_err(|_| "bad groups")?,
            )
        };
        let ws = self.ty(w).shape.clone();
        let dilations = match c.ints("dilations")? {
            Some(d) => self.spatial(&d, nhwc, "dilations")?,
            None => vec![1, 1],
        };
        let kernel = ws[2..].to_vec();
        let (strides, pads) = match c.ints("strides")? {
            Some(s) => {
                let strides = self.spatial(&s, nhwc, "strides")?;
                let pads = match c.s("padding")?.as_deref() {
                    Some("SAME") => same_pads(&xs[2..], &kernel, &strides, &dilations),
                    Some("VALID") => vec![0; 4],
                    _ => self.pads4(&c.ints("pads")?.unwrap_or(vec![0; 4]))?,
                };
                (strides, pads)
            }
            // ATC's compiled graphs drop the convolution's attributes: the output shape
            // decides, when only one stride and TF padding fit it
            None => {
                let out =
                    c.op.output_desc
                        .first()
                        .ok_or("no strides and no output descriptor to infer them from")?;
                let os = desc_type(out)?.1;
                if os.len() != 4 {
                    return Err(format!("output shape {os:?} must be 4-D"));
                }
                let ohw = if nhwc { [os[1], os[2]] } else { [os[2], os[3]] };
                infer_window(&xs[2..], &ohw, &kernel, &dilations)?
            }
        };
        let a = ConvAttrs {
            kernel,
            strides,
            pads,
            dilations,
            groups,
            epilogue: vec![],
            layout: Layout::Plain,
        };
        let mut ins = vec![x, w];
        ins.extend(bias);
        if nhwc {
            let y = self.step(c, "nchw", Op::Conv(a), ins)?;
            self.nchw_out(c, y, true)
        } else {
            self.node1(c, Op::Conv(a), ins)
        }
    }

    /// Conv2DBackpropInput(D) / Conv2DTranspose(D): the transposed convolution, output
    /// shaped `input_size`.
    fn conv_transpose(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let t = c.op.r#type.as_str();
        let (size, x_at, w_at, bias) = match t {
            "Conv2DBackpropInput" => (self.const_ints(c, 0)?, 2, 1, None),
            "Conv2DBackpropInputD" => (c.ints_req("input_size")?, 1, 0, None),
            "Conv2DTranspose" => (self.const_ints(c, 0)?, 1, 2, c.input(3)?),
            _ => (c.ints_req("input_size")?, 0, 1, c.input(2)?),
        };
        let nhwc = self.data_format(c, "NHWC")?;
        let x = self.nchw_in(c, c.req(x_at)?, nhwc)?;
        let w = c.req(w_at)?;
        let w = match c.in_layout(w_at) {
            "HWCN" => self.step(
                c,
                "filter",
                Op::Transpose {
                    perm: vec![3, 2, 0, 1],
                },
                vec![w],
            )?,
            "NHWC" => self.step(
                c,
                "filter",
                Op::Transpose {
                    perm: vec![0, 3, 1, 2],
                },
                vec![w],
            )?,
            "NCHW" | "" | "ND" => w,
            l => return Err(format!("filter layout {l} is not supported")),
        };
        let xs = self.ty(x).shape.clone();
        let ws = self.ty(w).shape.clone();
        if xs.len() != 4 || ws.len() != 4 || size.len() != 4 {
            return Err(format!(
                "input {xs:?}, filter {ws:?} and input_size {size:?} must be 4-D"
            ));
        }
        let size: Vec<usize> = if nhwc {
            vec![size[0], size[3], size[1], size[2]]
        } else {
            size.clone()
        }
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("bad input_size {size:?}")))
        .collect::<R<_>>()?;
        let strides = self.spatial(&c.ints_req("strides")?, nhwc, "strides")?;
        let dilations = match c.ints("dilations")? {
            Some(d) => self.spatial(&d, nhwc, "dilations")?,
            None => vec![1, 1],
        };
        let kernel = ws[2..].to_vec();
        let groups = usize::try_from(c.i_or("groups", 1)?).map_err(|_| "bad groups")?;
        let pads = match c.s("padding")?.as_deref() {
            Some("SAME") => same_pads(&size[2..], &kernel, &strides, &dilations),
            Some("VALID") => vec![0; 4],
            _ => self.pads4(&c.ints("pads")?.unwrap_or(vec![0; 4]))?,
        };
        // output_padding: what the explicit output size adds to the computed one
        let mut output_padding = vec![];
        for d in 0..2 {
            let full = strides[d]
                .checked_mul(xs[2 + d].saturating_sub(1))
                .and_then(|v| v.checked_add(kernel[d].saturating_sub(1).checked_mul(dilations[d])?))
                .and_then(|v| v.checked_add(1))
                .ok_or("transposed convolution size overflows")?;
            let computed = full
                .checked_sub(pads[d] + pads[2 + d])
                .ok_or("pads remove the whole output")?;
            let op = size[2 + d]
                .checked_sub(computed)
                .filter(|&p| p < strides[d].max(dilations[d]))
                .ok_or_else(|| {
                    format!(
                        "input_size {size:?} does not fit the computed output {computed} in dim {d}"
                    )
                })?;
            output_padding.push(op);
        }
        let a = ConvTransposeAttrs {
            kernel,
            strides,
            pads,
            dilations,
            groups,
            output_padding,
        };
        let mut ins = vec![x, w];
        ins.extend(bias);
        if nhwc {
            let y = self.step(c, "nchw", Op::ConvTranspose(a), ins)?;
            self.nchw_out(c, y, true)
        } else {
            self.node1(c, Op::ConvTranspose(a), ins)
        }
    }

    /// MatMul / MatMulV2 (2-D, optional bias [N]) as Gemm; GEMM with alpha/beta inputs.
    fn matmul2d(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let a = c.req(0)?;
        let b = c.req(1)?;
        if self.ty(a).rank() != 2 || self.ty(b).rank() != 2 {
            return Err(format!(
                "operands {} and {} must be 2-D",
                self.ty(a),
                self.ty(b)
            ));
        }
        let gemm = c.op.r#type == "GEMM";
        let (ta, tb) = if gemm {
            (c.b_or("transpose_a", false)?, c.b_or("transpose_b", false)?)
        } else {
            (
                c.b_or("transpose_x1", false)?,
                c.b_or("transpose_x2", false)?,
            )
        };
        let (alpha, beta) = if gemm {
            (self.const_scalar(c, 3)?, self.const_scalar(c, 4)?)
        } else {
            if c.input(3)?.is_some() {
                return Err("quantized matmul (offset_w) is not supported".into());
            }
            (1.0, 1.0)
        };
        let mut ins = vec![a, b];
        ins.extend(c.input(2)?);
        self.node1(
            c,
            Op::Gemm(GemmAttrs {
                alpha,
                beta,
                trans_a: ta,
                trans_b: tb,
                epilogue: vec![],
            }),
            ins,
        )
    }

    /// BatchMatMul(V2): NumPy matmul with `adj_x1`/`adj_x2` transposing the last two dims.
    fn batch_matmul(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let mut a = c.req(0)?;
        let mut b = c.req(1)?;
        for (k, v) in [("adj_x1", &mut a), ("adj_x2", &mut b)] {
            if c.b_or(k, false)? {
                let r = self.ty(*v).rank();
                if r < 2 {
                    return Err(format!("{k} needs a rank >= 2 operand"));
                }
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 2, r - 1);
                *v = self.step(c, k, Op::Transpose { perm }, vec![*v])?;
            }
        }
        let bias = c.input(2)?;
        if c.input(3)?.is_some() {
            return Err("quantized matmul (offset_w) is not supported".into());
        }
        let mm = Op::MatMul(MatMulAttrs { epilogue: vec![] });
        match bias {
            None => self.node1(c, mm, vec![a, b]),
            Some(bias) => {
                let p = self.step(c, "product", mm, vec![a, b])?;
                self.node1(c, Op::Binary(BinaryOp::Add), vec![p, bias])
            }
        }
    }

    /// Pooling: MaxPool/AvgPool (TF: `padding` SAME|VALID) and MaxPoolV3/AvgPoolV2
    /// (`padding_mode` CALCULATED|SAME|VALID with explicit `pads`, `ceil_mode`,
    /// `global_pooling`, AvgPoolV2's `exclusive`).
    fn pool(&mut self, c: &Ctx, max: bool) -> R<Vec<ValueId>> {
        let t = c.op.r#type.as_str();
        let v2 = t.ends_with("V3") || t.ends_with("V2");
        let nhwc = self.data_format(c, if v2 { "NCHW" } else { "NHWC" })?;
        let x = self.nchw_in(c, c.req(0)?, nhwc)?;
        let xs = self.ty(x).shape.clone();
        if xs.len() != 4 {
            return Err(format!("input {xs:?} must be 4-D"));
        }
        if v2 && c.b_or("global_pooling", false)? {
            let y = if max {
                self.step(
                    c,
                    "global",
                    Op::Reduce {
                        kind: ReduceKind::Max,
                        axes: vec![2, 3],
                        keepdims: true,
                    },
                    vec![x],
                )?
            } else {
                self.step(c, "global", Op::GlobalAveragePool, vec![x])?
            };
            let r = self.nchw_out(c, y, nhwc)?;
            return self.rename_out(c, r);
        }
        let kernel = self.spatial(&c.ints_req("ksize")?, nhwc, "ksize")?;
        let strides = self.spatial(&c.ints_req("strides")?, nhwc, "strides")?;
        let mode = if v2 {
            c.s("padding_mode")?.unwrap_or("CALCULATED".into())
        } else {
            c.s("padding")?.ok_or("missing attribute 'padding'")?
        };
        let ones = vec![1, 1];
        let pads = match mode.as_str() {
            "SAME" => same_pads(&xs[2..], &kernel, &strides, &ones),
            "VALID" => vec![0; 4],
            "CALCULATED" => self.pads4(&c.ints("pads")?.unwrap_or(vec![0; 4]))?,
            m => return Err(format!("padding {m} is not supported")),
        };
        let exclusive = if v2 { c.b_or("exclusive", true)? } else { true };
        if !max && v2 && c.i_or("divisor_override", 0)? != 0 {
            return Err("divisor_override is not supported".into());
        }
        let a = PoolAttrs {
            kernel,
            strides,
            pads,
            dilations: ones,
            ceil_mode: v2 && c.b_or("ceil_mode", false)?,
            // TF's SAME average excludes the padding
            count_include_pad: !max && mode == "CALCULATED" && !exclusive,
        };
        let op = if max {
            Op::MaxPool(a)
        } else {
            Op::AveragePool(a)
        };
        if nhwc {
            let y = self.step(c, "nchw", op, vec![x])?;
            self.nchw_out(c, y, true)
        } else {
            self.node1(c, op, vec![x])
        }
    }

    /// Give a lowering's last value the op's output name (a view when it has another one).
    fn rename_out(&mut self, c: &Ctx, r: Vec<ValueId>) -> R<Vec<ValueId>> {
        let v = r[0];
        let want = value_name(c.op, 0);
        if self.b.g.value(v).name == want {
            return Ok(r);
        }
        let shape = self.ty(v).shape.clone();
        self.node1(c, Op::Reshape { shape }, vec![v])
    }

    fn reduce(&mut self, c: &Ctx, kind: ReduceKind) -> R<Vec<ValueId>> {
        let x = c.req(0)?;
        let r = self.ty(x).rank();
        let axes = self.ints_attr_or_input(c, "axes", 1)?;
        let mut ax: Vec<usize> = if axes.is_empty() {
            (0..r).collect()
        } else {
            axes.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?
        };
        ax.sort_unstable();
        ax.dedup();
        let keepdims = c.b_or("keep_dims", false)?;
        self.node1(
            c,
            Op::Reduce {
                kind,
                axes: ax,
                keepdims,
            },
            vec![x],
        )
    }

    fn resize(&mut self, c: &Ctx, mode: ResizeMode) -> R<Vec<ValueId>> {
        let x = c.req(0)?;
        let xs = self.ty(x).shape.clone();
        if xs.len() != 4 {
            return Err(format!("input {xs:?} must be 4-D"));
        }
        let nhwc = c.in_layout(0) == "NHWC" || c.s("data_format")?.as_deref() == Some("NHWC");
        let x = self.nchw_in(c, x, nhwc)?;
        let xs = self.ty(x).shape.clone();
        let size = self.ints_attr_or_input(c, "size", 1)?;
        let [h, w] = size[..] else {
            return Err(format!("size {size:?} must have 2 values"));
        };
        let (h, w) = (
            usize::try_from(h).map_err(|_| "bad size")?,
            usize::try_from(w).map_err(|_| "bad size")?,
        );
        if h == 0 || w == 0 || h > 1 << 20 || w > 1 << 20 {
            return Err(format!("size {size:?} is out of range"));
        }
        let ac = c.b_or("align_corners", false)?;
        let hp = c.b_or("half_pixel_centers", false)?;
        if ac && hp {
            return Err("align_corners and half_pixel_centers are exclusive".into());
        }
        let coord = if ac {
            CoordTransform::AlignCorners
        } else if hp {
            CoordTransform::HalfPixel
        } else {
            CoordTransform::Asymmetric
        };
        // TF nearest: floor(src), align_corners rounds half away from zero, half-pixel centres
        // floor((dst + 0.5) * scale) = round_prefer_ceil(half_pixel(dst))
        let nearest = if mode == ResizeMode::Linear {
            // unused by linear resizing; ONNX's default, as the ONNX importer sets it
            NearestMode::RoundPreferFloor
        } else if ac || hp {
            NearestMode::RoundPreferCeil
        } else {
            NearestMode::Floor
        };
        let out_shape = vec![xs[0], xs[1], h, w];
        let scales = vec![1.0, 1.0, h as f32 / xs[2] as f32, w as f32 / xs[3] as f32];
        let op = Op::Resize(ResizeAttrs {
            mode,
            coord,
            nearest,
            scales,
            out_shape,
        });
        if nhwc {
            let y = self.step(c, "nchw", op, vec![x])?;
            self.nchw_out(c, y, true)
        } else {
            self.node1(c, op, vec![x])
        }
    }

    fn layer_norm(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let x = c.req(0)?;
        let r = self.ty(x).rank();
        let axis = norm_axis(c.i_or("begin_norm_axis", 0)?, r)?;
        let paxis = norm_axis(c.i_or("begin_params_axis", 0)?, r)?;
        if paxis < axis {
            return Err(format!(
                "begin_params_axis {paxis} before begin_norm_axis {axis} is not supported"
            ));
        }
        let epsilon = c.f_or("epsilon", 1e-7)?;
        let mut ins = vec![x];
        for i in [1, 2] {
            if let Some(p) = c.input(i)? {
                ins.push(p);
            }
        }
        let y = self.b.node1(
            c.name(),
            Op::LayerNorm { axis, epsilon },
            ins,
            &value_name(c.op, 0),
        )?;
        // outputs 1 and 2: the mean and variance over the normalized axes
        let axes: Vec<usize> = (axis..r).collect();
        let mean_op = Op::Reduce {
            kind: ReduceKind::Mean,
            axes,
            keepdims: true,
        };
        let mean = self
            .b
            .node1(c.name(), mean_op.clone(), vec![x], &value_name(c.op, 1))?;
        let d = self.step(c, "centred", Op::Binary(BinaryOp::Sub), vec![x, mean])?;
        let sq = self.step(c, "square", Op::Binary(BinaryOp::Mul), vec![d, d])?;
        let var = self
            .b
            .node1(c.name(), mean_op, vec![sq], &value_name(c.op, 2))?;
        Ok(vec![y, mean, var])
    }

    /// BatchNorm (inference) and BNInference(D): `scale * (x - mean) / sqrt(var + eps) +
    /// offset` over channel axis 1.
    fn batch_norm(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let t = c.op.r#type.as_str();
        let eps = c.f_or("epsilon", 1e-4)?;
        let (x, scale, offset, mean, var) = if t == "BatchNorm" {
            if c.b_or("is_training", true)? {
                return Err("training-mode BatchNorm (is_training=true) is not supported".into());
            }
            if self.data_format(c, "NHWC")? {
                return Err("BatchNorm with data_format NHWC is not supported".into());
            }
            (c.req(0)?, c.input(1)?, c.input(2)?, c.req(3)?, c.req(4)?)
        } else {
            // BNInference(x, mean, variance, momentum, scale, offset); the D form has no
            // momentum input
            let k = if t == "BNInference" { 4 } else { 3 };
            (
                c.req(0)?,
                c.input(k)?,
                c.input(k + 1)?,
                c.req(1)?,
                c.req(2)?,
            )
        };
        let xt = self.ty(x).clone();
        if xt.rank() < 2 {
            return Err(format!("input {xt} must have a channel axis"));
        }
        let ch = xt.shape[1];
        let one = |imp: &mut Self, v: f64, what: &str| -> R<ValueId> {
            let data: Vec<u8> = match xt.dtype {
                DType::F32 => (0..ch).flat_map(|_| (v as f32).to_le_bytes()).collect(),
                d => return Err(format!("BatchNorm on {d} is not supported")),
            };
            imp.b.add_const(
                &format!("{}/{what}", c.name()),
                TensorType::new(xt.dtype, vec![ch]),
                ConstData::from_vec(data),
            )
        };
        let scale = match scale {
            Some(s) => s,
            None => one(self, 1.0, "scale")?,
        };
        let offset = match offset {
            Some(s) => s,
            None => one(self, 0.0, "offset")?,
        };
        let mut outs = self.node1(
            c,
            Op::BatchNorm { epsilon: eps },
            vec![x, scale, offset, mean, var],
        )?;
        // BatchNorm's other outputs (batch statistics, reserve spaces) are the running ones in
        // inference
        if t == "BatchNorm" {
            outs.extend([mean, var, mean, var]);
        }
        Ok(outs)
    }

    fn translate(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let t = c.op.r#type.as_str();
        if let Some(u) = unary_of(t) {
            return self.node1(c, Op::Unary(u), vec![c.req(0)?]);
        }
        if let Some(bop) = binary_of(t) {
            let (a, b) = (c.req(0)?, c.req(1)?);
            return self.node1(c, Op::Binary(bop), vec![a, b]);
        }
        if let Some((cmp, not)) = compare_of(t) {
            let (a, b) = (c.req(0)?, c.req(1)?);
            if not {
                let e = self.step(c, "equal", Op::Compare(cmp), vec![a, b])?;
                return self.node1(c, Op::Not, vec![e]);
            }
            return self.node1(c, Op::Compare(cmp), vec![a, b]);
        }
        match t {
            "Const" | "Constant" => Ok(vec![self.constant(c)?]),
            "Identity" | "StopGradient" => Ok(vec![c.req(0)?]),
            "TransData" => {
                // a layout conversion: the identity on logical values, but between NCHW and
                // NHWC (a transpose) and where the logical shape changes (ATC folds a reshape
                // into the conversion to FRACTAL_NZ)
                let x = c.req(0)?;
                let out = c.op.output_desc.first();
                let src = c.in_layout(0);
                let dst = out.map_or("", logical_format);
                let y = match (src, dst) {
                    ("NCHW", "NHWC") if self.ty(x).rank() == 4 => self.step(
                        c,
                        "to_nhwc",
                        Op::Transpose {
                            perm: vec![0, 2, 3, 1],
                        },
                        vec![x],
                    )?,
                    ("NHWC", "NCHW") if self.ty(x).rank() == 4 => self.step(
                        c,
                        "to_nchw",
                        Op::Transpose {
                            perm: vec![0, 3, 1, 2],
                        },
                        vec![x],
                    )?,
                    _ => x,
                };
                let want = match out {
                    Some(d) => desc_type(d)?.1,
                    None => vec![],
                };
                let shape: Vec<usize> = want.iter().map(|&d| d.max(0) as usize).collect();
                if !want.is_empty()
                    && shape != self.ty(y).shape
                    && shape.iter().product::<usize>() == self.ty(y).numel()
                {
                    return self.reshape_out(c, y, shape);
                }
                if y == x {
                    Ok(vec![x])
                } else {
                    self.rename_out(c, vec![y])
                }
            }
            "Aipp" => self.aipp(c),
            "Conv2D" => self.conv(c, false),
            "DepthwiseConv2D" => self.conv(c, true),
            "Conv2DBackpropInput"
            | "Conv2DBackpropInputD"
            | "Conv2DTranspose"
            | "Conv2DTransposeD" => self.conv_transpose(c),
            "MatMul" | "MatMulV2" | "GEMM" => self.matmul2d(c),
            "BatchMatMul" | "BatchMatMulV2" => self.batch_matmul(c),
            "BiasAdd" => {
                let x = c.req(0)?;
                let bias = c.req(1)?;
                let r = self.ty(x).rank();
                // the channel axis: 1 for NCHW, else the last (GE's default format is NHWC)
                let format = c.s("data_format")?.unwrap_or(c.in_layout(0).to_string());
                let nchw = format == "NCHW" && r >= 2;
                let bias = if nchw {
                    let mut shape = vec![self.ty(bias).numel()];
                    shape.resize(r - 1, 1);
                    self.b
                        .reshape(c.name(), bias, shape, &format!("{}/bias", c.name()))?
                } else {
                    bias
                };
                self.node1(c, Op::Binary(BinaryOp::Add), vec![x, bias])
            }
            "Relu6" => self.node1(c, Op::Clip { min: 0.0, max: 6.0 }, vec![c.req(0)?]),
            "ClipByValue" => {
                let x = c.req(0)?;
                let lo = self.const_scalar(c, 1)?;
                let hi = self.const_scalar(c, 2)?;
                self.node1(c, Op::Clip { min: lo, max: hi }, vec![x])
            }
            "LeakyRelu" => self.act(c, ActKind::LeakyRelu, c.f_or("negative_slope", 0.0)?, 0.0),
            "Elu" => self.act(c, ActKind::Elu, c.f_or("alpha", 1.0)?, 0.0),
            "Selu" => self.act(c, ActKind::Selu, 1.673_263_2, 1.050_701),
            "HardSigmoid" => self.act(
                c,
                ActKind::HardSigmoid,
                c.f_or("alpha", 1.0 / 6.0)?,
                c.f_or("beta", 0.5)?,
            ),
            "Swish" => self.act(c, ActKind::Swish, c.f_or("scale", 1.0)?, 0.0),
            "Gelu" => self.node1(c, Op::Unary(UnaryOp::GeluTanh), vec![c.req(0)?]),
            "GeluV2" => {
                let u = match c.s("approximate")?.as_deref() {
                    None | Some("none") => UnaryOp::Gelu,
                    Some("tanh") => UnaryOp::GeluTanh,
                    Some(a) => return Err(format!("approximate={a} is not supported")),
                };
                self.node1(c, Op::Unary(u), vec![c.req(0)?])
            }
            "FastGelu" => self.fast_gelu(c),
            "Square" => {
                let x = c.req(0)?;
                self.node1(c, Op::Binary(BinaryOp::Mul), vec![x, x])
            }
            "Rsqrt" => {
                let x = c.req(0)?;
                let s = self.step(c, "sqrt", Op::Unary(UnaryOp::Sqrt), vec![x])?;
                self.node1(c, Op::Unary(UnaryOp::Reciprocal), vec![s])
            }
            "MaxPool" | "MaxPoolV3" => self.pool(c, true),
            "AvgPool" | "AvgPoolV2" => self.pool(c, false),
            "GlobalAveragePool" => self.node1(c, Op::GlobalAveragePool, vec![c.req(0)?]),
            "BatchNorm" | "BNInference" | "BNInferenceD" => self.batch_norm(c),
            "LayerNorm" => self.layer_norm(c),
            "SoftmaxV2" | "LogSoftmaxV2" => {
                let x = c.req(0)?;
                let axes = c.ints("axes")?.unwrap_or(vec![-1]);
                let [a] = axes[..] else {
                    return Err(format!(
                        "softmax over axes {axes:?} is not supported (one axis)"
                    ));
                };
                let axis = norm_axis(a, self.ty(x).rank())?;
                let kind = if t == "SoftmaxV2" {
                    SoftmaxKind::Softmax
                } else {
                    SoftmaxKind::LogSoftmax
                };
                self.node1(c, Op::Softmax { axis, kind }, vec![x])
            }
            "Cast" => {
                let to = dtype_of_ge(c.i("dst_type")?.ok_or("missing attribute 'dst_type'")?)?;
                let x = c.req(0)?;
                if self.widen && to == DType::F16 {
                    // computed in f32, rounded to fp16 where the model casts
                    let h = self.step(c, "fp16", Op::Cast { to }, vec![x])?;
                    return self.node1(c, Op::Cast { to: DType::F32 }, vec![h]);
                }
                if self.ty(x).dtype == to {
                    // an fp16 value read as f32: the Cast back is the identity, its name kept
                    // (an OM's output is named after the Cast)
                    return if self.widen {
                        self.rename_out(c, vec![x])
                    } else {
                        Ok(vec![x])
                    };
                }
                self.node1(c, Op::Cast { to }, vec![x])
            }
            "Reshape" => {
                let x = c.req(0)?;
                let spec = self.ints_attr_or_input(c, "shape", 1)?;
                let shape = reshape_target(self.ty(x).numel(), &spec)?;
                self.reshape_out(c, x, shape)
            }
            "Flatten" | "FlattenV2" => {
                let x = c.req(0)?;
                let s = self.ty(x).shape.clone();
                let r = s.len().max(1);
                let axis = norm_axis(c.i_or("axis", 1)?, r)?;
                let end = if t == "FlattenV2" {
                    norm_axis(c.i_or("end_axis", -1)?, r)?
                } else {
                    r - 1
                };
                if end < axis {
                    return Err(format!("end_axis {end} before axis {axis}"));
                }
                let mut shape: Vec<usize> = s[..axis].to_vec();
                if t == "Flatten" {
                    // GE Flatten keeps the first axis and flattens the rest
                    shape.push(s[axis..].iter().product());
                } else {
                    shape.push(s[axis..=end].iter().product());
                    shape.extend_from_slice(&s[end + 1..]);
                }
                self.reshape_out(c, x, shape)
            }
            "Transpose" | "TransposeD" => {
                let x = c.req(0)?;
                let r = self.ty(x).rank();
                let perm = self
                    .ints_attr_or_input(c, "perm", 1)?
                    .iter()
                    .map(|&p| norm_axis(p, r))
                    .collect::<R<Vec<_>>>()?;
                self.node1(c, Op::Transpose { perm }, vec![x])
            }
            "Squeeze" => {
                let x = c.req(0)?;
                let s = self.ty(x).shape.clone();
                let axes = c.ints("axis")?.unwrap_or_default();
                let ax: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, s.len()))
                    .collect::<R<_>>()?;
                let shape: Vec<usize> = s
                    .iter()
                    .enumerate()
                    .filter(|&(i, &d)| {
                        if ax.is_empty() {
                            d != 1
                        } else {
                            !ax.contains(&i)
                        }
                    })
                    .map(|(_, &d)| d)
                    .collect();
                if ax.iter().any(|&a| s[a] != 1) {
                    return Err(format!("cannot squeeze axes {axes:?} of {s:?}"));
                }
                self.reshape_out(c, x, shape)
            }
            "Unsqueeze" | "ExpandDims" => {
                let x = c.req(0)?;
                let s = self.ty(x).shape.clone();
                let axes = if t == "Unsqueeze" {
                    c.ints_req("axes")?
                } else {
                    self.ints_attr_or_input(c, "axis", 1)?
                };
                let r = s.len() + axes.len();
                let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?;
                ax.sort_unstable();
                let mut shape = s.clone();
                for a in ax {
                    shape.insert(a.min(shape.len()), 1);
                }
                self.reshape_out(c, x, shape)
            }
            "Concat" | "ConcatD" | "ConcatV2" | "ConcatV2D" => {
                let (dim, xs): (i64, Vec<ValueId>) = match t {
                    "ConcatD" | "ConcatV2D" => (
                        c.i("concat_dim")?.ok_or("missing attribute 'concat_dim'")?,
                        c.ins.iter().flatten().copied().collect(),
                    ),
                    "ConcatV2" => {
                        let n = c.ins.len().checked_sub(1).ok_or("no inputs")?;
                        let d = *self.const_ints(c, n)?.first().ok_or("empty concat_dim")?;
                        (d, c.ins[..n].iter().flatten().copied().collect())
                    }
                    _ => {
                        let d = *self.const_ints(c, 0)?.first().ok_or("empty concat_dim")?;
                        (d, c.ins[1..].iter().flatten().copied().collect())
                    }
                };
                let first = *xs.first().ok_or("no inputs")?;
                let axis = norm_axis(dim, self.ty(first).rank())?;
                self.node1(c, Op::Concat { axis }, xs)
            }
            "Split" | "SplitD" | "SplitV" | "SplitVD" => {
                let (x, dim) = match t {
                    "Split" => (
                        c.req(1)?,
                        *self.const_ints(c, 0)?.first().ok_or("empty split_dim")?,
                    ),
                    "SplitV" => (
                        c.req(0)?,
                        *self.const_ints(c, 2)?.first().ok_or("empty split_dim")?,
                    ),
                    _ => (
                        c.req(0)?,
                        c.i("split_dim")?.ok_or("missing attribute 'split_dim'")?,
                    ),
                };
                let s = self.ty(x).shape.clone();
                let axis = norm_axis(dim, s.len())?;
                let sizes: Vec<usize> = match t {
                    "SplitV" | "SplitVD" => {
                        let spec = if t == "SplitV" {
                            self.const_ints(c, 1)?
                        } else {
                            c.ints_req("size_splits")?
                        };
                        let known: i64 = spec.iter().filter(|&&v| v >= 0).sum();
                        spec.iter()
                            .map(|&v| {
                                let v = if v == -1 { s[axis] as i64 - known } else { v };
                                usize::try_from(v).map_err(|_| format!("bad size_splits {spec:?}"))
                            })
                            .collect::<R<_>>()?
                    }
                    _ => {
                        let n = usize::try_from(
                            c.i("num_split")?.ok_or("missing attribute 'num_split'")?,
                        )
                        .ok()
                        .filter(|&n| n > 0 && s[axis].is_multiple_of(n))
                        .ok_or_else(|| format!("num_split does not divide dim {axis} of {s:?}"))?;
                        vec![s[axis] / n; n]
                    }
                };
                self.node(c, Op::Split { axis, sizes }, vec![x])
            }
            "StridedSlice" | "StridedSliceD" => {
                let x = c.req(0)?;
                let shape = self.ty(x).shape.clone();
                let (b, e, s) = if t == "StridedSliceD" {
                    (
                        c.ints_req("begin")?,
                        c.ints_req("end")?,
                        c.ints_req("strides")?,
                    )
                } else {
                    (
                        self.const_ints(c, 1)?,
                        self.const_ints(c, 2)?,
                        self.const_ints(c, 3)?,
                    )
                };
                let mut masks = [0i64; 5];
                for (k, name) in STRIDED_SLICE_MASKS.iter().enumerate() {
                    masks[k] = c.i_or(name, 0)?;
                }
                let (a, out) = strided_slice(&shape, &b, &e, &s, masks)?;
                if a.sizes == out {
                    return self.node1(c, Op::Slice(a), vec![x]);
                }
                let y = self.step(c, "slice", Op::Slice(a), vec![x])?;
                self.reshape_out(c, y, out)
            }
            "Slice" | "SliceD" => {
                let x = c.req(0)?;
                let shape = self.ty(x).shape.clone();
                let (off, size) = if t == "SliceD" {
                    (c.ints_req("offsets")?, c.ints_req("size")?)
                } else {
                    (self.const_ints(c, 1)?, self.const_ints(c, 2)?)
                };
                if off.len() != shape.len() || size.len() != shape.len() {
                    return Err(format!(
                        "offsets {off:?} / size {size:?} do not fit {shape:?}"
                    ));
                }
                let mut a = SliceAttrs {
                    starts: vec![],
                    steps: vec![1; shape.len()],
                    sizes: vec![],
                };
                for d in 0..shape.len() {
                    let o = usize::try_from(off[d])
                        .ok()
                        .filter(|&o| o <= shape[d])
                        .ok_or_else(|| format!("offset {} out of range for dim {d}", off[d]))?;
                    let sz = if size[d] == -1 {
                        shape[d] - o
                    } else {
                        usize::try_from(size[d])
                            .ok()
                            .filter(|&s| s <= shape[d] - o)
                            .ok_or_else(|| format!("size {} out of range for dim {d}", size[d]))?
                    };
                    a.starts.push(o);
                    a.sizes.push(sz);
                }
                self.node1(c, Op::Slice(a), vec![x])
            }
            "Pad" | "PadD" | "PadV3" => {
                let x = c.req(0)?;
                let r = self.ty(x).rank();
                let pairs: Vec<i64> = if t == "PadD" {
                    c.list_list("paddings")?
                        .ok_or("missing attribute 'paddings'")?
                        .into_iter()
                        .flatten()
                        .collect()
                } else {
                    self.const_ints(c, 1)?
                };
                if pairs.len() != 2 * r {
                    return Err(format!("paddings {pairs:?} do not fit rank {r}"));
                }
                let value = if t == "PadV3" {
                    match c.input(2)? {
                        Some(_) => self.const_scalar(c, 2)? as f64,
                        None => 0.0,
                    }
                } else {
                    0.0
                };
                let mode = match c.s("mode")?.as_deref() {
                    None | Some("constant") => kiln_ir::ops::PadMode::Constant,
                    Some("reflect") => kiln_ir::ops::PadMode::Reflect,
                    Some("edge") => kiln_ir::ops::PadMode::Edge,
                    Some(m) => return Err(format!("pad mode {m} is not supported")),
                };
                let pads: Vec<i64> = (0..r)
                    .map(|d| pairs[2 * d])
                    .chain((0..r).map(|d| pairs[2 * d + 1]))
                    .collect();
                self.node1(c, Op::Pad { pads, mode, value }, vec![x])
            }
            "Tile" | "TileD" => {
                let x = c.req(0)?;
                let reps = self.ints_attr_or_input(c, "multiples", 1)?;
                let reps = reps
                    .iter()
                    .map(|&r| usize::try_from(r).map_err(|_| format!("bad multiples {reps:?}")))
                    .collect::<R<Vec<_>>>()?;
                Ok(vec![self.b.tile(
                    c.name(),
                    x,
                    &reps,
                    &value_name(c.op, 0),
                )?])
            }
            "BroadcastTo" | "BroadcastToD" => {
                let x = c.req(0)?;
                let shape = self
                    .ints_attr_or_input(c, "shape", 1)?
                    .iter()
                    .map(|&d| usize::try_from(d).map_err(|_| "bad shape".to_string()))
                    .collect::<R<Vec<_>>>()?;
                self.node1(c, Op::Expand { shape }, vec![x])
            }
            "GatherV2" | "GatherV2D" => {
                let x = c.req(0)?;
                let idx = c.req(1)?;
                let axis = match c.i("axis")? {
                    Some(a) if t == "GatherV2D" => a,
                    _ => *self.const_ints(c, 2)?.first().ok_or("empty axis")?,
                };
                if c.i_or("batch_dims", 0)? != 0 {
                    return Err("batch_dims is not supported".into());
                }
                let axis = norm_axis(axis, self.ty(x).rank())?;
                self.node1(c, Op::Gather { axis }, vec![x, idx])
            }
            "ReduceSum" | "ReduceSumD" => self.reduce(c, ReduceKind::Sum),
            "ReduceMax" | "ReduceMaxD" => self.reduce(c, ReduceKind::Max),
            "ReduceMin" | "ReduceMinD" => self.reduce(c, ReduceKind::Min),
            "ReduceMean" | "ReduceMeanD" => self.reduce(c, ReduceKind::Mean),
            "ReduceProd" | "ReduceProdD" => self.reduce(c, ReduceKind::Prod),
            "ArgMaxD" | "ArgMaxV2" | "ArgMin" => {
                let x = c.req(0)?;
                let dim = match c.i("dimension")? {
                    Some(d) => d,
                    None => *self.const_ints(c, 1)?.first().ok_or("empty dimension")?,
                };
                let axis = norm_axis(dim, self.ty(x).rank())?;
                let to = dtype_of_ge(c.i_or("dtype", 3)?)?;
                let a = self.step(
                    c,
                    "index",
                    Op::ArgExtreme {
                        max: t != "ArgMin",
                        axis,
                        keepdims: false,
                        select_last: false,
                    },
                    vec![x],
                )?;
                if to == DType::I64 {
                    return self.rename_out(c, vec![a]);
                }
                self.node1(c, Op::Cast { to }, vec![a])
            }
            "ResizeNearestNeighborV2" | "ResizeNearestNeighborV2D" => {
                self.resize(c, ResizeMode::Nearest)
            }
            "ResizeBilinearV2" | "ResizeBilinearV2D" => self.resize(c, ResizeMode::Linear),
            "Select" | "SelectV2" => {
                let (cnd, a, b) = (c.req(0)?, c.req(1)?, c.req(2)?);
                self.node1(c, Op::Where, vec![cnd, a, b])
            }
            "LogicalAnd" | "LogicalOr" => {
                let l = if t == "LogicalAnd" {
                    LogicOp::And
                } else {
                    LogicOp::Or
                };
                let (a, b) = (c.req(0)?, c.req(1)?);
                self.node1(c, Op::Logical(l), vec![a, b])
            }
            "LogicalNot" => self.node1(c, Op::Not, vec![c.req(0)?]),
            "Rank" | "Shape" | "Size" => {
                let s = self.ty(c.req(0)?).shape.clone();
                let vals: Vec<i64> = match t {
                    "Rank" => vec![s.len() as i64],
                    "Shape" => s.iter().map(|&d| d as i64).collect(),
                    _ => vec![s.iter().product::<usize>() as i64],
                };
                let out = c.op.output_desc.first();
                let dt = match out {
                    Some(d) if d.dtype != 0 => dtype_of_proto(d.dtype)?,
                    _ => DType::I32,
                };
                let shape = if t == "Shape" { vec![s.len()] } else { vec![] };
                let data: Vec<u8> = match dt {
                    DType::I32 => vals
                        .iter()
                        .flat_map(|&v| (v as i32).to_le_bytes())
                        .collect(),
                    DType::I64 => vals.iter().flat_map(|&v| v.to_le_bytes()).collect(),
                    d => return Err(format!("{t} of type {d} is not supported")),
                };
                let shape = match out.and_then(|d| d.shape.as_ref()) {
                    Some(sd) if t == "Rank" && sd.dim == [1] => vec![1],
                    _ => shape,
                };
                Ok(vec![self.b.add_const(
                    &value_name(c.op, 0),
                    TensorType::new(dt, shape),
                    ConstData::from_vec(data),
                )?])
            }
            _ => Err(format!("op type {t} is not supported")),
        }
    }

    /// Static AIPP (an offline model's image preprocessing): 8-bit NHWC pixels -> the model's
    /// NCHW input, `(x - mean_chn - min_chn) * var_reci_chn` per channel (RGB888_U8, no colour
    /// conversion).
    fn aipp(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let Some(AV::Func(p)) = attr(c.op, "aipp") else {
            return Err(
                "Aipp without its 'aipp' parameters (dynamic AIPP is not supported)".into(),
            );
        };
        let num = |k: &str, def: f64| -> f64 {
            match p.attr.get(k).and_then(|a| a.value.as_ref()) {
                Some(AV::I(i)) => *i as f64,
                Some(AV::F(f)) => *f as f64,
                Some(AV::List(l)) => {
                    l.f.first()
                        .map(|&f| f as f64)
                        .or(l.i.first().map(|&i| i as f64))
                        .unwrap_or(def)
                }
                _ => def,
            }
        };
        let text = |k: &str| match p.attr.get(k).and_then(|a| a.value.as_ref()) {
            Some(AV::S(s)) => String::from_utf8_lossy(s).into_owned(),
            _ => String::new(),
        };
        let mode = text("aipp_mode");
        if !mode.is_empty() && mode != "static" {
            return Err(format!("AIPP mode '{mode}' is not supported (static)"));
        }
        let fmt = text("input_format");
        if !matches!(fmt.as_str(), "" | "RGB888_U8") {
            return Err(format!(
                "AIPP input format {fmt} is not supported (RGB888_U8)"
            ));
        }
        if num("csc_switch", 0.0) != 0.0 || num("rbuv_swap_switch", 0.0) != 0.0 {
            return Err("AIPP colour-space conversion / channel swap is not supported".into());
        }
        let x = c.req(0)?;
        let xs = self.ty(x).shape.clone();
        if xs.len() != 4 || xs[3] != 3 {
            return Err(format!("AIPP input {xs:?} must be NHWC with 3 channels"));
        }
        let n = c.name().to_string();
        let f = self.step(c, "f32", Op::Cast { to: DType::F32 }, vec![x])?;
        let t = self.step(
            c,
            "nchw",
            Op::Transpose {
                perm: vec![0, 3, 1, 2],
            },
            vec![f],
        )?;
        let shift: Vec<u8> = (0..3)
            .flat_map(|k| {
                ((num(&format!("mean_chn_{k}"), 0.0) + num(&format!("min_chn_{k}"), 0.0)) as f32)
                    .to_le_bytes()
            })
            .collect();
        let scale: Vec<u8> = (0..3)
            .flat_map(|k| (num(&format!("var_reci_chn_{k}"), 1.0) as f32).to_le_bytes())
            .collect();
        let ty = TensorType::new(DType::F32, vec![1, 3, 1, 1]);
        let sh = self.b.add_const(
            &format!("{n}/shift"),
            ty.clone(),
            ConstData::from_vec(shift),
        )?;
        let sc = self
            .b
            .add_const(&format!("{n}/scale"), ty, ConstData::from_vec(scale))?;
        let d = self.step(c, "centred", Op::Binary(BinaryOp::Sub), vec![t, sh])?;
        self.node1(c, Op::Binary(BinaryOp::Mul), vec![d, sc])
    }

    /// Apply the activation ATC fused into op `c` to its result `y`.
    fn fused(&mut self, c: &Ctx, act: &str, y: ValueId) -> R<ValueId> {
        let op = match act {
            "Relu6" => Op::Clip { min: 0.0, max: 6.0 },
            "Relu" => Op::Unary(UnaryOp::Relu),
            "Sigmoid" => Op::Unary(UnaryOp::Sigmoid),
            _ => Op::Unary(UnaryOp::Tanh),
        };
        // the op's own result becomes an intermediate; the activation takes its name
        let name = self.b.g.value(y).name.clone();
        let tmp = self.b.fresh(&format!("{}/unfused", c.name()));
        self.b.g.value_mut(y).name = tmp;
        self.b.release(&name);
        self.b.node1(c.name(), op, vec![y], &name)
    }

    fn act(&mut self, c: &Ctx, kind: ActKind, alpha: f32, beta: f32) -> R<Vec<ValueId>> {
        self.node1(c, Op::Act { kind, alpha, beta }, vec![c.req(0)?])
    }

    /// A constant scalar input, as f32.
    fn const_scalar(&self, c: &Ctx, i: usize) -> R<f32> {
        let v = self
            .b
            .const_scalar(c.req(i)?)
            .map_err(|e| format!("input {i} {e}"))?;
        Ok(v as f32)
    }

    /// `reshape` giving the op's output name.
    fn reshape_out(&mut self, c: &Ctx, x: ValueId, shape: Vec<usize>) -> R<Vec<ValueId>> {
        if self.ty(x).shape == shape {
            return self.rename_out(c, vec![x]);
        }
        Ok(vec![self.b.reshape(
            c.name(),
            x,
            shape,
            &value_name(c.op, 0),
        )?])
    }

    /// MindSpore's FastGeLU: `x / (1 + exp(-1.702 |x|)) * exp(0.851 (x - |x|))`.
    fn fast_gelu(&mut self, c: &Ctx) -> R<Vec<ValueId>> {
        let x = c.req(0)?;
        let dt = self.ty(x).dtype;
        let n = c.name().to_string();
        let ax = self.step(c, "abs", Op::Unary(UnaryOp::Abs), vec![x])?;
        let k1 = self.b.scalar(-1.702, dt, &format!("{n}/k1"))?;
        let e1 = self.step(c, "m1", Op::Binary(BinaryOp::Mul), vec![ax, k1])?;
        let e1 = self.step(c, "e1", Op::Unary(UnaryOp::Exp), vec![e1])?;
        let one = self.b.scalar(1.0, dt, &format!("{n}/one"))?;
        let den = self.step(c, "den", Op::Binary(BinaryOp::Add), vec![e1, one])?;
        let q = self.step(c, "q", Op::Binary(BinaryOp::Div), vec![x, den])?;
        let d = self.step(c, "d", Op::Binary(BinaryOp::Sub), vec![x, ax])?;
        let k2 = self.b.scalar(0.851, dt, &format!("{n}/k2"))?;
        let e2 = self.step(c, "m2", Op::Binary(BinaryOp::Mul), vec![d, k2])?;
        let e2 = self.step(c, "e2", Op::Unary(UnaryOp::Exp), vec![e2])?;
        self.node1(c, Op::Binary(BinaryOp::Mul), vec![q, e2])
    }
}

/// Strides and pads of a window op whose attributes are gone (ATC's compiled graphs), from the
/// input and output spatial sizes: per axis, every stride up to the kernel size (at least 8)
/// with VALID or TF SAME padding that produces the output; an error unless exactly one
/// (stride, pads) fits.
fn infer_window(
    input: &[usize],
    output: &[i64],
    kernel: &[usize],
    dilations: &[usize],
) -> R<(Vec<usize>, Vec<usize>)> {
    let mut strides = vec![];
    let mut pads = vec![0; 4];
    for d in 0..2 {
        let (i, k, dl) = (input[d], kernel[d], dilations[d]);
        let o = usize::try_from(output[d]).map_err(|_| format!("bad output size {output:?}"))?;
        let span = (k - 1) * dl + 1;
        let mut fits: Vec<(usize, usize, usize)> = vec![];
        for s in 1..=k.max(8) {
            if i >= span && (i - span) / s + 1 == o {
                fits.push((s, 0, 0));
            }
            if i.div_ceil(s) == o {
                let p = same_pads(&[i], &[k], &[s], &[dl]);
                if !fits.contains(&(s, p[0], p[1])) {
                    fits.push((s, p[0], p[1]));
                }
            }
        }
        match fits[..] {
            [(s, b, e)] => {
                strides.push(s);
                pads[d] = b;
                pads[2 + d] = e;
            }
            [] => {
                return Err(format!(
                    "no stride and padding turn {input:?} into {output:?} with kernel {kernel:?}: the model has no 'strides' attribute"
                ));
            }
            _ => {
                return Err(format!(
                    "the model has no 'strides' attribute, and {} strides/paddings turn {input:?} into {output:?} with kernel {kernel:?}",
                    fits.len()
                ));
            }
        }
    }
    Ok((strides, pads))
}

/// `data` (row-major, `shape`, elements of `elem` bytes) transposed by `perm` (output axis
/// `k` is input axis `perm[k]`).
fn transpose_bytes(data: &[u8], shape: &[usize], perm: &[usize], elem: usize) -> Vec<u8> {
    let strides = kiln_ir::types::strides_of(shape);
    let oshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let n: usize = shape.iter().product();
    let mut out = vec![0u8; n * elem];
    let mut idx = vec![0usize; oshape.len()];
    for o in 0..n {
        let src: usize = idx.iter().zip(perm).map(|(&i, &p)| i * strides[p]).sum();
        out[o * elem..(o + 1) * elem].copy_from_slice(&data[src * elem..(src + 1) * elem]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < oshape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// The activation ATC fused into an op (`Conv2D` + `Relu` written as one `Conv2D` named
/// `conv/Conv2Dconv/Relu`): the GE type of the last of its `_datadump_original_op_names`
/// (the last path component), when that is an activation other than the op itself.
fn fused_activation(op: &OpDef) -> Option<&'static str> {
    const ACTS: [&str; 4] = ["Relu6", "Relu", "Sigmoid", "Tanh"];
    let names: Vec<String> = match attr(op, "_datadump_original_op_names") {
        Some(AV::List(l)) => {
            l.s.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        }
        _ => return None,
    };
    if names.len() < 2 {
        return None;
    }
    let last = names.last()?;
    let base = last.rsplit('/').next().unwrap_or(last);
    let base = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
    let base = if base == "Relu" && last.ends_with("Relu6") {
        "Relu6"
    } else {
        base
    };
    ACTS.into_iter().find(|a| *a == base && op.r#type != *a)
}

/// Layouts a plain kiln tensor can be read from.
fn check_plain(d: &TensorDescriptor) -> R<()> {
    match d.layout.as_str() {
        "" | "ND" | "NCHW" | "NHWC" | "HWCN" | "NCDHW" | "NDHWC" => Ok(()),
        l => Err(format!(
            "device layout {l} (an OM's compiled graph) is not supported here"
        )),
    }
}

/// The IR name of output `i` of `op`: its descriptor's name when set, else the op's name
/// (`<op>:<i>` after output 0).
fn value_name(op: &OpDef, i: usize) -> String {
    match op.output_desc.get(i) {
        Some(d) if !d.name.is_empty() => d.name.clone(),
        _ if i == 0 => op.name.clone(),
        _ => format!("{}:{i}", op.name),
    }
}

fn unary_of(t: &str) -> Option<UnaryOp> {
    UNARY.iter().find(|(n, _)| *n == t).map(|(_, u)| *u)
}

fn binary_of(t: &str) -> Option<BinaryOp> {
    BINARY.iter().find(|(n, _)| *n == t).map(|(_, b)| *b)
}

fn compare_of(t: &str) -> Option<(CmpOp, bool)> {
    COMPARE
        .iter()
        .find(|(n, ..)| *n == t)
        .map(|(_, c, not)| (*c, *not))
}
