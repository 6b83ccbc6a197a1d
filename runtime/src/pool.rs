//! The optional thread pool behind `kiln_model.run_pool`.
//!
//! A compiled model hands the pool ranges of independent work items (output tiles of a
//! convolution or matrix product) through the C ABI's `kiln_pool.parallel_for`. Worker threads
//! are spawned once by [`ThreadPool::new`]; between jobs they spin briefly and then sleep on a
//! condition variable. A job's items are taken in chunks (a quarter of an even share) by
//! compare-and-swap, so a worker the OS has not scheduled yet delays nothing: the caller takes
//! the chunks itself. Nothing is allocated or spawned on the run path.
//!
//! One pool may serve several threads' runs at once: it runs one job at a time, and a caller
//! that finds it busy runs its own work items itself (a model's work items are computed the
//! same way on any thread, so the results are bit-identical). Before, concurrent callers
//! published their jobs over each other and could hang or run another caller's items.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// `kiln_task_fn`: runs work items `begin..end` of the job described by `arg`.
pub type KilnTaskFn = unsafe extern "C" fn(arg: *mut c_void, begin: i64, end: i64);

/// `kiln_pool`: how a model runs work items in parallel (see `kiln.h`).
#[repr(C)]
#[derive(Debug)]
pub struct KilnPool {
    pub ctx: *mut c_void,
    /// Number of threads (including the caller's) the pool splits a job into.
    pub threads: i32,
    /// Runs `f(arg, b, e)` over disjoint ranges covering `0..n`; returns when all are done.
    pub parallel_for:
        Option<unsafe extern "C" fn(ctx: *mut c_void, f: KilnTaskFn, arg: *mut c_void, n: i64)>,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<KilnPool>() == 24);
    assert!(offset_of!(KilnPool, ctx) == 0);
    assert!(offset_of!(KilnPool, threads) == 8);
    assert!(offset_of!(KilnPool, parallel_for) == 16);
};

struct Shared {
    threads: usize,
    /// Job number; bumped to publish a job.
    generation: AtomicU64,
    /// `job number << 32 | next item`: chunks are taken by compare-and-swap, so the caller
    /// takes every chunk itself when a worker is slow to wake, and a late worker never takes
    /// a chunk of a newer job.
    next: AtomicU64,
    /// Items of the current job finished.
    done: AtomicI64,
    stop: AtomicBool,
    /// A job is running: the pool's single job slot is taken.
    busy: AtomicBool,
    sleepers: AtomicUsize,
    f: AtomicUsize,
    arg: AtomicUsize,
    n: AtomicI64,
    chunk: AtomicI64,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    /// Take and run chunks of job `job` until none is left.
    fn work(&self, job: u64, f: usize, arg: usize, n: i64, chunk: i64) {
        loop {
            let v = self.next.load(Ordering::Acquire);
            if v >> 32 != job & 0xffff_ffff {
                return;
            }
            let b = (v & 0xffff_ffff) as i64;
            if b >= n {
                return;
            }
            let e = (b + chunk).min(n);
            let w = (v & !0xffff_ffff) | e as u64;
            if self
                .next
                .compare_exchange_weak(v, w, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            // SAFETY: `f` and `arg` belong to job `job` (the successful CAS proves the job is
            // still current); the caller keeps `arg` alive until all its items are done.
            unsafe {
                let f: KilnTaskFn = std::mem::transmute(f);
                f(arg as *mut c_void, b, e);
            }
            self.done.fetch_add(e - b, Ordering::AcqRel);
        }
    }
}

/// Spin iterations before a worker sleeps (a few tens of microseconds).
const SPIN: u32 = 1 << 15;

fn worker(s: Arc<Shared>) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        let mut g = s.generation.load(Ordering::SeqCst);
        while g == seen && spins < SPIN {
            spins += 1;
            std::hint::spin_loop();
            g = s.generation.load(Ordering::SeqCst);
        }
        if g == seen {
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let guard = s
                .wake
                .wait_while(guard, |_| s.generation.load(Ordering::SeqCst) == seen)
                .unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            g = s.generation.load(Ordering::SeqCst);
        }
        seen = g;
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // a snapshot of the job; `work` re-checks the job number on every take
        s.work(
            g,
            s.f.load(Ordering::Acquire),
            s.arg.load(Ordering::Acquire),
            s.n.load(Ordering::Acquire),
            s.chunk.load(Ordering::Acquire),
        );
    }
}

unsafe extern "C" fn parallel_for(ctx: *mut c_void, f: KilnTaskFn, arg: *mut c_void, n: i64) {
    // SAFETY: `ctx` is the `Shared` of a live `ThreadPool` (set by `ThreadPool::new`).
    let s = unsafe { &*(ctx as *const Shared) };
    if s.threads <= 1
        || n <= 1
        || n > 0xffff_ffff
        || s.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        // alone, or the pool is running another caller's job: the items run here
        unsafe { f(arg, 0, n.max(0)) };
        return;
    }
    let job = s.generation.load(Ordering::SeqCst) + 1;
    // close the chunk counter under the new job number before the job's fields change: a
    // worker still holding the previous job number fails its job check from here on, so it
    // can never take a chunk with a mix of the old job number and the new job's `n`/`f`/`arg`
    // (that mix once ran items past the old `n` and inflated the new job's `done`)
    s.next
        .store(((job & 0xffff_ffff) << 32) | 0xffff_ffff, Ordering::SeqCst);
    let chunk = (n / (4 * s.threads as i64)).max(1);
    s.f.store(f as usize, Ordering::Release);
    s.arg.store(arg as usize, Ordering::Release);
    s.n.store(n, Ordering::Release);
    s.chunk.store(chunk, Ordering::Release);
    s.done.store(0, Ordering::SeqCst);
    s.next.store((job & 0xffff_ffff) << 32, Ordering::SeqCst);
    s.generation.store(job, Ordering::SeqCst);
    if s.sleepers.load(Ordering::SeqCst) > 0 {
        let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    s.work(job, f as usize, arg as usize, n, chunk);
    let mut spins = 0u32;
    while s.done.load(Ordering::Acquire) < n {
        if spins < SPIN {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    s.busy.store(false, Ordering::Release);
}

/// A fixed set of worker threads for [`crate::Model::run_pool`] (or any C caller of
/// `run_pool`, through [`ThreadPool::as_abi`]).
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    abi: Box<KilnPool>,
}

// The ABI struct only points at `shared`, which is thread-safe.
unsafe impl Send for ThreadPool {}
unsafe impl Sync for ThreadPool {}

impl ThreadPool {
    /// A pool running jobs on `threads` threads: the caller's plus `threads - 1` workers
    /// spawned now. `threads` is clamped to 1..=256.
    pub fn new(threads: usize) -> std::io::Result<ThreadPool> {
        let threads = threads.clamp(1, 256);
        let shared = Arc::new(Shared {
            threads,
            generation: AtomicU64::new(0),
            next: AtomicU64::new(0),
            done: AtomicI64::new(0),
            stop: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            f: AtomicUsize::new(0),
            arg: AtomicUsize::new(0),
            n: AtomicI64::new(0),
            chunk: AtomicI64::new(1),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads {
            let s = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("kiln-worker-{i}"))
                    .spawn(move || worker(s))?,
            );
        }
        let abi = Box::new(KilnPool {
            ctx: Arc::as_ptr(&shared) as *mut c_void,
            threads: threads as i32,
            parallel_for: Some(parallel_for),
        });
        Ok(ThreadPool {
            shared,
            workers,
            abi,
        })
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// The `kiln_pool` to pass to a model's `run_pool` (valid while `self` lives).
    pub fn as_abi(&self) -> *const KilnPool {
        &*self.abi
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn mark(arg: *mut c_void, b: i64, e: i64) {
        let v = unsafe { &*(arg as *const Vec<AtomicUsize>) };
        for i in b..e {
            v[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every item of every job runs exactly once, for job sizes around the thread count.
    #[test]
    fn covers_every_item_once() {
        for threads in [1, 2, 3, 5] {
            let p = ThreadPool::new(threads).unwrap();
            let abi = unsafe { &*p.as_abi() };
            for n in [0usize, 1, 2, 3, 7, 64, 1001] {
                for _ in 0..20 {
                    let v: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    unsafe {
                        (abi.parallel_for.unwrap())(
                            abi.ctx,
                            mark,
                            &v as *const _ as *mut c_void,
                            n as i64,
                        )
                    };
                    assert!(
                        v.iter().all(|x| x.load(Ordering::Relaxed) == 1),
                        "{threads} {n}"
                    );
                }
            }
        }
    }

    /// One pool, jobs from 6 threads at once: each job's items run exactly once and each call
    /// returns only when its own items are done (before, concurrent callers overwrote each
    /// other's job and could hang or return early).
    #[test]
    fn concurrent_callers() {
        let p = std::sync::Arc::new(ThreadPool::new(3).unwrap());
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let abi = unsafe { &*p.as_abi() };
                    for k in 0..2000 {
                        let n = 1 + (t * 37 + k * 11) % 300;
                        let v: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        unsafe {
                            (abi.parallel_for.unwrap())(
                                abi.ctx,
                                mark,
                                &v as *const _ as *mut c_void,
                                n as i64,
                            )
                        };
                        assert!(v.iter().all(|x| x.load(Ordering::Relaxed) == 1), "{t} {k}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
