//! `TensorProto` -> typed constant bytes, including memory-mapped external data.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kiln_ir::data::ByteOwner;
use kiln_ir::{ConstData, DType, TensorType};

use super::proto::TensorProto;

/// Largest constant accepted (bytes): the IR's size policy. Anything above is treated as corrupt.
use kiln_ir::limits::MAX_TENSOR_BYTES;

/// ONNX `TensorProto.DataType` code -> kiln dtype (kiln's ABI codes are ONNX's).
pub fn dtype_from_onnx(code: i32) -> Result<DType, String> {
    DType::ALL
        .into_iter()
        .find(|d| d.abi_code() == code)
        .ok_or_else(|| {
            let name = super::proto::tensor_proto::DataType::try_from(code)
                .map(|d| d.as_str_name().to_string())
                .unwrap_or_else(|_| format!("code {code}"));
            format!("unsupported element type {name}")
        })
}

/// Checked conversion of ONNX dims to a static shape and its byte size.
pub fn checked_shape(dims: &[i64], dtype: DType) -> Result<(Vec<usize>, usize), String> {
    let mut shape = Vec::with_capacity(dims.len().min(64));
    let mut numel: usize = 1;
    for &d in dims {
        let u = usize::try_from(d).map_err(|_| format!("negative dimension {d} in {dims:?}"))?;
        numel = numel
            .checked_mul(u)
            .ok_or_else(|| format!("shape {dims:?} is too large"))?;
        shape.push(u);
    }
    let bytes = numel
        .checked_mul(dtype.size())
        .filter(|&b| b <= MAX_TENSOR_BYTES)
        .ok_or_else(|| format!("shape {dims:?} is too large"))?;
    Ok((shape, bytes))
}

struct MmapOwner(memmap2::Mmap);

impl ByteOwner for MmapOwner {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

struct EmptyOwner;

impl ByteOwner for EmptyOwner {
    fn bytes(&self) -> &[u8] {
        &[]
    }
}

/// Memory maps of external data files, shared by all tensors that live in them.
#[derive(Default)]
pub struct ExternalFiles {
    maps: HashMap<PathBuf, Arc<dyn ByteOwner>>,
}

impl ExternalFiles {
    fn open(&mut self, base: &Path, location: &str) -> Result<Arc<dyn ByteOwner>, String> {
        let rel = Path::new(location);
        if location.is_empty()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "external data location '{location}' must be a relative path inside the model directory"
            ));
        }
        let path = base.join(rel);
        if let Some(m) = self.maps.get(&path) {
            return Ok(m.clone());
        }
        let f = std::fs::File::open(&path)
            .map_err(|e| format!("cannot open external data '{}': {e}", path.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("cannot stat external data '{}': {e}", path.display()))?
            .len();
        let owner: Arc<dyn ByteOwner> = if len == 0 {
            Arc::new(EmptyOwner)
        } else {
            // SAFETY: the file is mapped read-only; like every memory-mapped model loader we
            // assume it is not truncated or modified while the compiler runs.
            let m = unsafe { memmap2::Mmap::map(&f) }
                .map_err(|e| format!("cannot map external data '{}': {e}", path.display()))?;
            Arc::new(MmapOwner(m))
        };
        self.maps.insert(path, owner.clone());
        Ok(owner)
    }
}

/// Decode a tensor. `raw_data` is moved out of `t` (no copy).
pub fn decode_tensor(
    t: &mut TensorProto,
    base_dir: Option<&Path>,
    ext: &mut ExternalFiles,
) -> Result<(TensorType, ConstData), String> {
    let dtype = dtype_from_onnx(t.data_type())?;
    let (shape, nbytes) = checked_shape(&t.dims, dtype)?;
    let ty = TensorType::new(dtype, shape);
    let numel = ty.numel();
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    if t.data_location() == super::proto::tensor_proto::DataLocation::External {
        let mut location = None;
        let mut offset = 0usize;
        let mut length = None;
        for kv in &t.external_data {
            let parse = |v: &str| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad external data {} '{v}'", kv.key()))
            };
            match kv.key() {
                "location" => location = Some(kv.value().to_string()),
                "offset" => offset = parse(kv.value())?,
                "length" => length = Some(parse(kv.value())?),
                _ => {}
            }
        }
        let location = location.ok_or("external data without 'location'")?;
        let base = base_dir.ok_or_else(|| {
            format!("external data '{location}' needs the model's directory (load from a file)")
        })?;
        let owner = ext.open(base, &location)?;
        let file_len = owner.bytes().len();
        let length = match length {
            Some(l) => l,
            None => file_len.checked_sub(offset).ok_or_else(|| {
                format!(
                    "external data offset {offset} beyond end of '{location}' ({file_len} bytes)"
                )
            })?,
        };
        if length != nbytes {
            return Err(format!(
                "external data '{location}': length {length} (from offset {offset}) does not match type {ty} ({nbytes} bytes)"
            ));
        }
        let data = ConstData::from_owner(owner, offset, length).ok_or_else(|| {
            format!(
                "external data range {offset}+{length} is outside '{location}' ({file_len} bytes)"
            )
        })?;
        return Ok((ty, data));
    }
    if let Some(raw) = t.raw_data.take() {
        if raw.len() != nbytes {
            return Err(format!(
                "raw_data has {} bytes, type {ty} needs {nbytes}",
                raw.len()
            ));
        }
        return Ok((ty, ConstData::from_vec(raw)));
    }
    let count_err = |n: usize| format!("tensor has {n} values, type {ty} needs {numel}");
    let bytes: Vec<u8> = match dtype {
        DType::F32 => {
            if t.float_data.len() != numel {
                return Err(count_err(t.float_data.len()));
            }
            t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        DType::F64 => {
            if t.double_data.len() != numel {
                return Err(count_err(t.double_data.len()));
            }
            t.double_data.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        DType::I64 => {
            if t.int64_data.len() != numel {
                return Err(count_err(t.int64_data.len()));
            }
            t.int64_data.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        DType::U32 | DType::U64 => {
            if t.uint64_data.len() != numel {
                return Err(count_err(t.uint64_data.len()));
            }
            if dtype == DType::U32 {
                t.uint64_data
                    .iter()
                    .flat_map(|&x| (x as u32).to_le_bytes())
                    .collect()
            } else {
                t.uint64_data.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
        }
        DType::I32 | DType::I16 | DType::U16 | DType::I8 | DType::U8 | DType::Bool => {
            if t.int32_data.len() != numel {
                return Err(count_err(t.int32_data.len()));
            }
            let sz = dtype.size();
            t.int32_data
                .iter()
                .flat_map(|&x| x.to_le_bytes().into_iter().take(sz))
                .collect()
        }
        DType::F16 | DType::BF16 => {
            // Stored as raw 16-bit patterns in int32_data.
            if t.int32_data.len() != numel {
                return Err(count_err(t.int32_data.len()));
            }
            t.int32_data
                .iter()
                .flat_map(|&x| (x as u16).to_le_bytes())
                .collect()
        }
    };
    debug_assert_eq!(bytes.len(), nbytes);
    Ok((ty, ConstData::from_vec(bytes)))
}
