//! ONNX ops lowered to compositions of primitive IR ops (the ONNX "function" idea): losses,
//! Trilu, normalizations, space/depth rearrangements, Tile, OneHot, EyeLike, ...
//! Each lowering produces exactly the ONNX semantics; passes may later fuse the pieces.

use super::*;
use kiln_ir::ops::PadMode;

impl Imp<'_> {
    /// One IR node named `<onnx node>/<what>`, returning its first output.
    pub(super) fn op1(&mut self, c: &Ctx, what: &str, op: Op, ins: Vec<ValueId>) -> R<ValueId> {
        let name = format!("{}/{what}", c.name);
        Ok(self.node(c, op, ins, &[name])?[0])
    }

    /// The same, but named as the ONNX node's output `i`.
    fn op_out(&mut self, c: &Ctx, i: usize, op: Op, ins: Vec<ValueId>) -> R<ValueId> {
        let name = self.out_name(c, i);
        let v = self.node(c, op, ins, &[name])?[0];
        self.set_out(c, i, v)?;
        Ok(v)
    }

    /// A constant of `dtype` with `shape` and values `v` (converted from f64).
    pub(super) fn const_of(
        &mut self,
        c: &Ctx,
        what: &str,
        dtype: DType,
        shape: Vec<usize>,
        v: Vec<f64>,
    ) -> R<ValueId> {
        let ct = CT {
            dtype: DType::F64,
            shape,
            v: ce::Vals::F(v),
        }
        .cast(dtype);
        self.add_ct(&format!("{}/{what}", c.name), ct)
    }

    fn bool_const(&mut self, c: &Ctx, what: &str, shape: Vec<usize>, v: Vec<bool>) -> R<ValueId> {
        let ct = CT {
            dtype: DType::Bool,
            shape,
            v: ce::Vals::I(v.into_iter().map(i64::from).collect()),
        };
        self.add_ct(&format!("{}/{what}", c.name), ct)
    }

    /// NegativeLogLikelihoodLoss on log-probabilities `logp` [N, C, d..] and integer `target`
    /// [N, d..]; the result is bound to ONNX output 0.
    fn nll(&mut self, c: &Ctx, logp: ValueId, target: ValueId, weight: Option<ValueId>) -> R<()> {
        let dt = self.ty(logp).dtype;
        let tdt = self.ty(target).dtype;
        let tshape = self.ty(target).shape.clone();
        let xs = self.ty(logp).shape.clone();
        if xs.len() < 2 || xs.len() != tshape.len() + 1 || xs[0] != tshape[0] {
            return Err(format!("input {xs:?} and target {tshape:?} do not match"));
        }
        // ignored targets: index 0 instead (any valid index), weight 0
        let ignore = c.attr("ignore_index").map(|a| a.i());
        let (t, mask) = match ignore {
            Some(ii) => {
                let iv = self.const_of(c, "ignore_index", tdt, vec![], vec![ii as f64])?;
                let m = self.op1(c, "ignored", Op::Compare(CmpOp::Equal), vec![target, iv])?;
                let z = self.const_of(c, "zero_index", tdt, vec![], vec![0.0])?;
                let t = self.op1(c, "safe_target", Op::Where, vec![m, z, target])?;
                (t, Some(m))
            }
            None => (target, None),
        };
        let mut ushape = tshape.clone();
        ushape.insert(1, 1);
        let tu = self.reshape(c, t, ushape, &format!("{}/target_1", c.name))?;
        let picked = self.op1(c, "picked", Op::GatherElements { axis: 1 }, vec![logp, tu])?;
        let picked = self.reshape(
            c,
            picked,
            tshape.clone(),
            &format!("{}/picked_flat", c.name),
        )?;
        let neg = self.op1(c, "neg", Op::Unary(UnaryOp::Neg), vec![picked])?;
        // per-element weight: weight[target], zeroed where ignored
        let w = match weight {
            Some(wv) => Some(self.op1(c, "w", Op::Gather { axis: 0 }, vec![wv, t])?),
            None => None,
        };
        let w = match (w, mask) {
            (Some(w), Some(m)) => {
                let z = self.const_of(c, "zero", dt, vec![], vec![0.0])?;
                Some(self.op1(c, "w_masked", Op::Where, vec![m, z, w])?)
            }
            (None, Some(m)) => {
                let z = self.const_of(c, "zero", dt, vec![], vec![0.0])?;
                let o = self.const_of(c, "one", dt, vec![], vec![1.0])?;
                Some(self.op1(c, "w_masked", Op::Where, vec![m, z, o])?)
            }
            (w, None) => w,
        };
        let red = c.s("reduction", "mean");
        let all: Vec<usize> = (0..tshape.len()).collect();
        let sum = |keep: bool| Op::Reduce {
            kind: ReduceKind::Sum,
            axes: all.clone(),
            keepdims: keep,
        };
        match (red.as_str(), w) {
            ("none", Some(w)) => {
                self.op_out(c, 0, Op::Binary(BinaryOp::Mul), vec![neg, w])?;
            }
            ("none", None) => {
                // bind the output name through a view
                let name = self.out_name(c, 0);
                let v = self.node(c, Op::Reshape { shape: tshape }, vec![neg], &[name])?[0];
                self.set_out(c, 0, v)?;
            }
            ("sum", w) => {
                let l = match w {
                    Some(w) => self.op1(c, "weighted", Op::Binary(BinaryOp::Mul), vec![neg, w])?,
                    None => neg,
                };
                self.op_out(c, 0, sum(false), vec![l])?;
            }
            ("mean", Some(w)) => {
                let l = self.op1(c, "weighted", Op::Binary(BinaryOp::Mul), vec![neg, w])?;
                let s = self.op1(c, "sum", sum(false), vec![l])?;
                let ws = self.op1(c, "weight_sum", sum(false), vec![w])?;
                self.op_out(c, 0, Op::Binary(BinaryOp::Div), vec![s, ws])?;
            }
            ("mean", None) => {
                self.op_out(
                    c,
                    0,
                    Op::Reduce {
                        kind: ReduceKind::Mean,
                        axes: all.clone(),
                        keepdims: false,
                    },
                    vec![neg],
                )?;
            }
            (r, _) => return Err(format!("unknown reduction '{r}'")),
        }
        Ok(())
    }

    pub(super) fn nll_loss(&mut self, c: &Ctx) -> R<()> {
        let (x, t) = (self.req(c, 0)?, self.req(c, 1)?);
        let w = self.inp(c, 2)?;
        self.nll(c, x, t, w)
    }

    /// SoftmaxCrossEntropyLoss = NLL(LogSoftmax(scores, axis 1)); output 1 is the log-prob.
    pub(super) fn softmax_cross_entropy(&mut self, c: &Ctx) -> R<()> {
        let (x, t) = (self.req(c, 0)?, self.req(c, 1)?);
        let w = self.inp(c, 2)?;
        let lp = Op::Softmax {
            axis: 1,
            kind: SoftmaxKind::LogSoftmax,
        };
        let logp = if c.out(1).is_some() {
            self.op_out(c, 1, lp, vec![x])?
        } else {
            self.op1(c, "log_prob", lp, vec![x])?
        };
        self.nll(c, logp, t, w)
    }

    /// Trilu: keep the upper (j - i >= k) or lower (j - i <= k) triangle of the last two dims,
    /// as `Where(mask, x, 0)` with the mask computed at compile time.
    pub(super) fn trilu(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let k = match self.const_in(c, 1)? {
            Some(k) => *k.as_i64().first().ok_or("k must be a scalar")?,
            None => 0,
        };
        let ty = self.ty(x).clone();
        if ty.rank() < 2 {
            return Err(format!("input {ty} must have rank >= 2"));
        }
        let (rows, cols) = (ty.shape[ty.rank() - 2], ty.shape[ty.rank() - 1]);
        let upper = c.i("upper", 1) != 0;
        lowered_elems(&[rows, cols], "Trilu mask")?;
        let mask: Vec<bool> = (0..rows * cols)
            .map(|n| {
                let d = (n % cols) as i64 - (n / cols) as i64;
                if upper { d >= k } else { d <= k }
            })
            .collect();
        let m = self.bool_const(c, "mask", vec![rows, cols], mask)?;
        let z = self.const_of(c, "zero", ty.dtype, vec![], vec![0.0])?;
        self.op_out(c, 0, Op::Where, vec![m, x, z])?;
        Ok(())
    }

    /// LRN: `x / (bias + alpha/size * sum of x^2 over a channel window)^beta`; the window sum
    /// is an average pool (count_include_pad) over channels of `[N, 1, C, spatial]`.
    pub(super) fn lrn(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let ty = self.ty(x).clone();
        if ty.rank() < 3 {
            return Err(format!("input {ty} needs [N, C, spatial..]"));
        }
        let size = usize::try_from(c.i("size", 0))
            .ok()
            .filter(|&s| s > 0)
            .ok_or("size must be positive")?;
        let (alpha, beta, bias) = (
            c.f("alpha", 1e-4) as f64,
            c.f("beta", 0.75) as f64,
            c.f("bias", 1.0) as f64,
        );
        let (n, ch) = (ty.shape[0], ty.shape[1]);
        let sp: usize = ty.shape[2..].iter().product();
        let sq = self.op1(c, "square", Op::Binary(BinaryOp::Mul), vec![x, x])?;
        let sq = self.reshape(c, sq, vec![n, 1, ch, sp], &format!("{}/square_4d", c.name))?;
        let pool = Op::AveragePool(PoolAttrs {
            kernel: vec![size, 1],
            strides: vec![1, 1],
            pads: vec![(size - 1) / 2, 0, size / 2, 0],
            dilations: vec![1, 1],
            ceil_mode: false,
            count_include_pad: true,
        });
        let avg = self.op1(c, "window_mean", pool, vec![sq])?;
        let avg = self.reshape(
            c,
            avg,
            ty.shape.clone(),
            &format!("{}/window_mean_nd", c.name),
        )?;
        let a = self.const_of(c, "alpha", ty.dtype, vec![], vec![alpha])?;
        let t = self.op1(c, "scaled", Op::Binary(BinaryOp::Mul), vec![avg, a])?;
        let b = self.const_of(c, "bias", ty.dtype, vec![], vec![bias])?;
        let t = self.op1(c, "biased", Op::Binary(BinaryOp::Add), vec![t, b])?;
        let e = self.const_of(c, "beta", ty.dtype, vec![], vec![beta])?;
        let d = self.op1(c, "denominator", Op::Binary(BinaryOp::Pow), vec![t, e])?;
        self.op_out(c, 0, Op::Binary(BinaryOp::Div), vec![x, d])?;
        Ok(())
    }

    /// Pad: opset < 11 takes `pads`/`mode`/`value` attributes, later opsets inputs (`pads`,
    /// `constant_value`, `axes`).
    pub(super) fn pad(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let r = self.ty(x).rank();
        let mode_s = c.s("mode", "constant");
        let mode = PadMode::from_name(&mode_s).ok_or_else(|| format!("unknown mode '{mode_s}'"))?;
        let (pads, value) = if self.opset < 11 {
            let p = c.ints("pads").ok_or("missing pads")?;
            (p, c.f("value", 0.0) as f64)
        } else {
            let p = self.const_in(c, 1)?.ok_or("missing pads")?.as_i64();
            let v = match self.const_in(c, 2)? {
                Some(v) => *v.as_f64().first().unwrap_or(&0.0),
                None => 0.0,
            };
            let p = match self.const_in(c, 3)? {
                None => p,
                Some(axes) => {
                    // pads for the listed axes only
                    let axes = axes.as_i64();
                    if p.len() != 2 * axes.len() {
                        return Err(format!("{} pads for {} axes", p.len(), axes.len()));
                    }
                    let mut full = vec![0i64; 2 * r];
                    for (k, &a) in axes.iter().enumerate() {
                        let a = norm_axis(a, r)?;
                        full[a] = p[k];
                        full[r + a] = p[axes.len() + k];
                    }
                    full
                }
            };
            (p, v)
        };
        if pads.len() != 2 * r {
            return Err(format!("{} pads for rank {r}", pads.len()));
        }
        if mode == PadMode::Reflect {
            let sh = self.ty(x).shape.clone();
            for d in 0..r {
                if pads[d].max(pads[r + d]) >= sh[d] as i64 && sh[d] > 1 {
                    return Err(format!(
                        "reflect pads {pads:?} must be smaller than dim {d} of {sh:?}"
                    ));
                }
            }
        }
        self.op_out(c, 0, Op::Pad { pads, mode, value }, vec![x])?;
        Ok(())
    }

    /// Tile (the front-end layer's lowering).
    pub(super) fn tile(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let reps = self.const_in(c, 1)?.ok_or("missing repeats")?.as_i64();
        let reps = reps
            .iter()
            .map(|&r| usize::try_from(r).map_err(|_| format!("negative repeats {reps:?}")))
            .collect::<R<Vec<_>>>()?;
        let name = self.out_name(c, 0);
        let v = self.b.tile(&c.name, x, &reps, &name)?;
        self.set_out(c, 0, v)?;
        Ok(())
    }

    /// DepthToSpace (DCR / CRD) and SpaceToDepth as Reshape -> Transpose -> Reshape.
    pub(super) fn depth_space(&mut self, c: &Ctx, to_space: bool) -> R<()> {
        let x = self.req(c, 0)?;
        let sh = self.ty(x).shape.clone();
        let b = usize::try_from(c.i("blocksize", 0))
            .ok()
            .filter(|&b| b > 0)
            .ok_or("blocksize must be positive")?;
        let [n, ch, h, w] = sh[..] else {
            return Err(format!("input {sh:?} must be 4-D"));
        };
        let (inner, perm, out) = if to_space {
            if ch % (b * b) != 0 {
                return Err(format!("channels {ch} not divisible by blocksize^2"));
            }
            let co = ch / (b * b);
            if c.s("mode", "DCR") == "CRD" {
                (
                    vec![n, co, b, b, h, w],
                    vec![0, 1, 4, 2, 5, 3],
                    vec![n, co, h * b, w * b],
                )
            } else {
                (
                    vec![n, b, b, co, h, w],
                    vec![0, 3, 4, 1, 5, 2],
                    vec![n, co, h * b, w * b],
                )
            }
        } else {
            if h % b != 0 || w % b != 0 {
                return Err(format!("spatial {h}x{w} not divisible by blocksize {b}"));
            }
            (
                vec![n, ch, h / b, b, w / b, b],
                vec![0, 3, 5, 1, 2, 4],
                vec![n, ch * b * b, h / b, w / b],
            )
        };
        let t = self.reshape(c, x, inner, &format!("{}/split", c.name))?;
        let t = self.op1(c, "permuted", Op::Transpose { perm }, vec![t])?;
        let name = self.out_name(c, 0);
        let v = self.reshape(c, t, out, &name)?;
        self.set_out(c, 0, v)?;
        Ok(())
    }

    /// Normalize over `axes` (keepdims): `(x - mean) / sqrt(var + eps)`.
    fn normalize(&mut self, c: &Ctx, x: ValueId, axes: Vec<usize>, eps: f64) -> R<ValueId> {
        let dt = self.ty(x).dtype;
        let mean_op = Op::Reduce {
            kind: ReduceKind::Mean,
            axes,
            keepdims: true,
        };
        let mean = self.op1(c, "mean", mean_op.clone(), vec![x])?;
        let d = self.op1(c, "centred", Op::Binary(BinaryOp::Sub), vec![x, mean])?;
        let sq = self.op1(c, "square", Op::Binary(BinaryOp::Mul), vec![d, d])?;
        let var = self.op1(c, "var", mean_op, vec![sq])?;
        let e = self.const_of(c, "epsilon", dt, vec![], vec![eps])?;
        let ve = self.op1(c, "var_eps", Op::Binary(BinaryOp::Add), vec![var, e])?;
        let sd = self.op1(c, "std", Op::Unary(UnaryOp::Sqrt), vec![ve])?;
        self.op1(c, "normed", Op::Binary(BinaryOp::Div), vec![d, sd])
    }

    /// `y * scale + bias` with per-channel `[C]` parameters broadcast over `[N, C, ...]`.
    fn channel_affine(&mut self, c: &Ctx, y: ValueId, scale: ValueId, bias: ValueId) -> R<()> {
        let r = self.ty(y).rank();
        let ch = self.ty(y).shape[1];
        let mut ps = vec![ch];
        ps.resize(r - 1, 1);
        let s = self.reshape(c, scale, ps.clone(), &format!("{}/scale_c", c.name))?;
        let b = self.reshape(c, bias, ps, &format!("{}/bias_c", c.name))?;
        let t = self.op1(c, "scaled", Op::Binary(BinaryOp::Mul), vec![y, s])?;
        self.op_out(c, 0, Op::Binary(BinaryOp::Add), vec![t, b])?;
        Ok(())
    }

    pub(super) fn instance_norm(&mut self, c: &Ctx) -> R<()> {
        let (x, s, b) = (self.req(c, 0)?, self.req(c, 1)?, self.req(c, 2)?);
        let r = self.ty(x).rank();
        if r < 3 {
            return Err(format!("input {} needs spatial dims", self.ty(x)));
        }
        let y = self.normalize(c, x, (2..r).collect(), c.f("epsilon", 1e-5) as f64)?;
        self.channel_affine(c, y, s, b)
    }

    /// GroupNormalization: statistics per (n, group); scale/bias per channel (opset 21) or per
    /// group (opset 18, repeated over the group's channels).
    pub(super) fn group_norm(&mut self, c: &Ctx) -> R<()> {
        let (x, s, b) = (self.req(c, 0)?, self.req(c, 1)?, self.req(c, 2)?);
        let sh = self.ty(x).shape.clone();
        let g = usize::try_from(c.i("num_groups", 0))
            .ok()
            .filter(|&g| g > 0 && sh.len() >= 2 && sh[1].is_multiple_of(g))
            .ok_or("num_groups must divide the channels")?;
        let (n, ch) = (sh[0], sh[1]);
        let rest: usize = sh[1..].iter().product::<usize>() / g;
        let t = self.reshape(c, x, vec![n, g, rest], &format!("{}/grouped", c.name))?;
        let y = self.normalize(c, t, vec![2], c.f("epsilon", 1e-5) as f64)?;
        let y = self.reshape(c, y, sh.clone(), &format!("{}/ungrouped", c.name))?;
        let (s, b) = if self.ty(s).numel() == g && g != ch {
            let per = ch / g;
            let mut out = Vec::new();
            for (k, p) in [s, b].into_iter().enumerate() {
                let p2 = self.reshape(c, p, vec![g, 1], &format!("{}/param{k}_g", c.name))?;
                let e = self.op1(
                    c,
                    &format!("param{k}_rep"),
                    Op::Expand {
                        shape: vec![g, per],
                    },
                    vec![p2],
                )?;
                out.push(self.reshape(c, e, vec![ch], &format!("{}/param{k}_c", c.name))?);
            }
            (out[0], out[1])
        } else {
            (s, b)
        };
        self.channel_affine(c, y, s, b)
    }

    pub(super) fn mean_variance_norm(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let r = self.ty(x).rank();
        let axes = match c.ints("axes") {
            Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect::<R<Vec<_>>>()?,
            None => vec![0, 2, 3],
        };
        let mut axes = axes;
        axes.sort_unstable();
        axes.dedup();
        let y = self.normalize(c, x, axes, 1e-9)?;
        let name = self.out_name(c, 0);
        let shape = self.ty(y).shape.clone();
        let v = self.node(c, Op::Reshape { shape }, vec![y], &[name])?[0];
        self.set_out(c, 0, v)?;
        Ok(())
    }

    /// LpNormalization: `x / ||x||_p` along `axis` (p = 1 or 2).
    pub(super) fn lp_norm(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let axis = norm_axis(c.i("axis", -1), self.ty(x).rank())?;
        let kind = match c.i("p", 2) {
            1 => ReduceKind::L1,
            2 => ReduceKind::L2,
            p => return Err(format!("p={p} (only 1 and 2 are defined)")),
        };
        let n = self.op1(
            c,
            "norm",
            Op::Reduce {
                kind,
                axes: vec![axis],
                keepdims: true,
            },
            vec![x],
        )?;
        // a zero vector stays zero (0 / 1, not 0 / 0)
        let dt = self.ty(x).dtype;
        let z = self.const_of(c, "zero", dt, vec![], vec![0.0])?;
        let one = self.const_of(c, "one", dt, vec![], vec![1.0])?;
        let is0 = self.op1(c, "is_zero", Op::Compare(CmpOp::Equal), vec![n, z])?;
        let n = self.op1(c, "safe_norm", Op::Where, vec![is0, one, n])?;
        self.op_out(c, 0, Op::Binary(BinaryOp::Div), vec![x, n])?;
        Ok(())
    }

    /// GlobalMaxPool / GlobalLpPool as reductions over the spatial axes.
    pub(super) fn global_pool(&mut self, c: &Ctx, max: bool) -> R<()> {
        let x = self.req(c, 0)?;
        let r = self.ty(x).rank();
        if r < 3 {
            return Err(format!("input {} needs spatial dims", self.ty(x)));
        }
        let axes: Vec<usize> = (2..r).collect();
        let kind = if max {
            ReduceKind::Max
        } else {
            match c.i("p", 2) {
                1 => ReduceKind::L1,
                2 => ReduceKind::L2,
                p => return Err(format!("p={p} (1 and 2 are supported)")),
            }
        };
        self.op_out(
            c,
            0,
            Op::Reduce {
                kind,
                axes,
                keepdims: true,
            },
            vec![x],
        )?;
        Ok(())
    }

    /// EyeLike: a constant (the shape is static).
    pub(super) fn eye_like(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let sh = self.ty(x).shape.clone();
        let [rows, cols] = sh[..] else {
            return Err(format!("input {sh:?} must be 2-D"));
        };
        let dt = match c.attr("dtype") {
            Some(a) => dtype_from_onnx(a.i() as i32)?,
            None => self.ty(x).dtype,
        };
        let k = c.i("k", 0);
        lowered_elems(&[rows, cols], "EyeLike")?;
        let v: Vec<f64> = (0..rows * cols)
            .map(|n| ((n % cols) as i64 - (n / cols) as i64 == k) as u8 as f64)
            .collect();
        let ct = CT {
            dtype: DType::F64,
            shape: sh,
            v: ce::Vals::F(v),
        }
        .cast(dt);
        self.out_const(c, 0, ct)
    }

    /// OneHot: `indices` (negative = from the end) against `0..depth` on a new `axis`;
    /// `values` = [off, on].
    pub(super) fn one_hot(&mut self, c: &Ctx) -> R<()> {
        let (idx, vals) = (self.req(c, 0)?, self.req(c, 2)?);
        let depth = self.const_in(c, 1)?.ok_or("missing depth")?;
        let depth = *depth.as_f64().first().ok_or("depth must be a scalar")? as i64;
        if depth <= 0 {
            return Err(format!("depth {depth} must be positive"));
        }
        lowered_elems(&[depth as usize], "OneHot depth")?;
        let ish = self.ty(idx).shape.clone();
        let r = ish.len() + 1;
        let axis = norm_axis(c.i("axis", -1), r)?;
        let idt = self.ty(idx).dtype;
        // normalize negatives: i < 0 ? i + depth : i
        let z = self.const_of(c, "zero", idt, vec![], vec![0.0])?;
        let dv = self.const_of(c, "depth", idt, vec![], vec![depth as f64])?;
        let neg = self.op1(c, "negative", Op::Compare(CmpOp::Less), vec![idx, z])?;
        let wrapped = self.op1(c, "wrapped", Op::Binary(BinaryOp::Add), vec![idx, dv])?;
        let i = self.op1(c, "index", Op::Where, vec![neg, wrapped, idx])?;
        let mut ushape = ish.clone();
        ushape.insert(axis, 1);
        let i = self.reshape(c, i, ushape, &format!("{}/index_axis", c.name))?;
        let mut iota_shape = vec![1; r];
        iota_shape[axis] = depth as usize;
        let iota = self.const_of(
            c,
            "iota",
            idt,
            iota_shape,
            (0..depth).map(|v| v as f64).collect(),
        )?;
        let hit = self.op1(c, "hit", Op::Compare(CmpOp::Equal), vec![i, iota])?;
        if self.ty(vals).numel() != 2 {
            return Err("values must hold [off, on]".into());
        }
        let vals = self.reshape(c, vals, vec![2], &format!("{}/values", c.name))?;
        let slice = |k: usize| {
            Op::Slice(SliceAttrs {
                starts: vec![k],
                steps: vec![1],
                sizes: vec![1],
            })
        };
        let off = self.op1(c, "off", slice(0), vec![vals])?;
        let on = self.op1(c, "on", slice(1), vec![vals])?;
        self.op_out(c, 0, Op::Where, vec![hit, on, off])?;
        Ok(())
    }

    /// A quantization parameter (scale or zero point) made broadcastable to `x_shape`:
    /// per-tensor (scalar / one element), per-axis (1-D along `axis`) or blocked (`block` > 0:
    /// x's shape with `axis` divided into blocks, each block's value repeated).
    fn quant_param(
        &mut self,
        c: &Ctx,
        p: ValueId,
        xs: &[usize],
        axis: i64,
        block: i64,
        what: &str,
    ) -> R<ValueId> {
        let ps = self.ty(p).shape.clone();
        let numel: usize = ps.iter().product();
        if numel == 1 {
            return self.reshape(c, p, vec![], &format!("{}/{what}_scalar", c.name));
        }
        let r = xs.len();
        let axis = norm_axis(axis, r)?;
        if block <= 0 {
            if ps.len() != 1 || ps[0] != xs[axis] {
                return Err(format!(
                    "{what} {ps:?} is not per-axis along {axis} of {xs:?}"
                ));
            }
            let mut shape = vec![1; r];
            shape[axis] = ps[0];
            return self.reshape(c, p, shape, &format!("{}/{what}_axis", c.name));
        }
        let b = block as usize;
        let nb = xs[axis].div_ceil(b);
        let mut want = xs.to_vec();
        want[axis] = nb;
        if ps != want {
            return Err(format!(
                "blocked {what} {ps:?} must be {want:?} (block_size {b})"
            ));
        }
        let mut split = ps.clone();
        split.insert(axis + 1, 1);
        let t = self.reshape(c, p, split.clone(), &format!("{}/{what}_blocks", c.name))?;
        let mut big = split;
        big[axis + 1] = b;
        let t = self.op1(
            c,
            &format!("{what}_repeat"),
            Op::Expand { shape: big.clone() },
            vec![t],
        )?;
        let mut flat = ps.clone();
        flat[axis] = nb * b;
        let t = self.reshape(c, t, flat.clone(), &format!("{}/{what}_flat", c.name))?;
        if nb * b == xs[axis] {
            return Ok(t);
        }
        let sl = SliceAttrs {
            starts: vec![0; r],
            steps: vec![1; r],
            sizes: xs.to_vec(),
        };
        self.op1(c, &format!("{what}_trim"), Op::Slice(sl), vec![t])
    }

    fn as_f32(&mut self, c: &Ctx, v: ValueId, what: &str) -> R<ValueId> {
        if self.ty(v).dtype == DType::F32 {
            return Ok(v);
        }
        self.op1(c, what, Op::Cast { to: DType::F32 }, vec![v])
    }

    /// `saturate(round(v) + zp)` into `dt` (v f32 or f64), bound to output `out`.
    fn requantize(
        &mut self,
        c: &Ctx,
        v: ValueId,
        zp: Option<ValueId>,
        dt: DType,
        out: usize,
    ) -> R<ValueId> {
        let (lo, hi) = match dt {
            DType::U8 => (0.0, 255.0),
            DType::I8 => (-128.0, 127.0),
            DType::U16 => (0.0, 65535.0),
            DType::I16 => (-32768.0, 32767.0),
            DType::I32 => (i32::MIN as f32, i32::MAX as f32),
            d => return Err(format!("quantization to {d} is not supported")),
        };
        let r = self.op1(
            c,
            &format!("rounded{out}"),
            Op::Unary(UnaryOp::Round),
            vec![v],
        )?;
        let r = match zp {
            Some(z) => {
                let vt = self.ty(v).dtype;
                let zf = if self.ty(z).dtype == vt {
                    z
                } else {
                    self.op1(
                        c,
                        &format!("zero_point{out}_float"),
                        Op::Cast { to: vt },
                        vec![z],
                    )?
                };
                self.op1(
                    c,
                    &format!("shifted{out}"),
                    Op::Binary(BinaryOp::Add),
                    vec![r, zf],
                )?
            }
            None => r,
        };
        let r = self.op1(
            c,
            &format!("saturated{out}"),
            Op::Clip { min: lo, max: hi },
            vec![r],
        )?;
        self.op_out(c, out, Op::Cast { to: dt }, vec![r])
    }

    /// QuantizeLinear: `saturate(round(x / scale) + zero_point)`, per tensor, axis or block.
    pub(super) fn quantize_linear(&mut self, c: &Ctx) -> R<()> {
        let (x, scale) = (self.req(c, 0)?, self.req(c, 1)?);
        let zp = self.inp(c, 2)?;
        let xs = self.ty(x).shape.clone();
        let dt = match (zp, c.attr("output_dtype")) {
            (Some(z), _) => self.ty(z).dtype,
            (None, Some(a)) if a.i() != 0 => dtype_from_onnx(a.i() as i32)?,
            _ => DType::U8,
        };
        let (axis, block) = (c.i("axis", 1), c.i("block_size", 0));
        let xf = self.as_f32(c, x, "x_f32")?;
        let s = self.quant_param(c, scale, &xs, axis, block, "scale")?;
        let s = self.as_f32(c, s, "scale_f32")?;
        let z = match zp {
            Some(z) => Some(self.quant_param(c, z, &xs, axis, block, "zero_point")?),
            None => None,
        };
        let v = self.op1(c, "scaled", Op::Binary(BinaryOp::Div), vec![xf, s])?;
        self.requantize(c, v, z, dt, 0)?;
        Ok(())
    }

    /// DequantizeLinear: `(x - zero_point) * scale` in the scale's type.
    pub(super) fn dequantize_linear(&mut self, c: &Ctx) -> R<()> {
        let (x, scale) = (self.req(c, 0)?, self.req(c, 1)?);
        let zp = self.inp(c, 2)?;
        let xs = self.ty(x).shape.clone();
        let out_dt = match c.attr("output_dtype") {
            Some(a) if a.i() != 0 => dtype_from_onnx(a.i() as i32)?,
            _ => self.ty(scale).dtype,
        };
        let (axis, block) = (c.i("axis", 1), c.i("block_size", 0));
        let xf = self.as_f32(c, x, "x_f32")?;
        let xf = match zp {
            Some(z) => {
                let z = self.quant_param(c, z, &xs, axis, block, "zero_point")?;
                let zf = self.as_f32(c, z, "zero_point_f32")?;
                self.op1(c, "centred", Op::Binary(BinaryOp::Sub), vec![xf, zf])?
            }
            None => xf,
        };
        let s = self.quant_param(c, scale, &xs, axis, block, "scale")?;
        let s = self.as_f32(c, s, "scale_f32")?;
        if out_dt == DType::F32 {
            self.op_out(c, 0, Op::Binary(BinaryOp::Mul), vec![xf, s])?;
        } else {
            let y = self.op1(c, "dequantized", Op::Binary(BinaryOp::Mul), vec![xf, s])?;
            self.op_out(c, 0, Op::Cast { to: out_dt }, vec![y])?;
        }
        Ok(())
    }

    /// DynamicQuantizeLinear: u8 with scale = (max(0, max x) - min(0, min x)) / 255 and
    /// zero point = saturate(round(-min / scale)); outputs y, scale, zero point.
    pub(super) fn dynamic_quantize_linear(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let x = self.as_f32(c, x, "x_f32")?;
        let r = self.ty(x).rank();
        let all: Vec<usize> = (0..r).collect();
        let red = |kind| Op::Reduce {
            kind,
            axes: all.clone(),
            keepdims: false,
        };
        let z = self.const_of(c, "zero", DType::F32, vec![], vec![0.0])?;
        let mx = self.op1(c, "max", red(ReduceKind::Max), vec![x])?;
        let mx = self.op1(c, "max0", Op::Binary(BinaryOp::Max), vec![mx, z])?;
        let mn = self.op1(c, "min", red(ReduceKind::Min), vec![x])?;
        let mn = self.op1(c, "min0", Op::Binary(BinaryOp::Min), vec![mn, z])?;
        let range = self.op1(c, "range", Op::Binary(BinaryOp::Sub), vec![mx, mn])?;
        let q = self.const_of(c, "qmax", DType::F32, vec![], vec![255.0])?;
        let scale = self.op_out(c, 1, Op::Binary(BinaryOp::Div), vec![range, q])?;
        let zr = self.op1(c, "min_scaled", Op::Binary(BinaryOp::Div), vec![mn, scale])?;
        let zr = self.op1(c, "neg_min_scaled", Op::Unary(UnaryOp::Neg), vec![zr])?;
        let zp = self.requantize(c, zr, None, DType::U8, 2)?;
        let v = self.op1(c, "scaled", Op::Binary(BinaryOp::Div), vec![x, scale])?;
        self.requantize(c, v, Some(zp), DType::U8, 0)?;
        Ok(())
    }

    /// `x - zero_point` in i32, the zero point per tensor or per row (`[M]` for the left
    /// operand) / per column (`[N]` for the right one).
    fn int_centred(
        &mut self,
        c: &Ctx,
        x: ValueId,
        zp: Option<ValueId>,
        left: bool,
        what: &str,
    ) -> R<ValueId> {
        let xi = self.op1(
            c,
            &format!("{what}_i32"),
            Op::Cast { to: DType::I32 },
            vec![x],
        )?;
        let Some(z) = zp else { return Ok(xi) };
        let zs = self.ty(z).shape.clone();
        let zi = self.op1(
            c,
            &format!("{what}_zp_i32"),
            Op::Cast { to: DType::I32 },
            vec![z],
        )?;
        let zi = if left && zs.len() == 1 && zs[0] != 1 {
            self.reshape(c, zi, vec![zs[0], 1], &format!("{}/{what}_zp_rows", c.name))?
        } else {
            zi
        };
        self.op1(
            c,
            &format!("{what}_centred"),
            Op::Binary(BinaryOp::Sub),
            vec![xi, zi],
        )
    }

    /// MatMulInteger: exact i32 product of zero-point-centred 8-bit operands.
    pub(super) fn matmul_integer(&mut self, c: &Ctx) -> R<()> {
        let (a, b) = (self.req(c, 0)?, self.req(c, 1)?);
        let (az, bz) = (self.inp(c, 2)?, self.inp(c, 3)?);
        let ai = self.int_centred(c, a, az, true, "a")?;
        let bi = self.int_centred(c, b, bz, false, "b")?;
        self.op_out(c, 0, Op::matmul(), vec![ai, bi])?;
        Ok(())
    }

    /// QLinearMatMul: exact i32 product, then `saturate(round(acc * a_s * b_s / y_s) + y_zp)`.
    pub(super) fn qlinear_matmul(&mut self, c: &Ctx) -> R<()> {
        let (a, a_s, a_z) = (self.req(c, 0)?, self.req(c, 1)?, self.inp(c, 2)?);
        let (b, b_s, b_z) = (self.req(c, 3)?, self.req(c, 4)?, self.inp(c, 5)?);
        let (y_s, y_z) = (self.req(c, 6)?, self.inp(c, 7)?);
        let dt = match y_z {
            Some(z) => self.ty(z).dtype,
            None => self.ty(a).dtype,
        };
        let ai = self.int_centred(c, a, a_z, true, "a")?;
        let bi = self.int_centred(c, b, b_z, false, "b")?;
        let acc = self.op1(c, "acc", Op::matmul(), vec![ai, bi])?;
        let acc = self.op1(c, "acc_f64", Op::Cast { to: DType::F64 }, vec![acc])?;
        // the combined scale in f32, applied in f64 (numpy's promotion in the reference)
        let (a_s, b_s, y_s) = (
            self.as_f32(c, a_s, "a_scale_f32")?,
            self.as_f32(c, b_s, "b_scale_f32")?,
            self.as_f32(c, y_s, "y_scale_f32")?,
        );
        let s = self.op1(c, "ab_scale", Op::Binary(BinaryOp::Mul), vec![a_s, b_s])?;
        let s = self.op1(c, "scale", Op::Binary(BinaryOp::Div), vec![s, y_s])?;
        let s = self.op1(c, "scale_f64", Op::Cast { to: DType::F64 }, vec![s])?;
        let v = self.op1(c, "scaled", Op::Binary(BinaryOp::Mul), vec![acc, s])?;
        self.requantize(c, v, y_z, dt, 0)?;
        Ok(())
    }

    /// LpPool: `(sum over the window of |x|^p)^(1/p)` as Pow -> AveragePool (padding counted) ->
    /// times the window size -> Pow.
    pub(super) fn lp_pool(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let dt = self.ty(x).dtype;
        let kernel = to_usizes(
            &c.ints("kernel_shape").ok_or("missing kernel_shape")?,
            "kernel_shape",
        )?;
        let p = c.i("p", 2);
        if p < 1 {
            return Err(format!("p={p} must be positive"));
        }
        let (strides, dilations, pads) = self.window(c, x, kernel.clone())?;
        let n: usize = kernel.iter().product();
        let a = PoolAttrs {
            kernel,
            strides,
            pads,
            dilations,
            ceil_mode: c.i("ceil_mode", 0) != 0,
            count_include_pad: true,
        };
        let ax = self.op1(c, "abs", Op::Unary(UnaryOp::Abs), vec![x])?;
        let pv = self.const_of(c, "p", dt, vec![], vec![p as f64])?;
        let xp = if p == 1 {
            ax
        } else if p == 2 {
            self.op1(c, "pow", Op::Binary(BinaryOp::Mul), vec![ax, ax])?
        } else {
            self.op1(c, "pow", Op::Binary(BinaryOp::Pow), vec![ax, pv])?
        };
        let m = self.op1(c, "window_mean", Op::AveragePool(a), vec![xp])?;
        let nv = self.const_of(c, "window", dt, vec![], vec![n as f64])?;
        let sum = self.op1(c, "window_sum", Op::Binary(BinaryOp::Mul), vec![m, nv])?;
        if p == 1 {
            let shape = self.ty(sum).shape.clone();
            self.op_out(c, 0, Op::Reshape { shape }, vec![sum])?;
        } else if p == 2 {
            self.op_out(c, 0, Op::Unary(UnaryOp::Sqrt), vec![sum])?;
        } else {
            let inv = self.const_of(c, "inv_p", dt, vec![], vec![1.0 / p as f64])?;
            self.op_out(c, 0, Op::Binary(BinaryOp::Pow), vec![sum, inv])?;
        }
        Ok(())
    }

    /// NonZero of a constant (its output shape depends on the values, so only a compile-time
    /// constant has a static shape): the i64 indices, one row per input dim.
    pub(super) fn non_zero(&mut self, c: &Ctx) -> R<()> {
        let x = self.const_in(c, 0)?.ok_or("missing input")?;
        let vals = x.as_f64();
        let sh = x.shape.clone();
        let st = kiln_ir::types::strides_of(&sh);
        let hits: Vec<usize> = (0..vals.len()).filter(|&i| vals[i] != 0.0).collect();
        let mut out = vec![0i64; sh.len() * hits.len()];
        for (k, &i) in hits.iter().enumerate() {
            for d in 0..sh.len() {
                out[d * hits.len() + k] = ((i / st[d]) % sh[d].max(1)) as i64;
            }
        }
        self.out_const(c, 0, CT::i64s(vec![sh.len(), hits.len()], out))
    }

    /// Einsum for one or two operands (with `...` and repeated labels = diagonals): diagonals
    /// via an identity mask and a sum, labels of one operand only are summed first, then one
    /// batched MatMul over [batch, left, contracted] x [batch, contracted, right] and a final
    /// transpose into the output's label order.
    pub(super) fn einsum(&mut self, c: &Ctx) -> R<()> {
        let eq: String = c
            .s("equation", "")
            .chars()
            .filter(|ch| !ch.is_whitespace())
            .collect();
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l.to_string(), Some(r.to_string())),
            None => (eq.clone(), None),
        };
        let terms: Vec<&str> = lhs.split(',').collect();
        if terms.is_empty() || terms.len() > 2 || terms.len() != c.n.input.len() {
            return Err(format!(
                "equation '{eq}': {} operands (1 or 2 supported)",
                c.n.input.len()
            ));
        }
        let ins: Vec<ValueId> = (0..terms.len()).map(|i| self.req(c, i)).collect::<R<_>>()?;
        // expand "..." into fresh upper-case labels, right-aligned across operands
        let ell = terms
            .iter()
            .zip(&ins)
            .map(|(t, &v)| {
                if t.contains("...") {
                    self.ty(v).rank() + 3 - t.len()
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0);
        let ell_labels: Vec<char> = (0..ell).map(|i| (b'A' + i as u8) as char).collect();
        let expand = |t: &str, rank: usize| -> R<Vec<char>> {
            let v: Vec<char> = if let Some((a, b)) = t.split_once("...") {
                let n = rank + 3 - t.len();
                let mut v: Vec<char> = a.chars().collect();
                v.extend(&ell_labels[ell - n..]);
                v.extend(b.chars());
                v
            } else {
                t.chars().collect()
            };
            if v.len() != rank || v.iter().any(|ch| !ch.is_ascii_alphabetic()) {
                return Err(format!("term '{t}' does not match rank {rank}"));
            }
            Ok(v)
        };
        let mut labels: Vec<Vec<char>> = Vec::new();
        for (t, &v) in terms.iter().zip(&ins) {
            labels.push(expand(t, self.ty(v).rank())?);
        }
        let out: Vec<char> = match &rhs {
            Some(r) => {
                if let Some((a, b)) = r.split_once("...") {
                    let mut v: Vec<char> = a.chars().collect();
                    v.extend(&ell_labels);
                    v.extend(b.chars());
                    v
                } else {
                    r.chars().collect()
                }
            }
            None => {
                // implicit: ellipsis labels, then labels seen once, alphabetically
                let mut all: Vec<char> = labels
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|ch| ch.is_ascii_lowercase())
                    .collect();
                all.sort_unstable();
                let once: Vec<char> = all
                    .iter()
                    .copied()
                    .filter(|ch| all.iter().filter(|x| *x == ch).count() == 1)
                    .collect();
                let mut v = ell_labels.clone();
                v.extend(once);
                v
            }
        };
        let mut ops: Vec<(ValueId, Vec<char>)> = Vec::new();
        for (k, (&v, ls)) in ins.iter().zip(&labels).enumerate() {
            let (v, ls) = self.einsum_diagonals(c, v, ls.clone(), k)?;
            // sum labels that appear nowhere else
            let others: Vec<char> = labels
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .flat_map(|(_, l)| l.clone())
                .chain(out.iter().copied())
                .collect();
            let sum_axes: Vec<usize> = (0..ls.len())
                .filter(|&d| !others.contains(&ls[d]))
                .collect();
            let (v, ls) = if sum_axes.is_empty() {
                (v, ls)
            } else {
                let r = self.op1(
                    c,
                    &format!("sum{k}"),
                    Op::Reduce {
                        kind: ReduceKind::Sum,
                        axes: sum_axes.clone(),
                        keepdims: false,
                    },
                    vec![v],
                )?;
                let ls: Vec<char> = (0..ls.len())
                    .filter(|d| !sum_axes.contains(d))
                    .map(|d| ls[d])
                    .collect();
                (r, ls)
            };
            ops.push((v, ls));
        }
        let (res, rl) = if ops.len() == 1 {
            ops.remove(0)
        } else {
            let (b, bl) = ops.pop().unwrap();
            let (a, al) = ops.pop().unwrap();
            let dim = |s: &Self, v: ValueId, ls: &[char], ch: char| {
                s.ty(v).shape[ls.iter().position(|x| *x == ch).unwrap()]
            };
            let batch: Vec<char> = al
                .iter()
                .copied()
                .filter(|ch| bl.contains(ch) && out.contains(ch))
                .collect();
            let contr: Vec<char> = al
                .iter()
                .copied()
                .filter(|ch| bl.contains(ch) && !out.contains(ch))
                .collect();
            let left: Vec<char> = al.iter().copied().filter(|ch| !bl.contains(ch)).collect();
            let right: Vec<char> = bl.iter().copied().filter(|ch| !al.contains(ch)).collect();
            for &ch in batch.iter().chain(&contr) {
                if dim(self, a, &al, ch) != dim(self, b, &bl, ch) {
                    return Err(format!("label '{ch}' has different sizes"));
                }
            }
            let perm_of = |ls: &[char], order: &[char]| -> Vec<usize> {
                order
                    .iter()
                    .map(|ch| ls.iter().position(|x| x == ch).unwrap())
                    .collect()
            };
            let prod = |s: &Self, v: ValueId, ls: &[char], set: &[char]| -> usize {
                set.iter().map(|&ch| dim(s, v, ls, ch)).product()
            };
            let (nb, nl, nk, nr) = (
                prod(self, a, &al, &batch),
                prod(self, a, &al, &left),
                prod(self, a, &al, &contr),
                prod(self, b, &bl, &right),
            );
            let a_order: Vec<char> = batch.iter().chain(&left).chain(&contr).copied().collect();
            let b_order: Vec<char> = batch.iter().chain(&contr).chain(&right).copied().collect();
            let at = self.op1(
                c,
                "a_t",
                Op::Transpose {
                    perm: perm_of(&al, &a_order),
                },
                vec![a],
            )?;
            let bt = self.op1(
                c,
                "b_t",
                Op::Transpose {
                    perm: perm_of(&bl, &b_order),
                },
                vec![b],
            )?;
            let a3 = self.reshape(c, at, vec![nb, nl, nk], &format!("{}/a3", c.name))?;
            let b3 = self.reshape(c, bt, vec![nb, nk, nr], &format!("{}/b3", c.name))?;
            let mm = self.op1(c, "matmul", Op::matmul(), vec![a3, b3])?;
            let mut shape = Vec::new();
            for &ch in &batch {
                shape.push(dim(self, a, &al, ch));
            }
            for &ch in &left {
                shape.push(dim(self, a, &al, ch));
            }
            for &ch in &right {
                shape.push(dim(self, b, &bl, ch));
            }
            let r = self.reshape(c, mm, shape, &format!("{}/unflat", c.name))?;
            let rl: Vec<char> = batch.iter().chain(&left).chain(&right).copied().collect();
            (r, rl)
        };
        if rl.len() != out.len() || out.iter().any(|ch| !rl.contains(ch)) {
            return Err(format!(
                "equation '{eq}': output labels {out:?} do not match {rl:?}"
            ));
        }
        let perm: Vec<usize> = out
            .iter()
            .map(|ch| rl.iter().position(|x| x == ch).unwrap())
            .collect();
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            let shape = self.ty(res).shape.clone();
            self.op_out(c, 0, Op::Reshape { shape }, vec![res])?;
        } else {
            self.op_out(c, 0, Op::Transpose { perm }, vec![res])?;
        }
        Ok(())
    }

    /// Repeated labels within one operand (`ii`): multiply by an identity mask over the two
    /// axes and sum one of them away, until every label is unique.
    fn einsum_diagonals(
        &mut self,
        c: &Ctx,
        mut v: ValueId,
        mut ls: Vec<char>,
        k: usize,
    ) -> R<(ValueId, Vec<char>)> {
        let mut step = 0;
        loop {
            let Some((i, j)) = (0..ls.len())
                .flat_map(|i| (i + 1..ls.len()).map(move |j| (i, j)))
                .find(|&(i, j)| ls[i] == ls[j])
            else {
                return Ok((v, ls));
            };
            let sh = self.ty(v).shape.clone();
            if sh[i] != sh[j] {
                return Err(format!(
                    "repeated label '{}' with sizes {} and {}",
                    ls[i], sh[i], sh[j]
                ));
            }
            let n = sh[i];
            let mut mshape = vec![1; sh.len()];
            mshape[i] = n;
            mshape[j] = n;
            let dt = self.ty(v).dtype;
            lowered_elems(&[n, n], "Einsum diagonal mask")?;
            let eye: Vec<f64> = (0..n * n).map(|q| (q / n == q % n) as u8 as f64).collect();
            let m = self.const_of(c, &format!("eye{k}_{step}"), dt, mshape, eye)?;
            let prod = self.op1(
                c,
                &format!("diag{k}_{step}"),
                Op::Binary(BinaryOp::Mul),
                vec![v, m],
            )?;
            v = self.op1(
                c,
                &format!("diag_sum{k}_{step}"),
                Op::Reduce {
                    kind: ReduceKind::Sum,
                    axes: vec![j],
                    keepdims: false,
                },
                vec![prod],
            )?;
            ls.remove(j);
            step += 1;
        }
    }

    /// ConvInteger / QLinearConv: exact i32 convolution of zero-point-centred operands (the
    /// weight zero point per tensor or per output channel); QLinearConv then adds the i32 bias
    /// and requantizes with `x_scale * w_scale / y_scale` (per tensor or per channel).
    pub(super) fn conv_integer(&mut self, c: &Ctx, qlinear: bool) -> R<()> {
        let (x, xz, w, wz) = if qlinear {
            (
                self.req(c, 0)?,
                self.inp(c, 2)?,
                self.req(c, 3)?,
                self.inp(c, 5)?,
            )
        } else {
            (
                self.req(c, 0)?,
                self.inp(c, 2)?,
                self.req(c, 1)?,
                self.inp(c, 3)?,
            )
        };
        let xi = self.op1(c, "x_i32", Op::Cast { to: DType::I32 }, vec![x])?;
        let xi = match xz {
            Some(z) => {
                let zi = self.op1(c, "x_zp_i32", Op::Cast { to: DType::I32 }, vec![z])?;
                let zi = self.reshape(c, zi, vec![], &format!("{}/x_zp", c.name))?;
                self.op1(c, "x_centred", Op::Binary(BinaryOp::Sub), vec![xi, zi])?
            }
            None => xi,
        };
        let wr = self.ty(w).rank();
        let wi = self.op1(c, "w_i32", Op::Cast { to: DType::I32 }, vec![w])?;
        let wi = match wz {
            Some(z) => {
                let zi = self.op1(c, "w_zp_i32", Op::Cast { to: DType::I32 }, vec![z])?;
                let n = self.ty(zi).numel();
                let mut shape = vec![n];
                shape.resize(wr, 1);
                let zi = if n == 1 {
                    self.reshape(c, zi, vec![], &format!("{}/w_zp", c.name))?
                } else {
                    self.reshape(c, zi, shape, &format!("{}/w_zp", c.name))?
                };
                self.op1(c, "w_centred", Op::Binary(BinaryOp::Sub), vec![wi, zi])?
            }
            None => wi,
        };
        let ws = self.ty(w).shape.clone();
        let kernel = ws[2..].to_vec();
        let (strides, dilations, pads) = self.window(c, x, kernel.clone())?;
        let a = ConvAttrs {
            kernel,
            strides,
            pads,
            dilations,
            groups: usize::try_from(c.i("group", 1)).map_err(|_| "bad group")?,
            epilogue: Vec::new(),
            layout: kiln_ir::Layout::Plain,
        };
        let mut ins = vec![xi, wi];
        if qlinear && let Some(b) = self.inp(c, 8)? {
            ins.push(self.op1(c, "bias_i32", Op::Cast { to: DType::I32 }, vec![b])?);
        }
        if !qlinear {
            self.op_out(c, 0, Op::Conv(a), ins)?;
            return Ok(());
        }
        let acc = self.op1(c, "acc", Op::Conv(a), ins)?;
        let acc = self.op1(c, "acc_f64", Op::Cast { to: DType::F64 }, vec![acc])?;
        let (x_s, w_s, y_s) = (self.req(c, 1)?, self.req(c, 4)?, self.req(c, 6)?);
        let (x_s, w_s, y_s) = (
            self.as_f32(c, x_s, "x_scale_f32")?,
            self.as_f32(c, w_s, "w_scale_f32")?,
            self.as_f32(c, y_s, "y_scale_f32")?,
        );
        let r = self.ty(acc).rank();
        let nw = self.ty(w_s).numel();
        let w_s = if nw == 1 {
            self.reshape(c, w_s, vec![], &format!("{}/w_scale_t", c.name))?
        } else {
            let mut shape = vec![1, nw];
            shape.resize(r, 1);
            self.reshape(c, w_s, shape, &format!("{}/w_scale_c", c.name))?
        };
        let s = self.op1(c, "xw_scale", Op::Binary(BinaryOp::Mul), vec![x_s, w_s])?;
        let s = self.op1(c, "scale", Op::Binary(BinaryOp::Div), vec![s, y_s])?;
        let s = self.op1(c, "scale_f64", Op::Cast { to: DType::F64 }, vec![s])?;
        let v = self.op1(c, "scaled", Op::Binary(BinaryOp::Mul), vec![acc, s])?;
        let yz = self.inp(c, 7)?;
        let dt = match yz {
            Some(z) => self.ty(z).dtype,
            None => self.ty(x).dtype,
        };
        self.requantize(c, v, yz, dt, 0)?;
        Ok(())
    }

    /// Resize through per-axis weight tables, computed exactly as the ONNX reference does
    /// (`onnx/reference/ops/op_resize.py`): nearest/linear/cubic coefficients (antialiased when
    /// downsampling with `antialias`), `cubic_coeff_a`, `exclude_outside`, every coordinate
    /// transform incl. `tf_crop_and_resize` (roi, extrapolation value) and
    /// `half_pixel_symmetric`, and `keep_aspect_ratio_policy`. One Resample node per resized axis.
    pub(super) fn resize_general(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let xs = self.ty(x).shape.clone();
        let r = xs.len();
        let (scales_in, sizes_in, axes) = self.resize_params(c, false, r)?;
        let mode = c.s("mode", "nearest");
        let coord = c.s("coordinate_transformation_mode", "half_pixel");
        let nearest = c.s("nearest_mode", "round_prefer_floor");
        let antialias = c.i("antialias", 0) != 0;
        let a_cubic = c.f("cubic_coeff_a", -0.75) as f64;
        let exclude = c.i("exclude_outside", 0) != 0;
        let extrap = c.f("extrapolation_value", 0.0);
        let policy = c.s("keep_aspect_ratio_policy", "stretch");
        if mode == "nearest" && antialias {
            return Err("antialias is not defined for mode=nearest".into());
        }
        // per-dim scale factors and output sizes (sizes may be adjusted by the aspect policy)
        let given_sizes = sizes_in.is_some();
        let (mut scale, mut out) = resize_output(&xs, &axes, scales_in, sizes_in.as_deref())?;
        if given_sizes && policy != "stretch" {
            let it = axes.iter().map(|&d| scale[d]);
            let s = match policy.as_str() {
                "not_larger" => it.fold(f64::INFINITY, f64::min),
                "not_smaller" => it.fold(0.0, f64::max),
                p => return Err(format!("unknown keep_aspect_ratio_policy '{p}'")),
            };
            for &d in &axes {
                scale[d] = s;
                out[d] = (s * xs[d] as f64 + 0.5) as usize;
            }
        }
        // roi: [starts.., ends..] over the listed axes (tf_crop_and_resize only)
        let mut roi = vec![(0f64, 1f64); r];
        if coord == "tf_crop_and_resize" {
            let rv = self
                .const_in(c, 1)?
                .ok_or("tf_crop_and_resize needs a roi")?
                .as_f64();
            let n = if rv.len() == 2 * axes.len() {
                axes.len()
            } else if rv.len() == 2 * r {
                r
            } else {
                return Err(format!(
                    "roi has {} values for {} axes",
                    rv.len(),
                    axes.len()
                ));
            };
            for k in 0..n {
                let d = if n == r { k } else { axes[k] };
                roi[d] = (rv[k] as f32 as f64, rv[n + k] as f32 as f64);
            }
        }
        let mut v = x;
        for &d in &axes {
            let identity =
                (scale[d] - 1.0).abs() < 1e-12 && out[d] == xs[d] && roi[d] == (0.0, 1.0);
            if identity {
                continue;
            }
            let t = ResizeTable {
                mode: &mode,
                nearest: &nearest,
                antialias,
                a_cubic,
                exclude,
                coord: &coord,
                in_w: xs[d],
                out_w: out[d],
                scale: scale[d],
                roi: roi[d],
            }
            .build()?;
            let taps = t.1.len() / out[d].max(1);
            let it = self.add_ct(
                &format!("{}/index{d}", c.name),
                CT::i64s(vec![out[d], taps], t.0).cast(DType::I32),
            )?;
            let wt = self.const_of(
                c,
                &format!("weight{d}"),
                DType::F32,
                vec![out[d], taps],
                t.1,
            )?;
            v = self.op1(
                c,
                &format!("axis{d}"),
                Op::Resample {
                    axis: d,
                    fill: extrap,
                },
                vec![v, it, wt],
            )?;
        }
        let shape = self.ty(v).shape.clone();
        self.op_out(c, 0, Op::Reshape { shape }, vec![v])?;
        Ok(())
    }
}

/// One axis of a general Resize: the reference's `_interpolate_1d_along_axis` as tables.
struct ResizeTable<'a> {
    mode: &'a str,
    nearest: &'a str,
    antialias: bool,
    a_cubic: f64,
    exclude: bool,
    coord: &'a str,
    in_w: usize,
    out_w: usize,
    scale: f64,
    roi: (f64, f64),
}

impl ResizeTable<'_> {
    fn coeffs(&self, ratio: f64) -> R<Vec<f64>> {
        let a = self.a_cubic;
        Ok(match self.mode {
            "nearest" => {
                if ratio.fract() == 0.0 {
                    vec![0.0, 1.0]
                } else {
                    let hi = match self.nearest {
                        "round_prefer_floor" => ratio > 0.5,
                        "round_prefer_ceil" => ratio >= 0.5,
                        "floor" => false,
                        "ceil" => true,
                        m => return Err(format!("unknown nearest_mode '{m}'")),
                    };
                    vec![(!hi) as u8 as f64, hi as u8 as f64]
                }
            }
            "linear" | "bilinear" if !self.antialias => vec![1.0 - ratio, ratio],
            "linear" | "bilinear" => {
                let s = self.scale.min(1.0);
                // the kernel widens to ~2/s taps: bound it before any integer math
                lowered_elems(
                    &[((2.0 / s).ceil() as usize).saturating_add(2)],
                    "Resize antialias taps",
                )?;
                let start = (-1.0 / s).floor() as i64 + 1;
                let footprint = 2 - 2 * start;
                let c: Vec<f64> = (start..start + footprint)
                    .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
            "cubic" if !self.antialias => {
                let r1 = ratio + 1.0;
                let q = 1.0 - ratio;
                let q1 = q + 1.0;
                vec![
                    ((a * r1 - 5.0 * a) * r1 + 8.0 * a) * r1 - 4.0 * a,
                    ((a + 2.0) * ratio - (a + 3.0)) * ratio * ratio + 1.0,
                    ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                    ((a * q1 - 5.0 * a) * q1 + 8.0 * a) * q1 - 4.0 * a,
                ]
            }
            "cubic" => {
                let s = self.scale.min(1.0);
                let f = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                lowered_elems(
                    &[((4.0 / s).ceil() as usize).saturating_add(2)],
                    "Resize antialias taps",
                )?;
                let start = (-2.0 / s).floor() as i64 + 1;
                let end = 2 - start;
                let c: Vec<f64> = (start..end).map(|i| f(s * (i as f64 - ratio))).collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
            m => return Err(format!("mode '{m}' is not supported")),
        })
    }

    /// (indices with -1 marking extrapolated rows, weights), `out_w x taps` each.
    fn build(&self) -> R<(Vec<i64>, Vec<f64>)> {
        let (in_w, out_i) = (self.in_w as f64, self.out_w);
        let out_f = self.scale * in_w;
        let s = self.scale;
        let mut idx = Vec::new();
        let mut wts = Vec::new();
        let mut taps = None;
        for y in 0..out_i {
            let yf = y as f64;
            let mut extrapolated = false;
            let x = match self.coord {
                "align_corners" => {
                    if out_f == 1.0 {
                        0.0
                    } else {
                        yf * (in_w - 1.0) / (out_f - 1.0)
                    }
                }
                "asymmetric" => yf / s,
                "tf_crop_and_resize" => {
                    let (r0, r1) = self.roi;
                    let x = if out_f == 1.0 {
                        (r1 - r0) * (in_w - 1.0) / 2.0
                    } else {
                        yf * (r1 - r0) * (in_w - 1.0) / (out_f - 1.0)
                    } + r0 * (in_w - 1.0);
                    extrapolated = x < 0.0 || x > in_w - 1.0;
                    x
                }
                "pytorch_half_pixel" => {
                    if out_f == 1.0 {
                        -0.5
                    } else {
                        (yf + 0.5) / s - 0.5
                    }
                }
                "half_pixel" => (yf + 0.5) / s - 0.5,
                "half_pixel_symmetric" => {
                    let adj = out_i as f64 / out_f;
                    let center = in_w / 2.0;
                    center * (1.0 - adj) + (yf + 0.5) / s - 0.5
                }
                m => {
                    return Err(format!(
                        "coordinate_transformation_mode '{m}' is not supported"
                    ));
                }
            };
            let xi = x.floor();
            let ratio = if x == xi { 1.0 } else { x - xi };
            let mut cf = self.coeffs(ratio)?;
            let n = cf.len();
            if taps.is_none() {
                lowered_elems(&[out_i, n], "Resize weight table")?;
            }
            if *taps.get_or_insert(n) != n {
                return Err("resize kernel size varies along an axis".into());
            }
            let pad = n.div_ceil(2) as f64;
            let xp = x + pad;
            let p = xp.floor();
            let frac = xp - p;
            let off = if n % 2 == 0 {
                if frac == 0.0 {
                    -((n / 2) as i64)
                } else {
                    -((n / 2) as i64) + 1
                }
            } else {
                let base = -(((n - 1) / 2) as i64);
                if frac <= 0.5 { base } else { base + 1 }
            };
            let start = p as i64 + off - pad as i64;
            let ids: Vec<i64> = (0..n as i64).map(|k| start + k).collect();
            if self.exclude {
                for (k, &i) in ids.iter().enumerate() {
                    if i < 0 || i >= self.in_w as i64 {
                        cf[k] = 0.0;
                    }
                }
                let sum: f64 = cf.iter().sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                for v in cf.iter_mut() {
                    *v /= sum;
                }
            }
            let hi = self.in_w as i64 - 1;
            for (k, &i) in ids.iter().enumerate() {
                idx.push(if extrapolated && k == 0 {
                    -1
                } else {
                    i.clamp(0, hi.max(0))
                });
            }
            wts.extend(cf);
        }
        Ok((idx, wts))
    }
}

impl Imp<'_> {
    /// MaxUnpool: the values scattered at their flat indices into zeros of the output shape
    /// (`output_shape`, or `(in - 1) * stride + kernel - pads` per spatial dim).
    pub(super) fn max_unpool(&mut self, c: &Ctx) -> R<()> {
        let (x, i) = (self.req(c, 0)?, self.req(c, 1)?);
        let xs = self.ty(x).shape.clone();
        let sp = xs
            .len()
            .checked_sub(2)
            .ok_or("input needs [N, C, spatial..]")?;
        // the indices address the inferred shape; output_shape only pads its end with zeros
        let inferred: Vec<usize> = {
            let k = to_usizes(
                &c.ints("kernel_shape").ok_or("missing kernel_shape")?,
                "kernel_shape",
            )?;
            let s = c
                .ints("strides")
                .map(|v| to_usizes(&v, "strides"))
                .transpose()?
                .unwrap_or(vec![1; sp]);
            let p = c
                .ints("pads")
                .map(|v| to_usizes(&v, "pads"))
                .transpose()?
                .unwrap_or(vec![0; 2 * sp]);
            if k.len() != sp || s.len() != sp || p.len() != 2 * sp {
                return Err("kernel_shape/strides/pads do not match the input rank".into());
            }
            let mut o = xs[..2].to_vec();
            for d in 0..sp {
                let full = (xs[2 + d].max(1) - 1) * s[d] + k[d];
                o.push(
                    full.checked_sub(p[d] + p[sp + d])
                        .ok_or("pads exceed the output")?,
                );
            }
            o
        };
        let requested = match self.const_in(c, 2)? {
            Some(o) => Some(to_usizes(&o.as_i64(), "output_shape")?),
            None => None,
        };
        if let Some(o) = &requested
            && (o.len() != xs.len()
                || o[..2] != xs[..2]
                || o.iter().zip(&inferred).any(|(a, b)| a < b))
        {
            return Err(format!(
                "output_shape {o:?} does not fit the unpooled shape {inferred:?}"
            ));
        }
        let out = inferred;
        let total: usize = out.iter().product();
        let n = self.ty(x).numel();
        let dt = self.ty(x).dtype;
        lowered_elems(&out, "MaxUnpool output")?;
        let zeros = self.const_of(c, "zeros", dt, vec![total], vec![0.0; total])?;
        let xf = self.reshape(c, x, vec![n], &format!("{}/values", c.name))?;
        let idf = self.reshape(c, i, vec![n], &format!("{}/indices", c.name))?;
        let sc = self.op1(
            c,
            "scattered",
            Op::ScatterElements {
                axis: 0,
                reduction: ScatterReduction::None,
            },
            vec![zeros, idf, xf],
        )?;
        match requested.filter(|o| *o != out) {
            None => {
                let name = self.out_name(c, 0);
                let v = self.reshape(c, sc, out, &name)?;
                self.set_out(c, 0, v)?;
            }
            Some(o) => {
                let v = self.reshape(c, sc, out.clone(), &format!("{}/unpooled", c.name))?;
                let r = o.len();
                let mut pads = vec![0i64; 2 * r];
                for d in 0..r {
                    pads[r + d] = (o[d] - out[d]) as i64;
                }
                let pad = Op::Pad {
                    pads,
                    mode: PadMode::Constant,
                    value: 0.0,
                };
                self.op_out(c, 0, pad, vec![v])?;
            }
        }
        Ok(())
    }

    pub(super) fn bit_cast(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let to = dtype_from_onnx(c.i("to", 0) as i32)?;
        self.op_out(c, 0, Op::BitCast { to }, vec![x])?;
        Ok(())
    }

    /// CenterCropPad: per listed axis, crop (centered, extra element at the start side like the
    /// reference) or zero-pad to the requested length.
    pub(super) fn center_crop_pad(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let want = self.const_in(c, 1)?.ok_or("missing shape")?.as_i64();
        let xs = self.ty(x).shape.clone();
        let r = xs.len();
        let axes: Vec<usize> = match c.ints("axes") {
            Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?,
            None => (0..r).collect(),
        };
        if want.len() != axes.len() {
            return Err(format!("{} lengths for {} axes", want.len(), axes.len()));
        }
        let mut pads = vec![0i64; 2 * r];
        for (k, &d) in axes.iter().enumerate() {
            let (n, w) = (xs[d] as i64, want[k]);
            if w < 0 {
                return Err(format!("negative length {w}"));
            }
            if w < n {
                let start = (n - w) / 2;
                pads[d] = -start;
                pads[r + d] = -(n - w - start);
            } else {
                let before = (w - n) / 2;
                pads[d] = before;
                pads[r + d] = w - n - before;
            }
        }
        self.op_out(
            c,
            0,
            Op::Pad {
                pads,
                mode: PadMode::Constant,
                value: 0.0,
            },
            vec![x],
        )?;
        Ok(())
    }

    /// Compress with a constant condition: a Gather of the selected indices (flattened input
    /// when no axis is given).
    pub(super) fn compress(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let cond = self.const_in(c, 1)?.ok_or("missing condition")?.as_i64();
        let xs = self.ty(x).shape.clone();
        let (x, axis) = match c.attr("axis") {
            Some(a) => (x, norm_axis(a.i(), xs.len())?),
            None => {
                let n = self.ty(x).numel();
                (self.reshape(c, x, vec![n], &format!("{}/flat", c.name))?, 0)
            }
        };
        let len = self.ty(x).shape[axis];
        let picks: Vec<i64> = cond
            .iter()
            .enumerate()
            .filter(|(i, v)| **v != 0 && *i < len)
            .map(|(i, _)| i as i64)
            .collect();
        let n = picks.len();
        let idx = self.add_ct(&format!("{}/selected", c.name), CT::i64s(vec![n], picks))?;
        self.op_out(c, 0, Op::Gather { axis }, vec![x, idx])?;
        Ok(())
    }

    /// Hann / Hamming / Blackman windows of a constant size: constants.
    pub(super) fn window_fn(&mut self, c: &Ctx, op: &str) -> R<()> {
        let size = self.const_in(c, 0)?.ok_or("missing size")?;
        let n = *size.as_i64().first().ok_or("size must be a scalar")?;
        let n = usize::try_from(n).map_err(|_| format!("size {n} must be non-negative"))?;
        let periodic = c.i("periodic", 1) != 0;
        let dt = dtype_from_onnx(c.i("output_datatype", 1) as i32)?;
        let denom = if periodic {
            n as f64
        } else {
            (n as f64 - 1.0).max(1.0)
        };
        let tau = 2.0 * std::f64::consts::PI;
        lowered_elems(&[n], "window size")?;
        let v: Vec<f64> = (0..n)
            .map(|i| {
                let t = tau * i as f64 / denom;
                match op {
                    "HannWindow" => 0.5 - 0.5 * t.cos(),
                    "HammingWindow" => 25.0 / 46.0 - (1.0 - 25.0 / 46.0) * t.cos(),
                    _ => 0.42 - 0.5 * t.cos() + 0.08 * (2.0 * t).cos(),
                }
            })
            .collect();
        let ct = CT {
            dtype: DType::F64,
            shape: vec![n],
            v: ce::Vals::F(v),
        }
        .cast(dt);
        self.out_const(c, 0, ct)
    }

    /// Col2Im: every column element is added into its image position (ScatterElements with
    /// add over a constant index table; taps in the padding go to one extra slot that is
    /// dropped).
    pub(super) fn col2im(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let img = to_usizes(
            &self.const_in(c, 1)?.ok_or("missing image_shape")?.as_i64(),
            "image_shape",
        )?;
        let blk = to_usizes(
            &self.const_in(c, 2)?.ok_or("missing block_shape")?.as_i64(),
            "block_shape",
        )?;
        let sp = img.len();
        let xs = self.ty(x).shape.clone();
        let kn: usize = blk.iter().product();
        if blk.len() != sp || xs.len() != 3 || kn == 0 || !xs[1].is_multiple_of(kn) {
            return Err(format!("input {xs:?} does not match block_shape {blk:?}"));
        }
        let get = |k: &str, d: usize| -> R<Vec<usize>> {
            match c.ints(k) {
                Some(v) => to_usizes(&v, k),
                None => Ok(vec![d; if k == "pads" { 2 * sp } else { sp }]),
            }
        };
        let (dil, pads, strides) = (get("dilations", 1)?, get("pads", 0)?, get("strides", 1)?);
        let (n, ch) = (xs[0], xs[1] / kn);
        // blocks per dim
        let nb: Vec<usize> = (0..sp)
            .map(|d| (img[d] + pads[d] + pads[sp + d] - dil[d] * (blk[d] - 1) - 1) / strides[d] + 1)
            .collect();
        let l: usize = nb.iter().product();
        if l != xs[2] {
            return Err(format!("{} blocks expected, input has {}", l, xs[2]));
        }
        let plane: usize = img.iter().product();
        let ist = kiln_ir::types::strides_of(&img);
        let kst = kiln_ir::types::strides_of(&blk);
        let bst = kiln_ir::types::strides_of(&nb);
        lowered_elems(&[n, ch * plane + 1], "Col2Im image")?;
        let mut idx = Vec::with_capacity(ch * kn * l);
        for cc in 0..ch {
            for k in 0..kn {
                for b in 0..l {
                    let mut off = Some(0usize);
                    for d in 0..sp {
                        let kd = (k / kst[d]) % blk[d];
                        let bd = (b / bst[d]) % nb[d];
                        let p = (bd * strides[d] + kd * dil[d]) as i64 - pads[d] as i64;
                        off = match off {
                            Some(o) if p >= 0 && (p as usize) < img[d] => {
                                Some(o + p as usize * ist[d])
                            }
                            _ => None,
                        };
                    }
                    idx.push(match off {
                        Some(o) => (cc * plane + o) as i64,
                        None => (ch * plane) as i64,
                    });
                }
            }
        }
        let total = ch * plane + 1;
        let dt = self.ty(x).dtype;
        let zeros = self.const_of(c, "zeros", dt, vec![n, total], vec![0.0; n * total])?;
        let per = ch * kn * l;
        let idx: Vec<i64> = (0..n).flat_map(|_| idx.iter().copied()).collect();
        let it = self.add_ct(&format!("{}/targets", c.name), CT::i64s(vec![n, per], idx))?;
        let xf = self.reshape(c, x, vec![n, per], &format!("{}/columns", c.name))?;
        let sc = self.op1(
            c,
            "scattered",
            Op::ScatterElements {
                axis: 1,
                reduction: ScatterReduction::Add,
            },
            vec![zeros, it, xf],
        )?;
        let sl = Op::Slice(SliceAttrs {
            starts: vec![0, 0],
            steps: vec![1, 1],
            sizes: vec![n, ch * plane],
        });
        let body = self.op1(c, "image", sl, vec![sc])?;
        let mut shape = vec![n, ch];
        shape.extend_from_slice(&img);
        let name = self.out_name(c, 0);
        let v = self.reshape(c, body, shape, &name)?;
        self.set_out(c, 0, v)?;
        Ok(())
    }

    /// An RNN gate activation by ONNX name.
    fn rnn_act(&mut self, c: &Ctx, name: &str, x: ValueId, what: &str) -> R<ValueId> {
        let op = match name.to_ascii_lowercase().as_str() {
            "sigmoid" => Op::Unary(UnaryOp::Sigmoid),
            "tanh" => Op::Unary(UnaryOp::Tanh),
            "relu" => Op::Unary(UnaryOp::Relu),
            a => return Err(format!("activation '{a}' is not supported")),
        };
        self.op1(c, what, op, vec![x])
    }

    /// Columns `[k*h, (k+1)*h)` of a `[B, G*h]` value.
    fn gate(&mut self, c: &Ctx, v: ValueId, k: usize, h: usize, what: &str) -> R<ValueId> {
        let b = self.ty(v).shape[0];
        let sl = Op::Slice(SliceAttrs {
            starts: vec![0, k * h],
            steps: vec![1, 1],
            sizes: vec![b, h],
        });
        self.op1(c, what, sl, vec![v])
    }

    fn add2(&mut self, c: &Ctx, a: ValueId, b: ValueId, what: &str) -> R<ValueId> {
        self.op1(c, what, Op::Binary(BinaryOp::Add), vec![a, b])
    }
    fn mul2(&mut self, c: &Ctx, a: ValueId, b: ValueId, what: &str) -> R<ValueId> {
        self.op1(c, what, Op::Binary(BinaryOp::Mul), vec![a, b])
    }

    /// RNN, GRU and LSTM (forward, reverse, bidirectional; layout 0/1; biases, initial states,
    /// sequence_lens masks, LSTM peepholes, clip, activations Sigmoid/Tanh/Relu) unrolled over
    /// the static sequence length: one MatMul for all input projections, then per step a
    /// recurrent MatMul and the gate arithmetic.
    pub(super) fn recurrent(&mut self, c: &Ctx, op: &str) -> R<()> {
        let g_n = match op {
            "RNN" => 1,
            "GRU" => 3,
            _ => 4,
        };
        let (x, w, r) = (self.req(c, 0)?, self.req(c, 1)?, self.req(c, 2)?);
        let bias = self.inp(c, 3)?;
        let seq_lens = self.inp(c, 4)?;
        let h0 = self.inp(c, 5)?;
        let c0 = if op == "LSTM" { self.inp(c, 6)? } else { None };
        let peep = if op == "LSTM" { self.inp(c, 7)? } else { None };
        let h = usize::try_from(c.i("hidden_size", 0))
            .ok()
            .filter(|&h| h > 0)
            .ok_or("hidden_size must be positive")?;
        let layout = c.i("layout", 0);
        let dir = c.s("direction", "forward");
        lowered_elems(&[h, 4 * h], "hidden_size")?;
        let dirs = if dir == "bidirectional" { 2 } else { 1 };
        if op == "LSTM" && c.i("input_forget", 0) != 0 {
            return Err("input_forget=1 is not supported".into());
        }
        let lbr = op == "GRU" && c.i("linear_before_reset", 0) != 0;
        let clip = c.attr("clip").map(|a| a.f());
        let acts: Vec<String> = match c.attr("activations") {
            Some(a) => a
                .strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            None => match op {
                "RNN" => vec!["Tanh".into(); dirs],
                "GRU" => ["Sigmoid", "Tanh"]
                    .repeat(dirs)
                    .into_iter()
                    .map(String::from)
                    .collect(),
                _ => ["Sigmoid", "Tanh", "Tanh"]
                    .repeat(dirs)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            },
        };
        let per_dir = acts.len() / dirs;
        if c.attr("activation_alpha").is_some() || c.attr("activation_beta").is_some() {
            return Err("activation_alpha/beta are not supported".into());
        }
        // X as [S, B, I]
        let x = if layout == 1 {
            self.op1(
                c,
                "x_seq_major",
                Op::Transpose {
                    perm: vec![1, 0, 2],
                },
                vec![x],
            )?
        } else {
            x
        };
        let xs = self.ty(x).shape.clone();
        let [steps, batch, _] = xs[..] else {
            return Err(format!("X {xs:?} must be 3-D"));
        };
        let dt = self.ty(x).dtype;
        let ws = self.ty(w).shape.clone();
        if ws.len() != 3 || ws[0] != dirs || ws[1] != g_n * h {
            return Err(format!("W {ws:?} must be [{dirs}, {}, input]", g_n * h));
        }
        let slice0 = |s: &Self, v: ValueId, d: usize| -> Op {
            let mut starts = vec![0; s.ty(v).rank()];
            starts[0] = d;
            let mut sizes = s.ty(v).shape.clone();
            sizes[0] = 1;
            let steps = vec![1; sizes.len()];
            Op::Slice(SliceAttrs {
                starts,
                steps,
                sizes,
            })
        };
        // states are [dirs, B, H] (layout 1: [B, dirs, H])
        let state_in =
            |s: &mut Self, v: Option<ValueId>, d: usize, what: &str| -> R<Option<ValueId>> {
                let Some(v) = v else { return Ok(None) };
                let v = if layout == 1 {
                    s.op1(
                        c,
                        &format!("{what}_dir_major"),
                        Op::Transpose {
                            perm: vec![1, 0, 2],
                        },
                        vec![v],
                    )?
                } else {
                    v
                };
                let op = slice0(s, v, d);
                let t = s.op1(c, &format!("{what}{d}"), op, vec![v])?;
                Ok(Some(s.reshape(
                    c,
                    t,
                    vec![batch, h],
                    &format!("{}/{what}{d}_2d", c.name),
                )?))
            };
        // sequence masks: step t is active for batch b when t < seq_lens[b]
        let lens = match seq_lens {
            Some(l) => {
                let l = if self.ty(l).dtype == DType::I64 {
                    l
                } else {
                    self.op1(c, "seq_lens_i64", Op::Cast { to: DType::I64 }, vec![l])?
                };
                Some(self.reshape(c, l, vec![batch, 1], &format!("{}/seq_lens_col", c.name))?)
            }
            None => None,
        };
        let zero = self.const_of(c, "zero", dt, vec![], vec![0.0])?;
        let one = self.const_of(c, "one", dt, vec![], vec![1.0])?;
        let mut ys: Vec<Vec<ValueId>> = Vec::new();
        let mut finals_h = Vec::new();
        let mut finals_c = Vec::new();
        for d in 0..dirs {
            let reverse = dir == "reverse" || d == 1;
            let act = |k: usize| acts[d * per_dir + k].clone();
            let op_w = slice0(self, w, d);
            let wd = self.op1(c, &format!("w{d}"), op_w, vec![w])?;
            let wd = self.reshape(c, wd, vec![g_n * h, xs[2]], &format!("{}/w{d}_2d", c.name))?;
            let wt = self.op1(
                c,
                &format!("w{d}_t"),
                Op::Transpose { perm: vec![1, 0] },
                vec![wd],
            )?;
            let op_r = slice0(self, r, d);
            let rd = self.op1(c, &format!("r{d}"), op_r, vec![r])?;
            let rd = self.reshape(c, rd, vec![g_n * h, h], &format!("{}/r{d}_2d", c.name))?;
            let rt = self.op1(
                c,
                &format!("r{d}_t"),
                Op::Transpose { perm: vec![1, 0] },
                vec![rd],
            )?;
            // all input projections at once: [S, B, G*H]
            let xw = self.op1(c, &format!("xw{d}"), Op::matmul(), vec![x, wt])?;
            let (wb, rb) = match bias {
                Some(b) => {
                    let op_b = slice0(self, b, d);
                    let bd = self.op1(c, &format!("b{d}"), op_b, vec![b])?;
                    let bd =
                        self.reshape(c, bd, vec![2 * g_n * h], &format!("{}/b{d}_1d", c.name))?;
                    let half = |k: usize| {
                        Op::Slice(SliceAttrs {
                            starts: vec![k * g_n * h],
                            steps: vec![1],
                            sizes: vec![g_n * h],
                        })
                    };
                    (
                        Some(self.op1(c, &format!("wb{d}"), half(0), vec![bd])?),
                        Some(self.op1(c, &format!("rb{d}"), half(1), vec![bd])?),
                    )
                }
                None => (None, None),
            };
            // input-side bias (GRU keeps the recurrent h-gate bias apart)
            let xw = match (wb, rb, op) {
                (Some(wb), Some(rb), "RNN" | "LSTM") => {
                    let b2 = self.add2(c, wb, rb, &format!("bias{d}"))?;
                    self.add2(c, xw, b2, &format!("xwb{d}"))?
                }
                (Some(wb), _, _) => self.add2(c, xw, wb, &format!("xwb{d}"))?,
                _ => xw,
            };
            let mut hs = match state_in(self, h0, d, "h0_")? {
                Some(v) => v,
                None => self.const_of(
                    c,
                    &format!("h_init{d}"),
                    dt,
                    vec![batch, h],
                    vec![0.0; batch * h],
                )?,
            };
            let mut cs = match state_in(self, c0, d, "c0_")? {
                Some(v) => v,
                None => self.const_of(
                    c,
                    &format!("c_init{d}"),
                    dt,
                    vec![batch, h],
                    vec![0.0; batch * h],
                )?,
            };
            let peeps = match peep {
                Some(p) => {
                    let op_p = slice0(self, p, d);
                    let pd = self.op1(c, &format!("p{d}"), op_p, vec![p])?;
                    let pd = self.reshape(c, pd, vec![1, 3 * h], &format!("{}/p{d}_2d", c.name))?;
                    Some((
                        self.gate(c, pd, 0, h, &format!("p{d}_i"))?,
                        self.gate(c, pd, 1, h, &format!("p{d}_o"))?,
                        self.gate(c, pd, 2, h, &format!("p{d}_f"))?,
                    ))
                }
                None => None,
            };
            let mut outs = vec![ValueId(0); steps];
            for s_ in 0..steps {
                let t = if reverse { steps - 1 - s_ } else { s_ };
                let tag = format!("{d}_{t}");
                let xt = Op::Slice(SliceAttrs {
                    starts: vec![t, 0, 0],
                    steps: vec![1, 1, 1],
                    sizes: vec![1, batch, g_n * h],
                });
                let xt = self.op1(c, &format!("x{tag}"), xt, vec![xw])?;
                let xt = self.reshape(
                    c,
                    xt,
                    vec![batch, g_n * h],
                    &format!("{}/x{tag}_2d", c.name),
                )?;
                let clipv = |s: &mut Self, v: ValueId, what: &str| -> R<ValueId> {
                    match clip {
                        Some(cl) => s.op1(c, what, Op::Clip { min: -cl, max: cl }, vec![v]),
                        None => Ok(v),
                    }
                };
                let (h_new, c_new) = match op {
                    "RNN" => {
                        let hr = self.op1(c, &format!("hr{tag}"), Op::matmul(), vec![hs, rt])?;
                        let g = self.add2(c, xt, hr, &format!("g{tag}"))?;
                        let g = clipv(self, g, &format!("g{tag}_clip"))?;
                        (self.rnn_act(c, &act(0), g, &format!("h{tag}"))?, None)
                    }
                    "GRU" => {
                        let (xz, xr, xh) = (
                            self.gate(c, xt, 0, h, &format!("xz{tag}"))?,
                            self.gate(c, xt, 1, h, &format!("xr{tag}"))?,
                            self.gate(c, xt, 2, h, &format!("xh{tag}"))?,
                        );
                        let hr = self.op1(c, &format!("hr{tag}"), Op::matmul(), vec![hs, rt])?;
                        let hr = match rb {
                            Some(rb) => self.add2(c, hr, rb, &format!("hrb{tag}"))?,
                            None => hr,
                        };
                        let (hz, hrr, hh) = (
                            self.gate(c, hr, 0, h, &format!("hz{tag}"))?,
                            self.gate(c, hr, 1, h, &format!("hr_{tag}"))?,
                            self.gate(c, hr, 2, h, &format!("hh{tag}"))?,
                        );
                        let z = self.add2(c, xz, hz, &format!("zs{tag}"))?;
                        let z = clipv(self, z, &format!("zs{tag}_clip"))?;
                        let z = self.rnn_act(c, &act(0), z, &format!("z{tag}"))?;
                        let rr = self.add2(c, xr, hrr, &format!("rs{tag}"))?;
                        let rr = clipv(self, rr, &format!("rs{tag}_clip"))?;
                        let rr = self.rnn_act(c, &act(0), rr, &format!("r{tag}"))?;
                        let cand = if lbr {
                            let t2 = self.mul2(c, rr, hh, &format!("rhh{tag}"))?;
                            self.add2(c, xh, t2, &format!("hs{tag}"))?
                        } else {
                            // (r * H) R_h^T + Rb_h
                            let rh = self.mul2(c, rr, hs, &format!("rh{tag}"))?;
                            let rht = Op::Slice(SliceAttrs {
                                starts: vec![0, 2 * h],
                                steps: vec![1, 1],
                                sizes: vec![h, h],
                            });
                            let rh_t = self.op1(c, &format!("r_h{tag}"), rht, vec![rt])?;
                            let m =
                                self.op1(c, &format!("rhm{tag}"), Op::matmul(), vec![rh, rh_t])?;
                            let m = match rb {
                                Some(rb) => {
                                    let rbh = Op::Slice(SliceAttrs {
                                        starts: vec![2 * h],
                                        steps: vec![1],
                                        sizes: vec![h],
                                    });
                                    let rbh = self.op1(c, &format!("rbh{tag}"), rbh, vec![rb])?;
                                    self.add2(c, m, rbh, &format!("rhmb{tag}"))?
                                }
                                None => m,
                            };
                            self.add2(c, xh, m, &format!("hs{tag}"))?
                        };
                        let cand = clipv(self, cand, &format!("hs{tag}_clip"))?;
                        let cand = self.rnn_act(c, &act(1), cand, &format!("hc{tag}"))?;
                        // H = (1 - z) * cand + z * H
                        let omz = self.op1(
                            c,
                            &format!("omz{tag}"),
                            Op::Binary(BinaryOp::Sub),
                            vec![one, z],
                        )?;
                        let a = self.mul2(c, omz, cand, &format!("a{tag}"))?;
                        let b = self.mul2(c, z, hs, &format!("b{tag}"))?;
                        (self.add2(c, a, b, &format!("h{tag}"))?, None)
                    }
                    _ => {
                        let hr = self.op1(c, &format!("hr{tag}"), Op::matmul(), vec![hs, rt])?;
                        let g = self.add2(c, xt, hr, &format!("g{tag}"))?;
                        let (gi, go, gf, gc) = (
                            self.gate(c, g, 0, h, &format!("gi{tag}"))?,
                            self.gate(c, g, 1, h, &format!("go{tag}"))?,
                            self.gate(c, g, 2, h, &format!("gf{tag}"))?,
                            self.gate(c, g, 3, h, &format!("gc{tag}"))?,
                        );
                        let (gi, gf) = match peeps {
                            Some((pi, _, pf)) => {
                                let a = self.mul2(c, pi, cs, &format!("pic{tag}"))?;
                                let b = self.mul2(c, pf, cs, &format!("pfc{tag}"))?;
                                (
                                    self.add2(c, gi, a, &format!("gip{tag}"))?,
                                    self.add2(c, gf, b, &format!("gfp{tag}"))?,
                                )
                            }
                            None => (gi, gf),
                        };
                        let gi = clipv(self, gi, &format!("gi{tag}_clip"))?;
                        let gf = clipv(self, gf, &format!("gf{tag}_clip"))?;
                        let gc = clipv(self, gc, &format!("gc{tag}_clip"))?;
                        let i = self.rnn_act(c, &act(0), gi, &format!("i{tag}"))?;
                        let f = self.rnn_act(c, &act(0), gf, &format!("f{tag}"))?;
                        let cc = self.rnn_act(c, &act(1), gc, &format!("cc{tag}"))?;
                        let fc = self.mul2(c, f, cs, &format!("fc{tag}"))?;
                        let ic = self.mul2(c, i, cc, &format!("ic{tag}"))?;
                        let cn = self.add2(c, fc, ic, &format!("c{tag}"))?;
                        let go = match peeps {
                            Some((_, po, _)) => {
                                let a = self.mul2(c, po, cn, &format!("poc{tag}"))?;
                                self.add2(c, go, a, &format!("gop{tag}"))?
                            }
                            None => go,
                        };
                        let go = clipv(self, go, &format!("go{tag}_clip"))?;
                        let o = self.rnn_act(c, &act(0), go, &format!("o{tag}"))?;
                        let tc = self.rnn_act(c, &act(2), cn, &format!("tc{tag}"))?;
                        (self.mul2(c, o, tc, &format!("h{tag}"))?, Some(cn))
                    }
                };
                // past a batch's sequence length: the state holds, the output is zero
                let (h_new, y_t, c_new) = match lens {
                    Some(l) => {
                        let tv = self.add_ct(
                            &format!("{}/t{tag}", c.name),
                            CT::i64s(vec![], vec![t as i64]),
                        )?;
                        let m = self.op1(
                            c,
                            &format!("active{tag}"),
                            Op::Compare(CmpOp::Less),
                            vec![tv, l],
                        )?;
                        let hn = self.op1(c, &format!("hm{tag}"), Op::Where, vec![m, h_new, hs])?;
                        let yt =
                            self.op1(c, &format!("y{tag}"), Op::Where, vec![m, h_new, zero])?;
                        let cn = match c_new {
                            Some(cn) => Some(self.op1(
                                c,
                                &format!("cm{tag}"),
                                Op::Where,
                                vec![m, cn, cs],
                            )?),
                            None => None,
                        };
                        (hn, yt, cn)
                    }
                    None => (h_new, h_new, c_new),
                };
                outs[t] = y_t;
                hs = h_new;
                if let Some(cn) = c_new {
                    cs = cn;
                }
            }
            ys.push(outs);
            finals_h.push(hs);
            finals_c.push(cs);
        }
        // Y: [S, dirs, B, H] (layout 1: [B, S, dirs, H])
        if c.out(0).is_some() {
            let mut per_t = Vec::new();
            #[allow(clippy::needless_range_loop)] // t indexes the inner vectors
            for t in 0..steps {
                let parts: Vec<ValueId> = (0..dirs)
                    .map(|d| {
                        self.reshape(
                            c,
                            ys[d][t],
                            vec![1, 1, batch, h],
                            &format!("{}/y{d}_{t}_4d", c.name),
                        )
                    })
                    .collect::<R<_>>()?;
                per_t.push(if dirs == 1 {
                    parts[0]
                } else {
                    self.op1(c, &format!("y_t{t}"), Op::Concat { axis: 1 }, parts)?
                });
            }
            let y = if steps == 1 {
                per_t[0]
            } else {
                self.op1(c, "y_all", Op::Concat { axis: 0 }, per_t)?
            };
            if layout == 1 {
                self.op_out(
                    c,
                    0,
                    Op::Transpose {
                        perm: vec![2, 0, 1, 3],
                    },
                    vec![y],
                )?;
            } else {
                let shape = self.ty(y).shape.clone();
                self.op_out(c, 0, Op::Reshape { shape }, vec![y])?;
            }
        }
        for (k, finals) in [(1usize, finals_h), (2, finals_c)] {
            if c.out(k).is_none() || (k == 2 && op != "LSTM") {
                continue;
            }
            let parts: Vec<ValueId> = finals
                .iter()
                .enumerate()
                .map(|(d, &v)| {
                    self.reshape(c, v, vec![1, batch, h], &format!("{}/final{k}_{d}", c.name))
                })
                .collect::<R<_>>()?;
            let v = if dirs == 1 {
                parts[0]
            } else {
                self.op1(c, &format!("final{k}"), Op::Concat { axis: 0 }, parts)?
            };
            if layout == 1 {
                self.op_out(
                    c,
                    k,
                    Op::Transpose {
                        perm: vec![1, 0, 2],
                    },
                    vec![v],
                )?;
            } else {
                let shape = self.ty(v).shape.clone();
                self.op_out(c, k, Op::Reshape { shape }, vec![v])?;
            }
        }
        Ok(())
    }

    /// DFT as matrix products with constant cos/sin tables: forward, inverse, one-sided
    /// (rfft) and inverse one-sided (irfft, Hermitian extension), `dft_length` padding or
    /// truncation, along any non-last axis. Input `[.., L, 1|2]`, output `[.., M, 2|1]`.
    pub(super) fn dft(&mut self, c: &Ctx) -> R<()> {
        let x = self.req(c, 0)?;
        let xs = self.ty(x).shape.clone();
        let r = xs.len();
        if r < 2 || !(1..=2).contains(&xs[r - 1]) {
            return Err(format!(
                "input {xs:?} needs a last dim of 1 (real) or 2 (complex)"
            ));
        }
        let axis = if self.opset >= 20 {
            match self.const_in(c, 2)? {
                Some(a) => *a.as_i64().first().ok_or("axis must be a scalar")?,
                None => -2,
            }
        } else {
            c.i("axis", 1)
        };
        let axis = norm_axis(axis, r)?;
        if axis == r - 1 {
            return Err("axis must not be the last (real/imaginary) dim".into());
        }
        let inverse = c.i("inverse", 0) != 0;
        let onesided = c.i("onesided", 0) != 0;
        let l = xs[axis];
        let n = match self.const_in(c, 1)? {
            Some(v) => usize::try_from(*v.as_i64().first().ok_or("dft_length must be a scalar")?)
                .map_err(|_| "dft_length must be non-negative")?,
            None if inverse && onesided => 2 * l.saturating_sub(1),
            None => l,
        };
        if n == 0 {
            return Err("dft_length must be positive".into());
        }
        let complex = xs[r - 1] == 2;
        let dt = self.ty(x).dtype;
        // real/imaginary parts with the signal axis last: [rest.., L]
        let mut perm: Vec<usize> = (0..r - 1).filter(|&d| d != axis).collect();
        perm.push(axis);
        let part = |s: &mut Self, k: usize, what: &str| -> R<ValueId> {
            let mut sizes = xs.clone();
            sizes[r - 1] = 1;
            let mut starts = vec![0; r];
            starts[r - 1] = k;
            let sl = Op::Slice(SliceAttrs {
                starts,
                steps: vec![1; r],
                sizes: sizes.clone(),
            });
            let v = s.op1(c, what, sl, vec![x])?;
            let v = s.reshape(
                c,
                v,
                sizes[..r - 1].to_vec(),
                &format!("{}/{what}_sq", c.name),
            )?;
            s.op1(
                c,
                &format!("{what}_t"),
                Op::Transpose { perm: perm.clone() },
                vec![v],
            )
        };
        // accumulate in f64 like the reference (near-zero outputs are sums of cancelling terms)
        let wide = |s: &mut Self, v: ValueId, what: &str| -> R<ValueId> {
            s.op1(
                c,
                &format!("{what}_f64"),
                Op::Cast { to: DType::F64 },
                vec![v],
            )
        };
        let re = part(self, 0, "re")?;
        let re = wide(self, re, "re")?;
        let im = if complex {
            let v = part(self, 1, "im")?;
            Some(wide(self, v, "im")?)
        } else {
            None
        };
        let tau = 2.0 * std::f64::consts::PI;
        let irfft = inverse && onesided;
        let m = if irfft {
            n
        } else if onesided {
            n / 2 + 1
        } else {
            n
        };
        let rows = l;
        lowered_elems(&[rows, m], "DFT table")?;
        // table(f) -> [rows, m] with f(n_in, k_out)
        let table = |f: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
            let mut v = vec![0.0; rows * m];
            for i in 0..rows {
                for k in 0..m {
                    v[i * m + k] = f(i, k);
                }
            }
            v
        };
        let nf = n as f64;
        let th = |i: usize, k: usize| tau * (i * k % n) as f64 / nf;
        // (re->re, im->re, re->im, im->im) coefficient tables
        let (rr, ir, ri, ii): (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) = if irfft {
            let half = n / 2 + 1;
            let w = |i: usize| {
                if i >= half || i >= n {
                    0.0
                } else if i == 0 || (n % 2 == 0 && i == n / 2) {
                    1.0
                } else {
                    2.0
                }
            };
            (
                table(&|i, k| w(i) * th(i, k).cos() / nf),
                table(&|i, k| -w(i) * th(i, k).sin() / nf),
                Vec::new(),
                Vec::new(),
            )
        } else {
            let live = |i: usize| if i < n { 1.0 } else { 0.0 };
            let sgn = if inverse { -1.0 } else { 1.0 };
            let sc = if inverse { 1.0 / nf } else { 1.0 };
            (
                table(&|i, k| live(i) * th(i, k).cos() * sc),
                table(&|i, k| live(i) * sgn * th(i, k).sin() * sc),
                table(&|i, k| -live(i) * sgn * th(i, k).sin() * sc),
                table(&|i, k| live(i) * th(i, k).cos() * sc),
            )
        };
        let mm = |s: &mut Self, v: ValueId, t: &[f64], what: &str| -> R<ValueId> {
            let tv = s.const_of(
                c,
                &format!("{what}_table"),
                DType::F64,
                vec![rows, m],
                t.to_vec(),
            )?;
            s.op1(c, what, Op::matmul(), vec![v, tv])
        };
        let mut out_re = mm(self, re, &rr, "re_re")?;
        if let Some(im) = im {
            let t = mm(self, im, &ir, "im_re")?;
            out_re = self.add2(c, out_re, t, "out_re")?;
        }
        // back to the input's dim order, with a trailing 1
        let mut inv = vec![0; r - 1];
        for (p, &d) in perm.iter().enumerate() {
            inv[d] = p;
        }
        let back = |s: &mut Self, v: ValueId, what: &str| -> R<ValueId> {
            let v = s.op1(c, &format!("{what}_narrow"), Op::Cast { to: dt }, vec![v])?;
            let t = s.op1(
                c,
                &format!("{what}_back"),
                Op::Transpose { perm: inv.clone() },
                vec![v],
            )?;
            let mut shape = s.ty(t).shape.clone();
            shape.push(1);
            s.reshape(c, t, shape, &format!("{}/{what}_1", c.name))
        };
        let out_re = back(self, out_re, "out_re")?;
        if irfft {
            let shape = self.ty(out_re).shape.clone();
            self.op_out(c, 0, Op::Reshape { shape }, vec![out_re])?;
            return Ok(());
        }
        let mut out_im = mm(self, re, &ri, "re_im")?;
        if let Some(im) = im {
            let t = mm(self, im, &ii, "im_im")?;
            out_im = self.add2(c, out_im, t, "out_im")?;
        }
        let out_im = back(self, out_im, "out_im")?;
        self.op_out(c, 0, Op::Concat { axis: r - 1 }, vec![out_re, out_im])?;
        Ok(())
    }
}
