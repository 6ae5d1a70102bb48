//! State transfer in the simulator: the real `dura-transfer` [`Leecher`] and [`Seeder`]
//! state machines, run over each replica's simulated checkpoint directory and `dura-wal`
//! log, with the runtime's own seeder code (holdings, piece hashes and pieces read from
//! the log, [`encode_piece`]) and leecher checks (a fetched checkpoint verified
//! before it is decoded, a piece decoded and hashed as the data path does).
//!
//! Triggers, as in the runtime: a replica whose protocol core finds itself behind every
//! peer's catch-up window ([`crate::protocol::Action::TransferNeeded`]) stops, transfers
//! and restarts from the installed checkpoint; a replica whose disk was wiped
//! ([`super::SimConfig::wiped`]) transfers before its restart. Control messages and
//! payloads take drawn network delays; a seeder that is down does not answer.
//!
//! Byzantine seeders: a replica drawn Byzantine also misbehaves as a seeder
//! ([`SeederFault`]): mute, bytes corrupted behind a correct header, a stale checkpoint,
//! a truncated or reordered log piece, wrong hashes, a disconnect mid-stream.
//!
//! Oracle: an installed state's digest equals the correct replicas' at its agreement;
//! a correct seeder is never proven faulty; every transfer ends (liveness); and the
//! durability and state oracles of the whole run hold over the restarted replica.

use std::collections::BTreeMap;

use dura_snapshot::sim::SimDir;
use dura_snapshot::{CheckpointStore, StoreOptions};
use dura_transfer::{
    Action as LAction, Event as LEvent, FetchOutcome, Leecher, LeecherConfig, Message as TMessage,
    ReplayOutcome, RoundId, Seeder, SeederAction, SeederConfig, SeederEvent, StageBase,
    StageOutcome, Ticket, Unavailable, Want,
};

use super::{Byzantine, Ev, Workload, World};
use crate::checkpoint::{load_checkpoint, write_checkpoint};
use crate::durability::{DecidedBatch, execute_batch};
use crate::protocol::ReplicaId;
use crate::runtime::filelog::WalPieces;
use crate::runtime::recovery::HashOnlyDir;
use crate::runtime::transfer::{
    LogPieces, NoPieces, decode_piece, encode_piece, hash_pieces_of, holdings_of, piece_hash_of,
    read_piece,
};
use crate::service::{Executor, Service};

/// Simulated time between two leecher ticks (the runtime ticks every 50 ms).
const TICK_US: u64 = 50_000;
/// A payload travels at this many bytes per simulated microsecond (100 MB/s).
const BYTES_PER_US: u64 = 100;
/// Transfers a replica starts in one run at most (each failed one is retried).
const ATTEMPTS_MAX: u32 = 8;

/// How a Byzantine replica misbehaves as a state-transfer seeder (derived from its
/// [`Byzantine`] kind and the seed, so the draws of earlier seeds are unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeederFault {
    /// Answers nothing.
    Mute,
    /// Flips a byte in the middle of every payload, behind correct headers and hashes.
    CorruptBytes,
    /// Sends an older checkpoint's bytes for the one asked.
    StaleCheckpoint,
    /// Drops the last batch of every log piece it sends.
    TruncatedPiece,
    /// Swaps the first two batches of every log piece it sends.
    ReorderedPiece,
    /// Sends wrong piece and checkpoint hashes.
    WrongHashes,
    /// Cuts every stream half-way.
    Disconnect,
}

impl SeederFault {
    /// The seeder fault of a Byzantine replica in the run of `seed`.
    pub fn of(kind: Byzantine, seed: u64) -> SeederFault {
        match kind {
            Byzantine::Mute => SeederFault::Mute,
            Byzantine::Garbage => SeederFault::CorruptBytes,
            Byzantine::WrongVote => SeederFault::WrongHashes,
            Byzantine::Equivocate => [
                SeederFault::StaleCheckpoint,
                SeederFault::TruncatedPiece,
                SeederFault::ReorderedPiece,
                SeederFault::Disconnect,
            ][(seed % 4) as usize],
        }
    }
}

/// What a fetch brought, held until the leecher stages or replays it.
enum Held {
    /// A checkpoint file, verified, in a staging directory of its own.
    Checkpoint(SimDir),
    /// A log piece's batches, decoded.
    Piece(Vec<DecidedBatch>),
}

/// A state staged from a fetched checkpoint (or the genesis) and replayed pieces.
struct Staged<S> {
    executor: Executor<S>,
    agreement_id: u64,
    ordered_requests: u64,
}

/// One replica's state transfer in progress.
pub(super) struct Transfer<S> {
    session: u64,
    leecher: Leecher,
    fetches: BTreeMap<Ticket, (ReplicaId, RoundId, Want)>,
    held: BTreeMap<Ticket, Held>,
    staged: Option<Staged<S>>,
    tick: u64,
    installed: Option<u64>,
}

/// A transfer event in flight.
#[derive(Debug)]
pub(super) enum TransferEv {
    /// The leecher's periodic tick.
    Tick { id: ReplicaId, session: u64 },
    /// A control message or fetch for seeder `to` (dropped if it is down then).
    ToSeeder { to: ReplicaId, from: ReplicaId, msg: TMessage },
    /// A message for the leecher `id`.
    ToLeecher { id: ReplicaId, session: u64, from: ReplicaId, msg: TMessage },
    /// A stream's end at the leecher: its bytes (None: the connection was cut).
    Payload { id: ReplicaId, session: u64, ticket: Ticket, bytes: Option<Vec<u8>> },
    /// A refused fetch, answered on the data path.
    Refused { id: ReplicaId, session: u64, ticket: Ticket, reason: Unavailable },
}

impl<W: Workload> World<'_, W> {
    /// Replica `id` (stopped: its core is gone) starts a state transfer.
    pub(super) fn start_transfer(&mut self, id: ReplicaId) -> Result<(), String> {
        let node = &mut self.replicas[id as usize];
        assert!(node.core.is_none(), "a leecher's protocol core is stopped");
        node.transfer_attempts += 1;
        if node.transfer_attempts > ATTEMPTS_MAX {
            return Err(format!("state transfer: replica {id} failed {ATTEMPTS_MAX} times"));
        }
        let session = self.rng.next_u64() | 1;
        let n = self.config.protocol.n;
        let mut config = LeecherConfig::new(self.config.protocol.mode, n, id, session);
        // The leader of the highest regency a running correct replica installed.
        let regency = self
            .replicas
            .iter()
            .filter(|r| r.byzantine.is_none())
            .filter_map(|r| r.core.as_ref().map(|c| c.regency()))
            .max();
        config.leader = regency.map(|r| self.config.protocol.leader_of(r));
        // Step 1: what its own checkpoints and log reach (0 for a replaced disk; where
        // its core stopped behind every window, that point), so that a target no newer
        // than it is never taken for a transfer to make.
        let own_last = self.own_last(id)?;
        let mut leecher = Leecher::new(config, own_last).map_err(|e| format!("leecher: {e}"))?;
        if self.config.trace {
            eprintln!(
                "{:>9} us r{id} TRANSFER starts (session {session:x}, own state at {own_last})",
                self.now_us
            );
        }
        self.report.transfers_started += 1;
        let mut actions = Vec::new();
        leecher.start(0, &mut actions);
        self.transfers.insert(
            id,
            Transfer {
                session,
                leecher,
                fetches: BTreeMap::new(),
                held: BTreeMap::new(),
                staged: None,
                tick: 0,
                installed: None,
            },
        );
        self.schedule(self.now_us + TICK_US, Ev::Transfer(TransferEv::Tick { id, session }));
        self.leecher_actions(id, actions)
    }

    /// A transfer event arrives.
    pub(super) fn transfer_event(&mut self, event: TransferEv) -> Result<(), String> {
        match event {
            TransferEv::Tick { id, session } => {
                let Some(run) = self.live_transfer(id, session) else { return Ok(()) };
                run.tick += 1;
                let now = run.tick;
                self.schedule(
                    self.now_us + TICK_US,
                    Ev::Transfer(TransferEv::Tick { id, session }),
                );
                self.leecher_handle(id, LEvent::Tick { now })
            }
            TransferEv::ToLeecher { id, session, from, msg } => {
                if self.live_transfer(id, session).is_none() {
                    return Ok(());
                }
                self.leecher_handle(id, LEvent::Message { from, msg })
            }
            TransferEv::Refused { id, session, ticket, reason } => {
                let Some(run) = self.live_transfer(id, session) else { return Ok(()) };
                if run.fetches.remove(&ticket).is_none() {
                    return Ok(());
                }
                let outcome = FetchOutcome::Unavailable(reason);
                self.leecher_handle(id, LEvent::Fetched { ticket, outcome })
            }
            TransferEv::Payload { id, session, ticket, bytes } => {
                let seed = self.rng.next_u64();
                let received = bytes.as_ref().map_or(0, |b| b.len() as u64);
                let Some(run) = self.transfers.get_mut(&id).filter(|r| r.session == session) else {
                    return Ok(());
                };
                let Some((_, _, want)) = run.fetches.remove(&ticket) else { return Ok(()) };
                self.report.transfer_bytes += received;
                let outcome = match bytes {
                    None => FetchOutcome::Disconnected,
                    Some(bytes) => {
                        match receive(want, bytes, seed, <W::Service as Service>::NAME) {
                            Some((hash, held)) => {
                                run.held.insert(ticket, held);
                                FetchOutcome::Received { hash }
                            }
                            None => FetchOutcome::Malformed,
                        }
                    }
                };
                self.leecher_handle(id, LEvent::Fetched { ticket, outcome })
            }
            TransferEv::ToSeeder { to, from, msg } => self.seeder_receive(to, from, msg),
        }
    }

    /// The last agreement replica `id`'s own checkpoints and log reach, as its seeder
    /// reports them.
    fn own_last(&self, id: ReplicaId) -> Result<u64, String> {
        let node = &self.replicas[id as usize];
        let log: Box<dyn LogPieces> = match node.wal.as_ref() {
            Some(wal) => Box::new(WalPieces(wal.reader())),
            None => Box::new(NoPieces),
        };
        let store = CheckpointStore::open(node.checkpoint_dir.clone(), StoreOptions::default())
            .map_err(|e| format!("replica {id}: checkpoint store: {e}"))?;
        Ok(holdings_of(id, &store, log.as_ref()).last_agreement)
    }

    fn live_transfer(&mut self, id: ReplicaId, session: u64) -> Option<&mut Transfer<W::Service>> {
        self.transfers.get_mut(&id).filter(|run| run.session == session)
    }

    fn leecher_handle(&mut self, id: ReplicaId, event: LEvent) -> Result<(), String> {
        let run = self.transfers.get_mut(&id).expect("a live transfer");
        let mut actions = Vec::new();
        run.leecher.handle(event, &mut actions);
        self.leecher_actions(id, actions)
    }

    fn delay_us(&mut self) -> u64 {
        self.rng.range(1, self.config.delay_ms_max.max(1)) * 1000
    }

    fn leecher_actions(&mut self, id: ReplicaId, actions: Vec<LAction>) -> Result<(), String> {
        let mut queue: std::collections::VecDeque<LAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            let Some(run) = self.transfers.get_mut(&id) else { return Ok(()) };
            let mut events = Vec::new();
            match action {
                LAction::Send { to, msg } => {
                    let at = self.now_us + self.delay_us();
                    self.schedule(at, Ev::Transfer(TransferEv::ToSeeder { to, from: id, msg }));
                }
                LAction::Fetch { ticket, from, round, want } => {
                    run.fetches.insert(ticket, (from, round, want));
                    let msg = TMessage::Fetch { round, ticket, want };
                    let at = self.now_us + self.delay_us();
                    self.schedule(
                        at,
                        Ev::Transfer(TransferEv::ToSeeder { to: from, from: id, msg }),
                    );
                }
                LAction::Cancel { ticket } => {
                    run.fetches.remove(&ticket);
                    run.held.remove(&ticket);
                }
                LAction::Target { agreement_id, .. } => {
                    if self.config.trace {
                        eprintln!("{:>9} us r{id} TRANSFER targets {agreement_id}", self.now_us);
                    }
                }
                LAction::Stage { ticket, agreement_id, base } => {
                    run.staged = None;
                    let outcome = match stage::<W>(&run.held, agreement_id, base) {
                        Some(staged) => {
                            let clients_max = self.config.clients_max;
                            let executor = staged.executor.with_clients_max(clients_max);
                            run.staged = Some(Staged { executor, ..staged });
                            StageOutcome::Staged
                        }
                        None => StageOutcome::Rejected,
                    };
                    events.push(LEvent::Staged { ticket, outcome });
                }
                LAction::Replay { ticket, payload, piece, hash_after } => {
                    let staged = run.staged.as_mut().expect("a replay follows a stage");
                    assert_eq!(staged.agreement_id, piece.after, "a piece starts at the state");
                    if let Some(payload) = payload {
                        let Some(Held::Piece(batches)) = run.held.get(&payload) else {
                            panic!("replay of ticket {payload}, which holds no piece");
                        };
                        for batch in batches {
                            assert_eq!(batch.agreement_id, staged.agreement_id + 1);
                            let _ = execute_batch(&mut staged.executor, batch);
                            staged.ordered_requests += batch.batch.requests.len() as u64;
                            staged.agreement_id = batch.agreement_id;
                        }
                    }
                    assert_eq!(staged.agreement_id, piece.up_to, "a piece ends at its end");
                    let state_hash = (hash_after && staged.agreement_id > 0)
                        .then(|| state_hash(staged))
                        .transpose()?;
                    let outcome = ReplayOutcome::Replayed { state_hash };
                    events.push(LEvent::Replayed { ticket, outcome });
                }
                LAction::Install { agreement_id } => {
                    let staged = run.staged.as_ref().expect("install follows a stage");
                    assert_eq!(staged.agreement_id, agreement_id, "what validated is installed");
                    // The oracle: only the correct replicas' state at that agreement.
                    let digest = super::executor_digest(&staged.executor);
                    match self.digests.get(&agreement_id) {
                        Some(known) if *known != digest => {
                            return Err(format!(
                                "state transfer: replica {id} installed a state at agreement \
                                 {agreement_id} whose digest is not the correct replicas'"
                            ));
                        }
                        Some(_) => {}
                        // Executed only in replays after restarts (not recorded): the
                        // replica's next executions are checked against the others'.
                        None => self.report.transfer_unchecked += 1,
                    }
                    if agreement_id > 0 {
                        let node = &self.replicas[id as usize];
                        let store = CheckpointStore::open(
                            node.checkpoint_dir.clone(),
                            StoreOptions::default(),
                        )
                        .map_err(|e| format!("replica {id}: checkpoint store: {e}"))?;
                        write_checkpoint(
                            &store,
                            <W::Service as Service>::NAME,
                            agreement_id,
                            staged.ordered_requests,
                            &staged.executor.view(),
                        )
                        .map_err(|e| format!("replica {id}: install: {e}"))?;
                    }
                    run.installed = Some(agreement_id);
                    if self.config.trace {
                        eprintln!("{:>9} us r{id} TRANSFER installs {agreement_id}", self.now_us);
                    }
                }
                LAction::SeederFailed { replica, fault } => {
                    let correct = self.replicas[replica as usize].byzantine.is_none();
                    if fault.is_proof() {
                        if correct {
                            return Err(format!(
                                "state transfer: replica {id} proved correct replica {replica} \
                                 faulty ({fault:?})"
                            ));
                        }
                        self.report.transfer_faulty_proven += 1;
                    }
                    if self.config.trace {
                        eprintln!(
                            "{:>9} us r{id} TRANSFER seeder {replica}: {fault:?}",
                            self.now_us
                        );
                    }
                }
                LAction::Restart { reason, .. } => {
                    run.staged = None;
                    run.held.clear();
                    run.fetches.clear();
                    if self.config.trace {
                        eprintln!(
                            "{:>9} us r{id} TRANSFER round restarts: {reason:?}",
                            self.now_us
                        );
                    }
                }
                LAction::Done { agreement_id, transferred } => {
                    self.transfers.remove(&id);
                    self.report.transfers_done += 1;
                    if self.config.trace {
                        eprintln!(
                            "{:>9} us r{id} TRANSFER done at {agreement_id} (installed: {transferred})",
                            self.now_us
                        );
                    }
                    let node = &mut self.replicas[id as usize];
                    node.transfer_attempts = 0;
                    if transferred && node.orphaned.is_some_and(|a| agreement_id >= a) {
                        // Its state is its peers' now, past what it had to give up.
                        node.orphaned = None;
                    }
                    return self.resume_after_transfer(id);
                }
                LAction::Failed { reason, faulty } => {
                    self.transfers.remove(&id);
                    self.report.transfers_failed += 1;
                    if self.config.trace {
                        eprintln!(
                            "{:>9} us r{id} TRANSFER failed: {reason:?}, faulty {faulty:?}",
                            self.now_us
                        );
                    }
                    // The runtime's replica stops with the error and its operator (or
                    // supervisor) starts it again: a new transfer, a while later.
                    return self.start_transfer(id);
                }
            }
            if !events.is_empty() {
                let run = self.transfers.get_mut(&id).expect("still running");
                let mut more = Vec::new();
                for event in events {
                    run.leecher.handle(event, &mut more);
                }
                queue.extend(more);
            }
        }
        Ok(())
    }

    /// Seeder `to` receives `msg` from leecher `from`, if it runs.
    fn seeder_receive(
        &mut self,
        to: ReplicaId,
        from: ReplicaId,
        msg: TMessage,
    ) -> Result<(), String> {
        let node = &self.replicas[to as usize];
        // A replica that runs, or transfers itself (its data server answers from what
        // it holds, as the runtime's does); a crashed one does not.
        if node.core.is_none() && !self.transfers.contains_key(&to) {
            return Ok(());
        }
        let fault = node.byzantine.map(|kind| SeederFault::of(kind, self.config.seed));
        if fault == Some(SeederFault::Mute) {
            return Ok(());
        }
        let log: Box<dyn LogPieces> = match node.wal.as_ref() {
            Some(wal) => Box::new(WalPieces(wal.reader())),
            None => Box::new(NoPieces),
        };
        let log = log.as_ref();
        let store = CheckpointStore::open(node.checkpoint_dir.clone(), StoreOptions::default())
            .map_err(|e| format!("replica {to}: checkpoint store: {e}"))?;
        let holdings = holdings_of(to, &store, log);
        let n = self.config.protocol.n;
        let seeder = match self.seeders.get_mut(&to) {
            Some(seeder) => seeder,
            None => {
                let seeder = Seeder::new(SeederConfig::new(n, to), holdings.clone())
                    .map_err(|e| format!("seeder {to}: {e}"))?;
                self.seeders.entry(to).or_insert(seeder)
            }
        };
        let mut actions = Vec::new();
        seeder.handle(SeederEvent::Holdings(holdings), &mut actions);
        seeder.handle(SeederEvent::Message { from, msg }, &mut actions);
        let mut queue: std::collections::VecDeque<SeederAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            let mut events = Vec::new();
            match action {
                SeederAction::Send { to: leecher, msg } => {
                    self.seeder_send(to, leecher, msg, fault)
                }
                SeederAction::HashPieces { job, pieces } => {
                    let result = hash_pieces_of(to, log, &pieces);
                    events.push(SeederEvent::PiecesHashed { job, result });
                }
                SeederAction::Serve { job, to: leecher, round: _, ticket, want } => {
                    let bytes = serve(&store, log, want, fault);
                    if let Some(session) = self.transfers.get(&leecher).map(|run| run.session) {
                        let (took, event) = match bytes {
                            Ok(bytes) => {
                                let took = self.delay_us() + bytes.len() as u64 / BYTES_PER_US;
                                let bytes =
                                    (fault != Some(SeederFault::Disconnect)).then_some(bytes);
                                (took, TransferEv::Payload { id: leecher, session, ticket, bytes })
                            }
                            Err(reason) => (
                                self.delay_us(),
                                TransferEv::Refused { id: leecher, session, ticket, reason },
                            ),
                        };
                        self.schedule(self.now_us + took, Ev::Transfer(event));
                    }
                    // The stream ends here either way, a leecher gone meanwhile (a crash)
                    // included. Skipping that once left the serve under way for good, and
                    // the leecher's next process, whose tickets count from 1 again, was
                    // ignored as its duplicate (seed 57841, crash 3).
                    events.push(SeederEvent::ServeEnded { job });
                }
            }
            let seeder = self.seeders.get_mut(&to).expect("present");
            let mut more = Vec::new();
            for event in events {
                seeder.handle(event, &mut more);
            }
            queue.extend(more);
        }
        Ok(())
    }

    /// A seeder's control message to a leecher (a refused fetch goes back on the data
    /// path), bent by a Byzantine seeder.
    fn seeder_send(
        &mut self,
        from: ReplicaId,
        to: ReplicaId,
        msg: TMessage,
        fault: Option<SeederFault>,
    ) {
        let Some(session) = self.transfers.get(&to).map(|run| run.session) else { return };
        let msg = match (fault, msg) {
            (
                Some(SeederFault::WrongHashes),
                TMessage::Hashes { round, checkpoint, checkpoint_hash, mut pieces },
            ) => {
                for (_, hash) in &mut pieces {
                    hash[0] ^= 0xFF;
                }
                let checkpoint_hash = checkpoint_hash.map(|mut h| {
                    h[1] ^= 0x5A;
                    h
                });
                TMessage::Hashes { round, checkpoint, checkpoint_hash, pieces }
            }
            (_, msg) => msg,
        };
        let at = self.now_us + self.delay_us();
        if let TMessage::Unavailable {
            asked: dura_transfer::Asked::Fetch { ticket, .. },
            reason,
            ..
        } = msg
        {
            self.schedule(
                at,
                Ev::Transfer(TransferEv::Refused { id: to, session, ticket, reason }),
            );
            return;
        }
        self.schedule(at, Ev::Transfer(TransferEv::ToLeecher { id: to, session, from, msg }));
    }

    /// Replica `id` (or its disk) crashed or restarted: its transfer, as leecher or
    /// seeder, ends with that process.
    pub(super) fn end_transfers_of(&mut self, id: ReplicaId) {
        self.transfers.remove(&id);
        self.seeders.remove(&id);
    }
}

/// The bytes a seeder streams for `want`: a checkpoint file whole, or a log piece
/// encoded as the data path sends it; bent by a Byzantine seeder.
fn serve(
    store: &CheckpointStore<SimDir>,
    log: &dyn LogPieces,
    want: Want,
    fault: Option<SeederFault>,
) -> Result<Vec<u8>, Unavailable> {
    let mut bytes = match want {
        Want::Checkpoint { agreement_id } => {
            let asked = match fault {
                Some(SeederFault::StaleCheckpoint) => store
                    .list()
                    .ok()
                    .and_then(|entries| {
                        entries.iter().map(|e| e.agreement_id).filter(|&a| a < agreement_id).max()
                    })
                    .unwrap_or(agreement_id),
                _ => agreement_id,
            };
            let name = dura_snapshot::format::file_name(asked);
            if !store.dir().names().contains(&name) {
                return Err(Unavailable::Truncated); // removed by retention meanwhile
            }
            store.dir().file_bytes(&name)
        }
        Want::Log(piece) => {
            let mut batches = match read_piece(log, piece) {
                Ok(Ok(batches)) => batches,
                Ok(Err(reason)) => return Err(reason),
                Err(_) => return Err(Unavailable::Truncated),
            };
            match fault {
                Some(SeederFault::TruncatedPiece) => {
                    batches.pop();
                }
                Some(SeederFault::ReorderedPiece) if batches.len() >= 2 => {
                    let (first, second) = (batches[0].batch.clone(), batches[1].batch.clone());
                    batches[0].batch = second;
                    batches[1].batch = first;
                }
                _ => {}
            }
            if batches.is_empty() { Vec::new() } else { encode_piece(&batches) }
        }
    };
    if fault == Some(SeederFault::CorruptBytes) && !bytes.is_empty() {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
    }
    Ok(bytes)
}

/// The leecher's checks on what arrived, as the runtime's fetch does: a checkpoint is
/// verified whole (header, chunks, content hash) in a staging directory before anything
/// decodes it; a piece is decoded and hashed. `None`: malformed.
fn receive(want: Want, bytes: Vec<u8>, seed: u64, name: &str) -> Option<(dura_core::Hash, Held)> {
    match want {
        Want::Checkpoint { agreement_id } => {
            use dura_snapshot::{Dir as _, DirWriter as _};
            let dir = SimDir::new(seed);
            let mut file = dir.create(&dura_snapshot::format::file_name(agreement_id)).ok()?;
            file.write_all(&bytes).ok()?;
            file.sync().ok()?;
            let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).ok()?;
            let verified = store.verify(agreement_id, name).ok()?;
            if verified.header.agreement_id != agreement_id {
                return None;
            }
            Some((verified.header.content_sha256, Held::Checkpoint(dir)))
        }
        Want::Log(piece) => {
            let batches = decode_piece(piece, &bytes).ok()?;
            let hash = piece_hash_of(piece, &batches).ok()?;
            Some((hash, Held::Piece(batches)))
        }
    }
}

/// A staging state from `base`: the genesis, or a held checkpoint whose content hash is
/// the one the leecher named (checked again before decoding).
fn stage<W: Workload>(
    held: &BTreeMap<Ticket, Held>,
    agreement_id: u64,
    base: StageBase,
) -> Option<Staged<W::Service>> {
    match base {
        StageBase::Genesis => {
            assert_eq!(agreement_id, 0, "the genesis is before agreement 1");
            Some(Staged {
                executor: Executor::new(W::service()),
                agreement_id: 0,
                ordered_requests: 0,
            })
        }
        StageBase::Fetched { payload, content_hash } => {
            let Some(Held::Checkpoint(dir)) = held.get(&payload) else {
                panic!("stage from ticket {payload}, which holds no checkpoint");
            };
            let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).ok()?;
            if store.read_header(agreement_id).ok()?.content_sha256 != content_hash {
                return None;
            }
            let loaded = load_checkpoint(&store, &W::service()).ok()??;
            (loaded.from.agreement_id == agreement_id).then(|| Staged {
                executor: loaded.executor,
                agreement_id,
                ordered_requests: loaded.from.ordered_requests,
            })
        }
    }
}

/// The staged state's checkpoint content hash, computed by the checkpoint writer over a
/// directory that keeps no bytes, as the runtime's leecher does.
fn state_hash<S: Service>(staged: &Staged<S>) -> Result<dura_core::Hash, String> {
    let store = CheckpointStore::open(HashOnlyDir::default(), StoreOptions::default())
        .map_err(|e| format!("hash store: {e}"))?;
    let written = write_checkpoint(
        &store,
        S::NAME,
        staged.agreement_id,
        staged.ordered_requests,
        &staged.executor.view(),
    )
    .map_err(|e| format!("state hash: {e}"))?;
    Ok(written.content_sha256)
}
