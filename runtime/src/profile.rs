//! Per-node profiles of compiled models (ABI v3): which schedule step took how long.
//!
//! A profiled run goes through the descriptor's separate `run_profile` entry point, which calls
//! a begin/end callback around every schedule step; `run` and `run_pool` carry no profiling
//! code, so the normal run path pays nothing for it. [`Profile`] collects the steps' times over
//! any number of runs and renders them as a table sorted by time (ms, share, GFLOP/s) or as a
//! Chrome trace (`chrome://tracing`, Perfetto; the format of ONNX Runtime's profiler).

use std::fmt::Write;
use std::time::Instant;

/// One step of a model's run schedule: a kernel computing one node of the optimized graph (a
/// fused node carries its last op's name), or a copy into an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The op with its fused steps (`conv+add+relu`, `chain(mul+add)`, `copy`).
    pub op: String,
    /// Floating-point operations per run (2 per multiply-add).
    pub flops: u64,
}

/// One profiled run: when it started and each step's start and duration, in nanoseconds since
/// the profile's origin.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub start_ns: u64,
    pub wall_ns: u64,
    pub node_start_ns: Vec<u64>,
    pub node_ns: Vec<u64>,
}

/// A node's time averaged over the profiled runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStat {
    /// Index of the step in the schedule (`Model::nodes`).
    pub index: usize,
    pub name: String,
    pub op: String,
    pub flops: u64,
    /// Mean time per run, milliseconds.
    pub ms: f64,
    /// Share of the sum over all steps, percent.
    pub percent: f64,
    /// `flops / time`, GFLOP/s (0 for steps without FLOPs).
    pub gflops: f64,
}

/// Per-node times over one or more runs of a model.
#[derive(Debug, Clone)]
pub struct Profile {
    pub model: String,
    pub nodes: Vec<NodeInfo>,
    pub runs: Vec<RunRecord>,
    pub(crate) origin: Instant,
}

impl Profile {
    /// An empty profile for a model with these schedule steps.
    pub fn new(model: &str, nodes: &[NodeInfo]) -> Profile {
        Profile {
            model: model.to_string(),
            nodes: nodes.to_vec(),
            runs: Vec::new(),
            origin: Instant::now(),
        }
    }

    /// Per-node means, slowest first.
    pub fn stats(&self) -> Vec<NodeStat> {
        let runs = self.runs.len().max(1) as f64;
        let sums: Vec<u64> = (0..self.nodes.len())
            .map(|i| self.runs.iter().map(|r| r.node_ns[i]).sum())
            .collect();
        let total: u64 = sums.iter().sum();
        let mut v: Vec<NodeStat> = self
            .nodes
            .iter()
            .zip(&sums)
            .enumerate()
            .map(|(i, (n, &ns))| {
                let mean_ns = ns as f64 / runs;
                NodeStat {
                    index: i,
                    name: n.name.clone(),
                    op: n.op.clone(),
                    flops: n.flops,
                    ms: mean_ns / 1e6,
                    percent: if total > 0 {
                        100.0 * ns as f64 / total as f64
                    } else {
                        0.0
                    },
                    gflops: if mean_ns > 0.0 {
                        n.flops as f64 / mean_ns
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        v.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(a.index.cmp(&b.index)));
        v
    }

    /// Mean wall time of a run (milliseconds), callbacks included.
    pub fn run_ms(&self) -> f64 {
        let n = self.runs.len().max(1) as f64;
        self.runs.iter().map(|r| r.wall_ns as f64).sum::<f64>() / n / 1e6
    }

    /// Mean of the steps' summed times per run (milliseconds).
    pub fn nodes_ms(&self) -> f64 {
        let n = self.runs.len().max(1) as f64;
        self.runs
            .iter()
            .map(|r| r.node_ns.iter().sum::<u64>() as f64)
            .sum::<f64>()
            / n
            / 1e6
    }

    /// The per-node table, slowest first: `#`, node, op, ms, %, GFLOP/s.
    pub fn table(&self) -> String {
        let stats = self.stats();
        let nw = stats
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 40);
        let ow = stats
            .iter()
            .map(|s| s.op.chars().count())
            .max()
            .unwrap_or(2)
            .clamp(2, 28);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "profile of '{}': {} run{}, {:.3} ms per run ({:.3} ms in {} steps)",
            self.model,
            self.runs.len(),
            if self.runs.len() == 1 { "" } else { "s" },
            self.run_ms(),
            self.nodes_ms(),
            self.nodes.len()
        );
        let _ = writeln!(
            s,
            "{:>5}  {:<nw$}  {:<ow$}  {:>10}  {:>6}  {:>8}",
            "#", "node", "op", "ms", "%", "GFLOP/s"
        );
        for st in &stats {
            let _ = writeln!(
                s,
                "{:>5}  {:<nw$}  {:<ow$}  {:>10.4}  {:>6.2}  {:>8.2}",
                st.index,
                clip(&st.name, nw),
                clip(&st.op, ow),
                st.ms,
                st.percent,
                st.gflops
            );
        }
        s
    }

    /// A Chrome trace (JSON array of complete events, microseconds): one `Session` event per
    /// run and one `Node` event per step with `op_name`, `flops` and the step index in `args`,
    /// as ONNX Runtime's profiler writes them.
    pub fn chrome_trace(&self) -> String {
        let us = |ns: u64| ns as f64 / 1e3;
        let mut s = String::from("[\n");
        let mut first = true;
        let mut event = |s: &mut String, name: &str, cat: &str, ts: u64, dur: u64, args: &str| {
            if !first {
                s.push_str(",\n");
            }
            first = false;
            let _ = write!(
                s,
                "{{\"cat\":\"{cat}\",\"pid\":1,\"tid\":1,\"ph\":\"X\",\"ts\":{:.3},\"dur\":{:.3},\"name\":{},\"args\":{{{args}}}}}",
                us(ts),
                us(dur),
                json_str(name)
            );
        };
        for (r, run) in self.runs.iter().enumerate() {
            event(
                &mut s,
                "model_run",
                "Session",
                run.start_ns,
                run.wall_ns,
                &format!("\"model\":{},\"run\":{r}", json_str(&self.model)),
            );
            for (i, n) in self.nodes.iter().enumerate() {
                event(
                    &mut s,
                    &n.name,
                    "Node",
                    run.node_start_ns[i],
                    run.node_ns[i],
                    &format!(
                        "\"op_name\":{},\"flops\":{},\"index\":{i},\"run\":{r}",
                        json_str(&n.op),
                        n.flops
                    ),
                );
            }
        }
        s.push_str("\n]\n");
        s
    }
}

fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let keep: String = s.chars().take(w.saturating_sub(1)).collect();
        format!("{keep}~")
    }
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// What the `run_profile` callbacks write into: one run's step starts and durations.
pub(crate) struct Recorder {
    pub origin: Instant,
    pub start: Vec<u64>,
    pub dur: Vec<u64>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

pub(crate) unsafe extern "C" fn on_begin(ctx: *mut std::ffi::c_void, node: u32) {
    // SAFETY: ctx is the &mut Recorder run_profiled passes for the duration of the call, and
    // the callbacks run on the calling thread only.
    let r = unsafe { &mut *(ctx as *mut Recorder) };
    let t = r.now();
    if let Some(s) = r.start.get_mut(node as usize) {
        *s = t;
    }
}

pub(crate) unsafe extern "C" fn on_end(ctx: *mut std::ffi::c_void, node: u32) {
    // SAFETY: as in on_begin.
    let r = unsafe { &mut *(ctx as *mut Recorder) };
    let t = r.now();
    let i = node as usize;
    if i < r.dur.len() {
        r.dur[i] = t.saturating_sub(r.start[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Profile {
        let nodes = vec![
            NodeInfo {
                name: "conv \"1\"".into(),
                op: "conv+relu".into(),
                flops: 2_000_000,
            },
            NodeInfo {
                name: "fc".into(),
                op: "gemm".into(),
                flops: 0,
            },
        ];
        let mut p = Profile::new("m", &nodes);
        for r in 0..2u64 {
            p.runs.push(RunRecord {
                start_ns: r * 10_000,
                wall_ns: 4_000,
                node_start_ns: vec![r * 10_000, r * 10_000 + 1_000],
                node_ns: vec![1_000, 3_000],
            });
        }
        p
    }

    #[test]
    fn stats_sorted_with_shares_and_rates() {
        let st = sample().stats();
        assert_eq!(st[0].name, "fc");
        assert_eq!(st[0].index, 1);
        assert!((st[0].percent - 75.0).abs() < 1e-9);
        assert!((st[1].ms - 0.001).abs() < 1e-12);
        // 2e6 FLOPs in 1 us = 2000 GFLOP/s
        assert!((st[1].gflops - 2000.0).abs() < 1e-6);
        assert_eq!(st[0].gflops, 0.0);
        let t = sample().table();
        assert!(t.contains("2 runs"), "{t}");
        assert!(t.lines().nth(2).unwrap().contains("fc"), "{t}");
    }

    #[test]
    fn chrome_trace_escapes_names() {
        let j = sample().chrome_trace();
        assert!(j.contains("\"name\":\"conv \\\"1\\\"\""), "{j}");
        assert_eq!(j.matches("\"ph\":\"X\"").count(), 6);
        assert!(j.contains("\"dur\":3.000"));
    }
}
