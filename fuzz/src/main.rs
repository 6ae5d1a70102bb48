//! `dura-fuzz`: the bounded, stable-Rust fuzz driver, and the tool around the corpora.
//!
//! ```text
//! dura-fuzz run [--target NAME]... [--iterations N] [--seconds S] [--seed K] [--dump-last]
//! dura-fuzz replay NAME HEX|FILE
//! dura-fuzz seeds DIR
//! dura-fuzz list
//! ```
//!
//! `run` runs each target (all by default) on its seeds, then on inputs mutated from its
//! corpus, up to N inputs in all (default 100,000) and for at most S seconds (default
//! 2), and prints the inputs run per target. Inputs are numbered from 0, seeds first;
//! `--dump-last` prints input N-1 as hex before running it. The corpus starts as the seeds and keeps every mutated input
//! the decoder accepted (up to a bound), so mutations reach past the first checks. The
//! inputs depend on the seed K (default 1) alone: a failure prints the input as hex, a
//! `replay` command and the `run` command that makes it again. Exit status 1 when any
//! target failed. `seeds` writes each target's seeds to `DIR/NAME/` (AFL++'s input
//! corpora). `replay` runs one input (hex, or a file such as an AFL++ crash).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dura_core::rng::Rng;
use dura_fuzz::alloc::{Bounded, CONTEXT};
use dura_fuzz::mutate::mutate;
use dura_fuzz::targets::hex;
use dura_fuzz::{TARGETS, Target, target};

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// Accepted inputs a target's corpus keeps beyond its seeds.
const CORPUS_KEPT_MAX: usize = 4096;

const USAGE: &str = "usage:
  dura-fuzz run [--target NAME]... [--iterations N] [--seconds S] [--seed K] [--dump-last]
  dura-fuzz replay NAME HEX|FILE
  dura-fuzz seeds DIR
  dura-fuzz list";

struct RunOptions {
    targets: Vec<&'static Target>,
    iterations: u64,
    seconds: f64,
    seed: u64,
    dump_last: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => parse_run(&args[1..]).map(|options| run(&options)),
        Some("replay") if args.len() == 3 => replay(&args[1], &args[2]),
        Some("seeds") if args.len() == 2 => write_seeds(Path::new(&args[1])),
        Some("list") => {
            for t in TARGETS {
                println!("{:<24} {}", t.name, t.what);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(USAGE.to_owned()),
    };
    result.unwrap_or_else(|error| {
        eprintln!("dura-fuzz: {error}");
        ExitCode::from(64)
    })
}

fn parse_run(args: &[String]) -> Result<RunOptions, String> {
    let mut options = RunOptions {
        targets: Vec::new(),
        iterations: 100_000,
        seconds: 2.0,
        seed: 1,
        dump_last: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--target" => {
                let name = value()?;
                options.targets.push(target(name).ok_or_else(|| format!("no target {name}"))?);
            }
            "--iterations" => options.iterations = number(value()?)?,
            "--seconds" => {
                options.seconds = value()?.parse().map_err(|_| "--seconds takes a number")?;
            }
            "--seed" => options.seed = number(value()?)?,
            "--dump-last" => options.dump_last = true,
            _ => return Err(format!("unknown argument {arg}\n{USAGE}")),
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.iter().collect();
    }
    Ok(options)
}

fn number(text: &str) -> Result<u64, String> {
    text.replace('_', "").parse().map_err(|_| format!("{text} is not a number"))
}

/// Runs `input` through `target`, catching a panic: its message on failure.
fn attempt(target: &Target, input: &[u8]) -> Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned())
    })
}

fn run(options: &RunOptions) -> ExitCode {
    // Panics are caught and reported with their input; the default hook's message
    // would repeat each one without it.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = 0;
    let (mut inputs_total, started) = (0u64, Instant::now());
    for target in &options.targets {
        let index = TARGETS.iter().position(|t| t.name == target.name).expect("a target");
        let outcome = run_target(index, target, options);
        inputs_total += outcome.inputs;
        match outcome.failure {
            None => println!(
                "target {:<24} {:>9} inputs ({} seeds, {} accepted) in {:.1} s",
                target.name, outcome.inputs, outcome.seeds, outcome.accepted, outcome.seconds
            ),
            Some((iteration, input, message)) => {
                failed += 1;
                println!(
                    "FAILED: target {} at input {iteration} of seed {}: {message}\n  input \
                     ({} bytes): {}\n  replay: cargo run -p dura-fuzz -- replay {} {}\n  \
                     again:  cargo run -p dura-fuzz -- run --target {} --seed {} \
                     --iterations {}",
                    target.name,
                    options.seed,
                    input.len(),
                    hex(&input),
                    target.name,
                    hex(&input),
                    target.name,
                    options.seed,
                    iteration + 1,
                );
            }
        }
    }
    println!(
        "{} passed, {failed} failed: {inputs_total} inputs in {:.1} s (seed {})",
        options.targets.len() - failed,
        started.elapsed().as_secs_f64(),
        options.seed
    );
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

struct Outcome {
    inputs: u64,
    seeds: usize,
    accepted: u64,
    seconds: f64,
    /// Iteration (seeds count first), input and message of the first failure.
    failure: Option<(u64, Vec<u8>, String)>,
}

fn run_target(index: usize, target: &Target, options: &RunOptions) -> Outcome {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.seconds);
    let mut corpus = (target.seeds)();
    let seeds = corpus.len();
    let mut outcome = Outcome { inputs: 0, seeds, accepted: 0, seconds: 0.0, failure: None };
    // The seeds themselves: each must pass, and most must be accepted.
    for (i, seed) in corpus.clone().iter().enumerate() {
        CONTEXT.set(index, options.seed, i as u64);
        outcome.inputs += 1;
        match attempt(target, seed) {
            Ok(accepted) => outcome.accepted += u64::from(accepted),
            Err(message) => {
                outcome.failure = Some((i as u64, seed.clone(), message));
                return outcome;
            }
        }
    }
    // The stream of mutated inputs depends on the seed and the target alone.
    let mut rng = Rng::new(options.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut kept = 0;
    for iteration in seeds as u64..options.iterations {
        if iteration % 64 == 0 && Instant::now() >= deadline {
            break;
        }
        let input = mutate(&mut rng, &corpus);
        CONTEXT.set(index, options.seed, iteration);
        if options.dump_last && iteration + 1 == options.iterations {
            println!("input {iteration} of target {}: {}", target.name, hex(&input));
        }
        outcome.inputs += 1;
        match attempt(target, &input) {
            Ok(true) => {
                outcome.accepted += 1;
                if kept < CORPUS_KEPT_MAX && rng.chance(100) {
                    corpus.push(input);
                    kept += 1;
                }
            }
            Ok(false) => {}
            Err(message) => {
                outcome.failure = Some((iteration, input, message));
                break;
            }
        }
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome
}

fn replay(name: &str, input: &str) -> Result<ExitCode, String> {
    let target = target(name).ok_or_else(|| format!("no target {name}"))?;
    let bytes = if Path::new(input).is_file() {
        std::fs::read(input).map_err(|e| format!("{input}: {e}"))?
    } else {
        unhex(input).ok_or_else(|| format!("{input} is neither a file nor hex"))?
    };
    let accepted = (target.run)(&bytes);
    println!(
        "target {name}: {} bytes, {}",
        bytes.len(),
        if accepted { "accepted" } else { "refused" }
    );
    Ok(ExitCode::SUCCESS)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn write_seeds(dir: &Path) -> Result<ExitCode, String> {
    for (folder, count) in dura_fuzz::seeds::write_all(dir)? {
        println!("{}: {count} seeds", folder.display());
    }
    Ok(ExitCode::SUCCESS)
}
