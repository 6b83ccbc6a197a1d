//! The ONNX backend test suites (`onnx==1.22.0` ships them under `onnx/backend/test/data`):
//! node, pytorch-converted, pytorch-operator, simple and light, each case compiled by the CPU
//! back end (JIT) and compared with its recorded outputs (see `kiln_compiler::conformance`).
//!
//! `tests/conformance/<suite>.txt` lists every case as `pass`, `fail <why>` or
//! `unsupported <why>`, and `docs/ops.md` holds the per-op coverage. The test fails when a case's
//! result differs from its line in either direction (a regression, or a new pass not recorded)
//! or a case is missing, and when docs/ops.md is stale; `UPDATE_EXPECT=1` rewrites them all.

use kiln_compiler::conformance::{self, CaseResult, SUITES};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Differences between results and an expectation file.
fn check_suite(suite: &str, results: &[CaseResult], expected: &str) -> Vec<String> {
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
    for r in results {
        let now = r.outcome.line();
        let status = now.split('\t').next().unwrap_or("");
        match listed.get(&r.name).map(String::as_str) {
            None => problems.push(format!("{suite}/{}: not listed (now: {now})", r.name)),
            Some("pass") if !r.outcome.is_pass() => {
                problems.push(format!("{suite}/{}: regressed: {now}", r.name))
            }
            Some(s) if s != "pass" && r.outcome.is_pass() => {
                problems.push(format!("{suite}/{}: now passes (listed as {s})", r.name))
            }
            Some(s) if s != status => {
                problems.push(format!("{suite}/{}: listed as {s}, now {now}", r.name))
            }
            _ => {}
        }
    }
    problems
}

#[test]
fn onnx_backend_suites() {
    let Some(data) = conformance::data_dir(&root()) else {
        if std::env::var("KILN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1") {
            panic!(
                "ONNX backend test data not found: run scripts/setup-python.sh (onnx==1.22.0) or set KILN_ONNX_DATA_DIR"
            );
        }
        eprintln!("SKIPPED: ONNX backend test data not found (run scripts/setup-python.sh)");
        return;
    };
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut all = Vec::new();
    let mut problems = Vec::new();
    for suite in SUITES {
        let results = conformance::run_suite(&data, suite);
        let (n, p, f, u) = conformance::totals(&results);
        eprintln!("{suite}: {n} cases, {p} pass, {f} fail, {u} unsupported");
        let file = root().join(format!("tests/conformance/{suite}.txt"));
        if update {
            std::fs::write(&file, conformance::expectations(suite, &results)).unwrap();
        } else {
            let expected = std::fs::read_to_string(&file).unwrap_or_else(|_| {
                panic!("{} missing (generate with UPDATE_EXPECT=1)", file.display())
            });
            problems.extend(check_suite(suite, &results, &expected));
        }
        all.push((suite.to_string(), results));
    }
    let md = conformance::ops_markdown(&all);
    let md_file = root().join("docs/ops.md");
    if update {
        std::fs::create_dir_all(md_file.parent().unwrap()).unwrap();
        std::fs::write(&md_file, md).unwrap();
        return;
    }
    if std::fs::read_to_string(&md_file).ok().as_deref() != Some(md.as_str()) {
        problems.push("docs/ops.md is stale (UPDATE_EXPECT=1 to regenerate)".into());
    }
    assert!(
        problems.is_empty(),
        "{} conformance problems (UPDATE_EXPECT=1 records the current results):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
