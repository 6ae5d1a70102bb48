//! The data path over real sockets on 127.0.0.1 (OS-assigned ports) and real files in
//! temporary directories. No test asserts a speed: the rate limiter's arithmetic is
//! checked on a manual clock.

use std::sync::mpsc;

use dura_core::KeyRing;
use dura_core::rng::Rng;
use dura_transfer::Piece;

use super::*;

const N: usize = 4;
const ROUND: RoundId = RoundId { session: 11, round: 2 };
/// Fast enough that no test waits on the limiter (its arithmetic has its own test).
const FAST: u64 = 64 << 30;

fn ring() -> KeyRing {
    KeyRing::new([0x5A; 32], N)
}

fn start_server(source: Arc<dyn StreamSource>, streams_max: u32) -> DataServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let config = DataServerConfig { me: 0, bytes_per_s_max: FAST, streams_max };
    DataServer::start(
        listener,
        config,
        &ring().replica_keys(0),
        source,
        Arc::new(MonotonicClock::new()),
    )
    .expect("start")
}

/// Replica `me`'s request to the server (replica 0) for `want` from `offset`.
fn request_from(server: &DataServer, me: ReplicaId, want: Want, offset: u64) -> FetchRequest {
    let link_key = *ring().replica_keys(me).link(0).expect("a replica of the ring");
    FetchRequest {
        seeder: 0,
        addr: server.local_addr(),
        me,
        link_key,
        round: ROUND,
        ticket: 77,
        want,
        offset,
        tls: None,
    }
}

fn quick() -> FetchOptions {
    FetchOptions {
        attempts_max: 3,
        backoff_ms_min: 1,
        backoff_ms_max: 10,
        busy_wait_ms_max: 0,
        ..FetchOptions::default()
    }
}

/// Fetches into memory: the outcome, the bytes and the progress reports.
fn fetch_bytes(request: &FetchRequest) -> (StreamOutcome, Vec<u8>, Vec<Progress>) {
    let mut bytes = Vec::new();
    let mut reports = Vec::new();
    let stop = AtomicBool::new(false);
    let outcome = fetch(
        request,
        &quick(),
        &mut |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        },
        &mut |progress| reports.push(progress),
        &stop,
    );
    (outcome, bytes, reports)
}

fn write_random(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let bytes = Rng::new(seed).bytes(len);
    std::fs::write(path, &bytes).expect("write");
    bytes
}

#[test]
fn a_checkpoint_file_and_an_in_memory_piece_arrive_byte_identical() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    let checkpoint = Want::Checkpoint { agreement_id: 400 };
    let piece = Want::Log(Piece::new(400, 460));
    // Not a multiple of the chunk, so the last chunk is a short one.
    let checkpoint_bytes = write_random(&source.path_of(checkpoint), 5 * CHUNK_BYTES + 12_345, 1);
    let piece_bytes = write_random(&source.path_of(piece), 300_001, 2);
    let mut server = start_server(source.clone(), 2);

    let (outcome, bytes, reports) = fetch_bytes(&request_from(&server, 2, checkpoint, 0));
    assert!(
        matches!(outcome, StreamOutcome::Done { bytes } if bytes == checkpoint_bytes.len() as u64),
        "{outcome:?}"
    );
    assert!(bytes == checkpoint_bytes, "the checkpoint differs");
    assert_eq!(server.stats().sendfile_refused, 0, "sent with sendfile");
    let total = checkpoint_bytes.len() as u64;
    assert_eq!(reports.first(), Some(&Progress { bytes: 0, total }));
    assert_eq!(reports.last(), Some(&Progress { bytes: total, total }));
    assert!(reports.windows(2).all(|w| w[0].bytes <= w[1].bytes), "progress never goes back");

    let (outcome, bytes, _) = fetch_bytes(&request_from(&server, 3, piece, 0));
    assert!(matches!(outcome, StreamOutcome::Done { bytes: 300_001 }), "{outcome:?}");
    assert!(bytes == piece_bytes, "the piece differs");

    // A fetch may start past bytes it holds already.
    let (outcome, bytes, _) = fetch_bytes(&request_from(&server, 1, piece, 100_000));
    assert!(matches!(outcome, StreamOutcome::Done { bytes: 300_001 }), "{outcome:?}");
    assert!(bytes == piece_bytes[100_000..], "the tail differs");

    // Stopped first: a server thread counts a stream after its last byte left, which
    // may be after the client has it.
    server.stop();
    let stats = server.stats();
    assert_eq!(stats.completed, 3);
    assert_eq!(stats.bytes_sent, total + 300_001 + 200_001);
    let seen = server.requests_seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0],
        StreamRequest { from: 2, round: ROUND, ticket: 77, want: checkpoint, offset: 0 },
        "the request reaches the source as sent"
    );
}

#[test]
fn where_the_kernel_refuses_sendfile_the_file_is_copied_through_a_buffer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    let want = Want::Checkpoint { agreement_id: 12 };
    let expected = write_random(&source.path_of(want), 2 * CHUNK_BYTES + 999, 10);
    let mut server = start_server(source, 2);
    server.refuse_sendfile();
    let (outcome, bytes, _) = fetch_bytes(&request_from(&server, 1, want, 1_000));
    assert!(matches!(outcome, StreamOutcome::Done { .. }), "{outcome:?}");
    assert!(bytes == expected[1_000..], "the copied bytes differ");
    server.stop();
    assert_eq!(server.stats().sendfile_refused, 2, "one fallback per chunk (2 MiB - 1 bytes)");
}

#[test]
fn a_cut_stream_resumes_from_the_last_byte_received() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    let want = Want::Checkpoint { agreement_id: 9 };
    let expected = write_random(&source.path_of(want), 3 * CHUNK_BYTES + 77, 3);
    let mut server = start_server(source, 2);
    // Not on a chunk boundary, nor on the client's read buffer's.
    let cut = CHUNK_BYTES as u64 + 123_457;
    server.cut_next_stream_after(cut);
    let (outcome, bytes, _) = fetch_bytes(&request_from(&server, 1, want, 0));
    assert!(
        matches!(outcome, StreamOutcome::Done { bytes } if bytes == expected.len() as u64),
        "{outcome:?}"
    );
    assert!(bytes == expected, "the resumed transfer differs");
    let offsets: Vec<u64> = server.requests_seen().iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![0, cut], "resumed from exactly the last byte received");
    server.stop();
    assert_eq!(server.stats().bytes_sent, expected.len() as u64, "nothing was sent twice");
}

#[test]
fn a_total_length_that_changes_between_resumes_fails_the_fetch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    let want = Want::Checkpoint { agreement_id: 9 };
    let path = source.path_of(want);
    write_random(&path, 2 * CHUNK_BYTES, 4);
    let mut server = start_server(source, 2);
    let cut = 500_000;
    server.cut_next_stream_after(cut);
    let mut received = 0u64;
    let mut replaced = false;
    let stop = AtomicBool::new(false);
    let outcome = fetch(
        &request_from(&server, 1, want, 0),
        &quick(),
        &mut |chunk| {
            received += chunk.len() as u64;
            if received == cut && !replaced {
                // Replaced by rename, as a new checkpoint would be: the open file the
                // cut stream reads is not touched, the resumed one finds another.
                let staged = path.with_extension("new");
                write_random(&staged, CHUNK_BYTES, 5);
                std::fs::rename(&staged, &path).expect("rename");
                replaced = true;
            }
            Ok(())
        },
        &mut |_| {},
        &stop,
    );
    assert!(replaced, "the sink saw the cut point");
    let StreamOutcome::Failed(error) = outcome else { panic!("{outcome:?}") };
    assert!(
        matches!(error.kind, FetchErrorKind::TotalChanged { was, now } if was == 2 * CHUNK_BYTES as u64 && now == CHUNK_BYTES as u64),
        "{error}"
    );
    assert_eq!(error.seeder, 0);
    assert!(error.to_string().contains("replica 0"), "{error}");
    server.stop();
}

#[test]
fn a_bad_mac_and_an_unknown_replica_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    let want = Want::Checkpoint { agreement_id: 1 };
    write_random(&source.path_of(want), 1_000, 6);
    let mut server = start_server(source, 2);

    let mut forged = request_from(&server, 1, want, 0);
    forged.link_key[0] ^= 1;
    let (outcome, bytes, _) = fetch_bytes(&forged);
    let StreamOutcome::Failed(error) = outcome else { panic!("{outcome:?}") };
    assert!(matches!(error.kind, FetchErrorKind::Refused), "{error}");
    assert!(bytes.is_empty());

    // Replica 1 claiming to be replica 2 (its own key, another's id).
    let mut impostor = request_from(&server, 1, want, 0);
    impostor.me = 2;
    let StreamOutcome::Failed(error) = fetch_bytes(&impostor).0 else { panic!("accepted") };
    assert!(matches!(error.kind, FetchErrorKind::Refused), "{error}");

    for unknown in [N as ReplicaId, 0, u32::MAX] {
        let mut stranger = request_from(&server, 1, want, 0);
        stranger.me = unknown;
        stranger.seeder = 5; // a replica never fetches from itself
        let StreamOutcome::Failed(error) = fetch_bytes(&stranger).0 else { panic!("accepted") };
        assert!(matches!(error.kind, FetchErrorKind::Refused), "{unknown}: {error}");
    }
    server.stop();
    let stats = server.stats();
    assert_eq!((stats.refused, stats.completed, stats.bytes_sent), (5, 0, 0));
    assert!(server.requests_seen().is_empty(), "no refused request reached the source");
}

#[test]
fn an_oversized_request_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = start_server(Arc::new(DirSource::new(dir.path())), 2);
    for length in [u32::MAX, REQUEST_BYTES_MAX as u32 + 1, 3] {
        let mut raw = TcpStream::connect(server.local_addr()).expect("connect");
        raw.write_all(&length.to_le_bytes()).expect("send a length");
        let mut answer = [0u8; ANSWER_BYTES];
        raw.read_exact(&mut answer).expect("an answer");
        assert_eq!(answer[0], ANSWER_REFUSED, "length {length}");
    }
    assert_eq!(server.stats().refused, 3);
    server.stop();
}

/// A source that holds its first `open` until the test releases it, and tells the test
/// when it is waiting; later opens pass at once.
struct Gate {
    inner: DirSource,
    held: AtomicBool,
    opened: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl StreamSource for Gate {
    fn open(&self, request: &StreamRequest) -> io::Result<Opened> {
        if !self.held.swap(true, Ordering::AcqRel) {
            self.opened.lock().expect("gate").send(()).expect("the test listens");
            self.release.lock().expect("gate").recv().expect("the test releases");
        }
        self.inner.open(request)
    }
}

/// A server with one stream place, taken by a fetch of `want` (70,000 random bytes from
/// `seed`) whose source holds its open until `release` is sent.
struct HeldPlace {
    server: DataServer,
    expected: Vec<u8>,
    holder: thread::JoinHandle<(StreamOutcome, Vec<u8>, Vec<Progress>)>,
    release: mpsc::Sender<()>,
}

fn hold_the_only_place(dir: &Path, want: Want, seed: u64) -> HeldPlace {
    let inner = DirSource::new(dir);
    let expected = write_random(&inner.path_of(want), 70_000, seed);
    let (opened_tx, opened_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Gate {
        inner,
        held: AtomicBool::new(false),
        opened: Mutex::new(opened_tx),
        release: Mutex::new(release_rx),
    };
    let server = start_server(Arc::new(gate), 1);
    let first = request_from(&server, 1, want, 0);
    let holder = thread::spawn(move || fetch_bytes(&first));
    // The first stream holds the only place while its source opens.
    opened_rx.recv_timeout(Duration::from_secs(30)).expect("the first request reaches the source");
    HeldPlace { server, expected, holder, release }
}

#[test]
fn a_request_past_the_stream_bound_is_told_busy_not_queued() {
    let dir = tempfile::tempdir().expect("temp dir");
    let want = Want::Log(Piece::new(0, 5));
    let held = hold_the_only_place(dir.path(), want, 7);
    let (mut server, expected, holder, release_tx) =
        (held.server, held.expected, held.holder, held.release);
    let (outcome, bytes, _) = fetch_bytes(&request_from(&server, 2, want, 0));
    assert!(matches!(outcome, StreamOutcome::Busy), "{outcome:?}");
    assert!(bytes.is_empty());
    release_tx.send(()).expect("release the first");
    let (outcome, bytes, _) = holder.join().expect("first fetch");
    assert!(matches!(outcome, StreamOutcome::Done { bytes: 70_000 }), "{outcome:?}");
    assert!(bytes == expected);
    // The place is free again once the first stream's thread ends (which may be a
    // moment after its client has every byte).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (outcome, bytes, _) = fetch_bytes(&request_from(&server, 3, want, 0));
        if matches!(outcome, StreamOutcome::Done { bytes: 70_000 }) {
            assert!(bytes == expected);
            break;
        }
        assert!(matches!(outcome, StreamOutcome::Busy), "{outcome:?}");
        assert!(Instant::now() < deadline, "the place was never given back");
        thread::sleep(Duration::from_millis(10));
    }
    server.stop();
    assert!(server.stats().busy >= 1);
    assert_eq!(server.stats().completed, 2);
}

/// With a wait for Busy (the default), a fetch past the bound asks again and completes
/// once the stream before it ends, reporting progress while it waits (so the leecher
/// does not take the seeder for mute).
#[test]
fn a_fetch_told_busy_asks_again_until_a_place_is_free() {
    let dir = tempfile::tempdir().expect("temp dir");
    let want = Want::Log(Piece::new(0, 5));
    let held = hold_the_only_place(dir.path(), want, 11);
    let (mut server, expected, holder, release_tx) =
        (held.server, held.expected, held.holder, held.release);
    let second = request_from(&server, 2, want, 0);
    let waiter = thread::spawn(move || {
        let (mut bytes, mut reports) = (Vec::new(), Vec::new());
        let options = FetchOptions { busy_wait_ms_max: 60_000, ..quick() };
        let outcome = fetch(
            &second,
            &options,
            &mut |chunk| {
                bytes.extend_from_slice(chunk);
                Ok(())
            },
            &mut |progress| reports.push(progress),
            &AtomicBool::new(false),
        );
        (outcome, bytes, reports)
    });
    // The second is told Busy at least once before the first is let go.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.stats().busy == 0 {
        assert!(Instant::now() < deadline, "the second request was never told Busy");
        thread::sleep(Duration::from_millis(5));
    }
    release_tx.send(()).expect("release the first");
    let (outcome, bytes, _) = holder.join().expect("first fetch");
    assert!(matches!(outcome, StreamOutcome::Done { bytes: 70_000 }), "{outcome:?}");
    assert!(bytes == expected);
    let (outcome, bytes, reports) = waiter.join().expect("second fetch");
    assert!(matches!(outcome, StreamOutcome::Done { bytes: 70_000 }), "{outcome:?}");
    assert!(bytes == expected);
    assert!(reports.iter().any(|p| p.bytes == 0), "the wait was reported: {reports:?}");
    server.stop();
}

#[test]
fn unavailable_passes_through_with_its_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    source.set_last_agreement(100);
    let mut server = start_server(source, 2);
    let gone = Want::Checkpoint { agreement_id: 3 };
    let outcome = fetch_bytes(&request_from(&server, 1, gone, 0)).0;
    assert!(matches!(outcome, StreamOutcome::Unavailable(Unavailable::Truncated)), "{outcome:?}");
    let future = Want::Log(Piece::new(90, 120));
    let outcome = fetch_bytes(&request_from(&server, 1, future, 0)).0;
    assert!(matches!(outcome, StreamOutcome::Unavailable(Unavailable::NotYet)), "{outcome:?}");
    assert_eq!(server.stats().unavailable, 2);
    server.stop();
}

#[test]
fn an_offset_past_the_payload_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    let want = Want::Checkpoint { agreement_id: 1 };
    write_random(&source.path_of(want), 10, 8);
    let mut server = start_server(source, 2);
    let (outcome, _, _) = fetch_bytes(&request_from(&server, 1, want, 10));
    assert!(matches!(outcome, StreamOutcome::Done { bytes: 10 }), "at the end: nothing to send");
    let StreamOutcome::Failed(error) = fetch_bytes(&request_from(&server, 1, want, 11)).0 else {
        panic!("past the end")
    };
    assert!(matches!(error.kind, FetchErrorKind::Refused), "{error}");
    server.stop();
}

#[test]
fn a_seeder_that_is_not_there_fails_after_its_attempts_and_stop_is_honoured() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let link_key = *ring().replica_keys(1).link(0).expect("link");
    let request = FetchRequest {
        seeder: 0,
        addr,
        me: 1,
        link_key,
        round: ROUND,
        ticket: 1,
        want: Want::Checkpoint { agreement_id: 1 },
        offset: 0,
        tls: None,
    };
    let stop = AtomicBool::new(false);
    let outcome = fetch(&request, &quick(), &mut |_| Ok(()), &mut |_| {}, &stop);
    let StreamOutcome::Failed(error) = outcome else { panic!("{outcome:?}") };
    assert!(matches!(error.kind, FetchErrorKind::Disconnected { attempts: 3, .. }), "{error}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
    stop.store(true, Ordering::Release);
    let outcome = fetch(&request, &quick(), &mut |_| Ok(()), &mut |_| {}, &stop);
    assert!(matches!(outcome, StreamOutcome::Stopped), "{outcome:?}");
}

/// A clock the test moves by hand.
#[derive(Debug, Default)]
struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    fn advance(&self, duration: Duration) {
        self.now_ns.fetch_add(duration.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }
}

#[test]
fn the_token_bucket_charges_each_chunk_at_the_rate_exactly() {
    const MIB: u64 = 1 << 20;
    let clock = Arc::new(ManualClock::default());
    let bucket = TokenBucket::new(4 * MIB, MIB, clock.clone());
    assert_eq!(bucket.reserve(MIB), Duration::ZERO, "starts full");
    assert_eq!(bucket.reserve(MIB), Duration::from_millis(250), "one chunk of debt at 4 MiB/s");
    // Two streams share the rate: the next reservation queues behind the debt.
    assert_eq!(bucket.reserve(MIB / 2), Duration::from_millis(375));
    clock.advance(Duration::from_millis(375));
    assert_eq!(bucket.reserve(MIB / 4), Duration::from_millis(62) + Duration::from_micros(500));
    // A long idle refills to the burst, no further.
    clock.advance(Duration::from_secs(60));
    assert_eq!(bucket.reserve(MIB), Duration::ZERO);
    assert_eq!(bucket.reserve(1), Duration::from_nanos(239), "1 byte at 4 MiB/s, rounded up");
    // A clock that reads earlier than before (it must not) refills nothing.
    let odd = Arc::new(ManualClock::default());
    odd.advance(Duration::from_secs(5));
    let bucket = TokenBucket::new(3, 3, odd.clone());
    assert_eq!(bucket.reserve(3), Duration::ZERO);
    odd.now_ns.store(0, Ordering::Relaxed);
    assert_eq!(bucket.reserve(1), Duration::from_nanos(333_333_334), "1 byte at 3 bytes/s");
    // Fractions of a byte are kept between calls: 3 x 1/3 s at 3 bytes/s is 3 bytes.
    let clock = Arc::new(ManualClock::default());
    let bucket = TokenBucket::new(3, 3, clock.clone());
    assert_eq!(bucket.reserve(3), Duration::ZERO);
    for _ in 0..3 {
        clock.advance(Duration::from_nanos(333_333_333));
        assert_eq!(bucket.reserve(0), Duration::ZERO, "a third of a byte, kept");
    }
    clock.advance(Duration::from_nanos(1));
    assert_eq!(bucket.reserve(3), Duration::ZERO);
}

#[test]
#[should_panic(expected = "over the burst")]
fn a_reservation_over_the_burst_is_a_bug() {
    TokenBucket::new(10, 5, Arc::new(ManualClock::default())).reserve(6);
}

#[test]
fn a_stopped_server_cuts_its_streams_and_joins_its_threads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(DirSource::new(dir.path()));
    let want = Want::Checkpoint { agreement_id: 2 };
    write_random(&source.path_of(want), 4 * CHUNK_BYTES, 9);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    // The slowest rate accepted: after its first chunk the stream waits on tokens.
    let config = DataServerConfig { me: 0, bytes_per_s_max: CHUNK_BYTES as u64, streams_max: 2 };
    let mut server = DataServer::start(
        listener,
        config,
        &ring().replica_keys(0),
        source,
        Arc::new(MonotonicClock::new()),
    )
    .expect("start");
    let request = request_from(&server, 1, want, 0);
    let (first_bytes_tx, first_bytes_rx) = mpsc::channel();
    let client = thread::spawn(move || {
        let stop = AtomicBool::new(false);
        let options = FetchOptions { attempts_max: 1, ..quick() };
        let mut told = false;
        fetch(
            &request,
            &options,
            &mut |_| {
                if !told {
                    told = true;
                    let _ = first_bytes_tx.send(());
                }
                Ok(())
            },
            &mut |_| {},
            &stop,
        )
    });
    first_bytes_rx.recv_timeout(Duration::from_secs(30)).expect("the stream started");
    server.stop();
    let outcome = client.join().expect("client");
    assert!(matches!(outcome, StreamOutcome::Failed(_)), "cut, then nobody answers: {outcome:?}");
    assert!(server.stats().bytes_sent < 4 * CHUNK_BYTES as u64);
    server.stop(); // idempotent
}

#[test]
fn a_server_bound_from_the_cluster_config_serves_with_the_cluster_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster =
        ClusterConfig::local(4, dura_core::Mode::Bft, super::super::LogMode::None, dir.path())
            .expect("local config");
    let source = Arc::new(DirSource::new(dir.path()));
    let want = Want::Log(Piece::new(10, 20));
    let expected = write_random(&source.path_of(want), 4_096, 11);
    let mut server = DataServer::bind(&cluster, 1, source).expect("bind the transfer port");
    let addr = cluster.replica(1).expect("replica 1").transfer_addr().expect("a data path");
    assert_eq!(server.local_addr(), addr);
    let keys = cluster.replica_keys(2).expect("keys");
    let request = FetchRequest {
        seeder: 1,
        addr,
        me: 2,
        link_key: *keys.link(1).expect("link to 1"),
        round: ROUND,
        ticket: 5,
        want,
        offset: 0,
        tls: None,
    };
    let (outcome, bytes, _) = fetch_bytes(&request);
    assert!(matches!(outcome, StreamOutcome::Done { bytes: 4_096 }), "{outcome:?}");
    assert!(bytes == expected);
    server.stop();

    let mut old = cluster.clone();
    old.replicas[1].transfer_port = None;
    let error = DataServer::bind(&old, 1, Arc::new(DirSource::new(dir.path())))
        .expect_err("a config without a data path");
    assert!(error.to_string().contains("replica[1].transfer_port"), "{error}");
}

/// A source that answers every control message with a status naming the sender.
struct Echo;

impl StreamSource for Echo {
    fn open(&self, _request: &StreamRequest) -> io::Result<Opened> {
        Ok(Opened::Unavailable(Unavailable::NotYet))
    }

    fn control(&self, from: ReplicaId, message: Message) -> Option<Vec<Message>> {
        let Message::Query { round } = message else { return Some(Vec::new()) };
        let status = dura_transfer::Status {
            last_agreement: u64::from(from) + 100,
            log_first: 1,
            checkpoints: Vec::new(),
        };
        Some(vec![Message::Status { round, status }])
    }
}

#[test]
fn a_control_message_gets_the_sources_answers_authenticated_both_ways() {
    let mut server = start_server(Arc::new(Echo), 2);
    let addr = server.local_addr();
    let timeout = Duration::from_secs(5);
    let link = |me: ReplicaId| *ring().replica_keys(me).link(0).expect("in the ring");
    let answers =
        control_call(addr, 2, 0, &link(2), &Message::Query { round: ROUND }, timeout).expect("ok");
    match answers.as_slice() {
        [Message::Status { round, status }] => {
            assert_eq!(*round, ROUND);
            assert_eq!(status.last_agreement, 102, "the server saw the authenticated sender");
        }
        other => panic!("{other:?}"),
    }
    let none = control_call(
        addr,
        1,
        0,
        &link(1),
        &Message::Status {
            round: ROUND,
            status: dura_transfer::Status {
                last_agreement: 0,
                log_first: 1,
                checkpoints: Vec::new(),
            },
        },
        timeout,
    )
    .expect("an empty answer is an answer");
    assert!(none.is_empty());
    // Replica 3 signing with replica 2's key: refused, and nothing answered.
    let forged = control_call(addr, 3, 0, &link(2), &Message::Query { round: ROUND }, timeout);
    assert!(matches!(forged, Err(FetchError { kind: FetchErrorKind::Refused, .. })), "{forged:?}");
    let stats = server.stats();
    assert_eq!(stats.controls, 2);
    assert_eq!(stats.refused, 1);
    server.stop();
}

#[test]
fn a_source_without_control_refuses_control_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_server(Arc::new(DirSource::new(dir.path())), 2);
    let link = *ring().replica_keys(1).link(0).expect("in the ring");
    let answer = control_call(
        server.local_addr(),
        1,
        0,
        &link,
        &Message::Query { round: ROUND },
        Duration::from_secs(5),
    );
    assert!(matches!(answer, Err(FetchError { kind: FetchErrorKind::Refused, .. })), "{answer:?}");
    server.stop();
}

#[test]
fn with_tls_a_file_streams_through_rustls_and_plaintext_or_a_wrong_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = tls::testing::TestCa::new(dir.path(), "ca");
    let mut cluster =
        ClusterConfig::local(4, dura_core::Mode::Bft, super::super::LogMode::None, dir.path())
            .expect("local config");
    ca.secure(&mut cluster);
    let source = Arc::new(DirSource::new(dir.path()));
    // Over one chunk, so the stream takes several turns of pread and encrypted writes.
    let want = Want::Checkpoint { agreement_id: 42 };
    let expected = write_random(&source.path_of(want), CHUNK_BYTES + 12_345, 7);
    let mut server = DataServer::bind(&cluster, 1, source).expect("bind the transfer port");
    let addr = server.local_addr();
    let keys = cluster.replica_keys(2).expect("keys");
    let request = |tls: Option<Arc<ClientConfig>>| FetchRequest {
        seeder: 1,
        addr,
        me: 2,
        link_key: *keys.link(1).expect("link to 1"),
        round: ROUND,
        ticket: 5,
        want,
        offset: 0,
        tls,
    };
    let tls_of = |id| tls::ReplicaTls::load(&cluster, id).expect("loads").expect("on").dial;
    let (outcome, bytes, _) = fetch_bytes(&request(Some(tls_of(2))));
    assert!(
        matches!(outcome, StreamOutcome::Done { bytes } if bytes == expected.len() as u64),
        "{outcome:?}"
    );
    assert!(bytes == expected, "the bytes arrive whole through TLS");
    assert_eq!(server.stats().sendfile_refused, 0, "no sendfile was tried under TLS");
    let refused_before = server.stats().refused;
    // Plaintext: refused before any request is read.
    let (outcome, bytes, _) = fetch_bytes(&request(None));
    assert!(!matches!(outcome, StreamOutcome::Done { .. }), "{outcome:?}");
    assert!(bytes.is_empty());
    // Replica 3's certificate with replica 2's request and key: its MAC holds, but the
    // certificate does not name replica 2.
    let (outcome, bytes, _) = fetch_bytes(&request(Some(tls_of(3))));
    assert!(
        matches!(outcome, StreamOutcome::Failed(FetchError { kind: FetchErrorKind::Refused, .. })),
        "{outcome:?}"
    );
    assert!(bytes.is_empty());
    assert!(server.stats().refused > refused_before + 1, "{:?}", server.stats());
    // Control exchanges go through TLS as well.
    let answers = control_call_tls(
        addr,
        2,
        1,
        keys.link(1).expect("link to 1"),
        &Message::Query { round: ROUND },
        Duration::from_secs(5),
        Some(&tls_of(2)),
    );
    assert!(answers.is_err(), "DirSource answers no control message: {answers:?}");
    server.stop();
}
