//! Steps 3 and 4 of CST as pure functions: the agreement id to transfer, and the
//! replicas ordered by the freshness of their checkpoints.
//!
//! **Step 3.** The ids reported by n-f replicas (the leecher's own included) are sorted
//! descending and the w-th is taken, w = [`Mode::weak_quorum`] (f+1 in BFT, 1 in crash
//! mode): at least w replicas hold it, so at least one correct replica does.
//!
//! **Step 4.** The paper computes the order from id, P and n, because its replicas
//! checkpoint at agreement numbers. Ours checkpoint at *request* numbers
//! (k mod P = i * floor(P/n), counted over ordered requests), and the leecher does not
//! know how many requests the agreements up to id held. So the order is computed from
//! what each replica reports in its [`Status`]: its *base* is its newest checkpoint at or
//! below the target whose log still reaches back to it (the log covers (base, target]),
//! or the genesis (agreement 0, the empty state) when its log starts at agreement 1.
//! Replicas are ordered by base, newest first (ties by replica id). With correct
//! replicas this is the paper's order ([`paper_order`] computes that one from request
//! counts; the tests check the two agree). A Byzantine replica can lie about its base,
//! which changes only who is asked for what: every value it gives is still checked
//! against f others before anything is installed.

use std::collections::BTreeMap;

use dura_core::{AGREEMENT_ID_FIRST, AGREEMENT_ID_NONE, AgreementId, Hash, Mode, ReplicaId};

use crate::message::{Piece, Status};

/// Step 3: the largest agreement id at least [`Mode::weak_quorum`] of `reported` hold.
/// `reported` holds one id per replica (the leecher's own included) and at least a weak
/// quorum of them.
pub fn agreed_target(mode: Mode, f: usize, reported: &[AgreementId]) -> AgreementId {
    let w = mode.weak_quorum(f);
    assert!(reported.len() >= w, "{} ids cannot show {w} replicas holding one", reported.len());
    let mut ids = reported.to_vec();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids[w - 1]
}

/// Where a replica can start a transfer to `target` from: a checkpoint it holds (with the
/// content hash it claims) or the genesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// The checkpoint's agreement; 0 for the genesis.
    pub agreement_id: AgreementId,
    /// Its claimed content hash; `None` for the genesis.
    pub content_hash: Option<Hash>,
}

/// A replica's [`Base`] for `target`: its newest checkpoint at or below `target` whose log
/// covers (checkpoint, target], else the genesis if its log starts at agreement 1; `None`
/// if it cannot serve `target` (its log ends before it, or neither applies).
pub fn base_for(status: &Status, target: AgreementId) -> Option<Base> {
    if status.last_agreement < target {
        return None;
    }
    for claim in status.checkpoints.iter().rev() {
        if claim.agreement_id <= target && status.log_covers(Piece::new(claim.agreement_id, target))
        {
            return Some(Base {
                agreement_id: claim.agreement_id,
                content_hash: Some(claim.content_hash),
            });
        }
    }
    if status.log_first <= AGREEMENT_ID_FIRST {
        return Some(Base { agreement_id: AGREEMENT_ID_NONE, content_hash: None });
    }
    None
}

/// One replica's place in the freshness order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The replica.
    pub replica: ReplicaId,
    /// Its base for the target.
    pub base: Base,
}

/// Step 4: the replicas of `statuses` that can serve `target`, ordered by base, newest
/// first, ties by replica id.
pub fn freshness_order(
    statuses: &BTreeMap<ReplicaId, Status>,
    target: AgreementId,
) -> Vec<Position> {
    let mut order: Vec<Position> = statuses
        .iter()
        .filter_map(|(&replica, status)| {
            base_for(status, target).map(|base| Position { replica, base })
        })
        .collect();
    order.sort_by(|a, b| {
        b.base.agreement_id.cmp(&a.base.agreement_id).then(a.replica.cmp(&b.replica))
    });
    order
}

/// The pieces of a freshness order for `target`: piece j (0-based, the paper's
/// L_{j+1}) runs from position j's base to position j-1's (the target for j = 0).
pub fn pieces(order: &[Position], target: AgreementId) -> Vec<Piece> {
    let mut up_to = target;
    order
        .iter()
        .map(|position| {
            let piece = Piece::new(position.base.agreement_id, up_to);
            up_to = position.base.agreement_id;
            piece
        })
        .collect()
}

/// The newest checkpoint at or below `target` that at least `claimers_min` replicas of
/// `statuses` claim with the same content hash (the PBFT-like baseline, with checkpoints
/// all replicas take at the same points), with its claimers; ties at one agreement
/// (possible only if more than f lie) go to the hash with more claimers, then the
/// smaller hash.
pub fn agreed_checkpoint(
    statuses: &BTreeMap<ReplicaId, Status>,
    target: AgreementId,
    claimers_min: usize,
) -> Option<(AgreementId, Hash, Vec<ReplicaId>)> {
    let mut claims: BTreeMap<(AgreementId, Hash), Vec<ReplicaId>> = BTreeMap::new();
    for (&replica, status) in statuses {
        for claim in &status.checkpoints {
            if claim.agreement_id <= target {
                claims.entry((claim.agreement_id, claim.content_hash)).or_default().push(replica);
            }
        }
    }
    claims
        .into_iter()
        .filter(|(_, claimers)| claimers.len() >= claimers_min.max(1))
        .max_by(|((a, ha), ca), ((b, hb), cb)| {
            a.cmp(b).then(ca.len().cmp(&cb.len())).then(hb.cmp(ha))
        })
        .map(|((agreement_id, hash), claimers)| (agreement_id, hash, claimers))
}

/// The paper's step 4 for sequential checkpoints, in requests: replica i of n
/// checkpoints after request k with k mod P = i * floor(P/n); given the number of
/// requests ordered up to the target, the replicas (except `leecher`) ordered by how
/// recently each checkpointed, newest first. Used by the tests to check that
/// [`freshness_order`] over correct replicas' reports is the paper's order.
pub fn paper_order(requests: u64, period: u64, n: usize, leecher: ReplicaId) -> Vec<ReplicaId> {
    let segment = period / n as u64;
    assert!(segment >= 1, "a period of at least n requests");
    let mut replicas: Vec<(u64, ReplicaId)> = (0..n as ReplicaId)
        .filter(|&replica| replica != leecher)
        .map(|replica| {
            let offset = replica as u64 * segment;
            // Points are requests k >= 1, so residue 0 first comes at k = P.
            let first = if offset == 0 { period } else { offset };
            // Requests since the replica's last point at or below `requests` (none yet:
            // the genesis, furthest back).
            let age = if requests >= first { (requests - offset) % period } else { u64::MAX };
            (age, replica)
        })
        .collect();
    replicas.sort();
    replicas.into_iter().map(|(_, replica)| replica).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::CheckpointClaim;

    fn status(last: u64, log_first: u64, checkpoints: &[u64]) -> Status {
        Status {
            last_agreement: last,
            log_first,
            checkpoints: checkpoints
                .iter()
                .map(|&agreement_id| CheckpointClaim {
                    agreement_id,
                    content_hash: [agreement_id as u8; 32],
                })
                .collect(),
        }
    }

    #[test]
    fn the_target_is_held_by_a_weak_quorum() {
        // n = 4, f = 1: own 3, answers 10 and 12 -> the 2nd largest.
        assert_eq!(agreed_target(Mode::Bft, 1, &[3, 10, 12]), 10);
        // A liar's huge id is never chosen alone.
        assert_eq!(agreed_target(Mode::Bft, 1, &[3, 10, u64::MAX]), 10);
        assert_eq!(agreed_target(Mode::Bft, 2, &[0, 9, 9, 8, 100]), 9);
        // Crash mode: nobody lies, the largest.
        assert_eq!(agreed_target(Mode::Crash, 1, &[3, 10]), 10);
    }

    #[test]
    fn a_base_is_the_newest_checkpoint_the_log_reaches() {
        // Holds checkpoints 40 and 80, log 41..=90.
        let s = status(90, 41, &[40, 80]);
        assert_eq!(base_for(&s, 85).map(|b| b.agreement_id), Some(80));
        assert_eq!(base_for(&s, 80).map(|b| b.agreement_id), Some(80));
        assert_eq!(base_for(&s, 79).map(|b| b.agreement_id), Some(40));
        assert_eq!(base_for(&s, 91), None, "its log ends before the target");
        // Its log does not reach back to checkpoint 40 any more.
        assert_eq!(base_for(&status(90, 50, &[40, 80]), 79), None);
        // A young replica serves from the genesis.
        assert_eq!(
            base_for(&status(9, 1, &[]), 5),
            Some(Base { agreement_id: 0, content_hash: None })
        );
    }

    #[test]
    fn order_is_by_base_then_id_and_pieces_chain_the_bases() {
        let statuses: BTreeMap<ReplicaId, Status> = [
            (1, status(100, 41, &[40, 75])),
            (2, status(100, 51, &[50, 100])),
            (3, status(99, 1, &[])),
            (5, status(100, 26, &[25, 75])),
            (6, status(98, 1, &[90])), // behind the target
        ]
        .into_iter()
        .collect();
        let order = freshness_order(&statuses, 99);
        let ids: Vec<_> = order.iter().map(|p| (p.replica, p.base.agreement_id)).collect();
        assert_eq!(ids, vec![(1, 75), (5, 75), (2, 50), (3, 0)]);
        assert_eq!(
            pieces(&order, 99),
            vec![Piece::new(75, 99), Piece::new(75, 75), Piece::new(50, 75), Piece::new(0, 50)]
        );
    }

    #[test]
    fn an_agreed_checkpoint_needs_its_claimers() {
        let mut statuses: BTreeMap<ReplicaId, Status> =
            [(1, status(100, 41, &[40, 80])), (2, status(100, 41, &[40, 80]))]
                .into_iter()
                .collect();
        statuses.insert(3, status(100, 41, &[40, 90]));
        assert_eq!(agreed_checkpoint(&statuses, 95, 2).map(|c| (c.0, c.2)), Some((80, vec![1, 2])));
        assert_eq!(agreed_checkpoint(&statuses, 95, 1).map(|c| c.0), Some(90));
        assert_eq!(agreed_checkpoint(&statuses, 95, 4), None);
        // A different hash at the same point is a different claim.
        statuses.get_mut(&2).unwrap().checkpoints[1].content_hash = [0; 32];
        assert_eq!(agreed_checkpoint(&statuses, 95, 2).map(|c| c.0), Some(40));
    }

    #[test]
    fn the_papers_order_from_requests() {
        // P = 1000, n = 4: replica i at i*250. 600 requests: replica 2 (500) checkpointed
        // 100 ago, 1 (250) 350 ago, 0 (0 = 1000's residue: not yet) never.
        assert_eq!(paper_order(600, 1000, 4, 3), vec![2, 1, 0]);
        assert_eq!(paper_order(1100, 1000, 4, 3), vec![0, 2, 1]);
        assert_eq!(paper_order(1100, 1000, 4, 0), vec![3, 2, 1]);
    }
}
