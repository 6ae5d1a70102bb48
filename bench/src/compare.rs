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
    /// Short label (the folder's name when loaded; [`run`] relabels by what differs).
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
    let label = dir
        .canonicalize()
        .ok()
        .and_then(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
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

/// Labels for two runs: what differs between them (storage, log mode, mode, workload,
/// clients, replicas, value size, target), e.g. `log=parallel` against `log=none`; the
/// folder names when nothing in the summaries differs (`(B)` added if those are equal).
pub fn labels_by_difference(a: &Loaded, b: &Loaded) -> (String, String) {
    let fields = |s: &Summary| -> Vec<(&'static str, String)> {
        vec![
            ("storage", s.storage.clone().unwrap_or_else(|| "unknown storage".into())),
            ("log", s.log_mode.clone()),
            ("mode", s.mode.clone()),
            ("workload", s.workload.clone()),
            ("clients", s.clients.to_string()),
            ("replicas", s.replicas.to_string()),
            ("value", format!("{} B", s.value_bytes)),
            ("target", s.target.clone()),
        ]
    };
    let (fa, fb) = (fields(&a.summary), fields(&b.summary));
    let differing: Vec<usize> = (0..fa.len()).filter(|&i| fa[i].1 != fb[i].1).collect();
    if differing.is_empty() {
        let label_b = if b.label == a.label { format!("{} (B)", b.label) } else { b.label.clone() };
        return (a.label.clone(), label_b);
    }
    let label = |f: &[(&'static str, String)]| {
        differing.iter().map(|&i| format!("{}={}", f[i].0, f[i].1)).collect::<Vec<_>>().join(", ")
    };
    (label(&fa), label(&fb))
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
