//! Writing `.air` files: the GraphEngine `ModelDef` of a graph (`kiln_target_om::ge`, the
//! IR -> GE op mapping shared with the OM back end) saved as one protobuf, with GE's external
//! weight files for models over 2 GB.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use kiln_ir::Graph;
use prost::Message;

pub use kiln_target_om::ge::{descriptor, export};

use super::proto::attr_def::Value as AV;

type R<T> = Result<T, String>;

fn a_s(s: &str) -> super::proto::AttrDef {
    super::proto::AttrDef {
        value: Some(AV::S(Bytes::from(s.to_string()))),
    }
}
fn a_i(i: i64) -> super::proto::AttrDef {
    super::proto::AttrDef {
        value: Some(AV::I(i)),
    }
}

/// Models whose weights exceed this are written with external weight files (protobuf's 2 GB
/// message limit), as GraphEngine's `SeparateModelDef` does.
pub const EXTERNAL_WEIGHTS_THRESHOLD: usize = (1 << 31) - (1 << 24);

#[derive(Debug, Clone)]
pub struct AirExportOptions {
    /// Weights of more bytes than this in total go to `air_weight/<model>/...` files beside
    /// the `.air` file.
    pub external_threshold: usize,
}

impl Default for AirExportOptions {
    fn default() -> Self {
        AirExportOptions {
            external_threshold: EXTERNAL_WEIGHTS_THRESHOLD,
        }
    }
}

/// Write `g` as an `.air` file, atomically. Weights beyond `opts.external_threshold` bytes in
/// total go to `air_weight/<model>/<Const>_<graph>_<op>_file` beside it (GE's large-model
/// layout), each referenced by the op's `location`/`length` attributes.
pub fn write_file(g: &Graph, path: &Path, opts: &AirExportOptions) -> R<()> {
    let mut md = export(g)?;
    let total: usize = md.graph[0]
        .op
        .iter()
        .filter_map(
            |o| match o.attr.get("value").and_then(|a| a.value.as_ref()) {
                Some(AV::T(t)) => Some(t.data.len()),
                _ => None,
            },
        )
        .sum();
    let mut written: Vec<PathBuf> = vec![];
    let res = (|| -> R<()> {
        if total > opts.external_threshold {
            let dir = path.parent().unwrap_or(Path::new("."));
            let model = kiln_target_cpu::sym(&md.name);
            let rel = Path::new("air_weight").join(&model);
            std::fs::create_dir_all(dir.join(&rel))
                .map_err(|e| format!("{}: {e}", dir.join(&rel).display()))?;
            let gname = kiln_target_cpu::sym(&md.graph[0].name);
            for o in &mut md.graph[0].op {
                let Some(AV::T(t)) = o.attr.get_mut("value").and_then(|a| a.value.as_mut()) else {
                    continue;
                };
                let file = rel.join(format!(
                    "{}_{gname}_{}_file",
                    o.r#type,
                    kiln_target_cpu::sym(&o.name)
                ));
                let full = dir.join(&file);
                kiln_target_cpu::link::write_atomic(&full, &t.data).map_err(|e| e.to_string())?;
                written.push(full);
                let len = t.data.len() as i64;
                t.data = Bytes::new();
                o.attr
                    .insert("location".into(), a_s(&file.to_string_lossy()));
                o.attr.insert("length".into(), a_i(len));
            }
        }
        kiln_target_cpu::link::write_atomic(path, &md.encode_to_vec()).map_err(|e| e.to_string())
    })();
    if res.is_err() {
        for f in written {
            let _ = std::fs::remove_file(f);
        }
    }
    res
}
