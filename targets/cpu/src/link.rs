//! Turning an object file into a shared library, static library or executable with the system
//! C toolchain (`cc`, `ar`). Every output is written through `kiln_runtime::atomic` (a
//! temporary file beside the destination renamed into place; a symbolic link is written
//! through, anything but a regular file refused), so a failed build leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// C source of the `main` of standalone executables.
pub const DRIVER_C: &str = include_str!("driver.c");

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{tool}: {msg}")]
    Tool { tool: String, msg: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LinkError + '_ {
    move |err| LinkError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// Write `bytes` to `dest` atomically (`kiln_runtime::atomic::write`).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), LinkError> {
    kiln_runtime::atomic::write(dest, bytes).map_err(|e| match e {
        kiln_runtime::Error::Io { path, source } => LinkError::Io { path, err: source },
        e => LinkError::Io {
            path: dest.to_path_buf(),
            err: std::io::Error::other(e.to_string()),
        },
    })
}

fn run(cmd: &mut Command, tool: &str) -> Result<(), LinkError> {
    let out = cmd.output().map_err(|e| LinkError::Tool {
        tool: tool.into(),
        msg: format!("cannot run: {e}"),
    })?;
    if !out.status.success() {
        return Err(LinkError::Tool {
            tool: tool.into(),
            msg: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// The architecture of `triple` (`None`: the host's), as in `aarch64-unknown-linux-gnu`.
fn arch_of(triple: Option<&str>) -> &str {
    triple
        .and_then(|t| t.split('-').next())
        .unwrap_or(std::env::consts::ARCH)
}

/// Debian packages with a cross C toolchain (compiler, binutils, libc) for `arch`.
fn cross_packages(arch: &str) -> String {
    let (gcc, libc) = match arch {
        "aarch64" => ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
        "riscv64" | "riscv64gc" => ("gcc-riscv64-linux-gnu", "libc6-dev-riscv64-cross"),
        "x86_64" => ("gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"),
        _ => ("gcc-<arch>-linux-gnu", "libc6-dev-<arch>-cross"),
    };
    format!("{gcc} {libc}")
}

/// The C compiler driver that links for `triple` (`None`: the host): for the host `$CC` or
/// `cc`; for another architecture `$CC_<triple>` (the `cc` crate's convention, `-` as `_`),
/// else `<arch>-linux-gnu-gcc` from `PATH`, else `$CC`, else an error naming the Debian
/// packages to install.
pub fn c_compiler(triple: Option<&str>) -> Result<String, LinkError> {
    let arch = arch_of(triple);
    if arch == std::env::consts::ARCH {
        return Ok(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    }
    let t = triple.unwrap_or_default();
    if let Ok(cc) = std::env::var(format!("CC_{}", t.replace('-', "_"))) {
        return Ok(cc);
    }
    let cross = format!("{arch}-linux-gnu-gcc");
    if on_path(&cross) {
        return Ok(cross);
    }
    if let Ok(cc) = std::env::var("CC") {
        return Ok(cc);
    }
    Err(LinkError::Tool {
        tool: cross.clone(),
        msg: format!(
            "linking for {t} needs a C cross toolchain: {cross} was not found on PATH and \
             neither $CC_{} nor $CC is set. On Debian/Ubuntu: apt-get install {} \
             (and qemu-user to run the result: qemu-{arch} -L /usr/{arch}-linux-gnu ./prog). \
             --emit obj, staticlib and header need no cross toolchain",
            t.replace('-', "_"),
            cross_packages(arch)
        ),
    })
}

/// `ar` for `triple`'s objects: `<arch>-linux-gnu-ar` for another architecture when installed
/// (its symbol index knows the format), else `$AR` or `ar`.
fn archiver(triple: Option<&str>) -> String {
    let arch = arch_of(triple);
    let cross = format!("{arch}-linux-gnu-ar");
    if arch != std::env::consts::ARCH && on_path(&cross) {
        return cross;
    }
    std::env::var("AR").unwrap_or_else(|_| "ar".into())
}

/// Produce `dest` with a tool writing to a temp path, then rename
/// (`kiln_runtime::atomic::produce`).
fn produce(dest: &Path, f: impl FnOnce(&Path) -> Result<(), LinkError>) -> Result<(), LinkError> {
    kiln_runtime::atomic::produce(dest, |path, err| LinkError::Io { path, err }, f)
}

/// A shared library for `triple` (`None`: the host) from the objects. Its SONAME is its file
/// name, so programs linked with it find it by name (on their rpath or `LD_LIBRARY_PATH`), not
/// by the path it was linked from.
pub fn link_shared(objs: &[&Path], dest: &Path, triple: Option<&str>) -> Result<(), LinkError> {
    let cc = c_compiler(triple)?;
    let soname = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    produce(dest, |tmp| {
        let mut cmd = Command::new(&cc);
        cmd.arg("-shared");
        // (the linker flag syntax cannot carry a comma)
        if !soname.is_empty() && !soname.contains(',') {
            cmd.arg(format!("-Wl,-soname,{soname}"));
        }
        run(cmd.arg("-o").arg(tmp).args(objs).arg("-lm"), &cc)
    })
}

/// A static library (`ar` archive) of the objects.
pub fn link_static(objs: &[&Path], dest: &Path, triple: Option<&str>) -> Result<(), LinkError> {
    let ar = archiver(triple);
    produce(dest, |tmp| {
        run(Command::new(&ar).arg("rcs").arg(tmp).args(objs), &ar)
    })
}

/// One relocatable object from several (`ld -r`). For another architecture than the host's
/// this needs a linker for it: `$LD` if set, else `ld.lld` or `<arch>-linux-gnu-ld` from `PATH`.
pub fn link_relocatable(
    objs: &[&Path],
    dest: &Path,
    triple: Option<&str>,
) -> Result<(), LinkError> {
    let host_arch = std::env::consts::ARCH;
    let arch = arch_of(triple);
    let ld = match std::env::var("LD") {
        Ok(ld) => ld,
        Err(_) if arch == host_arch => "ld".into(),
        Err(_) => {
            let cands = ["ld.lld".to_string(), format!("{arch}-linux-gnu-ld")];
            match cands.iter().find(|c| on_path(c)) {
                Some(c) => c.clone(),
                None => {
                    return Err(LinkError::Tool {
                        tool: "ld".into(),
                        msg: format!(
                            "one {arch} object from the Cranelift and LLVM objects needs a linker for {arch} \
                             ({}; or set $LD); alternatives: --emit staticlib, or --kernels cranelift",
                            cands.join(" or ")
                        ),
                    });
                }
            }
        }
    };
    produce(dest, |tmp| {
        run(
            Command::new(&ld).arg("-r").arg("-o").arg(tmp).args(objs),
            &ld,
        )
    })
}

fn on_path(exe: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(exe).is_file()))
}

/// A standalone executable for `triple` (`None`: the host): the objects and the driver's `main`.
pub fn link_exe(objs: &[&Path], dest: &Path, triple: Option<&str>) -> Result<(), LinkError> {
    let cc = c_compiler(triple)?;
    produce(dest, |tmp| {
        // the driver's source beside the output, in the same private directory
        let driver = tmp.with_file_name("kiln_driver.c");
        std::fs::write(&driver, DRIVER_C).map_err(io(&driver))?;
        run(
            Command::new(&cc)
                .arg("-O2")
                .arg("-o")
                .arg(tmp)
                .arg(&driver)
                .args(objs)
                .arg("-lm")
                .arg("-lpthread"),
            &cc,
        )
    })
}
