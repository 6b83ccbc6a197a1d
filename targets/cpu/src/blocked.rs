//! Wide kernels over channel-blocked tensors (`Layout::Nchwc(c)` with `c` = the vector lanes):
//! the tensor is `[N, C/c, H, W, c]`, so one vector is `c` channels of one pixel.
//!
//! **Depthwise convolution and max pooling** ([`ConvKernel::depthwise_blocked`]): one
//! accumulator vector per output pixel, `px` pixels of one output row per work item, one
//! weight vector per tap; every tap is a plain vector load whatever the stride (the plain
//! layout needs two loads and a de-interleaving shuffle per vector at stride 2). Tiles whose
//! taps all fall inside the input run without checks; the others clamp each column into the
//! input and select zero (or -inf) for padding, and store only the pixels inside the output.
//! Input rows outside the image are skipped. Work items: (channel block, output row, tile).
//!
//! Dense convolutions with a blocked output (and, for unpadded 1x1 convolutions, a blocked
//! input) are the channels-along-lanes kernel of `ukernel.rs` with its store writing whole
//! vectors ([`crate::ukernel::ChannelTiles`], `ConvKernel::blocked_dense`).

use kiln_ir::ops::EpilogueStep;

use kiln_target_llvm::{Emit, LlvmTarget, all_lanes};

use crate::kernels::{Geom, Packing};
use crate::ukernel::{ConvKernel, KERNEL_PARAMS};

/// Output pixels per depthwise work item: accumulators plus the input vectors a row of taps
/// shares (`px + kw - 1` at stride 1) within the registers.
fn depthwise_px(g: &Geom, t: &LlvmTarget) -> usize {
    let max = if t.regs >= 32 { 8 } else { 6 };
    let tiles = g.ow.div_ceil(max);
    g.ow.div_ceil(tiles)
}

impl ConvKernel {
    /// A depthwise convolution (or, `pool_max`, a max pool) over a channel-blocked input into
    /// a channel-blocked output with `t.lanes` channels per block. Weights are packed at
    /// compile time as `[block][tap][lane]`.
    pub fn depthwise_blocked(
        name: String,
        g: Geom,
        (has_bias, has_res): (bool, bool),
        epilogue: &[EpilogueStep],
        pool_max: bool,
        t: &LlvmTarget,
    ) -> Option<ConvKernel> {
        if g.cg != 1
            || g.mg != 1
            || !g.c.is_multiple_of(t.lanes)
            || !kiln_target_llvm::epilogue_supported(epilogue)
        {
            return None;
        }
        let px = depthwise_px(&g, t);
        let xt = g.ow.div_ceil(px);
        let (groups, jt) = (g.c / t.lanes, g.oh * xt);
        let mut pk = Packing::of(&g);
        pk.needed = false;
        let mut ck = ConvKernel::new(name, g, 1, has_bias, has_res, epilogue, t)?;
        ck.pk = pk;
        ck.groups = groups;
        ck.mr = 1;
        ck.vn = px;
        ck.mb = 1;
        ck.xt = xt;
        ck.jt = jt;
        ck.prepacked = !pool_max;
        ck.depthwise = true;
        ck.pool_max = pool_max;
        ck.blocked = (true, true);
        Some(ck)
    }

    /// Depthwise weights `[c][kh][kw]` as `[c / lanes][tap][lanes]`.
    pub(crate) fn pack_depthwise_blocked(&self, w: &[f32]) -> Vec<f32> {
        let (kk, l) = (self.g.k[0] * self.g.k[1], self.lanes);
        let mut out = vec![0f32; self.g.c * kk];
        for cb in 0..self.groups {
            for t in 0..kk {
                for i in 0..l {
                    out[(cb * kk + t) * l + i] = w[(cb * l + i) * kk + t];
                }
            }
        }
        out
    }

    /// LLVM IR of the blocked depthwise kernel ([`Self::depthwise_blocked`]).
    pub(crate) fn ir_depthwise_blocked(&self, attrs_group: usize, out: &mut String) {
        let mut e = Emit::new(self.lanes);
        let g = &self.g;
        let (w, px) = (self.lanes, self.vn);
        let (s1, d0, d1) = (g.s[1], g.d[0], g.d[1]);
        let (kh, kw) = (g.k[0], g.k[1]);
        let vt = e.vt.clone();
        let b = &mut e;
        b.items_begin(&self.name, KERNEL_PARAMS, attrs_group, "t", "next");
        // %ci is the channel block
        self.depthwise_item(b, px, g.h * g.w * w, kh * kw * w);
        // interior tile: every column of every tap inside the input, every pixel an output
        let span = (px - 1) * s1 + (kw - 1) * d1;
        b.line("  %in0 = icmp sge i64 %ix0, 0");
        b.line(&format!("  %ixe = add i64 %ix0, {span}"));
        b.line(&format!("  %in1 = icmp slt i64 %ixe, {}", g.w));
        b.line(&format!("  %xe = add i64 %x0, {px}"));
        b.line(&format!("  %in2 = icmp ule i64 %xe, {}", g.ow));
        b.line("  %in01 = and i1 %in0, %in1");
        b.line("  %inside = and i1 %in01, %in2");
        let pad = if self.pool_max {
            b.fsplat(f32::NEG_INFINITY)
        } else {
            "zeroinitializer".into()
        };
        let init = if self.pool_max {
            pad.clone()
        } else if self.has_bias {
            b.line(&format!("  %bo = mul i64 %ci, {w}"));
            let p = b.gep("%b", "%bo");
            b.load_vec(&p)
        } else {
            "zeroinitializer".into()
        };
        b.line("  br i1 %inside, label %r0_f, label %r0_t");
        for checked in [false, true] {
            let sfx = if checked { "t" } else { "f" };
            let mut acc: Vec<String> = vec![init.clone(); px];
            for th in 0..kh {
                let (blk, body, after) = (
                    format!("r{th}_{sfx}"),
                    format!("rb{th}_{sfx}"),
                    format!("r{}_{sfx}", th + 1),
                );
                b.line(&format!("{blk}:"));
                let iy = b.tmp();
                b.line(&format!("  {iy} = add i64 %iy0, {}", th * d0));
                let ok = b.tmp();
                b.line(&format!("  {ok} = icmp ult i64 {iy}, {}", g.h));
                b.line(&format!("  br i1 {ok}, label %{body}, label %{after}_m"));
                b.line(&format!("{body}:"));
                let ro = b.tmp();
                b.line(&format!("  {ro} = mul i64 {iy}, {}", g.w * w));
                let rp = b.gep("%qcp", &ro);
                let mut cur = acc.clone();
                for tw in 0..kw {
                    let wv = if self.pool_max {
                        String::new()
                    } else {
                        let p = b.gep_vec("%wp", (th * kw + tw) * w);
                        b.load_vec(&p)
                    };
                    for (p, c) in cur.iter_mut().enumerate() {
                        let ix = b.tmp();
                        b.line(&format!("  {ix} = add i64 %ix0, {}", p * s1 + tw * d1));
                        let x = if checked {
                            // clamp into the row, then padding where the column was outside
                            let lo = b.tmp();
                            b.line(&format!("  {lo} = icmp slt i64 {ix}, 0"));
                            let hi = b.tmp();
                            b.line(&format!("  {hi} = icmp sge i64 {ix}, {}", g.w));
                            let out = b.tmp();
                            b.line(&format!("  {out} = or i1 {lo}, {hi}"));
                            let ic = b.tmp();
                            b.line(&format!("  {ic} = select i1 {out}, i64 0, i64 {ix}"));
                            let x = load_px(b, &rp, &ic, w);
                            let r = b.tmp();
                            b.line(&format!("  {r} = select i1 {out}, {vt} {pad}, {vt} {x}"));
                            r
                        } else {
                            load_px(b, &rp, &ix, w)
                        };
                        *c = if self.pool_max {
                            b.select("ogt", &x, c, &x, c)
                        } else {
                            b.fma(&x, &wv, c)
                        };
                    }
                }
                b.line(&format!("  br label %{after}_m"));
                b.line(&format!("{after}_m:"));
                acc = b.phis(&acc, &blk, &cur, &body);
                b.line(&format!("  br label %{after}"));
            }
            b.line(&format!("r{kh}_{sfx}:"));
            b.line(&format!("  br label %store_{sfx}"));
            b.line(&format!("store_{sfx}:"));
            // output pixel (cb, y, x0 + p) at ((cb * oh + y) * ow + x0 + p) * w
            let ob = b.tmp();
            b.line(&format!("  {ob} = mul i64 %cy, {}", g.ow));
            let ob2 = b.tmp();
            b.line(&format!("  {ob2} = add i64 {ob}, %x0"));
            let ob3 = b.tmp();
            b.line(&format!("  {ob3} = mul i64 {ob2}, {w}"));
            let op = b.gep("%o", &ob3);
            let srcs = if self.has_res {
                vec![kiln_target_llvm::Src::Vec(b.gep("%r", &ob3))]
            } else {
                Vec::new()
            };
            let all = all_lanes(w);
            for (p, a) in acc.iter().enumerate() {
                if checked {
                    // only pixels inside the output row
                    let xp = b.tmp();
                    b.line(&format!("  {xp} = add i64 %x0, {p}"));
                    let inr = b.tmp();
                    b.line(&format!("  {inr} = icmp ult i64 {xp}, {}", g.ow));
                    let l = b.label();
                    b.line(&format!("  br i1 {inr}, label %{l}_st, label %{l}_sk"));
                    b.line(&format!("{l}_st:"));
                    b.store_tile(&self.epilogue, a, &all, (&op, &srcs), p * w);
                    b.line(&format!("  br label %{l}_sk"));
                    b.line(&format!("{l}_sk:"));
                } else {
                    b.store_tile(&self.epilogue, a, &all, (&op, &srcs), p * w);
                }
            }
            b.line("  br label %next");
        }
        b.line("next:");
        b.items_end("t");
        out.push_str(&e.s);
    }
}

/// The vector of `w` channels at column `ix` (SSA) of row pointer `rp`.
fn load_px(b: &mut Emit, rp: &str, ix: &str, w: usize) -> String {
    let o = b.tmp();
    b.line(&format!("  {o} = mul i64 {ix}, {w}"));
    let p = b.gep(rp, &o);
    b.load_vec(&p)
}
