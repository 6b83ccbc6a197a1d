//! `.npy` reading (the runtime's reader behind `kiln run --input`, `--freeze` and executables'
//! The body is `kiln_fuzz::npy` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::npy(data));
