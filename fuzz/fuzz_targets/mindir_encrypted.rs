//! Encrypted MindIR. The first byte picks what the rest is: even, an encrypted file as it is
//! The body is `kiln_fuzz::mindir_encrypted` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::mindir_encrypted(data));
