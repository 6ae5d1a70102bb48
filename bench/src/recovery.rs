//! `dura-bench experiment recovery`: throughput per 100 ms while a replica that lost
//! its disk takes the state from its peers (the paper's Figure 3, the PBFT-like
//! baseline, against its Figure 11, CST), each protocol on a fresh local cluster (BFT,
//! n = 4 unless `--replicas`, `parallel` log), in this fixed order:
//!
//! 1. `pbft-like` with `coordinated` checkpoints (the baseline needs them: one replica
//!    sends checkpoint and log, the others hashes of the same checkpoint);
//! 2. `cst` with `sequential` checkpoints (pieces from different replicas).
//!
//! Both with the config's default checkpoint write (background) and the same P
//! (`--checkpoint-period`, default twice `--records`: the paper triggered each recovery
//! when the log was about twice the state, and a replica's peers must still hold, in
//! their logs, what the cluster decided while it transferred).
//!
//! Each protocol loads the state (`--records` of `--value-bytes`), then runs the
//! checkpoints experiment's workload (100% replaces, uniform keys, closed loop with
//! `--clients-peak` clients) for `--warmup` + `--seconds`. After the warm-up and a third
//! of `--seconds` (the steady part), the bench kills the last replica (SIGKILL;
//! replica 0 leads first), removes its data folder and starts it again; the load keeps
//! running. The
//! restarted replica finds neither checkpoint nor log, runs state transfer, installs
//! the state as a checkpoint, starts and catches up.
//!
//! **Recovery** is the replica's own view, from its metrics endpoint (scraped every
//! [`SCRAPE_PERIOD`]): it starts at the restart (the process start) and ends at the
//! first scrape where its `/health` answers `200 serving` (the endpoint is bound only
//! after the transfer and the checkpoint load, and says `recovering` until the protocol
//! has rejoined) **and** its `dura_last_decided_agreement_id` has reached the smallest
//! one its peers reported just before (it has caught up). From the operations' spans:
//!
//! - the steady rate: the median 1 s window (sliding by 100 ms) before the kill;
//! - the rate during recovery: operations completed in it over its length, over the
//!   steady rate (`during_over_steady`); the same after it;
//! - the bytes, milliseconds and rounds of the transfer, from the replica's log line
//!   `state transfer brought agreement A in T ms (B bytes, R rounds)` (no metric
//!   carries them).
//!
//! **Validated**: after the load stops, the bench waits until every replica's
//! `dura_last_decided_agreement_id` is the same and stable, stops the cluster cleanly
//! (SIGTERM), then rebuilds each replica's state from its own data folder exactly as a
//! restart would (newest valid checkpoint, then the log replayed) and compares the
//! service's state digests ([`durable_state`]): true when every replica, the recovered
//! one included, ends at the same agreement with the same digest. No replica exposes
//! its digest while running, and comparing checkpoint files needs them at the same
//! agreement, which sequential checkpoints never are.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dura_engine::runtime::config::{LogBackendKind, TransferProtocol};
use dura_engine::runtime::{CheckpointScheduleKind, ClusterConfig, LogMode, Mode};
use dura_engine::service::{Executor, Service};
use serde::{Deserialize, Serialize};

use crate::checkpoints::{
    Goal, SLOT, SLOTS_PER_WINDOW, http_get, per_slot, schedule_name, seconds_of,
};
use crate::cluster::LocalCluster;
use crate::driver::{OpSpan, RunResult};
use crate::experiment::{ExperimentArgs, spec};
use crate::plot::{Chart, Lane, Series, XAxis};
use crate::runner::{Connector, default_out_dir, load_records, progress_bar};

/// The protocols, in the order they run, with the checkpoint schedule each needs.
pub const PROTOCOLS: [(TransferProtocol, CheckpointScheduleKind); 2] = [
    (TransferProtocol::PbftLike, CheckpointScheduleKind::Coordinated),
    (TransferProtocol::Cst, CheckpointScheduleKind::Sequential),
];
/// How often the bench polls the restarted replica (and its peers) while it recovers.
pub const SCRAPE_PERIOD: Duration = Duration::from_millis(50);
/// The restart comes after the warm-up and this share of `--seconds`.
pub const STEADY_SHARE: f64 = 1.0 / 3.0;
/// How long the bench waits, after the load, for every replica to reach the same
/// agreement before it gives up validating.
pub const CONVERGE_WAIT_MAX: Duration = Duration::from_secs(30);

/// The goals (set for a 1 GiB state on this machine).
pub mod goals {
    /// CST: throughput during recovery over the steady rate, at least.
    pub const CST_DURING_OVER_STEADY_MIN: f64 = 0.9;
    /// CST: recovery seconds, at most.
    pub const CST_RECOVERY_S_MAX: f64 = 30.0;
}

/// What the issue quotes of the paper's Figures 3 and 11 (4 replicas, 500 MB and 1 GB
/// states, a replica restarted under load).
pub const PAPER: [&str; 3] = [
    "Fig. 3 (PBFT-like state transfer): throughput during recovery 0.24 of steady",
    "Fig. 11 (CST, f = 1 optimised): throughput during recovery 0.60 of steady",
    "recovery of a 1 GB state: 42 s",
];

/// The transfer protocol's config name.
pub fn protocol_name(protocol: TransferProtocol) -> &'static str {
    match protocol {
        TransferProtocol::Cst => "cst",
        TransferProtocol::PbftLike => "pbft-like",
    }
}

/// What the restarted replica's log says about its transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLine {
    /// The agreement the transferred state stands at.
    pub agreement_id: u64,
    /// The transfer's milliseconds, as the replica measured them.
    pub ms: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// Rounds (1 unless a round failed validation).
    pub rounds: u64,
}

/// The last `state transfer brought agreement A in T ms (B bytes, R rounds` line of a
/// replica's log.
pub fn parse_transfer_line(log: &str) -> Option<TransferLine> {
    const MARKER: &str = "state transfer brought agreement ";
    let line = log.lines().rev().find(|line| line.contains(MARKER))?;
    let rest = &line[line.find(MARKER)? + MARKER.len()..];
    let mut words = rest.split([' ', '(', ',']).filter(|word| !word.is_empty());
    let mut next_number = |after: Option<&str>| -> Option<u64> {
        if let Some(after) = after {
            words.by_ref().find(|word| *word == after)?;
        }
        words.next()?.parse().ok()
    };
    let agreement_id = next_number(None)?;
    let ms = next_number(Some("in"))?;
    let _unit = words.next();
    let bytes = words.next()?.parse().ok()?;
    let _unit = words.next();
    let rounds = words.next()?.parse().ok()?;
    Some(TransferLine { agreement_id, ms, bytes, rounds })
}

/// The value of metric `name` in a Prometheus text page.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == name).then(|| fields.next()?.parse().ok())?
    })
}

pub(crate) fn last_decided(addr: SocketAddr) -> Option<u64> {
    let text = http_get(addr, "/metrics").ok()?;
    metric_value(&text, "dura_last_decided_agreement_id")
}

/// A replica's state rebuilt from its data folder after a clean stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// Replica id.
    pub replica: u32,
    /// The last agreement its checkpoint and log hold.
    pub agreement_id: u64,
    /// The service's state digest there, hex.
    pub digest: String,
}

/// Rebuilds the state replica `id` of `config` would restart with (its newest valid
/// checkpoint, then its log replayed, as the engine's start does) into a fresh
/// `template` service, and returns its agreement and the service's state digest. Only
/// for a stopped replica: the log is opened (its torn tail, if any, cut).
pub fn durable_state<S: Service>(
    config: &ClusterConfig,
    id: u32,
    template: S,
) -> anyhow::Result<DurableState> {
    let me = config.replica(id)?;
    let checkpoint_dir = me.data_dir.join("checkpoints");
    let fs_dir = dura_snapshot::FsDir::new(&checkpoint_dir)
        .with_context(|| format!("open {}", checkpoint_dir.display()))?;
    let store = dura_snapshot::CheckpointStore::open(fs_dir, Default::default())
        .map_err(|error| anyhow::anyhow!("open checkpoints of replica {id}: {error}"))?;
    let loaded = dura_engine::checkpoint::load_checkpoint(&store, &template)
        .map_err(|error| anyhow::anyhow!("load the checkpoint of replica {id}: {error}"))?;
    let (mut executor, from) = match loaded {
        Some(loaded) => (loaded.executor, loaded.from),
        None => (Executor::new(template), Default::default()),
    };
    let log_dir = me.data_dir.join("log");
    let records = match config.log_backend {
        LogBackendKind::File => {
            dura_engine::runtime::filelog::FileLog::open(&log_dir.join("file"))?.1
        }
        LogBackendKind::Wal => {
            let options = dura_wal::WalOptions {
                segment_bytes: u64::from(config.wal_segment_mib) * 1024 * 1024,
                ..dura_wal::WalOptions::default()
            };
            dura_engine::runtime::filelog::WalLog::open(&log_dir.join("wal"), options)?.1
        }
    };
    let restored = dura_engine::durability::restore(
        records.into_iter().map(|record| record.payload),
        &mut executor,
        config.protocol_config().decided_window_max,
        from,
    )
    .map_err(|error| anyhow::anyhow!("replay the log of replica {id}: {error}"))?;
    let digest = executor.service().state_digest();
    Ok(DurableState {
        replica: id,
        agreement_id: restored.recovered.last_decided.max(from.agreement_id),
        digest: digest.iter().map(|byte| format!("{byte:02x}")).collect(),
    })
}

/// How the bench reads a stopped replica's durable state ([`durable_state`] with the
/// cluster's service).
pub type StateReader = dyn Fn(&ClusterConfig, u32) -> anyhow::Result<DurableState> + Sync;

/// When things happened to the restarted replica, in seconds since the run's start
/// (before the warm-up).
#[derive(Debug, Clone, Default)]
struct Events {
    stopped_s: f64,
    restarted_s: f64,
    serving_s: Option<f64>,
    recovered_s: Option<f64>,
    failure: Option<String>,
}

/// Sleeps until `at` or until `done`; false when `done` came first.
pub(crate) fn sleep_until(at: Instant, done: &AtomicBool) -> bool {
    while Instant::now() < at {
        if done.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((at - Instant::now()).min(Duration::from_millis(20)));
    }
    true
}

/// At `origin + restart_after`, stops replica `victim`, removes its data folder and
/// starts it again; then polls until it has recovered (see the module doc) or `done`.
fn stop_wipe_restart(
    cluster: &mut LocalCluster,
    victim: u32,
    metrics: &[SocketAddr],
    origin: Instant,
    restart_after: Duration,
    done: &AtomicBool,
) -> anyhow::Result<Events> {
    anyhow::ensure!(sleep_until(origin + restart_after, done), "the run ended before the restart");
    let mut events = Events { stopped_s: origin.elapsed().as_secs_f64(), ..Events::default() };
    // Killed, not stopped: its disk is lost anyway, and a replica finishing its
    // in-flight work on SIGTERM under load took up to 10 s (measured), which would read
    // as part of neither the steady part nor the recovery.
    cluster.kill_replica(victim)?;
    let data = cluster.replica_data_dir(victim)?;
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("remove {}", data.display()))?;
    }
    cluster.start_replica(victim)?;
    events.restarted_s = origin.elapsed().as_secs_f64();
    eprintln!(
        "replica {victim} killed, its data removed and restarted at {:.1} s",
        events.restarted_s
    );
    let victim_addr = metrics[victim as usize];
    while !done.load(Ordering::Relaxed) {
        if let Err(error) = cluster.check_alive() {
            events.failure = Some(format!("{error:#}"));
            break;
        }
        let peers_min = metrics
            .iter()
            .enumerate()
            .filter(|(id, _)| *id != victim as usize)
            .filter_map(|(_, &addr)| last_decided(addr))
            .min();
        if http_get(victim_addr, "/health").is_ok() {
            let now = origin.elapsed().as_secs_f64();
            events.serving_s.get_or_insert(now);
            if let (Some(mine), Some(peers)) = (last_decided(victim_addr), peers_min)
                && mine >= peers
            {
                let recovered = origin.elapsed().as_secs_f64();
                events.recovered_s = Some(recovered);
                eprintln!(
                    "replica {victim} serving at {now:.1} s, caught up at {recovered:.1} s \
                     (agreement {mine})"
                );
                break;
            }
        }
        std::thread::sleep(SCRAPE_PERIOD);
    }
    Ok(events)
}

/// Waits (up to [`CONVERGE_WAIT_MAX`]) until every replica reports the same last
/// decided agreement twice in a row; returns it, or why not.
fn wait_converged(metrics: &[SocketAddr]) -> Result<u64, String> {
    let deadline = Instant::now() + CONVERGE_WAIT_MAX;
    let mut previous: Option<Vec<Option<u64>>> = None;
    loop {
        let now: Vec<Option<u64>> = metrics.iter().map(|&addr| last_decided(addr)).collect();
        let first = now[0];
        if first.is_some()
            && now.iter().all(|value| *value == first)
            && previous == Some(now.clone())
        {
            return Ok(first.unwrap_or(0));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the replicas did not reach the same agreement within {} s: {now:?}",
                CONVERGE_WAIT_MAX.as_secs()
            ));
        }
        previous = Some(now);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One protocol's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRun {
    /// `pbft-like` or `cst`.
    pub protocol: String,
    /// The checkpoint schedule it ran with.
    pub checkpoint_schedule: String,
    /// The replica stopped, wiped and restarted.
    pub restarted_replica: u32,
    /// When it was killed, s from the measured window's start.
    pub stopped_at_s: f64,
    /// When it was started again (recovery start), s from the window's start.
    pub restarted_at_s: f64,
    /// When its `/health` first said `serving`, s from the window's start.
    pub serving_at_s: Option<f64>,
    /// Recovery end (serving and caught up), s from the window's start; None: not
    /// within the run.
    pub recovered_at_s: Option<f64>,
    /// Recovery end minus start, s (None: not recovered within the run).
    pub recovery_s: Option<f64>,
    /// The transfer as the replica logged it.
    pub transfer: Option<TransferLine>,
    /// Bytes the transfer fetched (from that log line).
    pub bytes_transferred: Option<u64>,
    /// Median 1 s window before the kill, ops/s.
    pub steady_ops_per_s: f64,
    /// Operations completed during recovery over its length (to the window's end when
    /// it did not end), ops/s.
    pub during_ops_per_s: f64,
    /// `during_ops_per_s / steady_ops_per_s` (None: no steady rate).
    pub during_over_steady: Option<f64>,
    /// After recovery to the window's end, ops/s (None: nothing after it).
    pub after_ops_per_s: Option<f64>,
    /// Measured operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Mean throughput over the window.
    pub ops_per_s: f64,
    /// Measured seconds.
    pub seconds: f64,
    /// Seconds the load phase took.
    pub load_s: f64,
    /// Every replica's durable state after a clean stop (empty when not validated).
    pub states: Vec<DurableState>,
    /// Every replica, the recovered one included, holds the same agreement with the
    /// same state digest.
    pub validated: bool,
    /// What went wrong, if anything (the replica exited, did not recover, the
    /// replicas did not converge, the digests differ).
    pub failure: Option<String>,
    /// Operations completed in each 100 ms of the window.
    pub per_100ms: Vec<u64>,
}

/// The whole experiment's result (`--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryResult {
    /// `recovery`.
    pub experiment: String,
    /// Ordering protocol.
    pub mode: String,
    /// Replicas per cluster.
    pub replicas: u32,
    /// The log mode of every cluster.
    pub log_mode: String,
    /// Records loaded.
    pub records: u64,
    /// Value size.
    pub value_bytes: usize,
    /// `records * value_bytes`.
    pub state_bytes: u64,
    /// Client threads (closed loop).
    pub clients: usize,
    /// Measured seconds per protocol.
    pub seconds: f64,
    /// Warm-up seconds per protocol.
    pub warmup_s: f64,
    /// P, both protocols.
    pub checkpoint_period: u64,
    /// Per protocol, in the order run ([`PROTOCOLS`]).
    pub runs: Vec<RecoveryRun>,
    /// The goals for CST, at this run's state size.
    pub goals: Vec<Goal>,
    /// Where the files are.
    pub out_dir: PathBuf,
}

/// A fresh local cluster for one protocol: transfer protocol, schedule, P, metrics
/// ports.
fn configure(
    protocol: TransferProtocol,
    schedule: CheckpointScheduleKind,
    period: u64,
) -> impl Fn(&mut ClusterConfig) -> anyhow::Result<()> {
    move |config: &mut ClusterConfig| {
        config.transfer_protocol = protocol;
        config.checkpoint_schedule = schedule;
        config.checkpoint_period = period;
        anyhow::ensure!(
            config.replicas.iter().all(|replica| replica.transfer_port.is_some()),
            "the local config has no transfer ports"
        );
        crate::cluster::add_metrics_ports(config)?;
        Ok(())
    }
}

/// The default P: twice the records (at least 2n), as in the paper's recovery
/// experiments (a recovery "when the log size is approximately twice the state size").
/// Why not less: after installing the state, the recovered replica fetches what was
/// decided meanwhile from its peers' logs, which reach back P requests at least. Half
/// the records (the default before) was less than the 10 s a 1 GiB transfer took at
/// 25,000 writes/s on the lent machine, so the replica found itself behind every peer
/// at once and transferred again.
pub fn default_period(records: u64, replicas: u32) -> u64 {
    records.saturating_mul(2).max(2 * u64::from(replicas))
}

/// Runs one protocol on a fresh cluster.
fn run_protocol(
    args: &ExperimentArgs,
    connector: &Connector,
    read_state: &StateReader,
    stop: &AtomicBool,
    (protocol, schedule): (TransferProtocol, CheckpointScheduleKind),
    replicas: u32,
    period: u64,
) -> anyhow::Result<RecoveryRun> {
    let mode: Mode = args.mode.into();
    let name = protocol_name(protocol);
    let dir = crate::checkpoints::mode_dir(args, "recovery", name)?;
    let mut cluster = crate::runner::start_cluster_configured(
        replicas,
        mode,
        LogMode::Parallel,
        dir.as_ref().map(|dir| dir.path()),
        &configure(protocol, schedule, period),
        connector,
    )?;
    let metrics = crate::cluster::metrics_addrs(cluster.config())?;
    let victim = replicas - 1;
    let factory = connector(cluster.config(), crate::runner::REQUEST_TIMEOUT)?;
    let mut run_spec = spec(args, args.clients_peak);
    run_spec.trace_ops = true;
    let load_s = load_records(factory.as_ref(), &run_spec, stop)?;
    let restart_after = Duration::from_secs_f64(args.warmup + args.seconds() * STEADY_SHARE);
    let origin = Instant::now();
    let done = AtomicBool::new(false);
    let (result, events) = std::thread::scope(|scope| {
        let cluster = &mut cluster;
        let (metrics, done) = (&metrics, &done);
        let controller = scope.spawn(move || {
            stop_wipe_restart(cluster, victim, metrics, origin, restart_after, done)
        });
        let mut bar = progress_bar(name);
        let result = crate::driver::run(factory.as_ref(), &run_spec, stop, &mut bar);
        done.store(true, Ordering::Relaxed);
        (result, controller.join().expect("the controller panicked"))
    });
    let result = result?;
    anyhow::ensure!(!result.interrupted, "interrupted");
    let mut events = events?;
    drop(factory);
    if events.failure.is_none() {
        cluster.check_alive()?;
    }
    // Validation: same agreement everywhere, clean stop, states rebuilt from disk.
    let mut states = Vec::new();
    let mut validated = false;
    if events.failure.is_none() && events.recovered_s.is_none() {
        events.failure = Some(format!("replica {victim} did not recover within the run"));
    }
    if events.failure.is_none() {
        match wait_converged(&metrics) {
            Ok(_) => {}
            Err(why) => events.failure = Some(why),
        }
    }
    let _ = cluster.stop_all();
    let log = cluster.replica_log(victim);
    if events.failure.is_none() {
        for id in 0..replicas {
            states.push(read_state(cluster.config(), id)?);
        }
        validated = states.windows(2).all(|pair| {
            pair[0].agreement_id == pair[1].agreement_id && pair[0].digest == pair[1].digest
        });
        if !validated {
            events.failure = Some(format!("the replicas' durable states differ: {states:?}"));
        }
    } else if let Some(failure) = &mut events.failure {
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let _ = write!(failure, "; replica {victim}'s log ends:\n{}", tail.join("\n"));
    }
    drop(cluster);
    drop(dir);
    let transfer = parse_transfer_line(&log);
    // The events' clock started before the warm-up: move them onto the window's.
    let shift = result.measure_start.saturating_duration_since(origin).as_secs_f64();
    let context = Context { protocol, schedule, victim, shift, load_s };
    Ok(summarise(&context, &result, &events, transfer, states, validated))
}

/// Operations completed in `[from_us, to_us)` over its length, ops/s.
fn rate_between(ops: &[OpSpan], from_us: u64, to_us: u64) -> Option<f64> {
    (to_us > from_us).then(|| {
        let count = ops.iter().filter(|op| op.done_us >= from_us && op.done_us < to_us).count();
        count as f64 / ((to_us - from_us) as f64 / 1e6)
    })
}

/// What [`summarise`] needs beside the run.
struct Context {
    protocol: TransferProtocol,
    schedule: CheckpointScheduleKind,
    victim: u32,
    /// Seconds from the events' origin to the measured window's start.
    shift: f64,
    load_s: f64,
}

fn summarise(
    context: &Context,
    result: &RunResult,
    events: &Events,
    transfer: Option<TransferLine>,
    states: Vec<DurableState>,
    validated: bool,
) -> RecoveryRun {
    let &Context { protocol, schedule, victim, shift, load_s } = context;
    let measured_us = result.measured.as_micros() as u64;
    let measured_s = result.measured.as_secs_f64();
    let to_us = |seconds: f64| ((seconds.max(0.0) * 1e6) as u64).min(measured_us);
    let restarted_at_s = events.restarted_s - shift;
    let recovered_at_s = events.recovered_s.map(|s| s - shift);
    let slots = per_slot(&result.ops, measured_us, SLOT.as_micros() as u64);
    let stopped_at_s = events.stopped_s - shift;
    let before = ((stopped_at_s.max(0.0) / SLOT.as_secs_f64()) as usize).min(slots.len());
    let steady = seconds_of(&slots[..before]).steady_ops_per_s;
    let end_us = recovered_at_s.map_or(measured_us, to_us);
    let during = rate_between(&result.ops, to_us(restarted_at_s), end_us).unwrap_or(0.0);
    RecoveryRun {
        protocol: protocol_name(protocol).into(),
        checkpoint_schedule: schedule_name(schedule).into(),
        restarted_replica: victim,
        stopped_at_s,
        restarted_at_s,
        serving_at_s: events.serving_s.map(|s| s - shift),
        recovered_at_s,
        recovery_s: recovered_at_s.map(|end| end - restarted_at_s),
        transfer,
        bytes_transferred: transfer.map(|line| line.bytes),
        steady_ops_per_s: steady,
        during_ops_per_s: during,
        during_over_steady: (steady > 0.0).then(|| during / steady),
        after_ops_per_s: recovered_at_s
            .and_then(|_| rate_between(&result.ops, end_us, measured_us)),
        ops: result.all.len(),
        errors: result.errors,
        ops_per_s: result.ops_per_s(),
        seconds: measured_s,
        load_s,
        states,
        validated,
        failure: events.failure.clone(),
        per_100ms: slots,
    }
}

/// The goals for CST at this state size.
fn goals_of(cst: Option<&RecoveryRun>) -> Vec<Goal> {
    let Some(cst) = cst else { return Vec::new() };
    vec![
        Goal {
            name: "CST during recovery / steady >=".into(),
            value: cst.during_over_steady,
            bound: goals::CST_DURING_OVER_STEADY_MIN,
            met: cst
                .during_over_steady
                .is_some_and(|ratio| ratio >= goals::CST_DURING_OVER_STEADY_MIN),
        },
        Goal {
            name: "CST recovery s <=".into(),
            value: cst.recovery_s,
            bound: goals::CST_RECOVERY_S_MAX,
            met: cst.recovery_s.is_some_and(|s| s <= goals::CST_RECOVERY_S_MAX),
        },
    ]
}

/// Runs the experiment, writes its files (`recovery.json`, `.txt`, `.svg`, `.png`,
/// `-timeline.csv`) and returns its result. `read_state` rebuilds a stopped replica's
/// state from its data folder ([`durable_state`] with the cluster's service).
pub fn run(
    args: &ExperimentArgs,
    connector: &Connector,
    read_state: &StateReader,
    stop: &AtomicBool,
) -> anyhow::Result<RecoveryResult> {
    anyhow::ensure!(!args.memory, "the recovery experiment needs real replicas (no --memory)");
    anyhow::ensure!(args.seconds() > 0.0 && args.warmup >= 0.0, "bad --seconds or --warmup");
    anyhow::ensure!(args.records() > 0 && args.clients_peak > 0, "bad --records or --clients-peak");
    let mode: Mode = args.mode.into();
    let replicas = args.replicas.unwrap_or(mode.replicas_min(1) as u32);
    anyhow::ensure!(replicas >= mode.replicas_min(1) as u32, "--replicas {replicas} is too few");
    let out_dir = args.out.clone().unwrap_or_else(|| default_out_dir("recovery"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let period = args.checkpoint_period.unwrap_or(default_period(args.records(), replicas));
    eprintln!("checkpoint period P = {period} requests");
    let mut runs = Vec::new();
    for pair in PROTOCOLS {
        runs.push(run_protocol(args, connector, read_state, stop, pair, replicas, period)?);
    }
    let goals = goals_of(runs.iter().find(|run| run.protocol == "cst"));
    let result = RecoveryResult {
        experiment: "recovery".into(),
        mode: mode.to_string(),
        replicas,
        log_mode: LogMode::Parallel.to_string(),
        records: args.records(),
        value_bytes: args.value_bytes(),
        state_bytes: args.records() * args.value_bytes() as u64,
        clients: args.clients_peak,
        seconds: args.seconds(),
        warmup_s: args.warmup,
        checkpoint_period: period,
        runs,
        goals,
        out_dir: out_dir.clone(),
    };
    write_files(&result)?;
    Ok(result)
}

fn write_files(result: &RecoveryResult) -> anyhow::Result<()> {
    let dir = &result.out_dir;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("recovery.json", &serde_json::to_string_pretty(result)?)?;
    write("recovery.txt", &to_text(result))?;
    let mut timeline = String::from("protocol,start_s,ops_per_s,recovering\n");
    for run in &result.runs {
        let end = run.recovered_at_s.unwrap_or(run.seconds);
        for (slot, ops) in run.per_100ms.iter().enumerate() {
            let start = slot as f64 * SLOT.as_secs_f64();
            let recovering = start + SLOT.as_secs_f64() > run.restarted_at_s && start < end;
            let _ = writeln!(
                timeline,
                "{},{start:.1},{},{}",
                run.protocol,
                *ops as f64 / SLOT.as_secs_f64(),
                u8::from(recovering)
            );
        }
    }
    write("recovery-timeline.csv", &timeline)?;
    crate::plot::write_svg_and_png(dir, "recovery", &charts(result))
}

fn paper_label(protocol: &str) -> &'static str {
    match protocol {
        "pbft-like" => "paper Fig. 3",
        "cst" => "paper Fig. 11",
        _ => "",
    }
}

/// One timeline panel per protocol: throughput per 100 ms and per 1 s window, the
/// replica's stop (`down`) and recovery (restart to serving and caught up) as bars,
/// and the recovery's start and end as vertical lines.
pub fn charts(result: &RecoveryResult) -> Vec<Chart> {
    result
        .runs
        .iter()
        .map(|run| {
            let slot_s = SLOT.as_secs_f64();
            let points: Vec<(f64, f64)> = run
                .per_100ms
                .iter()
                .enumerate()
                .map(|(slot, ops)| ((slot as f64 + 0.5) * slot_s, *ops as f64 / slot_s))
                .collect();
            let windows = run
                .per_100ms
                .windows(SLOTS_PER_WINDOW)
                .enumerate()
                .map(|(slot, window)| {
                    let middle = (slot as f64 + SLOTS_PER_WINDOW as f64 / 2.0) * slot_s;
                    (middle, window.iter().sum::<u64>() as f64 / (SLOTS_PER_WINDOW as f64 * slot_s))
                })
                .collect();
            let top = points.iter().map(|point| point.1).fold(0.0, f64::max);
            let end = run.recovered_at_s.unwrap_or(run.seconds);
            let start = run.restarted_at_s;
            let marks = vec![(start, 0.0), (start, top), (end, top), (end, 0.0)];
            Chart {
                title: format!(
                    "{} ({}, {} checkpoints): recovery {}, during / steady {}",
                    run.protocol,
                    paper_label(&run.protocol),
                    run.checkpoint_schedule,
                    run.recovery_s.map_or("not done".into(), |s| format!("{s:.1} s")),
                    run.during_over_steady.map_or("-".into(), |r| format!("{r:.2}"))
                ),
                x_label: format!(
                    "time (s); replica {} killed, wiped and restarted; P = {}",
                    run.restarted_replica, result.checkpoint_period
                ),
                y_label: "ops/s (per 100 ms)".into(),
                x_axis: XAxis::Linear,
                markers: false,
                series: vec![
                    Series { name: "per 100 ms".into(), points },
                    Series { name: "1 s window".into(), points: windows },
                    Series { name: "recovery start / end".into(), points: marks },
                ],
                lanes: vec![
                    Lane {
                        name: "down".into(),
                        spans: vec![(run.stopped_at_s.max(0.0), run.restarted_at_s.max(0.0))],
                    },
                    Lane { name: "recovery".into(), spans: vec![(start.max(0.0), end)] },
                ],
            }
        })
        .collect()
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |value| format!("{value:.digits$}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// The printed report.
pub fn to_text(result: &RecoveryResult) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Recovery on this machine: {} replicas ({}), log {}, {} records of {} B (state {} MiB), \
         {} clients closed loop, {} s measured per protocol after {} s warm-up",
        result.replicas,
        result.mode,
        result.log_mode,
        result.records,
        result.value_bytes,
        mib(result.state_bytes),
        result.clients,
        result.seconds,
        result.warmup_s
    );
    let victim = result.runs.first().map_or(result.replicas - 1, |run| run.restarted_replica);
    let _ = writeln!(
        text,
        "P = {} requests; replica {victim} killed, its data dir removed and restarted after \
         the warm-up and {:.1} s; recovery = restart until its /health says serving and it has \
         decided what its peers had; protocols in a fixed order, each on a fresh cluster",
        result.checkpoint_period,
        result.seconds * STEADY_SHARE
    );
    let width = 24;
    let _ = write!(text, "{:<36}", "");
    for run in &result.runs {
        let _ =
            write!(text, " {:>width$}", format!("{} ({})", run.protocol, run.checkpoint_schedule));
    }
    let _ = writeln!(text);
    let _ = write!(text, "{:<36}", "");
    for run in &result.runs {
        let _ = write!(text, " {:>width$}", format!("({})", paper_label(&run.protocol)));
    }
    let _ = writeln!(text);
    let row = |text: &mut String, name: &str, value: &dyn Fn(&RecoveryRun) -> String| {
        let _ = write!(text, "{name:<36}");
        for run in &result.runs {
            let _ = write!(text, " {:>width$}", value(run));
        }
        let _ = writeln!(text);
    };
    row(&mut text, "restart at s (of the window)", &|r| format!("{:.1}", r.restarted_at_s));
    row(&mut text, "serving at s", &|r| opt(r.serving_at_s, 1));
    row(&mut text, "recovery s (restart to caught up)", &|r| opt(r.recovery_s, 2));
    row(&mut text, "transfer: agreement, ms, rounds", &|r| match r.transfer {
        Some(t) => format!("{}, {}, {}", t.agreement_id, t.ms, t.rounds),
        None => "-".into(),
    });
    row(&mut text, "bytes transferred (MiB)", &|r| match r.bytes_transferred {
        Some(bytes) => format!("{bytes} ({})", mib(bytes)),
        None => "-".into(),
    });
    row(&mut text, "steady ops/s (median 1 s before kill)", &|r| {
        format!("{:.0}", r.steady_ops_per_s)
    });
    row(&mut text, "ops/s during recovery", &|r| format!("{:.0}", r.during_ops_per_s));
    row(&mut text, "during recovery / steady", &|r| opt(r.during_over_steady, 3));
    row(&mut text, "ops/s after recovery", &|r| opt(r.after_ops_per_s, 0));
    row(&mut text, "mean ops/s", &|r| format!("{:.0}", r.ops_per_s));
    row(&mut text, "errors", &|r| r.errors.to_string());
    row(&mut text, "validated (same agreement, digest)", &|r| match r.states.first() {
        Some(state) if r.validated => {
            format!("true (a{}, {})", state.agreement_id, &state.digest[..8])
        }
        _ => r.validated.to_string(),
    });
    row(&mut text, "load s", &|r| format!("{:.1}", r.load_s));
    for run in &result.runs {
        if let Some(failure) = &run.failure {
            let _ = writeln!(text, "{}: {failure}", run.protocol);
        }
    }
    let _ = writeln!(text, "throughput per second (ops/s; * = the replica recovering in it):");
    let seconds =
        result.runs.iter().map(|r| r.per_100ms.len() / SLOTS_PER_WINDOW).max().unwrap_or(0);
    for second in 0..seconds {
        let _ = write!(text, "  {:>4} s", second + 1);
        for run in &result.runs {
            let slots =
                run.per_100ms.get(second * SLOTS_PER_WINDOW..(second + 1) * SLOTS_PER_WINDOW);
            let ops: u64 = slots.map(|slots| slots.iter().sum()).unwrap_or(0);
            let (start, end) = (second as f64, second as f64 + 1.0);
            let recovery_end = run.recovered_at_s.unwrap_or(run.seconds);
            let busy = run.restarted_at_s < end && recovery_end > start;
            let _ = write!(text, " {:>width$}", format!("{ops}{}", if busy { " *" } else { "  " }));
        }
        let _ = writeln!(text);
    }
    let _ = writeln!(
        text,
        "The paper (Figures 3 and 11; 4 replicas, 500 MB and 1 GB states, a replica restarted \
         under load):"
    );
    for line in PAPER {
        let _ = writeln!(text, "  {line}");
    }
    if !result.goals.is_empty() {
        let gib = result.state_bytes as f64 / (1u64 << 30) as f64;
        let _ = writeln!(text, "Goals for CST (set for a 1 GiB state; this run: {gib:.3} GiB):");
        for goal in &result.goals {
            let _ = writeln!(
                text,
                "  {} {:.2}: {} {}",
                goal.name,
                goal.bound,
                opt(goal.value, 3),
                if goal.met { "met" } else { "NOT met" }
            );
        }
    }
    let _ = writeln!(text, "results in {}", result.out_dir.display());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transfer_line_is_parsed() {
        let log = "[2025 INFO dura] replica 3: serving\n\
                   [2025 INFO dura_engine::runtime::replica] replica 3: state transfer brought \
                   agreement 1234 in 5678 ms (91011 bytes, 1 rounds)\n\
                   [2025 INFO x] replica 3: loaded checkpoint\n";
        assert_eq!(
            parse_transfer_line(log),
            Some(TransferLine { agreement_id: 1234, ms: 5678, bytes: 91011, rounds: 1 })
        );
        let faulty = "replica 1: state transfer brought agreement 7 in 8 ms (9 bytes, 2 rounds, \
                      replicas proven faulty: [2])";
        assert_eq!(
            parse_transfer_line(faulty),
            Some(TransferLine { agreement_id: 7, ms: 8, bytes: 9, rounds: 2 })
        );
        assert_eq!(parse_transfer_line("replica 1: serving"), None);
    }

    #[test]
    fn metric_values_are_read_by_name() {
        let text = "# HELP dura_last_decided_agreement_id x\n\
                    dura_last_decided_agreement_id 42\ndura_regency 1\n";
        assert_eq!(metric_value(text, "dura_last_decided_agreement_id"), Some(42));
        assert_eq!(metric_value(text, "dura_regency"), Some(1));
        assert_eq!(metric_value(text, "dura_leader"), None);
    }

    #[test]
    fn rates_count_completions_in_the_span() {
        let op = |done_ms: u64| OpSpan { sent_us: 0, done_us: done_ms * 1000 };
        let ops: Vec<OpSpan> = (0..2000).map(op).collect();
        assert_eq!(rate_between(&ops, 500_000, 1_000_000), Some(1000.0));
        assert_eq!(rate_between(&ops, 1_000_000, 1_000_000), None);
        assert_eq!(default_period(20_000, 4), 40_000);
        assert_eq!(default_period(3, 4), 8);
    }
}
