//! Restart and recovery: restarting from the durable store, the status query and its
//! answers, ending recovery (`try_finish_recovery`) and the vote floor it sets.

use std::collections::BTreeMap;

use crate::protocol::auth::ReplicaKeys;
use crate::protocol::message::Vouch;
use crate::protocol::{Action, Config, Mode, ProtocolError, ReplicaId};

use super::{DecidedEntry, HEARTBEAT_NONCE, PeerStatus, Phase, Recovered, Replica};

impl Replica {
    /// A replica restarted from its durable store: it recovers (see the module docs)
    /// before it votes again. `recovered.recent` must end at `last_decided`.
    /// `ordered` gives, per client, the highest sequence number in the recovered
    /// history (so retransmissions are answered from the reply cache).
    ///
    /// The recovery query's nonce is derived from `last_decided`; prefer
    /// [`Replica::restart_with_nonce`] with a value unique per process start (e.g. the
    /// wall clock), so that late answers to an earlier incarnation's query are ignored
    /// and a crash-mode vouch ([`crate::protocol::Vouch`]) names this incarnation only.
    pub fn restart(
        config: Config,
        keys: ReplicaKeys,
        recovered: Recovered,
        ordered: BTreeMap<u64, u64>,
    ) -> Result<Self, ProtocolError> {
        let nonce = recovered.last_decided;
        Self::restart_with_nonce(config, keys, recovered, ordered, nonce)
    }

    /// [`Replica::restart`] with an explicit recovery nonce, unique per incarnation.
    pub fn restart_with_nonce(
        config: Config,
        keys: ReplicaKeys,
        recovered: Recovered,
        ordered: BTreeMap<u64, u64>,
        nonce: u64,
    ) -> Result<Self, ProtocolError> {
        let mut replica = Self::new(config, keys)?;
        if recovered.recent.len() as u64 > recovered.last_decided {
            return Err(ProtocolError::Config("more recent batches than decided agreements"));
        }
        replica.last_decided = recovered.last_decided;
        replica.vote_floor = recovered.last_decided;
        replica.fill_window(recovered);
        replica.ordered = ordered;
        replica.trim_ordered();
        // The heartbeat nonce is reserved.
        let nonce = if nonce == HEARTBEAT_NONCE { 0 } else { nonce };
        replica.phase = Phase::Recovering { nonce };
        replica.incarnation = nonce;
        Ok(replica)
    }

    /// The host installed a transferred state at `recovered.last_decided` (a checkpoint
    /// validated by state transfer, and what its log held after it) while this core was
    /// stopped, in the same process. The core jumps there and goes on with everything it
    /// remembers: its votes (so no recovery and no vote floor is needed: it forgot
    /// nothing), its regency and leader change state. Decided agreements up to the new
    /// point leave its instances, its catch-up window becomes the recovered batches, the
    /// requests they ordered leave its pending set. A state at or below what it decided
    /// changes nothing. `recovered.recent` must end at `recovered.last_decided`.
    pub fn install_transferred(&mut self, recovered: Recovered, ordered: BTreeMap<u64, u64>) {
        let at = recovered.last_decided;
        // Whatever was installed, GONE answers count afresh: a transfer that found
        // nothing newer (its peers' agreed state was not ahead yet) is asked for again.
        self.gone.clear();
        self.transfer_asked = false;
        self.gone_at = self.last_decided.max(at);
        if at <= self.last_decided {
            return;
        }
        assert!(recovered.recent.len() as u64 <= at, "more recent batches than decided");
        self.last_decided = at;
        self.instances.retain(|&aid, _| aid > at);
        self.fetch.retain(|&aid, _| aid > at);
        self.window.clear();
        self.window_bytes = 0;
        self.fill_window(recovered);
        for (client, sequence) in ordered {
            let entry = self.ordered.entry(client).or_insert(0);
            *entry = (*entry).max(sequence);
            let sequence = *entry;
            self.remove_ordered_pending(client, sequence);
        }
        self.trim_ordered();
        self.behind_mark = None;
        self.fetch_sent_tick = None;
        self.fetch_wanted = false;
        self.fetch_to = 0;
        self.helped.clear();
        self.progress_tick = self.now_tick;
        assert!(self.deliveries.is_empty(), "nothing is delivered between two events");
        assert!(self.highest_voted() >= at, "what is decided is at or below the votes' floor");
    }

    /// The catch-up window (empty) takes the recovered batches, which end at
    /// `recovered.last_decided` (the newest ones that fit).
    fn fill_window(&mut self, recovered: Recovered) {
        debug_assert!(self.window.is_empty());
        let first = recovered.last_decided + 1 - recovered.recent.len() as u64;
        let skip = recovered.recent.len().saturating_sub(self.config.decided_window_max);
        for (offset, batch) in recovered.recent.into_iter().enumerate().skip(skip) {
            self.window_push(DecidedEntry {
                agreement_id: first + offset as u64,
                hash: batch.hash(),
                batch,
                regency: None,
                tick: self.now_tick,
            });
        }
    }

    pub(super) fn highest_voted(&self) -> u64 {
        let voted = self
            .instances
            .iter()
            .filter(|(_, inst)| inst.my_write.is_some() || inst.my_accept.is_some())
            .map(|(&aid, _)| aid)
            .max()
            .unwrap_or(0);
        voted.max(self.last_decided).max(self.vote_floor)
    }

    /// Whether recovery allows a vote for `agreement_id` in `regency`. Votes are not
    /// persisted, so a restarted replica must not vote twice, with different values, in
    /// a (regency, agreement) where its previous incarnation voted: hence the floor. In
    /// BFT mode a regency above every one the previous incarnation can have voted in
    /// lifts it: the votes there are new ones, cast after a SYNC that the choice rule
    /// checked, and the only trace of the lost votes is a STOPDATA that omits them,
    /// which the rule tolerates as one of f faults. Without this, a leader crash while
    /// the agreement at the floor is open stalls the cluster for good: it cannot decide
    /// without this replica's vote (module docs, "Restart").
    pub(super) fn may_vote_at(&self, regency: u64, agreement_id: u64) -> bool {
        agreement_id > self.vote_floor
            || (self.config.mode == Mode::Bft && self.floor_regency.is_some_and(|r| regency > r))
    }

    pub(super) fn on_status(
        &mut self,
        from: ReplicaId,
        nonce: u64,
        status: PeerStatus,
        actions: &mut Vec<Action>,
    ) {
        if status.last_decided > self.last_decided {
            self.mark_behind();
        }
        let Phase::Recovering { nonce: expected } = self.phase else { return };
        if nonce != expected || self.config.lost_replicas.contains(&from) {
            // A replica declared lost rejoins only with an empty data dir; what it says
            // before that is not waited for, nor used.
            return;
        }
        if status.disk_lost && self.config.mode == Mode::Bft {
            // What it says of its log is its peers' state: not an answer about what it
            // logged, but one of the f faults (`Replica::log_quorum`).
            self.statuses.remove(&from);
            self.declared_lost.insert(from);
        } else {
            self.declared_lost.remove(&from);
            self.statuses.insert(from, status);
        }
        assert!(self.statuses.len() + self.declared_lost.len() < self.config.n, "peers only");
        self.try_finish_recovery(actions);
    }

    /// Ends recovery once the answers collected so far are enough (see the module docs).
    pub(super) fn try_finish_recovery(&mut self, actions: &mut Vec<Action>) {
        let (n, f) = (self.config.n, self.config.f);
        if let Some(confirmed) = self.discard_pending {
            // It still serves what it holds (catch-up answers), and discards only once
            // f+1 others hold everything up to `confirmed`: its copy may be one of the
            // f+1 that a client's reply counted, or one of the f+1 matching answers the
            // others need to fetch it (a kill of every replica in the real-process
            // test stalled so: the discarder came back by transfer below `confirmed`,
            // and one disk alone held the agreement at `confirmed`).
            let holding = self.statuses.values().filter(|s| s.last_decided >= confirmed).count();
            if holding > f {
                self.discard_suffix(confirmed, actions);
            }
            return;
        }
        if self.config.mode == Mode::Crash
            && let Some(vouch) = self.statuses.values().find_map(|s| s.vouch)
        {
            self.finish_recovery_vouched(vouch, actions);
            return;
        }
        // A replica that restarted alone must hear from enough others that one of them
        // voted in whatever it may have voted in: a majority without it (crash mode), or
        // n-f with it, counting it as one of the f (BFT).
        let needed = match self.config.mode {
            Mode::Crash => n - f,
            Mode::Bft => n - f - 1,
        };
        let everyone_restarted = self.statuses.values().all(|s| s.recovering);
        // After a crash of every replica, wait for every replica not declared lost: only
        // complete information tells which agreements some replica logged (a replica that
        // is merely slow may have logged a decision no other one did, and would diverge
        // if the others decided that agreement anew without it). In BFT mode, after
        // `recovery_wait_ticks`, n-f answers (with this replica) are enough when every
        // agreement any of them logged is logged by f+1 of them: an agreement a client
        // saw complete was logged by f+1 replicas, so one of them is among the answers,
        // and all of it is fetchable. This lets a BFT cluster start (or restart after a
        // crash of all) with up to f replicas down or mute.
        if everyone_restarted {
            // Ticks count from this incarnation's start, when recovery began.
            let waited = self.now_tick;
            // A peer that said its disk was lost has answered all it can.
            let answered = self.statuses.len() + self.declared_lost.len();
            let enough = answered >= self.awaited_after_crash_of_all()
                || (self.config.mode == Mode::Bft
                    && self.statuses.len() >= needed
                    && waited >= self.config.recovery_wait_ticks()
                    && self.answers_agree_on_what_was_logged());
            if !enough {
                return;
            }
        } else if self.statuses.len() < needed {
            return;
        }
        if self.config.mode == Mode::Bft && !everyone_restarted && self.answers_contradicting() > f
        {
            // f+1 peers, one of them correct, decided another batch at this replica's
            // last agreement: more than f replicas crashed since it logged it (the others
            // resumed without it after a crash of all), and the cluster decided it anew.
            // Peers merely behind it prove nothing: it goes on, and gives the agreement
            // up only if they decide it otherwise (`Replica::conflicting`). Giving up an
            // agreement that the others decide the same way would not be safe: a client
            // may count this replica's earlier reply with a later one.
            self.discard_pending = Some(self.confirmed_by_answers());
            self.try_finish_recovery(actions);
            return;
        }
        let most_decided = self.statuses.values().map(|s| s.last_decided).max().unwrap_or(0);
        let mut regencies: Vec<u64> = self.statuses.values().map(|s| s.regency).collect();
        regencies.sort_unstable_by(|a, b| b.cmp(a));
        let regency = match self.config.mode {
            Mode::Crash => regencies[0],
            Mode::Bft => regencies.get(self.config.f).copied().unwrap_or(0),
        };
        if everyone_restarted {
            // All replicas lost their votes: nobody remembers what to abstain from, so
            // vote again, but only above what can be fetched (logged by a weak quorum)
            // and only in a fresh regency, reached through a leader change whose
            // STOPDATA carries each replica's last logged batch.
            let fetchable = self.decided_by_f_plus_1();
            // What only this replica (and fewer than f others) logged may be decided
            // anew with other values: it would diverge. Nothing above `fetchable` was
            // acknowledged, so it is discarded, with the state it produced. So is a
            // batch that f+1 of the others decided otherwise: an earlier crash of all
            // resumed without this replica.
            if self.config.mode == Mode::Bft
                && (self.last_decided > fetchable || self.answers_contradicting() > f)
            {
                self.discard_pending = Some(self.confirmed_by_answers());
                self.try_finish_recovery(actions);
                return;
            }
            if self.log_quorum() < self.config.weak_quorum() {
                // Fewer logs proved `fetchable` (peers said their disks were lost): the
                // same number of matching DECIDED answers fetches it.
                self.trusted_up_to = fetchable;
                self.trusted_quorum = self.log_quorum();
                // The replicas that said so spent the faults: their answers do not count
                // toward the lower bar (one of them could send any batch).
                self.trusted_excluded = self.declared_lost.clone();
            }
            self.vote_floor = self.last_decided.max(fetchable);
            self.vote_regency_min = regency + 1;
            self.awaiting_vote_regency = true;
            if self.config.mode == Mode::Crash {
                // Each incarnation counted here had cast no vote since its restart, and
                // its previous one died before any vote counted from now on: when it
                // asks again with the same nonce, tell it (crash mode only: a BFT
                // replica's word alone cannot lift another's floor).
                self.vouched =
                    self.statuses.iter().map(|(&id, status)| (id, status.incarnation)).collect();
            }
        } else {
            let floor = self.statuses.values().map(|s| s.highest_voted).max().unwrap_or(0);
            self.vote_floor = self.vote_floor.max(floor);
            // A regency the previous incarnation voted in was installed through a
            // quorum of STOPDATAs, so n-f-1 answers include a replica at or above it.
            self.floor_regency = self.statuses.values().map(|s| s.regency).max();
        }
        self.regency = self.regency.max(regency);
        self.stop_sent = self.stop_sent.max(self.regency);
        self.phase = Phase::Normal;
        self.statuses.clear();
        self.declared_lost.clear();
        actions.push(Action::RegencyInstalled {
            regency: self.regency,
            leader: self.config.leader_of(self.regency),
        });
        if most_decided > self.last_decided {
            self.mark_behind();
            self.send_fetch_now();
        }
        if self.leads(self.regency) || everyone_restarted {
            // We may have sent a SYNC we no longer remember: hand the regency on.
            self.start_stop(self.regency + 1, actions);
        }
    }

    /// The vouch for `asker`'s incarnation `nonce` (see [`Vouch`]), once this replica
    /// votes in the cluster it resumed (`recovering` false): until then it answers as
    /// recovering, and the asker takes the same path it took.
    pub(super) fn vouch_for(
        &self,
        asker: ReplicaId,
        nonce: u64,
        recovering: bool,
    ) -> Option<Vouch> {
        (!recovering && self.vouched.get(&asker) == Some(&nonce))
            .then_some(Vouch { floor: self.vote_floor, regency_min: self.vote_regency_min })
    }

    /// Crash mode: a peer that resumed after a crash of every replica counted this very
    /// incarnation as restarted and not voting. This replica's lost votes are then all
    /// from before that crash, which nobody remembers and no message outlives: it joins
    /// the resumed cluster as if it had resumed with it, under the same floor and first
    /// regency, and not under a floor from its peers' votes, which are all cast since.
    /// (Taking that floor, absolute in crash mode, stalled the cluster when the only
    /// other replica able to vote was down: `dura-sim --mode crash --total-crash`,
    /// seeds 5373 and 9948 among others.)
    fn finish_recovery_vouched(&mut self, vouch: Vouch, actions: &mut Vec<Action>) {
        let most_decided = self.statuses.values().map(|s| s.last_decided).max().unwrap_or(0);
        let regency = self.statuses.values().map(|s| s.regency).max().unwrap_or(0);
        self.vote_floor = self.last_decided.max(vouch.floor);
        self.floor_regency = None;
        self.vote_regency_min = vouch.regency_min;
        self.regency = self.regency.max(regency);
        self.awaiting_vote_regency = self.regency < self.vote_regency_min;
        self.stop_sent = self.stop_sent.max(self.regency);
        self.phase = Phase::Normal;
        self.statuses.clear();
        self.declared_lost.clear();
        actions.push(Action::RegencyInstalled {
            regency: self.regency,
            leader: self.config.leader_of(self.regency),
        });
        if most_decided > self.last_decided {
            self.mark_behind();
            self.send_fetch_now();
        }
        if self.leads(self.regency) || self.awaiting_vote_regency {
            // Others may wait for a SYNC of this regency that this incarnation never
            // sent: hand the regency on.
            self.start_stop(self.regency + 1, actions);
        }
    }

    /// Answers awaited from the others after a crash of every replica: every replica but
    /// this one and those declared lost ([`Config::lost_replicas`]).
    fn awaited_after_crash_of_all(&self) -> usize {
        let lost = &self.config.lost_replicas;
        self.config.n - 1 - lost.iter().filter(|&&id| id != self.id).count()
    }

    /// BFT: how many answers decided another batch than this replica at its last decided
    /// agreement. An answer that decided that agreement but holds no batch for it any
    /// more (a restart from a checkpoint taken exactly there, or a window that moved on)
    /// does not count: this is the limit of the check (ARCHITECTURE.md, "votes are not
    /// persisted"). With nothing decided, or no batch of its own to compare (the same
    /// restart from a checkpoint), nothing is compared.
    fn answers_contradicting(&self) -> usize {
        let own = self.window.back().filter(|entry| entry.agreement_id == self.last_decided);
        let Some(own) = own.map(|entry| entry.hash).filter(|_| self.last_decided > 0) else {
            return 0;
        };
        // Only answers about this very agreement: a replica that decided more while
        // recovering (catch-up) asked about an earlier one (seed 12731).
        let last = self.last_decided;
        self.statuses
            .values()
            .filter(|s| s.asked == last && s.asked_hash.is_some_and(|h| h != own))
            .count()
    }

    /// Ends this incarnation: what it decided above what f+1 replicas hold (as far as the
    /// answers tell) is given up, with the state built from it; the host sets its log
    /// and checkpoints aside and brings the replica back by state transfer. Safe: a
    /// client saw a request complete only once f+1 replicas logged it, so whatever only
    /// this one and fewer than f others hold was never acknowledged, and whatever more
    /// hold stays with them.
    pub(super) fn discard_suffix(&mut self, confirmed: u64, actions: &mut Vec<Action>) {
        assert!(confirmed < self.last_decided, "something above `confirmed` is discarded");
        assert_eq!(self.config.mode, Mode::Bft, "crash mode waits for every replica instead");
        self.discarded = true;
        self.statuses.clear();
        self.declared_lost.clear();
        actions.push(Action::DiscardUnconfirmed { confirmed, logged: self.last_decided });
    }

    /// Below this replica's last decided agreement, the highest one that f+1 of the
    /// recovery answers (this replica included) report decided.
    fn confirmed_by_answers(&self) -> u64 {
        assert!(self.last_decided > 0, "an empty history has nothing to discard");
        self.decided_by_f_plus_1().min(self.last_decided - 1)
    }

    /// The highest agreement that f+1 of the recovery answers (this replica included)
    /// report decided, fewer where peers said their disks were lost
    /// ([`Replica::log_quorum`]): the (f+1)-th highest of them, or so.
    fn decided_by_f_plus_1(&self) -> u64 {
        let mut decided: Vec<u64> = self.statuses.values().map(|s| s.last_decided).collect();
        decided.push(self.last_decided);
        decided.sort_unstable_by(|a, b| b.cmp(a));
        decided.get(self.log_quorum() - 1).copied().unwrap_or(0)
    }

    /// True when the highest agreement logged by this replica or any answer is also
    /// logged by a weak quorum (f+1, fewer where peers said their disks were lost) of
    /// them, so nothing logged is lost or unfetchable.
    fn answers_agree_on_what_was_logged(&self) -> bool {
        let mut decided: Vec<u64> = self.statuses.values().map(|s| s.last_decided).collect();
        decided.push(self.last_decided);
        decided.sort_unstable_by(|a, b| b.cmp(a));
        decided.get(self.log_quorum() - 1) == decided.first()
    }
}
