//! `dura-bench experiment checkpoints`: throughput per 100 ms while replicas write
//! checkpoints, for three modes, each on a fresh local cluster (BFT, n = 4, `parallel`
//! log), in this fixed order:
//!
//! 1. `coordinated` + `stop-the-world`: every replica at the same point, execution
//!    stopped until it is durable (the paper's Figure 2);
//! 2. `sequential` + `stop-the-world`: one replica at a time, stopped (its Figure 10);
//! 3. `sequential` + `background`: one replica at a time, written from an O(1) view
//!    while execution goes on (ours).
//!
//! Each mode loads the state (`--records` of `--value-bytes`), then runs the paper's
//! workload (100% replaces, uniform keys) closed loop with `--clients-peak` clients.
//! Every operation's send and completion time is kept ([`crate::driver::OpSpan`]). A
//! thread of the bench scrapes each replica's metrics endpoint every
//! [`SCRAPE_PERIOD`] and turns its checkpoint counters and gauge into intervals (the
//! replicas' own view; [`IntervalTracker`]). From those two:
//!
//! - throughput per 100 ms, and every 1 s window sliding by 100 ms: the steady rate is
//!   the windows' median, the worst second the smallest, reported over the median;
//! - p99 latency of the operations whose lifetime (sent to completed) overlaps a
//!   checkpoint of any replica, over p99 of the others (by lifetime, not completion:
//!   under stop-the-world nothing completes while every replica checkpoints, and the
//!   operations it stalled complete just after);
//! - each replica's peak RSS (VmHWM) at the end of the mode.
//!
//! P, the checkpoint period, is the same for every mode: `--checkpoint-period`, or from
//! a calibration run without checkpoints so that each replica checkpoints about
//! [`CHECKPOINTS_PER_REPLICA`] times in `--seconds`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dura_engine::runtime::{CheckpointScheduleKind, CheckpointWrite, ClusterConfig, LogMode, Mode};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::driver::{OpSpan, RunResult, latency_histogram};
use crate::experiment::{ExperimentArgs, spec};
use crate::plot::{Chart, Lane, Series, XAxis};
use crate::results::ReplicaRss;
use crate::runner::{Connector, default_out_dir, load_records, progress_bar};

/// The modes, in the order they run.
pub const MODES: [(CheckpointScheduleKind, CheckpointWrite); 3] = [
    (CheckpointScheduleKind::Coordinated, CheckpointWrite::StopTheWorld),
    (CheckpointScheduleKind::Sequential, CheckpointWrite::StopTheWorld),
    (CheckpointScheduleKind::Sequential, CheckpointWrite::Background),
];
/// Throughput timeline resolution.
pub const SLOT: Duration = Duration::from_millis(100);
/// Slots in the 1 s windows.
pub const SLOTS_PER_WINDOW: usize = 10;
/// How often the bench scrapes each replica's metrics.
pub const SCRAPE_PERIOD: Duration = Duration::from_millis(20);
/// Connect, send and receive limit of one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
/// Without `--checkpoint-period`, P makes each replica checkpoint about this many times
/// in `--seconds` at the calibrated rate (fewer where checkpoints slow the service).
pub const CHECKPOINTS_PER_REPLICA: f64 = 3.0;
/// Records the calibration cluster loads at most.
const CALIBRATION_RECORDS_MAX: u64 = 20_000;
/// Measured seconds of the calibration run (after a 1 s warm-up).
const CALIBRATION_SECONDS: f64 = 3.0;

/// The goals for ours (`sequential` + `background`) with a 1 GiB state.
pub mod goals {
    /// The worst 1 s window over the steady median, at least.
    pub const WORST_SECOND_OVER_STEADY_MIN: f64 = 0.95;
    /// p99 during checkpoints over p99 outside, at most.
    pub const P99_DURING_OVER_OUTSIDE_MAX: f64 = 1.2;
    /// Peak RSS at most this times the state...
    pub const RSS_STATE_FACTOR: f64 = 1.5;
    /// ... plus this.
    pub const RSS_SLACK_BYTES: u64 = 256 << 20;
}

/// The schedule's config name.
pub fn schedule_name(schedule: CheckpointScheduleKind) -> &'static str {
    match schedule {
        CheckpointScheduleKind::Sequential => "sequential",
        CheckpointScheduleKind::Coordinated => "coordinated",
        CheckpointScheduleKind::Off => "off",
    }
}

/// The write mode's config name.
pub fn write_name(write: CheckpointWrite) -> &'static str {
    match write {
        CheckpointWrite::Background => "background",
        CheckpointWrite::StopTheWorld => "stop-the-world",
    }
}

/// What the paper's figure or our goal is for a mode.
fn mode_label(schedule: &str, write: &str) -> &'static str {
    match (schedule, write) {
        ("coordinated", "stop-the-world") => "paper Fig. 2",
        ("sequential", "stop-the-world") => "paper Fig. 10",
        ("sequential", "background") => "ours",
        _ => "",
    }
}

/// One replica's checkpoint counters and gauge, from its metrics text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointGauges {
    /// `dura_checkpoints_started_total`.
    pub started: u64,
    /// `dura_checkpoints_written_total`.
    pub written: u64,
    /// `dura_checkpoints_failed_total`.
    pub failed: u64,
    /// `dura_checkpoint_writing_agreement_id` (0: none being written).
    pub writing: u64,
}

impl CheckpointGauges {
    /// The values in a Prometheus text page; None when a counter is missing.
    pub fn parse(text: &str) -> Option<Self> {
        let mut found = [None; 4];
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let mut fields = line.split_whitespace();
            let (Some(name), Some(value)) = (fields.next(), fields.next()) else { continue };
            let slot = match name {
                "dura_checkpoints_started_total" => 0,
                "dura_checkpoints_written_total" => 1,
                "dura_checkpoints_failed_total" => 2,
                "dura_checkpoint_writing_agreement_id" => 3,
                _ => continue,
            };
            found[slot] = value.parse::<u64>().ok();
        }
        Some(Self {
            started: found[0]?,
            written: found[1]?,
            failed: found[2].unwrap_or(0),
            writing: found[3].unwrap_or(0),
        })
    }

    /// Whether a checkpoint is being written (handed to the writer, not answered yet).
    pub fn in_progress(&self) -> bool {
        self.writing != 0 || self.started > self.written + self.failed
    }
}

/// One checkpoint of one replica as the bench saw it, in seconds from the start of the
/// measured window (negative: before it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Replica id.
    pub replica: u32,
    /// First scrape that saw it in progress (or, when none did, the scrape before the
    /// one that found it done).
    pub start_s: f64,
    /// First scrape that saw it done (or the last scrape, when `open_at_end`).
    pub end_s: f64,
    /// False when it began and ended between two scrapes (known only from the
    /// counters; its length is at most one scrape period).
    pub seen: bool,
    /// Still in progress at the last scrape.
    pub open_at_end: bool,
}

/// Turns one replica's successive scrapes into checkpoint intervals. Times are in
/// seconds on any clock shared by the calls.
#[derive(Debug, Clone, Default)]
pub struct IntervalTracker {
    replica: u32,
    last: Option<(f64, CheckpointGauges)>,
    open: Option<f64>,
    intervals: Vec<Interval>,
}

impl IntervalTracker {
    /// A tracker for replica `replica`.
    pub fn new(replica: u32) -> Self {
        Self { replica, ..Self::default() }
    }

    fn push(&mut self, start_s: f64, end_s: f64, seen: bool, open_at_end: bool) {
        self.intervals.push(Interval { replica: self.replica, start_s, end_s, seen, open_at_end });
    }

    /// A scrape at `at_s` read `now`.
    pub fn observe(&mut self, at_s: f64, now: CheckpointGauges) {
        let (previous_at, previous) = self.last.unwrap_or((at_s, now));
        let ended_between =
            (now.written + now.failed).saturating_sub(previous.written + previous.failed);
        let started_between = now.started.saturating_sub(previous.started);
        match self.open {
            Some(start) if !now.in_progress() => {
                self.push(start, at_s, true, false);
                self.open = None;
            }
            // One ended and the next began between two scrapes.
            Some(start) if ended_between > 0 && started_between > 0 => {
                self.push(start, at_s, true, false);
                self.open = Some(at_s);
            }
            Some(_) => {}
            None if now.in_progress() => self.open = Some(at_s),
            None if started_between > 0 => self.push(previous_at, at_s, false, false),
            None => {}
        }
        self.last = Some((at_s, now));
    }

    /// The intervals seen; one still open ends at the last scrape.
    pub fn finish(mut self) -> Vec<Interval> {
        if let (Some(start), Some((at_s, _))) = (self.open, self.last) {
            self.push(start, at_s, true, true);
        }
        self.intervals
    }
}

/// `GET path` over HTTP/1.0 from `addr`: the body of a 200 response.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| invalid("no header end"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(invalid(head.lines().next().unwrap_or("empty response")));
    }
    Ok(body.to_string())
}

/// Scrapes every address in `metrics` every [`SCRAPE_PERIOD`] until `done`; returns
/// each replica's intervals in seconds since `origin`. A failed scrape is skipped.
fn scrape_checkpoints(metrics: &[SocketAddr], origin: Instant, done: &AtomicBool) -> Vec<Interval> {
    let mut trackers: Vec<IntervalTracker> =
        (0..metrics.len()).map(|id| IntervalTracker::new(id as u32)).collect();
    let mut next = Instant::now();
    loop {
        let last_round = done.load(Ordering::Relaxed);
        for (tracker, &addr) in trackers.iter_mut().zip(metrics) {
            let Ok(text) = http_get(addr, "/metrics") else { continue };
            if let Some(gauges) = CheckpointGauges::parse(&text) {
                tracker.observe(origin.elapsed().as_secs_f64(), gauges);
            }
        }
        if last_round {
            break;
        }
        next += SCRAPE_PERIOD;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    trackers.into_iter().flat_map(IntervalTracker::finish).collect()
}

/// Operations completed in each whole `slot_us` of a `measured_us` window (a last,
/// partial slot is left out: it would read as a dip).
pub fn per_slot(ops: &[OpSpan], measured_us: u64, slot_us: u64) -> Vec<u64> {
    let mut slots = vec![0u64; (measured_us / slot_us) as usize];
    for op in ops {
        if let Some(slot) = slots.get_mut((op.done_us / slot_us) as usize) {
            *slot += 1;
        }
    }
    slots
}

/// The median of `values` (the mean of the middle two for an even count); 0 if empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0,
    }
}

/// The steady and worst second of a slot timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds {
    /// Median of the operations in every 1 s window (sliding by one slot), ops/s.
    pub steady_ops_per_s: f64,
    /// The smallest window, ops/s.
    pub worst_ops_per_s: f64,
    /// Where the smallest window starts, in slots.
    pub worst_at_slot: usize,
}

/// The 1 s windows of `slots` (each `SLOTS_PER_WINDOW` long, sliding by one slot);
/// with fewer slots than a window, the whole timeline scaled to a second.
pub fn seconds_of(slots: &[u64]) -> Seconds {
    let windows: Vec<f64> = if slots.len() >= SLOTS_PER_WINDOW {
        slots.windows(SLOTS_PER_WINDOW).map(|window| window.iter().sum::<u64>() as f64).collect()
    } else if slots.is_empty() {
        Vec::new()
    } else {
        vec![slots.iter().sum::<u64>() as f64 * SLOTS_PER_WINDOW as f64 / slots.len() as f64]
    };
    let (worst_at_slot, worst) =
        windows.iter().copied().enumerate().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, 0.0));
    Seconds { steady_ops_per_s: median(&windows), worst_ops_per_s: worst, worst_at_slot }
}

/// The smallest 1 s window (sliding by one slot) during which no replica was
/// checkpointing (`busy[i]`: some replica checkpointed in slot `i`), ops/s; `None`
/// when every window saw a checkpoint. In the coordinated mode, where checkpoints are
/// a few long pauses, this is the machine's own floor: how low a second falls with no
/// checkpoint anywhere, which the worst second of the other modes is read against.
pub fn worst_quiet_second(slots: &[u64], busy: &[bool]) -> Option<f64> {
    assert_eq!(slots.len(), busy.len(), "one busy flag per slot");
    if slots.len() < SLOTS_PER_WINDOW {
        return None;
    }
    slots
        .windows(SLOTS_PER_WINDOW)
        .zip(busy.windows(SLOTS_PER_WINDOW))
        .filter(|(_, busy)| !busy.iter().any(|&b| b))
        .map(|(window, _)| window.iter().sum::<u64>() as f64)
        .reduce(f64::min)
}

/// Per slot of `slot_count`, whether any of `intervals` overlaps it.
pub fn busy_slots(intervals: &[Interval], slot_count: usize) -> Vec<bool> {
    let slot_s = SLOT.as_secs_f64();
    (0..slot_count)
        .map(|slot| {
            let (start, end) = (slot as f64 * slot_s, (slot + 1) as f64 * slot_s);
            intervals.iter().any(|interval| interval.start_s < end && interval.end_s > start)
        })
        .collect()
}

/// The union of `intervals`, sorted, in µs from the window's start.
pub fn union_us(intervals: &[Interval]) -> Vec<(u64, u64)> {
    let to_us = |seconds: f64| (seconds.max(0.0) * 1e6) as u64;
    let mut spans: Vec<(u64, u64)> =
        intervals.iter().map(|interval| (to_us(interval.start_s), to_us(interval.end_s))).collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Latencies (µs) of the operations whose lifetime overlaps a span of `union` (sorted,
/// disjoint), and of the others.
pub fn split_latency(ops: &[OpSpan], union: &[(u64, u64)]) -> (Histogram<u64>, Histogram<u64>) {
    let (mut during, mut outside) = (latency_histogram(), latency_histogram());
    for op in ops {
        // The first span that does not end before the operation was sent.
        let index = union.partition_point(|&(_, end)| end < op.sent_us);
        let overlaps = union.get(index).is_some_and(|&(start, _)| start <= op.done_us);
        let latency = op.done_us.saturating_sub(op.sent_us).max(1);
        if overlaps { &mut during } else { &mut outside }.saturating_record(latency);
    }
    (during, outside)
}

/// One mode's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointsMode {
    /// `coordinated` or `sequential`.
    pub schedule: String,
    /// `stop-the-world` or `background`.
    pub write: String,
    /// Checkpoints (all replicas together) that overlap the measured window.
    pub checkpoints: u64,
    /// The same, per replica.
    pub checkpoints_per_replica: Vec<u64>,
    /// Mean length of the checkpoints seen start to end inside the window, s.
    pub checkpoint_seconds_mean: Option<f64>,
    /// The longest of them, s.
    pub checkpoint_seconds_max: Option<f64>,
    /// Measured operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Mean throughput over the window.
    pub ops_per_s: f64,
    /// Median of the 1 s windows, ops/s.
    pub steady_ops_per_s: f64,
    /// The smallest 1 s window, ops/s.
    pub worst_second_ops_per_s: f64,
    /// Where it starts, s from the window's start.
    pub worst_second_at_s: f64,
    /// `worst_second_ops_per_s / steady_ops_per_s`.
    pub worst_second_over_steady: f64,
    /// The smallest 1 s window with no replica checkpointing, over the steady rate
    /// ([`worst_quiet_second`]); `None` when every window saw a checkpoint.
    pub worst_quiet_second_over_steady: Option<f64>,
    /// p99 latency of all operations, µs.
    pub p99_us: u64,
    /// Operations whose lifetime overlaps a checkpoint of some replica.
    pub ops_during: u64,
    /// p99 of those, µs (None: there were none).
    pub p99_during_us: Option<u64>,
    /// Operations that overlap no checkpoint.
    pub ops_outside: u64,
    /// p99 of those, µs (None: there were none).
    pub p99_outside_us: Option<u64>,
    /// `p99_during_us / p99_outside_us`.
    pub p99_during_over_outside: Option<f64>,
    /// Each replica's peak RSS at the end of the mode.
    pub replica_rss: Vec<ReplicaRss>,
    /// The largest of them.
    pub peak_rss_bytes_max: Option<u64>,
    /// Seconds the load phase took (checkpoints on their schedule meanwhile).
    pub load_s: f64,
    /// Operations completed in each 100 ms of the window.
    pub per_100ms: Vec<u64>,
    /// Every checkpoint interval the bench saw, in seconds from the window's start.
    pub intervals: Vec<Interval>,
    /// What each replica said about its log when it stopped.
    pub replica_log: Vec<String>,
}

/// Whether ours met a goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// What is measured.
    pub name: String,
    /// The figure.
    pub value: Option<f64>,
    /// The bound.
    pub bound: f64,
    /// Whether the figure is within the bound.
    pub met: bool,
}

/// The whole experiment's result (`--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointsResult {
    /// `checkpoints`.
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
    /// Measured seconds per mode.
    pub seconds: f64,
    /// Warm-up seconds per mode.
    pub warmup_s: f64,
    /// P, every mode.
    pub checkpoint_period: u64,
    /// Throughput of the calibration run P was derived from (None: `--checkpoint-period`).
    pub calibration_ops_per_s: Option<f64>,
    /// The paper's Eq. (1) with the measured C_max (longest checkpoint seen in the
    /// sequential modes) and T_max (highest steady rate): P must exceed this.
    pub eq1_period_min: Option<u64>,
    /// Per mode, in the order run (fixed: [`MODES`]).
    pub modes: Vec<CheckpointsMode>,
    /// The goals for ours, at this run's state size.
    pub goals: Vec<Goal>,
    /// Where the files are.
    pub out_dir: PathBuf,
}

/// A fresh local cluster for one mode: checkpoints as given, metrics ports, data in a
/// fresh folder.
fn configure(
    schedule: CheckpointScheduleKind,
    write: CheckpointWrite,
    period: u64,
) -> impl Fn(&mut ClusterConfig) -> anyhow::Result<()> {
    move |config: &mut ClusterConfig| {
        config.checkpoint_schedule = schedule;
        config.checkpoint_write = write;
        config.checkpoint_period = period;
        if schedule == CheckpointScheduleKind::Off {
            return Ok(());
        }
        crate::cluster::add_metrics_ports(config)?;
        Ok(())
    }
}

/// A folder for one cluster: inside `--data-dir` (removed when dropped: checkpoints
/// and logs of a large state fill a disk), or None for the cluster's own temp dir.
pub(crate) fn mode_dir(
    args: &ExperimentArgs,
    experiment: &str,
    name: &str,
) -> anyhow::Result<Option<tempfile::TempDir>> {
    let Some(root) = &args.data_dir else { return Ok(None) };
    std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{experiment}-{name}-"))
        .tempdir_in(root)
        .with_context(|| format!("create a folder in {}", root.display()))?;
    Ok(Some(dir))
}

/// The calibration: a cluster without checkpoints loads a small state and runs the
/// experiment's load for [`CALIBRATION_SECONDS`]; its throughput, ops/s.
fn calibrate(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
) -> anyhow::Result<f64> {
    let mode: Mode = args.mode.into();
    let dir = mode_dir(args, "checkpoints", "calibration")?;
    let off = configure(CheckpointScheduleKind::Off, CheckpointWrite::Background, 1 << 20);
    let cluster = crate::runner::start_cluster_configured(
        mode.replicas_min(1) as u32,
        mode,
        LogMode::Parallel,
        dir.as_ref().map(|dir| dir.path()),
        &off,
        connector,
    )?;
    let factory = connector(cluster.config(), crate::runner::REQUEST_TIMEOUT)?;
    let mut calibration = spec(args, args.clients_peak);
    calibration.records = args.records().min(CALIBRATION_RECORDS_MAX);
    calibration.warmup = Duration::from_secs(1);
    calibration.duration = Duration::from_secs_f64(CALIBRATION_SECONDS);
    let result = crate::runner::load_and_run(
        factory.as_ref(),
        &calibration,
        false,
        stop,
        "calibration (no checkpoints)",
    )?;
    anyhow::ensure!(!result.interrupted, "interrupted");
    drop(factory);
    cluster.stop();
    Ok(result.ops_per_s())
}

/// P from a calibrated rate: each replica checkpoints [`CHECKPOINTS_PER_REPLICA`] times
/// in `seconds` at `ops_per_s`; at least 2n (the config's bound).
pub fn period_for(ops_per_s: f64, seconds: f64, replicas: u32) -> u64 {
    let period = (ops_per_s * seconds / CHECKPOINTS_PER_REPLICA).round();
    let min = 2 * u64::from(replicas);
    if period.is_finite() { (period as u64).max(min) } else { min }
}

/// Runs one mode on a fresh cluster.
fn run_mode(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
    (schedule, write): (CheckpointScheduleKind, CheckpointWrite),
    period: u64,
) -> anyhow::Result<CheckpointsMode> {
    let mode: Mode = args.mode.into();
    let name = format!("{}-{}", schedule_name(schedule), write_name(write));
    let dir = mode_dir(args, "checkpoints", &name)?;
    let mut cluster = crate::runner::start_cluster_configured(
        mode.replicas_min(1) as u32,
        mode,
        LogMode::Parallel,
        dir.as_ref().map(|dir| dir.path()),
        &configure(schedule, write, period),
        connector,
    )?;
    let metrics = crate::cluster::metrics_addrs(cluster.config())?;
    let factory = connector(cluster.config(), crate::runner::REQUEST_TIMEOUT)?;
    let mut run_spec = spec(args, args.clients_peak);
    run_spec.trace_ops = true;
    let load_s = load_records(factory.as_ref(), &run_spec, stop)?;
    let origin = Instant::now();
    let scraping_done = AtomicBool::new(false);
    let (result, intervals) = std::thread::scope(|scope| {
        let scraper = scope.spawn(|| scrape_checkpoints(&metrics, origin, &scraping_done));
        let mut bar = progress_bar(&name);
        let result = crate::driver::run(factory.as_ref(), &run_spec, stop, &mut bar);
        scraping_done.store(true, Ordering::Relaxed);
        (result, scraper.join().expect("the scraper panicked"))
    });
    let result = result?;
    anyhow::ensure!(!result.interrupted, "interrupted");
    cluster.check_alive()?;
    let replica_rss = cluster.peak_rss();
    drop(factory);
    let replica_log = cluster.stop();
    drop(dir);
    // The scraper's clock started before the window: move its times onto the window's.
    let shift = result.measure_start.saturating_duration_since(origin).as_secs_f64();
    let intervals = intervals
        .into_iter()
        .map(|interval| Interval {
            start_s: interval.start_s - shift,
            end_s: interval.end_s - shift,
            ..interval
        })
        .collect();
    Ok(summarise(schedule, write, &result, intervals, replica_rss, replica_log, load_s))
}

/// A mode's figures from its run and the intervals seen.
fn summarise(
    schedule: CheckpointScheduleKind,
    write: CheckpointWrite,
    result: &RunResult,
    intervals: Vec<Interval>,
    replica_rss: Vec<ReplicaRss>,
    replica_log: Vec<String>,
    load_s: f64,
) -> CheckpointsMode {
    let measured_s = result.measured.as_secs_f64();
    let slots = per_slot(&result.ops, result.measured.as_micros() as u64, SLOT.as_micros() as u64);
    let seconds = seconds_of(&slots);
    let in_window: Vec<&Interval> = intervals
        .iter()
        .filter(|interval| interval.end_s > 0.0 && interval.start_s < measured_s)
        .collect();
    let replicas =
        replica_rss.len().max(1 + intervals.iter().map(|i| i.replica as usize).max().unwrap_or(0));
    let mut checkpoints_per_replica = vec![0u64; replicas];
    for interval in &in_window {
        checkpoints_per_replica[interval.replica as usize] += 1;
    }
    let lengths: Vec<f64> = in_window
        .iter()
        .filter(|interval| {
            interval.seen
                && !interval.open_at_end
                && interval.start_s >= 0.0
                && interval.end_s <= measured_s
        })
        .map(|interval| interval.end_s - interval.start_s)
        .collect();
    let (during, outside) = split_latency(&result.ops, &union_us(&intervals));
    let p99 = |histogram: &Histogram<u64>| {
        (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99))
    };
    let (p99_during_us, p99_outside_us) = (p99(&during), p99(&outside));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    CheckpointsMode {
        schedule: schedule_name(schedule).into(),
        write: write_name(write).into(),
        checkpoints: in_window.len() as u64,
        checkpoints_per_replica,
        checkpoint_seconds_mean: (!lengths.is_empty())
            .then(|| lengths.iter().sum::<f64>() / lengths.len() as f64),
        checkpoint_seconds_max: lengths.iter().copied().reduce(f64::max),
        ops: result.all.len(),
        errors: result.errors,
        seconds: measured_s,
        ops_per_s: result.ops_per_s(),
        steady_ops_per_s: seconds.steady_ops_per_s,
        worst_second_ops_per_s: seconds.worst_ops_per_s,
        worst_second_at_s: seconds.worst_at_slot as f64 * SLOT.as_secs_f64(),
        worst_second_over_steady: ratio(seconds.worst_ops_per_s, seconds.steady_ops_per_s),
        worst_quiet_second_over_steady: worst_quiet_second(
            &slots,
            &busy_slots(&intervals, slots.len()),
        )
        .map(|quiet| ratio(quiet, seconds.steady_ops_per_s)),
        p99_us: result.all.value_at_quantile(0.99),
        ops_during: during.len(),
        p99_during_us,
        ops_outside: outside.len(),
        p99_outside_us,
        p99_during_over_outside: match (p99_during_us, p99_outside_us) {
            (Some(during), Some(outside)) => Some(ratio(during as f64, outside as f64)),
            _ => None,
        },
        peak_rss_bytes_max: replica_rss.iter().filter_map(|replica| replica.peak_rss_bytes).max(),
        replica_rss,
        load_s,
        per_100ms: slots,
        intervals,
        replica_log,
    }
}

/// The goals for ours at this state size.
fn goals_of(ours: Option<&CheckpointsMode>, state_bytes: u64) -> Vec<Goal> {
    let Some(ours) = ours else { return Vec::new() };
    let rss_bound = goals::RSS_STATE_FACTOR * state_bytes as f64 + goals::RSS_SLACK_BYTES as f64;
    let worst = ours.worst_second_over_steady;
    let p99 = ours.p99_during_over_outside;
    let rss = ours.peak_rss_bytes_max.map(|bytes| bytes as f64);
    vec![
        Goal {
            name: "worst second / steady >=".into(),
            value: Some(worst),
            bound: goals::WORST_SECOND_OVER_STEADY_MIN,
            met: worst >= goals::WORST_SECOND_OVER_STEADY_MIN,
        },
        Goal {
            name: "p99 during / outside <=".into(),
            value: p99,
            bound: goals::P99_DURING_OVER_OUTSIDE_MAX,
            met: p99.is_some_and(|ratio| ratio <= goals::P99_DURING_OVER_OUTSIDE_MAX),
        },
        Goal {
            name: "peak RSS (bytes) <= 1.5 x state + 256 MiB =".into(),
            value: rss,
            bound: rss_bound,
            met: rss.is_some_and(|rss| rss <= rss_bound),
        },
    ]
}

/// Runs the experiment, writes its files (`checkpoints.json`, `.txt`, `.svg`, `.png`,
/// `-timeline.csv`, `-intervals.csv`) and returns its result.
pub fn run(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
) -> anyhow::Result<CheckpointsResult> {
    anyhow::ensure!(!args.memory, "the checkpoints experiment needs real replicas (no --memory)");
    anyhow::ensure!(args.seconds() > 0.0 && args.warmup >= 0.0, "bad --seconds or --warmup");
    anyhow::ensure!(args.records() > 0 && args.clients_peak > 0, "bad --records or --clients-peak");
    let mode: Mode = args.mode.into();
    let replicas = mode.replicas_min(1) as u32;
    let out_dir = args.out.clone().unwrap_or_else(|| default_out_dir("checkpoints"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let (period, calibration_ops_per_s) = match args.checkpoint_period {
        Some(period) => (period, None),
        None => {
            let rate = calibrate(args, connector, stop)?;
            anyhow::ensure!(rate > 0.0, "the calibration run completed no operation");
            (period_for(rate, args.seconds(), replicas), Some(rate))
        }
    };
    eprintln!(
        "checkpoint period P = {period} requests{}",
        calibration_ops_per_s
            .map(|rate| format!(
                " ({rate:.0} ops/s without checkpoints x {} s / {CHECKPOINTS_PER_REPLICA})",
                args.seconds()
            ))
            .unwrap_or_default()
    );
    let mut modes = Vec::new();
    for pair in MODES {
        modes.push(run_mode(args, connector, stop, pair, period)?);
    }
    let state_bytes = args.records() * args.value_bytes() as u64;
    let ours = modes.iter().find(|m| m.schedule == "sequential" && m.write == "background");
    let goals = goals_of(ours, state_bytes);
    let c_max = modes
        .iter()
        .filter(|m| m.schedule == "sequential")
        .filter_map(|m| m.checkpoint_seconds_max)
        .reduce(f64::max);
    let t_max = modes.iter().map(|m| m.steady_ops_per_s).reduce(f64::max);
    let eq1_period_min = match (c_max, t_max) {
        (Some(c), Some(t)) => dura_tuning::checkpoint_period_min(replicas, c, t).ok(),
        _ => None,
    };
    let result = CheckpointsResult {
        experiment: "checkpoints".into(),
        mode: mode.to_string(),
        replicas,
        log_mode: LogMode::Parallel.to_string(),
        records: args.records(),
        value_bytes: args.value_bytes(),
        state_bytes,
        clients: args.clients_peak,
        seconds: args.seconds(),
        warmup_s: args.warmup,
        checkpoint_period: period,
        calibration_ops_per_s,
        eq1_period_min,
        modes,
        goals,
        out_dir: out_dir.clone(),
    };
    write_files(&result)?;
    Ok(result)
}

fn write_files(result: &CheckpointsResult) -> anyhow::Result<()> {
    let dir = &result.out_dir;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("checkpoints.json", &serde_json::to_string_pretty(result)?)?;
    write("checkpoints.txt", &to_text(result))?;
    let mut timeline = String::from("schedule,write,start_s,ops_per_s,replicas_checkpointing\n");
    let mut spans = String::from("schedule,write,replica,start_s,end_s,seen,open_at_end\n");
    for mode in &result.modes {
        for (slot, ops) in mode.per_100ms.iter().enumerate() {
            let start = slot as f64 * SLOT.as_secs_f64();
            let end = start + SLOT.as_secs_f64();
            let busy: BTreeSet<u32> = mode
                .intervals
                .iter()
                .filter(|interval| interval.start_s < end && interval.end_s > start)
                .map(|interval| interval.replica)
                .collect();
            let _ = writeln!(
                timeline,
                "{},{},{start:.1},{},{}",
                mode.schedule,
                mode.write,
                *ops as f64 / SLOT.as_secs_f64(),
                busy.len()
            );
        }
        for interval in &mode.intervals {
            let _ = writeln!(
                spans,
                "{},{},{},{:.3},{:.3},{},{}",
                mode.schedule,
                mode.write,
                interval.replica,
                interval.start_s,
                interval.end_s,
                interval.seen,
                interval.open_at_end
            );
        }
    }
    write("checkpoints-timeline.csv", &timeline)?;
    write("checkpoints-intervals.csv", &spans)?;
    crate::plot::write_svg_and_png(dir, "checkpoints", &charts(result))
}

/// One timeline panel per mode: throughput per 100 ms, and each replica's checkpoints
/// as bars in its own row.
pub fn charts(result: &CheckpointsResult) -> Vec<Chart> {
    result
        .modes
        .iter()
        .map(|mode| {
            let slot_s = SLOT.as_secs_f64();
            let points = mode
                .per_100ms
                .iter()
                .enumerate()
                .map(|(slot, ops)| ((slot as f64 + 0.5) * slot_s, *ops as f64 / slot_s))
                .collect();
            // The 1 s windows the steady and worst second come from, at their middles.
            let windows = mode
                .per_100ms
                .windows(SLOTS_PER_WINDOW)
                .enumerate()
                .map(|(slot, window)| {
                    let middle = (slot as f64 + SLOTS_PER_WINDOW as f64 / 2.0) * slot_s;
                    (middle, window.iter().sum::<u64>() as f64 / (SLOTS_PER_WINDOW as f64 * slot_s))
                })
                .collect();
            let lanes = (0..result.replicas)
                .map(|replica| Lane {
                    name: format!("r{replica}"),
                    spans: mode
                        .intervals
                        .iter()
                        .filter(|interval| interval.replica == replica)
                        .map(|interval| {
                            (interval.start_s.max(0.0), interval.end_s.min(mode.seconds))
                        })
                        .filter(|(start, end)| start < end || (*start == *end && *start > 0.0))
                        .collect(),
                })
                .collect();
            Chart {
                title: format!(
                    "{} + {} ({})",
                    mode.schedule,
                    mode.write,
                    mode_label(&mode.schedule, &mode.write)
                ),
                x_label: format!(
                    "time (s); bars: checkpoints per replica; P = {}",
                    result.checkpoint_period
                ),
                y_label: "ops/s (per 100 ms)".into(),
                x_axis: XAxis::Linear,
                markers: false,
                series: vec![
                    Series { name: "per 100 ms".into(), points },
                    Series { name: "1 s window".into(), points: windows },
                ],
                lanes,
            }
        })
        .collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(us: Option<u64>) -> String {
    us.map(|us| format!("{:.1}", us as f64 / 1000.0)).unwrap_or_else(|| "-".into())
}

/// The printed report.
pub fn to_text(result: &CheckpointsResult) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Checkpoints on this machine: {} replicas ({}), log {}, {} records of {} B (state {} MiB), \
         {} clients closed loop, {} s measured per mode after {} s warm-up",
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
    let _ = writeln!(
        text,
        "P = {} requests for every mode{}; modes in a fixed order, each on a fresh cluster",
        result.checkpoint_period,
        match result.calibration_ops_per_s {
            Some(rate) => format!(
                " (calibration without checkpoints: {rate:.0} ops/s x {} s / {CHECKPOINTS_PER_REPLICA})",
                result.seconds
            ),
            None => " (--checkpoint-period)".into(),
        }
    );
    let width = 22;
    let _ = write!(text, "{:<34}", "");
    for mode in &result.modes {
        let _ = write!(
            text,
            " {:>width$}",
            format!("{}+{}", &mode.schedule[..3], short_write(&mode.write))
        );
    }
    let _ = writeln!(text);
    let _ = write!(text, "{:<34}", "");
    for mode in &result.modes {
        let _ =
            write!(text, " {:>width$}", format!("({})", mode_label(&mode.schedule, &mode.write)));
    }
    let _ = writeln!(text);
    let row = |text: &mut String, name: &str, value: &dyn Fn(&CheckpointsMode) -> String| {
        let _ = write!(text, "{name:<34}");
        for mode in &result.modes {
            let _ = write!(text, " {:>width$}", value(mode));
        }
        let _ = writeln!(text);
    };
    row(&mut text, "checkpoints in the window (all r.)", &|m| {
        format!(
            "{} ({})",
            m.checkpoints,
            m.checkpoints_per_replica.iter().map(u64::to_string).collect::<Vec<_>>().join("/")
        )
    });
    row(&mut text, "checkpoint s, mean / max", &|m| match (
        m.checkpoint_seconds_mean,
        m.checkpoint_seconds_max,
    ) {
        (Some(mean), Some(max)) => format!("{mean:.2} / {max:.2}"),
        _ => "-".into(),
    });
    row(&mut text, "mean ops/s", &|m| format!("{:.0}", m.ops_per_s));
    row(&mut text, "steady ops/s (median 1 s)", &|m| format!("{:.0}", m.steady_ops_per_s));
    row(&mut text, "worst 1 s ops/s (at s)", &|m| {
        format!("{:.0} ({:.1})", m.worst_second_ops_per_s, m.worst_second_at_s)
    });
    row(&mut text, "worst second / steady", &|m| format!("{:.3}", m.worst_second_over_steady));
    row(&mut text, "worst second, no checkpoint / steady", &|m| {
        m.worst_quiet_second_over_steady.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into())
    });
    row(&mut text, "p99 ms overall", &|m| ms(Some(m.p99_us)));
    row(&mut text, "p99 ms outside checkpoints (ops)", &|m| {
        format!("{} ({})", ms(m.p99_outside_us), m.ops_outside)
    });
    row(&mut text, "p99 ms during checkpoints (ops)", &|m| {
        format!("{} ({})", ms(m.p99_during_us), m.ops_during)
    });
    row(&mut text, "p99 during / outside", &|m| {
        m.p99_during_over_outside.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
    });
    row(&mut text, "peak RSS MiB, max of replicas", &|m| {
        m.peak_rss_bytes_max.map(mib).unwrap_or_else(|| "?".into())
    });
    row(&mut text, "errors", &|m| m.errors.to_string());
    row(&mut text, "load s", &|m| format!("{:.1}", m.load_s));
    for mode in &result.modes {
        let _ = writeln!(
            text,
            "{}+{} peak RSS: {}",
            mode.schedule,
            mode.write,
            crate::runner::rss_text(&mode.replica_rss)
        );
    }
    // Per second, each mode's throughput; '*' where some replica was checkpointing.
    let _ = writeln!(text, "throughput per second (ops/s; * = a replica checkpointing in it):");
    let seconds =
        result.modes.iter().map(|m| m.per_100ms.len() / SLOTS_PER_WINDOW).max().unwrap_or(0);
    for second in 0..seconds {
        let _ = write!(text, "  {:>4} s", second + 1);
        for mode in &result.modes {
            let slots =
                mode.per_100ms.get(second * SLOTS_PER_WINDOW..(second + 1) * SLOTS_PER_WINDOW);
            let ops: u64 = slots.map(|slots| slots.iter().sum()).unwrap_or(0);
            let (start, end) = (second as f64, second as f64 + 1.0);
            let busy = mode.intervals.iter().any(|i| i.start_s < end && i.end_s > start);
            let _ = write!(text, " {:>width$}", format!("{ops}{}", if busy { " *" } else { "  " }));
        }
        let _ = writeln!(text);
    }
    if let Some(min) = result.eq1_period_min {
        let _ = writeln!(
            text,
            "Eq. (1) with the measured C_max (longest sequential checkpoint) and T_max (highest \
             steady rate): P > {min} (P used: {})",
            result.checkpoint_period
        );
        if result.checkpoint_period < min {
            let _ = writeln!(
                text,
                "  P is below it: sequential checkpoints of two replicas can overlap (under \
                 stop-the-world, a quorum may be missing); a longer --seconds, or \
                 --checkpoint-period above it, respects it"
            );
        }
    }
    let _ = writeln!(
        text,
        "The paper (section 2.2, Figure 2; section 5, Figure 10; 4 replicas, 4 kB writes):"
    );
    for line in PAPER {
        let _ = writeln!(text, "  {line}");
    }
    if !result.goals.is_empty() {
        let gib = result.state_bytes as f64 / (1u64 << 30) as f64;
        let _ = writeln!(text, "Goals for ours (set for a 1 GiB state; this run: {gib:.2} GiB):");
        for goal in &result.goals {
            let value = goal
                .value
                .map(|value| {
                    if value > 1e6 {
                        format!("{} MiB", mib(value as u64))
                    } else {
                        format!("{value:.3}")
                    }
                })
                .unwrap_or_else(|| "-".into());
            let bound = if goal.bound > 1e6 {
                format!("{} MiB", mib(goal.bound as u64))
            } else {
                format!("{:.2}", goal.bound)
            };
            let _ = writeln!(
                text,
                "  {} {bound}: {value} {}",
                goal.name,
                if goal.met { "met" } else { "NOT met" }
            );
        }
        let floor = result
            .modes
            .iter()
            .find(|m| m.schedule == "coordinated")
            .and_then(|m| m.worst_quiet_second_over_steady);
        if let Some(floor) = floor {
            let _ = writeln!(
                text,
                "  this machine's floor for the first: the worst second with no checkpoint \
                 anywhere (coordinated mode) / its steady = {floor:.3}"
            );
        }
    }
    let _ = writeln!(text, "results in {}", result.out_dir.display());
    text
}

fn short_write(write: &str) -> &str {
    match write {
        "stop-the-world" => "stw",
        "background" => "bg",
        other => other,
    }
}

/// What the paper's text says about its Figures 2 and 10 (its plots give no other
/// numbers in the text).
pub const PAPER: [&str; 6] = [
    "Fig. 2 (coordinated checkpoints every 200K requests, 1 GB state): they \"can make the system halt for a few seconds\",",
    "  \"requests are no longer processed while replicas save their state\"; the same in memory, disk and SSD (the cost is serialising 1 GB).",
    "Fig. 10 (sequential checkpoints on disks, 3-minute run): \"the unavailability periods no longer occur\"; under high load",
    "  \"a periodic small decrease on the throughput\" with 500MB and 1GB states, none under medium load.",
    "Eq. (1) example: 1 GB state, C_max ~ 15 s, T_max ~ 4700 ops/s, so P > 282000.",
    "Throughput without checkpoints (section 5, Fig. 9(a)): ~4772 ops/s in memory, 4710 ops/s with parallel logging on disk.",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(started: u64, written: u64, writing: u64) -> CheckpointGauges {
        CheckpointGauges { started, written, failed: 0, writing }
    }

    #[test]
    fn gauges_are_read_from_the_prometheus_text() {
        let text = "# HELP dura_checkpoints_started_total x\n# TYPE dura_checkpoints_started_total counter\n\
                    dura_checkpoints_started_total 3\ndura_checkpoints_written_total 2\n\
                    dura_checkpoints_failed_total 0\ndura_checkpoint_writing_agreement_id 77\n\
                    dura_last_checkpoint_agreement_id 60\n";
        let parsed = CheckpointGauges::parse(text).expect("parses");
        assert_eq!(parsed, CheckpointGauges { started: 3, written: 2, failed: 0, writing: 77 });
        assert!(parsed.in_progress());
        assert_eq!(CheckpointGauges::parse("dura_checkpoints_started_total 1\n"), None);
    }

    #[test]
    fn the_tracker_turns_scrapes_into_intervals() {
        let mut tracker = IntervalTracker::new(2);
        tracker.observe(0.0, gauges(0, 0, 0));
        tracker.observe(1.0, gauges(1, 0, 10));
        tracker.observe(2.0, gauges(1, 0, 10));
        tracker.observe(3.0, gauges(1, 1, 0));
        // Began and ended between two scrapes: known from the counters only.
        tracker.observe(4.0, gauges(2, 2, 0));
        // One ended and the next began between two scrapes.
        tracker.observe(5.0, gauges(3, 2, 30));
        tracker.observe(6.0, gauges(4, 3, 40));
        // Still writing at the end.
        let intervals = tracker.finish();
        let spans: Vec<(f64, f64, bool, bool)> =
            intervals.iter().map(|i| (i.start_s, i.end_s, i.seen, i.open_at_end)).collect();
        assert_eq!(
            spans,
            [
                (1.0, 3.0, true, false),
                (3.0, 4.0, false, false),
                (5.0, 6.0, true, false),
                (6.0, 6.0, true, true)
            ]
        );
        assert!(intervals.iter().all(|i| i.replica == 2));
    }

    #[test]
    fn slots_and_windows_find_the_worst_second() {
        let op = |done_ms: u64| OpSpan { sent_us: done_ms * 1000, done_us: done_ms * 1000 };
        // 3 s of one op per ms, but nothing from 1.5 s to 1.8 s; an op past the window.
        let ops: Vec<OpSpan> =
            (0..3000).filter(|ms| !(1500..1800).contains(ms)).map(op).chain([op(3050)]).collect();
        let slots = per_slot(&ops, 3_050_000, 100_000);
        assert_eq!(slots.len(), 30);
        assert_eq!(slots[0], 100);
        assert_eq!(slots[15..18], [0, 0, 0]);
        let seconds = seconds_of(&slots);
        // 21 windows sliding by 100 ms: 8 hold the whole gap (700), 2 each two thirds
        // of it (800) and one third (900), 9 none (1000): the median is the 11th, 900.
        assert_eq!(seconds.worst_ops_per_s, 700.0);
        assert_eq!(seconds.worst_at_slot, 8);
        assert_eq!(seconds.steady_ops_per_s, 900.0);
        let clean: Vec<u64> = vec![100; 30];
        assert_eq!(seconds_of(&clean).worst_ops_per_s, 1000.0);
        assert_eq!(seconds_of(&clean).steady_ops_per_s, 1000.0);
        assert_eq!(seconds_of(&[10, 10]).steady_ops_per_s, 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn the_quiet_floor_skips_every_window_that_saw_a_checkpoint() {
        // 2 s: a dip in slots 2-3 (no checkpoint), a deeper one in 12-13 (checkpoint).
        let mut slots = vec![100u64; 20];
        slots[2] = 40;
        slots[3] = 40;
        slots[12] = 0;
        slots[13] = 0;
        let interval = |start_s: f64, end_s: f64| Interval {
            replica: 1,
            start_s,
            end_s,
            seen: true,
            open_at_end: false,
        };
        let busy = busy_slots(&[interval(1.22, 1.38)], slots.len());
        assert_eq!(busy.iter().filter(|&&b| b).count(), 2, "slots 12 and 13 overlap it");
        assert!(busy[12] && busy[13]);
        // Windows starting at 0..=2 are clear of slots 3..=12 only up to start 2 (slots
        // 2..=11): the worst quiet window holds both dipped slots, 1000 - 120.
        assert_eq!(worst_quiet_second(&slots, &busy), Some(880.0));
        assert_eq!(worst_quiet_second(&slots, &[true; 20]), None, "every window saw one");
        assert_eq!(worst_quiet_second(&slots[..5], &busy[..5]), None, "under one window");
    }

    #[test]
    fn latency_splits_by_overlap_with_any_replicas_checkpoint() {
        let interval = |replica, start_s, end_s| Interval {
            replica,
            start_s,
            end_s,
            seen: true,
            open_at_end: false,
        };
        let union = union_us(&[
            interval(0, 1.0, 2.0),
            interval(1, 1.5, 3.0),
            interval(2, 5.0, 6.0),
            interval(3, -1.0, 0.5),
        ]);
        assert_eq!(union, [(0, 500_000), (1_000_000, 3_000_000), (5_000_000, 6_000_000)]);
        let span = |sent_us, done_us| OpSpan { sent_us, done_us };
        let ops = [
            span(600_000, 900_000),     // between: outside
            span(900_000, 1_100_000),   // completes during
            span(2_900_000, 4_000_000), // sent during
            span(4_000_000, 7_000_000), // spans one whole
            span(3_100_000, 4_900_000), // outside
        ];
        let (during, outside) = split_latency(&ops, &union);
        assert_eq!(during.len(), 3);
        assert_eq!(outside.len(), 2);
        assert_eq!(during.max(), during.highest_equivalent(3_000_000));
    }

    #[test]
    fn the_period_gives_about_three_checkpoints_per_replica() {
        assert_eq!(period_for(6000.0, 20.0, 4), 40_000);
        assert_eq!(period_for(1.0, 1.0, 4), 8);
        assert_eq!(period_for(f64::NAN, 1.0, 4), 8);
    }
}
