//! `dura-core`: the vocabulary every dura protocol crate shares.
//!
//! Ordering (`dura-engine`), checkpoints (`snapshot`) and state transfer (`transfer`)
//! all speak of replicas, agreement ids, quorums, keys, requests and batches. They live
//! here, at the bottom of the workspace, so that the crates below `engine` never depend
//! on it. Nothing in this crate does I/O, keeps a clock or draws randomness (except
//! [`rng`], a seeded generator for simulators and workloads).
//!
//! - [`ids`]: [`ReplicaId`], [`Hash`](type@Hash), [`AgreementId`] and their conventions,
//!   [`REPLICAS_MAX`].
//! - [`mode`]: the fault model [`Mode`] and the one definition of its sizes and quorums.
//! - [`auth`]: HMAC-SHA256 keys and MACs ([`KeyRing`], [`ReplicaKeys`], [`ClientKeys`]).
//! - [`request`]: [`ClientRequest`], [`Batch`] and [`Reply`] with their binary codec.
//! - [`codec`]: the bounds-checked reader and the writers that codec is made of.
//! - [`service`]: the [`Service`] trait applications implement, and [`OrderedRequest`].
//! - [`rng`]: SplitMix64 and the xoshiro256** generator seeded through it.

#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod ids;
pub mod mode;
pub mod request;
pub mod rng;
pub mod service;

pub use auth::{ClientKeys, Key, KeyRing, MAC_BYTES, ReplicaKeys};
pub use ids::{
    AGREEMENT_ID_FIRST, AGREEMENT_ID_NONE, AgreementId, HASH_BYTES, Hash, REPLICAS_MAX, ReplicaId,
};
pub use mode::Mode;
pub use request::{
    BATCH_HEADER_BYTES, Batch, ClientRequest, DecisionId, Reply, ReplyStatus,
    SEQUENCE_AHEAD_MAX_MS, SEQUENCE_TIME_SHIFT, first_sequence_at, sequence_time_ms,
};
pub use service::{
    CopiedState, CopiedStateInstaller, OrderedRequest, Released, Replies, Service, StateError,
    StateInstaller, StateView,
};

/// Errors of this crate.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// Bytes did not decode: truncated, oversized, an unknown tag or trailing bytes.
    #[error("malformed {what} at byte {offset}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Byte offset of the failure.
        offset: usize,
    },
    /// A text is not the name of a [`Mode`].
    #[error("mode {0:?} is not one of bft, crash")]
    UnknownMode(String),
}
