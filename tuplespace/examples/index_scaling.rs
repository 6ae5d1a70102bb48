//! Measures `out` and `rdp` against spaces holding 10k, 100k and 1M tuples, through
//! the full request path (`TupleSpace::execute`: decode, match, encode the reply), and
//! prints ns/op. With indexed matching the figures grow like log n (plus cache misses
//! as the indexes outgrow the caches), not like n: a scan of 1M tuples would take
//! milliseconds per op.
//!
//! Run: `cargo run --release -p dura-tuplespace --example index_scaling`
//!
//! It prints what it measured and asserts nothing about timings.

use std::hint::black_box;
use std::time::Instant;

use dura_tuplespace::{
    ExecCtx, Field, Op, Reply, Template, TemplateField, Tuple, TupleSpace, decode_reply, encode_op,
};

const SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];
/// Operations timed per size and kind.
const OPS_TIMED: u64 = 20_000;

/// A tuple like the coordination workloads': ('key-00000042', 42, 8 bytes).
fn tuple(i: u64) -> Tuple {
    Tuple::new(vec![
        Field::Str(format!("key-{i:08}")),
        Field::Int(i as i64),
        Field::Bytes(i.to_le_bytes().to_vec()),
    ])
    .expect("a valid tuple")
}

/// Matches tuple(i) by its first field; the rest are wildcards.
fn template(i: u64) -> Template {
    Template::new(vec![
        TemplateField::Exact(Field::Str(format!("key-{i:08}"))),
        TemplateField::Any,
        TemplateField::Any,
    ])
    .expect("a valid template")
}

/// A fixed pseudo-random sequence (SplitMix64), so every run reads the same keys.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Executes pre-encoded `ops` and returns the mean ns per op.
fn time_ops(space: &mut TupleSpace, sequence: &mut u64, ops: &[Vec<u8>]) -> f64 {
    let start = Instant::now();
    for op in ops {
        *sequence += 1;
        let ctx = ExecCtx { client_id: 1, sequence: *sequence, now_ms: 0 };
        black_box(space.execute(ctx, op));
    }
    start.elapsed().as_nanos() as f64 / ops.len() as f64
}

fn main() {
    println!("{:>10} {:>12} {:>12} {:>14}", "tuples", "out ns/op", "rdp ns/op", "fill s");
    for size in SIZES {
        let mut space = TupleSpace::new();
        let mut sequence = 0u64;
        let fill_start = Instant::now();
        for i in 0..size {
            sequence += 1;
            let ctx = ExecCtx { client_id: 1, sequence, now_ms: 0 };
            space.apply(ctx, &Op::Out { tuple: tuple(i), lease_ms: None });
        }
        let fill_s = fill_start.elapsed().as_secs_f64();
        assert_eq!(space.len() as u64, size);

        // rdp of random stored keys: each finds its tuple.
        let rdps: Vec<Vec<u8>> = (0..OPS_TIMED)
            .map(|k| encode_op(&Op::Rdp { template: template(mix(k) % size) }))
            .collect();
        let rdp_ns = time_ops(&mut space, &mut sequence, &rdps);
        let check =
            space.execute(ExecCtx { client_id: 1, sequence: u64::MAX, now_ms: 0 }, &rdps[0]);
        assert!(matches!(decode_reply(&check[0].reply), Ok(Reply::Tuple(_))), "rdp finds it");

        // out of new tuples at random places in the index order (keys above every
        // stored one would be the easy case), into the full space.
        let outs: Vec<Vec<u8>> = (0..OPS_TIMED)
            .map(|k| {
                let t = Tuple::new(vec![
                    Field::Str(format!("new-{:016x}", mix(size + k))),
                    Field::Int(k as i64),
                    Field::Bytes(k.to_le_bytes().to_vec()),
                ])
                .expect("a valid tuple");
                encode_op(&Op::Out { tuple: t, lease_ms: None })
            })
            .collect();
        let out_ns = time_ops(&mut space, &mut sequence, &outs);
        assert_eq!(space.len() as u64, size + OPS_TIMED);

        println!("{size:>10} {out_ns:>12.0} {rdp_ns:>12.0} {fill_s:>14.2}");
    }
}
