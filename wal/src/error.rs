//! The crate's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::wal::WriterThreads;

/// The file operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Listing the log directory.
    List,
    /// Opening a file.
    Open,
    /// Creating (and preparing) a file.
    Create,
    /// Reading.
    Read,
    /// Writing (including the mode's sync).
    Write,
    /// fsync / fdatasync of a file.
    Sync,
    /// Renaming.
    Rename,
    /// Removing.
    Remove,
    /// fsync of the directory.
    SyncDir,
    /// Setting up io_uring.
    Uring,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            IoOp::List => "list",
            IoOp::Open => "open",
            IoOp::Create => "create",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Sync => "sync",
            IoOp::Rename => "rename",
            IoOp::Remove => "remove",
            IoOp::SyncDir => "sync directory",
            IoOp::Uring => "io_uring setup",
        };
        f.write_str(name)
    }
}

/// Everything that can go wrong in the log. Cloneable so that one write failure can be
/// handed to every pending append.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("{op} of {path} failed{}: {source}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Io {
        /// What was attempted.
        op: IoOp,
        /// The file or directory.
        path: PathBuf,
        /// Byte offset, for reads and writes.
        offset: Option<u64>,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A record or group before the tail of the log failed verification; the replica
    /// must repair its log from its peers (state transfer). Nothing was cut.
    #[error("log corrupt in segment {segment_seq} ({path}) at offset {offset}: {reason}")]
    Corrupt {
        /// Sequence number of the segment.
        segment_seq: u64,
        /// Its file.
        path: PathBuf,
        /// Offset of the first damaged group.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// Segment files are not consecutive.
    #[error("segment {missing_seq} is missing from {dir}")]
    MissingSegment {
        /// The log directory.
        dir: PathBuf,
        /// The absent sequence number.
        missing_seq: u64,
    },
    /// An append's agreement ids do not follow the previous record's.
    #[error(
        "agreement ids [{first_agreement_id}, {last_agreement_id}] do not follow {previous_agreement_id:?}"
    )]
    AgreementIdOrder {
        /// First id of the rejected record.
        first_agreement_id: u64,
        /// Last id of the rejected record.
        last_agreement_id: u64,
        /// Last id of the previous record, if any.
        previous_agreement_id: Option<u64>,
    },
    /// A cut was asked at an agreement id already passed by an appended record.
    #[error(
        "cannot cut after agreement id {agreement_id}: record up to {appended_agreement_id} already appended"
    )]
    CutBehind {
        /// The requested cut point.
        agreement_id: u64,
        /// Last appended id.
        appended_agreement_id: u64,
    },
    /// A record larger than `record_bytes_max`.
    #[error(
        "record of {payload_bytes} payload bytes for agreement id {agreement_id} exceeds record_bytes_max {record_bytes_max}"
    )]
    RecordTooLarge {
        /// Its first agreement id.
        agreement_id: u64,
        /// Its payload size.
        payload_bytes: usize,
        /// The limit.
        record_bytes_max: usize,
    },
    /// The writer failed earlier (a write or sync error); it never writes again.
    #[error("log writer failed permanently: {0}")]
    WriterFailed(Arc<WalError>),
    /// The writer was closed.
    #[error("log writer is closed")]
    Closed,
    /// A stepped writer's open group has no room for the record (it holds
    /// `queue_depth_max` records, or the record would exceed `group_bytes_max`, or a cut
    /// closed it). Nothing was appended: call [`crate::LogWriter::write_step`] and append
    /// again. Only with [`WriterThreads::Stepped`]; background appends wait instead.
    #[error(
        "open group is full ({record_count} records, {group_bytes} bytes{}; the record needs {record_bytes} bytes): write a step first",
        if *closed_by_cut { ", closed by a cut" } else { "" }
    )]
    GroupFull {
        /// Records in the open group.
        record_count: u32,
        /// Bytes in the open group (its header included).
        group_bytes: usize,
        /// Bytes the rejected record needs (header and payload).
        record_bytes: usize,
        /// A cut closed the group: the record belongs to the next segment.
        closed_by_cut: bool,
    },
    /// An operation the writer's mode does not offer: [`crate::LogWriter::write_step`]
    /// with background threads (they write), or waiting on a ticket not yet durable with
    /// the stepped writer (nothing would write it). Nothing was done.
    #[error("{operation} is not available with the {writer:?} writer")]
    WriterMode {
        /// What was asked.
        operation: &'static str,
        /// The log's writer mode.
        writer: WriterThreads,
    },
    /// No such segment (deleted, or never existed).
    #[error("no closed segment {segment_seq}")]
    NoSuchSegment {
        /// The asked sequence number.
        segment_seq: u64,
    },
    /// A read of agreements up to `up_to` ([`crate::LogReader::read_agreements`]) asked
    /// beyond the durable point: the log never serves an agreement that is not durable.
    /// Ask again once the durable point passed `up_to`.
    #[error(
        "agreements up to {up_to} asked for, but the log is durable only up to agreement {durable}"
    )]
    NotYetDurable {
        /// The last agreement id asked for.
        up_to: u64,
        /// The durable point's agreement id when the read was made.
        durable: u64,
    },
    /// A read of agreements ([`crate::LogReader::read_agreements`]) starts below what the
    /// log still holds: the segments that held them were deleted
    /// ([`crate::LogWriter::delete_below`]), before the read or while it ran. The caller
    /// needs a checkpoint at or after `first_held - 1` (or another replica's log).
    #[error(
        "agreement {asked} asked for, but the log holds agreements only from {first_held} on \
         (older segments were deleted)"
    )]
    Truncated {
        /// The lowest agreement id the log can still serve (see
        /// [`crate::LogReader::held_range`]; one past the durable point when it holds no
        /// record).
        first_held: u64,
        /// The first agreement id asked for (`after + 1`).
        asked: u64,
    },
    /// The records of a read of agreements ([`crate::LogReader::read_agreements`]) hold
    /// more payload bytes than the caller allowed; nothing is returned. Ask for a
    /// smaller range.
    #[error(
        "the records asked for hold more than {max} payload bytes (at least {bytes}): ask for a \
         smaller range"
    )]
    RangeTooLarge {
        /// Payload bytes gathered when the bound was crossed (a lower bound of the
        /// range's total).
        bytes: u64,
        /// The bound the caller passed.
        max: u64,
    },
    /// Options that cannot work together.
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
}

impl WalError {
    /// Builds an [`WalError::Io`].
    pub fn io(op: IoOp, path: impl Into<PathBuf>, offset: Option<u64>, source: io::Error) -> Self {
        WalError::Io { op, path: path.into(), offset, source: Arc::new(source) }
    }
}

/// Result alias of the crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;
