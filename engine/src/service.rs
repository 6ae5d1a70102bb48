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
    CHUNK_ALIGN, CHUNK_BYTES_LIMIT, CopiedState, CopiedStateInstaller, OrderedRequest, Released,
    Replies, Service, StateError, StateInstaller, StateView,
};

/// What the executor did with one ordered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Executed now; this is its reply.
    Executed(Vec<u8>),
    /// A retransmission of an executed request the cache still holds: the cached reply.
    Cached(Vec<u8>),
    /// Executed now and deferred by the service, or a retransmission of a request still
    /// deferred: no reply yet (a later batch releases it).
    Deferred,
    /// Older than the requests the cache holds for this client: dropped, nothing to send.
    Stale,
}

/// What one call of [`Executor::execute`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// One per request, in delivery order.
    pub outcomes: Vec<Outcome>,
    /// Replies to requests deferred earlier that this batch released, in release order.
    pub released: Vec<Released>,
}

/// Runs ordered requests through a [`Service`] exactly once each.
#[derive(Debug)]
pub struct Executor<S> {
    service: S,
    /// client id -> its last executed request (and an earlier deferred one). One entry
    /// per client. A persistent map, so a checkpoint's view of it is O(1).
    reply_cache: OrdMap<u64, CachedReply>,
    requests_executed: u64,
}

/// A client's last executed request and its reply, as the reply cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedReply {
    /// The request's sequence number.
    pub sequence: u64,
    /// Its reply; `None` while the service keeps it deferred.
    pub reply: Option<Arc<[u8]>>,
    /// The service deferred it (its reply, if any, came from a later request).
    pub deferred: bool,
    /// The client's newest earlier request that was deferred, while it is unanswered or
    /// until the client's next request after this one: a client that stopped waiting
    /// (it sent a cancel) can still fetch the answer given before the cancel ran.
    pub earlier: Option<EarlierDeferred>,
}

/// A deferred request a client moved on from (see [`CachedReply::earlier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierDeferred {
    /// Its sequence number.
    pub sequence: u64,
    /// Its reply, once released.
    pub reply: Option<Arc<[u8]>>,
}

impl CachedReply {
    /// The entry for a request answered now.
    pub fn answered(sequence: u64, reply: &[u8]) -> Self {
        Self { sequence, reply: Some(Arc::from(reply)), deferred: false, earlier: None }
    }

    /// The cache's answer for `sequence`: `Some(Some(reply))`, `Some(None)` while it is
    /// deferred, `None` when the entry does not hold it.
    pub fn lookup(&self, sequence: u64) -> Option<Option<&[u8]>> {
        if sequence == self.sequence {
            return Some(self.reply.as_deref());
        }
        match &self.earlier {
            Some(earlier) if earlier.sequence == sequence => Some(earlier.reply.as_deref()),
            _ => None,
        }
    }

    /// The entry after this client's next request, `sequence`, ran with `reply` (`None`:
    /// deferred). Precondition: `sequence > self.sequence`.
    fn next(&self, sequence: u64, reply: Option<&[u8]>) -> Self {
        assert!(sequence > self.sequence, "a client's requests run in sequence order");
        let earlier = if self.deferred {
            Some(EarlierDeferred { sequence: self.sequence, reply: self.reply.clone() })
        } else {
            self.earlier.clone().filter(|earlier| earlier.reply.is_none())
        };
        Self { sequence, reply: reply.map(Arc::from), deferred: reply.is_none(), earlier }
    }

    /// Records the release of `sequence` with `reply`; false when the entry does not hold
    /// that request as deferred and unanswered.
    fn release(&mut self, sequence: u64, reply: &[u8]) -> bool {
        if sequence == self.sequence && self.deferred && self.reply.is_none() {
            self.reply = Some(Arc::from(reply));
            return true;
        }
        match &mut self.earlier {
            Some(earlier) if earlier.sequence == sequence && earlier.reply.is_none() => {
                earlier.reply = Some(Arc::from(reply));
                true
            }
            _ => false,
        }
    }
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

    /// Executes `requests` (in delivery order): one [`Outcome`] per request, and the
    /// replies the service released for requests it deferred earlier. Requests already
    /// executed are not run again.
    pub fn execute(&mut self, requests: &[OrderedRequest<'_>]) -> BatchOutcome {
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
                    outcomes.push(Outcome::Stale);
                    continue;
                }
            } else if let Some(cached) = self.reply_cache.get(&request.client_id) {
                match cached.lookup(request.sequence) {
                    Some(Some(reply)) => {
                        outcomes.push(Outcome::Cached(reply.to_vec()));
                        continue;
                    }
                    Some(None) => {
                        outcomes.push(Outcome::Deferred);
                        continue;
                    }
                    None if request.sequence < cached.sequence => {
                        outcomes.push(Outcome::Stale);
                        continue;
                    }
                    None => {}
                }
            }
            batch_last.insert(request.client_id, (request.sequence, fresh.len()));
            fresh_outcome.push(outcomes.len());
            fresh.push(*request);
            outcomes.push(Outcome::Deferred);
        }
        let mut replies = Replies::new();
        self.service.execute_batch(&fresh, &mut replies);
        assert_eq!(replies.answered(), fresh.len(), "a service answers or defers each request");
        let (answers, released) = replies.into_parts();
        for (outcome_at, original_at) in in_batch_duplicates {
            outcomes[outcome_at] = match &answers[original_at] {
                Some(reply) => Outcome::Cached(reply.clone()),
                None => Outcome::Deferred,
            };
        }
        for ((request, answer), outcome_at) in fresh.iter().zip(answers).zip(fresh_outcome) {
            let cached = match self.reply_cache.get(&request.client_id) {
                Some(previous) => previous.next(request.sequence, answer.as_deref()),
                None => CachedReply {
                    sequence: request.sequence,
                    reply: answer.as_deref().map(Arc::from),
                    deferred: answer.is_none(),
                    earlier: None,
                },
            };
            self.reply_cache.insert(request.client_id, cached);
            outcomes[outcome_at] = match answer {
                Some(reply) => Outcome::Executed(reply),
                None => Outcome::Deferred,
            };
        }
        for release in &released {
            // A release the cache cannot hold (the client moved on twice since) is still
            // sent; only a retransmission of it goes unanswered.
            if let Some(cached) = self.reply_cache.get_mut(&release.client_id) {
                cached.release(release.sequence, &release.reply);
            }
        }
        self.requests_executed += fresh.len() as u64;
        BatchOutcome { outcomes, released }
    }

    /// The cached reply for `client_id`'s request `sequence`, if the cache holds it
    /// answered (the client's last request, or an earlier deferred one).
    pub fn cached_reply(&self, client_id: u64, sequence: u64) -> Option<&[u8]> {
        self.reply_cache.get(&client_id)?.lookup(sequence).flatten()
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
        fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
            for request in requests {
                self.0.push(request.operation.to_vec());
                replies.reply((self.0.len() as u64).to_le_bytes().to_vec());
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
        OrderedRequest { client_id, sequence, operation, now_ms: 0 }
    }

    #[test]
    fn retransmitted_request_is_answered_from_cache_and_not_run_twice() {
        let mut executor = Executor::new(Journal::default());
        let first = executor.execute(&[req(7, 1, b"a")]).outcomes;
        assert_eq!(first, vec![Outcome::Executed(1u64.to_le_bytes().to_vec())]);
        let again = executor.execute(&[req(7, 1, b"a"), req(7, 2, b"b"), req(7, 2, b"b")]).outcomes;
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
        assert_eq!(executor.execute(&[req(7, 1, b"a")]).outcomes, vec![Outcome::Stale]);
    }

    #[test]
    fn clients_are_deduplicated_independently() {
        let mut executor = Executor::new(Journal::default());
        let outcomes =
            executor.execute(&[req(1, 5, b"x"), req(2, 5, b"y"), req(1, 5, b"x")]).outcomes;
        assert!(matches!(outcomes[0], Outcome::Executed(_)));
        assert!(matches!(outcomes[1], Outcome::Executed(_)));
        assert!(matches!(outcomes[2], Outcome::Cached(_)));
        assert_eq!(executor.last_executed(1), Some(5));
        assert_eq!(executor.last_executed(2), Some(5));
    }

    /// `wait` defers; `post X` answers `posted` and releases every waiting request with
    /// `X`, in wait order.
    #[derive(Default)]
    struct Mailbox(Vec<(u64, u64)>);

    impl Service for Mailbox {
        const NAME: &'static str = "mailbox";
        type View = crate::service::CopiedState;
        type Installer = crate::service::CopiedStateInstaller<Mailbox>;
        fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
            for request in requests {
                if let Some(message) = request.operation.strip_prefix(b"post ") {
                    replies.reply(b"posted".to_vec());
                    for (client_id, sequence) in self.0.drain(..) {
                        replies.release(client_id, sequence, message.to_vec());
                    }
                } else {
                    self.0.push((request.client_id, request.sequence));
                    replies.defer();
                }
            }
        }
        fn state_digest(&self) -> [u8; 32] {
            [self.0.len() as u8; 32]
        }
        fn view(&self) -> crate::service::CopiedState {
            crate::service::CopiedState(Vec::new())
        }
        fn installer(&self) -> crate::service::CopiedStateInstaller<Mailbox> {
            crate::service::CopiedStateInstaller::new(|_| Ok(Mailbox::default()))
        }
    }

    fn released(client_id: u64, sequence: u64, reply: &[u8]) -> Released {
        Released { client_id, sequence, reply: reply.to_vec() }
    }

    #[test]
    fn a_deferred_request_is_answered_by_the_request_that_releases_it_and_cached_then() {
        let mut executor = Executor::new(Mailbox::default());
        let waited = executor.execute(&[req(1, 1, b"wait"), req(1, 1, b"wait")]);
        assert_eq!(waited.outcomes, vec![Outcome::Deferred, Outcome::Deferred]);
        assert!(waited.released.is_empty());
        // A retransmission while it waits is neither run again nor answered.
        let again = executor.execute(&[req(1, 1, b"wait")]);
        assert_eq!(again.outcomes, vec![Outcome::Deferred]);
        assert_eq!(executor.requests_executed(), 1);
        assert_eq!(executor.cached_reply(1, 1), None);
        let posted = executor.execute(&[req(2, 1, b"post hi")]);
        assert_eq!(posted.outcomes, vec![Outcome::Executed(b"posted".to_vec())]);
        assert_eq!(posted.released, vec![released(1, 1, b"hi")]);
        assert_eq!(executor.cached_reply(1, 1), Some(&b"hi"[..]));
        let again = executor.execute(&[req(1, 1, b"wait")]);
        assert_eq!(again.outcomes, vec![Outcome::Cached(b"hi".to_vec())]);
    }

    #[test]
    fn a_client_that_moved_on_still_gets_its_earlier_deferred_answer_once() {
        let mut executor = Executor::new(Mailbox::default());
        executor.execute(&[req(1, 1, b"wait")]);
        // The client moves on (a cancel would go here) while 1 waits; 2 waits too.
        let moved = executor.execute(&[req(1, 2, b"wait"), req(3, 1, b"post x")]);
        assert_eq!(moved.released, vec![released(1, 1, b"x"), released(1, 2, b"x")]);
        assert_eq!(executor.cached_reply(1, 1), Some(&b"x"[..]), "the earlier one");
        assert_eq!(executor.cached_reply(1, 2), Some(&b"x"[..]));
        // Deferred in the same batch as its release, after the client moved on.
        let mut executor = Executor::new(Mailbox::default());
        let same = executor.execute(&[req(1, 1, b"wait"), req(1, 2, b"post y")]);
        assert_eq!(same.outcomes[1], Outcome::Executed(b"posted".to_vec()));
        assert_eq!(same.released, vec![released(1, 1, b"y")]);
        assert_eq!(executor.cached_reply(1, 1), Some(&b"y"[..]));
        // Two requests later the earlier answered one is gone; an unanswered one stays.
        executor.execute(&[req(1, 3, b"post z")]);
        assert_eq!(executor.cached_reply(1, 1), None);
        assert_eq!(executor.execute(&[req(1, 1, b"wait")]).outcomes, vec![Outcome::Stale]);
        let mut executor = Executor::new(Mailbox::default());
        executor.execute(&[req(1, 1, b"wait"), req(1, 2, b"post-less")]);
        executor.execute(&[req(1, 3, b"wait")]);
        executor.execute(&[req(1, 4, b"wait")]);
        let late = executor.execute(&[req(2, 1, b"post w")]);
        assert_eq!(late.released.len(), 4, "every waiting request is released");
        assert_eq!(executor.cached_reply(1, 4), Some(&b"w"[..]));
        assert_eq!(executor.cached_reply(1, 3), Some(&b"w"[..]));
        assert_eq!(executor.cached_reply(1, 1), None, "beyond what the cache keeps");
    }
}
