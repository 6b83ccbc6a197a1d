//! Binding a checkpoint to a graph (`--weights`): every checkpoint tensor whose name equals the
//! name of a constant in the graph (a MindIR parameter, an ONNX initializer) replaces that
//! constant's bytes.
//!
//! Policy: a dtype or shape mismatch is an error naming the parameter; optimizer state
//! (`moments.*`, `learning_rate`, `global_step`, ...) is ignored with a note; any other checkpoint
//! entry that matches nothing is a warning; graph constants the checkpoint does not mention keep
//! the model's values (reported as a note).

use std::collections::HashMap;

use kiln_ir::{Graph, ValueDef};

use super::ckpt::{Checkpoint, ElemType};

/// What a binding did.
#[derive(Debug, Clone, Default)]
pub struct BindReport {
    /// Constants replaced by checkpoint tensors.
    pub bound: Vec<String>,
    /// Bound constants that no live node reads (folded away at import): their new value has no
    /// effect on the compiled model.
    pub bound_unused: Vec<String>,
    /// Optimizer state and training counters, ignored.
    pub optimizer: Vec<String>,
    /// Checkpoint entries that match no graph constant (and are not optimizer state).
    pub unmatched: Vec<String>,
    /// Live graph constants with no checkpoint entry (they keep the model's values).
    pub not_in_checkpoint: Vec<String>,
}

impl BindReport {
    /// Human-readable lines for stderr (`warning:` / `note:`).
    pub fn messages(&self) -> Vec<String> {
        let list = |v: &[String]| {
            let mut s = v.iter().take(12).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 12 {
                s += &format!(", ... ({} more)", v.len() - 12);
            }
            s
        };
        let mut m = vec![format!(
            "note: bound {} parameters from the checkpoint",
            self.bound.len()
        )];
        if !self.optimizer.is_empty() {
            m.push(format!(
                "note: ignored {} optimizer-state entries: {}",
                self.optimizer.len(),
                list(&self.optimizer)
            ));
        }
        if !self.unmatched.is_empty() {
            m.push(format!(
                "warning: {} checkpoint entries match no parameter of the model: {}",
                self.unmatched.len(),
                list(&self.unmatched)
            ));
        }
        if !self.bound_unused.is_empty() {
            m.push(format!(
                "warning: {} bound parameters are not read by the compiled graph (folded at import), so their checkpoint values have no effect: {}",
                self.bound_unused.len(),
                list(&self.bound_unused)
            ));
        }
        if !self.not_in_checkpoint.is_empty() {
            m.push(format!(
                "note: {} model constants are not in the checkpoint and keep the model's values: {}",
                self.not_in_checkpoint.len(),
                list(&self.not_in_checkpoint)
            ));
        }
        m
    }
}

/// Is this checkpoint entry optimizer state or a training counter rather than a weight?
pub fn is_optimizer_state(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "moments.",
        "moment1.",
        "moment2.",
        "accum.",
        "adam_m.",
        "adam_v.",
        "mean_grad.",
        "mean_square.",
        "vhat.",
    ];
    const NAMES: &[&str] = &[
        "learning_rate",
        "momentum",
        "global_step",
        "beta1_power",
        "beta2_power",
        "epoch_num",
        "step_num",
        "scale_sense",
        "loss_scale",
        "current_iterator_step",
        "last_overflow_iterator_step",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Replace the graph's constants by the checkpoint's tensors of the same names.
pub fn bind(g: &mut Graph, ck: &Checkpoint) -> Result<BindReport, String> {
    let consts: HashMap<String, usize> = g
        .values
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v.def, ValueDef::Const(_)))
        .map(|(i, v)| (v.name.clone(), i))
        .collect();
    let live: std::collections::HashSet<usize> =
        g.live_consts().into_iter().map(|v| v.index()).collect();
    let mut r = BindReport::default();
    let mut errors = Vec::new();
    let mut bound_ids = std::collections::HashSet::new();
    for e in &ck.entries {
        let Some(&vi) = consts.get(&e.name) else {
            if is_optimizer_state(&e.name) {
                r.optimizer.push(e.name.clone());
            } else {
                r.unmatched.push(e.name.clone());
            }
            continue;
        };
        if e.elem == ElemType::Str {
            errors.push(format!(
                "parameter '{}': the checkpoint holds a string",
                e.name
            ));
            continue;
        }
        let (ty, data) = match e.to_tensor() {
            Ok(t) => t,
            Err(m) => {
                errors.push(m);
                continue;
            }
        };
        let want = &g.values[vi].ty;
        if want.dtype != ty.dtype || want.shape != ty.shape {
            errors.push(format!(
                "parameter '{}': the model has {}{:?}, the checkpoint {} {:?}",
                e.name,
                want.dtype,
                want.shape,
                e.elem.ms_name(),
                e.shape
            ));
            continue;
        }
        g.values[vi].def = ValueDef::Const(data);
        bound_ids.insert(vi);
        r.bound.push(e.name.clone());
        if !live.contains(&vi) {
            r.bound_unused.push(e.name.clone());
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "checkpoint does not fit the model: {}",
            errors.join("; ")
        ));
    }
    let mut rest: Vec<usize> = live
        .into_iter()
        .filter(|i| !bound_ids.contains(i))
        .collect();
    rest.sort_unstable();
    r.not_in_checkpoint = rest.into_iter().map(|i| g.values[i].name.clone()).collect();
    Ok(r)
}
