//! GPU kernels in the shared layer: a kernel is one **body** function, written once with
//! [`Emit`] and identical for every target, and an **entry** per target:
//!
//! - NVPTX: `define void @K(ptr %p0, ..)` marked as a kernel (`!nvvm.annotations`, with its
//!   block size as `maxntidx`), reading `%tid.x` and `%ctaid.{x,y,z}`, its static shared memory
//!   an `addrspace(3)` global passed to the body as a generic pointer (NVPTX infers the address
//!   space back: `ld.shared`), barriers and warp shuffles as NVVM intrinsics.
//! - The host (the emulation of `--device cuda-emulated`): `@K_thread(ptr args, ptr smem, i32
//!   tid, i32 bx, i32 by, i32 bz)` runs one GPU thread; `@K_grid(ptr args, ptr smem, i64 b0,
//!   i64 b1)` runs blocks `b0..b1`, each as a loop over its threads (for kernels that never
//!   synchronize). Barriers and shuffles call the emulator (`kiln_emu_barrier`,
//!   `kiln_emu_shfl_xor`, `kiln_emu_shfl_idx`), which runs a synchronizing kernel's threads as
//!   fibers so that both are exact (see `kiln-target-ptx`'s `emu.rs`).
//!
//! The body is `define internal void @K_body(ptr %p0, .., ptr %smem, i32 %tid, i32 %bx, i32
//! %by, i32 %bz)`: kernel parameters are pointers to global memory; every shape is a constant
//! in the body. The body calls the target's primitives only through the `@kiln.gpu.*` shims
//! ([`Emit::barrier`], [`Emit::shfl_xor`], ..) that [`gpu_module`] defines per target.

use crate::{Emit, LlvmTarget, declarations};

/// Lanes of a warp.
pub const WARP: u32 = 32;

/// One GPU kernel: its body and launch shape.
#[derive(Debug, Clone)]
pub struct GpuKernel {
    /// The entry's name (`@name`; the body is `@name_body`).
    pub name: String,
    /// Attributes of each pointer parameter in the body (`""`, `"readonly"`, `"noalias"` ..).
    pub params: Vec<String>,
    /// Threads of a block (1-D).
    pub threads: u32,
    /// Blocks of the grid.
    pub grid: [u32; 3],
    /// Static shared memory bytes (at most 48 KiB).
    pub smem: usize,
    /// Whether the body uses barriers or warp shuffles (the emulator then runs each thread on
    /// its own fiber).
    pub sync: bool,
    /// The body's definition (IR text), `@<name>_body` with the signature above.
    pub body: String,
}

impl GpuKernel {
    /// The body's `define` line (then `entry:`), for the kernel's generator to continue.
    pub fn body_header(name: &str, params: &[String]) -> String {
        let ps: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if a.is_empty() {
                    format!("ptr %p{i}")
                } else {
                    format!("ptr {a} %p{i}")
                }
            })
            .collect();
        format!(
            "define internal void @{name}_body({}, ptr %smem, i32 %tid, i32 %bx, i32 %by, i32 %bz) #1 {{\nentry:",
            ps.join(", ")
        )
    }
}

/// The NVVM / emulator declarations and the `@kiln.gpu.*` shims for target `t`.
fn shims(t: &LlvmTarget) -> String {
    let mut s = String::new();
    if t.is_nvptx() {
        s += "declare i32 @llvm.nvvm.read.ptx.sreg.tid.x()\n\
              declare i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()\n\
              declare i32 @llvm.nvvm.read.ptx.sreg.ctaid.y()\n\
              declare i32 @llvm.nvvm.read.ptx.sreg.ctaid.z()\n\
              declare void @llvm.nvvm.barrier0()\n\
              declare i32 @llvm.nvvm.shfl.sync.bfly.i32(i32, i32, i32, i32)\n\
              declare i32 @llvm.nvvm.shfl.sync.idx.i32(i32, i32, i32, i32)\n\
              define internal void @kiln.gpu.barrier() #2 {\n  call void @llvm.nvvm.barrier0()\n  ret void\n}\n\
              define internal i32 @kiln.gpu.shfl.xor(i32 %v, i32 %m) #2 {\n  %r = call i32 @llvm.nvvm.shfl.sync.bfly.i32(i32 -1, i32 %v, i32 %m, i32 31)\n  ret i32 %r\n}\n\
              define internal i32 @kiln.gpu.shfl.idx(i32 %v, i32 %l) #2 {\n  %r = call i32 @llvm.nvvm.shfl.sync.idx.i32(i32 -1, i32 %v, i32 %l, i32 31)\n  ret i32 %r\n}\n";
    } else {
        s += "declare void @kiln_emu_barrier()\n\
              declare i32 @kiln_emu_shfl_xor(i32, i32)\n\
              declare i32 @kiln_emu_shfl_idx(i32, i32)\n\
              define internal void @kiln.gpu.barrier() #2 {\n  call void @kiln_emu_barrier()\n  ret void\n}\n\
              define internal i32 @kiln.gpu.shfl.xor(i32 %v, i32 %m) #2 {\n  %r = call i32 @kiln_emu_shfl_xor(i32 %v, i32 %m)\n  ret i32 %r\n}\n\
              define internal i32 @kiln.gpu.shfl.idx(i32 %v, i32 %l) #2 {\n  %r = call i32 @kiln_emu_shfl_idx(i32 %v, i32 %l)\n  ret i32 %r\n}\n";
    }
    s
}

/// The names the host module's shims call, for the JIT's symbol table.
pub const EMU_SYMBOLS: [&str; 3] = ["kiln_emu_barrier", "kiln_emu_shfl_xor", "kiln_emu_shfl_idx"];

fn param_list(n: usize) -> String {
    (0..n)
        .map(|i| format!("ptr %p{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn call_body(k: &GpuKernel, smem: &str, tid: &str, bx: &str, by: &str, bz: &str) -> String {
    let ps: Vec<String> = (0..k.params.len()).map(|i| format!("ptr %p{i}")).collect();
    format!(
        "  call void @{}_body({}, ptr {smem}, i32 {tid}, i32 {bx}, i32 {by}, i32 {bz})\n",
        k.name,
        ps.join(", ")
    )
}

/// The host entries' prologue: the parameters from the `args` array of pointers.
fn load_args(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s += &format!(
            "  %a{i} = getelementptr ptr, ptr %args, i64 {i}\n  %p{i} = load ptr, ptr %a{i}, align 8\n"
        );
    }
    s
}

/// A module with every kernel of `kernels` for target `t`: NVPTX kernels, or the host's
/// `_thread`/`_grid` entries (see the module docs). `extra` is appended (helper functions
/// the bodies call).
pub fn gpu_module(kernels: &[GpuKernel], extra: &str, t: &LlvmTarget) -> String {
    let mut s = String::new();
    s += &declarations(1);
    s += "declare float @llvm.fma.f32(float, float, float)\n\
          declare float @llvm.maxnum.f32(float, float)\n\
          declare float @llvm.minnum.f32(float, float)\n\
          declare float @llvm.fabs.f32(float)\n\
          declare float @llvm.floor.f32(float)\n\
          declare float @llvm.ceil.f32(float)\n\
          declare float @llvm.roundeven.f32(float)\n\
          declare float @llvm.trunc.f32(float)\n";
    s += &shims(t);
    s += extra;
    let mut annotations = Vec::new();
    for k in kernels {
        s += &k.body;
        s += "\n";
        let n = k.params.len();
        if t.is_nvptx() {
            let smem = if k.smem > 0 {
                s += &format!(
                    "@{}_smem = internal addrspace(3) global [{} x i8] undef, align 16\n",
                    k.name, k.smem
                );
                "%smem".to_string()
            } else {
                "null".to_string()
            };
            s += &format!("define void @{}({}) #0 {{\nentry:\n", k.name, param_list(n));
            s += "  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()\n\
                  %bx = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()\n\
                  %by = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.y()\n\
                  %bz = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.z()\n";
            if k.smem > 0 {
                s += &format!(
                    "  %smem = addrspacecast ptr addrspace(3) @{}_smem to ptr\n",
                    k.name
                );
            }
            s += &call_body(k, &smem, "%tid", "%bx", "%by", "%bz");
            s += "  ret void\n}\n";
            let id = annotations.len();
            annotations.push(format!(
                "!{} = !{{ptr @{}, !\"kernel\", i32 1}}\n!{} = !{{ptr @{}, !\"maxntidx\", i32 {}}}\n",
                100000 + 2 * id,
                k.name,
                100001 + 2 * id,
                k.name,
                k.threads
            ));
        } else {
            // one thread
            s += &format!(
                "define void @{}_thread(ptr %args, ptr %smem, i32 %tid, i32 %bx, i32 %by, i32 %bz) #0 {{\nentry:\n",
                k.name
            );
            s += &load_args(n);
            s += &call_body(k, "%smem", "%tid", "%bx", "%by", "%bz");
            s += "  ret void\n}\n";
            // blocks b0..b1, threads in order
            let [gx, gy, _] = k.grid;
            s += &format!(
                "define void @{}_grid(ptr %args, ptr %smem, i64 %b0, i64 %b1) #0 {{\nentry:\n",
                k.name
            );
            s += &load_args(n);
            s += &format!(
                "  %any = icmp ult i64 %b0, %b1\n  br i1 %any, label %blk, label %done\n\
                 blk:\n  %b = phi i64 [ %b0, %entry ], [ %bn, %blk_end ]\n\
                 %b32 = trunc i64 %b to i32\n\
                 %bx = urem i32 %b32, {gx}\n  %byz = udiv i32 %b32, {gx}\n\
                 %by = urem i32 %byz, {gy}\n  %bz = udiv i32 %byz, {gy}\n  br label %thr\n\
                 thr:\n  %t = phi i32 [ 0, %blk ], [ %tn, %thr ]\n"
            );
            s += &call_body(k, "%smem", "%t", "%bx", "%by", "%bz");
            s += &format!(
                "  %tn = add i32 %t, 1\n  %tc = icmp eq i32 %tn, {}\n  br i1 %tc, label %blk_end, label %thr\n\
                 blk_end:\n  %bn = add i64 %b, 1\n  %bc = icmp eq i64 %bn, %b1\n  br i1 %bc, label %done, label %blk\n\
                 done:\n  ret void\n}}\n",
                k.threads
            );
        }
    }
    if !annotations.is_empty() {
        let ids: Vec<String> = (0..annotations.len())
            .flat_map(|i| {
                [
                    format!("!{}", 100000 + 2 * i),
                    format!("!{}", 100001 + 2 * i),
                ]
            })
            .collect();
        s += &format!("!nvvm.annotations = !{{{}}}\n", ids.join(", "));
        for a in annotations {
            s += &a;
        }
    }
    let fa = t.fn_attributes();
    s += &format!("attributes #0 = {{ {fa} }}\n");
    s += &format!("attributes #1 = {{ alwaysinline {fa} }}\n");
    s += &format!("attributes #2 = {{ alwaysinline convergent {fa} }}\n");
    s
}

/// GPU code written with [`Emit`]: scalar values of one thread (`float`, `i32`, `i64`), the
/// `@kiln.gpu.*` synchronization shims and warp reductions.
impl Emit {
    /// `__syncthreads()`: every thread of the block reaches it before any goes on, and shared
    /// memory written before it is visible after it.
    pub fn barrier(&mut self) {
        self.line("  call void @kiln.gpu.barrier()");
    }
    /// The `i32` `v` of lane `lane ^ m` of this warp (`__shfl_xor_sync(~0, v, m)`); every lane
    /// of the warp must call it together.
    pub fn shfl_xor(&mut self, v: &str, m: u32) -> String {
        let r = self.tmp();
        self.line(&format!(
            "  {r} = call i32 @kiln.gpu.shfl.xor(i32 {v}, i32 {m})"
        ));
        r
    }
    /// The `i32` `v` of lane `lane` (an `i32` value) of this warp (`__shfl_sync`).
    pub fn shfl_idx(&mut self, v: &str, lane: &str) -> String {
        let r = self.tmp();
        self.line(&format!(
            "  {r} = call i32 @kiln.gpu.shfl.idx(i32 {v}, i32 {lane})"
        ));
        r
    }
    /// A `float` shuffled like [`Self::shfl_xor`].
    pub fn shfl_xor_f32(&mut self, v: &str, m: u32) -> String {
        let b = self.tmp();
        self.line(&format!("  {b} = bitcast float {v} to i32"));
        let r = self.shfl_xor(&b, m);
        let f = self.tmp();
        self.line(&format!("  {f} = bitcast i32 {r} to float"));
        f
    }
    /// A `float` shuffled like [`Self::shfl_idx`].
    pub fn shfl_idx_f32(&mut self, v: &str, lane: &str) -> String {
        let b = self.tmp();
        self.line(&format!("  {b} = bitcast float {v} to i32"));
        let r = self.shfl_idx(&b, lane);
        let f = self.tmp();
        self.line(&format!("  {f} = bitcast i32 {r} to float"));
        f
    }
    /// `op` (`fadd`, `fmax`: `maxnum`, `fmin`) of `v` over the warp's 32 lanes, in every lane
    /// (butterfly: the same result, bit for bit, in every lane).
    pub fn warp_reduce_f32(&mut self, op: &str, v: &str) -> String {
        let mut x = v.to_string();
        for m in [16, 8, 4, 2, 1] {
            let o = self.shfl_xor_f32(&x, m);
            x = self.sop(op, &x, &o);
        }
        x
    }
    /// A scalar `float` binary operation: an instruction (`fadd`, `fmul`, ..) or `fmax` /
    /// `fmin` (`llvm.maxnum` / `llvm.minnum`).
    pub fn sop(&mut self, op: &str, a: &str, b: &str) -> String {
        let r = self.tmp();
        match op {
            "fmax" => self.line(&format!(
                "  {r} = call float @llvm.maxnum.f32(float {a}, float {b})"
            )),
            "fmin" => self.line(&format!(
                "  {r} = call float @llvm.minnum.f32(float {a}, float {b})"
            )),
            _ => self.line(&format!("  {r} = {op} float {a}, {b}")),
        }
        r
    }
    /// An integer instruction on `ty` (`i32`, `i64`).
    pub fn iop(&mut self, op: &str, ty: &str, a: &str, b: &str) -> String {
        let r = self.tmp();
        self.line(&format!("  {r} = {op} {ty} {a}, {b}"));
        r
    }
    /// A scalar `float` as `<1 x float>`, the vector math's operand ([`Self::epilogue`],
    /// [`Self::exp`] .. on an `Emit::new(1)`).
    pub fn to_v1(&mut self, x: &str) -> String {
        let r = self.tmp();
        self.line(&format!("  {r} = bitcast float {x} to <1 x float>"));
        r
    }
    /// A `<1 x float>` as a scalar `float`.
    pub fn from_v1(&mut self, x: &str) -> String {
        let r = self.tmp();
        self.line(&format!("  {r} = bitcast <1 x float> {x} to float"));
        r
    }
    /// The address of element `idx` (`i64`) of type `ty` after `base`.
    pub fn gep_ty(&mut self, ty: &str, base: &str, idx: &str) -> String {
        let p = self.tmp();
        self.line(&format!(
            "  {p} = getelementptr {ty}, ptr {base}, i64 {idx}"
        ));
        p
    }
    /// The `ty` at `p`.
    pub fn load_ty(&mut self, ty: &str, p: &str, align: usize) -> String {
        let x = self.tmp();
        self.line(&format!("  {x} = load {ty}, ptr {p}, align {align}"));
        x
    }
    /// Store the `ty` `v` at `p`.
    pub fn store_ty(&mut self, ty: &str, v: &str, p: &str, align: usize) {
        self.line(&format!("  store {ty} {v}, ptr {p}, align {align}"));
    }
    /// Branch to a fresh block if `cond` holds, else to `<label>_skip`; returns the label.
    /// Close with [`Self::if_end`].
    pub fn if_begin(&mut self, cond: &str) -> String {
        let l = self.label();
        self.line(&format!("  br i1 {cond}, label %{l}_then, label %{l}_skip"));
        self.line(&format!("{l}_then:"));
        l
    }
    /// Close [`Self::if_begin`]'s block.
    pub fn if_end(&mut self, l: &str) {
        self.line(&format!("  br label %{l}_skip"));
        self.line(&format!("{l}_skip:"));
    }
}
