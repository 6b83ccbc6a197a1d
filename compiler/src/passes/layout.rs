//! The `layout` pass: choose a physical layout — plain or the target's blocked activation
//! layout (`Nchwc(c)` for the CPU, `Nc1hwc0(16)` for Ascend) — for every activation, insert
//! the `relayout`s that joins need, and relayout the constant operands the target reads in a
//! weight layout (Ascend's FRACTAL_Z filters and FRACTAL_NZ matrices).
//!
//! Layouts are part of the value types (`kiln_ir::ops::Op::layouts` says which ops read and
//! write which). Values that must share a layout (an elementwise op's operands and output, a
//! pool's input and output) form one class; convolutions read and write classes
//! independently. The pass picks one layout per class minimizing the target's estimates
//! ([`LayoutTarget`]): the cost of every convolution and pool in its (input, output) layouts,
//! plus a relayout for each blocked value that an op needing plain reads. It is a local search
//! from two starts, all plain and all blocked, flipping one class at a time while the total
//! falls; the better end wins (a region of blocked convolutions is found from the all-blocked
//! start even when blocking any one class alone costs a relayout).
//!
//! Graph inputs, outputs and constants stay plain (the artefact's interface is logical), and
//! the pass never changes values — only where they are stored; the interpreter ignores
//! layouts, so every filetest compares the result with the original graph.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::layout::LayoutTarget;
use kiln_ir::{Graph, Layout, NodeId, Op, ValueId};

use super::Pass;

/// The pass, for one target.
pub struct LayoutPass {
    pub target: Arc<dyn LayoutTarget>,
}

/// The target of a build without a layout model: every value stays plain.
#[derive(Debug)]
pub struct PlainOnly;

impl LayoutTarget for PlainOnly {
    fn block(&self) -> Option<u32> {
        None
    }
    fn cost(&self, _: &Graph, _: &kiln_ir::Node, _: Layout, _: Layout) -> Option<f64> {
        None
    }
    fn relayout_cost(&self, _: usize) -> f64 {
        0.0
    }
}

/// A cost standing for "no kernel": large, but finite so sums stay comparable.
const NEVER: f64 = 1e18;

/// How a node constrains its values' layouts.
enum Role {
    /// Input 0 and output 0 have separate classes; the target prices each combination
    /// (`conv`; a conv's residual must be in the output's layout).
    Priced,
    /// Every operand with more than one element and every output share one class
    /// (elementwise ops with same-shape operands; concat and split along the channels;
    /// pools, which the target also prices).
    Joined,
    /// Reads anything, writes plain (`global_average_pool`).
    AnyIn,
    /// Reads and writes plain only.
    Plain,
}

fn role(g: &Graph, op: &Op, inputs: &[ValueId], out: Option<ValueId>) -> Role {
    match op {
        Op::Conv(a) if a.kernel.len() == 2 => Role::Priced,
        Op::MaxPool(a) | Op::AveragePool(a) if a.kernel.len() == 2 => Role::Joined,
        Op::GlobalAveragePool => Role::AnyIn,
        Op::Concat { axis: 1 } | Op::Split { axis: 1, .. }
            if inputs.iter().all(|&v| g.ty(v).rank() == 4) =>
        {
            Role::Joined
        }
        _ if op.is_elementwise() => {
            let shape = out.map(|o| &g.ty(o).shape);
            let same = inputs
                .iter()
                .all(|&v| g.ty(v).numel() <= 1 || Some(&g.ty(v).shape) == shape);
            if same { Role::Joined } else { Role::Plain }
        }
        _ => Role::Plain,
    }
}

/// What a node needs of its input `i`'s layout.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    /// Whatever its class has (a priced input 0, a joined operand, `AnyIn`).
    Free,
    Plain,
    /// The layout of the node's output (a conv's residual).
    Output,
}

fn need(r: &Role, i: usize) -> Need {
    match r {
        Role::Priced if i == 0 => Need::Free,
        Role::Priced if i == 3 => Need::Output,
        Role::Priced | Role::Plain => Need::Plain,
        Role::Joined | Role::AnyIn => Need::Free,
    }
}

/// Union-find over value ids.
struct Classes(Vec<usize>);

impl Classes {
    fn find(&mut self, v: usize) -> usize {
        let mut r = v;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut x = v;
        while self.0[x] != r {
            let n = self.0[x];
            self.0[x] = r;
            x = n;
        }
        r
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a] = b;
        }
    }
}

/// The layout problem of one graph: classes, which may be blocked, and what each choice costs.
struct Problem {
    block: Layout,
    /// Class (dense index) of every value.
    class: Vec<usize>,
    /// Whether each class may be blocked.
    eligible: Vec<bool>,
    /// Priced nodes: (class of input 0, class of output 0, cost plain->plain, plain->blocked,
    /// blocked->plain, blocked->blocked), the cost of the input's class combined with the
    /// output's.
    priced: Vec<(usize, usize, [f64; 4])>,
    /// Values read in a fixed layout by some node: (class, bytes, `None`: plain, or
    /// `Some(k)`: the layout of class `k` — a residual follows its conv's output); a relayout
    /// when the classes' layouts differ.
    joins: Vec<(usize, f64, Option<usize>)>,
    /// The terms (`priced` then `joins` indices, numbered on) that mention each class: a flip
    /// changes only these.
    touch: Vec<Vec<usize>>,
}

impl Problem {
    fn build(g: &Graph, t: &dyn LayoutTarget, block: Layout) -> Problem {
        let nv = g.values.len();
        let mut uf = Classes((0..nv).collect());
        let mut ok = vec![false; nv];
        for (_, n) in g.iter_nodes() {
            for &o in &n.outputs {
                let ty = g.ty(o);
                ok[o.index()] = ty.rank() == 4 && block.fits(ty);
            }
        }
        for &v in &g.outputs {
            ok[v.index()] = false;
        }
        let mut roles = Vec::new();
        for (id, n) in g.iter_nodes() {
            let r = role(g, &n.op, &n.inputs, n.outputs.first().copied());
            match r {
                Role::Joined => {
                    for &i in &n.inputs {
                        if g.ty(i).numel() > 1 {
                            uf.union(i.index(), n.outputs[0].index());
                        }
                    }
                    for &o in &n.outputs[1..] {
                        uf.union(o.index(), n.outputs[0].index());
                    }
                }
                Role::AnyIn | Role::Plain => {
                    for &o in &n.outputs {
                        ok[o.index()] = false;
                    }
                }
                Role::Priced => {}
            }
            roles.push((id, r));
        }
        // dense class numbers; a class is eligible when every value in it is
        let mut dense: HashMap<usize, usize> = HashMap::new();
        let mut class = vec![0; nv];
        let mut eligible: Vec<bool> = Vec::new();
        for v in 0..nv {
            let root = uf.find(v);
            let k = *dense.entry(root).or_insert_with(|| {
                eligible.push(true);
                eligible.len() - 1
            });
            class[v] = k;
            eligible[k] &= ok[v];
        }
        let mut priced = Vec::new();
        let mut joins = Vec::new();
        let bytes = |v: ValueId| g.ty(v).size_bytes() as f64;
        for (id, r) in roles {
            let n = g.node(id);
            let y = n.outputs.first().map(|o| class[o.index()]);
            for (i, &v) in n.inputs.iter().enumerate() {
                match need(&r, i) {
                    Need::Free => {}
                    Need::Plain => joins.push((class[v.index()], bytes(v), None)),
                    Need::Output => joins.push((class[v.index()], bytes(v), y)),
                }
            }
            match r {
                Role::Priced | Role::Joined
                    if matches!(n.op, Op::Conv(_) | Op::MaxPool(_) | Op::AveragePool(_)) =>
                {
                    let (x, y) = (n.inputs[0], n.outputs[0]);
                    let mut cost = [NEVER; 4];
                    for (k, (li, lo)) in [
                        (Layout::Plain, Layout::Plain),
                        (Layout::Plain, block),
                        (block, Layout::Plain),
                        (block, block),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        if let Some(c) = t.cost(g, n, li, lo) {
                            cost[k] = c;
                        }
                    }
                    priced.push((class[x.index()], class[y.index()], cost));
                }
                _ => {}
            }
        }
        for &v in &g.outputs {
            joins.push((class[v.index()], bytes(v), None));
        }
        let mut touch = vec![Vec::new(); eligible.len()];
        for (id, &(i, o, _)) in priced.iter().enumerate() {
            touch[i].push(id);
            if o != i {
                touch[o].push(id);
            }
        }
        for (j, &(k, _, follows)) in joins.iter().enumerate() {
            let id = priced.len() + j;
            touch[k].push(id);
            if let Some(f) = follows.filter(|&f| f != k) {
                touch[f].push(id);
            }
        }
        Problem {
            block,
            class,
            eligible,
            priced,
            joins,
            touch,
        }
    }

    /// Term `id` of the total (a priced node's cost, or a join's relayout).
    fn term(&self, t: &dyn LayoutTarget, id: usize, blocked: &[bool]) -> f64 {
        match self.priced.get(id) {
            Some(&(i, o, cost)) => cost[(blocked[i] as usize) * 2 + blocked[o] as usize],
            None => {
                let (k, bytes, follows) = self.joins[id - self.priced.len()];
                let want = follows.is_some_and(|f| blocked[f]);
                if blocked[k] != want {
                    t.relayout_cost(bytes as usize)
                } else {
                    0.0
                }
            }
        }
    }

    fn total(&self, t: &dyn LayoutTarget, blocked: &[bool]) -> f64 {
        (0..self.priced.len() + self.joins.len())
            .map(|id| self.term(t, id, blocked))
            .sum()
    }

    /// How much the total changes when the classes of move `m` flip (only the terms that
    /// mention them).
    fn delta(&self, t: &dyn LayoutTarget, blocked: &mut [bool], m: &[usize]) -> f64 {
        let mut ids: Vec<usize> = m
            .iter()
            .flat_map(|&k| self.touch[k].iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let sum = |blocked: &[bool]| ids.iter().map(|&id| self.term(t, id, blocked)).sum::<f64>();
        let before = sum(blocked);
        for &k in m {
            blocked[k] = !blocked[k];
        }
        let after = sum(blocked);
        for &k in m {
            blocked[k] = !blocked[k];
        }
        after - before
    }

    /// Flip one class, or the input and output classes of one priced node together (a
    /// depthwise convolution runs blocked only with both blocked), while the total falls.
    fn descend(&self, t: &dyn LayoutTarget, mut blocked: Vec<bool>) -> (f64, Vec<bool>) {
        let moves: Vec<Vec<usize>> = (0..blocked.len())
            .map(|k| vec![k])
            .chain(
                self.priced
                    .iter()
                    .filter(|(i, o, _)| i != o)
                    .map(|&(i, o, _)| vec![i, o]),
            )
            .collect();
        for _ in 0..32 {
            let mut improved = false;
            for m in &moves {
                if m.iter().any(|&k| !self.eligible[k] && !blocked[k]) {
                    continue;
                }
                if self.delta(t, &mut blocked, m) < -1e-9 {
                    for &k in m {
                        blocked[k] = !blocked[k];
                    }
                    improved = true;
                }
            }
            if !improved {
                break;
            }
        }
        (self.total(t, &blocked), blocked)
    }
}

impl Pass for LayoutPass {
    fn name(&self) -> &'static str {
        "layout"
    }

    fn run(&self, g: &mut Graph) -> usize {
        let t = self.target.as_ref();
        let mut changes = 0;
        if let Some(block) = t.blocked() {
            let p = Problem::build(g, t, block);
            let plain = vec![false; p.eligible.len()];
            let (c0, b0) = p.descend(t, plain.clone());
            let (c1, b1) = p.descend(t, p.eligible.clone());
            let blocked = if c1 < c0 { b1 } else { b0 };
            if blocked != plain {
                changes += apply(g, &p, &blocked);
            }
        }
        changes + pack_weights(g, t)
    }
}

/// Constant operands the target reads in a weight layout (FRACTAL_Z filters, FRACTAL_NZ
/// matrices) get a `relayout` of the constant, one per (constant, layout), placed first; a back
/// end packs it at compile time. Returns the number of relayouts.
fn pack_weights(g: &mut Graph, t: &dyn LayoutTarget) -> usize {
    let ids: Vec<NodeId> = g.iter_nodes().map(|(id, _)| id).collect();
    let mut made: HashMap<(ValueId, Layout), ValueId> = HashMap::new();
    let mut first: Vec<NodeId> = Vec::new();
    for &id in &ids {
        let n = g.node(id);
        let want: Vec<(usize, Layout)> = (0..n.inputs.len())
            .filter(|&i| g.const_data(n.inputs[i]).is_some())
            .filter_map(|i| t.weight_layout(g, n, i).map(|l| (i, l)))
            .filter(|&(i, l)| l.fits(g.ty(n.inputs[i])) && !l.is_plain())
            .collect();
        for (i, l) in want {
            let v = g.node(id).inputs[i];
            let r = match made.get(&(v, l)) {
                Some(&r) => r,
                None => {
                    let name = g.fresh_name(&format!("{}_{}", g.value(v).name, l));
                    let r = g
                        .add_node(name.clone(), Op::Relayout { to: l }, vec![v], vec![name])
                        .expect("a relayout of a constant")[0];
                    first.push(g.producer(r).expect("just added"));
                    made.insert((v, l), r);
                    r
                }
            };
            g.nodes[id.index()].as_mut().unwrap().inputs[i] = r;
        }
    }
    if !first.is_empty() {
        let order: Vec<NodeId> = first.iter().copied().chain(ids).collect();
        g.reorder(&order);
    }
    made.len()
}

/// Rewrite `g` to the chosen layouts: value types, conv output layouts, and one `relayout`
/// per (value, layout) that a reader needs, placed right after the value's producer. Returns
/// the number of blocked values plus relayouts.
fn apply(g: &mut Graph, p: &Problem, blocked: &[bool]) -> usize {
    let layout_of = |v: ValueId| {
        if blocked[p.class[v.index()]] {
            p.block
        } else {
            Layout::Plain
        }
    };
    let mut changes = 0;
    for v in 0..g.values.len() {
        let l = layout_of(ValueId(v as u32));
        if g.values[v].ty.layout != l {
            g.values[v].ty.layout = l;
            changes += 1;
        }
    }
    // the layout each reader needs of each input
    let ids: Vec<NodeId> = g.iter_nodes().map(|(id, _)| id).collect();
    let mut wanted: Vec<(NodeId, usize, Layout)> = Vec::new();
    for &id in &ids {
        let n = g.node(id);
        let r = role(g, &n.op, &n.inputs, n.outputs.first().copied());
        let out_l = n.outputs.first().map(|&o| layout_of(o));
        for (i, &v) in n.inputs.iter().enumerate() {
            let want = match need(&r, i) {
                Need::Free => None,
                Need::Plain => Some(Layout::Plain),
                Need::Output => out_l,
            };
            if let Some(l) = want
                && layout_of(v) != l
            {
                wanted.push((id, i, l));
            }
        }
        if let (Op::Conv(a), Some(l)) = (&mut g.nodes[id.index()].as_mut().unwrap().op, out_l) {
            a.layout = l;
        }
    }
    // one relayout per (value, layout), after the producer
    let mut made: HashMap<(ValueId, Layout), ValueId> = HashMap::new();
    let mut after: HashMap<Option<NodeId>, Vec<NodeId>> = HashMap::new();
    for (id, i, l) in wanted {
        let v = g.node(id).inputs[i];
        let r = match made.get(&(v, l)) {
            Some(&r) => r,
            None => {
                let base = format!("{}_{}", g.value(v).name, l);
                let name = g.fresh_name(&base);
                let r = g
                    .add_node(name.clone(), Op::Relayout { to: l }, vec![v], vec![name])
                    .expect("a relayout of a valid value")[0];
                let nid = g.producer(r).expect("just added");
                after.entry(g.producer(v)).or_default().push(nid);
                made.insert((v, l), r);
                changes += 1;
                r
            }
        };
        g.nodes[id.index()].as_mut().unwrap().inputs[i] = r;
    }
    debug_assert!(
        g.outputs.iter().all(|&o| layout_of(o).is_plain()),
        "graph outputs stay plain"
    );
    let mut order: Vec<NodeId> = after.remove(&None).unwrap_or_default();
    for id in ids {
        order.push(id);
        order.extend(after.remove(&Some(id)).unwrap_or_default());
    }
    g.reorder(&order);
    changes
}
