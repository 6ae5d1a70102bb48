//! Seed inputs of each target: real values encoded by the crates' own encoders (and,
//! for the data path, by its own framing), so that mutations start from what the
//! decoders see in a running cluster. `dura-fuzz seeds DIR` writes them out as AFL++'s
//! input corpora.

use dura_core::{Batch, ClientRequest, OrderedRequest, Reply};
use dura_engine::checkpoint::write_checkpoint;
use dura_engine::durability::{DecidedBatch, encode_batch};
use dura_engine::protocol::message::{CollectData, Message};
use dura_engine::protocol::seal_frame;
use dura_engine::runtime::datapath::fuzzing as datapath;
use dura_engine::runtime::net::Peer;
use dura_engine::runtime::transfer::encode_piece;
use dura_engine::service::{Executor, StateView};
use dura_kvstore::{KvOp, KvReply, KvStore, ScanPage};
use dura_snapshot::CheckpointStore;
use dura_snapshot::format::file_name;
use dura_snapshot::sim::SimDir;
use dura_transfer::{
    Asked, CheckpointClaim, Piece, RoundId, Status, Unavailable, Want,
    message::Message as TransferMessage,
};
use dura_tuplespace::{ExecCtx, Op, TupleSpace, parse_template, parse_tuple};
use dura_wal::format::{BLOCK_BYTES, GROUP_FLAG_SEAL, GroupHeader, encode_record, record_bytes};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::targets::{CLIENT_ID, NONCE, TARGETS, datapath_keys, ring};

/// Writes every target's seeds to `dir/NAME/seed-NNN` (AFL++'s input corpora); returns
/// each folder with its count, or what failed.
pub fn write_all(dir: &Path) -> Result<Vec<(PathBuf, usize)>, String> {
    let mut written = Vec::new();
    for target in TARGETS {
        let folder = dir.join(target.name);
        std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        let seeds = (target.seeds)();
        for (i, seed) in seeds.iter().enumerate() {
            let path = folder.join(format!("seed-{i:03}"));
            std::fs::write(&path, seed).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        written.push((folder, seeds.len()));
    }
    Ok(written)
}

fn request(client_id: u64, sequence: u64, operation: &[u8]) -> ClientRequest {
    ClientRequest::signed(&ring().client_keys(client_id), sequence, operation.to_vec())
}

fn batch(first_sequence: u64, count: u64) -> Batch {
    Batch {
        timestamp_ms: 1_800_000_000_000 + first_sequence,
        requests: (0..count)
            .map(|i| request(10 + i % 2, first_sequence + i, format!("op {i}").as_bytes()))
            .collect(),
    }
}

fn kv_ops() -> Vec<Vec<u8>> {
    [
        KvOp::Put { key: b"k", value: b"value" },
        KvOp::Get { key: b"k" },
        KvOp::Delete { key: b"gone" },
        KvOp::Cas { key: b"k", expected: Some(b"value"), new: b"new" },
        KvOp::Cas { key: b"k", expected: None, new: b"" },
        KvOp::Scan { start: b"a", end: Some(b"z"), limit: 10, reply_bytes_max: 4096 },
        KvOp::Scan { start: b"", end: None, limit: 1, reply_bytes_max: 0 },
    ]
    .iter()
    .map(|op| op.encode().expect("in bounds"))
    .collect()
}

/// Client requests.
pub fn core_request() -> Vec<Vec<u8>> {
    vec![
        request(1, 1, b"").to_bytes(),
        request(7, 99, b"put k v").to_bytes(),
        ClientRequest { client_id: 3, sequence: 4, operation: vec![1; 40], authenticator: vec![] }
            .to_bytes(),
    ]
}

/// Batches.
pub fn core_batch() -> Vec<Vec<u8>> {
    vec![Batch::default().to_bytes(), batch(1, 1).to_bytes(), batch(5, 3).to_bytes()]
}

fn replies() -> Vec<Reply> {
    let keys = ring().client_keys(CLIENT_ID);
    (0..4u32)
        .map(|replica| {
            Reply::signed(
                &keys.replicas[replica as usize],
                replica,
                CLIENT_ID,
                1,
                2,
                b"ok".to_vec(),
            )
        })
        .collect()
}

/// Replies.
pub fn core_reply() -> Vec<Vec<u8>> {
    replies().iter().map(Reply::to_bytes).collect()
}

/// Runs of replies for the client (flag byte, then `u16`-prefixed replies).
pub fn client_replies() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for flags in [0u8, 1] {
        let mut seed = vec![flags];
        for reply in replies() {
            let bytes = reply.to_bytes();
            seed.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            seed.extend_from_slice(&bytes);
        }
        seeds.push(seed);
    }
    seeds
}

fn messages() -> Vec<Message> {
    let value = Arc::new(batch(1, 2));
    vec![
        Message::Propose { regency: 0, agreement_id: 1, batch: Arc::clone(&value) },
        Message::Write { regency: 1, agreement_id: 2, hash: [3; 32] },
        Message::Accept { regency: 1, agreement_id: 2, hash: [4; 32] },
        Message::Forward { last_decided: 5, requests: vec![request(1, 2, b"fw")] },
        Message::Stop { regency: 3 },
        Message::StopData {
            regency: 3,
            collect: Arc::new(CollectData {
                last_decided: 4,
                decided_hash: Some([1; 32]),
                vote_floor: 5,
                accepted: Some((2, [2; 32])),
                writes: vec![([5; 32], 2)],
                values: vec![Arc::clone(&value)],
            }),
        },
        Message::Sync { regency: 3, agreement_id: 5, members: vec![(1, [6; 32])], batch: value },
        Message::Fetch { from: 1, to: 9 },
        Message::Decided { agreement_id: 3, batch: Arc::new(batch(3, 1)), previous: Some([6; 32]) },
        Message::StatusQuery { nonce: 8, last_decided: 4 },
        Message::Status {
            nonce: 8,
            last_decided: 4,
            highest_voted: 5,
            regency: 1,
            recovering: true,
            incarnation: 9,
            vouch: Some(dura_engine::protocol::message::Vouch { floor: 3, regency_min: 2 }),
            asked_hash: Some([7; 32]),
            asked: 3,
            disk_lost: false,
        },
        Message::Gone { first_held: 7 },
    ]
}

/// Protocol messages.
pub fn protocol_message() -> Vec<Vec<u8>> {
    messages().iter().map(Message::to_bytes).collect()
}

/// Link frames to replica 0, whole and without their MAC (the target appends one).
pub fn protocol_frame() -> Vec<Vec<u8>> {
    let ring = ring();
    let mut seeds = Vec::new();
    for (i, message) in messages().iter().enumerate() {
        let from = 1 + (i as u32 % 3);
        let key = *ring.replica_keys(from).link(0).expect("a link");
        let frame = seal_frame(&key, from, message);
        seeds.push(frame[..frame.len() - 32].to_vec());
        if i % 3 == 0 {
            seeds.push(frame);
        }
    }
    seeds
}

/// Connections: a hello, then link frames.
pub fn net_frames() -> Vec<Vec<u8>> {
    let ring = ring();
    let key = *ring.replica_keys(2).link(0).expect("a link");
    let mut seeds = Vec::new();
    for peer in [Peer::Replica(2), Peer::Client(CLIENT_ID)] {
        let mut seed = Vec::new();
        let hello = peer.encode();
        seed.extend_from_slice(&(hello.len() as u32).to_le_bytes());
        seed.extend_from_slice(&hello);
        for message in messages().iter().take(4) {
            let frame = seal_frame(&key, 2, message);
            seed.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            seed.extend_from_slice(&frame);
        }
        seeds.push(seed);
    }
    seeds
}

/// HTTP request heads, as a scraper and a person send them.
pub fn metrics_request() -> Vec<Vec<u8>> {
    [
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:7300\r\nAccept: */*\r\n\r\n",
        "GET /health?verbose=1 HTTP/1.0\n\n",
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ]
    .iter()
    .map(|head| head.as_bytes().to_vec())
    .collect()
}

fn transfer_messages() -> Vec<TransferMessage> {
    let round = RoundId { session: 7, round: 3 };
    let status = Status {
        last_agreement: 90,
        log_first: 41,
        checkpoints: vec![
            CheckpointClaim { agreement_id: 40, content_hash: [4; 32] },
            CheckpointClaim { agreement_id: 80, content_hash: [8; 32] },
        ],
    };
    let pieces = vec![Piece::new(80, 90), Piece::new(60, 80)];
    vec![
        TransferMessage::Query { round },
        TransferMessage::Status { round, status },
        TransferMessage::HashRequest { round, checkpoint: 60, pieces: pieces.clone() },
        TransferMessage::Hashes {
            round,
            checkpoint: 60,
            checkpoint_hash: Some([6; 32]),
            pieces: pieces.iter().map(|p| (*p, [p.after as u8; 32])).collect(),
        },
        TransferMessage::Fetch { round, ticket: 1, want: Want::Checkpoint { agreement_id: 80 } },
        TransferMessage::Fetch { round, ticket: 2, want: Want::Log(Piece::new(80, 90)) },
        TransferMessage::Unavailable {
            round,
            asked: Asked::Fetch { ticket: 3, want: Want::Log(Piece::new(1, 2)) },
            reason: Unavailable::Busy,
        },
        TransferMessage::Unavailable {
            round,
            asked: Asked::Hashes { checkpoint: 60 },
            reason: Unavailable::Truncated,
        },
    ]
}

/// Data-path request bodies, whole and without their MAC.
pub fn datapath_request() -> Vec<Vec<u8>> {
    let keys = datapath_keys();
    let mut seeds = Vec::new();
    for (from, want) in [
        (1, Want::Checkpoint { agreement_id: 80 }),
        (2, Want::Log(Piece::new(80, 90))),
        (3, Want::Log(Piece::new(5, 5))),
    ] {
        let key = keys[from as usize].expect("a peer");
        let body = datapath::sample_request(&key, from, want, 4096);
        seeds.push(body[..body.len() - 32].to_vec());
        seeds.push(body);
    }
    for (i, message) in transfer_messages().iter().enumerate().take(4) {
        let from = 1 + i as u32 % 3;
        let key = keys[from as usize].expect("a peer");
        let body = datapath::sample_control_request(&key, from, message);
        seeds.push(body[..body.len() - 32].to_vec());
    }
    seeds
}

/// Answers to a stream request.
pub fn datapath_answer() -> Vec<Vec<u8>> {
    let key = datapath_keys()[1].expect("a peer");
    [(0, 1 << 20), (1, 0), (1, 1), (2, 0), (3, 0)]
        .iter()
        .map(|&(tag, value)| datapath::sample_answer(&key, &NONCE, tag, value).to_vec())
        .collect()
}

/// Control answers, whole and without their MAC.
pub fn datapath_control_answer() -> Vec<Vec<u8>> {
    let key = datapath_keys()[1].expect("a peer");
    let messages = transfer_messages();
    let mut seeds = Vec::new();
    for group in [&messages[1..2], &messages[3..4], &messages[4..8], &[]] {
        let body = datapath::sample_control_answer(&key, &NONCE, group);
        seeds.push(body[..body.len() - 32].to_vec());
        seeds.push(body);
    }
    seeds
}

/// State-transfer control messages.
pub fn transfer_message() -> Vec<Vec<u8>> {
    transfer_messages().iter().map(TransferMessage::to_bytes).collect()
}

/// Log pieces, after their range (`u64` after, `u8` length).
pub fn transfer_piece() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (after, count) in [(0u64, 0u8), (10, 1), (40, 3)] {
        let batches: Vec<_> = (1..=u64::from(count))
            .map(|i| DecidedBatch::new(after + i, Arc::new(batch(i, i))))
            .collect();
        let mut seed = after.to_le_bytes().to_vec();
        seed.push(count);
        seed.extend_from_slice(&encode_piece(&batches));
        seeds.push(seed);
    }
    seeds
}

/// A log record's payload: a decided batch as the durability coordinator logs it.
fn batch_record(agreement_id: u64, part: (u32, u32)) -> Vec<u8> {
    let mut payload = Vec::new();
    encode_batch(agreement_id, part, &batch(agreement_id, 2), &mut payload);
    payload
}

fn record(first: u64, last: u64, prev: u64, payload: &[u8]) -> (Vec<u8>, u64) {
    let mut out = vec![0u8; record_bytes(payload.len())];
    let checksum = encode_record(&mut out, first, last, prev, payload);
    (out, checksum)
}

/// Log records.
pub fn wal_record() -> Vec<Vec<u8>> {
    vec![
        record(1, 1, 0, &batch_record(1, (0, 1))).0,
        record(5, 7, 99, b"").0,
        record(2, 2, 1, &batch_record(2, (1, 3))).0,
    ]
}

/// Group headers.
pub fn wal_group_header() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for header in [
        GroupHeader {
            flags: 0,
            record_count: 2,
            segment_seq: 1,
            group_offset: 0,
            records_bytes: 300,
            first_agreement_id: 1,
            last_agreement_id: 2,
        },
        GroupHeader {
            flags: GROUP_FLAG_SEAL,
            record_count: 0,
            segment_seq: 3,
            group_offset: 8192,
            records_bytes: 0,
            first_agreement_id: 1,
            last_agreement_id: 9,
        },
    ] {
        let mut out = vec![0u8; 64];
        header.encode(&mut out);
        seeds.push(out);
    }
    seeds
}

/// A segment of `groups` (each a list of agreement ids, one record each), sealed or
/// not, as the log writer lays it out.
fn segment(seq: u64, groups: &[&[u64]], sealed: bool, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let mut prev = 0;
    let mut pos = 0;
    for ids in groups {
        let mut records = Vec::new();
        for &id in *ids {
            let (bytes, checksum) = record(id, id, prev, &batch_record(id, (0, 1)));
            prev = checksum;
            records.extend_from_slice(&bytes);
        }
        let header = GroupHeader {
            flags: 0,
            record_count: ids.len() as u32,
            segment_seq: seq,
            group_offset: pos as u64,
            records_bytes: records.len() as u64,
            first_agreement_id: ids[0],
            last_agreement_id: ids[ids.len() - 1],
        };
        header.encode(&mut bytes[pos..]);
        bytes[pos + 64..pos + 64 + records.len()].copy_from_slice(&records);
        pos = (pos + 64 + records.len()).next_multiple_of(BLOCK_BYTES);
    }
    if sealed {
        let last = groups.last().and_then(|ids| ids.last()).copied().unwrap_or(0);
        let seal = GroupHeader {
            flags: GROUP_FLAG_SEAL,
            record_count: 0,
            segment_seq: seq,
            group_offset: pos as u64,
            records_bytes: 0,
            first_agreement_id: groups.first().map_or(0, |ids| ids[0]),
            last_agreement_id: last,
        };
        seal.encode(&mut bytes[pos..]);
    }
    bytes
}

/// Log segments.
pub fn wal_segment() -> Vec<Vec<u8>> {
    vec![
        segment(1, &[&[1, 2], &[3]], false, 4 * BLOCK_BYTES),
        segment(2, &[&[4], &[5, 6, 7]], true, 4 * BLOCK_BYTES),
        segment(1, &[], false, 2 * BLOCK_BYTES),
    ]
}

/// Sync mode's file logs: whole batches, and a batch in parts as sync mode writes it.
pub fn file_log() -> Vec<Vec<u8>> {
    use dura_engine::runtime::filelog::fuzzing::encode;
    vec![
        encode(&[batch_record(1, (0, 1)), batch_record(2, (0, 1))]),
        encode(&[batch_record(1, (0, 2)), batch_record(1, (1, 2)), batch_record(2, (0, 3))]),
        encode(&[]),
    ]
}

/// An executor of the KV store after a few operations from two clients.
fn kv_executor() -> Executor<KvStore> {
    let mut executor = Executor::new(KvStore::new());
    let ops = kv_ops();
    let requests: Vec<OrderedRequest<'_>> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| OrderedRequest {
            client_id: 20 + i as u64 % 2,
            sequence: 1 + i as u64,
            operation: op,
            now_ms: 1_800_000_000_000,
        })
        .collect();
    executor.execute(&requests);
    executor
}

/// Checkpoint files of the KV store as a replica writes them.
pub fn checkpoint_file() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (agreement_id, executor) in [(7, kv_executor()), (1, Executor::new(KvStore::new()))] {
        let dir = SimDir::new(3);
        let store = CheckpointStore::open(dir.clone(), Default::default()).expect("a store");
        write_checkpoint(
            &store,
            <KvStore as dura_core::Service>::NAME,
            agreement_id,
            9,
            &executor.view(),
        )
        .expect("written");
        seeds.push(dir.file_bytes(&file_name(agreement_id)));
    }
    seeds
}

/// Engine chunks (the reply cache).
pub fn reply_cache_chunk() -> Vec<Vec<u8>> {
    let executor = kv_executor();
    let mut seeds = Vec::new();
    dura_engine::checkpoint::write_reply_cache(&executor.view().reply_cache, 64, &mut |chunk| {
        seeds.push(chunk.to_vec());
        Ok(())
    })
    .expect("written");
    seeds
}

/// KV store chunks.
pub fn kv_state_chunk() -> Vec<Vec<u8>> {
    let executor = kv_executor();
    let mut seeds = Vec::new();
    for bound in [1, 1 << 20] {
        dura_core::Service::view(executor.service())
            .write_chunks(bound, &mut |chunk| {
                seeds.push(chunk.to_vec());
                Ok(())
            })
            .expect("written");
    }
    seeds
}

/// KV store operations.
pub fn kv_op() -> Vec<Vec<u8>> {
    kv_ops()
}

/// KV store replies.
pub fn kv_reply() -> Vec<Vec<u8>> {
    [
        KvReply::Done,
        KvReply::Value(None),
        KvReply::Value(Some(b"v".to_vec())),
        KvReply::Flag(true),
        KvReply::Invalid("bad".into()),
        KvReply::Range(ScanPage {
            entries: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])],
            more: Some(b"c".to_vec()),
        }),
    ]
    .iter()
    .map(KvReply::encode)
    .collect()
}

fn tuplespace_ops() -> Vec<Op> {
    let tuple = parse_tuple("('job', 7, 0x0102)").expect("parses");
    let template = parse_template("('job', *int, *)").expect("parses");
    vec![
        Op::Out { tuple: tuple.clone(), lease_ms: None },
        Op::Out { tuple: tuple.clone(), lease_ms: Some(500) },
        Op::Rdp { template: template.clone() },
        Op::In { template: template.clone() },
        Op::Cas { template: template.clone(), tuple: tuple.clone(), lease_ms: Some(9) },
        Op::Replace { template: template.clone(), tuple, lease_ms: None },
        Op::RdAll { template: template.clone(), limit: 10 },
        Op::Count { template: template.clone() },
        Op::Renew { template, lease_ms: 1000 },
        Op::Cancel { sequence: 3 },
    ]
}

/// What `tuplespace_op` executes before the input: a few writes and a blocked read.
pub fn tuplespace_setup() -> Vec<Vec<u8>> {
    ["('job', 7, 0x0102)", "('job', 8, 'x')", "('other', -1)"]
        .iter()
        .map(|text| {
            dura_tuplespace::encode_op(&Op::Out {
                tuple: parse_tuple(text).expect("parses"),
                lease_ms: Some(100),
            })
        })
        .chain(std::iter::once(dura_tuplespace::encode_op(&Op::Rd {
            template: parse_template("('wait', *)").expect("parses"),
        })))
        .collect()
}

/// Tuple space operations.
pub fn tuplespace_op() -> Vec<Vec<u8>> {
    tuplespace_ops().iter().map(dura_tuplespace::encode_op).collect()
}

/// Tuple space replies.
pub fn tuplespace_reply() -> Vec<Vec<u8>> {
    let mut space = TupleSpace::default();
    let mut seeds = Vec::new();
    for (sequence, op) in tuplespace_ops().iter().enumerate() {
        let ctx = ExecCtx { client_id: 1, sequence: sequence as u64, now_ms: 5 };
        for answer in space.execute(ctx, &dura_tuplespace::encode_op(op)) {
            seeds.push(answer.reply);
        }
    }
    seeds
}

/// Tuples and templates as text.
pub fn tuplespace_text() -> Vec<Vec<u8>> {
    [
        "('job', 7, *)",
        "(\"a\", 0x0102, *int)",
        "  ( -9223372036854775808 ,+5, 'a\\'b\\u{e9}\\n', 0x, )  ",
        "(*str,*bytes)",
        "('\\t\\0\\u{1}')",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect()
}

/// Tuple space states.
pub fn tuplespace_state() -> Vec<Vec<u8>> {
    let mut space = TupleSpace::default();
    let mut seeds = vec![space.encode_state()];
    for (sequence, op) in tuplespace_setup().iter().enumerate() {
        space.execute(ExecCtx { client_id: 1, sequence: sequence as u64, now_ms: 10 }, op);
    }
    seeds.push(space.encode_state());
    seeds
}
