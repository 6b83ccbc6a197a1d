//! kiln's CPU back end: Cranelift generates one function per op plus a straight-line `run`
//! schedule over a statically planned workspace, and the model descriptor of the runtime C ABI;
//! the wide kernels (convolutions, products, pools, row kernels) are LLVM IR written through
//! the shared LLVM layer (`kiln-target-llvm`).
//! Output: object files (cranelift-object + LLVM) or in-memory code (cranelift-jit + MCJIT).
//!
//! Invariant: this crate depends on `kiln-ir` and `kiln-target-llvm` only (no front end, no
//! file formats).

mod blocked;
mod direct;
mod ew;
mod flow;
mod fp16;
mod header;
mod index;
mod kb;
mod kernels;
pub mod link;
mod rows;
mod scan;
mod ukernel;
mod wino;

pub use header::generate_header;
pub use kiln_target_llvm::LlvmTarget;
pub use ukernel::ConvSchedule;

use cranelift_codegen::Context;
use cranelift_codegen::ir::{
    AbiParam, BlockArg, Function, InstBuilder, MemFlagsData, Signature, UserFuncName, types,
};
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use kb::Kb;
use kiln_ir::memplan::{self, MemPlan, Storage};
use kiln_ir::{Graph, TensorType};
use std::collections::HashMap;
use target_lexicon::Triple;

/// Version of the `kiln_model` descriptor layout (runtime/include/kiln.h).
pub const ABI_VERSION: u32 = kiln_runtime::KILN_ABI_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("node '{node}' ({op}): {msg}")]
    Unsupported {
        node: String,
        op: String,
        msg: String,
    },
    /// Several nodes the back end cannot lower, all listed at once.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    UnsupportedMany(Vec<CpuError>),
    #[error("target '{0}': {1}")]
    Target(String, String),
    #[error("code generation: {0}")]
    Codegen(String),
}

impl From<kiln_target_llvm::LlvmError> for CpuError {
    fn from(e: kiln_target_llvm::LlvmError) -> CpuError {
        match e {
            kiln_target_llvm::LlvmError::Target(t, m) => CpuError::Target(t, m),
            kiln_target_llvm::LlvmError::Codegen(m) => CpuError::Codegen(m),
        }
    }
}

fn cg<E: std::fmt::Display>(e: E) -> CpuError {
    CpuError::Codegen(e.to_string())
}

/// Progress of code generation for a UI: `(phase, done, total)` with phases `llvm kernels`
/// (0 of 1, then 1 of 1) and `codegen` (one step per node).
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<ProgressFn>);

/// The callback of [`Progress`]: `(phase, done, total)`.
pub type ProgressFn = dyn Fn(&str, usize, usize) + Send + Sync;

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

impl Progress {
    fn report(p: &Option<Progress>, phase: &str, done: usize, total: usize) {
        if let Some(p) = p {
            (p.0)(phase, done, total);
        }
    }
}

/// The version of the LLVM the wide kernels are generated with.
pub fn llvm_version() -> String {
    kiln_target_llvm::version()
}

/// The architectures this build generates code for, with the generators that support each:
/// `("x86_64", ["Cranelift", "LLVM"])`, ... (Cranelift ISAs and LLVM targets compiled in).
pub fn enabled_targets() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut v = Vec::new();
    for (arch, llvm_name) in [
        ("x86_64", "x86-64"),
        ("aarch64", "aarch64"),
        ("riscv64", "riscv64"),
        ("s390x", "systemz"),
    ] {
        let mut gens = Vec::new();
        if cranelift_codegen::isa::lookup_by_name(&format!("{arch}-unknown-linux-gnu")).is_ok() {
            gens.push("Cranelift");
        }
        if kiln_target_llvm::has_target(llvm_name) {
            gens.push("LLVM");
        }
        if !gens.is_empty() {
            v.push((arch, gens));
        }
    }
    v
}

#[derive(Debug, Clone)]
pub struct CpuOptions {
    /// Symbol prefix: the artefact exports `<name>_model`.
    pub name: String,
    /// Also export `kiln_model_default` (shared libraries and executables).
    pub export_default: bool,
    /// Target triple; `None` = the host.
    pub target: Option<String>,
    /// CPU the wide kernels are generated for (`--target-cpu`); `None` = `native` for the
    /// host, the architecture's baseline for another triple.
    pub target_cpu: Option<String>,
    /// Run convolutions in LLVM-generated wide-vector kernels (`false`: Cranelift only).
    pub wide: bool,
    /// Wide kernels with fewer multiply-adds per image run on the calling thread even when
    /// `run_pool` gets a pool (waking threads costs microseconds).
    pub par_min_macs: usize,
    /// The register tiling of convolutions run by the wide kernels.
    pub conv_schedule: ConvSchedule,
    /// Where code generation reports its progress (`None`: nowhere).
    pub progress: Option<Progress>,
}

impl CpuOptions {
    /// Defaults for the host: wide kernels for the native CPU.
    pub fn host(name: &str) -> CpuOptions {
        CpuOptions {
            name: name.to_string(),
            export_default: false,
            target: None,
            target_cpu: None,
            wide: true,
            par_min_macs: 1 << 17,
            conv_schedule: ConvSchedule::Auto,
            progress: None,
        }
    }
}

/// The object files of a compiled model: Cranelift's (schedule, descriptor, every kernel) and,
/// when wide kernels are used, LLVM's; both must be linked together.
pub struct Objects {
    pub main: Vec<u8>,
    pub kernels: Option<Vec<u8>>,
}

/// The wide kernels chosen for a graph (per node, in `iter_nodes` order) and their LLVM IR.
struct Wide {
    target: Option<LlvmTarget>,
    convs: Vec<Option<ukernel::ConvKernel>>,
    rows: Vec<Option<rows::RowKernel>>,
    /// Per node: the wide kernels of its sub-graphs (control flow), in `Op::bodies` order.
    bodies: Vec<Vec<Wide>>,
    /// The LLVM IR of every kernel, sub-graphs' included (top level only).
    ir: String,
}

impl Wide {
    fn none(g: &Graph) -> Wide {
        Wide {
            target: None,
            convs: vec![None; g.nodes.len()],
            rows: vec![None; g.nodes.len()],
            bodies: g
                .nodes
                .iter()
                .map(|n| {
                    n.as_ref()
                        .map(|n| n.op.bodies().into_iter().map(Wide::none).collect())
                        .unwrap_or_default()
                })
                .collect(),
            ir: String::new(),
        }
    }

    /// Whether any kernel of the graph or its sub-graphs is a wide one.
    fn any(&self) -> bool {
        self.convs.iter().any(Option::is_some)
            || self.rows.iter().any(Option::is_some)
            || self.bodies.iter().flatten().any(Wide::any)
    }

    /// Every wide kernel, sub-graphs' included.
    fn each(&self, f: &mut dyn FnMut(Option<&ukernel::ConvKernel>, Option<&rows::RowKernel>)) {
        for ck in self.convs.iter().flatten() {
            f(Some(ck), None);
        }
        for rk in self.rows.iter().flatten() {
            f(None, Some(rk));
        }
        for w in self.bodies.iter().flatten() {
            w.each(f);
        }
    }

    fn plan(g: &Graph, opts: &CpuOptions) -> Result<Wide, CpuError> {
        if !opts.wide {
            return Ok(Wide::none(g));
        }
        let t = LlvmTarget::cpu(opts.target.as_deref(), opts.target_cpu.as_deref())?;
        let mut ir = String::new();
        let mut w = Wide::plan_graph(g, opts, &t, &sym(&opts.name), &mut ir);
        if !w.any() {
            return Ok(Wide::none(g));
        }
        ir.push_str(&kiln_target_llvm::declarations(t.lanes));
        ir.push_str(&format!("attributes #0 = {{ {} }}\n", t.fn_attributes()));
        if let Ok(path) = std::env::var("KILN_DUMP_LLVM") {
            // debugging aid: the kernels' LLVM IR before optimization
            let _ = std::fs::write(path, &ir);
        }
        w.target = Some(t);
        w.ir = ir;
        Ok(w)
    }

    /// The wide kernels of graph `g` (symbols named from `prefix`) and, recursively, of its
    /// sub-graphs; their IR is appended to `ir`.
    fn plan_graph(
        g: &Graph,
        opts: &CpuOptions,
        t: &LlvmTarget,
        prefix: &str,
        ir: &mut String,
    ) -> Wide {
        let t = t.clone();
        let mut bodies = Vec::new();
        let mut convs = Vec::new();
        let mut row_kernels = Vec::new();
        for (k, (_, node)) in g.iter_nodes().enumerate() {
            bodies.push(
                node.op
                    .bodies()
                    .into_iter()
                    .enumerate()
                    .map(|(j, b)| Wide::plan_graph(b, opts, &t, &format!("{prefix}_k{k}_b{j}"), ir))
                    .collect(),
            );
            let ck = match &node.op {
                kiln_ir::Op::Conv(a) => {
                    let ins: Vec<&TensorType> = node.inputs.iter().map(|v| g.ty(*v)).collect();
                    let out = g.ty(node.outputs[0]);
                    let f32s = ins
                        .iter()
                        .chain([&out])
                        .all(|t| t.dtype == kiln_ir::DType::F32);
                    let const_w = g.const_data(node.inputs[1]).is_some();
                    let (name, bias, res) = (
                        format!("{prefix}_k{k}_wide"),
                        ins.len() >= 3,
                        ins.len() == 4,
                    );
                    let blocked = (!ins[0].layout.is_plain(), !a.layout.is_plain());
                    match kernels::Geom::tiled(
                        (&a.kernel, &a.strides, &a.pads, &a.dilations),
                        a.groups,
                        ins[0],
                        out,
                    ) {
                        Ok(geom) if blocked != (false, false) => {
                            blocked_conv(g, node, geom, &t, name, (ins[0].layout, a.layout))
                        }
                        Ok(geom) if wide_depthwise(g, node).is_some() => {
                            ukernel::ConvKernel::depthwise(name, geom, bias, res, &a.epilogue, &t)
                        }
                        Ok(geom) if wino_geom(g, node, opts.conv_schedule).is_some() => {
                            ukernel::ConvKernel::winograd(name, geom, bias, res, &a.epilogue, &t)
                        }
                        Ok(geom) if f32s && const_w && ins[0].shape.len() == 4 => {
                            ukernel::ConvKernel::new(
                                name,
                                geom,
                                a.groups,
                                bias,
                                res,
                                &a.epilogue,
                                &t,
                            )
                            .map(|ck| ck.with_schedule(opts.conv_schedule, &t))
                        }
                        _ => None,
                    }
                }
                kiln_ir::Op::MatMul(ma) => {
                    let (a, b) = (g.ty(node.inputs[0]), g.ty(node.inputs[1]));
                    let out = &g.ty(node.outputs[0]).shape;
                    let operands: Vec<(usize, usize)> = node.inputs[2..]
                        .iter()
                        .map(|&v| {
                            let s = kernels::bcast_strides(&g.ty(v).shape, out);
                            (s[s.len() - 2], s[s.len() - 1])
                        })
                        .collect();
                    // constant operands shared by every batch are packed at compile time
                    let (a_const, b_const) = (const_operand(g, node, 0), const_operand(g, node, 1));
                    kernels::matmul_dims(a, b)
                        .filter(|_| a.dtype == kiln_ir::DType::F32)
                        .map(|dims| {
                            let ck = ukernel::ConvKernel::matmul(
                                format!("{prefix}_k{k}_wide"),
                                dims,
                                &ma.epilogue,
                                &operands,
                                &t,
                            );
                            let ck = if a_const { ck.with_const_a() } else { ck };
                            if b_const { ck.with_const_b(false) } else { ck }
                        })
                }
                kiln_ir::Op::MaxPool(pa) => {
                    let (x, out) = (g.ty(node.inputs[0]), g.ty(node.outputs[0]));
                    match kernels::Geom::tiled(
                        (&pa.kernel, &pa.strides, &pa.pads, &pa.dilations),
                        x.shape.get(1).copied().unwrap_or(1).max(1),
                        x,
                        out,
                    ) {
                        Ok(geom) if !x.layout.is_plain() => {
                            blocked_pool(node, geom, x.layout, &t, format!("{prefix}_k{k}_wide"))
                        }
                        Ok(geom)
                            if x.dtype == kiln_ir::DType::F32
                                && x.shape.len() == 4
                                && node.outputs.len() == 1 =>
                        {
                            ukernel::ConvKernel::max_pool(format!("{prefix}_k{k}_wide"), geom, &t)
                        }
                        _ => None,
                    }
                }
                kiln_ir::Op::Gemm(_) if gemv_fits(g, node).is_some() => None,
                kiln_ir::Op::Gemm(ga) => {
                    let (a, b) = (g.ty(node.inputs[0]), g.ty(node.inputs[1]));
                    let out = g.ty(node.outputs[0]);
                    let kd = if ga.trans_a { a.shape[0] } else { a.shape[1] };
                    (a.dtype == kiln_ir::DType::F32
                        && b.dtype == kiln_ir::DType::F32
                        && g.const_data(node.inputs[1]).is_some())
                    .then(|| {
                        ukernel::ConvKernel::gemm(
                            format!("{prefix}_k{k}_wide"),
                            (out.shape[0], kd, out.shape[1]),
                            ga.trans_a,
                            ga.trans_b,
                            &t,
                        )
                    })
                }
                _ => None,
            };
            // windows too big to unroll stay on the loop-based kernels
            let ck = ck
                .filter(|ck| kernels::taps_unrollable(&ck.g.k))
                .map(|mut ck| {
                    ck.parallel = ck.macs() >= opts.par_min_macs;
                    ck
                });
            if let Some(ck) = &ck {
                ck.ir(0, ir);
                if ck.packs() {
                    ck.pack_ir(0, ir);
                }
            }
            convs.push(ck);
            let rk = rows_kernel(g, node, format!("{prefix}_k{k}_rows"), &t).map(|mut rk| {
                rk.parallel = rk.work_ops() >= opts.par_min_macs;
                rk
            });
            if let Some(rk) = &rk {
                rk.ir(0, ir);
            }
            row_kernels.push(rk);
        }
        Wide {
            target: None,
            convs,
            rows: row_kernels,
            bodies,
            ir: String::new(),
        }
    }
}

/// Whether operand `i` (0: A, 1: B) of `node`, an f32 MatMul, is a constant matrix shared by
/// every batch: the wide kernel then reads it packed at compile time (A like convolution
/// weights, not packed into scratch per run; B in panels).
fn const_operand(g: &Graph, node: &kiln_ir::Node, i: usize) -> bool {
    let kiln_ir::Op::MatMul(_) = node.op else {
        return false;
    };
    let (a, b) = (g.ty(node.inputs[0]), g.ty(node.inputs[1]));
    let numel = g.ty(node.inputs[i]).numel();
    a.dtype == kiln_ir::DType::F32
        && g.const_data(node.inputs[i]).is_some()
        && kernels::matmul_dims(a, b)
            .is_some_and(|(m, k, n)| numel == if i == 0 { m * k } else { k * n })
}

/// The wide kernel of a convolution with a channel-blocked input or output, if there is one:
/// blocks must be `t.lanes` channels (`blocked.rs`).
fn blocked_conv(
    g: &Graph,
    node: &kiln_ir::Node,
    geom: kernels::Geom,
    t: &LlvmTarget,
    name: String,
    (input, output): (kiln_ir::Layout, kiln_ir::Layout),
) -> Option<ukernel::ConvKernel> {
    let kiln_ir::Op::Conv(a) = &node.op else {
        return None;
    };
    let x = g.ty(node.inputs[0]);
    let lanes = kiln_ir::Layout::Nchwc(t.lanes as u32);
    let ok = |l: kiln_ir::Layout| l.is_plain() || l == lanes;
    if !ok(input)
        || !ok(output)
        || x.dtype != kiln_ir::DType::F32
        || x.rank() != 4
        || g.const_data(node.inputs[1]).is_none()
        || !kernels::taps_unrollable(&geom.k)
    {
        return None;
    }
    let (bias, res) = (node.inputs.len() >= 3, node.inputs.len() == 4);
    let (in_b, out_b) = (!input.is_plain(), !output.is_plain());
    if geom.cg == 1 && geom.mg == 1 && a.groups > 1 {
        if !(in_b && out_b) {
            return None;
        }
        return ukernel::ConvKernel::depthwise_blocked(
            name,
            geom,
            (bias, res),
            &a.epilogue,
            false,
            t,
        );
    }
    if !out_b {
        return None;
    }
    ukernel::ConvKernel::new(name, geom, a.groups, bias, res, &a.epilogue, t)?
        .blocked_dense(in_b, t)
}

/// The CPU back end's layout model for the `layout` pass (`kiln_ir::layout::LayoutTarget`):
/// blocks of the wide kernels' vector width, and run-time estimates of convolutions and max
/// pools in each layout from throughputs measured per kernel on single-layer models
/// (AVX2, AMD Zen 3, GMAC/s): dense 40 plain, 47 with a blocked output (no transposing
/// store), ~88 effective for Winograd; depthwise 15 (stride 1) / 6 (stride 2) plain against
/// 30 / 17 blocked (a tap is one vector load at any stride; plain needs masked border loads
/// and, at stride 2, a de-interleaving shuffle); relayouts (LLVM transposes) ~20 bytes/ns.
#[derive(Debug, Clone)]
pub struct CpuLayouts {
    target: LlvmTarget,
    schedule: ConvSchedule,
}

/// The layout model for `opts`, or `None` when the build has no blocked kernels (Cranelift
/// only).
pub fn layout_target(opts: &CpuOptions) -> Result<Option<CpuLayouts>, CpuError> {
    if !opts.wide {
        return Ok(None);
    }
    let target = LlvmTarget::cpu(opts.target.as_deref(), opts.target_cpu.as_deref())?;
    Ok(Some(CpuLayouts {
        target,
        schedule: opts.conv_schedule,
    }))
}

impl kiln_ir::layout::LayoutTarget for CpuLayouts {
    fn block(&self) -> Option<u32> {
        Some(self.target.lanes as u32)
    }

    fn cost(
        &self,
        g: &Graph,
        node: &kiln_ir::Node,
        input: kiln_ir::Layout,
        output: kiln_ir::Layout,
    ) -> Option<f64> {
        let t = &self.target;
        let (x, y) = (g.ty(node.inputs[0]), g.ty(node.outputs[0]));
        let (in_b, out_b) = (!input.is_plain(), !output.is_plain());
        let attrs = match &node.op {
            kiln_ir::Op::Conv(a) => (&a.kernel, &a.strides, &a.pads, &a.dilations, a.groups),
            kiln_ir::Op::MaxPool(p) | kiln_ir::Op::AveragePool(p) => (
                &p.kernel,
                &p.strides,
                &p.pads,
                &p.dilations,
                x.shape[1].max(1),
            ),
            _ => return None,
        };
        let geom = kernels::Geom::tiled((attrs.0, attrs.1, attrs.2, attrs.3), attrs.4, x, y).ok();
        let Some(geom) = geom.filter(|_| x.dtype == kiln_ir::DType::F32 && x.rank() == 4) else {
            // not a wide-kernel shape: plain only, at a cost no choice changes
            return (!in_b && !out_b).then_some(0.0);
        };
        let macs =
            (x.shape[0] * geom.m * geom.cg * geom.k[0] * geom.k[1] * geom.oh * geom.ow) as f64;
        let s1 = geom.s[0].max(geom.s[1]) == 1;
        let pool = matches!(node.op, kiln_ir::Op::MaxPool(_));
        // depthwise convolutions and max pools: one window per channel
        let per_channel = pool || (geom.cg == 1 && geom.mg == 1 && attrs.4 > 1);
        if matches!(node.op, kiln_ir::Op::AveragePool(_)) || (pool && in_b != out_b) {
            return (!in_b && !out_b).then_some(macs);
        }
        let rate = match (in_b, out_b) {
            (false, false) if wino_geom(g, node, self.schedule).is_some() => 88.0,
            (false, false) if per_channel => {
                if s1 {
                    15.0
                } else {
                    6.0
                }
            }
            (false, false) => 40.0,
            _ => {
                // only where a kernel takes these layouts
                if pool {
                    blocked_pool(node, geom, input, t, "k".into())?;
                } else {
                    blocked_conv(g, node, geom, t, "k".into(), (input, output))?;
                }
                match (per_channel, s1) {
                    (true, true) => 30.0,
                    (true, false) => 17.0,
                    (false, _) => 47.0,
                }
            }
        };
        Some(macs / rate)
    }

    fn relayout_cost(&self, bytes: usize) -> f64 {
        bytes as f64 / 20.0
    }
}

/// The wide kernel of a max pool over an input in `layout`, if it is the kernels' block
/// (`Nchwc(t.lanes)`).
fn blocked_pool(
    node: &kiln_ir::Node,
    geom: kernels::Geom,
    layout: kiln_ir::Layout,
    t: &LlvmTarget,
    name: String,
) -> Option<ukernel::ConvKernel> {
    if layout != kiln_ir::Layout::Nchwc(t.lanes as u32)
        || node.outputs.len() != 1
        || !kernels::taps_unrollable(&geom.k)
    {
        return None;
    }
    ukernel::ConvKernel::depthwise_blocked(name, geom, (false, false), &[], true, t)
}

/// `(k, n, has_bias)` of a Gemm that the GEMV row kernel runs: one f32 row times a constant
/// `B` stored `[n][k]` (`transB`), `alpha` 1, and a bias `C` of `n` elements with `beta` 1 (or
/// none).
fn gemv_fits(g: &Graph, node: &kiln_ir::Node) -> Option<(usize, usize, bool)> {
    let kiln_ir::Op::Gemm(a) = &node.op else {
        return None;
    };
    let (x, b, out) = (
        g.ty(node.inputs[0]),
        g.ty(node.inputs[1]),
        g.ty(node.outputs[0]),
    );
    let (m, n) = (out.shape[0], out.shape[1]);
    let bias = node.inputs.len() == 3 && a.beta != 0.0;
    let c_ok = !bias || {
        let c = g.ty(node.inputs[2]);
        a.beta == 1.0 && c.numel() == n && c.shape.last() == Some(&n)
    };
    let ok = m == 1
        && n > 0
        && x.shape[1] > 0
        && !a.trans_a
        && a.trans_b
        && a.alpha == 1.0
        && c_ok
        && [x, b, out].iter().all(|t| t.dtype == kiln_ir::DType::F32)
        && g.const_data(node.inputs[1]).is_some();
    ok.then(|| (x.shape[1], n, bias))
}

/// The row kernel (`rows.rs`) for an f32 Softmax over contiguous rows, an f32 LayerNorm, or a
/// one-row Gemm (`gemv_fits`), if `node` is one.
fn rows_kernel(
    g: &Graph,
    node: &kiln_ir::Node,
    name: String,
    t: &LlvmTarget,
) -> Option<rows::RowKernel> {
    let x = g.ty(node.inputs[0]);
    if x.dtype != kiln_ir::DType::F32 || x.numel() == 0 {
        return None;
    }
    match &node.op {
        kiln_ir::Op::Softmax {
            axis,
            kind: kiln_ir::ops::SoftmaxKind::Softmax,
        } if x.shape[axis + 1..].iter().product::<usize>() == 1 => {
            let len = x.shape[*axis];
            let op = rows::RowOp::Softmax;
            Some(rows::RowKernel::new(name, op, x.numel() / len, len, t))
        }
        kiln_ir::Op::Gemm(_) => {
            let (k, n, bias) = gemv_fits(g, node)?;
            let op = rows::RowOp::Gemv { bias };
            Some(rows::RowKernel::new(name, op, n, k, t))
        }
        kiln_ir::Op::Relayout { to } => {
            let lanes = kiln_ir::Layout::Nchwc(t.lanes as u32);
            let to_blocked = *to == lanes && x.layout.is_plain();
            if !(to_blocked || to.is_plain() && x.layout == lanes) {
                return None;
            }
            let len = x.shape[2] * x.shape[3];
            let op = rows::RowOp::Relayout { to_blocked };
            Some(rows::RowKernel::new(
                name,
                op,
                x.numel() / (len * t.lanes),
                len,
                t,
            ))
        }
        kiln_ir::Op::LayerNorm { axis, epsilon } => {
            let len: usize = x.shape[*axis..].iter().product();
            let op = rows::RowOp::LayerNorm {
                epsilon: *epsilon,
                scale: node.inputs.len() >= 2,
                bias: node.inputs.len() >= 3,
            };
            Some(rows::RowKernel::new(name, op, x.numel() / len, len, t))
        }
        _ => None,
    }
}

/// What the back end decided, for reports and the header.
#[derive(Debug, Clone)]
pub struct CompileInfo {
    pub workspace_size: usize,
    pub workspace_align: usize,
    pub naive_size: usize,
    pub kernels: usize,
}

fn make_isa(target: Option<&str>, pic: bool) -> Result<OwnedTargetIsa, CpuError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| CpuError::Codegen(format!("flag {k}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", if pic { "true" } else { "false" })?;
    set(&mut flags, "log2_min_function_alignment", "4")?;
    let flags = settings::Flags::new(flags);
    match target {
        None => cranelift_native::builder()
            .map_err(|e| CpuError::Target("host".into(), e.to_string()))?
            .finish(flags)
            .map_err(cg),
        Some(t) => {
            let triple: Triple = t
                .parse()
                .map_err(|e| CpuError::Target(t.into(), format!("{e}")))?;
            cranelift_codegen::isa::lookup(triple)
                .map_err(|e| CpuError::Target(t.into(), e.to_string()))?
                .finish(flags)
                .map_err(|e| CpuError::Target(t.into(), e.to_string()))
        }
    }
}

/// Compile `g` (verified IR) to relocatable object files.
pub fn compile_object(g: &Graph, opts: &CpuOptions) -> Result<(Objects, CompileInfo), CpuError> {
    let wide = Wide::plan(g, opts)?;
    let kernels = match &wide.target {
        Some(t) => {
            Progress::report(&opts.progress, "llvm kernels", 0, 1);
            let o = kiln_target_llvm::compile_object(&wide.ir, t)?;
            Progress::report(&opts.progress, "llvm kernels", 1, 1);
            Some(o)
        }
        None => None,
    };
    let isa = make_isa(opts.target.as_deref(), true)?;
    let builder = ObjectBuilder::new(
        isa,
        opts.name.as_bytes().to_vec(),
        cranelift_module::default_libcall_names(),
    )
    .map_err(cg)?;
    let mut module = ObjectModule::new(builder);
    let info = generate(&mut module, g, opts, &wide)?;
    let product = module.finish();
    let main = product.emit().map_err(cg)?;
    Ok((Objects { main, kernels }, info))
}

/// A model compiled into this process's memory. Keep it alive while using its descriptor.
pub struct JitModel {
    module: Option<JITModule>,
    descriptor: *const u8,
    pub info: CompileInfo,
    /// The wide kernels the code calls (freed after the Cranelift code).
    _wide: Option<kiln_target_llvm::LlvmJit>,
}

impl Drop for JitModel {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the descriptor and code are only reachable through `self`, which is going away.
            unsafe { m.free_memory() };
        }
    }
}

impl JitModel {
    /// Pointer to the model's `kiln_model` descriptor (valid while `self` lives).
    pub fn descriptor(&self) -> *const u8 {
        self.descriptor
    }
}

macro_rules! libm_symbols {
    ($($f:ident($($a:ident),+) -> $t:ty;)+) => {
        unsafe extern "C" {
            $(fn $f($($a: $t),+) -> $t;)+
        }
        /// Addresses of this process's libm functions, for the JIT.
        fn libm_symbols() -> Vec<(&'static str, *const u8)> {
            vec![$((stringify!($f), $f as *const u8)),+]
        }
    };
}
libm_symbols! {
    expf(x) -> f32; logf(x) -> f32; tanhf(x) -> f32; erff(x) -> f32; powf(x, y) -> f32;
    sinf(x) -> f32; cosf(x) -> f32; tanf(x) -> f32; asinf(x) -> f32; acosf(x) -> f32;
    atanf(x) -> f32; sinhf(x) -> f32; coshf(x) -> f32; asinhf(x) -> f32; acoshf(x) -> f32;
    atanhf(x) -> f32; fmodf(x, y) -> f32; log1pf(x) -> f32;
    exp(x) -> f64; log(x) -> f64; tanh(x) -> f64; erf(x) -> f64; pow(x, y) -> f64;
    sin(x) -> f64; cos(x) -> f64; tan(x) -> f64; asin(x) -> f64; acos(x) -> f64;
    atan(x) -> f64; sinh(x) -> f64; cosh(x) -> f64; asinh(x) -> f64; acosh(x) -> f64;
    atanh(x) -> f64; fmod(x, y) -> f64; log1p(x) -> f64;
}

/// Compile `g` for the host into executable memory (default options).
pub fn compile_jit(g: &Graph, name: &str) -> Result<JitModel, CpuError> {
    compile_jit_with(g, &CpuOptions::host(name))
}

/// Compile `g` for the host into executable memory (`opts.target` must be `None`).
pub fn compile_jit_with(g: &Graph, opts: &CpuOptions) -> Result<JitModel, CpuError> {
    if opts.target.is_some() {
        return Err(CpuError::Codegen(
            "the in-memory JIT compiles for the host only".into(),
        ));
    }
    let wide = Wide::plan(g, opts)?;
    let wide_jit = match &wide.target {
        Some(t) => {
            Progress::report(&opts.progress, "llvm kernels", 0, 1);
            let j = kiln_target_llvm::LlvmJit::new(&wide.ir, t)?;
            Progress::report(&opts.progress, "llvm kernels", 1, 1);
            Some(j)
        }
        None => None,
    };
    let isa = make_isa(None, false)?;
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    for (name, addr) in libm_symbols() {
        builder.symbol(name, addr);
    }
    // block copies call libc's memcpy (a libcall)
    unsafe extern "C" {
        fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8;
    }
    builder.symbol("memcpy", memcpy as *const u8);
    unsafe extern "C" {
        fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8;
    }
    builder.symbol("memset", memset as *const u8);
    if let Some(j) = &wide_jit {
        let mut syms: Vec<String> = Vec::new();
        wide.each(&mut |ck, rk| {
            if let Some(rk) = rk {
                syms.push(rk.name.clone());
            }
            if let Some(ck) = ck {
                syms.push(ck.name.clone());
                if ck.packs() {
                    syms.push(ck.pack_name());
                }
                if ck.wino.is_some() {
                    syms.extend(ck.wino_names());
                }
            }
        });
        for name in syms {
            let a = j.address(&name)?;
            builder.symbol(name, a);
        }
    }
    // Code and constants in one reserved region, so 32-bit PC-relative references always reach
    // (separate mappings can land more than 2 GiB apart once a model has large weights).
    let const_bytes: usize = g
        .values
        .iter()
        .filter_map(|v| match &v.def {
            kiln_ir::ValueDef::Const(d) => Some(d.len() + memplan::ALIGN),
            _ => None,
        })
        .sum();
    const JIT_LIMIT: usize = 1536 << 20;
    if const_bytes > JIT_LIMIT {
        return Err(CpuError::Codegen(format!(
            "{const_bytes} bytes of constants exceed the in-memory JIT's {JIT_LIMIT}; build an artefact (.so) instead"
        )));
    }
    let arena = cranelift_jit::ArenaMemoryProvider::new_with_size(const_bytes + (512 << 20))
        .map_err(|e| CpuError::Codegen(format!("JIT memory: {e}")))?;
    builder.memory_provider(Box::new(arena));
    let mut module = JITModule::new(builder);
    let info = generate(&mut module, g, opts, &wide)?;
    module.finalize_definitions().map_err(cg)?;
    let id = match module.get_name(&format!("{}_model_desc", sym(&opts.name))) {
        Some(cranelift_module::FuncOrDataId::Data(d)) => d,
        _ => return Err(CpuError::Codegen("descriptor missing".into())),
    };
    let (ptr, _) = module.get_finalized_data(id);
    Ok(JitModel {
        module: Some(module),
        descriptor: ptr,
        info,
        _wide: wide_jit,
    })
}

/// A C identifier from a model name.
pub fn sym(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn ptr_sig(module: &dyn ModuleLike, n: usize) -> Signature {
    let mut s = module.sig();
    for _ in 0..n {
        s.params.push(AbiParam::new(types::I64));
    }
    s
}

/// The few `Module` methods we need without generics everywhere.
trait ModuleLike {
    fn sig(&self) -> Signature;
}
impl<M: Module> ModuleLike for M {
    fn sig(&self) -> Signature {
        self.make_signature()
    }
}

fn generate<M: Module>(
    module: &mut M,
    g: &Graph,
    opts: &CpuOptions,
    wide: &Wide,
) -> Result<CompileInfo, CpuError> {
    let isa_ptr = module.isa().pointer_type();
    if isa_ptr != types::I64 {
        return Err(CpuError::Target(
            module.isa().triple().to_string(),
            "only 64-bit targets are supported".into(),
        ));
    }
    let prefix = sym(&opts.name);
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = Context::new();

    // libm imports
    let mut libm_ids: Vec<(&'static str, FuncId)> = Vec::new();
    for (f, arity, is_f64) in ew::LIBM {
        let t = if is_f64 { types::F64 } else { types::F32 };
        let mut s = module.make_signature();
        for _ in 0..arity {
            s.params.push(AbiParam::new(t));
        }
        s.returns.push(AbiParam::new(t));
        libm_ids.push((
            f,
            module
                .declare_function(f, Linkage::Import, &s)
                .map_err(cg)?,
        ));
    }

    // the task trampoline of parallel wide kernels: `task(block, begin, end)` calls
    // `block[5](block[0..5], begin, end)`
    let task_id = if !wide.any() {
        None
    } else {
        let sig = ptr_sig(module, 3);
        let name = format!("{prefix}_wide_task");
        let id = define_fn(
            module,
            &mut ctx,
            &mut fctx,
            &name,
            Linkage::Local,
            sig,
            |b, m, p| {
                let fl = MemFlagsData::trusted();
                let mut args: Vec<_> = (0..5)
                    .map(|i| b.ins().load(types::I64, fl, p[0], 8 * i))
                    .collect();
                let f = b.ins().load(types::I64, fl, p[0], 40);
                args.extend([p[1], p[2]]);
                let sr = b.import_signature(ptr_sig(m, 7));
                b.ins().call_indirect(sr, f, &args);
                b.ins().return_(&[]);
            },
        )?;
        Some(id)
    };
    let shared = Shared {
        libm: libm_ids,
        task: task_id,
        opts,
    };
    let mut cx = Cx {
        module,
        ctx: &mut ctx,
        fctx: &mut fctx,
        shared: &shared,
    };
    let Emitted {
        run_pool: run_pool_id,
        run_profile,
        plan,
        steps,
        kernels,
    } = cx.emit_graph(g, &prefix, wide, true)?;
    let run_profile_id = run_profile.expect("the top level has a profiled schedule");

    // run(inputs, outputs, workspace) = run_pool(inputs, outputs, workspace, NULL)
    let Cx {
        module, ctx, fctx, ..
    } = cx;
    let mut run_sig = ptr_sig(module, 3);
    run_sig.returns.push(AbiParam::new(types::I32));
    let name = format!("{prefix}_run");
    let run_id = define_fn(
        module,
        ctx,
        fctx,
        &name,
        Linkage::Local,
        run_sig,
        |b, m, p| {
            let mut p = p.to_vec();
            p.push(b.ins().iconst(types::I64, 0));
            let fref = m.declare_func_in_func(run_pool_id, b.func);
            let call = b.ins().call(fref, &p);
            let r = b.inst_results(call)[0];
            b.ins().return_(&[r]);
        },
    )?;

    // descriptor
    let desc_id = emit_descriptor(
        module,
        g,
        &prefix,
        &opts.name,
        &plan,
        &steps,
        [run_id, run_pool_id, run_profile_id],
    )?;
    let mut getters = vec![format!("{prefix}_model")];
    if opts.export_default {
        getters.push("kiln_model_default".into());
    }
    for gname in getters {
        let mut s = module.make_signature();
        s.returns.push(AbiParam::new(types::I64));
        define_fn(module, ctx, fctx, &gname, Linkage::Export, s, |b, m, _| {
            let gv = m.declare_data_in_func(desc_id, b.func);
            let a = b.ins().symbol_value(types::I64, gv);
            b.ins().return_(&[a]);
        })?;
    }
    Ok(CompileInfo {
        workspace_size: plan.workspace_size,
        workspace_align: memplan::ALIGN,
        naive_size: plan.naive_size,
        kernels,
    })
}

/// A graph's emitted schedule: `run_pool` (and, at the top level, `run_profile`), its memory
/// plan, its profile steps (name, op, flops) and its number of kernels.
struct Emitted {
    run_pool: FuncId,
    run_profile: Option<FuncId>,
    plan: MemPlan,
    steps: Vec<(String, String, u64)>,
    kernels: usize,
}

/// What every graph's code shares: the libm imports, the wide kernels' task trampoline, the
/// options.
struct Shared<'o> {
    libm: Vec<(&'static str, FuncId)>,
    task: Option<FuncId>,
    opts: &'o CpuOptions,
}

/// The code generator's state while it emits a graph and its sub-graphs.
struct Cx<'a, 's, M: Module> {
    module: &'a mut M,
    ctx: &'a mut Context,
    fctx: &'a mut FunctionBuilderContext,
    shared: &'s Shared<'s>,
}

/// One read-only, 64-byte aligned data object.
fn define_const<M: Module>(module: &mut M, name: &str, bytes: &[u8]) -> Result<DataId, CpuError> {
    let id = module
        .declare_data(name, Linkage::Local, false, false)
        .map_err(cg)?;
    let mut d = DataDescription::new();
    d.define(if bytes.is_empty() {
        vec![0u8; 1].into_boxed_slice()
    } else {
        bytes.to_vec().into_boxed_slice()
    });
    d.set_align(64);
    module.define_data(id, &d).map_err(cg)?;
    Ok(id)
}

impl<M: Module> Cx<'_, '_, M> {
    /// Emit graph `g`'s constants and kernels (and, recursively, those of its sub-graphs) and
    /// its schedule as a function `<prefix>_run_pool(inputs, outputs, workspace, pool) ->
    /// status` over its own memory plan. A sub-graph's function is called by its control-flow
    /// node's kernel with that node's operands as its inputs and outputs and the node's
    /// scratch as its workspace. Returns the function, the plan and the number of kernels.
    fn emit_graph(
        &mut self,
        g: &Graph,
        prefix: &str,
        wide: &Wide,
        top: bool,
    ) -> Result<Emitted, CpuError> {
        let opts = self.shared.opts;
        let fcfg = self.module.isa().frontend_config();
        let plan: MemPlan = plan_for(g, opts.wide, opts.conv_schedule);
        if plan.workspace_size > kiln_ir::limits::MAX_WORKSPACE_BYTES {
            return Err(CpuError::Codegen(format!(
                "the model needs a {}-byte workspace, more than the limit of {} bytes (16 TiB)",
                plan.workspace_size,
                kiln_ir::limits::MAX_WORKSPACE_BYTES
            )));
        }

        // constants: one data object each; weights of wide convolutions are emitted once
        // more in their packed layout, and only packed when nothing else reads them
        let mut raw_use: std::collections::HashSet<kiln_ir::ValueId> =
            g.outputs.iter().copied().collect();
        for (k, (_, node)) in g.iter_nodes().enumerate() {
            let packed = wide.convs[k]
                .as_ref()
                .map(|c| c.packed_inputs())
                .unwrap_or_default();
            for (i, v) in node.inputs.iter().enumerate() {
                if !packed.contains(&i) {
                    raw_use.insert(*v);
                }
            }
        }
        let mut const_ids: HashMap<usize, DataId> = HashMap::new();
        for v in g.live_consts() {
            if !raw_use.contains(&v) {
                continue;
            }
            let bytes = g.const_data(v).unwrap().bytes();
            let id = define_const(self.module, &format!("{prefix}_c{}", v.0), bytes)?;
            const_ids.insert(v.index(), id);
        }
        // (kernel, input) -> the input's constant in the kernel's layout
        let mut packed_ids: HashMap<(usize, usize), DataId> = HashMap::new();
        let mut wide_ids: HashMap<usize, WideIds> = HashMap::new();
        for (k, (_, node)) in g.iter_nodes().enumerate() {
            let module = &mut *self.module;
            if let Some(rk) = &wide.rows[k] {
                let fid = module
                    .declare_function(&rk.name, Linkage::Import, &ptr_sig(module, 7))
                    .map_err(cg)?;
                wide_ids.insert(
                    k,
                    WideIds {
                        main: fid,
                        pack: None,
                        wino: None,
                    },
                );
            }
            let Some(ck) = &wide.convs[k] else { continue };
            let fid = module
                .declare_function(&ck.name, Linkage::Import, &ptr_sig(module, 7))
                .map_err(cg)?;
            let pid = if ck.packs() {
                Some(
                    module
                        .declare_function(&ck.pack_name(), Linkage::Import, &ptr_sig(module, 7))
                        .map_err(cg)?,
                )
            } else {
                None
            };
            let wino = match &ck.wino {
                Some(_) => {
                    let [wi, wo] = ck.wino_names();
                    Some([
                        module
                            .declare_function(&wi, Linkage::Import, &ptr_sig(module, 7))
                            .map_err(cg)?,
                        module
                            .declare_function(&wo, Linkage::Import, &ptr_sig(module, 7))
                            .map_err(cg)?,
                    ])
                }
                None => None,
            };
            wide_ids.insert(
                k,
                WideIds {
                    main: fid,
                    pack: pid,
                    wino,
                },
            );
            for i in ck.packed_inputs() {
                let w: Vec<f32> = g
                    .const_data(node.inputs[i])
                    .expect("a packed input is a constant")
                    .bytes()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let bytes: Vec<u8> = ck
                    .packed_input(i, &w)
                    .iter()
                    .flat_map(|f| f.to_le_bytes())
                    .collect();
                let id = define_const(module, &format!("{prefix}_k{k}_in{i}_pk"), &bytes)?;
                packed_ids.insert((k, i), id);
            }
        }

        // one kernel per node; a control-flow node's sub-graphs first (their functions are
        // what its kernel calls)
        let mut kernel_ids = Vec::new();
        let mut unsupported = Vec::new();
        let mut n_kernels = 0;
        let n_nodes = g.iter_nodes().count();
        let progress = if top { opts.progress.clone() } else { None };
        for (i, (nid, node)) in g.iter_nodes().enumerate() {
            Progress::report(&progress, "codegen", i, n_nodes);
            // views sharing their input's storage, concats whose inputs were computed in place
            if (node.op.is_view() && same_storage(&plan, node.inputs[0], node.outputs[0]))
                || plan.concat_in_place.contains(&nid)
            {
                kernel_ids.push(None);
                continue;
            }
            let mut bodies = Vec::new();
            for (j, body) in node.op.bodies().into_iter().enumerate() {
                let e = self.emit_graph(
                    body,
                    &format!("{prefix}_k{i}_b{j}"),
                    &wide.bodies[i][j],
                    false,
                )?;
                n_kernels += e.kernels;
                bodies.push((e.run_pool, e.plan.workspace_size));
            }
            let ins: Vec<&TensorType> = node.inputs.iter().map(|v| g.ty(*v)).collect();
            let outs: Vec<&TensorType> = node.outputs.iter().map(|v| g.ty(*v)).collect();
            let name = format!("{prefix}_k{i}_{}", node.op.name());
            let has_scratch = plan.scratch[nid.index()].is_some();
            let has_pool =
                wide.convs[i].is_some() || wide.rows[i].is_some() || node.op.is_control_flow();
            let nparams =
                node.inputs.len() + node.outputs.len() + has_scratch as usize + has_pool as usize;
            let mut kd = KernelDef {
                module: &mut *self.module,
                ctx: &mut *self.ctx,
                fctx: &mut *self.fctx,
                libm: &self.shared.libm,
                wide: wide.convs[i].clone().map(|ck| (ck, wide_ids[&i])),
                rows: wide.rows[i].clone().map(|rk| (rk, wide_ids[&i].main)),
                task: self.shared.task,
                bodies: bodies.iter().map(|b| b.0).collect(),
            };
            let res = if node.op.is_control_flow() {
                let ws: Vec<usize> = bodies.iter().map(|b| b.1).collect();
                let fs = memplan::flow_scratch(g, node, &ws).expect("a control-flow node");
                kd.define(&name, nparams, |kb| {
                    flow::emit(kb, node, &ins, &outs, &fs, has_scratch)
                })?
            } else {
                let statuses = kernel_statuses(&node.op, &ins);
                kd.define(&name, nparams, |kb| {
                    let r = kernels::emit(kb, node, &ins, &outs);
                    debug_assert!(
                        kb.fails.iter().all(|(s, _)| statuses.contains(s)),
                        "{name}: a status kernel_statuses does not list"
                    );
                    r
                })?
            };
            match res {
                // a control-flow kernel returns its bodies' statuses and its own
                Ok((id, fallible)) => {
                    n_kernels += 1;
                    kernel_ids.push(Some((id, fallible || node.op.is_control_flow())));
                }
                Err(msg) => {
                    unsupported.push(CpuError::Unsupported {
                        node: node.name.clone(),
                        op: node.op.name().into(),
                        msg,
                    });
                    kernel_ids.push(None);
                }
            }
        }
        Progress::report(&progress, "codegen", n_nodes, n_nodes);
        if unsupported.len() == 1 {
            return Err(unsupported.pop().unwrap());
        }
        if !unsupported.is_empty() {
            return Err(CpuError::UnsupportedMany(unsupported));
        }

        // output copies (an output that is an input, a constant, or listed twice)
        let mut copy_ids = Vec::new();
        for (j, (_, v)) in plan.output_copies.iter().enumerate() {
            let bytes = g.ty(*v).size_bytes();
            let mut kd = KernelDef {
                module: &mut *self.module,
                ctx: &mut *self.ctx,
                fctx: &mut *self.fctx,
                libm: &self.shared.libm,
                wide: None,
                rows: None,
                task: None,
                bodies: Vec::new(),
            };
            let (id, _) = kd
                .define(&format!("{prefix}_copy{j}"), 2, |kb| {
                    kernels::copy(kb, 0, 1, bytes);
                    Ok(())
                })?
                .map_err(CpuError::Codegen)?;
            copy_ids.push(id);
        }

        // The schedule's steps for profiles (ABI v3): each called kernel (a control-flow
        // node is one step, its sub-graphs included), then the output copies.
        let mut steps: Vec<(String, String, u64)> = Vec::new();
        for (k, (_, node)) in g.iter_nodes().enumerate() {
            if kernel_ids[k].is_some() {
                steps.push((
                    node.name.clone(),
                    kiln_ir::cost::op_label(node),
                    kiln_ir::cost::flops(g, node),
                ));
            }
        }
        for (oi, _) in &plan.output_copies {
            steps.push((g.value(g.outputs[*oi]).name.clone(), "copy".into(), 0));
        }

        // run_pool(inputs, outputs, workspace, pool) -> status, and (top level only) the
        // instrumented run_profile(inputs, outputs, workspace, pool, profiler): the same
        // schedule with profiler->begin(ctx, i) / end(ctx, i) around step i (a separate
        // function, so the normal run path carries no profiling code)
        let mut sched_ids = Vec::new();
        let variants: &[bool] = if top { &[false, true] } else { &[false] };
        for &profile in variants {
            let module = &mut *self.module;
            let ctx = &mut *self.ctx;
            let mut run_sig = ptr_sig(module, 4 + profile as usize);
            run_sig.returns.push(AbiParam::new(types::I32));
            let fname = if profile { "run_profile" } else { "run_pool" };
            let fid = module
                .declare_function(&format!("{prefix}_{fname}"), Linkage::Local, &run_sig)
                .map_err(cg)?;
            ctx.func = Function::with_name_signature(UserFuncName::user(0, fid.as_u32()), run_sig);
            let mut b = FunctionBuilder::new(&mut ctx.func, self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let p = b.block_params(entry).to_vec();
            let (inp, outp, ws, pool) = (p[0], p[1], p[2], p[3]);
            let fail_null = b.create_block();
            let fail_align = b.create_block();
            // a kernel's nonzero status, returned as it is
            let fail_status = b.create_block();
            b.append_block_param(fail_status, types::I32);
            let check_null = |b: &mut FunctionBuilder, v| {
                let next = b.create_block();
                b.ins().brif(v, next, &[], fail_null, &[]);
                b.switch_to_block(next);
            };
            // a sub-graph's function is called by generated code only: its pointers were
            // checked by the caller's
            if top {
                check_null(&mut b, inp);
                check_null(&mut b, outp);
                // a pool without its parallel_for (the pool itself may be null)
                let with_pool = b.create_block();
                let pool_ok = b.create_block();
                b.ins().brif(pool, with_pool, &[], pool_ok, &[]);
                b.switch_to_block(with_pool);
                let pf = b.ins().load(types::I64, MemFlagsData::trusted(), pool, 16);
                b.ins().brif(pf, pool_ok, &[], fail_null, &[]);
                b.switch_to_block(pool_ok);
            }
            // (ctx, begin, end, callback signature) of the profiler
            let prof = if profile {
                check_null(&mut b, p[4]);
                let fl = MemFlagsData::trusted();
                let pctx = b.ins().load(types::I64, fl, p[4], 0);
                let begin = b.ins().load(types::I64, fl, p[4], 8);
                let end = b.ins().load(types::I64, fl, p[4], 16);
                check_null(&mut b, begin);
                check_null(&mut b, end);
                let mut cb = module.make_signature();
                cb.params.push(AbiParam::new(types::I64));
                cb.params.push(AbiParam::new(types::I32));
                let sref = b.import_signature(cb);
                Some((pctx, begin, end, sref))
            } else {
                None
            };
            let mark = |b: &mut FunctionBuilder, f: usize, step: usize| {
                if let Some((pctx, begin, end, sref)) = prof {
                    let i = b.ins().iconst(types::I32, step as i64);
                    b.ins()
                        .call_indirect(sref, if f == 0 { begin } else { end }, &[pctx, i]);
                }
            };
            if top && plan.workspace_size > 0 {
                check_null(&mut b, ws);
                let low = b.ins().band_imm_u(ws, (memplan::ALIGN - 1) as i64);
                let ok = b.create_block();
                b.ins().brif(low, fail_align, &[], ok, &[]);
                b.switch_to_block(ok);
            }
            let mut in_ptrs = Vec::new();
            for i in 0..g.inputs.len() {
                let v = b
                    .ins()
                    .load(types::I64, MemFlagsData::trusted(), inp, (8 * i) as i32);
                if top {
                    check_null(&mut b, v);
                }
                in_ptrs.push(v);
            }
            let mut out_ptrs = Vec::new();
            for j in 0..g.outputs.len() {
                let v = b
                    .ins()
                    .load(types::I64, MemFlagsData::trusted(), outp, (8 * j) as i32);
                if top {
                    check_null(&mut b, v);
                }
                out_ptrs.push(v);
            }
            let storage_ptr = |b: &mut FunctionBuilder,
                               module: &mut M,
                               v: kiln_ir::ValueId|
             -> cranelift_codegen::ir::Value {
                match plan.storage[v.index()].expect("planned") {
                    Storage::Input(i) => in_ptrs[i],
                    Storage::Output(j) => out_ptrs[j],
                    Storage::Workspace(off) => b.ins().iadd_imm_u(ws, off as i64),
                    Storage::Const(c) => {
                        let gv = module.declare_data_in_func(const_ids[&c.index()], b.func);
                        b.ins().symbol_value(types::I64, gv)
                    }
                }
            };
            let mut step = 0;
            for (k, (nid, node)) in g.iter_nodes().enumerate() {
                let Some((fid, status)) = kernel_ids[k] else {
                    continue;
                };
                let fref = module.declare_func_in_func(fid, b.func);
                let mut args = Vec::new();
                for (i, &v) in node.inputs.iter().chain(&node.outputs).enumerate() {
                    args.push(match packed_ids.get(&(k, i)) {
                        Some(pid) => {
                            let gv = module.declare_data_in_func(*pid, b.func);
                            b.ins().symbol_value(types::I64, gv)
                        }
                        None => storage_ptr(&mut b, module, v),
                    });
                }
                if let Some(off) = plan.scratch[nid.index()] {
                    args.push(b.ins().iadd_imm_u(ws, off as i64));
                }
                if wide.convs[k].is_some() || wide.rows[k].is_some() || node.op.is_control_flow() {
                    args.push(pool);
                }
                mark(&mut b, 0, step);
                let call = b.ins().call(fref, &args);
                if status {
                    let r = b.inst_results(call)[0];
                    let next = b.create_block();
                    b.ins()
                        .brif(r, fail_status, &[BlockArg::Value(r)], next, &[]);
                    b.switch_to_block(next);
                }
                mark(&mut b, 1, step);
                step += 1;
            }
            for (j, (oi, v)) in plan.output_copies.iter().enumerate() {
                let fref = module.declare_func_in_func(copy_ids[j], b.func);
                let src = storage_ptr(&mut b, module, *v);
                mark(&mut b, 0, step);
                b.ins().call(fref, &[src, out_ptrs[*oi]]);
                mark(&mut b, 1, step);
                step += 1;
            }
            debug_assert_eq!(step, steps.len());
            let zero = b.ins().iconst(types::I32, 0);
            b.ins().return_(&[zero]);
            b.switch_to_block(fail_null);
            let one = b.ins().iconst(types::I32, 1);
            b.ins().return_(&[one]);
            b.switch_to_block(fail_align);
            let two = b.ins().iconst(types::I32, 2);
            b.ins().return_(&[two]);
            b.switch_to_block(fail_status);
            let st = b.block_params(fail_status)[0];
            b.ins().return_(&[st]);
            b.seal_all_blocks();
            b.finalize(fcfg);
            module.define_function(fid, ctx).map_err(cg)?;
            ctx.clear();
            sched_ids.push(fid);
        }
        Ok(Emitted {
            run_pool: sched_ids[0],
            run_profile: sched_ids.get(1).copied(),
            plan,
            steps,
            kernels: n_kernels,
        })
    }
}

/// Declare and define a small straight-line function: `body` gets the builder (in the entry
/// block), the module and the function's parameters, and emits the return.
fn define_fn<M: Module>(
    module: &mut M,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
    name: &str,
    linkage: Linkage,
    sig: Signature,
    body: impl FnOnce(&mut FunctionBuilder, &mut M, &[cranelift_codegen::ir::Value]),
) -> Result<FuncId, CpuError> {
    let id = module.declare_function(name, linkage, &sig).map_err(cg)?;
    ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
    let fcfg = module.isa().frontend_config();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        body(&mut b, module, &p);
        b.seal_all_blocks();
        b.finalize(fcfg);
    }
    module.define_function(id, ctx).map_err(cg)?;
    ctx.clear();
    Ok(id)
}

/// The LLVM functions of one node's wide kernel: the kernel, its input packing and the
/// Winograd input/output transforms.
#[derive(Clone, Copy)]
struct WideIds {
    main: FuncId,
    pack: Option<FuncId>,
    wino: Option<[FuncId; 2]>,
}

/// Declares and defines one kernel function taking `nparams` pointers, with the libm imports.
struct KernelDef<'m, M: Module> {
    module: &'m mut M,
    ctx: &'m mut Context,
    fctx: &'m mut FunctionBuilderContext,
    libm: &'m [(&'static str, FuncId)],
    /// The wide kernel the node's kernel calls (and its helper functions), if any.
    wide: Option<(ukernel::ConvKernel, WideIds)>,
    /// The row kernel the node's kernel calls, if any.
    rows: Option<(rows::RowKernel, FuncId)>,
    /// The task trampoline for splitting wide kernels over a pool.
    task: Option<FuncId>,
    /// The functions of a control-flow node's sub-graphs.
    bodies: Vec<FuncId>,
}

impl<M: Module> KernelDef<'_, M> {
    /// `Ok(Err(msg))` when `body` cannot lower the op (nothing is defined then). A kernel
    /// returns an i32 status (`KILN_OK`, or the `KILN_ERR_*` of a [`Kb::fail_unless`]); the
    /// flag says whether it can fail, i.e. whether `run` must look at the status.
    fn define(
        &mut self,
        name: &str,
        nparams: usize,
        body: impl FnOnce(&mut Kb) -> kernels::KResult,
    ) -> Result<Result<(FuncId, bool), String>, CpuError> {
        let mut sig = ptr_sig(&*self.module, nparams);
        sig.returns.push(AbiParam::new(types::I32));
        let id = self
            .module
            .declare_function(name, Linkage::Local, &sig)
            .map_err(cg)?;
        self.ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
        let fcfg = self.module.isa().frontend_config();
        let res = {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let params = b.block_params(entry).to_vec();
            let mut libm = HashMap::new();
            for (f, fid) in self.libm {
                libm.insert(*f, self.module.declare_func_in_func(*fid, b.func));
            }
            let (ukernel, pack, wino) = match self.wide.take() {
                Some((ck, ids)) => (
                    Some((ck, self.module.declare_func_in_func(ids.main, b.func))),
                    ids.pack
                        .map(|p| self.module.declare_func_in_func(p, b.func)),
                    ids.wino
                        .map(|fs| fs.map(|f| self.module.declare_func_in_func(f, b.func))),
                ),
                None => (None, None, None),
            };
            let rows = self
                .rows
                .take()
                .map(|(rk, fid)| (rk, self.module.declare_func_in_func(fid, b.func)));
            let task = self
                .task
                .map(|t| self.module.declare_func_in_func(t, b.func));
            let bodies = self
                .bodies
                .iter()
                .map(|f| self.module.declare_func_in_func(*f, b.func))
                .collect();
            let mut kb = Kb {
                b,
                params,
                libm,
                ukernel,
                pack,
                wino,
                rows,
                task,
                bodies,
                fcfg,
                fails: Vec::new(),
            };
            let r = body(&mut kb);
            let ok = kb.b.ins().iconst(types::I32, kiln_runtime::KILN_OK as i64);
            kb.b.ins().return_(&[ok]);
            for &(status, blk) in &kb.fails {
                kb.b.switch_to_block(blk);
                let s = kb.b.ins().iconst(types::I32, status as i64);
                kb.b.ins().return_(&[s]);
            }
            let fallible = !kb.fails.is_empty();
            kb.b.seal_all_blocks();
            kb.b.finalize(fcfg);
            r.map(|()| fallible)
        };
        let fallible = match res {
            Ok(f) => f,
            Err(msg) => {
                self.ctx.clear();
                return Ok(Err(msg));
            }
        };
        self.module
            .define_function(id, self.ctx)
            .map_err(|e| CpuError::Codegen(format!("{name}: {e:?}")))?;
        self.ctx.clear();
        Ok(Ok((id, fallible)))
    }
}

/// The memory plan the CPU back end uses: intermediates plus per-kernel scratch.
pub fn plan(g: &Graph) -> MemPlan {
    plan_for(g, true, ConvSchedule::Auto)
}

/// The memory plan for code with (`wide`) or without the LLVM kernels: depthwise convolutions
/// on the wide kernel read their input in place and need no packing scratch; Winograd
/// convolutions need room for their transformed input and products.
pub fn plan_for(g: &Graph, wide: bool, schedule: ConvSchedule) -> MemPlan {
    memplan::plan_with_scratch(g, &|n| {
        if n.op.is_control_flow() {
            let ws: Vec<usize> =
                n.op.bodies()
                    .into_iter()
                    .map(|b| plan_for(b, wide, schedule).workspace_size)
                    .collect();
            return memplan::flow_scratch(g, n, &ws).map_or(0, |f| f.size);
        }
        if wide && wide_depthwise(g, n).is_some() {
            return 0;
        }
        // a constant left operand of a product was packed at compile time
        if wide && const_operand(g, n, 0) {
            return 0;
        }
        // blocked depthwise convolutions (and pools) read their input in place
        if wide
            && matches!(&n.op, kiln_ir::Op::Conv(_) | kiln_ir::Op::MaxPool(_))
            && !g.ty(n.inputs[0]).layout.is_plain()
        {
            return 0;
        }
        if wide && let Some(geom) = wino_geom(g, n, schedule) {
            return wino::scratch_bytes(&geom);
        }
        let ins: Vec<&TensorType> = n.inputs.iter().map(|v| g.ty(*v)).collect();
        let outs: Vec<&TensorType> = n.outputs.iter().map(|v| g.ty(*v)).collect();
        kernels::scratch_bytes(n, &ins, &outs)
    })
}

/// A 2-D f32 convolution with constant weights (what the wide convolution kernels take): its
/// attributes and geometry.
fn wide_conv_geom<'a>(
    g: &Graph,
    node: &'a kiln_ir::Node,
) -> Option<(&'a kiln_ir::ops::ConvAttrs, kernels::Geom)> {
    let kiln_ir::Op::Conv(a) = &node.op else {
        return None;
    };
    let ins: Vec<&TensorType> = node.inputs.iter().map(|v| g.ty(*v)).collect();
    let out = g.ty(node.outputs[0]);
    let f32s = ins
        .iter()
        .chain([&out])
        .all(|t| t.dtype == kiln_ir::DType::F32);
    if !f32s
        || g.const_data(node.inputs[1]).is_none()
        || ins[0].shape.len() != 4
        || !ins[0].layout.is_plain()
        || !a.layout.is_plain()
    {
        return None;
    }
    let geom = kernels::Geom::tiled(
        (&a.kernel, &a.strides, &a.pads, &a.dilations),
        a.groups,
        ins[0],
        out,
    )
    .ok()?;
    Some((a, geom))
}

/// The geometry of a convolution the wide depthwise kernel runs (f32, constant weights, 2-D),
/// if `node` is one.
fn wide_depthwise(g: &Graph, node: &kiln_ir::Node) -> Option<kernels::Geom> {
    let (a, geom) = wide_conv_geom(g, node)?;
    (ukernel::depthwise_ok(&geom, &a.epilogue) && kernels::taps_unrollable(&geom.k)).then_some(geom)
}

/// The geometry of a convolution that runs as Winograd F(m x m, 3x3) under `schedule`, if
/// `node` is one (f32, constant weights, 2-D, 3x3 stride 1 ungrouped; `Auto` also asks for
/// enough channels).
fn wino_geom(g: &Graph, node: &kiln_ir::Node, schedule: ConvSchedule) -> Option<kernels::Geom> {
    let (a, geom) = wide_conv_geom(g, node)?;
    // an epilogue the wide kernels cannot apply sends the node to the Cranelift kernels
    if !kiln_target_llvm::epilogue_supported(&a.epilogue) {
        return None;
    }
    let pick = match schedule {
        ConvSchedule::Auto => wino::profitable(&geom),
        ConvSchedule::Winograd => wino::eligible(&geom),
        ConvSchedule::Pixels | ConvSchedule::Channels => false,
    };
    pick.then_some(geom)
}

fn same_storage(plan: &MemPlan, a: kiln_ir::ValueId, b: kiln_ir::ValueId) -> bool {
    plan.storage[a.index()] == plan.storage[b.index()]
}

/// Emit the `kiln_model` descriptor (layout in runtime/include/kiln.h) and its tables.
fn emit_descriptor<M: Module>(
    module: &mut M,
    g: &Graph,
    prefix: &str,
    name: &str,
    plan: &MemPlan,
    steps: &[(String, String, u64)],
    run: [FuncId; 3],
) -> Result<DataId, CpuError> {
    let mut n = 0usize;
    let mut data = |module: &mut M, bytes: Vec<u8>, align: u64| -> Result<DataId, CpuError> {
        n += 1;
        let id = module
            .declare_data(&format!("{prefix}_d{n}"), Linkage::Local, false, false)
            .map_err(cg)?;
        let mut d = DataDescription::new();
        d.define(bytes.into_boxed_slice());
        d.set_align(align);
        module.define_data(id, &d).map_err(cg)?;
        Ok(id)
    };
    let cstr = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.retain(|&c| c != 0);
        v.push(0);
        v
    };
    // tensor info tables
    let mut tables = Vec::new();
    for list in [&g.inputs, &g.outputs] {
        let mut names = Vec::new();
        let mut dims = Vec::new();
        for &v in list.iter() {
            let val = g.value(v);
            names.push(data(module, cstr(&val.name), 1)?);
            let dbytes: Vec<u8> = val
                .ty
                .shape
                .iter()
                .flat_map(|&d| (d as i64).to_le_bytes())
                .chain(std::iter::once(0u8).take(if val.ty.shape.is_empty() { 8 } else { 0 }))
                .collect();
            dims.push(data(module, dbytes, 8)?);
        }
        let id = module
            .declare_data(
                &format!("{prefix}_t{}", tables.len()),
                Linkage::Local,
                false,
                false,
            )
            .map_err(cg)?;
        let mut d = DataDescription::new();
        let mut bytes = Vec::new();
        for &v in list.iter() {
            let ty = g.ty(v);
            bytes.extend(0u64.to_le_bytes()); // name
            bytes.extend(ty.dtype.abi_code().to_le_bytes());
            bytes.extend((ty.rank() as i32).to_le_bytes());
            bytes.extend(0u64.to_le_bytes()); // dims
            bytes.extend((ty.size_bytes() as u64).to_le_bytes());
        }
        if bytes.is_empty() {
            bytes.push(0);
        }
        d.define(bytes.into_boxed_slice());
        d.set_align(8);
        for (k, (nm, dm)) in names.iter().zip(&dims).enumerate() {
            let gn = module.declare_data_in_data(*nm, &mut d);
            d.write_data_addr((32 * k) as u32, gn, 0);
            let gd = module.declare_data_in_data(*dm, &mut d);
            d.write_data_addr((32 * k + 16) as u32, gd, 0);
        }
        module.define_data(id, &d).map_err(cg)?;
        tables.push(id);
    }
    // the schedule's steps (kiln_node_info: name, op, flops)
    let mut step_strs = Vec::new();
    for (n, op, _) in steps {
        step_strs.push((data(module, cstr(n), 1)?, data(module, cstr(op), 1)?));
    }
    let nodes_id = module
        .declare_data(&format!("{prefix}_nodes"), Linkage::Local, false, false)
        .map_err(cg)?;
    {
        let mut d = DataDescription::new();
        let mut bytes = Vec::new();
        for (_, _, flops) in steps {
            bytes.extend(0u64.to_le_bytes());
            bytes.extend(0u64.to_le_bytes());
            bytes.extend(flops.to_le_bytes());
        }
        if bytes.is_empty() {
            bytes.push(0);
        }
        d.define(bytes.into_boxed_slice());
        d.set_align(8);
        for (k, (nm, op)) in step_strs.iter().enumerate() {
            let gn = module.declare_data_in_data(*nm, &mut d);
            d.write_data_addr((24 * k) as u32, gn, 0);
            let go = module.declare_data_in_data(*op, &mut d);
            d.write_data_addr((24 * k + 8) as u32, go, 0);
        }
        module.define_data(nodes_id, &d).map_err(cg)?;
    }
    let name_id = data(module, cstr(name), 1)?;
    let id = module
        .declare_data(
            &format!("{prefix}_model_desc"),
            Linkage::Local,
            false,
            false,
        )
        .map_err(cg)?;
    let mut d = DataDescription::new();
    let mut bytes = vec![0u8; 104];
    bytes[0..4].copy_from_slice(&ABI_VERSION.to_le_bytes());
    bytes[16..20].copy_from_slice(&(g.inputs.len() as u32).to_le_bytes());
    bytes[32..36].copy_from_slice(&(g.outputs.len() as u32).to_le_bytes());
    bytes[48..56].copy_from_slice(&(plan.workspace_size as u64).to_le_bytes());
    bytes[56..60].copy_from_slice(&(memplan::ALIGN as u32).to_le_bytes());
    bytes[80..84].copy_from_slice(&(steps.len() as u32).to_le_bytes());
    d.define(bytes.into_boxed_slice());
    d.set_align(8);
    let gn = module.declare_data_in_data(name_id, &mut d);
    d.write_data_addr(8, gn, 0);
    let gi = module.declare_data_in_data(tables[0], &mut d);
    d.write_data_addr(24, gi, 0);
    let go = module.declare_data_in_data(tables[1], &mut d);
    d.write_data_addr(40, go, 0);
    let gs = module.declare_data_in_data(nodes_id, &mut d);
    d.write_data_addr(88, gs, 0);
    for (off, f) in [(64, run[0]), (72, run[1]), (96, run[2])] {
        let fr = module.declare_func_in_data(f, &mut d);
        d.write_function_addr(off, fr);
    }
    module.define_data(id, &d).map_err(cg)?;
    Ok(id)
}

/// The run-time statuses (`KILN_ERR_*`) a node's kernel may return: `KILN_ERR_INDEX` for an
/// index op (its indices are read at run time), `KILN_ERR_DIVIDE` for an integer division.
pub fn kernel_statuses(op: &kiln_ir::Op, ins: &[&TensorType]) -> &'static [i32] {
    use kiln_ir::Op;
    use kiln_ir::ops::BinaryOp;
    match op {
        Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::GatherND { .. }
        | Op::ScatterElements { .. }
        | Op::ScatterND { .. } => &[kiln_runtime::KILN_ERR_INDEX],
        Op::Binary(BinaryOp::Div | BinaryOp::Mod | BinaryOp::Fmod) if !ins[0].dtype.is_float() => {
            &[kiln_runtime::KILN_ERR_DIVIDE]
        }
        // (and whatever its body's kernels return)
        Op::Loop(_) => &[kiln_runtime::KILN_ERR_LOOP],
        _ => &[],
    }
}

/// The nodes of `g` whose kernels may return `status` (`'name' (op)`), for error messages.
pub fn nodes_raising(g: &Graph, status: i32) -> Vec<String> {
    g.iter_nodes()
        .filter(|(_, n)| {
            let ins: Vec<&TensorType> = n.inputs.iter().map(|v| g.ty(*v)).collect();
            kernel_statuses(&n.op, &ins).contains(&status)
        })
        .map(|(_, n)| format!("'{}' ({})", n.name, n.op.name()))
        .collect()
}

/// The ISA for a target, for callers that want to check a triple early.
pub fn check_target(target: Option<&str>) -> Result<String, CpuError> {
    let isa = make_isa(target, true)?;
    Ok(isa_name(&*isa))
}

fn isa_name(isa: &dyn TargetIsa) -> String {
    isa.triple().to_string()
}
