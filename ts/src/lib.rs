//! `dura-ts`: Durable DepSpace as a replicated service. The tuple space's state machine
//! is `dura_tuplespace` (no I/O); this crate runs it on dura's runtime: [`serve_with`]
//! (the replica, the body of `dura-ts serve`), [`TsClient`] (typed blocking calls, with a
//! timeout on `rd`/`in` that cancels through ordering) and the `dura-ts` command line.
#![forbid(unsafe_code)]

pub mod client;

pub use client::{CasOutcome, TsClient, TsError};

/// Runs replica `replica_id` of `config` with an empty tuple space until SIGTERM or
/// SIGINT (the body of `dura-ts serve`; see `dura_kvstore::serve_with` for the
/// bootstrap rules, which are the runtime's and the same here).
pub fn serve_with(
    config: &dura_engine::runtime::ClusterConfig,
    replica_id: u32,
    options: dura_engine::runtime::ReplicaOptions,
) -> Result<(), dura_engine::runtime::RuntimeError> {
    use dura_engine::runtime::{Bootstrap, PEERS_WAIT_EXISTING, PEERS_WAIT_PROCESS};
    let options = dura_engine::runtime::ReplicaOptions {
        peers_wait: match options.bootstrap {
            Bootstrap::New => PEERS_WAIT_PROCESS,
            Bootstrap::Existing | Bootstrap::ForceNew => PEERS_WAIT_EXISTING,
        },
        ..options
    };
    dura_engine::runtime::serve_replica_until_signal(
        config,
        replica_id,
        dura_tuplespace::TupleSpace::new,
        options,
    )
    .map(|_| ())
}
