//! The SCKV-Store as a benchmark target: [`connector`] opens `dura_kvstore::KvClient`s
//! (one per client thread), [`serve_replica`] runs one replica in this process (the
//! hidden `dura-bench replica` subcommand the local cluster starts).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use dura_engine::runtime::{ClientOptions, ClusterConfig};
use dura_kvstore::KvClient;
use dura_kvstore::ops::SCAN_LIMIT_MAX;

use dura_bench::target::{KvTarget, TargetError, TargetFactory};

/// Benchmark clients that share one [`KvClient`] (one driver thread, one connection
/// per replica); that many protocol sessions are opened, one per client thread.
pub const THREADS_PER_KV_CLIENT: usize = 256;

/// Hands each benchmark client a clone of a shared [`KvClient`], one per
/// [`THREADS_PER_KV_CLIENT`] client threads: a client runs one protocol session per
/// concurrent request, so threads do not serialise on it, the cluster sees a few client
/// id ranges instead of one per thread, and every client thread has a request
/// outstanding (a single client would cap the requests in flight at its sessions).
#[derive(Debug)]
pub struct KvStoreFactory {
    config: ClusterConfig,
    request_timeout: Duration,
    clients: Mutex<Vec<KvClient>>,
}

impl KvStoreFactory {
    /// Clients of the cluster described by `config` (connected on first use), whose
    /// requests fail after `request_timeout`.
    pub fn new(config: ClusterConfig, request_timeout: Duration) -> Self {
        Self { config, request_timeout, clients: Mutex::new(Vec::new()) }
    }
}

struct KvStoreTarget {
    client: KvClient,
}

fn failed(operation: &'static str, error: impl std::fmt::Display) -> TargetError {
    TargetError { operation, reason: error.to_string() }
}

impl KvTarget for KvStoreTarget {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        self.client.put(key, value).map_err(|error| failed("put", error))
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TargetError> {
        self.client.get(key).map_err(|error| failed("get", error))
    }

    /// One ordered range scan, in as many pages as the reply bound needs.
    fn scan(&mut self, start: &[u8], count: usize) -> Result<usize, TargetError> {
        let mut from = start.to_vec();
        let mut read = 0;
        while read < count {
            let limit = u32::try_from(count - read).unwrap_or(u32::MAX).min(SCAN_LIMIT_MAX);
            let page =
                self.client.scan(&from, None, limit).map_err(|error| failed("scan", error))?;
            read += page.entries.len();
            match page.more {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(read)
    }
}

impl TargetFactory for KvStoreFactory {
    fn connect(&self, client_index: usize) -> Result<Box<dyn KvTarget>, TargetError> {
        let mut shared = self.clients.lock().expect("kv client lock");
        let wanted = client_index / THREADS_PER_KV_CLIENT;
        while shared.len() <= wanted {
            let mut options = ClientOptions::new();
            options.request_timeout = self.request_timeout;
            options.sessions_max = THREADS_PER_KV_CLIENT;
            let client = KvClient::connect_with(&self.config, options)
                .map_err(|error| failed("connect", error))?;
            shared.push(client);
        }
        Ok(Box::new(KvStoreTarget { client: shared[wanted].clone() }))
    }
}

/// The [`dura_bench::runner::Connector`] for the SCKV-Store.
pub fn connector(
    config: &ClusterConfig,
    request_timeout: Duration,
) -> anyhow::Result<Box<dyn TargetFactory>> {
    Ok(Box::new(KvStoreFactory::new(config.clone(), request_timeout)))
}

/// Runs replica `id` of the cluster in `config_path` until it is shut down or the
/// parent benchmark goes away (its standard input closes). `new_cluster`: the
/// cluster's first start (it may begin empty); a restart must not pass it.
pub fn serve_replica(config_path: &Path, id: u32, new_cluster: bool) -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    dura_bench::cluster::exit_when_parent_goes();
    let config = ClusterConfig::load(config_path)?;
    let bootstrap =
        if new_cluster { dura_kvstore::Bootstrap::New } else { dura_kvstore::Bootstrap::Existing };
    dura_kvstore::serve(&config, id, bootstrap)?;
    Ok(())
}
