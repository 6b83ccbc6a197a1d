//! Vector math on `<w x float>` values, inline so that artefacts need no libm: `exp`
//! (Cephes' expf scheme), `erf` (Abramowitz-Stegun 7.1.26), sigmoid and tanh built on it, and
//! the fused epilogue steps of convolutions and matrix products in the same arithmetic as the
//! CPU back end's scalar `ew.rs` (within 2e-7 absolute of libm).

use kiln_ir::ops::{ActKind, EpilogueStep, UnaryOp};

use crate::{Emit, splat_const_i32};

/// Whether every step of an epilogue has a vector lowering here ([`Emit::epilogue`]).
pub fn epilogue_supported(steps: &[EpilogueStep]) -> bool {
    steps.iter().all(step_supported)
}

/// Whether an epilogue step has a vector lowering here.
pub fn step_supported(s: &EpilogueStep) -> bool {
    match s {
        EpilogueStep::Add | EpilogueStep::Clip { .. } => true,
        // only in elementwise chains, which run in Cranelift
        EpilogueStep::Mul => false,
        EpilogueStep::Unary(u) => matches!(
            u,
            UnaryOp::Relu
                | UnaryOp::HardSwish
                | UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::Gelu
                | UnaryOp::GeluTanh
        ),
        EpilogueStep::Act { kind, .. } => matches!(
            kind,
            ActKind::HardSigmoid | ActKind::LeakyRelu | ActKind::Affine | ActKind::Swish
        ),
    }
}

impl Emit {
    /// Horner's scheme: `c[0] x^(n-1) + .. + c[n-1]`.
    pub fn poly(&mut self, x: &str, c: &[f32]) -> String {
        let mut p = self.fsplat(c[0]);
        for &k in &c[1..] {
            p = self.fma(&p, x, &self.fsplat(k));
        }
        p
    }
    /// `e^x` (Cephes' single-precision scheme: `x = n ln 2 + r`, a degree-7 polynomial in `r`,
    /// `2^n` built in the exponent bits; within 2 ulp, infinity past the largest float,
    /// flushed to `2^-126` below it; NaN stays NaN).
    pub fn exp(&mut self, x0: &str) -> String {
        let w = self.w;
        let x = self.clamp(x0, -87.33654, 88.72283);
        let fx = self.fma(
            &x,
            &self.fsplat(std::f32::consts::LOG2_E),
            &self.fsplat(0.5),
        );
        let n = self.call1("floor", &fx);
        let cap = self.fsplat(127.0);
        let n = self.select("ogt", &n, &cap, &cap, &n);
        let n = self.select("uno", &n, &n, "zeroinitializer", &n);
        let r = self.fma(&n, &self.fsplat(-0.693_359_4), &x);
        let r = self.fma(&n, &self.fsplat(2.121_944_4e-4), &r);
        let p = self.poly(
            &r,
            &[
                1.987_569_1e-4,
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                0.166_666_65,
                0.5,
            ],
        );
        let r2 = self.bin("fmul", &r, &r);
        let y = self.fma(&p, &r2, &r);
        let y = self.bin("fadd", &y, &self.fsplat(1.0));
        let ni = self.tmp();
        self.line(&format!("  {ni} = fptosi {} {n} to <{w} x i32>", self.vt));
        let e = self.tmp();
        self.line(&format!(
            "  {e} = add <{w} x i32> {ni}, {}",
            splat_const_i32(w, 127)
        ));
        let e2 = self.tmp();
        self.line(&format!(
            "  {e2} = shl <{w} x i32> {e}, {}",
            splat_const_i32(w, 23)
        ));
        let sc = self.tmp();
        self.line(&format!("  {sc} = bitcast <{w} x i32> {e2} to {}", self.vt));
        let r = self.bin("fmul", &y, &sc);
        let (big, inf) = (self.fsplat(88.72283), self.fsplat(f32::INFINITY));
        let r = self.select("ogt", x0, &big, &inf, &r);
        // below the smallest normal result: 0 (exp(-inf) = 0 for masked Softmax entries)
        let small = self.fsplat(-87.33654);
        self.select("olt", x0, &small, "zeroinitializer", &r)
    }
    /// `ln x` (Cephes' single-precision scheme: `x = m 2^e` with `m` in `[sqrt(1/2),
    /// sqrt(2))`, a degree-8 polynomial in `m - 1`; within 2 ulp for normal `x`; `-inf` at
    /// 0, NaN below 0 and for NaN, `+inf` at `+inf`). Subnormal inputs are taken as 0.
    pub fn log(&mut self, x: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let bits = self.tmp();
        self.line(&format!("  {bits} = bitcast {vt} {x} to <{w} x i32>"));
        let eb = self.tmp();
        self.line(&format!(
            "  {eb} = lshr <{w} x i32> {bits}, {}",
            splat_const_i32(w, 23)
        ));
        let ei = self.tmp();
        self.line(&format!(
            "  {ei} = sub <{w} x i32> {eb}, {}",
            splat_const_i32(w, 126)
        ));
        let mb = self.tmp();
        self.line(&format!(
            "  {mb} = and <{w} x i32> {bits}, {}",
            splat_const_i32(w, 0x807f_ffff)
        ));
        let mb2 = self.tmp();
        self.line(&format!(
            "  {mb2} = or <{w} x i32> {mb}, {}",
            splat_const_i32(w, 0x3f00_0000)
        ));
        let m = self.tmp();
        self.line(&format!("  {m} = bitcast <{w} x i32> {mb2} to {vt}"));
        let e = self.tmp();
        self.line(&format!("  {e} = sitofp <{w} x i32> {ei} to {vt}"));
        // m in [0.5, 1): below sqrt(1/2) take 2m - 1 and e - 1, else m - 1
        let small = self.tmp();
        self.line(&format!(
            "  {small} = fcmp olt {vt} {m}, {}",
            self.fsplat(std::f32::consts::FRAC_1_SQRT_2)
        ));
        let one = self.fsplat(1.0);
        let m2 = self.bin("fadd", &m, &m);
        let a = self.bin("fsub", &m2, &one);
        let b = self.bin("fsub", &m, &one);
        let mm = self.tmp();
        self.line(&format!(
            "  {mm} = select <{w} x i1> {small}, {vt} {a}, {vt} {b}"
        ));
        let e1 = self.bin("fsub", &e, &one);
        let ee = self.tmp();
        self.line(&format!(
            "  {ee} = select <{w} x i1> {small}, {vt} {e1}, {vt} {e}"
        ));
        let z = self.bin("fmul", &mm, &mm);
        let p = self.poly(
            &mm,
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_9e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_8e-1,
                2.000_071_4e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
        );
        let y = self.bin("fmul", &p, &mm);
        let y = self.bin("fmul", &y, &z);
        let y = self.fma(&ee, &self.fsplat(-2.121_944_4e-4), &y);
        let y = self.fma(&z, &self.fsplat(-0.5), &y);
        let r = self.bin("fadd", &mm, &y);
        let r = self.fma(&ee, &self.fsplat(0.693_359_4), &r);
        // special values
        let inf = self.fsplat(f32::INFINITY);
        let r = self.select("oeq", x, &inf, &inf, &r);
        let tiny = self.fsplat(f32::MIN_POSITIVE);
        let r = self.select("olt", x, &tiny, &self.fsplat(f32::NEG_INFINITY), &r);
        let nan = self.fsplat(f32::NAN);
        let r = self.select("olt", x, "zeroinitializer", &nan, &r);
        self.select("uno", x, x, &nan, &r)
    }
    /// `1 + e^(k x)`.
    pub fn one_plus_exp(&mut self, x: &str, k: f32) -> String {
        let v = self.bin("fmul", x, &self.fsplat(k));
        let e = self.exp(&v);
        self.bin("fadd", &e, &self.fsplat(1.0))
    }
    /// `1 / (1 + e^(k x))` (the sigmoid for `k = -1`).
    pub fn sigmoid(&mut self, x: &str, k: f32) -> String {
        let d = self.one_plus_exp(x, k);
        self.bin("fdiv", &self.fsplat(1.0), &d)
    }
    /// `tanh x = 2 sigmoid(2x) - 1`, and for `|x| < 0.2` its odd Taylor polynomial to `x^9`
    /// (the subtraction would lose the relative precision of small results).
    pub fn tanh(&mut self, x: &str) -> String {
        let s = self.sigmoid(x, -2.0);
        let big = self.fma(&s, &self.fsplat(2.0), &self.fsplat(-1.0));
        let x2 = self.bin("fmul", x, x);
        let p = self.poly(&x2, &[62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0]);
        let x3 = self.bin("fmul", &x2, x);
        let small = self.fma(&p, &x3, x);
        let a = self.call1("fabs", x);
        let lim = self.fsplat(0.2);
        self.select("olt", &a, &lim, &small, &big)
    }
    /// `erf x` (Abramowitz & Stegun 7.1.26, absolute error below 2e-7 in f32):
    /// `1 - t (a1 + t (a2 + ..)) e^(-x^2)` with `t = 1 / (1 + p |x|)`, sign restored.
    pub fn erf(&mut self, x: &str) -> String {
        let a = self.call1("fabs", x);
        let one = self.fsplat(1.0);
        let d = self.fma(&a, &self.fsplat(0.327_591_1), &one);
        let t = self.bin("fdiv", &one, &d);
        let p = self.poly(
            &t,
            &[
                1.061_405_4,
                -1.453_152,
                1.421_413_8,
                -0.284_496_74,
                0.254_829_6,
            ],
        );
        let pt = self.bin("fmul", &p, &t);
        let a2 = self.bin("fmul", &a, &a);
        let na2 = self.bin("fsub", "zeroinitializer", &a2);
        let e = self.exp(&na2);
        let m = self.bin("fmul", &pt, &e);
        let r = self.bin("fsub", &one, &m);
        let (w, vt) = (self.w, self.vt.clone());
        let s = self.tmp();
        self.line(&format!(
            "  {s} = call {vt} @llvm.copysign.v{w}f32({vt} {r}, {vt} {x})"
        ));
        s
    }
    /// `0.5 x (1 + v)`.
    pub fn half_x_one_plus(&mut self, x: &str, v: &str) -> String {
        let one = self.fsplat(1.0);
        let s = self.bin("fadd", v, &one);
        let h = self.bin("fmul", x, &self.fsplat(0.5));
        self.bin("fmul", &h, &s)
    }
    /// The epilogue steps on one vector, in the same arithmetic as `ew.rs`.
    pub fn epilogue(&mut self, steps: &[EpilogueStep], x: &str, operands: &[String]) -> String {
        let mut x = x.to_string();
        let mut operands = operands.iter();
        for s in steps {
            x = match *s {
                EpilogueStep::Add => {
                    let r = operands.next().expect("epilogue operand");
                    self.bin("fadd", &x, r)
                }
                EpilogueStep::Clip { min, max } => self.clamp(&x, min, max),
                EpilogueStep::Unary(UnaryOp::Relu) => {
                    let z = "zeroinitializer";
                    self.select("ogt", &x, z, &x, z)
                }
                EpilogueStep::Unary(UnaryOp::HardSwish) => {
                    let a = self.fsplat(1.0 / 6.0);
                    let h = self.fsplat(0.5);
                    let v = self.bin("fmul", &x, &a);
                    let v = self.bin("fadd", &v, &h);
                    let v = self.clamp(&v, 0.0, 1.0);
                    self.bin("fmul", &x, &v)
                }
                EpilogueStep::Act {
                    kind: ActKind::HardSigmoid,
                    alpha,
                    beta,
                } => {
                    let (a, bt) = (self.fsplat(alpha), self.fsplat(beta));
                    let v = self.bin("fmul", &x, &a);
                    let v = self.bin("fadd", &v, &bt);
                    self.clamp(&v, 0.0, 1.0)
                }
                EpilogueStep::Act {
                    kind: ActKind::LeakyRelu,
                    alpha,
                    ..
                } => {
                    let a = self.fsplat(alpha);
                    let neg = self.bin("fmul", &x, &a);
                    self.select("olt", &x, "zeroinitializer", &neg, &x)
                }
                EpilogueStep::Act {
                    kind: ActKind::Affine,
                    alpha,
                    beta,
                } => {
                    let (a, bt) = (self.fsplat(alpha), self.fsplat(beta));
                    let v = self.bin("fmul", &x, &a);
                    self.bin("fadd", &v, &bt)
                }
                EpilogueStep::Unary(UnaryOp::Sigmoid) => self.sigmoid(&x, -1.0),
                EpilogueStep::Act {
                    kind: ActKind::Swish,
                    alpha,
                    ..
                } => {
                    // x / (1 + e^(-alpha x)), as the interpreter: -0 for huge negative x
                    let d = self.one_plus_exp(&x, -alpha);
                    self.bin("fdiv", &x, &d)
                }
                EpilogueStep::Unary(UnaryOp::Tanh) => self.tanh(&x),
                EpilogueStep::Unary(UnaryOp::Gelu) => {
                    // 0.5 x (1 + erf(x / sqrt 2))
                    let v = self.bin("fmul", &x, &self.fsplat(std::f32::consts::FRAC_1_SQRT_2));
                    let e = self.erf(&v);
                    self.half_x_one_plus(&x, &e)
                }
                EpilogueStep::Unary(UnaryOp::GeluTanh) => {
                    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                    let x2 = self.bin("fmul", &x, &x);
                    let c = self.fsplat(0.044715);
                    let one = self.fsplat(1.0);
                    let p = self.fma(&x2, &c, &one);
                    let v = self.bin("fmul", &x, &p);
                    let k = self.fsplat((2.0 / std::f64::consts::PI).sqrt() as f32);
                    let v = self.bin("fmul", &v, &k);
                    let t = self.tanh(&v);
                    self.half_x_one_plus(&x, &t)
                }
                _ => unreachable!("step_supported() admits only the steps above: {s:?}"),
            };
        }
        x
    }
}
