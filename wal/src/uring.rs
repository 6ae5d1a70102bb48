//! The io_uring write path: one ring per open segment, one write (linked with an
//! `fdatasync` when the mode needs one) submitted and reaped per call, so a durable group
//! costs a single `io_uring_enter`.
//!
//! One of the two modules of the crate with `unsafe` (pushing submission entries that
//! point at caller memory).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Submission queue entries per ring: a write and its linked sync.
const RING_ENTRIES: u32 = 4;
/// Largest length of one write entry (the length field is a u32), block-aligned.
const WRITE_BYTES_MAX: usize = (u32::MAX as usize) & !(crate::io::ALIGN_BYTES - 1);

const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;
const USER_DATA_NOP: u64 = 3;

/// Creates a ring and runs a NOP through it; the error says why io_uring is unusable.
pub(crate) fn probe() -> io::Result<()> {
    let mut ring = IoUring::new(RING_ENTRIES)?;
    let nop = opcode::Nop::new().build().user_data(USER_DATA_NOP);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| io::Error::other("io_uring submission queue full on a fresh ring"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("io_uring NOP produced no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}

/// A ring used synchronously for durable writes to one file.
pub(crate) struct UringWriter {
    ring: IoUring,
}

impl std::fmt::Debug for UringWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringWriter").finish_non_exhaustive()
    }
}

impl UringWriter {
    pub(crate) fn new() -> io::Result<UringWriter> {
        Ok(UringWriter { ring: IoUring::new(RING_ENTRIES)? })
    }

    /// Writes all of `buf` at `offset` of `file`, followed by a linked `fdatasync` when
    /// `sync` is set, and returns once every submitted entry completed.
    pub(crate) fn write_at(
        &mut self,
        file: &File,
        buf: &[u8],
        offset: u64,
        sync: bool,
    ) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let mut written = 0usize;
        loop {
            let rest = &buf[written..];
            let len = rest.len().min(WRITE_BYTES_MAX);
            let len_u32 = u32::try_from(len).expect("bounded by WRITE_BYTES_MAX");
            let last_chunk = len == rest.len();
            let with_sync = sync && last_chunk;
            let mut write = opcode::Write::new(fd, rest.as_ptr(), len_u32)
                .offset(offset + written as u64)
                .build()
                .user_data(USER_DATA_WRITE);
            if with_sync {
                write = write.flags(squeue::Flags::IO_LINK);
            }
            let fsync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(USER_DATA_SYNC);
            let expected = if with_sync { 2 } else { 1 };
            {
                let mut submission = self.ring.submission();
                // SAFETY: the write entry points at `rest` (valid for `len` bytes), which
                // `buf`'s borrow keeps alive until this function returns; we return only
                // after reaping every completion we submitted (below), so the kernel never
                // reads the memory after the borrow ends. The sync entry references no
                // memory. The ring was empty (each call reaps all it submits), so both fit.
                unsafe {
                    submission
                        .push(&write)
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                    if with_sync {
                        submission
                            .push(&fsync)
                            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                    }
                }
            }
            let mut reaped = 0;
            let mut write_result: Option<i32> = None;
            let mut sync_result: Option<i32> = None;
            while reaped < expected {
                match self.ring.submit_and_wait(expected - reaped) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The entries may still be in flight; they only read `buf`. Fail
                        // permanently: the caller drops this file and never writes again.
                        return Err(e);
                    }
                }
                for cqe in self.ring.completion() {
                    reaped += 1;
                    match cqe.user_data() {
                        USER_DATA_WRITE => write_result = Some(cqe.result()),
                        USER_DATA_SYNC => sync_result = Some(cqe.result()),
                        other => panic!("unexpected io_uring completion {other}"),
                    }
                }
            }
            let result = write_result.expect("write completion reaped");
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            let done = usize::try_from(result).expect("non-negative");
            if done == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "io_uring write wrote 0 bytes",
                ));
            }
            written += done;
            if written < buf.len() {
                // Short write: a linked sync was cancelled; continue with the rest.
                continue;
            }
            if let Some(sync) = sync_result
                && sync < 0
            {
                return Err(io::Error::from_raw_os_error(-sync));
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn uring_writes_land_or_the_probe_says_why_not() {
        if let Err(reason) = probe() {
            // The fallback is exercised by the conformance suite; here we only require
            // that the probe explains itself.
            assert!(!reason.to_string().is_empty());
            eprintln!("io_uring unavailable on this machine: {reason}");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 8192]).expect("create");
        let file = std::fs::OpenOptions::new().write(true).read(true).open(&path).expect("open");
        let mut writer = UringWriter::new().expect("ring");
        writer.write_at(&file, b"hello uring", 4096, true).expect("write");
        let mut back = [0u8; 11];
        file.read_exact_at(&mut back, 4096).expect("read");
        assert_eq!(&back, b"hello uring");
    }
}
