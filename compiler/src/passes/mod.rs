//! Optimizing passes over verified IR, run by one [`PassManager`].
//!
//! Every simplification and fusion is a named [`Rule`] (a local pattern -> replacement on one
//! node) run to a fixpoint by one driver ([`RuleDriver`]); whole-graph passes (constant
//! folding, CSE, DCE) implement [`Pass`] directly. The fusion switch file turns rules off by
//! name. The verifier runs after every pass; a failure names the pass.
//!
//! Levels: `-O0` runs nothing, `-O1` the cleanup passes (constant folding, simplification,
//! CSE, DCE), `-O2` (the default) adds weight folding (BatchNormalization into
//! Conv/Gemm/ConvTranspose, per-channel Mul/Add into Conv), recognition of exported primitive
//! subgraphs (HardSwish, GELU, Softmax) and kernel-epilogue fusion (activation and residual Add
//! into Conv), elementwise chains, and — given the target's layout model — channel-blocked
//! layouts (`layout`, last).

mod cleanup;
pub use cleanup::foldable;
mod fuse;
mod layout;

use kiln_ir::Graph;
use std::collections::BTreeSet;

/// A graph-to-graph transformation. `run` returns how many changes it made.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, g: &mut Graph) -> usize;
}

/// A named local rewrite tried at one node. `apply` returns whether it changed the graph.
/// `users[v]` lists the live nodes reading value `v` (recomputed after every change).
pub struct Rule {
    pub name: &'static str,
    /// The driver pass that runs it.
    pub pass: &'static str,
    pub about: &'static str,
    pub apply: fn(&mut Graph, kiln_ir::NodeId, &Ctx) -> bool,
}

/// What rules may consult besides the graph.
pub struct Ctx {
    pub users: Vec<Vec<kiln_ir::NodeId>>,
    /// `is_output[v]`: value `v` is a graph output.
    pub is_output: Vec<bool>,
}

impl Ctx {
    fn of(g: &Graph) -> Ctx {
        let mut is_output = vec![false; g.values.len()];
        for &o in &g.outputs {
            is_output[o.index()] = true;
        }
        Ctx {
            users: g.users(),
            is_output,
        }
    }
    /// `v` is read by exactly `node` and is not a graph output: a fusion may absorb it.
    pub fn only_used_by(&self, v: kiln_ir::ValueId, node: kiln_ir::NodeId) -> bool {
        !self.is_output[v.index()] && self.users[v.index()] == [node]
    }
}

/// Every rule, in the order the drivers try them.
pub fn rules() -> Vec<&'static Rule> {
    cleanup::RULES.iter().chain(fuse::RULES.iter()).collect()
}

/// Runs a set of rules to a fixpoint over the graph.
pub struct RuleDriver {
    pub name: &'static str,
    pub rules: Vec<&'static Rule>,
}

impl Pass for RuleDriver {
    fn name(&self) -> &'static str {
        self.name
    }
    fn run(&self, g: &mut Graph) -> usize {
        let mut changes = 0;
        // each round visits every node once; rewrites only shrink the graph or rewrite a node
        // in place, so a handful of rounds reach the fixpoint
        for _ in 0..16 {
            let mut changed = false;
            let mut ctx = Ctx::of(g);
            for i in 0..g.nodes.len() {
                for r in &self.rules {
                    if g.nodes[i].is_none() {
                        break;
                    }
                    if (r.apply)(g, kiln_ir::NodeId(i as u32), &ctx) {
                        changes += 1;
                        changed = true;
                        ctx = Ctx::of(g);
                    }
                }
            }
            if !changed {
                break;
            }
        }
        changes
    }
}

/// Optimization level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum OptLevel {
    O0,
    O1,
    #[default]
    O2,
}

impl std::str::FromStr for OptLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(OptLevel::O0),
            "1" => Ok(OptLevel::O1),
            "2" => Ok(OptLevel::O2),
            _ => Err(format!("unknown optimization level '{s}' (0, 1 or 2)")),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OptOptions {
    pub level: OptLevel,
    /// Pass names after which to capture the textual IR (`--print-after`; `all` for every pass).
    pub print_after: Vec<String>,
    /// Rules turned off by name (the fusion switch file).
    pub disabled: BTreeSet<String>,
    /// The back end's layout model; without one the `layout` pass keeps every value plain.
    pub layout: Option<std::sync::Arc<dyn kiln_ir::layout::LayoutTarget>>,
}

/// Whole-graph passes the fusion switch file can turn off, with what they do (listed by
/// `--list-fusions` after the rules).
pub const SWITCHABLE_PASSES: [(&str, &str, &str); 1] = [(
    "layout_nchwc",
    "layout",
    "channel-blocked NCHWc activations where the target's kernels are faster on them (relayouts at the edges)",
)];

/// What the pass manager did.
#[derive(Debug, Clone, Default)]
pub struct OptReport {
    /// (pass, changes) in run order.
    pub passes: Vec<(String, usize)>,
    /// (pass, textual IR after it) for each `print_after` match.
    pub printed: Vec<(String, String)>,
}

impl OptReport {
    pub fn changes(&self, pass: &str) -> usize {
        self.passes
            .iter()
            .filter(|(p, _)| p == pass)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The names of the whole-graph passes and rule drivers (what `--print-after` accepts).
pub const PASS_NAMES: [&str; 8] = [
    "const_fold",
    "simplify",
    "cse",
    "dce",
    "fold",
    "fuse",
    "chain",
    "layout",
];

fn driver(name: &'static str, disabled: &BTreeSet<String>) -> RuleDriver {
    RuleDriver {
        name,
        rules: rules()
            .into_iter()
            .filter(|r| r.pass == name && !disabled.contains(r.name))
            .collect(),
    }
}

/// A pass by name: a whole-graph pass, a rule driver (all its enabled rules), or a single rule
/// (a driver running only that rule). Filetests use this.
pub fn pass_by_name(name: &str, opts: &OptOptions) -> Option<Box<dyn Pass>> {
    let disabled = &opts.disabled;
    Some(match name {
        "layout" => Box::new(layout::LayoutPass {
            target: match &opts.layout {
                Some(t) if !disabled.contains("layout_nchwc") => t.clone(),
                _ => std::sync::Arc::new(layout::PlainOnly),
            },
        }),
        "const_fold" => Box::new(cleanup::ConstFold),
        "cse" => Box::new(cleanup::Cse),
        "dce" => Box::new(cleanup::Dce),
        "simplify" => Box::new(driver("simplify", disabled)),
        "fold" => Box::new(driver("fold", disabled)),
        "fuse" => Box::new(driver("fuse", disabled)),
        "chain" => Box::new(driver("chain", disabled)),
        _ => {
            let r = rules().into_iter().find(|r| r.name == name)?;
            Box::new(RuleDriver {
                name: r.name,
                rules: vec![r],
            })
        }
    })
}

/// The pipeline of a level, as pass names.
pub fn pipeline(level: OptLevel) -> Vec<&'static str> {
    match level {
        OptLevel::O0 => vec![],
        OptLevel::O1 => vec!["const_fold", "simplify", "cse", "dce"],
        OptLevel::O2 => vec![
            "const_fold",
            "simplify",
            "cse",
            "dce",
            "fold",
            "fuse",
            "chain",
            "dce",
            "layout",
        ],
    }
}

/// Check rule names (from a fusion switch file) against the known rules.
pub fn check_rule_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    let known: Vec<&str> = rules()
        .iter()
        .map(|r| r.name)
        .chain(SWITCHABLE_PASSES.iter().map(|p| p.0))
        .collect();
    for n in names {
        if !known.contains(&n.as_str()) {
            return Err(format!("unknown rule '{n}' (known: {})", known.join(", ")));
        }
    }
    Ok(())
}

/// Parse a fusion switch file: a JSON object `{"rule_name": "off" | "on", ...}`; returns the
/// rules turned off.
pub fn parse_fusion_switch(text: &str) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("expected a JSON object {\"rule\": \"off\", ...}")?;
    let mut off = BTreeSet::new();
    for (k, val) in obj {
        match val.as_str().map(|s| s.to_ascii_lowercase()) {
            Some(s) if s == "off" => {
                off.insert(k.clone());
            }
            Some(s) if s == "on" => {}
            _ => return Err(format!("rule '{k}': expected \"on\" or \"off\", got {val}")),
        }
    }
    check_rule_names(obj.keys())?;
    Ok(off)
}

/// Run the passes of `opts.level` on `g`, verifying after each.
pub fn optimize(g: &mut Graph, opts: &OptOptions) -> Result<OptReport, String> {
    let names = pipeline(opts.level);
    run_passes(g, &names, opts)
}

/// Run `pass` on `g` and on every sub-graph of its control-flow nodes (bodies go through the
/// same passes as the graph around them); the total number of changes.
fn run_deep(pass: &dyn Pass, g: &mut Graph) -> usize {
    let mut n = pass.run(g);
    for node in g.nodes.iter_mut().flatten() {
        for body in node.op.bodies_mut() {
            n += run_deep(pass, body);
        }
    }
    n
}

/// Run the named passes (pass, driver or rule names) in order, verifying after each.
pub fn run_passes(g: &mut Graph, names: &[&str], opts: &OptOptions) -> Result<OptReport, String> {
    let mut report = OptReport::default();
    for &name in names {
        let pass =
            pass_by_name(name, opts).ok_or_else(|| format!("unknown pass or rule '{name}'"))?;
        let n = run_deep(pass.as_ref(), g);
        kiln_ir::verify::verify(g)
            .map_err(|e| format!("internal error: the IR is invalid after pass '{name}': {e}"))?;
        report.passes.push((name.to_string(), n));
        if opts.print_after.iter().any(|p| p == name || p == "all") {
            report
                .printed
                .push((name.to_string(), kiln_ir::text::print_with_limit(g, 64)));
        }
    }
    Ok(report)
}
