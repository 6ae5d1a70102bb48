//! What the load generator talks to: a service behind a [`TargetFactory`], which
//! opens one [`OpStream`] per client thread. For the key-value store that is a
//! [`KvTarget`] under YCSB's generator; the tuple space overrides
//! [`TargetFactory::op_stream`] and [`TargetFactory::probe`] ([`crate::tuplespace`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use crate::driver::{KvStream, OpStream, RunSpec};
use crate::workload::KeySpace;

/// An error from the store under test. The driver counts errors; it does not stop.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {reason}")]
pub struct TargetError {
    /// Which operation failed.
    pub operation: &'static str,
    /// Why.
    pub reason: String,
}

/// One client's connection to a key-value store. Calls block until the store
/// answered; a call that returns `Ok` was completed by the store (for a replicated
/// store: by a quorum, durably when the cluster logs synchronously or in parallel).
pub trait KvTarget: Send {
    /// Writes `value` under `key` (insert or replace).
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TargetError>;
    /// Reads `key`; `None` when absent.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TargetError>;
    /// Reads up to `count` keys from `start` on, in key order (YCSB's scan); how many
    /// it read.
    fn scan(&mut self, start: &[u8], count: usize) -> Result<usize, TargetError>;
}

/// Opens one connection per client thread to the service under test.
pub trait TargetFactory: Send + Sync {
    /// A new key-value connection for client number `client_index` (the load phase,
    /// the key-value workloads and the experiments that write keys use it). A service
    /// that is no key-value store refuses.
    fn connect(&self, client_index: usize) -> Result<Box<dyn KvTarget>, TargetError>;

    /// Client number `client_index`'s stream of `spec`'s operations, its keys (if
    /// any) in `key_space`, shared by the run's clients. The default: the key-value
    /// workloads over [`TargetFactory::connect`].
    fn op_stream(
        &self,
        client_index: usize,
        spec: &RunSpec,
        key_space: &Arc<KeySpace>,
    ) -> Result<Box<dyn OpStream>, TargetError> {
        Ok(Box::new(KvStream::new(self.connect(client_index)?, spec, key_space, client_index)?))
    }

    /// One ordered request that proves the service answers (a fresh cluster's
    /// readiness check). The default writes a key.
    fn probe(&self) -> Result<(), TargetError> {
        self.connect(0)?.put(b"dura-bench:ready", b"1")
    }
}

/// An in-memory store shared by all clients, for tests of the generator and driver.
#[derive(Debug, Default, Clone)]
pub struct MemoryTarget {
    map: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryTarget {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.map.lock().expect("memory target lock").len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KvTarget for MemoryTarget {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
        self.map.lock().expect("memory target lock").insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TargetError> {
        Ok(self.map.lock().expect("memory target lock").get(key).cloned())
    }

    fn scan(&mut self, start: &[u8], count: usize) -> Result<usize, TargetError> {
        let map = self.map.lock().expect("memory target lock");
        Ok(map.range::<[u8], _>((Bound::Included(start), Bound::Unbounded)).take(count).count())
    }
}

impl TargetFactory for MemoryTarget {
    fn connect(&self, _client_index: usize) -> Result<Box<dyn KvTarget>, TargetError> {
        Ok(Box::new(self.clone()))
    }
}
