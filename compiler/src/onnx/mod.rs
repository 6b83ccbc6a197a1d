//! ONNX front end: decodes a `ModelProto` and translates it into a [`kiln_ir::Graph`].
//!
//! Opset differences, `auto_pad`, default attributes and shape arithmetic are resolved here, so
//! the IR only ever sees static shapes and explicit attributes. Shape sub-graphs (`Shape`,
//! `Gather`, `Concat`, ... on constants) are folded into constants by a small evaluator
//! ([`consteval`]). Large weights stored as external data are memory-mapped, not copied.

mod consteval;
pub mod export;
mod import;
pub(crate) mod tensor;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    //! Rust types generated from `compiler/proto/onnx.proto`.
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use std::path::Path;

use kiln_ir::Graph;
use prost::Message;

/// Options for loading an ONNX model.
#[derive(Debug, Clone, Default)]
pub struct OnnxOptions {
    /// Full static shapes for graph inputs, by name (`--input-shape NAME=1,3,224,224`). Required
    /// for every input with a symbolic or unknown dimension.
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// Graph inputs replaced by constants at compile time (`--freeze NAME=FILE.npy`): the
    /// input disappears from the compiled model's signature. This is how values the static
    /// compiler must know (axes, target shapes, pads, ...) that a model takes as inputs are fixed.
    pub frozen_inputs: Vec<(String, kiln_ir::TensorType, kiln_ir::ConstData)>,
}

/// Errors from the ONNX front end. Every message names the model file; node errors also name the
/// node and its op type.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a valid ONNX model (protobuf decode failed): {source}")]
    Decode {
        file: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{file}: {msg}")]
    Model { file: String, msg: String },
    #[error("{file}: node '{node}' ({op_type}): {msg}")]
    Node {
        file: String,
        node: String,
        op_type: String,
        msg: String,
    },
    #[error("{file}: unsupported ops: {list}")]
    Unsupported { file: String, list: String },
    #[error(
        "{file}: input '{input}' has dynamic dimension {dim} ({what}); fix it with --input-shape {input}=d0,d1,..."
    )]
    DynamicInput {
        file: String,
        input: String,
        dim: usize,
        what: String,
    },
}

/// Load an ONNX model file. External data files are resolved relative to the model's directory.
pub fn load(path: &Path, opts: &OnnxOptions) -> Result<Graph, OnnxError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        file: file.clone(),
        source,
    })?;
    let base = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    load_bytes(&bytes, base, &file, opts)
}

/// Load an ONNX model from bytes. `base_dir` is where external data files live (`None`: a model
/// with external data is an error). `name` names the model in diagnostics.
pub fn load_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
    name: &str,
    opts: &OnnxOptions,
) -> Result<Graph, OnnxError> {
    let model = proto::ModelProto::decode(bytes).map_err(|source| OnnxError::Decode {
        file: name.to_string(),
        source,
    })?;
    import::import_model(model, base_dir, name, opts)
}

/// Read a serialized `TensorProto` file (the ONNX test-data format `input_0.pb`).
pub fn read_tensor(path: &Path) -> Result<(kiln_ir::TensorType, kiln_ir::ConstData), OnnxError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        file: file.clone(),
        source,
    })?;
    let mut t =
        proto::TensorProto::decode(bytes.as_slice()).map_err(|source| OnnxError::Decode {
            file: file.clone(),
            source,
        })?;
    let mut ext = tensor::ExternalFiles::default();
    tensor::decode_tensor(&mut t, None, &mut ext).map_err(|msg| OnnxError::Model { file, msg })
}
