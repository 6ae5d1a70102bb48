//! Helpers shared by the integration tests.

#![allow(dead_code)]

use dura_snapshot::{BoxError, CheckpointStore, ChunkSink, Dir, Section, StoreOptions, Written};

/// The service name the tests write and expect.
pub const SERVICE: &str = "kv";

/// A chunk list, as written and as loaded.
pub type Chunks = Vec<(Section, Vec<u8>)>;

/// Deterministic chunks of both sections for the checkpoint after `agreement_id`.
pub fn chunks_for(agreement_id: u64) -> Chunks {
    let byte = |i: u64| (agreement_id.wrapping_mul(31).wrapping_add(i)) as u8;
    vec![
        (Section::Engine, (0..7).map(byte).collect()),
        (Section::Service, (0..700).map(byte).collect()),
        (Section::Service, Vec::new()),
        (Section::Service, (0..16).map(byte).collect()),
        (Section::Engine, (0..33).map(byte).collect()),
    ]
}

/// Engine metadata for the checkpoint after `agreement_id`.
pub fn engine_for(agreement_id: u64) -> Vec<u8> {
    format!("engine@{agreement_id}").into_bytes()
}

/// Writes a whole checkpoint.
pub fn write<D: Dir>(
    store: &CheckpointStore<D>,
    agreement_id: u64,
    engine: &[u8],
    chunks: &Chunks,
) -> dura_snapshot::Result<Written> {
    let mut writer = store.begin(SERVICE, agreement_id, engine)?;
    for (section, payload) in chunks {
        writer.chunk(*section, payload)?;
    }
    writer.finish()
}

/// Writes the standard checkpoint after `agreement_id`.
pub fn write_standard<D: Dir>(
    store: &CheckpointStore<D>,
    agreement_id: u64,
) -> dura_snapshot::Result<Written> {
    write(store, agreement_id, &engine_for(agreement_id), &chunks_for(agreement_id))
}

/// A builder that collects the chunks and checks each payload's alignment.
#[derive(Debug, Default)]
pub struct Collect {
    /// Chunks so far.
    pub chunks: Chunks,
}

impl ChunkSink for Collect {
    type Output = Chunks;

    fn chunk(&mut self, section: Section, payload: &[u8]) -> Result<(), BoxError> {
        assert_eq!(payload.as_ptr().addr() % 16, 0, "payloads are handed out 16-aligned");
        self.chunks.push((section, payload.to_vec()));
        Ok(())
    }

    fn finish(self) -> Result<Chunks, BoxError> {
        Ok(self.chunks)
    }
}

/// Loads the newest checkpoint of [`SERVICE`] into a [`Collect`], checking that the
/// header the builder was made from is the one reported.
pub fn load<D: Dir>(
    store: &CheckpointStore<D>,
) -> dura_snapshot::Result<Option<dura_snapshot::Loaded<Chunks>>> {
    store.load_newest(SERVICE, |_header| Ok(Collect::default()))
}

/// Options with a small chunk limit, to test the limit without large buffers.
pub fn small_limit(retain: usize) -> StoreOptions {
    StoreOptions { retain, chunk_bytes_limit: 4096 }
}
