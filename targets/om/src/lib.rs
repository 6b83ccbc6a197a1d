//! kiln's Ascend back end: GraphEngine model definitions and offline models (`.om`).
//!
//! - [`ge`]: any kiln graph -> a GraphEngine `ModelDef`, as an `.air` file's (MindSpore's
//!   exporter style) or as an offline model's compiled graph (device formats, `TransData`,
//!   `NetOutput`, per-node fp16); the one IR -> GE op mapping.
//! - [`ascend`]: the [`kiln_ir::layout::LayoutTarget`] of the AI Core (NC1HWC0 activations,
//!   FRACTAL_Z filters, FRACTAL_NZ matrices) for the compiler's `layout` pass.
//! - [`precision`]: ATC's `--precision_mode`s as a per-node fp16 choice.
//! - [`om`]: the offline model: WEIGHTS_DATA (deduplicated, 512-aligned), GE's static memory
//!   plan, model attributes, TASK_INFO, and the container (header, partition table).
//! - [`atc`]: the option files and the `atc` command a CANN user runs on kiln's AIR.
//!
//! kiln's OM carries the graph, the device-layout weights and the memory plan. The AI Core
//! kernels (TBE_KERNELS) and their launch tasks (TASK_INFO's tasks) are produced by CANN's ATC,
//! so an OM the NPU executes is made by `atc` from the AIR kiln writes plus the option files.
//!
//! Depends on `kiln-ir` only; does no file IO (callers write the bytes atomically).

pub mod ascend;
pub mod atc;
pub mod ge;
pub mod names;
pub mod om;
pub mod precision;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    //! Rust types generated from `proto/ge_ir.proto` (`bytes` fields are `bytes::Bytes`:
    //! weights stay windows into the memory-mapped file).
    include!(concat!(env!("OUT_DIR"), "/ge.proto.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod task {
    //! `domi.ModelTaskDef` (`proto/task.proto`), the TASK_INFO partition.
    include!(concat!(env!("OUT_DIR"), "/domi.rs"));
}

/// Ascend SoCs whose names kiln writes into an OM header and the `atc` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocVersion {
    #[default]
    Ascend310,
    Ascend310P3,
    Ascend910,
}

impl SocVersion {
    pub const ALL: [SocVersion; 3] = [
        SocVersion::Ascend310,
        SocVersion::Ascend310P3,
        SocVersion::Ascend910,
    ];
    pub fn name(self) -> &'static str {
        match self {
            SocVersion::Ascend310 => "Ascend310",
            SocVersion::Ascend310P3 => "Ascend310P3",
            SocVersion::Ascend910 => "Ascend910",
        }
    }
    /// GE's `target_type` model attribute (the inference SoCs are "MINI").
    pub fn target_type(self) -> &'static str {
        match self {
            SocVersion::Ascend910 => "CLOUD",
            _ => "MINI",
        }
    }
}

impl std::str::FromStr for SocVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SocVersion::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown SoC version '{s}' (Ascend310, Ascend310P3, Ascend910)"))
    }
}
