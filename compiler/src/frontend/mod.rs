//! The layer every importer is written on (ONNX, MindIR, AIR / OM): one error type naming
//! file, node and op ([`FrontendError`]), the collection of every unsupported op with its
//! nodes ([`Unsupported`]), memory-mapped files and tensor decoding with checked sizes
//! ([`data`]), and the [`GraphBuilder`] that names values, applies `--input-shape` /
//! `--freeze`, binds each model value once and folds constant nodes while emitting IR.
//!
//! An importer mirrors its format (its protobuf types, attribute encodings, op names) and
//! translates ops to IR through this layer; the IR verifier then checks the result.

mod builder;
pub mod data;
mod error;
pub mod tf;

pub use builder::{Dim, FOLD_LIMIT, GraphBuilder, InputFixes, ir_msg};
pub use data::{MAX_RANK, MAX_TENSOR_BYTES};
pub use error::{FrontendError, Unsupported, node_label};

/// A possibly negative axis normalized against `rank` (a scalar, rank 0, has axis 0).
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    Ok(a as usize)
}
