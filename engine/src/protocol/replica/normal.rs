//! The normal case: client requests and pending requests, batches, PROPOSE, WRITE,
//! ACCEPT and the decision of the open agreement, the delivery of what was decided
//! (`settle`) and the resending of this replica's proposal and votes.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::protocol::message::{Batch, ClientRequest, Message};
use crate::protocol::{Action, Decision, Hash, Mode, ReplicaId};

use super::{
    DecidedEntry, FUTURE_INSTANCES_MAX, Instance, Pending, Phase, Replica, VALUES_PER_INSTANCE_MAX,
};

impl Replica {
    pub(super) fn on_client_request(
        &mut self,
        request: ClientRequest,
        digest: Option<Hash>,
        actions: &mut Vec<Action>,
    ) {
        if request.authenticator.len() != self.config.n
            || request.operation.len() > self.config.operation_bytes_max
        {
            return;
        }
        let digest = match digest {
            Some(digest) => digest,
            None => {
                let digest = request.digest();
                let key = self.keys.client_key(request.client_id);
                if !request.verify_digest(self.id, &key, &digest) {
                    return;
                }
                digest
            }
        };
        if self.ordered.get(&request.client_id).is_some_and(|&seq| seq >= request.sequence) {
            if self.config.mode == Mode::Bft && matches!(self.phase, Phase::Recovering { .. }) {
                // What a restarted replica executed from its log may be an unconfirmed
                // suffix it is about to discard (`Action::DiscardUnconfirmed`): its
                // reply could make up f+1 with one from the cluster's new decision
                // while fewer than f+1 disks hold that. It answers once recovered.
                return;
            }
            actions.push(Action::ReplyFromCache {
                client_id: request.client_id,
                sequence: request.sequence,
            });
            return;
        }
        // A crash-mode client sends to the replica it believes leads. One that does not
        // (a fresh client, after the leader moved) passes the request on at once rather
        // than after the request timeout, so the client is not made to wait it out; the
        // replies carry the regency, from which the client learns the leader. The
        // request keeps its client MACs, which the leader checks (see
        // `Message::Forward`); it stays pending here too, so a leader that does not
        // order it is still replaced. BFT clients broadcast, so nothing is forwarded.
        let forward = self.config.mode == Mode::Crash
            && self.phase == Phase::Normal
            && !self.leads(self.regency);
        let request_to_forward = forward.then(|| request.clone());
        if self.add_pending(request, digest)
            && let Some(request) = request_to_forward
        {
            actions.push(Action::Send {
                to: self.config.leader_of(self.regency),
                message: Message::Forward {
                    last_decided: self.last_decided,
                    requests: vec![request],
                },
            });
        }
    }

    /// Adds `request` to the pending set; false when it was not added (an older or the
    /// same sequence of its client is already pending, or the set is full).
    pub(super) fn add_pending(&mut self, request: ClientRequest, digest: Hash) -> bool {
        if let Some(&at) = self.pending_by_client.get(&request.client_id) {
            let existing = &self.pending[&at];
            if existing.request.sequence >= request.sequence {
                return false;
            }
            self.pending.remove(&at);
            self.pending_by_client.remove(&request.client_id);
        }
        if self.pending.len() >= self.config.pending_requests_max {
            return false;
        }
        let at = self.pending_next;
        self.pending_next += 1;
        self.pending_by_client.insert(request.client_id, at);
        self.pending
            .insert(at, Pending { request, digest, arrival_tick: self.now_tick, forwarded: false });
        true
    }

    /// Keeps `ordered` within `clients_max`: past it, forgets the half of the clients
    /// with the lowest sequence numbers (the oldest session times). Amortized O(log n)
    /// per client added.
    pub(super) fn trim_ordered(&mut self) {
        let bound = self.config.clients_max.max(1);
        if self.ordered.len() <= bound {
            return;
        }
        let mut sequences: Vec<u64> = self.ordered.values().copied().collect();
        let keep = bound.div_ceil(2);
        let cut_at = sequences.len() - keep;
        let (_, &mut cut, _) = sequences.select_nth_unstable(cut_at);
        self.ordered.retain(|_, sequence| *sequence >= cut);
        // Ties at the cut may keep more than `keep`; never more than the bound.
        while self.ordered.len() > bound {
            self.ordered.pop_first();
        }
        assert!(self.ordered.len() <= bound, "ordered clients within their bound");
    }

    pub(super) fn remove_ordered_pending(&mut self, client_id: u64, sequence: u64) {
        if let Some(&at) = self.pending_by_client.get(&client_id)
            && self.pending[&at].request.sequence <= sequence
        {
            self.pending.remove(&at);
            self.pending_by_client.remove(&client_id);
        }
    }

    /// The digest of `request` if it is valid in a batch for this replica.
    pub(super) fn request_digest(&self, request: &ClientRequest) -> Option<Hash> {
        if request.authenticator.len() != self.config.n {
            return None;
        }
        if let Some(&at) = self.pending_by_client.get(&request.client_id)
            && self.pending[&at].request == *request
        {
            return Some(self.pending[&at].digest); // verified on arrival
        }
        let digest = request.digest();
        request
            .verify_digest(self.id, &self.keys.client_key(request.client_id), &digest)
            .then_some(digest)
    }

    /// The hash of `batch` if it is valid for this replica (bounds and every request's
    /// authenticator), computed from the request digests its checks needed anyway.
    pub(super) fn valid_batch_hash(&self, batch: &Batch) -> Option<Hash> {
        let count = batch.requests.len();
        if count > self.config.batch_requests_max {
            return None;
        }
        if count > 1
            && batch.encoded_len() > self.config.batch_bytes_max + dura_core::BATCH_HEADER_BYTES
        {
            return None;
        }
        if batch.requests.iter().any(|r| r.operation.len() > self.config.operation_bytes_max) {
            return None;
        }
        let digests: Vec<Hash> = batch
            .requests
            .iter()
            .map(|request| self.request_digest(request))
            .collect::<Option<_>>()?;
        Some(hash_with_digests(batch, &digests))
    }

    /// The next batch to propose, with its hash.
    pub(super) fn build_batch(&self) -> (Batch, Hash) {
        let mut digests = Vec::new();
        let mut requests = Vec::new();
        let mut bytes = dura_core::BATCH_HEADER_BYTES;
        for pending in self.pending.values() {
            let len = pending.request.encoded_len();
            if !requests.is_empty()
                && (requests.len() >= self.config.batch_requests_max
                    || bytes + len > self.config.batch_bytes_max + dura_core::BATCH_HEADER_BYTES)
            {
                break;
            }
            bytes += len;
            requests.push(pending.request.clone());
            digests.push(pending.digest);
        }
        let batch = Batch { timestamp_ms: self.clock_ms.max(self.last_stamp_ms), requests };
        let hash = hash_with_digests(&batch, &digests);
        (batch, hash)
    }

    /// Keeps messages for agreements in (last_decided, last_decided + FUTURE]; beyond,
    /// the replica is behind.
    fn instance_slot(&mut self, agreement_id: u64) -> Option<&mut Instance> {
        if agreement_id <= self.last_decided {
            return None;
        }
        if agreement_id > self.last_decided + FUTURE_INSTANCES_MAX {
            self.mark_behind();
            self.send_fetch_now();
            return None;
        }
        if agreement_id > self.last_decided + 1 {
            self.mark_behind();
        }
        Some(self.instances.entry(agreement_id).or_default())
    }

    pub(super) fn on_propose(
        &mut self,
        from: ReplicaId,
        regency: u64,
        agreement_id: u64,
        batch: Arc<Batch>,
        actions: &mut Vec<Action>,
    ) {
        if agreement_id <= self.last_decided {
            self.help(from, agreement_id, actions);
            return;
        }
        if from != self.config.leader_of(regency) || regency < self.regency {
            return;
        }
        if let Some(inst) = self.instance_slot(agreement_id)
            && inst.proposal.as_ref().is_none_or(|(r, _)| *r < regency)
        {
            inst.proposal = Some((regency, batch));
        }
    }

    pub(super) fn on_vote(
        &mut self,
        from: ReplicaId,
        regency: u64,
        agreement_id: u64,
        hash: Hash,
        accept: bool,
        actions: &mut Vec<Action>,
    ) {
        if agreement_id <= self.last_decided {
            if accept {
                self.note_conflicting_accept(from, regency, agreement_id, hash, actions);
                if self.discarded {
                    return;
                }
            }
            self.help(from, agreement_id, actions);
            return;
        }
        if let Some(inst) = self.instance_slot(agreement_id) {
            let votes = if accept { &mut inst.accepts } else { &mut inst.writes };
            let newer = votes.get(&from).is_none_or(|(r, _)| *r <= regency);
            if newer {
                votes.insert(from, (regency, hash));
            }
        }
    }

    /// BFT: an ACCEPT for an agreement this replica decided, for another batch. Once f+1
    /// replicas accepted that batch in one regency, a correct one did: that cannot happen
    /// while the replicas that accepted this replica's batch remember their votes (the
    /// leader change forces it), so more than f of them crashed and forgot, and the
    /// cluster may decide the agreement otherwise. This replica's decision there (and all
    /// it decided after) is discarded, as after a crash of all
    /// ([`Action::DiscardUnconfirmed`]), and the replica comes back by transfer. Safe:
    /// the replicas that logged it keep it, and a client saw it complete only if f+1 did.
    fn note_conflicting_accept(
        &mut self,
        from: ReplicaId,
        regency: u64,
        agreement_id: u64,
        hash: Hash,
        actions: &mut Vec<Action>,
    ) {
        if self.config.mode != Mode::Bft
            || self.window_get(agreement_id).is_none_or(|entry| entry.hash == hash)
        {
            return;
        }
        let key = (agreement_id, regency, hash);
        if !self.conflicting.contains_key(&key) && self.conflicting.len() >= super::CONFLICTS_MAX {
            self.conflicting.pop_first();
        }
        let senders = self.conflicting.entry(key).or_default();
        if !senders.contains(&from) {
            senders.push(from);
        }
        if senders.len() > self.config.f {
            self.conflicting.clear();
            self.discard_suffix(agreement_id - 1, actions);
        }
        assert!(self.conflicting.len() <= super::CONFLICTS_MAX);
    }

    fn can_vote(&self, regency: u64, agreement_id: u64) -> bool {
        self.phase == Phase::Normal
            && regency == self.regency
            && regency >= self.vote_regency_min
            && agreement_id == self.last_decided + 1
            && self.may_vote_at(regency, agreement_id)
    }

    /// Writes `batch` (whose hash is `hash`) for (regency, agreement): broadcasts WRITE
    /// (BFT) or ACCEPT (crash).
    pub(super) fn write_value(
        &mut self,
        regency: u64,
        agreement_id: u64,
        batch: Arc<Batch>,
        hash: Hash,
        actions: &mut Vec<Action>,
    ) {
        debug_assert_eq!(batch.hash(), hash);
        let mode = self.config.mode;
        let id = self.id;
        let inst = self.instances.entry(agreement_id).or_default();
        if inst.my_write.is_some_and(|(r, _)| r >= regency) {
            return; // one value per (regency, agreement)
        }
        if inst.values.len() < VALUES_PER_INSTANCE_MAX || inst.values.contains_key(&hash) {
            inst.values.insert(hash, batch);
        } else {
            return;
        }
        assert!(
            inst.my_write.is_none_or(|(r, _)| r < regency),
            "one value per (regency, agreement)"
        );
        inst.my_write = Some((regency, hash));
        inst.my_writes.insert(hash, regency);
        inst.writes.insert(id, (regency, hash));
        match mode {
            Mode::Bft => actions.push(Action::Broadcast {
                message: Message::Write { regency, agreement_id, hash },
            }),
            Mode::Crash => {
                inst.my_accept = Some((regency, hash));
                inst.accepts.insert(id, (regency, hash));
                actions.push(Action::Broadcast {
                    message: Message::Accept { regency, agreement_id, hash },
                });
            }
        }
    }

    fn check_accept(&mut self, agreement_id: u64, actions: &mut Vec<Action>) {
        if self.config.mode != Mode::Bft || !self.can_vote(self.regency, agreement_id) {
            return;
        }
        let regency = self.regency;
        let quorum = self.quorum();
        let id = self.id;
        let Some(inst) = self.instances.get_mut(&agreement_id) else { return };
        let Some((written_regency, hash)) = inst.my_write else { return };
        if written_regency != regency || inst.my_accept.is_some_and(|(r, _)| r >= regency) {
            return;
        }
        let matching = inst.writes.values().filter(|vote| **vote == (regency, hash)).count();
        if matching >= quorum {
            inst.my_accept = Some((regency, hash));
            inst.accepts.insert(id, (regency, hash));
            actions.push(Action::Broadcast {
                message: Message::Accept { regency, agreement_id, hash },
            });
        }
    }

    /// Decides the open agreement if a quorum of matching ACCEPTs and the batch are in.
    fn check_decide(&mut self, agreement_id: u64) -> bool {
        let quorum = self.quorum();
        let Some(inst) = self.instances.get(&agreement_id) else { return false };
        let mut tally: BTreeMap<(u64, Hash), Vec<ReplicaId>> = BTreeMap::new();
        for (&sender, &vote) in &inst.accepts {
            tally.entry(vote).or_default().push(sender);
        }
        let decided = tally
            .into_iter()
            .find(|((_, hash), senders)| senders.len() >= quorum && inst.values.contains_key(hash));
        match decided {
            Some(((regency, hash), proof)) => {
                assert!(
                    proof.len() >= quorum && quorum <= self.config.n,
                    "a decision needs a quorum"
                );
                let batch = inst.values[&hash].clone();
                self.decide(agreement_id, Some(regency), hash, batch, proof);
                true
            }
            None => false,
        }
    }

    pub(super) fn decide(
        &mut self,
        agreement_id: u64,
        regency: Option<u64>,
        hash: Hash,
        batch: Arc<Batch>,
        proof: Vec<ReplicaId>,
    ) {
        assert_eq!(agreement_id, self.last_decided + 1, "agreements decide in order");
        debug_assert_eq!(batch.hash(), hash);
        self.last_decided = agreement_id;
        self.instances.remove(&agreement_id);
        self.fetch.retain(|&aid, _| aid > agreement_id);
        self.window_push(DecidedEntry {
            agreement_id,
            hash,
            batch: batch.clone(),
            regency,
            tick: self.now_tick,
        });
        for request in &batch.requests {
            let entry = self.ordered.entry(request.client_id).or_insert(0);
            *entry = (*entry).max(request.sequence);
            let sequence = *entry;
            self.remove_ordered_pending(request.client_id, sequence);
        }
        self.trim_ordered();
        self.failed_changes = 0;
        self.progress_tick = self.now_tick;
        if self.phase == Phase::Normal {
            self.sync_resend = None;
        }
        let regency = regency.unwrap_or(0);
        self.last_stamp_ms = self.last_stamp_ms.max(batch.timestamp_ms);
        self.deliveries.push(Decision { agreement_id, regency, hash, batch, proof });
    }

    /// Drives the open agreement as far as the messages in hand allow.
    pub(super) fn settle(&mut self, actions: &mut Vec<Action>) {
        loop {
            let aid = self.last_decided + 1;
            if self.decide_from_fetch(aid, actions) {
                // The range the last FETCH asked for is decided: ask for the next one now
                // rather than at the next tick (a replica catching up after a state
                // transfer must outrun the cluster; with one range per two ticks it
                // decided about 320 agreements a second, barely more than the cluster).
                if self.last_decided >= self.fetch_to {
                    self.fetch_sent_tick = Some(self.now_tick);
                    self.behind_mark = None;
                    self.fetch_wanted = true;
                }
                continue;
            }
            if self.discarded {
                return;
            }
            let proposal = self.instances.get(&aid).and_then(|inst| inst.proposal.clone());
            if let Some((regency, batch)) = proposal
                && self.can_vote(regency, aid)
            {
                if let Some(inst) = self.instances.get_mut(&aid) {
                    inst.proposal = None;
                }
                if self.timestamp_acceptable(&batch)
                    && let Some(hash) = self.valid_batch_hash(&batch)
                {
                    self.write_value(regency, aid, batch, hash, actions);
                }
            }
            self.check_accept(aid, actions);
            if self.check_decide(aid) {
                continue;
            }
            break;
        }
    }

    pub(super) fn maybe_propose(&mut self, actions: &mut Vec<Action>) {
        let aid = self.last_decided + 1;
        if !self.is_leader() || !self.can_vote(self.regency, aid) || self.pending.is_empty() {
            return;
        }
        if self
            .instances
            .get(&aid)
            .is_some_and(|inst| inst.my_write.is_some_and(|(r, _)| r >= self.regency))
        {
            return;
        }
        let (batch, hash) = self.build_batch();
        self.last_stamp_ms = self.last_stamp_ms.max(batch.timestamp_ms);
        let batch = Arc::new(batch);
        actions.push(Action::Broadcast {
            message: Message::Propose {
                regency: self.regency,
                agreement_id: aid,
                batch: batch.clone(),
            },
        });
        self.write_value(self.regency, aid, batch, hash, actions);
    }

    /// The open agreement is stuck (messages may have been lost): send this replica's
    /// proposal and votes for it again. Receivers ignore duplicates.
    pub(super) fn resend_votes(&self, actions: &mut Vec<Action>) {
        let aid = self.last_decided + 1;
        let regency = self.regency;
        let Some(inst) = self.instances.get(&aid) else { return };
        if let Some((r, hash)) = inst.my_write
            && r == regency
        {
            if self.leads(regency)
                && self.sync_resend.is_none()
                && let Some(batch) = inst.values.get(&hash)
            {
                actions.push(Action::Broadcast {
                    message: Message::Propose { regency, agreement_id: aid, batch: batch.clone() },
                });
            }
            if self.config.mode == Mode::Bft {
                actions.push(Action::Broadcast {
                    message: Message::Write { regency, agreement_id: aid, hash },
                });
            }
        }
        if let Some((r, hash)) = inst.my_accept
            && r == regency
        {
            actions.push(Action::Broadcast {
                message: Message::Accept { regency, agreement_id: aid, hash },
            });
        }
    }
}

/// [`Batch::hash`] from the digests of its requests, in order.
fn hash_with_digests(batch: &Batch, digests: &[Hash]) -> Hash {
    assert_eq!(digests.len(), batch.requests.len(), "one digest per request");
    let mut next = digests.iter();
    batch.hash_with(|_| *next.next().expect("one digest per request"))
}
