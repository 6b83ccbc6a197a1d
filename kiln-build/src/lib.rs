//! Compile a neural-network model with kiln at `cargo build` time.
//!
//! In `build.rs` (with `kiln-build` under `[build-dependencies]` and `kiln-runtime` under
//! `[dependencies]`):
//!
//! ```no_run
//! kiln_build::Model::new("models/tiny_cnn.onnx")
//!     .input_shape("image", &[1, 1, 8, 8])
//!     .compile()
//!     .expect("compiling the model");
//! ```
//!
//! and in the crate:
//!
//! ```ignore
//! include!(concat!(env!("OUT_DIR"), "/tiny_cnn.rs"));
//!
//! let mut model = tiny_cnn::Model::new()?;
//! let image = [0f32; tiny_cnn::IMAGE_LEN];
//! let out = model.infer(&tiny_cnn::Inputs { image: &image })?;
//! println!("{:?}", out.probs);          // a Box<[f32; 10]>
//! ```
//!
//! `compile` loads and optimizes the model as `kiln build` does, writes the static library
//! (`lib<name>.a`) and the bindings (`<name>.rs`) into `OUT_DIR`, and tells cargo to link the
//! library (and libm) and to rebuild when the model file changes. The bindings are a module
//! named after the model with: `const` shapes and lengths of every input and output,
//! `Inputs<'a>` / `Outputs<'a>` structs of fixed-size array references (`&[f32; 784]`), so a
//! run with a wrong size does not compile, an owning `OwnedOutputs`, and a `Model` that owns the
//! workspace (and optionally a thread pool) with `run`, `infer` and `profile`.
//!
//! Code is generated for cargo's `TARGET` (cross builds work as for any `-sys` crate), and the
//! vector kernels for the CPU features rustc compiles for (`CARGO_CFG_TARGET_FEATURE`: AVX2+FMA
//! gives `x86-64-v3`, AVX-512 `x86-64-v4`, else the baseline; `RUSTFLAGS="-C
//! target-cpu=native"` or [`Model::target_cpu`] for more).

use kiln_compiler::passes::{OptLevel, OptOptions};
use kiln_compiler::pipeline::{self, Emit, LoadOptions, TargetOpts};
use kiln_ir::{DType, Graph, ValueId};
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading, optimizing or compiling the model failed (the message names file, node, op).
    #[error("kiln-build: {0}")]
    Compile(String),
    /// Not run from a build script and no output directory given.
    #[error("kiln-build: OUT_DIR is not set (call from build.rs, or set Model::out_dir)")]
    NoOutDir,
    #[error("kiln-build: {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// A model to compile: the builder `build.rs` uses.
#[derive(Debug, Clone)]
pub struct Model {
    path: PathBuf,
    name: Option<String>,
    input_shapes: Vec<(String, Vec<usize>)>,
    opt_level: OptLevel,
    target_cpu: Option<String>,
    wide: bool,
    out_dir: Option<PathBuf>,
}

/// What [`Model::compile`] wrote.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The module name of the bindings and the symbol prefix (`<name>_model`).
    pub name: String,
    /// `OUT_DIR/lib<name>.a`.
    pub library: PathBuf,
    /// `OUT_DIR/<name>.rs`: `include!` it.
    pub bindings: PathBuf,
    /// The triple and CPU the code was generated for (`None`: the host, its CPU).
    pub target: Option<String>,
    pub target_cpu: Option<String>,
}

impl Model {
    /// The model file (`.onnx`, `.mindir`, `.kir`), relative to the crate's directory.
    pub fn new(path: impl AsRef<Path>) -> Model {
        Model {
            path: path.as_ref().to_path_buf(),
            name: None,
            input_shapes: Vec::new(),
            opt_level: OptLevel::O2,
            target_cpu: None,
            wide: true,
            out_dir: None,
        }
    }

    /// The bindings' module name and symbol prefix (default: the file's stem).
    pub fn name(mut self, name: &str) -> Model {
        self.name = Some(name.to_string());
        self
    }

    /// Fix a dynamic input's shape.
    pub fn input_shape(mut self, input: &str, dims: &[usize]) -> Model {
        self.input_shapes.push((input.to_string(), dims.to_vec()));
        self
    }

    /// Optimization level 0, 1 or 2 (default 2).
    pub fn opt_level(mut self, level: u8) -> Model {
        self.opt_level = match level {
            0 => OptLevel::O0,
            1 => OptLevel::O1,
            _ => OptLevel::O2,
        };
        self
    }

    /// The CPU the vector kernels are generated for (`native`, `x86-64-v3`, `znver3`,
    /// `generic` for aarch64, ...), instead of the one derived from rustc's target features.
    pub fn target_cpu(mut self, cpu: &str) -> Model {
        self.target_cpu = Some(cpu.to_string());
        self
    }

    /// Cranelift kernels only (no LLVM vector kernels).
    pub fn cranelift_only(mut self) -> Model {
        self.wide = false;
        self
    }

    /// Where the library and bindings go (default: `$OUT_DIR`).
    pub fn out_dir(mut self, dir: impl AsRef<Path>) -> Model {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Compile: writes `lib<name>.a` and `<name>.rs`; from a build script, also the
    /// `cargo:` lines that link the library and rerun on changes of the model.
    pub fn compile(self) -> Result<Compiled, Error> {
        let in_build_script = std::env::var_os("OUT_DIR").is_some();
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or(Error::NoOutDir)?),
        };
        let name = kiln_target_cpu::sym(
            &self
                .name
                .clone()
                .unwrap_or_else(|| pipeline::default_name(&self.path)),
        );
        let env = |k: &str| std::env::var(k).ok();
        let target = match (env("TARGET"), env("HOST")) {
            (Some(t), Some(h)) if t != h => Some(t),
            _ => None,
        };
        let target_cpu = self.target_cpu.clone().or_else(|| {
            cpu_for_features(
                env("CARGO_CFG_TARGET_ARCH").as_deref(),
                env("CARGO_CFG_TARGET_FEATURE").as_deref(),
            )
        });
        if in_build_script {
            println!("cargo:rerun-if-changed={}", self.path.display());
        }
        let topts = TargetOpts {
            triple: target.clone(),
            cpu: target_cpu.clone(),
            wide: self.wide,
            ..TargetOpts::default()
        };
        let msg = |e: &dyn std::fmt::Display| Error::Compile(e.to_string());
        let mut g = pipeline::load(
            &self.path,
            &LoadOptions {
                input_shapes: self.input_shapes.clone(),
                ..Default::default()
            },
        )
        .map_err(|e| msg(&e))?;
        let opts = OptOptions {
            level: self.opt_level,
            layout: topts.layout_target().map_err(|e| msg(&e))?,
            ..Default::default()
        };
        pipeline::optimize(&mut g, &opts).map_err(|e| msg(&e))?;
        std::fs::create_dir_all(&out_dir).map_err(|err| Error::Io {
            path: out_dir.clone(),
            err,
        })?;
        let library = out_dir.join(format!("lib{name}.a"));
        pipeline::emit(&g, Emit::Staticlib, &library, &name, &topts).map_err(|e| msg(&e))?;
        let plan = kiln_target_cpu::plan_for(&g, topts.wide, topts.conv_schedule);
        let text = bindings(&g, &name, plan.workspace_size, &self.path);
        let rs = out_dir.join(format!("{name}.rs"));
        kiln_target_cpu::link::write_atomic(&rs, text.as_bytes()).map_err(|e| msg(&e))?;
        if in_build_script {
            println!("cargo:rustc-link-search=native={}", out_dir.display());
            println!("cargo:rustc-link-lib=static={name}");
            println!("cargo:rustc-link-lib=m");
        }
        Ok(Compiled {
            name,
            library,
            bindings: rs,
            target,
            target_cpu,
        })
    }
}

/// The `--target-cpu` matching rustc's target features: what the rest of the crate may assume.
fn cpu_for_features(arch: Option<&str>, features: Option<&str>) -> Option<String> {
    let f: Vec<&str> = features.unwrap_or("").split(',').collect();
    let has = |x: &str| f.contains(&x);
    match arch? {
        "x86_64" if has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq") => {
            Some("x86-64-v4".into())
        }
        "x86_64" if has("avx2") && has("fma") => Some("x86-64-v3".into()),
        "x86_64" => Some("x86-64".into()),
        "aarch64" => Some("generic".into()),
        _ => None,
    }
}

/// Rust type of a tensor element (f16/bf16 as their raw `u16` bits, bool as `u8`).
fn rust_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I8 => "i8",
        DType::U8 | DType::Bool => "u8",
        DType::I16 => "i16",
        DType::U16 | DType::F16 | DType::BF16 => "u16",
        DType::I32 => "i32",
        DType::U32 => "u32",
        DType::I64 => "i64",
        DType::U64 => "u64",
    }
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// snake_case Rust identifiers for tensor names, unique among `taken`.
fn ident(name: &str, taken: &mut Vec<String>) -> String {
    let mut s = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower {
                s.push('_');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            s.push(c.to_ascii_lowercase());
        } else {
            if !s.ends_with('_') {
                s.push('_');
            }
            prev_lower = false;
        }
    }
    let mut s = s.trim_matches('_').to_string();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, 't');
        s.insert(1, '_');
    }
    if KEYWORDS.contains(&s.as_str()) || s == "model" || s == "self_" {
        s.push('_');
    }
    let base = s.clone();
    let mut k = 1;
    while taken.contains(&s) {
        s = format!("{base}_{k}");
        k += 1;
    }
    taken.push(s.clone());
    s
}

/// The bindings module for a compiled model (`include!`d by the crate).
pub fn bindings(g: &Graph, name: &str, workspace_size: usize, source: &Path) -> String {
    let mut taken = Vec::new();
    let tensors = |ids: &[ValueId], taken: &mut Vec<String>| {
        ids.iter()
            .map(|&v| {
                let t = g.ty(v);
                (
                    g.value(v).name.clone(),
                    ident(&g.value(v).name, taken),
                    rust_type(t.dtype),
                    t.dtype,
                    t.shape.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let ins = tensors(&g.inputs, &mut taken);
    let outs = tensors(&g.outputs, &mut taken);
    let clean = |s: &str| s.replace(['\n', '\r'], " ");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated by kiln-build {} from {}. Do not edit.",
        env!("CARGO_PKG_VERSION"),
        clean(&source.display().to_string())
    );
    let _ = writeln!(
        s,
        "/// The model `{name}` compiled by kiln: typed inputs and outputs, and a [`{name}::Model`] to run it.\n#[allow(dead_code, clippy::all)]\npub mod {name} {{"
    );
    let _ = writeln!(s, "    use kiln_runtime as rt;\n");
    let _ = writeln!(
        s,
        "    unsafe extern \"C\" {{\n        fn {name}_model() -> *const rt::KilnModel;\n    }}\n"
    );
    let _ = writeln!(s, "    /// The model's name (its symbol prefix).");
    let _ = writeln!(s, "    pub const NAME: &str = {:?};", name);
    let _ = writeln!(s, "    /// Bytes of scratch memory a run needs.");
    let _ = writeln!(s, "    pub const WORKSPACE_SIZE: usize = {workspace_size};");
    let _ = writeln!(
        s,
        "    pub const WORKSPACE_ALIGN: usize = {};\n",
        kiln_ir::memplan::ALIGN
    );
    for (kind, list) in [("input", &ins), ("output", &outs)] {
        for (orig, id, ty, dt, shape) in list.iter() {
            let up = id.to_ascii_uppercase();
            let n: usize = shape.iter().product();
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(
                s,
                "    /// {kind} {:?}: {dt} [{}]",
                clean(orig),
                dims.join(", ")
            );
            let _ = writeln!(
                s,
                "    pub const {up}_SHAPE: [usize; {}] = [{}];",
                shape.len(),
                dims.join(", ")
            );
            let _ = writeln!(s, "    pub const {up}_LEN: usize = {n};");
            let _ = writeln!(s, "    pub type {}Elem = {ty};", camel(id));
            let _ = writeln!(s, "    pub const {up}_NAME: &str = {:?};\n", orig);
        }
    }
    // Inputs / Outputs / OwnedOutputs
    let _ = writeln!(
        s,
        "    /// The inputs, each exactly its tensor's size (dense, row-major)."
    );
    let _ = writeln!(
        s,
        "    #[derive(Clone, Copy)]\n    pub struct Inputs<'a> {{"
    );
    for (orig, id, ty, _, _) in &ins {
        let _ = writeln!(
            s,
            "        /// {:?}\n        pub {id}: &'a [{ty}; {}_LEN],",
            clean(orig),
            id.to_ascii_uppercase()
        );
    }
    let _ = writeln!(s, "    }}\n");
    let _ = writeln!(
        s,
        "    /// Where a run writes the outputs, each exactly its tensor's size."
    );
    let _ = writeln!(s, "    pub struct Outputs<'a> {{");
    for (orig, id, ty, _, _) in &outs {
        let _ = writeln!(
            s,
            "        /// {:?}\n        pub {id}: &'a mut [{ty}; {}_LEN],",
            clean(orig),
            id.to_ascii_uppercase()
        );
    }
    let _ = writeln!(s, "    }}\n");
    let _ = writeln!(s, "    /// Outputs on the heap, from [`Model::infer`].");
    let _ = writeln!(
        s,
        "    #[derive(Clone, Debug)]\n    pub struct OwnedOutputs {{"
    );
    for (orig, id, ty, _, _) in &outs {
        let _ = writeln!(
            s,
            "        /// {:?}\n        pub {id}: Box<[{ty}; {}_LEN]>,",
            clean(orig),
            id.to_ascii_uppercase()
        );
    }
    let _ = writeln!(s, "    }}\n");
    let _ = writeln!(
        s,
        "    impl OwnedOutputs {{\n        /// Zero-filled outputs.\n        pub fn new() -> OwnedOutputs {{\n            OwnedOutputs {{"
    );
    for (_, id, ty, _, _) in &outs {
        let _ = writeln!(
            s,
            "                {id}: vec![0 as {ty}; {}_LEN].into_boxed_slice().try_into().unwrap(),",
            id.to_ascii_uppercase()
        );
    }
    let _ = writeln!(s, "            }}\n        }}\n");
    let _ = writeln!(
        s,
        "        /// Mutable references to fill by [`Model::run`].\n        pub fn as_outputs(&mut self) -> Outputs<'_> {{\n            Outputs {{"
    );
    for (_, id, _, _, _) in &outs {
        let _ = writeln!(s, "                {id}: &mut self.{id},");
    }
    let _ = writeln!(s, "            }}\n        }}\n    }}\n");
    let _ = writeln!(
        s,
        "    impl Default for OwnedOutputs {{\n        fn default() -> Self {{\n            Self::new()\n        }}\n    }}\n"
    );
    // the runner
    let n_in = ins.len();
    let n_out = outs.len();
    let in_ptrs: Vec<String> = ins
        .iter()
        .map(|(_, id, _, _, _)| format!("inputs.{id}.as_ptr().cast::<u8>()"))
        .collect();
    let out_ptrs: Vec<String> = outs
        .iter()
        .map(|(_, id, _, _, _)| format!("outputs.{id}.as_mut_ptr().cast::<u8>()"))
        .collect();
    let in_bytes: Vec<String> = ins
        .iter()
        .map(|(_, id, _, _, _)| format!("bytes(&inputs.{id}[..])"))
        .collect();
    let out_bytes: Vec<String> = outs
        .iter()
        .map(|(_, id, _, _, _)| format!("bytes_mut(&mut out.{id}[..])"))
        .collect();
    let checks: String = ins
        .iter()
        .map(|t| (t, "input_infos"))
        .enumerate()
        .chain(outs.iter().map(|t| (t, "output_infos")).enumerate())
        .map(|(i, ((_, id, _, dt, _), list))| {
            let up = id.to_ascii_uppercase();
            format!(
                "        {{\n            let t = &m.{list}()[{i}];\n            if t.name != {up}_NAME || t.dtype != {} || t.dims.iter().map(|&d| d as usize).ne({up}_SHAPE) {{\n                return Err(rt::Error::BadDescriptor(format!(\"{{}}: linked model differs from the bindings ({{}})\", NAME, t)));\n            }}\n        }}\n",
                dt.abi_code()
            )
        })
        .collect();
    let _ = write!(
        s,
        r#"    /// The linked model's descriptor.
    pub fn descriptor() -> &'static rt::KilnModel {{
        // SAFETY: the descriptor of a linked-in model is immutable 'static data.
        unsafe {{ &*{name}_model() }}
    }}

    fn bytes<T>(s: &[T]) -> &[u8] {{
        // SAFETY: plain numbers, no padding; u8 has alignment 1.
        unsafe {{ std::slice::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s)) }}
    }}

    fn bytes_mut<T>(s: &mut [T]) -> &mut [u8] {{
        // SAFETY: as in `bytes`; every byte pattern is a valid element of these types.
        unsafe {{ std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), std::mem::size_of_val(s)) }}
    }}

    /// The compiled model with its workspace (and optional thread pool).
    pub struct Model {{
        ws: rt::Workspace,
        pool: Option<rt::ThreadPool>,
        runtime: rt::Model,
    }}

    impl Model {{
        /// Checks the linked descriptor against these bindings and allocates the workspace.
        pub fn new() -> Result<Model, rt::Error> {{
            // SAFETY: a linked-in, 'static descriptor.
            let m = unsafe {{ rt::Model::from_static(descriptor()) }}?;
            if m.input_infos().len() != {n_in} || m.output_infos().len() != {n_out} || m.workspace_size() != WORKSPACE_SIZE {{
                return Err(rt::Error::BadDescriptor(format!("{{}}: linked model differs from the bindings", NAME)));
            }}
{checks}            Ok(Model {{ ws: m.workspace()?, pool: None, runtime: m }})
        }}

        /// As `new`, with convolutions and matrix products split over `threads` threads.
        pub fn with_threads(threads: usize) -> Result<Model, rt::Error> {{
            let mut m = Model::new()?;
            if threads > 1 {{
                m.pool = Some(rt::ThreadPool::new(threads).map_err(|e| rt::Error::BadDescriptor(e.to_string()))?);
            }}
            Ok(m)
        }}

        /// Runs the model: every buffer has its exact size by type, so only the model's own
        /// status can fail.
        pub fn run(&mut self, inputs: &Inputs<'_>, outputs: &mut Outputs<'_>) -> Result<(), rt::Error> {{
            let ins: [*const u8; {n_in}] = [{in_ptrs}];
            let outs: [*mut u8; {n_out}] = [{out_ptrs}];
            let ws = if WORKSPACE_SIZE == 0 {{ std::ptr::null_mut() }} else {{ self.ws.as_mut_ptr() }};
            let pool = self.pool.as_ref().map_or(std::ptr::null(), |p| p.as_abi());
            let run = descriptor().run_pool.expect("validated in new");
            // SAFETY: buffers of the descriptor's sizes (checked in `new`, fixed by the types),
            // outputs exclusively borrowed, an aligned workspace of WORKSPACE_SIZE bytes.
            let status = unsafe {{ run(ins.as_ptr(), outs.as_ptr(), ws, pool) }};
            if status == rt::KILN_OK {{ Ok(()) }} else {{ Err(rt::Error::Status(status)) }}
        }}

        /// Runs the model into fresh heap outputs.
        pub fn infer(&mut self, inputs: &Inputs<'_>) -> Result<OwnedOutputs, rt::Error> {{
            let mut out = OwnedOutputs::new();
            self.run(inputs, &mut out.as_outputs())?;
            Ok(out)
        }}

        /// Per-node times of `runs` runs (after one warm-up run).
        pub fn profile(&mut self, inputs: &Inputs<'_>, runs: usize) -> Result<rt::Profile, rt::Error> {{
            let mut out = OwnedOutputs::new();
            let ins: [&[u8]; {n_in}] = [{in_bytes}];
            let mut outs: [&mut [u8]; {n_out}] = [{out_bytes}];
            self.runtime.profile(&ins, &mut outs, &mut self.ws, self.pool.as_ref(), runs)
        }}

        /// The runtime's view of the model (names, shapes, schedule).
        pub fn runtime(&self) -> &rt::Model {{
            &self.runtime
        }}
    }}
}}
"#,
        in_ptrs = in_ptrs.join(", "),
        out_ptrs = out_ptrs.join(", "),
        in_bytes = in_bytes.join(", "),
        out_bytes = out_bytes.join(", "),
    );
    s
}

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_rust_and_unique() {
        let mut t = Vec::new();
        assert_eq!(ident("input.1", &mut t), "input_1");
        assert_eq!(ident("input_1", &mut t), "input_1_1");
        assert_eq!(ident("type", &mut t), "type_");
        assert_eq!(ident("0x", &mut t), "t_0x");
        assert_eq!(ident("ImageTensor", &mut t), "image_tensor");
        assert_eq!(
            ident("save_infer_model/scale_0.tmp_1", &mut t),
            "save_infer_model_scale_0_tmp_1"
        );
        assert_eq!(ident("", &mut t), "t_");
        assert_eq!(camel("image_tensor"), "ImageTensor");
    }

    #[test]
    fn cpu_from_rustc_features() {
        let c = |a, f| cpu_for_features(Some(a), Some(f));
        assert_eq!(c("x86_64", "fxsr,sse,sse2").as_deref(), Some("x86-64"));
        assert_eq!(
            c("x86_64", "avx,avx2,fma,sse2").as_deref(),
            Some("x86-64-v3")
        );
        assert_eq!(
            c("x86_64", "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq").as_deref(),
            Some("x86-64-v4")
        );
        assert_eq!(c("aarch64", "neon").as_deref(), Some("generic"));
        assert_eq!(c("riscv64", "").as_deref(), None);
    }

    /// Bindings of a small IR model compile as Rust (checked by the example crate for a real
    /// model); here: names and shapes land where they should.
    #[test]
    fn bindings_text() {
        let g = kiln_ir::text::parse(
            "graph g {\n  input %x: f32[2,3]\n  input %type: i64[4]\n  %y = relu(%x) : f32[2,3]\n  output %y\n}\n",
        )
        .unwrap();
        let b = bindings(&g, "g", 0, Path::new("g.kir"));
        assert!(b.contains("pub const X_SHAPE: [usize; 2] = [2, 3];"), "{b}");
        assert!(b.contains("pub x: &'a [f32; X_LEN],"), "{b}");
        assert!(b.contains("pub type_: &'a [i64; TYPE__LEN],"), "{b}");
        assert!(b.contains("pub y: &'a mut [f32; Y_LEN],"), "{b}");
        assert!(b.contains("fn g_model() -> *const rt::KilnModel;"), "{b}");
    }
}
