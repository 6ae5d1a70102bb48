//! The `dura-bench` binary against real local clusters of the tuple space, at CI sizes:
//! the main command with `--service tuplespace` and `experiment fig9b`. Every cluster
//! is started (on ports it picks) and killed by the binary itself; its data is in a
//! temp dir removed afterwards.

use std::path::Path;
use std::process::{Command, Stdio};

use dura_bench::results::Summary;

/// Tests take turns with the other cluster tests (`bench_cli.rs` takes the same lock):
/// four replicas already fill a 2-core machine.
fn cluster_turn() -> std::fs::File {
    let path = std::env::temp_dir().join("dura-bench-cluster-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the test lock file");
    file.lock().expect("lock the test lock file");
    file
}

/// Runs the binary with `args`, asserts success, returns its standard output.
fn run_ok(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dura-bench"))
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("run dura-bench");
    assert!(
        output.status.success(),
        "dura-bench {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn fig9b_on_real_tuple_space_clusters_reports_every_log_modes_peak_and_the_ratio() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("fig9b");
    let stdout = run_ok(&[
        "experiment",
        "fig9b",
        "--seconds",
        "1",
        "--warmup",
        "0.3",
        "--clients-max",
        "2",
        "--json",
        "--out",
        path_str(&out),
    ]);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(result["experiment"], "fig9b");
    assert_eq!(result["service"], "tuplespace");
    assert_eq!(result["workload"], "dds");
    assert_eq!(result["value_bytes"], 1024);
    assert_eq!(result["replicas"], 4);
    let peaks = result["peak_ops_s"].as_object().expect("peak_ops_s");
    let mut names: Vec<&str> = peaks.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["batched", "none", "parallel", "sync"]);
    for (mode, peak) in peaks {
        assert!(peak.as_f64().expect("a number") > 0.0, "{mode}: {peak}");
    }
    let ratio = result["parallel_over_none"].as_f64().expect("parallel_over_none");
    let expected =
        peaks["parallel"].as_f64().expect("parallel") / peaks["none"].as_f64().expect("none");
    assert!(ratio > 0.0 && (ratio - expected).abs() < 1e-9, "{ratio} against {expected}");
    // The paper's figures ride along for the table and the plot.
    assert_eq!(result["paper"]["peak_ops_s_disk"]["parallel"], 8430.0);
    assert_eq!(result["paper"]["peak_ops_s_disk"]["none"], 14739.0);
    // Every point was measured on a real cluster and every out answered ok.
    let modes = result["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 4);
    for mode in modes {
        let points = mode["points"].as_array().expect("points");
        assert!(!points.is_empty() && points.len() <= 2, "{mode}");
        for point in points {
            assert!(point["ops_per_s"].as_f64().expect("ops") > 0.0, "{point}");
            assert!(point.get("errors").is_none(), "{point}");
        }
        assert_eq!(mode["replica_rss"].as_array().expect("rss").len(), 4, "{mode}");
    }
    assert!(out.join("fig9b.json").is_file());
    let svg = std::fs::read_to_string(out.join("fig9b.svg")).expect("svg");
    assert!(svg.contains("paper, disk"), "the paper's peaks are drawn");
    let png = std::fs::read(out.join("fig9b.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn each_tuple_space_workload_runs_on_a_real_cluster_without_error() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    for (workload, kinds) in [("queue", vec!["in", "out"]), ("lock", vec!["cas", "inp"])] {
        let out = dir.path().join(workload);
        let stdout = run_ok(&[
            "--service",
            "tuplespace",
            "--workload",
            workload,
            "--records",
            "16",
            "--seconds",
            "1.5",
            "--warmup",
            "0.3",
            "--clients",
            "4",
            "--log",
            "parallel",
            "--json",
            "--out",
            path_str(&out),
        ]);
        let summary: Summary = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert_eq!(summary.service, "tuplespace");
        assert_eq!(summary.workload, workload);
        assert_eq!(summary.target, "cluster");
        assert!(summary.ops > 0, "{workload}: {summary:?}");
        assert_eq!(summary.errors, 0, "{workload}: {:?}", summary.error_reasons);
        assert_eq!(summary.operations.keys().map(String::as_str).collect::<Vec<_>>(), kinds);
        assert_eq!(summary.per_second.iter().sum::<u64>(), summary.ops);
    }
    // A key-value workload is refused against the tuple space before any cluster starts.
    let refused = Command::new(env!("CARGO_BIN_EXE_dura-bench"))
        .args(["--service", "tuplespace", "--workload", "w", "--seconds", "1"])
        .output()
        .expect("run dura-bench");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--workload w runs against --service kv"), "{stderr}");
}
