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

pub use crypto::DecryptKey;

/// Errors from the MindSpore front ends: the front-end layer's error type.
pub type MsError = crate::frontend::FrontendError;
