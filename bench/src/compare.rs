//! `dura-bench compare A B`: two result folders side by side (for example the same run
//! on two storage devices), as a table with ratios and as a plot of both latency
//! distributions and both throughput timelines.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::plot::{Chart, Series, XAxis};
use crate::results::{Summary, parse_hgrm, parse_throughput_csv, read_summary};

/// One result folder, read back.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Label: the folder's full path when loaded; [`run`] relabels by what differs.
    pub label: String,
    /// `result.json`.
    pub summary: Summary,
    /// `latency.hgrm` rows as (percentile, ms).
    pub latency: Vec<(f64, f64)>,
    /// `throughput.csv`.
    pub per_second: Vec<u64>,
}

/// Reads the result files of `dir`.
pub fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let summary = read_summary(dir)?;
    let hgrm_path = dir.join("latency.hgrm");
    let hgrm_text = std::fs::read_to_string(&hgrm_path)
        .with_context(|| format!("read {}", hgrm_path.display()))?;
    let hgrm = parse_hgrm(&hgrm_text).with_context(|| format!("parse {}", hgrm_path.display()))?;
    let csv_path = dir.join("throughput.csv");
    let csv_text = std::fs::read_to_string(&csv_path)
        .with_context(|| format!("read {}", csv_path.display()))?;
    let per_second =
        parse_throughput_csv(&csv_text).with_context(|| format!("parse {}", csv_path.display()))?;
    let label = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()).display().to_string();
    Ok(Loaded {
        label,
        summary,
        latency: hgrm.rows.iter().map(|row| (row.percentile, row.value_ms)).collect(),
        per_second,
    })
}

/// The side-by-side table: each figure of A and B, and B / A.
pub fn table(a: &Loaded, b: &Loaded) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "A = {}  ({})", a.label, a.summary.out_dir.display());
    let _ = writeln!(text, "B = {}  ({})", b.label, b.summary.out_dir.display());
    let _ = writeln!(text, "{:<16} {:>12} {:>12} {:>9}", "", "A", "B", "B/A");
    let mut row = |name: &str, x: f64, y: f64, digits: usize| {
        let ratio = if x > 0.0 { format!("{:.2}", y / x) } else { "-".to_string() };
        let _ = writeln!(text, "{name:<16} {x:>12.digits$} {y:>12.digits$} {ratio:>9}");
    };
    let (sa, sb) = (&a.summary, &b.summary);
    row("ops/s", sa.ops_per_s, sb.ops_per_s, 0);
    let ms = |us: u64| us as f64 / 1000.0;
    row("mean (ms)", sa.mean_us / 1000.0, sb.mean_us / 1000.0, 3);
    row("p50 (ms)", ms(sa.p50_us), ms(sb.p50_us), 3);
    row("p90 (ms)", ms(sa.p90_us), ms(sb.p90_us), 3);
    row("p99 (ms)", ms(sa.p99_us), ms(sb.p99_us), 3);
    row("p99.9 (ms)", ms(sa.p999_us), ms(sb.p999_us), 3);
    row("p99.99 (ms)", ms(sa.p9999_us), ms(sb.p9999_us), 3);
    row("max (ms)", ms(sa.max_us), ms(sb.max_us), 3);
    let _ = writeln!(
        text,
        "{:<16} {:>12} {:>12}",
        "log mode",
        format!("{}/{}", sa.mode, sa.log_mode),
        format!("{}/{}", sb.mode, sb.log_mode)
    );
    text
}

/// The two charts: latency by percentile, throughput by second.
pub fn charts(a: &Loaded, b: &Loaded) -> Vec<Chart> {
    let timeline = |loaded: &Loaded| Series {
        name: loaded.label.clone(),
        points: loaded
            .per_second
            .iter()
            .enumerate()
            .map(|(second, ops)| ((second + 1) as f64, *ops as f64))
            .collect(),
    };
    vec![
        Chart {
            title: "Latency by percentile".into(),
            x_label: "percentile".into(),
            y_label: "latency (ms)".into(),
            x_axis: XAxis::Percentile,
            markers: false,
            lanes: Vec::new(),
            series: [a, b]
                .iter()
                .map(|loaded| Series { name: loaded.label.clone(), points: loaded.latency.clone() })
                .collect(),
        },
        Chart {
            title: "Throughput".into(),
            x_label: "time (s)".into(),
            y_label: "ops/s".into(),
            x_axis: XAxis::Linear,
            markers: true,
            lanes: Vec::new(),
            series: vec![timeline(a), timeline(b)],
        },
    ]
}

/// Labels for two runs: what differs between them (storage, log mode, mode, service,
/// workload, clients, replicas, value size, target), e.g. `log=parallel` against `log=none`, or
/// `storage=ext4 on /dev/nvme0n1p2` against `storage=xfs on /dev/sdb1`. When nothing in
/// the summaries differs, the shortest ends of the two folders' paths that tell them
/// apart (`ssd/res` against `hdd/res`, not `res` and `res`).
pub fn labels_by_difference(a: &Loaded, b: &Loaded) -> (String, String) {
    let fields = |s: &Summary| -> Vec<(&'static str, String)> {
        vec![
            ("storage", s.storage.clone().unwrap_or_else(|| "unknown".into())),
            ("log", s.log_mode.clone()),
            ("mode", s.mode.clone()),
            ("service", s.service.clone()),
            ("workload", s.workload.clone()),
            ("distribution", s.distribution.clone()),
            ("clients", s.clients.to_string()),
            ("replicas", s.replicas.to_string()),
            ("value", format!("{} B", s.value_bytes)),
            ("records", s.records.to_string()),
            (
                "rate",
                s.target_rate.map_or_else(|| "closed loop".into(), |rate| format!("{rate} ops/s")),
            ),
            ("target", s.target.clone()),
        ]
    };
    let (fa, fb) = (fields(&a.summary), fields(&b.summary));
    let differs = |name: &str| fa.iter().zip(&fb).any(|(x, y)| x.0 == name && x.1 != y.1);
    // Each workload has its own default distribution, and runs against one service:
    // named only beside the same workload.
    let implied = |name: &str| (name == "distribution" || name == "service") && differs("workload");
    let differing: Vec<usize> =
        (0..fa.len()).filter(|&i| fa[i].1 != fb[i].1 && !implied(fa[i].0)).collect();
    if differing.is_empty() {
        return distinct_path_ends(&a.label, &b.label);
    }
    let label = |f: &[(&'static str, String)]| {
        differing.iter().map(|&i| format!("{}={}", f[i].0, f[i].1)).collect::<Vec<_>>().join(", ")
    };
    (label(&fa), label(&fb))
}

/// The shortest trailing parts of paths `a` and `b` that differ (`x/ssd/res` and
/// `x/hdd/res` give `ssd/res` and `hdd/res`); equal paths get ` (B)` on the second.
fn distinct_path_ends(a: &str, b: &str) -> (String, String) {
    if a == b {
        return (a.to_owned(), format!("{b} (B)"));
    }
    let parts = |path: &str| -> Vec<String> {
        Path::new(path)
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .filter(|part| part != "/")
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    let end =
        |parts: &[String], count: usize| parts[parts.len() - count.min(parts.len())..].join("/");
    for count in 1..=pa.len().max(pb.len()) {
        let (la, lb) = (end(&pa, count), end(&pb, count));
        if la != lb {
            return (la, lb);
        }
    }
    (a.to_owned(), b.to_owned())
}

/// Compares folders `a` and `b`, writes `compare.svg` and `compare.png` into `out`,
/// and returns the table and the paths written. Runs are labelled `labels` when given,
/// else by what differs between them ([`labels_by_difference`]).
pub fn run(
    a: &Path,
    b: &Path,
    out: &Path,
    labels: (Option<String>, Option<String>),
) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let mut loaded_a = load(a).with_context(|| format!("result folder {}", a.display()))?;
    let mut loaded_b = load(b).with_context(|| format!("result folder {}", b.display()))?;
    let (by_difference_a, by_difference_b) = labels_by_difference(&loaded_a, &loaded_b);
    loaded_a.label = labels.0.unwrap_or(by_difference_a);
    loaded_b.label = labels.1.unwrap_or(by_difference_b);
    anyhow::ensure!(
        loaded_a.label != loaded_b.label,
        "both runs are labelled {:?}: give --label-a and --label-b",
        loaded_a.label
    );
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    crate::plot::write_svg_and_png(out, "compare", &charts(&loaded_a, &loaded_b))?;
    Ok((table(&loaded_a, &loaded_b), vec![out.join("compare.svg"), out.join("compare.png")]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of BFT, parallel log, workload w on ext4, loaded from folder `dir`.
    fn run_in(dir: &str) -> Loaded {
        let summary = serde_json::json!({
            "target": "cluster", "workload": "w", "distribution": "uniform", "mode": "bft",
            "log_mode": "parallel", "replicas": 4, "clients": 512, "target_rate": null,
            "seconds": 20.0, "warmup_s": 5.0, "records": 250000, "value_bytes": 4096,
            "ops": 1000, "errors": 0, "ops_per_s": 50.0, "mean_us": 1000.0, "p50_us": 900,
            "p90_us": 1500, "p99_us": 2000, "p999_us": 3000, "p9999_us": 4000, "max_us": 5000,
            "operations": {}, "per_second": [50], "replica_rss": [], "interrupted": false,
            "out_dir": dir, "storage": "ext4 on /dev/nvme0n1p2",
        });
        Loaded {
            label: dir.to_owned(),
            summary: serde_json::from_value(summary).expect("summary"),
            latency: Vec::new(),
            per_second: Vec::new(),
        }
    }

    fn labels(a: &Loaded, b: &Loaded) -> (String, String) {
        labels_by_difference(a, b)
    }

    #[test]
    fn runs_in_folders_of_one_name_are_labelled_by_their_storage() {
        let a = run_in("/home/me/res");
        let mut b = run_in("/mnt/hdd/res");
        b.summary.storage = Some("xfs on /dev/sdb1".into());
        assert_eq!(
            labels(&a, &b),
            ("storage=ext4 on /dev/nvme0n1p2".into(), "storage=xfs on /dev/sdb1".into())
        );
        // A run written before storage was recorded.
        b.summary.storage = None;
        assert_eq!(labels(&a, &b).1, "storage=unknown");
    }

    #[test]
    fn every_differing_setting_is_named_and_only_those() {
        let a = run_in("/r/res");
        let mut b = run_in("/s/res");
        b.summary.log_mode = "none".into();
        assert_eq!(labels(&a, &b), ("log=parallel".into(), "log=none".into()));
        b.summary.mode = "crash".into();
        b.summary.replicas = 3;
        b.summary.clients = 16;
        assert_eq!(
            labels(&a, &b),
            (
                "log=parallel, mode=bft, clients=512, replicas=4".into(),
                "log=none, mode=crash, clients=16, replicas=3".into()
            )
        );
        let mut c = run_in("/s/res");
        c.summary.distribution = "zipfian".into();
        assert_eq!(labels(&a, &c), ("distribution=uniform".into(), "distribution=zipfian".into()));
        c.summary.workload = "a".into();
        assert_eq!(labels(&a, &c), ("workload=w".into(), "workload=a".into()), "implied");
        let mut c = run_in("/s/res");
        c.summary.target_rate = Some(400.0);
        c.summary.value_bytes = 1024;
        assert_eq!(
            labels(&a, &c),
            ("value=4096 B, rate=closed loop".into(), "value=1024 B, rate=400 ops/s".into())
        );
    }

    #[test]
    fn runs_that_differ_in_nothing_recorded_are_told_apart_by_their_paths() {
        let a = run_in("/data/ssd/res");
        let b = run_in("/data/hdd/res");
        assert_eq!(labels(&a, &b), ("ssd/res".into(), "hdd/res".into()));
        let b = run_in("/data/res-2");
        assert_eq!(labels(&a, &b), ("res".into(), "res-2".into()));
        let b = run_in("/res");
        assert_eq!(labels(&a, &b), ("ssd/res".into(), "res".into()));
        let b = run_in("/data/ssd/res");
        assert_eq!(labels(&a, &b), ("/data/ssd/res".into(), "/data/ssd/res (B)".into()));
    }
}
