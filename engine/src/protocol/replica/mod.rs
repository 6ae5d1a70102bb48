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
//! regency change on f+1 STOPs and installs it on a quorum (BFT) or majority (crash).
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
//! Crash mode: the highest ACCEPT among a majority of reports, or free.
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
//! there, a report that omits an ACCEPT can free a decided value.
//!
//! If every answer comes from a replica that is itself recovering (all replicas
//! crashed), it waits for all n-1, abstains only up to the highest agreement that a
//! weak quorum logged (fetchable), and votes again only in a new regency reached by a
//! leader change, whose leader prefers, when the rule leaves the value free, a batch a
//! member logged as decided. In BFT mode it waits for all n-1 only
//! [`Config::recovery_wait_ticks`]: then n-f answers (with its own) are enough if the
//! highest agreement any of them logged is logged by f+1 of them. A client saw an
//! agreement complete only when f+1 replicas had logged it, so one of them is among
//! any n-f; and then every logged agreement among the answers is fetchable. So up to f
//! replicas that stay down or mute cannot keep the cluster from restarting. Until it
//! installs such a regency it has cast no vote since its restart, so it still answers
//! status queries as recovering: a replica that finishes its own recovery later then
//! takes the same path instead of voting at once in the old regency. In crash mode
//! this recovers every logged agreement, but needs every replica back. In BFT mode a
//! crash of all replicas is beyond f: an agreement that fewer than f+1 replicas logged
//! may be decided anew (the replicas that logged it then diverge) or stall the
//! cluster; clients never saw such an agreement complete (they need f+1 replies, each
//! released after logging). Persisting votes would close this; it is not done, to keep
//! the hot path free of synchronous writes.
//!
//! A replica that has never run before has no votes to lose: it starts with
//! [`Replica::new`] (the runtime keeps a marker file in the data dir to tell a first
//! start from a restart), so a new cluster starts with up to f replicas missing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::auth::ReplicaKeys;
use super::message::{
    Batch, COLLECT_VALUES_MAX, COLLECT_WRITES_MAX, ClientRequest, CollectData,
    FORWARD_REQUESTS_MAX, Message,
};
use super::{Action, Config, Decision, Event, Hash, Mode, ProtocolError, ReplicaId, TimerKind};

/// Agreements after the open one for which messages are kept.
const FUTURE_INSTANCES_MAX: u64 = 4;
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
    votes: BTreeMap<ReplicaId, Hash>,
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
    deliveries: Vec<Decision>,
    /// A FETCH is to be broadcast at the end of this step.
    fetch_wanted: bool,
    /// Tick of the last decision or regency installation.
    progress_tick: u64,
}

impl Replica {
    /// A replica starting a fresh cluster (nothing decided, regency 0).
    pub fn new(config: Config, keys: ReplicaKeys) -> Result<Self, ProtocolError> {
        config.validate()?;
        if keys.id as usize >= config.n || keys.links.len() != config.n {
            return Err(ProtocolError::Config("keys do not match n"));
        }
        Ok(Self {
            id: keys.id,
            config,
            keys,
            now_tick: 0,
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
            deliveries: Vec::new(),
            fetch_wanted: false,
            progress_tick: 0,
        })
    }

    /// A replica restarted from its durable store: it recovers (see the module docs)
    /// before it votes again. `recovered.recent` must end at `last_decided`.
    /// `ordered` gives, per client, the highest sequence number in the recovered
    /// history (so retransmissions are answered from the reply cache).
    ///
    /// The recovery query's nonce is derived from `last_decided`; prefer
    /// [`Replica::restart_with_nonce`] with a value unique per process start (e.g. the
    /// wall clock), so that late answers to an earlier incarnation's query are ignored.
    pub fn restart(
        config: Config,
        keys: ReplicaKeys,
        recovered: Recovered,
        ordered: BTreeMap<u64, u64>,
    ) -> Result<Self, ProtocolError> {
        let nonce = recovered.last_decided;
        Self::restart_with_nonce(config, keys, recovered, ordered, nonce)
    }

    /// [`Replica::restart`] with an explicit recovery nonce, unique per incarnation.
    pub fn restart_with_nonce(
        config: Config,
        keys: ReplicaKeys,
        recovered: Recovered,
        ordered: BTreeMap<u64, u64>,
        nonce: u64,
    ) -> Result<Self, ProtocolError> {
        let mut replica = Self::new(config, keys)?;
        if recovered.recent.len() as u64 > recovered.last_decided {
            return Err(ProtocolError::Config("more recent batches than decided agreements"));
        }
        replica.last_decided = recovered.last_decided;
        replica.vote_floor = recovered.last_decided;
        let first = recovered.last_decided + 1 - recovered.recent.len() as u64;
        let skip = recovered.recent.len().saturating_sub(replica.config.decided_window_max);
        for (offset, batch) in recovered.recent.into_iter().enumerate().skip(skip) {
            replica.window_push(DecidedEntry {
                agreement_id: first + offset as u64,
                hash: batch.hash(),
                batch,
                regency: None,
                tick: 0,
            });
        }
        replica.ordered = ordered;
        // The heartbeat nonce is reserved.
        let nonce = if nonce == HEARTBEAT_NONCE { 0 } else { nonce };
        replica.phase = Phase::Recovering { nonce };
        Ok(replica)
    }

    /// Emits the first actions (the tick timer; a restarted replica's status query).
    pub fn start(&mut self, actions: &mut Vec<Action>) {
        actions.push(Action::SetTimer { timer: TimerKind::Tick, after_ms: self.config.tick_ms });
        if let Phase::Recovering { nonce } = self.phase {
            actions.push(Action::Broadcast { message: Message::StatusQuery { nonce } });
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

    /// Number of requests waiting to be ordered.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one event; pushes the resulting side effects onto `actions`.
    pub fn handle(&mut self, event: Event, actions: &mut Vec<Action>) {
        let (regency_before, decided_before) = (self.regency, self.last_decided);
        assert!(self.deliveries.is_empty(), "deliveries leave with the event that made them");
        match event {
            Event::TimerFired(TimerKind::Tick) => self.on_tick(actions),
            Event::ClientRequest { request, digest } => {
                self.on_client_request(request, digest, actions)
            }
            Event::Message { from, message } => {
                if (from as usize) < self.config.n && from != self.id {
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

    // ----- client requests -----

    fn on_client_request(
        &mut self,
        request: ClientRequest,
        digest: Option<Hash>,
        actions: &mut Vec<Action>,
    ) {
        if request.authenticator.len() != self.config.n {
            return;
        }
        let digest = match digest {
            Some(digest) => digest,
            None => {
                let digest = request.digest();
                let key = self.keys.client_key(request.client_id);
                if !request.verify_digest(self.id, &key, &digest) {
                    return;
                }
                digest
            }
        };
        if self.ordered.get(&request.client_id).is_some_and(|&seq| seq >= request.sequence) {
            actions.push(Action::ReplyFromCache {
                client_id: request.client_id,
                sequence: request.sequence,
            });
            return;
        }
        // A crash-mode client sends to the replica it believes leads. One that does not
        // (a fresh client, after the leader moved) passes the request on at once rather
        // than after the request timeout, so the client is not made to wait it out; the
        // replies carry the regency, from which the client learns the leader. The
        // request keeps its client MACs, which the leader checks (see
        // `Message::Forward`); it stays pending here too, so a leader that does not
        // order it is still replaced. BFT clients broadcast, so nothing is forwarded.
        let forward = self.config.mode == Mode::Crash
            && self.phase == Phase::Normal
            && !self.leads(self.regency);
        let request_to_forward = forward.then(|| request.clone());
        if self.add_pending(request, digest)
            && let Some(request) = request_to_forward
        {
            actions.push(Action::Send {
                to: self.config.leader_of(self.regency),
                message: Message::Forward {
                    last_decided: self.last_decided,
                    requests: vec![request],
                },
            });
        }
    }

    /// Adds `request` to the pending set; false when it was not added (an older or the
    /// same sequence of its client is already pending, or the set is full).
    fn add_pending(&mut self, request: ClientRequest, digest: Hash) -> bool {
        if let Some(&at) = self.pending_by_client.get(&request.client_id) {
            let existing = &self.pending[&at];
            if existing.request.sequence >= request.sequence {
                return false;
            }
            self.pending.remove(&at);
            self.pending_by_client.remove(&request.client_id);
        }
        if self.pending.len() >= self.config.pending_requests_max {
            return false;
        }
        let at = self.pending_next;
        self.pending_next += 1;
        self.pending_by_client.insert(request.client_id, at);
        self.pending
            .insert(at, Pending { request, digest, arrival_tick: self.now_tick, forwarded: false });
        true
    }

    fn remove_ordered_pending(&mut self, client_id: u64, sequence: u64) {
        if let Some(&at) = self.pending_by_client.get(&client_id)
            && self.pending[&at].request.sequence <= sequence
        {
            self.pending.remove(&at);
            self.pending_by_client.remove(&client_id);
        }
    }

    /// The digest of `request` if it is valid in a batch for this replica.
    fn request_digest(&self, request: &ClientRequest) -> Option<Hash> {
        if request.authenticator.len() != self.config.n {
            return None;
        }
        if let Some(&at) = self.pending_by_client.get(&request.client_id)
            && self.pending[&at].request == *request
        {
            return Some(self.pending[&at].digest); // verified on arrival
        }
        let digest = request.digest();
        request
            .verify_digest(self.id, &self.keys.client_key(request.client_id), &digest)
            .then_some(digest)
    }

    /// The hash of `batch` if it is valid for this replica (bounds and every request's
    /// authenticator), computed from the request digests its checks needed anyway.
    fn valid_batch_hash(&self, batch: &Batch) -> Option<Hash> {
        let count = batch.requests.len();
        if count > self.config.batch_requests_max {
            return None;
        }
        if count > 1 && batch.encoded_len() > self.config.batch_bytes_max + 4 {
            return None;
        }
        let digests: Vec<Hash> = batch
            .requests
            .iter()
            .map(|request| self.request_digest(request))
            .collect::<Option<_>>()?;
        Some(hash_with_digests(batch, &digests))
    }

    /// The next batch to propose, with its hash.
    fn build_batch(&self) -> (Batch, Hash) {
        let mut digests = Vec::new();
        let mut requests = Vec::new();
        let mut bytes = 4usize;
        for pending in self.pending.values() {
            let len = pending.request.encoded_len();
            if !requests.is_empty()
                && (requests.len() >= self.config.batch_requests_max
                    || bytes + len > self.config.batch_bytes_max + 4)
            {
                break;
            }
            bytes += len;
            requests.push(pending.request.clone());
            digests.push(pending.digest);
        }
        let batch = Batch { requests };
        let hash = hash_with_digests(&batch, &digests);
        (batch, hash)
    }

    // ----- messages -----

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
            Message::Decided { agreement_id, batch } => self.on_decided(from, agreement_id, batch),
            Message::StatusQuery { nonce } => {
                let message = Message::Status {
                    nonce,
                    last_decided: self.last_decided,
                    highest_voted: self.highest_voted(),
                    regency: self.regency,
                    recovering: self.is_recovering() || self.awaiting_vote_regency,
                };
                actions.push(Action::Send { to: from, message });
            }
            Message::Status { nonce, last_decided, highest_voted, regency, recovering } => {
                let status = PeerStatus { last_decided, highest_voted, regency, recovering };
                self.on_status(from, nonce, status, actions)
            }
        }
    }

    fn highest_voted(&self) -> u64 {
        let voted = self
            .instances
            .iter()
            .filter(|(_, inst)| inst.my_write.is_some() || inst.my_accept.is_some())
            .map(|(&aid, _)| aid)
            .max()
            .unwrap_or(0);
        voted.max(self.last_decided).max(self.vote_floor)
    }

    /// Keeps messages for agreements in (last_decided, last_decided + FUTURE]; beyond,
    /// the replica is behind.
    fn instance_slot(&mut self, agreement_id: u64) -> Option<&mut Instance> {
        if agreement_id <= self.last_decided {
            return None;
        }
        if agreement_id > self.last_decided + FUTURE_INSTANCES_MAX {
            self.mark_behind();
            self.send_fetch_now();
            return None;
        }
        if agreement_id > self.last_decided + 1 {
            self.mark_behind();
        }
        Some(self.instances.entry(agreement_id).or_default())
    }

    fn on_propose(
        &mut self,
        from: ReplicaId,
        regency: u64,
        agreement_id: u64,
        batch: Arc<Batch>,
        actions: &mut Vec<Action>,
    ) {
        if agreement_id <= self.last_decided {
            self.help(from, agreement_id, actions);
            return;
        }
        if from != self.config.leader_of(regency) || regency < self.regency {
            return;
        }
        if let Some(inst) = self.instance_slot(agreement_id)
            && inst.proposal.as_ref().is_none_or(|(r, _)| *r < regency)
        {
            inst.proposal = Some((regency, batch));
        }
    }

    fn on_vote(
        &mut self,
        from: ReplicaId,
        regency: u64,
        agreement_id: u64,
        hash: Hash,
        accept: bool,
        actions: &mut Vec<Action>,
    ) {
        if agreement_id <= self.last_decided {
            self.help(from, agreement_id, actions);
            return;
        }
        if let Some(inst) = self.instance_slot(agreement_id) {
            let votes = if accept { &mut inst.accepts } else { &mut inst.writes };
            let newer = votes.get(&from).is_none_or(|(r, _)| *r <= regency);
            if newer {
                votes.insert(from, (regency, hash));
            }
        }
    }

    /// A replica is still working on an agreement decided here: send it the decided
    /// batch (it decides on f+1 of those) and, if it was decided here by an ACCEPT
    /// quorum, this replica's ACCEPT for it (so that a quorum can form even when only one
    /// correct replica saw it). A replica that decided a value may vote for it: it is
    /// the only value that can be decided. Not for messages that are merely late
    /// (within a tick of the decision), and at most once per RESEND_TICKS per peer.
    fn help(&mut self, to: ReplicaId, agreement_id: u64, actions: &mut Vec<Action>) {
        let now = self.now_tick;
        if self
            .helped
            .get(&to)
            .is_some_and(|&(done, tick)| done >= agreement_id && now < tick + RESEND_TICKS)
        {
            return;
        }
        let Some(entry) = self.window_get(agreement_id) else { return };
        if agreement_id == self.last_decided && now < entry.tick + 2 {
            return;
        }
        let (batch, hash, regency) = (entry.batch.clone(), entry.hash, entry.regency);
        self.helped.insert(to, (agreement_id, now));
        actions.push(Action::Send { to, message: Message::Decided { agreement_id, batch } });
        if let Some(regency) = regency {
            actions.push(Action::Send {
                to,
                message: Message::Accept { regency, agreement_id, hash },
            });
        }
    }

    /// Appends a decision to the catch-up window and trims it to its bounds.
    fn window_push(&mut self, entry: DecidedEntry) {
        if let Some(last) = self.window.back() {
            assert_eq!(last.agreement_id + 1, entry.agreement_id, "decision window is consecutive");
        }
        self.window_bytes += entry.batch.encoded_len();
        self.window.push_back(entry);
        while self.window.len() > 1
            && (self.window.len() > self.config.decided_window_max
                || self.window_bytes > self.config.decided_window_bytes_max)
        {
            let dropped = self.window.pop_front().expect("window is not empty");
            self.window_bytes -= dropped.batch.encoded_len();
        }
    }

    fn window_get(&self, agreement_id: u64) -> Option<&DecidedEntry> {
        let first = self.window.front()?.agreement_id;
        if agreement_id < first {
            return None;
        }
        let entry = self.window.get((agreement_id - first) as usize)?;
        assert_eq!(entry.agreement_id, agreement_id, "decision window is consecutive");
        Some(entry)
    }

    // ----- normal case -----

    fn can_vote(&self, regency: u64, agreement_id: u64) -> bool {
        self.phase == Phase::Normal
            && regency == self.regency
            && regency >= self.vote_regency_min
            && agreement_id == self.last_decided + 1
            && self.may_vote_at(regency, agreement_id)
    }

    /// Whether recovery allows a vote for `agreement_id` in `regency`. Votes are not
    /// persisted, so a restarted replica must not vote twice, with different values, in
    /// a (regency, agreement) where its previous incarnation voted: hence the floor. In
    /// BFT mode a regency above every one the previous incarnation can have voted in
    /// lifts it: the votes there are new ones, cast after a SYNC that the choice rule
    /// checked, and the only trace of the lost votes is a STOPDATA that omits them,
    /// which the rule tolerates as one of f faults. Without this, a leader crash while
    /// the agreement at the floor is open stalls the cluster for good: it cannot decide
    /// without this replica's vote (module docs, "Restart").
    fn may_vote_at(&self, regency: u64, agreement_id: u64) -> bool {
        agreement_id > self.vote_floor
            || (self.config.mode == Mode::Bft && self.floor_regency.is_some_and(|r| regency > r))
    }

    /// Writes `batch` (whose hash is `hash`) for (regency, agreement): broadcasts WRITE
    /// (BFT) or ACCEPT (crash).
    fn write_value(
        &mut self,
        regency: u64,
        agreement_id: u64,
        batch: Arc<Batch>,
        hash: Hash,
        actions: &mut Vec<Action>,
    ) {
        debug_assert_eq!(batch.hash(), hash);
        let mode = self.config.mode;
        let id = self.id;
        let inst = self.instances.entry(agreement_id).or_default();
        if inst.my_write.is_some_and(|(r, _)| r >= regency) {
            return; // one value per (regency, agreement)
        }
        if inst.values.len() < VALUES_PER_INSTANCE_MAX || inst.values.contains_key(&hash) {
            inst.values.insert(hash, batch);
        } else {
            return;
        }
        assert!(
            inst.my_write.is_none_or(|(r, _)| r < regency),
            "one value per (regency, agreement)"
        );
        inst.my_write = Some((regency, hash));
        inst.my_writes.insert(hash, regency);
        inst.writes.insert(id, (regency, hash));
        match mode {
            Mode::Bft => actions.push(Action::Broadcast {
                message: Message::Write { regency, agreement_id, hash },
            }),
            Mode::Crash => {
                inst.my_accept = Some((regency, hash));
                inst.accepts.insert(id, (regency, hash));
                actions.push(Action::Broadcast {
                    message: Message::Accept { regency, agreement_id, hash },
                });
            }
        }
    }

    fn check_accept(&mut self, agreement_id: u64, actions: &mut Vec<Action>) {
        if self.config.mode != Mode::Bft || !self.can_vote(self.regency, agreement_id) {
            return;
        }
        let regency = self.regency;
        let quorum = self.quorum();
        let id = self.id;
        let Some(inst) = self.instances.get_mut(&agreement_id) else { return };
        let Some((written_regency, hash)) = inst.my_write else { return };
        if written_regency != regency || inst.my_accept.is_some_and(|(r, _)| r >= regency) {
            return;
        }
        let matching = inst.writes.values().filter(|vote| **vote == (regency, hash)).count();
        if matching >= quorum {
            inst.my_accept = Some((regency, hash));
            inst.accepts.insert(id, (regency, hash));
            actions.push(Action::Broadcast {
                message: Message::Accept { regency, agreement_id, hash },
            });
        }
    }

    /// Decides the open agreement if a quorum of matching ACCEPTs and the batch are in.
    fn check_decide(&mut self, agreement_id: u64) -> bool {
        let quorum = self.quorum();
        let Some(inst) = self.instances.get(&agreement_id) else { return false };
        let mut tally: BTreeMap<(u64, Hash), Vec<ReplicaId>> = BTreeMap::new();
        for (&sender, &vote) in &inst.accepts {
            tally.entry(vote).or_default().push(sender);
        }
        let decided = tally
            .into_iter()
            .find(|((_, hash), senders)| senders.len() >= quorum && inst.values.contains_key(hash));
        match decided {
            Some(((regency, hash), proof)) => {
                assert!(
                    proof.len() >= quorum && quorum <= self.config.n,
                    "a decision needs a quorum"
                );
                let batch = inst.values[&hash].clone();
                self.decide(agreement_id, Some(regency), hash, batch, proof);
                true
            }
            None => false,
        }
    }

    fn decide(
        &mut self,
        agreement_id: u64,
        regency: Option<u64>,
        hash: Hash,
        batch: Arc<Batch>,
        proof: Vec<ReplicaId>,
    ) {
        assert_eq!(agreement_id, self.last_decided + 1, "agreements decide in order");
        debug_assert_eq!(batch.hash(), hash);
        self.last_decided = agreement_id;
        self.instances.remove(&agreement_id);
        self.fetch.retain(|&aid, _| aid > agreement_id);
        self.window_push(DecidedEntry {
            agreement_id,
            hash,
            batch: batch.clone(),
            regency,
            tick: self.now_tick,
        });
        for request in &batch.requests {
            let entry = self.ordered.entry(request.client_id).or_insert(0);
            *entry = (*entry).max(request.sequence);
            let sequence = *entry;
            self.remove_ordered_pending(request.client_id, sequence);
        }
        self.failed_changes = 0;
        self.progress_tick = self.now_tick;
        if self.phase == Phase::Normal {
            self.sync_resend = None;
        }
        let regency = regency.unwrap_or(0);
        self.deliveries.push(Decision { agreement_id, regency, hash, batch, proof });
    }

    /// Drives the open agreement as far as the messages in hand allow.
    fn settle(&mut self, actions: &mut Vec<Action>) {
        loop {
            let aid = self.last_decided + 1;
            if self.decide_from_fetch(aid) {
                continue;
            }
            let proposal = self.instances.get(&aid).and_then(|inst| inst.proposal.clone());
            if let Some((regency, batch)) = proposal
                && self.can_vote(regency, aid)
            {
                if let Some(inst) = self.instances.get_mut(&aid) {
                    inst.proposal = None;
                }
                if let Some(hash) = self.valid_batch_hash(&batch) {
                    self.write_value(regency, aid, batch, hash, actions);
                }
            }
            self.check_accept(aid, actions);
            if self.check_decide(aid) {
                continue;
            }
            break;
        }
    }

    fn maybe_propose(&mut self, actions: &mut Vec<Action>) {
        let aid = self.last_decided + 1;
        if !self.is_leader() || !self.can_vote(self.regency, aid) || self.pending.is_empty() {
            return;
        }
        if self
            .instances
            .get(&aid)
            .is_some_and(|inst| inst.my_write.is_some_and(|(r, _)| r >= self.regency))
        {
            return;
        }
        let (batch, hash) = self.build_batch();
        let batch = Arc::new(batch);
        actions.push(Action::Broadcast {
            message: Message::Propose {
                regency: self.regency,
                agreement_id: aid,
                batch: batch.clone(),
            },
        });
        self.write_value(self.regency, aid, batch, hash, actions);
    }

    // ----- catch-up -----

    fn mark_behind(&mut self) {
        if self.behind_mark.is_none() {
            self.behind_mark = Some(self.last_decided);
        }
    }

    fn send_fetch_now(&mut self) {
        if self.fetch_sent_tick.is_some_and(|tick| self.now_tick < tick + 2) {
            return;
        }
        self.fetch_sent_tick = Some(self.now_tick);
        self.behind_mark = None;
        self.fetch_wanted = true;
    }

    fn on_fetch(&mut self, to: ReplicaId, first: u64, last: u64, actions: &mut Vec<Action>) {
        let last = last.min(first.saturating_add(self.config.fetch_instances_max - 1));
        let mut aid = first;
        while aid <= last {
            match self.window_get(aid) {
                Some(entry) => actions.push(Action::Send {
                    to,
                    message: Message::Decided { agreement_id: aid, batch: entry.batch.clone() },
                }),
                None if aid > self.last_decided => break,
                None => {}
            }
            aid += 1;
        }
    }

    fn on_decided(&mut self, from: ReplicaId, agreement_id: u64, batch: Arc<Batch>) {
        let horizon = self.last_decided + self.config.fetch_instances_max.max(FUTURE_INSTANCES_MAX);
        if agreement_id <= self.last_decided || agreement_id > horizon {
            if agreement_id > horizon {
                self.mark_behind();
            }
            return;
        }
        let slot = self.fetch.entry(agreement_id).or_default();
        if slot.votes.contains_key(&from) {
            return;
        }
        let hash = batch.hash();
        slot.votes.insert(from, hash);
        slot.batches.entry(hash).or_insert(batch);
    }

    fn decide_from_fetch(&mut self, agreement_id: u64) -> bool {
        let weak = self.config.weak_quorum();
        let Some(slot) = self.fetch.get(&agreement_id) else { return false };
        let mut tally: BTreeMap<Hash, Vec<ReplicaId>> = BTreeMap::new();
        for (&sender, &hash) in &slot.votes {
            tally.entry(hash).or_default().push(sender);
        }
        let Some((hash, proof)) = tally.into_iter().find(|(_, senders)| senders.len() >= weak)
        else {
            return false;
        };
        let batch = slot.batches[&hash].clone();
        self.decide(agreement_id, None, hash, batch, proof);
        true
    }

    // ----- timers -----

    fn on_tick(&mut self, actions: &mut Vec<Action>) {
        self.now_tick += 1;
        actions.push(Action::SetTimer { timer: TimerKind::Tick, after_ms: self.config.tick_ms });
        if let Phase::Recovering { nonce } = self.phase {
            actions.push(Action::Broadcast { message: Message::StatusQuery { nonce } });
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
        let timeout = self.timeout_ticks();
        let resend = self.now_tick.is_multiple_of(RESEND_TICKS);
        if self.now_tick.is_multiple_of(HEARTBEAT_TICKS) {
            actions.push(Action::Broadcast {
                message: Message::Status {
                    nonce: HEARTBEAT_NONCE,
                    last_decided: self.last_decided,
                    highest_voted: self.highest_voted(),
                    regency: self.regency,
                    recovering: false,
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
                if stop || stuck {
                    self.start_stop(self.regency + 1, actions);
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

    /// The open agreement is stuck (messages may have been lost): send this replica's
    /// proposal and votes for it again. Receivers ignore duplicates.
    fn resend_votes(&self, actions: &mut Vec<Action>) {
        let aid = self.last_decided + 1;
        let regency = self.regency;
        let Some(inst) = self.instances.get(&aid) else { return };
        if let Some((r, hash)) = inst.my_write
            && r == regency
        {
            if self.leads(regency)
                && self.sync_resend.is_none()
                && let Some(batch) = inst.values.get(&hash)
            {
                actions.push(Action::Broadcast {
                    message: Message::Propose { regency, agreement_id: aid, batch: batch.clone() },
                });
            }
            if self.config.mode == Mode::Bft {
                actions.push(Action::Broadcast {
                    message: Message::Write { regency, agreement_id: aid, hash },
                });
            }
        }
        if let Some((r, hash)) = inst.my_accept
            && r == regency
        {
            actions.push(Action::Broadcast {
                message: Message::Accept { regency, agreement_id: aid, hash },
            });
        }
    }

    // ----- leader change -----

    fn start_stop(&mut self, target: u64, actions: &mut Vec<Action>) {
        if self.stop_sent >= target {
            return;
        }
        self.stop_sent = target;
        self.stop_resent_tick = self.now_tick;
        self.stop_high.insert(self.id, target);
        actions.push(Action::Broadcast { message: Message::Stop { regency: target } });
        self.check_stops(actions);
    }

    fn on_stop(&mut self, from: ReplicaId, target: u64, actions: &mut Vec<Action>) {
        if self.stop_high.get(&from).is_none_or(|&high| high < target) {
            self.stop_high.insert(from, target);
        }
        self.check_stops(actions);
    }

    /// The `k`-th largest STOP regency: the highest regency that `k` replicas asked for.
    fn stop_level(&self, k: usize) -> u64 {
        let mut highs: Vec<u64> = self.stop_high.values().copied().collect();
        highs.sort_unstable_by(|a, b| b.cmp(a));
        highs.get(k.wrapping_sub(1)).copied().unwrap_or(0)
    }

    fn check_stops(&mut self, actions: &mut Vec<Action>) {
        if self.is_recovering() {
            return;
        }
        let join = self.stop_level(self.config.f + 1);
        if join > self.regency && join > self.stop_sent {
            self.start_stop(join, actions);
            return; // start_stop re-enters check_stops
        }
        let install = self.stop_level(self.quorum());
        if install > self.regency {
            self.install_changing(install, actions);
        }
    }

    fn install_changing(&mut self, target: u64, actions: &mut Vec<Action>) {
        assert!(target > self.regency, "regencies only grow");
        self.regency = target;
        self.phase = Phase::Changing { since_tick: self.now_tick };
        self.sync_resend = None;
        self.stopdata.retain(|&r, _| r >= target);
        if self.pending_sync.as_ref().is_some_and(|sync| sync.regency < target) {
            self.pending_sync = None;
        }
        let collect = Arc::new(self.build_collect());
        let digest = collect.digest();
        self.stopdata.entry(target).or_default().insert(self.id, (collect.clone(), digest));
        let message = Message::StopData { regency: target, collect };
        self.my_stopdata = Some(message.clone());
        actions.push(Action::Broadcast { message });
    }

    fn build_collect(&self) -> CollectData {
        let mut collect = CollectData {
            last_decided: self.last_decided,
            decided_hash: self.window.back().map(|entry| entry.hash),
            ..CollectData::default()
        };
        let mut wanted: Vec<Hash> = Vec::new();
        if let Some(inst) = self.instances.get(&(self.last_decided + 1)) {
            collect.accepted = inst.my_accept;
            let mut writes: Vec<(Hash, u64)> =
                inst.my_writes.iter().map(|(h, r)| (*h, *r)).collect();
            writes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            writes.truncate(COLLECT_WRITES_MAX);
            collect.writes = writes;
            wanted.extend(inst.my_accept.map(|(_, h)| h));
            wanted.extend(inst.my_write.map(|(_, h)| h));
            for hash in &wanted {
                if let Some(batch) = inst.values.get(hash)
                    && !collect.values.iter().any(|b| Arc::ptr_eq(b, batch))
                {
                    collect.values.push(batch.clone());
                }
            }
        }
        if let Some(DecidedEntry { batch, .. }) = self.window.back()
            && collect.values.len() < COLLECT_VALUES_MAX
        {
            collect.values.push(batch.clone());
        }
        collect.values.truncate(COLLECT_VALUES_MAX);
        collect
    }

    fn on_stopdata(&mut self, from: ReplicaId, regency: u64, collect: Arc<CollectData>) {
        if regency < self.regency || regency > self.regency + REGENCY_AHEAD_MAX {
            return;
        }
        if collect.last_decided > self.last_decided {
            self.mark_behind();
        }
        if regency > self.regency {
            // At most one future regency per sender: bounds what a Byzantine replica can
            // make this replica hold.
            for (&r, senders) in self.stopdata.iter_mut() {
                if r > self.regency && r != regency {
                    senders.remove(&from);
                }
            }
        }
        let digest = collect.digest();
        self.stopdata.entry(regency).or_default().entry(from).or_insert((collect, digest));
    }

    /// The report of one collect about agreement `aid`: (accepted, writes), or None if
    /// the collect cannot speak about it (its sender is ahead).
    fn report(collect: &CollectData, aid: u64) -> Option<Report> {
        let k = collect.last_decided;
        if k > aid {
            None
        } else if k == aid {
            let hash = collect.decided_hash?;
            Some((Some((DECIDED_REGENCY, hash)), vec![(hash, DECIDED_REGENCY)]))
        } else if k + 1 == aid {
            Some((collect.accepted, collect.writes.clone()))
        } else {
            Some((None, Vec::new()))
        }
    }

    /// The choice rule (module docs) over `collects` for agreement `aid`.
    fn choose(&self, collects: &[&CollectData], aid: u64) -> Option<Choice> {
        let mut reports = Vec::with_capacity(collects.len());
        for collect in collects {
            reports.push(Self::report(collect, aid)?);
        }
        let quorum = self.quorum();
        if reports.len() < quorum {
            return None;
        }
        let mut candidates: Vec<(u64, Hash)> = reports.iter().filter_map(|(acc, _)| *acc).collect();
        candidates.sort_by(|a, b| b.cmp(a));
        candidates.dedup();
        match self.config.mode {
            Mode::Crash => Some(match candidates.first() {
                Some((_, hash)) => Choice::Forced(*hash),
                None => Choice::Free,
            }),
            Mode::Bft => {
                let weak = self.config.weak_quorum();
                for &(regency, hash) in &candidates {
                    let compatible = reports
                        .iter()
                        .filter(|(acc, _)| match acc {
                            None => true,
                            Some((r, h)) => *r < regency || *h == hash,
                        })
                        .count();
                    let certified = reports
                        .iter()
                        .filter(|(_, writes)| {
                            writes.iter().any(|(h, r)| *h == hash && *r >= regency)
                        })
                        .count();
                    if compatible >= quorum && certified >= weak {
                        return Some(Choice::Forced(hash));
                    }
                }
                let unaccepted = reports.iter().filter(|(acc, _)| acc.is_none()).count();
                (unaccepted >= quorum).then_some(Choice::Free)
            }
        }
    }

    /// New leader: once its STOPDATAs determine a value, broadcast SYNC.
    fn try_sync(&mut self, actions: &mut Vec<Action>) {
        let regency = self.regency;
        let Some(collected) = self.stopdata.get(&regency) else { return };
        let weak = self.config.weak_quorum().max(1);
        let mut decided: Vec<u64> = collected.values().map(|(c, _)| c.last_decided).collect();
        decided.sort_unstable_by(|a, b| b.cmp(a));
        if decided.get(weak - 1).is_some_and(|&d| d > self.last_decided) {
            self.mark_behind();
            self.send_fetch_now();
            return;
        }
        let aid = self.last_decided + 1;
        let members: Vec<(ReplicaId, Arc<CollectData>, Hash)> = collected
            .iter()
            .filter(|(_, (c, _))| Self::report(c, aid).is_some())
            .map(|(&id, (c, d))| (id, c.clone(), *d))
            .collect();
        let refs: Vec<&CollectData> = members.iter().map(|(_, c, _)| c.as_ref()).collect();
        let batch = match self.choose(&refs, aid) {
            None => return,
            // Any value is safe; prefer one a member logged as decided (after a crash of
            // every replica it may be the only trace of that agreement), then one it
            // accepted, then this leader's pending requests.
            Some(Choice::Free) => {
                let logged = members.iter().find_map(|(_, c, _)| {
                    let hash = c.decided_hash.filter(|_| c.last_decided == aid)?;
                    c.values.iter().find(|b| b.hash() == hash).cloned()
                });
                let accepted = || {
                    members.iter().find_map(|(_, c, _)| {
                        let (_, hash) = c.accepted.filter(|_| c.last_decided + 1 == aid)?;
                        c.values.iter().find(|b| b.hash() == hash).cloned()
                    })
                };
                logged.or_else(accepted).unwrap_or_else(|| Arc::new(self.build_batch().0))
            }
            Some(Choice::Forced(hash)) => {
                let found = members
                    .iter()
                    .flat_map(|(_, c, _)| c.values.iter())
                    .find(|batch| batch.hash() == hash)
                    .cloned()
                    .or_else(|| {
                        self.instances.get(&aid).and_then(|inst| inst.values.get(&hash).cloned())
                    });
                match found {
                    Some(batch) => batch,
                    None => return,
                }
            }
        };
        let message = Message::Sync {
            regency,
            agreement_id: aid,
            members: members.iter().map(|(id, _, d)| (*id, *d)).collect(),
            batch: batch.clone(),
        };
        actions.push(Action::Broadcast { message: message.clone() });
        self.sync_resend = Some(message);
        let sync = PendingSync {
            from: self.id,
            regency,
            agreement_id: aid,
            members: members.iter().map(|(id, _, d)| (*id, *d)).collect(),
            batch,
        };
        self.apply_sync(sync, actions);
    }

    fn retry_pending_sync(&mut self, actions: &mut Vec<Action>) {
        if let Some(sync) = self.pending_sync.take() {
            self.apply_sync(sync, actions);
        }
    }

    /// Validates a SYNC and, if it holds, installs its regency and writes its value.
    fn apply_sync(&mut self, sync: PendingSync, actions: &mut Vec<Action>) {
        if sync.from != self.config.leader_of(sync.regency) || sync.regency < self.regency {
            return;
        }
        if sync.regency > self.regency {
            if sync.regency <= self.regency + REGENCY_AHEAD_MAX {
                self.pending_sync = Some(sync);
            }
            return;
        }
        if !matches!(self.phase, Phase::Changing { .. }) {
            return;
        }
        let Some(collected) = self.stopdata.get(&sync.regency) else {
            self.pending_sync = Some(sync);
            return;
        };
        let mut members = Vec::with_capacity(sync.members.len());
        for (member, digest) in &sync.members {
            match collected.get(member) {
                Some((collect, have)) if have == digest => members.push(collect.clone()),
                Some(_) => return, // the leader used a STOPDATA we were not sent: reject
                None => {
                    self.pending_sync = Some(sync);
                    return;
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if !sync.members.iter().all(|(member, _)| seen.insert(*member)) {
            return;
        }
        if sync.agreement_id > self.last_decided + 1 {
            self.mark_behind();
            self.send_fetch_now();
            self.pending_sync = Some(sync);
            return;
        }
        let refs: Vec<&CollectData> = members.iter().map(|c| c.as_ref()).collect();
        let hash = sync.batch.hash();
        match self.choose(&refs, sync.agreement_id) {
            None => return,
            Some(Choice::Forced(forced)) if forced != hash => return,
            Some(Choice::Forced(_)) => {}
            Some(Choice::Free) => {
                if self.valid_batch_hash(&sync.batch).is_none() {
                    return;
                }
            }
        }
        // Installed.
        self.phase = Phase::Normal;
        if sync.regency >= self.vote_regency_min {
            self.awaiting_vote_regency = false;
        }
        self.progress_tick = self.now_tick;
        self.my_stopdata = None;
        for pending in self.pending.values_mut() {
            pending.arrival_tick = self.now_tick;
            pending.forwarded = false;
        }
        actions.push(Action::RegencyInstalled { regency: sync.regency, leader: sync.from });
        let aid = sync.agreement_id;
        if aid == self.last_decided + 1 {
            if self.may_vote_at(sync.regency, aid) {
                self.write_value(sync.regency, aid, sync.batch, hash, actions);
            }
        } else if let Some(entry) = self.window_get(aid)
            && entry.hash == hash
        {
            // Already decided here: vote so that the others can decide too.
            let regency = sync.regency;
            if self.config.mode == Mode::Bft {
                actions.push(Action::Broadcast {
                    message: Message::Write { regency, agreement_id: aid, hash },
                });
            }
            actions.push(Action::Broadcast {
                message: Message::Accept { regency, agreement_id: aid, hash },
            });
        }
    }

    // ----- recovery -----

    fn on_status(
        &mut self,
        from: ReplicaId,
        nonce: u64,
        status: PeerStatus,
        actions: &mut Vec<Action>,
    ) {
        if status.last_decided > self.last_decided {
            self.mark_behind();
        }
        let Phase::Recovering { nonce: expected } = self.phase else { return };
        if nonce != expected {
            return;
        }
        self.statuses.insert(from, status);
        self.try_finish_recovery(actions);
    }

    /// Ends recovery once the answers collected so far are enough (see the module docs).
    fn try_finish_recovery(&mut self, actions: &mut Vec<Action>) {
        let needed = match self.config.mode {
            Mode::Crash => self.config.n - self.config.f,
            Mode::Bft => self.config.n - self.config.f - 1,
        };
        let everyone_restarted = self.statuses.values().all(|s| s.recovering);
        // After a crash of every replica, wait for all of them: only complete
        // information tells which agreements some replica logged. In BFT mode, after
        // `recovery_wait_ticks`, n-f answers (with this replica) are enough when every
        // agreement any of them logged is logged by f+1 of them: an agreement a client
        // saw complete was logged by f+1 replicas, so one of them is among the answers,
        // and all of it is fetchable. This lets a cluster start (or restart after a
        // crash of all) with up to f replicas down or mute.
        if everyone_restarted && self.statuses.len() < self.config.n - 1 {
            // Ticks count from this incarnation's start, when recovery began.
            let waited = self.now_tick;
            let enough = self.config.mode == Mode::Bft
                && self.statuses.len() >= needed
                && waited >= self.config.recovery_wait_ticks()
                && self.answers_agree_on_what_was_logged();
            if !enough {
                return;
            }
        } else if self.statuses.len() < needed {
            return;
        }
        let most_decided = self.statuses.values().map(|s| s.last_decided).max().unwrap_or(0);
        let mut regencies: Vec<u64> = self.statuses.values().map(|s| s.regency).collect();
        regencies.sort_unstable_by(|a, b| b.cmp(a));
        let regency = match self.config.mode {
            Mode::Crash => regencies[0],
            Mode::Bft => regencies.get(self.config.f).copied().unwrap_or(0),
        };
        if everyone_restarted {
            // All replicas lost their votes: nobody remembers what to abstain from, so
            // vote again, but only above what can be fetched (logged by a weak quorum)
            // and only in a fresh regency, reached through a leader change whose
            // STOPDATA carries each replica's last logged batch.
            let mut decided: Vec<u64> = self.statuses.values().map(|s| s.last_decided).collect();
            decided.push(self.last_decided);
            decided.sort_unstable_by(|a, b| b.cmp(a));
            let fetchable = decided.get(self.config.weak_quorum() - 1).copied().unwrap_or(0);
            self.vote_floor = self.last_decided.max(fetchable);
            self.vote_regency_min = regency + 1;
            self.awaiting_vote_regency = true;
        } else {
            let floor = self.statuses.values().map(|s| s.highest_voted).max().unwrap_or(0);
            self.vote_floor = self.vote_floor.max(floor);
            // A regency the previous incarnation voted in was installed through a
            // quorum of STOPDATAs, so n-f-1 answers include a replica at or above it.
            self.floor_regency = self.statuses.values().map(|s| s.regency).max();
        }
        self.regency = self.regency.max(regency);
        self.stop_sent = self.stop_sent.max(self.regency);
        self.phase = Phase::Normal;
        self.statuses.clear();
        actions.push(Action::RegencyInstalled {
            regency: self.regency,
            leader: self.config.leader_of(self.regency),
        });
        if most_decided > self.last_decided {
            self.mark_behind();
            self.send_fetch_now();
        }
        if self.leads(self.regency) || everyone_restarted {
            // We may have sent a SYNC we no longer remember: hand the regency on.
            self.start_stop(self.regency + 1, actions);
        }
    }

    /// True when the highest agreement logged by this replica or any answer is also
    /// logged by a weak quorum (f+1) of them, so nothing logged is lost or unfetchable.
    fn answers_agree_on_what_was_logged(&self) -> bool {
        let mut decided: Vec<u64> = self.statuses.values().map(|s| s.last_decided).collect();
        decided.push(self.last_decided);
        decided.sort_unstable_by(|a, b| b.cmp(a));
        decided.get(self.config.weak_quorum() - 1) == decided.first()
    }
}

/// [`Batch::hash`] from the digests of its requests, in order.
fn hash_with_digests(batch: &Batch, digests: &[Hash]) -> Hash {
    assert_eq!(digests.len(), batch.requests.len(), "one digest per request");
    let mut next = digests.iter();
    batch.hash_with(|_| *next.next().expect("one digest per request"))
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
            replica.handle(message(asker, Message::StatusQuery { nonce: 9 }), &mut actions);
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

    #[test]
    fn leader_proposes_a_pending_request_and_writes_it() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let req = request(&ring, 7, 1);
        let mut actions = Vec::new();
        replicas[0].handle(event(&req), &mut actions);
        let batch = Arc::new(Batch { requests: vec![req] });
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
        let a = Arc::new(Batch { requests: vec![request(&ring, 1, 1)] });
        let b = Arc::new(Batch { requests: vec![request(&ring, 2, 1)] });
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
        let batch = Arc::new(Batch { requests: vec![forged] });
        let mut actions = Vec::new();
        replicas[1].handle(
            message(0, Message::Propose { regency: 0, agreement_id: 1, batch }),
            &mut actions,
        );
        assert!(actions.is_empty());
    }

    #[test]
    fn quorum_of_writes_then_accepts_decides_and_delivers() {
        let config = Config::bft(1);
        let (mut replicas, ring) = cluster(&config);
        let batch = Arc::new(Batch { requests: vec![request(&ring, 3, 1)] });
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
            .map(|seq| Arc::new(Batch { requests: vec![request(&ring, 1, seq)] }))
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
                Action::Send { to: 1, message: Message::Decided { agreement_id, batch } } => {
                    assert_eq!(*batch, recent[*agreement_id as usize - 1]);
                    Some(*agreement_id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(served, vec![8, 9, 10]);
    }

    #[test]
    fn crash_mode_accepts_directly_and_decides_on_a_majority() {
        let config = Config::crash(1);
        let (mut replicas, ring) = cluster(&config);
        let batch = Arc::new(Batch { requests: vec![request(&ring, 3, 1)] });
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
        let batch = Arc::new(Batch { requests: vec![req] });
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
        let batch = Arc::new(Batch { requests: vec![request(&ring, 4, 1)] });
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
