//! ONNX `TensorProto` -> typed constant bytes (through the front-end layer's decoding: raw
//! data and memory-mapped external data are shared, not copied).

use std::path::Path;

use kiln_ir::{ConstData, DType, TensorType};

use super::proto::TensorProto;
use super::proto::tensor_proto::{DataLocation, DataType};
use crate::frontend::data::{self, External, ExternalFiles, RawTensor};

/// ONNX `TensorProto.DataType` code -> kiln dtype (kiln's ABI codes are ONNX's).
pub fn dtype_from_onnx(code: i32) -> Result<DType, String> {
    data::dtype_from_code(code).ok_or_else(|| {
        let name = DataType::try_from(code)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| format!("code {code}"));
        format!("unsupported element type {name}")
    })
}

/// Decode a tensor. `raw_data` is moved out of `t` (it is a window into the model file).
pub fn decode_tensor(
    t: &mut TensorProto,
    base_dir: Option<&Path>,
    ext: &mut ExternalFiles,
) -> Result<(TensorType, ConstData), String> {
    let dtype = dtype_from_onnx(t.data_type())?;
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let external = if t.data_location() == DataLocation::External {
        let mut e = External {
            location: String::new(),
            offset: 0,
            length: None,
        };
        let mut location = None;
        for kv in &t.external_data {
            let parse = |v: &str| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("bad external data {} '{v}'", kv.key()))
            };
            match kv.key() {
                "location" => location = Some(kv.value().to_string()),
                "offset" => e.offset = parse(kv.value())?,
                "length" => e.length = Some(parse(kv.value())?),
                _ => {}
            }
        }
        e.location = location.ok_or("external data without 'location'")?;
        Some(e)
    } else {
        None
    };
    let raw = RawTensor {
        dims: &t.dims,
        raw: t.raw_data.take(),
        floats: &t.float_data,
        doubles: &t.double_data,
        int32s: &t.int32_data,
        int64s: &t.int64_data,
        uint64s: &t.uint64_data,
        external,
    };
    data::decode_tensor(raw, dtype, base_dir, ext)
}
