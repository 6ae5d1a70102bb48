//! The replica runtime: stage threads, TCP transport, durability coordinator, client.
//!
//! A replica is a fixed set of stage threads (DESIGN.md, "Stages"): `net` (one reader and
//! one writer thread per connection, see [`net`]), `order` (the protocol state machine),
//! `exec` (the [`crate::service::Executor`]) and `log` (the write-ahead log). They share no
//! mutable state and talk over bounded channels. State transfer's bulk bytes travel on a
//! port and threads of their own ([`datapath`]).

use std::path::PathBuf;

pub mod alloc;
pub mod catchup;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod config;
pub mod datapath;
pub mod durability;
pub mod filelog;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod recovery;
pub mod replica;
pub mod tls;
pub mod transfer;

pub use alloc::tune_allocator;
pub use client::{Blocking, Client, ClientOptions, Pending};
pub use config::{
    CHECKPOINT_PERIOD_DEFAULT, CheckpointScheduleKind, CheckpointWrite, ClusterConfig,
    LogBackendKind, LogMode, Mode, ReplicaConfig, TransferProtocol,
};
pub use membership::{Bootstrap, StateLoss};
pub use metrics::{Health, ReplicaMetrics};
pub use replica::{
    BEHIND_RESTARTS_MAX, PEERS_WAIT_EXISTING, PEERS_WAIT_PROCESS, ReplicaHandle, ReplicaOptions,
    Served, serve_replica, serve_replica_until_signal, start_replica,
};

/// Everything that can go wrong running a replica or a client.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A config field is wrong.
    #[error("cluster config: field `{field}`: {reason}")]
    Config {
        /// The field, e.g. `replica[2].data_dir`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file operation failed.
    #[error("{operation} {}: {error}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error (shown in the message, so not also chained as a source: a
        /// report that prints the chain would print it twice).
        error: std::io::Error,
    },
    /// A socket operation failed.
    #[error("{operation} {peer}: {error}")]
    Net {
        /// What was being done.
        operation: &'static str,
        /// With whom.
        peer: String,
        /// The OS error (shown in the message, so not also chained as a source: a
        /// report that prints the chain would print it twice).
        error: std::io::Error,
    },
    /// The write-ahead log failed; the replica stops.
    #[error("log: {0}")]
    Log(String),
    /// The write-ahead log (`dura-wal`) reported an error, kept with its type so that a
    /// log corrupt before its tail (repair from peers) is told apart from an I/O failure
    /// (stop): see [`RuntimeError::is_log_corrupt`].
    #[error("log: {0}")]
    Wal(#[from] dura_wal::WalError),
    /// The replica's log holds something this runtime cannot replay.
    #[error("log replay: {0}")]
    Replay(String),
    /// The checkpoint directory could not be opened or none of its checkpoints is valid
    /// (the message names each file and the offset where it went wrong).
    #[error("checkpoints: {0}")]
    Checkpoint(String),
    /// State transfer could not bring the replica's state from its peers (the message
    /// says why and names the replicas proven faulty).
    #[error("state transfer: {0}")]
    Transfer(String),
    /// This replica fell behind every peer's catch-up window (enough peers answered its
    /// FETCH with GONE): only a state transfer brings it back. A replica run by
    /// [`serve_replica`] restarts at once with [`ReplicaOptions::behind_peers`] and
    /// takes the state from its peers.
    #[error(
        "behind every peer's catch-up window: decided up to {last_decided}, peers hold \
         agreements from {first_held} on only; a state transfer is needed"
    )]
    BehindPeers {
        /// What this replica had decided.
        last_decided: u64,
        /// The lowest first agreement the peers still hold.
        first_held: u64,
    },
    /// BFT mode, after a crash of every replica: this replica logged agreements above
    /// what f+1 replicas logged; the cluster may decide them anew, so it must not keep
    /// them ([`crate::protocol::Action::DiscardUnconfirmed`]). A replica run by
    /// [`serve_replica`] sets its log and checkpoints aside and restarts through state
    /// transfer.
    #[error(
        "logged agreements {}..={logged} that fewer than f+1 replicas logged before a \
         crash of every replica (confirmed up to {confirmed}): they must be discarded",
        confirmed + 1
    )]
    UnconfirmedSuffix {
        /// The highest agreement f+1 recovering replicas logged.
        confirmed: u64,
        /// What this replica logged.
        logged: u64,
    },
    /// A replica without a state of its own found no replica holding one and was not
    /// told to begin a new cluster (or the cluster existed and its state is lost): it
    /// refuses to start rather than serve an empty state. The message says which
    /// replicas answered, what they lost, and how to proceed.
    #[error("{0}")]
    NoState(Box<membership::StateLoss>),
    /// A client request did not complete in time.
    #[error("request timed out after {waited_ms} ms")]
    Timeout {
        /// How long the client waited.
        waited_ms: u64,
    },
    /// The cluster refused the request for good: it had forgotten this client session
    /// (more clients than its `clients_max` since the session's last request), or this
    /// machine's clock is more than a minute ahead of the cluster's. Whether the request
    /// ran before the session was forgotten is unknown, as after a timeout; a new
    /// request opens a new session.
    #[error(
        "session expired: the cluster forgot this client (over its clients_max), or this \
         machine's clock is over 60 s ahead of the cluster's; the request's outcome is unknown"
    )]
    SessionExpired,
    /// The replica or client is shutting down.
    #[error("shut down")]
    Shutdown,
    /// A request taken back before it was sent (a [`client::Blocking`] request still
    /// queued for a session when its follow-up came): it was never ordered.
    #[error("withdrawn before it was sent")]
    Withdrawn,
    /// More than f replicas refused this client's connections, so no request can
    /// complete: TLS is on at the replicas and off in the client's config, or the TLS
    /// handshake failed on a certificate (the message has each replica's reason).
    #[error("refused by the cluster: {0}")]
    Refused(String),
}

impl RuntimeError {
    /// True when the log holds damage before its tail (a record or group that a later
    /// write followed, or a missing segment): nothing was cut, the damaged segment is
    /// left in place for inspection, and the replica's data must be repaired from its
    /// peers rather than replayed. Any other log error means the log cannot be trusted
    /// to write: the replica stops.
    pub fn is_log_corrupt(&self) -> bool {
        match self {
            RuntimeError::Wal(error) => wal_error_is_corruption(error),
            _ => false,
        }
    }
}

fn wal_error_is_corruption(error: &dura_wal::WalError) -> bool {
    match error {
        dura_wal::WalError::Corrupt { .. } | dura_wal::WalError::MissingSegment { .. } => true,
        dura_wal::WalError::WriterFailed(cause) => wal_error_is_corruption(cause),
        _ => false,
    }
}
