//! Semantics of the TensorFlow-family ops that MindSpore primitives and GraphEngine ops share
//! (GE's op set descends from TensorFlow's): "same" padding, `StridedSlice` with its masks, and
//! reshape targets with `-1`. One implementation for the MindIR and AIR importers.

use kiln_ir::ops::SliceAttrs;

type R<T> = Result<T, String>;

/// MindSpore/TensorFlow "same" padding: output `ceil(in / stride)`, the extra pixel at the end.
pub fn same_pads(input: &[usize], k: &[usize], s: &[usize], d: &[usize]) -> Vec<usize> {
    let mut begin = vec![];
    let mut end = vec![];
    for i in 0..input.len() {
        let out = input[i].div_ceil(s[i].max(1));
        let ext = d[i]
            .saturating_mul(k[i].saturating_sub(1))
            .saturating_add(1);
        let total = out
            .saturating_sub(1)
            .saturating_mul(s[i])
            .saturating_add(ext)
            .saturating_sub(input[i]);
        begin.push(total / 2);
        end.push(total - total / 2);
    }
    begin.extend(end);
    begin
}

/// MindSpore/TensorFlow `StridedSlice` on a static shape: the IR slice and the final shape (after
/// `shrink_axis_mask`). `ellipsis_mask` and `new_axis_mask` are not supported.
pub fn strided_slice(
    shape: &[usize],
    begin: &[i64],
    end: &[i64],
    strides: &[i64],
    masks: [i64; 5],
) -> R<(SliceAttrs, Vec<usize>)> {
    let [bm, em, ellipsis, new_axis, shrink] = masks;
    if ellipsis != 0 || new_axis != 0 {
        return Err("ellipsis_mask and new_axis_mask are not supported".into());
    }
    let n = begin.len();
    if end.len() != n || strides.len() != n || n > shape.len() {
        return Err(format!(
            "begin {begin:?}, end {end:?}, strides {strides:?} do not fit shape {shape:?}"
        ));
    }
    let mut a = SliceAttrs {
        starts: vec![0; shape.len()],
        steps: vec![1; shape.len()],
        sizes: shape.to_vec(),
    };
    let mut out = vec![];
    for (d, &dim) in shape.iter().enumerate() {
        if d >= n {
            out.push(dim);
            continue;
        }
        let dim_i = dim as i64;
        let s = strides[d];
        if s == 0 {
            return Err("stride 0".into());
        }
        let bit = |m: i64| (m >> d) & 1 == 1;
        let norm = |v: i64| if v < 0 { v + dim_i } else { v };
        if bit(shrink) {
            let b = norm(begin[d]);
            if b < 0 || b >= dim_i {
                return Err(format!(
                    "index {} out of range for dim {d} of {shape:?}",
                    begin[d]
                ));
            }
            a.starts[d] = b as usize;
            a.sizes[d] = 1;
            continue;
        }
        let (b, e, size) = if s > 0 {
            let b = if bit(bm) {
                0
            } else {
                norm(begin[d]).clamp(0, dim_i)
            };
            let e = if bit(em) {
                dim_i
            } else {
                norm(end[d]).clamp(0, dim_i)
            };
            (b, e, if e > b { (e - b + s - 1) / s } else { 0 })
        } else {
            let b = if bit(bm) {
                dim_i - 1
            } else {
                norm(begin[d]).clamp(-1, dim_i - 1)
            };
            let e = if bit(em) {
                -1
            } else {
                norm(end[d]).clamp(-1, dim_i - 1)
            };
            (b, e, if b > e { (b - e + (-s) - 1) / (-s) } else { 0 })
        };
        let _ = e;
        a.starts[d] = if size > 0 { b as usize } else { 0 };
        a.steps[d] = s;
        a.sizes[d] = size as usize;
        out.push(size as usize);
    }
    Ok((a, out))
}

/// The StridedSlice mask attributes (TensorFlow's names, kept by MindSpore and GraphEngine), in
/// the order [`strided_slice`] takes them.
pub const STRIDED_SLICE_MASKS: [&str; 5] = [
    "begin_mask",
    "end_mask",
    "ellipsis_mask",
    "new_axis_mask",
    "shrink_axis_mask",
];

/// Reshape target with one `-1` allowed.
pub fn reshape_target(numel: usize, spec: &[i64]) -> R<Vec<usize>> {
    let mut infer = None;
    let mut known: usize = 1;
    let mut out = vec![0; spec.len()];
    for (i, &d) in spec.iter().enumerate() {
        if d == -1 {
            if infer.replace(i).is_some() {
                return Err(format!("shape {spec:?} has more than one -1"));
            }
        } else {
            let u = usize::try_from(d).map_err(|_| format!("bad dimension {d} in {spec:?}"))?;
            known = known.checked_mul(u).ok_or("shape too large")?;
            out[i] = u;
        }
    }
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(format!("cannot reshape {numel} elements to {spec:?}"));
        }
        out[i] = numel / known;
    } else if known != numel {
        return Err(format!("cannot reshape {numel} elements to {spec:?}"));
    }
    Ok(out)
}
