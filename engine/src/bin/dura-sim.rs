//! `dura-sim`: runs the deterministic simulator over a range of seeds.
//!
//! ```text
//! dura-sim --seeds N [--seed-start S] [--mode bft|crash] [--replicas n] [--threads t] [--verbose] [--trace]
//! ```
//! Runs seeds S..S+N (each a full cluster run with faults drawn from the seed), prints
//! every failing seed with the command that replays it alone, and prints
//! `N seeds, F failed` as its last line. Exits 1 if any seed failed, 2 on bad usage.

#![forbid(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dura_engine::protocol::Mode;
use dura_engine::sim::{SimConfig, run};

struct Args {
    seeds: u64,
    seed_start: u64,
    mode: Mode,
    replicas: usize,
    threads: usize,
    verbose: bool,
    /// Print the message trace of each seed to stderr (use with --seeds 1).
    trace: bool,
}

fn usage(error: &str) -> ! {
    eprintln!("dura-sim: {error}");
    eprintln!(
        "usage: dura-sim --seeds N [--seed-start S] [--mode bft|crash] [--replicas n] [--threads t] [--verbose] [--trace]"
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
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= args.seeds {
                        break;
                    }
                    let seed = args.seed_start + index;
                    let mut config = SimConfig::random(args.mode, args.replicas, seed);
                    config.trace = args.trace;
                    let outcome = catch_unwind(AssertUnwindSafe(|| run(&config)));
                    let failure = match outcome {
                        Ok(Ok(report)) => {
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
    for (seed, reason) in &failures {
        println!("FAILED {reason}");
        println!(
            "  replay: cargo run --release -p dura-engine --bin dura-sim -- --seeds 1 --seed-start {seed} --mode {mode_name} --replicas {} --verbose",
            args.replicas
        );
    }
    println!("{} seeds, {} failed", args.seeds, failures.len());
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
