//! A small kernel builder over Cranelift's `FunctionBuilder`: counted loops, strided addressing,
//! scalar float helpers. Every kernel generator in `kernels.rs` is written with these.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    Block, BlockArg, FuncRef, InstBuilder, MemFlagsData, Type, Value, types,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use std::collections::HashMap;

pub(crate) const I64: Type = types::I64;
pub(crate) const F32: Type = types::F32;
pub(crate) const F32X4: Type = types::F32X4;

pub(crate) struct Kb<'a> {
    pub b: FunctionBuilder<'a>,
    /// Kernel parameters: one pointer per input, then one per output.
    pub params: Vec<Value>,
    /// libm functions imported into this function (`expf`, `logf`, ...).
    pub libm: HashMap<&'static str, FuncRef>,
    /// The LLVM kernel this node's tiles run in, if any (imported into this function).
    pub ukernel: Option<(crate::ukernel::ConvKernel, FuncRef)>,
    /// Its input packing function (`ConvKernel::pack_ir`), if it packs.
    pub pack: Option<FuncRef>,
    /// Its Winograd input and output transforms (`wino.rs`), if it is one.
    pub wino: Option<[FuncRef; 2]>,
    /// The LLVM row kernel this node runs in, if any (`rows.rs`).
    pub rows: Option<(crate::rows::RowKernel, FuncRef)>,
    /// The task trampoline (`kiln_task_fn`) that runs a range of a wide kernel's work items.
    pub task: Option<FuncRef>,
    /// A control-flow node's sub-graph functions (`run_pool`-like: inputs, outputs,
    /// workspace, pool -> status).
    pub bodies: Vec<FuncRef>,
    /// The target's frontend config (pointer type, calling convention) for libcalls.
    pub fcfg: cranelift_codegen::isa::TargetFrontendConfig,
    /// The kernel's failure exits: a `KILN_ERR_*` status and the block that returns it
    /// ([`Kb::fail_unless`]). A kernel returns an i32 status; `run` stops at the first
    /// nonzero one.
    pub fails: Vec<(i32, Block)>,
}

/// Flags of every access generated here: it cannot trap (the addresses are in-bounds by
/// construction), but it is not claimed aligned — vector rows start at any element, and with
/// the flag Cranelift folds loads into SSE instructions that fault on unaligned addresses.
pub(crate) fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl<'a> Kb<'a> {
    pub fn ic(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }
    pub fn fc(&mut self, v: f32) -> Value {
        self.b.ins().f32const(v)
    }

    /// `for i in 0..n { body(i) }`; `i` is an i64 value.
    pub fn for_n(&mut self, n: usize, body: &mut dyn FnMut(&mut Self, Value)) {
        self.for_range(0, n, 1, body)
    }

    /// `for i in (start..end).step_by(step) { body(i) }`.
    pub fn for_range(
        &mut self,
        start: usize,
        end: usize,
        step: usize,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        if start >= end {
            return;
        }
        if end - start <= step {
            let i = self.ic(start as i64);
            body(self, i);
            return;
        }
        let header = self.b.create_block();
        self.b.append_block_param(header, I64);
        let blk = self.b.create_block();
        let exit = self.b.create_block();
        let z = self.ic(start as i64);
        self.b.ins().jump(header, &[BlockArg::Value(z)]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let c = self
            .b
            .ins()
            .icmp_imm_u(IntCC::UnsignedLessThan, i, end as i64);
        self.b.ins().brif(c, blk, &[], exit, &[]);
        self.b.switch_to_block(blk);
        body(self, i);
        let i1 = self.b.ins().iadd_imm_u(i, step as i64);
        self.b.ins().jump(header, &[BlockArg::Value(i1)]);
        self.b.switch_to_block(exit);
    }

    /// Nested loops over `dims` (row-major); `body` gets one index per dim.
    pub fn for_nd(&mut self, dims: &[usize], body: &mut dyn FnMut(&mut Kb<'a>, &[Value])) {
        fn rec<'k>(
            kb: &mut Kb<'k>,
            dims: &[usize],
            idx: &mut Vec<Value>,
            body: &mut dyn FnMut(&mut Kb<'k>, &[Value]),
        ) {
            if idx.len() == dims.len() {
                body(kb, idx);
                return;
            }
            let d = dims[idx.len()];
            kb.for_n(d, &mut |kb, i| {
                idx.push(i);
                rec(kb, dims, idx, body);
                idx.pop();
            });
        }
        rec(self, dims, &mut Vec::new(), body)
    }

    /// `sum(idx[d] * strides[d])` (element units), skipping zero strides.
    pub fn offset(&mut self, idx: &[Value], strides: &[usize]) -> Value {
        let mut acc: Option<Value> = None;
        for (&i, &s) in idx.iter().zip(strides) {
            if s == 0 {
                continue;
            }
            let t = if s == 1 {
                i
            } else {
                self.b.ins().imul_imm_u(i, s as i64)
            };
            acc = Some(match acc {
                None => t,
                Some(a) => self.b.ins().iadd(a, t),
            });
        }
        match acc {
            Some(a) => a,
            None => self.ic(0),
        }
    }

    /// `base + elem * esize`.
    pub fn addr(&mut self, base: Value, elem: Value, esize: usize) -> Value {
        let off = if esize == 1 {
            elem
        } else {
            self.b.ins().imul_imm_u(elem, esize as i64)
        };
        self.b.ins().iadd(base, off)
    }

    pub fn load_f32(&mut self, base: Value, elem: Value) -> Value {
        let a = self.addr(base, elem, 4);
        self.b.ins().load(F32, flags(), a, 0)
    }
    pub fn store_f32(&mut self, v: Value, base: Value, elem: Value) {
        let a = self.addr(base, elem, 4);
        self.b.ins().store(flags(), v, a, 0);
    }
    pub fn load_f32x4(&mut self, base: Value, elem: Value) -> Value {
        let a = self.addr(base, elem, 4);
        self.b.ins().load(F32X4, flags(), a, 0)
    }
    pub fn store_f32x4(&mut self, v: Value, base: Value, elem: Value) {
        let a = self.addr(base, elem, 4);
        self.b.ins().store(flags(), v, a, 0);
    }

    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// Continue only when `ok` is true; otherwise return `status` (a `KILN_ERR_*` code) from
    /// the kernel, which makes `run` return it.
    pub fn fail_unless(&mut self, ok: Value, status: i32) {
        let fail = match self.fails.iter().find(|(c, _)| *c == status) {
            Some(&(_, b)) => b,
            None => {
                let b = self.b.create_block();
                self.fails.push((status, b));
                b
            }
        };
        let next = self.b.create_block();
        self.b.ins().brif(ok, next, &[], fail, &[]);
        self.b.switch_to_block(next);
    }

    /// Run `body` only when `0 <= v < bound` (v is a signed i64).
    pub fn if_in_range(&mut self, v: Value, bound: usize, body: &mut dyn FnMut(&mut Self)) {
        // unsigned compare folds the `v >= 0` test
        let c = self
            .b
            .ins()
            .icmp_imm_u(IntCC::UnsignedLessThan, v, bound as i64);
        self.if_then(c, body);
    }

    pub fn if_then(&mut self, c: Value, body: &mut dyn FnMut(&mut Self)) {
        let then = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(c, then, &[], done, &[]);
        self.b.switch_to_block(then);
        body(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// max(a, b) for floats, written as the select pattern x64 lowers to one `maxss`.
    pub fn fmax(&mut self, a: Value, b: Value) -> Value {
        let c = self.b.ins().fcmp(FloatCC::GreaterThan, a, b);
        self.b.ins().select(c, a, b)
    }
    pub fn fmin(&mut self, a: Value, b: Value) -> Value {
        let c = self.b.ins().fcmp(FloatCC::LessThan, a, b);
        self.b.ins().select(c, a, b)
    }
}

/// Integer Cranelift type for `esize` bytes (data movement ops are dtype-agnostic).
pub(crate) fn int_ty(esize: usize) -> Type {
    match esize {
        1 => types::I8,
        2 => types::I16,
        4 => types::I32,
        _ => types::I64,
    }
}
