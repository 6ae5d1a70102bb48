//! The application side of replication: the [`Service`] trait and the requests it is
//! given ([`OrderedRequest`]). The executor that runs them exactly once each, with the
//! per-client reply cache, is the runtime's (`dura_engine::service::Executor`).

/// One client request, as ordering delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderedRequest<'a> {
    /// The client that sent the request.
    pub client_id: u64,
    /// The client's sequence number for it; strictly increasing per client.
    pub sequence: u64,
    /// The operation, opaque to dura.
    pub operation: &'a [u8],
}

/// A replicated application.
///
/// Contract: [`Service::execute_batch`] is deterministic. The same requests in the same
/// order, applied to the same state, leave the same state and give the same replies on
/// every replica. It must not read clocks, randomness or anything outside its state.
pub trait Service: Send + 'static {
    /// The service's name, written into checkpoints; a checkpoint of another service is
    /// refused.
    const NAME: &'static str;

    /// An O(1) immutable view of the state (see [`StateView`]).
    type View: StateView;

    /// What builds a service from a view's chunks (see [`StateInstaller`]).
    type Installer: StateInstaller<Service = Self>;

    /// Applies `requests` in order and pushes exactly one reply per request onto
    /// `replies`, in the same order. A batch may span several agreements.
    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Vec<Vec<u8>>);

    /// A digest of the whole state, equal on replicas with equal state. Used by the
    /// simulator's oracle and by checkpoint validation.
    fn state_digest(&self) -> [u8; 32];

    /// The state as it is now, between two batches, in O(1) time: later batches must not
    /// change what the view holds (persistent or copy-on-write structures).
    fn view(&self) -> Self::View;

    /// An empty builder for a service configured like this one.
    fn installer(&self) -> Self::Installer;
}

/// Why a state could not be written out or installed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The sink a chunk was handed to failed (a checkpoint file, a transfer stream).
    #[error("writing a state chunk: {0}")]
    Sink(#[from] std::io::Error),
    /// A chunk (already checked against its checksum) does not decode as this service's
    /// state, or the chunks do not make a whole state.
    #[error("invalid state: {0}")]
    Invalid(String),
}

/// An immutable view of a service's state at one point between two batches, taken in
/// O(1) by [`Service::view`] and serialised on another thread while execution goes on.
pub trait StateView: Send + 'static {
    /// Streams the state as canonical chunks, in order, handing each to `sink`: equal
    /// states give byte-identical chunks, whatever history built them (ordered
    /// structures only, never a hash map's iteration order). A chunk holds items up to
    /// `chunk_bytes_max` bytes; a single item larger than that goes in a chunk of its
    /// own. No chunk exceeds [`CHUNK_BYTES_LIMIT`].
    fn write_chunks(
        &self,
        chunk_bytes_max: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError>;
}

/// Builds a fresh service from the chunks a [`StateView`] wrote, without touching the
/// live one: a caller swaps the result in only once the whole state validated.
pub trait StateInstaller: Send + 'static {
    /// The service it builds.
    type Service;

    /// Takes the next chunk. Precondition: the chunk's bytes matched their checksum, and
    /// `bytes` starts at an address aligned to [`CHUNK_ALIGN`] (zero-copy readers such as
    /// rkyv need it).
    fn chunk(&mut self, bytes: &[u8]) -> Result<(), StateError>;

    /// The service holding every chunk taken; an error when the chunks were not a whole
    /// state.
    fn finish(self) -> Result<Self::Service, StateError>;
}

/// The largest chunk a [`StateView`] may write (readers refuse larger ones): twice the
/// largest operation, so that any single item a request could create fits, and far below
/// the 2 GiB a zero-copy archive's relative pointers can span.
pub const CHUNK_BYTES_LIMIT: usize = 2 * crate::request::OPERATION_BYTES_MAX;
const _: () = assert!(CHUNK_BYTES_LIMIT <= 1 << 30);

/// The alignment of every chunk handed to [`StateInstaller::chunk`].
pub const CHUNK_ALIGN: usize = 16;

/// A [`StateView`] that is a copy of a small state's whole encoding, for services whose
/// state is a few MiB at most (tests, tools): taking it is O(state), not O(1). The bytes
/// are cut into chunks of `chunk_bytes_max`; [`CopiedStateInstaller`] joins them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedState(pub Vec<u8>);

impl StateView for CopiedState {
    fn write_chunks(
        &self,
        chunk_bytes_max: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        assert!(chunk_bytes_max > 0 && chunk_bytes_max <= CHUNK_BYTES_LIMIT);
        self.0.chunks(chunk_bytes_max).try_for_each(sink)
    }
}

/// Joins a [`CopiedState`]'s chunks and decodes the whole with `decode`.
#[derive(Debug)]
pub struct CopiedStateInstaller<S> {
    bytes: Vec<u8>,
    decode: fn(&[u8]) -> Result<S, StateError>,
}

impl<S> CopiedStateInstaller<S> {
    /// An empty installer that will build its service with `decode`.
    pub fn new(decode: fn(&[u8]) -> Result<S, StateError>) -> Self {
        Self { bytes: Vec::new(), decode }
    }
}

impl<S: Send + 'static> StateInstaller for CopiedStateInstaller<S> {
    type Service = S;

    fn chunk(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(self) -> Result<S, StateError> {
        (self.decode)(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_state_survives_any_chunk_size() {
        let state = CopiedState((0..=255u8).cycle().take(10_000).collect());
        for chunk_bytes_max in [1, 7, 4096, 10_000, 1 << 20] {
            let mut installer = CopiedStateInstaller::new(|bytes| Ok(bytes.to_vec()));
            let mut chunks = 0;
            state
                .write_chunks(chunk_bytes_max, &mut |chunk| {
                    assert!(chunk.len() <= chunk_bytes_max);
                    chunks += 1;
                    installer.chunk(chunk)
                })
                .expect("in memory");
            assert_eq!(chunks, 10_000usize.div_ceil(chunk_bytes_max));
            assert_eq!(installer.finish().expect("whole"), state.0);
        }
    }
}
