//! Static cost figures of a node, shared by reports (`kiln inspect`) and the per-node profile
//! every artefact carries (`kiln_node_info.flops`: GFLOP/s in `--profile`).

use crate::{Graph, Node, Op};

/// Floating-point operations of one node: 2 per multiply-accumulate for Conv/Gemm/MatMul,
/// one per output element and step for an elementwise chain, otherwise one per output element.
pub fn flops(g: &Graph, n: &Node) -> u64 {
    let out = g.ty(n.outputs[0]);
    let numel = out.numel() as u64;
    match &n.op {
        Op::Conv(_) => {
            // each output element: C/groups x kernel taps multiply-accumulates
            let w = g.ty(n.inputs[1]);
            let per_out: u64 = w.shape[1..].iter().product::<usize>() as u64;
            2 * numel * per_out
        }
        Op::Gemm(a) => {
            let x = g.ty(n.inputs[0]);
            let k = if a.trans_a { x.shape[0] } else { x.shape[1] };
            2 * numel * k as u64
        }
        Op::MatMul(_) => {
            let x = g.ty(n.inputs[0]);
            let k = *x.shape.last().unwrap_or(&1);
            2 * numel * k as u64
        }
        Op::Chain { steps } => numel * steps.len().max(1) as u64,
        _ => n.outputs.iter().map(|&o| g.ty(o).numel() as u64).sum(),
    }
}

/// The op of `n` with its fused steps, as reports and profiles show it: `conv+add+relu` for a
/// convolution with a residual and ReLU epilogue, `chain(mul+add)` for an elementwise chain.
pub fn op_label(n: &Node) -> String {
    use crate::ops::epilogue_text;
    let steps = match &n.op {
        Op::Conv(a) => &a.epilogue,
        Op::MatMul(a) => &a.epilogue,
        Op::Gemm(a) => &a.epilogue,
        Op::Chain { steps } => return format!("chain({})", epilogue_text(steps)),
        _ => return n.op.name().to_string(),
    };
    if steps.is_empty() {
        n.op.name().to_string()
    } else {
        format!("{}+{}", n.op.name(), epilogue_text(steps))
    }
}
