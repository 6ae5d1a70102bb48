//! `dura-ts`: run Durable DepSpace replicas and talk to them.
//!
//! ```text
//! dura-ts local --dir DIR                                     (4 BFT replicas on loopback)
//! dura-ts init --replicas 4 --base-port 7000 --data-dir /var/lib/dura --out cluster.toml
//! dura-ts serve --config cluster.toml --id 0 --new-cluster      (a cluster's first start)
//! dura-ts out --config C "('job', 7, 'resize')" [--lease-ms 30000]
//! dura-ts rdp|inp --config C "('job', *int, *)"
//! dura-ts rd|in --config C "('job', *int, *)" [--timeout 5s]
//! dura-ts cas --config C "('leader', *)" "('leader', 'me')" [--lease-ms 3000]
//! dura-ts replace --config C "('leader', 'me')" "('leader', 'me', 2)"
//! dura-ts count --config C "('job', *, *)"
//! dura-ts renew --config C "('leader', 'me')" --lease-ms 3000
//! dura-ts rd-all|in-all --config C "('job', *, *)" [--limit 100]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dura_engine::runtime::cli::{
    InitArgs, LocalArgs, ServeArgs, Unreachable, error_text, run_init,
};
use dura_engine::runtime::{ClientOptions, ClusterConfig, RuntimeError};
use dura_ts::{CasOutcome, TsClient, TsError};
use dura_tuplespace::space::{ALL_LIMIT_MAX, LEASE_MS_MAX};
use dura_tuplespace::{Template, Tuple, parse_template, parse_tuple};

/// The exit statuses, for `--help` of dura-ts and of each client command.
const EXIT_STATUS: &str = "Exit status:
  0   done
  1   error: bad config or input (a malformed tuple or template, a field or tuple over
      its bound, a template no tuple can match, a lease or limit out of range: nothing
      is sent), refused by the tuple space (nothing changed), I/O
  2   rdp, inp, replace, renew: no tuple matched (`(none)` on stderr); nothing changed
  3   cas: a matching tuple exists (printed); nothing was written
  4   cluster unreachable: too few replicas accept a connection, or no answer within
      --timeout-ms
  5   rd, in: --timeout passed; the request was cancelled through ordering and nothing
      was read or taken
  6   rd, in: --timeout passed, and whether the request ran is not confirmed (the
      message says what is known)
  64  command-line usage error";

#[derive(Parser, Debug)]
#[command(
    name = "dura-ts",
    about = "Durable DepSpace: a durable replicated tuple space",
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
    /// Write TUPLE, e.g. "('job', 7, 'resize')". With --lease-ms it is removed that
    /// long after the write (by the cluster's agreed time).
    #[command(after_help = EXIT_STATUS)]
    Out {
        #[command(flatten)]
        target: Target,
        tuple: String,
        #[command(flatten)]
        lease: Lease,
    },
    /// Print the first tuple matching TEMPLATE, e.g. "('job', *int, *)", or `(none)`.
    #[command(after_help = EXIT_STATUS)]
    Rdp {
        #[command(flatten)]
        target: Target,
        template: String,
    },
    /// Take and print the first tuple matching TEMPLATE, or `(none)`.
    #[command(after_help = EXIT_STATUS)]
    Inp {
        #[command(flatten)]
        target: Target,
        template: String,
    },
    /// Print the first tuple matching TEMPLATE, waiting until one is written.
    #[command(after_help = EXIT_STATUS)]
    Rd {
        #[command(flatten)]
        target: Target,
        template: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Take and print the first tuple matching TEMPLATE, waiting until one is written.
    #[command(after_help = EXIT_STATUS)]
    In {
        #[command(flatten)]
        target: Target,
        template: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Write TUPLE if nothing matches TEMPLATE (prints `ok`); else print the first
    /// match and write nothing (exit 3).
    #[command(after_help = EXIT_STATUS)]
    Cas {
        #[command(flatten)]
        target: Target,
        template: String,
        tuple: String,
        #[command(flatten)]
        lease: Lease,
    },
    /// Take the first match of TEMPLATE and write TUPLE in its place; prints the old
    /// tuple, or `(none)` (nothing written).
    #[command(after_help = EXIT_STATUS)]
    Replace {
        #[command(flatten)]
        target: Target,
        template: String,
        tuple: String,
        #[command(flatten)]
        lease: Lease,
    },
    /// Print how many tuples match TEMPLATE.
    #[command(after_help = EXIT_STATUS)]
    Count {
        #[command(flatten)]
        target: Target,
        template: String,
    },
    /// Give the first match of TEMPLATE a lease of --lease-ms from now; prints it, or
    /// `(none)`.
    #[command(after_help = EXIT_STATUS)]
    Renew {
        #[command(flatten)]
        target: Target,
        template: String,
        /// The new lease, in milliseconds.
        #[arg(long)]
        lease_ms: u64,
    },
    /// Print up to --limit tuples matching TEMPLATE, first first, one per line.
    #[command(name = "rd-all", after_help = EXIT_STATUS)]
    RdAll {
        #[command(flatten)]
        target: Target,
        template: String,
        /// Most tuples (1..=1024).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Take and print up to --limit tuples matching TEMPLATE, first first.
    #[command(name = "in-all", after_help = EXIT_STATUS)]
    InAll {
        #[command(flatten)]
        target: Target,
        template: String,
        /// Most tuples (1..=1024).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Write a cluster config with fresh random keys (as `dura-kv init`).
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
    /// Give up on a request after this many milliseconds (not on a waiting rd/in:
    /// see --timeout).
    #[arg(long, default_value_t = 15_000)]
    timeout_ms: u64,
}

/// A written tuple's lease.
#[derive(Args, Debug)]
struct Lease {
    /// Remove the tuple this many milliseconds after the write (1..=30 days).
    #[arg(long)]
    lease_ms: Option<u64>,
}

/// How long a rd/in waits.
#[derive(Args, Debug)]
struct Wait {
    /// Stop waiting after this long (`500ms`, `5s`, `2m`; a bare number is ms): the
    /// request is cancelled through ordering, and the tuple is printed anyway if it
    /// was answered before the cancel ran. Without it, wait until a tuple matches.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1)
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let ms = value.checked_mul(unit_ms).ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Exit statuses, as `--help` lists them.
mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const NONE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const UNREACHABLE: i32 = 4;
    pub const TIMED_OUT: i32 = 5;
    pub const UNCONFIRMED: i32 = 6;
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
            eprintln!("dura-ts: error: {}", error_text(&error));
            std::process::exit(exit_status(&error));
        }
    }
}

fn exit_status(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.is::<Unreachable>() {
            return exit::UNREACHABLE;
        }
        match cause.downcast_ref::<TsError>() {
            Some(TsError::Runtime(RuntimeError::Timeout { .. })) => return exit::UNREACHABLE,
            Some(TsError::TimedOut { .. }) => return exit::TIMED_OUT,
            Some(TsError::Unconfirmed { .. }) => return exit::UNCONFIRMED,
            _ => {}
        }
    }
    exit::ERROR
}

fn tuple_arg(text: &str) -> Result<Tuple> {
    parse_tuple(text).with_context(|| format!("malformed tuple {text}"))
}

fn template_arg(text: &str) -> Result<Template> {
    parse_template(text).with_context(|| format!("malformed template {text}"))
}

fn lease_arg(lease_ms: Option<u64>) -> Result<Option<u64>> {
    if let Some(ms) = lease_ms
        && !(1..=LEASE_MS_MAX).contains(&ms)
    {
        bail!("--lease-ms {ms} is outside 1..={LEASE_MS_MAX} (30 days)");
    }
    Ok(lease_ms)
}

fn limit_arg(limit: u32) -> Result<u32> {
    if !(1..=ALL_LIMIT_MAX).contains(&limit) {
        bail!("--limit {limit} is outside 1..={ALL_LIMIT_MAX}");
    }
    Ok(limit)
}

/// Connects to the cluster of `target`, refusing at once when too few replicas are up.
fn client(target: &Target) -> Result<TsClient> {
    let config = ClusterConfig::load(&target.config)?;
    let options = ClientOptions {
        request_timeout: Duration::from_millis(target.timeout_ms),
        ..ClientOptions::new()
    };
    let client = TsClient::connect_with(&config, options)?;
    let (connected, needed) = client.connected_replicas();
    if connected < needed {
        let refusals = client.raw().refusals();
        if !refusals.is_empty() {
            let reasons: Vec<String> = refusals.into_iter().map(|(_, why)| why).collect();
            return Err(TsError::Runtime(RuntimeError::Refused(reasons.join("; "))).into());
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

/// Prints `tuple`, or `(none)` on stderr with exit status 2.
fn print_found(tuple: Option<Tuple>) -> i32 {
    match tuple {
        Some(tuple) => {
            println!("{tuple}");
            exit::OK
        }
        None => {
            eprintln!("(none)");
            exit::NONE
        }
    }
}

/// Runs one command; the exit status for an outcome that is not an error.
fn run(cli: Cli) -> Result<i32> {
    // Every argument is checked before anything is sent.
    Ok(match cli.command {
        Command_::Serve(args) => {
            let (config, options) = args.load()?;
            dura_ts::serve_with(&config, args.id, options)?;
            exit::OK
        }
        Command_::Out { target, tuple, lease } => {
            let (tuple, lease_ms) = (tuple_arg(&tuple)?, lease_arg(lease.lease_ms)?);
            client(&target)?.out(&tuple, lease_ms)?;
            println!("ok");
            exit::OK
        }
        Command_::Rdp { target, template } => {
            let template = template_arg(&template)?;
            print_found(client(&target)?.rdp(&template)?)
        }
        Command_::Inp { target, template } => {
            let template = template_arg(&template)?;
            print_found(client(&target)?.inp(&template)?)
        }
        Command_::Rd { target, template, wait } => {
            let template = template_arg(&template)?;
            print_found(Some(client(&target)?.rd(&template, wait.timeout)?))
        }
        Command_::In { target, template, wait } => {
            let template = template_arg(&template)?;
            print_found(Some(client(&target)?.in_(&template, wait.timeout)?))
        }
        Command_::Cas { target, template, tuple, lease } => {
            let (template, tuple) = (template_arg(&template)?, tuple_arg(&tuple)?);
            let lease_ms = lease_arg(lease.lease_ms)?;
            match client(&target)?.cas(&template, &tuple, lease_ms)? {
                CasOutcome::Written => {
                    println!("ok");
                    exit::OK
                }
                CasOutcome::Exists(existing) => {
                    println!("{existing}");
                    exit::EXISTS
                }
            }
        }
        Command_::Replace { target, template, tuple, lease } => {
            let (template, tuple) = (template_arg(&template)?, tuple_arg(&tuple)?);
            let lease_ms = lease_arg(lease.lease_ms)?;
            print_found(client(&target)?.replace(&template, &tuple, lease_ms)?)
        }
        Command_::Count { target, template } => {
            let template = template_arg(&template)?;
            println!("{}", client(&target)?.count(&template)?);
            exit::OK
        }
        Command_::Renew { target, template, lease_ms } => {
            let template = template_arg(&template)?;
            let lease_ms = lease_arg(Some(lease_ms))?.expect("given");
            print_found(client(&target)?.renew(&template, lease_ms)?)
        }
        Command_::RdAll { target, template, limit } => {
            let (template, limit) = (template_arg(&template)?, limit_arg(limit)?);
            for tuple in client(&target)?.rd_all(&template, limit)? {
                println!("{tuple}");
            }
            exit::OK
        }
        Command_::InAll { target, template, limit } => {
            let (template, limit) = (template_arg(&template)?, limit_arg(limit)?);
            for tuple in client(&target)?.in_all(&template, limit)? {
                println!("{tuple}");
            }
            exit::OK
        }
        Command_::Init(args) => {
            run_init(args, "dura-ts")?;
            exit::OK
        }
        Command_::Local(args) => {
            args.run("dura-ts", ("out", "\"('hello', 1)\""))?;
            exit::OK
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_milliseconds_and_refuse_the_rest() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "5h", "-1s", "1.5s", "99999999999999999999m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
