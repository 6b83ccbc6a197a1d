//! The `com.microsoft` contrib ops ONNX Runtime's tools write, checked against ONNX Runtime:
//! `contrib/make_cases.py` (run with the project venv) builds one model per op variant and two
//! models made by ORT's own tools (the golden encoder fused by `onnxruntime.transformers`'
//! optimizer, then dynamically quantized), and stores ORT's outputs; kiln compiles each model
//! (-O2, JIT) and must reproduce them within each case's tolerance.

use std::path::{Path, PathBuf};

use kiln_compiler::passes::OptOptions;
use kiln_compiler::pipeline::{self, LoadOptions};
use kiln_runtime::{Model, npy};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn values(a: &npy::Npy) -> Vec<f64> {
    let d = &a.data;
    match a.dtype {
        1 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        2 => d.iter().map(|&b| b as f64).collect(),
        3 => d.iter().map(|&b| b as i8 as f64).collect(),
        7 => d
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        t => panic!("output dtype code {t}"),
    }
}

#[test]
fn contrib_ops_match_onnx_runtime() {
    let py = root().join(".venv/bin/python");
    if !py.exists() {
        assert!(
            std::env::var("KILN_REQUIRE_GOLDEN").map_or(true, |v| v != "1"),
            "{} missing",
            py.display()
        );
        eprintln!(
            "SKIPPED: {} missing: run scripts/setup-python.sh",
            py.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(&py)
        .arg(root().join("compiler/tests/contrib/make_cases.py"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "make_cases.py: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("cases.json")).unwrap())
            .unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 35, "{} cases", cases.len());
    let mut failures = vec![];
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let res = std::panic::catch_unwind(|| run_case(c));
        match res {
            Ok(Ok(worst)) => eprintln!("{name}: matches ONNX Runtime, max |err| {worst:.2e}"),
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn run_case(c: &serde_json::Value) -> Result<f64, String> {
    let model = PathBuf::from(c["model"].as_str().unwrap());
    let mut g = pipeline::load(&model, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let opts = OptOptions {
        layout: pipeline::TargetOpts::default().layout_target().unwrap(),
        ..Default::default()
    };
    pipeline::optimize(&mut g, &opts).map_err(|e| e.to_string())?;
    let j = kiln_target_cpu::compile_jit(&g, "c").map_err(|e| e.to_string())?;
    // SAFETY: the descriptor lives as long as `j`.
    let m = unsafe { Model::from_raw(j.descriptor() as *const kiln_runtime::KilnModel) }
        .map_err(|e| e.to_string())?;
    let ins: Vec<Vec<u8>> = c["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| npy::read(Path::new(p.as_str().unwrap())).unwrap().data)
        .collect();
    let ins_ref: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
    let mut ws = m.workspace().map_err(|e| e.to_string())?;
    let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    m.run(&ins_ref, &mut refs, &mut ws)
        .map_err(|e| e.to_string())?;
    let (atol, rtol) = (c["atol"].as_f64().unwrap(), c["rtol"].as_f64().unwrap());
    let want_files = c["outputs"].as_array().unwrap();
    if want_files.len() != outs.len() {
        return Err(format!(
            "{} outputs, ORT has {}",
            outs.len(),
            want_files.len()
        ));
    }
    let mut worst = 0f64;
    for (k, (o, w)) in outs.iter().zip(want_files).enumerate() {
        let want = npy::read(Path::new(w.as_str().unwrap())).unwrap();
        let got = npy::Npy {
            dtype: want.dtype,
            shape: want.shape.clone(),
            data: o.clone(),
        };
        let (w, g) = (values(&want), values(&got));
        for (i, (a, b)) in w.iter().zip(&g).enumerate() {
            let e = (a - b).abs();
            if e > atol + rtol * a.abs() || e.is_nan() {
                return Err(format!("output {k}[{i}]: ORT {a}, kiln {b}"));
            }
            worst = worst.max(e);
        }
    }
    Ok(worst)
}
