//! MindIR import (+ verify + compile at -O0): any bytes as a plain `.mindir` file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = kiln_compiler::mindspore::mindir::MindirOptions::default();
    if let Ok(g) = kiln_compiler::mindspore::mindir::load_bytes(
        bytes::Bytes::copy_from_slice(data),
        None,
        "fuzz.mindir",
        &opts,
    ) {
        kiln_fuzz::compile_small(&g);
    }
});
