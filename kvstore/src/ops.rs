//! The binary encoding of SCKV-Store operations and replies.
//!
//! Operation: one tag byte, then fields; each byte string is a `u32` little-endian length
//! and the bytes.
//!
//! | tag | operation | fields |
//! |---|---|---|
//! | 1 | put | key, value |
//! | 2 | get | key |
//! | 3 | delete | key |
//! | 4 | cas | key, expected (flag byte 0 = absent, 1 = present + bytes), new value |
//! | 5 | scan | start key, end (flag byte 0 = none, 1 = present + key), `u32` limit, `u32` reply_bytes_max |
//!
//! Reply: one tag byte: 0 done (put), 1 absent, 2 value + bytes, 3 true, 4 false,
//! 5 invalid + UTF-8 reason, 6 range: `u32` entry count, each entry's key and value,
//! then the continuation (flag byte 0 = none, 1 = present + key). Decoders return
//! errors on any malformed input, never panic, and reject trailing bytes.
//!
//! A scan returns the keys in `[start, end)` (no end: to the last key) in key order,
//! at most `limit` of them, and stops early once the entries would pass
//! `reply_bytes_max` bytes (each entry counts `4 + key + 4 + value`), except that the
//! first entry is always returned (it fit the put that stored it, so it fits a reply).
//! When it stops before the end of the range, the reply names the first key not
//! returned: "more from key K"; a scan from K continues it.

use dura_engine::protocol::message::OPERATION_BYTES_MAX;

/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Bytes a put adds around its key and value: tag and two lengths.
pub const PUT_OVERHEAD_BYTES: usize = 1 + 4 + 4;
/// Longest value, in bytes: what a put with the longest key can carry under the
/// protocol's operation bound. A cluster's own bound is usually lower
/// (`ClusterConfig::operation_bound`: frames, log records); [`crate::KvClient`] checks
/// it before sending.
pub const VALUE_BYTES_MAX: usize = OPERATION_BYTES_MAX - PUT_OVERHEAD_BYTES - KEY_BYTES_MAX;

const _: () = assert!(PUT_OVERHEAD_BYTES + KEY_BYTES_MAX + VALUE_BYTES_MAX <= OPERATION_BYTES_MAX);

const TAG_PUT: u8 = 1;
const TAG_GET: u8 = 2;
const TAG_DELETE: u8 = 3;
const TAG_CAS: u8 = 4;
const TAG_SCAN: u8 = 5;

/// Most entries one scan returns.
pub const SCAN_LIMIT_MAX: u32 = 65_536;
/// Largest `reply_bytes_max` a scan may ask for: replies stay well under the smallest
/// frame bound a cluster's operations get.
pub const SCAN_REPLY_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Bytes one scan entry counts besides its key and value: two lengths.
pub const SCAN_ENTRY_OVERHEAD_BYTES: usize = 4 + 4;

/// A malformed or out-of-bounds operation or reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside a field.
    #[error("truncated input: {0}")]
    Truncated(&'static str),
    /// An unknown tag byte.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Operation or reply.
        what: &'static str,
        /// The byte.
        tag: u8,
    },
    /// A key over [`KEY_BYTES_MAX`].
    #[error("key of {0} bytes is over the bound of {KEY_BYTES_MAX}")]
    KeyTooLong(usize),
    /// A value over [`VALUE_BYTES_MAX`].
    #[error("value of {0} bytes is over the bound of {VALUE_BYTES_MAX}")]
    ValueTooLong(usize),
    /// An operation whose encoding is over the protocol's `OPERATION_BYTES_MAX` (a cas
    /// with two long values).
    #[error("operation of {0} bytes is over the protocol's bound of {OPERATION_BYTES_MAX}")]
    OperationTooLong(usize),
    /// Bytes left after a complete operation.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// Something else is wrong (bad flag, bad UTF-8).
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// One operation, borrowing its bytes from the encoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp<'a> {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// Read `key`.
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Set `key` to `new` if its current value is `expected` (None = absent).
    Cas {
        /// The key.
        key: &'a [u8],
        /// The value the key must hold (None: the key must be absent).
        expected: Option<&'a [u8]>,
        /// The new value.
        new: &'a [u8],
    },
    /// Read the keys in `[start, end)` in order (see the module docs for the bounds).
    Scan {
        /// First key of the range.
        start: &'a [u8],
        /// The key after the range (None: to the last key).
        end: Option<&'a [u8]>,
        /// Most entries to return, 1..=[`SCAN_LIMIT_MAX`].
        limit: u32,
        /// Most entry bytes to return (beyond the first entry), at most
        /// [`SCAN_REPLY_BYTES_MAX`].
        reply_bytes_max: u32,
    },
}

/// One page of a scan: entries in key order, and where to continue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// (key, value) pairs in key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first key of the range not returned, when the limit or the byte bound cut
    /// the scan short: scan again from it to continue.
    pub more: Option<Vec<u8>>,
}

/// A reply to one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvReply {
    /// A put was applied.
    Done,
    /// The value of a get (None: absent).
    Value(Option<Vec<u8>>),
    /// Delete: whether the key existed. Cas: whether it swapped.
    Flag(bool),
    /// The operation was malformed; nothing changed.
    Invalid(String),
    /// A scan's entries.
    Range(ScanPage),
}

fn check_key(key: &[u8]) -> Result<(), CodecError> {
    if key.len() > KEY_BYTES_MAX { Err(CodecError::KeyTooLong(key.len())) } else { Ok(()) }
}

fn check_value(value: &[u8]) -> Result<(), CodecError> {
    if value.len() > VALUE_BYTES_MAX { Err(CodecError::ValueTooLong(value.len())) } else { Ok(()) }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl KvOp<'_> {
    /// Length of the encoding, in bytes.
    pub fn encoded_len(&self) -> usize {
        match *self {
            KvOp::Put { key, value } => PUT_OVERHEAD_BYTES + key.len() + value.len(),
            KvOp::Get { key } | KvOp::Delete { key } => 1 + 4 + key.len(),
            KvOp::Cas { key, expected, new } => {
                1 + 4 + key.len() + 1 + expected.map_or(0, |e| 4 + e.len()) + 4 + new.len()
            }
            KvOp::Scan { start, end, .. } => {
                1 + 4 + start.len() + 1 + end.map_or(0, |e| 4 + e.len()) + 4 + 4
            }
        }
    }

    /// Checks the key and value bounds, and the whole operation's.
    pub fn validate(&self) -> Result<(), CodecError> {
        match *self {
            KvOp::Put { key, value } => {
                check_key(key)?;
                check_value(value)?;
            }
            KvOp::Get { key } | KvOp::Delete { key } => check_key(key)?,
            KvOp::Cas { key, expected, new } => {
                check_key(key)?;
                if let Some(expected) = expected {
                    check_value(expected)?;
                }
                check_value(new)?;
            }
            KvOp::Scan { start, end, limit, reply_bytes_max } => {
                check_key(start)?;
                if let Some(end) = end {
                    check_key(end)?;
                }
                if !(1..=SCAN_LIMIT_MAX).contains(&limit) {
                    return Err(CodecError::Malformed("scan limit is not within 1..=65536"));
                }
                if reply_bytes_max > SCAN_REPLY_BYTES_MAX {
                    return Err(CodecError::Malformed("scan reply_bytes_max is over 4 MiB"));
                }
            }
        }
        let length = self.encoded_len();
        if length > OPERATION_BYTES_MAX {
            return Err(CodecError::OperationTooLong(length));
        }
        Ok(())
    }

    /// Appends the encoding to `out`, after checking bounds.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.validate()?;
        match *self {
            KvOp::Put { key, value } => {
                out.push(TAG_PUT);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            KvOp::Get { key } => {
                out.push(TAG_GET);
                put_bytes(out, key);
            }
            KvOp::Delete { key } => {
                out.push(TAG_DELETE);
                put_bytes(out, key);
            }
            KvOp::Cas { key, expected, new } => {
                out.push(TAG_CAS);
                put_bytes(out, key);
                match expected {
                    None => out.push(0),
                    Some(expected) => {
                        out.push(1);
                        put_bytes(out, expected);
                    }
                }
                put_bytes(out, new);
            }
            KvOp::Scan { start, end, limit, reply_bytes_max } => {
                out.push(TAG_SCAN);
                put_bytes(out, start);
                match end {
                    None => out.push(0),
                    Some(end) => {
                        out.push(1);
                        put_bytes(out, end);
                    }
                }
                out.extend_from_slice(&limit.to_le_bytes());
                out.extend_from_slice(&reply_bytes_max.to_le_bytes());
            }
        }
        Ok(())
    }

    /// The encoding, after checking bounds.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        debug_assert_eq!(out.len(), self.encoded_len());
        Ok(out)
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let (&first, rest) = self.0.split_first().ok_or(CodecError::Truncated(what))?;
        self.0 = rest;
        Ok(first)
    }

    fn bytes(&mut self, what: &'static str, bound: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < 4 {
            return Err(CodecError::Truncated(what));
        }
        let (length, rest) = self.0.split_at(4);
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        if length > bound {
            return Err(if bound == KEY_BYTES_MAX {
                CodecError::KeyTooLong(length)
            } else {
                CodecError::ValueTooLong(length)
            });
        }
        if rest.len() < length {
            return Err(CodecError::Truncated(what));
        }
        let (bytes, rest) = rest.split_at(length);
        self.0 = rest;
        Ok(bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        if self.0.len() < 4 {
            return Err(CodecError::Truncated(what));
        }
        let (bytes, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn finish(&self) -> Result<(), CodecError> {
        if self.0.is_empty() { Ok(()) } else { Err(CodecError::Trailing(self.0.len())) }
    }
}

/// Decodes one operation; never panics.
pub fn decode_op(input: &[u8]) -> Result<KvOp<'_>, CodecError> {
    let mut cursor = Cursor(input);
    let op = match cursor.byte("tag")? {
        TAG_PUT => {
            let key = cursor.bytes("key", KEY_BYTES_MAX)?;
            let value = cursor.bytes("value", VALUE_BYTES_MAX)?;
            KvOp::Put { key, value }
        }
        TAG_GET => KvOp::Get { key: cursor.bytes("key", KEY_BYTES_MAX)? },
        TAG_DELETE => KvOp::Delete { key: cursor.bytes("key", KEY_BYTES_MAX)? },
        TAG_CAS => {
            let key = cursor.bytes("key", KEY_BYTES_MAX)?;
            let expected = match cursor.byte("expected flag")? {
                0 => None,
                1 => Some(cursor.bytes("expected", VALUE_BYTES_MAX)?),
                _ => return Err(CodecError::Malformed("cas expected flag is not 0 or 1")),
            };
            let new = cursor.bytes("new value", VALUE_BYTES_MAX)?;
            KvOp::Cas { key, expected, new }
        }
        TAG_SCAN => {
            let start = cursor.bytes("start key", KEY_BYTES_MAX)?;
            let end = match cursor.byte("end flag")? {
                0 => None,
                1 => Some(cursor.bytes("end key", KEY_BYTES_MAX)?),
                _ => return Err(CodecError::Malformed("scan end flag is not 0 or 1")),
            };
            let limit = cursor.u32("limit")?;
            let reply_bytes_max = cursor.u32("reply_bytes_max")?;
            let op = KvOp::Scan { start, end, limit, reply_bytes_max };
            op.validate()?;
            op
        }
        tag => return Err(CodecError::UnknownTag { what: "operation", tag }),
    };
    cursor.finish()?;
    Ok(op)
}

impl KvReply {
    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            KvReply::Done => out.push(0),
            KvReply::Value(None) => out.push(1),
            KvReply::Value(Some(value)) => {
                out.push(2);
                put_bytes(out, value);
            }
            KvReply::Flag(true) => out.push(3),
            KvReply::Flag(false) => out.push(4),
            KvReply::Invalid(reason) => {
                out.push(5);
                put_bytes(out, reason.as_bytes());
            }
            KvReply::Range(page) => {
                out.push(6);
                out.extend_from_slice(&(page.entries.len() as u32).to_le_bytes());
                for (key, value) in &page.entries {
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
                match &page.more {
                    None => out.push(0),
                    Some(key) => {
                        out.push(1);
                        put_bytes(out, key);
                    }
                }
            }
        }
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes a reply; never panics.
    pub fn decode(input: &[u8]) -> Result<KvReply, CodecError> {
        let mut cursor = Cursor(input);
        let reply = match cursor.byte("reply tag")? {
            0 => KvReply::Done,
            1 => KvReply::Value(None),
            2 => KvReply::Value(Some(cursor.bytes("value", VALUE_BYTES_MAX)?.to_vec())),
            3 => KvReply::Flag(true),
            4 => KvReply::Flag(false),
            5 => {
                let reason = cursor.bytes("reason", VALUE_BYTES_MAX)?;
                KvReply::Invalid(
                    String::from_utf8(reason.to_vec())
                        .map_err(|_| CodecError::Malformed("reason is not UTF-8"))?,
                )
            }
            6 => {
                let count = cursor.u32("entry count")?;
                if count > SCAN_LIMIT_MAX {
                    return Err(CodecError::Malformed("scan reply holds over 65536 entries"));
                }
                // Each entry takes at least its two lengths: never reserve more than
                // the input can hold.
                let room = cursor.0.len() / SCAN_ENTRY_OVERHEAD_BYTES;
                let mut entries = Vec::with_capacity((count as usize).min(room));
                for _ in 0..count {
                    let key = cursor.bytes("entry key", KEY_BYTES_MAX)?.to_vec();
                    let value = cursor.bytes("entry value", VALUE_BYTES_MAX)?.to_vec();
                    entries.push((key, value));
                }
                let more = match cursor.byte("more flag")? {
                    0 => None,
                    1 => Some(cursor.bytes("more key", KEY_BYTES_MAX)?.to_vec()),
                    _ => return Err(CodecError::Malformed("scan more flag is not 0 or 1")),
                };
                KvReply::Range(ScanPage { entries, more })
            }
            tag => return Err(CodecError::UnknownTag { what: "reply", tag }),
        };
        cursor.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_round_trips() {
        let ops = [
            KvOp::Put { key: b"k", value: b"v" },
            KvOp::Get { key: b"" },
            KvOp::Delete { key: b"key" },
            KvOp::Cas { key: b"k", expected: None, new: b"n" },
            KvOp::Cas { key: b"k", expected: Some(b"old"), new: b"" },
            KvOp::Scan { start: b"a", end: None, limit: 1, reply_bytes_max: 0 },
            KvOp::Scan { start: b"", end: Some(b"zz"), limit: SCAN_LIMIT_MAX, reply_bytes_max: 9 },
        ];
        for op in ops {
            let bytes = op.encode().expect("in bounds");
            assert_eq!(bytes.len(), op.encoded_len());
            assert_eq!(decode_op(&bytes).expect("decodes"), op);
        }
    }

    #[test]
    fn every_reply_round_trips() {
        let replies = [
            KvReply::Done,
            KvReply::Value(None),
            KvReply::Value(Some(b"x".to_vec())),
            KvReply::Flag(true),
            KvReply::Flag(false),
            KvReply::Invalid("why".into()),
            KvReply::Range(ScanPage::default()),
            KvReply::Range(ScanPage {
                entries: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())],
                more: Some(b"c".to_vec()),
            }),
        ];
        for reply in replies {
            assert_eq!(KvReply::decode(&reply.encode()).expect("decodes"), reply);
        }
    }

    #[test]
    fn truncations_and_trailing_bytes_are_errors_not_panics() {
        let bytes =
            KvOp::Cas { key: b"key", expected: Some(b"old"), new: b"new" }.encode().expect("ok");
        for cut in 0..bytes.len() {
            assert!(decode_op(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_op(&longer), Err(CodecError::Trailing(1)));
        assert!(matches!(decode_op(&[9]), Err(CodecError::UnknownTag { tag: 9, .. })));
        let scan = |limit, reply_bytes_max| {
            KvOp::Scan { start: b"a", end: None, limit, reply_bytes_max }.encode()
        };
        assert!(matches!(scan(0, 1), Err(CodecError::Malformed(_))));
        assert!(matches!(scan(SCAN_LIMIT_MAX + 1, 1), Err(CodecError::Malformed(_))));
        assert!(matches!(scan(1, SCAN_REPLY_BYTES_MAX + 1), Err(CodecError::Malformed(_))));
        // A forged scan with limit 0 is refused by the decoder too.
        let mut forged = scan(1, 1).expect("in bounds");
        let at = forged.len() - 8;
        forged[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(decode_op(&forged), Err(CodecError::Malformed(_))));
        // A reply claiming 65536 entries in 9 bytes is refused without allocating them.
        let mut reply = vec![6];
        reply.extend_from_slice(&SCAN_LIMIT_MAX.to_le_bytes());
        reply.extend_from_slice(&[0; 4]);
        assert!(KvReply::decode(&reply).is_err());
        // A length field claiming 4 GiB is refused without allocating.
        assert!(decode_op(&[TAG_GET, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn oversized_keys_and_values_are_refused_on_both_ends() {
        let key = vec![0u8; KEY_BYTES_MAX + 1];
        assert_eq!(
            KvOp::Get { key: &key }.encode(),
            Err(CodecError::KeyTooLong(KEY_BYTES_MAX + 1))
        );
        let value = vec![0u8; VALUE_BYTES_MAX + 1];
        assert!(matches!(
            KvOp::Put { key: b"k", value: &value }.encode(),
            Err(CodecError::ValueTooLong(_))
        ));
        let half = vec![0u8; VALUE_BYTES_MAX / 2 + KEY_BYTES_MAX];
        assert!(matches!(
            KvOp::Cas { key: b"k", expected: Some(&half), new: &half }.encode(),
            Err(CodecError::OperationTooLong(_))
        ));
        let mut forged = vec![TAG_GET];
        forged.extend_from_slice(&((KEY_BYTES_MAX + 1) as u32).to_le_bytes());
        forged.extend_from_slice(&key);
        assert_eq!(decode_op(&forged), Err(CodecError::KeyTooLong(KEY_BYTES_MAX + 1)));
    }

    #[test]
    fn pseudo_random_garbage_never_panics_the_decoders() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = (state % 24) as usize;
            let bytes: Vec<u8> = (0..length).map(|i| (state >> (i % 8 * 8)) as u8 % 7).collect();
            let _ = decode_op(&bytes);
            let _ = KvReply::decode(&bytes);
        }
    }
}
