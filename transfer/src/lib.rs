//! `dura-transfer`: state transfer as state machines with no I/O.
//!
//! A replica that restarts behind its peers (the *leecher*) fetches a checkpoint and
//! the log after it from the others (the *seeders*), validates what it got, and only
//! then installs it. This crate decides *what* to ask of whom, *what* is checked against
//! what, and *when* to give up on a seeder; the engine carries out its actions (send a
//! message, fetch a payload over its data path, decode a checkpoint into a staging
//! state, replay a log piece, install) and feeds the results back as events. No threads,
//! sockets, files or clocks inside: time enters as tick numbers the caller passes.
//!
//! Protocols ([`Variant`], with the cluster's [`Mode`](dura_core::Mode)):
//! - **CST** (Bessani et al., ATC 2013, Figure 6) for BFT with any f: agreement id from
//!   n-f replicas, replicas ordered by checkpoint freshness, hashes V_i from the f
//!   freshest, the state S_r from the (f+1)-th, replay with intermediate checkpoint
//!   hashes compared, the next seeder (f+2, ...) when validation fails, a new round
//!   when seeders have truncated what was asked.
//! - Its **f = 1 optimisation**: the 2nd replica sends C_2 with HL_1, HL_2, the 1st sends
//!   L_1 with HC_1 (the 3rd sends L_2); the general protocol if that fails.
//! - **Crash mode**: the freshest replica's checkpoint and log, no validation (with
//!   f = 1 the checkpoint from one replica and the log from the other).
//! - **PBFT-like** baseline: one replica sends checkpoint and log, the others hashes.
//!
//! The leader is never a seeder of bulk data while another replica can serve. Nothing
//! is installed before it validates, and checkpoint bytes are decoded only after their
//! SHA-256 matched the hash named before the transfer. `transfer/PROTOCOL.md` is the
//! full description: steps, what is validated against what, messages, bounds.
//!
//! - [`Leecher`]: the recovering replica's side ([`Event`]s in, [`Action`]s out).
//! - [`Seeder`]: what a replica answers from what it holds ([`Holdings`]).
//! - [`message`]: the control messages and their bounded codec.
//! - [`piece`]: the canonical hash of a log piece ([`PieceHasher`]).
//! - [`freshness`]: the agreed id and the freshness order, as pure functions.

#![forbid(unsafe_code)]

pub mod freshness;
pub mod leecher;
pub mod message;
pub mod piece;
pub mod seeder;

#[cfg(test)]
mod sim;

pub use leecher::{
    Action, Event, FailReason, Fault, FetchOutcome, Leecher, LeecherConfig, Outcome, ReplayOutcome,
    RestartReason, StageBase, StageOutcome, Ticket, Timeouts, Variant,
};
pub use message::{
    Asked, CheckpointClaim, Message, PIECES_MAX, Piece, RoundId, STATUS_CHECKPOINTS_MAX, Status,
    Unavailable, Want,
};
pub use piece::{PieceHasher, piece_hash};
pub use seeder::{
    Holdings, JobId, STREAMS_PER_LEECHER_MAX, Seeder, SeederAction, SeederConfig, SeederEvent,
};

use dura_core::{AgreementId, CoreError};

/// Errors of this crate: bytes that do not decode, messages that break a rule of the
/// protocol, log pieces whose batches do not fit the range, configurations that cannot
/// work. Broken invariants of the state machines themselves panic instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Bytes did not decode: truncated, oversized, an unknown tag or trailing bytes.
    #[error(transparent)]
    Malformed(#[from] CoreError),
    /// A message decoded but breaks a rule (named by `rule`) of the protocol.
    #[error("invalid {what}: {rule}")]
    Invalid {
        /// The message or field.
        what: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A log piece's batches are not the agreements of its range, in order.
    #[error("log piece ({after}, {up_to}]: expected agreement {expected}, got {got}")]
    PieceOutOfOrder {
        /// First agreement of the range, exclusive.
        after: AgreementId,
        /// Last agreement of the range.
        up_to: AgreementId,
        /// The agreement that should have come next.
        expected: AgreementId,
        /// The agreement that came.
        got: AgreementId,
    },
    /// A log piece ended before the end of its range.
    #[error("log piece ({after}, {up_to}] ends after agreement {last}")]
    PieceIncomplete {
        /// First agreement of the range, exclusive.
        after: AgreementId,
        /// Last agreement of the range.
        up_to: AgreementId,
        /// The last agreement it held.
        last: AgreementId,
    },
    /// A configuration that cannot work.
    #[error("configuration: {0}")]
    Config(&'static str),
}
