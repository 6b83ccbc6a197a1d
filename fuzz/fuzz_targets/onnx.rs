//! ONNX import (+ verify + compile at -O0): any bytes as a `.onnx` file.
//! The body is `kiln_fuzz::onnx` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::onnx(data));
