//! The fusion-switch JSON (`--fusion-switch FILE`).
//! The body is `kiln_fuzz::fusion_switch` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::fusion_switch(data));
