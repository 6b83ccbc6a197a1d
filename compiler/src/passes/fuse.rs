//! Weight folding (BatchNormalization, per-channel Mul/Add into Conv/Gemm weights) and kernel
//! epilogue fusion (activation and residual Add into Conv; bias, residual, activation and scalar
//! affine into MatMul).
//!
//! A rule fires only when the intermediate value has exactly one reader (the absorbed node)
//! and is not a graph output. Folded weights are new constants; the originals stay for other
//! readers and DCE drops them otherwise.

use super::{Ctx, Rule};
use kiln_ir::ops::{BinaryOp, ConvAttrs, EpilogueStep, MatMulAttrs};
use kiln_ir::{ConstData, DType, Graph, NodeId, Op, TensorType, ValueId};

/// An f32 constant's elements.
fn f32s(g: &Graph, v: ValueId) -> Option<Vec<f32>> {
    let d = g.const_data(v)?;
    let ty = g.ty(v);
    if ty.dtype != DType::F32 || !ty.layout.is_plain() || ty.quant.is_some() {
        return None;
    }
    Some(
        d.bytes()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

fn add_f32(g: &mut Graph, base: &str, shape: Vec<usize>, v: &[f32]) -> ValueId {
    let name = g.fresh_name(base);
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    g.add_const(name, TensorType::f32(shape), ConstData::from_vec(bytes))
        .expect("sizes match")
}

/// The plain f32 Conv producing `v` (no epilogue yet), if `v` is read only by `user`.
fn conv_feeding(g: &Graph, v: ValueId, user: NodeId, ctx: &Ctx) -> Option<(NodeId, ConvAttrs)> {
    let p = g.producer(v)?;
    let Op::Conv(a) = &g.node(p).op else {
        return None;
    };
    (ctx.only_used_by(v, user) && g.ty(v).dtype == DType::F32).then(|| (p, a.clone()))
}

/// Constant f32 weight and bias (zeros when absent) of conv node `c` with `m` output channels.
fn conv_weights(g: &Graph, c: NodeId) -> Option<(Vec<f32>, Vec<f32>)> {
    let n = g.node(c);
    let w = f32s(g, n.inputs[1])?;
    let m = g.ty(n.inputs[1]).shape[0];
    let b = match n.inputs.get(2) {
        Some(&b) => f32s(g, b)?,
        None => vec![0.0; m],
    };
    Some((w, b))
}

/// Replace conv `c` + its reader `user` by conv with weight `w` and bias `b` (new constants).
fn refold_conv(g: &mut Graph, c: NodeId, user: NodeId, a: ConvAttrs, w: &[f32], b: &[f32]) {
    let n = g.node(c);
    let (x, wv) = (n.inputs[0], n.inputs[1]);
    let wshape = g.ty(wv).shape.clone();
    let m = wshape[0];
    let base = format!("{}_folded", g.value(wv).name.trim_end_matches("_folded"));
    let w_new = add_f32(g, &base, wshape, w);
    let b_name = format!("{}_bias", g.value(w_new).name);
    let b_new = add_f32(g, &b_name, vec![m], b);
    g.fuse_pair(c, user, Op::Conv(a), vec![x, w_new, b_new]);
}

/// BatchNorm parameters folded to `y = x * s + t` per channel.
fn bn_affine(g: &Graph, bn: NodeId) -> Option<(Vec<f64>, Vec<f64>)> {
    let n = g.node(bn);
    let Op::BatchNorm { epsilon } = n.op else {
        return None;
    };
    let p: Option<Vec<Vec<f32>>> = n.inputs[1..].iter().map(|&v| f32s(g, v)).collect();
    let p = p?;
    let (scale, bias, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let s: Vec<f64> = scale
        .iter()
        .zip(var)
        .map(|(&g, &v)| g as f64 / (v as f64 + epsilon as f64).sqrt())
        .collect();
    let t = (0..s.len())
        .map(|i| bias[i] as f64 - mean[i] as f64 * s[i])
        .collect();
    Some((s, t))
}

fn fold_batchnorm_into_conv(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    if !matches!(node.op, Op::BatchNorm { .. }) {
        return false;
    }
    let Some((c, a)) = conv_feeding(g, node.inputs[0], n, ctx) else {
        return false;
    };
    if !a.epilogue.is_empty() {
        return false;
    }
    let (Some((s, t)), Some((mut w, mut b))) = (bn_affine(g, n), conv_weights(g, c)) else {
        return false;
    };
    if s.len() != b.len() {
        return false;
    }
    let per = w.len() / s.len();
    for (m, (&sm, &tm)) in s.iter().zip(&t).enumerate() {
        for x in &mut w[m * per..(m + 1) * per] {
            *x = (*x as f64 * sm) as f32;
        }
        b[m] = (b[m] as f64 * sm + tm) as f32;
    }
    refold_conv(g, c, n, a, &w, &b);
    true
}

fn fold_batchnorm_into_gemm(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    if !matches!(node.op, Op::BatchNorm { .. }) {
        return false;
    }
    let y = node.inputs[0];
    let Some(p) = g.producer(y) else { return false };
    let Op::Gemm(ga) = g.node(p).op.clone() else {
        return false;
    };
    if !ga.epilogue.is_empty() {
        return false; // BN(act(..)) is not act(BN(..))
    }
    if !ctx.only_used_by(y, n) || g.ty(y).dtype != DType::F32 {
        return false;
    }
    let gn = g.node(p);
    let (av, bv) = (gn.inputs[0], gn.inputs[1]);
    let cv = gn.inputs.get(2).copied();
    let ncols = g.ty(y).shape[1];
    let (Some((s, t)), Some(mut wb)) = (bn_affine(g, n), f32s(g, bv)) else {
        return false;
    };
    if s.len() != ncols {
        return false;
    }
    // c must broadcast along rows only: absent, [N] or [1,N]
    let c = match cv {
        None => vec![0.0; ncols],
        Some(cv) => {
            let sh = &g.ty(cv).shape;
            if !(sh[..] == [ncols] || sh[..] == [1, ncols]) {
                return false;
            }
            match f32s(g, cv) {
                Some(c) => c,
                None => return false,
            }
        }
    };
    let bshape = g.ty(bv).shape.clone();
    // scale column j of op(B) by s[j]
    for (i, x) in wb.iter_mut().enumerate() {
        let j = if ga.trans_b {
            i / bshape[1]
        } else {
            i % bshape[1]
        };
        *x = (*x as f64 * s[j]) as f32;
    }
    let cn: Vec<f32> = (0..ncols)
        .map(|j| ((ga.beta as f64 * c[j] as f64) * s[j] + t[j]) as f32)
        .collect();
    let base = g.value(bv).name.clone();
    let b_new = add_f32(g, &format!("{base}_folded"), bshape, &wb);
    let c_new = add_f32(g, &format!("{base}_folded_bias"), vec![ncols], &cn);
    let mut ga = ga;
    ga.beta = 1.0;
    g.fuse_pair(p, n, Op::Gemm(ga), vec![av, b_new, c_new]);
    true
}

/// BatchNormalization (optionally after a per-channel constant Add, the bias PaddlePaddle
/// exports separately) folded into the transposed convolution in front of it, in either form:
/// - an `Op::ConvTranspose` with constant weight `[C, M/groups, k..]`: output channel
///   `o = group * M/groups + j` scales `w[c, j, ..]` for the input channels `c` of that group,
///   and the bias becomes `(b + add) * s + t`;
/// - the GEMM + pixel shuffle the importer makes of a non-overlapping ConvTranspose
///   (`MatMul(W^T, X)` -> Reshape/Transpose.. -> the BN input): the BN channel `o` owns a block of
///   `q` consecutive rows of the constant `W^T`, which are scaled by `s[o]`; the BN node becomes
///   the bias Add (`(add) * s + t`).
///
/// Every value between the product and the BN must have that single reader.
fn fold_batchnorm_into_conv_transpose(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    if !matches!(node.op, Op::BatchNorm { .. }) {
        return false;
    }
    let x = node.inputs[0];
    let shape = g.ty(x).shape.clone();
    if shape.len() < 2 || g.ty(x).dtype != DType::F32 || !ctx.only_used_by(x, n) {
        return false;
    }
    let Some((s, t)) = bn_affine(g, n) else {
        return false;
    };
    let m = shape[1];
    if s.len() != m {
        return false;
    }
    // optional per-channel constant Add: y + c
    let Some(xp) = g.producer(x) else {
        return false;
    };
    let (y, add) = match &g.node(xp).op {
        Op::Binary(BinaryOp::Add) => {
            let an = g.node(xp);
            let found = (0..2).find_map(|k| {
                let (y, c) = (an.inputs[k], an.inputs[1 - k]);
                if g.ty(y).shape != shape || !ctx.only_used_by(y, xp) {
                    return None;
                }
                per_channel(g, c, &shape).map(|c| (y, Some((xp, c))))
            });
            match found {
                Some(f) => f,
                None => (x, None),
            }
        }
        _ => (x, None),
    };
    let Some(yp) = g.producer(y) else {
        return false;
    };
    let shift = |o: usize| add.as_ref().map_or(0.0, |(_, c)| c[o] as f64);
    if let Op::ConvTranspose(a) = &g.node(yp).op {
        let a = a.clone();
        let cn = g.node(yp);
        let (xin, wv) = (cn.inputs[0], cn.inputs[1]);
        let wshape = g.ty(wv).shape.clone();
        let (Some(mut w), bias) = (f32s(g, wv), cn.inputs.get(2).map(|&b| f32s(g, b))) else {
            return false;
        };
        let b = match bias {
            None => vec![0.0; m],
            Some(Some(b)) => b,
            Some(None) => return false,
        };
        let (cin, mg) = (wshape[0], wshape[1]);
        if a.groups == 0 || mg * a.groups != m || !cin.is_multiple_of(a.groups) || b.len() != m {
            return false;
        }
        let per: usize = wshape[2..].iter().product();
        let cg = cin / a.groups;
        for c in 0..cin {
            for j in 0..mg {
                let o = (c / cg) * mg + j;
                let at = (c * mg + j) * per;
                for v in &mut w[at..at + per] {
                    *v = (*v as f64 * s[o]) as f32;
                }
            }
        }
        let bn: Vec<f32> = (0..m)
            .map(|o| ((b[o] as f64 + shift(o)) * s[o] + t[o]) as f32)
            .collect();
        let base = format!("{}_folded", g.value(wv).name.trim_end_matches("_folded"));
        let w_new = add_f32(g, &base, wshape, &w);
        let b_name = format!("{}_bias", g.value(w_new).name);
        let b_new = add_f32(g, &b_name, vec![m], &bn);
        g.fuse_pair(yp, n, Op::ConvTranspose(a), vec![xin, w_new, b_new]);
        if let Some((an, _)) = add {
            g.remove_node(an);
        }
        return true;
    }
    // GEMM + pixel shuffle: walk up through Reshape / channel-keeping Transpose to the MatMul
    let e = shape[1..].iter().product::<usize>() / m; // elements per channel and image
    let mut v = y;
    let mm = loop {
        let ts = &g.ty(v).shape;
        let sp: usize = ts.get(2..).map_or(0, |r| r.iter().product());
        let Some(p) = g.producer(v) else {
            return false;
        };
        if ts.len() < 2 || ts[0] != shape[0] || sp == 0 || !e.is_multiple_of(sp) {
            return false;
        }
        let pn = g.node(p);
        match &pn.op {
            Op::Reshape { .. } => {}
            Op::Transpose { perm } if perm[..2] == [0, 1] => {}
            // (a MatMul with an epilogue is not linear in its weights any more)
            Op::MatMul(a) if ts.len() == 3 && a.epilogue.is_empty() => break p,
            _ => return false,
        }
        v = pn.inputs[0];
        if !ctx.only_used_by(v, p) {
            return false;
        }
    };
    let q = e / g.ty(v).shape[2];
    let (wv, rows) = (g.node(mm).inputs[0], g.ty(v).shape[1]);
    let wshape = g.ty(wv).shape.clone();
    let Some(mut w) = f32s(g, wv) else {
        return false;
    };
    if wshape.len() != 2 || wshape[0] != rows || rows != m * q {
        return false;
    }
    let k = wshape[1];
    for (r, row) in w.chunks_exact_mut(k).enumerate() {
        for v in row {
            *v = (*v as f64 * s[r / q]) as f32;
        }
    }
    let bn: Vec<f32> = (0..m).map(|o| (shift(o) * s[o] + t[o]) as f32).collect();
    let base = format!("{}_folded", g.value(wv).name.trim_end_matches("_folded"));
    let w_new = add_f32(g, &base, wshape, &w);
    let mut bshape = vec![m];
    bshape.resize(shape.len() - 1, 1);
    let b_name = format!("{}_bias", g.value(w_new).name);
    let b_new = add_f32(g, &b_name, bshape, &bn);
    if let Some(node) = g.nodes[mm.index()].as_mut() {
        node.inputs[0] = w_new;
    }
    match add {
        Some((an, _)) => g.fuse_pair(an, n, Op::Binary(BinaryOp::Add), vec![y, b_new]),
        None => {
            if let Some(node) = g.nodes[n.index()].as_mut() {
                node.op = Op::Binary(BinaryOp::Add);
                node.inputs = vec![y, b_new];
            }
        }
    }
    true
}

/// Per-channel values of constant `v` broadcast against a conv output of shape `out`
/// (channel dim 1), if it varies along the channel dim only.
fn per_channel(g: &Graph, v: ValueId, out: &[usize]) -> Option<Vec<f32>> {
    let vals = f32s(g, v)?;
    let sh = &g.ty(v).shape;
    if sh.len() > out.len() {
        return None;
    }
    let off = out.len() - sh.len();
    for (i, &d) in sh.iter().enumerate() {
        if d != 1 && off + i != 1 {
            return None;
        }
    }
    let m = out[1];
    match vals.len() {
        1 => Some(vec![vals[0]; m]),
        n if n == m => Some(vals),
        _ => None,
    }
}

/// The operand orders of a Mul/Add node `n` in which one operand, shaped like the output, is a
/// Conv output read only by `n`: (the op, the other operand, the Conv node, its attributes).
fn conv_mul_add(g: &Graph, n: NodeId, ctx: &Ctx) -> Vec<(BinaryOp, ValueId, NodeId, ConvAttrs)> {
    let node = g.node(n);
    let Op::Binary(op @ (BinaryOp::Mul | BinaryOp::Add)) = node.op else {
        return Vec::new();
    };
    let out_shape = &g.ty(node.outputs[0]).shape;
    (0..2)
        .filter_map(|k| {
            let (y, other) = (node.inputs[k], node.inputs[1 - k]);
            if &g.ty(y).shape != out_shape {
                return None;
            }
            let (c, a) = conv_feeding(g, y, n, ctx)?;
            Some((op, other, c, a))
        })
        .collect()
}

fn fold_mul_add_into_conv(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let out_shape = g.ty(g.node(n).outputs[0]).shape.clone();
    for (op, cst, c, a) in conv_mul_add(g, n, ctx) {
        if !a.epilogue.is_empty() {
            continue;
        }
        let (Some(v), Some((mut w, mut b))) = (per_channel(g, cst, &out_shape), conv_weights(g, c))
        else {
            continue;
        };
        let per = w.len() / v.len();
        for (m, &vm) in v.iter().enumerate() {
            if op == BinaryOp::Mul {
                for x in &mut w[m * per..(m + 1) * per] {
                    *x *= vm;
                }
                b[m] *= vm;
            } else {
                b[m] += vm;
            }
        }
        refold_conv(g, c, n, a, &w, &b);
        return true;
    }
    false
}

/// Fuse node `n` into the product `p` whose output only `n` reads: `step` joins `p`'s
/// epilogue and `extra` is appended to its inputs (an `add` step's operand); the fused node
/// takes `n`'s slot and outputs.
fn append_step(g: &mut Graph, p: NodeId, n: NodeId, step: EpilogueStep, extra: &[ValueId]) {
    let mut op = g.node(p).op.clone();
    op.epilogue_mut()
        .expect("a product with an epilogue")
        .push(step);
    let mut inputs = g.node(p).inputs.clone();
    inputs.extend_from_slice(extra);
    g.fuse_pair(p, n, op, inputs);
}

/// An activation `n` after the product `product(g, input, n, ctx)` finds joins its epilogue.
fn fuse_activation(
    g: &mut Graph,
    n: NodeId,
    ctx: &Ctx,
    product: impl Fn(&Graph, ValueId, NodeId, &Ctx) -> Option<NodeId>,
) -> bool {
    let node = g.node(n);
    let Some(step) = EpilogueStep::from_activation(&node.op) else {
        return false;
    };
    let Some(p) = product(g, node.inputs[0], n, ctx) else {
        return false;
    };
    append_step(g, p, n, step, &[]);
    true
}

fn fuse_conv_activation(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    fuse_activation(g, n, ctx, |g, v, n, ctx| {
        conv_feeding(g, v, n, ctx).map(|(p, _)| p)
    })
}

/// `conv(...) {epilogue=...} * s` / `+ s` with a scalar constant `s` after a Conv that already
/// has an epilogue (an activation: the scale cannot go into the weights) joins the epilogue as
/// an `affine(s,0)` / `affine(1,s)` step — PP-LCNet's learnable affine after HardSwish.
fn fuse_conv_affine(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    for (op, cst, c, a) in conv_mul_add(g, n, ctx) {
        let Some(s) = scalar(g, cst) else { continue };
        if a.epilogue.is_empty() {
            continue; // fold_mul_add_into_conv folds it into the weights instead
        }
        append_step(g, c, n, affine_step(op, s), &[]);
        return true;
    }
    false
}

fn fuse_conv_residual(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let Op::Binary(BinaryOp::Add) = node.op else {
        return false;
    };
    let out = node.outputs[0];
    for k in 0..2 {
        let (y, r) = (node.inputs[k], node.inputs[1 - k]);
        if y == r || g.ty(r).shape != g.ty(out).shape || g.ty(y).shape != g.ty(out).shape {
            continue;
        }
        let Some((c, a)) = conv_feeding(g, y, n, ctx) else {
            continue;
        };
        if a.epilogue.contains(&EpilogueStep::Add) {
            continue;
        }
        // a residual needs a bias input before it
        let w = g.node(c).inputs[1];
        let mut extra = Vec::new();
        if g.node(c).inputs.len() == 2 {
            let m = g.ty(w).shape[0];
            let base = format!("{}_zero_bias", g.value(w).name);
            extra.push(add_f32(g, &base, vec![m], &vec![0.0; m]));
        }
        extra.push(r);
        append_step(g, c, n, EpilogueStep::Add, &extra);
        return true;
    }
    false
}

/// The f32 MatMul producing `v` (plain or with an epilogue already), if `v` is read only by
/// `user` and both matrices have rank >= 2 (the epilogue's operand rule).
fn matmul_feeding(g: &Graph, v: ValueId, user: NodeId, ctx: &Ctx) -> Option<(NodeId, MatMulAttrs)> {
    let p = g.producer(v)?;
    let node = g.node(p);
    let Op::MatMul(a) = &node.op else {
        return None;
    };
    let ok = ctx.only_used_by(v, user)
        && g.ty(v).dtype == DType::F32
        && node.inputs[..2]
            .iter()
            .all(|&i| g.ty(i).shape.len() >= 2 && g.ty(i).dtype == DType::F32);
    ok.then(|| (p, a.clone()))
}

/// `matmul(a, b) + r` with `r` broadcast to the product (a bias `[N]`, a residual) becomes an
/// `add` epilogue step reading `r` (at most two: bias, then residual).
fn fuse_matmul_add(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let Op::Binary(BinaryOp::Add) = node.op else {
        return false;
    };
    let out = node.outputs[0];
    for k in 0..2 {
        let (y, r) = (node.inputs[k], node.inputs[1 - k]);
        if y == r || g.ty(y).shape != g.ty(out).shape || scalar(g, r).is_some() {
            continue; // scalar constants go to fuse_matmul_affine
        }
        let Some((p, a)) = matmul_feeding(g, y, n, ctx) else {
            continue;
        };
        if a.operand_count() >= kiln_ir::ops::MATMUL_EPILOGUE_OPERANDS {
            continue;
        }
        append_step(g, p, n, EpilogueStep::Add, &[r]);
        return true;
    }
    false
}

fn fuse_matmul_activation(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    fuse_activation(g, n, ctx, |g, v, n, ctx| {
        matmul_feeding(g, v, n, ctx).map(|(p, _)| p)
    })
}

/// An activation after an f32 Gemm (a classifier's hidden layers) joins its epilogue.
fn fuse_gemm_activation(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    fuse_activation(g, n, ctx, |g, v, n, ctx| {
        let p = g.producer(v)?;
        let gemm = matches!(g.node(p).op, Op::Gemm(_));
        (gemm && ctx.only_used_by(v, n) && g.ty(v).dtype == DType::F32).then_some(p)
    })
}

/// `matmul(..) * s` / `+ s` with a scalar constant `s` becomes an `affine(s,0)` / `affine(1,s)`
/// epilogue step (attention's score scaling).
fn fuse_matmul_affine(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let Op::Binary(op @ (BinaryOp::Mul | BinaryOp::Add)) = node.op else {
        return false;
    };
    for k in 0..2 {
        let (y, c) = (node.inputs[k], node.inputs[1 - k]);
        let Some(s) = scalar(g, c) else { continue };
        if y == c || g.ty(y).shape != g.ty(node.outputs[0]).shape {
            continue;
        }
        let Some((p, _)) = matmul_feeding(g, y, n, ctx) else {
            continue;
        };
        append_step(g, p, n, affine_step(op, s), &[]);
        return true;
    }
    false
}

/// The epilogue step for `x * s` (`affine(s,0)`) or `x + s` (`affine(1,s)`).
fn affine_step(op: BinaryOp, s: f32) -> EpilogueStep {
    let (alpha, beta) = if op == BinaryOp::Mul {
        (s, 0.0)
    } else {
        (1.0, s)
    };
    EpilogueStep::Act {
        kind: kiln_ir::ops::ActKind::Affine,
        alpha,
        beta,
    }
}

/// The value of a one-element f32 constant.
fn scalar(g: &Graph, v: ValueId) -> Option<f32> {
    let v = f32s(g, v)?;
    (v.len() == 1).then(|| v[0])
}

/// The non-`x` operand of a binary `node` whose other operand is `x`.
fn other(node: &kiln_ir::Node, x: ValueId) -> Option<ValueId> {
    match (node.inputs[0] == x, node.inputs[1] == x) {
        (true, false) => Some(node.inputs[1]),
        (false, true) => Some(node.inputs[0]),
        _ => None,
    }
}

/// HardSwish as exporters write it, `x * clip(x + 3, 0, 6) / 6` (PaddlePaddle, TF) or
/// `x * HardSigmoid(x)` with alpha 1/6, beta 0.5, becomes one HardSwish node (so it can join
/// a conv epilogue). Anchored at the final Div/Mul; every intermediate must have that single
/// reader. The absorbed nodes are removed at once, so a producer's epilogue fusion sees the
/// HardSwish as its only reader in the same pass.
fn recognize_hardswish(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let (x, dead) = match &node.op {
        // Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)
        Op::Binary(BinaryOp::Div) => {
            let (m, six) = (node.inputs[0], node.inputs[1]);
            if scalar(g, six) != Some(6.0) || !ctx.only_used_by(m, n) {
                return false;
            }
            let Some(mp) = g.producer(m) else {
                return false;
            };
            let mul = g.node(mp);
            if mul.op != Op::Binary(BinaryOp::Mul) {
                return false;
            }
            let found = mul.inputs.iter().enumerate().find_map(|(k, &cv)| {
                let x = mul.inputs[1 - k];
                let cp = g.producer(cv)?;
                let Op::Clip { min, max } = g.node(cp).op else {
                    return None;
                };
                if min != 0.0 || max != 6.0 || !ctx.only_used_by(cv, mp) {
                    return None;
                }
                let av = g.node(cp).inputs[0];
                let ap = g.producer(av)?;
                let add = g.node(ap);
                if add.op != Op::Binary(BinaryOp::Add) || !ctx.only_used_by(av, cp) {
                    return None;
                }
                (scalar(g, other(add, x)?) == Some(3.0)).then_some((x, vec![mp, cp, ap]))
            });
            match found {
                Some(f) => f,
                None => return false,
            }
        }
        // Mul(x, HardSigmoid(x) with alpha 1/6, beta 0.5)
        Op::Binary(BinaryOp::Mul) => {
            let found = node.inputs.iter().enumerate().find_map(|(k, &hv)| {
                let x = node.inputs[1 - k];
                let hp = g.producer(hv)?;
                let h = g.node(hp);
                let Op::Act {
                    kind: kiln_ir::ops::ActKind::HardSigmoid,
                    alpha,
                    beta,
                } = h.op
                else {
                    return None;
                };
                ((alpha - 1.0 / 6.0).abs() < 1e-6
                    && beta == 0.5
                    && h.inputs[0] == x
                    && ctx.only_used_by(hv, n))
                .then_some((x, vec![hp]))
            });
            match found {
                Some(f) => f,
                None => return false,
            }
        }
        _ => return false,
    };
    if g.ty(x).dtype != DType::F32 || g.ty(x).shape != g.ty(g.node(n).outputs[0]).shape {
        return false;
    }
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.op = Op::Unary(kiln_ir::ops::UnaryOp::HardSwish);
        node.inputs = vec![x];
    }
    for d in dead {
        g.remove_node(d);
    }
    true
}

/// Swish / SiLU as exporters write it, `x * sigmoid(x)` or `x * sigmoid(x * k)` with a scalar
/// constant `k` (PaddlePaddle), becomes one `swish(k)` activation (so it can join a conv or
/// matmul epilogue). Anchored at the Mul; the Sigmoid (and the scaling Mul) must have that
/// single reader and are removed at once.
fn recognize_swish(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    if node.op != Op::Binary(BinaryOp::Mul) {
        return false;
    }
    let found = node.inputs.iter().enumerate().find_map(|(k, &sv)| {
        let x = node.inputs[1 - k];
        let sp = g.producer(sv)?;
        let sig = g.node(sp);
        if sig.op != Op::Unary(kiln_ir::ops::UnaryOp::Sigmoid) || !ctx.only_used_by(sv, n) {
            return None;
        }
        let t = sig.inputs[0];
        if t == x {
            return Some((x, 1.0, vec![sp]));
        }
        let tp = g.producer(t)?;
        let scale = g.node(tp);
        if scale.op != Op::Binary(BinaryOp::Mul) || !ctx.only_used_by(t, sp) {
            return None;
        }
        let k = scalar(g, other(scale, x)?)?;
        Some((x, k, vec![sp, tp]))
    });
    let Some((x, alpha, dead)) = found else {
        return false;
    };
    if g.ty(x).dtype != DType::F32 || g.ty(x).shape != g.ty(g.node(n).outputs[0]).shape {
        return false;
    }
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.op = Op::Act {
            kind: kiln_ir::ops::ActKind::Swish,
            alpha,
            beta: 0.0,
        };
        node.inputs = vec![x];
    }
    for d in dead {
        g.remove_node(d);
    }
    true
}

/// `ReduceMean(v, axes=[axis..rank], keepdims)`'s input and `axis`, if `n` is one.
fn mean_over_trailing(g: &Graph, n: NodeId) -> Option<(ValueId, usize)> {
    let node = g.node(n);
    let Op::Reduce {
        kind: kiln_ir::ops::ReduceKind::Mean,
        axes,
        keepdims: true,
    } = &node.op
    else {
        return None;
    };
    let x = node.inputs[0];
    let r = g.ty(x).rank();
    let axis = *axes.first()?;
    (axes.iter().copied().eq(axis..r)).then_some((x, axis))
}

/// Layer normalization exported as primitives (ONNX LayerNormalization as the importer lowers
/// it, PyTorch's opset < 17 export): `d = x - ReduceMean(x)`, `var = ReduceMean(d*d)` (or
/// `Pow(d, 2)`), `d * Reciprocal(Sqrt(var + eps))` or `d / Sqrt(var + eps)`, all means over
/// the same trailing axes, becomes one LayerNorm (no scale or bias yet: see
/// `fuse_layer_norm_affine`). Anchored at the final Mul/Div; every intermediate is read only
/// inside the pattern.
fn recognize_layer_norm(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let user_of = |v: ValueId, u: NodeId| ctx.only_used_by(v, u);
    let producer = |v: ValueId| g.producer(v);
    // (d, sd): the centred value and the standard deviation it is divided by
    let found = match node.op {
        Op::Binary(BinaryOp::Div) => {
            let (d, sd) = (node.inputs[0], node.inputs[1]);
            Some((d, sd, None))
        }
        Op::Binary(BinaryOp::Mul) => (0..2).find_map(|k| {
            let (d, inv) = (node.inputs[k], node.inputs[1 - k]);
            let ip = producer(inv)?;
            let rn = g.node(ip);
            (rn.op == Op::Unary(kiln_ir::ops::UnaryOp::Reciprocal) && user_of(inv, n))
                .then(|| (d, rn.inputs[0], Some(ip)))
        }),
        _ => None,
    };
    let Some((d, sd, inv_node)) = found else {
        return false;
    };
    let sd_reader = inv_node.unwrap_or(n);
    let Some(sdp) = producer(sd) else {
        return false;
    };
    let sqrt = g.node(sdp);
    if sqrt.op != Op::Unary(kiln_ir::ops::UnaryOp::Sqrt) || !user_of(sd, sd_reader) {
        return false;
    }
    let ve = sqrt.inputs[0];
    let Some(vep) = producer(ve) else {
        return false;
    };
    let add = g.node(vep);
    if add.op != Op::Binary(BinaryOp::Add) || !user_of(ve, sdp) {
        return false;
    }
    let Some((var, eps)) = (0..2).find_map(|k| {
        let e = scalar(g, add.inputs[1 - k])?;
        Some((add.inputs[k], e))
    }) else {
        return false;
    };
    let Some(varp) = producer(var) else {
        return false;
    };
    let Some((sq, axis)) = mean_over_trailing(g, varp) else {
        return false;
    };
    if !user_of(var, vep) {
        return false;
    }
    let Some(sqp) = producer(sq) else {
        return false;
    };
    let square = g.node(sqp);
    let is_square = match square.op {
        Op::Binary(BinaryOp::Mul) => square.inputs[0] == d && square.inputs[1] == d,
        Op::Binary(BinaryOp::Pow) => {
            square.inputs[0] == d && scalar(g, square.inputs[1]) == Some(2.0)
        }
        _ => false,
    };
    if !is_square || !user_of(sq, varp) {
        return false;
    }
    let Some(dp) = producer(d) else {
        return false;
    };
    let sub = g.node(dp);
    if sub.op != Op::Binary(BinaryOp::Sub)
        || ctx.is_output[d.index()]
        || !ctx.users[d.index()].iter().all(|&u| u == sqp || u == n)
    {
        return false;
    }
    let (x, mean) = (sub.inputs[0], sub.inputs[1]);
    let Some(mp) = producer(mean) else {
        return false;
    };
    if mean_over_trailing(g, mp) != Some((x, axis)) || !user_of(mean, dp) {
        return false;
    }
    let out = g.node(n).outputs[0];
    if g.ty(x).dtype != DType::F32 || g.ty(x).shape != g.ty(out).shape {
        return false;
    }
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.op = Op::LayerNorm { axis, epsilon: eps };
        node.inputs = vec![x];
    }
    let mut dead = vec![sdp, vep, varp, sqp, dp, mp];
    dead.extend(inv_node);
    for k in dead {
        g.remove_node(k);
    }
    true
}

/// `c` as a full row of LayerNorm `ln` (shape `x[axis..]`): `c` itself when it already has one
/// element per row element, a constant broadcast along the row expanded to a new constant,
/// else `None` (it varies across rows, or is not constant and would need expanding).
fn layer_norm_row(g: &mut Graph, ln: NodeId, c: ValueId) -> Option<ValueId> {
    let Op::LayerNorm { axis, .. } = g.node(ln).op else {
        return None;
    };
    let x = g.node(ln).inputs[0];
    let xs = g.ty(x).shape.clone();
    let row = xs[axis..].to_vec();
    let cs = g.ty(c).shape.clone();
    if g.ty(c).dtype != DType::F32
        || kiln_ir::ops::broadcast_shapes(&cs, &xs).ok()? != xs
        || cs.len() > row.len() && cs[..cs.len() - row.len()].iter().any(|&d| d != 1)
    {
        return None;
    }
    if kiln_ir::ops::strip_ones(&cs) == kiln_ir::ops::strip_ones(&row) {
        return Some(c);
    }
    let data = f32s(g, c)?;
    // strides of c over the row's dims (0 where c is broadcast)
    let k = row.len().min(cs.len());
    let tail = &cs[cs.len() - k..];
    let mut st = vec![0usize; row.len()];
    let mut acc = 1;
    for i in (0..k).rev() {
        let d = row.len() - k + i;
        st[d] = if tail[i] == 1 { 0 } else { acc };
        acc *= tail[i];
    }
    let len: usize = row.iter().product();
    let full: Vec<f32> = (0..len)
        .map(|mut j| {
            let mut off = 0;
            for d in (0..row.len()).rev() {
                off += (j % row[d]) * st[d];
                j /= row[d];
            }
            data[off]
        })
        .collect();
    let base = format!("{}_row", g.value(c).name);
    Some(add_f32(g, &base, row, &full))
}

/// `LayerNorm(x) * scale` and then `+ bias` (scale and bias constant along the rows, or full
/// rows) join the LayerNorm as its scale and bias inputs (a bias without a scale gets a scale
/// of ones).
fn fuse_layer_norm_affine(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    let op = match node.op {
        Op::Binary(b @ (BinaryOp::Mul | BinaryOp::Add)) => b,
        _ => return false,
    };
    let ins = node.inputs.clone();
    for k in 0..2 {
        let (y, c) = (ins[k], ins[1 - k]);
        let node = g.node(n);
        if y == c || g.ty(y).shape != g.ty(node.outputs[0]).shape || !ctx.only_used_by(y, n) {
            continue;
        }
        let Some(ln) = g.producer(y) else { continue };
        if !matches!(g.node(ln).op, Op::LayerNorm { .. }) {
            continue;
        }
        let have = g.node(ln).inputs.len();
        if (op == BinaryOp::Mul && have != 1) || (op == BinaryOp::Add && have == 3) {
            continue;
        }
        let Some(row) = layer_norm_row(g, ln, c) else {
            continue;
        };
        let mut inputs = g.node(ln).inputs.clone();
        if op == BinaryOp::Add && have == 1 {
            let x = g.ty(inputs[0]).shape.clone();
            let Op::LayerNorm { axis, .. } = g.node(ln).op else {
                unreachable!()
            };
            let shape = x[axis..].to_vec();
            let ones = vec![1.0; shape.iter().product()];
            let base = format!("{}_ones", g.node(ln).name);
            inputs.push(add_f32(g, &base, shape, &ones));
        }
        inputs.push(row);
        let op = g.node(ln).op.clone();
        g.fuse_pair(ln, n, op, inputs);
        return true;
    }
    false
}

/// A one-element f32 constant within float rounding of `want`.
fn approx(g: &Graph, v: ValueId, want: f64) -> bool {
    scalar(g, v).is_some_and(|c| (c as f64 - want).abs() <= 1e-6 * want.abs())
}

/// The producer of `v` if `v` is read only by `user` (so a rewrite may absorb it).
fn absorbable(g: &Graph, ctx: &Ctx, v: ValueId, user: NodeId) -> Option<NodeId> {
    let p = g.producer(v)?;
    ctx.only_used_by(v, user).then_some(p)
}

/// `x / k` written as `Div(x, k)` or `Mul(x, 1/k)` (either operand order): x.
fn divided_by(g: &Graph, node: &kiln_ir::Node, k: f64) -> Option<ValueId> {
    match node.op {
        Op::Binary(BinaryOp::Div) if approx(g, node.inputs[1], k) => Some(node.inputs[0]),
        Op::Binary(BinaryOp::Mul) => {
            (0..2).find_map(|i| approx(g, node.inputs[1 - i], 1.0 / k).then_some(node.inputs[i]))
        }
        _ => None,
    }
}

/// The product `a * b` of `node` as `(other, constant-matched)`: the operand that is not the
/// one-element constant `≈ k`.
fn times_const(g: &Graph, node: &kiln_ir::Node, k: f64) -> Option<ValueId> {
    if node.op != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    (0..2).find_map(|i| approx(g, node.inputs[1 - i], k).then_some(node.inputs[i]))
}

/// `x³` as `Pow(x, 3)`, `x * (x * x)` or `(x * x) * x` computed into `v` (read by `user`):
/// x and the nodes.
fn cube(g: &Graph, ctx: &Ctx, v: ValueId, user: NodeId) -> Option<(ValueId, Vec<NodeId>)> {
    let p = absorbable(g, ctx, v, user)?;
    let n = g.node(p);
    match n.op {
        Op::Binary(BinaryOp::Pow) if approx(g, n.inputs[1], 3.0) => Some((n.inputs[0], vec![p])),
        Op::Binary(BinaryOp::Mul) => (0..2).find_map(|i| {
            let (x, sq) = (n.inputs[i], n.inputs[1 - i]);
            let sp = absorbable(g, ctx, sq, p)?;
            let s = g.node(sp);
            (s.op == Op::Binary(BinaryOp::Mul) && s.inputs == [x, x]).then(|| (x, vec![p, sp]))
        }),
        _ => None,
    }
}

/// The bracket of GELU computed into `a` (read only by `user`): `1 + erf(x / √2)` (erf form)
/// or `1 + tanh(√(2/π) * (x + 0.044715 * x³))` (tanh form), either operand order everywhere.
/// Returns x, the GELU flavour and the nodes computing the bracket.
fn gelu_bracket(
    g: &Graph,
    ctx: &Ctx,
    a: ValueId,
    user: NodeId,
) -> Option<(ValueId, kiln_ir::ops::UnaryOp, Vec<NodeId>)> {
    use kiln_ir::ops::UnaryOp;
    let ap = absorbable(g, ctx, a, user)?;
    let an = g.node(ap);
    if an.op != Op::Binary(BinaryOp::Add) {
        return None;
    }
    (0..2).find_map(|i| {
        let (f, one) = (an.inputs[i], an.inputs[1 - i]);
        if !approx(g, one, 1.0) {
            return None;
        }
        let fp = absorbable(g, ctx, f, ap)?;
        let fnode = g.node(fp);
        let arg = fnode.inputs[0];
        let argp = absorbable(g, ctx, arg, fp)?;
        match fnode.op {
            Op::Unary(UnaryOp::Erf) => {
                let x = divided_by(g, g.node(argp), std::f64::consts::SQRT_2)?;
                Some((x, UnaryOp::Gelu, vec![ap, fp, argp]))
            }
            Op::Unary(UnaryOp::Tanh) => {
                // √(2/π) * (x + 0.044715 * x³)
                let k1 = (2.0 / std::f64::consts::PI).sqrt();
                let u = times_const(g, g.node(argp), k1)?;
                let up = absorbable(g, ctx, u, argp)?;
                let un = g.node(up);
                if un.op != Op::Binary(BinaryOp::Add) {
                    return None;
                }
                (0..2).find_map(|j| {
                    let (x, v) = (un.inputs[j], un.inputs[1 - j]);
                    let vp = absorbable(g, ctx, v, up)?;
                    let c = times_const(g, g.node(vp), 0.044715)?;
                    let (cx, cube_nodes) = cube(g, ctx, c, vp)?;
                    (cx == x).then(|| {
                        let mut nodes = vec![ap, fp, argp, up, vp];
                        nodes.extend(cube_nodes);
                        (x, UnaryOp::GeluTanh, nodes)
                    })
                })
            }
            _ => None,
        }
    })
}

/// GELU written out as exporters do, `x * 0.5 * bracket` with the products in any grouping
/// (`(x * 0.5) * b`, `(x * b) * 0.5`, `x * (b * 0.5)`, ...) and the bracket of
/// [`gelu_bracket`], becomes one `gelu` (erf) or `gelu_tanh` node: the same function, so
/// results move by float rounding only. Anchored at the outermost Mul; every intermediate
/// must have its single reader inside the pattern.
fn recognize_gelu(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    if node.op != Op::Binary(BinaryOp::Mul) {
        return false;
    }
    // the three factors, each with the node that reads it, and the absorbed inner Mul
    let mut leaves: Vec<(ValueId, NodeId)> = Vec::new();
    let mut inner = Vec::new();
    for &v in &node.inputs {
        match absorbable(g, ctx, v, n) {
            Some(p) if g.node(p).op == Op::Binary(BinaryOp::Mul) && inner.is_empty() => {
                inner.push(p);
                leaves.extend(g.node(p).inputs.iter().map(|&l| (l, p)));
            }
            _ => leaves.push((v, n)),
        }
    }
    if leaves.len() != 3 {
        return false;
    }
    let Some(h) = leaves.iter().position(|&(v, _)| approx(g, v, 0.5)) else {
        return false;
    };
    leaves.remove(h);
    let found = (0..2).find_map(|i| {
        let (b, reader) = leaves[i];
        let (x, u, nodes) = gelu_bracket(g, ctx, b, reader)?;
        (leaves[1 - i].0 == x).then_some((x, u, nodes))
    });
    let Some((x, u, nodes)) = found else {
        return false;
    };
    let out = g.node(n).outputs[0];
    if g.ty(x).dtype != DType::F32 || g.ty(x).shape != g.ty(out).shape {
        return false;
    }
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.op = Op::Unary(u);
        node.inputs = vec![x];
    }
    for d in inner.into_iter().chain(nodes) {
        g.remove_node(d);
    }
    true
}

/// `Reduce { kind, axes: [axis], keepdims }` of `node`, if it is one over exactly one axis.
fn reduce_one(node: &kiln_ir::Node, kind: kiln_ir::ops::ReduceKind) -> Option<usize> {
    match &node.op {
        Op::Reduce {
            kind: k,
            axes,
            keepdims: true,
        } if *k == kind && axes.len() == 1 => Some(axes[0]),
        _ => None,
    }
}

/// Softmax written out, `exp(x) / ReduceSum(exp(x), axis, keepdims)`, optionally with the
/// stabilising `x - ReduceMax(x, axis, keepdims)` first, becomes one `softmax` over that axis.
/// With the subtraction the two compute the same function; without it they agree wherever the
/// original is finite (`exp` neither overflows nor underflows the whole sum), and `softmax`
/// (which subtracts the maximum) stays finite where the original gives inf/NaN.
fn recognize_softmax(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    use kiln_ir::ops::{ReduceKind, SoftmaxKind, UnaryOp};
    let node = g.node(n);
    if node.op != Op::Binary(BinaryOp::Div) {
        return false;
    }
    let (e, s) = (node.inputs[0], node.inputs[1]);
    let (Some(ep), Some(sp)) = (g.producer(e), absorbable(g, ctx, s, n)) else {
        return false;
    };
    let sum = g.node(sp);
    let Some(axis) = reduce_one(sum, ReduceKind::Sum) else {
        return false;
    };
    let mut readers = ctx.users[e.index()].clone();
    readers.sort();
    let mut want = vec![sp, n];
    want.sort();
    if sum.inputs[0] != e
        || g.node(ep).op != Op::Unary(UnaryOp::Exp)
        || ctx.is_output[e.index()]
        || readers != want
    {
        return false;
    }
    let xin = g.node(ep).inputs[0];
    let mut dead = vec![ep, sp];
    let mut x = xin;
    if let Some(bp) = absorbable(g, ctx, xin, ep)
        && g.node(bp).op == Op::Binary(BinaryOp::Sub)
    {
        let (a, m) = (g.node(bp).inputs[0], g.node(bp).inputs[1]);
        if let Some(mp) = absorbable(g, ctx, m, bp)
            && reduce_one(g.node(mp), ReduceKind::Max) == Some(axis)
            && g.node(mp).inputs[0] == a
        {
            x = a;
            dead.extend([bp, mp]);
        }
    }
    let out = g.node(n).outputs[0];
    if g.ty(x).dtype != DType::F32 || g.ty(x).shape != g.ty(out).shape {
        return false;
    }
    if let Some(node) = g.nodes[n.index()].as_mut() {
        node.op = Op::Softmax {
            axis,
            kind: SoftmaxKind::Softmax,
        };
        node.inputs = vec![x];
    }
    for d in dead {
        g.remove_node(d);
    }
    true
}

/// An f32 elementwise node as chain steps: (input carrying the output's shape, steps, the
/// binary steps' operands). `x`, when given, must be that input (the value the chain carries).
fn chain_steps(
    g: &Graph,
    n: NodeId,
    x: Option<ValueId>,
) -> Option<(ValueId, Vec<EpilogueStep>, Vec<ValueId>)> {
    let node = g.node(n);
    let out = g.ty(*node.outputs.first()?);
    if out.dtype != kiln_ir::DType::F32
        || node.outputs.len() != 1
        || node
            .inputs
            .iter()
            .any(|&v| g.ty(v).dtype != kiln_ir::DType::F32)
    {
        return None;
    }
    let full = |v: ValueId| g.ty(v).shape == out.shape;
    let main = |cands: &[ValueId]| -> Option<ValueId> {
        match x {
            Some(x) => cands.contains(&x).then_some(x),
            None => cands.iter().copied().find(|&v| full(v)),
        }
    };
    match &node.op {
        Op::Chain { steps } => {
            let m = main(&node.inputs[..1])?;
            Some((m, steps.clone(), node.inputs[1..].to_vec()))
        }
        Op::Unary(u) => Some((main(&node.inputs)?, vec![EpilogueStep::Unary(*u)], vec![])),
        Op::Clip { .. } | Op::Act { .. } => Some((
            main(&node.inputs)?,
            vec![EpilogueStep::from_activation(&node.op)?],
            vec![],
        )),
        Op::Binary(b @ (BinaryOp::Add | BinaryOp::Mul)) => {
            let m = main(&node.inputs)?;
            if !full(m) {
                return None;
            }
            // the other operand (for x op x, the same value again)
            let r = if node.inputs[0] == m {
                node.inputs[1]
            } else {
                node.inputs[0]
            };
            let step = if *b == BinaryOp::Add {
                EpilogueStep::Add
            } else {
                EpilogueStep::Mul
            };
            Some((m, vec![step], vec![r]))
        }
        _ => None,
    }
}

/// Two f32 elementwise nodes in a row (Unary, Clip, Act, Add, Mul, or a chain already), the
/// first read only by the second and both of the output's shape, become one `chain` node: one
/// loop instead of two, no intermediate tensor. Runs after `fuse`, so activations still go
/// into product epilogues and the recognisers see the primitive patterns first.
fn fuse_elementwise_chain(g: &mut Graph, n: NodeId, ctx: &Ctx) -> bool {
    let node = g.node(n);
    for &x in &node.inputs {
        let Some(p) = absorbable(g, ctx, x, n) else {
            continue;
        };
        let Some((base, mut steps, mut operands)) = chain_steps(g, p, None) else {
            continue;
        };
        let Some((_, more, extra)) = chain_steps(g, n, Some(x)) else {
            continue;
        };
        // the second node's operand may not be the value the chain no longer materializes
        if extra.contains(&x) || g.ty(base).shape != g.ty(x).shape {
            continue;
        }
        steps.extend(more);
        operands.extend(extra);
        let mut inputs = vec![base];
        inputs.extend(operands);
        g.fuse_pair(p, n, Op::Chain { steps }, inputs);
        return true;
    }
    false
}

pub static RULES: [Rule; 18] = [
    Rule {
        name: "recognize_hardswish",
        pass: "fuse",
        about: "x*clip(x+3,0,6)/6 and x*HardSigmoid(x) recognised as one HardSwish",
        apply: recognize_hardswish,
    },
    Rule {
        name: "recognize_swish",
        pass: "fuse",
        about: "x*sigmoid(x) and x*sigmoid(k*x) (scalar k) recognised as one Swish(k)",
        apply: recognize_swish,
    },
    Rule {
        name: "recognize_layer_norm",
        pass: "fuse",
        about: "(x - mean) / sqrt(mean((x - mean)^2) + eps) over trailing axes recognised as one LayerNorm",
        apply: recognize_layer_norm,
    },
    Rule {
        name: "fuse_layer_norm_affine",
        pass: "fuse",
        about: "Mul by a scale and Add of a bias (per row element) after a LayerNorm fused into it",
        apply: fuse_layer_norm_affine,
    },
    Rule {
        name: "recognize_gelu",
        pass: "fuse",
        about: "x*0.5*(1+erf(x/sqrt(2))) and x*0.5*(1+tanh(sqrt(2/pi)*(x+0.044715x^3))), any grouping, recognised as one Gelu / GeluTanh",
        apply: recognize_gelu,
    },
    Rule {
        name: "recognize_softmax",
        pass: "fuse",
        about: "exp(x - max(x)) / sum(exp(..)) (with or without the max) over one axis recognised as one Softmax",
        apply: recognize_softmax,
    },
    Rule {
        name: "fold_batchnorm_into_conv",
        pass: "fold",
        about: "BatchNormalization after a Conv folded into its weights and bias",
        apply: fold_batchnorm_into_conv,
    },
    Rule {
        name: "fold_batchnorm_into_gemm",
        pass: "fold",
        about: "BatchNormalization after a Gemm folded into its B and C",
        apply: fold_batchnorm_into_gemm,
    },
    Rule {
        name: "fold_batchnorm_into_conv_transpose",
        pass: "fold",
        about: "BatchNormalization (after an optional per-channel bias Add) after a ConvTranspose, or its GEMM + pixel-shuffle lowering, folded into its weights and bias",
        apply: fold_batchnorm_into_conv_transpose,
    },
    Rule {
        name: "fold_mul_add_into_conv",
        pass: "fold",
        about: "per-channel constant Mul/Add after a Conv folded into its weights and bias",
        apply: fold_mul_add_into_conv,
    },
    Rule {
        name: "fuse_conv_residual",
        pass: "fuse",
        about: "residual Add after a Conv fused into its epilogue",
        apply: fuse_conv_residual,
    },
    Rule {
        name: "fuse_conv_activation",
        pass: "fuse",
        about: "activation (Relu, Clip, Sigmoid, HardSwish, Gelu, LeakyRelu, ...) after a Conv fused into its epilogue",
        apply: fuse_conv_activation,
    },
    Rule {
        name: "fuse_conv_affine",
        pass: "fuse",
        about: "Mul/Add by a scalar constant after a Conv's activation fused into its epilogue as affine(scale,shift)",
        apply: fuse_conv_affine,
    },
    Rule {
        name: "fuse_matmul_add",
        pass: "fuse",
        about: "bias or residual Add (any operand broadcast to the product, at most two) after a MatMul fused into its epilogue",
        apply: fuse_matmul_add,
    },
    Rule {
        name: "fuse_matmul_activation",
        pass: "fuse",
        about: "activation (Relu, Gelu, Sigmoid, Clip, ...) after a MatMul fused into its epilogue",
        apply: fuse_matmul_activation,
    },
    Rule {
        name: "fuse_gemm_activation",
        pass: "fuse",
        about: "activation (Relu, Sigmoid, Gelu, Clip, ...) after a Gemm fused into its epilogue",
        apply: fuse_gemm_activation,
    },
    Rule {
        name: "fuse_elementwise_chain",
        pass: "chain",
        about: "adjacent f32 elementwise ops (Unary, Clip, activations, Add, Mul) fused into one chain loop",
        apply: fuse_elementwise_chain,
    },
    Rule {
        name: "fuse_matmul_affine",
        pass: "fuse",
        about: "Mul/Add by a scalar constant after a MatMul fused into its epilogue as affine(scale,shift)",
        apply: fuse_matmul_affine,
    },
];
