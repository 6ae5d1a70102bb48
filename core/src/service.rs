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
    /// Applies `requests` in order and pushes exactly one reply per request onto
    /// `replies`, in the same order. A batch may span several agreements.
    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Vec<Vec<u8>>);

    /// A digest of the whole state, equal on replicas with equal state. Used by the
    /// simulator's oracle and by checkpoint validation.
    fn state_digest(&self) -> [u8; 32];
}
