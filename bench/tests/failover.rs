//! `dura-bench experiment failover` end to end at a CI size: a crash-mode cluster of 3
//! real replica processes under load loses its leader to SIGSTOP, then the next leader
//! the same way, and (on a fresh cluster) to SIGKILL twice; after each fault a new
//! leader is elected and writes resume, the failed replica comes back and catches up.
//! The gaps are printed, not asserted: speed is measured by the benchmark, not by a
//! timed test on a shared machine. The binary stops its own clusters; the run is
//! bounded in time and killed past it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Takes turns with the other cluster tests (the same lock file as `bench_cli.rs`).
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

/// The whole run (two clusters: start, load, 2.5 s steady, two faults each held until
/// writes resume plus 2 s, catch-up) at most.
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn failover_experiment_replaces_a_paused_and_a_killed_leader_twice() {
    let _turn = cluster_turn();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("failover");
    let data = dir.path().join("data");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dura-bench"))
        .args(["experiment", "failover", "--mode", "crash", "--replicas", "3"])
        .args(["--records", "500", "--value-bytes", "1024", "--clients", "16"])
        .args(["--seconds", "2", "--warmup", "0.5", "--no-baseline", "--quiet-seconds", "0"])
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
            // SIGKILL of the bench closes its replicas' standard input: they exit too
            // (one paused at that moment only once something resumes or kills it).
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
    assert_eq!(result["experiment"], "failover");
    let runs = result["runs"].as_array().expect("runs");
    let kinds: Vec<&str> = runs.iter().map(|run| run["fault"].as_str().expect("fault")).collect();
    assert_eq!(kinds, ["pause", "kill"]);
    for run in runs {
        assert_eq!(run["setting"], "default", "{run}");
        assert!(run["failure"].is_null(), "{}\n{stderr}", run["failure"]);
        assert_eq!(run["errors"], 0, "{run}");
        assert_eq!(run["leader_changes_before_faults"], 0, "{run}");
        let faults = run["faults"].as_array().expect("faults");
        assert_eq!(faults.len(), 2, "the leader, then the next leader: {run}");
        let mut failed = Vec::new();
        for fault in faults {
            let gap = fault["gap_s"].as_f64().unwrap_or_else(|| panic!("no resume: {fault}"));
            let seconds =
                |name: &str| fault[name].as_f64().map_or("-".into(), |s| format!("{s:.2}"));
            println!(
                "{} r{}: gap {gap:.2} s, no write {} s, new regency after {} s",
                run["fault"],
                fault["replica"],
                seconds("no_write_s"),
                seconds("new_regency_after_s")
            );
            assert!(gap.is_finite() && gap > 0.0, "{fault}");
            assert_eq!(fault["resumed_while_failed"], true, "{fault}");
            let before = fault["regency_before"].as_u64().expect("regency before");
            assert!(fault["new_regency"].as_u64().expect("new regency") > before, "{fault}");
            let new_leader = fault["new_leader"].as_u64().expect("a new leader");
            assert_ne!(new_leader, fault["replica"].as_u64().expect("replica"), "{fault}");
            assert!(fault["caught_up_at_s"].as_f64().is_some(), "{fault}");
            failed.push(fault["replica"].as_u64().expect("replica"));
        }
        assert_ne!(failed[0], failed[1], "the next leader is another replica: {run}");
        assert!(run["leader_changes"].as_u64().expect("leader changes") >= 2, "{run}");
    }
    for file in ["failover.json", "failover.txt", "failover-timeline.csv", "failover.svg"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let png = std::fs::read(out.join("failover.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Each run's cluster data went away with it.
    let left: Vec<_> = std::fs::read_dir(&data).expect("data dir").collect();
    assert!(left.is_empty(), "{left:?}");
}
