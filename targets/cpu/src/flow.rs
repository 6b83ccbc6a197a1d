//! Run-time control flow: the kernels of `if` and `loop` nodes.
//!
//! Every sub-graph is compiled like a whole graph into a function with `run_pool`'s signature
//! (`inputs, outputs, workspace, pool -> status`) over its own memory plan. The node's kernel
//! calls it with pointer arrays built on its stack: an `if` passes the captured operands and
//! its own outputs to the branch its condition picks (a real branch: the other one never
//! runs), both branches running in the node's scratch; a `loop` keeps the carried values in
//! its outputs, the iteration number and conditions and the body's next-state buffers in its
//! scratch (`memplan::FlowScratch`), and points each scan output at its row of the stacked
//! output, so the body computes the row in place.

use crate::kb::{I64, Kb, flags};
use crate::kernels::{KResult, copy_bytes};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{BlockArg, InstBuilder, StackSlotData, StackSlotKind, Value, types};
use kiln_ir::memplan::FlowScratch;
use kiln_ir::{Node, Op, TensorType};

/// Status of a loop that needed more iterations than its compile-time bound (`KILN_ERR_LOOP`).
pub const ERR_LOOP: i64 = kiln_runtime::KILN_ERR_LOOP as i64;

/// An array of `ptrs` on the kernel's stack (8 bytes each); returns its address.
fn ptr_array(kb: &mut Kb, ptrs: &[Value]) -> (Value, cranelift_codegen::ir::StackSlot) {
    let slot = kb.b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        (8 * ptrs.len().max(1)) as u32,
        3,
    ));
    for (i, &p) in ptrs.iter().enumerate() {
        kb.b.ins().stack_store(I64, p, slot, (8 * i) as i32);
    }
    (kb.b.ins().stack_addr(I64, slot, 0), slot)
}

/// Call sub-graph function `f`; a nonzero status is returned from the kernel at once.
fn call_body(kb: &mut Kb, f: usize, args: [Value; 4]) {
    let fref = kb.bodies[f];
    let call = kb.b.ins().call(fref, &args);
    let st = kb.b.inst_results(call)[0];
    let fail = kb.b.create_block();
    let next = kb.b.create_block();
    kb.b.ins().brif(st, fail, &[], next, &[]);
    kb.b.switch_to_block(fail);
    kb.b.ins().return_(&[st]);
    kb.b.switch_to_block(next);
}

/// The kernel of control-flow node `node` (params: inputs, outputs, scratch if
/// `has_scratch`, pool).
pub(crate) fn emit(
    kb: &mut Kb,
    node: &Node,
    _ins: &[&TensorType],
    outs: &[&TensorType],
    fs: &FlowScratch,
    has_scratch: bool,
) -> KResult {
    let (ni, no) = (node.inputs.len(), node.outputs.len());
    let pool = *kb.params.last().expect("a pool parameter");
    let scratch = if has_scratch {
        kb.params[ni + no]
    } else {
        kb.ic(0)
    };
    match &node.op {
        Op::If(_) => {
            let c = kb.b.ins().uload8(types::I32, flags(), kb.params[0], 0);
            let caps = kb.params[1..ni].to_vec();
            let outp = kb.params[ni..ni + no].to_vec();
            let (ia, _) = ptr_array(kb, &caps);
            let (oa, _) = ptr_array(kb, &outp);
            let ws = kb.b.ins().iadd_imm_u(scratch, fs.body as i64);
            let (then_b, else_b, done) = (
                kb.b.create_block(),
                kb.b.create_block(),
                kb.b.create_block(),
            );
            kb.b.ins().brif(c, then_b, &[], else_b, &[]);
            for (blk, f) in [(then_b, 0), (else_b, 1)] {
                kb.b.switch_to_block(blk);
                call_body(kb, f, [ia, oa, ws, pool]);
                kb.b.ins().jump(done, &[]);
            }
            kb.b.switch_to_block(done);
            Ok(())
        }
        Op::Loop(l) => {
            let n = l.n_carried;
            let caps = kb.params[2 + n..ni].to_vec();
            let finals = kb.params[ni..ni + n].to_vec();
            let scans = kb.params[ni + n..ni + no].to_vec();
            // the carried values live in the node's outputs from the start
            for k in 0..n {
                let src = kb.params[2 + k];
                copy_bytes(kb, src, finals[k], outs[k].size_bytes());
            }
            let m = kb.b.ins().load(I64, flags(), kb.params[0], 0);
            let c0 = kb.b.ins().uload8(types::I32, flags(), kb.params[1], 0);
            let at = |kb: &mut Kb, off: usize| kb.b.ins().iadd_imm_u(scratch, off as i64);
            let (iter_p, cin_p, cout_p) =
                (at(kb, fs.iter), at(kb, fs.cond_in), at(kb, fs.cond_out));
            let next: Vec<Value> = fs.carried.iter().map(|&o| at(kb, o)).collect();
            let ws = at(kb, fs.body);
            let mut body_ins = vec![iter_p, cin_p];
            body_ins.extend(&finals);
            body_ins.extend(&caps);
            let (ia, _) = ptr_array(kb, &body_ins);
            let mut body_outs = vec![cout_p];
            body_outs.extend(&next);
            body_outs.extend(&scans);
            let (oa, oslot) = ptr_array(kb, &body_outs);
            let rows: Vec<usize> = outs[n..]
                .iter()
                .map(|t| t.size_bytes() / l.max_trip.max(1))
                .collect();

            let header = kb.b.create_block();
            kb.b.append_block_param(header, I64);
            kb.b.append_block_param(header, types::I32);
            let (body, check, exit) = (
                kb.b.create_block(),
                kb.b.create_block(),
                kb.b.create_block(),
            );
            kb.b.append_block_param(exit, I64);
            let zero = kb.ic(0);
            kb.b.ins()
                .jump(header, &[BlockArg::Value(zero), BlockArg::Value(c0)]);

            kb.b.switch_to_block(header);
            let (i, c) = (kb.b.block_params(header)[0], kb.b.block_params(header)[1]);
            let more = kb.b.ins().icmp(IntCC::SignedLessThan, i, m);
            let cz = kb.b.ins().icmp_imm_u(IntCC::NotEqual, c, 0);
            let go = kb.b.ins().band(more, cz);
            kb.b.ins().brif(go, check, &[], exit, &[BlockArg::Value(i)]);

            // past the bound: the stacked outputs have no row for this iteration
            kb.b.switch_to_block(check);
            let over =
                kb.b.ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, i, l.max_trip as i64);
            let fail = kb.b.create_block();
            kb.b.ins().brif(over, fail, &[], body, &[]);
            kb.b.switch_to_block(fail);
            let st = kb.b.ins().iconst(types::I32, ERR_LOOP);
            kb.b.ins().return_(&[st]);

            kb.b.switch_to_block(body);
            kb.b.ins().store(flags(), i, iter_p, 0);
            let cb = kb.b.ins().ireduce(types::I8, c);
            kb.b.ins().store(flags(), cb, cin_p, 0);
            for (s, (&base, &row)) in scans.iter().zip(&rows).enumerate() {
                let off = kb.b.ins().imul_imm_u(i, row as i64);
                let p = kb.b.ins().iadd(base, off);
                kb.b.ins()
                    .stack_store(I64, p, oslot, (8 * (1 + n + s)) as i32);
            }
            call_body(kb, 0, [ia, oa, ws, pool]);
            for k in 0..n {
                copy_bytes(kb, next[k], finals[k], outs[k].size_bytes());
            }
            let c2 = kb.b.ins().uload8(types::I32, flags(), cout_p, 0);
            let i2 = kb.b.ins().iadd_imm_s(i, 1);
            kb.b.ins()
                .jump(header, &[BlockArg::Value(i2), BlockArg::Value(c2)]);

            // rows of iterations that never ran are zero
            kb.b.switch_to_block(exit);
            let done = kb.b.block_params(exit)[0];
            for (&base, &row) in scans.iter().zip(&rows) {
                if row == 0 {
                    continue;
                }
                let from = kb.b.ins().imul_imm_u(done, row as i64);
                let p = kb.b.ins().iadd(base, from);
                let total = kb.ic((row * l.max_trip) as i64);
                let len = kb.b.ins().isub(total, from);
                let z = kb.b.ins().iconst(types::I8, 0);
                let cfg = kb.fcfg;
                kb.b.call_memset(cfg, p, z, len);
            }
            Ok(())
        }
        _ => Err(format!("{} is not control flow", node.op.name())),
    }
}
