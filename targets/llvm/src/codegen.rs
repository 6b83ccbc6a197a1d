//! From IR text to machine code: parse and verify, the `default<O3>` pipeline of LLVM's new
//! pass manager for the target machine, then a relocatable object, assembly text (PTX for
//! NVPTX) or, for the host, code compiled by MCJIT into this process.

use inkwell::OptimizationLevel;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{FileType, TargetMachine};

use crate::{LlvmError, LlvmTarget};

/// The pass pipeline every module runs (new pass manager syntax).
pub const PIPELINE: &str = "default<O3>";

fn parse<'c>(ctx: &'c Context, ir: &str) -> Result<Module<'c>, LlvmError> {
    let buf = MemoryBuffer::create_from_memory_range_copy(ir.as_bytes(), "kiln_kernels");
    ctx.create_module_from_ir(buf)
        .map_err(|e| LlvmError::Codegen(format!("LLVM IR: {}", e.to_string())))
}

fn optimize(module: &Module, tm: &TargetMachine) -> Result<(), LlvmError> {
    optimize_with(module, tm, PIPELINE)
}

fn optimize_with(module: &Module, tm: &TargetMachine, pipeline: &str) -> Result<(), LlvmError> {
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module
        .verify()
        .map_err(|e| LlvmError::Codegen(format!("LLVM IR: {}", e.to_string())))?;
    module
        .run_passes(pipeline, tm, PassBuilderOptions::create())
        .map_err(|e| LlvmError::Codegen(format!("LLVM passes: {}", e.to_string())))
}

fn emit(ir: &str, t: &LlvmTarget, kind: FileType) -> Result<Vec<u8>, LlvmError> {
    let ctx = Context::create();
    let module = parse(&ctx, ir)?;
    let tm = t.machine()?;
    optimize(&module, &tm)?;
    let buf = tm
        .write_to_memory_buffer(&module, kind)
        .map_err(|e| LlvmError::Codegen(format!("LLVM codegen: {}", e.to_string())))?;
    Ok(buf.as_slice().to_vec())
}

/// Optimize `ir` and compile it to a relocatable object for `t` (any x86_64/aarch64 triple).
pub fn compile_object(ir: &str, t: &LlvmTarget) -> Result<Vec<u8>, LlvmError> {
    if t.is_nvptx() {
        return Err(LlvmError::Target(
            t.triple.clone(),
            "NVPTX has no object files: compile to assembly (PTX)".into(),
        ));
    }
    emit(ir, t, FileType::Object)
}

/// Optimize `ir` and compile it to assembly text for `t`: PTX for NVPTX, or the CPU's
/// assembly (to read what the kernels became).
pub fn compile_assembly(ir: &str, t: &LlvmTarget) -> Result<String, LlvmError> {
    let bytes = emit(ir, t, FileType::Assembly)?;
    String::from_utf8(bytes).map_err(|e| LlvmError::Codegen(format!("LLVM assembly: {e}")))
}

/// `ir` after the optimization pipeline for `t`, as text.
pub fn optimized_ir(ir: &str, t: &LlvmTarget) -> Result<String, LlvmError> {
    let ctx = Context::create();
    let module = parse(&ctx, ir)?;
    optimize(&module, &t.machine()?)?;
    Ok(module.print_to_string().to_string())
}

/// Functions compiled into this process by MCJIT. Dropping it frees their code.
pub struct LlvmJit {
    // field order matters: the engine (which owns the module) goes before its context
    engine: ExecutionEngine<'static>,
    _ctx: Box<Context>,
}

impl LlvmJit {
    /// Optimize `ir` for `t` (a host target: [`LlvmTarget::is_host`]) and compile it into
    /// executable memory. MCJIT picks its own CPU: the one the code is for comes from the
    /// function attributes ([`LlvmTarget::fn_attributes`]).
    pub fn new(ir: &str, t: &LlvmTarget) -> Result<LlvmJit, LlvmError> {
        Self::with_symbols(ir, t, &[])
    }

    /// [`Self::new`], with the functions the module declares but does not define bound to
    /// addresses in this process (`(name, address)`; names the module does not declare are
    /// ignored): the GPU emulator's callbacks.
    pub fn with_symbols(
        ir: &str,
        t: &LlvmTarget,
        symbols: &[(&str, usize)],
    ) -> Result<LlvmJit, LlvmError> {
        Self::with_pipeline(ir, t, symbols, PIPELINE)
    }

    /// [`Self::with_symbols`] with another pass pipeline than [`PIPELINE`] (`default<O1>`:
    /// code that runs once, where compile time dominates).
    pub fn with_pipeline(
        ir: &str,
        t: &LlvmTarget,
        symbols: &[(&str, usize)],
        pipeline: &str,
    ) -> Result<LlvmJit, LlvmError> {
        if !t.is_host() {
            return Err(LlvmError::Target(
                t.triple.clone(),
                "the in-memory JIT compiles for the host only".into(),
            ));
        }
        let ctx = Box::new(Context::create());
        // SAFETY: the context is boxed (its address never changes) and outlives the engine,
        // which is dropped first (declaration order), so the 'static borrow never dangles.
        let ctx_ref: &'static Context = unsafe { &*(ctx.as_ref() as *const Context) };
        let module = parse(ctx_ref, ir)?;
        let tm = t.machine()?;
        optimize_with(&module, &tm, pipeline)?;
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::Aggressive)
            .map_err(|e| LlvmError::Codegen(format!("LLVM JIT: {}", e.to_string())))?;
        for &(name, addr) in symbols {
            if let Some(f) = module.get_function(name) {
                engine.add_global_mapping(&f, addr);
            }
        }
        Ok(LlvmJit { engine, _ctx: ctx })
    }

    /// The address of function `name`.
    pub fn address(&self, name: &str) -> Result<*const u8, LlvmError> {
        self.engine
            .get_function_address(name)
            .map(|a| a as *const u8)
            .map_err(|e| LlvmError::Codegen(format!("LLVM JIT: {name}: {e}")))
    }
}
