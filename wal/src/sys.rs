//! The one raw system call the crate makes outside io_uring: `fallocate`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
