//! ONNX import (+ verify + compile at -O0): any bytes as a `.onnx` file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = kiln_compiler::onnx::OnnxOptions::default();
    if let Ok(g) = kiln_compiler::onnx::load_bytes(data, None, "fuzz.onnx", &opts) {
        kiln_fuzz::compile_small(&g);
    }
});
