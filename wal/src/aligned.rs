//! The aligned buffer type: heap memory whose start address and capacity are multiples of
//! [`ALIGN_BYTES`], as O_DIRECT requires of buffers, offsets and lengths.
//!
//! This is one of the two modules of the crate that hold `unsafe` (the other is
//! `uring`, plus the single `fallocate` call in `sys`). The memory is allocated zeroed and
//! is never handed out uninitialised, so every length up to the capacity is a valid slice.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;

/// Alignment of O_DIRECT buffers, file offsets and write lengths: one logical block of the
/// devices we target (4 KiB; devices with 512-byte sectors accept it too).
pub const ALIGN_BYTES: usize = 4096;

/// A growable byte buffer whose address and capacity are multiples of [`ALIGN_BYTES`].
///
/// The capacity is fixed at construction (allocated up front, never reallocated), so a
/// pointer handed to the kernel stays valid for the buffer's lifetime. Bytes between the
/// length and the capacity are always initialised (zero or old contents).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (like a `Vec<u8>`); no interior
// mutability and no shared aliasing, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates a zeroed buffer of at least `capacity_bytes` (rounded up to a multiple of
    /// [`ALIGN_BYTES`], at least one block), with length 0.
    ///
    /// Panics if the allocation fails or the size overflows (an invariant of the caller:
    /// capacities are bounded by configuration).
    pub fn with_capacity(capacity_bytes: usize) -> Self {
        let capacity = align_up(capacity_bytes.max(1), ALIGN_BYTES);
        let layout = Layout::from_size_align(capacity, ALIGN_BYTES)
            .expect("aligned buffer capacity overflows a Layout");
        assert!(layout.size() > 0);
        // SAFETY: the layout has a non-zero size (asserted above) and a power-of-two
        // alignment; `alloc_zeroed` returns either null or a block valid for `capacity`
        // bytes at that alignment, all initialised to zero.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        assert_eq!(ptr.as_ptr() as usize % ALIGN_BYTES, 0);
        AlignedBuf { ptr, capacity, len: 0 }
    }

    /// Capacity in bytes, a multiple of [`ALIGN_BYTES`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Length in bytes of the filled part.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing has been written since the last [`clear`](Self::clear).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still free before the capacity is reached.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    /// Sets the length to 0 (contents are kept in memory; capacity is unchanged).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Sets the length. Every byte up to the capacity is initialised, so this is safe;
    /// panics if `len > capacity`.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "len {len} > capacity {}", self.capacity);
        self.len = len;
    }

    /// The filled part `[0, len)`.
    pub fn as_slice(&self) -> &[u8] {
        &self.full()[..self.len]
    }

    /// The filled part `[0, len)`, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.full_mut()[..len]
    }

    /// The whole capacity `[0, capacity)`, mutable (for encoding in place before
    /// [`set_len`](Self::set_len)).
    pub fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for reads and writes of `capacity` initialised bytes for
        // as long as `self` lives, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    fn full(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for reads of `capacity` initialised bytes while `self`
        // lives; `&self` forbids concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    /// Appends `bytes`; panics if they do not fit in the capacity.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.len;
        let end = start + bytes.len();
        assert!(end <= self.capacity, "aligned buffer overflow: {end} > {}", self.capacity);
        self.full_mut()[start..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Appends `count` zero bytes; panics if they do not fit.
    pub fn extend_zeros(&mut self, count: usize) {
        let start = self.len;
        let end = start + count;
        assert!(end <= self.capacity, "aligned buffer overflow: {end} > {}", self.capacity);
        self.full_mut()[start..end].fill(0);
        self.len = end;
    }

    /// Zero-fills up to the next multiple of [`ALIGN_BYTES`] (nothing if already aligned)
    /// and returns the new length. The capacity is a multiple of the alignment, so this
    /// always fits.
    pub fn pad_to_alignment(&mut self) -> usize {
        let padded = align_up(self.len, ALIGN_BYTES);
        self.extend_zeros(padded - self.len);
        assert_eq!(self.len % ALIGN_BYTES, 0);
        self.len
    }

    /// Raw pointer to the start (aligned to [`ALIGN_BYTES`]).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.capacity, ALIGN_BYTES)
            .expect("layout was valid at allocation");
        // SAFETY: `ptr` was allocated by `alloc_zeroed` with exactly this layout and is
        // freed once, here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub const fn align_up(value: usize, align: usize) -> usize {
    assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_aligned_zeroed_and_pads_to_a_block() {
        let mut buf = AlignedBuf::with_capacity(5000);
        assert_eq!(buf.capacity(), 2 * ALIGN_BYTES);
        assert_eq!(buf.as_ptr() as usize % ALIGN_BYTES, 0);
        buf.extend_from_slice(b"hello");
        assert_eq!(buf.pad_to_alignment(), ALIGN_BYTES);
        assert_eq!(&buf.as_slice()[..5], b"hello");
        assert!(buf.as_slice()[5..].iter().all(|&b| b == 0));
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(buf.pad_to_alignment(), 0);
    }

    #[test]
    #[should_panic(expected = "aligned buffer overflow")]
    fn writing_past_the_capacity_panics() {
        let mut buf = AlignedBuf::with_capacity(ALIGN_BYTES);
        buf.extend_zeros(ALIGN_BYTES + 1);
    }
}
