//! Builds `targets/cpu/src/driver.c` with a fake model (adds 1 to a [2,2] f32 input) and
//! runs the executable on `.npy` files; also loads the fake model as a shared library.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_runtime::npy::{self, Npy};

const FAKE_MODEL: &str = r#"
#include <stdint.h>
#include <stddef.h>
typedef struct { const char *name; int32_t dtype; int32_t rank; const int64_t *dims;
                 uint64_t nbytes; } kiln_tensor_info;
typedef struct { const char *name; const char *op; uint64_t flops; } kiln_node_info;
typedef struct { void *ctx; void (*begin)(void *, uint32_t); void (*end)(void *, uint32_t); } kiln_profiler;
typedef struct {
  uint32_t abi_version; const char *name;
  uint32_t n_inputs; const kiln_tensor_info *inputs;
  uint32_t n_outputs; const kiln_tensor_info *outputs;
  uint64_t workspace_size; uint32_t workspace_align;
  int32_t (*run)(const void *const *inputs, void *const *outputs, void *workspace);
  int32_t (*run_pool)(const void *const *inputs, void *const *outputs, void *workspace,
                      const void *pool);
  uint32_t n_nodes; const kiln_node_info *nodes;
  int32_t (*run_profile)(const void *const *inputs, void *const *outputs, void *workspace,
                         const void *pool, const kiln_profiler *prof);
} kiln_model;
static const int64_t dims[2] = {2, 2};
static const kiln_tensor_info ins[1] = {{"x", 1, 2, dims, 16}};
static const kiln_tensor_info outs[2] = {{"out/y", 1, 2, dims, 16}, {"../sum", 1, 0, NULL, 4}};
static int32_t run(const void *const *in, void *const *out, void *ws) {
  if (!in || !out || !in[0] || !out[0] || !out[1] || !ws) return 1;
  if ((uintptr_t)ws % 32) return 2;
  const float *x = in[0]; float *y = out[0]; float *s = out[1]; float *t = ws;
  *s = 0;
  for (int i = 0; i < 4; i++) { t[i] = x[i] + 1.0f; y[i] = t[i]; *s += x[i]; }
  return 0;
}
static int32_t run_pool(const void *const *in, void *const *out, void *ws, const void *pool) {
  (void)pool;
  return run(in, out, ws);
}
static int32_t run_profile(const void *const *in, void *const *out, void *ws, const void *pool,
                           const kiln_profiler *p) {
  (void)pool;
  p->begin(p->ctx, 0);
  int32_t s = run(in, out, ws);
  p->end(p->ctx, 0);
  return s;
}
static const kiln_node_info nodes[1] = {{"plus \"one\"", "add", 4}};
static const kiln_model M = {3, "fake", 1, ins, 2, outs, 64, 32, run, run_pool, 1, nodes,
                             run_profile};
const kiln_model *fake_model(void) { return &M; }
const kiln_model *kiln_model_default(void) { return &M; }
"#;

fn have_cc() -> bool {
    Command::new("cc").arg("--version").output().is_ok()
}

fn cc(args: &[&std::ffi::OsStr]) {
    let out = Command::new("cc").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cc failed: {stderr}");
    assert!(stderr.trim().is_empty(), "cc warnings: {stderr}");
}

fn driver_c() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../targets/cpu/src/driver.c")
}

/// Compiles the driver + fake model into `dir/prog`.
fn build(dir: &Path) -> PathBuf {
    let model = dir.join("model.c");
    std::fs::write(&model, FAKE_MODEL).unwrap();
    let obj = dir.join("model.o");
    cc(&[
        "-O2".as_ref(),
        "-c".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        obj.as_os_str(),
    ]);
    let exe = dir.join("prog");
    let driver = driver_c();
    cc(&[
        "-O2".as_ref(),
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-std=c11".as_ref(),
        driver.as_os_str(),
        obj.as_os_str(),
        "-lm".as_ref(),
        "-o".as_ref(),
        exe.as_os_str(),
    ]);
    exe
}

fn run(exe: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn driver_end_to_end() {
    if !have_cc() {
        eprintln!("skipping driver test: no `cc` found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build(dir);

    let input = Npy::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.5]);
    npy::write(&dir.join("in.npy"), &input).unwrap();
    let outdir = dir.join("out");
    std::fs::create_dir(&outdir).unwrap();

    // named input
    let o = run(&exe, dir, &["--input", "x=in.npy", "--output-dir", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let y = npy::read(&outdir.join("out_y.npy")).unwrap();
    assert_eq!(y.shape, vec![2, 2]);
    assert_eq!(y.to_f32().unwrap(), vec![2.0, 3.0, 4.0, 5.5]);
    let s = npy::read(&outdir.join("_._sum.npy")).unwrap();
    assert_eq!((s.shape.len(), s.to_f32().unwrap()), (0, vec![10.5]));
    let leftovers: Vec<_> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // positional input, default output dir, bench
    let o = run(&exe, dir, &["in.npy", "--bench", "5"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("median: ") && l.ends_with(" ms")),
        "{out}"
    );
    assert!(out.contains("min: "), "{out}");
    assert!(dir.join("out_y.npy").exists());

    // --profile: a table row per step; --profile-json: a Chrome trace (names JSON-escaped)
    let o = run(
        &exe,
        dir,
        &[
            "in.npy",
            "--profile",
            "--profile-runs",
            "3",
            "--profile-json",
            "t.json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("profile of 'fake': 3 runs"), "{out}");
    assert!(
        out.lines().nth(2).unwrap().contains("plus \"one\""),
        "{out}"
    );
    let trace = std::fs::read_to_string(dir.join("t.json")).unwrap();
    assert!(trace.contains("\"name\":\"plus \\\"one\\\"\""), "{trace}");
    assert_eq!(trace.matches("\"cat\":\"Node\"").count(), 3, "{trace}");
    let o = run(&exe, dir, &["in.npy", "--profile-runs", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));

    // --info
    let o = run(&exe, dir, &["--info"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(out.contains("input 0: x f32 [2, 2]"), "{out}");
    assert!(out.contains("output 1: ../sum f32 []"), "{out}");

    // errors: usage -> 2, bad data -> 1 naming the file
    assert_eq!(run(&exe, dir, &[]).status.code(), Some(2));
    assert_eq!(
        run(&exe, dir, &["--bench", "0", "in.npy"]).status.code(),
        Some(2)
    );
    assert_eq!(run(&exe, dir, &["--frob"]).status.code(), Some(2));
    assert_eq!(run(&exe, dir, &["in.npy", "in.npy"]).status.code(), Some(2));
    let o = run(&exe, dir, &["--input", "nope=in.npy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("nope"));

    let expect_fail = |file: &str, npy_bytes: Vec<u8>, needle: &str| {
        std::fs::write(dir.join(file), npy_bytes).unwrap();
        let o = run(&exe, dir, &["--input", &format!("x={file}")]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(file) && err.contains(needle), "{file}: {err}");
    };
    expect_fail(
        "shape.npy",
        Npy::from_f32(&[4], &[0.0; 4]).to_bytes(),
        "shape [4] does not match the model's [2, 2]",
    );
    expect_fail(
        "dtype.npy",
        Npy::new(11, vec![2, 2], vec![0; 32]).unwrap().to_bytes(),
        "dtype '<f8'",
    );
    let mut trunc = input.to_bytes();
    trunc.pop();
    expect_fail("trunc.npy", trunc, "data bytes");
    expect_fail("junk.npy", b"hello".to_vec(), "not a .npy");
    let o = run(&exe, dir, &["missing.npy"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("missing.npy"));
    let o = run(&exe, dir, &["in.npy", "-o", "no/such/dir"]);
    assert_eq!(o.status.code(), Some(1));

    // numpy interop, when available: numpy writes the input and reads the outputs
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if py.exists() {
        let script = r#"
import numpy as np, subprocess, sys, os
exe, d = sys.argv[1], sys.argv[2]
np.save(os.path.join(d, 'np_in.npy'), np.array([[0, 1], [2, 3]], dtype=np.float32))
np.save(os.path.join(d, 'np_f.npy'), np.asfortranarray(np.zeros((2, 2), dtype=np.float32)))
subprocess.run([exe, '--input', 'x=np_in.npy', '-o', 'out'], cwd=d, check=True)
y = np.load(os.path.join(d, 'out', 'out_y.npy'))
assert y.dtype == np.float32 and y.shape == (2, 2), (y.dtype, y.shape)
assert (y == np.array([[1, 2], [3, 4]], dtype=np.float32)).all(), y
s = np.load(os.path.join(d, 'out', '_._sum.npy'))
assert s.shape == () and float(s) == 6.0, s
r = subprocess.run([exe, 'np_f.npy'], cwd=d, capture_output=True, text=True)
assert r.returncode == 1 and 'Fortran' in r.stderr, r.stderr
"#;
        let o = Command::new(&py)
            .args(["-c", script])
            .arg(&exe)
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    } else {
        eprintln!("skipping numpy interop: no {}", py.display());
    }
}

#[cfg(feature = "dylib")]
#[test]
fn load_shared_library() {
    if !have_cc() {
        eprintln!("skipping shared library test: no `cc` found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model.c");
    std::fs::write(&src, FAKE_MODEL).unwrap();
    let so = tmp.path().join("libfake.so");
    cc(&[
        "-O2".as_ref(),
        "-shared".as_ref(),
        "-fPIC".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        so.as_os_str(),
    ]);
    for m in [
        kiln_runtime::Model::load(&so).unwrap(),
        kiln_runtime::Model::load_symbol(&so, "fake_model").unwrap(),
    ] {
        assert_eq!(m.name(), "fake");
        assert_eq!(m.outputs().len(), 2);
        let out = m.run_f32(&[&[1.0, 2.0, 3.0, 4.0]]).unwrap();
        assert_eq!(out, vec![vec![2.0, 3.0, 4.0, 5.0], vec![10.0]]);
    }
    let e = kiln_runtime::Model::load_symbol(&so, "nope_model").unwrap_err();
    assert!(e.to_string().contains("nope_model"), "{e}");
}

/// `kiln.h` compiles warning-free (twice included) and `kiln_run_checked` validates calls.
#[test]
fn kiln_h_run_checked() {
    if !have_cc() {
        eprintln!("skipping kiln.h test: no `cc` found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.c");
    std::fs::write(&model, FAKE_MODEL).unwrap();
    let test = tmp.path().join("t.c");
    std::fs::write(
        &test,
        r#"
#include "kiln.h"
#include "kiln.h"
#include <stdio.h>
#include <stdlib.h>
const kiln_model *fake_model(void);
#define CHECK(e, want) do { int32_t got = (e); if (got != (want)) { \
  printf("line %d: got %d want %d\n", __LINE__, (int)got, (int)(want)); return 1; } } while (0)
int main(void) {
  const kiln_model *m = fake_model();
  float x[4] = {1, 2, 3, 4}, y[4], s;
  const void *in[1] = {x};
  void *out[2] = {y, &s};
  uint64_t ib[1] = {16}, ob[2] = {16, 4}, bad[2] = {12, 4};
  void *ws = aligned_alloc(64, 64);
  CHECK(kiln_run_checked(m, 1, in, ib, 2, out, ob, ws), KILN_OK);
  if (y[0] != 2.0f || y[3] != 5.0f || s != 10.0f) return 1;
  CHECK(kiln_run_checked(m, 0, in, ib, 2, out, ob, ws), KILN_ERR_ARITY);
  CHECK(kiln_run_checked(m, 1, in, ib, 1, out, ob, ws), KILN_ERR_ARITY);
  CHECK(kiln_run_checked(m, 1, in, bad, 2, out, ob, ws), KILN_ERR_SIZE);
  CHECK(kiln_run_checked(m, 1, in, ib, 2, out, bad, ws), KILN_ERR_SIZE);
  CHECK(kiln_run_checked(m, 1, NULL, ib, 2, out, ob, ws), KILN_ERR_NULL);
  CHECK(kiln_run_checked(m, 1, in, ib, 2, out, ob, NULL), KILN_ERR_NULL);
  CHECK(kiln_run_checked(m, 1, in, ib, 2, out, ob, (char *)ws + 4), KILN_ERR_ALIGN);
  CHECK(kiln_run_checked(NULL, 1, in, ib, 2, out, ob, ws), KILN_ERR_NULL);
  kiln_model copy = *m;
  copy.abi_version = KILN_ABI_VERSION + 1;
  CHECK(kiln_run_checked(&copy, 1, in, ib, 2, out, ob, ws), KILN_ERR_ABI);
  /* a pool without its parallel_for is refused before the model runs */
  kiln_pool pool = {NULL, 2, NULL};
  CHECK(kiln_run_pool_checked(m, 1, in, ib, 2, out, ob, ws, &pool), KILN_ERR_NULL);
  CHECK(kiln_run_pool_checked(m, 1, in, ib, 2, out, ob, ws, NULL), KILN_OK);
  out[1] = NULL;
  CHECK(kiln_run_checked(m, 1, in, ib, 2, out, ob, ws), KILN_ERR_NULL);
  free(ws);
  return 0;
}
"#,
    )
    .unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let exe = tmp.path().join("t");
    let mut inc = std::ffi::OsString::from("-I");
    inc.push(&include);
    cc(&[
        "-O2".as_ref(),
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-Wpedantic".as_ref(),
        "-std=c11".as_ref(),
        inc.as_os_str(),
        test.as_os_str(),
        model.as_os_str(),
        "-o".as_ref(),
        exe.as_os_str(),
    ]);
    let o = Command::new(&exe).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stdout));
}
