//! `dura-kvstore`: SCKV-Store, the paper's durable key-value store, as a dura service.
//!
//! - [`KvStore`]: the service (a sorted map; canonical SHA-256 state digest).
//! - [`ops`]: the binary encoding of operations and replies.
//! - [`KvClient`]: put, get, delete, compare-and-swap and ordered range scans against
//!   a cluster.
//! - [`serve`] / [`start`]: run a replica (blocking until a signal, or in-process).
//! - [`pki`]: a CA and certificates for a cluster with TLS.
#![forbid(unsafe_code)]

pub mod client;
pub mod ops;
pub mod store;

pub use client::{KvClient, KvError};
/// A CA and certificates for a cluster with TLS (the runtime's, kept at this path).
pub use dura_engine::runtime::pki;
pub use dura_engine::runtime::{
    Bootstrap, ClusterConfig, LogMode, Mode, ReplicaHandle, ReplicaOptions, RuntimeError,
};
pub use ops::{CodecError, KvOp, KvReply, ScanPage};
pub use store::KvStore;

/// Starts replica `replica_id` of `config` in this process with an empty store (the
/// log, if any, is replayed into it). Dropping or stopping the handle stops it.
pub fn start(config: &ClusterConfig, replica_id: u32) -> Result<ReplicaHandle, RuntimeError> {
    dura_engine::runtime::start_replica(
        config,
        replica_id,
        KvStore::new(),
        ReplicaOptions::default(),
    )
}

/// Runs replica `replica_id` of `config` until SIGTERM or SIGINT, then shuts down
/// gracefully (the in-flight log write completes). The body of `dura-kv serve`. With an
/// empty data dir it first waits up to [`dura_engine::runtime::PEERS_WAIT_PROCESS`]
/// (a first start, [`Bootstrap::New`]) or [`dura_engine::runtime::PEERS_WAIT_EXISTING`]
/// for its peers to say whether the cluster holds a state (it takes it from them if so);
/// `bootstrap` says whether it may begin a new cluster when none does
/// ([`Bootstrap::Existing`]: it refuses to start with [`RuntimeError::NoState`]). A
/// replica that falls behind every peer's catch-up window restarts through state
/// transfer ([`dura_engine::runtime::serve_replica`]).
pub fn serve(
    config: &ClusterConfig,
    replica_id: u32,
    bootstrap: Bootstrap,
) -> Result<(), RuntimeError> {
    serve_with(config, replica_id, ReplicaOptions { bootstrap, ..ReplicaOptions::default() })
}

/// [`serve`] with options (`dura-kv serve --lost`: replicas declared gone for good,
/// which recovery after a crash of every replica does not wait for).
pub fn serve_with(
    config: &ClusterConfig,
    replica_id: u32,
    options: ReplicaOptions,
) -> Result<(), RuntimeError> {
    let options = ReplicaOptions {
        peers_wait: match options.bootstrap {
            Bootstrap::New => dura_engine::runtime::PEERS_WAIT_PROCESS,
            Bootstrap::Existing | Bootstrap::ForceNew => dura_engine::runtime::PEERS_WAIT_EXISTING,
        },
        ..options
    };
    dura_engine::runtime::serve_replica_until_signal(config, replica_id, KvStore::new, options)
        .map(|_| ())
}
