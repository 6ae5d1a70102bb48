//! The compact binary codec's building blocks, shared by every wire and log format
//! built on requests and batches.
//!
//! Encoding: little-endian fixed-width integers; byte strings and vectors are prefixed
//! with a u32 length; `Option` with a 0/1 byte ([`Reader::flag`]). Decoding is
//! bounds-checked everywhere and never panics: any malformed input (truncated,
//! oversized, trailing bytes) is a [`CoreError::Malformed`] naming what was decoded and
//! the offset. Vector lengths are checked against their `*_MAX` bound and against the
//! bytes left ([`Reader::len`]) before anything is allocated.

use crate::CoreError;

/// Appends `value`, little-endian.
pub fn put_u32(w: &mut Vec<u8>, value: u32) {
    w.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value`, little-endian.
pub fn put_u64(w: &mut Vec<u8>, value: u64) {
    w.extend_from_slice(&value.to_le_bytes());
}

/// Appends a u32 length, then `bytes`. Panics if `bytes` is longer than a u32 can say
/// (every caller bounds its byte strings far below that).
pub fn put_bytes(w: &mut Vec<u8>, bytes: &[u8]) {
    assert!(bytes.len() <= u32::MAX as usize, "byte string too long to encode");
    put_u32(w, bytes.len() as u32);
    w.extend_from_slice(bytes);
}

/// Bounds-checked reader over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`; errors name `what`.
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, offset: 0, what }
    }

    /// The error for malformed input at the current offset.
    pub fn error(&self) -> CoreError {
        CoreError::Malformed { what: self.what, offset: self.offset }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// The next `count` bytes.
    pub fn take(&mut self, count: usize) -> Result<&'a [u8], CoreError> {
        let end = self.offset.checked_add(count).ok_or_else(|| self.error())?;
        if end > self.bytes.len() {
            return Err(self.error());
        }
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, CoreError> {
        Ok(self.take(1)?[0])
    }

    /// A 0/1 byte; anything else is malformed.
    pub fn flag(&mut self) -> Result<bool, CoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error()),
        }
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, CoreError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, CoreError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    /// 32 bytes (a hash, a MAC, a key).
    pub fn array32(&mut self) -> Result<[u8; 32], CoreError> {
        let bytes = self.take(32)?;
        let mut array = [0u8; 32];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// A vector length: at most `max`, and at most what the remaining bytes can hold
    /// with elements of at least `element_bytes_min` each.
    pub fn len(&mut self, max: usize, element_bytes_min: usize) -> Result<usize, CoreError> {
        let count = self.u32()? as usize;
        if count > max || count.saturating_mul(element_bytes_min) > self.remaining() {
            return Err(self.error());
        }
        Ok(count)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], CoreError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(self.error());
        }
        self.take(count)
    }

    /// Ok if every byte was read; trailing bytes are malformed.
    pub fn finish(&self) -> Result<(), CoreError> {
        if self.remaining() == 0 { Ok(()) } else { Err(self.error()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_values_read_back_and_the_reader_ends_exactly() {
        let mut w = Vec::new();
        w.push(1);
        put_u32(&mut w, 7);
        put_u64(&mut w, u64::MAX - 1);
        put_bytes(&mut w, b"abc");
        w.extend_from_slice(&[9; 32]);
        let mut r = Reader::new(&w, "sample");
        assert_eq!(r.flag(), Ok(true));
        assert_eq!(r.u32(), Ok(7));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.bytes(3), Ok(&b"abc"[..]));
        assert_eq!(r.remaining(), 32);
        assert!(r.finish().is_err(), "32 bytes left");
        assert_eq!(r.array32(), Ok([9; 32]));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(r.u8(), Err(CoreError::Malformed { what: "sample", offset: w.len() }));
    }

    #[test]
    fn lengths_beyond_their_bound_or_the_bytes_left_are_malformed_before_allocation() {
        let mut w = Vec::new();
        put_u32(&mut w, 5);
        w.extend_from_slice(&[0; 10]);
        assert!(Reader::new(&w, "v").len(4, 1).is_err(), "above max");
        assert!(Reader::new(&w, "v").len(5, 3).is_err(), "5 * 3 > 10 bytes left");
        assert_eq!(Reader::new(&w, "v").len(5, 2), Ok(5));
        assert!(Reader::new(&w, "v").bytes(4).is_err(), "above max");
        let mut huge = Vec::new();
        put_u32(&mut huge, u32::MAX);
        assert!(Reader::new(&huge, "v").len(usize::MAX, usize::MAX).is_err());
        assert!(Reader::new(&huge, "v").bytes(usize::MAX).is_err(), "truncated");
        assert!(Reader::new(&[2], "v").flag().is_err(), "a flag is 0 or 1");
    }
}
