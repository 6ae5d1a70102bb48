//! The cluster configuration: one TOML file shared by every replica and client.
//!
//! ```toml
//! f = 1
//! mode = "bft"            # or "crash"
//! log_mode = "parallel"   # none | async | sync | batched | parallel
//! replica_key = "00112233..."  # hex, >= 16 bytes: HMAC key material for replica links
//! client_key = "8899aabb..."   # hex, >= 16 bytes: HMAC key material for client links
//! # The log (all optional): segment size, how new segments are prepared, how a write is
//! # made durable, and whether O_DSYNC is kept on FUSE and 9p (see the fields' docs).
//! wal_segment_mib = 64
//! wal_preallocate = "zeroed"      # zeroed | fallocate | sparse
//! wal_durability = "direct-dsync" # direct-dsync | dsync | fdatasync
//! wal_trust_dsync = false
//! # State transfer's data path (optional): the rate each seeder streams at, in total
//! # over its streams, and how many streams it serves at once.
//! transfer_bytes_per_s_max = 268435456  # 256 MiB/s; >= 1 MiB/s
//! transfer_streams_max = 2              # 1..=16
//! transfer_protocol = "cst"             # cst | pbft-like (the baseline)
//!
//! [[replica]]
//! id = 0
//! host = "127.0.0.1"
//! replica_port = 7000
//! client_port = 7100
//! transfer_port = 7200   # optional: state transfer's data path (no transfer without it)
//! data_dir = "/var/lib/dura/r0"
//! tls_cert_file = "/etc/dura/tls/replica-0.pem"     # with [tls]: names dura-replica-0
//! tls_key_file = "/etc/dura/tls/replica-0-key.pem"
//!
//! [tls]                   # optional: TLS on every connection (see `TlsConfig`)
//! ca_file = "/etc/dura/tls/ca.pem"
//! client_cert_file = "/etc/dura/tls/client.pem"     # optional, for clients
//! client_key_file = "/etc/dura/tls/client-key.pem"
//! client_cert_auth = false                          # true: replicas require it
//! ```
//!
//! [`ClusterConfig::validate`] checks it at start and names the field that is wrong.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use crate::protocol::auth::mac;
use crate::protocol::{ClientConfig, ClientKeys, Config as ProtocolConfig, KeyRing, ReplicaKeys};

/// Which ordering protocol the cluster runs (`mode = "bft"` or `"crash"`): the
/// protocol's own [`dura_core::Mode`], so the config needs no translation.
pub use dura_core::Mode;

/// How decided batches reach the disk, and when replies may leave (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// No log: replies leave when executed; nothing survives a full-cluster crash.
    None,
    /// Written, never synced: replies leave when executed.
    Async,
    /// One synced write per request, before execution.
    Sync,
    /// One synced write per group of batches; execution waits for it.
    Batched,
    /// One synced write per group, running while the batch executes; a reply leaves
    /// when its request is executed and durable.
    Parallel,
}

impl LogMode {
    /// All modes, in the order the experiments list them.
    pub const ALL: [LogMode; 5] =
        [LogMode::None, LogMode::Async, LogMode::Sync, LogMode::Batched, LogMode::Parallel];

    /// Whether replies wait for the log to be durable.
    pub fn is_durable(self) -> bool {
        matches!(self, LogMode::Sync | LogMode::Batched | LogMode::Parallel)
    }
}

impl FromStr for LogMode {
    type Err = RuntimeError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(LogMode::None),
            "async" => Ok(LogMode::Async),
            "sync" => Ok(LogMode::Sync),
            "batched" => Ok(LogMode::Batched),
            "parallel" => Ok(LogMode::Parallel),
            other => Err(RuntimeError::Config {
                field: "log_mode".into(),
                reason: format!("{other:?} is not one of none, async, sync, batched, parallel"),
            }),
        }
    }
}

impl fmt::Display for LogMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogMode::None => "none",
            LogMode::Async => "async",
            LogMode::Sync => "sync",
            LogMode::Batched => "batched",
            LogMode::Parallel => "parallel",
        })
    }
}

/// Which log implementation a replica writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackendKind {
    /// The segmented `dura-wal` (group commit, io_uring or pwrite, O_DIRECT|O_DSYNC).
    #[default]
    Wal,
    /// One file, buffered writes and `fdatasync`.
    File,
}

/// Which replicas checkpoint when (the paper's section 3.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointScheduleKind {
    /// Replica i checkpoints after request k where k mod P = i * floor(P/n): one replica
    /// at a time, so the others keep the service going.
    #[default]
    Sequential,
    /// Every replica at k mod P = 0 (the paper's Figure 2, for its experiment).
    Coordinated,
    /// No checkpoints: the log grows without bound and a restart replays all of it.
    Off,
}

/// How a checkpoint is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointWrite {
    /// An O(1) view of the state is taken between two batches and written by a
    /// background thread while execution goes on.
    #[default]
    Background,
    /// Execution stops until the checkpoint is durable (the paper's replica).
    StopTheWorld,
}

/// How a replica that lost its state takes it from its peers (`transfer_protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferProtocol {
    /// Collaborative state transfer (the paper's Figure 6; with f = 1 its optimisation
    /// first): checkpoint and log pieces from different replicas, validated by hashes
    /// from f others.
    #[default]
    Cst,
    /// The baseline: one replica sends checkpoint and log, the others only hashes.
    PbftLike,
}

impl fmt::Display for TransferProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransferProtocol::Cst => "cst",
            TransferProtocol::PbftLike => "pbft-like",
        })
    }
}

fn default_checkpoint_period() -> u64 {
    CHECKPOINT_PERIOD_DEFAULT
}

/// Default P: requests between two checkpoints of one replica. With 4 KiB operations a
/// replica's log then holds about 2P x 4 KiB = 800 MiB at most (it keeps the log since
/// its previous checkpoint).
pub const CHECKPOINT_PERIOD_DEFAULT: u64 = 100_000;

/// Largest P accepted.
pub const CHECKPOINT_PERIOD_MAX: u64 = 1 << 40;

/// One replica's place in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaConfig {
    /// Replica id, 0..n.
    pub id: u32,
    /// Host name or IP the replica listens on.
    pub host: String,
    /// Port for links from other replicas.
    pub replica_port: u16,
    /// Port for client connections.
    pub client_port: u16,
    /// Port serving `GET /metrics` (Prometheus text) and `GET /health` over HTTP on
    /// `host`; absent: no metrics server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<u16>,
    /// Port of state transfer's data path on `host`: seeders stream checkpoints and log
    /// pieces from it on threads of their own (`runtime::datapath`), so a transfer never
    /// queues behind ordering. Absent (a config written before the data path): the
    /// replica can neither serve nor fetch a transfer, and asking for its address
    /// ([`ReplicaConfig::transfer_addr`]) is an error naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_port: Option<u16>,
    /// Directory holding the replica's log.
    pub data_dir: PathBuf,
    /// With `[tls]`: this replica's certificate chain (PEM, its own certificate first),
    /// signed by the `[tls]` CA and naming `dura-replica-<id>` among its DNS
    /// subjectAltNames. Presented on all three of its ports and when it dials a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// With `[tls]`: the private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl ReplicaConfig {
    /// The address other replicas connect to.
    pub fn replica_addr(&self) -> Result<SocketAddr, RuntimeError> {
        resolve(&self.host, self.replica_port, self.id, "replica_port")
    }

    /// The address clients connect to.
    pub fn client_addr(&self) -> Result<SocketAddr, RuntimeError> {
        resolve(&self.host, self.client_port, self.id, "client_port")
    }

    /// The address the metrics server listens on, if it is configured.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, RuntimeError> {
        self.metrics_port.map(|port| resolve(&self.host, port, self.id, "metrics_port")).transpose()
    }

    /// The address of the replica's state-transfer data path; an error naming the field
    /// when the config has none (a config written before the data path existed).
    pub fn transfer_addr(&self) -> Result<SocketAddr, RuntimeError> {
        let port = self.transfer_port.ok_or_else(|| RuntimeError::Config {
            field: format!("replica[{}].transfer_port", self.id),
            reason: "not set: state transfer needs a data path port on every replica that \
                     serves or fetches a transfer (add `transfer_port = <port>` to its \
                     [[replica]] entry)"
                .into(),
        })?;
        resolve(&self.host, port, self.id, "transfer_port")
    }
}

fn resolve(host: &str, port: u16, id: u32, field: &str) -> Result<SocketAddr, RuntimeError> {
    let mut addrs = (host, port).to_socket_addrs().map_err(|error| RuntimeError::Config {
        field: format!("replica[{id}].host"),
        reason: format!("cannot resolve {host:?} for {field}: {error}"),
    })?;
    addrs.next().ok_or_else(|| RuntimeError::Config {
        field: format!("replica[{id}].host"),
        reason: format!("{host:?} resolves to no address"),
    })
}

fn default_true() -> bool {
    true
}
fn default_request_timeout_ms() -> u64 {
    2_000
}
fn default_leader_timeout_ms() -> u64 {
    500
}
fn default_decided_window_max() -> usize {
    crate::protocol::DECIDED_WINDOW_MAX_DEFAULT
}
fn default_batch_requests_max() -> u32 {
    1_024
}
fn default_wal_preallocate() -> String {
    "zeroed".into()
}
fn default_wal_durability() -> String {
    dura_wal::io::DurabilityMode::default().name().into()
}
fn default_wal_segment_mib() -> u32 {
    64
}
fn default_frame_bytes_max() -> u32 {
    32 * 1024 * 1024
}
fn default_clients_max() -> u32 {
    crate::service::CLIENTS_MAX_DEFAULT as u32
}

fn default_connections_max() -> u32 {
    1_024
}
fn default_transfer_bytes_per_s_max() -> u64 {
    TRANSFER_BYTES_PER_S_MAX_DEFAULT
}
fn default_transfer_streams_max() -> u32 {
    TRANSFER_STREAMS_MAX_DEFAULT
}

/// Default `transfer_bytes_per_s_max`: 256 MiB/s per seeder. A 1 GiB checkpoint then
/// takes about 4 s from one seeder (CST fetches its parts from several at once), close
/// to the 0.36-0.41 GB/s recovery rates RAMCloud and SiloR report, while a 10 GbE link
/// (about 1.16 GiB/s) keeps over three quarters for ordering. Systems that stream
/// snapshots beside a live log cap lower (TiKV 100 MiB/s, CockroachDB 32 MiB/s) and see
/// followers fall behind for minutes on large states; the paper's CST measured 60% of
/// normal throughput during a 1 GB transfer with no cap, so a cap is needed, not a small
/// one.
pub const TRANSFER_BYTES_PER_S_MAX_DEFAULT: u64 = 256 << 20;

/// Smallest `transfer_bytes_per_s_max` accepted: one chunk of the data path
/// ([`super::datapath::CHUNK_BYTES`]) per second, so no chunk waits more than a second
/// for its tokens.
pub const TRANSFER_BYTES_PER_S_MIN: u64 = super::datapath::CHUNK_BYTES as u64;

/// Default `transfer_streams_max`: two, the seeder's default `leechers_max` in
/// `dura-transfer`, so one more recovering replica is told `Busy` rather than slowing
/// both.
pub const TRANSFER_STREAMS_MAX_DEFAULT: u32 = 2;

/// Largest `transfer_streams_max` accepted (each stream holds a thread and a socket).
pub const TRANSFER_STREAMS_MAX_MAX: u32 = 16;

const _: () = assert!(TRANSFER_BYTES_PER_S_MAX_DEFAULT >= TRANSFER_BYTES_PER_S_MIN);
const _: () = assert!(
    TRANSFER_STREAMS_MAX_DEFAULT >= 1 && TRANSFER_STREAMS_MAX_DEFAULT <= TRANSFER_STREAMS_MAX_MAX
);

/// The whole cluster: shared by every replica and client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Faults tolerated.
    pub f: u32,
    /// Ordering protocol.
    pub mode: Mode,
    /// Durability mode.
    pub log_mode: LogMode,
    /// Pin stage threads to cores when there is a core per stage.
    #[serde(default = "default_true")]
    pub pin_cores: bool,
    /// Hex key material for replica-to-replica links (HMAC-SHA256), >= 16 bytes.
    pub replica_key: String,
    /// Hex key material for client links (HMAC-SHA256), >= 16 bytes.
    pub client_key: String,
    /// A request not ordered within this time triggers the protocol's leader change;
    /// clients retransmit after it too.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A follower that hears nothing from the leader for this long asks for a leader
    /// change (the leader sends at least a heartbeat every 100 ms): a dead or paused
    /// leader is replaced about this fast. Default 500; at least 300.
    #[serde(default = "default_leader_timeout_ms")]
    pub leader_timeout_ms: u64,
    /// Decided agreements each replica keeps in memory to answer a lagging peer's
    /// catch-up (FETCH). A peer behind all of the others' windows takes the state by
    /// state transfer instead. Default 4,096; 16..=1,048,576.
    #[serde(default = "default_decided_window_max")]
    pub decided_window_max: usize,
    /// Requests per agreement batch at most.
    #[serde(default = "default_batch_requests_max")]
    pub batch_requests_max: u32,
    /// Largest frame accepted on any connection; a bigger one drops the connection.
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: u32,
    /// Connections a replica keeps open at once on each of its two listeners (replica
    /// links, clients), counting those still sending their hello; one more is closed
    /// at once with a log line. Each connection costs two threads and up to
    /// `frame_bytes_max` of buffer, so this bounds what unknown peers can make a
    /// replica hold. One client process (any number of sessions) uses one connection
    /// per replica. Default 1,024.
    #[serde(default = "default_connections_max")]
    pub connections_max: u32,
    /// Client sessions each replica remembers (one reply cache entry each: the last
    /// request's sequence number and reply). Past it, the sessions idle longest (by the
    /// agreed time of their last request) are forgotten, identically on every replica;
    /// a forgotten session's next request is refused as expired, never run twice (the
    /// client reports the outcome unknown). Must be equal on every replica. Default
    /// 1,048,576; 1..=16,777,216.
    #[serde(default = "default_clients_max")]
    pub clients_max: u32,
    /// Which log implementation: `wal` (segmented `dura-wal`, the default) or `file`
    /// (one file, write + fdatasync). `sync` log mode always uses `file`.
    #[serde(default)]
    pub log_backend: LogBackendKind,
    /// Size of a `dura-wal` segment file, in MiB (16..=4096).
    #[serde(default = "default_wal_segment_mib")]
    pub wal_segment_mib: u32,
    /// How `dura-wal` prepares new segment files: `zeroed` (written with zeros and
    /// synced first; later log writes overwrite written blocks), `fallocate` or
    /// `sparse`. Where the file system lacks `fallocate` (FUSE, some network file
    /// systems), `fallocate` falls back to `zeroed` with a log line.
    #[serde(default = "default_wal_preallocate")]
    pub wal_preallocate: String,
    /// Which replicas checkpoint when: `sequential` (default), `coordinated` or `off`.
    #[serde(default)]
    pub checkpoint_schedule: CheckpointScheduleKind,
    /// P: requests between two checkpoints of one replica (counted from the requests
    /// ordered, so every replica agrees on the points). At least 2n.
    #[serde(default = "default_checkpoint_period")]
    pub checkpoint_period: u64,
    /// `background` (default: execution goes on while the checkpoint is written) or
    /// `stop-the-world`.
    #[serde(default)]
    pub checkpoint_write: CheckpointWrite,
    /// How `dura-wal` makes a group write durable (`log_backend = "wal"`, durable log
    /// modes; `log_mode = "async"` never syncs): `direct-dsync` (`O_DIRECT|O_DSYNC`, the
    /// default), `dsync` (`O_DSYNC` through the page cache) or `fdatasync` (a buffered
    /// write, then `fdatasync`). On a file system not trusted to honour `O_DSYNC` (FUSE,
    /// 9p) the first two become `fdatasync`, with a log line, unless `wal_trust_dsync`.
    #[serde(default = "default_wal_durability")]
    pub wal_durability: String,
    /// Keep an `O_DSYNC` `wal_durability` (`direct-dsync`, `dsync`) even on a file
    /// system the log does not trust to honour it (FUSE, 9p), instead of switching to
    /// `fdatasync`. Default `false`; for an operator who knows the file system does.
    #[serde(default)]
    pub wal_trust_dsync: bool,
    /// Bytes per second one replica streams to recovering replicas, in total over its
    /// data-path streams (a token bucket shared by them, so ordering keeps the rest of
    /// the link and the disk). Default 256 MiB/s; at least 1 MiB/s (0 is rejected: a
    /// seeder that may send nothing would stall every transfer).
    #[serde(default = "default_transfer_bytes_per_s_max")]
    pub transfer_bytes_per_s_max: u64,
    /// Data-path streams one replica serves at once; a request past it is answered
    /// `Busy` at once (never queued), and the leecher asks another seeder. Default 2,
    /// within 1..=16.
    #[serde(default = "default_transfer_streams_max")]
    pub transfer_streams_max: u32,
    /// How a replica that starts without its state takes it from its peers: `cst`
    /// (default) or `pbft-like` (the baseline, for the recovery experiment).
    #[serde(default)]
    pub transfer_protocol: TransferProtocol,
    /// TLS on every connection (replica links, clients, the data path); absent: plain
    /// TCP. See [`TlsConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// One entry per replica, ids 0..n.
    #[serde(rename = "replica")]
    pub replicas: Vec<ReplicaConfig>,
}

/// Smallest key material accepted, in bytes.
pub const KEY_BYTES_MIN: usize = 16;

/// The `[tls]` section: TLS (1.3, rustls) on every connection of the cluster. Replica
/// links and the data path are mutual TLS: both sides present a certificate signed by
/// `ca_file` that names the replica (`dura-replica-<id>`), each replica's in its
/// `[[replica]]` entry (`tls_cert_file`, `tls_key_file`). Clients check the replica's
/// certificate against `ca_file` and the same name; they present `client_cert_file`
/// when it is set, and must when `client_cert_auth`. With the section present a
/// replica refuses plaintext peers (a plaintext client is told so). Relative paths are
/// taken from the process's working directory. The HMACs stay on top of TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// The CA certificate(s) (PEM) that sign every replica's and client's certificate.
    pub ca_file: PathBuf,
    /// A client's certificate chain (PEM), presented to replicas; optional unless
    /// `client_cert_auth`. Replicas ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Replicas accept only clients with a certificate signed by `ca_file` (etcd's
    /// `--client-cert-auth`). Default `false`: clients are authenticated by their HMACs.
    #[serde(default)]
    pub client_cert_auth: bool,
}

impl ClusterConfig {
    /// Reads and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        let text = std::fs::read_to_string(path).map_err(|error| RuntimeError::Io {
            operation: "read cluster config",
            path: path.to_path_buf(),
            error,
        })?;
        let config = Self::from_toml(&text)?;
        Ok(config)
    }

    /// Parses and validates TOML text (data directories are not touched; see
    /// [`ClusterConfig::validate_replica`]).
    pub fn from_toml(text: &str) -> Result<Self, RuntimeError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|error| RuntimeError::Config {
            field: error
                .span()
                .map(|s| format!("bytes {}..{}", s.start, s.end))
                .unwrap_or_default(),
            reason: error.message().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a cluster config always serialises")
    }

    /// Writes the config as TOML to `path`.
    pub fn save(&self, path: &Path) -> Result<(), RuntimeError> {
        std::fs::write(path, self.to_toml()).map_err(|error| RuntimeError::Io {
            operation: "write cluster config",
            path: path.to_path_buf(),
            error,
        })
    }

    /// Number of replicas.
    pub fn n(&self) -> u32 {
        self.replicas.len() as u32
    }

    /// The entry of replica `id`.
    pub fn replica(&self, id: u32) -> Result<&ReplicaConfig, RuntimeError> {
        self.replicas.iter().find(|r| r.id == id).ok_or_else(|| RuntimeError::Config {
            field: "replica".into(),
            reason: format!("no [[replica]] with id {id} (ids are 0..{})", self.n()),
        })
    }

    /// Replica `replica`'s checkpoint schedule, or None when checkpoints are off or the
    /// log mode keeps nothing to restart from (`none`).
    pub fn checkpoint_schedule_of(
        &self,
        replica: u32,
        log_mode: LogMode,
    ) -> Option<crate::durability::CheckpointSchedule> {
        use crate::durability::CheckpointSchedule;
        if log_mode == LogMode::None {
            return None;
        }
        let n = self.n() as usize;
        match self.checkpoint_schedule {
            CheckpointScheduleKind::Off => None,
            CheckpointScheduleKind::Sequential => {
                Some(CheckpointSchedule::sequential(self.checkpoint_period, n, replica as usize))
            }
            CheckpointScheduleKind::Coordinated => {
                Some(CheckpointSchedule::coordinated(self.checkpoint_period, n))
            }
        }
    }

    /// Replica link key material, decoded.
    pub fn replica_key_bytes(&self) -> Result<Vec<u8>, RuntimeError> {
        decode_key(&self.replica_key, "replica_key")
    }

    /// Client key material, decoded.
    pub fn client_key_bytes(&self) -> Result<Vec<u8>, RuntimeError> {
        decode_key(&self.client_key, "client_key")
    }

    /// Checks everything that does not need the file system.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let wrong =
            |field: &str, reason: String| RuntimeError::Config { field: field.into(), reason };
        if self.f == 0 {
            return Err(wrong("f", "must be at least 1".into()));
        }
        let needed = self.mode.replicas_min(self.f as usize);
        if self.n() as usize != needed {
            return Err(wrong(
                "replica",
                format!(
                    "mode {} with f = {} needs exactly {needed} [[replica]] entries, found {}",
                    self.mode,
                    self.f,
                    self.n()
                ),
            ));
        }
        let mut ids = BTreeSet::new();
        let mut endpoints = BTreeSet::new();
        for replica in &self.replicas {
            if !ids.insert(replica.id) {
                return Err(wrong("replica.id", format!("duplicate id {}", replica.id)));
            }
            if replica.id >= self.n() {
                return Err(wrong(
                    "replica.id",
                    format!("id {} out of range 0..{}", replica.id, self.n()),
                ));
            }
            let ports = [
                (Some(replica.replica_port), "replica_port"),
                (Some(replica.client_port), "client_port"),
                (replica.metrics_port, "metrics_port"),
                (replica.transfer_port, "transfer_port"),
            ];
            for (port, name) in ports.into_iter().filter_map(|(port, name)| Some((port?, name))) {
                if port == 0 {
                    return Err(wrong(
                        &format!("replica[{}].{name}", replica.id),
                        "must not be 0".into(),
                    ));
                }
                if !endpoints.insert((replica.host.clone(), port)) {
                    return Err(wrong(
                        &format!("replica[{}].{name}", replica.id),
                        format!("{}:{port} is used twice", replica.host),
                    ));
                }
            }
            if replica.data_dir.as_os_str().is_empty() {
                return Err(wrong(&format!("replica[{}].data_dir", replica.id), "is empty".into()));
            }
            if self.tls.is_some() {
                for (file, name) in [
                    (&replica.tls_cert_file, "tls_cert_file"),
                    (&replica.tls_key_file, "tls_key_file"),
                ] {
                    if file.as_ref().is_none_or(|path| path.as_os_str().is_empty()) {
                        return Err(wrong(
                            &format!("replica[{}].{name}", replica.id),
                            "not set: [tls] is on, so every replica needs its certificate and key"
                                .into(),
                        ));
                    }
                }
            }
        }
        self.replica_key_bytes()?;
        self.client_key_bytes()?;
        if let Some(tls) = &self.tls {
            if tls.ca_file.as_os_str().is_empty() {
                return Err(wrong("tls.ca_file", "is empty".into()));
            }
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                return Err(wrong(
                    "tls.client_key_file",
                    "client_cert_file and client_key_file go together: set both or neither".into(),
                ));
            }
        }
        if self.request_timeout_ms == 0 {
            return Err(wrong("request_timeout_ms", "must be at least 1".into()));
        }
        let leader_timeout_min = 3 * crate::protocol::LEADER_HEARTBEAT_TICKS * TICK_MS;
        if !(leader_timeout_min..=600_000).contains(&self.leader_timeout_ms) {
            return Err(wrong(
                "leader_timeout_ms",
                format!(
                    "{} is outside {leader_timeout_min}..=600000 (three leader heartbeats at least)",
                    self.leader_timeout_ms
                ),
            ));
        }
        if !(16..=1 << 20).contains(&self.decided_window_max) {
            return Err(wrong(
                "decided_window_max",
                format!("{} is outside 16..=1048576", self.decided_window_max),
            ));
        }
        if self.batch_requests_max == 0 {
            return Err(wrong("batch_requests_max", "must be at least 1".into()));
        }
        if self.wal_preallocate.parse::<dura_wal::io::Preallocate>().is_err() {
            return Err(wrong(
                "wal_preallocate",
                format!("{:?} is not one of zeroed, fallocate, sparse", self.wal_preallocate),
            ));
        }
        let period_min = 2 * u64::from(self.n().max(1));
        if !(period_min..=CHECKPOINT_PERIOD_MAX).contains(&self.checkpoint_period) {
            return Err(wrong(
                "checkpoint_period",
                format!(
                    "{} is outside {period_min}..={CHECKPOINT_PERIOD_MAX} (at least 2n requests)",
                    self.checkpoint_period
                ),
            ));
        }
        self.wal_durability_mode()?;
        // A segment holds the largest group (the log's 8 MiB group buffer) plus its seal.
        if !(16..=4096).contains(&self.wal_segment_mib) {
            return Err(wrong(
                "wal_segment_mib",
                format!(
                    "{} is outside 16..=4096 (a segment must hold the log's largest group write)",
                    self.wal_segment_mib
                ),
            ));
        }
        if self.frame_bytes_max < 64 * 1024 {
            return Err(wrong("frame_bytes_max", "must be at least 65536".into()));
        }
        // Every other replica needs a link, and a cluster with no room for a client
        // serves nobody; past 65,536 the threads alone would exhaust a process.
        let connections_min = self.n();
        if !(connections_min..=65_536).contains(&self.connections_max) {
            return Err(wrong(
                "connections_max",
                format!("must be within {connections_min}..=65536 (at least n)"),
            ));
        }
        if !(1..=crate::service::CLIENTS_MAX_LIMIT).contains(&(self.clients_max as usize)) {
            return Err(wrong(
                "clients_max",
                format!(
                    "{} is outside 1..={} (each remembered client holds its last reply)",
                    self.clients_max,
                    crate::service::CLIENTS_MAX_LIMIT
                ),
            ));
        }
        if self.transfer_bytes_per_s_max < TRANSFER_BYTES_PER_S_MIN {
            return Err(wrong(
                "transfer_bytes_per_s_max",
                format!(
                    "{} bytes/s is below the minimum of {TRANSFER_BYTES_PER_S_MIN} (1 MiB/s: one \
                     data-path chunk per second); 0 would stall every state transfer",
                    self.transfer_bytes_per_s_max
                ),
            ));
        }
        if !(1..=TRANSFER_STREAMS_MAX_MAX).contains(&self.transfer_streams_max) {
            return Err(wrong(
                "transfer_streams_max",
                format!(
                    "{} is outside 1..={TRANSFER_STREAMS_MAX_MAX} (each stream holds a thread \
                     and a socket; 0 would refuse every transfer)",
                    self.transfer_streams_max
                ),
            ));
        }
        Ok(())
    }

    /// The log's durability mode, `wal_durability` parsed: one of `direct-dsync`,
    /// `dsync`, `fdatasync` (the log's never-synced mode is `log_mode = "async"`).
    pub fn wal_durability_mode(&self) -> Result<dura_wal::io::DurabilityMode, RuntimeError> {
        use dura_wal::io::DurabilityMode;
        match self.wal_durability.parse::<DurabilityMode>() {
            Ok(mode) if mode.is_durable() => Ok(mode),
            _ => Err(RuntimeError::Config {
                field: "wal_durability".into(),
                reason: format!(
                    "{:?} is not one of direct-dsync, dsync, fdatasync (a log that never \
                     syncs is log_mode = \"async\")",
                    self.wal_durability
                ),
            }),
        }
    }

    /// Checks what replica `id` needs from the file system: its data directory exists
    /// (created if missing) and is writable.
    pub fn validate_replica(&self, id: u32) -> Result<(), RuntimeError> {
        let replica = self.replica(id)?;
        let dir = &replica.data_dir;
        let wrong = |reason: String| RuntimeError::Config {
            field: format!("replica[{id}].data_dir"),
            reason: format!("{}: {reason}", dir.display()),
        };
        std::fs::create_dir_all(dir).map_err(|e| wrong(format!("cannot create: {e}")))?;
        let probe = dir.join(".dura-write-probe");
        std::fs::write(&probe, b"probe").map_err(|e| wrong(format!("not writable: {e}")))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }

    /// A config for `n` replicas on 127.0.0.1 with free ports (each bound to port 0 and
    /// released; a race with another process is possible but rare), data dirs
    /// `data_dir/r<id>`, and fixed test keys. `n` must match `mode` for some f.
    pub fn local(
        n: u32,
        mode: Mode,
        log_mode: LogMode,
        data_dir: &Path,
    ) -> Result<Self, RuntimeError> {
        let f = mode.f_max(n as usize);
        if f == 0 || mode.replicas_min(f) != n as usize {
            return Err(RuntimeError::Config {
                field: "n".into(),
                reason: format!(
                    "{n} replicas do not fit mode {mode} (3f+1 for bft, 2f+1 for crash, f >= 1)"
                ),
            });
        }
        let f = f as u32;
        let ports = free_ports(3 * n as usize)?;
        Ok(Self::local_with_ports(f, mode, log_mode, data_dir, &ports))
    }

    /// Like [`ClusterConfig::local`] with the ports given: replica i uses `ports[2i]`
    /// for replica links and `ports[2i+1]` for clients, and `ports[2n+i]` for state
    /// transfer's data path when `ports` holds 3n (with 2n, no replica has a data path).
    pub fn local_with_ports(
        f: u32,
        mode: Mode,
        log_mode: LogMode,
        data_dir: &Path,
        ports: &[u16],
    ) -> Self {
        let n = mode.replicas_min(f as usize) as u32;
        assert!(ports.len() >= 2 * n as usize, "two ports per replica");
        // A data path for every replica or for none: half a cluster that can transfer
        // state is a config nobody meant.
        let transfer_ports = ports.get(2 * n as usize..3 * n as usize);
        let replicas = (0..n)
            .map(|id| ReplicaConfig {
                id,
                host: "127.0.0.1".into(),
                replica_port: ports[2 * id as usize],
                client_port: ports[2 * id as usize + 1],
                metrics_port: None,
                transfer_port: transfer_ports.map(|ports| ports[id as usize]),
                data_dir: data_dir.join(format!("r{id}")),
                tls_cert_file: None,
                tls_key_file: None,
            })
            .collect();
        Self {
            f,
            mode,
            log_mode,
            pin_cores: true,
            replica_key: "64757261207265706c696361206c696e6b206b6579".into(),
            client_key: "64757261206c6f63616c20636c69656e74206b6579".into(),
            request_timeout_ms: default_request_timeout_ms(),
            leader_timeout_ms: default_leader_timeout_ms(),
            decided_window_max: default_decided_window_max(),
            batch_requests_max: default_batch_requests_max(),
            frame_bytes_max: default_frame_bytes_max(),
            connections_max: default_connections_max(),
            clients_max: default_clients_max(),
            log_backend: LogBackendKind::Wal,
            wal_segment_mib: 64,
            // Until checkpoints let old segments be recycled, every segment is new:
            // zero-filling it doubles the bytes written (measured: parallel/none 0.83-0.88
            // zeroed, 0.97-1.02 fallocate, BFT n=4, 4 KiB values, 2 cores).
            wal_preallocate: "fallocate".into(),
            checkpoint_schedule: CheckpointScheduleKind::default(),
            checkpoint_period: CHECKPOINT_PERIOD_DEFAULT,
            checkpoint_write: CheckpointWrite::default(),
            wal_durability: default_wal_durability(),
            wal_trust_dsync: false,
            transfer_bytes_per_s_max: TRANSFER_BYTES_PER_S_MAX_DEFAULT,
            transfer_streams_max: TRANSFER_STREAMS_MAX_DEFAULT,
            transfer_protocol: TransferProtocol::Cst,
            tls: None,
            replicas,
        }
    }
}

/// Where [`free_ports`] looks first: below Linux's default ephemeral range
/// (32768-60999), from which outgoing connections take their source ports. A port
/// picked there by binding port 0 and released could be taken by any process's next
/// connection before the replica binds it (tests in parallel processes saw
/// `AddrInUse`); ports here are taken only by an explicit bind.
pub const LOCAL_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Most ports one process reserves (see [`free_ports`]); past it, ports are still
/// picked, only not reserved.
pub const RESERVED_PORTS_MAX: usize = 4096;

/// The lock files of the ports this process reserved, held open (and locked) until it
/// exits.
static RESERVED_PORTS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// Reserves `port` for this process, across processes: an exclusive lock on the file
/// `dura-ports/<port>` in the temp dir, held until the process exits. False when another
/// process (or an earlier call here) holds it. Where the lock files cannot be made, or
/// this process holds [`RESERVED_PORTS_MAX`] already, every port counts as free. The
/// files stay empty and are never synced: only the lock, which dies with the process,
/// means anything.
fn reserve_port(port: u16) -> bool {
    let mut reserved = RESERVED_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if reserved.len() >= RESERVED_PORTS_MAX {
        return true;
    }
    let dir = std::env::temp_dir().join("dura-ports");
    let _ = std::fs::create_dir_all(&dir);
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        return true;
    };
    match file.try_lock() {
        Ok(()) => {
            reserved.push(file);
            true
        }
        Err(std::fs::TryLockError::WouldBlock) => false,
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (bound together, then released):
/// random ones in [`LOCAL_PORTS`], each checked by binding it; ports the OS picks when
/// too few are found there. A port picked in [`LOCAL_PORTS`] stays reserved for this
/// process until it exits (a lock file, see `reserve_port`): a test or bench that stops
/// and starts its replicas again on the same ports cannot lose one meanwhile to another
/// process's pick (parallel test processes saw `AddrInUse` so).
pub fn free_ports(count: usize) -> Result<Vec<u16>, RuntimeError> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut rng = dura_core::rng::Rng::new(seed);
    let span = u64::from(LOCAL_PORTS.end - LOCAL_PORTS.start);
    let mut listeners = Vec::with_capacity(count);
    let mut tries = 0;
    while listeners.len() < count && tries < 64 * count {
        tries += 1;
        let port = LOCAL_PORTS.start + rng.below(span) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port))
            && reserve_port(port)
        {
            listeners.push(listener);
        }
    }
    while listeners.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| RuntimeError::Net {
            operation: "bind a free port",
            peer: "127.0.0.1:0".into(),
            error,
        })?;
        listeners.push(listener);
    }
    listeners
        .iter()
        .map(|l| {
            l.local_addr().map(|a| a.port()).map_err(|error| RuntimeError::Net {
                operation: "read a bound port",
                peer: "127.0.0.1:0".into(),
                error,
            })
        })
        .collect()
}

fn decode_key(hex: &str, field: &str) -> Result<Vec<u8>, RuntimeError> {
    let wrong = |reason: String| RuntimeError::Config { field: field.into(), reason };
    if hex.is_empty() {
        return Err(wrong("missing key (hex string)".into()));
    }
    if !hex.len().is_multiple_of(2) {
        return Err(wrong("hex string has an odd number of digits".into()));
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks(2) {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(wrong(format!("{:?} is not a hex digit", c as char))),
        };
        bytes.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    if bytes.len() < KEY_BYTES_MIN {
        return Err(wrong(format!("{} bytes, at least {KEY_BYTES_MIN} needed", bytes.len())));
    }
    Ok(bytes)
}

impl ClusterConfig {
    fn ring(&self, key_material: &[u8], label: &[u8]) -> KeyRing {
        let master = mac(&[0u8; 32], &[b"dura-master", label, key_material]);
        KeyRing::new(master, self.replicas.len())
    }

    /// The protocol's view of this config.
    pub fn protocol_config(&self) -> ProtocolConfig {
        let mut config = ProtocolConfig::with_mode(self.mode, self.replicas.len(), self.f as usize);
        config.batch_requests_max = self.batch_requests_max as usize;
        config.tick_ms = TICK_MS;
        config.request_timeout_ticks = self.request_timeout_ms.div_ceil(TICK_MS).max(1);
        config.leader_silence_ticks = self.leader_timeout_ms.div_ceil(TICK_MS);
        config.decided_window_max = self.decided_window_max;
        config.operation_bytes_max = self.operation_bound().operation_bytes_max;
        config.clients_max = self.clients_max as usize;
        config
    }

    /// What a client needs to know about the cluster.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            mode: self.mode,
            n: self.replicas.len(),
            f: self.f as usize,
            retransmit_timeout_ms: self.request_timeout_ms,
        }
    }

    /// The keys replica `id` holds: link keys derived from `replica_key`, the client
    /// secret from `client_key`.
    pub fn replica_keys(&self, id: u32) -> Result<ReplicaKeys, RuntimeError> {
        let links = self.ring(&self.replica_key_bytes()?, b"links").replica_keys(id).links;
        let client_secret =
            self.ring(&self.client_key_bytes()?, b"clients").replica_keys(id).client_secret;
        Ok(ReplicaKeys { id, links, client_secret })
    }

    /// The keys client `client_id` holds (derived from `client_key`).
    pub fn client_keys(&self, client_id: u64) -> Result<ClientKeys, RuntimeError> {
        Ok(self.ring(&self.client_key_bytes()?, b"clients").client_keys(client_id))
    }
}

/// Period of the protocol's tick timer.
pub const TICK_MS: u64 = 50;

/// The largest operation one request may carry in a cluster, and what sets it.
///
/// A request travels through several bounded stages; the smallest bound wins.
/// [`ClusterConfig::operation_bound`] computes it so that clients can refuse an
/// oversized operation before sending it, with an error naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationBound {
    /// Largest operation, in bytes.
    pub operation_bytes_max: usize,
    /// The limit that sets it, in words an operator can act on (the config field,
    /// when one is).
    pub set_by: &'static str,
}

impl fmt::Display for OperationBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes per operation, set by {}", self.operation_bytes_max, self.set_by)
    }
}

/// Bytes a [`ClientRequest`](crate::protocol::ClientRequest) adds around its operation
/// in a cluster of `n`: client id, sequence, operation length, authenticator length and
/// one MAC per replica.
fn request_overhead_bytes(n: usize) -> usize {
    8 + 8 + 4 + 4 + n * crate::protocol::auth::MAC_BYTES
}

/// Bytes of a STOPDATA frame besides its batches: sender id, tag, regency, the fixed
/// part of the collect data with `COLLECT_WRITES_MAX` writes, the value count, the MAC.
const STOPDATA_FRAME_OVERHEAD_BYTES: usize = 4
    + 1
    + 8
    + (8 + 1 + 32 + 1 + 8 + 32 + 4 + crate::protocol::message::COLLECT_WRITES_MAX * (32 + 8) + 4)
    + crate::protocol::auth::MAC_BYTES;

impl ClusterConfig {
    /// The largest operation a client may submit to this cluster, and which limit sets
    /// it. The limits, for one request alone in its batch (a larger request always goes
    /// alone):
    ///
    /// - the protocol's decoders: `OPERATION_BYTES_MAX`;
    /// - `frame_bytes_max`: a leader change (STOPDATA) carries up to
    ///   `COLLECT_VALUES_MAX` batches in one frame, each possibly this one request;
    /// - the log record of a batch when `log_backend = "wal"`: dura-wal's default
    ///   `record_bytes_max` (not configurable), whatever the `log_mode` (a replica may
    ///   be started with another log mode than the config's); the `file` backend's
    ///   record bound is far larger.
    pub fn operation_bound(&self) -> OperationBound {
        use crate::protocol::message::{COLLECT_VALUES_MAX, OPERATION_BYTES_MAX};
        let request = request_overhead_bytes(self.replicas.len());
        // A log record: agreement id, part index, part count, then the batch (count,
        // then the request).
        let record_overhead = 8 + 4 + 4 + 4 + request;
        let frame = (self.frame_bytes_max as usize).saturating_sub(STOPDATA_FRAME_OVERHEAD_BYTES)
            / COLLECT_VALUES_MAX;
        let frame = frame.saturating_sub(4 + request);
        let log = match self.log_backend {
            LogBackendKind::Wal => (
                dura_wal::RECORD_BYTES_MAX_DEFAULT.saturating_sub(record_overhead),
                "the log's record bound (dura-wal record_bytes_max, log_backend = \"wal\"; \
                 not a config field)",
            ),
            LogBackendKind::File => (
                super::filelog::RECORD_PAYLOAD_BYTES_MAX.saturating_sub(record_overhead),
                "the file log's record bound (log_backend = \"file\"; not a config field)",
            ),
        };
        let candidates = [
            (OPERATION_BYTES_MAX, "the protocol's OPERATION_BYTES_MAX (not a config field)"),
            (
                frame,
                "config field `frame_bytes_max` (a leader change carries up to 3 batches in one \
                 frame)",
            ),
            log,
        ];
        let (operation_bytes_max, set_by) =
            candidates.into_iter().min_by_key(|(bytes, _)| *bytes).expect("three candidates");
        OperationBound { operation_bytes_max, set_by }
    }
}

const _: () = assert!(crate::protocol::message::COLLECT_VALUES_MAX == 3, "named in set_by");

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterConfig {
        ClusterConfig::local_with_ports(
            1,
            Mode::Bft,
            LogMode::Parallel,
            Path::new("/tmp/x"),
            &[7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007],
        )
    }

    #[test]
    fn local_config_round_trips_through_toml() {
        let config = sample();
        let text = config.to_toml();
        assert_eq!(ClusterConfig::from_toml(&text).expect("valid"), config);
    }

    #[test]
    fn wrong_replica_count_for_mode_names_the_field() {
        let mut config = sample();
        config.mode = Mode::Crash;
        let error = config.validate().expect_err("4 replicas is not 2f+1 for f=1");
        assert!(error.to_string().contains("replica"), "{error}");
        assert!(error.to_string().contains("needs exactly 3"), "{error}");
    }

    #[test]
    fn clients_max_defaults_when_absent_and_is_bounded() {
        let text: String = sample()
            .to_toml()
            .lines()
            .filter(|line| !line.starts_with("clients_max"))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = ClusterConfig::from_toml(&text).expect("an old config without the field");
        assert_eq!(config.clients_max as usize, crate::service::CLIENTS_MAX_DEFAULT);
        for wrong in [0, crate::service::CLIENTS_MAX_LIMIT as u32 + 1] {
            let mut config = sample();
            config.clients_max = wrong;
            let error = config.validate().expect_err("out of range");
            assert!(error.to_string().contains("clients_max"), "{error}");
        }
    }

    #[test]
    fn connections_max_defaults_when_absent_and_must_leave_room_for_every_replica() {
        let text: String = sample()
            .to_toml()
            .lines()
            .filter(|line| !line.starts_with("connections_max"))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = ClusterConfig::from_toml(&text).expect("an old config without the field");
        assert_eq!(config.connections_max, 1_024);
        let mut config = sample();
        config.connections_max = config.n() - 1;
        let error = config.validate().expect_err("no room for the other replicas");
        assert!(error.to_string().contains("connections_max"), "{error}");
        config.connections_max = config.n();
        config.validate().expect("n is enough");
        config.connections_max = 65_537;
        assert!(config.validate().is_err());
    }

    #[test]
    fn duplicate_id_and_missing_key_are_rejected() {
        let mut config = sample();
        config.replicas[1].id = 0;
        assert!(config.validate().expect_err("dup").to_string().contains("duplicate id 0"));
        let mut config = sample();
        config.client_key.clear();
        assert!(config.validate().expect_err("no key").to_string().contains("client_key"));
        let mut config = sample();
        config.wal_preallocate = "eagerly".into();
        assert!(
            config.validate().expect_err("bad prealloc").to_string().contains("wal_preallocate")
        );
        let mut config = sample();
        config.replica_key = "zz".repeat(20);
        assert!(config.validate().expect_err("bad hex").to_string().contains("replica_key"));
    }

    #[test]
    fn wal_durability_defaults_parses_each_mode_and_names_the_field_when_wrong() {
        use dura_wal::io::DurabilityMode;
        let text: String = sample()
            .to_toml()
            .lines()
            .filter(|line| !line.starts_with("wal_durability") && !line.starts_with("wal_trust"))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = ClusterConfig::from_toml(&text).expect("an old config without the fields");
        assert_eq!(config.wal_durability_mode().expect("default"), DurabilityMode::DirectDsync);
        assert!(!config.wal_trust_dsync);
        for mode in [DurabilityMode::DirectDsync, DurabilityMode::Dsync, DurabilityMode::Fdatasync]
        {
            let text = text.replacen(
                "wal_segment_mib",
                &format!("wal_durability = \"{mode}\"\nwal_trust_dsync = true\nwal_segment_mib"),
                1,
            );
            let config = ClusterConfig::from_toml(&text).expect("a named mode");
            assert_eq!(config.wal_durability_mode().expect("valid"), mode);
            assert!(config.wal_trust_dsync);
            assert_eq!(ClusterConfig::from_toml(&config.to_toml()).expect("round trip"), config);
        }
        for wrong in ["fsync", "async-unsafe", "DSYNC", ""] {
            let mut config = sample();
            config.wal_durability = wrong.into();
            let error = config.validate().expect_err("not a durable mode").to_string();
            assert!(error.contains("wal_durability"), "{error}");
            assert!(error.contains("direct-dsync, dsync, fdatasync"), "{error}");
        }
    }

    #[test]
    fn metrics_port_is_optional_checked_and_round_trips() {
        let mut config = sample();
        assert!(!config.to_toml().contains("metrics_port"), "off by default");
        config.replicas[0].metrics_port = Some(9100);
        assert_eq!(ClusterConfig::from_toml(&config.to_toml()).expect("valid"), config);
        config.replicas[1].metrics_port = Some(0);
        let error = config.validate().expect_err("port 0").to_string();
        assert!(error.contains("replica[1].metrics_port"), "{error}");
        config.replicas[1].metrics_port = Some(config.replicas[1].client_port);
        let error = config.validate().expect_err("port used twice").to_string();
        assert!(error.contains("replica[1].metrics_port"), "{error}");
        assert!(error.contains("used twice"), "{error}");
    }

    #[test]
    fn transfer_fields_default_when_absent_and_an_old_config_has_no_data_path() {
        let text: String = sample()
            .to_toml()
            .lines()
            .filter(|line| !line.starts_with("transfer_"))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = ClusterConfig::from_toml(&text).expect("an old config without the fields");
        assert_eq!(config.transfer_bytes_per_s_max, 256 << 20);
        assert_eq!(config.transfer_streams_max, 2);
        assert_eq!(config.replicas[1].transfer_port, None, "two ports per replica: none");
        let error = config.replicas[1].transfer_addr().expect_err("no data path").to_string();
        assert!(error.contains("replica[1].transfer_port"), "{error}");
        assert!(error.contains("not set"), "{error}");
    }

    #[test]
    fn transfer_fields_round_trip_through_a_saved_file() {
        let ports: Vec<u16> = (7000..7012).collect();
        let mut config = ClusterConfig::local_with_ports(
            1,
            Mode::Bft,
            LogMode::Parallel,
            Path::new("/x"),
            &ports,
        );
        assert_eq!(config.replicas[3].transfer_port, Some(7011), "ports[2n + i]");
        config.transfer_bytes_per_s_max = 3 << 20;
        config.transfer_streams_max = 16;
        config.replicas[2].transfer_port = None;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cluster.toml");
        config.save(&path).expect("save");
        let loaded = ClusterConfig::load(&path).expect("load");
        assert_eq!(loaded, config);
        assert_eq!(loaded.replicas[0].transfer_addr().expect("set").port(), 7008);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("transfer_bytes_per_s_max = 3145728"), "{text}");
        assert!(text.contains("transfer_streams_max = 16"), "{text}");
    }

    #[test]
    fn local_config_gives_every_replica_its_own_free_transfer_port() {
        let config =
            ClusterConfig::local(4, Mode::Bft, LogMode::None, Path::new("/x")).expect("free ports");
        let mut seen = BTreeSet::new();
        for replica in &config.replicas {
            let port = replica.transfer_port.expect("local clusters have a data path");
            assert!(seen.insert(port), "{port} given twice");
            assert!(port != replica.replica_port && port != replica.client_port);
        }
        config.validate().expect("valid");
    }

    #[test]
    fn transfer_fields_out_of_range_are_rejected_naming_the_field() {
        let mut config = sample();
        config.transfer_bytes_per_s_max = 0;
        let error = config.validate().expect_err("0 bytes/s").to_string();
        assert!(error.contains("transfer_bytes_per_s_max"), "{error}");
        assert!(error.contains("would stall"), "{error}");
        config.transfer_bytes_per_s_max = TRANSFER_BYTES_PER_S_MIN - 1;
        assert!(config.validate().is_err());
        config.transfer_bytes_per_s_max = TRANSFER_BYTES_PER_S_MIN;
        config.validate().expect("the minimum is accepted");
        for streams in [0, TRANSFER_STREAMS_MAX_MAX + 1] {
            config.transfer_streams_max = streams;
            let error = config.validate().expect_err("out of range").to_string();
            assert!(error.contains("transfer_streams_max"), "{error}");
            assert!(error.contains("1..=16"), "{error}");
        }
        config.transfer_streams_max = TRANSFER_STREAMS_MAX_MAX;
        config.validate().expect("the maximum is accepted");
        config.replicas[1].transfer_port = Some(0);
        let error = config.validate().expect_err("port 0").to_string();
        assert!(error.contains("replica[1].transfer_port"), "{error}");
        config.replicas[1].transfer_port = Some(config.replicas[1].replica_port);
        let error = config.validate().expect_err("port used twice").to_string();
        assert!(error.contains("replica[1].transfer_port"), "{error}");
        assert!(error.contains("used twice"), "{error}");
    }

    #[test]
    fn mode_is_written_and_read_by_its_lowercase_name() {
        let ports = [7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007];
        for mode in [Mode::Bft, Mode::Crash] {
            let config = ClusterConfig::local_with_ports(
                1,
                mode,
                LogMode::Parallel,
                Path::new("/x"),
                &ports,
            );
            let text = config.to_toml();
            assert!(text.contains(&format!("mode = \"{mode}\"")), "{text}");
            assert_eq!(ClusterConfig::from_toml(&text).expect("parses").mode, mode);
        }
        let text = sample().to_toml().replace("mode = \"bft\"", "mode = \"byzantine\"");
        let error = ClusterConfig::from_toml(&text).expect_err("bad mode");
        assert!(error.to_string().contains("byzantine"), "{error}");
    }

    #[test]
    fn a_picked_port_stays_reserved_until_the_process_exits() {
        let first = free_ports(8).expect("ports");
        let second = free_ports(8).expect("ports");
        let distinct: BTreeSet<u16> = first.iter().chain(&second).copied().collect();
        assert_eq!(distinct.len(), 16, "{first:?} {second:?}");
        // Nothing listens on them now, yet they are not picked again: another process
        // (or a later call) finds each one's lock taken.
        for &port in first.iter().filter(|port| LOCAL_PORTS.contains(port)) {
            assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "released {port}");
            assert!(!reserve_port(port), "{port} is reserved");
        }
    }

    #[test]
    fn local_cluster_sizes_must_fit_the_mode() {
        let dir = Path::new("/tmp/x");
        for (n, mode) in [(4, Mode::Crash), (5, Mode::Bft), (1, Mode::Crash), (0, Mode::Bft)] {
            let error = ClusterConfig::local(n, mode, LogMode::None, dir).expect_err("no fit");
            assert!(error.to_string().contains("do not fit"), "{error}");
        }
    }

    #[test]
    fn unknown_log_mode_in_toml_is_an_error() {
        let text = sample().to_toml().replace("\"parallel\"", "\"sometimes\"");
        let error = ClusterConfig::from_toml(&text).expect_err("bad mode");
        assert!(error.to_string().contains("sometimes"), "{error}");
    }

    #[test]
    fn operation_bound_is_the_smallest_stage_bound_and_names_it() {
        let mut config = sample();
        let bound = config.operation_bound();
        // Defaults: 32 MiB frames allow about 10.6 MiB per request, so the log's
        // 8 MiB record bound is the smaller.
        assert!(bound.operation_bytes_max > 8 << 20, "{bound}");
        assert!(bound.operation_bytes_max < dura_wal::RECORD_BYTES_MAX_DEFAULT, "{bound}");
        assert!(bound.set_by.contains("record"), "{bound}");
        config.frame_bytes_max = 3 << 20;
        let bound = config.operation_bound();
        assert!(bound.operation_bytes_max < 1 << 20, "{bound}");
        assert!(bound.operation_bytes_max > (1 << 20) - 4096, "{bound}");
        assert!(bound.to_string().contains("frame_bytes_max"), "{bound}");
    }

    #[test]
    fn unwritable_data_dir_is_reported_for_that_replica() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let mut config = sample();
        config.replicas[2].data_dir = file.path().join("sub");
        let error = config.validate_replica(2).expect_err("a file is not a directory");
        assert!(error.to_string().contains("replica[2].data_dir"), "{error}");
    }
}
