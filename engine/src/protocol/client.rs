//! The sans-IO client: one outstanding request at a time (and one follow-up, see
//! [`Client::follow_up`]), completed on f+1 matching replies from distinct replicas
//! (both modes, [`Mode::reply_quorum`]), retransmitted to every replica on timeout. In crash mode the request goes to the leader only, yet
//! every replica replies once it has executed and logged it: f+1 replies mean the
//! result is on f+1 disks (ARCHITECTURE.md, "Crash mode: a reply means f+1 disks").
//!
//! Contract: the runtime delivers every [`Reply`] it receives with
//! [`ClientEvent::Reply`] (the client verifies the MAC), fires
//! [`ClientEvent::TimerFired`] after the delay of the latest [`ClientAction::SetTimer`],
//! and sends each request exactly as given.

use std::collections::BTreeMap;

use super::auth::ClientKeys;
use super::message::{ClientRequest, Reply};
use super::{Mode, ReplicaId};
use dura_core::{DecisionId, ReplyStatus, first_sequence_at};

/// What a client needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Fault model.
    pub mode: Mode,
    /// Replicas.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// Wait this long for a result before retransmitting; doubles on each retry up to
    /// 8 times this.
    pub retransmit_timeout_ms: u64,
}

/// Errors of [`Client::invoke`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// A request is still outstanding.
    #[error("client {client_id} already has request {sequence} outstanding")]
    Busy {
        /// The client.
        client_id: u64,
        /// The outstanding sequence number.
        sequence: u64,
    },
    /// [`Client::follow_up`] needs exactly one request outstanding.
    #[error("client {client_id} has {outstanding} requests outstanding, a follow-up needs one")]
    NoFollowUp {
        /// The client.
        client_id: u64,
        /// Requests outstanding.
        outstanding: usize,
    },
}

/// An input to a [`Client`].
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A reply from a replica (MAC not yet verified).
    Reply(Reply),
    /// The retransmission timer fired.
    TimerFired,
}

/// An output of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Send the request to one replica.
    Send {
        /// Destination replica.
        to: ReplicaId,
        /// The request.
        request: ClientRequest,
    },
    /// Send the request to every replica.
    Broadcast {
        /// The request.
        request: ClientRequest,
    },
    /// Fire [`ClientEvent::TimerFired`] after `after_ms` (replaces the previous timer).
    SetTimer {
        /// Delay.
        after_ms: u64,
    },
    /// Stop the retransmission timer.
    CancelTimer,
    /// The request `sequence` completed with `result`.
    Completed {
        /// Sequence number.
        sequence: u64,
        /// The agreed result.
        result: Vec<u8>,
    },
    /// f+1 replicas refused request `sequence` for good ([`ReplyStatus::Expired`]): the
    /// cluster had forgotten this client (its `clients_max` evicted it), or the
    /// request's session time was too far ahead of the cluster's. Whether it ran
    /// before the client was forgotten is unknown. The client's next sequence numbers
    /// start at a session time the cluster accepts.
    Expired {
        /// Sequence number.
        sequence: u64,
        /// The lowest session time (ms) the cluster accepts a new client session with
        /// (0 when the refusal did not say).
        accept_from_ms: u64,
    },
}

#[derive(Debug)]
struct Outstanding {
    request: ClientRequest,
    /// replica -> its status, decision and result (one per replica; a later reply
    /// replaces an earlier one). Replies match only when all three do: f+1 replies from
    /// one decision promise f+1 disks hold it, replies from two decisions of the same
    /// request (one given up after a crash of every replica) do not.
    replies: BTreeMap<ReplicaId, (ReplyStatus, DecisionId, Vec<u8>)>,
    retries: u32,
}

/// The latest session time a sequence number can carry.
const MAX_SESSION_MS: u64 = (1 << (64 - dura_core::SEQUENCE_TIME_SHIFT)) - 1;

/// The client state machine.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    keys: ClientKeys,
    next_sequence: u64,
    /// In sequence order: at most two, an earlier request and its follow-up.
    outstanding: Vec<Outstanding>,
    /// Highest regency seen in an authentic reply: its leader gets crash-mode requests.
    regency_hint: u64,
}

impl Client {
    /// A client with no request sent yet; sequence numbers start after `first_sequence`
    /// - 1 (a restarted client must start above any it used before).
    pub fn new(config: ClientConfig, keys: ClientKeys, first_sequence: u64) -> Self {
        assert_eq!(keys.replicas.len(), config.n, "one key per replica");
        Self {
            config,
            keys,
            next_sequence: first_sequence.max(1),
            outstanding: Vec::new(),
            regency_hint: 0,
        }
    }

    /// This client's id.
    pub fn id(&self) -> u64 {
        self.keys.client_id
    }

    /// True while a request waits for its result.
    pub fn is_busy(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// The sequence numbers waiting for their results, oldest first.
    pub fn outstanding(&self) -> Vec<u64> {
        self.outstanding.iter().map(|o| o.request.sequence).collect()
    }

    /// The highest regency learned from an authentic reply (or [`Client::learn_regency`]):
    /// crash-mode requests go to its leader, `regency % n`.
    pub fn regency_hint(&self) -> u64 {
        self.regency_hint
    }

    /// Takes `regency` as a hint of who leads, if it is above what this client knows:
    /// a runtime that runs many sessions hands each new session what the others
    /// learned, so that none starts at regency 0 after the leader moved. Only a hint:
    /// a wrong one costs a forward by the replica it names (crash mode) or nothing
    /// (BFT clients broadcast); it never decides which replies are accepted.
    pub fn learn_regency(&mut self, regency: u64) {
        self.regency_hint = self.regency_hint.max(regency);
    }

    /// Replies needed to accept a result: f+1 in both modes, see [`Mode::reply_quorum`].
    pub fn replies_needed(&self) -> usize {
        self.config.mode.reply_quorum(self.config.f)
    }

    /// Starts `operation`; returns its sequence number.
    pub fn invoke(
        &mut self,
        operation: Vec<u8>,
        actions: &mut Vec<ClientAction>,
    ) -> Result<u64, ClientError> {
        if let Some(outstanding) = self.outstanding.first() {
            return Err(ClientError::Busy {
                client_id: self.keys.client_id,
                sequence: outstanding.request.sequence,
            });
        }
        Ok(self.send_new(operation, actions))
    }

    /// Starts `operation` while the one outstanding request is still waiting, and keeps
    /// waiting for both: each completes on its own f+1 matching replies. The follow-up
    /// has the next sequence number, so once it is ordered the earlier request, if it
    /// was not ordered before, never will be (replicas drop a client's older request);
    /// if it was, its answer stays in the replicas' reply cache while the follow-up is
    /// the client's last request. So when the follow-up completes and the earlier
    /// request has not, the earlier one is retransmitted at once (see
    /// [`ClientAction::Broadcast`]) to fetch that answer. The use: a blocked read the
    /// caller stops waiting for, followed by the service's cancel of it.
    pub fn follow_up(
        &mut self,
        operation: Vec<u8>,
        actions: &mut Vec<ClientAction>,
    ) -> Result<u64, ClientError> {
        if self.outstanding.len() != 1 {
            return Err(ClientError::NoFollowUp {
                client_id: self.keys.client_id,
                outstanding: self.outstanding.len(),
            });
        }
        Ok(self.send_new(operation, actions))
    }

    /// Stops waiting for request `sequence`: no retransmission, no completion. True when
    /// it was outstanding.
    pub fn abandon(&mut self, sequence: u64, actions: &mut Vec<ClientAction>) -> bool {
        let before = self.outstanding.len();
        self.outstanding.retain(|o| o.request.sequence != sequence);
        if self.outstanding.is_empty() && before > 0 {
            actions.push(ClientAction::CancelTimer);
        }
        self.outstanding.len() < before
    }

    fn send_new(&mut self, operation: Vec<u8>, actions: &mut Vec<ClientAction>) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let request = ClientRequest::signed(&self.keys, sequence, operation);
        self.send(request.clone(), actions);
        actions.push(ClientAction::SetTimer { after_ms: self.config.retransmit_timeout_ms });
        self.outstanding.push(Outstanding { request, replies: BTreeMap::new(), retries: 0 });
        sequence
    }

    fn send(&self, request: ClientRequest, actions: &mut Vec<ClientAction>) {
        match self.config.mode {
            // Every replica must see the request so that a censoring leader is noticed.
            Mode::Bft => actions.push(ClientAction::Broadcast { request }),
            Mode::Crash => {
                let leader = (self.regency_hint % self.config.n as u64) as ReplicaId;
                actions.push(ClientAction::Send { to: leader, request });
            }
        }
    }

    /// Feeds one event.
    pub fn handle(&mut self, event: ClientEvent, actions: &mut Vec<ClientAction>) {
        match event {
            ClientEvent::Reply(reply) => self.on_reply(reply, actions),
            ClientEvent::TimerFired => {
                let timeout_ms = self.config.retransmit_timeout_ms;
                let mut backoff = None;
                for outstanding in &mut self.outstanding {
                    // Replies count only from the latest transmission on: every replica
                    // that executed the request answers a retransmission from its reply
                    // cache, and a reply from before it may come from a state the replica
                    // has since discarded (BFT, after a crash of every replica: what fewer
                    // than f+1 replicas logged is decided anew), which must not make up
                    // f+1 with a reply from the new one.
                    outstanding.replies.clear();
                    outstanding.retries = outstanding.retries.saturating_add(1);
                    backoff = Some(1u64 << outstanding.retries.min(3));
                    actions.push(ClientAction::Broadcast { request: outstanding.request.clone() });
                }
                if let Some(backoff) = backoff {
                    actions.push(ClientAction::SetTimer { after_ms: timeout_ms * backoff });
                }
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, actions: &mut Vec<ClientAction>) {
        let Some(key) = self.keys.replicas.get(reply.replica as usize) else { return };
        if reply.client_id != self.keys.client_id || !reply.verify(key) {
            return;
        }
        self.regency_hint = self.regency_hint.max(reply.regency);
        let needed = self.replies_needed();
        let Some(at) = self.outstanding.iter().position(|o| o.request.sequence == reply.sequence)
        else {
            return;
        };
        let outstanding = &mut self.outstanding[at];
        let key = (reply.status, reply.decided, reply.result.clone());
        outstanding.replies.insert(reply.replica, key);
        let matching = outstanding
            .replies
            .values()
            .filter(|(status, decided, result)| {
                (*status, *decided) == (reply.status, reply.decided) && *result == reply.result
            })
            .count();
        if matching >= needed {
            let sequence = outstanding.request.sequence;
            self.outstanding.remove(at);
            match self.outstanding.first_mut() {
                None => actions.push(ClientAction::CancelTimer),
                // A follow-up completed before the request it follows: fetch that one's
                // answer from the reply cache now (see `follow_up`).
                Some(earlier) if earlier.request.sequence < sequence => {
                    earlier.retries = 0;
                    earlier.replies.clear(); // a retransmission, as on the timer

                    actions.push(ClientAction::Broadcast { request: earlier.request.clone() });
                    actions.push(ClientAction::SetTimer {
                        after_ms: self.config.retransmit_timeout_ms,
                    });
                }
                Some(_) => {}
            }
            match reply.expired_accept_from_ms() {
                Some(accept_from_ms) => {
                    let resume = first_sequence_at(accept_from_ms.min(MAX_SESSION_MS));
                    self.next_sequence = self.next_sequence.max(resume);
                    actions.push(ClientAction::Expired { sequence, accept_from_ms });
                }
                None if reply.status == ReplyStatus::Expired => {
                    // f+1 replicas agree on a refusal this build cannot read: a
                    // refusal still.
                    actions.push(ClientAction::Expired { sequence, accept_from_ms: 0 });
                }
                None => actions.push(ClientAction::Completed { sequence, result: reply.result }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::KeyRing;

    fn client(mode: Mode, n: usize, f: usize) -> (Client, KeyRing) {
        let ring = KeyRing::new([2; 32], n);
        let config = ClientConfig { mode, n, f, retransmit_timeout_ms: 100 };
        (Client::new(config, ring.client_keys(7), 1), ring)
    }

    fn reply(ring: &KeyRing, replica: ReplicaId, sequence: u64, result: &[u8]) -> ClientEvent {
        let key = ring.replica_keys(replica).client_key(7);
        ClientEvent::Reply(Reply::signed(&key, replica, 7, sequence, 0, result.to_vec()))
    }

    fn reply_with(
        ring: &KeyRing,
        replica: ReplicaId,
        sequence: u64,
        status: ReplyStatus,
        decided: DecisionId,
        result: &[u8],
    ) -> ClientEvent {
        let key = ring.replica_keys(replica).client_key(7);
        let result = result.to_vec();
        ClientEvent::Reply(Reply::signed_with(
            &key, replica, 7, sequence, 0, status, decided, result,
        ))
    }

    #[test]
    fn replies_from_two_decisions_of_one_request_do_not_add_up() {
        // Seed 39824 of `dura-sim --mode bft --replicas 4 --total-crash`: replica 0
        // answered from a decision it later gave up, replica 1 from the cluster's new
        // decision of the same request, with the same result. Together they are not
        // f+1 disks holding one decision.
        let (mut client, ring) = client(Mode::Bft, 4, 1);
        let mut actions = Vec::new();
        let sequence = client.invoke(b"put x 1".to_vec(), &mut actions).expect("idle");
        actions.clear();
        let given_up = DecisionId { agreement_id: 5, hash: [1; 32] };
        let anew = DecisionId { agreement_id: 5, hash: [2; 32] };
        let executed = ReplyStatus::Executed;
        client.handle(reply_with(&ring, 0, sequence, executed, given_up, b"ok"), &mut actions);
        client.handle(reply_with(&ring, 1, sequence, executed, anew, b"ok"), &mut actions);
        assert!(actions.is_empty(), "one reply per decision is not f+1");
        client.handle(reply_with(&ring, 2, sequence, executed, anew, b"ok"), &mut actions);
        assert_eq!(
            actions,
            vec![
                ClientAction::CancelTimer,
                ClientAction::Completed { sequence, result: b"ok".to_vec() }
            ]
        );
    }

    #[test]
    fn f_plus_one_refusals_expire_the_request_and_move_the_sequence_numbers_on() {
        let (mut client, ring) = client(Mode::Bft, 4, 1);
        let mut actions = Vec::new();
        let sequence = client.invoke(b"put x 1".to_vec(), &mut actions).expect("idle");
        actions.clear();
        let accept_from_ms: u64 = 1_795_000_060_001;
        let refusal = accept_from_ms.to_le_bytes();
        let expired = ReplyStatus::Expired;
        let none = DecisionId::default();
        client.handle(reply_with(&ring, 0, sequence, expired, none, &refusal), &mut actions);
        assert!(actions.is_empty(), "one refusal may be a Byzantine replica's");
        client.handle(reply_with(&ring, 3, sequence, expired, none, &refusal), &mut actions);
        assert_eq!(
            actions,
            vec![ClientAction::CancelTimer, ClientAction::Expired { sequence, accept_from_ms }]
        );
        actions.clear();
        let next = client.invoke(b"put x 2".to_vec(), &mut actions).expect("idle again");
        assert_eq!(next, first_sequence_at(accept_from_ms), "a session time accepted");
    }

    #[test]
    fn bft_client_completes_on_f_plus_one_matching_replies_only() {
        let (mut client, ring) = client(Mode::Bft, 4, 1);
        let mut actions = Vec::new();
        let sequence = client.invoke(b"get x".to_vec(), &mut actions).expect("idle");
        assert!(matches!(actions[0], ClientAction::Broadcast { .. }));
        actions.clear();
        client.handle(reply(&ring, 0, sequence, b"1"), &mut actions);
        client.handle(reply(&ring, 1, sequence, b"2"), &mut actions);
        client.handle(reply(&ring, 0, sequence, b"1"), &mut actions);
        assert!(actions.is_empty(), "no f+1 matching replies yet");
        // A reply claiming to be from replica 3 but MACed by replica 2 is dropped.
        let forged =
            Reply::signed(&ring.replica_keys(2).client_key(7), 3, 7, sequence, 0, b"1".to_vec());
        client.handle(ClientEvent::Reply(forged), &mut actions);
        assert!(actions.is_empty());
        client.handle(reply(&ring, 2, sequence, b"1"), &mut actions);
        assert_eq!(
            actions.last(),
            Some(&ClientAction::Completed { sequence, result: b"1".to_vec() })
        );
        assert!(!client.is_busy());
    }

    #[test]
    fn replies_from_before_a_retransmission_do_not_count_after_it() {
        let (mut client, ring) = client(Mode::Bft, 4, 1);
        let mut actions = Vec::new();
        let sequence = client.invoke(b"put x".to_vec(), &mut actions).expect("idle");
        client.handle(reply(&ring, 2, sequence, b"ok"), &mut actions);
        client.handle(ClientEvent::TimerFired, &mut actions);
        actions.clear();
        // Replica 2's reply came before the retransmission (it may have discarded that
        // state since): it does not make f+1 with replica 0's.
        client.handle(reply(&ring, 0, sequence, b"ok"), &mut actions);
        assert!(actions.is_empty(), "{actions:?}");
        client.handle(reply(&ring, 2, sequence, b"ok"), &mut actions);
        assert_eq!(
            actions.last(),
            Some(&ClientAction::Completed { sequence, result: b"ok".to_vec() })
        );
    }

    #[test]
    fn timeout_retransmits_to_all_with_backoff() {
        let (mut client, _ring) = client(Mode::Crash, 3, 1);
        let mut actions = Vec::new();
        client.invoke(b"op".to_vec(), &mut actions).expect("idle");
        assert!(matches!(actions[0], ClientAction::Send { to: 0, .. }));
        assert_eq!(
            client.invoke(b"op2".to_vec(), &mut actions),
            Err(ClientError::Busy { client_id: 7, sequence: 1 })
        );
        actions.clear();
        client.handle(ClientEvent::TimerFired, &mut actions);
        assert!(matches!(actions[0], ClientAction::Broadcast { .. }));
        assert_eq!(actions[1], ClientAction::SetTimer { after_ms: 200 });
    }

    #[test]
    fn a_regency_learned_elsewhere_picks_the_first_replica_asked_and_never_goes_back() {
        let (mut client, ring) = client(Mode::Crash, 3, 1);
        client.learn_regency(5);
        client.learn_regency(2);
        assert_eq!(client.regency_hint(), 5);
        let mut actions = Vec::new();
        let sequence = client.invoke(b"a".to_vec(), &mut actions).expect("idle");
        // Regency 5 of 3 replicas: leader 2, asked first, no timeout waited.
        assert_eq!(
            actions[1..],
            [ClientAction::SetTimer { after_ms: 100 }],
            "one send and the timer: {actions:?}"
        );
        assert!(matches!(actions[0], ClientAction::Send { to: 2, .. }));
        // A reply forged with the wrong key does not move the hint.
        let forged =
            Reply::signed(&ring.replica_keys(0).client_key(7), 1, 7, sequence, 9, b"x".to_vec());
        actions.clear();
        client.handle(ClientEvent::Reply(forged), &mut actions);
        assert!(actions.is_empty());
        assert_eq!(client.regency_hint(), 5);
    }

    #[test]
    fn crash_client_completes_on_f_plus_one_replies_from_distinct_replicas() {
        // One reply tells the result in crash mode, but only f+1 tell that f+1 logs hold
        // the request: the acknowledgement must survive the loss of any f disks.
        let (mut client, ring) = client(Mode::Crash, 5, 2);
        assert_eq!(client.replies_needed(), 3);
        let mut actions = Vec::new();
        let sequence = client.invoke(b"put".to_vec(), &mut actions).expect("idle");
        actions.clear();
        client.handle(reply(&ring, 0, sequence, b"ok"), &mut actions);
        client.handle(reply(&ring, 0, sequence, b"ok"), &mut actions);
        client.handle(reply(&ring, 3, sequence, b"ok"), &mut actions);
        assert!(actions.is_empty(), "two distinct replicas of five are not f+1: {actions:?}");
        client.handle(reply(&ring, 4, sequence, b"ok"), &mut actions);
        assert_eq!(
            actions,
            [
                ClientAction::CancelTimer,
                ClientAction::Completed { sequence, result: b"ok".to_vec() }
            ]
        );
        assert!(!client.is_busy());
    }

    #[test]
    fn crash_client_follows_the_regency_hint_of_replies() {
        let (mut client, ring) = client(Mode::Crash, 3, 1);
        let mut actions = Vec::new();
        let sequence = client.invoke(b"a".to_vec(), &mut actions).expect("idle");
        for replica in [1, 2] {
            let key = ring.replica_keys(replica).client_key(7);
            let reply = Reply::signed(&key, replica, 7, sequence, 4, b"ok".to_vec());
            client.handle(ClientEvent::Reply(reply), &mut actions);
        }
        assert!(actions.contains(&ClientAction::Completed { sequence, result: b"ok".to_vec() }));
        actions.clear();
        client.invoke(b"b".to_vec(), &mut actions).expect("idle");
        // Regency 4 of 3 replicas: leader 1.
        assert!(matches!(actions[0], ClientAction::Send { to: 1, .. }));
    }

    #[test]
    fn a_follow_up_waits_beside_the_earlier_request_and_its_completion_refetches_that_one() {
        let (mut client, ring) = client(Mode::Bft, 4, 1);
        let mut actions = Vec::new();
        assert_eq!(
            client.follow_up(b"cancel".to_vec(), &mut actions),
            Err(ClientError::NoFollowUp { client_id: 7, outstanding: 0 })
        );
        let blocked = client.invoke(b"in".to_vec(), &mut actions).expect("idle");
        let cancel = client.follow_up(b"cancel".to_vec(), &mut actions).expect("one outstanding");
        assert_eq!(cancel, blocked + 1);
        assert_eq!(client.outstanding(), vec![blocked, cancel]);
        assert!(matches!(
            client.follow_up(b"more".to_vec(), &mut actions),
            Err(ClientError::NoFollowUp { outstanding: 2, .. })
        ));
        assert!(matches!(
            client.invoke(b"other".to_vec(), &mut actions),
            Err(ClientError::Busy { sequence, .. }) if sequence == blocked
        ));
        // The timer retransmits both, the earlier first.
        actions.clear();
        client.handle(ClientEvent::TimerFired, &mut actions);
        let sent: Vec<u64> = actions
            .iter()
            .filter_map(|a| match a {
                ClientAction::Broadcast { request } => Some(request.sequence),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![blocked, cancel]);
        // The follow-up completes first: the earlier request goes out again at once.
        actions.clear();
        client.handle(reply(&ring, 0, cancel, b"not found"), &mut actions);
        client.handle(reply(&ring, 1, cancel, b"not found"), &mut actions);
        assert!(
            matches!(&actions[0], ClientAction::Broadcast { request } if request.sequence == blocked)
        );
        assert_eq!(
            actions.last(),
            Some(&ClientAction::Completed { sequence: cancel, result: b"not found".to_vec() })
        );
        assert!(client.is_busy(), "the earlier request still waits");
        actions.clear();
        client.handle(reply(&ring, 2, blocked, b"tuple"), &mut actions);
        client.handle(reply(&ring, 3, blocked, b"tuple"), &mut actions);
        assert_eq!(
            actions,
            [
                ClientAction::CancelTimer,
                ClientAction::Completed { sequence: blocked, result: b"tuple".to_vec() }
            ]
        );
        assert!(!client.is_busy());
        // The next request follows both.
        assert_eq!(client.invoke(b"next".to_vec(), &mut actions), Ok(cancel + 1));
    }

    #[test]
    fn an_abandoned_request_is_neither_retransmitted_nor_completed() {
        let (mut client, ring) = client(Mode::Bft, 4, 1);
        let mut actions = Vec::new();
        let blocked = client.invoke(b"in".to_vec(), &mut actions).expect("idle");
        let cancel = client.follow_up(b"cancel".to_vec(), &mut actions).expect("follow-up");
        actions.clear();
        assert!(client.abandon(blocked, &mut actions));
        assert!(!client.abandon(blocked, &mut actions), "once");
        assert!(actions.is_empty(), "the follow-up still waits: {actions:?}");
        client.handle(reply(&ring, 0, blocked, b"t"), &mut actions);
        client.handle(reply(&ring, 1, blocked, b"t"), &mut actions);
        assert!(actions.is_empty(), "{actions:?}");
        client.handle(ClientEvent::TimerFired, &mut actions);
        assert!(
            matches!(&actions[0], ClientAction::Broadcast { request } if request.sequence == cancel)
        );
        assert_eq!(actions.len(), 2, "the follow-up and the timer: {actions:?}");
        actions.clear();
        assert!(client.abandon(cancel, &mut actions));
        assert_eq!(actions, [ClientAction::CancelTimer]);
        assert!(!client.is_busy());
    }
}
