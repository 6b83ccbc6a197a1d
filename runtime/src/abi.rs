//! `#[repr(C)]` mirrors of the structs and constants in `kiln.h`.

use std::ffi::c_char;

/// Version of the descriptor layout; bumped whenever fields are appended (v3: the per-node
/// profile) or anything changes.
pub const KILN_ABI_VERSION: u32 = 3;
/// The oldest descriptor layout the runtime still reads (v2: no profile fields).
pub const KILN_ABI_VERSION_MIN: u32 = 2;

/// Success.
pub const KILN_OK: i32 = 0;
/// A null inputs/outputs/workspace array or element.
pub const KILN_ERR_NULL: i32 = 1;
/// The workspace is not aligned to `workspace_align`.
pub const KILN_ERR_ALIGN: i32 = 2;
/// Wrong number of inputs or outputs (checked helpers).
pub const KILN_ERR_ARITY: i32 = 3;
/// A buffer has the wrong size (checked helpers).
pub const KILN_ERR_SIZE: i32 = 4;
/// Unsupported `abi_version` (checked helpers).
pub const KILN_ERR_ABI: i32 = 5;
/// An index read at run time is out of range (Gather, GatherElements, GatherND,
/// ScatterElements, ScatterND): the run stopped before any access outside a tensor; the
/// outputs are unspecified.
pub const KILN_ERR_INDEX: i32 = 6;
/// Integer division or remainder by zero, or a signed `MIN / -1` whose quotient does not fit
/// (Div, Mod): the run stopped; the outputs are unspecified.
pub const KILN_ERR_DIVIDE: i32 = 7;
/// A loop needed more iterations than its compile-time bound (its stacked outputs have no row
/// for them).
pub const KILN_ERR_LOOP: i32 = 8;

/// Element type codes (ONNX `TensorProto` numbering), as in `kiln_ir::DType::abi_code`.
pub const KILN_DTYPE_F32: i32 = 1;
pub const KILN_DTYPE_U8: i32 = 2;
pub const KILN_DTYPE_I8: i32 = 3;
pub const KILN_DTYPE_U16: i32 = 4;
pub const KILN_DTYPE_I16: i32 = 5;
pub const KILN_DTYPE_I32: i32 = 6;
pub const KILN_DTYPE_I64: i32 = 7;
pub const KILN_DTYPE_BOOL: i32 = 9;
pub const KILN_DTYPE_F16: i32 = 10;
pub const KILN_DTYPE_F64: i32 = 11;
pub const KILN_DTYPE_U32: i32 = 12;
pub const KILN_DTYPE_U64: i32 = 13;
pub const KILN_DTYPE_BF16: i32 = 16;

/// Size in bytes of one element of ABI dtype `code`, `None` for an unknown code.
pub fn dtype_size(code: i32) -> Option<usize> {
    Some(match code {
        KILN_DTYPE_U8 | KILN_DTYPE_I8 | KILN_DTYPE_BOOL => 1,
        KILN_DTYPE_U16 | KILN_DTYPE_I16 | KILN_DTYPE_F16 | KILN_DTYPE_BF16 => 2,
        KILN_DTYPE_F32 | KILN_DTYPE_I32 | KILN_DTYPE_U32 => 4,
        KILN_DTYPE_F64 | KILN_DTYPE_I64 | KILN_DTYPE_U64 => 8,
        _ => return None,
    })
}

/// Short name of ABI dtype `code` (`f32`, `i64`, ...), `None` for an unknown code.
pub fn dtype_name(code: i32) -> Option<&'static str> {
    Some(match code {
        KILN_DTYPE_F32 => "f32",
        KILN_DTYPE_U8 => "u8",
        KILN_DTYPE_I8 => "i8",
        KILN_DTYPE_U16 => "u16",
        KILN_DTYPE_I16 => "i16",
        KILN_DTYPE_I32 => "i32",
        KILN_DTYPE_I64 => "i64",
        KILN_DTYPE_BOOL => "bool",
        KILN_DTYPE_F16 => "f16",
        KILN_DTYPE_F64 => "f64",
        KILN_DTYPE_U32 => "u32",
        KILN_DTYPE_U64 => "u64",
        KILN_DTYPE_BF16 => "bf16",
        _ => return None,
    })
}

/// The model's `run` entry point.
pub type KilnRunFn = unsafe extern "C" fn(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    workspace: *mut u8,
) -> i32;

/// The model's `run_pool` entry point: `run` with a thread pool (null: single-threaded).
pub type KilnRunPoolFn = unsafe extern "C" fn(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    workspace: *mut u8,
    pool: *const crate::pool::KilnPool,
) -> i32;

/// `run_profile` (ABI v3): `run_pool` calling `prof.begin` / `prof.end` around each step.
pub type KilnRunProfileFn = unsafe extern "C" fn(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    workspace: *mut u8,
    pool: *const crate::pool::KilnPool,
    prof: *const KilnProfiler,
) -> i32;

/// `kiln_node_info` (ABI v3): one step of the run schedule.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KilnNodeInfo {
    pub name: *const c_char,
    pub op: *const c_char,
    pub flops: u64,
}

/// `kiln_profiler` (ABI v3): callbacks around each schedule step of `run_profile`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KilnProfiler {
    pub ctx: *mut std::ffi::c_void,
    pub begin: Option<unsafe extern "C" fn(ctx: *mut std::ffi::c_void, node: u32)>,
    pub end: Option<unsafe extern "C" fn(ctx: *mut std::ffi::c_void, node: u32)>,
}

/// `kiln_tensor_info`: one input or output tensor (dense, row-major).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KilnTensorInfo {
    pub name: *const c_char,
    pub dtype: i32,
    pub rank: i32,
    pub dims: *const i64,
    pub nbytes: u64,
}

/// `kiln_model`: the descriptor returned by `<name>_model()` / `kiln_model_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KilnModel {
    pub abi_version: u32,
    pub name: *const c_char,
    pub n_inputs: u32,
    pub inputs: *const KilnTensorInfo,
    pub n_outputs: u32,
    pub outputs: *const KilnTensorInfo,
    pub workspace_size: u64,
    pub workspace_align: u32,
    pub run: Option<KilnRunFn>,
    pub run_pool: Option<KilnRunPoolFn>,
    /// ABI v3 from here on (a v2 descriptor ends before `n_nodes`: never read these fields
    /// of a descriptor whose `abi_version` is below 3).
    pub n_nodes: u32,
    pub nodes: *const KilnNodeInfo,
    pub run_profile: Option<KilnRunProfileFn>,
}

// Descriptors are immutable, 'static data.
unsafe impl Sync for KilnTensorInfo {}
unsafe impl Send for KilnTensorInfo {}
unsafe impl Sync for KilnModel {}
unsafe impl Send for KilnModel {}
unsafe impl Sync for KilnNodeInfo {}
unsafe impl Send for KilnNodeInfo {}

/// Signature of `<name>_model` / `kiln_model_default`.
pub type KilnModelFn = unsafe extern "C" fn() -> *const KilnModel;

#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<KilnTensorInfo>() == 32);
    assert!(offset_of!(KilnTensorInfo, name) == 0);
    assert!(offset_of!(KilnTensorInfo, dtype) == 8);
    assert!(offset_of!(KilnTensorInfo, rank) == 12);
    assert!(offset_of!(KilnTensorInfo, dims) == 16);
    assert!(offset_of!(KilnTensorInfo, nbytes) == 24);
    assert!(size_of::<KilnModel>() == 104);
    assert!(offset_of!(KilnModel, abi_version) == 0);
    assert!(offset_of!(KilnModel, name) == 8);
    assert!(offset_of!(KilnModel, n_inputs) == 16);
    assert!(offset_of!(KilnModel, inputs) == 24);
    assert!(offset_of!(KilnModel, n_outputs) == 32);
    assert!(offset_of!(KilnModel, outputs) == 40);
    assert!(offset_of!(KilnModel, workspace_size) == 48);
    assert!(offset_of!(KilnModel, workspace_align) == 56);
    assert!(offset_of!(KilnModel, run) == 64);
    assert!(offset_of!(KilnModel, run_pool) == 72);
    assert!(offset_of!(KilnModel, n_nodes) == 80);
    assert!(offset_of!(KilnModel, nodes) == 88);
    assert!(offset_of!(KilnModel, run_profile) == 96);
    assert!(size_of::<KilnNodeInfo>() == 24);
    assert!(size_of::<KilnProfiler>() == 24);
};
