//! Corruption matrix: a byte flipped anywhere in the headers or payloads of a small log
//! is detected every time. Only damage in the last group (indistinguishable from a torn
//! last write) is cut; anywhere else it is an error naming segment and offset.

use dura_wal::format::{BLOCK_BYTES, GROUP_HEADER_BYTES, GroupHeader, segment_file_name};
use dura_wal::io::DurabilityMode;
use dura_wal::sim::SimStorage;
use dura_wal::{Backend, LogRecord, Wal, WalError, WalOptions};

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        group_bytes_max: 8 * 1024,
        record_bytes_max: 12 * 1024,
        queue_depth_max: 64,
        ..WalOptions::default()
    }
}

fn payload(id: u64) -> Vec<u8> {
    (0..20 + id as usize * 3).map(|i| (i as u64 * 13 + id) as u8).collect()
}

/// Two segments of three groups each (the middle group of each holds two records); the
/// first segment is sealed.
fn build_log() -> SimStorage {
    let disk = SimStorage::new(5);
    let (writer, _) = Wal::open_with_storage(disk.clone(), options()).expect("open");
    let groups: [&[u64]; 6] = [&[1], &[2, 3], &[4], &[5], &[6, 7], &[8]];
    for (index, ids) in groups.iter().enumerate() {
        disk.pause_writes();
        let tickets: Vec<_> =
            ids.iter().map(|&id| writer.append(id, id, &payload(id)).expect("append")).collect();
        disk.resume_writes();
        for ticket in tickets {
            ticket.wait().expect("durable");
        }
        if index == 2 {
            writer.cut_segment(4).expect("cut");
        }
    }
    writer.close().expect("close");
    disk
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Header or record bytes of the group at `group_offset`.
    Live { group_offset: u64, last_group: bool },
    /// Zero padding after a group's records.
    Padding,
}

/// Maps every byte of a segment's groups (and its seal) to its region.
fn regions(bytes: &[u8], segment_seq: u64, is_last_segment: bool) -> Vec<(usize, Region)> {
    let mut out = Vec::new();
    let mut groups = Vec::new();
    let mut pos = 0usize;
    while let Some(h) = GroupHeader::decode(&bytes[pos..pos + GROUP_HEADER_BYTES])
        .filter(|h| h.segment_seq == segment_seq)
    {
        let end = pos + GROUP_HEADER_BYTES + h.records_bytes as usize;
        groups.push((pos, end));
        if h.is_seal() {
            break;
        }
        pos = end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    }
    let last = groups.len() - 1;
    for (index, (start, end)) in groups.iter().enumerate() {
        let last_group = is_last_segment && index == last;
        for at in *start..*end {
            out.push((at, Region::Live { group_offset: *start as u64, last_group }));
        }
        for at in (*end..end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES).step_by(61) {
            out.push((at, Region::Padding));
        }
    }
    out
}

fn expected(ids: std::ops::RangeInclusive<u64>) -> Vec<LogRecord> {
    ids.map(|id| LogRecord { first_agreement_id: id, last_agreement_id: id, payload: payload(id) })
        .collect()
}

#[test]
fn a_flipped_byte_anywhere_is_detected_and_only_the_last_group_is_cut() {
    let base = build_log();
    let mut checked = 0;
    for segment_seq in [1u64, 2] {
        let name = segment_file_name(segment_seq);
        let bytes = base.file_bytes(&name);
        for (at, region) in regions(&bytes, segment_seq, segment_seq == 2) {
            let trial = base.reboot(at as u64);
            trial.corrupt_byte(&name, at, 0x5a);
            let outcome = Wal::open_with_storage(trial, options());
            match (region, outcome) {
                (Region::Padding, Ok((writer, recovered))) => {
                    assert_eq!(
                        recovered.records,
                        expected(1..=8),
                        "padding flip at {segment_seq}:{at}"
                    );
                    writer.close().expect("close");
                }
                (Region::Live { last_group: true, .. }, Ok((writer, recovered))) => {
                    assert_eq!(
                        recovered.records,
                        expected(1..=7),
                        "tail flip at {segment_seq}:{at}"
                    );
                    writer.close().expect("close");
                }
                (
                    Region::Live { group_offset, last_group: false },
                    Err(WalError::Corrupt { segment_seq: s, offset, path, .. }),
                ) => {
                    assert_eq!(
                        (s, offset),
                        (segment_seq, group_offset),
                        "flip at {segment_seq}:{at}"
                    );
                    assert!(path.ends_with(&name));
                }
                (region, Ok((_, recovered))) => panic!(
                    "flip at {segment_seq}:{at} in {region:?} went unnoticed: {} records",
                    recovered.records.len()
                ),
                (region, Err(error)) => {
                    panic!("flip at {segment_seq}:{at} in {region:?}: unexpected {error}")
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} positions checked");
}

#[test]
fn middle_corruption_in_a_real_file_is_an_error_naming_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options =
        WalOptions { mode: DurabilityMode::Fdatasync, backend: Backend::Pwrite, ..options() };
    let (writer, _) = Wal::open(dir.path(), options.clone()).expect("open");
    for id in 1..=3u64 {
        writer.append(id, id, &payload(id)).expect("append").wait().expect("durable");
    }
    writer.close().expect("close");
    // Damage the payload of the second group (at the second block).
    let path = dir.path().join(segment_file_name(1));
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[BLOCK_BYTES + GROUP_HEADER_BYTES + 60] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let error = Wal::open(dir.path(), options).expect_err("corruption must be reported");
    match &error {
        WalError::Corrupt { segment_seq: 1, offset, .. } => assert_eq!(*offset, BLOCK_BYTES as u64),
        other => panic!("unexpected {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("segment 1") && message.contains(&format!("offset {BLOCK_BYTES}")),
        "{message}"
    );
    assert!(message.contains(&segment_file_name(1)), "{message}");
    // Nothing was cut: the damaged file is left as it was for repair.
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
}
