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

    /// Find a value by name.
    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| v.name == name)
            .map(|i| ValueId(i as u32))
    }
}
