//! Cleanup: constant folding (through the reference interpreter), simplification rules
//! (no-op Reshape/Cast, Reshape chains, Transpose pairs), CSE and DCE.

use super::{Ctx, Pass, Rule};
use kiln_ir::interp::{Tensor, eval_op};
use kiln_ir::{ConstData, Graph, NodeId, Op, ValueDef};
use std::collections::HashMap;

/// Results larger than this many elements are not folded (large weights stay as they are),
/// except for ops that only move data ([`Op::moves_data`]).
pub const FOLD_MAX_ELEMS: usize = 1 << 16;

/// Data-moving ops on constants (a weight's transpose, slice, reshape, concatenation, cast)
/// are folded up to this many output bytes, whatever [`FOLD_MAX_ELEMS`] says: such work
/// would otherwise run on every inference.
pub const FOLD_MOVE_MAX_BYTES: usize = 1 << 32;

/// Whether a node with these output types is folded when its inputs are constants.
pub fn foldable(op: &Op, outs: &[&kiln_ir::TensorType]) -> bool {
    if op.moves_data() {
        outs.iter()
            .try_fold(0usize, |a, t| a.checked_add(t.size_bytes()))
            .is_some_and(|b| b <= FOLD_MOVE_MAX_BYTES)
    } else {
        outs.iter().all(|t| t.numel() <= FOLD_MAX_ELEMS)
    }
}

/// Evaluate nodes whose inputs are all constants (outputs up to [`FOLD_MAX_ELEMS`] elements,
/// or any size for data movement, see [`foldable`]); their outputs become constants under the
/// same names. A reshape of a constant shares its bytes.
pub struct ConstFold;

impl Pass for ConstFold {
    fn name(&self) -> &'static str {
        "const_fold"
    }
    fn run(&self, g: &mut Graph) -> usize {
        let mut folded = 0;
        for i in 0..g.nodes.len() {
            let Some(n) = &g.nodes[i] else { continue };
            if n.inputs.is_empty()
                || !n.inputs.iter().all(|&v| g.const_data(v).is_some())
                || !foldable(
                    &n.op,
                    &n.outputs.iter().map(|&o| g.ty(o)).collect::<Vec<_>>(),
                )
            {
                continue;
            }
            if let (Op::Reshape { .. }, [x], [o]) = (&n.op, &n.inputs[..], &n.outputs[..])
                && g.ty(*o).layout.is_plain()
                && g.ty(*x).layout.is_plain()
            {
                let d = g.const_data(*x).cloned();
                let o = *o;
                if let Some(d) = d {
                    g.value_mut(o).def = ValueDef::Const(d);
                    g.remove_node(NodeId(i as u32));
                    folded += 1;
                }
                continue;
            }
            let ins: Option<Vec<Tensor>> = n
                .inputs
                .iter()
                .map(|&v| Tensor::from_const(g.ty(v), g.const_data(v).unwrap()).ok())
                .collect();
            let Some(ins) = ins else { continue };
            let refs: Vec<&Tensor> = ins.iter().collect();
            let Ok(outs) = eval_op(&n.op, &refs) else {
                continue;
            };
            let ok = outs.len() == n.outputs.len()
                && outs.iter().zip(&n.outputs).all(|(t, &o)| {
                    let ty = g.ty(o);
                    t.dtype() == ty.dtype && t.shape == ty.shape && ty.layout.is_plain()
                });
            if !ok {
                continue;
            }
            let outputs = n.outputs.clone();
            for (t, o) in outs.into_iter().zip(outputs) {
                g.value_mut(o).def = ValueDef::Const(ConstData::from_vec(t.to_bytes()));
            }
            g.remove_node(NodeId(i as u32));
            folded += 1;
        }
        folded
    }
}

/// Common subexpression elimination: a node with the same op, attributes and inputs as an
/// earlier one is replaced by it (unless its outputs are graph outputs, whose names must stay).
pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }
    fn run(&self, g: &mut Graph) -> usize {
        let mut seen: HashMap<(String, Vec<kiln_ir::ValueId>), NodeId> = HashMap::new();
        let mut removed = 0;
        for i in 0..g.nodes.len() {
            let Some(n) = &g.nodes[i] else { continue };
            let key = (format!("{:?}", n.op), n.inputs.clone());
            match seen.get(&key) {
                Some(&first) => {
                    if n.outputs.iter().any(|o| g.outputs.contains(o)) {
                        continue;
                    }
                    let pairs: Vec<_> = n
                        .outputs
                        .iter()
                        .copied()
                        .zip(g.node(first).outputs.iter().copied())
                        .collect();
                    for (old, new) in pairs {
                        g.replace_uses(old, new);
                    }
                    g.remove_node(NodeId(i as u32));
                    removed += 1;
                }
                None => {
                    seen.insert(key, NodeId(i as u32));
                }
            }
        }
        removed
    }
}

/// Dead-code elimination: nodes no graph output depends on, then unused values (dead
/// constants, tombstones) are dropped and ids renumbered.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn run(&self, g: &mut Graph) -> usize {
        let n = g.remove_dead_nodes();
        g.compact();
        n
    }
}

/// Replace every use of a node's single output by `by` and remove the node (not for graph
/// outputs: their names are part of the artefact's interface).
fn bypass(g: &mut Graph, n: NodeId, by: kiln_ir::ValueId, ctx: &Ctx) -> bool {
    let out = g.node(n).outputs[0];
    if ctx.is_output[out.index()] {
        return false;
    }
    g.replace_uses(out, by);
    g.remove_node(n);
    true
}

fn reshape_noop(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let Op::Reshape { .. } = node.op else {
        return false;
    };
    let (x, y) = (node.inputs[0], node.outputs[0]);
    g.ty(x).shape == g.ty(y).shape && g.ty(x).layout == g.ty(y).layout && bypass(g, n, x, ctx)
}

fn reshape_chain(g: &mut Graph, n: NodeId, _ctx: &Ctx) -> bool {
    let node = g.node(n);
    let Op::Reshape { .. } = node.op else {
        return false;
    };
    let Some(p) = g.producer(node.inputs[0]) else {
        return false;
    };
    let Op::Reshape { .. } = g.node(p).op else {
        return false;
    };
    let src = g.node(p).inputs[0];
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.inputs[0] = src;
    }
    true
}

fn transpose_pair(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let Op::Transpose { perm: p2 } = &node.op else {
        return false;
    };
    let Some(p) = g.producer(node.inputs[0]) else {
        return false;
    };
    let Op::Transpose { perm: p1 } = &g.node(p).op else {
        return false;
    };
    // y[i] = t[p2[i]] = x[p1[p2[i]]]
    let perm: Vec<usize> = p2.iter().map(|&i| p1[i]).collect();
    let src = g.node(p).inputs[0];
    if perm.iter().enumerate().all(|(i, &d)| i == d) {
        return bypass(g, n, src, ctx);
    }
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.op = Op::Transpose { perm };
        node.inputs[0] = src;
    }
    true
}

fn cast_noop(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let Op::Cast { to } = node.op else {
        return false;
    };
    let x = node.inputs[0];
    g.ty(x).dtype == to && bypass(g, n, x, ctx)
}

/// `Pow(x, c)` with a constant scalar exponent `c` in {2, 3, 0.5, -1, -0.5} as multiplies,
/// square roots and reciprocals (x*x, x*x*x, sqrt(x), 1/x, 1/sqrt(x); the last two steps of
/// x^3 and x^-0.5 as a `chain`, f32 only). `pow` rounds once where these round once or
/// twice, and `pow(-0, 0.5)` is +0 where `sqrt(-0)` is -0.
fn pow_strength_reduce(g: &mut Graph, n: NodeId, _ctx: &Ctx) -> bool {
    use kiln_ir::ops::{BinaryOp, EpilogueStep, UnaryOp};
    let node = g.node(n);
    let Op::Binary(BinaryOp::Pow) = node.op else {
        return false;
    };
    let (x, e, y) = (node.inputs[0], node.inputs[1], node.outputs[0]);
    let (xt, et) = (g.ty(x), g.ty(e));
    if !xt.dtype.is_float() || xt.shape != g.ty(y).shape || et.numel() != 1 {
        return false;
    }
    let Some(d) = g.const_data(e) else {
        return false;
    };
    let Ok(t) = Tensor::from_const(et, d) else {
        return false;
    };
    let Some(c) = t.floats().ok().and_then(|f| f.first().copied()) else {
        return false;
    };
    let f32_only = xt.dtype == kiln_ir::DType::F32;
    let chain = |steps: Vec<EpilogueStep>| Op::Chain { steps };
    let (op, inputs) = match c {
        2.0 => (Op::Binary(BinaryOp::Mul), vec![x, x]),
        0.5 => (Op::Unary(UnaryOp::Sqrt), vec![x]),
        -1.0 => (Op::Unary(UnaryOp::Reciprocal), vec![x]),
        3.0 if f32_only => (
            chain(vec![EpilogueStep::Mul, EpilogueStep::Mul]),
            vec![x, x, x],
        ),
        -0.5 if f32_only => (
            chain(vec![
                EpilogueStep::Unary(UnaryOp::Sqrt),
                EpilogueStep::Unary(UnaryOp::Reciprocal),
            ]),
            vec![x],
        ),
        _ => return false,
    };
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.op = op;
        node.inputs = inputs;
    }
    true
}

pub static RULES: [Rule; 5] = [
    Rule {
        name: "reshape_noop",
        pass: "simplify",
        about: "remove a Reshape to the shape it already has",
        apply: reshape_noop,
    },
    Rule {
        name: "reshape_chain",
        pass: "simplify",
        about: "Reshape(Reshape(x)) -> Reshape(x)",
        apply: reshape_chain,
    },
    Rule {
        name: "transpose_pair",
        pass: "simplify",
        about: "Transpose(Transpose(x)) -> x or one Transpose",
        apply: transpose_pair,
    },
    Rule {
        name: "cast_noop",
        pass: "simplify",
        about: "remove a Cast to the type the value already has",
        apply: cast_noop,
    },
    Rule {
        name: "pow_strength_reduce",
        pass: "simplify",
        about: "Pow with a constant exponent 2, 3, 0.5, -1 or -0.5 -> multiplies, sqrt, reciprocal",
        apply: pow_strength_reduce,
    },
];
