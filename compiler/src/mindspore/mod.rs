//! MindSpore front ends: checkpoints (`.ckpt`, safetensors) and MindIR (`.mindir`).
//!
//! - [`ckpt`] reads checkpoints: concatenated `Checkpoint` messages, every `tensor_type`, legacy
//!   scalar dims `[0]`, split tensors, the `crc_num` trailer, encrypted streams, safetensors.
//! - [`mindir`] translates a `mind_ir.ModelProto` into a [`kiln_ir::Graph`] with MindSpore
//!   primitive semantics (`REF::<Prim>:<uid>` through the primitives table, and the legacy ≤ 1.6
//!   bare op types), stripping the side-effect plumbing (`Load`, `UpdateState`, `Depend`, ...).
//! - [`bind`] replaces a graph's constants by a checkpoint's tensors (`--weights`).
//! - [`crypto`] decrypts MindSpore's AES-GCM / AES-CBC stream format with a user key.
//!
//! Files are memory-mapped and decoded with `bytes::Bytes` fields, so tensors stay windows into
//! the map; nothing read from a file is allocated before its size is checked against the file.

pub mod bind;
pub mod ckpt;
pub mod crypto;
pub mod mindir;
pub mod proto;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use kiln_ir::ConstData;
use kiln_ir::data::ByteOwner;

pub use crypto::DecryptKey;

/// Errors from the MindSpore front ends. Every message names the file; node errors also name the
/// node and its primitive.
#[derive(Debug, thiserror::Error)]
pub enum MsError {
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
    #[error("{file}: unsupported ops: {list}")]
    Unsupported { file: String, list: String },
}

struct MmapOwner(memmap2::Mmap);

impl AsRef<[u8]> for MmapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A `Bytes` window as a `ConstData` owner (no copy).
struct BytesOwner(Bytes);

impl ByteOwner for BytesOwner {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A constant sharing `b`'s storage.
pub(crate) fn bytes_data(b: Bytes) -> ConstData {
    let len = b.len();
    ConstData::from_owner(Arc::new(BytesOwner(b)), 0, len)
        .unwrap_or_else(|| ConstData::from_vec(vec![]))
}

/// Memory-map a file read-only, as `Bytes` (an empty file gives empty bytes).
pub(crate) fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: mapped read-only; like every memory-mapped model loader we assume the file is not
    // truncated or modified while the compiler runs.
    let m = unsafe { memmap2::Mmap::map(&f) }?;
    Ok(Bytes::from_owner(MmapOwner(m)))
}
