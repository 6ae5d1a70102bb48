//! The narrow file interface the log runs on, and its real implementation.
//!
//! [`Storage`] is a log directory; [`StorageFile`] a segment open for writing. Two real
//! write paths implement them behind [`FsStorage`] (io_uring, and `pwrite` + `fdatasync`),
//! and [`crate::sim::SimStorage`] is the faulty twin used by the tests. The log never
//! touches the file system except through these traits.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::io::{
    DurabilityMode, Preallocate, ZeroPace, open_with_mode, preallocate_paced, sync_dir,
};
use crate::uring::UringWriter;

/// A segment file open for writing.
pub trait StorageFile: Send + 'static {
    /// Writes all of `buf` at `offset` and makes it durable as the storage's
    /// [`DurabilityMode`] says.
    ///
    /// Contract: on `Ok` under a durable mode, the bytes survive a crash. On `Err` the
    /// region holds an unknown mix of old and new bytes (any 512-byte sector may be
    /// either), and the caller must not write to the file again. Under O_DIRECT, `buf`'s
    /// address and length and `offset` are multiples of 4 KiB.
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Length of the file in bytes.
    fn len_bytes(&self) -> io::Result<u64>;
}

/// A log directory.
///
/// Contract for the directory operations: a create, rename or remove is durable only after
/// the following [`sync_dir`](Storage::sync_dir) returned `Ok`.
pub trait Storage: Send + Sync + 'static {
    /// The file type of this storage.
    type File: StorageFile;

    /// The directory, for error messages and [`crate::SegmentInfo::path`].
    fn dir(&self) -> &Path;

    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Reads the whole file `name` (through the page cache).
    fn read_all(&self, name: &str) -> io::Result<Vec<u8>>;

    /// Reads the first `len_bytes` bytes of file `name` (through the page cache), or the
    /// whole file when it is shorter. The log reads the part of the active segment that
    /// is durable with it while the writer writes further on; it never looks at the
    /// bytes past `len_bytes`. The default reads the whole file and drops the rest.
    fn read_prefix(&self, name: &str, len_bytes: u64) -> io::Result<Vec<u8>> {
        let mut bytes = self.read_all(name)?;
        bytes.truncate(usize::try_from(len_bytes).unwrap_or(usize::MAX));
        Ok(bytes)
    }

    /// Opens the existing file `name` for writing with the storage's durability mode.
    fn open_for_write(&self, name: &str) -> io::Result<Self::File>;

    /// Creates `name` with `len_bytes` bytes prepared as `how` says, syncs it and the
    /// directory; a zero-fill asks `pace` before each chunk (see
    /// [`crate::io::preallocate_paced`]). On `Ok` the file exists durably at full length
    /// and reads as zeros.
    fn create_prepared(
        &self,
        name: &str,
        len_bytes: u64,
        how: Preallocate,
        pace: &mut dyn FnMut() -> ZeroPace,
    ) -> io::Result<()>;

    /// Renames `from` to `to` (replacing `to`). Durable after `sync_dir`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Removes `name`. Durable after `sync_dir`.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Makes the directory's entries durable.
    fn sync_dir(&self) -> io::Result<()>;

    /// Full path of `name`.
    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// Which write path a real log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring when a probe (create a ring, submit a NOP) succeeds, else `pwrite`; the
    /// choice and its reason are logged.
    #[default]
    Auto,
    /// io_uring; opening fails if it is unavailable.
    IoUring,
    /// `pwrite` (+ `fdatasync` in that mode).
    Pwrite,
}

/// The write path in use after [`Backend::Auto`] was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedBackend {
    /// io_uring.
    IoUring,
    /// `pwrite` (+ `fdatasync`).
    Pwrite,
}

/// Checks whether io_uring works here: creates a ring and runs a NOP through it.
/// Returns the reason when it does not (containers often refuse `io_uring_setup`).
pub fn probe_io_uring() -> Result<(), String> {
    crate::uring::probe().map_err(|e| e.to_string())
}

/// Resolves `backend` with the result of `probe` (creating a ring and running a NOP):
/// [`Backend::Auto`] falls back to `pwrite` with a logged reason; [`Backend::IoUring`]
/// fails with the probe's error.
fn resolve_backend(
    dir: &Path,
    backend: Backend,
    probe: impl FnOnce() -> io::Result<()>,
) -> io::Result<ResolvedBackend> {
    match backend {
        Backend::Pwrite => Ok(ResolvedBackend::Pwrite),
        Backend::IoUring => probe().map(|()| ResolvedBackend::IoUring),
        Backend::Auto => match probe() {
            Ok(()) => {
                log::info!("wal {}: writing through io_uring", dir.display());
                Ok(ResolvedBackend::IoUring)
            }
            Err(reason) => {
                log::warn!(
                    "wal {}: io_uring unavailable ({reason}); falling back to pwrite + fdatasync",
                    dir.display()
                );
                Ok(ResolvedBackend::Pwrite)
            }
        },
    }
}

/// A real log directory on a file system.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    mode: DurabilityMode,
    backend: ResolvedBackend,
}

impl FsStorage {
    /// A storage over `dir` (which must exist) writing with `mode` through `backend`.
    ///
    /// [`Backend::Auto`] probes io_uring and falls back to `pwrite` with a `log::warn!`
    /// naming the reason; [`Backend::IoUring`] fails with the probe's error instead.
    pub fn new(dir: &Path, mode: DurabilityMode, backend: Backend) -> io::Result<FsStorage> {
        let backend = resolve_backend(dir, backend, crate::uring::probe)?;
        Ok(FsStorage { dir: dir.to_path_buf(), mode, backend })
    }

    /// The write path chosen.
    pub fn backend(&self) -> ResolvedBackend {
        self.backend
    }

    /// The durability mode.
    pub fn mode(&self) -> DurabilityMode {
        self.mode
    }
}

/// A segment file of [`FsStorage`].
#[derive(Debug)]
pub struct FsFile {
    file: File,
    mode: DurabilityMode,
    uring: Option<UringWriter>,
}

impl StorageFile for FsFile {
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.mode.is_direct() {
            assert_eq!(buf.as_ptr() as usize % crate::io::ALIGN_BYTES, 0);
            assert_eq!(buf.len() % crate::io::ALIGN_BYTES, 0);
            assert_eq!(offset % crate::io::ALIGN_BYTES as u64, 0);
        }
        match &mut self.uring {
            Some(uring) => uring.write_at(&self.file, buf, offset, self.mode.needs_fdatasync()),
            None => crate::io::synced_write_at(&self.file, buf, offset, self.mode),
        }
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Storage for FsStorage {
    type File = FsFile;

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut file = File::open(self.path(name))?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut bytes = Vec::with_capacity(len);
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn read_prefix(&self, name: &str, len_bytes: u64) -> io::Result<Vec<u8>> {
        let file = File::open(self.path(name))?;
        let len = file.metadata()?.len().min(len_bytes);
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut bytes = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn open_for_write(&self, name: &str) -> io::Result<FsFile> {
        let file = open_with_mode(&self.path(name), self.mode)?;
        let uring = match self.backend {
            ResolvedBackend::IoUring => Some(UringWriter::new()?),
            ResolvedBackend::Pwrite => None,
        };
        Ok(FsFile { file, mode: self.mode, uring })
    }

    fn create_prepared(
        &self,
        name: &str,
        len_bytes: u64,
        how: Preallocate,
        pace: &mut dyn FnMut() -> ZeroPace,
    ) -> io::Result<()> {
        let zeroed = preallocate_paced(&self.path(name), len_bytes, how, pace)?;
        if how == Preallocate::Zeroed && zeroed < len_bytes {
            log::debug!(
                "wal {}: {name} zeroed {zeroed} of {len_bytes} bytes before it was needed",
                self.dir.display()
            );
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_pwrite_when_io_uring_is_refused_and_explicit_io_uring_fails() {
        let dir = Path::new("/nonexistent");
        let refused = || Err(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            resolve_backend(dir, Backend::Auto, refused).expect("auto"),
            ResolvedBackend::Pwrite
        );
        let missing = || Err(io::Error::from_raw_os_error(libc::ENOSYS));
        assert_eq!(
            resolve_backend(dir, Backend::Auto, missing).expect("auto"),
            ResolvedBackend::Pwrite
        );
        let error = resolve_backend(dir, Backend::IoUring, refused).expect_err("explicit io_uring");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        assert_eq!(
            resolve_backend(dir, Backend::Auto, || Ok(())).expect("auto"),
            ResolvedBackend::IoUring
        );
        let never = || -> io::Result<()> { panic!("pwrite needs no probe") };
        assert_eq!(
            resolve_backend(dir, Backend::Pwrite, never).expect("pwrite"),
            ResolvedBackend::Pwrite
        );
    }
}
