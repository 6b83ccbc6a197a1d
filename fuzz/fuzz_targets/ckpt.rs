//! MindSpore checkpoints: any bytes as a `.ckpt` (protobuf, encrypted with a known key, or the
//! safetensors variant; the reader picks by content).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = kiln_compiler::mindspore::DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap();
    if let Ok(ck) = kiln_compiler::mindspore::ckpt::read_bytes(
        bytes::Bytes::copy_from_slice(data),
        "fuzz.ckpt",
        Some(&key),
    ) {
        let _ = ck.summary();
        for e in &ck.entries {
            let _ = e.to_tensor();
        }
    }
});
