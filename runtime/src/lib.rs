//! kiln's tiny runtime.
//!
//! * [`KilnModel`] / [`KilnTensorInfo`]: `#[repr(C)]` mirrors of the stable C ABI every
//!   compiled model exports (see `runtime/include/kiln.h`).
//! * [`Model`]: a safe wrapper around a descriptor, either linked in (`&'static`) or loaded
//!   from a shared library ([`Model::load`], feature `dylib`).
//! * [`Workspace`]: an aligned scratch buffer allocated once and reused across runs.
//! * [`ThreadPool`]: optional worker threads for [`Model::run_pool`] (`kiln_pool` in C).
//! * [`npy`]: a small, defensive `.npy` reader/writer.
//! * [`atomic`]: the one atomic file writer (kiln's outputs, `.npy` files).
//! * [`Profile`]: per-node times of profiled runs ([`Model::run_profiled`], ABI v3), as a
//!   sorted table or a Chrome trace.

mod abi;
pub mod atomic;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cuda_artefact;
mod error;
mod model;
pub mod npy;
mod pool;
pub mod profile;
mod workspace;

pub use abi::*;
pub use error::{Error, status_str};
pub use model::{Model, TensorInfo};
pub use pool::{KilnPool, KilnTaskFn, ThreadPool};
pub use profile::{NodeInfo, NodeStat, Profile};
pub use workspace::{Workspace, Zeroed, zeroed_vec};

/// The C header (`kiln.h`) describing the ABI, for tools that emit it next to artefacts.
pub const KILN_H: &str = include_str!("../include/kiln.h");
