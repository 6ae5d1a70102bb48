//! What the service binaries (`dura-kv`, `dura-ts`) share: writing a cluster config
//! (`init`), running a local cluster of child processes (`local`), and printing errors.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{ClusterConfig, LogMode, Mode};

/// `error` and its causes, each once. A cause whose text the message already ends
/// with is skipped: some errors (the runtime's I/O errors) both print their OS error
/// and chain it as their source, and `{:#}` would print it twice.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// The flags of `serve`, the same in every service binary.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Cluster config (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// This replica's id.
    #[arg(long)]
    pub id: u32,
    /// Override the config's log mode (none, async, sync, batched, parallel).
    #[arg(long)]
    pub log_mode: Option<String>,
    /// Replicas whose disks are lost for good (comma-separated ids, at most f): after
    /// a crash of every replica, this start's recovery does not wait for them, so the
    /// other n-f resume. Give it to each replica restarted then. A lost replica comes
    /// back only with an empty data dir, once no running replica names it here.
    #[arg(long, value_delimiter = ',')]
    pub lost: Vec<u32>,
    /// The first start of a new cluster: with no state of its own, begin empty when
    /// no replica that answers holds a state or has been a member. Without it (or
    /// --force-new-cluster) a replica without a state only joins an existing
    /// cluster, and refuses to start when no replica holds a state.
    #[arg(long, conflicts_with = "force_new_cluster")]
    pub new_cluster: bool,
    /// Begin an EMPTY cluster even though its replicas were members and lost their
    /// state (every data dir lost): what the cluster decided is gone. A replica
    /// that holds a state is still transferred from, never replaced.
    #[arg(long)]
    pub force_new_cluster: bool,
}

impl ServeArgs {
    /// The cluster config (with the log mode given) and this start's replica options.
    pub fn load(&self) -> Result<(ClusterConfig, super::ReplicaOptions)> {
        let mut config = ClusterConfig::load(&self.config)?;
        if let Some(mode) = &self.log_mode {
            config.log_mode = mode.parse()?;
        }
        let bootstrap = match (self.new_cluster, self.force_new_cluster) {
            (_, true) => super::Bootstrap::ForceNew,
            (true, false) => super::Bootstrap::New,
            (false, false) => super::Bootstrap::Existing,
        };
        let options = super::ReplicaOptions {
            lost_replicas: self.lost.clone(),
            bootstrap,
            ..super::ReplicaOptions::default()
        };
        Ok((config, options))
    }
}

/// The flags of `local`, the same in every service binary.
#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Directory for the config and the replicas' data.
    #[arg(long)]
    pub dir: PathBuf,
    /// bft (4 replicas) or crash (3 replicas).
    #[arg(long, default_value = "bft")]
    pub mode: String,
    /// none, async, sync, batched or parallel.
    #[arg(long, default_value = "parallel")]
    pub log_mode: String,
    /// TLS on every connection, with a fresh CA and certificates in DIR/tls.
    #[arg(long)]
    pub tls: bool,
}

impl LocalArgs {
    /// Runs the local cluster with this binary (`binary` names it in errors) as every
    /// replica; `try_args` is what the banner suggests trying (see [`LocalCluster`]).
    pub fn run(&self, binary: &str, try_args: (&str, &str)) -> Result<()> {
        run_local(LocalCluster {
            dir: &self.dir,
            mode: self.mode.parse()?,
            log_mode: self.log_mode.parse()?,
            exe: std::env::current_exe().with_context(|| format!("find the {binary} binary"))?,
            try_args,
            tls: self.tls,
        })
    }
}

/// The cluster cannot answer: fewer replicas accept a connection than a reply needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "cluster unreachable: {connected} of {n} replicas accept a connection, {needed} needed \
     for an answer (is the cluster running? config {config})"
)]
pub struct Unreachable {
    /// Replicas connected.
    pub connected: usize,
    /// Replicas an answer needs.
    pub needed: usize,
    /// Replicas in the cluster.
    pub n: u32,
    /// The config file.
    pub config: String,
}

/// The arguments of `init` (`dura-kv init`, `dura-ts init`): write a cluster config
/// with fresh random keys.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Where to write the config (created with mode 0600: it holds the keys);
    /// stdout when not given.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// bft (n = 3f+1) or crash (n = 2f+1).
    #[arg(long, default_value = "bft")]
    pub mode: String,
    /// Faults tolerated (default: from the number of hosts, or 1).
    #[arg(long)]
    pub f: Option<u32>,
    /// Replica hosts in id order, HOST or HOST:PORT (an IPv6 address in brackets
    /// before :PORT), comma-separated or repeated (--host a --host b). A HOST without
    /// a port gets --base-port, plus one for each earlier replica on the same host.
    #[arg(long, visible_alias = "host", value_delimiter = ',', conflicts_with = "replicas")]
    pub hosts: Vec<String>,
    /// Number of replicas on 127.0.0.1 (default: what --mode and --f need).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// First replica port: replica i on 127.0.0.1 uses base port + i; a --hosts entry
    /// without a port uses it too.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// A replica's client port is its replica port plus this.
    #[arg(long, default_value_t = 100)]
    pub client_port_offset: u16,
    /// A replica's state-transfer port is its replica port plus this.
    #[arg(long, default_value_t = 200)]
    pub transfer_port_offset: u16,
    /// A replica's metrics and health port (HTTP) is its replica port plus this.
    #[arg(long, default_value_t = 300)]
    pub metrics_port_offset: u16,
    /// Write no metrics port (no replica serves metrics or health).
    #[arg(long)]
    pub no_metrics: bool,
    /// Root of the replicas' data directories (DATA_DIR/r0 for replica 0, ...).
    #[arg(long, visible_alias = "data-root", default_value = "/var/lib/dura")]
    pub data_dir: PathBuf,
    /// none, async, sync, batched or parallel.
    #[arg(long, default_value = "parallel")]
    pub log_mode: String,
    /// Turn TLS on: write a fresh CA, a certificate per replica and one for
    /// clients into this folder (`ca.pem`, `replica-<id>.pem` and `-key.pem`,
    /// `client.pem` and `-key.pem`, `ca-key.pem` to issue more), and a `[tls]`
    /// section naming them by absolute path. Copy the folder to the same path on
    /// every host.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
}

/// Runs `init` for the binary `binary` (named in the hint it prints).
pub fn run_init(args: InitArgs, binary: &str) -> Result<()> {
    let InitArgs {
        out,
        force,
        mode,
        f,
        hosts,
        replicas,
        base_port,
        client_port_offset,
        transfer_port_offset,
        metrics_port_offset,
        no_metrics,
        data_dir,
        log_mode,
        tls_dir,
    } = args;
    let mode: Mode = mode.parse()?;
    let endpoints = if hosts.is_empty() {
        let n = replicas.unwrap_or_else(|| mode.replicas_min(f.unwrap_or(1) as usize) as u32);
        loopback_endpoints(n, base_port)?
    } else {
        host_endpoints(&hosts, base_port)?
    };
    let offsets = PortOffsets {
        client: client_port_offset,
        transfer: transfer_port_offset,
        metrics: (!no_metrics).then_some(metrics_port_offset),
    };
    let mut config = init_config(&endpoints, mode, f, log_mode.parse()?, offsets, &data_dir)?;
    if let Some(tls_dir) = &tls_dir {
        super::pki::generate_tls(&mut config, tls_dir)?;
        config.validate().context("init would write an invalid [tls] section")?;
        eprintln!(
            "wrote a CA and certificates into {}: copy the folder to the same path on every \
             replica's host and client",
            tls_dir.display()
        );
    }
    match out {
        Some(path) => {
            write_config(&config, &path, force)?;
            eprintln!(
                "wrote {}: {} replicas, mode {}, f = {}; the first start of replica <id>, on \
                 its host: {binary} serve --config {} --id <id> --new-cluster (later starts \
                 without --new-cluster)",
                path.display(),
                config.n(),
                config.mode,
                config.f,
                path.display()
            );
        }
        None => print!("{}", config_text(&config)),
    }
    Ok(())
}

/// Bytes of fresh key material per key (HMAC-SHA256 keys).
pub const FRESH_KEY_BYTES: usize = 32;

/// `FRESH_KEY_BYTES` bytes from the OS's random source, as hex.
pub fn fresh_key_hex() -> Result<String> {
    let mut key = [0u8; FRESH_KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .context("read key material from /dev/urandom")?;
    Ok(key.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// `n` replicas on 127.0.0.1 at `base_port`, `base_port + 1`, ...
pub fn loopback_endpoints(n: u32, base_port: u16) -> Result<Vec<(String, u16)>> {
    (0..n)
        .map(|i| {
            let port = u16::try_from(u32::from(base_port) + i)
                .context("--base-port + replica count is over 65535")?;
            Ok(("127.0.0.1".to_owned(), port))
        })
        .collect()
}

/// The `--hosts` entries as (host, replica port): a bare host gets `base_port` plus the
/// number of earlier entries on the same host, so distinct machines share one port and
/// replicas on one machine get consecutive ones.
pub fn host_endpoints(hosts: &[String], base_port: u16) -> Result<Vec<(String, u16)>> {
    let mut endpoints: Vec<(String, u16)> = Vec::with_capacity(hosts.len());
    for text in hosts {
        let (host, port) = parse_endpoint(text)?;
        let port = match port {
            Some(port) => port,
            None => {
                let earlier = endpoints.iter().filter(|(other, _)| *other == host).count();
                u16::try_from(usize::from(base_port) + earlier)
                    .with_context(|| format!("--hosts: {text:?}: --base-port + {earlier}"))?
            }
        };
        endpoints.push((host, port));
    }
    Ok(endpoints)
}

/// Parses `HOST`, `HOST:PORT`, `V6ADDR` or `[V6ADDR]:PORT` into host and replica port.
pub fn parse_endpoint(text: &str) -> Result<(String, Option<u16>)> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').with_context(|| format!("--hosts: {text:?} lacks `]`"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => bail!("--hosts: {text:?} is not [V6ADDR]:PORT"),
        };
        (host, port)
    } else if text.matches(':').count() > 1 {
        (text, None) // a bare IPv6 address
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        bail!("--hosts: {text:?} has no host");
    }
    let port = port
        .map(|port| port.parse::<u16>().with_context(|| format!("--hosts: port of {text:?}")))
        .transpose()?;
    if port == Some(0) {
        bail!("--hosts: {text:?}: port 0");
    }
    Ok((host.to_owned(), port))
}

/// Each replica's other ports, as offsets from its replica port.
#[derive(Debug, Clone, Copy)]
pub struct PortOffsets {
    /// Client port = replica port + this.
    pub client: u16,
    /// State-transfer port = replica port + this.
    pub transfer: u16,
    /// Metrics port = replica port + this; None: no metrics server.
    pub metrics: Option<u16>,
}

/// A validated cluster config for replicas at `endpoints` (host, replica port) in id
/// order, with fresh random keys and data dirs `data_dir/r<id>`.
pub fn init_config(
    endpoints: &[(String, u16)],
    mode: Mode,
    f: Option<u32>,
    log_mode: LogMode,
    offsets: PortOffsets,
    data_dir: &Path,
) -> Result<ClusterConfig> {
    let n = u32::try_from(endpoints.len()).context("too many replicas")?;
    let f =
        match f {
            Some(f) => f,
            None => (1..=n).find(|&f| mode.replicas_min(f as usize) == n as usize).with_context(
                || format!("{n} replicas do not fit mode {mode} (3f+1 for bft, 2f+1 for crash)"),
            )?,
        };
    if f == 0 {
        bail!("--f must be at least 1");
    }
    if mode.replicas_min(f as usize) != n as usize {
        bail!(
            "mode {mode} with f = {f} needs {} replicas, {n} given",
            mode.replicas_min(f as usize)
        );
    }
    let offset_port = |host: &str, port: u16, offset: u16, flag: &str| {
        port.checked_add(offset)
            .with_context(|| format!("{host}:{port}: port + {flag} is over 65535"))
    };
    // local_with_ports' layout: replica and client port of replica i at 2i and 2i+1,
    // its transfer port at 2n+i.
    let mut ports = Vec::with_capacity(3 * endpoints.len());
    for (host, port) in endpoints {
        ports.extend([*port, offset_port(host, *port, offsets.client, "--client-port-offset")?]);
    }
    for (host, port) in endpoints {
        ports.push(offset_port(host, *port, offsets.transfer, "--transfer-port-offset")?);
    }
    let mut config = ClusterConfig::local_with_ports(f, mode, log_mode, data_dir, &ports);
    for (replica, (host, port)) in config.replicas.iter_mut().zip(endpoints) {
        replica.host.clone_from(host);
        replica.metrics_port = offsets
            .metrics
            .map(|offset| offset_port(host, *port, offset, "--metrics-port-offset"))
            .transpose()?;
    }
    config.replica_key = fresh_key_hex()?;
    config.client_key = fresh_key_hex()?;
    config.validate().context("init would write an invalid config (ports or hosts collide?)")?;
    Ok(config)
}

/// The config's TOML, under a line saying it holds secrets.
pub fn config_text(config: &ClusterConfig) -> String {
    format!(
        "# dura cluster config. replica_key and client_key are secrets: keep this file \
         readable only by the replicas and their clients.\n{}",
        config.to_toml()
    )
}

/// Writes `config` to `path` with mode 0600 (it holds the keys); an existing file is
/// kept unless `force`.
pub fn write_config(config: &ClusterConfig, path: &Path, force: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!("write {} (it exists; --force overwrites it)", path.display())
        } else {
            format!("write {}", path.display())
        }
    })?;
    file.write_all(config_text(config).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Kills every child it holds when dropped.
#[derive(Debug)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A local cluster for [`run_local`]: `n` replicas of `mode` on loopback, run as
/// `exe serve --config DIR/cluster.toml --id I` child processes.
#[derive(Debug)]
pub struct LocalCluster<'a> {
    /// Directory for the config and the replicas' data.
    pub dir: &'a Path,
    /// The fault model (4 replicas for bft, 3 for crash).
    pub mode: Mode,
    /// The replicas' log mode.
    pub log_mode: LogMode,
    /// The binary to run as `serve` (the caller's own).
    pub exe: PathBuf,
    /// What the banner suggests trying: a command, and its arguments after
    /// `--config PATH`.
    pub try_args: (&'a str, &'a str),
    /// TLS on every connection, with a fresh CA and certificates in DIR/tls.
    pub tls: bool,
}

/// Writes a local cluster config (fresh random keys, or the keys of the config already
/// in DIR) into DIR and runs its replicas as child processes until SIGINT or SIGTERM,
/// then stops them with SIGTERM.
pub fn run_local(cluster: LocalCluster<'_>) -> Result<()> {
    let LocalCluster { dir, mode, log_mode, exe, try_args, tls } = cluster;
    let n = mode.replicas_min(1) as u32;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolve {}", dir.display()))?;
    let mut config = ClusterConfig::local(n, mode, log_mode, &dir.join("data"))?;
    let config_path = dir.join("cluster.toml");
    // A restart over the same DIR keeps the keys its logs were written under; only the
    // first start (no config yet) begins a new cluster: a restart whose data was lost
    // refuses rather than serve an empty state.
    let first_start = match ClusterConfig::load(&config_path) {
        Ok(old) => {
            (config.replica_key, config.client_key) = (old.replica_key, old.client_key);
            false
        }
        Err(_) => {
            config.replica_key = fresh_key_hex()?;
            config.client_key = fresh_key_hex()?;
            true
        }
    };
    if tls {
        super::pki::generate_tls(&mut config, &dir.join("tls"))?;
    }
    write_config(&config, &config_path, true)?;
    let mut children = Children(Vec::new());
    for id in 0..n {
        let child = Command::new(&exe)
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--id", &id.to_string()])
            .args(first_start.then_some("--new-cluster"))
            .spawn()
            .with_context(|| format!("start replica {id}"))?;
        children.0.push(child);
    }
    println!(
        "{n} replicas ({mode}, log mode {log_mode}{}) running; config {}",
        if config.tls.is_some() { ", TLS" } else { "" },
        config_path.display()
    );
    println!(
        "try: {} {} --config {} {}",
        exe.display(),
        try_args.0,
        config_path.display(),
        try_args.1
    );
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
        // A graceful stop: ask each replica to shut down with SIGTERM.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    for child in &mut children.0 {
        let _ = child.wait();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFSETS: PortOffsets = PortOffsets { client: 100, transfer: 200, metrics: Some(300) };

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|host| (*host).to_owned()).collect()
    }

    #[test]
    fn init_config_validates_and_loads_back_identically_from_the_written_text() {
        let endpoints = host_endpoints(&hosts(&["h1", "h2", "h3", "h4"]), 7000).expect("hosts");
        let config =
            init_config(&endpoints, Mode::Bft, None, LogMode::Parallel, OFFSETS, Path::new("/d"))
                .expect("config");
        config.validate().expect("valid");
        let text = config_text(&config);
        assert!(text.starts_with("# dura cluster config."), "{text}");
        assert_eq!(ClusterConfig::from_toml(&text).expect("parses"), config);

        // And through a file, as `--out` writes it.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cluster.toml");
        write_config(&config, &path, false).expect("write");
        assert_eq!(ClusterConfig::load(&path).expect("loads"), config);
        let error = error_text(&write_config(&config, &path, false).expect_err("exists"));
        assert!(error.contains("--force"), "{error}");
        write_config(&config, &path, true).expect("--force overwrites");
    }

    #[test]
    fn init_config_gives_each_replica_its_four_ports_data_dir_and_fresh_keys() {
        let endpoints = host_endpoints(&hosts(&["h1", "h2", "h3", "h4"]), 7000).expect("hosts");
        let config =
            init_config(&endpoints, Mode::Bft, None, LogMode::Parallel, OFFSETS, Path::new("/d"))
                .expect("config");
        assert_eq!((config.f, config.n()), (1, 4));
        for (id, replica) in config.replicas.iter().enumerate() {
            assert_eq!(replica.host, format!("h{}", id + 1));
            let ports = (
                replica.replica_port,
                replica.client_port,
                replica.transfer_port,
                replica.metrics_port,
            );
            assert_eq!(ports, (7000, 7100, Some(7200), Some(7300)));
            assert_eq!(replica.data_dir, Path::new("/d").join(format!("r{id}")));
        }
        let again =
            init_config(&endpoints, Mode::Bft, None, LogMode::Parallel, OFFSETS, Path::new("/d"))
                .expect("config");
        assert_ne!(config.replica_key, again.replica_key, "fresh keys each time");
        assert_ne!(config.client_key, again.client_key);
        assert_ne!(config.replica_key, config.client_key);
        let fixed = ClusterConfig::local_with_ports(
            1,
            Mode::Bft,
            LogMode::Parallel,
            Path::new("/d"),
            &[1, 2, 3, 4, 5, 6, 7, 8],
        );
        assert_ne!(config.replica_key, fixed.replica_key, "not the test keys");

        let no_metrics = PortOffsets { metrics: None, ..OFFSETS };
        let config = init_config(
            &endpoints,
            Mode::Bft,
            None,
            LogMode::Parallel,
            no_metrics,
            Path::new("/d"),
        )
        .expect("config");
        assert!(config.replicas.iter().all(|replica| replica.metrics_port.is_none()));
    }

    #[test]
    fn init_config_checks_n_against_the_mode_and_f() {
        let endpoints = |n: u32| loopback_endpoints(n, 7000).expect("endpoints");
        let init = |n: u32, mode: Mode, f: Option<u32>| {
            init_config(&endpoints(n), mode, f, LogMode::Parallel, OFFSETS, Path::new("/d"))
                .map(|config| (config.f, config.n()))
                .map_err(|error| error_text(&error))
        };
        assert_eq!(init(4, Mode::Bft, Some(1)), Ok((1, 4)));
        assert_eq!(init(7, Mode::Bft, None), Ok((2, 7)));
        assert_eq!(init(3, Mode::Crash, Some(1)), Ok((1, 3)));
        assert_eq!(init(5, Mode::Crash, None), Ok((2, 5)));
        let error = init(3, Mode::Bft, None).expect_err("3 is not 3f+1");
        assert!(error.contains("3 replicas do not fit mode bft"), "{error}");
        let error = init(4, Mode::Crash, Some(1)).expect_err("4 is not 2f+1");
        assert!(error.contains("mode crash with f = 1 needs 3 replicas, 4 given"), "{error}");
        let error = init(4, Mode::Bft, Some(0)).expect_err("f = 0");
        assert!(error.contains("at least 1"), "{error}");
    }

    #[test]
    fn colliding_ports_are_refused_naming_the_field() {
        // 150 replicas on one host: replica ports 7000..7150 run into the client ports.
        let endpoints = loopback_endpoints(151, 7000).expect("endpoints");
        let error =
            init_config(&endpoints, Mode::Crash, None, LogMode::Parallel, OFFSETS, Path::new("/d"))
                .expect_err("collision");
        let error = error_text(&error);
        assert!(error.contains("field `replica[") && error.contains("is used twice"), "{error}");
        let endpoints = [("h".to_owned(), 65_300)];
        let error = init_config(
            &endpoints,
            Mode::Crash,
            Some(1),
            LogMode::Parallel,
            OFFSETS,
            Path::new("/d"),
        );
        assert!(error.is_err());
    }

    #[test]
    fn hosts_take_a_port_or_the_base_port_counted_per_host() {
        let parsed = host_endpoints(
            &hosts(&["a", "b:7005", "a", "[::1]:9000", "::1", "[fe80::1]", "a"]),
            7000,
        )
        .expect("hosts");
        let expected = [
            ("a", 7000),
            ("b", 7005),
            ("a", 7001),
            ("::1", 9000),
            ("::1", 7001),
            ("fe80::1", 7000),
            ("a", 7002),
        ];
        let parsed: Vec<_> = parsed.iter().map(|(host, port)| (host.as_str(), *port)).collect();
        assert_eq!(parsed, expected);
        for bad in ["d:x", ":7000", "a:0", "[::1", "[::1]x", "a:70000"] {
            let error = host_endpoints(&hosts(&[bad]), 7000).expect_err(bad);
            assert!(error_text(&error).contains(bad), "{bad}: {}", error_text(&error));
        }
    }

    #[test]
    fn error_text_prints_a_cause_the_message_already_ends_with_once() {
        let doubled = anyhow::Error::new(DoubleShown(std::io::Error::from_raw_os_error(2)))
            .context("read cluster config /x");
        assert_eq!(format!("{doubled:#}").matches("os error 2").count(), 2, "what {{:#}} does");
        let text = error_text(&doubled);
        assert_eq!(text.matches("(os error 2)").count(), 1, "{text}");
        assert_eq!(text, "read cluster config /x: open: No such file or directory (os error 2)");
    }

    /// An error that shows its source in its own message and chains it too.
    #[derive(Debug)]
    struct DoubleShown(std::io::Error);

    impl std::fmt::Display for DoubleShown {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(formatter, "open: {}", self.0)
        }
    }

    impl std::error::Error for DoubleShown {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
