//! Crash, fault and group-commit tests on the simulated disk.
//!
//! The property test replays one seed with `DURA_WAL_SEED=<seed>`; a failing cycle
//! prints its seed.

use std::time::{Duration, Instant};

use dura_wal::sim::{SimFaults, SimRng, SimStorage, durable_agreement_max};
use dura_wal::{LogRecord, Ticket, Wal, WalError, WalOptions, WriterThreads};

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        group_bytes_max: 8 * 1024,
        record_bytes_max: 12 * 1024,
        queue_depth_max: 64,
        spare_segments_max: 2,
        ..WalOptions::default()
    }
}

fn payload_for(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id.wrapping_mul(31) ^ i as u64) as u8).collect()
}

/// The model of one run: every record that may be in the log, in order.
struct Model {
    /// Records in log order; a prefix `[..durable]` must survive (minus deletions).
    records: Vec<LogRecord>,
    durable: usize,
    /// Records whose last id is below this may have been deleted from the front.
    deleted_below: u64,
}

impl Model {
    /// Checks a recovery against the model and makes the model equal to it.
    fn check_and_adopt(&mut self, recovered: &[LogRecord], context: &str) {
        let start = match recovered.first() {
            Some(first) => self
                .records
                .iter()
                .position(|r| r.first_agreement_id == first.first_agreement_id)
                .unwrap_or_else(|| {
                    panic!(
                        "{context}: recovered record {} was never appended",
                        first.first_agreement_id
                    )
                }),
            None => self.records.len().min(
                self.records
                    .iter()
                    .position(|r| r.last_agreement_id >= self.deleted_below)
                    .unwrap_or(self.records.len()),
            ),
        };
        for skipped in &self.records[..start] {
            assert!(
                skipped.last_agreement_id < self.deleted_below,
                "{context}: record {} lost from the front without deletion",
                skipped.first_agreement_id
            );
        }
        let end = start + recovered.len();
        assert!(end <= self.records.len(), "{context}: more records recovered than appended");
        assert_eq!(
            &self.records[start..end],
            recovered,
            "{context}: recovered records differ from those appended"
        );
        assert!(
            end >= self.durable,
            "{context}: record {} was reported durable but did not come back",
            self.records[end.min(self.records.len() - 1)].first_agreement_id
        );
        self.records.truncate(end);
        self.records.drain(..start);
        self.durable = self.records.len();
    }
}

#[derive(Default, Debug)]
struct Stats {
    opens: u64,
    cuts: u64,
    records_recovered: u64,
}

thread_local! {
    static STATS: std::cell::RefCell<Stats> = std::cell::RefCell::new(Stats::default());
}

/// One life of the log: open, check, run random operations until the planned crash or
/// a clean close. Returns the disk after the crash.
///
/// With the stepped writer the life also steps it at random (a third of the operations),
/// writes a step when the open group is full, syncs where a background life waits on a
/// ticket, fails one exact write now and then, and checks the disk's durable history
/// against every durable point a step reports.
fn one_life(
    disk: &SimStorage,
    rng: &mut SimRng,
    model: &mut Model,
    context: &str,
    writer_threads: WriterThreads,
) {
    let stepped = writer_threads == WriterThreads::Stepped;
    let crash_planned = rng.below(4) != 0;
    let faults = SimFaults {
        crash_at_write: crash_planned.then(|| rng.below(30)),
        fail_at_write: None,
        write_error_per_million: if rng.below(5) == 0 { 30_000 } else { 0 },
        sync_dir_error_per_million: if rng.below(8) == 0 { 100_000 } else { 0 },
        read_error_per_million: if rng.below(10) == 0 { 300_000 } else { 0 },
        tear_any_sectors: rng.below(3) == 0,
    };
    let faults = if stepped && rng.below(6) == 0 {
        SimFaults { fail_at_write: Some(rng.below(30)), ..faults }
    } else {
        faults
    };
    disk.set_faults(faults);
    let options = WalOptions { writer: writer_threads, ..options() };
    // A step's durable point must be backed by a group header a completed write put on
    // the disk (the simulator's oracle).
    let check_step = |step: Result<Option<dura_wal::DurablePoint>, WalError>| {
        if let Ok(Some(point)) = step {
            let on_disk = durable_agreement_max(disk);
            assert!(
                on_disk >= Some(point.agreement_id),
                "{context}: step reported {point:?} durable, the disk holds up to {on_disk:?}"
            );
        }
    };
    let (writer, recovered) = match Wal::open_with_storage(disk.clone(), options) {
        Ok(opened) => opened,
        Err(error) => {
            assert!(
                matches!(error, WalError::Io { .. }),
                "{context}: open failed with something other than an injected I/O error: {error}"
            );
            return;
        }
    };
    model.check_and_adopt(&recovered.records, context);
    // A closed segment reads back as exactly its slice of the recovered records.
    if let Some(segment) = recovered.closed_segments.get(rng.below(4) as usize) {
        match writer.read_segment(segment.segment_seq) {
            Ok(records) => {
                let slice: Vec<LogRecord> = recovered
                    .records
                    .iter()
                    .filter(|r| {
                        segment.first_agreement_id.is_some_and(|f| r.first_agreement_id >= f)
                            && segment.last_agreement_id.is_some_and(|l| r.last_agreement_id <= l)
                    })
                    .cloned()
                    .collect();
                assert_eq!(records, slice, "{context}: closed segment {}", segment.segment_seq);
            }
            Err(error) => assert!(
                matches!(error, WalError::Io { .. }),
                "{context}: reading a closed segment failed with {error}"
            ),
        }
    }
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        s.opens += 1;
        s.cuts += u64::from(recovered.cut.is_some());
        s.records_recovered += recovered.records.len() as u64;
    });
    let mut next_id = model.records.last().map_or(1, |r| r.last_agreement_id + 1) + rng.below(3);
    let mut tickets: Vec<(usize, Ticket)> = Vec::new();
    let ops = rng.below(80);
    for _ in 0..ops {
        if stepped && rng.below(3) == 0 {
            check_step(writer.write_step());
        }
        let op = rng.below(100);
        if op < 82 {
            let len =
                if rng.below(10) == 0 { rng.below(12 * 1024) } else { rng.below(400) } as usize;
            let span = rng.below(3);
            let record = LogRecord {
                first_agreement_id: next_id,
                last_agreement_id: next_id + span,
                payload: payload_for(next_id, len),
            };
            let mut appended =
                writer.append(record.first_agreement_id, record.last_agreement_id, &record.payload);
            if let Err(WalError::GroupFull { .. }) = appended {
                assert!(stepped, "{context}: a background append waits for room");
                check_step(writer.write_step());
                appended = writer.append(
                    record.first_agreement_id,
                    record.last_agreement_id,
                    &record.payload,
                );
            }
            match appended {
                Ok(ticket) => {
                    tickets.push((model.records.len(), ticket));
                    model.records.push(record);
                    next_id += span + 1 + rng.below(2);
                }
                Err(_) => break,
            }
        } else if op < 90 {
            let at = next_id.saturating_sub(1) + rng.below(3);
            let _ = writer.cut_segment(at);
        } else if op < 94 {
            if let Some(r) = model.records.get(rng.below(model.records.len() as u64 + 1) as usize) {
                let below = r.last_agreement_id;
                model.deleted_below = model.deleted_below.max(below);
                let _ = writer.delete_below(below);
            }
        } else if stepped {
            let _ = writer.sync();
        } else if let Some((_, ticket)) = tickets.last() {
            let _ = ticket.wait();
        }
    }
    if crash_planned {
        disk.crash();
    }
    let _ = writer.close();
    // Durability was reported for a prefix of the appends.
    let mut durable_seen_false = false;
    for (index, ticket) in &tickets {
        let durable = ticket.wait().is_ok();
        if durable {
            assert!(!durable_seen_false, "{context}: durability reported out of order");
            model.durable = model.durable.max(index + 1);
        } else {
            durable_seen_false = true;
        }
    }
}

#[test]
fn every_record_reported_durable_survives_crashes_tears_and_faults() {
    crash_and_reopen_property(WriterThreads::Background);
}

#[test]
fn every_record_a_stepped_writer_reported_durable_survives_crashes_tears_and_faults() {
    crash_and_reopen_property(WriterThreads::Stepped);
}

fn crash_and_reopen_property(writer_threads: WriterThreads) {
    let seeds: Vec<u64> = match std::env::var("DURA_WAL_SEED") {
        Ok(seed) => vec![seed.parse().expect("DURA_WAL_SEED is a number")],
        Err(_) => vec![0x5eed_0001, 0x5eed_0002, 0x5eed_0003],
    };
    let cycles_max = 300 / seeds.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut cycles_run = 0;
    for seed in seeds {
        let mut rng = SimRng::new(seed);
        let mut disk = SimStorage::new(seed);
        let mut model = Model { records: Vec::new(), durable: 0, deleted_below: 0 };
        for cycle in 0..cycles_max {
            if Instant::now() > deadline {
                break;
            }
            let context = format!("seed {seed} cycle {cycle} (replay with DURA_WAL_SEED={seed})");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                one_life(&disk, &mut rng, &mut model, &context, writer_threads);
            }));
            if let Err(panic) = outcome {
                eprintln!("FAILED: {context}");
                std::panic::resume_unwind(panic);
            }
            disk = disk.reboot(rng.next_u64());
            cycles_run += 1;
        }
        // A final clean open must agree with the model too.
        let options = WalOptions { writer: writer_threads, ..options() };
        let (writer, recovered) =
            Wal::open_with_storage(disk.clone(), options).expect("final open");
        model.check_and_adopt(&recovered.records, &format!("seed {seed} final open"));
        writer.close().expect("close");
    }
    let stats = STATS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    eprintln!("{writer_threads:?} writer, {cycles_run} cycles: {stats:?}");
    assert!(cycles_run >= 30, "only {cycles_run} cycles ran");
    assert!(stats.cuts > 0, "no torn tail was ever cut: the faults are not biting");
}

#[test]
fn concurrent_appends_share_one_write() {
    let disk = SimStorage::new(7);
    let (writer, _) = Wal::open_with_storage(disk.clone(), options()).expect("open");
    disk.pause_writes();
    let first = writer.append(1, 1, b"first").expect("append");
    // Wait until the writer is inside the write of the first group.
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk.blocked_writes() == 0 {
        assert!(Instant::now() < deadline, "writer never started the first write");
        std::thread::sleep(Duration::from_millis(1));
    }
    let writes_before = disk.write_count();
    let writer = std::sync::Arc::new(writer);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let writer = std::sync::Arc::clone(&writer);
            std::thread::spawn(move || {
                (0..10u64)
                    .map(|i| {
                        // Ids need only increase globally: take them under the writer's
                        // order by retrying on AgreementIdOrder.
                        let mut id = 2 + t * 10 + i;
                        loop {
                            match writer.append(id, id, b"concurrent") {
                                Ok(ticket) => break ticket,
                                Err(WalError::AgreementIdOrder {
                                    previous_agreement_id, ..
                                }) => {
                                    id = previous_agreement_id.expect("a record precedes") + 1;
                                }
                                Err(other) => panic!("append failed: {other}"),
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let tickets: Vec<_> = threads.into_iter().flat_map(|t| t.join().expect("appender")).collect();
    assert_eq!(tickets.len(), 40);
    assert!(!first.is_durable().expect("pending"), "the first write is still held");
    disk.resume_writes();
    for ticket in &tickets {
        ticket.wait().expect("durable");
    }
    first.wait().expect("durable");
    // The held write is counted once released; the 40 appends made meanwhile add one.
    assert_eq!(
        disk.write_count() - writes_before,
        2,
        "the 40 appends that waited during one write went out in exactly one write"
    );
}

#[test]
fn a_write_error_fails_the_writer_permanently() {
    let disk = SimStorage::new(9);
    let (writer, _) = Wal::open_with_storage(disk.clone(), options()).expect("open");
    writer.append(1, 1, b"durable").expect("append").wait().expect("durable");
    let notifications = writer.durable_notifications();
    disk.set_faults(SimFaults { write_error_per_million: 1_000_000, ..SimFaults::default() });
    let doomed = writer.append(2, 2, b"fails").expect("append queued");
    assert!(matches!(doomed.wait(), Err(WalError::WriterFailed(_))));
    // No retry: even with the disk healthy again, nothing more is written.
    disk.set_faults(SimFaults::default());
    let writes = disk.write_count();
    assert!(matches!(writer.append(3, 3, b"later"), Err(WalError::WriterFailed(_))));
    assert!(matches!(writer.sync(), Err(WalError::WriterFailed(_))));
    assert!(matches!(writer.delete_below(10), Err(WalError::WriterFailed(_))));
    assert!(matches!(
        &*writer.error().expect("error kept"),
        WalError::Io { op: dura_wal::IoOp::Write, .. }
    ));
    while notifications.recv().is_ok() {}
    assert_eq!(disk.write_count(), writes);
    assert!(matches!(writer.close(), Err(WalError::WriterFailed(_))));
    // The record written before the failure survives.
    let (writer, recovered) = Wal::open_with_storage(disk.reboot(1), options()).expect("reopen");
    assert_eq!(recovered.records[0].payload, b"durable");
    assert!(recovered.records.len() <= 2);
    writer.close().expect("close");
}

#[test]
fn a_torn_tail_is_cut_and_overwritten_and_stays_cut_after_the_segment_is_sealed() {
    // Tear the third group's write at every sector count, then keep writing, seal the
    // segment and reopen: the tear must never later be reported as corruption.
    for seed in 0..24u64 {
        let disk = SimStorage::new(seed);
        let (writer, _) = Wal::open_with_storage(disk.clone(), options()).expect("open");
        writer.append(1, 1, &payload_for(1, 100)).expect("append").wait().expect("durable");
        writer.append(2, 2, &payload_for(2, 100)).expect("append").wait().expect("durable");
        let writes = disk.write_count();
        disk.set_faults(SimFaults {
            crash_at_write: Some(writes),
            tear_any_sectors: seed % 2 == 1,
            ..SimFaults::default()
        });
        let torn = writer.append(3, 3, &payload_for(3, 6000)).expect("append");
        assert!(torn.wait().is_err());
        drop(writer);
        let disk = disk.reboot(seed);
        let (writer, recovered) =
            Wal::open_with_storage(disk.clone(), options()).expect("reopen after tear");
        let ids: Vec<u64> = recovered.records.iter().map(|r| r.first_agreement_id).collect();
        assert!(ids == [1, 2] || ids == [1, 2, 3], "seed {seed}: {ids:?}");
        let next = ids.len() as u64 + 1;
        writer.append(next, next, b"after").expect("append").wait().expect("durable");
        writer.cut_segment(next).expect("cut");
        writer
            .append(next + 1, next + 1, b"next segment")
            .expect("append")
            .wait()
            .expect("durable");
        writer.close().expect("close");
        let (writer, recovered) =
            Wal::open_with_storage(disk.reboot(seed), options()).expect("reopen after seal");
        let ids: Vec<u64> = recovered.records.iter().map(|r| r.first_agreement_id).collect();
        assert_eq!(ids.len() as u64, next + 1, "seed {seed}: {ids:?}");
        assert!(recovered.cut.is_none());
        writer.close().expect("close");
    }
}

#[test]
fn a_recycled_segment_left_alone_returns_none_of_its_stale_records() {
    // When every older segment is deleted, the oldest surviving segment has no
    // predecessor to chain to; only the segment number in each group header tells its
    // stale groups (from the file's previous life) from live ones.
    let disk = SimStorage::new(11);
    let (writer, _) = Wal::open_with_storage(disk.clone(), options()).expect("open");
    for id in 1..=40u64 {
        writer.append(id, id, &payload_for(id, 300)).expect("append");
        if id % 10 == 0 {
            writer.cut_segment(id).expect("cut");
        }
    }
    writer.sync().expect("sync");
    let mut id = 41;
    // Roll until the active segment is a recycled file, then delete everything before it.
    let recycled_active = loop {
        writer.delete_below(id).expect("delete");
        writer.append(id, id, b"x").expect("append");
        writer.cut_segment(id).expect("cut");
        writer.sync().expect("sync");
        id += 1;
        if id > 48 {
            break id;
        }
    };
    writer.delete_below(recycled_active).expect("delete all closed segments");
    assert!(writer.closed_segments().is_empty());
    writer.close().expect("close");
    let (writer, recovered) = Wal::open_with_storage(disk.reboot(3), options()).expect("reopen");
    assert!(
        recovered.records.is_empty(),
        "stale records returned: {:?}",
        recovered.records.iter().map(|r| r.first_agreement_id).collect::<Vec<_>>()
    );
    writer.close().expect("close");
}
