//! Encrypted MindIR. The first byte picks what the rest is: even, an encrypted file as it is
//! (the block framing, lengths, IVs and tags); odd, a plaintext model that the target encrypts
//! with the known key (AES-GCM or AES-CBC, blocks of 1..=64 bytes), so that decryption and
//! then import see it.
#![no_main]
use libfuzzer_sys::fuzz_target;

use kiln_compiler::mindspore::{DecryptKey, crypto, mindir};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap();
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let gcm = mode & 2 == 0;
        let block = 1 + (mode as usize >> 2);
        match crypto::encrypt(rest, &key, gcm, [7u8; 16], block) {
            Ok(e) => e,
            Err(_) => return,
        }
    };
    let opts = mindir::MindirOptions {
        key: Some(key),
        ..Default::default()
    };
    if let Ok(g) = mindir::load_bytes(bytes::Bytes::from(file), None, "fuzz.mindir", &opts) {
        kiln_fuzz::compile_small(&g);
    }
});
