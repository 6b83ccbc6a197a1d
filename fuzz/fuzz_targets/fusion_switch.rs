//! The fusion-switch JSON (`--fusion-switch FILE`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln_compiler::passes::parse_fusion_switch(text);
    }
});
