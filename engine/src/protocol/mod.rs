//! The ordering protocol: sans-IO state machines for BFT mode (Mod-SMaRt /
//! VP-Consensus, n = 3f+1) and crash mode (n = 2f+1), and the sans-IO client.
//!
//! # Shape
//! [`Replica`] and [`Client`] hold no sockets, threads, clocks or randomness. The
//! runtime (and the simulator) feeds them [`Event`]s and executes the [`Action`]s they
//! push onto a caller-owned `Vec`. Time exists only as [`TimerKind::Tick`]: the runtime
//! fires it every [`Config::tick_ms`] after the replica asked for it with
//! [`Action::SetTimer`]; every timeout inside the core is a number of ticks. The wall
//! clock enters through [`Replica::observe_clock`] and serves one purpose: a leader
//! stamps each batch with it, and followers vote only for stamps within
//! [`Config::clock_skew_ms_max`] of their own clocks (the agreed time services use).
//!
//! # Contract with the runtime (what must happen before what)
//! - **Links are authenticated outside the core.** An [`Event::Message`] must come from
//!   a frame that [`open_frame`] accepted with the link key of `from`. The core trusts
//!   `from`. Client requests carry their own authenticator; the core verifies its own
//!   entry unless the event says `verified: true` (the net stage may verify in parallel
//!   with [`ClientRequest::verify`]).
//! - **Nothing must be persisted before a send.** Votes (WRITE/ACCEPT) are not durable;
//!   a restarted replica instead asks its peers how far they voted and abstains up to
//!   there (see [`Replica::restart`]). This is what makes crash-and-restart safe without
//!   a synchronous write per vote.
//! - **Deliveries are in agreement order**, each [`Decision`] exactly once, possibly
//!   several per [`Action::Deliver`]. The runtime logs and executes them (in parallel)
//!   and releases a client's reply only when its batch is both executed and durably
//!   logged. On restart it passes the last durably logged agreement id (and, if it has
//!   them, the most recent decided batches so it can serve peers' catch-up).
//! - **Replies are the runtime's job**: after executing a batch it sends one [`Reply`]
//!   per request (signed with [`ReplicaKeys::client_key`]). [`Action::ReplyFromCache`]
//!   asks it to resend the cached reply of an already ordered request
//!   (`service::Executor::cached_reply`); if the request is ordered but not yet
//!   executed, the runtime does nothing: its reply goes out at execution.
//! - **A restart gets a nonce unique to that process start** (the runtime: the wall
//!   clock), and messages reach only the process they were sent to (links are
//!   connections that die with either end): a crash-mode vouch names one incarnation.
//! - Timers: [`Action::SetTimer`] replaces an earlier timer of the same kind.
//!
//! # Authentication scheme (HMAC-SHA256 only, no signatures)
//! See [`auth`]. Because MACs are not transferable, a replica cannot prove to a third
//! what another replica told it. The leader-change protocol is built around that:
//! every replica broadcasts its STOPDATA to **all** replicas, and SYNC carries only the
//! ids and SHA-256 digests of the STOPDATAs the new leader used; each replica checks
//! them against the copies it received directly, then re-runs the same deterministic
//! choice rule ([`replica`] module docs). Decided batches fetched for catch-up are
//! trusted on f+1 matching answers (BFT) or one (crash mode).

pub mod auth;
pub mod client;
pub mod message;
pub mod replica;

use std::sync::Arc;

pub use auth::{ClientKeys, Key, KeyRing, ReplicaKeys, open_frame, seal_frame, seal_frames};
pub use client::{Client, ClientAction, ClientConfig, ClientError, ClientEvent};
pub use dura_core::{
    Hash, Mode, REPLICAS_MAX, ReplicaId, SEQUENCE_AHEAD_MAX_MS, first_sequence_at, sequence_time_ms,
};
pub use message::{Batch, ClientRequest, CollectData, Message, Reply, Vouch};
pub use replica::{Recovered, Replica, catch_up_from_log};

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// A message or frame did not decode.
    #[error("malformed {what} at byte {offset}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Byte offset of the failure.
        offset: usize,
    },
    /// A frame or request failed authentication.
    #[error("authentication failed for {what}")]
    Unauthenticated {
        /// What failed.
        what: &'static str,
    },
}

impl From<dura_core::CoreError> for ProtocolError {
    fn from(error: dura_core::CoreError) -> Self {
        match error {
            dura_core::CoreError::Malformed { what, offset } => {
                ProtocolError::Malformed { what, offset }
            }
            dura_core::CoreError::UnknownMode(_) => ProtocolError::Config("unknown mode"),
        }
    }
}

/// Ticks between the leader's heartbeats (a STATUS to all when it sent nothing else);
/// followers suspect it after [`Config::leader_silence_ticks`] without a word.
pub const LEADER_HEARTBEAT_TICKS: u64 = 2;

/// How far a proposal's timestamp may be from a follower's clock unless configured
/// otherwise: NTP keeps servers' clocks within milliseconds; this leaves room for a
/// proposal's time in flight and a clock stepped by its daemon.
pub const CLOCK_SKEW_MS_MAX_DEFAULT: u64 = 5_000;

/// Decided agreements kept for catch-up unless configured otherwise.
pub const DECIDED_WINDOW_MAX_DEFAULT: usize = 4096;

/// Cluster configuration shared by every replica (and, for n/f/mode, by clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Fault model.
    pub mode: Mode,
    /// Number of replicas.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// Period of [`TimerKind::Tick`].
    pub tick_ms: u64,
    /// Ticks a request may stay pending before it is forwarded to the leader; after
    /// twice this, the replica asks for a leader change (STOP). Doubles on each
    /// consecutive failed leader change, back to this on progress.
    pub request_timeout_ticks: u64,
    /// A follower that has heard nothing from the leader for this many ticks (the leader
    /// sends something at least every [`LEADER_HEARTBEAT_TICKS`]) asks for a leader
    /// change (STOP), whatever it has pending: a dead or paused leader is replaced this
    /// fast. Doubles with `request_timeout_ticks` on each consecutive failed change.
    pub leader_silence_ticks: u64,
    /// Most requests in one proposed batch.
    pub batch_requests_max: usize,
    /// Most operation bytes in one proposed batch (a single larger request still goes
    /// alone).
    pub batch_bytes_max: usize,
    /// Most client requests held pending (not yet ordered); more are dropped and the
    /// client retransmits.
    pub pending_requests_max: usize,
    /// Decided batches kept in memory to answer peers' catch-up requests. A replica
    /// further behind than this needs state transfer.
    pub decided_window_max: usize,
    /// Bytes of decided batches kept for catch-up (the window is cut at whichever of
    /// this and `decided_window_max` comes first; the last decision is always kept).
    pub decided_window_bytes_max: usize,
    /// Most decided batches sent in answer to one fetch.
    pub fetch_instances_max: u64,
    /// Largest operation a request may carry: a request over it is dropped, and a
    /// proposed batch holding one is not voted for (the runtime sets it to what its log
    /// can hold, so a Byzantine leader cannot make correct replicas fail their log).
    pub operation_bytes_max: usize,
    /// Crash mode: replicas an operator declared gone for good (their disks lost), at
    /// most f. After a crash of every replica, recovery does not wait for them, so the
    /// other n-f resume. Each must come back only with an empty data dir, as a new
    /// member: its log may hold a decision no other replica logged, which the others
    /// then decide anew. (Without a declaration recovery waits for every replica: it
    /// cannot tell a lost disk from a slow one.)
    pub lost_replicas: Vec<ReplicaId>,
    /// How far a fresh proposal's timestamp ([`Batch::timestamp_ms`]) may be from a
    /// follower's clock, either way, for the follower to vote for it.
    pub clock_skew_ms_max: u64,
    /// Clients whose highest ordered sequence number a replica remembers (to answer a
    /// retransmission from the reply cache rather than order it again): past it, the
    /// half with the oldest sequence numbers (session times) is forgotten. Only a
    /// shortcut: the executor's reply cache decides what runs.
    pub clients_max: usize,
}

impl Config {
    /// A BFT configuration with n = 3f+1 and default bounds.
    pub fn bft(f: usize) -> Self {
        Self::with_mode(Mode::Bft, Mode::Bft.replicas_min(f), f)
    }

    /// A crash-mode configuration with n = 2f+1 and default bounds.
    pub fn crash(f: usize) -> Self {
        Self::with_mode(Mode::Crash, Mode::Crash.replicas_min(f), f)
    }

    /// A configuration with the given sizes and default bounds.
    pub fn with_mode(mode: Mode, n: usize, f: usize) -> Self {
        Self {
            mode,
            n,
            f,
            tick_ms: 100,
            request_timeout_ticks: 10,
            leader_silence_ticks: 6,
            batch_requests_max: 1024,
            batch_bytes_max: 4 << 20,
            pending_requests_max: 100_000,
            decided_window_max: DECIDED_WINDOW_MAX_DEFAULT,
            decided_window_bytes_max: 256 << 20,
            fetch_instances_max: 64,
            operation_bytes_max: message::OPERATION_BYTES_MAX,
            lost_replicas: Vec::new(),
            clock_skew_ms_max: CLOCK_SKEW_MS_MAX_DEFAULT,
            clients_max: crate::service::CLIENTS_MAX_DEFAULT,
        }
    }

    /// Checks sizes and bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.f == 0 && self.mode == Mode::Bft {
            return Err(ProtocolError::Config("BFT mode needs f >= 1"));
        }
        if self.n < self.mode.replicas_min(self.f) {
            return Err(ProtocolError::Config("n too small for f in this mode"));
        }
        if self.n > REPLICAS_MAX {
            return Err(ProtocolError::Config("n above REPLICAS_MAX"));
        }
        if self.batch_requests_max == 0 || self.batch_bytes_max == 0 {
            return Err(ProtocolError::Config("batch bounds must be positive"));
        }
        if self.clock_skew_ms_max == 0 {
            return Err(ProtocolError::Config("clock_skew_ms_max must be positive"));
        }
        if self.request_timeout_ticks == 0 || self.tick_ms == 0 {
            return Err(ProtocolError::Config("timeouts must be positive"));
        }
        if self.leader_silence_ticks < 3 * LEADER_HEARTBEAT_TICKS {
            return Err(ProtocolError::Config(
                "leader_silence_ticks must cover three leader heartbeats",
            ));
        }
        if self.decided_window_max == 0 || self.fetch_instances_max == 0 {
            return Err(ProtocolError::Config("catch-up bounds must be positive"));
        }
        if self.operation_bytes_max == 0 || self.operation_bytes_max > message::OPERATION_BYTES_MAX
        {
            return Err(ProtocolError::Config(
                "operation_bytes_max must be positive and at most OPERATION_BYTES_MAX",
            ));
        }
        if self.mode == Mode::Bft && !self.lost_replicas.is_empty() {
            // A lone BFT log proves nothing, and a replica cannot tell which of the f
            // faults a declaration spends: see ARCHITECTURE.md, "votes are not persisted".
            return Err(ProtocolError::Config(
                "lost_replicas is for crash mode (BFT resumes with n-f after recovery_wait_ticks when what they logged is logged by f+1 of them)",
            ));
        }
        let mut lost = self.lost_replicas.clone();
        lost.sort_unstable();
        lost.dedup();
        if lost.len() != self.lost_replicas.len()
            || lost.len() > self.f
            || lost.iter().any(|&id| id as usize >= self.n)
        {
            return Err(ProtocolError::Config(
                "lost_replicas must name at most f distinct replicas of the cluster",
            ));
        }
        Ok(())
    }

    /// Votes needed to accept (after WRITEs) and to decide (after ACCEPTs):
    /// ceil((n+f+1)/2) in BFT mode, a majority in crash mode ([`Mode::quorum`]).
    pub fn quorum(&self) -> usize {
        self.mode.quorum(self.n, self.f)
    }

    /// Ticks a replica recovering from a crash of every replica waits for all n-1
    /// answers before it settles for n-f (BFT mode only; crash mode waits for every
    /// replica not in [`Config::lost_replicas`]; see [`crate::protocol::Replica`]).
    pub fn recovery_wait_ticks(&self) -> u64 {
        2 * self.request_timeout_ticks
    }

    /// Matching answers that prove a statement came from at least one correct
    /// replica: f+1 (BFT) or 1 (crash) ([`Mode::weak_quorum`]).
    pub fn weak_quorum(&self) -> usize {
        self.mode.weak_quorum(self.f)
    }

    /// Leader of `regency`.
    pub fn leader_of(&self, regency: u64) -> ReplicaId {
        (regency % self.n as u64) as ReplicaId
    }
}

/// Timers a replica asks for. Only one exists: a periodic tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Fired every [`Config::tick_ms`]; the replica re-arms it on each firing.
    Tick,
}

/// An input to a [`Replica`].
#[derive(Debug, Clone)]
pub enum Event {
    /// A protocol message from replica `from`, whose link MAC the runtime verified.
    Message {
        /// Authenticated sender.
        from: ReplicaId,
        /// The decoded message.
        message: Message,
    },
    /// A client request received directly from a client.
    ClientRequest {
        /// The request.
        request: ClientRequest,
        /// `Some(digest)` if the runtime already verified this replica's authenticator
        /// entry, with the request's [`ClientRequest::digest`] it computed for that
        /// (kept for the batch hash); `None`: the replica verifies it.
        digest: Option<Hash>,
    },
    /// A timer fired.
    TimerFired(TimerKind),
}

/// One decided agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The agreement id (consensus instance), from 1, consecutive.
    pub agreement_id: u64,
    /// Regency in which this replica saw it decided (0 when fetched from peers).
    pub regency: u64,
    /// The batch's [`Batch::hash`].
    pub hash: Hash,
    /// The batch.
    pub batch: Arc<Batch>,
    /// The replicas whose matching ACCEPTs decided it (BFT: at least the quorum), or,
    /// for a batch fetched from peers, the replicas that vouched for it. HMACs are not
    /// transferable: this records who, it is not a certificate a third party can check.
    pub proof: Vec<ReplicaId>,
}

/// An output of a [`Replica`]: a side effect for the runtime to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to replica `to` (never to itself).
    Send {
        /// Destination.
        to: ReplicaId,
        /// The message.
        message: Message,
    },
    /// Send `message` to every other replica.
    Broadcast {
        /// The message.
        message: Message,
    },
    /// Decided batches, in agreement order, consecutive with earlier deliveries.
    Deliver {
        /// One or more decisions.
        decisions: Vec<Decision>,
    },
    /// A client retransmitted a request that is already ordered: resend its cached
    /// reply if it was executed.
    ReplyFromCache {
        /// Client.
        client_id: u64,
        /// Its sequence number.
        sequence: u64,
    },
    /// Fire `timer` after `after_ms` (replaces an earlier one of the same kind).
    SetTimer {
        /// Which timer.
        timer: TimerKind,
        /// Delay.
        after_ms: u64,
    },
    /// A peer FETCHed `first..=last`, agreements decided here that are older than the
    /// in-memory catch-up window (which begins at `first_held`). The host answers from
    /// its log while the log still holds them (the log is the durable copy, kept back
    /// to the older of the two newest checkpoints), so that a replica that spent longer
    /// than the window's worth of load in a state transfer still catches up; else, or
    /// with no log to read, with GONE { first_held } (the peer transfers state on f+1 of
    /// those). [`catch_up_from_log`] builds the answer.
    ServeFromLog {
        /// The peer that asked.
        to: ReplicaId,
        /// First agreement asked for.
        first: u64,
        /// Last one (below `first_held`, at most `fetch_instances_max` after `first`).
        last: u64,
        /// The first agreement the in-memory window holds.
        first_held: u64,
    },
    /// This replica is behind beyond every peer's catch-up window: enough peers (f+1
    /// in BFT mode, one in crash mode) answered its FETCH for `last_decided + 1` with
    /// GONE. Only a state transfer (a checkpoint and the log after it) brings it back;
    /// the host stops this core, transfers, and restarts it from the installed state.
    /// Emitted once per `last_decided`.
    TransferNeeded {
        /// What this replica has decided.
        last_decided: u64,
        /// The lowest first-held agreement among the answers.
        first_held: u64,
    },
    /// BFT mode, after more than f replicas crashed: this replica decided (and logged)
    /// agreements that it cannot show f other replicas decided the same way: above
    /// what f+1 of the recovering replicas logged after a crash of every replica, or at
    /// a last agreement for which f of its peers report no batch, or another one (the
    /// others resumed without it after a crash of all). Votes are not persisted, so the
    /// cluster may decide those agreements anew with other values, and no client saw
    /// them complete unless f+1 other replicas logged them (a reply needs f+1 replicas
    /// to log its request). The replica must not keep them: the host stops this core,
    /// sets the log and checkpoints aside (kept for inspection) and restarts the replica
    /// through state transfer, as one that lost its disk. The core does nothing more.
    DiscardUnconfirmed {
        /// Below `logged`, the highest agreement f+1 of the answers held (informational:
        /// what this replica's own copy adds is given up from `confirmed + 1` on).
        confirmed: u64,
        /// What this replica logged.
        logged: u64,
    },
    /// A new regency is installed (informational: logs, client leader hints).
    RegencyInstalled {
        /// The regency.
        regency: u64,
        /// Its leader.
        leader: ReplicaId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_intersect_in_a_correct_replica() {
        for f in 1..6 {
            for extra in 0..3 {
                let config = Config::with_mode(Mode::Bft, Mode::Bft.replicas_min(f) + extra, f);
                config.validate().expect("valid");
                let q = config.quorum();
                assert!(2 * q > config.n + f, "two quorums share f+1 replicas");
                assert!(q <= config.n - f, "a quorum exists without the faulty");
            }
            let crash = Config::crash(f);
            assert!(2 * crash.quorum() > crash.n);
            assert!(crash.quorum() <= crash.n - f);
        }
    }

    #[test]
    fn lost_replicas_are_at_most_f_distinct_members_and_only_in_crash_mode() {
        let mut config = Config::crash(2);
        config.lost_replicas = vec![4, 0];
        assert_eq!(config.validate(), Ok(()));
        for lost in [vec![1, 1], vec![0, 1, 2], vec![5]] {
            config.lost_replicas = lost.clone();
            assert!(config.validate().is_err(), "{lost:?}");
        }
        let mut bft = Config::bft(1);
        bft.lost_replicas = vec![3];
        assert!(bft.validate().is_err(), "a BFT replica cannot trust a lone log");
    }

    #[test]
    fn too_few_replicas_is_rejected() {
        assert!(Config::with_mode(Mode::Bft, 3, 1).validate().is_err());
        assert!(Config::with_mode(Mode::Crash, 2, 1).validate().is_err());
        assert!(Config::with_mode(Mode::Bft, 0, 0).validate().is_err());
    }
}
