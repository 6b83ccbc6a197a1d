//! Static memory planning: every intermediate tensor gets an offset in one workspace whose size
//! is known at compile time, so the run path performs no allocation.
//!
//! Views (ops that only reinterpret bytes, like `Reshape`) share their input's storage. A graph
//! output is computed directly into the caller's output buffer when its producer allows it;
//! otherwise (an output that is an input, a constant, or listed twice) the back end copies it.

use crate::{Graph, ValueDef, ValueId};

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
    /// Sum of all intermediate tensor sizes, for reports (what a planner-less runtime would allocate).
    pub naive_size: usize,
    /// Per node (indexed by `NodeId`): workspace offset of the scratch buffer a back end asked
    /// for, live only while that node runs.
    pub scratch: Vec<Option<usize>>,
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// Plan memory for a verified graph.
pub fn plan(g: &Graph) -> MemPlan {
    plan_with_scratch(g, &|_| 0)
}

/// Plan memory; `scratch(node)` is the number of temporary bytes a back end's kernel for that
/// node needs (0 for none).
pub fn plan_with_scratch(g: &Graph, scratch: &dyn Fn(&crate::Node) -> usize) -> MemPlan {
    let nv = g.values.len();
    // 1. alias roots through views
    let mut root: Vec<ValueId> = (0..nv).map(|i| ValueId(i as u32)).collect();
    for (_, n) in g.iter_nodes() {
        if n.op.is_view() {
            root[n.outputs[0].index()] = root[n.inputs[0].index()];
        }
    }
    let mut storage: Vec<Option<Storage>> = vec![None; nv];
    for (i, &v) in g.inputs.iter().enumerate() {
        storage[v.index()] = Some(Storage::Input(i));
    }
    for (i, v) in g.values.iter().enumerate() {
        if matches!(v.def, ValueDef::Const(_)) {
            storage[i] = Some(Storage::Const(ValueId(i as u32)));
        }
    }
    // 2. graph outputs claim their root's storage where possible
    let mut output_copies = Vec::new();
    for (j, &o) in g.outputs.iter().enumerate() {
        let r = root[o.index()];
        if storage[r.index()].is_none() {
            storage[r.index()] = Some(Storage::Output(j));
        } else {
            output_copies.push((j, o));
        }
    }
    // 3. liveness of roots: index of last node that reads any alias of the root
    let order: Vec<_> = g.iter_nodes().map(|(id, _)| id).collect();
    let mut last_use = vec![0usize; nv];
    for (pos, &nid) in order.iter().enumerate() {
        for &i in &g.node(nid).inputs {
            let r = root[i.index()].index();
            last_use[r] = last_use[r].max(pos);
        }
    }
    // 4. greedy first-fit over a free list, in schedule order
    let mut free: Vec<(usize, usize)> = Vec::new(); // (offset, size), sorted by offset
    let mut top = 0usize;
    let mut naive = 0usize;
    let mut release_at: Vec<Vec<(usize, usize)>> = vec![Vec::new(); order.len() + 1];
    let mut scratch_at: Vec<Option<usize>> = vec![None; g.nodes.len()];
    for (pos, &nid) in order.iter().enumerate() {
        let n = g.node(nid);
        let alloc = |size: usize, free: &mut Vec<(usize, usize)>, top: &mut usize| match free
            .iter()
            .position(|&(_, s)| s >= size)
        {
            Some(k) => {
                let (off, s) = free[k];
                if s == size {
                    free.remove(k);
                } else {
                    free[k] = (off + size, s - size);
                }
                off
            }
            None => {
                *top += size;
                *top - size
            }
        };
        for &o in &n.outputs {
            let r = root[o.index()];
            if r != o || storage[o.index()].is_some() {
                continue;
            }
            let size = align(g.ty(o).size_bytes().max(1));
            naive += size;
            let off = alloc(size, &mut free, &mut top);
            storage[o.index()] = Some(Storage::Workspace(off));
            // a value nobody reads dies right after its producer
            let die = last_use[o.index()].max(pos);
            release_at[die].push((off, size));
        }
        let sb = scratch(n);
        if sb > 0 {
            let size = align(sb);
            let off = alloc(size, &mut free, &mut top);
            scratch_at[nid.index()] = Some(off);
            release_at[pos].push((off, size));
        }
        for (off, size) in std::mem::take(&mut release_at[pos]) {
            free.push((off, size));
            free.sort_unstable();
            // coalesce neighbours
            let mut merged: Vec<(usize, usize)> = Vec::with_capacity(free.len());
            for (o, s) in free.drain(..) {
                match merged.last_mut() {
                    Some((lo, ls)) if *lo + *ls == o => *ls += s,
                    _ => merged.push((o, s)),
                }
            }
            free = merged;
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
        workspace_size: align(top),
        output_copies,
        naive_size: naive,
        scratch: scratch_at,
    }
}
