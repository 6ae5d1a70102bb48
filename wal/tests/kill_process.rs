//! A real process appends to a real log and is killed with SIGKILL at a random moment;
//! reopening must return every record it reported durable, in order, intact.
//!
//! The test re-runs its own binary as the child (`DURA_WAL_CHILD_DIR` set).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dura_wal::{Wal, WalOptions};

const CHILD_DIR: &str = "DURA_WAL_CHILD_DIR";

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 512 * 1024,
        group_bytes_max: 64 * 1024,
        record_bytes_max: 64 * 1024,
        ..WalOptions::default()
    }
}

fn payload(id: u64) -> Vec<u8> {
    let len = (id as usize * 131) % 9000;
    (0..len).map(|i| (i as u64).wrapping_mul(id) as u8).collect()
}

/// Child mode: append forever, printing each id once it is durable.
fn child(dir: &str) {
    let (writer, recovered) = Wal::open(std::path::Path::new(dir), options()).expect("child open");
    let mut id = recovered.records.last().map_or(1, |r| r.last_agreement_id + 1);
    let notifications = writer.durable_notifications();
    let mut stdout = std::io::stdout().lock();
    let mut pending = std::collections::VecDeque::new();
    loop {
        for _ in 0..8 {
            writer.append(id, id, &payload(id)).expect("child append");
            pending.push_back(id);
            if id % 97 == 0 {
                writer.cut_segment(id).expect("cut");
            }
            id += 1;
        }
        let point = notifications.recv().expect("durable point");
        while pending.front().is_some_and(|&p| p <= point.agreement_id) {
            let done = pending.pop_front().expect("front");
            writeln!(stdout, "{done}").expect("stdout");
        }
        stdout.flush().expect("flush");
    }
}

#[test]
fn records_reported_durable_survive_sigkill_of_the_writing_process() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("own binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut durable_max = 0u64;
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "records_reported_durable_survive_sigkill_of_the_writing_process",
                "--nocapture",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let want = 150 + round * 70;
        let mut seen = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(id) = line.trim().parse::<u64>() else { continue };
            assert!(id > durable_max, "durable ids go forward");
            durable_max = id;
            seen += 1;
            if seen >= want || Instant::now() > deadline {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let (writer, recovered) = Wal::open(dir.path(), options()).expect("reopen after kill");
        let ids: Vec<u64> = recovered.records.iter().map(|r| r.first_agreement_id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "round {round}: out of order");
        assert!(
            ids.last().copied().unwrap_or(0) >= durable_max,
            "round {round}: durable id {durable_max} lost"
        );
        assert_eq!(ids.first(), Some(&1), "round {round}: nothing was deleted");
        assert_eq!(ids.len() as u64, *ids.last().expect("records"), "round {round}: a gap");
        for record in &recovered.records {
            assert_eq!(record.payload, payload(record.first_agreement_id));
        }
        writer.close().expect("close");
        durable_max = *ids.last().expect("records");
    }
}
