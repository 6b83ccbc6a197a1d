//! The GPU side of the CLI and pipeline: `kiln build MODEL --target nvptx64-nvidia-cuda`
//! (`--gpu-arch`, `--gpu-precision`, `--emit so|ptx|ir`) and `kiln run MODEL --device
//! cuda|cuda-emulated`, on the GPU back end (`kiln-target-ptx`).

use crate::pipeline::{Emit, Error};
use kiln_ir::Graph;
use kiln_target_ptx::{Compiled, Emulator, Precision, PtxOptions};
use std::path::Path;

/// The GPU triple.
pub const TRIPLE: &str = "nvptx64-nvidia-cuda";

/// Whether `triple` names the GPU back end.
pub fn is_gpu(triple: Option<&str>) -> bool {
    triple.is_some_and(|t| t.starts_with("nvptx64"))
}

/// `--gpu-arch` / `--gpu-precision` and the PTX version.
#[derive(Debug, Clone)]
pub struct GpuOpts {
    pub sm: String,
    pub ptx: Option<u32>,
    pub precision: Precision,
}

impl Default for GpuOpts {
    fn default() -> Self {
        GpuOpts {
            sm: "sm_80".into(),
            ptx: None,
            precision: Precision::Fp32,
        }
    }
}

/// The architectures `--gpu-arch` takes.
pub const GPU_ARCHS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];

/// Compile an optimized graph for the GPU (`cubin`: also assemble with ptxas when found).
pub fn compile(g: &Graph, name: &str, o: &GpuOpts, cubin: bool) -> Result<Compiled, Error> {
    compile_with(g, name, o, cubin, true)
}

/// [`compile`], without the PTX when `ptx_text` is off (the host emulation needs only the IR).
pub fn compile_with(
    g: &Graph,
    name: &str,
    o: &GpuOpts,
    cubin: bool,
    ptx_text: bool,
) -> Result<Compiled, Error> {
    if o.precision != Precision::Fp32 {
        return Err(Error::Msg(
            format!(
                "--gpu-precision {:?}: only fp32 (exact f32 arithmetic) has kernels yet",
                o.precision
            )
            .to_lowercase(),
        ));
    }
    let mut po = PtxOptions::new(name);
    po.sm = o.sm.clone();
    po.ptx = o.ptx;
    po.precision = o.precision;
    po.cubin = cubin;
    po.ptx_text = ptx_text;
    kiln_target_ptx::compile(g, &po).map_err(|e| Error::Msg(e.to_string()))
}

/// Write a GPU artefact: `--emit ptx` the PTX module, `--emit so` a shared library embedding
/// the artefact (PTX, cubin, plan, weights) behind `<name>_cuda_artefact` and
/// `kiln_cuda_artefact_default` (`const uint8_t *f(uint64_t *len)`), `--emit ir` kiln IR.
/// Every file is written atomically.
pub fn emit(g: &Graph, emit: Emit, out: &Path, name: &str, o: &GpuOpts) -> Result<(), Error> {
    use kiln_target_cpu::link;
    match emit {
        Emit::Ir => return Ok(link::write_atomic(out, kiln_ir::text::print(g).as_bytes())?),
        Emit::Ptx | Emit::So => {}
        e => {
            return Err(Error::Msg(
                format!("--emit {e:?} is not available for {TRIPLE} (use so, ptx or ir)")
                    .to_lowercase(),
            ));
        }
    }
    let c = compile(g, name, o, emit == Emit::So)?;
    if emit == Emit::Ptx {
        return Ok(link::write_atomic(out, c.artefact.ptx.as_bytes())?);
    }
    let dir = tempfile::tempdir().map_err(|err| Error::Io {
        path: std::env::temp_dir(),
        err,
    })?;
    let blob = dir.path().join("artefact.bin");
    std::fs::write(&blob, c.artefact.to_bytes()).map_err(|err| Error::Io {
        path: blob.clone(),
        err,
    })?;
    let bp = blob.display().to_string();
    if bp.contains(['"', '\\', '\n']) {
        return Err(Error::Msg(format!(
            "temporary path {bp} cannot be embedded"
        )));
    }
    let sym = kiln_target_ptx::sym(name);
    let src = format!(
        r#"/* kiln CUDA artefact '{sym}': PTX, cubin, launch plan and weights (kiln_cuda_* in kiln.h) */
#include <stdint.h>
__asm__(".section .rodata\n.balign 256\n.type {sym}_cuda_blob, @object\n{sym}_cuda_blob:\n.incbin \"{bp}\"\n{sym}_cuda_blob_end:\n.previous\n");
extern const uint8_t {sym}_cuda_blob[], {sym}_cuda_blob_end[];
const uint8_t *{sym}_cuda_artefact(uint64_t *len) {{
  if (len) *len = (uint64_t)({sym}_cuda_blob_end - {sym}_cuda_blob);
  return {sym}_cuda_blob;
}}
const uint8_t *kiln_cuda_artefact_default(uint64_t *len) {{ return {sym}_cuda_artefact(len); }}
"#
    );
    let cfile = dir.path().join(format!("{sym}_cuda.c"));
    std::fs::write(&cfile, src).map_err(|err| Error::Io {
        path: cfile.clone(),
        err,
    })?;
    link::link_shared(&[cfile.as_path()], out, None)?;
    Ok(())
}

/// `kiln run --device cuda-emulated`: compile and run the kernels on the host emulation.
pub fn run_emulated(
    g: &Graph,
    name: &str,
    o: &GpuOpts,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
) -> Result<(), Error> {
    let c = compile_with(g, name, o, false, false)?;
    let emu = Emulator::new(&c).map_err(|e| Error::Msg(e.to_string()))?;
    emu.run(inputs, outputs).map_err(Error::Msg)
}

/// `kiln run --device cuda`: compile (with a cubin when ptxas is found) and run on GPU 0.
#[cfg(feature = "cuda")]
pub fn run_cuda(
    g: &Graph,
    name: &str,
    o: &GpuOpts,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
) -> Result<(), Error> {
    use kiln_runtime::cuda::CudaModel;
    let c = compile(g, name, o, true)?;
    let mut m =
        CudaModel::load(&c.artefact.to_bytes(), 0).map_err(|e| Error::Msg(e.to_string()))?;
    m.run(inputs, outputs)
        .map_err(|e| Error::Msg(e.to_string()))
}

/// `kiln run --device cuda` in a kiln built without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn run_cuda(
    _g: &Graph,
    _name: &str,
    _o: &GpuOpts,
    _inputs: &[&[u8]],
    _outputs: &mut [&mut [u8]],
) -> Result<(), Error> {
    Err(Error::Msg(
        "this kiln was built without the 'cuda' feature (cargo build -p kiln-compiler --features cuda); --device cuda-emulated runs the GPU kernels on the host".into(),
    ))
}

/// Which device `kiln run` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The CPU back end (JIT).
    Cpu,
    /// An NVIDIA GPU through the CUDA driver (a kiln built with the `cuda` feature).
    Cuda,
    /// The GPU kernels run on the host (exact emulation of barriers and warp shuffles).
    CudaEmulated,
}

/// The input files of `kiln run` (`NAME=FILE.npy` or `FILE.npy` in order), checked against
/// the graph's inputs: their bytes in input order.
pub fn read_inputs(g: &Graph, specs: &[String]) -> Result<Vec<Vec<u8>>, String> {
    let names: Vec<String> = g.inputs.iter().map(|&v| g.value(v).name.clone()).collect();
    if specs.len() != names.len() {
        return Err(format!(
            "model has {} inputs ({}), {} given",
            names.len(),
            names.join(", "),
            specs.len()
        ));
    }
    let mut data: Vec<Vec<u8>> = vec![Vec::new(); names.len()];
    for (k, spec) in specs.iter().enumerate() {
        let (idx, file) = match spec.split_once('=') {
            Some((n, f)) if names.iter().any(|i| i == n) => {
                (names.iter().position(|i| i == n).unwrap(), f)
            }
            Some((n, _)) if !Path::new(spec).exists() => {
                return Err(format!("model has no input named '{n}'"));
            }
            _ => (k, spec.as_str()),
        };
        let arr = kiln_runtime::npy::read(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
        let t = g.ty(g.inputs[idx]);
        if arr.dtype != t.dtype.abi_code() || arr.shape != t.shape {
            return Err(format!(
                "{file}: input '{}' expects {}, file holds {} {:?}",
                names[idx],
                t,
                kiln_runtime::dtype_name(arr.dtype).unwrap_or("?"),
                arr.shape
            ));
        }
        data[idx] = arr.data;
    }
    Ok(data)
}

/// Write each output as `<out_dir>/<name>.npy` (name characters outside `[A-Za-z0-9_.-]`
/// become `_`); returns the paths.
pub fn write_outputs(
    g: &Graph,
    outs: &[Vec<u8>],
    out_dir: &Path,
) -> Result<Vec<std::path::PathBuf>, String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut paths = Vec::new();
    for (&v, bytes) in g.outputs.iter().zip(outs) {
        let fname: String = g
            .value(v)
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = out_dir.join(format!("{fname}.npy"));
        let t = g.ty(v);
        let arr = kiln_runtime::npy::Npy {
            dtype: t.dtype.abi_code(),
            shape: t.shape.clone(),
            data: bytes.clone(),
        };
        kiln_runtime::npy::write(&path, &arr).map_err(|e| format!("{}: {e}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// `kiln run MODEL --device cuda|cuda-emulated`: inputs from `.npy` files, outputs to
/// `out_dir`.
pub fn run_files(
    g: &Graph,
    name: &str,
    o: &GpuOpts,
    device: Device,
    specs: &[String],
    out_dir: &Path,
) -> Result<Vec<std::path::PathBuf>, String> {
    let data = read_inputs(g, specs)?;
    let ins: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = g
        .outputs
        .iter()
        .map(|&v| vec![0u8; g.ty(v).size_bytes()])
        .collect();
    let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    match device {
        Device::CudaEmulated => run_emulated(g, name, o, &ins, &mut refs),
        Device::Cuda => run_cuda(g, name, o, &ins, &mut refs),
        Device::Cpu => return Err("run_files runs the GPU devices".into()),
    }
    .map_err(|e| e.to_string())?;
    write_outputs(g, &outs, out_dir)
}
