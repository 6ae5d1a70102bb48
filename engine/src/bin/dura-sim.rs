//! `dura-sim`: runs the deterministic simulator over a range of seeds.
//!
//! ```text
//! dura-sim --seeds N [--seed-start S] [--mode bft|crash] [--replicas n] [--total-crash] [--service kv|tuplespace] [--threads t] [--verbose] [--trace]
//! ```
//! Runs seeds S..S+N of the service (`kv`, the default, or `tuplespace`: the Durable
//! DepSpace tuple space with blocking reads, leases and cancels, see
//! `dura_engine::sim::tuplespace`); each a full cluster run with faults drawn from the seed; with
//! `--total-crash`, half of them also crash every replica at once, and in crash mode two
//! of three of those lose up to f replicas' disks in it for good), prints every failing
//! seed with the command that replays it alone, a line counting the faults drawn, and
//! `N seeds, F failed` as its last line. Exits 1 if any seed failed, 2 on bad usage.

#![forbid(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dura_engine::protocol::Mode;
use dura_engine::runtime::LogMode;
use dura_engine::sim::{BFT_LIMIT_PREFIX, SimConfig, SimReport, SimService, run};

/// Faults drawn and exercised over the passing seeds.
#[derive(Debug, Default)]
struct Totals {
    crashes: u64,
    total_crashes: u64,
    lost_disks: u64,
    replaced_in_total_crash: u64,
    torn_writes: u64,
    recovery_crashes: u64,
    log_failures: u64,
    slow_disks: u64,
    byzantine: u64,
    batched: u64,
    disk_writes: u64,
    replies: u64,
    checkpointing_seeds: u64,
    /// Seeds whose reply cache bound is below the number of clients.
    bounded_seeds: u64,
    /// Requests refused as expired in them.
    expired: u64,
    /// Seeds whose replicas answer a FETCH below their window from the log.
    log_catch_up_seeds: u64,
    /// DECIDED answers read from a log.
    log_catch_ups: u64,
    checkpoints: u64,
    checkpoint_crashes: u64,
    checkpoint_restarts: u64,
    state_transfer_needed: u64,
    transfers: u64,
    transfers_failed: u64,
    transfer_bytes: u64,
    faulty_seeders_proven: u64,
    wiped: u64,
    discarded: u64,
    byzantine_seeders_met: u64,
    /// The service's own counts ([`SimReport::service_counts`]), summed by name.
    service: Vec<(&'static str, u64)>,
}

impl Totals {
    fn add(&mut self, config: &SimConfig, report: &SimReport) {
        self.crashes += config.crashes.len() as u64;
        self.total_crashes += report.total_crashes;
        self.lost_disks += report.lost_disks;
        self.replaced_in_total_crash += report.replaced_in_total_crash;
        self.torn_writes += report.torn_writes;
        self.recovery_crashes += report.recovery_crashes;
        self.log_failures += report.log_failures;
        self.slow_disks += u64::from(config.slow_disk.is_some());
        self.byzantine += config.byzantine.len() as u64;
        self.batched += u64::from(config.log_mode == LogMode::Batched);
        self.disk_writes += report.disk_writes;
        self.replies += report.replies_released;
        self.checkpointing_seeds += u64::from(config.checkpoints.is_some());
        self.bounded_seeds += u64::from(config.clients_max < config.clients);
        self.expired += report.ops_expired;
        self.log_catch_up_seeds += u64::from(config.catch_up_from_log);
        self.log_catch_ups += report.catch_up_from_log;
        self.checkpoints += report.checkpoints_written;
        self.checkpoint_crashes += report.checkpoint_crashes;
        self.checkpoint_restarts += report.checkpoint_restarts;
        self.state_transfer_needed += report.state_transfer_needed;
        self.transfers += report.transfers_done;
        self.transfers_failed += report.transfers_failed;
        self.transfer_bytes += report.transfer_bytes;
        self.faulty_seeders_proven += report.transfer_faulty_proven;
        self.wiped += report.disks_wiped;
        self.discarded += report.suffixes_discarded;
        if report.transfers_started > 0 {
            self.byzantine_seeders_met += config.byzantine.len() as u64;
        }
        for &(name, count) in &report.service_counts {
            match self.service.iter_mut().find(|(known, _)| *known == name) {
                Some((_, total)) => *total += count,
                None => self.service.push((name, count)),
            }
        }
    }
}

struct Args {
    seeds: u64,
    seed_start: u64,
    mode: Mode,
    replicas: usize,
    threads: usize,
    verbose: bool,
    /// Print the message trace of each seed to stderr (use with --seeds 1).
    trace: bool,
    /// Draw crashes of every replica at once.
    total_crash: bool,
    /// The simulated service.
    service: SimService,
}

fn usage(error: &str) -> ! {
    eprintln!("dura-sim: {error}");
    eprintln!(
        "usage: dura-sim --seeds N [--seed-start S] [--mode bft|crash] [--replicas n] [--total-crash] [--service kv|tuplespace] [--threads t] [--verbose] [--trace]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        seeds: 1,
        seed_start: 0,
        mode: Mode::Bft,
        replicas: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        verbose: false,
        trace: false,
        total_crash: false,
        service: SimService::Kv,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value =
            |name: &str| iter.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        match flag.as_str() {
            "--seeds" => {
                args.seeds = value("--seeds").parse().unwrap_or_else(|_| usage("bad --seeds"))
            }
            "--seed-start" => {
                args.seed_start =
                    value("--seed-start").parse().unwrap_or_else(|_| usage("bad --seed-start"))
            }
            "--mode" => {
                args.mode =
                    value("--mode").parse().unwrap_or_else(|_| usage("--mode is bft or crash"))
            }
            "--replicas" => {
                args.replicas =
                    value("--replicas").parse().unwrap_or_else(|_| usage("bad --replicas"))
            }
            "--threads" => {
                args.threads = value("--threads").parse().unwrap_or_else(|_| usage("bad --threads"))
            }
            "--verbose" => args.verbose = true,
            "--trace" => args.trace = true,
            "--total-crash" => args.total_crash = true,
            "--service" => {
                args.service =
                    value("--service").parse().unwrap_or_else(|error: String| usage(&error))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    // The smallest cluster that tolerates one fault.
    let minimum = args.mode.replicas_min(1);
    if args.replicas == 0 {
        args.replicas = minimum;
    }
    if args.replicas < minimum || args.replicas > 16 {
        usage("--replicas must be 4..=16 (bft) or 3..=16 (crash)");
    }
    args.threads = args.threads.max(1);
    args
}

fn main() {
    let args = parse_args();
    let mode_name = args.mode.name();
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let totals: Mutex<Totals> = Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= args.seeds {
                        break;
                    }
                    let seed = args.seed_start + index;
                    let mut config = if args.total_crash {
                        SimConfig::random_with_total_crash(args.mode, args.replicas, seed)
                    } else {
                        SimConfig::random(args.mode, args.replicas, seed)
                    };
                    config.trace = args.trace;
                    config.service = args.service;
                    let outcome = catch_unwind(AssertUnwindSafe(|| run(&config)));
                    let failure = match outcome {
                        Ok(Ok(report)) => {
                            totals.lock().expect("no poisoned lock").add(&config, &report);
                            if args.verbose {
                                println!(
                                    "seed {seed}: ok, {} ops, decided {}, regency {}, {} ms",
                                    report.ops_completed,
                                    report.decided_max,
                                    report.regency_max,
                                    report.end_ms
                                );
                            }
                            None
                        }
                        Ok(Err(failure)) => Some(failure.to_string()),
                        Err(panic) => {
                            let message = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "panic".into());
                            Some(format!("seed {seed} panicked: {message}"))
                        }
                    };
                    if let Some(reason) = failure {
                        failures.lock().expect("no poisoned lock").push((seed, reason));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("no poisoned lock");
    failures.sort();
    // Runs stopped at the stated BFT limit after a crash of every replica are listed on
    // their own, each with its replay line, and do not fail the swarm.
    let (limited, failures): (Vec<_>, Vec<_>) =
        failures.into_iter().partition(|(_, reason)| reason.contains(BFT_LIMIT_PREFIX));
    for (seed, reason) in limited.iter().chain(&failures) {
        let limit = reason.contains(BFT_LIMIT_PREFIX);
        println!("{} {reason}", if limit { "LIMIT" } else { "FAILED" });
        println!(
            "  replay: cargo run --release -p dura-engine --bin dura-sim -- --seeds 1 --seed-start {seed} --mode {mode_name} --replicas {}{}{} --verbose",
            args.replicas,
            if args.total_crash { " --total-crash" } else { "" },
            match args.service {
                SimService::Kv => String::new(),
                other => format!(" --service {}", other.name()),
            }
        );
    }
    let totals = totals.into_inner().expect("no poisoned lock");
    println!(
        "faults in passing seeds: {} replica crashes, {} crashes of all replicas, {} disks lost in them, {} replaced in them, {} torn writes, {} crashes during recovery, {} failed writes (replica stopped), {} slow disks, {} Byzantine replicas, {} in batched log mode; {} group writes, {} replies released; checkpoints in {} seeds: {} written, {} crashes while writing one, {} restarts from one; state transfer: {} done ({} disks wiped, {} unconfirmed suffixes discarded), {} failed and retried, {} bytes, {} Byzantine seeders present, {} proven faulty; {} replicas left behind at the end",
        totals.crashes,
        totals.total_crashes,
        totals.lost_disks,
        totals.replaced_in_total_crash,
        totals.torn_writes,
        totals.recovery_crashes,
        totals.log_failures,
        totals.slow_disks,
        totals.byzantine,
        totals.batched,
        totals.disk_writes,
        totals.replies,
        totals.checkpointing_seeds,
        totals.checkpoints,
        totals.checkpoint_crashes,
        totals.checkpoint_restarts,
        totals.transfers,
        totals.wiped,
        totals.discarded,
        totals.transfers_failed,
        totals.transfer_bytes,
        totals.byzantine_seeders_met,
        totals.faulty_seeders_proven,
        totals.state_transfer_needed
    );
    println!(
        "clients_max below the clients in {} passing seeds: {} requests refused as expired",
        totals.bounded_seeds, totals.expired
    );
    println!(
        "catch-up below the window from the log in {} passing seeds: {} agreements served from a log",
        totals.log_catch_up_seeds, totals.log_catch_ups
    );
    if !totals.service.is_empty() {
        let counts: Vec<String> =
            totals.service.iter().map(|(name, count)| format!("{count} {name}")).collect();
        println!("{} service in passing seeds: {}", args.service.name(), counts.join(", "));
    }
    println!(
        "{} seeds, {} failed, {} stalled at the stated BFT limit (ARCHITECTURE.md, \"votes are not persisted\")",
        args.seeds,
        failures.len(),
        limited.len()
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
