//! A local cluster for the benchmark: n replicas as child processes of this same binary
//! (`dura-bench replica --service S --config F --id N`), so each replica's peak memory can be read
//! from `/proc/<pid>/status` (VmHWM).
//!
//! Every child is killed when the [`LocalCluster`] is dropped (normal exit, error or
//! panic unwinding) and by [`kill_all_children`], which the Ctrl-C handler calls. Each
//! child also gets a pipe as its standard input and exits when the pipe closes, so even
//! a `kill -9` of the benchmark takes its replicas with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dura_engine::runtime::{ClusterConfig, LogMode, Mode};

use crate::results::ReplicaRss;
use crate::workload::ServiceName;

/// Process ids of every replica this process started and has not reaped yet.
static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Sends SIGKILL to every replica still registered (for the Ctrl-C handler, which
/// cannot reach the [`LocalCluster`] values).
pub fn kill_all_children() {
    let pids = CHILD_PIDS.lock().map(|pids| pids.clone()).unwrap_or_default();
    for pid in pids {
        signal(pid, "-KILL");
    }
}

fn register(pid: u32) {
    if let Ok(mut pids) = CHILD_PIDS.lock() {
        pids.push(pid);
    }
}

fn unregister(pid: u32) {
    if let Ok(mut pids) = CHILD_PIDS.lock() {
        pids.retain(|&known| known != pid);
    }
}

/// Where the data lives: a temp dir removed on drop, or a folder the user named.
#[derive(Debug)]
enum DataDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temporary(dir) => dir.path(),
            DataDir::Kept(path) => path,
        }
    }
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    config: ClusterConfig,
    config_path: PathBuf,
    /// The service its replicas run.
    service: ServiceName,
    /// By replica id; `None` while that replica is stopped ([`LocalCluster::stop_replica`]).
    children: Vec<Option<Child>>,
    /// Dropped after the children (field order), so the data is removed only once no
    /// replica writes it any more.
    data_dir: DataDir,
}

/// How long to wait for a fresh cluster to answer its first request.
pub const STARTUP_WAIT_MAX: Duration = Duration::from_secs(20);

impl LocalCluster {
    /// Starts `replicas` replicas in `mode` with `log_mode`, their data in `data_dir`
    /// (a fresh temp dir, removed on drop, when `None`), and waits until `ready`
    /// succeeds against the config (up to [`STARTUP_WAIT_MAX`]).
    pub fn start(
        replicas: u32,
        mode: Mode,
        log_mode: LogMode,
        data_dir: Option<&Path>,
        ready: &dyn Fn(&ClusterConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::start_configured(replicas, mode, log_mode, data_dir, &|_| Ok(()), ready)
    }

    /// Like [`LocalCluster::start`], with `configure` changing the local config (ports,
    /// data dirs and keys already chosen) before it is validated and saved.
    pub fn start_configured(
        replicas: u32,
        mode: Mode,
        log_mode: LogMode,
        data_dir: Option<&Path>,
        configure: &dyn Fn(&mut ClusterConfig) -> anyhow::Result<()>,
        ready: &dyn Fn(&ClusterConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::start_service(ServiceName::Kv, replicas, mode, log_mode, data_dir, configure, ready)
    }

    /// Like [`LocalCluster::start_configured`], the replicas running `service`.
    pub fn start_service(
        service: ServiceName,
        replicas: u32,
        mode: Mode,
        log_mode: LogMode,
        data_dir: Option<&Path>,
        configure: &dyn Fn(&mut ClusterConfig) -> anyhow::Result<()>,
        ready: &dyn Fn(&ClusterConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let data_dir = match data_dir {
            Some(path) => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("create {}", path.display()))?;
                DataDir::Kept(
                    path.canonicalize().with_context(|| format!("resolve {}", path.display()))?,
                )
            }
            None => DataDir::Temporary(
                tempfile::Builder::new()
                    .prefix("dura-bench-")
                    .tempdir()
                    .context("create a temp dir for the cluster")?,
            ),
        };
        let root = data_dir.path().to_path_buf();
        let mut config = ClusterConfig::local(replicas, mode, log_mode, &root)?;
        configure(&mut config)?;
        config.validate()?;
        let config_path = root.join("cluster.toml");
        config.save(&config_path)?;
        let mut cluster = Self { config, config_path, service, children: Vec::new(), data_dir };
        // The cluster's first start: the replicas may begin it empty. A restart
        // ([`LocalCluster::start_replica`]) must find its state or a peer's.
        for id in 0..replicas {
            let child = cluster.spawn(id, false)?;
            cluster.children.push(Some(child));
        }
        let deadline = Instant::now() + STARTUP_WAIT_MAX;
        loop {
            cluster.check_alive()?;
            match ready(&cluster.config) {
                Ok(()) => break,
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!(
                        "the cluster did not answer within {} s; replica logs:\n{}",
                        STARTUP_WAIT_MAX.as_secs(),
                        cluster.log_tails()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(cluster)
    }

    /// Starts the process of replica `id`, its standard error into `replica-<id>.log`
    /// (appended to when `append`: a restarted replica's log keeps its first life). A
    /// first start (not `append`) is told it may begin a new cluster; a restart is not,
    /// so one whose data was lost takes the state from its peers or refuses to start.
    fn spawn(&self, id: u32, append: bool) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("find the dura-bench binary")?;
        let log_path = self.data_dir.path().join(format!("replica-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let child = Command::new(&exe)
            .args(["replica", "--service", self.service.name(), "--config"])
            .arg(&self.config_path)
            .args(["--id", &id.to_string()])
            .args((!append).then_some("--new-cluster"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start replica {id}"))?;
        register(child.id());
        Ok(child)
    }

    /// Stops replica `id` as an operator would (SIGTERM, SIGKILL after
    /// [`STOP_WAIT_MAX`]) and reaps it; the others keep running. Its data stays.
    pub fn stop_replica(&mut self, id: u32) -> anyhow::Result<()> {
        let slot = self.children.get_mut(id as usize).context("no such replica")?;
        let mut child = slot.take().with_context(|| format!("replica {id} is not running"))?;
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + STOP_WAIT_MAX;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        unregister(child.id());
        Ok(())
    }

    /// Kills replica `id` (SIGKILL: a crash, nothing finished) and reaps it; the others
    /// keep running. Its data stays.
    pub fn kill_replica(&mut self, id: u32) -> anyhow::Result<()> {
        let slot = self.children.get_mut(id as usize).context("no such replica")?;
        let mut child = slot.take().with_context(|| format!("replica {id} is not running"))?;
        let _ = child.kill();
        let _ = child.wait();
        unregister(child.id());
        Ok(())
    }

    /// Pauses replica `id` (SIGSTOP: a process that stops answering but keeps its
    /// sockets open, as a stalled machine or a long GC pause would);
    /// [`LocalCluster::resume_replica`] lets it run again.
    pub fn pause_replica(&mut self, id: u32) -> anyhow::Result<()> {
        let pid = self.running_pid(id)?;
        signal(pid, "-STOP");
        Ok(())
    }

    /// Resumes replica `id` after [`LocalCluster::pause_replica`] (SIGCONT).
    pub fn resume_replica(&mut self, id: u32) -> anyhow::Result<()> {
        let pid = self.running_pid(id)?;
        signal(pid, "-CONT");
        Ok(())
    }

    fn running_pid(&self, id: u32) -> anyhow::Result<u32> {
        let slot = self.children.get(id as usize).context("no such replica")?;
        Ok(slot.as_ref().with_context(|| format!("replica {id} is not running"))?.id())
    }

    /// Starts replica `id` again (after [`LocalCluster::stop_replica`]) with the same
    /// config; its log file is appended to. Returns at once: the replica recovers on
    /// its own (see its metrics endpoint's `/health`).
    pub fn start_replica(&mut self, id: u32) -> anyhow::Result<()> {
        anyhow::ensure!((id as usize) < self.children.len(), "no such replica {id}");
        anyhow::ensure!(self.children[id as usize].is_none(), "replica {id} is running");
        let child = self.spawn(id, true)?;
        self.children[id as usize] = Some(child);
        Ok(())
    }

    /// Replica `id`'s data folder (its log and checkpoints), from the config.
    pub fn replica_data_dir(&self, id: u32) -> anyhow::Result<PathBuf> {
        Ok(self.config.replica(id)?.data_dir.clone())
    }

    /// Replica `id`'s standard error so far (both lives of a restarted replica).
    pub fn replica_log(&self, id: u32) -> String {
        let path = self.data_dir.path().join(format!("replica-{id}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Fails if a replica has exited (with the end of its log in the error, since a
    /// temporary data folder goes away with the cluster); a replica stopped with
    /// [`LocalCluster::stop_replica`] is not checked.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for id in 0..self.children.len() {
            let Some(child) = self.children[id].as_mut() else { continue };
            if let Some(status) = child.try_wait().context("poll a replica")? {
                anyhow::bail!(
                    "replica {id} exited with {status}; its log ends:\n{}",
                    self.log_tail(id as u32)
                );
            }
        }
        Ok(())
    }

    /// The last lines of replica `id`'s standard error.
    pub fn log_tail(&self, id: u32) -> String {
        const LINES_MAX: usize = 15;
        let path = self.data_dir.path().join(format!("replica-{id}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LINES_MAX)..].join("\n")
    }

    fn log_tails(&self) -> String {
        (0..self.children.len() as u32)
            .map(|id| format!("--- replica {id}\n{}", self.log_tail(id)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The cluster's config.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Where the config file is.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Whether the data folder goes away with the cluster.
    pub fn data_is_temporary(&self) -> bool {
        matches!(self.data_dir, DataDir::Temporary(_))
    }

    /// The running replicas' process ids, by replica id (a stopped one is left out).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Each replica's peak resident set so far.
    pub fn peak_rss(&self) -> Vec<ReplicaRss> {
        self.children
            .iter()
            .enumerate()
            .map(|(id, child)| ReplicaRss {
                id: id as u32,
                peak_rss_bytes: child.as_ref().and_then(|child| peak_rss_bytes(child.id())),
            })
            .collect()
    }
}

/// How long [`LocalCluster::stop`] waits for replicas to exit after SIGTERM.
pub const STOP_WAIT_MAX: Duration = Duration::from_secs(10);

/// What a replica's log says about its durability when it stops (the WAL's account of
/// its group writes, and how long replies waited for them).
const LOG_REPORT_MARKERS: [&str; 2] = [": wrote ", "waited for the log"];

impl LocalCluster {
    /// Stops the replicas as an operator would (SIGTERM: each finishes its in-flight
    /// log write and exits), kills any still running after [`STOP_WAIT_MAX`], and
    /// returns what each said about its log, `replica N: ...` per line.
    pub fn stop(mut self) -> Vec<String> {
        self.stop_all()
        // Drop removes a temporary data folder.
    }

    /// Like [`LocalCluster::stop`], but keeps the cluster value and so its data folder
    /// (to read the replicas' durable state after a clean stop); every replica is
    /// reaped when this returns.
    pub fn stop_all(&mut self) -> Vec<String> {
        for child in self.children.iter().flatten() {
            signal(child.id(), "-TERM");
            // A paused replica would hold its SIGTERM until resumed.
            signal(child.id(), "-CONT");
        }
        let deadline = Instant::now() + STOP_WAIT_MAX;
        for child in self.children.iter_mut().flatten() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            unregister(child.id());
        }
        let mut report = Vec::new();
        for id in 0..self.children.len() {
            let path = self.data_dir.path().join(format!("replica-{id}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            report.extend(
                text.lines()
                    .filter(|line| LOG_REPORT_MARKERS.iter().any(|marker| line.contains(marker)))
                    .filter_map(|line| line.split_once("] ").map(|(_, message)| message))
                    .map(|message| {
                        if message.starts_with("replica ") {
                            message.to_string()
                        } else {
                            format!("replica {id}: {message}")
                        }
                    }),
            );
        }
        report
    }
}

/// Gives every replica of `config` a metrics port (free ones, below the ephemeral
/// range, none of the config's other ports), so the bench can read the replicas' own
/// view (`/metrics`, `/health`) while it runs.
pub fn add_metrics_ports(config: &mut ClusterConfig) -> anyhow::Result<()> {
    let taken: std::collections::BTreeSet<u16> = config
        .replicas
        .iter()
        .flat_map(|r| [Some(r.replica_port), Some(r.client_port), r.transfer_port])
        .flatten()
        .collect();
    let ports: Vec<u16> = dura_engine::runtime::config::free_ports(3 * config.replicas.len())?
        .into_iter()
        .filter(|port| !taken.contains(port))
        .collect();
    anyhow::ensure!(ports.len() >= config.replicas.len(), "not enough free ports");
    for (replica, port) in config.replicas.iter_mut().zip(ports) {
        replica.metrics_port = Some(port);
    }
    Ok(())
}

/// Every replica's metrics address, by id (an error when one has no metrics port).
pub fn metrics_addrs(config: &ClusterConfig) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    config
        .replicas
        .iter()
        .map(|replica| replica.metrics_addr()?.context("no metrics port"))
        .collect()
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            unregister(child.id());
        }
    }
}

/// VmHWM of process `pid`, in bytes, from `/proc/<pid>/status`.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

/// The `VmHWM:` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let mut fields = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * unit)
}

/// In the replica child: exits the process when standard input closes (the parent
/// died or dropped its [`LocalCluster`]).
pub fn exit_when_parent_goes() {
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            std::process::exit(0);
        })
        .expect("spawn the parent watch thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tdura\nVmPeak:\t  20000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn this_process_has_a_peak_rss() {
        let bytes = peak_rss_bytes(std::process::id()).expect("linux /proc");
        assert!(bytes > 0);
    }
}
