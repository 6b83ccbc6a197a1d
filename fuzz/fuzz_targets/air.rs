//! Ascend AIR: any bytes as a `.air` file (decode, summary, import, verify, compile at -O0).
//! The body is `kiln_fuzz::air` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::air(data));
