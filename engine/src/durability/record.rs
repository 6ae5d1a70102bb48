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
        let expected_id = batches.last().map(|b| b.agreement_id + 1);
        match open.take() {
            Some(mut partial) => {
                if part.agreement_id != partial.agreement_id
                    || part.part_index != partial.part_index + 1
                    || part.part_count != partial.part_count
                {
                    return Err(RecordError::Order(format!(
                        "agreement {} part {} follows agreement {} part {} of {}",
                        part.agreement_id,
                        part.part_index,
                        partial.agreement_id,
                        partial.part_index,
                        partial.part_count
                    )));
                }
                partial.batch.requests.extend(part.batch.requests);
                partial.part_index = part.part_index;
                open = Some(partial);
            }
            None => {
                if part.part_index != 0 || expected_id.is_some_and(|id| id != part.agreement_id) {
                    return Err(RecordError::Order(format!(
                        "agreement {} part {} where agreement {expected_id:?} part 0 was expected",
                        part.agreement_id, part.part_index
                    )));
                }
                open = Some(part);
            }
        }
        if let Some(done) = open.take_if(|p| p.part_index + 1 == p.part_count) {
            batches.push(DecidedBatch {
                agreement_id: done.agreement_id,
                batch: Arc::new(done.batch),
            });
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
    // Records the checkpoint covers are skipped before reassembly: the log may have a
    // gap below the checkpoint (a checkpoint can be durable before the log records of
    // its last agreements, which a crash then loses).
    let mut skip_error = None;
    let after_checkpoint = payloads.into_iter().filter(|payload| match decode_batch(payload) {
        Ok(part) => part.agreement_id > from.agreement_id,
        Err(error) => {
            skip_error.get_or_insert(error);
            false
        }
    });
    let batches = reassemble(after_checkpoint.collect::<Vec<_>>())?;
    if let Some(error) = skip_error {
        return Err(error);
    }
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
    let recent: Vec<Arc<Batch>> = batches
        .iter()
        .skip(batches.len().saturating_sub(window))
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
