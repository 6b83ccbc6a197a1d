//! The host emulation of a compiled model (`kiln run --device cuda-emulated`): the plan's
//! kernels, the same LLVM IR bodies as the PTX, compiled for this CPU (MCJIT) and run over host
//! buffers laid out as the device's (inputs, outputs, one workspace, the weights).
//!
//! A kernel that never synchronizes runs as its `_grid` entry: a loop over blocks, and in each
//! over its threads in order. A kernel with barriers or warp shuffles runs each block with one
//! **fiber per GPU thread** (corosensei's stackful coroutines): a thread runs until it reaches
//! a barrier or a shuffle, where it yields to the scheduler. A barrier releases when every live
//! thread of the block waits at one; a shuffle is two warp-wide rendezvous (each lane posts
//! its value, all read, all leave), released when every live lane of the warp waits at one. A
//! block whose threads wait at different kinds of point forever is a kernel error (divergent
//! synchronization), reported, never a hang. This is exact for any interleaving a GPU may
//! choose between synchronization points, as kernels must be race-free between them.

use crate::{Buf, Compiled, CudaArtefact, PtxError, host_module};
use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use kiln_target_llvm::LlvmJit;
use std::cell::{Cell, RefCell};

type ThreadFn = unsafe extern "C" fn(*const *mut u8, *mut u8, u32, u32, u32, u32);
type GridFn = unsafe extern "C" fn(*const *mut u8, *mut u8, i64, i64);

struct EmuKernel {
    thread: ThreadFn,
    grid_fn: GridFn,
    threads: u32,
    grid: [u32; 3],
    smem: usize,
    sync: bool,
}

/// A compiled model run on the host, kernel by kernel, as the GPU would run it.
pub struct Emulator {
    // the code the function pointers point into
    _jit: LlvmJit,
    art: CudaArtefact,
    weights: Vec<u64>,
    kernels: Vec<EmuKernel>,
}

/// Stack of one emulated GPU thread.
const STACK: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Wait {
    Block,
    Warp,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Ready,
    Waiting(Wait),
    Done,
}

/// What the callbacks need about the block being run (one per host thread).
struct BlockCtx {
    cur: usize,
    yielders: Vec<*const Yielder<(), Wait>>,
    shfl: Vec<i32>,
}

thread_local! {
    static CTX: Cell<*mut BlockCtx> = const { Cell::new(std::ptr::null_mut()) };
    static STACKS: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

fn suspend(w: Wait) {
    let ctx = CTX.with(|c| c.get());
    // SAFETY: set by `run_block` for the block being run; the yielder belongs to the fiber
    // that is calling (cur), which is running on this host thread.
    unsafe {
        let c = &*ctx;
        let y = c.yielders[c.cur];
        (*y).suspend(w);
    }
}

extern "C" fn kiln_emu_barrier() {
    suspend(Wait::Block);
}

fn shfl(v: i32, src: impl Fn(usize) -> usize) -> i32 {
    let ctx = CTX.with(|c| c.get());
    // SAFETY: as in `suspend`; `shfl` has one slot per thread of the block.
    unsafe {
        let me = (&*ctx).cur;
        (&mut *ctx).shfl[me] = v;
        suspend(Wait::Warp);
        let base = me & !31;
        let lane = src(me & 31) & 31;
        let r = (&*ctx).shfl.get(base + lane).copied().unwrap_or(0);
        suspend(Wait::Warp);
        r
    }
}

extern "C" fn kiln_emu_shfl_xor(v: i32, m: i32) -> i32 {
    shfl(v, |lane| lane ^ m as usize)
}

extern "C" fn kiln_emu_shfl_idx(v: i32, l: i32) -> i32 {
    shfl(v, |_| l as usize)
}

impl Emulator {
    /// JIT-compile the kernels of `c` for this CPU.
    pub fn new(c: &Compiled) -> Result<Emulator, PtxError> {
        let (ir, t) = host_module(&c.kernels)?;
        let syms: [(&str, usize); 3] = [
            ("kiln_emu_barrier", kiln_emu_barrier as *const () as usize),
            ("kiln_emu_shfl_xor", kiln_emu_shfl_xor as *const () as usize),
            ("kiln_emu_shfl_idx", kiln_emu_shfl_idx as *const () as usize),
        ];
        let jit = LlvmJit::with_symbols(&ir, &t, &syms)?;
        let mut kernels = Vec::new();
        for l in &c.artefact.launches {
            let k = c
                .kernels
                .iter()
                .find(|k| k.name == l.kernel)
                .ok_or_else(|| PtxError::Msg(format!("kernel {} missing", l.kernel)))?;
            let th = jit.address(&format!("{}_thread", k.name))?;
            let gr = jit.address(&format!("{}_grid", k.name))?;
            kernels.push(EmuKernel {
                // SAFETY: the host entries have exactly these signatures (`gpu_module`).
                thread: unsafe { std::mem::transmute::<*const u8, ThreadFn>(th) },
                grid_fn: unsafe { std::mem::transmute::<*const u8, GridFn>(gr) },
                threads: k.threads,
                grid: k.grid,
                smem: k.smem,
                sync: k.sync,
            });
        }
        let mut weights = vec![0u64; c.artefact.weights.len().div_ceil(8)];
        // SAFETY: `weights` has at least as many bytes as the artefact's weights.
        unsafe {
            std::ptr::copy_nonoverlapping(
                c.artefact.weights.as_ptr(),
                weights.as_mut_ptr() as *mut u8,
                c.artefact.weights.len(),
            );
        }
        Ok(Emulator {
            _jit: jit,
            art: c.artefact.clone(),
            weights,
            kernels,
        })
    }

    /// The artefact this emulates.
    pub fn artefact(&self) -> &CudaArtefact {
        &self.art
    }

    /// Run the plan: `inputs` and `outputs` in the model's order, sized as its tensors.
    pub fn run(&self, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) -> Result<(), String> {
        let a = &self.art;
        if inputs.len() != a.inputs.len() || outputs.len() != a.outputs.len() {
            return Err(format!(
                "model has {} inputs and {} outputs, {} and {} given",
                a.inputs.len(),
                a.outputs.len(),
                inputs.len(),
                outputs.len()
            ));
        }
        for (i, (b, t)) in inputs.iter().zip(&a.inputs).enumerate() {
            if b.len() != t.nbytes {
                return Err(format!(
                    "input {i} '{}': {} bytes, expected {}",
                    t.name,
                    b.len(),
                    t.nbytes
                ));
            }
        }
        for (j, (b, t)) in outputs.iter().zip(&a.outputs).enumerate() {
            if b.len() != t.nbytes {
                return Err(format!(
                    "output {j} '{}': {} bytes, expected {}",
                    t.name,
                    b.len(),
                    t.nbytes
                ));
            }
        }
        let mut ws = vec![0u64; (a.workspace_size as usize).div_ceil(8)];
        let wsp = ws.as_mut_ptr() as *mut u8;
        let wp = self.weights.as_ptr() as *mut u8;
        let ptr = |b: Buf, outputs: &mut [&mut [u8]]| -> *mut u8 {
            // offsets were checked against the buffers' sizes when the artefact was made
            match b {
                Buf::Input(i, o) => inputs[i as usize].as_ptr().wrapping_add(o as usize) as *mut u8,
                Buf::Output(j, o) => outputs[j as usize].as_mut_ptr().wrapping_add(o as usize),
                Buf::Workspace(o) => wsp.wrapping_add(o as usize),
                Buf::Weights(o) => wp.wrapping_add(o as usize),
            }
        };
        for (l, k) in a.launches.iter().zip(&self.kernels) {
            let args: Vec<*mut u8> = l.args.iter().map(|&b| ptr(b, outputs)).collect();
            self.launch(k, &args)
                .map_err(|e| format!("kernel {}: {e}", l.kernel))?;
        }
        for c in &a.copies {
            let s = ptr(c.src, outputs);
            let d = ptr(c.dst, outputs);
            // SAFETY: both ranges lie inside their buffers (checked at compile time); a copy
            // never overlaps (an output is never the source of another's copy).
            unsafe { std::ptr::copy(s, d, c.bytes as usize) };
        }
        Ok(())
    }

    fn launch(&self, k: &EmuKernel, args: &[*mut u8]) -> Result<(), String> {
        let [gx, gy, gz] = k.grid;
        let blocks = gx as i64 * gy as i64 * gz as i64;
        let mut smem = vec![0u64; k.smem.div_ceil(8).max(1)];
        if !k.sync {
            // SAFETY: the entry reads `args` (one pointer per parameter) and the buffers they
            // point to, which the plan sized.
            unsafe { (k.grid_fn)(args.as_ptr(), smem.as_mut_ptr() as *mut u8, 0, blocks) };
            return Ok(());
        }
        for bz in 0..gz {
            for by in 0..gy {
                for bx in 0..gx {
                    smem.iter_mut().for_each(|x| *x = 0);
                    run_block(k, args, smem.as_mut_ptr() as *mut u8, [bx, by, bz])?;
                }
            }
        }
        Ok(())
    }
}

fn run_block(k: &EmuKernel, args: &[*mut u8], smem: *mut u8, b: [u32; 3]) -> Result<(), String> {
    let n = k.threads as usize;
    let ctxp: *mut BlockCtx = Box::into_raw(Box::new(BlockCtx {
        cur: 0,
        yielders: vec![std::ptr::null(); n],
        shfl: vec![0; n],
    }));
    let prev = CTX.with(|c| c.replace(ctxp));
    let argp = args.as_ptr();
    let f = k.thread;
    let mut fibers: Vec<Option<Coroutine<(), Wait, (), DefaultStack>>> = Vec::with_capacity(n);
    for t in 0..n {
        let stack = STACKS
            .with(|s| s.borrow_mut().pop())
            .map(Ok)
            .unwrap_or_else(|| DefaultStack::new(STACK))
            .map_err(|e| format!("fiber stack: {e}"))?;
        fibers.push(Some(Coroutine::with_stack(
            stack,
            move |y: &Yielder<(), Wait>, ()| {
                // SAFETY: `ctxp` outlives every fiber of the block; `t < n`.
                unsafe { (&mut *ctxp).yielders[t] = y as *const _ };
                // SAFETY: as for the grid entry; tid/block within the launch's shape.
                unsafe { f(argp, smem, t as u32, b[0], b[1], b[2]) };
            },
        )));
    }
    let mut state = vec![State::Ready; n];
    let result = loop {
        for t in 0..n {
            if state[t] != State::Ready {
                continue;
            }
            // SAFETY: no fiber is running: nothing else touches the context now
            unsafe { (&mut *ctxp).cur = t };
            let co = fibers[t].as_mut().unwrap();
            match co.resume(()) {
                CoroutineResult::Yield(w) => state[t] = State::Waiting(w),
                CoroutineResult::Return(()) => {
                    state[t] = State::Done;
                    let co = fibers[t].take().unwrap();
                    STACKS.with(|s| s.borrow_mut().push(co.into_stack()));
                }
            }
        }
        if state.iter().all(|s| *s == State::Done) {
            break Ok(());
        }
        let mut released = false;
        for w in (0..n).step_by(32) {
            let lanes = w..(w + 32).min(n);
            let (mut live, mut at_warp) = (0, 0);
            for t in lanes.clone() {
                match state[t] {
                    State::Done => {}
                    State::Waiting(Wait::Warp) => {
                        live += 1;
                        at_warp += 1;
                    }
                    _ => live += 1,
                }
            }
            if live > 0 && live == at_warp {
                for t in lanes {
                    if state[t] != State::Done {
                        state[t] = State::Ready;
                    }
                }
                released = true;
            }
        }
        if !released {
            if state
                .iter()
                .all(|s| matches!(s, State::Done | State::Waiting(Wait::Block)))
            {
                for s in state.iter_mut() {
                    if *s != State::Done {
                        *s = State::Ready;
                    }
                }
            } else {
                break Err(format!(
                    "block {b:?}: threads wait at different synchronization points (divergent barrier or shuffle)"
                ));
            }
        }
    };
    if result.is_err() {
        // suspended fibers cannot be unwound through JIT frames: leak them
        for f in fibers.into_iter().flatten() {
            std::mem::forget(f);
        }
    }
    CTX.with(|c| c.set(prev));
    if result.is_ok() {
        // SAFETY: every fiber has finished; the box is ours again
        drop(unsafe { Box::from_raw(ctxp) });
    }
    result
}
