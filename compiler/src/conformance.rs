//! The ONNX backend test suites run through kiln's compiled CPU path (Cranelift JIT): the `node`
//! operator cases, the `pytorch-converted`, `pytorch-operator` and `simple` model cases, and the
//! `light` real topologies (ResNet-50, DenseNet-121, Inception, VGG-19, ...). Every case is
//! compiled and run, never interpreted, and compared with the recorded outputs at the suite's
//! tolerances (rtol 1e-3, atol 1e-7; exact for integers and booleans).
//!
//! Used by the conformance integration test (with expectation files) and by `kiln conformance`,
//! which prints the per-op coverage table and writes `docs/ops.md`.

use crate::onnx::proto::{ModelProto, NodeProto};
use crate::pipeline::{self, LoadOptions};
use kiln_ir::interp::{Tensor, TensorData};
use kiln_ir::{ConstData, DType, TensorType};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The suites, in report order; each is a directory under `onnx/backend/test/data/`.
pub const SUITES: [&str; 5] = [
    "node",
    "pytorch-converted",
    "pytorch-operator",
    "simple",
    "light",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Unsupported(String),
}

impl Outcome {
    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Pass)
    }
    /// `pass`, `fail\t<why>` or `unsupported\t<why>` (the expectation file's columns).
    pub fn line(&self) -> String {
        match self {
            Outcome::Pass => "pass".into(),
            Outcome::Fail(w) => format!("fail\t{w}"),
            Outcome::Unsupported(w) => format!("unsupported\t{w}"),
        }
    }
}

/// One case: where it is, how it went, and what it exercises (for the coverage table).
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub outcome: Outcome,
    /// `(domain:)op_type` of every node in the model (top-level graph).
    pub ops: BTreeSet<String>,
    /// Element types of the graph inputs and outputs.
    pub dtypes: BTreeSet<String>,
    /// Attribute names used, per op.
    pub attrs: BTreeMap<String, BTreeSet<String>>,
}

/// `site-packages/onnx/backend/test/data` of the project's `.venv` (or `$KILN_ONNX_DATA_DIR`).
pub fn data_dir(project_root: &Path) -> Option<PathBuf> {
    if let Ok(d) = std::env::var("KILN_ONNX_DATA_DIR") {
        return Some(PathBuf::from(d));
    }
    let lib = project_root.join(".venv/lib");
    for e in std::fs::read_dir(lib).ok()?.flatten() {
        let d = e.path().join("site-packages/onnx/backend/test/data");
        if d.join("node").is_dir() {
            return Some(d);
        }
    }
    None
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

fn sorted_pb(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| {
        let n = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        n.rsplit('_')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or(0)
    });
    v
}

fn close_f64(a: &[f64], b: &[f64], rtol: f64) -> Result<(), String> {
    for (i, (w, g)) in a.iter().zip(b).enumerate() {
        let ok = (w.is_nan() && g.is_nan()) || w == g || (w - g).abs() <= 1e-7 + rtol * w.abs();
        if !ok {
            return Err(format!("element {i}: got {g}, want {w}"));
        }
    }
    Ok(())
}

/// Compare one output: exact for integers/booleans, rtol/atol 1e-7 for floats (f16/bf16 via f32).
fn compare(ty: &TensorType, want: &ConstData, got: &[u8], rtol: f64) -> Result<(), String> {
    if !ty.dtype.is_float() {
        return if want.bytes() == got {
            Ok(())
        } else {
            Err("values differ".into())
        };
    }
    let halfs = |b: &[u8]| -> Vec<f64> {
        b.chunks_exact(2)
            .map(|c| {
                let u = u16::from_le_bytes([c[0], c[1]]);
                if ty.dtype == DType::F16 {
                    half::f16::from_bits(u).to_f64()
                } else {
                    half::bf16::from_bits(u).to_f64()
                }
            })
            .collect()
    };
    let (w, g) = match ty.dtype {
        DType::F16 | DType::BF16 => (halfs(want.bytes()), halfs(got)),
        _ => {
            let (Ok(w), Ok(g)) = (Tensor::from_const(ty, want), Tensor::from_bytes(ty, got)) else {
                return Err(format!("dtype {} not comparable", ty.dtype));
            };
            let f = |t: &Tensor| match &t.data {
                TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
                TensorData::F64(v) => v.clone(),
                _ => Vec::new(),
            };
            (f(&w), f(&g))
        }
    };
    close_f64(&w, &g, rtol)
}

fn decode_model(model: &Path) -> Option<ModelProto> {
    let bytes = std::fs::read(model).ok()?;
    ModelProto::decode(bytes.as_slice()).ok()
}

/// Names of the ONNX graph's inputs (initializers excluded), in order.
fn graph_input_names(m: &ModelProto) -> Vec<String> {
    let g = m.graph.clone().unwrap_or_default();
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    g.input
        .iter()
        .map(|i| i.name().to_string())
        .filter(|n| !inits.contains(n.as_str()))
        .collect()
}

/// Name of the graph input that the front end needs as a compile-time constant, from its
/// "input N ('NAME') must be a constant" diagnostic.
fn needs_constant(msg: &str) -> Option<String> {
    let rest = msg.split_once("('")?.1;
    let (name, tail) = rest.split_once("')")?;
    tail.contains("must be a constant")
        .then(|| name.to_string())
}

/// What a model exercises: ops, dtypes, attribute names.
fn describe(m: &ModelProto, r: &mut CaseResult) {
    let g = m.graph.clone().unwrap_or_default();
    let op_name = |n: &NodeProto| {
        if n.domain().is_empty() || n.domain() == "ai.onnx" {
            n.op_type().to_string()
        } else {
            format!("{}:{}", n.domain(), n.op_type())
        }
    };
    for n in &g.node {
        let op = op_name(n);
        r.ops.insert(op.clone());
        let a = r.attrs.entry(op).or_default();
        for at in &n.attribute {
            a.insert(at.name().to_string());
        }
    }
    for vi in g.input.iter().chain(&g.output) {
        if let Some(crate::onnx::proto::type_proto::Value::TensorType(tt)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            let name = crate::onnx::tensor::dtype_from_onnx(tt.elem_type())
                .map(|d| d.name().to_string())
                .unwrap_or_else(|_| format!("onnx:{}", tt.elem_type()));
            r.dtypes.insert(name);
        }
    }
}

/// Compile `model` (freezing inputs the static compiler needs as constants, from `frozen_data`)
/// and run it on `inputs`; compare with `want`.
fn compile_and_run(
    model: &Path,
    m: &ModelProto,
    sets: &[(Vec<PathBuf>, Vec<PathBuf>)],
    rtol: f64,
) -> Outcome {
    let names = graph_input_names(m);
    // Inputs the static compiler must know (axes, shapes, pads given as graph inputs) are frozen
    // to the first data set's values, as `kiln build --freeze NAME=FILE` does; they then leave
    // the compiled signature.
    let mut opts = LoadOptions::default();
    let g = loop {
        match pipeline::load(model, &opts) {
            Ok(g) => break g,
            Err(e) => {
                let msg = e.to_string();
                if let Some(name) = needs_constant(&msg)
                    && !opts.frozen_inputs.iter().any(|f| f.0 == name)
                    && let Some(k) = names.iter().position(|n| *n == name)
                    && let Some(p) = sets.first().and_then(|s| s.0.get(k))
                    && let Ok((ty, d)) = crate::onnx::read_tensor(p)
                {
                    opts.frozen_inputs.push((name, ty, d));
                    continue;
                }
                // a value computed from inputs must be constant: freeze the small integer
                // inputs (sizes, shapes, axes) and the scalars (range bounds, trip counts) it
                // is likely computed from
                if needs_constant(&msg).is_some() {
                    let before = opts.frozen_inputs.len();
                    for (k, name) in names.iter().enumerate() {
                        if opts.frozen_inputs.iter().any(|f| &f.0 == name) {
                            continue;
                        }
                        if let Some(p) = sets.first().and_then(|s| s.0.get(k))
                            && let Ok((ty, d)) = crate::onnx::read_tensor(p)
                            && (matches!(ty.dtype, DType::I64 | DType::I32) && ty.numel() <= 64
                                || ty.numel() == 1)
                        {
                            opts.frozen_inputs.push((name.clone(), ty, d));
                        }
                    }
                    if opts.frozen_inputs.len() > before {
                        continue;
                    }
                }
                return Outcome::Unsupported(one_line(
                    &msg.replace(&model.display().to_string(), "model"),
                ));
            }
        }
    };
    let mut g = g;
    if let Err(e) = pipeline::optimize(&mut g, &Default::default()) {
        return Outcome::Fail(one_line(&e.to_string()));
    }
    let jit = match kiln_target_cpu::compile_jit(&g, "case") {
        Ok(j) => j,
        Err(e) => return Outcome::Unsupported(one_line(&e.to_string())),
    };
    // SAFETY: the descriptor was just generated and lives as long as `jit`.
    let m = match unsafe {
        kiln_runtime::Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel)
    } {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(format!("descriptor: {e}")),
    };
    let mut ws = match m.workspace() {
        Ok(w) => w,
        Err(e) => return Outcome::Fail(format!("workspace: {e}")),
    };
    for (si, (in_files, out_files)) in sets.iter().enumerate() {
        let read = |p: &PathBuf| crate::onnx::read_tensor(p).map_err(|e| one_line(&e.to_string()));
        let ins: Vec<_> = match in_files.iter().map(read).collect::<Result<Vec<_>, _>>() {
            Ok(v) => v,
            Err(e) => return Outcome::Unsupported(format!("test data: {e}")),
        };
        let want: Vec<_> = match out_files.iter().map(read).collect::<Result<Vec<_>, _>>() {
            Ok(v) => v,
            Err(e) => return Outcome::Unsupported(format!("test data: {e}")),
        };
        // frozen inputs are no longer model inputs
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
        if ins.len() != m.inputs().len() || want.len() != m.outputs().len() {
            return Outcome::Unsupported(format!(
                "{} inputs/{} outputs in test data, model has {}/{}",
                ins.len(),
                want.len(),
                m.inputs().len(),
                m.outputs().len()
            ));
        }
        for (k, ((ty, _), info)) in ins.iter().zip(m.inputs()).enumerate() {
            if ty.size_bytes() != info.nbytes {
                return Outcome::Unsupported(format!(
                    "input {k}: test data {ty} does not match the compiled input"
                ));
            }
        }
        let in_bytes: Vec<&[u8]> = ins.iter().map(|(_, d)| d.bytes()).collect();
        let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
        {
            let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            if let Err(e) = m.run(&in_bytes, &mut refs, &mut ws) {
                return Outcome::Fail(one_line(&e.to_string()));
            }
        }
        for (k, ((ty, d), got)) in want.iter().zip(&outs).enumerate() {
            if ty.size_bytes() != got.len() {
                return Outcome::Fail(format!("output {k}: size differs from {ty}"));
            }
            if let Err(e) = compare(ty, d, got, rtol) {
                let set = if sets.len() > 1 {
                    format!("data set {si}, ")
                } else {
                    String::new()
                };
                return Outcome::Fail(format!("{set}output {k}: {e}"));
            }
        }
    }
    Outcome::Pass
}

fn catch(f: impl FnOnce() -> Outcome + std::panic::UnwindSafe) -> Outcome {
    match std::panic::catch_unwind(f) {
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
    }
}

/// A directory case: `model.onnx` and `test_data_set_*/{input,output}_*.pb`.
pub fn run_dir_case(dir: &Path) -> CaseResult {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut r = CaseResult {
        name,
        outcome: Outcome::Pass,
        ops: BTreeSet::new(),
        dtypes: BTreeSet::new(),
        attrs: BTreeMap::new(),
    };
    let model = dir.join("model.onnx");
    let Some(m) = decode_model(&model) else {
        r.outcome = Outcome::Unsupported("model: cannot decode".into());
        return r;
    };
    describe(&m, &mut r);
    let mut set_dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
                })
                .collect()
        })
        .unwrap_or_default();
    set_dirs.sort();
    let sets: Vec<_> = set_dirs
        .iter()
        .map(|d| (sorted_pb(d, "input_"), sorted_pb(d, "output_")))
        .collect();
    if sets.is_empty() {
        r.outcome = Outcome::Unsupported("no test data".into());
        return r;
    }
    r.outcome = catch(std::panic::AssertUnwindSafe(|| {
        compile_and_run(&model, &m, &sets, 1e-3)
    }));
    r
}

/// A `light` model (`light_<name>.onnx` + `light_<name>_output_0.pb`): the input is the suite's
/// deterministic `arange(n).reshape(shape) / n` (float32), written next to nothing: kept in a
/// temporary directory for the run.
pub fn run_light_case(model: &Path) -> CaseResult {
    let stem = model
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut r = CaseResult {
        name: stem.clone(),
        outcome: Outcome::Pass,
        ops: BTreeSet::new(),
        dtypes: BTreeSet::new(),
        attrs: BTreeMap::new(),
    };
    let Some(m) = decode_model(model) else {
        r.outcome = Outcome::Unsupported("model: cannot decode".into());
        return r;
    };
    describe(&m, &mut r);
    let g = m.graph.clone().unwrap_or_default();
    let names = graph_input_names(&m);
    let tmp = std::env::temp_dir().join(format!("kiln-light-{}-{stem}", std::process::id()));
    let _ = std::fs::create_dir_all(&tmp);
    let mut in_files = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let Some(vi) = g.input.iter().find(|i| i.name() == name) else {
            continue;
        };
        let shape: Vec<i64> = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(crate::onnx::proto::type_proto::Value::TensorType(tt)) => tt
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(
                                crate::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(
                                    v,
                                ),
                            ) => v,
                            _ => 1,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let n: i64 = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
        let t = crate::onnx::proto::TensorProto {
            dims: shape,
            data_type: Some(1),
            raw_data: Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        };
        let p = tmp.join(format!("input_{k}.pb"));
        if std::fs::write(&p, t.encode_to_vec()).is_err() {
            r.outcome = Outcome::Unsupported("cannot write the generated input".into());
            return r;
        }
        in_files.push(p);
    }
    let outs: Vec<PathBuf> = (0..g.output.len())
        .map(|i| model.with_file_name(format!("{stem}_output_{i}.pb")))
        .collect();
    if outs.iter().any(|p| !p.exists()) {
        r.outcome = Outcome::Unsupported("reference outputs missing".into());
        return r;
    }
    // the suite's own tolerance (densenet121 is looser)
    let rtol = if stem.contains("densenet") {
        2e-3
    } else {
        1e-3
    };
    r.outcome = catch(std::panic::AssertUnwindSafe(|| {
        compile_and_run(model, &m, &[(in_files, outs)], rtol)
    }));
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

/// Every case of one suite, sorted by name.
pub fn run_suite(data: &Path, suite: &str) -> Vec<CaseResult> {
    let dir = data.join(suite);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    if suite == "light" {
        entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
            .map(|p| run_light_case(p))
            .collect()
    } else {
        entries
            .iter()
            .filter(|p| p.join("model.onnx").exists())
            .map(|p| run_dir_case(p))
            .collect()
    }
}

/// The expectation-file text for a suite.
pub fn expectations(suite: &str, results: &[CaseResult]) -> String {
    let mut text = format!(
        "# ONNX backend '{suite}' tests (onnx 1.22.0) through kiln's compiled CPU path.\n# Generated by `UPDATE_EXPECT=1 cargo test -p kiln-tests --test conformance`; do not edit by hand.\n"
    );
    for r in results {
        text.push_str(&format!("{}\t{}\n", r.name, r.outcome.line()));
    }
    text
}

/// Per-op coverage over node cases: op -> (cases, passing, dtypes, attributes of passing cases).
#[derive(Debug, Default, Clone)]
pub struct OpCoverage {
    pub cases: usize,
    pub passing: usize,
    pub dtypes: BTreeSet<String>,
    pub attrs: BTreeSet<String>,
}

/// Coverage per op. A node case counts for the op it tests: the op named by the case (the
/// model's single op, or for `_expanded` cases every op of the expansion).
pub fn coverage(results: &[CaseResult]) -> BTreeMap<String, OpCoverage> {
    let mut cov: BTreeMap<String, OpCoverage> = BTreeMap::new();
    for r in results {
        for op in &r.ops {
            let e = cov.entry(op.clone()).or_default();
            e.cases += 1;
            if r.outcome.is_pass() {
                e.passing += 1;
                e.dtypes.extend(r.dtypes.iter().cloned());
                if let Some(a) = r.attrs.get(op) {
                    e.attrs.extend(a.iter().cloned());
                }
            }
        }
    }
    cov
}

/// The per-op table `kiln conformance` prints.
pub fn coverage_table(cov: &BTreeMap<String, OpCoverage>) -> String {
    let w = cov.keys().map(|k| k.len()).max().unwrap_or(2).max(2);
    let mut s = format!("{:<w$}  {:>5}  {:>7}\n", "op", "cases", "passing");
    for (op, c) in cov {
        s.push_str(&format!("{op:<w$}  {:>5}  {:>7}\n", c.cases, c.passing));
    }
    s
}

/// Totals line per suite: `(suite, cases, pass, fail, unsupported)`.
pub fn totals(results: &[CaseResult]) -> (usize, usize, usize, usize) {
    let pass = results.iter().filter(|r| r.outcome.is_pass()).count();
    let fail = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .count();
    (results.len(), pass, fail, results.len() - pass - fail)
}

/// `docs/ops.md`: suite totals and, per op, the cases, passing cases, dtypes and attributes
/// seen in passing node cases.
pub fn ops_markdown(suites: &[(String, Vec<CaseResult>)]) -> String {
    let mut s = String::from(
        "# Operator coverage\n\nGenerated by `kiln conformance --markdown docs/ops.md` from the ONNX backend test suites\n(onnx 1.22.0), every case compiled by the Cranelift CPU back end and compared with the\nrecorded outputs (rtol 1e-3, atol 1e-7; exact for integers). Do not edit by hand.\n\n## Totals\n\n| suite | cases | pass | fail | unsupported |\n|---|---|---|---|---|\n",
    );
    for (name, res) in suites {
        let (n, p, f, u) = totals(res);
        s.push_str(&format!("| {name} | {n} | {p} | {f} | {u} |\n"));
    }
    if let Some((_, node)) = suites.iter().find(|(n, _)| n == "node") {
        s.push_str(
            "\n## Per op (node suite)\n\nA case counts for every op in its model, so `_expanded` cases count for the primitives\nthey expand into. Dtypes and attributes are those of passing cases.\n\n| op | cases | passing | dtypes | attributes |\n|---|---|---|---|---|\n",
        );
        for (op, c) in coverage(node) {
            let d: Vec<_> = c.dtypes.iter().cloned().collect();
            let a: Vec<_> = c.attrs.iter().cloned().collect();
            s.push_str(&format!(
                "| {op} | {} | {} | {} | {} |\n",
                c.cases,
                c.passing,
                d.join(", "),
                a.join(", ")
            ));
        }
    }
    s.push_str(&contrib_markdown());
    s
}

/// The `com.microsoft` contrib ops kiln imports and the standard ops each becomes (checked
/// against ONNX Runtime by `compiler/tests/contrib.rs`, not by the ONNX suites).
fn contrib_markdown() -> String {
    let mut s = String::from(
        "\n## com.microsoft contrib ops\n\nImported by expansion into the standard ops below; each is checked against ONNX Runtime\n(`compiler/tests/contrib.rs`), not by the ONNX backend suites.\n\n| op | becomes |\n|---|---|\n",
    );
    for (op, what) in crate::onnx::contrib_expansions() {
        s.push_str(&format!("| {op} | {what} |\n"));
    }
    s
}
