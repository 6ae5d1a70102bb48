//! `dura-bench experiment recovery` end to end at a CI size: both protocols recover a
//! wiped replica under load and every replica ends with the same durable state. The
//! binary stops its own clusters; the run is bounded in time and killed past it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Takes turns with the other cluster tests (the same lock file as `bench_cli.rs`):
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

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The whole run (two clusters: start, load, 15.5 s of load, validation) at most.
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn recovery_experiment_recovers_and_validates_a_wiped_replica_with_both_protocols() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("recovery");
    let data = dir.path().join("data");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dura-bench"))
        .args(["experiment", "recovery", "--records", "2000", "--value-bytes", "1024"])
        // The restart at 0.5 + 5 s leaves 10 s to recover (3.9 s measured on an idle
        // debug build; more than 5 s with other work on the 2 cores).
        .args(["--seconds", "15", "--warmup", "0.5", "--clients-peak", "32"])
        .args(["--data-dir", path_str(&data), "--out", path_str(&out), "--json"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start dura-bench");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SIGKILL of the bench closes its replicas' standard input: they exit too.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status = status
        .unwrap_or_else(|| panic!("the experiment ran past {} s:\n{stderr}", RUN_LIMIT.as_secs()));
    assert!(status.success(), "dura-bench failed: {status}\n{stderr}");
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(result["experiment"], "recovery");
    let runs = result["runs"].as_array().expect("runs");
    let protocols: Vec<&str> =
        runs.iter().map(|run| run["protocol"].as_str().expect("protocol")).collect();
    assert_eq!(protocols, ["pbft-like", "cst"]);
    for run in runs {
        let recovery = run["recovery_s"].as_f64().unwrap_or_else(|| {
            panic!("not recovered: {}", run["failure"]);
        });
        assert!(recovery.is_finite() && recovery > 0.0, "{run}");
        assert!(run.get("during_over_steady").is_some(), "{run}");
        assert!(run["bytes_transferred"].as_u64().expect("bytes") > 0, "{run}");
        assert_eq!(run["validated"], true, "{run}");
        assert_eq!(run["restarted_replica"], 3, "{run}");
    }
    for file in ["recovery.json", "recovery.txt", "recovery-timeline.csv", "recovery.svg"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let png = std::fs::read(out.join("recovery.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Each protocol's cluster data went away with it.
    let left: Vec<_> = std::fs::read_dir(&data).expect("data dir").collect();
    assert!(left.is_empty(), "{left:?}");
}
