//! LLVM IR text generation: fresh SSA names, loops, vector loads and stores (plain and
//! masked), masks, shuffles and reductions over `<w x float>` vectors, with opaque pointers
//! (`ptr`: a kernel's parameters are `ptr`s to f32 and every address is a `getelementptr
//! float`). The vector math and the fused epilogue steps are in `math.rs`.

use kiln_ir::ops::EpilogueStep;

/// An epilogue operand as the store of one output row reads it.
pub enum Src {
    /// A vector at the store's offset from this row pointer (masked like the store).
    Vec(String),
    /// One value for the whole row.
    Splat(String),
}

/// Declarations every kernel module needs for `lanes`-wide vectors (once per module).
pub fn declarations(lanes: usize) -> String {
    let w = lanes;
    let vt = format!("<{w} x float>");
    format!(
        "declare {vt} @llvm.fma.v{w}f32({vt}, {vt}, {vt})\n\
         declare {vt} @llvm.masked.load.v{w}f32.p0(ptr, i32, <{w} x i1>, {vt})\n\
         declare void @llvm.masked.store.v{w}f32.p0({vt}, ptr, i32, <{w} x i1>)\n\
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
                "declare <{n} x float> @llvm.masked.load.v{n}f32.p0(ptr, i32, <{n} x i1>, <{n} x float>)\n\
                 declare void @llvm.masked.store.v{n}f32.p0(<{n} x float>, ptr, i32, <{n} x i1>)\n"
            ))
            .collect::<String>()
    )
}

/// The `<w x i1>` mask with every lane set (a store or load that needs no mask).
pub fn all_lanes(w: usize) -> String {
    format!("<{}>", vec!["i1 true"; w].join(", "))
}

pub fn iota(w: usize, from: usize) -> String {
    let items: Vec<String> = (0..w).map(|i| format!("i32 {}", from + i)).collect();
    format!("<{}>", items.join(", "))
}

pub fn splat_const_i32(w: usize, v: i64) -> String {
    let items: Vec<String> = (0..w).map(|_| format!("i32 {v}")).collect();
    format!("<{}>", items.join(", "))
}

pub fn fconst(v: f32) -> String {
    // LLVM wants float constants as the hex of the f64 with the same value
    format!("0x{:016X}", (v as f64).to_bits())
}

/// IR text with fresh SSA names.
pub struct Emit {
    /// The text so far.
    pub s: String,
    n: usize,
    /// Lanes of a vector.
    pub w: usize,
    /// The vector type, `<w x float>`.
    pub vt: String,
    /// Module-level metadata of this function (loop hints), written after its body.
    meta: String,
}

/// Metadata ids, unique in every module this process writes.
static META_IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Emit {
    pub fn new(w: usize) -> Emit {
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
    pub fn no_unroll(&mut self) -> String {
        self.loop_hint("!{!\"llvm.loop.unroll.disable\"}")
    }
    /// `, !llvm.loop !N` for a loop's back-edge branch: unroll the loop `count` times
    /// whatever the target's scheduling model says (LLVM 19 partially unrolls less than 14
    /// did on Zen 3, and not at all for most CPUs; kernels whose address arithmetic needs
    /// unrolling to become immediates ask for it).
    pub fn unroll(&mut self, count: usize) -> String {
        self.loop_hint(&format!("!{{!\"llvm.loop.unroll.count\", i32 {count}}}"))
    }
    fn loop_hint(&mut self, hint: &str) -> String {
        let id = META_IDS.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let (l, d) = (id, id + 1);
        self.meta
            .push_str(&format!("!{l} = distinct !{{!{l}, !{d}}}\n!{d} = {hint}\n"));
        format!(", !llvm.loop !{l}")
    }
    /// `define void @name(<params>, i64 %t0, i64 %t1)` and the loop over work items `%<iv>` in
    /// `t0..t1` whose latch is block `latch` (closed by [`Self::items_end`]).
    pub fn items_begin(
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
    pub fn items_end(&mut self, iv: &str) {
        self.line(&format!("  %{iv}_n = add i64 %{iv}, 1"));
        self.line(&format!("  %{iv}_e = icmp eq i64 %{iv}_n, %t1"));
        self.line(&format!("  br i1 %{iv}_e, label %done, label %item"));
        self.line("done:");
        self.line("  ret void");
        self.function_end();
    }
    /// Close the current function: its `}` and then the metadata its loop hints refer to.
    pub fn function_end(&mut self) {
        self.line("}");
        let meta = std::mem::take(&mut self.meta);
        self.s.push_str(&meta);
    }
    /// Open `for i in lo..hi` (constant bounds, `lo < hi` not required); returns the induction
    /// variable. Close with [`Self::loop_end`]; code then continues in block `<tag>_exit`.
    pub fn loop_begin(&mut self, tag: &str, lo: usize, hi: usize) -> String {
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
    pub fn loop_end(&mut self, tag: &str, iv: &str) {
        self.line(&format!("  br label %{tag}_latch"));
        self.line(&format!("{tag}_latch:"));
        self.line(&format!("  %{tag}_n = add i64 {iv}, 1"));
        self.line(&format!("  br label %{tag}_head"));
        self.line(&format!("{tag}_exit:"));
    }
    /// `row[lo..hi] = 0` as a loop (LLVM turns it into a memset).
    pub fn zero_fill(&mut self, tag: &str, row: &str, lo: usize, hi: usize) {
        if lo >= hi {
            return;
        }
        let i = self.loop_begin(tag, lo, hi);
        let p = self.gep(row, &i);
        self.store_f32("0.0", &p);
        self.loop_end(tag, &i);
    }
    /// Apply the epilogue to accumulator `acc` and store the lanes of mask `m` at `off` floats
    /// after `out`; the operands of its `Add` steps come from `srcs` in order (vectors read at
    /// the same offset under the same mask).
    pub fn store_tile(
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
    /// Store the `n`-lane vector `val` at `p` under the run-time mask `m`:
    /// where masked stores are dear, a plain store when every lane is set (the common case:
    /// tiles inside the output) and the masked store only otherwise. Splits the current block.
    pub fn store_masked(&mut self, n: usize, val: &str, p: &str, m: &str) {
        let st = format!("<{n} x float>");
        let masked = format!(
            "  call void @llvm.masked.store.v{n}f32.p0({st} {val}, ptr {p}, i32 4, <{n} x i1> {m})"
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
        self.line(&format!("  store {st} {val}, ptr {p}, align 4"));
        self.line(&format!("  br label %{l}_done"));
        self.line(&format!("{l}_some:"));
        self.line(&masked);
        self.line(&format!("  br label %{l}_done"));
        self.line(&format!("{l}_done:"));
    }
    /// Store lanes `0..count` (a compile-time count, `1..=n`) of the `n`-lane vector `val` at
    /// `p`, if the run-time `i1` `valid` holds. Where masked stores are
    /// dear, the lanes go out as plain stores of power-of-two pieces (7 = 4 + 2 + 1) behind a
    /// branch on `valid`. Splits the current block.
    pub fn store_prefix(&mut self, n: usize, val: &str, p: &str, count: usize, valid: &str) {
        let st = format!("<{n} x float>");
        if self.cheap_masked_stores() {
            let lanes: Vec<String> = (0..n).map(|i| format!("i1 {}", i < count)).collect();
            let m = self.tmp();
            self.line(&format!(
                "  {m} = select i1 {valid}, <{n} x i1> <{}>, <{n} x i1> zeroinitializer",
                lanes.join(", ")
            ));
            return self.line(&format!(
                "  call void @llvm.masked.store.v{n}f32.p0({st} {val}, ptr {p}, i32 4, <{n} x i1> {m})"
            ));
        }
        let l = self.label();
        self.line(&format!("  br i1 {valid}, label %{l}_st, label %{l}_done"));
        self.line(&format!("{l}_st:"));
        let mut at = 0;
        while at < count {
            let k = 1usize << (usize::BITS - 1 - (count - at).leading_zeros());
            let q = self.gep(p, &at.to_string());
            if k == 1 {
                let x = self.tmp();
                self.line(&format!("  {x} = extractelement {st} {val}, i32 {at}"));
                self.store_f32(&x, &q);
            } else {
                let idx: Vec<String> = (at..at + k).map(|i| format!("i32 {i}")).collect();
                let part = self.tmp();
                self.line(&format!(
                    "  {part} = shufflevector {st} {val}, {st} undef, <{k} x i32> <{}>",
                    idx.join(", ")
                ));
                self.line(&format!("  store <{k} x float> {part}, ptr {q}, align 4"));
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
    pub fn transpose(&mut self, rows: &[String]) -> Vec<String> {
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
    pub fn slice(&mut self, x: &str, from: usize, n: usize) -> String {
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
    pub fn concat(&mut self, parts: &[String]) -> String {
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
    pub fn lanes_below(&mut self, from: usize, limit: usize) -> String {
        let w = self.w;
        let m = self.tmp();
        self.line(&format!(
            "  {m} = icmp slt <{w} x i32> {}, {}",
            iota(w, from),
            splat_const_i32(w, limit as i64)
        ));
        m
    }
    pub fn tmp(&mut self) -> String {
        self.n += 1;
        format!("%v{}", self.n)
    }
    /// Vector phis joining two predecessors pairwise: `a[i]` from block `from_a`, `b[i]` from
    /// `from_b` (an accumulator after a skipped or computed row).
    pub fn phis(&mut self, a: &[String], from_a: &str, b: &[String], from_b: &str) -> Vec<String> {
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
    pub fn label(&mut self) -> String {
        self.n += 1;
        format!("b{}", self.n)
    }
    pub fn line(&mut self, l: &str) {
        self.s.push_str(l);
        self.s.push('\n');
    }
    pub fn splat(&mut self, scalar: &str) -> String {
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
    pub fn splat_i32(&mut self, scalar: &str) -> String {
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
    pub fn fsplat(&self, v: f32) -> String {
        let items: Vec<String> = (0..self.w)
            .map(|_| format!("float {}", fconst(v)))
            .collect();
        format!("<{}>", items.join(", "))
    }
    /// The address `off` floats after `base` (`off` an `i64` SSA value or constant's text).
    pub fn gep(&mut self, base: &str, off: &str) -> String {
        let p = self.tmp();
        self.line(&format!(
            "  {p} = getelementptr float, ptr {base}, i64 {off}"
        ));
        p
    }
    /// The address of the vector `off` (a constant) floats after `base`.
    pub fn gep_vec(&mut self, base: &str, off: usize) -> String {
        self.gep(base, &off.to_string())
    }
    /// The float at `p`.
    pub fn load_f32(&mut self, p: &str) -> String {
        let x = self.tmp();
        self.line(&format!("  {x} = load float, ptr {p}, align 4"));
        x
    }
    pub fn store_f32(&mut self, v: &str, p: &str) {
        self.line(&format!("  store float {v}, ptr {p}, align 4"));
    }
    /// The vector at `p` (f32-aligned).
    pub fn load_vec(&mut self, p: &str) -> String {
        self.load_n(self.w, p)
    }
    /// The `n`-lane vector at `p` (f32-aligned).
    pub fn load_n(&mut self, n: usize, p: &str) -> String {
        let x = self.tmp();
        self.line(&format!("  {x} = load <{n} x float>, ptr {p}, align 4"));
        x
    }
    pub fn store_vec(&mut self, v: &str, p: &str) {
        let vt = self.vt.clone();
        self.line(&format!("  store {vt} {v}, ptr {p}, align 4"));
    }
    pub fn masked_load(&mut self, p: &str, m: &str) -> String {
        self.masked_load_or(p, m, "zeroinitializer")
    }
    /// Masked load with `other` in the masked-off lanes.
    pub fn masked_load_or(&mut self, p: &str, m: &str, other: &str) -> String {
        let w = self.w;
        self.masked_load_n(w, p, m, other)
    }
    /// Masked load of an `n`-lane vector (`n` = 4 or 8 below the width, or the width itself;
    /// see [`declarations`]) with `other` in the masked-off lanes.
    pub fn masked_load_n(&mut self, n: usize, p: &str, m: &str, other: &str) -> String {
        let st = format!("<{n} x float>");
        let x = self.tmp();
        self.line(&format!(
            "  {x} = call {st} @llvm.masked.load.v{n}f32.p0(ptr {p}, i32 4, <{n} x i1> {m}, {st} {other})"
        ));
        x
    }
    /// The vector at float offset `off` of row `base`: all lanes, or those of mask `m` (the
    /// others read `other`).
    pub fn load_at(&mut self, base: &str, off: &str, m: Option<&str>, other: &str) -> String {
        let p = self.gep(base, off);
        match m {
            Some(m) => self.masked_load_or(&p, m, other),
            None => self.load_vec(&p),
        }
    }
    /// Store `v` at float offset `off` of row `base`: all lanes, or those of mask `m` (always
    /// through the masked store: for row tails, not for tiles; see [`Self::store_masked`]).
    pub fn store_at(&mut self, v: &str, base: &str, off: &str, m: Option<&str>) {
        let p = self.gep(base, off);
        match m {
            Some(m) => self.masked_store(v, &p, m),
            None => self.store_vec(v, &p),
        }
    }
    /// Store the lanes of mask `m` of `v` at `p` (always the masked store instruction; see
    /// [`Self::store_masked`] for stores that are usually full).
    pub fn masked_store(&mut self, v: &str, p: &str, m: &str) {
        let (w, vt) = (self.w, self.vt.clone());
        self.line(&format!(
            "  call void @llvm.masked.store.v{w}f32.p0({vt} {v}, ptr {p}, i32 4, <{w} x i1> {m})"
        ));
    }
    /// `name = v` (of type `ty`) as an instruction, a select that always takes `v`: gives a
    /// value a fixed name for a phi.
    pub fn copy_to(&mut self, name: &str, ty: &str, v: &str) {
        self.line(&format!("  {name} = select i1 true, {ty} {v}, {ty} {v}"));
    }
    /// The lanes of mask `m` of `x`, zero in the others.
    pub fn zero_unless(&mut self, m: &str, x: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let r = self.tmp();
        self.line(&format!(
            "  {r} = select <{w} x i1> {m}, {vt} {x}, {vt} zeroinitializer"
        ));
        r
    }
    /// Sum of the lanes of `v` (in lane order).
    pub fn hsum(&mut self, v: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let s = self.tmp();
        self.line(&format!(
            "  {s} = call float @llvm.vector.reduce.fadd.v{w}f32(float 0.0, {vt} {v})"
        ));
        s
    }
    /// Maximum of the lanes of `v`.
    pub fn hmax(&mut self, v: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let s = self.tmp();
        self.line(&format!(
            "  {s} = call float @llvm.vector.reduce.fmax.v{w}f32({vt} {v})"
        ));
        s
    }
    pub fn bin(&mut self, op: &str, a: &str, b: &str) -> String {
        let vt = self.vt.clone();
        let r = self.tmp();
        self.line(&format!("  {r} = {op} {vt} {a}, {b}"));
        r
    }
    /// `cond(a, b) ? x : y` with an ordered float compare.
    pub fn select(&mut self, cc: &str, a: &str, b: &str, x: &str, y: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let c = self.tmp();
        self.line(&format!("  {c} = fcmp {cc} {vt} {a}, {b}"));
        let r = self.tmp();
        self.line(&format!(
            "  {r} = select <{w} x i1> {c}, {vt} {x}, {vt} {y}"
        ));
        r
    }
    pub fn clamp(&mut self, x: &str, lo: f32, hi: f32) -> String {
        let (l, h) = (self.fsplat(lo), self.fsplat(hi));
        let a = self.select("olt", x, &l, &l, x);
        self.select("ogt", &a, &h, &h, &a)
    }
    pub fn fma(&mut self, a: &str, b: &str, c: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let r = self.tmp();
        self.line(&format!(
            "  {r} = call {vt} @llvm.fma.v{w}f32({vt} {a}, {vt} {b}, {vt} {c})"
        ));
        r
    }
    pub fn call1(&mut self, f: &str, x: &str) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let r = self.tmp();
        self.line(&format!("  {r} = call {vt} @llvm.{f}.v{w}f32({vt} {x})"));
        r
    }
    /// A loop over the `len` floats of a row as vectors, with one vector accumulator starting
    /// at `init`, then the tail (if any) under a mask; `body(e, float offset, tail mask, acc)`
    /// returns the new accumulator. Returns the final accumulator.
    pub fn fold_row(&mut self, tag: &str, len: usize, init: &str, body: &mut RowBody) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let nv = len / w;
        let mut acc = init.to_string();
        if nv > 0 {
            self.line(&format!("  br label %{tag}_pre"));
            self.line(&format!("{tag}_pre:"));
            self.line(&format!("  br label %{tag}_head"));
            self.line(&format!("{tag}_head:"));
            self.line(&format!(
                "  %{tag}_i = phi i64 [ 0, %{tag}_pre ], [ %{tag}_n, %{tag}_head ]"
            ));
            self.line(&format!(
                "  %{tag}_acc = phi {vt} [ {acc}, %{tag}_pre ], [ %{tag}_accn, %{tag}_head ]"
            ));
            let off = self.tmp();
            self.line(&format!("  {off} = mul i64 %{tag}_i, {w}"));
            let next = body(self, &off, None, &format!("%{tag}_acc"));
            self.copy_to(&format!("%{tag}_accn"), &vt, &next);
            self.line(&format!("  %{tag}_n = add i64 %{tag}_i, 1"));
            self.line(&format!("  %{tag}_c = icmp eq i64 %{tag}_n, {nv}"));
            self.line(&format!(
                "  br i1 %{tag}_c, label %{tag}_exit, label %{tag}_head"
            ));
            self.line(&format!("{tag}_exit:"));
            acc = format!("%{tag}_accn");
        }
        let tail = len % w;
        if tail > 0 {
            let m = self.lanes_below(0, tail);
            let off = (nv * w).to_string();
            acc = body(self, &off, Some(&m), &acc);
        }
        acc
    }
    /// One vector whose lane `k` is lane `picks[k].1` of `srcs[picks[k].0]` (undefined for
    /// `None`): a tree of two-source shuffles.
    pub fn gather_lanes(&mut self, srcs: &[String], picks: &[Option<(usize, usize)>]) -> String {
        let (w, vt) = (self.w, self.vt.clone());
        let mask = |f: &dyn Fn(usize, usize) -> usize| -> String {
            let items: Vec<String> = picks
                .iter()
                .map(|p| match p {
                    Some((s, l)) => format!("i32 {}", f(*s, *l)),
                    None => "i32 undef".into(),
                })
                .collect();
            format!("<{w} x i32> <{}>", items.join(", "))
        };
        let r = self.tmp();
        match srcs.len() {
            1 => self.line(&format!(
                "  {r} = shufflevector {vt} {}, {vt} undef, {}",
                srcs[0],
                mask(&|_, l| l)
            )),
            2 => self.line(&format!(
                "  {r} = shufflevector {vt} {}, {vt} {}, {}",
                srcs[0],
                srcs[1],
                mask(&|s, l| s * w + l)
            )),
            n => {
                // each half gathers its lanes into their final positions, then one shuffle
                // merges
                let h = n / 2;
                let part = |lo: bool| -> Vec<Option<(usize, usize)>> {
                    picks
                        .iter()
                        .map(|p| match p {
                            Some((s, l)) if (*s < h) == lo => {
                                Some((if lo { *s } else { s - h }, *l))
                            }
                            _ => None,
                        })
                        .collect()
                };
                let (pl, pr) = (part(true), part(false));
                let left = self.gather_lanes(&srcs[..h], &pl);
                let right = self.gather_lanes(&srcs[h..], &pr);
                let items: Vec<String> = picks
                    .iter()
                    .enumerate()
                    .map(|(k, p)| match p {
                        Some((s, _)) if *s < h => format!("i32 {k}"),
                        Some(_) => format!("i32 {}", w + k),
                        None => "i32 undef".into(),
                    })
                    .collect();
                self.line(&format!(
                    "  {r} = shufflevector {vt} {left}, {vt} {right}, <{w} x i32> <{}>",
                    items.join(", ")
                ));
            }
        }
        r
    }
    /// `out[i][j] = sum_r k[i][r] x[r][j]` for a constant matrix `k` and rows of vectors `x`.
    pub fn mat_rows(&mut self, k: &[Vec<f32>], x: &[Vec<String>]) -> Vec<Vec<String>> {
        k.iter()
            .map(|ki| {
                (0..x[0].len())
                    .map(|j| {
                        let col: Vec<String> = x.iter().map(|row| row[j].clone()).collect();
                        self.lin_comb(ki, &col)
                    })
                    .collect()
            })
            .collect()
    }
    /// `k x` for a constant matrix `k` and one row of vectors: `out[i] = sum_r k[i][r] x[r]`.
    pub fn mat_vec(&mut self, k: &[Vec<f32>], x: &[String]) -> Vec<String> {
        k.iter().map(|ki| self.lin_comb(ki, x)).collect()
    }
    /// `sum_r c[r] x[r]` over vectors, skipping zero coefficients and multiplying only by
    /// those other than +-1 (constant matrices applied to registers: Winograd transforms).
    pub fn lin_comb(&mut self, c: &[f32], x: &[String]) -> String {
        let mut acc: Option<String> = None;
        for (r, &cr) in c.iter().enumerate() {
            if cr == 0.0 {
                continue;
            }
            let (term, neg) = if cr.abs() == 1.0 {
                (x[r].clone(), cr < 0.0)
            } else {
                (self.bin("fmul", &x[r], &self.fsplat(cr.abs())), cr < 0.0)
            };
            acc = Some(match (acc, neg) {
                (None, false) => term,
                (None, true) => self.bin("fsub", "zeroinitializer", &term),
                (Some(a), false) => self.bin("fadd", &a, &term),
                (Some(a), true) => self.bin("fsub", &a, &term),
            });
        }
        acc.unwrap_or_else(|| "zeroinitializer".into())
    }
}

/// The body of [`Emit::fold_row`]: `(emit, float offset, tail mask, accumulator) -> new
/// accumulator`.
pub type RowBody<'a> = dyn FnMut(&mut Emit, &str, Option<&str>, &str) -> String + 'a;
