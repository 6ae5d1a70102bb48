//! The tuple space as the simulated service: Durable DepSpace ([`dura_tuplespace`])
//! replicated by the simulator's cluster, a workload over a small domain (so matches,
//! blocking, releases and cancels happen often), and the check of the client history
//! against the tuple space itself as the sequential model.
//!
//! **Workload.** Each client draws `out` (some with leases that end within the run),
//! `rdp`, `inp`, `rd` and `in` (which block when nothing matches), `cas`, `replace`,
//! `count`, `renew`, `rd_all`/`in_all`, and now and then a request the space refuses.
//! Tuples are `(name, value, uid)`: two names, three values, and a uid unique to each
//! write, so that a tuple taken twice shows. A client waits for a blocked `rd`/`in` for
//! a drawn patience, then gives up: it goes on with a new client core (as a process that
//! stopped waiting) and sends `cancel` of that request; it still takes the blocked
//! request's answer if f+1 matching replies come (cancelled, or the tuple that released
//! it before the cancel ran).
//!
//! **Check** ([`check_history`]). The agreed batches of the run (as the surviving correct
//! replicas decided them, after every crash) are replayed through a fresh
//! [`TupleSpace`], each request at its batch's agreed time, each client's requests once
//! and in sequence order. That replay is the witness linearization: an operation takes
//! effect where its request executes; a blocked `rd`/`in` where the write that released
//! it (or the cancel) executes. The history is linearizable with that witness when
//! - every result a client accepted is the one the replay gives that request (a
//!   completed request missing from the replay is an acknowledged request lost), and
//!   f+1 disks held the agreement that answered it when the client accepted it (the
//!   agreement of the write that released a blocked request, not the request's own);
//! - the witness respects real time: an operation that completed before another was
//!   invoked takes effect before it (operations the clients never saw complete are
//!   pending: they may take effect, unseen, or not at all);
//! - the replay answers each request at most once (no blocked request answered twice),
//!   and no tuple uid is taken twice in what clients saw;
//! - the correct replicas' state digest after each agreement equals the replay's (the
//!   blocked requests, leases and time included), whatever checkpoints, restarts and
//!   state transfers brought them there.

use std::collections::{BTreeMap, BTreeSet};

use dura_tuplespace::{
    ExecCtx, Field, FieldType, Op, Reply, Template, TemplateField, Tuple, TupleSpace, decode_reply,
    encode_op,
};

use super::rng::Rng;
use super::{Agreed, HistoryEntry, NextOp, SimConfig, Workload};
use crate::service::Service;

/// Names of the tuples (first field).
const NAMES: [&str; 2] = ["a", "b"];
/// Values of the second field: `0..VALUES`.
const VALUES: u64 = 3;

/// The tuple-space workload (see the module documentation).
#[derive(Debug)]
pub struct TupleSpaceWorkload {
    /// The next tuple uid.
    next_uid: i64,
}

fn name_field(rng: &mut Rng) -> Field {
    Field::Str(NAMES[rng.range(0, NAMES.len() as u64 - 1) as usize].to_string())
}

fn value_field(rng: &mut Rng) -> Field {
    Field::Int(rng.range(0, VALUES - 1) as i64)
}

fn lease(rng: &mut Rng) -> Option<u64> {
    // Some leases end within the run (it lasts a few simulated seconds).
    rng.chance(300).then(|| rng.range(50, 1_500))
}

impl TupleSpaceWorkload {
    fn tuple(&mut self, rng: &mut Rng) -> Tuple {
        let uid = self.next_uid;
        self.next_uid += 1;
        Tuple::new(vec![name_field(rng), value_field(rng), Field::Int(uid)])
            .expect("a small tuple is within bounds")
    }

    /// A template over the domain: mostly a name, then a value, a typed or a plain
    /// wildcard; the uid is never named.
    fn template(rng: &mut Rng) -> Template {
        let first = if rng.chance(850) {
            TemplateField::Exact(name_field(rng))
        } else {
            TemplateField::Any
        };
        let second = match rng.range(0, 3) {
            0 | 1 => TemplateField::Exact(value_field(rng)),
            2 => TemplateField::AnyOf(FieldType::Int),
            _ => TemplateField::Any,
        };
        let third =
            if rng.chance(500) { TemplateField::Any } else { TemplateField::AnyOf(FieldType::Int) };
        Template::new(vec![first, second, third]).expect("a small template is within bounds")
    }

    /// The operation drawn; true when it may block.
    fn draw(&mut self, rng: &mut Rng) -> (Op, bool) {
        let roll = rng.range(0, 999);
        let op = match roll {
            0..240 => Op::Out { tuple: self.tuple(rng), lease_ms: lease(rng) },
            240..310 => Op::Rdp { template: Self::template(rng) },
            310..400 => Op::Inp { template: Self::template(rng) },
            400..490 => return (Op::Rd { template: Self::template(rng) }, true),
            490..650 => return (Op::In { template: Self::template(rng) }, true),
            650..730 => {
                // "Create if absent": the template is the new tuple's name and value.
                let tuple = self.tuple(rng);
                let template = Template::new(vec![
                    TemplateField::Exact(tuple.fields()[0].clone()),
                    TemplateField::Exact(tuple.fields()[1].clone()),
                    TemplateField::Any,
                ])
                .expect("a small template is within bounds");
                Op::Cas { template, tuple, lease_ms: lease(rng) }
            }
            730..810 => Op::Replace {
                template: Self::template(rng),
                tuple: self.tuple(rng),
                lease_ms: lease(rng),
            },
            810..880 => Op::Count { template: Self::template(rng) },
            880..920 => Op::Renew { template: Self::template(rng), lease_ms: rng.range(50, 1_500) },
            920..950 => Op::RdAll { template: Self::template(rng), limit: rng.range(1, 3) as u32 },
            950..985 => Op::InAll { template: Self::template(rng), limit: rng.range(1, 3) as u32 },
            // Refused: a lease of 0.
            _ => Op::Out { tuple: self.tuple(rng), lease_ms: Some(0) },
        };
        (op, false)
    }
}

impl Workload for TupleSpaceWorkload {
    /// `dura_tuplespace`'s own [`Service`] implementation, as the runtime replicates it.
    type Service = TupleSpace;

    fn service() -> TupleSpace {
        TupleSpace::new()
    }

    fn new(_config: &SimConfig) -> Self {
        Self { next_uid: 1 }
    }

    fn next_op(&mut self, _client: usize, rng: &mut Rng) -> NextOp {
        let (op, may_block) = self.draw(rng);
        let patience_us = may_block.then(|| rng.range(100_000, 1_500_000));
        NextOp { operation: encode_op(&op), patience_us }
    }

    fn give_up(&mut self, _client: usize, sequence: u64) -> Vec<u8> {
        encode_op(&Op::Cancel { sequence })
    }

    fn check(
        &self,
        history: &[HistoryEntry],
        agreed: &Agreed<'_>,
    ) -> Result<Vec<(&'static str, u64)>, String> {
        let counts = check_history(history, agreed, <TupleSpace as Service>::state_digest)?;
        Ok(vec![
            ("requests executed", counts.executed),
            ("blocked", counts.blocked),
            ("released by a write", counts.released),
            ("cancelled", counts.cancelled),
            ("operations never seen complete", counts.pending),
        ])
    }
}

/// Where an operation takes effect in the agreed order: (agreement, index in its batch)
/// of the request whose execution answered it, then 0 for that request itself and 1, 2,
/// ... for the blocked requests it released, in release order (each just after it).
type Position = (u64, usize, usize);

/// What the replay saw, for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayCounts {
    /// Requests executed.
    pub executed: u64,
    /// Requests that blocked.
    pub blocked: u64,
    /// Blocked requests a write released.
    pub released: u64,
    /// Blocked requests cancelled.
    pub cancelled: u64,
    /// Client operations the clients never saw complete.
    pub pending: u64,
}

/// Checks `history` against the replay of the agreed batches through a fresh
/// [`TupleSpace`] (see the module documentation); `digest` is the replicated service's
/// digest of a space.
pub fn check_history(
    history: &[HistoryEntry],
    agreed: &Agreed<'_>,
    digest: impl Fn(&TupleSpace) -> [u8; 32],
) -> Result<ReplayCounts, String> {
    let mut counts = ReplayCounts::default();
    let mut space = TupleSpace::new();
    // client id -> (the last sequence executed, the agreed time it last ran at).
    let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    // The reply cache bound's rule, written again from its statement (`Executor`): the
    // newest last time of a forgotten client.
    let mut forgotten_through: Option<u64> = None;
    // (client id, sequence) -> where and how the replay answered it.
    let mut answered: BTreeMap<(u64, u64), (Position, Vec<u8>)> = BTreeMap::new();
    for (expected_id, (&agreement_id, batch)) in (1..).zip(agreed.batches) {
        if agreement_id != expected_id {
            return Err(format!(
                "tuple space: the agreed order has no batch for agreement {expected_id}"
            ));
        }
        for (index, request) in batch.requests.iter().enumerate() {
            let held = last.get(&request.client_id).copied();
            if held.is_some_and(|(seq, _)| seq >= request.sequence) {
                continue; // a retransmission ordered again, or one the client moved past
            }
            let session_ms = crate::protocol::sequence_time_ms(request.sequence);
            let horizon = forgotten_through.map(|t| t + crate::protocol::SEQUENCE_AHEAD_MAX_MS);
            if (held.is_none() && horizon.is_some_and(|h| session_ms <= h))
                || session_ms > batch.timestamp_ms + crate::protocol::SEQUENCE_AHEAD_MAX_MS
            {
                continue; // refused as expired
            }
            let active_ms = held.map_or(0, |(_, t)| t).max(batch.timestamp_ms);
            last.insert(request.client_id, (request.sequence, active_ms));
            counts.executed += 1;
            let ctx = ExecCtx {
                client_id: request.client_id,
                sequence: request.sequence,
                now_ms: batch.timestamp_ms,
            };
            let answers = space.execute(ctx, &request.operation);
            if answers
                .first()
                .is_none_or(|a| (a.client_id, a.sequence) != (ctx.client_id, ctx.sequence))
            {
                counts.blocked += 1;
            }
            for (rank, answer) in answers.into_iter().enumerate() {
                let own = (answer.client_id, answer.sequence) == (ctx.client_id, ctx.sequence);
                if !own {
                    match decode_reply(&answer.reply) {
                        Ok(Reply::Cancelled) => counts.cancelled += 1,
                        _ => counts.released += 1,
                    }
                }
                if let Some((at, first)) = answered.insert(
                    (answer.client_id, answer.sequence),
                    ((agreement_id, index, rank + usize::from(!own)), answer.reply.clone()),
                ) {
                    return Err(format!(
                        "exactly once: the replay answers ({}, {}) twice: {} at {at:?}, then {} at {:?}",
                        answer.client_id,
                        answer.sequence,
                        describe(&first),
                        describe(&answer.reply),
                        (agreement_id, index, rank)
                    ));
                }
            }
        }
        while last.len() > agreed.clients_max {
            let (&client, &(_, time)) = last
                .iter()
                .min_by_key(|(client, (_, time))| (*time, **client))
                .expect("over a bound of at least 1");
            last.remove(&client);
            forgotten_through = Some(forgotten_through.unwrap_or(0).max(time));
        }
        if let Some(known) = agreed.digests.get(&agreement_id)
            && *known != digest(&space)
        {
            return Err(format!(
                "tuple space: the correct replicas' state after agreement {agreement_id} is not \
                 the replay's of the agreed order ({} tuples, {} blocked)",
                space.len(),
                space.blocked().count()
            ));
        }
    }
    // Results the clients accepted are the replay's.
    let mut effects: Vec<(Position, &HistoryEntry)> = Vec::new();
    for entry in history {
        let replayed = answered.get(&(entry.client_id, entry.sequence));
        if let Some(result) = &entry.result {
            match replayed {
                Some((_, reply)) if reply == result => {}
                Some((at, reply)) => {
                    return Err(format!(
                        "linearizability: client {} request {} {} completed with {}, but the agreed order answers {} at {at:?}",
                        entry.client,
                        entry.sequence,
                        describe_op(&entry.operation),
                        describe(result),
                        describe(reply)
                    ));
                }
                None => {
                    return Err(format!(
                        "linearizability: client {} request {} {} completed with {}, but the agreed order never answers it (an acknowledged request lost)",
                        entry.client,
                        entry.sequence,
                        describe_op(&entry.operation),
                        describe(result)
                    ));
                }
            }
        } else {
            counts.pending += 1;
        }
        if let Some((at, _)) = replayed {
            effects.push((*at, entry));
            // The promise of a completed request, by the agreement that answered it in the
            // replay (not by what the engine said it was): f+1 disks held it.
            if let Some(confirmed) = entry.confirmed_at_completion
                && at.0 > confirmed
            {
                return Err(format!(
                    "durability: client {} saw request {} {} complete while f+1 disks held \
                     agreements up to {confirmed} only; agreement {} answered it",
                    entry.client,
                    entry.sequence,
                    describe_op(&entry.operation),
                    at.0
                ));
            }
        }
    }
    // Real time: what completed before another was invoked takes effect before it.
    effects.sort_by_key(|(at, _)| *at);
    for (later, (at_b, b)) in effects.iter().enumerate() {
        for (at_a, a) in &effects[later + 1..] {
            if at_a > at_b && a.completed_us.is_some_and(|done| done < b.invoked_us) {
                return Err(format!(
                    "linearizability: client {} request {} {} completed at {} us, before client {} request {} {} was invoked at {} us, yet takes effect after it ({at_a:?} > {at_b:?})",
                    a.client,
                    a.sequence,
                    describe_op(&a.operation),
                    a.completed_us.unwrap_or(0),
                    b.client,
                    b.sequence,
                    describe_op(&b.operation),
                    b.invoked_us
                ));
            }
        }
    }
    // No tuple taken twice in what clients saw.
    let mut taken: BTreeSet<i64> = BTreeSet::new();
    for entry in history {
        let (Some(result), Ok(op)) = (&entry.result, dura_tuplespace::decode_op(&entry.operation))
        else {
            continue;
        };
        let takes =
            matches!(op, Op::In { .. } | Op::Inp { .. } | Op::Replace { .. } | Op::InAll { .. });
        if !takes {
            continue;
        }
        let tuples = match decode_reply(result) {
            Ok(Reply::Tuple(tuple)) => vec![tuple],
            Ok(Reply::Tuples(tuples)) => tuples,
            _ => Vec::new(),
        };
        for tuple in tuples {
            if let Some(Field::Int(uid)) = tuple.fields().get(2)
                && !taken.insert(*uid)
            {
                return Err(format!(
                    "exactly once: tuple uid {uid} taken twice (the second time by client {} request {})",
                    entry.client, entry.sequence
                ));
            }
        }
    }
    Ok(counts)
}

/// A reply, readable.
fn describe(reply: &[u8]) -> String {
    match decode_reply(reply) {
        Ok(reply) => format!("{reply:?}"),
        Err(_) => format!("undecodable {reply:02x?}"),
    }
}

/// An operation, readable.
fn describe_op(operation: &[u8]) -> String {
    match dura_tuplespace::decode_op(operation) {
        Ok(op) => format!("{op:?}"),
        Err(_) => format!("undecodable {operation:02x?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dura_tuplespace::{encode_reply, parse_template, parse_tuple};

    use super::*;
    use crate::protocol::{Batch, ClientRequest, KeyRing};

    const A: u64 = 1000;
    const B: u64 = 1001;

    fn out(text: &str) -> Vec<u8> {
        encode_op(&Op::Out { tuple: parse_tuple(text).expect("tuple"), lease_ms: None })
    }

    fn take(text: &str) -> Vec<u8> {
        encode_op(&Op::In { template: parse_template(text).expect("template") })
    }

    fn tuple_reply(text: &str) -> Vec<u8> {
        encode_reply(&Reply::Tuple(parse_tuple(text).expect("tuple")))
    }

    /// Batches of (client id, sequence, operation), one per agreement from 1.
    fn batches(agreed: &[&[(u64, u64, &[u8])]]) -> BTreeMap<u64, Arc<Batch>> {
        let ring = KeyRing::new([1; 32], 4);
        agreed
            .iter()
            .enumerate()
            .map(|(at, requests)| {
                let requests = requests
                    .iter()
                    .map(|(client, sequence, op)| {
                        ClientRequest::signed(&ring.client_keys(*client), *sequence, op.to_vec())
                    })
                    .collect();
                (at as u64 + 1, Arc::new(Batch { timestamp_ms: 1_000 + at as u64, requests }))
            })
            .collect()
    }

    fn entry(
        client_id: u64,
        sequence: u64,
        operation: &[u8],
        span: (u64, Option<u64>),
        result: Option<Vec<u8>>,
    ) -> HistoryEntry {
        HistoryEntry {
            client: (client_id - A) as usize,
            client_id,
            sequence,
            invoked_us: span.0,
            completed_us: span.1,
            operation: operation.to_vec(),
            result,
            confirmed_at_completion: None,
        }
    }

    fn check(
        history: &[HistoryEntry],
        batches: &BTreeMap<u64, Arc<Batch>>,
        digests: &BTreeMap<u64, [u8; 32]>,
    ) -> Result<ReplayCounts, String> {
        let clients_max = crate::service::CLIENTS_MAX_DEFAULT;
        check_history(history, &Agreed { batches, digests, clients_max }, TupleSpace::state_digest)
    }

    #[test]
    fn a_blocked_in_takes_effect_at_the_write_that_releases_it() {
        let (take, write) = (take("('a', *, *)"), out("('a', 0, 1)"));
        let agreed = batches(&[&[(A, 1, &take)], &[(B, 1, &write)]]);
        let history = [
            entry(A, 1, &take, (0, Some(50)), Some(tuple_reply("('a', 0, 1)"))),
            entry(B, 1, &write, (10, Some(40)), Some(encode_reply(&Reply::Ok))),
        ];
        let counts = check(&history, &agreed, &BTreeMap::new()).expect("linearizable");
        assert_eq!((counts.blocked, counts.released, counts.pending), (1, 1, 0));
        // The blocked `in` seen as not found: not the replay's answer.
        let mut wrong = history.clone();
        wrong[0].result = Some(encode_reply(&Reply::NotFound));
        let error = check(&wrong, &agreed, &BTreeMap::new()).unwrap_err();
        assert!(error.contains("the agreed order answers"), "{error}");
        // The write acknowledged but missing from the agreed order: lost.
        let lost = batches(&[&[(A, 1, &take)]]);
        let error = check(&history, &lost, &BTreeMap::new()).unwrap_err();
        assert!(error.contains("never answers"), "{error}");
        // Neither seen complete by its client: both pending, whatever was agreed.
        let mut pending = history.clone();
        for entry in &mut pending {
            (entry.completed_us, entry.result) = (None, None);
        }
        assert_eq!(check(&pending, &lost, &BTreeMap::new()).map(|c| c.pending), Ok(2));
        // The released `in` takes effect just after the write: seen complete before the
        // write was invoked, it could not be.
        let mut early = history.clone();
        early[0].completed_us = Some(8);
        let error = check(&early, &agreed, &BTreeMap::new()).unwrap_err();
        assert!(error.contains("before client 1 request 1"), "{error}");
        // Accepted while f+1 disks held agreement 2 (the releasing write's): kept; while
        // they held only agreement 1 (the blocked request's own): a promise broken.
        let mut durable = history.clone();
        durable[0].confirmed_at_completion = Some(2);
        assert!(check(&durable, &agreed, &BTreeMap::new()).is_ok());
        durable[0].confirmed_at_completion = Some(1);
        let error = check(&durable, &agreed, &BTreeMap::new()).unwrap_err();
        assert!(error.contains("agreement 2 answered it"), "{error}");
    }

    #[test]
    fn clusters_block_release_and_cancel_under_faults_and_replay_exactly() {
        use crate::protocol::Mode;
        use crate::sim::{SimService, run};
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for seed in 0..10 {
            for (mode, n) in [(Mode::Bft, 4), (Mode::Crash, 3)] {
                // Crashes of all replicas in crash mode (BFT's have known failures).
                let mut config = match mode {
                    Mode::Bft => SimConfig::random(mode, n, seed),
                    Mode::Crash => SimConfig::random_with_total_crash(mode, n, seed),
                };
                config.service = SimService::TupleSpace;
                let a = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
                // Every operation completed or was given up on (cancels come on top).
                let pending = a.service_counts[4].1 as usize;
                assert!(a.ops_completed + pending >= config.clients * config.ops_per_client);
                let b = run(&config).unwrap_or_else(|failure| panic!("{failure}"));
                assert_eq!(
                    (a.end_ms, a.replica_messages, a.disk_writes, &a.service_counts),
                    (b.end_ms, b.replica_messages, b.disk_writes, &b.service_counts),
                    "seed {seed} replays exactly"
                );
                for (name, count) in a.service_counts {
                    *totals.entry(name).or_default() += count;
                }
            }
        }
        for name in ["blocked", "released by a write", "cancelled"] {
            assert!(totals[name] >= 10, "{name}: {totals:?}");
        }
    }

    #[test]
    fn the_agreed_order_must_respect_real_time() {
        let (first, second) = (out("('a', 0, 1)"), out("('a', 1, 2)"));
        let ok = encode_reply(&Reply::Ok);
        let history = [
            entry(A, 1, &first, (0, Some(5)), Some(ok.clone())),
            entry(B, 1, &second, (10, Some(20)), Some(ok)),
        ];
        let in_order = batches(&[&[(A, 1, &first)], &[(B, 1, &second)]]);
        assert!(check(&history, &in_order, &BTreeMap::new()).is_ok());
        // Same results, but the write that completed first agreed second.
        let reversed = batches(&[&[(B, 1, &second)], &[(A, 1, &first)]]);
        let error = check(&history, &reversed, &BTreeMap::new()).unwrap_err();
        assert!(error.contains("yet takes effect after it"), "{error}");
    }

    #[test]
    fn a_cancelled_request_is_answered_once_and_the_replicas_state_must_be_the_replays() {
        let take = take("('b', *, *)");
        let cancel = encode_op(&Op::Cancel { sequence: 1 });
        let agreed = batches(&[&[(A, 1, &take)], &[(A, 2, &cancel), (A, 2, &cancel)]]);
        let mut history = [
            entry(A, 1, &take, (0, Some(30)), Some(encode_reply(&Reply::Cancelled))),
            entry(A, 2, &cancel, (20, Some(30)), Some(encode_reply(&Reply::Ok))),
        ];
        // The duplicate of the cancel in the same batch runs once.
        let counts = check(&history, &agreed, &BTreeMap::new()).expect("linearizable");
        assert_eq!((counts.executed, counts.blocked, counts.cancelled), (2, 1, 1));
        // The replicas' digest after agreement 1 (the `in` blocked) is the replay's; any
        // other state (the blocked request dropped, say) is not.
        let mut replay = TupleSpace::new();
        replay.execute(ExecCtx { client_id: A, sequence: 1, now_ms: 1_000 }, &take);
        let mut digests = BTreeMap::from([(1, replay.state_digest())]);
        assert!(check(&history, &agreed, &digests).is_ok());
        digests.insert(1, TupleSpace::new().state_digest());
        let error = check(&history, &agreed, &digests).unwrap_err();
        assert!(error.contains("state after agreement 1"), "{error}");
        // A cancel that found nothing blocked would have answered not found.
        history[1].result = Some(encode_reply(&Reply::NotFound));
        assert!(check(&history, &agreed, &BTreeMap::new()).is_err());
        // An agreed order with a hole is no witness.
        let holed: BTreeMap<u64, Arc<Batch>> = [(2, agreed[&2].clone())].into();
        let error = check(&[], &holed, &BTreeMap::new()).unwrap_err();
        assert!(error.contains("no batch for agreement 1"), "{error}");
    }
}
