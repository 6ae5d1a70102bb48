//! The README's Durable DepSpace recipes, run through `dura-ts` against a real local
//! cluster of `dura-ts serve` processes: a lock with leader election, a work queue, a
//! barrier.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::{Cluster, Reaped, WAIT_MAX, stderr, stdout, temp_dir};
use dura_engine::runtime::Mode;

#[test]
fn a_leader_lock_is_held_by_one_renewed_resigned_and_taken_over_after_its_lease() {
    let dir = temp_dir();
    let cluster = Cluster::start(Mode::Bft, dir.path());
    let leader = "('leader', *)";
    // A becomes leader: nothing matched, its timed token is written.
    assert_eq!(cluster.ok("cas", &[leader, "('leader', 'a')", "--lease-ms", "60000"]), "ok\n");
    // B contends: the holder is printed, exit 3, nothing written.
    let b = cluster.run("cas", &[leader, "('leader', 'b')", "--lease-ms", "3000"]);
    assert_eq!(b.status.code(), Some(3), "{}", stderr(&b));
    assert_eq!(stdout(&b), "('leader', 'a')\n");
    assert_eq!(cluster.ok("count", &[leader]), "1\n");
    // A renews while it leads; B cannot renew what it does not hold.
    assert_eq!(
        cluster.ok("renew", &["('leader', 'a')", "--lease-ms", "60000"]),
        "('leader', 'a')\n"
    );
    let b_renew = cluster.run("renew", &["('leader', 'b')", "--lease-ms", "3000"]);
    assert_eq!(b_renew.status.code(), Some(2));
    assert_eq!(stderr(&b_renew).trim(), "(none)");
    // A resigns by taking its token; B takes over at once.
    assert_eq!(cluster.ok("inp", &["('leader', 'a')"]), "('leader', 'a')\n");
    assert_eq!(cluster.ok("cas", &[leader, "('leader', 'b')", "--lease-ms", "60000"]), "ok\n");
    let a = cluster.run("cas", &[leader, "('leader', 'a')", "--lease-ms", "60000"]);
    assert_eq!((a.status.code(), stdout(&a).as_str()), (Some(3), "('leader', 'b')\n"));
    // B's last renewal is short, and then B stops (it crashed, say): A's cas succeeds
    // once B's lease ended. Never are there two leaders.
    assert_eq!(
        cluster.ok("renew", &["('leader', 'b')", "--lease-ms", "1500"]),
        "('leader', 'b')\n"
    );
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let a = cluster.run("cas", &[leader, "('leader', 'a')", "--lease-ms", "60000"]);
        match a.status.code() {
            Some(0) => break,
            Some(3) => assert_eq!(stdout(&a), "('leader', 'b')\n"),
            other => panic!("cas exited {other:?}: {}", stderr(&a)),
        }
        assert!(Instant::now() < deadline, "B's lease never ended");
    }
    assert_eq!(cluster.ok("rd-all", &[leader]), "('leader', 'a')\n", "one leader: A");
    let b_renew = cluster.run("renew", &["('leader', 'b')", "--lease-ms", "3000"]);
    assert_eq!(b_renew.status.code(), Some(2), "B learns it lost the lock");
}

#[test]
fn a_work_queue_hands_every_job_to_exactly_one_worker() {
    let dir = temp_dir();
    let cluster = Cluster::start(Mode::Crash, dir.path());
    const JOBS: usize = 10;
    // Half the jobs are queued before the workers come, half while they wait.
    for job in 0..JOBS / 2 {
        cluster.ok("out", &[&format!("('job', {job}, 'resize img{job}.png')")]);
    }
    let workers: Vec<Reaped> =
        (0..JOBS).map(|_| Reaped(Some(cluster.spawn("in", &["('job', *int, *str)"])))).collect();
    for job in JOBS / 2..JOBS {
        cluster.ok("out", &[&format!("('job', {job}, 'resize img{job}.png')")]);
    }
    let mut taken = BTreeSet::new();
    for worker in workers {
        let output = worker.finish();
        assert!(output.status.success(), "{}", stderr(&output));
        let line = stdout(&output);
        let job: usize = line
            .strip_prefix("('job', ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a job tuple: {line:?}"));
        assert_eq!(line, format!("('job', {job}, 'resize img{job}.png')\n"));
        assert!(taken.insert(job), "job {job} taken twice");
    }
    assert_eq!(taken, (0..JOBS).collect(), "every job taken once");
    assert_eq!(cluster.ok("count", &["('job', *, *)"]), "0\n");
}

#[test]
fn a_barrier_opens_when_the_last_party_arrives() {
    let dir = temp_dir();
    let cluster = Cluster::start(Mode::Bft, dir.path());
    const PARTIES: usize = 3;
    // What each party runs: arrive, count, open the barrier if it was the last, wait.
    let arrive = |party: usize| -> Reaped {
        cluster.ok("out", &[&format!("('arrived', 'b1', 'p{party}')")]);
        let arrived: usize =
            cluster.ok("count", &["('arrived', 'b1', *)"]).trim().parse().expect("a count");
        if arrived == PARTIES {
            // cas: whichever party sees PARTIES first opens it; the others find it open.
            let open = cluster.run("cas", &["('go', 'b1')", "('go', 'b1')"]);
            assert!(matches!(open.status.code(), Some(0 | 3)), "{}", stderr(&open));
        }
        Reaped(Some(cluster.spawn("rd", &["('go', 'b1')"])))
    };
    let first: Vec<Reaped> = (0..PARTIES - 1).map(arrive).collect();
    assert_eq!(cluster.ok("count", &["('go', 'b1')"]), "0\n", "closed before the last");
    let last = arrive(PARTIES - 1);
    for party in first.into_iter().chain([last]) {
        let output = party.finish();
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stdout(&output), "('go', 'b1')\n");
    }
    assert_eq!(cluster.ok("count", &["('go', 'b1')"]), "1\n", "rd reads, leaves the tuple");
}
