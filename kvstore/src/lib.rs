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
pub mod pki;
pub mod store;

pub use client::{KvClient, KvError};
pub use dura_engine::runtime::{
    ClusterConfig, LogMode, Mode, ReplicaHandle, ReplicaOptions, RuntimeError,
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
/// empty data dir it first waits up to [`dura_engine::runtime::PEERS_WAIT_PROCESS`] for
/// its peers to say whether the cluster holds a state (it takes it from them if so).
pub fn serve(config: &ClusterConfig, replica_id: u32) -> Result<(), RuntimeError> {
    let options = ReplicaOptions {
        peers_wait: dura_engine::runtime::PEERS_WAIT_PROCESS,
        ..ReplicaOptions::default()
    };
    dura_engine::runtime::start_replica(config, replica_id, KvStore::new(), options)?
        .run_until_signal()
}
