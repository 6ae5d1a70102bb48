//! `dura-kv`: run SCKV-Store replicas and talk to them.
//!
//! ```text
//! dura-kv serve --config cluster.toml --id 0
//! dura-kv put --config cluster.toml KEY VALUE
//! dura-kv get --config cluster.toml KEY
//! dura-kv del --config cluster.toml KEY
//! dura-kv cas --config cluster.toml KEY NEW [--expected OLD]   (no --expected: key must be absent)
//! dura-kv local --dir DIR                                      (4 BFT replicas on loopback)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dura_engine::runtime::{ClusterConfig, LogMode, Mode};
use dura_kvstore::KvClient;

#[derive(Parser, Debug)]
#[command(name = "dura-kv", about = "SCKV-Store: a durable replicated key-value store")]
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
    /// Store VALUE under KEY.
    Put {
        #[arg(long)]
        config: PathBuf,
        key: String,
        value: String,
    },
    /// Print the value under KEY.
    Get {
        #[arg(long)]
        config: PathBuf,
        key: String,
    },
    /// Remove KEY.
    Del {
        #[arg(long)]
        config: PathBuf,
        key: String,
    },
    /// Set KEY to NEW if it holds EXPECTED (or is absent when --expected is not given).
    Cas {
        #[arg(long)]
        config: PathBuf,
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

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(error) = run(Cli::parse()) {
        eprintln!("dura-kv: error: {error:#}");
        std::process::exit(1);
    }
}

fn client(config: &Path) -> Result<KvClient> {
    let config = ClusterConfig::load(config)?;
    Ok(KvClient::connect(&config)?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command_::Serve { config, id, log_mode } => {
            let mut config = ClusterConfig::load(&config)?;
            if let Some(mode) = log_mode {
                config.log_mode = mode.parse()?;
            }
            dura_kvstore::serve(&config, id)?;
        }
        Command_::Put { config, key, value } => {
            client(&config)?.put(key.as_bytes(), value.as_bytes())?;
            println!("ok");
        }
        Command_::Get { config, key } => match client(&config)?.get(key.as_bytes())? {
            Some(value) => println!("{}", String::from_utf8_lossy(&value)),
            None => {
                eprintln!("(absent)");
                std::process::exit(2);
            }
        },
        Command_::Del { config, key } => {
            let existed = client(&config)?.delete(key.as_bytes())?;
            println!("{}", if existed { "deleted" } else { "absent" });
        }
        Command_::Cas { config, key, new, expected } => {
            let swapped = client(&config)?.cas(
                key.as_bytes(),
                expected.as_deref().map(str::as_bytes),
                new.as_bytes(),
            )?;
            println!("{}", if swapped { "swapped" } else { "not swapped" });
            if !swapped {
                std::process::exit(3);
            }
        }
        Command_::Local { dir, mode, log_mode } => local(&dir, mode.parse()?, log_mode.parse()?)?,
    }
    Ok(())
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
    let n = mode.replicas_min(1) as u32;
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
