//! The fuzz targets' smoke run in the default test run (the libFuzzer runs are
//! `scripts/fuzz.sh`; building the instrumented workspace takes too long for CI). Every target
//! body of `fuzz/src/lib.rs` runs over
//! - the committed corpus `fuzz/regress/<target>/` (inputs the long runs found, minimized with
//!   libFuzzer's `-merge=1`, and every crash they found),
//! - the seeds `tests/hostile/gen.rs` generates (valid files and the hostile corpus' files),
//! - then, for `KILN_FUZZ_SMOKE_SECS` seconds per target (default 3), mutations of those
//!   inputs (bit flips, interesting bytes and integers, cuts, duplicated and inserted chunks,
//!   the target's dictionary tokens, splices), from a fixed random seed.
//!
//! A panic fails the test naming the target and the input (a mutated input is written to
//! `$CARGO_TARGET_TMPDIR/fuzz_smoke/`); an input that takes over 2 s is a failure too, and a
//! watchdog aborts the process if one hangs for 20 s.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod bodies;
#[path = "../hostile/gen.rs"]
mod corpus;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(2);
const HANG: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// libFuzzer dictionary tokens: `name="value"` lines with `\xNN`, `\\` and `\"` escapes.
fn dictionary(path: &Path) -> Vec<Vec<u8>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![];
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (Some(a), Some(b)) = (line.find('"'), line.rfind('"')) else {
            continue;
        };
        if b <= a {
            continue;
        }
        let s = &line.as_bytes()[a + 1..b];
        let mut t = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'\\' && i + 1 < s.len() {
                if s[i + 1] == b'x' && i + 3 < s.len() {
                    let h = std::str::from_utf8(&s[i + 2..i + 4]).unwrap_or("00");
                    t.push(u8::from_str_radix(h, 16).unwrap_or(0));
                    i += 4;
                } else {
                    t.push(s[i + 1]);
                    i += 2;
                }
            } else {
                t.push(s[i]);
                i += 1;
            }
        }
        out.push(t);
    }
    out
}

/// xorshift64*
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[i64] = &[
    0,
    1,
    -1,
    2,
    7,
    8,
    16,
    255,
    256,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    -0x8000_0000,
    0xffff_ffff,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX,
    i64::MIN,
];

/// One to four random edits of `input`.
fn mutate(rng: &mut Rng, input: &[u8], dict: &[Vec<u8>], others: &[Vec<u8>]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = b.len();
        match rng.below(9) {
            0 if n > 0 => {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                b[i] = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            2 if n > 0 => {
                // an interesting integer, little endian, 1/2/4/8 bytes (or as a varint)
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1usize, 2, 4, 8][rng.below(4)];
                let i = rng.below(n);
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()[..w].to_vec()
                } else {
                    let mut x = v as u64;
                    let mut out = Vec::new();
                    loop {
                        let byte = (x & 0x7f) as u8;
                        x >>= 7;
                        if x == 0 {
                            out.push(byte);
                            break;
                        }
                        out.push(byte | 0x80);
                    }
                    out
                };
                for (k, x) in bytes.into_iter().enumerate() {
                    if i + k < n {
                        b[i + k] = x;
                    }
                }
            }
            3 if n > 0 => b.truncate(rng.below(n)),
            4 if n > 1 => {
                // erase a chunk
                let i = rng.below(n);
                let len = 1 + rng.below((n - i).min(64));
                b.drain(i..i + len);
            }
            5 if n > 0 => {
                // duplicate a chunk
                let i = rng.below(n);
                let len = 1 + rng.below((n - i).min(64));
                let chunk = b[i..i + len].to_vec();
                let at = rng.below(n + 1);
                b.splice(at..at, chunk);
            }
            6 if !dict.is_empty() => {
                let t = &dict[rng.below(dict.len())];
                let at = rng.below(n + 1);
                if rng.below(2) == 0 || at + t.len() > n {
                    b.splice(at..at, t.iter().copied());
                } else {
                    b[at..at + t.len()].copy_from_slice(t);
                }
            }
            7 if !others.is_empty() => {
                // splice: our head, another input's tail
                let o = &others[rng.below(others.len())];
                let cut = rng.below(n + 1);
                let from = rng.below(o.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&o[from..]);
            }
            _ => {
                let at = rng.below(n + 1);
                b.insert(at, rng.next() as u8);
            }
        }
    }
    b.truncate(1 << 16);
    b
}

/// Runs `f(input)`: a panic or a slow run is an `Err` describing it.
fn run_one(
    f: fn(&[u8]),
    input: &[u8],
    busy: &Mutex<Option<(String, Instant)>>,
    label: &str,
) -> Result<(), String> {
    *busy.lock().unwrap() = Some((label.to_string(), Instant::now()));
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| f(input));
    let dt = t.elapsed();
    *busy.lock().unwrap() = None;
    match r {
        Err(_) => Err(format!("{label}: panicked")),
        Ok(()) if dt > SLOW => Err(format!("{label}: took {dt:?} (limit {SLOW:?})")),
        Ok(()) => Ok(()),
    }
}

#[test]
fn fuzz_targets_smoke() {
    let secs: f64 = std::env::var("KILN_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let root = root();
    let crash_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz_smoke");
    let mut seeds: std::collections::HashMap<&str, Vec<Vec<u8>>> = Default::default();
    for (t, _, bytes) in corpus::seeds() {
        seeds.entry(t).or_default().push(bytes);
    }
    // a watchdog: an input running for HANG aborts the process, naming it
    let busy: Arc<Mutex<Option<(String, Instant)>>> = Arc::new(Mutex::new(None));
    {
        let busy = busy.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if let Some((label, since)) = &*busy.lock().unwrap()
                    && since.elapsed() > HANG
                {
                    eprintln!("fuzz smoke: {label} hangs (over {HANG:?}); aborting");
                    std::process::abort();
                }
            }
        });
    }
    let execs = AtomicU64::new(0);
    let mut failures = Vec::new();
    for &(name, f) in bodies::TARGETS {
        let t0 = Instant::now();
        let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
        let dir = root.join("fuzz/regress").join(name);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for p in files {
                inputs.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
        let committed = inputs.len();
        for (k, b) in seeds
            .remove(name)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            inputs.push((format!("{name} seed {k}"), b));
        }
        assert!(!inputs.is_empty(), "{name}: no corpus and no seeds");
        for (label, b) in &inputs {
            if let Err(e) = run_one(f, b, &busy, label) {
                failures.push(e);
            }
            execs.fetch_add(1, Ordering::Relaxed);
        }
        let replayed = t0.elapsed();
        let dict = dictionary(&root.join("fuzz/dict").join(format!("{name}.dict")));
        let others: Vec<Vec<u8>> = inputs.iter().map(|(_, b)| b.clone()).collect();
        // a fixed seed per target (FNV-1a of its name)
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
            (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = Rng(seed | 1);
        let t1 = Instant::now();
        let mut mutated = 0u64;
        while t1.elapsed().as_secs_f64() < secs {
            let base = &others[rng.below(others.len())];
            let m = mutate(&mut rng, base, &dict, &others);
            let label = format!("{name} mutation {mutated}");
            if let Err(e) = run_one(f, &m, &busy, &label) {
                std::fs::create_dir_all(&crash_dir).unwrap();
                let p = crash_dir.join(format!("{name}-{mutated}"));
                std::fs::write(&p, &m).unwrap();
                failures.push(format!("{e} (input written to {})", p.display()));
            }
            mutated += 1;
        }
        eprintln!(
            "{name:<18} {committed:>5} committed + {:>4} seeds replayed in {:>6.2} s, {mutated:>6} mutations in {secs} s",
            inputs.len() - committed,
            replayed.as_secs_f64()
        );
    }
    assert!(
        failures.is_empty(),
        "fuzz smoke failures:\n{}",
        failures.join("\n")
    );
}
