//! Static memory planning: every intermediate tensor gets an offset in one workspace whose size
//! is known at compile time, so the run path performs no allocation.
//!
//! Views (ops that only reinterpret bytes, like `Reshape`) share their input's storage. A graph
//! output is computed directly into the caller's output buffer when its producer allows it;
//! otherwise (an output that is an input, a constant, or listed twice) the back end copies it.
//!
//! Placement: every workspace *buffer* (a tensor that owns storage, a chain of tensors written
//! in place over one another, or a kernel's scratch) has a lifetime `[first node, last node]`
//! in schedule order. Buffers are placed largest first, each at the lowest 64-byte aligned
//! offset where it overlaps no already placed buffer whose lifetime intersects its own (the
//! "greedy by size" strategy of TFLite's arena planner). An elementwise node may write its
//! output over an input that dies at that node ([`may_overwrite_input`]). Graph inputs, outputs
//! and constants are never in the workspace, so they are never overwritten. A `Concat` whose
//! inputs are each one contiguous block of its output (every dimension before the axis is 1)
//! and are read by nothing else gets its inputs computed straight into their place in its
//! output ([`concat_parts`]): the concat then needs no code. [`check`] verifies a plan
//! independently of how it was made.

use crate::{Graph, Node, NodeId, Op, ValueDef, ValueId};

/// Workspace offsets are multiples of this.
pub const ALIGN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Caller's input buffer `i`.
    Input(usize),
    /// Caller's output buffer `j`.
    Output(usize),
    /// A constant (read-only data).
    Const(ValueId),
    /// `offset` bytes into the workspace.
    Workspace(usize),
}

#[derive(Debug, Clone)]
pub struct MemPlan {
    /// Storage of each value (`None` for dead values).
    pub storage: Vec<Option<Storage>>,
    /// Total workspace bytes (a multiple of `ALIGN`).
    pub workspace_size: usize,
    /// Outputs that must be copied at the end: (output index, value to copy from).
    pub output_copies: Vec<(usize, ValueId)>,
    /// What a planner-less runtime would allocate: every intermediate tensor that owns storage
    /// plus every kernel scratch buffer, each in its own `ALIGN`-rounded allocation (graph
    /// inputs, outputs, constants and views cost nothing in both this and `workspace_size`).
    pub naive_size: usize,
    /// The part of `naive_size` that is kernel scratch.
    pub naive_scratch: usize,
    /// Per node (indexed by `NodeId`): workspace offset of the scratch buffer a back end asked
    /// for, live only while that node runs.
    pub scratch: Vec<Option<usize>>,
    /// Per node (indexed by `NodeId`): bytes of that scratch buffer (0 for none).
    pub scratch_bytes: Vec<usize>,
    /// Nodes whose output was placed over one of their inputs: (node, input index).
    pub in_place: Vec<(NodeId, usize)>,
    /// `Concat` nodes whose inputs were all computed into their place in the output
    /// ([`concat_parts`]): there is nothing left to copy.
    pub concat_in_place: Vec<NodeId>,
}

/// The inputs of `Concat` node `n` as `(value, byte offset in the output)` if they may be
/// computed straight into the output: every dimension before the axis is 1 (each input is one
/// contiguous block of the output), and every input is a distinct tensor that owns its storage
/// (not a view, graph input, output or constant; `storage` holds the storage fixed before
/// planning) and is read by this node only (`uses`: readers per value, views included).
pub fn concat_parts(
    g: &Graph,
    n: &Node,
    storage: &[Option<Storage>],
    uses: &[usize],
    root: &[ValueId],
) -> Option<Vec<(ValueId, usize)>> {
    let Op::Concat { axis } = n.op else {
        return None;
    };
    let y = *n.outputs.first()?;
    let ty = g.ty(y);
    if root[y.index()] != y
        || storage[y.index()].is_some()
        || ty.shape[..axis].iter().any(|&d| d != 1)
    {
        return None;
    }
    let mut parts = Vec::new();
    let mut off = 0;
    for (k, &x) in n.inputs.iter().enumerate() {
        let owned = root[x.index()] == x
            && storage[x.index()].is_none()
            && matches!(g.value(x).def, ValueDef::Node(..))
            && uses[x.index()] == 1
            && !n.inputs[..k].contains(&x);
        if !owned {
            return None;
        }
        parts.push((x, off));
        off += g.ty(x).size_bytes();
    }
    Some(parts)
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// The scratch buffer of a control-flow node (`if`, `loop`): the workspace its sub-graphs run
/// in, and a loop's state. Sub-graphs are planned on their own (their inputs are the node's
/// operands, their outputs the node's outputs or the loop's state buffers); the node's scratch
/// is live only while the node runs, so the branches of an `if` share it and the body's
/// workspace is reused by every iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowScratch {
    /// Offset of the sub-graphs' workspace (0; it is `ALIGN`-aligned).
    pub body: usize,
    /// `loop`: offsets of the buffers the body writes the carried values' next state into
    /// (copied over the node's carried outputs after each iteration).
    pub carried: Vec<usize>,
    /// `loop`: offsets of the iteration number (i64), the condition in and the condition out
    /// (one byte each; bool).
    pub iter: usize,
    pub cond_in: usize,
    pub cond_out: usize,
    /// Total bytes.
    pub size: usize,
}

/// The scratch layout of control-flow node `n` whose sub-graphs need `body_ws` workspace bytes
/// each (`None` for other ops).
pub fn flow_scratch(g: &Graph, n: &Node, body_ws: &[usize]) -> Option<FlowScratch> {
    let ws = align(body_ws.iter().copied().max().unwrap_or(0));
    match &n.op {
        Op::If(_) => Some(FlowScratch {
            body: 0,
            carried: Vec::new(),
            iter: 0,
            cond_in: 0,
            cond_out: 0,
            size: ws,
        }),
        Op::Loop(l) => {
            let mut off = ws;
            let mut carried = Vec::new();
            for &v in &n.outputs[..l.n_carried] {
                carried.push(off);
                off += align(g.ty(v).size_bytes().max(1));
            }
            Some(FlowScratch {
                body: 0,
                carried,
                iter: off,
                cond_in: off + 8,
                cond_out: off + 16,
                size: off + ALIGN,
            })
        }
        _ => None,
    }
}

/// Whether node `n` may write its (single) output over its input `k` when that input dies at
/// `n`. This is a contract with every back end: the op must be elementwise and its kernel must
/// read element `i` of input `k` before it writes element `i` of the output, and nothing
/// after that. It holds for
/// - `Unary`, `Clip`, `Act`, `Binary`, `Cast` and `Chain`,
/// - when input `k` has exactly the output's shape (an operand that is broadcast is read at
///   other positions than the one being written, so it never qualifies) and the same element
///   size (so element `i` of both lies at the same byte offset).
///
/// The CPU back end runs these ops through `ew::elementwise` / `kernels::cast`, which load
/// element `i` (or the 4 lanes at `i`) of every operand before storing the result at `i`.
/// The planner additionally requires that the input's storage is in the workspace (never a
/// graph input, output or constant) and that no other operand of `n` reads the same storage
/// through a different value.
pub fn may_overwrite_input(g: &Graph, n: &Node, k: usize) -> bool {
    let (&[o], Some(&x)) = (n.outputs.as_slice(), n.inputs.get(k)) else {
        return false;
    };
    let elementwise = matches!(
        n.op,
        Op::Unary(_)
            | Op::Clip { .. }
            | Op::Act { .. }
            | Op::Binary(_)
            | Op::Cast { .. }
            | Op::Chain { .. }
    );
    let (tx, to) = (g.ty(x), g.ty(o));
    elementwise && tx.shape == to.shape && tx.dtype.size() == to.dtype.size()
}

/// Plan memory for a verified graph.
pub fn plan(g: &Graph) -> MemPlan {
    plan_with_scratch(g, &|_| 0)
}

/// Storage root of every value: a view's root is its input's root.
fn roots(g: &Graph) -> Vec<ValueId> {
    let mut root: Vec<ValueId> = (0..g.values.len()).map(|i| ValueId(i as u32)).collect();
    for (_, n) in g.iter_nodes() {
        if n.op.is_view() {
            root[n.outputs[0].index()] = root[n.inputs[0].index()];
        }
    }
    root
}

/// Schedule position of the last node that reads each root through any of its aliases
/// (`None`: never read).
fn last_uses(g: &Graph, order: &[NodeId], root: &[ValueId]) -> Vec<Option<usize>> {
    let mut last = vec![None; g.values.len()];
    for (pos, &nid) in order.iter().enumerate() {
        for &i in &g.node(nid).inputs {
            last[root[i.index()].index()] = Some(pos);
        }
    }
    last
}

/// One workspace allocation and the schedule positions during which it is live.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub size: usize,
    pub start: usize,
    pub end: usize,
}

/// Plan memory; `scratch(node)` is the number of temporary bytes a back end's kernel for that
/// node needs (0 for none).
pub fn plan_with_scratch(g: &Graph, scratch: &dyn Fn(&Node) -> usize) -> MemPlan {
    let nv = g.values.len();
    let root = roots(g);
    let mut storage: Vec<Option<Storage>> = vec![None; nv];
    for (i, &v) in g.inputs.iter().enumerate() {
        storage[v.index()] = Some(Storage::Input(i));
    }
    for (i, v) in g.values.iter().enumerate() {
        if matches!(v.def, ValueDef::Const(_)) {
            storage[i] = Some(Storage::Const(ValueId(i as u32)));
        }
    }
    // graph outputs claim their root's storage where possible
    let mut output_copies = Vec::new();
    for (j, &o) in g.outputs.iter().enumerate() {
        let r = root[o.index()];
        if storage[r.index()].is_none() {
            storage[r.index()] = Some(Storage::Output(j));
        } else {
            output_copies.push((j, o));
        }
    }
    let order: Vec<NodeId> = g.iter_nodes().map(|(id, _)| id).collect();
    let last_use = last_uses(g, &order, &root);

    // concats whose inputs are computed into their output: part -> (whole, byte offset)
    let uses = reader_counts(g);
    let mut part_of: Vec<Option<(ValueId, usize)>> = vec![None; nv];
    // outputs of the concats computed in place
    let mut whole = vec![false; nv];
    let mut concat_in_place = Vec::new();
    for &nid in &order {
        let n = g.node(nid);
        let Some(parts) = concat_parts(g, n, &storage, &uses, &root) else {
            continue;
        };
        // a concat that is itself a part keeps its inputs (no nested offsets)
        if part_of[n.outputs[0].index()].is_some() || parts.iter().any(|&(x, _)| whole[x.index()]) {
            continue;
        }
        for &(x, off) in &parts {
            part_of[x.index()] = Some((n.outputs[0], off));
        }
        whole[n.outputs[0].index()] = true;
        concat_in_place.push(nid);
    }

    // buffers and their lifetimes, in schedule order
    let mut bufs: Vec<Buf> = Vec::new();
    let mut buf_of: Vec<Option<usize>> = vec![None; nv]; // per root
    let mut scratch_buf: Vec<Option<usize>> = vec![None; g.nodes.len()];
    let mut scratch_bytes = vec![0usize; g.nodes.len()];
    let mut in_place = Vec::new();
    let (mut naive, mut naive_scratch) = (0usize, 0usize);
    for (pos, &nid) in order.iter().enumerate() {
        let n = g.node(nid);
        for &o in &n.outputs {
            if root[o.index()] != o || storage[o.index()].is_some() {
                continue;
            }
            let size = align(g.ty(o).size_bytes().max(1));
            naive = naive.saturating_add(size);
            // a value nobody reads dies right after its producer
            let end = last_use[o.index()].unwrap_or(pos).max(pos);
            if let Some((whole, _)) = part_of[o.index()] {
                // computed into the concat's output, whose buffer is live from its first part
                if buf_of[whole.index()].is_none() {
                    let wend = last_use[whole.index()].unwrap_or(end).max(end);
                    buf_of[whole.index()] = Some(bufs.len());
                    bufs.push(Buf {
                        size: align(g.ty(whole).size_bytes().max(1)),
                        start: pos,
                        end: wend,
                    });
                }
                continue;
            }
            if buf_of[o.index()].is_some() {
                // a concat output whose buffer its parts opened
                continue;
            }
            let reuse = (0..n.inputs.len()).find_map(|k| {
                let r = root[n.inputs[k].index()];
                let b = buf_of[r.index()]?;
                let legal = may_overwrite_input(g, n, k)
                    && part_of[r.index()].is_none()
                    && last_use[r.index()] == Some(pos)
                    && bufs[b].end == pos
                    && bufs[b].size == size
                    && n.inputs
                        .iter()
                        .all(|&x| x == n.inputs[k] || root[x.index()] != r);
                legal.then_some((k, b))
            });
            match reuse {
                Some((k, b)) => {
                    bufs[b].end = end;
                    buf_of[o.index()] = Some(b);
                    in_place.push((nid, k));
                }
                None => {
                    buf_of[o.index()] = Some(bufs.len());
                    bufs.push(Buf {
                        size,
                        start: pos,
                        end,
                    });
                }
            }
        }
        let sb = scratch(n);
        if sb > 0 {
            let size = align(sb);
            naive = naive.saturating_add(size);
            naive_scratch = naive_scratch.saturating_add(size);
            scratch_bytes[nid.index()] = sb;
            scratch_buf[nid.index()] = Some(bufs.len());
            bufs.push(Buf {
                size,
                start: pos,
                end: pos,
            });
        }
    }

    let (offsets, workspace_size) = place(&bufs);
    for v in 0..nv {
        if let Some(b) = buf_of[v] {
            storage[v] = Some(Storage::Workspace(offsets[b]));
        }
    }
    for v in 0..nv {
        if let Some((whole, off)) = part_of[v]
            && let Some(Storage::Workspace(w)) = storage[whole.index()]
        {
            storage[v] = Some(Storage::Workspace(w + off));
        }
    }
    // views take their root's storage
    for i in 0..nv {
        if storage[i].is_none() {
            storage[i] = storage[root[i].index()];
        }
    }
    MemPlan {
        storage,
        workspace_size,
        output_copies,
        naive_size: naive,
        naive_scratch,
        scratch: scratch_buf.iter().map(|b| b.map(|b| offsets[b])).collect(),
        scratch_bytes,
        in_place,
        concat_in_place,
    }
}

/// Per value: how many node inputs read it directly (a node reading it twice counts twice).
fn reader_counts(g: &Graph) -> Vec<usize> {
    let mut uses = vec![0usize; g.values.len()];
    for (_, n) in g.iter_nodes() {
        for &i in &n.inputs {
            uses[i.index()] += 1;
        }
    }
    uses
}

/// Greedy by size: largest buffer first (ties: earlier start), each at the lowest offset that
/// overlaps no placed buffer with an intersecting lifetime (offsets are sums of sizes, so sizes
/// that are multiples of an alignment give aligned offsets). Returns the offsets and the total
/// size (rounded to [`ALIGN`]). Back ends with their own buffers (the Ascend writer's GE ops)
/// place them with this too.
pub fn place(bufs: &[Buf]) -> (Vec<usize>, usize) {
    let mut by_size: Vec<usize> = (0..bufs.len()).collect();
    by_size.sort_by_key(|&b| (std::cmp::Reverse(bufs[b].size), bufs[b].start, b));
    let mut offsets = vec![0usize; bufs.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0usize;
    let mut busy: Vec<(usize, usize)> = Vec::new();
    for b in by_size {
        let (s, e) = (bufs[b].start, bufs[b].end);
        busy.clear();
        busy.extend(
            placed
                .iter()
                .filter(|&&p| bufs[p].start <= e && s <= bufs[p].end)
                .map(|&p| (offsets[p], offsets[p] + bufs[p].size)),
        );
        busy.sort_unstable();
        let mut off = 0usize;
        for &(lo, hi) in &busy {
            if off + bufs[b].size <= lo {
                break;
            }
            off = off.max(hi);
        }
        offsets[b] = off;
        total = total.max(off + bufs[b].size);
        placed.push(b);
    }
    (offsets, align(total))
}

/// Check a plan against the graph, independently of how it was made: every workspace tensor and
/// scratch buffer lies inside the workspace at an aligned offset, and no two of them that are
/// live at the same node share a byte, except an output written over an input that dies at its
/// producer where [`may_overwrite_input`] allows it (same offset). Graph inputs, outputs and
/// constants keep their own storage, views share their input's, and every graph output is
/// either computed in place or copied.
/// What a workspace buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A tensor that owns its storage (with the tensors written in place over it).
    Value(ValueId),
    /// A node's kernel scratch, live while that node runs.
    Scratch(NodeId),
}

/// One workspace buffer of a plan: where it lives and when (positions in schedule order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub offset: usize,
    pub size: usize,
    /// Position of the node that writes it first / reads it last.
    pub first: usize,
    pub last: usize,
    pub what: What,
}

/// The workspace buffers of `plan` with their lifetimes (what [`check`] verifies and
/// `kiln inspect --html` draws).
pub fn buffers(g: &Graph, plan: &MemPlan) -> Result<Vec<Buffer>, String> {
    let root = roots(g);
    let order: Vec<NodeId> = g.iter_nodes().map(|(id, _)| id).collect();
    let last_use = last_uses(g, &order, &root);
    buffers_of(g, plan, &order, &root, &last_use)
}

fn buffers_of(
    g: &Graph,
    plan: &MemPlan,
    order: &[NodeId],
    root: &[ValueId],
    last_use: &[Option<usize>],
) -> Result<Vec<Buffer>, String> {
    let mut items = Vec::new();
    for (pos, &nid) in order.iter().enumerate() {
        let n = g.node(nid);
        for &o in &n.outputs {
            if root[o.index()] != o {
                continue;
            }
            match plan.storage[o.index()] {
                Some(Storage::Workspace(off)) => {
                    let end = last_use[o.index()].unwrap_or(pos).max(pos);
                    items.push(Buffer {
                        offset: off,
                        size: g.ty(o).size_bytes(),
                        first: pos,
                        last: end,
                        what: What::Value(o),
                    });
                }
                Some(_) => {}
                None => return Err(format!("'{}' has no storage", g.value(o).name)),
            }
        }
        if let Some(off) = plan.scratch[nid.index()] {
            items.push(Buffer {
                offset: off,
                size: plan.scratch_bytes[nid.index()],
                first: pos,
                last: pos,
                what: What::Scratch(nid),
            });
        }
    }
    Ok(items)
}

pub fn check(g: &Graph, plan: &MemPlan) -> Result<(), String> {
    let root = roots(g);
    let order: Vec<NodeId> = g.iter_nodes().map(|(id, _)| id).collect();
    let last_use = last_uses(g, &order, &root);
    let name = |v: ValueId| g.value(v).name.clone();
    for (i, &v) in g.inputs.iter().enumerate() {
        if plan.storage[v.index()] != Some(Storage::Input(i)) {
            return Err(format!(
                "graph input '{}' is not in its input buffer",
                name(v)
            ));
        }
    }
    for (i, v) in g.values.iter().enumerate() {
        let c = matches!(v.def, ValueDef::Const(_));
        let in_const = plan.storage[i] == Some(Storage::Const(ValueId(i as u32)));
        if c != in_const && root[i].index() == i {
            return Err(format!("constant storage of '{}' is wrong", v.name));
        }
    }
    for (_, n) in g.iter_nodes() {
        if n.op.is_view() && plan.storage[n.inputs[0].index()] != plan.storage[n.outputs[0].index()]
        {
            return Err(format!(
                "view '{}' does not share its input's storage",
                n.name
            ));
        }
    }
    for (j, &o) in g.outputs.iter().enumerate() {
        let copied = plan.output_copies.iter().any(|&(k, v)| k == j && v == o);
        if plan.storage[o.index()] != Some(Storage::Output(j)) && !copied {
            return Err(format!("graph output {j} ('{}') is never written", name(o)));
        }
    }
    for (j, s) in plan.storage.iter().enumerate() {
        if let Some(Storage::Output(k)) = s
            && root[g.outputs[*k].index()] != root[j]
        {
            return Err(format!(
                "'{}' is stored in output buffer {k}, which belongs to another value",
                g.values[j].name
            ));
        }
    }

    // concats computed in place: every input at its offset in the output
    let uses = reader_counts(g);
    let mut fixed = plan.storage.clone();
    for s in fixed.iter_mut() {
        if matches!(s, Some(Storage::Workspace(_))) {
            *s = None;
        }
    }
    let mut part_of: Vec<Option<(ValueId, usize)>> = vec![None; g.values.len()];
    for &nid in &plan.concat_in_place {
        let n = g.node(nid);
        let Some(parts) = concat_parts(g, n, &fixed, &uses, &root) else {
            return Err(format!(
                "concat '{}' is marked in place but its inputs may not be",
                n.name
            ));
        };
        let Some(Storage::Workspace(w)) = plan.storage[n.outputs[0].index()] else {
            return Err(format!(
                "concat '{}' in place outside the workspace",
                n.name
            ));
        };
        for (x, off) in parts {
            if plan.storage[x.index()] != Some(Storage::Workspace(w + off)) {
                return Err(format!(
                    "input '{}' of in-place concat '{}' is not at its offset {off}",
                    name(x),
                    n.name
                ));
            }
            part_of[x.index()] = Some((n.outputs[0], off));
        }
    }

    // (offset, size, first pos, last pos, what): workspace roots and scratch buffers
    let items: Vec<(usize, usize, usize, usize, What)> =
        buffers_of(g, plan, &order, &root, &last_use)?
            .into_iter()
            .map(|b| (b.offset, b.size, b.first, b.last, b.what))
            .collect();
    let what = |w: &What| match w {
        What::Value(v) => format!("'{}'", name(*v)),
        What::Scratch(n) => format!("the scratch of node '{}'", g.node(*n).name),
    };
    for (off, size, _, _, w) in &items {
        let part = matches!(w, What::Value(v) if part_of[v.index()].is_some());
        if (off % ALIGN != 0 && !part) || off + size > plan.workspace_size {
            return Err(format!(
                "{} at {off}+{size} is misaligned or outside the {}-byte workspace",
                what(w),
                plan.workspace_size
            ));
        }
    }
    // sweep in offset order: only buffers that can overlap in bytes are compared
    let mut by_off: Vec<usize> = (0..items.len()).collect();
    by_off.sort_by_key(|&i| items[i].0);
    for (a_i, &a) in by_off.iter().enumerate() {
        let (ao, asz, as_, ae, ref aw) = items[a];
        for &b in &by_off[a_i + 1..] {
            let (bo, bsz, bs, be, ref bw) = items[b];
            if bo >= ao + asz.max(1) {
                break;
            }
            if bsz == 0 || asz == 0 || as_ > be || bs > ae {
                continue;
            }
            // the one permitted overlap: an output over an input that dies at its producer
            let in_place =
                |(x, xs, xe, xw): (usize, usize, usize, &What),
                 (y, ys, _, yw): (usize, usize, usize, &What)| {
                    let (What::Value(xv), What::Value(yv)) = (xw, yw) else {
                        return false;
                    };
                    let ValueDef::Node(p, _) = g.value(*yv).def else {
                        return false;
                    };
                    let n = g.node(p);
                    x == y
                        && xe == ys
                        && xs < ys
                        && order[ys] == p
                        && (0..n.inputs.len()).any(|k| {
                            root[n.inputs[k].index()] == *xv
                                && may_overwrite_input(g, n, k)
                                && n.inputs
                                    .iter()
                                    .all(|&i| i == n.inputs[k] || root[i.index()] != *xv)
                        })
                };
            // and a concat's input inside its output (at the offset verified above)
            let part = |x: &What, y: &What| match (x, y) {
                (What::Value(xv), What::Value(yv)) => {
                    part_of[xv.index()].is_some_and(|(w, _)| w == *yv)
                }
                _ => false,
            };
            if !(in_place((ao, as_, ae, aw), (bo, bs, be, bw))
                || in_place((bo, bs, be, bw), (ao, as_, ae, aw))
                || part(aw, bw)
                || part(bw, aw))
            {
                return Err(format!(
                    "{} (bytes {ao}..{}, nodes {as_}..={ae}) and {} (bytes {bo}..{}, nodes {bs}..={be}) overlap while both are live",
                    what(aw),
                    ao + asz,
                    what(bw),
                    bo + bsz
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{BinaryOp, UnaryOp};
    use crate::{DType, TensorType};

    fn t(shape: &[usize]) -> TensorType {
        TensorType::new(DType::F32, shape.to_vec())
    }

    /// Add a one-output node whose output value is named after it.
    fn add(g: &mut Graph, name: &str, op: Op, ins: Vec<ValueId>) -> ValueId {
        g.add_node(name, op, ins, vec![name.to_string()]).unwrap()[0]
    }

    /// A tiny deterministic generator (xorshift), so the property tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A random graph of unary/binary ops (some broadcasting), reshapes (views), casts, concats
    /// and reductions over a few shapes, with several graph outputs (one of them an input).
    fn random_graph(seed: u64) -> Graph {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut g = Graph::new("rand");
        let mut vals = vec![g.add_input("x", t(&[4, 8])), g.add_input("y", t(&[4, 8]))];
        let c = g
            .add_const(
                "c",
                t(&[8]),
                crate::ConstData::from_f32(&[0.5, -1.0, 2.0, 0.0, 1.0, -3.0, 0.25, 4.0]),
            )
            .unwrap();
        let nodes = 5 + r.below(30);
        for i in 0..nodes {
            let a = vals[vals.len() - 1 - r.below(vals.len().min(6))];
            let ta = g.ty(a).clone();
            let name = format!("n{i}");
            let (op, ins) = match (r.below(8), ta.shape.as_slice()) {
                (0, _) => (Op::Unary(UnaryOp::Relu), vec![a]),
                (1, [4, 8]) => (Op::Binary(BinaryOp::Add), vec![a, c]),
                (2, _) => {
                    let b = vals[r.below(vals.len())];
                    if g.ty(b).shape != ta.shape {
                        continue;
                    }
                    (Op::Binary(BinaryOp::Mul), vec![a, b])
                }
                (3, [4, 8]) => (Op::Reshape { shape: vec![32] }, vec![a]),
                (3, [32]) => (Op::Reshape { shape: vec![4, 8] }, vec![a]),
                (4, [4, 8]) => (Op::Concat { axis: 0 }, vec![a, a]),
                (5, [8, 8]) => (
                    Op::Reduce {
                        kind: crate::ops::ReduceKind::Sum,
                        axes: vec![0],
                        keepdims: false,
                    },
                    vec![a],
                ),
                (6, _) => (Op::Unary(UnaryOp::Neg), vec![a]),
                (7, [4, 8]) => {
                    // two different tensors: a candidate for computing both in place
                    let b = vals[r.below(vals.len())];
                    if g.ty(b).shape != ta.shape || b == a {
                        continue;
                    }
                    (Op::Concat { axis: 0 }, vec![a, b])
                }
                (_, _) => (Op::Unary(UnaryOp::Exp), vec![a]),
            };
            let outs = g
                .add_node(&name, op, ins, vec![name.clone()])
                .expect("valid node");
            vals.extend(outs);
        }
        // a few outputs: the last value, a random earlier one, and an input
        let last = *vals.last().unwrap();
        g.outputs.push(last);
        let k = vals[r.below(vals.len())];
        g.outputs.push(k);
        g.outputs.push(vals[0]);
        g
    }

    #[test]
    fn random_graphs_never_overlap_live_buffers() {
        let (mut in_place, mut concats) = (0, 0);
        for seed in 0..400u64 {
            let g = random_graph(seed);
            crate::verify::verify(&g).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            // scratch on every third node exercises node-local buffers
            let p = plan_with_scratch(&g, &|n| if n.name.len() % 3 == 0 { 100 } else { 0 });
            check(&g, &p).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            in_place += p.in_place.len();
            concats += p.concat_in_place.len();
            assert!(p.workspace_size <= p.naive_size, "seed {seed}");
        }
        assert!(in_place > 0, "no random graph exercised in-place reuse");
        assert!(concats > 0, "no random graph computed a concat in place");
    }

    /// x -> relu a, exp b (each [1,4,8]) -> concat(a, b) on axis 1 -> neg (output).
    fn concat_graph(batch: usize) -> (Graph, [ValueId; 4]) {
        let mut g = Graph::new("cat");
        let x = g.add_input("x", t(&[batch, 4, 8]));
        let a = add(&mut g, "a", Op::Unary(UnaryOp::Relu), vec![x]);
        let b = add(&mut g, "b", Op::Unary(UnaryOp::Exp), vec![x]);
        let c = add(&mut g, "c", Op::Concat { axis: 1 }, vec![a, b]);
        let d = add(&mut g, "d", Op::Unary(UnaryOp::Neg), vec![c]);
        g.outputs.push(d);
        (g, [a, b, c, d])
    }

    #[test]
    fn concat_inputs_are_computed_in_place() {
        let (g, [a, b, c, _]) = concat_graph(1);
        let p = plan(&g);
        check(&g, &p).unwrap();
        let Some(Storage::Workspace(w)) = p.storage[c.index()] else {
            panic!("concat output in the workspace");
        };
        assert_eq!(p.storage[a.index()], Some(Storage::Workspace(w)));
        assert_eq!(p.storage[b.index()], Some(Storage::Workspace(w + 128)));
        assert_eq!(p.concat_in_place.len(), 1);
        // the plan checker rejects a part moved off its offset
        let mut bad = p.clone();
        bad.storage[b.index()] = Some(Storage::Workspace(w + 64));
        assert!(check(&g, &bad).unwrap_err().contains("not at its offset"));
    }

    #[test]
    fn concat_in_place_only_for_contiguous_unshared_parts() {
        // batch 2: each input is two blocks of the output
        let (g, _) = concat_graph(2);
        let p = plan(&g);
        check(&g, &p).unwrap();
        assert!(p.concat_in_place.is_empty());
        // an input that is also read elsewhere (here: a graph output) stays separate
        let (mut g, [a, ..]) = concat_graph(1);
        g.outputs.push(a);
        let p = plan(&g);
        check(&g, &p).unwrap();
        assert!(p.concat_in_place.is_empty());
        // a graph input as a part
        let mut g = Graph::new("cat_in");
        let x = g.add_input("x", t(&[1, 4, 8]));
        let a = add(&mut g, "a", Op::Unary(UnaryOp::Relu), vec![x]);
        let c = add(&mut g, "c", Op::Concat { axis: 1 }, vec![a, x]);
        let d = add(&mut g, "d", Op::Unary(UnaryOp::Neg), vec![c]);
        g.outputs.push(d);
        let p = plan(&g);
        check(&g, &p).unwrap();
        assert!(p.concat_in_place.is_empty());
    }

    fn chain() -> (Graph, Vec<ValueId>) {
        // x -> relu a -> exp b -> add(b, a) c -> neg d (output)
        let mut g = Graph::new("chain");
        let x = g.add_input("x", t(&[1024]));
        let a = add(&mut g, "a", Op::Unary(UnaryOp::Relu), vec![x]);
        let b = add(&mut g, "b", Op::Unary(UnaryOp::Exp), vec![a]);
        let c = add(&mut g, "c", Op::Binary(BinaryOp::Add), vec![b, a]);
        let d = add(&mut g, "d", Op::Unary(UnaryOp::Neg), vec![c]);
        g.outputs.push(d);
        (g, vec![x, a, b, c, d])
    }

    #[test]
    fn in_place_only_over_dying_inputs() {
        let (g, v) = chain();
        let p = plan(&g);
        check(&g, &p).unwrap();
        let st = |i: usize| p.storage[v[i].index()];
        // a is read again by c, so b cannot take a's storage; c may take b's (or a's)
        assert_ne!(st(1), st(2));
        assert!(st(3) == st(1) || st(3) == st(2));
        assert_eq!(st(4), Some(Storage::Output(0)));
        assert_eq!(st(0), Some(Storage::Input(0)));
        assert_eq!(p.workspace_size, 2 * 4096);
        assert_eq!(p.naive_size, 3 * 4096);
    }

    #[test]
    fn graph_inputs_are_never_overwritten() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(&[16]));
        let a = add(&mut g, "a", Op::Unary(UnaryOp::Relu), vec![x]);
        let b = add(&mut g, "b", Op::Unary(UnaryOp::Exp), vec![a]);
        g.outputs.extend([b, a]);
        let p = plan(&g);
        check(&g, &p).unwrap();
        assert_eq!(p.storage[x.index()], Some(Storage::Input(0)));
        assert_eq!(p.storage[a.index()], Some(Storage::Output(1)));
        assert_eq!(p.storage[b.index()], Some(Storage::Output(0)));
        assert!(p.in_place.is_empty());
        assert_eq!(p.workspace_size, 0);
    }

    #[test]
    fn broadcast_operand_is_not_overwritten() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(&[4, 1]));
        let y = g.add_input("y", t(&[4, 8]));
        let a = add(&mut g, "a", Op::Unary(UnaryOp::Relu), vec![x]);
        let b = add(&mut g, "b", Op::Unary(UnaryOp::Relu), vec![y]);
        // a [4,1] is broadcast: c may not take its storage (it is smaller anyway); b may be
        let c = add(&mut g, "c", Op::Binary(BinaryOp::Mul), vec![a, b]);
        let d = add(&mut g, "d", Op::Unary(UnaryOp::Neg), vec![c]);
        g.outputs.push(d);
        let n = |name: &str| g.iter_nodes().find(|(_, n)| n.name == name).unwrap().1;
        assert!(!may_overwrite_input(&g, n("c"), 0));
        assert!(may_overwrite_input(&g, n("c"), 1));
        let p = plan(&g);
        check(&g, &p).unwrap();
        assert_eq!(p.storage[c.index()], p.storage[b.index()]);
        assert_ne!(p.storage[c.index()], p.storage[a.index()]);
    }

    #[test]
    fn not_elementwise_or_other_size_is_not_in_place() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(&[4, 8]));
        let a = add(&mut g, "a", Op::Unary(UnaryOp::Relu), vec![x]);
        let b = add(&mut g, "b", Op::Transpose { perm: vec![1, 0] }, vec![a]);
        let c = add(&mut g, "c", Op::Cast { to: DType::F64 }, vec![b]);
        let d = add(&mut g, "d", Op::Unary(UnaryOp::Neg), vec![c]);
        g.outputs.push(d);
        let p = plan(&g);
        check(&g, &p).unwrap();
        assert!(p.in_place.is_empty());
        assert_ne!(p.storage[a.index()], p.storage[b.index()]);
    }

    #[test]
    fn views_share_and_keep_their_root_alive() {
        // a -> reshape v; b = exp(a) may not overwrite a because v is read later
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(&[4, 8]));
        let a = add(&mut g, "a", Op::Unary(UnaryOp::Relu), vec![x]);
        let v = add(&mut g, "v", Op::Reshape { shape: vec![32] }, vec![a]);
        let b = add(&mut g, "b", Op::Unary(UnaryOp::Exp), vec![a]);
        let w = add(&mut g, "w", Op::Reshape { shape: vec![32] }, vec![b]);
        let c = add(&mut g, "c", Op::Binary(BinaryOp::Add), vec![v, w]);
        g.outputs.push(c);
        let p = plan(&g);
        check(&g, &p).unwrap();
        assert_eq!(p.storage[v.index()], p.storage[a.index()]);
        assert_eq!(p.storage[w.index()], p.storage[b.index()]);
        assert_ne!(p.storage[a.index()], p.storage[b.index()]);
    }

    #[test]
    fn checker_rejects_overlap() {
        let (g, v) = chain();
        let mut p = plan(&g);
        // b and a are both live at c: put them at the same offset
        p.storage[v[2].index()] = p.storage[v[1].index()];
        let e = check(&g, &p).unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        // a scratch buffer on top of a live tensor
        let mut p = plan_with_scratch(&g, &|n| if n.name == "c" { 64 } else { 0 });
        check(&g, &p).unwrap();
        let cid = g.iter_nodes().find(|(_, n)| n.name == "c").unwrap().0;
        let Some(Storage::Workspace(off)) = p.storage[v[1].index()] else {
            panic!("a is in the workspace")
        };
        p.scratch[cid.index()] = Some(off);
        assert!(check(&g, &p).unwrap_err().contains("scratch"));
        // outside the workspace
        let mut p = plan(&g);
        p.workspace_size -= ALIGN;
        assert!(check(&g, &p).is_err());
    }

    #[test]
    fn greedy_by_size_packs_better_than_order() {
        // big A [0,1], small s [1,2], big B [2,3]: first-fit in schedule order puts s after A
        // and B after s; by size, A and B share offset 0 and s goes above.
        let bufs = [
            Buf {
                size: 1024,
                start: 0,
                end: 1,
            },
            Buf {
                size: 64,
                start: 1,
                end: 2,
            },
            Buf {
                size: 1024,
                start: 2,
                end: 3,
            },
        ];
        let (off, total) = place(&bufs);
        assert_eq!(off, vec![0, 1024, 0]);
        assert_eq!(total, 1088);
    }
}
