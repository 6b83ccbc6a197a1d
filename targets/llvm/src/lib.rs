//! kiln's LLVM layer, shared by the back ends that generate code through LLVM 19 (inkwell,
//! Debian's `llvm-19-dev`): the CPU back end's wide kernels (`kiln-target-cpu`) and the NVIDIA
//! GPU back end (PTX through NVPTX).
//!
//! - [`Emit`] writes LLVM IR as text (`emit.rs`: fresh SSA names, work-item and counted
//!   loops, plain and masked vector loads and stores, masks, shuffles, transposes,
//!   reductions; `math.rs`: exp, erf, sigmoid, tanh and the fused epilogue steps). The IR
//!   uses opaque pointers (`ptr`).
//! - [`LlvmTarget`] names what it is compiled for (`target.rs`): the host (`native`), an
//!   x86_64/aarch64 CPU by name, or `nvptx64-nvidia-cuda` with an `sm_XX` and `+ptxNN`.
//! - `codegen.rs` runs the `default<O3>` pipeline for the target machine and writes an object
//!   ([`compile_object`]), assembly or PTX ([`compile_assembly`]), or compiles for this process
//!   with MCJIT ([`LlvmJit`]).
//!
//! The same IR body serves every target: a GPU kernel wraps it in a thread-index entry, a host
//! build in a loop over the same indices (see the tests).

mod codegen;
mod emit;
mod gpu;
mod math;
mod target;

pub use codegen::{LlvmJit, PIPELINE, compile_assembly, compile_object, optimized_ir};
pub use emit::{Emit, RowBody, Src, all_lanes, declarations, fconst, iota, splat_const_i32};
pub use gpu::{EMU_SYMBOLS, GpuKernel, WARP, gpu_module};
pub use math::{epilogue_supported, step_supported};
pub use target::{
    AARCH64_CPUS, LlvmTarget, NVPTX_MAX_PTX, NVPTX_SMS, NVPTX_TRIPLE, X86_CPUS, host_triple,
};

/// The version of the LLVM this build links (`major.minor.patch`, from LLVM itself).
pub fn version() -> String {
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    format!("{major}.{minor}.{patch}")
}

/// Whether this build's LLVM has the target `name` (as LLVM spells it: `x86-64`, `aarch64`,
/// `nvptx64`).
pub fn has_target(name: &str) -> bool {
    target::init_targets();
    inkwell::targets::Target::from_name(name).is_some()
}

/// What can go wrong in the LLVM layer.
#[derive(Debug, thiserror::Error)]
pub enum LlvmError {
    /// A triple or CPU LLVM cannot (or is not allowed to) target.
    #[error("target '{0}': {1}")]
    Target(String, String),
    /// Invalid IR, or a pass or code generation failure.
    #[error("code generation: {0}")]
    Codegen(String),
}
