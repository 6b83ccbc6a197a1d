//! The safetensors checkpoint variant: the input is the JSON header and the data; the target
//! writes the 8-byte header length itself (the first byte picks where the header ends), so
//! the fuzzer spends its time on the header and the offsets, not on the length prefix.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    // header = rest[..h], data = rest[h..]; cut 255 = everything is header
    let h = if cut == 255 {
        rest.len()
    } else {
        rest.len().saturating_sub(cut as usize)
    };
    let mut f = (h as u64).to_le_bytes().to_vec();
    f.extend_from_slice(rest);
    if let Ok(ck) = kiln_compiler::mindspore::ckpt::read_bytes(
        bytes::Bytes::from(f),
        "fuzz.safetensors",
        None,
    ) {
        let _ = ck.summary();
        for e in &ck.entries {
            let _ = e.to_tensor();
        }
    }
});
