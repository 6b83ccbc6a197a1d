//! `kiln._native`: the Rust half of the `kiln` Python package (the Python half, python/kiln/,
//! wraps it: `kiln.compile`, `kiln.inspect`, `kiln.load`, ...).
//!
//! Compiling and running release the GIL. `Model.run` checks every input's dtype and shape,
//! reads C-contiguous aligned arrays in place (anything else is copied once into a contiguous
//! buffer) and has the model write straight into the numpy arrays it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_compiler::passes::{OptLevel, OptOptions};
use kiln_compiler::pipeline::{self, Emit, ExtraOptions, LoadOptions, TargetOpts};
use kiln_runtime::{Model, ThreadPool, Workspace};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

pyo3::create_exception!(
    _native,
    KilnError,
    PyException,
    "A model kiln cannot load, compile or run (the message names the file, node and op)."
);

fn kerr(e: impl std::fmt::Display) -> PyErr {
    KilnError::new_err(e.to_string())
}

/// The numpy dtype name of an ABI dtype code (bf16 has none: its raw bits as uint16).
fn numpy_dtype(code: i32) -> &'static str {
    use kiln_runtime::*;
    match code {
        KILN_DTYPE_F32 => "float32",
        KILN_DTYPE_U8 => "uint8",
        KILN_DTYPE_I8 => "int8",
        KILN_DTYPE_U16 | KILN_DTYPE_BF16 => "uint16",
        KILN_DTYPE_I16 => "int16",
        KILN_DTYPE_I32 => "int32",
        KILN_DTYPE_I64 => "int64",
        KILN_DTYPE_BOOL => "bool",
        KILN_DTYPE_F16 => "float16",
        KILN_DTYPE_F64 => "float64",
        KILN_DTYPE_U32 => "uint32",
        KILN_DTYPE_U64 => "uint64",
        _ => "void",
    }
}

/// What `compile`, `inspect` and `load` of a model file share.
struct Source {
    model: PathBuf,
    input_shapes: Vec<(String, Vec<usize>)>,
    opt_level: OptLevel,
    weights: Option<PathBuf>,
    target: TargetOpts,
}

impl Source {
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: PathBuf,
        input_shapes: Option<HashMap<String, Vec<usize>>>,
        opt_level: u8,
        weights: Option<PathBuf>,
        target: Option<String>,
        target_cpu: Option<String>,
        kernels: &str,
    ) -> PyResult<Source> {
        let opt_level: OptLevel = opt_level
            .to_string()
            .parse()
            .map_err(PyValueError::new_err)?;
        let wide = match kernels {
            "auto" => true,
            "cranelift" => false,
            k => {
                return Err(PyValueError::new_err(format!(
                    "kernels: '{k}' is neither 'auto' nor 'cranelift'"
                )));
            }
        };
        let mut input_shapes: Vec<(String, Vec<usize>)> =
            input_shapes.unwrap_or_default().into_iter().collect();
        input_shapes.sort();
        Ok(Source {
            model,
            input_shapes,
            opt_level,
            weights,
            target: TargetOpts {
                triple: target,
                cpu: target_cpu,
                wide,
                ..TargetOpts::default()
            },
        })
    }

    /// Load and optimize, as `kiln build` does (messages of `--weights` binding go to stderr).
    fn graph(&self) -> Result<kiln_ir::Graph, String> {
        self.graph_for(true)
    }

    /// Load and optimize; `layouts`: with the back end's layout choices (compiling) or
    /// without (converting: the graph as a format carries it).
    fn graph_for(&self, layouts: bool) -> Result<kiln_ir::Graph, String> {
        let key = kiln_compiler::mindspore::DecryptKey::from_file_or_env(None)?;
        let l = pipeline::load_with(
            &self.model,
            &LoadOptions {
                input_shapes: self.input_shapes.clone(),
                ..Default::default()
            },
            &ExtraOptions {
                weights: self.weights.clone(),
                key,
            },
        )
        .map_err(|e| e.to_string())?;
        for m in &l.messages {
            eprintln!("{m}");
        }
        let mut g = l.graph;
        let opts = OptOptions {
            level: self.opt_level,
            layout: if layouts {
                self.target.layout_target().map_err(|e| e.to_string())?
            } else {
                None
            },
            ..Default::default()
        };
        pipeline::optimize(&mut g, &opts).map_err(|e| e.to_string())?;
        Ok(g)
    }
}

/// Compile a model file into an artefact; returns the path written.
#[pyfunction]
#[pyo3(signature = (model, emit="so", output=None, *, input_shapes=None, opt_level=2,
                    target=None, target_cpu=None, name=None, weights=None, kernels="auto"))]
#[allow(clippy::too_many_arguments)]
fn compile(
    py: Python<'_>,
    model: PathBuf,
    emit: &str,
    output: Option<PathBuf>,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    opt_level: u8,
    target: Option<String>,
    target_cpu: Option<String>,
    name: Option<String>,
    weights: Option<PathBuf>,
    kernels: &str,
) -> PyResult<String> {
    let kind = <Emit as clap::ValueEnum>::from_str(emit, true).map_err(|_| {
        let known: Vec<String> = <Emit as clap::ValueEnum>::value_variants()
            .iter()
            .filter_map(clap::ValueEnum::to_possible_value)
            .map(|v| v.get_name().to_string())
            .collect();
        PyValueError::new_err(format!(
            "emit: unknown kind '{emit}' (known: {})",
            known.join(", ")
        ))
    })?;
    let src = Source::new(
        model,
        input_shapes,
        opt_level,
        weights,
        target,
        target_cpu,
        kernels,
    )?;
    let name = name.unwrap_or_else(|| pipeline::default_name(&src.model));
    let out = output.unwrap_or_else(|| kind.default_output(&name));
    py.detach(|| -> Result<(), String> {
        let g = src.graph()?;
        pipeline::emit(&g, kind, &out, &name, &src.target).map_err(|e| e.to_string())
    })
    .map_err(kerr)?;
    Ok(out.display().to_string())
}

/// Convert a model to another format (.onnx, .air, .kir: the output's extension), as
/// `kiln convert` does; returns the path written.
#[pyfunction]
#[pyo3(signature = (model, output, *, opt_level=0, input_shapes=None, weights=None))]
fn convert(
    py: Python<'_>,
    model: PathBuf,
    output: PathBuf,
    opt_level: u8,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    weights: Option<PathBuf>,
) -> PyResult<String> {
    let src = Source::new(model, input_shapes, opt_level, weights, None, None, "auto")?;
    py.detach(|| -> Result<(), String> {
        let g = src.graph_for(false)?;
        pipeline::write_model(&g, &output).map_err(|e| e.to_string())
    })
    .map_err(kerr)?;
    Ok(output.display().to_string())
}

/// The per-op table of the optimized graph: (columns, rows, summary, text).
#[pyfunction]
#[pyo3(signature = (model, *, input_shapes=None, opt_level=2, weights=None))]
fn inspect<'py>(
    py: Python<'py>,
    model: PathBuf,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    opt_level: u8,
    weights: Option<PathBuf>,
) -> PyResult<Bound<'py, PyTuple>> {
    let src = Source::new(model, input_shapes, opt_level, weights, None, None, "auto")?;
    let (rows, sm, text) = py
        .detach(|| -> Result<_, String> {
            let g = src.graph()?;
            Ok((
                kiln_compiler::inspect::rows(&g),
                kiln_compiler::inspect::summary(&g),
                kiln_compiler::inspect::table(&g),
            ))
        })
        .map_err(kerr)?;
    let columns = vec!["index", "op", "output", "flops", "fused", "buffer", "node"];
    let list = PyList::empty(py);
    for r in rows {
        list.append((r.index, r.op, r.output, r.flops, r.fused, r.buffer, r.node))?;
    }
    let summary = PyDict::new(py);
    summary.set_item("nodes", sm.nodes)?;
    summary.set_item("flops", sm.flops)?;
    summary.set_item("workspace_bytes", sm.workspace)?;
    summary.set_item("naive_bytes", sm.naive)?;
    summary.set_item("convs", sm.convs)?;
    summary.set_item("fused_epilogues", sm.fused_epilogues)?;
    summary.set_item("matmuls", sm.matmuls)?;
    summary.set_item("gemms", sm.gemms)?;
    summary.set_item("relayouts", sm.relayouts)?;
    summary.set_item("unfused_epilogues", sm.unfused.len())?;
    PyTuple::new(
        py,
        [
            columns.into_pyobject(py)?.into_any(),
            list.into_any(),
            summary.into_any(),
            text.into_pyobject(py)?.into_any(),
        ],
    )
}

/// Code compiled into this process by `load("model.onnx")`: immutable once finalized.
struct Jit(#[allow(dead_code)] kiln_target_cpu::JitModel);
// SAFETY: the JIT's code and data are never written after finalization, and the runtime
// `Model` that points into them is Send + Sync by the ABI's contract.
unsafe impl Send for Jit {}
unsafe impl Sync for Jit {}

/// A loaded model: `run` takes a dict (or list) of numpy arrays and returns a dict of them.
#[pyclass(frozen, name = "Model", module = "kiln._native")]
struct PyModel {
    // field order: `model` points into `_jit`'s code and must drop first
    model: Model,
    /// The workspace and the thread pool of runs; a run while another holds them gets a
    /// workspace of its own and runs single-threaded.
    state: Mutex<(Workspace, Option<ThreadPool>)>,
    threads: usize,
    path: String,
    _jit: Option<Jit>,
}

/// A raw pointer moved into a GIL-free closure (the arrays are kept alive by the caller).
#[derive(Clone, Copy)]
struct Ptr(*mut u8);
// SAFETY: only dereferenced by the model while the owning arrays are alive.
unsafe impl Send for Ptr {}
// SAFETY: as for Send: a plain address.
unsafe impl Sync for Ptr {}

impl PyModel {
    fn infos<'py>(
        &self,
        py: Python<'py>,
        ts: &[kiln_runtime::TensorInfo],
    ) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for t in ts {
            let d = PyDict::new(py);
            d.set_item("name", &t.name)?;
            d.set_item("dtype", numpy_dtype(t.dtype))?;
            d.set_item("shape", PyTuple::new(py, t.dims.iter())?)?;
            l.append(d)?;
        }
        Ok(l)
    }

    /// The input arrays in model order, each C-contiguous and aligned (a copy where the
    /// given array is not), checked for dtype and shape.
    fn gather_inputs<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyUntypedArray>>> {
        let np = py.import("numpy")?;
        let infos = self.model.input_infos();
        let names = || {
            infos
                .iter()
                .map(|i| format!("'{}'", i.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let given: Vec<Bound<'py, PyAny>> = if let Ok(d) = inputs.cast::<PyDict>() {
            for k in d.keys() {
                let k: String = k.extract()?;
                if !infos.iter().any(|i| i.name == k) {
                    return Err(PyKeyError::new_err(format!(
                        "the model has no input '{k}' (inputs: {})",
                        names()
                    )));
                }
            }
            infos
                .iter()
                .map(|i| {
                    d.get_item(&i.name)?.ok_or_else(|| {
                        PyKeyError::new_err(format!(
                            "missing input '{}' (inputs: {})",
                            i.name,
                            names()
                        ))
                    })
                })
                .collect::<PyResult<_>>()?
        } else if inputs.is_instance_of::<PyList>() || inputs.is_instance_of::<PyTuple>() {
            let v: Vec<Bound<'py, PyAny>> = inputs.try_iter()?.collect::<PyResult<_>>()?;
            if v.len() != infos.len() {
                return Err(PyValueError::new_err(format!(
                    "the model takes {} inputs ({}), {} given",
                    infos.len(),
                    names(),
                    v.len()
                )));
            }
            v
        } else if infos.len() == 1 {
            vec![inputs.clone()]
        } else {
            return Err(PyTypeError::new_err(format!(
                "inputs: a dict {{name: array}} or a list in model order (inputs: {})",
                names()
            )));
        };
        let mut arrays = Vec::new();
        for (info, x) in infos.iter().zip(given) {
            let want = numpy_dtype(info.dtype);
            let want_dt = np.getattr("dtype")?.call1((want,))?;
            let arr = match x.cast::<PyUntypedArray>() {
                Ok(a) => a.clone(),
                // lists, scalars, buffers: converted to the model's dtype
                Err(_) => np
                    .getattr("asarray")?
                    .call1((x, &want_dt))?
                    .cast_into::<PyUntypedArray>()?,
            };
            let dt = arr.dtype();
            let want_descr = want_dt.cast::<numpy::PyArrayDescr>()?;
            if !dt.is_equiv_to(want_descr) {
                return Err(PyTypeError::new_err(format!(
                    "input '{}' must be {want}, got {} (convert with .astype(numpy.{want}))",
                    info.name,
                    dt.str()?
                )));
            }
            let shape: Vec<i64> = arr.shape().iter().map(|&d| d as i64).collect();
            if shape != info.dims {
                return Err(PyValueError::new_err(format!(
                    "input '{}' must have shape {:?}, got {:?}",
                    info.name, info.dims, shape
                )));
            }
            // SAFETY: a valid ndarray object.
            let data = unsafe { (*arr.as_array_ptr()).fields.data } as usize;
            let aligned = data.is_multiple_of(dt.itemsize().max(1));
            let arr = if arr.is_c_contiguous() && aligned {
                arr
            } else {
                np.getattr("ascontiguousarray")?
                    .call1((arr,))?
                    .cast_into::<PyUntypedArray>()?
            };
            arrays.push(arr);
        }
        Ok(arrays)
    }

    /// Fresh output arrays in model order.
    fn new_outputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyUntypedArray>>> {
        let np = py.import("numpy")?;
        self.model
            .output_infos()
            .iter()
            .map(|o| {
                let shape = PyTuple::new(py, o.dims.iter())?;
                Ok(np
                    .getattr("empty")?
                    .call1((shape, numpy_dtype(o.dtype)))?
                    .cast_into::<PyUntypedArray>()?)
            })
            .collect()
    }

    /// Runs with the GIL released: `f(model, inputs, outputs, workspace, pool)`.
    fn call<'py, T: Send>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        f: impl FnOnce(
            &Model,
            &[&[u8]],
            &mut [&mut [u8]],
            &mut Workspace,
            Option<&ThreadPool>,
        ) -> Result<T, kiln_runtime::Error>
        + Send,
    ) -> PyResult<(Vec<Bound<'py, PyUntypedArray>>, T)> {
        let ins = self.gather_inputs(py, inputs)?;
        let outs = self.new_outputs(py)?;
        let ptr =
            |a: &Bound<'py, PyUntypedArray>| Ptr(unsafe { (*a.as_array_ptr()).fields.data.cast() });
        let in_ptrs: Vec<Ptr> = ins.iter().map(ptr).collect();
        let out_ptrs: Vec<Ptr> = outs.iter().map(ptr).collect();
        let r = py.detach(|| {
            // SAFETY: each array is alive (held in `ins`/`outs`), C-contiguous, and exactly
            // the byte size the model declares (dtype and shape were checked); the outputs
            // are fresh arrays nothing else references.
            let ins: Vec<&[u8]> = in_ptrs
                .iter()
                .zip(self.model.input_infos())
                .map(|(p, t)| unsafe { std::slice::from_raw_parts(p.0 as *const u8, t.nbytes) })
                .collect();
            let mut outs: Vec<&mut [u8]> = out_ptrs
                .iter()
                .zip(self.model.output_infos())
                .map(|(p, t)| unsafe { std::slice::from_raw_parts_mut(p.0, t.nbytes) })
                .collect();
            match self.state.try_lock() {
                Ok(mut st) => {
                    let (ws, pool) = &mut *st;
                    f(&self.model, &ins, &mut outs, ws, pool.as_ref())
                }
                Err(_) => {
                    let mut ws = self.model.workspace()?;
                    f(&self.model, &ins, &mut outs, &mut ws, None)
                }
            }
        });
        let r = r.map_err(kerr)?;
        Ok((outs, r))
    }

    fn outputs_dict<'py>(
        &self,
        py: Python<'py>,
        outs: Vec<Bound<'py, PyUntypedArray>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (o, a) in self.model.output_infos().iter().zip(outs) {
            d.set_item(&o.name, a)?;
        }
        Ok(d)
    }
}

#[pymethods]
impl PyModel {
    /// The model's name (its symbol prefix).
    #[getter]
    fn name(&self) -> &str {
        self.model.name()
    }

    /// Where it came from.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// Threads convolutions and matrix products are split over.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// Inputs: dicts with name, dtype (numpy name), shape.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.infos(py, self.model.input_infos())
    }

    /// Outputs: dicts with name, dtype (numpy name), shape.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.infos(py, self.model.output_infos())
    }

    /// Bytes of scratch memory a run uses (allocated once, reused).
    #[getter]
    fn workspace_size(&self) -> usize {
        self.model.workspace_size()
    }

    /// Run on `inputs` (a dict name -> array, a list in model order, or one array for a
    /// one-input model); returns a dict name -> numpy array. The GIL is released while the
    /// model runs.
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (outs, ()) = self.call(py, inputs, |m, i, o, ws, pool| m.run_pool(i, o, ws, pool))?;
        self.outputs_dict(py, outs)
    }

    /// Profile `runs` runs (after one warm-up run): per-node times as a `Profile`.
    #[pyo3(signature = (inputs, runs=10))]
    fn profile<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        runs: usize,
    ) -> PyResult<PyProfile> {
        if runs == 0 {
            return Err(PyValueError::new_err("runs must be at least 1"));
        }
        let (_, p) = self.call(py, inputs, |m, i, o, ws, pool| {
            m.profile(i, o, ws, pool, runs)
        })?;
        Ok(PyProfile(p))
    }

    fn __repr__(&self) -> String {
        let list = |ts: &[kiln_runtime::TensorInfo]| {
            ts.iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "<kiln.Model '{}' inputs [{}] outputs [{}] threads {}>",
            self.model.name(),
            list(self.model.input_infos()),
            list(self.model.output_infos()),
            self.threads
        )
    }
}

/// Per-node times of profiled runs.
#[pyclass(frozen, name = "Profile", module = "kiln._native")]
struct PyProfile(kiln_runtime::Profile);

#[pymethods]
impl PyProfile {
    /// Number of profiled runs.
    #[getter]
    fn runs(&self) -> usize {
        self.0.runs.len()
    }

    /// Mean milliseconds per run.
    #[getter]
    fn run_ms(&self) -> f64 {
        self.0.run_ms()
    }

    /// Per node, slowest first: dicts with index, name, op, flops, ms, percent, gflops.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for s in self.0.stats() {
            let d = PyDict::new(py);
            d.set_item("index", s.index)?;
            d.set_item("name", s.name)?;
            d.set_item("op", s.op)?;
            d.set_item("flops", s.flops)?;
            d.set_item("ms", s.ms)?;
            d.set_item("percent", s.percent)?;
            d.set_item("gflops", s.gflops)?;
            l.append(d)?;
        }
        Ok(l)
    }

    /// The runs as a Chrome trace (JSON text; chrome://tracing, Perfetto).
    fn chrome_trace(&self) -> String {
        self.0.chrome_trace()
    }

    /// The table `kiln run --profile` prints.
    fn table(&self) -> String {
        self.0.table()
    }

    fn __str__(&self) -> String {
        self.0.table()
    }

    fn __repr__(&self) -> String {
        format!(
            "<kiln.Profile '{}': {} runs, {:.3} ms per run>",
            self.0.model,
            self.0.runs.len(),
            self.0.run_ms()
        )
    }
}

/// Load a compiled shared library (`.so`), or compile a model file (`.onnx`, `.mindir`,
/// `.kir`) into memory.
#[pyfunction]
#[pyo3(signature = (path, *, threads=1, input_shapes=None, opt_level=2, weights=None,
                    target_cpu=None, kernels="auto"))]
#[allow(clippy::too_many_arguments)]
fn load(
    py: Python<'_>,
    path: PathBuf,
    threads: usize,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    opt_level: u8,
    weights: Option<PathBuf>,
    target_cpu: Option<String>,
    kernels: &str,
) -> PyResult<PyModel> {
    if !(1..=256).contains(&threads) {
        return Err(PyValueError::new_err(format!(
            "threads must be in 1..=256, got {threads}"
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (model, jit) = if ext == "so" || path.to_string_lossy().contains(".so.") {
        let m = py.detach(|| Model::load(Path::new(&path))).map_err(kerr)?;
        (m, None)
    } else {
        let src = Source::new(
            path.clone(),
            input_shapes,
            opt_level,
            weights,
            None,
            target_cpu,
            kernels,
        )?;
        py.detach(|| -> Result<_, String> {
            let g = src.graph()?;
            let name = pipeline::default_name(&src.model);
            let jit = kiln_target_cpu::compile_jit_with(&g, &src.target.cpu_options(&name, false))
                .map_err(|e| e.to_string())?;
            // SAFETY: the descriptor lives as long as `jit`, which the PyModel keeps (and
            // drops after the Model).
            let m = unsafe { Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel) }
                .map_err(|e| e.to_string())?;
            Ok((m, Some(Jit(jit))))
        })
        .map_err(kerr)?
    };
    let ws = model.workspace().map_err(kerr)?;
    let pool = match threads {
        1 => None,
        n => Some(ThreadPool::new(n).map_err(kerr)?),
    };
    Ok(PyModel {
        model,
        state: Mutex::new((ws, pool)),
        threads,
        path: path.display().to_string(),
        _jit: jit,
    })
}

/// Versions: kiln's, the runtime ABI's and LLVM's.
#[pyfunction]
fn versions<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("kiln", env!("CARGO_PKG_VERSION"))?;
    d.set_item("abi", kiln_runtime::KILN_ABI_VERSION)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("KilnError", m.py().get_type::<KilnError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(versions, m)?)?;
    m.add_class::<PyModel>()?;
    m.add_class::<PyProfile>()?;
    Ok(())
}
