//! ONNX backend node tests (`onnx==1.22.0` ships them under `onnx/backend/test/data/node`),
//! each case compiled by the CPU back end (JIT) and compared with its recorded outputs at the
//! suite's tolerances (rtol 1e-3, atol 1e-7; exact for integers and booleans).
//!
//! `tests/conformance/node.txt` lists every case as `pass`, `fail <why>` or `unsupported <why>`.
//! The test fails when a listed pass regresses, or a case is missing from the file;
//! `UPDATE_EXPECT=1` rewrites the file from the current results.

use kiln_ir::interp::{Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The node test directory: `$KILN_ONNX_NODE_DIR`, or the project's `.venv`.
fn node_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("KILN_ONNX_NODE_DIR") {
        return Some(PathBuf::from(d));
    }
    let lib = root().join(".venv/lib");
    for e in std::fs::read_dir(lib).ok()?.flatten() {
        let d = e.path().join("site-packages/onnx/backend/test/data/node");
        if d.is_dir() {
            return Some(d);
        }
    }
    None
}

fn sorted_pb(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| {
        let n = p.file_stem().unwrap().to_string_lossy().into_owned();
        n.rsplit('_')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or(0)
    });
    v
}

enum Outcome {
    Pass,
    Fail(String),
    Unsupported(String),
}

fn one_line(s: &str) -> String {
    let s = s.lines().next().unwrap_or("").replace('\t', " ");
    if s.len() > 160 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(157).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

fn close(want: &Tensor, got: &Tensor) -> Result<(), String> {
    if want.shape != got.shape {
        return Err(format!("shape {:?} vs {:?}", got.shape, want.shape));
    }
    let check = |a: &[f64], b: &[f64]| -> Result<(), String> {
        for (i, (w, g)) in a.iter().zip(b).enumerate() {
            let ok = (w.is_nan() && g.is_nan()) || w == g || (w - g).abs() <= 1e-7 + 1e-3 * w.abs();
            if !ok {
                return Err(format!("element {i}: got {g}, want {w}"));
            }
        }
        Ok(())
    };
    match (&want.data, &got.data) {
        (TensorData::F32(a), TensorData::F32(b)) => check(
            &a.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &b.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        ),
        (TensorData::F64(a), TensorData::F64(b)) => check(a, b),
        (a, b) if a == b => Ok(()),
        _ => Err("values differ".into()),
    }
}

/// Name of the graph input that the front end needs as a compile-time constant, from its
/// "input N ('NAME') must be a constant" diagnostic.
fn needs_constant(msg: &str) -> Option<String> {
    let rest = msg.split_once("('")?.1;
    let (name, tail) = rest.split_once("')")?;
    tail.contains("must be a constant")
        .then(|| name.to_string())
}

fn run_case(dir: &Path) -> Outcome {
    let model = dir.join("model.onnx");
    let data = dir.join("test_data_set_0");
    // Inputs the static compiler must know (axes, shapes, pads given as graph inputs) are frozen
    // to the test's values, as `kiln build --freeze NAME=FILE` does; they then leave the
    // compiled signature.
    let mut opts = kiln_compiler::pipeline::LoadOptions::default();
    let g = loop {
        match kiln_compiler::pipeline::load(&model, &opts) {
            Ok(g) => break g,
            Err(e) => {
                let msg = e.to_string();
                if let Some(name) = needs_constant(&msg)
                    && !opts.frozen_inputs.iter().any(|f| f.0 == name)
                    && let Some(t) = input_by_name(&model, &data, &name)
                {
                    opts.frozen_inputs.push((name, t.0, t.1));
                    continue;
                }
                return Outcome::Unsupported(one_line(
                    &msg.replace(&model.display().to_string(), "model"),
                ));
            }
        }
    };
    let jit = match kiln_target_cpu::compile_jit(&g, "case") {
        Ok(j) => j,
        Err(e) => return Outcome::Unsupported(one_line(&e.to_string())),
    };
    let m = unsafe {
        kiln_runtime::Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel)
    }
    .unwrap();
    let read =
        |p: &PathBuf| kiln_compiler::onnx::read_tensor(p).map_err(|e| one_line(&e.to_string()));
    let ins: Vec<_> = match sorted_pb(&data, "input_")
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(e) => return Outcome::Unsupported(format!("test data: {e}")),
    };
    // Frozen inputs are no longer model inputs.
    let names = graph_input_names(&model);
    let ins: Vec<_> = ins
        .into_iter()
        .enumerate()
        .filter(|(k, _)| {
            names
                .get(*k)
                .is_none_or(|n| !opts.frozen_inputs.iter().any(|f| &f.0 == n))
        })
        .map(|(_, t)| t)
        .collect();
    let want: Vec<_> = match sorted_pb(&data, "output_")
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(e) => return Outcome::Unsupported(format!("test data: {e}")),
    };
    if ins.len() != m.inputs().len() || want.len() != m.outputs().len() {
        return Outcome::Unsupported(format!(
            "{} inputs/{} outputs in test data, model has {}/{}",
            ins.len(),
            want.len(),
            m.inputs().len(),
            m.outputs().len()
        ));
    }
    let in_bytes: Vec<&[u8]> = ins.iter().map(|(_, d)| d.bytes()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
    let mut ws = m.workspace().unwrap();
    {
        let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        if let Err(e) = m.run(&in_bytes, &mut refs, &mut ws) {
            return Outcome::Fail(one_line(&e.to_string()));
        }
    }
    for (k, ((ty, d), got)) in want.iter().zip(&outs).enumerate() {
        if !ty.dtype.is_float() {
            // integers and booleans: exact
            if d.bytes() != got.as_slice() {
                return Outcome::Fail(format!("output {k}: values differ"));
            }
            continue;
        }
        if matches!(ty.dtype, kiln_ir::DType::F16 | kiln_ir::DType::BF16) {
            let f = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(2)
                    .map(|c| {
                        let u = u16::from_le_bytes([c[0], c[1]]);
                        if ty.dtype == kiln_ir::DType::F16 {
                            half::f16::from_bits(u).to_f32()
                        } else {
                            half::bf16::from_bits(u).to_f32()
                        }
                    })
                    .collect()
            };
            let (w, g) = (
                Tensor::f32(ty.shape.clone(), f(d.bytes())),
                Tensor::f32(ty.shape.clone(), f(got)),
            );
            if let Err(e) = close(&w, &g) {
                return Outcome::Fail(format!("output {k}: {e}"));
            }
            continue;
        }
        let (Ok(w), Ok(g)) = (Tensor::from_const(ty, d), Tensor::from_bytes(ty, got)) else {
            return Outcome::Unsupported(format!("output {k}: dtype {} not comparable", ty.dtype));
        };
        if let Err(e) = close(&w, &g) {
            return Outcome::Fail(format!("output {k}: {e}"));
        }
    }
    Outcome::Pass
}

/// Names of the ONNX graph's inputs (initializers excluded), in order.
fn graph_input_names(model: &Path) -> Vec<String> {
    use prost::Message;
    let Ok(bytes) = std::fs::read(model) else {
        return Vec::new();
    };
    let Ok(m) = kiln_compiler::onnx::proto::ModelProto::decode(bytes.as_slice()) else {
        return Vec::new();
    };
    let g = m.graph.unwrap_or_default();
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name()).collect();
    g.input
        .iter()
        .map(|i| i.name().to_string())
        .filter(|n| !inits.contains(&n.as_str()))
        .collect()
}

/// The test data for graph input `name`.
fn input_by_name(
    model: &Path,
    data: &Path,
    name: &str,
) -> Option<(kiln_ir::TensorType, kiln_ir::ConstData)> {
    let k = graph_input_names(model).iter().position(|n| n == name)?;
    let p = sorted_pb(data, "input_").into_iter().nth(k)?;
    kiln_compiler::onnx::read_tensor(&p).ok()
}

#[test]
fn onnx_node_tests() {
    let Some(dir) = node_dir() else {
        if std::env::var("KILN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1") {
            panic!(
                "ONNX node tests not found: run scripts/setup-python.sh (onnx==1.22.0) or set KILN_ONNX_NODE_DIR"
            );
        }
        eprintln!("SKIPPED: ONNX node tests not found (run scripts/setup-python.sh)");
        return;
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    let mut results = BTreeMap::new();
    for c in &cases {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        let out = match std::panic::catch_unwind(|| run_case(c)) {
            Ok(o) => o,
            Err(p) => Outcome::Fail(format!(
                "panic: {}",
                one_line(
                    p.downcast_ref::<String>()
                        .map(|s| s.as_str())
                        .or(p.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                )
            )),
        };
        results.insert(name, out);
    }
    let line = |n: &str, o: &Outcome| match o {
        Outcome::Pass => format!("{n}\tpass"),
        Outcome::Fail(w) => format!("{n}\tfail\t{w}"),
        Outcome::Unsupported(w) => format!("{n}\tunsupported\t{w}"),
    };
    let pass = results
        .values()
        .filter(|o| matches!(o, Outcome::Pass))
        .count();
    let fail = results
        .values()
        .filter(|o| matches!(o, Outcome::Fail(_)))
        .count();
    eprintln!(
        "ONNX node tests: {} cases, {pass} pass, {fail} fail, {} unsupported",
        results.len(),
        results.len() - pass - fail
    );
    let file = root().join("tests/conformance/node.txt");
    if std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1") {
        let mut text = String::from(
            "# ONNX backend node tests (onnx 1.22.0) through kiln's compiled CPU path.\n# Generated by `UPDATE_EXPECT=1 cargo test -p kiln-tests --test conformance`; do not edit by hand.\n",
        );
        for (n, o) in &results {
            text.push_str(&line(n, o));
            text.push('\n');
        }
        std::fs::write(&file, text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file)
        .expect("tests/conformance/node.txt (generate with UPDATE_EXPECT=1)");
    let mut listed = BTreeMap::new();
    for l in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut it = l.splitn(3, '\t');
        listed.insert(
            it.next().unwrap().to_string(),
            it.next().unwrap_or("").to_string(),
        );
    }
    let mut problems = Vec::new();
    for (n, o) in &results {
        match listed.get(n).map(String::as_str) {
            None => problems.push(format!("{n}: not listed in node.txt (now: {})", line(n, o))),
            Some("pass") if !matches!(o, Outcome::Pass) => {
                problems.push(format!("{n}: regressed: {}", line(n, o)))
            }
            _ => {}
        }
    }
    let newly: Vec<_> = results
        .iter()
        .filter(|(n, o)| matches!(o, Outcome::Pass) && listed.get(*n).is_some_and(|s| s != "pass"))
        .map(|(n, _)| n.clone())
        .collect();
    if !newly.is_empty() {
        eprintln!(
            "{} cases now pass but are not listed as pass (UPDATE_EXPECT=1 to record): {}",
            newly.len(),
            newly.join(", ")
        );
    }
    assert!(
        problems.is_empty(),
        "{} conformance problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
