//! Metrics and health over HTTP: a local cluster with a metrics port per replica,
//! scraped with a plain TCP stream as Prometheus would.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dura_engine::runtime::config::free_ports;
use dura_engine::runtime::metrics::METRICS_REQUEST_BYTES_MAX;
use dura_engine::runtime::{Client, ClusterConfig, LogMode, Mode, ReplicaOptions, start_replica};
use dura_engine::service::{CopiedState, CopiedStateInstaller, OrderedRequest, Replies, Service};

/// Replies with each operation as it came.
#[derive(Debug, Default)]
struct Echo;

impl Service for Echo {
    const NAME: &'static str = "echo";
    type View = CopiedState;
    type Installer = CopiedStateInstaller<Echo>;

    fn execute_batch(&mut self, requests: &[OrderedRequest<'_>], replies: &mut Replies) {
        for request in requests {
            replies.reply(request.operation.to_vec());
        }
    }

    fn state_digest(&self) -> [u8; 32] {
        [0; 32]
    }

    fn view(&self) -> CopiedState {
        CopiedState(Vec::new())
    }

    fn installer(&self) -> CopiedStateInstaller<Echo> {
        CopiedStateInstaller::new(|_| Ok(Echo))
    }
}

/// Sends `request` as it is and returns the response's status and body.
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics server");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(request).expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: dura\r\n\r\n").as_bytes())
}

/// Parses Prometheus text lines (`# HELP`, `# TYPE name kind`, `name value`) into
/// values by name, panicking on any other line.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut values = HashMap::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            typed.push(name.to_string());
            continue;
        }
        let (name, value) = line.split_once(' ').expect("name value");
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{line}"
        );
        assert!(typed.iter().any(|t| t == name), "{name} has a # TYPE line before it");
        values.insert(name.to_string(), value.parse::<f64>().expect("a number"));
    }
    values
}

#[test]
fn replicas_serve_metrics_that_move_with_requests_and_say_they_serve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        ClusterConfig::local(3, Mode::Crash, LogMode::Parallel, dir.path()).expect("config");
    config.pin_cores = false;
    let ports = free_ports(config.replicas.len()).expect("free ports");
    for (replica, port) in config.replicas.iter_mut().zip(ports) {
        replica.metrics_port = Some(port);
    }
    let replicas: Vec<_> = (0..config.n())
        .map(|id| start_replica(&config, id, Echo, ReplicaOptions::default()).expect("starts"))
        .collect();
    let addrs: Vec<SocketAddr> =
        replicas.iter().map(|r| r.metrics_addr().expect("metrics configured")).collect();
    {
        let client = Client::connect(&config).expect("client");
        for i in 0..20u64 {
            assert_eq!(client.invoke(i.to_le_bytes().to_vec()).expect("reply"), i.to_le_bytes());
        }
        // While the client is connected, the listeners count it; every replica link is
        // accepted by one side (the replica with the higher id).
        let scrapes: Vec<HashMap<String, f64>> =
            addrs.iter().map(|addr| parse_prometheus(&get(*addr, "/metrics").1)).collect();
        let clients: f64 = scrapes.iter().map(|s| s["dura_client_connections_open"]).sum();
        assert!(clients >= 1.0, "client connections open: {clients}");
        let links: f64 = scrapes.iter().map(|s| s["dura_replica_connections_accepted_open"]).sum();
        let n = config.n() as f64;
        assert_eq!(links, n * (n - 1.0) / 2.0, "one accepted connection per replica pair");
    }

    // Followers may apply the last decisions a moment after the client saw its reply.
    // Also, a leader change under way (a slow moment on a shared machine) shows no
    // leader or two for a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrapes = loop {
        let scrapes: Vec<HashMap<String, f64>> = addrs
            .iter()
            .map(|addr| {
                let (status, body) = get(*addr, "/metrics");
                assert_eq!(status, 200, "{body}");
                parse_prometheus(&body)
            })
            .collect();
        let settled = scrapes.iter().all(|s| s["dura_batch_requests_decided_total"] >= 20.0)
            && scrapes.iter().all(|s| s["dura_log_writes_total"] > 0.0)
            && scrapes.iter().map(|s| s["dura_leader"]).sum::<f64>() == 1.0;
        if settled || Instant::now() > deadline {
            break scrapes;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for scrape in &scrapes {
        assert!(scrape["dura_agreements_decided_total"] > 0.0, "{scrape:?}");
        assert!(scrape["dura_last_decided_agreement_id"] > 0.0, "{scrape:?}");
        assert!(scrape["dura_batch_requests_decided_total"] >= 20.0, "{scrape:?}");
        assert!(scrape["dura_log_writes_total"] > 0.0, "{scrape:?}");
        assert!(scrape["dura_log_write_bytes_total"] > 0.0, "{scrape:?}");
        assert_eq!(scrape["dura_log_failures_total"], 0.0, "{scrape:?}");
        assert_eq!(scrape["dura_recovering"], 0.0, "{scrape:?}");
    }
    let released: f64 = scrapes.iter().map(|s| s["dura_replies_released_total"]).sum();
    assert!(released >= 20.0, "replies released: {released}");
    let leaders: f64 = scrapes.iter().map(|s| s["dura_leader"]).sum();
    assert_eq!(leaders, 1.0, "one leader among the replicas");

    for addr in &addrs {
        assert_eq!(get(*addr, "/health"), (200, "serving\n".into()));
        assert_eq!(get(*addr, "/nothing-here").0, 404);
        assert_eq!(get(*addr, "/health?verbose=1").0, 200);
        assert_eq!(exchange(*addr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
        assert_eq!(exchange(*addr, b"hello there\r\n\r\n").0, 400);
        // A head that fills the bound without ending is refused (all of it is read, so
        // the server closes cleanly).
        assert_eq!(exchange(*addr, &[b'x'; METRICS_REQUEST_BYTES_MAX]).0, 400);
    }
    // A client that connects and sends nothing holds the server only until its timeout.
    let _silent = TcpStream::connect(addrs[0]).expect("connect");
    assert_eq!(get(addrs[0], "/health").0, 200);

    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn a_restarted_replica_says_recovering_until_its_peers_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        ClusterConfig::local(3, Mode::Crash, LogMode::Parallel, dir.path()).expect("config");
    config.pin_cores = false;
    config.request_timeout_ms = 500;
    let ports = free_ports(config.replicas.len()).expect("free ports");
    for (replica, port) in config.replicas.iter_mut().zip(ports) {
        replica.metrics_port = Some(port);
    }
    let start = |id| start_replica(&config, id, Echo, ReplicaOptions::default()).expect("starts");
    let replicas: Vec<_> = (0..config.n()).map(start).collect();
    {
        let client = Client::connect(&config).expect("client");
        for i in 0..5u64 {
            client.invoke(i.to_le_bytes().to_vec()).expect("reply");
        }
    }
    for replica in replicas {
        replica.stop().expect("clean stop");
    }

    // Alone, a restarted replica cannot finish recovering: it needs its peers' answers.
    let first = start(0);
    let addr = first.metrics_addr().expect("metrics configured");
    for _ in 0..5 {
        assert_eq!(get(addr, "/health"), (503, "recovering\n".into()));
        let (_, body) = get(addr, "/metrics");
        assert_eq!(parse_prometheus(&body)["dura_recovering"], 1.0, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let others: Vec<_> = (1..config.n()).map(start).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(addr, "/health").0 != 200 {
        assert!(Instant::now() < deadline, "replica 0 still recovering with its peers back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(addr, "/health"), (200, "serving\n".into()));
    first.stop().expect("clean stop");
    for replica in others {
        replica.stop().expect("clean stop");
    }
}
