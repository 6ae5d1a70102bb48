//! `dura-bench wal`: the write-ahead log benchmark (group commit against one synced
//! write per record, and against the raw device).
//!
//! For each durability mode measured, in one run of the program:
//!
//! * **sync per record** (the paper's "sync" logging): records of `record_bytes` are
//!   appended by a closed loop of `records_in_flight` producers, and every record is
//!   written by its own synced `pwrite` (4 KiB-aligned, into pre-zeroed blocks), one after
//!   the other, before the next one starts. This is raw `pwrite` (plus `fdatasync` in that
//!   mode) through `dura_wal::io::synced_write_at`, without the log's framing: the best a
//!   one-write-per-record log can do on this device.
//! * **wal, one record per write**: the log itself with the smallest group bound, for
//!   reference (its framing makes each write of a 4 KiB record 8 KiB).
//! * **group commit**: the same closed loop (split over `producers` threads) appends
//!   through `dura_wal`'s `LogWriter`, which writes every record that arrived during the
//!   previous write as one group. The benchmark truncates the log behind the durable
//!   point as checkpoints would, so segments are recycled and, after a warm-up, every
//!   write overwrites already-written blocks.
//! * **raw**: the device's sequential synced bandwidth, same mode, into already-written
//!   blocks, at the mean group write size just observed
//!   (`dura_tuning::sequential_synced_bandwidth_bounded`).
//!
//! Then, for the first mode, group commit into fresh segments (pre-zeroed in the
//! background while the log runs, or `fallocate`d) against the recycled ones.
//!
//! The closed loop: `records_in_flight` records are appended at the start; whenever a
//! record is reported durable, a new one is appended. A record's latency runs from its
//! append to its durability notification. Writes and bytes are counted below the log by
//! a wrapper around its `Storage` (seals included: one 4 KiB write per segment).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use dura_tuning::{BandwidthSample, sequential_synced_bandwidth_bounded};
use dura_wal::io::{
    ALIGN_BYTES, AlignedBuf, DurabilityMode, Preallocate, ZeroPace, align_up, open_with_mode,
    preallocate, synced_write_at,
};
use dura_wal::storage::{Backend, FsStorage, Storage, StorageFile};
use dura_wal::{LogWriter, Ticket, Wal, WalOptions};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Most rounds per mode.
pub const ROUNDS_MAX: usize = 16;
/// Most producer threads.
pub const PRODUCERS_MAX: usize = 64;
/// Segment size of the one-record-per-write log runs (their warm-up fills 3.5 segments).
const ONE_RECORD_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Most records in flight the benchmark accepts.
pub const RECORDS_IN_FLIGHT_MAX: usize = 4096;
/// Largest record the benchmark accepts, 1 MiB.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Longest measurement the benchmark accepts, seconds.
pub const SECONDS_MAX: f64 = 600.0;
/// Largest file the sync-per-record measurement writes (it wraps around after), 64 MiB.
const SYNC_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest raw-bandwidth reference measurement, 512 MiB.
const RAW_TOTAL_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Longest latency the histograms hold, 60 s.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// The log's write path (`dura_wal::storage::Backend`) as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalBackend {
    /// io_uring when it works here, else `pwrite`.
    Auto,
    /// io_uring only.
    IoUring,
    /// `pwrite` (+ `fdatasync` in that mode).
    Pwrite,
}

impl WalBackend {
    fn backend(self) -> Backend {
        match self {
            WalBackend::Auto => Backend::Auto,
            WalBackend::IoUring => Backend::IoUring,
            WalBackend::Pwrite => Backend::Pwrite,
        }
    }
}

/// Arguments of `dura-bench wal`.
#[derive(Debug, Clone, clap::Args)]
pub struct WalArgs {
    /// Directory on the device under test (a fresh subdirectory is made and removed).
    #[arg(long)]
    pub dir: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds of each measurement (sync per record, group commit, per mode).
    #[arg(long, default_value_t = 1.5)]
    pub seconds: f64,
    /// Records in flight (appended and not yet durable) in the closed loop.
    #[arg(long, default_value_t = 1024)]
    pub records_in_flight: usize,
    /// Producer threads sharing the records in flight (group-commit runs).
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Largest group (one write) of the log, bytes.
    #[arg(long, default_value_t = dura_wal::GROUP_BYTES_MAX_DEFAULT)]
    pub group_bytes_max: usize,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 4096)]
    pub record_bytes: usize,
    /// Durability mode to measure; default: direct-dsync, dsync and fdatasync (the first
    /// is the headline of the report).
    #[arg(long)]
    pub mode: Option<DurabilityMode>,
    /// Segment size of the log, MiB.
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
    /// The log's write path: `auto` (io_uring if it works, else pwrite), `io-uring` or
    /// `pwrite`.
    #[arg(long, value_enum, default_value_t = WalBackend::Auto)]
    pub backend: WalBackend,
    /// Rounds of (group commit, raw bandwidth) per mode; the round with the median
    /// group/raw ratio is reported (a cloud disk's bandwidth drifts by +-15% between
    /// seconds, so one round is not enough to compare the two).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the comparison of recycled against fresh (zeroed, fallocated) segments.
    #[arg(long)]
    pub no_fresh: bool,
}

impl WalArgs {
    /// Arguments for `dir` with the defaults of the command line.
    pub fn new(dir: PathBuf) -> WalArgs {
        WalArgs {
            dir,
            json: false,
            seconds: 1.5,
            records_in_flight: 1024,
            producers: 4,
            group_bytes_max: dura_wal::GROUP_BYTES_MAX_DEFAULT,
            record_bytes: 4096,
            mode: None,
            segment_mib: 64,
            backend: WalBackend::Auto,
            rounds: 3,
            no_fresh: false,
        }
    }

    fn modes(&self) -> Vec<DurabilityMode> {
        match self.mode {
            Some(mode) => vec![mode],
            None => {
                vec![DurabilityMode::DirectDsync, DurabilityMode::Dsync, DurabilityMode::Fdatasync]
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.seconds > 0.0 && self.seconds <= SECONDS_MAX,
            "--seconds must be in (0, {SECONDS_MAX}]"
        );
        anyhow::ensure!(
            (1..=RECORDS_IN_FLIGHT_MAX).contains(&self.records_in_flight),
            "--records-in-flight must be in 1..={RECORDS_IN_FLIGHT_MAX}"
        );
        anyhow::ensure!(
            (1..=RECORD_BYTES_MAX).contains(&self.record_bytes),
            "--record-bytes must be in 1..={RECORD_BYTES_MAX}"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.segment_mib),
            "--segment-mib must be in 1..=4096"
        );
        anyhow::ensure!(
            (1..=ROUNDS_MAX).contains(&self.rounds),
            "--rounds must be in 1..={ROUNDS_MAX}"
        );
        anyhow::ensure!(
            (1..=PRODUCERS_MAX).contains(&self.producers),
            "--producers must be in 1..={PRODUCERS_MAX}"
        );
        Ok(())
    }

    fn segment_bytes(&self) -> u64 {
        self.segment_mib * 1024 * 1024
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// Append latency percentiles, microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest append.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl LatencySummary {
    fn of(histogram: &Histogram<u64>) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p90_us: us(histogram.value_at_quantile(0.90)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            mean_us: histogram.mean() / 1000.0,
        }
    }
}

/// One closed-loop measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// Records reported durable during the measurement.
    pub records: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Durable records per second.
    pub ops_s: f64,
    /// Durable payload bytes per second, MB/s (10^6 B/s).
    pub mb_s: f64,
    /// Writes issued to the device.
    pub writes: u64,
    /// Bytes written to the device (headers and padding included).
    pub device_bytes: u64,
    /// Device bytes per second, MB/s.
    pub device_mb_s: f64,
    /// Mean records per write.
    pub mean_group_records: f64,
    /// Mean bytes per write.
    pub mean_group_bytes: f64,
    /// Fraction of the wall time spent inside durable writes: 1.0 means a write was
    /// always in flight, so the device, not the log's own work between writes, set the
    /// pace.
    pub device_busy_fraction: f64,
    /// Append-to-durable latency.
    pub latency: LatencySummary,
}

/// All measurements of one durability mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeResult {
    /// The mode.
    pub mode: &'static str,
    /// One synced raw `pwrite` per record (the headline baseline).
    pub sync_per_record: RunResult,
    /// The log itself limited to one record per write (its framing makes each write
    /// 8 KiB for a 4 KiB record), for reference.
    pub wal_one_record_per_write: RunResult,
    /// Group commit through the log writer into recycled (written) segments.
    pub group: RunResult,
    /// Raw sequential synced bandwidth at the mean group write size (into written blocks).
    pub raw: BandwidthSample,
    /// `raw.mb_s`.
    pub raw_mb_s: f64,
    /// `group.mb_s` (payload bytes, the strict figure).
    pub group_mb_s: f64,
    /// `group_mb_s / raw_mb_s`.
    pub ratio_group_to_raw: f64,
    /// `group.device_mb_s / raw_mb_s` (the log's own bytes: headers and padding count).
    pub ratio_group_device_to_raw: f64,
    /// `group.ops_s / sync_per_record.ops_s`.
    pub group_speedup_over_sync: f64,
    /// `group_mb_s / raw_mb_s` of every round, in run order; the figures above are those
    /// of the round with the median ratio.
    pub round_ratios: Vec<f64>,
}

/// Group commit into recycled segments (written blocks) against fresh segments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentComparison {
    /// The mode.
    pub mode: &'static str,
    /// Recycled segments: every write overwrites written blocks (the headline run).
    pub recycled: RunResult,
    /// New segments pre-zeroed in the background while the log writes.
    pub fresh_zeroed: RunResult,
    /// New `fallocate`d segments: every write lands on unwritten extents.
    pub fresh_fallocated: RunResult,
    /// `fresh_zeroed.ops_s / recycled.ops_s`.
    pub fresh_zeroed_to_recycled_ops_ratio: f64,
    /// `fresh_fallocated.ops_s / recycled.ops_s`.
    pub fresh_fallocated_to_recycled_ops_ratio: f64,
}

/// Everything `dura-bench wal` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalBenchReport {
    /// The directory measured.
    pub dir: PathBuf,
    /// Payload bytes per record.
    pub record_bytes: usize,
    /// Closed-loop records in flight.
    pub records_in_flight: usize,
    /// Producer threads of the group-commit runs.
    pub producers: usize,
    /// Target seconds per measurement.
    pub seconds: f64,
    /// How the sync-per-record baseline writes.
    pub sync_per_record_method: &'static str,
    /// The log's write path (`io_uring` or `pwrite`).
    pub wal_backend: String,
    /// The headline mode (the first measured).
    pub mode: &'static str,
    /// Headline: raw sequential synced MB/s at the mean group write size.
    pub raw_mb_s: f64,
    /// Headline: group-commit payload MB/s.
    pub group_mb_s: f64,
    /// Headline: `group_mb_s / raw_mb_s`.
    pub ratio_group_to_raw: f64,
    /// Headline: records/s with one synced write per record.
    pub sync_per_record_ops_s: f64,
    /// Headline: records/s with group commit.
    pub group_ops_s: f64,
    /// Headline: `group_ops_s / sync_per_record_ops_s`.
    pub group_speedup_over_sync: f64,
    /// Every mode measured.
    pub modes: Vec<ModeResult>,
    /// The mode with the most group-commit records/s.
    pub fastest_group_mode: &'static str,
    /// Recycled against fresh segments for the headline mode (absent with `--no-fresh`).
    pub segments: Option<SegmentComparison>,
}

/// Runs the WAL benchmark and prints its report (a table, or JSON with `--json`).
pub fn run(args: &WalArgs) -> anyhow::Result<()> {
    let report = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs every measurement `args` asks for in a fresh subdirectory of `args.dir`
/// (removed afterwards) and returns the report.
pub fn measure(args: &WalArgs) -> anyhow::Result<WalBenchReport> {
    args.validate()?;
    let work = WorkDir::create(&args.dir)?;
    let wal_backend = match (args.backend, dura_wal::probe_io_uring()) {
        (WalBackend::Pwrite, _) => "pwrite (asked for)".to_owned(),
        (_, Ok(())) => "io_uring".to_owned(),
        (_, Err(reason)) => format!("pwrite (io_uring unavailable: {reason})"),
    };
    let mut modes = Vec::new();
    for mode in args.modes() {
        modes.push(measure_mode(&work.path, mode, args).with_context(|| format!("mode {mode}"))?);
    }
    let headline = modes.first().expect("at least one mode").clone();
    let fastest = modes
        .iter()
        .max_by(|a, b| a.group.ops_s.total_cmp(&b.group.ops_s))
        .expect("at least one mode")
        .mode;
    let segments = if args.no_fresh {
        None
    } else {
        let mode = args.modes()[0];
        let fresh = |segments: Segments, name: &str| {
            let spec = GroupRunSpec {
                mode,
                segments,
                segment_bytes: args.segment_bytes(),
                group_bytes_max: args.group_bytes_max,
                producers: args.producers,
            };
            group_commit_run(&work.path.join(name), spec, args)
                .with_context(|| format!("group commit into {name} segments"))
        };
        let fresh_zeroed = fresh(Segments::FreshZeroed, "fresh-zeroed")?;
        let fresh_fallocated = fresh(Segments::FreshFallocated, "fresh-fallocated")?;
        let recycled = headline.group.clone();
        Some(SegmentComparison {
            mode: mode.name(),
            fresh_zeroed_to_recycled_ops_ratio: fresh_zeroed.ops_s / recycled.ops_s,
            fresh_fallocated_to_recycled_ops_ratio: fresh_fallocated.ops_s / recycled.ops_s,
            recycled,
            fresh_zeroed,
            fresh_fallocated,
        })
    };
    Ok(WalBenchReport {
        dir: args.dir.clone(),
        record_bytes: args.record_bytes,
        records_in_flight: args.records_in_flight,
        producers: args.producers,
        seconds: args.seconds,
        sync_per_record_method: "raw pwrite, one synced write (4 KiB-aligned) per record, \
                                 one write at a time, into pre-zeroed blocks; no log framing",
        wal_backend,
        mode: headline.mode,
        raw_mb_s: headline.raw_mb_s,
        group_mb_s: headline.group_mb_s,
        ratio_group_to_raw: headline.ratio_group_to_raw,
        sync_per_record_ops_s: headline.sync_per_record.ops_s,
        group_ops_s: headline.group.ops_s,
        group_speedup_over_sync: headline.group_speedup_over_sync,
        fastest_group_mode: fastest,
        modes,
        segments,
    })
}

fn measure_mode(work: &Path, mode: DurabilityMode, args: &WalArgs) -> anyhow::Result<ModeResult> {
    let sync_per_record = sync_per_record_run(work, mode, args).context("sync per record")?;
    let one_record_spec = GroupRunSpec {
        mode,
        segments: Segments::Recycled,
        segment_bytes: ONE_RECORD_SEGMENT_BYTES.min(args.segment_bytes()),
        group_bytes_max: 0,
        // One appending thread, as the replica's log stage: with one record per write
        // every append blocks, and several threads would only contend for the turn.
        producers: 1,
    };
    let wal_one_record_per_write =
        group_commit_run(&work.join(format!("log-one-{mode}")), one_record_spec, args)
            .context("log with one record per write")?;
    let group_spec = GroupRunSpec {
        mode,
        segments: Segments::Recycled,
        segment_bytes: args.segment_bytes(),
        group_bytes_max: args.group_bytes_max,
        producers: args.producers,
    };
    // Each round: the log and the raw device at the log's mean write size, back to back
    // so that both see the same device weather; odd rounds measure the raw device first
    // (at the previous round's size), so a drift of the device does not favour either,
    // and again after the log if the log's mean write size changed meanwhile.
    let raw_at = |write_bytes: usize, total_bytes: u64, round: usize| {
        sequential_synced_bandwidth_bounded(
            work,
            mode,
            write_bytes,
            total_bytes,
            Some(args.duration()),
        )
        .with_context(|| format!("raw sequential synced bandwidth, round {round}"))
    };
    let raw_size = |group: &RunResult| {
        let write_bytes = align_up((group.mean_group_bytes.ceil() as usize).max(1), ALIGN_BYTES)
            .min(dura_tuning::RECORD_BYTES_MAX);
        // As many bytes as the log wrote, within bounds, and at least 64 writes.
        let total = group.device_bytes.max(64 * write_bytes as u64).min(RAW_TOTAL_BYTES_MAX);
        (write_bytes, total)
    };
    let mut rounds: Vec<(RunResult, BandwidthSample)> = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let raw_first = match rounds.last() {
            Some((previous, _)) if round % 2 == 1 => {
                let (write_bytes, total) = raw_size(previous);
                Some(raw_at(write_bytes, total, round)?)
            }
            _ => None,
        };
        let group = group_commit_run(&work.join(format!("log-{mode}")), group_spec, args)
            .with_context(|| format!("group commit, round {round}"))?;
        let (write_bytes, total) = raw_size(&group);
        let raw = match raw_first {
            // The group size held: the raw figure measured before is at the same size.
            Some(raw) if raw.record_bytes == write_bytes => raw,
            // First round, even round, or the group size moved: measure after, at the
            // exact size, so a round never compares different write sizes.
            _ => raw_at(write_bytes, total, round)?,
        };
        rounds.push((group, raw));
    }
    let round_ratios: Vec<f64> = rounds.iter().map(|(group, raw)| group.mb_s / raw.mb_s).collect();
    // The headline is the round with the median ratio.
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| round_ratios[a].total_cmp(&round_ratios[b]));
    let (group, raw) = rounds.swap_remove(order[order.len() / 2]);
    let raw_mb_s = raw.mb_s;
    Ok(ModeResult {
        mode: mode.name(),
        round_ratios,
        raw_mb_s,
        group_mb_s: group.mb_s,
        ratio_group_to_raw: group.mb_s / raw_mb_s,
        ratio_group_device_to_raw: group.device_mb_s / raw_mb_s,
        group_speedup_over_sync: group.ops_s / sync_per_record.ops_s,
        sync_per_record,
        wal_one_record_per_write,
        group,
        raw,
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// One synced write per record, one at a time, under a closed loop of
/// `records_in_flight` producers.
///
/// With one write in flight at a time and no think time, the closed loop is exact without
/// threads: the first `records_in_flight` records are appended at the start, and each
/// completion appends the next record at that instant. A record's latency is its queueing
/// behind the earlier records plus its own write.
fn sync_per_record_run(
    work: &Path,
    mode: DurabilityMode,
    args: &WalArgs,
) -> anyhow::Result<RunResult> {
    let write_bytes = align_up(args.record_bytes, ALIGN_BYTES);
    let slots = (SYNC_FILE_BYTES_MAX / write_bytes as u64).max(1);
    let path = work.join(format!("sync-per-record-{mode}"));
    // Size the file for what the device can plausibly do in the time, within bounds.
    let file_bytes = slots * write_bytes as u64;
    preallocate(&path, file_bytes, Preallocate::Zeroed)
        .with_context(|| format!("preallocate {}", path.display()))?;
    let file = open_with_mode(&path, mode).with_context(|| format!("open {}", path.display()))?;
    let mut buf = AlignedBuf::with_capacity(write_bytes);
    buf.set_len(write_bytes);
    buf.as_mut_slice().fill(0xa5);

    let mut histogram = new_histogram();
    let started = Instant::now();
    let deadline = started + args.duration();
    let mut appended_at: VecDeque<Instant> = (0..args.records_in_flight).map(|_| started).collect();
    let mut writes = 0u64;
    let mut busy_ns = 0u64;
    while Instant::now() < deadline || writes == 0 {
        let offset = (writes % slots) * write_bytes as u64;
        let write_started = Instant::now();
        synced_write_at(&file, buf.as_slice(), offset, mode)
            .with_context(|| format!("synced write at {offset} of {}", path.display()))?;
        let done = Instant::now();
        busy_ns += nanos(done - write_started);
        writes += 1;
        let appended = appended_at.pop_front().expect("closed loop keeps records in flight");
        histogram.saturating_record(nanos(done - appended));
        appended_at.push_back(done);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    let device_bytes = writes * write_bytes as u64;
    Ok(RunResult {
        records: writes,
        seconds,
        ops_s: writes as f64 / seconds,
        mb_s: (writes * args.record_bytes as u64) as f64 / 1e6 / seconds,
        writes,
        device_bytes,
        device_mb_s: device_bytes as f64 / 1e6 / seconds,
        mean_group_records: 1.0,
        mean_group_bytes: write_bytes as f64,
        device_busy_fraction: busy_ns as f64 / 1e9 / seconds,
        latency: LatencySummary::of(&histogram),
    })
}

/// How the log's segments are prepared in a group-commit run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segments {
    /// Pre-zeroed segments, then recycled: the benchmark truncates the log behind the
    /// durable point (as checkpoints do) and the log renames deleted segments to spares,
    /// so in the measured window every write overwrites written blocks.
    Recycled,
    /// Every segment new and pre-zeroed in the background while the log writes (no spares).
    FreshZeroed,
    /// Every segment new and `fallocate`d: blocks reserved but unwritten (no spares).
    FreshFallocated,
}

impl Segments {
    fn preallocate(self) -> Preallocate {
        match self {
            Segments::Recycled | Segments::FreshZeroed => Preallocate::Zeroed,
            Segments::FreshFallocated => Preallocate::Fallocate,
        }
    }

    fn spares(self) -> usize {
        match self {
            Segments::Recycled => 2,
            Segments::FreshZeroed | Segments::FreshFallocated => 0,
        }
    }
}

/// Writes and bytes that reached the device, counted below the log.
#[derive(Debug, Default)]
struct IoCounters {
    writes: AtomicU64,
    bytes: AtomicU64,
    /// Time spent inside the durable writes (the device busy with the log).
    busy_ns: AtomicU64,
}

/// [`FsStorage`] that counts the log's writes (groups and seals) and their bytes.
#[derive(Debug)]
struct CountingStorage {
    inner: FsStorage,
    counters: Arc<IoCounters>,
}

/// A segment file of [`CountingStorage`].
struct CountingFile {
    inner: <FsStorage as Storage>::File,
    counters: Arc<IoCounters>,
}

impl StorageFile for CountingFile {
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let started = Instant::now();
        self.inner.write_durable(buf, offset)?;
        self.counters.busy_ns.fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn len_bytes(&self) -> std::io::Result<u64> {
        self.inner.len_bytes()
    }
}

impl Storage for CountingStorage {
    type File = CountingFile;

    fn dir(&self) -> &Path {
        self.inner.dir()
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }

    fn read_all(&self, name: &str) -> std::io::Result<Vec<u8>> {
        self.inner.read_all(name)
    }

    fn open_for_write(&self, name: &str) -> std::io::Result<CountingFile> {
        Ok(CountingFile {
            inner: self.inner.open_for_write(name)?,
            counters: Arc::clone(&self.counters),
        })
    }

    fn create_prepared(
        &self,
        name: &str,
        len_bytes: u64,
        how: Preallocate,
        pace: &mut dyn FnMut() -> ZeroPace,
    ) -> std::io::Result<()> {
        self.inner.create_prepared(name, len_bytes, how, pace)
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
}

/// What one group-commit run is.
#[derive(Debug, Clone, Copy)]
struct GroupRunSpec {
    mode: DurabilityMode,
    segments: Segments,
    segment_bytes: u64,
    /// Largest group; 0 gives one record per write.
    group_bytes_max: usize,
    /// Producer threads.
    producers: usize,
}

/// Device bytes to write before the measured window opens: enough for the log to have
/// sealed and deleted segments, so that (with [`Segments::Recycled`]) the segment being
/// prepared is a recycled spare.
fn warm_up_bytes(segment_bytes: u64) -> u64 {
    3 * segment_bytes + segment_bytes / 2
}

/// A snapshot of the counters at one edge of the measured window.
#[derive(Debug, Clone, Copy)]
struct Edge {
    at: Instant,
    durable_records: u64,
    writes: u64,
    bytes: u64,
    busy_ns: u64,
}

impl Edge {
    fn take<S: Storage>(writer: &LogWriter<S>, counters: &IoCounters) -> Edge {
        Edge {
            at: Instant::now(),
            durable_records: writer.durable_point().record_seq,
            writes: counters.writes.load(Ordering::Relaxed),
            bytes: counters.bytes.load(Ordering::Relaxed),
            busy_ns: counters.busy_ns.load(Ordering::Relaxed),
        }
    }
}

/// Group commit through `dura_wal`'s [`LogWriter`] under the closed loop: `producers`
/// threads, each keeping `records_in_flight / producers` records appended and not yet
/// durable, waiting on the oldest ticket and appending a new record when it completes.
/// Agreement ids come from one counter held across `append`, so ids increase in log
/// order as the log requires.
///
/// A warm-up ([`warm_up_bytes`], bounded by time) runs before the measured window of
/// `args.seconds`; only completions inside the window count.
fn group_commit_run(dir: &Path, spec: GroupRunSpec, args: &WalArgs) -> anyhow::Result<RunResult> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let counters = Arc::new(IoCounters::default());
    let storage = CountingStorage {
        inner: FsStorage::new(dir, spec.mode, args.backend.backend())
            .with_context(|| format!("storage in {}", dir.display()))?,
        counters: Arc::clone(&counters),
    };
    let options = WalOptions {
        mode: spec.mode,
        segment_bytes: spec.segment_bytes,
        preallocate: spec.segments.preallocate(),
        spare_segments_max: spec.segments.spares(),
        record_bytes_max: args.record_bytes,
        // The log never splits a record: a group that would overflow closes unless it is
        // empty, so the smallest bound gives exactly one record per write.
        group_bytes_max: spec
            .group_bytes_max
            .max(dura_wal::format::GROUP_HEADER_BYTES + dura_wal::format::RECORD_HEADER_BYTES),
        ..WalOptions::default()
    };
    let (writer, recovered) = Wal::open_with_storage(storage, options).context("open the log")?;
    anyhow::ensure!(
        recovered.records.is_empty(),
        "the log directory {} was not empty",
        dir.display()
    );

    let producers = spec.producers.min(args.records_in_flight).max(1);
    let payload = vec![0x5au8; args.record_bytes];
    let next_agreement_id = Mutex::new(1u64);
    let window: OnceLock<(Instant, Instant)> = OnceLock::new();
    let stop = AtomicBool::new(false);
    let warm_up_started = Instant::now();
    let warm_up_max = args.duration() * 3 + Duration::from_secs(1);

    let (histograms, edges) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let mut handles = Vec::new();
        for producer in 0..producers {
            let in_flight = args.records_in_flight / producers
                + usize::from(producer < args.records_in_flight % producers);
            let (writer, payload, next_agreement_id, window, stop) =
                (&writer, &payload, &next_agreement_id, &window, &stop);
            handles.push(scope.spawn(move || {
                closed_loop_producer(writer, payload, next_agreement_id, in_flight, window, stop)
            }));
        }
        // The truncator: deletes segments behind the durable point, as checkpoints would.
        let truncator = {
            let (writer, stop) = (&writer, &stop);
            scope.spawn(move || -> anyhow::Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    let durable = writer.durable_point().agreement_id;
                    writer.delete_below(durable).context("delete_below")?;
                }
                Ok(())
            })
        };
        // Warm up, then open the window.
        let warm_bytes = warm_up_bytes(spec.segment_bytes);
        while counters.bytes.load(Ordering::Relaxed) < warm_bytes
            && warm_up_started.elapsed() < warm_up_max
            && writer.error().is_none()
            && !handles.iter().any(|h| h.is_finished())
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let start = Edge::take(&writer, &counters);
        let end_at = start.at + args.duration();
        window.set((start.at, end_at)).expect("window opened once");
        while Instant::now() < end_at && !handles.iter().any(|h| h.is_finished()) {
            std::thread::sleep(
                Duration::from_millis(1).min(end_at.saturating_duration_since(Instant::now())),
            );
        }
        let end = Edge::take(&writer, &counters);
        stop.store(true, Ordering::Relaxed);
        let mut histograms = Vec::new();
        for handle in handles {
            histograms.push(handle.join().expect("producer panicked")?);
        }
        truncator.join().expect("truncator panicked")?;
        Ok((histograms, (start, end)))
    })?;
    writer.close().context("close the log")?;
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;

    let (start, end) = edges;
    let mut histogram = new_histogram();
    for h in &histograms {
        histogram.add(h).expect("same histogram bounds");
    }
    anyhow::ensure!(!histogram.is_empty(), "no record became durable in the measured window");
    let seconds = (end.at - start.at).as_secs_f64();
    let records = end.durable_records - start.durable_records;
    let writes = end.writes - start.writes;
    let device_bytes = end.bytes - start.bytes;
    anyhow::ensure!(writes > 0 && records > 0, "no write completed in the measured window");
    Ok(RunResult {
        records,
        seconds,
        ops_s: records as f64 / seconds,
        mb_s: (records * args.record_bytes as u64) as f64 / 1e6 / seconds,
        writes,
        device_bytes,
        device_mb_s: device_bytes as f64 / 1e6 / seconds,
        mean_group_records: records as f64 / writes as f64,
        mean_group_bytes: device_bytes as f64 / writes as f64,
        device_busy_fraction: (end.busy_ns - start.busy_ns) as f64 / 1e9 / seconds,
        latency: LatencySummary::of(&histogram),
    })
}

/// Completions are looked for after this many appends (and whenever nothing is left to
/// append), so that polling does not double the traffic on the log's lock.
const POLL_EVERY_APPENDS: usize = 16;

/// One producer of the closed loop; returns the latencies of the records that became
/// durable inside the measured window.
///
/// The producer owns `in_flight` slots. A slot's record is *issued* at the start and
/// again whenever the slot's previous record is seen durable; its latency runs from that
/// issue to the moment it is seen durable. An issued record waits in the producer until
/// `append` takes it (the log's queue is bounded, and with one record per write `append`
/// blocks), and that wait counts: it is the queueing a client would see.
fn closed_loop_producer<S: Storage>(
    writer: &LogWriter<S>,
    payload: &[u8],
    next_agreement_id: &Mutex<u64>,
    in_flight: usize,
    window: &OnceLock<(Instant, Instant)>,
    stop: &AtomicBool,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = new_histogram();
    let started = Instant::now();
    let mut issued: VecDeque<Instant> = (0..in_flight).map(|_| started).collect();
    let mut pending: VecDeque<(Instant, Ticket)> = VecDeque::with_capacity(in_flight);
    let mut draining = false;
    let mut appends_since_poll = 0usize;
    loop {
        if !draining && let Some(issued_at) = issued.pop_front() {
            let ticket = {
                let mut next = next_agreement_id.lock().expect("agreement id lock");
                let ticket = writer.append(*next, *next, payload).context("append")?;
                *next += 1;
                ticket
            };
            pending.push_back((issued_at, ticket));
            appends_since_poll += 1;
            if appends_since_poll < POLL_EVERY_APPENDS && !issued.is_empty() {
                continue;
            }
        } else {
            // Nothing issued: block until the oldest record is durable.
            let Some((_, oldest)) = pending.front() else { break };
            oldest.wait().context("wait for durability")?;
        }
        appends_since_poll = 0;
        let durable_seq = writer.durable_point().record_seq;
        let now = Instant::now();
        let (in_window, past_window) = match window.get() {
            Some(&(start, end)) => (now >= start && now < end, now >= end),
            None => (false, false),
        };
        draining |= past_window || stop.load(Ordering::Relaxed);
        while let Some((issued_at, ticket)) = pending.front() {
            if ticket.record_seq() > durable_seq {
                break;
            }
            if in_window {
                histogram.saturating_record(nanos(now - *issued_at));
            }
            pending.pop_front();
            if !draining {
                issued.push_back(now);
            }
        }
        if draining && pending.is_empty() {
            break;
        }
    }
    Ok(histogram)
}

/// A fresh directory for the benchmark's files, removed with everything in it on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(parent: &Path) -> anyhow::Result<WorkDir> {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        let path = parent.join(format!("dura-wal-bench-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Best effort: the directory is named after the process so a leftover is obvious.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn print_report(report: &WalBenchReport) {
    println!(
        "WAL benchmark in {}: {}-byte records, {} in flight, {:.1} s per measurement",
        report.dir.display(),
        report.record_bytes,
        report.records_in_flight,
        report.seconds
    );
    println!("sync per record = {}", report.sync_per_record_method);
    println!(
        "group commit: {} producer threads, log writes through {}",
        report.producers, report.wal_backend
    );
    println!();
    println!(
        "{:<13} {:<19} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "mode",
        "run",
        "records/s",
        "MB/s",
        "grp recs",
        "grp KiB",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "busy"
    );
    let line = |mode: &str, name: &str, run: &RunResult| {
        println!(
            "{:<13} {:<19} {:>10.0} {:>8.1} {:>9.1} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>6.3}",
            mode,
            name,
            run.ops_s,
            run.mb_s,
            run.mean_group_records,
            run.mean_group_bytes / 1024.0,
            run.latency.p50_us,
            run.latency.p99_us,
            run.latency.p999_us,
            run.latency.max_us,
            run.device_busy_fraction
        );
    };
    for result in &report.modes {
        line(result.mode, "sync per record", &result.sync_per_record);
        line(result.mode, "wal, 1 rec/write", &result.wal_one_record_per_write);
        line(result.mode, "group commit", &result.group);
    }
    if let Some(segments) = &report.segments {
        line(segments.mode, "group, fresh-zero", &segments.fresh_zeroed);
        line(segments.mode, "group, fresh-falloc", &segments.fresh_fallocated);
    }
    println!();
    println!(
        "{:<13} {:>10} {:>10} {:>10} {:>10} {:>10} {:>16}  every round's group/raw",
        "mode", "raw size", "raw MB/s", "group MB/s", "group/raw", "dev/raw", "group/sync ops"
    );
    for result in &report.modes {
        let rounds: Vec<String> = result.round_ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "{:<13} {:>9}K {:>10.1} {:>10.1} {:>10.3} {:>10.3} {:>16.1}  {}",
            result.mode,
            result.raw.record_bytes / 1024,
            result.raw_mb_s,
            result.group_mb_s,
            result.ratio_group_to_raw,
            result.ratio_group_device_to_raw,
            result.group_speedup_over_sync,
            rounds.join(" ")
        );
    }
    println!("(raw = sequential synced writes of the mean group size into written blocks)");
    println!("fastest mode for group commit: {}", report.fastest_group_mode);
    if let Some(segments) = &report.segments {
        println!(
            "{} group commit, records/s relative to recycled segments: fresh pre-zeroed {:.3}, \
             fresh fallocated {:.3}",
            segments.mode,
            segments.fresh_zeroed_to_recycled_ops_ratio,
            segments.fresh_fallocated_to_recycled_ops_ratio
        );
    }
}
