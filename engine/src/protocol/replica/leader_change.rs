//! Leader change: STOP, STOPDATA, the choice rule over the reports it carries, and
//! SYNC (sending it as the new leader, checking and applying it as a follower).

use std::sync::Arc;

use crate::protocol::message::{COLLECT_VALUES_MAX, COLLECT_WRITES_MAX, CollectData, Message};
use crate::protocol::{Action, Hash, Mode, ReplicaId};

use super::{
    Choice, DECIDED_REGENCY, DecidedEntry, PendingSync, Phase, REGENCY_AHEAD_MAX, Replica, Report,
};

impl Replica {
    pub(super) fn start_stop(&mut self, target: u64, actions: &mut Vec<Action>) {
        if self.stop_sent >= target {
            return;
        }
        self.stop_sent = target;
        self.stop_resent_tick = self.now_tick;
        self.stop_raised_tick = self.now_tick;
        self.stop_high.insert(self.id, target);
        actions.push(Action::Broadcast { message: Message::Stop { regency: target } });
        self.check_stops(actions);
    }

    pub(super) fn on_stop(&mut self, from: ReplicaId, target: u64, actions: &mut Vec<Action>) {
        if self.stop_high.get(&from).is_none_or(|&high| high < target) {
            self.stop_high.insert(from, target);
        }
        self.check_stops(actions);
    }

    /// The `k`-th largest STOP regency: the highest regency that `k` replicas asked for.
    pub(super) fn stop_level(&self, k: usize) -> u64 {
        let mut highs: Vec<u64> = self.stop_high.values().copied().collect();
        highs.sort_unstable_by(|a, b| b.cmp(a));
        highs.get(k.wrapping_sub(1)).copied().unwrap_or(0)
    }

    fn check_stops(&mut self, actions: &mut Vec<Action>) {
        if self.is_recovering() {
            return;
        }
        // Join a leader change that f+1 replicas ask for in BFT mode (f liars cannot
        // start one), that one asks for in crash mode (nobody lies). Crash mode used f+1
        // too, and lost liveness (simulator seed 36338, crash 3 after a crash of all):
        // the STOPs for regency 1 to replica 0 were lost, the replica that alone decided
        // under regency 1 crashed for good, and the other kept asking for regency 2 on
        // its own; replica 0, with nothing pending, never moved, and neither decided
        // again.
        let join = self.stop_level(self.config.weak_quorum());
        if join > self.regency && join > self.stop_sent {
            self.start_stop(join, actions);
            return; // start_stop re-enters check_stops
        }
        let install = self.stop_level(self.quorum());
        if install > self.regency {
            self.install_changing(install, actions);
        }
    }

    fn install_changing(&mut self, target: u64, actions: &mut Vec<Action>) {
        assert!(target > self.regency, "regencies only grow");
        self.regency = target;
        self.phase = Phase::Changing { since_tick: self.now_tick };
        self.sync_resend = None;
        self.stopdata.retain(|&r, _| r >= target);
        if self.pending_sync.as_ref().is_some_and(|sync| sync.regency < target) {
            self.pending_sync = None;
        }
        let collect = Arc::new(self.build_collect());
        let digest = collect.digest();
        self.stopdata.entry(target).or_default().insert(self.id, (collect.clone(), digest));
        let message = Message::StopData { regency: target, collect };
        self.my_stopdata = Some(message.clone());
        actions.push(Action::Broadcast { message });
    }

    fn build_collect(&self) -> CollectData {
        let mut collect = CollectData {
            last_decided: self.last_decided,
            decided_hash: self.window.back().map(|entry| entry.hash),
            vote_floor: self.vote_floor,
            ..CollectData::default()
        };
        let mut wanted: Vec<Hash> = Vec::new();
        if let Some(inst) = self.instances.get(&(self.last_decided + 1)) {
            collect.accepted = inst.my_accept;
            let mut writes: Vec<(Hash, u64)> =
                inst.my_writes.iter().map(|(h, r)| (*h, *r)).collect();
            writes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            writes.truncate(COLLECT_WRITES_MAX);
            collect.writes = writes;
            wanted.extend(inst.my_accept.map(|(_, h)| h));
            wanted.extend(inst.my_write.map(|(_, h)| h));
            for hash in &wanted {
                if let Some(batch) = inst.values.get(hash)
                    && !collect.values.iter().any(|b| Arc::ptr_eq(b, batch))
                {
                    collect.values.push(batch.clone());
                }
            }
        }
        if let Some(DecidedEntry { batch, .. }) = self.window.back()
            && collect.values.len() < COLLECT_VALUES_MAX
        {
            collect.values.push(batch.clone());
        }
        collect.values.truncate(COLLECT_VALUES_MAX);
        collect
    }

    pub(super) fn on_stopdata(&mut self, from: ReplicaId, regency: u64, collect: Arc<CollectData>) {
        if regency < self.regency || regency > self.regency + REGENCY_AHEAD_MAX {
            return;
        }
        if collect.last_decided > self.last_decided {
            self.mark_behind();
        }
        if regency > self.regency {
            // At most one future regency per sender: bounds what a Byzantine replica can
            // make this replica hold.
            for (&r, senders) in self.stopdata.iter_mut() {
                if r > self.regency && r != regency {
                    senders.remove(&from);
                }
            }
        }
        let digest = collect.digest();
        self.stopdata.entry(regency).or_default().entry(from).or_insert((collect, digest));
    }

    /// The report of one collect about agreement `aid`: (accepted, writes), or None if
    /// the collect cannot speak about it: its sender is ahead, or (crash mode) it
    /// restarted since it may have voted there and forgot the vote. A forgotten vote
    /// may be one of a quorum that decided: counting its silence would let the new
    /// leader choose freely where a value was decided (simulator seed 4928, crash 3,
    /// with replicas joining a leader change on one STOP). BFT mode counts such a
    /// replica as one of its f faults (module docs, "Restart").
    fn report(&self, collect: &CollectData, aid: u64) -> Option<Report> {
        let k = collect.last_decided;
        if k > aid || (self.config.mode == Mode::Crash && k < aid && aid <= collect.vote_floor) {
            None
        } else if k == aid {
            let hash = collect.decided_hash?;
            Some((Some((DECIDED_REGENCY, hash)), vec![(hash, DECIDED_REGENCY)]))
        } else if k + 1 == aid {
            Some((collect.accepted, collect.writes.clone()))
        } else {
            Some((None, Vec::new()))
        }
    }

    /// The choice rule (module docs) over `collects` for agreement `aid`.
    pub(super) fn choose(&self, collects: &[&CollectData], aid: u64) -> Option<Choice> {
        let mut reports = Vec::with_capacity(collects.len());
        for collect in collects {
            reports.push(self.report(collect, aid)?);
        }
        let quorum = self.quorum();
        if reports.len() < quorum {
            return None;
        }
        let mut candidates: Vec<(u64, Hash)> = reports.iter().filter_map(|(acc, _)| *acc).collect();
        candidates.sort_by(|a, b| b.cmp(a));
        candidates.dedup();
        match self.config.mode {
            Mode::Crash => Some(match candidates.first() {
                Some((_, hash)) => Choice::Forced(*hash),
                None => Choice::Free,
            }),
            Mode::Bft => {
                let weak = self.config.weak_quorum();
                for &(regency, hash) in &candidates {
                    let compatible = reports
                        .iter()
                        .filter(|(acc, _)| match acc {
                            None => true,
                            Some((r, h)) => *r < regency || *h == hash,
                        })
                        .count();
                    let certified = reports
                        .iter()
                        .filter(|(_, writes)| {
                            writes.iter().any(|(h, r)| *h == hash && *r >= regency)
                        })
                        .count();
                    if compatible >= quorum && certified >= weak {
                        return Some(Choice::Forced(hash));
                    }
                }
                let unaccepted = reports.iter().filter(|(acc, _)| acc.is_none()).count();
                (unaccepted >= quorum).then_some(Choice::Free)
            }
        }
    }

    /// New leader: once its STOPDATAs determine a value, broadcast SYNC.
    pub(super) fn try_sync(&mut self, actions: &mut Vec<Action>) {
        let regency = self.regency;
        let Some(collected) = self.stopdata.get(&regency) else { return };
        let weak = self.config.weak_quorum().max(1);
        let mut decided: Vec<u64> = collected.values().map(|(c, _)| c.last_decided).collect();
        decided.sort_unstable_by(|a, b| b.cmp(a));
        if decided.get(weak - 1).is_some_and(|&d| d > self.last_decided) {
            self.mark_behind();
            self.send_fetch_now();
            return;
        }
        let aid = self.last_decided + 1;
        let members: Vec<(ReplicaId, Arc<CollectData>, Hash)> = collected
            .iter()
            .filter(|(_, (c, _))| self.report(c, aid).is_some())
            .map(|(&id, (c, d))| (id, c.clone(), *d))
            .collect();
        let refs: Vec<&CollectData> = members.iter().map(|(_, c, _)| c.as_ref()).collect();
        let batch = match self.choose(&refs, aid) {
            None => return,
            // Any value is safe; prefer one a member logged as decided (after a crash of
            // every replica it may be the only trace of that agreement), then one it
            // accepted, then this leader's pending requests.
            Some(Choice::Free) => {
                let logged = members.iter().find_map(|(_, c, _)| {
                    let hash = c.decided_hash.filter(|_| c.last_decided == aid)?;
                    c.values.iter().find(|b| b.hash() == hash).cloned()
                });
                let accepted = || {
                    members.iter().find_map(|(_, c, _)| {
                        let (_, hash) = c.accepted.filter(|_| c.last_decided + 1 == aid)?;
                        c.values.iter().find(|b| b.hash() == hash).cloned()
                    })
                };
                logged.or_else(accepted).unwrap_or_else(|| Arc::new(self.build_batch().0))
            }
            Some(Choice::Forced(hash)) => {
                let found = members
                    .iter()
                    .flat_map(|(_, c, _)| c.values.iter())
                    .find(|batch| batch.hash() == hash)
                    .cloned()
                    .or_else(|| {
                        self.instances.get(&aid).and_then(|inst| inst.values.get(&hash).cloned())
                    });
                match found {
                    Some(batch) => batch,
                    None => return,
                }
            }
        };
        let message = Message::Sync {
            regency,
            agreement_id: aid,
            members: members.iter().map(|(id, _, d)| (*id, *d)).collect(),
            batch: batch.clone(),
        };
        actions.push(Action::Broadcast { message: message.clone() });
        self.sync_resend = Some(message);
        let sync = PendingSync {
            from: self.id,
            regency,
            agreement_id: aid,
            members: members.iter().map(|(id, _, d)| (*id, *d)).collect(),
            batch,
        };
        self.apply_sync(sync, actions);
    }

    pub(super) fn retry_pending_sync(&mut self, actions: &mut Vec<Action>) {
        if let Some(sync) = self.pending_sync.take() {
            self.apply_sync(sync, actions);
        }
    }

    /// Validates a SYNC and, if it holds, installs its regency and writes its value.
    pub(super) fn apply_sync(&mut self, sync: PendingSync, actions: &mut Vec<Action>) {
        if sync.from != self.config.leader_of(sync.regency) || sync.regency < self.regency {
            return;
        }
        if sync.regency > self.regency {
            if sync.regency <= self.regency + REGENCY_AHEAD_MAX {
                self.pending_sync = Some(sync);
            }
            return;
        }
        if !matches!(self.phase, Phase::Changing { .. }) {
            return;
        }
        let Some(collected) = self.stopdata.get(&sync.regency) else {
            self.pending_sync = Some(sync);
            return;
        };
        let mut members = Vec::with_capacity(sync.members.len());
        for (member, digest) in &sync.members {
            match collected.get(member) {
                Some((collect, have)) if have == digest => members.push(collect.clone()),
                Some(_) => return, // the leader used a STOPDATA we were not sent: reject
                None => {
                    self.pending_sync = Some(sync);
                    return;
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if !sync.members.iter().all(|(member, _)| seen.insert(*member)) {
            return;
        }
        if sync.agreement_id > self.last_decided + 1 {
            self.mark_behind();
            self.send_fetch_now();
            self.pending_sync = Some(sync);
            return;
        }
        let refs: Vec<&CollectData> = members.iter().map(|c| c.as_ref()).collect();
        let hash = sync.batch.hash();
        match self.choose(&refs, sync.agreement_id) {
            None => return,
            Some(Choice::Forced(forced)) if forced != hash => return,
            Some(Choice::Forced(_)) => {}
            Some(Choice::Free) => {
                if !self.timestamp_acceptable(&sync.batch)
                    || self.valid_batch_hash(&sync.batch).is_none()
                {
                    return;
                }
            }
        }
        // Installed.
        self.phase = Phase::Normal;
        if sync.regency >= self.vote_regency_min {
            self.awaiting_vote_regency = false;
        }
        self.progress_tick = self.now_tick;
        self.my_stopdata = None;
        for pending in self.pending.values_mut() {
            pending.arrival_tick = self.now_tick;
            pending.forwarded = false;
        }
        actions.push(Action::RegencyInstalled { regency: sync.regency, leader: sync.from });
        let aid = sync.agreement_id;
        if aid == self.last_decided + 1 {
            if self.may_vote_at(sync.regency, aid) {
                self.write_value(sync.regency, aid, sync.batch, hash, actions);
            }
        } else if let Some(entry) = self.window_get(aid)
            && entry.hash == hash
        {
            // Already decided here: vote so that the others can decide too.
            let regency = sync.regency;
            if self.config.mode == Mode::Bft {
                actions.push(Action::Broadcast {
                    message: Message::Write { regency, agreement_id: aid, hash },
                });
            }
            actions.push(Action::Broadcast {
                message: Message::Accept { regency, agreement_id: aid, hash },
            });
        }
    }
}
