//! What LLVM generates code for: a triple, an LLVM CPU name and feature string, and the vector
//! shape kernels are blocked for. The CPU is chosen explicitly (`--target-cpu`, a GPU's
//! `sm_XX`), never taken from the build machine unless asked (`native`, the default for host
//! builds).

use inkwell::OptimizationLevel;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};

use crate::LlvmError;

/// The NVIDIA GPU triple (PTX through LLVM's NVPTX back end).
pub const NVPTX_TRIPLE: &str = "nvptx64-nvidia-cuda";

/// A code generation target: triple, CPU, features, and the vector shape kernels use.
#[derive(Debug, Clone, PartialEq)]
pub struct LlvmTarget {
    pub triple: String,
    /// An LLVM CPU name (`znver3`, `cortex-a72`, `sm_80`).
    pub cpu: String,
    /// LLVM feature string (`+avx2,+fma,...` for the host; `+ptx70` for NVPTX).
    pub features: String,
    /// f32 lanes of one vector register (16 AVX-512, 8 AVX2, 4 SSE/NEON; 4 on NVPTX, a
    /// thread's widest load and store, `ld.v4.f32`: its arithmetic is scalar).
    pub lanes: usize,
    /// Architectural vector registers (32 AVX-512/NEON, 16 otherwise; on NVPTX the 255
    /// registers a thread may use, counted in vectors of `lanes`: 63).
    pub regs: usize,
}

pub(crate) fn init_targets() {
    let cfg = InitializationConfig::default();
    Target::initialize_x86(&cfg);
    Target::initialize_aarch64(&cfg);
    Target::initialize_nvptx(&cfg);
}

/// The host's triple as LLVM spells it.
pub fn host_triple() -> String {
    TargetMachine::get_default_triple()
        .as_str()
        .to_string_lossy()
        .into_owned()
}

impl LlvmTarget {
    /// The target for `triple` (`None` = host) and `cpu`: [`Self::nvptx`] for
    /// [`NVPTX_TRIPLE`] (`cpu` an `sm_XX`, default `sm_80`), [`Self::cpu`] otherwise.
    pub fn new(triple: Option<&str>, cpu: Option<&str>) -> Result<LlvmTarget, LlvmError> {
        match triple.map(|t| t.split('-').next().unwrap_or("")) {
            Some("nvptx64") => LlvmTarget::nvptx(cpu.unwrap_or("sm_80"), None),
            Some(a) if !matches!(a, "x86_64" | "aarch64") => Err(LlvmError::Target(
                triple.unwrap_or_default().into(),
                "LLVM kernels support x86_64 and aarch64 CPUs and nvptx64-nvidia-cuda GPUs".into(),
            )),
            _ => LlvmTarget::cpu(triple, cpu),
        }
    }

    /// A CPU target for `triple` (`None` = host) and `cpu`: `native` (the default on the host;
    /// another architecture's default is its baseline) or one of [`X86_CPUS`] /
    /// [`AARCH64_CPUS`]. Any other name is an error (LLVM aborts the process on a CPU it does
    /// not know), and so is a triple other than x86_64 or aarch64.
    pub fn cpu(triple: Option<&str>, cpu: Option<&str>) -> Result<LlvmTarget, LlvmError> {
        init_targets();
        let host = host_triple();
        let triple_s = triple.map_or_else(|| host.clone(), str::to_string);
        let arch = triple_s.split('-').next().unwrap_or("").to_string();
        if !matches!(arch.as_str(), "x86_64" | "aarch64") {
            let gpu = if arch == "nvptx64" {
                " (nvptx64 is the GPU back end's)"
            } else {
                ""
            };
            return Err(LlvmError::Target(
                triple_s,
                format!("LLVM kernels support x86_64 and aarch64 CPUs{gpu}"),
            ));
        }
        let is_host = triple.is_none() || arch == host.split('-').next().unwrap_or("");
        let cpu = cpu.unwrap_or(if triple.is_none() { "native" } else { "" });
        let (cpu_name, features) = match (arch.as_str(), cpu) {
            (_, "native") if is_host => (
                TargetMachine::get_host_cpu_name().to_string(),
                TargetMachine::get_host_cpu_features().to_string(),
            ),
            (_, "native") => {
                return Err(LlvmError::Target(
                    triple_s,
                    "--target-cpu native needs the host architecture".into(),
                ));
            }
            ("x86_64", "") => ("x86-64".to_string(), String::new()),
            ("aarch64", "") => ("generic".to_string(), "+neon".to_string()),
            (a, c) => {
                let known = if a == "x86_64" {
                    X86_CPUS
                } else {
                    AARCH64_CPUS
                };
                if !known.iter().any(|(n, _)| *n == c) {
                    return Err(unknown_cpu(&triple_s, c, known.iter().map(|(n, _)| *n)));
                }
                (c.to_string(), String::new())
            }
        };
        let (lanes, regs) = if arch == "aarch64" {
            (4, 32)
        } else {
            // the host's feature string, or the vector features the CPU name implies
            let f = if features.is_empty() {
                X86_CPUS
                    .iter()
                    .find(|(n, _)| *n == cpu_name)
                    .map_or("", |(_, f)| *f)
            } else {
                features.as_str()
            };
            if f.contains("+avx512f") {
                (16, 32)
            } else if f.contains("+avx2") && f.contains("+fma") {
                (8, 16)
            } else {
                (4, 16)
            }
        };
        let t = LlvmTarget {
            triple: triple_s,
            cpu: cpu_name,
            features,
            lanes,
            regs,
        };
        t.machine()?; // validate the triple and CPU now
        Ok(t)
    }

    /// An NVIDIA GPU: `sm` one of [`NVPTX_SMS`], `ptx` the PTX ISA version times ten (`78` =
    /// PTX 7.8; `None` = the oldest that has `sm`, which the most drivers accept). LLVM 19
    /// knows PTX 3.2 to 8.5 ([`NVPTX_MAX_PTX`]).
    pub fn nvptx(sm: &str, ptx: Option<u32>) -> Result<LlvmTarget, LlvmError> {
        init_targets();
        let Some(&(_, min_ptx)) = NVPTX_SMS.iter().find(|(n, _)| *n == sm) else {
            return Err(unknown_cpu(
                NVPTX_TRIPLE,
                sm,
                NVPTX_SMS.iter().map(|(n, _)| *n),
            ));
        };
        let ptx = ptx.unwrap_or(min_ptx);
        if !(min_ptx..=NVPTX_MAX_PTX).contains(&ptx) || !NVPTX_PTX.contains(&ptx) {
            return Err(LlvmError::Target(
                NVPTX_TRIPLE.into(),
                format!(
                    "PTX {}.{} cannot target {sm} with LLVM 19 (from {}.{} to {}.{})",
                    ptx / 10,
                    ptx % 10,
                    min_ptx / 10,
                    min_ptx % 10,
                    NVPTX_MAX_PTX / 10,
                    NVPTX_MAX_PTX % 10
                ),
            ));
        }
        let t = LlvmTarget {
            triple: NVPTX_TRIPLE.into(),
            cpu: sm.into(),
            features: format!("+ptx{ptx}"),
            lanes: 4,
            regs: 63,
        };
        t.machine()?;
        Ok(t)
    }

    /// Whether this is the NVPTX (GPU) target.
    pub fn is_nvptx(&self) -> bool {
        self.triple.starts_with("nvptx")
    }

    /// Whether code for this target can run in this process (the JIT's condition).
    pub fn is_host(&self) -> bool {
        let host = host_triple();
        self.triple.split('-').next() == host.split('-').next()
    }

    /// An LLVM target machine for this target (optimizing, position-independent).
    pub fn machine(&self) -> Result<TargetMachine, LlvmError> {
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple)
            .map_err(|e| LlvmError::Target(self.triple.clone(), e.to_string()))?;
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                OptimizationLevel::Aggressive,
                RelocMode::PIC,
                CodeModel::Default,
            )
            .ok_or_else(|| {
                LlvmError::Target(
                    self.triple.clone(),
                    format!("LLVM cannot target CPU '{}'", self.cpu),
                )
            })
    }

    /// Function attributes every function carries (`attributes #N = { .. }`), so that MCJIT
    /// (which ignores the target machine's CPU) generates the same code as the object path.
    pub fn fn_attributes(&self) -> String {
        let mut a = format!("nounwind \"target-cpu\"=\"{}\"", self.cpu);
        if !self.features.is_empty() {
            a += &format!(" \"target-features\"=\"{}\"", self.features);
        }
        if !self.is_nvptx() {
            let bits = self.lanes * 32;
            a += &format!(
                " \"min-legal-vector-width\"=\"{bits}\" \"prefer-vector-width\"=\"{bits}\""
            );
        }
        a
    }
}

fn unknown_cpu<'a>(triple: &str, cpu: &str, known: impl Iterator<Item = &'a str>) -> LlvmError {
    let names: Vec<&str> = known.collect();
    let native = if triple.starts_with("nvptx") {
        ""
    } else {
        "native, "
    };
    LlvmError::Target(
        triple.into(),
        format!(
            "unknown --target-cpu '{cpu}' (known: {native}{})",
            names.join(", ")
        ),
    )
}

const AVX2: &str = "+avx2,+fma";
const AVX512: &str = "+avx512f,+avx2,+fma";

/// The x86-64 CPU names `--target-cpu` accepts (all known to LLVM 19) and the vector features
/// that choose the kernels' width (LLVM itself derives the full feature set from the name).
pub const X86_CPUS: &[(&str, &str)] = &[
    ("x86-64", ""),
    ("x86-64-v2", ""),
    ("x86-64-v3", AVX2),
    ("x86-64-v4", AVX512),
    ("haswell", AVX2),
    ("broadwell", AVX2),
    ("skylake", AVX2),
    ("alderlake", AVX2),
    ("znver1", AVX2),
    ("znver2", AVX2),
    ("znver3", AVX2),
    ("znver4", AVX512),
    ("skylake-avx512", AVX512),
    ("cascadelake", AVX512),
    ("icelake-client", AVX512),
    ("icelake-server", AVX512),
    ("tigerlake", AVX512),
    ("sapphirerapids", AVX512),
];

/// The aarch64 CPU names `--target-cpu` accepts (NEON, 4 lanes, for all of them).
pub const AARCH64_CPUS: &[(&str, &str)] = &[
    ("generic", ""),
    ("cortex-a53", ""),
    ("cortex-a55", ""),
    ("cortex-a72", ""),
    ("cortex-a76", ""),
    ("neoverse-n1", ""),
    ("neoverse-v1", ""),
    ("neoverse-v2", ""),
    ("apple-a14", ""),
];

/// The NVIDIA architectures LLVM 19's NVPTX back end knows from Volta on, with the oldest PTX
/// ISA version (times ten) that has each.
pub const NVPTX_SMS: &[(&str, u32)] = &[
    ("sm_70", 60),
    ("sm_72", 61),
    ("sm_75", 63),
    ("sm_80", 70),
    ("sm_86", 71),
    ("sm_87", 74),
    ("sm_89", 78),
    ("sm_90", 78),
    ("sm_90a", 80),
];

/// The PTX ISA versions (times ten) LLVM 19 can write from PTX 6.0 on.
const NVPTX_PTX: &[u32] = &[
    60, 61, 62, 63, 64, 65, 70, 71, 72, 73, 74, 75, 76, 77, 78, 80, 81, 82, 83, 84, 85,
];

/// The newest PTX ISA version LLVM 19 writes (8.5).
pub const NVPTX_MAX_PTX: u32 = 85;
