//! The sans-IO client: one outstanding request at a time, completed on f+1 matching
//! replies from distinct replicas (both modes, [`Mode::reply_quorum`]), retransmitted to
//! every replica on timeout. In crash mode the request goes to the leader only, yet
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
}

#[derive(Debug)]
struct Outstanding {
    request: ClientRequest,
    /// replica -> its result (one per replica; a later reply replaces an earlier one).
    replies: BTreeMap<ReplicaId, Vec<u8>>,
    retries: u32,
}

/// The client state machine.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    keys: ClientKeys,
    next_sequence: u64,
    outstanding: Option<Outstanding>,
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
            outstanding: None,
            regency_hint: 0,
        }
    }

    /// This client's id.
    pub fn id(&self) -> u64 {
        self.keys.client_id
    }

    /// True while a request waits for its result.
    pub fn is_busy(&self) -> bool {
        self.outstanding.is_some()
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
        if let Some(outstanding) = &self.outstanding {
            return Err(ClientError::Busy {
                client_id: self.keys.client_id,
                sequence: outstanding.request.sequence,
            });
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let request = ClientRequest::signed(&self.keys, sequence, operation);
        match self.config.mode {
            // Every replica must see the request so that a censoring leader is noticed.
            Mode::Bft => actions.push(ClientAction::Broadcast { request: request.clone() }),
            Mode::Crash => {
                let leader = (self.regency_hint % self.config.n as u64) as ReplicaId;
                actions.push(ClientAction::Send { to: leader, request: request.clone() });
            }
        }
        actions.push(ClientAction::SetTimer { after_ms: self.config.retransmit_timeout_ms });
        self.outstanding = Some(Outstanding { request, replies: BTreeMap::new(), retries: 0 });
        Ok(sequence)
    }

    /// Feeds one event.
    pub fn handle(&mut self, event: ClientEvent, actions: &mut Vec<ClientAction>) {
        match event {
            ClientEvent::Reply(reply) => self.on_reply(reply, actions),
            ClientEvent::TimerFired => {
                let timeout_ms = self.config.retransmit_timeout_ms;
                if let Some(outstanding) = &mut self.outstanding {
                    // Replies count only from the latest transmission on: every replica
                    // that executed the request answers a retransmission from its reply
                    // cache, and a reply from before it may come from a state the replica
                    // has since discarded (BFT, after a crash of every replica: what fewer
                    // than f+1 replicas logged is decided anew), which must not make up
                    // f+1 with a reply from the new one.
                    outstanding.replies.clear();
                    outstanding.retries = outstanding.retries.saturating_add(1);
                    let backoff = 1u64 << outstanding.retries.min(3);
                    actions.push(ClientAction::Broadcast { request: outstanding.request.clone() });
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
        let Some(outstanding) = &mut self.outstanding else { return };
        if reply.sequence != outstanding.request.sequence {
            return;
        }
        outstanding.replies.insert(reply.replica, reply.result.clone());
        let matching = outstanding.replies.values().filter(|r| **r == reply.result).count();
        if matching >= needed {
            let sequence = outstanding.request.sequence;
            self.outstanding = None;
            actions.push(ClientAction::CancelTimer);
            actions.push(ClientAction::Completed { sequence, result: reply.result });
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
}
