//! The crate's error type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::SERVICE_NAME_OFFSET;
use crate::store::{Skipped, Written};

/// An error a chunk visitor or builder returns to refuse what it was given.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The file operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Listing the directory.
    List,
    /// Creating a file.
    Create,
    /// Opening a file for reading.
    Open,
    /// Reading.
    Read,
    /// Writing.
    Write,
    /// fsync of a file.
    Sync,
    /// Renaming.
    Rename,
    /// Removing.
    Remove,
    /// fsync of the directory.
    SyncDir,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::List => "list",
            IoOp::Create => "create",
            IoOp::Open => "open",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Sync => "sync",
            IoOp::Rename => "rename",
            IoOp::Remove => "remove",
            IoOp::SyncDir => "sync directory",
        })
    }
}

/// What is wrong with a checkpoint file's bytes (the offset is in the error around it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The file ends before a structure that must be there.
    #[error("file of {file_bytes} bytes ends before byte {needed}")]
    Truncated {
        /// The end of the structure being read.
        needed: u64,
        /// The file's length.
        file_bytes: u64,
    },
    /// Not a checkpoint file.
    #[error("bad magic")]
    Magic,
    /// A format version this build does not read.
    #[error("format version {0} (this build reads {version})", version = crate::format::FORMAT_VERSION)]
    Version(u32),
    /// The header claims more engine metadata than the limit.
    #[error("engine metadata of {0} bytes exceeds the limit {limit}", limit = crate::format::ENGINE_BYTES_LIMIT)]
    EngineBytes(u32),
    /// The header's checksum does not match its bytes.
    #[error("header checksum {stored:#018x} does not match the header ({computed:#018x})")]
    HeaderChecksum {
        /// Stored checksum.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// A header field is out of bounds although the checksum holds.
    #[error("header field {0} out of bounds")]
    HeaderField(&'static str),
    /// The header's agreement id is not the one in the file's name (a misnamed file).
    #[error("header says agreement {header}, the file name says {name}")]
    AgreementMismatch {
        /// From the name.
        name: u64,
        /// From the header.
        header: u64,
    },
    /// The header claims more chunks than the file can hold.
    #[error("{chunk_count} chunks cannot fit in a file of {file_bytes} bytes")]
    ChunkCount {
        /// Chunks claimed.
        chunk_count: u64,
        /// The file's length.
        file_bytes: u64,
    },
    /// A frame names no section.
    #[error("frame names section {0}, not 0 (engine) or 1 (service)")]
    Section(u8),
    /// A frame's reserved bytes are not zero.
    #[error("frame reserved bytes are not zero")]
    FrameReserved,
    /// A frame claims a payload over the chunk limit.
    #[error("frame claims {payload_bytes} payload bytes, over the chunk limit {limit}")]
    ChunkTooLarge {
        /// Length claimed.
        payload_bytes: u64,
        /// The loader's limit.
        limit: usize,
    },
    /// A chunk's checksum does not match its frame and payload.
    #[error("chunk checksum {stored:#018x} does not match the chunk ({computed:#018x})")]
    ChunkChecksum {
        /// Stored checksum.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// Padding after a payload is not zero.
    #[error("padding is not zero")]
    Padding,
    /// Bytes follow the last chunk.
    #[error("bytes after the last chunk (file of {file_bytes} bytes)")]
    TrailingBytes {
        /// The file's length.
        file_bytes: u64,
    },
    /// The chunks' payloads do not add up to the header's `content_bytes`.
    #[error("chunks hold {chunks} payload bytes, the header says {header}")]
    ContentBytes {
        /// What the header says.
        header: u64,
        /// What the chunks hold.
        chunks: u64,
    },
    /// The content's SHA-256 is not the header's.
    #[error("content SHA-256 does not match the header")]
    ContentHash,
}

/// Everything that can go wrong with checkpoints. Cloneable so that a failure can be
/// both logged and reported in a load result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed. An fsync failure is never retried: what it left on disk
    /// is unknown.
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
    /// The file's bytes are not a valid checkpoint.
    #[error("checkpoint {path} corrupt at offset {offset}: {corruption}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where it went wrong (the start of the damaged field, frame or payload).
        offset: u64,
        /// What is wrong.
        #[source]
        corruption: Corruption,
    },
    /// The checkpoint is of another service.
    #[error("checkpoint {path} is of service {found:?} (header offset 80), expected {expected:?}")]
    ServiceMismatch {
        /// The file.
        path: PathBuf,
        /// The service the caller runs.
        expected: String,
        /// The service named in the file.
        found: String,
    },
    /// The caller's visitor or builder refused a chunk (or the finished value) that
    /// passed every check.
    #[error("checkpoint {path} refused at offset {offset}: {source}")]
    Rejected {
        /// The file.
        path: PathBuf,
        /// The refused chunk's frame, or the file's end for the finished value.
        offset: u64,
        /// The caller's reason.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A service name that is empty or over `SERVICE_NAME_BYTES_MAX` bytes.
    #[error("service name {name:?} is empty or over {limit} bytes")]
    ServiceName {
        /// The name given.
        name: String,
        /// The limit.
        limit: usize,
    },
    /// Engine metadata over `ENGINE_BYTES_LIMIT`.
    #[error("engine metadata of {bytes} bytes exceeds the limit {limit}")]
    EngineTooLarge {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A chunk over the store's chunk limit; the checkpoint was aborted.
    #[error("chunk of {bytes} bytes exceeds the chunk limit {limit}; checkpoint aborted")]
    ChunkTooLarge {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// More than `CHUNK_COUNT_MAX` chunks; the checkpoint was aborted.
    #[error("more than {limit} chunks; checkpoint aborted")]
    TooManyChunks {
        /// The limit.
        limit: u64,
    },
    /// Another checkpoint of this store is being written.
    #[error("a checkpoint of {dir} is already being written")]
    WriterBusy {
        /// The directory.
        dir: PathBuf,
    },
    /// This writer failed earlier (that error was returned then); the checkpoint is
    /// aborted and its temporary file removed if it could be.
    #[error("checkpoint writer failed earlier; the checkpoint is aborted")]
    WriterFailed,
    /// The new checkpoint is durable (`written`), but removing an old one failed.
    #[error("checkpoint {} is durable, but removing older ones failed: {source}", written.file_name)]
    Retention {
        /// What was written.
        written: Box<Written>,
        /// The failure.
        #[source]
        source: Box<CheckpointError>,
    },
    /// Checkpoints exist but none is valid; each failure names its file and offset.
    #[error("no valid checkpoint in {dir}: {}", list_failures(failures))]
    AllInvalid {
        /// The directory.
        dir: PathBuf,
        /// Every checkpoint tried, newest first, with why it failed.
        failures: Vec<Skipped>,
    },
    /// Store options that cannot work.
    #[error("invalid checkpoint store options: {0}")]
    InvalidOptions(String),
}

fn list_failures(failures: &[Skipped]) -> String {
    let parts: Vec<String> = failures.iter().map(|skipped| skipped.error.to_string()).collect();
    parts.join("; ")
}

impl CheckpointError {
    /// Builds a [`CheckpointError::Io`].
    pub fn io(op: IoOp, path: impl Into<PathBuf>, offset: Option<u64>, source: io::Error) -> Self {
        CheckpointError::Io { op, path: path.into(), offset, source: Arc::new(source) }
    }

    /// Builds a [`CheckpointError::Corrupt`].
    pub fn corrupt(path: &Path, offset: u64, corruption: Corruption) -> Self {
        CheckpointError::Corrupt { path: path.to_path_buf(), offset, corruption }
    }

    /// The byte offset in the file where it went wrong, when the error has one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            CheckpointError::Io { offset, .. } => *offset,
            CheckpointError::Corrupt { offset, .. } | CheckpointError::Rejected { offset, .. } => {
                Some(*offset)
            }
            CheckpointError::ServiceMismatch { .. } => Some(SERVICE_NAME_OFFSET as u64),
            _ => None,
        }
    }

    /// The corruption, when this is [`CheckpointError::Corrupt`].
    pub fn corruption(&self) -> Option<Corruption> {
        match self {
            CheckpointError::Corrupt { corruption, .. } => Some(*corruption),
            _ => None,
        }
    }
}

/// Result alias of the crate.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
