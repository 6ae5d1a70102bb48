//! `dura-tune`: probes the storage device under a directory (`dura-tune probe --dir DIR`)
//! and computes the smallest checkpoint period (`dura-tune period`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dura_tuning::{DurabilityMode, ProbeOptions, ProbeReport, probe};

#[derive(Debug, Parser)]
#[command(name = "dura-tune", about = "Storage probe and configuration advice for dura")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Synced-write latency (written vs fallocated blocks) and sequential synced bandwidth
    /// of the device under DIR, per durability mode.
    Probe(ProbeArgs),
    /// The smallest checkpoint period P for which sequential checkpoints never overlap
    /// (the paper's Eq. (1): P > n * C_max * T_max).
    Period(PeriodArgs),
}

#[derive(Debug, clap::Args)]
struct PeriodArgs {
    /// Number of replicas n.
    #[arg(long)]
    replicas: u32,
    /// Longest checkpoint, seconds (C_max).
    #[arg(long)]
    checkpoint_seconds_max: f64,
    /// Highest throughput, requests per second (T_max).
    #[arg(long)]
    throughput_ops_s_max: f64,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Directory on the device to probe (probe files are created and removed there).
    #[arg(long)]
    dir: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Durability modes, comma separated (direct-dsync, dsync, fdatasync, async-unsafe).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct-dsync,dsync,fdatasync,async-unsafe"
    )]
    modes: Vec<DurabilityMode>,
    /// Bytes per latency write.
    #[arg(long, default_value_t = 4096)]
    latency_write_bytes: usize,
    /// Writes per latency measurement.
    #[arg(long, default_value_t = 256)]
    latency_writes: usize,
    /// Time bound of one latency measurement, milliseconds.
    #[arg(long, default_value_t = 1000)]
    latency_ms_max: u64,
    /// Record sizes of the bandwidth table, bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "65536,1048576,4194304")]
    record_bytes: Vec<usize>,
    /// Bytes written per bandwidth measurement, MiB.
    #[arg(long, default_value_t = 64)]
    bandwidth_mib: u64,
    /// Time bound of one bandwidth measurement, milliseconds.
    #[arg(long, default_value_t = 2000)]
    bandwidth_ms_max: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe(args) => run_probe(&args),
        Command::Period(args) => {
            let period = dura_tuning::checkpoint_period_min(
                args.replicas,
                args.checkpoint_seconds_max,
                args.throughput_ops_s_max,
            )?;
            println!("{period}");
            Ok(())
        }
    }
}

fn run_probe(args: &ProbeArgs) -> anyhow::Result<()> {
    let options = ProbeOptions {
        modes: args.modes.clone(),
        latency_write_bytes: args.latency_write_bytes,
        latency_writes: args.latency_writes,
        latency_time_max: Duration::from_millis(args.latency_ms_max),
        bandwidth_record_bytes: args.record_bytes.clone(),
        bandwidth_total_bytes: args.bandwidth_mib.saturating_mul(1024 * 1024),
        bandwidth_time_max: Duration::from_millis(args.bandwidth_ms_max),
    };
    let report =
        probe(&args.dir, &options).with_context(|| format!("probing {}", args.dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(())
}

fn print_tables(report: &ProbeReport) {
    println!(
        "device probe of {} ({})",
        report.dir.display(),
        report.filesystem.as_deref().unwrap_or("file system unknown")
    );
    println!();
    println!("single synced write latency (microseconds)");
    println!(
        "{:<13} {:<11} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "mode", "blocks", "bytes", "writes", "p50", "p90", "p99", "mean", "max"
    );
    for row in &report.latency {
        println!(
            "{:<13} {:<11} {:>6} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            row.mode,
            row.blocks.name(),
            row.write_bytes,
            row.writes,
            row.p50_us,
            row.p90_us,
            row.p99_us,
            row.mean_us,
            row.max_us
        );
    }
    println!();
    println!("sequential synced write bandwidth into written blocks (MB/s = 10^6 B/s)");
    println!("{:<13} {:>10} {:>7} {:>11} {:>9}", "mode", "record", "writes", "MiB", "MB/s");
    for sample in &report.bandwidth {
        println!(
            "{:<13} {:>10} {:>7} {:>11.1} {:>9.1}",
            sample.mode,
            sample.record_bytes,
            sample.writes,
            sample.bytes_written as f64 / (1024.0 * 1024.0),
            sample.mb_s
        );
    }
    for skip in &report.skipped {
        println!("skipped: {skip}");
    }
}
