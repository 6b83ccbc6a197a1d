//! Wide-vector compute kernels generated as LLVM IR through the shared layer `kiln-target-llvm`.
//!
//! **Convolution** (and every f32 product that is run as one): a direct convolution over the
//! packed input `q` of `kernels::Packing` (zero-padded, row- and column-stride-phase split), so
//! that for output pixel `j = y * wq + x` (a flattened pixel index over the packed row pitch;
//! columns `x >= ow` are computed and discarded) every kernel tap reads `q[c * per_c + tap_off +
//! j]`: consecutive `j` are consecutive floats for every stride, dilation and padding. A register
//! tile is `mr` output channels x `vn` vectors of `lanes` pixels; the accumulators start at the
//! bias and stay in registers over all input channels and (unrolled) taps, with the weights
//! broadcast from a layout packed at compile time (`[group][m-block][c][tap][mr]`, zero rows
//! past the last channel). The tile is written with masked stores, one per output row it
//! touches, after the fused epilogue (residual add, activations) has been applied in registers.
//! Work items (group, m-block, pixel tile) are numbered so a caller can run any sub-range.
//!
//! The same convolution can instead put **output channels along the lanes**
//! ([`ChannelTiles`]): `vo` weight vectors times `px` broadcast input pixels of one row per
//! tap, transposed in registers at the end into per-channel pixel segments. It computes no
//! discarded pixel, so it wins on small images (ResNet-18's 7x7 layers: ~25 % faster) and
//! deep reductions; the pixel tiling wins where the channels are few or the reduction short
//! (a 1x1 over 16 channels). `ConvSchedule::Auto` picks per convolution
//! ([`ConvKernel::with_schedule`]).

use kiln_ir::ops::{EpilogueStep, MatMulAttrs};
use kiln_target_llvm::{Emit, LlvmTarget, Src, all_lanes, iota, splat_const_i32, step_supported};

use crate::kernels::{Geom, Packing};

/// The bytes of image a block of pixel tiles may read while every m-block passes over it:
/// about half of the smallest L2 cache of the CPUs we target (512 KB), so that block, the
/// m-block's weights and the outputs stay cached.
const L2_BLOCK: usize = 192 << 10;

/// One convolution kernel's shape decisions.
#[derive(Debug, Clone)]
pub(crate) struct ConvKernel {
    /// The LLVM function's symbol.
    pub name: String,
    pub g: Geom,
    pub pk: Packing,
    pub groups: usize,
    pub mr: usize,
    pub vn: usize,
    pub lanes: usize,
    /// m-blocks per group, pixel tiles per image.
    pub mb: usize,
    pub jt: usize,
    pub has_bias: bool,
    pub has_res: bool,
    pub epilogue: Vec<EpilogueStep>,
    /// The weights are a constant packed at compile time (convolutions); otherwise the caller
    /// packs them at run time into scratch (MatMul's left operand) or they are read as they are
    /// (depthwise).
    pub prepacked: bool,
    /// A depthwise convolution read straight from the unpadded input (see [`Self::depthwise`]).
    pub depthwise: bool,
    /// Depthwise: pixel tiles per output row.
    pub xt: usize,
    /// The image operand (input 1, the product's B) is a constant packed at compile time in
    /// panels of `nr` columns (given `[k][n]`, or `[n][k]` when `Some(true)`): see
    /// [`Self::pack_b`].
    pub b_const: Option<bool>,
    /// A max pool run by the depthwise kernel (max instead of multiply-add, no weights).
    pub pool_max: bool,
    /// Split over the caller's pool (else always on the calling thread: too little work).
    pub parallel: bool,
    /// A matrix product: element `(i, c)` of the left operand is at `i * a.0 + c * a.1`; it is
    /// packed at run time by [`Self::pack_ir`].
    pub a_strides: Option<(usize, usize)>,
    /// A matrix product's epilogue operands (read by its `Add` steps, in order, through the
    /// `b` and `r` parameters): element `(i, j)` of the output reads `i * si + j * sj` with
    /// `sj` 0 or 1 (a bias row, a per-row scalar, a scalar or a full residual).
    pub operands: Vec<(usize, usize)>,
    /// The channels-along-lanes schedule ([`Self::ir_channels`]) instead of pixels along lanes.
    pub cl: Option<ChannelTiles>,
    /// Run as Winograd F(2x2, 3x3) (`wino.rs`): this kernel then only describes the input
    /// packing and the epilogue; the products run in the boxed kernel.
    pub wino: Option<Box<crate::wino::Wino>>,
    /// Input and output channel-blocked (`Nchwc(lanes)`, `blocked.rs`) rather than plain.
    pub blocked: (bool, bool),
    /// Keep the pixel kernel's reduction loop rolled: with 16 vector registers the tile uses
    /// 15 and an unrolled loop spills (see `Emit::no_unroll`); with 32 LLVM may unroll.
    pub rolled: bool,
}

/// The tiling of a convolution with output channels along the vector lanes: a register tile
/// is `vo` vectors of `lanes` output channels x `px` consecutive output pixels of one pixel
/// row; each kernel tap loads `vo` weight vectors and broadcasts `px` input values. No pixel
/// is computed twice or discarded, whatever the image width (the last tile of a row is
/// narrower), which is what small images (7x7, 14x14) need; the cost is a scattered store
/// (each accumulator holds one pixel of `lanes` channel planes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelTiles {
    pub vo: usize,
    pub px: usize,
    /// Pixel rows (tiles never cross one), pixels per row, and a row's pitch in the packed
    /// input. An unpacked input (1x1, stride 1, no padding) is one row of all pixels.
    pub rows: usize,
    pub len: usize,
    pub pitch: usize,
    /// Tiles per row.
    pub xt: usize,
    /// Pixels per stored segment: the transpose's size (`px <= seg <= lanes`, powers of 2).
    pub seg: usize,
}

/// Which register tiling a convolution uses (`CpuOptions::conv_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvSchedule {
    /// Chosen per convolution from its shape.
    #[default]
    Auto,
    /// Output pixels along the vector lanes.
    Pixels,
    /// Output channels along the vector lanes ([`ChannelTiles`]).
    Channels,
    /// Winograd F(2x2, 3x3) for every 3x3 stride-1 ungrouped convolution (`Auto` uses it
    /// where the channel counts make it pay), `Auto`'s choice for the others.
    Winograd,
}

/// Whether [`ConvKernel::depthwise`] takes a convolution of this shape and epilogue.
pub(crate) fn depthwise_ok(g: &Geom, epilogue: &[EpilogueStep]) -> bool {
    g.cg == 1 && g.mg == 1 && g.s[0] <= 2 && g.s[1] <= 2 && epilogue.iter().all(step_supported)
}

impl ConvKernel {
    /// The kernel for a 2-D (or 1-D) f32 convolution, if its epilogue can be fused here.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        g: Geom,
        groups: usize,
        has_bias: bool,
        has_res: bool,
        epilogue: &[EpilogueStep],
        t: &LlvmTarget,
    ) -> Option<ConvKernel> {
        if !epilogue.iter().all(step_supported) {
            return None;
        }
        let pk = Packing::of(&g);
        let lanes = t.lanes;
        // mr x vn accumulator vectors, plus vn inputs and a broadcast, within the registers;
        // at least 8 accumulators to cover the FMA latency
        // (AVX2: 6 x 2 vectors, 12 accumulators + 2 image vectors + 1 broadcast of 16 registers:
        // 1x1 convolutions 0.31 -> 0.29 ms, 512^3 products 4.8 -> 3.5 ms against 4 x 2)
        let (mr_max, acc_target) = if t.regs >= 32 { (8, 16) } else { (6, 12) };
        let mr = g.mg.clamp(1, mr_max);
        let mut vn = (acc_target / mr).clamp(2, 6);
        while vn > 1 && mr * vn + vn + 1 > t.regs {
            vn -= 1;
        }
        let nr = vn * lanes;
        let jtotal = g.oh * pk.wq;
        Some(ConvKernel {
            name,
            pk,
            groups,
            mr,
            vn,
            lanes,
            mb: g.mg.div_ceil(mr),
            jt: jtotal.div_ceil(nr),
            has_bias,
            has_res,
            epilogue: epilogue.to_vec(),
            prepacked: true,
            depthwise: false,
            xt: 0,
            b_const: None,
            pool_max: false,
            parallel: true,
            a_strides: None,
            operands: Vec::new(),
            cl: None,
            wino: None,
            blocked: (false, false),
            rolled: t.regs < 32,
            g,
        })
    }

    /// This convolution with output channels along the lanes ([`ChannelTiles`]) when
    /// `sched` asks for it (or, `Auto`, when its shape favours it); pixels along the lanes
    /// otherwise.
    pub fn with_schedule(mut self, sched: ConvSchedule, t: &LlvmTarget) -> ConvKernel {
        if self.depthwise || self.a_strides.is_some() || self.wino.is_some() {
            return self;
        }
        let cl = self.channel_tiles(t);
        let want = match sched {
            ConvSchedule::Pixels => false,
            ConvSchedule::Channels => true,
            ConvSchedule::Auto | ConvSchedule::Winograd => self.favours_channels(&cl),
        };
        if want {
            self.mr = cl.vo * self.lanes;
            self.vn = 1;
            self.mb = self.g.mg.div_ceil(self.mr);
            self.jt = cl.rows * cl.xt;
            self.cl = Some(cl);
        }
        self
    }

    /// This dense (ungrouped) convolution writing a channel-blocked output (`Nchwc(lanes)`),
    /// reading a plain input through the usual packing or, `in_blocked`, a blocked input
    /// directly (an unpacked convolution: 1x1, stride 1, no padding): always the
    /// channels-along-lanes tiling, whose accumulators are then whole output vectors.
    pub fn blocked_dense(mut self, in_blocked: bool, t: &LlvmTarget) -> Option<ConvKernel> {
        let g = &self.g;
        if self.groups != 1
            || self.depthwise
            || self.wino.is_some()
            || self.a_strides.is_some()
            || !g.m.is_multiple_of(t.lanes)
            || (in_blocked && (self.pk.needed || !g.c.is_multiple_of(t.lanes)))
        {
            return None;
        }
        let cl = self.channel_tiles(t);
        self.mr = cl.vo * self.lanes;
        self.vn = 1;
        self.mb = self.g.mg.div_ceil(self.mr);
        self.jt = cl.rows * cl.xt;
        self.cl = Some(cl);
        self.blocked = (in_blocked, true);
        Some(self)
    }

    /// Whether the channels-along-lanes tiling `cl` should beat this (pixels-along-lanes)
    /// kernel. Cost per useful output lane: the lanes computed (channel padding; pixel tiles
    /// past the row ends) times one plus the store's share, a fixed cost per accumulator
    /// against the `taps` multiply-adds it amortizes (the pixel kernel stores once per output
    /// row a tile touches, ~3 multiply-adds each; the transposing store ~10). Fitted to
    /// per-layer profiles of the golden models on AVX-512, all-pixels against all-channels
    /// (ARCHITECTURE.md): within ~1 % of the per-layer best.
    fn favours_channels(&self, cl: &ChannelTiles) -> bool {
        let g = &self.g;
        let taps = (g.cg * g.k[0] * g.k[1]) as f64;
        let useful = (g.mg * g.oh * g.ow) as f64;
        let nr = self.vn * self.lanes;
        let px_lanes = (self.mb * self.mr * self.jt * nr) as f64;
        let cl_lanes =
            (g.mg.div_ceil(cl.vo * self.lanes) * cl.vo * self.lanes) as f64 * (g.oh * g.ow) as f64;
        let rows_touched = if self.pk.wq == g.ow {
            1.0
        } else {
            (nr + self.pk.wq - 1) as f64 / self.pk.wq as f64
        };
        let mut px_cost = px_lanes / useful * (1.0 + 3.0 * rows_touched / taps);
        if g.mg > self.mr && g.mg <= self.lanes {
            // one channel vector holds every output channel, the pixel kernel's m-blocks
            // read the input twice or more
            px_cost *= 1.3;
        }
        let cl_cost = cl_lanes / useful * (1.0 + 10.0 / taps);
        cl_cost < px_cost
    }

    /// The channels-along-lanes tiling of this convolution for target `t`.
    fn channel_tiles(&self, t: &LlvmTarget) -> ChannelTiles {
        let g = &self.g;
        let plane = g.oh * g.ow;
        let lanes = self.lanes;
        // accumulators: 20 of 32 registers, 12 of 16 (the weight vectors, a broadcast and what
        // LLVM's scheduler hoists need the rest: 24 of 32 spilled), at least 6 (4 for 4 lanes)
        // pixels per tile; as many channel vectors as fit without padding more channels than
        // needed
        let seg = lanes.min(8);
        let budget = if t.regs >= 32 { 20 } else { 12 };
        let vmax = budget / if seg >= 8 { 5 } else { 4 };
        let nvec = g.mg.div_ceil(lanes);
        let mut vo = 1;
        for v in 1..=vmax.min(nvec) {
            if nvec.div_ceil(v) * v <= nvec.div_ceil(vo) * vo {
                vo = v;
            }
        }
        let (rows, len, pitch) = if self.pk.needed {
            (g.oh, g.ow, self.pk.wq)
        } else {
            (1, plane, 0)
        };
        // balanced tiles: 28 pixels as 4 x 7 rather than 3 x 8 + 4
        let xt = len.div_ceil(seg.min(budget / vo));
        let px = len.div_ceil(xt);
        ChannelTiles {
            vo,
            px,
            rows,
            len,
            pitch,
            xt,
            seg,
        }
    }

    /// The prologue of a depthwise-style work item `%t` (channel, or channel block, `%ci`;
    /// output row `%y`; the tile of `px` pixels from column `%x0`): its first input row
    /// `%iy0` and column `%ix0` (negative in the padding), and the channel's input `%qcp`
    /// (`q_per` floats a channel) and weights `%wp` (`w_per` floats a channel).
    pub(crate) fn depthwise_item(&self, b: &mut Emit, px: usize, q_per: usize, w_per: usize) {
        let g = &self.g;
        b.line(&format!("  %xt = urem i64 %t, {}", self.xt));
        b.line(&format!("  %cy = udiv i64 %t, {}", self.xt));
        b.line(&format!("  %y = urem i64 %cy, {}", g.oh));
        b.line(&format!("  %ci = udiv i64 %cy, {}", g.oh));
        b.line(&format!("  %x0 = mul i64 %xt, {px}"));
        b.line(&format!("  %ixs = mul i64 %x0, {}", g.s[1]));
        b.line(&format!("  %ix0 = sub i64 %ixs, {}", g.p[1]));
        b.line(&format!("  %iys = mul i64 %y, {}", g.s[0]));
        b.line(&format!("  %iy0 = sub i64 %iys, {}", g.p[0]));
        b.line(&format!("  %qc = mul i64 %ci, {q_per}"));
        b.line("  %qcp = getelementptr float, ptr %q, i64 %qc");
        b.line(&format!("  %wc = mul i64 %ci, {w_per}"));
        b.line("  %wp = getelementptr float, ptr %w, i64 %wc");
    }

    /// A depthwise convolution (one input and one output channel per group, strides 1 or 2):
    /// tiles of `vn` vectors along one output row of one channel read the input directly, with
    /// masked loads where a tap falls into the padding and rows outside the input skipped, so
    /// there is no packed copy (depthwise layers are memory-bound: the copy would cost as much
    /// as the arithmetic). Work items: (channel, output row, column tile).
    pub fn depthwise(
        name: String,
        g: Geom,
        has_bias: bool,
        has_res: bool,
        epilogue: &[EpilogueStep],
        t: &LlvmTarget,
    ) -> Option<ConvKernel> {
        if !depthwise_ok(&g, epilogue) {
            return None;
        }
        let lanes = t.lanes;
        let vn = g.ow.div_ceil(lanes).clamp(1, 4);
        let xt = g.ow.div_ceil(vn * lanes);
        let mut pk = Packing::of(&g);
        pk.needed = false;
        Some(ConvKernel {
            name,
            pk,
            groups: g.c,
            mr: 1,
            vn,
            lanes,
            mb: 1,
            jt: g.oh * xt,
            has_bias,
            has_res,
            epilogue: epilogue.to_vec(),
            prepacked: false,
            depthwise: true,
            xt,
            b_const: None,
            pool_max: false,
            parallel: true,
            a_strides: None,
            operands: Vec::new(),
            cl: None,
            wino: None,
            blocked: (false, false),
            rolled: t.regs < 32,
            g,
        })
    }

    /// `C[m,n] = A[m,k] B[k,n]` as a 1x1 convolution with weights A (packed at run time with
    /// [`Self::pack_rows`]) over a k-channel image B of n pixels, followed by the longest prefix
    /// of `epilogue` that has a vector lowering here (see [`Self::epilogue`]); `operands` are
    /// the `(si, sj)` strides of the operands of its `Add` steps.
    pub fn matmul(
        name: String,
        (m, k, n): (usize, usize, usize),
        epilogue: &[EpilogueStep],
        operands: &[(usize, usize)],
        t: &LlvmTarget,
    ) -> ConvKernel {
        let g = Geom {
            k: [1, 1],
            s: [1, 1],
            p: [0; 4],
            d: [1, 1],
            n: 1,
            c: k,
            h: 1,
            w: n,
            m,
            oh: 1,
            ow: n,
            cg: k,
            mg: m,
        };
        assert!(operands.iter().all(|&(_, sj)| sj <= 1), "operand columns");
        let done = epilogue.iter().take_while(|s| step_supported(s)).count();
        let steps = &epilogue[..done];
        let mut ck = ConvKernel::new(name, g, 1, false, false, steps, t).expect("supported steps");
        debug_assert_eq!(ck.pk.wq, n, "a product's image has no padding");
        ck.prepacked = false;
        ck.a_strides = Some((k, 1));
        let used = MatMulAttrs {
            epilogue: steps.to_vec(),
        }
        .operand_count();
        ck.operands = operands[..used].to_vec();
        ck
    }

    /// A 2-D f32 max pool (strides 1 or 2) through the depthwise kernel.
    pub fn max_pool(name: String, g: Geom, t: &LlvmTarget) -> Option<ConvKernel> {
        let mut ck = ConvKernel::depthwise(name, g, false, false, &[], t)?;
        ck.pool_max = true;
        Some(ck)
    }

    /// This product with a constant left operand (a `[m][k]` weight, `W x`: PP-OCR det's
    /// ConvTranspose as a GEMM), packed at compile time like convolution weights instead of
    /// at every run.
    pub fn with_const_a(mut self) -> ConvKernel {
        if self.a_strides == Some((self.g.c, 1)) {
            self.prepacked = true;
        }
        self
    }

    /// The inputs this kernel reads as constants re-laid out at compile time
    /// ([`Self::packed_input`]): convolution weights, a product's constant operands.
    pub fn packed_inputs(&self) -> Vec<usize> {
        if self.a_strides.is_none() {
            return if self.prepacked || self.wino.is_some() {
                vec![1]
            } else {
                Vec::new()
            };
        }
        let mut v = Vec::new();
        if self.prepacked {
            v.push(0);
        }
        if self.b_const.is_some() {
            v.push(1);
        }
        v
    }

    /// Input `i`'s constant data in the layout the kernel reads.
    pub fn packed_input(&self, i: usize, data: &[f32]) -> Vec<f32> {
        if self.wino.is_some() {
            self.wino_weights(data)
        } else if self.depthwise && self.blocked.1 {
            self.pack_depthwise_blocked(data)
        } else if self.a_strides.is_some() && i == 1 {
            self.pack_b(data)
        } else {
            self.pack_weights(data)
        }
    }

    /// This product with a constant B given as `[k][n]` (`trans_b = false`) or `[n][k]`,
    /// packed at compile time ([`Self::pack_b`]).
    pub fn with_const_b(mut self, trans_b: bool) -> ConvKernel {
        self.b_const = Some(trans_b);
        self
    }

    /// Gemm: `C[m,n] = A B` with a constant B given as `[k][n]` (`trans_b = false`) or `[n][k]`.
    pub fn gemm(
        name: String,
        (m, k, n): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
        t: &LlvmTarget,
    ) -> ConvKernel {
        let mut ck = ConvKernel::matmul(name, (m, k, n), &[], &[], t).with_const_b(trans_b);
        if trans_a {
            ck.a_strides = Some((1, m));
        }
        ck
    }

    /// A constant B (`[k][n]`, or `[n][k]` when `b_const == Some(true)`) as the panels the
    /// kernel reads: for each tile of `nr` columns, its `[k][nr]` block, contiguous, with
    /// zeros past the last column. A tile's loads then walk one contiguous block (rows of
    /// the `[k][n]` matrix are `4 n` bytes apart: a new page every row or two for n >= 1024,
    /// which the prefetchers did not follow when the weights came from DRAM).
    pub fn pack_b(&self, b: &[f32]) -> Vec<f32> {
        let (k, n) = (self.g.c, self.g.w);
        let nr = self.vn * self.lanes;
        let trans = self.b_const == Some(true);
        let mut out = vec![0f32; self.jt * k * nr];
        for (jt, panel) in out.chunks_exact_mut(k * nr).enumerate() {
            for c in 0..k {
                for l in 0..nr {
                    let j = jt * nr + l;
                    if j < n {
                        panel[c * nr + l] = if trans { b[j * k + c] } else { b[c * n + j] };
                    }
                }
            }
        }
        out
    }

    /// Floats of the run-time packed weights (`[m-block][k][mr]`).
    pub fn packed_len(&self) -> usize {
        self.groups * self.mb * self.g.cg * self.g.k[0] * self.g.k[1] * self.mr
    }

    /// Multiply-adds (or max operations) per image.
    pub fn macs(&self) -> usize {
        let g = &self.g;
        g.m * g.cg * g.k[0] * g.k[1] * g.oh * g.ow
    }

    /// Work items per image.
    pub fn work(&self) -> usize {
        if let Some(wn) = &self.wino {
            return wn.gemm.work();
        }
        self.groups * self.mb * self.jt
    }

    /// Weights `[m][cg][kh][kw]` re-laid out as `[group][m-block][c][tap][mr]`.
    pub fn pack_weights(&self, w: &[f32]) -> Vec<f32> {
        let (g, mr) = (&self.g, self.mr);
        let kk = g.k[0] * g.k[1];
        let mut out = vec![0f32; self.groups * self.mb * g.cg * kk * mr];
        for gi in 0..self.groups {
            for b in 0..self.mb {
                for c in 0..g.cg {
                    for t in 0..kk {
                        for i in 0..mr {
                            let m = b * mr + i;
                            if m >= g.mg {
                                continue;
                            }
                            let src = ((gi * g.mg + m) * g.cg + c) * kk + t;
                            let dst = ((((gi * self.mb + b) * g.cg + c) * kk + t) * mr) + i;
                            out[dst] = w[src];
                        }
                    }
                }
            }
        }
        out
    }

    /// Pixel tiles per block of [`Self::decode_item`]: as many as keep the image rows they
    /// read (input channels x kernel rows x tile width) within [`L2_BLOCK`] bytes.
    fn pblock(&self) -> usize {
        let g = &self.g;
        let width = match &self.cl {
            Some(cl) => cl.px * g.s[1],
            None => self.vn * self.lanes,
        };
        let tile_bytes = (g.cg * g.k[0] * width * 4).max(1);
        (L2_BLOCK / tile_bytes).clamp(1, self.jt.max(1))
    }

    /// The epilogue operands of output channel `mi` (SSA) whose lane 0 is output element `d`
    /// (SSA): the residual, and a product's operands (one output row, so lane 0 is column
    /// `%j0`), as vectors or per-row scalars.
    fn row_srcs(&self, b: &mut Emit, mi: &str, d: &str) -> Vec<Src> {
        let mut srcs = Vec::new();
        if self.has_res {
            let rp = b.gep("%r", d);
            srcs.push(Src::Vec(rp));
        }
        for (k, &(si, sj)) in self.operands.iter().enumerate() {
            let base = if k == 0 { "%b" } else { "%r" };
            let ro = b.tmp();
            b.line(&format!("  {ro} = mul i64 {mi}, {si}"));
            let ro = if sj == 1 {
                let t = b.tmp();
                b.line(&format!("  {t} = add i64 {ro}, %j0"));
                t
            } else {
                ro
            };
            let rp = b.gep(base, &ro);
            srcs.push(if sj == 1 {
                Src::Vec(rp)
            } else {
                let s = b.load_f32(&rp);
                Src::Splat(b.splat(&s))
            });
        }
        srcs
    }

    /// IR decoding work item `%t` into `%gi` (group), `%mb` (m-block), `%gm` (`gi * mb +
    /// mb`, the packed weights' block) and the pixel tile `tile` (`0..jt`). Within a group the
    /// items run in blocks of `pblock` pixel tiles: every m-block over the block's tiles, then
    /// the next block, so the image a block reads stays in the L2 cache while all of the
    /// m-blocks pass over it ([`Self::pblock`]); `pblock == jt` is m-block-major.
    fn decode_item(&self, b: &mut Emit, tile: &str) {
        let (mb, jt, pb) = (self.mb, self.jt, self.pblock());
        b.line(&format!("  %gi = udiv i64 %t, {}", mb * jt));
        b.line(&format!("  %tg = urem i64 %t, {}", mb * jt));
        b.line(&format!("  %jb = udiv i64 %tg, {}", mb * pb));
        b.line(&format!("  %tb = urem i64 %tg, {}", mb * pb));
        b.line(&format!("  %jb0 = mul i64 %jb, {pb}"));
        // the last block may be narrower; both widths are constants, so no run-time division
        let last = jt - (jt - 1) / pb * pb;
        b.line(&format!("  %jlast = icmp eq i64 %jb, {}", (jt - 1) / pb));
        b.line(&format!("  %mbf = udiv i64 %tb, {pb}"));
        b.line(&format!("  %jinf = urem i64 %tb, {pb}"));
        b.line(&format!("  %mbl = udiv i64 %tb, {last}"));
        b.line(&format!("  %jinl = urem i64 %tb, {last}"));
        b.line("  %mb = select i1 %jlast, i64 %mbl, i64 %mbf");
        b.line("  %jin = select i1 %jlast, i64 %jinl, i64 %jinf");
        b.line(&format!("  {tile} = add i64 %jb0, %jin"));
        b.line(&format!("  %gmg = mul i64 %gi, {mb}"));
        b.line("  %gm = add i64 %gmg, %mb");
    }

    /// IR for the offset in `q` of (input channel, kernel row) pair number `ct` (`ci * kh +
    /// th`): `ci * per_c` plus that kernel row's row phase and packed row (`Packing::at`).
    fn kernel_row_offset(&self, b: &mut Emit, ct: &str) -> String {
        let (g, pk) = (&self.g, &self.pk);
        let (ci, th) = (b.tmp(), b.tmp());
        b.line(&format!("  {ci} = udiv i64 {ct}, {}", g.k[0]));
        b.line(&format!("  {th} = urem i64 {ct}, {}", g.k[0]));
        let thd = b.tmp();
        b.line(&format!("  {thd} = mul i64 {th}, {}", g.d[0]));
        let (r0, row) = (b.tmp(), b.tmp());
        b.line(&format!("  {r0} = urem i64 {thd}, {}", pk.s0));
        b.line(&format!("  {row} = udiv i64 {thd}, {}", pk.s0));
        // ((r0 * s1) * hq + row) * wq + ci * per_c
        let r0h = b.tmp();
        b.line(&format!("  {r0h} = mul i64 {r0}, {}", pk.s1 * pk.hq));
        let rr = b.tmp();
        b.line(&format!("  {rr} = add i64 {r0h}, {row}"));
        let rb = b.tmp();
        b.line(&format!("  {rb} = mul i64 {rr}, {}", pk.wq));
        let cq = b.tmp();
        b.line(&format!("  {cq} = mul i64 {ci}, {}", pk.per_c()));
        let qc = b.tmp();
        b.line(&format!("  {qc} = add i64 {cq}, {rb}"));
        qc
    }

    /// Offsets in `q` of the taps of one kernel row, relative to that row's base (see
    /// `Packing::at`: the column phase and column, which are the same for every row).
    fn tap_offsets(&self) -> Vec<usize> {
        let (g, pk) = (&self.g, &self.pk);
        (0..g.k[1])
            .map(|tw| {
                let col = tw * g.d[1];
                pk.at(0, col % pk.s1, 0, col / pk.s1)
            })
            .collect()
    }

    /// LLVM IR of `void name(q, w, bias, res, out, t0, t1)`: work items `t0..t1` of one image.
    pub fn ir(&self, attrs_group: usize, out: &mut String) {
        if self.depthwise && self.blocked.1 {
            return self.ir_depthwise_blocked(attrs_group, out);
        }
        if self.depthwise {
            return self.ir_depthwise(attrs_group, out);
        }
        if let Some(wn) = &self.wino {
            return self.wino_ir(wn, attrs_group, out);
        }
        if let Some(cl) = self.cl {
            return self.ir_channels(cl, attrs_group, out);
        }
        let mut e = Emit::new(self.lanes);
        let (g, pk) = (&self.g, &self.pk);
        let (mr, vn, w) = (self.mr, self.vn, self.lanes);
        let nr = vn * w;
        let kk = g.k[0] * g.k[1];
        let per_c = pk.s0 * pk.s1 * pk.hq * pk.wq;
        let jtotal = g.oh * pk.wq;
        let plane = g.oh * g.ow;
        let vt = e.vt.clone();
        let taps = self.tap_offsets();
        let b = &mut e;
        b.items_begin(&self.name, KERNEL_PARAMS, attrs_group, "t", "next");

        self.decode_item(b, "%jt");
        b.line(&format!("  %j0 = mul i64 %jt, {nr}"));
        if self.b_const.is_some() {
            // a constant image packed in panels of `nr` columns: tile `jt` is the contiguous
            // `[k][nr]` block `jt`, zero past the last column
            b.line(&format!("  %qo = mul i64 %jt, {}", g.cg * nr));
        } else {
            b.line(&format!("  %qo0 = mul i64 %gi, {}", g.cg * per_c));
            b.line("  %qo = add i64 %qo0, %j0");
        }
        b.line("  %qb = getelementptr float, ptr %q, i64 %qo");
        b.line(&format!("  %wo = mul i64 %gm, {}", g.cg * kk * mr));
        b.line("  %wb = getelementptr float, ptr %w, i64 %wo");
        b.line(&format!("  %mr0 = mul i64 %mb, {mr}"));
        b.line(&format!("  %gmf = mul i64 %gi, {}", g.mg));
        b.line("  %m0 = add i64 %gmf, %mr0");
        b.line(&format!("  %rem = sub i64 {}, %mr0", g.mg));
        b.line(&format!("  %jend = add i64 %j0, {nr}"));
        if self.b_const.is_some() {
            b.line("  %full = icmp eq i1 true, true");
        } else {
            b.line(&format!("  %full = icmp ule i64 %jend, {jtotal}"));
        }
        // accumulators start at the bias
        let mut init = Vec::new();
        for i in 0..mr {
            if self.has_bias {
                let mi = b.tmp();
                b.line(&format!("  {mi} = add i64 %m0, {i}"));
                let ok = b.tmp();
                b.line(&format!("  {ok} = icmp ult i64 {mi}, {}", g.m));
                let mc = b.tmp();
                b.line(&format!(
                    "  {mc} = select i1 {ok}, i64 {mi}, i64 {}",
                    g.m - 1
                ));
                let p = b.gep("%b", &mc);
                let s = b.load_f32(&p);
                init.push(b.splat(&s));
            } else {
                init.push("zeroinitializer".to_string());
            }
        }
        b.line("  br i1 %full, label %pre_f, label %pre_t");
        // the channel loop, without and with masked loads (last pixel tile)
        let mut finals = Vec::new();
        for masked in [false, true] {
            let sfx = if masked { "t" } else { "f" };
            b.line(&format!("pre_{sfx}:"));
            let mut masks = Vec::new();
            if masked {
                for v in 0..vn {
                    let base = b.tmp();
                    b.line(&format!("  {base} = add i64 %j0, {}", v * w));
                    let bs = b.tmp();
                    b.line(&format!("  {bs} = trunc i64 {base} to i32"));
                    let sv = b.splat_i32(&bs);
                    let lane = b.tmp();
                    b.line(&format!("  {lane} = add <{w} x i32> {sv}, {}", iota(w, 0)));
                    let m = b.tmp();
                    b.line(&format!(
                        "  {m} = icmp slt <{w} x i32> {lane}, {}",
                        splat_const_i32(w, jtotal as i64)
                    ));
                    masks.push(m);
                }
            }
            b.line(&format!("  br label %loop_{sfx}"));
            b.line(&format!("loop_{sfx}:"));
            let c = format!("%c_{sfx}");
            b.line(&format!(
                "  {c} = phi i64 [ 0, %pre_{sfx} ], [ %cn_{sfx}, %loop_{sfx} ]"
            ));
            let mut acc = Vec::new();
            for (i, start) in init.iter().enumerate() {
                for v in 0..vn {
                    let a = format!("%acc_{sfx}_{i}_{v}");
                    b.line(&format!(
                        "  {a} = phi {vt} [ {start}, %pre_{sfx} ], [ %acc_{sfx}_{i}_{v}_n, %loop_{sfx} ]"
                    ));
                    acc.push(a);
                }
            }
            // one iteration = one input channel and one kernel row (its taps unrolled): big
            // unrolled bodies (7x7) made LLVM's scheduler spill the accumulators
            let qc = if self.b_const.is_some() {
                let qc = b.tmp();
                b.line(&format!("  {qc} = mul i64 {c}, {nr}"));
                qc
            } else {
                self.kernel_row_offset(b, &c)
            };
            let qp = b.gep("%qb", &qc);
            let wc = b.tmp();
            b.line(&format!("  {wc} = mul i64 {c}, {}", g.k[1] * mr));
            let wp = b.gep("%wb", &wc);
            let mut cur = acc.clone();
            for (ti, off) in taps.iter().enumerate() {
                let xs: Vec<String> = (0..vn)
                    .map(|v| {
                        let p = b.gep_vec(&qp, off + v * w);
                        if masked {
                            b.masked_load(&p, &masks[v])
                        } else {
                            b.load_vec(&p)
                        }
                    })
                    .collect();
                for i in 0..mr {
                    let p = b.gep(&wp, &(ti * mr + i).to_string());
                    let s = b.load_f32(&p);
                    let sv = b.splat(&s);
                    for (v, x) in xs.iter().enumerate() {
                        let k = i * vn + v;
                        let n = if ti + 1 == taps.len() {
                            format!("{}_n", acc[k])
                        } else {
                            b.tmp()
                        };
                        b.line(&format!(
                            "  {n} = call {vt} @llvm.fma.v{w}f32({vt} {x}, {vt} {sv}, {vt} {})",
                            cur[k]
                        ));
                        cur[k] = n;
                    }
                }
            }
            b.line(&format!("  %cn_{sfx} = add i64 {c}, 1"));
            b.line(&format!(
                "  %ce_{sfx} = icmp eq i64 %cn_{sfx}, {}",
                g.cg * g.k[0]
            ));
            let hint = if self.rolled {
                b.no_unroll()
            } else {
                String::new()
            };
            b.line(&format!(
                "  br i1 %ce_{sfx}, label %store, label %loop_{sfx}{hint}"
            ));
            finals.push(cur);
        }
        // store: one masked store per vector and output row touched
        b.line("store:");
        let mut accs = Vec::new();
        for (k, (f, t)) in finals[0].iter().zip(&finals[1]).enumerate() {
            let a = format!("%fin_{k}");
            b.line(&format!(
                "  {a} = phi {vt} [ {f}, %loop_f ], [ {t}, %loop_t ]"
            ));
            accs.push(a);
        }
        // output rows as the store sees them: with no discarded columns (`wq == ow`) the
        // whole image is one row, so a tile is stored once however many rows it spans
        let (row_w, row_ow) = if pk.wq == g.ow {
            (jtotal, jtotal)
        } else {
            (pk.wq, g.ow)
        };
        b.line(&format!("  %jl0 = add i64 %j0, {}", nr - 1));
        b.line(&format!("  %jlc = icmp ult i64 %jl0, {jtotal}"));
        b.line(&format!(
            "  %jl = select i1 %jlc, i64 %jl0, i64 {}",
            jtotal - 1
        ));
        b.line(&format!("  %y0 = udiv i64 %j0, {row_w}"));
        b.line(&format!("  %y1 = udiv i64 %jl, {row_w}"));
        if pk.wq == g.ow {
            // a tile inside the output is one contiguous run per channel: plain stores, no
            // masks (1x1 convolutions over 16-24 channels spent a third of their time storing)
            b.line(&format!("  %sfull = icmp ule i64 %jend, {jtotal}"));
            b.line("  br i1 %sfull, label %fast_0, label %row_0");
            let all = all_lanes(w);
            for i in 0..mr {
                let after = if i + 1 < mr {
                    format!("fast_{}", i + 1)
                } else {
                    "next".into()
                };
                b.line(&format!("fast_{i}:"));
                b.line(&format!("  %frv_{i} = icmp ugt i64 %rem, {i}"));
                b.line(&format!("  br i1 %frv_{i}, label %fastb_{i}, label %next"));
                b.line(&format!("fastb_{i}:"));
                b.line(&format!("  %fmi_{i} = add i64 %m0, {i}"));
                b.line(&format!("  %fob_{i} = mul i64 %fmi_{i}, {plane}"));
                b.line(&format!("  %fd_{i} = add i64 %fob_{i}, %j0"));
                b.line(&format!(
                    "  %fop_{i} = getelementptr float, ptr %o, i64 %fd_{i}"
                ));
                let srcs = self.row_srcs(b, &format!("%fmi_{i}"), &format!("%fd_{i}"));
                for v in 0..vn {
                    let acc = &accs[i * vn + v];
                    let op = format!("%fop_{i}");
                    b.store_tile(&self.epilogue, acc, &all, (&op, &srcs), v * w);
                }
                b.line(&format!("  br label %{after}"));
            }
        } else {
            b.line("  br label %row_0");
        }
        for i in 0..mr {
            b.line(&format!("row_{i}:"));
            b.line(&format!("  %rv_{i} = icmp ugt i64 %rem, {i}"));
            b.line(&format!("  br i1 %rv_{i}, label %rowb_{i}, label %next"));
            b.line(&format!("rowb_{i}:"));
            b.line(&format!("  %mi_{i} = add i64 %m0, {i}"));
            b.line(&format!("  %ob_{i} = mul i64 %mi_{i}, {plane}"));
            b.line(&format!("  br label %yl_{i}"));
            b.line(&format!("yl_{i}:"));
            b.line(&format!(
                "  %y_{i} = phi i64 [ %y0, %rowb_{i} ], [ %yn_{i}, %yla_{i} ]"
            ));
            let ys = b.tmp();
            b.line(&format!("  {ys} = mul i64 %y_{i}, {row_w}"));
            let lo = b.tmp();
            b.line(&format!("  {lo} = sub i64 {ys}, %j0"));
            let lo32 = b.tmp();
            b.line(&format!("  {lo32} = trunc i64 {lo} to i32"));
            let hi32 = b.tmp();
            b.line(&format!("  {hi32} = add i32 {lo32}, {row_ow}"));
            let lov = b.splat_i32(&lo32);
            let hiv = b.splat_i32(&hi32);
            // out index of lane 0: ob + j0 - y * (wq - ow)
            let sh = b.tmp();
            b.line(&format!("  {sh} = mul i64 %y_{i}, {}", row_w - row_ow));
            let d0 = b.tmp();
            b.line(&format!("  {d0} = add i64 %ob_{i}, %j0"));
            let d = b.tmp();
            b.line(&format!("  {d} = sub i64 {d0}, {sh}"));
            let op = b.gep("%o", &d);
            let srcs = self.row_srcs(b, &format!("%mi_{i}"), &d);
            for v in 0..vn {
                let ge = b.tmp();
                b.line(&format!(
                    "  {ge} = icmp sge <{w} x i32> {}, {lov}",
                    iota(w, v * w)
                ));
                let lt = b.tmp();
                b.line(&format!(
                    "  {lt} = icmp slt <{w} x i32> {}, {hiv}",
                    iota(w, v * w)
                ));
                let m = b.tmp();
                b.line(&format!("  {m} = and <{w} x i1> {ge}, {lt}"));
                let acc = &accs[i * vn + v];
                b.store_tile(&self.epilogue, acc, &m, (&op, &srcs), v * w);
            }
            // the stores split blocks: the back edge leaves from a latch block of its own
            b.line(&format!("  br label %yla_{i}"));
            b.line(&format!("yla_{i}:"));
            b.line(&format!("  %yn_{i} = add i64 %y_{i}, 1"));
            b.line(&format!("  %ye_{i} = icmp ugt i64 %yn_{i}, %y1"));
            let after = if i + 1 < mr {
                format!("row_{}", i + 1)
            } else {
                "next".into()
            };
            b.line(&format!("  br i1 %ye_{i}, label %{after}, label %yl_{i}"));
        }
        b.line("next:");
        b.items_end("t");
        out.push_str(&e.s);
    }
}

impl ConvKernel {
    /// The channels-along-lanes kernel ([`ChannelTiles`]). Work item `t` is (group, m-block,
    /// pixel row, tile in the row); pixel `p` of a tile starting at column `x0` of row `y`
    /// reads `q[c * per_c + tap_off + y * pitch + x0 + p]` and is output pixel
    /// `y * len + x0 + p` of every channel plane.
    fn ir_channels(&self, cl: ChannelTiles, attrs_group: usize, out: &mut String) {
        let mut e = Emit::new(self.lanes);
        let (g, pk) = (&self.g, &self.pk);
        let (mr, w, vo) = (self.mr, self.lanes, cl.vo);
        let kk = g.k[0] * g.k[1];
        let per_c = pk.per_c();
        let plane = g.oh * g.ow;
        let vt = e.vt.clone();
        let b = &mut e;
        b.items_begin(&self.name, KERNEL_PARAMS, attrs_group, "t", "next");

        self.decode_item(b, "%tile");
        b.line(&format!("  %xt = urem i64 %tile, {}", cl.xt));
        b.line(&format!("  %row = udiv i64 %tile, {}", cl.xt));
        b.line(&format!("  %x0 = mul i64 %xt, {}", cl.px));
        let (in_blocked, out_blocked) = self.blocked;
        // a blocked input (an unpadded 1x1 convolution, one row of all pixels): pixel p of
        // channel ci at (ci / w * plane + p) * w + ci % w
        let pstride = if in_blocked { w } else { 1 };
        if in_blocked {
            b.line(&format!("  %qo = mul i64 %x0, {w}"));
        } else {
            b.line(&format!("  %qo0 = mul i64 %gi, {}", g.cg * per_c));
            b.line(&format!("  %qr = mul i64 %row, {}", cl.pitch));
            b.line("  %qo1 = add i64 %qo0, %qr");
            b.line("  %qo = add i64 %qo1, %x0");
        }
        b.line("  %qb = getelementptr float, ptr %q, i64 %qo");
        b.line(&format!("  %wo = mul i64 %gm, {}", g.cg * kk * mr));
        b.line("  %wb = getelementptr float, ptr %w, i64 %wo");
        b.line(&format!("  %mr0 = mul i64 %mb, {mr}"));
        b.line(&format!("  %gmf = mul i64 %gi, {}", g.mg));
        b.line("  %m0 = add i64 %gmf, %mr0");
        b.line(&format!("  %rem = sub i64 {}, %mr0", g.mg));
        b.line("  %rem32 = trunc i64 %rem to i32");
        // output index of channel m0, pixel 0 of the tile
        b.line(&format!("  %ob0 = mul i64 %m0, {plane}"));
        b.line(&format!("  %orow = mul i64 %row, {}", cl.len));
        b.line("  %ob1 = add i64 %ob0, %orow");
        b.line("  %obase = add i64 %ob1, %x0");
        // lanes of channel vector v that are channels of this group
        let mut masks = Vec::new();
        let mut init = Vec::new();
        for v in 0..vo {
            let r = b.tmp();
            b.line(&format!("  {r} = sub i32 %rem32, {}", v * w));
            let rv = b.splat_i32(&r);
            let m = b.tmp();
            b.line(&format!(
                "  {m} = icmp slt <{w} x i32> {}, {rv}",
                iota(w, 0)
            ));
            if self.has_bias {
                let o = b.tmp();
                b.line(&format!("  {o} = add i64 %m0, {}", v * w));
                let p = b.gep("%b", &o);
                init.push(b.masked_load(&p, &m));
            } else {
                init.push("zeroinitializer".to_string());
            }
            masks.push(m);
        }
        // the last tile of a row may be narrower
        let rem_px = cl.len - (cl.xt - 1) * cl.px;
        if rem_px < cl.px {
            b.line(&format!("  %last = icmp eq i64 %xt, {}", cl.xt - 1));
            b.line("  br i1 %last, label %pre_t, label %pre_f");
        } else {
            b.line("  br label %pre_f");
        }
        let variants: Vec<(&str, usize)> = if rem_px < cl.px {
            vec![("f", cl.px), ("t", rem_px)]
        } else {
            vec![("f", cl.px)]
        };
        for (sfx, px) in variants {
            b.line(&format!("pre_{sfx}:"));
            b.line(&format!("  br label %loop_{sfx}"));
            b.line(&format!("loop_{sfx}:"));
            let c = format!("%c_{sfx}");
            b.line(&format!(
                "  {c} = phi i64 [ 0, %pre_{sfx} ], [ %cn_{sfx}, %loop_{sfx} ]"
            ));
            let mut acc = Vec::new();
            for (v, start) in init.iter().enumerate() {
                for p in 0..px {
                    let a = format!("%acc_{sfx}_{v}_{p}");
                    b.line(&format!(
                        "  {a} = phi {vt} [ {start}, %pre_{sfx} ], [ {a}_n, %loop_{sfx} ]"
                    ));
                    acc.push(a);
                }
            }
            // one iteration = one (input channel, kernel row, kernel column) tap: with a
            // kernel row's taps unrolled, LLVM hoisted the next taps' weight loads and spilled
            // accumulators
            let qc = if in_blocked {
                let (cb, ci) = (b.tmp(), b.tmp());
                b.line(&format!("  {cb} = udiv i64 {c}, {w}"));
                b.line(&format!("  {ci} = urem i64 {c}, {w}"));
                let cbo = b.tmp();
                b.line(&format!("  {cbo} = mul i64 {cb}, {}", plane * w));
                let qc = b.tmp();
                b.line(&format!("  {qc} = add i64 {cbo}, {ci}"));
                qc
            } else {
                let (ct, tw) = (b.tmp(), b.tmp());
                b.line(&format!("  {ct} = udiv i64 {c}, {}", g.k[1]));
                b.line(&format!("  {tw} = urem i64 {c}, {}", g.k[1]));
                let rb = self.kernel_row_offset(b, &ct);
                // the column tap: phase (col % s1) and packed column (col / s1), as tap_offsets
                let twd = b.tmp();
                b.line(&format!("  {twd} = mul i64 {tw}, {}", g.d[1]));
                let (r1, xq) = (b.tmp(), b.tmp());
                b.line(&format!("  {r1} = urem i64 {twd}, {}", pk.s1));
                b.line(&format!("  {xq} = udiv i64 {twd}, {}", pk.s1));
                let r1o = b.tmp();
                b.line(&format!("  {r1o} = mul i64 {r1}, {}", pk.hq * pk.wq));
                let toff = b.tmp();
                b.line(&format!("  {toff} = add i64 {r1o}, {xq}"));
                let qc = b.tmp();
                b.line(&format!("  {qc} = add i64 {rb}, {toff}"));
                qc
            };
            let qp = b.gep("%qb", &qc);
            let wc = b.tmp();
            b.line(&format!("  {wc} = mul i64 {c}, {mr}"));
            let wp = b.gep("%wb", &wc);
            let ws: Vec<String> = (0..vo)
                .map(|v| {
                    let p = b.gep_vec(&wp, v * w);
                    b.load_vec(&p)
                })
                .collect();
            let mut cur = acc.clone();
            for p in 0..px {
                let sp = b.gep(&qp, &(p * pstride).to_string());
                let s = b.load_f32(&sp);
                let sv = b.splat(&s);
                for (v, wv) in ws.iter().enumerate() {
                    let k = v * px + p;
                    let n = format!("{}_n", acc[k]);
                    b.line(&format!(
                        "  {n} = call {vt} @llvm.fma.v{w}f32({vt} {wv}, {vt} {sv}, {vt} {})",
                        cur[k]
                    ));
                    cur[k] = n;
                }
            }
            b.line(&format!("  %cn_{sfx} = add i64 {c}, 1"));
            b.line(&format!(
                "  %ce_{sfx} = icmp eq i64 %cn_{sfx}, {}",
                g.cg * g.k[0] * g.k[1]
            ));
            // unrolled: the channel tiles' iterations are one tap each, and unrolling turns
            // their (channel, tap) address arithmetic into immediates (rolled: ResNet-18's
            // stride-2 layers 2-3x slower). Asked for explicitly: LLVM 14 did it unasked on
            // Zen 3 (by 7 for 7x7, 9 for 3x3, 16 for 1x1), LLVM 19 does not.
            let hint = b.unroll(tap_unroll(g.k[0] * g.k[1], g.k[1]));
            b.line(&format!(
                "  br i1 %ce_{sfx}, label %store_{sfx}, label %loop_{sfx}{hint}"
            ));
            b.line(&format!("store_{sfx}:"));
            if out_blocked {
                // each accumulator is one pixel of a block of `w` channels: stored as it is
                // at ((m0 / w + v) * plane + pixel) * w (groups == 1, m0 a multiple of w)
                let all = all_lanes(w);
                let ob = b.tmp();
                b.line(&format!("  {ob} = mul i64 %m0, {plane}"));
                // the tile's first pixel
                let pb = b.tmp();
                b.line(&format!("  {pb} = add i64 %orow, %x0"));
                let pbw = b.tmp();
                b.line(&format!("  {pbw} = mul i64 {pb}, {w}"));
                let base = b.tmp();
                b.line(&format!("  {base} = add i64 {ob}, {pbw}"));
                for v in 0..vo {
                    // channel vector v exists unless the m-block runs past the channels
                    let l = b.label();
                    if (v + 1) * w > g.mg % mr && g.mg % mr != 0 {
                        let ok = b.tmp();
                        b.line(&format!("  {ok} = icmp ugt i64 %rem, {}", v * w));
                        b.line(&format!("  br i1 {ok}, label %{l}_st, label %{l}_sk"));
                    } else {
                        b.line(&format!("  br label %{l}_st"));
                    }
                    b.line(&format!("{l}_st:"));
                    let vo_ = b.tmp();
                    b.line(&format!("  {vo_} = add i64 {base}, {}", v * plane * w));
                    let op = b.gep("%o", &vo_);
                    let srcs = if self.has_res {
                        let rp = b.gep("%r", &vo_);
                        vec![Src::Vec(rp)]
                    } else {
                        Vec::new()
                    };
                    for p in 0..px {
                        b.store_tile(&self.epilogue, &cur[v * px + p], &all, (&op, &srcs), p * w);
                    }
                    b.line(&format!("  br label %{l}_sk"));
                    b.line(&format!("{l}_sk:"));
                }
                b.line("  br label %next");
                continue;
            }
            // each accumulator is one pixel of `w` channels: transposed in registers into
            // segments of `seg` pixels of one channel, stored (masked) into the channel planes
            let seg = cl.seg;
            let pxm: Vec<String> = (0..seg).map(|p| format!("i1 {}", p < px)).collect();
            let pxm = format!("<{}>", pxm.join(", "));
            for v in 0..vo {
                let mut rows: Vec<String> = cur[v * px..(v + 1) * px].to_vec();
                rows.resize(seg, "undef".into());
                let cols = b.transpose(&rows);
                // segment s of column vector j: channel v * w + s * seg + j
                let seg_at = |b: &mut Emit, j: usize, s: usize, base: &str| {
                    let c = v * w + s * seg + j;
                    let ok = b.tmp();
                    b.line(&format!("  {ok} = icmp ugt i64 %rem, {c}"));
                    let m = b.tmp();
                    b.line(&format!(
                        "  {m} = select i1 {ok}, <{seg} x i1> {pxm}, <{seg} x i1> zeroinitializer"
                    ));
                    let o = b.tmp();
                    b.line(&format!("  {o} = add i64 %obase, {}", c * plane));
                    (b.gep(base, &o), m, ok)
                };
                for (j, col) in cols.iter().enumerate() {
                    let mut ops = Vec::new();
                    if self.has_res {
                        let parts: Vec<String> = (0..w / seg)
                            .map(|s| {
                                let (p, m, _) = seg_at(b, j, s, "%r");
                                b.masked_load_n(seg, &p, &m, "zeroinitializer")
                            })
                            .collect();
                        ops.push(b.concat(&parts));
                    }
                    let val = b.epilogue(&self.epilogue, col, &ops);
                    for s in 0..w / seg {
                        let part = b.slice(&val, s * seg, seg);
                        let (p, _, ok) = seg_at(b, j, s, "%o");
                        b.store_prefix(seg, &part, &p, px, &ok);
                    }
                }
            }
            b.line("  br label %next");
        }
        b.line("next:");
        b.items_end("t");
        out.push_str(&e.s);
    }
}

impl ConvKernel {
    /// The depthwise kernel's IR (`q` is the unpadded input image, `w` the `[c][kh][kw]`
    /// weights).
    fn ir_depthwise(&self, attrs_group: usize, out: &mut String) {
        let mut e = Emit::new(self.lanes);
        let g = &self.g;
        let (vn, w) = (self.vn, self.lanes);
        let nr = vn * w;
        let s1 = g.s[1];
        let kk = g.k[0] * g.k[1];
        let vt = e.vt.clone();
        let b = &mut e;
        b.items_begin(&self.name, KERNEL_PARAMS, attrs_group, "t", "next");
        self.depthwise_item(b, nr, g.h * g.w, kk);
        // interior tile: every column of every tap inside the input, every lane a real output
        let span = nr * s1 - 1 + (g.k[1] - 1) * g.d[1];
        b.line("  %in0 = icmp sge i64 %ix0, 0");
        b.line(&format!("  %ixe = add i64 %ix0, {span}"));
        b.line(&format!("  %in1 = icmp slt i64 %ixe, {}", g.w));
        b.line(&format!("  %xe = add i64 %x0, {nr}"));
        b.line(&format!("  %in2 = icmp ule i64 %xe, {}", g.ow));
        b.line("  %in01 = and i1 %in0, %in1");
        b.line("  %inside = and i1 %in01, %in2");
        let ninf = b.fsplat(f32::NEG_INFINITY);
        let init = if self.pool_max {
            ninf.clone()
        } else if self.has_bias {
            b.line("  %bp = getelementptr float, ptr %b, i64 %ci");
            b.line("  %bs = load float, ptr %bp, align 4");
            b.splat("%bs")
        } else {
            "zeroinitializer".into()
        };
        b.line("  br i1 %inside, label %r0_f, label %r0_t");
        let mut finals = Vec::new();
        for masked in [false, true] {
            let sfx = if masked { "t" } else { "f" };
            // per vector: the input positions it reads start at ix0 + v * nr_v (s1 floats per
            // lane); loads of s1 * w floats, de-interleaved for stride 2
            let mut acc: Vec<String> = vec![init.clone(); vn];
            for th in 0..g.k[0] {
                let blk = format!("r{th}_{sfx}");
                let body = format!("rb{th}_{sfx}");
                let after = format!("r{}_{sfx}", th + 1);
                b.line(&format!("{blk}:"));
                let iy = b.tmp();
                b.line(&format!("  {iy} = add i64 %iy0, {}", th * g.d[0]));
                let ok = b.tmp();
                b.line(&format!("  {ok} = icmp ult i64 {iy}, {}", g.h));
                b.line(&format!("  br i1 {ok}, label %{body}, label %{after}_m"));
                b.line(&format!("{body}:"));
                let ro = b.tmp();
                b.line(&format!("  {ro} = mul i64 {iy}, {}", g.w));
                let rp = b.gep("%qcp", &ro);
                let mut cur = acc.clone();
                for tw in 0..g.k[1] {
                    let wv = if self.pool_max {
                        String::new()
                    } else {
                        let wq = b.gep("%wp", &(th * g.k[1] + tw).to_string());
                        let ws = b.load_f32(&wq);
                        b.splat(&ws)
                    };
                    for (v, c) in cur.iter_mut().enumerate() {
                        // input column of lane 0 of this vector
                        let ix = b.tmp();
                        b.line(&format!(
                            "  {ix} = add i64 %ix0, {}",
                            v * w * s1 + tw * g.d[1]
                        ));
                        let parts: Vec<String> = (0..s1)
                            .map(|part| {
                                let pix = b.tmp();
                                b.line(&format!("  {pix} = add i64 {ix}, {}", part * w));
                                let pv = b.gep(&rp, &pix);
                                if masked {
                                    let p32 = b.tmp();
                                    b.line(&format!("  {p32} = trunc i64 {pix} to i32"));
                                    let sv = b.splat_i32(&p32);
                                    let col = b.tmp();
                                    b.line(&format!(
                                        "  {col} = add <{w} x i32> {sv}, {}",
                                        iota(w, 0)
                                    ));
                                    let ge = b.tmp();
                                    b.line(&format!(
                                        "  {ge} = icmp sge <{w} x i32> {col}, zeroinitializer"
                                    ));
                                    let lt = b.tmp();
                                    b.line(&format!(
                                        "  {lt} = icmp slt <{w} x i32> {col}, {}",
                                        splat_const_i32(w, g.w as i64)
                                    ));
                                    let m = b.tmp();
                                    b.line(&format!("  {m} = and <{w} x i1> {ge}, {lt}"));
                                    if self.pool_max {
                                        b.masked_load_or(&pv, &m, &ninf)
                                    } else {
                                        b.masked_load(&pv, &m)
                                    }
                                } else {
                                    b.load_vec(&pv)
                                }
                            })
                            .collect();
                        let x = if s1 == 1 {
                            parts[0].clone()
                        } else {
                            let even: Vec<String> =
                                (0..w).map(|i| format!("i32 {}", 2 * i)).collect();
                            let x = b.tmp();
                            b.line(&format!(
                                "  {x} = shufflevector {vt} {}, {vt} {}, <{w} x i32> <{}>",
                                parts[0],
                                parts[1],
                                even.join(", ")
                            ));
                            x
                        };
                        *c = if self.pool_max {
                            // x > acc ? x : acc, as the Cranelift pool (kb.fmax)
                            b.select("ogt", &x, c, &x, c)
                        } else {
                            let n = b.tmp();
                            b.line(&format!(
                                "  {n} = call {vt} @llvm.fma.v{w}f32({vt} {x}, {vt} {wv}, {vt} {c})"
                            ));
                            n
                        };
                    }
                }
                b.line(&format!("  br label %{after}_m"));
                // merge: the row's contribution, or nothing when the row is padding
                b.line(&format!("{after}_m:"));
                acc = b.phis(&acc, &blk, &cur, &body);
                b.line(&format!("  br label %{after}"));
            }
            b.line(&format!("r{}_{sfx}:", g.k[0]));
            b.line("  br label %store");
            finals.push((format!("r{}_{sfx}", g.k[0]), acc));
        }
        b.line("store:");
        let mut accs = Vec::new();
        for v in 0..vn {
            let a = b.tmp();
            b.line(&format!(
                "  {a} = phi {vt} [ {}, %{} ], [ {}, %{} ]",
                finals[0].1[v], finals[0].0, finals[1].1[v], finals[1].0
            ));
            accs.push(a);
        }
        b.line(&format!("  %ob0 = mul i64 %cy, {}", g.ow));
        b.line("  %ob = add i64 %ob0, %x0");
        b.line("  %op = getelementptr float, ptr %o, i64 %ob");
        if self.has_res {
            b.line("  %rp = getelementptr float, ptr %r, i64 %ob");
        }
        b.line("  %x032 = trunc i64 %x0 to i32");
        let xs = b.splat_i32("%x032");
        for (v, a) in accs.iter().enumerate() {
            let col = b.tmp();
            b.line(&format!(
                "  {col} = add <{w} x i32> {xs}, {}",
                iota(w, v * w)
            ));
            let m = b.tmp();
            b.line(&format!(
                "  {m} = icmp slt <{w} x i32> {col}, {}",
                splat_const_i32(w, g.ow as i64)
            ));
            let srcs: Vec<Src> = if self.has_res {
                vec![Src::Vec("%rp".into())]
            } else {
                Vec::new()
            };
            b.store_tile(&self.epilogue, a, &m, ("%op", &srcs), v * w);
        }
        b.line("  br label %next");
        b.line("next:");
        b.items_end("t");
        out.push_str(&e.s);
    }
}

impl ConvKernel {
    /// Whether the kernel reads an operand packed at run time by [`Self::pack_ir`]: the
    /// convolution input, or a matrix product's left operand.
    pub fn packs(&self) -> bool {
        (self.a_strides.is_some() && !self.prepacked) || (self.pk.needed && !self.depthwise)
    }

    /// The symbol of the packing function.
    pub fn pack_name(&self) -> String {
        format!("{}_pack", self.name)
    }

    /// LLVM IR of `void name_pack(x, _, _, _, q, c0, c1)`: channels `c0..c1` of one image `x`
    /// into the packed layout `q` (`kernels::Packing`), padding zeroed, and the slack after the
    /// last channel zeroed by whoever packs it. Every range is a compile-time constant; LLVM
    /// vectorizes the row copies (interleaved loads for stride 2) and the zero fills.
    pub fn pack_ir(&self, attrs_group: usize, out: &mut String) {
        if let Some(s) = self.a_strides {
            return self.pack_rows_ir(s, attrs_group, out);
        }
        let (g, pk) = (&self.g, &self.pk);
        let per_c = pk.per_c();
        let mut b = Emit::new(self.lanes);
        b.items_begin(&self.pack_name(), PACK_PARAMS, attrs_group, "c", "next");

        b.line(&format!("  %xo = mul i64 %c, {}", g.h * g.w));
        b.line("  %xc = getelementptr float, ptr %x, i64 %xo");
        b.line(&format!("  %qo = mul i64 %c, {per_c}"));
        b.line("  %qc = getelementptr float, ptr %q, i64 %qo");

        for r0 in 0..pk.s0 {
            for r1 in 0..pk.s1 {
                // the columns xq whose input column xq * s1 + r1 - pl is inside the input
                let lo = g.p[1].saturating_sub(r1).div_ceil(pk.s1).min(pk.wq);
                let hi = if g.w + g.p[1] > r1 {
                    ((g.w + g.p[1] - r1 - 1) / pk.s1 + 1).clamp(lo, pk.wq)
                } else {
                    lo
                };
                let tag = format!("p{r0}_{r1}");
                let yq = b.loop_begin(&format!("{tag}_y"), 0, pk.hq);
                let dst0 = b.tmp();
                b.line(&format!(
                    "  {dst0} = add i64 {yq}, {}",
                    (r0 * pk.s1 + r1) * pk.hq
                ));
                let dst = b.tmp();
                b.line(&format!("  {dst} = mul i64 {dst0}, {}", pk.wq));
                let drow = b.gep("%qc", &dst);
                // input row iy = yq * s0 + r0 - pt (unsigned compare: negative is outside)
                let iy0 = b.tmp();
                b.line(&format!("  {iy0} = mul i64 {yq}, {}", pk.s0));
                let iy = b.tmp();
                b.line(&format!(
                    "  {iy} = add i64 {iy0}, {}",
                    r0 as i64 - g.p[0] as i64
                ));
                let ok = b.tmp();
                b.line(&format!("  {ok} = icmp ult i64 {iy}, {}", g.h));
                b.line(&format!("  br i1 {ok}, label %{tag}_in, label %{tag}_pad"));
                // a padding row: all zeros
                b.line(&format!("{tag}_pad:"));
                b.zero_fill(&format!("{tag}_pz"), &drow, 0, pk.wq);
                b.line(&format!("  br label %{tag}_row_end"));
                b.line(&format!("{tag}_in:"));
                let srow0 = b.tmp();
                b.line(&format!("  {srow0} = mul i64 {iy}, {}", g.w));
                let srow = b.gep("%xc", &srow0);
                b.zero_fill(&format!("{tag}_zl"), &drow, 0, lo);
                let xq = b.loop_begin(&format!("{tag}_cp"), lo, hi);
                let ix0 = b.tmp();
                b.line(&format!("  {ix0} = mul i64 {xq}, {}", pk.s1));
                let ix = b.tmp();
                b.line(&format!(
                    "  {ix} = add i64 {ix0}, {}",
                    r1 as i64 - g.p[1] as i64
                ));
                let sp = b.gep(&srow, &ix);
                let v = b.load_f32(&sp);
                let dp = b.gep(&drow, &xq);
                b.store_f32(&v, &dp);
                b.loop_end(&format!("{tag}_cp"), &xq);
                b.zero_fill(&format!("{tag}_zr"), &drow, hi, pk.wq);
                b.line(&format!("  br label %{tag}_row_end"));
                b.line(&format!("{tag}_row_end:"));
                b.loop_end(&format!("{tag}_y"), &yq);
            }
        }
        // the slack after the last channel
        let last = b.tmp();
        b.line(&format!("  {last} = icmp eq i64 %c, {}", g.c - 1));
        b.line(
            "  br i1 %last_c, label %slack, label %next"
                .replace("%last_c", &last)
                .as_str(),
        );
        b.line("slack:");
        b.line(&format!(
            "  %sq = getelementptr float, ptr %q, i64 {}",
            g.c * per_c
        ));
        b.zero_fill("sl", "%sq", 0, crate::kernels::pack_slack(g));
        b.line("  br label %next");
        b.line("next:");
        b.items_end("c");
        out.push_str(&b.s);
    }
}

impl ConvKernel {
    /// LLVM IR of `void name_pack(a, _, _, _, q, b0, b1)`: row blocks `b0..b1` of a matrix
    /// product's left operand (element `(i, c)` at `a[i * s.0 + c * s.1]`) into the layout the
    /// weights of a convolution have, `q[(b * k + c) * mr + i]`, zero past row m.
    fn pack_rows_ir(&self, s: (usize, usize), attrs_group: usize, out: &mut String) {
        let (m, k, mr) = (self.g.m, self.g.c, self.mr);
        let mut b = Emit::new(self.lanes);
        b.items_begin(
            &self.pack_name(),
            PACK_PARAMS,
            attrs_group,
            "blk",
            "cp_exit",
        );

        b.line(&format!("  %qo = mul i64 %blk, {}", k * mr));
        b.line("  %qb = getelementptr float, ptr %q, i64 %qo");
        b.line(&format!("  %r0 = mul i64 %blk, {mr}"));
        let mut rows = Vec::new();
        for i in 0..mr {
            let (row, ok, rc, ro, ap) = (b.tmp(), b.tmp(), b.tmp(), b.tmp(), b.tmp());
            b.line(&format!("  {row} = add i64 %r0, {i}"));
            b.line(&format!("  {ok} = icmp ult i64 {row}, {m}"));
            // rows past m read row 0 (in bounds) and store zero
            b.line(&format!("  {rc} = select i1 {ok}, i64 {row}, i64 0"));
            b.line(&format!("  {ro} = mul i64 {rc}, {}", s.0));
            b.line(&format!("  {ap} = getelementptr float, ptr %x, i64 {ro}"));
            rows.push((ok, ap));
        }
        let c = b.loop_begin("cp", 0, k);
        let co = b.tmp();
        b.line(&format!("  {co} = mul i64 {c}, {}", s.1));
        let qo = b.tmp();
        b.line(&format!("  {qo} = mul i64 {c}, {mr}"));
        for (i, (ok, ap)) in rows.iter().enumerate() {
            let p = b.gep(ap, &co);
            let v = b.load_f32(&p);
            let (z, qi) = (b.tmp(), b.tmp());
            b.line(&format!("  {z} = select i1 {ok}, float {v}, float 0.0"));
            b.line(&format!("  {qi} = add i64 {qo}, {i}"));
            let d = b.gep("%qb", &qi);
            b.store_f32(&z, &d);
        }
        b.loop_end("cp", &c);
        b.items_end("blk");
        out.push_str(&b.s);
    }
}

/// How many one-tap iterations of the channel tiles' reduction loop run unrolled, for a window
/// of `taps` taps `kw` wide: every tap of a small window (at least 16 iterations: a 1x1 runs
/// 16 channels), one kernel row of a large one, so that each unrolled copy's tap (and its
/// offsets) is a constant.
fn tap_unroll(taps: usize, kw: usize) -> usize {
    if taps > 16 { kw } else { taps * (16 / taps) }
}

/// Parameters of a kernel: packed input, weights, bias, residual, output (then the work range).
pub(crate) const KERNEL_PARAMS: &str =
    "ptr noalias %q, ptr noalias %w, ptr noalias %b, ptr noalias %r, ptr noalias %o";
/// Parameters of a packing function: source, three unused, destination (same C signature).
const PACK_PARAMS: &str = "ptr noalias %x, ptr %u1, ptr %u2, ptr %u3, ptr noalias %q";
