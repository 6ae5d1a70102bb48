//! A byte buffer whose start is aligned to [`PAYLOAD_ALIGN`], without `unsafe`.
//!
//! rkyv's validated `access` refuses a buffer at a misaligned address, and a `Vec<u8>`
//! promises no alignment. Reinterpreting a `Vec<u128>` as bytes needs `unsafe` (or a
//! crate for it); instead this allocates `PAYLOAD_ALIGN - 1` spare bytes and starts the
//! slice at the first aligned address inside. A `Vec`'s heap block never moves while it
//! is not resized, and this type never resizes it but by replacing it.

use crate::format::PAYLOAD_ALIGN;

/// A reusable buffer handing out slices that start at a multiple of [`PAYLOAD_ALIGN`].
#[derive(Debug, Default)]
pub struct AlignedBytes {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBytes {
    /// An empty buffer (allocates nothing).
    pub fn new() -> AlignedBytes {
        AlignedBytes::default()
    }

    /// Sets the length to `len` and returns the bytes to fill: contents are whatever the
    /// buffer held (zero when newly allocated). Allocates only when `len` is more than
    /// any length before, and then exactly `len + PAYLOAD_ALIGN - 1` bytes.
    pub fn resize(&mut self, len: usize) -> &mut [u8] {
        if self.storage.len() < self.start + len || self.storage.is_empty() {
            self.storage = vec![0u8; len + PAYLOAD_ALIGN - 1];
            let misalignment = self.storage.as_ptr().addr() % PAYLOAD_ALIGN;
            self.start = (PAYLOAD_ALIGN - misalignment) % PAYLOAD_ALIGN;
        }
        self.len = len;
        let slice = &mut self.storage[self.start..self.start + len];
        assert_eq!(slice.as_ptr().addr() % PAYLOAD_ALIGN, 0, "aligned start");
        slice
    }

    /// The bytes, starting at an aligned address.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// Length of the bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the length is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_aligned_and_reused() {
        let mut buf = AlignedBytes::new();
        assert!(buf.is_empty());
        for len in [0usize, 1, 15, 16, 17, 4096, 3, 100_000, 5] {
            let slice = buf.resize(len);
            assert_eq!(slice.len(), len);
            assert_eq!(slice.as_ptr().addr() % PAYLOAD_ALIGN, 0);
            slice.fill(0xab);
            assert_eq!(buf.len(), len);
            assert!(buf.as_slice().iter().all(|&b| b == 0xab));
            assert_eq!(buf.as_slice().as_ptr().addr() % PAYLOAD_ALIGN, 0);
        }
        assert_eq!(buf.storage.len(), 100_000 + PAYLOAD_ALIGN - 1, "grown once to the largest");
    }
}
