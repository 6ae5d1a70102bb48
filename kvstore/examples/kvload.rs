//! A temporary load driver (the bench crate has the real one): starts a local cluster
//! of `dura-kv serve` processes per log mode, runs closed-loop puts from many client
//! sessions, and prints throughput and latency.
//!
//! ```text
//! cargo run --profile ci -p dura-kvstore --example kvload -- \
//!     --bin target/ci/dura-kv --mode bft --log-modes none,parallel \
//!     --clients 64 --seconds 10 --value-bytes 4096
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dura_engine::runtime::ClientOptions;
use dura_kvstore::{ClusterConfig, KvClient, LogMode, Mode};

struct Args {
    bin: PathBuf,
    mode: Mode,
    log_modes: Vec<LogMode>,
    clients: usize,
    seconds: u64,
    value_bytes: usize,
    dir: PathBuf,
    wal_preallocate: Option<String>,
    wal_segment_mib: Option<u32>,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        bin: PathBuf::from("target/ci/dura-kv"),
        mode: Mode::Bft,
        log_modes: vec![LogMode::None, LogMode::Parallel],
        clients: 64,
        seconds: 10,
        value_bytes: 4096,
        dir: std::env::temp_dir().join("dura-kvload"),
        wal_preallocate: None,
        wal_segment_mib: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bin" => args.bin = value.into(),
            "--mode" => args.mode = value.parse()?,
            "--log-modes" => {
                args.log_modes = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--clients" => args.clients = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--value-bytes" => args.value_bytes = value.parse()?,
            "--dir" => args.dir = value.into(),
            "--wal-preallocate" => args.wal_preallocate = Some(value),
            "--wal-segment-mib" => args.wal_segment_mib = Some(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn run_mode(args: &Args, log_mode: LogMode) -> Result<(f64, Vec<Duration>)> {
    let dir = args.dir.join(log_mode.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut config =
        ClusterConfig::local(args.mode.replicas_min(1) as u32, args.mode, log_mode, &dir)?;
    config.pin_cores = false;
    if let Some(how) = &args.wal_preallocate {
        config.wal_preallocate = how.clone();
    }
    if let Some(mib) = args.wal_segment_mib {
        config.wal_segment_mib = mib;
    }
    config.validate()?;
    let config_path = dir.join("cluster.toml");
    config.save(&config_path)?;
    let mut children = Children(Vec::new());
    for id in 0..config.n() {
        let log = std::fs::File::create(dir.join(format!("replica{id}.log")))?;
        children.0.push(
            Command::new(&args.bin)
                .args(["serve", "--config"])
                .arg(&config_path)
                .args(["--id", &id.to_string(), "--new-cluster"])
                .env(
                    "RUST_LOG",
                    std::env::var("DURA_REPLICA_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("spawn dura-kv serve")?,
        );
    }
    let options = ClientOptions { sessions_max: args.clients, ..ClientOptions::new() };
    let client = KvClient::connect_with(&config, options)?;
    // Warm up: the first request waits for the replicas' recovery handshake.
    client.put(b"warmup", b"x")?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|t| {
            let client = client.clone();
            let stop = stop.clone();
            let value = vec![b'v'; args.value_bytes];
            thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("t{t}-k{}", i % 1000);
                    let at = Instant::now();
                    if client.put(key.as_bytes(), &value).is_err() {
                        break;
                    }
                    latencies.push(at.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for thread in threads {
        latencies.extend(thread.join().map_err(|_| anyhow::anyhow!("load thread panicked"))?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok((latencies.len() as f64 / elapsed, latencies))
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = parse()?;
    let mut results = Vec::new();
    for log_mode in &args.log_modes {
        let (throughput, latencies) = run_mode(&args, *log_mode)?;
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
        };
        println!(
            "mode {} log {:<8} clients {:>3} value {:>5} B: {:>9.0} ops/s  p50 {:>8.2?} p99 {:>8.2?} ({} ops)",
            args.mode,
            log_mode.to_string(),
            args.clients,
            args.value_bytes,
            throughput,
            at(0.5).unwrap_or_default(),
            at(0.99).unwrap_or_default(),
            latencies.len()
        );
        results.push((*log_mode, throughput));
    }
    if let (Some((_, none)), Some((_, parallel))) = (
        results.iter().find(|(m, _)| *m == LogMode::None),
        results.iter().find(|(m, _)| *m == LogMode::Parallel),
    ) {
        println!("parallel / none throughput ratio: {:.3}", parallel / none);
    }
    Ok(())
}
