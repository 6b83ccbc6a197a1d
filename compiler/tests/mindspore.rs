//! MindSpore front ends: checkpoints, MindIR, binding weights, encryption, hostile input, and
//! golden nets exported by MindSpore itself (`golden/mindspore/<net>/`, see make_golden.py).
//!
//! Real MindSpore files from `../shared/testdata/mindspore/` are skipped with a message when
//! `../shared` is absent, unless `KILN_REQUIRE_GOLDEN=1` (set by CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use kiln_compiler::mindspore::ckpt::{self, ElemType};
use kiln_compiler::mindspore::crypto::{self, DecryptKey};
use kiln_compiler::mindspore::mindir::{self, MindirOptions};
use kiln_compiler::mindspore::proto::mind_ir as mi;
use kiln_compiler::mindspore::{MsError, bind};
use kiln_compiler::pipeline::{self, ExtraOptions, LoadOptions};
use kiln_ir::{DType, Graph};
use kiln_runtime::{Model, npy};
use prost::Message;

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-5;
const NETS: [&str; 4] = ["lenet5", "resnet_small", "mobilenet_small", "op_zoo"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A file from `../shared/testdata/mindspore`, or `None` (skip) when `../shared` is absent.
fn shared(name: &str) -> Option<PathBuf> {
    let p = root().join("../shared/testdata/mindspore").join(name);
    if p.exists() {
        return Some(p);
    }
    let msg = format!("{} missing (no ../shared beside the project)", p.display());
    if std::env::var("KILN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn golden(net: &str) -> PathBuf {
    root().join("golden/mindspore").join(net)
}

fn key16() -> DecryptKey {
    DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap()
}

fn load_mindir(p: &Path, key: Option<DecryptKey>) -> Result<Graph, MsError> {
    mindir::load(
        p,
        &MindirOptions {
            key,
            ..Default::default()
        },
    )
}

/// Compile in memory and run on f32 inputs.
fn jit_run(g: &Graph, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    kiln_ir::verify::verify(g).unwrap();
    let j = kiln_target_cpu::compile_jit(g, "t").unwrap();
    // SAFETY: the descriptor comes from the JIT and lives as long as `j`.
    let m = unsafe { Model::from_raw(j.descriptor() as *const kiln_runtime::KilnModel) }.unwrap();
    let ins: Vec<Vec<u8>> = inputs
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let ins_ref: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
    let mut ws = m.workspace().unwrap();
    let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    m.run(&ins_ref, &mut refs, &mut ws).unwrap();
    outs.iter().map(|o| f32s(o)).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn close(what: &str, want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len(), "{what}: length");
    let mut worst = 0.0f32;
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let err = (w - g).abs();
        assert!(
            err <= ATOL + RTOL * w.abs(),
            "{what}[{i}]: want {w}, got {g} (|err| {err})"
        );
        worst = worst.max(err);
    }
    worst
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let o = cmd.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "command failed: {err}");
    (out, err)
}

fn run_err(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(!o.status.success(), "command should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// real MindSpore files

#[test]
fn lenet5_momentum_ckpt() {
    let Some(p) = shared("lenet5_momentum.ckpt") else {
        return;
    };
    let ck = ckpt::read(&p, None).unwrap();
    let got: Vec<(String, ElemType, Vec<usize>)> = ck
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.elem, e.shape.clone()))
        .collect();
    let f32t = ElemType::Num(DType::F32);
    let f64t = ElemType::Num(DType::F64);
    let weights: Vec<(&str, Vec<usize>)> = vec![
        ("conv1.weight", vec![6, 1, 5, 5]),
        ("conv2.weight", vec![16, 6, 5, 5]),
        ("fc1.weight", vec![120, 400]),
        ("fc1.bias", vec![120]),
        ("fc2.weight", vec![84, 120]),
        ("fc2.bias", vec![84]),
        ("fc3.weight", vec![10, 84]),
        ("fc3.bias", vec![10]),
    ];
    let mut want: Vec<(String, ElemType, Vec<usize>)> = weights
        .iter()
        .map(|(n, s)| (n.to_string(), f32t, s.clone()))
        .collect();
    // legacy scalar dims [0] read as scalars
    want.push(("learning_rate".into(), f64t, vec![]));
    want.push(("momentum".into(), f64t, vec![]));
    want.extend(
        weights
            .iter()
            .map(|(n, s)| (format!("moments.{n}"), f32t, s.clone())),
    );
    assert_eq!(got, want);
    assert_eq!(ck.crc, None);
    let lr = ck.get("learning_rate").unwrap().data.bytes().to_vec();
    let lr = f64::from_le_bytes(lr.try_into().unwrap());
    assert!(lr > 0.0 && lr < 1.0, "learning_rate {lr}");
    // inspect prints the table and totals
    let (out, _) = run_ok(kiln().arg("inspect").arg(&p));
    assert!(
        out.contains("fc1.weight") && out.contains("[120, 400]"),
        "{out}"
    );
    assert!(
        out.contains("18 parameters, 123370 elements, 493488 bytes"),
        "{out}"
    );
}

#[test]
fn relu_v1_5_legacy() {
    let Some(p) = shared("relu_v1.5.mindir") else {
        return;
    };
    let g = load_mindir(&p, None).unwrap();
    assert_eq!(g.ty(g.inputs[0]).shape, vec![1, 1, 2, 2]);
    let y = jit_run(&g, &[vec![-1.0, 2.0, -3.5, 4.25]]);
    assert_eq!(y, vec![vec![0.0, 2.0, 0.0, 4.25]]);
}

#[test]
fn add_v1_1_legacy() {
    let Some(p) = shared("add_v1.1.mindir") else {
        return;
    };
    let g = load_mindir(&p, None).unwrap();
    let names: Vec<&str> = g.inputs.iter().map(|&v| g.value(v).name.as_str()).collect();
    assert_eq!(names, ["x_", "y_"]);
    let y = jit_run(&g, &[vec![1.0, 2.0, 3.0, 4.0], vec![0.5, -2.0, 10.0, 0.25]]);
    assert_eq!(y, vec![vec![1.5, 0.0, 13.0, 4.25]]);
}

#[test]
fn add_aes_gcm_encrypted() {
    let Some(p) = shared("add_aes_gcm_key_0123456789ABCDEF.mindir") else {
        return;
    };
    let g = load_mindir(&p, Some(key16())).unwrap();
    let y = jit_run(&g, &[vec![1.0, 2.0, 3.0, 4.0], vec![4.0, 3.0, 2.0, 1.0]]);
    assert_eq!(y, vec![vec![5.0; 4]]);
    let e = load_mindir(&p, None).unwrap_err().to_string();
    assert!(
        e.contains("encrypted (AES-GCM)") && e.contains("--decrypt-key-file"),
        "{e}"
    );
    let e = load_mindir(
        &p,
        Some(DecryptKey::from_bytes(b"0123456789ABCDEX").unwrap()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("wrong decryption key"), "{e}");
    // the CLI: key from a file and from the environment; never on the command line
    let d = tempfile::tempdir().unwrap();
    let kf = d.path().join("key");
    std::fs::write(&kf, "0123456789ABCDEF\n").unwrap();
    run_ok(
        kiln()
            .args(["build", "--emit", "ir", "-o"])
            .arg(d.path().join("a.kir"))
            .arg(&p)
            .arg("--decrypt-key-file")
            .arg(&kf),
    );
    run_ok(
        kiln()
            .args(["build", "--emit", "ir", "-o"])
            .arg(d.path().join("b.kir"))
            .arg(&p)
            .env("KILN_DECRYPT_KEY", "hex:30313233343536373839414243444546"),
    );
    let e = run_err(
        kiln()
            .args(["build", "--emit", "ir", "-o"])
            .arg(d.path().join("c.kir"))
            .arg(&p)
            .env_remove("KILN_DECRYPT_KEY"),
    );
    assert!(e.contains("encrypted"), "{e}");
}

#[test]
fn lenet_like_v2_0_matches_interpreter() {
    let Some(p) = shared("lenet_like_v2.0.mindir") else {
        return;
    };
    let g = load_mindir(&p, None).unwrap();
    let ops: Vec<&str> = g.iter_nodes().map(|(_, n)| n.op.name()).collect();
    assert_eq!(
        ops,
        [
            "conv", "relu", "max_pool", "conv", "relu", "max_pool", "reshape", "gemm", "relu",
            "gemm", "relu", "gemm"
        ]
    );
    // parameters keep their checkpoint names
    assert!(g.find_value("conv1.weight").is_some() && g.find_value("conv2.weight").is_some());
    let x: Vec<f32> = (0..1024)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let got = jit_run(&g, std::slice::from_ref(&x));
    let want =
        kiln_ir::interp::run(&g, &[kiln_ir::interp::Tensor::f32(vec![1, 1, 32, 32], x)]).unwrap();
    close(
        "lenet_like_v2.0 jit vs interpreter",
        want[0].as_f32().unwrap(),
        &got[0],
    );
}

/// The MindSpore 1.6 LSTM export, unrolled, against MindSpore 2.7.1's own output for it
/// (`golden/mindspore/lstm_v1.6/`, from `make_golden.py --shared-lstm`).
#[test]
fn lstm_v1_6_matches_mindspore() {
    let Some(p) = shared("lstm_v1.6.mindir") else {
        return;
    };
    let g = load_mindir(&p, None).unwrap();
    let dir = golden("lstm_v1.6");
    let ins: Vec<Vec<f32>> = (0..3)
        .map(|i| {
            npy::read(&dir.join(format!("input_{i}.npy")))
                .unwrap()
                .to_f32()
                .unwrap()
        })
        .collect();
    let got = jit_run(&g, &ins);
    let want = npy::read(&dir.join("output_0.npy"))
        .unwrap()
        .to_f32()
        .unwrap();
    let err = close("lstm_v1.6", &want, &got[0]);
    eprintln!(
        "lstm_v1.6: {} values match MindSpore, max |err| {err:.2e}",
        want.len()
    );
    let (out, _) = run_ok(kiln().arg("inspect").arg(&p));
    assert!(
        out.contains("1  LSTM") && out.contains("6 parameters"),
        "{out}"
    );
    // a two-layer LSTM is rejected naming the node and op
    let mut m = mi::ModelProto::decode(std::fs::read(&p).unwrap().as_slice()).unwrap();
    for n in m.graph.as_mut().unwrap().node.iter_mut() {
        for a in n.attribute.iter_mut() {
            if a.name() == "num_layers" {
                a.i = Some(2);
            }
        }
    }
    let e = mindir::load_bytes(
        Bytes::from(m.encode_to_vec()),
        None,
        "lstm2.mindir",
        &MindirOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("lstm2.mindir: node '[CNode]41:17' (LSTM): only num_layers=1"),
        "{e}"
    );
}

/// Truncations and bit flips of every real file: errors, never panics.
#[test]
fn hostile_bytes_never_panic() {
    let mut files: Vec<PathBuf> = [
        "lenet5_momentum.ckpt",
        "relu_v1.5.mindir",
        "add_v1.1.mindir",
        "add_aes_gcm_key_0123456789ABCDEF.mindir",
        "lenet_like_v2.0.mindir",
        "lstm_v1.6.mindir",
    ]
    .iter()
    .filter_map(|f| shared(f))
    .collect();
    files.push(golden("resnet_small").join("net.mindir"));
    files.push(golden("resnet_small").join("net.ckpt"));
    let key = key16();
    for p in files {
        let b = std::fs::read(&p).unwrap();
        let name = p.display().to_string();
        let is_ckpt = name.ends_with(".ckpt");
        let try_load = |bytes: Vec<u8>| {
            let bytes = Bytes::from(bytes);
            if is_ckpt {
                let _ = ckpt::read_bytes(bytes, "x.ckpt", Some(&key));
            } else if let Ok(g) = mindir::load_bytes(
                bytes,
                None,
                "x.mindir",
                &MindirOptions {
                    key: Some(key.clone()),
                    ..Default::default()
                },
            ) {
                kiln_ir::verify::verify(&g).unwrap();
            }
        };
        let n = b.len();
        let step = (n / 97).max(1);
        for cut in (0..n).step_by(step).chain([n.saturating_sub(1)]) {
            try_load(b[..cut].to_vec());
        }
        for k in (0..n).step_by(step) {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut c = b.clone();
                c[k] ^= mask;
                try_load(c);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// synthetic checkpoints

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn ckpt_split_tensor_crc_and_types() {
    let w: Vec<f32> = (0..60).map(|i| i as f32 * 0.5).collect();
    let wb = f32_bytes(&w);
    let bf16: Vec<u8> = [1.0f32, -2.0, 0.5]
        .iter()
        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let f16: Vec<u8> = [1.5f32, -0.25]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let int4 = [0x71u8, 0xF8, 0x0E]; // low nibble first: 1, 7, -8, -1, -2, 0
    let text: Vec<u8> = "Momentum"
        .chars()
        .flat_map(|c| (c as u32).to_le_bytes())
        .collect();
    let gs = 7i32.to_le_bytes();
    let entries: Vec<(&str, &str, &[i64], &[u8])> = vec![
        ("w", "Float32", &[3, 4, 5], &wb),
        ("b16", "BFloat16", &[3], &bf16),
        ("h", "Float16", &[2], &f16),
        ("q", "Int4", &[2, 3], &int4),
        ("flag", "Bool", &[2], &[1, 0]),
        ("opt", "str", &[0], &text),
        ("global_step", "Int32", &[1], &gs),
    ];
    for (split, crc) in [(1, false), (3, true), (7, false)] {
        let bytes = ckpt::write_protobuf(&entries, split, crc);
        let ck = ckpt::read_bytes(Bytes::from(bytes.clone()), "t.ckpt", None).unwrap();
        assert_eq!(ck.entries.len(), 7);
        let e = ck.get("w").unwrap();
        assert_eq!(e.shape, vec![3, 4, 5]);
        assert_eq!(e.data.bytes(), &wb[..], "split {split}");
        assert_eq!(e.pieces, split.min(wb.len()));
        assert_eq!(ck.crc.is_some(), crc);
        let b = ck.get("b16").unwrap();
        assert_eq!(
            (b.elem, b.data.bytes()),
            (ElemType::Num(DType::BF16), &bf16[..])
        );
        assert_eq!(ck.get("h").unwrap().elem, ElemType::Num(DType::F16));
        let (ty, d) = ck.get("q").unwrap().to_tensor().unwrap();
        assert_eq!(ty.dtype, DType::I8);
        assert_eq!(d.bytes(), &[1u8, 7, 0xF8, 0xFF, 0xFE, 0][..]);
        assert_eq!(ck.get("opt").unwrap().text().as_deref(), Some("Momentum"));
        assert_eq!(ck.get("flag").unwrap().elem, ElemType::Num(DType::Bool));
        if crc {
            // one flipped bit in the body: a CRC error, not a silently wrong weight
            let mut bad = bytes.clone();
            bad[40] ^= 0x10;
            let e = ckpt::read_bytes(Bytes::from(bad), "t.ckpt", None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("CRC mismatch"), "{e}");
            let mut bad = bytes.clone();
            let n = bad.len();
            bad[n - 1] ^= 1;
            let e = ckpt::read_bytes(Bytes::from(bad), "t.ckpt", None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("t.ckpt: CRC mismatch"), "{e}");
        }
    }
    // a content size that does not match the dims
    let bad = ckpt::write_protobuf(&[("w", "Float32", &[2, 2], &[0u8; 12])], 1, false);
    let e = ckpt::read_bytes(Bytes::from(bad), "t.ckpt", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'w'") && e.contains("needs 16 bytes"), "{e}");
    let bad = ckpt::write_protobuf(&[("w", "Complex64", &[1], &[0u8; 8])], 1, false);
    let e = ckpt::read_bytes(Bytes::from(bad), "t.ckpt", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown tensor_type 'Complex64'"), "{e}");
    // absurd dims are rejected before anything is allocated
    for dims in [[1i64 << 40, 1 << 40], [1 << 31, 1 << 31], [-1, 4]] {
        let bad = ckpt::write_protobuf(&[("w", "Float32", &dims, &[0u8; 16])], 1, false);
        assert!(ckpt::read_bytes(Bytes::from(bad), "t.ckpt", None).is_err());
    }
}

#[test]
fn ckpt_encrypted_gcm_and_cbc() {
    let w = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let plain = ckpt::write_protobuf(&[("w", "Float32", &[2, 2], &w)], 1, false);
    for key in [
        DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap(),
        DecryptKey::from_bytes(&[7u8; 24]).unwrap(),
        DecryptKey::from_bytes(&[9u8; 32]).unwrap(),
    ] {
        for gcm in [true, false] {
            // several blocks, like MindSpore's 64 MiB blocks
            let enc = crypto::encrypt(&plain, &key, gcm, [3u8; 16], 10).unwrap();
            let ck = ckpt::read_bytes(Bytes::from(enc.clone()), "e.ckpt", Some(&key)).unwrap();
            assert_eq!(ck.get("w").unwrap().data.bytes(), &w[..]);
            assert_eq!(ck.encryption, Some(if gcm { "AES-GCM" } else { "AES-CBC" }));
            let e = ckpt::read_bytes(Bytes::from(enc.clone()), "e.ckpt", None)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("is encrypted") && e.contains("KILN_DECRYPT_KEY"),
                "{e}"
            );
            let wrong = DecryptKey::from_bytes(&[1u8; 16]).unwrap();
            // CBC with a wrong key may, rarely, unpad; it then fails to decode instead
            let r = ckpt::read_bytes(Bytes::from(enc.clone()), "e.ckpt", Some(&wrong));
            if gcm {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("wrong decryption key"), "{e}");
            } else {
                assert!(r.is_err());
            }
            for cut in 1..enc.len() {
                let r = ckpt::read_bytes(Bytes::from(enc[..cut].to_vec()), "e.ckpt", Some(&key));
                assert!(
                    r.is_err(),
                    "gcm {gcm}: cut {cut} of {} read: {r:?}",
                    enc.len()
                );
            }
        }
    }
}

#[test]
fn decrypt_key_forms() {
    let raw = b"0123456789ABCDEF";
    assert_eq!(DecryptKey::parse(raw).unwrap().bytes(), raw);
    assert_eq!(
        DecryptKey::parse(b"0123456789ABCDEF\n").unwrap().bytes(),
        raw
    );
    assert_eq!(
        DecryptKey::parse(b"30313233343536373839414243444546")
            .unwrap()
            .bytes(),
        raw
    );
    assert_eq!(
        DecryptKey::parse(b"hex:30313233343536373839414243444546")
            .unwrap()
            .bytes(),
        raw
    );
    assert_eq!(
        DecryptKey::parse(b"raw:30313233343536373839414243444546")
            .unwrap()
            .bytes()
            .len(),
        32
    );
    assert!(DecryptKey::parse(b"short").is_err());
    assert!(DecryptKey::parse(b"hex:zz").is_err());
    assert_eq!(
        format!("{:?}", DecryptKey::parse(raw).unwrap()),
        "DecryptKey(16 bytes)"
    );
}

/// A hand-built safetensors checkpoint in MindSpore's variant (`format: ms`, chained CRC).
#[test]
fn ckpt_safetensors_variant() {
    let a = f32_bytes(&[1.0, 2.0, 3.0]);
    let b = 5i64.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    for (n, d) in [("a.weight", &a[..]), ("b", &b[..])] {
        h.update(n.as_bytes());
        h.update(d);
    }
    let crc = h.finalize();
    let build = |crc: u32| {
        let header = format!(
            r#"{{"__metadata__":{{"format":"ms","crc_num":"{crc}"}},"a.weight":{{"dtype":"F32","shape":[3],"data_offsets":[0,12]}},"b":{{"dtype":"I64","shape":[],"data_offsets":[12,20]}}}}"#
        );
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(&a);
        f.extend_from_slice(&b);
        f
    };
    let ck = ckpt::read_bytes(Bytes::from(build(crc)), "s.safetensors", None).unwrap();
    assert_eq!(ck.format, "safetensors");
    assert_eq!(ck.crc, Some(crc));
    assert_eq!(ck.get("a.weight").unwrap().data.bytes(), &a[..]);
    assert_eq!(ck.get("b").unwrap().shape, Vec::<usize>::new());
    let e = ckpt::read_bytes(Bytes::from(build(crc ^ 1)), "s.safetensors", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("CRC mismatch"), "{e}");
    let f = build(crc);
    for cut in 0..f.len() {
        let _ = ckpt::read_bytes(Bytes::from(f[..cut].to_vec()), "s.safetensors", None);
    }
}

// ---------------------------------------------------------------------------------------------
// synthetic MindIR: external data, the 2.x primitive-function encoding, unsupported lists

fn tensor_info(dims: &[i64]) -> mi::TensorProto {
    mi::TensorProto {
        dims: dims.to_vec(),
        data_type: Some(1),
        ..Default::default()
    }
}

fn ref_node(name: &str, prim: &str, inputs: &[&str]) -> mi::NodeProto {
    mi::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![name.to_string()],
        name: Some(name.to_string()),
        op_type: Some(format!("REF::{prim}")),
        ..Default::default()
    }
}

fn int_tuple(v: &[i64]) -> mi::AttributeProto {
    mi::AttributeProto {
        r#type: Some(20),
        values: v
            .iter()
            .map(|&i| mi::AttributeProto {
                r#type: Some(7),
                ints: vec![i],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn constant(name: &str, mut a: mi::AttributeProto) -> mi::NodeProto {
    a.name = Some("value".into());
    mi::NodeProto {
        output: vec![name.into()],
        name: Some(name.into()),
        op_type: Some("Constant".into()),
        attribute: vec![a],
        ..Default::default()
    }
}

/// `y = Transpose(Reshape(x + w, (3, 2)), (1, 0))` with `w` in `<prefix>_variables/data_0`.
fn external_model() -> mi::ModelProto {
    let g = "g";
    mi::ModelProto {
        ir_version: Some("0.1.1".into()),
        producer_name: Some("MindSpore".into()),
        primitives: vec![
            mi::PrimitiveProto {
                name: Some("Add:1".into()),
                op_type: Some("Add".into()),
                ..Default::default()
            },
            mi::PrimitiveProto {
                name: Some("Reshape:2".into()),
                op_type: Some("Reshape".into()),
                ..Default::default()
            },
            mi::PrimitiveProto {
                name: Some("Transpose:3".into()),
                op_type: Some("Transpose".into()),
                ..Default::default()
            },
            mi::PrimitiveProto {
                name: Some("Load:4".into()),
                op_type: Some("Load".into()),
                ..Default::default()
            },
        ],
        graph: Some(mi::GraphProto {
            name: Some(g.into()),
            input: vec![mi::ValueInfoProto {
                name: Some(format!("{g}:x")),
                tensor: vec![tensor_info(&[2, 3])],
                ..Default::default()
            }],
            parameter: vec![mi::TensorProto {
                name: Some(format!("{g}:w")),
                ref_key: Some("w".into()),
                external_data: Some(mi::tensor_proto::ExternalDataProto {
                    location: Some("m_variables/data_0".into()),
                    offset: Some(64),
                    length: Some(24),
                }),
                ..tensor_info(&[2, 3])
            }],
            node: vec![
                constant(
                    "u",
                    mi::AttributeProto {
                        r#type: Some(23),
                        ..Default::default()
                    },
                ),
                ref_node("g:l", "Load:4", &["g:w", "u"]),
                ref_node("g:a", "Add:1", &["g:x", "g:l"]),
                constant("s", int_tuple(&[3, -1])),
                ref_node("g:r", "Reshape:2", &["g:a", "s"]),
                constant("p", int_tuple(&[1, 0])),
                ref_node("g:t", "Transpose:3", &["g:r", "p"]),
            ],
            output: vec![mi::ValueInfoProto {
                name: Some("g:t".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn mindir_external_data_and_ref_prims() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m_graph.mindir");
    std::fs::write(&m, external_model().encode_to_vec()).unwrap();
    std::fs::create_dir(d.path().join("m_variables")).unwrap();
    let mut data = vec![0u8; 64];
    data[0] = 1;
    data.extend(f32_bytes(&[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]));
    data.resize(128, 0);
    std::fs::write(d.path().join("m_variables/data_0"), &data).unwrap();
    let g = load_mindir(&m, None).unwrap();
    let x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let y = jit_run(&g, &[x]);
    // x + w = [[11,22,33],[44,55,66]] -> reshape (3,2) -> transpose
    assert_eq!(y, vec![vec![11.0, 33.0, 55.0, 22.0, 44.0, 66.0]]);
    // external data outside the file is an error naming the parameter
    std::fs::write(d.path().join("m_variables/data_0"), &data[..80]).unwrap();
    let e = load_mindir(&m, None).unwrap_err().to_string();
    assert!(e.contains("parameter 'w'") && e.contains("outside"), "{e}");
    // a location escaping the model directory is refused
    let mut bad = external_model();
    bad.graph.as_mut().unwrap().parameter[0]
        .external_data
        .as_mut()
        .unwrap()
        .location = Some("../etc/passwd".into());
    std::fs::write(&m, bad.encode_to_vec()).unwrap();
    let e = load_mindir(&m, None).unwrap_err().to_string();
    assert!(
        e.contains("relative path inside the model directory"),
        "{e}"
    );
}

/// An encrypted (AES-256-CBC) MindIR with a dynamic batch dim fixed by `--input-shape`.
#[test]
fn mindir_encrypted_cbc_and_dynamic_input() {
    let mut m = external_model();
    let g = m.graph.as_mut().unwrap();
    g.input[0].tensor[0].dims = vec![-1, 3];
    let p = &mut g.parameter[0];
    p.external_data = None;
    p.raw_data = Some(Bytes::from(f32_bytes(&[1.0; 6])));
    let key = DecryptKey::from_bytes(&[5u8; 32]).unwrap();
    let enc = crypto::encrypt(&m.encode_to_vec(), &key, false, [1u8; 16], 64).unwrap();
    let opts = |shapes: Vec<(String, Vec<usize>)>, key: Option<DecryptKey>| MindirOptions {
        inputs: kiln_compiler::pipeline::LoadOptions {
            input_shapes: shapes,
            ..Default::default()
        },
        key,
    };
    let load =
        |o: MindirOptions| mindir::load_bytes(Bytes::from(enc.clone()), None, "e.mindir", &o);
    let e = load(opts(vec![], Some(key.clone())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--input-shape x="), "{e}");
    let e = load(opts(vec![("x".into(), vec![2, 4])], Some(key.clone())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
    let e = load(opts(vec![("x".into(), vec![2, 3])], None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("encrypted (AES-CBC)"), "{e}");
    let g = load(opts(vec![("x".into(), vec![2, 3])], Some(key))).unwrap();
    let y = jit_run(&g, &[vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]);
    assert_eq!(y, vec![vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]]);
}

/// `StridedSlice` (2.x encoding: begin/end/strides/masks as constant inputs).
#[test]
fn mindir_strided_slice() {
    let mut m = external_model();
    let g = m.graph.as_mut().unwrap();
    g.input[0].tensor[0].dims = vec![4, 5];
    let p = &mut g.parameter[0];
    p.dims = vec![4, 5];
    p.external_data = None;
    p.raw_data = Some(Bytes::from(f32_bytes(&[0.0; 20])));
    m.primitives.push(mi::PrimitiveProto {
        name: Some("StridedSlice:7".into()),
        op_type: Some("StridedSlice".into()),
        ..Default::default()
    });
    let int = |i: i64| mi::AttributeProto {
        r#type: Some(7),
        i: Some(i),
        ..Default::default()
    };
    // x[a:, ::-2] and x[1, 1:4] (shrink axis 0), with x = a + w = a
    /// begin, end, strides, masks, expected output
    type Case = (Vec<i64>, Vec<i64>, Vec<i64>, [i64; 5], Vec<f32>);
    let cases: Vec<Case> = vec![
        (
            vec![2, 0],
            vec![4, 0],
            vec![1, -2],
            [2, 2, 0, 0, 0],
            vec![14.0, 12.0, 10.0, 19.0, 17.0, 15.0],
        ),
        (
            vec![1, 1],
            vec![2, 4],
            vec![1, 1],
            [0, 0, 0, 0, 1],
            vec![6.0, 7.0, 8.0],
        ),
        (
            vec![-3, -1],
            vec![-1, -6],
            vec![1, -3],
            [0, 0, 0, 0, 0],
            vec![9.0, 6.0, 14.0, 11.0],
        ),
    ];
    for (begin, end, strides, masks, want) in cases {
        let mut m = m.clone();
        let g = m.graph.as_mut().unwrap();
        g.node.truncate(3); // u, Load, Add
        g.node.push(constant("b", int_tuple(&begin)));
        g.node.push(constant("e", int_tuple(&end)));
        g.node.push(constant("s", int_tuple(&strides)));
        let mut ins = vec!["g:a", "b", "e", "s"];
        let names = ["m0", "m1", "m2", "m3", "m4"];
        for (k, v) in masks.iter().enumerate() {
            g.node.push(constant(names[k], int(*v)));
            ins.push(names[k]);
        }
        g.node.push(ref_node("g:ss", "StridedSlice:7", &ins));
        g.output[0].name = Some("g:ss".into());
        let gr = mindir::load_bytes(
            Bytes::from(m.encode_to_vec()),
            None,
            "s.mindir",
            &MindirOptions::default(),
        )
        .unwrap();
        let x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let y = jit_run(&gr, &[x]);
        assert_eq!(
            y[0], want,
            "begin {begin:?} end {end:?} strides {strides:?}"
        );
    }
}

#[test]
fn mindir_unsupported_listed_together() {
    let mut m = external_model();
    let g = m.graph.as_mut().unwrap();
    g.node.push(ref_node("g:n1", "Foo:9", &["g:t"]));
    g.node.push(ref_node("g:n2", "Foo:9", &["g:n1"]));
    g.node.push(ref_node("g:n3", "Bar:8", &["g:n2"]));
    m.primitives.push(mi::PrimitiveProto {
        name: Some("Foo:9".into()),
        op_type: Some("Foo".into()),
        ..Default::default()
    });
    let e = mindir::load_bytes(
        Bytes::from(m.encode_to_vec()),
        None,
        "u.mindir",
        &MindirOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "u.mindir: unsupported ops: Foo (nodes: n1, n2); call Bar:8 (nodes: n3)"
    );
}

// ---------------------------------------------------------------------------------------------
// golden nets exported by MindSpore 2.7.1

fn golden_output(net: &str) -> Vec<f32> {
    npy::read(&golden(net).join("output_0.npy"))
        .unwrap()
        .to_f32()
        .unwrap()
}

/// Run a built executable on the net's input; returns its only output.
fn run_exe(exe: &Path, net: &str, out: &Path) -> Vec<f32> {
    run_ok(
        Command::new(exe)
            .arg(golden(net).join("input_0.npy"))
            .arg("--output-dir")
            .arg(out),
    );
    let files: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    npy::read(&files[0]).unwrap().to_f32().unwrap()
}

/// `kiln build net.mindir --emit exe` and `kiln build net.onnx --weights net.ckpt --emit exe`
/// both reproduce MindSpore's output.
#[test]
fn golden_nets_mindir_and_onnx_with_weights() {
    let d = tempfile::tempdir().unwrap();
    for net in NETS {
        let dir = golden(net);
        let want = golden_output(net);
        let exe = d.path().join(format!("{net}_mindir"));
        run_ok(
            kiln()
                .arg("build")
                .arg(dir.join("net.mindir"))
                .args(["--emit", "exe", "-o"])
                .arg(&exe),
        );
        let got = run_exe(&exe, net, &d.path().join(format!("{net}_out1")));
        let e1 = close(&format!("{net} (mindir)"), &want, &got);
        let exe = d.path().join(format!("{net}_onnx"));
        let (_, err) = run_ok(
            kiln()
                .arg("build")
                .arg(dir.join("net.onnx"))
                .arg("--weights")
                .arg(dir.join("net.ckpt"))
                .args(["--emit", "exe", "-o"])
                .arg(&exe),
        );
        assert!(err.contains("note: bound"), "{err}");
        assert!(!err.contains("warning"), "{err}");
        let got = run_exe(&exe, net, &d.path().join(format!("{net}_out2")));
        let e2 = close(&format!("{net} (onnx + ckpt)"), &want, &got);
        eprintln!(
            "{net}: {} values match MindSpore, max |err| mindir {e1:.2e}, onnx+ckpt {e2:.2e}",
            want.len()
        );
    }
}

/// The checkpoint really replaces the weights: LeNet-5 with `fc3.bias + 1` gives MindSpore's
/// output + 1, through both front ends; ckpt round trip via MindIR `run --weights` too.
#[test]
fn weights_replace_parameters() {
    let dir = golden("lenet5");
    let ck = ckpt::read(&dir.join("net.ckpt"), None).unwrap();
    let owned: Vec<(String, String, Vec<i64>, Vec<u8>)> = ck
        .entries
        .iter()
        .map(|e| {
            let mut bytes = e.data.bytes().to_vec();
            if e.name == "fc3.bias" {
                let v: Vec<f32> = f32s(&bytes).iter().map(|x| x + 1.0).collect();
                bytes = f32_bytes(&v);
            }
            (
                e.name.clone(),
                e.elem.ms_name().to_string(),
                e.shape.iter().map(|&d| d as i64).collect(),
                bytes,
            )
        })
        .chain([(
            "moments.fc3.bias".to_string(),
            "Float32".to_string(),
            vec![10],
            vec![0u8; 40],
        )])
        .collect();
    let entries: Vec<(&str, &str, &[i64], &[u8])> = owned
        .iter()
        .map(|(n, t, d, b)| (n.as_str(), t.as_str(), d.as_slice(), b.as_slice()))
        .collect();
    let d = tempfile::tempdir().unwrap();
    let shifted = d.path().join("shifted.ckpt");
    std::fs::write(&shifted, ckpt::write_protobuf(&entries, 2, true)).unwrap();
    let x = npy::read(&dir.join("input_0.npy"))
        .unwrap()
        .to_f32()
        .unwrap();
    let want: Vec<f32> = golden_output("lenet5").iter().map(|v| v + 1.0).collect();
    for model in ["net.mindir", "net.onnx"] {
        let l = pipeline::load_with(
            &dir.join(model),
            &LoadOptions::default(),
            &ExtraOptions {
                weights: Some(shifted.clone()),
                key: None,
            },
        )
        .unwrap();
        assert!(
            l.messages
                .iter()
                .any(|m| m.contains("ignored 1 optimizer-state entries: moments.fc3.bias")),
            "{:?}",
            l.messages
        );
        let got = jit_run(&l.graph, std::slice::from_ref(&x));
        close(&format!("lenet5 {model} + shifted ckpt"), &want, &got[0]);
    }
    // kiln run --weights
    let (_, err) = run_ok(
        kiln()
            .arg("run")
            .arg(dir.join("net.mindir"))
            .arg("--weights")
            .arg(&shifted)
            .arg("--input")
            .arg(dir.join("input_0.npy"))
            .arg("--output-dir")
            .arg(d.path().join("out")),
    );
    assert!(err.contains("bound 8 parameters"), "{err}");
}

#[test]
fn weights_mismatch_is_an_error_naming_the_parameter() {
    let dir = golden("lenet5");
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.ckpt");
    let zeros = vec![0u8; 44];
    std::fs::write(
        &bad,
        ckpt::write_protobuf(
            &[
                ("fc3.bias", "Float32", &[11], &zeros),
                ("fc2.bias", "Float64", &[84], &vec![0u8; 84 * 8]),
                ("extra.thing", "Float32", &[1], &[0u8; 4]),
            ],
            1,
            false,
        ),
    )
    .unwrap();
    for model in ["net.mindir", "net.onnx"] {
        let e = run_err(
            kiln()
                .arg("build")
                .arg(dir.join(model))
                .arg("--weights")
                .arg(&bad)
                .args(["--emit", "ir", "-o"])
                .arg(d.path().join("x.kir")),
        );
        assert!(
            e.contains("parameter 'fc3.bias': the model has f32[10], the checkpoint Float32 [11]"),
            "{e}"
        );
        assert!(e.contains("parameter 'fc2.bias'"), "{e}");
        assert!(!d.path().join("x.kir").exists());
    }
    // an entry matching nothing is only a warning
    let extra = d.path().join("extra.ckpt");
    std::fs::write(
        &extra,
        ckpt::write_protobuf(&[("extra.thing", "Float32", &[1], &[0u8; 4])], 1, false),
    )
    .unwrap();
    let (_, err) = run_ok(
        kiln()
            .arg("build")
            .arg(dir.join("net.mindir"))
            .arg("--weights")
            .arg(&extra)
            .args(["--emit", "ir", "-o"])
            .arg(d.path().join("y.kir")),
    );
    assert!(
        err.contains("warning: 1 checkpoint entries match no parameter of the model: extra.thing"),
        "{err}"
    );
    assert!(bind::is_optimizer_state("moments.fc1.weight"));
    assert!(!bind::is_optimizer_state("fc1.weight"));
}

#[test]
fn inspect_mindir_and_unknown() {
    let (out, _) = run_ok(
        kiln()
            .arg("inspect")
            .arg(golden("resnet_small").join("net.mindir")),
    );
    assert!(out.contains("input  x f32[1, 3, 16, 16]"), "{out}");
    assert!(
        out.contains("6  Conv2D") && out.contains("6  BatchNorm"),
        "{out}"
    );
    let (out, _) = run_ok(
        kiln()
            .arg("inspect")
            .arg(golden("resnet_small").join("net.ckpt")),
    );
    assert!(out.contains("layer2.down_conv.weight"), "{out}");
    let e = run_err(
        kiln()
            .arg("inspect")
            .arg(golden("resnet_small").join("meta.json")),
    );
    assert!(e.contains("inspect supports"), "{e}");
}
