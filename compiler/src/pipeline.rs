//! Model loading (by file type), verification, and artefact emission.

use kiln_ir::Graph;
use kiln_target_cpu::{CpuOptions, link};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Any front end (ONNX, MindIR, ckpt, AIR, OM).
    #[error("{0}")]
    Frontend(#[from] crate::frontend::FrontendError),
    #[error("{path}: {err}")]
    Ir { path: String, err: kiln_ir::IrError },
    #[error("{0}")]
    Cpu(#[from] kiln_target_cpu::CpuError),
    #[error("{0}")]
    Link(#[from] link::LinkError),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Msg(String),
}

/// What `kiln build` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// shared library (`.so`) exporting `<name>_model` and `kiln_model_default`
    So,
    /// relocatable object file
    Obj,
    /// static library (`.a`)
    Staticlib,
    /// standalone executable (`--input NAME=FILE.npy`, `--output-dir`, `--bench N`)
    Exe,
    /// C header for the compiled model
    Header,
    /// kiln IR, textual form
    Ir,
    /// PTX of the GPU kernels (`--target nvptx64-nvidia-cuda`)
    Ptx,
    /// Ascend offline model (.om): the graph in GE ops with device-layout weights and GE's
    /// memory plan (--soc-version, --precision-mode, --atc-config)
    Om,
    /// pkg-config file (`<name>.pc`) for the library and header beside it
    Pc,
}

impl Emit {
    /// The artefact's default file name for model `name`: `lib<name>.so`, `lib<name>.a`,
    /// `<name>.o`, `<name>` (executable), `<name>.h`, `<name>.kir`.
    pub fn default_output(self, name: &str) -> PathBuf {
        let ext = self.default_extension();
        let base = if self == Emit::So || self == Emit::Staticlib {
            format!("lib{name}")
        } else {
            name.to_string()
        };
        PathBuf::from(if ext.is_empty() {
            base
        } else {
            format!("{base}.{ext}")
        })
    }

    pub fn default_extension(self) -> &'static str {
        match self {
            Emit::So => "so",
            Emit::Obj => "o",
            Emit::Staticlib => "a",
            Emit::Exe => "",
            Emit::Header => "h",
            Emit::Ir => "kir",
            Emit::Ptx => "ptx",
            Emit::Om => "om",
            Emit::Pc => "pc",
        }
    }
}

/// What `kiln build|run|inspect|convert` pass every importer: `--input-shape` and `--freeze`.
pub type LoadOptions = crate::frontend::InputFixes;

/// Parse `NAME=FILE.npy` for `--freeze`: the named input becomes a constant.
pub fn parse_freeze(s: &str) -> Result<(String, kiln_ir::TensorType, kiln_ir::ConstData), String> {
    let (name, file) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=FILE.npy, got '{s}'"))?;
    let arr = kiln_runtime::npy::read(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
    let dtype = kiln_ir::DType::ALL
        .into_iter()
        .find(|d| d.abi_code() == arr.dtype)
        .ok_or_else(|| format!("{file}: unsupported dtype code {}", arr.dtype))?;
    Ok((
        name.to_string(),
        kiln_ir::TensorType::new(dtype, arr.shape),
        kiln_ir::ConstData::from_vec(arr.data),
    ))
}

/// Parse `NAME=D0,D1,...`.
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=D0,D1,..., got '{s}'"))?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad dimension '{d}' in '{s}'"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

/// Inputs beyond [`LoadOptions`]: a checkpoint to bind and a decryption key.
#[derive(Debug, Clone, Default)]
pub struct ExtraOptions {
    /// `--weights FILE`: a MindSpore checkpoint (`.ckpt` or `.safetensors`) whose tensors replace
    /// the model's constants of the same names.
    pub weights: Option<PathBuf>,
    /// Key for encrypted `.mindir` / `.ckpt` files.
    pub key: Option<crate::mindspore::DecryptKey>,
}

/// A loaded model and the notes/warnings for the user (from binding weights).
#[derive(Debug)]
pub struct Loaded {
    pub graph: Graph,
    pub messages: Vec<String>,
}

/// Load a model by its extension (`.onnx`, `.mindir`, `.kir`) and verify it.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Graph, Error> {
    Ok(load_with(path, opts, &ExtraOptions::default())?.graph)
}

/// Load a model, bind `extra.weights` (if any) and verify the result.
pub fn load_with(path: &Path, opts: &LoadOptions, extra: &ExtraOptions) -> Result<Loaded, Error> {
    let mut g = load_model(path, opts, extra)?;
    let mut messages = Vec::new();
    if let Some(w) = &extra.weights {
        let ck = crate::mindspore::ckpt::read(w, extra.key.as_ref())?;
        let report = crate::mindspore::bind::bind(&mut g, &ck)
            .map_err(|m| Error::Msg(format!("{}: {m}", w.display())))?;
        messages = report
            .messages()
            .into_iter()
            .map(|m| format!("{}: {m}", w.display()))
            .collect();
    }
    kiln_ir::verify::verify(&g).map_err(|err| Error::Ir {
        path: path.display().to_string(),
        err,
    })?;
    Ok(Loaded { graph: g, messages })
}

/// `--freeze` for front ends that do not fold through inputs (the ONNX importer freezes while
/// importing, so frozen values feed its shape folding).
fn freeze(mut g: Graph, path: &Path, opts: &LoadOptions) -> Result<Graph, Error> {
    for (name, ty, data) in &opts.frozen_inputs {
        g.freeze_input(name, ty, data.clone())
            .map_err(|err| Error::Ir {
                path: path.display().to_string(),
                err,
            })?;
    }
    Ok(g)
}

fn load_model(path: &Path, opts: &LoadOptions, extra: &ExtraOptions) -> Result<Graph, Error> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let g = match ext.as_str() {
        "onnx" => crate::onnx::load(path, opts)?,
        "mindir" => crate::mindspore::mindir::load(
            path,
            &crate::mindspore::mindir::MindirOptions {
                inputs: opts.clone(),
                key: extra.key.clone(),
            },
        )?,
        "air" => crate::air::load(
            path,
            &crate::air::AirOptions {
                inputs: opts.clone(),
                ..Default::default()
            },
        )?,
        "om" => {
            let file = path.display().to_string();
            let bytes = crate::frontend::data::map_file(path)
                .map_err(|e| crate::frontend::FrontendError::io(&file, e))?;
            crate::om::load_bytes(
                bytes,
                crate::frontend::data::model_dir(path),
                &file,
                &crate::air::AirOptions {
                    inputs: opts.clone(),
                    ..Default::default()
                },
            )?
        }
        "kir" => {
            let text = std::fs::read_to_string(path).map_err(|err| Error::Io {
                path: path.into(),
                err,
            })?;
            let g = kiln_ir::text::parse(&text).map_err(|err| Error::Ir {
                path: path.display().to_string(),
                err,
            })?;
            freeze(g, path, opts)?
        }
        _ => {
            return Err(Error::Msg(format!(
                "{}: unknown model type '.{ext}' (supported: .onnx, .mindir, .air, .om, .kir)",
                path.display()
            )));
        }
    };
    Ok(g)
}

/// Run the optimizing passes of `opts.level` on a loaded graph (the verifier runs after every
/// pass). `load` returns the unoptimized graph; `kiln build` and `kiln run` call this next.
pub fn optimize(
    g: &mut Graph,
    opts: &crate::passes::OptOptions,
) -> Result<crate::passes::OptReport, Error> {
    crate::passes::optimize(g, opts).map_err(Error::Msg)
}

/// Default artefact name from a model path (`models/resnet18.onnx` -> `resnet18`).
pub fn default_name(path: &Path) -> String {
    kiln_target_cpu::sym(
        &path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    )
}

/// What code is generated for: `--target`, `--target-cpu`, `--kernels`.
#[derive(Debug, Clone)]
pub struct TargetOpts {
    /// Target triple (`None`: the host).
    pub triple: Option<String>,
    /// CPU of the wide kernels (`None`: `native` on the host, the baseline otherwise).
    pub cpu: Option<String>,
    /// Use LLVM-generated wide-vector kernels where they apply (`false`: Cranelift only).
    pub wide: bool,
    /// Register tiling of the wide convolution kernels.
    pub conv_schedule: kiln_target_cpu::ConvSchedule,
    /// Where code generation reports progress (`kiln`'s progress bars).
    pub progress: Option<kiln_target_cpu::Progress>,
}

impl Default for TargetOpts {
    fn default() -> Self {
        TargetOpts {
            triple: None,
            cpu: None,
            wide: true,
            conv_schedule: kiln_target_cpu::ConvSchedule::Auto,
            progress: None,
        }
    }
}

impl TargetOpts {
    /// The back end's layout model for the `layout` pass (`None`: Cranelift-only kernels, all
    /// plain).
    pub fn layout_target(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn kiln_ir::layout::LayoutTarget>>, Error> {
        // the GPU kernels read plain tensors
        if crate::gpu::is_gpu(self.triple.as_deref()) {
            return Ok(None);
        }
        let t = kiln_target_cpu::layout_target(&self.cpu_options("layout", false))
            .map_err(|e| Error::Msg(e.to_string()))?;
        Ok(t.map(|t| std::sync::Arc::new(t) as std::sync::Arc<dyn kiln_ir::layout::LayoutTarget>))
    }

    /// Back-end options for an artefact or in-memory model called `name`.
    pub fn cpu_options(&self, name: &str, export_default: bool) -> CpuOptions {
        CpuOptions {
            name: name.to_string(),
            export_default,
            target: self.triple.clone(),
            target_cpu: self.cpu.clone(),
            wide: self.wide,
            conv_schedule: self.conv_schedule,
            progress: self.progress.clone(),
            ..CpuOptions::host(name)
        }
    }
}

/// A pkg-config file for model `name`: the library (`lib<name>.a` or `.so`) and the header
/// (`<name>.h`) are found in the `.pc` file's own directory (`${pcfiledir}`), so the three can
/// be moved together: `cc app.c $(pkg-config --cflags --libs <name>)` with
/// `PKG_CONFIG_PATH=<dir>`.
pub fn pkg_config(g: &Graph, name: &str) -> String {
    let list = |vs: &[kiln_ir::ValueId]| {
        vs.iter()
            .map(|&v| {
                let t = g.ty(v);
                let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
                format!("{} {}[{}]", g.value(v).name, t.dtype, dims.join(","))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // pkg-config fields are one line each
    let clean = |s: String| s.replace(['\n', '\r'], " ");
    format!(
        "# pkg-config file of the model '{name}' compiled by kiln {}\n\
         prefix=${{pcfiledir}}\nlibdir=${{prefix}}\nincludedir=${{prefix}}\n\n\
         Name: {name}\n\
         Description: {}\n\
         Version: {}\n\
         Cflags: -I${{includedir}}\n\
         Libs: -L${{libdir}} -l{name} -lm\n",
        env!("CARGO_PKG_VERSION"),
        clean(format!(
            "kiln model {name}: inputs {}; outputs {}; include {name}.h, call {name}_model()",
            list(&g.inputs),
            list(&g.outputs)
        )),
        env!("CARGO_PKG_VERSION"),
    )
}

/// Emit an artefact for `g` to `out`. Every file is written atomically.
pub fn emit(
    g: &Graph,
    emit: Emit,
    out: &Path,
    name: &str,
    target: &TargetOpts,
) -> Result<(), Error> {
    match emit {
        Emit::Ptx => {
            return Err(Error::Msg(
                "--emit ptx needs --target nvptx64-nvidia-cuda".into(),
            ));
        }
        Emit::Om => {
            return Err(Error::Msg(
                "an OM is built from the loaded graph: use pipeline::emit_om".into(),
            ));
        }
        Emit::Ir => return Ok(link::write_atomic(out, kiln_ir::text::print(g).as_bytes())?),
        Emit::Pc => return Ok(link::write_atomic(out, pkg_config(g, name).as_bytes())?),
        Emit::Header => {
            let plan = kiln_target_cpu::plan_for(g, target.wide, target.conv_schedule);
            let h = kiln_target_cpu::generate_header(
                name,
                g,
                plan.workspace_size,
                kiln_ir::memplan::ALIGN,
            );
            return Ok(link::write_atomic(out, h.as_bytes())?);
        }
        _ => {}
    }
    let export_default = matches!(emit, Emit::So | Emit::Exe);
    if export_default {
        // a missing cross toolchain is reported before code generation
        link::c_compiler(target.triple.as_deref())?;
    }
    let opts = target.cpu_options(name, export_default);
    let (objs, _info) = kiln_target_cpu::compile_object(g, &opts)?;
    if emit == Emit::Obj && objs.kernels.is_none() {
        return Ok(link::write_atomic(out, &objs.main)?);
    }
    // link steps read the objects from a private temp directory (the names become archive
    // member names: `<name>.o`, `<name>_kernels.o`)
    let base = std::env::temp_dir().join(format!("kiln-{name}"));
    let dir = kiln_runtime::atomic::temp_dir_beside(&base)
        .map_err(|err| Error::Io { path: base, err })?;
    let mut paths = Vec::new();
    let mut r = Ok(());
    for (what, bytes) in [("", Some(&objs.main)), ("_kernels", objs.kernels.as_ref())] {
        let Some(bytes) = bytes else { continue };
        let p = dir.join(format!("{name}{what}.o"));
        if let Err(err) = std::fs::write(&p, bytes) {
            r = Err(Error::Io { path: p, err });
            break;
        }
        paths.push(p);
    }
    if r.is_ok() {
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        if let Some(p) = &target.progress {
            (p.0)("link", 0, 1);
        }
        r = match emit {
            Emit::So => link::link_shared(&refs, out, target.triple.as_deref()),
            Emit::Staticlib => link::link_static(&refs, out, target.triple.as_deref()),
            Emit::Exe => link::link_exe(&refs, out, target.triple.as_deref()),
            Emit::Obj => link::link_relocatable(&refs, out, target.triple.as_deref()),
            _ => unreachable!(),
        }
        .map_err(Error::from);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let (Ok(()), Some(p)) = (&r, &target.progress) {
        (p.0)("link", 1, 1);
    }
    r
}

/// Output formats of `kiln convert`, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertFormat {
    /// ONNX (opset 21; external data beside it over 2 GB).
    Onnx,
    /// Ascend AIR (a GraphEngine `ModelDef`).
    Air,
    /// kiln IR, textual form.
    Kir,
}

impl ConvertFormat {
    /// The format of an output path, by its extension.
    pub fn of(path: &Path) -> Result<Self, Error> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "onnx" => ConvertFormat::Onnx,
            "air" => ConvertFormat::Air,
            "kir" => ConvertFormat::Kir,
            _ => {
                return Err(Error::Msg(format!(
                    "{}: unknown output format '.{ext}' (kiln convert writes .onnx, .air, .kir)",
                    path.display()
                )));
            }
        })
    }
}

/// Write `g` to `out` in the format its extension names (`kiln convert`). Every file is
/// written atomically; a failure leaves nothing behind.
pub fn write_model(g: &Graph, out: &Path) -> Result<(), Error> {
    match ConvertFormat::of(out)? {
        ConvertFormat::Onnx => crate::onnx::export::write_file(g, out, &Default::default())
            .map_err(|e| Error::Msg(format!("{}: {e}", out.display()))),
        ConvertFormat::Air => crate::air::export::write_file(g, out, &Default::default())
            .map_err(|e| Error::Msg(format!("{}: {e}", out.display()))),
        ConvertFormat::Kir => Ok(link::write_atomic(out, kiln_ir::text::print(g).as_bytes())?),
    }
}

/// What `kiln build --emit om` is asked for.
#[derive(Debug, Clone, Default)]
pub struct OmBuild {
    pub soc: kiln_target_om::SocVersion,
    pub precision: kiln_target_om::precision::PrecisionMode,
    /// The optimizer's level and switched-off rules (the `layout` pass gets the Ascend model).
    pub opt: crate::passes::OptOptions,
    /// Write the ATC option files, kiln's AIR and the `atc` command into this directory.
    pub atc_config: Option<PathBuf>,
    /// Preprocessing for ATC's AIPP (`--insert_op_conf`).
    pub aipp: Option<kiln_target_om::atc::Aipp>,
}

/// Build an Ascend OM from a loaded (unoptimized) graph: optimize with the Ascend layout model,
/// write the OM atomically, and with `atc_config` the AIR of the graph as loaded plus ATC's
/// option files and command. Nothing is written unless everything succeeds (files written
/// before a later failure are removed).
pub fn emit_om(
    g: &Graph,
    out: &Path,
    name: &str,
    b: &OmBuild,
) -> Result<kiln_target_om::om::OmReport, Error> {
    let mut opt = b.opt.clone();
    opt.layout = Some(std::sync::Arc::new(kiln_target_om::ascend::AscendLayouts));
    let mut og = g.clone();
    optimize(&mut og, &opt)?;
    let (bytes, report) = kiln_target_om::om::build(
        &og,
        &kiln_target_om::om::OmOptions {
            name: name.to_string(),
            soc: b.soc,
            precision: b.precision,
            aipp: b
                .aipp
                .clone()
                .filter(|a| a.format == kiln_target_om::atc::AippFormat::Rgb888U8),
        },
    )
    .map_err(|e| Error::Msg(format!("{}: {e}", out.display())))?;
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    if let Some(dir) = &b.atc_config {
        use kiln_target_om::atc;
        let air = crate::air::export::export(g)
            .map_err(|e| Error::Msg(format!("{}: {e}", dir.display())))?;
        let air_name = format!("{name}.air");
        files.push((dir.join(&air_name), prost::Message::encode_to_vec(&air)));
        files.push((
            dir.join("fusion_switch.cfg"),
            atc::fusion_switch(&b.opt.disabled).into_bytes(),
        ));
        if let Some(a) = &b.aipp {
            let (h, w) = g
                .inputs
                .first()
                .map(|&v| g.ty(v))
                .filter(|t| t.rank() == 4)
                .map(|t| (t.shape[2], t.shape[3]))
                .ok_or_else(|| Error::Msg("--aipp needs a 4-D (NCHW) first input".into()))?;
            files.push((dir.join("aipp.cfg"), atc::aipp_config(a, h, w).into_bytes()));
        }
        if b.precision == kiln_target_om::precision::PrecisionMode::AllowMixPrecision {
            files.push((dir.join("mixlist.json"), atc::mixlist().into_bytes()));
        }
        let cmd = atc::command(&air_name, name, b.soc, b.precision, b.aipp.is_some());
        let script = format!(
            "#!/bin/sh\n# Compile kiln's AIR into an OM the NPU runs (needs CANN's atc; run in this directory).\n# kiln's own OM carries the graph, device-layout weights and memory plan; the AI Core\n# kernels (TBE_KERNELS) and tasks (TASK_INFO) come from atc.\ncd \"$(dirname \"$0\")\"\n{cmd}\n"
        );
        files.push((dir.join("atc.sh"), script.into_bytes()));
        std::fs::create_dir_all(dir).map_err(|err| Error::Io {
            path: dir.clone(),
            err,
        })?;
    }
    files.push((out.to_path_buf(), bytes));
    let mut written: Vec<&Path> = Vec::new();
    for (p, data) in &files {
        if let Err(e) = link::write_atomic(p, data) {
            for w in written {
                let _ = std::fs::remove_file(w);
            }
            return Err(e.into());
        }
        written.push(p);
    }
    Ok(report)
}
