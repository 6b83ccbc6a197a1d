//! Ascend AIR round trips on real models: every golden ONNX model and every MindSpore golden
//! net is written as AIR (`kiln_compiler::air::export`) and read back. The graph read back is
//! the source graph (same values, types, constant bytes and ops, by name: so the interpreter —
//! and any compiled code — computes bit-identical outputs), and the `.air` file compiled to an
//! executable reproduces the reference outputs (ONNX Runtime's, MindSpore's).
//!
//! Also: the MODEL_DEF partitions of ../shared/testdata/om/*.om (GraphEngine's own files and
//! one ATC-compiled model) decode and list their ops, and corrupt AIR files are clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_compiler::air;
use kiln_compiler::frontend::Source;
use kiln_compiler::pipeline::{self, LoadOptions};
use kiln_ir::{Graph, ValueDef};
use kiln_runtime::npy;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn require(what: &str) -> bool {
    if std::env::var("KILN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1") {
        panic!("{what} missing");
    }
    eprintln!("SKIPPED: {what} missing");
    false
}

/// A canonical description of `g` by value names: inputs, outputs, constants (type and bytes)
/// and every live node (op with its attributes, input names, output names and types). Two
/// graphs with the same description compute the same function.
fn describe(g: &Graph) -> BTreeMap<String, String> {
    let mut g = g.clone();
    g.remove_dead_nodes();
    let name = |v: kiln_ir::ValueId| g.value(v).name.clone();
    let mut d = BTreeMap::new();
    for &i in &g.inputs {
        d.insert(format!("input {}", name(i)), g.ty(i).to_string());
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|&o| format!("{}: {}", name(o), g.ty(o)))
        .collect();
    d.insert("outputs".into(), outs.join(", "));
    for v in g.live_consts() {
        let ValueDef::Const(c) = &g.value(v).def else {
            unreachable!()
        };
        let h = c.bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        d.insert(
            format!("const {}", name(v)),
            format!("{} {} bytes fnv {h:016x}", g.ty(v), c.len()),
        );
    }
    for (_, n) in g.iter_nodes() {
        let ins: Vec<String> = n.inputs.iter().map(|&v| name(v)).collect();
        let outs: Vec<String> = n
            .outputs
            .iter()
            .map(|&v| format!("{}: {}", name(v), g.ty(v)))
            .collect();
        d.insert(
            format!("node {}", outs.join(", ")),
            format!("{:?}({})", n.op, ins.join(", ")),
        );
    }
    d
}

fn assert_same_graph(what: &str, a: &Graph, b: &Graph) {
    let (da, db) = (describe(a), describe(b));
    for (k, v) in &da {
        match db.get(k) {
            Some(w) => assert_eq!(v, w, "{what}: {k} differs after the AIR round trip"),
            None => panic!("{what}: {k} = {v} is missing after the AIR round trip"),
        }
    }
    for k in db.keys() {
        assert!(
            da.contains_key(k),
            "{what}: {k} appears after the AIR round trip"
        );
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `want` vs `got` within `atol + rtol * |want|`; returns the largest error.
fn close(what: &str, want: &[f32], got: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(want.len(), got.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let e = (w - g).abs();
        assert!(e <= atol + rtol * w.abs(), "{what}[{i}]: want {w}, got {g}");
        worst = worst.max(e);
    }
    worst
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// `kiln convert SRC -o X.air`, the graph read back equals `src_graph`, then `kiln build X.air
/// --emit exe` and run it on `inputs`; returns the outputs in order.
fn convert_build_run(
    name: &str,
    src: &Path,
    src_graph: &Graph,
    extra: &[&str],
    inputs: &[(String, PathBuf)],
    dir: &Path,
) -> Vec<Vec<f32>> {
    let airf = dir.join(format!("{name}.air"));
    let st = kiln()
        .arg("convert")
        .arg(src)
        .arg("-o")
        .arg(&airf)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{name}: kiln convert: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let back = pipeline::load(&airf, &LoadOptions::default()).unwrap();
    assert_same_graph(name, src_graph, &back);
    // the .air file, not the graph, goes through `kiln build`
    let exe = dir.join(format!("{name}_air"));
    let st = kiln()
        .arg("build")
        .arg(&airf)
        .args(["--emit", "exe", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{name}: kiln build .air: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = dir.join(format!("{name}_out"));
    let mut cmd = Command::new(&exe);
    for (n, p) in inputs {
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    let st = cmd.arg("--output-dir").arg(&out).output().unwrap();
    assert!(
        st.status.success(),
        "{name}: executable: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    back.outputs
        .iter()
        .map(|&o| {
            let f: String = back
                .value(o)
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            f32s(&npy::read(&out.join(format!("{f}.npy"))).unwrap().data)
        })
        .collect()
}

fn golden_onnx(name: &str) {
    let dir = root().join("golden/data").join(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let model = root().join("golden").join(meta["model"].as_str().unwrap());
    if !model.exists() && !require(&model.display().to_string()) {
        return;
    }
    let mut shapes = vec![];
    let mut inputs = vec![];
    for i in meta["inputs"].as_array().unwrap() {
        let n = i["name"].as_str().unwrap().to_string();
        let s: Vec<usize> = i["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        shapes.push((n.clone(), s));
        inputs.push((n, dir.join(i["file"].as_str().unwrap())));
    }
    let src = pipeline::load(
        &model,
        &LoadOptions {
            input_shapes: shapes.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let extra: Vec<String> = shapes
        .iter()
        .flat_map(|(n, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            [
                "--input-shape".to_string(),
                format!("{n}={}", dims.join(",")),
            ]
        })
        .collect();
    let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let outs = convert_build_run(name, &model, &src, &extra, &inputs, tmp.path());
    let want = meta["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), want.len(), "{name}: outputs");
    for (k, (o, w)) in outs.iter().zip(want).enumerate() {
        let w = f32s(
            &npy::read(&dir.join(w["file"].as_str().unwrap()))
                .unwrap()
                .data,
        );
        let e = close(&format!("{name} output {k}"), &w, o, 1e-5, 1e-4);
        eprintln!("{name}: .air executable output {k} matches ONNX Runtime, max |err| {e:.2e}");
    }
}

fn golden_mindspore(net: &str) {
    let dir = root().join("golden/mindspore").join(net);
    let src_file = dir.join("net.mindir");
    let src = pipeline::load(&src_file, &LoadOptions::default()).unwrap();
    let x = dir.join("input_0.npy");
    let name = src.value(src.inputs[0]).name.clone();
    let tmp = tempfile::tempdir().unwrap();
    let outs = convert_build_run(net, &src_file, &src, &[], &[(name, x)], tmp.path());
    let want = f32s(&npy::read(&dir.join("output_0.npy")).unwrap().data);
    let e = close(net, &want, &outs[0], 1e-5, 1e-5);
    eprintln!("{net}: .air executable matches MindSpore, max |err| {e:.2e}");
}

macro_rules! cases {
    ($f:ident: $($t:ident => $n:literal;)*) => {$(
        #[test]
        fn $t() {
            $f($n);
        }
    )*};
}

cases! { golden_onnx:
    air_lenet5 => "lenet5";
    air_tiny_ops => "tiny_ops";
    air_recurrent => "recurrent";
    air_encoder => "encoder";
    air_squeezenet => "squeezenet1_1";
    air_resnet18 => "resnet18";
    air_mobilenetv2 => "mobilenetv2";
    air_ppocr_det => "ppocr_det";
    air_ppocr_rec => "ppocr_rec";
    air_ppocr_cls => "ppocr_cls";
}

cases! { golden_mindspore:
    air_ms_lenet5 => "lenet5";
    air_ms_resnet_small => "resnet_small";
    air_ms_mobilenet_small => "mobilenet_small";
    air_ms_op_zoo => "op_zoo";
}

/// The MODEL_DEF partitions of the shared OM files: GraphEngine's own ModelDefs decode, list
/// their ops, and translate where kiln supports every op; the flow model is refused with its
/// reason.
#[test]
fn shared_om_model_defs() {
    let dir = root().join("../shared/testdata/om");
    if !dir.exists() && !require("../shared/testdata/om") {
        return;
    }
    let read = |f: &str| kiln_compiler::om::read(&dir.join(f));
    let md = |f: &str| {
        let om = read(f).unwrap();
        kiln_compiler::om::model_def(&om, f).unwrap()
    };
    // ATC's compiled model: 25 ops, fp16 device-layout weights
    let a3c = md("a3c_pong_atc.om");
    let h = air::import::op_histogram(&a3c);
    assert_eq!(h["Conv2D"], 3);
    assert_eq!(h["MatMulV2"], 2);
    assert_eq!(h["TransData"], 4);
    assert!(air::import::unsupported_ops(&a3c).is_empty());
    // GraphEngine's multi-model file: a root graph calling two sub-graphs, attribute names
    // compressed (om_compress_version)
    let multi = md("ge_multi_model.om");
    assert_eq!(multi.graph.len(), 3);
    let data = multi.graph[0]
        .op
        .iter()
        .find(|o| o.name == "data_2")
        .unwrap();
    assert!(
        data.attr.contains_key("index"),
        "compressed attribute names are decoded: {:?}",
        data.attr.keys().collect::<Vec<_>>()
    );
    let call = multi.graph[0]
        .op
        .iter()
        .find(|o| o.r#type == "PartitionedCall")
        .unwrap();
    assert_eq!(call.subgraph_name, ["sub_1"]);
    // its sub-graph 2 (Data -> Mul(const) -> NetOutput) translates and runs
    let konst = multi.graph[2]
        .op
        .iter()
        .find(|o| o.r#type == "Const")
        .unwrap();
    assert!(konst.attr.contains_key("value"));
    let sub = kiln_compiler::air::proto::ModelDef {
        graph: vec![multi.graph[2].clone()],
        ..Default::default()
    };
    let g =
        air::import::import_model(&sub, Source::new("sub_2", None), &Default::default()).unwrap();
    assert_eq!(g.num_live_nodes(), 1);
    // the root graph's Rank declares a float [2,2] output: a precise error
    let e = air::import::import_model(
        &multi,
        Source::new("ge_multi_model.om", None),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("node 'rank' (Rank)"), "{e}");
    // GraphEngine's root model: an op kiln does not have, listed with its node
    let root_md = md("ge_root_model.om");
    let e = air::import::import_model(
        &root_md,
        Source::new("ge_root_model.om", None),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unsupported ops: FakeOpNpu (nodes: fused_op1)"),
        "{e}"
    );
    // the flow model: refused with the reason
    let e = read("ge_flow_model.om").unwrap_err().to_string();
    assert!(e.contains("flow model"), "{e}");
}

/// A small AIR model written by kiln, then corrupted: every corruption is an error naming the
/// file (and node where there is one); `kiln build` exits non-zero and writes nothing.
#[test]
fn corrupt_air_files_are_clear_errors() {
    use kiln_compiler::air::proto::{ModelDef, attr_def::Value as AV};
    use prost::Message;
    let src = pipeline::load(
        &root().join("golden/mindspore/lenet5/net.mindir"),
        &LoadOptions::default(),
    )
    .unwrap();
    let md = air::export::export(&src).unwrap();
    let good = md.encode_to_vec();
    let tmp = tempfile::tempdir().unwrap();
    let load = |bytes: &[u8]| {
        air::decode(bytes::Bytes::copy_from_slice(bytes), "x.air").and_then(|m| {
            air::import::import_model(
                &m,
                Source::new("x.air", Some(tmp.path())),
                &Default::default(),
            )
        })
    };
    assert!(load(&good).is_ok());
    // every truncation and a spread of bit flips: errors or valid graphs, never a panic
    for cut in (0..good.len()).step_by((good.len() / 200).max(1)) {
        if let Ok(g) = load(&good[..cut]) {
            kiln_ir::verify::verify(&g).unwrap();
        }
    }
    for i in (0..good.len()).step_by((good.len() / 300).max(1)) {
        let mut b = good.clone();
        b[i] ^= 0x55;
        if let Ok(g) = load(&b) {
            kiln_ir::verify::verify(&g).unwrap();
        }
    }
    let mutate = |f: &dyn Fn(&mut ModelDef)| {
        let mut m = md.clone();
        f(&mut m);
        load(&m.encode_to_vec()).unwrap_err().to_string()
    };
    let conv = md.graph[0]
        .op
        .iter()
        .position(|o| o.r#type == "Conv2D")
        .unwrap();
    let conv_name = md.graph[0].op[conv].name.clone();
    // a dangling edge
    let e = mutate(&|m| m.graph[0].op[conv].input[1] = "nope:0".into());
    assert!(e.contains("x.air") && e.contains("no op 'nope'"), "{e}");
    // an output index the producer does not have
    let e = mutate(&|m| {
        let p = m.graph[0].op[conv].input[0]
            .rsplit_once(':')
            .unwrap()
            .0
            .to_string();
        m.graph[0].op[conv].input[0] = format!("{p}:7");
    });
    assert!(
        e.contains(&format!("node '{conv_name}'")) && e.contains("no output 7"),
        "{e}"
    );
    // a cycle
    let e = mutate(&|m| {
        let me = m.graph[0].op[conv].name.clone();
        m.graph[0].op[conv].input[0] = format!("{me}:0");
    });
    assert!(e.contains("cycle"), "{e}");
    // a dtype out of range in a constant's descriptor
    let e = mutate(&|m| {
        for o in &mut m.graph[0].op {
            if let Some(AV::T(t)) = o.attr.get_mut("value").and_then(|a| a.value.as_mut()) {
                t.desc.as_mut().unwrap().dtype = 99;
                break;
            }
        }
    });
    assert!(e.contains("element type code 99"), "{e}");
    // an external weight that is missing, or escapes the model's folder
    for (loc, want) in [
        ("air_weight/m/missing_file", "cannot open external data"),
        (
            "../outside",
            "must be a relative path inside the model directory",
        ),
        (
            "/etc/passwd",
            "must be a relative path inside the model directory",
        ),
    ] {
        let e = mutate(&|m| {
            for o in &mut m.graph[0].op {
                if let Some(AV::T(t)) = o.attr.get_mut("value").and_then(|a| a.value.as_mut()) {
                    t.data = Default::default();
                    o.attr.insert(
                        "location".into(),
                        kiln_compiler::air::proto::AttrDef {
                            value: Some(AV::S(loc.into())),
                        },
                    );
                    break;
                }
            }
        });
        assert!(e.contains(want), "{loc}: {e}");
    }
    // an unsupported op, listed with its node
    let e = mutate(&|m| m.graph[0].op[conv].r#type = "Conv2DFancy".into());
    assert!(e.contains("unsupported ops: Conv2DFancy"), "{e}");
    // the CLI: exit != 0, the file named, no output left behind
    let bad = tmp.path().join("bad.air");
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    let out = tmp.path().join("bad.so");
    let st = kiln()
        .arg("build")
        .arg(&bad)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("bad.air"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
}

/// Large-model layout: weights in `air_weight/<model>/...` files beside the `.air`, read back
/// through `location`/`length`.
#[test]
fn external_weights_round_trip() {
    let src = pipeline::load(
        &root().join("golden/mindspore/resnet_small/net.mindir"),
        &LoadOptions::default(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("m.air");
    air::export::write_file(
        &src,
        &f,
        &air::export::AirExportOptions {
            external_threshold: 0,
        },
    )
    .unwrap();
    let n = std::fs::read_dir(tmp.path().join("air_weight"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert!(n >= 10, "{n} weight files");
    assert!(std::fs::metadata(&f).unwrap().len() < 100_000);
    let back = pipeline::load(&f, &LoadOptions::default()).unwrap();
    assert_same_graph("resnet_small external", &src, &back);
}
