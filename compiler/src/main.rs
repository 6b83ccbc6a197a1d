//! The `kiln` command line.

use clap::{Args, Parser, Subcommand};
use kiln_compiler::mindspore::{self, DecryptKey};
use kiln_compiler::passes::{self, OptLevel, OptOptions};
use kiln_compiler::pipeline::{self, Emit, ExtraOptions, LoadOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Ahead-of-time compiler for neural-network models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

type Frozen = (String, kiln_ir::TensorType, kiln_ir::ConstData);

/// Model loading flags shared by `build` and `run`.
#[derive(Args, Clone, Default)]
struct LoadArgs {
    /// Fix a dynamic input shape: NAME=1,3,224,224 (repeatable).
    #[arg(long = "input-shape", value_parser = pipeline::parse_input_shape)]
    input_shapes: Vec<(String, Vec<usize>)>,
    /// Replace an input by a constant at compile time: NAME=FILE.npy (repeatable).
    #[arg(long = "freeze", value_parser = pipeline::parse_freeze)]
    frozen: Vec<Frozen>,
    /// Bind a MindSpore checkpoint (.ckpt or .safetensors): its tensors replace the model's
    /// parameters (MindIR parameters, ONNX initializers) of the same names.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// File holding the key of an encrypted .mindir/.ckpt (hex, or the raw key bytes; see
    /// README). Without it the key is read from $KILN_DECRYPT_KEY.
    #[arg(long = "decrypt-key-file")]
    decrypt_key_file: Option<PathBuf>,
}

/// Optimizer flags shared by `build`, `run` and `inspect`.
#[derive(Args, Clone, Default)]
struct OptArgs {
    /// Optimization level: -O0 none, -O1 constant folding + cleanup, -O2 everything (default).
    #[arg(short = 'O', default_value = "2", value_name = "LEVEL")]
    opt: OptLevel,
    /// Print the textual IR to stderr after this pass (repeatable; `all` for every pass).
    #[arg(long = "print-after", value_name = "PASS")]
    print_after: Vec<String>,
    /// JSON file turning rewrite rules off by name: {"fuse_conv_activation": "off", ...}.
    #[arg(long = "fusion-switch", value_name = "FILE")]
    fusion_switch: Option<PathBuf>,
}

impl OptArgs {
    fn options(&self, target: &pipeline::TargetOpts) -> Result<OptOptions, String> {
        for p in &self.print_after {
            if p != "all"
                && !passes::PASS_NAMES.contains(&p.as_str())
                && !passes::rules().iter().any(|r| r.name == p)
            {
                return Err(format!(
                    "--print-after: unknown pass '{p}' (passes: {}, all)",
                    passes::PASS_NAMES.join(", ")
                ));
            }
        }
        let disabled = match &self.fusion_switch {
            Some(f) => {
                let text =
                    std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
                passes::parse_fusion_switch(&text).map_err(|e| format!("{}: {e}", f.display()))?
            }
            None => Default::default(),
        };
        Ok(OptOptions {
            level: self.opt,
            print_after: self.print_after.clone(),
            disabled,
            layout: target.layout_target().map_err(|e| e.to_string())?,
        })
    }

    /// Optimize `g` for `target`, printing `--print-after` dumps to stderr.
    fn optimize(
        &self,
        g: &mut kiln_ir::Graph,
        target: &pipeline::TargetOpts,
    ) -> Result<(), String> {
        let r = pipeline::optimize(g, &self.options(target)?).map_err(|e| e.to_string())?;
        for (pass, ir) in &r.printed {
            eprintln!("// ----- IR after {pass} -----");
            eprint!("{ir}");
        }
        Ok(())
    }
}

fn list_fusions() {
    let rules = passes::rules();
    let w = rules.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    println!("{:<w$} {:<10} description", "rule", "pass");
    for r in rules {
        println!("{:<w$} {:<10} {}", r.name, r.pass, r.about);
    }
    for (name, pass, about) in passes::SWITCHABLE_PASSES {
        println!("{name:<w$} {pass:<10} {about}");
    }
}

/// Which kernels the CPU back end generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kernels {
    /// LLVM-generated wide-vector kernels where they apply (convolutions), Cranelift elsewhere.
    Auto,
    /// Cranelift only (128-bit vectors on x86-64).
    Cranelift,
}

#[derive(clap::Args, Clone)]
struct CpuArgs {
    /// CPU the wide kernels are generated for: native (the host's, default for host builds),
    /// x86-64, x86-64-v2, x86-64-v3 (AVX2+FMA), x86-64-v4 (AVX-512), generic (aarch64 NEON), or
    /// a named micro-architecture (skylake-avx512, znver3, neoverse-n1, ...; an unknown name is
    /// an error listing them). An explicit --target defaults to the architecture's baseline.
    #[arg(long = "target-cpu")]
    target_cpu: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    kernels: Kernels,
    /// Register tiling of the wide convolution kernels (a tuning knob: `auto` picks per
    /// convolution from its shape).
    #[arg(long = "conv-schedule", value_enum, default_value = "auto")]
    conv_schedule: ConvScheduleArg,
}

/// `--conv-schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ConvScheduleArg {
    /// Per convolution, from its shape.
    Auto,
    /// Output pixels along the vector lanes.
    Pixels,
    /// Output channels along the vector lanes.
    Channels,
    /// Winograd F(2x2, 3x3) for every 3x3 stride-1 ungrouped convolution.
    Winograd,
}

impl CpuArgs {
    fn target(&self, triple: Option<String>) -> pipeline::TargetOpts {
        pipeline::TargetOpts {
            triple,
            cpu: self.target_cpu.clone(),
            wide: self.kernels == Kernels::Auto,
            conv_schedule: match self.conv_schedule {
                ConvScheduleArg::Auto => kiln_target_cpu::ConvSchedule::Auto,
                ConvScheduleArg::Pixels => kiln_target_cpu::ConvSchedule::Pixels,
                ConvScheduleArg::Channels => kiln_target_cpu::ConvSchedule::Channels,
                ConvScheduleArg::Winograd => kiln_target_cpu::ConvSchedule::Winograd,
            },
        }
    }
}

/// `--gpu-arch` / `--gpu-precision`: the GPU back end (`--target nvptx64-nvidia-cuda`,
/// `kiln run --device cuda|cuda-emulated`).
#[derive(clap::Args, Clone)]
struct GpuArgs {
    /// NVIDIA architecture the PTX (and cubin) is for.
    #[arg(long = "gpu-arch", default_value = "sm_80",
          value_parser = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"])]
    gpu_arch: String,
    /// Arithmetic of the GPU's dense products: fp32 (exact f32, default), tf32, fp16, bf16
    /// (tensor cores, f32 accumulation).
    #[arg(long = "gpu-precision", value_enum, default_value = "fp32")]
    gpu_precision: GpuPrecision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GpuPrecision {
    Fp32,
    Tf32,
    Fp16,
    Bf16,
}

impl GpuArgs {
    fn opts(&self) -> kiln_compiler::gpu::GpuOpts {
        use kiln_target_ptx::Precision as P;
        kiln_compiler::gpu::GpuOpts {
            sm: self.gpu_arch.clone(),
            ptx: None,
            precision: match self.gpu_precision {
                GpuPrecision::Fp32 => P::Fp32,
                GpuPrecision::Tf32 => P::Tf32,
                GpuPrecision::Fp16 => P::Fp16,
                GpuPrecision::Bf16 => P::Bf16,
            },
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile a model into a native artefact.
    Build {
        #[arg(required_unless_present = "list_fusions")]
        model: Option<PathBuf>,
        #[command(flatten)]
        opt: OptArgs,
        /// List the rewrite rules (names for --fusion-switch) and exit.
        #[arg(long = "list-fusions")]
        list_fusions: bool,
        /// Print the per-op report (as `kiln inspect`) of the optimized graph.
        #[arg(long)]
        report: bool,
        /// Output path (default: the model's name with the artefact's extension).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "so")]
        emit: Emit,
        /// Target triple (default: the host; nvptx64-nvidia-cuda: NVIDIA GPUs, --emit so|ptx).
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        cpu: CpuArgs,
        #[command(flatten)]
        gpu: GpuArgs,
        /// Symbol prefix of the artefact (`<name>_model`); default: the model file's stem.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Convert a model to another format: .onnx, .air (Ascend AIR), .kir (kiln IR). The output format
    /// is the output file's extension; the graph is written before any back-end rewrite.
    ///
    /// Examples:
    ///   kiln convert resnet18.onnx -o resnet18.air
    ///   kiln convert model.air -o model.onnx
    ///   kiln convert lenet.mindir --weights lenet.ckpt -o lenet.air
    ///   kiln convert model.air -o model.kir -O1
    Convert {
        input: PathBuf,
        /// Output file; its extension picks the format.
        #[arg(short, long)]
        output: PathBuf,
        /// Optimization before writing: -O0 (default) the graph as read, -O1 constant folding
        /// and cleanup, -O2 also fusions (no back-end layouts).
        #[arg(short = 'O', default_value = "0", value_name = "LEVEL")]
        opt: OptLevel,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run the ONNX backend test suites through the compiled CPU path and print the per-op
    /// coverage table (needs onnx==1.22.0's test data: scripts/setup-python.sh).
    Conformance {
        /// `onnx/backend/test/data` (default: the project's .venv, or $KILN_ONNX_DATA_DIR).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Suites to run (default: all): node, pytorch-converted, pytorch-operator, simple, light.
        #[arg(long = "suite")]
        suites: Vec<String>,
        /// Run one case directory (or light_*.onnx file) and print its result.
        #[arg(long)]
        case: Option<PathBuf>,
        /// Also write the coverage as Markdown (docs/ops.md).
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Compile a model in memory and run it on .npy inputs; writes <output>.npy files.
    Run {
        model: PathBuf,
        #[command(flatten)]
        opt: OptArgs,
        /// NAME=FILE.npy (repeatable), or FILE.npy for inputs in order.
        #[arg(long = "input")]
        inputs: Vec<String>,
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
        /// Where to run: the CPU, an NVIDIA GPU (cuda), or the GPU kernels emulated on the host.
        #[arg(long, value_enum, default_value = "cpu")]
        device: kiln_compiler::gpu::Device,
        #[command(flatten)]
        cpu: CpuArgs,
        #[command(flatten)]
        gpu: GpuArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Describe a file: a checkpoint (.ckpt, .safetensors) lists its parameters (name, dtype,
    /// shape, bytes) and totals; a .mindir/.air model its inputs, outputs and op histogram; an
    /// .om file its header, partitions and graph; an .onnx/.kir model (or a .mindir/.air/.om
    /// with --report) the per-op table after optimization: op, output shape, FLOPs, fused
    /// epilogue, buffer offset, and the planned workspace.
    Inspect {
        file: PathBuf,
        #[command(flatten)]
        opt: OptArgs,
        /// For .mindir/.air/.om: the optimized per-op table instead of the file summary.
        #[arg(long)]
        report: bool,
        #[arg(long = "input-shape", value_parser = pipeline::parse_input_shape)]
        input_shapes: Vec<(String, Vec<usize>)>,
        #[arg(long = "decrypt-key-file")]
        decrypt_key_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Build {
            model,
            opt,
            list_fusions: list,
            report,
            output,
            emit,
            target,
            cpu,
            gpu,
            name,
            load: largs,
        } => {
            if list {
                list_fusions();
                return Ok(());
            }
            let model = model.ok_or("a model file is required")?;
            let mut g = load(&model, largs)?;
            let target = cpu.target(target);
            opt.optimize(&mut g, &target)?;
            if report {
                eprint!("{}", kiln_compiler::inspect::table(&g));
            }
            let name = name.unwrap_or_else(|| pipeline::default_name(&model));
            let out = output.unwrap_or_else(|| {
                let ext = emit.default_extension();
                let base = if emit == Emit::So || emit == Emit::Staticlib {
                    format!("lib{name}")
                } else {
                    name.clone()
                };
                PathBuf::from(if ext.is_empty() {
                    base
                } else {
                    format!("{base}.{ext}")
                })
            });
            if kiln_compiler::gpu::is_gpu(target.triple.as_deref()) {
                kiln_compiler::gpu::emit(&g, emit, &out, &name, &gpu.opts())
            } else {
                pipeline::emit(&g, emit, &out, &name, &target)
            }
            .map_err(|e| e.to_string())?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Conformance {
            data,
            suites,
            case,
            markdown,
        } => conformance(data, suites, case, markdown),
        Cmd::Convert {
            input,
            output,
            opt,
            load: largs,
        } => {
            let mut g = load(&input, largs)?;
            // the graph as a format carries it: no back-end layouts
            let opts = OptOptions {
                level: opt,
                ..Default::default()
            };
            pipeline::optimize(&mut g, &opts).map_err(|e| e.to_string())?;
            pipeline::write_model(&g, &output).map_err(|e| e.to_string())?;
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Cmd::Run {
            model,
            opt,
            inputs,
            output_dir,
            device,
            cpu,
            gpu,
            load: largs,
        } => {
            use kiln_compiler::gpu::Device;
            let mut g = load(&model, largs)?;
            let on_gpu = device != Device::Cpu;
            let target = cpu.target(on_gpu.then(|| kiln_compiler::gpu::TRIPLE.to_string()));
            opt.optimize(&mut g, &target)?;
            if on_gpu {
                let name = pipeline::default_name(&model);
                for p in kiln_compiler::gpu::run_files(
                    &g,
                    &name,
                    &gpu.opts(),
                    device,
                    &inputs,
                    &output_dir,
                )? {
                    eprintln!("wrote {}", p.display());
                }
                return Ok(());
            }
            run(&model, g, &inputs, &output_dir, &target)
        }
        Cmd::Inspect {
            file,
            opt,
            report,
            input_shapes,
            decrypt_key_file,
        } => {
            let ext = file
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if matches!(ext.as_str(), "onnx" | "kir")
                || (report && matches!(ext.as_str(), "mindir" | "air" | "om"))
            {
                let largs = LoadArgs {
                    input_shapes,
                    decrypt_key_file: decrypt_key_file.clone(),
                    ..LoadArgs::default()
                };
                let mut g = load(&file, largs)?;
                opt.optimize(&mut g, &pipeline::TargetOpts::default())?;
                print!("{}", kiln_compiler::inspect::table(&g));
                return Ok(());
            }
            inspect(&file, decrypt_key_file.as_deref())
        }
    }
}

/// Load, bind `--weights`, print the binding's notes and warnings.
fn load(model: &Path, a: LoadArgs) -> Result<kiln_ir::Graph, String> {
    let key = DecryptKey::from_file_or_env(a.decrypt_key_file.as_deref())?;
    let l = pipeline::load_with(
        model,
        &LoadOptions {
            input_shapes: a.input_shapes,
            frozen_inputs: a.frozen,
        },
        &ExtraOptions {
            weights: a.weights,
            key,
        },
    )
    .map_err(|e| e.to_string())?;
    for m in &l.messages {
        eprintln!("{m}");
    }
    Ok(l.graph)
}

fn inspect(file: &Path, key_file: Option<&Path>) -> Result<(), String> {
    let key = DecryptKey::from_file_or_env(key_file)?;
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = match ext.as_str() {
        "ckpt" | "safetensors" => mindspore::ckpt::read(file, key.as_ref())
            .map_err(|e| e.to_string())?
            .summary(),
        "mindir" => {
            let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let m =
                mindspore::mindir::decode(bytes.into(), &file.display().to_string(), key.as_ref())
                    .map_err(|e| e.to_string())?;
            mindspore::mindir::describe(&m)
        }
        "air" => kiln_compiler::air::describe(
            &kiln_compiler::air::read(file).map_err(|e| e.to_string())?,
        ),
        "om" => kiln_compiler::om::describe(
            &kiln_compiler::om::read(file).map_err(|e| e.to_string())?,
            &file.display().to_string(),
        ),
        _ => {
            return Err(format!(
                "{}: inspect supports .onnx, .kir, .mindir, .air, .om, .ckpt and .safetensors files",
                file.display()
            ));
        }
    };
    print!("{text}");
    Ok(())
}

fn conformance(
    data: Option<PathBuf>,
    suites: Vec<String>,
    case: Option<PathBuf>,
    markdown: Option<PathBuf>,
) -> Result<(), String> {
    use kiln_compiler::conformance as cf;
    if let Some(c) = case {
        let r = if c.is_dir() {
            cf::run_dir_case(&c)
        } else {
            cf::run_light_case(&c)
        };
        println!("{}\t{}", r.name, r.outcome.line());
        return Ok(());
    }
    let data = match data {
        Some(d) => d,
        None => std::env::current_dir()
            .ok()
            .and_then(|d| cf::data_dir(&d))
            .ok_or("ONNX backend test data not found: pass --data DIR (onnx/backend/test/data)")?,
    };
    let suites: Vec<String> = if suites.is_empty() {
        cf::SUITES.iter().map(|s| s.to_string()).collect()
    } else {
        suites
    };
    let mut all = Vec::new();
    for s in &suites {
        if !cf::SUITES.contains(&s.as_str()) {
            return Err(format!(
                "unknown suite '{s}' (known: {})",
                cf::SUITES.join(", ")
            ));
        }
        let res = cf::run_suite(&data, s);
        all.push((s.clone(), res));
    }
    if let Some((_, node)) = all.iter().find(|(n, _)| n == "node") {
        print!("{}", cf::coverage_table(&cf::coverage(node)));
        println!();
    }
    println!(
        "{:<18} {:>6} {:>6} {:>6} {:>12}",
        "suite", "cases", "pass", "fail", "unsupported"
    );
    for (name, res) in &all {
        let (n, p, f, u) = cf::totals(res);
        println!("{name:<18} {n:>6} {p:>6} {f:>6} {u:>12}");
    }
    if let Some(md) = markdown {
        kiln_target_cpu::link::write_atomic(&md, cf::ops_markdown(&all).as_bytes())
            .map_err(|e| format!("{}: {e}", md.display()))?;
        eprintln!("wrote {}", md.display());
    }
    Ok(())
}

fn run(
    model: &Path,
    g: kiln_ir::Graph,
    inputs: &[String],
    out_dir: &Path,
    target: &pipeline::TargetOpts,
) -> Result<(), String> {
    let name = pipeline::default_name(model);
    let jit = kiln_target_cpu::compile_jit_with(&g, &target.cpu_options(&name, false))
        .map_err(|e| e.to_string())?;
    // SAFETY: the descriptor was just generated by the back end and lives as long as `jit`.
    let m = unsafe {
        kiln_runtime::Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel)
    }
    .map_err(|e| e.to_string())?;
    let infos = m.inputs();
    if inputs.len() != infos.len() {
        return Err(format!(
            "model has {} inputs ({}), {} given",
            infos.len(),
            infos
                .iter()
                .map(|i| i.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            inputs.len()
        ));
    }
    let mut data: Vec<Vec<u8>> = vec![Vec::new(); infos.len()];
    for (k, spec) in inputs.iter().enumerate() {
        let (idx, file) = match spec.split_once('=') {
            Some((n, f)) if infos.iter().any(|i| i.name == n) => {
                (infos.iter().position(|i| i.name == n).unwrap(), f)
            }
            Some((n, _)) if !Path::new(spec).exists() => {
                return Err(format!("model has no input named '{n}'"));
            }
            _ => (k, spec.as_str()),
        };
        let arr = kiln_runtime::npy::read(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
        let info = &infos[idx];
        if arr.dtype != info.dtype
            || arr.shape.iter().map(|&d| d as i64).collect::<Vec<_>>() != info.dims
        {
            return Err(format!(
                "{file}: input '{}' expects {} {:?}, file holds {} {:?}",
                info.name,
                kiln_runtime::dtype_name(info.dtype).unwrap_or("?"),
                info.dims,
                kiln_runtime::dtype_name(arr.dtype).unwrap_or("?"),
                arr.shape
            ));
        }
        data[idx] = arr.data;
    }
    let outs_info = m.outputs();
    let mut outs: Vec<Vec<u8>> = outs_info.iter().map(|o| vec![0u8; o.nbytes]).collect();
    let mut ws = kiln_runtime::Workspace::new(m.workspace_size(), m.workspace_align())
        .map_err(|e| e.to_string())?;
    let ins: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let mut outs_ref: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    m.run(&ins, &mut outs_ref, &mut ws)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for (o, bytes) in outs_info.iter().zip(&outs) {
        let fname: String = o
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = out_dir.join(format!("{fname}.npy"));
        let shape: Vec<usize> = o.dims.iter().map(|&d| d as usize).collect();
        let arr = kiln_runtime::npy::Npy {
            dtype: o.dtype,
            shape,
            data: bytes.clone(),
        };
        kiln_runtime::npy::write(&path, &arr).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
