use std::ffi::{CStr, c_char};
#[cfg(feature = "dylib")]
use std::path::Path;

use crate::profile::{NodeInfo, Profile, Recorder, RunRecord};
use crate::{
    Error, KILN_ABI_VERSION, KILN_ABI_VERSION_MIN, KILN_DTYPE_F32, KILN_OK, KilnModel,
    KilnNodeInfo, KilnProfiler, KilnRunFn, KilnRunPoolFn, KilnRunProfileFn, KilnTensorInfo,
    Workspace, dtype_name, dtype_size,
};

/// An owned, validated copy of a `kiln_tensor_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ABI dtype code (`KILN_DTYPE_*`).
    pub dtype: i32,
    pub dims: Vec<i64>,
    /// Size of the dense buffer in bytes.
    pub nbytes: usize,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
    /// Short dtype name (`f32`, `i64`, ...).
    pub fn dtype_name(&self) -> &'static str {
        dtype_name(self.dtype).unwrap_or("?")
    }
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}{:?}", self.name, self.dtype_name(), self.dims)
    }
}

/// A compiled model: a validated descriptor, plus the shared library it came from (if any),
/// kept loaded for as long as the `Model` lives.
pub struct Model {
    /// A copy of the descriptor (the ABI v3 fields zeroed for an older one).
    desc: KilnModel,
    run_fn: KilnRunFn,
    run_pool_fn: KilnRunPoolFn,
    run_profile_fn: Option<KilnRunProfileFn>,
    nodes: Vec<NodeInfo>,
    name: String,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    workspace_size: usize,
    workspace_align: usize,
    #[cfg(feature = "dylib")]
    _lib: Option<libloading::Library>,
}

// The descriptor is immutable; `run` is reentrant given distinct workspaces (the ABI's
// contract), and `Model::run` takes the workspace by `&mut`.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("workspace_size", &self.workspace_size)
            .field("workspace_align", &self.workspace_align)
            .finish()
    }
}

/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn c_str(p: *const c_char, what: &'static str) -> Result<String, Error> {
    if p.is_null() {
        return Err(Error::NullPointer(what));
    }
    // SAFETY: caller guarantees NUL termination.
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// # Safety
/// `arr` is null or points to `n` valid tensor infos (with valid names and dims).
unsafe fn tensor_infos(
    arr: *const KilnTensorInfo,
    n: u32,
    what: &'static str,
) -> Result<Vec<TensorInfo>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if arr.is_null() {
        return Err(Error::NullPointer(what));
    }
    // SAFETY: caller guarantees `n` entries.
    let raw = unsafe { std::slice::from_raw_parts(arr, n as usize) };
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        // SAFETY: caller guarantees a valid name.
        let name = unsafe { c_str(t.name, "tensor name") }?;
        let bad = |m: String| Error::BadDescriptor(format!("{what} {i} ('{name}'): {m}"));
        let Some(esize) = dtype_size(t.dtype) else {
            return Err(bad(format!("unknown dtype code {}", t.dtype)));
        };
        if t.rank < 0 {
            return Err(bad(format!("negative rank {}", t.rank)));
        }
        let dims: Vec<i64> = if t.rank == 0 {
            Vec::new()
        } else if t.dims.is_null() {
            return Err(Error::NullPointer("tensor dims"));
        } else {
            // SAFETY: caller guarantees `rank` dims.
            unsafe { std::slice::from_raw_parts(t.dims, t.rank as usize) }.to_vec()
        };
        let mut bytes = esize;
        for &d in &dims {
            let d = usize::try_from(d).map_err(|_| bad(format!("negative dim {d}")))?;
            bytes = bytes
                .checked_mul(d)
                .ok_or_else(|| bad("size overflows".into()))?;
        }
        if bytes as u64 != t.nbytes {
            return Err(bad(format!(
                "nbytes is {} but dims {dims:?} of {} need {bytes}",
                t.nbytes,
                dtype_name(t.dtype).unwrap_or("?")
            )));
        }
        out.push(TensorInfo {
            name,
            dtype: t.dtype,
            dims,
            nbytes: bytes,
        });
    }
    Ok(out)
}

/// # Safety
/// `arr` is null or points to `n` valid node infos (with valid strings).
unsafe fn node_infos(arr: *const KilnNodeInfo, n: u32) -> Result<Vec<NodeInfo>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if arr.is_null() {
        return Err(Error::NullPointer("node table"));
    }
    // SAFETY: caller guarantees `n` entries.
    let raw = unsafe { std::slice::from_raw_parts(arr, n as usize) };
    raw.iter()
        .map(|t| {
            Ok(NodeInfo {
                // SAFETY: caller guarantees valid strings.
                name: unsafe { c_str(t.name, "node name") }?,
                op: unsafe { c_str(t.op, "node op") }?,
                flops: t.flops,
            })
        })
        .collect()
}

/// Pointer arrays of up to this many entries are built on the stack.
const STACK_PTRS: usize = 16;

impl Model {
    /// Wraps a descriptor after validating it (ABI version, non-null fields, consistent
    /// dtypes, dims and sizes).
    ///
    /// # Safety
    /// `ptr` must be null or point to a `kiln_model` whose pointers are valid as the ABI
    /// describes, and which outlives the returned `Model` (descriptors of linked-in models
    /// are `'static`).
    pub unsafe fn from_raw(ptr: *const KilnModel) -> Result<Model, Error> {
        if ptr.is_null() {
            return Err(Error::NullPointer("model descriptor"));
        }
        // SAFETY: caller guarantees validity; every version starts with the version field.
        let version = unsafe { std::ptr::addr_of!((*ptr).abi_version).read() };
        if !(KILN_ABI_VERSION_MIN..=KILN_ABI_VERSION).contains(&version) {
            return Err(Error::AbiVersion {
                found: version,
                expected: KILN_ABI_VERSION,
            });
        }
        // Copy the fields this version has: a v2 descriptor ends before `n_nodes`.
        let d = if version >= 3 {
            // SAFETY: a v3 descriptor is a whole KilnModel.
            unsafe { ptr.read() }
        } else {
            // SAFETY: the v2 prefix (everything before `n_nodes`) is valid.
            unsafe {
                // all-zero is a valid KilnModel (null pointers, `None` functions)
                let mut d: KilnModel = std::mem::zeroed();
                std::ptr::copy_nonoverlapping(
                    ptr.cast::<u8>(),
                    (&mut d as *mut KilnModel).cast::<u8>(),
                    std::mem::offset_of!(KilnModel, n_nodes),
                );
                d
            }
        };
        let d = &d;
        // SAFETY: caller guarantees validity of the pointed-to data.
        let name = unsafe { c_str(d.name, "model name") }?;
        let inputs = unsafe { tensor_infos(d.inputs, d.n_inputs, "input") }?;
        let outputs = unsafe { tensor_infos(d.outputs, d.n_outputs, "output") }?;
        let run_fn = d.run.ok_or(Error::NullPointer("run function"))?;
        let run_pool_fn = d.run_pool.ok_or(Error::NullPointer("run_pool function"))?;
        let workspace_size = usize::try_from(d.workspace_size).map_err(|_| {
            Error::BadDescriptor(format!("workspace size {} too large", d.workspace_size))
        })?;
        let workspace_align = (d.workspace_align as usize).max(1);
        if !workspace_align.is_power_of_two() {
            return Err(Error::BadDescriptor(format!(
                "workspace alignment {workspace_align} is not a power of two"
            )));
        }
        // SAFETY: caller guarantees `n_nodes` valid entries for a v3 descriptor.
        let nodes = unsafe { node_infos(d.nodes, d.n_nodes) }?;
        let run_profile_fn = d.run_profile;
        if version >= 3 && run_profile_fn.is_none() {
            return Err(Error::NullPointer("run_profile function"));
        }
        Ok(Model {
            desc: *d,
            run_fn,
            run_pool_fn,
            run_profile_fn,
            nodes,
            name,
            inputs,
            outputs,
            workspace_size,
            workspace_align,
            #[cfg(feature = "dylib")]
            _lib: None,
        })
    }

    /// Wraps a linked-in model's `'static` descriptor (e.g. `unsafe { mymodel_model() }`).
    ///
    /// # Safety
    /// As for [`Model::from_raw`].
    pub unsafe fn from_static(desc: &'static KilnModel) -> Result<Model, Error> {
        // SAFETY: forwarded.
        unsafe { Model::from_raw(desc) }
    }

    /// Loads a shared library produced by `kiln build` and wraps its `kiln_model_default`.
    #[cfg(feature = "dylib")]
    pub fn load(path: &Path) -> Result<Model, Error> {
        Model::load_symbol(path, "kiln_model_default")
    }

    /// Loads a shared library and wraps the model returned by its function `symbol`
    /// (e.g. `"<name>_model"`).
    #[cfg(feature = "dylib")]
    pub fn load_symbol(path: &Path, symbol: &str) -> Result<Model, Error> {
        let load_err = |message: String| Error::Load {
            path: path.to_path_buf(),
            message,
        };
        // SAFETY: loading runs the library's initialisers; kiln artefacts have none beyond
        // the C runtime's. This is inherent to loading native code.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
        let desc = {
            // SAFETY: the symbol has the ABI's signature `const kiln_model *(void)`.
            let f = unsafe { lib.get::<crate::KilnModelFn>(symbol.as_bytes()) }
                .map_err(|e| load_err(format!("symbol {symbol}: {e}")))?;
            // SAFETY: calling the descriptor accessor has no preconditions.
            unsafe { f() }
        };
        // SAFETY: the descriptor lives in `lib`, which the Model keeps loaded.
        let mut m = unsafe { Model::from_raw(desc) }.map_err(|e| load_err(e.to_string()))?;
        m._lib = Some(lib);
        Ok(m)
    }

    /// The raw descriptor (a copy; the ABI v3 fields are zero for an older descriptor).
    pub fn raw(&self) -> &KilnModel {
        &self.desc
    }

    /// The run schedule's steps (empty for a descriptor older than ABI v3).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Whether the model can be profiled (ABI v3 and later).
    pub fn can_profile(&self) -> bool {
        self.run_profile_fn.is_some()
    }

    /// An empty [`Profile`] for this model's schedule.
    pub fn new_profile(&self) -> Profile {
        Profile::new(&self.name, &self.nodes)
    }

    /// [`Model::run_pool`] through the instrumented entry point, appending the run's per-node
    /// times to `profile` (made by [`Model::new_profile`]).
    pub fn run_profiled(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        workspace: &mut Workspace,
        pool: Option<&crate::ThreadPool>,
        profile: &mut Profile,
    ) -> Result<(), Error> {
        let Some(f) = self.run_profile_fn else {
            return Err(Error::BadDescriptor(format!(
                "model '{}' has ABI version {}: profiling needs version 3",
                self.name, self.desc.abi_version
            )));
        };
        if profile.nodes != self.nodes {
            return Err(Error::BadDescriptor(format!(
                "the profile was made for another model ('{}')",
                profile.model
            )));
        }
        let n = self.nodes.len();
        let mut rec = Recorder {
            origin: profile.origin,
            start: vec![0; n],
            dur: vec![0; n],
        };
        let prof = KilnProfiler {
            ctx: (&mut rec as *mut Recorder).cast(),
            begin: Some(crate::profile::on_begin),
            end: Some(crate::profile::on_end),
        };
        let t0 = profile.origin.elapsed().as_nanos() as u64;
        self.call(inputs, outputs, workspace, |i, o, ws| {
            // SAFETY: as for run_pool; `prof` and the recorder outlive the call.
            unsafe {
                f(
                    i,
                    o,
                    ws,
                    pool.map_or(std::ptr::null(), |p| p.as_abi()),
                    &prof,
                )
            }
        })?;
        let t1 = profile.origin.elapsed().as_nanos() as u64;
        profile.runs.push(RunRecord {
            start_ns: t0,
            wall_ns: t1 - t0,
            node_start_ns: rec.start,
            node_ns: rec.dur,
        });
        Ok(())
    }

    /// `runs` profiled runs (after one unprofiled warm-up run) into a new [`Profile`].
    pub fn profile(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        workspace: &mut Workspace,
        pool: Option<&crate::ThreadPool>,
        runs: usize,
    ) -> Result<Profile, Error> {
        self.run_pool(inputs, outputs, workspace, pool)?;
        let mut p = self.new_profile();
        for _ in 0..runs {
            self.run_profiled(inputs, outputs, workspace, pool, &mut p)?;
        }
        Ok(p)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn inputs(&self) -> Vec<TensorInfo> {
        self.inputs.clone()
    }
    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.outputs.clone()
    }
    /// Borrowing variants of [`Model::inputs`] / [`Model::outputs`].
    pub fn input_infos(&self) -> &[TensorInfo] {
        &self.inputs
    }
    pub fn output_infos(&self) -> &[TensorInfo] {
        &self.outputs
    }
    pub fn workspace_size(&self) -> usize {
        self.workspace_size
    }
    pub fn workspace_align(&self) -> usize {
        self.workspace_align
    }

    /// Zeroed buffers for the outputs (an error, not an abort, when one cannot be
    /// allocated).
    pub fn output_buffers(&self) -> Result<Vec<Vec<u8>>, Error> {
        self.outputs
            .iter()
            .map(|t| crate::zeroed_vec::<u8>(t.nbytes, &format!("output '{}'", t.name)))
            .collect()
    }

    /// Allocates a workspace suitable for this model (reuse it across runs).
    pub fn workspace(&self) -> Result<Workspace, Error> {
        Workspace::new(self.workspace_size, self.workspace_align)
    }

    /// Runs the model on dense row-major byte buffers after checking arity, sizes and the
    /// workspace. Allocates nothing for models with at most 16 inputs and 16 outputs.
    pub fn run(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        workspace: &mut Workspace,
    ) -> Result<(), Error> {
        self.run_pool(inputs, outputs, workspace, None)
    }

    /// [`Model::run`] with the model's parallel kernels split over `pool`'s threads.
    pub fn run_pool(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        workspace: &mut Workspace,
        pool: Option<&crate::ThreadPool>,
    ) -> Result<(), Error> {
        self.call(inputs, outputs, workspace, |i, o, ws| {
            // SAFETY: `call` checked arity, sizes and the workspace against the validated
            // descriptor; outputs are exclusive borrows (so they alias nothing).
            unsafe {
                match pool {
                    None => (self.run_fn)(i, o, ws),
                    Some(p) => (self.run_pool_fn)(i, o, ws, p.as_abi()),
                }
            }
        })
    }

    /// Checks the buffers and the workspace, builds the pointer arrays and calls `f` with
    /// them; maps its status to an error.
    fn call(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        workspace: &mut Workspace,
        f: impl FnOnce(*const *const u8, *const *mut u8, *mut u8) -> i32,
    ) -> Result<(), Error> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::Arity {
                what: "inputs",
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        if outputs.len() != self.outputs.len() {
            return Err(Error::Arity {
                what: "outputs",
                expected: self.outputs.len(),
                got: outputs.len(),
            });
        }
        for (i, (b, t)) in inputs.iter().zip(&self.inputs).enumerate() {
            if b.len() != t.nbytes {
                return Err(size_err("input", i, t, b.len()));
            }
        }
        for (i, (b, t)) in outputs.iter().zip(&self.outputs).enumerate() {
            if b.len() != t.nbytes {
                return Err(size_err("output", i, t, b.len()));
            }
        }
        if workspace.size() < self.workspace_size {
            return Err(Error::Workspace(format!(
                "model '{}' needs {} bytes, workspace has {}",
                self.name,
                self.workspace_size,
                workspace.size()
            )));
        }
        let ws = if self.workspace_size == 0 {
            std::ptr::null_mut()
        } else {
            workspace.as_mut_ptr()
        };
        if !(ws as usize).is_multiple_of(self.workspace_align) {
            return Err(Error::Workspace(format!(
                "model '{}' needs {}-byte alignment, workspace is {}-byte aligned",
                self.name,
                self.workspace_align,
                workspace.align()
            )));
        }

        let (mut in_stack, mut out_stack) = (
            [std::ptr::null::<u8>(); STACK_PTRS],
            [std::ptr::null_mut::<u8>(); STACK_PTRS],
        );
        let (mut in_heap, mut out_heap) = (Vec::new(), Vec::new());
        let in_ptrs: &mut [*const u8] = if inputs.len() <= STACK_PTRS {
            &mut in_stack[..inputs.len()]
        } else {
            in_heap.resize(inputs.len(), std::ptr::null());
            &mut in_heap
        };
        let out_ptrs: &mut [*mut u8] = if outputs.len() <= STACK_PTRS {
            &mut out_stack[..outputs.len()]
        } else {
            out_heap.resize(outputs.len(), std::ptr::null_mut());
            &mut out_heap
        };
        for (p, b) in in_ptrs.iter_mut().zip(inputs) {
            *p = b.as_ptr();
        }
        for (p, b) in out_ptrs.iter_mut().zip(outputs.iter_mut()) {
            *p = b.as_mut_ptr();
        }
        let status = f(in_ptrs.as_ptr(), out_ptrs.as_ptr(), ws);
        if status == KILN_OK {
            Ok(())
        } else {
            Err(Error::Status(status))
        }
    }

    /// Convenience: runs a model whose inputs and outputs are all f32, allocating the
    /// outputs and a workspace. Not for hot loops (use [`Model::run`]).
    pub fn run_f32(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, Error> {
        for (what, ts) in [("input", &self.inputs), ("output", &self.outputs)] {
            if let Some((i, t)) = ts
                .iter()
                .enumerate()
                .find(|(_, t)| t.dtype != KILN_DTYPE_F32)
            {
                return Err(Error::DType {
                    what,
                    index: i,
                    name: t.name.clone(),
                    found: t.dtype_name(),
                    expected: "f32",
                });
            }
        }
        let in_bytes: Vec<&[u8]> = inputs.iter().map(|s| f32_bytes(s)).collect();
        let mut outs: Vec<Vec<f32>> = self
            .outputs
            .iter()
            .map(|t| crate::zeroed_vec::<f32>(t.nbytes / 4, &format!("output '{}'", t.name)))
            .collect::<Result<_, _>>()?;
        let mut out_bytes: Vec<&mut [u8]> = outs.iter_mut().map(|v| f32_bytes_mut(v)).collect();
        let mut ws = self.workspace()?;
        self.run(&in_bytes, &mut out_bytes, &mut ws)?;
        Ok(outs)
    }
}

fn size_err(what: &'static str, index: usize, t: &TensorInfo, got: usize) -> Error {
    Error::Size {
        what,
        index,
        name: t.name.clone(),
        expected: t.nbytes,
        got,
    }
}

fn f32_bytes(s: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s)) }
}

fn f32_bytes_mut(s: &mut [f32]) -> &mut [u8] {
    // SAFETY: every byte pattern is a valid f32; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), std::mem::size_of_val(s)) }
}
