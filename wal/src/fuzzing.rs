//! The segment scan that [`crate::Wal::open`] runs on every segment, for the fuzz
//! targets of `dura-fuzz` (feature `fuzzing`). Not an API.

use crate::LogRecord;
use crate::format::{GroupHeader, SEGMENT_BYTES_MIN, decode_record};
use crate::recovery::{Chain, ScanWants, SegmentEnd, find_valid_group_after, scan_segment};

/// Scans `bytes` as segment `segment_seq` (zero-padded to [`SEGMENT_BYTES_MIN`]) the way
/// opening the log does, checks what the scan claims, and returns the records it kept.
///
/// Checked (a panic when one fails): a scan without payloads and one with them agree;
/// agreement ids strictly increase from record to record; a sealed segment's seal, and
/// an open end's later valid group, are valid group headers of this segment where they
/// are said to be.
pub fn scan(bytes: &[u8], segment_seq: u64) -> Vec<LogRecord> {
    let mut padded;
    let bytes = if bytes.len() < SEGMENT_BYTES_MIN {
        padded = bytes.to_vec();
        padded.resize(SEGMENT_BYTES_MIN, 0);
        &padded[..]
    } else {
        bytes
    };
    let mut chain = Chain::default();
    let full =
        scan_segment(bytes, segment_seq, &mut chain, ScanWants { payloads: true, sha256: true });
    let mut chain_counted = Chain::default();
    let counted = scan_segment(
        bytes,
        segment_seq,
        &mut chain_counted,
        ScanWants { payloads: false, sha256: false },
    );
    assert_eq!(full.record_count, counted.record_count, "scans with and without payloads");
    assert_eq!(full.end, counted.end, "scans with and without payloads");
    assert_eq!(chain, chain_counted, "scans with and without payloads");
    assert_eq!(full.records.len() as u64, full.record_count, "every record kept");
    let mut last = None;
    for record in &full.records {
        assert!(record.first_agreement_id <= record.last_agreement_id, "{record:?}");
        if let Some(last) = last {
            assert!(record.first_agreement_id > last, "ids increase: {record:?} after {last}");
        }
        last = Some(record.last_agreement_id);
    }
    assert_eq!(full.last_agreement_id, last, "the scan's last id is its last record's");
    assert_eq!(full.first_agreement_id, full.records.first().map(|r| r.first_agreement_id));
    match full.end {
        SegmentEnd::Sealed { offset } => {
            let header = GroupHeader::decode(&bytes[offset as usize..]).expect("a valid seal");
            assert!(header.is_seal() && header.segment_seq == segment_seq);
            assert_eq!(full.later_valid_group, None);
        }
        SegmentEnd::Open { offset, .. } => {
            assert_eq!(
                full.later_valid_group,
                find_valid_group_after(bytes, segment_seq, offset as usize)
            );
            if let Some(at) = full.later_valid_group {
                assert!(at > offset, "a later group is later");
                let header = GroupHeader::decode(&bytes[at as usize..]).expect("a valid header");
                assert_eq!((header.segment_seq, header.group_offset), (segment_seq, at));
            }
        }
    }
    full.records
}

/// Decodes the record at the start of `bytes` as the scan does; on success, checks
/// that encoding it again gives the same bytes. True when it was accepted.
pub fn record(bytes: &[u8]) -> bool {
    let Ok((header, payload)) = decode_record(bytes) else { return false };
    let mut out = vec![0u8; crate::format::record_bytes(payload.len())];
    let checksum = crate::format::encode_record(
        &mut out,
        header.first_agreement_id,
        header.last_agreement_id,
        header.prev_checksum,
        payload,
    );
    assert_eq!(checksum, header.checksum);
    assert_eq!(&out[..], &bytes[..out.len()], "a record encodes back to its bytes");
    true
}

/// Decodes a group header as the scan does; on success, checks that encoding it again
/// gives the same bytes. True when it was accepted.
pub fn group_header(bytes: &[u8]) -> bool {
    let Some(header) = GroupHeader::decode(bytes) else { return false };
    let mut out = [0u8; crate::format::GROUP_HEADER_BYTES];
    header.encode(&mut out);
    assert_eq!(&out[..], &bytes[..out.len()], "a group header encodes back to its bytes");
    true
}
