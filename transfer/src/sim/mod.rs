//! A deterministic mini-simulation: one [`Leecher`] against n-1 [`Seeder`]s, each
//! seeder's state modelled abstractly, with seeded message loss, duplication and delay
//! and up to f Byzantine (or, in crash mode, crashed) seeders drawn by seed.
//!
//! The model:
//! - The cluster's history is a sequence of agreements; agreement k's batch is a hash
//!   and holds 1-3 requests. The state after k is the digest
//!   D(k) = SHA-256(D(k-1) || batch_k); a checkpoint at k is the bytes (k, D(k)) and its
//!   content hash is SHA-256("sim-ckpt" || k || D(k)).
//! - Replica i checkpoints after the agreement holding request m with
//!   m mod P = i * floor(P/n) (sequential) or m mod P = 0 (coordinated), retains its two
//!   newest checkpoints and the log since the older one. The cluster's head advances
//!   by chance each tick; seeder i is `lag_i` agreements behind it.
//! - The data path is reliable but can be cut (a Byzantine seeder disconnects); a stream
//!   takes some ticks and reports progress each tick. The leecher's "engine" here hashes
//!   what arrives (with [`crate::piece_hash`] for pieces), stages (k, D) and replays by
//!   folding batch hashes into the digest.
//!
//! The oracle ([`check`]): the leecher installs only the state whose digest is the
//! correct replicas' at the installed agreement, finishes (with at most f faulty), and
//! never proves a correct replica faulty. A failing seed prints itself; one seed replays
//! with `DURA_TRANSFER_SEED=<seed>`; `DURA_TRANSFER_SEEDS=<count>` and
//! `DURA_TRANSFER_FIRST=<seed>` change how many seeds each family runs and from where.

use std::collections::{BTreeMap, BTreeSet};

use dura_core::rng::{GOLDEN_GAMMA, Rng, mix64};
use dura_core::{AgreementId, Hash, Mode, ReplicaId};

use crate::leecher::{
    Action, Event, Fault, FetchOutcome, Leecher, LeecherConfig, Outcome, ReplayOutcome,
    RestartReason, StageBase, StageOutcome, Ticket, Variant,
};
use crate::message::{Asked, CheckpointClaim, Message, Piece, RoundId, Unavailable, Want};
use crate::piece::piece_hash;
use crate::seeder::{Holdings, JobId, Seeder, SeederAction, SeederConfig, SeederEvent};

/// The model's hash: four SplitMix64-mixed lanes over the input's words. Not
/// cryptographic; the model needs distinct values only, and SHA-256 in an unoptimised
/// test build would dominate the run time. (The crate's [`piece_hash`] stays SHA-256.)
fn sha(parts: &[&[u8]]) -> Hash {
    let mut lanes = [
        0x6A09_E667_F3BC_C908u64,
        0xBB67_AE85_84CA_A73B,
        0x3C6E_F372_FE94_F82B,
        0xA54F_F53A_5F1D_36F1,
    ];
    let mut word_index = 0u64;
    for part in parts {
        // Each part's length is mixed in, so ("ab", "c") and ("a", "bc") differ.
        for chunk in part.chunks(8).chain(std::iter::once(&(part.len() as u64).to_le_bytes()[..])) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let word = u64::from_le_bytes(word);
            for (lane, value) in lanes.iter_mut().enumerate() {
                *value =
                    mix64(*value ^ word ^ (word_index.wrapping_mul(GOLDEN_GAMMA) + lane as u64));
            }
            word_index += 1;
        }
    }
    let mut hash = [0u8; 32];
    for (lane, value) in lanes.iter().enumerate() {
        hash[lane * 8..lane * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }
    hash
}

fn checkpoint_hash(agreement_id: AgreementId, digest: &Hash) -> Hash {
    sha(&[b"sim-ckpt", &agreement_id.to_le_bytes(), digest])
}

fn corrupt(digest: &Hash) -> Hash {
    sha(&[b"corrupt", digest])
}

fn fold(digest: &Hash, batch: &Hash) -> Hash {
    sha(&[digest, batch])
}

/// What every correct replica agrees on.
#[derive(Debug)]
pub(crate) struct History {
    /// Batch hash of agreement k (index 0 unused).
    batch: Vec<Hash>,
    /// Requests ordered up to agreement k.
    requests: Vec<u64>,
    /// The state digest after agreement k (index 0: the genesis).
    digest: Vec<Hash>,
}

impl History {
    fn new(rng: &mut Rng, len: usize) -> Self {
        let mut batch = vec![[0; 32]];
        let mut requests = vec![0];
        let mut digest = vec![[0; 32]];
        for k in 1..=len as u64 {
            let hash = sha(&[b"batch", &k.to_le_bytes(), &rng.next_u64().to_le_bytes()]);
            requests.push(requests[k as usize - 1] + rng.range(1, 3));
            digest.push(fold(&digest[k as usize - 1], &hash));
            batch.push(hash);
        }
        Self { batch, requests, digest }
    }

    fn len(&self) -> AgreementId {
        self.batch.len() as AgreementId - 1
    }
}

/// When replicas checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// Replica i at m mod P = i * floor(P/n).
    Sequential,
    /// All at m mod P = 0.
    Coordinated,
}

/// The agreements after which `replica` checkpoints.
fn points(
    history: &History,
    n: usize,
    period: u64,
    schedule: Schedule,
    replica: ReplicaId,
) -> Vec<AgreementId> {
    let segment = period / n as u64;
    let offset = match schedule {
        Schedule::Sequential => replica as u64 * segment,
        Schedule::Coordinated => 0,
    };
    (1..=history.len())
        .filter(|&k| {
            let (after, up_to) = (history.requests[k as usize - 1], history.requests[k as usize]);
            // The first request after `after` with residue `offset` (as the engine's
            // CheckpointSchedule computes it).
            let next = after + 1 + (offset + period - (after + 1) % period) % period;
            next <= up_to
        })
        .collect()
}

/// A Byzantine (or crashed) seeder's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Byz {
    /// Serves checkpoint bytes that do not hash to the (true) hash it claims.
    WrongCheckpointBytes,
    /// Claims, answers and serves a wrong checkpoint consistently.
    LyingCheckpoint,
    /// Serves its older checkpoint's state under the asked agreement.
    StaleCheckpoint,
    /// Serves log pieces without their last batch.
    TruncatedLog,
    /// Serves log pieces with two batches' contents swapped (ids in order), and hashes
    /// them that way.
    ReorderedLog,
    /// Serves and hashes log pieces with a wrong last batch.
    BadLogContent,
    /// Answers hash requests with wrong piece hashes.
    WrongHashes,
    /// Answers hash requests with a checkpoint hash other than its status's.
    Equivocate,
    /// Answers queries, then nothing.
    MuteAfterStatus,
    /// Answers nothing (crashed).
    MuteAll,
    /// Breaks every stream halfway.
    Disconnect,
    /// Refuses everything as truncated.
    FalseTruncated,
    /// Claims a checkpoint fresher than anyone's, with made-up state, and a huge id.
    FakeFreshCheckpoint,
}

impl Byz {
    pub(crate) const ALL: [Byz; 13] = [
        Byz::WrongCheckpointBytes,
        Byz::LyingCheckpoint,
        Byz::StaleCheckpoint,
        Byz::TruncatedLog,
        Byz::ReorderedLog,
        Byz::BadLogContent,
        Byz::WrongHashes,
        Byz::Equivocate,
        Byz::MuteAfterStatus,
        Byz::MuteAll,
        Byz::Disconnect,
        Byz::FalseTruncated,
        Byz::FakeFreshCheckpoint,
    ];
    /// What a crash-mode replica can do: stop.
    pub(crate) const CRASH: [Byz; 3] = [Byz::MuteAll, Byz::MuteAfterStatus, Byz::Disconnect];
}

/// The families of seeds the tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// BFT n = 4, CST with the f = 1 optimisation.
    CstF1N4,
    /// BFT n = 4, the general CST.
    CstGeneralN4,
    /// BFT n = 7 (f = 2), CST.
    CstN7,
    /// Crash n = 3 (f = 1), CST's crash simplification with the split.
    CrashN3,
    /// Crash n = 5 (f = 2).
    CrashN5,
    /// BFT n = 4, PBFT-like with coordinated checkpoints.
    PbftN4,
    /// BFT n = 7, PBFT-like.
    PbftN7,
}

/// One run: a pure function of this.
#[derive(Debug, Clone)]
pub(crate) struct SimConfig {
    pub(crate) seed: u64,
    pub(crate) mode: Mode,
    pub(crate) n: usize,
    pub(crate) variant: Variant,
    pub(crate) f1_optimisation: bool,
    pub(crate) period: u64,
    pub(crate) schedule: Schedule,
    pub(crate) leecher: ReplicaId,
    pub(crate) leader: Option<ReplicaId>,
    pub(crate) faulty: Vec<(ReplicaId, Byz)>,
    pub(crate) loss_per_mille: u64,
    pub(crate) dup_per_mille: u64,
    pub(crate) delay_max: u64,
    /// Chance per tick that the cluster decides one more agreement.
    pub(crate) advance_per_mille: u64,
    pub(crate) lags: Vec<u64>,
    pub(crate) head_start: AgreementId,
    pub(crate) own_last: AgreementId,
    /// Data-path requests of the first round wait this long (a slow leecher whose
    /// seeders truncate meanwhile).
    pub(crate) first_round_stall: u64,
    pub(crate) ticks_max: u64,
}

impl SimConfig {
    /// A quiet run: static cluster, no loss, nobody faulty, sequential checkpoints.
    pub(crate) fn quiet(mode: Mode, n: usize, variant: Variant, seed: u64) -> Self {
        Self {
            seed,
            mode,
            n,
            variant,
            f1_optimisation: true,
            period: 8 * n as u64,
            schedule: match variant {
                Variant::Cst => Schedule::Sequential,
                Variant::PbftLike => Schedule::Coordinated,
            },
            leecher: 0,
            leader: None,
            faulty: Vec::new(),
            loss_per_mille: 0,
            dup_per_mille: 0,
            delay_max: 1,
            advance_per_mille: 0,
            lags: vec![0; n],
            head_start: 60,
            own_last: 3,
            first_round_stall: 0,
            ticks_max: 5_000,
        }
    }

    /// A run of `family` whose every choice is drawn from `seed`.
    pub(crate) fn random(family: Family, seed: u64) -> Self {
        let (mode, n, variant, f1) = match family {
            Family::CstF1N4 => (Mode::Bft, 4, Variant::Cst, true),
            Family::CstGeneralN4 => (Mode::Bft, 4, Variant::Cst, false),
            Family::CstN7 => (Mode::Bft, 7, Variant::Cst, true),
            Family::CrashN3 => (Mode::Crash, 3, Variant::Cst, true),
            Family::CrashN5 => (Mode::Crash, 5, Variant::Cst, true),
            Family::PbftN4 => (Mode::Bft, 4, Variant::PbftLike, true),
            Family::PbftN7 => (Mode::Bft, 7, Variant::PbftLike, true),
        };
        let mut rng = Rng::new(seed ^ 0x7E57_CA5E);
        let mut config = Self::quiet(mode, n, variant, seed);
        config.f1_optimisation = f1;
        let f = mode.f_max(n);
        config.period = n as u64 * rng.range(3, 12);
        config.leecher = rng.below(n as u64) as ReplicaId;
        let others: Vec<ReplicaId> = (0..n as ReplicaId).filter(|&r| r != config.leecher).collect();
        config.leader = if rng.chance(750) {
            Some(others[rng.below(others.len() as u64) as usize])
        } else {
            None
        };
        let kinds: &[Byz] = match mode {
            Mode::Bft => &Byz::ALL,
            Mode::Crash => &Byz::CRASH,
        };
        let faulty_count = rng.range(0, f as u64) as usize;
        let mut pool = others.clone();
        for _ in 0..faulty_count {
            let replica = pool.remove(rng.below(pool.len() as u64) as usize);
            config.faulty.push((replica, kinds[rng.below(kinds.len() as u64) as usize]));
        }
        if rng.chance(700) {
            config.loss_per_mille = rng.range(0, 100);
            config.dup_per_mille = rng.range(0, 50);
            config.delay_max = rng.range(1, 4);
        }
        if rng.chance(500) {
            config.advance_per_mille = rng.range(0, 300);
        }
        config.lags = (0..n).map(|_| if rng.chance(300) { rng.range(0, 3) } else { 0 }).collect();
        config.head_start = rng.range(config.period, 6 * config.period);
        config.own_last = rng.range(0, config.head_start / 4);
        if rng.chance(100) {
            config.first_round_stall = rng.range(20, 80);
        }
        config
    }

    pub(crate) fn f(&self) -> usize {
        self.mode.f_max(self.n)
    }

    fn byz(&self, replica: ReplicaId) -> Option<Byz> {
        self.faulty.iter().find(|(r, _)| *r == replica).map(|(_, kind)| *kind)
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) outcome: Option<Outcome>,
    pub(crate) installed: Option<(AgreementId, Hash)>,
    pub(crate) targets: Vec<AgreementId>,
    pub(crate) restarts: Vec<RestartReason>,
    pub(crate) failed: Vec<(ReplicaId, Fault)>,
    pub(crate) fetches: Vec<(ReplicaId, Want)>,
    pub(crate) hash_requests: Vec<ReplicaId>,
    pub(crate) ticks: u64,
    pub(crate) head: AgreementId,
}

#[derive(Debug, Clone)]
enum Payload {
    Checkpoint { agreement_id: AgreementId, digest: Hash },
    Log { piece: Piece, batches: Vec<(AgreementId, Hash)> },
}

#[derive(Debug)]
struct Stream {
    ticket: Ticket,
    want: Want,
    payload: Payload,
    steps: u64,
    sent: u64,
    disconnect_at: Option<u64>,
}

#[derive(Debug)]
enum Delivery {
    Leecher(Event),
    Seeder { to: ReplicaId, event: SeederEvent },
    Stream { seeder: ReplicaId, job: JobId },
}

#[derive(Debug)]
struct SimSeeder {
    seeder: Seeder,
    byz: Option<Byz>,
    points: Vec<AgreementId>,
    last: AgreementId,
}

/// One simulated run.
pub(crate) struct Sim {
    config: SimConfig,
    rng: Rng,
    history: History,
    now: u64,
    head: AgreementId,
    seq: u64,
    queue: BTreeMap<(u64, u64), Delivery>,
    leecher: Leecher,
    seeders: BTreeMap<ReplicaId, SimSeeder>,
    /// The leecher engine's fetches: ticket -> (seeder, round, want).
    fetches: BTreeMap<Ticket, (ReplicaId, RoundId, Want)>,
    payloads: BTreeMap<Ticket, Payload>,
    streams: BTreeMap<(ReplicaId, JobId), Stream>,
    staging: Option<(AgreementId, Hash)>,
    /// How far behind the head each seeder is now.
    lags: Vec<u64>,
    report: Report,
}

impl Sim {
    pub(crate) fn new(config: SimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        // Room for the head to move at its rate for the whole run, and some.
        let reach = config.ticks_max * config.advance_per_mille / 1000;
        let history = History::new(&mut rng, (config.head_start + reach.min(200) + 20) as usize);
        let mut leecher_config =
            LeecherConfig::new(config.mode, config.n, config.leecher, config.seed);
        leecher_config.leader = config.leader;
        leecher_config.variant = config.variant;
        leecher_config.f1_optimisation = config.f1_optimisation;
        leecher_config.rounds_max = 24;
        let leecher = Leecher::new(leecher_config, config.own_last).expect("valid config");
        let mut sim = Self {
            rng,
            now: 0,
            head: config.head_start,
            seq: 0,
            queue: BTreeMap::new(),
            leecher,
            seeders: BTreeMap::new(),
            fetches: BTreeMap::new(),
            payloads: BTreeMap::new(),
            streams: BTreeMap::new(),
            staging: None,
            lags: config.lags.clone(),
            report: Report::default(),
            history,
            config,
        };
        for replica in 0..sim.config.n as ReplicaId {
            if replica == sim.config.leecher {
                continue;
            }
            let points =
                points(&sim.history, sim.config.n, sim.config.period, sim.config.schedule, replica);
            let mut seeder = SimSeeder {
                seeder: Seeder::new(SeederConfig::new(sim.config.n, replica), Holdings::empty())
                    .expect("valid"),
                byz: sim.config.byz(replica),
                points,
                last: 0,
            };
            seeder.last = sim.head.saturating_sub(sim.config.lags[replica as usize]);
            let holdings = sim.holdings(&seeder);
            seeder.seeder.handle(SeederEvent::Holdings(holdings), &mut Vec::new());
            sim.seeders.insert(replica, seeder);
        }
        sim
    }

    /// The freshness order (replica ids) the leecher will see in a quiet run whose
    /// target is the head.
    pub(crate) fn positions(&self) -> Vec<ReplicaId> {
        let statuses = self
            .seeders
            .iter()
            .map(|(&r, s)| {
                let h = self.holdings(s);
                (
                    r,
                    crate::message::Status {
                        last_agreement: h.last_agreement,
                        log_first: h.log_first,
                        checkpoints: h.checkpoints,
                    },
                )
            })
            .collect();
        crate::freshness::freshness_order(&statuses, self.head)
            .into_iter()
            .map(|p| p.replica)
            .collect()
    }

    fn holdings(&self, seeder: &SimSeeder) -> Holdings {
        self.holdings_at(seeder.byz, &seeder.points, seeder.last)
    }

    /// What a seeder with these points holds at `last`: its two newest checkpoints and
    /// the log since the older one.
    fn holdings_at(&self, byz: Option<Byz>, points: &[AgreementId], last: AgreementId) -> Holdings {
        let held: Vec<AgreementId> = {
            let mut held: Vec<AgreementId> =
                points.iter().copied().filter(|&p| p <= last).rev().take(2).collect();
            held.reverse();
            held
        };
        let log_first = if held.len() == 2 { held[0] + 1 } else { 1 };
        let mut checkpoints: Vec<CheckpointClaim> = held
            .iter()
            .map(|&k| {
                let digest = match byz {
                    Some(Byz::LyingCheckpoint) => corrupt(&self.history.digest[k as usize]),
                    _ => self.history.digest[k as usize],
                };
                CheckpointClaim { agreement_id: k, content_hash: checkpoint_hash(k, &digest) }
            })
            .collect();
        if byz == Some(Byz::FakeFreshCheckpoint) {
            let fake = last.saturating_sub(1);
            if fake > 0 && held.last().is_none_or(|&newest| fake > newest) {
                checkpoints.push(CheckpointClaim {
                    agreement_id: fake,
                    content_hash: checkpoint_hash(fake, &fake_digest(fake)),
                });
            }
        }
        Holdings { last_agreement: last, log_first, checkpoints }
    }

    fn schedule(&mut self, delay: u64, delivery: Delivery) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), delivery);
    }

    /// A control message over the lossy network (encoded and decoded on the way).
    fn send_control(&mut self, from: ReplicaId, to: ReplicaId, msg: &Message) {
        let bytes = msg.to_bytes();
        let msg = Message::from_bytes(&bytes).expect("what is encoded decodes");
        let copies = if self.rng.chance(self.config.loss_per_mille) {
            0
        } else if self.rng.chance(self.config.dup_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.range(1, self.config.delay_max);
            let delivery = if to == self.config.leecher {
                Delivery::Leecher(Event::Message { from, msg: msg.clone() })
            } else {
                Delivery::Seeder { to, event: SeederEvent::Message { from, msg: msg.clone() } }
            };
            self.schedule(delay, delivery);
        }
    }

    pub(crate) fn run(mut self) -> (Report, SimConfig, History) {
        let mut out = Vec::new();
        self.leecher.start(0, &mut out);
        self.leecher_actions(out);
        while self.leecher.outcome().is_none() && self.now < self.config.ticks_max {
            self.now += 1;
            self.advance_cluster();
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let delivery = entry.remove();
                self.deliver(delivery);
                if self.leecher.outcome().is_some() {
                    break;
                }
            }
            if self.leecher.outcome().is_none() {
                let mut out = Vec::new();
                self.leecher.handle(Event::Tick { now: self.now }, &mut out);
                self.leecher_actions(out);
            }
        }
        self.report.outcome = self.leecher.outcome();
        self.report.ticks = self.now;
        self.report.head = self.head;
        (self.report, self.config, self.history)
    }

    /// The head moves on by chance, and a late seeder catches up by chance (a replica a
    /// bit late gets the messages it needs, as in the paper's step 3 argument).
    fn advance_cluster(&mut self) {
        if self.rng.chance(self.config.advance_per_mille) && self.head < self.history.len() {
            self.head += 1;
        }
        for lag in &mut self.lags {
            if *lag > 0 && self.rng.chance(50) {
                *lag -= 1;
            }
        }
        let ids: Vec<ReplicaId> = self.seeders.keys().copied().collect();
        for id in ids {
            let last = self.head.saturating_sub(self.lags[id as usize]);
            let seeder = &self.seeders[&id];
            if seeder.last != last {
                let holdings = self.holdings_at(seeder.byz, &seeder.points, last);
                let seeder = self.seeders.get_mut(&id).expect("present");
                seeder.last = last;
                seeder.seeder.handle(SeederEvent::Holdings(holdings), &mut Vec::new());
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Leecher(event) => {
                let mut out = Vec::new();
                self.leecher.handle(event, &mut out);
                self.leecher_actions(out);
            }
            Delivery::Seeder { to, event } => self.seeder_event(to, event),
            Delivery::Stream { seeder, job } => self.stream_step(seeder, job),
        }
    }

    // ----- the leecher's engine -----

    fn leecher_actions(&mut self, actions: Vec<Action>) {
        let me = self.config.leecher;
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    if let Message::HashRequest { .. } = msg {
                        self.report.hash_requests.push(to);
                    }
                    self.send_control(me, to, &msg);
                }
                Action::Fetch { ticket, from, round, want } => {
                    self.report.fetches.push((from, want));
                    self.fetches.insert(ticket, (from, round, want));
                    let stall = if round.round == 1 { self.config.first_round_stall } else { 0 };
                    let delay = stall + self.rng.range(1, self.config.delay_max);
                    let msg = Message::Fetch { round, ticket, want };
                    self.schedule(
                        delay,
                        Delivery::Seeder {
                            to: from,
                            event: SeederEvent::Message { from: me, msg },
                        },
                    );
                }
                Action::Cancel { ticket } => {
                    self.fetches.remove(&ticket);
                    self.payloads.remove(&ticket);
                }
                Action::Target { agreement_id, .. } => self.report.targets.push(agreement_id),
                Action::Stage { ticket, agreement_id, base } => {
                    let staged = match base {
                        StageBase::Genesis => {
                            assert_eq!(agreement_id, 0, "the genesis is at agreement 0");
                            (0, [0; 32])
                        }
                        StageBase::Fetched { payload, content_hash } => {
                            let Some(Payload::Checkpoint { agreement_id: at, digest }) =
                                self.payloads.get(&payload)
                            else {
                                panic!("staged from a payload that is not a fetched checkpoint")
                            };
                            // The engine's own check before decoding.
                            assert_eq!(checkpoint_hash(*at, digest), content_hash);
                            assert_eq!(*at, agreement_id);
                            (*at, *digest)
                        }
                    };
                    self.staging = Some(staged);
                    let delay = self.rng.range(0, 1);
                    let outcome = StageOutcome::Staged;
                    self.schedule(delay, Delivery::Leecher(Event::Staged { ticket, outcome }));
                }
                Action::Replay { ticket, payload, piece, hash_after } => {
                    let batches = match payload {
                        None => {
                            assert!(piece.is_empty(), "only an empty piece has no payload");
                            Vec::new()
                        }
                        Some(payload) => {
                            let Some(Payload::Log { piece: held, batches }) =
                                self.payloads.get(&payload)
                            else {
                                panic!("replayed a payload that is not a fetched piece")
                            };
                            assert_eq!(*held, piece);
                            batches.clone()
                        }
                    };
                    let (at, mut digest) = self.staging.expect("replay after a stage");
                    assert_eq!(at, piece.after, "a piece starts where the staged state is");
                    for (_, batch) in &batches {
                        digest = fold(&digest, batch);
                    }
                    self.staging = Some((piece.up_to, digest));
                    let state_hash = hash_after.then(|| checkpoint_hash(piece.up_to, &digest));
                    let outcome = ReplayOutcome::Replayed { state_hash };
                    let delay = self.rng.range(0, 1);
                    self.schedule(delay, Delivery::Leecher(Event::Replayed { ticket, outcome }));
                }
                Action::Install { agreement_id } => {
                    let staged = self.staging.expect("install a staged state");
                    assert_eq!(
                        staged.0, agreement_id,
                        "the staged state is at the agreement installed"
                    );
                    self.report.installed = Some(staged);
                }
                Action::SeederFailed { replica, fault } => {
                    self.report.failed.push((replica, fault))
                }
                Action::Restart { reason, .. } => {
                    self.report.restarts.push(reason);
                    self.staging = None;
                }
                Action::Done { .. } | Action::Failed { .. } => {}
            }
        }
    }

    // ----- seeders -----

    fn seeder_event(&mut self, to: ReplicaId, event: SeederEvent) {
        let seeder = &self.seeders[&to];
        let byz = seeder.byz;
        if let SeederEvent::Message { from, msg } = &event {
            match (byz, msg) {
                (Some(Byz::MuteAll), _) => return,
                (Some(Byz::MuteAfterStatus), m) if !matches!(m, Message::Query { .. }) => return,
                (Some(Byz::FalseTruncated), Message::HashRequest { round, checkpoint, .. }) => {
                    let msg = Message::Unavailable {
                        round: *round,
                        asked: Asked::Hashes { checkpoint: *checkpoint },
                        reason: Unavailable::Truncated,
                    };
                    self.seeder_send(to, *from, msg);
                    return;
                }
                (Some(Byz::FalseTruncated), Message::Fetch { round, ticket, want }) => {
                    let msg = Message::Unavailable {
                        round: *round,
                        asked: Asked::Fetch { ticket: *ticket, want: *want },
                        reason: Unavailable::Truncated,
                    };
                    self.seeder_send(to, *from, msg);
                    return;
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        self.seeders.get_mut(&to).expect("present").seeder.handle(event, &mut out);
        for action in out {
            match action {
                SeederAction::Send { to: leecher, msg } => self.seeder_send(to, leecher, msg),
                SeederAction::HashPieces { job, pieces } => {
                    let seeder = &self.seeders[&to];
                    let result: Result<Vec<Hash>, Unavailable> = pieces
                        .iter()
                        .map(|&piece| {
                            let holdings = seeder.seeder.holdings();
                            if holdings.log_first > piece.after + 1
                                || piece.up_to > holdings.last_agreement
                            {
                                return Err(Unavailable::Truncated);
                            }
                            let batches = self.log_content(byz, piece, true);
                            Ok(piece_hash(piece, batches.iter().map(|(k, h)| (*k, h)))
                                .expect("a seeder hashes whole pieces"))
                        })
                        .collect();
                    let delay = self.rng.range(0, 1);
                    self.schedule(
                        delay,
                        Delivery::Seeder { to, event: SeederEvent::PiecesHashed { job, result } },
                    );
                }
                SeederAction::Serve { job, to: leecher, round, ticket, want } => {
                    assert_eq!(leecher, self.config.leecher);
                    if self.fetches.get(&ticket) != Some(&(to, round, want)) {
                        // Cancelled meanwhile.
                        self.seeder_event(to, SeederEvent::ServeEnded { job });
                        continue;
                    }
                    let payload = match want {
                        Want::Checkpoint { agreement_id } => {
                            let digest = self.checkpoint_content(to, byz, agreement_id);
                            Payload::Checkpoint { agreement_id, digest }
                        }
                        Want::Log(piece) => {
                            Payload::Log { piece, batches: self.log_content(byz, piece, false) }
                        }
                    };
                    let steps = match want {
                        Want::Checkpoint { .. } => self.rng.range(3, 8),
                        Want::Log(piece) => 1 + piece.len() / 8,
                    };
                    let disconnect_at = (byz == Some(Byz::Disconnect)).then(|| steps.div_ceil(2));
                    self.streams.insert(
                        (to, job),
                        Stream { ticket, want, payload, steps, sent: 0, disconnect_at },
                    );
                    self.schedule(1, Delivery::Stream { seeder: to, job });
                }
            }
        }
    }

    /// A seeder's message to the leecher: a refused fetch goes back on the data path,
    /// the rest over the lossy network, Byzantine seeders bending what they say.
    fn seeder_send(&mut self, from: ReplicaId, to: ReplicaId, msg: Message) {
        let byz = self.seeders[&from].byz;
        let msg = match (byz, msg) {
            (
                Some(Byz::WrongHashes),
                Message::Hashes { round, checkpoint, checkpoint_hash, mut pieces },
            ) => {
                for (_, hash) in &mut pieces {
                    hash[0] ^= 0xFF;
                }
                Message::Hashes { round, checkpoint, checkpoint_hash, pieces }
            }
            (
                Some(Byz::Equivocate),
                Message::Hashes { round, checkpoint, checkpoint_hash, pieces },
            ) => {
                let checkpoint_hash = checkpoint_hash.map(|mut h| {
                    h[1] ^= 0x5A;
                    h
                });
                Message::Hashes { round, checkpoint, checkpoint_hash, pieces }
            }
            (Some(Byz::FakeFreshCheckpoint), Message::Status { round, mut status }) => {
                status.last_agreement += 50;
                Message::Status { round, status }
            }
            (_, msg) => msg,
        };
        if let Message::Unavailable { round, asked: Asked::Fetch { ticket, want }, reason } = msg {
            if self.fetches.get(&ticket) == Some(&(from, round, want)) {
                let delay = self.rng.range(1, self.config.delay_max);
                let outcome = FetchOutcome::Unavailable(reason);
                self.schedule(delay, Delivery::Leecher(Event::Fetched { ticket, outcome }));
            }
            return;
        }
        self.send_control(from, to, &msg);
    }

    /// The state a seeder sends as its checkpoint at `agreement_id`.
    fn checkpoint_content(
        &self,
        seeder: ReplicaId,
        byz: Option<Byz>,
        agreement_id: AgreementId,
    ) -> Hash {
        let truth = self.history.digest[agreement_id as usize];
        match byz {
            Some(Byz::WrongCheckpointBytes | Byz::LyingCheckpoint) => corrupt(&truth),
            Some(Byz::StaleCheckpoint) => {
                let older = self.seeders[&seeder]
                    .points
                    .iter()
                    .copied()
                    .rfind(|&p| p < agreement_id)
                    .unwrap_or(0);
                self.history.digest[older as usize]
            }
            Some(Byz::FakeFreshCheckpoint)
                if !self.seeders[&seeder].points.contains(&agreement_id) =>
            {
                fake_digest(agreement_id)
            }
            _ => truth,
        }
    }

    /// The batches a seeder sends (or, `for_hash`, hashes) for `piece`.
    fn log_content(
        &self,
        byz: Option<Byz>,
        piece: Piece,
        for_hash: bool,
    ) -> Vec<(AgreementId, Hash)> {
        let mut batches: Vec<(AgreementId, Hash)> =
            (piece.after + 1..=piece.up_to).map(|k| (k, self.history.batch[k as usize])).collect();
        match byz {
            Some(Byz::TruncatedLog) if !for_hash => {
                batches.pop();
            }
            Some(Byz::ReorderedLog) if batches.len() >= 2 => {
                let first = batches[0].1;
                batches[0].1 = batches[1].1;
                batches[1].1 = first;
            }
            Some(Byz::BadLogContent) => {
                if let Some(last) = batches.last_mut() {
                    last.1 = corrupt(&last.1);
                }
            }
            _ => {}
        }
        batches
    }

    fn stream_step(&mut self, seeder: ReplicaId, job: JobId) {
        let Some(stream) = self.streams.get_mut(&(seeder, job)) else { return };
        let ticket = stream.ticket;
        if !self.fetches.contains_key(&ticket) {
            // Cancelled by the leecher.
            self.streams.remove(&(seeder, job));
            self.seeder_event(seeder, SeederEvent::ServeEnded { job });
            return;
        }
        stream.sent += 1;
        let event = if stream.disconnect_at == Some(stream.sent) {
            Some(Event::Fetched { ticket, outcome: FetchOutcome::Disconnected })
        } else if stream.sent < stream.steps {
            self.schedule(1, Delivery::Stream { seeder, job });
            self.schedule(0, Delivery::Leecher(Event::Progress { ticket }));
            None
        } else {
            // The engine's checks on what arrived: the checkpoint asked, a whole piece.
            let outcome = match (&stream.payload, stream.want) {
                (
                    Payload::Checkpoint { agreement_id, digest },
                    Want::Checkpoint { agreement_id: asked },
                ) => {
                    if *agreement_id == asked {
                        FetchOutcome::Received { hash: checkpoint_hash(*agreement_id, digest) }
                    } else {
                        FetchOutcome::Malformed
                    }
                }
                (Payload::Log { piece, batches }, Want::Log(_)) => {
                    match piece_hash(*piece, batches.iter().map(|(k, h)| (*k, h))) {
                        Ok(hash) => FetchOutcome::Received { hash },
                        Err(_) => FetchOutcome::Malformed,
                    }
                }
                _ => unreachable!("a stream carries what was asked"),
            };
            if let FetchOutcome::Received { .. } = outcome {
                self.payloads.insert(ticket, stream.payload.clone());
            }
            Some(Event::Fetched { ticket, outcome })
        };
        if let Some(event) = event {
            self.streams.remove(&(seeder, job));
            self.seeder_event(seeder, SeederEvent::ServeEnded { job });
            self.schedule(0, Delivery::Leecher(event));
        }
    }
}

fn fake_digest(agreement_id: AgreementId) -> Hash {
    sha(&[b"fake", &agreement_id.to_le_bytes()])
}

/// The oracle; `Err` says what broke.
pub(crate) fn check(config: &SimConfig, report: &Report, history: &History) -> Result<(), String> {
    let faulty: BTreeSet<ReplicaId> = config.faulty.iter().map(|(r, _)| *r).collect();
    for (replica, fault) in &report.failed {
        if fault.is_proof() && !faulty.contains(replica) {
            return Err(format!("correct replica {replica} proven faulty ({fault:?})"));
        }
    }
    let Some(outcome) = report.outcome else {
        return Err(format!("not finished after {} ticks", report.ticks));
    };
    let Outcome::Done { agreement_id, transferred } = outcome else {
        return Err(format!("gave up: {outcome:?}"));
    };
    if !transferred {
        return Err(format!("ended at its own agreement {agreement_id} without a transfer"));
    }
    let Some((installed_at, digest)) = report.installed else {
        return Err("done without an install".into());
    };
    if installed_at != agreement_id || report.targets.last() != Some(&agreement_id) {
        return Err(format!(
            "installed {installed_at}, done at {agreement_id}, targets {:?}",
            report.targets
        ));
    }
    if digest != history.digest[agreement_id as usize] {
        return Err(format!("installed a wrong state at agreement {agreement_id}"));
    }
    if agreement_id > report.head || agreement_id <= config.own_last {
        return Err(format!(
            "agreement {agreement_id} outside ({}, {}]",
            config.own_last, report.head
        ));
    }
    // With nobody faulty or failing and every seeder at the head (so each can serve the
    // target), a non-leader can take every role: the leader must send no bulk data.
    if let Some(leader) = config.leader
        && faulty.is_empty()
        && report.failed.is_empty()
        && config.lags.iter().all(|&lag| lag == 0)
        && report.fetches.iter().any(|(from, _)| *from == leader)
    {
        return Err(format!("fetched from the leader {leader} with nobody failing"));
    }
    Ok(())
}

/// Runs `count` seeds of `family` from `first` (or only `DURA_TRANSFER_SEED`), panicking
/// with the failing seed. Returns the reports' summary for the caller's assertions.
pub(crate) fn swarm(family: Family, first: u64, count: u64) -> Summary {
    let seeds: Vec<u64> = match std::env::var("DURA_TRANSFER_SEED") {
        Ok(seed) => vec![seed.parse().expect("DURA_TRANSFER_SEED is a number")],
        Err(_) => {
            let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
            let count = number("DURA_TRANSFER_SEEDS").unwrap_or(count);
            let first = number("DURA_TRANSFER_FIRST").unwrap_or(first);
            (first..first + count).collect()
        }
    };
    let mut summary = Summary::default();
    for seed in seeds {
        let config = SimConfig::random(family, seed);
        let (report, config, history) = Sim::new(config).run();
        if let Err(why) = check(&config, &report, &history) {
            panic!(
                "{family:?} seed {seed}: {why}\n  replay: DURA_TRANSFER_SEED={seed} cargo test -p dura-transfer\n  config: {config:?}\n  report: {report:?}"
            );
        }
        summary.runs += 1;
        summary.with_faults += u64::from(!config.faulty.is_empty());
        summary.restarts += report.restarts.len() as u64;
        summary.truncations +=
            report.restarts.iter().filter(|r| **r == RestartReason::Truncated).count() as u64;
        summary.proofs += report.failed.iter().filter(|(_, f)| f.is_proof()).count() as u64;
        summary.ticks_max = summary.ticks_max.max(report.ticks);
    }
    summary
}

/// What a swarm saw.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) runs: u64,
    pub(crate) with_faults: u64,
    pub(crate) restarts: u64,
    pub(crate) truncations: u64,
    pub(crate) proofs: u64,
    pub(crate) ticks_max: u64,
}

#[cfg(test)]
mod tests;
