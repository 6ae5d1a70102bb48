//! The load driver: N client threads issuing a workload against a [`TargetFactory`],
//! closed loop (each client sends its next operation when the last one completed) or
//! open loop at a target rate.
//!
//! The driver knows no service: each client is an [`OpStream`] (made by
//! [`TargetFactory::op_stream`]) that generates its next operation, issues it and
//! checks the reply. [`KvStream`] is the key-value store's (YCSB's generator over a
//! [`KvTarget`]); the tuple space's is in [`crate::tuplespace`].
//!
//! Open loop avoids coordinated omission: each operation has an intended send time on a
//! fixed schedule, and its latency is measured from that time, not from when the client
//! got round to sending it. A store that stalls therefore shows the whole queueing
//! delay it caused, as a user arriving at that rate would have seen it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dura_core::rng::GOLDEN_GAMMA;
use hdrhistogram::Histogram;

use crate::target::{KvTarget, TargetError, TargetFactory};
use crate::workload::{
    Distribution, KeySpace, Op, OpGenerator, OpKind, WorkloadName, fill_value, key_bytes,
};

/// Largest latency a histogram holds: one hour, in microseconds. Longer ones saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits of every latency histogram.
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;
/// How often the driver's control loop wakes to check the clock, the stop flag and
/// report progress.
const CONTROL_TICK: Duration = Duration::from_millis(100);
/// Distinct error reasons a run keeps (with their counts); the rest are counted under
/// [`OTHER_ERRORS`].
pub const ERROR_REASONS_MAX: usize = 8;
/// The reason under which errors past [`ERROR_REASONS_MAX`] distinct ones are counted.
pub const OTHER_ERRORS: &str = "(other reasons)";

/// One client's operations against the service under test.
pub trait OpStream: Send {
    /// Generates the next operation, issues it and waits for its reply: the
    /// operation's kind, and `Err` when it failed or its reply was not one the
    /// operation may have (a refusal included).
    fn issue(&mut self) -> (OpKind, Result<(), TargetError>);
}

/// The key-value workloads (the paper's `w`, YCSB A-F) as an [`OpStream`]: YCSB's
/// generator over one [`KvTarget`].
pub struct KvStream {
    target: Box<dyn KvTarget>,
    generator: OpGenerator,
    value_bytes: usize,
    value: Vec<u8>,
}

impl std::fmt::Debug for KvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStream").field("generator", &self.generator).finish_non_exhaustive()
    }
}

impl KvStream {
    /// Client `client`'s stream of `spec` over `target`, its keys in `key_space`
    /// (shared by every client of the run). Refuses a tuple space workload.
    pub fn new(
        target: Box<dyn KvTarget>,
        spec: &RunSpec,
        key_space: &Arc<KeySpace>,
        client: usize,
    ) -> Result<Self, TargetError> {
        if spec.workload.mix().is_none() {
            return Err(TargetError {
                operation: "connect",
                reason: format!(
                    "workload {:?} runs against the {}, not the key-value store",
                    spec.workload,
                    spec.workload.service()
                ),
            });
        }
        let generator = OpGenerator::new(
            spec.workload,
            spec.distribution,
            key_space.clone(),
            spec.scan_length_max,
            client_seed(spec.seed, client),
        );
        let value = Vec::with_capacity(spec.value_bytes);
        Ok(Self { target, generator, value_bytes: spec.value_bytes, value })
    }
}

impl OpStream for KvStream {
    fn issue(&mut self) -> (OpKind, Result<(), TargetError>) {
        let op = self.generator.next_op();
        let outcome = execute(
            self.target.as_mut(),
            &mut self.generator,
            op,
            self.value_bytes,
            &mut self.value,
        );
        (op.kind(), outcome)
    }
}

/// The seed of client `client`'s operation stream in a run seeded with `seed`.
pub fn client_seed(seed: u64, client: usize) -> u64 {
    seed ^ (client as u64).wrapping_mul(GOLDEN_GAMMA)
}

/// A new, empty latency histogram (microseconds).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_SIGNIFICANT_DIGITS)
        .expect("the latency histogram bounds are valid")
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The operation mix.
    pub workload: WorkloadName,
    /// How keys are chosen.
    pub distribution: Distribution,
    /// Client threads.
    pub clients: usize,
    /// Open loop at this total rate (operations per second); `None`: closed loop.
    pub target_rate: Option<f64>,
    /// Time run but not measured, first.
    pub warmup: Duration,
    /// Time measured, after the warmup.
    pub duration: Duration,
    /// Records loaded before the run (keys 0..records).
    pub records: u64,
    /// Bytes per written value.
    pub value_bytes: usize,
    /// YCSB E: scan lengths are uniform in 1..=scan_length_max.
    pub scan_length_max: u64,
    /// Seed of every client's operation stream.
    pub seed: u64,
    /// Keep every measured operation's send and completion time in
    /// [`RunResult::ops`] (for timelines finer than a second).
    pub trace_ops: bool,
}

/// One measured operation's span, in microseconds since the measured window began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSpan {
    /// When it was sent (open loop: when it was due).
    pub sent_us: u64,
    /// When it completed.
    pub done_us: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Latency (µs) of every measured operation.
    pub all: Histogram<u64>,
    /// Latency (µs) per operation kind, only kinds that occurred.
    pub by_kind: BTreeMap<OpKind, Histogram<u64>>,
    /// Operations completed in each second of the measured window.
    pub per_second: Vec<u64>,
    /// Operations that failed (not in the histograms).
    pub errors: u64,
    /// Why they failed: each distinct reason (at most [`ERROR_REASONS_MAX`], then
    /// [`OTHER_ERRORS`]) with its count.
    pub error_reasons: BTreeMap<String, u64>,
    /// The measured window's length.
    pub measured: Duration,
    /// Whether the run was cut short by the stop flag.
    pub interrupted: bool,
    /// Seconds the load phase before the run took (0 when there was none); set by
    /// the caller that loaded.
    pub load_s: f64,
    /// When the measured window began.
    pub measure_start: Instant,
    /// Every measured operation that succeeded, when [`RunSpec::trace_ops`] asked for
    /// them (empty otherwise), in no particular order.
    pub ops: Vec<OpSpan>,
}

impl RunResult {
    /// Measured operations per second.
    pub fn ops_per_s(&self) -> f64 {
        let seconds = self.measured.as_secs_f64();
        if seconds <= 0.0 { 0.0 } else { self.all.len() as f64 / seconds }
    }
}

/// Progress callback: (time elapsed, total time of the phase).
pub type Progress<'a> = &'a mut dyn FnMut(Duration, Duration);

/// Loads records `0..records` with `value_bytes`-byte values using `clients` threads.
/// Stops early (returning `Ok(false)`) when `stop` is set.
pub fn load(
    factory: &dyn TargetFactory,
    records: u64,
    value_bytes: usize,
    clients: usize,
    stop: &AtomicBool,
    progress: Progress<'_>,
) -> Result<bool, TargetError> {
    assert!(clients > 0);
    let clients = clients.min(records.max(1) as usize);
    let next_record = AtomicU64::new(0);
    let mut targets = Vec::with_capacity(clients);
    for client in 0..clients {
        targets.push(factory.connect(client)?);
    }
    let outcome: Result<(), TargetError> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .into_iter()
            .map(|mut target| {
                let next_record = &next_record;
                scope.spawn(move || -> Result<(), TargetError> {
                    let mut value = Vec::with_capacity(value_bytes);
                    while !stop.load(Ordering::Relaxed) {
                        let record = next_record.fetch_add(1, Ordering::Relaxed);
                        if record >= records {
                            break;
                        }
                        fill_value(record, 0, value_bytes, &mut value);
                        target.put(&key_bytes(record), &value)?;
                    }
                    Ok(())
                })
            })
            .collect();
        // Progress in records, reported as a fraction of one "second" per record.
        while !handles.iter().all(|handle| handle.is_finished()) {
            let done = next_record.load(Ordering::Relaxed).min(records);
            progress(Duration::from_millis(done), Duration::from_millis(records));
            std::thread::sleep(CONTROL_TICK);
        }
        for handle in handles {
            handle.join().expect("a load client panicked")?;
        }
        Ok(())
    });
    outcome?;
    Ok(!stop.load(Ordering::Relaxed))
}

/// One client's measurements.
struct ClientTally {
    by_kind: BTreeMap<OpKind, Histogram<u64>>,
    per_second: Vec<u64>,
    errors: u64,
    error_reasons: BTreeMap<String, u64>,
    ops: Vec<OpSpan>,
}

/// Counts `count` errors for `reason` in `reasons`, keeping at most
/// [`ERROR_REASONS_MAX`] distinct reasons besides [`OTHER_ERRORS`].
fn count_error(reasons: &mut BTreeMap<String, u64>, reason: String, count: u64) {
    let known = reasons.contains_key(&reason);
    let distinct = reasons.len() - usize::from(reasons.contains_key(OTHER_ERRORS));
    let key = if known || distinct < ERROR_REASONS_MAX { reason } else { OTHER_ERRORS.into() };
    *reasons.entry(key).or_insert(0) += count;
}

/// Runs `spec` against `factory`. Returns when the warmup and measured window have
/// passed or `stop` is set. Each client opens its own connection first; a failed
/// connection fails the run.
pub fn run(
    factory: &dyn TargetFactory,
    spec: &RunSpec,
    stop: &AtomicBool,
    progress: Progress<'_>,
) -> Result<RunResult, TargetError> {
    assert!(spec.clients > 0, "a run needs at least one client");
    if let Some(rate) = spec.target_rate {
        assert!(rate > 0.0, "a target rate must be positive");
    }
    let key_space = KeySpace::new(spec.records.max(1));
    let mut streams = Vec::with_capacity(spec.clients);
    for client in 0..spec.clients {
        streams.push(factory.op_stream(client, spec, &key_space)?);
    }
    let clients_done = AtomicBool::new(false);
    let start = Instant::now();
    let measure_start = start + spec.warmup;
    let measure_end = measure_start + spec.duration;
    let seconds = spec.duration.as_secs_f64().ceil() as usize;
    let tallies: Vec<ClientTally> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                let clients_done = &clients_done;
                let window =
                    Window { start, measure_start, measure_end, seconds, trace: spec.trace_ops };
                let client_rate = spec.target_rate.map(|rate| rate / spec.clients as f64);
                scope.spawn(move || client_loop(stream, window, client_rate, clients_done))
            })
            .collect();
        let total = spec.warmup + spec.duration;
        loop {
            let elapsed = start.elapsed();
            progress(elapsed.min(total), total);
            if elapsed >= total || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(CONTROL_TICK.min(total - elapsed));
        }
        clients_done.store(true, Ordering::Relaxed);
        handles.into_iter().map(|handle| handle.join().expect("a client panicked")).collect()
    });
    let interrupted = Instant::now() < measure_end;
    let measured = Instant::now().min(measure_end).saturating_duration_since(measure_start);
    let mut result = RunResult {
        all: latency_histogram(),
        by_kind: BTreeMap::new(),
        per_second: vec![0; seconds],
        errors: 0,
        error_reasons: BTreeMap::new(),
        measured,
        interrupted,
        load_s: 0.0,
        measure_start,
        ops: Vec::new(),
    };
    for tally in tallies {
        for (kind, histogram) in tally.by_kind {
            result.all.add(&histogram).expect("same histogram bounds");
            result
                .by_kind
                .entry(kind)
                .or_insert_with(latency_histogram)
                .add(&histogram)
                .expect("same histogram bounds");
        }
        for (slot, count) in result.per_second.iter_mut().zip(tally.per_second) {
            *slot += count;
        }
        result.errors += tally.errors;
        for (reason, count) in tally.error_reasons {
            count_error(&mut result.error_reasons, reason, count);
        }
        result.ops.extend(tally.ops);
    }
    if interrupted {
        let whole_seconds = measured.as_secs() as usize;
        result.per_second.truncate(whole_seconds);
    }
    Ok(result)
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
    seconds: usize,
    trace: bool,
}

fn client_loop(
    mut stream: Box<dyn OpStream>,
    window: Window,
    client_rate: Option<f64>,
    done: &AtomicBool,
) -> ClientTally {
    let mut tally = ClientTally {
        by_kind: BTreeMap::new(),
        per_second: vec![0; window.seconds],
        errors: 0,
        error_reasons: BTreeMap::new(),
        ops: Vec::new(),
    };
    let interval = client_rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut sent: u64 = 0;
    while !done.load(Ordering::Relaxed) {
        // Closed loop: the operation starts now. Open loop: at its place on the schedule,
        // even when that place is already past (the store is behind).
        let intended = match interval {
            None => Instant::now(),
            Some(interval) => {
                let intended = window.start + interval.mul_f64(sent as f64);
                if intended >= window.measure_end {
                    break;
                }
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                intended
            }
        };
        sent += 1;
        let (kind, outcome) = stream.issue();
        let completed = Instant::now();
        if intended < window.measure_start || completed >= window.measure_end {
            continue;
        }
        match outcome {
            Ok(()) => {
                let latency_us = completed.duration_since(intended).as_micros() as u64;
                tally
                    .by_kind
                    .entry(kind)
                    .or_insert_with(latency_histogram)
                    .saturating_record(latency_us.max(1));
                let second = completed.duration_since(window.measure_start).as_secs() as usize;
                if let Some(slot) = tally.per_second.get_mut(second) {
                    *slot += 1;
                }
                if window.trace {
                    let since_start = |at: Instant| {
                        at.saturating_duration_since(window.measure_start).as_micros() as u64
                    };
                    tally.ops.push(OpSpan {
                        sent_us: since_start(intended),
                        done_us: since_start(completed),
                    });
                }
            }
            Err(error) => {
                tally.errors += 1;
                count_error(&mut tally.error_reasons, error.to_string(), 1);
            }
        }
    }
    tally
}

/// Issues one operation. A scan is one range scan of up to `count` keys from `start`;
/// a read-modify-write is a read then a write of a new value.
pub fn execute(
    target: &mut dyn KvTarget,
    generator: &mut OpGenerator,
    op: Op,
    value_bytes: usize,
    value: &mut Vec<u8>,
) -> Result<(), TargetError> {
    match op {
        Op::Read { key } => target.get(&key_bytes(key)).map(drop),
        Op::Update { key } | Op::Insert { key } => {
            generator.value(key, value_bytes, value);
            target.put(&key_bytes(key), value)
        }
        Op::Scan { start, count } => {
            target.scan(&key_bytes(start), usize::try_from(count).unwrap_or(usize::MAX)).map(drop)
        }
        Op::ReadModifyWrite { key } => {
            target.get(&key_bytes(key))?;
            generator.value(key, value_bytes, value);
            target.put(&key_bytes(key), value)
        }
    }
}

/// A no-op progress callback.
pub fn no_progress(_: Duration, _: Duration) {}

/// Keeps a stop flag that Ctrl-C can set, shared with the driver.
pub fn stop_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::MemoryTarget;

    fn spec(workload: WorkloadName) -> RunSpec {
        RunSpec {
            workload,
            distribution: workload.default_distribution(),
            clients: 2,
            target_rate: None,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(1100),
            records: 200,
            value_bytes: 64,
            scan_length_max: 4,
            seed: 1,
            trace_ops: false,
        }
    }

    #[test]
    fn error_reasons_keep_the_first_distinct_ones_and_count_the_rest_together() {
        let mut reasons = BTreeMap::new();
        for index in 0..ERROR_REASONS_MAX + 3 {
            count_error(&mut reasons, format!("reason {index}"), 2);
        }
        count_error(&mut reasons, "reason 0".into(), 1);
        count_error(&mut reasons, "reason 99".into(), 1);
        assert_eq!(reasons.len(), ERROR_REASONS_MAX + 1);
        assert_eq!(reasons["reason 0"], 3);
        assert_eq!(reasons[OTHER_ERRORS], 3 * 2 + 1);
        assert_eq!(reasons.values().sum::<u64>(), 2 * (ERROR_REASONS_MAX as u64 + 3) + 2);
    }

    #[test]
    fn load_writes_every_record_once() {
        let target = MemoryTarget::new();
        let stop = AtomicBool::new(false);
        let finished = load(&target, 500, 32, 3, &stop, &mut no_progress).expect("load");
        assert!(finished);
        assert_eq!(target.len(), 500);
    }

    #[test]
    fn closed_loop_measures_every_kind_of_the_mix() {
        let target = MemoryTarget::new();
        let stop = AtomicBool::new(false);
        load(&target, 200, 64, 2, &stop, &mut no_progress).expect("load");
        for workload in [WorkloadName::W, WorkloadName::A, WorkloadName::E, WorkloadName::F] {
            let result = run(&target, &spec(workload), &stop, &mut no_progress).expect("run");
            assert!(!result.all.is_empty(), "{workload:?}");
            assert_eq!(result.errors, 0);
            assert_eq!(result.per_second.len(), 2);
            assert_eq!(result.per_second.iter().sum::<u64>(), result.all.len());
            let mix = workload.mix().expect("a key-value workload");
            assert_eq!(result.by_kind.contains_key(&OpKind::Read), mix.read > 0);
            assert_eq!(result.by_kind.contains_key(&OpKind::Scan), mix.scan > 0);
            assert_eq!(
                result.by_kind.contains_key(&OpKind::ReadModifyWrite),
                mix.read_modify_write > 0
            );
        }
    }

    #[test]
    fn traced_ops_are_every_measured_operation_in_the_window() {
        let target = MemoryTarget::new();
        let stop = AtomicBool::new(false);
        load(&target, 200, 64, 2, &stop, &mut no_progress).expect("load");
        let mut traced = spec(WorkloadName::W);
        traced.trace_ops = true;
        let result = run(&target, &traced, &stop, &mut no_progress).expect("run");
        assert_eq!(result.ops.len() as u64, result.all.len());
        let window_us = result.measured.as_micros() as u64;
        assert!(result.ops.iter().all(|op| op.sent_us <= op.done_us && op.done_us < window_us));
        let untraced = run(&target, &spec(WorkloadName::W), &stop, &mut no_progress).expect("run");
        assert!(untraced.ops.is_empty());
    }

    #[test]
    fn a_ycsb_e_scan_is_one_range_scan_from_its_start_key_not_a_read_per_key() {
        let mut store = MemoryTarget::new();
        for record in 0..20u64 {
            store.put(&key_bytes(record), b"v").expect("put");
        }
        /// Counts the calls reaching the store.
        struct Counting {
            store: MemoryTarget,
            gets: usize,
            scans: Vec<(Vec<u8>, usize, usize)>,
        }
        impl KvTarget for Counting {
            fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TargetError> {
                self.store.put(key, value)
            }
            fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TargetError> {
                self.gets += 1;
                self.store.get(key)
            }
            fn scan(&mut self, start: &[u8], count: usize) -> Result<usize, TargetError> {
                let read = self.store.scan(start, count)?;
                self.scans.push((start.to_vec(), count, read));
                Ok(read)
            }
        }
        let mut target = Counting { store, gets: 0, scans: Vec::new() };
        let space = KeySpace::new(20);
        let mut generator = OpGenerator::new(WorkloadName::E, Distribution::Zipfian, space, 10, 3);
        let mut value = Vec::new();
        execute(&mut target, &mut generator, Op::Scan { start: 15, count: 10 }, 8, &mut value)
            .expect("scan");
        assert_eq!(target.gets, 0);
        // Records 15..20 exist: the scan reads 5 and stops at the end of the store.
        assert_eq!(target.scans, [(key_bytes(15).to_vec(), 10, 5)]);
    }

    /// A store that takes at least `service` per operation, one at a time.
    struct SlowTarget {
        service: Duration,
    }

    impl KvTarget for SlowTarget {
        fn put(&mut self, _: &[u8], _: &[u8]) -> Result<(), TargetError> {
            std::thread::sleep(self.service);
            Ok(())
        }
        fn get(&mut self, _: &[u8]) -> Result<Option<Vec<u8>>, TargetError> {
            std::thread::sleep(self.service);
            Ok(None)
        }
        fn scan(&mut self, _: &[u8], _: usize) -> Result<usize, TargetError> {
            std::thread::sleep(self.service);
            Ok(0)
        }
    }

    impl TargetFactory for SlowTarget {
        fn connect(&self, _: usize) -> Result<Box<dyn KvTarget>, TargetError> {
            Ok(Box::new(SlowTarget { service: self.service }))
        }
    }

    #[test]
    fn open_loop_latency_includes_the_queueing_delay_of_a_slow_store() {
        // Asked for 200 ops/s from one client against a store that needs >= 10 ms per
        // operation: operation k is intended at k * 5 ms but cannot complete before
        // (k + 1) * 10 ms, so its latency is at least k * 5 ms. Over a 1 s window the
        // worst is several hundred ms, however fast the machine is.
        let slow = SlowTarget { service: Duration::from_millis(10) };
        let stop = AtomicBool::new(false);
        let spec = RunSpec {
            workload: WorkloadName::W,
            distribution: Distribution::Uniform,
            clients: 1,
            target_rate: Some(200.0),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            records: 10,
            value_bytes: 8,
            scan_length_max: 1,
            seed: 1,
            trace_ops: false,
        };
        let result = run(&slow, &spec, &stop, &mut no_progress).expect("run");
        let count = result.all.len();
        assert!(count >= 10, "{count}");
        // The last measured op was intended at (count - 1) * 5 ms at the latest... and
        // completed at count * 10 ms at the earliest.
        let lower_bound_us = (count - 1) * 5_000;
        assert!(result.all.max() >= lower_bound_us, "max {} < {lower_bound_us}", result.all.max());
        // Median latency is far above the 10 ms service time: queueing counted.
        assert!(
            result.all.value_at_quantile(0.5) > 50_000,
            "{}",
            result.all.value_at_quantile(0.5)
        );
    }

    #[test]
    fn closed_loop_latency_is_the_service_time_only() {
        let slow = SlowTarget { service: Duration::from_millis(5) };
        let stop = AtomicBool::new(false);
        let spec = RunSpec {
            workload: WorkloadName::W,
            distribution: Distribution::Uniform,
            clients: 1,
            target_rate: None,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            records: 10,
            value_bytes: 8,
            scan_length_max: 1,
            seed: 1,
            trace_ops: false,
        };
        let result = run(&slow, &spec, &stop, &mut no_progress).expect("run");
        assert!(result.all.min() >= 5_000);
    }

    #[test]
    fn a_set_stop_flag_ends_the_run_early() {
        let target = MemoryTarget::new();
        let stop = AtomicBool::new(true);
        let mut long = spec(WorkloadName::W);
        long.duration = Duration::from_secs(600);
        let result = run(&target, &long, &stop, &mut no_progress).expect("run");
        assert!(result.interrupted);
    }
}
