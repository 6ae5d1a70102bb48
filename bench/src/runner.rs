//! The main command: start (or connect to) a cluster, load it, run the workload, write
//! and print the results.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use dura_engine::runtime::{ClusterConfig, LogMode, Mode};

use crate::cluster::LocalCluster;
use crate::driver::{self, RunResult, RunSpec};
use crate::results::{self, ReplicaRss, ReplicaView, RunLabels, Summary, value_name};
use crate::target::{MemoryTarget, TargetFactory};
use crate::tuplespace::{MemoryTupleSpace, TupleSpaceFactory};
use crate::workload::{Distribution, ServiceName, WorkloadName};

/// Opens clients to a cluster described by a config (the key-value store's or the tuple
/// space's, whichever service the cluster runs); a request not completed within the
/// given time fails.
pub type Connector = dyn Fn(&ClusterConfig, Duration) -> anyhow::Result<Box<dyn TargetFactory>>;

/// Request timeout of the benchmark's clients: long, so a slow request is measured as
/// slow rather than counted as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The load phase uses at least this many clients: more requests in flight make bigger
/// batches, and loading is not measured.
pub const LOAD_CLIENTS_MIN: usize = 64;
/// Request timeout of the start-up probe: short, so that a first request the fresh
/// cluster lost is retried by a new client instead of waited for.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the main command reads its replicas' metrics during a run.
pub const VIEW_SCRAPE_PERIOD: Duration = Duration::from_millis(100);

/// Log modes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogArg {
    /// No log.
    None,
    /// Written, never synced.
    Async,
    /// One synced write per request.
    Sync,
    /// Grouped synced writes; execution waits.
    Batched,
    /// Grouped synced writes in parallel with execution.
    Parallel,
}

impl From<LogArg> for LogMode {
    fn from(value: LogArg) -> Self {
        match value {
            LogArg::None => LogMode::None,
            LogArg::Async => LogMode::Async,
            LogArg::Sync => LogMode::Sync,
            LogArg::Batched => LogMode::Batched,
            LogArg::Parallel => LogMode::Parallel,
        }
    }
}

/// Ordering protocols on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Byzantine faults, n = 3f+1.
    Bft,
    /// Crash faults, n = 2f+1.
    Crash,
}

impl From<ModeArg> for Mode {
    fn from(value: ModeArg) -> Self {
        match value {
            ModeArg::Bft => Mode::Bft,
            ModeArg::Crash => Mode::Crash,
        }
    }
}

/// Options of the main command (`dura-bench` with no subcommand, or `dura-bench run`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The service under test: the key-value store or the tuple space.
    #[arg(long, value_enum, default_value_t = ServiceName::Kv)]
    pub service: ServiceName,
    /// Replicas of the local cluster (4 for bft f=1, 3 for crash f=1).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Ordering protocol of the local cluster.
    #[arg(long, value_enum, default_value_t = ModeArg::Bft)]
    pub mode: ModeArg,
    /// Durability mode of the local cluster.
    #[arg(long, value_enum, default_value_t = LogArg::Parallel)]
    pub log: LogArg,
    /// Where the local cluster keeps its data (default: a temp dir, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client threads.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Open loop at this many operations per second in total (default: closed loop).
    #[arg(long)]
    pub target_rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Warmup seconds, not measured.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Workload. Key-value store: w (the paper's 100% 4 KiB replaces, the default) or
    /// YCSB a-f. Tuple space: dds (the paper's 100% `out` of 1 KiB tuples of four
    /// strings, the default), queue (`out` + `in` of jobs) or lock (`cas` of a token
    /// with a lease + `inp` to release it).
    #[arg(long, value_enum)]
    pub workload: Option<WorkloadName>,
    /// Key distribution (default: the workload's own).
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Records loaded before the run (the paper: 250,000); the tuple space loads
    /// nothing, and `lock` picks among this many locks.
    #[arg(long, default_value_t = 250_000)]
    pub records: u64,
    /// Value size in bytes (the paper: 4096); the tuple space's tuple or job payload
    /// (the paper: 1024).
    #[arg(long)]
    pub value_bytes: Option<usize>,
    /// YCSB E: scan lengths are uniform in 1..=this.
    #[arg(long, default_value_t = 100)]
    pub scan_length_max: u64,
    /// Seed of the operation streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Load a running cluster described by this config instead of starting one.
    #[arg(long)]
    pub connect: Option<PathBuf>,
    /// Skip the load phase (the records already exist).
    #[arg(long)]
    pub no_load: bool,
    /// Results folder (default: `dura-bench-results/run-TIME`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Checkpoint period P of the local cluster, in requests (default: the config's).
    /// A small P makes replicas truncate their logs during the run, so appends go into
    /// recycled segments.
    #[arg(long)]
    pub checkpoint_period: Option<u64>,
    /// Log segment size of the local cluster, MiB (default: the config's).
    #[arg(long)]
    pub wal_segment_mib: Option<u32>,
    /// TLS on every connection of the local cluster (replica links, clients, state
    /// transfer), with a fresh CA and certificates in its data folder.
    #[arg(long)]
    pub tls: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Run against an in-process map instead of a cluster (checks the generator).
    #[arg(long, hide = true)]
    pub memory: bool,
}

impl RunArgs {
    /// The driver's spec.
    pub fn spec(&self) -> anyhow::Result<RunSpec> {
        anyhow::ensure!(self.clients > 0, "--clients must be at least 1");
        anyhow::ensure!(self.seconds > 0.0, "--seconds must be positive");
        anyhow::ensure!(self.warmup >= 0.0, "--warmup must not be negative");
        anyhow::ensure!(self.records > 0, "--records must be at least 1");
        anyhow::ensure!(self.scan_length_max > 0, "--scan-length-max must be at least 1");
        if let Some(rate) = self.target_rate {
            anyhow::ensure!(rate > 0.0, "--target-rate must be positive");
        }
        let workload = self.workload();
        anyhow::ensure!(
            workload.service() == self.service,
            "--workload {} runs against --service {}, not {}",
            value_name(&workload),
            workload.service(),
            self.service
        );
        Ok(RunSpec {
            workload,
            distribution: self.distribution.unwrap_or(workload.default_distribution()),
            clients: self.clients,
            target_rate: self.target_rate,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.seconds),
            records: self.records,
            value_bytes: self.value_bytes.unwrap_or(self.service.default_value_bytes()),
            scan_length_max: self.scan_length_max,
            seed: self.seed,
            trace_ops: false,
        })
    }

    /// The workload: given, or the service's default.
    pub fn workload(&self) -> WorkloadName {
        self.workload.unwrap_or(self.service.default_workload())
    }

    /// Replica count: given, or the smallest for f = 1 in the mode.
    pub fn replica_count(&self) -> u32 {
        self.replicas.unwrap_or(Mode::from(self.mode).replicas_min(1) as u32)
    }
}

/// A default results folder: `dura-bench-results/<prefix>-<unix seconds>`.
pub fn default_out_dir(prefix: &str) -> PathBuf {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("dura-bench-results").join(format!("{prefix}-{seconds}"))
}

/// A progress bar on standard error when it is a terminal; nothing otherwise.
pub fn progress_bar(label: &str) -> impl FnMut(Duration, Duration) + use<> {
    let terminal = std::io::stderr().is_terminal();
    let label = label.to_string();
    let mut last_drawn = None;
    move |elapsed: Duration, total: Duration| {
        if !terminal {
            return;
        }
        const WIDTH: usize = 30;
        let fraction = if total.is_zero() {
            1.0
        } else {
            (elapsed.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
        };
        let filled = (fraction * WIDTH as f64).round() as usize;
        let left = total.saturating_sub(elapsed).as_secs();
        if last_drawn == Some((filled, left)) {
            return;
        }
        last_drawn = Some((filled, left));
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{label} [{}{}] {:>3.0}%  {left} s left ",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            fraction * 100.0
        );
        if fraction >= 1.0 {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// A load-phase progress bar (the driver reports records as milliseconds).
fn load_bar() -> impl FnMut(Duration, Duration) {
    let terminal = std::io::stderr().is_terminal();
    move |done: Duration, total: Duration| {
        if terminal {
            let _ = write!(
                std::io::stderr(),
                "\rloading {} / {} records ",
                done.as_millis(),
                total.as_millis()
            );
        }
    }
}

/// Loads the records of `spec` into `factory` (at least [`LOAD_CLIENTS_MIN`] clients);
/// returns the seconds it took.
pub fn load_records(
    factory: &dyn TargetFactory,
    spec: &RunSpec,
    stop: &AtomicBool,
) -> anyhow::Result<f64> {
    let load_started = std::time::Instant::now();
    let mut bar = load_bar();
    let complete = driver::load(
        factory,
        spec.records,
        spec.value_bytes,
        spec.clients.max(LOAD_CLIENTS_MIN),
        stop,
        &mut bar,
    )?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    anyhow::ensure!(complete, "interrupted while loading");
    Ok(load_started.elapsed().as_secs_f64())
}

/// An in-process target for `service` (no cluster): checks the workloads' plumbing.
pub fn memory_target(service: ServiceName) -> Box<dyn TargetFactory> {
    match service {
        ServiceName::Kv => Box::new(MemoryTarget::new()),
        ServiceName::Tuplespace => Box::new(TupleSpaceFactory(MemoryTupleSpace::new())),
    }
}

/// Loads the records of `spec` (unless `skip`, or its workload loads none) and runs
/// it against `factory`.
pub fn load_and_run(
    factory: &dyn TargetFactory,
    spec: &RunSpec,
    skip_load: bool,
    stop: &AtomicBool,
    label: &str,
) -> anyhow::Result<RunResult> {
    let skip_load = skip_load || !spec.workload.loads_records();
    let load_s = if skip_load { 0.0 } else { load_records(factory, spec, stop)? };
    let mut bar = progress_bar(label);
    let mut result = driver::run(factory, spec, stop, &mut bar)?;
    result.load_s = load_s;
    Ok(result)
}

/// Runs the main command; returns the summary (already written to its folder).
pub fn run(args: &RunArgs, connector: &Connector, stop: &AtomicBool) -> anyhow::Result<Summary> {
    let spec = args.spec()?;
    let out_dir = args.out.clone().unwrap_or_else(|| default_out_dir("run"));
    let mode: Mode = args.mode.into();
    let log_mode: LogMode = args.log.into();
    let mut replica_view = None;
    let (result, labels, rss, replica_log) = if args.memory {
        let target = memory_target(args.service);
        let result = load_and_run(target.as_ref(), &spec, args.no_load, stop, "memory")?;
        let labels = RunLabels {
            target: "memory".into(),
            mode: "none".into(),
            log_mode: "none".into(),
            replicas: 0,
            storage: None,
        };
        (result, labels, Vec::new(), Vec::new())
    } else if let Some(path) = &args.connect {
        let config = ClusterConfig::load(path)?;
        let factory = connector(&config, REQUEST_TIMEOUT)?;
        let result = load_and_run(factory.as_ref(), &spec, args.no_load, stop, "run")?;
        let labels = RunLabels {
            target: "connect".into(),
            mode: config.mode.to_string(),
            log_mode: config.log_mode.to_string(),
            replicas: config.n(),
            storage: None,
        };
        (result, labels, Vec::new(), Vec::new())
    } else {
        let replicas = args.replica_count();
        let configure = |config: &mut ClusterConfig| -> anyhow::Result<()> {
            if let Some(period) = args.checkpoint_period {
                config.checkpoint_period = period;
            }
            if let Some(mib) = args.wal_segment_mib {
                config.wal_segment_mib = mib;
            }
            if args.tls {
                let root = config.replicas[0]
                    .data_dir
                    .parent()
                    .context("a local replica's data dir is in the cluster's folder")?
                    .to_path_buf();
                dura_kvstore::pki::generate_tls(config, &root.join("tls"))?;
            }
            crate::cluster::add_metrics_ports(config)
        };
        let mut cluster = start_service_cluster(
            args.service,
            replicas,
            mode,
            log_mode,
            args.data_dir.as_deref(),
            &configure,
            connector,
        )?;
        let metrics = crate::cluster::metrics_addrs(cluster.config())?;
        let addresses: Vec<String> =
            metrics.iter().enumerate().map(|(id, addr)| format!("r{id} {addr}")).collect();
        eprintln!(
            "replicas' metrics and health (curl http://ADDR/metrics, /health): {}",
            addresses.join(", ")
        );
        let factory = connector(cluster.config(), REQUEST_TIMEOUT)?;
        let skip_load = args.no_load || !spec.workload.loads_records();
        let load_s = if skip_load { 0.0 } else { load_records(factory.as_ref(), &spec, stop)? };
        let origin = Instant::now();
        let done = AtomicBool::new(false);
        let (result, samples) = std::thread::scope(|scope| {
            let scraper = scope.spawn(|| scrape_view(&metrics, origin, &done));
            let mut bar = progress_bar("run");
            let result = driver::run(factory.as_ref(), &spec, stop, &mut bar);
            done.store(true, Ordering::Relaxed);
            (result, scraper.join().expect("the metrics scraper panicked"))
        });
        let mut result = result?;
        result.load_s = load_s;
        let shift = result.measure_start.saturating_duration_since(origin).as_secs_f64();
        replica_view = Some(view_of(&samples, shift, &result, &metrics));
        cluster.check_alive()?;
        let labels = RunLabels {
            target: if args.tls { "cluster (TLS)".into() } else { "cluster".into() },
            mode: mode.to_string(),
            log_mode: log_mode.to_string(),
            replicas,
            storage: results::describe_storage(cluster.data_dir()),
        };
        let rss = cluster.peak_rss();
        drop(factory);
        (result, labels, rss, cluster.stop())
    };
    let mut summary = Summary::new(&result, &spec, &labels, &out_dir);
    summary.replica_rss = rss;
    summary.replica_log = replica_log;
    summary.replica_view = replica_view;
    results::write_all(&summary, &result)?;
    Ok(summary)
}

/// One read of every replica's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSample {
    /// When, in milliseconds since the origin.
    pub at_ms: u64,
    /// Each replica's `dura_batch_requests_decided_total` (None: not read).
    pub decided: Vec<Option<u64>>,
    /// Each replica's `dura_regency`.
    pub regency: Vec<Option<u64>>,
}

/// Reads every replica's metrics each [`VIEW_SCRAPE_PERIOD`] until `done`.
fn scrape_view(metrics: &[SocketAddr], origin: Instant, done: &AtomicBool) -> Vec<ViewSample> {
    let mut samples = Vec::new();
    let mut next = Instant::now();
    loop {
        let last_round = done.load(Ordering::Relaxed);
        let at_ms = origin.elapsed().as_millis() as u64;
        let pages: Vec<Option<String>> = metrics
            .iter()
            .map(|&addr| crate::checkpoints::http_get(addr, "/metrics").ok())
            .collect();
        let read = |name: &str| -> Vec<Option<u64>> {
            pages.iter().map(|page| crate::recovery::metric_value(page.as_ref()?, name)).collect()
        };
        samples.push(ViewSample {
            at_ms,
            decided: read("dura_batch_requests_decided_total"),
            regency: read("dura_regency"),
        });
        if last_round {
            return samples;
        }
        next += VIEW_SCRAPE_PERIOD;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// The replicas' view of a run from its `samples` (`shift`: seconds from their origin
/// to the measured window's start): each measured second's requests decided by the
/// replica that decided most, between the samples nearest its ends (within half a
/// second), and the regencies at the window's ends.
pub fn view_of(
    samples: &[ViewSample],
    shift: f64,
    result: &RunResult,
    metrics: &[SocketAddr],
) -> ReplicaView {
    let nearest = |window_s: f64| -> Option<&ViewSample> {
        let at_ms = ((window_s + shift).max(0.0) * 1000.0) as u64;
        samples
            .iter()
            .min_by_key(|sample| sample.at_ms.abs_diff(at_ms))
            .filter(|sample| sample.at_ms.abs_diff(at_ms) <= 500)
    };
    let decided_between = |from: &ViewSample, to: &ViewSample| -> Option<u64> {
        from.decided
            .iter()
            .zip(&to.decided)
            .filter_map(|(from, to)| Some(to.as_ref()?.saturating_sub(*from.as_ref()?)))
            .max()
    };
    let decided_per_second = (0..result.per_second.len())
        .map(|second| {
            let (from, to) = (nearest(second as f64)?, nearest(second as f64 + 1.0)?);
            decided_between(from, to)
        })
        .collect();
    let (start, end) = (nearest(0.0), nearest(result.measured.as_secs_f64()));
    let decided_per_s = match (start, end) {
        (Some(start), Some(end)) if end.at_ms > start.at_ms => decided_between(start, end)
            .map(|count| count as f64 * 1000.0 / (end.at_ms - start.at_ms) as f64),
        _ => None,
    };
    let regency_start = start.map_or_else(|| vec![None; metrics.len()], |s| s.regency.clone());
    let regency_end = end.map_or_else(|| vec![None; metrics.len()], |s| s.regency.clone());
    ReplicaView {
        metrics: metrics.iter().map(ToString::to_string).collect(),
        decided_per_second,
        decided_per_s,
        leader_changes: crate::failover::regency_moves(&regency_start, &regency_end),
        regency_start,
        regency_end,
    }
}

/// Starts a local cluster and waits until a client can write to it.
pub fn start_cluster(
    replicas: u32,
    mode: Mode,
    log_mode: LogMode,
    data_dir: Option<&Path>,
    connector: &Connector,
) -> anyhow::Result<LocalCluster> {
    start_cluster_configured(replicas, mode, log_mode, data_dir, &|_| Ok(()), connector)
}

/// [`start_cluster`] with `configure` changing the config before it is saved (see
/// [`LocalCluster::start_configured`]).
pub fn start_cluster_configured(
    replicas: u32,
    mode: Mode,
    log_mode: LogMode,
    data_dir: Option<&Path>,
    configure: &dyn Fn(&mut ClusterConfig) -> anyhow::Result<()>,
    connector: &Connector,
) -> anyhow::Result<LocalCluster> {
    start_service_cluster(ServiceName::Kv, replicas, mode, log_mode, data_dir, configure, connector)
}

/// [`start_cluster_configured`] with the replicas running `service` (`connector` opens
/// its clients).
pub fn start_service_cluster(
    service: ServiceName,
    replicas: u32,
    mode: Mode,
    log_mode: LogMode,
    data_dir: Option<&Path>,
    configure: &dyn Fn(&mut ClusterConfig) -> anyhow::Result<()>,
    connector: &Connector,
) -> anyhow::Result<LocalCluster> {
    let ready = |config: &ClusterConfig| -> anyhow::Result<()> {
        connector(config, PROBE_TIMEOUT)?.probe()?;
        Ok(())
    };
    // No retry on a fresh cluster: one that does not answer is a bug to report, with
    // the replicas' logs, not to hide.
    LocalCluster::start_service(service, replicas, mode, log_mode, data_dir, configure, &ready)
        .with_context(|| {
            format!("start {replicas} replicas of the {service} ({mode}, log {log_mode})")
        })
}

/// Prints `summary` as JSON or as the report.
pub fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(())
}

/// Peak RSS of a local cluster's replicas, as `(id, bytes)` text.
pub fn rss_text(rss: &[ReplicaRss]) -> String {
    rss.iter()
        .map(|replica| match replica.peak_rss_bytes {
            Some(bytes) => format!("r{} {:.0} MiB", replica.id, bytes as f64 / 1048576.0),
            None => format!("r{} ?", replica.id),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
