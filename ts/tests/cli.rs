//! `dura-ts init` and `dura-ts local`, the commands it shares with `dura-kv`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{WAIT_MAX, dura_ts, stderr, stdout};
use dura_engine::runtime::ClusterConfig;

#[test]
fn init_prints_a_config_that_loads_and_names_dura_ts_in_its_hint() {
    let output = dura_ts(&["init", "--replicas", "3", "--mode", "crash", "--base-port", "7400"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let config = ClusterConfig::from_toml(&stdout(&output)).expect("a config");
    assert_eq!((config.n(), config.f), (3, 1));
    let dir = common::temp_dir();
    let path = dir.path().join("c.toml");
    let output = dura_ts(&["init", "--replicas", "4", "--out", path.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("dura-ts serve --config"), "{}", stderr(&output));
    assert_eq!(ClusterConfig::load(&path).expect("loads").n(), 4);
    let output = dura_ts(&["init", "--replicas", "3", "--mode", "bft"]);
    assert_eq!(output.status.code(), Some(1), "3 replicas do not fit bft");
    assert!(stderr(&output).contains("3 replicas do not fit mode bft"), "{}", stderr(&output));
}

/// SIGTERM on drop: `local` stops its replicas and exits.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn local_runs_a_cluster_that_serves_the_tuple_space() {
    let dir = common::temp_dir();
    let local = Stop(
        Command::new(env!("CARGO_BIN_EXE_dura-ts"))
            .args(["local", "--mode", "crash", "--dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dura-ts local"),
    );
    let config_path = dir.path().join("cluster.toml");
    let config = config_path.to_str().expect("utf-8").to_owned();
    let deadline = Instant::now() + WAIT_MAX;
    while ClusterConfig::load(&config_path).is_err() {
        assert!(Instant::now() < deadline, "local wrote no config");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The replicas may still be starting: unreachable (4) until they listen.
    let out = loop {
        let out = dura_ts(&["out", "--config", &config, "('hello', 1)"]);
        if out.status.code() != Some(4) || Instant::now() > deadline {
            break out;
        }
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let taken = dura_ts(&["inp", "--config", &config, "('hello', *int)"]);
    assert_eq!(stdout(&taken), "('hello', 1)\n", "{}", stderr(&taken));
    drop(local);
}
