//! The raw system calls the crate makes outside io_uring: `fallocate` and `statfs`.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Reserves `[0, len)` of `file` with `fallocate(mode 0)`: blocks are allocated (and the
/// file size extended) but left unwritten, so the first write to each block still pays
/// for the unwritten-extent conversion.
pub(crate) fn fallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds off_t"))?;
    // SAFETY: `fallocate` only reads its integer arguments; the descriptor is owned by
    // `file`, which outlives the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The file system type (`f_type` of `statfs(2)`, a `*_MAGIC` of `linux/magic.h`) of the
/// file system holding `path`.
pub(crate) fn statfs_type(path: &Path) -> io::Result<u32> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `libc::statfs` is a plain C struct of integers, for which all zeros is a
    // valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a writable `statfs`, both
    // alive for the whole call, which writes only into `stat`.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Every magic number is 32 bits wide; `f_type`'s C type differs between targets
    // (a signed long on x86_64), so keep its low 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as u32)
}
