//! The SCKV-Store service: a persistent ordered map from byte keys to byte values, so
//! range scans iterate in key order without sorting, and a checkpoint takes an O(1)
//! view of the whole state ([`KvView`]) that a background thread serialises while
//! execution goes on.
//!
//! The map is `imbl::OrdMap` (a B-tree whose nodes are shared between versions): a
//! write after a view was taken copies only the path to the key it changes. Keys and
//! values are `Arc<[u8]>`, so copying a node copies pointers, not 4 KiB values.

use std::ops::Bound;
use std::sync::Arc;

use dura_engine::service::{OrderedRequest, Replies, Service};
use dura_engine::service::{StateError, StateInstaller, StateView};
use imbl::OrdMap;
use rkyv::rancor;
use sha2::{Digest, Sha256};

use crate::ops::{KvOp, KvReply, SCAN_ENTRY_OVERHEAD_BYTES, ScanPage, decode_op};

type Bytes = Arc<[u8]>;

/// The replicated key-value state. Reads go through ordering like writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStore {
    entries: OrdMap<Bytes, Bytes>,
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
        self.entries.get(key).map(|value| &value[..])
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
                    Some(slot) => *slot = Bytes::from(value),
                    None => {
                        self.entries.insert(Bytes::from(key), Bytes::from(value));
                    }
                }
                KvReply::Done
            }
            KvOp::Get { key } => KvReply::Value(self.entries.get(key).map(|value| value.to_vec())),
            KvOp::Delete { key } => KvReply::Flag(self.entries.remove(key).is_some()),
            KvOp::Cas { key, expected, new } => {
                let current = self.entries.get(key).map(|value| &value[..]);
                if current == expected {
                    self.entries.insert(Bytes::from(key), Bytes::from(new));
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
        for (key, value) in self.entries.range::<_, [u8]>((Bound::Included(start), upper)) {
            let entry_bytes = SCAN_ENTRY_OVERHEAD_BYTES + key.len() + value.len();
            if page.entries.len() == limit
                || (!page.entries.is_empty() && bytes + entry_bytes > reply_bytes_max)
            {
                page.more = Some(key.to_vec());
                break;
            }
            bytes += entry_bytes;
            page.entries.push((key.to_vec(), value.to_vec()));
        }
        assert!(page.entries.len() <= limit, "a scan returns at most its limit");
        page
    }
}

impl Service for KvStore {
    const NAME: &'static str = "sckv-store";
    type View = KvView;
    type Installer = KvInstaller;

    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
        for request in requests {
            replies.reply(self.apply(request.operation).encode());
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

    fn view(&self) -> KvView {
        KvView { entries: self.entries.clone() }
    }

    fn installer(&self) -> KvInstaller {
        KvInstaller { entries: OrdMap::new(), last_key: None }
    }
}

/// One checkpoint chunk of the store: entries in key order, each key greater than every
/// key of the chunks before it. An rkyv archive (format pinned in the workspace).
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
struct KvChunk {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Bytes a chunk's entry costs beyond its key and value (two length prefixes and the
/// tuple), for cutting chunks near their bound.
const CHUNK_ENTRY_OVERHEAD_BYTES: usize = 16;

/// An O(1) view of a [`KvStore`] (a clone of the persistent map).
#[derive(Debug, Clone)]
pub struct KvView {
    entries: OrdMap<Bytes, Bytes>,
}

impl StateView for KvView {
    fn write_chunks(
        &self,
        chunk_bytes_max: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut chunk = KvChunk { entries: Vec::new() };
        let mut chunk_bytes = 0usize;
        let mut flush = |chunk: &mut KvChunk| -> Result<(), StateError> {
            let bytes = rkyv::to_bytes::<rancor::Error>(&*chunk)
                .map_err(|error| StateError::Invalid(format!("archiving a chunk: {error}")))?;
            assert!(bytes.len() <= dura_engine::service::CHUNK_BYTES_LIMIT, "chunk over the limit");
            chunk.entries.clear();
            sink(&bytes)
        };
        for (key, value) in &self.entries {
            let entry_bytes = CHUNK_ENTRY_OVERHEAD_BYTES + key.len() + value.len();
            if !chunk.entries.is_empty() && chunk_bytes + entry_bytes > chunk_bytes_max {
                flush(&mut chunk)?;
                chunk_bytes = 0;
            }
            chunk.entries.push((key.to_vec(), value.to_vec()));
            chunk_bytes += entry_bytes;
        }
        if !chunk.entries.is_empty() {
            flush(&mut chunk)?;
        }
        Ok(())
    }
}

/// Builds a [`KvStore`] from a [`KvView`]'s chunks, checking that keys come in strictly
/// increasing order across all of them (the canonical form).
#[derive(Debug)]
pub struct KvInstaller {
    entries: OrdMap<Bytes, Bytes>,
    last_key: Option<Bytes>,
}

impl StateInstaller for KvInstaller {
    type Service = KvStore;

    fn chunk(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let chunk = rkyv::access::<ArchivedKvChunk, rancor::Error>(bytes)
            .map_err(|error| StateError::Invalid(format!("a store chunk: {error}")))?;
        if chunk.entries.is_empty() {
            return Err(StateError::Invalid("an empty store chunk".into()));
        }
        for entry in chunk.entries.iter() {
            let (key, value) = (entry.0.as_slice(), entry.1.as_slice());
            if self.last_key.as_deref().is_some_and(|last| last >= key) {
                return Err(StateError::Invalid(format!(
                    "store keys out of order: {:?} after {:?}",
                    String::from_utf8_lossy(key),
                    self.last_key.as_deref().map(String::from_utf8_lossy),
                )));
            }
            let key = Bytes::from(key);
            self.entries.insert(Arc::clone(&key), Bytes::from(value));
            self.last_key = Some(key);
        }
        Ok(())
    }

    fn finish(self) -> Result<KvStore, StateError> {
        Ok(KvStore { entries: self.entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dura_engine::service::StateView;

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

    /// Every chunk a view writes, in order.
    fn chunks_of(store: &KvStore, chunk_bytes_max: usize) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        store
            .view()
            .write_chunks(chunk_bytes_max, &mut |chunk| {
                chunks.push(chunk.to_vec());
                Ok(())
            })
            .expect("in memory");
        chunks
    }

    /// Feeds chunks to a fresh installer, each copied to a 16-aligned buffer as the
    /// checkpoint loader hands them.
    fn install(chunks: &[Vec<u8>]) -> Result<KvStore, StateError> {
        let mut installer = KvStore::new().installer();
        for chunk in chunks {
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(chunk);
            installer.chunk(&aligned)?;
        }
        installer.finish()
    }

    #[test]
    fn equal_states_built_by_different_histories_write_identical_chunks() {
        let mut one = KvStore::new();
        let mut two = KvStore::new();
        for i in 0..2_000u32 {
            let key = format!("key{:05}", (i * 7919) % 2_000);
            one.apply(&op(KvOp::Put { key: key.as_bytes(), value: &i.to_le_bytes() }));
        }
        // The same final map by another route: other values first, deletes, reinserts.
        for i in (0..2_000u32).rev() {
            let key = format!("key{:05}", (i * 7919) % 2_000);
            two.apply(&op(KvOp::Put { key: key.as_bytes(), value: b"stale" }));
            if i % 3 == 0 {
                two.apply(&op(KvOp::Delete { key: key.as_bytes() }));
            }
        }
        for i in 0..2_000u32 {
            let key = format!("key{:05}", (i * 7919) % 2_000);
            two.apply(&op(KvOp::Put { key: key.as_bytes(), value: &i.to_le_bytes() }));
        }
        assert_eq!(one, two);
        let chunks = chunks_of(&one, 4096);
        assert!(chunks.len() > 5, "the state spans several chunks");
        assert_eq!(chunks, chunks_of(&two, 4096));
    }

    #[test]
    fn a_view_keeps_its_state_while_the_store_moves_on_and_installs_back() {
        let mut store = KvStore::new();
        for i in 0..500u32 {
            store.apply(&op(KvOp::Put { key: &i.to_be_bytes(), value: &[i as u8; 100] }));
        }
        let before = store.clone();
        let view = store.view();
        for i in 0..500u32 {
            store.apply(&op(KvOp::Put { key: &i.to_be_bytes(), value: b"changed" }));
        }
        store.apply(&op(KvOp::Delete { key: &7u32.to_be_bytes() }));
        let mut chunks = Vec::new();
        view.write_chunks(1024, &mut |chunk| {
            assert!(chunk.len() <= 1024 + 512, "chunks stay near their bound");
            chunks.push(chunk.to_vec());
            Ok(())
        })
        .expect("in memory");
        let installed = install(&chunks).expect("valid chunks");
        assert_eq!(installed, before);
        assert_eq!(installed.state_digest(), before.state_digest());
        assert_ne!(installed.state_digest(), store.state_digest());
        assert!(install(&[]).expect("no chunks is the empty store").is_empty());
    }

    #[test]
    fn an_installer_refuses_chunks_out_of_order_or_not_its_own() {
        let mut store = KvStore::new();
        for key in [&b"a"[..], b"b", b"c", b"d"] {
            store.apply(&op(KvOp::Put { key, value: &[1; 40] }));
        }
        let mut chunks = chunks_of(&store, 64);
        assert!(chunks.len() >= 2);
        chunks.swap(0, 1);
        let error = install(&chunks).expect_err("keys out of order");
        assert!(error.to_string().contains("out of order"), "{error}");
        let error = install(&[vec![0xAB; 64]]).expect_err("not an archive");
        assert!(matches!(error, StateError::Invalid(_)), "{error}");
        // A chunk repeated is refused too: its keys are not greater than the last.
        let chunks = chunks_of(&store, 64);
        let error = install(&[chunks[0].clone(), chunks[0].clone()]).expect_err("a repeat");
        assert!(error.to_string().contains("out of order"), "{error}");
    }
}
