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

use crate::frontend::{Source, data};

/// Options for loading an ONNX model.
/// The ONNX importer's options: the input fixes every importer takes.
pub type OnnxOptions = crate::frontend::InputFixes;

/// Errors from the ONNX front end: the front-end layer's error type.
pub type OnnxError = crate::frontend::FrontendError;

/// Load an ONNX model file (memory-mapped: weights stay windows into the map). External data
/// files are resolved relative to the model's directory.
pub fn load(path: &Path, opts: &OnnxOptions) -> Result<Graph, OnnxError> {
    let file = path.display().to_string();
    let bytes = data::map_file(path).map_err(|e| OnnxError::io(&file, e))?;
    let model = decode(bytes, &file)?;
    import::import_model(model, Source::new(&file, data::model_dir(path)), opts)
}

fn decode(bytes: impl bytes::Buf, file: &str) -> Result<proto::ModelProto, OnnxError> {
    proto::ModelProto::decode(bytes).map_err(|e| OnnxError::decode(file, "ONNX model", e))
}

/// Load an ONNX model from bytes. `base_dir` is where external data files live (`None`: a model
/// with external data is an error). `name` names the model in diagnostics.
pub fn load_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
    name: &str,
    opts: &OnnxOptions,
) -> Result<Graph, OnnxError> {
    import::import_model(decode(bytes, name)?, Source::new(name, base_dir), opts)
}

/// Read a serialized `TensorProto` file (the ONNX test-data format `input_0.pb`).
pub fn read_tensor(path: &Path) -> Result<(kiln_ir::TensorType, kiln_ir::ConstData), OnnxError> {
    let file = path.display().to_string();
    let bytes = data::map_file(path).map_err(|e| OnnxError::io(&file, e))?;
    let mut t = proto::TensorProto::decode(bytes)
        .map_err(|e| OnnxError::decode(&file, "ONNX tensor", e))?;
    let mut ext = data::ExternalFiles::default();
    tensor::decode_tensor(&mut t, None, &mut ext).map_err(|msg| OnnxError::model(&file, msg))
}

/// The `com.microsoft` contrib ops the importer expands, with what each becomes.
pub fn contrib_expansions() -> &'static [(&'static str, &'static str)] {
    import::contrib::EXPANSIONS
}
