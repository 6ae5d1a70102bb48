//! Verifying segments on open (see the format description in [`crate::format`](mod@crate::format) for the
//! torn-tail/corruption rule).

use sha2::{Digest, Sha256};

use crate::aligned::align_up;
use crate::format::{
    BLOCK_BYTES, GROUP_HEADER_BYTES, GroupHeader, RecordDefect, SEGMENT_BYTES_MIN, decode_record,
    record_bytes,
};

/// A verified record, as returned for replay and state transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// First agreement id covered.
    pub first_agreement_id: u64,
    /// Last agreement id covered (`>= first_agreement_id`).
    pub last_agreement_id: u64,
    /// The payload, as appended.
    pub payload: Vec<u8>,
}

/// Where the chain stands after the records verified so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Chain {
    /// Checksum of the last record; `None` accepts any `prev_checksum` (the oldest
    /// surviving segment, whose predecessor may have been deleted).
    pub prev_checksum: Option<u64>,
    /// Last agreement id of the last record.
    pub last_agreement_id: Option<u64>,
}

/// How the scan of one segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentEnd {
    /// A valid seal at `offset`.
    Sealed { offset: u64 },
    /// No valid group at `offset`; `damaged` when the bytes there look like one of this
    /// segment's groups that failed verification (a torn or corrupt write) rather than
    /// zeros or stale bytes.
    Open { offset: u64, damaged: bool, reason: &'static str },
}

/// Result of scanning one segment.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub records: Vec<LogRecord>,
    pub record_count: u64,
    pub first_agreement_id: Option<u64>,
    pub last_agreement_id: Option<u64>,
    pub end: SegmentEnd,
    /// A valid group header of this segment at a block boundary after an `Open` end.
    pub later_valid_group: Option<u64>,
    /// SHA-256 over the live records' bytes (headers and payloads), when asked for.
    pub sha256: Option<[u8; 32]>,
}

/// What to keep while scanning.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanWants {
    pub payloads: bool,
    pub sha256: bool,
}

fn group_records_fit(header: &GroupHeader, offset: usize, len: usize) -> bool {
    // A group never occupies the last block, which is reserved for the seal.
    let end = (offset as u64)
        .checked_add(GROUP_HEADER_BYTES as u64)
        .and_then(|e| e.checked_add(header.records_bytes));
    match end {
        Some(end) if header.is_seal() => end as usize <= len,
        Some(end) => end <= (len - BLOCK_BYTES) as u64,
        None => false,
    }
}

/// Scans segment `segment_seq` from its start, verifying every group and record and
/// extending `chain`. Panics if `bytes` is shorter than [`SEGMENT_BYTES_MIN`] (callers
/// check the file length first).
pub(crate) fn scan_segment(
    bytes: &[u8],
    segment_seq: u64,
    chain: &mut Chain,
    wants: ScanWants,
) -> SegmentScan {
    assert!(bytes.len() >= SEGMENT_BYTES_MIN);
    let len = bytes.len() - bytes.len() % BLOCK_BYTES;
    let mut scan = SegmentScan {
        records: Vec::new(),
        record_count: 0,
        first_agreement_id: None,
        last_agreement_id: None,
        end: SegmentEnd::Open { offset: 0, damaged: false, reason: "" },
        later_valid_group: None,
        sha256: None,
    };
    let mut hasher = wants.sha256.then(Sha256::new);
    let mut pos = 0usize;
    loop {
        if pos + BLOCK_BYTES > len {
            scan.end =
                SegmentEnd::Open { offset: pos as u64, damaged: false, reason: "end of file" };
            break;
        }
        let raw = &bytes[pos..pos + GROUP_HEADER_BYTES];
        let header = GroupHeader::decode(raw).filter(|h| {
            h.segment_seq == segment_seq
                && h.group_offset == pos as u64
                && group_records_fit(h, pos, len)
        });
        let Some(header) = header else {
            let damaged = GroupHeader::looks_like_ours(raw, segment_seq, pos as u64);
            scan.end =
                SegmentEnd::Open { offset: pos as u64, damaged, reason: "invalid group header" };
            break;
        };
        if header.is_seal() {
            if header.record_count == 0 && header.records_bytes == 0 {
                scan.end = SegmentEnd::Sealed { offset: pos as u64 };
            } else {
                scan.end = SegmentEnd::Open {
                    offset: pos as u64,
                    damaged: true,
                    reason: "malformed seal",
                };
            }
            break;
        }
        let records_start = pos + GROUP_HEADER_BYTES;
        let records_end = records_start + header.records_bytes as usize;
        match verify_group(&bytes[records_start..records_end], &header, *chain) {
            Ok(parsed) => {
                for (first, last, checksum, start, end) in parsed {
                    let record = &bytes[records_start + start..records_start + end];
                    if let Some(hasher) = hasher.as_mut() {
                        hasher.update(record);
                    }
                    if wants.payloads {
                        scan.records.push(LogRecord {
                            first_agreement_id: first,
                            last_agreement_id: last,
                            payload: record[crate::format::RECORD_HEADER_BYTES..].to_vec(),
                        });
                    }
                    scan.record_count += 1;
                    scan.first_agreement_id.get_or_insert(first);
                    scan.last_agreement_id = Some(last);
                    chain.prev_checksum = Some(checksum);
                    chain.last_agreement_id = Some(last);
                }
                pos = align_up(records_end, BLOCK_BYTES);
            }
            Err(reason) => {
                scan.end = SegmentEnd::Open { offset: pos as u64, damaged: true, reason };
                break;
            }
        }
    }
    if let SegmentEnd::Open { offset, .. } = scan.end {
        scan.later_valid_group = find_valid_group_after(bytes, segment_seq, offset as usize);
    }
    scan.sha256 = hasher.map(|h| h.finalize().into());
    scan
}

/// Verifies the records of one group against its header and the chain; returns
/// `(first, last, checksum, start, end)` of each record relative to `records`.
#[allow(clippy::type_complexity)]
fn verify_group(
    records: &[u8],
    header: &GroupHeader,
    mut chain: Chain,
) -> Result<Vec<(u64, u64, u64, usize, usize)>, &'static str> {
    // The count is the header's claim: the records' bytes bound what it can hold (a
    // header with a valid checksum may still claim billions).
    let records_max = records.len() / crate::format::RECORD_HEADER_BYTES;
    let mut parsed = Vec::with_capacity((header.record_count as usize).min(records_max));
    let mut at = 0usize;
    while at < records.len() {
        let (record, payload) = decode_record(&records[at..]).map_err(|defect| match defect {
            RecordDefect::Truncated => "record runs past its group",
            RecordDefect::NotARecord => "not a record header",
            RecordDefect::Checksum => "record checksum mismatch",
            RecordDefect::IdRange => "record id range reversed",
        })?;
        if let Some(prev) = chain.prev_checksum
            && record.prev_checksum != prev
        {
            return Err("record does not chain to the previous record");
        }
        if let Some(last) = chain.last_agreement_id
            && record.first_agreement_id <= last
        {
            return Err("agreement ids do not increase");
        }
        let end = at + record_bytes(payload.len());
        parsed.push((
            record.first_agreement_id,
            record.last_agreement_id,
            record.checksum,
            at,
            end,
        ));
        chain.prev_checksum = Some(record.checksum);
        chain.last_agreement_id = Some(record.last_agreement_id);
        at = end;
    }
    if parsed.len() != header.record_count as usize || parsed.is_empty() {
        return Err("record count differs from the group header");
    }
    if parsed.first().map(|r| r.0) != Some(header.first_agreement_id)
        || parsed.last().map(|r| r.1) != Some(header.last_agreement_id)
    {
        return Err("agreement ids differ from the group header");
    }
    Ok(parsed)
}

/// The first block boundary after `after` holding a valid group header of this segment
/// placed where it was written.
pub(crate) fn find_valid_group_after(bytes: &[u8], segment_seq: u64, after: usize) -> Option<u64> {
    let len = bytes.len() - bytes.len() % BLOCK_BYTES;
    let mut pos = align_up(after + 1, BLOCK_BYTES);
    while pos + GROUP_HEADER_BYTES <= len {
        if let Some(h) = GroupHeader::decode(&bytes[pos..pos + GROUP_HEADER_BYTES])
            && h.segment_seq == segment_seq
            && h.group_offset == pos as u64
        {
            return Some(pos as u64);
        }
        pos += BLOCK_BYTES;
    }
    None
}

/// True when the segment holds any valid group header of its own anywhere.
pub(crate) fn holds_any_valid_group(bytes: &[u8], segment_seq: u64) -> Option<u64> {
    if bytes.len() < GROUP_HEADER_BYTES {
        return None;
    }
    if let Some(h) = GroupHeader::decode(&bytes[..GROUP_HEADER_BYTES])
        && h.segment_seq == segment_seq
        && h.group_offset == 0
    {
        return Some(0);
    }
    find_valid_group_after(bytes, segment_seq, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{GroupHeader, encode_record};
    use crate::sim::SimRng;

    const SEGMENT: usize = 8 * BLOCK_BYTES;

    /// A segment holding `groups` groups of 1..=3 records each; returns it and its records.
    fn segment(seq: u64, groups: u64, rng: &mut SimRng) -> (Vec<u8>, Vec<LogRecord>) {
        let mut bytes = vec![0u8; SEGMENT];
        let mut records = Vec::new();
        let mut prev = 0u64;
        let mut id = 1u64;
        let mut pos = 0usize;
        for _ in 0..groups {
            let start = pos;
            let mut at = pos + GROUP_HEADER_BYTES;
            let count = 1 + rng.below(3) as u32;
            let first = id;
            for _ in 0..count {
                let payload: Vec<u8> = (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect();
                prev = encode_record(&mut bytes[at..], id, id, prev, &payload);
                at += record_bytes(payload.len());
                records.push(LogRecord { first_agreement_id: id, last_agreement_id: id, payload });
                id += 1;
            }
            GroupHeader {
                flags: 0,
                record_count: count,
                segment_seq: seq,
                group_offset: start as u64,
                records_bytes: (at - start - GROUP_HEADER_BYTES) as u64,
                first_agreement_id: first,
                last_agreement_id: id - 1,
            }
            .encode(&mut bytes[start..]);
            pos = align_up(at, BLOCK_BYTES);
        }
        (bytes, records)
    }

    #[test]
    fn scanning_garbage_or_damaged_segments_never_panics_and_returns_only_a_verified_prefix() {
        let mut rng = SimRng::new(42);
        for round in 0..400 {
            let (mut bytes, records) = segment(3, 1 + rng.below(5), &mut rng);
            match round % 3 {
                // Random byte damage.
                0 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(SEGMENT as u64) as usize;
                        bytes[at] = rng.next_u64() as u8;
                    }
                }
                // A random run of garbage.
                1 => {
                    let at = rng.below(SEGMENT as u64) as usize;
                    let end = (at + rng.below(600) as usize).min(SEGMENT);
                    for byte in &mut bytes[at..end] {
                        *byte = rng.next_u64() as u8;
                    }
                }
                // Pure garbage.
                _ => bytes.iter_mut().for_each(|b| *b = rng.next_u64() as u8),
            }
            let mut chain = Chain::default();
            let scan =
                scan_segment(&bytes, 3, &mut chain, ScanWants { payloads: true, sha256: true });
            assert!(scan.records.len() <= records.len());
            assert_eq!(&records[..scan.records.len()], &scan.records[..], "round {round}");
        }
    }

    /// Found by the fuzz target `wal_segment` (seed 1, input 2859): a group header with
    /// a valid checksum claiming 16,711,681 records over 380 bytes made the scan reserve
    /// room for all of them (668 MB); with `u32::MAX` the allocation fails and aborts
    /// the process. The records' bytes bound the reservation now.
    #[test]
    fn a_group_claiming_billions_of_records_reserves_for_what_its_bytes_hold() {
        for record_count in [0x00ff_0001, u32::MAX] {
            let mut bytes = vec![0u8; SEGMENT];
            let checksum = encode_record(&mut bytes[GROUP_HEADER_BYTES..], 4, 4, 0, &[7; 332]);
            GroupHeader {
                flags: 0,
                record_count,
                segment_seq: 1,
                group_offset: 0,
                records_bytes: 380,
                first_agreement_id: 4,
                last_agreement_id: 4,
            }
            .encode(&mut bytes);
            assert_ne!(checksum, 0);
            let scan = scan_segment(
                &bytes,
                1,
                &mut Chain::default(),
                ScanWants { payloads: true, sha256: false },
            );
            assert!(scan.records.is_empty(), "the count does not match: nothing verified");
            assert!(matches!(
                scan.end,
                SegmentEnd::Open { offset: 0, damaged: true, reason }
                    if reason == "record count differs from the group header"
            ));
        }
    }

    #[test]
    fn a_segment_scans_back_exactly_and_stale_sequence_numbers_are_not_ours() {
        let mut rng = SimRng::new(7);
        let (bytes, records) = segment(5, 4, &mut rng);
        let mut chain = Chain::default();
        let scan = scan_segment(&bytes, 5, &mut chain, ScanWants { payloads: true, sha256: false });
        assert_eq!(scan.records, records);
        assert!(matches!(scan.end, SegmentEnd::Open { damaged: false, .. }));
        assert_eq!(scan.later_valid_group, None);
        // The same bytes read as segment 6 (a recycled file) hold nothing.
        let scan = scan_segment(
            &bytes,
            6,
            &mut Chain::default(),
            ScanWants { payloads: true, sha256: false },
        );
        assert!(scan.records.is_empty());
        assert_eq!(holds_any_valid_group(&bytes, 6), None);
        assert_eq!(holds_any_valid_group(&bytes, 5), Some(0));
    }
}
