//! One compiled model run concurrently from 8 threads, 1,000 runs each, every thread with its
//! own workspace and inputs: every output is bit-identical to the single-threaded reference
//! (the runtime and the artefacts are thread-safe). Run in memory (JIT) and from a shared
//! library, without a pool, with one `ThreadPool` per thread, and with one pool shared by all
//! eight threads (concurrent `parallel_for` calls: a caller that finds the pool busy runs its
//! work items itself).

use std::path::Path;
use std::sync::Arc;

use kiln_runtime::{Model, ThreadPool};

const THREADS: usize = 8;
const RUNS: usize = 1000;

/// Convolutions large enough for the wide kernels to split over a pool, a matrix product, a
/// gather with run-time indices and a softmax: the kernel kinds that use the pool or scratch.
const MODEL: &str = r#"graph load {
  input %x: f32[1,8,12,12]
  input %i: i64[4]
  const %w1: f32[16,8,3,3] = hex"W1"
  const %b1: f32[16] = hex"B1"
  const %w2: f32[16,16,3,3] = hex"W2"
  const %fc: f32[16,10] = hex"FC"
  %c1 = conv(%x, %w1, %b1) {kernel=[3,3], strides=[1,1], pads=[1,1,1,1], dilations=[1,1], groups=1} : f32[1,16,12,12]
  %r1 = relu(%c1) : f32[1,16,12,12]
  %c2 = conv(%r1, %w2) {kernel=[3,3], strides=[2,2], pads=[1,1,1,1], dilations=[1,1], groups=1} : f32[1,16,6,6]
  %p = global_average_pool(%c2) : f32[1,16,1,1]
  %f = reshape(%p) {shape=[1,16]} : f32[1,16]
  %m = matmul(%f, %fc) : f32[1,10]
  %y = softmax(%m) {axis=1} : f32[1,10]
  %g = gather(%r1, %i) {axis=1} : f32[1,4,12,12]
  output %y
  output %g
}
"#;

fn hex(n: usize, seed: u32) -> String {
    let mut s = seed;
    (0..n)
        .flat_map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (((s >> 8) % 2000) as f32 / 1000.0 - 1.0).to_le_bytes()
        })
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn graph() -> kiln_ir::Graph {
    let text = MODEL
        .replace("W1", &hex(16 * 8 * 9, 1))
        .replace("B1", &hex(16, 2))
        .replace("W2", &hex(16 * 16 * 9, 3))
        .replace("FC", &hex(160, 4));
    let mut g = kiln_ir::text::parse(&text).unwrap();
    kiln_compiler::pipeline::optimize(
        &mut g,
        &kiln_compiler::passes::OptOptions {
            level: kiln_compiler::passes::OptLevel::O2,
            ..Default::default()
        },
    )
    .unwrap();
    g
}

/// Thread `t`'s inputs.
fn inputs(t: usize) -> Vec<Vec<u8>> {
    let x: Vec<u8> = (0..8 * 144)
        .flat_map(|k| (((k * 7 + t * 13) % 29) as f32 / 10.0 - 1.4).to_le_bytes())
        .collect();
    let i: Vec<u8> = [t % 16, 15, (t * 3) % 16, 0]
        .iter()
        .flat_map(|&v| (v as i64).to_le_bytes())
        .collect();
    vec![x, i]
}

fn run_once(
    m: &Model,
    ins: &[Vec<u8>],
    ws: &mut kiln_runtime::Workspace,
    pool: Option<&ThreadPool>,
) -> Vec<Vec<u8>> {
    let ins: Vec<&[u8]> = ins.iter().map(|b| b.as_slice()).collect();
    let mut outs = m.output_buffers().unwrap();
    let mut refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    m.run_pool(&ins, &mut refs, ws, pool).unwrap();
    outs
}

#[derive(Clone, Copy, Debug)]
enum Pools {
    None,
    PerThread,
    Shared,
}

/// 8 threads x 1,000 runs against the single-threaded reference.
fn hammer(m: &Arc<Model>, pools: Pools) {
    let t0 = std::time::Instant::now();
    let refs: Vec<Vec<Vec<u8>>> = (0..THREADS)
        .map(|t| run_once(m, &inputs(t), &mut m.workspace().unwrap(), None))
        .collect();
    let refs = Arc::new(refs);
    let shared = Arc::new(ThreadPool::new(3).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (m, refs, shared) = (m.clone(), refs.clone(), shared.clone());
            std::thread::spawn(move || {
                let own = ThreadPool::new(2).unwrap();
                let pool = match pools {
                    Pools::None => None,
                    Pools::PerThread => Some(&own),
                    Pools::Shared => Some(&*shared),
                };
                let ins = inputs(t);
                let mut ws = m.workspace().unwrap();
                let mut outs = m.output_buffers().unwrap();
                let in_refs: Vec<&[u8]> = ins.iter().map(|b| b.as_slice()).collect();
                for r in 0..RUNS {
                    // garbage in the outputs and workspace: every byte must be rewritten
                    for o in outs.iter_mut() {
                        o.fill((r % 251) as u8);
                    }
                    ws.as_mut_slice().fill((r % 253) as u8);
                    let mut out_refs: Vec<&mut [u8]> =
                        outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                    m.run_pool(&in_refs, &mut out_refs, &mut ws, pool).unwrap();
                    assert!(outs == refs[t], "{pools:?}: thread {t}, run {r} differs");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    eprintln!(
        "{pools:?}: {THREADS} threads x {RUNS} runs in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn concurrent_runs_are_bit_identical() {
    let g = graph();
    let jit = kiln_target_cpu::compile_jit_with(
        &g,
        &kiln_target_cpu::CpuOptions {
            par_min_macs: 0,
            ..kiln_target_cpu::CpuOptions::host("load")
        },
    )
    .unwrap();
    // SAFETY: the descriptor lives as long as `jit`, which outlives every thread below.
    let m = Arc::new(
        unsafe { Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel) }.unwrap(),
    );
    for pools in [Pools::None, Pools::PerThread, Pools::Shared] {
        hammer(&m, pools);
    }
    drop(m);
    drop(jit);

    // the same through a shared library and the C ABI
    if std::process::Command::new("cc")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping the shared-library half: no `cc`");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let so = d.path().join("libload.so");
    kiln_compiler::pipeline::emit(
        &g,
        kiln_compiler::pipeline::Emit::So,
        &so,
        "load",
        &kiln_compiler::pipeline::TargetOpts::default(),
    )
    .unwrap();
    let m = Arc::new(Model::load(Path::new(&so)).unwrap());
    for pools in [Pools::None, Pools::Shared] {
        hammer(&m, pools);
    }
}
