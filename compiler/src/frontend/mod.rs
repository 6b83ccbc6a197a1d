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

use std::path::Path;

/// Where a model being imported came from: its file name (errors name it) and its directory
/// (external data and weight files are resolved against it).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a str,
    pub dir: Option<&'a Path>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, dir: Option<&'a Path>) -> Self {
        Source { file, dir }
    }

    /// A model-level error in this file.
    pub fn err(&self, msg: impl Into<String>) -> FrontendError {
        FrontendError::model(self.file, msg)
    }

    /// `v`, or the model-level error `what` when the model lacks it.
    pub fn need<T>(&self, v: Option<T>, what: &str) -> Result<T, FrontendError> {
        v.ok_or_else(|| self.err(what))
    }
}

/// The reduction an ONNX-named reduce op computes (`ReduceMean`, ..., `ReduceLogSumExp`: the
/// names ONNX, MindSpore and GraphEngine share).
pub fn reduce_kind(op: &str) -> Option<kiln_ir::ops::ReduceKind> {
    use kiln_ir::ops::ReduceKind as K;
    Some(match op {
        "ReduceMean" => K::Mean,
        "ReduceSum" => K::Sum,
        "ReduceMax" => K::Max,
        "ReduceMin" => K::Min,
        "ReduceProd" => K::Prod,
        "ReduceSumSquare" => K::SumSquare,
        "ReduceL1" => K::L1,
        "ReduceL2" => K::L2,
        "ReduceLogSum" => K::LogSum,
        "ReduceLogSumExp" => K::LogSumExp,
        _ => return None,
    })
}

/// A possibly negative axis normalized against `rank` (a scalar, rank 0, has axis 0).
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    Ok(a as usize)
}
