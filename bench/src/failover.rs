//! `dura-bench experiment failover`: how long writes stop when the leader fails, on a
//! local cluster of real replica processes (BFT, n = 4 unless `--replicas`; `--mode
//! crash`, n = 3, too; `parallel` log) under `--clients` closed-loop clients writing
//! 4 KiB values.
//!
//! Each run is a fresh cluster: it loads `--records`, runs the load for `--warmup`,
//! then `--seconds` of steady load, then fails the leader, and once writes have
//! resumed lets it come back and fails the *next* leader the same way. The two faults:
//!
//! - `pause`: SIGSTOP (the process keeps its sockets and says nothing, like a stalled
//!   machine), SIGCONT after the measurement;
//! - `kill`: SIGKILL, started again (with its data) after the measurement.
//!
//! The leader is the replica whose own metrics say `dura_leader 1` while every replica
//! reports the same regency and the leader's decided agreement grows (a settled,
//! working cluster; the bench waits for one before each fault), never guessed from the
//! regency. A fault ends [`AFTER_RESUMED`]
//! after the other replicas' metrics show writes resumed (f+1 of them at a higher
//! regency and past the agreement they had decided at the fault), or after
//! [`HOLD_MAX`]; the next fault comes [`SETTLE`] after the failed replica has caught up
//! (its `/health` serving, its last decided agreement at its peers').
//!
//! Each fault runs twice, in this fixed order per fault: with request timeouts alone
//! (`leader_timeout_ms` = [`BASELINE_LEADER_TIMEOUT_MS`], the largest accepted, so only
//! the request timeout replaces a leader: the behaviour before the leader timeout
//! existed; left out with `--no-baseline`), then with the default settings.
//!
//! **Gap** (the client's view, from every operation's completion time): from the fault
//! to the start of the first 100 ms in which at least [`RESUMED_SHARE`] of the steady
//! rate (the median 1 s window before the first fault) completed again, after the
//! first 100 ms below it ([`gap_of`]). Beside
//! it, the zero slots in between and the longest time with no completed write at all.
//! **The replicas' view** (their metrics, scraped every [`SCRAPE_PERIOD`]): when f+1
//! of the others reported a new regency, and when they had decided past the fault.
//! **Leader changes**: every replica's `dura_regency` at the start of the measured
//! window and at its end; the steady part before the first fault must see none.
//!
//! Last, `--quiet-seconds` of the same load on a fresh cluster with default settings
//! and no fault: the regency of every replica must not move (no spurious leader
//! change under load).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dura_engine::runtime::{ClusterConfig, LogMode, Mode};
use serde::{Deserialize, Serialize};

use crate::checkpoints::{SLOT, SLOTS_PER_WINDOW, http_get, mode_dir, per_slot, seconds_of};
use crate::cluster::{LocalCluster, add_metrics_ports, metrics_addrs};
use crate::driver::{OpSpan, RunResult};
use crate::experiment::{ExperimentArgs, spec};
use crate::plot::{Chart, Lane, Series, XAxis};
use crate::recovery::{last_decided, metric_value};
use crate::runner::{Connector, default_out_dir, load_records, progress_bar};

/// Default steady seconds before the first fault of a run (`--seconds`).
pub const STEADY_SECONDS_DEFAULT: f64 = 5.0;
/// How often the bench reads the replicas' metrics while a fault lasts.
pub const SCRAPE_PERIOD: Duration = Duration::from_millis(50);
/// `leader_timeout_ms` of the baseline: the largest the config accepts, so a silent
/// leader is replaced only through request timeouts.
pub const BASELINE_LEADER_TIMEOUT_MS: u64 = 600_000;
/// A fault ends this long after the replicas show writes resumed.
pub const AFTER_RESUMED: Duration = Duration::from_secs(2);
/// A fault ends after this at the latest.
pub const HOLD_MAX: Duration = Duration::from_secs(20);
/// How long the bench waits for a failed replica to catch up after it is back.
pub const CATCH_UP_MAX: Duration = Duration::from_secs(30);
/// Load between a replica caught up and the next fault.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Load after the last fault ended and its replica caught up.
pub const TAIL: Duration = Duration::from_secs(1);
/// How long the bench waits for a settled leader before a fault.
pub const LEADER_WAIT_MAX: Duration = Duration::from_secs(30);
/// Writes have resumed in the first 100 ms slot with at least this share of the
/// steady rate.
pub const RESUMED_SHARE: f64 = 0.5;
/// After a fault, writes must fall below [`RESUMED_SHARE`] of the steady rate within
/// this for the fault to count as having stopped them.
pub const DROP_WITHIN: Duration = Duration::from_secs(2);
/// Faults per run: the leader, then the next leader.
pub const FAULTS_PER_RUN: usize = 2;
/// The goal: writes resume within this after the leader fails.
pub const GOAL_GAP_S: f64 = 1.0;

/// How the leader fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGSTOP, SIGCONT after the measurement.
    Pause,
    /// SIGKILL, started again after the measurement.
    Kill,
}

impl Fault {
    /// The name in the results.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Pause => "pause",
            Fault::Kill => "kill",
        }
    }
}

/// What a run's cluster is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `leader_timeout_ms` = [`BASELINE_LEADER_TIMEOUT_MS`]: request timeouts alone.
    Baseline,
    /// The config's defaults.
    Default,
}

impl Setting {
    /// The name in the results.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Baseline => "request-timeouts-only",
            Setting::Default => "default",
        }
    }
}

/// One replica's view, from its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    regency: u64,
    leader: bool,
    last_decided: u64,
}

fn view(addr: SocketAddr) -> Option<View> {
    let text = http_get(addr, "/metrics").ok()?;
    Some(View {
        regency: metric_value(&text, "dura_regency")?,
        leader: metric_value(&text, "dura_leader")? == 1,
        last_decided: metric_value(&text, "dura_last_decided_agreement_id")?,
    })
}

/// Every replica's regency (None: not reachable, or `skip`ped: a paused replica would
/// hold the scrape for its whole timeout).
fn regencies(metrics: &[SocketAddr], skip: Option<u32>) -> Vec<Option<u64>> {
    metrics
        .iter()
        .enumerate()
        .map(
            |(id, &addr)| {
                if skip == Some(id as u32) { None } else { view(addr).map(|view| view.regency) }
            },
        )
        .collect()
}

/// The largest regency move over the replicas that reported both ends.
pub fn regency_moves(start: &[Option<u64>], end: &[Option<u64>]) -> Option<u64> {
    start
        .iter()
        .zip(end)
        .filter_map(|(start, end)| Some(end.as_ref()?.saturating_sub(*start.as_ref()?)))
        .max()
}

/// Sleeps until `at`; false when `quit` said so first.
fn pause_until(at: Instant, quit: &dyn Fn() -> bool) -> bool {
    while Instant::now() < at {
        if quit() {
            return false;
        }
        std::thread::sleep((at - Instant::now()).min(Duration::from_millis(20)));
    }
    !quit()
}

/// The leader of a settled cluster: every replica answers with the same regency, one
/// of them says it leads, and it decided something in the last [`SCRAPE_PERIOD`]s
/// (so no leader change is under way and the cluster is not stalled). Returns its id
/// and that regency; waits up to [`LEADER_WAIT_MAX`].
fn find_leader(metrics: &[SocketAddr], quit: &dyn Fn() -> bool) -> anyhow::Result<(u32, u64)> {
    let deadline = Instant::now() + LEADER_WAIT_MAX;
    let mut previous: Option<(u32, u64, u64)> = None;
    loop {
        let views: Vec<Option<View>> = metrics.iter().map(|&addr| view(addr)).collect();
        let settled = views.iter().all(Option::is_some)
            && views.iter().flatten().all(|view| Some(view.regency) == views[0].map(|v| v.regency));
        let leaders: Vec<(usize, View)> = views
            .iter()
            .enumerate()
            .filter_map(|(id, view)| view.filter(|view| view.leader).map(|view| (id, view)))
            .collect();
        let now = match (settled, leaders.as_slice()) {
            (true, [(id, view)]) => Some((*id as u32, view.regency, view.last_decided)),
            _ => None,
        };
        if let (Some(now), Some(before)) = (now, previous)
            && now.0 == before.0
            && now.1 == before.1
            && now.2 > before.2
        {
            return Ok((now.0, now.1));
        }
        previous = now;
        anyhow::ensure!(
            Instant::now() < deadline && !quit(),
            "no settled leader within {} s: {views:?}",
            LEADER_WAIT_MAX.as_secs()
        );
        std::thread::sleep(SCRAPE_PERIOD * 4);
    }
}

/// What the controller saw of one fault, in seconds since its origin.
#[derive(Debug, Clone, Default)]
struct FaultEvents {
    replica: u32,
    regency_before: u64,
    at_s: f64,
    new_regency: Option<u64>,
    new_leader: Option<u32>,
    new_regency_at_s: Option<f64>,
    resumed_at_s: Option<f64>,
    ended_at_s: Option<f64>,
    caught_up_at_s: Option<f64>,
}

/// What the controller saw of a run.
#[derive(Debug, Clone, Default)]
struct Controlled {
    regency_start: Vec<Option<u64>>,
    regency_end: Vec<Option<u64>>,
    faults: Vec<FaultEvents>,
    failure: Option<String>,
}

/// The controller's fixed inputs.
struct Plan<'a> {
    fault: Fault,
    metrics: &'a [SocketAddr],
    f: usize,
    origin: Instant,
    warmup: Duration,
    steady: Duration,
}

/// Runs the faults of one run (see the module doc) while the load runs; sets
/// `run_done` when it is over so the load stops.
fn control(
    cluster: &mut LocalCluster,
    plan: &Plan<'_>,
    quit: &dyn Fn() -> bool,
    run_done: &AtomicBool,
) -> Controlled {
    let mut out = Controlled::default();
    if let Err(error) = control_faults(cluster, plan, quit, &mut out) {
        out.failure = Some(format!("{error:#}"));
    }
    out.regency_end = regencies(plan.metrics, None);
    run_done.store(true, Ordering::Relaxed);
    out
}

fn control_faults(
    cluster: &mut LocalCluster,
    plan: &Plan<'_>,
    quit: &dyn Fn() -> bool,
    out: &mut Controlled,
) -> anyhow::Result<()> {
    let &Plan { fault, metrics, f, origin, warmup, steady } = plan;
    let since = |at: Instant| at.saturating_duration_since(origin).as_secs_f64();
    anyhow::ensure!(pause_until(origin + warmup, quit), "the run ended during the warm-up");
    out.regency_start = regencies(metrics, None);
    let mut next_fault = origin + warmup + steady;
    for ordinal in 0..FAULTS_PER_RUN {
        anyhow::ensure!(pause_until(next_fault, quit), "the run ended before fault {ordinal}");
        let (leader, regency_before) = find_leader(metrics, quit)?;
        let others: Vec<usize> = (0..metrics.len()).filter(|&id| id != leader as usize).collect();
        let decided_before =
            others.iter().filter_map(|&id| last_decided(metrics[id])).max().unwrap_or(0);
        match fault {
            Fault::Pause => cluster.pause_replica(leader)?,
            Fault::Kill => cluster.kill_replica(leader)?,
        }
        let at = Instant::now();
        let mut events =
            FaultEvents { replica: leader, regency_before, at_s: since(at), ..Default::default() };
        eprintln!(
            "{} of leader {leader} (regency {regency_before}) at {:.1} s",
            fault.name(),
            events.at_s
        );
        let mut resumed: Option<Instant> = None;
        while at.elapsed() < HOLD_MAX && !quit() {
            cluster.check_alive()?;
            let views: Vec<View> = others.iter().filter_map(|&id| view(metrics[id])).collect();
            let now = Instant::now();
            let moved: Vec<&View> =
                views.iter().filter(|view| view.regency > regency_before).collect();
            if moved.len() > f && events.new_regency_at_s.is_none() {
                events.new_regency_at_s = Some(since(now));
                events.new_regency = moved.iter().map(|view| view.regency).min();
            }
            if events.new_leader.is_none() {
                events.new_leader = others
                    .iter()
                    .zip(&views)
                    .find(|(_, view)| view.leader && view.regency > regency_before)
                    .map(|(&id, _)| id as u32);
            }
            let deciding = moved.iter().filter(|view| view.last_decided > decided_before).count();
            if deciding > f && resumed.is_none() {
                resumed = Some(now);
                events.resumed_at_s = Some(since(now));
            }
            if resumed.is_some_and(|resumed| now >= resumed + AFTER_RESUMED) {
                break;
            }
            std::thread::sleep(SCRAPE_PERIOD);
        }
        match fault {
            Fault::Pause => cluster.resume_replica(leader)?,
            Fault::Kill => cluster.start_replica(leader)?,
        }
        events.ended_at_s = Some(since(Instant::now()));
        let caught_up = wait_caught_up(cluster, metrics, leader, quit)?;
        events.caught_up_at_s = caught_up.map(since);
        eprintln!(
            "leader {leader}: new regency {} (leader {}) seen at {}, writes resumed at {}, \
             back at {:.1} s, caught up at {}",
            opt_u64(events.new_regency),
            opt_u64(events.new_leader.map(u64::from)),
            opt(events.new_regency_at_s, 2),
            opt(events.resumed_at_s, 2),
            events.ended_at_s.unwrap_or(0.0),
            opt(events.caught_up_at_s, 1)
        );
        out.faults.push(events);
        anyhow::ensure!(caught_up.is_some(), "replica {leader} did not catch up");
        next_fault = Instant::now() + SETTLE;
    }
    pause_until(Instant::now() + TAIL, quit);
    Ok(())
}

/// Waits until replica `id` serves and has decided what its peers had when the wait
/// began (the least of their last decided agreements then; up to [`CATCH_UP_MAX`]); when
/// it did, or None. The target is fixed at the start: under load a replica that caught
/// up may still trail the others by an agreement or two at any later scrape.
fn wait_caught_up(
    cluster: &mut LocalCluster,
    metrics: &[SocketAddr],
    id: u32,
    quit: &dyn Fn() -> bool,
) -> anyhow::Result<Option<Instant>> {
    let deadline = Instant::now() + CATCH_UP_MAX;
    let mut target = None;
    while Instant::now() < deadline && !quit() {
        cluster.check_alive()?;
        if target.is_none() {
            target = metrics
                .iter()
                .enumerate()
                .filter(|(peer, _)| *peer != id as usize)
                .filter_map(|(_, &addr)| last_decided(addr))
                .min();
        }
        let addr = metrics[id as usize];
        if http_get(addr, "/health").is_ok()
            && let (Some(mine), Some(target)) = (last_decided(addr), target)
            && mine >= target
        {
            return Ok(Some(Instant::now()));
        }
        std::thread::sleep(SCRAPE_PERIOD);
    }
    Ok(None)
}

/// When writes resumed after a fault, from the client's 100 ms timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    /// The first slot after the fault's with at least `threshold` completions.
    pub resumed_slot: Option<usize>,
    /// From the fault to that slot's start, s.
    pub gap_s: Option<f64>,
    /// Slots with no completion between the fault's slot and that one, s.
    pub zero_s: f64,
}

/// The gap after a fault at `at_s` (window seconds) in `slots` (completions per
/// [`SLOT`]): writes stopped in the first slot after the fault's own with fewer than
/// `threshold` completions (looked for within [`DROP_WITHIN`]: what was ordered
/// before the fault still completes for a while), and resumed in the first slot after
/// that with at least `threshold`. No such drop: the gap is 0.
pub fn gap_of(slots: &[u64], threshold: f64, at_s: f64) -> Gap {
    let slot_s = SLOT.as_secs_f64();
    let first = (at_s.max(0.0) / slot_s) as usize + 1;
    let drop_end = (first + (DROP_WITHIN.as_secs_f64() / slot_s) as usize).min(slots.len());
    let Some(dropped) = (first..drop_end).find(|&slot| (slots[slot] as f64) < threshold) else {
        let seen = drop_end > first;
        return Gap {
            resumed_slot: seen.then_some(first),
            gap_s: seen.then_some(0.0),
            zero_s: 0.0,
        };
    };
    let resumed_slot = (dropped..slots.len()).find(|&slot| slots[slot] as f64 >= threshold);
    let end = resumed_slot.unwrap_or(slots.len());
    let zeros = slots[first..end].iter().filter(|&&n| n == 0).count();
    Gap {
        resumed_slot,
        gap_s: resumed_slot.map(|slot| slot as f64 * slot_s - at_s),
        zero_s: zeros as f64 * slot_s,
    }
}

/// The longest time in `[from_us, to_us]` with no operation completing, s.
pub fn longest_silence(ops: &[OpSpan], from_us: u64, to_us: u64) -> f64 {
    let mut done: Vec<u64> =
        ops.iter().map(|op| op.done_us).filter(|&done| done >= from_us && done <= to_us).collect();
    done.sort_unstable();
    let mut previous = from_us;
    let mut longest = 0;
    for at in done.into_iter().chain(std::iter::once(to_us)) {
        longest = longest.max(at - previous);
        previous = at;
    }
    longest as f64 / 1e6
}

/// One fault's figures; times in seconds from the measured window's start, spans from
/// the fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultFigures {
    /// 0: the leader of the steady part; 1: the next leader.
    pub ordinal: u32,
    /// The replica failed (the leader, from its metrics).
    pub replica: u32,
    /// Its regency then.
    pub regency_before: u64,
    /// When it was paused or killed.
    pub at_s: f64,
    /// Writes completed in the second before the fault over the steady rate (well
    /// below 1: the fault met a cluster that had not recovered from the last one).
    pub before_over_steady: Option<f64>,
    /// The client's gap: from the fault to the first 100 ms with at least half the
    /// steady rate (None: not within the run).
    pub gap_s: Option<f64>,
    /// 100 ms slots with no completed write within the gap, s.
    pub zero_s: f64,
    /// The longest time with no completed write from the fault to the end of the gap,
    /// s.
    pub no_write_s: f64,
    /// The replicas' view: from the fault until f+1 others reported a higher regency.
    pub new_regency_after_s: Option<f64>,
    /// The replicas' view: from the fault until f+1 others, at a higher regency, had
    /// decided past what they had at the fault.
    pub replicas_resumed_after_s: Option<f64>,
    /// The smallest of those regencies.
    pub new_regency: Option<u64>,
    /// The replica whose metrics said it led the new regency.
    pub new_leader: Option<u32>,
    /// When it was resumed (SIGCONT) or started again.
    pub ended_at_s: Option<f64>,
    /// Writes resumed while the replica was still paused or down (false: the gap ran
    /// past its return and is not a failover figure).
    pub resumed_while_failed: bool,
    /// When it had caught up (serving, decided what its peers had).
    pub caught_up_at_s: Option<f64>,
}

/// One run: a fault kind under one setting, on a fresh cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverRun {
    /// `request-timeouts-only` or `default`.
    pub setting: String,
    /// `pause` or `kill`.
    pub fault: String,
    /// The cluster's `leader_timeout_ms`.
    pub leader_timeout_ms: u64,
    /// The cluster's `request_timeout_ms`.
    pub request_timeout_ms: u64,
    /// Median 1 s window before the first fault, ops/s.
    pub steady_ops_per_s: f64,
    /// The faults, in order.
    pub faults: Vec<FaultFigures>,
    /// Every replica's regency at the measured window's start (None: not read).
    pub regency_start: Vec<Option<u64>>,
    /// And at its end.
    pub regency_end: Vec<Option<u64>>,
    /// Leader changes over the run (the largest regency move of a replica).
    pub leader_changes: Option<u64>,
    /// Leader changes in the steady part before the first fault (should be 0).
    pub leader_changes_before_faults: Option<u64>,
    /// Measured operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Seconds the load phase took.
    pub load_s: f64,
    /// What went wrong, if anything.
    pub failure: Option<String>,
    /// Operations completed in each 100 ms of the window.
    pub per_100ms: Vec<u64>,
}

/// The same fault with request timeouts alone and with the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `pause` or `kill`.
    pub fault: String,
    /// 0: the leader; 1: the next leader.
    pub ordinal: u32,
    /// Gap with request timeouts alone, s.
    pub before_gap_s: Option<f64>,
    /// Gap with the defaults, s.
    pub after_gap_s: Option<f64>,
    /// before / after.
    pub ratio: Option<f64>,
}

/// The run with no fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuietRun {
    /// Measured seconds.
    pub seconds: f64,
    /// The cluster's `leader_timeout_ms`.
    pub leader_timeout_ms: u64,
    /// Mean ops/s.
    pub ops_per_s: f64,
    /// Median 1 s window, ops/s.
    pub steady_ops_per_s: f64,
    /// Smallest 1 s window, ops/s.
    pub worst_second_ops_per_s: f64,
    /// Every replica's regency at the window's start.
    pub regency_start: Vec<Option<u64>>,
    /// And at its end.
    pub regency_end: Vec<Option<u64>>,
    /// Leader changes (should be 0).
    pub leader_changes: Option<u64>,
    /// Failed operations.
    pub errors: u64,
}

/// The whole experiment's result (`--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverResult {
    /// `failover`.
    pub experiment: String,
    /// Ordering protocol.
    pub mode: String,
    /// Replicas per cluster.
    pub replicas: u32,
    /// The log mode of every cluster.
    pub log_mode: String,
    /// Client threads (closed loop).
    pub clients: usize,
    /// Records loaded per cluster.
    pub records: u64,
    /// Value size.
    pub value_bytes: usize,
    /// Steady seconds before the first fault.
    pub steady_seconds: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Runs in the order made.
    pub runs: Vec<FailoverRun>,
    /// Gaps before and after, per fault.
    pub comparisons: Vec<Comparison>,
    /// The run with no fault (None: `--quiet-seconds 0`).
    pub quiet: Option<QuietRun>,
    /// Where the files are.
    pub out_dir: PathBuf,
}

fn configure(setting: Setting) -> impl Fn(&mut ClusterConfig) -> anyhow::Result<()> {
    move |config: &mut ClusterConfig| {
        if setting == Setting::Baseline {
            config.leader_timeout_ms = BASELINE_LEADER_TIMEOUT_MS;
        }
        add_metrics_ports(config)
    }
}

/// A fresh cluster for one run, its metrics addresses and a client factory; the load
/// is loaded.
struct Started {
    cluster: LocalCluster,
    dir: Option<tempfile::TempDir>,
    metrics: Vec<SocketAddr>,
    factory: Box<dyn crate::target::TargetFactory>,
    load_s: f64,
}

fn start(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
    setting: Setting,
    name: &str,
    replicas: u32,
) -> anyhow::Result<Started> {
    let mode: Mode = args.mode.into();
    let dir = mode_dir(args, "failover", name)?;
    let cluster = crate::runner::start_cluster_configured(
        replicas,
        mode,
        LogMode::Parallel,
        dir.as_ref().map(|dir| dir.path()),
        &configure(setting),
        connector,
    )?;
    let metrics = metrics_addrs(cluster.config())?;
    let factory = connector(cluster.config(), crate::runner::REQUEST_TIMEOUT)?;
    let load_s = load_records(factory.as_ref(), &spec(args, args.clients_peak), stop)?;
    Ok(Started { cluster, dir, metrics, factory, load_s })
}

/// Runs one fault kind under one setting on a fresh cluster.
fn run_faults(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
    (setting, fault): (Setting, Fault),
    replicas: u32,
) -> anyhow::Result<FailoverRun> {
    let name = format!("{}-{}", setting.name(), fault.name());
    let Started { mut cluster, dir, metrics, factory, load_s } =
        start(args, connector, stop, setting, &name, replicas)?;
    let (leader_timeout_ms, request_timeout_ms) =
        (cluster.config().leader_timeout_ms, cluster.config().request_timeout_ms);
    let f = cluster.config().f as usize;
    let mut run_spec = spec(args, args.clients_peak);
    run_spec.trace_ops = true;
    // At most: every fault held to the end and its replica slow to catch up.
    let per_fault = HOLD_MAX + CATCH_UP_MAX + SETTLE;
    run_spec.duration = Duration::from_secs_f64(args.seconds()) + per_fault * 2 + TAIL;
    let origin = Instant::now();
    let run_done = AtomicBool::new(false);
    let driver_ended = AtomicBool::new(false);
    let plan = Plan {
        fault,
        metrics: &metrics,
        f,
        origin,
        warmup: Duration::from_secs_f64(args.warmup),
        steady: Duration::from_secs_f64(args.seconds()),
    };
    let (result, controlled) = std::thread::scope(|scope| {
        let cluster = &mut cluster;
        let (plan, run_done, driver_ended) = (&plan, &run_done, &driver_ended);
        let controller = scope.spawn(move || {
            let quit = || stop.load(Ordering::Relaxed) || driver_ended.load(Ordering::Relaxed);
            control(cluster, plan, &quit, run_done)
        });
        let mut bar = progress_bar(&name);
        let result = crate::driver::run(factory.as_ref(), &run_spec, run_done, &mut bar);
        driver_ended.store(true, Ordering::Relaxed);
        (result, controller.join().expect("the controller panicked"))
    });
    let result = result?;
    anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
    let mut controlled = controlled;
    if controlled.failure.is_none()
        && let Err(error) = cluster.check_alive()
    {
        controlled.failure = Some(format!("{error:#}"));
    }
    drop(factory);
    let _ = cluster.stop();
    drop(dir);
    let shift = result.measure_start.saturating_duration_since(origin).as_secs_f64();
    let mut run = summarise(&result, &controlled, shift);
    run.setting = setting.name().into();
    run.fault = fault.name().into();
    run.leader_timeout_ms = leader_timeout_ms;
    run.request_timeout_ms = request_timeout_ms;
    run.load_s = load_s;
    Ok(run)
}

fn summarise(result: &RunResult, controlled: &Controlled, shift: f64) -> FailoverRun {
    let measured_us = result.measured.as_micros() as u64;
    let slots = per_slot(&result.ops, measured_us, SLOT.as_micros() as u64);
    let slot_s = SLOT.as_secs_f64();
    let first_fault_s =
        controlled.faults.first().map_or(result.measured.as_secs_f64(), |fault| fault.at_s - shift);
    let before = ((first_fault_s.max(0.0) / slot_s) as usize).min(slots.len());
    let steady = seconds_of(&slots[..before]).steady_ops_per_s;
    let threshold = RESUMED_SHARE * steady / SLOTS_PER_WINDOW as f64;
    let faults = controlled
        .faults
        .iter()
        .enumerate()
        .map(|(ordinal, events)| {
            let at_s = events.at_s - shift;
            let gap = gap_of(&slots, threshold, at_s);
            let at_us = (at_s.max(0.0) * 1e6) as u64;
            let end_us = gap
                .resumed_slot
                .map_or(measured_us, |slot| (slot as u64 + 1) * SLOT.as_micros() as u64)
                .min(measured_us)
                .max(at_us);
            FaultFigures {
                ordinal: ordinal as u32,
                replica: events.replica,
                regency_before: events.regency_before,
                at_s,
                before_over_steady: {
                    let end = ((at_s.max(0.0) / slot_s) as usize).min(slots.len());
                    let second = &slots[end.saturating_sub(SLOTS_PER_WINDOW)..end];
                    (steady > 0.0 && second.len() == SLOTS_PER_WINDOW)
                        .then(|| second.iter().sum::<u64>() as f64 / steady)
                },
                gap_s: gap.gap_s,
                zero_s: gap.zero_s,
                no_write_s: longest_silence(&result.ops, at_us, end_us),
                new_regency_after_s: events.new_regency_at_s.map(|s| s - events.at_s),
                replicas_resumed_after_s: events.resumed_at_s.map(|s| s - events.at_s),
                new_regency: events.new_regency,
                new_leader: events.new_leader,
                ended_at_s: events.ended_at_s.map(|s| s - shift),
                resumed_while_failed: match (gap.gap_s, events.ended_at_s) {
                    (Some(gap), Some(ended)) => at_s + gap <= ended - shift,
                    _ => false,
                },
                caught_up_at_s: events.caught_up_at_s.map(|s| s - shift),
            }
        })
        .collect();
    let before_faults: Vec<Option<u64>> = match controlled.faults.first() {
        Some(first) => {
            // The leader's own regency at the first fault stands for all.
            vec![Some(first.regency_before); controlled.regency_start.len()]
        }
        None => controlled.regency_end.clone(),
    };
    FailoverRun {
        setting: String::new(),
        fault: String::new(),
        leader_timeout_ms: 0,
        request_timeout_ms: 0,
        steady_ops_per_s: steady,
        faults,
        leader_changes: regency_moves(&controlled.regency_start, &controlled.regency_end),
        leader_changes_before_faults: regency_moves(&controlled.regency_start, &before_faults),
        regency_start: controlled.regency_start.clone(),
        regency_end: controlled.regency_end.clone(),
        ops: result.all.len(),
        errors: result.errors,
        seconds: result.measured.as_secs_f64(),
        load_s: 0.0,
        failure: controlled.failure.clone(),
        per_100ms: slots,
    }
}

/// The run with no fault: `--quiet-seconds` of load, every replica's regency read at
/// the window's start and end.
fn run_quiet(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
    replicas: u32,
) -> anyhow::Result<QuietRun> {
    let Started { mut cluster, dir, metrics, factory, .. } =
        start(args, connector, stop, Setting::Default, "quiet", replicas)?;
    let leader_timeout_ms = cluster.config().leader_timeout_ms;
    let mut run_spec = spec(args, args.clients_peak);
    run_spec.duration = Duration::from_secs_f64(args.quiet_seconds);
    run_spec.trace_ops = true;
    let origin = Instant::now();
    let driver_ended = AtomicBool::new(false);
    let (result, regency_start) = std::thread::scope(|scope| {
        let (metrics, driver_ended) = (&metrics, &driver_ended);
        let reader = scope.spawn(move || {
            let quit = || stop.load(Ordering::Relaxed) || driver_ended.load(Ordering::Relaxed);
            pause_until(origin + Duration::from_secs_f64(args.warmup), &quit)
                .then(|| regencies(metrics, None))
        });
        let mut bar = progress_bar("quiet");
        let result = crate::driver::run(factory.as_ref(), &run_spec, stop, &mut bar);
        driver_ended.store(true, Ordering::Relaxed);
        (result, reader.join().expect("the regency reader panicked"))
    });
    let result = result?;
    anyhow::ensure!(!result.interrupted, "interrupted");
    let regency_start = regency_start.context("the run ended before the warm-up did")?;
    let regency_end = regencies(&metrics, None);
    cluster.check_alive()?;
    drop(factory);
    let _ = cluster.stop();
    drop(dir);
    let slots = per_slot(&result.ops, result.measured.as_micros() as u64, SLOT.as_micros() as u64);
    let seconds = seconds_of(&slots);
    Ok(QuietRun {
        seconds: result.measured.as_secs_f64(),
        leader_timeout_ms,
        ops_per_s: result.ops_per_s(),
        steady_ops_per_s: seconds.steady_ops_per_s,
        worst_second_ops_per_s: seconds.worst_ops_per_s,
        leader_changes: regency_moves(&regency_start, &regency_end),
        regency_start,
        regency_end,
        errors: result.errors,
    })
}

/// The gaps of both settings side by side.
fn compare(runs: &[FailoverRun]) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for fault in [Fault::Pause, Fault::Kill] {
        let of = |setting: Setting| {
            runs.iter().find(|run| run.setting == setting.name() && run.fault == fault.name())
        };
        let (before, after) = (of(Setting::Baseline), of(Setting::Default));
        for ordinal in 0..FAULTS_PER_RUN {
            let gap = |run: Option<&FailoverRun>| {
                run?.faults.iter().find(|f| f.ordinal as usize == ordinal)?.gap_s
            };
            let (before_gap_s, after_gap_s) = (gap(before), gap(after));
            if after.is_none() && before.is_none() {
                continue;
            }
            comparisons.push(Comparison {
                fault: fault.name().into(),
                ordinal: ordinal as u32,
                before_gap_s,
                after_gap_s,
                ratio: match (before_gap_s, after_gap_s) {
                    (Some(before), Some(after)) if after > 0.0 => Some(before / after),
                    _ => None,
                },
            });
        }
    }
    comparisons
}

/// Runs the experiment, writes its files (`failover.json`, `.txt`, `.svg`, `.png`,
/// `-timeline.csv`) and returns its result.
pub fn run(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
) -> anyhow::Result<FailoverResult> {
    anyhow::ensure!(!args.memory, "the failover experiment needs real replicas (no --memory)");
    anyhow::ensure!(args.seconds() > 0.0 && args.warmup >= 0.0, "bad --seconds or --warmup");
    anyhow::ensure!(args.quiet_seconds >= 0.0, "bad --quiet-seconds");
    anyhow::ensure!(args.records() > 0 && args.clients_peak > 0, "bad --records or --clients");
    let mode: Mode = args.mode.into();
    let replicas = args.replicas.unwrap_or(mode.replicas_min(1) as u32);
    anyhow::ensure!(replicas >= mode.replicas_min(1) as u32, "--replicas {replicas} is too few");
    let out_dir = args.out.clone().unwrap_or_else(|| default_out_dir("failover"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let settings: &[Setting] =
        if args.no_baseline { &[Setting::Default] } else { &[Setting::Baseline, Setting::Default] };
    let mut runs = Vec::new();
    for fault in [Fault::Pause, Fault::Kill] {
        for &setting in settings {
            runs.push(run_faults(args, connector, stop, (setting, fault), replicas)?);
        }
    }
    let quiet = if args.quiet_seconds > 0.0 {
        Some(run_quiet(args, connector, stop, replicas)?)
    } else {
        None
    };
    let result = FailoverResult {
        experiment: "failover".into(),
        mode: mode.to_string(),
        replicas,
        log_mode: LogMode::Parallel.to_string(),
        clients: args.clients_peak,
        records: args.records(),
        value_bytes: args.value_bytes(),
        steady_seconds: args.seconds(),
        warmup_s: args.warmup,
        comparisons: compare(&runs),
        runs,
        quiet,
        out_dir: out_dir.clone(),
    };
    write_files(&result)?;
    Ok(result)
}

fn fault_spans(run: &FailoverRun) -> Vec<(f64, f64)> {
    run.faults
        .iter()
        .map(|fault| (fault.at_s.max(0.0), fault.ended_at_s.unwrap_or(run.seconds).max(0.0)))
        .collect()
}

fn write_files(result: &FailoverResult) -> anyhow::Result<()> {
    let dir = &result.out_dir;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("failover.json", &serde_json::to_string_pretty(result)?)?;
    write("failover.txt", &to_text(result))?;
    let mut timeline = String::from("setting,fault,start_s,ops_per_s,failed\n");
    let slot_s = SLOT.as_secs_f64();
    for run in &result.runs {
        let spans = fault_spans(run);
        for (slot, ops) in run.per_100ms.iter().enumerate() {
            let start = slot as f64 * slot_s;
            let failed = spans.iter().any(|&(from, to)| start + slot_s > from && start < to);
            let _ = writeln!(
                timeline,
                "{},{},{start:.1},{},{}",
                run.setting,
                run.fault,
                *ops as f64 / slot_s,
                u8::from(failed)
            );
        }
    }
    write("failover-timeline.csv", &timeline)?;
    crate::plot::write_svg_and_png(dir, "failover", &charts(result))
}

/// One timeline panel per run: throughput per 100 ms, each fault as a vertical line,
/// the failed replica's time down (paused or killed) and the gap as bars.
pub fn charts(result: &FailoverResult) -> Vec<Chart> {
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
            let top = points.iter().map(|point| point.1).fold(0.0, f64::max);
            let mut series = vec![Series { name: "per 100 ms".into(), points }];
            for fault in &run.faults {
                series.push(Series {
                    name: format!("{} of r{} (leader)", run.fault, fault.replica),
                    points: vec![(fault.at_s, 0.0), (fault.at_s, top)],
                });
            }
            let gaps = run
                .faults
                .iter()
                .filter_map(|fault| Some((fault.at_s, fault.at_s + fault.gap_s?)))
                .collect();
            let gap_text: Vec<String> =
                run.faults.iter().map(|fault| opt(fault.gap_s, 2)).collect();
            Chart {
                title: format!(
                    "{} leader, {} (leader timeout {} ms): gaps {} s",
                    if run.fault == "pause" { "paused" } else { "killed" },
                    run.setting,
                    run.leader_timeout_ms,
                    gap_text.join(", ")
                ),
                x_label: format!(
                    "time (s); {} clients; request timeout {} ms",
                    result.clients, run.request_timeout_ms
                ),
                y_label: "ops/s (per 100 ms)".into(),
                x_axis: XAxis::Linear,
                markers: false,
                series,
                lanes: vec![
                    Lane {
                        name: if run.fault == "pause" { "paused" } else { "down" }.into(),
                        spans: fault_spans(run),
                    },
                    Lane { name: "gap".into(), spans: gaps },
                ],
            }
        })
        .collect()
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |value| format!("{value:.digits$}"))
}

fn opt_u64(value: Option<u64>) -> String {
    value.map_or("-".into(), |value| value.to_string())
}

fn regency_text(values: &[Option<u64>]) -> String {
    let values: Vec<String> = values.iter().map(|value| opt_u64(*value)).collect();
    values.join(" ")
}

/// The printed report.
pub fn to_text(result: &FailoverResult) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Failover on this machine: {} replicas ({}), log {}, {} records of {} B, {} clients \
         closed loop (100% writes); per run {} s warm-up, {} s steady, then the leader fails, \
         then the next leader",
        result.replicas,
        result.mode,
        result.log_mode,
        result.records,
        result.value_bytes,
        result.clients,
        result.warmup_s,
        result.steady_seconds
    );
    let _ = writeln!(
        text,
        "gap = from the fault past the drop to the first 100 ms with >= {RESUMED_SHARE} of the \
         steady rate (client's view; before = the second before the fault over steady); \
         replicas' view = from the fault until f+1 others report a new \
         regency / have decided in it (their metrics every {} ms)",
        SCRAPE_PERIOD.as_millis()
    );
    for run in &result.runs {
        let _ = writeln!(
            text,
            "\n{} leader, {} (leader_timeout_ms {}, request_timeout_ms {}): steady {:.0} ops/s, \
             {} ops, {} errors, leader changes {} (before the faults {}), regency {} -> {}",
            if run.fault == "pause" { "paused" } else { "killed" },
            run.setting,
            run.leader_timeout_ms,
            run.request_timeout_ms,
            run.steady_ops_per_s,
            run.ops,
            run.errors,
            opt_u64(run.leader_changes),
            opt_u64(run.leader_changes_before_faults),
            regency_text(&run.regency_start),
            regency_text(&run.regency_end)
        );
        let _ = writeln!(
            text,
            "  {:<12} {:>7} {:>7} {:>7} {:>7} {:>10} {:>9} {:>10} {:>11} {:>10} {:>10}",
            "fault",
            "at s",
            "before",
            "gap s",
            "zero s",
            "no write s",
            "regency",
            "new leader",
            "new reg. s",
            "decided s",
            "back at s"
        );
        for fault in &run.faults {
            let _ = writeln!(
                text,
                "  {:<12} {:>7.2} {:>7} {:>7} {:>7.1} {:>10.2} {:>9} {:>10} {:>11} {:>10} {:>10}",
                format!(
                    "{} r{}",
                    if fault.ordinal == 0 { "leader" } else { "next" },
                    fault.replica
                ),
                fault.at_s,
                opt(fault.before_over_steady, 2),
                format!(
                    "{}{}",
                    opt(fault.gap_s, 2),
                    if fault.resumed_while_failed { "" } else { "!" }
                ),
                fault.zero_s,
                fault.no_write_s,
                format!("{}->{}", fault.regency_before, opt_u64(fault.new_regency)),
                opt_u64(fault.new_leader.map(u64::from)),
                opt(fault.new_regency_after_s, 2),
                opt(fault.replicas_resumed_after_s, 2),
                opt(fault.ended_at_s, 1)
            );
        }
        if run.faults.iter().any(|fault| !fault.resumed_while_failed) {
            let _ = writeln!(
                text,
                "  !: writes did not resume before the replica was back (not a failover figure)"
            );
        }
        if let Some(failure) = &run.failure {
            let _ = writeln!(text, "  failure: {failure}");
        }
        let _ = write!(text, "  per second:");
        for second in run.per_100ms.chunks(SLOTS_PER_WINDOW) {
            let _ = write!(text, " {}", second.iter().sum::<u64>());
        }
        let _ = writeln!(text);
    }
    if !result.comparisons.is_empty() {
        let _ = writeln!(
            text,
            "\ngap (s)             request timeouts only   default   before / after   goal <= {GOAL_GAP_S} s"
        );
        for comparison in &result.comparisons {
            let name = format!(
                "{} {}",
                if comparison.fault == "pause" { "paused" } else { "killed" },
                if comparison.ordinal == 0 { "leader" } else { "next leader" }
            );
            let _ = writeln!(
                text,
                "{name:<20} {:>21} {:>9} {:>16} {:>13}",
                opt(comparison.before_gap_s, 2),
                opt(comparison.after_gap_s, 2),
                opt(comparison.ratio, 1),
                match comparison.after_gap_s {
                    Some(gap) if gap <= GOAL_GAP_S => "met",
                    _ => "NOT met",
                }
            );
        }
    }
    if let Some(quiet) = &result.quiet {
        let _ = writeln!(
            text,
            "\nno fault, {:.0} s, default settings (leader_timeout_ms {}): {:.0} ops/s (median \
             second {:.0}, worst {:.0}), {} errors, leader changes {} (regency {} -> {}; goal 0)",
            quiet.seconds,
            quiet.leader_timeout_ms,
            quiet.ops_per_s,
            quiet.steady_ops_per_s,
            quiet.worst_second_ops_per_s,
            quiet.errors,
            opt_u64(quiet.leader_changes),
            regency_text(&quiet.regency_start),
            regency_text(&quiet.regency_end)
        );
    }
    let _ = writeln!(text, "results in {}", result.out_dir.display());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_runs_from_the_fault_past_the_drop_to_the_first_slot_back_at_the_threshold() {
        // 100 per slot, a fault at 1.03 s, what was ordered before it completing until
        // 1.2 s, nothing from 1.2 to 1.6 s, 30 at 1.6 s, 80 at 1.7 s.
        let mut slots = vec![100u64; 40];
        for slot in &mut slots[12..16] {
            *slot = 0;
        }
        slots[16] = 30;
        slots[17] = 80;
        let gap = gap_of(&slots, 50.0, 1.03);
        assert_eq!(gap.resumed_slot, Some(17));
        assert!((gap.gap_s.expect("resumed") - 0.67).abs() < 1e-9);
        assert!((gap.zero_s - 0.4).abs() < 1e-9);
        // Never back: no gap figure, every zero slot to the end counted.
        let gap = gap_of(&slots[..16], 50.0, 1.03);
        assert_eq!(gap.gap_s, None);
        assert!((gap.zero_s - 0.4).abs() < 1e-9);
        // No drop within DROP_WITHIN of the fault (a later one is another matter): 0.
        let mut late = vec![100u64; 60];
        late[45] = 0;
        let gap = gap_of(&late, 50.0, 1.03);
        assert_eq!(gap.gap_s, Some(0.0));
        assert_eq!(gap.zero_s, 0.0);
    }

    #[test]
    fn the_longest_silence_counts_from_the_fault_and_to_the_end() {
        let op = |done_ms: u64| OpSpan { sent_us: 0, done_us: done_ms * 1000 };
        let ops = [op(50), op(1_100), op(1_150), op(1_900)];
        assert!((longest_silence(&ops, 1_000_000, 2_000_000) - 0.75).abs() < 1e-9);
        assert!((longest_silence(&[], 1_000_000, 1_400_000) - 0.4).abs() < 1e-9);
    }

    #[test]
    fn leader_changes_are_the_largest_regency_move() {
        let start = [Some(0), Some(0), None, Some(1)];
        let end = [Some(2), Some(1), Some(5), None];
        assert_eq!(regency_moves(&start, &end), Some(2));
        assert_eq!(regency_moves(&[None], &[Some(1)]), None);
    }
}
