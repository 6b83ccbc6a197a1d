//! The one size policy for everything computed from values a model file gives: dimensions,
//! element counts, byte sizes and offsets.
//!
//! Every value type in a graph satisfies [`check_type`]: the verifier checks graph inputs and
//! constants, and [`crate::Op::infer`] checks the inputs it is given and every output type it
//! computes (so front ends, which build nodes through `infer`, and every pass get the check at
//! the node that would break it). Shape rules compute with the checked helpers below, so an
//! attribute near `2^63` is an error, never a wrapped size. Front ends use the same maxima for
//! tensors they read from files before the IR sees them, and the back ends can then compute
//! any element or byte offset inside a tensor, and the sum of a few of them, in `i64` without
//! overflow. The workspace a memory plan places is bounded by [`MAX_WORKSPACE_BYTES`].

use crate::TensorType;

/// The largest rank of any tensor.
pub const MAX_RANK: usize = 32;

/// The largest tensor, in bytes (1 TiB). Also bounds the product of the dimensions with every
/// 0 counted as 1, so no partial product (a stride) of an empty tensor's shape overflows.
pub const MAX_TENSOR_BYTES: usize = 1 << 40;

/// The largest workspace (intermediate tensors and kernel scratch) of a compiled model: 16 TiB.
pub const MAX_WORKSPACE_BYTES: usize = 1 << 44;

/// `product(shape)` when it and the product with zeros counted as 1 are within the limits.
pub fn numel(shape: &[usize]) -> Option<usize> {
    let mut nonzero = 1usize;
    for &d in shape {
        nonzero = nonzero.checked_mul(d.max(1))?;
        if nonzero > MAX_TENSOR_BYTES {
            return None;
        }
    }
    Some(if shape.contains(&0) { 0 } else { nonzero })
}

/// Check one tensor type against the limits: rank, element count and byte size.
pub fn check_type(t: &TensorType) -> Result<(), String> {
    if t.rank() > MAX_RANK {
        return Err(format!(
            "{t} has rank {}, more than the limit of {MAX_RANK}",
            t.rank()
        ));
    }
    let n = numel(&t.shape).ok_or_else(|| too_large(t))?;
    if n.checked_mul(t.dtype.size())
        .is_none_or(|b| b > MAX_TENSOR_BYTES)
    {
        return Err(too_large(t));
    }
    Ok(())
}

fn too_large(t: &TensorType) -> String {
    format!("{t} is larger than the limit of {MAX_TENSOR_BYTES} bytes (1 TiB) for one tensor")
}

/// `a + b`, or an error naming `what`.
pub fn add(a: usize, b: usize, what: &str) -> Result<usize, String> {
    a.checked_add(b)
        .filter(|&v| v <= MAX_TENSOR_BYTES)
        .ok_or_else(|| format!("{what} overflows ({a} + {b})"))
}

/// `a * b`, or an error naming `what`.
pub fn mul(a: usize, b: usize, what: &str) -> Result<usize, String> {
    a.checked_mul(b)
        .filter(|&v| v <= MAX_TENSOR_BYTES)
        .ok_or_else(|| format!("{what} overflows ({a} * {b})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn limits() {
        assert_eq!(numel(&[2, 3]), Some(6));
        assert_eq!(numel(&[]), Some(1));
        assert_eq!(numel(&[0, 1 << 30]), Some(0));
        assert_eq!(numel(&[0, 1 << 30, 1 << 30]), None);
        assert_eq!(numel(&[usize::MAX, 2]), None);
        assert!(check_type(&TensorType::f32(vec![1 << 20, 1 << 18])).is_ok());
        let e = check_type(&TensorType::f32(vec![1 << 20, 1 << 19])).unwrap_err();
        assert!(e.contains("1 TiB"), "{e}");
        assert!(check_type(&TensorType::new(DType::U8, vec![1 << 20, 1 << 20])).is_ok());
        assert!(check_type(&TensorType::f32(vec![1; 33])).is_err());
        assert!(add(usize::MAX, 1, "x").is_err());
        assert!(mul(1 << 30, 1 << 30, "x").is_err());
        assert_eq!(mul(1 << 20, 1 << 20, "x"), Ok(1 << 40));
    }
}
