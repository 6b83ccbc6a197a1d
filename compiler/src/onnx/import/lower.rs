//! ONNX ops lowered to compositions of primitive IR ops (the ONNX "function" idea): losses,
//! Trilu, normalizations, space/depth rearrangements, Tile, OneHot, EyeLike, ...
//! Each lowering produces exactly the ONNX semantics; passes may later fuse the pieces.

use super::*;

impl Imp<'_> {
    /// One IR node named `<onnx node>/<what>`, returning its first output.
    fn op1(&mut self, c: &Ctx, what: &str, op: Op, ins: Vec<ValueId>) -> R<ValueId> {
        let name = format!("{}/{what}", c.name);
        Ok(self.node(c, op, ins, &[name])?[0])
    }

    /// The same, but named as the ONNX node's output `i`.
    fn op_out(&mut self, c: &Ctx, i: usize, op: Op, ins: Vec<ValueId>) -> R<ValueId> {
        let name = self.out_name(c, i);
        let v = self.node(c, op, ins, &[name])?[0];
        self.set_out(c, i, v);
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
                self.set_out(c, 0, v);
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
}
