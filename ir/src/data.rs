//! Constant tensor bytes, shared and immutable.
//!
//! A `ConstData` is a window into a reference-counted byte owner: a `Vec<u8>`, or a memory map of
//! the model file handed over by a front end. Cloning never copies the bytes, so a 1 GB model is
//! not duplicated while it is compiled. A pass that rewrites weights creates a new buffer.

use std::fmt;
use std::sync::Arc;

/// Anything that owns bytes (a `Vec<u8>`, an `memmap2::Mmap`, ...).
pub trait ByteOwner: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl ByteOwner for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

#[derive(Clone)]
pub struct ConstData {
    owner: Arc<dyn ByteOwner>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for ConstData {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl ConstData {
    /// Wrap owned bytes.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        ConstData {
            owner: Arc::new(v),
            offset: 0,
            len,
        }
    }
    /// A window `[offset, offset+len)` of a shared owner. Returns `None` if out of range.
    pub fn from_owner(owner: Arc<dyn ByteOwner>, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > owner.bytes().len() {
            return None;
        }
        Some(ConstData { owner, offset, len })
    }
    pub fn from_f32(v: &[f32]) -> Self {
        Self::from_vec(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn from_i64(v: &[i64]) -> Self {
        Self::from_vec(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn bytes(&self) -> &[u8] {
        &self.owner.bytes()[self.offset..self.offset + self.len]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Decode as little-endian f32 values.
    pub fn to_f32(&self) -> Vec<f32> {
        self.bytes()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    /// Decode as little-endian i64 values.
    pub fn to_i64(&self) -> Vec<i64> {
        self.bytes()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    /// True when both windows hold the same bytes (cheap when they share an owner and range).
    pub fn same_bytes(&self, other: &ConstData) -> bool {
        (Arc::ptr_eq(&self.owner, &other.owner)
            && self.offset == other.offset
            && self.len == other.len)
            || self.bytes() == other.bytes()
    }
}

impl fmt::Debug for ConstData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConstData({} bytes)", self.len)
    }
}
