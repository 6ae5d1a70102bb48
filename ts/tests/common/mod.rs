//! A real local cluster of `dura-ts serve` processes on free loopback ports, and the
//! `dura-ts` command line. Every process started is killed when the test ends, even on
//! panic.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dura_engine::runtime::{ClientOptions, ClusterConfig, LogMode, Mode};
use dura_ts::TsClient;
use dura_tuplespace::parse_tuple;

/// Bounds every wait of these tests (a cluster start, a client call).
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Replica processes of one cluster, killed on drop.
pub struct Cluster {
    pub config: ClusterConfig,
    pub config_path: PathBuf,
    pub dir: PathBuf,
    children: Vec<Option<Child>>,
    started: Vec<bool>,
    starts: u32,
}

impl Cluster {
    /// A config for `mode` (4 replicas BFT, 3 crash) under `dir`; starts nothing.
    pub fn configure(mode: Mode, dir: &Path) -> Cluster {
        Cluster::configure_with(mode, dir, |_| {})
    }

    /// [`Cluster::configure`] with `adjust` applied to the config before it is written.
    pub fn configure_with(
        mode: Mode,
        dir: &Path,
        adjust: impl FnOnce(&mut ClusterConfig),
    ) -> Cluster {
        let n = mode.replicas_min(1) as u32;
        let mut config = ClusterConfig::local(n, mode, LogMode::Parallel, &dir.join("data"))
            .expect("local config");
        config.pin_cores = false;
        config.request_timeout_ms = 400;
        adjust(&mut config);
        let config_path = dir.join("cluster.toml");
        config.save(&config_path).expect("write config");
        Cluster {
            config,
            config_path,
            dir: dir.to_path_buf(),
            children: (0..n).map(|_| None).collect(),
            started: vec![false; n as usize],
            starts: 0,
        }
    }

    /// Starts every replica and waits until the cluster orders a request.
    pub fn start(mode: Mode, dir: &Path) -> Cluster {
        let mut cluster = Cluster::configure(mode, dir);
        cluster.start_all();
        cluster.wait_ready();
        cluster
    }

    pub fn start_replica(&mut self, id: u32) {
        assert!(self.children[id as usize].is_none(), "replica {id} already runs");
        self.starts += 1;
        let log = File::create(self.dir.join(format!("replica{id}-{}.log", self.starts)))
            .expect("log file");
        let first = !std::mem::replace(&mut self.started[id as usize], true);
        let child = Command::new(env!("CARGO_BIN_EXE_dura-ts"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .args(["--id", &id.to_string()])
            .args(first.then_some("--new-cluster"))
            .env("RUST_LOG", "warn,dura_engine::runtime::replica=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dura-ts serve");
        self.children[id as usize] = Some(child);
    }

    pub fn start_all(&mut self) {
        for id in 0..self.config.n() {
            self.start_replica(id);
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children[id as usize].take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    pub fn kill_all(&mut self) {
        for id in 0..self.config.n() {
            self.kill(id);
        }
    }

    /// Waits until the cluster orders a request (a count), within [`WAIT_MAX`].
    pub fn wait_ready(&self) {
        let client = self.client();
        let deadline = Instant::now() + WAIT_MAX;
        let probe = dura_tuplespace::parse_template("('ready?')").expect("template");
        while client.count(&probe).is_err() {
            assert!(
                Instant::now() < deadline,
                "cluster did not start; logs in {}",
                self.dir.display()
            );
        }
    }

    /// A client whose requests give up after [`WAIT_MAX`].
    pub fn client(&self) -> TsClient {
        let options = ClientOptions { request_timeout: WAIT_MAX, ..ClientOptions::new() };
        TsClient::connect_with(&self.config, options).expect("client")
    }

    pub fn config_arg(&self) -> &str {
        self.config_path.to_str().expect("utf-8 path")
    }

    /// `dura-ts COMMAND --config THIS ARGS...`.
    pub fn run(&self, command: &str, args: &[&str]) -> Output {
        let mut all = vec![command, "--config", self.config_arg()];
        all.extend_from_slice(args);
        dura_ts(&all)
    }

    /// Like [`Cluster::run`], expecting success; its stdout.
    pub fn ok(&self, command: &str, args: &[&str]) -> String {
        let output = self.run(command, args);
        assert!(
            output.status.success(),
            "dura-ts {command} {args:?}: {:?}\n{}",
            output.status,
            stderr(&output)
        );
        stdout(&output)
    }

    /// `dura-ts COMMAND --config THIS ARGS...` started, not waited for.
    pub fn spawn(&self, command: &str, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_dura-ts"))
            .args([command, "--config", self.config_arg()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dura-ts")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `dura-ts ARGS` to the end.
pub fn dura_ts(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dura-ts"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run dura-ts")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Kills a child on drop (a client process a failed test leaves behind).
pub struct Reaped(pub Option<Child>);

impl Reaped {
    /// Waits for the child (at most [`WAIT_MAX`], then kills it and fails).
    pub fn finish(mut self) -> Output {
        let mut child = self.0.take().expect("child");
        let deadline = Instant::now() + WAIT_MAX;
        while child.try_wait().expect("poll").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("a dura-ts client did not finish within {WAIT_MAX:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn tuple(text: &str) -> dura_tuplespace::Tuple {
    parse_tuple(text).expect("tuple")
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("dura-ts-test-").tempdir().expect("temp dir")
}
