//! Ascend offline models (`kiln build --emit om`, the OM reader, `kiln run x.om`).
//!
//! - Every golden ONNX model and MindSpore golden net is built into an OM in three precision
//!   modes (`force_fp16`, `allow_mix_precision`, `must_keep_origin_dtype`; MindSpore's LeNet
//!   also `allow_fp32_to_fp16`). Netron (`../shared/tools/netron-check`, the PyPI wheel's own
//!   parsers under node) opens each file and lists every op but the constants; `kiln run
//!   model.om` reproduces the source's reference outputs (ONNX Runtime's, MindSpore's) within
//!   fp16 tolerance (rtol 1e-2 plus 1e-2 of the output's largest value), or 1e-5 (+1e-4
//!   relative) with `must_keep_origin_dtype`; and every packed weight in WEIGHTS_DATA equals,
//!   byte for byte, what an independent numpy implementation of FRACTAL_Z / FRACTAL_NZ
//!   (and NC1HWC0, on a synthetic tensor) makes of the same weights (`golden/ascend_pack.py`).
//! - ATC's own `a3c_pong_atc.om` runs on the CPU: its graph exported to ONNX runs in ONNX
//!   Runtime with the same outputs (the policy's probabilities too, made an extra output);
//!   its fp16 FRACTAL_Z / FRACTAL_NZ weights re-pack to ATC's bytes exactly (the padding is
//!   where kiln's layouts put it).
//! - The shared OM files: headers, partitions and graphs via `kiln inspect`, the flow model
//!   refused with its reason.
//! - Corrupt OMs (header fields out of range, partitions overlapping or past the end,
//!   overflowing sizes, truncation, a MODEL_DEF that is not protobuf, weights outside
//!   WEIGHTS_DATA) are clear errors, and the CLI writes nothing.
//!
//! Without the venv, the golden models, `../shared` or node, the checks that need them are
//! skipped with a message, unless `KILN_REQUIRE_GOLDEN=1` (set by CI) makes that a failure
//! (Netron is required only when `../shared/tools/netron-check` and node are present).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_compiler::air::proto::attr_def::Value as AV;
use kiln_compiler::air::proto::{ModelDef, OpDef};
use kiln_compiler::passes::OptOptions;
use kiln_compiler::pipeline::{self, LoadOptions, OmBuild};
use kiln_ir::{Graph, Layout, Op, ValueDef};
use kiln_runtime::npy::{self, Npy};
use kiln_target_om::precision::PrecisionMode;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn required() -> bool {
    std::env::var("KILN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1")
}

fn skip(msg: &str) {
    assert!(!required(), "{msg}");
    eprintln!("SKIPPED: {msg}");
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn python() -> Option<PathBuf> {
    let py = root().join(".venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    skip(&format!(
        "{} missing: run scripts/setup-python.sh",
        py.display()
    ));
    None
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn shared() -> PathBuf {
    root().join("../shared")
}

/// `../shared/tools/netron-check` on `file`, when it and node are present: the output, else
/// `None` (skipped: Netron checks need ../shared and node; scripts/setup-netron.sh installs
/// what the tool needs).
fn netron(file: &Path) -> Option<String> {
    let tool = shared().join("tools/netron-check");
    if !tool.exists() {
        skip("../shared/tools/netron-check missing");
        return None;
    }
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED: node is not installed (scripts/setup-netron.sh installs it)");
        return None;
    }
    let out = Command::new(&tool).arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "Netron rejects {}: {text}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text)
}

/// Netron opens `om` as a DaVinci OM and lists every op of its graph but the constants (which
/// it shows as initializers), by name. Returns the node count.
fn check_netron(om: &Path, md: &ModelDef) -> Option<usize> {
    let text = netron(om)?;
    assert!(
        text.starts_with("format: DaVinci OM"),
        "{}: {text}",
        om.display()
    );
    let ops: Vec<&OpDef> = md.graph[0]
        .op
        .iter()
        .filter(|o| o.r#type != "Const")
        .collect();
    let header = format!("graph {}: {} nodes", md.graph[0].name, ops.len());
    assert!(
        text.contains(&header),
        "{}: want '{header}' in {text}",
        om.display()
    );
    let listed: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    for op in &ops {
        assert!(
            listed.contains(&(op.r#type.as_str(), op.name.as_str())),
            "{}: Netron does not list {} '{}'",
            om.display(),
            op.r#type,
            op.name
        );
    }
    // the packed weights are initializers
    let packed = md.graph[0]
        .op
        .iter()
        .filter(|o| o.r#type == "Const" && layout_of(o).starts_with("FRACTAL"))
        .count();
    let inits = text.matches(":0<float").count();
    assert!(inits >= packed, "{}: {inits} initializers", om.display());
    Some(ops.len())
}

/// The GE format of a `Const` op's tensor.
fn layout_of(o: &OpDef) -> &str {
    match o.attr.get("value").and_then(|a| a.value.as_ref()) {
        Some(AV::T(t)) => t.desc.as_ref().map_or("", |d| d.layout.as_str()),
        _ => "",
    }
}

fn read_om(path: &Path) -> (ModelDef, bytes::Bytes) {
    let om = kiln_compiler::om::read(path).unwrap();
    let md = kiln_compiler::om::model_def(&om, &path.display().to_string()).unwrap();
    let w = om
        .partition(kiln_compiler::om::partition::WEIGHTS_DATA)
        .map(|p| p.data.clone())
        .unwrap_or_default();
    (md, w)
}

/// `kiln run OM` on `inputs`; the outputs by the OM graph's output order.
fn run_om(om: &Path, inputs: &[(String, PathBuf)], dir: &Path) -> Vec<Vec<f32>> {
    let mut cmd = kiln();
    cmd.arg("run").arg(om);
    for (n, p) in inputs {
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    let out = dir.join("out");
    let st = cmd.arg("--output-dir").arg(&out).output().unwrap();
    assert!(
        st.status.success(),
        "kiln run {}: {}",
        om.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    let g = pipeline::load(om, &LoadOptions::default()).unwrap();
    g.outputs
        .iter()
        .map(|&o| {
            let f: String = g
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
            let a = npy::read(&out.join(format!("{f}.npy"))).unwrap();
            assert_eq!(a.dtype, kiln_ir::DType::F32.abi_code(), "{f}: output dtype");
            f32s(&a.data)
        })
        .collect()
}

/// Largest |got - want| and largest |got - want| / max|want|; asserts each element within
/// `atol + rtol * |want|`.
fn compare(what: &str, want: &[f32], got: &[f32], atol: f32, rtol: f32) -> (f32, f32) {
    assert_eq!(want.len(), got.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    let mut worst = 0f32;
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let e = (w - g).abs();
        assert!(
            e <= atol + rtol * w.abs(),
            "{what}[{i}]: want {w}, got {g} (atol {atol}, rtol {rtol})"
        );
        worst = worst.max(e);
    }
    (worst, worst / scale)
}

/// Packing cases for `golden/ascend_pack.py`: every constant the Ascend `layout` pass packs
/// (a `relayout` of a constant) in the optimized graph, against the bytes `om` holds.
fn pack_cases(g: &Graph, om: &Path, fp16: bool, dir: &Path, tag: &str) -> Vec<serde_json::Value> {
    let mut og = g.clone();
    pipeline::optimize(
        &mut og,
        &OptOptions {
            layout: Some(std::sync::Arc::new(kiln_target_om::ascend::AscendLayouts)),
            ..Default::default()
        },
    )
    .unwrap();
    let (md, weights) = read_om(om);
    let consts: BTreeMap<String, &OpDef> = md.graph[0]
        .op
        .iter()
        .filter(|o| o.r#type == "Const")
        .filter_map(|o| Some((o.output_desc.first()?.name.clone(), o)))
        .collect();
    let mut cases = vec![];
    for (_, n) in og.iter_nodes() {
        let Op::Relayout { to } = n.op else { continue };
        let Some(src) = og.const_data(n.inputs[0]) else {
            continue;
        };
        let name = og.value(n.outputs[0]).name.clone();
        let op = consts
            .get(&name)
            .unwrap_or_else(|| panic!("{}: no Const '{name}'", om.display()));
        let Some(AV::T(t)) = op.attr.get("value").and_then(|a| a.value.as_ref()) else {
            panic!("{name}: no tensor")
        };
        let d = t.desc.as_ref().unwrap();
        let (off, len) = (d.data_offset as usize, d.weight_size as usize);
        assert!(off >= 512 && off % 512 == 0, "{name}: offset {off}");
        let packed = &weights[off..off + len];
        let ty = og.ty(n.inputs[0]);
        let k = cases.len();
        let srcf = dir.join(format!("{tag}_{k}_src.npy"));
        let binf = dir.join(format!("{tag}_{k}_packed.bin"));
        npy::write(
            &srcf,
            &Npy {
                dtype: kiln_ir::DType::F32.abi_code(),
                shape: ty.shape.clone(),
                data: src.as_ref().to_vec(),
            },
        )
        .unwrap();
        std::fs::write(&binf, packed).unwrap();
        let (layout, groups) = match to {
            Layout::FractalZ { groups, .. } => ("FRACTAL_Z", groups),
            Layout::FractalNz(_) => ("FRACTAL_NZ", 1),
            l => panic!("{name}: unexpected weight layout {l}"),
        };
        assert_eq!(d.layout, layout, "{name}");
        cases.push(serde_json::json!({
            "name": format!("{tag} {name}"),
            "layout": layout,
            "groups": groups,
            "dtype": if fp16 { "float16" } else { "float32" },
            "source": srcf,
            "packed": binf,
        }));
    }
    cases
}

/// Run `golden/ascend_pack.py` on the cases; every packed tensor must be byte-identical.
fn check_packing(cases: Vec<serde_json::Value>, dir: &Path) {
    let Some(py) = python() else { return };
    let m = dir.join("pack.json");
    std::fs::write(&m, serde_json::json!({ "cases": cases }).to_string()).unwrap();
    let out = Command::new(py)
        .arg(root().join("golden/ascend_pack.py"))
        .arg(&m)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "packing differs from numpy:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("identical").count(), cases.len(), "{text}");
}

const MODES: [PrecisionMode; 3] = [
    PrecisionMode::ForceFp16,
    PrecisionMode::AllowMixPrecision,
    PrecisionMode::MustKeepOriginDtype,
];

/// Build `g` into an OM in each mode, check it with Netron, run it with `kiln run` against
/// `want`, and check its packed weights against numpy.
fn om_case(
    name: &str,
    g: &Graph,
    modes: &[PrecisionMode],
    inputs: &[(String, PathBuf)],
    want: &[Vec<f32>],
    src_bytes: u64,
    fp16_band: Option<(f32, f32)>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = vec![];
    for &mode in modes {
        let om = tmp.path().join(format!("{name}_{}.om", mode.name()));
        let r = pipeline::emit_om(
            g,
            &om,
            name,
            &OmBuild {
                precision: mode,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name} {}: {e}", mode.name()));
        let (md, weights) = read_om(&om);
        assert_eq!(weights.len(), r.weight_size);
        // MODEL_INOUT_INFO describes the interface
        let file = kiln_compiler::om::read(&om).unwrap();
        let io = file
            .partition(kiln_compiler::om::partition::MODEL_INOUT_INFO)
            .expect("MODEL_INOUT_INFO");
        let (ins, outs) = kiln_target_om::om::parse_inout_info(&io.data).unwrap();
        assert_eq!(ins.len(), g.inputs.len());
        for (t, &v) in ins.iter().zip(&g.inputs) {
            assert_eq!(t.name, g.value(v).name);
            let dims: Vec<i64> = g.ty(v).shape.iter().map(|&d| d as i64).collect();
            assert_eq!(t.dims, dims);
            assert_eq!(t.size as usize, g.ty(v).size_bytes());
        }
        assert_eq!(outs.len(), g.outputs.len());
        assert_eq!(weights.len() % 512, 0);
        assert_eq!(
            md.attr.get("weight_size").and_then(|a| a.value.clone()),
            Some(AV::I(r.weight_size as i64))
        );
        let nodes = check_netron(&om, &md);
        let dir = tmp.path().join(mode.name());
        std::fs::create_dir_all(&dir).unwrap();
        let got = run_om(&om, inputs, &dir);
        assert_eq!(got.len(), want.len(), "{name}: outputs");
        let (atol_scale, rtol) = match mode {
            PrecisionMode::MustKeepOriginDtype => (0.0, 1e-4),
            _ => (1e-2, 1e-2),
        };
        for (k, (w, o)) in want.iter().zip(&got).enumerate() {
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            let atol = if atol_scale == 0.0 {
                1e-5
            } else {
                atol_scale * scale
            };
            let what = format!("{name} {} output {k}", mode.name());
            let (abs, rel) = match (fp16_band, atol_scale == 0.0) {
                // a deep network's fp16 weights: a bound on the worst element and on the mean
                (Some((max_abs, mean_abs)), false) => {
                    let d: Vec<f32> = w.iter().zip(o).map(|(a, b)| (a - b).abs()).collect();
                    let worst = d.iter().fold(0f32, |m, &x| m.max(x));
                    let mean = d.iter().sum::<f32>() / d.len() as f32;
                    let over = d
                        .iter()
                        .zip(w)
                        .filter(|&(&x, &v)| x > atol + rtol * v.abs())
                        .count();
                    assert!(
                        worst <= max_abs && mean <= mean_abs,
                        "{what}: max |err| {worst}, mean {mean} (bounds {max_abs}, {mean_abs})"
                    );
                    eprintln!(
                        "OM {what}: {over} of {} elements beyond 1e-2 + 1e-2 |want| (fp16 band: max {worst:.2e}, mean {mean:.2e})",
                        d.len()
                    );
                    (worst, worst / scale.max(1e-30))
                }
                _ => compare(&what, w, o, atol, rtol),
            };
            eprintln!(
                "OM {name} {}: {} bytes (source {src_bytes}), weights {:?}, Netron nodes {}, output {k} max abs {abs:.2e} rel {rel:.2e}",
                mode.name(),
                r.file_bytes,
                r.weights_by_format,
                nodes.map_or("-".into(), |n| n.to_string()),
            );
        }
        let fp16 = mode != PrecisionMode::MustKeepOriginDtype;
        cases.extend(pack_cases(g, &om, fp16, tmp.path(), mode.name()));
    }
    let has_products = g
        .iter_nodes()
        .any(|(_, n)| matches!(n.op, Op::Conv(_) | Op::Gemm(_) | Op::MatMul(_)));
    if has_products {
        assert!(!cases.is_empty(), "{name}: no packed weights");
    }
    if !cases.is_empty() {
        check_packing(cases, tmp.path());
    }
}

fn golden_onnx(name: &str) {
    let dir = root().join("golden/data").join(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let model = root().join("golden").join(meta["model"].as_str().unwrap());
    if !model.exists() {
        skip(&format!("{} missing", model.display()));
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
    let g = pipeline::load(
        &model,
        &LoadOptions {
            input_shapes: shapes,
            ..Default::default()
        },
    )
    .unwrap();
    let want: Vec<Vec<f32>> = meta["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            f32s(
                &npy::read(&dir.join(o["file"].as_str().unwrap()))
                    .unwrap()
                    .data,
            )
        })
        .collect();
    let size = std::fs::metadata(&model).unwrap().len();
    // PP-OCRv4 det: 487 ops deep with BatchNorm folded into the filters; with fp16 weights its
    // sigmoid map differs by up to ~0.03 on ~0.2 % of the pixels (the steep band of the
    // sigmoid), 7e-5 on average
    let band = (name == "ppocr_det").then_some((0.05, 5e-4));
    om_case(name, &g, &MODES, &inputs, &want, size, band);
}

fn golden_mindspore(net: &str, modes: &[PrecisionMode]) {
    let dir = root().join("golden/mindspore").join(net);
    let src = dir.join("net.mindir");
    let g = pipeline::load(&src, &LoadOptions::default()).unwrap();
    let x = dir.join("input_0.npy");
    let n = g.value(g.inputs[0]).name.clone();
    let want = vec![f32s(&npy::read(&dir.join("output_0.npy")).unwrap().data)];
    let size = std::fs::metadata(&src).unwrap().len();
    om_case(
        &format!("ms_{net}"),
        &g,
        modes,
        &[(n, x)],
        &want,
        size,
        None,
    );
}

macro_rules! cases {
    ($($t:ident => $n:literal;)*) => {$(
        #[test]
        fn $t() {
            golden_onnx($n);
        }
    )*};
}

cases! {
    om_lenet5 => "lenet5";
    om_tiny_ops => "tiny_ops";
    om_recurrent => "recurrent";
    om_encoder => "encoder";
    om_squeezenet => "squeezenet1_1";
    om_resnet18 => "resnet18";
    om_mobilenetv2 => "mobilenetv2";
    om_ppocr_det => "ppocr_det";
    om_ppocr_rec => "ppocr_rec";
    om_ppocr_cls => "ppocr_cls";
}

#[test]
fn om_ms_lenet5() {
    let mut modes = MODES.to_vec();
    modes.push(PrecisionMode::AllowFp32ToFp16);
    golden_mindspore("lenet5", &modes);
}

#[test]
fn om_ms_resnet_small() {
    golden_mindspore("resnet_small", &MODES);
}

#[test]
fn om_ms_mobilenet_small() {
    golden_mindspore("mobilenet_small", &MODES);
}

#[test]
fn om_ms_op_zoo() {
    golden_mindspore("op_zoo", &MODES);
}

/// NC1HWC0 (activations only in kiln's OMs, so no bytes in WEIGHTS_DATA): kiln's packing of a
/// tensor whose channels are not a multiple of C0, against numpy's.
#[test]
fn nc1hwc0_packing_matches_numpy() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = [2usize, 21, 3, 5];
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n)
        .flat_map(|i| ((i as f32) * 0.37 - 11.0).to_le_bytes())
        .collect();
    let packed = kiln_ir::layout::pack(Layout::Nc1hwc0(16), &shape, 4, &data).unwrap();
    let src = tmp.path().join("x.npy");
    npy::write(
        &src,
        &Npy {
            dtype: kiln_ir::DType::F32.abi_code(),
            shape: shape.to_vec(),
            data,
        },
    )
    .unwrap();
    let bin = tmp.path().join("x.bin");
    std::fs::write(&bin, &packed).unwrap();
    check_packing(
        vec![serde_json::json!({
            "name": "nc1hwc0 [2,21,3,5]", "layout": "NC1HWC0", "dtype": "float32",
            "source": src, "packed": bin,
        })],
        tmp.path(),
    );
}

/// ATC's own model on the CPU: `kiln run a3c_pong_atc.om` and its graph exported to ONNX (with
/// the policy's probabilities as an extra output) in ONNX Runtime agree; ATC's packed weights
/// have their padding exactly where kiln's layouts put it; Netron lists its 14 nodes.
#[test]
fn atc_model_runs_on_cpu() {
    let om = shared().join("testdata/om/a3c_pong_atc.om");
    if !om.exists() {
        skip("../shared/testdata/om/a3c_pong_atc.om missing");
        return;
    }
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (md, weights) = read_om(&om);
    if let Some(n) = check_netron(&om, &md) {
        assert_eq!(n, 14);
    }
    // ATC's weights: every FRACTAL_Z / FRACTAL_NZ tensor unpacks to its origin shape and packs
    // back to the same bytes (so its padding is zero exactly where kiln's layouts have it)
    let mut packed = 0;
    for o in md.graph[0].op.iter().filter(|o| o.r#type == "Const") {
        let Some(AV::T(t)) = o.attr.get("value").and_then(|a| a.value.as_ref()) else {
            continue;
        };
        let d = t.desc.as_ref().unwrap();
        let origin = match d.attr.get("origin_shape").and_then(|a| a.value.as_ref()) {
            Some(AV::List(l)) => l.i.iter().map(|&x| x as usize).collect::<Vec<_>>(),
            _ => continue,
        };
        let (layout, shape) = match d.layout.as_str() {
            // HWCN filters: [Cout, Cin, kh, kw]
            "FRACTAL_Z" => (
                Layout::FractalZ { c0: 16, groups: 1 },
                vec![origin[3], origin[2], origin[0], origin[1]],
            ),
            "FRACTAL_NZ" => (Layout::FractalNz(16), origin),
            _ => continue,
        };
        let bytes = &weights[d.data_offset as usize..(d.data_offset + d.weight_size) as usize];
        let logical = kiln_ir::layout::unpack(layout, &shape, 2, bytes).unwrap();
        assert_eq!(
            kiln_ir::layout::pack(layout, &shape, 2, &logical).unwrap(),
            bytes,
            "{}: {layout} padding",
            o.name
        );
        assert!(logical.iter().any(|&b| b != 0));
        packed += 1;
    }
    assert_eq!(packed, 5, "3 FRACTAL_Z filters, 2 FRACTAL_NZ matrices");
    // the graph read back, with the policy's probabilities as a second output
    let mut g = pipeline::load(&om, &LoadOptions::default()).unwrap();
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(g.ty(g.inputs[0]).shape, [1, 42, 42, 1]);
    let probs = g.find_value("W_0/actor/ap/Softmax").unwrap();
    g.outputs.push(probs);
    let onnx = tmp.path().join("a3c.onnx");
    kiln_compiler::onnx::export::write_file(&g, &onnx, &Default::default()).unwrap();
    let kir = tmp.path().join("a3c.kir");
    std::fs::write(&kir, kiln_ir::text::print(&g)).unwrap();
    // `kiln convert x.om -o x.onnx` works too
    let conv = tmp.path().join("a3c_convert.onnx");
    let st = kiln()
        .arg("convert")
        .arg(&om)
        .arg("-o")
        .arg(&conv)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // eight inputs: kiln run (the .om itself, and the graph with the extra output) vs ORT
    let mut cases = vec![];
    let mut ins = vec![];
    for k in 0..8u32 {
        let mut s = 0x2545_f491u32.wrapping_mul(k + 1);
        let data: Vec<u8> = (0..42 * 42)
            .flat_map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s >> 8) as f32 / (1u32 << 24) as f32).to_le_bytes()
            })
            .collect();
        let p = tmp.path().join(format!("x{k}.npy"));
        npy::write(
            &p,
            &Npy {
                dtype: kiln_ir::DType::F32.abi_code(),
                shape: vec![1, 42, 42, 1],
                data,
            },
        )
        .unwrap();
        for (m, tag) in [(&onnx, "ext"), (&conv, "conv")] {
            cases.push(serde_json::json!({
                "model": m, "inputs": [p], "out_dir": tmp.path().join(format!("ort_{tag}_{k}")),
            }));
        }
        ins.push(p);
    }
    let mpath = tmp.path().join("manifest.json");
    let rpath = tmp.path().join("result.json");
    std::fs::write(&mpath, serde_json::json!({ "cases": cases }).to_string()).unwrap();
    let st = Command::new(&py)
        .arg(root().join("scripts/ort_run.py"))
        .arg(&mpath)
        .arg(&rpath)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rpath).unwrap()).unwrap();
    let mut worst = 0f32;
    let mut actions = std::collections::BTreeSet::new();
    for (k, x) in ins.iter().enumerate() {
        for c in &res["cases"].as_array().unwrap()[2 * k..2 * k + 2] {
            assert_eq!(c["ort"], "ok", "{c}");
            assert_eq!(c["checker"], "ok", "{c}");
        }
        let ort = |case: usize, out: usize| {
            npy::read(Path::new(
                res["cases"][case]["outputs"][out].as_str().unwrap(),
            ))
            .unwrap()
        };
        let dir = tmp.path().join(format!("kiln_{k}"));
        let st = kiln()
            .arg("run")
            .arg(&kir)
            .arg("--input")
            .arg(x)
            .arg("--output-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let p = f32s(
            &npy::read(&dir.join("W_0_actor_ap_Softmax.npy"))
                .unwrap()
                .data,
        );
        let (e, _) = compare(
            "a3c probabilities",
            &f32s(&ort(2 * k, 1).data),
            &p,
            1e-5,
            1e-4,
        );
        worst = worst.max(e);
        // the action: kiln run on the .om, ORT on the graph and on `kiln convert`'s ONNX
        let dir = tmp.path().join(format!("om_{k}"));
        let st = kiln()
            .arg("run")
            .arg(&om)
            .arg("--input")
            .arg(x)
            .arg("--output-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let a = npy::read(&dir.join("out_a.npy")).unwrap();
        assert_eq!(a.data, ort(2 * k, 0).data, "a3c action, input {k}");
        assert_eq!(
            a.data,
            ort(2 * k + 1, 0).data,
            "a3c action (kiln convert), input {k}"
        );
        actions.insert(a.data.clone());
    }
    eprintln!(
        "a3c_pong_atc.om on the CPU vs ONNX Runtime: probabilities max |err| {worst:.2e}, actions equal ({} distinct)",
        actions.len()
    );
}

/// The four shared OM files through the CLI: headers, partitions and graphs printed, the flow
/// model refused with its reason.
#[test]
fn shared_om_files_inspect() {
    let dir = shared().join("testdata/om");
    if !dir.exists() {
        skip("../shared/testdata/om missing");
        return;
    }
    for (f, want) in [
        (
            "a3c_pong_atc.om",
            &[
                "version 0x10000000",
                "32-bit partition table",
                "TBE_KERNELS",
                "Conv2D",
            ][..],
        ),
        (
            "ge_root_model.om",
            &[
                "version 0x20000000",
                "64-bit partition table",
                "MODEL_INOUT_INFO input '_arg_0': dims [16], ge::DataType 3, ge::Format 2",
                "MODEL_INOUT_INFO output 'output_0_out_0': dims [-1]",
            ][..],
        ),
        ("ge_multi_model.om", &["3 model(s)", "PartitionedCall"][..]),
    ] {
        let st = kiln().arg("inspect").arg(dir.join(f)).output().unwrap();
        let text = String::from_utf8_lossy(&st.stdout);
        assert!(
            st.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        for w in want {
            assert!(text.contains(w), "{f}: no '{w}' in {text}");
        }
    }
    let st = kiln()
        .arg("inspect")
        .arg(dir.join("ge_flow_model.om"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && e.contains("flow model"), "{e}");
}

/// Corrupt OMs are clear errors naming the file, never panics, and the CLI writes nothing.
#[test]
fn corrupt_om_files_are_clear_errors() {
    let src = root().join("golden/mindspore/lenet5/net.mindir");
    let g = pipeline::load(&src, &LoadOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let good_path = tmp.path().join("good.om");
    pipeline::emit_om(&g, &good_path, "lenet", &OmBuild::default()).unwrap();
    let good = std::fs::read(&good_path).unwrap();
    assert!(pipeline::load(&good_path, &LoadOptions::default()).is_ok());
    let put32 =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    // table: u32 num, u32 pad, then {u32 type, u32 pad, u64 offset, u64 size} at 264 + 24k;
    // partitions MODEL_INOUT_INFO, MODEL_DEF, WEIGHTS_DATA, TASK_INFO
    let entry = |k: usize| 264 + 24 * k;
    let kinds: Vec<u32> = (0..4)
        .map(|k| u32::from_le_bytes(good[entry(k)..entry(k) + 4].try_into().unwrap()))
        .collect();
    assert_eq!(kinds, [8, 0, 1, 2]);
    let body = (good.len() - 256) as u64;
    let field = |k: usize, at: usize| {
        u64::from_le_bytes(good[entry(k) + at..entry(k) + at + 8].try_into().unwrap())
    };
    let md_off = field(1, 8);
    let md_len = field(1, 16);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![];
    let mut b = good.clone();
    put32(&mut b, 0, 0x1234_5678);
    cases.push(("bad magic", b, "not an OM file: magic"));
    let mut b = good.clone();
    put32(&mut b, 4, 255);
    cases.push(("header size", b, "header size 255"));
    let mut b = good.clone();
    put32(&mut b, 8, 0x7000_0000);
    cases.push(("version", b, "header version 0x70000000 is out of range"));
    let mut b = good.clone();
    b[82] = 9;
    cases.push(("model type", b, "model type 9 is out of range"));
    let mut b = good.clone();
    put64(&mut b, 184, body + 1);
    cases.push(("model_length", b, "the header says"));
    let mut b = good.clone();
    put32(&mut b, 156, 1000);
    cases.push(("model_num", b, "model_num 1000 is out of range"));
    let mut b = good.clone();
    put32(&mut b, 256, 0);
    cases.push(("no partitions", b, "partition count 0 is out of range"));
    let mut b = good.clone();
    put32(&mut b, 256, 7);
    cases.push(("partition count", b, "partition"));
    let mut b = good.clone();
    put32(&mut b, entry(1) + 4, 1);
    cases.push(("table padding", b, "nonzero padding"));
    let mut b = good.clone();
    put64(&mut b, entry(2) + 8, md_off + md_len - 16);
    cases.push(("overlap", b, "starts at"));
    let mut b = good.clone();
    put64(&mut b, entry(3) + 16, body * 4);
    cases.push(("past the end", b, "runs past the end of the file"));
    let mut b = good.clone();
    put64(&mut b, entry(3) + 8, u64::MAX - 8);
    cases.push(("offset overflow", b, "offset/size overflow"));
    let mut b = good.clone();
    put64(&mut b, entry(1) + 16, u64::MAX);
    cases.push(("size overflow", b, "overflow"));
    let mut b = good.clone();
    put32(&mut b, entry(3), 1);
    cases.push(("duplicate type", b, "appears twice"));
    let mut b = good[..good.len() - 100].to_vec();
    let len = (b.len() - 256) as u64;
    put64(&mut b, 184, len);
    cases.push(("truncated", b, "runs past the end of the file"));
    let mut b = good.clone();
    let md0 = 256 + 8 + 24 * 4 + md_off as usize;
    for x in &mut b[md0..md0 + 64] {
        *x = 0xff;
    }
    cases.push(("MODEL_DEF not protobuf", b, "MODEL_DEF"));
    // weights outside WEIGHTS_DATA: a constant's data_offset moved past its end
    let (mut md, _) = read_om(&good_path);
    for o in &mut md.graph[0].op {
        if let Some(AV::T(t)) = o.attr.get_mut("value").and_then(|a| a.value.as_mut())
            && t.data.is_empty()
        {
            t.desc.as_mut().unwrap().data_offset = 1 << 40;
            break;
        }
    }
    let mdb = prost::Message::encode_to_vec(&md);
    let (_, w) = read_om(&good_path);
    let b =
        kiln_target_om::om::container("lenet", Default::default(), &[(0, &mdb), (1, &w)]).unwrap();
    cases.push(("weights outside", b, "lie outside WEIGHTS_DATA"));
    for (what, bytes, want) in cases {
        let p = tmp.path().join("bad.om");
        std::fs::write(&p, &bytes).unwrap();
        let e = pipeline::load(&p, &LoadOptions::default())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("bad.om"), "{what}: {e}");
        for (args, out) in [
            (&["--emit", "so"][..], tmp.path().join("bad.so")),
            (&["--emit", "om"][..], tmp.path().join("bad_out.om")),
        ] {
            let st = kiln()
                .arg("build")
                .arg(&p)
                .args(args)
                .arg("-o")
                .arg(&out)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&st.stderr);
            assert!(
                !st.status.success() && err.contains("bad.om"),
                "{what}: {err}"
            );
            assert!(!err.contains("panicked"), "{what}: {err}");
            assert!(!out.exists(), "{what}: {} left behind", out.display());
        }
    }
    // every truncation and a spread of bit flips: errors or valid graphs, never a panic
    for cut in (0..good.len()).step_by((good.len() / 97).max(1)) {
        let p = tmp.path().join("cut.om");
        std::fs::write(&p, &good[..cut]).unwrap();
        if let Ok(g) = pipeline::load(&p, &LoadOptions::default()) {
            kiln_ir::verify::verify(&g).unwrap();
        }
    }
    for i in (0..good.len()).step_by((good.len() / 211).max(1)) {
        let mut b = good.clone();
        b[i] ^= 0x5a;
        let p = tmp.path().join("flip.om");
        std::fs::write(&p, &b).unwrap();
        if let Ok(g) = pipeline::load(&p, &LoadOptions::default()) {
            kiln_ir::verify::verify(&g).unwrap();
        }
    }
    // a failed OM build leaves nothing: an op with no GE equivalent
    let kir = tmp.path().join("x.kir");
    std::fs::write(
        &kir,
        "graph x {\n  input %a: f32[4]\n  %b = cum_sum(%a) {axis=0, exclusive=0, reverse=0} : f32[4]\n  output %b\n}\n",
    )
    .unwrap();
    let out = tmp.path().join("x.om");
    let atc = tmp.path().join("atc");
    let st = kiln()
        .arg("build")
        .arg(&kir)
        .args(["--emit", "om", "-o"])
        .arg(&out)
        .arg("--atc-config")
        .arg(&atc)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        !st.status.success() && err.contains("has no GE equivalent"),
        "{err}"
    );
    assert!(!out.exists() && !atc.join("x.air").exists());
    let _ = ValueDef::Input;
}

/// `--atc-config`: kiln's AIR, the fusion switch file reflecting `--fusion-switch`, AIPP and
/// the mix list, and the exact atc command.
#[test]
fn atc_option_files() {
    let src = root().join("golden/mindspore/lenet5/net.mindir");
    let tmp = tempfile::tempdir().unwrap();
    let sw = tmp.path().join("switch.json");
    std::fs::write(&sw, r#"{"fuse_conv_activation": "off"}"#).unwrap();
    let dir = tmp.path().join("atc");
    let out = tmp.path().join("lenet.om");
    let st = kiln()
        .arg("build")
        .arg(&src)
        .args(["--emit", "om", "--soc-version", "Ascend310P3"])
        .args(["--precision-mode", "allow_mix_precision", "--fusion-switch"])
        .arg(&sw)
        .args([
            "--aipp",
            "mean=123.675:116.28:103.53,std=58.395:57.12:57.375,format=YUV420SP_U8",
        ])
        .arg("--atc-config")
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "{err}");
    let om = kiln_compiler::om::read(&out).unwrap();
    assert_eq!(om.header.platform_version, "Ascend310P3");
    assert_eq!(om.header.version, 0x2000_0000);
    assert!(om.wide_table);
    let fs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fusion_switch.cfg")).unwrap())
            .unwrap();
    assert_eq!(fs["Switch"]["UBFusion"]["TbeConvElemwiseFusionPass"], "off");
    assert_eq!(fs["Switch"]["GraphFusion"]["ConvBatchnormFusionPass"], "on");
    let aipp = std::fs::read_to_string(dir.join("aipp.cfg")).unwrap();
    for w in [
        "aipp_mode : static",
        "input_format : YUV420SP_U8",
        "csc_switch : true",
        "min_chn_0 : 123.675",
        "src_image_size_w : 32",
    ] {
        assert!(aipp.contains(w), "{w}: {aipp}");
    }
    let mix: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("mixlist.json")).unwrap()).unwrap();
    assert!(
        mix["black-list"]["to-add"]
            .as_array()
            .unwrap()
            .contains(&"SoftmaxV2".into())
    );
    let sh = std::fs::read_to_string(dir.join("atc.sh")).unwrap();
    assert!(
        sh.contains(
            "atc --framework=1 --model=net.air --output=net --soc_version=Ascend310P3 --precision_mode=allow_mix_precision --fusion_switch_file=fusion_switch.cfg --insert_op_conf=aipp.cfg --modify_mixlist=mixlist.json"
        ),
        "{sh}"
    );
    // the AIR is the graph as loaded, and reads back
    let air = pipeline::load(&dir.join("net.air"), &LoadOptions::default()).unwrap();
    let g = pipeline::load(&src, &LoadOptions::default()).unwrap();
    assert_eq!(air.num_live_nodes(), g.num_live_nodes());
    // bad options are errors
    for (args, want) in [
        (&["--soc-version", "Ascend999"][..], "unknown SoC version"),
        (&["--precision-mode", "fp8"][..], "unknown precision mode"),
        (&["--aipp", "mean=1,std=0"][..], "std must not be 0"),
        (&["--aipp", "format=BGR"][..], "unknown format"),
    ] {
        let st = kiln()
            .arg("build")
            .arg(&src)
            .args(["--emit", "om"])
            .args(args)
            .arg("-o")
            .arg(tmp.path().join("y.om"))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&st.stderr);
        assert!(!st.status.success() && e.contains(want), "{want}: {e}");
    }
}

/// `--aipp` with RGB888_U8: the OM takes 8-bit NHWC pixels and its `Aipp` op does the
/// normalization; `kiln run` on pixels equals the source model on `(x - mean) / std` in NCHW.
#[test]
fn aipp_in_the_om() {
    let src = root().join("golden/mindspore/mobilenet_small/net.mindir");
    let tmp = tempfile::tempdir().unwrap();
    let g = pipeline::load(&src, &LoadOptions::default()).unwrap();
    let (mean, std) = ([123.675f32, 116.28, 103.53], [58.395f32, 57.12, 57.375]);
    let om = tmp.path().join("m.om");
    pipeline::emit_om(
        &g,
        &om,
        "m",
        &OmBuild {
            precision: PrecisionMode::MustKeepOriginDtype,
            aipp: Some(
                format!(
                    "mean={}:{}:{},std={}:{}:{},format=RGB888_U8",
                    mean[0], mean[1], mean[2], std[0], std[1], std[2]
                )
                .parse()
                .unwrap(),
            ),
            ..Default::default()
        },
    )
    .unwrap();
    let (md, _) = read_om(&om);
    assert!(md.graph[0].op.iter().any(|o| o.r#type == "Aipp"));
    check_netron(&om, &md);
    // pixels [1, 16, 16, 3] and the float input they stand for, [1, 3, 16, 16]
    let (h, w) = (16usize, 16usize);
    let pix: Vec<u8> = (0..h * w * 3)
        .map(|i| ((i * 37 + 11) % 256) as u8)
        .collect();
    let mut x = vec![0f32; 3 * h * w];
    for y in 0..h {
        for xx in 0..w {
            for c in 0..3 {
                let p = pix[(y * w + xx) * 3 + c] as f32;
                x[c * h * w + y * w + xx] = (p - mean[c]) / std[c];
            }
        }
    }
    let pp = tmp.path().join("pix.npy");
    npy::write(
        &pp,
        &Npy {
            dtype: kiln_ir::DType::U8.abi_code(),
            shape: vec![1, h, w, 3],
            data: pix,
        },
    )
    .unwrap();
    let xp = tmp.path().join("x.npy");
    npy::write(
        &xp,
        &Npy {
            dtype: kiln_ir::DType::F32.abi_code(),
            shape: vec![1, 3, h, w],
            data: x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
    )
    .unwrap();
    let name = g.value(g.inputs[0]).name.clone();
    let got = run_om(&om, &[(name.clone(), pp)], &tmp.path().join("om"));
    // the source model on the normalized input
    let kir = tmp.path().join("src.kir");
    std::fs::write(&kir, kiln_ir::text::print(&g)).unwrap();
    let want = run_om_like(&kir, &g, &[(name, xp)], &tmp.path().join("src"));
    let (abs, _) = compare("aipp", &want[0], &got[0], 1e-5, 1e-4);
    eprintln!("AIPP OM on 8-bit pixels vs the source on normalized input: max |err| {abs:.2e}");
}

/// `kiln run FILE` for any model file whose graph is `g`; outputs in `g`'s order.
fn run_om_like(file: &Path, g: &Graph, inputs: &[(String, PathBuf)], dir: &Path) -> Vec<Vec<f32>> {
    let mut cmd = kiln();
    cmd.arg("run").arg(file);
    for (n, p) in inputs {
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    let st = cmd.arg("--output-dir").arg(dir).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    g.outputs
        .iter()
        .map(|&o| {
            let f: String = g
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
            f32s(&npy::read(&dir.join(format!("{f}.npy"))).unwrap().data)
        })
        .collect()
}
