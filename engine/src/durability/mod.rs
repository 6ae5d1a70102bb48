//! The durability coordinator: a state machine with no I/O that decides, for each
//! decided batch, when it is appended to the log, when it is executed, and when its
//! replies may leave.
//!
//! Events in ([`Input`]): a batch decided, a batch executed (with its replies), the log
//! durable up to an agreement, a cached reply to resend, the log failed, a checkpoint
//! written (or failed). Actions out ([`Output`]): append a batch, cut the log's segment,
//! execute a batch, take a checkpoint, truncate the log, release replies, stop. No threads,
//! channels or clocks inside: the runtime's `exec` thread owns one and carries out its
//! actions (`runtime::durability`), and the simulator drives the same code over its
//! simulated disk (`sim`). Time enters only as numbers the caller passes in, to report
//! how long replies were held.
//!
//! | log mode | on decided | a batch executes | its replies leave |
//! |---|---|---|---|
//! | `none` | execute | at once | when executed |
//! | `async` | append, execute | at once | when executed |
//! | `sync`, `batched` | append | once durable | when executed (already durable) |
//! | `parallel` | append **and** execute | at once | when executed **and** durable |
//!
//! The rule every user relies on: in the durable modes (`sync`, `batched`, `parallel`)
//! no reply leaves before the log reported its batch durable, and after
//! [`Input::LogFailed`] nothing more is released, so a failed group write is never
//! acknowledged.
//!
//! Bound: batches held here (executed and waiting for the log, or waiting for the log to
//! be executed) never exceed [`HELD_BATCHES_MAX`]. The coordinator says when it is full
//! ([`Coordinator::accepts_decided`]); its owner then stops taking decided batches, and
//! the back-pressure reaches the ordering stage through the bounded queue between them.
//! A stalled disk therefore stalls the replica; it never breaks an assertion.

pub mod record;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::Batch;
use crate::runtime::LogMode;
use crate::service::{Executor, Outcome, Service};
use dura_core::Hash;
pub use dura_core::{DecisionId, ReplyStatus};

pub use record::{
    BatchPart, FromCheckpoint, RecordError, Restored, decode_batch, encode_batch, reassemble,
    restore,
};

/// Decided batches the coordinator holds at most (executed and waiting for the log, or
/// logged and waiting to be executed).
pub const HELD_BATCHES_MAX: usize = 4_096;

/// When this replica checkpoints and where its log is cut into segments (the paper's
/// sequential checkpoints, section 3.2), counted in requests ordered since the cluster
/// began: request k is the k-th request of the decided batches, so every replica agrees
/// on which agreement holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSchedule {
    /// P: requests between two checkpoints of this replica.
    pub period: u64,
    /// This replica checkpoints after the batch holding a request k with
    /// `k % period == offset`.
    pub offset: u64,
    /// The log starts a new segment after the batch holding a request k with
    /// `k % segment == 0` (floor(P/n): the paper's log pieces L_i are whole segments).
    pub segment: u64,
}

impl CheckpointSchedule {
    /// Sequential checkpoints: replica `replica` of `n` at `k mod P = replica * floor(P/n)`,
    /// so at most one replica of a cluster is checkpointing at a time.
    pub fn sequential(period: u64, n: usize, replica: usize) -> Self {
        assert!(replica < n && n >= 1);
        let segment = period / n as u64;
        assert!(segment >= 1, "a period of at least n requests");
        Self { period, offset: replica as u64 * segment, segment }
    }

    /// Coordinated checkpoints: every replica at `k mod P = 0` (the paper's Figure 2).
    pub fn coordinated(period: u64, n: usize) -> Self {
        let segment = period / n as u64;
        assert!(segment >= 1, "a period of at least n requests");
        Self { period, offset: 0, segment }
    }

    /// Whether requests `after+1..=up_to` hold a k with `k % modulus == residue`.
    fn holds(after: u64, up_to: u64, modulus: u64, residue: u64) -> bool {
        assert!(modulus > 0 && residue < modulus);
        // The first k > after with that residue.
        let next = after + 1 + (residue + modulus - (after + 1) % modulus) % modulus;
        next <= up_to
    }

    /// Whether a batch holding requests `after+1..=up_to` ends at a checkpoint.
    pub fn checkpoint_in(&self, after: u64, up_to: u64) -> bool {
        Self::holds(after, up_to, self.period, self.offset)
    }

    /// Whether the log's segment ends after a batch holding requests `after+1..=up_to`.
    pub fn cut_in(&self, after: u64, up_to: u64) -> bool {
        Self::holds(after, up_to, self.segment, 0)
    }
}

/// Where a replica's checkpoints stand when its coordinator starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStart {
    /// Requests ordered up to the recovered agreement (since the cluster began).
    pub ordered_requests: u64,
    /// The newest durable checkpoint's agreement (0: none).
    pub last_checkpoint: u64,
}

/// A batch the ordering protocol decided, shared by the log and the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedBatch {
    /// The consensus instance that decided it.
    pub agreement_id: u64,
    /// Its requests, in order.
    pub batch: Arc<Batch>,
    /// `batch`'s [`Batch::hash`]: with `agreement_id`, the decision's identity in the
    /// replies its execution gives ([`DecisionId`]).
    pub hash: Hash,
}

impl DecidedBatch {
    /// The batch decided at `agreement_id` (its hash computed here).
    pub fn new(agreement_id: u64, batch: Arc<Batch>) -> Self {
        let hash = batch.hash();
        Self { agreement_id, batch, hash }
    }

    /// The decision's identity.
    pub fn decision(&self) -> DecisionId {
        DecisionId { agreement_id: self.agreement_id, hash: self.hash }
    }
}

/// A reply ready to leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyOut {
    /// The client it goes to.
    pub client_id: u64,
    /// The sequence number of the request it answers.
    pub sequence: u64,
    /// The agreement whose execution produced the reply: the one that ordered the
    /// request, or for a deferred request the one that released it.
    pub agreement_id: u64,
    /// Whether the request ran ([`ReplyStatus::Expired`]: `reply` is the lowest session
    /// time accepted from an unknown client, see [`Outcome::Expired`]).
    pub status: ReplyStatus,
    /// The decision whose execution gave `reply` (for a cached reply, the original
    /// one; `agreement_id` is then where the reply cache stood).
    pub decided: DecisionId,
    /// The service's reply.
    pub reply: Vec<u8>,
}

/// A refused request's reply ([`Outcome::Expired`]): no decision, and as its result the
/// lowest session time an unknown client is accepted with.
fn refusal(accept_from_ms: u64) -> (ReplyStatus, DecisionId, Vec<u8>) {
    (ReplyStatus::Expired, DecisionId::default(), accept_from_ms.to_le_bytes().to_vec())
}

/// The reply to a retransmission of an ordered request, from the executor's reply cache
/// (see [`Executor::answer_retransmission`]), to leave through
/// [`Input::CachedReply`] once the log holds `last_executed`.
pub fn retransmission_reply<S: Service>(
    executor: &Executor<S>,
    client_id: u64,
    sequence: u64,
    last_executed: u64,
) -> Option<ReplyOut> {
    let (status, decided, reply) = match executor.answer_retransmission(client_id, sequence)? {
        Outcome::Cached(reply, decided) => (ReplyStatus::Executed, decided, reply),
        Outcome::Expired { accept_from_ms } => refusal(accept_from_ms),
        other => unreachable!("a retransmission is answered or refused, not {other:?}"),
    };
    Some(ReplyOut { client_id, sequence, agreement_id: last_executed, status, decided, reply })
}

/// Runs `batch` through `executor`; returns the replies to send: fresh and cached ones
/// in request order, then those of earlier deferred requests the batch released (sent
/// under the same rule, once this batch is durable).
pub fn execute_batch<S: Service>(
    executor: &mut Executor<S>,
    batch: &DecidedBatch,
) -> Vec<ReplyOut> {
    let decision = batch.decision();
    let executed = executor.execute_decided(&batch.batch.ordered_requests(), decision);
    assert_eq!(executed.outcomes.len(), batch.batch.requests.len(), "one outcome per request");
    let mut replies = Vec::with_capacity(executed.outcomes.len() + executed.released.len());
    for (request, outcome) in batch.batch.requests.iter().zip(executed.outcomes) {
        let (status, decided, reply) = match outcome {
            Outcome::Executed(reply) => (ReplyStatus::Executed, decision, reply),
            Outcome::Cached(reply, decided) => (ReplyStatus::Executed, decided, reply),
            Outcome::Expired { accept_from_ms } => refusal(accept_from_ms),
            Outcome::Deferred | Outcome::Stale => continue,
        };
        replies.push(ReplyOut {
            client_id: request.client_id,
            sequence: request.sequence,
            agreement_id: batch.agreement_id,
            status,
            decided,
            reply,
        });
    }
    replies.extend(executed.released.into_iter().map(|released| ReplyOut {
        client_id: released.client_id,
        sequence: released.sequence,
        agreement_id: batch.agreement_id,
        status: ReplyStatus::Executed,
        decided: decision,
        reply: released.reply,
    }));
    replies
}

/// What the coordinator is told.
#[derive(Debug)]
pub enum Input {
    /// The ordering protocol decided this batch (agreement ids strictly increasing).
    /// Only when [`Coordinator::accepts_decided`].
    Decided(Arc<DecidedBatch>),
    /// The owner carried out [`Output::Execute`] for this agreement; these are the
    /// replies the executor produced, `now_us` the owner's clock.
    Executed {
        /// The agreement executed.
        agreement_id: u64,
        /// Its replies (fresh and from the reply cache).
        replies: Vec<ReplyOut>,
        /// When, on the owner's clock, in microseconds.
        now_us: u64,
    },
    /// The reply cache's answer to a retransmission of an already executed request.
    CachedReply(ReplyOut),
    /// The log holds every agreement up to this one durably (a report may repeat or
    /// trail an earlier one).
    Durable {
        /// Durable up to here.
        up_to: u64,
        /// When, on the owner's clock, in microseconds.
        now_us: u64,
    },
    /// The log failed (a write or sync error): nothing appended since the last report
    /// may be acknowledged, ever.
    LogFailed,
    /// The checkpoint asked for by [`Output::Checkpoint`] is durable (file synced,
    /// renamed, directory synced).
    CheckpointWritten {
        /// Its agreement.
        agreement_id: u64,
    },
    /// Writing that checkpoint failed; it was abandoned (the log still holds everything
    /// since the previous one).
    CheckpointFailed {
        /// Its agreement.
        agreement_id: u64,
    },
}

/// What the coordinator asks its owner to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Append this batch to the log (as one record; `sync` mode: one synced record per
    /// request).
    Append(Arc<DecidedBatch>),
    /// Execute this batch, then report [`Input::Executed`].
    Execute(Arc<DecidedBatch>),
    /// End the log's current segment after this agreement (comes before its append).
    CutSegment {
        /// The last agreement of the segment.
        after: u64,
    },
    /// Take a view of the executor now (right after the [`Output::Execute`] of this
    /// agreement, before any later one) and write it as a checkpoint once
    /// [`Coordinator::checkpoint_may_start`] allows; report
    /// [`Input::CheckpointWritten`] or [`Input::CheckpointFailed`].
    Checkpoint {
        /// The agreement the state is at.
        agreement_id: u64,
        /// Requests ordered up to it (for the checkpoint's header).
        ordered_requests: u64,
    },
    /// Remove the log's segments that hold only agreements below `below`: the newest
    /// checkpoint and the one before it are durable, and the log since the older one is
    /// kept (a fallback when the newest is corrupt, and what state transfer serves).
    TruncateLog {
        /// The first agreement kept.
        below: u64,
    },
    /// Send these replies.
    Release {
        /// The replies, in execution order.
        replies: Vec<ReplyOut>,
        /// How long they waited for the log after execution (parallel mode), if they did.
        held_us: Option<u64>,
    },
    /// The log failed: the replica must stop; nothing more will be released.
    Stop,
}

/// Replies of one executed batch waiting for the log (parallel mode).
#[derive(Debug)]
struct Held {
    agreement_id: u64,
    replies: Vec<ReplyOut>,
    executed_us: u64,
}

/// The durability coordinator of one replica. See the module docs.
#[derive(Debug)]
pub struct Coordinator {
    mode: LogMode,
    last_decided: u64,
    last_appended: u64,
    /// Agreement whose [`Output::Execute`] went out and whose [`Input::Executed`] has not
    /// come back.
    executing: VecDeque<u64>,
    last_executed: u64,
    durable_up_to: u64,
    /// `sync`/`batched`: appended, executed once durable.
    awaiting_log: VecDeque<Arc<DecidedBatch>>,
    /// `parallel`: executed, released once durable.
    held: VecDeque<Held>,
    failed: bool,
    schedule: Option<CheckpointSchedule>,
    /// Requests in the decided batches, since the cluster began.
    ordered_requests: u64,
    /// Checkpoint points decided and not yet executed: (agreement, ordered requests up
    /// to it). Bounded by the held batches.
    checkpoint_points: VecDeque<(u64, u64)>,
    /// The checkpoint being written, if any (one at a time).
    checkpoint_writing: Option<u64>,
    /// The newest durable checkpoint (0: none).
    last_checkpoint: u64,
    /// Checkpoint points passed while another was being written.
    checkpoints_skipped: u64,
}

impl Coordinator {
    /// A coordinator for a replica whose log (and state) already hold agreements up to
    /// `recovered` (0: nothing), all of them durable and executed.
    pub fn new(mode: LogMode, recovered: u64) -> Self {
        Self {
            mode,
            last_decided: recovered,
            last_appended: recovered,
            executing: VecDeque::new(),
            last_executed: recovered,
            durable_up_to: recovered,
            awaiting_log: VecDeque::new(),
            held: VecDeque::new(),
            failed: false,
            schedule: None,
            ordered_requests: 0,
            checkpoint_points: VecDeque::new(),
            checkpoint_writing: None,
            last_checkpoint: 0,
            checkpoints_skipped: 0,
        }
    }

    /// Checkpoints on `schedule`, from where `start` says they stand.
    pub fn with_checkpoints(
        mut self,
        schedule: CheckpointSchedule,
        start: CheckpointStart,
    ) -> Self {
        assert!(start.last_checkpoint <= self.last_decided, "a checkpoint past the state");
        self.schedule = Some(schedule);
        self.ordered_requests = start.ordered_requests;
        self.last_checkpoint = start.last_checkpoint;
        self
    }

    /// Requests ordered up to the last decided agreement (0 unless counting from a
    /// [`CheckpointStart`]).
    pub fn ordered_requests(&self) -> u64 {
        self.ordered_requests
    }

    /// The newest durable checkpoint (0: none).
    pub fn last_checkpoint(&self) -> u64 {
        self.last_checkpoint
    }

    /// The checkpoint being written, if any.
    pub fn checkpoint_writing(&self) -> Option<u64> {
        self.checkpoint_writing
    }

    /// Checkpoint points passed while the previous checkpoint was still being written.
    pub fn checkpoints_skipped(&self) -> u64 {
        self.checkpoints_skipped
    }

    /// The log mode.
    pub fn mode(&self) -> LogMode {
        self.mode
    }

    /// Whether the owner may feed another [`Input::Decided`]: false while
    /// [`HELD_BATCHES_MAX`] batches wait for the log, or after the log failed.
    pub fn accepts_decided(&self) -> bool {
        !self.failed && self.held_batches() < HELD_BATCHES_MAX
    }

    /// Batches held (waiting for the log before or after execution, or executing).
    pub fn held_batches(&self) -> usize {
        self.held.len() + self.awaiting_log.len() + self.executing.len()
    }

    /// Every agreement up to this one is reported durable (the recovered point at
    /// first).
    pub fn durable_up_to(&self) -> u64 {
        self.durable_up_to
    }

    /// Whether the host may write the checkpoint of `agreement_id` (asked for by
    /// [`Output::Checkpoint`], its view already taken) now: in the durable modes only once
    /// the log is durable at that agreement, so that a replica restarting from the
    /// checkpoint still has the agreement's batch in its log (to serve a peer that lacks
    /// it, and to name its hash in recovery). Written earlier, a crash could leave the
    /// checkpoint without that log record (`dura-sim --mode bft --total-crash`, seed 413:
    /// the replica could serve the agreement to nobody and the others stalled on it).
    pub fn checkpoint_may_start(&self, agreement_id: u64) -> bool {
        !self.mode.is_durable() || self.durable_up_to >= agreement_id
    }

    /// The last agreement executed.
    pub fn last_executed(&self) -> u64 {
        self.last_executed
    }

    /// Whether the log failed.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Takes one event; pushes the actions it causes onto `out`, in the order they must
    /// be carried out.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Decided(batch) => self.on_decided(batch, out),
            Input::Executed { agreement_id, replies, now_us } => {
                self.on_executed(agreement_id, replies, now_us, out)
            }
            Input::CachedReply(reply) => self.on_cached_reply(reply, out),
            Input::Durable { up_to, now_us } => self.on_durable(up_to, now_us, out),
            Input::LogFailed => {
                if !self.failed {
                    self.failed = true;
                    // Whatever waits for the log now never leaves.
                    self.held.clear();
                    self.awaiting_log.clear();
                    out.push(Output::Stop);
                }
            }
            Input::CheckpointWritten { agreement_id } => {
                assert_eq!(self.checkpoint_writing.take(), Some(agreement_id));
                assert!(agreement_id > self.last_checkpoint, "checkpoints move forward");
                if self.last_checkpoint > 0 && !self.failed && self.mode != LogMode::None {
                    out.push(Output::TruncateLog { below: self.last_checkpoint + 1 });
                }
                self.last_checkpoint = agreement_id;
            }
            Input::CheckpointFailed { agreement_id } => {
                assert_eq!(self.checkpoint_writing.take(), Some(agreement_id));
            }
        }
        self.check_invariants();
    }

    fn on_decided(&mut self, batch: Arc<DecidedBatch>, out: &mut Vec<Output>) {
        assert!(self.accepts_decided(), "a decided batch fed while the coordinator is full");
        assert_eq!(
            batch.agreement_id,
            self.last_decided + 1,
            "decided batches reach the coordinator in agreement order, with no gap"
        );
        self.last_decided = batch.agreement_id;
        let after = self.ordered_requests;
        self.ordered_requests += batch.batch.requests.len() as u64;
        if let Some(schedule) = self.schedule {
            if schedule.checkpoint_in(after, self.ordered_requests) {
                self.checkpoint_points.push_back((batch.agreement_id, self.ordered_requests));
            }
            if self.mode != LogMode::None && schedule.cut_in(after, self.ordered_requests) {
                out.push(Output::CutSegment { after: batch.agreement_id });
            }
        }
        match self.mode {
            LogMode::None => self.execute(batch, out),
            LogMode::Async | LogMode::Parallel => {
                // Parallel logging: the append is issued first so the write starts
                // while the batch executes.
                self.append(&batch, out);
                self.execute(batch, out);
            }
            LogMode::Sync | LogMode::Batched => {
                self.append(&batch, out);
                self.awaiting_log.push_back(batch);
            }
        }
    }

    fn append(&mut self, batch: &Arc<DecidedBatch>, out: &mut Vec<Output>) {
        assert!(batch.agreement_id > self.last_appended, "appends strictly increase");
        self.last_appended = batch.agreement_id;
        out.push(Output::Append(batch.clone()));
    }

    fn execute(&mut self, batch: Arc<DecidedBatch>, out: &mut Vec<Output>) {
        assert!(
            batch.agreement_id > self.executing.back().copied().unwrap_or(self.last_executed),
            "executions strictly increase"
        );
        self.executing.push_back(batch.agreement_id);
        let agreement_id = batch.agreement_id;
        out.push(Output::Execute(batch));
        if self.checkpoint_points.front().is_some_and(|(point, _)| *point == agreement_id) {
            let (_, ordered_requests) = self.checkpoint_points.pop_front().expect("checked");
            if self.checkpoint_writing.is_some() || self.failed {
                self.checkpoints_skipped += 1;
            } else {
                self.checkpoint_writing = Some(agreement_id);
                out.push(Output::Checkpoint { agreement_id, ordered_requests });
            }
        }
    }

    fn on_executed(
        &mut self,
        agreement_id: u64,
        replies: Vec<ReplyOut>,
        now_us: u64,
        out: &mut Vec<Output>,
    ) {
        assert_eq!(
            self.executing.pop_front(),
            Some(agreement_id),
            "an execution reported is the oldest one asked for"
        );
        assert!(agreement_id > self.last_executed);
        self.last_executed = agreement_id;
        if self.failed {
            return;
        }
        let must_wait = self.mode == LogMode::Parallel && agreement_id > self.durable_up_to;
        if must_wait {
            self.held.push_back(Held { agreement_id, replies, executed_us: now_us });
        } else {
            // In `sync` and `batched` mode execution came after durability.
            assert!(
                !self.mode.is_durable() || agreement_id <= self.durable_up_to,
                "a durable mode releases only what the log holds"
            );
            if !replies.is_empty() {
                out.push(Output::Release { replies, held_us: None });
            }
        }
    }

    fn on_cached_reply(&mut self, reply: ReplyOut, out: &mut Vec<Output>) {
        if self.failed {
            return;
        }
        // The request may belong to a batch still waiting for the log: it leaves with the
        // newest held batch (every older executed batch is durable when none is held).
        match self.held.back_mut() {
            Some(held) => held.replies.push(reply),
            None => out.push(Output::Release { replies: vec![reply], held_us: None }),
        }
    }

    fn on_durable(&mut self, up_to: u64, now_us: u64, out: &mut Vec<Output>) {
        if self.failed || up_to <= self.durable_up_to {
            return;
        }
        assert!(
            up_to <= self.last_appended,
            "the log reports agreement {up_to} durable, but only {} was appended",
            self.last_appended
        );
        self.durable_up_to = up_to;
        while self.held.front().is_some_and(|held| held.agreement_id <= up_to) {
            let held = self.held.pop_front().expect("checked non-empty");
            if !held.replies.is_empty() {
                out.push(Output::Release {
                    replies: held.replies,
                    held_us: Some(now_us.saturating_sub(held.executed_us)),
                });
            }
        }
        while self.awaiting_log.front().is_some_and(|batch| batch.agreement_id <= up_to) {
            let batch = self.awaiting_log.pop_front().expect("checked non-empty");
            self.execute(batch, out);
        }
    }

    fn check_invariants(&self) {
        assert!(self.last_executed <= self.last_decided);
        assert!(self.last_appended <= self.last_decided);
        assert!(self.durable_up_to <= self.last_appended, "durable only what was appended");
        assert!(self.held_batches() <= HELD_BATCHES_MAX, "held batches are bounded");
        assert!(self.checkpoint_points.len() <= HELD_BATCHES_MAX, "checkpoint points bounded");
        assert!(self.last_checkpoint <= self.last_executed, "a checkpoint of executed state");
        assert!(self.checkpoint_writing.is_none_or(|at| at > self.last_checkpoint));
        if self.mode == LogMode::Parallel {
            // Every held batch is executed and not yet durable.
            debug_assert!(self.held.iter().all(|held| held.agreement_id > self.durable_up_to
                && held.agreement_id <= self.last_executed));
        } else {
            assert!(self.held.is_empty(), "only parallel mode holds executed replies");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientRequest;

    fn decided(agreement_id: u64) -> Arc<DecidedBatch> {
        let request = ClientRequest {
            client_id: 7,
            sequence: agreement_id,
            operation: vec![agreement_id as u8],
            authenticator: vec![[0; 32]],
        };
        Arc::new(DecidedBatch::new(
            agreement_id,
            Arc::new(Batch { timestamp_ms: 0, requests: vec![request] }),
        ))
    }

    fn reply(agreement_id: u64) -> ReplyOut {
        ReplyOut {
            client_id: 7,
            sequence: agreement_id,
            agreement_id,
            status: ReplyStatus::Executed,
            decided: DecisionId::default(),
            reply: vec![1],
        }
    }

    fn step(c: &mut Coordinator, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        c.handle(input, &mut out);
        out
    }

    /// Feeds a decided batch and carries out an `Execute` it asks for at once.
    fn decide_and_run(c: &mut Coordinator, id: u64, now_us: u64) -> Vec<Output> {
        let mut all = step(c, Input::Decided(decided(id)));
        if all.iter().any(|o| matches!(o, Output::Execute(_))) {
            all.extend(step(
                c,
                Input::Executed { agreement_id: id, replies: vec![reply(id)], now_us },
            ));
        }
        all
    }

    fn released(outputs: &[Output]) -> Vec<u64> {
        outputs
            .iter()
            .flat_map(|o| match o {
                Output::Release { replies, .. } => replies.iter().map(|r| r.agreement_id).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn parallel_mode_appends_before_executing_and_holds_replies_until_durable() {
        let mut c = Coordinator::new(LogMode::Parallel, 0);
        let out = decide_and_run(&mut c, 1, 100);
        assert_eq!(out[0], Output::Append(decided(1)));
        assert_eq!(out[1], Output::Execute(decided(1)));
        assert_eq!(out.len(), 2, "executed but not durable: no reply");
        decide_and_run(&mut c, 2, 200);
        assert_eq!(c.held_batches(), 2);
        let out = step(&mut c, Input::Durable { up_to: 1, now_us: 400 });
        assert_eq!(
            out,
            vec![Output::Release { replies: vec![reply(1)], held_us: Some(300) }],
            "only what is durable leaves, with the time it waited"
        );
        assert!(step(&mut c, Input::Durable { up_to: 1, now_us: 500 }).is_empty());
        assert_eq!(released(&step(&mut c, Input::Durable { up_to: 2, now_us: 600 })), vec![2]);
        // Durable before executed: released at execution.
        step(&mut c, Input::Decided(decided(3)));
        step(&mut c, Input::Durable { up_to: 3, now_us: 700 });
        let out =
            step(&mut c, Input::Executed { agreement_id: 3, replies: vec![reply(3)], now_us: 800 });
        assert_eq!(out, vec![Output::Release { replies: vec![reply(3)], held_us: None }]);
    }

    #[test]
    fn batched_and_sync_modes_execute_only_what_is_durable() {
        for mode in [LogMode::Batched, LogMode::Sync] {
            let mut c = Coordinator::new(mode, 10);
            assert_eq!(
                step(&mut c, Input::Decided(decided(11))),
                vec![Output::Append(decided(11))]
            );
            assert_eq!(
                step(&mut c, Input::Decided(decided(12))),
                vec![Output::Append(decided(12))]
            );
            let out = step(&mut c, Input::Durable { up_to: 11, now_us: 0 });
            assert_eq!(out, vec![Output::Execute(decided(11))]);
            let out = step(
                &mut c,
                Input::Executed { agreement_id: 11, replies: vec![reply(11)], now_us: 0 },
            );
            assert_eq!(released(&out), vec![11]);
            assert_eq!(c.held_batches(), 1);
        }
    }

    #[test]
    fn none_and_async_modes_release_when_executed() {
        for mode in [LogMode::None, LogMode::Async] {
            let mut c = Coordinator::new(mode, 0);
            let out = decide_and_run(&mut c, 1, 0);
            assert_eq!(released(&out), vec![1]);
            assert_eq!(out.iter().any(|o| matches!(o, Output::Append(_))), mode == LogMode::Async);
        }
    }

    #[test]
    fn a_failed_log_acknowledges_nothing_more() {
        let mut c = Coordinator::new(LogMode::Parallel, 0);
        decide_and_run(&mut c, 1, 0);
        decide_and_run(&mut c, 2, 0);
        step(&mut c, Input::Durable { up_to: 1, now_us: 0 });
        assert_eq!(step(&mut c, Input::LogFailed), vec![Output::Stop]);
        assert!(step(&mut c, Input::Durable { up_to: 2, now_us: 0 }).is_empty());
        assert!(step(&mut c, Input::CachedReply(reply(1))).is_empty());
        assert!(!c.accepts_decided());
    }

    #[test]
    fn cached_reply_waits_behind_the_newest_held_batch() {
        let mut c = Coordinator::new(LogMode::Parallel, 0);
        decide_and_run(&mut c, 1, 0);
        assert!(step(&mut c, Input::CachedReply(reply(1))).is_empty());
        assert_eq!(released(&step(&mut c, Input::Durable { up_to: 1, now_us: 0 })), vec![1, 1]);
        assert_eq!(released(&step(&mut c, Input::CachedReply(reply(1)))), vec![1]);
    }

    #[test]
    fn a_stalled_disk_fills_the_bound_and_stops_intake_without_breaking() {
        for mode in [LogMode::Parallel, LogMode::Batched] {
            let mut c = Coordinator::new(mode, 0);
            let mut id = 0;
            while c.accepts_decided() {
                id += 1;
                let out = decide_and_run(&mut c, id, id);
                assert!(released(&out).is_empty(), "nothing leaves while the disk is stalled");
            }
            assert_eq!(id as usize, HELD_BATCHES_MAX);
            assert_eq!(c.held_batches(), HELD_BATCHES_MAX);
            // The disk comes back: everything drains and intake resumes.
            let mut out = step(&mut c, Input::Durable { up_to: id, now_us: id + 1 });
            let executes: Vec<u64> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Execute(b) => Some(b.agreement_id),
                    _ => None,
                })
                .collect();
            for agreement_id in executes {
                out.extend(step(
                    &mut c,
                    Input::Executed { agreement_id, replies: vec![reply(agreement_id)], now_us: 0 },
                ));
            }
            assert_eq!(released(&out).len(), HELD_BATCHES_MAX);
            assert!(c.accepts_decided());
            assert_eq!(c.held_batches(), 0);
        }
    }

    #[test]
    #[should_panic(expected = "only")]
    fn a_durability_report_past_the_appends_is_a_broken_invariant() {
        let mut c = Coordinator::new(LogMode::Parallel, 0);
        decide_and_run(&mut c, 1, 0);
        step(&mut c, Input::Durable { up_to: 2, now_us: 0 });
    }

    /// A decided batch of `requests` requests (client 7, sequences from `first_seq`).
    fn decided_with(agreement_id: u64, requests: u64) -> Arc<DecidedBatch> {
        let requests = (0..requests)
            .map(|i| ClientRequest {
                client_id: 7,
                sequence: agreement_id * 1000 + i,
                operation: vec![1],
                authenticator: vec![[0; 32]],
            })
            .collect();
        Arc::new(DecidedBatch::new(agreement_id, Arc::new(Batch { timestamp_ms: 0, requests })))
    }

    #[test]
    fn sequential_points_spread_the_replicas_over_the_period() {
        // P = 12, n = 4: replica i at k mod 12 = 3i; segments every 3 requests.
        let points: Vec<Vec<u64>> = (0..4)
            .map(|i| {
                let schedule = CheckpointSchedule::sequential(12, 4, i);
                (0..30).filter(|k| schedule.checkpoint_in(*k, k + 1)).map(|k| k + 1).collect()
            })
            .collect();
        assert_eq!(points, vec![vec![12, 24], vec![3, 15, 27], vec![6, 18, 30], vec![9, 21]]);
        let coordinated = CheckpointSchedule::coordinated(12, 4);
        assert!(coordinated.checkpoint_in(11, 12) && !coordinated.checkpoint_in(12, 23));
        // A batch spanning a point holds it; an empty batch holds none.
        let schedule = CheckpointSchedule::sequential(12, 4, 1);
        assert!(schedule.checkpoint_in(0, 5) && !schedule.checkpoint_in(3, 3));
        assert!(schedule.cut_in(2, 3) && !schedule.cut_in(3, 5) && schedule.cut_in(3, 100));
    }

    #[test]
    fn a_checkpoint_is_asked_right_after_its_batch_executes_and_truncation_follows_the_second() {
        for mode in [LogMode::Parallel, LogMode::Batched] {
            let schedule = CheckpointSchedule::sequential(8, 2, 1); // k mod 8 = 4, cut every 4
            let mut c =
                Coordinator::new(mode, 0).with_checkpoints(schedule, CheckpointStart::default());
            let mut all = Vec::new();
            for id in 1..=3 {
                // Batches of 2 requests: agreement 2 holds request 4, agreement 4 request 8.
                let mut out = step(&mut c, Input::Decided(decided_with(id, 2)));
                out.extend(step(&mut c, Input::Durable { up_to: id, now_us: 0 }));
                for o in out.clone() {
                    if let Output::Execute(batch) = o {
                        out.extend(step(
                            &mut c,
                            Input::Executed {
                                agreement_id: batch.agreement_id,
                                replies: vec![],
                                now_us: 0,
                            },
                        ));
                    }
                }
                all.push(out);
            }
            assert!(
                all[0]
                    .iter()
                    .all(|o| !matches!(o, Output::Checkpoint { .. } | Output::CutSegment { .. }))
            );
            let cut_at = all[1].iter().position(|o| *o == Output::CutSegment { after: 2 });
            let append_at =
                all[1].iter().position(|o| matches!(o, Output::Append(b) if b.agreement_id == 2));
            assert!(cut_at.expect("cut") < append_at.expect("append"), "{mode}: cut before append");
            let execute_at =
                all[1].iter().position(|o| matches!(o, Output::Execute(b) if b.agreement_id == 2));
            let checkpoint_at = all[1]
                .iter()
                .position(|o| *o == Output::Checkpoint { agreement_id: 2, ordered_requests: 4 });
            assert_eq!(
                checkpoint_at,
                Some(execute_at.expect("executes") + 1),
                "{mode}: the view is taken right after the batch executed"
            );
            assert_eq!(c.checkpoint_writing(), Some(2));
            // The first checkpoint truncates nothing (no older one to fall back to).
            assert!(step(&mut c, Input::CheckpointWritten { agreement_id: 2 }).is_empty());
            assert_eq!(c.last_checkpoint(), 2);
            // Up to request 12 (agreement 6), the next point.
            let mut outs = Vec::new();
            for id in 4..=6 {
                outs.extend(step(&mut c, Input::Decided(decided_with(id, 2))));
                outs.extend(step(&mut c, Input::Durable { up_to: id, now_us: 0 }));
                for o in outs.clone() {
                    if let Output::Execute(batch) = o
                        && batch.agreement_id == id
                    {
                        outs.extend(step(
                            &mut c,
                            Input::Executed { agreement_id: id, replies: vec![], now_us: 0 },
                        ));
                    }
                }
            }
            assert!(outs.contains(&Output::Checkpoint { agreement_id: 6, ordered_requests: 12 }));
            assert_eq!(
                step(&mut c, Input::CheckpointWritten { agreement_id: 6 }),
                vec![Output::TruncateLog { below: 3 }],
                "{mode}: the log since the older checkpoint stays"
            );
        }
    }

    #[test]
    fn a_checkpoint_is_written_only_once_the_log_holds_its_agreement() {
        let schedule = CheckpointSchedule::coordinated(2, 1);
        let mut c = Coordinator::new(LogMode::Parallel, 0)
            .with_checkpoints(schedule, CheckpointStart::default());
        // Parallel: agreement 1 executes (and its view is taken) before the log holds it.
        let out = step(&mut c, Input::Decided(decided_with(1, 2)));
        assert!(out.contains(&Output::Checkpoint { agreement_id: 1, ordered_requests: 2 }));
        assert!(!c.checkpoint_may_start(1), "the log does not hold agreement 1 yet");
        step(&mut c, Input::Executed { agreement_id: 1, replies: vec![], now_us: 0 });
        assert!(!c.checkpoint_may_start(1));
        step(&mut c, Input::Durable { up_to: 1, now_us: 0 });
        assert!(c.checkpoint_may_start(1));
        // Without a log there is nothing to wait for.
        let c = Coordinator::new(LogMode::None, 0);
        assert!(c.checkpoint_may_start(5));
    }

    #[test]
    fn a_point_passed_while_a_checkpoint_is_written_is_skipped_and_counted() {
        let schedule = CheckpointSchedule::coordinated(2, 1);
        let mut c = Coordinator::new(LogMode::Parallel, 0)
            .with_checkpoints(schedule, CheckpointStart::default());
        let out = step(&mut c, Input::Decided(decided_with(1, 2)));
        assert!(out.contains(&Output::Checkpoint { agreement_id: 1, ordered_requests: 2 }));
        step(&mut c, Input::Executed { agreement_id: 1, replies: vec![], now_us: 0 });
        let out = step(&mut c, Input::Decided(decided_with(2, 2)));
        assert!(!out.iter().any(|o| matches!(o, Output::Checkpoint { .. })));
        assert_eq!(c.checkpoints_skipped(), 1);
        step(&mut c, Input::Executed { agreement_id: 2, replies: vec![], now_us: 0 });
        // A failed checkpoint frees the slot and truncates nothing.
        assert!(step(&mut c, Input::CheckpointFailed { agreement_id: 1 }).is_empty());
        assert_eq!(c.last_checkpoint(), 0);
        let out = step(&mut c, Input::Decided(decided_with(3, 2)));
        assert!(out.contains(&Output::Checkpoint { agreement_id: 3, ordered_requests: 6 }));
    }
}
