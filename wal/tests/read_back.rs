//! Reading decided agreements back from a live log (state transfer's "log pieces"):
//! [`LogReader::read_agreements`] and [`LogReader::held_range`] over closed segments and
//! the durable part of the active one, on the simulated disk (stepped and background
//! writers) and on a real directory, while a writer appends, cuts and deletes.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use dura_wal::io::{DurabilityMode, Preallocate, ZeroPace};
use dura_wal::sim::{SimRng, SimStorage};
use dura_wal::{
    Backend, IoOp, LogReader, LogRecord, LogWriter, Storage, Wal, WalError, WalOptions,
    WriterThreads,
};

fn options(writer: WriterThreads) -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        group_bytes_max: 8 * 1024,
        record_bytes_max: 12 * 1024,
        queue_depth_max: 16,
        spare_segments_max: 2,
        writer,
        ..WalOptions::default()
    }
}

fn payload_for(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id.wrapping_mul(131) ^ i as u64 ^ (i as u64 >> 8)) as u8).collect()
}

/// `count` records as `seed` says: some cover several agreement ids, some leave a gap
/// after them, a few are large.
fn plan(seed: u64, count: usize) -> Vec<LogRecord> {
    let mut rng = SimRng::new(seed);
    let mut next = 1;
    (0..count)
        .map(|_| {
            let first = next;
            let last = first + rng.below(3);
            next = last + 1 + rng.below(2);
            let len = if rng.below(10) == 0 { 1 + rng.below(6000) } else { rng.below(600) };
            LogRecord {
                first_agreement_id: first,
                last_agreement_id: last,
                payload: payload_for(first, len as usize),
            }
        })
        .collect()
}

/// The records of `plan` whose ids intersect `(after, up_to]`.
fn expected(plan: &[LogRecord], after: u64, up_to: u64) -> Vec<LogRecord> {
    plan.iter()
        .filter(|r| r.first_agreement_id <= up_to && r.last_agreement_id > after)
        .cloned()
        .collect()
}

fn payload_bytes(records: &[LogRecord]) -> u64 {
    records.iter().map(|r| r.payload.len() as u64).sum()
}

/// Appends `record`; a stepped writer whose open group is full writes a step first.
fn append<S: Storage>(writer: &LogWriter<S>, record: &LogRecord) {
    loop {
        match writer.append(record.first_agreement_id, record.last_agreement_id, &record.payload) {
            Err(WalError::GroupFull { .. }) => {
                writer.write_step().expect("step to make room");
            }
            other => {
                other.expect("append");
                return;
            }
        }
    }
}

/// A stepped log holding `plan`, cut after every seventh record (so several closed
/// segments, and an active segment holding the last records), all durable.
fn stepped_log(seed: u64, plan: &[LogRecord]) -> LogWriter<SimStorage> {
    let (writer, _) =
        Wal::open_with_storage(SimStorage::new(seed), options(WriterThreads::Stepped))
            .expect("open");
    for (i, record) in plan.iter().enumerate() {
        append(&writer, record);
        if i % 7 == 6 && i + 3 < plan.len() {
            writer.cut_segment(record.last_agreement_id).expect("cut");
        }
        if i % 3 == 0 {
            writer.write_step().expect("step");
        }
    }
    writer.sync().expect("sync");
    writer
}

#[test]
fn ranges_in_one_closed_segment_across_closed_segments_and_into_the_active_one() {
    let plan = plan(11, 40);
    let writer = stepped_log(11, &plan);
    let reader = writer.reader();
    let durable = writer.durable_point().agreement_id;
    assert_eq!(durable, plan.last().expect("records").last_agreement_id);
    assert_eq!(reader.held_range(), Some((plan[0].first_agreement_id, durable)));
    assert_eq!(writer.held_range(), reader.held_range());
    let closed = writer.closed_segments();
    assert!(closed.len() >= 4, "{} closed segments", closed.len());
    let ids = |i: usize| {
        (
            closed[i].first_agreement_id.expect("records"),
            closed[i].last_agreement_id.expect("records"),
        )
    };
    let active_first = closed.last().expect("closed").last_agreement_id.expect("records") + 1;
    let check = |after: u64, up_to: u64, what: &str| {
        let read = reader.read_agreements(after, up_to, u64::MAX).expect(what);
        assert_eq!(read, expected(&plan, after, up_to), "{what}: ({after}, {up_to}]");
        assert!(!read.is_empty(), "{what}");
        read
    };
    // Inside one closed segment, starting and ending in the middle of it.
    let (first, last) = ids(1);
    let inside = check(first, last - 1, "inside one closed segment");
    assert!(inside.iter().all(|r| r.first_agreement_id >= first && r.last_agreement_id <= last));
    // One whole closed segment, exactly.
    let whole = check(first - 1, last, "one whole closed segment");
    assert_eq!(whole.len() as u64, closed[1].record_count);
    // Across closed segments.
    check(ids(0).0, ids(2).1 - 1, "across three closed segments");
    // From a closed segment into the active one, and ending exactly at the durable point.
    let closed_into_active = check(ids(2).0, durable, "closed into active, up to durable");
    assert_eq!(closed_into_active.last().expect("records").last_agreement_id, durable);
    // Only the active segment.
    let active = check(active_first - 1, durable, "only the active segment");
    assert!(active.iter().all(|r| r.first_agreement_id >= active_first));
    // Everything.
    assert_eq!(reader.read_agreements(0, durable, u64::MAX).expect("all"), plan);
    // A record covering several ids comes back whole when the range touches any of them.
    let wide = plan.iter().find(|r| r.last_agreement_id > r.first_agreement_id).expect("wide");
    assert_eq!(
        reader
            .read_agreements(wide.first_agreement_id, wide.first_agreement_id + 1, u64::MAX)
            .expect("wide"),
        vec![wide.clone()]
    );
    // Seeded ranges over the whole log, gaps included.
    let mut rng = SimRng::new(5);
    for _ in 0..300 {
        let after = rng.below(durable);
        let up_to = after + 1 + rng.below(durable - after);
        assert_eq!(
            reader.read_agreements(after, up_to, u64::MAX).expect("range"),
            expected(&plan, after, up_to),
            "({after}, {up_to}]"
        );
    }
    writer.close().expect("close");
}

#[test]
fn nothing_past_the_durable_point_is_served() {
    let plan = plan(12, 30);
    let (durable_part, pending) = plan.split_at(20);
    let writer = stepped_log(12, durable_part);
    let reader = writer.reader();
    let durable = writer.durable_point().agreement_id;
    assert_eq!(durable, durable_part.last().expect("records").last_agreement_id);
    match reader.read_agreements(durable - 1, durable + 1, u64::MAX) {
        Err(WalError::NotYetDurable { up_to, durable: at }) => {
            assert_eq!((up_to, at), (durable + 1, durable));
        }
        other => panic!("past the durable point: {other:?}"),
    }
    // Appended, not written (no step): neither held nor served.
    for record in pending.iter().take(5) {
        append(&writer, record);
    }
    assert_eq!(writer.durable_point().agreement_id, durable);
    assert_eq!(reader.held_range(), Some((plan[0].first_agreement_id, durable)));
    assert_eq!(reader.read_agreements(0, durable, u64::MAX).expect("durable"), durable_part);
    let appended_last = pending[4].last_agreement_id;
    assert!(matches!(
        reader.read_agreements(durable, appended_last, u64::MAX),
        Err(WalError::NotYetDurable { durable: at, .. }) if at == durable
    ));
    // Written: now served.
    writer.write_step().expect("step");
    assert_eq!(writer.durable_point().agreement_id, appended_last);
    assert_eq!(
        reader.read_agreements(durable, appended_last, u64::MAX).expect("now durable"),
        &pending[..5]
    );
    writer.close().expect("close");
}

#[test]
fn an_empty_log_holds_nothing_and_serves_nothing() {
    let (writer, _) =
        Wal::open_with_storage(SimStorage::new(1), options(WriterThreads::Stepped)).expect("open");
    assert_eq!(writer.held_range(), None);
    assert!(matches!(
        writer.read_agreements(0, 1, u64::MAX),
        Err(WalError::NotYetDurable { up_to: 1, durable: 0 })
    ));
    writer.close().expect("close");
}

#[test]
#[should_panic(expected = "empty range")]
fn an_empty_range_is_a_caller_bug() {
    let (writer, _) =
        Wal::open_with_storage(SimStorage::new(1), options(WriterThreads::Stepped)).expect("open");
    let _ = writer.read_agreements(3, 3, u64::MAX);
}

#[test]
fn agreements_in_deleted_segments_are_truncated() {
    let plan = plan(13, 40);
    let writer = stepped_log(13, &plan);
    let reader = writer.reader();
    let durable = writer.durable_point().agreement_id;
    let closed = writer.closed_segments();
    // Delete below an id inside the third segment: the first two go, the third stays
    // whole (segments are deleted whole).
    let third_first = closed[2].first_agreement_id.expect("records");
    let below = third_first + 1;
    let deleted = writer.delete_below(below).expect("delete");
    assert_eq!(deleted, vec![closed[0].segment_seq, closed[1].segment_seq]);
    assert_eq!(reader.held_range(), Some((third_first, durable)));
    match reader.read_agreements(third_first - 2, durable, u64::MAX) {
        Err(WalError::Truncated { first_held, asked }) => {
            assert_eq!((first_held, asked), (third_first, third_first - 1));
        }
        other => panic!("below what is held: {other:?}"),
    }
    // Below `below` but still held: served.
    assert_eq!(
        reader.read_agreements(third_first - 1, durable, u64::MAX).expect("held"),
        expected(&plan, third_first - 1, durable)
    );
    // Every closed segment deleted: only the active segment's records are held.
    writer.delete_below(durable).expect("delete all closed");
    assert!(writer.closed_segments().is_empty());
    let closed_last = closed.last().and_then(|s| s.last_agreement_id).expect("records");
    let active_first = plan
        .iter()
        .map(|r| r.first_agreement_id)
        .find(|&id| id > closed_last)
        .expect("active records");
    assert_eq!(reader.held_range(), Some((active_first, durable)));
    assert!(matches!(
        reader.read_agreements(0, durable, u64::MAX),
        Err(WalError::Truncated { first_held, asked: 1 }) if first_held == active_first
    ));
    // And once the active segment is sealed and deleted too, the log holds nothing.
    writer.cut_segment(durable).expect("cut");
    // Only a cut to write: `sync` has no record to wait for, a step seals.
    assert_eq!(writer.write_step().expect("seal"), None);
    writer.delete_below(durable + 1).expect("delete the rest");
    assert_eq!(reader.held_range(), None);
    assert!(matches!(
        reader.read_agreements(durable - 1, durable, u64::MAX),
        Err(WalError::Truncated { first_held, asked }) if first_held == durable + 1 && asked == durable
    ));
    writer.close().expect("close");
}

#[test]
fn a_range_larger_than_the_bound_is_refused() {
    let plan = plan(14, 40);
    let writer = stepped_log(14, &plan);
    let durable = writer.durable_point().agreement_id;
    let total = payload_bytes(&plan);
    assert_eq!(writer.read_agreements(0, durable, total).expect("exactly the bound"), plan);
    match writer.read_agreements(0, durable, total - 1) {
        Err(WalError::RangeTooLarge { bytes, max }) => {
            assert_eq!(max, total - 1);
            assert!(bytes > max && bytes <= total, "{bytes}");
        }
        other => panic!("over the bound: {other:?}"),
    }
    // The check runs as segments are read: a bound crossed in the first segment stops
    // the read there.
    let first_segment_last = writer.closed_segments()[0].last_agreement_id.expect("records");
    let small = payload_bytes(&expected(&plan, 0, first_segment_last)) - 1;
    match writer.read_agreements(0, durable, small) {
        Err(WalError::RangeTooLarge { bytes, .. }) => assert!(bytes <= small + 6000),
        other => panic!("over the bound in the first segment: {other:?}"),
    }
    writer.close().expect("close");
}

#[test]
fn a_reopened_log_serves_its_recovered_tail() {
    let plan = plan(15, 30);
    let disk = SimStorage::new(15);
    {
        let (writer, _) =
            Wal::open_with_storage(disk.clone(), options(WriterThreads::Stepped)).expect("open");
        for (i, record) in plan.iter().enumerate() {
            append(&writer, record);
            if i == 9 {
                writer.cut_segment(record.last_agreement_id).expect("cut");
            }
        }
        writer.close().expect("close");
    }
    let (writer, recovered) =
        Wal::open_with_storage(disk, options(WriterThreads::Stepped)).expect("reopen");
    assert_eq!(recovered.records, plan);
    let durable = plan.last().expect("records").last_agreement_id;
    assert_eq!(writer.held_range(), Some((1, durable)));
    // The tail segment was not sealed: its records are read as the active segment's.
    assert_eq!(writer.closed_segments().len(), 1);
    assert_eq!(writer.read_agreements(0, durable, u64::MAX).expect("all"), plan);
    let tail_after = plan[10].first_agreement_id;
    assert_eq!(
        writer.read_agreements(tail_after, durable, u64::MAX).expect("tail"),
        expected(&plan, tail_after, durable)
    );
    writer.close().expect("close");
}

/// What to do once, at the next read.
type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// The simulated disk, with something to do (once) when the log next reads a file: the
/// moment between a read's snapshot of the segments and its reading them.
struct Hooked {
    inner: SimStorage,
    on_read: Hook,
}

impl Hooked {
    fn fire(&self) {
        let hook = self.on_read.lock().expect("hook").take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

impl Storage for Hooked {
    type File = <SimStorage as Storage>::File;

    fn dir(&self) -> &Path {
        self.inner.dir()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        self.fire();
        self.inner.read_all(name)
    }

    fn read_prefix(&self, name: &str, len_bytes: u64) -> io::Result<Vec<u8>> {
        self.fire();
        self.inner.read_prefix(name, len_bytes)
    }

    fn open_for_write(&self, name: &str) -> io::Result<Self::File> {
        self.inner.open_for_write(name)
    }

    fn create_prepared(
        &self,
        name: &str,
        len_bytes: u64,
        how: Preallocate,
        pace: &mut dyn FnMut() -> ZeroPace,
    ) -> io::Result<()> {
        self.inner.create_prepared(name, len_bytes, how, pace)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

/// A stepped log over [`Hooked`] holding `plan` (see [`stepped_log`]).
fn hooked_log(seed: u64, plan: &[LogRecord]) -> (Arc<LogWriter<Hooked>>, SimStorage, Hook) {
    let disk = SimStorage::new(seed);
    let hook: Hook = Arc::default();
    let storage = Hooked { inner: disk.clone(), on_read: Arc::clone(&hook) };
    let (writer, _) =
        Wal::open_with_storage(storage, options(WriterThreads::Stepped)).expect("open");
    for (i, record) in plan.iter().enumerate() {
        append(&writer, record);
        if i % 7 == 6 && i + 3 < plan.len() {
            writer.cut_segment(record.last_agreement_id).expect("cut");
        }
    }
    writer.sync().expect("sync");
    (Arc::new(writer), disk, hook)
}

#[test]
fn a_segment_deleted_while_it_is_read_is_truncated_and_one_merely_unreadable_is_an_error() {
    let plan = plan(16, 40);
    let durable = plan.last().expect("records").last_agreement_id;
    // A closed segment deleted between the snapshot and its read.
    let (writer, _, hook) = hooked_log(16, &plan);
    let closed = writer.closed_segments();
    let doomed_last = closed[1].last_agreement_id.expect("records");
    let deleter = Arc::clone(&writer);
    *hook.lock().expect("hook") = Some(Box::new(move || {
        deleter.delete_below(doomed_last + 1).expect("delete");
    }));
    match writer.read_agreements(0, durable, u64::MAX) {
        Err(WalError::Truncated { first_held, asked: 1 }) => {
            assert_eq!(first_held, closed[2].first_agreement_id.expect("records"));
        }
        other => panic!("a segment deleted under the read: {other:?}"),
    }
    // The active segment sealed and deleted between the snapshot and its read.
    let (writer, _, hook) = hooked_log(17, &plan);
    let active_after = writer.closed_segments().last().and_then(|s| s.last_agreement_id);
    let active_after = active_after.expect("records");
    let deleter = Arc::clone(&writer);
    *hook.lock().expect("hook") = Some(Box::new(move || {
        deleter.cut_segment(durable).expect("cut");
        deleter.write_step().expect("seal");
        deleter.delete_below(durable + 1).expect("delete");
    }));
    match writer.read_agreements(active_after, durable, u64::MAX) {
        Err(WalError::Truncated { first_held, asked }) => {
            assert_eq!((first_held, asked), (durable + 1, active_after + 1));
        }
        other => panic!("the active segment deleted under the read: {other:?}"),
    }
    // A file gone while the log still holds its segment is not a truncation.
    let (writer, disk, hook) = hooked_log(18, &plan);
    let victim = writer.closed_segments()[0].file_name.clone();
    *hook.lock().expect("hook") = Some(Box::new(move || {
        disk.remove(&victim).expect("remove");
    }));
    match writer.read_agreements(0, durable, u64::MAX) {
        Err(WalError::Io { op: IoOp::Read, .. }) => {}
        other => panic!("a held segment's file gone: {other:?}"),
    }
}

/// What a reader thread saw.
#[derive(Debug, Default)]
struct Seen {
    reads: u64,
    /// Reads made before the writer was done.
    reads_while_writing: u64,
    records: u64,
    /// Reads whose last record reached the durable point seen before the read (mostly
    /// in the active segment).
    up_to_durable: u64,
    truncated: u64,
    not_yet_durable: u64,
    too_large: u64,
}

/// One thread appends `plan` through `writer` (cutting segments and deleting old ones
/// now and then, tickets not waited for), while another reads random ranges around what
/// the log holds until the writer is done and at least `reads_min` reads were made. Every
/// record read must be exactly the planned one; the only errors allowed are
/// `Truncated`, `NotYetDurable` (only past the durable point the reader saw) and
/// `RangeTooLarge` (only under a small bound).
fn reads_while_writing<S: Storage>(
    writer: LogWriter<S>,
    plan: Vec<LogRecord>,
    seed: u64,
    reads_min: u64,
) -> Seen {
    let plan = Arc::new(plan);
    let reader: LogReader<S> = writer.reader();
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let read_thread = {
        let plan = Arc::clone(&plan);
        let done = Arc::clone(&done);
        let reads = Arc::clone(&reads);
        thread::spawn(move || {
            let mut rng = SimRng::new(seed ^ 0xdead_beef);
            let mut seen = Seen::default();
            while !done.load(Ordering::Acquire) || seen.reads < reads_min {
                let Some((first, last)) = reader.held_range() else {
                    thread::yield_now();
                    continue;
                };
                assert!(first <= last);
                // Mostly inside what is held, sometimes below it or past the durable point.
                let after = match rng.below(10) {
                    0 => first.saturating_sub(1 + rng.below(20)),
                    _ => first - 1 + rng.below(last - first + 1),
                };
                let up_to = match rng.below(10) {
                    0 => last + 1 + rng.below(5),
                    _ => after + 1 + rng.below((last + 1).saturating_sub(after + 1).max(1)),
                };
                let small = rng.below(8) == 0;
                let bytes_max = if small { 2000 } else { u64::MAX };
                seen.reads += 1;
                if !done.load(Ordering::Acquire) {
                    seen.reads_while_writing += 1;
                }
                reads.fetch_add(1, Ordering::Release);
                match reader.read_agreements(after, up_to, bytes_max) {
                    Ok(records) => {
                        let want = expected(&plan, after, up_to);
                        assert!(
                            records == want,
                            "({after}, {up_to}]: read {} records, planned {}",
                            records.len(),
                            want.len()
                        );
                        seen.records += records.len() as u64;
                        if records.last().is_some_and(|r| r.last_agreement_id >= last) {
                            seen.up_to_durable += 1;
                        }
                    }
                    Err(WalError::Truncated { first_held, asked }) => {
                        assert_eq!(asked, after + 1);
                        assert!(first_held > asked, "truncated at {first_held}, asked {asked}");
                        seen.truncated += 1;
                    }
                    Err(WalError::NotYetDurable { up_to: asked, durable }) => {
                        assert_eq!(asked, up_to);
                        assert!(up_to > last, "durable was {last}, now {durable}: went back");
                        assert!(durable < up_to);
                        seen.not_yet_durable += 1;
                    }
                    Err(WalError::RangeTooLarge { bytes, max }) if small => {
                        assert!(bytes > max);
                        seen.too_large += 1;
                    }
                    Err(other) => panic!("({after}, {up_to}]: {other}"),
                }
            }
            seen
        })
    };
    let mut rng = SimRng::new(seed);
    for (i, record) in plan.iter().enumerate() {
        append(&writer, record);
        match rng.below(40) {
            0 => writer.cut_segment(record.last_agreement_id).expect("cut"),
            1 | 2 => {
                // Keep the last ~60 records; delete below that.
                if let Some(keep) = i.checked_sub(60) {
                    writer.delete_below(plan[keep].last_agreement_id).expect("delete");
                }
            }
            _ => {}
        }
        if rng.below(50) == 0 {
            writer.sync().expect("sync");
        }
        if i % 25 == 24 {
            // Let the reader in: at least one read between every 25 appends.
            let before = reads.load(Ordering::Acquire);
            while reads.load(Ordering::Acquire) == before {
                thread::yield_now();
            }
        }
    }
    writer.sync().expect("sync");
    done.store(true, Ordering::Release);
    let seen = read_thread.join().expect("reader thread");
    writer.close().expect("close");
    seen
}

#[test]
fn a_reader_thread_sees_exactly_what_was_appended_while_the_writer_appends_cuts_and_deletes() {
    for seed in 1..=3 {
        let writer = Wal::open_with_storage(
            SimStorage::new(seed),
            WalOptions { queue_depth_max: 8, ..options(WriterThreads::Background) },
        )
        .expect("open")
        .0;
        let seen = reads_while_writing(writer, plan(seed, 1500), seed, 300);
        eprintln!("seed {seed}: {seen:?}");
        assert!(seen.records > 0 && seen.up_to_durable > 0, "seed {seed}: {seen:?}");
        assert!(seen.truncated > 0 && seen.not_yet_durable > 0, "seed {seed}: {seen:?}");
        assert!(seen.reads_while_writing >= 1500 / 25, "seed {seed}: {seen:?}");
    }
}

#[test]
fn a_reader_thread_reads_the_active_segment_of_a_real_directory_while_the_writer_runs() {
    for mode in [DurabilityMode::default(), DurabilityMode::Fdatasync] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (writer, _) = Wal::open(
            dir.path(),
            WalOptions { mode, backend: Backend::Auto, ..options(WriterThreads::Background) },
        )
        .expect("open");
        let seen = reads_while_writing(writer, plan(21, 600), 21, 200);
        eprintln!("{mode}: {seen:?}");
        assert!(seen.records > 0 && seen.up_to_durable > 0, "{mode}: {seen:?}");
        assert!(seen.reads_while_writing >= 600 / 25, "{mode}: {seen:?}");
        // What the log holds at the end reads back from the files after reopening.
        let (writer, recovered) = Wal::open(
            dir.path(),
            WalOptions { mode, backend: Backend::Auto, ..options(WriterThreads::Background) },
        )
        .expect("reopen");
        let (first, last) = writer.held_range().expect("held");
        let read = writer.read_agreements(first - 1, last, u64::MAX).expect("all held");
        assert_eq!(read, recovered.records);
        writer.close().expect("close");
    }
}
