//! Real `dura-kv` processes on loopback, killed with SIGKILL under a concurrent write
//! load: every acknowledged put must survive, and no value that was never written may
//! appear.
//!
//! The whole-cluster loops checkpoint every few hundred requests, so kills strike
//! checkpoints being written and restarts load them; each restart must replay at most
//! about P requests of log, however long the run.
//!
//! The `_with_tls` variants run the same with TLS on every connection (a fresh CA and
//! certificates from `dura_kvstore::pki`).
//!
//! `DURA_CRASH_CYCLES=N` runs N full-cluster kill/restart cycles per mode instead of the
//! CI default (a nightly loop sets it high).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dura_engine::runtime::ClientOptions;
use dura_kvstore::{ClusterConfig, KvClient, LogMode, Mode};

/// Writer threads per load phase.
const WRITERS: usize = 6;
/// Upper bound on one test's wall time; cycles stop early past it.
const TEST_TIME_MAX: Duration = Duration::from_secs(100);
/// P of the test clusters: small, so that every cycle spans checkpoints.
const CHECKPOINT_PERIOD: u64 = 240;

/// The replica processes of one cluster; kills every one on drop, even on panic.
struct Cluster {
    config: ClusterConfig,
    config_path: PathBuf,
    dir: PathBuf,
    children: Vec<Option<Child>>,
    starts: u32,
    /// Replicas started at least once: only a replica's first start begins the cluster
    /// (`--new-cluster`); a restart must find its state or a peer's.
    started: Vec<bool>,
    /// Each replica's newest log file (printed when a test fails: CI keeps no files).
    logs: Vec<Option<PathBuf>>,
}

impl Cluster {
    fn new(mode: Mode, dir: &Path) -> Cluster {
        Cluster::new_with(mode, dir, |_| {})
    }

    fn new_with(mode: Mode, dir: &Path, adjust: impl FnOnce(&mut ClusterConfig)) -> Cluster {
        let n = mode.replicas_min(1) as u32;
        let mut config = ClusterConfig::local(n, mode, LogMode::Parallel, &dir.join("data"))
            .expect("local config");
        config.pin_cores = false;
        config.request_timeout_ms = 400;
        config.checkpoint_period = CHECKPOINT_PERIOD;
        adjust(&mut config);
        let config_path = dir.join("cluster.toml");
        config.save(&config_path).expect("write config");
        Cluster {
            config,
            config_path,
            dir: dir.to_path_buf(),
            children: (0..n).map(|_| None).collect(),
            starts: 0,
            started: vec![false; n as usize],
            logs: vec![None; n as usize],
        }
    }

    fn start(&mut self, id: u32) {
        assert!(self.children[id as usize].is_none(), "replica {id} already runs");
        self.starts += 1;
        let log_path = self.dir.join(format!("replica{id}-{}.log", self.starts));
        let log = File::create(&log_path).expect("log file");
        self.logs[id as usize] = Some(log_path);
        let first = !std::mem::replace(&mut self.started[id as usize], true);
        let child = Command::new(env!("CARGO_BIN_EXE_dura-kv"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .args(["--id", &id.to_string()])
            .args(first.then_some("--new-cluster"))
            .env(
                "RUST_LOG",
                std::env::var("DURA_REPLICA_LOG")
                    .unwrap_or_else(|_| "warn,dura_engine::runtime::replica=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dura-kv serve");
        self.children[id as usize] = Some(child);
    }

    fn start_all(&mut self) {
        for id in 0..self.config.n() {
            self.start(id);
        }
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children[id as usize].take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    fn kill_all(&mut self) {
        for id in 0..self.config.n() {
            self.kill(id);
        }
    }

    fn assert_running(&mut self) {
        for (id, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child
                && let Some(status) = child.try_wait().expect("poll")
            {
                panic!(
                    "replica {id} exited on its own with {status}; logs in {}",
                    self.dir.display()
                );
            }
        }
    }

    /// Requests each start of each replica replayed from its log after its checkpoint,
    /// read from the replicas' own log lines.
    fn replayed_requests(&self) -> Vec<u64> {
        let mut replayed = Vec::new();
        for entry in std::fs::read_dir(&self.dir).expect("cluster dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("replica log");
            for line in text.lines().filter(|l| l.contains("replayed agreements")) {
                let count = line
                    .split(" (")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("a replay line with a count: {line}"));
                replayed.push(count);
            }
        }
        replayed
    }

    /// Checkpoint files each replica holds now.
    fn checkpoint_files(&self) -> Vec<usize> {
        self.config
            .replicas
            .iter()
            .map(|replica| {
                std::fs::read_dir(replica.data_dir.join("checkpoints"))
                    .map(|entries| {
                        entries
                            .filter(|e| {
                                e.as_ref().is_ok_and(|e| {
                                    e.file_name().to_string_lossy().ends_with(".dck")
                                })
                            })
                            .count()
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    fn client(&self) -> KvClient {
        let options =
            ClientOptions { request_timeout: Duration::from_secs(20), ..ClientOptions::new() };
        KvClient::connect_with(&self.config, options).expect("client")
    }
}

/// A BFT cluster in `dir`, every replica started (logging on), with a client and an
/// empty history for [`Load`].
fn started_bft_cluster(dir: &Path) -> (Cluster, KvClient, Arc<Mutex<History>>) {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut cluster = Cluster::new(Mode::Bft, dir);
    cluster.start_all();
    let client = cluster.client();
    (cluster, client, Arc::new(Mutex::new(History::default())))
}

/// Lines of each replica's newest log printed when a test fails.
const FAILURE_LOG_LINES: usize = 60;

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            for (id, path) in self.logs.iter().enumerate() {
                let Some(path) = path else { continue };
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(FAILURE_LOG_LINES);
                eprintln!("--- replica {id}: last lines of {}", path.display());
                for line in &lines[from..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// What the writers did: acknowledged values, and every value ever attempted per key.
#[derive(Default)]
struct History {
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
    attempted: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn seed() -> u64 {
    let seed =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
    eprintln!("crash test seed {seed}");
    seed
}

/// `WRITERS` threads putting fresh keys tagged `tag` (and sometimes overwriting their
/// own earlier keys) until stopped; they record every attempt and acknowledgement.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(client: &KvClient, tag: &str, history: &Arc<Mutex<History>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = load(client, tag, &stop, history);
        Load { stop, writers }
    }

    /// Tells the writers to stop after their current put.
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the writers (stopped; a put to a dead cluster ends at its timeout).
    fn join(self) {
        assert!(self.stop.load(Ordering::Relaxed), "stop the writers first");
        for writer in self.writers {
            writer.join().expect("writer thread");
        }
    }

    fn finish(self) {
        self.stop();
        self.join();
    }
}

fn load(
    client: &KvClient,
    tag: &str,
    stop: &Arc<AtomicBool>,
    history: &Arc<Mutex<History>>,
) -> Vec<thread::JoinHandle<()>> {
    (0..WRITERS)
        .map(|writer| {
            let client = client.clone();
            let stop = stop.clone();
            let history = history.clone();
            let tag = tag.to_string();
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Every fourth write overwrites the writer's previous key.
                    let key_index = if i % 4 == 3 { i - 1 } else { i };
                    let key = format!("{tag}-w{writer}-k{key_index}").into_bytes();
                    let value =
                        format!("{tag}-w{writer}-v{i}-{}", "x".repeat((i % 7 * 40) as usize))
                            .into_bytes();
                    history
                        .lock()
                        .expect("lock")
                        .attempted
                        .entry(key.clone())
                        .or_default()
                        .push(value.clone());
                    match client.put(&key, &value) {
                        Ok(()) => {
                            history.lock().expect("lock").acked.insert(key, value);
                        }
                        Err(_) => break,
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

/// Every acknowledged key holds its acknowledged value or a later attempt of the same
/// writer (an overwrite that was in flight); every attempted key holds nothing or an
/// attempted value. Reads are submitted concurrently.
fn verify(client: &KvClient, history: &History, sample_every: usize) -> usize {
    let keys: Vec<&Vec<u8>> = history.attempted.keys().step_by(sample_every.max(1)).collect();
    let pending: Vec<_> = keys
        .iter()
        .map(|key| {
            let op = dura_kvstore::KvOp::Get { key }.encode().expect("small key");
            (*key, client.raw().submit(op))
        })
        .collect();
    let mut acked_checked = 0;
    for (key, pending) in pending {
        let reply = pending.wait().expect("read after restart");
        let value = match dura_kvstore::KvReply::decode(&reply).expect("reply decodes") {
            dura_kvstore::KvReply::Value(value) => value,
            other => panic!("unexpected reply {other:?}"),
        };
        let attempts = &history.attempted[key];
        if let Some(acked) = history.acked.get(key) {
            acked_checked += 1;
            let value = value.unwrap_or_else(|| {
                panic!("acknowledged key {} lost", String::from_utf8_lossy(key))
            });
            let at = attempts.iter().position(|a| *a == *acked).expect("acked was attempted");
            assert!(
                attempts[at..].contains(&value),
                "key {}: acknowledged {:?}, found {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(acked),
                String::from_utf8_lossy(&value)
            );
        } else if let Some(value) = value {
            assert!(
                attempts.contains(&value),
                "key {} holds a value never written",
                String::from_utf8_lossy(key)
            );
        }
    }
    acked_checked
}

/// A temporary directory for one cluster, kept when `DURA_KEEP_DIR` is set (to read
/// the replicas' logs after a failure).
fn temp_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("dura-crash-");
    if std::env::var_os("DURA_KEEP_DIR").is_some() {
        builder.disable_cleanup(true);
    }
    let dir = builder.tempdir().expect("temp dir");
    eprintln!("cluster directory {}", dir.path().display());
    dir
}

fn cycles(default: u32) -> u32 {
    std::env::var("DURA_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Turns TLS on in `config`, certificates in `dir/tls`.
fn with_tls(config: &mut ClusterConfig, dir: &Path) {
    dura_kvstore::pki::generate_tls(config, &dir.join("tls")).expect("certificates");
}

fn kill_whole_cluster_repeatedly(mode: Mode, cycles: u32, tls: bool) {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = temp_dir();
    let mut cluster = Cluster::new_with(mode, dir.path(), |config| {
        if tls {
            with_tls(config, dir.path());
        }
    });
    let history = Arc::new(Mutex::new(History::default()));
    let mut rng = seed();
    let started = Instant::now();
    cluster.start_all();
    let mut done = 0;
    for cycle in 0..cycles {
        if started.elapsed() > TEST_TIME_MAX {
            eprintln!("time bound reached after {done} cycles");
            break;
        }
        let client = cluster.client();
        let writers = Load::start(&client, &format!("c{cycle}"), &history);
        thread::sleep(Duration::from_millis(150 + xorshift(&mut rng) % 500));
        if cycle == 0 {
            // A kill before any replica wrote its member marker (a slow start on a shared
            // machine) would leave four empty replicas that no longer start as a new
            // cluster: every later start refuses, rightly. One acknowledged put means a
            // quorum of them are members.
            await_acks(&history, 1, "before the first kill");
        }
        cluster.assert_running();
        cluster.kill_all();
        writers.stop();
        drop(client);
        // Writers blocked on the dead cluster give up at their timeout; restart first
        // so that they may also complete (and be acknowledged) against the new one.
        cluster.start_all();
        writers.join();
        let client = cluster.client();
        let history = history.lock().expect("lock");
        let acked_this_cycle =
            history.acked.keys().filter(|k| k.starts_with(format!("c{cycle}-").as_bytes())).count();
        let checked = verify(&client, &history, 1 + history.attempted.len() / 400);
        eprintln!(
            "cycle {cycle}: {acked_this_cycle} puts acknowledged, {checked} acknowledged keys checked"
        );
        done += 1;
    }
    let history = history.lock().expect("lock");
    assert!(history.acked.len() > done, "the load made progress ({} acks)", history.acked.len());
    let client = cluster.client();
    let checked = verify(&client, &history, 1);
    assert_eq!(checked, history.acked.len(), "every acknowledged key checked at the end");
    // Checkpoints were taken, and no restart replayed much more than P requests: the
    // log since the newest checkpoint is at most P plus what a checkpoint in flight
    // (skipped points) and the requests after it add.
    let files = cluster.checkpoint_files();
    assert!(
        history.acked.len() < 4 * CHECKPOINT_PERIOD as usize || files.iter().all(|f| *f >= 1),
        "replicas checkpointed: {files:?} after {} acknowledged puts",
        history.acked.len()
    );
    let replayed = cluster.replayed_requests();
    let most = replayed.iter().copied().max().unwrap_or(0);
    eprintln!(
        "restarts replayed at most {most} requests of log ({} restarts logged)",
        replayed.len()
    );
    assert!(
        most <= 3 * CHECKPOINT_PERIOD,
        "a restart replayed {most} requests with P = {CHECKPOINT_PERIOD}: {replayed:?}"
    );
}

#[test]
fn bft_cluster_killed_whole_keeps_every_acknowledged_put() {
    kill_whole_cluster_repeatedly(Mode::Bft, cycles(12), false);
}

#[test]
fn crash_mode_cluster_killed_whole_keeps_every_acknowledged_put() {
    kill_whole_cluster_repeatedly(Mode::Crash, cycles(8), false);
}

#[test]
fn bft_cluster_with_tls_killed_whole_keeps_every_acknowledged_put() {
    kill_whole_cluster_repeatedly(Mode::Bft, cycles(8), true);
}

#[test]
fn killing_one_replica_and_then_the_leader_keeps_the_cluster_serving() {
    let dir = temp_dir();
    let (mut cluster, client, history) = started_bft_cluster(dir.path());
    let writers = Load::start(&client, "one", &history);
    await_more_acks(&history, 20, "at start");
    // A follower, then the leader of regency 0 (replica 0): each time the other three
    // keep serving, and the restarted replica replays its log and rejoins.
    for victim in [2, 0] {
        cluster.kill(victim);
        await_more_acks(&history, 20, &format!("with replica {victim} down"));
        cluster.start(victim);
        // Long enough for the restarted replica to recover and vote again.
        await_more_acks(&history, 200, &format!("after replica {victim} restarted"));
    }
    // Replica 0 must now be a working member: with replica 1 down too, no quorum
    // exists without it.
    thread::sleep(Duration::from_millis(500));
    cluster.kill(1);
    await_more_acks(&history, 20, "with replica 1 down and replica 0 rejoined");
    cluster.assert_running();
    writers.finish();
    let history = history.lock().expect("lock");
    let checked = verify(&client, &history, 1);
    assert_eq!(checked, history.acked.len());
}

/// The agreement replica `id`'s log says state transfer brought it to, once it has.
fn transferred_to(dir: &Path, id: u32) -> Option<u64> {
    for entry in std::fs::read_dir(dir).expect("cluster dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("a name").to_string_lossy().into_owned();
        if !name.starts_with(&format!("replica{id}-")) || !name.ends_with(".log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("replica log");
        if let Some(line) = text.lines().find(|l| l.contains("state transfer brought agreement")) {
            let rest = line.split("state transfer brought agreement ").nth(1).expect("a count");
            return rest.split(' ').next().and_then(|n| n.parse().ok());
        }
    }
    None
}

/// Checkpoint files (name, bytes) in replica `id`'s data dir.
fn checkpoints_of(cluster: &Cluster, id: u32) -> BTreeMap<String, Vec<u8>> {
    let dir = cluster.config.replicas[id as usize].data_dir.join("checkpoints");
    std::fs::read_dir(&dir)
        .expect("checkpoint dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "dck"))
        .map(|path| {
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read checkpoint"))
        })
        .collect()
}

#[test]
fn a_replica_whose_data_dir_is_wiped_under_load_rejoins_through_state_transfer() {
    wipe_one_replica_under_load(false);
}

/// The same with TLS: the checkpoint and log pieces stream through rustls.
#[test]
fn with_tls_a_wiped_replica_rejoins_through_state_transfer() {
    wipe_one_replica_under_load(true);
}

fn wipe_one_replica_under_load(tls: bool) {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = temp_dir();
    // Coordinated checkpoints: every replica writes one at the same agreements, and
    // the files are canonical, so the rejoined replica's own checkpoints after the
    // transfer can be compared byte for byte with its peers'.
    let mut cluster = Cluster::new_with(Mode::Bft, dir.path(), |config| {
        config.checkpoint_schedule = dura_engine::runtime::CheckpointScheduleKind::Coordinated;
        if tls {
            with_tls(config, dir.path());
        }
    });
    let history = Arc::new(Mutex::new(History::default()));
    cluster.start_all();
    let client = cluster.client();
    let writers = Load::start(&client, "wipe", &history);
    await_more_acks(&history, 2 * CHECKPOINT_PERIOD as usize, "at start");
    // Replica 2 loses its disk while the load goes on.
    cluster.kill(2);
    let wiped = cluster.config.replicas[2].data_dir.clone();
    std::fs::remove_dir_all(&wiped).expect("wipe");
    await_more_acks(&history, 100, "with replica 2 down");
    cluster.start(2);
    let transferred = await_transfer(&mut cluster, 2, Duration::from_secs(60));
    assert!(transferred > 0, "it took a state, it did not start empty");
    // The cluster served throughout, and goes on long enough for two checkpoints of the
    // rejoined replica's own.
    await_more_acks(&history, 3 * CHECKPOINT_PERIOD as usize, "after replica 2 restarted");
    // Replica 2 is a working member: without replica 1, no quorum exists without it.
    cluster.kill(1);
    await_more_acks(&history, 50, "with replica 1 down and replica 2 rejoined");
    cluster.assert_running();
    writers.finish();
    let history = history.lock().expect("lock");
    let checked = verify(&client, &history, 1);
    assert_eq!(checked, history.acked.len());
    // Under the load a replica skips a checkpoint point passed while its previous
    // checkpoint is still being written, so the three may share no checkpoint yet (CI:
    // replica 2 kept 885 and 888, its peers others). One put at a time until their
    // newest is one and the same and stays: each point then finds every replica idle.
    let shared = settle_a_shared_checkpoint(&cluster, &client, &[0, 2, 3]);
    drop(client);
    cluster.kill_all();
    // Replica 2's own checkpoints after the transfer hold exactly its peers' states.
    let rejoined = checkpoints_of(&cluster, 2);
    let mut compared = 0;
    for peer in [0, 3] {
        let theirs = checkpoints_of(&cluster, peer);
        for (name, bytes) in &rejoined {
            if let Some(their_bytes) = theirs.get(name) {
                assert!(bytes == their_bytes, "{name} of replica 2 differs from replica {peer}'s");
                compared += 1;
            }
        }
    }
    let newest = rejoined.keys().next_back().expect("replica 2 checkpointed").clone();
    let newest_at: u64 = newest
        .trim_start_matches("checkpoint-")
        .trim_end_matches(".dck")
        .parse()
        .expect("a checkpoint name");
    assert!(newest_at > transferred, "a checkpoint of its own after the transfer: {newest}");
    assert!(rejoined.contains_key(&shared), "replica 2 kept {shared}: {:?}", rejoined.keys());
    assert!(compared >= 2, "{shared} compared with both peers: {compared} comparisons");
}

/// Names of the checkpoint files in replica `id`'s data dir (while it runs: names only).
fn checkpoint_names(cluster: &Cluster, id: u32) -> BTreeSet<String> {
    let dir = cluster.config.replicas[id as usize].data_dir.join("checkpoints");
    std::fs::read_dir(&dir)
        .expect("checkpoint dir")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".dck"))
        .collect()
}

/// Puts one key at a time (the load stopped) until replicas `ids` all have the same
/// newest checkpoint and keep it over a pause, and returns its name. Serial puts make
/// batches of one, so the next point is one agreement that every replica reaches with
/// its previous write long done. A name merely shared is not enough: a replica still
/// executing the load's last agreements (CI: replica 2 listed 775 beside its peers,
/// then wrote 778 and 780 and, keeping two, removed 775) moves on after the listing.
fn settle_a_shared_checkpoint(cluster: &Cluster, client: &KvClient, ids: &[u32]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let newest = || -> Vec<Option<String>> {
        ids.iter().map(|&id| checkpoint_names(cluster, id).into_iter().next_back()).collect()
    };
    let mut puts = 0;
    loop {
        let before = newest();
        thread::sleep(Duration::from_millis(500));
        let after = newest();
        if before == after && after[0].is_some() && after.iter().all(|name| *name == after[0]) {
            return after[0].clone().expect("checked above");
        }
        assert!(
            Instant::now() < deadline && puts < 3 * CHECKPOINT_PERIOD,
            "no newest checkpoint shared by {ids:?} after {puts} serial puts: {after:?}"
        );
        // Only a put that finds the newest names still: one racing a replica's catch-up
        // would move nothing the next listing needs.
        if before == after {
            for _ in 0..CHECKPOINT_PERIOD / 8 {
                client.put(format!("settle-{puts}").as_bytes(), b"s").expect("a serial put");
                puts += 1;
            }
        }
    }
}

#[test]
fn a_whole_cluster_killed_with_one_data_dir_wiped_comes_back_and_the_wiped_replica_rejoins() {
    let dir = temp_dir();
    let (mut cluster, client, history) = started_bft_cluster(dir.path());
    let writers = Load::start(&client, "before", &history);
    await_more_acks(&history, 2 * CHECKPOINT_PERIOD as usize, "before the crash");
    // Every replica killed at once; one replica's disk is lost with it: the one that
    // logged most, so that its last agreements may be left on one other disk alone (an
    // acknowledged put is on f+1 = 2 disks). The others cannot trust a lone log by
    // itself (MACs), but the wiped replica, back by state transfer, says its disk was
    // lost: one of the f faults, so one log among the others proves an agreement
    // (ARCHITECTURE.md, "BFT with disks lost"). Before that it kept silent and the
    // cluster could stay down; before the silence (wiping replica 2 always), it answered
    // as if it had never logged the put, and the replica that held it alone gave it up.
    cluster.kill_all();
    writers.finish();
    let n = cluster.config.n();
    let logged: Vec<u64> = (0..n).map(|id| logged_up_to(&cluster.config, id)).collect();
    let wiped = (0..n).max_by_key(|&id| logged[id as usize]).expect("replicas");
    eprintln!("logged before the kill: {logged:?}; wiping replica {wiped}");
    std::fs::remove_dir_all(&cluster.config.replicas[wiped as usize].data_dir).expect("wipe");
    // All restarted together: the wiped one must not take the others' silence while
    // they start for a new cluster.
    cluster.start_all();
    let transferred = await_transfer(&mut cluster, wiped, Duration::from_secs(60));
    assert!(transferred > 0);
    let writers = Load::start(&client, "after", &history);
    await_more_acks(&history, 100, "after the restart");
    // The wiped replica is a working member: with another one down, no quorum exists
    // without it.
    cluster.kill((wiped + 1) % n);
    await_more_acks(&history, 50, "with another replica down and the wiped one rejoined");
    cluster.assert_running();
    // It ran on its peers' state, flagged so that a crash before the cluster resumed
    // would not bring it back as a replica with a log of its own; voting, the flag is
    // gone. Checked only now, not after the 100 acks that three replicas alone can give:
    // it votes from the first regency above those its peers reported when it recovered,
    // and when they installed the next one before it recovered, that is the regency the
    // kill above brings.
    let flag = cluster.config.replicas[wiped as usize]
        .data_dir
        .join(dura_engine::runtime::membership::FROM_PEERS_FLAG);
    assert!(!flag.exists(), "{} still there", flag.display());
    writers.finish();
    let history = history.lock().expect("lock");
    let checked = verify(&client, &history, 1);
    assert_eq!(checked, history.acked.len());
}

/// Appends to replica `id`'s log (its process stopped) one more decided agreement,
/// `agreement`, holding a put of `key` from a client no other replica heard: a decision
/// only this replica logged, as when it alone logged before a crash of every replica.
fn log_a_decision_alone(config: &ClusterConfig, id: u32, agreement: u64, key: &[u8]) {
    log_a_decision_on(config, &[id], agreement, key, b"never acknowledged");
}

/// [`log_a_decision_alone`] on each of `ids`, the same batch on each: a decision that
/// these replicas logged and no other one did.
fn log_a_decision_on(
    config: &ClusterConfig,
    ids: &[u32],
    agreement: u64,
    key: &[u8],
    value: &[u8],
) {
    use dura_engine::runtime::durability::LogBackend;
    let operation = dura_kvstore::KvOp::Put { key, value }.encode().expect("a valid put");
    let keys = config.client_keys(0xD15C_A4D0).expect("client keys");
    let request = dura_engine::protocol::ClientRequest::signed(&keys, 1, operation);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis();
    let batch =
        dura_engine::protocol::Batch { timestamp_ms: now_ms as u64, requests: vec![request] };
    let mut payload = Vec::new();
    dura_engine::durability::encode_batch(agreement, (0, 1), &batch, &mut payload);
    for &id in ids {
        let (mut log, records) = open_log(config, id);
        let last = records.iter().map(|r| r.last_agreement_id).max().unwrap_or(0);
        assert_eq!(last + 1, agreement, "replica {id} logged up to {last}");
        log.append(agreement, agreement, &payload).expect("append");
        log.sync().expect("sync");
    }
}

/// BFT: after a kill -9 of every replica, an agreement that two replicas logged (f+1: a
/// client may have seen it complete) is left on one disk when the other's data dir is
/// lost. The wiped replica, back by state transfer, says its disk was lost, so the lone
/// copy is proof enough: the cluster comes back with the agreement kept (its put is
/// there), the holder does not give it up, and every acknowledged put is there. Before
/// the wiped replica said so the cluster waited for good (a lone log is only its
/// holder's word); before it kept silent, the holder gave the agreement up.
#[test]
fn a_lone_copy_left_by_a_lost_disk_is_kept_after_a_kill_of_all() {
    let dir = temp_dir();
    let (mut cluster, client, history) = started_bft_cluster(dir.path());
    let writers = Load::start(&client, "before", &history);
    await_acks(&history, 200, "before the crash");
    writers.finish();
    // Idle, so that each replica that decided the last agreement logged it: 2f+1 = 3
    // decided every agreement.
    thread::sleep(Duration::from_secs(2));
    cluster.kill_all();
    let n = cluster.config.n();
    let logged: Vec<u64> = (0..n).map(|id| logged_up_to(&cluster.config, id)).collect();
    let last = logged.iter().copied().max().expect("replicas");
    let at_last: Vec<u32> = (0..n).filter(|&id| logged[id as usize] == last).collect();
    assert!(at_last.len() >= 3, "a quorum logged the last agreement: {logged:?}");
    let (holder, wiped) = (at_last[0], at_last[1]);
    log_a_decision_on(&cluster.config, &[holder, wiped], last + 1, b"lone-key", b"kept");
    std::fs::remove_dir_all(&cluster.config.replicas[wiped as usize].data_dir).expect("wipe");
    eprintln!(
        "logged {logged:?}; replicas {holder} and {wiped} logged {}, {wiped} wiped",
        last + 1
    );
    cluster.start_all();
    await_transfer(&mut cluster, wiped, Duration::from_secs(90));
    let writers = Load::start(&client, "after", &history);
    await_more_acks(&history, 100, "after the restart");
    cluster.assert_running();
    writers.finish();
    let holder_dir = &cluster.config.replicas[holder as usize].data_dir;
    let gave_up = std::fs::read_dir(holder_dir)
        .expect("data dir")
        .any(|e| e.expect("entry").file_name().to_string_lossy().starts_with("unconfirmed-"));
    assert!(!gave_up, "replica {holder} kept its agreement {}", last + 1);
    assert_eq!(
        client.get(b"lone-key").expect("get").as_deref(),
        Some(&b"kept"[..]),
        "the agreement on one disk came back"
    );
    let history = history.lock().expect("lock");
    assert_eq!(verify(&client, &history, 1), history.acked.len());
}

/// Replica `id`'s log (its process stopped), opened as the replica opens it, with the
/// records it holds.
fn open_log(
    config: &ClusterConfig,
    id: u32,
) -> (dura_engine::runtime::filelog::WalLog, Vec<dura_engine::runtime::filelog::LogRecord>) {
    let wal_dir = config.replicas[id as usize].data_dir.join("log/wal");
    let options = dura_wal::WalOptions {
        mode: config.wal_durability_mode().expect("a durable mode"),
        trust_dsync: config.wal_trust_dsync,
        segment_bytes: u64::from(config.wal_segment_mib) << 20,
        preallocate: config.wal_preallocate.parse().expect("a valid setting"),
        ..dura_wal::WalOptions::default()
    };
    dura_engine::runtime::filelog::WalLog::open(&wal_dir, options).expect("open the log")
}

/// The highest agreement in replica `id`'s log (its process stopped).
fn logged_up_to(config: &ClusterConfig, id: u32) -> u64 {
    let (_log, records) = open_log(config, id);
    records.iter().map(|r| r.last_agreement_id).max().unwrap_or(0)
}

/// Waits (60 s at most) until `history` holds `at_least` acknowledged puts.
fn await_acks(history: &Mutex<History>, at_least: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let acked = history.lock().expect("lock").acked.len();
        if acked >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "no progress {what} ({acked} acks)");
        thread::sleep(Duration::from_millis(20));
    }
}

/// [`await_acks`] for `more` acknowledgements than there are now.
fn await_more_acks(history: &Mutex<History>, more: usize, what: &str) {
    let now = history.lock().expect("lock").acked.len();
    await_acks(history, now + more, what);
}

/// Waits (up to `limit`) until replica `id`'s log says its state transfer finished, its
/// replicas running meanwhile; returns the agreement it brought.
fn await_transfer(cluster: &mut Cluster, id: u32, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(agreement) = transferred_to(&cluster.dir, id) {
            return agreement;
        }
        cluster.assert_running();
        assert!(Instant::now() < deadline, "replica {id} never finished state transfer");
        thread::sleep(Duration::from_millis(50));
    }
}

/// BFT: after a kill -9 of every replica, the replica whose log holds a decision no other
/// replica logged (written into its log while it was down) discards it: its log and
/// checkpoints go aside into `unconfirmed-*`, it takes the state from its peers, the
/// cluster serves, the discarded put is nowhere, and every acknowledged put is there.
#[test]
fn a_bft_replica_that_alone_logged_a_decision_discards_it_after_a_kill_of_all() {
    let dir = temp_dir();
    let (mut cluster, client, history) = started_bft_cluster(dir.path());
    let writers = Load::start(&client, "before", &history);
    await_acks(&history, 200, "before the crash");
    cluster.kill_all();
    writers.finish();
    let logged: Vec<u64> =
        (0..cluster.config.n()).map(|id| logged_up_to(&cluster.config, id)).collect();
    let alone = (0..cluster.config.n()).max_by_key(|&id| logged[id as usize]).expect("replicas");
    let agreement = logged[alone as usize] + 1;
    log_a_decision_alone(&cluster.config, alone, agreement, b"discarded-key");
    cluster.start_all();
    let data_dir = cluster.config.replicas[alone as usize].data_dir.clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    let aside = loop {
        let found = std::fs::read_dir(&data_dir)
            .expect("data dir")
            .map(|entry| entry.expect("entry").path())
            .find(|path| {
                path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("unconfirmed-"))
            });
        if let Some(found) = found
            && transferred_to(dir.path(), alone).is_some()
        {
            break found;
        }
        cluster.assert_running();
        assert!(Instant::now() < deadline, "replica {alone} never discarded and transferred");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(aside.join("log/wal").is_dir(), "the log is kept aside for inspection");
    let writers = Load::start(&client, "after", &history);
    await_more_acks(&history, 100, "after the restart");
    // The replica that discarded is a working member: without another, no quorum.
    let other = (alone + 1) % cluster.config.n();
    cluster.kill(other);
    await_more_acks(&history, 50, &format!("with replica {other} down"));
    cluster.assert_running();
    writers.finish();
    assert_eq!(client.get(b"discarded-key").expect("get"), None, "the discarded put is gone");
    let history = history.lock().expect("lock");
    assert_eq!(verify(&client, &history, 1), history.acked.len());
}

#[test]
fn a_fresh_crash_mode_client_reaches_a_moved_leader_without_waiting_out_the_timeout() {
    let dir = temp_dir();
    let mut cluster = Cluster::new(Mode::Crash, dir.path());
    // A fresh `dura-kv` call used to wait out the request timeout in full. A long one
    // (10 s) keeps "answered in under half of it" apart from that on a slow, shared
    // machine, where one ordinary put can take a second.
    cluster.config.request_timeout_ms = 10_000;
    cluster.config.save(&cluster.config_path).expect("rewrite config");
    let timeout = Duration::from_millis(cluster.config.request_timeout_ms);
    cluster.start_all();
    let client = cluster.client();
    client.put(b"before", b"1").expect("put at regency 0");
    // Stop regency 0's leader: the next put makes the others install regency 1
    // (leader 1). Then bring replica 0 back as a follower.
    cluster.kill(0);
    client.put(b"moved", b"1").expect("put after the leader change");
    cluster.start(0);
    // A fresh client starts at regency 0 and so asks replica 0 first. Once replica 0
    // has recovered it passes the request on at once; until then its answer may wait
    // for the timeout, so wait for the first fast answer (bounded)...
    let fresh_put = |key: &[u8]| {
        let fresh = cluster.client();
        let started = Instant::now();
        fresh.put(key, b"v").expect("fresh client's put");
        started.elapsed()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while fresh_put(b"probe") >= timeout / 2 {
        assert!(Instant::now() < deadline, "no fresh client was answered fast; logs in {dir:?}");
    }
    // ...then every fresh client is answered in well under the timeout.
    for round in 0..5 {
        let took = fresh_put(format!("fresh{round}").as_bytes());
        assert!(took < timeout / 2, "fresh client {round} took {took:?} (timeout {timeout:?})");
    }
    cluster.assert_running();
}

#[test]
fn sigterm_stops_a_replica_gracefully_with_exit_status_zero() {
    let dir = temp_dir();
    let mut cluster = Cluster::new(Mode::Crash, dir.path());
    cluster.start_all();
    let client = cluster.client();
    client.put(b"before", b"sigterm").expect("put");
    for id in 0..cluster.config.n() {
        let mut child = cluster.children[id as usize].take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(exit) = child.try_wait().expect("poll") {
                break exit;
            }
            assert!(Instant::now() < deadline, "replica {id} did not stop on SIGTERM");
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(exit.code(), Some(0), "replica {id} exit status");
    }
    // The log written before the graceful stop is replayed.
    cluster.start_all();
    assert_eq!(cluster.client().get(b"before").expect("get"), Some(b"sigterm".to_vec()));
}

#[test]
fn cli_reports_bad_input_without_panicking() {
    let run = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_dura-kv")).args(args).output().expect("run dura-kv");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = run(&["get", "--config", "/nonexistent/cluster.toml", "k"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("read cluster config") && !stderr.contains("panicked"), "{stderr}");
    let dir = temp_dir();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "f = 1\nmode = \"bft\"\nlog_mode = \"parallel\"\n").expect("write");
    let (code, stderr) =
        run(&["serve", "--config", bad.to_str().expect("utf-8 path"), "--id", "0"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cluster config") && !stderr.contains("panicked"), "{stderr}");
    let config = ClusterConfig::local(4, Mode::Bft, LogMode::Parallel, dir.path()).expect("config");
    let good = dir.path().join("cluster.toml");
    config.save(&good).expect("save");
    let (code, stderr) =
        run(&["serve", "--config", good.to_str().expect("utf-8 path"), "--id", "9"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no [[replica]] with id 9"), "{stderr}");
    let (code, stderr) = run(&[
        "serve",
        "--config",
        good.to_str().expect("utf-8 path"),
        "--id",
        "0",
        "--log-mode",
        "often",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("log_mode"), "{stderr}");
}
