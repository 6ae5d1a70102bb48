//! `dura-snapshot`: canonical, checksummed checkpoint files of a replica's state.
//!
//! A checkpoint is the state after one agreement: the engine's chunks (its reply cache)
//! and the service's chunks, as opaque payloads the service encodes (with rkyv), plus an
//! opaque engine metadata blob. This crate frames, checksums, stores, validates and loads
//! them; it never decodes a payload.
//!
//! * [`CheckpointStore::begin`] streams a checkpoint chunk by chunk into a temporary file;
//!   [`CheckpointWriter::finish`] makes it durable under its final name (header, file
//!   sync, rename, directory sync) and only then removes checkpoints beyond the retention.
//! * [`CheckpointStore::load_newest`] validates the newest checkpoint chunk by chunk while
//!   a fresh builder consumes it, and falls back to the previous one if anything fails,
//!   reporting what it skipped. [`CheckpointStore::verify`], [`CheckpointStore::read`]
//!   and [`CheckpointStore::read_header`] serve state transfer.
//! * Files are canonical: nothing host- or time-specific is in them, so two replicas with
//!   equal state at the same agreement write byte-identical files with equal
//!   [`Written::content_sha256`]. The format is in [`format`](mod@format) and
//!   `snapshot/FORMAT.md`.
//! * The file system is reached only through [`Dir`]: [`FsDir`] is the real one and
//!   [`sim::SimDir`] a deterministic simulated twin that crashes, tears and fails
//!   operations on demand.

#![forbid(unsafe_code)]

mod aligned;
pub mod dir;
mod error;
pub mod format;
pub mod sim;
mod store;
mod writer;

pub use aligned::AlignedBytes;
pub use dir::{Dir, DirReader, DirWriter, FsDir, ReadPin};
pub use error::{BoxError, CheckpointError, Corruption, IoOp, Result};
pub use format::{
    CHUNK_BYTES_LIMIT, CHUNK_COUNT_MAX, CheckpointHeader, ContentHasher, ENGINE_BYTES_LIMIT,
    SERVICE_NAME_BYTES_MAX, Section,
};
pub use store::{
    CheckpointEntry, CheckpointStore, ChunkSink, Loaded, RETAIN_DEFAULT, RETAIN_MAX, Skipped,
    StoreOptions, Verified, Written,
};
pub use writer::CheckpointWriter;
