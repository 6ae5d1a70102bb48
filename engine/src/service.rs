//! The application side of a replica: the [`Service`] trait (defined in `dura_core`,
//! re-exported here), and the [`Executor`] that runs ordered requests through it
//! exactly once each, answering retransmissions from a per-client reply cache.
//!
//! The executor is deterministic: every correct replica that is given the same decided
//! batches in the same order makes the same calls into its service and produces the
//! same replies. The simulator and the real runtime share it.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::OrdMap;

pub use dura_core::service::{
    CHUNK_ALIGN, CHUNK_BYTES_LIMIT, CopiedState, CopiedStateInstaller, OrderedRequest, Service,
    StateError, StateInstaller, StateView,
};

/// What the executor did with one ordered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Executed now; this is its reply.
    Executed(Vec<u8>),
    /// A retransmission of the last executed request of this client: the cached reply.
    Cached(Vec<u8>),
    /// Older than the last executed request of this client: dropped, nothing to send.
    Stale,
}

/// Runs ordered requests through a [`Service`] exactly once each.
#[derive(Debug)]
pub struct Executor<S> {
    service: S,
    /// client id -> (last executed sequence, its reply). One entry per client. A
    /// persistent map, so a checkpoint's view of it is O(1).
    reply_cache: OrdMap<u64, CachedReply>,
    requests_executed: u64,
}

/// A client's last executed request and its reply, as the reply cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedReply {
    /// The request's sequence number.
    pub sequence: u64,
    /// Its reply.
    pub reply: Arc<[u8]>,
}

/// An O(1) view of an executor between two batches, for a checkpoint: the service's
/// state, the reply cache, and how many requests ran.
#[derive(Debug)]
pub struct ExecutorView<V> {
    /// The service's view.
    pub service: V,
    /// The reply cache, in client order.
    pub reply_cache: OrdMap<u64, CachedReply>,
    /// Requests the service executed (duplicates excluded).
    pub requests_executed: u64,
}

impl<S: Service> Executor<S> {
    /// An executor over `service` with an empty reply cache.
    pub fn new(service: S) -> Self {
        Self { service, reply_cache: OrdMap::new(), requests_executed: 0 }
    }

    /// An executor resumed from a checkpoint: its service, reply cache and count.
    pub fn from_parts(
        service: S,
        reply_cache: OrdMap<u64, CachedReply>,
        requests_executed: u64,
    ) -> Self {
        Self { service, reply_cache, requests_executed }
    }

    /// The executor's state now, in O(1) (see [`ExecutorView`]).
    pub fn view(&self) -> ExecutorView<S::View> {
        ExecutorView {
            service: self.service.view(),
            reply_cache: self.reply_cache.clone(),
            requests_executed: self.requests_executed,
        }
    }

    /// The highest sequence executed per client (what ordering needs to drop requests
    /// already run after a restart from a checkpoint).
    pub fn last_executed_per_client(&self) -> BTreeMap<u64, u64> {
        self.reply_cache.iter().map(|(client, cached)| (*client, cached.sequence)).collect()
    }

    /// Executes `requests` (in delivery order) and returns one [`Outcome`] per request.
    /// Requests already executed are not run again.
    pub fn execute(&mut self, requests: &[OrderedRequest<'_>]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut fresh: Vec<OrderedRequest<'_>> = Vec::with_capacity(requests.len());
        // For each fresh request, the index of its outcome.
        let mut fresh_outcome: Vec<usize> = Vec::with_capacity(requests.len());
        // Duplicates of a request that is itself in this batch: (outcome index, index
        // into `fresh` of the original), filled in once the batch has run.
        let mut in_batch_duplicates: Vec<(usize, usize)> = Vec::new();
        // client id -> (sequence, index into `fresh`) of its newest request in this call.
        let mut batch_last: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
        for request in requests {
            if let Some(&(last, fresh_at)) = batch_last.get(&request.client_id) {
                if request.sequence < last {
                    outcomes.push(Outcome::Stale);
                    continue;
                }
                if request.sequence == last {
                    in_batch_duplicates.push((outcomes.len(), fresh_at));
                    outcomes.push(Outcome::Cached(Vec::new()));
                    continue;
                }
            } else if let Some(cached) = self.reply_cache.get(&request.client_id) {
                if request.sequence < cached.sequence {
                    outcomes.push(Outcome::Stale);
                    continue;
                }
                if request.sequence == cached.sequence {
                    outcomes.push(Outcome::Cached(cached.reply.to_vec()));
                    continue;
                }
            }
            batch_last.insert(request.client_id, (request.sequence, fresh.len()));
            fresh_outcome.push(outcomes.len());
            fresh.push(*request);
            outcomes.push(Outcome::Executed(Vec::new()));
        }
        let mut replies = Vec::with_capacity(fresh.len());
        self.service.execute_batch(&fresh, &mut replies);
        assert_eq!(replies.len(), fresh.len(), "a service must reply once per request");
        for (outcome_at, original_at) in in_batch_duplicates {
            outcomes[outcome_at] = Outcome::Cached(replies[original_at].clone());
        }
        for ((request, reply), outcome_at) in fresh.iter().zip(replies).zip(fresh_outcome) {
            let cached = CachedReply { sequence: request.sequence, reply: Arc::from(&reply[..]) };
            self.reply_cache.insert(request.client_id, cached);
            outcomes[outcome_at] = Outcome::Executed(reply);
        }
        self.requests_executed += fresh.len() as u64;
        outcomes
    }

    /// The cached reply for `client_id`'s request `sequence`, if it was the last one
    /// executed for that client.
    pub fn cached_reply(&self, client_id: u64, sequence: u64) -> Option<&[u8]> {
        match self.reply_cache.get(&client_id) {
            Some(cached) if cached.sequence == sequence => Some(&cached.reply),
            _ => None,
        }
    }

    /// The last sequence number executed for `client_id`.
    pub fn last_executed(&self, client_id: u64) -> Option<u64> {
        self.reply_cache.get(&client_id).map(|cached| cached.sequence)
    }

    /// Number of requests the service has executed (duplicates excluded).
    pub fn requests_executed(&self) -> u64 {
        self.requests_executed
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The service, mutably (for install/restore paths, never for executing requests).
    pub fn service_mut(&mut self) -> &mut S {
        &mut self.service
    }
}

/// Encodings shared by the engine's test services.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::StateError;

    /// Each entry as a `u32` LE length and its bytes.
    pub(crate) fn encode_entries(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in entries {
            out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            out.extend_from_slice(entry);
        }
        out
    }

    /// The inverse of [`encode_entries`].
    pub(crate) fn decode_entries(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, StateError> {
        let mut entries = Vec::new();
        while !bytes.is_empty() {
            let truncated = || StateError::Invalid("a truncated entry".into());
            let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
            let len = u32::from_le_bytes(*len) as usize;
            let entry = rest.get(..len).ok_or_else(truncated)?;
            entries.push(entry.to_vec());
            bytes = &rest[len..];
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends each operation to a list; replies with the list length.
    #[derive(Default)]
    struct Journal(Vec<Vec<u8>>);

    impl Service for Journal {
        const NAME: &'static str = "journal";
        type View = crate::service::CopiedState;
        type Installer = crate::service::CopiedStateInstaller<Journal>;
        fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Vec<Vec<u8>>) {
            for request in requests {
                self.0.push(request.operation.to_vec());
                replies.push((self.0.len() as u64).to_le_bytes().to_vec());
            }
        }
        fn state_digest(&self) -> [u8; 32] {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(self.0.len() as u64).to_le_bytes());
            digest
        }
        fn view(&self) -> crate::service::CopiedState {
            crate::service::CopiedState(crate::service::tests_support::encode_entries(&self.0))
        }
        fn installer(&self) -> crate::service::CopiedStateInstaller<Journal> {
            crate::service::CopiedStateInstaller::new(|bytes| {
                crate::service::tests_support::decode_entries(bytes).map(Journal)
            })
        }
    }

    fn req(client_id: u64, sequence: u64, operation: &[u8]) -> OrderedRequest<'_> {
        OrderedRequest { client_id, sequence, operation }
    }

    #[test]
    fn retransmitted_request_is_answered_from_cache_and_not_run_twice() {
        let mut executor = Executor::new(Journal::default());
        let first = executor.execute(&[req(7, 1, b"a")]);
        assert_eq!(first, vec![Outcome::Executed(1u64.to_le_bytes().to_vec())]);
        let again = executor.execute(&[req(7, 1, b"a"), req(7, 2, b"b"), req(7, 2, b"b")]);
        assert_eq!(
            again,
            vec![
                Outcome::Cached(1u64.to_le_bytes().to_vec()),
                Outcome::Executed(2u64.to_le_bytes().to_vec()),
                Outcome::Cached(2u64.to_le_bytes().to_vec()),
            ]
        );
        assert_eq!(executor.service().0, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(executor.requests_executed(), 2);
        assert_eq!(executor.cached_reply(7, 2), Some(&2u64.to_le_bytes()[..]));
        assert_eq!(executor.cached_reply(7, 1), None);
        assert_eq!(executor.execute(&[req(7, 1, b"a")]), vec![Outcome::Stale]);
    }

    #[test]
    fn clients_are_deduplicated_independently() {
        let mut executor = Executor::new(Journal::default());
        let outcomes = executor.execute(&[req(1, 5, b"x"), req(2, 5, b"y"), req(1, 5, b"x")]);
        assert!(matches!(outcomes[0], Outcome::Executed(_)));
        assert!(matches!(outcomes[1], Outcome::Executed(_)));
        assert!(matches!(outcomes[2], Outcome::Cached(_)));
        assert_eq!(executor.last_executed(1), Some(5));
        assert_eq!(executor.last_executed(2), Some(5));
    }
}
