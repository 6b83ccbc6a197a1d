//! `ptxas`, NVIDIA's PTX assembler, when it is available at build time: it turns the PTX into
//! a cubin for one architecture (the artefact keeps the PTX as the driver's JIT fallback) and
//! reports each kernel's registers and spills (`-v`). The project's setup
//! (`scripts/setup-python.sh`) installs PyPI's `nvidia-cuda-nvcc-cu12` into the venv, whose
//! `nvidia/cuda_nvcc/bin/ptxas` is found here; `KILN_PTXAS`, an active venv (`VIRTUAL_ENV`),
//! `CUDA_HOME` or `PATH` may name another.

use std::path::{Path, PathBuf};

/// What `ptxas -v` says about one kernel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KernelInfo {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack: u32,
    pub smem: u32,
}

/// The `ptxas` to use: `$KILN_PTXAS`; `nvidia/cuda_nvcc/bin/ptxas` in the active venv
/// (`$VIRTUAL_ENV`) or the project's `.venv`; `$CUDA_HOME/bin/ptxas`; `ptxas` on `PATH`.
/// `None` when there is none (or `KILN_PTXAS` is empty).
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_PTXAS") {
        return (!p.is_empty())
            .then(|| PathBuf::from(p))
            .filter(|p| p.is_file());
    }
    let mut venvs: Vec<PathBuf> = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    for v in venvs {
        if let Some(p) = in_venv(&v) {
            return Some(p);
        }
    }
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&h).join("bin/ptxas");
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ptxas"))
        .find(|p| p.is_file())
}

/// `lib/python3.*/site-packages/nvidia/cuda_nvcc/bin/ptxas` of a venv.
fn in_venv(venv: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .collect();
    libs.sort();
    libs.into_iter()
        .map(|l| l.join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
        .find(|p| p.is_file())
}

/// Assemble `ptx` for `sm` with `ptxas -v`: the cubin and the per-kernel report.
pub fn assemble(ptxas: &Path, ptx: &str, sm: &str) -> Result<(Vec<u8>, Vec<KernelInfo>), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("ptxas: temp dir: {e}"))?;
    let src = dir.path().join("kernels.ptx");
    let out = dir.path().join("kernels.cubin");
    std::fs::write(&src, ptx).map_err(|e| format!("ptxas: {}: {e}", src.display()))?;
    let r = std::process::Command::new(ptxas)
        .arg(format!("-arch={sm}"))
        .arg("-v")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("{}: {e}", ptxas.display()))?;
    let log = String::from_utf8_lossy(&r.stderr).into_owned() + &String::from_utf8_lossy(&r.stdout);
    if !r.status.success() {
        return Err(format!("ptxas -arch={sm} failed: {log}"));
    }
    let cubin = std::fs::read(&out).map_err(|e| format!("ptxas: {}: {e}", out.display()))?;
    Ok((cubin, parse(&log)))
}

/// The per-kernel lines of a `ptxas -v` log.
pub fn parse(log: &str) -> Vec<KernelInfo> {
    let mut v: Vec<KernelInfo> = Vec::new();
    let num_before = |l: &str, what: &str| -> u32 {
        l.find(what)
            .and_then(|i| l[..i].split_whitespace().last()?.parse().ok())
            .unwrap_or(0)
    };
    for l in log.lines() {
        if let Some(i) = l.find("Compiling entry function '") {
            let rest = &l[i + 26..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            v.push(KernelInfo {
                name,
                ..Default::default()
            });
        } else if let Some(k) = v.last_mut() {
            if l.contains("bytes stack frame") {
                k.stack = num_before(l, "bytes stack frame");
                k.spill_stores = num_before(l, "bytes spill stores");
                k.spill_loads = num_before(l, "bytes spill loads");
            } else if l.contains("Used ") && l.contains("registers") {
                k.registers = num_before(l, "registers");
                k.smem = num_before(l, "bytes smem");
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_log() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'm_k0' for 'sm_80'\n\
ptxas info    : Function properties for m_k0\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 40 registers, 8192 bytes smem, 380 bytes cmem[0]\n";
        let k = super::parse(log);
        assert_eq!(k.len(), 1);
        assert_eq!(
            (
                k[0].name.as_str(),
                k[0].registers,
                k[0].spill_stores,
                k[0].spill_loads,
                k[0].stack,
                k[0].smem
            ),
            ("m_k0", 40, 4, 12, 8, 8192)
        );
    }
}
