//! The verifier: structural and type invariants every pass must preserve.

use crate::ops::BinaryOp;
use crate::{DType, Graph, IrError, Op, Result, TensorType, ValueDef, ValueId};

/// Check that the graph is well formed: every node input is defined before use, every recorded
/// value type equals what shape inference computes, every type is within [`crate::limits`],
/// constant operands are valid where the op defines no result for some values (indices in
/// range, integer divisors nonzero: [`check_constant_operands`]),
/// constants have the right byte size, graph inputs/outputs are valid, and value names are
/// unique. Sub-graphs (the bodies of `if` and `loop`) are verified the same way, each on its
/// own (a body reads only its own inputs and constants: what it uses from outside is passed in
/// as node inputs).
pub fn verify(g: &Graph) -> Result<()> {
    let nv = g.values.len();
    let mut defined = vec![false; nv];
    let mut names = std::collections::HashSet::new();
    for (i, v) in g.values.iter().enumerate() {
        if !names.insert(v.name.as_str()) {
            return Err(IrError::Msg(format!("duplicate value name '{}'", v.name)));
        }
        if !matches!(v.def, ValueDef::Node(..)) {
            // node outputs are checked by `Op::infer` below
            crate::limits::check_type(&v.ty)
                .map_err(|e| IrError::Msg(format!("value '{}': {e}", v.name)))?;
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
        let consts: Vec<Option<&[u8]>> = n
            .inputs
            .iter()
            .map(|&v| g.const_data(v).map(|d| d.bytes()))
            .collect();
        check_constant_operands(&n.op, &tys, &consts).map_err(err)?;
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

/// Values of a constant index tensor (i32 or i64, little-endian).
fn index_values(t: &TensorType, bytes: &[u8]) -> impl Iterator<Item = i64> {
    let w = t.dtype.size().max(1);
    bytes.chunks_exact(w).map(move |c| match c.len() {
        4 => i32::from_le_bytes(c.try_into().unwrap()) as i64,
        _ => i64::from_le_bytes(c.try_into().unwrap()),
    })
}

fn in_range(i: i64, len: usize) -> bool {
    let len = len as i64;
    (-len..len).contains(&i)
}

/// Errors an op would raise on its constant operands whatever the other inputs are: an index
/// out of range (Gather, GatherElements, GatherND, ScatterElements, ScatterND; ONNX calls
/// them an error, the CPU kernels return `KILN_ERR_INDEX` for indices known only at run time)
/// and an integer division by zero (Div, Mod) or, with both operands constant, a quotient
/// that does not fit (`MIN / -1`). `consts[i]` holds input `i`'s bytes when it is a constant.
pub fn check_constant_operands(
    op: &Op,
    ins: &[&TensorType],
    consts: &[Option<&[u8]>],
) -> std::result::Result<(), String> {
    let bad_index =
        |i: i64, len: usize| format!("constant index {i} is out of range for a dimension of {len}");
    match op {
        Op::Gather { axis } | Op::GatherElements { axis } | Op::ScatterElements { axis, .. } => {
            if let Some(b) = consts[1] {
                let len = ins[0].shape[*axis];
                if let Some(i) = index_values(ins[1], b).find(|&i| !in_range(i, len)) {
                    return Err(bad_index(i, len));
                }
            }
        }
        Op::GatherND { .. } | Op::ScatterND { .. } => {
            let b = match op {
                Op::GatherND { batch_dims } => *batch_dims,
                _ => 0,
            };
            if let Some(bytes) = consts[1] {
                let k = ins[1].shape.last().copied().unwrap_or(0);
                for (n, i) in index_values(ins[1], bytes).enumerate() {
                    let len = ins[0].shape[b + n % k];
                    if !in_range(i, len) {
                        return Err(bad_index(i, len));
                    }
                }
            }
        }
        Op::Binary(BinaryOp::Div | BinaryOp::Mod | BinaryOp::Fmod)
            if !ins[0].dtype.is_float() && ins[0].dtype != DType::Bool =>
        {
            if let Some(b) = consts[1] {
                let w = ins[1].dtype.size();
                if b.chunks_exact(w).any(|c| c.iter().all(|&x| x == 0)) {
                    return Err("integer division by zero (a constant divisor holds 0)".into());
                }
                // both constant: the interpreter finds a quotient that does not fit
                if let Some(a) = consts[0]
                    && ins[0].numel().max(ins[1].numel()) <= 1 << 16
                {
                    let ta = crate::interp::Tensor::from_bytes(ins[0], a);
                    let tb = crate::interp::Tensor::from_bytes(ins[1], b);
                    if let (Ok(ta), Ok(tb)) = (ta, tb) {
                        crate::interp::eval_op(op, &[&ta, &tb])?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}
