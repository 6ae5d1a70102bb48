use super::*;
use crate::parse::{parse_template, parse_tuple};
use crate::test_rng::Rng;

fn tuple(text: &str) -> Tuple {
    parse_tuple(text).unwrap()
}

fn tpl(text: &str) -> Template {
    parse_template(text).unwrap()
}

/// A space driven by one client per call, with a clock the test sets.
struct Harness {
    space: TupleSpace,
    now_ms: u64,
    sequence: u64,
}

impl Harness {
    fn new() -> Self {
        Self { space: TupleSpace::new(), now_ms: 0, sequence: 0 }
    }

    /// Runs `op` for `client` and returns (its sequence, all answers).
    fn run(&mut self, client_id: u64, op: Op) -> (u64, Vec<TypedAnswer>) {
        self.sequence += 1;
        let ctx = ExecCtx { client_id, sequence: self.sequence, now_ms: self.now_ms };
        let typed = self.space.apply(ctx, &op);
        (self.sequence, typed)
    }

    /// Runs `op` and returns its own reply, asserting it released nothing.
    fn reply(&mut self, client_id: u64, op: Op) -> Reply {
        let (sequence, answers) = self.run(client_id, op);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!((answers[0].client_id, answers[0].sequence), (client_id, sequence));
        answers.into_iter().next().unwrap().reply
    }

    fn out(&mut self, text: &str) {
        assert_eq!(self.reply(1, Op::Out { tuple: tuple(text), lease_ms: None }), Reply::Ok);
    }

    fn out_leased(&mut self, text: &str, lease_ms: u64) {
        let op = Op::Out { tuple: tuple(text), lease_ms: Some(lease_ms) };
        assert_eq!(self.reply(1, op), Reply::Ok);
    }

    fn rdp(&mut self, text: &str) -> Reply {
        self.reply(1, Op::Rdp { template: tpl(text) })
    }

    fn inp(&mut self, text: &str) -> Reply {
        self.reply(1, Op::Inp { template: tpl(text) })
    }

    /// Runs a blocking op that must block; returns its sequence.
    fn block(&mut self, client_id: u64, op: Op) -> u64 {
        let (sequence, answers) = self.run(client_id, op);
        assert!(answers.is_empty(), "expected to block, got {answers:?}");
        sequence
    }
}

fn found(text: &str) -> Reply {
    Reply::Tuple(tuple(text))
}

fn answer(client_id: u64, sequence: u64, reply: Reply) -> TypedAnswer {
    TypedAnswer { client_id, sequence, reply }
}

#[test]
fn rdp_reads_and_inp_takes_the_oldest_match_first() {
    let mut h = Harness::new();
    h.out("('job', 1)");
    h.out("('job', 2)");
    h.out("('other', 3)");
    assert_eq!(h.rdp("('job', *)"), found("('job', 1)"));
    assert_eq!(h.rdp("('job', *)"), found("('job', 1)"), "rdp leaves it");
    assert_eq!(h.inp("('job', *)"), found("('job', 1)"));
    assert_eq!(h.inp("('job', *)"), found("('job', 2)"));
    assert_eq!(h.inp("('job', *)"), Reply::NotFound);
    assert_eq!(h.rdp("(*, *int)"), found("('other', 3)"));
    assert_eq!(h.space.len(), 1);
}

#[test]
fn every_index_path_keeps_oldest_first_across_types_and_arities() {
    let mut h = Harness::new();
    h.out("(5, 'a')");
    h.out("('x', 'b')");
    h.out("(0x01, 'c')");
    h.out("(4, 'd')");
    h.out("('x')");
    h.out("('x', 'e', 1)");
    // Exact first field.
    assert_eq!(h.rdp("('x', *)"), found("('x', 'b')"));
    assert_eq!(h.rdp("('x')"), found("('x')"));
    // Typed wildcard first: oldest of the type, not smallest value.
    assert_eq!(h.rdp("(*int, *)"), found("(5, 'a')"));
    assert_eq!(h.rdp("(*bytes, *str)"), found("(0x01, 'c')"));
    // Any first: oldest of the arity.
    assert_eq!(h.rdp("(*, 'd')"), found("(4, 'd')"));
    assert_eq!(h.rdp("(*, *, *)"), found("('x', 'e', 1)"));
    assert_eq!(h.reply(1, Op::Count { template: tpl("(*, *)") }), Reply::Count(4));
    assert_eq!(h.reply(1, Op::Count { template: tpl("(*int, *str)") }), Reply::Count(2));
    assert_eq!(h.reply(1, Op::Count { template: tpl("(*, 1)") }), Reply::Count(0));
    assert_eq!(h.rdp("(5)"), Reply::NotFound, "arity must match");
}

#[test]
fn blocked_rd_and_in_are_answered_by_a_later_out_in_wait_order() {
    let mut h = Harness::new();
    let rd_a = h.block(10, Op::Rd { template: tpl("('job', *)") });
    let in_b = h.block(11, Op::In { template: tpl("('job', *int)") });
    let in_c = h.block(12, Op::In { template: tpl("('job', *)") });
    let rd_d = h.block(13, Op::Rd { template: tpl("(*, *)") });
    assert_eq!(h.space.blocked().count(), 4);

    // A write that matches none of them is stored and releases nothing.
    h.out("('job')");

    // rd_a reads it, in_b takes it; in_c and rd_d (later in wait order) never see it.
    let (seq, answers) = h.run(1, Op::Out { tuple: tuple("('job', 7)"), lease_ms: None });
    assert_eq!(
        answers,
        vec![
            answer(1, seq, Reply::Ok),
            answer(10, rd_a, found("('job', 7)")),
            answer(11, in_b, found("('job', 7)")),
        ]
    );
    assert_eq!(h.rdp("('job', 7)"), Reply::NotFound, "the blocked in took it");

    // The next write goes to in_c, which takes it; rd_d still waits.
    let (seq, answers) = h.run(1, Op::Out { tuple: tuple("('job', 'x')"), lease_ms: None });
    assert_eq!(answers, vec![answer(1, seq, Reply::Ok), answer(12, in_c, found("('job', 'x')"))]);
    let (seq, answers) = h.run(1, Op::Out { tuple: tuple("(1, 2)"), lease_ms: None });
    assert_eq!(answers, vec![answer(1, seq, Reply::Ok), answer(13, rd_d, found("(1, 2)"))]);
    assert_eq!(h.rdp("(1, 2)"), found("(1, 2)"), "a blocked rd leaves the tuple stored");
    assert_eq!(h.space.blocked().count(), 0);
}

#[test]
fn rd_and_in_answer_at_once_when_something_matches() {
    let mut h = Harness::new();
    h.out("('t', 1)");
    assert_eq!(h.reply(2, Op::Rd { template: tpl("('t', *)") }), found("('t', 1)"));
    assert_eq!(h.reply(2, Op::In { template: tpl("('t', *)") }), found("('t', 1)"));
    assert!(h.space.is_empty());
}

#[test]
fn cas_and_replace_release_blocked_requests_too() {
    let mut h = Harness::new();
    let waiting = h.block(5, Op::In { template: tpl("('lock', *)") });
    let cas =
        Op::Cas { template: tpl("('lock', *)"), tuple: tuple("('lock', 'me')"), lease_ms: None };
    let (seq, answers) = h.run(1, cas.clone());
    assert_eq!(
        answers,
        vec![answer(1, seq, Reply::Ok), answer(5, waiting, found("('lock', 'me')"))]
    );
    assert!(h.space.is_empty(), "the blocked in took the written tuple");

    assert_eq!(h.reply(1, cas.clone()), Reply::Ok);
    assert_eq!(h.reply(2, cas), found("('lock', 'me')"), "cas answers the existing match");
    assert_eq!(h.space.len(), 1);

    let waiting = h.block(6, Op::Rd { template: tpl("('lock', 'you')") });
    let replace = Op::Replace {
        template: tpl("('lock', *)"),
        tuple: tuple("('lock', 'you')"),
        lease_ms: None,
    };
    let (seq, answers) = h.run(1, replace);
    assert_eq!(
        answers,
        vec![answer(1, seq, found("('lock', 'me')")), answer(6, waiting, found("('lock', 'you')"))]
    );
    let missing = Op::Replace { template: tpl("('nothing')"), tuple: tuple("(1)"), lease_ms: None };
    assert_eq!(h.reply(1, missing), Reply::NotFound);
    assert_eq!(
        h.space.tuples().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        vec![tuple("('lock', 'you')")]
    );
}

#[test]
fn replace_makes_the_replacement_the_newest() {
    let mut h = Harness::new();
    h.out("('q', 1)");
    h.out("('q', 2)");
    let op = Op::Replace { template: tpl("('q', 1)"), tuple: tuple("('q', 3)"), lease_ms: None };
    assert_eq!(h.reply(1, op), found("('q', 1)"));
    assert_eq!(h.inp("('q', *)"), found("('q', 2)"));
    assert_eq!(h.inp("('q', *)"), found("('q', 3)"));
}

#[test]
fn rd_all_and_in_all_return_up_to_the_limit_oldest_first() {
    let mut h = Harness::new();
    for i in 0..5 {
        h.out(&format!("('w', {i})"));
    }
    h.out("('v', 9)");
    let rd_all = |limit| Op::RdAll { template: tpl("('w', *int)"), limit };
    let in_all = |limit| Op::InAll { template: tpl("('w', *int)"), limit };
    let ts = |range: std::ops::Range<i32>| {
        Reply::Tuples(range.map(|i| tuple(&format!("('w', {i})"))).collect())
    };
    assert_eq!(h.reply(1, rd_all(3)), ts(0..3));
    assert_eq!(h.reply(1, rd_all(100)), ts(0..5));
    assert_eq!(h.reply(1, in_all(2)), ts(0..2));
    assert_eq!(h.reply(1, in_all(ALL_LIMIT_MAX)), ts(2..5));
    assert_eq!(h.reply(1, in_all(1)), Reply::Tuples(vec![]));
    assert_eq!(h.space.len(), 1);
    let digest = h.space.state_digest();
    for limit in [0, ALL_LIMIT_MAX + 1] {
        assert_eq!(
            h.reply(1, in_all(limit)),
            Reply::Rejected(Error::LimitInvalid { limit }.to_string())
        );
    }
    assert_eq!(h.space.state_digest(), digest);
}

#[test]
fn rd_all_stops_before_the_reply_passes_its_byte_bound() {
    let mut h = Harness::new();
    let big = Field::Bytes(vec![7; crate::tuple::FIELD_BYTES_MAX]);
    let t = Tuple::new(vec![big.clone(), big.clone(), big.clone(), big]).unwrap();
    let per_tuple = tuple_encoded_bytes(&t);
    let fit = (REPLY_BYTES_MAX - 5) / per_tuple;
    for _ in 0..fit + 3 {
        assert_eq!(h.reply(1, Op::Out { tuple: t.clone(), lease_ms: None }), Reply::Ok);
    }
    let Reply::Tuples(ts) =
        h.reply(1, Op::RdAll { template: Template::exact(&t), limit: ALL_LIMIT_MAX })
    else {
        panic!("rd_all answers tuples");
    };
    assert_eq!(ts.len(), fit);
    assert!(codec::encode_reply(&Reply::Tuples(ts)).len() <= REPLY_BYTES_MAX);
}

#[test]
fn leases_end_by_the_agreed_time_and_renew_extends_them() {
    let mut h = Harness::new();
    h.now_ms = 1_000;
    h.out_leased("('lease', 'a')", 100);
    h.out_leased("('lease', 'b')", 300);
    h.out("('lease', 'forever')");
    h.now_ms = 1_099;
    assert_eq!(h.rdp("('lease', 'a')"), found("('lease', 'a')"), "one ms before its end");
    h.now_ms = 1_100;
    assert_eq!(h.rdp("('lease', 'a')"), Reply::NotFound, "gone at its end");

    // renew 'b' at 1_200 for 500: ends at 1_700, not 1_300.
    h.now_ms = 1_200;
    let renew = Op::Renew { template: tpl("('lease', 'b')"), lease_ms: 500 };
    assert_eq!(h.reply(1, renew), found("('lease', 'b')"));
    assert_eq!(
        h.space.tuples().find(|(t, _)| *t == &tuple("('lease', 'b')")).unwrap().1,
        Some(1_700)
    );
    // A timestamp from the past does not move the time back.
    h.now_ms = 0;
    assert_eq!(h.rdp("('lease', 'b')"), found("('lease', 'b')"));
    assert_eq!(h.space.now_ms(), 1_200);
    h.now_ms = 1_700;
    assert_eq!(h.rdp("('lease', 'b')"), Reply::NotFound);
    // renew gives a lease to a tuple without one.
    let renew = Op::Renew { template: tpl("('lease', *)"), lease_ms: 1 };
    assert_eq!(h.reply(1, renew), found("('lease', 'forever')"));
    h.now_ms = 1_701;
    assert_eq!(h.rdp("(*, *)"), Reply::NotFound);
    assert!(h.space.is_empty());
    let renew = Op::Renew { template: tpl("('lease', *)"), lease_ms: 10 };
    assert_eq!(h.reply(1, renew), Reply::NotFound);
}

#[test]
fn a_leased_tuple_is_matched_in_its_place_after_renew() {
    let mut h = Harness::new();
    h.out_leased("('t', 1)", 10);
    h.out("('t', 2)");
    assert_eq!(
        h.reply(1, Op::Renew { template: tpl("('t', 1)"), lease_ms: 1_000 }),
        found("('t', 1)")
    );
    assert_eq!(h.inp("('t', *)"), found("('t', 1)"), "renew keeps its place");
}

#[test]
fn bad_leases_are_refused_and_change_nothing() {
    let mut h = Harness::new();
    h.out("('keep')");
    let digest = h.space.state_digest();
    for lease_ms in [0, LEASE_MS_MAX + 1] {
        let reason = Error::LeaseInvalid { lease_ms }.to_string();
        let ops = [
            Op::Out { tuple: tuple("(1)"), lease_ms: Some(lease_ms) },
            Op::Cas { template: tpl("(1)"), tuple: tuple("(1)"), lease_ms: Some(lease_ms) },
            Op::Replace {
                template: tpl("('keep')"),
                tuple: tuple("(1)"),
                lease_ms: Some(lease_ms),
            },
            Op::Renew { template: tpl("('keep')"), lease_ms },
        ];
        for op in ops {
            assert_eq!(h.reply(1, op), Reply::Rejected(reason.clone()));
        }
    }
    assert_eq!(h.space.state_digest(), digest);
}

#[test]
fn cancel_answers_the_blocked_request_and_stops_it_waiting() {
    let mut h = Harness::new();
    let waiting = h.block(7, Op::In { template: tpl("('job', *)") });
    let (seq, answers) = h.run(7, Op::Cancel { sequence: waiting });
    assert_eq!(answers, vec![answer(7, seq, Reply::Ok), answer(7, waiting, Reply::Cancelled)]);
    assert_eq!(h.space.blocked().count(), 0);
    h.out("('job', 1)");
    assert_eq!(h.rdp("('job', 1)"), found("('job', 1)"), "a cancelled in takes nothing");
    assert_eq!(h.reply(7, Op::Cancel { sequence: waiting }), Reply::NotFound, "only once");

    // A client cannot cancel another client's request.
    let other = h.block(8, Op::Rd { template: tpl("('none')") });
    assert_eq!(h.reply(7, Op::Cancel { sequence: other }), Reply::NotFound);
    assert_eq!(h.space.blocked().count(), 1);
}

#[test]
fn blocked_requests_are_bounded_per_client_and_overall() {
    let mut h = Harness::new();
    for _ in 0..BLOCKED_PER_CLIENT_MAX {
        h.block(1, Op::Rd { template: tpl("('x')") });
    }
    let digest = h.space.state_digest();
    let refused = Reply::Rejected(Error::TooManyBlockedForClient { client_id: 1 }.to_string());
    assert_eq!(h.reply(1, Op::Rd { template: tpl("('x')") }), refused);
    assert_eq!(h.space.state_digest(), digest);

    let mut i = 0;
    while h.space.blocked().count() < BLOCKED_MAX {
        h.block(100 + i / BLOCKED_PER_CLIENT_MAX as u64, Op::In { template: tpl("('x')") });
        i += 1;
    }
    let digest = h.space.state_digest();
    assert_eq!(
        h.reply(1_000_000, Op::In { template: tpl("('x')") }),
        Reply::Rejected(Error::TooManyBlocked.to_string())
    );
    assert_eq!(h.space.state_digest(), digest);

    // The same request blocking twice (a replay the engine should have filtered).
    let mut space = TupleSpace::new();
    let ctx = ExecCtx { client_id: 3, sequence: 9, now_ms: 0 };
    assert!(space.apply(ctx, &Op::Rd { template: tpl("(1)") }).is_empty());
    assert_eq!(
        space.apply(ctx, &Op::Rd { template: tpl("(1)") }),
        vec![answer(
            3,
            9,
            Reply::Rejected(Error::AlreadyBlocked { client_id: 3, sequence: 9 }.to_string())
        )]
    );
}

#[test]
fn malformed_requests_are_rejected_and_change_nothing() {
    let mut space = TupleSpace::new();
    let ctx = ExecCtx { client_id: 1, sequence: 1, now_ms: 5 };
    space.execute(ctx, &codec::encode_op(&Op::Out { tuple: tuple("('a', 1)"), lease_ms: None }));
    let digest = space.state_digest();
    for bad in [&[][..], &[0xff], &[2, 0], &[1, 1, 1, 1, 0, 0, 0, 0xff, 0]] {
        let answers = space.execute(ctx, bad);
        assert_eq!(answers.len(), 1);
        assert!(matches!(codec::decode_reply(&answers[0].reply), Ok(Reply::Rejected(_))));
    }
    assert_eq!(space.state_digest(), digest);
}

#[test]
fn execute_encodes_the_same_answers_as_apply() {
    let mut a = TupleSpace::new();
    let mut b = TupleSpace::new();
    let ops = [
        Op::In { template: tpl("('k', *)") },
        Op::Out { tuple: tuple("('k', 1)"), lease_ms: None },
        Op::Rdp { template: tpl("(*)") },
    ];
    for (i, op) in ops.iter().enumerate() {
        let ctx = ExecCtx { client_id: i as u64, sequence: 1, now_ms: 0 };
        let typed = a.apply(ctx, op);
        let encoded = b.execute(ctx, &codec::encode_op(op));
        let decoded: Vec<TypedAnswer> = encoded
            .into_iter()
            .map(|x| answer(x.client_id, x.sequence, codec::decode_reply(&x.reply).unwrap()))
            .collect();
        assert_eq!(typed, decoded);
    }
}

#[test]
fn state_round_trips_with_leases_and_blocked_requests() {
    let mut h = Harness::new();
    h.now_ms = 50;
    h.out("('a', 1)");
    h.out_leased("('b', 0x00ff)", 1_000);
    h.block(4, Op::In { template: tpl("('c', *int)") });
    h.block(5, Op::Rd { template: tpl("(*, *str, *bytes)") });
    let bytes = h.space.encode_state();
    let decoded = TupleSpace::decode_state(&bytes).unwrap();
    assert_eq!(decoded.encode_state(), bytes);
    assert_eq!(decoded.state_digest(), h.space.state_digest());
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    assert_eq!(h.space.state_digest(), digest);
    assert_eq!(decoded.now_ms(), 50);
    assert_eq!(
        decoded.blocked().cloned().collect::<Vec<_>>(),
        h.space.blocked().cloned().collect::<Vec<_>>()
    );
    assert_eq!(decoded.tuples().collect::<Vec<_>>(), h.space.tuples().collect::<Vec<_>>());
    assert_eq!(TupleSpace::decode_state(&TupleSpace::new().encode_state()).unwrap().len(), 0);
}

#[test]
fn equal_logical_states_encode_equally_whatever_built_them() {
    // History 1: more writes, takes, a cancelled wait, an answered wait.
    let mut a = Harness::new();
    a.out("('x', 1)");
    a.out("('y', 2)");
    a.out("('z', 3)");
    assert_eq!(a.inp("('x', *)"), found("('x', 1)"));
    let s = a.block(9, Op::Rd { template: tpl("('q')") });
    a.run(9, Op::Cancel { sequence: s });
    a.block(9, Op::In { template: tpl("('r')") });
    let (_, released) = a.run(1, Op::Out { tuple: tuple("('r')"), lease_ms: None });
    assert_eq!(released.len(), 2, "the out and the blocked in it released");
    a.block(8, Op::Rd { template: tpl("('w')") });
    // History 2: just the survivors, in the same order.
    let mut b = Harness::new();
    b.out("('y', 2)");
    b.out("('z', 3)");
    b.space.apply(
        ExecCtx { client_id: 8, sequence: 10, now_ms: 0 },
        &Op::Rd { template: tpl("('w')") },
    );
    // The blocked request's sequence differs; make it the same one.
    let mut c = Harness::new();
    c.out("('y', 2)");
    c.out("('z', 3)");
    let seq_in_a = a.space.blocked().next().unwrap().sequence;
    c.space.apply(
        ExecCtx { client_id: 8, sequence: seq_in_a, now_ms: 0 },
        &Op::Rd { template: tpl("('w')") },
    );
    assert_eq!(a.space.encode_state(), c.space.encode_state());
    assert_eq!(a.space.state_digest(), c.space.state_digest());
    assert_ne!(b.space.state_digest(), c.space.state_digest(), "sequences are state");

    // Insertion order is state: the same set in another order differs.
    let mut d = Harness::new();
    d.out("('z', 3)");
    d.out("('y', 2)");
    d.space.apply(
        ExecCtx { client_id: 8, sequence: seq_in_a, now_ms: 0 },
        &Op::Rd { template: tpl("('w')") },
    );
    assert_ne!(d.space.state_digest(), c.space.state_digest());
}

#[test]
fn decode_state_refuses_states_that_break_an_invariant() {
    let mut h = Harness::new();
    h.now_ms = 10;
    h.out_leased("('a')", 5);
    h.block(1, Op::Rd { template: tpl("('b')") });
    let good = h.space.encode_state();
    assert!(TupleSpace::decode_state(&good).is_ok());
    // Layout: magic 4, version 1, now 8, count 8, then flag 1 + expiry 8.
    let expiry_at = 4 + 1 + 8 + 8 + 1;
    let mut expired = good.clone();
    expired[expiry_at..expiry_at + 8].copy_from_slice(&10u64.to_le_bytes());
    assert_eq!(
        TupleSpace::decode_state(&expired).unwrap_err(),
        Error::Malformed { what: "lease ends at or before now_ms", offset: 21 }
    );
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(TupleSpace::decode_state(&bad_magic).is_err());
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(TupleSpace::decode_state(&trailing).unwrap_err(), Error::Trailing { bytes: 1 });
    for len in 0..good.len() {
        assert!(TupleSpace::decode_state(&good[..len]).is_err());
    }

    // A blocked request that matches a stored tuple cannot exist.
    const HEADER: usize = 4 + 1 + 8 + 8;
    // Lease flag, arity, string tag, length, "b".
    const TUPLE_B: usize = 1 + 1 + 1 + 4 + 1;
    let mut m = Harness::new();
    m.block(1, Op::Rd { template: tpl("('b')") });
    let mut with_match = TupleSpace::new();
    with_match.store(tuple("('b')"), None);
    for op in m.space.blocked() {
        with_match.insert_blocked(op.clone());
    }
    assert_eq!(
        TupleSpace::decode_state(&with_match.encode_state()).unwrap_err(),
        Error::Malformed { what: "blocked request matches a tuple", offset: HEADER + TUPLE_B + 4 }
    );
}

/// A small random workload over a few clients, tuples and templates, so that
/// matches, blocks, releases, cancels and expiries all happen often.
fn random_op(rng: &mut Rng, sequences: &[u64]) -> Op {
    let field = |rng: &mut Rng| match rng.below(4) {
        0 => Field::Str(["a", "b"][rng.below(2) as usize].to_string()),
        1 => Field::Int(rng.below(3) as i64),
        2 => Field::Bytes(vec![rng.below(2) as u8]),
        _ => Field::Str(String::new()),
    };
    let arity = 1 + rng.below(2) as usize;
    let t = Tuple::new((0..arity).map(|_| field(rng)).collect()).unwrap();
    let template_arity = 1 + rng.below(2) as usize;
    let p = Template::new(
        (0..template_arity)
            .map(|_| match rng.below(5) {
                0 => TemplateField::Any,
                1 => TemplateField::AnyOf(
                    [FieldType::Str, FieldType::Int, FieldType::Bytes][rng.below(3) as usize],
                ),
                _ => TemplateField::Exact(field(rng)),
            })
            .collect(),
    )
    .unwrap();
    let lease = |rng: &mut Rng| if rng.below(2) == 0 { None } else { Some(1 + rng.below(50)) };
    match rng.below(13) {
        0 | 1 => Op::Out { tuple: t, lease_ms: lease(rng) },
        2 => Op::Rdp { template: p },
        3 => Op::Inp { template: p },
        4 => Op::Rd { template: p },
        5 => Op::In { template: p },
        6 => Op::Cas { template: p, tuple: t, lease_ms: lease(rng) },
        7 => Op::Replace { template: p, tuple: t, lease_ms: lease(rng) },
        8 => Op::RdAll { template: p, limit: rng.below(4) as u32 },
        9 => Op::InAll { template: p, limit: 1 + rng.below(3) as u32 },
        10 => Op::Count { template: p },
        11 => Op::Renew { template: p, lease_ms: rng.below(60) },
        _ => Op::Cancel {
            sequence: sequences
                .get(rng.below(sequences.len().max(1) as u64) as usize)
                .copied()
                .unwrap_or(0),
        },
    }
}

/// (ctx, encoded op) for a random history: 4 clients, mostly rising time.
fn random_history(seed: u64, len: usize) -> Vec<(ExecCtx, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    let mut now_ms = 0u64;
    let mut next_sequence = [1u64; 4];
    let mut sent: Vec<Vec<u64>> = vec![Vec::new(); 4];
    (0..len)
        .map(|_| {
            let client = rng.below(4) as usize;
            now_ms =
                if rng.below(10) == 0 { now_ms.saturating_sub(20) } else { now_ms + rng.below(10) };
            let op = random_op(&mut rng, &sent[client]);
            let sequence = next_sequence[client];
            next_sequence[client] += 1;
            sent[client].push(sequence);
            let bytes =
                if rng.below(50) == 0 { vec![rng.below(256) as u8] } else { codec::encode_op(&op) };
            (ExecCtx { client_id: client as u64, sequence, now_ms }, bytes)
        })
        .collect()
}

#[test]
fn two_spaces_fed_the_same_requests_give_the_same_answers_and_digests() {
    for seed in 0..20 {
        let history = random_history(seed, 2_000);
        let mut a = TupleSpace::new();
        let mut b = TupleSpace::new();
        let mut released = 0;
        for (ctx, op) in &history {
            let answers = a.execute(*ctx, op);
            released += answers
                .iter()
                .filter(|x| x.sequence != ctx.sequence || x.client_id != ctx.client_id)
                .count();
            assert_eq!(answers, b.execute(*ctx, op));
            assert_eq!(a.state_digest(), b.state_digest());
        }
        assert!(released > 0, "seed {seed}: the workload releases blocked requests");
    }
}

#[test]
fn replaying_after_a_state_round_trip_gives_the_same_outcome() {
    for seed in 100..120 {
        let history = random_history(seed, 1_500);
        let cut = Rng::new(seed).below(history.len() as u64) as usize;
        let mut straight = TupleSpace::new();
        let mut restored = TupleSpace::new();
        let mut answers_straight = Vec::new();
        let mut answers_restored = Vec::new();
        for (i, (ctx, op)) in history.iter().enumerate() {
            if i == cut {
                let bytes = restored.encode_state();
                restored = TupleSpace::decode_state(&bytes).unwrap();
                assert_eq!(restored.encode_state(), bytes);
            }
            answers_straight.extend(straight.execute(*ctx, op));
            answers_restored.extend(restored.execute(*ctx, op));
        }
        assert_eq!(answers_straight, answers_restored, "seed {seed}, cut at {cut}");
        assert_eq!(straight.state_digest(), restored.state_digest());
    }
}

#[test]
fn every_answer_goes_to_a_request_that_was_executed_and_only_once() {
    let history = random_history(7, 5_000);
    let mut space = TupleSpace::new();
    let mut answered = std::collections::BTreeSet::new();
    for (ctx, op) in &history {
        for a in space.execute(*ctx, op) {
            assert!(answered.insert((a.client_id, a.sequence)), "answered twice: {a:?}");
            assert!(a.sequence <= ctx.sequence || a.client_id != ctx.client_id);
        }
    }
    // Every request was answered or is still blocked.
    let blocked: std::collections::BTreeSet<_> =
        space.blocked().map(|b| (b.client_id, b.sequence)).collect();
    for (ctx, _) in &history {
        let key = (ctx.client_id, ctx.sequence);
        assert!(answered.contains(&key) ^ blocked.contains(&key), "{key:?}");
    }
}

#[test]
fn a_template_that_can_never_match_is_rejected_and_changes_nothing() {
    let mut space = TupleSpace::new();
    let ctx = ExecCtx { client_id: 1, sequence: 1, now_ms: 0 };
    space.apply(ctx, &Op::Out { tuple: tuple("('a')"), lease_ms: None });
    let digest = space.state_digest();
    // rd of 5 exact byte fields of FIELD_BYTES_MAX each: more than a tuple may hold,
    // so it would block forever. Built by hand: Template::new refuses it.
    let field_bytes = crate::tuple::FIELD_BYTES_MAX;
    let mut op = vec![4u8, 5];
    for _ in 0..5 {
        op.push(3);
        op.extend_from_slice(&(field_bytes as u32).to_le_bytes());
        op.extend(std::iter::repeat_n(0u8, field_bytes));
    }
    let answers = space.execute_typed(ExecCtx { sequence: 2, ..ctx }, &op);
    let expected = Error::TemplateNeverMatches { bytes_min: 5 * field_bytes }.to_string();
    assert_eq!(answers, vec![answer(1, 2, Reply::Rejected(expected))]);
    assert_eq!(space.blocked().count(), 0);
    assert_eq!(space.state_digest(), digest);
}

#[test]
fn a_blocked_in_survives_a_state_round_trip_and_is_answered_once() {
    let mut h = Harness::new();
    h.now_ms = 10;
    let waiting = h.block(3, Op::In { template: tpl("('job', *int)") });
    h.out_leased("('job', 'not an int')", 5);
    let mut restored = TupleSpace::decode_state(&h.space.encode_state()).unwrap();
    let ctx = ExecCtx { client_id: 1, sequence: 100, now_ms: 20 };
    let answers = restored.apply(ctx, &Op::Out { tuple: tuple("('job', 1)"), lease_ms: None });
    assert_eq!(answers, vec![answer(1, 100, Reply::Ok), answer(3, waiting, found("('job', 1)"))]);
    assert!(restored.is_empty(), "the leased tuple expired at 15; the in took the other");
    let ctx = ExecCtx { client_id: 1, sequence: 101, now_ms: 20 };
    let answers = restored.apply(ctx, &Op::Out { tuple: tuple("('job', 2)"), lease_ms: None });
    assert_eq!(answers, vec![answer(1, 101, Reply::Ok)], "answered once only");
}

/// The obvious sequential model of the semantics: lists scanned front to back, no
/// indexes. The indexed space must answer exactly as it does.
#[derive(Debug, Default)]
struct Model {
    now_ms: u64,
    tuples: Vec<(Tuple, Option<u64>)>,
    blocked: Vec<BlockedOp>,
}

impl Model {
    fn execute(&mut self, ctx: ExecCtx, bytes: &[u8]) -> Vec<TypedAnswer> {
        self.now_ms = self.now_ms.max(ctx.now_ms.min(NOW_MS_MAX));
        let now_ms = self.now_ms;
        self.tuples.retain(|(_, e)| e.is_none_or(|e| e > now_ms));
        let own = |reply| answer(ctx.client_id, ctx.sequence, reply);
        let reject = |e: Error| vec![own(Reply::Rejected(e.to_string()))];
        let op = match codec::decode_op(bytes) {
            Ok(op) => op,
            Err(e) => return reject(e),
        };
        let bad_lease = |l: Option<u64>| match l {
            Some(lease_ms) if lease_ms == 0 || lease_ms > LEASE_MS_MAX => {
                Some(Error::LeaseInvalid { lease_ms })
            }
            _ => None,
        };
        let first = |m: &Model, p: &Template| m.tuples.iter().position(|(t, _)| p.matches(t));
        let mut answers = Vec::new();
        match &op {
            Op::Out { tuple, lease_ms } => {
                if let Some(e) = bad_lease(*lease_ms) {
                    return reject(e);
                }
                answers.push(own(Reply::Ok));
                self.write(tuple, *lease_ms, &mut answers);
            }
            Op::Rdp { template } | Op::Rd { template } => match first(self, template) {
                Some(i) => answers.push(own(Reply::Tuple(self.tuples[i].0.clone()))),
                None if matches!(op, Op::Rdp { .. }) => answers.push(own(Reply::NotFound)),
                None => return self.block(ctx, WaitKind::Rd, template),
            },
            Op::Inp { template } | Op::In { template } => match first(self, template) {
                Some(i) => answers.push(own(Reply::Tuple(self.tuples.remove(i).0))),
                None if matches!(op, Op::Inp { .. }) => answers.push(own(Reply::NotFound)),
                None => return self.block(ctx, WaitKind::In, template),
            },
            Op::Cas { template, tuple, lease_ms } => {
                if let Some(e) = bad_lease(*lease_ms) {
                    return reject(e);
                }
                match first(self, template) {
                    Some(i) => answers.push(own(Reply::Tuple(self.tuples[i].0.clone()))),
                    None => {
                        answers.push(own(Reply::Ok));
                        self.write(tuple, *lease_ms, &mut answers);
                    }
                }
            }
            Op::Replace { template, tuple, lease_ms } => {
                if let Some(e) = bad_lease(*lease_ms) {
                    return reject(e);
                }
                match first(self, template) {
                    Some(i) => {
                        answers.push(own(Reply::Tuple(self.tuples.remove(i).0)));
                        self.write(tuple, *lease_ms, &mut answers);
                    }
                    None => answers.push(own(Reply::NotFound)),
                }
            }
            Op::RdAll { template, limit } | Op::InAll { template, limit } => {
                if *limit == 0 || *limit > ALL_LIMIT_MAX {
                    return reject(Error::LimitInvalid { limit: *limit });
                }
                let mut found = Vec::new();
                let mut i = 0;
                while i < self.tuples.len() && found.len() < *limit as usize {
                    if !template.matches(&self.tuples[i].0) {
                        i += 1;
                    } else if matches!(op, Op::InAll { .. }) {
                        found.push(self.tuples.remove(i).0);
                    } else {
                        found.push(self.tuples[i].0.clone());
                        i += 1;
                    }
                }
                answers.push(own(Reply::Tuples(found)));
            }
            Op::Count { template } => {
                let n = self.tuples.iter().filter(|(t, _)| template.matches(t)).count();
                answers.push(own(Reply::Count(n as u64)));
            }
            Op::Renew { template, lease_ms } => {
                if let Some(e) = bad_lease(Some(*lease_ms)) {
                    return reject(e);
                }
                match first(self, template) {
                    Some(i) => {
                        self.tuples[i].1 = Some(now_ms + lease_ms);
                        answers.push(own(Reply::Tuple(self.tuples[i].0.clone())));
                    }
                    None => answers.push(own(Reply::NotFound)),
                }
            }
            Op::Cancel { sequence } => {
                let at = self
                    .blocked
                    .iter()
                    .position(|b| (b.client_id, b.sequence) == (ctx.client_id, *sequence));
                match at {
                    Some(i) => {
                        let b = self.blocked.remove(i);
                        answers.push(own(Reply::Ok));
                        answers.push(answer(b.client_id, b.sequence, Reply::Cancelled));
                    }
                    None => answers.push(own(Reply::NotFound)),
                }
            }
        }
        answers
    }

    fn block(&mut self, ctx: ExecCtx, kind: WaitKind, template: &Template) -> Vec<TypedAnswer> {
        let (client_id, sequence) = (ctx.client_id, ctx.sequence);
        let refused =
            if self.blocked.iter().any(|b| (b.client_id, b.sequence) == (client_id, sequence)) {
                Some(Error::AlreadyBlocked { client_id, sequence })
            } else if self.blocked.iter().filter(|b| b.client_id == client_id).count()
                >= BLOCKED_PER_CLIENT_MAX
            {
                Some(Error::TooManyBlockedForClient { client_id })
            } else if self.blocked.len() >= BLOCKED_MAX {
                Some(Error::TooManyBlocked)
            } else {
                None
            };
        if let Some(e) = refused {
            return vec![answer(client_id, sequence, Reply::Rejected(e.to_string()))];
        }
        self.blocked.push(BlockedOp { client_id, sequence, kind, template: template.clone() });
        Vec::new()
    }

    fn write(&mut self, tuple: &Tuple, lease_ms: Option<u64>, answers: &mut Vec<TypedAnswer>) {
        let mut i = 0;
        while i < self.blocked.len() {
            if !self.blocked[i].template.matches(tuple) {
                i += 1;
                continue;
            }
            let b = self.blocked.remove(i);
            answers.push(answer(b.client_id, b.sequence, Reply::Tuple(tuple.clone())));
            if b.kind == WaitKind::In {
                return;
            }
        }
        self.tuples.push((tuple.clone(), lease_ms.map(|l| self.now_ms + l)));
    }
}

#[test]
fn the_indexed_space_answers_exactly_as_the_sequential_model() {
    for seed in 200..230 {
        let history = random_history(seed, 3_000);
        let mut space = TupleSpace::new();
        let mut model = Model::default();
        for (step, (ctx, op)) in history.iter().enumerate() {
            let got = space.execute_typed(*ctx, op);
            let want = model.execute(*ctx, op);
            assert_eq!(got, want, "seed {seed} step {step}: {:?}", codec::decode_op(op));
            let tuples: Vec<_> = space.tuples().map(|(t, e)| (t.clone(), e)).collect();
            assert_eq!(tuples, model.tuples, "seed {seed} step {step}");
            assert_eq!(space.blocked().cloned().collect::<Vec<_>>(), model.blocked);
            assert_eq!(space.now_ms(), model.now_ms);
        }
    }
}

#[test]
fn agreed_times_near_the_end_of_u64_are_capped_not_overflowed() {
    let mut space = TupleSpace::new();
    let ctx = ExecCtx { client_id: 1, sequence: 1, now_ms: u64::MAX };
    let answers = space.apply(ctx, &Op::Out { tuple: tuple("(1)"), lease_ms: Some(LEASE_MS_MAX) });
    assert_eq!(answers, vec![answer(1, 1, Reply::Ok)]);
    assert_eq!(space.now_ms(), NOW_MS_MAX);
    assert_eq!(space.tuples().next().unwrap().1, Some(u64::MAX - 1));
    let ctx = ExecCtx { sequence: 2, ..ctx };
    let renew = Op::Renew { template: tpl("(1)"), lease_ms: LEASE_MS_MAX };
    assert_eq!(space.apply(ctx, &renew), vec![answer(1, 2, found("(1)"))]);
    let restored = TupleSpace::decode_state(&space.encode_state()).unwrap();
    assert_eq!(restored.state_digest(), space.state_digest());
}

#[test]
fn a_lock_is_a_cas_of_a_timed_token_kept_by_renew_and_lost_when_renewals_stop() {
    let mut h = Harness::new();
    let (alice, bob) = (1, 2);
    let acquire = |who: &str| Op::Cas {
        template: tpl("('lock', *)"),
        tuple: tuple(&format!("('lock', '{who}')")),
        lease_ms: Some(100),
    };
    h.now_ms = 1_000;
    assert_eq!(h.reply(alice, acquire("alice")), Reply::Ok, "alice leads");
    assert_eq!(h.reply(bob, acquire("bob")), found("('lock', 'alice')"), "bob sees who leads");
    h.now_ms = 1_050;
    let renew = Op::Renew { template: tpl("('lock', 'alice')"), lease_ms: 100 };
    assert_eq!(h.reply(alice, renew), found("('lock', 'alice')"));
    h.now_ms = 1_120;
    assert_eq!(h.reply(bob, acquire("bob")), found("('lock', 'alice')"), "renewed to 1_150");
    h.now_ms = 1_150;
    assert_eq!(h.reply(bob, acquire("bob")), Reply::Ok, "alice stopped renewing; bob leads");
    // Bob resigns by taking his own token; the lock is free again.
    assert_eq!(
        h.reply(bob, Op::Inp { template: tpl("('lock', 'bob')") }),
        found("('lock', 'bob')")
    );
    assert_eq!(h.reply(alice, acquire("alice")), Reply::Ok);
}

#[test]
fn a_work_queue_hands_each_job_to_exactly_one_waiting_worker_in_order() {
    let mut h = Harness::new();
    let worker_a = h.block(10, Op::In { template: tpl("('job', *int)") });
    let worker_b = h.block(11, Op::In { template: tpl("('job', *int)") });
    let mut handed = Vec::new();
    for job in 1..=3 {
        let (_, answers) =
            h.run(1, Op::Out { tuple: tuple(&format!("('job', {job})")), lease_ms: None });
        handed.extend(answers.into_iter().skip(1).map(|a| (a.client_id, a.sequence, a.reply)));
    }
    assert_eq!(
        handed,
        vec![(10, worker_a, found("('job', 1)")), (11, worker_b, found("('job', 2)"))]
    );
    assert_eq!(h.reply(12, Op::In { template: tpl("('job', *int)") }), found("('job', 3)"));
    assert!(h.space.is_empty());
}

#[test]
fn a_barrier_releases_every_waiter_when_the_last_one_arrives() {
    let mut h = Harness::new();
    let parties = 3;
    let mut waiting = Vec::new();
    for party in 0..parties {
        h.out(&format!("('arrived', 'b1', {party})"));
        let count = h.reply(20 + party, Op::Count { template: tpl("('arrived', 'b1', *int)") });
        if count == Reply::Count(parties) {
            // The last to arrive opens the barrier: every blocked rd reads it.
            let (seq, answers) =
                h.run(20 + party, Op::Out { tuple: tuple("('open', 'b1')"), lease_ms: None });
            let mut expected = vec![answer(20 + party, seq, Reply::Ok)];
            expected.extend(waiting.iter().map(|&(c, s)| answer(c, s, found("('open', 'b1')"))));
            assert_eq!(answers, expected);
        } else {
            let seq = h.block(20 + party, Op::Rd { template: tpl("('open', 'b1')") });
            waiting.push((20 + party, seq));
        }
    }
    assert_eq!(waiting.len(), parties as usize - 1);
    assert_eq!(h.space.blocked().count(), 0);
}
