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
}

/// What `dura-kv serve` (a replica process) gives [`ReplicaOptions::peers_wait`].
pub const PEERS_WAIT_PROCESS: Duration = Duration::from_secs(5);

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
}

/// Name of the file that records, in a replica's data dir, that a replica process has
/// run there (and so may have voted).
const MEMBER_MARKER: &str = "member";

/// Returns true, after creating the marker durably, when no replica process has run in
/// `data_dir` before: such a replica has never voted and starts with
/// [`Replica::new`]. Otherwise it may have voted in an earlier incarnation and lost
/// those votes, so it recovers first ([`Replica::restart_with_nonce`]). The marker is
/// written before the protocol starts, so a crash before it leaves nothing to recover.
fn mark_member(data_dir: &std::path::Path) -> Result<bool, RuntimeError> {
    let io = |operation: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |error| RuntimeError::Io { operation, path, error }
    };
    let marker = data_dir.join(MEMBER_MARKER);
    match std::fs::symlink_metadata(&marker) {
        Ok(_) => return Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io("inspect member marker", &marker)(error)),
    }
    std::fs::create_dir_all(data_dir).map_err(io("create data dir", data_dir))?;
    let mut file = std::fs::File::create(&marker).map_err(io("create member marker", &marker))?;
    std::io::Write::write_all(&mut file, b"a dura replica has run in this directory\n")
        .and_then(|()| file.sync_all())
        .map_err(io("write member marker", &marker))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("sync data dir", data_dir))?;
    Ok(true)
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
    if !peers.iter().any(|peer| peer.last_agreement > 0) {
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
    let protocol_config = config.protocol_config();

    // Log first: replay before anything is served.
    let log_dir = me.data_dir.join("log");
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
            .map_err(|error| RuntimeError::Transfer(error.to_string()))?;
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
    // A replica with neither checkpoint nor log (a new disk, a wiped data dir) in a
    // cluster whose replicas hold decided agreements does not start empty: it takes the
    // state from its peers first (CST), then starts from that checkpoint like any
    // restart.
    let mut transferred_state = None;
    if let Some(store) = &checkpoints
        && data_server.is_some()
        && records.is_empty()
        && (log_corrupt
            || store
                .list()
                .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?
                .is_empty())
    {
        let asked = Instant::now();
        let peers = loop {
            let peers = super::recovery::peers_hold_state(config, id, &keys);
            let everyone = peers.len() + 1 == config.n() as usize;
            if everyone
                || peers.iter().any(|peer| peer.last_agreement > 0)
                || asked.elapsed() >= options.peers_wait
            {
                break peers;
            }
            log::info!(
                "replica {id}: empty data dir; {} of {} peers answered, none holds a state: \
                 asking again",
                peers.len(),
                config.n() - 1
            );
            thread::sleep(Duration::from_millis(200));
        };
        if let Some(peer) = peers.iter().max_by_key(|peer| peer.last_agreement)
            && peer.last_agreement > 0
        {
            log::warn!(
                "replica {id}: {} in {}, but replica {} holds agreements up to {}: taking the \
                 state from the peers (state transfer)",
                if log_corrupt { "a damaged log" } else { "no checkpoint and no log" },
                me.data_dir.display(),
                peer.replica,
                peer.last_agreement
            );
            let transferred = super::recovery::transfer_state(
                config,
                id,
                &keys,
                &service,
                store,
                &me.data_dir.join(super::recovery::STAGING_DIR),
                &AtomicBool::new(false),
            )?;
            log::info!(
                "replica {id}: state transfer brought agreement {} in {} ms ({} bytes, {} rounds{})",
                transferred.agreement_id,
                transferred.elapsed.as_millis(),
                transferred.bytes,
                transferred.rounds,
                if transferred.faulty.is_empty() {
                    String::new()
                } else {
                    format!(", replicas proven faulty: {:?}", transferred.faulty)
                }
            );
            transferred_state = Some(transferred);
        }
    }
    let load_started = Instant::now();
    let loaded = match &checkpoints {
        Some(store) => crate::checkpoint::load_checkpoint(store, &service)
            .map_err(|error| RuntimeError::Checkpoint(error.to_string()))?,
        None => None,
    };
    let (mut executor, from) = match loaded {
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
        log::warn!(
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
    // A log without the marker (written by an older version) still means votes.
    let first_start = mark_member(&me.data_dir)? && recovered.last_decided == 0;
    let mut replica = if first_start {
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
        Replica::restart_with_nonce(
            protocol_config,
            keys.as_ref().clone(),
            recovered,
            ordered,
            nonce,
        )
        .map_err(protocol_error)?
    };

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
    let replica_metrics = Arc::new(ReplicaMetrics::default());
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
                        let reply = Reply::signed(
                            &key,
                            id,
                            out.client_id,
                            out.sequence,
                            regency.load(Ordering::Relaxed),
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
        let mut order = OrderStage {
            id,
            n,
            keys: keys.clone(),
            network,
            exec: exec_tx,
            regency,
            metrics: replica_metrics.clone(),
            tick_at: None,
        };
        threads.push(spawn(
            "order",
            core(0),
            Box::new(move || {
                let mut actions = Vec::new();
                replica.start(&mut actions);
                order.run(&mut replica, &order_rx, &stop, actions);
            }),
        )?);
    }
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
    })
}

struct OrderStage {
    id: u32,
    n: u32,
    keys: Arc<ReplicaKeys>,
    network: Arc<Network>,
    exec: Sender<ExecInput>,
    regency: Arc<AtomicU64>,
    metrics: Arc<ReplicaMetrics>,
    tick_at: Option<Instant>,
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
