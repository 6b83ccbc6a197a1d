//! LLVM IR text generation: fresh SSA names, loops, masked vector loads and stores, the fused
//! epilogue steps and vector math (exp, erf, sigmoid, tanh) shared by the kernel generators
//! (`ukernel.rs`, `rows.rs`).

use kiln_ir::ops::{ActKind, EpilogueStep, UnaryOp};

/// An epilogue operand as the store of one output row reads it.
pub(crate) enum Src {
    /// A vector at the store's offset from this row pointer (masked like the store).
    Vec(String),
    /// One value for the whole row.
    Splat(String),
}

/// Declarations every kernel module needs for `lanes`-wide vectors.
pub(crate) fn declarations(lanes: usize) -> String {
    let w = lanes;
    let vt = format!("<{w} x float>");
    format!(
        "declare {vt} @llvm.fma.v{w}f32({vt}, {vt}, {vt})\n\
         declare {vt} @llvm.masked.load.v{w}f32.p0v{w}f32({vt}*, i32, <{w} x i1>, {vt})\n\
         declare void @llvm.masked.store.v{w}f32.p0v{w}f32({vt}, {vt}*, i32, <{w} x i1>)\n\
         declare {vt} @llvm.floor.v{w}f32({vt})\n\
         declare {vt} @llvm.fabs.v{w}f32({vt})\n\
         declare {vt} @llvm.copysign.v{w}f32({vt}, {vt})\n\
         declare float @llvm.vector.reduce.fadd.v{w}f32(float, {vt})\n\
         declare float @llvm.vector.reduce.fmax.v{w}f32({vt})\n\
         declare float @llvm.sqrt.f32(float)\n{}",
        // masked loads and stores of the narrower segments the channel-lane kernels store
        [4, 8]
            .iter()
            .filter(|&&n| n < w)
            .map(|n| format!(
                "declare <{n} x float> @llvm.masked.load.v{n}f32.p0v{n}f32(<{n} x float>*, i32, <{n} x i1>, <{n} x float>)\n\
                 declare void @llvm.masked.store.v{n}f32.p0v{n}f32(<{n} x float>, <{n} x float>*, i32, <{n} x i1>)\n"
            ))
            .collect::<String>()
    )
}

/// The `<w x i1>` mask with every lane set (a store or load that needs no mask).
pub(crate) fn all_lanes(w: usize) -> String {
    format!("<{}>", vec!["i1 true"; w].join(", "))
}

pub(crate) fn iota(w: usize, from: usize) -> String {
    let items: Vec<String> = (0..w).map(|i| format!("i32 {}", from + i)).collect();
    format!("<{}>", items.join(", "))
}

pub(crate) fn splat_const_i32(w: usize, v: i64) -> String {
    let items: Vec<String> = (0..w).map(|_| format!("i32 {v}")).collect();
    format!("<{}>", items.join(", "))
}

pub(crate) fn fconst(v: f32) -> String {
    // LLVM wants float constants as the hex of the f64 with the same value
    format!("0x{:016X}", (v as f64).to_bits())
}

/// IR text with fresh SSA names.
pub(crate) struct Emit {
    pub s: String,
    n: usize,
    pub w: usize,
    pub vt: String,
    /// Module-level metadata of this function (loop hints), written after its body.
    meta: String,
}

/// Metadata ids, unique in every module this process writes.
static META_IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Emit {
    pub(crate) fn new(w: usize) -> Emit {
        Emit {
            s: String::new(),
            n: 0,
            w,
            vt: format!("<{w} x float>"),
            meta: String::new(),
        }
    }
    /// `, !llvm.loop !N` for a loop's back-edge branch: keep the loop rolled. The register
    /// tiles use (nearly) every vector register; unrolled, LLVM's scheduler hoists the next
    /// iteration's loads and spills an accumulator into the FMA chain (AVX2 6x16 tile with a
    /// GELU epilogue: 1.8x slower).
    pub(crate) fn no_unroll(&mut self) -> String {
        let id = META_IDS.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let (l, d) = (id, id + 1);
        self.meta.push_str(&format!(
            "!{l} = distinct !{{!{l}, !{d}}}\n!{d} = !{{!\"llvm.loop.unroll.disable\"}}\n"
        ));
        format!(", !llvm.loop !{l}")
    }
    /// `define void @name(<params>, i64 %t0, i64 %t1)` and the loop over work items `%<iv>` in
    /// `t0..t1` whose latch is block `latch` (closed by [`Self::items_end`]).
    pub(crate) fn items_begin(
        &mut self,
        name: &str,
        params: &str,
        attrs_group: usize,
        iv: &str,
        latch: &str,
    ) {
        self.line(&format!(
            "define void @{name}({params}, i64 %t0, i64 %t1) #{attrs_group} {{"
        ));
        self.line("entry:");
        self.line("  %any = icmp ult i64 %t0, %t1");
        self.line("  br i1 %any, label %item, label %done");
        self.line("item:");
        self.line(&format!(
            "  %{iv} = phi i64 [ %t0, %entry ], [ %{iv}_n, %{latch} ]"
        ));
    }
    /// The latch of [`Self::items_begin`]'s loop (in the current block) and the function's end.
    pub(crate) fn items_end(&mut self, iv: &str) {
        self.line(&format!("  %{iv}_n = add i64 %{iv}, 1"));
        self.line(&format!("  %{iv}_e = icmp eq i64 %{iv}_n, %t1"));
        self.line(&format!("  br i1 %{iv}_e, label %done, label %item"));
        self.line("done:");
        self.line("  ret void");
        self.line("}");
        let meta = std::mem::take(&mut self.meta);
        self.s.push_str(&meta);
    }
    /// Open `for i in lo..hi` (constant bounds, `lo < hi` not required); returns the induction
    /// variable. Close with [`Self::loop_end`]; code then continues in block `<tag>_exit`.
    pub(crate) fn loop_begin(&mut self, tag: &str, lo: usize, hi: usize) -> String {
        self.line(&format!("  br label %{tag}_pre"));
        self.line(&format!("{tag}_pre:"));
        self.line(&format!("  br label %{tag}_head"));
        self.line(&format!("{tag}_head:"));
        let iv = format!("%{tag}_i");
        self.line(&format!(
            "  {iv} = phi i64 [ {lo}, %{tag}_pre ], [ %{tag}_n, %{tag}_latch ]"
        ));
        self.line(&format!("  %{tag}_c = icmp ult i64 {iv}, {hi}"));
        self.line(&format!(
            "  br i1 %{tag}_c, label %{tag}_body, label %{tag}_exit"
        ));
        self.line(&format!("{tag}_body:"));
        iv
    }
    /// Close a loop opened by [`Self::loop_begin`].
    pub(crate) fn loop_end(&mut self, tag: &str, iv: &str) {
        self.line(&format!("  br label %{tag}_latch"));
        self.line(&format!("{tag}_latch:"));
        self.line(&format!("  %{tag}_n = add i64 {iv}, 1"));
        self.line(&format!("  br label %{tag}_head"));
        self.line(&format!("{tag}_exit:"));
    }
    /// `row[lo..hi] = 0` as a loop (LLVM turns it into a memset).
    pub(crate) fn zero_fill(&mut self, tag: &str, row: &str, lo: usize, hi: usize) {
        if lo >= hi {
            return;
        }
        let i = self.loop_begin(tag, lo, hi);
        let p = self.tmp();
        self.line(&format!(
            "  {p} = getelementptr float, float* {row}, i64 {i}"
        ));
        self.line(&format!("  store float 0.0, float* {p}, align 4"));
        self.loop_end(tag, &i);
    }
    /// Apply the epilogue to accumulator `acc` and store the lanes of mask `m` at `off` floats
    /// after `out`; the operands of its `Add` steps come from `srcs` in order (vectors read at
    /// the same offset under the same mask).
    pub(crate) fn store_tile(
        &mut self,
        steps: &[EpilogueStep],
        acc: &str,
        m: &str,
        (out, srcs): (&str, &[Src]),
        off: usize,
    ) {
        let w = self.w;
        let ops: Vec<String> = srcs
            .iter()
            .map(|s| match s {
                Src::Vec(rp) => {
                    let p = self.gep_vec(rp, off);
                    self.masked_load(&p, m)
                }
                Src::Splat(v) => v.clone(),
            })
            .collect();
        let val = self.epilogue(steps, acc, &ops);
        let p = self.gep_vec(out, off);
        self.store_masked(w, &val, &p, m);
    }
    /// Whether masked vector stores are cheap on the target: AVX-512 (`w == 16`) stores under
    /// a `k` mask at the cost of a plain store; AVX2's `vmaskmovps` takes ~12 cycles on AMD
    /// Zen 2/3 (measured here: 3.9 ns against 0.95 for a plain store) and NEON has no masked
    /// store at all (LLVM writes lane by lane).
    fn cheap_masked_stores(&self) -> bool {
        self.w >= 16
    }
    /// Store the `n`-lane vector `val` at `p` (an `<n x float>*`) under the run-time mask `m`:
    /// where masked stores are dear, a plain store when every lane is set (the common case:
    /// tiles inside the output) and the masked store only otherwise. Splits the current block.
    pub(crate) fn store_masked(&mut self, n: usize, val: &str, p: &str, m: &str) {
        let st = format!("<{n} x float>");
        let masked = format!(
            "  call void @llvm.masked.store.v{n}f32.p0v{n}f32({st} {val}, {st}* {p}, i32 4, <{n} x i1> {m})"
        );
        if self.cheap_masked_stores() {
            return self.line(&masked);
        }
        let bits = self.tmp();
        self.line(&format!("  {bits} = bitcast <{n} x i1> {m} to i{n}"));
        let full = self.tmp();
        self.line(&format!("  {full} = icmp eq i{n} {bits}, -1"));
        let l = self.label();
        self.line(&format!("  br i1 {full}, label %{l}_all, label %{l}_some"));
        self.line(&format!("{l}_all:"));
        self.line(&format!("  store {st} {val}, {st}* {p}, align 4"));
        self.line(&format!("  br label %{l}_done"));
        self.line(&format!("{l}_some:"));
        self.line(&masked);
        self.line(&format!("  br label %{l}_done"));
        self.line(&format!("{l}_done:"));
    }
    /// Store lanes `0..count` (a compile-time count, `1..=n`) of the `n`-lane vector `val` at
    /// `p` (an `<n x float>*`), if the run-time `i1` `valid` holds. Where masked stores are
    /// dear, the lanes go out as plain stores of power-of-two pieces (7 = 4 + 2 + 1) behind a
    /// branch on `valid`. Splits the current block.
    pub(crate) fn store_prefix(&mut self, n: usize, val: &str, p: &str, count: usize, valid: &str) {
        let st = format!("<{n} x float>");
        if self.cheap_masked_stores() {
            let lanes: Vec<String> = (0..n).map(|i| format!("i1 {}", i < count)).collect();
            let m = self.tmp();
            self.line(&format!(
                "  {m} = select i1 {valid}, <{n} x i1> <{}>, <{n} x i1> zeroinitializer",
                lanes.join(", ")
            ));
            return self.line(&format!(
                "  call void @llvm.masked.store.v{n}f32.p0v{n}f32({st} {val}, {st}* {p}, i32 4, <{n} x i1> {m})"
            ));
        }
        let l = self.label();
        self.line(&format!("  br i1 {valid}, label %{l}_st, label %{l}_done"));
        self.line(&format!("{l}_st:"));
        let base = self.tmp();
        self.line(&format!("  {base} = bitcast {st}* {p} to float*"));
        let mut at = 0;
        while at < count {
            let k = 1usize << (usize::BITS - 1 - (count - at).leading_zeros());
            let q = self.tmp();
            self.line(&format!(
                "  {q} = getelementptr float, float* {base}, i64 {at}"
            ));
            if k == 1 {
                let x = self.tmp();
                self.line(&format!("  {x} = extractelement {st} {val}, i32 {at}"));
                self.line(&format!("  store float {x}, float* {q}, align 4"));
            } else {
                let idx: Vec<String> = (at..at + k).map(|i| format!("i32 {i}")).collect();
                let part = self.tmp();
                self.line(&format!(
                    "  {part} = shufflevector {st} {val}, {st} undef, <{k} x i32> <{}>",
                    idx.join(", ")
                ));
                let qv = self.tmp();
                self.line(&format!("  {qv} = bitcast float* {q} to <{k} x float>*"));
                self.line(&format!(
                    "  store <{k} x float> {part}, <{k} x float>* {qv}, align 4"
                ));
            }
            at += k;
        }
        self.line(&format!("  br label %{l}_done"));
        self.line(&format!("{l}_done:"));
    }
    /// Transpose `rows.len()` (a power of two `n <= w`) vectors: the result's vector `j` holds,
    /// at lane `s * n + p`, lane `s * n + j` of row `p` (an `n x n` transpose of every block of
    /// `n` lanes). One swap of a row-index bit with a lane-index bit per stage, each a
    /// two-source shuffle.
    pub(crate) fn transpose(&mut self, rows: &[String]) -> Vec<String> {
        let (w, vt) = (self.w, self.vt.clone());
        let n = rows.len();
        assert!(
            n.is_power_of_two() && n <= w,
            "transpose of {n} rows of {w} lanes"
        );
        let mut v = rows.to_vec();
        let mut bit = 1;
        while bit < n {
            let lo: Vec<String> = (0..w)
                .map(|q| format!("i32 {}", if q & bit == 0 { q } else { w + q - bit }))
                .collect();
            let hi: Vec<String> = (0..w)
                .map(|q| format!("i32 {}", if q & bit == 0 { q + bit } else { w + q }))
                .collect();
            for i in (0..n).filter(|i| i & bit == 0) {
                let (x, y) = (v[i].clone(), v[i | bit].clone());
                for (k, mask) in [(i, &lo), (i | bit, &hi)] {
                    let r = self.tmp();
                    self.line(&format!(
                        "  {r} = shufflevector {vt} {x}, {vt} {y}, <{w} x i32> <{}>",
                        mask.join(", ")
                    ));
                    v[k] = r;
                }
            }
            bit <<= 1;
        }
        v
    }
    /// Lanes `from..from + n` of a vector as an `n`-lane vector (the vector itself if `n == w`).
    pub(crate) fn slice(&mut self, x: &str, from: usize, n: usize) -> String {
        if n == self.w {
            return x.to_string();
        }
        let vt = self.vt.clone();
        let idx: Vec<String> = (from..from + n).map(|i| format!("i32 {i}")).collect();
        let r = self.tmp();
        self.line(&format!(
            "  {r} = shufflevector {vt} {x}, {vt} undef, <{n} x i32> <{}>",
            idx.join(", ")
        ));
        r
    }
    /// The `w / n` vectors of `n` lanes in `parts` as one `w`-lane vector.
    pub(crate) fn concat(&mut self, parts: &[String]) -> String {
        let w = self.w;
        let n = w / parts.len();
        if parts.len() == 1 {
            return parts[0].clone();
        }
        let mut cur: Vec<String> = parts.to_vec();
        let mut len = n;
        while cur.len() > 1 {
            let idx: Vec<String> = (0..2 * len).map(|i| format!("i32 {i}")).collect();
            let mut next = Vec::new();
            for pair in cur.chunks(2) {
                let r = self.tmp();
                self.line(&format!(
                    "  {r} = shufflevector <{len} x float> {}, <{len} x float> {}, <{} x i32> <{}>",
                    pair[0],
                    pair[1],
                    2 * len,
                    idx.join(", ")
                ));
                next.push(r);
            }
            cur = next;
            len *= 2;
        }
        cur.pop().unwrap()
    }
    /// The mask of the lanes `l` of a vector starting at element `from` with `from + l < limit`
    /// (compile-time bounds: tails of rows, tiles and columns).
    pub(crate) fn lanes_below(&mut self, from: usize, limit: usize) -> String {
        let w = self.w;
        let m = self.tmp();
        self.line(&format!(
            "  {m} = icmp slt <{w} x i32> {}, {}",
            iota(w, from),
            splat_const_i32(w, limit as i64)
        ));
        m
    }
    pub(crate) fn tmp(&mut self) -> String {
        self.n += 1;
        format!("%v{}", self.n)
    }
    /// Vector phis joining two predecessors pairwise: `a[i]` from block `from_a`, `b[i]` from
    /// `from_b` (an accumulator after a skipped or computed row).
    pub(crate) fn phis(
        &mut self,
        a: &[String],
        from_a: &str,
        b: &[String],
        from_b: &str,
    ) -> Vec<String> {
        let vt = self.vt.clone();
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                let m = self.tmp();
                self.line(&format!(
                    "  {m} = phi {vt} [ {x}, %{from_a} ], [ {y}, %{from_b} ]"
                ));
                m
            })
            .collect()
    }
    /// A fresh block-name prefix.
    pub(crate) fn label(&mut self) -> String {
        self.n += 1;
        format!("b{}", self.n)
    }
    pub(crate) fn line(&mut self, l: &str) {
        self.s.push_str(l);
        self.s.push('\n');
    }
    pub(crate) fn splat(&mut self, scalar: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let i = self.tmp();
        self.line(&format!(
            "  {i} = insertelement {vt} undef, float {scalar}, i32 0"
        ));
        let s = self.tmp();
        self.line(&format!(
            "  {s} = shufflevector {vt} {i}, {vt} undef, <{w} x i32> zeroinitializer"
        ));
        s
    }
    pub(crate) fn splat_i32(&mut self, scalar: &str) -> String {
        let w = self.w;
        let i = self.tmp();
        self.line(&format!(
            "  {i} = insertelement <{w} x i32> undef, i32 {scalar}, i32 0"
        ));
        let s = self.tmp();
        self.line(&format!(
            "  {s} = shufflevector <{w} x i32> {i}, <{w} x i32> undef, <{w} x i32> zeroinitializer"
        ));
        s
    }
    pub(crate) fn fsplat(&self, v: f32) -> String {
        let items: Vec<String> = (0..self.w)
            .map(|_| format!("float {}", fconst(v)))
            .collect();
        format!("<{}>", items.join(", "))
    }
    /// `<w x float>*` pointing `off` floats after `base` (a `float*`).
    pub(crate) fn gep_vec(&mut self, base: &str, off: usize) -> String {
        self.gep_vec_at(base, &off.to_string())
    }
    /// [`Self::gep_vec`] at an offset that is an SSA value (or a constant's text).
    pub(crate) fn gep_vec_at(&mut self, base: &str, off: &str) -> String {
        let p = self.tmp();
        self.line(&format!(
            "  {p} = getelementptr float, float* {base}, i64 {off}"
        ));
        let vt = self.vt.clone();
        let c = self.tmp();
        self.line(&format!("  {c} = bitcast float* {p} to {vt}*"));
        c
    }
    pub(crate) fn masked_load(&mut self, p: &str, m: &str) -> String {
        self.masked_load_or(p, m, "zeroinitializer")
    }
    /// Masked load with `other` in the masked-off lanes.
    pub(crate) fn masked_load_or(&mut self, p: &str, m: &str, other: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let x = self.tmp();
        self.line(&format!(
            "  {x} = call {vt} @llvm.masked.load.v{w}f32.p0v{w}f32({vt}* {p}, i32 4, <{w} x i1> {m}, {vt} {other})"
        ));
        x
    }
    pub(crate) fn bin(&mut self, op: &str, a: &str, b: &str) -> String {
        let vt = self.vt.clone();
        let r = self.tmp();
        self.line(&format!("  {r} = {op} {vt} {a}, {b}"));
        r
    }
    /// `cond(a, b) ? x : y` with an ordered float compare.
    pub(crate) fn select(&mut self, cc: &str, a: &str, b: &str, x: &str, y: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let c = self.tmp();
        self.line(&format!("  {c} = fcmp {cc} {vt} {a}, {b}"));
        let r = self.tmp();
        self.line(&format!(
            "  {r} = select <{w} x i1> {c}, {vt} {x}, {vt} {y}"
        ));
        r
    }
    pub(crate) fn clamp(&mut self, x: &str, lo: f32, hi: f32) -> String {
        let (l, h) = (self.fsplat(lo), self.fsplat(hi));
        let a = self.select("olt", x, &l, &l, x);
        self.select("ogt", &a, &h, &h, &a)
    }
    pub(crate) fn fma(&mut self, a: &str, b: &str, c: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let r = self.tmp();
        self.line(&format!(
            "  {r} = call {vt} @llvm.fma.v{w}f32({vt} {a}, {vt} {b}, {vt} {c})"
        ));
        r
    }
    pub(crate) fn call1(&mut self, f: &str, x: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let r = self.tmp();
        self.line(&format!("  {r} = call {vt} @llvm.{f}.v{w}f32({vt} {x})"));
        r
    }
    /// Horner's scheme: `c[0] x^(n-1) + .. + c[n-1]`.
    pub(crate) fn poly(&mut self, x: &str, c: &[f32]) -> String {
        let mut p = self.fsplat(c[0]);
        for &k in &c[1..] {
            p = self.fma(&p, x, &self.fsplat(k));
        }
        p
    }
    /// `e^x` (Cephes' single-precision scheme: `x = n ln 2 + r`, a degree-7 polynomial in `r`,
    /// `2^n` built in the exponent bits; within 2 ulp, infinity past the largest float,
    /// flushed to `2^-126` below it; NaN stays NaN).
    pub(crate) fn exp(&mut self, x0: &str) -> String {
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
    /// `1 + e^(k x)`.
    pub(crate) fn one_plus_exp(&mut self, x: &str, k: f32) -> String {
        let v = self.bin("fmul", x, &self.fsplat(k));
        let e = self.exp(&v);
        self.bin("fadd", &e, &self.fsplat(1.0))
    }
    /// `1 / (1 + e^(k x))` (the sigmoid for `k = -1`).
    pub(crate) fn sigmoid(&mut self, x: &str, k: f32) -> String {
        let d = self.one_plus_exp(x, k);
        self.bin("fdiv", &self.fsplat(1.0), &d)
    }
    /// `tanh x = 2 sigmoid(2x) - 1`, and for `|x| < 0.2` its odd Taylor polynomial to `x^9`
    /// (the subtraction would lose the relative precision of small results).
    pub(crate) fn tanh(&mut self, x: &str) -> String {
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
    pub(crate) fn erf(&mut self, x: &str) -> String {
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
    pub(crate) fn half_x_one_plus(&mut self, x: &str, v: &str) -> String {
        let one = self.fsplat(1.0);
        let s = self.bin("fadd", v, &one);
        let h = self.bin("fmul", x, &self.fsplat(0.5));
        self.bin("fmul", &h, &s)
    }
    /// The epilogue steps on one vector, in the same arithmetic as `ew.rs`.
    pub(crate) fn epilogue(
        &mut self,
        steps: &[EpilogueStep],
        x: &str,
        operands: &[String],
    ) -> String {
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
                _ => unreachable!("step_supported() admits only the steps above"),
            };
        }
        x
    }
}
