//! Runs the hostile-input corpus (`tests/hostile/gen.rs`) through the `kiln` binary. Each case
//! must fail cleanly: a nonzero exit (not a signal) with an error naming the file (and the node
//! where there is one), no panic text, within 5 s (of CPU time, user + system, so that a loaded
//! CI machine does not fail it; a run is killed after 20 s of wall time) and 1 GB of peak RSS,
//! and nothing left behind — no output file, no temporary file beside it or in `$TMPDIR`.
//!
//! `KILN_HOSTILE_ONLY=substring` runs the matching cases; `KILN_HOSTILE_WRITE=DIR` also writes
//! the corpus to DIR (one directory per case, with `args.txt`), e.g. to seed the fuzzers.

#[path = "../../tests/hostile/gen.rs"]
mod corpus;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIME_LIMIT: Duration = Duration::from_secs(5);
const RSS_LIMIT_KB: i64 = 1 << 20;

/// Every path under `dir` (relative), links not followed.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn materialize(c: &corpus::Case, dir: &Path) {
    for (p, bytes) in &c.files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, bytes).unwrap();
    }
    for (p, target) in &c.links {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, f).unwrap();
    }
}

struct Outcome {
    status: i32,
    signaled: bool,
    stderr: String,
    /// Wall time.
    secs: f64,
    /// User + system CPU time (of kiln and the tools it waited for).
    cpu: f64,
    max_rss_kb: i64,
    timed_out: bool,
}

/// Runs `kiln` in `dir`, measuring the child's peak RSS (`wait4`) and killing it after the
/// time limit (plus slack, so the overrun is reported rather than hung on).
fn run(c: &corpus::Case, dir: &Path, tmp: &Path) -> Outcome {
    let stderr_path = tmp.join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(&c.args)
        .current_dir(dir)
        .env("TMPDIR", tmp.join("t"))
        .env_remove("KILN_DECRYPT_KEY")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed");
        if t.elapsed() > TIME_LIMIT * 4 {
            timed_out = true;
            // SAFETY: killing our own child, then reaping it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut ru);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::mem::forget(child); // reaped above
    let secs = t.elapsed().as_secs_f64();
    let signaled = libc::WIFSIGNALED(status);
    Outcome {
        status: if signaled {
            -libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        },
        signaled,
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        secs,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss,
        timed_out,
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 * 1e-6
}

fn write_corpus(cases: &[corpus::Case], out: &Path) {
    for c in cases {
        let d = out.join(&c.name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        materialize(c, &d);
        let mut args = c.args.join("\n");
        args.push('\n');
        std::fs::write(d.join("args.txt"), args).unwrap();
    }
}

#[test]
fn hostile_inputs_fail_cleanly() {
    let all = corpus::cases();
    let mut names = std::collections::HashSet::new();
    for c in &all {
        assert!(
            names.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
    }
    assert!(all.len() >= 100, "only {} cases", all.len());
    if let Some(out) = std::env::var_os("KILN_HOSTILE_WRITE") {
        write_corpus(&all, &PathBuf::from(out));
    }
    let only = std::env::var("KILN_HOSTILE_ONLY").ok();
    let root = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut slowest = (0.0, String::new());
    let mut biggest = (0, String::new());
    for c in all
        .iter()
        .filter(|c| only.as_deref().is_none_or(|o| c.name.contains(o)))
    {
        let dir = root.path().join(&c.name);
        let tmp = root.path().join(format!("{}.tmp", c.name));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(tmp.join("t")).unwrap();
        materialize(c, &dir);
        let before = listing(&dir);
        let o = run(c, &dir, &tmp);
        let mut bad = Vec::new();
        if o.timed_out {
            bad.push("killed after 20 s".to_string());
        } else if o.cpu > TIME_LIMIT.as_secs_f64() {
            bad.push(format!("took {:.2} s of CPU ({:.2} s wall)", o.cpu, o.secs));
        }
        if o.signaled {
            bad.push(format!("killed by signal {}", -o.status));
        } else if o.status == 0 {
            bad.push("exit code 0".into());
        }
        if o.max_rss_kb > RSS_LIMIT_KB {
            bad.push(format!("peak RSS {} MB", o.max_rss_kb / 1024));
        }
        for n in &c.needles {
            if !o.stderr.contains(n.as_str()) {
                bad.push(format!("error does not name {n:?}"));
            }
        }
        for p in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            if o.stderr.contains(p) {
                bad.push("panic".into());
                break;
            }
        }
        if !o.stderr.contains("error") {
            bad.push("no error message".into());
        }
        let after = listing(&dir);
        if after != before {
            let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
            bad.push(format!("left behind {new:?}"));
        }
        let t = listing(&tmp.join("t"));
        if !t.is_empty() {
            bad.push(format!("left in $TMPDIR {t:?}"));
        }
        if o.cpu > slowest.0 {
            slowest = (o.cpu, c.name.clone());
        }
        if o.max_rss_kb > biggest.0 {
            biggest = (o.max_rss_kb, c.name.clone());
        }
        if !bad.is_empty() {
            failures.push(format!(
                "{}: {}\n    kiln {}\n    stderr: {}",
                c.name,
                bad.join("; "),
                c.args.join(" "),
                o.stderr.trim().replace('\n', "\n            ")
            ));
        }
    }
    eprintln!(
        "{} cases; slowest {:.2} s of CPU ({}), largest peak RSS {} MB ({})",
        all.len(),
        slowest.0,
        slowest.1,
        biggest.0 / 1024,
        biggest.1
    );
    assert!(
        failures.is_empty(),
        "{} hostile cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs `kiln args` in `dir` (no case files), asserting success within the corpus' time and
/// memory limits.
fn succeeds(dir: &Path, args: &[&str]) {
    let c = corpus::Case {
        name: "ok".into(),
        files: vec![],
        links: vec![],
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        needles: vec![],
    };
    let tmp = dir.join(".t");
    std::fs::create_dir_all(tmp.join("t")).unwrap();
    let o = run(&c, dir, &tmp);
    assert!(
        !o.timed_out && !o.signaled && o.status == 0,
        "kiln {}: {}",
        args.join(" "),
        o.stderr
    );
    assert!(
        o.cpu < TIME_LIMIT.as_secs_f64(),
        "{args:?}: {} s of CPU",
        o.cpu
    );
    assert!(o.max_rss_kb < RSS_LIMIT_KB, "{args:?}: {} KB", o.max_rss_kb);
    assert!(listing(&tmp.join("t")).is_empty());
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Windows far beyond their input (a stride of 2^20 or 2^62, dilations and pads of 2^30) are
/// valid models: they build quickly and in little memory with both kernel sets (before, the
/// packed input of every stride phase made `kiln build` allocate ~8 GiB and abort, or spin
/// for minutes with `--kernels cranelift`).
#[test]
fn absurd_windows_build_quickly() {
    let d = tempfile::tempdir().unwrap();
    let conv = |strides: &str, pads: &str, dil: &str, out: &str| {
        format!(
            "graph g {{\n  input %x: f32[1,2,4,4]\n  const %w: f32[3,2,1,1] = [1, 2, 3, 4, 5, 6]\n  %y = conv(%x, %w) {{kernel=[1,1], strides={strides}, pads={pads}, dilations={dil}, groups=1}} : {out}\n  output %y\n}}\n"
        )
    };
    let models = [
        conv("[1048576,1048576]", "[0,0,0,0]", "[1,1]", "f32[1,3,1,1]"),
        conv("[4611686018427387904,4611686018427387904]", "[0,0,0,0]", "[1,1]", "f32[1,3,1,1]"),
        conv("[1073741824,1073741824]", "[1073741824,1073741824,1073741824,1073741824]", "[1,1]", "f32[1,3,3,3]"),
        conv("[1,1]", "[0,0,0,0]", "[1099511627776,1099511627776]", "f32[1,3,4,4]"),
        "graph g {\n  input %x: f32[1,1,4,4]\n  %y = max_pool(%x) {kernel=[2,2], strides=[1048576,1048576], pads=[0,0,0,0], dilations=[1,1], ceil_mode=0} : f32[1,1,1,1]\n  output %y\n}\n".to_string(),
    ];
    for (i, m) in models.iter().enumerate() {
        let f = format!("m{i}.kir");
        std::fs::write(d.path().join(&f), m).unwrap();
        for kernels in ["auto", "cranelift"] {
            succeeds(
                d.path(),
                &[
                    "build",
                    &f,
                    "--kernels",
                    kernels,
                    "-o",
                    &format!("m{i}_{kernels}.so"),
                ],
            );
        }
    }
}

/// `-o` through a symbolic link writes the file the link names and keeps the link (before,
/// the link was replaced by a regular file: as root, `-o /dev/stdout` turned /dev/stdout into
/// one); links to anything but a regular file are refused (the corpus' `out_*` cases).
#[test]
fn outputs_write_through_symlinks() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("model.kir"), corpus::KIR_OK).unwrap();
    std::fs::create_dir(p.join("lib")).unwrap();
    std::fs::write(p.join("lib/real.so"), b"old").unwrap();
    std::os::unix::fs::symlink("lib/real.so", p.join("link.so")).unwrap();
    std::os::unix::fs::symlink("lib/new.kir", p.join("dangling.kir")).unwrap();
    succeeds(p, &["build", "model.kir", "-o", "link.so"]);
    succeeds(
        p,
        &["build", "model.kir", "--emit", "ir", "-o", "dangling.kir"],
    );
    assert!(
        std::fs::symlink_metadata(p.join("link.so"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let so = std::fs::read(p.join("lib/real.so")).unwrap();
    assert_eq!(&so[..4], b"\x7fELF");
    assert!(
        std::fs::symlink_metadata(p.join("dangling.kir"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(p.join("lib/new.kir"))
            .unwrap()
            .starts_with("graph")
    );
    // nothing else appeared
    let mut names: Vec<_> = listing(p);
    names.retain(|n| !n.starts_with(".t"));
    assert_eq!(
        names,
        [
            "dangling.kir",
            "lib",
            "lib/new.kir",
            "lib/real.so",
            "link.so",
            "model.kir"
        ]
    );
}

/// A run-time index out of range or integer division by zero stops a generated executable with
/// the status's meaning (KILN_ERR_INDEX / KILN_ERR_DIVIDE), exit code 1, and no output file.
#[test]
fn executables_report_run_time_statuses() {
    use kiln_runtime::npy::{self, Npy};
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(
        p.join("g.kir"),
        "graph g {\n  input %x: f32[4]\n  input %i: i64[2]\n  %y = gather(%x, %i) {axis=0} : f32[2]\n  output %y\n}\n",
    )
    .unwrap();
    std::fs::write(
        p.join("d.kir"),
        "graph d {\n  input %a: i64[2]\n  input %b: i64[2]\n  %q = div(%a, %b) : i64[2]\n  output %q\n}\n",
    )
    .unwrap();
    succeeds(p, &["build", "g.kir", "--emit", "exe", "-o", "g"]);
    succeeds(p, &["build", "d.kir", "--emit", "exe", "-o", "d"]);
    let i64s = |v: &[i64]| {
        Npy::new(
            kiln_runtime::KILN_DTYPE_I64,
            vec![v.len()],
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
        .unwrap()
    };
    npy::write(
        &p.join("x.npy"),
        &Npy::from_f32(&[4], &[1.0, 2.0, 3.0, 4.0]),
    )
    .unwrap();
    npy::write(&p.join("ok.npy"), &i64s(&[3, -4])).unwrap();
    npy::write(&p.join("bad.npy"), &i64s(&[3, 4])).unwrap();
    npy::write(&p.join("a.npy"), &i64s(&[i64::MIN, 6])).unwrap();
    npy::write(&p.join("b.npy"), &i64s(&[-1, 3])).unwrap();
    npy::write(&p.join("b2.npy"), &i64s(&[7, 3])).unwrap();
    let exe = |name: &str, args: &[&str]| {
        std::fs::create_dir_all(p.join("o")).unwrap();
        let o = Command::new(p.join(name))
            .args(args)
            .args(["--output-dir", "o"])
            .current_dir(p)
            .output()
            .unwrap();
        let files = listing(&p.join("o"));
        std::fs::remove_dir_all(p.join("o")).unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            files,
        )
    };
    let (code, err, files) = exe("g", &["--input", "x=x.npy", "--input", "i=ok.npy"]);
    assert_eq!((code, files.len()), (Some(0), 1), "{err}");
    let (code, err, files) = exe("g", &["--input", "x=x.npy", "--input", "i=bad.npy"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("status 6 (index out of range)"), "{err}");
    assert!(files.is_empty(), "{files:?}");
    let (code, err, files) = exe("d", &["--input", "a=a.npy", "--input", "b=b.npy"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("status 7 (integer division by zero or overflow)"),
        "{err}"
    );
    assert!(files.is_empty(), "{files:?}");
    let (code, err, _) = exe("d", &["--input", "a=a.npy", "--input", "b=b2.npy"]);
    assert_eq!(code, Some(0), "{err}");
}

/// Writes the fuzzing seeds (`corpus::seeds`) to `$KILN_FUZZ_SEEDS/<target>/<name>`; run by
/// scripts/fuzz.sh (`cargo test ... -- --ignored write_fuzz_seeds`).
#[test]
#[ignore = "a tool for scripts/fuzz.sh: writes files to $KILN_FUZZ_SEEDS"]
fn write_fuzz_seeds() {
    let out = PathBuf::from(std::env::var_os("KILN_FUZZ_SEEDS").expect("KILN_FUZZ_SEEDS"));
    let seeds = corpus::seeds();
    for (target, name, bytes) in &seeds {
        let d = out.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), out.display());
}

/// OneHot is the one index op whose out-of-range indices ONNX defines: an all-`off` row (not
/// a clamp, not an error), in range negative indices counting from the end.
#[test]
fn one_hot_out_of_range_rows_are_off() {
    let g = kiln_compiler::onnx::load_bytes(
        &corpus::one_hot_model(),
        None,
        "onehot.onnx",
        &Default::default(),
    )
    .unwrap();
    kiln_ir::verify::verify(&g).unwrap();
    let jit = kiln_target_cpu::compile_jit(&g, "onehot").unwrap();
    // SAFETY: the descriptor lives as long as `jit`.
    let m = unsafe {
        kiln_runtime::Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel)
    }
    .unwrap();
    let idx: Vec<u8> = [1i64, 9, -6, -1, 4, -4]
        .chunks(3)
        .flat_map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
        .collect();
    let want: [[f32; 12]; 2] = [
        // 1 -> row 1; 9 and -6 are outside [-4, 4): off
        [0., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.],
        // -1 -> row 3; 4 is outside; -4 -> row 0
        [0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0.],
    ];
    for (k, chunk) in idx.chunks(24).enumerate() {
        let mut ws = m.workspace().unwrap();
        let mut outs = m.output_buffers().unwrap();
        let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        m.run(&[chunk], &mut refs, &mut ws).unwrap();
        let got: Vec<f32> = outs[0]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, want[k], "case {k}");
    }
}
