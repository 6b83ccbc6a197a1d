//! ONNX `Attention` (opset 23/24) and `RotaryEmbedding` (opset 23), lowered to primitive IR ops
//! (MatMul, Transpose, Reshape, Binary, Tanh, Softmax, Compare, Where, Concat, Split, Cast).
//!
//! The semantics follow the ops' ONNX function bodies (the `_expanded` node tests):
//! - Attention: 3-D inputs `[B, S, H*D]` are split into heads (`q_num_heads`/`kv_num_heads`);
//!   `past_key`/`past_value` are concatenated along the sequence axis (and returned as the
//!   `present_*` outputs); Q and Kᵀ are each scaled by `sqrt(scale)` (default scale
//!   `1/sqrt(head_size)`) before the matmul; softcap is `c * tanh(x / c)`; the bias is the float
//!   mask (added), a bool mask (`true` attends, else `-inf`), a causal mask (`-inf` where
//!   `col > row + past_len`), and a padding mask from `nonpad_kv_seqlen`; a mask shorter than the
//!   total sequence is padded with `-inf`/`false`. Grouped-query attention repeats each KV head
//!   `q_heads / kv_heads` times (interleaved); here it is done without copies by viewing Q as
//!   `[B, Hkv, G, S, D]` and letting MatMul broadcast K and V over the group axis.
//! - RotaryEmbedding: the cos/sin rows for `position_ids` are gathered at run time (Gather), or
//!   folded when both are constants.

use kiln_ir::ops::{BinaryOp, CmpOp, SoftmaxKind, UnaryOp};
use kiln_ir::{DType, Op, ValueId};

use super::{CT, ce};
use super::{Ctx, GraphProto, Imp, R, decode_tensor, dtype_from_onnx, to_usizes};

/// A float constant of `dtype` with `shape`.
fn fconst(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> CT {
    CT {
        dtype,
        shape,
        v: ce::Vals::F(v),
    }
}

impl Imp<'_> {
    /// One IR node with a single output named `name`.
    fn step1(&mut self, c: &Ctx, op: Op, ins: Vec<ValueId>, name: &str) -> R<ValueId> {
        Ok(self.node(c, op, ins, &[name.to_string()])?[0])
    }

    fn attn_const(&mut self, c: &Ctx, what: &str, ct: CT) -> R<ValueId> {
        self.add_ct(&format!("{}/{what}", c.name), ct)
    }

    /// `[B, S, H*D]` -> `[B, H, S, D]`.
    fn split_heads(&mut self, c: &Ctx, x: ValueId, heads: usize, what: &str) -> R<ValueId> {
        let sh = self.ty(x).shape.clone();
        if heads == 0 || !sh[2].is_multiple_of(heads) {
            return Err(format!(
                "{what} hidden size {} is not divisible by {heads} heads",
                sh[2]
            ));
        }
        let r = self.reshape(
            c,
            x,
            vec![sh[0], sh[1], heads, sh[2] / heads],
            &format!("{}/{what}_heads", c.name),
        )?;
        let perm = vec![0, 2, 1, 3];
        self.step1(
            c,
            Op::Transpose { perm },
            vec![r],
            &format!("{}/{what}_bhsd", c.name),
        )
    }

    pub(super) fn attention(&mut self, c: &Ctx) -> R<()> {
        let q = self.req(c, 0)?;
        let k = self.req(c, 1)?;
        let v = self.req(c, 2)?;
        let mask = self.inp(c, 3)?;
        let past_k = self.inp(c, 4)?;
        let past_v = self.inp(c, 5)?;
        let nonpad = self.inp(c, 6)?;
        let dt = self.ty(q).dtype;
        if !dt.is_float() || self.ty(k).dtype != dt || self.ty(v).dtype != dt {
            return Err(format!(
                "Q, K and V must have the same float type, got {}, {} and {}",
                self.ty(q),
                self.ty(k),
                self.ty(v)
            ));
        }
        if past_k.is_some() != past_v.is_some() {
            return Err("past_key and past_value must be given together".into());
        }
        let rank = self.ty(q).rank();
        if self.ty(k).rank() != rank || self.ty(v).rank() != rank || !(rank == 3 || rank == 4) {
            return Err(format!(
                "Q, K and V must all be 3-D or all 4-D, got {}, {} and {}",
                self.ty(q),
                self.ty(k),
                self.ty(v)
            ));
        }
        let (q4, k4, v4) = if rank == 3 {
            let heads = |name: &str| -> R<usize> {
                let h = c
                    .attr(name)
                    .map(|a| a.i())
                    .ok_or_else(|| format!("3-D inputs need the {name} attribute"))?;
                usize::try_from(h)
                    .ok()
                    .filter(|&h| h > 0)
                    .ok_or_else(|| format!("{name}={h} must be positive"))
            };
            let (hq, hkv) = (heads("q_num_heads")?, heads("kv_num_heads")?);
            (
                self.split_heads(c, q, hq, "q")?,
                self.split_heads(c, k, hkv, "k")?,
                self.split_heads(c, v, hkv, "v")?,
            )
        } else {
            (q, k, v)
        };
        let (qs, ks, vs) = (
            self.ty(q4).shape.clone(),
            self.ty(k4).shape.clone(),
            self.ty(v4).shape.clone(),
        );
        let (b, hq, s, d) = (qs[0], qs[1], qs[2], qs[3]);
        let hkv = ks[1];
        if ks[0] != b || vs[0] != b || vs[1] != hkv || ks[3] != d || vs[2] != ks[2] {
            return Err(format!(
                "inconsistent shapes: Q {qs:?}, K {ks:?}, V {vs:?} (as [B, heads, seq, head_size])"
            ));
        }
        if hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(format!(
                "q_num_heads {hq} is not a multiple of kv_num_heads {hkv}"
            ));
        }
        let dv = vs[3];

        // KV cache.
        let (pk, pv, past_len) = match (past_k, past_v) {
            (Some(pk), Some(pv)) => {
                let plen = self.ty(pk).shape.get(2).copied().unwrap_or(0);
                let pkn = format!("{}/present_key", c.name);
                let pk = self.step1(c, Op::Concat { axis: 2 }, vec![pk, k4], &pkn)?;
                let pvn = format!("{}/present_value", c.name);
                let pv = self.step1(c, Op::Concat { axis: 2 }, vec![pv, v4], &pvn)?;
                (pk, pv, plen)
            }
            _ => (k4, v4, 0),
        };
        self.set_out(c, 1, pk)?;
        self.set_out(c, 2, pv)?;
        let t = self.ty(pk).shape[2];

        // Scaled QKᵀ; grouped-query attention broadcasts K/V over the group axis.
        let scale = match c.attr("scale") {
            Some(a) => a.f() as f64,
            None => 1.0 / (d as f64).sqrt(),
        };
        let sf = self.attn_const(c, "scale_sqrt", fconst(dt, vec![], vec![scale.sqrt()]))?;
        let name = |w: &str| format!("{}/{w}", c.name);
        let q_sc = self.binary(c, BinaryOp::Mul, q4, sf, &name("q_scaled"))?;
        let kt = self.step1(
            c,
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            vec![pk],
            &name("k_t"),
        )?;
        let kt_sc = self.binary(c, BinaryOp::Mul, kt, sf, &name("k_t_scaled"))?;
        let g = hq / hkv;
        let qk = if g == 1 {
            self.step1(c, Op::matmul(), vec![q_sc, kt_sc], &name("qk"))?
        } else {
            let q5 = self.reshape(c, q_sc, vec![b, hkv, g, s, d], &name("q_groups"))?;
            let k5 = self.reshape(c, kt_sc, vec![b, hkv, 1, d, t], &name("k_t_groups"))?;
            let qk5 = self.step1(c, Op::matmul(), vec![q5, k5], &name("qk_groups"))?;
            self.reshape(c, qk5, vec![b, hq, s, t], &name("qk"))?
        };

        // Softcap.
        let softcap = c.f("softcap", 0.0);
        if softcap < 0.0 || softcap.is_nan() {
            return Err(format!("Attention: softcap={softcap} not supported"));
        }
        let capped = if softcap > 0.0 {
            let cap = self.attn_const(c, "softcap", fconst(dt, vec![], vec![softcap as f64]))?;
            let dv_ = self.binary(c, BinaryOp::Div, qk, cap, &name("softcap_div"))?;
            let th = self.step1(
                c,
                Op::Unary(UnaryOp::Tanh),
                vec![dv_],
                &name("softcap_tanh"),
            )?;
            self.binary(c, BinaryOp::Mul, th, cap, &name("qk_softcapped"))?
        } else {
            qk
        };

        // Bias: attn_mask, causal mask, padding mask.
        let mut bias: Option<ValueId> = None;
        let neg_inf = f64::NEG_INFINITY;
        if let Some(m) = mask {
            let mt = self.ty(m).clone();
            if mt.rank() == 0 || mt.rank() > 4 {
                return Err(format!("attn_mask {mt} must have rank 1..=4"));
            }
            if mt.dtype != DType::Bool && mt.dtype != dt {
                return Err(format!(
                    "attn_mask {mt} must be bool or the type of Q ({dt})"
                ));
            }
            let last = *mt.shape.last().unwrap();
            if last > t {
                return Err(format!(
                    "attn_mask {mt} is longer than the total sequence length {t}"
                ));
            }
            let mut m = m;
            if last < t {
                let mut ps = mt.shape.clone();
                *ps.last_mut().unwrap() = t - last;
                let n: usize = ps.iter().product();
                let pad = if mt.dtype == DType::Bool {
                    CT {
                        dtype: DType::Bool,
                        shape: ps,
                        v: ce::Vals::I(vec![0; n]),
                    }
                } else {
                    fconst(dt, ps, vec![neg_inf; n])
                };
                let pad = self.attn_const(c, "mask_pad", pad)?;
                let axis = mt.rank() - 1;
                m = self.step1(c, Op::Concat { axis }, vec![m, pad], &name("mask_padded"))?;
            }
            if mt.dtype == DType::Bool {
                let zero = self.attn_const(c, "zero", fconst(dt, vec![], vec![0.0]))?;
                let ninf = self.attn_const(c, "neg_inf", fconst(dt, vec![], vec![neg_inf]))?;
                m = self.step1(c, Op::Where, vec![m, zero, ninf], &name("mask_bias"))?;
            }
            bias = Some(m);
        }
        if c.i("is_causal", 0) != 0 {
            let mut v = Vec::with_capacity(s * t);
            for i in 0..s {
                for j in 0..t {
                    v.push(if j > i + past_len { neg_inf } else { 0.0 });
                }
            }
            let cm = self.attn_const(c, "causal_mask", fconst(dt, vec![s, t], v))?;
            bias = Some(match bias {
                Some(bv) => self.binary(c, BinaryOp::Add, bv, cm, &name("bias_causal"))?,
                None => cm,
            });
        }
        if let Some(np) = nonpad {
            let nt = self.ty(np).clone();
            if nt.shape != [b] || nt.dtype.is_float() || nt.dtype == DType::Bool {
                return Err(format!("nonpad_kv_seqlen {nt} must be an integer [{b}]"));
            }
            if past_k.is_some() {
                return Err("nonpad_kv_seqlen cannot be used with past_key/past_value".into());
            }
            let iota = CT::i64s(vec![t], (0..t as i64).collect()).cast(nt.dtype);
            let iota = self.attn_const(c, "kv_positions", iota)?;
            let np2 = self.reshape(c, np, vec![b, 1], &name("nonpad_col"))?;
            let valid = self.step1(
                c,
                Op::Compare(CmpOp::Less),
                vec![iota, np2],
                &name("kv_valid"),
            )?;
            let valid = self.reshape(c, valid, vec![b, 1, 1, t], &name("kv_valid_4d"))?;
            let zero = self.attn_const(c, "zero", fconst(dt, vec![], vec![0.0]))?;
            let ninf = self.attn_const(c, "neg_inf", fconst(dt, vec![], vec![neg_inf]))?;
            let pm = self.step1(c, Op::Where, vec![valid, zero, ninf], &name("pad_bias"))?;
            bias = Some(match bias {
                Some(bv) => self.binary(c, BinaryOp::Add, bv, pm, &name("bias_padded"))?,
                None => pm,
            });
        }
        let scores = match bias {
            Some(bv) => self.binary(c, BinaryOp::Add, capped, bv, &name("qk_biased"))?,
            None => capped,
        };

        // Softmax (optionally in another precision).
        let sm_dt = match c.attr("softmax_precision") {
            Some(a) => {
                let p = dtype_from_onnx(a.i() as i32).map_err(|e| {
                    format!("Attention: softmax_precision={} not supported ({e})", a.i())
                })?;
                if !p.is_float() {
                    return Err(format!(
                        "Attention: softmax_precision={} not supported (not a float type)",
                        a.i()
                    ));
                }
                p
            }
            None => dt,
        };
        let probs = if sm_dt == dt {
            self.step1(
                c,
                Op::Softmax {
                    axis: 3,
                    kind: SoftmaxKind::Softmax,
                },
                vec![scores],
                &name("probs"),
            )?
        } else {
            let x = self.step1(c, Op::Cast { to: sm_dt }, vec![scores], &name("softmax_in"))?;
            let p = self.step1(
                c,
                Op::Softmax {
                    axis: 3,
                    kind: SoftmaxKind::Softmax,
                },
                vec![x],
                &name("softmax"),
            )?;
            self.step1(c, Op::Cast { to: dt }, vec![p], &name("probs"))?
        };

        let mode = c.i("qk_matmul_output_mode", 0);
        let qk_out = match mode {
            0 => qk,
            1 => capped,
            2 => scores,
            3 => probs,
            m => {
                return Err(format!(
                    "Attention: qk_matmul_output_mode={m} not supported"
                ));
            }
        };
        self.set_out(c, 3, qk_out)?;

        // probs · V, back to the input layout.
        let y4 = if g == 1 {
            self.step1(c, Op::matmul(), vec![probs, pv], &name("y_bhsd"))?
        } else {
            let p5 = self.reshape(c, probs, vec![b, hkv, g, s, t], &name("probs_groups"))?;
            let v5 = self.reshape(c, pv, vec![b, hkv, 1, t, dv], &name("v_groups"))?;
            let y5 = self.step1(c, Op::matmul(), vec![p5, v5], &name("y_groups"))?;
            self.reshape(c, y5, vec![b, hq, s, dv], &name("y_bhsd"))?
        };
        let y_name = self.out_name(c, 0);
        let y = if rank == 3 {
            let perm = vec![0, 2, 1, 3];
            let yt = self.step1(c, Op::Transpose { perm }, vec![y4], &name("y_bshd"))?;
            self.reshape(c, yt, vec![b, s, hq * dv], &y_name)?
        } else {
            y4
        };
        self.set_out(c, 0, y)?;
        Ok(())
    }

    /// RotaryEmbedding (opset 23).
    pub(super) fn rotary_embedding(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let cos_c = self.req(c, 1)?;
        let sin_c = self.req(c, 2)?;
        let pos = self.inp(c, 3)?;
        let xt = self.ty(x).clone();
        let dt = xt.dtype;
        if !dt.is_float() || self.ty(cos_c).dtype != dt || self.ty(sin_c).dtype != dt {
            return Err(format!(
                "input, cos_cache and sin_cache must have the same float type, got {}, {} and {}",
                xt,
                self.ty(cos_c),
                self.ty(sin_c)
            ));
        }
        let name = |w: &str| format!("{}/{w}", c.name);
        // Work on [B, H, S, D] (4-D input) or [B, S, N, D] (3-D input); the per-token cos/sin
        // rows [B, S, R/2] broadcast as [B, 1, S, R/2] or [B, S, 1, R/2].
        let (x4, bsd) = match xt.rank() {
            4 => (x, false),
            3 => {
                let n = c.i("num_heads", 0);
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n > 0 && xt.shape[2].is_multiple_of(n))
                    .ok_or_else(|| {
                        format!(
                            "3-D input {xt} needs num_heads > 0 dividing the hidden size (got {n})"
                        )
                    })?;
                let (b, s, h) = (xt.shape[0], xt.shape[1], xt.shape[2]);
                (
                    self.reshape(c, x, vec![b, s, n, h / n], &name("x_heads"))?,
                    true,
                )
            }
            _ => return Err(format!("input {xt} must be 3-D or 4-D")),
        };
        let xs = self.ty(x4).shape.clone();
        let (b, s, d) = if bsd {
            (xs[0], xs[1], xs[3])
        } else {
            (xs[0], xs[2], xs[3])
        };
        let rd = match c.i("rotary_embedding_dim", 0) {
            0 => d,
            r => to_usizes(&[r], "rotary_embedding_dim")?[0],
        };
        if rd > d || !rd.is_multiple_of(2) || rd == 0 {
            return Err(format!(
                "rotary_embedding_dim {rd} must be even and at most the head size {d}"
            ));
        }
        let half = rd / 2;

        // cos/sin rows per token: [B, S, R/2].
        let (cos, sin) = match pos {
            None => {
                for cc in [cos_c, sin_c] {
                    if self.ty(cc).shape != [b, s, half] {
                        return Err(format!(
                            "without position_ids the caches must be [{b}, {s}, {half}], got {}",
                            self.ty(cc)
                        ));
                    }
                }
                (cos_c, sin_c)
            }
            Some(p) => {
                let pt = self.ty(p).clone();
                if pt.shape != [b, s] || pt.dtype.is_float() || pt.dtype == DType::Bool {
                    return Err(format!("position_ids {pt} must be an integer [{b}, {s}]"));
                }
                let max_pos = self.ty(cos_c).shape.first().copied().unwrap_or(0);
                for cc in [cos_c, sin_c] {
                    if self.ty(cc).shape != [max_pos, half] {
                        return Err(format!(
                            "with position_ids the caches must be [max_position, {half}], got {}",
                            self.ty(cc)
                        ));
                    }
                }
                let (pc, cc, sc) = (self.cval(p), self.cval(cos_c), self.cval(sin_c));
                if let (Some(pc), Some(cc), Some(sc)) = (pc.clone(), cc, sc) {
                    let cos = ce::gather(&cc, &pc, 0)?;
                    let sin = ce::gather(&sc, &pc, 0)?;
                    (
                        self.attn_const(c, "cos", cos)?,
                        self.attn_const(c, "sin", sin)?,
                    )
                } else {
                    // runtime rows: Gather(cache, position_ids) -> [B, S, R/2]
                    (
                        self.step1(c, Op::Gather { axis: 0 }, vec![cos_c, p], &name("cos"))?,
                        self.step1(c, Op::Gather { axis: 0 }, vec![sin_c, p], &name("sin"))?,
                    )
                }
            }
        };
        let interleaved = c.i("interleaved", 0) != 0;
        let mut cs_shape = if bsd {
            vec![b, s, 1, half]
        } else {
            vec![b, 1, s, half]
        };
        if interleaved {
            cs_shape.push(1);
        }
        let cos = self.reshape(c, cos, cs_shape.clone(), &name("cos_b"))?;
        let sin = self.reshape(c, sin, cs_shape, &name("sin_b"))?;

        let (x_rot, x_pass) = if rd < d {
            let outs = self.node(
                c,
                Op::Split {
                    axis: 3,
                    sizes: vec![rd, d - rd],
                },
                vec![x4],
                &[name("x_rot"), name("x_pass")],
            )?;
            (outs[0], Some(outs[1]))
        } else {
            (x4, None)
        };
        let rot_shape = {
            let mut sh = xs.clone();
            sh[3] = rd;
            sh
        };
        let (x1, x2, axis) = if interleaved {
            let mut sh = xs.clone();
            sh[3] = half;
            sh.push(2);
            let xr = self.reshape(c, x_rot, sh, &name("x_pairs"))?;
            let o = self.node(
                c,
                Op::Split {
                    axis: 4,
                    sizes: vec![1, 1],
                },
                vec![xr],
                &[name("x1"), name("x2")],
            )?;
            (o[0], o[1], 4)
        } else {
            let o = self.node(
                c,
                Op::Split {
                    axis: 3,
                    sizes: vec![half, half],
                },
                vec![x_rot],
                &[name("x1"), name("x2")],
            )?;
            (o[0], o[1], 3)
        };
        let c1 = self.binary(c, BinaryOp::Mul, cos, x1, &name("cos_x1"))?;
        let s2 = self.binary(c, BinaryOp::Mul, sin, x2, &name("sin_x2"))?;
        let real = self.binary(c, BinaryOp::Sub, c1, s2, &name("real"))?;
        let s1 = self.binary(c, BinaryOp::Mul, sin, x1, &name("sin_x1"))?;
        let c2 = self.binary(c, BinaryOp::Mul, cos, x2, &name("cos_x2"))?;
        let imag = self.binary(c, BinaryOp::Add, s1, c2, &name("imag"))?;
        let rot = self.step1(c, Op::Concat { axis }, vec![real, imag], &name("rotated"))?;
        let rot = self.reshape(c, rot, rot_shape, &name("rotated_flat"))?;
        let out_name = self.out_name(c, 0);
        let y = match x_pass {
            Some(p) => {
                let n = if bsd {
                    name("y_heads")
                } else {
                    out_name.clone()
                };
                self.step1(c, Op::Concat { axis: 3 }, vec![rot, p], &n)?
            }
            None => rot,
        };
        let y = if bsd {
            self.reshape(c, y, xt.shape.clone(), &out_name)?
        } else {
            y
        };
        self.set_out(c, 0, y)?;
        Ok(())
    }

    /// LinearAttention (opset 27): the recurrence over the (static) sequence is unrolled, one
    /// group of IR ops per time step, with the state kept in f32 as in the function body:
    /// `S *= exp(g_t)` (gated), `v_t = beta_t * (v_t - Sᵀk_t)` (delta), `S += k_t ⊗ v_t`,
    /// `o_t = scale * q_t S` (KV heads shared by `q_num_heads / kv_num_heads` query heads).
    pub(super) fn linear_attention(&mut self, c: &Ctx) -> R<()> {
        let q = self.req(c, 0)?;
        let k = self.req(c, 1)?;
        let v = self.req(c, 2)?;
        let past = self.inp(c, 3)?;
        let decay = self.inp(c, 4)?;
        let beta = self.inp(c, 5)?;
        let rule = c.s("update_rule", "gated_delta");
        let (gating, delta) = match rule.as_str() {
            "linear" => (false, false),
            "gated" => (true, false),
            "delta" => (false, true),
            "gated_delta" => (true, true),
            r => return Err(format!("LinearAttention: update_rule={r} not supported")),
        };
        if gating != decay.is_some() {
            return Err(format!(
                "update_rule '{rule}' {} the decay input",
                if gating { "requires" } else { "forbids" }
            ));
        }
        if delta != beta.is_some() {
            return Err(format!(
                "update_rule '{rule}' {} the beta input",
                if delta { "requires" } else { "forbids" }
            ));
        }
        let heads = |name: &str| -> R<usize> {
            let h = c
                .attr(name)
                .map(|a| a.i())
                .ok_or_else(|| format!("missing attribute {name}"))?;
            usize::try_from(h)
                .ok()
                .filter(|&h| h > 0)
                .ok_or_else(|| format!("{name}={h} must be positive"))
        };
        let (hq, hkv) = (heads("q_num_heads")?, heads("kv_num_heads")?);
        if !hq.is_multiple_of(hkv) {
            return Err(format!(
                "q_num_heads {hq} is not a multiple of kv_num_heads {hkv}"
            ));
        }
        let g = hq / hkv;
        let dt = self.ty(q).dtype;
        for x in [q, k, v] {
            let t = self.ty(x);
            if t.rank() != 3 || t.dtype != dt || !dt.is_float() {
                return Err(format!(
                    "query, key and value must be 3-D tensors of one float type, got {t}"
                ));
            }
        }
        let name = |w: &str| format!("{}/{w}", c.name);
        // Compute in f32.
        let f32_ = |s: &mut Self, x: ValueId, w: &str| -> R<ValueId> {
            if s.ty(x).dtype == DType::F32 {
                Ok(x)
            } else {
                s.step1(c, Op::Cast { to: DType::F32 }, vec![x], &name(w))
            }
        };
        let (q, k, v) = (
            f32_(self, q, "q_f32")?,
            f32_(self, k, "k_f32")?,
            f32_(self, v, "v_f32")?,
        );
        let (b, t) = (self.ty(q).shape[0], self.ty(q).shape[1]);
        for x in [k, v] {
            if self.ty(x).shape[..2] != [b, t] {
                return Err(format!(
                    "key/value {} do not match query [{b}, {t}, ..]",
                    self.ty(x)
                ));
            }
        }
        if t == 0 {
            return Err("LinearAttention: an empty sequence is not supported".into());
        }
        let q4 = self.split_heads(c, q, hq, "q")?;
        let k4 = self.split_heads(c, k, hkv, "k")?;
        let v4 = self.split_heads(c, v, hkv, "v")?;
        let dk = self.ty(q4).shape[3];
        let dv = self.ty(v4).shape[3];
        if self.ty(k4).shape[3] != dk {
            return Err(format!(
                "key head size {} differs from query head size {dk}",
                self.ty(k4).shape[3]
            ));
        }
        // [B, T, H] -> [B, H, T, 1] for per-head gates.
        let per_head = |s: &mut Self, x: ValueId, h: usize, w: &str| -> R<ValueId> {
            let r = s.reshape(c, x, vec![b, t, h, 1], &name(&format!("{w}_heads")))?;
            s.step1(
                c,
                Op::Transpose {
                    perm: vec![0, 2, 1, 3],
                },
                vec![r],
                &name(&format!("{w}_bhsd")),
            )
        };
        let decay4 = match decay {
            Some(dc) => {
                let dc = f32_(self, dc, "decay_f32")?;
                let st = self.ty(dc).clone();
                if st.rank() != 3 || st.shape[..2] != [b, t] {
                    return Err(format!("decay {st} must be [{b}, {t}, ..]"));
                }
                let d4 = if st.shape[2] == hkv {
                    per_head(self, dc, hkv, "decay")?
                } else if st.shape[2] == hkv * dk {
                    self.split_heads(c, dc, hkv, "decay")?
                } else {
                    return Err(format!(
                        "decay {st}: last dim must be kv_num_heads ({hkv}) or kv_num_heads*d_k ({})",
                        hkv * dk
                    ));
                };
                Some(self.step1(c, Op::Unary(UnaryOp::Exp), vec![d4], &name("decay_exp"))?)
            }
            None => None,
        };
        let beta4 = match beta {
            Some(bt) => {
                let bt = f32_(self, bt, "beta_f32")?;
                let st = self.ty(bt).clone();
                if st.rank() != 3
                    || st.shape[..2] != [b, t]
                    || !(st.shape[2] == hkv || st.shape[2] == 1)
                {
                    return Err(format!("beta {st} must be [{b}, {t}, {hkv} or 1]"));
                }
                Some(per_head(self, bt, st.shape[2], "beta")?)
            }
            None => None,
        };
        let state_dt = match past {
            Some(p) => {
                let pt = self.ty(p).clone();
                if pt.shape != [b, hkv, dk, dv] || !pt.dtype.is_float() {
                    return Err(format!(
                        "past_state {pt} must be a float [{b}, {hkv}, {dk}, {dv}]"
                    ));
                }
                pt.dtype
            }
            None => dt,
        };
        let mut state = match past {
            Some(p) => Some(f32_(self, p, "state_in")?),
            None => None,
        };
        let scale = match c.f("scale", 0.0) {
            0.0 => 1.0 / (dk as f64).sqrt(),
            s => s as f64,
        };

        // Per-step slices along the sequence axis.
        let steps = |s: &mut Self, x: ValueId, w: &str| -> R<Vec<ValueId>> {
            if t == 1 {
                return Ok(vec![x]);
            }
            let names: Vec<String> = (0..t).map(|i| name(&format!("{w}_t{i}"))).collect();
            s.node(
                c,
                Op::Split {
                    axis: 2,
                    sizes: vec![1; t],
                },
                vec![x],
                &names,
            )
        };
        let qs = steps(self, q4, "q")?;
        let ks = steps(self, k4, "k")?;
        let vs = steps(self, v4, "v")?;
        let gs = match decay4 {
            Some(d) => Some(steps(self, d, "decay")?),
            None => None,
        };
        let bs = match beta4 {
            Some(bv) => Some(steps(self, bv, "beta")?),
            None => None,
        };
        let mut outs = Vec::with_capacity(t);
        for i in 0..t {
            let n = |w: &str| name(&format!("{w}_t{i}"));
            // decay: S *= exp(g_t), g_t as [B, Hkv, dk or 1, 1]
            if let (Some(gs), Some(s)) = (&gs, state) {
                let gd = self.ty(gs[i]).shape[3];
                let gcol = self.reshape(c, gs[i], vec![b, hkv, gd, 1], &n("gate"))?;
                state = Some(self.binary(c, BinaryOp::Mul, s, gcol, &n("state_decayed"))?);
            }
            // delta: v_t = beta_t * (v_t - k_t S)
            let mut vt = vs[i];
            if let Some(bs) = &bs {
                if let Some(s) = state {
                    let ret = self.step1(c, Op::matmul(), vec![ks[i], s], &n("retrieved"))?;
                    vt = self.binary(c, BinaryOp::Sub, vt, ret, &n("v_err"))?;
                }
                vt = self.binary(c, BinaryOp::Mul, bs[i], vt, &n("v_delta"))?;
            }
            // write: S += k_tᵀ v_t
            let kcol = self.reshape(c, ks[i], vec![b, hkv, dk, 1], &n("k_col"))?;
            let outer = self.binary(c, BinaryOp::Mul, kcol, vt, &n("kv_outer"))?;
            state = Some(match state {
                Some(s) => self.binary(c, BinaryOp::Add, s, outer, &n("state"))?,
                None => outer,
            });
            // read: o_t = q_t S (query heads grouped per KV head)
            let qg = self.reshape(c, qs[i], vec![b, hkv, g, dk], &n("q_groups"))?;
            let o = self.step1(c, Op::matmul(), vec![qg, state.unwrap()], &n("out"))?;
            outs.push(self.reshape(c, o, vec![b, 1, hq * dv], &n("out_row"))?);
        }
        let o = if outs.len() == 1 {
            outs[0]
        } else {
            self.step1(c, Op::Concat { axis: 1 }, outs, &name("out_rows"))?
        };
        let sc = self.attn_const(c, "scale", fconst(DType::F32, vec![], vec![scale]))?;
        let out_name = if dt == DType::F32 {
            self.out_name(c, 0)
        } else {
            name("output_f32")
        };
        let mut y = self.binary(c, BinaryOp::Mul, o, sc, &out_name)?;
        if dt != DType::F32 {
            let n = self.out_name(c, 0);
            y = self.step1(c, Op::Cast { to: dt }, vec![y], &n)?;
        }
        self.set_out(c, 0, y)?;
        let mut st = state.expect("at least one step");
        if state_dt != DType::F32 {
            let n = self.out_name(c, 1);
            st = self.step1(c, Op::Cast { to: state_dt }, vec![st], &n)?;
        }
        self.set_out(c, 1, st)?;
        Ok(())
    }

    /// `ai.onnx.preview:FlexAttention`: scaled dot-product attention on 4-D inputs with optional
    /// `score_mod` / `prob_mod` subgraphs, which are inlined (their single input bound to the
    /// scores / probabilities). As in the function body, Q and Kᵀ are scaled by `sqrt(scale)`,
    /// and the scores are cast to `softmax_precision` (default f32, f64 for f64 inputs).
    pub(super) fn flex_attention(&mut self, c: &Ctx) -> R<()> {
        let q = self.req(c, 0)?;
        let k = self.req(c, 1)?;
        let v = self.req(c, 2)?;
        let dt = self.ty(q).dtype;
        for x in [q, k, v] {
            let t = self.ty(x);
            if t.rank() != 4 || t.dtype != dt || !dt.is_float() {
                return Err(format!(
                    "Q, K and V must be 4-D tensors of one float type, got {t}"
                ));
            }
        }
        let (qs, ks, vs) = (
            self.ty(q).shape.clone(),
            self.ty(k).shape.clone(),
            self.ty(v).shape.clone(),
        );
        let (b, hq, s, d) = (qs[0], qs[1], qs[2], qs[3]);
        let (hkv, t) = (ks[1], ks[2]);
        if ks[0] != b || vs[0] != b || vs[1] != hkv || ks[3] != d || vs[2] != t {
            return Err(format!("inconsistent shapes: Q {qs:?}, K {ks:?}, V {vs:?}"));
        }
        if hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(format!(
                "q_num_heads {hq} is not a multiple of kv_num_heads {hkv}"
            ));
        }
        let g = hq / hkv;
        let dv = vs[3];
        let name = |w: &str| format!("{}/{w}", c.name);
        let scale = match c.attr("scale") {
            Some(a) => a.f() as f64,
            None => 1.0 / (d as f64).sqrt(),
        };
        let sf = self.attn_const(c, "scale_sqrt", fconst(dt, vec![], vec![scale.sqrt()]))?;
        let q_sc = self.binary(c, BinaryOp::Mul, q, sf, &name("q_scaled"))?;
        let k_sc = self.binary(c, BinaryOp::Mul, k, sf, &name("k_scaled"))?;
        let perm = vec![0, 1, 3, 2];
        let kt = self.step1(c, Op::Transpose { perm }, vec![k_sc], &name("k_t"))?;
        let scores = if g == 1 {
            self.step1(c, Op::matmul(), vec![q_sc, kt], &name("scores"))?
        } else {
            let q5 = self.reshape(c, q_sc, vec![b, hkv, g, s, d], &name("q_groups"))?;
            let k5 = self.reshape(c, kt, vec![b, hkv, 1, d, t], &name("k_t_groups"))?;
            let qk5 = self.step1(c, Op::matmul(), vec![q5, k5], &name("scores_groups"))?;
            self.reshape(c, qk5, vec![b, hq, s, t], &name("scores"))?
        };
        let sm_dt = match c.attr("softmax_precision") {
            Some(a) => dtype_from_onnx(a.i() as i32)
                .ok()
                .filter(|p| p.is_float())
                .ok_or_else(|| {
                    format!("FlexAttention: softmax_precision={} not supported", a.i())
                })?,
            None if dt == DType::F64 => DType::F64,
            None => DType::F32,
        };
        let mut scores = if sm_dt == dt {
            scores
        } else {
            let to = sm_dt;
            self.step1(c, Op::Cast { to }, vec![scores], &name("scores_cast"))?
        };
        if let Some(a) = c.attr("score_mod") {
            let sg = a.g.as_ref().ok_or("score_mod is not a graph")?;
            scores = self.inline_modifier(c, "score_mod", sg, scores)?;
        }
        let mut probs = self.step1(
            c,
            Op::Softmax {
                axis: 3,
                kind: SoftmaxKind::Softmax,
            },
            vec![scores],
            &name("probs"),
        )?;
        if let Some(a) = c.attr("prob_mod") {
            let pg = a.g.as_ref().ok_or("prob_mod is not a graph")?;
            probs = self.inline_modifier(c, "prob_mod", pg, probs)?;
        }
        if self.ty(probs).dtype != dt {
            let to = dt;
            probs = self.step1(c, Op::Cast { to }, vec![probs], &name("probs_cast"))?;
        }
        let y_name = self.out_name(c, 0);
        let y = if g == 1 {
            self.step1(c, Op::matmul(), vec![probs, v], &y_name)?
        } else {
            let p5 = self.reshape(c, probs, vec![b, hkv, g, s, t], &name("probs_groups"))?;
            let v5 = self.reshape(c, v, vec![b, hkv, 1, t, dv], &name("v_groups"))?;
            let y5 = self.step1(c, Op::matmul(), vec![p5, v5], &name("y_groups"))?;
            self.reshape(c, y5, vec![b, hq, s, dv], &y_name)?
        };
        self.set_out(c, 0, y)?;
        Ok(())
    }

    /// Inline a one-input, one-output modifier subgraph applied to `x`; returns its output.
    fn inline_modifier(&mut self, c: &Ctx, what: &str, sg: &GraphProto, x: ValueId) -> R<ValueId> {
        let inits: std::collections::HashSet<&str> =
            sg.initializer.iter().map(|t| t.name()).collect();
        let ins: Vec<&str> = sg
            .input
            .iter()
            .map(|i| i.name())
            .filter(|n| !inits.contains(n))
            .collect();
        if ins.len() != 1 || sg.output.len() != 1 {
            return Err(format!(
                "{what} must have one input and one output, got {} and {}",
                ins.len(),
                sg.output.len()
            ));
        }
        if !sg.sparse_initializer.is_empty() {
            return Err(format!("{what}: sparse initializers are not supported"));
        }
        // The subgraph sees the outer scope; its own names shadow it only while inlining.
        self.b.push_scope();
        let res = (|| -> R<ValueId> {
            for t in &sg.initializer {
                let mut t = t.clone();
                let (ty, data) = decode_tensor(&mut t, self.base_dir, &mut self.ext)
                    .map_err(|e| format!("{what} initializer '{}': {e}", t.name()))?;
                let v = self
                    .b
                    .add_const(&format!("{}/{what}/{}", c.name, t.name()), ty, data)?;
                self.b.bind(t.name(), v)?;
            }
            self.b.bind(ins[0], x)?;
            for (i, n) in sg.node.iter().enumerate() {
                let mut n = n.clone();
                let label = if n.name().is_empty() {
                    format!("{}_{i}", n.op_type())
                } else {
                    n.name().to_string()
                };
                n.name = Some(format!("{}/{what}/{label}", c.name));
                self.import_node(&mut n, i)
                    .map_err(|e| format!("{what}: {e}"))?;
            }
            let o = sg.output[0].name();
            let y = *self
                .b
                .lookup(o)
                .ok_or_else(|| format!("{what}: output '{o}' is not produced"))?;
            if self.ty(y) != self.ty(x) {
                return Err(format!(
                    "{what} changes its input {} to {}",
                    self.ty(x),
                    self.ty(y)
                ));
            }
            Ok(y)
        })();
        self.b.pop_scope();
        res
    }
}
