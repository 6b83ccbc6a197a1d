//! The Ascend offline model (`.om`) kiln writes: the compiled graph ([`crate::ge`] in the
//! compiled style) with its constants moved into WEIGHTS_DATA, GE's static memory plan recorded
//! on every op, the model attributes GE sets, an empty TASK_INFO, and the container
//! (../shared/docs/formats.md §4: the 256-byte `ModelFileHeader` in the v2 layout with a 64-bit
//! partition table).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kiln_ir::Graph;
use kiln_ir::memplan::{Buf, place};
use prost::Message;

use crate::SocVersion;
use crate::ge::{GeOptions, a_i, a_s, av, export_with};
use crate::names::dtype_of_proto;
use crate::precision::{PrecisionMode, fp16_nodes, fp32_list};
use crate::proto::attr_def::Value as AV;
use crate::proto::attr_def::{ListValue, list_value};
use crate::proto::{ModelDef, TensorDescriptor};
use crate::task::ModelTaskDef;

/// `"IMOD"` as a little-endian u32.
pub const MAGIC: u32 = 0x444F_4D49;
pub const HEADER_LEN: usize = 256;
/// Header `version` of the v2 layout.
pub const VERSION_2: u32 = 0x2000_0000;
/// WEIGHTS_DATA starts with this many reserved bytes, and every constant is aligned to it
/// (`kWeightsStartOffset`).
pub const WEIGHT_ALIGN: usize = 512;
/// Feature-map offsets are aligned to this (GE's `MEM_ALIGN_SIZE`).
pub const MEM_ALIGN: usize = 512;

/// Partition types (`ModelPartitionType`).
pub mod partition {
    pub const MODEL_DEF: u32 = 0;
    pub const WEIGHTS_DATA: u32 = 1;
    pub const TASK_INFO: u32 = 2;
    pub const TBE_KERNELS: u32 = 3;
    pub const CUST_AICPU_KERNELS: u32 = 4;
    pub const SO_BINS: u32 = 5;
    pub const FLOW_MODEL: u32 = 6;
    pub const FLOW_SUBMODEL: u32 = 7;
    pub const MODEL_INOUT_INFO: u32 = 8;

    /// A partition type's name.
    pub fn name(t: u32) -> &'static str {
        match t {
            0 => "MODEL_DEF",
            1 => "WEIGHTS_DATA",
            2 => "TASK_INFO",
            3 => "TBE_KERNELS",
            4 => "CUST_AICPU_KERNELS",
            5 => "SO_BINS",
            6 => "FLOW_MODEL",
            7 => "FLOW_SUBMODEL",
            8 => "MODEL_INOUT_INFO",
            9 => "STATIC_TASK_DESC",
            10 => "DYNAMIC_TASK_DESC",
            11 => "TASK_PARAM",
            12 => "TILING_DATA",
            20 => "PRE_MODEL_DESC",
            21 => "PRE_MODEL_SQE",
            22 => "PRE_KERNEL_ARGS",
            23 => "PRE_MODEL_DESC_EXTEND",
            24 => "BUNDLE_MODEL_INFO",
            25 => "BUNDLE_MODEL_VAR_INFO",
            26 => "CUSTOM_OPS",
            _ => "unknown",
        }
    }
}

/// What `kiln build --emit om` is asked for.
#[derive(Debug, Clone, Default)]
pub struct OmOptions {
    /// The model name in the header (31 bytes at most are kept) and the ModelDef.
    pub name: String,
    pub soc: SocVersion,
    pub precision: PrecisionMode,
    /// Static AIPP on the first input (RGB888_U8 images): the OM takes 8-bit NHWC pixels and
    /// an `Aipp` op computes the model's input from them.
    pub aipp: Option<crate::atc::Aipp>,
}

/// What an OM holds, for `kiln build --emit om --report` and the tests.
#[derive(Debug, Clone, Default)]
pub struct OmReport {
    pub file_bytes: usize,
    /// WEIGHTS_DATA bytes (512 reserved + aligned constants).
    pub weight_size: usize,
    /// Feature-map memory of GE's static plan.
    pub memory_size: usize,
    /// Distinct constant bytes per GE format (`"FRACTAL_Z"`, `"NCHW"`, ...), padding included.
    pub weights_by_format: BTreeMap<String, usize>,
    /// Constants whose bytes another constant already holds.
    pub deduplicated: usize,
    /// GE op count per type.
    pub ops: BTreeMap<String, usize>,
    /// The nodes kept in fp32 by `allow_mix_precision` (node name, IR op).
    pub fp32_nodes: Vec<(String, &'static str)>,
}

fn align(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Bytes of the tensor a descriptor describes (`None`: unknown dtype or overflow).
pub fn desc_bytes(d: &TensorDescriptor) -> Option<usize> {
    let dt = dtype_of_proto(d.dtype).ok()?;
    let dims = d.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    dims.iter().try_fold(dt.size(), |a, &x| {
        usize::try_from(x).ok().and_then(|x| a.checked_mul(x))
    })
}

/// GE's tensor size (`size` field): the bytes rounded up to 32, plus 32.
fn ge_size(bytes: usize) -> i64 {
    (align(bytes, 32) + 32) as i64
}

/// Move every `Const` op's data into WEIGHTS_DATA: identical bytes stored once, each at a
/// 512-aligned offset after 512 reserved bytes; the tensor keeps `data_offset`/`weight_size`
/// (also on the readers' input descriptors) and no data.
fn move_weights(md: &mut ModelDef, report: &mut OmReport) -> Vec<u8> {
    let mut weights = vec![0u8; WEIGHT_ALIGN];
    let mut seen: HashMap<Bytes, usize> = HashMap::new();
    let mut placed: HashMap<String, (i64, i64)> = HashMap::new();
    let g = &mut md.graph[0];
    for op in &mut g.op {
        if op.r#type != "Const" {
            continue;
        }
        let Some(AV::T(t)) = op.attr.get_mut("value").and_then(|a| a.value.as_mut()) else {
            continue;
        };
        if t.data.is_empty() {
            continue;
        }
        let data = std::mem::take(&mut t.data);
        let len = data.len();
        let off = match seen.get(&data) {
            Some(&o) => {
                report.deduplicated += 1;
                o
            }
            None => {
                let o = weights.len();
                weights.extend_from_slice(&data);
                weights.resize(align(weights.len(), WEIGHT_ALIGN), 0);
                let fmt = t.desc.as_ref().map_or("ND", |d| d.layout.as_str());
                *report.weights_by_format.entry(fmt.to_string()).or_default() += len;
                seen.insert(data, o);
                o
            }
        };
        if let Some(d) = t.desc.as_mut() {
            d.data_offset = off as i64;
            d.weight_size = len as i64;
        }
        if let Some(d) = op.output_desc.first_mut() {
            d.size = ge_size(len);
        }
        placed.insert(format!("{}:0", op.name), (off as i64, len as i64));
    }
    for op in &mut g.op {
        for (k, e) in op.input.iter().enumerate() {
            if let (Some(&(off, len)), Some(d)) = (placed.get(e), op.input_desc.get_mut(k)) {
                d.data_offset = off;
                d.weight_size = len;
            }
        }
    }
    weights
}

/// GE's static memory plan over the compiled graph: every op output (but constants) is a
/// buffer of its descriptor's size (`size`: rounded to 32, plus 32), live from its producer to
/// its last reader (model inputs from the start, values read by `NetOutput` to the end),
/// placed in one feature-map region by kiln's greedy-by-size planner
/// ([`kiln_ir::memplan::place`]) at 512-byte granularity. Each op records its outputs' offsets
/// (`output_i`) and its inputs' (`input_i`: feature-map offsets, or WEIGHTS_DATA offsets for
/// constants), as GE does. Returns the region's size.
fn plan_memory(md: &mut ModelDef) -> Result<usize, String> {
    let g = &mut md.graph[0];
    let n = g.op.len();
    let index: HashMap<String, usize> =
        g.op.iter()
            .enumerate()
            .map(|(i, o)| (o.name.clone(), i))
            .collect();
    let mut bufs: Vec<Buf> = Vec::new();
    let mut buf_of: HashMap<(usize, usize), usize> = HashMap::new();
    for (pos, op) in g.op.iter_mut().enumerate() {
        if op.r#type == "Const" || op.r#type == "NetOutput" {
            continue;
        }
        let start = if op.r#type == "Data" { 0 } else { pos };
        for (k, d) in op.output_desc.iter_mut().enumerate() {
            let bytes =
                desc_bytes(d).ok_or_else(|| format!("op '{}': output {k} has no size", op.name))?;
            d.size = ge_size(bytes);
            buf_of.insert((pos, k), bufs.len());
            bufs.push(Buf {
                size: align(d.size as usize, MEM_ALIGN),
                start,
                end: start,
            });
        }
    }
    // lifetimes: to the last reader
    let mut input_srcs: Vec<Vec<Option<(usize, usize)>>> = Vec::with_capacity(n);
    for (pos, op) in g.op.iter().enumerate() {
        let mut srcs = Vec::new();
        for e in &op.input {
            let src = e
                .rsplit_once(':')
                .and_then(|(p, k)| Some((*index.get(p)?, k.parse::<usize>().ok()?)));
            if let Some(s) = src
                && let Some(&b) = buf_of.get(&s)
            {
                let end = if op.r#type == "NetOutput" { n } else { pos };
                bufs[b].end = bufs[b].end.max(end);
            }
            srcs.push(src);
        }
        input_srcs.push(srcs);
    }
    let (offsets, total) = place(&bufs);
    let total = align(total, MEM_ALIGN);
    let weight_off = |op: &crate::proto::OpDef| -> i64 {
        match op.attr.get("value").and_then(|a| a.value.as_ref()) {
            Some(AV::T(t)) => t.desc.as_ref().map_or(0, |d| d.data_offset),
            _ => 0,
        }
    };
    let consts: Vec<i64> = g.op.iter().map(weight_off).collect();
    for (pos, op) in g.op.iter_mut().enumerate() {
        op.output_i = (0..op.output_desc.len())
            .map(|k| {
                buf_of
                    .get(&(pos, k))
                    .map_or(consts[pos], |&b| offsets[b] as i64)
            })
            .collect();
        op.input_i = input_srcs[pos]
            .iter()
            .map(|s| match s {
                Some((p, k)) => buf_of
                    .get(&(*p, *k))
                    .map_or(consts[*p], |&b| offsets[b] as i64),
                None => -1,
            })
            .collect();
        op.id = pos as i64;
        op.stream_id = 0;
    }
    Ok(total)
}

fn attr_list_s(v: &[String]) -> crate::proto::AttrDef {
    av(AV::List(ListValue {
        s: v.iter().map(|s| Bytes::from(s.clone())).collect(),
        val_type: list_value::ListValueType::VtListString as i32,
        ..Default::default()
    }))
}

/// The container: header (v2, 64-bit table), one partition table, the partitions in order.
pub fn container(name: &str, soc: SocVersion, parts: &[(u32, &[u8])]) -> Result<Vec<u8>, String> {
    let table = 8 + 24 * parts.len();
    let body: usize = table + parts.iter().map(|(_, d)| d.len()).sum::<usize>();
    let mut f = Vec::with_capacity(HEADER_LEN + body);
    f.extend_from_slice(&MAGIC.to_le_bytes());
    f.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    f.extend_from_slice(&VERSION_2.to_le_bytes());
    f.resize(76, 0); // checksum[64]
    f.extend_from_slice(&0u32.to_le_bytes()); // length: 0 with a 64-bit table
    f.extend_from_slice(&[0, 0, 0, 0]); // unencrypted, checksum, model type IR, offline
    let mut nm = [0u8; 32];
    let nb = name.as_bytes();
    nm[..nb.len().min(31)].copy_from_slice(&nb[..nb.len().min(31)]);
    f.extend_from_slice(&nm); // 84..116
    f.resize(156, 0); // ops, userdefineinfo, om_ir_version
    f.extend_from_slice(&1u32.to_le_bytes()); // model_num
    let mut pv = [0u8; 20];
    let sb = soc.name().as_bytes();
    pv[..sb.len()].copy_from_slice(sb);
    f.extend_from_slice(&pv); // 160..180
    f.push(1); // platform_type: MINI
    f.resize(184, 0);
    f.extend_from_slice(&(body as u64).to_le_bytes()); // model_length
    f.resize(HEADER_LEN, 0);
    f.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    let mut off = 0u64;
    for (kind, d) in parts {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&(d.len() as u64).to_le_bytes());
        off += d.len() as u64;
    }
    for (_, d) in parts {
        f.extend_from_slice(d);
    }
    debug_assert_eq!(f.len(), HEADER_LEN + body);
    Ok(f)
}

/// The OM of a graph optimized for Ascend (`layout` pass with [`crate::ascend::AscendLayouts`]).
pub fn build(g: &Graph, opts: &OmOptions) -> Result<(Vec<u8>, OmReport), String> {
    let mut report = OmReport::default();
    let fp16 = fp16_nodes(g, opts.precision);
    let mut md = export_with(
        g,
        &GeOptions {
            compiled: true,
            fp16,
        },
    )?;
    let name = if opts.name.is_empty() {
        g.name.clone()
    } else {
        opts.name.clone()
    };
    md.name = name.clone();
    md.graph[0].name = format!("{name}_0");
    if let Some(a) = &opts.aipp {
        insert_aipp(&mut md, a)?;
    }
    let weights = move_weights(&mut md, &mut report);
    let memory = plan_memory(&mut md)?;
    for op in &md.graph[0].op {
        *report.ops.entry(op.r#type.clone()).or_default() += 1;
    }
    report.fp32_nodes = fp32_list(g, opts.precision);
    let task = ModelTaskDef {
        version: "1.0".into(),
        memory_size: memory as u64,
        stream_num: 1,
        event_num: 0,
        weight_size: weights.len() as u64,
        ..Default::default()
    }
    .encode_to_vec();
    let attrs: Vec<(&str, crate::proto::AttrDef)> = vec![
        ("memory_size", a_i(memory as i64)),
        ("weight_size", a_i(weights.len() as i64)),
        ("stream_num", a_i(1)),
        ("event_num", a_i(0)),
        ("label_num", a_i(0)),
        ("soc_version", a_s(opts.soc.name())),
        ("target_type", a_s(opts.soc.target_type())),
        ("precision_mode", a_s(opts.precision.name())),
        (
            "om_info_list",
            crate::ge::a_ints(&[weights.len() as i64, 0, 0, task.len() as i64, 0]),
        ),
        (
            "kiln_keep_fp32_nodes",
            attr_list_s(
                &report
                    .fp32_nodes
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>(),
            ),
        ),
        ("kiln_version", a_s(env!("CARGO_PKG_VERSION"))),
    ];
    for (k, v) in attrs {
        md.attr.insert(k.to_string(), v);
    }
    let (ins, outs) = io_tensors(&md);
    md.attr.insert(
        "attr_model_out_nodes_name".into(),
        attr_list_s(&outs.iter().map(|t| t.name.clone()).collect::<Vec<_>>()),
    );
    let inout = inout_info(&ins, &outs);
    let model_def = md.encode_to_vec();
    let file = container(
        &name,
        opts.soc,
        &[
            (partition::MODEL_INOUT_INFO, &inout),
            (partition::MODEL_DEF, &model_def),
            (partition::WEIGHTS_DATA, &weights),
            (partition::TASK_INFO, &task),
        ],
    )?;
    report.file_bytes = file.len();
    report.weight_size = weights.len();
    report.memory_size = memory;
    Ok((file, report))
}

/// Static AIPP (ATC's `--insert_op_conf`) on input 0, as GE inserts it: the `Data` op takes
/// 8-bit NHWC pixels and an `Aipp` op (attribute `aipp`: the static parameters —
/// `input_format`, `src_image_size_w/h`, `mean_chn_i`, `min_chn_i`, `var_reci_chn_i`) computes
/// `(x - mean_chn - min_chn) * var_reci_chn` per channel into the model's NCHW input. Only
/// RGB888_U8 is written (YUV420SP's colour conversion is left to ATC's option file).
fn insert_aipp(md: &mut ModelDef, a: &crate::atc::Aipp) -> Result<(), String> {
    use crate::atc::AippFormat;
    use crate::proto::{NamedAttrs, OpDef, ShapeDef};
    if a.format != AippFormat::Rgb888U8 {
        return Err(format!(
            "--aipp format {} is written into the ATC option file only (kiln's OM supports RGB888_U8)",
            a.format.name()
        ));
    }
    let g = &mut md.graph[0];
    let k =
        g.op.iter()
            .position(|o| {
                o.r#type == "Data"
                    && matches!(
                        o.attr.get("index").and_then(|x| x.value.as_ref()),
                        Some(AV::I(0))
                    )
            })
            .ok_or("--aipp: the model has no input 0")?;
    let data = g.op[k].name.clone();
    let out = g.op[k]
        .output_desc
        .first()
        .cloned()
        .ok_or("--aipp: input without descriptor")?;
    let dims = out
        .shape
        .as_ref()
        .map(|s| s.dim.clone())
        .unwrap_or_default();
    let [n, c, h, w] = dims[..] else {
        return Err(format!(
            "--aipp needs a 4-D NCHW input, '{data}' is {dims:?}"
        ));
    };
    if c != 3 || out.layout != "NCHW" {
        return Err(format!(
            "--aipp needs 3 channels in NCHW, '{data}' is {dims:?} {}",
            out.layout
        ));
    }
    let mut pix = crate::ge::descriptor(
        &kiln_ir::TensorType::new(
            kiln_ir::DType::U8,
            vec![n as usize, h as usize, w as usize, 3],
        ),
        &data,
    );
    pix.layout = "NHWC".into();
    pix.attr.insert("origin_format".into(), a_s("NHWC"));
    pix.attr
        .insert("format_for_int".into(), a_i(crate::names::format::NHWC));
    pix.attr.insert(
        "origin_format_for_int".into(),
        a_i(crate::names::format::NHWC),
    );
    pix.shape = Some(ShapeDef {
        dim: vec![n, h, w, 3],
    });
    g.op[k].output_desc = vec![pix.clone()];
    g.op[k].input_desc = vec![pix.clone()];
    let aipp = format!("{data}_aipp");
    let old = format!("{data}:0");
    for op in g.op.iter_mut() {
        for e in op.input.iter_mut() {
            if *e == old {
                *e = format!("{aipp}:0");
            }
        }
    }
    let mut p = BTreeMap::new();
    p.insert("aipp_mode".to_string(), a_s("static"));
    p.insert("input_format".to_string(), a_s(a.format.name()));
    p.insert("src_image_size_w".to_string(), a_i(w));
    p.insert("src_image_size_h".to_string(), a_i(h));
    p.insert("csc_switch".to_string(), crate::ge::a_b(false));
    for ch in 0..3 {
        p.insert(format!("mean_chn_{ch}"), a_i(0));
        p.insert(format!("min_chn_{ch}"), av(AV::F(a.mean[ch])));
        p.insert(format!("var_reci_chn_{ch}"), av(AV::F(1.0 / a.std[ch])));
    }
    let mut attr = BTreeMap::new();
    attr.insert(
        "aipp".to_string(),
        av(AV::Func(NamedAttrs {
            name: "aipp".into(),
            attr: p,
        })),
    );
    let mut o = out.clone();
    o.name = aipp.clone();
    g.op.insert(
        k + 1,
        OpDef {
            name: aipp,
            r#type: "Aipp".into(),
            input: vec![old],
            attr,
            input_desc: vec![pix],
            output_desc: vec![o],
            ..Default::default()
        },
    );
    Ok(())
}

/// The model's inputs (`Data` ops in `index` order) and outputs (`NetOutput`'s inputs, named
/// `<op>:<k>` as `attr_model_out_nodes_name` has them) for MODEL_INOUT_INFO.
fn io_tensors(md: &ModelDef) -> (Vec<IoTensor>, Vec<IoTensor>) {
    let ge_dtype = |d: &TensorDescriptor| {
        dtype_of_proto(d.dtype).map_or(28, |t| crate::names::ge_of_dtype(t) as i32)
    };
    let fmt = |d: &TensorDescriptor| -> i32 {
        match d.attr.get("format_for_int").and_then(|a| a.value.as_ref()) {
            Some(AV::I(f)) => *f as i32,
            _ => crate::names::format::ND as i32,
        }
    };
    let io = |name: String, d: &TensorDescriptor| IoTensor {
        name,
        size: desc_bytes(d).unwrap_or(0) as u64,
        format: fmt(d),
        dtype: ge_dtype(d),
        dims: d.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default(),
    };
    let g = &md.graph[0];
    let mut ins: Vec<(i64, IoTensor)> =
        g.op.iter()
            .filter(|o| o.r#type == "Data")
            .filter_map(|o| {
                let idx = match o.attr.get("index").and_then(|a| a.value.as_ref()) {
                    Some(AV::I(i)) => *i,
                    _ => 0,
                };
                Some((idx, io(o.name.clone(), o.output_desc.first()?)))
            })
            .collect();
    ins.sort_by_key(|(i, _)| *i);
    let outs =
        g.op.iter()
            .filter(|o| o.r#type == "NetOutput")
            .flat_map(|o| o.input.iter().zip(&o.input_desc))
            .map(|(e, d)| io(e.clone(), d))
            .collect();
    (ins.into_iter().map(|(_, t)| t).collect(), outs)
}

/// One tensor of MODEL_INOUT_INFO (GE's `ModelTensorDesc`).
#[derive(Debug, Clone, PartialEq)]
pub struct IoTensor {
    pub name: String,
    /// Bytes (GE's tensor size).
    pub size: u64,
    /// `ge::Format`.
    pub format: i32,
    /// C++ `ge::DataType`.
    pub dtype: i32,
    pub dims: Vec<i64>,
}

/// MODEL_INOUT_INFO: TLV blocks `{u32 ModelDescType; u32 length; payload}`; kiln writes and
/// reads the input (0) and output (1) descriptions: `u32 count`, then per tensor a 32-byte
/// `ModelTensorDescBaseInfo` (`u64 size; i32 format; i32 dtype; u32 name_len, dims_len,
/// dimsV2_len, shape_range_len`) followed by the name, the dims (i64), dimsV2 (i64) and the
/// shape ranges (i64 pairs) — GE's `ModelIntroduction`, checked on GraphEngine's
/// `root_model.om`.
pub fn inout_info(inputs: &[IoTensor], outputs: &[IoTensor]) -> Vec<u8> {
    let mut b = Vec::new();
    for (kind, ts) in [(0u32, inputs), (1u32, outputs)] {
        if ts.is_empty() {
            continue;
        }
        let mut p = Vec::new();
        p.extend_from_slice(&(ts.len() as u32).to_le_bytes());
        for t in ts {
            let dl = (t.dims.len() * 8) as u32;
            p.extend_from_slice(&t.size.to_le_bytes());
            p.extend_from_slice(&t.format.to_le_bytes());
            p.extend_from_slice(&t.dtype.to_le_bytes());
            p.extend_from_slice(&(t.name.len() as u32).to_le_bytes());
            p.extend_from_slice(&dl.to_le_bytes());
            p.extend_from_slice(&dl.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(t.name.as_bytes());
            for _ in 0..2 {
                for d in &t.dims {
                    p.extend_from_slice(&d.to_le_bytes());
                }
            }
        }
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&(p.len() as u32).to_le_bytes());
        b.extend_from_slice(&p);
    }
    b
}

/// Read the inputs and outputs of a MODEL_INOUT_INFO partition (other blocks are skipped);
/// every length is checked against the data.
pub fn parse_inout_info(b: &[u8]) -> Result<(Vec<IoTensor>, Vec<IoTensor>), String> {
    let u32_at = |p: &[u8], i: usize| -> Result<u32, String> {
        p.get(i..i + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .ok_or_else(|| format!("MODEL_INOUT_INFO is truncated at byte {i}"))
    };
    let (mut ins, mut outs) = (vec![], vec![]);
    let mut i = 0usize;
    while i < b.len() {
        let kind = u32_at(b, i)?;
        let len = u32_at(b, i + 4)? as usize;
        let p = b.get(i + 8..(i + 8).saturating_add(len)).ok_or_else(|| {
            format!("MODEL_INOUT_INFO block at {i} ({len} bytes) runs past its end")
        })?;
        i += 8 + len;
        if kind > 1 {
            continue;
        }
        let n = u32_at(p, 0)? as usize;
        let mut j = 4usize;
        let mut ts = vec![];
        for _ in 0..n {
            let h = p
                .get(j..j + 32)
                .ok_or("MODEL_INOUT_INFO tensor description is truncated")?;
            let size = u64::from_le_bytes(h[0..8].try_into().unwrap());
            let format = i32::from_le_bytes(h[8..12].try_into().unwrap());
            let dtype = i32::from_le_bytes(h[12..16].try_into().unwrap());
            let lens: Vec<usize> = (0..4)
                .map(|k| u32::from_le_bytes(h[16 + 4 * k..20 + 4 * k].try_into().unwrap()) as usize)
                .collect();
            j += 32;
            let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l));
            let body = total
                .and_then(|t| p.get(j..j.checked_add(t)?))
                .ok_or("MODEL_INOUT_INFO tensor description runs past its block")?;
            let name = String::from_utf8_lossy(&body[..lens[0]]).into_owned();
            let dims = body[lens[0]..lens[0] + lens[1]]
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            j += body.len();
            ts.push(IoTensor {
                name,
                size,
                format,
                dtype,
                dims,
            });
        }
        if kind == 0 {
            ins = ts;
        } else {
            outs = ts;
        }
    }
    Ok((ins, outs))
}
