//! The replica state machine: Mod-SMaRt / VP-Consensus (BFT) and its crash-mode
//! simplification.
//!
//! # Normal case
//! One agreement is open at a time: `last_decided + 1`. The leader of the regency
//! (`regency mod n`) proposes whatever requests are pending (bounded by
//! [`Config::batch_requests_max`] and [`Config::batch_bytes_max`]) as soon as the
//! previous agreement decides. BFT: on a valid PROPOSE every replica broadcasts
//! WRITE(h); on a quorum of matching WRITEs it broadcasts ACCEPT(h); a quorum of
//! matching ACCEPTs (of any one regency) decides. Crash mode skips WRITE. A replica
//! writes at most one value per (regency, agreement). Messages for the next few
//! agreements are kept (`FUTURE_INSTANCES_MAX`) so a slightly late replica loses
//! nothing.
//!
//! # Leader change
//! A request pending `request_timeout_ticks` is forwarded to the leader; pending twice
//! that long, the replica broadcasts STOP(regency+1). This also replaces a leader that
//! is alive but slow: age is per request, not "no decision at all". A replica joins a
//! regency change on f+1 STOPs (BFT; one in crash mode, where nobody lies) and installs
//! it on a quorum (BFT) or majority (crash).
//! It then broadcasts STOPDATA ([`CollectData`]) to **every** replica. The new leader
//! waits until the STOPDATAs it holds determine a value for the open agreement
//! (rule below), and broadcasts SYNC(agreement, value, members) where members are the
//! (sender, digest) of the STOPDATAs it used. A replica accepts SYNC only when it holds,
//! received directly from each member, a STOPDATA with that digest (MACs are not
//! transferable, so this replaces the signatures of the original), and the same rule
//! over the same data gives the same value (or leaves it free). SYNC then acts as the
//! regency's PROPOSE. If the change does not complete in time, the replica asks for
//! the next regency; the timeout doubles with each consecutive failure and resets when
//! an agreement decides.
//!
//! # The choice rule (BFT), over reports about agreement i
//! Each member's report: its latest ACCEPT (r, h) and its WRITEs (h, latest r). A member
//! that already decided i reports (DECIDED, h) for both, where DECIDED is above every
//! regency; a member behind reports nothing; members ahead of i are not used.
//! - (r, h) is *forced* if (A1) at least a quorum of reports have no ACCEPT, or an
//!   ACCEPT at a regency below r, or an ACCEPT of h; and (A2) at least f+1 reports
//!   wrote h at a regency >= r.
//! - The value is *free* if a quorum of reports have no ACCEPT.
//!
//! Safety sketch: if h was decided in regency r, a quorum accepted it, so at least
//! quorum-f correct replicas report an ACCEPT of h at r or later (no correct replica
//! writes another value afterwards, by induction). Those reports break "free" and A1 for
//! any h' at a regency <= r, since any quorum-sized count must include one of them;
//! and for h' at a regency > r, A2 needs f+1 writes of h' after r, but only faulty
//! replicas can have made them. Liveness: once all correct replicas' reports are in,
//! the highest correct ACCEPT (or "free") satisfies the rule.
//! Crash mode: the highest ACCEPT among a majority of reports, or free; a report about
//! an agreement at or below its sender's vote floor that it has not decided does not
//! count (the sender may have accepted there and forgotten, see "Restart").
//!
//! Known limit: a Byzantine replica that sends its STOPDATA to the leader but not to
//! others (or different ones to different replicas) can make one regency's SYNC fail
//! at some replicas; safety holds and the next regency is tried.
//!
//! # Catch-up
//! A replica that sees evidence of being behind (messages for later agreements, a
//! STOPDATA or FORWARD with a higher last decided) sends FETCH to all; peers answer
//! with the decided batches they still hold in memory (the last
//! [`Config::decided_window_max`]; a replica further behind needs state transfer).
//! A fetched batch is decided on f+1 matching answers (BFT) or one (crash mode). A
//! replica that receives a PROPOSE or ACCEPT for an agreement it already decided sends
//! the sender that decided batch once, so a replica that missed the last ACCEPTs
//! catches up without waiting for a leader change.
//!
//! # Lost messages
//! Links may drop messages (the simulator does; TCP reconnects do). A replica whose
//! open agreement has not progressed for `RESEND_TICKS` resends its PROPOSE (leader),
//! WRITE and ACCEPT; a replica that decided an agreement and, more than a tick later,
//! still hears from a peer working on it sends that peer the decided batch and its
//! ACCEPT; every replica broadcasts a heartbeat STATUS every `HEARTBEAT_TICKS` so a
//! replica that was cut off notices it is behind and FETCHes. An agreement under way
//! (this replica voted, or f+1 did) that does not decide within twice the request
//! timeout triggers STOP like a stale request does (the progress timer).
//!
//! # Restart
//! Votes are not persisted. [`Replica::restart`] starts in recovery: it asks every
//! replica how far it voted and waits for n-f answers (crash mode: n-f others; BFT:
//! n-f-1 others, where a restarted replica counts against f). It then never votes for
//! an agreement at or below the highest reported (a majority answer includes a
//! replica that voted in anything it could have voted in), adopts the regency
//! reported by f+1 (BFT) or the highest (crash), and catches up by FETCH.
//! In BFT mode the floor holds only up to the highest regency reported (at least the
//! last one the lost votes can be from): in a later regency the replica votes at the
//! floor too, so an agreement left open at the floor by a leader crash during the
//! recovery still finds a quorum (its STOPDATA then omits the lost votes, which the
//! choice rule tolerates as one of the f faults). Crash mode keeps the floor absolute:
//! there, a report that omits an ACCEPT can free a decided value, so such a report is
//! not counted either ([`CollectData::vote_floor`]).
//!
//! If every answer comes from a replica that is itself recovering (all replicas
//! crashed), it waits for every replica not declared lost
//! ([`Config::lost_replicas`], crash mode), abstains only up to the highest agreement
//! that a weak quorum logged (fetchable), and votes again only in a new regency reached
//! by a leader change, whose leader prefers, when the rule leaves the value free, a
//! batch a member logged as decided. Crash mode waits for all of them because a replica
//! that is only slow may have logged a decision no other one did: deciding that
//! agreement anew without it would make it diverge. A client's request completes on f+1
//! replies, each sent once that replica logged it, so n-f replicas hold every completed
//! request: once the operator declares the disks of up to f replicas lost, the other
//! n-f resume. In BFT mode it waits for all n-1 only [`Config::recovery_wait_ticks`]:
//! then n-f answers (with its own) are enough if the highest agreement any of them
//! logged is logged by f+1 of them (a lone BFT log proves nothing). So up to f replicas
//! that stay down or mute cannot keep a BFT cluster from restarting. Until it installs
//! such a regency it has cast no vote since its restart, so it still answers status
//! queries as recovering: a replica that finishes its own recovery later then takes the
//! same path instead of voting at once in the old regency.
//!
//! Crash mode: a replica that resumed this way remembers which incarnation of each peer
//! (its recovery nonce) it counted as restarted. Once it votes, it answers that same
//! incarnation, if it is still recovering, with a vouch ([`Vouch`]): that incarnation's
//! lost votes all predate the crash of all, so it joins under the resumption's floor
//! and first regency instead of taking its floor from votes cast since (a lone
//! restart's rule, absolute in crash mode, which stalled the cluster when the only
//! other replica able to vote was down). The nonce must be unique per incarnation.
//!
//! In crash mode this recovers every logged agreement of the replicas that come back. In
//! BFT mode a crash of all replicas is beyond f: an agreement that fewer than f+1
//! replicas logged may be decided anew (the replicas that logged it then diverge) or
//! stall the cluster; clients never saw such an agreement complete (they need f+1
//! replies, each released after logging). Persisting votes would close this; it is not
//! done, to keep the hot path free of synchronous writes.
//!
//! A replica that has never run before has no votes to lose: it starts with
//! [`Replica::new`] (the runtime keeps a marker file in the data dir to tell a first
//! start from a restart), so a new cluster starts with up to f replicas missing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::auth::ReplicaKeys;
use super::message::{Batch, ClientRequest, CollectData, FORWARD_REQUESTS_MAX, Message, Vouch};
use super::{Action, Config, Decision, Event, Hash, Mode, ProtocolError, ReplicaId, TimerKind};

mod catch_up;
pub use catch_up::catch_up_from_log;
mod leader_change;
mod normal;
mod recovery;

/// Agreements after the open one for which messages are kept.
const FUTURE_INSTANCES_MAX: u64 = 4;

/// A replica that a peer answered GONE for the agreement it needs next, and that decided
/// nothing for this many ticks since, asks for a state transfer although fewer than f+1
/// peers said GONE. Peers truncate their logs at different points (sequential
/// checkpoints): simulator seed 32281 (BFT, 4 replicas, one down for good) had one peer
/// answer GONE and the other serve the agreement from its log, one DECIDED where f+1 are
/// needed, and the replica waited forever. A lying GONE can cause a transfer only for a
/// replica that cannot decide anyway, and a transfer installs only a validated state.
pub const GONE_ALONE_TICKS: u64 = 30;
/// Known candidate batches kept per agreement.
const VALUES_PER_INSTANCE_MAX: usize = 8;
/// Regencies ahead of the current one for which STOPDATA and SYNC are kept.
const REGENCY_AHEAD_MAX: u64 = 1024;
/// Ticks between retransmissions of STOP, STOPDATA and SYNC.
const RESEND_TICKS: u64 = 3;
/// Ticks between heartbeats (an unsolicited STATUS to all), which let a replica that
/// was cut off notice that it is behind even when no new agreement runs.
const HEARTBEAT_TICKS: u64 = 10;
/// Nonce of heartbeat STATUS messages (never a recovery query's nonce, which is a
/// last decided agreement id).
const HEARTBEAT_NONCE: u64 = u64::MAX;
/// BFT: (agreement, regency, hash) triples kept while ACCEPTs arrive for a batch other
/// than the one this replica decided there (see `Replica::conflicting`).
const CONFLICTS_MAX: usize = 16;
/// Regency reported by a replica for an agreement it decided: above any real one.
const DECIDED_REGENCY: u64 = u64::MAX;

/// What the runtime recovered from its durable store, for [`Replica::restart`].
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Last agreement id durably logged (0: none).
    pub last_decided: u64,
    /// The most recent decided batches, consecutive, ending at `last_decided` (may be
    /// empty); kept to answer peers' FETCH.
    pub recent: Vec<Arc<Batch>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Regency installed and synchronised.
    Normal,
    /// Installing `regency` (STOPDATA sent, waiting for SYNC) since `since_tick`.
    Changing { since_tick: u64 },
    /// Restarted: waiting for STATUS answers to query `nonce`.
    Recovering { nonce: u64 },
}

#[derive(Debug)]
struct Pending {
    request: ClientRequest,
    /// Its [`ClientRequest::digest`], computed once when it was verified.
    digest: Hash,
    arrival_tick: u64,
    forwarded: bool,
}

#[derive(Debug, Default)]
struct Instance {
    /// A PROPOSE not yet acted on: (regency, batch).
    proposal: Option<(u64, Arc<Batch>)>,
    values: BTreeMap<Hash, Arc<Batch>>,
    /// Latest WRITE per sender: (regency, hash).
    writes: BTreeMap<ReplicaId, (u64, Hash)>,
    /// Latest ACCEPT per sender.
    accepts: BTreeMap<ReplicaId, (u64, Hash)>,
    /// Hashes this replica wrote, with the latest regency.
    my_writes: BTreeMap<Hash, u64>,
    my_write: Option<(u64, Hash)>,
    my_accept: Option<(u64, Hash)>,
}

#[derive(Debug, Default)]
struct FetchSlot {
    /// Per sender: the batch's hash and the one before it (see [`Message::Decided`]).
    votes: BTreeMap<ReplicaId, (Hash, Option<Hash>)>,
    batches: BTreeMap<Hash, Arc<Batch>>,
}

#[derive(Debug, Clone)]
struct PendingSync {
    from: ReplicaId,
    regency: u64,
    agreement_id: u64,
    members: Vec<(ReplicaId, Hash)>,
    batch: Arc<Batch>,
}

/// One STOPDATA's report about an agreement: its latest ACCEPT, and its WRITEs
/// (hash, latest regency).
type Report = (Option<(u64, Hash)>, Vec<(Hash, u64)>);

/// A peer's answer to a recovery query.
#[derive(Debug, Clone, Copy)]
struct PeerStatus {
    last_decided: u64,
    highest_voted: u64,
    regency: u64,
    recovering: bool,
    /// The peer's recovery nonce, while `recovering`.
    incarnation: u64,
    /// The peer vouches that this incarnation's lost votes predate its own.
    vouch: Option<Vouch>,
    /// The hash of the batch the peer decided at this replica's `last_decided` (None:
    /// it did not decide it, or no longer holds it in its window).
    asked_hash: Option<Hash>,
    /// The agreement `asked_hash` is for (the `last_decided` this replica asked with).
    asked: u64,
    /// The peer runs on its peers' state after its disk was lost (BFT).
    disk_lost: bool,
}

/// One decision kept in memory to help lagging peers.
#[derive(Debug, Clone)]
struct DecidedEntry {
    agreement_id: u64,
    hash: Hash,
    batch: Arc<Batch>,
    /// Regency of the ACCEPT quorum that decided it here; None if fetched or recovered.
    regency: Option<u64>,
    /// Tick at which it was decided here.
    tick: u64,
}

/// Outcome of the choice rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Forced(Hash),
    Free,
}

/// One replica's ordering state machine. See the module docs for the protocol.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    keys: ReplicaKeys,
    id: ReplicaId,
    now_tick: u64,
    /// [`Action::DiscardUnconfirmed`] was emitted: the core ignores every event.
    discarded: bool,
    /// BFT, recovering: this replica will discard what it decided above this agreement,
    /// once f+1 other replicas hold everything up to it (see `try_finish_recovery`).
    discard_pending: Option<u64>,
    /// The runtime's wall clock, ms since the Unix epoch (0: not told yet, and then
    /// proposals' timestamps are not checked). See [`Replica::observe_clock`].
    clock_ms: u64,
    /// The newest batch timestamp this replica proposed or saw decided: a leader never
    /// stamps below it.
    last_stamp_ms: u64,
    /// Installed regency (Normal) or the one being installed (Changing).
    regency: u64,
    phase: Phase,
    last_decided: u64,
    /// Never vote for an agreement at or below this (set by recovery), except in a
    /// regency above `floor_regency` (see `may_vote_at`).
    vote_floor: u64,
    /// BFT: the highest regency this replica's previous incarnation can have voted in
    /// (the highest one its recovery answers reported). None: the floor is absolute.
    floor_regency: Option<u64>,
    instances: BTreeMap<u64, Instance>,
    pending: BTreeMap<u64, Pending>,
    pending_by_client: BTreeMap<u64, u64>,
    pending_next: u64,
    /// client -> highest sequence number ordered.
    ordered: BTreeMap<u64, u64>,
    /// Recent decisions (agreement id, hash, batch), consecutive, ending at last_decided.
    window: VecDeque<DecidedEntry>,
    /// Encoded bytes of the batches in `window`.
    window_bytes: usize,
    /// Highest STOP regency per replica.
    stop_high: BTreeMap<ReplicaId, u64>,
    stop_sent: u64,
    stop_resent_tick: u64,
    /// Tick at which `stop_sent` was last raised.
    stop_raised_tick: u64,
    /// regency -> sender -> (collect, digest); the first one received.
    stopdata: BTreeMap<u64, BTreeMap<ReplicaId, (Arc<CollectData>, Hash)>>,
    my_stopdata: Option<Message>,
    pending_sync: Option<PendingSync>,
    /// The SYNC this leader sent, resent until the regency decides something.
    sync_resend: Option<Message>,
    failed_changes: u32,
    fetch: BTreeMap<u64, FetchSlot>,
    fetch_sent_tick: Option<u64>,
    /// Set when evidence of lagging arrives: last_decided at that moment.
    behind_mark: Option<u64>,
    /// Per peer: (highest agreement helped with, tick).
    helped: BTreeMap<ReplicaId, (u64, u64)>,
    statuses: BTreeMap<ReplicaId, PeerStatus>,
    /// Never vote in a regency below this (set after a crash of every replica).
    vote_regency_min: u64,
    /// Recovered after a crash of every replica (or a fresh start) and not yet in an
    /// installed regency of at least `vote_regency_min`: no vote cast since the
    /// restart, so status answers still say "recovering" (see `on_status`).
    awaiting_vote_regency: bool,
    /// BFT: this incarnation started from a state its peers transferred because its
    /// own log was lost (a wiped data dir, or a suffix given up): it may have lost
    /// agreements it logged above that state, so while it recovers it does not answer
    /// another replica's recovery query ([`Replica::mark_state_lost`]).
    state_lost: bool,
    /// With `state_lost`: its disk was lost (not a suffix it gave up), so it answers
    /// recovery queries saying so ([`Replica::mark_disk_lost`]).
    disk_lost: bool,
    /// BFT, recovering: the peers that answered this incarnation's query saying their
    /// disk was lost (at most n). Each is one of the f faults, so fewer matching logs
    /// among the others prove an agreement ([`Replica::log_quorum`]).
    declared_lost: BTreeSet<ReplicaId>,
    /// BFT: after a recovery that counted declared lost disks, agreements up to this
    /// one are decided from `trusted_quorum` matching DECIDED answers (the logs that
    /// recovery took as proof), not f+1, from replicas other than `trusted_excluded`
    /// (those that declared: they are the faults the lower bar spent, at most n).
    trusted_up_to: u64,
    trusted_quorum: usize,
    trusted_excluded: BTreeSet<ReplicaId>,
    deliveries: Vec<Decision>,
    /// A FETCH is to be broadcast at the end of this step.
    fetch_wanted: bool,
    /// The last agreement the last FETCH asked for: once decisions from fetched answers
    /// reach it, the next FETCH goes at once (catch-up keeps a range in flight instead
    /// of one per two ticks).
    fetch_to: u64,
    /// Tick of the last decision or regency installation.
    progress_tick: u64,
    /// Peers that answered a FETCH with GONE while this replica was at `gone_at`:
    /// the first agreement each still holds.
    gone: BTreeMap<ReplicaId, u64>,
    gone_at: u64,
    /// [`Action::TransferNeeded`] was emitted at `gone_at`.
    transfer_asked: bool,
    /// Tick of the first GONE at `gone_at` (see [`GONE_ALONE_TICKS`]).
    gone_since_tick: u64,
    /// Tick at which this replica last heard from the current regency's leader (any
    /// message), or installed the regency.
    leader_heard_tick: u64,
    /// This incarnation's recovery nonce (0 for a replica that never ran before).
    incarnation: u64,
    /// Set when this replica resumed after a crash of every replica: per peer, the
    /// incarnation (recovery nonce) whose "recovering" answer it counted then. While a
    /// peer still asks with that nonce, its previous incarnation died before anything
    /// voted since, and this replica tells it so (`vouch` in its status answers).
    vouched: BTreeMap<ReplicaId, u64>,
    /// BFT: senders of ACCEPTs for an agreement this replica decided, for another batch,
    /// per (agreement, regency, hash); at most `CONFLICTS_MAX` entries. f+1 of them prove
    /// that the replicas which decided it with this one forgot their votes in crashes, and
    /// this replica's decision there is given up.
    conflicting: BTreeMap<(u64, u64, Hash), Vec<ReplicaId>>,
}

impl Replica {
    /// A replica starting a fresh cluster (nothing decided, regency 0).
    pub fn new(config: Config, keys: ReplicaKeys) -> Result<Self, ProtocolError> {
        config.validate()?;
        if keys.id as usize >= config.n || keys.links.len() != config.n {
            return Err(ProtocolError::Config("keys do not match n"));
        }
        if config.lost_replicas.contains(&keys.id) {
            return Err(ProtocolError::Config(
                "this replica is declared lost: it rejoins only with an empty data dir, once the declaration is withdrawn",
            ));
        }
        Ok(Self {
            id: keys.id,
            config,
            keys,
            now_tick: 0,
            discarded: false,
            discard_pending: None,
            clock_ms: 0,
            last_stamp_ms: 0,
            regency: 0,
            phase: Phase::Normal,
            last_decided: 0,
            vote_floor: 0,
            floor_regency: None,
            instances: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_by_client: BTreeMap::new(),
            pending_next: 0,
            ordered: BTreeMap::new(),
            window: VecDeque::new(),
            window_bytes: 0,
            stop_high: BTreeMap::new(),
            stop_sent: 0,
            stop_resent_tick: 0,
            stop_raised_tick: 0,
            stopdata: BTreeMap::new(),
            my_stopdata: None,
            pending_sync: None,
            sync_resend: None,
            failed_changes: 0,
            fetch: BTreeMap::new(),
            fetch_sent_tick: None,
            behind_mark: None,
            helped: BTreeMap::new(),
            statuses: BTreeMap::new(),
            vote_regency_min: 0,
            awaiting_vote_regency: false,
            state_lost: false,
            disk_lost: false,
            declared_lost: BTreeSet::new(),
            trusted_up_to: 0,
            trusted_quorum: 0,
            trusted_excluded: BTreeSet::new(),
            deliveries: Vec::new(),
            fetch_wanted: false,
            fetch_to: 0,
            gone: BTreeMap::new(),
            gone_at: 0,
            transfer_asked: false,
            gone_since_tick: 0,
            progress_tick: 0,
            leader_heard_tick: 0,
            incarnation: 0,
            vouched: BTreeMap::new(),
            conflicting: BTreeMap::new(),
        })
    }

    /// Emits the first actions (the tick timer; a restarted replica's status query).
    pub fn start(&mut self, actions: &mut Vec<Action>) {
        actions.push(Action::SetTimer { timer: TimerKind::Tick, after_ms: self.config.tick_ms });
        if let Phase::Recovering { nonce } = self.phase {
            let last_decided = self.last_decided;
            actions
                .push(Action::Broadcast { message: Message::StatusQuery { nonce, last_decided } });
        }
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Last decided agreement id.
    pub fn last_decided(&self) -> u64 {
        self.last_decided
    }

    /// Marks this restarted replica's state as its peers' (BFT): the host brought it
    /// back by state transfer because its own log was lost, a wiped data dir or a
    /// suffix given up (`Action::DiscardUnconfirmed`). Until the cluster resumes with it
    /// (its first vote in a fresh regency), it then does not answer recovery queries:
    /// what it lost may be the other copy of an agreement that only one replica still
    /// holds, and an answer from it would count as a replica that never logged it.
    pub fn mark_state_lost(&mut self) {
        assert!(self.is_recovering(), "marked right after a restart, before it recovers");
        self.state_lost = true;
    }

    /// [`Replica::mark_state_lost`] for a replica whose disk was lost (a wiped data
    /// dir, a log damaged before its tail), not one that gave a suffix up: it answers
    /// recovery queries, saying so (`Message::Status::disk_lost`), instead of keeping
    /// silent. A lost disk is one of the f faults, so the askers may take f-k+1 matching
    /// logs among the others as proof when k replicas say so: the lone remaining copy
    /// of an agreement whose other copy was on the lost disk is then enough, and the
    /// cluster comes back instead of waiting for a disk that will not return. A replica
    /// that gave a suffix up is correct, not a fault, and must not lower that bar.
    pub fn mark_disk_lost(&mut self) {
        self.mark_state_lost();
        self.disk_lost = true;
    }

    /// BFT: how many matching logs among the recovery answers (this replica included)
    /// prove an agreement: f+1, less one per peer that said its disk was lost (each is
    /// one of the f faults, so at most f-k of the others are faulty), at least one.
    pub(super) fn log_quorum(&self) -> usize {
        let k = self.declared_lost.len().min(self.config.f);
        self.config.weak_quorum() - k
    }

    /// Whether the mark of [`Replica::mark_state_lost`] still acts: BFT mode (crash
    /// mode trusts one log, and the mark changes nothing there), and this replica
    /// recovers or awaits its first vote in the cluster it resumed with. Once false, the
    /// host may drop its durable record of the mark.
    pub fn holds_lost_state(&self) -> bool {
        self.state_lost
            && self.config.mode == Mode::Bft
            && (self.is_recovering() || self.awaiting_vote_regency)
    }

    /// Current (or being installed) regency.
    pub fn regency(&self) -> u64 {
        self.regency
    }

    /// True when this replica leads an installed regency.
    pub fn is_leader(&self) -> bool {
        self.phase == Phase::Normal && self.config.leader_of(self.regency) == self.id
    }

    /// True while recovering after a restart.
    pub fn is_recovering(&self) -> bool {
        matches!(self.phase, Phase::Recovering { .. })
    }

    /// The oldest agreement this replica can still send a lagging peer (the first of
    /// its in-memory window; None when the window is empty). A peer behind it needs
    /// state transfer.
    pub fn catch_up_window_first(&self) -> Option<u64> {
        self.window.front().map(|entry| entry.agreement_id)
    }

    /// Requests waiting to be ordered.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one event; pushes the resulting side effects onto `actions`.
    /// Tells the replica the wall clock (ms since the Unix epoch), before events: a
    /// leader stamps its proposals with it ([`Batch::timestamp_ms`]), and a follower
    /// votes for a fresh proposal only if its stamp is within
    /// [`Config::clock_skew_ms_max`] of it. Services read time only from the agreed
    /// stamp, so replicas' clocks never make their states differ.
    pub fn observe_clock(&mut self, unix_ms: u64) {
        self.clock_ms = unix_ms;
    }

    /// Whether `batch`'s timestamp is within the skew bound of this replica's clock
    /// (always, before the runtime told it the clock).
    pub(super) fn timestamp_acceptable(&self, batch: &Batch) -> bool {
        let skew = self.config.clock_skew_ms_max;
        self.clock_ms == 0
            || (batch.timestamp_ms <= self.clock_ms.saturating_add(skew)
                && batch.timestamp_ms.saturating_add(skew) >= self.clock_ms)
    }

    pub fn handle(&mut self, event: Event, actions: &mut Vec<Action>) {
        if self.discarded {
            return;
        }
        let (regency_before, decided_before) = (self.regency, self.last_decided);
        assert!(self.deliveries.is_empty(), "deliveries leave with the event that made them");
        match event {
            Event::TimerFired(TimerKind::Tick) => self.on_tick(actions),
            Event::ClientRequest { request, digest } => {
                self.on_client_request(request, digest, actions)
            }
            Event::Message { from, message } => {
                if (from as usize) < self.config.n && from != self.id {
                    if from == self.config.leader_of(self.regency) {
                        self.leader_heard_tick = self.now_tick;
                    }
                    self.on_message(from, message, actions);
                }
            }
        }
        for _ in 0..4 {
            self.settle(actions);
            let before = (self.phase, self.regency, self.last_decided);
            self.retry_pending_sync(actions);
            if matches!(self.phase, Phase::Changing { .. }) && self.leads(self.regency) {
                self.try_sync(actions);
            }
            if before == (self.phase, self.regency, self.last_decided) {
                break;
            }
        }
        self.maybe_propose(actions);
        self.settle(actions);
        if std::mem::take(&mut self.fetch_wanted) {
            let from = self.last_decided + 1;
            let to = self.last_decided + self.config.fetch_instances_max;
            self.fetch_to = to;
            actions.push(Action::Broadcast { message: Message::Fetch { from, to } });
        }
        // Postconditions: regencies only grow, decisions only advance, and what is
        // delivered is exactly the agreements decided by this event, in order, each with
        // its value in hand.
        assert!(self.regency >= regency_before, "regencies only grow");
        assert!(self.last_decided >= decided_before, "decided agreements are never undone");
        assert_eq!(
            self.deliveries.len() as u64,
            self.last_decided - decided_before,
            "every decision is delivered exactly once"
        );
        for (offset, decision) in self.deliveries.iter().enumerate() {
            assert_eq!(decision.agreement_id, decided_before + 1 + offset as u64);
            debug_assert_eq!(decision.batch.hash(), decision.hash, "a decided value is known");
        }
        if !self.deliveries.is_empty() {
            actions.push(Action::Deliver { decisions: std::mem::take(&mut self.deliveries) });
        }
    }

    fn leads(&self, regency: u64) -> bool {
        self.config.leader_of(regency) == self.id
    }

    fn quorum(&self) -> usize {
        self.config.quorum()
    }

    fn timeout_ticks(&self) -> u64 {
        self.config.request_timeout_ticks << self.failed_changes.min(6)
    }

    fn on_message(&mut self, from: ReplicaId, message: Message, actions: &mut Vec<Action>) {
        match message {
            Message::Propose { regency, agreement_id, batch } => {
                self.on_propose(from, regency, agreement_id, batch, actions)
            }
            Message::Write { regency, agreement_id, hash } => {
                if self.config.mode == Mode::Bft {
                    self.on_vote(from, regency, agreement_id, hash, false, actions);
                }
            }
            Message::Accept { regency, agreement_id, hash } => {
                self.on_vote(from, regency, agreement_id, hash, true, actions)
            }
            Message::Forward { last_decided, requests } => {
                if last_decided > self.last_decided {
                    self.mark_behind();
                }
                for request in requests {
                    let fresh =
                        self.ordered.get(&request.client_id).is_none_or(|&s| s < request.sequence);
                    if fresh && let Some(digest) = self.request_digest(&request) {
                        let _ = self.add_pending(request, digest);
                    }
                }
            }
            Message::Stop { regency } => self.on_stop(from, regency, actions),
            Message::StopData { regency, collect } => self.on_stopdata(from, regency, collect),
            Message::Sync { regency, agreement_id, members, batch } => {
                let sync = PendingSync { from, regency, agreement_id, members, batch };
                self.apply_sync(sync, actions);
            }
            Message::Fetch { from: first, to } => self.on_fetch(from, first, to, actions),
            Message::Decided { agreement_id, batch, previous } => {
                self.on_decided(from, agreement_id, batch, previous)
            }
            Message::Gone { first_held } => self.on_gone(from, first_held, actions),
            Message::StatusQuery { nonce, last_decided: asked } => {
                let recovering = self.is_recovering() || self.awaiting_vote_regency;
                let disk_lost = self.holds_lost_state();
                if disk_lost && !self.disk_lost {
                    // Its history is its peers'; the suffix it gave up may be the
                    // other one of the f+1 copies of an agreement. Counted as an
                    // answer, it would let the replica that still holds that agreement
                    // judge it unconfirmed and discard it (a kill of all with one data
                    // dir wiped, under load: an acknowledged put was lost, before lost
                    // disks said so). Giving a suffix up is no fault, so it may not
                    // lower the others' bar either: silent, it is one of the f down.
                    return;
                }
                let asked_hash = if asked == 0 || asked > self.last_decided {
                    None
                } else {
                    self.window_get(asked).map(|entry| entry.hash)
                };
                let message = Message::Status {
                    nonce,
                    last_decided: self.last_decided,
                    highest_voted: self.highest_voted(),
                    regency: self.regency,
                    recovering,
                    incarnation: if recovering { self.incarnation } else { 0 },
                    vouch: self.vouch_for(from, nonce, recovering),
                    asked_hash,
                    asked,
                    disk_lost,
                };
                actions.push(Action::Send { to: from, message });
            }
            Message::Status {
                nonce,
                last_decided,
                highest_voted,
                regency,
                recovering,
                incarnation,
                vouch,
                asked_hash,
                asked,
                disk_lost,
            } => {
                let status = PeerStatus {
                    last_decided,
                    highest_voted,
                    regency,
                    recovering,
                    incarnation,
                    vouch,
                    asked_hash,
                    asked,
                    disk_lost,
                };
                self.on_status(from, nonce, status, actions)
            }
        }
    }

    fn on_tick(&mut self, actions: &mut Vec<Action>) {
        self.now_tick += 1;
        actions.push(Action::SetTimer { timer: TimerKind::Tick, after_ms: self.config.tick_ms });
        if let Phase::Recovering { nonce } = self.phase {
            let last_decided = self.last_decided;
            actions
                .push(Action::Broadcast { message: Message::StatusQuery { nonce, last_decided } });
            self.try_finish_recovery(actions);
            return;
        }
        if let Some(mark) = self.behind_mark
            && mark == self.last_decided
        {
            self.send_fetch_now();
        } else {
            self.behind_mark = None;
        }
        self.check_gone_alone(actions);
        let timeout = self.timeout_ticks();
        let resend = self.now_tick.is_multiple_of(RESEND_TICKS);
        let leading = self.phase == Phase::Normal && self.leads(self.regency);
        if self.now_tick.is_multiple_of(HEARTBEAT_TICKS)
            || (leading && self.now_tick.is_multiple_of(super::LEADER_HEARTBEAT_TICKS))
        {
            actions.push(Action::Broadcast {
                message: Message::Status {
                    nonce: HEARTBEAT_NONCE,
                    last_decided: self.last_decided,
                    highest_voted: self.highest_voted(),
                    regency: self.regency,
                    recovering: false,
                    incarnation: 0,
                    vouch: None,
                    asked_hash: None,
                    asked: 0,
                    disk_lost: false,
                },
            });
        }
        match self.phase {
            Phase::Normal => {
                let leader = self.config.leader_of(self.regency);
                let mut forward = Vec::new();
                let mut stop = false;
                for pending in self.pending.values_mut() {
                    let age = self.now_tick.saturating_sub(pending.arrival_tick);
                    if age >= timeout && !pending.forwarded && forward.len() < FORWARD_REQUESTS_MAX
                    {
                        pending.forwarded = true;
                        forward.push(pending.request.clone());
                    }
                    if age >= 2 * timeout {
                        stop = true;
                    }
                }
                if !forward.is_empty() && leader != self.id {
                    actions.push(Action::Send {
                        to: leader,
                        message: Message::Forward {
                            last_decided: self.last_decided,
                            requests: forward,
                        },
                    });
                }
                // Progress timer: an agreement that is under way (this replica voted, or f+1
                // replicas did) but has not decided for twice the timeout also asks for a
                // new leader, even with no request pending here (a crash-mode follower
                // may never have seen the requests of a leader that died mid-agreement).
                let stuck = self.now_tick.saturating_sub(self.progress_tick) >= 2 * timeout
                    && self.instances.get(&(self.last_decided + 1)).is_some_and(|inst| {
                        let voters = inst
                            .writes
                            .keys()
                            .chain(inst.accepts.keys())
                            .collect::<std::collections::BTreeSet<_>>();
                        inst.my_write.is_some() || voters.len() > self.config.f
                    });
                // Leader silence: a leader that sends nothing (not even its heartbeat)
                // is dead or paused; replace it without waiting for request timeouts.
                let silence = self.config.leader_silence_ticks << self.failed_changes.min(6);
                let silent = leader != self.id
                    && self.now_tick.saturating_sub(self.leader_heard_tick.max(self.progress_tick))
                        >= silence;
                if stop || stuck || silent {
                    self.start_stop(self.regency + 1, actions);
                }
                // A change that f+1 replicas asked for (this one among them) and that
                // no quorum installs within the timeout goes on to the next regency, as a
                // change whose SYNC never came does. Without it, replicas that restarted
                // alone into a lower regency than the others ask for one the others are
                // already past and never reach a quorum (seeds 6973 and 22555 of the
                // BFT total-crash swarm: the others, with nothing pending, never ask).
                if self.stop_sent > self.regency
                    && self.now_tick.saturating_sub(self.stop_raised_tick) >= timeout
                    && self.stop_level(self.config.f + 1) >= self.stop_sent
                {
                    self.failed_changes = self.failed_changes.saturating_add(1);
                    self.start_stop(self.stop_sent + 1, actions);
                }
                if resend && let Some(sync) = &self.sync_resend {
                    actions.push(Action::Broadcast { message: sync.clone() });
                }
                if resend && self.now_tick.saturating_sub(self.progress_tick) >= RESEND_TICKS {
                    self.resend_votes(actions);
                }
            }
            Phase::Changing { since_tick } => {
                if self.now_tick.saturating_sub(since_tick) >= timeout {
                    self.failed_changes = self.failed_changes.saturating_add(1);
                    self.start_stop(self.regency + 1, actions);
                } else if resend && let Some(stopdata) = &self.my_stopdata {
                    actions.push(Action::Broadcast { message: stopdata.clone() });
                }
            }
            Phase::Recovering { .. } => {}
        }
        if self.stop_sent > self.regency && self.now_tick >= self.stop_resent_tick + RESEND_TICKS {
            self.stop_resent_tick = self.now_tick;
            actions.push(Action::Broadcast { message: Message::Stop { regency: self.stop_sent } });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::KeyRing;

    fn cluster(config: &Config) -> (Vec<Replica>, KeyRing) {
        let ring = KeyRing::new([5; 32], config.n);
        let replicas = (0..config.n as ReplicaId)
            .map(|id| Replica::new(config.clone(), ring.replica_keys(id)).expect("valid"))
            .collect();
        (replicas, ring)
    }

    fn request(ring: &KeyRing, client: u64, sequence: u64) -> ClientRequest {
        ClientRequest::signed(&ring.client_keys(client), sequence, vec![sequence as u8; 8])
    }

    fn event(request: &ClientRequest) -> Event {
        Event::ClientRequest { request: request.clone(), digest: None }
    }

    fn message(from: ReplicaId, message: Message) -> Event {
        Event::Message { from, message }
    }

    #[test]
    fn replica_recovered_from_a_restart_of_all_answers_recovering_until_it_can_vote() {
        let config = Config::bft(1);
        let ring = KeyRing::new([5; 32], config.n);
        let restart = |id| {
            let keys = ring.replica_keys(id);
            Replica::restart(config.clone(), keys, Recovered::default(), BTreeMap::new())
                .expect("valid")
        };
        let mut replica = restart(0);
        let mut actions = Vec::new();
        let status = |regency| Message::Status {
            nonce: 0,
            last_decided: 0,
            highest_voted: 0,
            regency,
            recovering: true,
            incarnation: 0,
            vouch: None,
            asked_hash: None,
            asked: 0,
            disk_lost: false,
        };
        for from in 1..4 {
            replica.handle(message(from, status(0)), &mut actions);
        }
        assert!(!replica.is_recovering());
        // It may vote only from regency 1 on, so a peer still recovering must count it
        // as restarted too (else that peer would vote in regency 0 and its votes would
        // make the others abstain).
        let answer = |replica: &mut Replica, asker: ReplicaId| {
            let mut actions = Vec::new();
            let query = Message::StatusQuery { nonce: 9, last_decided: 0 };
            replica.handle(message(asker, query), &mut actions);
            actions.iter().find_map(|action| match action {
                Action::Send { to, message: Message::Status { recovering, .. } }
                    if *to == asker =>
                {
                    Some(*recovering)
                }
                _ => None,
            })
        };
        assert_eq!(answer(&mut replica, 3), Some(true));
        // A peer that is still recovering takes the same path: regency 1 at the earliest.
        let mut late = restart(3);
        for from in 0..3 {
            late.handle(message(from, status(0)), &mut actions);
        }
        assert!(!late.is_recovering());
        assert_eq!(answer(&mut late, 0), Some(true));
    }

    /// Replica `id` restarted with agreements up to `logged` in its log.
    fn restarted(
        config: &Config,
        ring: &KeyRing,
        id: ReplicaId,
        logged: u64,
        nonce: u64,
    ) -> Replica {
        let recovered = Recovered { last_decided: logged, recent: Vec::new() };
        let keys = ring.replica_keys(id);
        Replica::restart_with_nonce(config.clone(), keys, recovered, BTreeMap::new(), nonce)
            .expect("valid")
    }

    fn answer(
        nonce: u64,
        last_decided: u64,
        regency: u64,
        recovering: bool,
        incarnation: u64,
        vouch: Option<Vouch>,
    ) -> Message {
        Message::Status {
            nonce,
            last_decided,
            highest_voted: last_decided,
            regency,
            recovering,
            incarnation,
            vouch,
            asked_hash: None,
            asked: 0,
            disk_lost: false,
        }
    }

    fn ticks(replica: &mut Replica, count: u64) {
        let mut actions = Vec::new();
        for _ in 0..count {
            replica.handle(Event::TimerFired(TimerKind::Tick), &mut actions);
        }
    }

    /// What `replica` answers to a status query from `asker` with `nonce`.
    fn status_answer(replica: &mut Replica, asker: ReplicaId, nonce: u64) -> Message {
        try_status_answer(replica, asker, nonce).expect("a status answer")
    }

    /// [`status_answer`], or None when `replica` does not answer.
    fn try_status_answer(replica: &mut Replica, asker: ReplicaId, nonce: u64) -> Option<Message> {
        let mut actions = Vec::new();
        replica
            .handle(message(asker, Message::StatusQuery { nonce, last_decided: 0 }), &mut actions);
        actions.into_iter().find_map(|action| match action {
            Action::Send { to, message } if to == asker => Some(message),
            _ => None,
        })
    }

    #[test]
    fn crash_mode_after_a_crash_of_all_waits_for_every_replica_not_declared_lost() {
        let ring = KeyRing::new([5; 32], 3);
        // Replica 1 logged two agreements more than replica 0; replica 2 does not answer.
        let mut config = Config::crash(1);
        let mut replica = restarted(&config, &ring, 0, 5, 11);
        let mut actions = Vec::new();
        replica.handle(message(1, answer(11, 7, 0, true, 21, None)), &mut actions);
        ticks(&mut replica, 10 * config.recovery_wait_ticks());
        assert!(replica.is_recovering(), "replica 2 may be slow, not gone: it may hold more");
        // Declared lost, replica 2 is not waited for, nor heard.
        config.lost_replicas = vec![2];
        let mut replica = restarted(&config, &ring, 0, 5, 11);
        replica.handle(message(2, answer(11, 9, 0, true, 31, None)), &mut actions);
        assert!(replica.is_recovering(), "a lost replica's answer does not count");
        replica.handle(message(1, answer(11, 7, 0, true, 21, None)), &mut actions);
        assert!(!replica.is_recovering());
        // Crash mode trusts one log: what replica 1 logged is fetched, never voted anew.
        assert_eq!(replica.vote_floor, 7);
        assert_eq!(replica.vote_regency_min, 1);
        assert_eq!(replica.last_decided(), 5);
        // A replica cannot be started declared lost.
        let keys = ring.replica_keys(2);
        assert!(Replica::new(config, keys).is_err());
    }

    #[test]
    fn bft_after_a_crash_of_all_resumes_with_n_minus_f_only_where_f_plus_1_logged_the_most() {
        let config = Config::bft(1);
        let ring = KeyRing::new([5; 32], 4);
        // Replica 1 alone logged agreement 9: with MACs its log is only its word.
        let mut replica = restarted(&config, &ring, 0, 5, 11);
        let mut actions = Vec::new();
        replica.handle(message(1, answer(11, 9, 0, true, 21, None)), &mut actions);
        replica.handle(message(2, answer(11, 5, 0, true, 31, None)), &mut actions);
        ticks(&mut replica, 10 * config.recovery_wait_ticks());
        assert!(replica.is_recovering(), "a lone log is not enough to resume without replica 3");
        // Two of the three logged it: one is correct, and it is fetchable.
        let mut replica = restarted(&config, &ring, 0, 5, 11);
        replica.handle(message(1, answer(11, 9, 0, true, 21, None)), &mut actions);
        replica.handle(message(2, answer(11, 9, 0, true, 31, None)), &mut actions);
        assert!(replica.is_recovering(), "first, it waits for every replica");
        ticks(&mut replica, config.recovery_wait_ticks());
        assert!(!replica.is_recovering());
        assert_eq!(replica.vote_floor, 9);
    }

    #[test]
    fn bft_replica_that_alone_logged_the_most_before_a_crash_of_all_discards_it() {
        let config = Config::bft(1);
        let ring = KeyRing::new([5; 32], 4);
        // Replica 0 logged up to 7; the others up to 5, 5 and 4: only it holds 6 and 7,
        // which the cluster may decide anew.
        let mut replica = restarted(&config, &ring, 0, 7, 11);
        let mut actions = Vec::new();
        replica.handle(message(1, answer(11, 5, 0, true, 21, None)), &mut actions);
        replica.handle(message(2, answer(11, 5, 0, true, 31, None)), &mut actions);
        assert!(!actions.iter().any(|a| matches!(a, Action::DiscardUnconfirmed { .. })));
        actions.clear();
        replica.handle(message(3, answer(11, 4, 0, true, 41, None)), &mut actions);
        assert_eq!(
            actions.iter().filter(|a| matches!(a, Action::DiscardUnconfirmed { .. })).count(),
            1
        );
        assert!(actions.contains(&Action::DiscardUnconfirmed { confirmed: 5, logged: 7 }));
        // It does nothing more: no vote, no answer, no timer.
        actions.clear();
        replica.handle(message(1, answer(11, 5, 0, true, 21, None)), &mut actions);
        for _ in 0..5 {
            replica.handle(Event::TimerFired(TimerKind::Tick), &mut actions);
        }
        assert!(actions.is_empty(), "{actions:?}");
        // With one more replica at 7, f+1 logged it: nothing is discarded.
        let mut replica = restarted(&config, &ring, 0, 7, 11);
        let mut actions = Vec::new();
        replica.handle(message(1, answer(11, 7, 0, true, 21, None)), &mut actions);
        replica.handle(message(2, answer(11, 5, 0, true, 31, None)), &mut actions);
        replica.handle(message(3, answer(11, 4, 0, true, 41, None)), &mut actions);
        assert!(!actions.iter().any(|a| matches!(a, Action::DiscardUnconfirmed { .. })));
        assert!(!replica.is_recovering());
        // Crash mode trusts one log: it keeps what it logged.
        let config = Config::crash(1);
        let ring = KeyRing::new([5; 32], 3);
        let mut replica = restarted(&config, &ring, 0, 7, 11);
        let mut actions = Vec::new();
        replica.handle(message(1, answer(11, 5, 0, true, 21, None)), &mut actions);
        replica.handle(message(2, answer(11, 4, 0, true, 31, None)), &mut actions);
        assert!(!actions.iter().any(|a| matches!(a, Action::DiscardUnconfirmed { .. })));
        assert!(!replica.is_recovering());
    }

    /// Replica `id` restarted with agreements up to `logged` in its log, the last one
    /// `last`.
    fn restarted_with_last(
        config: &Config,
        ring: &KeyRing,
        id: ReplicaId,
        logged: u64,
        last: &Batch,
    ) -> Replica {
        let recovered = Recovered { last_decided: logged, recent: vec![Arc::new(last.clone())] };
        let keys = ring.replica_keys(id);
        Replica::restart_with_nonce(config.clone(), keys, recovered, BTreeMap::new(), 11)
            .expect("valid")
    }

    /// A running peer's answer to query 11: it decided up to `last_decided`, and
    /// `asked_hash` at the asker's last agreement.
    fn running_answer(last_decided: u64, asked_hash: Option<Hash>) -> Message {
        Message::Status {
            nonce: 11,
            last_decided,
            highest_voted: last_decided,
            regency: 2,
            recovering: false,
            incarnation: 0,
            vouch: None,
            asked_hash,
            asked: 7,
            disk_lost: false,
        }
    }

    fn discards(actions: &[Action]) -> Vec<&Action> {
        actions.iter().filter(|a| matches!(a, Action::DiscardUnconfirmed { .. })).collect()
    }

    /// BFT replica 0 of 4 restarted with agreement 7 (`last`) logged, after the status
    /// answers of replicas 1 and 2: `(last_decided, asked_hash)` each.
    fn recovered_after(last: &Batch, answers: [(u64, Option<Hash>); 2]) -> (Replica, Vec<Action>) {
        let config = Config::bft(1);
        let ring = KeyRing::new([5; 32], 4);
        let mut replica = restarted_with_last(&config, &ring, 0, 7, last);
        let mut actions = Vec::new();
        for (from, (last_decided, asked_hash)) in (1..).zip(answers) {
            replica.handle(message(from, running_answer(last_decided, asked_hash)), &mut actions);
        }
        (replica, actions)
    }

    #[test]
    fn bft_replica_whose_last_agreement_its_running_peers_decided_otherwise_discards_it() {
        let mine = Batch { timestamp_ms: 1, requests: Vec::new() };
        let theirs = Batch { timestamp_ms: 2, requests: Vec::new() };
        // Replica 0 logged agreement 7 and came back late: the others resumed without it
        // after a crash of all and decided 7 anew, with another batch. By the count of
        // what they decided they are ahead of it; their batch at 7 tells otherwise.
        let (_, actions) =
            recovered_after(&mine, [(9, Some(theirs.hash())), (9, Some(theirs.hash()))]);
        assert_eq!(discards(&actions), [&Action::DiscardUnconfirmed { confirmed: 6, logged: 7 }]);
        // Peers behind it prove nothing (they may decide 7 as it did, and a client may
        // count its earlier reply with theirs): it resumes, and gives 7 up only if they
        // decide it otherwise (the next test). Nor does one contradicting answer (f = 1:
        // it may be a Byzantine replica's).
        for answers in [[(6, None), (6, None)], [(9, Some(theirs.hash())), (7, None)]] {
            let (replica, actions) = recovered_after(&mine, answers);
            assert!(discards(&actions).is_empty());
            assert!(!replica.is_recovering());
        }
        // The query names the agreement, and a peer answers with its batch there.
        let ring = KeyRing::new([5; 32], 4);
        let mut peer = restarted_with_last(&Config::bft(1), &ring, 1, 7, &theirs);
        let mut actions = Vec::new();
        peer.handle(message(0, Message::StatusQuery { nonce: 11, last_decided: 7 }), &mut actions);
        assert!(actions.iter().any(|action| matches!(action,
            Action::Send { to: 0, message: Message::Status { asked_hash: Some(hash), .. } }
                if *hash == theirs.hash())));
    }

    #[test]
    fn bft_replica_gives_up_a_decision_that_f_plus_1_peers_accepted_otherwise() {
        let mine = Batch { timestamp_ms: 1, requests: Vec::new() };
        let theirs = Batch { timestamp_ms: 2, requests: Vec::new() };
        let (mut replica, mut actions) =
            recovered_after(&mine, [(7, Some(mine.hash())), (7, Some(mine.hash()))]);
        assert!(!replica.is_recovering());
        actions.clear();
        let accept =
            |from, hash| message(from, Message::Accept { regency: 3, agreement_id: 7, hash });
        // ACCEPTs for its own batch, and a repeated one for another, prove nothing.
        replica.handle(accept(1, mine.hash()), &mut actions);
        replica.handle(accept(2, mine.hash()), &mut actions);
        replica.handle(accept(1, theirs.hash()), &mut actions);
        replica.handle(accept(1, theirs.hash()), &mut actions);
        assert!(discards(&actions).is_empty());
        // f+1 replicas accepted another batch at 7: a correct one did, which it could not
        // while the replicas that decided 7 with this one remembered their votes.
        replica.handle(accept(3, theirs.hash()), &mut actions);
        assert_eq!(discards(&actions), [&Action::DiscardUnconfirmed { confirmed: 6, logged: 7 }]);
        // Crash mode: the same ACCEPTs change nothing (a crash-mode cluster resumes only
        // with every replica after a crash of all).
        let config = Config::crash(1);
        let ring = KeyRing::new([5; 32], 3);
        let mut replica = Replica::new(config, ring.replica_keys(0)).expect("valid");
        let mut actions = Vec::new();
        replica.handle(accept(1, theirs.hash()), &mut actions);
        replica.handle(accept(2, theirs.hash()), &mut actions);
        assert!(discards(&actions).is_empty());
    }

    #[test]
    fn bft_replica_gives_up_a_decision_that_what_it_fetches_does_not_follow() {
        // Seed 13358 of `dura-sim --mode bft --replicas 4 --total-crash`: its recovery
        // counted answers from before the others decided 7 anew, so it kept its 7; then
        // it fetched 8 from them.
        let mine = Batch { timestamp_ms: 1, requests: Vec::new() };
        let theirs = Batch { timestamp_ms: 2, requests: Vec::new() };
        let next = Arc::new(Batch { timestamp_ms: 3, requests: Vec::new() });
        let (mut replica, mut actions) =
            recovered_after(&mine, [(7, Some(mine.hash())), (7, Some(mine.hash()))]);
        assert!(!replica.is_recovering());
        actions.clear();
        let decided = |from, previous| {
            let batch = next.clone();
            message(from, Message::Decided { agreement_id: 8, batch, previous })
        };
        // Answers that follow its 7, or do not say, prove nothing; one that names another
        // 7 may be a Byzantine replica's.
        replica.handle(decided(1, Some(mine.hash())), &mut actions);
        replica.handle(decided(2, None), &mut actions);
        replica.handle(decided(3, Some(theirs.hash())), &mut actions);
        assert!(discards(&actions).is_empty());
        let (mut replica, mut actions) =
            recovered_after(&mine, [(7, Some(mine.hash())), (7, Some(mine.hash()))]);
        actions.clear();
        replica.handle(decided(3, Some(theirs.hash())), &mut actions);
        replica.handle(decided(2, Some(theirs.hash())), &mut actions);
        assert_eq!(discards(&actions), [&Action::DiscardUnconfirmed { confirmed: 6, logged: 7 }]);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Deliver { .. })),
            "nothing built on the batch given up"
        );
    }

    #[test]
    fn one_gone_and_no_decision_for_a_while_asks_for_state_transfer() {
        let config = Config::bft(1);
        let (mut replicas, _ring) = cluster(&config);
        let replica = &mut replicas[3];
        let asked = |actions: &[Action]| {
            actions.iter().filter(|a| matches!(a, Action::TransferNeeded { .. })).count()
        };
        let tick = Event::TimerFired(TimerKind::Tick);
        let mut actions = Vec::new();
        replica.handle(message(0, Message::Gone { first_held: 40 }), &mut actions);
        for _ in 1..GONE_ALONE_TICKS {
            replica.handle(tick.clone(), &mut actions);
        }
        assert_eq!(asked(&actions), 0, "not before GONE_ALONE_TICKS");
        replica.handle(tick.clone(), &mut actions);
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::TransferNeeded { last_decided: 0, first_held: 40 }))
                .count(),
            1
        );
        for _ in 0..GONE_ALONE_TICKS {
            replica.handle(tick.clone(), &mut actions);
        }
        assert_eq!(asked(&actions), 1, "once per agreement it is stuck at");
    }

    #[test]
    fn catch_up_asks_for_the_next_range_as_soon_as_the_last_one_is_decided() {
        let mut config = Config::bft(1);
        config.fetch_instances_max = 4;
        let (mut replicas, _ring) = cluster(&config);
        let replica = &mut replicas[0];
        let fetches = |actions: &[Action]| -> Vec<(u64, u64)> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Broadcast { message: Message::Fetch { from, to } } => {
                        Some((*from, *to))
                    }
                    _ => None,
                })
                .collect()
        };
        // A vote far ahead: this replica is behind and asks for 1..=4.
        let mut actions = Vec::new();
        let far = Message::Write { regency: 0, agreement_id: 10_000, hash: [1; 32] };
        replica.handle(message(1, far), &mut actions);
        assert_eq!(fetches(&actions), vec![(1, 4)]);
        let batch = |k: u64| Arc::new(Batch { timestamp_ms: k, requests: Vec::new() });
        let mut previous = None;
        for k in 1..=4u64 {
            let mut actions = Vec::new();
            for from in [1, 2] {
                let decided = Message::Decided { agreement_id: k, batch: batch(k), previous };
                replica.handle(message(from, decided), &mut actions);
            }
            previous = Some(batch(k).hash());
            assert_eq!(replica.last_decided(), k);
            // No tick in between: the next range goes out when the last one is in.
            let wanted = if k == 4 { vec![(5, 8)] } else { Vec::new() };
            assert_eq!(fetches(&actions), wanted, "after deciding {k}");
        }
    }

    #[test]
    fn a_leader_change_no_quorum_installs_goes_on_to_the_next_regency() {
        // Replicas 0 and 1 ask for regency 1; replica 2 is already past it and asks for
        // nothing, replica 3 is silent: no quorum for 1. After the timeout they go on.
        let config = Config::bft(1);
        let (mut replicas, _ring) = cluster(&config);
        let mut actions = Vec::new();
        let replica = &mut replicas[0];
        replica.start_stop(1, &mut actions);
        replica.handle(message(1, Message::Stop { regency: 1 }), &mut actions);
        let stops = |actions: &[Action]| -> Vec<u64> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Broadcast { message: Message::Stop { regency } } => Some(*regency),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(stops(&actions), vec![1], "it asked, and one other");
        let timeout = replica.timeout_ticks();
        actions.clear();
        for _ in 0..timeout {
            replica.handle(Event::TimerFired(TimerKind::Tick), &mut actions);
        }
        assert_eq!(replica.regency(), 0, "never installed");
        assert!(stops(&actions).contains(&2), "{:?}", stops(&actions));
        // A replica that asks alone does not go on by itself.
        let (mut replicas, _ring) = cluster(&config);
        let replica = &mut replicas[0];
        let mut actions = Vec::new();
        replica.start_stop(1, &mut actions);
        actions.clear();
        for _ in 0..4 * timeout {
            replica.handle(Event::TimerFired(TimerKind::Tick), &mut actions);
        }
        assert!(stops(&actions).iter().all(|&r| r == 1), "{:?}", stops(&actions));
    }

    #[test]
    fn bft_replica_discards_only_once_f_plus_1_others_hold_what_it_keeps_up_to() {
        let config = Config::bft(1);
        let ring = KeyRing::new([5; 32], 4);
        // Replica 0 logged up to 7; the others 6, 5 and 5. It alone holds 7 and gives it
        // up, but 6 is on its disk and replica 1's only: until another replica holds 6
        // (fetched from these two), it keeps serving and does not discard.
        let mut replica = restarted(&config, &ring, 0, 7, 11);
        let mut actions = Vec::new();
        replica.handle(message(1, answer(11, 6, 0, true, 21, None)), &mut actions);
        replica.handle(message(2, answer(11, 5, 0, true, 31, None)), &mut actions);
        replica.handle(message(3, answer(11, 5, 0, true, 41, None)), &mut actions);
        ticks(&mut replica, 2 * config.recovery_wait_ticks());
        assert!(discards(&actions).is_empty());
        assert!(replica.is_recovering());
        let mut actions = Vec::new();
        replica.handle(message(2, answer(11, 6, 1, false, 0, None)), &mut actions);
        assert_eq!(discards(&actions), [&Action::DiscardUnconfirmed { confirmed: 6, logged: 7 }]);
    }

    #[test]
    fn crash_mode_replica_counted_in_a_resumption_after_a_crash_of_all_is_vouched_for() {
        let config = Config::crash(1);
        let ring = KeyRing::new([5; 32], 3);
        let mut actions = Vec::new();
        // Replica 1 resumes after a crash of all, counting replicas 0 and 2 (nonces 200
        // and 300) as restarted and not voting.
        let mut resumed = restarted(&config, &ring, 1, 6, 100);
        resumed.handle(message(0, answer(100, 6, 0, true, 200, None)), &mut actions);
        resumed.handle(message(2, answer(100, 4, 0, true, 300, None)), &mut actions);
        assert!(!resumed.is_recovering());
        // Until it votes in a regency of its own it answers as recovering, vouching for
        // nobody: an asker then takes the path it took.
        let Message::Status { recovering, vouch, .. } = status_answer(&mut resumed, 2, 300) else {
            unreachable!()
        };
        assert!(recovering && vouch.is_none());
        // It installs regency 1 and votes there (as a SYNC would have it).
        resumed.regency = 1;
        resumed.awaiting_vote_regency = false;
        let expected = Some(Vouch { floor: 6, regency_min: 1 });
        let Message::Status { recovering, vouch, .. } = status_answer(&mut resumed, 2, 300) else {
            unreachable!()
        };
        assert!(!recovering);
        assert_eq!(vouch, expected, "replica 2's incarnation 300 was counted");
        let Message::Status { vouch, .. } = status_answer(&mut resumed, 2, 301) else {
            unreachable!()
        };
        assert_eq!(vouch, None, "a later incarnation may have voted since: no vouch");
        // Replica 2, still in the recovery it started as incarnation 300, hears only from
        // replica 1, which voted since. Without the vouch that is a lone restart: too
        // few answers, and a floor taken from votes cast since would never lift.
        let mut late = restarted(&config, &ring, 2, 4, 300);
        late.handle(message(1, answer(300, 6, 1, false, 0, None)), &mut actions);
        assert!(late.is_recovering());
        // With it, replica 2 joins as the resumed replicas did.
        let mut late = restarted(&config, &ring, 2, 4, 300);
        late.handle(message(1, answer(300, 6, 1, false, 0, expected)), &mut actions);
        assert!(!late.is_recovering());
        assert_eq!((late.vote_floor, late.vote_regency_min, late.regency()), (6, 1, 1));
        assert!(late.floor_regency.is_none());
        // BFT: one replica's vouch is only its word.
        let bft = Config::bft(1);
        let ring = KeyRing::new([5; 32], 4);
        let mut replica = restarted(&bft, &ring, 0, 4, 300);
        replica.handle(message(1, answer(300, 6, 1, false, 0, expected)), &mut actions);
        assert!(replica.is_recovering());
    }

    #[test]
    fn leader_proposes_a_pending_request_and_writes_it() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let req = request(&ring, 7, 1);
        let mut actions = Vec::new();
        replicas[0].handle(event(&req), &mut actions);
        let batch = Arc::new(Batch { timestamp_ms: 0, requests: vec![req] });
        let hash = batch.hash();
        assert_eq!(
            actions,
            vec![
                Action::Broadcast {
                    message: Message::Propose { regency: 0, agreement_id: 1, batch }
                },
                Action::Broadcast { message: Message::Write { regency: 0, agreement_id: 1, hash } },
            ]
        );
    }

    #[test]
    fn follower_writes_only_the_first_value_of_a_regency_and_ignores_non_leaders() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let a = Arc::new(Batch { timestamp_ms: 0, requests: vec![request(&ring, 1, 1)] });
        let b = Arc::new(Batch { timestamp_ms: 0, requests: vec![request(&ring, 2, 1)] });
        let mut actions = Vec::new();
        // Replica 2 is not the leader of regency 0.
        replicas[1].handle(
            message(2, Message::Propose { regency: 0, agreement_id: 1, batch: a.clone() }),
            &mut actions,
        );
        assert!(actions.is_empty());
        replicas[1].handle(
            message(0, Message::Propose { regency: 0, agreement_id: 1, batch: a.clone() }),
            &mut actions,
        );
        replicas[1].handle(
            message(0, Message::Propose { regency: 0, agreement_id: 1, batch: b }),
            &mut actions,
        );
        assert_eq!(
            actions,
            vec![Action::Broadcast {
                message: Message::Write { regency: 0, agreement_id: 1, hash: a.hash() }
            }]
        );
    }

    #[test]
    fn forged_request_in_a_proposal_is_not_written() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let mut forged = request(&ring, 1, 1);
        forged.operation = b"not what the client sent".to_vec();
        let batch = Arc::new(Batch { timestamp_ms: 0, requests: vec![forged] });
        let mut actions = Vec::new();
        replicas[1].handle(
            message(0, Message::Propose { regency: 0, agreement_id: 1, batch }),
            &mut actions,
        );
        assert!(actions.is_empty());
    }

    #[test]
    fn a_proposal_with_an_operation_over_the_bound_is_not_written_and_such_a_request_is_dropped() {
        // The runtime sets the bound to what its log can hold: a Byzantine leader must not
        // make correct replicas log (and fail on) an operation past it.
        let mut config = Config::bft(1);
        config.operation_bytes_max = 8;
        let (mut replicas, ring) = cluster(&config);
        let within = request(&ring, 1, 1);
        assert!(within.operation.len() <= 8, "the helper's operation is small");
        let over = ClientRequest::signed(&ring.client_keys(2), 1, vec![7; 9]);
        let batch = Arc::new(Batch { timestamp_ms: 0, requests: vec![within, over.clone()] });
        let mut actions = Vec::new();
        replicas[1].handle(
            message(0, Message::Propose { regency: 0, agreement_id: 1, batch }),
            &mut actions,
        );
        assert!(actions.is_empty(), "no WRITE for a batch over the bound: {actions:?}");
        replicas[0].handle(event(&over), &mut actions);
        assert_eq!(replicas[0].pending_requests(), 0, "the oversized request is dropped");
    }

    #[test]
    fn quorum_of_writes_then_accepts_decides_and_delivers() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let batch = Arc::new(Batch { timestamp_ms: 0, requests: vec![request(&ring, 3, 1)] });
        let hash = batch.hash();
        let mut actions = Vec::new();
        let r = &mut replicas[1];
        r.handle(
            message(0, Message::Propose { regency: 0, agreement_id: 1, batch: batch.clone() }),
            &mut actions,
        );
        actions.clear();
        r.handle(message(0, Message::Write { regency: 0, agreement_id: 1, hash }), &mut actions);
        assert!(actions.is_empty(), "two WRITEs of four are not a quorum");
        r.handle(message(2, Message::Write { regency: 0, agreement_id: 1, hash }), &mut actions);
        assert_eq!(
            actions,
            vec![Action::Broadcast {
                message: Message::Accept { regency: 0, agreement_id: 1, hash }
            }]
        );
        actions.clear();
        r.handle(
            message(0, Message::Accept { regency: 0, agreement_id: 1, hash: [9; 32] }),
            &mut actions,
        );
        r.handle(message(2, Message::Accept { regency: 0, agreement_id: 1, hash }), &mut actions);
        assert!(actions.is_empty(), "a different hash does not count");
        r.handle(message(3, Message::Accept { regency: 0, agreement_id: 1, hash }), &mut actions);
        assert_eq!(
            actions,
            vec![Action::Deliver {
                decisions: vec![Decision {
                    agreement_id: 1,
                    regency: 0,
                    hash,
                    batch,
                    proof: vec![1, 2, 3]
                }]
            }]
        );
        assert_eq!(r.last_decided(), 1);
        // The request is ordered now: a retransmission is answered from the reply cache.
        actions.clear();
        r.handle(event(&request(&ring, 3, 1)), &mut actions);
        assert_eq!(actions, vec![Action::ReplyFromCache { client_id: 3, sequence: 1 }]);
    }

    #[test]
    fn catch_up_window_is_bounded_by_bytes_and_serves_the_newest_decisions() {
        let mut config = Config::bft(1);
        let ring = KeyRing::new([5; 32], config.n);
        let recent: Vec<Arc<Batch>> = (1..=10)
            .map(|seq| Arc::new(Batch { timestamp_ms: 0, requests: vec![request(&ring, 1, seq)] }))
            .collect();
        config.decided_window_bytes_max = 3 * recent[0].encoded_len();
        let recovered = Recovered { last_decided: 10, recent: recent.clone() };
        let mut replica =
            Replica::restart(config, ring.replica_keys(0), recovered, BTreeMap::new())
                .expect("valid");
        let mut actions = Vec::new();
        replica.handle(message(1, Message::Fetch { from: 1, to: 10 }), &mut actions);
        let served: Vec<u64> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to: 1, message: Message::Decided { agreement_id, batch, .. } } => {
                    assert_eq!(*batch, recent[*agreement_id as usize - 1]);
                    Some(*agreement_id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(served, vec![8, 9, 10]);
        // What the window no longer holds goes to the host, which answers from its log or
        // with GONE naming the first the window has.
        assert!(actions.contains(&Action::ServeFromLog {
            to: 1,
            first: 1,
            last: 7,
            first_held: 8
        }));
        // A peer's empty or zero-based range asks the log for nothing (its reader
        // asserts a range of real agreements).
        for (from, to) in [(5, 3), (0, 0), (0, 4)] {
            let mut actions = Vec::new();
            replica.handle(message(1, Message::Fetch { from, to }), &mut actions);
            let bad = actions.iter().any(|a| {
                matches!(a, Action::ServeFromLog { first, last, .. } if *first == 0 || first > last)
            });
            assert!(!bad, "FETCH {from}..={to}: {actions:?}");
        }
    }

    #[test]
    fn a_replica_behind_every_window_asks_for_state_transfer_on_a_weak_quorum_of_gone() {
        for (config, needed) in [(Config::bft(1), 2), (Config::crash(1), 1)] {
            let (mut replicas, _ring) = cluster(&config);
            let r = &mut replicas[3.min(config.n - 1)];
            let asked = |actions: &[Action]| {
                actions.iter().filter(|a| matches!(a, Action::TransferNeeded { .. })).count()
            };
            let mut actions = Vec::new();
            // A GONE that still holds what this replica needs next proves nothing.
            r.handle(message(0, Message::Gone { first_held: 1 }), &mut actions);
            // Byzantine or not, f GONEs are not enough in BFT mode; one is in crash mode.
            for from in 0..needed as ReplicaId - 1 {
                r.handle(message(from, Message::Gone { first_held: 40 }), &mut actions);
            }
            assert_eq!(asked(&actions), 0, "{}", config.mode);
            // The same peer twice counts once.
            if needed > 1 {
                r.handle(message(0, Message::Gone { first_held: 40 }), &mut actions);
                assert_eq!(asked(&actions), 0);
            }
            r.handle(
                message(needed as ReplicaId - 1, Message::Gone { first_held: 30 }),
                &mut actions,
            );
            let wanted = Action::TransferNeeded { last_decided: 0, first_held: 30 };
            assert_eq!(actions.iter().filter(|a| **a == wanted).count(), 1, "{}", config.mode);
            // Asked once per agreement it is stuck at.
            let mut again = Vec::new();
            r.handle(
                message(needed as ReplicaId - 1, Message::Gone { first_held: 50 }),
                &mut again,
            );
            assert_eq!(asked(&again), 0);
        }
    }

    #[test]
    fn crash_mode_accepts_directly_and_decides_on_a_majority() {
        let config = Config::crash(1);
        let (mut replicas, ring) = cluster(&config);
        let batch = Arc::new(Batch { timestamp_ms: 0, requests: vec![request(&ring, 3, 1)] });
        let hash = batch.hash();
        let mut actions = Vec::new();
        let r = &mut replicas[2];
        r.handle(message(0, Message::Propose { regency: 0, agreement_id: 1, batch }), &mut actions);
        assert_eq!(
            actions,
            vec![Action::Broadcast {
                message: Message::Accept { regency: 0, agreement_id: 1, hash }
            }]
        );
        actions.clear();
        r.handle(message(0, Message::Accept { regency: 0, agreement_id: 1, hash }), &mut actions);
        assert!(matches!(actions.as_slice(), [Action::Deliver { .. }]));
    }

    #[test]
    fn crash_mode_follower_forwards_a_fresh_request_to_the_leader_at_once() {
        let config = Config::crash(1);
        let (mut replicas, ring) = cluster(&config);
        let req = request(&ring, 4, 1);
        let mut actions = Vec::new();
        // Replica 1 does not lead regency 0: the request goes to replica 0 now, not
        // after the request timeout, and stays pending here.
        replicas[1].handle(event(&req), &mut actions);
        assert_eq!(
            actions,
            vec![Action::Send {
                to: 0,
                message: Message::Forward { last_decided: 0, requests: vec![req.clone()] }
            }]
        );
        assert_eq!(replicas[1].pending_requests(), 1);
        // The same request again (a retransmission) is not forwarded twice.
        actions.clear();
        replicas[1].handle(event(&req), &mut actions);
        assert!(actions.is_empty(), "{actions:?}");
        // The leader checks the client's MAC for itself in the forwarded request and
        // proposes it.
        actions.clear();
        let forward = Message::Forward { last_decided: 0, requests: vec![req.clone()] };
        replicas[0].handle(message(1, forward), &mut actions);
        let batch = Arc::new(Batch { timestamp_ms: 0, requests: vec![req] });
        let hash = batch.hash();
        assert_eq!(
            actions,
            vec![
                Action::Broadcast {
                    message: Message::Propose { regency: 0, agreement_id: 1, batch }
                },
                Action::Broadcast {
                    message: Message::Accept { regency: 0, agreement_id: 1, hash }
                },
            ]
        );
        // A request whose MAC for the leader is wrong is not proposed.
        let mut forged = request(&ring, 5, 1);
        forged.authenticator[0][0] ^= 1;
        actions.clear();
        let forward = Message::Forward { last_decided: 0, requests: vec![forged] };
        replicas[0].handle(message(1, forward), &mut actions);
        assert!(!actions.iter().any(|a| matches!(a, Action::Broadcast { .. })), "{actions:?}");
    }

    #[test]
    fn bft_follower_does_not_forward_a_fresh_request() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let mut actions = Vec::new();
        replicas[1].handle(event(&request(&ring, 4, 1)), &mut actions);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(replicas[1].pending_requests(), 1);
    }

    fn collect(
        last_decided: u64,
        accepted: Option<(u64, Hash)>,
        writes: &[(Hash, u64)],
    ) -> CollectData {
        CollectData {
            last_decided,
            decided_hash: (last_decided > 0).then_some([0xDD; 32]),
            vote_floor: 0,
            accepted,
            writes: writes.to_vec(),
            values: Vec::new(),
        }
    }

    #[test]
    fn choice_rule_forces_a_possibly_decided_value_and_ignores_lone_claims() {
        let config = Config::bft(1);
        let (replicas, _) = cluster(&config);
        let r = &replicas[0];
        let (h, other) = ([1; 32], [2; 32]);
        // One correct replica accepted h in regency 2 (two wrote it); a Byzantine one
        // claims a later ACCEPT of another value, which no one else wrote.
        let accepted = collect(4, Some((2, h)), &[(h, 2)]);
        let wrote = collect(4, None, &[(h, 2)]);
        let liar = collect(4, Some((5, other)), &[(other, 5)]);
        let silent = collect(4, None, &[]);
        // With three reports the liar blocks both outcomes: the leader waits for more.
        assert_eq!(r.choose(&[&accepted, &wrote, &liar], 5), None);
        // The fourth (correct, silent) report settles it: h is forced, the lie is not.
        assert_eq!(r.choose(&[&accepted, &wrote, &liar, &silent], 5), Some(Choice::Forced(h)));
        // Nothing accepted anywhere: the value is free.
        assert_eq!(r.choose(&[&wrote, &silent, &silent], 5), Some(Choice::Free));
        // A lone claim with two silent reports: neither forced nor free without more.
        assert_eq!(r.choose(&[&liar, &silent, &silent], 5), None);
        // A replica that already decided the agreement reports it as decided, which
        // counts as an ACCEPT and a WRITE of that value.
        let dd = [0xDD; 32];
        let decided = collect(5, None, &[]);
        let accepted_dd = collect(4, Some((3, dd)), &[(dd, 3)]);
        assert_eq!(r.choose(&[&decided, &accepted_dd, &silent], 5), Some(Choice::Forced(dd)));
        // Fewer reports than a quorum decide nothing.
        assert_eq!(r.choose(&[&accepted, &wrote], 5), None);
        // A report from a replica ahead of the agreement cannot be used.
        assert_eq!(r.choose(&[&collect(6, None, &[]), &silent, &silent], 5), None);
    }

    #[test]
    fn a_bft_replica_restarted_from_its_peers_state_is_silent_or_says_its_disk_was_lost() {
        let query = |replica: &mut Replica| try_status_answer(replica, 1, 77).is_some();
        for (config, silent) in [(Config::bft(1), true), (Config::crash(1), false)] {
            let ring = KeyRing::new([5; 32], config.n);
            // Restarted from its own log: it answers, as every recovering replica does.
            let mut own = restarted(&config, &ring, 2, 8, 3);
            assert!(query(&mut own), "{}", config.mode);
            // Restarted from a transferred state after its log was lost: in BFT mode it
            // is silent while it recovers, as if down (crash mode keeps no such limit).
            let mut transferred = restarted(&config, &ring, 2, 8, 4);
            transferred.mark_state_lost();
            assert_eq!(query(&mut transferred), !silent, "{}", config.mode);
            // Its disk was lost (not a suffix given up): it answers, and says so in BFT
            // mode (one of the f faults), so the asker does not count its log.
            let mut wiped = restarted(&config, &ring, 2, 8, 5);
            wiped.mark_disk_lost();
            let said = status_answer(&mut wiped, 1, 77);
            let Message::Status { disk_lost, .. } = said else { panic!("{said:?}") };
            assert_eq!(disk_lost, silent, "{}", config.mode);
        }
    }

    #[test]
    fn a_lone_holder_keeps_its_agreement_when_the_other_holders_disk_was_lost() {
        // After a kill of every replica (BFT, n = 4): replica 1 logged agreement 9, as
        // had replica 2, whose disk was then lost; it came back with its peers' state
        // at 8. Replicas 0 and 3 logged up to 8. A client may have seen 9 complete.
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Mark {
            None,
            GaveUp,
            DiskLost,
        }
        let nine = Batch { timestamp_ms: 9, requests: Vec::new() };
        let run = |mark: Mark| {
            let config = Config::bft(1);
            let ring = KeyRing::new([5; 32], config.n);
            let nonce = |id: ReplicaId| 100 + u64::from(id);
            let mut replicas: Vec<Replica> = (0..4)
                .map(|id| match id {
                    1 => restarted_with_last(&config, &ring, 1, 9, &nine),
                    _ => restarted(&config, &ring, id, 8, nonce(id)),
                })
                .collect();
            match mark {
                Mark::None => {}
                Mark::GaveUp => replicas[2].mark_state_lost(),
                Mark::DiskLost => replicas[2].mark_disk_lost(),
            }
            // Replicas 0, 1 and 3 recover: each tick they ask, and the others answer.
            let mut actions: Vec<Vec<Action>> = vec![Vec::new(); 4];
            for _ in 0..4 * config.recovery_wait_ticks() {
                for asker in [0u32, 1, 3] {
                    let at = asker as usize;
                    if !replicas[at].is_recovering() {
                        continue;
                    }
                    replicas[at].handle(Event::TimerFired(TimerKind::Tick), &mut actions[at]);
                    let asked = if asker == 1 { 11 } else { nonce(asker) };
                    for peer in (0..4u32).filter(|&p| p != asker) {
                        let answer = try_status_answer(&mut replicas[peer as usize], asker, asked);
                        if let Some(answer) = answer {
                            replicas[at].handle(message(peer, answer), &mut actions[at]);
                        }
                    }
                }
            }
            (replicas, actions)
        };
        // Counted as an answer, the replica whose disk was lost makes 9 look logged by
        // replica 1 alone, and replica 1 gives it up: an acknowledged request lost.
        let (_, actions) = run(Mark::None);
        assert!(!discards(&actions[1]).is_empty(), "the unmarked answer lets replica 1 discard");
        // Marked as a replica that gave a suffix up, it is silent: the others cannot
        // show that f+1 logged 9, and wait. Replica 1 keeps 9.
        let (replicas, actions) = run(Mark::GaveUp);
        assert!(discards(&actions[1]).is_empty(), "replica 1 kept agreement 9");
        assert!(replicas[1].is_recovering() && replicas[0].is_recovering(), "they wait");
        // Marked as a lost disk, it says so: one of the f faults is spent, so replica
        // 1's lone log proves 9, and every replica that answered comes back.
        let (mut replicas, actions) = run(Mark::DiskLost);
        let said = status_answer(&mut replicas[2], 0, 5);
        assert!(matches!(said, Message::Status { disk_lost: true, .. }), "{said:?}");
        assert!(discards(&actions[1]).is_empty(), "replica 1 kept agreement 9");
        for id in [0, 1, 3] {
            assert!(!replicas[id].is_recovering(), "replica {id} recovered");
        }
        // Replica 0 fetches 9, and replica 1's answer alone decides it there (the
        // recovery took one log as proof, so one DECIDED is enough up to 9).
        let fetches: Vec<Message> = actions[0]
            .iter()
            .filter_map(|action| match action {
                Action::Broadcast { message: message @ Message::Fetch { .. } } => {
                    Some(message.clone())
                }
                _ => None,
            })
            .collect();
        assert!(!fetches.is_empty(), "replica 0 asks for agreement 9");
        // Replica 2 said its disk was lost: one of the faults the lower bar spent, so
        // its answer alone decides nothing there, whatever batch it names.
        let forged = Batch { timestamp_ms: 99, requests: Vec::new() };
        let mut after = Vec::new();
        let forged = Message::Decided { agreement_id: 9, batch: Arc::new(forged), previous: None };
        replicas[0].handle(message(2, forged), &mut after);
        assert_eq!(replicas[0].last_decided(), 8, "a declared replica's DECIDED does not count");
        let mut served = Vec::new();
        replicas[1].handle(message(0, fetches[0].clone()), &mut served);
        for action in served {
            if let Action::Send { to: 0, message: reply } = action {
                replicas[0].handle(message(1, reply), &mut after);
            }
        }
        assert_eq!(replicas[0].last_decided(), 9, "one log proved it: {after:?}");
        assert_eq!(replicas[0].window_get(9).map(|e| e.hash), Some(nine.hash()), "its batch");
        // Above 9, one answer is not enough: f+1 are, as always.
        assert_eq!(replicas[0].trusted_up_to, 9);
    }

    #[test]
    fn crash_mode_choice_does_not_count_a_report_its_sender_may_have_forgotten() {
        let h = [1; 32];
        // Restarted after deciding 18: it may have voted at 19 and forgotten the vote.
        let forgetful = CollectData { vote_floor: 19, ..collect(18, None, &[]) };
        let silent = collect(18, None, &[]);
        let accepted = collect(18, Some((0, h)), &[]);
        let (crash, _) = cluster(&Config::crash(1));
        let r = &crash[0];
        // Its silence does not make a quorum: the value may have been decided with it.
        assert_eq!(r.choose(&[&forgetful, &silent], 19), None);
        // The others' reports decide, the one who accepted forcing its value.
        assert_eq!(r.choose(&[&silent, &accepted], 19), Some(Choice::Forced(h)));
        // Above its floor it speaks again, as does a replica whose floor is what it decided.
        assert_eq!(r.choose(&[&forgetful, &silent], 20), Some(Choice::Free));
        let remembers = CollectData { vote_floor: 18, ..silent.clone() };
        assert_eq!(r.choose(&[&remembers, &silent], 19), Some(Choice::Free));
        // BFT mode counts it as one of its f faults, as before.
        let (bft, _) = cluster(&Config::bft(1));
        assert_eq!(bft[0].choose(&[&forgetful, &silent, &silent], 19), Some(Choice::Free));
    }

    #[test]
    fn one_stop_makes_a_crash_mode_replica_join_a_bft_one_needs_f_plus_1() {
        for (config, joins) in [(Config::crash(1), true), (Config::bft(1), false)] {
            let (mut replicas, _ring) = cluster(&config);
            let mut actions = Vec::new();
            replicas[0].handle(message(1, Message::Stop { regency: 2 }), &mut actions);
            let joined = actions
                .iter()
                .any(|a| matches!(a, Action::Broadcast { message: Message::Stop { regency: 2 } }));
            assert_eq!(joined, joins, "{}", config.mode);
            if !joins {
                replicas[0].handle(message(2, Message::Stop { regency: 2 }), &mut actions);
                assert!(actions.iter().any(|a| {
                    matches!(a, Action::Broadcast { message: Message::Stop { regency: 2 } })
                }));
            }
        }
    }

    #[test]
    fn sync_naming_a_stopdata_this_replica_did_not_receive_waits_and_a_wrong_digest_is_rejected() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let mut actions = Vec::new();
        // Replicas 1, 2, 3 ask for regency 1: replica 2 installs it.
        for from in [1, 3] {
            replicas[2].handle(message(from, Message::Stop { regency: 1 }), &mut actions);
        }
        assert_eq!(replicas[2].regency(), 1);
        let empty = Arc::new(collect(0, None, &[]));
        for from in [1, 3] {
            replicas[2].handle(
                message(from, Message::StopData { regency: 1, collect: empty.clone() }),
                &mut actions,
            );
        }
        let batch = Arc::new(Batch { timestamp_ms: 0, requests: vec![request(&ring, 4, 1)] });
        let digest = empty.digest();
        // Member 0 never sent replica 2 a STOPDATA: the SYNC waits.
        let sync = Message::Sync {
            regency: 1,
            agreement_id: 1,
            members: vec![(0, digest), (1, digest), (3, digest)],
            batch: batch.clone(),
        };
        actions.clear();
        replicas[2].handle(message(1, sync), &mut actions);
        assert!(!actions.iter().any(|a| matches!(a, Action::RegencyInstalled { .. })));
        // A digest that does not match what replica 3 sent: rejected.
        let bad = Message::Sync {
            regency: 1,
            agreement_id: 1,
            members: vec![(1, digest), (2, digest), (3, [7; 32])],
            batch: batch.clone(),
        };
        replicas[2].handle(message(1, bad), &mut actions);
        assert!(!actions.iter().any(|a| matches!(a, Action::RegencyInstalled { .. })));
        // Consistent members: installed, and the value is written.
        let good = Message::Sync {
            regency: 1,
            agreement_id: 1,
            members: vec![(1, digest), (2, replicas[2].stopdata[&1][&2].1), (3, digest)],
            batch: batch.clone(),
        };
        replicas[2].handle(message(1, good), &mut actions);
        assert!(actions.contains(&Action::RegencyInstalled { regency: 1, leader: 1 }));
        assert!(actions.contains(&Action::Broadcast {
            message: Message::Write { regency: 1, agreement_id: 1, hash: batch.hash() }
        }));
    }
}
