//! A whole cluster in this process: replicas as threads, real TCP on loopback.

use dura_kvstore::{ClusterConfig, KvClient, LogMode, Mode};

fn cluster(
    mode: Mode,
    log_mode: LogMode,
    dir: &std::path::Path,
) -> (ClusterConfig, Vec<dura_kvstore::ReplicaHandle>) {
    cluster_with(mode, log_mode, dir, |_| {})
}

/// A local cluster whose config `adjust` changes before the replicas start.
fn cluster_with(
    mode: Mode,
    log_mode: LogMode,
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut ClusterConfig),
) -> (ClusterConfig, Vec<dura_kvstore::ReplicaHandle>) {
    let n = mode.replicas_min(1) as u32;
    let mut config = ClusterConfig::local(n, mode, log_mode, dir).expect("local config");
    config.pin_cores = false;
    adjust(&mut config);
    let replicas =
        (0..n).map(|id| dura_kvstore::start(&config, id).expect("replica starts")).collect();
    (config, replicas)
}

#[test]
fn bft_cluster_orders_puts_gets_deletes_and_cas() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, replicas) = cluster(Mode::Bft, LogMode::Parallel, dir.path());
    let client = KvClient::connect(&config).expect("client");
    client.put(b"k", b"v1").expect("put");
    assert_eq!(client.get(b"k").expect("get"), Some(b"v1".to_vec()));
    assert!(!client.cas(b"k", Some(b"nope"), b"v2").expect("cas"));
    assert!(client.cas(b"k", Some(b"v1"), b"v2").expect("cas"));
    assert_eq!(client.get(b"k").expect("get"), Some(b"v2".to_vec()));
    assert!(client.delete(b"k").expect("delete"));
    assert_eq!(client.get(b"k").expect("get"), None);
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn state_survives_a_restart_of_every_replica_from_its_log() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, replicas) = cluster(Mode::Crash, LogMode::Parallel, dir.path());
    {
        let client = KvClient::connect(&config).expect("client");
        for i in 0..20u32 {
            client.put(format!("key{i}").as_bytes(), &i.to_le_bytes()).expect("put");
        }
    }
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
    let replicas: Vec<_> =
        (0..config.n()).map(|id| dura_kvstore::start(&config, id).expect("restart")).collect();
    assert!(replicas.iter().all(|r| r.recovered_agreement_id() > 0));
    let client = KvClient::connect(&config).expect("client");
    for i in 0..20u32 {
        assert_eq!(
            client.get(format!("key{i}").as_bytes()).expect("get"),
            Some(i.to_le_bytes().to_vec())
        );
    }
    client.put(b"after", b"restart").expect("put after restart");
}

#[test]
fn a_tls_cluster_serves_and_a_plaintext_client_is_told_why_it_is_refused() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    let (config, replicas) = cluster_with(Mode::Bft, LogMode::Parallel, dir.path(), |config| {
        dura_kvstore::pki::generate_tls(config, &tls).expect("certificates")
    });
    let client = KvClient::connect(&config).expect("client");
    client.put(b"k", b"over tls").expect("put");
    assert_eq!(client.get(b"k").expect("get"), Some(b"over tls".to_vec()));
    let big = vec![7u8; 300_000];
    client.put(b"big", &big).expect("a value over many TLS records");
    assert_eq!(client.get(b"big").expect("get"), Some(big));

    // The same cluster without [tls] in the client's config: refused, fast, saying why.
    let mut plaintext = config.clone();
    plaintext.tls = None;
    for replica in &mut plaintext.replicas {
        replica.tls_cert_file = None;
        replica.tls_key_file = None;
    }
    let options = dura_engine::runtime::ClientOptions {
        request_timeout: std::time::Duration::from_secs(30),
        ..dura_engine::runtime::ClientOptions::new()
    };
    let started = std::time::Instant::now();
    let refused = KvClient::connect_with(&plaintext, options).and_then(|c| c.get(b"k"));
    let error = refused.expect_err("a plaintext client is refused").to_string();
    assert!(error.contains("requires TLS"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}

#[test]
fn over_clients_max_an_idle_client_is_forgotten_and_its_next_request_refused_not_run_twice() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, replicas) =
        cluster_with(Mode::Bft, LogMode::Parallel, dir.path(), |config| config.clients_max = 2);
    let first = KvClient::connect(&config).expect("client");
    first.put(b"counter", b"1").expect("put");
    // Two more clients: the replicas remember two, and forget the one idle longest.
    for name in [&b"second"[..], b"third"] {
        let other = KvClient::connect(&config).expect("client");
        other.put(name, b"x").expect("put");
    }
    // The first client's next request, on its forgotten session: refused by every
    // replica alike, as expired (its outcome unknown to the client), never run.
    let error = first.put(b"counter", b"2").expect_err("its session was forgotten");
    assert!(
        matches!(error, dura_kvstore::KvError::Runtime(dura_kvstore::RuntimeError::SessionExpired)),
        "{error}"
    );
    assert_eq!(first.get(b"counter").expect("get on a new session"), Some(b"1".to_vec()));
    // The same client goes on, on a new session the cluster accepts.
    first.put(b"counter", b"3").expect("put on a new session");
    assert_eq!(first.get(b"counter").expect("get"), Some(b"3".to_vec()));
    for replica in replicas {
        replica.stop().expect("clean stop");
    }
}
