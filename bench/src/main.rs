//! `dura-bench`: with no arguments, starts a local 4-replica cluster (BFT, parallel
//! logging, data in a temp dir) under the paper's workload and prints throughput and
//! latency histograms.
//!
//! ```text
//! dura-bench [RUN OPTIONS]                  the main command (see --help)
//! dura-bench compare A B [--out DIR]        two result folders side by side, with plots
//! dura-bench experiment table1|fig9 [...]   the paper's logging experiments
//! dura-bench experiment fig9b [...]         Figure 9(b): the tuple space's curves
//! dura-bench experiment checkpoints [...]   throughput while replicas checkpoint
//! dura-bench experiment recovery [...]      a wiped replica's state transfer under load
//! dura-bench experiment failover [...]      writes stopped by a paused or killed leader
//! dura-bench cluster --data-dir DIR         a local cluster for `--connect DIR/cluster.toml`
//! dura-bench wal --dir DIR                  the write-ahead log benchmark
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

mod kv;
mod ts;

use clap::{Parser, Subcommand};
use dura_bench::experiment::{ExperimentArgs, ExperimentName};
use dura_bench::runner::{Connector, LogArg, ModeArg, RunArgs};
use dura_bench::workload::ServiceName;
use dura_engine::runtime::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "dura-bench",
    about = "Load generator and experiments for dura",
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark the write-ahead log: group commit against one synced write per record.
    Wal(dura_bench::wal_bench::WalArgs),
    /// The main command with explicit options (the same as giving no subcommand).
    Run(RunArgs),
    /// Compare two result folders: table with ratios, latency and throughput plots.
    Compare {
        /// First result folder.
        a: PathBuf,
        /// Second result folder.
        b: PathBuf,
        /// Where to write compare.svg and compare.png (default: `dura-bench-results/compare-TIME`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Label of the first run (default: what differs between the two runs: storage
        /// (file system and device of the data dir), log mode, mode, workload, clients,
        /// ...; when nothing recorded differs, the ends of the folders' paths that do).
        #[arg(long)]
        label_a: Option<String>,
        /// Label of the second run.
        #[arg(long)]
        label_b: Option<String>,
    },
    /// The paper's experiments: table1, fig9 or fig9b (logging; fig9b with the tuple
    /// space), checkpoints (Figures 2, 10),
    /// recovery (Figures 3, 11); failover (a paused or killed leader).
    Experiment(ExperimentArgs),
    /// Start a local cluster and keep it running until Ctrl-C (for `--connect`).
    Cluster {
        /// Folder for the config (`cluster.toml`) and the replicas' data.
        #[arg(long)]
        data_dir: PathBuf,
        /// Replicas (default: 4 for bft, 3 for crash).
        #[arg(long)]
        replicas: Option<u32>,
        /// Ordering protocol.
        #[arg(long, value_enum, default_value_t = ModeArg::Bft)]
        mode: ModeArg,
        /// Durability mode.
        #[arg(long, value_enum, default_value_t = LogArg::Parallel)]
        log: LogArg,
        /// The service the replicas run (a run against it needs the same --service).
        #[arg(long, value_enum, default_value_t = ServiceName::Kv)]
        service: ServiceName,
    },
    /// Run one replica of a local cluster (used by the main command for its children).
    #[command(hide = true)]
    Replica {
        /// Cluster config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// This replica's id.
        #[arg(long)]
        id: u32,
        /// The cluster's first start: with no state anywhere, begin a new cluster.
        #[arg(long)]
        new_cluster: bool,
        /// The service this replica runs.
        #[arg(long, value_enum, default_value_t = ServiceName::Kv)]
        service: ServiceName,
    },
}

/// Ctrl-C: the first press stops the run (the results so far are still written), the
/// second kills the replicas and exits.
fn install_ctrl_c(stop: Arc<AtomicBool>) {
    let presses = AtomicU32::new(0);
    let installed = ctrlc::set_handler(move || {
        stop.store(true, Ordering::Relaxed);
        if presses.fetch_add(1, Ordering::Relaxed) >= 1 {
            dura_bench::cluster::kill_all_children();
            std::process::exit(130);
        }
        eprintln!("\nstopping (Ctrl-C again to kill the replicas at once)");
    });
    if let Err(error) = installed {
        eprintln!("dura-bench: cannot install a Ctrl-C handler: {error}");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The load generator moves as many 4 KiB values as the replicas (see the doc).
    dura_engine::runtime::tune_allocator();
    let stop = Arc::new(AtomicBool::new(false));
    let connector = kv::connector;
    match cli.command {
        Some(Command::Wal(args)) => dura_bench::wal_bench::run(&args),
        Some(Command::Replica { config, id, new_cluster, service }) => match service {
            ServiceName::Kv => kv::serve_replica(&config, id, new_cluster),
            ServiceName::Tuplespace => ts::serve_replica(&config, id, new_cluster),
        },
        Some(Command::Compare { a, b, out, label_a, label_b }) => {
            let out = out.unwrap_or_else(|| dura_bench::runner::default_out_dir("compare"));
            let (table, files) = dura_bench::compare::run(&a, &b, &out, (label_a, label_b))?;
            print!("{table}");
            for file in files {
                println!("wrote {}", file.display());
            }
            Ok(())
        }
        Some(Command::Experiment(args)) if args.name == ExperimentName::Checkpoints => {
            install_ctrl_c(stop.clone());
            let result = dura_bench::checkpoints::run(&args, &connector, &stop)?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", dura_bench::checkpoints::to_text(&result));
            }
            Ok(())
        }
        Some(Command::Experiment(args)) if args.name == ExperimentName::Recovery => {
            install_ctrl_c(stop.clone());
            let read_state = |config: &dura_engine::runtime::ClusterConfig, id: u32| {
                dura_bench::recovery::durable_state(config, id, dura_kvstore::KvStore::new())
            };
            let result = dura_bench::recovery::run(&args, &connector, &read_state, &stop)?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", dura_bench::recovery::to_text(&result));
            }
            Ok(())
        }
        Some(Command::Experiment(args)) if args.name == ExperimentName::Failover => {
            install_ctrl_c(stop.clone());
            let result = dura_bench::failover::run(&args, &connector, &stop)?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", dura_bench::failover::to_text(&result));
            }
            Ok(())
        }
        Some(Command::Experiment(args)) => {
            install_ctrl_c(stop.clone());
            let connector = connector_for(args.service());
            let result = dura_bench::experiment::run(&args, connector, &stop)?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", dura_bench::experiment::to_text(&result));
            }
            Ok(())
        }
        Some(Command::Cluster { data_dir, replicas, mode, log, service }) => {
            install_ctrl_c(stop.clone());
            let mode: Mode = mode.into();
            let replicas = replicas.unwrap_or(mode.replicas_min(1) as u32);
            let mut cluster = dura_bench::runner::start_service_cluster(
                service,
                replicas,
                mode,
                log.into(),
                Some(&data_dir),
                &|_| Ok(()),
                connector_for(service),
            )?;
            println!("cluster ready: {}", cluster.config_path().display());
            std::io::stdout().flush()?;
            while !stop.load(Ordering::Relaxed) {
                cluster.check_alive()?;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        }
        Some(Command::Run(args)) => main_run(&args, &stop, connector_for(args.service)),
        None => main_run(&cli.run, &stop, connector_for(cli.run.service)),
    }
}

/// The clients of `service`'s replicas.
fn connector_for(service: ServiceName) -> &'static Connector {
    match service {
        ServiceName::Kv => &kv::connector,
        ServiceName::Tuplespace => &ts::connector,
    }
}

fn main_run(
    args: &RunArgs,
    stop: &Arc<AtomicBool>,
    connector: &dura_bench::runner::Connector,
) -> anyhow::Result<()> {
    install_ctrl_c(stop.clone());
    let summary = dura_bench::runner::run(args, connector, stop)?;
    dura_bench::runner::print_summary(&summary, args.json)
}
