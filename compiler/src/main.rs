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
    version = version_line(),
    about = "Ahead-of-time compiler for neural-network models",
    after_help = "Examples:
  kiln build model.onnx --emit so -o libmodel.so          shared library (also: obj, staticlib, exe, header, ir, pc)
  kiln build model.onnx --emit staticlib,header,pc -o out/ several artefacts into a directory
  kiln build model.onnx --target aarch64-unknown-linux-gnu --emit exe   cross-compile
  kiln run model.onnx --input x=image.npy --profile       run in memory, per-node times
  kiln inspect model.onnx --html report.html              op table, memory plan, profile
  kiln completions bash > ~/.local/share/bash-completion/completions/kiln"
)]
struct Cli {
    /// No progress bars and no 'wrote FILE' notes (errors and warnings still go to stderr).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `kiln --version`: the version, the LLVM the vector kernels are built with, the
/// architectures code is generated for, and the artefact ABI.
fn version_line() -> &'static str {
    let targets: Vec<String> = kiln_target_cpu::enabled_targets()
        .into_iter()
        .map(|(arch, gens)| format!("{arch} ({})", gens.join(" + ")))
        .collect();
    Box::leak(
        format!(
            "{}\nLLVM {}\ntargets: {}\nartefact ABI: {}",
            env!("CARGO_PKG_VERSION"),
            kiln_target_cpu::llvm_version(),
            targets.join(", "),
            kiln_runtime::KILN_ABI_VERSION
        )
        .into_boxed_str(),
    )
}

/// `--quiet`: no progress bars, no notes.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An informational line on stderr (`wrote FILE`), unless `--quiet`.
fn note(line: &str) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{line}");
    }
}

fn bars() -> kiln_compiler::progress::Bars {
    kiln_compiler::progress::Bars::new(!QUIET.load(std::sync::atomic::Ordering::Relaxed))
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
            progress: None,
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

/// `kiln build --emit om` options.
#[derive(Args, Clone, Default)]
struct OmArgs {
    /// Ascend SoC written into the OM header and the atc command: Ascend310, Ascend310P3,
    /// Ascend910.
    #[arg(long = "soc-version", default_value = "Ascend310")]
    soc_version: kiln_target_om::SocVersion,
    /// ATC's --precision_mode: force_fp16 (default), allow_fp32_to_fp16,
    /// must_keep_origin_dtype, allow_mix_precision.
    #[arg(long = "precision-mode", default_value = "force_fp16")]
    precision_mode: kiln_target_om::precision::PrecisionMode,
    /// Also write kiln's AIR, ATC's option files (fusion switch, AIPP, mix list) and the exact
    /// atc command (atc.sh) into DIR.
    #[arg(long = "atc-config", value_name = "DIR")]
    atc_config: Option<PathBuf>,
    /// Preprocessing for ATC's AIPP: mean=R:G:B,std=R:G:B,format=RGB888_U8|YUV420SP_U8.
    #[arg(long)]
    aipp: Option<kiln_target_om::atc::Aipp>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile a model into a native artefact.
    #[command(after_help = "Examples:
  kiln build resnet18.onnx                                 libresnet18.so in the current directory
  kiln build det.onnx --input-shape x=1,3,640,640 --emit exe -o det
  kiln build m.onnx --emit staticlib,header,pc -o build/   liba.a + m.h + m.pc for pkg-config
  kiln build m.onnx --target aarch64-unknown-linux-gnu --emit so   (needs gcc-aarch64-linux-gnu)
  kiln build m.onnx -O1 --print-after fold --report")]
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
        /// Output path (default: the model's name with the artefact's extension); a directory
        /// when several --emit kinds are given.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// What to write; several (comma-separated: staticlib,header,pc) go into one directory
        /// under their default names.
        #[arg(long, value_enum, default_value = "so", value_delimiter = ',')]
        emit: Vec<Emit>,
        /// Target triple (default: the host; nvptx64-nvidia-cuda: NVIDIA GPUs, --emit so|ptx|ir).
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
        #[command(flatten)]
        om: OmArgs,
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
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Print a shell completion script: `kiln completions bash > /etc/bash_completion.d/kiln`
    /// (zsh: into a directory on $fpath as `_kiln`; fish:
    /// ~/.config/fish/completions/kiln.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(after_help = "Examples:
  kiln inspect resnet18.onnx                               the per-op table and memory totals
  kiln inspect m.onnx --dot | dot -Tsvg > m.svg            the optimized graph (--dot-stage before: as loaded)
  kiln run m.onnx --input x=x.npy --profile-json t.json && kiln inspect m.onnx --html r.html --profile t.json
  kiln inspect trained.ckpt                                parameters of a checkpoint")]
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
        #[command(flatten)]
        pictures: PictureArgs,
    },
}

/// `kiln inspect` pictures.
#[derive(Args, Clone, Default)]
struct PictureArgs {
    /// Print the graph as Graphviz text (`kiln inspect m.onnx --dot | dot -Tsvg > m.svg`):
    /// fused nodes filled orange with their steps, channel-blocked values and relayouts blue.
    #[arg(long)]
    dot: bool,
    /// Which graph --dot draws: as loaded (`before` the passes) or optimized (`after`).
    #[arg(long = "dot-stage", value_enum, default_value = "after")]
    dot_stage: DotStage,
    /// Write an HTML report: totals, the op table, the memory plan as a timeline (SVG), and
    /// the per-node profile given with --profile.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// A Chrome trace from `kiln run --profile-json` or an executable's --profile-json, shown
    /// in the HTML report.
    #[arg(long, value_name = "TRACE.json", requires = "html")]
    profile: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum DotStage {
    Before,
    #[default]
    After,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
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
            om,
        } => {
            if list {
                list_fusions();
                return Ok(());
            }
            let model = model.ok_or("a model file is required")?;
            let bars = bars();
            let mut g = {
                let _p = bars.phase("load");
                load(&model, largs)?
            };
            if emit.contains(&Emit::Om) {
                if emit.iter().any(|e| *e != Emit::Om) {
                    return Err("--emit om builds an Ascend OM from the graph: it does not combine with other --emit kinds (run kiln build once per back end)".into());
                }
                return build_om(&model, &g, &opt, output, name, om);
            }
            let mut target = cpu.target(target);
            {
                let _p = bars.phase("optimize");
                opt.optimize(&mut g, &target)?;
            }
            if report {
                eprint!("{}", kiln_compiler::inspect::table(&g));
            }
            target.progress = bars.backend();
            let name = name.unwrap_or_else(|| pipeline::default_name(&model));
            let mut emit = emit;
            emit.dedup();
            let outs: Vec<PathBuf> = match (output, emit.len()) {
                (Some(o), 1) => vec![o],
                (dir, _) => {
                    let dir = dir.unwrap_or_default();
                    if emit.len() > 1 && !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(&dir)
                            .map_err(|e| format!("{}: {e}", dir.display()))?;
                    }
                    emit.iter()
                        .map(|e| dir.join(e.default_output(&name)))
                        .collect()
                }
            };
            let on_gpu = kiln_compiler::gpu::is_gpu(target.triple.as_deref());
            for (kind, out) in emit.iter().zip(&outs) {
                if on_gpu {
                    kiln_compiler::gpu::emit(&g, *kind, out, &name, &gpu.opts())
                } else {
                    pipeline::emit(&g, *kind, out, &name, &target)
                }
                .map_err(|e| e.to_string())?;
                bars.println(&format!("wrote {}", out.display()));
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
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
            note(&format!("wrote {}", output.display()));
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
            profile,
        } => {
            use kiln_compiler::gpu::Device;
            let bars = bars();
            let mut g = {
                let _p = bars.phase("load");
                load(&model, largs)?
            };
            let on_gpu = device != Device::Cpu;
            let mut target = cpu.target(on_gpu.then(|| kiln_compiler::gpu::TRIPLE.to_string()));
            {
                let _p = bars.phase("optimize");
                opt.optimize(&mut g, &target)?;
            }
            if on_gpu {
                if profile.profile || profile.profile_json.is_some() {
                    return Err("--profile times the CPU back end's schedule: it does not apply to --device cuda or cuda-emulated".into());
                }
                let name = pipeline::default_name(&model);
                for p in kiln_compiler::gpu::run_files(
                    &g,
                    &name,
                    &gpu.opts(),
                    device,
                    &inputs,
                    &output_dir,
                )? {
                    bars.println(&format!("wrote {}", p.display()));
                }
                return Ok(());
            }
            target.progress = bars.backend();
            run(&model, g, &inputs, &output_dir, &target, &profile)
        }
        Cmd::Inspect {
            file,
            opt,
            report,
            input_shapes,
            decrypt_key_file,
            pictures,
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
                let title = pipeline::default_name(&file);
                if pictures.dot && pictures.dot_stage == DotStage::Before {
                    print!("{}", kiln_compiler::report::dot(&g, &title));
                    return Ok(());
                }
                opt.optimize(&mut g, &pipeline::TargetOpts::default())?;
                if pictures.dot {
                    print!("{}", kiln_compiler::report::dot(&g, &title));
                } else if let Some(html) = &pictures.html {
                    let profile = match &pictures.profile {
                        Some(p) => Some(
                            std::fs::read_to_string(p)
                                .map_err(|e| e.to_string())
                                .and_then(|t| kiln_compiler::report::read_trace(&t))
                                .map_err(|e| format!("{}: {e}", p.display()))?,
                        ),
                        None => None,
                    };
                    let page = kiln_compiler::report::html(&g, &title, profile.as_ref())?;
                    kiln_target_cpu::link::write_atomic(html, page.as_bytes())
                        .map_err(|e| e.to_string())?;
                    note(&format!("wrote {}", html.display()));
                } else {
                    print!("{}", kiln_compiler::inspect::table(&g));
                }
                return Ok(());
            }
            inspect(&file, decrypt_key_file.as_deref())
        }
    }
}

/// `kiln build --emit om`: the OM, and with --atc-config the AIR, ATC's option files and command.
fn build_om(
    model: &Path,
    g: &kiln_ir::Graph,
    opt: &OptArgs,
    output: Option<PathBuf>,
    name: Option<String>,
    om: OmArgs,
) -> Result<(), String> {
    let name = name.unwrap_or_else(|| pipeline::default_name(model));
    let out = output.unwrap_or_else(|| PathBuf::from(format!("{name}.om")));
    let mut opts = opt.options(&pipeline::TargetOpts::default())?;
    opts.layout = None;
    let b = pipeline::OmBuild {
        soc: om.soc_version,
        precision: om.precision_mode,
        opt: opts,
        atc_config: om.atc_config.clone(),
        aipp: om.aipp,
    };
    let r = pipeline::emit_om(g, &out, &name, &b).map_err(|e| e.to_string())?;
    let by_format: Vec<String> = r
        .weights_by_format
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    eprintln!(
        "wrote {}: {} bytes, weights {} bytes ({}), feature-map memory {} bytes, {} ops",
        out.display(),
        r.file_bytes,
        r.weight_size,
        by_format.join(", "),
        r.memory_size,
        r.ops.values().sum::<usize>()
    );
    if let Some(d) = &om.atc_config {
        eprintln!("wrote ATC options and atc.sh to {}", d.display());
    }
    Ok(())
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
        note(&format!("wrote {}", md.display()));
    }
    Ok(())
}

/// `kiln run` profiling and threads.
#[derive(Args, Clone, Default)]
struct ProfileArgs {
    /// Split convolutions and matrix products over N threads.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Print each schedule step's time (ms, %, GFLOP/s), slowest first, over --profile-runs
    /// runs after the normal one.
    #[arg(long)]
    profile: bool,
    /// Write the profiled runs as a Chrome trace (chrome://tracing, Perfetto; the format of
    /// ONNX Runtime's profiler) to FILE.
    #[arg(long = "profile-json", value_name = "FILE")]
    profile_json: Option<PathBuf>,
    /// Number of profiled runs.
    #[arg(long = "profile-runs", default_value = "10", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    profile_runs: u32,
}

fn run(
    model: &Path,
    g: kiln_ir::Graph,
    inputs: &[String],
    out_dir: &Path,
    target: &pipeline::TargetOpts,
    prof: &ProfileArgs,
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
    let mdisp = model.display();
    let mut outs = m.output_buffers().map_err(|e| format!("{mdisp}: {e}"))?;
    let mut ws = kiln_runtime::Workspace::new(m.workspace_size(), m.workspace_align())
        .map_err(|e| format!("{mdisp}: {e}"))?;
    let ins: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let mut outs_ref: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    let pool = match prof.threads {
        1 => None,
        n => Some(
            kiln_runtime::ThreadPool::new(n as usize)
                .map_err(|e| format!("cannot start {n} threads: {e}"))?,
        ),
    };
    m.run_pool(&ins, &mut outs_ref, &mut ws, pool.as_ref())
        .map_err(|e| match e {
            kiln_runtime::Error::Status(s) => {
                let nodes = kiln_target_cpu::nodes_raising(&g, s);
                format!(
                    "{mdisp}: {e}{}",
                    if nodes.is_empty() {
                        String::new()
                    } else {
                        format!(" in one of: {}", nodes.join(", "))
                    }
                )
            }
            e => format!("{mdisp}: {e}"),
        })?;
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
        note(&format!("wrote {}", path.display()));
    }
    if prof.profile || prof.profile_json.is_some() {
        let mut p = m.new_profile();
        let mut outs_ref: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        for _ in 0..prof.profile_runs {
            m.run_profiled(&ins, &mut outs_ref, &mut ws, pool.as_ref(), &mut p)
                .map_err(|e| e.to_string())?;
        }
        if prof.profile {
            print!("{}", p.table());
        }
        if let Some(path) = &prof.profile_json {
            kiln_target_cpu::link::write_atomic(path, p.chrome_trace().as_bytes())
                .map_err(|e| e.to_string())?;
            note(&format!("wrote {}", path.display()));
        }
    }
    Ok(())
}
