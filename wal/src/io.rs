//! File-level building blocks shared by the log writer, the device probe (`dura-tune
//! probe`) and the WAL benchmark: durability modes, aligned buffers, opening a file with a
//! mode's flags, pre-zeroing, and directory fsync.
//!
//! These names are a stable interface for the other crates of the workspace.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

pub use crate::aligned::{ALIGN_BYTES, AlignedBuf, align_up};

/// How a log write is made durable.
///
/// Contract: when a write made under a durable mode ([`is_durable`](Self::is_durable))
/// has returned (and, for [`Fdatasync`](Self::Fdatasync), the following `fdatasync` has
/// returned), the written bytes survive a power failure. [`AsyncUnsafe`](Self::AsyncUnsafe)
/// never syncs: a crash may lose any suffix of what was written; for experiments only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DurabilityMode {
    /// `O_DIRECT | O_DSYNC`: each write bypasses the page cache and returns once it is
    /// on stable storage. Buffers, offsets and lengths must be 4 KiB-aligned. The default.
    #[default]
    DirectDsync,
    /// `O_DSYNC` through the page cache: each write returns once it is durable.
    Dsync,
    /// Plain buffered write followed by `fdatasync`.
    Fdatasync,
    /// Buffered writes that are NEVER synced. Not durable: for baseline experiments
    /// (the paper's "async" logging).
    AsyncUnsafe,
}

impl DurabilityMode {
    /// Every mode, in documentation order.
    pub const ALL: [DurabilityMode; 4] = [
        DurabilityMode::DirectDsync,
        DurabilityMode::Dsync,
        DurabilityMode::Fdatasync,
        DurabilityMode::AsyncUnsafe,
    ];

    /// The extra `open(2)` flags of the mode.
    pub fn open_flags(self) -> libc::c_int {
        match self {
            DurabilityMode::DirectDsync => libc::O_DIRECT | libc::O_DSYNC,
            DurabilityMode::Dsync => libc::O_DSYNC,
            DurabilityMode::Fdatasync | DurabilityMode::AsyncUnsafe => 0,
        }
    }

    /// True when the file is opened with `O_DIRECT` (aligned I/O required).
    pub fn is_direct(self) -> bool {
        self == DurabilityMode::DirectDsync
    }

    /// True when a write counts durable because the file was opened with `O_DSYNC`
    /// (a promise the file system must keep; see [`crate::fs`]).
    pub fn relies_on_dsync(self) -> bool {
        self.open_flags() & libc::O_DSYNC != 0
    }

    /// True when each write must be followed by an explicit `fdatasync`.
    pub fn needs_fdatasync(self) -> bool {
        self == DurabilityMode::Fdatasync
    }

    /// True when a completed write (plus the mode's sync) is durable.
    pub fn is_durable(self) -> bool {
        self != DurabilityMode::AsyncUnsafe
    }

    /// The stable name (`direct-dsync`, `dsync`, `fdatasync`, `async-unsafe`).
    pub fn name(self) -> &'static str {
        match self {
            DurabilityMode::DirectDsync => "direct-dsync",
            DurabilityMode::Dsync => "dsync",
            DurabilityMode::Fdatasync => "fdatasync",
            DurabilityMode::AsyncUnsafe => "async-unsafe",
        }
    }
}

impl fmt::Display for DurabilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a durability mode (or preallocation strategy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}; expected one of: {expected}")]
pub struct UnknownName {
    /// What was being parsed.
    pub kind: &'static str,
    /// The name given.
    pub name: String,
    /// The accepted names.
    pub expected: &'static str,
}

impl FromStr for DurabilityMode {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct-dsync" => Ok(DurabilityMode::DirectDsync),
            "dsync" => Ok(DurabilityMode::Dsync),
            "fdatasync" => Ok(DurabilityMode::Fdatasync),
            "async-unsafe" | "never-synced" => Ok(DurabilityMode::AsyncUnsafe),
            _ => Err(UnknownName {
                kind: "durability mode",
                name: s.to_owned(),
                expected: "direct-dsync, dsync, fdatasync, async-unsafe",
            }),
        }
    }
}

/// How a new segment file's blocks are prepared before the log writes into them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preallocate {
    /// Write zeros over the whole length and sync: later log writes are overwrites of
    /// written blocks (the fast case on ext4/xfs). The default.
    #[default]
    Zeroed,
    /// `fallocate`: blocks reserved but unwritten (each first write converts an extent).
    Fallocate,
    /// `ftruncate` only: a sparse file (each first write allocates).
    Sparse,
}

impl Preallocate {
    /// The stable name (`zeroed`, `fallocate`, `sparse`).
    pub fn name(self) -> &'static str {
        match self {
            Preallocate::Zeroed => "zeroed",
            Preallocate::Fallocate => "fallocate",
            Preallocate::Sparse => "sparse",
        }
    }
}

impl fmt::Display for Preallocate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preallocate {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zeroed" => Ok(Preallocate::Zeroed),
            "fallocate" => Ok(Preallocate::Fallocate),
            "sparse" => Ok(Preallocate::Sparse),
            _ => Err(UnknownName {
                kind: "preallocation",
                name: s.to_owned(),
                expected: "zeroed, fallocate, sparse",
            }),
        }
    }
}

/// Opens an existing file for reading and writing with the flags of `mode`.
///
/// Fails with the OS error when the file system refuses the flags (e.g. `EINVAL` for
/// `O_DIRECT` on tmpfs).
pub fn open_with_mode(path: &Path, mode: DurabilityMode) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).custom_flags(mode.open_flags()).open(path)
}

/// Bytes written per call when zero-filling a file.
pub const ZERO_CHUNK_BYTES: usize = 128 * 1024;
const _: () = assert!(ZERO_CHUNK_BYTES.is_multiple_of(ALIGN_BYTES));

/// What a paced zero-fill does next (see [`preallocate_paced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroPace {
    /// Write the next chunk of zeros now.
    Go,
    /// The device is busy with more urgent writes: wait a little and ask again.
    Wait,
    /// Stop zeroing: the rest of the file stays allocated but unwritten (it reads as
    /// zeros; the first write to each of its blocks pays for the extent conversion).
    Stop,
}

/// How long a paced zero-fill sleeps on [`ZeroPace::Wait`].
pub const ZERO_PACE_WAIT: std::time::Duration = std::time::Duration::from_micros(100);

/// Creates `path` (truncating any previous file) with `len_bytes` bytes prepared as
/// `how` says, then syncs the file and its parent directory.
///
/// Contract: on `Ok`, the file exists under its name with its full length, durably, and
/// for [`Preallocate::Zeroed`] every block has been written with zeros. On error, a
/// partial file may exist; the caller removes or retries it.
pub fn preallocate(path: &Path, len_bytes: u64, how: Preallocate) -> io::Result<()> {
    preallocate_paced(path, len_bytes, how, &mut || ZeroPace::Go).map(drop)
}

/// [`preallocate`] whose zero-fill ([`Preallocate::Zeroed`]) asks `pace` before each
/// [`ZERO_CHUNK_BYTES`] chunk, so that it can yield the device to the log's own writes
/// and stop when the file is needed. The file is first reserved with `fallocate` (or
/// extended, where that is unsupported), then zeroed from the front with `O_DIRECT`
/// writes (buffered where `O_DIRECT` is refused), so a stopped fill leaves a file that is
/// complete and reads as zeros. Returns the bytes zeroed.
///
/// Contract: on `Ok` the file exists at full length, durably (file and directory synced).
pub fn preallocate_paced(
    path: &Path,
    len_bytes: u64,
    how: Preallocate,
    pace: &mut dyn FnMut() -> ZeroPace,
) -> io::Result<u64> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let mut zeroed = 0u64;
    match how {
        Preallocate::Zeroed => {
            if crate::sys::fallocate(&file, len_bytes).is_err() {
                file.set_len(len_bytes)?;
            }
            let direct = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path);
            let writer = direct.as_ref().unwrap_or(&file);
            let mut zeros = AlignedBuf::with_capacity(ZERO_CHUNK_BYTES);
            zeros.extend_zeros(ZERO_CHUNK_BYTES);
            while zeroed < len_bytes {
                match pace() {
                    ZeroPace::Go => {}
                    ZeroPace::Wait => {
                        std::thread::sleep(ZERO_PACE_WAIT);
                        continue;
                    }
                    ZeroPace::Stop => break,
                }
                let chunk = usize::try_from((len_bytes - zeroed).min(ZERO_CHUNK_BYTES as u64))
                    .expect("chunk fits usize");
                // O_DIRECT needs whole blocks; a short last chunk goes through the page cache.
                if chunk % ALIGN_BYTES == 0 {
                    writer.write_all_at(&zeros.as_slice()[..chunk], zeroed)?;
                } else {
                    file.write_all_at(&zeros.as_slice()[..chunk], zeroed)?;
                }
                zeroed += chunk as u64;
            }
        }
        Preallocate::Fallocate => {
            crate::sys::fallocate(&file, len_bytes).map_err(|error| {
                if fallocate_errno_means_unsupported(&error) {
                    fallocate_unsupported(error)
                } else {
                    error
                }
            })?;
        }
        Preallocate::Sparse => file.set_len(len_bytes)?,
    }
    file.sync_all()?;
    sync_parent_dir(path)?;
    Ok(zeroed)
}

/// Whether an error of `fallocate(fd, 0, 0, len)` with `len > 0` says that the file
/// system does not offer it: `EOPNOTSUPP` (FUSE, older NFS, ...), `ENOSYS` (no such call:
/// an old kernel or a seccomp filter) or `EINVAL` (documented for bad arguments, which a
/// zero offset, mode 0 and a positive length are not; some file systems answer it for
/// an operation they lack).
pub fn fallocate_errno_means_unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL))
}

/// `fallocate` failed because the file system does not offer it (see
/// [`fallocate_errno_means_unsupported`]); the OS error is its source.
#[derive(Debug, thiserror::Error)]
#[error("the file system does not support fallocate: {source}")]
struct FallocateUnsupported {
    source: io::Error,
}

/// The error [`preallocate_paced`] returns for [`Preallocate::Fallocate`] when the file
/// system refuses `fallocate` as unsupported; `source` is the OS error. A [`Storage`]
/// other than the real one (a test's) returns it to say the same.
///
/// [`Storage`]: crate::Storage
pub fn fallocate_unsupported(source: io::Error) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, FallocateUnsupported { source })
}

/// True for an error made by [`fallocate_unsupported`]: preparing a file with
/// [`Preallocate::Fallocate`] failed only because the file system lacks `fallocate`, and
/// zero-filling it ([`Preallocate::Zeroed`]) may work. Any other failure of the
/// preparation (open, sync, a full disk) is not this.
pub fn is_fallocate_unsupported(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<FallocateUnsupported>())
}

/// `fsync` of a directory, making creates, renames and deletes inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `fsync` of the directory holding `path`.
pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Writes all of `buf` at `offset` with `pwrite` and makes it durable as `mode` says
/// (an `fdatasync` after the write for [`DurabilityMode::Fdatasync`]).
///
/// Contract: on `Ok` under a durable mode the bytes are on stable storage. On error the
/// region's contents are unknown and the file must not be written again (no retry: the
/// kernel may have dropped the dirty pages). For [`DurabilityMode::DirectDsync`] `buf`'s
/// address, its length and `offset` must be multiples of [`ALIGN_BYTES`].
pub fn synced_write_at(
    file: &File,
    buf: &[u8],
    offset: u64,
    mode: DurabilityMode,
) -> io::Result<()> {
    if mode.is_direct() {
        assert_eq!(buf.as_ptr() as usize % ALIGN_BYTES, 0, "O_DIRECT buffer unaligned");
        assert_eq!(buf.len() % ALIGN_BYTES, 0, "O_DIRECT length unaligned");
        assert_eq!(offset % ALIGN_BYTES as u64, 0, "O_DIRECT offset unaligned");
    }
    file.write_all_at(buf, offset)?;
    if mode.needs_fdatasync() {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip() {
        for mode in DurabilityMode::ALL {
            assert_eq!(mode.to_string().parse::<DurabilityMode>(), Ok(mode));
        }
        assert_eq!("never-synced".parse(), Ok(DurabilityMode::AsyncUnsafe));
        assert!("fsync".parse::<DurabilityMode>().is_err());
        for how in [Preallocate::Zeroed, Preallocate::Fallocate, Preallocate::Sparse] {
            assert_eq!(how.to_string().parse::<Preallocate>(), Ok(how));
        }
    }

    #[test]
    fn only_an_unsupported_fallocate_is_marked_as_such() {
        for errno in [libc::EOPNOTSUPP, libc::ENOSYS, libc::EINVAL] {
            let error = io::Error::from_raw_os_error(errno);
            assert!(fallocate_errno_means_unsupported(&error), "{error}");
            let marked = fallocate_unsupported(error);
            assert!(is_fallocate_unsupported(&marked));
            assert!(marked.to_string().contains("does not support fallocate"), "{marked}");
        }
        for errno in [libc::ENOSPC, libc::EIO, libc::EBADF] {
            let error = io::Error::from_raw_os_error(errno);
            assert!(!fallocate_errno_means_unsupported(&error), "{error}");
            assert!(!is_fallocate_unsupported(&error));
        }
        let other = io::Error::new(io::ErrorKind::Unsupported, "something else");
        assert!(!is_fallocate_unsupported(&other));
    }

    #[test]
    fn preallocated_file_has_its_length_and_takes_synced_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for how in [Preallocate::Zeroed, Preallocate::Fallocate, Preallocate::Sparse] {
            let path = dir.path().join(format!("seg-{how}"));
            preallocate(&path, 3 * ZERO_CHUNK_BYTES as u64 / 2, how).expect("preallocate");
            assert_eq!(
                std::fs::metadata(&path).expect("metadata").len(),
                3 * ZERO_CHUNK_BYTES as u64 / 2
            );
            for mode in DurabilityMode::ALL {
                let Ok(file) = open_with_mode(&path, mode) else {
                    // O_DIRECT is refused by some file systems (tmpfs); the others must open.
                    assert!(mode.is_direct(), "{mode} refused on {}", path.display());
                    continue;
                };
                let mut buf = AlignedBuf::with_capacity(ALIGN_BYTES);
                buf.extend_from_slice(mode.name().as_bytes());
                buf.pad_to_alignment();
                synced_write_at(&file, buf.as_slice(), ALIGN_BYTES as u64, mode).expect("write");
                let mut back = vec![0u8; mode.name().len()];
                // Read through the page cache: O_DIRECT reads need aligned buffers too.
                let reader = File::open(&path).expect("open for reading");
                reader.read_exact_at(&mut back, ALIGN_BYTES as u64).expect("read");
                assert_eq!(back, mode.name().as_bytes());
            }
        }
    }
}
