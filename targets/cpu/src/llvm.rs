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

/// The version of the LLVM the wide kernels are generated with (`llvm-config --version` at
/// build time).
pub const VERSION: &str = env!("KILN_LLVM_VERSION");

/// Whether this build's LLVM has the target `name` (as LLVM spells it: `x86-64`, `aarch64`).
pub fn has_target(name: &str) -> bool {
    init_targets();
    Target::from_name(name).is_some()
}

fn init_targets() {
    let cfg = InitializationConfig::default();
    Target::initialize_x86(&cfg);
    Target::initialize_aarch64(&cfg);
}

impl LlvmTarget {
    /// The target for `triple` (`None` = host) and `cpu` (`None` = `native` on the host, the
    /// architecture's baseline otherwise): `native` or one of [`X86_CPUS`] / [`AARCH64_CPUS`];
    /// any other name is an error (LLVM would abort on a CPU it does not know).
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
        if !matches!(arch.as_str(), "x86_64" | "aarch64") {
            return Err(CpuError::Target(
                triple_s,
                "LLVM kernels support x86_64 and aarch64".into(),
            ));
        }
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
            (a, c) => {
                // only names LLVM 14 knows: an unknown CPU makes LLVM abort the process
                let known = if a == "x86_64" {
                    X86_CPUS
                } else {
                    AARCH64_CPUS
                };
                if !known.iter().any(|(n, _)| *n == c) {
                    let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                    return Err(CpuError::Target(
                        triple_s,
                        format!(
                            "unknown --target-cpu '{c}' (known: native, {})",
                            names.join(", ")
                        ),
                    ));
                }
                (c.to_string(), String::new())
            }
        };
        let (lanes, regs) = if arch == "aarch64" {
            (4, 32)
        } else {
            // the host's feature string, or the vector features the CPU name implies
            let f = if features.is_empty() {
                X86_CPUS
                    .iter()
                    .find(|(n, _)| *n == cpu_name)
                    .map_or("", |(_, f)| *f)
            } else {
                features.as_str()
            };
            if f.contains("+avx512f") {
                (16, 32)
            } else if f.contains("+avx2") && f.contains("+fma") {
                (8, 16)
            } else {
                (4, 16)
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

const AVX2: &str = "+avx2,+fma";
const AVX512: &str = "+avx512f,+avx2,+fma";

/// The x86-64 CPU names `--target-cpu` accepts (all known to LLVM 14) and the vector features
/// that choose the kernels' width (LLVM itself derives the full feature set from the name).
const X86_CPUS: &[(&str, &str)] = &[
    ("x86-64", ""),
    ("x86-64-v2", ""),
    ("x86-64-v3", AVX2),
    ("x86-64-v4", AVX512),
    ("haswell", AVX2),
    ("broadwell", AVX2),
    ("skylake", AVX2),
    ("alderlake", AVX2),
    ("znver1", AVX2),
    ("znver2", AVX2),
    ("znver3", AVX2),
    ("skylake-avx512", AVX512),
    ("cascadelake", AVX512),
    ("icelake-client", AVX512),
    ("icelake-server", AVX512),
    ("tigerlake", AVX512),
    ("sapphirerapids", AVX512),
];

/// The aarch64 CPU names `--target-cpu` accepts (NEON, 4 lanes, for all of them).
const AARCH64_CPUS: &[(&str, &str)] = &[
    ("generic", ""),
    ("cortex-a53", ""),
    ("cortex-a55", ""),
    ("cortex-a72", ""),
    ("cortex-a76", ""),
    ("neoverse-n1", ""),
    ("neoverse-v1", ""),
    ("apple-a14", ""),
];

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
