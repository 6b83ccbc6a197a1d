//! The verifier: structural and type invariants every pass must preserve.

use crate::{Graph, IrError, Result, ValueDef, ValueId};

/// Check that the graph is well formed: every node input is defined before use, every recorded
/// value type equals what shape inference computes, constants have the right byte size, graph
/// inputs/outputs are valid, and value names are unique. Sub-graphs (the bodies of `if` and
/// `loop`) are verified the same way, each on its own (a body reads only its own inputs and
/// constants: what it uses from outside is passed in as node inputs).
pub fn verify(g: &Graph) -> Result<()> {
    let nv = g.values.len();
    let mut defined = vec![false; nv];
    let mut names = std::collections::HashSet::new();
    for (i, v) in g.values.iter().enumerate() {
        if !names.insert(v.name.as_str()) {
            return Err(IrError::Msg(format!("duplicate value name '{}'", v.name)));
        }
        match &v.def {
            ValueDef::Const(d) => {
                if !v.ty.layout.is_plain() {
                    return Err(IrError::Msg(format!(
                        "constant '{}' has layout {}: constants are stored plain",
                        v.name, v.ty.layout
                    )));
                }
                if d.len() != v.ty.size_bytes() {
                    return Err(IrError::Msg(format!(
                        "constant '{}' has {} bytes, type {} needs {}",
                        v.name,
                        d.len(),
                        v.ty,
                        v.ty.size_bytes()
                    )));
                }
                defined[i] = true;
            }
            ValueDef::Input => {
                if !g.inputs.contains(&ValueId(i as u32)) {
                    return Err(IrError::Msg(format!(
                        "value '{}' is an input but not listed as a graph input",
                        v.name
                    )));
                }
                defined[i] = true;
            }
            ValueDef::Node(..) => {}
        }
    }
    for (id, n) in g.iter_nodes() {
        let err = |msg: String| IrError::Node {
            node: n.name.clone(),
            op: n.op.name().into(),
            msg,
        };
        for &i in &n.inputs {
            if i.index() >= nv {
                return Err(err(format!("input id {} out of range", i.0)));
            }
            if !defined[i.index()] {
                return Err(err(format!(
                    "input '{}' is used before it is defined",
                    g.value(i).name
                )));
            }
        }
        for (k, body) in n.op.bodies().into_iter().enumerate() {
            verify(body).map_err(|e| err(format!("sub-graph {k} ('{}'): {e}", body.name)))?;
        }
        let tys: Vec<_> = n.inputs.iter().map(|v| g.ty(*v)).collect();
        let out = n.op.infer(&tys).map_err(err)?;
        if out.len() != n.outputs.len() {
            return Err(err(format!(
                "{} outputs recorded, op yields {}",
                n.outputs.len(),
                out.len()
            )));
        }
        for (k, (&o, t)) in n.outputs.iter().zip(&out).enumerate() {
            let v = g.value(o);
            if !matches!(v.def, ValueDef::Node(p, j) if p == id && j == k) {
                return Err(err(format!(
                    "output '{}' does not point back at this node",
                    v.name
                )));
            }
            if v.ty.dtype != t.dtype || v.ty.shape != t.shape || v.ty.layout != t.layout {
                return Err(err(format!(
                    "output '{}' recorded as {}, inferred {}",
                    v.name, v.ty, t
                )));
            }
            defined[o.index()] = true;
        }
    }
    for &o in &g.outputs {
        if o.index() >= nv || !defined[o.index()] {
            return Err(IrError::Msg(format!(
                "graph output {} is not defined by a live node, input or constant",
                o.0
            )));
        }
    }
    // the artefact's interface is logical: callers pass and receive plain tensors
    for &v in g.inputs.iter().chain(&g.outputs) {
        let val = g.value(v);
        if !val.ty.layout.is_plain() {
            return Err(IrError::Msg(format!(
                "graph input/output '{}' has layout {}: the interface is plain",
                val.name, val.ty.layout
            )));
        }
    }
    Ok(())
}
