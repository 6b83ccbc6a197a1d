//! The `kiln` Python package (python/): its pytest suite (python/tests) compares compiled and
//! in-memory models with ONNX Runtime on the golden models and checks input handling, threads,
//! the GIL, profiles and the inspect table.
//!
//! The package is built into `.venv` by `scripts/setup-python-package.sh` (part of
//! `scripts/setup.sh`, which `scripts/test.sh` runs first). When this cargo build also built
//! the extension (`cargo test --workspace` builds `target/<profile>/lib_native.so`) and it is
//! newer, the suite runs on that one instead (the package's Python half from python/kiln, in a
//! temporary directory), so the tests never run an extension older than the sources. Without
//! the venv's package this test skips with a message, unless `KILN_REQUIRE_TOOLS=1` (set by
//! `scripts/test.sh`) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn pytest_suite() {
    let root = root();
    let py = root.join(".venv/bin/python");
    let probe = Command::new(&py)
        .args([
            "-c",
            "import kiln, pytest, onnxruntime; print(kiln._native.__file__)",
        ])
        .output();
    let location = match &probe {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            let why = match probe {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => format!("{}: {e}", py.display()),
            };
            let msg = format!(
                "the kiln Python package is not installed in .venv \
                 (scripts/setup-python-package.sh): {why}"
            );
            if std::env::var("KILN_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED {msg}");
            return;
        }
    };
    // the package must be this checkout's (an editable install of python/)
    assert!(
        Path::new(&location).starts_with(root.join("python")),
        "kiln in .venv comes from {location}, not from this checkout: rerun scripts/setup-python-package.sh"
    );
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // target/<profile>/lib_native.so beside target/<profile>/deps/<this test>
    let fresh = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("lib_native.so")))
        .filter(|so| mtime(so) > mtime(Path::new(&location)));
    let pkg = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&py);
    if let Some(so) = &fresh {
        let dir = pkg.path().join("kiln");
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(
            root.join("python/kiln/__init__.py"),
            dir.join("__init__.py"),
        )
        .unwrap();
        std::fs::copy(so, dir.join("_native.so")).unwrap();
        cmd.env("PYTHONPATH", pkg.path());
        eprintln!("testing the extension of this build: {}", so.display());
    } else {
        eprintln!("testing the venv's extension: {location}");
    }
    let out = cmd
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra"])
        .arg(root.join("python/tests"))
        .current_dir(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pytest failed (output above)");
    // pytest's closing line, e.g. "23 passed in 41.2s": something ran and nothing failed
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains(" passed") && !last.contains("failed") && !last.contains("error"),
        "pytest summary: {last}"
    );
}
