//! The paper's logging experiments on this machine:
//!
//! - `table1`: single-client minimum latency and peak throughput of 4 KiB writes for the
//!   log modes none, async, sync and parallel (the paper's Table 1, where sync is
//!   measured on the device under `--data-dir`);
//! - `fig9`: throughput and latency under rising client counts until throughput stops
//!   growing, for none, sync, batched and parallel (the paper's Figure 9(a));
//! - `fig9b`: the same curves for the tuple space under the paper's DDS workload (100%
//!   `out` of 1 KiB tuples of four strings; its Figure 9(b)), beside the paper's peaks;
//! - `checkpoints`: throughput per 100 ms while replicas checkpoint, coordinated and
//!   sequential (the paper's Figures 2 and 10), in [`crate::checkpoints`];
//! - `recovery`: throughput while a wiped replica takes the state from its peers, the
//!   PBFT-like baseline against CST (the paper's Figures 3 and 11), in
//!   [`crate::recovery`];
//! - `failover`: how long writes stop when the leader is paused or killed, with the
//!   default leader timeout against request timeouts alone, in [`crate::failover`].
//!
//! Each log mode runs on a fresh local cluster with its data in its own folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use dura_engine::runtime::{LogMode, Mode};
use serde::{Deserialize, Serialize};

use crate::driver::RunSpec;
use crate::plot::{Chart, Series, XAxis};
use crate::results::ReplicaRss;
use crate::runner::{Connector, ModeArg, default_out_dir, load_and_run, memory_target};
use crate::target::TargetFactory;
use crate::workload::{Distribution, ServiceName};

/// Which experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExperimentName {
    /// Table 1: minimum latency and peak throughput per log mode.
    Table1,
    /// Figure 9(a): latency-throughput curves per log mode.
    Fig9,
    /// Figure 9(b): latency-throughput curves per log mode of the tuple space under the
    /// paper's DDS workload (100% `out` of 1 KiB tuples of four strings).
    Fig9b,
    /// Figures 2 and 10: throughput over time while replicas checkpoint.
    Checkpoints,
    /// Figures 3 and 11: throughput over time while a wiped replica recovers by state
    /// transfer (PBFT-like, then CST).
    Recovery,
    /// How long writes stop when the leader (then the next one) is paused or killed,
    /// with the default leader timeout and with request timeouts alone.
    Failover,
}

/// Options of `dura-bench experiment`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExperimentArgs {
    /// table1, fig9, fig9b, checkpoints, recovery or failover.
    #[arg(value_enum)]
    pub name: ExperimentName,
    /// Where the clusters keep their data (the device under test; default: a temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Measured seconds per point (default: 10; checkpoints: 30 per mode; recovery: 60
    /// per protocol; failover: 5, the steady part before the first fault of each run).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Warmup seconds per point.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Records loaded into each cluster first (default: 10,000 (failover too);
    /// checkpoints and recovery: 262,144, a 1 GiB state of 4 KiB values).
    #[arg(long)]
    pub records: Option<u64>,
    /// Value size in bytes (default: 4096; fig9b: 1024, each tuple's four strings
    /// together).
    #[arg(long)]
    pub value_bytes: Option<usize>,
    /// Ordering protocol.
    #[arg(long, value_enum, default_value_t = ModeArg::Bft)]
    pub mode: ModeArg,
    /// recovery, failover: replicas per cluster (default: 4 for bft, 3 for crash; 3f+1
    /// or 2f+1).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Clients for table1's peak throughput and the load of the checkpoints, recovery
    /// and failover experiments (durable modes need many in flight to hide the log's
    /// latency).
    #[arg(long, visible_alias = "clients", default_value_t = 512)]
    pub clients_peak: usize,
    /// fig9 and fig9b double the clients from 1 up to this many at most.
    #[arg(long, default_value_t = 1024)]
    pub clients_max: usize,
    /// checkpoints: P, the requests between two checkpoints of one replica, the same for
    /// every mode (default: from a short calibration run, so that each replica
    /// checkpoints about three times in --seconds). recovery: the same for both
    /// protocols (default: twice --records, the paper's log of about twice the state).
    #[arg(long)]
    pub checkpoint_period: Option<u64>,
    /// failover: seconds of load on a fresh cluster with default settings and no fault,
    /// over which every replica's regency must not move (0: no such phase).
    #[arg(long, default_value_t = 60.0)]
    pub quiet_seconds: f64,
    /// failover: leave out the runs with request timeouts alone (the behaviour before
    /// the leader timeout), so only the default settings are measured.
    #[arg(long)]
    pub no_baseline: bool,
    /// Results folder (default: `dura-bench-results/EXPERIMENT-TIME`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Run against an in-process map (no cluster; checks the experiment's plumbing).
    #[arg(long, hide = true)]
    pub memory: bool,
}

/// One measured point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Client threads.
    pub clients: usize,
    /// Throughput.
    pub ops_per_s: f64,
    /// Minimum latency, µs.
    pub min_us: u64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// Operations that failed (absent when none did).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors: u64,
    /// Why, with how many (see [`crate::driver::RunResult::error_reasons`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_reasons: BTreeMap<String, u64>,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// One log mode's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeResult {
    /// Log mode.
    pub log_mode: String,
    /// The points measured, in order.
    pub points: Vec<Point>,
    /// Highest throughput among the points.
    pub peak_ops_per_s: f64,
    /// Replica peak RSS at the end.
    pub replica_rss: Vec<ReplicaRss>,
    /// What each replica said about its log when the cluster stopped (over all of the
    /// mode's points); empty for the in-process target.
    #[serde(default)]
    pub replica_log: Vec<String>,
}

/// The paper's Figure 9(b) peaks, as its text gives them (section 5), ops/s: log mode,
/// with disk logging, with SSD logging (`none` has no log; batched is given for disk
/// only).
pub const PAPER_FIG9B_PEAKS: [(&str, Option<f64>, Option<f64>); 4] = [
    ("none", Some(14_739.0), None),
    ("sync", Some(143.0), Some(1_900.0)),
    ("batched", Some(7_153.0), None),
    ("parallel", Some(8_430.0), Some(9_250.0)),
];

/// A paper's figures beside ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperPeaks {
    /// Where they come from.
    pub source: String,
    /// Peak throughput per log mode with disk logging (and `none`), ops/s.
    pub peak_ops_s_disk: BTreeMap<String, f64>,
    /// The same with SSD logging, where given.
    pub peak_ops_s_ssd: BTreeMap<String, f64>,
    /// parallel (disk) peak / none peak.
    pub parallel_over_none: f64,
}

impl PaperPeaks {
    /// Figure 9(b)'s, from [`PAPER_FIG9B_PEAKS`].
    pub fn fig9b() -> Self {
        let column = |ssd: bool| {
            PAPER_FIG9B_PEAKS
                .iter()
                .filter_map(|&(mode, disk, on_ssd)| {
                    Some((mode.to_string(), if ssd { on_ssd } else { disk }?))
                })
                .collect::<BTreeMap<_, _>>()
        };
        let disk = column(false);
        let parallel_over_none = disk["parallel"] / disk["none"];
        Self {
            source: "Bessani et al., ATC 2013, section 5, Figure 9(b) (DDS, 1 KiB tuples)".into(),
            peak_ops_s_disk: disk,
            peak_ops_s_ssd: column(true),
            parallel_over_none,
        }
    }
}

/// A whole experiment's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResult {
    /// `table1`, `fig9` or `fig9b`.
    pub experiment: String,
    /// The service measured (fig9b: `tuplespace`; absent: the key-value store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Its workload (fig9b: `dds`; absent: the key-value store's `w`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Ordering protocol.
    pub mode: String,
    /// Replicas per cluster.
    pub replicas: u32,
    /// Value size.
    pub value_bytes: usize,
    /// Per log mode, in the experiment's order.
    pub modes: Vec<ModeResult>,
    /// Peak throughput of each mode divided by `none`'s.
    pub ratio_to_none: Vec<(String, f64)>,
    /// fig9: parallel peak / sync peak.
    pub parallel_over_sync: Option<f64>,
    /// fig9b: each log mode's peak throughput, ops/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_ops_s: Option<BTreeMap<String, f64>>,
    /// fig9b: parallel peak / none peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_over_none: Option<f64>,
    /// fig9b: the paper's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<PaperPeaks>,
    /// Where the files are.
    pub out_dir: PathBuf,
}

impl ExperimentArgs {
    /// Records to load: `--records`, or the experiment's default.
    pub fn records(&self) -> u64 {
        self.records.unwrap_or(match self.name {
            ExperimentName::Checkpoints | ExperimentName::Recovery => CHECKPOINTS_RECORDS_DEFAULT,
            _ => 10_000,
        })
    }

    /// Value size: `--value-bytes`, or the service's (4 KiB values, 1 KiB tuples).
    pub fn value_bytes(&self) -> usize {
        self.value_bytes.unwrap_or(self.service().default_value_bytes())
    }

    /// The service the experiment measures: the tuple space for fig9b, else the
    /// key-value store.
    pub fn service(&self) -> ServiceName {
        match self.name {
            ExperimentName::Fig9b => ServiceName::Tuplespace,
            _ => ServiceName::Kv,
        }
    }

    /// Measured seconds per point: `--seconds`, or the experiment's default.
    pub fn seconds(&self) -> f64 {
        self.seconds.unwrap_or(match self.name {
            ExperimentName::Checkpoints => 30.0,
            ExperimentName::Recovery => 60.0,
            ExperimentName::Failover => crate::failover::STEADY_SECONDS_DEFAULT,
            _ => 10.0,
        })
    }
}

/// The checkpoints experiment's default state: 1 GiB of 4 KiB values.
pub const CHECKPOINTS_RECORDS_DEFAULT: u64 = 262_144;

/// The workload of every experiment: the paper's for its service (100% replace of
/// `value_bytes` values, uniform keys; fig9b: 100% `out` of `value_bytes` tuples),
/// closed loop with `clients` clients.
pub fn spec(args: &ExperimentArgs, clients: usize) -> RunSpec {
    RunSpec {
        workload: args.service().default_workload(),
        distribution: Distribution::Uniform,
        clients,
        target_rate: None,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.seconds()),
        records: args.records(),
        value_bytes: args.value_bytes(),
        scan_length_max: 1,
        seed: 1,
        trace_ops: false,
    }
}

fn point(clients: usize, result: &crate::driver::RunResult) -> Point {
    Point {
        clients,
        ops_per_s: result.ops_per_s(),
        min_us: result.all.min(),
        mean_us: result.all.mean(),
        p50_us: result.all.value_at_quantile(0.5),
        p99_us: result.all.value_at_quantile(0.99),
        errors: result.errors,
        error_reasons: result.error_reasons.clone(),
    }
}

/// Runs `body` against a target for `log_mode`: a fresh local cluster, or the memory
/// map with `--memory`. Returns what `body` returned and the replicas' peak RSS.
fn with_target<T>(
    args: &ExperimentArgs,
    log_mode: LogMode,
    connector: &Connector,
    body: &mut dyn FnMut(&dyn TargetFactory) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<ReplicaRss>, Vec<String>)> {
    if args.memory {
        return Ok((body(memory_target(args.service()).as_ref())?, Vec::new(), Vec::new()));
    }
    let mode: Mode = args.mode.into();
    let data_dir = args.data_dir.as_ref().map(|dir| dir.join(log_mode.to_string()));
    let mut cluster = crate::runner::start_service_cluster(
        args.service(),
        mode.replicas_min(1) as u32,
        mode,
        log_mode,
        data_dir.as_deref(),
        &|_| Ok(()),
        connector,
    )?;
    let factory = connector(cluster.config(), crate::runner::REQUEST_TIMEOUT)?;
    let value = body(factory.as_ref())?;
    cluster.check_alive()?;
    let rss = cluster.peak_rss();
    drop(factory);
    Ok((value, rss, cluster.stop()))
}

/// Runs the experiment `args.name`, writes its files and returns its result.
pub fn run(
    args: &ExperimentArgs,
    connector: &Connector,
    stop: &AtomicBool,
) -> anyhow::Result<ExperimentResult> {
    anyhow::ensure!(args.seconds() > 0.0 && args.warmup >= 0.0, "bad --seconds or --warmup");
    anyhow::ensure!(args.records() > 0 && args.clients_peak > 0 && args.clients_max > 0);
    let (name, modes) = match args.name {
        ExperimentName::Table1 => {
            ("table1", [LogMode::None, LogMode::Async, LogMode::Sync, LogMode::Parallel])
        }
        ExperimentName::Fig9 => {
            ("fig9", [LogMode::None, LogMode::Sync, LogMode::Batched, LogMode::Parallel])
        }
        ExperimentName::Fig9b => {
            ("fig9b", [LogMode::None, LogMode::Sync, LogMode::Batched, LogMode::Parallel])
        }
        ExperimentName::Checkpoints => {
            anyhow::bail!("the checkpoints experiment runs through crate::checkpoints::run")
        }
        ExperimentName::Recovery => {
            anyhow::bail!("the recovery experiment runs through crate::recovery::run")
        }
        ExperimentName::Failover => {
            anyhow::bail!("the failover experiment runs through crate::failover::run")
        }
    };
    let out_dir = args.out.clone().unwrap_or_else(|| default_out_dir(name));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let mut results = Vec::new();
    for log_mode in modes {
        let mut body = |factory: &dyn TargetFactory| -> anyhow::Result<Vec<Point>> {
            let mut points = Vec::new();
            let mut loaded = false;
            let mut measure = |clients: usize| -> anyhow::Result<Point> {
                let label = format!("{log_mode} {clients} clients");
                let result = load_and_run(factory, &spec(args, clients), loaded, stop, &label)?;
                loaded = true;
                anyhow::ensure!(!result.interrupted, "interrupted");
                Ok(point(clients, &result))
            };
            match args.name {
                ExperimentName::Table1 => {
                    points.push(measure(1)?);
                    points.push(measure(args.clients_peak)?);
                }
                ExperimentName::Checkpoints
                | ExperimentName::Recovery
                | ExperimentName::Failover => {
                    unreachable!("refused above")
                }
                ExperimentName::Fig9 | ExperimentName::Fig9b => {
                    let mut clients = 1;
                    let mut best = 0.0f64;
                    let mut flat_points = 0;
                    loop {
                        let measured = measure(clients)?;
                        let ops = measured.ops_per_s;
                        points.push(measured);
                        // Throughput stopped growing: two points in a row less than 5%
                        // above the best so far (one noisy point does not end the curve).
                        flat_points = if ops < best * 1.05 { flat_points + 1 } else { 0 };
                        if flat_points >= 2 || clients >= args.clients_max {
                            break;
                        }
                        best = best.max(ops);
                        clients = (clients * 2).min(args.clients_max);
                    }
                }
            }
            Ok(points)
        };
        let (points, replica_rss, replica_log) = with_target(args, log_mode, connector, &mut body)?;
        let peak_ops_per_s = points.iter().map(|point| point.ops_per_s).fold(0.0, f64::max);
        results.push(ModeResult {
            log_mode: log_mode.to_string(),
            points,
            peak_ops_per_s,
            replica_rss,
            replica_log,
        });
    }
    let peak = |mode: &str| {
        results.iter().find(|result| result.log_mode == mode).map(|result| result.peak_ops_per_s)
    };
    let none_peak = peak("none").unwrap_or(0.0);
    let ratio_to_none = results
        .iter()
        .map(|result| {
            let ratio = if none_peak > 0.0 { result.peak_ops_per_s / none_peak } else { 0.0 };
            (result.log_mode.clone(), ratio)
        })
        .collect();
    let parallel_over_sync = match (peak("parallel"), peak("sync")) {
        (Some(parallel), Some(sync)) if sync > 0.0 => Some(parallel / sync),
        _ => None,
    };
    let mode: Mode = args.mode.into();
    let fig9b = args.name == ExperimentName::Fig9b;
    let parallel_over_none = match (peak("parallel"), none_peak) {
        (Some(parallel), none) if fig9b && none > 0.0 => Some(parallel / none),
        _ => None,
    };
    let peak_ops_s = fig9b.then(|| {
        results.iter().map(|result| (result.log_mode.clone(), result.peak_ops_per_s)).collect()
    });
    let spec = spec(args, 1);
    let result = ExperimentResult {
        experiment: name.to_string(),
        service: fig9b.then(|| args.service().name().to_string()),
        workload: fig9b.then(|| crate::results::value_name(&spec.workload)),
        mode: mode.to_string(),
        replicas: if args.memory { 0 } else { mode.replicas_min(1) as u32 },
        value_bytes: args.value_bytes(),
        modes: results,
        ratio_to_none,
        parallel_over_sync,
        peak_ops_s,
        parallel_over_none,
        paper: fig9b.then(PaperPeaks::fig9b),
        out_dir: out_dir.clone(),
    };
    let json_path = out_dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("write {}", json_path.display()))?;
    match args.name {
        ExperimentName::Fig9 => {
            crate::plot::write_svg_and_png(&out_dir, "fig9", &[fig9_chart(&result)])?;
        }
        ExperimentName::Fig9b => {
            let charts = [fig9_chart(&result), fig9b_peaks_chart(&result)];
            crate::plot::write_svg_and_png(&out_dir, "fig9b", &charts)?;
        }
        _ => {}
    }
    Ok(result)
}

/// Figure 9(a) (or (b)): mean latency against throughput, one curve per log mode.
pub fn fig9_chart(result: &ExperimentResult) -> Chart {
    let title = match result.experiment.as_str() {
        "fig9b" => format!("Tuple space, out of {} B tuples", result.value_bytes),
        _ => format!("Latency vs throughput, {} B writes", result.value_bytes),
    };
    Chart {
        title,
        x_label: "throughput (ops/s)".into(),
        y_label: "mean latency (ms)".into(),
        x_axis: XAxis::Linear,
        markers: true,
        lanes: Vec::new(),
        series: result
            .modes
            .iter()
            .map(|mode| Series {
                name: mode.log_mode.clone(),
                points: mode
                    .points
                    .iter()
                    .map(|point| (point.ops_per_s, point.mean_us / 1000.0))
                    .collect(),
            })
            .collect(),
    }
}

/// The log modes of Figure 9, in its order (the peaks chart's categories).
const FIG9_MODES: &[&str] = &["none", "sync", "batched", "parallel"];

/// Figure 9(b)'s peaks: each log mode's peak throughput here beside the paper's (disk
/// logging, and SSD where its text gives it).
pub fn fig9b_peaks_chart(result: &ExperimentResult) -> Chart {
    let ours = FIG9_MODES
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let mode = result.modes.iter().find(|mode| mode.log_mode == *name)?;
            Some((index as f64, mode.peak_ops_per_s))
        })
        .collect();
    let paper = PaperPeaks::fig9b();
    let column = |peaks: &BTreeMap<String, f64>| -> Vec<(f64, f64)> {
        FIG9_MODES
            .iter()
            .enumerate()
            .filter_map(|(index, name)| Some((index as f64, *peaks.get(*name)?)))
            .collect()
    };
    Chart {
        title: "Peak throughput: here and in the paper".into(),
        x_label: "log mode".into(),
        y_label: "peak throughput (ops/s)".into(),
        x_axis: XAxis::Categories(FIG9_MODES),
        markers: true,
        lanes: Vec::new(),
        series: vec![
            Series { name: "this machine".into(), points: ours },
            Series { name: "paper, disk".into(), points: column(&paper.peak_ops_s_disk) },
        ],
    }
}

/// Figure 9's curves, a row per point, and the errors of the points that had some.
fn curves_table(text: &mut String, result: &ExperimentResult) {
    let _ = writeln!(
        text,
        "{:<10} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "log", "clients", "ops/s", "mean ms", "p50 ms", "p99 ms"
    );
    for mode in &result.modes {
        for point in &mode.points {
            let _ = writeln!(
                text,
                "{:<10} {:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2}",
                mode.log_mode,
                point.clients,
                point.ops_per_s,
                point.mean_us / 1000.0,
                point.p50_us as f64 / 1000.0,
                point.p99_us as f64 / 1000.0
            );
        }
    }
    for mode in &result.modes {
        for point in mode.points.iter().filter(|point| point.errors > 0) {
            let _ = writeln!(
                text,
                "{} at {} clients: {} errors",
                mode.log_mode, point.clients, point.errors
            );
            for (reason, count) in &point.error_reasons {
                let _ = writeln!(text, "  {count}: {reason}");
            }
        }
    }
}

/// The experiment's printed table.
pub fn to_text(result: &ExperimentResult) -> String {
    let mut text = String::new();
    let ratio = |mode: &str| {
        result.ratio_to_none.iter().find(|(name, _)| name == mode).map(|(_, r)| *r).unwrap_or(0.0)
    };
    match result.experiment.as_str() {
        "table1" => {
            let _ = writeln!(
                text,
                "Table 1 on this machine: single-client minimum latency and peak throughput of \
                 {} B writes ({} replicas, {})",
                result.value_bytes, result.replicas, result.mode
            );
            let _ = write!(text, "{:<22}", "Metric");
            for mode in &result.modes {
                let _ = write!(text, " {:>10}", mode.log_mode);
            }
            let _ = writeln!(text);
            let row = |text: &mut String, name: &str, value: &dyn Fn(&ModeResult) -> String| {
                let _ = write!(text, "{name:<22}");
                for mode in &result.modes {
                    let _ = write!(text, " {:>10}", value(mode));
                }
                let _ = writeln!(text);
            };
            let first = |mode: &ModeResult| mode.points.first().cloned();
            row(&mut text, "Min Lat. (ms)", &|mode| {
                first(mode).map(|p| format!("{:.2}", p.min_us as f64 / 1000.0)).unwrap_or_default()
            });
            row(&mut text, "Median Lat. (ms)", &|mode| {
                first(mode).map(|p| format!("{:.2}", p.p50_us as f64 / 1000.0)).unwrap_or_default()
            });
            row(&mut text, "Peak Thr. (ops/s)", &|mode| format!("{:.0}", mode.peak_ops_per_s));
            row(&mut text, "Peak Thr. / none", &|mode| format!("{:.2}", ratio(&mode.log_mode)));
        }
        "fig9b" => {
            let _ = writeln!(
                text,
                "Figure 9(b) on this machine: the tuple space, 100% out of {} B tuples of four \
                 strings ({} replicas, {})",
                result.value_bytes, result.replicas, result.mode
            );
            curves_table(&mut text, result);
            let paper = result.paper.clone().unwrap_or_else(PaperPeaks::fig9b);
            let _ = writeln!(
                text,
                "{:<14} {:>10} {:>8}   {:>12} {:>8} {:>12}",
                "peak", "ops/s", "/ none", "paper disk", "/ none", "paper SSD"
            );
            let paper_none = paper.peak_ops_s_disk.get("none").copied().unwrap_or(0.0);
            for mode in &result.modes {
                let disk = paper.peak_ops_s_disk.get(&mode.log_mode).copied();
                let ssd = paper.peak_ops_s_ssd.get(&mode.log_mode).copied();
                let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    text,
                    "{:<14} {:>10.0} {:>8.2}   {:>12} {:>8} {:>12}",
                    mode.log_mode,
                    mode.peak_ops_per_s,
                    ratio(&mode.log_mode),
                    or_dash(disk.map(|v| format!("{v:.0}"))),
                    or_dash(
                        disk.filter(|_| paper_none > 0.0).map(|v| format!("{:.2}", v / paper_none))
                    ),
                    or_dash(ssd.map(|v| format!("{v:.0}"))),
                );
            }
            match result.parallel_over_none {
                Some(ours) => {
                    let _ = writeln!(
                        text,
                        "parallel_over_none: {ours:.2} (paper, disk: {:.2})",
                        paper.parallel_over_none
                    );
                }
                None => {
                    let _ = writeln!(text, "parallel_over_none: - (no none or parallel peak)");
                }
            }
            if let Some(over_sync) = result.parallel_over_sync {
                let _ = writeln!(text, "parallel / sync peak: {over_sync:.2}");
            }
        }
        _ => {
            let _ = writeln!(
                text,
                "Figure 9(a) on this machine: {} B writes ({} replicas, {})",
                result.value_bytes, result.replicas, result.mode
            );
            curves_table(&mut text, result);
            for mode in &result.modes {
                let _ = writeln!(
                    text,
                    "peak {:<9} {:>10.0} ops/s  ({:.2} of none)",
                    mode.log_mode,
                    mode.peak_ops_per_s,
                    ratio(&mode.log_mode)
                );
            }
            let _ = writeln!(text, "parallel / none peak: {:.2}", ratio("parallel"));
            if let Some(over_sync) = result.parallel_over_sync {
                let _ = writeln!(text, "parallel / sync peak: {over_sync:.2}");
            }
        }
    }
    for mode in &result.modes {
        if !mode.replica_rss.is_empty() {
            let _ = writeln!(
                text,
                "{} peak RSS: {}",
                mode.log_mode,
                crate::runner::rss_text(&mode.replica_rss)
            );
        }
    }
    for mode in &result.modes {
        for line in &mode.replica_log {
            let _ = writeln!(text, "{} log, all points: {line}", mode.log_mode);
        }
    }
    let _ = writeln!(text, "results in {}", result.out_dir.display());
    text
}
