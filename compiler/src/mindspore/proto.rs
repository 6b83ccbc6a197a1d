//! Rust types generated from `compiler/proto/ms_checkpoint.proto` and `compiler/proto/mind_ir.proto`.
//! `bytes` fields are `bytes::Bytes`: decoding from a memory-mapped file does not copy them.

#[allow(clippy::all, missing_docs)]
pub mod ckpt {
    include!(concat!(env!("OUT_DIR"), "/ms_checkpoint.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod mind_ir {
    include!(concat!(env!("OUT_DIR"), "/mind_ir.rs"));
}
