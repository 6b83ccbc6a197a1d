//! The fuzz targets' bodies: one function per target, `fn(&[u8])`, that feeds the bytes to one
//! of kiln's readers and, when the reader accepts them, verifies the graph (as
//! `pipeline::load` does) and, when the verifier accepts it, compiles it (Cranelift kernels, no
//! optimization) — all without a panic — for graphs up to [`MAX_NODES`] nodes (bigger ones only
//! cost time per execution).
//!
//! `fuzz_targets/*.rs` wrap these for libFuzzer (`scripts/fuzz.sh`); `tests/tests/fuzz_smoke.rs`
//! includes this file and runs every target over the committed corpus (`fuzz/regress/`) and
//! mutations of it in the default test run, so the bodies are built and exercised without
//! the instrumented build.

use kiln_compiler::mindspore::{DecryptKey, crypto, mindir};
use kiln_ir::Graph;

/// Graphs with more nodes are verified but not compiled.
pub const MAX_NODES: usize = 64;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz_targets/*.rs`, `dict/*.dict` and the corpus
/// directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("onnx", onnx),
    ("ckpt", ckpt),
    ("safetensors", safetensors),
    ("mindir", mindir),
    ("mindir_encrypted", mindir_encrypted),
    ("air", air),
    ("om", om),
    ("npy", npy),
    ("kir", kir),
    ("fusion_switch", fusion_switch),
];

/// Verify `g` and, when it is small, generate its code (an object file in memory).
pub fn compile_small(g: &Graph) {
    // the pipeline verifies what a front end returns (a constant index out of range, say, is
    // found there): a rejected graph is a clean error
    if kiln_ir::verify::verify(g).is_err() {
        return;
    }
    if g.iter_nodes().count() > MAX_NODES {
        return;
    }
    let opts = kiln_target_cpu::CpuOptions {
        wide: false,
        ..kiln_target_cpu::CpuOptions::host("fuzz")
    };
    // unsupported ops and dtypes are errors, never panics
    let _ = kiln_target_cpu::compile_object(g, &opts);
}

fn key() -> DecryptKey {
    DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap()
}

/// ONNX import (+ verify + compile at -O0): any bytes as a `.onnx` file.
pub fn onnx(data: &[u8]) {
    let opts = kiln_compiler::onnx::OnnxOptions::default();
    if let Ok(g) = kiln_compiler::onnx::load_bytes(data, None, "fuzz.onnx", &opts) {
        compile_small(&g);
    }
}

/// MindSpore checkpoints: any bytes as a `.ckpt` (protobuf, encrypted with a known key, or the
/// safetensors variant; the reader picks by content).
pub fn ckpt(data: &[u8]) {
    let key = key();
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
}

/// The safetensors checkpoint variant: the input is the JSON header and the data; the target
/// writes the 8-byte header length itself (the first byte picks where the header ends), so
/// the fuzzer spends its time on the header and the offsets, not on the length prefix.
pub fn safetensors(data: &[u8]) {
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
    if let Ok(ck) =
        kiln_compiler::mindspore::ckpt::read_bytes(bytes::Bytes::from(f), "fuzz.safetensors", None)
    {
        let _ = ck.summary();
        for e in &ck.entries {
            let _ = e.to_tensor();
        }
    }
}

/// MindIR import (+ verify + compile at -O0): any bytes as a plain `.mindir` file.
pub fn mindir(data: &[u8]) {
    let opts = mindir::MindirOptions::default();
    if let Ok(g) = mindir::load_bytes(
        bytes::Bytes::copy_from_slice(data),
        None,
        "fuzz.mindir",
        &opts,
    ) {
        compile_small(&g);
    }
}

/// Encrypted MindIR. The first byte picks what the rest is: even, an encrypted file as it is
/// (the block framing, lengths, IVs and tags); odd, a plaintext model that the target encrypts
/// with the known key (AES-GCM or AES-CBC, blocks of 1..=64 bytes), so that decryption and
/// then import see it.
pub fn mindir_encrypted(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = key();
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
        compile_small(&g);
    }
}

/// Ascend AIR (a GraphEngine ModelDef): decode, `kiln inspect`'s summary, import (+ verify +
/// compile at -O0).
pub fn air(data: &[u8]) {
    let b = bytes::Bytes::copy_from_slice(data);
    if let Ok(md) = kiln_compiler::air::decode(b.clone(), "fuzz.air") {
        let _ = kiln_compiler::air::describe(&md);
    }
    if let Ok(g) = kiln_compiler::air::load_bytes(b, None, "fuzz.air", &Default::default()) {
        compile_small(&g);
    }
}

/// Ascend OM: the container (header, partition tables, partitions), `kiln inspect`'s summary,
/// and the root model's graph with its WEIGHTS_DATA (+ verify + compile at -O0).
pub fn om(data: &[u8]) {
    let b = bytes::Bytes::copy_from_slice(data);
    if let Ok(om) = kiln_compiler::om::parse(b.clone(), "fuzz.om") {
        let _ = kiln_compiler::om::describe(&om, "fuzz.om");
    }
    if let Ok(g) = kiln_compiler::om::load_bytes(b, None, "fuzz.om", &Default::default()) {
        compile_small(&g);
    }
}

/// `.npy` reading (the runtime's reader behind `kiln run --input`, `--freeze` and executables'
/// Rust callers); an accepted array must write back and read again identically.
pub fn npy(data: &[u8]) {
    if let Ok(a) = kiln_runtime::npy::from_bytes(data) {
        let b = kiln_runtime::npy::from_bytes(&a.to_bytes()).expect("round trip");
        assert_eq!((a.dtype, &a.shape, &a.data), (b.dtype, &b.shape, &b.data));
    }
}

/// The textual IR (`.kir`): parse, verify, print (the printed text must parse back to the same
/// text), compile at -O0.
pub fn kir(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = kiln_ir::text::parse(text) {
        if kiln_ir::verify::verify(&g).is_err() {
            return;
        }
        let printed = kiln_ir::text::print(&g);
        let again = kiln_ir::text::parse(&printed).expect("printed IR parses");
        assert_eq!(kiln_ir::text::print(&again), printed);
        compile_small(&g);
    }
}

/// The fusion-switch JSON (`--fusion-switch FILE`).
pub fn fusion_switch(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln_compiler::passes::parse_fusion_switch(text);
    }
}
