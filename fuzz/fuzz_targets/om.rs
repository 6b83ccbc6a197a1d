//! Ascend OM: any bytes as a `.om` file (container, summary, import with its weights, verify, compile).
//! The body is `kiln_fuzz::om` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::om(data));
