//! One conformance suite, run against every storage: the simulated disk, and the real
//! io_uring and `pwrite` write paths in each durability mode on a temporary directory;
//! and against both writer modes: background threads, and the stepped writer the
//! simulator drives (the suite steps it where a thread would write).

use std::path::Path;

use dura_wal::io::DurabilityMode;
use dura_wal::sim::SimStorage;
use dura_wal::{
    Backend, FsStorage, LogRecord, LogWriter, ResolvedBackend, Storage, Ticket, Wal, WalError,
    WalOptions, WriterThreads, probe_io_uring,
};

fn small_options() -> WalOptions {
    WalOptions {
        segment_bytes: 256 * 1024,
        group_bytes_max: 16 * 1024,
        record_bytes_max: 64 * 1024,
        queue_depth_max: 128,
        spare_segments_max: 2,
        ..WalOptions::default()
    }
}

fn payload(id: u64) -> Vec<u8> {
    let len = (id as usize * 7919) % 3000;
    (0..len).map(|i| (i as u64 ^ id) as u8).collect()
}

fn record(id: u64) -> LogRecord {
    LogRecord { first_agreement_id: id, last_agreement_id: id, payload: payload(id) }
}

/// Appends a record; a stepped writer whose open group is full writes a step first
/// (a background append waits for room by itself).
fn append<S: Storage>(
    writer: &LogWriter<S>,
    first_agreement_id: u64,
    last_agreement_id: u64,
    payload: &[u8],
) -> Result<Ticket, WalError> {
    loop {
        match writer.append(first_agreement_id, last_agreement_id, payload) {
            Err(WalError::GroupFull { .. }) => {
                writer.write_step().expect("step to make room");
            }
            other => return other,
        }
    }
}

/// Waits until `ticket` is durable; a stepped writer is synced (stepped) first, since
/// nothing else writes for it.
fn wait_durable<S: Storage>(writer: &LogWriter<S>, ticket: &Ticket) {
    writer.sync().expect("sync");
    ticket.wait().expect("durable");
}

/// Appends ids `range` (one record each) and waits for all of them.
fn append_all<S: Storage>(writer: &LogWriter<S>, range: std::ops::RangeInclusive<u64>) {
    let tickets: Vec<_> =
        range.map(|id| append(writer, id, id, &payload(id)).expect("append")).collect();
    writer.sync().expect("sync");
    for ticket in tickets {
        ticket.wait().expect("durable");
    }
}

/// Runs the whole suite; `boot` opens storage over the same (persistent) directory.
fn conformance_suite<S: Storage>(boot: &dyn Fn() -> S, options: WalOptions) {
    appended_records_come_back_in_order_after_reopen(boot, options.clone());
    a_record_larger_than_a_group_goes_out_alone(boot, options.clone());
    agreement_ids_must_strictly_increase(boot, options.clone());
    cut_segments_are_sealed_and_expose_ids_digest_and_records(boot, options.clone());
    deleted_segments_are_recycled_and_their_stale_records_never_return(boot, options.clone());
    durable_notifications_end_at_the_last_durable_point(boot, options);
}

fn appended_records_come_back_in_order_after_reopen<S: Storage>(
    boot: &dyn Fn() -> S,
    options: WalOptions,
) {
    let (writer, recovered) = Wal::open_with_storage(boot(), options.clone()).expect("open empty");
    assert!(recovered.records.is_empty());
    assert!(recovered.cut.is_none());
    append_all(&writer, 1..=300);
    // The writer's own account: whole blocks, at least every payload, fewer writes
    // than records when any grouped (never more).
    let stats = writer.write_stats();
    let payload_bytes: u64 = (1..=300).map(|id| payload(id).len() as u64).sum();
    assert!((1..=300).contains(&stats.writes), "{stats:?}");
    assert_eq!(stats.bytes % 4096, 0, "{stats:?}");
    assert!(stats.bytes >= payload_bytes, "{stats:?} for {payload_bytes} payload bytes");
    writer.close().expect("close");
    let (writer, recovered) = Wal::open_with_storage(boot(), options.clone()).expect("reopen");
    let expected: Vec<_> = (1..=300).map(record).collect();
    assert_eq!(recovered.records, expected);
    assert!(recovered.cut.is_none());
    assert_eq!(writer.durable_point().agreement_id, 300);
    // Appending continues the chain after a reopen.
    append_all(&writer, 301..=400);
    writer.close().expect("close");
    let (writer, recovered) = Wal::open_with_storage(boot(), options).expect("reopen");
    assert_eq!(recovered.records, (1..=400).map(record).collect::<Vec<_>>());
    writer.close().expect("close");
}

fn a_record_larger_than_a_group_goes_out_alone<S: Storage>(
    boot: &dyn Fn() -> S,
    options: WalOptions,
) {
    let (writer, recovered) = Wal::open_with_storage(boot(), options.clone()).expect("open");
    let next = recovered.records.last().map_or(1, |r| r.last_agreement_id + 1);
    let big: Vec<u8> = (0..options.record_bytes_max).map(|i| (i % 251) as u8).collect();
    assert!(big.len() > options.group_bytes_max);
    let small = append(&writer, next, next, b"small").expect("append");
    let large = append(&writer, next + 1, next + 3, &big).expect("append big");
    wait_durable(&writer, &large);
    wait_durable(&writer, &small);
    let too_big = vec![0u8; options.record_bytes_max + 1];
    assert!(matches!(
        writer.append(next + 4, next + 4, &too_big),
        Err(WalError::RecordTooLarge { .. })
    ));
    writer.close().expect("close");
    let (writer, recovered) = Wal::open_with_storage(boot(), options).expect("reopen");
    let tail = &recovered.records[recovered.records.len() - 2..];
    assert_eq!(tail[0].payload, b"small");
    assert_eq!((tail[1].first_agreement_id, tail[1].last_agreement_id), (next + 1, next + 3));
    assert_eq!(tail[1].payload, big);
    writer.close().expect("close");
}

fn agreement_ids_must_strictly_increase<S: Storage>(boot: &dyn Fn() -> S, options: WalOptions) {
    let (writer, recovered) = Wal::open_with_storage(boot(), options).expect("open");
    let last = recovered.records.last().map_or(0, |r| r.last_agreement_id);
    assert!(
        matches!(writer.append(last, last, b"x"), Err(WalError::AgreementIdOrder { .. }))
            || last == 0
    );
    assert!(matches!(
        writer.append(last + 5, last + 4, b"x"),
        Err(WalError::AgreementIdOrder { .. })
    ));
    wait_durable(&writer, &writer.append(last + 1, last + 1, b"ok").expect("append"));
    assert!(matches!(
        writer.append(last + 1, last + 1, b"dup"),
        Err(WalError::AgreementIdOrder { .. })
    ));
    writer.close().expect("close");
}

fn cut_segments_are_sealed_and_expose_ids_digest_and_records<S: Storage>(
    boot: &dyn Fn() -> S,
    options: WalOptions,
) {
    let (writer, recovered) = Wal::open_with_storage(boot(), options.clone()).expect("open");
    let start = recovered.records.last().map_or(1, |r| r.last_agreement_id + 1);
    // Start from a fresh segment so that none fills up during this test.
    if let Some(last) = recovered.records.last() {
        writer.cut_segment(last.last_agreement_id).expect("cut");
    }
    // Cut announced ahead of the records (pending) and right at the last one.
    writer.cut_segment(start + 9).expect("pending cut");
    append_all(&writer, start..=start + 19);
    writer.cut_segment(start + 19).expect("cut at last");
    assert!(matches!(writer.cut_segment(start + 3), Err(WalError::CutBehind { .. })));
    append_all(&writer, start + 20..=start + 24);
    let closed = writer.closed_segments();
    let first_cut = closed
        .iter()
        .find(|s| s.first_agreement_id == Some(start))
        .expect("segment from the start is sealed");
    let second_cut = closed
        .iter()
        .find(|s| s.segment_seq == first_cut.segment_seq + 1)
        .expect("the next segment is sealed");
    assert_eq!(first_cut.last_agreement_id, Some(start + 9));
    assert_eq!(second_cut.first_agreement_id, Some(start + 10));
    assert_eq!(second_cut.last_agreement_id, Some(start + 19));
    assert_eq!(second_cut.record_count, 10);
    let records = writer.read_segment(second_cut.segment_seq).expect("read closed segment");
    assert_eq!(records, (start + 10..=start + 19).map(record).collect::<Vec<_>>());
    let digest = writer.segment_sha256(second_cut.segment_seq).expect("digest");
    assert_eq!(writer.segment_sha256(second_cut.segment_seq).expect("cached digest"), digest);
    assert_ne!(writer.segment_sha256(first_cut.segment_seq).expect("digest"), digest);
    assert!(matches!(writer.read_segment(u64::MAX), Err(WalError::NoSuchSegment { .. })));
    writer.close().expect("close");
    // Recovery finds the same closed segments, with the same digests.
    let (writer, recovered) = Wal::open_with_storage(boot(), options).expect("reopen");
    let again = recovered
        .closed_segments
        .iter()
        .find(|s| s.segment_seq == second_cut.segment_seq)
        .expect("closed segment recovered");
    assert_eq!(again.sha256_if_computed(), None, "digests are computed on demand");
    assert_eq!(writer.segment_sha256(again.segment_seq).expect("digest"), digest);
    assert_eq!(
        writer
            .closed_segments()
            .iter()
            .find(|s| s.segment_seq == again.segment_seq)
            .and_then(|s| s.sha256_if_computed()),
        Some(digest),
        "computed once, then kept"
    );
    assert_eq!(again.first_agreement_id, Some(start + 10));
    assert_eq!(recovered.records.last().map(|r| r.last_agreement_id), Some(start + 24));
    writer.close().expect("close");
}

fn deleted_segments_are_recycled_and_their_stale_records_never_return<S: Storage>(
    boot: &dyn Fn() -> S,
    options: WalOptions,
) {
    let (writer, recovered) = Wal::open_with_storage(boot(), options.clone()).expect("open");
    let mut next = recovered.records.last().map_or(1, |r| r.last_agreement_id + 1);
    // Fill several segments with many records each.
    let mut sealed = Vec::new();
    for _ in 0..4 {
        append_all(&writer, next..=next + 59);
        writer.cut_segment(next + 59).expect("cut");
        next += 60;
        append_all(&writer, next..=next);
        next += 1;
        sealed.push(next - 2);
    }
    let keep_from = sealed[2] + 1;
    let deleted = writer.delete_below(keep_from).expect("delete");
    assert!(!deleted.is_empty());
    assert!(
        writer.closed_segments().iter().all(|s| s.last_agreement_id.is_none_or(|l| l >= keep_from))
    );
    // Roll into recycled segments and write only a few records into each, so most of
    // each file still holds stale records of older segments.
    for _ in 0..3 {
        append_all(&writer, next..=next + 1);
        writer.cut_segment(next + 1).expect("cut");
        next += 2;
    }
    append_all(&writer, next..=next);
    writer.close().expect("close");
    let (writer, recovered) = Wal::open_with_storage(boot(), options).expect("reopen");
    let ids: Vec<u64> = recovered.records.iter().map(|r| r.first_agreement_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "records in order");
    assert!(ids.iter().all(|&id| id >= keep_from.min(ids[0])));
    assert!(!ids.iter().any(|&id| id < keep_from - 61), "deleted records came back: {ids:?}");
    assert_eq!(ids.last(), Some(&next));
    for r in &recovered.records {
        assert_eq!(r.payload, payload(r.first_agreement_id));
    }
    writer.close().expect("close");
}

fn durable_notifications_end_at_the_last_durable_point<S: Storage>(
    boot: &dyn Fn() -> S,
    options: WalOptions,
) {
    let stepped = options.writer == WriterThreads::Stepped;
    let (writer, recovered) = Wal::open_with_storage(boot(), options).expect("open");
    let start = recovered.records.last().map_or(1, |r| r.last_agreement_id + 1);
    let notifications = writer.durable_notifications();
    for id in start..start + 50 {
        append(&writer, id, id, &payload(id)).expect("append");
    }
    if stepped {
        // Nothing writes for a stepped writer but its owner.
        writer.sync().expect("sync");
    }
    let mut seen = 0;
    while seen < start + 49 {
        let point = notifications.recv().expect("notification");
        assert!(point.agreement_id >= seen, "durable points go forward");
        seen = point.agreement_id;
    }
    assert_eq!(writer.durable_point().agreement_id, start + 49);
    assert_eq!(writer.durable_point().record_seq, 50);
    writer.close().expect("close");
    assert!(notifications.recv().is_err(), "channel disconnects when the writer stops");
}

#[test]
fn conformance_on_the_simulated_disk() {
    let sim = SimStorage::new(1);
    conformance_suite(&|| sim.clone(), small_options());
}

#[test]
fn conformance_of_the_stepped_writer_on_the_simulated_disk() {
    let sim = SimStorage::new(1);
    conformance_suite(
        &|| sim.clone(),
        WalOptions { writer: WriterThreads::Stepped, ..small_options() },
    );
}

#[test]
fn conformance_of_the_stepped_writer_on_pwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mode = DurabilityMode::DirectDsync;
    let options = WalOptions {
        mode,
        backend: Backend::Pwrite,
        writer: WriterThreads::Stepped,
        ..small_options()
    };
    conformance_suite(&fs_boot(dir.path(), mode, Backend::Pwrite), options);
}

fn fs_boot(dir: &Path, mode: DurabilityMode, backend: Backend) -> impl Fn() -> FsStorage + '_ {
    move || FsStorage::new(dir, mode, backend).expect("storage")
}

#[test]
fn conformance_on_pwrite_in_every_durability_mode() {
    for mode in DurabilityMode::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = WalOptions { mode, backend: Backend::Pwrite, ..small_options() };
        conformance_suite(&fs_boot(dir.path(), mode, Backend::Pwrite), options);
    }
}

#[test]
fn conformance_on_io_uring_or_fallback_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    if let Err(reason) = probe_io_uring() {
        eprintln!(
            "io_uring IS UNAVAILABLE on this machine ({reason}): testing the fallback selection only"
        );
        let auto =
            FsStorage::new(dir.path(), DurabilityMode::DirectDsync, Backend::Auto).expect("auto");
        assert_eq!(auto.backend(), ResolvedBackend::Pwrite);
        assert!(FsStorage::new(dir.path(), DurabilityMode::DirectDsync, Backend::IoUring).is_err());
        return;
    }
    let auto =
        FsStorage::new(dir.path(), DurabilityMode::DirectDsync, Backend::Auto).expect("auto");
    assert_eq!(auto.backend(), ResolvedBackend::IoUring);
    for mode in [DurabilityMode::DirectDsync, DurabilityMode::Fdatasync] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = WalOptions { mode, backend: Backend::IoUring, ..small_options() };
        conformance_suite(&fs_boot(dir.path(), mode, Backend::IoUring), options);
    }
}
