//! Run a CUDA artefact (`kiln build MODEL --target nvptx64-nvidia-cuda`, a `.so`) on GPU 0
//! and time it: what `scripts/gpu-check.sh` carries to a GPU machine (it needs only the
//! NVIDIA driver, not LLVM or the CUDA toolkit).
//!
//! `cuda_run LIB.so OUT_DIR ITERS INPUT.npy...`: runs once on the inputs, writes each output as
//! `OUT_DIR/output_<k>.npy` (f32 or the output's dtype, the model's shape), then times ITERS
//! device-resident runs replayed as a CUDA graph and prints one line
//! `latency_ms median=<m> min=<m> cubin=<0|1> sm=<sm_XY>`.
//! Build: `cargo build --release -p kiln-runtime --features cuda --example cuda_run`.

use kiln_runtime::cuda::{CudaModel, artefact_from_so};
use kiln_runtime::npy;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuda_run: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: cuda_run LIB.so OUT_DIR ITERS INPUT.npy...".into());
    }
    let bytes = artefact_from_so(Path::new(&args[0])).map_err(|e| e.to_string())?;
    let out_dir = Path::new(&args[1]);
    let iters: usize = args[2]
        .parse()
        .map_err(|e| format!("ITERS '{}': {e}", args[2]))?;
    let mut m = CudaModel::load(&bytes, 0).map_err(|e| e.to_string())?;
    let arrays: Vec<npy::Npy> = args[3..]
        .iter()
        .map(|f| npy::read(Path::new(f)).map_err(|e| format!("{f}: {e}")))
        .collect::<Result<_, _>>()?;
    let ins: Vec<&[u8]> = arrays.iter().map(|a| a.data.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
    {
        let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        m.run(&ins, &mut refs).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for (k, (o, info)) in outs.iter().zip(m.outputs()).enumerate() {
        let p = out_dir.join(format!("output_{k}.npy"));
        let a = npy::Npy {
            dtype: info.dtype,
            shape: info.dims.iter().map(|&d| d as usize).collect(),
            data: o.clone(),
        };
        npy::write(&p, &a).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    m.set_graph(true);
    for _ in 0..3 {
        m.rerun_on_device().map_err(|e| e.to_string())?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        m.rerun_on_device().map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "latency_ms median={:.4} min={:.4} cubin={} sm={}",
        times[times.len() / 2],
        times[0],
        m.loaded_cubin as u8,
        m.device_sm
    );
    Ok(())
}
