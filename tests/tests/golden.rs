//! Golden models: ONNX models built by `golden/make_golden.py` (standard CNN topologies with
//! fixed random weights, and the real PaddleOCR models) compiled by kiln and compared with the
//! ONNX Runtime outputs stored in `golden/data/`.
//!
//! The `.onnx` files are large and git-ignored; `.ci/run` regenerates them. Without them each
//! case is skipped with a message, unless `KILN_REQUIRE_GOLDEN=1` (set by CI) makes that a failure.

use kiln_compiler::pipeline::{self, LoadOptions};
use kiln_runtime::{Model, npy};
use std::path::{Path, PathBuf};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Case {
    name: String,
    model: PathBuf,

    shapes: Vec<(String, Vec<usize>)>,
    /// Inputs made constants (`--freeze NAME=FILE.npy`; meta.json's `freeze`).
    frozen: Vec<(String, kiln_ir::TensorType, kiln_ir::ConstData)>,
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    output_names: Vec<String>,
}

fn case(name: &str) -> Option<Case> {
    let dir = root().join("golden/data").join(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).expect("meta.json"))
            .unwrap();
    let model = root().join("golden").join(meta["model"].as_str().unwrap());
    if !model.exists() {
        let msg = format!(
            "golden model {} missing: run `.venv/bin/python golden/make_golden.py --only-models --paddleocr --silero`",
            model.display()
        );
        if std::env::var("KILN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED {name}: {msg}");
        return None;
    }
    let ios = |k: &str| -> Vec<serde_json::Value> { meta[k].as_array().unwrap().clone() };
    let shapes = ios("inputs")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    let files = |k: &str| {
        ios(k)
            .iter()
            .map(|i| dir.join(i["file"].as_str().unwrap()))
            .collect()
    };
    let frozen = meta["freeze"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|i| {
                    let spec = format!(
                        "{}={}",
                        i["name"].as_str().unwrap(),
                        dir.join(i["file"].as_str().unwrap()).display()
                    );
                    pipeline::parse_freeze(&spec).unwrap()
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Case {
        name: name.into(),
        model,
        shapes,
        frozen,
        inputs: files("inputs"),
        output_names: ios("outputs")
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect(),
        outputs: files("outputs"),
    })
}

fn compare(name: &str, k: usize, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{name}: output {k} length");
    let mut worst = (0.0f32, 0usize);
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let err = (w - g).abs();
        assert!(
            err <= ATOL + RTOL * w.abs(),
            "{name}: output {k}[{i}]: ORT {w}, kiln {g} (|err| {err})"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    eprintln!(
        "{name}: output {k}: {} values match ORT, max |err| {:.2e}",
        want.len(),
        worst.0
    );
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn run_model(m: &Model, c: &Case) -> Vec<Vec<u8>> {
    run_model_pool(m, c, None)
}

fn run_model_pool(m: &Model, c: &Case, pool: Option<&kiln_runtime::ThreadPool>) -> Vec<Vec<u8>> {
    let ins: Vec<Vec<u8>> = c
        .inputs
        .iter()
        .map(|p| npy::read(p).unwrap().data)
        .collect();
    let ins_ref: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
    let mut ws = m.workspace().unwrap();
    let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    m.run_pool(&ins_ref, &mut refs, &mut ws, pool).unwrap();
    outs
}

/// The compiled model keeps the ONNX model's input and output names.
fn check_names(m: &Model, c: &Case) {
    let ins: Vec<String> = m.inputs().into_iter().map(|i| i.name).collect();
    let want: Vec<String> = c.shapes.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(ins, want, "{}: input names", c.name);
    let outs: Vec<String> = m.outputs().into_iter().map(|o| o.name).collect();
    assert_eq!(outs, c.output_names, "{}: output names", c.name);
}

fn check_outputs(c: &Case, outs: &[Vec<u8>], how: &str) {
    assert_eq!(outs.len(), c.outputs.len(), "{}: output count", c.name);
    for (k, (o, p)) in outs.iter().zip(&c.outputs).enumerate() {
        let want = npy::read(p).unwrap();
        compare(
            &format!("{} ({how})", c.name),
            k,
            &f32s(&want.data),
            &f32s(o),
        );
    }
}

/// Compile in memory (JIT) and compare with ORT.
fn jit(name: &str) {
    let Some(c) = case(name) else { return };
    let g = pipeline::load(
        &c.model,
        &LoadOptions {
            input_shapes: c.shapes.clone(),
            frozen_inputs: c.frozen.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let j = kiln_target_cpu::compile_jit(&g, name).unwrap();
    let m = unsafe { Model::from_raw(j.descriptor() as *const kiln_runtime::KilnModel) }.unwrap();
    check_names(&m, &c);
    let outs = run_model(&m, &c);
    check_outputs(&c, &outs, "jit");
}

/// Compile at -O0, -O1 and -O2 (JIT): each memory plan passes `memplan::check`, every level
/// matches ORT, and -O0 matches -O2; -O2 folds every BatchNormalization.
fn opt_levels(name: &str) {
    use kiln_compiler::passes::{OptLevel, OptOptions};
    let Some(c) = case(name) else { return };
    let g0 = pipeline::load(
        &c.model,
        &LoadOptions {
            input_shapes: c.shapes.clone(),
            frozen_inputs: c.frozen.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut outs = Vec::new();
    for level in [OptLevel::O0, OptLevel::O1, OptLevel::O2] {
        let mut g = g0.clone();
        // as `kiln build` runs it: with the host target's layout model
        let opts = OptOptions {
            level,
            layout: pipeline::TargetOpts::default().layout_target().unwrap(),
            ..Default::default()
        };
        pipeline::optimize(&mut g, &opts).unwrap();
        if level == OptLevel::O2 {
            // every BatchNormalization of the golden models follows a Conv, Gemm or
            // ConvTranspose (PP-OCR det: lowered to GEMM + pixel shuffle, with a bias Add) and
            // is folded into its weights
            for (_, n) in g.iter_nodes() {
                assert!(
                    !matches!(n.op, kiln_ir::Op::BatchNorm { .. }),
                    "{name}: {} not folded at -O2",
                    n.name
                );
            }
        }
        // the memory plan the back end uses never lets two live buffers share a byte
        let plan = kiln_target_cpu::plan(&g);
        kiln_ir::memplan::check(&g, &plan)
            .unwrap_or_else(|e| panic!("{name} {level:?}: memory plan: {e}"));
        assert!(plan.workspace_size <= plan.naive_size, "{name} {level:?}");
        let j = kiln_target_cpu::compile_jit(&g, name).unwrap();
        let m =
            unsafe { Model::from_raw(j.descriptor() as *const kiln_runtime::KilnModel) }.unwrap();
        check_names(&m, &c);
        let o = run_model(&m, &c);
        check_outputs(&c, &o, &format!("jit {level:?}"));
        outs.push(o);
    }
    for (k, (a, b)) in outs[0].iter().zip(&outs[2]).enumerate() {
        compare(&format!("{name} -O0 vs -O2"), k, &f32s(a), &f32s(b));
    }
}

/// A compiled `.so` needs nothing beyond libc and libm (`ldd`, where available).
fn assert_standalone(so: &std::path::Path) {
    let Ok(out) = std::process::Command::new("ldd").arg(so).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let lib = line.split_whitespace().next().unwrap_or("");
        assert!(
            lib.starts_with("linux-vdso")
                || lib.starts_with("libc.so")
                || lib.starts_with("libm.so")
                || lib.contains("ld-linux"),
            "{}: depends on {lib} (ldd: {text})",
            so.display()
        );
    }
}

/// The per-node profile of a loaded artefact: profiled runs compute the same outputs, every
/// called kernel is one step (named after its node), the steps' FLOPs are the graph's minus
/// what needs no kernel (views, in-place concats), and the steps' times fit in the run's.
fn check_profile(
    m: &Model,
    g: &kiln_ir::Graph,
    c: &Case,
    want: &[Vec<u8>],
    pool: &kiln_runtime::ThreadPool,
) {
    let ins: Vec<Vec<u8>> = c
        .inputs
        .iter()
        .map(|p| npy::read(p).unwrap().data)
        .collect();
    let ins: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0; o.nbytes]).collect();
    let mut outs_ref: Vec<&mut [u8]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    let mut ws = m.workspace().unwrap();
    let p = m
        .profile(&ins, &mut outs_ref, &mut ws, Some(pool), 2)
        .unwrap();
    assert!(outs == want, "{}: profiled run differs", c.name);
    assert!(m.can_profile() && !m.nodes().is_empty());
    let names: std::collections::HashSet<&str> =
        g.iter_nodes().map(|(_, n)| n.name.as_str()).collect();
    let outputs: Vec<&str> = g
        .outputs
        .iter()
        .map(|&v| g.value(v).name.as_str())
        .collect();
    let mut flops = 0;
    for n in m.nodes() {
        assert!(
            names.contains(n.name.as_str())
                || (n.op == "copy" && outputs.contains(&n.name.as_str())),
            "{}: step '{}' is no node",
            c.name,
            n.name
        );
        flops += n.flops;
    }
    let total: u64 = g
        .iter_nodes()
        .map(|(_, n)| kiln_ir::cost::flops(g, n))
        .sum();
    assert!(
        flops <= total && flops * 10 >= total * 9,
        "{}: step FLOPs {flops} of {total}",
        c.name
    );
    assert_eq!(p.runs.len(), 2);
    assert!(p.nodes_ms() <= p.run_ms(), "{}", p.table());
    eprintln!("{}", p.table());
}

/// Build a `.so` (loaded from Rust) and an executable (run on the .npy files) at -O2, compare both.
fn artefacts(name: &str) {
    let Some(c) = case(name) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut g = pipeline::load(
        &c.model,
        &LoadOptions {
            input_shapes: c.shapes.clone(),
            frozen_inputs: c.frozen.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    // as `kiln build` does: optimized at the default level (-O2) for the host target
    let opts = kiln_compiler::passes::OptOptions {
        layout: pipeline::TargetOpts::default().layout_target().unwrap(),
        ..Default::default()
    };
    pipeline::optimize(&mut g, &opts).unwrap();
    let so = tmp.path().join(format!("lib{name}.so"));
    pipeline::emit(&g, pipeline::Emit::So, &so, name, &Default::default()).unwrap();
    let m = Model::load(&so).unwrap();
    assert_standalone(&so);
    let single = run_model(&m, &c);
    check_outputs(&c, &single, ".so from Rust");
    // two threads compute the same work items: bit-identical
    let pool = kiln_runtime::ThreadPool::new(2).unwrap();
    assert!(
        run_model_pool(&m, &c, Some(&pool)) == single,
        "{name}: 2 threads differ from 1"
    );
    check_profile(&m, &g, &c, &single, &pool);

    let exe = tmp.path().join(name);
    pipeline::emit(&g, pipeline::Emit::Exe, &exe, name, &Default::default()).unwrap();
    let outdir = tmp.path().join("out");
    let mut cmd = std::process::Command::new(&exe);
    for ((n, _), p) in c.shapes.iter().zip(&c.inputs) {
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    let trace = tmp.path().join("trace.json");
    let st = cmd
        .args([
            "--threads",
            "2",
            "--profile",
            "--profile-runs",
            "2",
            "--profile-json",
        ])
        .arg(&trace)
        .arg("--output-dir")
        .arg(&outdir)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}: exe failed: {}",
        c.name,
        String::from_utf8_lossy(&st.stderr)
    );
    // the executable's profile: a table row per step, a trace event per step and run
    let table = String::from_utf8_lossy(&st.stdout);
    let steps = m.nodes().len();
    assert_eq!(
        table.lines().count(),
        2 + steps,
        "{name}: --profile table:\n{table}"
    );
    assert!(
        table.starts_with(&format!("profile of '{name}': 2 runs")),
        "{table}"
    );
    let events: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 2 * (steps + 1), "{name}: trace events");
    for (e, n) in events[1..=steps].iter().zip(m.nodes()) {
        assert_eq!(e["name"], n.name.as_str());
        assert_eq!(e["args"]["op_name"], n.op.as_str());
        assert!(e["dur"].as_f64().unwrap() >= 0.0);
    }
    let infos = m.outputs();
    let outs: Vec<Vec<u8>> = infos
        .iter()
        .map(|o| {
            let f: String = o
                .name
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.' {
                        ch
                    } else {
                        '_'
                    }
                })
                .collect();
            npy::read(&outdir.join(format!("{f}.npy")))
                .unwrap_or_else(|e| panic!("{}: output {f}.npy: {e}", c.name))
                .data
        })
        .collect();
    check_outputs(&c, &outs, "executable");

    // a C program against the generated header, linked with the .so
    let hdr = tmp.path().join(format!("{name}.h"));
    pipeline::emit(&g, pipeline::Emit::Header, &hdr, name, &Default::default()).unwrap();
    let n_in = c.inputs.len();
    let n_out = c.outputs.len();
    let csrc = format!(
        r#"#include <stdio.h>
#include <stdlib.h>
#include "{name}.h"
static void *slurp(const char *p, uint64_t n) {{
  FILE *f = fopen(p, "rb"); if (!f) return NULL; void *b = malloc(n);
  if (fread(b, 1, n, f) != n) {{ fclose(f); return NULL; }} fclose(f); return b;
}}
int main(int argc, char **argv) {{
  const kiln_model *m = {name}_model();
  if (m->n_inputs != {n_in} || m->n_outputs != {n_out} || argc != 1 + {n_in} + {n_out}) return 10;
  const void *in[{n_in}]; uint64_t in_b[{n_in}]; void *out[{n_out}]; uint64_t out_b[{n_out}];
  for (int i = 0; i < {n_in}; i++) {{ in_b[i] = m->inputs[i].nbytes; in[i] = slurp(argv[1 + i], in_b[i]); if (!in[i]) return 11; }}
  for (int i = 0; i < {n_out}; i++) {{ out_b[i] = m->outputs[i].nbytes; out[i] = malloc(out_b[i]); }}
  void *ws = {upper}_WORKSPACE_SIZE ? aligned_alloc({upper}_WORKSPACE_ALIGN, ({upper}_WORKSPACE_SIZE + 63) / 64 * 64) : NULL;
  if (kiln_run_checked(m, {n_in} + 1, in, in_b, {n_out}, out, out_b, ws) != KILN_ERR_ARITY) return 12;
  int32_t st = kiln_run_checked(m, {n_in}, in, in_b, {n_out}, out, out_b, ws);
  if (st != KILN_OK) return 20 + st;
  for (int i = 0; i < {n_out}; i++) {{ FILE *f = fopen(argv[1 + {n_in} + i], "wb"); fwrite(out[i], 1, out_b[i], f); fclose(f); }}
  return 0;
}}
"#,
        upper = name.to_uppercase()
    );
    let cfile = tmp.path().join("main.c");
    std::fs::write(&cfile, csrc).unwrap();
    let cexe = tmp.path().join("c_main");
    let st = std::process::Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&cexe)
        .arg(&cfile)
        .arg(format!("-I{}", tmp.path().display()))
        .arg(format!("-L{}", tmp.path().display()))
        .arg(format!("-l{name}"))
        .arg(format!("-Wl,-rpath,{}", tmp.path().display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut cmd = std::process::Command::new(&cexe);
    for (k, p) in c.inputs.iter().enumerate() {
        let raw = tmp.path().join(format!("in{k}.bin"));
        std::fs::write(&raw, npy::read(p).unwrap().data).unwrap();
        cmd.arg(raw);
    }
    let outs: Vec<PathBuf> = (0..n_out)
        .map(|k| tmp.path().join(format!("out{k}.bin")))
        .collect();
    let st = cmd.args(&outs).status().unwrap();
    assert!(st.success(), "{}: C program exited with {st}", c.name);
    let outs: Vec<Vec<u8>> = outs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    check_outputs(&c, &outs, "C program + .so");
}

/// Each golden model: compiled in memory, and as `.so` (Rust + C) and executable.
macro_rules! golden {
    ($($jit:ident, $art:ident, $opt:ident => $name:literal;)*) => {$(
        #[test]
        fn $jit() {
            jit($name);
        }
        #[test]
        fn $opt() {
            opt_levels($name);
        }
        #[test]
        fn $art() {
            artefacts($name);
        }
    )*};
}

golden! {
    lenet5_jit, lenet5_artefacts, lenet5_opt_levels => "lenet5";
    tiny_ops_jit, tiny_ops_artefacts, tiny_ops_opt_levels => "tiny_ops";
    recurrent_jit, recurrent_artefacts, recurrent_opt_levels => "recurrent";
    encoder_jit, encoder_artefacts, encoder_opt_levels => "encoder";
    squeezenet_jit, squeezenet_artefacts, squeezenet_opt_levels => "squeezenet1_1";
    resnet18_jit, resnet18_artefacts, resnet18_opt_levels => "resnet18";
    mobilenetv2_jit, mobilenetv2_artefacts, mobilenetv2_opt_levels => "mobilenetv2";
    ppocr_det_jit, ppocr_det_artefacts, ppocr_det_opt_levels => "ppocr_det";
    ppocr_rec_jit, ppocr_rec_artefacts, ppocr_rec_opt_levels => "ppocr_rec";
    ppocr_cls_jit, ppocr_cls_artefacts, ppocr_cls_opt_levels => "ppocr_cls";
    silero_vad_jit, silero_vad_artefacts, silero_vad_opt_levels => "silero_vad";
}
