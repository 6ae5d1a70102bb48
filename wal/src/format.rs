//! The on-disk format of the log. Everything here is little-endian.
//!
//! ## Files
//!
//! A log directory holds segment files named `{segment_seq:020}.wal` (segment sequence
//! numbers are consecutive, starting at 1, never reused) and spare files named
//! `spare-{n:020}.wal` (deleted segments kept for recycling; their contents are never
//! read). Every segment file is prepared at its full length before the writer uses it
//! (pre-zeroed, or a recycled spare with stale contents), so appends overwrite
//! already-written blocks.
//!
//! ## Groups
//!
//! A segment is a sequence of **groups**. A group is what one write of the log writer
//! puts on disk (group commit): it starts on a [`BLOCK_BYTES`] boundary with a
//! [`GROUP_HEADER_BYTES`] group header, continues with its records packed back to back,
//! and is zero-padded up to the next block boundary, where the next group starts. Groups
//! are never rewritten once a write of them completed, so a torn write can only damage the
//! group being written (the tail) and never a record that was reported durable.
//!
//! ```text
//! group header (64 bytes)
//!   0  u64 checksum      xxh3-64 of header bytes [8, 64)
//!   8  u32 magic         GROUP_MAGIC
//!  12  u16 version       FORMAT_VERSION
//!  14  u16 flags         GROUP_FLAG_SEAL: the segment ends here (no records follow)
//!  16  u32 record_count
//!  20  u32 reserved      0
//!  24  u64 segment_seq   the segment this group was written into
//!  32  u64 group_offset  byte offset of this header in the segment
//!  40  u64 records_bytes bytes of records after the header (unpadded)
//!  48  u64 first_agreement_id  of the first record (seal: of the segment; 0 if none)
//!  56  u64 last_agreement_id   of the last record  (seal: of the segment; 0 if none)
//! ```
//!
//! `segment_seq` and `group_offset` make a group valid only in the place it was written:
//! stale groups in a recycled segment (an older `segment_seq`) and leftovers of a torn
//! group that a later write partly overwrote (a different `group_offset`) never pass.
//!
//! ## Records
//!
//! ```text
//! record header (48 bytes), followed by payload_bytes of payload
//!   0  u64 checksum      xxh3-64 of record bytes [8, 48 + payload_bytes)
//!   8  u32 magic         RECORD_MAGIC
//!  12  u16 version       FORMAT_VERSION
//!  14  u16 reserved      0
//!  16  u32 payload_bytes
//!  20  u32 reserved      0
//!  24  u64 first_agreement_id
//!  32  u64 last_agreement_id   >= first_agreement_id
//!  40  u64 prev_checksum the checksum of the previous record of the log (0 for the first)
//! ```
//!
//! Records form a hash chain (`prev_checksum`) across groups and segments, and agreement
//! ids strictly increase from record to record (`first > previous last`). A record's bytes
//! do not depend on where it lies in the file, so they can be encoded before the group's
//! position is known, and two replicas that logged the same records hold the same record
//! bytes (the segment digest hashes only these, see [`crate::SegmentInfo`]).
//!
//! ## Seal
//!
//! When the writer leaves a segment (it is full, or the engine cut it), it first writes a
//! seal: a group header with [`GROUP_FLAG_SEAL`] and no records, at the next group
//! position. Space for it is always reserved: a group never ends in the last block of a
//! segment. Every segment but the last must end with a seal; one that does not is
//! corrupt.
//!
//! ## Recovery: torn tail or corruption?
//!
//! Opening scans each segment group by group. A group is *valid* when its header checks
//! out (checksum, magic, version, `segment_seq`, `group_offset`, bounds) and every record in
//! it checks out (checksum, chain, agreement ids, count, length). The scan of a segment
//! stops at the first position that does not hold a valid group. Then:
//!
//! * if a valid group header of this segment exists at any later block boundary of the
//!   segment, a write after the damaged one completed, so the damage is **corruption**;
//! * if the segment is not sealed and a later segment holds a valid group, it is
//!   **corruption** too;
//! * otherwise the stop is the log's tail: everything from the stop on is cut (a torn
//!   last write, or zeros/stale bytes of a prepared segment). The writer continues at the
//!   stop position, so its next write overwrites the damaged group.
//!
//! One write is in flight at a time and each completes (durably) before the next starts,
//! so only the last write can be torn. A write torn in any pattern of 512-byte sectors
//! leaves no valid header at a later block boundary (its only header is at its start), so
//! a tear is never mistaken for corruption. Corruption of the very last group is
//! indistinguishable from a tear and is cut. A payload crafted to contain a valid group
//! header for this segment at the right offset could, after a tear, make recovery report
//! corruption where there is none; it can never make recovery accept a wrong record.

use xxhash_rust::xxh3::xxh3_64;

use crate::aligned::ALIGN_BYTES;

/// Granularity at which a device may tear a write.
pub const SECTOR_BYTES: usize = 512;
/// Alignment of every group (and of O_DIRECT I/O).
pub const BLOCK_BYTES: usize = ALIGN_BYTES;
/// Size of a group header.
pub const GROUP_HEADER_BYTES: usize = 64;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 48;
/// Magic of a group header ("dWg1").
pub const GROUP_MAGIC: u32 = u32::from_le_bytes(*b"dWg1");
/// Magic of a record header ("dWr1").
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"dWr1");
/// Version of this format.
pub const FORMAT_VERSION: u16 = 1;
/// Group flag: a seal, the last group of a segment.
pub const GROUP_FLAG_SEAL: u16 = 1;
/// Largest payload a record can describe (its length field is a u32).
pub const PAYLOAD_BYTES_LIMIT: usize = u32::MAX as usize;
/// Smallest segment: a group block plus the reserved seal block.
pub const SEGMENT_BYTES_MIN: usize = 2 * BLOCK_BYTES;

const _: () = assert!(BLOCK_BYTES.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(GROUP_HEADER_BYTES + RECORD_HEADER_BYTES <= SECTOR_BYTES);
const _: () =
    assert!(GROUP_HEADER_BYTES.is_multiple_of(8) && RECORD_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES));

/// File name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// File name of spare `n`.
pub fn spare_file_name(n: u64) -> String {
    format!("spare-{n:020}.wal")
}

/// Parses a segment file name back to its sequence number.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses a spare file name back to its number.
pub fn parse_spare_file_name(name: &str) -> Option<u64> {
    parse_segment_file_name(name.strip_prefix("spare-")?)
}

fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}
fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}
fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// The decoded fields of a group header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeader {
    /// [`GROUP_FLAG_SEAL`] or 0.
    pub flags: u16,
    /// Records in the group.
    pub record_count: u32,
    /// Segment the group belongs to.
    pub segment_seq: u64,
    /// Offset of the header in its segment.
    pub group_offset: u64,
    /// Bytes of records after the header.
    pub records_bytes: u64,
    /// First agreement id covered (0 if none).
    pub first_agreement_id: u64,
    /// Last agreement id covered (0 if none).
    pub last_agreement_id: u64,
}

impl GroupHeader {
    /// True for a seal.
    pub fn is_seal(&self) -> bool {
        self.flags & GROUP_FLAG_SEAL != 0
    }

    /// Writes the header (checksum included) into `out[..GROUP_HEADER_BYTES]`.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..GROUP_HEADER_BYTES];
        put_u32(out, 8, GROUP_MAGIC);
        put_u16(out, 12, FORMAT_VERSION);
        put_u16(out, 14, self.flags);
        put_u32(out, 16, self.record_count);
        put_u32(out, 20, 0);
        put_u64(out, 24, self.segment_seq);
        put_u64(out, 32, self.group_offset);
        put_u64(out, 40, self.records_bytes);
        put_u64(out, 48, self.first_agreement_id);
        put_u64(out, 56, self.last_agreement_id);
        let checksum = xxh3_64(&out[8..]);
        put_u64(out, 0, checksum);
    }

    /// Decodes a header from `bytes` (at least [`GROUP_HEADER_BYTES`] long), checking
    /// checksum, magic, version and flags; `None` when any fails.
    pub fn decode(bytes: &[u8]) -> Option<GroupHeader> {
        let bytes = bytes.get(..GROUP_HEADER_BYTES)?;
        if get_u32(bytes, 8) != GROUP_MAGIC || get_u16(bytes, 12) != FORMAT_VERSION {
            return None;
        }
        if get_u64(bytes, 0) != xxh3_64(&bytes[8..]) {
            return None;
        }
        let header = GroupHeader {
            flags: get_u16(bytes, 14),
            record_count: get_u32(bytes, 16),
            segment_seq: get_u64(bytes, 24),
            group_offset: get_u64(bytes, 32),
            records_bytes: get_u64(bytes, 40),
            first_agreement_id: get_u64(bytes, 48),
            last_agreement_id: get_u64(bytes, 56),
        };
        if header.flags & !GROUP_FLAG_SEAL != 0 || get_u32(bytes, 20) != 0 {
            return None;
        }
        Some(header)
    }

    /// True when the bytes carry this format's group magic for `segment_seq` at
    /// `group_offset`, whatever the checksum says: a damaged group rather than zeros or
    /// stale bytes (used only to report what was cut).
    pub fn looks_like_ours(bytes: &[u8], segment_seq: u64, group_offset: u64) -> bool {
        bytes.len() >= GROUP_HEADER_BYTES
            && get_u32(bytes, 8) == GROUP_MAGIC
            && get_u64(bytes, 24) == segment_seq
            && get_u64(bytes, 32) == group_offset
    }
}

/// The decoded fields of a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record's own checksum.
    pub checksum: u64,
    /// Payload length.
    pub payload_bytes: u32,
    /// First agreement id covered.
    pub first_agreement_id: u64,
    /// Last agreement id covered.
    pub last_agreement_id: u64,
    /// Checksum of the previous record.
    pub prev_checksum: u64,
}

/// Size on disk of a record with `payload_bytes` of payload.
pub const fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes
}

/// Encodes a record into `out[..record_bytes(payload.len())]` and returns its checksum.
///
/// Panics when `out` is too short, `last < first`, or the payload exceeds
/// [`PAYLOAD_BYTES_LIMIT`] (caller invariants).
pub fn encode_record(
    out: &mut [u8],
    first_agreement_id: u64,
    last_agreement_id: u64,
    prev_checksum: u64,
    payload: &[u8],
) -> u64 {
    assert!(last_agreement_id >= first_agreement_id);
    let payload_bytes = u32::try_from(payload.len()).expect("payload fits the u32 length field");
    let out = &mut out[..record_bytes(payload.len())];
    put_u32(out, 8, RECORD_MAGIC);
    put_u16(out, 12, FORMAT_VERSION);
    put_u16(out, 14, 0);
    put_u32(out, 16, payload_bytes);
    put_u32(out, 20, 0);
    put_u64(out, 24, first_agreement_id);
    put_u64(out, 32, last_agreement_id);
    put_u64(out, 40, prev_checksum);
    out[RECORD_HEADER_BYTES..].copy_from_slice(payload);
    let checksum = xxh3_64(&out[8..]);
    put_u64(out, 0, checksum);
    checksum
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDefect {
    /// Fewer bytes than a header, or than the header's payload length.
    Truncated,
    /// Wrong magic, version or reserved field.
    NotARecord,
    /// The checksum does not match.
    Checksum,
    /// `last_agreement_id < first_agreement_id`.
    IdRange,
}

/// Decodes and verifies the record at the start of `bytes` (its checksum, magic, version,
/// id range), returning its header and payload.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), RecordDefect> {
    let header = bytes.get(..RECORD_HEADER_BYTES).ok_or(RecordDefect::Truncated)?;
    if get_u32(header, 8) != RECORD_MAGIC
        || get_u16(header, 12) != FORMAT_VERSION
        || get_u16(header, 14) != 0
        || get_u32(header, 20) != 0
    {
        return Err(RecordDefect::NotARecord);
    }
    let payload_bytes = get_u32(header, 16);
    let total = record_bytes(payload_bytes as usize);
    let record = bytes.get(..total).ok_or(RecordDefect::Truncated)?;
    let checksum = get_u64(header, 0);
    if checksum != xxh3_64(&record[8..]) {
        return Err(RecordDefect::Checksum);
    }
    let parsed = RecordHeader {
        checksum,
        payload_bytes,
        first_agreement_id: get_u64(header, 24),
        last_agreement_id: get_u64(header, 32),
        prev_checksum: get_u64(header, 40),
    };
    if parsed.last_agreement_id < parsed.first_agreement_id {
        return Err(RecordDefect::IdRange);
    }
    Ok((parsed, &record[RECORD_HEADER_BYTES..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_any_flipped_byte_is_rejected() {
        let payload = b"decided batch";
        let mut buf = vec![0u8; record_bytes(payload.len())];
        let checksum = encode_record(&mut buf, 7, 9, 0xabcd, payload);
        let (header, back) = decode_record(&buf).expect("valid");
        assert_eq!(header.checksum, checksum);
        assert_eq!((header.first_agreement_id, header.last_agreement_id), (7, 9));
        assert_eq!(header.prev_checksum, 0xabcd);
        assert_eq!(back, payload);
        for at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x40;
            assert!(decode_record(&bad).is_err(), "flip at {at} accepted");
        }
        assert_eq!(decode_record(&buf[..buf.len() - 1]), Err(RecordDefect::Truncated));
    }

    #[test]
    fn group_header_round_trips_and_any_flipped_byte_is_rejected() {
        let header = GroupHeader {
            flags: 0,
            record_count: 3,
            segment_seq: 12,
            group_offset: 8192,
            records_bytes: 999,
            first_agreement_id: 4,
            last_agreement_id: 6,
        };
        let mut buf = [0u8; GROUP_HEADER_BYTES];
        header.encode(&mut buf);
        assert_eq!(GroupHeader::decode(&buf), Some(header));
        assert!(GroupHeader::looks_like_ours(&buf, 12, 8192));
        for at in 0..buf.len() {
            let mut bad = buf;
            bad[at] ^= 0x01;
            assert_eq!(GroupHeader::decode(&bad), None, "flip at {at} accepted");
        }
        assert_eq!(GroupHeader::decode(&[0u8; GROUP_HEADER_BYTES]), None);
    }

    #[test]
    fn file_names_parse_back() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_spare_file_name(&spare_file_name(7)), Some(7));
        assert_eq!(parse_segment_file_name(&spare_file_name(7)), None);
        assert_eq!(parse_segment_file_name("42.wal"), None);
    }
}
