//! The `dura-kv` command line against a real local cluster: replicas run as
//! `dura-kv serve` processes on free loopback ports and are killed when the test ends,
//! even on panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dura_engine::runtime::{ClientOptions, RuntimeError};
use dura_kvstore::{ClusterConfig, KvClient, LogMode, Mode};

const MIB: usize = 1024 * 1024;

/// Replica processes of one cluster, killed on drop.
struct Cluster {
    config: ClusterConfig,
    config_path: PathBuf,
    children: Vec<Child>,
}

impl Cluster {
    /// Writes a crash-mode config (3 replicas) under `dir`; starts nothing.
    fn configure(dir: &Path) -> Cluster {
        let mut config = ClusterConfig::local(3, Mode::Crash, LogMode::Parallel, &dir.join("data"))
            .expect("local config");
        config.pin_cores = false;
        config.request_timeout_ms = 500;
        let config_path = dir.join("cluster.toml");
        config.save(&config_path).expect("write config");
        Cluster { config, config_path, children: Vec::new() }
    }

    /// Starts every replica and waits until the cluster orders a request.
    fn start(dir: &Path) -> Cluster {
        let mut cluster = Cluster::configure(dir);
        for id in 0..cluster.config.n() {
            let log = std::fs::File::create(dir.join(format!("replica{id}.log"))).expect("log");
            let child = Command::new(env!("CARGO_BIN_EXE_dura-kv"))
                .args(["serve", "--config"])
                .arg(&cluster.config_path)
                .args(["--id", &id.to_string(), "--new-cluster"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn dura-kv serve");
            cluster.children.push(child);
        }
        let client = KvClient::connect(&cluster.config).expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.put(b"ready", b"yes").is_err() {
            assert!(Instant::now() < deadline, "cluster did not start; logs in {}", dir.display());
        }
        cluster
    }

    fn config_arg(&self) -> &str {
        self.config_path.to_str().expect("utf-8 path")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `dura-kv ARGS`, writing `stdin` to it (a child that stops reading early is not
/// an error here: the exit status and stderr say what it made of the input).
fn dura_kv(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dura-kv"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dura-kv");
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let output = child.wait_with_output().expect("run dura-kv");
    writer.join().expect("stdin writer");
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Bytes that are not text and not a repeated pattern.
fn pseudo_random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn multi_mib_values_go_in_through_stdin_and_a_file_and_come_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(dir.path());
    // A debug build hashes MiBs slowly, and tests share the machine: a long client timeout.
    let config = cluster.config_arg();
    fn patient<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [args, &["--timeout-ms", "120000"]].concat()
    }

    let from_stdin = pseudo_random_bytes(6 * MIB, 1);
    let put = dura_kv(&patient(&["put", "--config", config, "big", "-"]), &from_stdin);
    assert!(put.status.success(), "put from stdin: {}", stderr(&put));
    let get = dura_kv(&patient(&["get", "--config", config, "big", "--raw"]), b"");
    assert!(get.status.success(), "get --raw: {}", stderr(&get));
    assert!(get.stdout == from_stdin, "stdin value came back as {} bytes", get.stdout.len());

    let from_file = pseudo_random_bytes(5 * MIB + 3, 2);
    let in_path = dir.path().join("in.bin");
    let out_path = dir.path().join("out.bin");
    std::fs::write(&in_path, &from_file).expect("write value file");
    let in_arg = in_path.to_str().expect("utf-8 path");
    let put = dura_kv(&patient(&["put", "--config", config, "file", "--value-file", in_arg]), b"");
    assert!(put.status.success(), "put --value-file: {}", stderr(&put));
    let out_arg = out_path.to_str().expect("utf-8 path");
    let get = dura_kv(&patient(&["get", "--config", config, "file", "--value-file", out_arg]), b"");
    assert!(get.status.success(), "get --value-file: {}", stderr(&get));
    assert!(std::fs::read(&out_path).expect("read back") == from_file, "file value differs");
}

#[test]
fn a_value_over_the_clusters_bound_is_refused_before_sending_naming_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No replica runs: the bound comes from the config alone.
    let mut cluster = Cluster::configure(dir.path());
    let config = cluster.config_arg().to_owned();
    let bound = cluster.config.operation_bound();
    let too_long = vec![7u8; bound.operation_bytes_max];
    let put = dura_kv(&["put", "--config", &config, "k", "-"], &too_long);
    assert_eq!(put.status.code(), Some(1), "{}", stderr(&put));
    let text = stderr(&put);
    assert!(text.contains("over") && text.contains("record_bytes_max"), "{text}");
    assert!(text.contains(&bound.operation_bytes_max.to_string()), "{text}");
    assert!(!text.contains("panicked"), "{text}");

    // Smaller frames make the frame bound the one that bites, and the error says so.
    cluster.config.frame_bytes_max = 3 * MIB as u32;
    cluster.config.save(&cluster.config_path).expect("rewrite config");
    let file = dir.path().join("two-mib.bin");
    std::fs::write(&file, vec![1u8; 2 * MIB]).expect("write value file");
    let put = dura_kv(
        &["put", "--config", &config, "k", "--value-file", file.to_str().expect("utf-8")],
        b"",
    );
    assert_eq!(put.status.code(), Some(1), "{}", stderr(&put));
    assert!(stderr(&put).contains("frame_bytes_max"), "{}", stderr(&put));
}

#[test]
fn a_raw_operation_over_the_bound_is_cut_off_at_the_door_and_the_cluster_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(dir.path());
    let bound = cluster.config.operation_bound().operation_bytes_max;
    // `KvClient` refuses such an operation itself; the raw client sends anything, as a
    // buggy or hostile client would. Every replica it reaches closes its connection.
    let options = ClientOptions { request_timeout: Duration::from_secs(3), ..ClientOptions::new() };
    let rogue = KvClient::connect_with(&cluster.config, options).expect("client");
    let sent = rogue.raw().invoke(vec![7u8; bound + 1]);
    assert!(matches!(sent, Err(RuntimeError::Timeout { .. })), "{sent:?}");
    let logs: String = (0..cluster.config.n())
        .map(|id| {
            std::fs::read_to_string(dir.path().join(format!("replica{id}.log"))).expect("log")
        })
        .collect();
    assert!(logs.contains("over the bound") && logs.contains("connection closed"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    // Nothing of it reached a log: another client is served as before.
    let other = KvClient::connect(&cluster.config).expect("client");
    other.put(b"small", b"value").expect("put after the oversized operation");
    assert_eq!(other.get(b"small").expect("get"), Some(b"value".to_vec()));
    let get = dura_kv(&["get", "--config", cluster.config_arg(), "small"], b"");
    assert!(get.status.success(), "{}", stderr(&get));
}

#[test]
fn help_documents_the_exit_statuses() {
    let help = dura_kv(&["--help"], b"");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for line in ["Exit status", "2   get: the key is absent", "3   cas:", "4   cluster unreachable"]
    {
        assert!(text.contains(line), "--help lacks {line:?}:\n{text}");
    }
    for command in ["get", "put", "del", "cas", "scan"] {
        let help = dura_kv(&[command, "--help"], b"");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("2   get: the key is absent"), "{command} --help:\n{text}");
    }
}

#[test]
fn exit_statuses_tell_an_absent_key_and_a_cas_mismatch_from_success() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(dir.path());
    let config = cluster.config_arg();
    let code = |args: &[&str]| {
        let output = dura_kv(args, b"");
        (output.status.code(), String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    assert_eq!(code(&["get", "--config", config, "nothing"]).0, Some(2));
    assert_eq!(code(&["put", "--config", config, "k", "v1"]), (Some(0), "ok".into()));
    assert_eq!(code(&["get", "--config", config, "k"]), (Some(0), "v1".into()));
    let mismatch = code(&["cas", "--config", config, "k", "v2", "--expected", "v0"]);
    assert_eq!(mismatch, (Some(3), "not swapped".into()));
    let swap = code(&["cas", "--config", config, "k", "v2", "--expected", "v1"]);
    assert_eq!(swap, (Some(0), "swapped".into()));
    // Without --expected the key must be absent.
    assert_eq!(code(&["cas", "--config", config, "k", "v3"]).0, Some(3));
    assert_eq!(code(&["del", "--config", config, "k"]), (Some(0), "deleted".into()));
    assert_eq!(code(&["get", "--config", config, "k"]).0, Some(2));
}

#[test]
fn an_unreachable_cluster_and_a_bad_command_line_have_their_own_exit_statuses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::configure(dir.path()); // nothing listens on its ports
    let started = Instant::now();
    let get = dura_kv(&["get", "--config", cluster.config_arg(), "k"], b"");
    assert_eq!(get.status.code(), Some(4), "{}", stderr(&get));
    assert!(stderr(&get).contains("cluster unreachable"), "{}", stderr(&get));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let usage = dura_kv(&["put", "--config", cluster.config_arg()], b"");
    assert_eq!(usage.status.code(), Some(64), "{}", stderr(&usage));
}

/// The fixed keys `ClusterConfig::local` writes (for tests); an operator's config must
/// not hold them.
fn fixed_test_keys() -> (String, String) {
    let config = ClusterConfig::local_with_ports(
        1,
        Mode::Bft,
        LogMode::Parallel,
        Path::new("/x"),
        &[1, 2, 3, 4, 5, 6, 7, 8],
    );
    (config.replica_key, config.client_key)
}

#[test]
fn init_writes_a_valid_config_with_fresh_keys_for_the_given_hosts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("cluster.toml");
    let out_arg = out.to_str().expect("utf-8 path");
    let hosts = "10.0.0.1:7000,10.0.0.2:7000,db3.example:7010";
    let args = ["init", "--hosts", hosts, "--mode", "crash", "--data-dir", "/srv/dura"];
    let init = dura_kv(&[&args[..], &["--out", out_arg]].concat(), b"");
    assert!(init.status.success(), "{}", stderr(&init));
    let config = ClusterConfig::load(&out).expect("init output loads and validates");
    assert_eq!((config.mode, config.f, config.n()), (Mode::Crash, 1, 3));
    let hosts: Vec<_> = config.replicas.iter().map(|r| (r.host.as_str(), r.replica_port)).collect();
    assert_eq!(hosts, [("10.0.0.1", 7000), ("10.0.0.2", 7000), ("db3.example", 7010)]);
    assert_eq!(config.replicas[2].client_port, 7110);
    assert_eq!(config.replicas[2].transfer_port, Some(7210));
    assert_eq!(config.replicas[2].metrics_port, Some(7310));
    assert_eq!(config.replicas[1].data_dir, Path::new("/srv/dura/r1"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the config holds keys");

    // An existing config is kept unless --force.
    let again = dura_kv(&[&args[..], &["--out", out_arg]].concat(), b"");
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let again = dura_kv(&[&args[..], &["--out", out_arg, "--force"]].concat(), b"");
    assert!(again.status.success(), "{}", stderr(&again));
    let second = ClusterConfig::load(&out).expect("valid");

    // Fresh keys every time, never the fixed test keys.
    let (replica_key, client_key) = fixed_test_keys();
    for config in [&config, &second] {
        assert_ne!(config.replica_key, replica_key);
        assert_ne!(config.client_key, client_key);
        assert_ne!(config.replica_key, config.client_key);
        assert_eq!(config.replica_key_bytes().expect("hex").len(), 32);
    }
    assert_ne!(config.replica_key, second.replica_key);
}

#[test]
fn init_on_loopback_prints_the_config_and_refuses_counts_that_do_not_fit_the_mode() {
    let init = dura_kv(&["init", "--replicas", "4", "--base-port", "7300"], b"");
    assert!(init.status.success(), "{}", stderr(&init));
    let text = String::from_utf8(init.stdout).expect("utf-8");
    let config = ClusterConfig::from_toml(&text).expect("stdout parses and validates");
    assert_eq!((config.mode, config.f), (Mode::Bft, 1));
    let ports: Vec<_> = config
        .replicas
        .iter()
        .map(|r| (r.replica_port, r.client_port, r.transfer_port, r.metrics_port))
        .collect();
    let expected = (0..4).map(|i| (7300 + i, 7400 + i, Some(7500 + i), Some(7600 + i)));
    assert_eq!(ports, expected.collect::<Vec<_>>());

    // Repeated --host, bare hosts on the default base port, no metrics.
    let args = ["init", "--host", "m1", "--host", "m2", "--host", "m3", "--mode", "crash"];
    let init = dura_kv(&[&args[..], &["--f", "1", "--no-metrics"]].concat(), b"");
    assert!(init.status.success(), "{}", stderr(&init));
    let config = ClusterConfig::from_toml(&String::from_utf8_lossy(&init.stdout)).expect("valid");
    let replicas: Vec<_> = config
        .replicas
        .iter()
        .map(|r| (r.host.as_str(), r.replica_port, r.client_port, r.metrics_port))
        .collect();
    assert_eq!(
        replicas,
        [("m1", 7000, 7100, None), ("m2", 7000, 7100, None), ("m3", 7000, 7100, None)]
    );

    let bad = dura_kv(&["init", "--hosts", "a:1,b:1,c:1"], b"");
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("3 replicas do not fit mode bft"), "{}", stderr(&bad));
    let bad = dura_kv(&["init", "--replicas", "5", "--f", "1"], b"");
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("needs 4 replicas, 5 given"), "{}", stderr(&bad));
    let bad = dura_kv(&["init", "--hosts", "a:1,b:1,c:1,d:x"], b"");
    assert!(stderr(&bad).contains("d:x"), "{}", stderr(&bad));
}

#[test]
fn a_missing_config_file_prints_the_os_error_once_and_a_bad_field_is_named() {
    let get = dura_kv(&["get", "--config", "/nonexistent/cluster.toml", "k"], b"");
    assert_eq!(get.status.code(), Some(1));
    let text = stderr(&get);
    assert!(text.contains("read cluster config /nonexistent/cluster.toml"), "{text}");
    assert_eq!(text.matches("No such file or directory").count(), 1, "{text}");

    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::configure(dir.path());
    let broken = std::fs::read_to_string(&cluster.config_path)
        .expect("read")
        .replace("request_timeout_ms = 500", "request_timeout_ms = 0");
    std::fs::write(&cluster.config_path, broken).expect("write");
    let get = dura_kv(&["get", "--config", cluster.config_arg(), "k"], b"");
    assert_eq!(get.status.code(), Some(1));
    assert!(stderr(&get).contains("field `request_timeout_ms`"), "{}", stderr(&get));
}

#[test]
fn a_data_dir_that_cannot_be_made_is_named_with_its_os_error_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::configure(dir.path());
    // replica 0's data dir would have to be made inside a regular file
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").expect("write");
    let mut config = cluster.config.clone();
    config.replicas[0].data_dir = file.join("r0");
    config.save(&cluster.config_path).expect("write config");
    let serve = dura_kv(&["serve", "--config", cluster.config_arg(), "--id", "0"], b"");
    assert_eq!(serve.status.code(), Some(1), "{}", stderr(&serve));
    let text = stderr(&serve);
    assert!(text.contains("field `replica[0].data_dir`"), "{text}");
    assert!(text.contains(&format!("{}", file.join("r0").display())), "{text}");
    assert_eq!(text.matches("Not a directory (os error 20)").count(), 1, "{text}");
}

#[test]
fn local_runs_its_cluster_with_fresh_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut local = Command::new(env!("CARGO_BIN_EXE_dura-kv"))
        .args(["local", "--mode", "crash", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dura-kv local");
    /// SIGTERM on drop: `local` stops its replicas and exits.
    struct Stop<'a>(&'a mut Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let local = Stop(&mut local);
    let config_path = dir.path().join("cluster.toml");
    let deadline = Instant::now() + Duration::from_secs(20);
    let config = loop {
        if let Ok(config) = ClusterConfig::load(&config_path) {
            break config;
        }
        assert!(Instant::now() < deadline, "local wrote no config");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (replica_key, client_key) = fixed_test_keys();
    assert_ne!(config.replica_key, replica_key);
    assert_ne!(config.client_key, client_key);
    // The replicas may still be starting: unreachable (4) until they listen.
    let put = loop {
        let put =
            dura_kv(&["put", "--config", config_path.to_str().expect("utf-8"), "k", "v"], b"");
        if put.status.code() != Some(4) || Instant::now() > deadline {
            break put;
        }
    };
    assert!(put.status.success(), "{}", stderr(&put));
    drop(local);
}

#[test]
fn scan_reads_a_range_in_key_order_in_pages_cut_by_limit_and_reply_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(dir.path());
    let client = KvClient::connect(&cluster.config).expect("client");
    for key in ["b", "a", "d", "c", "e"] {
        client.put(key.as_bytes(), format!("value of {key}").as_bytes()).expect("put");
    }
    let page = client.scan(b"b", Some(b"e"), 10).expect("scan");
    let keys: Vec<_> = page.entries.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, [&b"b"[..], b"c", b"d"]);
    assert_eq!(page.entries[0].1, b"value of b");
    assert_eq!(page.more, None);
    let page = client.scan(b"a", None, 2).expect("scan");
    assert_eq!(page.more.as_deref(), Some(&b"c"[..]), "cut by the limit: more from c");

    // Three 3 MiB values: a 4 MiB reply holds one, and says where to go on.
    for key in ["big1", "big2", "big3"] {
        client.put(key.as_bytes(), &vec![b'x'; 3 * MIB]).expect("put 3 MiB");
    }
    assert!(client.scan_reply_bytes_max() as usize <= 4 * MIB);
    let page = client.scan(b"big", Some(b"bih"), 10).expect("scan");
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.more.as_deref(), Some(&b"big2"[..]));

    let config = cluster.config_arg();
    // ("big1" sorts after "bi": the range holds a and b.)
    let scan = dura_kv(&["scan", "--config", config, "a", "bi", "--limit", "5"], b"");
    assert!(scan.status.success(), "{}", stderr(&scan));
    assert!(scan.stdout.len() < 100, "{} bytes printed", scan.stdout.len());
    assert_eq!(String::from_utf8_lossy(&scan.stdout), "a\tvalue of a\nb\tvalue of b\n");
    // The command line follows the continuation across pages, up to --limit.
    let scan = dura_kv(&["scan", "--config", config, "big", "", "--limit", "4"], b"");
    assert!(scan.status.success(), "{}", stderr(&scan));
    let text = String::from_utf8_lossy(&scan.stdout);
    let keys: Vec<_> = text.lines().map(|line| line.split('\t').next().unwrap_or("")).collect();
    assert_eq!(keys, ["big1", "big2", "big3", "c"]);
}

#[test]
fn serve_on_an_empty_data_dir_refuses_unless_told_to_begin_a_new_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::configure(dir.path());
    // No peer runs, so none holds a state: without --new-cluster the replica refuses
    // (after asking its peers for up to 20 s) and says how to proceed.
    let refused = dura_kv(&["serve", "--config", cluster.config_arg(), "--id", "0"], b"");
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let text = stderr(&refused);
    assert!(text.contains("replica 0 has no state"), "{text}");
    assert!(text.contains("no replica that answered holds one"), "{text}");
    assert!(text.contains("--new-cluster"), "{text}");
    assert!(!cluster.config.replicas[0].data_dir.join("member").exists(), "not a member");
    // With --new-cluster every replica begins the cluster, and it serves.
    for id in 0..cluster.config.n() {
        let log = std::fs::File::create(dir.path().join(format!("replica{id}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_dura-kv"))
            .args(["serve", "--config", cluster.config_arg(), "--id", &id.to_string()])
            .arg("--new-cluster")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dura-kv serve");
        cluster.children.push(child);
    }
    let client = KvClient::connect(&cluster.config).expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.put(b"new", b"cluster").is_err() {
        assert!(Instant::now() < deadline, "no answer; logs in {}", dir.path().display());
    }
    assert_eq!(client.get(b"new").expect("get").as_deref(), Some(&b"cluster"[..]));
    // n-f replicas answer the put; a replica slower to start (a loaded machine) writes
    // its marker a moment later.
    for replica in &cluster.config.replicas {
        let marker = replica.data_dir.join("member");
        while !marker.exists() {
            assert!(Instant::now() < deadline, "replica {} is marked", replica.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn init_with_a_tls_dir_writes_certificates_every_replica_and_client_can_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("cluster.toml");
    let tls_dir = dir.path().join("tls");
    let args = ["init", "--replicas", "4", "--base-port", "7400", "--tls-dir"];
    let init = dura_kv(
        &[&args[..], &[tls_dir.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")]]
            .concat(),
        b"",
    );
    assert!(init.status.success(), "{}", stderr(&init));
    let config = ClusterConfig::load(&out).expect("init output loads and validates");
    let tls = config.tls.as_ref().expect("a [tls] section");
    assert!(tls.ca_file.starts_with(&tls_dir) && tls.ca_file.is_absolute(), "{tls:?}");
    for id in 0..4 {
        let replica = dura_engine::runtime::tls::ReplicaTls::load(&config, id).expect("loads");
        assert!(replica.is_some(), "replica {id}");
    }
    assert!(dura_engine::runtime::tls::load_client(&config).expect("loads").is_some());
}

#[test]
fn local_with_tls_serves_and_a_plaintext_put_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut local = Command::new(env!("CARGO_BIN_EXE_dura-kv"))
        .args(["local", "--mode", "crash", "--tls", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dura-kv local --tls");
    /// SIGTERM on drop: `local` stops its replicas and exits.
    struct Stop<'a>(&'a mut Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let local = Stop(&mut local);
    let config_path = dir.path().join("cluster.toml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let config = loop {
        if let Ok(config) = ClusterConfig::load(&config_path)
            && config.tls.is_some()
        {
            break config;
        }
        assert!(Instant::now() < deadline, "local wrote no config with [tls]");
        std::thread::sleep(Duration::from_millis(50));
    };
    let config_arg = config_path.to_str().expect("utf-8");
    // The replicas may still be starting: unreachable (4) until they listen.
    let put = loop {
        let put = dura_kv(&["put", "--config", config_arg, "k", "over tls"], b"");
        if put.status.code() != Some(4) || Instant::now() > deadline {
            break put;
        }
    };
    assert!(put.status.success(), "{}", stderr(&put));
    let get = dura_kv(&["get", "--config", config_arg, "k"], b"");
    assert_eq!(String::from_utf8_lossy(&get.stdout), "over tls\n", "{}", stderr(&get));

    let mut plaintext = config.clone();
    plaintext.tls = None;
    for replica in &mut plaintext.replicas {
        replica.tls_cert_file = None;
        replica.tls_key_file = None;
    }
    let plaintext_path = dir.path().join("plaintext.toml");
    plaintext.save(&plaintext_path).expect("write");
    let started = Instant::now();
    let refused = dura_kv(&["get", "--config", plaintext_path.to_str().expect("utf-8"), "k"], b"");
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("requires TLS"), "{}", stderr(&refused));
    assert!(started.elapsed() < Duration::from_secs(10), "refused at once, not timed out");
    drop(local);
}
