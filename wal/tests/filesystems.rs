//! The log on file systems that lack what it would rather use: `fallocate` (simulated by a
//! storage that refuses it, over the real one), and `O_DSYNC` it may not trust (the
//! decision is unit-tested in `dura_wal::fs`; here, that a trusted file system keeps the
//! configured mode and that the mode in effect is visible).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dura_wal::fs::FileSystem;
use dura_wal::io::{DurabilityMode, Preallocate, ZeroPace, fallocate_unsupported};
use dura_wal::{Backend, FsStorage, IoOp, Storage, Wal, WalError, WalOptions};

/// The real storage, except that preparing a file with `fallocate` fails with `errno`,
/// marked unsupported (as [`dura_wal::io::preallocate_paced`] marks EOPNOTSUPP, ENOSYS
/// and EINVAL) when `unsupported`.
#[derive(Debug)]
struct NoFallocate {
    inner: FsStorage,
    errno: i32,
    unsupported: bool,
    calls: Arc<Calls>,
}

#[derive(Debug, Default)]
struct Calls {
    fallocate: AtomicUsize,
    zeroed: AtomicUsize,
}

impl Storage for NoFallocate {
    type File = <FsStorage as Storage>::File;

    fn dir(&self) -> &Path {
        self.inner.dir()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read_all(name)
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
        match how {
            Preallocate::Fallocate => {
                self.calls.fallocate.fetch_add(1, Ordering::SeqCst);
                // Like the real preparation: the file exists, then fallocate fails.
                std::fs::write(self.path(name), b"")?;
                let error = io::Error::from_raw_os_error(self.errno);
                Err(if self.unsupported { fallocate_unsupported(error) } else { error })
            }
            Preallocate::Zeroed => {
                self.calls.zeroed.fetch_add(1, Ordering::SeqCst);
                self.inner.create_prepared(name, len_bytes, how, pace)
            }
            Preallocate::Sparse => self.inner.create_prepared(name, len_bytes, how, pace),
        }
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

const SEGMENT_BYTES: u64 = 256 * 1024;

fn options() -> WalOptions {
    WalOptions {
        mode: DurabilityMode::Fdatasync,
        backend: Backend::Pwrite,
        segment_bytes: SEGMENT_BYTES,
        group_bytes_max: 16 * 1024,
        record_bytes_max: 64 * 1024,
        preallocate: Preallocate::Fallocate,
        ..WalOptions::default()
    }
}

fn storage(dir: &Path, errno: i32, unsupported: bool, calls: &Arc<Calls>) -> NoFallocate {
    NoFallocate {
        inner: FsStorage::new(dir, DurabilityMode::Fdatasync, Backend::Pwrite).expect("storage"),
        errno,
        unsupported,
        calls: Arc::clone(calls),
    }
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_refused_fallocate_falls_back_to_zero_fill_once_per_log() {
    for errno in [libc::EOPNOTSUPP, libc::ENOSYS, libc::EINVAL] {
        let dir = tempfile::tempdir().expect("tempdir");
        let calls = Arc::new(Calls::default());
        let (writer, recovered) =
            Wal::open_with_storage(storage(dir.path(), errno, true, &calls), options())
                .expect("the log opens although fallocate is refused");
        assert!(recovered.records.is_empty());
        assert!(writer.fallocate_refused());
        // Roll several segments: every new one is zero-filled without asking again.
        for id in 1..=6u64 {
            writer.append(id, id, &id.to_le_bytes()).expect("append").wait().expect("durable");
            writer.cut_segment(id).expect("cut");
        }
        writer.append(7, 7, b"last").expect("append").wait().expect("durable");
        writer.close().expect("close");
        assert_eq!(calls.fallocate.load(Ordering::SeqCst), 1, "errno {errno}: asked once");
        let zeroed = calls.zeroed.load(Ordering::SeqCst);
        assert!(zeroed >= 7, "errno {errno}: {zeroed} zero-filled segments");
        let files = segment_files(dir.path());
        assert!(files.len() >= 7, "{files:?}");
        for file in &files {
            assert_eq!(std::fs::metadata(file).expect("metadata").len(), SEGMENT_BYTES);
        }

        // A reopened log finds every record, and learns the refusal afresh (once).
        let calls = Arc::new(Calls::default());
        let (writer, recovered) =
            Wal::open_with_storage(storage(dir.path(), errno, true, &calls), options())
                .expect("reopen");
        let ids: Vec<u64> = recovered.records.iter().map(|r| r.first_agreement_id).collect();
        assert_eq!(ids, (1..=7).collect::<Vec<_>>());
        writer.cut_segment(7).expect("cut");
        writer.append(8, 8, b"after reopen").expect("append").wait().expect("durable");
        writer.close().expect("close");
        assert_eq!(calls.fallocate.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn other_preparation_errors_are_not_taken_for_a_missing_fallocate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = Arc::new(Calls::default());
    // ENOSPC from fallocate is a full disk, not a missing feature: the open fails.
    let error = Wal::open_with_storage(storage(dir.path(), libc::ENOSPC, false, &calls), options())
        .expect_err("no space");
    let WalError::Io { op: IoOp::Create, source, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{error}");
    assert_eq!(calls.zeroed.load(Ordering::SeqCst), 0);
}

#[test]
fn a_trusted_file_system_keeps_the_configured_mode_and_the_mode_in_effect_is_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file_system = FileSystem::of(dir.path()).expect("statfs");
    for mode in [DurabilityMode::Dsync, DurabilityMode::Fdatasync] {
        for trust_dsync in [false, true] {
            let log = dir.path().join(format!("{mode}-{trust_dsync}"));
            let options =
                WalOptions { mode, trust_dsync, preallocate: Preallocate::Sparse, ..options() };
            let (writer, _) = Wal::open(&log, options).expect("open");
            let expected = if file_system.dsync_doubt().is_some() && !trust_dsync {
                DurabilityMode::Fdatasync
            } else {
                mode
            };
            assert_eq!(writer.storage().mode(), expected, "on {file_system}");
            writer.append(1, 1, b"x").expect("append").wait().expect("durable");
            writer.close().expect("close");
        }
    }
}

/// On a real directory named by `DURA_WAL_TEST_DIR` (e.g. a FUSE mount: `bindfs SRC
/// MNT` has neither fallocate nor, for the log, a trusted O_DSYNC): the log opens with
/// `fallocate` and `direct-dsync` asked for, in the mode the file system allows, and keeps
/// what it acknowledged across a reopen. Ignored without the variable.
#[test]
#[ignore = "needs DURA_WAL_TEST_DIR, a directory on the file system to try"]
fn the_log_works_on_the_file_system_named_by_dura_wal_test_dir() {
    let Some(root) = std::env::var_os("DURA_WAL_TEST_DIR") else {
        eprintln!("DURA_WAL_TEST_DIR is not set: nothing to try");
        return;
    };
    let dir = tempfile::tempdir_in(root).expect("tempdir in DURA_WAL_TEST_DIR");
    let file_system = FileSystem::of(dir.path()).expect("statfs");
    let options = WalOptions {
        mode: DurabilityMode::DirectDsync,
        backend: Backend::Auto,
        preallocate: Preallocate::Fallocate,
        ..options()
    };
    let (writer, _) = Wal::open(dir.path(), options.clone()).expect("open");
    let expected = match file_system.dsync_doubt() {
        Some(_) => DurabilityMode::Fdatasync,
        None => DurabilityMode::DirectDsync,
    };
    assert_eq!(writer.storage().mode(), expected, "on {file_system}");
    for id in 1..=3u64 {
        writer.append(id, id, &id.to_le_bytes()).expect("append").wait().expect("durable");
        writer.cut_segment(id).expect("cut");
    }
    eprintln!(
        "on {file_system}: mode {}, fallocate refused: {}",
        writer.storage().mode(),
        writer.fallocate_refused()
    );
    writer.close().expect("close");
    let (writer, recovered) = Wal::open(dir.path(), options).expect("reopen");
    let ids: Vec<u64> = recovered.records.iter().map(|r| r.first_agreement_id).collect();
    assert_eq!(ids, [1, 2, 3]);
    writer.close().expect("close");
}
