//! Ascend AIR: GraphEngine's `ge.proto.ModelDef`, the content of an `.air` file and of an OM's
//! MODEL_DEF partition.
//!
//! - [`import`] translates a ModelDef into a [`kiln_ir::Graph`] on the front-end layer: `Data`
//!   ops (by attr `index`), `Const`/`Constant` (`attr["value"].t`, or external weights
//!   `location`/`length` beside a > 2 GB model), `NetOutput` or `GraphDef.output`, `"op:idx"`
//!   edges with `""` for absent optional inputs and `":-1"` control edges, sub-graphs called by
//!   `PartitionedCall` inlined, and the GE op set of MindSpore's exporter and ATC graphs.
//! - [`export`] writes any kiln graph as a ModelDef the way MindSpore's exporter does.
//! - [`decompress`] undoes ATC's attribute-name compression (`om_compress_version`).
//!
//! Two dtype enums meet here: tensor descriptors use the proto enum `DT_*` (`DT_FLOAT = 1`),
//! attributes such as `Cast`'s `dst_type` use C++ `ge::DataType` (`DT_FLOAT = 0`).

pub mod export;
pub mod import;

pub use kiln_target_om::names::{dtype_of_ge, dtype_of_proto, ge_of_dtype, proto_of_dtype};
/// The GraphEngine protobuf types (`targets/om/proto/ge_ir.proto`, shared with the OM back
/// end; `bytes` fields are `bytes::Bytes`: weights stay windows into the memory-mapped file).
pub use kiln_target_om::proto;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use kiln_ir::Graph;
use prost::Message;

use crate::frontend::FrontendError;
use crate::frontend::data::{map_file, model_dir};
use proto::attr_def::Value as AV;
use proto::{AttrDef, ModelDef};

pub use import::AirOptions;

/// Read and import an `.air` file.
pub fn load(path: &Path, opts: &AirOptions) -> Result<Graph, FrontendError> {
    let file = path.display().to_string();
    let md = read(path)?;
    import::import_model(
        &md,
        crate::frontend::Source::new(&file, model_dir(path)),
        opts,
    )
}

/// Import an AIR model from its bytes (`file` names it in errors; external weights are read
/// from `base_dir`, none without one).
pub fn load_bytes(
    bytes: Bytes,
    base_dir: Option<&Path>,
    file: &str,
    opts: &AirOptions,
) -> Result<Graph, FrontendError> {
    let md = decode(bytes, file)?;
    import::import_model(&md, crate::frontend::Source::new(file, base_dir), opts)
}

/// Read an `.air` file as a ModelDef (attribute names decompressed).
pub fn read(path: &Path) -> Result<ModelDef, FrontendError> {
    let file = path.display().to_string();
    let bytes = map_file(path).map_err(|e| FrontendError::io(&file, e))?;
    decode(bytes, &file)
}

/// Decode a serialized ModelDef (an `.air` file, an OM's MODEL_DEF partition) and undo attribute
/// name compression.
pub fn decode(bytes: Bytes, file: &str) -> Result<ModelDef, FrontendError> {
    if bytes.is_empty() {
        return Err(FrontendError::model(file, "empty file: not an AIR model"));
    }
    let mut md =
        ModelDef::decode(bytes).map_err(|e| FrontendError::decode(file, "AIR model", e))?;
    if md.graph.is_empty() {
        return Err(FrontendError::model(
            file,
            "not an AIR model: the ModelDef has no graph",
        ));
    }
    decompress(&mut md).map_err(|m| FrontendError::model(file, m))?;
    Ok(md)
}

/// Undo ATC's attribute-name compression (`ModelCompressManager`): with `om_compress_version`
/// set, op and tensor attribute names are `"\0"` followed by base-127 little-endian digits
/// (each stored + 1) indexing the model's `attr_name_enum`, and the values of names flagged in
/// `attrs_use_string_value` are indices into `attr_value_enum` (`i`, or `list.i` for string
/// lists). Uncompressed models are left as they are.
pub fn decompress(md: &mut ModelDef) -> Result<(), String> {
    let list_s = |k: &str| -> Vec<String> {
        match md.attr.get(k).and_then(|a| a.value.as_ref()) {
            Some(AV::List(l)) => {
                l.s.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            }
            _ => vec![],
        }
    };
    let names = list_s("attr_name_enum");
    if names.is_empty() {
        return Ok(());
    }
    let values = list_s("attr_value_enum");
    let strings: Vec<bool> = match md
        .attr
        .get("attrs_use_string_value")
        .and_then(|a| a.value.as_ref())
    {
        Some(AV::List(l)) => l.b.clone(),
        _ => vec![],
    };
    let dict = Dict {
        names,
        values,
        strings,
    };
    for g in &mut md.graph {
        dict.map(&mut g.attr)?;
        for op in &mut g.op {
            dict.map(&mut op.attr)?;
            for d in op.input_desc.iter_mut().chain(op.output_desc.iter_mut()) {
                dict.map(&mut d.attr)?;
            }
        }
    }
    Ok(())
}

struct Dict {
    names: Vec<String>,
    values: Vec<String>,
    strings: Vec<bool>,
}

impl Dict {
    fn map(&self, attrs: &mut BTreeMap<String, AttrDef>) -> Result<(), String> {
        if !attrs.keys().any(|k| k.starts_with('\0')) {
            return Ok(());
        }
        let old = std::mem::take(attrs);
        for (k, mut v) in old {
            let Some(digits) = k.strip_prefix('\0') else {
                attrs.insert(k, v);
                continue;
            };
            let mut pos: usize = 0;
            let mut scale: usize = 1;
            for c in digits.bytes() {
                let d = usize::from(c)
                    .checked_sub(1)
                    .filter(|&d| d < 127)
                    .ok_or_else(|| format!("corrupt compressed attribute name {k:?}"))?;
                pos = d
                    .checked_mul(scale)
                    .and_then(|x| x.checked_add(pos))
                    .ok_or_else(|| format!("corrupt compressed attribute name {k:?}"))?;
                scale = scale.saturating_mul(127);
            }
            let name = self.names.get(pos).ok_or_else(|| {
                format!(
                    "compressed attribute name {pos} is not in attr_name_enum ({} names)",
                    self.names.len()
                )
            })?;
            if self.strings.get(pos).copied().unwrap_or(false) {
                let lookup = |i: i64| -> Result<Bytes, String> {
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| self.values.get(i))
                        .map(|s| Bytes::from(s.clone().into_bytes()))
                        .ok_or_else(|| {
                            format!("attribute '{name}': value index {i} is not in attr_value_enum")
                        })
                };
                v.value = match v.value.take() {
                    Some(AV::I(i)) => Some(AV::S(lookup(i)?)),
                    Some(AV::List(mut l)) => {
                        l.s = l.i.iter().map(|&i| lookup(i)).collect::<Result<_, _>>()?;
                        l.i.clear();
                        l.val_type =
                            proto::attr_def::list_value::ListValueType::VtListString as i32;
                        Some(AV::List(l))
                    }
                    other => other,
                };
            }
            attrs.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// A ModelDef's summary for `kiln inspect`: graphs, inputs, outputs, op histogram and the ops
/// kiln does not translate.
pub fn describe(md: &ModelDef) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GraphEngine ModelDef '{}' (version {}), {} graph(s)",
        md.name,
        md.version,
        md.graph.len()
    );
    for g in &md.graph {
        let _ = writeln!(s, "graph '{}': {} ops", g.name, g.op.len());
        for op in g.op.iter().filter(|o| o.r#type == "Data") {
            let d = op.output_desc.first().or(op.input_desc.first());
            let (dt, dims, layout) = d.map_or(("?".into(), vec![], ""), |d| {
                (
                    dtype_of_proto(d.dtype)
                        .map(|t| t.name().to_string())
                        .unwrap_or_else(|e| e),
                    d.shape.as_ref().map(|x| x.dim.clone()).unwrap_or_default(),
                    d.layout.as_str(),
                )
            });
            let _ = writeln!(s, "  input  {} {dt}{dims:?} {layout}", op.name);
        }
        for o in &g.output {
            let _ = writeln!(s, "  output {o}");
        }
        if let Some(n) = g.op.iter().find(|o| o.r#type == "NetOutput") {
            let _ = writeln!(
                s,
                "  outputs (NetOutput '{}'): {}",
                n.name,
                n.input.join(", ")
            );
        }
    }
    let _ = writeln!(s, "ops:");
    for (op, k) in import::op_histogram(md) {
        let _ = writeln!(s, "  {k:5}  {op}");
    }
    let bad = import::unsupported_ops(md);
    if bad.is_empty() {
        let _ = writeln!(s, "every op translates to kiln IR");
    } else {
        for (op, nodes) in bad {
            let _ = writeln!(s, "not supported: {op} ({})", nodes.join(", "));
        }
    }
    s
}
