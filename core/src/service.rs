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
    /// The agreed time of the request's batch ([`crate::Batch::timestamp_ms`]): the same
    /// on every replica, unlike any replica's clock.
    pub now_ms: u64,
}

/// A deferred request's answer, given by the execution of a later request (see
/// [`Replies::release`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The client of the deferred request.
    pub client_id: u64,
    /// The deferred request's sequence number.
    pub sequence: u64,
    /// Its reply.
    pub reply: Vec<u8>,
}

/// What a batch's execution answers (see [`Service::execute_batch`]): for each request
/// in order, a reply now or a deferral; and replies to requests deferred earlier that
/// this batch released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replies {
    answers: Vec<Option<Vec<u8>>>,
    released: Vec<Released>,
}

impl Replies {
    /// Nothing answered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers the batch's next request now with `reply`.
    pub fn reply(&mut self, reply: Vec<u8>) {
        self.answers.push(Some(reply));
    }

    /// The batch's next request is answered later, by [`Replies::release`] during the
    /// execution of another request (a blocked read waiting for a write).
    pub fn defer(&mut self) {
        self.answers.push(None);
    }

    /// Answers a request deferred earlier (in this batch or an earlier one) with `reply`:
    /// client `client_id`'s request `sequence`. Each deferred request is released once.
    pub fn release(&mut self, client_id: u64, sequence: u64, reply: Vec<u8>) {
        self.released.push(Released { client_id, sequence, reply });
    }

    /// How many of the batch's requests were answered or deferred so far.
    pub fn answered(&self) -> usize {
        self.answers.len()
    }

    /// The answers in request order (`None`: deferred), and the releases in the order
    /// they were made.
    pub fn into_parts(self) -> (Vec<Option<Vec<u8>>>, Vec<Released>) {
        (self.answers, self.released)
    }
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

    /// Applies `requests` in order and, for each request in the same order, either
    /// answers it ([`Replies::reply`]) or defers it ([`Replies::defer`]): exactly one
    /// of the two per request. A deferred request is answered later by
    /// [`Replies::release`], when the execution of another request (in this batch or a
    /// later one) gives its answer; the runtime sends such a reply under the same rule as
    /// any other, once the releasing request's batch is durable. Deferred requests are
    /// part of the state: a checkpoint holds them, a restart keeps them.
    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies);

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
