//! The deterministic simulator: a whole cluster (replicas running the real
//! [`Replica`] core and [`Executor`], clients running the real [`Client`]) in one
//! process, driven by one `u64` seed, on simulated time.
//!
//! Every message goes through the real codec and HMAC ([`seal_frame`],
//! [`open_frame`]). Faults, all drawn from the seed: message loss, duplication,
//! reordering and delay; partitions that heal; replica crash and restart; a crash of
//! every replica at once; and Byzantine replicas ([`Byzantine`]).
//!
//! Durability runs the real code: each replica's decided batches go through the
//! durability [`Coordinator`] (the one the runtime's exec stage owns), which appends
//! them to a real `dura-wal` log over [`SimStorage`] in its stepped writer mode (no
//! threads, so the run replays exactly). A group write takes simulated time (a slow
//! disk on one replica takes much longer), replies wait for it as in production, and
//! only synced bytes survive a crash; a crash during a write tears it at a 512-byte
//! boundary. Restart opens the log and replays it with [`restore`], the runtime's
//! recovery. Disk faults drawn from the seed: torn writes at crashes, a crash during
//! recovery, a failed write on one replica (it stops for good: an fsync error is
//! fatal, and its failed group is never acknowledged), and, after a crash of every
//! replica, the loss of up to f replicas' disks (they stay down; the others restart
//! with them declared lost, [`Config::lost_replicas`]). Faults stop at [`SimConfig::faults_until_ms`];
//! from then on the cluster must finish every client operation within
//! [`SimConfig::liveness_ms`].
//!
//! Oracle, checked on every run (a violation ends the run with a [`SimFailure`]):
//! - agreement: correct replicas deliver the same batch for each agreement id;
//! - validity: every delivered request was sent by a client, exactly as sent, and no
//!   request executes twice on any replica;
//! - delivery order: each replica delivers agreement ids 1, 2, 3, ... with no gap;
//! - state: correct replicas' state digests agree after the same agreement id;
//! - durability: no replica releases a reply before the log record of its agreement
//!   is synced on that replica's disk (checked against the simulated disk's own record
//!   of completed writes); a client completes a request only once f+1 disks hold it
//!   (so it survives the loss of any f of them); and every agreement a client saw
//!   complete is decided the same way after every crash, a crash of all replicas and
//!   the loss of f disks included;
//! - linearizability of the client history, per key, against a register model;
//! - liveness: all operations complete once faults stop.

pub mod kv;
pub mod rng;
pub mod transfer;
pub mod tuplespace;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use dura_wal::sim::{SimFaults, SimStorage, durable_agreement_max};
use dura_wal::{LogWriter, Wal, WalError, WalOptions, WriterThreads};

use dura_snapshot::sim::SimDir;
use dura_snapshot::{CheckpointStore, StoreOptions};

use crate::checkpoint::{load_checkpoint, write_checkpoint};
use crate::durability::{
    CheckpointSchedule, CheckpointStart, Coordinator, DecidedBatch, DecisionId, FromCheckpoint,
    Input, Output, ReplyOut, ReplyStatus, decode_batch, encode_batch, execute_batch, restore,
};
use crate::protocol::{
    Action, Batch, Client, ClientAction, ClientConfig, ClientEvent, ClientKeys, ClientRequest,
    Config, Decision, Event, Hash, KeyRing, Message, Mode, Replica, ReplicaId, ReplicaKeys, Reply,
    open_frame, seal_frame,
};
use crate::runtime::LogMode;
use crate::service::{Executor, ExecutorView, Service};
pub use kv::KvWorkload;
use rng::Rng;

/// The service a run replicates, with its clients' workload and the check of their
/// history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimService {
    /// A key-value register per key ([`kv`]).
    #[default]
    Kv,
    /// The Durable DepSpace tuple space ([`tuplespace`]): blocking reads, leases, cancels.
    TupleSpace,
}

impl SimService {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SimService::Kv => "kv",
            SimService::TupleSpace => "tuplespace",
        }
    }
}

impl std::str::FromStr for SimService {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "kv" => Ok(SimService::Kv),
            "tuplespace" => Ok(SimService::TupleSpace),
            other => Err(format!("unknown service {other} (kv or tuplespace)")),
        }
    }
}

/// How a run's error starts when it stopped at the stated BFT liveness limit after a
/// crash of every replica (see `World::bft_limit`), not at a failure of the protocol.
pub const BFT_LIMIT_PREFIX: &str = "stalled at the stated BFT limit:";

/// One operation a client starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextOp {
    /// The request's bytes.
    pub operation: Vec<u8>,
    /// The client stops waiting for it after this long, if it is still outstanding, and
    /// sends [`Workload::give_up`]'s operation (for a request the service may keep
    /// waiting). `None`: it waits as long as it takes.
    pub patience_us: Option<u64>,
}

/// One client operation of a run, completed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The client's index.
    pub client: usize,
    /// Its client id.
    pub client_id: u64,
    /// The request's sequence number.
    pub sequence: u64,
    /// Invocation time (µs).
    pub invoked_us: u64,
    /// Completion time (µs); None if the client never saw it complete.
    pub completed_us: Option<u64>,
    /// The request's bytes.
    pub operation: Vec<u8>,
    /// The result the client accepted (f+1 matching replies).
    pub result: Option<Vec<u8>>,
    /// When it completed, the highest agreement that f+1 disks held (a disk replaced or
    /// lost in a crash of all counts as holding: it is one of the f the promise may
    /// lose; a client may have counted a reply its replica sent before its disk was
    /// lost).
    pub confirmed_at_completion: Option<u64>,
}

/// What the correct replicas agreed, for a workload's check at the end of a run.
#[derive(Debug)]
pub struct Agreed<'a> {
    /// Each agreement's batch (from 1 up, as the surviving correct replicas decided it).
    pub batches: &'a BTreeMap<u64, Arc<Batch>>,
    /// The service's state digest after an agreement, as correct replicas executed it
    /// (agreements executed only in replays after restarts are missing).
    pub digests: &'a BTreeMap<u64, [u8; 32]>,
    /// The replicas' reply cache bound (see [`SimConfig::clients_max`]).
    pub clients_max: usize,
}

/// A simulated service: the replicated [`Service`], what its clients do, and the check
/// of their history. The simulator runs any; [`SimService`] names those `dura-sim` runs.
pub trait Workload: Sized {
    /// The replicated service.
    type Service: Service;
    /// A fresh service (a new replica's state, or the one a checkpoint installs into).
    fn service() -> Self::Service;
    /// The workload of the run of `config`.
    fn new(config: &SimConfig) -> Self;
    /// The next operation of `client`, drawn from `rng` (the run's stream).
    fn next_op(&mut self, client: usize, rng: &mut Rng) -> NextOp;
    /// What `client` sends after giving up waiting for its request `sequence`.
    fn give_up(&mut self, client: usize, sequence: u64) -> Vec<u8>;
    /// A request the service executed twice, if it can tell.
    fn executed_twice(_service: &Self::Service) -> Option<(u64, u64)> {
        None
    }
    /// Checks the clients' history (linearizability and whatever else the service
    /// promises) against what the replicas agreed. `Err` says why not; `Ok` counts what
    /// the run exercised, by name, for the report.
    fn check(
        &self,
        history: &[HistoryEntry],
        agreed: &Agreed<'_>,
    ) -> Result<Vec<(&'static str, u64)>, String>;
}

/// Client ids start here (client `i` has id `CLIENT_ID_BASE + i`).
pub const CLIENT_ID_BASE: u64 = 1000;

/// Simulated time after the last operation (and after faults stop) during which
/// lagging replicas must catch up.
const DRAIN_US: u64 = 3_000_000;

/// Decisions younger than this at the end of a run are not yet owed to every replica by
/// catch-up (a few ticks' FETCH and answers); older ones are.
const CATCH_UP_GRACE_US: u64 = 1_000_000;
const _: () = assert!(CATCH_UP_GRACE_US < DRAIN_US, "the grace leaves a check to make");

/// The wall clock replicas read at simulated time 0 (2027-01-15), ms since the Unix
/// epoch: batch timestamps are this plus simulated time.
pub const SIM_EPOCH_MS: u64 = 1_800_000_000_000;

/// How a Byzantine replica misbehaves. Its core runs correctly; its output is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Byzantine {
    /// Sends nothing at all.
    Mute,
    /// As leader, proposes a different batch to odd-numbered replicas, and after a
    /// leader change sends every replica a SYNC whose value differs from the one the
    /// STOPDATAs determine.
    Equivocate,
    /// Sends random bytes, frames forged as another replica, and well-formed messages
    /// with random fields, mixed with its real messages; replies wrong results.
    Garbage,
    /// Sends WRITE and ACCEPT for a random hash instead of the real one, and answers
    /// status queries saying its disk was lost; replies wrong results.
    WrongVote,
}

/// A replica crash, optionally followed by a restart from its durable store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPlan {
    /// The replica.
    pub replica: ReplicaId,
    /// When it crashes.
    pub at_ms: u64,
    /// When it restarts (None: stays down).
    pub restart_ms: Option<u64>,
}

/// A set of replicas cut off from the others (clients reach everyone) for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// The isolated side.
    pub isolated: Vec<ReplicaId>,
    /// Start.
    pub from_ms: u64,
    /// Heal.
    pub until_ms: u64,
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed: the run is a pure function of this configuration.
    pub seed: u64,
    /// Protocol configuration of the cluster.
    pub protocol: Config,
    /// Number of clients.
    pub clients: usize,
    /// Operations per client (sequential).
    pub ops_per_client: usize,
    /// Key space (keys 0..keys).
    pub keys: u8,
    /// Loss probability per message while faults are on, per mille.
    pub loss_per_mille: u64,
    /// Duplication probability per message while faults are on, per mille.
    pub duplicate_per_mille: u64,
    /// Largest message delay while faults are on (reordering comes from the spread).
    pub delay_ms_max: u64,
    /// Loss, duplication and long delays stop here; partitions must heal and crashed
    /// replicas that restart must restart by then.
    pub faults_until_ms: u64,
    /// After `faults_until_ms`, every operation must complete within this.
    pub liveness_ms: u64,
    /// Byzantine replicas.
    pub byzantine: Vec<(ReplicaId, Byzantine)>,
    /// Crashes.
    pub crashes: Vec<CrashPlan>,
    /// Partitions.
    pub partitions: Vec<PartitionPlan>,
    /// Bound on processed events (guards against livelock).
    pub events_max: u64,
    /// Client retransmission timeout.
    pub client_timeout_ms: u64,
    /// Start every replica at a time drawn in `0..cold_start_spread_ms`, as processes
    /// start: with [`Replica::new`] if `cold_start_fresh` (the runtime's start of a new
    /// cluster), else through [`Replica::restart_with_nonce`] from an empty store
    /// (recovery, then a leader change: a crash of every replica before anything was
    /// logged). None: every replica starts at once with [`Replica::new`].
    pub cold_start_spread_ms: Option<u64>,
    /// See `cold_start_spread_ms`.
    pub cold_start_fresh: bool,
    /// Print every replica message sent, crash, restart, regency installed and
    /// decision to stderr (for replaying one failing seed).
    pub trace: bool,
    /// How replicas log: `parallel` (default) or `batched`; both run `dura-wal`.
    pub log_mode: LogMode,
    /// A group write takes a time drawn in this range (microseconds).
    pub disk_write_us: (u64, u64),
    /// This replica's disk is slow: its writes take 20x longer.
    pub slow_disk: Option<ReplicaId>,
    /// This replica's write with this index (counted from its start) fails: it stops
    /// for good, like a replica whose fsync failed.
    pub failed_write: Option<(ReplicaId, u64)>,
    /// A crash that strikes during a group write tears it, with this probability per
    /// mille.
    pub torn_write_per_mille: u64,
    /// A restart crashes during recovery (its first write), with this probability per
    /// mille; it is restarted again later.
    pub recovery_crash_per_mille: u64,
    /// Every replica crashes at once at this time and restarts within
    /// `restart_spread_ms` after it.
    pub total_crash: Option<TotalCrashPlan>,
    /// Replicas checkpoint on this schedule (None: no checkpoints).
    pub checkpoints: Option<SimCheckpoints>,
    /// This replica's disk (log and checkpoints) is wiped while it is down, as when a
    /// disk is replaced: at its planned restart it takes the state from its peers by
    /// state transfer first ([`transfer`]).
    pub wiped: Option<ReplicaId>,
    /// The replicated service and its workload.
    pub service: SimService,
    /// Each replica's reply cache bound (the cluster's `clients_max`); below the number
    /// of clients, clients are evicted and their requests refused as expired.
    pub clients_max: usize,
    /// FETCHes below a replica's catch-up window are answered from its log, as the
    /// runtime does (`runtime::catchup`); else with GONE, as a host with no log to read.
    pub catch_up_from_log: bool,
}

/// Checkpoints in a simulated run: each replica writes them into its own simulated
/// checkpoint directory (`dura_snapshot::sim::SimDir`) through the same code as the
/// runtime, in the background (the write completes a drawn time after the view was
/// taken, while execution goes on), and may crash while writing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimCheckpoints {
    /// P, in requests.
    pub period: u64,
    /// Every replica at the same point (else sequential).
    pub coordinated: bool,
    /// A checkpoint write takes a time drawn in this range (microseconds).
    pub write_us: (u64, u64),
    /// A checkpoint write is cut by a crash of its replica at a drawn step, with this
    /// probability per mille (the replica restarts later).
    pub crash_per_mille: u64,
}

/// A crash of every replica at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalCrashPlan {
    /// When every replica crashes.
    pub at_ms: u64,
    /// Each restarts at a time drawn in `at_ms + 1 .. at_ms + restart_spread_ms`.
    pub restart_spread_ms: u64,
    /// These replicas' disks are lost in the crash (at most f): they never restart, and
    /// the others restart with them declared lost ([`Config::lost_replicas`]).
    pub lost: Vec<ReplicaId>,
    /// BFT mode: this replica's disk is replaced while every replica is down (the crash
    /// of all loses it); it restarts on its peers' state by state transfer, while they
    /// recover from their own logs.
    pub wiped: Option<ReplicaId>,
}

impl SimConfig {
    /// A run with no faults.
    pub fn quiet(mode: Mode, n: usize, seed: u64) -> Self {
        let f = mode.f_max(n);
        let mut protocol = Config::with_mode(mode, n, f);
        protocol.tick_ms = 20;
        protocol.request_timeout_ticks = 5;
        protocol.batch_requests_max = 4;
        protocol.batch_bytes_max = 4096;
        protocol.decided_window_max = 1024;
        protocol.fetch_instances_max = 16;
        Self {
            seed,
            protocol,
            clients: 3,
            ops_per_client: 8,
            keys: 3,
            loss_per_mille: 0,
            duplicate_per_mille: 0,
            delay_ms_max: 5,
            faults_until_ms: 0,
            liveness_ms: 60_000,
            byzantine: Vec::new(),
            crashes: Vec::new(),
            partitions: Vec::new(),
            events_max: 3_000_000,
            client_timeout_ms: 300,
            cold_start_spread_ms: None,
            cold_start_fresh: false,
            trace: false,
            log_mode: LogMode::Parallel,
            disk_write_us: (300, 3_000),
            slow_disk: None,
            failed_write: None,
            torn_write_per_mille: 0,
            recovery_crash_per_mille: 0,
            total_crash: None,
            checkpoints: None,
            wiped: None,
            service: SimService::Kv,
            clients_max: crate::service::CLIENTS_MAX_DEFAULT,
            catch_up_from_log: true,
        }
    }

    /// A run whose faults are all drawn from `seed`: at most f faulty replicas
    /// (Byzantine or crashing; BFT counts a restarted replica as faulty), loss,
    /// duplication, delay, and possibly a partition of any shape that heals.
    pub fn random(mode: Mode, n: usize, seed: u64) -> Self {
        let mut config = Self::quiet(mode, n, seed);
        let mut rng = Rng::new(seed ^ 0xD1CE_5EED);
        let f = config.protocol.f;
        config.faults_until_ms = 2500;
        config.loss_per_mille = [0, 10, 50, 100][rng.range(0, 3) as usize];
        config.duplicate_per_mille = [0, 20, 100][rng.range(0, 2) as usize];
        config.delay_ms_max = [2, 10, 40][rng.range(0, 2) as usize];
        config.clients = rng.range(2, 4) as usize;
        config.ops_per_client = rng.range(6, 16) as usize;
        let mut ids: Vec<ReplicaId> = (0..n as ReplicaId).collect();
        // Shuffle, biased so that replica 0 (the first leader) is often faulty.
        for i in (1..ids.len()).rev() {
            let j = rng.range(0, i as u64) as usize;
            ids.swap(i, j);
        }
        if rng.chance(500)
            && let Some(at) = ids.iter().position(|&id| id == 0)
        {
            ids.swap(0, at);
        }
        let faulty = rng.range(0, f as u64) as usize + usize::from(rng.chance(700) && f > 0);
        let faulty = faulty.min(f);
        for &id in ids.iter().take(faulty) {
            let byzantine = mode == Mode::Bft && rng.chance(600);
            if byzantine {
                let kind = [
                    Byzantine::Mute,
                    Byzantine::Equivocate,
                    Byzantine::Garbage,
                    Byzantine::WrongVote,
                ][rng.range(0, 3) as usize];
                config.byzantine.push((id, kind));
            } else {
                let at_ms = rng.range(0, config.faults_until_ms - 100);
                let restart_ms = rng
                    .chance(700)
                    .then(|| (at_ms + rng.range(50, 1500)).min(config.faults_until_ms));
                config.crashes.push(CrashPlan { replica: id, at_ms, restart_ms });
            }
        }
        if rng.chance(400) {
            let size = rng.range(1, (n / 2) as u64) as usize;
            let mut isolated: Vec<ReplicaId> = Vec::new();
            if rng.chance(500) {
                isolated.push(0);
            }
            while isolated.len() < size {
                let id = rng.range(0, n as u64 - 1) as ReplicaId;
                if !isolated.contains(&id) {
                    isolated.push(id);
                }
            }
            let from_ms = rng.range(0, config.faults_until_ms - 300);
            let until_ms = (from_ms + rng.range(200, 2000)).min(config.faults_until_ms);
            config.partitions.push(PartitionPlan { isolated, from_ms, until_ms });
        }
        // Drawn last, so the draws above (and the runs of earlier seeds) are unchanged.
        // A staggered start, fresh (as the runtime starts a new cluster) or through
        // recovery from empty stores (a crash of every replica before anything was
        // logged). The latter is itself beyond f, so in crash mode it is drawn only
        // where no replica crashes as well: a replica that lost its votes cannot vote
        // again below its floor there, and two of them can block an agreement forever.
        if rng.chance(500) {
            config.cold_start_spread_ms = Some(rng.range(1, 100));
            let recovery_allowed = mode == Mode::Bft || config.crashes.is_empty();
            config.cold_start_fresh = rng.chance(500) || !recovery_allowed;
        }
        // Disk faults, drawn after everything above.
        config.torn_write_per_mille = [0, 500, 1000][rng.range(0, 2) as usize];
        config.recovery_crash_per_mille = [0, 0, 300][rng.range(0, 2) as usize];
        if rng.chance(200) {
            config.log_mode = LogMode::Batched;
        }
        let healthy: Vec<ReplicaId> = (0..n as ReplicaId)
            .filter(|id| {
                !config.byzantine.iter().any(|(b, _)| b == id)
                    && !config.crashes.iter().any(|c| c.replica == *id)
            })
            .collect();
        if rng.chance(250) {
            config.slow_disk = Some(healthy[rng.range(0, healthy.len() as u64 - 1) as usize]);
        }
        let faulty_now = config.byzantine.len() + config.crashes.len();
        if faulty_now < f && rng.chance(250) {
            let id = healthy[rng.range(0, healthy.len() as u64 - 1) as usize];
            config.failed_write = Some((id, rng.range(0, 30)));
        }
        // Checkpoints and the leader-silence timeout, drawn from their own stream so
        // that the draws above stay what they were for every seed.
        let mut rng = Rng::new(seed ^ 0xC4EC_4901_7000);
        config.protocol.leader_silence_ticks = [6, 10, 25][rng.range(0, 2) as usize];
        if rng.chance(500) {
            let n = n as u64;
            config.checkpoints = Some(SimCheckpoints {
                period: rng.range(2 * n, 2 * n + 24),
                coordinated: rng.chance(333),
                write_us: (1_000, rng.range(2_000, 40_000)),
                crash_per_mille: [0, 100, 300][rng.range(0, 2) as usize],
            });
        }
        // State transfer, from its own stream: a replaced disk on a replica that
        // crashes and restarts, and small catch-up windows (so that a replica that was
        // down falls behind every peer's window and must transfer).
        let mut rng = Rng::new(seed ^ 0x57A7_E7AA_45F3);
        if rng.chance(300)
            && let Some(plan) = config.crashes.iter().find(|c| c.restart_ms.is_some())
        {
            config.wiped = Some(plan.replica);
        }
        if rng.chance(300) {
            config.protocol.decided_window_max = rng.range(2, 12) as usize;
        }
        // A reply cache bound below the number of clients, from its own stream: clients
        // are evicted (identically on every replica, checked by the state digests and
        // the checkpoints' content hashes) and a forgotten one's request is refused.
        let mut rng = Rng::new(seed ^ 0xC11E_B7C0_57A1);
        if rng.chance(250) {
            let clients = config.clients as u64;
            config.clients_max = rng.range(clients.saturating_sub(2).max(1), clients) as usize;
            config.protocol.clients_max = config.clients_max;
        }
        // Catch-up below the window from the log in half the seeds, from its own stream;
        // the other half answers GONE there, so that falling behind every window still
        // leads to state transfer as often as before.
        let mut rng = Rng::new(seed ^ 0x10C_A7C4_0B5E);
        config.catch_up_from_log = rng.chance(500);
        config
    }

    /// The checkpoint schedule of replica `id`, if checkpoints are on.
    fn checkpoint_schedule(&self, id: ReplicaId) -> Option<CheckpointSchedule> {
        let checkpoints = self.checkpoints?;
        let n = self.protocol.n;
        Some(if checkpoints.coordinated {
            CheckpointSchedule::coordinated(checkpoints.period, n)
        } else {
            CheckpointSchedule::sequential(checkpoints.period, n, id as usize)
        })
    }

    /// [`SimConfig::random`] plus, with probability one half, a crash of every replica
    /// at once (torn writes included) during the faulty period. In crash mode it is
    /// drawn only where every other crash restarts and no replica stops for good, and
    /// in two draws of three up to f replicas lose their disks in it for good: with the
    /// replicas that crash after it, at most f (the others restart with the lost ones
    /// declared, and must go on with n-f). In BFT mode, where no replica is Byzantine
    /// and every crash restarts, one replica's disk is replaced in it in a draw of
    /// three: it comes back by state transfer.
    pub fn random_with_total_crash(mode: Mode, n: usize, seed: u64) -> Self {
        let mut config = Self::random(mode, n, seed);
        let mut rng = Rng::new(seed ^ 0x70_7A1C_4A54);
        let all_come_back = config.crashes.iter().all(|c| c.restart_ms.is_some())
            && config.failed_write.is_none()
            && config.byzantine.is_empty();
        if rng.chance(500) && (mode == Mode::Bft || all_come_back) {
            let at_ms = rng.range(100, config.faults_until_ms - 600);
            config.total_crash = Some(TotalCrashPlan {
                at_ms,
                restart_spread_ms: rng.range(1, 400),
                lost: Vec::new(),
                wiped: None,
            });
            config.torn_write_per_mille = config.torn_write_per_mille.max(500);
            // A replaced disk on top of a crash of all is a lost disk, drawn there.
            config.wiped = None;
            if mode == Mode::Crash {
                // A crash during recovery on top of another replica's crash after the
                // crash of all makes two replicas that lost their votes: beyond f there.
                config.recovery_crash_per_mille = 0;
                // Drawn from a stream of its own, so the runs above are unchanged.
                let lost = Self::draw_lost_disks(&config, at_ms, seed);
                if let Some(total) = config.total_crash.as_mut() {
                    total.lost = lost;
                }
            } else if all_come_back {
                // BFT: in one draw of three, one replica's disk is replaced while every
                // replica is down (the case where its peers' recovery must not count
                // its silence about what it had logged). Its own stream, as above.
                let mut rng = Rng::new(seed ^ 0x0B1F_7D15_C0FF);
                if rng.chance(333) {
                    let id = rng.range(0, n as u64 - 1) as ReplicaId;
                    if let Some(total) = config.total_crash.as_mut() {
                        total.wiped = Some(id);
                    }
                }
            }
        }
        config
    }

    /// Up to f replicas whose disks a crash of all at `at_ms` loses (in two draws of
    /// three), fewer where replicas that survive it crash again later: those count
    /// against f too.
    fn draw_lost_disks(config: &SimConfig, at_ms: u64, seed: u64) -> Vec<ReplicaId> {
        let mut rng = Rng::new(seed ^ 0x1057_D15C);
        let n = config.protocol.n;
        if !rng.chance(667) {
            return Vec::new();
        }
        let mut ids: Vec<ReplicaId> = (0..n as ReplicaId).collect();
        for i in (1..ids.len()).rev() {
            let j = rng.range(0, i as u64) as usize;
            ids.swap(i, j);
        }
        let mut lost: Vec<ReplicaId> =
            ids[..rng.range(1, config.protocol.f as u64) as usize].to_vec();
        let crashing_later = |lost: &[ReplicaId]| {
            let mut ids: Vec<ReplicaId> = config
                .crashes
                .iter()
                .filter(|c| c.at_ms >= at_ms && !lost.contains(&c.replica))
                .map(|c| c.replica)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        };
        while !lost.is_empty() && lost.len() + crashing_later(&lost) > config.protocol.f {
            lost.pop();
        }
        lost.sort_unstable();
        lost
    }
}

/// What a successful run observed.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Highest agreement id decided by any correct replica.
    pub decided_max: u64,
    /// Last decided agreement id per replica at the end (None: crashed).
    pub last_decided: Vec<Option<u64>>,
    /// Highest regency installed by a correct replica.
    pub regency_max: u64,
    /// Operations completed by clients.
    pub ops_completed: usize,
    /// Operations refused as expired (their client evicted from the reply caches).
    pub ops_expired: u64,
    /// DECIDED answers a replica read from its log for a FETCH below its window.
    pub catch_up_from_log: u64,
    /// Client retransmissions.
    pub client_retransmissions: u64,
    /// Decisions delivered through catch-up (fetched from peers).
    pub fetched_decisions: u64,
    /// Messages sent between replicas.
    pub replica_messages: u64,
    /// Simulated time at the end.
    pub end_ms: u64,
    /// Simulated time at which the last client operation completed.
    pub ops_finished_ms: u64,
    /// Group writes completed on the simulated disks.
    pub disk_writes: u64,
    /// Crashes that tore a group write.
    pub torn_writes: u64,
    /// Restarts that crashed during recovery.
    pub recovery_crashes: u64,
    /// Replicas stopped for good by a failed write.
    pub log_failures: u64,
    /// Replies released, and of them those that waited for their group write.
    pub replies_released: u64,
    /// Crashes of every replica at once.
    pub total_crashes: u64,
    /// Times a replica found itself behind every peer's catch-up window.
    pub transfer_requests: u64,
    /// State transfers started, ended with a state (or none needed), and failed (then
    /// started again).
    pub transfers_started: u64,
    /// See `transfers_started`.
    pub transfers_done: u64,
    /// See `transfers_started`.
    pub transfers_failed: u64,
    /// Payload bytes leechers received.
    pub transfer_bytes: u64,
    /// Byzantine seeders a leecher proved faulty.
    pub transfer_faulty_proven: u64,
    /// Installed states at an agreement no correct replica's execution recorded (only
    /// replayed after restarts), so not compared at install.
    pub transfer_unchecked: u64,
    /// Disks wiped while their replica was down.
    pub disks_wiped: u64,
    /// BFT: replicas that discarded agreements fewer than f+1 replicas logged before a
    /// crash of every replica, and came back through state transfer.
    pub suffixes_discarded: u64,
    /// Checkpoints written durably.
    pub checkpoints_written: u64,
    /// Crashes that cut a checkpoint write.
    pub checkpoint_crashes: u64,
    /// Restarts that loaded a checkpoint.
    pub checkpoint_restarts: u64,
    /// Replicas left behind what their peers' logs still hold after checkpoints
    /// truncated them: catch-up cannot bring them back, state transfer will.
    pub state_transfer_needed: u64,
    /// Disks lost for good in a crash of every replica.
    pub lost_disks: u64,
    /// Disks replaced in a crash of every replica (BFT), their replicas back by state
    /// transfer.
    pub replaced_in_total_crash: u64,
    /// What the service's workload exercised, by name ([`Workload::check`]).
    pub service_counts: Vec<(&'static str, u64)>,
}

/// A violated property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Simulated time of the failure.
    pub at_ms: u64,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} failed at {} ms: {}", self.seed, self.at_ms, self.reason)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Replica(ReplicaId),
    Client(usize),
}

#[derive(Debug)]
enum Ev {
    Packet {
        from: Endpoint,
        to: Endpoint,
        /// The receiving replica's life when it was sent, if it was up: only that life
        /// receives it.
        to_life: Option<u64>,
        bytes: Vec<u8>,
    },
    ReplicaTick {
        id: ReplicaId,
        generation: u64,
    },
    ClientTimer {
        client: usize,
        generation: u64,
    },
    ClientNext {
        client: usize,
    },
    /// The client stops waiting for its request `sequence`, if still outstanding.
    ClientGiveUp {
        client: usize,
        sequence: u64,
    },
    Crash {
        id: ReplicaId,
    },
    Restart {
        id: ReplicaId,
    },
    /// State transfer (see [`transfer`]).
    Transfer(transfer::TransferEv),
    /// First start of a replica of a new cluster (a staggered fresh start).
    Start {
        id: ReplicaId,
    },
    /// A group write of the replica's log completes.
    DiskWrite {
        id: ReplicaId,
        generation: u64,
    },
    /// Every replica crashes.
    TotalCrash,
    /// The replica's checkpoint write (the view taken at `Output::Checkpoint`) runs.
    CheckpointWrite {
        id: ReplicaId,
        generation: u64,
    },
}

/// A checkpoint whose view was taken and whose write is scheduled.
struct PendingCheckpoint<W: Workload> {
    agreement_id: u64,
    ordered_requests: u64,
    view: ExecutorView<<W::Service as Service>::View>,
}

struct ReplicaNode<W: Workload> {
    core: Option<Replica>,
    executor: Executor<W::Service>,
    coordinator: Coordinator,
    /// The replica's disk (survives crashes; rebooted at each crash).
    disk: SimStorage,
    /// Its log, while the replica runs.
    wal: Option<LogWriter<SimStorage>>,
    /// A `DiskWrite` event is pending.
    write_scheduled: bool,
    /// Bumped at each crash, so a pending `DiskWrite` of an earlier life is ignored.
    disk_generation: u64,
    /// Writes issued since the replica's first start (for `failed_write`).
    writes_issued: u64,
    /// The last agreement delivered to the coordinator.
    last_delivered: u64,
    /// The log failed: the replica is down for good.
    stopped: bool,
    /// It crashed at least once (only such a replica's recovery may crash: a cold start
    /// of the whole cluster must not add faults beyond f).
    crashed_before: bool,
    byzantine: Option<Byzantine>,
    timer_generation: u64,
    keys: ReplicaKeys,
    /// Restarts so far (makes each recovery query's nonce unique).
    incarnation: u64,
    /// The replica's checkpoint directory (survives crashes, losing what it did not
    /// sync).
    checkpoint_dir: SimDir,
    /// The checkpoint being written (its view taken), if any.
    checkpoint_pending: Option<PendingCheckpoint<W>>,
    /// The newest checkpoint written durably (0: none), for the release check.
    checkpoint_durable: u64,
    /// Its disk was lost in a crash of every replica: it never runs again.
    lost: bool,
    /// Bumped at each crash. Links are TCP connections, which die with either process:
    /// a packet sent to a running replica reaches that life of it only (one sent while
    /// it is down waits for its next life, as the runtime parks frames for a peer not
    /// connected yet). Without this, a packet from before a crash of every replica
    /// reached a restarted one, which no connection of the runtime can do.
    life: u64,
    /// The last agreement its log held when it was last opened: a write that a crash
    /// struck may still have landed whole, and is on the disk from then on though the
    /// disk's record of completed writes does not count it.
    reopened_with: u64,
    /// State transfers started since its last one that ended (bounded).
    transfer_attempts: u32,
    /// Its disk was wiped (once, at the restart after its planned crash or after the
    /// crash of all that lost it).
    wiped_done: bool,
    /// Its disk was lost in the crash of all: it is wiped at its next restart.
    wipe_at_restart: bool,
    /// Its log was lost (wiped, or set aside after a discard) and it comes back on its
    /// peers' state: every restart marks the core (`Replica::mark_state_lost`) until
    /// the cluster resumed with it (the runtime's state-from-peers flag).
    state_lost: bool,
    /// With `state_lost`: the log was lost with its disk (wiped), not given up, so the
    /// core is marked `Replica::mark_disk_lost` and says so.
    disk_lost: bool,
    /// Its protocol core while it transfers state after falling behind every window (the
    /// process lives on; a crash loses it).
    paused_core: Option<Replica>,
    /// When it last lost its memory (a crash, not a stop for state transfer), in us.
    forgot_at_us: u64,
    /// Its latest deliveries (agreement, hash), at most `RECENT_DELIVERIES_MAX`; emptied
    /// when its disk is replaced.
    recent_delivered: VecDeque<(u64, Hash)>,
    /// BFT: an agreement it delivered that the cluster decided anew, otherwise, after
    /// more than f replicas crashed: it must give it up (`Action::DiscardUnconfirmed`)
    /// before it delivers anything more.
    orphaned: Option<u64>,
}

/// How long a checkpoint write waits before it looks at the log again (simulated us).
const CHECKPOINT_LOG_WAIT_US: u64 = 500;

/// Deliveries each simulated replica remembers for the agreement oracle.
const RECENT_DELIVERIES_MAX: usize = 512;

impl<W: Workload> ReplicaNode<W> {
    /// The highest agreement its disk holds for sure.
    fn logged_max(&self) -> u64 {
        durable_agreement_max(&self.disk).unwrap_or(0).max(self.reopened_with)
    }
}

struct ClientNode {
    core: Client,
    /// Its keys (a client that gives up on a request goes on with a new core).
    keys: ClientKeys,
    timer_generation: u64,
    issued: usize,
    /// (sequence, history index) of the outstanding operation.
    current: Option<(u64, usize)>,
    /// Requests it gave up waiting for, by sequence: (history index, the authentic
    /// replies seen since, by replica). A client library that stopped waiting still
    /// takes an answer that arrives (f+1 matching replies), as the core would have.
    abandoned: BTreeMap<u64, (usize, RepliesSeen)>,
}

/// Per replica, the decision and result of its latest authentic reply.
type RepliesSeen = BTreeMap<ReplicaId, (DecisionId, Vec<u8>)>;

struct World<'c, W: Workload> {
    config: &'c SimConfig,
    rng: Rng,
    now_us: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    next_event: u64,
    replicas: Vec<ReplicaNode<W>>,
    clients: Vec<ClientNode>,
    history: Vec<HistoryEntry>,
    /// (client id, sequence) -> operation bytes, for validity.
    issued: BTreeMap<(u64, u64), Vec<u8>>,
    decided: BTreeMap<u64, Hash>,
    /// When each entry of `decided` was first delivered, in us.
    decided_at_us: BTreeMap<u64, u64>,
    /// Per agreement: the correct replicas' service digest and executor digest (the
    /// service's with the reply cache, [`executor_digest`]).
    digests: BTreeMap<u64, ([u8; 32], [u8; 32])>,
    /// (client id, sequence) -> agreement, for every reply a correct replica released.
    released_in: BTreeMap<(u64, u64), u64>,
    /// Agreements holding a request whose client saw it complete.
    accepted: std::collections::BTreeSet<u64>,
    report: SimReport,
    workload: W,
    /// Every agreement's batch as the correct replicas decided it (kept as `decided`).
    decided_batches: BTreeMap<u64, Arc<Batch>>,
    /// State transfers in progress, by leecher.
    transfers: BTreeMap<ReplicaId, transfer::Transfer<W::Service>>,
    /// Each running replica's seeder (reset when it crashes).
    seeders: BTreeMap<ReplicaId, dura_transfer::Seeder>,
}

/// Runs one simulation; `Ok` if every oracle held.
pub fn run(config: &SimConfig) -> Result<SimReport, SimFailure> {
    match config.service {
        SimService::Kv => run_with::<KvWorkload>(config),
        SimService::TupleSpace => run_with::<tuplespace::TupleSpaceWorkload>(config),
    }
}

/// Runs one simulation of workload `W`; `Ok` if every oracle held.
pub fn run_with<W: Workload>(config: &SimConfig) -> Result<SimReport, SimFailure> {
    config.protocol.validate().map_err(|error| SimFailure {
        seed: config.seed,
        at_ms: 0,
        reason: format!("bad configuration: {error}"),
    })?;
    let mut world = World::<W>::new(config);
    world.run().map_err(|reason| SimFailure {
        seed: config.seed,
        at_ms: world.now_us / 1000,
        reason,
    })?;
    Ok(world.report.clone())
}

impl<'c, W: Workload> World<'c, W> {
    fn new(config: &'c SimConfig) -> Self {
        let n = config.protocol.n;
        let mut master = [0u8; 32];
        master[..8].copy_from_slice(&config.seed.to_le_bytes());
        let ring = KeyRing::new(master, n);
        let replicas = (0..n as ReplicaId)
            .map(|id| {
                let keys = ring.replica_keys(id);
                // A cold-started replica is started by a scheduled restart in `run`.
                let core = config.cold_start_spread_ms.is_none().then(|| {
                    Replica::new(config.protocol.clone(), keys.clone()).expect("validated config")
                });
                ReplicaNode {
                    core,
                    executor: Executor::new(W::service()).with_clients_max(config.clients_max),
                    coordinator: match config.checkpoint_schedule(id) {
                        Some(schedule) => Coordinator::new(config.log_mode, 0)
                            .with_checkpoints(schedule, CheckpointStart::default()),
                        None => Coordinator::new(config.log_mode, 0),
                    },
                    disk: SimStorage::new(config.seed ^ (u64::from(id) << 40) ^ 0xD15C),
                    wal: None,
                    write_scheduled: false,
                    disk_generation: 0,
                    writes_issued: 0,
                    last_delivered: 0,
                    stopped: false,
                    crashed_before: false,
                    byzantine: config
                        .byzantine
                        .iter()
                        .find(|(b, _)| *b == id)
                        .map(|(_, kind)| *kind),
                    timer_generation: 0,
                    keys,
                    incarnation: 0,
                    checkpoint_dir: SimDir::new(config.seed ^ (u64::from(id) << 40) ^ 0xC4EC),
                    checkpoint_pending: None,
                    checkpoint_durable: 0,
                    lost: false,
                    reopened_with: 0,
                    transfer_attempts: 0,
                    wiped_done: false,
                    wipe_at_restart: false,
                    state_lost: false,
                    disk_lost: false,
                    paused_core: None,
                    forgot_at_us: 0,
                    recent_delivered: VecDeque::new(),
                    orphaned: None,
                    life: 0,
                }
            })
            .collect();
        let client_config = ClientConfig {
            mode: config.protocol.mode,
            n,
            f: config.protocol.f,
            retransmit_timeout_ms: config.client_timeout_ms,
        };
        let clients = (0..config.clients)
            .map(|index| ClientNode {
                core: Client::new(
                    client_config.clone(),
                    ring.client_keys(CLIENT_ID_BASE + index as u64),
                    1,
                ),
                keys: ring.client_keys(CLIENT_ID_BASE + index as u64),
                timer_generation: 0,
                issued: 0,
                current: None,
                abandoned: BTreeMap::new(),
            })
            .collect();
        Self {
            config,
            rng: Rng::new(config.seed),
            now_us: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            replicas,
            clients,
            history: Vec::new(),
            issued: BTreeMap::new(),
            decided: BTreeMap::new(),
            decided_at_us: BTreeMap::new(),
            digests: BTreeMap::new(),
            released_in: BTreeMap::new(),
            accepted: std::collections::BTreeSet::new(),
            report: SimReport::default(),
            workload: W::new(config),
            decided_batches: BTreeMap::new(),
            transfers: BTreeMap::new(),
            seeders: BTreeMap::new(),
        }
    }

    fn schedule(&mut self, at_us: u64, event: Ev) {
        let key = self.next_event;
        self.next_event += 1;
        self.events.insert(key, event);
        self.queue.push(Reverse((at_us, key)));
    }

    fn faults_on(&self) -> bool {
        self.now_us < self.config.faults_until_ms * 1000
    }

    fn is_correct(&self, id: ReplicaId) -> bool {
        self.replicas[id as usize].byzantine.is_none()
    }

    fn partitioned(&self, a: ReplicaId, b: ReplicaId) -> bool {
        let now_ms = self.now_us / 1000;
        self.config.partitions.iter().any(|p| {
            now_ms >= p.from_ms
                && now_ms < p.until_ms
                && (p.isolated.contains(&a) != p.isolated.contains(&b))
        })
    }

    fn send_packet(&mut self, from: Endpoint, to: Endpoint, bytes: Vec<u8>) {
        let faults = self.faults_on();
        if let (Endpoint::Replica(a), Endpoint::Replica(b)) = (from, to) {
            self.report.replica_messages += 1;
            if self.partitioned(a, b) {
                return;
            }
        }
        if faults && self.rng.chance(self.config.loss_per_mille) {
            return;
        }
        let copies = if faults && self.rng.chance(self.config.duplicate_per_mille) { 2 } else { 1 };
        for copy in 0..copies {
            let delay_us = if faults {
                self.rng.range(200, self.config.delay_ms_max.max(1) * 1000)
            } else {
                self.rng.range(200, 2000)
            };
            let _ = copy;
            let to_life = match to {
                Endpoint::Replica(id) => {
                    let node = &self.replicas[id as usize];
                    node.core.is_some().then_some(node.life)
                }
                Endpoint::Client(_) => None,
            };
            self.schedule(
                self.now_us + delay_us,
                Ev::Packet { from, to, to_life, bytes: bytes.clone() },
            );
        }
    }

    fn run(&mut self) -> Result<(), String> {
        if !matches!(self.config.log_mode, LogMode::Parallel | LogMode::Batched) {
            return Err(format!(
                "log mode {} is not simulated (parallel and batched run dura-wal)",
                self.config.log_mode
            ));
        }
        for id in 0..self.replicas.len() as ReplicaId {
            if self.replicas[id as usize].core.is_some() {
                let restored = self.open_log(id)?;
                assert!(restored.is_some_and(|r| r.recovered.last_decided == 0), "a new disk");
            }
        }
        if let Some(total) = &self.config.total_crash {
            self.schedule(total.at_ms * 1000, Ev::TotalCrash);
        }
        for id in 0..self.replicas.len() as ReplicaId {
            let mut actions = Vec::new();
            if let Some(core) = self.replicas[id as usize].core.as_mut() {
                core.start(&mut actions);
            }
            self.apply_replica_actions(id, actions)?;
            if let Some(spread_ms) = self.config.cold_start_spread_ms {
                let at_us = self.rng.range(0, spread_ms * 1000);
                let event = if self.config.cold_start_fresh {
                    Ev::Start { id }
                } else {
                    Ev::Restart { id }
                };
                self.schedule(at_us, event);
            }
        }
        for client in 0..self.clients.len() {
            let start = self.rng.range(0, 50_000);
            self.schedule(start, Ev::ClientNext { client });
        }
        for crash in self.config.crashes.clone() {
            self.schedule(crash.at_ms * 1000, Ev::Crash { id: crash.replica });
            if let Some(restart) = crash.restart_ms {
                self.schedule(
                    restart.max(crash.at_ms + 1) * 1000,
                    Ev::Restart { id: crash.replica },
                );
            }
        }
        let deadline_us = (self.config.faults_until_ms + self.config.liveness_ms) * 1000;
        let mut processed = 0u64;
        let mut drain_until_us = None;
        while let Some(Reverse((at_us, key))) = self.queue.pop() {
            if drain_until_us.is_none() && self.all_done() {
                // Let lagging replicas catch up once faults are over, then check them.
                drain_until_us =
                    Some(self.now_us.max(self.config.faults_until_ms * 1000) + DRAIN_US);
            }
            if drain_until_us.is_some_and(|until| at_us > until) {
                break;
            }
            processed += 1;
            if processed > self.config.events_max {
                return Err(format!(
                    "event budget of {} exhausted (livelock?)",
                    self.config.events_max
                ));
            }
            if at_us > deadline_us {
                self.now_us = deadline_us;
                break;
            }
            self.now_us = at_us;
            let event = self.events.remove(&key).expect("every queued key has an event");
            self.dispatch(event)?;
        }
        if !self.all_done() {
            let pending: Vec<String> = self
                .clients
                .iter()
                .enumerate()
                .filter(|(_, c)| c.current.is_some() || c.issued < self.config.ops_per_client)
                .map(|(i, c)| {
                    format!("client {i}: {} issued, outstanding {:?}", c.issued, c.current)
                })
                .collect();
            let states = self.describe_replicas();
            let what = format!(
                "operations still pending {} ms after faults stopped: {}; replicas: {}",
                self.config.liveness_ms,
                pending.join("; "),
                states
            );
            return Err(match self.bft_limit() {
                Some(why) => format!("{BFT_LIMIT_PREFIX} {why}: {what}"),
                None => format!("liveness: {what}"),
            });
        }
        let service_digests: BTreeMap<u64, [u8; 32]> =
            self.digests.iter().map(|(&aid, &(service, _))| (aid, service)).collect();
        let agreed = Agreed {
            batches: &self.decided_batches,
            digests: &service_digests,
            clients_max: self.config.clients_max,
        };
        self.report.service_counts = self.workload.check(&self.history, &agreed)?;
        if let Some((id, _)) = self.transfers.iter().next() {
            return Err(format!(
                "state transfer: replica {id} is still transferring {} ms after faults stopped; \
                 replicas: {}",
                DRAIN_US / 1000,
                self.describe_replicas()
            ));
        }
        // A decision the others reached just now may still be on its way (seed 15266 of
        // the BFT total-crash swarm: a leader change decided an agreement 1 ms before the
        // check): only those at least `CATCH_UP_GRACE_US` old must have reached everyone.
        let settled_us = self.now_us.saturating_sub(CATCH_UP_GRACE_US);
        let decided_max = self
            .decided_at_us
            .iter()
            .filter(|&(_, &at)| at <= settled_us)
            .map(|(&aid, _)| aid)
            .max()
            .unwrap_or(0);
        // Where each correct replica's catch-up window starts (None: down or empty).
        let windows: Vec<Option<u64>> = self
            .replicas
            .iter()
            .map(|node| {
                node.core.as_ref().filter(|_| node.byzantine.is_none())?.catch_up_window_first()
            })
            .collect();
        let answers_needed = self.config.protocol.weak_quorum();
        for node in &self.replicas {
            if let Some(core) = &node.core
                && node.byzantine.is_none()
                && core.last_decided() < decided_max
            {
                // Behind what enough correct peers still hold (their logs were truncated
                // after checkpoints): catch-up cannot serve it, state transfer must.
                let next = core.last_decided() + 1;
                let servers = windows
                    .iter()
                    .enumerate()
                    .filter(|(peer, first)| {
                        *peer != core.id() as usize && first.is_some_and(|f| f <= next)
                    })
                    .count();
                if servers < answers_needed && self.config.checkpoints.is_some() {
                    self.report.state_transfer_needed += 1;
                    continue;
                }
                let what = format!(
                    "replica {} is at agreement {} of {decided_max} {} ms after faults stopped; replicas: {}",
                    core.id(),
                    core.last_decided(),
                    DRAIN_US / 1000,
                    self.describe_replicas()
                );
                return Err(match self.bft_limit() {
                    Some(why) => format!("{BFT_LIMIT_PREFIX} {why}: catch-up: {what}"),
                    None => format!("catch-up: {what}"),
                });
            }
        }
        self.report.end_ms = self.now_us / 1000;
        self.report.ops_finished_ms =
            self.history.iter().filter_map(|op| op.completed_us).max().unwrap_or(0) / 1000;
        self.report.ops_completed =
            self.history.iter().filter(|op| op.completed_us.is_some()).count();
        self.report.last_decided =
            self.replicas.iter().map(|r| r.core.as_ref().map(|c| c.last_decided())).collect();
        self.report.decided_max = self.decided.keys().next_back().copied().unwrap_or(0);
        Ok(())
    }

    /// BFT: the stated liveness limit of unpersisted votes (ARCHITECTURE.md, "votes are
    /// not persisted"), if the run is stuck there; None: a stall here is a failure. Three
    /// cases, each needing a replica Byzantine, down for good (not one transferring), or
    /// silent on its peers' state after giving a suffix up ("BFT with disks lost"):
    /// - after a crash of every replica, the newest agreement a correct replica logged
    ///   (a down one's disk included) is held by f or fewer running correct replicas.
    ///   The others cannot decide it anew (a client may have seen it complete, its other
    ///   copy on the faulty replica's disk) nor take the lone copy (with MACs it is only
    ///   its holder's word, and its holder may be the faulty one), so they wait for the
    ///   faulty replica;
    /// - after a crash of every replica, a Byzantine replica claims an agreement above
    ///   that, which f or fewer replicas hold, and a correct replica still recovers: it
    ///   cannot tell the claim from a correct replica's lone copy either;
    /// - the agreement the correct replicas are stuck at is open while more than f
    ///   replicas are Byzantine, down, or correct but restarted since the agreement before
    ///   it was decided (their WRITEs and ACCEPTs forgotten): a leader change's choice
    ///   rule then cannot tell a value that one replica accepted from a Byzantine claim
    ///   (it needs f+1 remembered WRITEs for it), nor free it. The stall shows as leader
    ///   changes that never end: every correct replica is past regency n (each replica
    ///   has led once). A stall with the regencies still is not this one.
    fn bft_limit(&self) -> Option<String> {
        if self.config.protocol.mode != Mode::Bft {
            return None;
        }
        let f = self.config.protocol.f;
        let down = |id: usize| {
            self.replicas[id].core.is_none() && !self.transfers.contains_key(&(id as ReplicaId))
        };
        let faulty = (0..self.replicas.len())
            .filter(|&id| self.replicas[id].byzantine.is_some() || down(id))
            .count();
        // A replica back on its peers' state after giving a suffix up keeps silent in
        // recovery (one of the f down); one whose disk was lost answers, saying so, and
        // its peers go on without its log: a stall with it is a failure.
        let silent = (0..self.replicas.len())
            .filter(|&id| {
                let node = &self.replicas[id];
                node.byzantine.is_none() && !down(id) && node.state_lost && !node.disk_lost
            })
            .count();
        if faulty + silent == 0 {
            return None;
        }
        let decided: Vec<u64> = self
            .replicas
            .iter()
            .filter(|r| r.byzantine.is_none())
            .filter_map(|r| r.core.as_ref().map(Replica::last_decided))
            .collect();
        // The newest agreement a correct replica logged, the disks of those down
        // included (one that answered with it and then went down for good holds it
        // there), and how many running correct replicas hold it.
        let newest = self
            .replicas
            .iter()
            .filter(|r| r.byzantine.is_none() && !r.lost)
            .map(|r| r.core.as_ref().map_or_else(|| r.logged_max(), Replica::last_decided))
            .max()?;
        let holders = decided.iter().filter(|&&d| d >= newest).count();
        if self.report.total_crashes > 0 && holders <= f {
            return Some(format!(
                "agreement {newest} is held by {holders} correct replica(s) (f = {f}), {faulty} \
                 replica(s) Byzantine or down, {silent} silent on its peers' state after \
                 giving a suffix up"
            ));
        }
        // The same after a crash of all, the other way round: a Byzantine replica says
        // it logged more than f+1 replicas did, and another faulty one never answers.
        // Recovery cannot tell that claim from a correct replica's lone copy (the others
        // might be the liars), so it waits for every answer, and the replicas that
        // resumed without it cannot form a quorum.
        let claimed = self
            .replicas
            .iter()
            .filter(|r| r.byzantine.is_some())
            .filter_map(|r| r.core.as_ref().map(Replica::last_decided))
            .max()
            .unwrap_or(0);
        let recovering = self
            .replicas
            .iter()
            .filter(|r| r.byzantine.is_none())
            .filter_map(|r| r.core.as_ref())
            .any(Replica::is_recovering);
        // More than f replicas down, Byzantine or silent after giving a suffix up (each
        // one of the f): a replica that recovers after the others resumed hears fewer
        // than the n-f-1 answers it needs, and the others wait for it to install the
        // next regency (bft 7 --total-crash seed 14224: two down for good, one silent).
        if self.report.total_crashes > 0 && faulty + silent > f && recovering {
            return Some(format!(
                "a correct replica recovers with {faulty} replica(s) Byzantine or down and \
                 {silent} silent on its peers' state after giving a suffix up (f = {f})"
            ));
        }
        let claimers = self
            .replicas
            .iter()
            .filter_map(|r| r.core.as_ref().map(Replica::last_decided))
            .filter(|&d| d >= claimed)
            .count();
        if self.report.total_crashes > 0 && claimed > newest && claimers <= f && recovering {
            return Some(format!(
                "agreement {claimed} is claimed by {claimers} replica(s), none of them correct \
                 (f = {f}), while a correct replica recovers and {faulty} replica(s) are \
                 Byzantine or down"
            ));
        }
        let cycling = self
            .replicas
            .iter()
            .filter(|r| r.byzantine.is_none())
            .filter_map(|r| r.core.as_ref())
            .all(|core| core.regency() >= self.replicas.len() as u64);
        if !cycling {
            return None;
        }
        let open = decided.iter().copied().min()? + 1;
        let since = self.decided_at_us.get(&(open - 1)).copied().unwrap_or(0);
        let forgot = (0..self.replicas.len())
            .filter(|&id| {
                let node = &self.replicas[id];
                node.byzantine.is_none() && !down(id) && node.forgot_at_us > since
            })
            .count();
        (faulty + forgot > f).then(|| {
            format!(
                "agreement {open} is open with {faulty} replica(s) Byzantine or down and {forgot} \
                 correct one(s) restarted since agreement {} was decided (f = {f})",
                open - 1
            )
        })
    }

    fn describe_replicas(&self) -> String {
        let states: Vec<String> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(id, r)| match &r.core {
                Some(core) => format!(
                    "r{id}: decided {} regency {} pending {}{}{}",
                    core.last_decided(),
                    core.regency(),
                    core.pending_requests(),
                    if core.is_recovering() { " recovering" } else { "" },
                    if r.byzantine.is_some() { " byzantine" } else { "" },
                ),
                None => format!("r{id}: crashed"),
            })
            .collect();
        states.join(", ")
    }

    fn all_done(&self) -> bool {
        self.clients.iter().all(|c| c.current.is_none() && c.issued >= self.config.ops_per_client)
    }

    fn dispatch(&mut self, event: Ev) -> Result<(), String> {
        match event {
            Ev::Packet { from, to, to_life, bytes } => match to {
                Endpoint::Replica(id) => {
                    if to_life.is_some_and(|life| life != self.replicas[id as usize].life) {
                        return Ok(()); // its connection died with that life
                    }
                    self.replica_receive(id, from, &bytes)
                }
                Endpoint::Client(client) => {
                    if let Ok(reply) = Reply::from_bytes(&bytes) {
                        if !self.clients[client].abandoned.is_empty() {
                            self.abandoned_reply(client, &reply)?;
                        }
                        let mut actions = Vec::new();
                        self.clients[client].core.handle(ClientEvent::Reply(reply), &mut actions);
                        self.apply_client_actions(client, actions)?;
                    }
                    Ok(())
                }
            },
            Ev::ReplicaTick { id, generation } => {
                let node = &mut self.replicas[id as usize];
                if node.timer_generation != generation {
                    return Ok(());
                }
                let mut actions = Vec::new();
                let clock_ms = SIM_EPOCH_MS + self.now_us / 1000;
                if let Some(core) = node.core.as_mut() {
                    core.observe_clock(clock_ms);
                    core.handle(Event::TimerFired(crate::protocol::TimerKind::Tick), &mut actions);
                }
                self.apply_replica_actions(id, actions)
            }
            Ev::ClientTimer { client, generation } => {
                if self.clients[client].timer_generation == generation {
                    self.report.client_retransmissions += 1;
                    let mut actions = Vec::new();
                    self.clients[client].core.handle(ClientEvent::TimerFired, &mut actions);
                    self.apply_client_actions(client, actions)?;
                }
                Ok(())
            }
            Ev::ClientNext { client } => self.client_next(client),
            Ev::ClientGiveUp { client, sequence } => self.client_give_up(client, sequence),
            Ev::Crash { id } => {
                self.crash(id);
                Ok(())
            }
            Ev::DiskWrite { id, generation } => self.disk_write(id, generation),
            Ev::CheckpointWrite { id, generation } => self.checkpoint_write(id, generation),
            Ev::TotalCrash => {
                let total = self.config.total_crash.clone().expect("scheduled only when planned");
                if self.config.trace {
                    eprintln!("{:>9} us TOTAL CRASH, disks lost: {:?}", self.now_us, total.lost);
                }
                self.report.total_crashes += 1;
                for id in 0..self.replicas.len() as ReplicaId {
                    if total.lost.contains(&id) {
                        // Its disk is gone: it never runs again (a replacement would join
                        // as a new member with an empty disk).
                        if self.replicas[id as usize].core.is_some()
                            || self.transfers.contains_key(&id)
                        {
                            self.crash(id);
                        }
                        self.replicas[id as usize].lost = true;
                        self.report.lost_disks += 1;
                        continue;
                    }
                    // A replica transferring state is a running process too.
                    if self.replicas[id as usize].core.is_none()
                        && !self.transfers.contains_key(&id)
                    {
                        continue;
                    }
                    if total.wiped == Some(id) {
                        // Replaced while down; not once more if it was replaced before.
                        let node = &mut self.replicas[id as usize];
                        node.wipe_at_restart = !node.wiped_done;
                        if node.wipe_at_restart {
                            self.report.replaced_in_total_crash += 1;
                        }
                    }
                    self.crash(id);
                    let after_us = self.rng.range(1_000, total.restart_spread_ms * 1000 + 1_000);
                    self.schedule(self.now_us + after_us, Ev::Restart { id });
                }
                // Decisions that no remaining disk holds and no client saw complete are
                // gone with the replicas' memory; the cluster may decide those agreements
                // anew. Any other one must come back exactly as it was.
                // In BFT mode a decision fewer than f+1 disks hold is not kept either: the
                // replicas that logged it discard it (`Action::DiscardUnconfirmed`); one
                // that kept it would execute on from a state the others do not have, and
                // the digest check below catches it.
                let mut logged: Vec<u64> = self
                    .replicas
                    .iter()
                    .filter(|node| !node.lost && !node.wipe_at_restart)
                    .map(ReplicaNode::<W>::logged_max)
                    .collect();
                logged.sort_unstable_by(|a, b| b.cmp(a));
                let survives = match self.config.protocol.mode {
                    Mode::Crash => logged.first().copied().unwrap_or(0),
                    Mode::Bft => {
                        logged.get(self.config.protocol.weak_quorum() - 1).copied().unwrap_or(0)
                    }
                };
                let accepted = &self.accepted;
                self.decided.retain(|id, _| *id <= survives || accepted.contains(id));
                let decided = &self.decided;
                self.decided_at_us.retain(|id, _| decided.contains_key(id));
                self.decided_batches.retain(|id, _| *id <= survives || accepted.contains(id));
                self.digests.retain(|id, _| *id <= survives || accepted.contains(id));
                Ok(())
            }
            Ev::Restart { id } => self.restart(id),
            Ev::Transfer(event) => self.transfer_event(event),
            Ev::Start { id } => self.start_fresh(id),
        }
    }

    fn client_next(&mut self, client: usize) -> Result<(), String> {
        let node = &self.clients[client];
        if node.current.is_some() || node.issued >= self.config.ops_per_client {
            return Ok(());
        }
        let next = self.workload.next_op(client, &mut self.rng);
        self.clients[client].issued += 1;
        let sequence = self.invoke(client, next.operation)?;
        if let Some(patience_us) = next.patience_us {
            self.schedule(self.now_us + patience_us, Ev::ClientGiveUp { client, sequence });
        }
        Ok(())
    }

    /// The client invokes `operation` (it must be idle); returns its sequence number.
    fn invoke(&mut self, client: usize, operation: Vec<u8>) -> Result<u64, String> {
        let node = &mut self.clients[client];
        let mut actions = Vec::new();
        let sequence = node.core.invoke(operation.clone(), &mut actions).expect("client is idle");
        node.current = Some((sequence, self.history.len()));
        let client_id = CLIENT_ID_BASE + client as u64;
        self.issued.insert((client_id, sequence), operation.clone());
        self.history.push(HistoryEntry {
            client,
            client_id,
            sequence,
            invoked_us: self.now_us,
            completed_us: None,
            operation,
            result: None,
            confirmed_at_completion: None,
        });
        self.apply_client_actions(client, actions)?;
        Ok(sequence)
    }

    /// The client stops waiting for `sequence` (still outstanding): it goes on with a new
    /// core whose sequence numbers follow, as a client process that moved on, keeps
    /// listening for the old request's answer, and sends what the workload does after
    /// giving up (a cancel).
    fn client_give_up(&mut self, client: usize, sequence: u64) -> Result<(), String> {
        let node = &mut self.clients[client];
        let Some((current, index)) = node.current else { return Ok(()) };
        if current != sequence {
            return Ok(());
        }
        let config = ClientConfig {
            mode: self.config.protocol.mode,
            n: self.config.protocol.n,
            f: self.config.protocol.f,
            retransmit_timeout_ms: self.config.client_timeout_ms,
        };
        let mut core = Client::new(config, node.keys.clone(), sequence + 1);
        core.learn_regency(node.core.regency_hint());
        node.core = core;
        node.timer_generation += 1;
        node.current = None;
        node.abandoned.insert(sequence, (index, BTreeMap::new()));
        if self.config.trace {
            eprintln!("{:>9} us client {client} GIVES UP on {sequence}", self.now_us);
        }
        let operation = self.workload.give_up(client, sequence);
        self.invoke(client, operation)?;
        Ok(())
    }

    /// An authentic reply to a request its client gave up on: f+1 matching ones complete
    /// it.
    fn abandoned_reply(&mut self, client: usize, reply: &Reply) -> Result<(), String> {
        let needed = self.config.protocol.mode.reply_quorum(self.config.protocol.f);
        let node = &mut self.clients[client];
        let Some(key) = node.keys.replicas.get(reply.replica as usize) else { return Ok(()) };
        if reply.client_id != node.keys.client_id
            || !reply.verify(key)
            || reply.status != ReplyStatus::Executed
        {
            return Ok(());
        }
        let Some((index, replies)) = node.abandoned.get_mut(&reply.sequence) else {
            return Ok(());
        };
        let index = *index;
        replies.insert(reply.replica, (reply.decided, reply.result.clone()));
        let matching = replies
            .values()
            .filter(|(decided, result)| *decided == reply.decided && *result == reply.result)
            .count();
        if matching < needed {
            return Ok(());
        }
        node.abandoned.remove(&reply.sequence);
        self.complete(client, reply.sequence, index, reply.result.clone())
    }

    /// The client accepted `result` for its request `sequence` (history entry `index`):
    /// the durability promise is checked and the history records it.
    fn complete(
        &mut self,
        client: usize,
        sequence: u64,
        index: usize,
        result: Vec<u8>,
    ) -> Result<(), String> {
        if let Some(&agreement_id) =
            self.released_in.get(&(CLIENT_ID_BASE + client as u64, sequence))
        {
            // The promise of a completed request: f+1 disks hold it, so it
            // survives a crash of every replica and the loss of any f disks.
            let replaced = |node: &ReplicaNode<W>| node.wiped_done || node.wipe_at_restart;
            let holding = self
                .replicas
                .iter()
                .filter(|node| !node.wipe_at_restart && node.logged_max() >= agreement_id)
                .count();
            // A disk already replaced (wiped), or lost in a crash of all and replaced
            // at its restart, is one of the f the promise allows to lose.
            let wiped = self
                .replicas
                .iter()
                .filter(|node| {
                    replaced(node) && (node.wipe_at_restart || node.logged_max() < agreement_id)
                })
                .count();
            let f = self.config.protocol.f;
            if holding + wiped <= f {
                return Err(format!(
                    "durability: client {client} saw request {sequence} complete while {holding} disks hold its agreement {agreement_id} (f = {f}): losing them loses it"
                ));
            }
            self.accepted.insert(agreement_id);
        }
        let mut holds: Vec<u64> = self
            .replicas
            .iter()
            .map(|node| {
                if node.wiped_done || node.wipe_at_restart || node.lost {
                    u64::MAX
                } else {
                    node.logged_max()
                }
            })
            .collect();
        holds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = holds.get(self.config.protocol.f).copied().unwrap_or(0);
        let entry = &mut self.history[index];
        entry.confirmed_at_completion = Some(confirmed);
        if entry.completed_us.is_some() {
            return Err(format!(
                "exactly once: client {client} saw request {sequence} complete twice"
            ));
        }
        entry.completed_us = Some(self.now_us);
        entry.result = Some(result);
        Ok(())
    }

    fn apply_client_actions(
        &mut self,
        client: usize,
        actions: Vec<ClientAction>,
    ) -> Result<(), String> {
        for action in actions {
            match action {
                ClientAction::Send { to, request } => self.send_packet(
                    Endpoint::Client(client),
                    Endpoint::Replica(to),
                    request.to_bytes(),
                ),
                ClientAction::Broadcast { request } => {
                    let bytes = request.to_bytes();
                    for to in 0..self.replicas.len() as ReplicaId {
                        self.send_packet(
                            Endpoint::Client(client),
                            Endpoint::Replica(to),
                            bytes.clone(),
                        );
                    }
                }
                ClientAction::SetTimer { after_ms } => {
                    let node = &mut self.clients[client];
                    node.timer_generation += 1;
                    let generation = node.timer_generation;
                    self.schedule(
                        self.now_us + after_ms * 1000,
                        Ev::ClientTimer { client, generation },
                    );
                }
                ClientAction::CancelTimer => self.clients[client].timer_generation += 1,
                ClientAction::Completed { sequence, result } => {
                    let node = &mut self.clients[client];
                    let Some((current, index)) = node.current else { continue };
                    assert_eq!(current, sequence, "the client completes its outstanding request");
                    node.current = None;
                    self.complete(client, sequence, index, result)?;
                    let think = self.rng.range(0, 150_000);
                    self.schedule(self.now_us + think, Ev::ClientNext { client });
                }
                ClientAction::Expired { sequence, .. } => {
                    // Refused: the replicas' reply caches evicted this client. Its
                    // outcome stays unknown to the oracle (it may have run before), and
                    // the client goes on; its core already moved its sequence numbers to
                    // a session time the cluster accepts.
                    let node = &mut self.clients[client];
                    let Some((current, _)) = node.current else { continue };
                    assert_eq!(current, sequence, "the client's outstanding request expired");
                    node.current = None;
                    self.report.ops_expired += 1;
                    if self.config.trace {
                        eprintln!("{:>9} us client {client} EXPIRED {sequence}", self.now_us);
                    }
                    self.schedule(self.now_us, Ev::ClientNext { client });
                }
            }
        }
        Ok(())
    }

    fn replica_receive(
        &mut self,
        id: ReplicaId,
        from: Endpoint,
        bytes: &[u8],
    ) -> Result<(), String> {
        let clock_ms = SIM_EPOCH_MS + self.now_us / 1000;
        let node = &mut self.replicas[id as usize];
        let Some(core) = node.core.as_mut() else { return Ok(()) };
        core.observe_clock(clock_ms);
        let event = match from {
            Endpoint::Replica(sender) => {
                let keys = &node.keys;
                match open_frame(bytes, |peer| keys.link(peer)) {
                    Ok((claimed, message)) if claimed == sender => {
                        Event::Message { from: claimed, message }
                    }
                    _ => return Ok(()),
                }
            }
            Endpoint::Client(_) => match ClientRequest::from_bytes(bytes) {
                Ok(request) => Event::ClientRequest { request, digest: None },
                Err(_) => return Ok(()),
            },
        };
        let mut actions = Vec::new();
        core.handle(event, &mut actions);
        self.apply_replica_actions(id, actions)
    }

    fn apply_replica_actions(&mut self, id: ReplicaId, actions: Vec<Action>) -> Result<(), String> {
        let node = &mut self.replicas[id as usize];
        if node.state_lost && node.core.as_ref().is_some_and(|core| !core.holds_lost_state()) {
            // As the runtime's state-from-peers flag: gone once the cluster resumed
            // with it, kept across its crashes until then.
            node.state_lost = false;
            node.disk_lost = false;
        }
        for action in actions {
            match action {
                Action::Send { to, message } => self.send_replica_message(id, to, message),
                Action::Broadcast { message } => {
                    for to in 0..self.replicas.len() as ReplicaId {
                        if to != id {
                            self.send_replica_message(id, to, message.clone());
                        }
                    }
                }
                Action::Deliver { decisions } => {
                    if self.config.trace {
                        let ids: Vec<u64> = decisions.iter().map(|d| d.agreement_id).collect();
                        eprintln!("{:>9} us r{id} DELIVER {ids:?}", self.now_us);
                    }
                    self.deliver(id, decisions)?
                }
                Action::ServeFromLog { to, first, last, first_held } => {
                    let node = &self.replicas[id as usize];
                    let answers = match (self.config.catch_up_from_log, node.wal.as_ref()) {
                        (true, Some(wal)) => {
                            let ask = crate::runtime::catchup::Ask { to, first, last, first_held };
                            let log = crate::runtime::filelog::WalPieces(wal.reader());
                            crate::runtime::catchup::answer(&log, ask, &mut Default::default())
                        }
                        _ => vec![Message::Gone { first_held }],
                    };
                    self.report.catch_up_from_log +=
                        answers.iter().filter(|m| matches!(m, Message::Decided { .. })).count()
                            as u64;
                    for message in answers {
                        self.send_replica_message(id, to, message);
                    }
                }
                Action::TransferNeeded { last_decided, first_held } => {
                    if self.config.trace {
                        eprintln!(
                            "{:>9} us r{id} TRANSFER NEEDED at {last_decided}, peers from {first_held}",
                            self.now_us
                        );
                    }
                    self.report.transfer_requests += 1;
                    let node = &self.replicas[id as usize];
                    if node.byzantine.is_none() && !self.transfers.contains_key(&id) {
                        // As the runtime: the replica stops (cleanly: nothing is torn)
                        // and takes the state from its peers; its protocol core is kept
                        // (same process) and goes on from the installed state with its
                        // votes. What it still had to do is dropped.
                        // Its log stays open (it serves other leechers from it meanwhile,
                        // as the runtime's data server does); it is closed cleanly when
                        // the transfer ends ([`World::resume_after_transfer`]).
                        let node = &mut self.replicas[id as usize];
                        node.paused_core = node.core.take();
                        node.life += 1;
                        node.timer_generation += 1;
                        return self.start_transfer(id);
                    }
                }
                Action::DiscardUnconfirmed { confirmed, logged } => {
                    if self.config.trace {
                        eprintln!(
                            "{:>9} us r{id} DISCARD unconfirmed agreements {}..={logged}",
                            self.now_us,
                            confirmed + 1
                        );
                    }
                    // An agreement a client saw complete must stay on f+1 disks without
                    // this one.
                    let f = self.config.protocol.f;
                    let others_holding = |a: u64| {
                        self.replicas
                            .iter()
                            .enumerate()
                            .filter(|&(other, node)| {
                                other != id as usize && !node.lost && node.logged_max() >= a
                            })
                            .count()
                    };
                    if let Some(seen) = (confirmed + 1..=logged)
                        .find(|&a| self.accepted.contains(&a) && others_holding(a) <= f)
                    {
                        return Err(format!(
                            "durability: replica {id} discards agreement {seen}, which a client \
                             saw complete, while {} other disks hold it (f = {f})",
                            others_holding(seen)
                        ));
                    }
                    self.report.suffixes_discarded += 1;
                    if self.replicas[id as usize].byzantine.is_none() {
                        // Decisions of the discarded range that no other correct replica
                        // running now executed, and no client saw complete, leave the
                        // agreed order with it: every replica that decided them crashed
                        // since, and the cluster may decide them anew. (They are not
                        // forgotten at a crash of all when more than f replicas crash
                        // one after another instead.)
                        for a in confirmed + 1..=logged {
                            let executed_elsewhere =
                                self.replicas.iter().enumerate().any(|(other, node)| {
                                    other != id as usize
                                        && node.byzantine.is_none()
                                        && node.core.is_some()
                                        && node.coordinator.last_executed() >= a
                                });
                            if !executed_elsewhere && !self.accepted.contains(&a) {
                                self.decided.remove(&a);
                                self.decided_at_us.remove(&a);
                                self.decided_batches.remove(&a);
                                self.digests.remove(&a);
                            }
                        }
                        let decided = &self.decided;
                        self.decided_batches.retain(|a, _| {
                            !(confirmed + 1..=logged).contains(a) || decided.contains_key(a)
                        });
                        // As the runtime: the replica stops, sets its log and checkpoints
                        // aside and comes back through state transfer, like a replaced
                        // disk (its member marker stays).
                        self.crash_with(id, false);
                        let seed = self.rng.next_u64();
                        let node = &mut self.replicas[id as usize];
                        node.orphaned = None;
                        node.recent_delivered.clear();
                        node.disk = SimStorage::new(seed);
                        node.checkpoint_dir = SimDir::new(seed ^ 0xC4EC);
                        node.reopened_with = 0;
                        node.checkpoint_durable = 0;
                        node.state_lost = true;
                        // Given up, not lost with a disk: the mark keeps it silent.
                        node.disk_lost = false;
                        return self.start_transfer(id);
                    }
                }
                Action::ReplyFromCache { client_id, sequence } => {
                    // Through the coordinator, as the runtime's exec stage does: a cached
                    // reply leaves once the log holds everything executed before it.
                    let node = &mut self.replicas[id as usize];
                    let last_executed = node.coordinator.last_executed();
                    if let Some(reply) = crate::durability::retransmission_reply(
                        &node.executor,
                        client_id,
                        sequence,
                        last_executed,
                    ) {
                        let mut outputs = Vec::new();
                        node.coordinator.handle(Input::CachedReply(reply), &mut outputs);
                        self.carry_out(id, outputs)?;
                    }
                }
                Action::SetTimer { after_ms, .. } => {
                    let node = &mut self.replicas[id as usize];
                    node.timer_generation += 1;
                    let generation = node.timer_generation;
                    self.schedule(
                        self.now_us + after_ms * 1000,
                        Ev::ReplicaTick { id, generation },
                    );
                }
                Action::RegencyInstalled { regency, .. } => {
                    if self.config.trace {
                        eprintln!("{:>9} us r{id} REGENCY {regency}", self.now_us);
                    }
                    if self.is_correct(id) {
                        self.report.regency_max = self.report.regency_max.max(regency);
                    }
                }
            }
        }
        Ok(())
    }

    fn send_reply(&mut self, id: ReplicaId, out: &ReplyOut) {
        let (client_id, sequence, mut result) = (out.client_id, out.sequence, out.reply.clone());
        let node = &self.replicas[id as usize];
        match node.byzantine {
            Some(Byzantine::Mute) => return,
            Some(Byzantine::Garbage | Byzantine::WrongVote) => {
                result = 0xBAD_u64.to_le_bytes().to_vec()
            }
            _ => {}
        }
        let regency = node.core.as_ref().map_or(0, Replica::regency);
        let key = node.keys.client_key(client_id);
        let (status, decided) = (out.status, out.decided);
        let reply =
            Reply::signed_with(&key, id, client_id, sequence, regency, status, decided, result);
        let client = (client_id - CLIENT_ID_BASE) as usize;
        if client < self.clients.len() {
            self.send_packet(Endpoint::Replica(id), Endpoint::Client(client), reply.to_bytes());
        }
    }

    fn send_replica_message(&mut self, from: ReplicaId, to: ReplicaId, message: Message) {
        if self.config.trace {
            let text = format!("{message:?}");
            let cut = text.char_indices().nth(200).map_or(text.len(), |(at, _)| at);
            eprintln!("{:>9} us r{from} -> r{to} {}", self.now_us, &text[..cut]);
        }
        let node = &self.replicas[from as usize];
        let key = *node.keys.link(to).expect("peer exists");
        let message = match node.byzantine {
            None => message,
            Some(Byzantine::Mute) => return,
            Some(Byzantine::Equivocate) => match message {
                Message::Propose { regency, agreement_id, batch } if to % 2 == 1 => {
                    Message::Propose { regency, agreement_id, batch: variant(&batch) }
                }
                // As new leader it tries to replace the value the STOPDATAs force.
                Message::Sync { regency, agreement_id, members, batch } => {
                    Message::Sync { regency, agreement_id, members, batch: variant(&batch) }
                }
                other => other,
            },
            Some(Byzantine::WrongVote) => match message {
                Message::Write { regency, agreement_id, .. } => {
                    Message::Write { regency, agreement_id, hash: random_hash(&mut self.rng) }
                }
                Message::Accept { regency, agreement_id, .. } => {
                    Message::Accept { regency, agreement_id, hash: random_hash(&mut self.rng) }
                }
                // It also says its disk was lost, to lower the bar of the others'
                // recovery (a Byzantine replica spends its own fault so). (Answering
                // FETCHes with another batch too stalls catch-up: ARCHITECTURE.md,
                // "BFT with disks lost", found and not fixed.)
                mut status @ Message::Status { .. } => {
                    if let Message::Status { disk_lost, .. } = &mut status {
                        *disk_lost = true;
                    }
                    status
                }
                other => other,
            },
            Some(Byzantine::Garbage) => {
                let roll = self.rng.range(0, 9);
                if roll < 2 {
                    // Random bytes with a valid MAC: the decoder must reject them.
                    let len = self.rng.range(0, 80) as usize;
                    let mut frame = from.to_le_bytes().to_vec();
                    frame.extend(self.rng.bytes(len));
                    let tag = crate::protocol::auth::mac(&key, &[&frame]);
                    frame.extend_from_slice(&tag);
                    self.send_packet(Endpoint::Replica(from), Endpoint::Replica(to), frame);
                    return;
                } else if roll < 3 {
                    // A frame claiming to come from another replica: the MAC fails.
                    let claimed = (from + 1) % self.replicas.len() as ReplicaId;
                    let frame = seal_frame(&key, claimed, &message);
                    self.send_packet(Endpoint::Replica(from), Endpoint::Replica(to), frame);
                    return;
                } else if roll < 6 {
                    random_message(&mut self.rng, self.replicas.len())
                } else {
                    message
                }
            }
        };
        let frame = seal_frame(&key, from, &message);
        self.send_packet(Endpoint::Replica(from), Endpoint::Replica(to), frame);
    }

    fn deliver(&mut self, id: ReplicaId, decisions: Vec<Decision>) -> Result<(), String> {
        let correct = self.is_correct(id);
        for decision in decisions {
            let node = &mut self.replicas[id as usize];
            let expected = node.last_delivered + 1;
            if decision.agreement_id != expected {
                return Err(format!(
                    "replica {id} delivered agreement {} but expected {expected}",
                    decision.agreement_id
                ));
            }
            if decision.batch.hash() != decision.hash {
                return Err(format!(
                    "replica {id}: decision {} hash mismatch",
                    decision.agreement_id
                ));
            }
            node.last_delivered = decision.agreement_id;
            if node.recent_delivered.len() == RECENT_DELIVERIES_MAX {
                node.recent_delivered.pop_front();
            }
            node.recent_delivered.push_back((decision.agreement_id, decision.hash));
            if decision.regency == 0 && decision.proof.len() < self.config.protocol.quorum() {
                self.report.fetched_decisions += 1;
            }
            if correct {
                if let Some(orphan) = self.replicas[id as usize].orphaned {
                    return Err(format!(
                        "agreement: replica {id} delivered agreement {} while it holds agreement \
                         {orphan} as the cluster did not decide it (more than f replicas \
                         crashed, and the cluster decided it anew): it had to discard it",
                        decision.agreement_id
                    ));
                }
                match self.decided.get(&decision.agreement_id) {
                    Some(hash) if *hash != decision.hash => {
                        let aid = decision.agreement_id;
                        if !self.redecided_after_crashes(aid) {
                            return Err(format!(
                                "agreement: replica {id} decided a different batch for agreement {aid}{}",
                                if self.accepted.contains(&aid) {
                                    " (a client saw the first one complete: an acknowledged request is lost)"
                                } else {
                                    ""
                                }
                            ));
                        }
                        // More than f replicas lost their votes since the first decision,
                        // which no client saw complete: the cluster may decide it anew,
                        // and every replica that delivered the first one is orphaned.
                        let old = *hash;
                        for (other, node) in self.replicas.iter_mut().enumerate() {
                            if other != id as usize
                                && node.byzantine.is_none()
                                && node.recent_delivered.contains(&(aid, old))
                            {
                                node.orphaned = Some(aid);
                            }
                        }
                        if self.config.trace {
                            eprintln!("{:>9} us r{id} REDECIDES agreement {aid}", self.now_us);
                        }
                        self.decided.split_off(&aid);
                        self.decided_at_us.split_off(&aid);
                        self.decided_batches.split_off(&aid);
                        self.digests.split_off(&aid);
                        self.decided.insert(aid, decision.hash);
                        self.decided_at_us.insert(aid, self.now_us);
                        self.decided_batches.insert(aid, Arc::clone(&decision.batch));
                    }
                    Some(_) => {}
                    None => {
                        self.decided_at_us.insert(decision.agreement_id, self.now_us);
                        self.decided.insert(decision.agreement_id, decision.hash);
                        self.decided_batches
                            .insert(decision.agreement_id, Arc::clone(&decision.batch));
                    }
                }
                for request in &decision.batch.requests {
                    match self.issued.get(&(request.client_id, request.sequence)) {
                        Some(operation) if *operation == request.operation => {}
                        _ => {
                            return Err(format!(
                                "validity: replica {id} delivered request ({}, {}) no client sent",
                                request.client_id, request.sequence
                            ));
                        }
                    }
                }
            }
            let node = &mut self.replicas[id as usize];
            if !node.coordinator.accepts_decided() {
                return Err(format!("replica {id}: durability coordinator full"));
            }
            let batch = Arc::new(DecidedBatch {
                agreement_id: decision.agreement_id,
                batch: decision.batch,
                hash: decision.hash,
            });
            let mut outputs = Vec::new();
            node.coordinator.handle(Input::Decided(batch), &mut outputs);
            self.carry_out(id, outputs)?;
            if self.replicas[id as usize].core.is_none() {
                // Its log failed while carrying out the batch: it is down.
                break;
            }
        }
        Ok(())
    }

    /// Carries out a replica's coordinator actions, as the runtime's exec stage does.
    fn carry_out(&mut self, id: ReplicaId, mut outputs: Vec<Output>) -> Result<(), String> {
        let correct = self.is_correct(id);
        let mut work = Vec::new();
        while !outputs.is_empty() {
            work.append(&mut outputs);
            for output in work.drain(..) {
                if self.replicas[id as usize].core.is_none() {
                    // It crashed or stopped meanwhile: a dead process does nothing more.
                    return Ok(());
                }
                match output {
                    Output::CutSegment { after } => {
                        let node = &self.replicas[id as usize];
                        let cut = node.wal.as_ref().map(|wal| wal.cut_segment(after));
                        if !matches!(cut, Some(Ok(()))) {
                            let node = &mut self.replicas[id as usize];
                            node.coordinator.handle(Input::LogFailed, &mut outputs);
                        }
                    }
                    Output::TruncateLog { below } => {
                        let node = &self.replicas[id as usize];
                        let deleted = node.wal.as_ref().map(|wal| wal.delete_below(below));
                        if !matches!(deleted, Some(Ok(_))) {
                            let node = &mut self.replicas[id as usize];
                            node.coordinator.handle(Input::LogFailed, &mut outputs);
                        }
                    }
                    Output::Checkpoint { agreement_id, ordered_requests } => {
                        let (low, high) =
                            self.config.checkpoints.expect("checkpoints on a schedule").write_us;
                        let took = self.rng.range(low, high);
                        let node = &mut self.replicas[id as usize];
                        assert!(node.checkpoint_pending.is_none(), "one checkpoint at a time");
                        node.checkpoint_pending = Some(PendingCheckpoint {
                            agreement_id,
                            ordered_requests,
                            view: node.executor.view(),
                        });
                        let generation = node.disk_generation;
                        self.schedule(self.now_us + took, Ev::CheckpointWrite { id, generation });
                    }
                    Output::Append(batch) => {
                        if let Err(input) = self.append(id, &batch) {
                            let node = &mut self.replicas[id as usize];
                            node.coordinator.handle(input, &mut outputs);
                        }
                    }
                    Output::Execute(batch) => {
                        let node = &mut self.replicas[id as usize];
                        let replies = execute_batch(&mut node.executor, &batch);
                        if let Some(twice) = W::executed_twice(node.executor.service()) {
                            return Err(format!(
                                "validity: replica {id} executed request {twice:?} twice"
                            ));
                        }
                        let digest = executor_digest(&node.executor);
                        node.coordinator.handle(
                            Input::Executed {
                                agreement_id: batch.agreement_id,
                                replies,
                                now_us: self.now_us,
                            },
                            &mut outputs,
                        );
                        if correct {
                            match self.digests.get(&batch.agreement_id) {
                                Some(known) if *known != digest => {
                                    return Err(format!(
                                        "state: replica {id} digest differs after agreement {}",
                                        batch.agreement_id
                                    ));
                                }
                                Some(_) => {}
                                None => {
                                    self.digests.insert(batch.agreement_id, digest);
                                }
                            }
                        }
                    }
                    Output::Release { replies, .. } => {
                        let node = &self.replicas[id as usize];
                        // What survives a crash: the log's synced groups, or a durable
                        // checkpoint (a restart from it may find the log behind it).
                        let synced = node.logged_max().max(node.checkpoint_durable);
                        for reply in replies {
                            if reply.agreement_id > synced {
                                return Err(format!(
                                    "durability: replica {id} released the reply to ({}, {}) of agreement {} while its disk holds agreements up to {synced} only",
                                    reply.client_id, reply.sequence, reply.agreement_id
                                ));
                            }
                            self.report.replies_released += 1;
                            if correct {
                                // The first agreement that ordered it (a retransmission
                                // ordered again is answered from the reply cache).
                                self.released_in
                                    .entry((reply.client_id, reply.sequence))
                                    .and_modify(|at| *at = (*at).min(reply.agreement_id))
                                    .or_insert(reply.agreement_id);
                            }
                            self.send_reply(id, &reply);
                        }
                    }
                    Output::Stop => {
                        if self.config.trace {
                            eprintln!("{:>9} us r{id} LOG FAILED: stops", self.now_us);
                        }
                        self.report.log_failures += 1;
                        let node = &mut self.replicas[id as usize];
                        node.stopped = true;
                        node.core = None;
                        node.timer_generation += 1;
                        node.disk_generation += 1;
                        node.wal = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends a batch to the replica's log and makes sure a group write is coming;
    /// `Err` is the coordinator input a failed log gives.
    fn append(&mut self, id: ReplicaId, batch: &DecidedBatch) -> Result<(), Input> {
        let mut payload = Vec::new();
        encode_batch(batch.agreement_id, (0, 1), &batch.batch, &mut payload);
        let node = &mut self.replicas[id as usize];
        let Some(wal) = node.wal.as_ref() else { return Err(Input::LogFailed) };
        let appended = match wal.append(batch.agreement_id, batch.agreement_id, &payload) {
            Err(WalError::GroupFull { .. }) => {
                // The open group is full: it goes out now, then the append.
                self.write_group(id)?;
                let node = &self.replicas[id as usize];
                let wal = node.wal.as_ref().ok_or(Input::LogFailed)?;
                wal.append(batch.agreement_id, batch.agreement_id, &payload)
            }
            other => other,
        };
        if appended.is_err() {
            return Err(Input::LogFailed);
        }
        self.schedule_write(id);
        Ok(())
    }

    /// Writes the replica's open group now. `Ok` when written (or nothing to write);
    /// `Err` with the coordinator input otherwise.
    fn write_group(&mut self, id: ReplicaId) -> Result<Option<u64>, Input> {
        let node = &mut self.replicas[id as usize];
        let Some(wal) = node.wal.as_ref() else { return Err(Input::LogFailed) };
        if let Some((failing, index)) = self.config.failed_write
            && failing == id
        {
            // Write `index` counted from the replica's first start is write
            // `index - writes_issued` from now on this boot's count; other armed faults
            // (a crash armed for recovery) stay.
            if let Some(ahead) = index.checked_sub(node.writes_issued) {
                node.disk.set_faults(SimFaults {
                    fail_at_write: Some(node.disk.write_count() + ahead),
                    ..node.disk.faults()
                });
            }
        }
        let before = node.disk.write_count();
        let written = wal.write_step();
        node.writes_issued += node.disk.write_count() - before;
        match written {
            Ok(point) => {
                self.report.disk_writes += 1;
                Ok(point.map(|p| p.agreement_id))
            }
            Err(_) if node.disk.is_crashed() => {
                // The crash armed for recovery struck this write: the process dies here
                // and is restarted later.
                self.report.recovery_crashes += 1;
                if self.config.trace {
                    eprintln!(
                        "{:>9} us r{id} CRASH in its first write after recovery",
                        self.now_us
                    );
                }
                self.crash(id);
                let after = self.rng.range(10_000, 200_000);
                self.schedule(self.now_us + after, Ev::Restart { id });
                Err(Input::LogFailed)
            }
            Err(_) => Err(Input::LogFailed),
        }
    }

    fn disk_write(&mut self, id: ReplicaId, generation: u64) -> Result<(), String> {
        let node = &mut self.replicas[id as usize];
        if node.disk_generation != generation || node.wal.is_none() {
            return Ok(());
        }
        node.write_scheduled = false;
        let input = match self.write_group(id) {
            Ok(Some(up_to)) => Input::Durable { up_to, now_us: self.now_us },
            Ok(None) => return Ok(()),
            Err(input) => input,
        };
        let node = &mut self.replicas[id as usize];
        let more = matches!(input, Input::Durable { up_to, .. } if up_to < node.last_delivered);
        let mut outputs = Vec::new();
        node.coordinator.handle(input, &mut outputs);
        self.carry_out(id, outputs)?;
        if more && self.replicas[id as usize].wal.is_some() {
            // Appended while this write ran: the next group.
            self.schedule_write(id);
        }
        Ok(())
    }

    /// Makes sure a group write of the replica's log is coming: it completes after a
    /// time drawn from `disk_write_us` (20x on the slow disk).
    fn schedule_write(&mut self, id: ReplicaId) {
        if self.replicas[id as usize].write_scheduled {
            return;
        }
        let (low, high) = self.config.disk_write_us;
        let mut took = self.rng.range(low, high);
        if self.config.slow_disk == Some(id) {
            took *= 20;
        }
        let node = &mut self.replicas[id as usize];
        node.write_scheduled = true;
        let generation = node.disk_generation;
        self.schedule(self.now_us + took, Ev::DiskWrite { id, generation });
    }

    /// The replica's process dies: what its disk did not sync is lost; a group write in
    /// flight may land torn.
    fn crash(&mut self, id: ReplicaId) {
        self.crash_with(id, true);
    }

    /// BFT: whether agreement `aid` may be decided anew: no client saw it (or anything
    /// after it) complete, and the correct replicas that lost their memory (their votes)
    /// since the agreement before it was first decided (when voting on `aid` can begin:
    /// a replica may vote, count in the decision and crash before the decision) and the
    /// Byzantine ones are more than f together.
    fn redecided_after_crashes(&self, aid: u64) -> bool {
        if self.config.protocol.mode != Mode::Bft || self.accepted.range(aid..).next().is_some() {
            return false;
        }
        let since = match aid {
            0 | 1 => 0,
            _ => self
                .decided_at_us
                .get(&(aid - 1))
                .or_else(|| self.decided_at_us.get(&aid))
                .copied()
                .unwrap_or(0),
        };
        let forgot = self
            .replicas
            .iter()
            .filter(|node| node.byzantine.is_none() && node.forgot_at_us > since)
            .count();
        let byzantine = self.replicas.iter().filter(|node| node.byzantine.is_some()).count();
        forgot + byzantine > self.config.protocol.f
    }

    /// A crash; a write in flight may tear only if `may_tear` (a stop for state
    /// transfer lets it land).
    fn crash_with(&mut self, id: ReplicaId, may_tear: bool) {
        if self.config.trace {
            eprintln!("{:>9} us r{id} CRASH", self.now_us);
        }
        self.end_transfers_of(id);
        self.replicas[id as usize].paused_core = None;
        let tear = self.replicas[id as usize].write_scheduled
            && self.rng.chance(self.config.torn_write_per_mille)
            && may_tear;
        let reboot_seed = self.rng.next_u64();
        let node = &mut self.replicas[id as usize];
        node.core = None;
        node.forgot_at_us = self.now_us;
        node.life += 1;
        node.crashed_before = true;
        node.timer_generation += 1;
        node.disk_generation += 1;
        node.write_scheduled = false;
        if let Some(wal) = node.wal.take() {
            if tear {
                // The write in flight is the next one: it lands torn and the disk dies.
                let next = node.disk.write_count();
                node.disk.set_faults(SimFaults {
                    crash_at_write: Some(next),
                    tear_any_sectors: reboot_seed.is_multiple_of(2),
                    ..SimFaults::default()
                });
                if wal.write_step().is_err() && node.disk.is_crashed() {
                    self.report.torn_writes += 1;
                }
            }
            node.disk.crash();
            drop(wal);
        }
        node.disk = node.disk.reboot(reboot_seed);
        // A checkpoint being written is lost with the process; its directory keeps what
        // it synced.
        node.checkpoint_pending = None;
        node.checkpoint_dir.crash();
    }

    /// Writes the replica's pending checkpoint, through the runtime's code, into its
    /// simulated directory; a drawn crash may cut it at any step.
    fn checkpoint_write(&mut self, id: ReplicaId, generation: u64) -> Result<(), String> {
        // Only a replica the plan already counts as faulty (one that crashes) may crash
        // while checkpointing, so faults stay within f at any time; in crash mode not
        // after a crash of all, where a second replica losing its votes is beyond f.
        let may_crash = self.config.crashes.iter().any(|c| c.replica == id)
            && !(self.config.protocol.mode == Mode::Crash && self.config.total_crash.is_some());
        let crash_per_mille = self.config.checkpoints.map_or(0, |c| c.crash_per_mille);
        let crash = self.rng.chance(crash_per_mille) && may_crash;
        let halt_after = self.rng.range(0, 12);
        let node = &mut self.replicas[id as usize];
        if node.disk_generation != generation || node.core.is_none() {
            return Ok(());
        }
        if node
            .checkpoint_pending
            .as_ref()
            .is_some_and(|pending| !node.coordinator.checkpoint_may_start(pending.agreement_id))
        {
            // As the runtime: written once the log is durable at its agreement.
            self.schedule(
                self.now_us + CHECKPOINT_LOG_WAIT_US,
                Ev::CheckpointWrite { id, generation },
            );
            return Ok(());
        }
        let Some(pending) = node.checkpoint_pending.take() else { return Ok(()) };
        if crash {
            node.checkpoint_dir.halt_at_op(node.checkpoint_dir.ops() + halt_after);
        }
        let written = CheckpointStore::open(node.checkpoint_dir.clone(), StoreOptions::default())
            .and_then(|store| {
                write_checkpoint(
                    &store,
                    <W::Service as Service>::NAME,
                    pending.agreement_id,
                    pending.ordered_requests,
                    &pending.view,
                )
            });
        if node.checkpoint_dir.is_halted() {
            // The power went while it wrote: the replica dies here, restarts later.
            self.report.checkpoint_crashes += 1;
            if self.config.trace {
                eprintln!(
                    "{:>9} us r{id} CRASH while writing checkpoint {}",
                    self.now_us, pending.agreement_id
                );
            }
            self.crash(id);
            let after = self.rng.range(10_000, 200_000);
            self.schedule(self.now_us + after, Ev::Restart { id });
            return Ok(());
        }
        node.checkpoint_dir.clear_faults();
        let input = match written {
            Ok(_) => {
                self.report.checkpoints_written += 1;
                node.checkpoint_durable = node.checkpoint_durable.max(pending.agreement_id);
                if self.config.trace {
                    eprintln!("{:>9} us r{id} CHECKPOINT {}", self.now_us, pending.agreement_id);
                }
                Input::CheckpointWritten { agreement_id: pending.agreement_id }
            }
            Err(error) => {
                return Err(format!(
                    "replica {id}: checkpoint {} failed with no fault drawn: {error}",
                    pending.agreement_id
                ));
            }
        };
        let mut outputs = Vec::new();
        node.coordinator.handle(input, &mut outputs);
        self.carry_out(id, outputs)
    }

    /// Opens the replica's log on its disk and replays it into a fresh executor and
    /// coordinator, as the runtime does at start. `Ok(None)`: the disk crashed during
    /// recovery (the caller restarts it later).
    fn open_log(&mut self, id: ReplicaId) -> Result<Option<crate::durability::Restored>, String> {
        let window = self.config.protocol.decided_window_max;
        let crash_in_recovery = self.rng.chance(self.config.recovery_crash_per_mille)
            && self.replicas[id as usize].crashed_before;
        let reboot_seed = self.rng.next_u64();
        let node = &mut self.replicas[id as usize];
        if crash_in_recovery {
            node.disk.set_faults(SimFaults { crash_at_write: Some(0), ..SimFaults::default() });
        }
        let options = WalOptions {
            segment_bytes: 64 * 1024,
            group_bytes_max: 8 * 1024,
            record_bytes_max: 16 * 1024,
            queue_depth_max: 64,
            spare_segments_max: 2,
            writer: WriterThreads::Stepped,
            ..WalOptions::default()
        };
        let opened = Wal::open_with_storage(node.disk.clone(), options);
        if node.disk.is_crashed() {
            self.report.recovery_crashes += 1;
            drop(opened);
            node.disk = node.disk.reboot(reboot_seed);
            return Ok(None);
        }
        // A crash armed for recovery that recovery's own writes did not reach strikes the
        // first group write after it (see `write_group`).
        let (wal, recovered) =
            opened.map_err(|error| format!("replica {id}: log open: {error}"))?;
        if node.byzantine.is_none() {
            // A write a crash struck may have landed whole, uncounted when a crash of all
            // dropped the agreements no disk was known to hold: what a correct replica's
            // log brings back is part of the agreed order again.
            for record in &recovered.records {
                if let Ok(part) = decode_batch(&record.payload)
                    && part.part_count == 1
                {
                    self.decided_batches
                        .entry(part.agreement_id)
                        .or_insert_with(|| Arc::new(part.batch));
                }
            }
        }
        let node = &mut self.replicas[id as usize];
        let store = CheckpointStore::open(node.checkpoint_dir.clone(), StoreOptions::default())
            .map_err(|error| format!("replica {id}: checkpoint store: {error}"))?;
        let loaded = load_checkpoint(&store, &W::service())
            .map_err(|error| format!("replica {id}: checkpoints: {error}"))?;
        let (executor, from) = match loaded {
            Some(loaded) => {
                self.report.checkpoint_restarts += 1;
                (loaded.executor, loaded.from)
            }
            None => (Executor::new(W::service()), FromCheckpoint::default()),
        };
        let mut executor = executor.with_clients_max(self.config.clients_max);
        let restored =
            restore(recovered.records.into_iter().map(|r| r.payload), &mut executor, window, from)
                .map_err(|error| format!("replica {id}: recovery: {error}"))?;
        let last = restored.recovered.last_decided;
        node.reopened_with = node.reopened_with.max(last);
        node.executor = executor;
        node.checkpoint_durable = from.agreement_id;
        node.coordinator = Coordinator::new(self.config.log_mode, last);
        if let Some(schedule) = self.config.checkpoint_schedule(id) {
            let start = CheckpointStart {
                ordered_requests: restored.ordered_requests,
                last_checkpoint: from.agreement_id,
            };
            node.coordinator =
                std::mem::replace(&mut node.coordinator, Coordinator::new(self.config.log_mode, 0))
                    .with_checkpoints(schedule, start);
        }
        node.last_delivered = last;
        // What it delivered past its log died with its memory.
        node.recent_delivered.retain(|&(agreement_id, _)| agreement_id <= last);
        node.wal = Some(wal);
        Ok(Some(restored))
    }

    /// The protocol configuration a replica starts with: the cluster's, with the disks
    /// lost in a crash of all declared, as an operator restarting the others would.
    fn protocol_config(&self) -> Config {
        let mut config = self.config.protocol.clone();
        config.lost_replicas = (0..self.replicas.len() as ReplicaId)
            .filter(|&id| self.replicas[id as usize].lost)
            .collect();
        config
    }

    fn start_fresh(&mut self, id: ReplicaId) -> Result<(), String> {
        let node = &mut self.replicas[id as usize];
        if node.core.is_some() || node.stopped || node.lost {
            return Ok(());
        }
        if self.config.trace {
            eprintln!("{:>9} us r{id} START (fresh)", self.now_us);
        }
        let Some(restored) = self.open_log(id)? else {
            let after = self.rng.range(10_000, 200_000);
            self.schedule(self.now_us + after, Ev::Start { id });
            return Ok(());
        };
        assert_eq!(restored.recovered.last_decided, 0, "a fresh replica has an empty log");
        let protocol = self.protocol_config();
        let node = &mut self.replicas[id as usize];
        let mut core = Replica::new(protocol, node.keys.clone())
            .map_err(|error| format!("start of replica {id} failed: {error}"))?;
        let mut actions = Vec::new();
        core.start(&mut actions);
        node.core = Some(core);
        self.apply_replica_actions(id, actions)
    }

    /// A state transfer ended: a replica whose core was paused closes its log (a stop,
    /// not a crash fault: nothing tears, and it does not become a replica that may crash
    /// in recovery) and restarts from the installed state with that core.
    fn resume_after_transfer(&mut self, id: ReplicaId) -> Result<(), String> {
        let node = &mut self.replicas[id as usize];
        if let Some(core) = node.paused_core.take() {
            let (crashed_before, forgot_at_us) = (node.crashed_before, node.forgot_at_us);
            self.crash_with(id, false);
            let node = &mut self.replicas[id as usize];
            node.crashed_before = crashed_before;
            node.forgot_at_us = forgot_at_us;
            node.paused_core = Some(core);
        }
        self.restart(id)
    }

    fn restart(&mut self, id: ReplicaId) -> Result<(), String> {
        let node = &mut self.replicas[id as usize];
        if node.core.is_some() || node.stopped || node.lost || self.transfers.contains_key(&id) {
            return Ok(());
        }
        if (self.config.wiped == Some(id) || node.wipe_at_restart) && !node.wiped_done {
            // The disk was replaced while it was down: empty log, no checkpoint.
            node.wiped_done = true;
            node.wipe_at_restart = false;
            node.state_lost = true;
            node.disk_lost = true;
            let seed = self.rng.next_u64();
            let node = &mut self.replicas[id as usize];
            node.disk = SimStorage::new(seed);
            node.checkpoint_dir = SimDir::new(seed ^ 0xC4EC);
            node.reopened_with = 0;
            node.checkpoint_durable = 0;
            node.orphaned = None;
            node.recent_delivered.clear();
            self.report.disks_wiped += 1;
            if self.config.trace {
                eprintln!("{:>9} us r{id} DISK WIPED", self.now_us);
            }
            return self.start_transfer(id);
        }
        let Some(restored) = self.open_log(id)? else {
            if self.config.trace {
                eprintln!("{:>9} us r{id} CRASH during recovery", self.now_us);
            }
            let after = self.rng.range(10_000, 200_000);
            self.schedule(self.now_us + after, Ev::Restart { id });
            return Ok(());
        };
        if self.config.trace {
            eprintln!(
                "{:>9} us r{id} RESTART with {} logged",
                self.now_us, restored.recovered.last_decided
            );
        }
        let protocol = self.protocol_config();
        let node = &mut self.replicas[id as usize];
        if node.orphaned.is_some_and(|a| restored.recovered.last_decided < a) {
            // What it had to give up died with its memory: its log never held it.
            node.orphaned = None;
        }
        if let Some(mut core) = node.paused_core.take() {
            // Back from a state transfer in the same process: the core jumps to the
            // installed state and keeps its votes.
            core.install_transferred(restored.recovered, restored.ordered);
            let mut actions = Vec::new();
            core.start(&mut actions);
            node.core = Some(core);
            return self.apply_replica_actions(id, actions);
        }
        node.incarnation += 1;
        let nonce = (u64::from(id) << 32) | node.incarnation;
        let mut core = Replica::restart_with_nonce(
            protocol,
            node.keys.clone(),
            restored.recovered,
            restored.ordered,
            nonce,
        )
        .map_err(|error| format!("restart of replica {id} failed: {error}"))?;
        if node.state_lost {
            // As the runtime: a start from the peers' state after its own log was lost,
            // with its disk (it says so) or given up (it keeps silent).
            match node.disk_lost {
                true => core.mark_disk_lost(),
                false => core.mark_state_lost(),
            }
        }
        let mut actions = Vec::new();
        core.start(&mut actions);
        node.core = Some(core);
        self.apply_replica_actions(id, actions)
    }
}

/// A different but well-formed batch: reversed, or empty.
fn variant(batch: &Batch) -> Arc<Batch> {
    let mut requests = batch.requests.clone();
    if requests.len() >= 2 {
        requests.reverse();
    } else {
        requests.clear();
    }
    Arc::new(Batch { timestamp_ms: batch.timestamp_ms, requests })
}

fn random_hash(rng: &mut Rng) -> Hash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&rng.bytes(32));
    hash
}

/// A well-formed message with random fields.
fn random_message(rng: &mut Rng, n: usize) -> Message {
    let small = |rng: &mut Rng| rng.range(0, 12);
    match rng.range(0, 7) {
        0 => {
            Message::Write { regency: small(rng), agreement_id: small(rng), hash: random_hash(rng) }
        }
        1 => Message::Accept {
            regency: small(rng),
            agreement_id: small(rng),
            hash: random_hash(rng),
        },
        2 => Message::Stop { regency: rng.range(0, u64::MAX) },
        3 => Message::StopData {
            regency: small(rng),
            collect: Arc::new(crate::protocol::CollectData {
                last_decided: small(rng),
                decided_hash: Some(random_hash(rng)),
                vote_floor: small(rng),
                accepted: Some((rng.range(0, u64::MAX), random_hash(rng))),
                writes: vec![(random_hash(rng), rng.range(0, u64::MAX))],
                values: Vec::new(),
            }),
        },
        4 => Message::Sync {
            regency: small(rng),
            agreement_id: small(rng),
            members: (0..n as ReplicaId).map(|id| (id, random_hash(rng))).collect(),
            batch: Arc::new(Batch::default()),
        },
        5 => Message::Decided {
            agreement_id: small(rng),
            batch: Arc::new(Batch::default()),
            previous: rng.chance(500).then(|| [rng.next_u64() as u8; 32]),
        },
        6 => Message::Fetch { from: rng.range(0, u64::MAX), to: rng.range(0, u64::MAX) },
        _ => Message::Status {
            nonce: rng.next_u64(),
            last_decided: small(rng),
            highest_voted: small(rng),
            regency: small(rng),
            recovering: rng.chance(500),
            incarnation: rng.next_u64(),
            vouch: rng
                .chance(500)
                .then(|| crate::protocol::Vouch { floor: small(rng), regency_min: small(rng) }),
            asked_hash: rng.chance(500).then(|| random_hash(rng)),
            asked: small(rng),
            disk_lost: rng.chance(200),
        },
    }
}

/// The service's digest, and one over it and the reply cache's clients (each one's last sequence and
/// activity time) with the eviction watermark: what every correct replica must hold
/// alike after an agreement, evictions included.
pub(crate) fn executor_digest<S: Service>(executor: &Executor<S>) -> ([u8; 32], [u8; 32]) {
    use sha2::{Digest, Sha256};
    let service = executor.service().state_digest();
    let mut sha = Sha256::new();
    sha.update(service);
    sha.update(executor.expired_through_ms().map_or(0, |ms| ms + 1).to_le_bytes());
    for (client, cached) in executor.reply_cache() {
        sha.update(client.to_le_bytes());
        sha.update(cached.sequence.to_le_bytes());
        sha.update(cached.active_ms.to_le_bytes());
    }
    (service, sha.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_replays_the_same_run() {
        let config = SimConfig::random(Mode::Bft, 4, 7);
        let a = run(&config).expect("seed 7 passes");
        let b = run(&config).expect("seed 7 passes");
        assert_eq!(a.end_ms, b.end_ms);
        assert_eq!(a.replica_messages, b.replica_messages);
        assert_eq!(a.last_decided, b.last_decided);
        assert_eq!((a.disk_writes, a.replies_released), (b.disk_writes, b.replies_released));
        // A run with a crash of every replica and torn writes replays exactly too.
        let mut config = SimConfig::random_with_total_crash(Mode::Crash, 3, 11);
        config.total_crash = Some(TotalCrashPlan {
            at_ms: 400,
            restart_spread_ms: 200,
            lost: Vec::new(),
            wiped: None,
        });
        config.torn_write_per_mille = 1_000;
        let a = run(&config).expect("seed 11 passes");
        let b = run(&config).expect("seed 11 passes");
        assert_eq!(a.total_crashes, 1);
        assert_eq!(
            (a.end_ms, a.disk_writes, a.torn_writes, a.replica_messages),
            (b.end_ms, b.disk_writes, b.torn_writes, b.replica_messages)
        );
    }

    #[test]
    fn cold_started_cluster_with_a_restarting_replica_orders_every_operation() {
        // These seeds cold-start (as the runtime starts a fresh cluster) with loss and a
        // replica restart; replicas that finished start-up recovery while others had not
        // used to split into voting and abstaining ones and change regency forever.
        for seed in [24, 29, 77] {
            let mut config = SimConfig::random(Mode::Bft, 4, seed);
            assert!(config.cold_start_spread_ms.is_some(), "seed {seed} cold-starts");
            config.cold_start_fresh = false;
            let report = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
            assert_eq!(report.ops_completed, config.clients * config.ops_per_client);
        }
    }

    #[test]
    fn replicas_checkpoint_crash_while_writing_one_and_restart_from_it() {
        // Small P, both schedules, a crashing replica whose checkpoint writes are cut at
        // a drawn step, and a crash of all: restarts load the newest valid checkpoint and
        // replay the log after it; the oracle (nothing acknowledged lost, digests equal at
        // equal agreements, linearizability) holds throughout.
        let mut totals = (0, 0, 0);
        for seed in 0..24 {
            for mode in [Mode::Crash, Mode::Bft] {
                let n = if mode == Mode::Crash { 3 } else { 4 };
                let mut config = SimConfig::quiet(mode, n, seed);
                config.clients = 3;
                config.ops_per_client = 14;
                config.faults_until_ms = 2_500;
                config.crashes = vec![CrashPlan {
                    replica: (seed % n as u64) as ReplicaId,
                    at_ms: 300 + seed * 25,
                    restart_ms: Some(700 + seed * 25),
                }];
                config.checkpoints = Some(SimCheckpoints {
                    period: 2 * n as u64 + seed % 5,
                    coordinated: seed % 3 == 0,
                    write_us: (500, 20_000),
                    crash_per_mille: 1_000,
                });
                if seed % 2 == 1 && mode == Mode::Bft {
                    config.total_crash = Some(TotalCrashPlan {
                        at_ms: 1_500,
                        restart_spread_ms: 200,
                        lost: Vec::new(),
                        wiped: None,
                    });
                    config.torn_write_per_mille = 1_000;
                }
                let a = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
                assert_eq!(a.ops_completed, 42);
                totals.0 += a.checkpoints_written;
                totals.1 += a.checkpoint_crashes;
                totals.2 += a.checkpoint_restarts;
                // A checkpointing run replays exactly.
                let b = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
                assert_eq!(
                    (a.end_ms, a.disk_writes, a.checkpoints_written, a.replica_messages),
                    (b.end_ms, b.disk_writes, b.checkpoints_written, b.replica_messages)
                );
            }
        }
        let (written, crashes, restarts) = totals;
        assert!(written > 100, "checkpoints were written: {written}");
        assert!(crashes > 10, "crashes struck checkpoint writes: {crashes}");
        assert!(restarts > 10, "restarts loaded a checkpoint: {restarts}");
    }

    #[test]
    fn crash_mode_cluster_keeps_every_acknowledged_request_through_a_crash_of_all() {
        // Every replica crashes at once mid-run, group writes in flight tear, and the
        // cluster comes back from its logs alone: the oracle checks that every agreement
        // a client saw complete is decided the same way again, and linearizability.
        for seed in 0..20 {
            let mut config = SimConfig::quiet(Mode::Crash, 3, seed);
            config.clients = 3;
            config.ops_per_client = 12;
            config.faults_until_ms = 2_000;
            config.torn_write_per_mille = 1_000;
            config.total_crash = Some(TotalCrashPlan {
                at_ms: 150 + seed * 20,
                restart_spread_ms: 300,
                lost: Vec::new(),
                wiped: None,
            });
            let report = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
            assert_eq!(report.total_crashes, 1);
            assert_eq!(report.ops_completed, 36);
        }
    }

    #[test]
    fn a_replica_whose_write_fails_stops_and_the_others_go_on() {
        for mode in [Mode::Bft, Mode::Crash] {
            let n = if mode == Mode::Bft { 4 } else { 3 };
            let mut config = SimConfig::quiet(mode, n, 5);
            config.failed_write = Some((1, 2));
            let report = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
            assert_eq!(report.log_failures, 1, "{mode:?}");
            assert_eq!(report.last_decided[1], None, "the replica is down for good");
            assert_eq!(report.ops_completed, 3 * 8);
        }
    }

    #[test]
    fn replies_wait_for_a_slow_disk() {
        // One replica's writes take 20x longer; BFT needs f+1 = 2 matching replies, so
        // the others carry the load; nothing is released before its write.
        let mut config = SimConfig::quiet(Mode::Bft, 4, 9);
        config.slow_disk = Some(0);
        config.log_mode = LogMode::Batched;
        let report = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(report.ops_completed, 3 * 8);
        assert!(report.disk_writes > 0 && report.replies_released > 0);
    }

    #[test]
    fn quiet_cluster_completes_every_operation() {
        let report = run(&SimConfig::quiet(Mode::Bft, 4, 1)).expect("no faults");
        assert_eq!(report.ops_completed, 3 * 8);
        assert_eq!(report.regency_max, 0);
        assert!(report.decided_max >= 1);
    }
}
