//! `dura-wal`: the segmented, checksummed write-ahead log every durability guarantee of
//! dura rests on.
//!
//! * [`Wal::open`] verifies every record, cuts a torn tail, reports corruption before the
//!   tail as an error naming segment and offset, and starts a [`LogWriter`].
//! * [`LogWriter::append`] takes a record without waiting for the disk; every append
//!   waiting when the previous write completes goes out in one aligned write (group
//!   commit); a [`Ticket`] or the [`LogWriter::durable_notifications`] channel says when
//!   it is durable.
//! * [`LogReader::read_agreements`] ([`LogWriter::reader`]) reads the durable records of
//!   a range of agreements back from the live log, from another thread (state transfer).
//! * [`WriterThreads::Stepped`] runs the same writer without threads, one
//!   [`LogWriter::write_step`] at a time, so the deterministic simulator replays a seed
//!   exactly over [`sim::SimStorage`].
//! * The on-disk format is described in [`format`](mod@format); the file layer in [`storage`] (real:
//!   io_uring or `pwrite`) and [`sim`] (simulated faulty disk).
//! * [`fs`] tells which file system holds the log and whether it is trusted to honour
//!   `O_DSYNC`; where it is not, [`Wal::open`] writes with an explicit `fdatasync`.

mod aligned;
mod error;
pub mod format;
pub mod fs;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
mod recovery;
pub mod sim;
pub mod storage;
mod sys;
mod uring;
mod wal;

pub use error::{IoOp, Result, WalError};
pub use recovery::LogRecord;
pub use storage::{Backend, FsStorage, ResolvedBackend, Storage, StorageFile, probe_io_uring};
pub use wal::{
    CutTail, DurablePoint, GROUP_BYTES_MAX_DEFAULT, LogReader, LogWriter, QUEUE_DEPTH_MAX_DEFAULT,
    RECORD_BYTES_MAX_DEFAULT, Recovered, SEGMENT_BYTES_DEFAULT, SPARE_SEGMENTS_MAX_DEFAULT,
    SegmentInfo, Ticket, Wal, WalOptions, WriteStats, WriterThreads,
};
