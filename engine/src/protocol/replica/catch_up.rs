//! Catch-up: FETCH and DECIDED, help for a peer still working on an agreement this
//! replica decided, and the window of recent decisions that answers them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::protocol::message::{Batch, Message};
use crate::protocol::{Action, Hash, Mode, ReplicaId};

use super::{DecidedEntry, FUTURE_INSTANCES_MAX, RESEND_TICKS, Replica};

impl Replica {
    /// A replica is still working on an agreement decided here: send it the decided
    /// batch (it decides on f+1 of those) and, if it was decided here by an ACCEPT
    /// quorum, this replica's ACCEPT for it (so that a quorum can form even when only one
    /// correct replica saw it). A replica that decided a value may vote for it: it is
    /// the only value that can be decided. Not for messages that are merely late
    /// (within a tick of the decision), and at most once per RESEND_TICKS per peer.
    pub(super) fn help(&mut self, to: ReplicaId, agreement_id: u64, actions: &mut Vec<Action>) {
        let now = self.now_tick;
        if self
            .helped
            .get(&to)
            .is_some_and(|&(done, tick)| done >= agreement_id && now < tick + RESEND_TICKS)
        {
            return;
        }
        let Some(entry) = self.window_get(agreement_id) else { return };
        if agreement_id == self.last_decided && now < entry.tick + 2 {
            return;
        }
        let (batch, hash, regency) = (entry.batch.clone(), entry.hash, entry.regency);
        let previous = self.previous_hash(agreement_id);
        self.helped.insert(to, (agreement_id, now));
        let message = Message::Decided { agreement_id, batch, previous };
        actions.push(Action::Send { to, message });
        if let Some(regency) = regency {
            actions.push(Action::Send {
                to,
                message: Message::Accept { regency, agreement_id, hash },
            });
        }
    }

    /// Appends a decision to the catch-up window and trims it to its bounds.
    pub(super) fn window_push(&mut self, entry: DecidedEntry) {
        if let Some(last) = self.window.back() {
            assert_eq!(last.agreement_id + 1, entry.agreement_id, "decision window is consecutive");
        }
        self.window_bytes += entry.batch.encoded_len();
        self.window.push_back(entry);
        while self.window.len() > 1
            && (self.window.len() > self.config.decided_window_max
                || self.window_bytes > self.config.decided_window_bytes_max)
        {
            let dropped = self.window.pop_front().expect("window is not empty");
            self.window_bytes -= dropped.batch.encoded_len();
        }
    }

    pub(super) fn window_get(&self, agreement_id: u64) -> Option<&DecidedEntry> {
        let first = self.window.front()?.agreement_id;
        if agreement_id < first {
            return None;
        }
        let entry = self.window.get((agreement_id - first) as usize)?;
        assert_eq!(entry.agreement_id, agreement_id, "decision window is consecutive");
        Some(entry)
    }

    pub(super) fn mark_behind(&mut self) {
        if self.behind_mark.is_none() {
            self.behind_mark = Some(self.last_decided);
        }
    }

    pub(super) fn send_fetch_now(&mut self) {
        if self.fetch_sent_tick.is_some_and(|tick| self.now_tick < tick + 2) {
            return;
        }
        self.fetch_sent_tick = Some(self.now_tick);
        self.behind_mark = None;
        self.fetch_wanted = true;
    }

    pub(super) fn on_fetch(
        &mut self,
        to: ReplicaId,
        first: u64,
        last: u64,
        actions: &mut Vec<Action>,
    ) {
        let last = last.min(first.saturating_add(self.config.fetch_instances_max - 1));
        // What the window no longer holds: the host answers from its log, or says GONE
        // so that a replica behind every window and log transfers state instead of
        // asking forever.
        let first_held = self.window.front().map_or(self.last_decided + 1, |e| e.agreement_id);
        // `first` and `last` come from a peer: a range that is empty or starts at 0 asks
        // for nothing (the log reader asserts a range of real agreements).
        let below = last.min(first_held.saturating_sub(1)).min(self.last_decided);
        if first >= 1 && first <= below {
            actions.push(Action::ServeFromLog { to, first, last: below, first_held });
        }
        let mut aid = first;
        while aid <= last {
            match self.window_get(aid) {
                Some(entry) => {
                    let batch = entry.batch.clone();
                    let previous = self.previous_hash(aid);
                    let message = Message::Decided { agreement_id: aid, batch, previous };
                    actions.push(Action::Send { to, message })
                }
                None if aid > self.last_decided => break,
                None => {}
            }
            aid += 1;
        }
    }

    /// The hash of the batch decided at `agreement_id - 1`, if the window holds it.
    fn previous_hash(&self, agreement_id: u64) -> Option<Hash> {
        self.window_get(agreement_id.checked_sub(1)?).map(|entry| entry.hash)
    }

    pub(super) fn on_decided(
        &mut self,
        from: ReplicaId,
        agreement_id: u64,
        batch: Arc<Batch>,
        previous: Option<Hash>,
    ) {
        let horizon = self.last_decided + self.config.fetch_instances_max.max(FUTURE_INSTANCES_MAX);
        if agreement_id <= self.last_decided || agreement_id > horizon {
            if agreement_id > horizon {
                self.mark_behind();
            }
            return;
        }
        let slot = self.fetch.entry(agreement_id).or_default();
        if slot.votes.contains_key(&from) {
            return;
        }
        let hash = batch.hash();
        slot.votes.insert(from, (hash, previous));
        slot.batches.entry(hash).or_insert(batch);
    }

    /// Decides `agreement_id` (the next one) from f+1 matching DECIDED answers. BFT: if
    /// f+1 of the answers name, as the batch before it, another batch than the one this
    /// replica decided there, a correct replica decided that agreement otherwise (more
    /// than f replicas forgot their votes since this one decided it, as after a crash
    /// of every replica that this replica's recovery did not see whole): it gives its
    /// decision there up (`discard_suffix`) instead of building on it.
    pub(super) fn decide_from_fetch(
        &mut self,
        agreement_id: u64,
        actions: &mut Vec<Action>,
    ) -> bool {
        // Up to what a recovery took as proven by fewer logs (peers' disks lost), as
        // many matching answers fetch it, from replicas other than those that said their
        // disk was lost (they are the faults that lowered the bar).
        let trusted = agreement_id <= self.trusted_up_to;
        let weak = match trusted {
            true => self.trusted_quorum,
            false => self.config.weak_quorum(),
        };
        debug_assert!(weak >= 1);
        let Some(slot) = self.fetch.get(&agreement_id) else { return false };
        if self.config.mode == Mode::Bft
            && agreement_id == self.last_decided + 1
            && let Some(own) = self.window_get(self.last_decided).map(|entry| entry.hash)
        {
            let contradicting = slot
                .votes
                .values()
                .filter(|(_, previous)| previous.is_some_and(|p| p != own))
                .count();
            if contradicting > self.config.f {
                self.fetch.clear();
                self.discard_suffix(self.last_decided - 1, actions);
                return false;
            }
        }
        let mut tally: BTreeMap<Hash, Vec<ReplicaId>> = BTreeMap::new();
        for (&sender, &(hash, _)) in &slot.votes {
            if trusted && self.trusted_excluded.contains(&sender) {
                continue;
            }
            tally.entry(hash).or_default().push(sender);
        }
        let Some((hash, proof)) = tally.into_iter().find(|(_, senders)| senders.len() >= weak)
        else {
            return false;
        };
        let batch = slot.batches[&hash].clone();
        self.decide(agreement_id, None, hash, batch, proof);
        true
    }

    /// A peer no longer holds `first_held - 1` and below. When enough peers say so about
    /// the agreement this replica needs next (f+1 in BFT mode, so f liars cannot cause
    /// it; one in crash mode), no FETCH can bring it: ask the host for a state transfer,
    /// once per agreement this replica is stuck at.
    pub(super) fn on_gone(&mut self, from: ReplicaId, first_held: u64, actions: &mut Vec<Action>) {
        let needed = self.last_decided + 1;
        if first_held <= needed {
            return;
        }
        if self.gone_at != self.last_decided {
            self.gone_at = self.last_decided;
            self.gone.clear();
            self.transfer_asked = false;
        }
        if self.gone.is_empty() {
            self.gone_since_tick = self.now_tick;
        }
        // Bounded: one entry per replica of the cluster.
        self.gone.insert(from, first_held);
        debug_assert!(self.gone.len() < self.config.n);
        if !self.transfer_asked && self.gone.len() >= self.config.weak_quorum() {
            self.transfer_asked = true;
            let mut held: Vec<u64> = self.gone.values().copied().collect();
            held.sort_unstable();
            actions.push(Action::TransferNeeded {
                last_decided: self.last_decided,
                first_held: held[0],
            });
        }
    }

    /// Fewer than f+1 peers said GONE for the next agreement, but nothing was decided
    /// for [`super::GONE_ALONE_TICKS`] since the first did: transfer (the others may serve
    /// the agreement from their logs, one short of the f+1 matching answers needed).
    pub(super) fn check_gone_alone(&mut self, actions: &mut Vec<Action>) {
        if self.transfer_asked
            || self.gone.is_empty()
            || self.gone_at != self.last_decided
            || self.now_tick < self.gone_since_tick + super::GONE_ALONE_TICKS
        {
            return;
        }
        self.transfer_asked = true;
        let first_held = *self.gone.values().min().expect("not empty");
        actions.push(Action::TransferNeeded { last_decided: self.last_decided, first_held });
    }
}

/// The answer to [`Action::ServeFromLog`] for `first..=last` below a window that begins
/// at `first_held`, from the decided batches `(agreement, batch, hash)` the host's log
/// returned, in order, for `first - 1..=last` (or from `first` when the log no longer
/// holds `first - 1`); `None` when the log could not give them (no log, truncated).
/// A DECIDED per agreement, naming the batch before it where the read holds it (as the
/// window does), or GONE { first_held } when the log does not start at `first`.
pub fn catch_up_from_log(
    first: u64,
    last: u64,
    first_held: u64,
    batches: Option<&[(u64, Arc<Batch>, Hash)]>,
) -> Vec<Message> {
    assert!(first <= last && last < first_held, "a range below the window");
    let gone = || vec![Message::Gone { first_held }];
    let Some(batches) = batches else { return gone() };
    let Some(start) = batches.iter().position(|(id, _, _)| *id == first) else {
        return gone();
    };
    let mut answers = Vec::with_capacity(batches.len() - start);
    let mut previous = start.checked_sub(1).map(|i| &batches[i]);
    for entry in &batches[start..] {
        let (agreement_id, batch, _) = entry;
        // The read is whole and in order: each agreement follows the one before.
        if *agreement_id > last
            || previous.is_some_and(|(before, _, _)| before + 1 != *agreement_id)
        {
            break;
        }
        answers.push(Message::Decided {
            agreement_id: *agreement_id,
            batch: batch.clone(),
            previous: previous.map(|(_, _, hash)| *hash),
        });
        previous = Some(entry);
    }
    answers
}
