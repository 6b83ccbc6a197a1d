//! Running CUDA artefacts (feature `cuda`): cudarc's driver API, loaded at run time
//! (`dynamic-loading`: nothing links libcuda; a machine without the driver gets
//! [`CudaError::NoDriver`], checked with `is_culib_present()` before any driver call).
//!
//! [`CudaModel::load`] checks the artefact, retains the device's primary context, loads the
//! module (the cubin when it was assembled for this device's architecture, else the PTX,
//! which the driver compiles), uploads the weights once and allocates the workspace and
//! staging buffers for host inputs and outputs once. A run patches the input and output
//! addresses into the prepared kernel parameters and launches the plan on the model's stream:
//! it allocates nothing. With [`CudaModel::set_graph`] the first run captures the launches as a
//! CUDA graph and later runs with the same buffers replay it.

use crate::TensorInfo;
use crate::cuda_artefact::{Buf, CudaArtefact, FormatError};
use cudarc::driver::{result, sys};
use std::ffi::{CString, c_void};

/// Errors of the CUDA runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum CudaError {
    /// No NVIDIA driver (`libcuda.so`) on this machine.
    NoDriver,
    /// A driver call failed: what was being done, and the driver's error.
    Driver(String),
    /// The artefact is malformed.
    Format(FormatError),
    /// Wrong number or size of inputs/outputs, or a null pointer.
    Args(String),
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaError::NoDriver => write!(
                f,
                "no NVIDIA driver: libcuda.so was not found (install the driver, or set LD_LIBRARY_PATH)"
            ),
            CudaError::Driver(m) => write!(f, "CUDA driver: {m}"),
            CudaError::Format(e) => write!(f, "{e}"),
            CudaError::Args(m) => write!(f, "{m}"),
        }
    }
}
impl std::error::Error for CudaError {}

impl From<FormatError> for CudaError {
    fn from(e: FormatError) -> Self {
        CudaError::Format(e)
    }
}

fn drv(what: &str) -> impl Fn(result::DriverError) -> CudaError + '_ {
    move |e| {
        let name = e
            .error_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{:?}", e.0));
        CudaError::Driver(format!("{what}: {name}"))
    }
}

/// Whether the NVIDIA driver library can be loaded (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only probes dlopen of the library names.
    unsafe { sys::is_culib_present() }
}

/// A captured CUDA graph, its executable, and the input/output addresses it was captured with.
type Captured = (sys::CUgraph, sys::CUgraphExec, (Vec<u64>, Vec<u64>));

/// A CUDA artefact loaded on a device.
pub struct CudaModel {
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    launches: Vec<(sys::CUfunction, [u32; 3], u32, u32)>,
    /// Per launch: argument addresses and the kinds to patch (Some(input/output)).
    params: Vec<Box<[u64]>>,
    patch: Vec<Vec<(usize, Buf)>>,
    ptrs: Vec<Vec<*mut c_void>>,
    copies: Vec<(Buf, Buf, u64)>,
    ctx: sys::CUcontext,
    dev: sys::CUdevice,
    module: sys::CUmodule,
    stream: sys::CUstream,
    weights: sys::CUdeviceptr,
    workspace: sys::CUdeviceptr,
    din: Vec<sys::CUdeviceptr>,
    dout: Vec<sys::CUdeviceptr>,
    /// I/O addresses the parameters hold now.
    bound: (Vec<u64>, Vec<u64>),
    use_graph: bool,
    graph: Option<Captured>,
    /// Whether the cubin was loaded (else the PTX was JIT-compiled).
    pub loaded_cubin: bool,
    /// The device's `sm_XY`.
    pub device_sm: String,
}

// SAFETY: the handles are owned by this model and every method takes `&mut self` or makes the
// context current before using them.
unsafe impl Send for CudaModel {}

impl CudaModel {
    /// Load an artefact (`CudaArtefact::to_bytes`) on device `ordinal`.
    pub fn load(bytes: &[u8], ordinal: usize) -> Result<CudaModel, CudaError> {
        let art = CudaArtefact::from_bytes(bytes)?;
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        result::init().map_err(drv("cuInit"))?;
        let dev = result::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
        // SAFETY: `dev` is a valid device handle.
        let ctx =
            unsafe { result::primary_ctx::retain(dev) }.map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: `ctx` was just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(drv("cuCtxSetCurrent"))?;
        let attr = |a| unsafe { result::device::get_attribute(dev, a) };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(drv("cuDeviceGetAttribute"))?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            .map_err(drv("cuDeviceGetAttribute"))?;
        let device_sm = format!("sm_{major}{minor}");
        let use_cubin = !art.cubin.is_empty() && art.sm.trim_end_matches('a') == device_sm;
        let ptx = CString::new(art.ptx.clone())
            .map_err(|_| CudaError::Args("PTX with a NUL byte".into()))?;
        // SAFETY: the image is a complete cubin or NUL-terminated PTX that outlives the call.
        let module = unsafe {
            if use_cubin {
                result::module::load_data(art.cubin.as_ptr() as *const c_void)
            } else {
                result::module::load_data(ptx.as_ptr() as *const c_void)
            }
        }
        .map_err(drv(if use_cubin {
            "cuModuleLoadData (cubin)"
        } else {
            "cuModuleLoadData (PTX JIT)"
        }))?;
        let mut m = CudaModel {
            inputs: art.inputs.clone(),
            outputs: art.outputs.clone(),
            launches: Vec::new(),
            params: Vec::new(),
            patch: Vec::new(),
            ptrs: Vec::new(),
            copies: art.copies.iter().map(|c| (c.dst, c.src, c.bytes)).collect(),
            ctx,
            dev,
            module,
            stream: std::ptr::null_mut(),
            weights: 0,
            workspace: 0,
            din: Vec::new(),
            dout: Vec::new(),
            bound: (Vec::new(), Vec::new()),
            use_graph: false,
            graph: None,
            loaded_cubin: use_cubin,
            device_sm,
        };
        // from here on, Drop frees what was made
        m.stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(drv("cuStreamCreate"))?;
        let alloc = |n: u64| -> Result<sys::CUdeviceptr, CudaError> {
            // SAFETY: a plain allocation in the current context.
            unsafe { result::malloc_sync(n.max(256) as usize) }.map_err(drv("cuMemAlloc"))
        };
        m.weights = alloc(art.weights.len() as u64)?;
        if !art.weights.is_empty() {
            // SAFETY: the allocation holds the weights.
            unsafe { result::memcpy_htod_sync(m.weights, &art.weights) }
                .map_err(drv("cuMemcpyHtoD (weights)"))?;
        }
        m.workspace = alloc(art.workspace_size)?;
        for t in &art.inputs {
            let p = alloc(t.nbytes as u64)?;
            m.din.push(p);
        }
        for t in &art.outputs {
            let p = alloc(t.nbytes as u64)?;
            m.dout.push(p);
        }
        for l in &art.launches {
            let name = CString::new(l.kernel.clone()).unwrap();
            // SAFETY: the module is loaded.
            let f = unsafe { result::module::get_function(module, name) }
                .map_err(drv("cuModuleGetFunction"))?;
            m.launches.push((f, l.grid, l.block, 0));
            let mut vals = vec![0u64; l.args.len()].into_boxed_slice();
            let mut patch = Vec::new();
            for (i, &a) in l.args.iter().enumerate() {
                match a {
                    Buf::Workspace(o) => vals[i] = m.workspace + o,
                    Buf::Weights(o) => vals[i] = m.weights + o,
                    io => patch.push((i, io)),
                }
            }
            m.params.push(vals);
            m.patch.push(patch);
        }
        for p in m.params.iter_mut() {
            let ptrs = p.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
            m.ptrs.push(ptrs);
        }
        Ok(m)
    }

    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// Capture the plan as a CUDA graph on the next run and replay it while the input and
    /// output buffers stay the same.
    pub fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.drop_graph();
        }
    }

    fn drop_graph(&mut self) {
        if let Some((g, e, _)) = self.graph.take() {
            // SAFETY: made by this model, not in use (the stream is synchronized by callers
            // before they change buffers).
            unsafe {
                let _ = result::graph::exec_destroy(e);
                let _ = result::graph::destroy(g);
            }
        }
    }

    fn current(&self) -> Result<(), CudaError> {
        // SAFETY: the context is retained for the model's life.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(drv("cuCtxSetCurrent"))
    }

    fn addr(&self, b: Buf, ins: &[u64], outs: &[u64]) -> u64 {
        match b {
            Buf::Input(i, o) => ins[i as usize] + o,
            Buf::Output(j, o) => outs[j as usize] + o,
            Buf::Workspace(o) => self.workspace + o,
            Buf::Weights(o) => self.weights + o,
        }
    }

    /// Enqueue the plan on `stream` with these device inputs and outputs.
    fn enqueue(
        &mut self,
        ins: &[u64],
        outs: &[u64],
        stream: sys::CUstream,
    ) -> Result<(), CudaError> {
        if self.bound.0 != ins || self.bound.1 != outs {
            for (k, patch) in self.patch.iter().enumerate() {
                for &(i, b) in patch {
                    let a = match b {
                        Buf::Input(x, o) => ins[x as usize] + o,
                        Buf::Output(x, o) => outs[x as usize] + o,
                        _ => unreachable!(),
                    };
                    self.params[k][i] = a;
                }
            }
            self.bound = (ins.to_vec(), outs.to_vec());
        }
        for (k, &(f, grid, block, smem)) in self.launches.iter().enumerate() {
            // SAFETY: the parameters point at live device buffers of the sizes the artefact
            // was checked against.
            unsafe {
                result::launch_kernel(
                    f,
                    (grid[0], grid[1], grid[2]),
                    (block, 1, 1),
                    smem,
                    stream,
                    &mut self.ptrs[k],
                )
            }
            .map_err(drv("cuLaunchKernel"))?;
        }
        for &(d, s, n) in &self.copies {
            let (da, sa) = (self.addr(d, ins, outs), self.addr(s, ins, outs));
            // SAFETY: both ranges are inside their buffers (checked at load time).
            unsafe { result::memcpy_dtod_async(da, sa, n as usize, stream) }
                .map_err(drv("cuMemcpyDtoDAsync"))?;
        }
        Ok(())
    }

    /// Run on device buffers (addresses of at least each tensor's size) on `stream` (`None`:
    /// the model's own), asynchronously.
    ///
    /// # Safety
    /// The addresses must be device allocations in this device's primary context, large
    /// enough and not in use by other work until the run completes.
    pub unsafe fn run_device(
        &mut self,
        ins: &[u64],
        outs: &[u64],
        stream: Option<sys::CUstream>,
    ) -> Result<(), CudaError> {
        if ins.len() != self.inputs.len() || outs.len() != self.outputs.len() {
            return Err(CudaError::Args(format!(
                "model has {} inputs and {} outputs, {} and {} given",
                self.inputs.len(),
                self.outputs.len(),
                ins.len(),
                outs.len()
            )));
        }
        if ins.iter().chain(outs).any(|&a| a == 0) {
            return Err(CudaError::Args("null device pointer".into()));
        }
        self.current()?;
        let stream = stream.unwrap_or(self.stream);
        if !self.use_graph {
            return self.enqueue(ins, outs, stream);
        }
        let same = self
            .graph
            .as_ref()
            .is_some_and(|(_, _, io)| io.0 == ins && io.1 == outs);
        if !same {
            self.drop_graph();
            // SAFETY: capturing on a stream this model launches on.
            unsafe {
                result::stream::begin_capture(
                    stream,
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
            }
            .map_err(drv("cuStreamBeginCapture"))?;
            let r = self.enqueue(ins, outs, stream);
            // SAFETY: ends the capture begun above.
            let g =
                unsafe { result::stream::end_capture(stream) }.map_err(drv("cuStreamEndCapture"));
            r?;
            let g = g?;
            // SAFETY: a graph just captured.
            let e = unsafe { result::graph::instantiate(g, sys::CUgraphInstantiate_flags(0)) }
                .map_err(drv("cuGraphInstantiate"))?;
            self.graph = Some((g, e, (ins.to_vec(), outs.to_vec())));
        }
        let (_, e, _) = self.graph.as_ref().unwrap();
        // SAFETY: an instantiated graph of this model.
        unsafe { result::graph::launch(*e, stream) }.map_err(drv("cuGraphLaunch"))
    }

    /// Run on host buffers: copy the inputs in, run, copy the outputs back, wait.
    pub fn run(&mut self, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) -> Result<(), CudaError> {
        if inputs.len() != self.inputs.len() || outputs.len() != self.outputs.len() {
            return Err(CudaError::Args(format!(
                "model has {} inputs and {} outputs, {} and {} given",
                self.inputs.len(),
                self.outputs.len(),
                inputs.len(),
                outputs.len()
            )));
        }
        for (k, (b, t)) in inputs.iter().zip(&self.inputs).enumerate() {
            if b.len() != t.nbytes {
                return Err(CudaError::Args(format!(
                    "input {k} '{}': {} bytes, expected {}",
                    t.name,
                    b.len(),
                    t.nbytes
                )));
            }
        }
        for (k, (b, t)) in outputs.iter().zip(&self.outputs).enumerate() {
            if b.len() != t.nbytes {
                return Err(CudaError::Args(format!(
                    "output {k} '{}': {} bytes, expected {}",
                    t.name,
                    b.len(),
                    t.nbytes
                )));
            }
        }
        self.current()?;
        for (b, &d) in inputs.iter().zip(&self.din) {
            // SAFETY: the staging buffer holds the input's size.
            unsafe { result::memcpy_htod_async(d, b, self.stream) }
                .map_err(drv("cuMemcpyHtoDAsync"))?;
        }
        let (din, dout) = (
            std::mem::take(&mut self.din),
            std::mem::take(&mut self.dout),
        );
        // SAFETY: the staging buffers are this model's.
        let r = unsafe { self.run_device(&din, &dout, None) };
        self.din = din;
        self.dout = dout;
        r?;
        for (b, &d) in outputs.iter_mut().zip(&self.dout) {
            // SAFETY: as above.
            unsafe { result::memcpy_dtoh_async(b, d, self.stream) }
                .map_err(drv("cuMemcpyDtoHAsync"))?;
        }
        self.synchronize()
    }

    /// Run again on the inputs the last [`Self::run`] copied to the device, leaving the
    /// outputs there, and wait: device-resident inference, as benchmarks time it.
    pub fn rerun_on_device(&mut self) -> Result<(), CudaError> {
        let (din, dout) = (
            std::mem::take(&mut self.din),
            std::mem::take(&mut self.dout),
        );
        // SAFETY: the staging buffers are this model's.
        let r = unsafe { self.run_device(&din, &dout, None) };
        self.din = din;
        self.dout = dout;
        r?;
        self.synchronize()
    }

    /// Wait for the model's stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.current()?;
        // SAFETY: the model's stream.
        unsafe { result::stream::synchronize(self.stream) }.map_err(drv("cuStreamSynchronize"))
    }
}

impl Drop for CudaModel {
    fn drop(&mut self) {
        if self.current().is_err() {
            return;
        }
        self.drop_graph();
        // SAFETY: everything below was made by this model and is freed once.
        unsafe {
            if !self.stream.is_null() {
                let _ = result::stream::synchronize(self.stream);
                let _ = result::stream::destroy(self.stream);
            }
            for p in self
                .din
                .iter()
                .chain(&self.dout)
                .chain([&self.weights, &self.workspace])
            {
                if *p != 0 {
                    let _ = result::free_sync(*p);
                }
            }
            let _ = result::module::unload(self.module);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

// ------------------------------------------------------------------------------- C API

use std::cell::RefCell;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// `kiln_cuda_*` status codes (kiln.h).
pub const KILN_CUDA_OK: i32 = 0;
pub const KILN_CUDA_ERR_NO_DRIVER: i32 = 100;
pub const KILN_CUDA_ERR_DRIVER: i32 = 101;
pub const KILN_CUDA_ERR_ARTEFACT: i32 = 102;
pub const KILN_CUDA_ERR_ARGS: i32 = 103;

fn status(r: Result<(), CudaError>) -> i32 {
    match r {
        Ok(()) => KILN_CUDA_OK,
        Err(e) => {
            let code = match e {
                CudaError::NoDriver => KILN_CUDA_ERR_NO_DRIVER,
                CudaError::Driver(_) => KILN_CUDA_ERR_DRIVER,
                CudaError::Format(_) => KILN_CUDA_ERR_ARTEFACT,
                CudaError::Args(_) => KILN_CUDA_ERR_ARGS,
            };
            let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
            LAST_ERROR.with(|l| *l.borrow_mut() = msg);
            code
        }
    }
}

/// 1 if the NVIDIA driver can be loaded, else 0.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_cuda_available() -> i32 {
    driver_present() as i32
}

/// The message of this thread's last failed `kiln_cuda_*` call ("" if none).
#[unsafe(no_mangle)]
pub extern "C" fn kiln_cuda_last_error() -> *const std::ffi::c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// Load `len` bytes of a CUDA artefact on device `ordinal`; `*out` receives the model.
///
/// # Safety
/// `data` points to `len` readable bytes; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_load(
    data: *const u8,
    len: u64,
    ordinal: i32,
    out: *mut *mut CudaModel,
) -> i32 {
    status((|| {
        if data.is_null() || out.is_null() || ordinal < 0 {
            return Err(CudaError::Args(
                "kiln_cuda_load: null pointer or negative device".into(),
            ));
        }
        // SAFETY: the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(data, len as usize) };
        let m = CudaModel::load(bytes, ordinal as usize)?;
        // SAFETY: the caller's contract.
        unsafe { *out = Box::into_raw(Box::new(m)) };
        Ok(())
    })())
}

/// Free a model from `kiln_cuda_load` (NULL is ignored).
///
/// # Safety
/// `m` came from `kiln_cuda_load` and is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_free(m: *mut CudaModel) {
    if !m.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(m) });
    }
}

fn model<'a>(m: *mut CudaModel) -> Result<&'a mut CudaModel, CudaError> {
    // SAFETY: callers pass a model from kiln_cuda_load (or NULL, refused here).
    unsafe { m.as_mut() }.ok_or_else(|| CudaError::Args("null model".into()))
}

/// Number of inputs (`what` = 0) or outputs (1); byte size of input/output `index` with
/// `kiln_cuda_tensor_bytes`.
///
/// # Safety
/// `m` is a model from `kiln_cuda_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_count(m: *mut CudaModel, what: i32) -> i64 {
    match model(m) {
        Ok(m) if what == 0 => m.inputs.len() as i64,
        Ok(m) if what == 1 => m.outputs.len() as i64,
        _ => -1,
    }
}

/// Byte size of input (`what` = 0) or output (1) `index`, or -1.
///
/// # Safety
/// `m` is a model from `kiln_cuda_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_tensor_bytes(m: *mut CudaModel, what: i32, index: u32) -> i64 {
    let Ok(m) = model(m) else { return -1 };
    let v = if what == 0 { &m.inputs } else { &m.outputs };
    v.get(index as usize).map_or(-1, |t| t.nbytes as i64)
}

/// Run on host buffers (each of its tensor's byte size), synchronously.
///
/// # Safety
/// `inputs`/`outputs` hold one valid pointer per tensor, each to that many bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_run(
    m: *mut CudaModel,
    inputs: *const *const u8,
    outputs: *const *mut u8,
) -> i32 {
    status((|| {
        let m = model(m)?;
        let (ni, no) = (m.inputs.len(), m.outputs.len());
        if (ni > 0 && inputs.is_null()) || (no > 0 && outputs.is_null()) {
            return Err(CudaError::Args("null pointer array".into()));
        }
        let mut ins = Vec::with_capacity(ni);
        for i in 0..ni {
            // SAFETY: the caller's contract.
            let p = unsafe { *inputs.add(i) };
            if p.is_null() {
                return Err(CudaError::Args(format!("input {i} is NULL")));
            }
            // SAFETY: the caller's contract.
            ins.push(unsafe { std::slice::from_raw_parts(p, m.inputs[i].nbytes) });
        }
        let mut outs = Vec::with_capacity(no);
        for j in 0..no {
            // SAFETY: the caller's contract.
            let p = unsafe { *outputs.add(j) };
            if p.is_null() {
                return Err(CudaError::Args(format!("output {j} is NULL")));
            }
            // SAFETY: the caller's contract.
            outs.push(unsafe { std::slice::from_raw_parts_mut(p, m.outputs[j].nbytes) });
        }
        m.run(&ins, &mut outs)
    })())
}

/// Enqueue a run on device buffers on `stream` (NULL: the model's own stream); returns
/// without waiting.
///
/// # Safety
/// See [`CudaModel::run_device`]; the arrays hold one address per tensor.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_run_device(
    m: *mut CudaModel,
    inputs: *const u64,
    outputs: *const u64,
    stream: *mut c_void,
) -> i32 {
    status((|| {
        let m = model(m)?;
        let (ni, no) = (m.inputs.len(), m.outputs.len());
        if (ni > 0 && inputs.is_null()) || (no > 0 && outputs.is_null()) {
            return Err(CudaError::Args("null pointer array".into()));
        }
        // SAFETY: the caller's contract.
        let ins = if ni > 0 {
            unsafe { std::slice::from_raw_parts(inputs, ni) }
        } else {
            &[]
        };
        // SAFETY: the caller's contract.
        let outs = if no > 0 {
            unsafe { std::slice::from_raw_parts(outputs, no) }
        } else {
            &[]
        };
        let s = (!stream.is_null()).then_some(stream as sys::CUstream);
        // SAFETY: the caller's contract.
        unsafe { m.run_device(ins, outs, s) }
    })())
}

/// Capture runs as a CUDA graph (1) or launch kernel by kernel (0).
///
/// # Safety
/// `m` is a model from `kiln_cuda_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_set_graph(m: *mut CudaModel, on: i32) -> i32 {
    status(model(m).map(|m| m.set_graph(on != 0)))
}

/// Wait for the model's stream.
///
/// # Safety
/// `m` is a model from `kiln_cuda_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_cuda_synchronize(m: *mut CudaModel) -> i32 {
    status(model(m).and_then(|m| m.synchronize()))
}

/// The artefact a `.so` built by `kiln build --target nvptx64-nvidia-cuda` embeds
/// (`kiln_cuda_artefact_default`), copied out.
#[cfg(feature = "dylib")]
pub fn artefact_from_so(path: &std::path::Path) -> Result<Vec<u8>, CudaError> {
    let err = |m: String| CudaError::Args(format!("{}: {m}", path.display()));
    // SAFETY: loading a kiln artefact runs no initializers of its own.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(e.to_string()))?;
    // SAFETY: the symbol has this signature in every CUDA artefact.
    let f: libloading::Symbol<unsafe extern "C" fn(*mut u64) -> *const u8> =
        unsafe { lib.get(b"kiln_cuda_artefact_default\0") }.map_err(|e| err(e.to_string()))?;
    let mut len = 0u64;
    // SAFETY: returns a pointer to `len` bytes of read-only data in the library.
    let p = unsafe { f(&mut len) };
    if p.is_null() {
        return Err(err("no artefact".into()));
    }
    // SAFETY: as above; copied before the library is unloaded.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) }.to_vec())
}
