//! A running replica: replays its log, starts its stage threads and serves until told
//! to stop.
//!
//! Threads (DESIGN.md, "Stages"):
//! - `net`: per connection one reader (decodes and authenticates each frame, then hands
//!   it to `order`) and one writer (drains the connection's queue in batched writes);
//!   one acceptor per listening socket; one dialer per peer with a lower id (one
//!   connection per pair of replicas).
//! - `order`: the protocol state machine; sends, timers, and the durability coordinator's
//!   dispatch of decided batches to `log` and `exec` (see [`super::durability`]).
//! - `exec`: the executor and the reply cache; releases replies.
//! - `log`: the write-ahead log.
//!
//! Replies to client `c` go to the connection whose hello named `c & !CLIENT_SESSION_MASK`
//! (a [`super::Client`] runs its sessions as consecutive ids over one connection).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};

use super::durability::{self, DecidedBatch, ExecInput, LogBackend};
use super::filelog::{FileLog, LogRecord, WalLog};
use super::membership::{self, Bootstrap, Marker, MemberState, OwnState, Standing};
use super::metrics::{self, Health, ReplicaMetrics};
use super::net::{FrameSink, Network, Peer, SinkVerdict};
use super::{ClusterConfig, LogMode, RuntimeError, config::LogBackendKind};
use crate::protocol::{
    Action, ClientRequest, Event, Hash, Key, Message, ProtocolError, Replica, ReplicaId,
    ReplicaKeys, Reply, TimerKind, open_frame, seal_frame, seal_frames,
};
use crate::service::{Executor, Service};

/// Low bits of a client id that number sessions over one client connection.
pub const CLIENT_SESSION_MASK: u64 = 0xff_ffff;
/// Events queued for the order stage at most.
pub const ORDER_QUEUE_MAX: usize = 8_192;
/// Decided batches queued for the exec or log stage at most.
pub const STAGE_QUEUE_MAX: usize = 1_024;
/// Client keys the exec stage keeps derived at most.
pub const CLIENT_KEYS_CACHED_MAX: usize = 65_536;
/// Stage threads that want a core each when pinning.
pub const STAGES_PINNED: usize = 4;

// Session numbers are the low bits of a client id: the mask is a block of low bits.
const _: () = assert!((CLIENT_SESSION_MASK + 1).is_power_of_two());
// Two stages per replica (order, exec) are always pinned; log joins when there is one.
const _: () = assert!(STAGES_PINNED >= 3);

/// What the order stage receives from the net stage.
#[derive(Debug)]
enum OrderInput {
    Message { from: ReplicaId, message: Message },
    Request(ClientRequest, Hash),
}

/// Options that are not in the cluster config (tests, tools).
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    /// Overrides the config's log mode.
    pub log_mode: Option<LogMode>,
    /// Test fault: this replica, as a state-transfer seeder, flips one byte in the
    /// middle of everything it streams (checkpoint files, log pieces), behind correct
    /// headers and hashes: a Byzantine seeder the leecher must catch and name. Compiled
    /// only with the `fault-hooks` feature, which only the engine's own tests enable.
    #[cfg(feature = "fault-hooks")]
    pub corrupt_transfers: bool,
    /// How long a replica that starts with an empty data dir waits for every peer to
    /// say whether it holds a state, before it concludes the cluster is new and starts
    /// empty. Zero (the default) asks once: in-process tests start replicas one by one.
    /// A replica process started with the rest of its cluster (a whole cluster
    /// restarted after a crash, one of its data dirs lost) should wait, or it may ask
    /// before its peers listen and start empty: `dura-kv serve` waits
    /// [`PEERS_WAIT_PROCESS`].
    pub peers_wait: Duration,
    /// The previous incarnation stopped with [`RuntimeError::BehindPeers`]: take the
    /// state from the peers (state transfer) before starting, although this replica has
    /// a log and checkpoints. Its log is kept: the installed checkpoint covers all of
    /// it, and the log goes on after the checkpoint (a gap below the checkpoint is
    /// allowed, as after any restart from a checkpoint newer than the log's end).
    /// [`serve_replica`] sets it.
    pub behind_peers: bool,
    /// With `behind_peers`: the previous incarnation's protocol core (same process), so
    /// that after the transfer it goes on with its votes and leader change state instead
    /// of recovering as after a crash (a restart forgets its votes; in crash mode a
    /// second replica that forgot them can block an agreement for good). The core jumps
    /// to the installed state ([`Replica::install_transferred`]). [`serve_replica`]
    /// passes it.
    pub previous_core: Option<Arc<Mutex<Option<Replica>>>>,
    /// Replicas an operator declares gone for good (their disks lost), at most f: this
    /// start's recovery after a crash of every replica does not wait for them
    /// ([`crate::protocol::Config::lost_replicas`]; `dura-kv serve --lost`). Each may
    /// come back only with an empty data dir, once no running replica declares it.
    pub lost_replicas: Vec<u32>,
    /// Whether a replica without a state may begin a new, empty cluster when no peer
    /// holds a state ([`super::membership`]). In-process starts default to
    /// [`Bootstrap::New`]; `dura-kv serve` passes [`Bootstrap::Existing`] unless told
    /// `--new-cluster` or `--force-new-cluster`.
    pub bootstrap: Bootstrap,
}

/// Restarts through state transfer that [`serve_replica`] makes in a row, each after an
/// incarnation that served less than [`BEHIND_SERVED_MIN`], before it gives up: a replica
/// that falls behind again at once (a disk or link far slower than its peers') stops
/// with the error instead of transferring forever.
pub const BEHIND_RESTARTS_MAX: u32 = 8;
/// An incarnation that served this long resets the count of [`BEHIND_RESTARTS_MAX`].
pub const BEHIND_SERVED_MIN: Duration = Duration::from_secs(60);

/// How a replica run by [`serve_replica`] ended (it stopped when asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Served {
    /// Restarts through state transfer after falling behind every peer's window.
    pub behind_restarts: u32,
    /// Restarts through state transfer after discarding an unconfirmed suffix (BFT,
    /// after a crash of every replica).
    pub discards: u32,
}

/// Runs replica `id` until `stop` is set: starts it ([`start_replica`], with a fresh
/// service from `make_service`), and when it stops because it fell behind every peer's
/// catch-up window ([`RuntimeError::BehindPeers`]) starts it again at once with
/// [`ReplicaOptions::behind_peers`], so that it takes the state from its peers and
/// rejoins; when it must discard what only it logged before a crash of every replica
/// ([`RuntimeError::UnconfirmedSuffix`]) it sets its log and checkpoints aside and
/// starts again as a member without state, which takes the state from its peers. Any
/// other error is returned. The body of a replica process.
pub fn serve_replica<S: Service>(
    config: &ClusterConfig,
    id: u32,
    mut make_service: impl FnMut() -> S,
    options: ReplicaOptions,
    stop: &AtomicBool,
) -> Result<Served, RuntimeError> {
    let mut options = options;
    let mut served = Served::default();
    let mut in_a_row = 0u32;
    // Starts tried since this replica discarded an unconfirmed suffix (its state now
    // comes from peers that may still be restarting).
    let mut after_discard = 0u32;
    loop {
        let started = Instant::now();
        let handle = match start_replica(config, id, make_service(), options.clone()) {
            Ok(handle) => handle,
            Err(error)
                if after_discard > 0
                    && after_discard < BEHIND_RESTARTS_MAX
                    && !stop.load(Ordering::Relaxed) =>
            {
                log::error!(
                    "replica {id}: start {after_discard} after discarding unconfirmed \
                     agreements failed: {error}; trying again"
                );
                after_discard += 1;
                thread::sleep(DISCARD_RETRY_WAIT);
                continue;
            }
            // The transfer after falling behind failed (peers restarting, a round that
            // gave up): serve from its own state, behind as it was, rather than stop; the
            // next GONE quorum asks again (bounded by BEHIND_RESTARTS_MAX).
            Err(error) if options.behind_peers => {
                log::error!(
                    "replica {id}: state transfer after falling behind failed: {error}; \
                     starting from its own state"
                );
                options.behind_peers = false;
                start_replica(config, id, make_service(), options.clone())?
            }
            Err(error) => return Err(error),
        };
        options.behind_peers = false;
        after_discard = 0;
        while !stop.load(Ordering::Relaxed) && !handle.stop.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(20));
        }
        let core_slot = handle.core_cell.clone();
        match handle.stop() {
            Err(RuntimeError::BehindPeers { last_decided, first_held })
                if !stop.load(Ordering::Relaxed) =>
            {
                if started.elapsed() >= BEHIND_SERVED_MIN {
                    in_a_row = 0;
                }
                in_a_row += 1;
                if in_a_row > BEHIND_RESTARTS_MAX {
                    log::error!(
                        "replica {id}: fell behind every peer's window {in_a_row} times in a \
                         row: giving up"
                    );
                    return Err(RuntimeError::BehindPeers { last_decided, first_held });
                }
                log::warn!(
                    "replica {id}: decided up to {last_decided}, peers hold agreements from \
                     {first_held} on only: restarting through state transfer"
                );
                served.behind_restarts += 1;
                options.behind_peers = true;
                options.previous_core = Some(core_slot);
            }
            Err(RuntimeError::UnconfirmedSuffix { confirmed, logged })
                if !stop.load(Ordering::Relaxed) =>
            {
                let data_dir = &config.replica(id)?.data_dir;
                let aside = set_state_aside(data_dir, "unconfirmed")?;
                log::error!(
                    "replica {id}: agreements {}..={logged} it logged may be decided anew \
                     (fewer than f+1 replicas logged them before a crash of every replica, or \
                     f+1 peers decided another batch there): its log and checkpoints are kept \
                     aside in {} and its state comes from its peers",
                    confirmed + 1,
                    aside.display()
                );
                served.discards += 1;
                after_discard = 1;
            }
            Err(error) => return Err(error),
            Ok(()) => return Ok(served),
        }
    }
}

/// How long a replica that discarded an unconfirmed suffix waits before it tries to
/// start again when its peers could not give it their state yet.
const DISCARD_RETRY_WAIT: Duration = Duration::from_secs(2);

/// Moves `data_dir`'s log and checkpoints into `<data_dir>/<why>-<unix seconds>/` (kept
/// for inspection, never deleted) and flags the member as without state, durably: the
/// next start takes the state from the peers, as one that gave a suffix up
/// ([`membership::FromPeers::GaveUp`]). Returns the folder.
fn set_state_aside(
    data_dir: &std::path::Path,
    why: &str,
) -> Result<std::path::PathBuf, RuntimeError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let aside = data_dir.join(format!("{why}-{stamp}"));
    let io = |operation: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |error| RuntimeError::Io { operation, path, error }
    };
    std::fs::create_dir_all(&aside)
        .map_err(io("create a folder for the state set aside", &aside))?;
    for part in ["log", "checkpoints"] {
        let from = data_dir.join(part);
        if from.exists() {
            std::fs::rename(&from, aside.join(part)).map_err(io("set the state aside", &from))?;
        }
    }
    for dir in [&aside, &data_dir.to_path_buf()] {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync a directory", dir))?;
    }
    membership::flag_lost(data_dir)?;
    // Its next starts run on its peers' state, and keep silent until the cluster resumed
    // with them: it gave a suffix up, its disk is intact (not one of the f faults).
    membership::flag_from_peers(data_dir, membership::FromPeers::GaveUp)?;
    Ok(aside)
}

/// [`serve_replica`] until SIGTERM or SIGINT (or a stage failure), then a graceful
/// stop: the body of `dura-kv serve`.
pub fn serve_replica_until_signal<S: Service>(
    config: &ClusterConfig,
    id: u32,
    make_service: impl FnMut() -> S,
    options: ReplicaOptions,
) -> Result<Served, RuntimeError> {
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, signalled.clone()).map_err(|error| {
            RuntimeError::Io {
                operation: "install signal handler",
                path: std::path::PathBuf::from("signal"),
                error,
            }
        })?;
    }
    let served = serve_replica(config, id, make_service, options, &signalled);
    log::info!("replica {id}: shut down");
    served
}

/// What `dura-kv serve` (a replica process) gives [`ReplicaOptions::peers_wait`] on a
/// cluster's first start ([`Bootstrap::New`]).
pub const PEERS_WAIT_PROCESS: Duration = Duration::from_secs(5);

/// What `dura-kv serve` gives [`ReplicaOptions::peers_wait`] when it may not begin a
/// cluster empty on its own word ([`Bootstrap::Existing`], [`Bootstrap::ForceNew`]):
/// its peers, restarted with it, may replay long logs before they answer, and giving
/// up early only means refusing (or, forced, beginning empty beside a silent peer
/// that holds the state).
pub const PEERS_WAIT_EXISTING: Duration = Duration::from_secs(20);

/// A replica running in this process. Dropping it stops it.
#[derive(Debug)]
pub struct ReplicaHandle {
    id: u32,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<RuntimeError>>>,
    network: Arc<Network>,
    listen_addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    recovered_agreement_id: u64,
    metrics: Arc<ReplicaMetrics>,
    metrics_addr: Option<SocketAddr>,
    /// State transfer's server (checkpoints and log pieces for peers), if configured.
    data_server: Option<super::datapath::DataServer>,
    /// The state transfer this start ran, if it ran one.
    transferred: Option<super::recovery::Transferred>,
    /// The protocol core once the order stage ended (for a restart through state
    /// transfer in this process, [`ReplicaOptions::previous_core`]).
    core_cell: Arc<Mutex<Option<Replica>>>,
}

/// Disk a replica's log may keep in spare segments (recycled instead of removed)
/// when it checkpoints: 4 GiB.
pub const WAL_SPARE_BYTES_MAX: u64 = 4 << 30;

/// Log segments kept as spares for recycling. With checkpoints, each truncation drops
/// about one period's segments at once (the log is cut at every floor(P/n) boundary,
/// and more segments fill up in between at large P). Kept as spares, the next period's
/// appends go into already-written blocks (measured here at 1.6-3x the records/s of
/// fresh extents) and nothing is freed: on a lent machine's ext4 (`discard`), removing a
/// period's 2.6 GB of segments at once made every replica's synced writes wait, and the
/// cluster's throughput fell to a third for half a second after each truncation. Up to
/// [`WAL_SPARE_BYTES_MAX`] of spares, and at least n + 2; spares are only ever segments
/// the log itself filled, so they never exceed the log's own peak size. Without
/// checkpoints nothing is truncated: the WAL's default.
fn spare_segments_for(config: &ClusterConfig, id: u32, log_mode: LogMode) -> usize {
    if config.checkpoint_schedule_of(id, log_mode).is_some() {
        let segment_bytes = u64::from(config.wal_segment_mib) << 20;
        let by_bytes = usize::try_from(WAL_SPARE_BYTES_MAX / segment_bytes).unwrap_or(usize::MAX);
        by_bytes.max(config.n() as usize + 2)
    } else {
        dura_wal::SPARE_SEGMENTS_MAX_DEFAULT
    }
}

/// A log damaged before its tail (`error`) is repaired from the peers when one of them
/// holds decided agreements: the log directory is renamed aside (kept for inspection,
/// never cut or deleted), with the time in its name, and the replica starts with an
/// empty log and takes the state by state transfer. When no peer holds any state the
/// error is returned as it is and nothing is moved.
fn set_log_aside(
    config: &ClusterConfig,
    id: u32,
    keys: &dura_core::auth::ReplicaKeys,
    log_dir: &std::path::Path,
    wal_dir: &std::path::Path,
    error: RuntimeError,
) -> Result<(), RuntimeError> {
    let peers = super::recovery::peers_hold_state(config, id, keys);
    if !peers.iter().any(|peer| peer.report.last_agreement > 0) {
        log::error!("replica {id}: {error}; no peer holds a state to repair it from");
        return Err(error);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let aside = log_dir.join(format!("wal.corrupt-{stamp}"));
    let io = |operation: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |error| RuntimeError::Io { operation, path, error }
    };
    std::fs::rename(wal_dir, &aside).map_err(io("set the damaged log aside", wal_dir))?;
    std::fs::File::open(log_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("sync the log directory", log_dir))?;
    log::error!(
        "replica {id}: {error}; the damaged log is kept as {} for inspection, and the state \
         comes from the peers",
        aside.display()
    );
    Ok(())
}

/// Starts replica `id` of `config` over `service`: opens and replays its log, then
/// starts serving. Returns once the listeners are bound.
pub fn start_replica<S: Service>(
    config: &ClusterConfig,
    id: u32,
    service: S,
    options: ReplicaOptions,
) -> Result<ReplicaHandle, RuntimeError> {
    config.validate()?;
    config.validate_replica(id)?;
    super::tune_allocator();
    let log_mode = options.log_mode.unwrap_or(config.log_mode);
    let me = config.replica(id)?.clone();
    let keys = Arc::new(config.replica_keys(id)?);
    let mut protocol_config = config.protocol_config();
    protocol_config.lost_replicas = options.lost_replicas.clone();
    protocol_config.validate().map_err(|error| RuntimeError::Config {
        field: "lost_replicas".into(),
        reason: error.to_string(),
    })?;
    if options.lost_replicas.contains(&id) {
        return Err(RuntimeError::Config {
            field: "lost_replicas".into(),
            reason: format!(
                "replica {id} is declared lost: it comes back only with an empty data dir, started without that declaration"
            ),
        });
    }

    // Membership: the marker says whether this data dir has been a member's.
    let identity = membership::cluster_identity(config)?;
    let marker = membership::read_marker(&me.data_dir, &identity, id)?;
    // Log first: replay before anything is served.
    let log_dir = me.data_dir.join("log");
    // A member without its log: flagged before the log below is created empty.
    if marker.is_some() && log_mode != LogMode::None && !log_dir.exists() {
        membership::flag_lost(&me.data_dir)?;
    }
    // The log was damaged before its tail and set aside: the state comes from peers.
    let mut log_corrupt = false;
    let (backend, records): (Option<Box<dyn LogBackend>>, Vec<LogRecord>) =
        match (log_mode, config.log_backend) {
            (LogMode::None, _) => {
                log::info!("replica {id}: log mode none; starting with empty state");
                (None, Vec::new())
            }
            (LogMode::Sync, _) | (_, LogBackendKind::File) => {
                let (log, records) = FileLog::open(&log_dir.join("file"))?;
                (Some(Box::new(log)), records)
            }
            (_, LogBackendKind::Wal) => {
                let options = dura_wal::WalOptions {
                    mode: if log_mode == LogMode::Async {
                        dura_wal::io::DurabilityMode::AsyncUnsafe
                    } else {
                        config.wal_durability_mode()?
                    },
                    trust_dsync: config.wal_trust_dsync,
                    segment_bytes: u64::from(config.wal_segment_mib) * 1024 * 1024,
                    preallocate: config
                        .wal_preallocate
                        .parse()
                        .expect("wal_preallocate is checked by ClusterConfig::validate above"),
                    spare_segments_max: spare_segments_for(config, id, log_mode),
                    ..dura_wal::WalOptions::default()
                };
                let wal_dir = log_dir.join("wal");
                let (log, records) = match WalLog::open(&wal_dir, options.clone()) {
                    Ok(opened) => opened,
                    Err(error) if error.is_log_corrupt() && me.transfer_port.is_some() => {
                        set_log_aside(config, id, &keys, &log_dir, &wal_dir, error)?;
                        log_corrupt = true;
                        WalLog::open(&wal_dir, options)?
                    }
                    Err(error) => return Err(error),
                };
                (Some(Box::new(log)), records)
            }
        };
    // Checkpoints: the newest valid one is the state the log's replay starts from.
    // Loaded whenever the directory has one (the log may already be truncated below
    // it, even if checkpoints are now off).
    let schedule = config.checkpoint_schedule_of(id, log_mode);
    let checkpoints = if log_mode == LogMode::None {
        None
    } else {
        let dir = me.data_dir.join("checkpoints");
        std::fs::create_dir_all(&dir).map_err(|error| RuntimeError::Io {
            operation: "create checkpoint directory",
            path: dir.clone(),
            error,
        })?;
        let fs_dir = dura_snapshot::FsDir::new(&dir).map_err(|error| RuntimeError::Io {
            operation: "open checkpoint directory",
            path: dir.clone(),
            error,
        })?;
        let store = dura_snapshot::CheckpointStore::open(fs_dir, Default::default())
            .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?;
        Some(store)
    };
    // Without checkpoint and log (a new disk, a wiped data dir, a damaged log set aside)
    // the replica has no state of its own; with its marker it was a member and lost it.
    let no_state = match &checkpoints {
        Some(store) => {
            records.is_empty()
                && (log_corrupt
                    || store
                        .list()
                        .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?
                        .is_empty())
        }
        None => false,
    };
    let own = OwnState {
        marker: marker.is_some(),
        lost: marker.is_some()
            && no_state
            && (log_corrupt || membership::is_flagged_lost(&me.data_dir)),
    };
    let replica_metrics = Arc::new(ReplicaMetrics::default());
    let member_state = Arc::new(MemberState::new(
        if no_state { own.standing() } else { Standing::Member },
        replica_metrics.clone(),
    ));
    // State transfer's seeder side: every replica with checkpoints and a transfer port
    // serves its state to peers that lost theirs, on threads and a port of its own.
    let data_server = match (&checkpoints, me.transfer_port) {
        (Some(store), Some(_)) => {
            let log_pieces: Arc<dyn super::transfer::LogPieces> = backend
                .as_ref()
                .and_then(|log| log.pieces())
                .unwrap_or_else(|| Arc::new(super::transfer::NoPieces));
            let host = super::transfer::SeederHost::new(
                config.n() as usize,
                id,
                store.clone(),
                log_pieces,
            )
            .map_err(|error| RuntimeError::Transfer(error.to_string()))?
            .with_member(member_state.clone());
            let source: Arc<dyn super::datapath::StreamSource> = Arc::new(host);
            #[cfg(feature = "fault-hooks")]
            let source: Arc<dyn super::datapath::StreamSource> = if options.corrupt_transfers {
                log::warn!("replica {id}: test fault: corrupting what it streams to leechers");
                Arc::new(super::transfer::CorruptingSource(source))
            } else {
                source
            };
            Some(super::datapath::DataServer::bind(config, id, source)?)
        }
        _ => None,
    };
    // A replica without a state of its own asks its peers: it takes their state (CST)
    // and starts from that checkpoint like any restart, starts empty, or refuses
    // (`super::membership`). So does one that stopped behind every peer's catch-up
    // window (`behind_peers`): its peers hold agreements, so it takes their state.
    let transferred_state = match &checkpoints {
        Some(store) if no_state || options.behind_peers => super::recovery::StartWithoutState {
            config,
            me: id,
            keys: &keys,
            data_dir: &me.data_dir,
            own,
            can_ask: data_server.is_some(),
            bootstrap: options.bootstrap,
            peers_wait: options.peers_wait,
            own_last: if no_state {
                0
            } else {
                let logged = records.iter().map(|r| r.last_agreement_id).max().unwrap_or(0);
                let checkpointed = store
                    .list()
                    .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?
                    .iter()
                    .map(|entry| entry.agreement_id)
                    .max()
                    .unwrap_or(0);
                logged.max(checkpointed)
            },
        }
        .run(&service, store)?,
        _ => None,
    };
    let load_started = Instant::now();
    let loaded = match &checkpoints {
        Some(store) => crate::checkpoint::load_checkpoint(store, &service)
            .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?,
        None => None,
    };
    let (executor, from) = match loaded {
        Some(loaded) => {
            for skipped in &loaded.skipped {
                log::error!(
                    "replica {id}: checkpoint {} is damaged and was skipped (kept for inspection): {}",
                    skipped.file_name,
                    skipped.error
                );
            }
            log::info!(
                "replica {id}: loaded checkpoint {} (agreement {}, {} requests executed) in {} ms",
                loaded.file_name,
                loaded.from.agreement_id,
                loaded.executor.requests_executed(),
                load_started.elapsed().as_millis()
            );
            drop(service);
            (loaded.executor, loaded.from)
        }
        None => (Executor::new(service), crate::durability::FromCheckpoint::default()),
    };
    // Every replica bounds its reply cache alike (evictions are part of the state).
    let mut executor = executor.with_clients_max(config.clients_max as usize);
    let replay_started = Instant::now();
    let restored = crate::durability::restore(
        records.into_iter().map(|r| r.payload),
        &mut executor,
        protocol_config.decided_window_max,
        from,
    )
    .map_err(|error| RuntimeError::Replay(error.to_string()))?;
    let recovered_agreement_id = restored.recovered.last_decided;
    if backend.is_some() && recovered_agreement_id == 0 {
        // Only after the membership decision allowed it (`super::membership`).
        log::info!(
            "replica {id}: no checkpoint and no log records in {}; starting with empty state",
            log_dir.display()
        );
    } else if recovered_agreement_id > from.agreement_id {
        log::info!(
            "replica {id}: replayed agreements {}..={recovered_agreement_id} ({} requests) in {} ms",
            from.agreement_id + 1,
            restored.requests,
            replay_started.elapsed().as_millis()
        );
    }
    let checkpoint_start = crate::durability::CheckpointStart {
        ordered_requests: restored.ordered_requests,
        last_checkpoint: from.agreement_id,
    };
    let crate::durability::Restored { recovered, ordered, .. } = restored;
    let protocol_error = |error: ProtocolError| RuntimeError::Config {
        field: "protocol".into(),
        reason: error.to_string(),
    };
    // A member now (a new cluster, a joined one, a transferred state): durably marked
    // before the protocol starts. A log without the marker (an older version) still
    // means votes.
    if marker != Some(Marker::Current) {
        membership::write_marker(&me.data_dir, &identity, id)?;
    }
    membership::clear_lost(&me.data_dir)?;
    member_state.set_standing(Standing::Member);
    let first_start = marker.is_none() && recovered.last_decided == 0;
    // Its own log was lost (wiped, or set aside after a discard) and its state is its
    // peers' now, or was at a start that crashed before the cluster resumed with it
    // (the flag says so, and why): `Replica::mark_disk_lost` for a lost disk (a state
    // taken with no flag: its log was missing or set aside as corrupt),
    // `Replica::mark_state_lost` for a suffix given up.
    let from_peers_flag = membership::from_peers_flag(&me.data_dir);
    let from_peers = match (from_peers_flag, no_state && transferred_state.is_some()) {
        (Some(why), _) => Some(why),
        (None, true) => Some(membership::FromPeers::DiskLost),
        (None, false) => None,
    };
    let previous_core =
        options.previous_core.as_ref().and_then(|slot| slot.lock().expect("core slot lock").take());
    let mut marked = false;
    let mut replica = if let Some(mut core) = previous_core {
        log::info!(
            "replica {id}: its protocol core goes on from agreement {} (it kept its votes)",
            recovered.last_decided
        );
        core.install_transferred(recovered, ordered);
        // It keeps its mark, if it had one, with the flag that records it.
        marked = core.holds_lost_state();
        core
    } else if first_start {
        log::info!(
            "replica {id}: first start in {}: joining as a new member",
            me.data_dir.display()
        );
        Replica::new(protocol_config, keys.as_ref().clone()).map_err(protocol_error)?
    } else {
        // Unique per process start, so that answers to an earlier incarnation's
        // recovery query are not taken for this one's.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let mut core = Replica::restart_with_nonce(
            protocol_config,
            keys.as_ref().clone(),
            recovered,
            ordered,
            nonce,
        )
        .map_err(protocol_error)?;
        if let Some(why) = from_peers {
            match why {
                membership::FromPeers::DiskLost => core.mark_disk_lost(),
                membership::FromPeers::GaveUp => core.mark_state_lost(),
            }
            marked = core.holds_lost_state();
            if marked {
                membership::flag_from_peers(&me.data_dir, why)?;
            }
        }
        core
    };
    if !marked {
        // A new member, a core that kept its votes, or one whose cluster resumed with
        // it: nothing of its own was lost.
        membership::clear_from_peers(&me.data_dir)?;
    }

    // Sockets.
    let replica_listener =
        TcpListener::bind(me.replica_addr()?).map_err(|error| RuntimeError::Net {
            operation: "listen for replicas on",
            peer: format!("{}:{} (replica[{id}].replica_port)", me.host, me.replica_port),
            error,
        })?;
    let client_listener =
        TcpListener::bind(me.client_addr()?).map_err(|error| RuntimeError::Net {
            operation: "listen for clients on",
            peer: format!("{}:{} (replica[{id}].client_port)", me.host, me.client_port),
            error,
        })?;
    let metrics_addr = me.metrics_addr()?;
    let metrics_listener = match metrics_addr {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|error| RuntimeError::Net {
            operation: "listen for metrics scrapes on",
            peer: format!("{addr} (replica[{id}].metrics_port)"),
            error,
        })?),
        None => None,
    };
    let mut listen_addrs = vec![me.replica_addr()?, me.client_addr()?];
    listen_addrs.extend(metrics_addr);
    let tls = super::tls::ReplicaTls::load(config, id)?;
    let network = Network::with_tls(
        Peer::Replica(id),
        config.frame_bytes_max,
        tls.as_ref().map(|tls| tls.dial.clone()),
    );
    let (order_tx, order_rx) = bounded::<OrderInput>(ORDER_QUEUE_MAX);
    let n = config.n();
    let replica_sink: FrameSink = {
        let keys = keys.clone();
        let order_tx = order_tx.clone();
        Arc::new(move |peer, body: &[u8]| {
            let Peer::Replica(peer) = peer else { return SinkVerdict::Reject };
            match open_frame(body, |p| keys.link(p)) {
                Ok((from, message)) if from == peer => {
                    match order_tx.send(OrderInput::Message { from, message }) {
                        Ok(()) => SinkVerdict::Continue,
                        Err(_) => SinkVerdict::Closed,
                    }
                }
                _ => SinkVerdict::Reject,
            }
        })
    };
    // A request whose operation the log could not hold would stop every replica that
    // tried to log it: such a client is cut off at the door.
    let operation_bytes_max = config.operation_bound().operation_bytes_max;
    let client_sink: FrameSink = {
        let keys = keys.clone();
        Arc::new(move |peer, body: &[u8]| {
            let Peer::Client(connection) = peer else { return SinkVerdict::Reject };
            let Ok(request) = ClientRequest::from_bytes(body) else { return SinkVerdict::Reject };
            if request.operation.len() > operation_bytes_max {
                log::warn!(
                    "replica {id}: client {} sent an operation of {} bytes, over the bound of {operation_bytes_max}: connection closed",
                    request.client_id,
                    request.operation.len()
                );
                return SinkVerdict::Reject;
            }
            // Verified here, on the connection's thread; the digest goes on to order,
            // which hashes batches from it.
            let digest = request.digest();
            if request.client_id & !CLIENT_SESSION_MASK != connection
                || !request.verify_digest(id, &keys.client_key(request.client_id), &digest)
            {
                return SinkVerdict::Reject;
            }
            match order_tx.send(OrderInput::Request(request, digest)) {
                Ok(()) => SinkVerdict::Continue,
                Err(_) => SinkVerdict::Closed,
            }
        })
    };
    let io_error = |operation: &'static str| {
        move |error| RuntimeError::Net { operation, peer: format!("replica {id}"), error }
    };
    let mut threads = Vec::new();
    threads.push(
        network
            .serve_counted(
                replica_listener,
                config.connections_max as usize,
                move |p| matches!(p, Peer::Replica(r) if r < n && r != id),
                replica_sink.clone(),
                replica_metrics.replica_connections(),
                tls.as_ref().map(|tls| tls.peers.clone()),
            )
            .map_err(io_error("start replica acceptor"))?,
    );
    threads.push(
        network
            .serve_counted(
                client_listener,
                config.connections_max as usize,
                |p| matches!(p, Peer::Client(c) if c & CLIENT_SESSION_MASK == 0),
                client_sink,
                replica_metrics.client_connections(),
                tls.as_ref().map(|tls| tls.clients.clone()),
            )
            .map_err(io_error("start client acceptor"))?,
    );
    for peer in config.replicas.iter().filter(|r| r.id < id) {
        threads.push(
            network
                .keep_dialing(Peer::Replica(peer.id), peer.replica_addr()?, replica_sink.clone())
                .map_err(io_error("start dialer"))?,
        );
    }

    // Stages.
    let stop = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<RuntimeError>>> = Arc::new(Mutex::new(None));
    let regency = Arc::new(AtomicU64::new(0));
    // Health is right from the first scrape: a restarted replica is recovering before
    // its order stage has run a round.
    replica_metrics.record_order_state(
        replica.last_decided(),
        replica.regency(),
        replica.is_leader(),
        replica.is_recovering(),
    );
    if let Some(listener) = metrics_listener {
        let failure = failure.clone();
        let stop = stop.clone();
        let health_metrics = replica_metrics.clone();
        let health = move || {
            if let Some(error) = failure.lock().expect("failure lock").as_ref() {
                return Health::Stopped(error.to_string());
            }
            if stop.load(Ordering::Acquire) {
                return Health::Stopped("shutting down".into());
            }
            if health_metrics.is_recovering() { Health::Recovering } else { Health::Serving }
        };
        let network = network.clone();
        threads.push(
            metrics::serve(
                format!("metrics-{id}"),
                listener,
                replica_metrics.clone(),
                health,
                move || network.is_stopping(),
            )
            .map_err(io_error("start the metrics server"))?,
        );
    }
    let cores = if config.pin_cores {
        core_affinity::get_core_ids().filter(|cores| cores.len() >= STAGES_PINNED)
    } else {
        None
    };
    match &cores {
        Some(cores) => log::info!("replica {id}: pinning stages to {} cores", cores.len()),
        None => log::info!(
            "replica {id}: stage pinning off (disabled or fewer than {STAGES_PINNED} cores)"
        ),
    }
    // Replica `id` takes the `id`-th block of STAGES_PINNED cores, so replicas that share
    // a machine (a local cluster, the bench) do not all pin their stages to the same
    // first cores; with one replica per machine the block is simply the first cores.
    let core =
        |index: usize| cores.as_ref().map(|c| c[(id as usize * STAGES_PINNED + index) % c.len()]);
    let (exec_tx, exec_rx) = bounded::<ExecInput>(STAGE_QUEUE_MAX);
    let core_cell: Arc<Mutex<Option<Replica>>> = Arc::new(Mutex::new(None));
    let spawn =
        |name: &str, core: Option<core_affinity::CoreId>, body: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(format!("{name}-{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    body();
                })
                .map_err(io_error("start a stage thread"))
        };
    let fail = {
        let failure = failure.clone();
        let stop = stop.clone();
        move |error: RuntimeError| {
            log::error!("replica {id}: stopping: {error}");
            failure.lock().expect("failure lock").get_or_insert(error);
            stop.store(true, Ordering::Release);
        }
    };
    // Durability reports reach exec straight from a log that reports by itself, or from
    // the log stage (which then syncs each group itself).
    let self_reports = backend.as_ref().and_then(|backend| backend.durable_notifications());
    let (log_reports, durable_to_exec) = match (&backend, log_mode.is_durable(), self_reports) {
        (Some(_), true, Some(reports)) => (None, Some(reports)),
        (Some(_), true, None) => {
            let (reports, receiver) = durability::DurableReports::new();
            (Some(reports), Some(receiver))
        }
        _ => (None, None),
    };
    // Catch-up below the protocol's window is read from the log (`super::catchup`).
    let catch_up_log = backend.as_ref().and_then(|backend| backend.pieces());
    let log_tx = match backend {
        Some(backend) => {
            let (log_tx, log_rx) = bounded::<durability::LogInput>(STAGE_QUEUE_MAX);
            let fail = fail.clone();
            let metrics = replica_metrics.clone();
            threads.push(spawn(
                "log",
                core(2),
                Box::new(move || {
                    if let Err(error) =
                        durability::run_log_stage(log_mode, backend, log_rx, log_reports, &metrics)
                    {
                        fail(error);
                    }
                }),
            )?);
            Some(log_tx)
        }
        None => None,
    };
    replica_metrics.set_last_checkpoint(from.agreement_id);
    let checkpoint_link = match (schedule, checkpoints) {
        (Some(schedule), Some(store)) => {
            // One job at a time: the exec stage never has two views alive.
            let (jobs_tx, jobs_rx) = bounded::<durability::CheckpointJob<S::View>>(1);
            let (done_tx, done_rx) = bounded::<durability::CheckpointDone>(1);
            let check = super::checkpoint::PeriodCheck { n, period: schedule.period };
            threads.push(spawn(
                "ckpt",
                None,
                Box::new(move || {
                    super::checkpoint::run_checkpoint_stage(
                        id,
                        S::NAME,
                        store,
                        jobs_rx,
                        done_tx,
                        check,
                    );
                }),
            )?);
            Some(durability::CheckpointLink {
                schedule,
                start: checkpoint_start,
                jobs: jobs_tx,
                done: done_rx,
                stop_the_world: config.checkpoint_write == super::CheckpointWrite::StopTheWorld,
            })
        }
        _ => None,
    };
    {
        let network = network.clone();
        let keys = keys.clone();
        let regency = regency.clone();
        let metrics = replica_metrics.clone();
        threads.push(spawn(
            "exec",
            core(1),
            Box::new(move || {
                // Keys shared with clients, derived once per client (bounded).
                let mut client_keys: HashMap<u64, Key> = HashMap::new();
                let held = durability::run_exec_stage(
                    log_mode,
                    recovered_agreement_id,
                    &mut executor,
                    exec_rx,
                    durable_to_exec,
                    log_tx,
                    checkpoint_link,
                    &metrics,
                    |out| {
                        if client_keys.len() >= CLIENT_KEYS_CACHED_MAX {
                            client_keys.clear();
                        }
                        let key = *client_keys
                            .entry(out.client_id)
                            .or_insert_with(|| keys.client_key(out.client_id));
                        let reply = Reply::signed_with(
                            &key,
                            id,
                            out.client_id,
                            out.sequence,
                            regency.load(Ordering::Relaxed),
                            out.status,
                            out.decided,
                            out.reply,
                        );
                        network.send(
                            Peer::Client(out.client_id & !CLIENT_SESSION_MASK),
                            Arc::from(reply.to_bytes()),
                        );
                    },
                );
                if held.batches > 0 {
                    log::info!("replica {id}: {held}");
                }
            }),
        )?);
    }
    {
        let network = network.clone();
        let stop = stop.clone();
        let core_slot = core_cell.clone();
        let catch_up = match catch_up_log {
            Some(log) => {
                let (catch_up, thread) = super::catchup::CatchUpLog::spawn(
                    id,
                    log,
                    keys.clone(),
                    network.clone(),
                    stop.clone(),
                )
                .map_err(|error| RuntimeError::Io {
                    operation: "spawn the catch-up thread",
                    path: std::path::PathBuf::from("catch-up"),
                    error,
                })?;
                threads.push(thread);
                Some(catch_up)
            }
            None => None,
        };
        let mut order = OrderStage {
            fail: Box::new(fail.clone()),
            can_transfer: me.transfer_port.is_some(),
            id,
            n,
            keys: keys.clone(),
            network,
            exec: exec_tx,
            regency,
            metrics: replica_metrics.clone(),
            tick_at: None,
            catch_up,
            from_peers_flag: marked.then(|| me.data_dir.clone()),
        };
        threads.push(spawn(
            "order",
            core(0),
            Box::new(move || {
                let mut actions = Vec::new();
                replica.start(&mut actions);
                order.run(&mut replica, &order_rx, &stop, actions);
                // Kept for a restart through state transfer in this process.
                *core_slot.lock().expect("core slot lock") = Some(replica);
            }),
        )?);
    }
    member_state.set_serving();
    log::info!(
        "replica {id}: serving ({} mode, log mode {log_mode}) replicas on {}, clients on {}",
        config.mode,
        listen_addrs[0],
        listen_addrs[1]
    );
    if let Some(addr) = metrics_addr {
        log::info!("replica {id}: metrics and health on http://{addr}/metrics, /health");
    }
    Ok(ReplicaHandle {
        id,
        stop,
        failure,
        network,
        listen_addrs,
        threads,
        recovered_agreement_id,
        metrics: replica_metrics,
        metrics_addr,
        data_server,
        transferred: transferred_state,
        core_cell,
    })
}

struct OrderStage {
    /// Records a stage failure and stops the replica.
    fail: Box<dyn Fn(RuntimeError) + Send>,
    /// This replica has a transfer port, so a restart can take the state from peers.
    can_transfer: bool,
    id: u32,
    n: u32,
    keys: Arc<ReplicaKeys>,
    network: Arc<Network>,
    exec: Sender<ExecInput>,
    regency: Arc<AtomicU64>,
    metrics: Arc<ReplicaMetrics>,
    tick_at: Option<Instant>,
    /// Serves FETCHes below the core's window from the log (None: no log to read).
    catch_up: Option<super::catchup::CatchUpLog>,
    /// The data dir whose state-from-peers flag is to go once the core no longer holds
    /// a lost state (`Replica::holds_lost_state`); None when there is none.
    from_peers_flag: Option<std::path::PathBuf>,
}

impl OrderStage {
    fn run(
        &mut self,
        replica: &mut Replica,
        input: &Receiver<OrderInput>,
        stop: &AtomicBool,
        mut actions: Vec<Action>,
    ) {
        let mut reported_at = Instant::now();
        loop {
            if log::log_enabled!(log::Level::Debug)
                && reported_at.elapsed() >= Duration::from_secs(1)
            {
                reported_at = Instant::now();
                log::debug!(
                    "replica {}: last decided {}, regency {}, leader {}, recovering {}, pending requests {}",
                    self.id,
                    replica.last_decided(),
                    replica.regency(),
                    replica.is_leader(),
                    replica.is_recovering(),
                    replica.pending_requests()
                );
            }
            if !self.execute(&mut actions) || stop.load(Ordering::Acquire) {
                return;
            }
            if let Some(dir) = self.from_peers_flag.as_ref()
                && !replica.holds_lost_state()
            {
                // The cluster resumed with this replica: a restart from now on is an
                // ordinary one.
                if let Err(error) = membership::clear_from_peers(dir) {
                    (self.fail)(error);
                    return;
                }
                log::info!(
                    "replica {}: voting in the resumed cluster; its state is its own",
                    self.id
                );
                self.from_peers_flag = None;
            }
            self.metrics.record_order_state(
                replica.last_decided(),
                replica.regency(),
                replica.is_leader(),
                replica.is_recovering(),
            );
            let wait = self
                .tick_at
                .map_or(Duration::from_millis(100), |at| {
                    at.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(100));
            let event = select! {
                recv(input) -> message => match message {
                    Ok(message) => Some(message),
                    Err(_) => return,
                },
                default(wait) => None,
            };
            replica.observe_clock(unix_ms_now());
            if let Some(message) = event {
                self.feed(replica, message, &mut actions);
                // Take what else is queued before acting, so sends and deliveries batch.
                for _ in 0..256 {
                    match input.try_recv() {
                        Ok(message) => self.feed(replica, message, &mut actions),
                        Err(_) => break,
                    }
                }
            }
            if self.tick_at.is_some_and(|at| at <= Instant::now()) {
                self.tick_at = None;
                replica.handle(Event::TimerFired(TimerKind::Tick), &mut actions);
            }
        }
    }

    fn feed(&self, replica: &mut Replica, input: OrderInput, actions: &mut Vec<Action>) {
        let event = match input {
            OrderInput::Message { from, message } => Event::Message { from, message },
            OrderInput::Request(request, digest) => {
                Event::ClientRequest { request, digest: Some(digest) }
            }
        };
        replica.handle(event, actions);
    }

    /// Carries out `actions`; false when a stage is gone.
    fn execute(&mut self, actions: &mut Vec<Action>) -> bool {
        for action in actions.drain(..) {
            match action {
                Action::Send { to, message } => {
                    if let Some(key) = self.keys.link(to) {
                        let frame = seal_frame(key, self.id, &message);
                        self.network.send(Peer::Replica(to), Arc::from(frame));
                    }
                }
                Action::Broadcast { message } => {
                    // Encoded and hashed once for all links (a PROPOSE carries the batch).
                    let peers: Vec<(ReplicaId, &Key)> = (0..self.n)
                        .filter(|r| *r != self.id)
                        .filter_map(|r| self.keys.link(r).map(|key| (r, key)))
                        .collect();
                    let frames = seal_frames(peers.iter().map(|(_, key)| *key), self.id, &message);
                    for ((to, _), frame) in peers.iter().zip(frames) {
                        self.network.send(Peer::Replica(*to), frame);
                    }
                }
                Action::Deliver { decisions } => {
                    for decision in decisions {
                        self.metrics
                            .record_decided(decision.agreement_id, decision.batch.requests.len());
                        let batch = Arc::new(DecidedBatch {
                            agreement_id: decision.agreement_id,
                            batch: decision.batch,
                            hash: decision.hash,
                        });
                        // The exec stage's durability coordinator sends it on to the
                        // log as the log mode says.
                        if self.exec.send(ExecInput::Batch(batch)).is_err() {
                            return false;
                        }
                    }
                }
                Action::ReplyFromCache { client_id, sequence } => {
                    if self.exec.send(ExecInput::ReplyFromCache { client_id, sequence }).is_err() {
                        return false;
                    }
                }
                Action::SetTimer { timer: TimerKind::Tick, after_ms } => {
                    self.tick_at = Some(Instant::now() + Duration::from_millis(after_ms));
                }
                Action::ServeFromLog { to, first, last, first_held } => {
                    let ask = super::catchup::Ask { to, first, last, first_held };
                    match &self.catch_up {
                        // A full queue drops the ask: the peer FETCHes again.
                        Some(catch_up) => drop(catch_up.ask(ask)),
                        None => {
                            if let Some(key) = self.keys.link(to) {
                                let frame = seal_frame(key, self.id, &Message::Gone { first_held });
                                self.network.send(Peer::Replica(to), Arc::from(frame));
                            }
                        }
                    }
                }
                Action::TransferNeeded { last_decided, first_held } => {
                    if !self.can_transfer {
                        log::error!(
                            "replica {}: behind every peer's catch-up window (decided up to \
                             {last_decided}, peers from {first_held} on) and no transfer_port \
                             is configured: it cannot catch up",
                            self.id
                        );
                    }
                    (self.fail)(RuntimeError::BehindPeers { last_decided, first_held });
                    return false;
                }
                Action::DiscardUnconfirmed { confirmed, logged } => {
                    (self.fail)(RuntimeError::UnconfirmedSuffix { confirmed, logged });
                    return false;
                }
                Action::RegencyInstalled { regency, leader } => {
                    self.regency.store(regency, Ordering::Relaxed);
                    log::info!("replica {}: regency {regency} installed, leader {leader}", self.id);
                }
            }
        }
        true
    }
}

impl ReplicaHandle {
    /// This replica's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The state transfer this start ran (it started without state while its peers
    /// held some), if it ran one.
    pub fn transferred(&self) -> Option<&super::recovery::Transferred> {
        self.transferred.as_ref()
    }

    /// The last agreement id replayed from the log at start (0: none).
    pub fn recovered_agreement_id(&self) -> u64 {
        self.recovered_agreement_id
    }

    /// This replica's metrics, as its metrics server serves them.
    pub fn metrics(&self) -> &ReplicaMetrics {
        &self.metrics
    }

    /// Where the metrics server listens (None: not configured).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Whether a stage failed (the replica is stopping or stopped).
    pub fn has_failed(&self) -> bool {
        self.failure.lock().expect("failure lock").is_some()
    }

    /// Stops taking requests, lets the log finish its in-flight write, joins every
    /// thread. Returns the first stage error, if one stopped the replica.
    pub fn stop(mut self) -> Result<(), RuntimeError> {
        self.shutdown();
        match self.failure.lock().expect("failure lock").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(server) = &mut self.data_server {
            server.stop();
        }
        self.network.stop();
        for addr in &self.listen_addrs {
            Network::wake_listener(*addr);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// Serves until SIGTERM or SIGINT (or a stage failure), then stops gracefully.
    pub fn run_until_signal(self) -> Result<(), RuntimeError> {
        let signalled = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, signalled.clone()).map_err(|error| {
                RuntimeError::Io {
                    operation: "install signal handler",
                    path: std::path::PathBuf::from("signal"),
                    error,
                }
            })?;
        }
        while !signalled.load(Ordering::Relaxed) && !self.stop.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(50));
        }
        log::info!("replica {}: shutting down", self.id);
        self.stop()
    }
}

impl Drop for ReplicaHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The wall clock in ms since the Unix epoch, for batch timestamps (a clock before 1970
/// reads as 1 ms: 0 would mean "not told").
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discarded_state_is_set_aside_whole_and_the_member_is_flagged_without_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path();
        std::fs::create_dir_all(data_dir.join("log/wal")).expect("log");
        std::fs::write(data_dir.join("log/wal/00000001.seg"), b"records").expect("segment");
        std::fs::create_dir_all(data_dir.join("checkpoints")).expect("checkpoints");
        std::fs::write(data_dir.join("checkpoints/cp-7"), b"state").expect("checkpoint");
        std::fs::write(data_dir.join(membership::MEMBER_MARKER), b"marker").expect("marker");
        let aside = set_state_aside(data_dir, "unconfirmed").expect("set aside");
        assert!(aside.starts_with(data_dir));
        assert!(!data_dir.join("log").exists() && !data_dir.join("checkpoints").exists());
        let kept = |path: &str| std::fs::read(aside.join(path)).expect("kept");
        assert_eq!(kept("log/wal/00000001.seg"), b"records");
        assert_eq!(kept("checkpoints/cp-7"), b"state");
        assert!(data_dir.join(membership::MEMBER_MARKER).exists(), "still a member");
        assert!(membership::is_flagged_lost(data_dir), "its next start takes the peers' state");
        // It gave a suffix up (no fault): it will keep silent, not say its disk was lost.
        assert_eq!(membership::from_peers_flag(data_dir), Some(membership::FromPeers::GaveUp));
        // A disk flag reads back as one; an older or unreadable flag as a suffix given up.
        membership::flag_from_peers(data_dir, membership::FromPeers::DiskLost).expect("flag");
        assert_eq!(membership::from_peers_flag(data_dir), Some(membership::FromPeers::DiskLost));
        std::fs::write(data_dir.join(membership::FROM_PEERS_FLAG), b"older text\n").expect("old");
        assert_eq!(membership::from_peers_flag(data_dir), Some(membership::FromPeers::GaveUp));
        membership::clear_from_peers(data_dir).expect("clear");
        assert_eq!(membership::from_peers_flag(data_dir), None);
    }
}
