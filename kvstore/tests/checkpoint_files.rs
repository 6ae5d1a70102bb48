//! Checkpoint files of the real store through the engine's writer and loader: equal
//! states at one agreement give byte-identical files whatever history built them.

use dura_engine::checkpoint::{load_checkpoint, write_checkpoint};
use dura_engine::durability::{DecidedBatch, execute_batch};
use dura_engine::protocol::{Batch, ClientRequest};
use dura_engine::service::{Executor, Service};
use dura_kvstore::{KvOp, KvStore};
use dura_snapshot::sim::SimDir;
use dura_snapshot::{CheckpointStore, StoreOptions};
use std::sync::Arc;

/// Agreement `id`: eight requests of eight clients, puts and deletes over 500 keys with
/// values up to 3 KiB.
fn batch(id: u64) -> DecidedBatch {
    let requests = (0..8u64)
        .map(|client| {
            let key = format!("key{:04}", (id * 37 + client * 101) % 500);
            let value = vec![(id + client) as u8; ((id * 13 + client * 7) % 3000) as usize];
            let operation = if (id + client).is_multiple_of(9) {
                KvOp::Delete { key: key.as_bytes() }.encode()
            } else {
                KvOp::Put { key: key.as_bytes(), value: &value }.encode()
            }
            .expect("in bounds");
            ClientRequest {
                client_id: client + 1,
                sequence: id,
                operation,
                authenticator: vec![[0; 32]],
            }
        })
        .collect();
    DecidedBatch::new(id, Arc::new(Batch { timestamp_ms: 0, requests }))
}

fn checkpoint_bytes(executor: &Executor<KvStore>, at: u64) -> Vec<u8> {
    let dir = SimDir::new(1);
    let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("store");
    let written =
        write_checkpoint(&store, KvStore::NAME, at, at * 8, &executor.view()).expect("write");
    dir.file_bytes(&written.file_name)
}

#[test]
fn a_replica_restarted_from_a_checkpoint_writes_the_same_file_as_one_that_never_stopped() {
    // A: agreements 1..=400 in one run.
    let mut a = Executor::new(KvStore::new());
    for id in 1..=400 {
        execute_batch(&mut a, &batch(id));
    }
    // B: 1..=150, a checkpoint, a restart from it (maps rebuilt in key order, so their
    // internal shape differs from A's), then 151..=400.
    let mut b = Executor::new(KvStore::new());
    for id in 1..=150 {
        execute_batch(&mut b, &batch(id));
    }
    let dir = SimDir::new(2);
    let store = CheckpointStore::open(dir, StoreOptions::default()).expect("store");
    write_checkpoint(&store, KvStore::NAME, 150, 150 * 8, &b.view()).expect("write");
    let loaded = load_checkpoint(&store, &KvStore::new()).expect("load").expect("a checkpoint");
    assert_eq!(loaded.from.agreement_id, 150);
    let mut b = loaded.executor;
    for id in 151..=400 {
        execute_batch(&mut b, &batch(id));
    }
    assert_eq!(a.service().state_digest(), b.service().state_digest());
    let (file_a, file_b) = (checkpoint_bytes(&a, 400), checkpoint_bytes(&b, 400));
    assert!(file_a.len() > 100_000, "a state of some size: {} bytes", file_a.len());
    assert!(file_a == file_b, "equal states at one agreement give identical checkpoint files");
    // And a different state gives a different file.
    execute_batch(&mut b, &batch(401));
    assert_ne!(file_a, checkpoint_bytes(&b, 400));
}
