//! The fuzz targets: one function per decoder that takes bytes from outside.
//!
//! Every function decodes `data`, checks a property of what it accepted (a panic when it
//! fails), and returns whether the decoder accepted the input (the stable driver keeps
//! accepted inputs as further seeds). None may panic on any input.

use std::io::{Cursor, Write};

use dura_core::auth::{Key, KeyRing, mac};
use dura_core::{Batch, ClientRequest, Mode, Reply, Service};
use dura_engine::checkpoint::{ReplyCacheInstaller, load_checkpoint, write_checkpoint};
use dura_engine::durability::reassemble;
use dura_engine::protocol::message::Message;
use dura_engine::protocol::{
    Client, ClientAction, ClientConfig, ClientEvent, open_frame, seal_frame,
};
use dura_engine::runtime::datapath::fuzzing as datapath;
use dura_engine::runtime::datapath::{ANSWER_BYTES, NONCE_BYTES};
use dura_engine::runtime::metrics::parse_request;
use dura_engine::runtime::net::{Peer, read_frame};
use dura_engine::runtime::transfer::{decode_piece, encode_piece, piece_hash_of};
use dura_engine::service::{StateInstaller, StateView};
use dura_kvstore::KvStore;
use dura_kvstore::ops::{KvReply, decode_op};
use dura_snapshot::format::{
    AGREEMENT_ID_OFFSET, CONTENT_SHA256_OFFSET, FRAME_BYTES, HEADER_CHECKSUM_OFFSET,
    HEADER_FIXED_BYTES, MAGIC, SERVICE_NAME_OFFSET, file_name, pad16,
};
use dura_snapshot::sim::SimDir;
use dura_snapshot::{AlignedBytes, CheckpointStore, ContentHasher, Dir, DirWriter, Section};
use dura_transfer::Piece;
use dura_tuplespace::{ExecCtx, TupleSpace};
use dura_wal::format::{
    BLOCK_BYTES, GROUP_HEADER_BYTES, GROUP_MAGIC, RECORD_HEADER_BYTES, RECORD_MAGIC,
    SEGMENT_BYTES_MIN,
};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::seeds;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name (the driver's and the AFL binary's argument).
    pub name: &'static str,
    /// What it decodes.
    pub what: &'static str,
    /// The target: decodes, checks, returns whether the input was accepted.
    pub run: fn(&[u8]) -> bool,
    /// Its seed inputs.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

macro_rules! targets {
    ($($name:ident: $what:literal),* $(,)?) => {
        /// Every target, in the order the driver runs them.
        pub const TARGETS: &[Target] = &[
            $(Target { name: stringify!($name), what: $what, run: $name, seeds: seeds::$name }),*
        ];
    };
}

targets! {
    core_request: "a client request (dura-core), as replicas read it from clients",
    core_batch: "a batch of requests (dura-core), inside proposals and log records",
    core_reply: "a reply (dura-core), as clients read it from replicas",
    client_replies: "replies fed to the sans-IO client (engine::protocol::client)",
    protocol_message: "a protocol message (engine::protocol::message)",
    protocol_frame: "a MAC'd replica link frame (engine::protocol::auth::open_frame)",
    net_frames: "a connection's length-prefixed frames and hello (engine::runtime::net)",
    metrics_request: "an HTTP request head to /metrics and /health (engine::runtime::metrics)",
    datapath_request: "a data-path stream or control request body (engine::runtime::datapath)",
    datapath_answer: "a data-path answer to a stream request (engine::runtime::datapath)",
    datapath_control_answer: "a data-path control answer (engine::runtime::datapath)",
    transfer_message: "a state-transfer control message (dura-transfer::message)",
    transfer_piece: "a state-transfer log piece (engine::runtime::transfer::decode_piece)",
    wal_record: "a log record (dura-wal::format::decode_record)",
    wal_group_header: "a log group header (dura-wal::format::GroupHeader::decode)",
    wal_segment: "a log segment scanned on reopen, its records replayed as batches",
    file_log: "sync mode's plain file log read back on reopen, replayed as batches",
    checkpoint_file: "a checkpoint file: header, chunk frames, engine and KV store state",
    reply_cache_chunk: "an engine checkpoint chunk: the reply cache (rkyv)",
    kv_state_chunk: "a KV store checkpoint chunk (rkyv)",
    kv_op: "a KV store operation (kvstore::ops::decode_op), and its execution",
    kv_reply: "a KV store reply (kvstore::ops::KvReply::decode)",
    tuplespace_op: "a tuple space operation (tuplespace::codec), and its execution",
    tuplespace_reply: "a tuple space reply (tuplespace::codec::decode_reply)",
    tuplespace_text: "a tuple or template as a person writes it (tuplespace::parse)",
    tuplespace_state: "a tuple space's canonical state (TupleSpace::decode_state)",
}

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The master secret of every key the targets use.
pub const MASTER_KEY: Key = [0x5a; 32];
/// Replicas of the key ring the targets use (ids 0..4; the targets are replica 0).
pub const REPLICAS: usize = 4;
/// The client whose replies `client_replies` reads.
pub const CLIENT_ID: u64 = 77;
/// The nonce of the data-path request the answers answer.
pub const NONCE: [u8; NONCE_BYTES] = [9; NONCE_BYTES];

/// The key ring of the targets.
pub fn ring() -> KeyRing {
    KeyRing::new(MASTER_KEY, REPLICAS)
}

/// The data-path keys replica 0 holds, by replica id (`None` for itself).
pub fn datapath_keys() -> Vec<Option<Key>> {
    let keys = ring().replica_keys(0);
    (0..REPLICAS as u32)
        .map(|peer| keys.link(peer).map(dura_engine::runtime::datapath::datapath_key))
        .collect()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u64_at(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// A client request; accepted ones encode back to the same bytes.
pub fn core_request(data: &[u8]) -> bool {
    let Ok(request) = ClientRequest::from_bytes(data) else { return false };
    assert_eq!(request.encoded_len(), data.len(), "encoded length");
    assert_eq!(request.to_bytes(), data, "a request encodes back to its bytes");
    let _ = request.digest();
    true
}

/// A batch; accepted ones encode back to the same bytes and hash.
pub fn core_batch(data: &[u8]) -> bool {
    let Ok(batch) = Batch::from_bytes(data) else { return false };
    assert_eq!(batch.encoded_len(), data.len(), "encoded length");
    assert_eq!(batch.to_bytes(), data, "a batch encodes back to its bytes");
    assert_eq!(batch.ordered_requests().len(), batch.requests.len());
    let _ = batch.hash();
    true
}

/// A reply; accepted ones encode back to the same bytes.
pub fn core_reply(data: &[u8]) -> bool {
    let Ok(reply) = Reply::from_bytes(data) else { return false };
    assert_eq!(reply.to_bytes(), data, "a reply encodes back to its bytes");
    true
}

/// A run of replies to the sans-IO client (BFT, n = 4, f = 1) after it invoked one
/// request. `data`: a flag byte (bit 0: re-MAC each reply with the key of the replica
/// it names, so that forged-looking replies are counted), then replies, each a `u16`
/// length and the bytes. Checked: the request completes at most once, and only with a
/// result that f+1 distinct replicas sent for its client and sequence with valid MACs.
pub fn client_replies(data: &[u8]) -> bool {
    let Some((&flags, mut rest)) = data.split_first() else { return false };
    let ring = ring();
    let keys = ring.client_keys(CLIENT_ID);
    let config = ClientConfig { mode: Mode::Bft, n: REPLICAS, f: 1, retransmit_timeout_ms: 100 };
    let mut client = Client::new(config, keys.clone(), 1);
    let mut actions = Vec::new();
    let sequence = client.invoke(b"op".to_vec(), &mut actions).expect("not busy");
    let mut valid: Vec<Reply> = Vec::new();
    let mut completed = 0;
    let mut accepted = false;
    while rest.len() >= 2 {
        let length = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let end = (2 + length).min(rest.len());
        let bytes = &rest[2..end];
        rest = &rest[end..];
        let Ok(mut reply) = Reply::from_bytes(bytes) else { continue };
        accepted = true;
        if flags & 1 != 0
            && let Some(key) = keys.replicas.get(reply.replica as usize)
        {
            let signed = Reply::signed(
                key,
                reply.replica,
                reply.client_id,
                reply.sequence,
                reply.regency,
                reply.result.clone(),
            );
            reply.mac = signed.mac;
        }
        if reply.client_id == CLIENT_ID
            && reply.sequence == sequence
            && keys.replicas.get(reply.replica as usize).is_some_and(|key| reply.verify(key))
        {
            valid.retain(|r| r.replica != reply.replica);
            valid.push(reply.clone());
        }
        actions.clear();
        client.handle(ClientEvent::Reply(reply), &mut actions);
        for action in &actions {
            if let ClientAction::Completed { sequence: done, result } = action {
                completed += 1;
                assert_eq!(*done, sequence, "the request invoked completes");
                let matching = valid.iter().filter(|r| r.result == *result).count();
                assert!(matching >= 2, "completed on {matching} matching valid replies");
            }
        }
    }
    assert!(completed <= 1, "completed {completed} times");
    accepted
}

/// A protocol message; accepted ones encode back to the same bytes.
pub fn protocol_message(data: &[u8]) -> bool {
    let Ok(message) = Message::decode(data) else { return false };
    assert_eq!(message.to_bytes(), data, "a message encodes back to its bytes");
    if let Message::StopData { collect, .. } = &message {
        let _ = collect.digest();
    }
    true
}

/// SHA-256 over the frame domain tag and a frame body (`engine::protocol::auth`).
fn frame_digest(body: &[u8]) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(b"dura-frame");
    sha.update(body);
    sha.finalize().into()
}

/// A replica link frame as replica 0 opens it: as is, then with a valid MAC appended
/// for the sender it names (`data` as the frame body). An opened frame seals back to
/// the same bytes.
pub fn protocol_frame(data: &[u8]) -> bool {
    let keys = ring().replica_keys(0);
    let link = |from| keys.link(from);
    if let Ok((from, message)) = open_frame(data, link) {
        let key = keys.link(from).expect("opened with this key");
        assert_eq!(seal_frame(key, from, &message), data, "a frame seals back to its bytes");
    }
    if data.len() < 4 {
        return false;
    }
    let from = u32_at(data, 0);
    let Some(key) = keys.link(from) else { return false };
    let mut frame = data.to_vec();
    frame.extend_from_slice(&mac(key, &[&frame_digest(data)]));
    match open_frame(&frame, link) {
        Ok((opened, message)) => {
            assert_eq!(opened, from, "the sender named");
            assert_eq!(seal_frame(key, from, &message), frame, "a frame seals back");
            true
        }
        Err(_) => false,
    }
}

/// The most frames `net_frames` reads from one input.
const NET_FRAMES_MAX: usize = 64;
/// The frame bound `net_frames` reads under.
const NET_FRAME_BYTES_MAX: u32 = 4096;

/// A connection's bytes as a replica reads them: length-prefixed frames under a bound,
/// the first a hello, the others link frames opened by replica 0. Checked: no frame
/// passes the bound, the buffer grows no further than it, and a hello that decodes
/// encodes back to the same bytes.
pub fn net_frames(data: &[u8]) -> bool {
    let keys = ring().replica_keys(0);
    let mut reader = Cursor::new(data);
    let mut body = Vec::new();
    let mut accepted = false;
    for index in 0..NET_FRAMES_MAX {
        let Ok(Some(length)) = read_frame(&mut reader, &mut body, NET_FRAME_BYTES_MAX) else {
            break;
        };
        assert!(length <= NET_FRAME_BYTES_MAX as usize, "a frame past the bound");
        assert!(body.len() <= NET_FRAME_BYTES_MAX as usize, "the buffer past the bound");
        let frame = &body[..length];
        if index == 0 {
            match Peer::decode(frame) {
                Some(peer) => {
                    assert_eq!(&peer.encode()[..], frame, "a hello encodes back");
                    accepted = true;
                }
                None => break,
            }
        } else if open_frame(frame, |from| keys.link(from)).is_ok() {
            accepted = true;
        }
    }
    accepted
}

/// An HTTP request head to the metrics endpoint: what parses names a method of
/// uppercase letters and a path from the request line, without its query.
pub fn metrics_request(data: &[u8]) -> bool {
    assert!(parse_request(data, false).is_err(), "an incomplete head is refused");
    let Ok(line) = parse_request(data, true) else { return false };
    assert!(!line.method.is_empty() && line.method.bytes().all(|b| b.is_ascii_uppercase()));
    assert!(line.path.starts_with('/') && !line.path.contains('?'), "{line:?}");
    let end = data.iter().position(|&b| b == b'\n').expect("a parsed head has a line");
    let text = std::str::from_utf8(&data[..end]).expect("a parsed request line is UTF-8");
    assert!(text.starts_with(&format!("{} {}", line.method, line.path)), "{line:?}");
    true
}

/// A data-path request body as replica 0's server reads it: as is, then with a valid
/// MAC appended for the requester it names (`data` as everything the MAC covers).
pub fn datapath_request(data: &[u8]) -> bool {
    let keys = datapath_keys();
    datapath::request(&keys, data);
    if data.len() < 8 {
        return false;
    }
    let from = u32_at(data, 4) as usize;
    let Some(Some(key)) = keys.get(from) else { return false };
    let mut body = data.to_vec();
    body.extend_from_slice(&mac(key, &[data]));
    datapath::request(&keys, &body)
}

/// An answer to a stream request (nonce [`NONCE`]), from replica 1: the first
/// [`ANSWER_BYTES`] bytes as they are, then the first 9 (tag and value) with a valid MAC.
pub fn datapath_answer(data: &[u8]) -> bool {
    let key = datapath_keys()[1].expect("a peer");
    if let Ok(answer) = <&[u8; ANSWER_BYTES]>::try_from(&data[..data.len().min(ANSWER_BYTES)]) {
        datapath::answer(&key, &NONCE, answer);
    }
    let mut answer = [0u8; ANSWER_BYTES];
    let head = data.len().min(9);
    answer[..head].copy_from_slice(&data[..head]);
    let code = mac(&key, &[b"answer", &NONCE, &answer[..9]]);
    answer[9..].copy_from_slice(&code);
    datapath::answer(&key, &NONCE, &answer)
}

/// A control answer's body (nonce [`NONCE`]), from replica 1: as is, then with a valid
/// MAC appended (`data` as the messages).
pub fn datapath_control_answer(data: &[u8]) -> bool {
    let key = datapath_keys()[1].expect("a peer");
    datapath::control_answer(&key, &NONCE, data);
    let mut body = data.to_vec();
    body.extend_from_slice(&mac(&key, &[b"control-answer", &NONCE, data]));
    datapath::control_answer(&key, &NONCE, &body)
}

/// A state-transfer control message; accepted ones encode back to the same bytes.
pub fn transfer_message(data: &[u8]) -> bool {
    let Ok(message) = dura_transfer::Message::from_bytes(data) else { return false };
    assert_eq!(message.to_bytes(), data, "a transfer message encodes back to its bytes");
    true
}

/// A log piece: `data` is the piece's range (`after` as a `u64`, then a `u8` length)
/// and its wire bytes. An accepted piece encodes back to the same bytes and hashes.
pub fn transfer_piece(data: &[u8]) -> bool {
    if data.len() < 9 {
        return false;
    }
    let after = u64_at(data, 0);
    let Some(up_to) = after.checked_add(u64::from(data[8])) else { return false };
    let piece = Piece::new(after, up_to);
    let bytes = &data[9..];
    let Ok(batches) = decode_piece(piece, bytes) else { return false };
    assert_eq!(batches.len() as u64, up_to - after, "one batch per agreement");
    assert_eq!(encode_piece(&batches), bytes, "a piece encodes back to its bytes");
    piece_hash_of(piece, &batches).expect("a decoded piece hashes");
    true
}

/// Sets the checksum of the record at `at` (bounded by `end`) and returns it.
fn fix_record(bytes: &mut [u8], at: usize, end: usize, prev: Option<u64>) -> Option<(u64, usize)> {
    if at + RECORD_HEADER_BYTES > end || u32_at(bytes, at + 8) != RECORD_MAGIC {
        return None;
    }
    if let Some(prev) = prev {
        put_u64_at(bytes, at + 40, prev);
    }
    let payload = u32_at(bytes, at + 16) as usize;
    let record_end = (at + RECORD_HEADER_BYTES).saturating_add(payload).min(end);
    let checksum = xxh3_64(&bytes[at + 8..record_end]);
    put_u64_at(bytes, at, checksum);
    Some((checksum, record_end))
}

/// A log record as the scan decodes it: as is, then with its checksum fixed up.
pub fn wal_record(data: &[u8]) -> bool {
    dura_wal::fuzzing::record(data);
    let mut fixed = data.to_vec();
    let end = fixed.len();
    fix_record(&mut fixed, 0, end, None);
    dura_wal::fuzzing::record(&fixed)
}

/// A group header as the scan decodes it: as is, then with its checksum fixed up.
pub fn wal_group_header(data: &[u8]) -> bool {
    dura_wal::fuzzing::group_header(data);
    if data.len() < GROUP_HEADER_BYTES {
        return false;
    }
    let mut fixed = data.to_vec();
    let checksum = xxh3_64(&fixed[8..GROUP_HEADER_BYTES]);
    put_u64_at(&mut fixed, 0, checksum);
    dura_wal::fuzzing::group_header(&fixed)
}

/// Recomputes, in a segment's bytes, the checksum of every group header that carries
/// the group magic at a block boundary and of every record inside such a group, and
/// chains each record to the one before it.
fn fix_segment(bytes: &mut [u8]) {
    let mut prev = None;
    let mut pos = 0;
    while pos + GROUP_HEADER_BYTES <= bytes.len() {
        if u32_at(bytes, pos + 8) == GROUP_MAGIC {
            let records_bytes = u64_at(bytes, pos + 40);
            let start = pos + GROUP_HEADER_BYTES;
            let end = usize::try_from(records_bytes)
                .ok()
                .and_then(|n| start.checked_add(n))
                .map_or(bytes.len(), |end| end.min(bytes.len()));
            let mut at = start;
            while let Some((checksum, next)) = fix_record(bytes, at, end, prev) {
                prev = Some(checksum);
                if next <= at {
                    break;
                }
                at = next;
            }
            let checksum = xxh3_64(&bytes[pos + 8..pos + GROUP_HEADER_BYTES]);
            put_u64_at(bytes, pos, checksum);
        }
        pos += BLOCK_BYTES;
    }
}

/// A log segment as reopening the log scans it (segment number from the first group
/// header's field, else 1): as is, then with every checksum fixed up. The records of
/// the scan are reassembled into decided batches as replay does (consecutive when
/// accepted).
pub fn wal_segment(data: &[u8]) -> bool {
    let mut bytes = data.to_vec();
    if bytes.len() < SEGMENT_BYTES_MIN {
        bytes.resize(SEGMENT_BYTES_MIN, 0);
    }
    let seq = if u32_at(&bytes, 8) == GROUP_MAGIC { u64_at(&bytes, 24) } else { 1 };
    replay(dura_wal::fuzzing::scan(&bytes, seq));
    fix_segment(&mut bytes);
    let records = dura_wal::fuzzing::scan(&bytes, seq);
    let accepted = !records.is_empty();
    replay(records);
    accepted
}

/// Most records `file_log` fixes up.
const FILE_LOG_RECORDS_MAX: usize = 4096;

/// Sync mode's `replica.log` as reopening reads it: as is, then with each record's
/// checksum fixed up. The records kept are replayed as batches.
pub fn file_log(data: &[u8]) -> bool {
    replay_payloads(dura_engine::runtime::filelog::fuzzing::records(data));
    let mut fixed = data.to_vec();
    let mut at = 0;
    for _ in 0..FILE_LOG_RECORDS_MAX {
        if at + 20 > fixed.len() {
            break;
        }
        let body_end = at + 20 + u32_at(&fixed, at) as usize;
        if body_end + 8 > fixed.len() {
            break;
        }
        let checksum = xxh3_64(&fixed[at..body_end]);
        put_u64_at(&mut fixed, body_end, checksum);
        at = body_end + 8;
    }
    let payloads = dura_engine::runtime::filelog::fuzzing::records(&fixed);
    let accepted = !payloads.is_empty();
    replay_payloads(payloads);
    accepted
}

fn replay(records: Vec<dura_wal::LogRecord>) {
    replay_payloads(records.into_iter().map(|r| r.payload).collect());
}

fn replay_payloads(payloads: Vec<Vec<u8>>) {
    if let Ok(batches) = reassemble(payloads) {
        for pair in batches.windows(2) {
            assert_eq!(pair[0].agreement_id + 1, pair[1].agreement_id, "consecutive batches");
        }
    }
}

/// Most chunks `fix_checkpoint` walks.
const FIX_CHUNKS_MAX: u64 = 4096;

/// Recomputes, in a checkpoint file's bytes, each chunk frame's checksum, the content
/// length and hash, and the header checksum, as far as the bytes frame.
fn fix_checkpoint(bytes: &mut [u8]) {
    if bytes.len() < HEADER_FIXED_BYTES || bytes[..8] != MAGIC {
        return;
    }
    let engine_bytes = u32_at(bytes, 12) as usize;
    let header_len = pad16((HEADER_FIXED_BYTES + engine_bytes.min(1 << 20)) as u64) as usize;
    if bytes.len() < header_len || engine_bytes > dura_snapshot::ENGINE_BYTES_LIMIT {
        return;
    }
    let service_bytes = usize::from(bytes[72]);
    if service_bytes == 0 || service_bytes > dura_snapshot::SERVICE_NAME_BYTES_MAX {
        return;
    }
    let name = &bytes[SERVICE_NAME_OFFSET..SERVICE_NAME_OFFSET + service_bytes];
    let Ok(service) = std::str::from_utf8(name).map(str::to_owned) else { return };
    let agreement_id = u64_at(bytes, AGREEMENT_ID_OFFSET);
    let engine = bytes[HEADER_FIXED_BYTES..HEADER_FIXED_BYTES + engine_bytes].to_vec();
    let mut content = ContentHasher::new(&service, agreement_id, &engine);
    let mut content_bytes = 0u64;
    let mut offset = header_len;
    for _ in 0..u64_at(bytes, 24).min(FIX_CHUNKS_MAX) {
        if offset + FRAME_BYTES > bytes.len() {
            break;
        }
        let Some(section) = Section::from_byte(bytes[offset]) else { break };
        let payload_bytes = u32_at(bytes, offset + 4) as usize;
        let start = offset + FRAME_BYTES;
        let Some(end) = start.checked_add(payload_bytes).filter(|&end| end <= bytes.len()) else {
            break;
        };
        let mut hasher = Xxh3::new();
        hasher.update(&bytes[offset..offset + 8]);
        hasher.update(&bytes[start..end]);
        put_u64_at(bytes, offset + 8, hasher.digest());
        content.chunk(section, &bytes[start..end]);
        content_bytes += payload_bytes as u64;
        offset = start + pad16(payload_bytes as u64) as usize;
    }
    put_u64_at(bytes, 32, content_bytes);
    bytes[CONTENT_SHA256_OFFSET..CONTENT_SHA256_OFFSET + 32].copy_from_slice(&content.finish());
    let mut hasher = Xxh3::new();
    hasher.update(&bytes[..HEADER_CHECKSUM_OFFSET]);
    hasher.update(&bytes[HEADER_CHECKSUM_OFFSET + 8..header_len]);
    put_u64_at(bytes, HEADER_CHECKSUM_OFFSET, hasher.digest());
}

/// A checkpoint store in a simulated directory holding `bytes` as the checkpoint of
/// `agreement_id`.
fn store_with(agreement_id: u64, bytes: &[u8]) -> CheckpointStore<SimDir> {
    let dir = SimDir::new(1);
    let mut writer = dir.create(&file_name(agreement_id)).expect("a simulated file");
    writer.write_all(bytes).expect("a simulated write");
    writer.sync().expect("a simulated sync");
    drop(writer);
    CheckpointStore::open(dir, Default::default()).expect("a store")
}

/// Loads `bytes` as a checkpoint of the KV store: the header, the chunk frames, the
/// engine blob, the reply cache and the store's chunks. A checkpoint that loads is also
/// verified, and writing its state again gives a checkpoint that loads to the same
/// state.
fn load_kv_checkpoint(bytes: &[u8]) -> bool {
    let agreement_id = if bytes.len() >= 24 { u64_at(bytes, AGREEMENT_ID_OFFSET) } else { 1 };
    let store = store_with(agreement_id, bytes);
    let _ = store.read_header(agreement_id);
    let verified = store.verify(agreement_id, KvStore::NAME);
    let Ok(Some(loaded)) = load_checkpoint(&store, &KvStore::new()) else { return false };
    assert!(verified.is_ok(), "a checkpoint that loads verifies: {verified:?}");
    if agreement_id == 0 {
        return true;
    }
    let again = CheckpointStore::open(SimDir::new(2), Default::default()).expect("a store");
    let executor = &loaded.executor;
    write_checkpoint(
        &again,
        KvStore::NAME,
        agreement_id,
        loaded.from.ordered_requests,
        &executor.view(),
    )
    .expect("a loaded state writes");
    let reloaded = load_checkpoint(&again, &KvStore::new())
        .expect("a written checkpoint loads")
        .expect("it is there");
    assert_eq!(reloaded.from, loaded.from, "where replay starts");
    let (a, b) = (&reloaded.executor, executor);
    assert_eq!(a.service().state_digest(), b.service().state_digest(), "the store's state");
    assert_eq!(a.requests_executed(), b.requests_executed(), "requests executed");
    assert_eq!(a.last_executed_per_client(), b.last_executed_per_client(), "the reply cache");
    true
}

/// A checkpoint file of the KV store: as is, then with its checksums and content hash
/// fixed up.
pub fn checkpoint_file(data: &[u8]) -> bool {
    load_kv_checkpoint(data);
    let mut fixed = data.to_vec();
    fix_checkpoint(&mut fixed);
    load_kv_checkpoint(&fixed)
}

/// `data` in a 16-aligned buffer, as the checkpoint loader hands chunks out.
fn aligned(data: &[u8]) -> AlignedBytes {
    let mut buffer = AlignedBytes::new();
    buffer.resize(data.len()).copy_from_slice(data);
    buffer
}

/// An engine chunk (the reply cache, rkyv): checked by bytecheck before it is read.
pub fn reply_cache_chunk(data: &[u8]) -> bool {
    let buffer = aligned(data);
    let mut installer = ReplyCacheInstaller::default();
    let accepted = installer.chunk(buffer.as_slice()).is_ok();
    let cache = installer.finish();
    let mut last = None;
    for (client, _) in cache.iter() {
        assert!(last.is_none_or(|last| last < *client), "clients in order");
        last = Some(*client);
    }
    accepted
}

/// A KV store chunk (rkyv): an accepted chunk installs a store whose chunks install
/// back to the same state.
pub fn kv_state_chunk(data: &[u8]) -> bool {
    let buffer = aligned(data);
    let template = KvStore::new();
    let mut installer = template.installer();
    if installer.chunk(buffer.as_slice()).is_err() {
        return false;
    }
    let Ok(store) = installer.finish() else { return false };
    let mut again = template.installer();
    store
        .view()
        .write_chunks(1 << 20, &mut |chunk| {
            again.chunk(aligned(chunk).as_slice()).expect("written chunks install");
            Ok(())
        })
        .expect("a view writes");
    let again = again.finish().expect("installs");
    assert_eq!(again.state_digest(), store.state_digest(), "the same state");
    true
}

/// A KV store operation: an accepted one encodes back to the same bytes; executing any
/// bytes gives a reply that encodes and decodes back.
pub fn kv_op(data: &[u8]) -> bool {
    let decoded = decode_op(data);
    if let Ok(op) = &decoded {
        assert_eq!(op.encode().expect("a decoded operation is in bounds"), data, "encodes back");
    }
    let mut store = KvStore::new();
    store.apply(&dura_kvstore::KvOp::Put { key: b"k", value: b"v" }.encode().expect("ok"));
    let reply = store.apply(data);
    assert_eq!(KvReply::decode(&reply.encode()).as_ref(), Ok(&reply), "a reply round trips");
    decoded.is_ok()
}

/// A KV store reply: an accepted one encodes back to the same bytes.
pub fn kv_reply(data: &[u8]) -> bool {
    let Ok(reply) = KvReply::decode(data) else { return false };
    assert_eq!(reply.encode(), data, "a reply encodes back to its bytes");
    true
}

/// A tuple space operation: an accepted one encodes back to the same bytes; executing
/// any bytes on a space holding a tuple gives replies that decode, and a state that
/// decodes back.
pub fn tuplespace_op(data: &[u8]) -> bool {
    let decoded = dura_tuplespace::decode_op(data);
    if let Ok(op) = &decoded {
        assert_eq!(dura_tuplespace::encode_op(op), data, "an operation encodes back");
    }
    let mut space = TupleSpace::default();
    for (sequence, op) in seeds::tuplespace_setup().iter().enumerate() {
        space.execute(ExecCtx { client_id: 1, sequence: sequence as u64, now_ms: 10 }, op);
    }
    let answers = space.execute(ExecCtx { client_id: 2, sequence: 1, now_ms: 20 }, data);
    for answer in answers {
        dura_tuplespace::decode_reply(&answer.reply).expect("a reply decodes");
    }
    let state = space.encode_state();
    let back = TupleSpace::decode_state(&state).expect("a state decodes");
    assert_eq!(back.encode_state(), state, "a state round trips");
    decoded.is_ok()
}

/// A tuple space reply: an accepted one encodes back to the same bytes.
pub fn tuplespace_reply(data: &[u8]) -> bool {
    let Ok(reply) = dura_tuplespace::decode_reply(data) else { return false };
    assert_eq!(dura_tuplespace::encode_reply(&reply), data, "a reply encodes back");
    true
}

/// A tuple and a template as text: what parses prints as text that parses back to it.
pub fn tuplespace_text(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let mut accepted = false;
    if let Ok(tuple) = dura_tuplespace::parse_tuple(text) {
        let printed = tuple.to_string();
        assert_eq!(dura_tuplespace::parse_tuple(&printed).as_ref(), Ok(&tuple), "{printed}");
        accepted = true;
    }
    if let Ok(template) = dura_tuplespace::parse_template(text) {
        let printed = template.to_string();
        assert_eq!(dura_tuplespace::parse_template(&printed).as_ref(), Ok(&template), "{printed}");
        accepted = true;
    }
    accepted
}

/// A tuple space's state: an accepted one encodes back to the same bytes.
pub fn tuplespace_state(data: &[u8]) -> bool {
    let Ok(space) = TupleSpace::decode_state(data) else { return false };
    assert_eq!(space.encode_state(), data, "a state encodes back to its bytes");
    true
}

/// Writes `bytes` as hex (the driver's failure report).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(out, "{byte:02x}").expect("a Vec takes writes");
    }
    String::from_utf8(out).expect("hex is ASCII")
}
