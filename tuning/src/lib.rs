//! `dura-tuning`: probes the storage device under a directory and advises on
//! configuration (checkpoint period, group size).
//!
//! [`probe`] measures what the write-ahead log depends on: the latency of one small synced
//! write under each [`DurabilityMode`], into blocks that were already written and into
//! fresh `fallocate`d (unwritten) extents, and the sequential synced bandwidth at the
//! record sizes of the paper's IOzone table (64 KiB, 1 MiB, 4 MiB).
//! [`sequential_synced_bandwidth`] is the raw-device reference the WAL benchmark compares
//! its group-commit bandwidth with. [`checkpoint_period_min`] is the paper's Eq. (1).
//!
//! All I/O goes through `dura_wal::io` (the same open flags, aligned buffers and
//! preallocation as the log), with plain `pwrite(2)`: these are raw device figures.
#![forbid(unsafe_code)]

mod advice;
mod error;
mod probe;

pub use advice::checkpoint_period_min;
pub use dura_wal::io::DurabilityMode;
pub use error::TuneError;
pub use probe::{
    BandwidthSample, BlockState, LATENCY_WRITES_MAX, LatencyRow, PROBE_FILE_BYTES_MAX,
    ProbeOptions, ProbeReport, RECORD_BYTES_MAX, probe, sequential_synced_bandwidth,
    sequential_synced_bandwidth_bounded,
};

/// Result type of this crate.
pub type Result<T, E = TuneError> = std::result::Result<T, E>;
