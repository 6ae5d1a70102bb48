//! The application side of a replica: the [`Service`] trait (defined in `dura_core`,
//! re-exported here), and the [`Executor`] that runs ordered requests through it
//! exactly once each, answering retransmissions from a per-client reply cache.
//!
//! The executor is deterministic: every correct replica that is given the same decided
//! batches in the same order makes the same calls into its service and produces the
//! same replies. The simulator and the real runtime share it.

use std::collections::BTreeMap;
use std::sync::Arc;

use dura_core::{DecisionId, SEQUENCE_AHEAD_MAX_MS, sequence_time_ms};
use imbl::{OrdMap, OrdSet};

pub use dura_core::service::{
    CHUNK_ALIGN, CHUNK_BYTES_LIMIT, CopiedState, CopiedStateInstaller, OrderedRequest, Released,
    Replies, Service, StateError, StateInstaller, StateView,
};

/// What the executor did with one ordered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Executed now; this is its reply.
    Executed(Vec<u8>),
    /// A retransmission of an executed request the cache still holds: the cached reply,
    /// and the decision whose execution gave it.
    Cached(Vec<u8>, DecisionId),
    /// Executed now and deferred by the service, or a retransmission of a request still
    /// deferred: no reply yet (a later batch releases it).
    Deferred,
    /// Older than the requests the cache holds for this client: dropped, nothing to send.
    Stale,
    /// Refused, now and for good: its client has no reply cache entry (evicted, see
    /// [`Executor::clients_max`]) and its sequence number's session time is not after
    /// the eviction watermark, or that time is too far ahead of the batch's agreed time.
    /// Whether it ran before its client was evicted, the executor cannot tell.
    /// The reply says so ([`dura_core::ReplyStatus::Expired`]), with the lowest session
    /// time a new request of an unknown client is accepted with.
    Expired {
        /// That time, in ms.
        accept_from_ms: u64,
    },
}

/// Default bound on the clients the reply cache remembers (per-client protocol state).
pub const CLIENTS_MAX_DEFAULT: usize = 1 << 20;
/// The largest `clients_max` a configuration may set.
pub const CLIENTS_MAX_LIMIT: usize = 1 << 24;
const _: () = assert!(CLIENTS_MAX_DEFAULT <= CLIENTS_MAX_LIMIT);

/// What one call of [`Executor::execute`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// One per request, in delivery order.
    pub outcomes: Vec<Outcome>,
    /// Replies to requests deferred earlier that this batch released, in release order.
    pub released: Vec<Released>,
}

/// Runs ordered requests through a [`Service`] exactly once each.
///
/// The reply cache holds at most `clients_max` clients. Past that, the clients whose
/// last request ran at the oldest agreed time are evicted (ties: lowest client id),
/// after the batch that went over: a rule of the decided history alone, so every
/// replica evicts the same clients at the same agreement. A forgotten client's replayed
/// request must not run again, so the executor keeps the eviction watermark (the newest
/// agreed time of an evicted client's last request) and refuses ([`Outcome::Expired`])
/// a request of a client it does not hold unless the session time its sequence number
/// carries ([`dura_core::SEQUENCE_TIME_SHIFT`]) is more than
/// [`SEQUENCE_AHEAD_MAX_MS`] after the watermark. Every request that runs has a session
/// time at most that far ahead of its batch's agreed time, so every request an evicted
/// client ever ran is refused.
#[derive(Debug)]
pub struct Executor<S> {
    service: S,
    /// client id -> its last executed request (and an earlier deferred one). One entry
    /// per client, at most `clients_max`. A persistent map, so a checkpoint's view of it
    /// is O(1).
    reply_cache: OrdMap<u64, CachedReply>,
    /// (active_ms, client id) of every entry of `reply_cache`: the eviction order.
    by_activity: OrdSet<(u64, u64)>,
    clients_max: usize,
    /// The newest `active_ms` of an evicted client (None: none evicted yet).
    expired_through_ms: Option<u64>,
    requests_executed: u64,
}

/// A client's last executed request and its reply, as the reply cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedReply {
    /// The request's sequence number.
    pub sequence: u64,
    /// Its reply; `None` while the service keeps it deferred.
    pub reply: Option<Arc<[u8]>>,
    /// The decision whose execution gave `reply` (the one that ran the request, or the
    /// one that released it).
    pub decided: DecisionId,
    /// The service deferred it (its reply, if any, came from a later request).
    pub deferred: bool,
    /// The client's newest earlier request that was deferred, while it is unanswered or
    /// until the client's next request after this one: a client that stopped waiting
    /// (it sent a cancel) can still fetch the answer given before the cancel ran.
    pub earlier: Option<EarlierDeferred>,
    /// The newest agreed time (ms) at which one of the client's requests ran: the
    /// eviction order.
    pub active_ms: u64,
}

/// A deferred request a client moved on from (see [`CachedReply::earlier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierDeferred {
    /// Its sequence number.
    pub sequence: u64,
    /// Its reply, once released.
    pub reply: Option<Arc<[u8]>>,
    /// The decision that released it.
    pub decided: DecisionId,
}

impl CachedReply {
    /// The entry for a request answered now.
    pub fn answered(sequence: u64, reply: &[u8]) -> Self {
        Self {
            sequence,
            reply: Some(Arc::from(reply)),
            decided: DecisionId::default(),
            deferred: false,
            earlier: None,
            active_ms: 0,
        }
    }

    /// The cache's answer for `sequence`: `Some(Some((reply, decision)))`, `Some(None)`
    /// while it is deferred, `None` when the entry does not hold it.
    pub fn lookup(&self, sequence: u64) -> Option<Option<(&[u8], DecisionId)>> {
        if sequence == self.sequence {
            return Some(self.reply.as_deref().map(|reply| (reply, self.decided)));
        }
        match &self.earlier {
            Some(earlier) if earlier.sequence == sequence => {
                Some(earlier.reply.as_deref().map(|reply| (reply, earlier.decided)))
            }
            _ => None,
        }
    }

    /// The entry after this client's next request, `sequence`, ran with `reply` (`None`:
    /// deferred) at agreed time `now_ms`, in `decided`. Precondition:
    /// `sequence > self.sequence`.
    fn next(&self, sequence: u64, reply: Option<&[u8]>, now_ms: u64, decided: DecisionId) -> Self {
        assert!(sequence > self.sequence, "a client's requests run in sequence order");
        let earlier = if self.deferred {
            Some(EarlierDeferred {
                sequence: self.sequence,
                reply: self.reply.clone(),
                decided: self.decided,
            })
        } else {
            self.earlier.clone().filter(|earlier| earlier.reply.is_none())
        };
        Self {
            sequence,
            reply: reply.map(Arc::from),
            decided,
            deferred: reply.is_none(),
            earlier,
            active_ms: self.active_ms.max(now_ms),
        }
    }

    /// Records the release of `sequence` with `reply` by `decided`; false when the entry
    /// does not hold that request as deferred and unanswered.
    fn release(&mut self, sequence: u64, reply: &[u8], decided: DecisionId) -> bool {
        if sequence == self.sequence && self.deferred && self.reply.is_none() {
            self.reply = Some(Arc::from(reply));
            self.decided = decided;
            return true;
        }
        match &mut self.earlier {
            Some(earlier) if earlier.sequence == sequence && earlier.reply.is_none() => {
                earlier.reply = Some(Arc::from(reply));
                earlier.decided = decided;
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
    /// The eviction watermark (see [`Executor`]).
    pub expired_through_ms: Option<u64>,
}

impl<S: Service> Executor<S> {
    /// An executor over `service` with an empty reply cache of [`CLIENTS_MAX_DEFAULT`].
    pub fn new(service: S) -> Self {
        Self::from_parts(service, OrdMap::new(), 0, None)
    }

    /// An executor resumed from a checkpoint: its service, reply cache, count and
    /// eviction watermark; the bound is [`CLIENTS_MAX_DEFAULT`] until
    /// [`Executor::with_clients_max`].
    pub fn from_parts(
        service: S,
        reply_cache: OrdMap<u64, CachedReply>,
        requests_executed: u64,
        expired_through_ms: Option<u64>,
    ) -> Self {
        let by_activity =
            reply_cache.iter().map(|(client, cached)| (cached.active_ms, *client)).collect();
        let mut executor = Self {
            service,
            reply_cache,
            by_activity,
            clients_max: CLIENTS_MAX_DEFAULT,
            expired_through_ms,
            requests_executed,
        };
        executor.evict_over_bound();
        executor
    }

    /// The same executor bounded to `clients_max` clients (the cluster's setting: it
    /// must be equal on every replica), evicting down to it now if it holds more.
    pub fn with_clients_max(mut self, clients_max: usize) -> Self {
        assert!(
            (1..=CLIENTS_MAX_LIMIT).contains(&clients_max),
            "clients_max out of range (the configuration checks it)"
        );
        self.clients_max = clients_max;
        self.evict_over_bound();
        self
    }

    /// The bound on clients the reply cache holds.
    pub fn clients_max(&self) -> usize {
        self.clients_max
    }

    /// The eviction watermark: the newest agreed time of an evicted client's last
    /// request (None: none evicted).
    pub fn expired_through_ms(&self) -> Option<u64> {
        self.expired_through_ms
    }

    /// Clients the reply cache holds.
    pub fn clients(&self) -> usize {
        self.reply_cache.len()
    }

    /// The reply cache, in client order.
    pub fn reply_cache(&self) -> &OrdMap<u64, CachedReply> {
        &self.reply_cache
    }

    /// The executor's state now, in O(1) (see [`ExecutorView`]).
    pub fn view(&self) -> ExecutorView<S::View> {
        ExecutorView {
            service: self.service.view(),
            reply_cache: self.reply_cache.clone(),
            requests_executed: self.requests_executed,
            expired_through_ms: self.expired_through_ms,
        }
    }

    /// The lowest session time a request of a client the cache does not hold is run
    /// with.
    fn accept_from_ms(&self) -> u64 {
        self.expired_through_ms.map_or(0, |through| through + SEQUENCE_AHEAD_MAX_MS + 1)
    }

    /// Evicts the least recently active clients until at most `clients_max` remain.
    fn evict_over_bound(&mut self) {
        while self.reply_cache.len() > self.clients_max {
            let (active_ms, client) =
                self.by_activity.remove_min().expect("one index entry per cached client");
            let evicted = self.reply_cache.remove(&client);
            assert!(evicted.is_some_and(|e| e.active_ms == active_ms), "index matches cache");
            self.expired_through_ms = Some(self.expired_through_ms.unwrap_or(0).max(active_ms));
        }
        assert_eq!(self.by_activity.len(), self.reply_cache.len(), "one index entry per client");
    }

    /// The highest sequence executed per client (what ordering needs to drop requests
    /// already run after a restart from a checkpoint).
    pub fn last_executed_per_client(&self) -> BTreeMap<u64, u64> {
        self.reply_cache.iter().map(|(client, cached)| (*client, cached.sequence)).collect()
    }

    /// [`Executor::execute_decided`] outside any decision (its replies name none).
    pub fn execute(&mut self, requests: &[OrderedRequest<'_>]) -> BatchOutcome {
        self.execute_decided(requests, DecisionId::default())
    }

    /// Executes `requests` (in delivery order), the batch of decision `decided`: one
    /// [`Outcome`] per request, and the replies the service released for requests it
    /// deferred earlier. Requests already executed are not run again.
    pub fn execute_decided(
        &mut self,
        requests: &[OrderedRequest<'_>],
        decided: DecisionId,
    ) -> BatchOutcome {
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut fresh: Vec<OrderedRequest<'_>> = Vec::with_capacity(requests.len());
        // For each fresh request, the index of its outcome.
        let mut fresh_outcome: Vec<usize> = Vec::with_capacity(requests.len());
        // Duplicates of a request that is itself in this batch: (outcome index, index
        // into `fresh` of the original), filled in once the batch has run.
        let mut in_batch_duplicates: Vec<(usize, usize)> = Vec::new();
        // client id -> (sequence, index into `fresh`) of its newest request in this call.
        let mut batch_last: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
        let accept_from_ms = self.accept_from_ms();
        for request in requests {
            let session_ms = sequence_time_ms(request.sequence);
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
                    Some(Some((reply, earlier))) => {
                        outcomes.push(Outcome::Cached(reply.to_vec(), earlier));
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
            } else if self.expired_through_ms.is_some() && session_ms < accept_from_ms {
                // A client this cache does not hold: new, or evicted. An evicted one's
                // requests all carry a session time below `accept_from_ms`.
                outcomes.push(Outcome::Expired { accept_from_ms });
                continue;
            }
            if session_ms > request.now_ms.saturating_add(SEQUENCE_AHEAD_MAX_MS) {
                // Run, it would hold the eviction watermark's promise only once the
                // agreed time caught up with it.
                outcomes.push(Outcome::Expired { accept_from_ms });
                continue;
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
                Some(reply) => Outcome::Cached(reply.clone(), decided),
                None => Outcome::Deferred,
            };
        }
        for ((request, answer), outcome_at) in fresh.iter().zip(answers).zip(fresh_outcome) {
            let cached = match self.reply_cache.get(&request.client_id) {
                Some(previous) => {
                    self.by_activity.remove(&(previous.active_ms, request.client_id));
                    previous.next(request.sequence, answer.as_deref(), request.now_ms, decided)
                }
                None => CachedReply {
                    sequence: request.sequence,
                    reply: answer.as_deref().map(Arc::from),
                    decided,
                    deferred: answer.is_none(),
                    earlier: None,
                    active_ms: request.now_ms,
                },
            };
            self.by_activity.insert((cached.active_ms, request.client_id));
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
                cached.release(release.sequence, &release.reply, decided);
            }
        }
        self.requests_executed += fresh.len() as u64;
        self.evict_over_bound();
        BatchOutcome { outcomes, released }
    }

    /// The cached reply for `client_id`'s request `sequence`, if the cache holds it
    /// answered (the client's last request, or an earlier deferred one).
    pub fn cached_reply(&self, client_id: u64, sequence: u64) -> Option<&[u8]> {
        Some(self.reply_cache.get(&client_id)?.lookup(sequence)??.0)
    }

    /// The answer to a retransmission of `client_id`'s request `sequence` that ordering
    /// found already ordered: its cached reply, or, when the cache forgot the client
    /// and the request's session time is below what an unknown client is accepted
    /// with, the refusal ([`Outcome::Expired`]) that its execution would give. None:
    /// nothing to answer now (deferred, or older than what the cache holds).
    pub fn answer_retransmission(&self, client_id: u64, sequence: u64) -> Option<Outcome> {
        match self.reply_cache.get(&client_id) {
            Some(cached) => {
                let (reply, decided) = cached.lookup(sequence)??;
                Some(Outcome::Cached(reply.to_vec(), decided))
            }
            None => {
                let accept_from_ms = self.accept_from_ms();
                (self.expired_through_ms.is_some() && sequence_time_ms(sequence) < accept_from_ms)
                    .then_some(Outcome::Expired { accept_from_ms })
            }
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
        let one = DecisionId { agreement_id: 1, hash: [1; 32] };
        let two = DecisionId { agreement_id: 2, hash: [2; 32] };
        let first = executor.execute_decided(&[req(7, 1, b"a")], one).outcomes;
        assert_eq!(first, vec![Outcome::Executed(1u64.to_le_bytes().to_vec())]);
        let again = executor
            .execute_decided(&[req(7, 1, b"a"), req(7, 2, b"b"), req(7, 2, b"b")], two)
            .outcomes;
        // A cached reply names the decision that gave it, not the one that ordered the
        // retransmission again.
        assert_eq!(
            again,
            vec![
                Outcome::Cached(1u64.to_le_bytes().to_vec(), one),
                Outcome::Executed(2u64.to_le_bytes().to_vec()),
                Outcome::Cached(2u64.to_le_bytes().to_vec(), two),
            ]
        );
        assert_eq!(
            executor.answer_retransmission(7, 2),
            Some(Outcome::Cached(2u64.to_le_bytes().to_vec(), two))
        );
        assert_eq!(executor.service().0, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(executor.requests_executed(), 2);
        assert_eq!(executor.cached_reply(7, 2), Some(&2u64.to_le_bytes()[..]));
        assert_eq!(executor.cached_reply(7, 1), None);
        assert_eq!(executor.execute(&[req(7, 1, b"a")]).outcomes, vec![Outcome::Stale]);
    }

    fn at(client_id: u64, sequence: u64, now_ms: u64) -> OrderedRequest<'static> {
        OrderedRequest { client_id, sequence, operation: b"op", now_ms }
    }

    #[test]
    fn over_clients_max_the_least_recently_active_client_is_evicted_and_never_run_again() {
        let t0 = 1_795_000_000_000;
        let seq = |ms: u64| dura_core::first_sequence_at(ms);
        let mut executor = Executor::new(Journal::default()).with_clients_max(2);
        // Clients 1, 2, 3 run once each, at agreed times t0, t0+10, t0+20.
        executor.execute(&[at(1, seq(t0), t0)]);
        executor.execute(&[at(2, seq(t0), t0 + 10)]);
        assert_eq!(executor.expired_through_ms(), None);
        executor.execute(&[at(3, seq(t0 + 20), t0 + 20)]);
        // Client 1 was idle longest: forgotten, and the watermark is its last time.
        assert_eq!(executor.clients(), 2);
        assert_eq!(executor.last_executed(1), None);
        assert_eq!(executor.expired_through_ms(), Some(t0));
        let accept_from_ms = t0 + SEQUENCE_AHEAD_MAX_MS + 1;
        let runs = executor.requests_executed();
        // Its request replayed (or retransmitted) is refused, not run again, both when
        // ordered and when answered as a retransmission.
        let replayed = executor.execute(&[at(1, seq(t0), t0 + 30)]);
        assert_eq!(replayed.outcomes, vec![Outcome::Expired { accept_from_ms }]);
        assert_eq!(
            executor.answer_retransmission(1, seq(t0)),
            Some(Outcome::Expired { accept_from_ms })
        );
        // Even one numbered from 1 (no session time): its time is 0.
        assert_eq!(
            executor.execute(&[at(9, 1, t0 + 30)]).outcomes,
            vec![Outcome::Expired { accept_from_ms }]
        );
        assert_eq!(executor.requests_executed(), runs, "nothing ran");
        // A session opened after the watermark's horizon is a new client: it runs, and
        // evicts the least recently active one (client 2).
        let fresh = executor.execute(&[at(1, seq(accept_from_ms), t0 + 40)]);
        assert!(matches!(fresh.outcomes[0], Outcome::Executed(_)));
        assert_eq!(executor.last_executed(2), None);
        assert_eq!(executor.expired_through_ms(), Some(t0 + 10));
        // Clients still held are unaffected by the watermark.
        assert!(matches!(
            executor.execute(&[at(3, seq(t0 + 20) + 1, t0 + 50)]).outcomes[0],
            Outcome::Executed(_)
        ));
    }

    #[test]
    fn a_session_time_too_far_ahead_of_the_agreed_time_is_refused() {
        let t0 = 1_795_000_000_000;
        let mut executor = Executor::new(Journal::default());
        let ahead = dura_core::first_sequence_at(t0 + SEQUENCE_AHEAD_MAX_MS + 1);
        let within = dura_core::first_sequence_at(t0 + SEQUENCE_AHEAD_MAX_MS);
        let outcomes = executor.execute(&[at(1, ahead, t0), at(2, within, t0)]).outcomes;
        assert_eq!(outcomes[0], Outcome::Expired { accept_from_ms: 0 });
        assert!(matches!(outcomes[1], Outcome::Executed(_)));
        assert_eq!(executor.requests_executed(), 1);
    }

    #[test]
    fn eviction_is_the_same_from_a_checkpoints_parts_and_in_one_batch() {
        let t0 = 1_795_000_000_000;
        // Five new clients in one batch with room for three: the lowest ids at the
        // same time go first.
        let mut executor = Executor::new(Journal::default()).with_clients_max(3);
        let batch: Vec<_> = (10..15).map(|client| at(client, 1, t0)).collect();
        let outcomes = executor.execute(&batch).outcomes;
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Executed(_))), "all ran");
        let held: Vec<u64> = executor.reply_cache().keys().copied().collect();
        assert_eq!(held, vec![12, 13, 14]);
        // An executor rebuilt from its parts under a smaller bound evicts the same way,
        // and keeps the watermark.
        let view = executor.view();
        let rebuilt = Executor::from_parts(
            Journal::default(),
            view.reply_cache,
            view.requests_executed,
            view.expired_through_ms,
        )
        .with_clients_max(2);
        let held: Vec<u64> = rebuilt.reply_cache().keys().copied().collect();
        assert_eq!(held, vec![13, 14]);
        assert_eq!(rebuilt.expired_through_ms(), Some(t0));
    }

    #[test]
    fn clients_are_deduplicated_independently() {
        let mut executor = Executor::new(Journal::default());
        let outcomes =
            executor.execute(&[req(1, 5, b"x"), req(2, 5, b"y"), req(1, 5, b"x")]).outcomes;
        assert!(matches!(outcomes[0], Outcome::Executed(_)));
        assert!(matches!(outcomes[1], Outcome::Executed(_)));
        assert!(matches!(outcomes[2], Outcome::Cached(..)));
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
        assert_eq!(again.outcomes, vec![Outcome::Cached(b"hi".to_vec(), DecisionId::default())]);
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
