//! What a CANN user needs to turn kiln's AIR into an OM the NPU executes: the option files of
//! ATC (`--fusion_switch_file`, `--insert_op_conf`, `--modify_mixlist`) and the exact `atc`
//! command line. kiln's own OM carries the graph, device-layout weights and memory plan, but
//! the AI Core kernels (TBE_KERNELS) and launch tasks (TASK_INFO) only ATC can produce.

use std::collections::BTreeSet;

use crate::SocVersion;
use crate::precision::{KEEP_FP32, PrecisionMode};

/// kiln rewrite rules and the GraphEngine fusion passes that do the same rewrite (pass names
/// from CANN's "Graph Fusion and UB Fusion Patterns" reference): (kiln rule, section, GE pass).
/// A kiln rule turned off turns its GE passes off.
pub const FUSION_PASSES: &[(&str, &str, &str)] = &[
    (
        "fold_batchnorm_into_conv",
        "GraphFusion",
        "ConvBatchnormFusionPass",
    ),
    (
        "fold_mul_add_into_conv",
        "GraphFusion",
        "ConvScaleFusionPass",
    ),
    ("fuse_matmul_add", "GraphFusion", "MatMulBiasAddFusionPass"),
    ("recognize_softmax", "GraphFusion", "SoftmaxFusionPass"),
    (
        "fuse_conv_activation",
        "UBFusion",
        "TbeConvElemwiseFusionPass",
    ),
    (
        "fuse_conv_residual",
        "UBFusion",
        "TbeConvElemwiseFusionPass",
    ),
    (
        "fuse_matmul_activation",
        "UBFusion",
        "TbeMatmulElemwiseFusionPass",
    ),
    (
        "fuse_gemm_activation",
        "UBFusion",
        "TbeMatmulElemwiseFusionPass",
    ),
    ("fuse_elementwise_chain", "UBFusion", "TbeEltwiseFusionPass"),
];

/// The `--fusion_switch_file` JSON: every GE pass kiln's rules correspond to, `"off"` when any
/// of its kiln rules is in `disabled`, else `"on"`.
pub fn fusion_switch(disabled: &BTreeSet<String>) -> String {
    let mut sections: Vec<(&str, serde_json::Map<String, serde_json::Value>)> = vec![
        ("GraphFusion", Default::default()),
        ("UBFusion", Default::default()),
    ];
    for &(rule, section, pass) in FUSION_PASSES {
        let Some((_, m)) = sections.iter_mut().find(|(s, _)| *s == section) else {
            continue;
        };
        let off = disabled.contains(rule) || m.get(pass).and_then(|v| v.as_str()) == Some("off");
        m.insert(pass.into(), (if off { "off" } else { "on" }).into());
    }
    let mut sw = serde_json::Map::new();
    for (s, m) in sections {
        sw.insert(s.into(), serde_json::Value::Object(m));
    }
    let mut root = serde_json::Map::new();
    root.insert("Switch".into(), serde_json::Value::Object(sw));
    serde_json::to_string_pretty(&serde_json::Value::Object(root)).unwrap_or_default() + "\n"
}

/// Image formats AIPP converts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AippFormat {
    Rgb888U8,
    Yuv420spU8,
}

impl AippFormat {
    pub fn name(self) -> &'static str {
        match self {
            AippFormat::Rgb888U8 => "RGB888_U8",
            AippFormat::Yuv420spU8 => "YUV420SP_U8",
        }
    }
}

/// Preprocessing the user declares (`--aipp mean=..,std=..,format=..`): per channel
/// `(x - mean) / std` on 8-bit images.
#[derive(Debug, Clone, PartialEq)]
pub struct Aipp {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub format: AippFormat,
}

impl std::str::FromStr for Aipp {
    type Err = String;
    /// `mean=123.675:116.28:103.53,std=58.395:57.12:57.375,format=RGB888_U8` (channel values
    /// separated by `:`; one value means every channel).
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut mean, mut std, mut format) = (None, None, AippFormat::Rgb888U8);
        for kv in s.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--aipp: expected key=value, got '{kv}'"))?;
            let floats = |v: &str| -> Result<Vec<f32>, String> {
                v.split(':')
                    .map(|x| {
                        x.trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|f| f.is_finite())
                            .ok_or_else(|| format!("--aipp: bad number '{x}' in '{kv}'"))
                    })
                    .collect()
            };
            match k.trim() {
                "mean" => mean = Some(floats(v)?),
                "std" => std = Some(floats(v)?),
                "format" => {
                    format = match v.trim() {
                        "RGB888_U8" => AippFormat::Rgb888U8,
                        "YUV420SP_U8" => AippFormat::Yuv420spU8,
                        f => {
                            return Err(format!(
                                "--aipp: unknown format '{f}' (RGB888_U8, YUV420SP_U8)"
                            ));
                        }
                    }
                }
                k => return Err(format!("--aipp: unknown key '{k}' (mean, std, format)")),
            }
        }
        let widen = |v: Vec<f32>| if v.len() == 1 { vec![v[0]; 3] } else { v };
        let mean = widen(mean.unwrap_or(vec![0.0]));
        let std = widen(std.unwrap_or(vec![1.0]));
        if mean.len() != 3 || std.len() != 3 {
            return Err("--aipp: mean and std take 1 or 3 channel values".into());
        }
        if std.contains(&0.0) {
            return Err("--aipp: std must not be 0".into());
        }
        Ok(Aipp { mean, std, format })
    }
}

/// The `--insert_op_conf` file of static AIPP: `(x - min_chn) * var_reci_chn` per channel
/// (`min_chn` = mean, `var_reci_chn` = 1/std), with the BT.601 YUV -> RGB colour-space
/// conversion for YUV420SP input; the model input is `h` x `w` pixels.
pub fn aipp_config(a: &Aipp, h: usize, w: usize) -> String {
    let mut s = String::from("aipp_op {\n    aipp_mode : static\n");
    s += &format!("    input_format : {}\n", a.format.name());
    s += &format!("    src_image_size_w : {w}\n    src_image_size_h : {h}\n");
    match a.format {
        AippFormat::Rgb888U8 => s += "    csc_switch : false\n",
        AippFormat::Yuv420spU8 => {
            s += "    csc_switch : true\n    rbuv_swap_switch : false\n";
            for (k, v) in [
                ("matrix_r0c0", 256),
                ("matrix_r0c1", 0),
                ("matrix_r0c2", 359),
                ("matrix_r1c0", 256),
                ("matrix_r1c1", -88),
                ("matrix_r1c2", -183),
                ("matrix_r2c0", 256),
                ("matrix_r2c1", 454),
                ("matrix_r2c2", 0),
                ("input_bias_0", 0),
                ("input_bias_1", 128),
                ("input_bias_2", 128),
            ] {
                s += &format!("    {k} : {v}\n");
            }
        }
    }
    for c in 0..3 {
        s += &format!("    mean_chn_{c} : 0\n");
    }
    for c in 0..3 {
        s += &format!("    min_chn_{c} : {}\n", a.mean[c]);
    }
    for c in 0..3 {
        s += &format!("    var_reci_chn_{c} : {}\n", 1.0 / a.std[c]);
    }
    s + "}\n"
}

/// The `--modify_mixlist` JSON of `allow_mix_precision`: the GE op types kiln keeps in fp32
/// ([`KEEP_FP32`]) added to ATC's black list.
pub fn mixlist() -> String {
    let ops: Vec<serde_json::Value> = KEEP_FP32
        .iter()
        .flat_map(|(_, ge)| ge.iter().map(|s| serde_json::Value::from(*s)))
        .collect();
    let v = serde_json::json!({ "black-list": { "to-add": ops } });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// The `atc` command that compiles kiln's AIR (`air`, written beside the option files in
/// `dir`) into `<output>.om` for the NPU.
pub fn command(
    air: &str,
    output: &str,
    soc: SocVersion,
    precision: PrecisionMode,
    aipp: bool,
) -> String {
    let mut c = format!(
        "atc --framework=1 --model={air} --output={output} --soc_version={} --precision_mode={} --fusion_switch_file=fusion_switch.cfg",
        soc.name(),
        precision.name()
    );
    if aipp {
        c += " --insert_op_conf=aipp.cfg";
    }
    if precision == PrecisionMode::AllowMixPrecision {
        c += " --modify_mixlist=mixlist.json";
    }
    c
}
