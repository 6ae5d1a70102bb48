//! The `dura-bench` binary end to end, at CI sizes: the main command against a real
//! local cluster and against the in-process map, `compare`, and both experiments.
//! Every run is a few seconds; every cluster is killed by the binary itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dura_bench::results::{Summary, parse_hgrm, parse_throughput_csv};

/// Tests take turns, across processes too (nextest runs each test in its own): four
/// replicas already fill a 2-core machine, and a test running beside a cluster would
/// starve it and only measure the contention. The turn is an exclusive lock on a file,
/// released when the returned handle drops.
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

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dura-bench"))
}

/// Runs the binary with `args`, asserts success, returns its standard output.
fn run_ok(args: &[&str]) -> String {
    let output = bench().args(args).stderr(Stdio::piped()).output().expect("run dura-bench");
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

fn assert_sane(summary: &Summary) {
    assert!(summary.ops > 0, "{summary:?}");
    assert!(summary.ops_per_s > 0.0);
    assert_eq!(summary.errors, 0);
    assert!(summary.p50_us <= summary.p90_us);
    assert!(summary.p90_us <= summary.p99_us);
    assert!(summary.p99_us <= summary.p999_us);
    assert!(summary.p999_us <= summary.p9999_us);
    assert!(summary.p9999_us <= summary.max_us);
    assert_eq!(summary.per_second.iter().sum::<u64>(), summary.ops);
}

fn assert_result_files(dir: &Path, summary: &Summary) {
    let hgrm = parse_hgrm(&std::fs::read_to_string(dir.join("latency.hgrm")).expect("hgrm"))
        .expect("the .hgrm parses");
    assert_eq!(hgrm.total_count, summary.ops);
    assert_eq!(hgrm.rows.last().map(|row| row.percentile), Some(1.0));
    let csv = std::fs::read_to_string(dir.join("throughput.csv")).expect("csv");
    assert_eq!(parse_throughput_csv(&csv).expect("csv parses"), summary.per_second);
    for kind in summary.operations.keys() {
        assert!(dir.join(format!("latency-{kind}.hgrm")).is_file(), "{kind}");
    }
}

fn small_run<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--seconds",
        "2",
        "--warmup",
        "0.5",
        "--records",
        "200",
        "--value-bytes",
        "512",
        "--clients",
        "4",
        "--json",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn main_command_on_a_real_cluster_reports_sane_figures_and_replica_memory() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let stdout = run_ok(&small_run(path_str(&out), &["--log", "parallel"]));
    let summary: Summary = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_sane(&summary);
    assert_eq!(summary.target, "cluster");
    assert_eq!(summary.log_mode, "parallel");
    assert_eq!(summary.mode, "bft");
    assert_eq!(summary.replicas, 4);
    assert_eq!(summary.replica_rss.len(), 4);
    for replica in &summary.replica_rss {
        assert!(replica.peak_rss_bytes.is_some_and(|bytes| bytes > 0), "{replica:?}");
    }
    // Stopped with SIGTERM, every replica reported its log: the WAL's group writes (some
    // made: the run wrote) and the wait its replies had for them.
    for id in 0..4 {
        let said = |marker: &str| {
            summary
                .replica_log
                .iter()
                .find(|line| line.starts_with(&format!("replica {id}: ")) && line.contains(marker))
        };
        let wrote = said(": wrote ").unwrap_or_else(|| panic!("{:?}", summary.replica_log));
        assert!(!wrote.contains("wrote 0 writes"), "{wrote}");
        assert!(said("waited for the log").is_some(), "{:?}", summary.replica_log);
    }
    assert_result_files(&out, &summary);
    let saved: Summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).expect("json"))
            .expect("result.json parses");
    assert_eq!(saved, summary);
}

#[test]
fn main_command_with_tls_runs_its_cluster_over_tls_and_reports_sane_figures() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let stdout = run_ok(&small_run(path_str(&out), &["--log", "parallel", "--tls"]));
    let summary: Summary = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_sane(&summary);
    assert_eq!(summary.target, "cluster (TLS)");
    assert_eq!(summary.replicas, 4);
    assert_result_files(&out, &summary);
}

#[test]
fn every_ycsb_workload_runs_against_the_generator_target() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    for workload in ["w", "a", "b", "c", "d", "e", "f"] {
        let out = dir.path().join(workload);
        let stdout = run_ok(&small_run(
            path_str(&out),
            &["--memory", "--workload", workload, "--seconds", "1", "--warmup", "0.1"],
        ));
        let summary: Summary = serde_json::from_str(stdout.trim()).expect("JSON");
        assert_sane(&summary);
        assert_eq!(summary.workload, workload);
        assert_result_files(&out, &summary);
    }
}

#[test]
fn open_loop_run_does_not_exceed_its_target_rate() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("open");
    let stdout = run_ok(&small_run(path_str(&out), &["--memory", "--target-rate", "400"]));
    let summary: Summary = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_sane(&summary);
    assert_eq!(summary.target_rate, Some(400.0));
    // The schedule sends 400 per second; a fast target completes each on time.
    assert!(summary.ops_per_s <= 420.0, "{}", summary.ops_per_s);
}

#[test]
fn compare_prints_ratios_and_writes_svg_and_png() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    run_ok(&small_run(path_str(&a), &["--memory", "--seconds", "1"]));
    run_ok(&small_run(path_str(&b), &["--memory", "--seconds", "1", "--workload", "a"]));
    let out = dir.path().join("cmp");
    let stdout = run_ok(&["compare", path_str(&a), path_str(&b), "--out", path_str(&out)]);
    // Labelled by what differs (the workload), not by the folders' names.
    assert!(stdout.contains("A = workload=w  ("), "{stdout}");
    assert!(stdout.contains("B = workload=a  ("), "{stdout}");
    let named = run_ok(&[
        "compare",
        path_str(&a),
        path_str(&b),
        "--out",
        path_str(&out),
        "--label-a",
        "before",
        "--label-b",
        "after",
    ]);
    assert!(named.contains("A = before") && named.contains("B = after"), "{named}");
    assert!(stdout.contains("ops/s"), "{stdout}");
    assert!(stdout.contains("p99.9 (ms)"), "{stdout}");
    assert!(stdout.contains("B/A"), "{stdout}");
    let svg = std::fs::read_to_string(out.join("compare.svg")).expect("svg");
    assert!(svg.starts_with("<svg"));
    let png = std::fs::read(out.join("compare.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

fn experiment(name: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "experiment",
        name,
        "--seconds",
        "1",
        "--warmup",
        "0.3",
        "--records",
        "100",
        "--value-bytes",
        "1024",
        "--json",
        "--out",
        path_str(out),
    ];
    args.extend_from_slice(extra);
    let stdout = run_ok(&args);
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

#[test]
fn table1_on_real_clusters_measures_each_log_mode() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("table1");
    let data = dir.path().join("data");
    let result =
        experiment("table1", &out, &["--clients-peak", "4", "--data-dir", path_str(&data)]);
    let modes = result["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["log_mode"].as_str().expect("name")).collect();
    assert_eq!(names, ["none", "async", "sync", "parallel"]);
    for mode in modes {
        assert!(mode["peak_ops_per_s"].as_f64().expect("peak") > 0.0, "{mode}");
        let first = &mode["points"][0];
        assert_eq!(first["clients"], 1);
        assert!(first["min_us"].as_u64().expect("min") > 0);
        assert!(first["min_us"].as_u64() <= first["p50_us"].as_u64());
        assert_eq!(mode["replica_rss"].as_array().expect("rss").len(), 4);
        // The replicas' log report when the cluster stopped: none without a log says
        // nothing; parallel says, per replica, what its WAL wrote and how long replies
        // waited for it.
        let said: Vec<&str> = mode["replica_log"]
            .as_array()
            .expect("replica_log")
            .iter()
            .map(|line| line.as_str().expect("text"))
            .collect();
        let count = |marker: &str| said.iter().filter(|line| line.contains(marker)).count();
        match mode["log_mode"].as_str() {
            Some("none") => assert!(said.is_empty(), "{said:?}"),
            Some("parallel") => {
                assert_eq!(count(": wrote "), 4, "{said:?}");
                assert_eq!(count("waited for the log"), 4, "{said:?}");
            }
            _ => {}
        }
    }
    assert!(out.join("table1.json").is_file());
}

#[test]
fn fig9_on_real_clusters_writes_the_curves_and_ratios() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("fig9");
    let result = experiment("fig9", &out, &["--clients-max", "2"]);
    let modes = result["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["log_mode"].as_str().expect("name")).collect();
    assert_eq!(names, ["none", "sync", "batched", "parallel"]);
    for mode in modes {
        let points = mode["points"].as_array().expect("points");
        assert!(!points.is_empty() && points.len() <= 2, "{mode}");
        assert!(points.iter().all(|p| p["ops_per_s"].as_f64().expect("ops") > 0.0));
    }
    assert!(result["parallel_over_sync"].as_f64().expect("ratio") > 0.0);
    assert!(out.join("fig9.svg").is_file());
    let png = std::fs::read(out.join("fig9.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn checkpoints_experiment_sees_every_modes_checkpoints_and_writes_the_timeline() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("checkpoints");
    let data = dir.path().join("data");
    let stdout = run_ok(&[
        "experiment",
        "checkpoints",
        "--records",
        "2000",
        "--value-bytes",
        "1024",
        "--seconds",
        "3",
        "--warmup",
        "0.5",
        // 500: a checkpoint in the 3 s window even at a few hundred operations a second
        // (a slow, shared machine; with 2000 it needed about 570 a second).
        "--checkpoint-period",
        "500",
        "--clients-peak",
        "32",
        "--data-dir",
        path_str(&data),
        "--json",
        "--out",
        path_str(&out),
    ]);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(result["checkpoint_period"], 500);
    let modes = result["modes"].as_array().expect("modes");
    let names: Vec<(&str, &str)> = modes
        .iter()
        .map(|m| (m["schedule"].as_str().expect("schedule"), m["write"].as_str().expect("write")))
        .collect();
    assert_eq!(
        names,
        [
            ("coordinated", "stop-the-world"),
            ("sequential", "stop-the-world"),
            ("sequential", "background")
        ]
    );
    for mode in modes {
        assert!(mode["checkpoints"].as_u64().expect("checkpoints") >= 1, "{mode}");
        let worst = mode["worst_second_over_steady"].as_f64().expect("worst second");
        assert!(worst > 0.0 && worst <= 1.0, "{mode}");
        // Present; null only when no operation overlapped a checkpoint.
        assert!(mode.get("p99_during_over_outside").is_some(), "{mode}");
        assert!(mode["p99_during_over_outside"].as_f64().is_some(), "{mode}");
        assert!(mode["peak_rss_bytes_max"].as_u64().expect("rss") > 0, "{mode}");
        assert_eq!(mode["replica_rss"].as_array().expect("rss").len(), 4);
        assert_eq!(mode["per_100ms"].as_array().expect("timeline").len(), 30);
    }
    for file in
        ["checkpoints.json", "checkpoints.txt", "checkpoints-timeline.csv", "checkpoints.svg"]
    {
        assert!(out.join(file).is_file(), "{file}");
    }
    let png = std::fs::read(out.join("checkpoints.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Each mode's cluster data went away with it.
    let left: Vec<_> = std::fs::read_dir(&data).expect("data dir").collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Process ids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn ctrl_c_ends_the_run_and_kills_every_replica() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let data: PathBuf = dir.path().join("data");
    let out = dir.path().join("out");
    let mut child = bench()
        .args(["--seconds", "600", "--records", "50", "--value-bytes", "64", "--clients", "2"])
        .args(["--data-dir", path_str(&data), "--out", path_str(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dura-bench");
    // The replicas' command lines name the config inside the data folder.
    let needle = path_str(&data.join("cluster.toml")).to_string();
    // Wait (bounded) until the replicas run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_mentioning(&needle).len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(processes_mentioning(&needle).len(), 4, "the 4 replicas started");
    std::thread::sleep(Duration::from_millis(1500));
    let interrupted =
        Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("send SIGINT");
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.is_some(), "dura-bench did not stop on Ctrl-C");
    assert!(processes_mentioning(&needle).is_empty(), "replicas outlived the benchmark");
    // The interrupted run still wrote its results.
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).expect("json"))
            .expect("result.json parses");
    assert!(summary.interrupted);
}

#[test]
fn connect_loads_a_cluster_started_separately() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cluster");
    let mut cluster = bench()
        .args(["cluster", "--data-dir", path_str(&data), "--log", "batched"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dura-bench cluster");
    // The first line says the cluster answers (start-up is bounded inside, 60 s).
    let mut first_line = String::new();
    let stdout = cluster.stdout.take().expect("piped stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first_line)
        .expect("read the cluster's first line");
    assert!(first_line.starts_with("cluster ready"), "{first_line:?}");
    let config = data.join("cluster.toml");
    let out = dir.path().join("out");
    let run = bench()
        .args(small_run(path_str(&out), &["--connect", path_str(&config), "--seconds", "1"]))
        .stderr(Stdio::piped())
        .output()
        .expect("run against the cluster");
    let _ = Command::new("kill").args(["-INT", &cluster.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.try_wait().expect("poll").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = cluster.kill();
    let _ = cluster.wait();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary: Summary =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).trim()).expect("JSON");
    assert_sane(&summary);
    assert_eq!(summary.target, "connect");
    assert_eq!(summary.log_mode, "batched");
    assert_eq!(summary.replicas, 4);
    assert!(summary.replica_rss.is_empty());
    assert!(processes_mentioning(path_str(&config)).is_empty(), "replicas outlived the cluster");
}
