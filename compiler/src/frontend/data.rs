//! Bytes from model files: memory-mapped files, external data, tensor decoding and the size
//! checks every importer applies before it allocates anything a file asks for.
//!
//! Model files are memory-mapped and decoded into prost messages whose `bytes` fields are
//! `bytes::Bytes` windows into the map, so a weight becomes a [`ConstData`] that shares the map
//! (no copy); only weights given as typed lists (`float_data`, ...) are converted into owned bytes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use kiln_ir::data::ByteOwner;
use kiln_ir::{ConstData, DType, TensorType};

/// Largest tensor accepted (bytes) and largest rank: the IR's size policy
/// (`kiln_ir::limits`); anything larger is treated as corrupt.
pub use kiln_ir::limits::{MAX_RANK, MAX_TENSOR_BYTES};

struct MmapOwner(memmap2::Mmap);

impl AsRef<[u8]> for MmapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A `Bytes` window as a `ConstData` owner (no copy).
struct BytesOwner(Bytes);

impl ByteOwner for BytesOwner {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A constant sharing `b`'s storage.
pub fn bytes_data(b: Bytes) -> ConstData {
    let len = b.len();
    ConstData::from_owner(Arc::new(BytesOwner(b)), 0, len)
        .unwrap_or_else(|| ConstData::from_vec(vec![]))
}

/// Memory-map a file read-only, as `Bytes` (an empty file gives empty bytes).
pub fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: mapped read-only; like every memory-mapped model loader we assume the file is not
    // truncated or modified while the compiler runs.
    let m = unsafe { memmap2::Mmap::map(&f) }?;
    Ok(Bytes::from_owner(MmapOwner(m)))
}

/// The directory a model's relative paths (external data) are resolved against.
pub fn model_dir(path: &Path) -> Option<&Path> {
    path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    })
}

/// kiln dtype of an ONNX / MindIR `TensorProto.DataType` code (1..16 are kiln's ABI codes).
pub fn dtype_from_code(code: i32) -> Option<DType> {
    DType::ALL.into_iter().find(|d| d.abi_code() == code)
}

/// Checked conversion of file-given dims to a static shape and its byte size: negative
/// (dynamic) dims, ranks over [`MAX_RANK`] and sizes over [`MAX_TENSOR_BYTES`] are errors.
pub fn checked_shape(dims: &[i64], dtype: DType) -> Result<(Vec<usize>, usize), String> {
    if dims.len() > MAX_RANK {
        return Err(format!(
            "rank {} is too large (limit {MAX_RANK})",
            dims.len()
        ));
    }
    let mut shape = Vec::with_capacity(dims.len());
    let mut numel: usize = 1;
    for &d in dims {
        let u = usize::try_from(d)
            .map_err(|_| format!("dynamic or negative dimension {d} in {dims:?}"))?;
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

/// Memory maps of external data files, shared by all tensors that live in them. Locations must
/// be relative paths inside the model's directory (no `..`, no absolute paths).
#[derive(Default)]
pub struct ExternalFiles {
    maps: HashMap<PathBuf, Bytes>,
}

impl ExternalFiles {
    /// The whole file `location` (relative to `base`), mapped once.
    pub fn open(&mut self, base: &Path, location: &str) -> Result<Bytes, String> {
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
        let m = map_file(&path)
            .map_err(|e| format!("cannot open external data '{}': {e}", path.display()))?;
        self.maps.insert(path, m.clone());
        Ok(m)
    }

    /// `len` bytes at `offset` of `location` (`len` `None`: `nbytes`), which must be exactly
    /// `nbytes` and inside the file.
    pub fn slice(
        &mut self,
        base: Option<&Path>,
        ext: &External,
        nbytes: usize,
    ) -> Result<Bytes, String> {
        let base = base.ok_or_else(|| {
            format!(
                "external data '{}' needs the model's directory (load from a file)",
                ext.location
            )
        })?;
        let m = self.open(base, &ext.location)?;
        let off = usize::try_from(ext.offset)
            .map_err(|_| format!("negative external data offset {}", ext.offset))?;
        let len = match ext.length {
            Some(l) => {
                usize::try_from(l).map_err(|_| format!("negative external data length {l}"))?
            }
            None => nbytes,
        };
        if len != nbytes {
            return Err(format!(
                "external data '{}': length {len} (from offset {off}) does not match the tensor's {nbytes} bytes",
                ext.location
            ));
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= m.len())
            .ok_or_else(|| {
                format!(
                    "external data [{off}, {off}+{len}) is outside '{}' ({} bytes)",
                    ext.location,
                    m.len()
                )
            })?;
        Ok(m.slice(off..end))
    }
}

/// Where a tensor's bytes live outside the model file.
#[derive(Debug, Clone)]
pub struct External {
    pub location: String,
    pub offset: i64,
    pub length: Option<i64>,
}

/// A tensor as model files store it, whatever the format: dims, element type, and its data as
/// raw little-endian bytes, typed lists (ONNX conventions: 8/16-bit ints, bools and 16-bit
/// float bit patterns in `int32s`, u32/u64 in `uint64s`) or external data.
#[derive(Debug, Default)]
pub struct RawTensor<'t> {
    pub dims: &'t [i64],
    pub raw: Option<Bytes>,
    pub floats: &'t [f32],
    pub doubles: &'t [f64],
    pub int32s: &'t [i32],
    pub int64s: &'t [i64],
    pub uint64s: &'t [u64],
    pub external: Option<External>,
}

/// Decode a tensor of element type `dtype` into a typed constant; raw and external bytes are
/// shared, not copied. Every size is checked against the data present before anything is
/// allocated.
pub fn decode_tensor(
    t: RawTensor,
    dtype: DType,
    base_dir: Option<&Path>,
    ext: &mut ExternalFiles,
) -> Result<(TensorType, ConstData), String> {
    let (shape, nbytes) = checked_shape(t.dims, dtype)?;
    let ty = TensorType::new(dtype, shape);
    let numel = ty.numel();
    if let Some(e) = &t.external {
        return Ok((ty, bytes_data(ext.slice(base_dir, e, nbytes)?)));
    }
    if let Some(raw) = t.raw {
        if raw.len() != nbytes {
            return Err(format!(
                "raw data has {} bytes, type {ty} needs {nbytes}",
                raw.len()
            ));
        }
        return Ok((ty, bytes_data(raw)));
    }
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }
    // one typed value per element, checked before converting
    let have = match dtype {
        DType::F32 => t.floats.len(),
        DType::F64 => t.doubles.len(),
        DType::I64 => t.int64s.len(),
        DType::U64 | DType::U32 => t.uint64s.len(),
        _ => t.int32s.len(),
    };
    if have != numel {
        if have == 0 {
            return Err(format!("tensor {ty} holds no data"));
        }
        return Err(format!("tensor has {have} values, type {ty} needs {numel}"));
    }
    let bytes = match dtype {
        DType::F32 => le(t.floats, f32::to_le_bytes),
        DType::F64 => le(t.doubles, f64::to_le_bytes),
        DType::I64 => le(t.int64s, i64::to_le_bytes),
        DType::U64 => le(t.uint64s, u64::to_le_bytes),
        DType::U32 => le(t.uint64s, |x| (x as u32).to_le_bytes()),
        DType::I32 => le(t.int32s, i32::to_le_bytes),
        DType::F16 | DType::BF16 | DType::I16 | DType::U16 => {
            le(t.int32s, |x| (x as u16).to_le_bytes())
        }
        DType::I8 | DType::U8 | DType::Bool => le(t.int32s, |x| [x as u8]),
    };
    Ok((ty, ConstData::from_vec(bytes)))
}
