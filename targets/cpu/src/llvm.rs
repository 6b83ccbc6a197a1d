//! The second code generator: LLVM (through inkwell) compiles the compute kernels whose inner
//! loops need the target's full vector width (Cranelift's x86-64 back end stops at 128 bits).
//! Kernels are written as LLVM IR text by `ukernel.rs`, optimized with the `default<O3>`
//! pipeline and compiled either to a relocatable object for any supported triple (linked beside
//! the Cranelift object) or, for in-memory models, by MCJIT into this process.
//!
//! The CPU and its features are chosen with [`LlvmTarget`] (`--target-cpu`), never taken from
//! the build machine unless asked (`native`, the default for host builds).

use inkwell::OptimizationLevel;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};

use crate::CpuError;

/// What LLVM generates kernels for: a triple, an LLVM CPU name and feature string, and the vector
/// shape the kernels are blocked for.
#[derive(Debug, Clone, PartialEq)]
pub struct LlvmTarget {
    pub triple: String,
    pub cpu: String,
    pub features: String,
    /// f32 lanes of one vector register (16 AVX-512, 8 AVX2, 4 SSE/NEON).
    pub lanes: usize,
    /// Architectural vector registers (32 AVX-512/NEON, 16 otherwise).
    pub regs: usize,
}

fn init_targets() {
    let cfg = InitializationConfig::default();
    Target::initialize_x86(&cfg);
    Target::initialize_aarch64(&cfg);
}

impl LlvmTarget {
    /// The target for `triple` (`None` = host) and `cpu` (`None` = `native` on the host, the
    /// architecture's baseline otherwise). Known names: `native`, `x86-64`, `x86-64-v2`,
    /// `x86-64-v3`, `x86-64-v4`, `generic`; any other LLVM CPU name is passed through with the
    /// features LLVM derives from it.
    pub fn new(triple: Option<&str>, cpu: Option<&str>) -> Result<LlvmTarget, CpuError> {
        init_targets();
        let host = TargetMachine::get_default_triple()
            .as_str()
            .to_string_lossy()
            .into_owned();
        let triple_s = triple.map(normalize_triple).unwrap_or_else(|| host.clone());
        let arch = triple_s.split('-').next().unwrap_or("").to_string();
        let is_host = triple.is_none() || arch == host.split('-').next().unwrap_or("");
        let cpu = cpu.unwrap_or(if triple.is_none() { "native" } else { "" });
        let (cpu_name, features) = match (arch.as_str(), cpu) {
            (_, "native") if is_host => (
                TargetMachine::get_host_cpu_name().to_string(),
                TargetMachine::get_host_cpu_features().to_string(),
            ),
            (_, "native") => {
                return Err(CpuError::Target(
                    triple_s,
                    "--target-cpu native needs the host architecture".into(),
                ));
            }
            ("x86_64", "") => ("x86-64".to_string(), String::new()),
            ("aarch64", "") => ("generic".to_string(), "+neon".to_string()),
            (_, c) => (c.to_string(), String::new()),
        };
        let (lanes, regs) = match arch.as_str() {
            "x86_64" => {
                let f = if features.is_empty() {
                    x86_level_features(&cpu_name)
                } else {
                    features.clone()
                };
                if f.contains("+avx512f") {
                    (16, 32)
                } else if f.contains("+avx2") && f.contains("+fma") {
                    (8, 16)
                } else {
                    (4, 16)
                }
            }
            "aarch64" => (4, 32),
            _ => {
                return Err(CpuError::Target(
                    triple_s,
                    "LLVM kernels support x86_64 and aarch64".into(),
                ));
            }
        };
        let t = LlvmTarget {
            triple: triple_s,
            cpu: cpu_name,
            features,
            lanes,
            regs,
        };
        t.machine()?; // validate the triple and CPU now
        Ok(t)
    }

    pub(crate) fn machine(&self) -> Result<TargetMachine, CpuError> {
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple)
            .map_err(|e| CpuError::Target(self.triple.clone(), e.to_string()))?;
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                OptimizationLevel::Aggressive,
                RelocMode::PIC,
                CodeModel::Default,
            )
            .ok_or_else(|| {
                CpuError::Target(
                    self.triple.clone(),
                    format!("LLVM cannot target CPU '{}'", self.cpu),
                )
            })
    }

    /// Function attributes every kernel carries, so MCJIT (which ignores the target machine's
    /// CPU) generates the same code as the object path.
    pub(crate) fn fn_attributes(&self) -> String {
        let mut a = format!("nounwind \"target-cpu\"=\"{}\"", self.cpu);
        if !self.features.is_empty() {
            a += &format!(" \"target-features\"=\"{}\"", self.features);
        }
        let bits = self.lanes * 32;
        a += &format!(" \"min-legal-vector-width\"=\"{bits}\" \"prefer-vector-width\"=\"{bits}\"");
        a
    }
}

/// The features of the x86-64 micro-architecture levels (for the vector width choice; LLVM
/// itself derives them from the CPU name).
fn x86_level_features(cpu: &str) -> String {
    match cpu {
        "x86-64-v4" => "+avx512f,+avx2,+fma".into(),
        "x86-64-v3" | "haswell" | "skylake" | "znver1" | "znver2" | "znver3" => "+avx2,+fma".into(),
        "skylake-avx512" | "cascadelake" | "icelake-server" | "sapphirerapids" | "znver4" => {
            "+avx512f,+avx2,+fma".into()
        }
        _ => String::new(),
    }
}

/// LLVM wants `x86_64-unknown-linux-gnu`-style triples; target-lexicon spellings are the same
/// for the targets we support.
fn normalize_triple(t: &str) -> String {
    t.to_string()
}

fn parse<'c>(ctx: &'c Context, ir: &str) -> Result<inkwell::module::Module<'c>, CpuError> {
    let buf = MemoryBuffer::create_from_memory_range_copy(ir.as_bytes(), "kiln_kernels");
    ctx.create_module_from_ir(buf)
        .map_err(|e| CpuError::Codegen(format!("LLVM IR: {}", e.to_string())))
}

fn optimize(module: &inkwell::module::Module, tm: &TargetMachine) -> Result<(), CpuError> {
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module
        .verify()
        .map_err(|e| CpuError::Codegen(format!("LLVM IR: {}", e.to_string())))?;
    module
        .run_passes("default<O3>", tm, PassBuilderOptions::create())
        .map_err(|e| CpuError::Codegen(format!("LLVM passes: {}", e.to_string())))
}

/// Compile kernel IR to a relocatable object for `t`.
pub fn compile_object(ir: &str, t: &LlvmTarget) -> Result<Vec<u8>, CpuError> {
    let ctx = Context::create();
    let module = parse(&ctx, ir)?;
    let tm = t.machine()?;
    optimize(&module, &tm)?;
    let buf = tm
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| CpuError::Codegen(format!("LLVM codegen: {}", e.to_string())))?;
    Ok(buf.as_slice().to_vec())
}

/// Kernels compiled into this process by MCJIT. Dropping it frees their code.
pub struct LlvmJit {
    // field order matters: the engine (which owns the module) goes before its context
    engine: ExecutionEngine<'static>,
    _ctx: Box<Context>,
}

impl LlvmJit {
    /// Compile `ir` for the host (`t` must be a host target).
    pub fn new(ir: &str, t: &LlvmTarget) -> Result<LlvmJit, CpuError> {
        let ctx = Box::new(Context::create());
        // SAFETY: the context is boxed (its address never changes) and outlives the engine,
        // which is dropped first (declaration order), so the 'static borrow never dangles.
        let ctx_ref: &'static Context = unsafe { &*(ctx.as_ref() as *const Context) };
        let module = parse(ctx_ref, ir)?;
        let tm = t.machine()?;
        optimize(&module, &tm)?;
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::Aggressive)
            .map_err(|e| CpuError::Codegen(format!("LLVM JIT: {}", e.to_string())))?;
        Ok(LlvmJit { engine, _ctx: ctx })
    }

    pub fn address(&self, name: &str) -> Result<*const u8, CpuError> {
        self.engine
            .get_function_address(name)
            .map(|a| a as *const u8)
            .map_err(|e| CpuError::Codegen(format!("LLVM JIT: {name}: {e}")))
    }
}
