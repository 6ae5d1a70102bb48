//! The simulator's service: a tiny key-value store, and a per-key linearizability
//! checker for the client history.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::rng::Rng;
use super::{Agreed, HistoryEntry, NextOp, SimConfig, Workload};
use crate::service::{OrderedRequest, Replies, Service, StateError, StateInstaller, StateView};

/// The KV workload: clients put unique values and get keys `0..SimConfig::keys`, half
/// and half; the history must be linearizable per key for a register initialised to 0.
#[derive(Debug)]
pub struct KvWorkload {
    keys: u8,
    next_value: u64,
}

impl Workload for KvWorkload {
    type Service = KvModel;

    fn service() -> KvModel {
        KvModel::default()
    }

    fn new(config: &SimConfig) -> Self {
        Self { keys: config.keys, next_value: 1 }
    }

    fn next_op(&mut self, _client: usize, rng: &mut Rng) -> NextOp {
        let key = rng.range(0, u64::from(self.keys.max(1)) - 1) as u8;
        let op = if rng.chance(500) {
            let value = self.next_value;
            self.next_value += 1;
            KvOp::Put { key, value }
        } else {
            KvOp::Get { key }
        };
        NextOp { operation: op.encode(), patience_us: None }
    }

    fn give_up(&mut self, _client: usize, _sequence: u64) -> Vec<u8> {
        unreachable!("a KV client waits for every request")
    }

    fn executed_twice(service: &KvModel) -> Option<(u64, u64)> {
        service.executed_twice.first().copied()
    }

    fn check(
        &self,
        history: &[HistoryEntry],
        _agreed: &Agreed<'_>,
    ) -> Result<Vec<(&'static str, u64)>, String> {
        let ops: Vec<HistoryOp> = history
            .iter()
            .map(|entry| HistoryOp {
                invoked_us: entry.invoked_us,
                completed_us: entry.completed_us,
                op: KvOp::decode(&entry.operation).expect("the workload's own encoding"),
                result: entry
                    .result
                    .as_deref()
                    .and_then(|r| r.try_into().ok())
                    .map(u64::from_le_bytes),
            })
            .collect();
        check_linearizable(&ops).map_err(|error| format!("linearizability: {error}"))?;
        Ok(Vec::new())
    }
}

/// An operation of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp {
    /// Set `key` to `value` (values are unique and non-zero in the simulator).
    Put {
        /// Key.
        key: u8,
        /// Value.
        value: u64,
    },
    /// Read `key` (0 when absent).
    Get {
        /// Key.
        key: u8,
    },
}

impl KvOp {
    /// Wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            KvOp::Put { key, value } => {
                let mut out = vec![0, key];
                out.extend_from_slice(&value.to_le_bytes());
                out
            }
            KvOp::Get { key } => vec![1, key],
        }
    }

    /// Decodes; None on malformed input.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0, key, rest @ ..] if rest.len() == 8 => {
                let mut value = [0u8; 8];
                value.copy_from_slice(rest);
                Some(KvOp::Put { key: *key, value: u64::from_le_bytes(value) })
            }
            [1, key] => Some(KvOp::Get { key: *key }),
            _ => None,
        }
    }

    /// The key.
    pub fn key(&self) -> u8 {
        match *self {
            KvOp::Put { key, .. } | KvOp::Get { key } => key,
        }
    }
}

/// The replicated model. Also counts executions per (client, sequence) so that the
/// oracle can see a request executed twice.
#[derive(Debug, Default)]
pub struct KvModel {
    map: BTreeMap<u8, u64>,
    /// Every (client, sequence) executed: part of the state, so a checkpoint carries it
    /// and a request re-executed after an install is still caught.
    executed: BTreeSet<(u64, u64)>,
    /// Requests executed more than once (must stay empty).
    pub executed_twice: Vec<(u64, u64)>,
}

impl Service for KvModel {
    const NAME: &'static str = "sim-kv";
    type View = KvModelView;
    type Installer = KvModelInstaller;

    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
        for request in requests {
            if !self.executed.insert((request.client_id, request.sequence)) {
                self.executed_twice.push((request.client_id, request.sequence));
            }
            let reply = match KvOp::decode(request.operation) {
                Some(KvOp::Put { key, value }) => {
                    self.map.insert(key, value);
                    0u64
                }
                Some(KvOp::Get { key }) => self.map.get(&key).copied().unwrap_or(0),
                None => u64::MAX,
            };
            replies.reply(reply.to_le_bytes().to_vec());
        }
    }

    fn state_digest(&self) -> [u8; 32] {
        let mut sha = Sha256::new();
        for (key, value) in &self.map {
            sha.update([*key]);
            sha.update(value.to_le_bytes());
        }
        sha.finalize().into()
    }

    /// A copy: the model holds at most 256 keys and the simulator's few thousand
    /// requests, so O(n) here costs nothing; the production store's view is O(1).
    fn view(&self) -> KvModelView {
        KvModelView { map: self.map.clone(), executed: self.executed.clone() }
    }

    fn installer(&self) -> KvModelInstaller {
        KvModelInstaller { model: KvModel::default() }
    }
}

/// A copy of the model's state for a checkpoint.
#[derive(Debug)]
pub struct KvModelView {
    map: BTreeMap<u8, u64>,
    executed: BTreeSet<(u64, u64)>,
}

/// Chunk tags of the model's checkpoint: map entries (9 bytes each), executed requests
/// (16 bytes each).
const CHUNK_MAP: u8 = 0;
const CHUNK_EXECUTED: u8 = 1;

impl StateView for KvModelView {
    fn write_chunks(
        &self,
        chunk_bytes_max: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        assert!(chunk_bytes_max >= 17, "a chunk holds at least one entry");
        let mut chunk = vec![CHUNK_MAP];
        for (key, value) in &self.map {
            if chunk.len() + 9 > chunk_bytes_max {
                sink(&chunk)?;
                chunk.truncate(1);
            }
            chunk.push(*key);
            chunk.extend_from_slice(&value.to_le_bytes());
        }
        if chunk.len() > 1 {
            sink(&chunk)?;
        }
        let mut chunk = vec![CHUNK_EXECUTED];
        for (client, sequence) in &self.executed {
            if chunk.len() + 16 > chunk_bytes_max {
                sink(&chunk)?;
                chunk.truncate(1);
            }
            chunk.extend_from_slice(&client.to_le_bytes());
            chunk.extend_from_slice(&sequence.to_le_bytes());
        }
        if chunk.len() > 1 {
            sink(&chunk)?;
        }
        Ok(())
    }
}

/// Builds a [`KvModel`] from its chunks.
#[derive(Debug)]
pub struct KvModelInstaller {
    model: KvModel,
}

impl StateInstaller for KvModelInstaller {
    type Service = KvModel;

    fn chunk(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let invalid = |why: &str| Err(StateError::Invalid(format!("sim-kv chunk: {why}")));
        match bytes.split_first() {
            Some((&CHUNK_MAP, rest)) if rest.len() % 9 == 0 => {
                for entry in rest.chunks_exact(9) {
                    let value = u64::from_le_bytes(entry[1..].try_into().expect("8 bytes"));
                    self.model.map.insert(entry[0], value);
                }
                Ok(())
            }
            Some((&CHUNK_EXECUTED, rest)) if rest.len() % 16 == 0 => {
                for entry in rest.chunks_exact(16) {
                    let client = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
                    let sequence = u64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
                    self.model.executed.insert((client, sequence));
                }
                Ok(())
            }
            Some(_) => invalid("unknown tag or length"),
            None => invalid("empty"),
        }
    }

    fn finish(self) -> Result<KvModel, StateError> {
        Ok(self.model)
    }
}

/// One completed (or pending) operation in the client history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOp {
    /// Invocation time (µs).
    pub invoked_us: u64,
    /// Completion time (µs); None if it never completed.
    pub completed_us: Option<u64>,
    /// The operation.
    pub op: KvOp,
    /// The result (for Get: the value read).
    pub result: Option<u64>,
}

/// Checks that the history, restricted to each key, is linearizable for a register
/// initialised to 0. Returns the first key that is not. Bounded: at most 63 operations
/// per key (the simulator keeps histories below that).
pub fn check_linearizable(history: &[HistoryOp]) -> Result<(), String> {
    let mut by_key: BTreeMap<u8, Vec<HistoryOp>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.op.key()).or_default().push(*op);
    }
    for (key, ops) in by_key {
        assert!(ops.len() <= 63, "history per key bounded to 63 operations");
        let mut memo = BTreeSet::new();
        if !search(&ops, 0, 0, &mut memo) {
            return Err(format!(
                "key {key}: no linearization of {} operations: {ops:?}",
                ops.len()
            ));
        }
    }
    Ok(())
}

/// Depth-first search for a linearization: `done` is the set of operations already
/// linearized, `value` the register's value after them.
fn search(ops: &[HistoryOp], done: u64, value: u64, memo: &mut BTreeSet<(u64, u64)>) -> bool {
    let all_completed_done =
        ops.iter().enumerate().all(|(i, op)| done & (1 << i) != 0 || op.completed_us.is_none());
    if all_completed_done {
        return true;
    }
    if !memo.insert((done, value)) {
        return false;
    }
    // The earliest completion among operations not yet linearized bounds which ones may
    // go next: an operation invoked after that completion cannot precede it.
    let horizon = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| done & (1 << i) == 0)
        .filter_map(|(_, op)| op.completed_us)
        .min()
        .unwrap_or(u64::MAX);
    for (i, op) in ops.iter().enumerate() {
        if done & (1 << i) != 0 || op.invoked_us > horizon {
            continue;
        }
        let next = match op.op {
            KvOp::Put { value: written, .. } => written,
            KvOp::Get { .. } => {
                if op.completed_us.is_some() && op.result != Some(value) {
                    continue;
                }
                value
            }
        };
        if search(ops, done | (1 << i), next, memo) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoked: u64, completed: u64, op: KvOp, result: u64) -> HistoryOp {
        HistoryOp { invoked_us: invoked, completed_us: Some(completed), op, result: Some(result) }
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let put = KvOp::Put { key: 1, value: 5 };
        let get = KvOp::Get { key: 1 };
        let good = [op(0, 10, put, 0), op(20, 30, get, 5)];
        assert!(check_linearizable(&good).is_ok());
        let stale = [op(0, 10, put, 0), op(20, 30, get, 0)];
        assert!(check_linearizable(&stale).is_err());
        // Concurrent read may see either.
        let concurrent = [op(0, 10, put, 0), op(5, 30, get, 0)];
        assert!(check_linearizable(&concurrent).is_ok());
        // A read of a value never written fails.
        let invented = [op(0, 10, get, 9)];
        assert!(check_linearizable(&invented).is_err());
        // A pending write may take effect.
        let pending = [
            HistoryOp { invoked_us: 0, completed_us: None, op: put, result: None },
            op(20, 30, get, 5),
        ];
        assert!(check_linearizable(&pending).is_ok());
    }

    #[test]
    fn model_detects_double_execution() {
        let mut model = KvModel::default();
        let op = KvOp::Put { key: 1, value: 2 }.encode();
        let request = OrderedRequest { client_id: 1, sequence: 1, operation: &op, now_ms: 0 };
        let mut replies = Replies::new();
        model.execute_batch(&[request], &mut replies);
        assert!(model.executed_twice.is_empty());
        model.execute_batch(&[request], &mut replies);
        assert_eq!(model.executed_twice, vec![(1, 1)]);
    }
}
