//! The tuple space as a replicated service: [`TupleSpace`] implements dura's
//! [`Service`], so the engine orders, logs, checkpoints and transfers it.
//!
//! - **Execution.** Each ordered request runs through [`TupleSpace::execute`] at its
//!   batch's agreed time ([`OrderedRequest::now_ms`]). A request's own answer is its
//!   reply; a request that blocked is deferred ([`Replies::defer`]); the answers of
//!   blocked requests it released go out as [`Replies::release`]. The engine sends a
//!   released answer, like any other, only once the batch of the request that released
//!   it is durable, and keeps it in the reply cache for a retransmission.
//! - **Checkpoints.** [`TupleSpaceView`] is an O(1) snapshot of the persistent maps;
//!   it streams the canonical state encoding ([`crate::space`]) cut into chunks between
//!   items, so equal states give byte-identical chunks. [`TupleSpaceInstaller`] decodes
//!   the chunks as they come, with every check of [`TupleSpace::decode_state`], and
//!   never touches the live space.

use dura_core::service::{
    CHUNK_BYTES_LIMIT, OrderedRequest, Replies, Service, StateError, StateInstaller, StateView,
};
use imbl::OrdMap;

use crate::codec::Sink;
use crate::space::{BlockedOp, ExecCtx, ItemSink, StateDecoder, Stored, TupleSpace, write_state};

impl Service for TupleSpace {
    const NAME: &'static str = "tuplespace";
    type View = TupleSpaceView;
    type Installer = TupleSpaceInstaller;

    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
        for request in requests {
            let ctx = ExecCtx {
                client_id: request.client_id,
                sequence: request.sequence,
                now_ms: request.now_ms,
            };
            let mut answers = self.execute(ctx, request.operation).into_iter().peekable();
            match answers.next_if(|a| a.client_id == ctx.client_id && a.sequence == ctx.sequence) {
                Some(own) => replies.reply(own.reply),
                None => replies.defer(),
            }
            for released in answers {
                replies.release(released.client_id, released.sequence, released.reply);
            }
        }
    }

    fn state_digest(&self) -> [u8; 32] {
        TupleSpace::state_digest(self)
    }

    fn view(&self) -> TupleSpaceView {
        let (now_ms, tuples, blocked) = self.view_parts();
        TupleSpaceView { now_ms, tuples, blocked }
    }

    fn installer(&self) -> TupleSpaceInstaller {
        TupleSpaceInstaller::default()
    }
}

/// A tuple space's state between two batches, taken in O(1) (see [`Service::view`]).
#[derive(Debug, Clone)]
pub struct TupleSpaceView {
    now_ms: u64,
    tuples: OrdMap<u64, Stored>,
    blocked: OrdMap<u64, BlockedOp>,
}

impl StateView for TupleSpaceView {
    fn write_chunks(
        &self,
        chunk_bytes_max: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        assert!(chunk_bytes_max > 0 && chunk_bytes_max <= CHUNK_BYTES_LIMIT);
        let mut chunker =
            Chunker { chunk: Vec::new(), item: Vec::new(), chunk_bytes_max, sink, failed: None };
        write_state(self.now_ms, &self.tuples, &self.blocked, &mut chunker);
        chunker.flush();
        match chunker.failed {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Cuts the state encoding into chunks of whole items, each at most
/// `chunk_bytes_max` bytes unless one item is larger (it then goes alone).
struct Chunker<'a> {
    chunk: Vec<u8>,
    item: Vec<u8>,
    chunk_bytes_max: usize,
    sink: &'a mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    /// The sink's first error: nothing more is handed to it.
    failed: Option<StateError>,
}

impl Chunker<'_> {
    fn flush(&mut self) {
        if self.chunk.is_empty() || self.failed.is_some() {
            return;
        }
        assert!(self.chunk.len() <= CHUNK_BYTES_LIMIT, "a state chunk over the limit");
        if let Err(error) = (self.sink)(&self.chunk) {
            self.failed = Some(error);
        }
        self.chunk.clear();
    }
}

impl Sink for Chunker<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.item.extend_from_slice(bytes);
    }
}

impl ItemSink for Chunker<'_> {
    fn item_end(&mut self) {
        if self.chunk.len() + self.item.len() > self.chunk_bytes_max {
            self.flush();
        }
        self.chunk.append(&mut self.item);
    }
}

/// Builds a tuple space from a [`TupleSpaceView`]'s chunks (see [`StateInstaller`]).
#[derive(Debug, Default)]
pub struct TupleSpaceInstaller {
    decoder: StateDecoder,
    chunks: u64,
}

impl StateInstaller for TupleSpaceInstaller {
    type Service = TupleSpace;

    fn chunk(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.chunks += 1;
        self.decoder.feed(bytes).map_err(|error| {
            StateError::Invalid(format!("tuple space chunk {}: {error}", self.chunks))
        })
    }

    fn finish(self) -> Result<TupleSpace, StateError> {
        self.decoder
            .finish()
            .map_err(|error| StateError::Invalid(format!("tuple space state: {error}")))
    }
}

#[cfg(test)]
mod tests;
