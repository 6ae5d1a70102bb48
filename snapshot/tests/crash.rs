//! Crashes and I/O errors while a checkpoint is written, and retention.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{chunks_for, load, write_standard};
use dura_snapshot::format::{NameKind, classify_name, file_name, temp_name};
use dura_snapshot::sim::{SimDir, SimOp, SimReader, SimWriter};
use dura_snapshot::{CheckpointError, CheckpointStore, Dir, DirWriter, IoOp, StoreOptions};

const SEEDS: u64 = 16;

fn retain(retain: usize) -> StoreOptions {
    StoreOptions { retain, ..StoreOptions::default() }
}

/// Operations a store takes to write the standard checkpoint over one older checkpoint
/// with retention 1 (create, writes, header, sync, rename, sync_dir, list, remove,
/// sync_dir).
fn ops_of_one_checkpoint() -> u64 {
    let dir = SimDir::new(0);
    let store = CheckpointStore::open(dir.clone(), retain(1)).expect("open");
    write_standard(&store, 5).expect("old");
    let base = dir.ops();
    let written = write_standard(&store, 10).expect("new");
    assert_eq!(written.removed, vec![file_name(5)]);
    dir.ops() - base
}

/// After a crash: reopening removes temp files, and the newest valid checkpoint is the
/// new one or the old one, never none and never a damaged one; the new one for sure if
/// the write reported it durable.
/// Returns the agreement loaded and whether a temp file survived the crash.
fn check_after_crash(dir: &SimDir, new_is_durable: bool, what: &str) -> (u64, bool) {
    let temp_survived = dir.names().iter().any(|name| classify_name(name) == NameKind::Temp);
    let store = CheckpointStore::open(dir.clone(), retain(1)).expect("reopen");
    for name in dir.names() {
        assert_ne!(classify_name(&name), NameKind::Temp, "{what}: {name} left behind");
    }
    let loaded = load(&store).expect("a valid checkpoint").expect("never nothing");
    assert!(loaded.skipped.is_empty(), "{what}: a damaged checkpoint under a final name");
    let agreement_id = loaded.verified.header.agreement_id;
    assert!(agreement_id == 5 || agreement_id == 10, "{what}: {agreement_id}");
    assert_eq!(loaded.value, chunks_for(agreement_id), "{what}");
    if new_is_durable {
        assert_eq!(agreement_id, 10, "{what}: reported durable, then lost");
    }
    // The store works on after the crash.
    write_standard(&store, 11).expect("a checkpoint after the crash");
    assert_eq!(load(&store).expect("load").expect("some").verified.header.agreement_id, 11);
    (agreement_id, temp_survived)
}

/// What the crash runs saw, to show each interesting outcome happened.
#[derive(Debug, Default)]
struct Outcomes {
    new_before_reported_durable: u64,
    old_after_rename_attempt: u64,
    temp_survived: u64,
}

impl Outcomes {
    fn add(&mut self, (agreement_id, temp_survived): (u64, bool), durable: bool) {
        self.new_before_reported_durable += u64::from(agreement_id == 10 && !durable);
        self.old_after_rename_attempt += u64::from(agreement_id == 5);
        self.temp_survived += u64::from(temp_survived);
    }

    fn assert_all_seen(&self) {
        assert!(self.new_before_reported_durable > 0, "{self:?}");
        assert!(self.old_after_rename_attempt > 0, "{self:?}");
        assert!(self.temp_survived > 0, "{self:?}");
    }
}

fn durable(result: &dura_snapshot::Result<dura_snapshot::Written>) -> bool {
    matches!(result, Ok(_) | Err(CheckpointError::Retention { .. }))
}

#[test]
fn a_power_cut_at_every_operation_leaves_the_new_or_the_old_checkpoint() {
    let ops = ops_of_one_checkpoint();
    assert!(ops >= 12, "{ops} operations");
    let mut outcomes = Outcomes::default();
    for seed in 0..SEEDS {
        for k in 0..=ops {
            let dir = SimDir::new(seed << 16 | k);
            let store = CheckpointStore::open(dir.clone(), retain(1)).expect("open");
            write_standard(&store, 5).expect("old");
            dir.halt_at_op(dir.ops() + k);
            let result = write_standard(&store, 10);
            assert_eq!(result.is_ok(), k == ops, "seed {seed} op {k}: {result:?}");
            dir.crash();
            let what = format!("seed {seed}, power cut at op {k}");
            outcomes.add(check_after_crash(&dir, durable(&result), &what), durable(&result));
        }
    }
    outcomes.assert_all_seen();
}

#[test]
fn a_failed_operation_at_every_step_then_a_crash_leaves_the_new_or_the_old_checkpoint() {
    let ops = ops_of_one_checkpoint();
    let mut outcomes = Outcomes::default();
    for seed in 0..SEEDS {
        for k in 0..=ops {
            let dir = SimDir::new(seed << 16 | k);
            let store = CheckpointStore::open(dir.clone(), retain(1)).expect("open");
            write_standard(&store, 5).expect("old");
            dir.fail_op(dir.ops() + k);
            let result = write_standard(&store, 10);
            assert_eq!(result.is_ok(), k == ops, "seed {seed} op {k}: {result:?}");
            if result.is_err() && !durable(&result) {
                // Before the rename nothing of the new checkpoint is visible (the temp
                // file was removed); the old one is untouched.
                let names = dir.names();
                assert!(names.contains(&file_name(5)), "seed {seed} op {k}: {names:?}");
                assert!(!names.contains(&temp_name(10)), "seed {seed} op {k}: {names:?}");
            }
            dir.crash();
            let what = format!("seed {seed}, failed op {k}");
            outcomes.add(check_after_crash(&dir, durable(&result), &what), durable(&result));
        }
    }
    outcomes.assert_all_seen();
}

#[test]
fn an_fsync_error_in_finish_is_returned_and_the_old_checkpoint_stays() {
    let dir = SimDir::new(1);
    let store = CheckpointStore::open(dir.clone(), retain(1)).expect("open");
    write_standard(&store, 5).expect("old");
    dir.fail_nth(SimOp::Sync, 0);
    let error = write_standard(&store, 10).expect_err("sync fails");
    assert!(matches!(error, CheckpointError::Io { op: IoOp::Sync, .. }), "{error}");
    assert!(error.to_string().contains(&temp_name(10)), "{error}");
    assert_eq!(dir.names(), vec![file_name(5)], "temp removed, old kept");
    dir.crash();
    check_after_crash(&dir, false, "fsync error");

    // A failed directory sync after the rename is returned too; retention did not run.
    let dir = SimDir::new(2);
    let store = CheckpointStore::open(dir.clone(), retain(1)).expect("open");
    write_standard(&store, 5).expect("old");
    dir.fail_nth(SimOp::SyncDir, 0);
    let error = write_standard(&store, 10).expect_err("sync_dir fails");
    assert!(matches!(error, CheckpointError::Io { op: IoOp::SyncDir, .. }), "{error}");
    assert_eq!(dir.names(), vec![file_name(5), file_name(10)]);
    dir.crash();
    check_after_crash(&dir, false, "directory fsync error");
}

#[test]
fn retention_keeps_the_newest_and_never_the_one_just_written_out() {
    let dir = SimDir::new(3);
    let store = CheckpointStore::open(dir.clone(), retain(2)).expect("open");
    for agreement_id in 1..=5u64 {
        let written = write_standard(&store, agreement_id).expect("write");
        let ids: Vec<u64> = store.list().expect("list").iter().map(|e| e.agreement_id).collect();
        let expected: Vec<u64> =
            (agreement_id.saturating_sub(1).max(1)..=agreement_id).rev().collect();
        assert_eq!(ids, expected);
        if agreement_id > 2 {
            assert_eq!(written.removed, vec![file_name(agreement_id - 2)]);
        }
    }
    // An older checkpoint written after newer ones (the loader skipped them as
    // damaged): the newer ones are left alone and the one written is kept...
    let store = CheckpointStore::open(dir.clone(), retain(1)).expect("open");
    let written = write_standard(&store, 3).expect("write 3");
    assert!(written.removed.is_empty());
    assert_eq!(dir.names(), vec![file_name(3), file_name(4), file_name(5)]);
    // ...until a checkpoint passes them.
    let written = write_standard(&store, 6).expect("write 6");
    assert_eq!(written.removed, vec![file_name(5), file_name(4), file_name(3)]);
    assert_eq!(dir.names(), vec![file_name(6)]);
}

/// Wraps a [`SimDir`] and records the operations that matter for ordering.
#[derive(Debug, Clone)]
struct Recording {
    inner: SimDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn record(&self, entry: String) {
        self.log.lock().expect("log").push(entry);
    }
}

struct RecordingWriter {
    inner: SimWriter,
    log: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl DirWriter for RecordingWriter {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.log.lock().expect("log").push(format!("write_at {}", self.name));
        self.inner.write_at(offset, buf)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.log.lock().expect("log").push(format!("sync {}", self.name));
        self.inner.sync()
    }
}

impl Dir for Recording {
    type Writer = RecordingWriter;
    type Reader = SimReader;

    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }

    fn create(&self, name: &str) -> std::io::Result<RecordingWriter> {
        self.record(format!("create {name}"));
        let inner = self.inner.create(name)?;
        Ok(RecordingWriter { inner, log: Arc::clone(&self.log), name: name.to_owned() })
    }

    fn open_read(&self, name: &str) -> std::io::Result<SimReader> {
        self.inner.open_read(name)
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.record(format!("rename {from} {to}"));
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.record(format!("remove {name}"));
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        self.record("sync_dir".to_owned());
        self.inner.sync_dir()
    }
}

#[test]
fn old_checkpoints_are_removed_only_after_the_new_one_is_durable() {
    let dir = Recording { inner: SimDir::new(4), log: Arc::default() };
    let store = CheckpointStore::open(dir.clone(), retain(1)).expect("open");
    write_standard(&store, 1).expect("write 1");
    dir.log.lock().expect("log").clear();
    write_standard(&store, 2).expect("write 2");
    let (temp, name) = (temp_name(2), file_name(2));
    let expected = vec![
        format!("create {temp}"),
        format!("write_at {temp}"),
        format!("sync {temp}"),
        format!("rename {temp} {name}"),
        "sync_dir".to_owned(),
        format!("remove {}", file_name(1)),
        "sync_dir".to_owned(),
    ];
    assert_eq!(*dir.log.lock().expect("log"), expected);
}
