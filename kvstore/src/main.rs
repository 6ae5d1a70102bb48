//! `dura-kv`: run SCKV-Store replicas and talk to them.
//!
//! ```text
//! dura-kv serve --config cluster.toml --id 0
//! dura-kv put --config cluster.toml KEY VALUE
//! dura-kv put --config cluster.toml KEY - < value.bin             (value from stdin)
//! dura-kv put --config cluster.toml KEY --value-file value.bin
//! dura-kv get --config cluster.toml KEY [--raw | --value-file out.bin]
//! dura-kv del --config cluster.toml KEY
//! dura-kv cas --config cluster.toml KEY NEW [--expected OLD]   (no --expected: key must be absent)
//! dura-kv local --dir DIR                                      (4 BFT replicas on loopback)
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dura_engine::runtime::{ClientOptions, ClusterConfig, LogMode, Mode, RuntimeError};
use dura_kvstore::client::value_bytes_max;
use dura_kvstore::{KvClient, KvError};

#[derive(Parser, Debug)]
#[command(
    name = "dura-kv",
    about = "SCKV-Store: a durable replicated key-value store",
    after_help = "Exit status:\n  \
        0   done\n  \
        1   error (bad config or input, value over the cluster's bound, I/O)\n  \
        2   get: the key is absent\n  \
        3   cas: the key did not hold the expected value; nothing changed\n  \
        4   cluster unreachable: too few replicas accept a connection, or no answer \
            within --timeout-ms\n  \
        64  command-line usage error"
)]
struct Cli {
    #[command(subcommand)]
    command: Command_,
}

#[derive(Subcommand, Debug)]
enum Command_ {
    /// Run one replica until SIGTERM or SIGINT.
    Serve {
        /// Cluster config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// This replica's id.
        #[arg(long)]
        id: u32,
        /// Override the config's log mode (none, async, sync, batched, parallel).
        #[arg(long)]
        log_mode: Option<String>,
    },
    /// Store VALUE under KEY. VALUE `-` reads the value from stdin; --value-file reads
    /// it from a file. Values up to the cluster's bound are accepted (several MiB with
    /// the default config); a longer one is refused before anything is sent, with the
    /// limit and the config field that sets it.
    Put {
        #[command(flatten)]
        target: Target,
        key: String,
        /// The value, or `-` for stdin.
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file (bytes as they are).
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// Print the value under KEY (as UTF-8 text with a newline, unless --raw or
    /// --value-file).
    Get {
        #[command(flatten)]
        target: Target,
        key: String,
        /// Write the value's bytes to stdout as they are, without a newline.
        #[arg(long, conflicts_with = "value_file")]
        raw: bool,
        /// Write the value's bytes to this file.
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// Remove KEY.
    Del {
        #[command(flatten)]
        target: Target,
        key: String,
    },
    /// Set KEY to NEW if it holds EXPECTED (or is absent when --expected is not given).
    Cas {
        #[command(flatten)]
        target: Target,
        key: String,
        new: String,
        #[arg(long)]
        expected: Option<String>,
    },
    /// Write a local cluster config into DIR and run its replicas as child processes
    /// until Ctrl-C.
    Local {
        /// Directory for the config and the replicas' data.
        #[arg(long)]
        dir: PathBuf,
        /// bft (4 replicas) or crash (3 replicas).
        #[arg(long, default_value = "bft")]
        mode: String,
        /// none, async, sync, batched or parallel.
        #[arg(long, default_value = "parallel")]
        log_mode: String,
    },
}

/// Which cluster a client command talks to.
#[derive(Args, Debug)]
struct Target {
    /// Cluster config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Give up on a request after this many milliseconds.
    #[arg(long, default_value_t = 15_000)]
    timeout_ms: u64,
}

/// Exit statuses, as `--help` lists them.
mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// Any error not listed below.
    pub const ERROR: i32 = 1;
    /// `get`: the key is absent.
    pub const ABSENT: i32 = 2;
    /// `cas`: the key did not hold the expected value.
    pub const NOT_SWAPPED: i32 = 3;
    /// Too few replicas reachable, or no answer in time.
    pub const UNREACHABLE: i32 = 4;
    /// Bad command line (sysexits' EX_USAGE; clap's own 2 would read as "absent").
    pub const USAGE: i32 = 64;
}

/// The cluster cannot answer: fewer replicas accept a connection than a reply needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "cluster unreachable: {connected} of {n} replicas accept a connection, {needed} needed \
     for an answer (is the cluster running? config {config})"
)]
struct Unreachable {
    connected: usize,
    needed: usize,
    n: u32,
    config: String,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            std::process::exit(if error.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("dura-kv: error: {error:#}");
            std::process::exit(if is_unreachable(&error) {
                exit::UNREACHABLE
            } else {
                exit::ERROR
            });
        }
    }
}

/// Whether `error` means the cluster could not be reached or did not answer in time.
fn is_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<Unreachable>()
            || matches!(
                cause.downcast_ref::<KvError>(),
                Some(KvError::Runtime(RuntimeError::Timeout { .. }))
            )
    })
}

fn load(target: &Target) -> Result<ClusterConfig> {
    Ok(ClusterConfig::load(&target.config)?)
}

fn client(target: &Target, config: &ClusterConfig) -> Result<KvClient> {
    let options = ClientOptions {
        request_timeout: Duration::from_millis(target.timeout_ms),
        ..ClientOptions::new()
    };
    let client = KvClient::connect_with(config, options)?;
    let (connected, needed) = client.connected_replicas();
    if connected < needed {
        return Err(Unreachable {
            connected,
            needed,
            n: config.n(),
            config: target.config.display().to_string(),
        }
        .into());
    }
    Ok(client)
}

/// Reads a value from `source` (stdin or a file), refusing one over `limit` bytes
/// without reading more than one byte past it.
fn read_value(
    source: impl Read,
    what: &str,
    limit: usize,
    config: &ClusterConfig,
) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    source
        .take(limit as u64 + 1)
        .read_to_end(&mut value)
        .with_context(|| format!("read the value from {what}"))?;
    if value.len() > limit {
        bail!(
            "the value from {what} is over {limit} bytes, the longest this cluster takes \
             under this key ({})",
            config.operation_bound()
        );
    }
    Ok(value)
}

/// Runs one command; the exit status for an outcome that is not an error.
fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command_::Serve { config, id, log_mode } => {
            let mut config = ClusterConfig::load(&config)?;
            if let Some(mode) = log_mode {
                config.log_mode = mode.parse()?;
            }
            dura_kvstore::serve(&config, id)?;
        }
        Command_::Put { target, key, value, value_file } => {
            let config = load(&target)?;
            let limit = value_bytes_max(config.operation_bound(), key.len());
            let value = match (value, value_file) {
                (_, Some(path)) => {
                    let file = std::fs::File::open(&path)
                        .with_context(|| format!("open value file {}", path.display()))?;
                    read_value(file, &path.display().to_string(), limit, &config)?
                }
                (Some(value), None) if value == "-" => {
                    read_value(std::io::stdin().lock(), "stdin", limit, &config)?
                }
                (Some(value), None) => value.into_bytes(),
                (None, None) => bail!("give a VALUE, `-` for stdin, or --value-file"),
            };
            client(&target, &config)?.put(key.as_bytes(), &value)?;
            println!("ok");
        }
        Command_::Get { target, key, raw, value_file } => {
            let config = load(&target)?;
            match client(&target, &config)?.get(key.as_bytes())? {
                Some(value) => match value_file {
                    Some(path) => std::fs::write(&path, &value)
                        .with_context(|| format!("write value file {}", path.display()))?,
                    None if raw => {
                        let mut stdout = std::io::stdout().lock();
                        stdout.write_all(&value).context("write the value to stdout")?;
                        stdout.flush().context("write the value to stdout")?;
                    }
                    None => println!("{}", String::from_utf8_lossy(&value)),
                },
                None => {
                    eprintln!("(absent)");
                    return Ok(exit::ABSENT);
                }
            }
        }
        Command_::Del { target, key } => {
            let config = load(&target)?;
            let existed = client(&target, &config)?.delete(key.as_bytes())?;
            println!("{}", if existed { "deleted" } else { "absent" });
        }
        Command_::Cas { target, key, new, expected } => {
            let config = load(&target)?;
            let swapped = client(&target, &config)?.cas(
                key.as_bytes(),
                expected.as_deref().map(str::as_bytes),
                new.as_bytes(),
            )?;
            println!("{}", if swapped { "swapped" } else { "not swapped" });
            if !swapped {
                return Ok(exit::NOT_SWAPPED);
            }
        }
        Command_::Local { dir, mode, log_mode } => local(&dir, mode.parse()?, log_mode.parse()?)?,
    }
    Ok(exit::OK)
}

/// Kills every child it holds when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn local(dir: &Path, mode: Mode, log_mode: LogMode) -> Result<()> {
    let n = mode.replicas_for(1);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolve {}", dir.display()))?;
    let config = ClusterConfig::local(n, mode, log_mode, &dir.join("data"))?;
    let config_path = dir.join("cluster.toml");
    config.save(&config_path)?;
    let exe = std::env::current_exe().context("find the dura-kv binary")?;
    let mut children = Children(Vec::new());
    for id in 0..n {
        let child = Command::new(&exe)
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--id", &id.to_string()])
            .spawn()
            .with_context(|| format!("start replica {id}"))?;
        children.0.push(child);
    }
    println!(
        "{n} replicas ({mode}, log mode {log_mode}) running; config {}",
        config_path.display()
    );
    println!("try: {} put --config {} hello world", exe.display(), config_path.display());
    println!("Ctrl-C stops them.");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("install signal handler")?;
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (id, child) in children.0.iter_mut().enumerate() {
            if let Some(status) = child.try_wait().context("poll a replica")? {
                bail!("replica {id} exited with {status}");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for child in &children.0 {
        // SAFETY-free graceful stop: ask each replica to shut down with SIGTERM.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    for child in &mut children.0 {
        let _ = child.wait();
    }
    Ok(())
}
