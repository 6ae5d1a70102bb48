//! Clients blocked in `in` while every replica is killed with SIGKILL and restarted:
//! the blocked requests are part of the replicated state (log and checkpoint), so each
//! client is answered exactly once, with a distinct tuple, when the matching `out`s
//! arrive after the restart. Real `dura-ts serve` processes, real `dura-ts in` clients.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, Reaped, WAIT_MAX, stderr, stdout, temp_dir};
use dura_engine::runtime::Mode;
use dura_engine::runtime::config::free_ports;

const WAITERS: usize = 4;

/// `dura_batch_requests_decided_total` of the replica serving metrics on `port`, or
/// None while it does not answer.
fn requests_decided(port: u16) -> Option<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("dura_batch_requests_decided_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

fn blocked_ins_survive_a_kill_of_every_replica(mode: Mode) {
    let dir = temp_dir();
    let metrics_port = free_ports(1).expect("a port")[0];
    let mut cluster = Cluster::configure_with(mode, dir.path(), |config| {
        config.replicas[0].metrics_port = Some(metrics_port);
    });
    cluster.start_all();
    cluster.wait_ready();
    let deadline = Instant::now() + WAIT_MAX;
    let before = loop {
        if let Some(decided) = requests_decided(metrics_port) {
            break decided;
        }
        assert!(Instant::now() < deadline, "no metrics from replica 0");
        std::thread::sleep(Duration::from_millis(50));
    };
    let waiters: Vec<Reaped> =
        (0..WAITERS).map(|_| Reaped(Some(cluster.spawn("in", &["('k9', *int)"])))).collect();
    // Every `in` is ordered (and so blocked, the space being empty) before the kill.
    while requests_decided(metrics_port).is_none_or(|decided| decided < before + WAITERS as u64) {
        assert!(Instant::now() < deadline, "the waiters' requests were not ordered");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill_all();
    cluster.start_all();
    cluster.wait_ready();
    assert_eq!(cluster.ok("count", &["('k9', *)"]), "0\n", "nothing was written yet");
    for value in 0..WAITERS {
        assert_eq!(cluster.ok("out", &[&format!("('k9', {value})")]), "ok\n");
    }
    let mut answered = BTreeSet::new();
    for waiter in waiters {
        let output = waiter.finish();
        assert!(output.status.success(), "{:?}: {}", output.status, stderr(&output));
        let line = stdout(&output);
        let value: usize = line
            .strip_prefix("('k9', ")
            .and_then(|rest| rest.strip_suffix(")\n"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("one tuple printed: {line:?}"));
        assert!(answered.insert(value), "tuple {value} went to two clients");
    }
    assert_eq!(answered, (0..WAITERS).collect(), "each waiter answered once, each tuple once");
    assert_eq!(cluster.ok("count", &["('k9', *)"]), "0\n", "every tuple was taken by a waiter");
}

#[test]
fn bft_blocked_ins_are_answered_once_after_every_replica_is_killed() {
    blocked_ins_survive_a_kill_of_every_replica(Mode::Bft);
}

#[test]
fn crash_mode_blocked_ins_are_answered_once_after_every_replica_is_killed() {
    blocked_ins_survive_a_kill_of_every_replica(Mode::Crash);
}
