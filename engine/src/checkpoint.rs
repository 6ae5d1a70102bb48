//! What a replica's checkpoint holds beside the service's state, and how the engine
//! writes and loads checkpoints through `dura-snapshot`.
//!
//! A checkpoint at agreement A holds: the service's chunks (its [`StateView`]), the
//! executor's reply cache as engine chunks (so exactly-once survives a restart from
//! it), and in the header's engine blob ([`EngineMeta`]) the requests ordered up to A
//! (where the checkpoint schedule stands) and the requests executed. What the ordering
//! protocol needs after a restart is A itself (its last decided agreement); its votes
//! are not persisted (ARCHITECTURE.md) and its recovery asks the peers.
//!
//! Both encodings are canonical: the reply cache is written in client order, as rkyv
//! archives with the workspace's pinned format, so equal states at equal agreements
//! give byte-identical files on every replica.

use std::sync::Arc;

use dura_snapshot::{
    BoxError, CheckpointError, CheckpointHeader, CheckpointStore, ChunkSink, Dir, Section, Skipped,
    Written,
};
use imbl::OrdMap;
use rkyv::rancor;

use crate::durability::{DecisionId, FromCheckpoint};
use crate::service::{
    CHUNK_BYTES_LIMIT, CachedReply, EarlierDeferred, Executor, ExecutorView, Service, StateError,
    StateInstaller, StateView,
};

/// The chunk size the engine asks services and its reply cache for: small next to the
/// 32 MiB limit (a transfer resumes at chunk granularity), large enough that the
/// per-chunk frame and checksum cost nothing.
pub const CHECKPOINT_CHUNK_BYTES: usize = 4 << 20;
const _: () = assert!(CHECKPOINT_CHUNK_BYTES <= CHUNK_BYTES_LIMIT);
const _: () = assert!(dura_snapshot::CHUNK_BYTES_LIMIT == CHUNK_BYTES_LIMIT);

/// Writes `view` (the executor's state right after agreement `agreement_id`) as a
/// checkpoint into `store`: the reply cache as engine chunks, then the service's
/// chunks, streamed one by one; durable when this returns `Ok`.
pub fn write_checkpoint<D: Dir, V: StateView>(
    store: &CheckpointStore<D>,
    service: &str,
    agreement_id: u64,
    ordered_requests: u64,
    view: &ExecutorView<V>,
) -> Result<Written, CheckpointError> {
    assert!(agreement_id > 0, "a checkpoint follows an executed agreement");
    let meta = EngineMeta {
        ordered_requests,
        requests_executed: view.requests_executed,
        expired_through_ms: view.expired_through_ms,
    };
    let mut writer = store.begin(service, agreement_id, &meta.encode())?;
    // The writer's own error, kept whole while the service's sink sees an io::Error.
    let mut failed: Option<CheckpointError> = None;
    let streamed = (|| -> Result<(), StateError> {
        write_reply_cache(&view.reply_cache, CHECKPOINT_CHUNK_BYTES, &mut |bytes| {
            writer.chunk(Section::Engine, bytes).map_err(|error| {
                let text = error.to_string();
                failed.get_or_insert(error);
                StateError::Sink(std::io::Error::other(text))
            })
        })?;
        view.service.write_chunks(CHECKPOINT_CHUNK_BYTES, &mut |bytes| {
            writer.chunk(Section::Service, bytes).map_err(|error| {
                let text = error.to_string();
                failed.get_or_insert(error);
                StateError::Sink(std::io::Error::other(text))
            })
        })
    })();
    match (streamed, failed) {
        (Ok(()), _) => writer.finish(),
        (Err(_), Some(error)) => {
            writer.abort();
            Err(error)
        }
        (Err(error), None) => {
            writer.abort();
            Err(CheckpointError::Rejected {
                path: store.dir().path().join(dura_snapshot::format::file_name(agreement_id)),
                offset: 0,
                source: Arc::new(error),
            })
        }
    }
}

/// A replica's state rebuilt from its newest valid checkpoint.
#[derive(Debug)]
pub struct LoadedCheckpoint<S> {
    /// The executor: the service installed, the reply cache, the count.
    pub executor: Executor<S>,
    /// Where the log's replay starts.
    pub from: FromCheckpoint,
    /// The file used.
    pub file_name: String,
    /// Newer checkpoints that failed validation (reported, kept for inspection).
    pub skipped: Vec<Skipped>,
}

/// Builds an executor from a checkpoint's chunks (a [`ChunkSink`]): engine chunks first,
/// then the service's.
struct ExecutorBuilder<S: Service> {
    installer: S::Installer,
    cache: ReplyCacheInstaller,
    meta: EngineMeta,
    agreement_id: u64,
    service_chunks: u64,
}

impl<S: Service> ChunkSink for ExecutorBuilder<S> {
    type Output = (Executor<S>, FromCheckpoint);

    fn chunk(&mut self, section: Section, payload: &[u8]) -> Result<(), BoxError> {
        match section {
            Section::Engine if self.service_chunks > 0 => {
                Err("an engine chunk after the service's chunks".into())
            }
            Section::Engine => Ok(self.cache.chunk(payload)?),
            Section::Service => {
                self.service_chunks += 1;
                Ok(self.installer.chunk(payload)?)
            }
        }
    }

    fn finish(self) -> Result<Self::Output, BoxError> {
        let service = self.installer.finish()?;
        let executor = Executor::from_parts(
            service,
            self.cache.finish(),
            self.meta.requests_executed,
            self.meta.expired_through_ms,
        );
        let from = FromCheckpoint {
            agreement_id: self.agreement_id,
            ordered_requests: self.meta.ordered_requests,
        };
        Ok((executor, from))
    }
}

/// Loads the newest valid checkpoint of `template`'s service from `store` into a fresh
/// executor (the live service is not touched). A damaged newer checkpoint is skipped,
/// logged and reported. `Ok(None)`: there is no checkpoint.
pub fn load_checkpoint<D: Dir, S: Service>(
    store: &CheckpointStore<D>,
    template: &S,
) -> Result<Option<LoadedCheckpoint<S>>, CheckpointError> {
    let make = |header: &CheckpointHeader| -> Result<ExecutorBuilder<S>, BoxError> {
        Ok(ExecutorBuilder {
            installer: template.installer(),
            cache: ReplyCacheInstaller::default(),
            meta: EngineMeta::decode(&header.engine)?,
            agreement_id: header.agreement_id,
            service_chunks: 0,
        })
    };
    let Some(loaded) = store.load_newest(S::NAME, make)? else { return Ok(None) };
    let (executor, from) = loaded.value;
    Ok(Some(LoadedCheckpoint {
        executor,
        from,
        file_name: loaded.verified.file_name,
        skipped: loaded.skipped,
    }))
}

/// Version of [`EngineMeta`]'s encoding.
pub const ENGINE_META_VERSION: u32 = 3;
/// Bytes of [`EngineMeta`]'s encoding.
pub const ENGINE_META_BYTES: usize = 4 + 8 + 8 + 1 + 8;

/// The executor's and the schedule's place, in a checkpoint's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineMeta {
    /// Requests in the decided batches up to the checkpoint's agreement.
    pub ordered_requests: u64,
    /// Requests the executor ran (duplicates excluded).
    pub requests_executed: u64,
    /// The reply cache's eviction watermark ([`Executor::expired_through_ms`]).
    pub expired_through_ms: Option<u64>,
}

impl EngineMeta {
    /// `u32` version, `u64` ordered requests, `u64` requests executed, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENGINE_META_BYTES);
        out.extend_from_slice(&ENGINE_META_VERSION.to_le_bytes());
        out.extend_from_slice(&self.ordered_requests.to_le_bytes());
        out.extend_from_slice(&self.requests_executed.to_le_bytes());
        out.push(u8::from(self.expired_through_ms.is_some()));
        out.extend_from_slice(&self.expired_through_ms.unwrap_or(0).to_le_bytes());
        assert_eq!(out.len(), ENGINE_META_BYTES);
        out
    }

    /// The inverse of [`EngineMeta::encode`]; an error on any other length or version.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() != ENGINE_META_BYTES {
            return Err(StateError::Invalid(format!(
                "engine metadata of {} bytes, expected {ENGINE_META_BYTES}",
                bytes.len()
            )));
        }
        let version = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        if version != ENGINE_META_VERSION {
            return Err(StateError::Invalid(format!(
                "engine metadata version {version}, this build reads {ENGINE_META_VERSION}"
            )));
        }
        let through = u64::from_le_bytes(bytes[21..29].try_into().expect("8 bytes"));
        let expired_through_ms = match bytes[20] {
            0 if through == 0 => None,
            1 => Some(through),
            _ => {
                return Err(StateError::Invalid(
                    "engine metadata: a malformed eviction watermark".into(),
                ));
            }
        };
        Ok(Self {
            ordered_requests: u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")),
            requests_executed: u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")),
            expired_through_ms,
        })
    }
}

/// One reply cache entry as a checkpoint holds it (see [`CachedReply`]).
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
struct ReplyCacheEntry {
    client: u64,
    sequence: u64,
    /// `None`: deferred, not answered yet.
    reply: Option<Vec<u8>>,
    deferred: bool,
    /// The earlier deferred request: its sequence and, once released, its reply.
    earlier: Option<(u64, Option<Vec<u8>>)>,
    /// See [`CachedReply::active_ms`].
    active_ms: u64,
    /// [`CachedReply::decided`]: agreement and batch hash.
    decided: (u64, [u8; 32]),
    /// The earlier deferred request's [`EarlierDeferred::decided`].
    earlier_decided: (u64, [u8; 32]),
}

/// One engine chunk: reply cache entries in client order.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
struct ReplyCacheChunk {
    entries: Vec<ReplyCacheEntry>,
}

/// Bytes an entry costs beyond its reply, for cutting chunks near their bound.
const REPLY_ENTRY_OVERHEAD_BYTES: usize = 32;

/// Streams `cache` as engine chunks of about `chunk_bytes_max` bytes each, in client
/// order, handing each to `sink`.
pub fn write_reply_cache(
    cache: &OrdMap<u64, CachedReply>,
    chunk_bytes_max: usize,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let mut chunk = ReplyCacheChunk { entries: Vec::new() };
    let mut chunk_bytes = 0usize;
    let mut flush = |chunk: &mut ReplyCacheChunk| -> Result<(), StateError> {
        let bytes = rkyv::to_bytes::<rancor::Error>(&*chunk)
            .map_err(|error| StateError::Invalid(format!("archiving the reply cache: {error}")))?;
        assert!(bytes.len() <= CHUNK_BYTES_LIMIT, "a reply cache chunk over the limit");
        chunk.entries.clear();
        sink(&bytes)
    };
    for (client, cached) in cache {
        let earlier_reply = cached.earlier.as_ref().and_then(|earlier| earlier.reply.as_ref());
        let entry_bytes = REPLY_ENTRY_OVERHEAD_BYTES
            + cached.reply.as_ref().map_or(0, |reply| reply.len())
            + earlier_reply.map_or(0, |reply| reply.len());
        if !chunk.entries.is_empty() && chunk_bytes + entry_bytes > chunk_bytes_max {
            flush(&mut chunk)?;
            chunk_bytes = 0;
        }
        chunk.entries.push(ReplyCacheEntry {
            client: *client,
            sequence: cached.sequence,
            reply: cached.reply.as_ref().map(|reply| reply.to_vec()),
            deferred: cached.deferred,
            earlier: cached
                .earlier
                .as_ref()
                .map(|earlier| (earlier.sequence, earlier.reply.as_ref().map(|r| r.to_vec()))),
            active_ms: cached.active_ms,
            decided: (cached.decided.agreement_id, cached.decided.hash),
            earlier_decided: cached.earlier.as_ref().map_or((0, [0; 32]), |earlier| {
                (earlier.decided.agreement_id, earlier.decided.hash)
            }),
        });
        chunk_bytes += entry_bytes;
    }
    if !chunk.entries.is_empty() {
        flush(&mut chunk)?;
    }
    Ok(())
}

/// Rebuilds a reply cache from engine chunks, checking client order across them.
#[derive(Debug, Default)]
pub struct ReplyCacheInstaller {
    cache: OrdMap<u64, CachedReply>,
    last_client: Option<u64>,
}

impl ReplyCacheInstaller {
    /// Takes the next engine chunk (aligned to [`crate::service::CHUNK_ALIGN`], its
    /// checksum already matched).
    pub fn chunk(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let chunk = rkyv::access::<ArchivedReplyCacheChunk, rancor::Error>(bytes)
            .map_err(|error| StateError::Invalid(format!("a reply cache chunk: {error}")))?;
        if chunk.entries.is_empty() {
            return Err(StateError::Invalid("an empty reply cache chunk".into()));
        }
        for entry in chunk.entries.iter() {
            let client = entry.client.to_native();
            if self.last_client.is_some_and(|last| last >= client) {
                return Err(StateError::Invalid(format!(
                    "reply cache clients out of order: {client} after {:?}",
                    self.last_client
                )));
            }
            let sequence = entry.sequence.to_native();
            let reply: Option<Arc<[u8]>> =
                entry.reply.as_ref().map(|reply| Arc::from(reply.as_slice()));
            let deferred = entry.deferred;
            if reply.is_none() && !deferred {
                return Err(StateError::Invalid(format!(
                    "client {client}: a reply cache entry with no reply that was not deferred"
                )));
            }
            let earlier = match entry.earlier.as_ref() {
                None => None,
                Some(earlier) => {
                    let earlier_sequence = earlier.0.to_native();
                    if earlier_sequence >= sequence {
                        return Err(StateError::Invalid(format!(
                            "client {client}: an earlier deferred request {earlier_sequence} \
                             not before {sequence}"
                        )));
                    }
                    Some(EarlierDeferred {
                        decided: DecisionId {
                            agreement_id: entry.earlier_decided.0.to_native(),
                            hash: entry.earlier_decided.1,
                        },
                        sequence: earlier_sequence,
                        reply: earlier.1.as_ref().map(|reply| Arc::from(reply.as_slice())),
                    })
                }
            };
            let active_ms = entry.active_ms.to_native();
            let decided =
                DecisionId { agreement_id: entry.decided.0.to_native(), hash: entry.decided.1 };
            let cached = CachedReply { sequence, reply, decided, deferred, earlier, active_ms };
            self.cache.insert(client, cached);
            self.last_client = Some(client);
        }
        Ok(())
    }

    /// The rebuilt cache.
    pub fn finish(self) -> OrdMap<u64, CachedReply> {
        self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(u64, u64, &[u8])]) -> OrdMap<u64, CachedReply> {
        entries
            .iter()
            .map(|(client, sequence, reply)| (*client, CachedReply::answered(*sequence, reply)))
            .collect()
    }

    fn chunks(cache: &OrdMap<u64, CachedReply>, bound: usize) -> Vec<rkyv::util::AlignedVec<16>> {
        let mut out = Vec::new();
        write_reply_cache(cache, bound, &mut |bytes| {
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(bytes);
            out.push(aligned);
            Ok(())
        })
        .expect("in memory");
        out
    }

    #[test]
    fn the_reply_cache_round_trips_in_chunks_and_refuses_disorder() {
        // Answered entries, deferred ones still waiting, deferred ones answered later,
        // and entries that keep an earlier deferred request, answered or not.
        let original: OrdMap<u64, CachedReply> = (0..300u64)
            .map(|c| {
                let mut entry = CachedReply::answered(c + 9, &[c as u8; 50]);
                entry.active_ms = 1_795_000_000_000 + c * 7;
                entry.decided = DecisionId { agreement_id: c + 1, hash: [(c % 251) as u8; 32] };
                match c % 4 {
                    1 => {
                        entry.reply = None;
                        entry.deferred = true;
                    }
                    2 => entry.deferred = true,
                    3 => {
                        let reply = (c % 8 == 3).then(|| Arc::from(&[7u8; 20][..]));
                        let decided = DecisionId { agreement_id: c, hash: [c as u8; 32] };
                        entry.earlier = Some(EarlierDeferred { sequence: c + 2, reply, decided });
                    }
                    _ => {}
                }
                (c * 3, entry)
            })
            .collect();
        let written = chunks(&original, 1024);
        assert!(written.len() > 5);
        let mut installer = ReplyCacheInstaller::default();
        for chunk in &written {
            installer.chunk(chunk).expect("valid");
        }
        assert_eq!(installer.finish(), original);
        let mut installer = ReplyCacheInstaller::default();
        installer.chunk(&written[1]).expect("valid alone");
        assert!(installer.chunk(&written[0]).is_err(), "an earlier chunk after a later one");
        // Equal caches built in another order give identical chunks.
        let small = cache(&[(5, 1, b"a"), (1, 2, b"bb")]);
        let mut other = OrdMap::new();
        other.insert(1, CachedReply::answered(2, b"bb"));
        other.insert(5, CachedReply::answered(1, b"a"));
        let one: Vec<Vec<u8>> = chunks(&small, 1024).iter().map(|c| c.to_vec()).collect();
        let two: Vec<Vec<u8>> = chunks(&other, 1024).iter().map(|c| c.to_vec()).collect();
        assert_eq!(one, two);
    }

    #[test]
    fn a_reply_cache_entry_with_no_reply_must_be_deferred() {
        let mut broken = OrdMap::new();
        let mut entry = CachedReply::answered(4, b"x");
        entry.reply = None;
        broken.insert(1u64, entry);
        let written = chunks(&broken, 1024);
        let mut installer = ReplyCacheInstaller::default();
        assert!(installer.chunk(&written[0]).is_err());
        let mut broken = OrdMap::new();
        let mut entry = CachedReply::answered(4, b"x");
        entry.earlier =
            Some(EarlierDeferred { sequence: 4, reply: None, decided: DecisionId::default() });
        broken.insert(1u64, entry);
        let written = chunks(&broken, 1024);
        let mut installer = ReplyCacheInstaller::default();
        assert!(installer.chunk(&written[0]).is_err(), "an earlier request not earlier");
    }

    #[test]
    fn engine_meta_round_trips_and_refuses_other_versions() {
        let meta = EngineMeta {
            ordered_requests: 12_345,
            requests_executed: 12_000,
            expired_through_ms: None,
        };
        assert_eq!(EngineMeta::decode(&meta.encode()).expect("valid"), meta);
        let evicted = EngineMeta { expired_through_ms: Some(0), ..meta };
        assert_eq!(EngineMeta::decode(&evicted.encode()).expect("valid"), evicted);
        let mut flag = meta.encode();
        flag[20] = 2;
        assert!(EngineMeta::decode(&flag).is_err(), "a watermark flag other than 0 or 1");
        let mut bytes = meta.encode();
        bytes[0] = 9;
        assert!(EngineMeta::decode(&bytes).is_err());
        assert!(EngineMeta::decode(&bytes[..10]).is_err());
    }
}
