//! Run-time control flow: ONNX `Loop`, `Scan` and `If` (with a condition only known at run
//! time) become IR `loop` / `if` nodes whose sub-graphs are imported on their own.
//!
//! A sub-graph reads outer values by name (ONNX's lexical scoping). Those it reads are found
//! before it is imported: an outer constant is copied into the sub-graph (so folding and shape
//! arithmetic work inside it), any other outer value becomes an extra input of the sub-graph and
//! of its node (the IR's captured values).

use super::*;
use crate::frontend::InputFixes;
use kiln_ir::ops::{Branches, LoopAttrs};

/// An outer value a sub-graph reads: copied in (a constant) or passed in (a captured operand).
enum Cap {
    Const(String, TensorType, ConstData),
    Operand(String, TensorType, ValueId),
}

/// The names `g` reads that it does not define (its nested sub-graphs' included), in order of
/// first use, appended to `out`.
fn free_names(g: &GraphProto, out: &mut Vec<String>) {
    let mut defined: HashSet<String> = g
        .input
        .iter()
        .map(|i| i.name().to_string())
        .chain(g.initializer.iter().map(|t| t.name().to_string()))
        .collect();
    let push = |n: String, defined: &HashSet<String>, out: &mut Vec<String>| {
        if !n.is_empty() && !defined.contains(&n) && !out.contains(&n) {
            out.push(n);
        }
    };
    for n in &g.node {
        let mut reads: Vec<String> = n.input.clone();
        for a in &n.attribute {
            for sg in a.g.iter().chain(&a.graphs) {
                free_names(sg, &mut reads);
            }
        }
        for r in reads {
            push(r, &defined, out);
        }
        defined.extend(n.output.iter().cloned());
    }
    for o in &g.output {
        push(o.name().to_string(), &defined, out);
    }
}

/// The names read inside `g` (node inputs, nested sub-graphs' free names) and its outputs.
fn used_names(g: &GraphProto) -> HashSet<String> {
    let mut used: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
    for n in &g.node {
        used.extend(n.input.iter().cloned());
        for a in &n.attribute {
            for sg in a.g.iter().chain(&a.graphs) {
                let mut free = Vec::new();
                free_names(sg, &mut free);
                used.extend(free);
            }
        }
    }
    used
}

/// Binds the names a body reads before its nodes run, given the ids of the formals and of
/// the `pre` values inside it.
type Glue<'g, 'a> = dyn FnMut(&mut Imp<'a>, &[ValueId], &[ValueId]) -> R<()> + 'g;

/// How the IR sub-graph starts and ends around the ONNX body.
struct BodySpec<'s> {
    /// The IR sub-graph's leading inputs: (ONNX name bound to it, type).
    formals: Vec<(Option<String>, TensorType)>,
    /// Outer values passed after the formals (before the captured ones).
    pre: &'s [ValueId],
    /// Leading outputs, as indices into `formals`, before the ONNX body's outputs.
    lead_out: Vec<usize>,
}

impl<'a> Imp<'a> {
    /// Graph attribute `k` of the node.
    fn graph_attr<'c>(c: &'c Ctx, k: &str) -> R<&'c GraphProto> {
        c.attr(k)
            .and_then(|a| a.g.as_ref())
            .ok_or_else(|| format!("missing graph attribute '{k}'"))
    }

    /// The outer values the sub-graphs `bodies` read, resolved in the current scope.
    fn captures(&self, bodies: &[&GraphProto]) -> R<Vec<Cap>> {
        let mut names = Vec::new();
        for g in bodies {
            free_names(g, &mut names);
        }
        names
            .into_iter()
            .map(|n| {
                let v = *self.b.lookup(&n).ok_or_else(|| {
                    format!("a sub-graph reads '{n}', which no node, initializer or input defines")
                })?;
                let ty = self.ty(v).clone();
                Ok(match self.b.g.const_data(v) {
                    Some(d) => Cap::Const(n, ty, d.clone()),
                    None => Cap::Operand(n, ty, v),
                })
            })
            .collect()
    }

    /// Import sub-graph `body` (attribute `which` of node `c`) as an IR graph of its own:
    /// inputs `spec.formals`, then `spec.pre`, then the captured operands of `caps`; `glue`
    /// runs before the body's nodes with the ids of the formals and of `pre` (to bind names
    /// the body reads, e.g. the slices of scan inputs); outputs `spec.lead_out`, then the
    /// body's. Returns the graph.
    fn import_body(
        &mut self,
        c: &Ctx,
        which: &str,
        body: &GraphProto,
        spec: &BodySpec,
        caps: &[Cap],
        glue: &mut Glue<'_, 'a>,
    ) -> R<Graph> {
        if !body.sparse_initializer.is_empty() {
            return Err(format!("{which}: sparse initializers are not supported"));
        }
        let pre_tys: Vec<TensorType> = spec.pre.iter().map(|v| self.ty(*v).clone()).collect();
        let file = self.b.file;
        let outer_b = std::mem::replace(
            &mut self.b,
            GraphBuilder::new(file, &format!("{}/{which}", c.name), InputFixes::default()),
        );
        let outer_cache = std::mem::take(&mut self.cache);
        let outer_used = std::mem::replace(&mut self.used, used_names(body));
        let res = (|| -> R<Graph> {
            let mut formal_ids = Vec::new();
            for (k, (name, ty)) in spec.formals.iter().enumerate() {
                let n = self
                    .b
                    .fresh(name.as_deref().unwrap_or(&format!("{which}_in{k}")));
                let v = self.b.g.add_input(n, ty.clone());
                if let Some(name) = name {
                    self.b.bind(name, v)?;
                }
                formal_ids.push(v);
            }
            let mut pre_ids = Vec::new();
            for (k, ty) in pre_tys.iter().enumerate() {
                let n = self.b.fresh(&format!("{which}_pre{k}"));
                pre_ids.push(self.b.g.add_input(n, ty.clone()));
            }
            for cap in caps {
                match cap {
                    Cap::Const(n, ty, d) => {
                        if self.b.lookup(n).is_none() {
                            let v = self.b.add_const(n, ty.clone(), d.clone())?;
                            self.b.bind(n, v)?;
                        }
                    }
                    Cap::Operand(n, ty, _) => {
                        let nm = self.b.fresh(n);
                        let v = self.b.g.add_input(nm, ty.clone());
                        self.b.bind(n, v)?;
                    }
                }
            }
            glue(self, &formal_ids, &pre_ids)?;
            for t in &body.initializer {
                let mut t = t.clone();
                let (ty, data) = decode_tensor(&mut t, self.base_dir, &mut self.ext)
                    .map_err(|e| format!("{which} initializer '{}': {e}", t.name()))?;
                let v = self.b.add_const(t.name(), ty, data)?;
                self.b.bind(t.name(), v)?;
            }
            for n in &body.node {
                for o in &n.output {
                    if !o.is_empty() && !self.b.is_bound(o) {
                        self.b.reserve(o);
                    }
                }
            }
            for (i, n) in body.node.iter().enumerate() {
                let mut n = n.clone();
                for o in &n.output {
                    if !o.is_empty() && !self.b.is_bound(o) {
                        self.b.release(o);
                    }
                }
                let label = node_label(n.name(), n.op_type(), i);
                n.name = Some(format!("{}/{which}/{label}", c.name));
                self.import_node(&mut n, i).map_err(|e| match e {
                    FrontendError::Node { node, op, msg, .. } => format!("{node} ({op}): {msg}"),
                    e => e.to_string(),
                })?;
            }
            let mut outs: Vec<ValueId> = spec.lead_out.iter().map(|&k| formal_ids[k]).collect();
            for o in &body.output {
                outs.push(
                    self.b
                        .lookup(o.name())
                        .copied()
                        .ok_or_else(|| format!("{which} output '{}' is not produced", o.name()))?,
                );
            }
            self.b.g.outputs = outs;
            let g = std::mem::replace(&mut self.b.g, Graph::new(""));
            kiln_ir::verify::verify(&g).map_err(|e| format!("{which}: {e}"))?;
            Ok(g)
        })();
        self.b = outer_b;
        self.cache = outer_cache;
        self.used = outer_used;
        res
    }

    /// The captured operands' outer values (the node's inputs after its own).
    fn cap_operands(caps: &[Cap]) -> Vec<ValueId> {
        caps.iter()
            .filter_map(|c| match c {
                Cap::Operand(_, _, v) => Some(*v),
                Cap::Const(..) => None,
            })
            .collect()
    }

    /// `If` with a condition known only at run time: both branches compiled, one run.
    pub(super) fn if_runtime(&mut self, c: &Ctx, cond: ValueId) -> R<()> {
        let ct = self.ty(cond);
        if ct.numel() != 1 {
            return Err(format!("the condition must have one element, is {ct}"));
        }
        let cond = if ct.dtype == DType::Bool {
            cond
        } else {
            self.op1(c, "cond", Op::Cast { to: DType::Bool }, vec![cond])?
        };
        let then_g = Self::graph_attr(c, "then_branch")?;
        let else_g = Self::graph_attr(c, "else_branch")?;
        for (g, which) in [(then_g, "then_branch"), (else_g, "else_branch")] {
            if g.output.len() != c.n.output.len() {
                return Err(format!(
                    "{which} has {} outputs, the node {}",
                    g.output.len(),
                    c.n.output.len()
                ));
            }
        }
        let caps = self.captures(&[then_g, else_g])?;
        let spec = BodySpec {
            formals: Vec::new(),
            pre: &[],
            lead_out: Vec::new(),
        };
        let hint = |e: String| {
            format!(
                "{e} (the condition ('{}') is only known at run time, so both branches are compiled; --freeze the inputs it depends on to compile only the taken one)",
                c.n.input[0]
            )
        };
        let mut none = |_: &mut Self, _: &[ValueId], _: &[ValueId]| Ok(());
        let then_branch = self
            .import_body(c, "then_branch", then_g, &spec, &caps, &mut none)
            .map_err(hint)?;
        let else_branch = self
            .import_body(c, "else_branch", else_g, &spec, &caps, &mut none)
            .map_err(hint)?;
        let mut ins = vec![cond];
        ins.extend(Self::cap_operands(&caps));
        let op = Op::If(Box::new(Branches {
            then_branch,
            else_branch,
        }));
        self.emit(c, op, ins)
    }

    /// ONNX `Loop`: an IR `loop`. The scan outputs need a bound on the trip count: `M` must be
    /// a constant when the body has any (rows past the last iteration are zero).
    pub(super) fn loop_op(&mut self, c: &Ctx) -> R<()> {
        let body = Self::graph_attr(c, "body")?;
        let n = c.n.input.len().saturating_sub(2);
        if body.input.len() != n + 2 {
            return Err(format!(
                "the body takes {} inputs, the loop passes {}",
                body.input.len(),
                n + 2
            ));
        }
        let k = body.output.len().checked_sub(1 + n).ok_or_else(|| {
            format!(
                "the body yields {} outputs, needs cond and {n} carried",
                body.output.len()
            )
        })?;
        let one = TensorType::new(DType::I64, vec![]);
        let m = match self.inp(c, 0)? {
            Some(m) => {
                let t = self.ty(m);
                if t.numel() != 1 || !matches!(t.dtype, DType::I64 | DType::I32) {
                    return Err(format!("the trip count must be one integer, is {t}"));
                }
                let m = self
                    .b
                    .reshape(&c.name, m, vec![], &format!("{}/m", c.name))?;
                if self.ty(m).dtype == DType::I64 {
                    m
                } else {
                    self.op1(c, "m64", Op::Cast { to: DType::I64 }, vec![m])?
                }
            }
            None => self.add_ct(&format!("{}/m", c.name), CT::i64s(vec![], vec![i64::MAX]))?,
        };
        let trip = self.cval(m).map(|ct| ct.as_i64()[0]);
        let cond = match self.inp(c, 1)? {
            Some(v) => {
                let t = self.ty(v);
                if t.numel() != 1 {
                    return Err(format!("the condition must have one element, is {t}"));
                }
                let v = self
                    .b
                    .reshape(&c.name, v, vec![], &format!("{}/cond", c.name))?;
                if self.ty(v).dtype == DType::Bool {
                    v
                } else {
                    self.op1(c, "cond_b", Op::Cast { to: DType::Bool }, vec![v])?
                }
            }
            None => {
                let t = TensorType::new(DType::Bool, vec![]);
                self.b
                    .add_const(&format!("{}/cond", c.name), t, ConstData::from_vec(vec![1]))?
            }
        };
        let carried: Vec<ValueId> = (0..n).map(|i| self.req(c, 2 + i)).collect::<R<_>>()?;
        let max_trip = match (trip, self.max_trip) {
            (Some(t), _) => t.max(0) as usize,
            (None, Some(b)) => b,
            (None, None) if k == 0 => i64::MAX as usize,
            (None, None) => {
                return Err(format!(
                    "input 0 ('{}') must be a constant (after folding): the loop's {k} scan output(s) need a bound on its trip count; fix it with --freeze NAME=FILE.npy, or bound it with --max-trip N",
                    c.n.input[0]
                ));
            }
        };
        let mut formals = vec![
            (Some(body.input[0].name().to_string()), one),
            (
                Some(body.input[1].name().to_string()),
                TensorType::new(DType::Bool, vec![]),
            ),
        ];
        for (i, v) in carried.iter().enumerate() {
            let t = self.ty(*v).clone().with_layout(kiln_ir::Layout::Plain);
            formals.push((Some(body.input[2 + i].name().to_string()), t));
        }
        let caps = self.captures(&[body])?;
        let spec = BodySpec {
            formals,
            pre: &[],
            lead_out: Vec::new(),
        };
        let g = self.import_body(c, "body", body, &spec, &caps, &mut |_, _, _| Ok(()))?;
        if k > 0 {
            let bytes = g.outputs[1 + n..].iter().try_fold(0usize, |a, v| {
                g.ty(*v).size_bytes().checked_mul(max_trip)?.checked_add(a)
            });
            if bytes.is_none_or(|b| b > crate::frontend::MAX_TENSOR_BYTES) {
                return Err(format!(
                    "the scan outputs of {max_trip} iterations are too large"
                ));
            }
        }
        let mut ins = vec![m, cond];
        ins.extend(carried);
        ins.extend(Self::cap_operands(&caps));
        let op = Op::Loop(Box::new(LoopAttrs {
            body: g,
            n_carried: n,
            max_trip,
        }));
        self.emit(c, op, ins)
    }

    /// ONNX `Scan` (opset 9+; opset 8's batch axis of size 1): an IR `loop` over the scan
    /// axis whose body gathers row `i` (or `T-1-i` in reverse) of each scan input; reverse or
    /// non-leading scan outputs are reordered after the loop.
    pub(super) fn scan_op(&mut self, c: &Ctx) -> R<()> {
        let body = Self::graph_attr(c, "body")?;
        let m = usize::try_from(c.i("num_scan_inputs", -1))
            .map_err(|_| "attribute num_scan_inputs is required".to_string())?;
        let v8 = self.opset < 9;
        let mut ins: Vec<ValueId> = Vec::new();
        for i in (v8 as usize)..c.n.input.len() {
            ins.push(self.req(c, i)?);
        }
        if v8 && self.inp(c, 0)?.is_some() {
            return Err("sequence_lens is not supported".into());
        }
        let n = ins
            .len()
            .checked_sub(m)
            .ok_or_else(|| format!("{} inputs for {m} scan inputs", ins.len()))?;
        if v8 {
            // batch axis 0 of size 1: dropped here, put back on the outputs
            for v in ins.iter_mut() {
                let t = self.ty(*v).clone();
                if t.rank() == 0 || t.shape[0] != 1 {
                    return Err(format!("only batch size 1 is supported (opset 8), got {t}"));
                }
                *v = self.b.reshape(
                    &c.name,
                    *v,
                    t.shape[1..].to_vec(),
                    &format!("{}/unbatch", c.name),
                )?;
            }
        }
        let (states, scans) = ins.split_at(n);
        let dirs = |k: &str, len: usize| -> R<Vec<i64>> {
            let d = c.ints(k).unwrap_or_else(|| vec![0; len]);
            if d.len() != len {
                return Err(format!("{k} has {} entries, {len} expected", d.len()));
            }
            Ok(d)
        };
        if v8 && c.attr("directions").is_some() {
            return Err("attribute directions is not supported".into());
        }
        let in_dirs = dirs("scan_input_directions", m)?;
        let in_axes = dirs("scan_input_axes", m)?;
        let mut axes = Vec::new();
        let mut trip = None;
        for (j, (&v, &a)) in scans.iter().zip(&in_axes).enumerate() {
            let t = self.ty(v);
            let a = norm_axis(a, t.rank())?;
            let len = t.shape[a];
            if trip.is_some_and(|l| l != len) {
                return Err(format!(
                    "scan input {j} has {len} rows along axis {a}, the others {}",
                    trip.unwrap()
                ));
            }
            trip = Some(len);
            axes.push(a);
        }
        let trip = trip.ok_or("a scan needs at least one scan input")?;
        let k = body.output.len().checked_sub(n).ok_or_else(|| {
            format!(
                "the body yields {} outputs for {n} states",
                body.output.len()
            )
        })?;
        if body.input.len() != n + m {
            return Err(format!(
                "the body takes {} inputs, the scan passes {}",
                body.input.len(),
                n + m
            ));
        }
        let mut formals = vec![
            (None, TensorType::new(DType::I64, vec![])),
            (None, TensorType::new(DType::Bool, vec![])),
        ];
        for (i, v) in states.iter().enumerate() {
            let t = self.ty(*v).clone().with_layout(kiln_ir::Layout::Plain);
            formals.push((Some(body.input[i].name().to_string()), t));
        }
        let caps = self.captures(&[body])?;
        let spec = BodySpec {
            formals,
            pre: scans,
            lead_out: vec![1],
        };
        let names: Vec<String> = body.input[n..]
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let g = self.import_body(c, "body", body, &spec, &caps, &mut |s, formals, pre| {
            let iter = formals[0];
            for (j, &full) in pre.iter().enumerate() {
                let idx = if in_dirs[j] != 0 {
                    let last = s.add_ct(
                        &format!("{}/last", c.name),
                        CT::i64s(vec![], vec![trip as i64 - 1]),
                    )?;
                    s.op1(c, "rev", Op::Binary(BinaryOp::Sub), vec![last, iter])?
                } else {
                    iter
                };
                let row = s.op1(c, &names[j], Op::Gather { axis: axes[j] }, vec![full, idx])?;
                s.b.bind(&names[j], row)?;
            }
            Ok(())
        })?;
        let mut lins = vec![
            self.add_ct(
                &format!("{}/m", c.name),
                CT::i64s(vec![], vec![trip as i64]),
            )?,
            self.b.add_const(
                &format!("{}/cond", c.name),
                TensorType::new(DType::Bool, vec![]),
                ConstData::from_vec(vec![1]),
            )?,
        ];
        lins.extend(states);
        lins.extend(scans);
        lins.extend(Self::cap_operands(&caps));
        let op = Op::Loop(Box::new(LoopAttrs {
            body: g,
            n_carried: n,
            max_trip: trip,
        }));
        let n_out = n + k;
        let names: Vec<String> = (0..n_out).map(|i| format!("{}/loop{i}", c.name)).collect();
        let outs = self.node(c, op, lins, &names)?;
        let out_dirs = dirs("scan_output_directions", k)?;
        let out_axes = dirs("scan_output_axes", k)?;
        for (i, &v) in outs.iter().enumerate() {
            let mut v = v;
            if i >= n {
                let j = i - n;
                if out_dirs[j] != 0 {
                    let idx: Vec<i64> = (0..trip as i64).rev().collect();
                    let idx = self.add_ct(&format!("{}/rev", c.name), CT::i64s(vec![trip], idx))?;
                    v = self.op1(c, "reverse", Op::Gather { axis: 0 }, vec![v, idx])?;
                }
                let r = self.ty(v).rank();
                let a = norm_axis(out_axes[j], r)?;
                if a != 0 {
                    let mut perm: Vec<usize> = (1..r).collect();
                    perm.insert(a, 0);
                    v = self.op1(c, "axis", Op::Transpose { perm }, vec![v])?;
                }
            }
            if v8 {
                let mut shape = vec![1];
                shape.extend(&self.ty(v).shape);
                v = self
                    .b
                    .reshape(&c.name, v, shape, &format!("{}/batch", c.name))?;
            }
            self.set_out(c, i, v)?;
        }
        Ok(())
    }
}

impl Imp<'_> {
    /// `v` as `base + offset` (`offset` a compile-time integer): through reshapes of one
    /// element, integer casts, and additions or subtractions of one-element integer constants.
    fn affine_of(&mut self, mut v: ValueId) -> (ValueId, i64) {
        let mut off = 0i64;
        for _ in 0..16 {
            let ValueDef::Node(nid, _) = self.b.g.value(v).def else {
                break;
            };
            let node = self.b.g.node(nid);
            let (op, ins) = (node.op.clone(), node.inputs.clone());
            let int = |s: &mut Self, k: ValueId| -> Option<i64> {
                let t = s.ty(k);
                if t.numel() != 1 || !matches!(t.dtype, DType::I64 | DType::I32) {
                    return None;
                }
                s.cval(k).map(|c| c.as_i64()[0])
            };
            match op {
                Op::Reshape { .. } if self.ty(v).numel() == 1 => v = ins[0],
                Op::Cast {
                    to: DType::I64 | DType::I32,
                } if matches!(self.ty(ins[0]).dtype, DType::I64 | DType::I32) => v = ins[0],
                Op::Binary(BinaryOp::Add) => match (int(self, ins[0]), int(self, ins[1])) {
                    (_, Some(k)) => (v, off) = (ins[0], off.saturating_add(k)),
                    (Some(k), _) => (v, off) = (ins[1], off.saturating_add(k)),
                    _ => break,
                },
                Op::Binary(BinaryOp::Sub) => match int(self, ins[1]) {
                    Some(k) => (v, off) = (ins[0], off.saturating_sub(k)),
                    None => break,
                },
                _ => break,
            }
        }
        (v, off)
    }

    /// ONNX `Slice` along one axis whose start is only known at run time but whose length is
    /// not (`ends = starts + k`, as a loop body's `x[i:i+k]`): a `gather` of rows
    /// `start + 0..k`. Returns false when the slice is not of that form (constant bounds, ...).
    /// Like any gather, the rows must be in range (from the end when negative).
    pub(super) fn runtime_slice(&mut self, c: &Ctx, x: ValueId) -> R<bool> {
        let (Some(st), Some(en)) = (self.inp(c, 1)?, self.inp(c, 2)?) else {
            return Ok(false);
        };
        if self.cval(st).is_some() && self.cval(en).is_some() {
            return Ok(false);
        }
        let (ts, te) = (self.ty(st).clone(), self.ty(en).clone());
        if ts.numel() != 1 || te.numel() != 1 || !matches!(ts.dtype, DType::I64 | DType::I32) {
            return Ok(false);
        }
        let axis = match self.inp(c, 3)? {
            Some(a) => match self.cval(a) {
                Some(a) if a.numel() == 1 => a.as_i64()[0],
                _ => return Ok(false),
            },
            None => 0,
        };
        if let Some(s) = self.inp(c, 4)?
            && self.cval(s).is_none_or(|s| s.as_i64() != [1])
        {
            return Ok(false);
        }
        let ((bs, os), (be, oe)) = (self.affine_of(st), self.affine_of(en));
        let k = oe.saturating_sub(os);
        let r = self.ty(x).rank();
        let axis = norm_axis(axis, r)?;
        if bs != be || k <= 0 || k as usize > self.ty(x).shape[axis] {
            return Ok(false);
        }
        let start = self
            .b
            .reshape(&c.name, st, vec![1], &format!("{}/start", c.name))?;
        let start = if self.ty(start).dtype == DType::I64 {
            start
        } else {
            self.op1(c, "start64", Op::Cast { to: DType::I64 }, vec![start])?
        };
        let steps = self.add_ct(
            &format!("{}/rows", c.name),
            CT::i64s(vec![k as usize], (0..k).collect()),
        )?;
        let idx = self.op1(c, "idx", Op::Binary(BinaryOp::Add), vec![start, steps])?;
        self.emit(c, Op::Gather { axis }, vec![x, idx])?;
        Ok(true)
    }
}
