//! The tuple space (Durable DepSpace, `dura-tuplespace`) under load: its workloads as
//! [`OpStream`]s the driver runs, each checking every reply it gets.
//!
//! - `dds`, the paper's (section 5): 100% `out` of random tuples of four string fields,
//!   `value_bytes` in all (1 KiB), no lease. The space grows by one tuple per request.
//! - `queue`: each client alternates `out(('job', id, payload))` and
//!   `in(('job', *int, *str))`, taking the oldest job of any client. Its own job was
//!   written before its `in`, so the space always holds one and the `in` never waits.
//! - `lock`: `cas(('lock', k, *int), ('lock', k, me), lease)` on a lock `k` of
//!   `records` (chosen by the run's distribution); when it answers ok the lock is held
//!   and the next operation is `inp(('lock', k, me))`, the release. The lease
//!   ([`LOCK_LEASE_MS`]) frees a lock whose holder went away.
//!
//! A reply the operation may not have is an error, and [`Reply::Rejected`] (the space
//! refused the request) is one with the space's reason, so the run reports it.
//!
//! A service reaches the streams through [`TsConnect`] (one [`TsTarget`] per client),
//! wrapped in [`TupleSpaceFactory`]; [`MemoryTupleSpace`] is an in-process space for
//! tests of the generators and checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dura_tuplespace::{ExecCtx, Field, Op, Reply, Template, TemplateField, Tuple, TupleSpace};

use crate::driver::{OpStream, RunSpec, client_seed};
use crate::target::{KvTarget, TargetError, TargetFactory};
use crate::workload::{KeyChooser, KeySpace, OpKind, Rng, WorkloadName};

/// Fields of a `dds` tuple (the paper: four strings).
pub const DDS_FIELDS: usize = 4;
/// The lease of a `lock` token, ms: a lock whose holder went away frees itself.
pub const LOCK_LEASE_MS: u64 = 10_000;
/// Characters of the random strings (64, so one byte of randomness picks one).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// One client's connection to a tuple space: a call blocks until the operation is
/// answered (for a replicated space: by a quorum, durably when the cluster logs).
pub trait TsTarget: Send {
    /// Issues `op`; its reply, or why there was none.
    fn call(&mut self, op: &Op) -> Result<Reply, TargetError>;
}

/// Opens one [`TsTarget`] per client thread.
pub trait TsConnect: Send + Sync {
    /// A new connection for client number `client_index`.
    fn connect_ts(&self, client_index: usize) -> Result<Box<dyn TsTarget>, TargetError>;
}

/// A tuple space as the driver's [`TargetFactory`]: the tuple space workloads, and a
/// `count` as the readiness probe. It has no key-value interface, so the key-value
/// workloads and experiments are refused.
#[derive(Debug)]
pub struct TupleSpaceFactory<C>(pub C);

impl<C: TsConnect> TargetFactory for TupleSpaceFactory<C> {
    fn connect(&self, _client_index: usize) -> Result<Box<dyn KvTarget>, TargetError> {
        Err(TargetError {
            operation: "connect",
            reason: "the tuple space is not a key-value store (a key-value workload or \
                     experiment against --service tuplespace)"
                .into(),
        })
    }

    fn op_stream(
        &self,
        client_index: usize,
        spec: &RunSpec,
        key_space: &Arc<KeySpace>,
    ) -> Result<Box<dyn OpStream>, TargetError> {
        let target = self.0.connect_ts(client_index)?;
        Ok(Box::new(TsStream::new(target, spec, key_space, client_index)?))
    }

    fn probe(&self) -> Result<(), TargetError> {
        let mut target = self.0.connect_ts(0)?;
        let template =
            Template::new(vec![TemplateField::Exact(Field::Str("dura-bench:ready".into()))])
                .map_err(|error| invalid("count", error))?;
        match target.call(&Op::Count { template })? {
            Reply::Count(_) => Ok(()),
            other => Err(unexpected("count", &other)),
        }
    }
}

fn invalid(operation: &'static str, error: impl std::fmt::Display) -> TargetError {
    TargetError { operation, reason: format!("invalid operation: {error}") }
}

/// The error for a reply `operation` may not have; a refusal says the space's reason.
fn unexpected(operation: &'static str, reply: &Reply) -> TargetError {
    let reason = match reply {
        Reply::Rejected(reason) => format!("rejected: {reason}"),
        other => format!("unexpected reply {other:?}"),
    };
    TargetError { operation, reason }
}

/// What a client does next.
#[derive(Debug)]
enum Next {
    /// `dds`: an `out`.
    Dds,
    /// `queue`: `out` of a job, or `in` of any job.
    QueueOut,
    /// See [`Next::QueueOut`].
    QueueIn,
    /// `lock`: try to take a lock.
    LockTake,
    /// `lock`: release lock `key`, held.
    LockRelease { key: u64 },
}

/// One client's stream of a tuple space workload.
pub struct TsStream {
    target: Box<dyn TsTarget>,
    next: Next,
    rng: Rng,
    /// Each string field's length (`dds`: four summing to `value_bytes`; `queue`: the
    /// job's payload).
    field_bytes: Vec<usize>,
    /// This client's number, in its jobs' ids and its lock tokens.
    client: i64,
    /// Jobs this client wrote.
    jobs: i64,
    key_space: Arc<KeySpace>,
    chooser: KeyChooser,
}

impl std::fmt::Debug for TsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsStream").field("next", &self.next).finish_non_exhaustive()
    }
}

/// Splits `total` bytes into `parts` lengths differing by at most one.
fn split_bytes(total: usize, parts: usize) -> Vec<usize> {
    (0..parts).map(|part| total / parts + usize::from(part < total % parts)).collect()
}

impl TsStream {
    /// Client `client`'s stream of `spec` (a tuple space workload) over `target`;
    /// `lock` picks its locks among `key_space`'s records.
    pub fn new(
        target: Box<dyn TsTarget>,
        spec: &RunSpec,
        key_space: &Arc<KeySpace>,
        client: usize,
    ) -> Result<Self, TargetError> {
        let (next, field_bytes) = match spec.workload {
            WorkloadName::Dds => (Next::Dds, split_bytes(spec.value_bytes, DDS_FIELDS)),
            WorkloadName::Queue => (Next::QueueOut, vec![spec.value_bytes]),
            WorkloadName::Lock => (Next::LockTake, Vec::new()),
            other => {
                return Err(TargetError {
                    operation: "connect",
                    reason: format!(
                        "workload {other:?} is a key-value workload, not the tuple space's"
                    ),
                });
            }
        };
        Ok(Self {
            target,
            next,
            rng: Rng::new(client_seed(spec.seed, client)),
            field_bytes,
            client: client as i64,
            jobs: 0,
            key_space: key_space.clone(),
            chooser: KeyChooser::new(spec.distribution, key_space.records()),
        })
    }

    /// A random string of `bytes` characters.
    fn random_string(&mut self, bytes: usize) -> String {
        let mut text = Vec::with_capacity(bytes + 8);
        while text.len() < bytes {
            let word = self.rng.next_u64();
            text.extend(word.to_le_bytes().iter().map(|byte| ALPHABET[usize::from(byte & 63)]));
        }
        text.truncate(bytes);
        String::from_utf8(text).expect("the alphabet is ASCII")
    }

    /// A `dds` tuple: four random strings of the field lengths.
    pub fn dds_tuple(&mut self) -> Result<Tuple, TargetError> {
        let lengths = self.field_bytes.clone();
        let fields = lengths.into_iter().map(|bytes| Field::Str(self.random_string(bytes)));
        Tuple::new(fields.collect()).map_err(|error| invalid("out", error))
    }

    fn out(&mut self, tuple: Tuple) -> Result<(), TargetError> {
        match self.target.call(&Op::Out { tuple, lease_ms: None })? {
            Reply::Ok => Ok(()),
            other => Err(unexpected("out", &other)),
        }
    }

    fn queue_out(&mut self) -> Result<(), TargetError> {
        self.jobs += 1;
        let id = (self.client << 40) | self.jobs;
        let payload = self.random_string(self.field_bytes[0]);
        let tuple = Tuple::new(vec![Field::Str("job".into()), Field::Int(id), Field::Str(payload)])
            .map_err(|error| invalid("out", error))?;
        self.out(tuple)
    }

    fn queue_in(&mut self) -> Result<(), TargetError> {
        let template = Template::new(vec![
            TemplateField::Exact(Field::Str("job".into())),
            TemplateField::AnyOf(dura_tuplespace::FieldType::Int),
            TemplateField::AnyOf(dura_tuplespace::FieldType::Str),
        ])
        .map_err(|error| invalid("in", error))?;
        match self.target.call(&Op::In { template: template.clone() })? {
            Reply::Tuple(job) if template.matches(&job) => Ok(()),
            other => Err(unexpected("in", &other)),
        }
    }

    fn lock_template(key: u64, holder: Option<i64>) -> Result<Template, TargetError> {
        let holder = match holder {
            Some(holder) => TemplateField::Exact(Field::Int(holder)),
            None => TemplateField::AnyOf(dura_tuplespace::FieldType::Int),
        };
        Template::new(vec![
            TemplateField::Exact(Field::Str("lock".into())),
            TemplateField::Exact(Field::Int(key as i64)),
            holder,
        ])
        .map_err(|error| invalid("cas", error))
    }

    /// Tries to take a lock: held (the next operation releases it), or another
    /// client's (the next operation tries another).
    fn lock_take(&mut self) -> Result<(), TargetError> {
        let records = self.key_space.records();
        let key = self.chooser.next(&mut self.rng, records);
        let template = Self::lock_template(key, None)?;
        let token = Tuple::new(vec![
            Field::Str("lock".into()),
            Field::Int(key as i64),
            Field::Int(self.client),
        ])
        .map_err(|error| invalid("cas", error))?;
        let op =
            Op::Cas { template: template.clone(), tuple: token, lease_ms: Some(LOCK_LEASE_MS) };
        match self.target.call(&op)? {
            Reply::Ok => {
                self.next = Next::LockRelease { key };
                Ok(())
            }
            Reply::Tuple(holder) if template.matches(&holder) => Ok(()),
            other => Err(unexpected("cas", &other)),
        }
    }

    /// Releases held lock `key` (not found: its lease ran out first).
    fn lock_release(&mut self, key: u64) -> Result<(), TargetError> {
        self.next = Next::LockTake;
        let template = Self::lock_template(key, Some(self.client))?;
        match self.target.call(&Op::Inp { template: template.clone() })? {
            Reply::Tuple(token) if template.matches(&token) => Ok(()),
            Reply::NotFound => Ok(()),
            other => Err(unexpected("inp", &other)),
        }
    }
}

impl OpStream for TsStream {
    fn issue(&mut self) -> (OpKind, Result<(), TargetError>) {
        match self.next {
            Next::Dds => (OpKind::Out, self.dds_tuple().and_then(|tuple| self.out(tuple))),
            Next::QueueOut => {
                self.next = Next::QueueIn;
                (OpKind::Out, self.queue_out())
            }
            Next::QueueIn => {
                self.next = Next::QueueOut;
                (OpKind::In, self.queue_in())
            }
            Next::LockTake => (OpKind::Cas, self.lock_take()),
            Next::LockRelease { key } => (OpKind::Inp, self.lock_release(key)),
        }
    }
}

/// An in-process tuple space shared by all clients (no replication, no log), for
/// tests of the workloads and checks. A request that would wait (an `in` with no
/// match) fails: nothing else could run while it waits.
#[derive(Debug, Default, Clone)]
pub struct MemoryTupleSpace {
    space: Arc<Mutex<TupleSpace>>,
    next_client_id: Arc<AtomicU64>,
}

impl MemoryTupleSpace {
    /// An empty space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tuples stored now.
    pub fn len(&self) -> usize {
        self.space.lock().expect("memory tuple space lock").len()
    }

    /// Whether it stores no tuple.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct MemoryTsClient {
    space: Arc<Mutex<TupleSpace>>,
    client_id: u64,
    sequence: u64,
}

impl TsTarget for MemoryTsClient {
    fn call(&mut self, op: &Op) -> Result<Reply, TargetError> {
        self.sequence += 1;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let ctx =
            ExecCtx { client_id: self.client_id, sequence: self.sequence, now_ms: now_ms as u64 };
        let bytes = dura_tuplespace::encode_op(op);
        let answers =
            self.space.lock().expect("memory tuple space lock").execute_typed(ctx, &bytes);
        match answers.into_iter().next() {
            Some(own) if own.client_id == ctx.client_id && own.sequence == ctx.sequence => {
                Ok(own.reply)
            }
            _ => Err(TargetError {
                operation: "call",
                reason: "the request waits, which the in-process space cannot".into(),
            }),
        }
    }
}

impl TsConnect for MemoryTupleSpace {
    fn connect_ts(&self, _client_index: usize) -> Result<Box<dyn TsTarget>, TargetError> {
        let client_id = self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Box::new(MemoryTsClient { space: self.space.clone(), client_id, sequence: 0 }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;
    use crate::driver::{self, no_progress};
    use crate::workload::Distribution;

    fn spec(workload: WorkloadName, clients: usize) -> RunSpec {
        RunSpec {
            workload,
            distribution: Distribution::Uniform,
            clients,
            target_rate: None,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(600),
            records: 8,
            value_bytes: 1024,
            scan_length_max: 1,
            seed: 1,
            trace_ops: false,
        }
    }

    fn stream(workload: WorkloadName, target: Box<dyn TsTarget>) -> TsStream {
        let spec = spec(workload, 1);
        TsStream::new(target, &spec, &KeySpace::new(spec.records), 0).expect("a stream")
    }

    #[test]
    fn a_dds_tuple_is_four_random_strings_of_value_bytes_in_all() {
        let memory = MemoryTupleSpace::new();
        let mut dds = stream(WorkloadName::Dds, memory.connect_ts(0).expect("connect"));
        let first = dds.dds_tuple().expect("tuple");
        let second = dds.dds_tuple().expect("tuple");
        assert_eq!(first.arity(), DDS_FIELDS);
        let lengths: Vec<usize> = first
            .fields()
            .iter()
            .map(|field| match field {
                Field::Str(text) => text.len(),
                other => panic!("not a string: {other:?}"),
            })
            .collect();
        assert_eq!(lengths, [256, 256, 256, 256]);
        assert_ne!(first, second);
        assert_eq!(split_bytes(1027, 4), [257, 257, 257, 256]);
    }

    #[test]
    fn each_workload_runs_against_a_space_with_its_operations_and_no_error() {
        let stop = AtomicBool::new(false);
        for (workload, kinds) in [
            (WorkloadName::Dds, vec![OpKind::Out]),
            (WorkloadName::Queue, vec![OpKind::Out, OpKind::In]),
            (WorkloadName::Lock, vec![OpKind::Cas, OpKind::Inp]),
        ] {
            let memory = MemoryTupleSpace::new();
            let factory = TupleSpaceFactory(memory.clone());
            factory.probe().expect("probe");
            let result =
                driver::run(&factory, &spec(workload, 3), &stop, &mut no_progress).expect("run");
            assert_eq!(result.errors, 0, "{workload:?}: {:?}", result.error_reasons);
            assert!(!result.all.is_empty(), "{workload:?}");
            assert_eq!(result.by_kind.keys().copied().collect::<Vec<_>>(), kinds, "{workload:?}");
            match workload {
                // Every out stored a tuple (the warmup's too).
                WorkloadName::Dds => assert!(memory.len() as u64 >= result.all.len()),
                // Each client leaves at most its one job between its out and its in.
                WorkloadName::Queue => assert!(memory.len() <= 3, "{}", memory.len()),
                // At most one token per lock.
                _ => assert!(memory.len() <= 8, "{}", memory.len()),
            }
        }
    }

    #[test]
    fn a_lock_once_taken_is_released_by_its_holder_and_a_held_one_is_not_taken() {
        let memory = MemoryTupleSpace::new();
        let mut spec = spec(WorkloadName::Lock, 2);
        spec.records = 1;
        let keys = KeySpace::new(1);
        let mut a = TsStream::new(memory.connect_ts(0).expect("a"), &spec, &keys, 0).expect("a");
        let mut b = TsStream::new(memory.connect_ts(1).expect("b"), &spec, &keys, 1).expect("b");
        assert!(a.issue().1.is_ok());
        assert!(matches!(a.next, Next::LockRelease { key: 0 }));
        // b finds a's token: not taken, b tries again next.
        assert!(b.issue().1.is_ok());
        assert!(matches!(b.next, Next::LockTake));
        assert_eq!(memory.len(), 1);
        assert_eq!(a.issue().0, OpKind::Inp);
        assert_eq!(memory.len(), 0);
        assert!(b.issue().1.is_ok());
        assert!(matches!(b.next, Next::LockRelease { key: 0 }));
    }

    /// A space that refuses everything.
    struct Refusing;

    impl TsTarget for Refusing {
        fn call(&mut self, _: &Op) -> Result<Reply, TargetError> {
            Ok(Reply::Rejected("bound reached".into()))
        }
    }

    struct RefusingFactory;

    impl TsConnect for RefusingFactory {
        fn connect_ts(&self, _: usize) -> Result<Box<dyn TsTarget>, TargetError> {
            Ok(Box::new(Refusing))
        }
    }

    #[test]
    fn a_refusal_is_an_error_and_the_run_reports_its_reason() {
        let (kind, outcome) = stream(WorkloadName::Dds, Box::new(Refusing)).issue();
        assert_eq!(kind, OpKind::Out);
        let error = outcome.expect_err("a refusal is an error");
        assert_eq!(error.to_string(), "out failed: rejected: bound reached");
        let stop = AtomicBool::new(false);
        let factory = TupleSpaceFactory(RefusingFactory);
        let result = driver::run(&factory, &spec(WorkloadName::Queue, 2), &stop, &mut no_progress)
            .expect("run");
        assert!(result.all.is_empty());
        assert!(result.errors > 0);
        // The queue's out and in are both refused, each under its own reason.
        let reasons: Vec<&str> = result.error_reasons.keys().map(String::as_str).collect();
        assert_eq!(
            reasons,
            ["in failed: rejected: bound reached", "out failed: rejected: bound reached"]
        );
        assert_eq!(result.error_reasons.values().sum::<u64>(), result.errors);
    }

    #[test]
    fn key_value_workloads_are_refused_by_the_tuple_space_and_the_other_way_round() {
        let factory = TupleSpaceFactory(MemoryTupleSpace::new());
        let keys = KeySpace::new(8);
        assert!(factory.op_stream(0, &spec(WorkloadName::W, 1), &keys).is_err());
        assert!(factory.connect(0).is_err());
        let kv = crate::target::MemoryTarget::new();
        assert!(kv.op_stream(0, &spec(WorkloadName::Dds, 1), &keys).is_err());
    }
}
