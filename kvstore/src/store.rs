//! The SCKV-Store service: a sorted map from byte keys to byte values.

use std::collections::BTreeMap;

use dura_engine::service::{OrderedRequest, Service};
use sha2::{Digest, Sha256};

use crate::ops::{KvOp, KvReply, decode_op};

/// The replicated key-value state. Reads go through ordering like writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value under `key`, read locally (not ordered; for tests and tools).
    pub fn get_local(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Applies one encoded operation and returns its reply. Malformed input changes
    /// nothing and gets [`KvReply::Invalid`].
    pub fn apply(&mut self, operation: &[u8]) -> KvReply {
        let op = match decode_op(operation) {
            Ok(op) => op,
            Err(error) => return KvReply::Invalid(error.to_string()),
        };
        match op {
            KvOp::Put { key, value } => {
                match self.entries.get_mut(key) {
                    Some(slot) => {
                        slot.clear();
                        slot.extend_from_slice(value);
                    }
                    None => {
                        self.entries.insert(key.to_vec(), value.to_vec());
                    }
                }
                KvReply::Done
            }
            KvOp::Get { key } => KvReply::Value(self.entries.get(key).cloned()),
            KvOp::Delete { key } => KvReply::Flag(self.entries.remove(key).is_some()),
            KvOp::Cas { key, expected, new } => {
                let current = self.entries.get(key).map(Vec::as_slice);
                if current == expected {
                    self.entries.insert(key.to_vec(), new.to_vec());
                    KvReply::Flag(true)
                } else {
                    KvReply::Flag(false)
                }
            }
        }
    }
}

impl Service for KvStore {
    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Vec<Vec<u8>>) {
        for request in requests {
            replies.push(self.apply(request.operation).encode());
        }
    }

    /// SHA-256 over the entries in key order, each as `u32` LE key length, key, `u64`
    /// LE value length, value: canonical, equal on replicas with equal maps.
    fn state_digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update((self.entries.len() as u64).to_le_bytes());
        for (key, value) in &self.entries {
            hasher.update((key.len() as u32).to_le_bytes());
            hasher.update(key);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: KvOp<'_>) -> Vec<u8> {
        op.encode().expect("in bounds")
    }

    #[test]
    fn put_get_delete_cas_behave_like_a_map() {
        let mut store = KvStore::new();
        assert_eq!(store.apply(&op(KvOp::Get { key: b"a" })), KvReply::Value(None));
        assert_eq!(store.apply(&op(KvOp::Put { key: b"a", value: b"1" })), KvReply::Done);
        assert_eq!(store.apply(&op(KvOp::Get { key: b"a" })), KvReply::Value(Some(b"1".to_vec())));
        let swap = KvOp::Cas { key: b"a", expected: Some(b"0"), new: b"2" };
        assert_eq!(store.apply(&op(swap)), KvReply::Flag(false));
        let swap = KvOp::Cas { key: b"a", expected: Some(b"1"), new: b"2" };
        assert_eq!(store.apply(&op(swap)), KvReply::Flag(true));
        assert_eq!(store.get_local(b"a"), Some(&b"2"[..]));
        let create = KvOp::Cas { key: b"b", expected: None, new: b"x" };
        assert_eq!(store.apply(&op(create)), KvReply::Flag(true));
        assert_eq!(store.apply(&op(KvOp::Delete { key: b"a" })), KvReply::Flag(true));
        assert_eq!(store.apply(&op(KvOp::Delete { key: b"a" })), KvReply::Flag(false));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn malformed_operation_changes_nothing_and_says_why() {
        let mut store = KvStore::new();
        let before = store.state_digest();
        assert!(
            matches!(store.apply(&[42, 1, 2]), KvReply::Invalid(reason) if reason.contains("tag 42"))
        );
        assert_eq!(store.state_digest(), before);
    }

    #[test]
    fn digest_depends_on_content_not_on_insertion_order() {
        let mut one = KvStore::new();
        let mut two = KvStore::new();
        one.apply(&op(KvOp::Put { key: b"a", value: b"1" }));
        one.apply(&op(KvOp::Put { key: b"b", value: b"2" }));
        two.apply(&op(KvOp::Put { key: b"b", value: b"2" }));
        two.apply(&op(KvOp::Put { key: b"a", value: b"1" }));
        assert_eq!(one.state_digest(), two.state_digest());
        // Moving a byte between key and value changes the digest.
        let mut three = KvStore::new();
        three.apply(&op(KvOp::Put { key: b"a1", value: b"" }));
        three.apply(&op(KvOp::Put { key: b"b", value: b"2" }));
        assert_ne!(one.state_digest(), three.state_digest());
    }
}
