//! MindSpore checkpoints: any bytes as a `.ckpt` (protobuf, encrypted with a known key, or the
//! The body is `kiln_fuzz::ckpt` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::ckpt(data));
