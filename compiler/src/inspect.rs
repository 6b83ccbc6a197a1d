//! `kiln inspect MODEL`: a per-op table of the optimized graph (op, output shape, FLOPs, fused
//! epilogue, buffer from the CPU back end's memory plan) and totals: planned vs naive workspace
//! (with and without kernel scratch), the layouts the `layout` pass chose and the unfused
//! epilogue candidates.

use kiln_ir::memplan::Storage;
use kiln_ir::ops::{BinaryOp, EpilogueStep, epilogue_text};
use kiln_ir::{Graph, Node, Op};
use std::fmt::Write;

pub use kiln_ir::cost::flops;

/// Counts of what the optimizer produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub nodes: usize,
    pub convs: usize,
    pub gemms: usize,
    /// Conv nodes with a non-empty epilogue.
    pub fused_epilogues: usize,
    pub matmuls: usize,
    /// MatMul nodes with a non-empty epilogue.
    pub matmul_epilogues: usize,
    pub batchnorms: usize,
    pub flops: u64,
    /// Planned workspace of the CPU back end (intermediate tensors and kernel scratch).
    pub workspace: usize,
    /// Every intermediate tensor and every kernel scratch buffer allocated separately.
    pub naive: usize,
    /// The kernel scratch part of `naive`.
    pub naive_scratch: usize,
    /// Planned workspace for the intermediate tensors alone (no kernel scratch).
    pub workspace_tensors: usize,
    /// Conv/ConvTranspose/Gemm/MatMul nodes whose single reader is an elementwise op that is
    /// not fused into it.
    pub unfused: Vec<Unfused>,
    /// Conv nodes writing a channel-blocked layout.
    pub blocked_convs: usize,
    /// Node outputs stored channel-blocked.
    pub blocked_values: usize,
    /// `relayout` nodes (joins between blocked and plain).
    pub relayouts: usize,
}

/// A product (Conv, ConvTranspose, Gemm, MatMul) whose output's only reader is an elementwise
/// op that a kernel epilogue could apply but that is still a separate node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfused {
    pub producer: String,
    pub producer_op: &'static str,
    pub consumer: String,
    pub consumer_op: &'static str,
    /// Why no rule fused it: the producer has no epilogue (only Conv and MatMul have one), the epilogue has
    /// no step for this op, or a step exists (a rule was switched off, or the Conv already
    /// has a residual).
    pub why: &'static str,
}

/// The unfused epilogue candidates of `g`: a product whose output is not a graph output and is
/// read by exactly one node, an elementwise op (Unary, Clip, Act, or a Binary in which the
/// product's output is not broadcast) of the same dtype.
pub fn unfused_epilogues(g: &Graph) -> Vec<Unfused> {
    let users = g.users();
    let mut v = Vec::new();
    for (_, n) in g.iter_nodes() {
        if !matches!(
            n.op,
            Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm(_) | Op::MatMul(_)
        ) {
            continue;
        }
        let y = n.outputs[0];
        let readers = &users[y.index()];
        if g.outputs.contains(&y) || readers.len() != 1 {
            continue;
        }
        let c = g.node(readers[0]);
        if c.inputs.iter().filter(|&&i| i == y).count() != 1 {
            continue;
        }
        let out = g.ty(c.outputs[0]);
        let elementwise = match &c.op {
            Op::Unary(_) | Op::Clip { .. } | Op::Act { .. } => true,
            Op::Binary(_) => g.ty(y).shape == out.shape,
            _ => false,
        };
        if elementwise && out.dtype == g.ty(y).dtype {
            let other = c.inputs.iter().find(|&&i| i != y);
            let scalar = other.is_some_and(|&r| g.ty(r).numel() == 1 && g.const_data(r).is_some());
            let step = match (&n.op, &c.op) {
                // a Conv's residual is shaped like its output; a MatMul's operand broadcasts
                (Op::Conv(_), Op::Binary(BinaryOp::Add)) => {
                    other.is_some_and(|&r| g.ty(r).shape == out.shape)
                }
                // what fuse_matmul_add / _affine take: matrices, a free operand slot
                (Op::MatMul(a), Op::Binary(BinaryOp::Add | BinaryOp::Mul)) => {
                    let matrices = n.inputs[..2].iter().all(|&i| g.ty(i).rank() >= 2);
                    let slot = c.op == Op::Binary(BinaryOp::Add)
                        && a.operand_count() < kiln_ir::ops::MATMUL_EPILOGUE_OPERANDS;
                    matrices && (scalar || slot)
                }
                (_, op) => EpilogueStep::from_activation(op).is_some(),
            };
            let why = match (&n.op, step) {
                (Op::Conv(_) | Op::MatMul(_) | Op::Gemm(_), true) => "epilogue step exists",
                (Op::Conv(_) | Op::MatMul(_) | Op::Gemm(_), false) => {
                    "no epilogue step for this op"
                }
                _ => "no epilogue on this op",
            };
            v.push(Unfused {
                producer: n.name.clone(),
                producer_op: n.op.name(),
                consumer: c.name.clone(),
                consumer_op: c.op.name(),
                why,
            });
        }
    }
    v
}

pub fn summary(g: &Graph) -> Summary {
    let plan = kiln_target_cpu::plan(g);
    let mut s = Summary {
        workspace: plan.workspace_size,
        naive: plan.naive_size,
        naive_scratch: plan.naive_scratch,
        workspace_tensors: kiln_ir::memplan::plan(g).workspace_size,
        unfused: unfused_epilogues(g),
        ..Default::default()
    };
    for (_, n) in g.iter_nodes() {
        s.nodes += 1;
        s.flops += flops(g, n);
        match &n.op {
            Op::Conv(a) => {
                s.convs += 1;
                s.fused_epilogues += !a.epilogue.is_empty() as usize;
            }
            Op::MatMul(a) => {
                s.matmuls += 1;
                s.matmul_epilogues += !a.epilogue.is_empty() as usize;
            }
            Op::Gemm(_) => s.gemms += 1,
            Op::BatchNorm { .. } => s.batchnorms += 1,
            Op::Relayout { .. } => s.relayouts += 1,
            _ => {}
        }
        if let Op::Conv(a) = &n.op {
            s.blocked_convs += !a.layout.is_plain() as usize;
        }
        s.blocked_values += n
            .outputs
            .iter()
            .filter(|&&o| !g.ty(o).layout.is_plain())
            .count();
    }
    s
}

fn shape(g: &Graph, n: &Node) -> String {
    let t = g.ty(n.outputs[0]);
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let layout = if t.layout.is_plain() {
        String::new()
    } else {
        format!("@{}", t.layout)
    };
    format!("{}[{}]{layout}", t.dtype, dims.join(","))
}

/// One row of the per-op table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Position in schedule order.
    pub index: usize,
    pub op: &'static str,
    /// Output 0 as `f32[1,64,56,56]`, with `@nchw8c` for a channel-blocked layout.
    pub output: String,
    pub flops: u64,
    /// Fused epilogue or chain steps (`add+relu`), or `in place` for a concat computed in place.
    pub fused: String,
    /// Where output 0 lives: `ws+OFFSET`, `outJ`, `inJ`, `const`.
    pub buffer: String,
    pub node: String,
}

/// The per-op rows of an (optimized) graph, in schedule order.
pub fn rows(g: &Graph) -> Vec<Row> {
    let plan = kiln_target_cpu::plan(g);
    g.iter_nodes()
        .enumerate()
        .map(|(i, (nid, n))| {
            let fused = match &n.op {
                Op::Conv(a) if !a.epilogue.is_empty() => epilogue_text(&a.epilogue),
                Op::MatMul(a) if !a.epilogue.is_empty() => epilogue_text(&a.epilogue),
                Op::Gemm(a) if !a.epilogue.is_empty() => epilogue_text(&a.epilogue),
                Op::Chain { steps } => epilogue_text(steps),
                // its inputs were computed into their place in its output
                Op::Concat { .. } if plan.concat_in_place.contains(&nid) => "in place".into(),
                _ => String::new(),
            };
            let buffer = match plan.storage[n.outputs[0].index()] {
                Some(Storage::Workspace(off)) => format!("ws+{off}"),
                Some(Storage::Output(j)) => format!("out{j}"),
                Some(Storage::Input(j)) => format!("in{j}"),
                Some(Storage::Const(_)) => "const".into(),
                None => "-".into(),
            };
            Row {
                index: i,
                op: n.op.name(),
                output: shape(g, n),
                flops: flops(g, n),
                fused,
                buffer,
                node: n.name.clone(),
            }
        })
        .collect()
}

/// The per-op table and totals for an (optimized) graph.
pub fn table(g: &Graph) -> String {
    let plan = kiln_target_cpu::plan(g);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4}  {:<22} {:<27} {:>14}  {:<26} {:>12}  node",
        "#", "op", "output", "FLOPs", "fused", "buffer"
    );
    for r in rows(g) {
        let _ = writeln!(
            s,
            "{:>4}  {:<22} {:<27} {:>14}  {:<26} {:>12}  {}",
            r.index, r.op, r.output, r.flops, r.fused, r.buffer, r.node
        );
    }
    let sm = summary(g);
    let weights: usize = g.live_consts().iter().map(|&v| g.ty(v).size_bytes()).sum();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "nodes {}  conv {} (fused epilogues {})  matmul {} (fused epilogues {})  gemm {}  batch_norm {}",
        sm.nodes,
        sm.convs,
        sm.fused_epilogues,
        sm.matmuls,
        sm.matmul_epilogues,
        sm.gemms,
        sm.batchnorms
    );
    let _ = writeln!(s, "total FLOPs {:.3} G", sm.flops as f64 / 1e9);
    let _ = writeln!(s, "weights {} bytes", weights);
    let pct = |a: usize, b: usize| {
        if b > 0 {
            100.0 * a as f64 / b as f64
        } else {
            0.0
        }
    };
    let tensors = sm.naive - sm.naive_scratch;
    let _ = writeln!(
        s,
        "planned workspace {} bytes vs naive sum {} bytes ({:.1} %); naive = tensors {} + kernel scratch {}",
        sm.workspace,
        sm.naive,
        pct(sm.workspace, sm.naive),
        tensors,
        sm.naive_scratch
    );
    let _ = writeln!(
        s,
        "tensors alone (no kernel scratch): planned {} bytes vs naive sum {} bytes ({:.1} %)",
        sm.workspace_tensors,
        tensors,
        pct(sm.workspace_tensors, tensors)
    );
    let concats = g
        .iter_nodes()
        .filter(|(_, n)| matches!(n.op, Op::Concat { .. }))
        .count();
    let _ = writeln!(
        s,
        "concats computed in place: {} of {concats}",
        plan.concat_in_place.len()
    );
    let _ = writeln!(
        s,
        "layouts: {} of {} convs write channel-blocked outputs, {} blocked values, {} relayouts",
        sm.blocked_convs, sm.convs, sm.blocked_values, sm.relayouts
    );
    let _ = writeln!(s, "unfused epilogue candidates: {}", sm.unfused.len());
    for u in &sm.unfused {
        let _ = writeln!(
            s,
            "  {} ({}) -> {} ({}): {}",
            u.producer, u.producer_op, u.consumer, u.consumer_op, u.why
        );
    }
    s
}
