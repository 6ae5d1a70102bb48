//! The durability coordinator: the `log` and `exec` stages and the rule that decides
//! when a reply may leave.
//!
//! | log mode | order sends a decided batch to | a reply leaves when |
//! |---|---|---|
//! | `none` | exec | executed |
//! | `async` | exec and log (never synced) | executed |
//! | `sync` | log; one synced write per request, then exec | executed (already durable) |
//! | `batched` | log; one synced write per group, then exec | executed (already durable) |
//! | `parallel` | exec **and** log at the same moment | executed **and** durable |
//!
//! In `parallel` mode the exec stage keeps the replies of each executed batch until the
//! log reports "durable up to agreement X" with X >= the batch's agreement id. Over
//! dura-wal the WAL's own reports go straight to exec and the log stage only appends
//! ([`run_append_stage`]; the WAL groups the appends into one write). Over a log without
//! reports the log stage takes every batch waiting in its queue as one group, appends
//! them all, waits for one sync and reports [`ExecInput::Durable`].
//!
//! Log records: one per decided batch (first = last = its agreement id), or in `sync`
//! mode one per request (several records with the same agreement id, replayed as one
//! batch). The payload is [`encode_batch`]'s format.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use dura_wal::DurablePoint;

use super::{LogMode, RuntimeError};
use crate::protocol::Batch;
use crate::service::{Executor, Outcome, Service};

/// Batches the log stage takes into one group write at most.
pub const LOG_GROUP_BATCHES_MAX: usize = 256;
/// Decided batches whose replies the exec stage may hold waiting for the log.
pub const EXEC_PENDING_BATCHES_MAX: usize = 4_096;

/// A batch the ordering protocol decided, shared by the log and exec stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedBatch {
    /// The consensus instance that decided it.
    pub agreement_id: u64,
    /// Its requests, in order.
    pub batch: Arc<Batch>,
}

/// A reply ready to leave: the exec stage hands it to the reply sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyOut {
    /// The client it goes to.
    pub client_id: u64,
    /// The sequence number of the request it answers.
    pub sequence: u64,
    /// The agreement that ordered the request.
    pub agreement_id: u64,
    /// The service's reply.
    pub reply: Vec<u8>,
}

/// What the exec stage receives.
#[derive(Debug)]
pub enum ExecInput {
    /// A decided batch to execute.
    Batch(Arc<DecidedBatch>),
    /// Every agreement up to this id is durable (parallel mode).
    Durable(u64),
    /// Resend the cached reply of an already executed request, if it is the client's
    /// last one (a retransmission that ordering recognised).
    ReplyFromCache {
        /// The client.
        client_id: u64,
        /// The request's sequence number.
        sequence: u64,
    },
}

/// The write-ahead log as the log stage sees it.
///
/// Contract: [`LogBackend::append`] queues a record and returns without waiting for the
/// disk; [`LogBackend::sync`] returns only when every record appended before it is
/// durable (it survives a crash of the machine). An error from either means the log
/// can no longer be trusted: the replica stops.
pub trait LogBackend: Send + 'static {
    /// Queues a record holding agreements `first..=last`.
    fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> Result<(), RuntimeError>;
    /// Waits until every record appended so far is durable.
    fn sync(&mut self) -> Result<(), RuntimeError>;

    /// A channel of "every record up to this point is durable", if the log
    /// reports durability by itself (group commit running on its own thread). The log
    /// stage then never blocks on [`LogBackend::sync`] in `batched` and `parallel` mode:
    /// it appends as batches arrive and releases them as the reports come. The channel
    /// disconnecting means the log failed.
    fn durable_notifications(&self) -> Option<Receiver<DurablePoint>> {
        None
    }
}

impl<T: LogBackend + ?Sized> LogBackend for Box<T> {
    fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> Result<(), RuntimeError> {
        (**self).append(first, last, payload)
    }
    fn sync(&mut self) -> Result<(), RuntimeError> {
        (**self).sync()
    }
    fn durable_notifications(&self) -> Option<Receiver<DurablePoint>> {
        (**self).durable_notifications()
    }
}

/// Appends the log payload of `batch` (decided by `agreement_id`) to `out`:
/// `u64` agreement id, `u32` part index, `u32` part count (little-endian), then
/// [`Batch::to_bytes`]'s encoding. A whole batch is part 0 of 1; `sync` mode writes a
/// batch of n requests as parts 0..n, one request each, so that replay can tell a
/// batch cut short by a crash and drop it.
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
pub fn decode_batch(input: &[u8]) -> Result<BatchPart, RuntimeError> {
    if input.len() < 16 {
        return Err(RuntimeError::Replay(format!(
            "batch record of {} bytes is too short",
            input.len()
        )));
    }
    let agreement_id = u64::from_le_bytes(input[0..8].try_into().expect("8 bytes"));
    let part_index = u32::from_le_bytes(input[8..12].try_into().expect("4 bytes"));
    let part_count = u32::from_le_bytes(input[12..16].try_into().expect("4 bytes"));
    if part_index >= part_count {
        return Err(RuntimeError::Replay(format!(
            "agreement {agreement_id}: part {part_index} of {part_count}"
        )));
    }
    let batch = Batch::from_bytes(&input[16..])
        .map_err(|error| RuntimeError::Replay(format!("agreement {agreement_id}: {error}")))?;
    Ok(BatchPart { agreement_id, part_index, part_count, batch })
}

/// Reassembles log records (payloads in log order) into whole decided batches,
/// consecutive from the first. A batch whose parts stop at the end of the log (a crash
/// during `sync` mode's writes) is dropped: none of its replies can have left.
/// Anything else out of order is an error.
pub fn reassemble(
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Vec<DecidedBatch>, RuntimeError> {
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
                    return Err(RuntimeError::Replay(format!(
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
                    return Err(RuntimeError::Replay(format!(
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

/// Runs `batch` through `executor`; returns the replies to send (fresh and cached).
pub fn execute_batch<S: Service>(
    executor: &mut Executor<S>,
    batch: &DecidedBatch,
) -> Vec<ReplyOut> {
    let outcomes = executor.execute(&batch.batch.ordered_requests());
    assert_eq!(outcomes.len(), batch.batch.requests.len(), "one outcome per request");
    let mut replies = Vec::with_capacity(outcomes.len());
    for (request, outcome) in batch.batch.requests.iter().zip(outcomes) {
        let reply = match outcome {
            Outcome::Executed(reply) | Outcome::Cached(reply) => reply,
            Outcome::Stale => continue,
        };
        replies.push(ReplyOut {
            client_id: request.client_id,
            sequence: request.sequence,
            agreement_id: batch.agreement_id,
            reply,
        });
    }
    replies
}

/// Appends decided batches to a log, one record each (the batch's encoding), checking
/// that agreement ids arrive strictly increasing.
#[derive(Debug, Default)]
struct BatchAppender {
    payload: Vec<u8>,
    last_logged: Option<u64>,
}

impl BatchAppender {
    /// Checks and records that `agreement_id` is the next one logged.
    fn admit(&mut self, agreement_id: u64) {
        assert!(
            self.last_logged.is_none_or(|last| agreement_id > last),
            "agreement ids reach the log strictly increasing ({agreement_id} after {:?})",
            self.last_logged
        );
        self.last_logged = Some(agreement_id);
    }

    /// Appends `batch` as one record (not synced).
    fn append(
        &mut self,
        backend: &mut impl LogBackend,
        batch: &DecidedBatch,
    ) -> Result<(), RuntimeError> {
        self.admit(batch.agreement_id);
        self.payload.clear();
        encode_batch(batch.agreement_id, (0, 1), &batch.batch, &mut self.payload);
        backend.append(batch.agreement_id, batch.agreement_id, &self.payload)
    }
}

/// The log stage: appends every batch it receives, syncing as `mode` says, and reports
/// durability (parallel) or forwards the batch to exec (sync, batched). Ends when its
/// input closes, after syncing what it took (the in-flight group write completes).
pub fn run_log_stage(
    mode: LogMode,
    mut backend: impl LogBackend,
    input: Receiver<Arc<DecidedBatch>>,
    exec: Sender<ExecInput>,
) -> Result<(), RuntimeError> {
    assert!(mode != LogMode::None, "no log stage runs in mode none");
    if matches!(mode, LogMode::Batched | LogMode::Parallel)
        && let Some(durable) = backend.durable_notifications()
    {
        return run_log_stage_notified(mode, backend, &durable, input, exec);
    }
    let mut group: Vec<Arc<DecidedBatch>> = Vec::with_capacity(LOG_GROUP_BATCHES_MAX);
    let mut appender = BatchAppender::default();
    while let Ok(first) = input.recv() {
        group.clear();
        group.push(first);
        while group.len() < LOG_GROUP_BATCHES_MAX {
            match input.try_recv() {
                Ok(batch) => group.push(batch),
                Err(_) => break,
            }
        }
        for batch in &group {
            if mode == LogMode::Sync && !batch.batch.requests.is_empty() {
                appender.admit(batch.agreement_id);
                let payload = &mut appender.payload;
                let parts = batch.batch.requests.len() as u32;
                for (index, request) in batch.batch.requests.iter().enumerate() {
                    payload.clear();
                    let single = Batch { requests: vec![request.clone()] };
                    encode_batch(batch.agreement_id, (index as u32, parts), &single, payload);
                    backend.append(batch.agreement_id, batch.agreement_id, payload)?;
                    backend.sync()?;
                }
            } else {
                appender.append(&mut backend, batch)?;
            }
        }
        match mode {
            LogMode::Async => {}
            LogMode::Sync => {}
            LogMode::Batched | LogMode::Parallel => backend.sync()?,
            LogMode::None => unreachable!("checked above"),
        }
        let durable_up_to = group.last().expect("group is never empty").agreement_id;
        let delivered = match mode {
            LogMode::Parallel => exec.send(ExecInput::Durable(durable_up_to)).is_ok(),
            LogMode::Sync | LogMode::Batched => {
                group.drain(..).all(|b| exec.send(ExecInput::Batch(b)).is_ok())
            }
            LogMode::Async | LogMode::None => true,
        };
        if !delivered {
            break;
        }
    }
    if mode == LogMode::Async {
        // Not needed for safety in this mode; leaves a clean log on graceful shutdown.
        backend.sync()?;
    }
    Ok(())
}

/// The log stage in `parallel` mode over a log whose durability reports go straight to
/// the exec stage ([`run_exec_stage`]'s `durable`): it only appends, so a report
/// reaches exec with one thread wake-up fewer. Ends when its input closes, after
/// syncing what it appended and telling exec that all of it is durable.
pub fn run_append_stage(
    mut backend: impl LogBackend,
    input: Receiver<Arc<DecidedBatch>>,
    exec: Sender<ExecInput>,
) -> Result<(), RuntimeError> {
    let mut appender = BatchAppender::default();
    while let Ok(batch) = input.recv() {
        appender.append(&mut backend, &batch)?;
    }
    backend.sync()?;
    if let Some(last) = appender.last_logged {
        let _ = exec.send(ExecInput::Durable(last));
    }
    Ok(())
}

/// The log stage over a log that reports durability itself: append without waiting,
/// release on each report. Waiting batches are bounded by the input queue and the
/// log's own append bound.
fn run_log_stage_notified(
    mode: LogMode,
    mut backend: impl LogBackend,
    durable: &Receiver<DurablePoint>,
    input: Receiver<Arc<DecidedBatch>>,
    exec: Sender<ExecInput>,
) -> Result<(), RuntimeError> {
    let mut appender = BatchAppender::default();
    let mut durable_up_to: Option<u64> = None;
    // Batched mode: appended, waiting to be durable before they go to exec.
    let mut waiting: VecDeque<Arc<DecidedBatch>> = VecDeque::new();
    let release = |up_to: u64, waiting: &mut VecDeque<Arc<DecidedBatch>>| -> bool {
        match mode {
            LogMode::Parallel => exec.send(ExecInput::Durable(up_to)).is_ok(),
            _ => {
                while waiting.front().is_some_and(|b| b.agreement_id <= up_to) {
                    let batch = waiting.pop_front().expect("checked non-empty");
                    if exec.send(ExecInput::Batch(batch)).is_err() {
                        return false;
                    }
                }
                true
            }
        }
    };
    loop {
        crossbeam_channel::select! {
            recv(input) -> batch => {
                let Ok(batch) = batch else { break };
                appender.append(&mut backend, &batch)?;
                if mode == LogMode::Batched {
                    waiting.push_back(batch);
                }
            }
            recv(durable) -> point => {
                let Ok(point) = point else {
                    // The log stopped on its own: find out why.
                    backend.sync()?;
                    return Err(RuntimeError::Log("durability reports stopped".into()));
                };
                // Only points past what this stage released matter (the first report
                // may be the recovered end of the log).
                let Some(last) = appender.last_logged else { continue };
                let point = point.agreement_id.min(last);
                if durable_up_to.is_none_or(|d| point > d) {
                    durable_up_to = Some(point);
                    if !release(point, &mut waiting) {
                        return Ok(());
                    }
                }
            }
        }
    }
    // Input closed (shutdown): finish the in-flight write and release what it covers.
    backend.sync()?;
    if let Some(last) = appender.last_logged
        && durable_up_to.is_none_or(|d| last > d)
    {
        release(last, &mut waiting);
    }
    Ok(())
}

/// The exec stage: executes batches in order and releases replies through `sink`, in
/// `parallel` mode only once the log reports them durable, through `input`
/// ([`ExecInput::Durable`]) or, when given, straight from the log's `durable` reports
/// (with [`run_append_stage`]). Ends when its input closes; replies still waiting for
/// the log then are dropped (their clients retransmit).
pub fn run_exec_stage<S: Service>(
    mode: LogMode,
    executor: &mut Executor<S>,
    input: Receiver<ExecInput>,
    durable: Option<Receiver<DurablePoint>>,
    mut sink: impl FnMut(ReplyOut),
) -> HeldReplies {
    let hold_for_log = mode == LogMode::Parallel;
    assert!(hold_for_log || durable.is_none(), "durability reports come only in parallel mode");
    // A disconnected report channel (the log closed) is replaced by one that never fires:
    // replies then wait for the append stage's final report through `input`.
    let mut durable = durable.unwrap_or_else(crossbeam_channel::never);
    let mut durable_up_to: Option<u64> = None;
    let mut last_executed: Option<u64> = None;
    // Each held batch: its agreement, its replies and when it was executed.
    let mut pending: VecDeque<(u64, Vec<ReplyOut>, Instant)> = VecDeque::new();
    let mut held = HeldReplies::default();
    loop {
        let message = crossbeam_channel::select! {
            recv(input) -> message => match message {
                Ok(message) => message,
                Err(_) => break,
            },
            recv(durable) -> point => match point {
                Ok(point) => ExecInput::Durable(point.agreement_id),
                Err(_) => {
                    durable = crossbeam_channel::never();
                    continue;
                }
            },
        };
        match message {
            ExecInput::Batch(batch) => {
                assert!(
                    last_executed.is_none_or(|last| batch.agreement_id > last),
                    "batches reach exec strictly increasing ({} after {last_executed:?})",
                    batch.agreement_id
                );
                last_executed = Some(batch.agreement_id);
                let replies = execute_batch(executor, &batch);
                if !hold_for_log || durable_up_to.is_some_and(|d| d >= batch.agreement_id) {
                    replies.into_iter().for_each(&mut sink);
                } else {
                    assert!(
                        pending.len() < EXEC_PENDING_BATCHES_MAX,
                        "order outran the log by too much"
                    );
                    pending.push_back((batch.agreement_id, replies, Instant::now()));
                }
            }
            ExecInput::ReplyFromCache { client_id, sequence } => {
                let Some(reply) = executor.cached_reply(client_id, sequence) else { continue };
                let out = ReplyOut {
                    client_id,
                    sequence,
                    agreement_id: last_executed.unwrap_or(0),
                    reply: reply.to_vec(),
                };
                // The request may belong to a batch still waiting for the log.
                match pending.back_mut() {
                    Some((_, replies, _)) => replies.push(out),
                    None => sink(out),
                }
            }
            ExecInput::Durable(up_to) => {
                assert!(hold_for_log, "durability reports come only in parallel mode");
                // Reports from the log and from the append stage's shutdown may repeat a
                // point; the first report may be the end of the recovered log.
                if durable_up_to.is_some_and(|d| up_to <= d) {
                    continue;
                }
                durable_up_to = Some(up_to);
                while pending.front().is_some_and(|(id, _, _)| *id <= up_to) {
                    let (_, replies, executed_at) = pending.pop_front().expect("checked non-empty");
                    held.record(executed_at.elapsed());
                    replies.into_iter().for_each(&mut sink);
                }
            }
        }
    }
    held
}

/// How long executed batches' replies waited for the log in `parallel` mode
/// ([`run_exec_stage`]'s result): the time durability adds to a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldReplies {
    /// Batches whose replies waited (released later than executed).
    pub batches: u64,
    /// Their waits added up.
    pub total: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl HeldReplies {
    fn record(&mut self, wait: Duration) {
        self.batches += 1;
        self.total += wait;
        self.max = self.max.max(wait);
    }
}

impl std::fmt::Display for HeldReplies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mean_ms = if self.batches == 0 {
            0.0
        } else {
            self.total.as_secs_f64() * 1e3 / self.batches as f64
        };
        write!(
            f,
            "replies of {} executed batches waited for the log {mean_ms:.2} ms on average, {:.2} ms at most",
            self.batches,
            self.max.as_secs_f64() * 1e3
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::thread;
    use std::time::Duration;

    use crossbeam_channel::bounded;

    use super::*;
    use crate::protocol::ClientRequest;
    use crate::service::OrderedRequest;

    /// Records each operation; replies with it.
    #[derive(Default)]
    struct Echo(Vec<Vec<u8>>);
    impl Service for Echo {
        fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Vec<Vec<u8>>) {
            for r in requests {
                self.0.push(r.operation.to_vec());
                replies.push(r.operation.to_vec());
            }
        }
        fn state_digest(&self) -> [u8; 32] {
            [self.0.len() as u8; 32]
        }
    }

    type Records = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    /// A log whose `sync` blocks until the test opens the gate; counts syncs.
    struct GatedLog {
        gate: Receiver<()>,
        records: Records,
        syncs: Arc<Mutex<u32>>,
    }
    impl LogBackend for GatedLog {
        fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> Result<(), RuntimeError> {
            assert_eq!(first, last);
            self.records.lock().expect("lock").push((first, payload.to_vec()));
            Ok(())
        }
        fn sync(&mut self) -> Result<(), RuntimeError> {
            self.gate.recv().map_err(|_| RuntimeError::Log("gate closed".into()))?;
            *self.syncs.lock().expect("lock") += 1;
            Ok(())
        }
    }

    fn batch(agreement_id: u64, client_id: u64, operations: &[&[u8]]) -> Arc<DecidedBatch> {
        let requests = operations
            .iter()
            .enumerate()
            .map(|(i, op)| ClientRequest {
                client_id: client_id + i as u64,
                sequence: agreement_id,
                operation: op.to_vec(),
                authenticator: vec![[i as u8; 32]],
            })
            .collect();
        Arc::new(DecidedBatch { agreement_id, batch: Arc::new(Batch { requests }) })
    }

    struct Pipeline {
        to_log: Sender<Arc<DecidedBatch>>,
        to_exec: Sender<ExecInput>,
        gate: Sender<()>,
        replies: Receiver<ReplyOut>,
        syncs: Arc<Mutex<u32>>,
        records: Records,
        exec: thread::JoinHandle<HeldReplies>,
    }

    fn pipeline(mode: LogMode) -> Pipeline {
        let (gate_tx, gate_rx) = bounded(0);
        let records = Arc::new(Mutex::new(Vec::new()));
        let syncs = Arc::new(Mutex::new(0));
        let backend = GatedLog { gate: gate_rx, records: records.clone(), syncs: syncs.clone() };
        let (to_log, log_rx) = bounded(16);
        let (to_exec, exec_rx) = bounded(16);
        let (reply_tx, replies) = bounded(64);
        let exec_for_log = to_exec.clone();
        thread::spawn(move || run_log_stage(mode, backend, log_rx, exec_for_log));
        let exec = thread::spawn(move || {
            let mut executor = Executor::new(Echo::default());
            run_exec_stage(mode, &mut executor, exec_rx, None, |reply| {
                let _ = reply_tx.send(reply);
            })
        });
        Pipeline { to_log, to_exec, gate: gate_tx, replies, syncs, records, exec }
    }

    #[test]
    fn parallel_mode_sends_no_reply_while_the_log_write_is_held_back() {
        let p = pipeline(LogMode::Parallel);
        let b = batch(1, 10, &[b"x", b"y"]);
        p.to_log.send(b.clone()).expect("log stage runs");
        p.to_exec.send(ExecInput::Batch(b)).expect("exec stage runs");
        // The batch executes, but its log sync is held: no reply may leave.
        assert!(
            p.replies.recv_timeout(Duration::from_millis(300)).is_err(),
            "a reply left before the log was durable"
        );
        p.gate.send(()).expect("the log waits on the gate");
        let first = p.replies.recv_timeout(Duration::from_secs(10)).expect("released after sync");
        let second = p.replies.recv_timeout(Duration::from_secs(10)).expect("released after sync");
        assert_eq!((first.client_id, first.reply.as_slice()), (10, &b"x"[..]));
        assert_eq!((second.client_id, second.agreement_id), (11, 1));
        assert_eq!(*p.syncs.lock().expect("lock"), 1);
        drop(p.to_log);
        drop(p.to_exec);
        // The exec stage counts the wait it imposed: one batch, held at least as long
        // as the gate stayed shut.
        let held = p.exec.join().expect("exec stage ends when its inputs close");
        assert_eq!(held.batches, 1);
        assert!(held.max >= Duration::from_millis(300) && held.total == held.max, "{held:?}");
    }

    #[test]
    fn batched_mode_executes_only_after_the_group_is_durable() {
        let p = pipeline(LogMode::Batched);
        p.to_log.send(batch(1, 1, &[b"a"])).expect("log stage runs");
        p.to_log.send(batch(2, 1, &[b"b"])).expect("log stage runs");
        assert!(
            p.replies.recv_timeout(Duration::from_millis(300)).is_err(),
            "a reply left before the log was durable"
        );
        p.gate.send(()).expect("sync");
        let got = p.replies.recv_timeout(Duration::from_secs(10)).expect("reply");
        assert_eq!(got.reply, b"a");
        // The second batch may have been in the same group or needs a second sync.
        if p.replies.recv_timeout(Duration::from_millis(200)).is_err() {
            p.gate.send(()).expect("second sync");
            assert_eq!(p.replies.recv_timeout(Duration::from_secs(10)).expect("reply").reply, b"b");
        }
        assert_eq!(p.records.lock().expect("lock").len(), 2);
    }

    #[test]
    fn sync_mode_writes_and_syncs_once_per_request() {
        let p = pipeline(LogMode::Sync);
        p.to_log.send(batch(5, 1, &[b"a", b"b", b"c"])).expect("log stage runs");
        for _ in 0..3 {
            assert!(p.replies.try_recv().is_err(), "no reply before all of its batch is durable");
            p.gate.send(()).expect("one sync per request");
        }
        for expected in [&b"a"[..], b"b", b"c"] {
            assert_eq!(
                p.replies.recv_timeout(Duration::from_secs(10)).expect("reply").reply,
                expected
            );
        }
        // An agreement with no request still gets a record, or replay would see a gap.
        p.to_log.send(batch(6, 1, &[])).expect("log stage runs");
        p.to_log.send(batch(7, 1, &[b"d"])).expect("log stage runs");
        p.gate.send(()).expect("one sync for the one request");
        assert_eq!(p.replies.recv_timeout(Duration::from_secs(10)).expect("reply").reply, b"d");
        let records = p.records.lock().expect("lock").clone();
        let replayed =
            reassemble(records.iter().map(|(_, payload)| payload.clone())).expect("valid");
        assert_eq!(replayed.iter().map(|b| b.agreement_id).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_eq!(records.len(), 5);
        let decoded = decode_batch(&records[1].1).expect("valid record");
        assert_eq!(decoded.agreement_id, 5);
        assert_eq!(decoded.batch.requests[0].operation, b"b");
    }

    #[test]
    fn batch_record_round_trips_and_rejects_garbage() {
        let b = batch(42, 7, &[b"one", b"", b"three"]);
        let mut bytes = Vec::new();
        encode_batch(b.agreement_id, (0, 1), &b.batch, &mut bytes);
        let part = decode_batch(&bytes).expect("valid");
        assert_eq!((part.agreement_id, part.part_index, part.part_count), (42, 0, 1));
        assert_eq!(&part.batch, b.batch.as_ref());
        for cut in 0..bytes.len() {
            assert!(decode_batch(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err());
    }

    #[test]
    fn replay_drops_a_sync_batch_cut_short_and_rejects_gaps() {
        let record = |id: u64, part: (u32, u32), ops: &[&[u8]]| {
            let mut bytes = Vec::new();
            encode_batch(id, part, &batch(id, 1, ops).batch, &mut bytes);
            bytes
        };
        let log = vec![
            record(1, (0, 1), &[b"a", b"b"]),
            record(2, (0, 2), &[b"c"]),
            record(2, (1, 2), &[b"d"]),
            record(3, (0, 3), &[b"e"]),
            record(3, (1, 3), &[b"f"]),
        ];
        let batches = reassemble(log.clone()).expect("valid log");
        assert_eq!(batches.iter().map(|b| b.agreement_id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(batches[1].batch.requests.len(), 2);
        let gap = vec![log[0].clone(), record(3, (0, 1), &[b"x"])];
        assert!(reassemble(gap).is_err());
        let interleaved = vec![log[1].clone(), record(3, (0, 1), &[b"x"])];
        assert!(reassemble(interleaved).is_err());
    }

    /// A log that reports durability on its own channel, driven by the test.
    struct NotifyingLog {
        points: Receiver<DurablePoint>,
        appended: Sender<u64>,
    }
    impl LogBackend for NotifyingLog {
        fn append(&mut self, first: u64, _last: u64, _payload: &[u8]) -> Result<(), RuntimeError> {
            let _ = self.appended.send(first);
            Ok(())
        }
        fn sync(&mut self) -> Result<(), RuntimeError> {
            Ok(())
        }
        fn durable_notifications(&self) -> Option<Receiver<DurablePoint>> {
            Some(self.points.clone())
        }
    }

    #[test]
    fn with_a_self_reporting_log_replies_wait_for_its_durability_report() {
        // Reports through the log stage, and straight to exec (append-only log stage).
        for reports_to_exec in [false, true] {
            replies_wait_for_reports(reports_to_exec);
        }
    }

    fn replies_wait_for_reports(reports_to_exec: bool) {
        let (point_tx, points) = bounded(4);
        let (appended, appended_rx) = bounded(16);
        let (to_log, log_rx) = bounded(16);
        let (to_exec, exec_rx) = bounded(16);
        let (reply_tx, replies) = bounded(16);
        let exec_for_log = to_exec.clone();
        let backend = NotifyingLog { points, appended };
        let durable = reports_to_exec.then(|| backend.points.clone());
        thread::spawn(move || {
            if reports_to_exec {
                run_append_stage(backend, log_rx, exec_for_log)
            } else {
                run_log_stage(LogMode::Parallel, backend, log_rx, exec_for_log)
            }
        });
        thread::spawn(move || {
            let mut executor = Executor::new(Echo::default());
            run_exec_stage(LogMode::Parallel, &mut executor, exec_rx, durable, |reply| {
                let _ = reply_tx.send(reply);
            });
        });
        for id in [1, 2] {
            let b = batch(id, 10 * id, &[b"op"]);
            to_log.send(b.clone()).expect("log stage runs");
            to_exec.send(ExecInput::Batch(b)).expect("exec stage runs");
        }
        assert_eq!(appended_rx.recv_timeout(Duration::from_secs(10)).expect("appended"), 1);
        assert_eq!(appended_rx.recv_timeout(Duration::from_secs(10)).expect("appended"), 2);
        assert!(
            replies.recv_timeout(Duration::from_millis(300)).is_err(),
            "no reply before a report"
        );
        point_tx.send(DurablePoint { record_seq: 1, agreement_id: 1 }).expect("report");
        assert_eq!(replies.recv_timeout(Duration::from_secs(10)).expect("reply").agreement_id, 1);
        assert!(
            replies.recv_timeout(Duration::from_millis(300)).is_err(),
            "agreement 2 is not durable yet"
        );
        point_tx.send(DurablePoint { record_seq: 2, agreement_id: 2 }).expect("report");
        assert_eq!(replies.recv_timeout(Duration::from_secs(10)).expect("reply").agreement_id, 2);
    }
}
