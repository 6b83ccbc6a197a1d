//! MindSpore checkpoints: protobuf `.ckpt` (optionally with a CRC trailer or encrypted) and the
//! safetensors variant (`__metadata__.format == "ms"`).
//!
//! Tensor bytes stay windows into the memory-mapped file (or the decrypted buffer); only a tensor
//! split across several entries is joined into an owned buffer.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use kiln_ir::{ConstData, DType, TensorType};
use prost::Message;

use super::MsError;
use super::crypto::{self, DecryptKey};
use super::proto::ckpt as pb;
use crate::frontend::data::{bytes_data, map_file};

/// Largest tensor rank accepted: the IR's size policy.
use kiln_ir::limits::MAX_RANK;

/// Element type of a checkpoint entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    Num(DType),
    /// `Int4` (qint4x2): two signed 4-bit values per byte, low nibble first.
    Int4,
    /// `str`: UTF-32LE text (a numpy `U` array).
    Str,
}

impl ElemType {
    /// From MindSpore's `tensor_type` string (`str(mindspore dtype)`).
    pub fn from_ms(s: &str) -> Option<Self> {
        use DType::*;
        Some(ElemType::Num(match s {
            "Float16" => F16,
            "Float32" => F32,
            "Float64" => F64,
            "BFloat16" => BF16,
            "Int8" => I8,
            "UInt8" => U8,
            "Int16" => I16,
            "UInt16" => U16,
            "Int32" => I32,
            "UInt32" => U32,
            "Int64" => I64,
            "UInt64" => U64,
            "Bool" => Bool,
            "Int4" => return Some(ElemType::Int4),
            "str" => return Some(ElemType::Str),
            _ => return None,
        }))
    }

    /// MindSpore's name of the type.
    pub fn ms_name(self) -> &'static str {
        use DType::*;
        match self {
            ElemType::Int4 => "Int4",
            ElemType::Str => "str",
            ElemType::Num(d) => match d {
                F16 => "Float16",
                F32 => "Float32",
                F64 => "Float64",
                BF16 => "BFloat16",
                I8 => "Int8",
                U8 => "UInt8",
                I16 => "Int16",
                U16 => "UInt16",
                I32 => "Int32",
                U32 => "UInt32",
                I64 => "Int64",
                U64 => "UInt64",
                Bool => "Bool",
            },
        }
    }
}

/// The stored byte count must be what the type and shape need (strings: any UTF-32 length).
fn check_size(elem: ElemType, shape: &[usize], total: usize) -> Result<(), String> {
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let need = match elem {
        ElemType::Num(d) => numel.checked_mul(d.size()),
        ElemType::Int4 => Some(numel.div_ceil(2)),
        ElemType::Str => {
            return if total.is_multiple_of(4) {
                Ok(())
            } else {
                Err(format!(
                    "a str tensor holds UTF-32 text, {total} bytes is not a multiple of 4"
                ))
            };
        }
    };
    match need {
        Some(n) if n == total => Ok(()),
        Some(n) => Err(format!(
            "{} {shape:?} needs {n} bytes, the file holds {total}",
            elem.ms_name()
        )),
        None => Err(format!("shape {shape:?} is too large")),
    }
}

/// One parameter of a checkpoint.
#[derive(Debug, Clone)]
pub struct CkptEntry {
    pub name: String,
    pub elem: ElemType,
    pub shape: Vec<usize>,
    /// The stored bytes (row-major, little-endian; Int4 packed).
    pub data: ConstData,
    /// How many entries of the file held this tensor (> 1: a split tensor, re-joined).
    pub pieces: usize,
}

impl CkptEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor as a kiln constant. Int4 is widened to `i8`; strings have no kiln type.
    pub fn to_tensor(&self) -> Result<(TensorType, ConstData), String> {
        match self.elem {
            ElemType::Num(d) => Ok((TensorType::new(d, self.shape.clone()), self.data.clone())),
            ElemType::Int4 => {
                let n = self.numel();
                let b = self.data.bytes();
                let v: Vec<u8> = (0..n)
                    .map(|i| {
                        let byte = b[i / 2];
                        let nib = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                        (((nib << 4) as i8) >> 4) as u8
                    })
                    .collect();
                Ok((
                    TensorType::new(DType::I8, self.shape.clone()),
                    ConstData::from_vec(v),
                ))
            }
            ElemType::Str => Err(format!("'{}' is a string, not a tensor", self.name)),
        }
    }

    /// The text of a `str` entry.
    pub fn text(&self) -> Option<String> {
        if self.elem != ElemType::Str {
            return None;
        }
        Some(
            self.data
                .bytes()
                .chunks_exact(4)
                .filter_map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .filter(|&c| c != '\0')
                .collect(),
        )
    }
}

/// A decoded checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub entries: Vec<CkptEntry>,
    /// `"protobuf"` or `"safetensors"`.
    pub format: &'static str,
    /// The verified CRC32, when the file carries one.
    pub crc: Option<u32>,
    /// The encryption mode, when the file was encrypted.
    pub encryption: Option<&'static str>,
    /// Entries that are not tensors (MapParameter tables), skipped.
    pub skipped: Vec<String>,
}

impl Checkpoint {
    pub fn get(&self, name: &str) -> Option<&CkptEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// A table like MindSpore's `load_checkpoint` listing: name, dtype, shape, bytes, totals.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let w = self
            .entries
            .iter()
            .map(|e| e.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        s += &format!(
            "{:<w$}  {:<8}  {:<18}  {:>12}\n",
            "name", "dtype", "shape", "bytes"
        );
        let mut total = 0usize;
        let mut elems = 0usize;
        for e in &self.entries {
            let shape = format!("{:?}", e.shape);
            s += &format!(
                "{:<w$}  {:<8}  {:<18}  {:>12}",
                e.name,
                e.elem.ms_name(),
                shape,
                e.data.len()
            );
            if let Some(t) = e.text() {
                s += &format!("  = {t:?}");
            }
            if e.pieces > 1 {
                s += &format!("  (joined from {} pieces)", e.pieces);
            }
            s += "\n";
            total += e.data.len();
            if e.elem != ElemType::Str {
                elems += e.numel();
            }
        }
        s += &format!(
            "{} parameters, {} elements, {} bytes ({} checkpoint",
            self.entries.len(),
            elems,
            total,
            self.format
        );
        if let Some(c) = self.crc {
            s += &format!(", crc32 {c:#010x} verified");
        }
        if let Some(m) = self.encryption {
            s += &format!(", {m} encrypted");
        }
        s += ")\n";
        for k in &self.skipped {
            s += &format!("skipped (not a tensor): {k}\n");
        }
        s
    }
}

/// Read a checkpoint file (`.ckpt` protobuf, encrypted or not, or `.safetensors`).
pub fn read(path: &Path, key: Option<&DecryptKey>) -> Result<Checkpoint, MsError> {
    let file = path.display().to_string();
    let bytes = map_file(path).map_err(|source| MsError::Io {
        file: file.clone(),
        source,
    })?;
    read_bytes(bytes, &file, key)
}

/// Read a checkpoint from bytes; `file` names it in errors.
pub fn read_bytes(
    bytes: Bytes,
    file: &str,
    key: Option<&DecryptKey>,
) -> Result<Checkpoint, MsError> {
    let err = |msg: String| MsError::Model {
        file: file.to_string(),
        msg,
    };
    if bytes.is_empty() {
        return Err(err("empty file: not a checkpoint".into()));
    }
    if is_safetensors(&bytes) {
        return read_safetensors(bytes, file);
    }
    if let Some(mode) = crypto::cipher_mode(&bytes) {
        let Some(key) = key else {
            return Err(err(format!(
                "checkpoint is encrypted ({mode}); give the key with --decrypt-key-file FILE or the {} environment variable",
                crypto::KEY_ENV
            )));
        };
        let plain = crypto::decrypt(&bytes, key).map_err(err)?;
        let mut c = read_protobuf(Bytes::from(plain), file)?;
        c.encryption = Some(mode);
        return Ok(c);
    }
    read_protobuf(bytes, file)
}

fn is_safetensors(b: &[u8]) -> bool {
    b.len() >= 10
        && u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
            .checked_add(8)
            .is_some_and(|end| end <= b.len() as u64)
        && b[8] == b'{'
}

/// Strip and verify the `crc_num` trailer: `b"crc_num"` + the CRC32 as 10 big-endian bytes.
fn strip_crc(bytes: Bytes, file: &str) -> Result<(Bytes, Option<u32>), MsError> {
    let n = bytes.len();
    if n < 17 || &bytes[n - 17..n - 10] != b"crc_num" {
        return Ok((bytes, None));
    }
    let mut v: u128 = 0;
    for &b in &bytes[n - 10..] {
        v = v << 8 | u128::from(b);
    }
    let body = bytes.slice(..n - 17);
    let actual = crc32fast::hash(&body);
    if v != u128::from(actual) {
        return Err(MsError::Model {
            file: file.to_string(),
            msg: format!(
                "CRC mismatch: the crc_num trailer says {v}, the contents give {actual} (the file is corrupted or was modified)"
            ),
        });
    }
    Ok((body, Some(actual)))
}

fn read_protobuf(bytes: Bytes, file: &str) -> Result<Checkpoint, MsError> {
    let err = |msg: String| MsError::Model {
        file: file.to_string(),
        msg,
    };
    let (body, crc) = strip_crc(bytes, file)?;
    let non_empty = !body.is_empty();
    let ck = pb::Checkpoint::decode(body).map_err(|source| MsError::Decode {
        file: file.to_string(),
        what: "MindSpore checkpoint",
        source,
    })?;
    let mut out = Checkpoint {
        format: "protobuf",
        crc,
        ..Default::default()
    };
    // group consecutive values that share a tag (a split tensor)
    let mut i = 0;
    let vals = ck.value;
    while i < vals.len() {
        let tag = vals[i].tag.clone();
        let mut j = i + 1;
        while j < vals.len() && vals[j].tag == tag {
            j += 1;
        }
        let group = &vals[i..j];
        i = j;
        let mut tensors = Vec::with_capacity(group.len());
        for v in group {
            match &v.value {
                Some(pb::checkpoint::value::Value::Tensor(t)) => tensors.push(t),
                Some(pb::checkpoint::value::Value::Maptensor(_)) => {
                    out.skipped.push(format!("{tag} (MapParameter)"));
                }
                None => return Err(err(format!("parameter '{tag}' holds no tensor"))),
            }
        }
        if tensors.is_empty() {
            continue;
        }
        if out.entries.iter().any(|e| e.name == tag) {
            return Err(err(format!(
                "parameter '{tag}' appears twice, not in consecutive entries"
            )));
        }
        let t0 = tensors[0];
        if tensors
            .iter()
            .any(|t| t.tensor_type != t0.tensor_type || t.dims != t0.dims)
        {
            return Err(err(format!(
                "parameter '{tag}' is split into {} entries whose types or dims differ",
                tensors.len()
            )));
        }
        let elem = ElemType::from_ms(&t0.tensor_type).ok_or_else(|| {
            err(format!(
                "parameter '{tag}': unknown tensor_type '{}'",
                t0.tensor_type
            ))
        })?;
        let total: usize = tensors.iter().map(|t| t.tensor_content.len()).sum();
        let shape = ckpt_shape(&t0.dims, elem, total)
            .map_err(|m| err(format!("parameter '{tag}': {m}")))?;
        check_size(elem, &shape, total).map_err(|m| err(format!("parameter '{tag}': {m}")))?;
        let data = if tensors.len() == 1 {
            bytes_data(t0.tensor_content.clone())
        } else {
            let mut v = Vec::with_capacity(total);
            for t in &tensors {
                v.extend_from_slice(&t.tensor_content);
            }
            ConstData::from_vec(v)
        };
        out.entries.push(CkptEntry {
            name: tag,
            elem,
            shape,
            data,
            pieces: tensors.len(),
        });
    }
    if non_empty && out.entries.is_empty() && out.skipped.is_empty() {
        return Err(err(
            "no parameters found (not a MindSpore checkpoint?)".into()
        ));
    }
    Ok(out)
}

/// The shape of a checkpoint tensor. Legacy writers stored scalars (and strings) as dims `[0]`.
fn ckpt_shape(dims: &[i64], elem: ElemType, content_len: usize) -> Result<Vec<usize>, String> {
    if dims.len() > MAX_RANK {
        return Err(format!("rank {} is too large", dims.len()));
    }
    if dims == [0] && (elem == ElemType::Str || content_len > 0) {
        return Ok(vec![]);
    }
    let mut numel: usize = 1;
    let mut shape = Vec::with_capacity(dims.len());
    for &d in dims {
        let u = usize::try_from(d).map_err(|_| format!("negative dimension in {dims:?}"))?;
        numel = numel
            .checked_mul(u)
            .ok_or_else(|| format!("shape {dims:?} is too large"))?;
        shape.push(u);
    }
    Ok(shape)
}

fn read_safetensors(bytes: Bytes, file: &str) -> Result<Checkpoint, MsError> {
    let err = |msg: String| MsError::Model {
        file: file.to_string(),
        msg: format!("safetensors: {msg}"),
    };
    let hlen = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| err("short".into()))?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen])
        .map_err(|e| err(format!("bad JSON header: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| err("header is not a JSON object".into()))?;
    let data = bytes.slice(8 + hlen..);
    let meta: BTreeMap<String, String> = match obj.get("__metadata__") {
        None => BTreeMap::new(),
        Some(m) => m
            .as_object()
            .ok_or_else(|| err("__metadata__ is not an object".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    };
    if let Some(f) = meta.get("format")
        && f != "ms"
    {
        return Err(err(format!(
            "__metadata__.format is '{f}', not 'ms' (not a MindSpore checkpoint)"
        )));
    }
    let mut out = Checkpoint {
        format: "safetensors",
        ..Default::default()
    };
    let mut hasher = crc32fast::Hasher::new();
    // serde_json's map is sorted by key: the order MindSpore writes and chains the CRC in
    for (name, t) in obj.iter().filter(|(k, _)| *k != "__metadata__") {
        let e = |m: &str| err(format!("tensor '{name}': {m}"));
        let dt = t["dtype"].as_str().ok_or_else(|| e("no dtype"))?;
        let mut elem = ElemType::Num(match dt {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I8" => DType::I8,
            "U8" => DType::U8,
            "I16" => DType::I16,
            "U16" => DType::U16,
            "I32" => DType::I32,
            "U32" => DType::U32,
            "I64" => DType::I64,
            "U64" => DType::U64,
            "BOOL" => DType::Bool,
            _ => return Err(e(&format!("unsupported dtype '{dt}'"))),
        });
        if meta.get(name).is_some_and(|v| v == "Int4") {
            elem = ElemType::Int4;
        }
        let dims: Vec<i64> = t["shape"]
            .as_array()
            .ok_or_else(|| e("no shape"))?
            .iter()
            .map(|d| d.as_i64().ok_or_else(|| e("bad dimension")))
            .collect::<Result<_, _>>()?;
        let offs = t["data_offsets"]
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| e("no data_offsets"))?;
        let (b, en) = (
            offs[0].as_u64().ok_or_else(|| e("bad offset"))? as usize,
            offs[1].as_u64().ok_or_else(|| e("bad offset"))? as usize,
        );
        if b > en || en > data.len() {
            return Err(e(&format!(
                "data_offsets [{b}, {en}] outside the {}-byte data area",
                data.len()
            )));
        }
        let shape = ckpt_shape(&dims, elem, en - b).map_err(|m| e(&m))?;
        check_size(elem, &shape, en - b).map_err(|m| e(&m))?;
        let bytes = data.slice(b..en);
        hasher.update(name.as_bytes());
        hasher.update(&bytes);
        out.entries.push(CkptEntry {
            name: name.clone(),
            elem,
            shape,
            data: bytes_data(bytes),
            pieces: 1,
        });
    }
    if let Some(c) = meta.get("crc_num") {
        let want: u64 = c
            .parse()
            .map_err(|_| err(format!("bad crc_num '{c}' in __metadata__")))?;
        let actual = hasher.finalize();
        if want != u64::from(actual) {
            return Err(err(format!(
                "CRC mismatch: __metadata__.crc_num says {want}, the contents give {actual} (the file is corrupted or was modified)"
            )));
        }
        out.crc = Some(actual);
    }
    Ok(out)
}

/// Serialize entries as a protobuf checkpoint (one `Checkpoint` message per piece, like
/// MindSpore). `split` cuts every tensor's bytes into that many pieces (tests of re-joining);
/// `crc` appends the `crc_num` trailer. Used by tests to build checkpoints with known contents.
pub fn write_protobuf(entries: &[(&str, &str, &[i64], &[u8])], split: usize, crc: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, ty, dims, content) in entries {
        let n = split.max(1);
        let step = content.len().div_ceil(n).max(1);
        let chunks: Vec<&[u8]> = if content.is_empty() {
            vec![&content[..]]
        } else {
            content.chunks(step).collect()
        };
        for c in chunks {
            let msg = pb::Checkpoint {
                value: vec![pb::checkpoint::Value {
                    tag: tag.to_string(),
                    value: Some(pb::checkpoint::value::Value::Tensor(pb::TensorProto {
                        dims: dims.to_vec(),
                        tensor_type: ty.to_string(),
                        tensor_content: Bytes::copy_from_slice(c),
                    })),
                }],
            };
            out.extend_from_slice(&msg.encode_to_vec());
        }
    }
    if crc {
        let c = crc32fast::hash(&out);
        out.extend_from_slice(b"crc_num");
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&c.to_be_bytes());
    }
    out
}
