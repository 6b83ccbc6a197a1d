use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use crate::Error;

/// An aligned scratch buffer for [`crate::Model::run`]. Allocate it once (for example with
/// [`crate::Model::workspace`]) and reuse it: running allocates nothing.
///
/// A workspace is not shared between threads while a run is in progress (`run` takes it by
/// `&mut`), so concurrent runs of one model each need their own.
pub struct Workspace {
    /// `None` for an empty workspace (no allocation).
    ptr: Option<NonNull<u8>>,
    size: usize,
    align: usize,
}

// The buffer is plain bytes owned by this value.
unsafe impl Send for Workspace {}
unsafe impl Sync for Workspace {}

impl Workspace {
    /// An empty workspace (enough for models whose `workspace_size` is 0).
    pub fn empty() -> Workspace {
        Workspace {
            ptr: None,
            size: 0,
            align: 1,
        }
    }

    /// A zeroed buffer of `size` bytes aligned to `align` (rounded up to a power of two,
    /// at least 1).
    pub fn new(size: usize, align: usize) -> Result<Workspace, Error> {
        let align = align
            .max(1)
            .checked_next_power_of_two()
            .ok_or_else(|| Error::Workspace(format!("alignment {align} is too large")))?;
        if size == 0 {
            return Ok(Workspace {
                ptr: None,
                size: 0,
                align,
            });
        }
        let layout = Layout::from_size_align(size, align)
            .map_err(|e| Error::Workspace(format!("{size} bytes aligned to {align}: {e}")))?;
        // SAFETY: layout has a nonzero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or_else(|| {
            Error::Workspace(format!("cannot allocate {size} bytes aligned to {align}"))
        })?;
        Ok(Workspace {
            ptr: Some(ptr),
            size,
            align,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Alignment of the buffer in bytes.
    pub fn align(&self) -> usize {
        self.align
    }

    /// Pointer to pass to `run`: null for an empty workspace.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }

    /// The buffer's bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.ptr {
            // SAFETY: we own `size` initialized (zeroed) bytes at `p`.
            Some(p) => unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), self.size) },
            None => &mut [],
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(p) = self.ptr {
            // SAFETY: allocated in `new` with exactly this layout.
            unsafe {
                dealloc(
                    p.as_ptr(),
                    Layout::from_size_align_unchecked(self.size, self.align),
                )
            }
        }
    }
}

/// Element types a zeroed allocation is a valid value of.
pub trait Zeroed: Copy {}
impl Zeroed for u8 {}
impl Zeroed for f32 {}

/// A vector of `n` zeros for `what`, or an error (never an abort) when the memory cannot be
/// allocated. The pages come zeroed from the allocator (`calloc`), so nothing is written
/// here: a huge buffer costs memory only as the model writes it.
pub fn zeroed_vec<T: Zeroed>(n: usize, what: &str) -> Result<Vec<T>, Error> {
    let alloc_err = || Error::Alloc {
        what: what.to_string(),
        bytes: n.saturating_mul(std::mem::size_of::<T>()),
    };
    let layout = Layout::array::<T>(n).map_err(|_| alloc_err())?;
    if layout.size() == 0 {
        return Ok(vec![]);
    }
    // SAFETY: nonzero size; the all-zero bit pattern is a valid `T` (`Zeroed`).
    let p = unsafe { alloc_zeroed(layout) } as *mut T;
    if p.is_null() {
        return Err(alloc_err());
    }
    // SAFETY: allocated by the global allocator with `Layout::array::<T>(n)`, n initialized
    // elements; Vec frees it with the same layout.
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("size", &self.size)
            .field("align", &self.align)
            .finish()
    }
}
