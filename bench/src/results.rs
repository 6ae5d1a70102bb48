//! Result files of a run, in one folder:
//!
//! - `result.json`: the [`Summary`] (also what `--json` prints);
//! - `latency.hgrm`: all operations' latency distribution, and `latency-<kind>.hgrm` per
//!   operation kind, in the text format of HdrHistogram's Java
//!   `outputPercentileDistribution` (values in milliseconds, 5 ticks per half distance),
//!   which HdrHistogram's plotters read;
//! - `throughput.csv`: `second,ops` for each second of the measured window.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::driver::{HISTOGRAM_SIGNIFICANT_DIGITS, RunResult};

/// Ticks per half distance to 100%, as HdrHistogram's tools default to.
pub const PERCENTILE_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Histograms record microseconds; `.hgrm` files show milliseconds.
pub const HGRM_SCALING_RATIO: f64 = 1000.0;

/// Latency figures of one set of operations, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Operations measured.
    pub count: u64,
    /// Mean latency.
    pub mean_us: f64,
    /// Smallest latency.
    pub min_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Largest latency.
    pub max_us: u64,
}

impl LatencySummary {
    /// The figures of `histogram` (all zero when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let at = |quantile: f64| histogram.value_at_quantile(quantile);
        Self {
            count: histogram.len(),
            mean_us: histogram.mean(),
            min_us: histogram.min(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            p9999_us: at(0.9999),
            max_us: histogram.max(),
        }
    }
}

fn kv_service() -> String {
    "kv".into()
}

/// One replica's memory high-water mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRss {
    /// Replica id.
    pub id: u32,
    /// Peak resident set (VmHWM), bytes; `None` when it could not be read.
    pub peak_rss_bytes: Option<u64>,
}

/// The machine-readable result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What was measured: `cluster` (started here), `connect` (a running cluster) or
    /// `memory` (the in-process map, for tests).
    pub target: String,
    /// The service under test: `kv` or `tuplespace` (`kv` in results written before
    /// the tuple space could be run).
    #[serde(default = "kv_service")]
    pub service: String,
    /// Workload name (w, a..f; dds, queue, lock).
    pub workload: String,
    /// Key distribution.
    pub distribution: String,
    /// Ordering protocol: bft or crash.
    pub mode: String,
    /// Durability mode.
    pub log_mode: String,
    /// Replicas in the cluster.
    pub replicas: u32,
    /// Client threads.
    pub clients: usize,
    /// Open-loop target rate, ops/s; `None` for closed loop.
    pub target_rate: Option<f64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Warmup seconds.
    pub warmup_s: f64,
    /// Records loaded.
    pub records: u64,
    /// Seconds the load phase took (0 when skipped).
    #[serde(default)]
    pub load_s: f64,
    /// Value size.
    pub value_bytes: usize,
    /// Operations measured.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Why they failed, with how many failed so (see [`RunResult::error_reasons`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_reasons: BTreeMap<String, u64>,
    /// Measured throughput.
    pub ops_per_s: f64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// p90, µs.
    pub p90_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// p99.9, µs.
    pub p999_us: u64,
    /// p99.99, µs.
    pub p9999_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Per operation kind.
    pub operations: BTreeMap<String, LatencySummary>,
    /// Operations completed in each measured second.
    pub per_second: Vec<u64>,
    /// Per replica peak RSS (empty when the cluster was not started here).
    pub replica_rss: Vec<ReplicaRss>,
    /// What each replica said about its log when it stopped (its group writes, and how
    /// long replies waited for them); empty when the cluster was not started here.
    #[serde(default)]
    pub replica_log: Vec<String>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// The folder holding the result files.
    pub out_dir: PathBuf,
    /// File system and device of the cluster's data dir (`ext4 on /dev/nvme0n1p2`),
    /// when this run started the cluster; absent in results written before it existed.
    #[serde(default)]
    pub storage: Option<String>,
    /// The replicas' own view of the run, from their metrics endpoints (when this run
    /// started the cluster).
    #[serde(default)]
    pub replica_view: Option<ReplicaView>,
}

/// What the replicas' metrics said during a run: the requests they decided (ordered)
/// per second beside the client's completed operations, and their regency. Scraped
/// every [`crate::runner::VIEW_SCRAPE_PERIOD`]; each second's count is the difference
/// of the scrapes nearest its ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Each replica's metrics address (`/metrics`, `/health`).
    pub metrics: Vec<String>,
    /// Requests decided in each measured second, by the replica that decided most
    /// (`dura_batch_requests_decided_total`; None: not scraped around that second).
    pub decided_per_second: Vec<Option<u64>>,
    /// Requests decided in the measured window over its length, same replica, per s.
    pub decided_per_s: Option<f64>,
    /// Every replica's regency at the measured window's start (None: not read).
    pub regency_start: Vec<Option<u64>>,
    /// And at its end.
    pub regency_end: Vec<Option<u64>>,
    /// Leader changes in the window (the largest regency move of a replica).
    pub leader_changes: Option<u64>,
}

/// The file system and device holding `path` (`FSTYPE on SOURCE`), from the longest
/// mount point of `/proc/self/mountinfo` that contains it; None where that cannot be
/// read.
pub fn describe_storage(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER"
    let parse = |line: &str| -> Option<(String, String, String)> {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?.replace("\\040", " ");
        let mut right = right.split(' ');
        Some((mount_point, right.next()?.to_string(), right.next()?.to_string()))
    };
    for (mount_point, fs_type, source) in mountinfo.lines().filter_map(parse) {
        if path.starts_with(&mount_point)
            && best.as_ref().is_none_or(|(len, _)| mount_point.len() >= *len)
        {
            best = Some((mount_point.len(), format!("{fs_type} on {source}")));
        }
    }
    best.map(|(_, described)| described)
}

/// The run's setting, for the [`Summary`].
#[derive(Debug, Clone)]
pub struct RunLabels {
    /// See [`Summary::target`].
    pub target: String,
    /// See [`Summary::mode`].
    pub mode: String,
    /// See [`Summary::log_mode`].
    pub log_mode: String,
    /// See [`Summary::replicas`].
    pub replicas: u32,
    /// See [`Summary::storage`].
    pub storage: Option<String>,
}

impl Summary {
    /// The summary of `result`, run as `spec`.
    pub fn new(
        result: &RunResult,
        spec: &crate::driver::RunSpec,
        labels: &RunLabels,
        out_dir: &Path,
    ) -> Self {
        let all = LatencySummary::of(&result.all);
        Self {
            target: labels.target.clone(),
            service: spec.workload.service().name().to_string(),
            workload: value_name(&spec.workload),
            distribution: value_name(&spec.distribution),
            mode: labels.mode.clone(),
            log_mode: labels.log_mode.clone(),
            replicas: labels.replicas,
            clients: spec.clients,
            target_rate: spec.target_rate,
            seconds: result.measured.as_secs_f64(),
            warmup_s: spec.warmup.as_secs_f64(),
            records: spec.records,
            load_s: result.load_s,
            value_bytes: spec.value_bytes,
            ops: result.all.len(),
            errors: result.errors,
            error_reasons: result.error_reasons.clone(),
            ops_per_s: result.ops_per_s(),
            mean_us: all.mean_us,
            p50_us: all.p50_us,
            p90_us: all.p90_us,
            p99_us: all.p99_us,
            p999_us: all.p999_us,
            p9999_us: all.p9999_us,
            max_us: all.max_us,
            operations: result
                .by_kind
                .iter()
                .map(|(kind, histogram)| (kind.name().to_string(), LatencySummary::of(histogram)))
                .collect(),
            per_second: result.per_second.clone(),
            replica_rss: Vec::new(),
            replica_log: Vec::new(),
            interrupted: result.interrupted,
            out_dir: out_dir.to_path_buf(),
            storage: labels.storage.clone(),
            replica_view: None,
        }
    }

    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let ms = |us: u64| us as f64 / 1000.0;
        if self.service != "kv" {
            let _ = write!(text, "service {}, ", self.service);
        }
        let _ = writeln!(
            text,
            "workload {} ({}), {} clients{}, {} replicas, mode {}, log {}",
            self.workload,
            self.distribution,
            self.clients,
            self.target_rate.map(|rate| format!(" at {rate:.0} ops/s")).unwrap_or_default(),
            self.replicas,
            self.mode,
            self.log_mode
        );
        if self.load_s > 0.0 {
            let _ = writeln!(
                text,
                "loaded {} records of {} B in {:.1} s",
                self.records, self.value_bytes, self.load_s
            );
        }
        if self.operations.contains_key("scan") {
            let _ = writeln!(
                text,
                "(a scan is one ordered range scan through ordering, of up to \
                 --scan-length-max keys)"
            );
        }
        match &self.replica_view {
            None => {
                let _ = writeln!(text, "throughput per second (ops/s):");
                for (second, ops) in self.per_second.iter().enumerate() {
                    let _ = writeln!(text, "  {:>4} s  {ops:>9}", second + 1);
                }
            }
            Some(view) => {
                let _ = writeln!(
                    text,
                    "throughput per second: ops/s completed (client) and requests decided \
                     (replicas' metrics):"
                );
                for (second, ops) in self.per_second.iter().enumerate() {
                    let decided = view.decided_per_second.get(second).copied().flatten();
                    let decided = decided.map_or("-".into(), |count| count.to_string());
                    let _ = writeln!(text, "  {:>4} s  {ops:>9}  {decided:>9}", second + 1);
                }
            }
        }
        let _ = writeln!(
            text,
            "{} ops in {:.1} s: {:.0} ops/s, {} errors{}",
            self.ops,
            self.seconds,
            self.ops_per_s,
            self.errors,
            if self.interrupted { " (interrupted)" } else { "" }
        );
        for (reason, count) in &self.error_reasons {
            let _ = writeln!(text, "  {count} errors: {reason}");
        }
        if let Some(view) = &self.replica_view {
            let regencies = |values: &[Option<u64>]| {
                let values: Vec<String> = values
                    .iter()
                    .map(|value| value.map_or("-".into(), |value| value.to_string()))
                    .collect();
                values.join(" ")
            };
            let _ = writeln!(
                text,
                "replicas' view: {} requests decided per s; regency {} -> {} (leader changes {})",
                view.decided_per_s.map_or("-".into(), |rate| format!("{rate:.0}")),
                regencies(&view.regency_start),
                regencies(&view.regency_end),
                view.leader_changes.map_or("-".into(), |changes| changes.to_string())
            );
        }
        let _ = writeln!(
            text,
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (ms)",
            "op", "count", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        for (name, op) in &self.operations {
            let _ = writeln!(
                text,
                "{:<8} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name,
                op.count,
                op.mean_us / 1000.0,
                ms(op.p50_us),
                ms(op.p90_us),
                ms(op.p99_us),
                ms(op.p999_us),
                ms(op.p9999_us),
                ms(op.max_us)
            );
        }
        for replica in &self.replica_rss {
            let rss = replica
                .peak_rss_bytes
                .map(|bytes| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
                .unwrap_or_else(|| "unknown".to_string());
            let _ = writeln!(text, "replica {} peak RSS {rss}", replica.id);
        }
        for line in &self.replica_log {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "results in {}", self.out_dir.display());
        text
    }
}

/// The command-line name of a value of a clap enum.
pub fn value_name<T: clap::ValueEnum>(value: &T) -> String {
    value.to_possible_value().map(|value| value.get_name().to_string()).unwrap_or_default()
}

/// `histogram` (µs) as HdrHistogram's Java `outputPercentileDistribution` prints it
/// with `outputValueUnitScalingRatio` = 1000 (so values are in ms) and 5 percentile
/// ticks per half distance.
pub fn hgrm_text(histogram: &Histogram<u64>) -> String {
    let digits = usize::from(HISTOGRAM_SIGNIFICANT_DIGITS);
    let mut text = String::new();
    let _ = write!(
        text,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total: u64 = 0;
    let mut reached_end = false;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(PERCENTILE_TICKS_PER_HALF_DISTANCE) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / HGRM_SCALING_RATIO;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                let _ = writeln!(
                    text,
                    "{value:>12.digits$} {quantile:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(text, "{value:>12.digits$} {quantile:>2.12} {total:>10}");
                reached_end = true;
                break;
            }
        }
        assert_eq!(total, histogram.len(), "the percentile walk visits every value");
        if !reached_end {
            let value = histogram.max() as f64 / HGRM_SCALING_RATIO;
            let _ = writeln!(text, "{value:>12.digits$} {:>2.12} {total:>10}", 1.0);
        }
    }
    let _ = writeln!(
        text,
        "#[Mean    = {:>12.digits$}, StdDeviation   = {:>12.digits$}]",
        histogram.mean() / HGRM_SCALING_RATIO,
        histogram.stdev() / HGRM_SCALING_RATIO
    );
    let _ = writeln!(
        text,
        "#[Max     = {:>12.digits$}, Total count    = {:>12}]",
        histogram.max() as f64 / HGRM_SCALING_RATIO,
        histogram.len()
    );
    let sub_buckets = (2.0 * 10f64.powi(i32::from(HISTOGRAM_SIGNIFICANT_DIGITS))).log2().ceil();
    let _ = writeln!(
        text,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        1u64 << sub_buckets as u32
    );
    text
}

/// One row of a `.hgrm` file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HgrmRow {
    /// Latency, ms.
    pub value_ms: f64,
    /// Fraction of operations at or below it, 0..=1.
    pub percentile: f64,
    /// Operations at or below it.
    pub total_count: u64,
}

/// A parsed `.hgrm` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Hgrm {
    /// The rows, in file order (percentile non-decreasing).
    pub rows: Vec<HgrmRow>,
    /// `#[Mean = ...]`, ms.
    pub mean_ms: f64,
    /// `#[Max = ...]`, ms.
    pub max_ms: f64,
    /// `Total count`.
    pub total_count: u64,
}

/// Parses the text of a `.hgrm` file (as [`hgrm_text`] or HdrHistogram writes it).
pub fn parse_hgrm(text: &str) -> anyhow::Result<Hgrm> {
    let mut rows = Vec::new();
    let mut mean_ms = None;
    let mut max_ms = None;
    let mut total_count = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Value") {
            continue;
        }
        if let Some(footer) = line.strip_prefix("#[").and_then(|rest| rest.strip_suffix(']')) {
            for field in footer.split(',') {
                let Some((name, value)) = field.split_once('=') else { continue };
                let value = value.trim();
                match name.trim() {
                    "Mean" => mean_ms = Some(value.parse::<f64>()?),
                    "Max" => max_ms = Some(value.parse::<f64>()?),
                    "Total count" => total_count = Some(value.parse::<u64>()?),
                    _ => {}
                }
            }
            continue;
        }
        let columns: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(columns.len() >= 3, "line {}: expected 3 or 4 columns", number + 1);
        let row = HgrmRow {
            value_ms: columns[0].parse().with_context(|| format!("line {}", number + 1))?,
            percentile: columns[1].parse().with_context(|| format!("line {}", number + 1))?,
            total_count: columns[2].parse().with_context(|| format!("line {}", number + 1))?,
        };
        anyhow::ensure!((0.0..=1.0).contains(&row.percentile), "line {}: percentile", number + 1);
        if let Some(previous) = rows.last() {
            let previous: &HgrmRow = previous;
            anyhow::ensure!(
                row.percentile >= previous.percentile && row.value_ms >= previous.value_ms,
                "line {}: rows must not go down",
                number + 1
            );
        }
        rows.push(row);
    }
    Ok(Hgrm {
        rows,
        mean_ms: mean_ms.context("no #[Mean = ...] footer")?,
        max_ms: max_ms.context("no #[Max = ...] footer")?,
        total_count: total_count.context("no Total count in the footer")?,
    })
}

/// The per-second throughput as CSV (`second,ops`).
pub fn throughput_csv(per_second: &[u64]) -> String {
    let mut text = String::from("second,ops\n");
    for (second, ops) in per_second.iter().enumerate() {
        let _ = writeln!(text, "{},{ops}", second + 1);
    }
    text
}

/// Parses [`throughput_csv`] output.
pub fn parse_throughput_csv(text: &str) -> anyhow::Result<Vec<u64>> {
    let mut lines = text.lines();
    anyhow::ensure!(lines.next().map(str::trim) == Some("second,ops"), "not a throughput CSV");
    lines
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (_, ops) = line.split_once(',').context("expected second,ops")?;
            Ok(ops.trim().parse()?)
        })
        .collect()
}

/// Writes every result file of `result` into `summary.out_dir` (created if missing).
pub fn write_all(summary: &Summary, result: &RunResult) -> anyhow::Result<()> {
    let dir = &summary.out_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("latency.hgrm", &hgrm_text(&result.all))?;
    for (kind, histogram) in &result.by_kind {
        write(&format!("latency-{}.hgrm", kind.name()), &hgrm_text(histogram))?;
    }
    write("throughput.csv", &throughput_csv(&result.per_second))?;
    write("result.json", &serde_json::to_string_pretty(summary)?)?;
    Ok(())
}

/// Reads `result.json` of a result folder.
pub fn read_summary(dir: &Path) -> anyhow::Result<Summary> {
    let path = dir.join("result.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_of_a_folder_names_its_file_system_and_device() {
        let dir = tempfile::tempdir().expect("temp dir");
        let described = describe_storage(dir.path()).expect("mountinfo is readable here");
        let (fs_type, source) = described.split_once(" on ").expect("FSTYPE on SOURCE");
        assert!(!fs_type.is_empty() && !source.is_empty(), "{described}");
        assert_eq!(describe_storage(&dir.path().join("absent")), None);
    }
    use crate::driver::latency_histogram;

    fn sample() -> Histogram<u64> {
        let mut histogram = latency_histogram();
        for value in 1..=10_000u64 {
            histogram.record(value * 10).expect("in range");
        }
        histogram
    }

    #[test]
    fn hgrm_has_java_columns_and_footer_and_parses_back() {
        let histogram = sample();
        let text = hgrm_text(&histogram);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert_eq!(lines.next(), Some(""));
        let first = lines.next().expect("a first row");
        // "%12.3f %2.12f %10d %14.2f"
        assert_eq!(first.len(), 12 + 1 + 14 + 1 + 10 + 1 + 14, "{first:?}");
        assert!(first.contains(" 0.000000000000 "), "{first:?}");
        assert!(text.contains("#[Mean    = "));
        assert!(text.contains(", StdDeviation   = "));
        assert!(
            text.contains("#[Max     =      100.031, Total count    =        10000]"),
            "{text}"
        );
        assert!(text.contains("#[Buckets = "));
        assert!(text.contains("SubBuckets     =         2048]"));
        let parsed = parse_hgrm(&text).expect("parses");
        assert_eq!(parsed.total_count, 10_000);
        let last = parsed.rows.last().expect("rows");
        assert_eq!(last.percentile, 1.0);
        assert_eq!(last.total_count, 10_000);
        assert!((parsed.max_ms - 100.031).abs() < 1e-9);
        let median = parsed.rows.iter().find(|row| row.percentile >= 0.5).expect("median row");
        assert!((median.value_ms - 50.0).abs() < 0.1, "{median:?}");
    }

    #[test]
    fn an_empty_histogram_still_writes_a_parsable_file() {
        let text = hgrm_text(&latency_histogram());
        let parsed = parse_hgrm(&text).expect("parses");
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.total_count, 0);
    }

    #[test]
    fn hgrm_rows_going_down_are_rejected() {
        let text = "  2.000 0.5 1 2.00\n  1.000 0.9 2 10.00\n#[Mean = 1, StdDeviation = 0]\n#[Max = 2, Total count = 2]\n";
        assert!(parse_hgrm(text).is_err());
    }

    #[test]
    fn throughput_csv_round_trips() {
        let per_second = vec![5, 0, 17];
        let text = throughput_csv(&per_second);
        assert_eq!(text, "second,ops\n1,5\n2,0\n3,17\n");
        assert_eq!(parse_throughput_csv(&text).expect("parses"), per_second);
    }

    #[test]
    fn latency_summary_percentiles_are_ordered() {
        let summary = LatencySummary::of(&sample());
        assert!(summary.min_us <= summary.p50_us);
        assert!(summary.p50_us <= summary.p90_us && summary.p90_us <= summary.p99_us);
        assert!(summary.p99_us <= summary.p999_us && summary.p999_us <= summary.p9999_us);
        assert!(summary.p9999_us <= summary.max_us);
    }
}
