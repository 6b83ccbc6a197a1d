//! [`GraphBuilder`]: what every importer does to build a kiln graph — unique value names,
//! graph inputs with `--input-shape` / `--freeze` applied, the model's value names bound once,
//! constants, and IR nodes folded into constants when all their inputs are small constants.

use std::collections::{HashMap, HashSet};

use kiln_ir::{ConstData, DType, Graph, IrError, Op, TensorType, ValueDef, ValueId};

use super::error::FrontendError;

/// Nodes whose inputs are all constants of at most this many elements (and whose outputs are
/// no larger) are evaluated at import by the reference interpreter.
pub const FOLD_LIMIT: usize = 1 << 16;

/// An IR error as a node-level message (the caller adds file, node and op).
pub fn ir_msg(e: IrError) -> String {
    match e {
        IrError::Node { op, msg, .. } => format!("{op}: {msg}"),
        e => e.to_string(),
    }
}

/// One dimension of a graph input as the model declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic or unknown dimension, with how the model writes it (`'batch'`, `-1`, ...).
    Dynamic(String),
}

impl Dim {
    /// A dimension from the `i64` convention of MindIR and GraphEngine (negative = dynamic).
    pub fn from_i64(d: i64) -> Dim {
        usize::try_from(d).map_or_else(|_| Dim::Dynamic(d.to_string()), Dim::Fixed)
    }
}

/// The user's fixes for graph inputs, the options every importer takes (`pipeline::LoadOptions`,
/// `onnx::OnnxOptions`; the MindIR and AIR options add their format's extras to it).
#[derive(Debug, Clone, Default)]
pub struct InputFixes {
    /// Full static shapes for graph inputs, by name (`--input-shape NAME=1,3,224,224`). Required
    /// for every input with a symbolic, unknown or dynamic (-1) dimension.
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// Graph inputs replaced by constants at compile time (`--freeze NAME=FILE.npy`): the input
    /// disappears from the compiled model's signature. This is how values the static compiler
    /// must know (axes, target shapes, pads, a sample rate, ...) that a model takes as inputs
    /// are fixed.
    pub frozen_inputs: Vec<(String, TensorType, ConstData)>,
}

/// Builds a [`Graph`] for an importer. `V` is what the importer binds model value names to
/// (`ValueId` for most; MindIR binds import-time values such as tuples).
pub struct GraphBuilder<'f, V = ValueId> {
    /// The model file, for errors.
    pub file: &'f str,
    pub g: Graph,
    names: HashSet<String>,
    /// The next suffix to try per base name (so `fresh` stays linear when a file repeats one
    /// name many times).
    next_suffix: HashMap<String, usize>,
    env: HashMap<String, V>,
    /// Inner scopes (sub-graphs being inlined): the bindings to restore when the scope ends and
    /// the names bound inside it, which may shadow the outer ones.
    scopes: Vec<(HashMap<String, V>, HashSet<String>)>,
    fixes: InputFixes,
    /// Graph input names declared so far.
    declared: HashSet<String>,
}

impl<'f, V: Clone> GraphBuilder<'f, V> {
    pub fn new(file: &'f str, graph_name: &str, fixes: InputFixes) -> Self {
        GraphBuilder {
            file,
            g: Graph::new(graph_name),
            names: HashSet::new(),
            next_suffix: HashMap::new(),
            env: HashMap::new(),
            scopes: Vec::new(),
            fixes,
            declared: HashSet::new(),
        }
    }

    /// A model-level error in this file.
    pub fn err(&self, msg: impl Into<String>) -> FrontendError {
        FrontendError::model(self.file, msg)
    }

    /// A unique value name based on `base` (`base`, then `base_1`, `base_2`, ...).
    pub fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "v" } else { base };
        if self.names.insert(base.to_string()) {
            return base.to_string();
        }
        let mut k = self.next_suffix.get(base).copied().unwrap_or(1);
        loop {
            let n = format!("{base}_{k}");
            k += 1;
            if self.names.insert(n.clone()) {
                self.next_suffix.insert(base.to_string(), k);
                return n;
            }
        }
    }

    /// Keep `name` from being given to a generated value (a model value bound later).
    pub fn reserve(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    /// Give back a name reserved with [`reserve`](Self::reserve), so the value it was kept for
    /// gets it.
    pub fn release(&mut self, name: &str) {
        self.names.remove(name);
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.g.ty(v)
    }

    /// Bind the model's value name `name` to `v`. A name is written once per scope: a second
    /// producer (two nodes writing one value, an input or initializer listed twice) is an error.
    pub fn bind(&mut self, name: &str, v: V) -> Result<(), String> {
        let dup = match self.scopes.last_mut() {
            Some((_, inner)) => !inner.insert(name.to_string()),
            None => self.env.contains_key(name),
        };
        if dup {
            return Err(format!(
                "value '{name}' is defined twice (each value must have one producer)"
            ));
        }
        self.env.insert(name.to_string(), v);
        Ok(())
    }

    /// Open a scope (a sub-graph being inlined): it sees the outer bindings, and its own
    /// bindings shadow them until [`pop_scope`](Self::pop_scope).
    pub fn push_scope(&mut self) {
        self.scopes.push((self.env.clone(), HashSet::new()));
    }

    /// Close the innermost scope: its bindings are dropped, the outer ones restored.
    pub fn pop_scope(&mut self) {
        if let Some((saved, _)) = self.scopes.pop() {
            self.env = saved;
        }
    }

    /// What the model's value `name` is bound to.
    pub fn lookup(&self, name: &str) -> Option<&V> {
        self.env.get(name)
    }

    pub fn is_bound(&self, name: &str) -> bool {
        self.env.contains_key(name)
    }

    /// The integer values of constant `v` (an i32 or i64 tensor): shapes, axes, sizes.
    pub fn const_ints(&self, v: ValueId) -> Result<Vec<i64>, String> {
        let d = self.g.const_data(v).ok_or("must be a constant")?;
        let b = d.bytes();
        Ok(match self.ty(v).dtype {
            DType::I32 => b
                .chunks_exact(4)
                .map(|x| i32::from_le_bytes([x[0], x[1], x[2], x[3]]) as i64)
                .collect(),
            DType::I64 => d.to_i64(),
            dt => return Err(format!("must be an int32 or int64 tensor, not {dt}")),
        })
    }

    /// The value of scalar constant `v` (one element of a float or integer type), as f64.
    pub fn const_scalar(&self, v: ValueId) -> Result<f64, String> {
        let d = self.g.const_data(v).ok_or("must be a constant")?;
        let ty = self.ty(v);
        if ty.numel() != 1 {
            return Err(format!("must be a scalar, is {ty}"));
        }
        let b = d.bytes();
        Ok(match ty.dtype {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            DType::F64 => f64::from_le_bytes(b[..8].try_into().map_err(|_| "short")?),
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::I32 | DType::I64 => self.const_ints(v)?[0] as f64,
            dt => return Err(format!("a {dt} scalar is not supported")),
        })
    }

    /// A constant named after `name` (made unique).
    pub fn add_const(
        &mut self,
        name: &str,
        ty: TensorType,
        data: ConstData,
    ) -> Result<ValueId, String> {
        let n = self.fresh(name);
        self.g.add_const(n, ty, data).map_err(ir_msg)
    }

    /// A scalar constant `v` of `dtype`.
    pub fn scalar(&mut self, v: f64, dtype: DType, name: &str) -> Result<ValueId, String> {
        let bytes: Vec<u8> = match dtype {
            DType::F32 => (v as f32).to_le_bytes().to_vec(),
            DType::F64 => v.to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
            DType::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
            DType::I32 => (v as i32).to_le_bytes().to_vec(),
            DType::I64 => (v as i64).to_le_bytes().to_vec(),
            d => return Err(format!("scalar operand of type {d} is not supported")),
        };
        self.add_const(
            name,
            TensorType::new(dtype, vec![]),
            ConstData::from_vec(bytes),
        )
    }

    /// Declare graph input `name` with element type `dtype` and the model's dims (`None`: the
    /// model gives no shape). `--input-shape` fixes dynamic dims (and must agree with fixed
    /// ones); `--freeze` turns the input into a constant. Returns the IR value (an input or a
    /// constant); the caller binds the model's name(s) to it.
    pub fn input(
        &mut self,
        name: &str,
        dtype: DType,
        dims: Option<&[Dim]>,
    ) -> Result<ValueId, FrontendError> {
        if !self.declared.insert(name.to_string()) {
            return Err(self.err(format!("graph input '{name}' is listed twice")));
        }
        let over = self
            .fixes
            .input_shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone());
        let frozen = self
            .fixes
            .frozen_inputs
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(_, t, d)| (t.clone(), d.clone()));
        let over = over.or_else(|| frozen.as_ref().map(|(t, _)| t.shape.clone()));
        let shape: Vec<usize> = match (dims, over) {
            (Some(dims), Some(o)) => {
                if dims.len() != o.len() {
                    return Err(self.err(format!(
                        "--input-shape for '{name}' does not fit the model: it has rank {}, the model {}",
                        o.len(),
                        dims.len()
                    )));
                }
                for (d, (dim, &ov)) in dims.iter().zip(&o).enumerate() {
                    if let Dim::Fixed(v) = dim
                        && *v != ov
                    {
                        return Err(self.err(format!(
                            "--input-shape for '{name}' does not fit the model: it sets dim {d} to {ov}, the model fixes it to {v}"
                        )));
                    }
                }
                o
            }
            (None, Some(o)) => o,
            (None, None) => {
                return Err(FrontendError::DynamicInput {
                    file: self.file.to_string(),
                    input: name.to_string(),
                    dim: 0,
                    what: "the model gives no shape".into(),
                });
            }
            (Some(dims), None) => {
                let mut out = Vec::with_capacity(dims.len());
                for (d, dim) in dims.iter().enumerate() {
                    match dim {
                        Dim::Fixed(v) => out.push(*v),
                        Dim::Dynamic(what) => {
                            return Err(FrontendError::DynamicInput {
                                file: self.file.to_string(),
                                input: name.to_string(),
                                dim: d,
                                what: what.clone(),
                            });
                        }
                    }
                }
                out
            }
        };
        if shape.len() > super::MAX_RANK
            || shape
                .iter()
                .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
                .is_none_or(|b| b > super::MAX_TENSOR_BYTES)
        {
            return Err(self.err(format!("input '{name}' shape {shape:?} is too large")));
        }
        let ty = TensorType::new(dtype, shape);
        let vname = self.fresh(name);
        match frozen {
            Some((fty, data)) => {
                if fty.dtype != ty.dtype || fty.shape != ty.shape {
                    return Err(self.err(format!(
                        "--freeze for '{name}' gives {fty}, the model's input is {ty}"
                    )));
                }
                self.g
                    .add_const(vname, ty, data)
                    .map_err(|e| self.err(format!("--freeze for '{name}': {e}")))
            }
            None => Ok(self.g.add_input(vname, ty)),
        }
    }

    /// Before the inputs are declared: a fix that names none of the model's graph inputs
    /// (`inputs`) is an error.
    pub fn check_fixes<'n>(
        &self,
        inputs: impl IntoIterator<Item = &'n str>,
    ) -> Result<(), FrontendError> {
        let inputs: HashSet<&str> = inputs.into_iter().collect();
        let names = self
            .fixes
            .input_shapes
            .iter()
            .map(|(n, _)| (n, "--input-shape"));
        let frozen = self
            .fixes
            .frozen_inputs
            .iter()
            .map(|(n, ..)| (n, "--freeze"));
        for (n, flag) in names.chain(frozen) {
            if !inputs.contains(n.as_str()) {
                return Err(self.err(format!("{flag} names '{n}', which is not a graph input")));
            }
        }
        Ok(())
    }

    /// Append IR node `node` (`op` on `inputs`, outputs named after `names`). When every input
    /// is a constant of at most [`FOLD_LIMIT`] elements the op is evaluated now by the
    /// reference interpreter and its outputs are constants.
    pub fn node(
        &mut self,
        node: &str,
        op: Op,
        inputs: Vec<ValueId>,
        names: &[String],
    ) -> Result<Vec<ValueId>, String> {
        if let Some(outs) = self.try_fold(&op, &inputs, names)? {
            return Ok(outs);
        }
        let names: Vec<String> = names.iter().map(|n| self.fresh(n)).collect();
        self.g
            .add_node(node.to_string(), op, inputs, names)
            .map_err(ir_msg)
    }

    /// A one-output [`node`](Self::node).
    pub fn node1(
        &mut self,
        node: &str,
        op: Op,
        inputs: Vec<ValueId>,
        name: &str,
    ) -> Result<ValueId, String> {
        let outs = self.node(node, op, inputs, &[name.to_string()])?;
        outs.into_iter()
            .next()
            .ok_or_else(|| format!("{node}: the op has no output"))
    }

    /// `x` reshaped to `shape`: `x` itself when the shape is unchanged, a constant sharing the
    /// bytes when `x` is a constant, else a Reshape node.
    pub fn reshape(
        &mut self,
        node: &str,
        x: ValueId,
        shape: Vec<usize>,
        name: &str,
    ) -> Result<ValueId, String> {
        let ty = self.ty(x).clone();
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(ty.numel()) {
            return Err(format!("cannot reshape {ty} to {shape:?}"));
        }
        if ty.shape == shape {
            return Ok(x);
        }
        if let Some(d) = self.g.const_data(x).cloned() {
            return self.add_const(name, ty.with_shape(shape), d);
        }
        self.node1(node, Op::Reshape { shape }, vec![x], name)
    }

    /// Tile (`x` repeated `reps[d]` times along each dim) as Reshape `[1,d0,1,d1,..]` ->
    /// Expand `[r0,d0,r1,d1,..]` -> Reshape `[r0*d0,..]`.
    pub fn tile(
        &mut self,
        node: &str,
        x: ValueId,
        reps: &[usize],
        name: &str,
    ) -> Result<ValueId, String> {
        let sh = self.ty(x).shape.clone();
        if reps.len() != sh.len() {
            return Err(format!("repeats {reps:?} do not fit shape {sh:?}"));
        }
        let mut inter = Vec::new();
        let mut big = Vec::new();
        let mut out = Vec::new();
        for (&d, &r) in sh.iter().zip(reps) {
            inter.extend([1, d]);
            big.extend([r, d]);
            out.push(
                r.checked_mul(d)
                    .ok_or_else(|| format!("tiling {sh:?} by {reps:?} overflows"))?,
            );
        }
        let t = self.reshape(node, x, inter, &format!("{node}/interleaved"))?;
        let e = self.node1(
            node,
            Op::Expand { shape: big },
            vec![t],
            &format!("{node}/expanded"),
        )?;
        self.reshape(node, e, out, name)
    }

    /// Constant folding through the reference interpreter: an op whose inputs are all small
    /// constants becomes constants (shape arithmetic, masks and index tables built from
    /// constants). `None` when the op must stay a node.
    fn try_fold(
        &mut self,
        op: &Op,
        inputs: &[ValueId],
        names: &[String],
    ) -> Result<Option<Vec<ValueId>>, String> {
        // small constants anything; data movement (a weight's transpose, slice, cast...)
        // whatever its size, as the const_fold pass does
        let moves = op.moves_data();
        if inputs.is_empty()
            || inputs.iter().any(|v| {
                !matches!(self.g.value(*v).def, ValueDef::Const(_))
                    || !moves && self.ty(*v).numel() > FOLD_LIMIT
            })
        {
            return Ok(None);
        }
        let tys: Vec<TensorType> = inputs.iter().map(|v| self.ty(*v).clone()).collect();
        let Ok(out_tys) = op.infer(&tys.iter().collect::<Vec<_>>()) else {
            return Ok(None);
        };
        let small = out_tys.iter().map(|t| t.numel()).sum::<usize>() <= FOLD_LIMIT;
        if !(small || moves && crate::passes::foldable(op, &out_tys.iter().collect::<Vec<_>>()))
            || out_tys.len() != names.len()
        {
            return Ok(None);
        }
        let mut ts = Vec::with_capacity(inputs.len());
        for v in inputs {
            let ValueDef::Const(d) = &self.g.value(*v).def else {
                return Ok(None);
            };
            match kiln_ir::interp::Tensor::from_const(self.ty(*v), d) {
                Ok(t) => ts.push(t),
                Err(_) => return Ok(None),
            }
        }
        let Ok(res) = kiln_ir::interp::eval_op(op, &ts.iter().collect::<Vec<_>>()) else {
            return Ok(None);
        };
        if res.len() != out_tys.len()
            || res
                .iter()
                .zip(&out_tys)
                .any(|(t, ty)| t.dtype() != ty.dtype || t.shape != ty.shape)
        {
            return Ok(None);
        }
        let mut outs = Vec::with_capacity(res.len());
        for ((t, ty), name) in res.into_iter().zip(out_tys).zip(names) {
            outs.push(self.add_const(name, ty, ConstData::from_vec(t.to_bytes()))?);
        }
        Ok(Some(outs))
    }

    /// Make `v` a graph output. With a `name`, a value that has another name (an alias:
    /// Identity, a no-op Cast, an input or constant passed through) or is already an output
    /// gets `name` through a same-shape view, which the memory planner makes free.
    pub fn output(&mut self, v: ValueId, name: Option<&str>) -> Result<(), FrontendError> {
        let v = match name {
            Some(name) if self.g.value(v).name != name || self.g.outputs.contains(&v) => {
                let n = self.fresh(name);
                let shape = self.g.ty(v).shape.clone();
                self.g
                    .add_node(n.clone(), Op::Reshape { shape }, vec![v], vec![n])
                    .map_err(|e| self.err(e.to_string()))?[0]
            }
            _ => v,
        };
        self.g.outputs.push(v);
        Ok(())
    }

    /// The graph, once it has outputs.
    pub fn finish(self) -> Result<Graph, FrontendError> {
        if self.g.outputs.is_empty() {
            return Err(self.err("graph has no outputs"));
        }
        Ok(self.g)
    }
}
