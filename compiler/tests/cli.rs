//! The `kiln` command line end to end, on a small model written in kiln's textual IR (no
//! Python needed): every `--emit` kind, `kiln run`, cross-compilation, and failures that must
//! leave no output file behind.

use kiln_runtime::npy::{self, Npy};
use std::path::Path;
use std::process::Command;

const MODEL: &str = r#"graph small {
  input %x: f32[1,2,4,4]
  const %w: f32[3,2,1,1] = [0.5, -1, 0.25, 2, -0.5, 1]
  const %b: f32[3] = [0.1, 0.2, -0.3]
  %c = conv(%x, %w, %b) {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], groups=1} : f32[1,3,4,4]
  %r = relu(%c) : f32[1,3,4,4]
  %p = global_average_pool(%r) : f32[1,3,1,1]
  %y = reshape(%p) {shape=[1,3]} : f32[1,3]
  output %y
}
"#;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("small.kir");
    std::fs::write(&m, MODEL).unwrap();
    (d, m)
}

/// What the model computes, by hand.
fn expected(x: &[f32]) -> Vec<f32> {
    let w = [[0.5f32, -1.0], [0.25, 2.0], [-0.5, 1.0]];
    let b = [0.1f32, 0.2, -0.3];
    (0..3)
        .map(|m| {
            (0..16)
                .map(|p| (w[m][0] * x[p] + w[m][1] * x[16 + p] + b[m]).max(0.0))
                .sum::<f32>()
                / 16.0
        })
        .collect()
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn inspect_reports_workspace_and_unfused_epilogues() {
    let (d, m) = setup();
    let out = ok(kiln().arg("inspect").arg(&m));
    assert!(out.contains("unfused epilogue candidates: 0"), "{out}");
    assert!(out.contains("naive = tensors "), "{out}");
    // with the activation rule off, the conv -> relu pair is listed
    let sw = d.path().join("switch.json");
    std::fs::write(&sw, r#"{"fuse_conv_activation": "off"}"#).unwrap();
    let out = ok(kiln()
        .arg("inspect")
        .arg(&m)
        .arg("--fusion-switch")
        .arg(&sw));
    assert!(out.contains("unfused epilogue candidates: 1"), "{out}");
    assert!(
        out.contains("  c (conv) -> r (relu): epilogue step exists"),
        "{out}"
    );
}

#[test]
fn run_writes_outputs() {
    let (d, m) = setup();
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.0) * 0.1).collect();
    npy::write(&d.path().join("x.npy"), &Npy::from_f32(&[1, 2, 4, 4], &x)).unwrap();
    // every register tiling of the convolution kernel gives the same result
    for schedule in ["auto", "pixels", "channels", "winograd"] {
        let out = d.path().join(schedule);
        ok(kiln()
            .arg("run")
            .arg(&m)
            .arg("--input")
            .arg(format!("x={}", d.path().join("x.npy").display()))
            .args(["--conv-schedule", schedule, "--output-dir"])
            .arg(&out));
        let y = npy::read(&out.join("y.npy")).unwrap();
        assert_eq!(y.shape, vec![1, 3]);
        for (a, b) in y.to_f32().unwrap().iter().zip(expected(&x)) {
            assert!((a - b).abs() < 1e-6, "{schedule}: {a} vs {b}");
        }
    }
    fails(
        kiln().arg("run").arg(&m).args(["--conv-schedule", "rows"]),
        "invalid value 'rows'",
    );
}

#[test]
fn every_emit_kind() {
    let (d, m) = setup();
    let p = d.path();
    for (kind, file) in [
        ("so", "libsmall.so"),
        ("obj", "small.o"),
        ("staticlib", "libsmall.a"),
        ("exe", "small"),
        ("header", "small.h"),
        ("ir", "small.kir.out"),
    ] {
        ok(kiln()
            .arg("build")
            .arg(&m)
            .args(["--emit", kind, "-o"])
            .arg(p.join(file)));
        assert!(std::fs::metadata(p.join(file)).unwrap().len() > 0, "{kind}");
    }
    // the printed IR parses back to the same text
    let ir = std::fs::read_to_string(p.join("small.kir.out")).unwrap();
    assert_eq!(
        kiln_ir::text::print(&kiln_ir::text::parse(&ir).unwrap()),
        ir
    );
    let h = std::fs::read_to_string(p.join("small.h")).unwrap();
    assert!(
        h.contains("const kiln_model *small_model(void);") && h.contains("SMALL_WORKSPACE_SIZE"),
        "{h}"
    );
    // the executable: --info, and a run through the static library from C
    assert!(ok(Command::new(p.join("small")).arg("--info")).contains('x'));
    let c = p.join("main.c");
    std::fs::write(
        &c,
        "#include \"small.h\"\n#include <stdio.h>\nint main(void){ float x[32], y[3]; for (int i=0;i<32;i++) x[i]=(i-15)*0.1f;\n\
         const void *in[1]={x}; void *out[1]={y}; static char ws[SMALL_WORKSPACE_SIZE+1] __attribute__((aligned(64)));\n\
         int st = small_model()->run(in, out, ws); printf(\"%d %.6f %.6f %.6f\\n\", st, y[0], y[1], y[2]); return st; }\n",
    )
    .unwrap();
    let exe = p.join("c_static");
    let st = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .arg(format!("-I{}", p.display()))
        .arg(p.join("libsmall.a"))
        .arg("-lm")
        .status()
        .unwrap();
    assert!(st.success());
    let out = ok(&mut Command::new(&exe));
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.0) * 0.1).collect();
    let vals: Vec<f32> = out
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    for (a, b) in vals.iter().zip(expected(&x)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// An executable for the baseline x86-64 (SSE only: no AVX) runs and matches the host build:
/// vector rows that start at unaligned elements (a 7x7 global pool, broadcast rows) must not be
/// folded into SSE instructions that fault on unaligned memory.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn baseline_x86_64_executable_runs() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("base.kir");
    std::fs::write(
        &m,
        "graph base {\n  input %x: f32[1,3,7,7]\n  const %s: f32[1,3,1,1] = [0.5, -1.0, 2.0]\n\
         %m = mul(%x, %s) : f32[1,3,7,7]\n  %p = global_average_pool(%m) : f32[1,3,1,1]\n\
         output %p, %m\n}\n",
    )
    .unwrap();
    let x: Vec<f32> = (0..147).map(|i| (i as f32 - 70.0) * 0.01).collect();
    let xp = d.path().join("x.npy");
    npy::write(&xp, &Npy::from_f32(&[1, 3, 7, 7], &x)).unwrap();
    let exe = d.path().join("base");
    ok(kiln()
        .arg("build")
        .arg(&m)
        .args([
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-cpu",
            "x86-64",
            "--emit",
            "exe",
            "-o",
        ])
        .arg(&exe));
    let input = format!("x={}", xp.display());
    ok(Command::new(&exe)
        .args(["--input", &input, "--output-dir"])
        .arg(d.path().join("exe")));
    ok(kiln()
        .arg("run")
        .arg(&m)
        .args(["--input", &input, "--output-dir"])
        .arg(d.path().join("host")));
    for name in ["p.npy", "m.npy"] {
        let a = npy::read(&d.path().join("exe").join(name)).unwrap();
        let b = npy::read(&d.path().join("host").join(name)).unwrap();
        assert_eq!(a.to_f32().unwrap(), b.to_f32().unwrap(), "{name}");
    }
}

/// `--freeze NAME=FILE.npy` turns an input into a compile-time constant: the model then runs
/// with no inputs and computes the same result; a mismatched value is a clear error.
#[test]
fn freeze_makes_an_input_constant() {
    let (d, m) = setup();
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 9.0) * 0.07).collect();
    let xf = d.path().join("x.npy");
    npy::write(&xf, &Npy::from_f32(&[1, 2, 4, 4], &x)).unwrap();
    let out = d.path().join("out");
    ok(kiln()
        .args(["run"])
        .arg(&m)
        .arg("--freeze")
        .arg(format!("x={}", xf.display()))
        .arg("--output-dir")
        .arg(&out));
    let y = npy::read(&out.join("y.npy")).unwrap().to_f32().unwrap();
    for (a, b) in y.iter().zip(expected(&x)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let bad = d.path().join("bad.npy");
    npy::write(&bad, &Npy::from_f32(&[2, 2], &[0.0; 4])).unwrap();
    fails(
        kiln()
            .args(["build"])
            .arg(&m)
            .arg("--freeze")
            .arg(format!("x={}", bad.display()))
            .arg("-o")
            .arg(d.path().join("never.so")),
        "the frozen value is",
    );
    assert!(!d.path().join("never.so").exists());
}

#[test]
fn cross_compiles_for_aarch64() {
    let (d, m) = setup();
    let o = d.path().join("small_arm.o");
    ok(kiln()
        .arg("build")
        .arg(&m)
        .args([
            "--emit",
            "obj",
            "--target",
            "aarch64-unknown-linux-gnu",
            "--kernels",
            "cranelift",
            "-o",
        ])
        .arg(&o));
    assert_aarch64(&std::fs::read(&o).unwrap());
    // with the LLVM (NEON) kernels: a static library of the Cranelift and the LLVM object
    let a = d.path().join("libsmall_arm.a");
    ok(kiln()
        .arg("build")
        .arg(&m)
        .args([
            "--emit",
            "staticlib",
            "--target",
            "aarch64-unknown-linux-gnu",
            "-o",
        ])
        .arg(&a));
    let x = d.path().join("members");
    std::fs::create_dir_all(&x).unwrap();
    ok(Command::new("ar").arg("x").arg(&a).current_dir(&x));
    let mut names: Vec<String> = std::fs::read_dir(&x)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["small.o", "small_kernels.o"]);
    for n in names {
        assert_aarch64(&std::fs::read(x.join(n)).unwrap());
    }
}

fn assert_aarch64(b: &[u8]) {
    assert_eq!(&b[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([b[18], b[19]]),
        183,
        "e_machine must be EM_AARCH64"
    );
}

fn fails(cmd: &mut Command, needle: &str) {
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn failures_are_clear_and_leave_nothing() {
    let (d, m) = setup();
    let p = d.path();
    let out = p.join("bad.so");
    // a CPU name LLVM does not know (LLVM itself would abort the process) or an architecture
    // without LLVM kernels: clear errors before anything is generated
    fails(
        kiln()
            .arg("build")
            .arg(&m)
            .args(["--target-cpu", "pentium-9000", "-o"])
            .arg(&out),
        "unknown --target-cpu 'pentium-9000'",
    );
    fails(
        kiln()
            .arg("build")
            .arg(&m)
            .args([
                "--target",
                "riscv64gc-unknown-linux-gnu",
                "--emit",
                "obj",
                "-o",
            ])
            .arg(&out),
        "LLVM kernels support x86_64 and aarch64",
    );
    assert!(!out.exists());
    // corrupt ONNX file
    std::fs::write(p.join("bad.onnx"), b"\x08\x07\x12\xff\xff\xff garbage").unwrap();
    fails(
        kiln()
            .arg("build")
            .arg(p.join("bad.onnx"))
            .arg("-o")
            .arg(&out),
        "bad.onnx",
    );
    // unknown target
    fails(
        kiln()
            .arg("build")
            .arg(&m)
            .args(["--target", "nonsense-cpu-os", "-o"])
            .arg(&out),
        "nonsense-cpu-os",
    );
    // unknown file type, missing file
    fails(
        kiln()
            .arg("build")
            .arg(p.join("model.xyz"))
            .arg("-o")
            .arg(&out),
        "model.xyz",
    );
    fails(
        kiln()
            .arg("build")
            .arg(p.join("missing.onnx"))
            .arg("-o")
            .arg(&out),
        "missing.onnx",
    );
    // an IR type error names the line
    std::fs::write(
        p.join("bad.kir"),
        MODEL.replace("f32[1,3,1,1]", "f32[1,3,2,2]"),
    )
    .unwrap();
    fails(
        kiln()
            .arg("build")
            .arg(p.join("bad.kir"))
            .arg("-o")
            .arg(&out),
        "line",
    );
    assert!(!Path::new(&out).exists());
    let leftovers: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // wrong input shape for kiln run
    npy::write(&p.join("x.npy"), &Npy::from_f32(&[1, 2, 4, 5], &[0.0; 40])).unwrap();
    fails(
        kiln()
            .arg("run")
            .arg(&m)
            .arg("--input")
            .arg(format!("x={}", p.join("x.npy").display()))
            .arg("--output-dir")
            .arg(p.join("o")),
        "x.npy",
    );
}

/// The GPU back end from the command line: `--emit ptx|so` for `nvptx64-nvidia-cuda`, the
/// emulated run, and `--device cuda` where there is no driver (a clear error).
#[test]
fn gpu_build_and_run() {
    let (d, m) = setup();
    let gpu = ["--target", "nvptx64-nvidia-cuda"];
    let ptx = d.path().join("small.ptx");
    ok(kiln()
        .arg("build")
        .arg(&m)
        .args(gpu)
        .args(["--gpu-arch", "sm_90", "--emit", "ptx", "-o"])
        .arg(&ptx));
    let text = std::fs::read_to_string(&ptx).unwrap();
    assert!(text.contains(".target sm_90"), "{text}");
    assert!(text.contains(".visible .entry small_k"), "{text}");
    let so = d.path().join("libsmall.so");
    ok(kiln().arg("build").arg(&m).args(gpu).arg("-o").arg(&so));
    let bytes = kiln_runtime::cuda::artefact_from_so(&so).unwrap();
    let art = kiln_runtime::cuda_artefact::CudaArtefact::from_bytes(&bytes).unwrap();
    assert_eq!(art.sm, "sm_80");
    assert!(!art.launches.is_empty() && art.ptx.contains(".target sm_80"));
    assert_eq!(art.inputs.len(), 1);

    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.0) * 0.1).collect();
    let xp = d.path().join("x.npy");
    npy::write(&xp, &Npy::from_f32(&[1, 2, 4, 4], &x)).unwrap();
    let out = d.path().join("emu");
    ok(kiln()
        .arg("run")
        .arg(&m)
        .arg("--input")
        .arg(format!("x={}", xp.display()))
        .args(["--device", "cuda-emulated", "--output-dir"])
        .arg(&out));
    let y = npy::read(&out.join("y.npy")).unwrap();
    assert_eq!(y.shape, vec![1, 3]);
    for (a, b) in y.to_f32().unwrap().iter().zip(expected(&x)) {
        assert!((a - b).abs() < 1e-6, "emulated GPU: {a} vs {b}");
    }
    if !kiln_runtime::cuda::driver_present() {
        fails(
            kiln()
                .arg("run")
                .arg(&m)
                .arg("--input")
                .arg(format!("x={}", xp.display()))
                .args(["--device", "cuda", "--output-dir"])
                .arg(d.path().join("gpu")),
            "no NVIDIA driver",
        );
        assert!(!d.path().join("gpu").join("y.npy").exists());
    }
    fails(
        kiln()
            .arg("build")
            .arg(&m)
            .args(gpu)
            .args(["--emit", "exe"]),
        "not available for nvptx64-nvidia-cuda",
    );
    fails(
        kiln()
            .arg("build")
            .arg(&m)
            .args(gpu)
            .args(["--gpu-arch", "sm_20"]),
        "invalid value 'sm_20'",
    );
    fails(
        kiln()
            .arg("run")
            .arg(&m)
            .args(["--device", "cuda-emulated", "--profile"]),
        "--profile times the CPU back end",
    );
}
