//! The log record of a decided batch, and recovery from a log: reassemble the records
//! into decided batches, replay them through the executor, and rebuild what the
//! ordering protocol needs after a restart. The runtime and the simulator both call
//! [`restore`] after opening their log.
//!
//! Record payload ([`encode_batch`]): `u64` agreement id, `u32` part index, `u32` part
//! count (little-endian), then [`Batch`]'s encoding. A whole batch is part 0 of 1;
//! `sync` mode writes a batch of n requests as parts 0..n, one request each, so replay
//! can tell a batch cut short by a crash and drop it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{DecidedBatch, execute_batch};
use crate::protocol::{Batch, Recovered};
use crate::service::{Executor, Service};

/// A log that cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A record's payload does not decode.
    #[error("malformed batch record: {0}")]
    Malformed(String),
    /// Records are out of order or have a gap.
    #[error("log records out of order: {0}")]
    Order(String),
    /// The log does not start where the state does: agreements between the checkpoint
    /// (0: none) and the log's first record are missing (state transfer brings them).
    #[error("log resumes at agreement {first} but the state is at agreement {state} (checkpoint)")]
    StartsLate {
        /// The first agreement in the log after the state's.
        first: u64,
        /// The agreement the state is at (the checkpoint's; 0 without one).
        state: u64,
    },
}

/// Appends the log payload of `batch` (decided by `agreement_id`) to `out`.
pub fn encode_batch(agreement_id: u64, part: (u32, u32), batch: &Batch, out: &mut Vec<u8>) {
    assert!(part.0 < part.1, "part index below part count");
    out.extend_from_slice(&agreement_id.to_le_bytes());
    out.extend_from_slice(&part.0.to_le_bytes());
    out.extend_from_slice(&part.1.to_le_bytes());
    batch.encode_into(out);
}

/// One log record's content, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPart {
    /// The agreement.
    pub agreement_id: u64,
    /// Which part of the agreement's batch.
    pub part_index: u32,
    /// How many parts the batch was written in.
    pub part_count: u32,
    /// The requests of this part.
    pub batch: Batch,
}

/// Decodes a log payload written by [`encode_batch`]; errors on any malformation.
pub fn decode_batch(input: &[u8]) -> Result<BatchPart, RecordError> {
    if input.len() < 16 {
        return Err(RecordError::Malformed(format!(
            "batch record of {} bytes is too short",
            input.len()
        )));
    }
    let agreement_id = u64::from_le_bytes(input[0..8].try_into().expect("8 bytes"));
    let part_index = u32::from_le_bytes(input[8..12].try_into().expect("4 bytes"));
    let part_count = u32::from_le_bytes(input[12..16].try_into().expect("4 bytes"));
    if part_index >= part_count {
        return Err(RecordError::Malformed(format!(
            "agreement {agreement_id}: part {part_index} of {part_count}"
        )));
    }
    let batch = Batch::from_bytes(&input[16..])
        .map_err(|error| RecordError::Malformed(format!("agreement {agreement_id}: {error}")))?;
    Ok(BatchPart { agreement_id, part_index, part_count, batch })
}

/// Reassembles log records (payloads in log order) into whole decided batches,
/// consecutive from the first. A batch whose parts stop at the end of the log (a crash
/// during `sync` mode's writes) is dropped: none of its replies can have left.
/// Anything else out of order is an error.
pub fn reassemble(
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Vec<DecidedBatch>, RecordError> {
    let mut batches: Vec<DecidedBatch> = Vec::new();
    let mut open: Option<BatchPart> = None;
    for payload in payloads {
        let part = decode_batch(&payload)?;
        // The agreement the next batch must be, once there is a batch: none follows
        // `u64::MAX` (a log that claims one is refused, not an overflow).
        let expected_id = batches.last().map(|b| b.agreement_id.checked_add(1));
        match open.take() {
            Some(mut partial) => {
                if part.agreement_id != partial.agreement_id
                    || part.part_index != partial.part_index + 1
                    || part.part_count != partial.part_count
                    || part.batch.timestamp_ms != partial.batch.timestamp_ms
                {
                    return Err(RecordError::Order(format!(
                        "agreement {} part {} (time {}) follows agreement {} part {} of {} \
                         (time {})",
                        part.agreement_id,
                        part.part_index,
                        part.batch.timestamp_ms,
                        partial.agreement_id,
                        partial.part_index,
                        partial.part_count,
                        partial.batch.timestamp_ms
                    )));
                }
                partial.batch.requests.extend(part.batch.requests);
                partial.part_index = part.part_index;
                open = Some(partial);
            }
            None => {
                if part.part_index != 0
                    || expected_id.is_some_and(|id| id != Some(part.agreement_id))
                {
                    let expected = match expected_id {
                        None => "any agreement".to_owned(),
                        Some(Some(id)) => format!("agreement {id}"),
                        Some(None) => "no agreement (the last was u64::MAX)".to_owned(),
                    };
                    return Err(RecordError::Order(format!(
                        "agreement {} part {} where {expected} part 0 was expected",
                        part.agreement_id, part.part_index
                    )));
                }
                open = Some(part);
            }
        }
        if let Some(done) = open.take_if(|p| p.part_index + 1 == p.part_count) {
            batches.push(DecidedBatch::new(done.agreement_id, Arc::new(done.batch)));
        }
    }
    if let Some(partial) = open {
        log::warn!(
            "log ends inside agreement {} ({} of {} parts): dropping it",
            partial.agreement_id,
            partial.part_index + 1,
            partial.part_count
        );
    }
    Ok(batches)
}

/// Where the state stands before the log is replayed: the checkpoint it was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FromCheckpoint {
    /// The checkpoint's agreement (0: no checkpoint, a fresh state).
    pub agreement_id: u64,
    /// Requests ordered up to it.
    pub ordered_requests: u64,
}

/// What a replica rebuilt from its checkpoint and log.
#[derive(Debug, Clone)]
pub struct Restored {
    /// What the ordering protocol restarts from ([`crate::protocol::Replica::restart_with_nonce`]).
    pub recovered: Recovered,
    /// Per client, the highest request sequence the log ordered.
    pub ordered: BTreeMap<u64, u64>,
    /// Requests replayed through the executor from the log.
    pub requests: u64,
    /// Requests ordered up to the recovered agreement (where the checkpoint schedule
    /// stands).
    pub ordered_requests: u64,
    /// Agreements replayed from the log.
    pub batches_replayed: u64,
}

/// Recovery, shared by the runtime and the simulator: reassembles `payloads` (the log's
/// records in order), skips what the checkpoint `from` already holds, replays every
/// later batch through `executor` (fresh, or installed from that checkpoint), and
/// returns what the protocol needs to restart, keeping the last `window` batches for
/// peers' catch-up. The log must continue the state with no gap: its first batch after
/// the checkpoint is the checkpoint's agreement + 1 (or there is none).
pub fn restore<S: Service>(
    payloads: impl IntoIterator<Item = Vec<u8>>,
    executor: &mut Executor<S>,
    window: usize,
    from: FromCheckpoint,
) -> Result<Restored, RecordError> {
    if from.agreement_id == 0 {
        assert_eq!(executor.requests_executed(), 0, "recovery replays into a fresh executor");
    }
    // Records the checkpoint covers are not replayed. They are split off before
    // reassembly: the log may have a gap below the checkpoint (a checkpoint can be
    // durable before the log records of its last agreements, which a crash then loses).
    let mut covered = Vec::new();
    let mut after = Vec::new();
    for payload in payloads {
        // Only the agreement id is read here; `reassemble` decodes each record once.
        let agreement_id =
            payload.first_chunk::<8>().map(|id| u64::from_le_bytes(*id)).ok_or_else(|| {
                RecordError::Malformed(format!("a record of {} bytes", payload.len()))
            })?;
        if agreement_id > from.agreement_id {
            after.push(payload);
        } else {
            covered.push(payload);
        }
    }
    let batches = reassemble(after)?;
    // What the checkpoint covers still serves peers' catch-up when it leads up to the
    // checkpoint with no gap.
    let covered: Vec<DecidedBatch> = match reassemble(covered) {
        Ok(covered) if covered.last().is_some_and(|b| b.agreement_id == from.agreement_id) => {
            covered
        }
        _ => Vec::new(),
    };
    if let Some(first) = batches.first()
        && first.agreement_id != from.agreement_id + 1
    {
        return Err(RecordError::StartsLate {
            first: first.agreement_id,
            state: from.agreement_id,
        });
    }
    let mut ordered: BTreeMap<u64, u64> = executor.last_executed_per_client();
    let requests_before = executor.requests_executed();
    let mut ordered_requests = from.ordered_requests;
    for batch in &batches {
        execute_batch(executor, batch);
        ordered_requests += batch.batch.requests.len() as u64;
        for request in &batch.batch.requests {
            let highest = ordered.entry(request.client_id).or_insert(0);
            *highest = (*highest).max(request.sequence);
        }
    }
    let last_decided = batches.last().map_or(from.agreement_id, |b| b.agreement_id);
    let recent: Vec<Arc<Batch>> = covered
        .iter()
        .chain(&batches)
        .skip((covered.len() + batches.len()).saturating_sub(window))
        .map(|b| b.batch.clone())
        .collect();
    Ok(Restored {
        recovered: Recovered { last_decided, recent },
        ordered,
        requests: executor.requests_executed() - requests_before,
        ordered_requests,
        batches_replayed: batches.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientRequest;
    use crate::service::{CopiedState, CopiedStateInstaller, OrderedRequest, Replies};

    /// Sums the first byte of each operation.
    #[derive(Debug, Default)]
    struct Sum(u64);

    impl Service for Sum {
        const NAME: &'static str = "sum";
        type View = CopiedState;
        type Installer = CopiedStateInstaller<Sum>;
        fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
            for request in requests {
                self.0 += u64::from(request.operation[0]);
                replies.reply(self.0.to_le_bytes().to_vec());
            }
        }
        fn state_digest(&self) -> [u8; 32] {
            [0; 32]
        }
        fn view(&self) -> CopiedState {
            CopiedState(self.0.to_le_bytes().to_vec())
        }
        fn installer(&self) -> CopiedStateInstaller<Sum> {
            CopiedStateInstaller::new(|_| unreachable!("not installed in these tests"))
        }
    }

    /// The record of agreement `id`: one request of client `id` adding `id`.
    fn record(id: u64) -> Vec<u8> {
        let request = ClientRequest {
            client_id: id,
            sequence: 1,
            operation: vec![id as u8],
            authenticator: vec![[0; 32]],
        };
        let mut out = Vec::new();
        encode_batch(id, (0, 1), &Batch { timestamp_ms: 0, requests: vec![request] }, &mut out);
        out
    }

    /// An executor as a checkpoint after agreement 5 (1 + .. + 5 = 15) leaves it.
    fn at_checkpoint() -> (Executor<Sum>, FromCheckpoint) {
        let executor = Executor::from_parts(Sum(15), Default::default(), 5, None);
        (executor, FromCheckpoint { agreement_id: 5, ordered_requests: 5 })
    }

    /// Found by the fuzz target `file_log` (AFL++): a log whose batch of agreement
    /// `u64::MAX` was followed by another record made replay compute the agreement
    /// after it, which overflowed (a panic with overflow checks on, as in the ci
    /// profile). Such a log is refused as out of order now.
    #[test]
    fn a_record_after_agreement_u64_max_is_out_of_order_not_an_overflow() {
        let last = record(u64::MAX);
        assert_eq!(reassemble(vec![last.clone()]).expect("the last agreement").len(), 1);
        for next in [record(0), record(1), last.clone()] {
            let error = reassemble(vec![last.clone(), next]).expect_err("nothing follows it");
            assert!(
                matches!(&error, RecordError::Order(text) if text.contains("no agreement")),
                "{error}"
            );
        }
        assert!(matches!(reassemble(vec![record(3), record(5)]), Err(RecordError::Order(_))));
    }

    #[test]
    fn a_restore_from_a_checkpoint_replays_only_what_follows_it() {
        let (mut executor, from) = at_checkpoint();
        let log: Vec<Vec<u8>> = (3..=8).map(record).collect();
        let restored = restore(log, &mut executor, 100, from).expect("continues the checkpoint");
        assert_eq!(executor.service().0, 15 + 6 + 7 + 8, "3..=5 not applied twice");
        assert_eq!((restored.recovered.last_decided, restored.requests), (8, 3));
        assert_eq!((restored.ordered_requests, restored.batches_replayed), (8, 3));
        // The covered records still serve catch-up: 3..=8, consecutive up to the end.
        assert_eq!(restored.recovered.recent.len(), 6);
        assert_eq!(restored.ordered.get(&8), Some(&1));
    }

    #[test]
    fn a_gap_below_the_checkpoint_is_fine_and_one_above_it_is_refused() {
        // The checkpoint was durable before the records of agreements 4 and 5.
        let (mut executor, from) = at_checkpoint();
        let log: Vec<Vec<u8>> = [1, 2, 3, 6, 7].into_iter().map(record).collect();
        let restored = restore(log, &mut executor, 100, from).expect("a gap the checkpoint covers");
        assert_eq!(restored.recovered.last_decided, 7);
        assert_eq!(restored.recovered.recent.len(), 2, "only what is consecutive to the end");
        // Nothing after the checkpoint: the state is the checkpoint's.
        let (mut executor, from) = at_checkpoint();
        let restored = restore(vec![record(2)], &mut executor, 100, from).expect("empty after");
        assert_eq!((restored.recovered.last_decided, restored.ordered_requests), (5, 5));
        // A gap above the checkpoint: agreement 6 is missing.
        let (mut executor, from) = at_checkpoint();
        let error = restore(vec![record(7)], &mut executor, 100, from).expect_err("a gap");
        assert_eq!(error, RecordError::StartsLate { first: 7, state: 5 });
    }
}
