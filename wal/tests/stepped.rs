//! The stepped writer: no threads, driven by its owner, so one seed replays exactly; and
//! the simulated disk's exact faults and durable history that a simulator's oracle reads.

use std::collections::BTreeMap;

use dura_wal::sim::{SimFaults, SimRng, SimStorage, durable_agreement_max};
use dura_wal::{DurablePoint, LogRecord, LogWriter, Wal, WalError, WalOptions, WriterThreads};

fn stepped_options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        group_bytes_max: 8 * 1024,
        record_bytes_max: 12 * 1024,
        queue_depth_max: 16,
        spare_segments_max: 2,
        writer: WriterThreads::Stepped,
        ..WalOptions::default()
    }
}

fn payload_for(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id.wrapping_mul(131) ^ i as u64) as u8).collect()
}

/// Everything one seeded run leaves behind: it must be the same on every run.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Every file of the disk after the crash and reboot, byte for byte.
    disk_image: BTreeMap<String, Vec<u8>>,
    /// What reopening recovered.
    recovered: Vec<LogRecord>,
    /// Every durable point a step reported, in order.
    durable_points: Vec<DurablePoint>,
    /// Writes that reached the disk before the crash (completed, torn or failed).
    writes: u64,
    /// The crash struck during a write the log made.
    crashed_in_a_write: bool,
    /// Segments sealed before the crash.
    segments_sealed: usize,
}

/// Appends, steps, cuts and deletes as `seed` says until the seeded crash strikes (or
/// the operations run out and the disk crashes between writes), then reboots and
/// reopens. Single-threaded, so the seed alone decides everything.
fn seeded_run(seed: u64) -> Outcome {
    let mut rng = SimRng::new(seed);
    let disk = SimStorage::new(seed);
    let (writer, _) = Wal::open_with_storage(disk.clone(), stepped_options()).expect("open");
    disk.set_faults(SimFaults {
        crash_at_write: Some(25 + rng.below(40)),
        tear_any_sectors: rng.below(2) == 0,
        // Seeded draws beside the tears: their order must not change between runs either.
        sync_dir_error_per_million: 20_000,
        ..SimFaults::default()
    });
    let mut next_id = 1;
    let mut appended: Vec<LogRecord> = Vec::new();
    let mut durable_points = Vec::new();
    let mut segments_sealed = 0;
    let record_step =
        |step: Result<Option<DurablePoint>, WalError>, points: &mut Vec<DurablePoint>| -> bool {
            match step {
                Ok(point) => {
                    points.extend(point);
                    true
                }
                Err(_) => false,
            }
        };
    for _ in 0..600 {
        let op = rng.below(100);
        let alive = if op < 70 {
            let len = if rng.below(8) == 0 { rng.below(10 * 1024) } else { rng.below(600) };
            let record = LogRecord {
                first_agreement_id: next_id,
                last_agreement_id: next_id + rng.below(3),
                payload: payload_for(next_id, len as usize),
            };
            let mut result =
                writer.append(record.first_agreement_id, record.last_agreement_id, &record.payload);
            if let Err(WalError::GroupFull { .. }) = result {
                if !record_step(writer.write_step(), &mut durable_points) {
                    break;
                }
                result = writer.append(
                    record.first_agreement_id,
                    record.last_agreement_id,
                    &record.payload,
                );
            }
            match result {
                Ok(_ticket) => {
                    next_id = record.last_agreement_id + 1 + rng.below(2);
                    appended.push(record);
                    true
                }
                Err(_) => false,
            }
        } else if op < 90 {
            record_step(writer.write_step(), &mut durable_points)
        } else if op < 95 {
            // A cut behind the last record is refused; only a failed writer ends the run.
            let cut = writer.cut_segment(next_id.saturating_sub(1) + rng.below(3));
            !matches!(cut, Err(WalError::WriterFailed(_)))
        } else {
            let below = appended.get(rng.below(appended.len() as u64 + 1) as usize);
            below.is_none_or(|r| writer.delete_below(r.last_agreement_id).is_ok())
        };
        if !alive {
            break;
        }
        segments_sealed = segments_sealed
            .max(writer.closed_segments().last().map_or(0, |s| s.segment_seq as usize));
    }
    let crashed_in_a_write = disk.is_crashed();
    let writes = disk.write_count();
    disk.crash();
    drop(writer);
    let rebooted = disk.reboot(seed.wrapping_add(1));
    let disk_image = rebooted
        .names()
        .into_iter()
        .map(|name| (name.clone(), rebooted.file_bytes(&name)))
        .collect();
    let (writer, recovered) =
        Wal::open_with_storage(rebooted.clone(), stepped_options()).expect("reopen");
    writer.close().expect("close");
    let recovered = recovered.records;
    // Every record a step reported durable came back.
    if let Some(last) = durable_points.last() {
        let recovered_last = recovered.last().map_or(0, |r| r.last_agreement_id);
        assert!(
            recovered_last >= last.agreement_id,
            "seed {seed}: {last:?} was reported durable, recovery ends at {recovered_last}"
        );
    }
    let ids: Vec<u64> = recovered.iter().map(|r| r.last_agreement_id).collect();
    for record in &recovered {
        let original = appended
            .iter()
            .find(|r| r.first_agreement_id == record.first_agreement_id)
            .unwrap_or_else(|| panic!("seed {seed}: recovered a record never appended"));
        assert_eq!(original, record, "seed {seed}");
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {ids:?}");
    Outcome { disk_image, recovered, durable_points, writes, crashed_in_a_write, segments_sealed }
}

#[test]
fn the_same_seed_gives_byte_identical_disks_and_the_same_recovered_records() {
    let mut crashes = 0;
    let mut sealed = 0;
    for seed in 0..12u64 {
        let first = seeded_run(seed);
        let second = seeded_run(seed);
        assert!(
            first == second,
            "seed {seed} did not replay: {} vs {} writes, {} vs {} durable points, {} vs {} \
             records, disks equal: {}",
            first.writes,
            second.writes,
            first.durable_points.len(),
            second.durable_points.len(),
            first.recovered.len(),
            second.recovered.len(),
            first.disk_image == second.disk_image
        );
        assert!(!first.disk_image.is_empty());
        crashes += usize::from(first.crashed_in_a_write);
        sealed += first.segments_sealed;
    }
    eprintln!("12 seeds replayed: {crashes} crashed inside a write, {sealed} segments sealed");
    // The runs are not trivially equal: crashes tore writes and segments rolled.
    assert!(crashes >= 6, "only {crashes} of 12 runs crashed inside a write");
    assert!(sealed >= 12, "only {sealed} segments sealed over all runs");
}

/// Appends `id` (one id per record) into a stepped writer; the group must have room.
fn append_one(writer: &LogWriter<SimStorage>, id: u64) {
    writer.append(id, id, &payload_for(id, 100)).expect("append");
}

#[test]
fn a_full_open_group_refuses_the_append_until_a_step_and_appends_nothing() {
    let disk = SimStorage::new(3);
    let options = stepped_options();
    let (writer, _) = Wal::open_with_storage(disk.clone(), options.clone()).expect("open");
    for id in 1..=options.queue_depth_max as u64 {
        append_one(&writer, id);
    }
    let next = options.queue_depth_max as u64 + 1;
    let refused = writer.append(next, next, b"no room");
    assert!(
        matches!(refused, Err(WalError::GroupFull { record_count: 16, closed_by_cut: false, .. })),
        "{refused:?}"
    );
    assert_eq!(disk.write_count(), 0, "a stepped writer writes only when stepped");
    assert_eq!(writer.durable_point(), DurablePoint::default());
    let point = writer.write_step().expect("step").expect("records became durable");
    assert_eq!(point, DurablePoint { record_seq: 16, agreement_id: 16 });
    assert_eq!(writer.durable_point(), point);
    assert_eq!(disk.write_count(), 1, "the whole group went out in one write");
    assert_eq!(writer.write_step().expect("idle step"), None, "nothing left to write");
    // The refused append left no trace: the same id appends now.
    let ticket = writer.append(next, next, b"now it fits").expect("append");
    assert_eq!(ticket.record_seq(), 17);
    // Waiting would be forever: nothing but the owner writes.
    assert!(matches!(ticket.wait(), Err(WalError::WriterMode { .. })));
    assert!(!ticket.is_durable().expect("pending"));
    // A cut closes the group: the record after it waits for the seal.
    writer.cut_segment(next).expect("cut");
    assert!(matches!(
        writer.append(next + 1, next + 1, b"next segment"),
        Err(WalError::GroupFull { closed_by_cut: true, .. })
    ));
    writer.sync().expect("sync steps");
    assert!(ticket.is_durable().expect("durable"));
    ticket.wait().expect("durable tickets answer at once");
    assert_eq!(writer.closed_segments().len(), 1, "the cut sealed the first segment");
    writer.append(next + 1, next + 1, b"next segment").expect("append after the seal");
    let notifications = writer.durable_notifications();
    writer.close().expect("close writes what is left");
    assert_eq!(notifications.recv().expect("last point").agreement_id, next + 1);
    assert!(notifications.recv().is_err(), "the channel disconnects at close");
    let (writer, recovered) = Wal::open_with_storage(disk.reboot(4), options).expect("reopen");
    assert_eq!(recovered.records.len(), 18);
    assert_eq!(recovered.closed_segments.len(), 1);
    writer.close().expect("close");
}

#[test]
fn stepping_a_background_writer_is_refused() {
    let disk = SimStorage::new(5);
    let options = WalOptions { writer: WriterThreads::Background, ..stepped_options() };
    let (writer, _) = Wal::open_with_storage(disk, options).expect("open");
    assert!(matches!(
        writer.write_step(),
        Err(WalError::WriterMode { writer: WriterThreads::Background, .. })
    ));
    writer.append(1, 1, b"written by the thread").expect("append").wait().expect("durable");
    writer.close().expect("close");
}

#[test]
fn an_exact_write_failure_fails_the_stepped_writer_permanently() {
    let disk = SimStorage::new(6);
    let (writer, _) = Wal::open_with_storage(disk.clone(), stepped_options()).expect("open");
    append_one(&writer, 1);
    append_one(&writer, 2);
    writer.write_step().expect("step").expect("durable");
    assert_eq!(durable_agreement_max(&disk), Some(2));
    let notifications = writer.durable_notifications();
    disk.set_faults(SimFaults { fail_at_write: Some(disk.write_count()), ..SimFaults::default() });
    append_one(&writer, 3);
    let failed = writer.write_step();
    assert!(
        matches!(&failed, Err(WalError::WriterFailed(cause)) if matches!(**cause, WalError::Io { op: dura_wal::IoOp::Write, .. })),
        "{failed:?}"
    );
    assert!(!disk.is_crashed(), "a failed write leaves the disk going");
    assert_eq!(durable_agreement_max(&disk), Some(2), "a failed write is not durable");
    assert_eq!(writer.durable_point().agreement_id, 2);
    // No retry: with the disk healthy again nothing more is written.
    disk.set_faults(SimFaults::default());
    let writes = disk.write_count();
    assert!(matches!(writer.append(4, 4, b"later"), Err(WalError::WriterFailed(_))));
    assert!(matches!(writer.write_step(), Err(WalError::WriterFailed(_))));
    assert!(matches!(writer.sync(), Err(WalError::WriterFailed(_))));
    assert!(matches!(writer.cut_segment(9), Err(WalError::WriterFailed(_))));
    assert!(matches!(writer.delete_below(9), Err(WalError::WriterFailed(_))));
    assert!(writer.error().is_some());
    while notifications.recv().is_ok() {}
    assert_eq!(disk.write_count(), writes);
    assert!(matches!(writer.close(), Err(WalError::WriterFailed(_))));
    let (writer, recovered) =
        Wal::open_with_storage(disk.reboot(7), stepped_options()).expect("reopen");
    let ids: Vec<u64> = recovered.records.iter().map(|r| r.first_agreement_id).collect();
    assert!(ids == [1, 2] || ids == [1, 2, 3], "{ids:?}");
    writer.close().expect("close");
}

#[test]
fn the_durable_agreement_max_follows_completed_writes_only() {
    let disk = SimStorage::new(8);
    let (writer, _) = Wal::open_with_storage(disk.clone(), stepped_options()).expect("open");
    assert_eq!(durable_agreement_max(&disk), None, "no group written yet");
    for id in 1..=5 {
        append_one(&writer, id);
    }
    assert_eq!(durable_agreement_max(&disk), None, "appended is not written");
    writer.write_step().expect("step");
    assert_eq!(durable_agreement_max(&disk), Some(5));
    let history = disk.durable_writes();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].offset, 0);
    assert_eq!(history[0].len_bytes % 4096, 0);
    assert_eq!(Some(history[0].file_id), disk.file_id("00000000000000000001.wal"));
    // A seal carries the segment's last id: the maximum stays.
    writer.cut_segment(5).expect("cut");
    writer.write_step().expect("seal step");
    assert_eq!(durable_agreement_max(&disk), Some(5));
    // A crash tears the next write, even if its header sector lands: it does not count.
    for seed in 0..8 {
        let disk = disk.reboot(100 + seed);
        let (writer, recovered) =
            Wal::open_with_storage(disk.clone(), stepped_options()).expect("reopen");
        let next = recovered.records.last().expect("records").last_agreement_id + 1;
        assert_eq!(durable_agreement_max(&disk), Some(5), "carried over from the boot before");
        disk.set_faults(SimFaults {
            crash_at_write: Some(disk.write_count()),
            tear_any_sectors: seed % 2 == 0,
            ..SimFaults::default()
        });
        writer.append(next, next, &payload_for(next, 3000)).expect("append");
        assert!(writer.write_step().is_err());
        assert_eq!(durable_agreement_max(&disk), Some(5), "seed {seed}: torn write counted");
        drop(writer);
    }
}

#[test]
fn the_durable_agreement_max_waits_for_a_paused_write() {
    // The gate holds a write until released: only a background writer thread can wait
    // at it (a stepped writer would hold its owner's thread).
    let disk = SimStorage::new(9);
    let options = WalOptions { writer: WriterThreads::Background, ..stepped_options() };
    let (writer, _) = Wal::open_with_storage(disk.clone(), options).expect("open");
    writer.append(1, 1, b"first").expect("append").wait().expect("durable");
    assert_eq!(durable_agreement_max(&disk), Some(1));
    disk.pause_writes();
    let held = writer.append(2, 3, b"held").expect("append");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while disk.blocked_writes() == 0 {
        assert!(std::time::Instant::now() < deadline, "the writer never reached the gate");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(durable_agreement_max(&disk), Some(1), "a held write is not durable");
    disk.resume_writes();
    held.wait().expect("durable");
    assert_eq!(durable_agreement_max(&disk), Some(3));
    writer.close().expect("close");
}

#[test]
fn a_deleted_segment_is_recycled_for_the_next_one_and_the_stats_count_it() {
    let disk = SimStorage::new(8);
    let (writer, _) = Wal::open_with_storage(disk.clone(), stepped_options()).expect("open");
    let fresh = writer.write_stats();
    assert_eq!((fresh.segments_created, fresh.segments_recycled), (0, 0), "open prepares inline");
    append_one(&writer, 1);
    writer.cut_segment(1).expect("cut");
    writer.sync().expect("write record 1, seal segment 1, prepare segment 2");
    assert_eq!(writer.write_stats().segments_created, 1, "segment 2 is a new file");
    assert_eq!(writer.delete_below(2).expect("delete"), vec![1]);
    append_one(&writer, 2);
    writer.cut_segment(2).expect("cut");
    writer.sync().expect("write record 2, seal segment 2, prepare segment 3");
    append_one(&writer, 3);
    writer.sync().expect("write into segment 3");
    let stats = writer.write_stats();
    assert_eq!(
        (stats.segments_created, stats.segments_recycled),
        (1, 1),
        "segment 3 is segment 1's file, renamed: {stats}"
    );
    writer.close().expect("close");
}
