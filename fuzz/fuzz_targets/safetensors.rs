//! The safetensors checkpoint variant: the input is the JSON header and the data; the target
//! The body is `kiln_fuzz::safetensors` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::safetensors(data));
