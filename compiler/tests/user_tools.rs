//! What users touch around the compiler: the CMake example (examples/c), the pkg-config file,
//! progress bars (only on a terminal), `--quiet`, shell completions, `--version`, `--help`.
//!
//! The CMake example needs `cmake` and the terminal test `script` (util-linux;
//! `scripts/setup-tools.sh`); without them those cases skip with a message, unless
//! `KILN_REQUIRE_TOOLS=1` (set by `scripts/test.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        let msg = format!("{tool} not installed (scripts/setup-tools.sh)");
        if std::env::var("KILN_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn ok(cmd: &mut Command) -> (String, String) {
    let o = cmd.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{cmd:?} failed:\n{out}{err}");
    (out, err)
}

const TINY: &str = "examples/models/tiny_cnn.onnx";

/// examples/c as a user builds it: configure with the kiln binary, build (the custom command
/// compiles the model), ctest (compares with ONNX Runtime's output, runs a profile); static
/// and shared.
#[test]
fn cmake_example_builds_and_matches_onnxruntime() {
    if !have("cmake") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for shared in ["OFF", "ON"] {
        let b = d.path().join(format!("build-{shared}"));
        ok(Command::new("cmake")
            .arg("-S")
            .arg(root().join("examples/c"))
            .arg("-B")
            .arg(&b)
            .arg(format!("-DKILN={}", env!("CARGO_BIN_EXE_kiln")))
            .arg(format!("-DKILN_SHARED={shared}")));
        ok(Command::new("cmake").arg("--build").arg(&b));
        let lib = b.join(if shared == "ON" {
            "model/libtiny_cnn.so"
        } else {
            "model/libtiny_cnn.a"
        });
        assert!(lib.is_file(), "{}", lib.display());
        let (out, _) = ok(Command::new("ctest")
            .args(["--output-on-failure", "--test-dir"])
            .arg(&b));
        assert!(
            out.contains("100% tests passed, 0 tests failed out of 2"),
            "{out}"
        );
        let (out, _) = ok(Command::new(b.join("classify"))
            .arg(root().join("examples/models/tiny_cnn_input.npy"))
            .arg(root().join("examples/models/tiny_cnn_expected.npy"))
            .arg("--profile"));
        assert!(out.contains("matches"), "{out}");
        assert!(out.contains("conv+relu"), "{out}");
        // a wrong reference is caught
        let o = Command::new(b.join("classify"))
            .arg(root().join("examples/models/tiny_cnn_input.npy"))
            .arg(root().join("examples/models/tiny_cnn_input.npy"))
            .output()
            .unwrap();
        assert!(!o.status.success());
    }
}

/// `--emit staticlib,header,pc` into a directory; a C program built with `pkg-config --cflags
/// --libs` from that directory runs the model.
#[test]
fn pkg_config_file_builds_a_program() {
    if !have("pkg-config") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("model");
    let (_, err) = ok(kiln()
        .arg("build")
        .arg(root().join(TINY))
        .args(["--emit", "staticlib,header,pc", "-o"])
        .arg(&dir));
    for f in ["libtiny_cnn.a", "tiny_cnn.h", "tiny_cnn.pc"] {
        assert!(dir.join(f).is_file(), "{f}");
        assert!(
            err.contains(&format!("wrote {}", dir.join(f).display())),
            "{err}"
        );
    }
    let (flags, _) = ok(Command::new("pkg-config")
        .args(["--cflags", "--libs", "tiny_cnn"])
        .env("PKG_CONFIG_PATH", &dir));
    assert!(
        flags.contains("-ltiny_cnn") && flags.contains("-lm"),
        "{flags}"
    );
    let exe = d.path().join("classify");
    let mut cc = Command::new("cc");
    cc.args([
        "-std=c11",
        "-O1",
        "-DMODEL_HEADER=\"tiny_cnn.h\"",
        "-DMODEL_FN=tiny_cnn_model",
    ])
    .arg(root().join("examples/c/main.c"))
    .arg("-o")
    .arg(&exe)
    .args(flags.split_whitespace());
    ok(&mut cc);
    let (out, _) = ok(Command::new(&exe)
        .arg(root().join("examples/models/tiny_cnn_input.npy"))
        .arg(root().join("examples/models/tiny_cnn_expected.npy")));
    assert!(out.contains("matches"), "{out}");
    // the .pc points at its own directory: moved with its files, it still works
    let moved = d.path().join("elsewhere");
    std::fs::rename(&dir, &moved).unwrap();
    let (flags, _) = ok(Command::new("pkg-config")
        .args(["--cflags", "tiny_cnn"])
        .env("PKG_CONFIG_PATH", &moved));
    assert!(flags.contains(&moved.display().to_string()), "{flags}");
}

/// Progress bars appear on a terminal (a pty from `script`), never in a pipe, and `--quiet`
/// silences them and the notes.
#[test]
fn progress_bars_only_on_a_terminal() {
    let m = root().join(TINY);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("libt.so");
    // stderr is a pipe: the notes only, no bar, no escape sequence
    let (_, err) = ok(kiln().arg("build").arg(&m).arg("-o").arg(&out));
    assert_eq!(err.trim(), format!("wrote {}", out.display()));
    let (_, err) = ok(kiln()
        .arg("build")
        .arg(&m)
        .arg("-o")
        .arg(&out)
        .arg("--quiet"));
    assert_eq!(err, "");
    if !have("script") {
        return;
    }
    let tty = |extra: &str| {
        let cmd = format!(
            "{} build {} -o {} {extra}",
            env!("CARGO_BIN_EXE_kiln"),
            m.display(),
            out.display()
        );
        ok(Command::new("script").args(["-qec", &cmd, "/dev/null"])).0
    };
    let shown = tty("");
    for phase in ["load", "optimize", "llvm kernels", "codegen", "link"] {
        assert!(
            shown.contains(phase),
            "no '{phase}' bar on a terminal: {shown:?}"
        );
    }
    assert!(shown.contains("\u{1b}["), "no terminal escapes: {shown:?}");
    assert!(shown.contains("wrote"), "{shown:?}");
    let quiet = tty("--quiet");
    assert!(
        !quiet.contains("codegen") && !quiet.contains("wrote"),
        "{quiet:?}"
    );
}

#[test]
fn shell_completions() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (out, _) = ok(kiln().args(["completions", shell]));
        assert!(out.contains("build") && out.contains("inspect"), "{shell}");
    }
    // bash really completes a subcommand and an option
    if !have("bash") {
        return;
    }
    let (script, _) = ok(kiln().args(["completions", "bash"]));
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("kiln.bash");
    std::fs::write(&f, script).unwrap();
    let complete = |words: &str| {
        let w: Vec<&str> = words.split(' ').collect();
        let n = w.len() - 1;
        // bash calls the function with the command, the word to complete and the one before
        let cmd = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={n}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _kiln kiln {} {}; echo \"${{COMPREPLY[@]}}\"",
            f.display(),
            w[n],
            w[n - 1]
        );
        ok(Command::new("bash").args(["-c", &cmd])).0
    };
    assert_eq!(complete("kiln bu").trim(), "build");
    assert!(complete("kiln build --emi").contains("--emit"));
}

#[test]
fn version_names_llvm_and_targets() {
    let (out, _) = ok(kiln().arg("--version"));
    let llvm = out
        .lines()
        .find_map(|l| l.strip_prefix("LLVM "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        llvm.split('.').next().unwrap().parse::<u32>().unwrap() >= 14,
        "{out}"
    );
    assert!(out.contains("x86_64 (Cranelift + LLVM)"), "{out}");
    assert!(out.contains("aarch64 (Cranelift + LLVM)"), "{out}");
    assert!(out.contains("artefact ABI: 3"), "{out}");
}

#[test]
fn help_has_examples() {
    for sub in [&["--help"][..], &["build", "--help"]] {
        let (out, _) = ok(kiln().args(sub));
        assert!(out.contains("Examples:"), "{out}");
    }
}
