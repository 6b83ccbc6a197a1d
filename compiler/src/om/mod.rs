//! Ascend offline models (`.om`): the 256-byte `ModelFileHeader`, the partition table(s) and
//! the partitions (../shared/docs/formats.md §4). The MODEL_DEF partition is a GraphEngine
//! `ModelDef`, read through the AIR importer.
//!
//! Every offset and size comes from the file and is checked against its length before use.

use bytes::Bytes;

use crate::frontend::FrontendError;

pub use kiln_target_om::om::{HEADER_LEN, MAGIC, partition};

/// The header fields kiln reads.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    /// Bytes after the header (32-bit table layout; 0 in current writers).
    pub length: u32,
    pub is_encrypt: u8,
    pub model_type: u8,
    pub name: String,
    /// v2.0 only: sub-model count.
    pub model_num: u32,
    pub platform_version: String,
    pub platform_type: u8,
    /// Bytes after the header (64-bit table layout).
    pub model_length: u64,
    pub is_unknown_model: u8,
}

/// One partition of one model.
#[derive(Debug, Clone)]
pub struct Partition {
    pub kind: u32,
    /// Offset of the data in the file.
    pub offset: usize,
    pub data: Bytes,
}

/// An OM file: its header and the partitions of each model (the first is the root model).
#[derive(Debug, Clone)]
pub struct OmFile {
    pub header: Header,
    /// Whether the partition tables use the 64-bit layout.
    pub wide_table: bool,
    pub models: Vec<Vec<Partition>>,
}

impl OmFile {
    /// The root model's partition of `kind`.
    pub fn partition(&self, kind: u32) -> Option<&Partition> {
        self.models.first()?.iter().find(|p| p.kind == kind)
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parse an OM container: header, partition table(s), partitions. Flow models (model type 3,
/// sub-models embedded in protobuf partitions) are rejected with the reason.
pub fn parse(bytes: Bytes, file: &str) -> Result<OmFile, FrontendError> {
    let err = |m: String| FrontendError::model(file, m);
    let b = &bytes[..];
    if b.len() < HEADER_LEN {
        return Err(err(format!(
            "not an OM file: {} bytes, shorter than the 256-byte header",
            b.len()
        )));
    }
    let magic = u32_at(b, 0);
    if magic != MAGIC {
        return Err(err(format!(
            "not an OM file: magic {magic:#010x}, expected {MAGIC:#010x} (\"IMOD\")"
        )));
    }
    let headsize = u32_at(b, 4) as usize;
    if headsize != HEADER_LEN {
        return Err(err(format!("header size {headsize}, expected 256")));
    }
    let version = u32_at(b, 8);
    if !(0x1000_0000..0x3000_0000).contains(&version) {
        return Err(err(format!(
            "header version {version:#010x} is out of range (v1 0x10000000, v2 0x20000000)"
        )));
    }
    let v2 = version >= 0x2000_0000;
    let header = Header {
        version,
        length: u32_at(b, 76),
        is_encrypt: b[80],
        model_type: b[82],
        name: c_string(&b[84..116]),
        model_num: if v2 { u32_at(b, 156) } else { 1 },
        platform_version: c_string(if v2 { &b[160..180] } else { &b[156..176] }),
        platform_type: if v2 { b[180] } else { b[176] },
        model_length: if v2 { u64_at(b, 184) } else { 0 },
        is_unknown_model: if v2 { b[193] } else { 0 },
    };
    if header.is_encrypt != 0 {
        return Err(err("encrypted OM files are not supported".into()));
    }
    if header.model_type > 5 {
        return Err(err(format!(
            "model type {} is out of range (0 IR .. 5 bundle)",
            header.model_type
        )));
    }
    if header.model_type == 3 {
        return Err(err(
            "a flow model (model type 3: sub-models embedded in FLOW_MODEL/FLOW_SUBMODEL partitions) is not supported; convert each sub-model on its own"
                .into(),
        ));
    }
    let body = (b.len() - HEADER_LEN) as u64;
    let declared = if header.model_length != 0 {
        header.model_length
    } else {
        header.length as u64
    };
    if declared != body {
        return Err(err(format!(
            "the header says {declared} bytes follow it, the file has {body}"
        )));
    }
    let wide = header.model_length != 0;
    let n_models = if v2 && (header.model_num > 1 || header.is_unknown_model == 1) {
        header.model_num as usize
    } else {
        1
    };
    if n_models == 0 || n_models > 64 {
        return Err(err(format!(
            "model_num {n_models} is out of range (1..=64)"
        )));
    }
    let mut models = Vec::with_capacity(n_models);
    let mut pos = HEADER_LEN;
    for m in 0..n_models {
        let merr = |msg: String| err(format!("model {m}: {msg}"));
        let need = |pos: usize, n: usize| -> Result<(), FrontendError> {
            if pos.checked_add(n).is_none_or(|e| e > b.len()) {
                return Err(merr(format!(
                    "partition table at offset {pos} runs past the end of the file"
                )));
            }
            Ok(())
        };
        need(pos, 4)?;
        let num = u32_at(b, pos) as usize;
        if !(1..=32).contains(&num) {
            return Err(merr(format!(
                "partition count {num} is out of range (1..=32)"
            )));
        }
        let (entry, head) = if wide { (24, 8) } else { (12, 4) };
        let table = head + entry * num;
        need(pos, table)?;
        let base = pos + table;
        let mut parts = Vec::with_capacity(num);
        let mut end = base;
        for k in 0..num {
            let e = pos + head + entry * k;
            let (kind, off, size) = if wide {
                if u32_at(b, e + 4) != 0 {
                    return Err(merr(format!("partition {k}: nonzero padding in the table")));
                }
                (u32_at(b, e), u64_at(b, e + 8), u64_at(b, e + 16))
            } else {
                (
                    u32_at(b, e),
                    u32_at(b, e + 4) as u64,
                    u32_at(b, e + 8) as u64,
                )
            };
            if parts.iter().any(|p: &Partition| p.kind == kind) {
                return Err(merr(format!(
                    "partition {k}: type {kind} ({}) appears twice",
                    partition::name(kind)
                )));
            }
            let start = usize::try_from(off).ok().and_then(|o| base.checked_add(o));
            let stop = usize::try_from(size)
                .ok()
                .and_then(|s| start.and_then(|st| st.checked_add(s)));
            let (Some(start), Some(stop)) = (start, stop) else {
                return Err(merr(format!("partition {k}: offset/size overflow")));
            };
            if stop > b.len() {
                return Err(merr(format!(
                    "partition {k} ({}) [{start}, {stop}) runs past the end of the file ({} bytes)",
                    partition::name(kind),
                    b.len()
                )));
            }
            // partitions follow each other (GE's loader walks sizes; Netron uses offsets)
            if start != end {
                return Err(merr(format!(
                    "partition {k} ({}) starts at {start}, the previous one ends at {end}",
                    partition::name(kind)
                )));
            }
            end = stop;
            parts.push(Partition {
                kind,
                offset: start,
                data: bytes.slice(start..stop),
            });
        }
        models.push(parts);
        pos = end;
    }
    if pos != b.len() {
        return Err(err(format!(
            "{} bytes after the last partition",
            b.len() - pos
        )));
    }
    Ok(OmFile {
        header,
        wide_table: wide,
        models,
    })
}

/// Read an OM file (memory-mapped).
pub fn read(path: &std::path::Path) -> Result<OmFile, FrontendError> {
    let file = path.display().to_string();
    let bytes = crate::frontend::data::map_file(path).map_err(|e| FrontendError::io(&file, e))?;
    parse(bytes, &file)
}

/// The root model's graph: its MODEL_DEF partition decoded as a ModelDef.
pub fn model_def(om: &OmFile, file: &str) -> Result<crate::air::proto::ModelDef, FrontendError> {
    let p = om
        .partition(partition::MODEL_DEF)
        .ok_or_else(|| FrontendError::model(file, "the OM file has no MODEL_DEF partition"))?;
    crate::air::decode(p.data.clone(), &format!("{file} (MODEL_DEF)"))
}

/// Import an OM file's root model from its bytes as `kiln build model.om` does: the MODEL_DEF
/// graph with constants from the WEIGHTS_DATA partition, fp16 widened to f32 (`opts.weights`
/// and `opts.widen_fp16` are set here).
pub fn load_bytes(
    bytes: Bytes,
    base_dir: Option<&std::path::Path>,
    file: &str,
    opts: &crate::air::AirOptions,
) -> Result<kiln_ir::Graph, FrontendError> {
    let om = parse(bytes, file)?;
    let md = model_def(&om, file)?;
    let opts = crate::air::AirOptions {
        weights: om
            .partition(partition::WEIGHTS_DATA)
            .map(|p| p.data.clone()),
        widen_fp16: true,
        ..opts.clone()
    };
    crate::air::import::import_model(&md, crate::frontend::Source::new(file, base_dir), &opts)
}

/// An OM file's summary for `kiln inspect`: header fields, partitions with sizes, and the root
/// model's graph (as `kiln inspect model.air` prints it).
pub fn describe(om: &OmFile, file: &str) -> String {
    use std::fmt::Write;
    let h = &om.header;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Ascend OM '{}': version {:#010x}, model type {}, platform '{}' (type {}), {} model(s), {} partition table",
        h.name,
        h.version,
        h.model_type,
        h.platform_version,
        h.platform_type,
        om.models.len(),
        if om.wide_table { "64-bit" } else { "32-bit" }
    );
    for (m, parts) in om.models.iter().enumerate() {
        for p in parts {
            let _ = writeln!(
                s,
                "  model {m} partition {:<18} {:>10} bytes at {}",
                partition::name(p.kind),
                p.data.len(),
                p.offset
            );
        }
    }
    if let Some(p) = om.partition(partition::MODEL_INOUT_INFO) {
        match kiln_target_om::om::parse_inout_info(&p.data) {
            Ok((ins, outs)) => {
                for (what, ts) in [("input", ins), ("output", outs)] {
                    for t in ts {
                        let _ = writeln!(
                            s,
                            "  MODEL_INOUT_INFO {what} '{}': dims {:?}, ge::DataType {}, ge::Format {}, {} bytes",
                            t.name, t.dims, t.dtype, t.format, t.size
                        );
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(s, "  MODEL_INOUT_INFO: {e}");
            }
        }
    }
    match model_def(om, file) {
        Ok(md) => s += &crate::air::describe(&md),
        Err(e) => {
            let _ = writeln!(s, "MODEL_DEF: {e}");
        }
    }
    s
}
