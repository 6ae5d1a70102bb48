//! Workloads: the paper's `w` (100% replace of 4 KiB values) and YCSB A-F, with the
//! key distributions YCSB uses (uniform, zipfian, scrambled zipfian, latest), for the
//! key-value store; and the tuple space's `dds`, `queue` and `lock`, generated in
//! [`crate::tuplespace`].
//!
//! Everything here is deterministic under a seed: the same seed and the same sequence
//! of calls give the same operations, so a run can be replayed.
//!
//! Keys are record numbers encoded as 8 bytes, big-endian (the paper uses 8-byte keys),
//! so "consecutive keys" are consecutive record numbers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The zipfian constant YCSB uses (`zipfian.constant`).
pub const ZIPFIAN_THETA: f64 = 0.99;

/// The workloads' generator: `dura_core`'s xoshiro256**, seeded through SplitMix64 so
/// that nearby seeds give unrelated streams.
pub use dura_core::rng::Rng;

/// FNV-1a, 64 bits, over the 8 little-endian bytes of `value`: the hash YCSB uses to
/// scramble zipfian ranks over the key space.
pub fn fnv1a_64(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut hash = OFFSET_BASIS;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// zeta(n, theta) = sum over i in 1..=n of 1 / i^theta, continued from a known
/// prefix: `zeta_from(m, zeta(m), n)` for n >= m.
fn zeta_from(items_known: u64, zeta_known: f64, items: u64, theta: f64) -> f64 {
    assert!(items >= items_known);
    let mut sum = zeta_known;
    for i in items_known + 1..=items {
        sum += 1.0 / (i as f64).powf(theta);
    }
    sum
}

/// Zipfian ranks over [0, items): rank 0 is the most popular, with probability
/// 1 / zeta(items). Gray et al.'s rejection-free method, as in YCSB; the item count can
/// grow (for the `latest` distribution) and zeta is then extended, not recomputed.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_2: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    /// Ranks over [0, items) with skew `theta` (YCSB: 0.99). `items` must be positive.
    pub fn new(items: u64, theta: f64) -> Self {
        assert!(items > 0, "a zipfian over no item");
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zeta_2 = zeta_from(0, 0.0, 2, theta);
        let zeta_n = zeta_from(0, 0.0, items, theta);
        let mut zipfian =
            Self { items, theta, alpha: 1.0 / (1.0 - theta), zeta_2, zeta_n, eta: 0.0 };
        zipfian.eta = zipfian.eta_for(items);
        zipfian
    }

    fn eta_for(&self, items: u64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta_2 / self.zeta_n)
    }

    /// The number of items ranks are drawn from.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// zeta(items, theta): the hottest rank's probability is `1 / zeta()`.
    pub fn zeta(&self) -> f64 {
        self.zeta_n
    }

    /// Grows the item count to `items` (never shrinks).
    pub fn grow_to(&mut self, items: u64) {
        if items <= self.items {
            return;
        }
        self.zeta_n = zeta_from(self.items, self.zeta_n, items, self.theta);
        self.items = items;
        self.eta = self.eta_for(items);
    }

    /// The next rank in [0, items).
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if self.items >= 2 && uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every existing record equally likely.
    Uniform,
    /// Zipfian ranks, scrambled over the key space with FNV so hot keys are spread.
    Zipfian,
    /// Zipfian over recency: the newest record is the hottest (YCSB D).
    Latest,
}

/// A key chooser over the records that exist now.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform over [0, records).
    Uniform,
    /// Scrambled zipfian: a zipfian rank, FNV-hashed, modulo the record count.
    ScrambledZipfian(Zipfian),
    /// Skewed to the newest record: newest - zipfian rank.
    Latest(Zipfian),
}

impl KeyChooser {
    /// A chooser for `distribution` over `records` initial records.
    pub fn new(distribution: Distribution, records: u64) -> Self {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => {
                KeyChooser::ScrambledZipfian(Zipfian::new(records, ZIPFIAN_THETA))
            }
            Distribution::Latest => KeyChooser::Latest(Zipfian::new(records, ZIPFIAN_THETA)),
        }
    }

    /// A record number in [0, records). `records` is how many records exist now (it
    /// grows with inserts) and must be positive.
    pub fn next(&mut self, rng: &mut Rng, records: u64) -> u64 {
        assert!(records > 0);
        match self {
            KeyChooser::Uniform => rng.below(records),
            KeyChooser::ScrambledZipfian(zipfian) => {
                // The rank space stays the initial record count (as YCSB does), so
                // inserted records are reachable only through the hash.
                let rank = zipfian.next(rng);
                fnv1a_64(rank) % records
            }
            KeyChooser::Latest(zipfian) => {
                zipfian.grow_to(records);
                let rank = zipfian.next(rng);
                records - 1 - rank.min(records - 1)
            }
        }
    }
}

/// The operation kinds a workload issues. Each gets its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Read one record.
    Read,
    /// Replace the value of an existing record.
    Update,
    /// Insert a new record.
    Insert,
    /// Read consecutive records.
    Scan,
    /// Read a record, then write it back changed (two requests, one latency).
    ReadModifyWrite,
    /// Tuple space: write a tuple.
    Out,
    /// Tuple space: take a tuple, waiting for one.
    In,
    /// Tuple space: write a tuple unless one matches.
    Cas,
    /// Tuple space: take a tuple if one matches.
    Inp,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 9] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
        OpKind::Out,
        OpKind::In,
        OpKind::Cas,
        OpKind::Inp,
    ];

    /// A short lowercase name for files and JSON.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "rmw",
            OpKind::Out => "out",
            OpKind::In => "in",
            OpKind::Cas => "cas",
            OpKind::Inp => "inp",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One operation to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read record `key`.
    Read { key: u64 },
    /// Replace record `key`'s value.
    Update { key: u64 },
    /// Insert record `key` (a new one).
    Insert { key: u64 },
    /// Read `count` consecutive records from `start`.
    Scan { start: u64, count: u64 },
    /// Read record `key` then write it.
    ReadModifyWrite { key: u64 },
}

impl Op {
    /// The kind, for the histograms.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read { .. } => OpKind::Read,
            Op::Update { .. } => OpKind::Update,
            Op::Insert { .. } => OpKind::Insert,
            Op::Scan { .. } => OpKind::Scan,
            Op::ReadModifyWrite { .. } => OpKind::ReadModifyWrite,
        }
    }
}

/// The workload names of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadName {
    /// The paper's: 100% replace of existing records (4 KiB values by default).
    W,
    /// YCSB A: 50% read, 50% update, zipfian.
    A,
    /// YCSB B: 95% read, 5% update, zipfian.
    B,
    /// YCSB C: 100% read, zipfian.
    C,
    /// YCSB D: 95% read, 5% insert, latest.
    D,
    /// YCSB E: 95% scan, 5% insert, zipfian scan start; a scan is one ordered range
    /// scan of up to that many keys from the start key (`KvTarget::scan`).
    E,
    /// YCSB F: 50% read, 50% read-modify-write, zipfian.
    F,
    /// Tuple space, the paper's DDS workload: 100% `out` of random tuples of four
    /// string fields, `--value-bytes` (1 KiB) in all.
    Dds,
    /// Tuple space, a job queue: each client alternates `out` of a job tuple and `in`
    /// of any job (never waits: its own job is there).
    Queue,
    /// Tuple space, a lock service: `cas` of a lock token with a lease on one of
    /// `--records` locks; once held, `inp` of it releases it.
    Lock,
}

/// The services a workload can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceName {
    /// The SCKV-Store (`dura-kvstore`).
    Kv,
    /// Durable DepSpace, the tuple space (`dura-tuplespace`).
    Tuplespace,
}

impl ServiceName {
    /// The name on the command line (`kv`, `tuplespace`).
    pub fn name(self) -> &'static str {
        match self {
            ServiceName::Kv => "kv",
            ServiceName::Tuplespace => "tuplespace",
        }
    }

    /// The workload a run of this service has unless told: the paper's for it.
    pub fn default_workload(self) -> WorkloadName {
        match self {
            ServiceName::Kv => WorkloadName::W,
            ServiceName::Tuplespace => WorkloadName::Dds,
        }
    }

    /// The paper's write size for it: 4 KiB values, 1 KiB tuples.
    pub fn default_value_bytes(self) -> usize {
        match self {
            ServiceName::Kv => 4096,
            ServiceName::Tuplespace => 1024,
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A workload's operation mix, in parts per 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Mix {
    /// Percent reads.
    pub read: u32,
    /// Percent updates.
    pub update: u32,
    /// Percent inserts.
    pub insert: u32,
    /// Percent scans.
    pub scan: u32,
    /// Percent read-modify-writes.
    pub read_modify_write: u32,
}

impl WorkloadName {
    /// The service it runs against.
    pub fn service(self) -> ServiceName {
        match self {
            WorkloadName::Dds | WorkloadName::Queue | WorkloadName::Lock => ServiceName::Tuplespace,
            _ => ServiceName::Kv,
        }
    }

    /// Whether its run starts with `--records` records loaded (the key-value
    /// workloads; the tuple space's start from an empty space).
    pub fn loads_records(self) -> bool {
        self.service() == ServiceName::Kv
    }

    /// The key-value operation mix (`None` for a tuple space workload).
    pub fn mix(self) -> Option<Mix> {
        let zero = Mix { read: 0, update: 0, insert: 0, scan: 0, read_modify_write: 0 };
        let mix = match self {
            WorkloadName::W => Mix { update: 100, ..zero },
            WorkloadName::A => Mix { read: 50, update: 50, ..zero },
            WorkloadName::B => Mix { read: 95, update: 5, ..zero },
            WorkloadName::C => Mix { read: 100, ..zero },
            WorkloadName::D => Mix { read: 95, insert: 5, ..zero },
            WorkloadName::E => Mix { scan: 95, insert: 5, ..zero },
            WorkloadName::F => Mix { read: 50, read_modify_write: 50, ..zero },
            WorkloadName::Dds | WorkloadName::Queue | WorkloadName::Lock => return None,
        };
        assert_eq!(mix.read + mix.update + mix.insert + mix.scan + mix.read_modify_write, 100);
        Some(mix)
    }

    /// The key distribution YCSB's workload files give it (the paper's `w` picks keys
    /// uniformly: every replace is as likely to hit any of the 250,000 keys; `lock`
    /// picks its locks uniformly too).
    pub fn default_distribution(self) -> Distribution {
        match self {
            WorkloadName::W | WorkloadName::Dds | WorkloadName::Queue | WorkloadName::Lock => {
                Distribution::Uniform
            }
            WorkloadName::D => Distribution::Latest,
            _ => Distribution::Zipfian,
        }
    }
}

/// The shared part of a workload: how many records exist (inserts grow it).
#[derive(Debug)]
pub struct KeySpace {
    records: AtomicU64,
}

impl KeySpace {
    /// A key space with `records` loaded records.
    pub fn new(records: u64) -> Arc<Self> {
        assert!(records > 0, "the key space must hold at least one record");
        Arc::new(Self { records: AtomicU64::new(records) })
    }

    /// How many records exist now.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Acquire)
    }

    /// Claims the next new record number for an insert.
    fn claim_insert(&self) -> u64 {
        self.records.fetch_add(1, Ordering::AcqRel)
    }
}

/// One client's operation generator.
#[derive(Debug)]
pub struct OpGenerator {
    mix: Mix,
    chooser: KeyChooser,
    key_space: Arc<KeySpace>,
    scan_length_max: u64,
    rng: Rng,
}

impl OpGenerator {
    /// A generator for `workload` over the shared `key_space`, with its own stream
    /// from `seed`. `scan_length_max` bounds YCSB E's uniform scan lengths (>= 1).
    /// Panics for a tuple space workload (see [`WorkloadName::mix`]).
    pub fn new(
        workload: WorkloadName,
        distribution: Distribution,
        key_space: Arc<KeySpace>,
        scan_length_max: u64,
        seed: u64,
    ) -> Self {
        assert!(scan_length_max >= 1);
        let chooser = KeyChooser::new(distribution, key_space.records());
        let mix = workload.mix().expect("a key-value workload");
        Self { mix, chooser, key_space, scan_length_max, rng: Rng::new(seed) }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let dice = self.rng.below(100) as u32;
        let mix = self.mix;
        let mut bound = mix.read;
        if dice < bound {
            return Op::Read { key: self.existing_key() };
        }
        bound += mix.update;
        if dice < bound {
            return Op::Update { key: self.existing_key() };
        }
        bound += mix.insert;
        if dice < bound {
            return Op::Insert { key: self.key_space.claim_insert() };
        }
        bound += mix.scan;
        if dice < bound {
            let count = 1 + self.rng.below(self.scan_length_max);
            return Op::Scan { start: self.existing_key(), count };
        }
        Op::ReadModifyWrite { key: self.existing_key() }
    }

    fn existing_key(&mut self) -> u64 {
        let records = self.key_space.records();
        self.chooser.next(&mut self.rng, records)
    }

    /// A value of `bytes` bytes for `key`, different on each call, so replaces really
    /// change the stored state.
    pub fn value(&mut self, key: u64, bytes: usize, buffer: &mut Vec<u8>) {
        fill_value(key, self.rng.next_u64(), bytes, buffer);
    }
}

/// The 8-byte key of record `record`.
pub fn key_bytes(record: u64) -> [u8; 8] {
    record.to_be_bytes()
}

/// Fills `buffer` with `bytes` bytes derived from `key` and `salt` (cheap, not
/// compressible to nothing).
pub fn fill_value(key: u64, salt: u64, bytes: usize, buffer: &mut Vec<u8>) {
    buffer.clear();
    let mut word = key ^ salt.rotate_left(17) ^ 0xA5A5_A5A5_A5A5_A5A5;
    while buffer.len() < bytes {
        word ^= word << 13;
        word ^= word >> 7;
        word ^= word << 17;
        let take = (bytes - buffer.len()).min(8);
        buffer.extend_from_slice(&word.to_le_bytes()[..take]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_the_same_operations() {
        let run = |seed| {
            let space = KeySpace::new(1000);
            let mut generator =
                OpGenerator::new(WorkloadName::A, Distribution::Zipfian, space, 10, seed);
            (0..500).map(|_| generator.next_op()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn uniform_covers_the_whole_range_and_nothing_outside() {
        let mut rng = Rng::new(1);
        let mut chooser = KeyChooser::new(Distribution::Uniform, 100);
        let mut seen = [0u32; 100];
        for _ in 0..20_000 {
            let key = chooser.next(&mut rng, 100);
            assert!(key < 100);
            seen[key as usize] += 1;
        }
        // Expected 200 each; every key is hit and none is far off.
        assert!(seen.iter().all(|&count| (120..=280).contains(&count)), "{seen:?}");
    }

    #[test]
    fn zipfian_hottest_rank_gets_its_expected_share() {
        let items = 10_000;
        let mut zipfian = Zipfian::new(items, ZIPFIAN_THETA);
        let expected = 1.0 / zipfian.zeta();
        let mut rng = Rng::new(3);
        let draws = 200_000;
        let mut hits_rank_0 = 0u64;
        let mut hits_rank_1 = 0u64;
        for _ in 0..draws {
            let rank = zipfian.next(&mut rng);
            assert!(rank < items);
            hits_rank_0 += u64::from(rank == 0);
            hits_rank_1 += u64::from(rank == 1);
        }
        let share = hits_rank_0 as f64 / draws as f64;
        assert!((share - expected).abs() < expected * 0.05, "share {share} expected {expected}");
        // Rank 1 has probability 1/(2^theta zeta): about half of rank 0's.
        let ratio = hits_rank_1 as f64 / hits_rank_0 as f64;
        assert!((ratio - 0.5f64.powf(ZIPFIAN_THETA)).abs() < 0.05, "ratio {ratio}");
    }

    #[test]
    fn scrambled_zipfian_spreads_the_hot_key_away_from_key_zero() {
        let records = 10_000;
        let mut rng = Rng::new(5);
        let mut chooser = KeyChooser::new(Distribution::Zipfian, records);
        let mut counts = vec![0u32; records as usize];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng, records) as usize] += 1;
        }
        let hottest = (0..records as usize).max_by_key(|&key| counts[key]).expect("non-empty");
        assert_eq!(hottest as u64, fnv1a_64(0) % records);
        // Skewed: the hottest key alone gets far more than a uniform share (10).
        assert!(counts[hottest] > 5_000, "{}", counts[hottest]);
    }

    #[test]
    fn latest_prefers_the_newest_records_as_they_are_inserted() {
        let mut rng = Rng::new(9);
        let mut chooser = KeyChooser::new(Distribution::Latest, 1000);
        let mut newest_hits = 0;
        for _ in 0..10_000 {
            let key = chooser.next(&mut rng, 2000);
            assert!(key < 2000);
            newest_hits += u32::from(key == 1999);
        }
        assert!(newest_hits > 1000, "{newest_hits}");
    }

    #[test]
    fn zipfian_grown_incrementally_equals_one_built_at_full_size() {
        let mut grown = Zipfian::new(100, ZIPFIAN_THETA);
        grown.grow_to(5000);
        let mut full = Zipfian::new(5000, ZIPFIAN_THETA);
        assert!((grown.zeta() - full.zeta()).abs() < 1e-9);
        let (mut rng_a, mut rng_b) = (Rng::new(2), Rng::new(2));
        for _ in 0..1000 {
            assert_eq!(grown.next(&mut rng_a), full.next(&mut rng_b));
        }
    }

    #[test]
    fn workload_mixes_are_ycsbs() {
        let count_kinds = |workload: WorkloadName| {
            let space = KeySpace::new(1000);
            let distribution = workload.default_distribution();
            let mut generator = OpGenerator::new(workload, distribution, space, 5, 11);
            let mut counts = [0u32; 5];
            for _ in 0..10_000 {
                counts[generator.next_op().kind().index()] += 1;
            }
            counts
        };
        let w = count_kinds(WorkloadName::W);
        assert_eq!(w[OpKind::Update.index()], 10_000);
        let a = count_kinds(WorkloadName::A);
        assert!((4_700..5_300).contains(&a[OpKind::Read.index()]), "{a:?}");
        let c = count_kinds(WorkloadName::C);
        assert_eq!(c[OpKind::Read.index()], 10_000);
        let e = count_kinds(WorkloadName::E);
        assert!((9_300..9_700).contains(&e[OpKind::Scan.index()]), "{e:?}");
        let f = count_kinds(WorkloadName::F);
        assert!((4_700..5_300).contains(&f[OpKind::ReadModifyWrite.index()]), "{f:?}");
    }

    #[test]
    fn inserts_take_fresh_keys_past_the_loaded_records() {
        let space = KeySpace::new(100);
        let mut generator =
            OpGenerator::new(WorkloadName::D, Distribution::Latest, space.clone(), 1, 1);
        let mut inserted = Vec::new();
        for _ in 0..2000 {
            if let Op::Insert { key } = generator.next_op() {
                inserted.push(key);
            }
        }
        assert!(!inserted.is_empty());
        assert_eq!(inserted, (100..100 + inserted.len() as u64).collect::<Vec<_>>());
        assert_eq!(space.records(), 100 + inserted.len() as u64);
    }

    #[test]
    fn values_have_the_asked_size_and_differ_per_call() {
        let space = KeySpace::new(10);
        let mut generator = OpGenerator::new(WorkloadName::W, Distribution::Uniform, space, 1, 1);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        generator.value(3, 4096, &mut first);
        generator.value(3, 4096, &mut second);
        assert_eq!(first.len(), 4096);
        assert_eq!(second.len(), 4096);
        assert_ne!(first, second);
    }
}
