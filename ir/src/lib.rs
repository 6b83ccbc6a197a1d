//! kiln IR: a typed dataflow graph of ops over statically shaped tensors.
//!
//! Invariant: this crate knows nothing about protobuf, any model file format, Cranelift or LLVM.
//! Everything here is pure data and pure functions; it does no IO.

pub mod cost;
pub mod data;
pub mod dtype;
pub mod graph;
pub mod interp;
pub mod layout;
pub mod limits;
pub mod memplan;
pub mod ops;
pub mod text;
pub mod types;
pub mod verify;

pub use data::ConstData;
pub use dtype::DType;
pub use graph::{Graph, Node, NodeId, Value, ValueDef, ValueId};
pub use ops::Op;
pub use types::{Layout, QuantParams, TensorType};

/// Errors raised inside the IR (verification, shape inference, text parsing, interpretation).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IrError {
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("{0}")]
    Msg(String),
    #[error("line {line}: {msg}")]
    Parse { line: usize, msg: String },
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;

/// Shorthand for `Err(IrError::Msg(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::IrError::Msg(format!($($t)*))) };
}
