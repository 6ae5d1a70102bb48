//! `dura-bench`: with no arguments, starts a local 4-replica cluster under the paper's
//! workload and prints throughput and latency histograms.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "dura-bench", about = "Load generator and experiments for dura")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark the write-ahead log: group commit against one synced write per record.
    Wal(dura_bench::wal_bench::WalArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Wal(args)) => dura_bench::wal_bench::run(&args),
        None => anyhow::bail!("the cluster benchmark is not built yet"),
    }
}
