//! MindIR import (+ verify + compile at -O0): any bytes as a plain `.mindir` file.
//! The body is `kiln_fuzz::mindir` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::mindir(data));
