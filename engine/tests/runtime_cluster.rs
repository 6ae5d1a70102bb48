//! The runtime end to end in one process: replicas as threads over loopback TCP, a
//! counter service, the blocking and the asynchronous client forms.

use std::time::{Duration, Instant};

use dura_engine::runtime::{
    Bootstrap, CheckpointScheduleKind, CheckpointWrite, Client, ClientOptions, ClusterConfig,
    LogMode, Mode, ReplicaOptions, RuntimeError, TransferProtocol, start_replica,
};
use dura_engine::service::{
    CopiedState, CopiedStateInstaller, OrderedRequest, Replies, Service, StateError,
};

/// Adds each operation's u64 to a running total and replies with the new total.
#[derive(Debug, Default)]
struct Counter(u64);

impl Service for Counter {
    const NAME: &'static str = "counter";
    type View = CopiedState;
    type Installer = CopiedStateInstaller<Counter>;

    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
        for request in requests {
            let add = request.operation.try_into().map(u64::from_le_bytes).unwrap_or(0);
            self.0 += add;
            replies.reply(self.0.to_le_bytes().to_vec());
        }
    }

    fn state_digest(&self) -> [u8; 32] {
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&self.0.to_le_bytes());
        digest
    }

    fn view(&self) -> CopiedState {
        CopiedState(self.0.to_le_bytes().to_vec())
    }

    fn installer(&self) -> CopiedStateInstaller<Counter> {
        CopiedStateInstaller::new(|bytes| {
            let total = bytes.try_into().map_err(|_| StateError::Invalid("not 8 bytes".into()))?;
            Ok(Counter(u64::from_le_bytes(total)))
        })
    }
}

fn total(reply: &[u8]) -> u64 {
    u64::from_le_bytes(reply.try_into().expect("8-byte reply"))
}

fn start(config: &ClusterConfig) -> Vec<dura_engine::runtime::ReplicaHandle> {
    (0..config.n())
        .map(|id| {
            start_replica(config, id, Counter::default(), ReplicaOptions::default())
                .unwrap_or_else(|e| panic!("replica {id} in {}: {e}", config.log_mode))
        })
        .collect()
}

/// A 3-replica crash-mode cluster in `dir` that acknowledged ten adds of 5 (one
/// agreement each), stopped cleanly; returns its config.
fn ten_adds_then_stop(log_mode: LogMode, dir: &std::path::Path) -> ClusterConfig {
    ten_adds_then_stop_with(log_mode, dir, |_| {})
}

/// [`ten_adds_then_stop`] with the config changed by `adjust` first.
fn ten_adds_then_stop_with(
    log_mode: LogMode,
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut ClusterConfig),
) -> ClusterConfig {
    let mut config = ClusterConfig::local(3, Mode::Crash, log_mode, dir).expect("config");
    config.pin_cores = false;
    adjust(&mut config);
    config.request_timeout_ms = 500;
    let replicas = start(&config);
    {
        let client = Client::connect(&config).expect("client");
        for _ in 0..10 {
            client.invoke(5u64.to_le_bytes().to_vec()).expect("add");
        }
    }
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
    config
}

#[test]
fn concurrent_submissions_are_each_executed_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        ClusterConfig::local(4, Mode::Bft, LogMode::Parallel, dir.path()).expect("config");
    config.pin_cores = false;
    let replicas = start(&config);
    let client =
        Client::connect_with(&config, ClientOptions { sessions_max: 16, ..ClientOptions::new() })
            .expect("client");
    // 64 submissions with only 16 sessions: the rest queue in the client.
    let pending: Vec<_> = (1..=64u64).map(|i| client.submit(i.to_le_bytes().to_vec())).collect();
    let mut totals: Vec<u64> =
        pending.into_iter().map(|p| total(&p.wait().expect("completes"))).collect();
    totals.sort_unstable();
    totals.dedup();
    assert_eq!(totals.len(), 64, "every request saw a distinct running total");
    let sum: u64 = (1..=64).sum();
    assert_eq!(*totals.last().expect("non-empty"), sum, "each addition applied exactly once");
    assert_eq!(total(&client.invoke(0u64.to_le_bytes().to_vec()).expect("read")), sum);
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn every_log_mode_recovers_what_it_acknowledged_after_a_restart() {
    for log_mode in [LogMode::Async, LogMode::Sync, LogMode::Batched, LogMode::Parallel] {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ten_adds_then_stop(log_mode, dir.path());
        assert_eq!(total_after_restart(&config, &log_mode.to_string()), 50, "{log_mode}");
    }
}

/// Restarts the cluster of `config`, checks every replica replayed its log, and reads
/// the total through ordering.
fn total_after_restart(config: &ClusterConfig, label: &str) -> u64 {
    let replicas = start(config);
    assert!(replicas.iter().all(|r| r.recovered_agreement_id() >= 1), "{label}: replayed");
    let client = Client::connect(config).expect("client");
    let pending = client.submit(0u64.to_le_bytes().to_vec());
    let mut waited = Duration::ZERO;
    let reply = loop {
        if let Some(reply) = pending.try_get() {
            break reply.expect("read");
        }
        assert!(waited < Duration::from_secs(30), "{label}: read did not complete");
        std::thread::sleep(Duration::from_millis(5));
        waited += Duration::from_millis(5);
    };
    total(&reply)
}

#[test]
fn every_wal_durability_of_the_config_recovers_what_it_acknowledged() {
    // direct-dsync, the default, runs in the test above.
    for durability in ["dsync", "fdatasync"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ten_adds_then_stop_with(LogMode::Parallel, dir.path(), |config| {
            config.wal_durability = durability.into();
        });
        assert_eq!(total_after_restart(&config, durability), 50, "{durability}");
    }
}

#[test]
fn a_replica_without_a_log_starts_empty_in_log_mode_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        ClusterConfig::local(3, Mode::Crash, LogMode::None, dir.path()).expect("config");
    config.pin_cores = false;
    let replicas = start(&config);
    assert!(replicas.iter().all(|r| r.recovered_agreement_id() == 0));
    let client = Client::connect(&config).expect("client");
    assert_eq!(total(&client.invoke(7u64.to_le_bytes().to_vec()).expect("add")), 7);
}

#[test]
fn bft_cluster_starts_and_restarts_with_its_first_leader_never_started() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        ClusterConfig::local(4, Mode::Bft, LogMode::Parallel, dir.path()).expect("config");
    config.pin_cores = false;
    config.request_timeout_ms = 300;
    let start_three = |config: &ClusterConfig| -> Vec<_> {
        (1..4)
            .map(|id| {
                start_replica(config, id, Counter::default(), ReplicaOptions::default())
                    .unwrap_or_else(|e| panic!("replica {id}: {e}"))
            })
            .collect()
    };
    // A new cluster: replicas 1-3 start as new members and replace the missing leader.
    let replicas = start_three(&config);
    {
        let client = Client::connect(&config).expect("client");
        for i in 1..=5u64 {
            assert_eq!(total(&client.invoke(3u64.to_le_bytes().to_vec()).expect("add")), 3 * i);
        }
    }
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
    // Every running replica restarts; replica 0 is still missing. The three recover,
    // wait a while for it, then go on with n-f answers, keeping every acknowledged add.
    let replicas = start_three(&config);
    assert!(replicas.iter().all(|r| r.recovered_agreement_id() >= 1), "replayed");
    let client = Client::connect(&config).expect("client");
    assert_eq!(total(&client.invoke(4u64.to_le_bytes().to_vec()).expect("add")), 19);
    drop(replicas);
}

#[test]
fn a_log_corrupt_before_its_tail_stops_the_replica_with_a_typed_error_and_cuts_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ten_adds_then_stop(LogMode::Parallel, dir.path());
    // Sequential requests were written as several groups: damage a byte of the first.
    let wal_dir = config.replicas[0].data_dir.join("log").join("wal");
    let segment = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            std::fs::read(path).is_ok_and(|bytes| bytes.iter().take(8192).any(|b| *b != 0))
        })
        .min()
        .expect("a segment with data");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    bytes[100] ^= 0x5a;
    std::fs::write(&segment, &bytes).expect("write segment");
    let error = start_replica(&config, 0, Counter::default(), ReplicaOptions::default())
        .expect_err("a corrupt log must not be replayed");
    assert!(error.is_log_corrupt(), "typed as corruption (repair from peers): {error}");
    assert_eq!(std::fs::read(&segment).expect("segment kept"), bytes, "nothing was cut");
}

/// Files in `dir` whose name starts with `prefix` and ends with `suffix`.
fn files(dir: &std::path::Path, prefix: &str, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(prefix) && name.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn replicas_checkpoint_on_schedule_truncate_their_logs_and_restart_from_a_checkpoint() {
    for write in [CheckpointWrite::Background, CheckpointWrite::StopTheWorld] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config =
            ClusterConfig::local(3, Mode::Crash, LogMode::Parallel, dir.path()).expect("config");
        config.pin_cores = false;
        config.request_timeout_ms = 500;
        // P = 12 over 3 replicas: replica i after request k with k mod 12 = 4i; the log
        // is cut every 4 requests.
        config.checkpoint_period = 12;
        config.checkpoint_write = write;
        config.wal_segment_mib = 16;
        let replicas = start(&config);
        let adds = 100u64;
        {
            // One request per agreement: a single client waits for each reply.
            let client = Client::connect(&config).expect("client");
            for _ in 0..adds {
                client.invoke(1u64.to_le_bytes().to_vec()).expect("add");
            }
        }
        for replica in &replicas {
            let written = replica.metrics().checkpoints_written();
            assert!(
                written >= 3,
                "{write:?}: replica {} wrote {written} checkpoints",
                replica.id()
            );
        }
        for replica in replicas {
            replica.stop().expect("clean stop");
        }
        for replica in &config.replicas {
            let checkpoints = files(&replica.data_dir.join("checkpoints"), "checkpoint-", ".dck");
            assert_eq!(checkpoints.len(), 2, "{write:?}: two kept: {checkpoints:?}");
            let segments = files(&replica.data_dir.join("log").join("wal"), "0", ".wal");
            // Without truncation there would be a segment per 4 requests (25 or more).
            // With it: a segment per 4 requests after the older retained checkpoint (2
            // periods, 6 segments, when every point was written; more when a point
            // passed while the previous checkpoint was still being written and was
            // skipped, as a loaded machine does), one period more while the cut to it
            // is still under way at the stop (it follows the newer checkpoint's write),
            // the segment it starts in, the active segment and the one prepared next.
            // A fixed bound of 11 failed on a loaded CI machine with 15 (session 13).
            let older: u64 = checkpoints[0]
                .trim_start_matches("checkpoint-")
                .trim_end_matches(".dck")
                .parse()
                .expect("a checkpoint file name holds its agreement");
            let bound = adds.saturating_sub(older) / 4 + 3 + 4;
            assert!(
                (segments.len() as u64) <= bound && segments.len() < 25,
                "{write:?}: replica {}: the log keeps only what follows the older checkpoint \
                 ({older}, so at most {bound} segments): {segments:?}",
                replica.id
            );
        }
        let replicas = start(&config);
        // Crash mode acknowledges on f+1 = 2 matching replies, so the third replica may
        // have stopped a few agreements behind; together they recovered every
        // acknowledged add, each from a checkpoint and the log after it.
        let recovered: Vec<u64> = replicas.iter().map(|r| r.recovered_agreement_id()).collect();
        assert!(recovered.iter().all(|r| *r >= 12), "{write:?}: past a checkpoint: {recovered:?}");
        assert!(recovered.iter().any(|r| *r >= adds), "{write:?}: recovered {recovered:?}");
        let client = Client::connect(&config).expect("client");
        let reply = client.invoke(0u64.to_le_bytes().to_vec()).expect("read");
        assert_eq!(total(&reply), adds, "{write:?}: every add survives the restart, once");
        for replica in replicas {
            replica.stop().expect("clean stop");
        }
    }
}

#[test]
fn crash_mode_cluster_resumes_with_n_minus_f_replicas_once_a_lost_disk_is_declared() {
    // Every replica stops (as after a power loss), and replica 2's disk is lost. The
    // other two restart with it declared lost (`dura-kv serve --lost 2`): they do not
    // wait for it, and every acknowledged add is there (each was on f+1 = 2 disks).
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ten_adds_then_stop(LogMode::Parallel, dir.path());
    std::fs::remove_dir_all(&config.replicas[2].data_dir).expect("lose replica 2's disk");
    let options = ReplicaOptions { lost_replicas: vec![2], ..ReplicaOptions::default() };
    let refused = start_replica(&config, 2, Counter::default(), options.clone())
        .expect_err("a replica declared lost does not start");
    assert!(refused.to_string().contains("declared lost"), "{refused}");
    let survivors: Vec<_> = (0..2)
        .map(|id| start_replica(&config, id, Counter::default(), options.clone()).expect("starts"))
        .collect();
    let client = Client::connect_with(
        &config,
        ClientOptions { request_timeout: Duration::from_secs(20), ..ClientOptions::new() },
    )
    .expect("client");
    let reply = client.invoke(5u64.to_le_bytes().to_vec()).expect("the two go on");
    assert_eq!(total(&reply), 55, "ten acknowledged adds of 5, then this one");
    drop(client);
    for replica in survivors {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn a_replica_whose_data_dir_was_wiped_takes_the_state_from_its_peers_and_rejoins() {
    let _ = env_logger::builder().is_test(true).try_init();
    // CST over sequential checkpoints; the PBFT-like baseline needs a checkpoint a weak
    // quorum holds with one hash, so coordinated ones.
    wiped_replica_rejoins(TransferProtocol::Cst, CheckpointScheduleKind::Sequential, None);
    wiped_replica_rejoins(TransferProtocol::PbftLike, CheckpointScheduleKind::Coordinated, None);
}

#[test]
fn a_leecher_rejects_a_corrupting_seeder_names_it_and_completes_from_the_others() {
    let _ = env_logger::builder().is_test(true).try_init();
    for corrupting in [0, 1, 2] {
        wiped_replica_rejoins(
            TransferProtocol::Cst,
            CheckpointScheduleKind::Sequential,
            Some(corrupting),
        );
    }
}

/// A BFT cluster of 4 adds 1 sixty times; replica 3 loses its data dir, twenty more
/// adds, it restarts through state transfer (from peers of which `corrupting`, if
/// any, corrupts what it streams) and then serves in a quorum.
fn wiped_replica_rejoins(
    protocol: TransferProtocol,
    schedule: CheckpointScheduleKind,
    corrupting: Option<u32>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        ClusterConfig::local(4, Mode::Bft, LogMode::Parallel, dir.path()).expect("config");
    config.pin_cores = false;
    config.transfer_protocol = protocol;
    config.checkpoint_schedule = schedule;
    config.request_timeout_ms = 500;
    // Checkpoints every 16 requests per replica, so the log pieces after them are short
    // and the base of the transfer is a checkpoint, not the genesis.
    config.checkpoint_period = 16;
    config.wal_segment_mib = 16;
    let mut replicas: Vec<Option<dura_engine::runtime::ReplicaHandle>> = (0..config.n())
        .map(|id| {
            let options = ReplicaOptions {
                corrupt_transfers: corrupting == Some(id),
                ..ReplicaOptions::default()
            };
            Some(start_replica(&config, id, Counter::default(), options).expect("start"))
        })
        .collect();
    let client = Client::connect(&config).expect("client");
    let mut adds = 0u64;
    let adds_before_wipe = 60;
    for _ in 0..adds_before_wipe {
        client.invoke(1u64.to_le_bytes().to_vec()).expect("add");
        adds += 1;
    }
    // Replica 3 loses its disk.
    replicas[3].take().expect("running").stop().expect("clean stop");
    let wiped = config.replicas[3].data_dir.clone();
    std::fs::remove_dir_all(&wiped).expect("wipe");
    for _ in 0..20 {
        client.invoke(1u64.to_le_bytes().to_vec()).expect("add while it is down");
        adds += 1;
    }
    let back = start_replica(&config, 3, Counter::default(), ReplicaOptions::default())
        .expect("the wiped replica starts through state transfer");
    let transferred = back.transferred().expect("it ran state transfer");
    // The target is what f+1 replicas other than the leader reported: every add is
    // decided on the three that ran, but one of them may still be logging the last few,
    // so the state may stop a few agreements short of the cluster's; it catches up on
    // the rest through the ordinary protocol (checked below, once it is in a quorum).
    assert!(
        transferred.agreement_id > 0 && back.recovered_agreement_id() >= transferred.agreement_id,
        "it starts near the cluster's state, not empty: {} ({transferred:?}) of {adds}",
        back.recovered_agreement_id()
    );
    match corrupting {
        // A corrupting seeder that served bulk data is proven faulty and named; one
        // that only sent hashes may go unnoticed, harmlessly (nothing of it was used).
        Some(bad) => assert!(
            transferred.faulty.iter().all(|&r| r == bad),
            "only the corrupting replica {bad} is named: {:?}",
            transferred.faulty
        ),
        None => {
            assert!(transferred.faulty.is_empty(), "{:?}", transferred.faulty);
            // f+1 seeders named the leader (replica 0, unless a slow moment on a shared
            // machine brought a leader change), and with two others able to serve, the
            // leecher asked it for no checkpoint and no log piece.
            let leader = transferred.leader.expect("f+1 seeders named a leader");
            assert!(!transferred.fetches_from.contains_key(&leader), "{transferred:?}");
            assert!(!transferred.bytes_from.contains_key(&leader), "{transferred:?}");
            assert_eq!(transferred.bytes_from.values().sum::<u64>(), transferred.bytes);
        }
    }
    eprintln!("{protocol:?} corrupting {corrupting:?}: {transferred:?}");
    // The transferred state is a checkpoint of its own now, and holds every add.
    let store = dura_snapshot::CheckpointStore::open(
        dura_snapshot::FsDir::new(wiped.join("checkpoints")).expect("dir"),
        Default::default(),
    )
    .expect("store");
    let loaded = dura_engine::checkpoint::load_checkpoint(&store, &Counter::default())
        .expect("valid")
        .expect("a checkpoint");
    // At most one add per agreement (a leader change may decide an empty batch), and
    // every add decided before the wipe.
    let (total_there, at) = (loaded.executor.service().0, loaded.from.agreement_id);
    assert!(
        total_there <= at && total_there >= adds_before_wipe,
        "{total_there} at {at} of {adds} adds"
    );
    assert!(loaded.from.agreement_id >= transferred.agreement_id);
    replicas[3] = Some(back);
    // It takes part again: with replica 0 (the first leader) stopped, the cluster needs
    // it for a quorum.
    replicas[0].take().expect("running").stop().expect("clean stop");
    for _ in 0..10 {
        client
            .invoke(1u64.to_le_bytes().to_vec())
            .expect("add with the wiped replica in the quorum");
        adds += 1;
    }
    let reply = client.invoke(0u64.to_le_bytes().to_vec()).expect("read");
    assert_eq!(total(&reply), adds, "every add once");
    // With replica 0 stopped every agreement needed its vote, so it decides them all,
    // the few its transfer stopped short of included.
    let rejoined = replicas[3].as_ref().expect("running");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rejoined.metrics().last_decided_agreement_id() <= adds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        rejoined.metrics().last_decided_agreement_id() > adds,
        "it decided the read after {adds} adds: {}",
        rejoined.metrics().last_decided_agreement_id()
    );
    drop(client);
    for replica in replicas.into_iter().flatten() {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn a_log_corrupt_before_its_tail_is_set_aside_and_repaired_from_the_peers() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        ClusterConfig::local(3, Mode::Crash, LogMode::Parallel, dir.path()).expect("config");
    config.pin_cores = false;
    config.request_timeout_ms = 500;
    let mut replicas: Vec<Option<dura_engine::runtime::ReplicaHandle>> =
        start(&config).into_iter().map(Some).collect();
    let client = Client::connect(&config).expect("client");
    let mut adds = 0u64;
    for _ in 0..30 {
        client.invoke(1u64.to_le_bytes().to_vec()).expect("add");
        adds += 1;
    }
    replicas[2].take().expect("running").stop().expect("clean stop");
    // Damage the first group of its log: later groups follow it, so this is corruption
    // in the middle, not a torn tail.
    let log_dir = config.replicas[2].data_dir.join("log");
    let segment = std::fs::read_dir(log_dir.join("wal"))
        .expect("wal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            std::fs::read(path).is_ok_and(|bytes| bytes.iter().take(8192).any(|b| *b != 0))
        })
        .min()
        .expect("a segment with data");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    bytes[100] ^= 0x5a;
    std::fs::write(&segment, &bytes).expect("write segment");
    for _ in 0..10 {
        client.invoke(1u64.to_le_bytes().to_vec()).expect("add while it is down");
        adds += 1;
    }
    let back = start_replica(&config, 2, Counter::default(), ReplicaOptions::default())
        .expect("a replica with a corrupt log repairs from its peers");
    let transferred = back.transferred().expect("it took the state by state transfer");
    assert!(transferred.agreement_id >= 30, "{transferred:?}");
    // The damaged log is kept, byte for byte, beside the new one.
    let aside: Vec<std::path::PathBuf> = std::fs::read_dir(&log_dir)
        .expect("log dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("wal.corrupt-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = aside[0].join(segment.file_name().expect("a name"));
    assert_eq!(std::fs::read(&kept).expect("kept segment"), bytes, "nothing was cut");
    replicas[2] = Some(back);
    // It serves: without replica 1, no majority exists without it.
    replicas[1].take().expect("running").stop().expect("clean stop");
    for _ in 0..10 {
        client.invoke(1u64.to_le_bytes().to_vec()).expect("add with the repaired replica");
        adds += 1;
    }
    let reply = client.invoke(0u64.to_le_bytes().to_vec()).expect("read");
    assert_eq!(total(&reply), adds, "every add once");
    drop(client);
    for replica in replicas.into_iter().flatten() {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn a_replica_behind_every_window_restarts_through_state_transfer_and_rejoins() {
    let _ = env_logger::builder().is_test(true).try_init();
    behind_replica_rejoins(Mode::Bft, 4);
    behind_replica_rejoins(Mode::Crash, 3);
}

/// Replica `n-1`, run by `serve_replica` as a replica process is, stops after twenty
/// adds; the others decide far more agreements than their catch-up windows (16) hold;
/// it restarts with its own log, finds itself behind every window (GONE from enough
/// peers), restarts through state transfer and then serves in a quorum.
fn behind_replica_rejoins(mode: Mode, n: u32) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ClusterConfig::local(n, mode, LogMode::Parallel, dir.path()).expect("config");
    config.pin_cores = false;
    config.request_timeout_ms = 500;
    config.checkpoint_period = 16;
    config.decided_window_max = 16;
    config.wal_segment_mib = 16;
    let late = n - 1;
    let metrics_port = dura_engine::runtime::config::free_ports(1).expect("a port")[0];
    config.replicas[late as usize].metrics_port = Some(metrics_port);
    let serve = |config: &ClusterConfig| {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (config, stop) = (config.clone(), stop.clone());
            std::thread::spawn(move || {
                dura_engine::runtime::serve_replica(
                    &config,
                    late,
                    Counter::default,
                    ReplicaOptions::default(),
                    &stop,
                )
            })
        };
        (stop, thread)
    };
    let mut replicas: Vec<Option<dura_engine::runtime::ReplicaHandle>> = (0..late)
        .map(|id| {
            Some(
                start_replica(&config, id, Counter::default(), ReplicaOptions::default())
                    .expect("start"),
            )
        })
        .collect();
    let (stop, thread) = serve(&config);
    let client = Client::connect(&config).expect("client");
    let mut adds = 0u64;
    for _ in 0..20 {
        client.invoke(1u64.to_le_bytes().to_vec()).expect("add");
        adds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let served = thread.join().expect("joined").expect("clean stop");
    assert_eq!(served.behind_restarts, 0, "{mode}: it kept up while it ran");
    for _ in 0..100 {
        client.invoke(1u64.to_le_bytes().to_vec()).expect("add while it is down");
        adds += 1;
    }
    let (stop, thread) = serve(&config);
    // Its own metrics say when it has caught up (120 agreements decided) and no longer
    // recovers; only then is the first leader stopped.
    let caught_up = Instant::now();
    loop {
        let metrics = scrape(metrics_port);
        let value = |name: &str| {
            metrics.lines().find_map(|line| {
                line.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok())
            })
        };
        if value("dura_last_decided_agreement_id ").is_some_and(|v| v >= 120.0)
            && value("dura_recovering ") == Some(0.0)
        {
            break;
        }
        assert!(
            caught_up.elapsed() < Duration::from_secs(60),
            "{mode}: the late replica did not catch up: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It takes part again: with replica 0 (the first leader) stopped, the cluster needs
    // it for a quorum.
    replicas[0].take().expect("running").stop().expect("clean stop");
    for _ in 0..10 {
        client
            .invoke(1u64.to_le_bytes().to_vec())
            .expect("add with the late replica in the quorum");
        adds += 1;
    }
    let reply = client.invoke(0u64.to_le_bytes().to_vec()).expect("read");
    assert_eq!(total(&reply), adds, "{mode}: every add once");
    drop(client);
    stop.store(true, Ordering::Relaxed);
    let served = thread.join().expect("joined").expect("clean stop");
    assert!(served.behind_restarts >= 1, "{mode}: it restarted through state transfer: {served:?}");
    // Its own newest checkpoint is the transferred state or a later one of its own, and
    // holds every add up to its agreement.
    let store = dura_snapshot::CheckpointStore::open(
        dura_snapshot::FsDir::new(config.replicas[late as usize].data_dir.join("checkpoints"))
            .expect("dir"),
        Default::default(),
    )
    .expect("store");
    let loaded = dura_engine::checkpoint::load_checkpoint(&store, &Counter::default())
        .expect("valid")
        .expect("a checkpoint");
    // At most one add per agreement (a leader change may decide an empty batch).
    let (total_there, at) = (loaded.executor.service().0, loaded.from.agreement_id);
    assert!(at >= 120 && total_there <= at && total_there >= 100, "{mode}: {total_there} at {at}");
    for replica in replicas.into_iter().flatten() {
        replica.stop().expect("clean stop");
    }
}

/// Starts replica `id` of `config` with `bootstrap`; the error if it refused.
fn start_with(
    config: &ClusterConfig,
    id: u32,
    bootstrap: Bootstrap,
) -> Result<dura_engine::runtime::ReplicaHandle, RuntimeError> {
    start_replica(
        config,
        id,
        Counter::default(),
        ReplicaOptions { bootstrap, ..ReplicaOptions::default() },
    )
}

/// Removes every replica's log and checkpoints; with `markers`, their member markers
/// too (the data dirs lost whole).
fn wipe_states(config: &ClusterConfig, markers: bool) {
    for replica in &config.replicas {
        let dir = &replica.data_dir;
        assert!(dir.join("member").exists(), "replica {} has a member marker", replica.id);
        if markers {
            std::fs::remove_dir_all(dir).expect("wipe the data dir");
        } else {
            std::fs::remove_dir_all(dir.join("log")).expect("wipe the log");
            std::fs::remove_dir_all(dir.join("checkpoints")).expect("wipe the checkpoints");
        }
    }
}

#[test]
fn a_cluster_whose_every_state_was_lost_refuses_to_start_unless_forced_and_says_so() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ten_adds_then_stop(LogMode::Parallel, dir.path());
    // Every log and checkpoint is gone; the member markers survived.
    wipe_states(&config, false);
    for bootstrap in [Bootstrap::Existing, Bootstrap::New] {
        for id in 0..config.n() {
            let error = start_with(&config, id, bootstrap).expect_err("refuses");
            let RuntimeError::NoState(loss) = &error else { panic!("{error}") };
            assert!(loss.own_lost && loss.cluster_existed(), "{bootstrap:?}: {error}");
            assert_eq!(loss.replica, id);
            let message = error.to_string();
            assert!(message.contains("STATE LOST"), "{message}");
            assert!(message.contains("--force-new-cluster"), "{message}");
        }
    }
    // A refused start leaves an empty log behind, which a later start does not take
    // for the member's own state: asked again, every replica still refuses.
    for id in 0..config.n() {
        assert!(config.replicas[id as usize].data_dir.join("log").exists());
        let error = start_with(&config, id, Bootstrap::New).expect_err("still refuses");
        assert!(matches!(&error, RuntimeError::NoState(loss) if loss.own_lost), "{error}");
    }
    // Told to force a new cluster: every replica starts empty and the cluster serves.
    let replicas: Vec<_> = (0..config.n())
        .map(|id| start_with(&config, id, Bootstrap::ForceNew).expect("forced"))
        .collect();
    let client = Client::connect(&config).expect("client");
    assert_eq!(total(&client.invoke(5u64.to_le_bytes().to_vec()).expect("add")), 5, "empty");
    drop(client);
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}

/// The text of `GET /metrics` from a replica's metrics port on this host ("" while it
/// does not answer).
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut text = String::new();
    if stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_err() {
        return text;
    }
    let _ = stream.read_to_string(&mut text);
    text
}

#[test]
fn a_cluster_whose_every_data_dir_was_lost_starts_only_as_a_new_cluster() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ten_adds_then_stop(LogMode::Parallel, dir.path());
    // The data dirs are gone whole, markers too: nothing tells this from a new cluster,
    // so only the explicit intent starts it.
    wipe_states(&config, true);
    for id in 0..config.n() {
        let error = start_with(&config, id, Bootstrap::Existing).expect_err("refuses");
        let RuntimeError::NoState(loss) = &error else { panic!("{error}") };
        assert!(!loss.cluster_existed(), "{error}");
        assert!(error.to_string().contains("--new-cluster"), "{error}");
        assert!(!config.replicas[id as usize].data_dir.join("member").exists(), "not marked");
    }
    let replicas: Vec<_> = (0..config.n())
        .map(|id| start_with(&config, id, Bootstrap::New).expect("a new cluster"))
        .collect();
    let client = Client::connect(&config).expect("client");
    assert_eq!(total(&client.invoke(5u64.to_le_bytes().to_vec()).expect("add")), 5, "empty");
    drop(client);
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
    // Its members are marked now: a restart is an ordinary one, with no flag.
    let replicas: Vec<_> = (0..config.n())
        .map(|id| start_with(&config, id, Bootstrap::Existing).expect("a restart"))
        .collect();
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn a_member_whose_log_was_wiped_takes_the_state_from_a_peer_even_when_told_new() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ten_adds_then_stop(LogMode::Parallel, dir.path());
    let replicas: Vec<_> =
        (0..2).map(|id| start_with(&config, id, Bootstrap::Existing).expect("restart")).collect();
    // Replica 2 lost its log and checkpoints; its marker survived.
    let lost = &config.replicas[2].data_dir;
    std::fs::remove_dir_all(lost.join("log")).expect("wipe the log");
    std::fs::remove_dir_all(lost.join("checkpoints")).expect("wipe the checkpoints");
    let back = start_with(&config, 2, Bootstrap::ForceNew).expect("transfers");
    let transferred = back.transferred().expect("it ran state transfer");
    assert!(transferred.agreement_id >= 10, "{transferred:?}");
    assert!(back.recovered_agreement_id() >= 10);
    drop(back);
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}
