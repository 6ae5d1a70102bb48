//! The leecher's side of state transfer in a replica that starts without its state.
//!
//! [`peers_hold_state`] asks every other replica on its transfer port what it holds and
//! how it stands ([`super::membership`]); [`StartWithoutState`] decides from the answers
//! whether the replica takes the state, starts empty or refuses. When one holds
//! decided agreements, [`transfer_state`] runs `dura-transfer`'s
//! [`Leecher`] to the end and leaves a valid checkpoint of the validated state in the
//! replica's own checkpoint directory. The replica's start then loads it as it loads
//! any checkpoint, and the ordering protocol catches up from there. Nothing touches the
//! live service: the leecher builds a staging executor, and what is installed is only
//! what validated.
//!
//! The driver is one thread (the caller's) running the state machine, with a thread per
//! control exchange and per fetch (both bounded: the leecher asks at most n replicas
//! at once and runs at most n+1 fetches per attempt). Fetched checkpoints go to a file
//! under the data dir's `transfer/` (never read into memory), and are validated
//! (chunk checksums, content SHA-256, [`CheckpointStore::verify`]) before the leecher
//! sees their hash; only then may it ask to stage (decode) them. Log pieces are read
//! into memory (bounded by [`PIECE_BYTES_MAX`]), decoded to exactly their agreements
//! and hashed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use dura_core::auth::ReplicaKeys;
use dura_core::{AgreementId, Hash, ReplicaId};
use dura_snapshot::{CheckpointStore, FsDir, StoreOptions};
use dura_transfer::{
    Action, Event, FetchOutcome, Leecher, LeecherConfig, Message, Outcome, Piece, ReplayOutcome,
    RoundId, StageBase, StageOutcome, Ticket, Want,
};

use super::RuntimeError;
use super::config::ClusterConfig;
use super::datapath::{
    FetchOptions, FetchRequest, StreamOutcome, control_call_tls, fetch, member_call,
};
use super::membership::{
    Answer, Bootstrap, EmptyStart, OwnState, PeerReport, Standing, StartDecision, agreed_leader,
    decide,
};
use super::transfer::{PIECE_BYTES_MAX, decode_piece, piece_hash_of};
use crate::durability::{DecidedBatch, execute_batch};
use crate::service::{Executor, Service, StateInstaller};

/// The driver's tick: the leecher's timeouts count these.
pub const TICK: Duration = Duration::from_millis(50);

/// Ticks without an answer or a byte after which a seeder counts as mute (10 s).
pub const SEEDER_SILENCE_TICKS: u64 = 200;

/// Ticks between two probes of the peers' leader during a transfer (2 s).
pub const LEADER_PROBE_TICKS: u64 = 40;

/// How long [`peers_hold_state`] waits for a peer's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// How long one control exchange may take (a hash request reads the log first).
pub const CONTROL_TIMEOUT: Duration = Duration::from_millis(10_000);

/// Events the workers may queue before the driver takes them.
const EVENTS_MAX: usize = 4096;

/// Control exchanges in flight at once; one more is dropped (the leecher resends).
const CONTROL_CALLS_MAX: usize = 32;

/// Largest checkpoint file a leecher accepts.
pub const CHECKPOINT_FILE_BYTES_MAX: u64 = 256 << 30;

/// The directory under a replica's data dir where fetched checkpoints are staged.
pub const STAGING_DIR: &str = "transfer";

/// How a peer answered the probe: its member report.
pub type PeerState = Answer;

/// Asks every other replica (on its transfer port, one member exchange each, in
/// parallel, each within [`PROBE_TIMEOUT`]) what it holds and how it stands; returns the
/// answers of those that answered. A replica without a transfer port, or not up, does
/// not answer.
pub fn peers_hold_state(
    config: &ClusterConfig,
    me: ReplicaId,
    keys: &ReplicaKeys,
) -> Vec<PeerState> {
    // A config whose TLS files do not load fails the replica's start with the reason;
    // here it only means no peer can be asked.
    let tls = match super::tls::ReplicaTls::load(config, me) {
        Ok(tls) => tls.map(|tls| tls.dial),
        Err(error) => {
            log::warn!("replica {me}: cannot ask peers for their state: {error}");
            return Vec::new();
        }
    };
    let mut asks = Vec::new();
    for peer in config.replicas.iter().filter(|r| r.id != me) {
        let (Ok(addr), Some(link)) = (peer.transfer_addr(), keys.link(peer.id).copied()) else {
            continue;
        };
        let replica = peer.id;
        let tls = tls.clone();
        asks.push(thread::spawn(move || {
            let bytes = member_call(addr, me, replica, &link, PROBE_TIMEOUT, tls.as_ref()).ok()?;
            match PeerReport::decode(&bytes) {
                Ok(report) => Some(Answer { replica, report }),
                Err(error) => {
                    log::warn!("replica {me}: replica {replica}'s member report: {error}");
                    None
                }
            }
        }));
    }
    asks.into_iter().filter_map(|ask| ask.join().ok().flatten()).collect()
}

/// The leader f+1 (BFT; one in crash mode) of `answers` agree on, if any.
pub fn leader_of(config: &ClusterConfig, answers: &[PeerState]) -> Option<ReplicaId> {
    let reports: Vec<PeerReport> = answers.iter().map(|a| a.report).collect();
    agreed_leader(&reports, config.n(), config.protocol_config().weak_quorum())
}

/// The log target of a start without state: the replica's start, as before this
/// module decided it (operators filter `dura_engine::runtime::replica=info` for the
/// `state transfer brought agreement ...` line).
const START_LOG: &str = "dura_engine::runtime::replica";

/// How long a replica without a state of its own waits between two rounds of asking
/// its peers ([`StartWithoutState::run`]).
const PEERS_ASK_AGAIN: Duration = Duration::from_millis(200);

/// The start of a replica that has neither checkpoint nor log (or whose damaged log
/// was set aside): it asks its peers and takes the state from them, starts empty, or
/// refuses, as [`decide`] says (`super::membership`'s docs).
#[derive(Debug)]
pub struct StartWithoutState<'a> {
    /// The cluster.
    pub config: &'a ClusterConfig,
    /// This replica.
    pub me: ReplicaId,
    /// Its keys.
    pub keys: &'a ReplicaKeys,
    /// Its data dir.
    pub data_dir: &'a Path,
    /// Its marker and whether its state is lost.
    pub own: OwnState,
    /// Whether it can ask its peers (it has a transfer port).
    pub can_ask: bool,
    /// Whether it may begin a new cluster.
    pub bootstrap: Bootstrap,
    /// How long it asks again while peers are silent and none holds a state.
    pub peers_wait: Duration,
    /// The newest agreement its own checkpoints and log reach (0 without a state; a
    /// replica behind every peer's window has one): the leecher never takes a target
    /// at or below it for a transfer to make.
    pub own_last: u64,
}

impl StartWithoutState<'_> {
    /// Asks the peers (again for up to `peers_wait` while some are silent and none
    /// holds a state or is a member with its state), then decides. `Some`: the state
    /// transfer that brought the state, installed as a checkpoint in `live`; `None`:
    /// the replica starts with an empty state.
    pub fn run<S: Service>(
        &self,
        template: &S,
        live: &CheckpointStore<FsDir>,
    ) -> Result<Option<Transferred>, RuntimeError> {
        let me = self.me;
        let n = self.config.n();
        let asked = Instant::now();
        let answers = loop {
            if !self.can_ask {
                break Vec::new();
            }
            let answers = peers_hold_state(self.config, me, self.keys);
            let everyone = answers.len() + 1 == n as usize;
            let settled = answers.iter().any(|a| {
                a.report.last_agreement > 0
                    || a.report.serving
                    || a.report.standing == Standing::Member
            });
            if everyone || settled || asked.elapsed() >= self.peers_wait {
                break answers;
            }
            log::info!(
                target: START_LOG,
                "replica {me}: no state of its own; {} of {} peers answered, none holds a \
                 state: asking again",
                answers.len(),
                n - 1
            );
            thread::sleep(PEERS_ASK_AGAIN);
        };
        let what = if self.own.lost {
            "its log and checkpoints are gone but its member marker survived"
        } else if self.own.marker {
            "its log is empty and it has no checkpoint"
        } else {
            "no checkpoint, no log and no member marker"
        };
        let dir = self.data_dir.display();
        match decide(me, self.data_dir, n, self.own, &answers, self.bootstrap) {
            StartDecision::Transfer { from, last_agreement } => {
                log::warn!(
                    target: START_LOG,
                    "replica {me}: {what} in {dir}, but replica {from} holds agreements up to \
                     {last_agreement}: taking the state from the peers (state transfer)"
                );
                if self.bootstrap != Bootstrap::Existing {
                    log::warn!(
                        target: START_LOG,
                        "replica {me}: told to begin a new cluster, but the cluster holds a \
                         state: it joins it instead (a state that exists is never replaced \
                         by an empty one)"
                    );
                }
                let leader = leader_of(self.config, &answers);
                let transferred = transfer_state(
                    self.config,
                    me,
                    self.keys,
                    template,
                    live,
                    &self.data_dir.join(STAGING_DIR),
                    &AtomicBool::new(false),
                    leader,
                    self.own_last,
                )?;
                log::info!(
                    target: START_LOG,
                    "replica {me}: state transfer brought agreement {} in {} ms ({} bytes, {} \
                     rounds{})",
                    transferred.agreement_id,
                    transferred.elapsed.as_millis(),
                    transferred.bytes,
                    transferred.rounds,
                    if transferred.faulty.is_empty() {
                        String::new()
                    } else {
                        format!(", replicas proven faulty: {:?}", transferred.faulty)
                    }
                );
                Ok(Some(transferred))
            }
            StartDecision::Empty(EmptyStart::JoinEmptyCluster) => {
                log::info!(
                    target: START_LOG,
                    "replica {me}: {what} in {dir}; its peers are members and hold no \
                     agreement yet: joining the cluster with an empty state"
                );
                Ok(None)
            }
            StartDecision::Empty(EmptyStart::OwnEmptyState) => {
                log::info!(
                    target: START_LOG,
                    "replica {me}: {what} in {dir}, and no peer holds a state"
                );
                Ok(None)
            }
            StartDecision::Empty(EmptyStart::NewCluster) => {
                log::info!(
                    target: START_LOG,
                    "replica {me}: {what} in {dir}; no replica that answered ({:?}) holds a \
                     state or has been a member: beginning a new cluster, as told",
                    answers.iter().map(|a| a.replica).collect::<Vec<_>>()
                );
                Ok(None)
            }
            StartDecision::Empty(EmptyStart::ForcedNew { lost }) => {
                if lost {
                    log::error!(
                        target: START_LOG,
                        "replica {me}: {what} in {dir}; members of this cluster lost their \
                         state and none that answered holds one: beginning an EMPTY cluster \
                         as told (force new cluster); what the cluster decided is gone"
                    );
                } else {
                    log::warn!(
                        target: START_LOG,
                        "replica {me}: {what} in {dir}; beginning an empty cluster as told \
                         (force new cluster)"
                    );
                }
                Ok(None)
            }
            StartDecision::Refuse(loss) => {
                log::error!(
                    target: START_LOG,
                    "replica {me}: refusing to start: {loss}"
                );
                Err(RuntimeError::NoState(loss))
            }
        }
    }
}

/// What a finished transfer left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// The agreement the installed state is at (its checkpoint is durable in the
    /// replica's checkpoint directory).
    pub agreement_id: AgreementId,
    /// Rounds the leecher ran.
    pub rounds: u32,
    /// Bytes fetched.
    pub bytes: u64,
    /// Replicas proven faulty during the transfer.
    pub faulty: Vec<ReplicaId>,
    /// Time from start to the durable checkpoint.
    pub elapsed: Duration,
    /// The leader the leecher was last told (f+1 seeders agreed on it), which it
    /// keeps from sending bulk data while another replica can.
    pub leader: Option<ReplicaId>,
    /// Fetches (checkpoints and log pieces) asked of each seeder.
    pub fetches_from: BTreeMap<ReplicaId, u32>,
    /// Bytes fetched and kept from each seeder.
    pub bytes_from: BTreeMap<ReplicaId, u64>,
}

/// A fetched payload, held under its ticket.
enum Held {
    /// A checkpoint file, validated, in its own staging directory.
    Checkpoint { dir: PathBuf, agreement_id: AgreementId },
    /// A log piece's batches, in order.
    Piece(Vec<DecidedBatch>),
}

/// What a fetch thread reports.
enum Report {
    Event(Event),
    Held {
        ticket: Ticket,
        held: Held,
        bytes: u64,
        seeder: ReplicaId,
    },
    /// The peers' member reports from a periodic probe (the leader may have changed).
    Peers(Vec<PeerState>),
}

/// The staging state: an executor at an agreement, with the requests ordered up to it.
struct Staged<S: Service> {
    executor: Executor<S>,
    agreement_id: AgreementId,
    ordered_requests: u64,
}

/// Runs state transfer for replica `me` until a validated state is installed as a
/// durable checkpoint in `live` (its own checkpoint directory), and returns where it
/// stands. `template` builds fresh states (its installer); `staging_root` holds fetched
/// checkpoints while the transfer runs (removed at the end). `leader` is the leader f+1
/// peers agree on ([`leader_of`]); the driver asks the peers again every
/// [`LEADER_PROBE_TICKS`] and tells the leecher when the agreed leader changes.
/// `own_last` is the newest agreement the replica's own checkpoints and log reach (see
/// [`StartWithoutState::own_last`]). Fails when the leecher gives up, or `stop` is
/// raised.
#[allow(clippy::too_many_arguments)]
pub fn transfer_state<S: Service>(
    config: &ClusterConfig,
    me: ReplicaId,
    keys: &ReplicaKeys,
    template: &S,
    live: &CheckpointStore<FsDir>,
    staging_root: &Path,
    stop: &AtomicBool,
    leader: Option<ReplicaId>,
    own_last: u64,
) -> Result<Transferred, RuntimeError> {
    let started = Instant::now();
    let n = config.n() as usize;
    let session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64);
    let mut leecher_config = LeecherConfig::new(config.mode, n, me, session);
    let leader = leader.filter(|&leader| (leader as usize) < n && leader != me);
    leecher_config.leader = leader;
    if let Some(leader) = leader {
        log::info!("replica {me}: state transfer: replica {leader} leads; it sends no bulk data");
    }
    // A seeder answers a hash request and opens a log piece by reading (and verifying)
    // whole log segments, which can take seconds for a large piece on a busy machine:
    // a seeder is mute only after 10 s without an answer or a byte.
    leecher_config.timeouts.answer_ticks = SEEDER_SILENCE_TICKS;
    leecher_config.timeouts.fetch_idle_ticks = SEEDER_SILENCE_TICKS;
    leecher_config.variant = match config.transfer_protocol {
        super::config::TransferProtocol::Cst => dura_transfer::Variant::Cst,
        super::config::TransferProtocol::PbftLike => dura_transfer::Variant::PbftLike,
    };
    let mut leecher = Leecher::new(leecher_config, own_last)
        .map_err(|error| RuntimeError::Transfer(error.to_string()))?;
    let _ = std::fs::remove_dir_all(staging_root);
    std::fs::create_dir_all(staging_root).map_err(|error| RuntimeError::Io {
        operation: "create the state transfer staging directory",
        path: staging_root.to_path_buf(),
        error,
    })?;
    let (tx, rx) = bounded::<Report>(EVENTS_MAX);
    let mut driver = Driver {
        config,
        me,
        keys,
        template,
        live,
        staging_root,
        tx,
        held: HashMap::new(),
        cancels: HashMap::new(),
        staged: None,
        controls: Arc::new(AtomicUsize::new(0)),
        bytes: 0,
        installed: None,
        leader,
        fetches_from: BTreeMap::new(),
        bytes_from: BTreeMap::new(),
        tls: super::tls::ReplicaTls::load(config, me)?.map(|tls| tls.dial),
    };
    let probe_config = Arc::new(config.clone());
    let probe_keys = Arc::new(keys.clone());
    let probing = Arc::new(AtomicBool::new(false));
    let mut next_probe = LEADER_PROBE_TICKS;
    let mut actions = Vec::new();
    leecher.start(0, &mut actions);
    let mut now = 0u64;
    let result = loop {
        let mut events = Vec::new();
        for action in actions.drain(..) {
            driver.act(action, &mut events)?;
        }
        if let Some(outcome) = leecher.outcome() {
            break outcome;
        }
        if stop.load(Ordering::Acquire) {
            driver.cancel_all();
            return Err(RuntimeError::Shutdown);
        }
        for event in events {
            leecher.handle(event, &mut actions);
        }
        if !actions.is_empty() {
            continue;
        }
        let next_tick = started + TICK * (now as u32 + 1);
        match rx.recv_deadline(next_tick) {
            Ok(report) => {
                let event = driver.take(report);
                if let Some(event) = event {
                    leecher.handle(event, &mut actions);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                now = (started.elapsed().as_millis() / TICK.as_millis()) as u64;
                leecher.handle(Event::Tick { now }, &mut actions);
                if now >= next_probe && !probing.swap(true, Ordering::AcqRel) {
                    next_probe = now + LEADER_PROBE_TICKS;
                    let (config, keys, in_flight) =
                        (probe_config.clone(), probe_keys.clone(), probing.clone());
                    let tx = driver.tx.clone();
                    let spawned =
                        thread::Builder::new().name(format!("cst-probe-{me}")).spawn(move || {
                            let answers = peers_hold_state(&config, me, &keys);
                            let _ = tx.try_send(Report::Peers(answers));
                            in_flight.store(false, Ordering::Release);
                        });
                    if spawned.is_err() {
                        probing.store(false, Ordering::Release);
                    }
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                unreachable!("the driver holds a sender")
            }
        }
    };
    driver.cancel_all();
    let _ = std::fs::remove_dir_all(staging_root);
    let faulty: Vec<ReplicaId> = leecher.proven_faulty().collect();
    match result {
        Outcome::Done { agreement_id, transferred } => {
            if transferred {
                assert_eq!(driver.installed, Some(agreement_id), "installed what was validated");
            }
            Ok(Transferred {
                agreement_id,
                rounds: leecher.round(),
                bytes: driver.bytes,
                faulty,
                elapsed: started.elapsed(),
                leader: driver.leader,
                fetches_from: driver.fetches_from,
                bytes_from: driver.bytes_from,
            })
        }
        Outcome::Failed(reason) => Err(RuntimeError::Transfer(format!(
            "state transfer gave up: {reason:?}; replicas proven faulty: {faulty:?}"
        ))),
    }
}

struct Driver<'a, S: Service> {
    config: &'a ClusterConfig,
    me: ReplicaId,
    keys: &'a ReplicaKeys,
    template: &'a S,
    live: &'a CheckpointStore<FsDir>,
    staging_root: &'a Path,
    tx: Sender<Report>,
    held: HashMap<Ticket, Held>,
    cancels: HashMap<Ticket, Arc<AtomicBool>>,
    staged: Option<Staged<S>>,
    controls: Arc<AtomicUsize>,
    bytes: u64,
    installed: Option<AgreementId>,
    /// The leader the leecher was last told.
    leader: Option<ReplicaId>,
    /// Fetches asked of each seeder (at most n entries).
    fetches_from: BTreeMap<ReplicaId, u32>,
    /// Bytes kept from each seeder (at most n entries).
    bytes_from: BTreeMap<ReplicaId, u64>,
    /// TLS with the seeders (the cluster's `[tls]`); None: plain TCP.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl<S: Service> Driver<'_, S> {
    /// Carries out `action`; local work (stage, replay) reports into `events` at once.
    fn act(&mut self, action: Action, events: &mut Vec<Event>) -> Result<(), RuntimeError> {
        match action {
            Action::Send { to, msg } => self.send(to, msg),
            Action::Fetch { ticket, from, round, want } => self.fetch(ticket, from, round, want),
            Action::Cancel { ticket } => {
                if let Some(cancel) = self.cancels.remove(&ticket) {
                    cancel.store(true, Ordering::Release);
                }
                self.drop_held(ticket);
            }
            Action::Target { round, agreement_id } => {
                log::info!(
                    "replica {}: state transfer round {round:?} targets agreement {agreement_id}",
                    self.me
                );
            }
            Action::Stage { ticket, agreement_id, base } => {
                let outcome = self.stage(agreement_id, base);
                events.push(Event::Staged { ticket, outcome });
            }
            Action::Replay { ticket, payload, piece, hash_after } => {
                let outcome = self.replay(payload, piece, hash_after)?;
                events.push(Event::Replayed { ticket, outcome });
            }
            Action::Install { agreement_id } => self.install(agreement_id)?,
            Action::SeederFailed { replica, fault } => {
                log::warn!(
                    "replica {}: state transfer: replica {replica} failed as a seeder: {fault:?}{}",
                    self.me,
                    if fault.is_proof() { " (proof: it is faulty)" } else { "" }
                );
            }
            Action::Restart { round, reason } => {
                log::info!(
                    "replica {}: state transfer round ended ({reason:?}); round {round:?} starts",
                    self.me
                );
                self.cancel_all();
                self.staged = None;
            }
            Action::Done { agreement_id, transferred } => {
                log::info!(
                    "replica {}: state transfer done: state at agreement {agreement_id}{}",
                    self.me,
                    if transferred { ", installed" } else { " (nothing to transfer)" }
                );
            }
            Action::Failed { reason, faulty } => {
                log::error!(
                    "replica {}: state transfer failed: {reason:?}; proven faulty: {faulty:?}",
                    self.me
                );
            }
        }
        Ok(())
    }

    fn send(&self, to: ReplicaId, msg: Message) {
        let Some(peer) = self.config.replicas.iter().find(|r| r.id == to) else { return };
        let (Ok(addr), Some(link)) = (peer.transfer_addr(), self.keys.link(to).copied()) else {
            log::warn!("replica {}: no transfer address or key for replica {to}", self.me);
            return;
        };
        if self.controls.fetch_add(1, Ordering::AcqRel) >= CONTROL_CALLS_MAX {
            self.controls.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let (me, tx, controls) = (self.me, self.tx.clone(), self.controls.clone());
        let tls = self.tls.clone();
        let spawned = thread::Builder::new().name(format!("cst-ctl-{me}-{to}")).spawn(move || {
            match control_call_tls(addr, me, to, &link, &msg, CONTROL_TIMEOUT, tls.as_ref()) {
                Ok(answers) => {
                    for answer in answers {
                        let _ =
                            tx.try_send(Report::Event(Event::Message { from: to, msg: answer }));
                    }
                }
                Err(error) => log::debug!("replica {me}: transfer message to {to}: {error}"),
            }
            controls.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            self.controls.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn fetch(&mut self, ticket: Ticket, from: ReplicaId, round: RoundId, want: Want) {
        let peer = self.config.replicas.iter().find(|r| r.id == from);
        let (Some(addr), Some(link_key)) =
            (peer.and_then(|p| p.transfer_addr().ok()), self.keys.link(from).copied())
        else {
            let _ = self.tx.try_send(Report::Event(Event::Fetched {
                ticket,
                outcome: FetchOutcome::Disconnected,
            }));
            return;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.insert(ticket, cancel.clone());
        *self.fetches_from.entry(from).or_default() += 1;
        let request = FetchRequest {
            seeder: from,
            addr,
            me: self.me,
            link_key,
            round,
            ticket,
            want,
            offset: 0,
            tls: self.tls.clone(),
        };
        let tx = self.tx.clone();
        let dir = self.staging_root.join(format!("ticket-{ticket}"));
        let service = S::NAME;
        let spawned = thread::Builder::new().name(format!("cst-fetch-{}-{ticket}", self.me)).spawn(
            move || {
                let report = fetch_one(&request, &dir, service, &tx, &cancel);
                let _ = tx.send(report);
            },
        );
        if spawned.is_err() {
            let _ = self.tx.try_send(Report::Event(Event::Fetched {
                ticket,
                outcome: FetchOutcome::Disconnected,
            }));
        }
    }

    /// Turns a worker's report into the leecher's event, keeping what it fetched.
    fn take(&mut self, report: Report) -> Option<Event> {
        match report {
            Report::Event(event) => {
                if let Event::Fetched { ticket, outcome } = &event
                    && !matches!(outcome, FetchOutcome::Received { .. })
                {
                    self.cancels.remove(ticket);
                }
                Some(event)
            }
            Report::Held { ticket, held, bytes, seeder } => {
                if self.cancels.remove(&ticket).is_none() {
                    // Cancelled meanwhile (the leecher ignores its result): drop it.
                    drop_held_files(&held);
                    return None;
                }
                self.bytes += bytes;
                *self.bytes_from.entry(seeder).or_default() += bytes;
                self.held.insert(ticket, held);
                None
            }
            Report::Peers(answers) => {
                // A leader f+1 agree on replaces the one the leecher knows; without
                // agreement (a regency change under way) it keeps the last one.
                let leader = leader_of(self.config, &answers).filter(|&l| l != self.me);
                if leader.is_none() || leader == self.leader {
                    return None;
                }
                log::info!(
                    "replica {}: state transfer: the leader is now replica {leader:?}",
                    self.me
                );
                self.leader = leader;
                Some(Event::Leader { leader })
            }
        }
    }

    fn drop_held(&mut self, ticket: Ticket) {
        if let Some(held) = self.held.remove(&ticket) {
            drop_held_files(&held);
        }
    }

    fn cancel_all(&mut self) {
        for (_, cancel) in self.cancels.drain() {
            cancel.store(true, Ordering::Release);
        }
        for (_, held) in self.held.drain() {
            drop_held_files(&held);
        }
    }

    fn stage(&mut self, agreement_id: AgreementId, base: StageBase) -> StageOutcome {
        self.staged = None;
        let staged = match base {
            StageBase::Genesis => {
                assert_eq!(agreement_id, 0, "the genesis is before agreement 1");
                match copy_of(self.template) {
                    Ok(service) => Staged {
                        executor: Executor::new(service),
                        agreement_id: 0,
                        ordered_requests: 0,
                    },
                    Err(error) => {
                        log::error!("replica {}: an empty state does not build: {error}", self.me);
                        return StageOutcome::Rejected;
                    }
                }
            }
            StageBase::Fetched { payload, content_hash } => {
                let Some(Held::Checkpoint { dir, agreement_id: held_at }) = self.held.get(&payload)
                else {
                    panic!("stage from ticket {payload}, which holds no checkpoint");
                };
                assert_eq!(*held_at, agreement_id, "the leecher stages the checkpoint it fetched");
                match load_staged(dir, self.template) {
                    Ok((loaded, hash))
                        if hash == content_hash && loaded.agreement_id == agreement_id =>
                    {
                        loaded
                    }
                    Ok(_) => return StageOutcome::Rejected,
                    Err(error) => {
                        log::warn!(
                            "replica {}: a fetched checkpoint does not load: {error}",
                            self.me
                        );
                        return StageOutcome::Rejected;
                    }
                }
            }
        };
        // The cluster's bound, as every replica executes under it: the replayed pieces
        // must evict what the seeders evicted.
        let staged = Staged {
            executor: staged.executor.with_clients_max(self.config.clients_max as usize),
            ..staged
        };
        self.staged = Some(staged);
        StageOutcome::Staged
    }

    fn replay(
        &mut self,
        payload: Option<Ticket>,
        piece: Piece,
        hash_after: bool,
    ) -> Result<ReplayOutcome, RuntimeError> {
        let staged = self.staged.as_mut().expect("a replay follows a stage");
        assert_eq!(staged.agreement_id, piece.after, "a piece starts where the state is");
        if let Some(payload) = payload {
            let Some(Held::Piece(batches)) = self.held.get(&payload) else {
                panic!("replay of ticket {payload}, which holds no piece");
            };
            for batch in batches {
                assert_eq!(batch.agreement_id, staged.agreement_id + 1, "decoded in order");
                let _ = execute_batch(&mut staged.executor, batch);
                staged.ordered_requests += batch.batch.requests.len() as u64;
                staged.agreement_id = batch.agreement_id;
            }
        }
        assert_eq!(staged.agreement_id, piece.up_to, "a replayed piece ends at its end");
        if !hash_after {
            return Ok(ReplayOutcome::Replayed { state_hash: None });
        }
        if staged.agreement_id == 0 {
            return Ok(ReplayOutcome::Replayed { state_hash: None });
        }
        let hash = self.state_hash()?;
        Ok(ReplayOutcome::Replayed { state_hash: Some(hash) })
    }

    /// The staged state's checkpoint content hash: the checkpoint writer run over a
    /// directory that keeps no bytes (the writer hashes what it writes), so the hash is
    /// what a replica that checkpointed there wrote, with no disk write.
    fn state_hash(&self) -> Result<Hash, RuntimeError> {
        let staged = self.staged.as_ref().expect("a state is staged");
        let store = CheckpointStore::open(HashOnlyDir::default(), StoreOptions::default())
            .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?;
        let written = crate::checkpoint::write_checkpoint(
            &store,
            S::NAME,
            staged.agreement_id,
            staged.ordered_requests,
            &staged.executor.view(),
        )
        .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?;
        Ok(written.content_sha256)
    }

    fn install(&mut self, agreement_id: AgreementId) -> Result<(), RuntimeError> {
        let staged = self.staged.as_ref().expect("install follows a stage");
        assert_eq!(staged.agreement_id, agreement_id, "the staged state is what validated");
        if agreement_id == 0 {
            self.installed = Some(0);
            return Ok(());
        }
        let written = crate::checkpoint::write_checkpoint(
            self.live,
            S::NAME,
            agreement_id,
            staged.ordered_requests,
            &staged.executor.view(),
        )
        .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?;
        log::info!(
            "replica {}: installed the transferred state at agreement {agreement_id} as {}",
            self.me,
            written.file_name
        );
        self.installed = Some(agreement_id);
        Ok(())
    }
}

/// A fresh copy of `template` (the state before agreement 1, as the replica was given
/// it), through its own view and installer, as a checkpoint would carry it.
fn copy_of<S: Service>(template: &S) -> Result<S, crate::service::StateError> {
    use crate::service::StateView as _;
    let mut installer = template.installer();
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    template.view().write_chunks(crate::checkpoint::CHECKPOINT_CHUNK_BYTES, &mut |chunk| {
        aligned.clear();
        aligned.extend_from_slice(chunk);
        installer.chunk(&aligned)
    })?;
    installer.finish()
}

/// A checkpoint directory that keeps names but no bytes: writing a checkpoint into it
/// computes the checkpoint's content hash (the writer hashes as it writes) without a
/// disk write. Nothing can be read back.
#[derive(Debug, Clone, Default)]
pub(crate) struct HashOnlyDir {
    names: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// A file of [`HashOnlyDir`]: its length only.
pub(crate) struct Discarding {
    written: u64,
}

impl dura_snapshot::DirWriter for Discarding {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.written += buf.len() as u64;
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        assert!(offset + buf.len() as u64 <= self.written, "write_at past the written end");
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`HashOnlyDir`] has nothing to read; this reader is never made.
pub(crate) enum NoReader {}

impl dura_snapshot::DirReader for NoReader {
    fn len_bytes(&self) -> u64 {
        match *self {}
    }

    fn read_exact_at(&mut self, _offset: u64, _buf: &mut [u8]) -> std::io::Result<()> {
        match *self {}
    }
}

impl dura_snapshot::Dir for HashOnlyDir {
    type Writer = Discarding;
    type Reader = NoReader;

    fn path(&self) -> &Path {
        Path::new("(hash only)")
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        Ok(self.names.lock().expect("names lock").iter().cloned().collect())
    }

    fn create(&self, name: &str) -> std::io::Result<Discarding> {
        self.names.lock().expect("names lock").insert(name.to_owned());
        Ok(Discarding { written: 0 })
    }

    fn open_read(&self, name: &str) -> std::io::Result<NoReader> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("{name}: a hash-only directory keeps no bytes"),
        ))
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        let mut names = self.names.lock().expect("names lock");
        if !names.remove(from) {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        names.insert(to.to_owned());
        Ok(())
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.names.lock().expect("names lock").remove(name);
        Ok(())
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn drop_held_files(held: &Held) {
    if let Held::Checkpoint { dir, .. } = held {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn staging_store(dir: &Path) -> Result<CheckpointStore<FsDir>, RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|error| RuntimeError::Io {
        operation: "create a staging directory",
        path: dir.to_path_buf(),
        error,
    })?;
    let fs_dir = FsDir::new(dir).map_err(|error| RuntimeError::Io {
        operation: "open a staging directory",
        path: dir.to_path_buf(),
        error,
    })?;
    CheckpointStore::open(fs_dir, StoreOptions::default())
        .map_err(|error| RuntimeError::Checkpoint(error.to_string()))
}

/// The content hash of the fetched checkpoint in `dir`, after every check of a load
/// but the decoding (chunk checksums, content SHA-256 against the header's).
fn checkpoint_hash(
    dir: &Path,
    agreement_id: AgreementId,
    service: &str,
) -> Result<Hash, RuntimeError> {
    let store = staging_store(dir)?;
    let verified = store
        .verify(agreement_id, service)
        .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?;
    if verified.header.agreement_id != agreement_id {
        return Err(RuntimeError::Checkpoint(format!(
            "fetched checkpoint is at agreement {}, not {agreement_id}",
            verified.header.agreement_id
        )));
    }
    Ok(verified.header.content_sha256)
}

/// Loads the fetched checkpoint in `dir` into a staging executor; with its content hash.
fn load_staged<S: Service>(dir: &Path, template: &S) -> Result<(Staged<S>, Hash), RuntimeError> {
    let store = staging_store(dir)?;
    let loaded = crate::checkpoint::load_checkpoint(&store, template)
        .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?
        .ok_or_else(|| RuntimeError::Checkpoint("the fetched checkpoint vanished".into()))?;
    let hash = store
        .read_header(loaded.from.agreement_id)
        .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?
        .content_sha256;
    let staged = Staged {
        executor: loaded.executor,
        agreement_id: loaded.from.agreement_id,
        ordered_requests: loaded.from.ordered_requests,
    };
    Ok((staged, hash))
}

/// One fetch on a worker thread: a checkpoint into a file under `dir`, a piece into
/// memory (decoded and hashed). Progress goes to `tx` as it comes.
fn fetch_one(
    request: &FetchRequest,
    dir: &Path,
    service: &'static str,
    tx: &Sender<Report>,
    cancel: &AtomicBool,
) -> Report {
    let ticket = request.ticket;
    let fetched = |outcome| Report::Event(Event::Fetched { ticket, outcome });
    let mut last_progress = Instant::now();
    let mut progress = |_: super::datapath::Progress| {
        if last_progress.elapsed() >= TICK {
            last_progress = Instant::now();
            let _ = tx.try_send(Report::Event(Event::Progress { ticket }));
        }
    };
    let outcome_of = |outcome: StreamOutcome| match outcome {
        StreamOutcome::Done { .. } => None,
        StreamOutcome::Unavailable(reason) => Some(FetchOutcome::Unavailable(reason)),
        StreamOutcome::Busy => Some(FetchOutcome::Unavailable(dura_transfer::Unavailable::Busy)),
        StreamOutcome::Stopped | StreamOutcome::Failed(_) => Some(FetchOutcome::Disconnected),
    };
    let options = FetchOptions::default();
    match request.want {
        Want::Checkpoint { agreement_id } => {
            if std::fs::create_dir_all(dir).is_err() {
                return fetched(FetchOutcome::Disconnected);
            }
            let path = dir.join(dura_snapshot::format::file_name(agreement_id));
            let Ok(mut file) = std::fs::File::create(&path) else {
                return fetched(FetchOutcome::Disconnected);
            };
            let mut written = 0u64;
            let mut too_big = false;
            let outcome = fetch(
                request,
                &options,
                &mut |chunk| {
                    written += chunk.len() as u64;
                    if written > CHECKPOINT_FILE_BYTES_MAX {
                        too_big = true;
                        return Err(std::io::Error::other("checkpoint over the bound"));
                    }
                    file.write_all(chunk)
                },
                &mut progress,
                cancel,
            );
            if too_big {
                let _ = std::fs::remove_dir_all(dir);
                return fetched(FetchOutcome::Malformed);
            }
            if let Some(outcome) = outcome_of(outcome) {
                let _ = std::fs::remove_dir_all(dir);
                return fetched(outcome);
            }
            // Not synced: a staging file is read back by this process only (the page
            // cache serves it) and removed at the end; what is installed is written
            // again, durably, as a checkpoint of the replica's own.
            drop(file);
            // Checked here, on the fetch's thread: every check of a load but decoding.
            let hash = match checkpoint_hash(dir, agreement_id, service) {
                Ok(hash) => hash,
                Err(error) => {
                    log::warn!(
                        "fetched checkpoint {agreement_id} from {}: {error}",
                        request.seeder
                    );
                    let _ = std::fs::remove_dir_all(dir);
                    return fetched(FetchOutcome::Malformed);
                }
            };
            let held = Held::Checkpoint { dir: dir.to_path_buf(), agreement_id };
            let seeder = request.seeder;
            let _ = tx.send(Report::Held { ticket, held, bytes: written, seeder });
            Report::Event(Event::Fetched { ticket, outcome: FetchOutcome::Received { hash } })
        }
        Want::Log(piece) => {
            let mut bytes = Vec::new();
            let mut too_big = false;
            let outcome = fetch(
                request,
                &options,
                &mut |chunk| {
                    if bytes.len() as u64 + chunk.len() as u64 > PIECE_BYTES_MAX {
                        too_big = true;
                        return Err(std::io::Error::other("piece over the bound"));
                    }
                    bytes.extend_from_slice(chunk);
                    Ok(())
                },
                &mut progress,
                cancel,
            );
            if too_big {
                return fetched(FetchOutcome::Malformed);
            }
            if let Some(outcome) = outcome_of(outcome) {
                return fetched(outcome);
            }
            let size = bytes.len() as u64;
            let Ok(batches) = decode_piece(piece, &bytes) else {
                return fetched(FetchOutcome::Malformed);
            };
            let Ok(hash) = piece_hash_of(piece, &batches) else {
                return fetched(FetchOutcome::Malformed);
            };
            // The piece and its event travel together: the driver keeps the batches
            // and hands the leecher the hash.
            let (held, seeder) = (Held::Piece(batches), request.seeder);
            let _ = tx.send(Report::Held { ticket, held, bytes: size, seeder });
            Report::Event(Event::Fetched { ticket, outcome: FetchOutcome::Received { hash } })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kv::KvModel;

    #[test]
    fn a_hash_only_directory_gives_the_content_hash_a_written_checkpoint_has() {
        let executor = Executor::new(KvModel::default());
        let tmp = tempfile::tempdir().expect("tempdir");
        let on_disk = staging_store(tmp.path()).expect("store");
        let written =
            crate::checkpoint::write_checkpoint(&on_disk, KvModel::NAME, 7, 9, &executor.view())
                .expect("write");
        let hashed =
            CheckpointStore::open(HashOnlyDir::default(), StoreOptions::default()).expect("store");
        let hashed =
            crate::checkpoint::write_checkpoint(&hashed, KvModel::NAME, 7, 9, &executor.view())
                .expect("hash");
        assert_eq!(hashed.content_sha256, written.content_sha256);
        assert_eq!(hashed.file_bytes, written.file_bytes);
    }
}
