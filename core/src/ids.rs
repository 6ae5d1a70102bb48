//! Identifiers and their conventions.
//!
//! - A replica is named by its index `0..n` ([`ReplicaId`]); `n` is at most
//!   [`REPLICAS_MAX`], which bounds every decoder and per-replica vector.
//! - An agreement id ([`AgreementId`], the paper's consensus instance number) names one
//!   decided batch. Agreement ids start at [`AGREEMENT_ID_FIRST`] and are consecutive:
//!   the n-th decided batch has id n. [`AGREEMENT_ID_NONE`] (0) means "nothing decided
//!   (or logged, or voted) yet", so "last decided" fields need no `Option`.
//! - A [`Hash`](type@Hash) is a SHA-256 digest (of a request, a batch, a log segment, a checkpoint).

/// Index of a replica, `0..n`.
pub type ReplicaId = u32;

/// Most replicas a configuration may have (bounds decoders and vectors).
pub const REPLICAS_MAX: usize = 64;

/// A consensus instance number: which decided batch, from [`AGREEMENT_ID_FIRST`].
pub type AgreementId = u64;

/// "No agreement": what a last-decided (logged, voted) field holds before the first.
pub const AGREEMENT_ID_NONE: AgreementId = 0;

/// The agreement id of the first decided batch; each later one is the previous plus 1.
pub const AGREEMENT_ID_FIRST: AgreementId = AGREEMENT_ID_NONE + 1;

/// Bytes of a [`Hash`](type@Hash).
pub const HASH_BYTES: usize = 32;

/// A SHA-256 digest.
pub type Hash = [u8; HASH_BYTES];

// Every replica id fits a `ReplicaId`, with room for `n` itself.
const _: () = assert!(REPLICAS_MAX < ReplicaId::MAX as usize);
const _: () = assert!(AGREEMENT_ID_FIRST > AGREEMENT_ID_NONE);
