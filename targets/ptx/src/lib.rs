//! kiln's NVIDIA GPU back end (`--target nvptx64-nvidia-cuda`).
//!
//! Every node becomes one or more GPU kernels written as LLVM IR through the shared LLVM layer
//! (`kiln-target-llvm`: [`Emit`](kiln_target_llvm::Emit), [`GpuKernel`], [`gpu_module`]) and
//! compiled by LLVM 19's NVPTX back end into one PTX module (and, when `ptxas` is found, a
//! cubin for the chosen architecture). The **launch plan** lists the kernels in schedule
//! order with their grids and the buffer of every parameter, over the same static memory plan
//! as the CPU (`kiln_ir::memplan`): one device workspace, the weights uploaded once. The result
//! is a [`CudaArtefact`] (the runtime's `cuda` feature runs it; `kiln build` embeds it in a
//! `.so`).
//!
//! The same kernel bodies compile for the host ([`Emulator`]): a grid x block loop per kernel,
//! and for kernels with barriers or warp shuffles one fiber per GPU thread, so `kiln run
//! --device cuda-emulated` computes what the GPU computes without one.
//!
//! Invariant: depends on `kiln-ir`, `kiln-target-llvm` and the runtime's artefact format only.

mod emu;
mod gemm;
mod kern;
pub mod ptxas;

pub use emu::Emulator;
pub use gemm::{TILES, Tile};
pub use kiln_runtime::cuda_artefact::{Buf, Copy, CudaArtefact, Launch as PlanLaunch};

use kern::{Arg, Launch};
use kiln_ir::memplan::{self, Storage};
use kiln_ir::{Graph, Node, Op};
use kiln_target_llvm::{GpuKernel, LlvmTarget, gpu_module};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum PtxError {
    /// Nodes without a GPU kernel, all listed.
    #[error(
        "no GPU kernel for {} node(s): {}",
        .0.len(),
        .0.iter().map(|(n, op, why)| format!("'{n}' ({op}): {why}")).collect::<Vec<_>>().join("; ")
    )]
    Unsupported(Vec<(String, String, String)>),
    #[error("{0}")]
    Llvm(#[from] kiln_target_llvm::LlvmError),
    #[error("{0}")]
    Msg(String),
}

/// Arithmetic of the dense products (`--gpu-precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 fused multiply-adds: the same arithmetic as the CPU back end's (the default).
    #[default]
    Fp32,
    /// Tensor cores with TF32 inputs and f32 accumulation.
    Tf32,
    /// Tensor cores with f16 inputs and f32 accumulation.
    Fp16,
    /// Tensor cores with bf16 inputs and f32 accumulation.
    Bf16,
}

/// What the GPU back end compiles for.
#[derive(Debug, Clone)]
pub struct PtxOptions {
    /// Symbol prefix and kernel name prefix.
    pub name: String,
    /// `sm_70` .. `sm_90a` (`--gpu-arch`).
    pub sm: String,
    /// PTX ISA version times ten (`None`: the oldest that has `sm`).
    pub ptx: Option<u32>,
    pub precision: Precision,
    /// Assemble a cubin with `ptxas` when one is found ([`ptxas::find`]).
    pub cubin: bool,
    /// Generate the PTX (off for the host emulation, which needs only the kernels' IR).
    pub ptx_text: bool,
}

impl PtxOptions {
    pub fn new(name: &str) -> PtxOptions {
        PtxOptions {
            name: name.into(),
            sm: "sm_80".into(),
            ptx: None,
            precision: Precision::Fp32,
            cubin: true,
            ptx_text: true,
        }
    }
}

/// A compiled model: the artefact and what made it (for the emulator and the reports).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub artefact: CudaArtefact,
    /// Every distinct kernel, in the order of their first launch.
    pub kernels: Vec<GpuKernel>,
    /// The node each launch computes (name, op).
    pub nodes: Vec<(String, String)>,
    /// `ptxas -v` per kernel when a cubin was assembled.
    pub ptxas: Option<Vec<ptxas::KernelInfo>>,
}

/// The symbol-safe prefix of a name (`[A-Za-z0-9_]`, not starting with a digit).
pub fn sym(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// The kernels of one node (`name` prefixes the kernel names).
fn lower(g: &Graph, n: &Node, name: &str) -> Result<Vec<Launch>, String> {
    let any_blocked = n
        .inputs
        .iter()
        .chain(&n.outputs)
        .any(|&v| !g.ty(v).layout.is_plain());
    if any_blocked {
        return Err(
            "channel-blocked layouts have no GPU kernel (compile without the CPU layout pass)"
                .into(),
        );
    }
    match &n.op {
        Op::Conv(a) => {
            let x = g.ty(n.inputs[0]);
            if x.shape.len() > 4 {
                return Err("3-D convolutions have no GPU kernel".into());
            }
            if !kern::steps_supported(&a.epilogue) {
                return Err("epilogue step without a GPU lowering".into());
            }
            let cg = x.shape[1] / a.groups;
            if cg == 1 && a.groups > 1 {
                if g.const_data(n.inputs[1]).is_none() {
                    // still fine: the direct kernel reads w at run time
                }
                kern::depthwise(g, n, name, a)
            } else {
                gemm::conv(g, n, name, a)
            }
        }
        Op::MatMul(a) => {
            if !kern::steps_supported(&a.epilogue) {
                return Err("epilogue step without a GPU lowering".into());
            }
            gemm::matmul(g, n, name, a)
        }
        Op::Gemm(a) => {
            if !kern::steps_supported(&a.epilogue) {
                return Err("epilogue step without a GPU lowering".into());
            }
            gemm::gemm(g, n, name, a)
        }
        Op::MaxPool(a) | Op::AveragePool(a) => {
            if g.ty(n.inputs[0]).dtype != kiln_ir::DType::F32 {
                return Err("non-f32 pool".into());
            }
            kern::pool(g, n, name, a, matches!(n.op, Op::MaxPool(_)))
        }
        Op::GlobalAveragePool => {
            let r = g.ty(n.inputs[0]).shape.len();
            let axes: Vec<usize> = (2..r).collect();
            kern::reduce(g, n, name, kiln_ir::ops::ReduceKind::Mean, &axes)
        }
        Op::Reduce { kind, axes, .. } => {
            if g.ty(n.inputs[0]).dtype != kiln_ir::DType::F32 {
                return Err("non-f32 reduction".into());
            }
            kern::reduce(g, n, name, *kind, axes)
        }
        Op::Softmax { axis, kind } => kern::softmax(g, n, name, *axis, *kind),
        Op::LayerNorm { axis, epsilon } => kern::layer_norm(g, n, name, *axis, *epsilon),
        Op::Transpose { .. }
        | Op::Expand { .. }
        | Op::Slice(_)
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Pad { .. }
        | Op::Relayout { .. } => kern::movement(g, n, name),
        Op::ConvTranspose(a) => kern::conv_transpose(g, n, name, a),
        Op::Gather { axis } => kern::gather(g, n, name, *axis),
        Op::Resize(a) => kern::resize(g, n, name, a),
        _ if kern::elementwise_ok(g, n) => kern::elementwise(g, n, name),
        _ => Err("no GPU kernel".into()),
    }
    .and_then(|ls| {
        // an f32-only op given other types
        for l in &ls {
            if l.kernel.smem > 48 * 1024 {
                return Err(format!("{} bytes of shared memory", l.kernel.smem));
            }
        }
        Ok(ls)
    })
}

/// Ops of `g` that have no GPU kernel: (node, op, why).
pub fn unsupported(g: &Graph) -> Vec<(String, String, String)> {
    let mut bad = Vec::new();
    for (k, (_, n)) in g.iter_nodes().enumerate() {
        if n.op.is_view() {
            continue;
        }
        if let Err(why) = lower(g, n, &format!("k{k}")) {
            bad.push((n.name.clone(), n.op.name().to_string(), why));
        }
    }
    bad
}

fn tensor_info(g: &Graph, v: kiln_ir::ValueId) -> kiln_runtime::TensorInfo {
    let t = g.ty(v);
    kiln_runtime::TensorInfo {
        name: g.value(v).name.clone(),
        dtype: t.dtype.abi_code(),
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        nbytes: t.size_bytes(),
    }
}

/// Compile `g` (verified, optimized without channel-blocked layouts) for the GPU.
pub fn compile(g: &Graph, o: &PtxOptions) -> Result<Compiled, PtxError> {
    let target = LlvmTarget::nvptx(&o.sm, o.ptx)?;
    let prefix = sym(&o.name);
    let plan = memplan::plan(g);
    let concat_skip: std::collections::HashSet<_> = plan.concat_in_place.iter().copied().collect();
    let mut launches: Vec<(Launch, usize)> = Vec::new();
    let mut bad = Vec::new();
    let mut nodes = Vec::new();
    for (k, (nid, n)) in g.iter_nodes().enumerate() {
        if n.op.is_view() || concat_skip.contains(&nid) {
            continue;
        }
        match lower(g, n, &format!("{prefix}_k{k}")) {
            Ok(ls) => {
                for l in ls {
                    launches.push((l, nodes.len()));
                }
                nodes.push((n.name.clone(), n.op.name().to_string()));
            }
            Err(why) => bad.push((n.name.clone(), n.op.name().to_string(), why)),
        }
    }
    if !bad.is_empty() {
        return Err(PtxError::Unsupported(bad));
    }
    // the weights: constants and tables, each 256-byte aligned
    let mut weights: Vec<u8> = Vec::new();
    let mut const_off: HashMap<u32, u64> = HashMap::new();
    let mut add = |w: &mut Vec<u8>, bytes: &[u8]| -> u64 {
        let off = w.len().div_ceil(256) * 256;
        w.resize(off, 0);
        w.extend_from_slice(bytes);
        off as u64
    };
    let buf_of = |v: kiln_ir::ValueId,
                  weights: &mut Vec<u8>,
                  const_off: &mut HashMap<u32, u64>,
                  add: &mut dyn FnMut(&mut Vec<u8>, &[u8]) -> u64|
     -> Result<Buf, PtxError> {
        Ok(
            match plan.storage[v.index()]
                .ok_or_else(|| PtxError::Msg(format!("value {} has no storage", g.value(v).name)))?
            {
                Storage::Input(i) => Buf::Input(i as u32, 0),
                Storage::Output(j) => Buf::Output(j as u32, 0),
                Storage::Workspace(off) => Buf::Workspace(off as u64),
                Storage::Const(c) => {
                    let off = match const_off.get(&(c.index() as u32)) {
                        Some(&o) => o,
                        None => {
                            let data = g.const_data(c).expect("constant");
                            let o = add(weights, data.as_ref());
                            const_off.insert(c.index() as u32, o);
                            o
                        }
                    };
                    Buf::Weights(off)
                }
            },
        )
    };
    let mut plan_launches = Vec::new();
    let mut kernels: Vec<GpuKernel> = Vec::new();
    let mut knodes = Vec::new();
    // identical kernels (same body but for the name: layers of one shape) are compiled once
    let mut same: HashMap<String, String> = HashMap::new();
    for (mut l, ni) in launches {
        let canon = l
            .kernel
            .body
            .replace(&format!("@{}_", l.kernel.name), "@K_");
        let key = format!(
            "{}|{:?}|{}|{}",
            canon, l.kernel.grid, l.kernel.threads, l.kernel.smem
        );
        let first = same
            .entry(key)
            .or_insert_with(|| l.kernel.name.clone())
            .clone();
        let dup = first != l.kernel.name;
        if dup {
            l.kernel.name = first;
        }
        let mut args = Vec::new();
        let mut sizes = Vec::new();
        for a in &l.args {
            match a {
                Arg::Val(v) => {
                    args.push(buf_of(*v, &mut weights, &mut const_off, &mut add)?);
                    sizes.push(g.ty(*v).size_bytes() as u64);
                }
                Arg::Table(bytes) => {
                    args.push(Buf::Weights(add(&mut weights, bytes)));
                    sizes.push(bytes.len() as u64);
                }
            }
        }
        plan_launches.push(PlanLaunch {
            kernel: l.kernel.name.clone(),
            grid: l.kernel.grid,
            block: l.kernel.threads,
            smem: l.kernel.smem as u32,
            args,
            arg_bytes: sizes,
        });
        if !dup {
            kernels.push(l.kernel);
        }
        knodes.push(nodes[ni].clone());
    }
    let mut copies = Vec::new();
    for &(j, v) in &plan.output_copies {
        copies.push(Copy {
            dst: Buf::Output(j as u32, 0),
            src: buf_of(v, &mut weights, &mut const_off, &mut add)?,
            bytes: g.ty(v).size_bytes() as u64,
        });
    }
    let ptx = if o.ptx_text {
        let ir = gpu_module(&kernels, kern::CAST_DECLS, &target);
        kiln_target_llvm::compile_assembly(&ir, &target)?
    } else {
        String::new()
    };
    let (cubin, info) = if o.cubin && o.ptx_text {
        match ptxas::find() {
            Some(p) => {
                let (c, i) = ptxas::assemble(&p, &ptx, &o.sm).map_err(PtxError::Msg)?;
                (c, Some(i))
            }
            None => (Vec::new(), None),
        }
    } else {
        (Vec::new(), None)
    };
    let artefact = CudaArtefact {
        name: o.name.clone(),
        sm: o.sm.clone(),
        inputs: g.inputs.iter().map(|&v| tensor_info(g, v)).collect(),
        outputs: g.outputs.iter().map(|&v| tensor_info(g, v)).collect(),
        workspace_size: plan.workspace_size as u64,
        ptx,
        cubin,
        launches: plan_launches,
        copies,
        weights,
    };
    Ok(Compiled {
        artefact,
        kernels,
        nodes: knodes,
        ptxas: info,
    })
}

/// The host module of a compiled model's kernels (the emulator's): the same bodies, with the
/// host entries.
pub fn host_module(kernels: &[GpuKernel]) -> Result<(String, LlvmTarget), PtxError> {
    let t = LlvmTarget::cpu(None, Some("native"))?;
    Ok((gpu_module(kernels, kern::CAST_DECLS, &t), t))
}
