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

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Produce `dest` with a tool writing to a temp path, then rename
/// (`kiln_runtime::atomic::produce`).
fn produce(dest: &Path, f: impl FnOnce(&Path) -> Result<(), LinkError>) -> Result<(), LinkError> {
    kiln_runtime::atomic::produce(dest, |path, err| LinkError::Io { path, err }, f)
}

pub fn link_shared(objs: &[&Path], dest: &Path) -> Result<(), LinkError> {
    produce(dest, |tmp| {
        run(
            Command::new(cc())
                .arg("-shared")
                .arg("-o")
                .arg(tmp)
                .args(objs)
                .arg("-lm"),
            "cc",
        )
    })
}

pub fn link_static(objs: &[&Path], dest: &Path) -> Result<(), LinkError> {
    produce(dest, |tmp| {
        run(Command::new("ar").arg("rcs").arg(tmp).args(objs), "ar")
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
    let arch = triple
        .and_then(|t| t.split('-').next())
        .unwrap_or(host_arch);
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

pub fn link_exe(objs: &[&Path], dest: &Path) -> Result<(), LinkError> {
    produce(dest, |tmp| {
        // the driver's source beside the output, in the same private directory
        let driver = tmp.with_file_name("kiln_driver.c");
        std::fs::write(&driver, DRIVER_C).map_err(io(&driver))?;
        run(
            Command::new(cc())
                .arg("-O2")
                .arg("-o")
                .arg(tmp)
                .arg(&driver)
                .args(objs)
                .arg("-lm")
                .arg("-lpthread"),
            "cc",
        )
    })
}
