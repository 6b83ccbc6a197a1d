//! Filetests (the Cranelift way): `tests/filetests/**/*.kir` hold textual IR with a header
//!
//! ```text
//! ; test: fold_batchnorm_into_conv, dce     passes, rule drivers or single rules, in order
//! ; check: %y = conv(                        must appear, in this order, in the output IR
//! ; check-not: batch_norm                    must not appear anywhere in the output IR
//! ; target: x86-64-v3                        the CPU whose layout model the `layout` pass uses
//! ```
//!
//! then the input graph, then (optionally) `; expected:` and the blessed output, one `; `-prefixed
//! line per line of IR; `UPDATE_EXPECT=1` (re)writes that section. Every file also checks that
//! the output verifies, round-trips through the text form, and computes the same values as the
//! input on the reference interpreter (deterministic pseudo-random inputs). The suite fails if
//! a pass or rule has no filetest.

use kiln_compiler::passes::{self, OptOptions};
use kiln_ir::interp::{Tensor, TensorData, run};
use kiln_ir::{DType, Graph};
use std::path::{Path, PathBuf};

const MARK: &str = "; expected:";

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut es: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    es.sort_by_key(|e| e.path());
    for e in es {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "kir") {
            out.push(p);
        }
    }
}

/// Deterministic inputs: floats in [-2, 2), integers in [0, 4), bools alternating.
fn inputs(g: &Graph) -> Vec<Tensor> {
    let mut seed = 0x2545f491u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    g.inputs
        .iter()
        .map(|&v| {
            let ty = g.ty(v);
            let n = ty.numel();
            let data = match ty.dtype {
                DType::F32 => TensorData::F32(
                    (0..n)
                        .map(|_| (next() % 4096) as f32 / 1024.0 - 2.0)
                        .collect(),
                ),
                DType::I64 => TensorData::I64((0..n).map(|_| (next() % 4) as i64).collect()),
                DType::I32 => TensorData::I32((0..n).map(|_| (next() % 4) as i32).collect()),
                DType::Bool => TensorData::Bool((0..n).map(|i| i % 2 == 0).collect()),
                d => panic!("filetest inputs of type {d} are not supported"),
            };
            Tensor {
                shape: ty.shape.clone(),
                data,
            }
        })
        .collect()
}

fn close(a: &Tensor, b: &Tensor) -> Result<(), String> {
    if a.shape != b.shape || a.dtype() != b.dtype() {
        return Err(format!("{:?} vs {:?}", a.ty(), b.ty()));
    }
    match (&a.data, &b.data) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            // plus a share of the largest output: Winograd convolutions are exact to a few
            // ulps of the partial sums, not of each (possibly cancelled) result
            let scale = x
                .iter()
                .filter(|v| v.is_finite())
                .fold(0f32, |m, v| m.max(v.abs()));
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                if (p - q).abs() > 1e-5 + 1e-4 * p.abs() + 1e-5 * scale {
                    return Err(format!("element {i}: {p} before, {q} after"));
                }
            }
            Ok(())
        }
        (x, y) if x == y => Ok(()),
        _ => Err("values differ".into()),
    }
}

/// The CPU back end's layout model for `cpu` (`None`: the host).
fn layout_model(cpu: Option<&str>) -> std::sync::Arc<dyn kiln_ir::layout::LayoutTarget> {
    let opts = kiln_target_cpu::CpuOptions {
        target_cpu: cpu.map(Into::into),
        ..kiln_target_cpu::CpuOptions::host("ft")
    };
    std::sync::Arc::new(
        kiln_target_cpu::layout_target(&opts)
            .expect("a known CPU")
            .expect("wide kernels"),
    )
}

/// Run one file; returns the pass names it tests.
fn run_file(path: &Path, bless: bool) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let (src, _) = text.split_once(MARK).unwrap_or((&text, ""));
    let mut tests = Vec::new();
    let mut checks = Vec::new();
    let mut nots = Vec::new();
    let mut target = None;
    let mut body = String::new();
    for line in src.lines() {
        let t = line.trim();
        if let Some(r) = t.strip_prefix("; test:") {
            tests.extend(
                r.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
        } else if let Some(r) = t.strip_prefix("; check-not:") {
            nots.push(r.trim().to_string());
        } else if let Some(r) = t.strip_prefix("; check:") {
            checks.push(r.trim().to_string());
        } else if let Some(r) = t.strip_prefix("; target:") {
            target = Some(r.trim().to_string());
        } else if t.starts_with(';') {
            // comment
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    if tests.is_empty() {
        return Err("no '; test:' line".into());
    }
    let g0 = kiln_ir::text::parse(&body).map_err(|e| format!("input: {e}"))?;
    kiln_ir::verify::verify(&g0).map_err(|e| format!("input does not verify: {e}"))?;
    let mut g = g0.clone();
    let names: Vec<&str> = tests.iter().map(String::as_str).collect();
    let opts = OptOptions {
        layout: target.map(|cpu| layout_model(Some(&cpu))),
        ..Default::default()
    };
    passes::run_passes(&mut g, &names, &opts)?;
    let out = kiln_ir::text::print(&g);
    // round trip
    let re =
        kiln_ir::text::parse(&out).map_err(|e| format!("output does not parse: {e}\n{out}"))?;
    if kiln_ir::text::print(&re) != out {
        return Err(format!("output does not round-trip:\n{out}"));
    }
    // checks
    let mut pos = 0;
    for c in &checks {
        match out[pos..].find(c.as_str()) {
            Some(i) => pos += i + c.len(),
            None => {
                return Err(format!(
                    "check not found (in order): {c}\n--- output ---\n{out}"
                ));
            }
        }
    }
    for c in &nots {
        if out.contains(c.as_str()) {
            return Err(format!("check-not found: {c}\n--- output ---\n{out}"));
        }
    }
    // same values before and after
    let ins = inputs(&g0);
    let before = run(&g0, &ins).map_err(|e| format!("interpreting the input: {e}"))?;
    let after = run(&g, &ins).map_err(|e| format!("interpreting the output: {e}"))?;
    for (k, (a, b)) in before.iter().zip(&after).enumerate() {
        close(a, b).map_err(|e| format!("output {k} changed: {e}\n--- output ---\n{out}"))?;
    }
    // blessed expectation
    let expected: String = out.lines().map(|l| format!("; {l}\n")).collect();
    match text.split_once(MARK) {
        _ if bless => {
            let new = format!(
                "{}{MARK}\n{expected}",
                src.trim_end_matches('\n').to_string() + "\n"
            );
            if new != text {
                std::fs::write(path, new).unwrap();
            }
        }
        Some((_, have)) => {
            let have = have.trim_start_matches('\n');
            if have != expected {
                return Err(format!(
                    "output differs from the expected section (UPDATE_EXPECT=1 blesses):\n--- expected ---\n{have}--- got ---\n{expected}"
                ));
            }
        }
        None => {}
    }
    Ok(tests)
}

#[test]
fn filetests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("filetests");
    let mut all = Vec::new();
    files(&root, &mut all);
    assert!(!all.is_empty(), "no filetests under {}", root.display());
    let bless = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for p in &all {
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        match run_file(p, bless) {
            Ok(t) => {
                // a file tests the pass named by its directory and the first name of its header
                covered.insert(t[0].clone());
                if let Some(dir) = Path::new(&rel).parent() {
                    covered.insert(dir.display().to_string());
                }
            }
            Err(e) => failures.push(format!("{rel}: {e}")),
        }
    }
    let mut missing: Vec<String> = passes::PASS_NAMES
        .iter()
        .map(|s| s.to_string())
        .chain(passes::rules().iter().map(|r| r.name.to_string()))
        .filter(|n| !covered.contains(n))
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        failures.push(format!(
            "passes/rules without a filetest: {}",
            missing.join(", ")
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} filetests failed:\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
    eprintln!("{} filetests passed", all.len());
}

/// Every filetest's input graph compiled (JIT) at -O0, -O1 and -O2 computes what the
/// interpreter computes for the unoptimized graph: every optimization level gives the same
/// outputs on generated code, for every rule's positive and negative cases.
#[test]
fn filetests_compiled_at_every_level() {
    use kiln_compiler::passes::OptLevel;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("filetests");
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut failures = Vec::new();
    for p in &all {
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(p).unwrap();
        let src = text.split_once(MARK).map_or(text.as_str(), |(s, _)| s);
        let body: String = src
            .lines()
            .filter(|l| !l.trim().starts_with(';'))
            .map(|l| format!("{l}\n"))
            .collect();
        let g0 = kiln_ir::text::parse(&body).unwrap();
        let ins = inputs(&g0);
        let want = run(&g0, &ins).unwrap();
        let in_bytes: Vec<Vec<u8>> = ins.iter().map(|t| t.to_bytes()).collect();
        for level in [OptLevel::O0, OptLevel::O1, OptLevel::O2] {
            let mut g = g0.clone();
            // -O2 as `kiln build` runs it on this host: with the host's layout model
            let opts = OptOptions {
                level,
                layout: Some(layout_model(None)),
                ..Default::default()
            };
            kiln_compiler::pipeline::optimize(&mut g, &opts).unwrap();
            let plan = kiln_target_cpu::plan(&g);
            if let Err(e) = kiln_ir::memplan::check(&g, &plan) {
                failures.push(format!("{rel} {level:?}: memory plan: {e}"));
                continue;
            }
            let j = match kiln_target_cpu::compile_jit(&g, "ft") {
                Ok(j) => j,
                Err(e) => {
                    failures.push(format!("{rel} {level:?}: {e}"));
                    continue;
                }
            };
            let m = unsafe {
                kiln_runtime::Model::from_raw(j.descriptor() as *const kiln_runtime::KilnModel)
            }
            .unwrap();
            let in_refs: Vec<&[u8]> = in_bytes.iter().map(|b| b.as_slice()).collect();
            let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
            let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            let mut ws = m.workspace().unwrap();
            m.run(&in_refs, &mut refs, &mut ws).unwrap();
            for (k, (w, o)) in want.iter().zip(&outs).enumerate() {
                let got = kiln_ir::interp::Tensor::from_bytes(&w.ty(), o).unwrap();
                if let Err(e) = close(w, &got) {
                    failures.push(format!("{rel} {level:?}: output {k}: {e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
