//! `rd`/`in` with a timeout, against a real cluster: the blocked request is cancelled
//! through ordering (a later write is not taken by it), and a request answered before
//! its cancel ran returns its tuple. Nothing an `in` takes is lost.

mod common;

use std::time::Duration;

use common::{Cluster, stderr, stdout, temp_dir, tuple};
use dura_engine::runtime::Mode;
use dura_ts::TsError;
use dura_tuplespace::parse_template;

#[test]
fn a_timed_out_in_is_cancelled_through_ordering_and_takes_nothing_later() {
    let dir = temp_dir();
    let cluster = Cluster::start(Mode::Bft, dir.path());
    for command in ["in", "rd"] {
        let output = cluster.run(command, &["('late', *int)", "--timeout", "3s"]);
        assert_eq!(output.status.code(), Some(5), "{command}: {}", stderr(&output));
        assert!(stderr(&output).contains("cancelled, nothing was taken"), "{}", stderr(&output));
        assert!(stdout(&output).is_empty());
    }
    // Had the cancel not removed the blocked `in`, this write would go to it.
    assert_eq!(cluster.ok("out", &["('late', 1)"]), "ok\n");
    assert_eq!(cluster.ok("count", &["('late', *)"]), "1\n");
    // A tuple there already is returned, timeout or not.
    assert_eq!(cluster.ok("in", &["('late', *int)", "--timeout", "5s"]), "('late', 1)\n");
    // A blocked `in` answered by a write while it waits.
    let waiter = common::Reaped(Some(cluster.spawn("in", &["('soon', *)", "--timeout", "60s"])));
    assert_eq!(cluster.ok("out", &["('soon', 'x')"]), "ok\n");
    let output = waiter.finish();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "('soon', 'x')\n");
}

/// A timeout so short that the cancel races the request it cancels, again and again:
/// whatever ordering decided, a tuple the `in` took is returned, and a call that
/// returns no tuple took none.
#[test]
fn an_in_racing_its_own_cancel_returns_what_it_took_and_takes_nothing_else() {
    let dir = temp_dir();
    let cluster = Cluster::start(Mode::Bft, dir.path());
    let client = cluster.client().with_settle(Duration::from_secs(2));
    const ROUNDS: usize = 40;
    let (mut returned, mut timed_out, mut unconfirmed) = (0, 0, 0);
    for round in 0..ROUNDS {
        let written = tuple(&format!("('race', {round})"));
        client.out(&written, None).expect("out");
        let template = parse_template(&format!("('race', {round})")).expect("template");
        let taken = client.in_(&template, Some(Duration::ZERO));
        let left = client.rdp(&template).expect("rdp");
        match taken {
            Ok(got) => {
                assert_eq!(got, written);
                assert_eq!(left, None, "round {round}: returned and still there");
                returned += 1;
            }
            Err(TsError::TimedOut { .. }) => {
                assert_eq!(left, Some(written), "round {round}: timed out yet taken");
                timed_out += 1;
            }
            Err(TsError::Unconfirmed { .. }) => {
                assert_eq!(left, Some(written), "round {round}: unconfirmed yet taken");
                unconfirmed += 1;
            }
            Err(error) => panic!("round {round}: {error}"),
        }
    }
    eprintln!(
        "{ROUNDS} rounds: {returned} returned, {timed_out} timed out, {unconfirmed} unconfirmed"
    );
    let any = parse_template("('race', *)").expect("template");
    assert_eq!(client.count(&any).expect("count"), (ROUNDS - returned) as u64);
}

/// With every session taken by a waiting `in`, a second `in` with a timeout is still
/// queued in the client when its time is up: it is withdrawn unsent (it never reached
/// the cluster, so it takes nothing), and the first one still gets its tuple.
#[test]
fn an_in_still_queued_for_a_session_when_it_times_out_is_withdrawn_unsent() {
    let dir = temp_dir();
    let cluster = Cluster::start(Mode::Crash, dir.path());
    let options = dura_engine::runtime::ClientOptions {
        sessions_max: 1,
        request_timeout: common::WAIT_MAX,
        ..dura_engine::runtime::ClientOptions::new()
    };
    let client = dura_ts::TsClient::connect_with(&cluster.config, options).expect("client");
    let template = parse_template("('one', *)").expect("template");
    let first =
        client.raw().submit_blocking(dura_tuplespace::encode_op(&dura_tuplespace::Op::In {
            template: template.clone(),
        }));
    // The first `in` holds the only session once it is sent.
    let deadline = std::time::Instant::now() + common::WAIT_MAX;
    while first.ids().is_none() {
        assert!(std::time::Instant::now() < deadline, "the first in was never sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    let queued = client.in_(&template, Some(Duration::from_millis(200)));
    assert!(matches!(queued, Err(TsError::TimedOut { .. })), "{queued:?}");
    cluster.client().out(&tuple("('one', 1)"), None).expect("out");
    let answer = first.wait_timeout(common::WAIT_MAX).expect("answered").expect("a reply");
    assert_eq!(
        dura_tuplespace::decode_reply(&answer),
        Ok(dura_tuplespace::Reply::Tuple(tuple("('one', 1)")))
    );
    assert_eq!(cluster.ok("count", &["('one', *)"]), "0\n");
}
