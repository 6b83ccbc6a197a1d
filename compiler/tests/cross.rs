//! Cross compilation as users do it: `kiln build --target aarch64-unknown-linux-gnu --emit
//! exe|so` picks the cross toolchain itself, and the golden models' aarch64 artefacts run under
//! `qemu-aarch64` with the results of the host build (and of ONNX Runtime).
//!
//! Needs `qemu-user`, `gcc-aarch64-linux-gnu` and `libc6-dev-arm64-cross`
//! (`scripts/setup-tools.sh`) and the golden models; without them the cases skip with a message,
//! unless `KILN_REQUIRE_TOOLS=1` / `KILN_REQUIRE_GOLDEN=1` (set by `scripts/test.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

const TRIPLE: &str = "aarch64-unknown-linux-gnu";
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn on_path(exe: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(exe).is_file()))
}

/// Whether the cross toolchain and qemu are installed (else skip, or fail under
/// KILN_REQUIRE_TOOLS=1).
fn have_tools(what: &str) -> bool {
    let missing: Vec<&str> = ["qemu-aarch64", "aarch64-linux-gnu-gcc"]
        .into_iter()
        .filter(|t| !on_path(t))
        .chain((!Path::new(SYSROOT).join("lib").is_dir()).then_some("libc6-dev-arm64-cross"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{what}: {} missing (scripts/setup-tools.sh installs them)",
        missing.join(", ")
    );
    if std::env::var("KILN_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED {msg}");
    false
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A golden model: its file, `--input-shape` arguments, input files, reference outputs.
struct Golden {
    model: PathBuf,
    shapes: Vec<String>,
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<(String, PathBuf)>,
}

fn golden(name: &str) -> Option<Golden> {
    let dir = root().join("golden/data").join(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let model = root().join("golden").join(meta["model"].as_str().unwrap());
    if !model.exists() {
        let msg = format!(
            "golden model {} missing (scripts/setup.sh)",
            model.display()
        );
        if std::env::var("KILN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED {name}: {msg}");
        return None;
    }
    let list = |k: &str| -> Vec<(String, PathBuf)> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    dir.join(i["file"].as_str().unwrap()),
                )
            })
            .collect()
    };
    let shapes = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let dims: Vec<String> = i["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.to_string())
                .collect();
            format!("{}={}", i["name"].as_str().unwrap(), dims.join(","))
        })
        .collect();
    Some(Golden {
        model,
        shapes,
        inputs: list("inputs"),
        outputs: list("outputs"),
    })
}

fn out_file(name: &str) -> String {
    let f: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{f}.npy")
}

fn f32s(p: &Path) -> Vec<f32> {
    let a = kiln_runtime::npy::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    a.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Build `name` for the host and for aarch64 (exe), run the host build natively and the aarch64
/// one under qemu, and compare: aarch64 with the host within `tol` relative to the output's
/// largest value, both with ONNX Runtime at rtol 1e-4 / atol 1e-5.
fn host_vs_aarch64(name: &str) {
    if !have_tools(name) {
        return;
    }
    let Some(g) = golden(name) else { return };
    let d = tempfile::tempdir().unwrap();
    let build = |triple: Option<&str>, exe: &Path| {
        let mut c = kiln();
        c.arg("build")
            .arg(&g.model)
            .args(["--emit", "exe", "-o"])
            .arg(exe);
        for s in &g.shapes {
            c.args(["--input-shape", s]);
        }
        if let Some(t) = triple {
            c.args(["--target", t]);
        }
        ok(&mut c);
    };
    let (host, arm) = (d.path().join("host"), d.path().join("arm"));
    build(None, &host);
    build(Some(TRIPLE), &arm);
    let head = std::fs::read(&arm).unwrap();
    assert_eq!(u16::from_le_bytes([head[18], head[19]]), 183, "EM_AARCH64");
    let run = |cmd: &mut Command, out: &Path| {
        for (n, f) in &g.inputs {
            cmd.arg("--input").arg(format!("{n}={}", f.display()));
        }
        cmd.arg("--output-dir").arg(out);
        ok(cmd)
    };
    let (ho, ao) = (d.path().join("host_out"), d.path().join("arm_out"));
    run(&mut Command::new(&host), &ho);
    // the aarch64 build under emulation, split over two threads and profiled once
    let table = run(
        Command::new("qemu-aarch64")
            .args(["-L", SYSROOT])
            .arg(&arm)
            .args(["--threads", "2", "--profile", "--profile-runs", "1"]),
        &ao,
    );
    assert!(
        table.starts_with(&format!("profile of '{name}'")),
        "{table}"
    );
    for (o, reference) in &g.outputs {
        let want = f32s(reference);
        let h = f32s(&ho.join(out_file(o)));
        let a = f32s(&ao.join(out_file(o)));
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        let mut worst = 0f32;
        for (i, ((w, h), a)) in want.iter().zip(&h).zip(&a).enumerate() {
            for (what, v) in [("host", h), ("aarch64", a)] {
                assert!(
                    (v - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                    "{name}: {o}[{i}]: ORT {w}, {what} {v}"
                );
            }
            worst = worst.max((a - h).abs() / scale);
        }
        assert!(
            worst <= 1e-5,
            "{name}: {o}: aarch64 differs from host by {worst:e} of the largest value"
        );
        eprintln!(
            "{name}: {o}: {} values; aarch64 (qemu) vs host: max |diff| {worst:.1e} of max |x|",
            want.len()
        );
    }
}

#[test]
fn lenet5_aarch64_under_qemu() {
    host_vs_aarch64("lenet5");
}

#[test]
fn squeezenet_aarch64_under_qemu() {
    host_vs_aarch64("squeezenet1_1");
}

#[test]
fn mobilenetv2_aarch64_under_qemu() {
    host_vs_aarch64("mobilenetv2");
}

#[test]
fn ppocr_cls_aarch64_under_qemu() {
    host_vs_aarch64("ppocr_cls");
}

/// An aarch64 shared library with its generated header, linked into a C program by the cross
/// compiler, run under qemu.
#[test]
fn aarch64_shared_library_from_c_under_qemu() {
    if !have_tools("aarch64 .so") {
        return;
    }
    let Some(g) = golden("lenet5") else { return };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for (emit, file) in [("so", "liblenet5.so"), ("header", "lenet5.h")] {
        ok(kiln()
            .arg("build")
            .arg(&g.model)
            .args(["--target", TRIPLE, "--emit", emit, "-o"])
            .arg(p.join(file)));
    }
    let input = kiln_runtime::npy::read(&g.inputs[0].1).unwrap();
    std::fs::write(p.join("in.bin"), &input.data).unwrap();
    std::fs::write(
        p.join("main.c"),
        r#"#include <stdio.h>
#include <stdlib.h>
#include "lenet5.h"
int main(void) {
  static float x[LENET5_INPUT_0_ELEMS], y[LENET5_OUTPUT_0_ELEMS];
  static _Alignas(64) unsigned char ws[LENET5_WORKSPACE_SIZE + 1];
  FILE *f = fopen("in.bin", "rb");
  if (!f || fread(x, 1, sizeof x, f) != sizeof x) return 10;
  fclose(f);
  const kiln_model *m = lenet5_model();
  const void *in[1] = {x}; void *out[1] = {y};
  uint64_t ib[1] = {sizeof x}, ob[1] = {sizeof y};
  int32_t s = kiln_run_checked(m, 1, in, ib, 1, out, ob, ws);
  if (s != KILN_OK) return 20 + s;
  for (unsigned i = 0; i < LENET5_OUTPUT_0_ELEMS; i++) printf("%.9g\n", y[i]);
  return 0;
}
"#,
    )
    .unwrap();
    ok(Command::new("aarch64-linux-gnu-gcc")
        .args([
            "-std=c11", "-Wall", "-Werror", "-O1", "-o", "main", "main.c", "-I.", "-L.",
        ])
        .args(["-llenet5", "-lm"])
        .current_dir(p));
    let out = ok(Command::new("qemu-aarch64")
        .args([
            "-L",
            SYSROOT,
            "-E",
            &format!("LD_LIBRARY_PATH={}", p.display()),
        ])
        .arg(p.join("main"))
        .current_dir(p));
    let got: Vec<f32> = out.lines().map(|l| l.parse().unwrap()).collect();
    let want = f32s(&g.outputs[0].1);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
            "ORT {w}, aarch64 .so {g}"
        );
    }
}

/// Without a cross compiler the error names what to install, before anything is generated.
#[test]
fn missing_cross_toolchain_names_the_packages() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.kir");
    std::fs::write(
        &m,
        "graph m {\n  input %x: f32[4]\n  %y = relu(%x) : f32[4]\n  output %y\n}\n",
    )
    .unwrap();
    let empty = d.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    for emit in ["exe", "so"] {
        let out = d.path().join(format!("m_{emit}"));
        let o = kiln()
            .arg("build")
            .arg(&m)
            .args(["--target", TRIPLE, "--emit", emit, "-o"])
            .arg(&out)
            .env("PATH", &empty)
            .env_remove("CC")
            .env_remove("CC_aarch64_unknown_linux_gnu")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("aarch64-linux-gnu-gcc")
                && err.contains("apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"),
            "{err}"
        );
        assert!(!out.exists());
    }
}
