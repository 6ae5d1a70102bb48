//! The narrow directory interface checkpoints are written through, and its real
//! implementation over `std::fs`.
//!
//! [`Dir`] is a checkpoint directory, [`DirWriter`] a file being written and
//! [`DirReader`] a file being read by positioned reads (a checkpoint is never read into
//! one buffer). [`FsDir`] is the real one; [`crate::sim::SimDir`] the simulated twin the
//! tests and the engine's simulator crash. The store never touches the file system but
//! through these traits.
//!
//! Contract (what the store relies on, and what the simulated twin enforces):
//!
//! * Bytes written to a file are durable only after [`DirWriter::sync`] returned `Ok`.
//! * A create, rename or remove is durable only after the following
//!   [`Dir::sync_dir`] returned `Ok`.
//! * A failed sync leaves the file's durable contents unknown; the caller never retries
//!   it (fsync error semantics on Linux: the kernel may have dropped the dirty pages).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file open for writing: appended to, its already written bytes overwritable, synced.
pub trait DirWriter: Send {
    /// Appends all of `buf` at the end of what was written.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Overwrites bytes at `offset`; `offset + buf.len()` must not pass what was
    /// written (panics otherwise: a caller's invariant).
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Makes everything written so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// A file open for positioned reads.
pub trait DirReader: Send {
    /// The file's length when it was opened.
    fn len_bytes(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`; an error if the file ends first.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A checkpoint directory. Cloning gives another handle to the same directory.
pub trait Dir: Clone + fmt::Debug + Send + Sync + 'static {
    /// Files being written.
    type Writer: DirWriter;
    /// Files being read.
    type Reader: DirReader;

    /// The directory, for error messages.
    fn path(&self) -> &Path;

    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Creates `name` empty for writing (truncating a file of that name).
    fn create(&self, name: &str) -> io::Result<Self::Writer>;

    /// Opens `name` for reading.
    fn open_read(&self, name: &str) -> io::Result<Self::Reader>;

    /// Renames `from` to `to`, atomically replacing `to`. Durable after `sync_dir`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Removes `name`. Durable after `sync_dir`.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;

    /// Full path of `name`, for messages.
    fn file_path(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

/// Write buffer of [`FsWriter`]: frames and small chunks are gathered, large payloads go
/// straight through.
const FS_WRITE_BUFFER_BYTES: usize = 1 << 20;

/// A real checkpoint directory.
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// The existing directory `path` (an error if it is missing or not a directory).
    pub fn new(path: impl Into<PathBuf>) -> io::Result<FsDir> {
        let path = path.into();
        if !std::fs::metadata(&path)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(FsDir { path })
    }
}

/// A checkpoint being written is synced every this many bytes (not for durability:
/// the final sync gives that). Without it a 1 GiB checkpoint sat in the page cache and
/// its one final fsync queued a gigabyte of writeback in front of the log's synced
/// writes, stalling replies for seconds; in steps the log's writes wait behind 8 MiB
/// at most.
pub const WRITEBACK_STEP_BYTES: u64 = 8 << 20;

/// A removed checkpoint larger than this gives its blocks back in steps of this size.
///
/// Why: freeing a gigabyte at once (one unlink) made every replica's synced log writes
/// on the same file system wait (seen on a lent machine's ext4 mounted with `discard`:
/// the cluster's throughput fell to a third for about half a second after each
/// removal). Truncating in steps with a pause between spreads that work out, the way a
/// database's rate-limited file deletion does.
pub const RECLAIM_STEP_BYTES: u64 = 32 << 20;
/// Pause between two reclaim steps: 32 MiB every 100 ms gives back about 320 MiB/s,
/// so a 1 GiB checkpoint is gone in about 3 s, far less than the time between two
/// checkpoints of one replica.
pub const RECLAIM_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// Reclaims running at once (process-wide); beyond it a removal unlinks at once.
pub const RECLAIMERS_MAX: usize = 4;
/// Suffix of a file being reclaimed. It ends like a temporary checkpoint name, so a
/// reclaim a crash interrupted is finished by [`crate::CheckpointStore::open`], which
/// removes temporary files.
pub const RECLAIM_SUFFIX: &str = ".reclaim.dck.tmp";

static RECLAIMERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the [`RECLAIMERS_MAX`] reclaim threads; freed when dropped.
struct ReclaimSlot;

impl ReclaimSlot {
    fn take() -> Option<ReclaimSlot> {
        use std::sync::atomic::Ordering;
        RECLAIMERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < RECLAIMERS_MAX).then_some(running + 1)
            })
            .ok()
            .map(|_| ReclaimSlot)
    }
}

impl Drop for ReclaimSlot {
    fn drop(&mut self) {
        let before = RECLAIMERS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        assert!(before > 0, "a reclaim slot was freed twice");
    }
}

/// Checkpoint files that a reader in this process still streams (state transfer's
/// data path sends a whole checkpoint to a peer, which at 1 GiB takes seconds), by
/// device and inode, with their readers. A reclaim never shrinks such a file under its
/// reader: it unlinks it whole, and the blocks come back when the reader closes it.
/// Found on the lent machine: with a checkpoint every 5 s, a transfer's stream of the
/// older retained checkpoint was shrunk under it and every seeder failed. Bounded by
/// the readers (the data path's `transfer_streams_max` per replica).
static PINS: std::sync::Mutex<std::collections::BTreeMap<(u64, u64), usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A reader's hold on a checkpoint file: a reclaim never shrinks the file while one
/// is held ([`reclaim_paced`]); released when dropped.
#[derive(Debug)]
pub struct ReadPin {
    key: (u64, u64),
}

impl ReadPin {
    /// Holds `file` (open for reading) until the pin is dropped.
    pub fn of(file: &File) -> io::Result<ReadPin> {
        let key = file_key(file)?;
        *PINS.lock().expect("pins lock").entry(key).or_insert(0) += 1;
        Ok(ReadPin { key })
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        let mut pins = PINS.lock().expect("pins lock");
        let readers = pins.get_mut(&self.key).expect("a pin is registered");
        *readers -= 1;
        if *readers == 0 {
            pins.remove(&self.key);
        }
    }
}

fn file_key(file: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

fn is_pinned(file: &File) -> io::Result<bool> {
    let key = file_key(file)?;
    Ok(PINS.lock().expect("pins lock").contains_key(&key))
}

/// Shrinks the file at `path` (`len` bytes) by [`RECLAIM_STEP_BYTES`] at a time, with
/// `pause` between steps, then unlinks it. Its name was taken away first, so no new
/// reader opens it; one that opened it before ([`ReadPin`]) stops the shrinking: the
/// file is unlinked whole. No sync: the blocks are free space whether or not a crash
/// comes.
pub fn reclaim_paced(path: &Path, len: u64, pause: std::time::Duration) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut left = len.min(file.metadata()?.len());
    while left > RECLAIM_STEP_BYTES && !is_pinned(&file)? {
        left -= RECLAIM_STEP_BYTES;
        file.set_len(left)?;
        std::thread::sleep(pause);
    }
    drop(file);
    match std::fs::remove_file(path) {
        // A store opened meanwhile in this process removed it as a leftover.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// A file of [`FsDir`] being written./// A file of [`FsDir`] being written.
#[derive(Debug)]
pub struct FsWriter {
    file: BufWriter<File>,
    written: u64,
    /// Bytes written when the file was last synced.
    synced: u64,
}

impl DirWriter for FsWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        if self.written - self.synced >= WRITEBACK_STEP_BYTES {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
            self.synced = self.written;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        assert!(offset + buf.len() as u64 <= self.written, "write_at past the written end");
        self.file.flush()?;
        self.file.get_ref().write_all_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()
    }
}

/// A file of [`FsDir`] being read.
#[derive(Debug)]
pub struct FsReader {
    file: File,
    len_bytes: u64,
}

impl DirReader for FsReader {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl Dir for FsDir {
    type Writer = FsWriter;
    type Reader = FsReader;

    fn path(&self) -> &Path {
        &self.path
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            // A name that is not UTF-8 is nobody's checkpoint.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<FsWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.file_path(name))?;
        Ok(FsWriter {
            file: BufWriter::with_capacity(FS_WRITE_BUFFER_BYTES, file),
            written: 0,
            synced: 0,
        })
    }

    fn open_read(&self, name: &str) -> io::Result<FsReader> {
        let file = File::open(self.file_path(name))?;
        let len_bytes = file.metadata()?.len();
        Ok(FsReader { file, len_bytes })
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.file_path(from), self.file_path(to))
    }

    /// Removes `name`. A file larger than [`RECLAIM_STEP_BYTES`] is renamed out of the
    /// way at once (so the name is gone, durable after `sync_dir`, as the contract says)
    /// and a background thread gives its blocks back in steps (see [`reclaim_paced`]).
    fn remove(&self, name: &str) -> io::Result<()> {
        let path = self.file_path(name);
        let len = std::fs::metadata(&path)?.len();
        if len <= RECLAIM_STEP_BYTES {
            return std::fs::remove_file(&path);
        }
        let Some(slot) = ReclaimSlot::take() else {
            log::debug!("checkpoints: {} reclaimers busy; removing at once", RECLAIMERS_MAX);
            return std::fs::remove_file(&path);
        };
        let doomed = self.file_path(&format!("{name}{RECLAIM_SUFFIX}"));
        std::fs::rename(&path, &doomed)?;
        let spawned = std::thread::Builder::new().name("ckpt-reclaim".into()).spawn({
            let doomed = doomed.clone();
            move || {
                let _slot = slot;
                if let Err(error) = reclaim_paced(&doomed, len, RECLAIM_STEP_PAUSE) {
                    log::warn!("checkpoints: reclaiming {}: {error}", doomed.display());
                }
            }
        });
        match spawned {
            Ok(_) => Ok(()),
            Err(_) => std::fs::remove_file(&doomed),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_dir_writes_overwrites_reads_renames_and_removes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = FsDir::new(tmp.path()).expect("dir");
        let mut writer = dir.create("a").expect("create");
        writer.write_all(b"hello ").expect("write");
        writer.write_all(b"world").expect("write");
        writer.write_at(0, b"J").expect("write_at");
        writer.sync().expect("sync");
        drop(writer);
        dir.rename("a", "b").expect("rename");
        dir.sync_dir().expect("sync_dir");
        assert_eq!(dir.list().expect("list"), vec!["b".to_owned()]);
        let mut reader = dir.open_read("b").expect("open");
        assert_eq!(reader.len_bytes(), 11);
        let mut buf = [0u8; 5];
        reader.read_exact_at(6, &mut buf).expect("read");
        assert_eq!(&buf, b"world");
        reader.read_exact_at(0, &mut buf).expect("read");
        assert_eq!(&buf, b"Jello");
        assert!(reader.read_exact_at(8, &mut buf).is_err(), "past the end");
        dir.remove("b").expect("remove");
        assert!(dir.list().expect("list").is_empty());
        assert!(FsDir::new(tmp.path().join("missing")).is_err());
    }

    #[test]
    fn a_large_removed_file_loses_its_name_at_once_and_its_blocks_in_steps() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = FsDir::new(tmp.path()).expect("dir");
        let name = "checkpoint-00000000000000000007.dck";
        let file = File::create(dir.file_path(name)).expect("create");
        // Sparse: the length is what decides, and a test need not write 100 MiB.
        file.set_len(3 * RECLAIM_STEP_BYTES + 1).expect("set_len");
        drop(file);
        dir.remove(name).expect("remove");
        let left = dir.list().expect("list");
        assert!(!left.iter().any(|n| n == name), "the name goes at once: {left:?}");
        assert!(
            left.iter().all(|n| n.ends_with(RECLAIM_SUFFIX)),
            "at most the file being reclaimed: {left:?}"
        );
        assert!(
            left.iter().all(|n| crate::format::classify_name(n) == crate::format::NameKind::Temp),
            "a reclaim cut short by a crash is a temporary file the next open removes"
        );
        // Bounded wait for the background thread (4 steps of 100 ms; generous for a
        // loaded machine, and not a speed check: only that it ends).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !dir.list().expect("list").is_empty() {
            assert!(std::time::Instant::now() < deadline, "the reclaim never finished");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_reclaim_never_shrinks_a_file_a_reader_still_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("held");
        let bytes: Vec<u8> = (0..3 * RECLAIM_STEP_BYTES).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let reader = File::open(&path).expect("open");
        let pin = ReadPin::of(&reader).expect("pin");
        reclaim_paced(&path, bytes.len() as u64, std::time::Duration::ZERO).expect("reclaim");
        assert!(!path.exists(), "the name is gone");
        // The reader still reads every byte of it.
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut &reader, &mut read).expect("read");
        assert!(read == bytes, "the file was shrunk under its reader");
        drop(pin);
        assert!(!is_pinned(&reader).expect("key"), "the pin is released");
    }

    #[test]
    fn reclaim_shrinks_then_unlinks_and_tolerates_a_file_already_gone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("doomed");
        let file = File::create(&path).expect("create");
        file.set_len(2 * RECLAIM_STEP_BYTES + 5).expect("set_len");
        drop(file);
        reclaim_paced(&path, 2 * RECLAIM_STEP_BYTES + 5, std::time::Duration::ZERO)
            .expect("reclaim");
        assert!(!path.exists());
        assert!(reclaim_paced(&path, 1, std::time::Duration::ZERO).is_err(), "nothing to open");
        // A small file is removed at once, without a reclaim.
        let dir = FsDir::new(tmp.path()).expect("dir");
        std::fs::write(dir.file_path("small"), b"x").expect("write");
        dir.remove("small").expect("remove");
        assert!(dir.list().expect("list").is_empty());
    }
}
