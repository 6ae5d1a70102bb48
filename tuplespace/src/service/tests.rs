use dura_core::service::Released;

use super::*;
use crate::codec::{Op, Reply, decode_reply, encode_op};
use crate::parse::{parse_template, parse_tuple};
use crate::test_rng::Rng;

fn out(text: &str, lease_ms: Option<u64>) -> Vec<u8> {
    encode_op(&Op::Out { tuple: parse_tuple(text).unwrap(), lease_ms })
}

fn take(text: &str) -> Vec<u8> {
    encode_op(&Op::In { template: parse_template(text).unwrap() })
}

fn request(client_id: u64, sequence: u64, operation: &[u8], now_ms: u64) -> OrderedRequest<'_> {
    OrderedRequest { client_id, sequence, operation, now_ms }
}

#[test]
fn a_blocked_in_is_deferred_and_released_by_the_out_that_matches_it() {
    let mut space = TupleSpace::new();
    let (wait, job) = (take("('job', *)"), out("('job', 7)", None));
    let mut replies = Replies::new();
    space.execute_batch(&[request(1, 1, &wait, 10)], &mut replies);
    let (answers, released) = replies.into_parts();
    assert_eq!(answers, vec![None], "deferred");
    assert!(released.is_empty());
    let mut replies = Replies::new();
    space.execute_batch(&[request(2, 1, &job, 20), request(1, 2, &wait, 20)], &mut replies);
    let (answers, released) = replies.into_parts();
    assert_eq!(decode_reply(answers[0].as_ref().unwrap()), Ok(Reply::Ok));
    assert_eq!(answers[1], None, "the tuple went to the first waiter; the second waits");
    let tuple = parse_tuple("('job', 7)").unwrap();
    assert_eq!(
        released,
        vec![Released {
            client_id: 1,
            sequence: 1,
            reply: crate::encode_reply(&Reply::Tuple(tuple))
        }]
    );
    assert!(space.is_empty());
    assert_eq!(space.blocked().count(), 1);
}

#[test]
fn leases_expire_by_the_agreed_time_of_later_batches() {
    let mut space = TupleSpace::new();
    let leased = out("('token', 'a')", Some(1_000));
    let mut replies = Replies::new();
    space.execute_batch(&[request(1, 1, &leased, 5_000)], &mut replies);
    assert_eq!(space.len(), 1);
    let count = encode_op(&Op::Count { template: parse_template("('token', *)").unwrap() });
    let mut replies = Replies::new();
    space.execute_batch(&[request(2, 1, &count, 5_999)], &mut replies);
    assert_eq!(space.len(), 1, "alive before its end");
    let mut replies = Replies::new();
    space.execute_batch(&[request(2, 2, &count, 6_000)], &mut replies);
    assert_eq!(space.len(), 0, "gone at its end");
    let (answers, _) = replies.into_parts();
    assert_eq!(decode_reply(answers[0].as_ref().unwrap()), Ok(Reply::Count(0)));
}

/// A space built from random writes, takes and blocked requests.
fn random_space(seed: u64, ops: u64) -> TupleSpace {
    let mut rng = Rng::new(seed);
    let mut space = TupleSpace::new();
    for i in 0..ops {
        let client = 1 + rng.below(40);
        let op = match rng.below(5) {
            0 | 1 => out(&format!("('k{}', {}, 'v{i}')", rng.below(30), rng.below(5)), None),
            2 => out(&format!("('lease', {})", rng.below(9)), Some(1 + rng.below(50_000))),
            3 => take(&format!("('k{}', *, *)", rng.below(60))),
            _ => encode_op(&Op::Rd { template: parse_template("('never', *, *, *)").unwrap() }),
        };
        let mut replies = Replies::new();
        space.execute_batch(&[request(client, i + 1, &op, i * 10)], &mut replies);
    }
    space
}

fn chunks_of(view: &TupleSpaceView, chunk_bytes_max: usize) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    view.write_chunks(chunk_bytes_max, &mut |chunk| {
        chunks.push(chunk.to_vec());
        Ok(())
    })
    .expect("in memory");
    chunks
}

fn install(chunks: &[Vec<u8>]) -> Result<TupleSpace, StateError> {
    let mut installer = TupleSpace::new().installer();
    for chunk in chunks {
        installer.chunk(chunk)?;
    }
    installer.finish()
}

#[test]
fn a_view_streams_the_canonical_state_in_chunks_of_whole_items_that_install_back() {
    let space = random_space(7, 3_000);
    assert!(space.len() > 100 && space.blocked().count() > 10, "a state worth checking");
    let view = space.view();
    let whole = space.encode_state();
    for chunk_bytes_max in [1, 64, 1_000, 64 << 10, CHUNK_BYTES_LIMIT] {
        let chunks = chunks_of(&view, chunk_bytes_max);
        assert_eq!(chunks.concat(), whole, "the chunks are the canonical encoding");
        for chunk in &chunks {
            // Whole items only: every chunk decodes on its own terms after its
            // predecessors, which `install` checks; and none is over the bound unless
            // it is a single item.
            assert!(chunk.len() <= chunk_bytes_max || chunk_bytes_max < 200, "{}", chunk.len());
        }
        let installed = install(&chunks).expect("valid chunks");
        assert_eq!(installed.state_digest(), space.state_digest());
        assert_eq!(installed.encode_state(), whole);
    }
}

#[test]
fn a_view_does_not_change_when_the_space_goes_on() {
    let mut space = random_space(11, 500);
    let view = space.view();
    let before = space.encode_state();
    let job = out("('after', 1)", None);
    let mut replies = Replies::new();
    space.execute_batch(&[request(99, 1, &job, 1_000_000)], &mut replies);
    assert_ne!(space.encode_state(), before);
    assert_eq!(chunks_of(&view, 4096).concat(), before, "the view kept its moment");
}

#[test]
fn an_installer_refuses_a_cut_item_a_missing_chunk_and_trailing_bytes() {
    let space = random_space(3, 400);
    let chunks = chunks_of(&space.view(), 2048);
    assert!(chunks.len() > 3);
    // A chunk cut inside an item.
    let mut cut = chunks.clone();
    let last = cut[1].len() - 3;
    cut[1].truncate(last);
    assert!(install(&cut).is_err());
    // The last chunk missing.
    assert!(install(&chunks[..chunks.len() - 1]).is_err());
    // Bytes after the whole state.
    let mut trailing = chunks.clone();
    trailing.push(vec![0]);
    assert!(install(&trailing).is_err());
    // A chunk replaced by another state's chunk.
    let other = chunks_of(&random_space(4, 400).view(), 2048);
    let mut mixed = chunks.clone();
    mixed[0] = other[0].clone();
    mixed[2] = other[1].clone();
    let mixed = install(&mixed);
    assert!(mixed.is_err() || mixed.unwrap().state_digest() != space.state_digest());
    assert!(install(&chunks).is_ok());
}

#[test]
fn equal_states_from_different_histories_stream_identical_chunks() {
    let mut a = TupleSpace::new();
    let mut b = TupleSpace::new();
    let (x, y, z) = (out("('x', 1)", None), out("('y', 2)", None), out("('z', 3)", None));
    let take_y = take("('y', *)");
    let mut replies = Replies::new();
    a.execute_batch(&[request(1, 1, &x, 1), request(1, 2, &y, 1)], &mut replies);
    a.execute_batch(&[request(1, 3, &take_y, 2), request(1, 4, &z, 3)], &mut replies);
    b.execute_batch(&[request(5, 1, &x, 3), request(5, 2, &z, 3)], &mut replies);
    assert_eq!(chunks_of(&a.view(), 16), chunks_of(&b.view(), 16));
}
