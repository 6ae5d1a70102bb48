//! `dura-kv`: run SCKV-Store replicas and talk to them.
//!
//! ```text
//! dura-kv serve --config cluster.toml --id 0 --new-cluster       (a cluster's first start)
//! dura-kv serve --config cluster.toml --id 0                     (any later start)
//! dura-kv put --config cluster.toml KEY VALUE
//! dura-kv put --config cluster.toml KEY - < value.bin             (value from stdin)
//! dura-kv put --config cluster.toml KEY --value-file value.bin
//! dura-kv get --config cluster.toml KEY [--raw | --value-file out.bin]
//! dura-kv scan --config cluster.toml START END [--limit N]          (END "": to the last key)
//! dura-kv del --config cluster.toml KEY
//! dura-kv cas --config cluster.toml KEY NEW [--expected OLD]   (no --expected: key must be absent)
//! dura-kv init --hosts 10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4 --out cluster.toml
//! dura-kv init --hosts a:7000 --host b:7000 --host c:7000 --mode crash --f 1 --out c.toml
//! dura-kv init --replicas 3 --mode crash --base-port 7000 --data-dir /tmp/dura > cluster.toml
//! dura-kv init --replicas 4 --tls-dir /etc/dura/tls --out cluster.toml  (with TLS)
//! dura-kv local --dir DIR [--tls]                              (4 BFT replicas on loopback)
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dura_engine::runtime::cli::{
    InitArgs, LocalArgs, ServeArgs, Unreachable, error_text, run_init,
};
use dura_engine::runtime::{ClientOptions, ClusterConfig, RuntimeError};
use dura_kvstore::client::value_bytes_max;
use dura_kvstore::ops::SCAN_LIMIT_MAX;
use dura_kvstore::{KvClient, KvError};

/// The exit statuses, for `--help` of dura-kv and of each client command.
const EXIT_STATUS: &str = "Exit status:
  0   done (del of an absent key too: it prints `absent`)
  1   error (bad config or input, value over the cluster's bound, I/O)
  2   get: the key is absent
  3   cas: the key did not hold the expected value; nothing changed
  4   cluster unreachable: too few replicas accept a connection, or no answer within --timeout-ms
  64  command-line usage error";

#[derive(Parser, Debug)]
#[command(
    name = "dura-kv",
    about = "SCKV-Store: a durable replicated key-value store",
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Command_,
}

#[derive(Subcommand, Debug)]
enum Command_ {
    /// Run one replica until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Store VALUE under KEY. VALUE `-` reads the value from stdin; --value-file reads
    /// it from a file. Values up to the cluster's bound are accepted (several MiB with
    /// the default config); a longer one is refused before anything is sent, with the
    /// limit and the config field that sets it.
    #[command(after_help = EXIT_STATUS)]
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
    #[command(after_help = EXIT_STATUS)]
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
    /// Print the keys in [START, END) in key order, one `KEY<TAB>VALUE` line each
    /// (values as UTF-8 text). An empty END ("") scans to the last key. Each page of
    /// the scan is read through ordering (linearizable); a scan longer than one page
    /// (a reply holds up to 4 MiB) is several reads.
    #[command(after_help = EXIT_STATUS)]
    Scan {
        #[command(flatten)]
        target: Target,
        start: String,
        end: String,
        /// Most keys to print.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Remove KEY.
    #[command(after_help = EXIT_STATUS)]
    Del {
        #[command(flatten)]
        target: Target,
        key: String,
    },
    /// Set KEY to NEW if it holds EXPECTED (or is absent when --expected is not given).
    #[command(after_help = EXIT_STATUS)]
    Cas {
        #[command(flatten)]
        target: Target,
        key: String,
        new: String,
        #[arg(long)]
        expected: Option<String>,
    },
    /// Write a cluster config with fresh random keys (from the OS's random source):
    /// replicas on the given hosts, or on 127.0.0.1 from --base-port. Replica i listens
    /// on its port P for replicas, P + --client-port-offset for clients,
    /// P + --transfer-port-offset for state transfer and P + --metrics-port-offset for
    /// metrics and health; it keeps its log in DATA_DIR/r0, DATA_DIR/r1, ...
    Init(InitArgs),
    /// Write a local cluster config (fresh random keys, or the keys of the config
    /// already in DIR) into DIR and run its replicas as child processes until Ctrl-C.
    Local(LocalArgs),
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
            eprintln!("dura-kv: error: {}", error_text(&error));
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
        // A replica that refused this client (TLS on there, off here) said why before
        // it closed the connection: that is the error, not "unreachable".
        let refusals = client.raw().refusals();
        if !refusals.is_empty() {
            let reasons: Vec<String> = refusals.into_iter().map(|(_, why)| why).collect();
            return Err(KvError::Runtime(RuntimeError::Refused(reasons.join("; "))).into());
        }
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
        Command_::Serve(args) => {
            let (config, options) = args.load()?;
            dura_kvstore::serve_with(&config, args.id, options)?;
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
        Command_::Scan { target, start, end, limit } => {
            let config = load(&target)?;
            let client = client(&target, &config)?;
            let end = (!end.is_empty()).then_some(end.as_bytes());
            let mut from = start.into_bytes();
            let mut left = limit;
            let mut stdout = std::io::stdout().lock();
            while left > 0 {
                let page_limit = u32::try_from(left).unwrap_or(u32::MAX).min(SCAN_LIMIT_MAX);
                let page = client.scan(&from, end, page_limit)?;
                left -= page.entries.len() as u64;
                for (key, value) in &page.entries {
                    writeln!(
                        stdout,
                        "{}\t{}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(value)
                    )
                    .context("write to stdout")?;
                }
                match page.more {
                    Some(next) => from = next,
                    None => break,
                }
            }
            stdout.flush().context("write to stdout")?;
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
        Command_::Init(args) => run_init(args, "dura-kv")?,
        Command_::Local(args) => args.run("dura-kv", ("put", "hello world"))?,
    }
    Ok(exit::OK)
}
