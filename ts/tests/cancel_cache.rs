//! The executor's reply cache and the tuple space's cancel, together (no I/O): whatever
//! ordering decided between a blocked request and its cancel, the request's answer can
//! be fetched by retransmitting it after the cancel ran.

use dura_engine::service::{Executor, OrderedRequest, Outcome};
use dura_tuplespace::{
    Op, Reply, TupleSpace, decode_reply, encode_op, parse_template, parse_tuple,
};

fn request(client_id: u64, sequence: u64, operation: &[u8]) -> OrderedRequest<'_> {
    OrderedRequest { client_id, sequence, operation, now_ms: 1_000 }
}

fn take() -> Vec<u8> {
    encode_op(&Op::In { template: parse_template("('job', *)").unwrap() })
}

fn job() -> Vec<u8> {
    encode_op(&Op::Out { tuple: parse_tuple("('job', 1)").unwrap(), lease_ms: None })
}

fn cancel(sequence: u64) -> Vec<u8> {
    encode_op(&Op::Cancel { sequence })
}

fn reply(bytes: &[u8]) -> Reply {
    decode_reply(bytes).expect("a reply")
}

fn executed(outcome: &Outcome) -> Reply {
    match outcome {
        Outcome::Executed(bytes) => reply(bytes),
        other => panic!("not executed now: {other:?}"),
    }
}

#[test]
fn an_in_answered_at_once_keeps_its_answer_past_the_cancel() {
    let mut executor = Executor::new(TupleSpace::new());
    executor.execute(&[request(2, 1, &job())]);
    let taken = executor.execute(&[request(1, 1, &take())]);
    assert_eq!(taken.outcomes, vec![Outcome::Deferred], "deferred and released at once");
    assert_eq!(reply(&taken.released[0].reply), Reply::Tuple(parse_tuple("('job', 1)").unwrap()));
    // The client's answer got lost; it cancels.
    let cancelled = executor.execute(&[request(1, 2, &cancel(1))]);
    assert_eq!(executed(&cancelled.outcomes[0]), Reply::NotFound);
    // A retransmission of request 1 still gets the tuple.
    let again = executor.execute(&[request(1, 1, &take())]);
    match &again.outcomes[0] {
        Outcome::Cached(bytes, _) => {
            assert_eq!(reply(bytes), Reply::Tuple(parse_tuple("('job', 1)").unwrap()))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_in_released_before_its_cancel_keeps_its_answer_and_one_still_blocked_is_cancelled() {
    let mut executor = Executor::new(TupleSpace::new());
    assert_eq!(executor.execute(&[request(1, 1, &take())]).outcomes, vec![Outcome::Deferred]);
    let written = executor.execute(&[request(2, 1, &job()), request(1, 2, &cancel(1))]);
    assert_eq!(executed(&written.outcomes[1]), Reply::NotFound, "answered before the cancel");
    assert_eq!(written.released.len(), 1);
    let cached = executor.cached_reply(1, 1).expect("kept");
    assert_eq!(reply(cached), Reply::Tuple(parse_tuple("('job', 1)").unwrap()));

    let mut executor = Executor::new(TupleSpace::new());
    executor.execute(&[request(1, 1, &take())]);
    let cancelled = executor.execute(&[request(1, 2, &cancel(1))]);
    assert_eq!(executed(&cancelled.outcomes[0]), Reply::Ok);
    assert_eq!(reply(&cancelled.released[0].reply), Reply::Cancelled);
    let later = executor.execute(&[request(2, 1, &job())]);
    assert!(later.released.is_empty(), "the cancelled in takes nothing");
    assert_eq!(executor.service().len(), 1);
}

#[test]
fn a_request_never_ordered_before_its_cancel_is_never_run() {
    let mut executor = Executor::new(TupleSpace::new());
    executor.execute(&[request(2, 1, &job())]);
    let cancelled = executor.execute(&[request(1, 2, &cancel(1))]);
    assert_eq!(executed(&cancelled.outcomes[0]), Reply::NotFound);
    assert_eq!(executor.execute(&[request(1, 1, &take())]).outcomes, vec![Outcome::Stale]);
    assert_eq!(executor.service().len(), 1, "nothing taken");
}
