//! Durable DepSpace (the tuple space) as a benchmark target: [`connector`] opens runtime
//! clients that carry encoded tuple space operations (one per client thread),
//! [`serve_replica`] runs one replica in this process (the hidden `dura-bench replica
//! --service tuplespace` subcommand the local cluster starts).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use dura_engine::runtime::{Bootstrap, Client, ClientOptions, ClusterConfig, ReplicaOptions};
use dura_tuplespace::{Op, Reply, TupleSpace};

use dura_bench::target::{TargetError, TargetFactory};
use dura_bench::tuplespace::{TsConnect, TsTarget, TupleSpaceFactory};

/// Benchmark clients that share one runtime [`Client`], as the key-value store's do
/// (see [`crate::kv::THREADS_PER_KV_CLIENT`]).
pub const THREADS_PER_TS_CLIENT: usize = crate::kv::THREADS_PER_KV_CLIENT;

/// Hands each benchmark client a clone of a shared [`Client`], one per
/// [`THREADS_PER_TS_CLIENT`] client threads (one protocol session per thread).
#[derive(Debug)]
pub struct TsClients {
    config: ClusterConfig,
    request_timeout: Duration,
    clients: Mutex<Vec<Client>>,
}

struct TsClient {
    client: Client,
    operation_bytes_max: usize,
}

fn failed(operation: &'static str, error: impl std::fmt::Display) -> TargetError {
    TargetError { operation, reason: error.to_string() }
}

/// The name of `op` for error messages.
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Out { .. } => "out",
        Op::Rdp { .. } => "rdp",
        Op::Inp { .. } => "inp",
        Op::Rd { .. } => "rd",
        Op::In { .. } => "in",
        Op::Cas { .. } => "cas",
        Op::Replace { .. } => "replace",
        Op::RdAll { .. } => "rd_all",
        Op::InAll { .. } => "in_all",
        Op::Count { .. } => "count",
        Op::Renew { .. } => "renew",
        Op::Cancel { .. } => "cancel",
    }
}

impl TsTarget for TsClient {
    fn call(&mut self, op: &Op) -> Result<Reply, TargetError> {
        let name = op_name(op);
        let bytes = dura_tuplespace::encode_op(op);
        if bytes.len() > self.operation_bytes_max {
            return Err(failed(
                name,
                format!(
                    "operation of {} bytes is over this cluster's bound of {}",
                    bytes.len(),
                    self.operation_bytes_max
                ),
            ));
        }
        let reply = self.client.invoke(bytes).map_err(|error| failed(name, error))?;
        dura_tuplespace::decode_reply(&reply).map_err(|error| failed(name, error))
    }
}

impl TsConnect for TsClients {
    fn connect_ts(&self, client_index: usize) -> Result<Box<dyn TsTarget>, TargetError> {
        let mut shared = self.clients.lock().expect("tuple space client lock");
        let wanted = client_index / THREADS_PER_TS_CLIENT;
        while shared.len() <= wanted {
            let mut options = ClientOptions::new();
            options.request_timeout = self.request_timeout;
            options.sessions_max = THREADS_PER_TS_CLIENT;
            let client = Client::connect_with(&self.config, options)
                .map_err(|error| failed("connect", error))?;
            shared.push(client);
        }
        Ok(Box::new(TsClient {
            client: shared[wanted].clone(),
            operation_bytes_max: self.config.operation_bound().operation_bytes_max,
        }))
    }
}

/// The [`dura_bench::runner::Connector`] for the tuple space.
pub fn connector(
    config: &ClusterConfig,
    request_timeout: Duration,
) -> anyhow::Result<Box<dyn TargetFactory>> {
    Ok(Box::new(TupleSpaceFactory(TsClients {
        config: config.clone(),
        request_timeout,
        clients: Mutex::new(Vec::new()),
    })))
}

/// Runs tuple space replica `id` of the cluster in `config_path` until it is shut down
/// or the parent benchmark goes away, as [`crate::kv::serve_replica`] does for the
/// key-value store (the same start-up waits for peers).
pub fn serve_replica(config_path: &Path, id: u32, new_cluster: bool) -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    dura_bench::cluster::exit_when_parent_goes();
    let config = ClusterConfig::load(config_path)?;
    let (bootstrap, peers_wait) = if new_cluster {
        (Bootstrap::New, dura_engine::runtime::PEERS_WAIT_PROCESS)
    } else {
        (Bootstrap::Existing, dura_engine::runtime::PEERS_WAIT_EXISTING)
    };
    let options = ReplicaOptions { bootstrap, peers_wait, ..ReplicaOptions::default() };
    dura_engine::runtime::serve_replica_until_signal(&config, id, TupleSpace::new, options)?;
    Ok(())
}
