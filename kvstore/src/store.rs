//! The SCKV-Store service: a sorted map (`BTreeMap`) from byte keys to byte values, so
//! range scans iterate in key order without sorting.

use std::collections::BTreeMap;
use std::ops::Bound;

use dura_engine::service::{OrderedRequest, Service};
use sha2::{Digest, Sha256};

use crate::ops::{KvOp, KvReply, SCAN_ENTRY_OVERHEAD_BYTES, ScanPage, decode_op};

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
            KvOp::Scan { start, end, limit, reply_bytes_max } => {
                KvReply::Range(self.scan(start, end, limit as usize, reply_bytes_max as usize))
            }
        }
    }

    /// The keys in `[start, end)` in order, cut at `limit` entries or once they would
    /// pass `reply_bytes_max` bytes (the first entry always goes); see [`crate::ops`].
    /// Deterministic: every replica cuts at the same key.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        reply_bytes_max: usize,
    ) -> ScanPage {
        let mut page = ScanPage::default();
        let upper = match end {
            // `BTreeMap::range` panics on an inverted range; it is just empty here.
            Some(end) if end <= start => return page,
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let mut bytes = 0usize;
        for (key, value) in self.entries.range::<[u8], _>((Bound::Included(start), upper)) {
            let entry_bytes = SCAN_ENTRY_OVERHEAD_BYTES + key.len() + value.len();
            if page.entries.len() == limit
                || (!page.entries.is_empty() && bytes + entry_bytes > reply_bytes_max)
            {
                page.more = Some(key.clone());
                break;
            }
            bytes += entry_bytes;
            page.entries.push((key.clone(), value.clone()));
        }
        assert!(page.entries.len() <= limit, "a scan returns at most its limit");
        page
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

    fn scan(
        store: &mut KvStore,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        bytes: u32,
    ) -> ScanPage {
        match store.apply(&op(KvOp::Scan { start, end, limit, reply_bytes_max: bytes })) {
            KvReply::Range(page) => page,
            other => panic!("scan answered {other:?}"),
        }
    }

    fn keys(page: &ScanPage) -> Vec<&[u8]> {
        page.entries.iter().map(|(key, _)| key.as_slice()).collect()
    }

    #[test]
    fn scan_returns_the_half_open_range_in_key_order_and_says_where_to_continue() {
        let mut store = KvStore::new();
        for key in [&b"d"[..], b"a", b"c", b"b", b"e"] {
            store.apply(&op(KvOp::Put { key, value: b"12345678" }));
        }
        let page = scan(&mut store, b"b", Some(b"e"), 10, 1 << 20);
        assert_eq!(keys(&page), [&b"b"[..], b"c", b"d"]);
        assert_eq!(page.more, None, "the range ended, not the limit");
        let page = scan(&mut store, b"", None, 2, 1 << 20);
        assert_eq!((keys(&page), page.more.as_deref()), (vec![&b"a"[..], b"b"], Some(&b"c"[..])));
        // A start between keys, an end past the last key, an inverted and an empty range.
        assert_eq!(
            keys(&scan(&mut store, b"bb", Some(b"zz"), 10, 1 << 20)),
            [&b"c"[..], b"d", b"e"]
        );
        assert!(scan(&mut store, b"d", Some(b"b"), 10, 1 << 20).entries.is_empty());
        assert!(scan(&mut store, b"c", Some(b"c"), 10, 1 << 20).entries.is_empty());
        // Scans change nothing.
        assert_eq!(store.len(), 5);
    }

    #[test]
    fn scan_cut_by_the_byte_bound_returns_what_fits_and_the_first_key_left_out() {
        let mut store = KvStore::new();
        for key in [&b"a"[..], b"b", b"c"] {
            store.apply(&op(KvOp::Put { key, value: &[7; 100] }));
        }
        let entry = (SCAN_ENTRY_OVERHEAD_BYTES + 1 + 100) as u32;
        let page = scan(&mut store, b"a", None, 10, 2 * entry);
        assert_eq!((keys(&page), page.more.as_deref()), (vec![&b"a"[..], b"b"], Some(&b"c"[..])));
        let page = scan(&mut store, b"a", None, 10, 2 * entry - 1);
        assert_eq!((keys(&page), page.more.as_deref()), (vec![&b"a"[..]], Some(&b"b"[..])));
        // The first entry goes even past the bound: a scan always makes progress.
        let page = scan(&mut store, b"b", None, 10, 0);
        assert_eq!((keys(&page), page.more.as_deref()), (vec![&b"b"[..]], Some(&b"c"[..])));
        // Following the continuation visits every key once.
        let (mut from, mut seen) = (Vec::new(), Vec::new());
        loop {
            let page = scan(&mut store, &from, None, 10, 0);
            seen.extend(page.entries.into_iter().map(|(key, _)| key));
            match page.more {
                Some(next) => from = next,
                None => break,
            }
        }
        assert_eq!(seen, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
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
