//! The error type of `dura-tuning`.

use std::path::PathBuf;

/// What went wrong while probing a device.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A file operation failed.
    #[error("{operation} failed on {path} (offset {offset_bytes}): {source}")]
    Io {
        /// The operation (`preallocate`, `open`, `write`, ...).
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Byte offset in the file where it applies, 0 otherwise.
        offset_bytes: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An option is out of its accepted range.
    #[error("invalid probe option: {0}")]
    InvalidOption(String),
}

impl TuneError {
    pub(crate) fn io(
        operation: &'static str,
        path: &std::path::Path,
        offset_bytes: u64,
        source: std::io::Error,
    ) -> Self {
        TuneError::Io { operation, path: path.to_path_buf(), offset_bytes, source }
    }
}
