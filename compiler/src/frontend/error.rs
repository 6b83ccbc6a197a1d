//! The one error type of every importer.

use std::collections::BTreeMap;

/// An import error. Every message names the model file; node errors also name the node and its
/// op (ONNX op type, MindSpore primitive or GraphEngine op type).
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a valid {what} (protobuf decode failed): {source}")]
    Decode {
        file: String,
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{file}: {msg}")]
    Model { file: String, msg: String },
    #[error("{file}: node '{node}' ({op}): {msg}")]
    Node {
        file: String,
        node: String,
        op: String,
        msg: String,
    },
    /// Every unsupported op of the model with the nodes that use it.
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

impl FrontendError {
    /// A model-level error in `file`.
    pub fn model(file: &str, msg: impl Into<String>) -> Self {
        FrontendError::Model {
            file: file.to_string(),
            msg: msg.into(),
        }
    }

    /// An error at node `node` (op `op`) of `file`.
    pub fn node(file: &str, node: &str, op: &str, msg: impl Into<String>) -> Self {
        FrontendError::Node {
            file: file.to_string(),
            node: node.to_string(),
            op: op.to_string(),
            msg: msg.into(),
        }
    }

    /// `file` could not be read.
    pub fn io(file: &str, source: std::io::Error) -> Self {
        FrontendError::Io {
            file: file.to_string(),
            source,
        }
    }

    /// `file` is not a valid protobuf message `what`.
    pub fn decode(file: &str, what: &'static str, source: prost::DecodeError) -> Self {
        FrontendError::Decode {
            file: file.to_string(),
            what,
            source,
        }
    }
}

/// The name a node is reported by: its own, else `<op>_<index>` (index in the model's node list).
pub fn node_label(name: &str, op: &str, index: usize) -> String {
    if name.is_empty() {
        format!("{op}_{index}")
    } else {
        name.to_string()
    }
}

/// Collects every op a model uses that its importer cannot translate, with the nodes that use
/// it, so that one error lists them all (ops sorted by name, nodes in model order).
#[derive(Debug, Default)]
pub struct Unsupported(BTreeMap<String, Vec<String>>);

impl Unsupported {
    /// Record that node `node` uses `op` (an op type, or an op with the attribute that makes it
    /// unsupported, e.g. `Resize (mode=area)`).
    pub fn add(&mut self, op: impl Into<String>, node: impl Into<String>) {
        self.0.entry(op.into()).or_default().push(node.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ops recorded, with their nodes.
    pub fn ops(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// `Ok` when nothing was recorded, else the [`FrontendError::Unsupported`] listing it all.
    pub fn check(self, file: &str) -> Result<(), FrontendError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let list = self
            .0
            .iter()
            .map(|(op, nodes)| format!("{op} (nodes: {})", nodes.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        Err(FrontendError::Unsupported {
            file: file.to_string(),
            list,
        })
    }
}
