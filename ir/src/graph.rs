//! The dataflow graph: values (typed tensors), nodes (ops) and the graph's inputs/outputs.

use crate::{ConstData, IrError, Op, Result, TensorType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Where a value comes from.
#[derive(Debug, Clone)]
pub enum ValueDef {
    /// A graph input, provided by the caller at run time.
    Input,
    /// A constant (weights, folded values).
    Const(ConstData),
    /// Output `usize` of a node.
    Node(NodeId, usize),
}

#[derive(Debug, Clone)]
pub struct Value {
    /// Name from the source model (unique within the graph).
    pub name: String,
    pub ty: TensorType,
    pub def: ValueDef,
}

#[derive(Debug, Clone)]
pub struct Node {
    /// Name from the source model (or generated), used in diagnostics.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A graph. Nodes are kept in a topological order (every node's inputs are graph inputs,
/// constants or outputs of earlier nodes); the verifier checks this.
/// Removing a node leaves a tombstone (`nodes[i] == None`); `compact` drops them.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Option<Node>>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Turn graph input `name` into a constant holding `data` (same type required).
    pub fn freeze_input(&mut self, name: &str, ty: &TensorType, data: ConstData) -> Result<()> {
        let Some(pos) = self
            .inputs
            .iter()
            .position(|&v| self.values[v.index()].name == name)
        else {
            return Err(IrError::Msg(format!("'{name}' is not a graph input")));
        };
        let v = self.inputs[pos];
        let have = &self.values[v.index()].ty;
        if have.dtype != ty.dtype || have.shape != ty.shape || data.len() != have.size_bytes() {
            return Err(IrError::Msg(format!(
                "input '{name}' is {have}, the frozen value is {ty}"
            )));
        }
        self.values[v.index()].def = ValueDef::Const(data);
        self.inputs.remove(pos);
        Ok(())
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.index()]
    }
    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.index()]
    }
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.index()].ty
    }
    pub fn node(&self, n: NodeId) -> &Node {
        self.nodes[n.index()].as_ref().expect("removed node")
    }

    /// Live nodes in order.
    pub fn iter_nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (NodeId(i as u32), n)))
    }

    pub fn num_live_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }

    fn push_value(&mut self, name: String, ty: TensorType, def: ValueDef) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name, ty, def });
        id
    }

    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let id = self.push_value(name.into(), ty, ValueDef::Input);
        self.inputs.push(id);
        id
    }

    /// Add a constant value. `data` must hold exactly `ty.size_bytes()` bytes.
    pub fn add_const(
        &mut self,
        name: impl Into<String>,
        ty: TensorType,
        data: ConstData,
    ) -> Result<ValueId> {
        let name = name.into();
        if data.len() != ty.size_bytes() {
            return Err(IrError::Msg(format!(
                "constant '{name}' of type {ty} needs {} bytes, got {}",
                ty.size_bytes(),
                data.len()
            )));
        }
        Ok(self.push_value(name, ty, ValueDef::Const(data)))
    }

    /// Append a node; output types come from the op's shape inference.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<ValueId>,
        output_names: Vec<String>,
    ) -> Result<Vec<ValueId>> {
        let name = name.into();
        let in_tys: Vec<&TensorType> = inputs.iter().map(|v| self.ty(*v)).collect();
        let out_tys = op.infer(&in_tys).map_err(|msg| IrError::Node {
            node: name.clone(),
            op: op.name().to_string(),
            msg,
        })?;
        if out_tys.len() != output_names.len() {
            return Err(IrError::Node {
                node: name,
                op: op.name().to_string(),
                msg: format!(
                    "op produces {} outputs, {} named",
                    out_tys.len(),
                    output_names.len()
                ),
            });
        }
        let nid = NodeId(self.nodes.len() as u32);
        let outputs: Vec<ValueId> = out_tys
            .into_iter()
            .zip(output_names)
            .enumerate()
            .map(|(i, (ty, n))| self.push_value(n, ty, ValueDef::Node(nid, i)))
            .collect();
        self.nodes.push(Some(Node {
            name,
            op,
            inputs,
            outputs: outputs.clone(),
        }));
        Ok(outputs)
    }

    /// Constant bytes of `v`, if it is a constant.
    pub fn const_data(&self, v: ValueId) -> Option<&ConstData> {
        match &self.value(v).def {
            ValueDef::Const(d) => Some(d),
            _ => None,
        }
    }

    /// The node producing `v`, if any.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.value(v).def {
            ValueDef::Node(n, _) => Some(n),
            _ => None,
        }
    }

    /// For every value, the list of live nodes that read it.
    pub fn users(&self) -> Vec<Vec<NodeId>> {
        let mut u = vec![Vec::new(); self.values.len()];
        for (id, n) in self.iter_nodes() {
            for &i in &n.inputs {
                if !u[i.index()].contains(&id) {
                    u[i.index()].push(id);
                }
            }
        }
        u
    }

    /// Replace every use of `old` (node inputs and graph outputs) by `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        for n in self.nodes.iter_mut().flatten() {
            for i in n.inputs.iter_mut() {
                if *i == old {
                    *i = new;
                }
            }
        }
        for o in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    pub fn remove_node(&mut self, n: NodeId) {
        self.nodes[n.index()] = None;
    }

    /// Remove nodes whose outputs are never used (transitively), and drop unused constants' data
    /// references from the graph's live set. Values stay (ids are stable); they just become dead.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut live = vec![false; self.values.len()];
        for &o in &self.outputs {
            live[o.index()] = true;
        }
        let mut removed = 0;
        for i in (0..self.nodes.len()).rev() {
            let Some(n) = &self.nodes[i] else { continue };
            if n.outputs.iter().any(|o| live[o.index()]) {
                for &inp in &n.inputs {
                    live[inp.index()] = true;
                }
            } else {
                self.nodes[i] = None;
                removed += 1;
            }
        }
        removed
    }

    /// Values that are constants and read by at least one live node, in id order.
    pub fn live_consts(&self) -> Vec<ValueId> {
        let mut used = vec![false; self.values.len()];
        for (_, n) in self.iter_nodes() {
            for &i in &n.inputs {
                used[i.index()] = true;
            }
        }
        for &o in &self.outputs {
            used[o.index()] = true;
        }
        (0..self.values.len())
            .map(|i| ValueId(i as u32))
            .filter(|v| used[v.index()] && matches!(self.value(*v).def, ValueDef::Const(_)))
            .collect()
    }

    /// Replace the pair `producer` -> `consumer` by one node: the node at `consumer`'s slot
    /// becomes `op` over `inputs`, named like `producer`, and keeps `consumer`'s output values
    /// (so graph output names survive); `producer` is removed. Placing the result at the
    /// consumer's position keeps the topological order for any inputs of either node. The
    /// caller makes sure nothing else reads `producer`'s outputs.
    pub fn fuse_pair(&mut self, producer: NodeId, consumer: NodeId, op: Op, inputs: Vec<ValueId>) {
        let name = self.node(producer).name.clone();
        let outputs = self.node(consumer).outputs.clone();
        self.nodes[producer.index()] = None;
        self.nodes[consumer.index()] = Some(Node {
            name,
            op,
            inputs,
            outputs,
        });
    }

    /// A value name not used yet, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let taken: std::collections::HashSet<&str> =
            self.values.iter().map(|v| v.name.as_str()).collect();
        if !taken.contains(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken.contains(n.as_str()))
            .expect("a free name")
    }

    /// Drop removed nodes and values nothing refers to (dead constants, outputs of removed
    /// nodes), renumbering ids. Graph inputs are always kept; the order of values and nodes is
    /// preserved.
    pub fn compact(&mut self) {
        let nv = self.values.len();
        let mut keep = vec![false; nv];
        for &v in self.inputs.iter().chain(&self.outputs) {
            keep[v.index()] = true;
        }
        for n in self.nodes.iter().flatten() {
            for &v in n.inputs.iter().chain(&n.outputs) {
                keep[v.index()] = true;
            }
        }
        let mut node_map = vec![None; self.nodes.len()];
        let mut k = 0u32;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.is_some() {
                node_map[i] = Some(NodeId(k));
                k += 1;
            }
        }
        let mut val_map = vec![None; nv];
        let mut values = Vec::with_capacity(nv);
        for (i, v) in std::mem::take(&mut self.values).into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let def = match v.def {
                ValueDef::Node(n, j) => match node_map[n.index()] {
                    Some(m) => ValueDef::Node(m, j),
                    // an output of a removed node still listed somewhere: keep as is (the
                    // verifier reports it)
                    None => ValueDef::Node(n, j),
                },
                d => d,
            };
            val_map[i] = Some(ValueId(values.len() as u32));
            values.push(Value { def, ..v });
        }
        self.values = values;
        let m = |v: &mut ValueId| *v = val_map[v.index()].expect("kept value");
        self.inputs.iter_mut().for_each(m);
        self.outputs.iter_mut().for_each(m);
        let mut nodes = Vec::with_capacity(k as usize);
        for mut n in std::mem::take(&mut self.nodes).into_iter().flatten() {
            n.inputs.iter_mut().for_each(m);
            n.outputs.iter_mut().for_each(m);
            nodes.push(Some(n));
        }
        self.nodes = nodes;
    }

    /// Put the live nodes in the order `order` (every live node once, a topological order),
    /// dropping tombstones; values keep their ids.
    pub fn reorder(&mut self, order: &[NodeId]) {
        let mut nodes = Vec::with_capacity(order.len());
        let mut map = vec![None; self.nodes.len()];
        for (k, &n) in order.iter().enumerate() {
            map[n.index()] = Some(NodeId(k as u32));
            nodes.push(self.nodes[n.index()].take());
        }
        for v in &mut self.values {
            if let ValueDef::Node(n, j) = v.def
                && let Some(m) = map.get(n.index()).copied().flatten()
            {
                v.def = ValueDef::Node(m, j);
            }
        }
        self.nodes = nodes;
    }

    /// Find a value by name.
    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| v.name == name)
            .map(|i| ValueId(i as u32))
    }
}
