//! State transfer's data path: the bulk bytes of a transfer (checkpoint files, encoded
//! log pieces) on a port and threads of their own.
//!
//! `dura-transfer` decides what a recovering replica (the leecher) fetches from whom
//! (`Action::Fetch`) and what a seeder streams (`SeederAction::Serve`); this module
//! carries those bytes. Each replica runs a [`DataServer`] on its `transfer_port`: an
//! accept thread and one thread per connection, never the ordering stages' threads or
//! sockets, so a transfer never queues behind ordering (nor ordering behind a transfer).
//! The leecher's side is [`fetch`], a blocking call for a thread of the leecher's own.
//!
//! # Wire format
//!
//! One request per connection, then one answer, then (for `Ok`) the payload bytes, and
//! the server closes the connection.
//!
//! - **Request**: `u32` little-endian body length (at most [`REQUEST_BYTES_MAX`],
//!   checked before anything is read into a buffer), then the body: `b"DTRQ"`, the
//!   requester's replica id `u32`, the round (session `u64`, round `u32`), the ticket
//!   `u64`, the resume offset `u64`, a fresh nonce of [`NONCE_BYTES`], the `Want` in
//!   `dura-transfer`'s encoding ([`Want::encode`]), and an HMAC-SHA256 over everything
//!   before it.
//! - **Answer**: [`ANSWER_BYTES`]: a tag (`0` Ok, `1` Unavailable, `2` Busy, `3`
//!   Refused), a `u64` (Ok: the payload's total length; Unavailable: `0` truncated,
//!   `1` not yet), and an HMAC-SHA256 over the request's nonce and the tag and value,
//!   so an answer cannot be replayed to another request. `Refused` carries no MAC:
//!   it is what a request that failed authentication gets, and a forged one can do no
//!   more than cut the connection, which anyone on the path can.
//! - **Payload**: for `Ok`, the bytes `offset..total` of the payload, unframed.
//! - **Control exchange** (state transfer's small messages: query, status, hash
//!   request, hashes): the same length prefix, at most [`CONTROL_BYTES_MAX`], then
//!   `b"DTCM"`, the requester's id, a fresh nonce, one `dura-transfer` [`Message`] and
//!   an HMAC over everything before it; the answer is a `u32` length, then the
//!   messages the seeder sends back (each a `u32` length and the message), and an
//!   HMAC over the request's nonce and those bytes. The source's
//!   [`StreamSource::control`] answers (a source without one refuses).
//! - **Member exchange** (the runtime's own, not `dura-transfer`'s: a replica's
//!   membership, the last agreement it holds and its regency): the same length prefix,
//!   then `b"DTMB"`, the requester's id, a fresh nonce, a version byte and an HMAC over
//!   everything before it; the answer is a `u32` length, the report's bytes
//!   ([`StreamSource::member_report`]) and an HMAC over a label, the request's nonce
//!   and those bytes ([`member_call`]).
//!
//! The MAC key is derived from the link key the two replicas share
//! ([`ReplicaKeys::link`], itself from the cluster's `replica_key`) with a label of its
//! own ([`datapath_key`]), so no data-path MAC is ever valid as a link frame's or the
//! other way round. A request with a bad MAC, from an unknown replica id or malformed
//! is refused and logged, and nothing more is read from its connection.
//!
//! **The payload bytes are not MACed.** The leecher hashes them as they arrive and
//! validates the hash end to end against a hash agreed by f+1 replicas (the checkpoint's
//! content hash, a log piece's hash; `transfer/PROTOCOL.md`), which a MAC per chunk
//! could not add to: a Byzantine seeder holds a valid key and would MAC wrong bytes
//! just as well. The header's MAC only keeps a third party from answering for a seeder.
//!
//! # Streaming
//!
//! A [`StreamSource`] (the engine's, over its checkpoint store and log; [`DirSource`]
//! over a directory for tests) opens a `Want` as a file region or an in-memory buffer.
//! A file region is sent with `sendfile(2)`: the kernel moves the bytes from the page
//! cache to the socket, never through user space; where the kernel refuses sendfile for
//! the file (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`) it falls back to `pread` and `write`.
//! Not `std::io::copy`: std (1.95, `sys/io/kernel_copy/linux.rs`, `safe_kernel_copy`)
//! deliberately does not use sendfile or splice from a regular file to a socket, since
//! pages still in the socket's send buffer would show later writes to the file, which
//! `Read`/`Write` semantics forbid; it copies through an 8 KiB user buffer instead
//! (checked with strace: `read` + `sendto`). That caveat does not bite here: a checkpoint
//! file is never written after its rename (a new checkpoint is a new file), and the
//! leecher validates every byte against the agreed hash anyway. Each chunk of
//! [`CHUNK_BYTES`] first takes its tokens from the server's [`TokenBucket`], shared by
//! all its streams, at `transfer_bytes_per_s_max`.
//!
//! # Resuming
//!
//! [`fetch`] hands every byte it reads to the caller's sink at once; after a disconnect
//! it reconnects and asks again from the last byte the sink accepted, so a cut costs
//! what was in flight, not the transfer. The payload's total length must be the same in
//! every answer (else the seeder's payload changed under the transfer and it fails).
//!
//! # TLS
//!
//! With `[tls]` in the cluster config every data-path connection is mutual TLS (the
//! replicas' certificates, as on replica links): the server refuses a plaintext
//! connection and a request whose replica id its client's certificate does not name,
//! and the leecher checks the seeder's name. Payloads then go through rustls (`pread`
//! and an encrypted write), not `sendfile`: an operator who turns TLS on expects no
//! plaintext state on the wire. The MACs stay as they are.
//!
//! # Bounds
//!
//! Connections a server holds at once: `transfer_streams_max` streams plus
//! [`HANDSHAKES_MAX`] still sending their request or being told `Busy`; one past that
//! is closed at once. A request is at most [`REQUEST_BYTES_MAX`] and must arrive within
//! [`REQUEST_TIMEOUT_MS`]; a stalled receiver frees its stream after
//! [`SEND_TIMEOUT_MS`]. A fetch makes at most `attempts_max` attempts in a row that
//! bring no byte.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dura_core::ReplicaId;
use dura_core::auth::{Key, MAC_BYTES, ReplicaKeys, mac, verify_mac};
use dura_core::codec::{Reader, put_u32, put_u64};
use dura_transfer::{Message, RoundId, Unavailable, Want};

use rustls::{ClientConfig, Connection, ServerConfig};

use super::RuntimeError;
use super::config::ClusterConfig;
use super::tls;

/// A data-path connection: plain TCP, or TLS over it (handshake done).
enum DataStream {
    Plain(TcpStream),
    Tls(Box<tls::Blocking<Connection, TcpStream>>),
}

impl DataStream {
    fn socket(&self) -> &TcpStream {
        match self {
            DataStream::Plain(socket) => socket,
            DataStream::Tls(stream) => &stream.socket,
        }
    }

    /// Whether the peer may speak for replica `id`: always on plain TCP (the MAC
    /// decides), and with TLS when its certificate names it.
    fn check_replica(&self, id: ReplicaId) -> Result<(), String> {
        match self {
            DataStream::Plain(_) => Ok(()),
            DataStream::Tls(stream) => tls::check_peer_is_replica(&stream.connection, id),
        }
    }

    /// Connects the leecher's side to `seeder` over `socket`: TLS when `tls` is given
    /// (within `timeout`; the socket's timeouts are the caller's to set after).
    fn dial(
        mut socket: TcpStream,
        tls: Option<&Arc<ClientConfig>>,
        seeder: ReplicaId,
        timeout: Duration,
    ) -> io::Result<DataStream> {
        match tls {
            None => Ok(DataStream::Plain(socket)),
            Some(config) => {
                let connection = tls::connect(&mut socket, config.clone(), seeder, timeout)?;
                Ok(DataStream::Tls(Box::new(tls::Blocking::new(connection, socket))))
            }
        }
    }
}

impl Read for DataStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            DataStream::Plain(socket) => socket.read(buf),
            DataStream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for DataStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            DataStream::Plain(socket) => socket.write(buf),
            DataStream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            DataStream::Plain(socket) => socket.flush(),
            DataStream::Tls(stream) => stream.flush(),
        }
    }
}

/// Bytes sent per step of a stream: each step takes its tokens from the rate limiter,
/// then goes to the socket in one `io::copy` (or `write_all`).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bytes of a request's nonce.
pub const NONCE_BYTES: usize = 16;

const REQUEST_MAGIC: [u8; 4] = *b"DTRQ";

/// A request body's fixed part: magic, requester, round (session, round), ticket,
/// offset, nonce, MAC; the `Want` comes on top.
const REQUEST_FIXED_BYTES: usize = 4 + 4 + (8 + 4) + 8 + 8 + NONCE_BYTES + MAC_BYTES;

/// Smallest request body: the fixed part and the shortest `Want` (a checkpoint).
const REQUEST_BYTES_MIN: usize = REQUEST_FIXED_BYTES + 1 + 8;

/// Largest request body a server reads; a longer length prefix is refused before any
/// buffer is filled (the buffer is this size, on the stack).
pub const REQUEST_BYTES_MAX: usize = 128;

/// Bytes of an answer: tag, value, MAC.
pub const ANSWER_BYTES: usize = 1 + 8 + MAC_BYTES;

const CONTROL_MAGIC: [u8; 4] = *b"DTCM";

const MEMBER_MAGIC: [u8; 4] = *b"DTMB";

/// The member exchange's version byte.
const MEMBER_VERSION: u8 = 1;

/// Largest member report a server sends or a caller reads.
pub const MEMBER_REPORT_BYTES_MAX: usize = 256;

/// Largest control request or answer body. Control messages are small by construction
/// (a status names at most `STATUS_CHECKPOINTS_MAX` checkpoints, a hash request at most
/// `PIECES_MAX` pieces); a longer length prefix is refused before anything is read.
pub const CONTROL_BYTES_MAX: usize = 16 << 10;

/// Messages one control answer carries at most.
pub const CONTROL_ANSWERS_MAX: usize = 4;

/// Smallest control request body: magic, requester, nonce, a one-byte message, MAC.
const CONTROL_BYTES_MIN: usize = 4 + 4 + NONCE_BYTES + 1 + MAC_BYTES;

const _: () = assert!(CONTROL_BYTES_MAX > REQUEST_BYTES_MAX);
const _: () = assert!(CONTROL_BYTES_MIN < REQUEST_BYTES_MIN);

const _: () = assert!(REQUEST_FIXED_BYTES + Want::ENCODED_BYTES_MAX <= REQUEST_BYTES_MAX);
const _: () = assert!(REQUEST_BYTES_MIN <= REQUEST_FIXED_BYTES + Want::ENCODED_BYTES_MAX);
const _: () = assert!(CHUNK_BYTES as u64 <= u32::MAX as u64, "a chunk is one copy call");

/// Connections a server holds beyond its streams: those still sending their request,
/// and those being told `Busy`.
pub const HANDSHAKES_MAX: usize = 4;

/// How long a server waits for a connection's request before closing it.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// How long a server's send may block on a receiver that does not read before the
/// stream is dropped (the leecher resumes it, or asks another seeder).
pub const SEND_TIMEOUT_MS: u64 = 10_000;

/// Longest sleep of a server thread between two looks at the stop flag.
const STOP_POLL_MS: u64 = 50;

/// Requests a test server remembers (oldest dropped first).
#[cfg(test)]
const REQUESTS_SEEN_MAX: usize = 64;

const ANSWER_OK: u8 = 0;
const ANSWER_UNAVAILABLE: u8 = 1;
const ANSWER_BUSY: u8 = 2;
const ANSWER_REFUSED: u8 = 3;

/// The key that MACs data-path requests and answers between two replicas, from the
/// link key they share.
pub fn datapath_key(link: &Key) -> Key {
    mac(link, &[b"dura-transfer-datapath"])
}

// ---------------------------------------------------------------------------------------
// Sources

/// One request as the server decoded and authenticated it, handed to the
/// [`StreamSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRequest {
    /// The requesting replica (authenticated).
    pub from: ReplicaId,
    /// The leecher's round (`Action::Fetch`'s, so the engine can match it to a
    /// `SeederAction::Serve`).
    pub round: RoundId,
    /// The leecher's ticket for the fetch.
    pub ticket: u64,
    /// What it wants.
    pub want: Want,
    /// The first byte it wants (0, or where a cut stream resumes).
    pub offset: u64,
}

/// What a [`StreamSource`] opened for a request: the whole payload (the server sends
/// from the request's offset), or why not.
pub enum Opened {
    /// The bytes `start..start + len` of `file` (a checkpoint file, never written again):
    /// sent from the page cache with `sendfile(2)`.
    File {
        /// The open file; the server seeks it.
        file: File,
        /// Where the payload starts in the file.
        start: u64,
        /// The payload's length.
        len: u64,
    },
    /// A payload built in memory (an encoded log piece).
    Memory(Arc<[u8]>),
    /// The source does not hold it; passed to the leecher as it is (`Busy` is answered
    /// as the server's own `Busy`).
    Unavailable(Unavailable),
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Opened::File { start, len, .. } => {
                f.debug_struct("File").field("start", start).field("len", len).finish()
            }
            Opened::Memory(bytes) => f.debug_struct("Memory").field("len", &bytes.len()).finish(),
            Opened::Unavailable(reason) => f.debug_tuple("Unavailable").field(reason).finish(),
        }
    }
}

/// Where a [`DataServer`] gets its payloads. Called on the stream's thread; it should
/// not block for long (a server's stop waits for it).
pub trait StreamSource: Send + Sync {
    /// Opens `request.want`. An `Err` is logged and the request refused.
    fn open(&self, request: &StreamRequest) -> io::Result<Opened>;

    /// Answers a control message from replica `from` (authenticated) with the
    /// messages to send back to it (at most [`CONTROL_ANSWERS_MAX`]); `None`: this
    /// source takes no control messages, and the request is refused.
    fn control(&self, from: ReplicaId, message: Message) -> Option<Vec<Message>> {
        let _ = (from, message);
        None
    }

    /// The replica's member report (see `super::membership::PeerReport`), encoded, at
    /// most [`MEMBER_REPORT_BYTES_MAX`]; `None`: the member query is refused.
    fn member_report(&self) -> Option<Vec<u8>> {
        None
    }
}

/// Log pieces up to this size are read into memory by [`DirSource`]; larger ones are
/// streamed from the file.
pub const DIR_SOURCE_MEMORY_BYTES_MAX: u64 = 64 << 20;

/// A [`StreamSource`] over the files of one directory: checkpoint `a` is the file
/// `checkpoint-<a>`, log piece (`x`, `y`] the file `log-<x>-<y>` (read into memory, to
/// serve it as an encoded piece is served). A missing file is `Truncated`; a piece
/// beyond [`DirSource::set_last_agreement`] is `NotYet`.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    last_agreement: AtomicU64,
}

impl DirSource {
    /// A source over `dir`, holding every agreement.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), last_agreement: AtomicU64::new(u64::MAX) }
    }

    /// The file that holds `want`.
    pub fn path_of(&self, want: Want) -> PathBuf {
        match want {
            Want::Checkpoint { agreement_id } => {
                self.dir.join(format!("checkpoint-{agreement_id}"))
            }
            Want::Log(piece) => self.dir.join(format!("log-{}-{}", piece.after, piece.up_to)),
        }
    }

    /// Pieces ending after `agreement_id` are answered `NotYet`.
    pub fn set_last_agreement(&self, agreement_id: u64) {
        self.last_agreement.store(agreement_id, Ordering::Release);
    }
}

impl StreamSource for DirSource {
    fn open(&self, request: &StreamRequest) -> io::Result<Opened> {
        if let Want::Log(piece) = request.want
            && piece.up_to > self.last_agreement.load(Ordering::Acquire)
        {
            return Ok(Opened::Unavailable(Unavailable::NotYet));
        }
        let file = match File::open(self.path_of(request.want)) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(Opened::Unavailable(Unavailable::Truncated));
            }
            Err(error) => return Err(error),
        };
        let len = file.metadata()?.len();
        match request.want {
            Want::Log(_) if len <= DIR_SOURCE_MEMORY_BYTES_MAX => {
                let mut bytes = Vec::with_capacity(len as usize);
                file.take(len).read_to_end(&mut bytes)?;
                Ok(Opened::Memory(Arc::from(bytes)))
            }
            _ => Ok(Opened::File { file, start: 0, len }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rate limiting

/// A clock in nanoseconds that never goes back (injectable, so the token bucket's
/// arithmetic is tested without sleeping).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Nanoseconds since some fixed point.
    fn now_ns(&self) -> u64;
}

/// The process's monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock counting from now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

const NS_PER_S: u128 = 1_000_000_000;

/// A token bucket of bytes, shared by the streams of one server: `rate` bytes per
/// second, holding at most `burst`. A caller reserves a chunk before sending it and
/// waits the time returned; the bucket may go into debt by the chunks reserved ahead,
/// so concurrent streams share the rate instead of racing for it.
///
/// Tokens are kept in byte-nanoseconds (bytes x 10^9), so refills are exact integers
/// and no fraction of a byte is lost between calls.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Bytes x 10^9; negative is debt.
    tokens: i128,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilled at `rate` bytes per second.
    pub fn new(rate: u64, burst: u64, clock: Arc<dyn Clock>) -> Self {
        assert!(rate > 0, "a rate of 0 would never send");
        assert!(burst > 0, "a burst of 0 would never send");
        let last_ns = clock.now_ns();
        let tokens = i128::try_from(u128::from(burst) * NS_PER_S).expect("u64 x 10^9 fits i128");
        Self { rate, burst, clock, state: Mutex::new(BucketState { tokens, last_ns }) }
    }

    /// Takes `bytes` (at most the burst) and returns how long to wait before sending
    /// them: zero while the bucket holds enough.
    pub fn reserve(&self, bytes: u64) -> Duration {
        assert!(bytes <= self.burst, "a reservation of {bytes} is over the burst {}", self.burst);
        let now = self.clock.now_ns();
        let cap = u128::from(self.burst) * NS_PER_S;
        let mut state = self.state.lock().expect("token bucket lock poisoned");
        let elapsed = now.saturating_sub(state.last_ns);
        state.last_ns = state.last_ns.max(now);
        // Debt is paid back before the bucket fills, so the refill is not capped; only
        // the result is.
        let refill = u128::from(elapsed).saturating_mul(u128::from(self.rate));
        let refilled = state.tokens.saturating_add(i128::try_from(refill).unwrap_or(i128::MAX));
        let cap = i128::try_from(cap).expect("u64 x 10^9 fits i128");
        state.tokens = refilled.min(cap) - i128::from(bytes) * NS_PER_S as i128;
        if state.tokens >= 0 {
            return Duration::ZERO;
        }
        // Debt d byte-ns is paid back after d / rate ns, rounded up.
        let debt = state.tokens.unsigned_abs();
        let wait_ns = debt.div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// What a [`DataServer`] needs besides its listener and source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataServerConfig {
    /// This replica.
    pub me: ReplicaId,
    /// The rate shared by all streams (`transfer_bytes_per_s_max`).
    pub bytes_per_s_max: u64,
    /// Streams served at once (`transfer_streams_max`); one more is told `Busy`.
    pub streams_max: u32,
}

impl DataServerConfig {
    /// Replica `me`'s settings from the cluster config.
    pub fn from_cluster(config: &ClusterConfig, me: ReplicaId) -> Self {
        Self {
            me,
            bytes_per_s_max: config.transfer_bytes_per_s_max,
            streams_max: config.transfer_streams_max,
        }
    }
}

/// What a [`DataServer`] has done since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DataServerStats {
    /// Connections accepted (each given a thread).
    pub accepted: u64,
    /// Connections closed at once: `streams_max + HANDSHAKES_MAX` were open.
    pub turned_away: u64,
    /// Requests refused: malformed, oversized, bad MAC, unknown replica, a source error
    /// or an offset past the payload.
    pub refused: u64,
    /// Requests answered `Busy`.
    pub busy: u64,
    /// Requests answered `Unavailable`.
    pub unavailable: u64,
    /// Streams sent to their end.
    pub completed: u64,
    /// Control messages answered.
    pub controls: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// File chunks sent by `pread` and `write` because the kernel refused `sendfile`
    /// for the file.
    pub sendfile_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    turned_away: AtomicU64,
    refused: AtomicU64,
    busy: AtomicU64,
    unavailable: AtomicU64,
    completed: AtomicU64,
    controls: AtomicU64,
    bytes_sent: AtomicU64,
    sendfile_refused: AtomicU64,
}

/// Faults a test injects into a server.
#[cfg(test)]
#[derive(Debug, Default)]
struct Faults {
    /// Cut the next stream after this many payload bytes of it.
    cut_after_bytes: Mutex<Option<u64>>,
    /// Act as if the kernel refused `sendfile` (to test the fallback).
    no_sendfile: AtomicBool,
    /// Every authenticated request, oldest first (at most [`REQUESTS_SEEN_MAX`]).
    requests: Mutex<std::collections::VecDeque<StreamRequest>>,
}

struct Shared {
    me: ReplicaId,
    /// The data-path key shared with each replica, by id (`None` for `me`).
    keys: Vec<Option<Key>>,
    source: Arc<dyn StreamSource>,
    bucket: TokenBucket,
    streams_max: usize,
    stopping: AtomicBool,
    /// Connections holding a thread (streams and handshakes).
    connections: AtomicUsize,
    /// Connections streaming (or opening their payload).
    streams: AtomicUsize,
    /// Every open connection by number, to shut down at stop (at most
    /// `streams_max + HANDSHAKES_MAX`).
    open: Mutex<HashMap<u64, TcpStream>>,
    counters: Counters,
    refusal_log: LogLimiter,
    /// TLS (mutual) on every connection; None: plain TCP.
    tls: Option<Arc<ServerConfig>>,
    #[cfg(test)]
    faults: Faults,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("me", &self.me)
            .field("streams_max", &self.streams_max)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Sleeps `duration`, waking every [`STOP_POLL_MS`] to see the stop flag; false if
    /// the server is stopping.
    fn pause(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        loop {
            if self.is_stopping() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(Duration::from_millis(STOP_POLL_MS)));
        }
    }
}

/// The state-transfer data server of one replica: an accept thread on the replica's
/// transfer port and one thread per connection. Stopped (threads joined) by
/// [`DataServer::stop`] or on drop.
#[derive(Debug)]
pub struct DataServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl DataServer {
    /// Binds replica `me`'s transfer address from `cluster` and serves `source` with
    /// the cluster's keys, rate and stream bound. An error names `transfer_port` when
    /// the replica has none.
    pub fn bind(
        cluster: &ClusterConfig,
        me: ReplicaId,
        source: Arc<dyn StreamSource>,
    ) -> Result<DataServer, RuntimeError> {
        let addr = cluster.replica(me)?.transfer_addr()?;
        let listener = TcpListener::bind(addr).map_err(|error| RuntimeError::Net {
            operation: "bind the transfer port",
            peer: addr.to_string(),
            error,
        })?;
        let keys = cluster.replica_keys(me)?;
        let tls = tls::ReplicaTls::load(cluster, me)?.map(|tls| tls.peers);
        DataServer::start_with_tls(
            listener,
            DataServerConfig::from_cluster(cluster, me),
            &keys,
            source,
            Arc::new(MonotonicClock::new()),
            tls,
        )
        .map_err(|error| RuntimeError::Net {
            operation: "start the data server on",
            peer: addr.to_string(),
            error,
        })
    }

    /// Serves `source` on `listener` as `config.me`, authenticating requests with the
    /// link keys of `keys`; `clock` drives the rate limiter.
    pub fn start(
        listener: TcpListener,
        config: DataServerConfig,
        keys: &ReplicaKeys,
        source: Arc<dyn StreamSource>,
        clock: Arc<dyn Clock>,
    ) -> io::Result<DataServer> {
        Self::start_with_tls(listener, config, keys, source, clock, None)
    }

    /// [`DataServer::start`], with mutual TLS on every connection when `tls` is given
    /// (see the module's doc).
    pub fn start_with_tls(
        listener: TcpListener,
        config: DataServerConfig,
        keys: &ReplicaKeys,
        source: Arc<dyn StreamSource>,
        clock: Arc<dyn Clock>,
        tls: Option<Arc<ServerConfig>>,
    ) -> io::Result<DataServer> {
        assert_eq!(keys.id, config.me, "the keys are this replica's");
        assert!(config.streams_max >= 1, "a server serves at least one stream");
        assert!(config.bytes_per_s_max > 0, "a rate of 0 would never send");
        let addr = listener.local_addr()?;
        let keys = keys
            .links
            .iter()
            .enumerate()
            .map(|(peer, link)| (peer as ReplicaId != config.me).then(|| datapath_key(link)))
            .collect();
        let shared = Arc::new(Shared {
            me: config.me,
            keys,
            source,
            bucket: TokenBucket::new(config.bytes_per_s_max, CHUNK_BYTES as u64, clock),
            streams_max: config.streams_max as usize,
            stopping: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            open: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            refusal_log: LogLimiter::default(),
            tls,
            #[cfg(test)]
            faults: Faults::default(),
        });
        let accept_shared = shared.clone();
        let accept = thread::Builder::new()
            .name(format!("xfer-accept-{}", addr.port()))
            .spawn(move || accept_loop(&accept_shared, listener))?;
        Ok(DataServer { addr, shared, accept: Some(accept) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> DataServerStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DataServerStats {
            accepted: get(&c.accepted),
            turned_away: get(&c.turned_away),
            refused: get(&c.refused),
            busy: get(&c.busy),
            unavailable: get(&c.unavailable),
            completed: get(&c.completed),
            controls: get(&c.controls),
            bytes_sent: get(&c.bytes_sent),
            sendfile_refused: get(&c.sendfile_refused),
        }
    }

    /// Stops accepting, cuts every open stream, and joins every thread. Idempotent.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.shared.stopping.store(true, Ordering::Release);
        for stream in self.shared.open.lock().expect("data server lock poisoned").values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the accept thread: it sees the flag after this connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if accept.join().is_err() {
            log::error!("replica {}: the data server's accept thread panicked", self.shared.me);
        }
        assert_eq!(self.shared.connections.load(Ordering::Acquire), 0, "every thread joined");
    }

    /// Cuts the next stream after `bytes` payload bytes of it (test fault hook).
    #[cfg(test)]
    pub(crate) fn cut_next_stream_after(&self, bytes: u64) {
        *self.shared.faults.cut_after_bytes.lock().expect("faults lock") = Some(bytes);
    }

    /// Makes the server act as if the kernel refused `sendfile` (test fault hook).
    #[cfg(test)]
    pub(crate) fn refuse_sendfile(&self) {
        self.shared.faults.no_sendfile.store(true, Ordering::Relaxed);
    }

    /// The authenticated requests seen, oldest first (test hook).
    #[cfg(test)]
    pub(crate) fn requests_seen(&self) -> Vec<StreamRequest> {
        self.shared.faults.requests.lock().expect("faults lock").iter().copied().collect()
    }
}

impl Drop for DataServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One of a bounded number of places, held while a connection (or a stream) lives.
#[derive(Debug)]
struct Slot<'a> {
    taken: &'a AtomicUsize,
}

impl<'a> Slot<'a> {
    fn take(taken: &'a AtomicUsize, max: usize) -> Option<Self> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self { taken })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let before = self.taken.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a slot was given back twice");
    }
}

/// One warning per second at most, so a flood of bad requests is not a flood of lines.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    fn warn(&self, message: fmt::Arguments<'_>) {
        let mut last = self.last.lock().expect("log limiter lock poisoned");
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            log::warn!("{message} ({suppressed} more refusals not logged)");
        } else {
            log::warn!("{message}");
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let connections_max = shared.streams_max + HANDSHAKES_MAX;
    let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(connections_max + 1);
    let mut next_connection = 0u64;
    for stream in listener.incoming() {
        if shared.is_stopping() {
            break;
        }
        // Reap finished threads: at most `connections_max` are ever alive, so the list
        // stays within its bound.
        let (done, alive): (Vec<_>, Vec<_>) = threads.drain(..).partition(|t| t.is_finished());
        threads = alive;
        for thread in done {
            let _ = thread.join();
        }
        let Ok(stream) = stream else { continue };
        if shared.connections.load(Ordering::Acquire) >= connections_max {
            shared.counters.turned_away.fetch_add(1, Ordering::Relaxed);
            shared.refusal_log.warn(format_args!(
                "replica {}: turned away a transfer connection: {connections_max} open",
                shared.me
            ));
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(registered) = stream.try_clone() else { continue };
        let id = next_connection;
        next_connection += 1;
        {
            let mut open = shared.open.lock().expect("data server lock poisoned");
            if shared.is_stopping() {
                break;
            }
            open.insert(id, registered);
            assert!(open.len() <= connections_max, "open connections over their bound");
        }
        // Taken here, on the accept thread, so the bound holds before the next accept.
        shared.connections.fetch_add(1, Ordering::AcqRel);
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let connection_shared = shared.clone();
        let spawned =
            thread::Builder::new().name(format!("xfer-{}-{id}", shared.me)).spawn(move || {
                // Both released on the way out, a panic of the source's included, so the
                // bounds keep holding.
                let _slot = Slot { taken: &connection_shared.connections };
                let _registered = Registered { shared: &connection_shared, id };
                serve_connection(&connection_shared, stream);
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(error) => {
                shared.connections.fetch_sub(1, Ordering::AcqRel);
                shared.open.lock().expect("data server lock poisoned").remove(&id);
                log::warn!("replica {}: no thread for a transfer connection: {error}", shared.me);
            }
        }
        assert!(threads.len() <= connections_max, "connection threads over their bound");
    }
    for thread in threads {
        let _ = thread.join();
    }
}

/// A connection's entry in [`Shared::open`], removed when dropped.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut open = self.shared.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.remove(&self.id);
    }
}

/// Why a request was refused (logged; the requester only learns `Refused`).
#[derive(Debug)]
enum Refusal {
    Io(io::Error),
    Length(u32),
    Malformed(String),
    UnknownReplica(ReplicaId),
    BadMac(ReplicaId),
    Certificate(ReplicaId, String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Io(error) => write!(f, "request not read: {error}"),
            Refusal::Length(length) => write!(
                f,
                "request of {length} bytes is outside {REQUEST_BYTES_MIN}..={REQUEST_BYTES_MAX}"
            ),
            Refusal::Malformed(what) => write!(f, "malformed request: {what}"),
            Refusal::UnknownReplica(id) => write!(f, "request names unknown replica {id}"),
            Refusal::BadMac(id) => write!(f, "request from replica {id} failed its MAC"),
            Refusal::Certificate(id, why) => {
                write!(f, "request names replica {id}, but the TLS certificate {why}")
            }
        }
    }
}

/// A request read and authenticated.
struct Authenticated {
    request: StreamRequest,
    nonce: [u8; NONCE_BYTES],
    key: Key,
}

/// A control request read and authenticated.
struct ControlRequest {
    from: ReplicaId,
    nonce: [u8; NONCE_BYTES],
    key: Key,
    message: Message,
}

/// What a connection asked.
enum Request {
    Stream(Authenticated),
    Control(ControlRequest),
    Member { from: ReplicaId, nonce: [u8; NONCE_BYTES], key: Key },
}

fn read_request(shared: &Shared, stream: &mut DataStream) -> Result<Request, Refusal> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(Refusal::Io)?;
    let length = u32::from_le_bytes(length);
    if !(CONTROL_BYTES_MIN..=CONTROL_BYTES_MAX).contains(&(length as usize)) {
        return Err(Refusal::Length(length));
    }
    let mut body = vec![0u8; length as usize];
    stream.read_exact(&mut body).map_err(Refusal::Io)?;
    let request = decode_request(&shared.keys, &body)?;
    // With TLS, the certificate must name the replica the request (MAC checked) names.
    let from = match &request {
        Request::Stream(authenticated) => authenticated.request.from,
        Request::Control(control) => control.from,
        Request::Member { from, .. } => *from,
    };
    stream.check_replica(from).map_err(|why| Refusal::Certificate(from, why))?;
    Ok(request)
}

/// The sender a request names (its id, read from `r`) and that sender's data-path key,
/// once the MAC `tag` over `signed` checks with it.
fn authenticate(
    keys: &[Option<Key>],
    r: &mut Reader<'_>,
    signed: &[u8],
    tag: &[u8],
) -> Result<(ReplicaId, Key), Refusal> {
    let from = r.u32().map_err(|e| Refusal::Malformed(e.to_string()))?;
    let Some(key) = keys.get(from as usize).copied().flatten() else {
        return Err(Refusal::UnknownReplica(from));
    };
    if !verify_mac(&key, &[signed], tag) {
        return Err(Refusal::BadMac(from));
    }
    Ok((from, key))
}

/// Authenticates and decodes a request body (what follows the length prefix, whose
/// bound [`read_request`] checked), with `keys` the data-path key of each replica by id.
/// Pure: the fuzz target `datapath_request` runs it on any bytes.
fn decode_request(keys: &[Option<Key>], body: &[u8]) -> Result<Request, Refusal> {
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    if !(CONTROL_BYTES_MIN..=CONTROL_BYTES_MAX).contains(&body.len()) {
        return Err(Refusal::Length(length));
    }
    let (signed, tag) = body.split_at(body.len() - MAC_BYTES);
    let malformed = |error: &dyn fmt::Display| Refusal::Malformed(error.to_string());
    let mut r = Reader::new(signed, "transfer request");
    let magic = r.take(4).map_err(|e| malformed(&e))?;
    if magic == CONTROL_MAGIC {
        let (from, key) = authenticate(keys, &mut r, signed, tag)?;
        let nonce: [u8; NONCE_BYTES] =
            r.take(NONCE_BYTES).map_err(|e| malformed(&e))?.try_into().expect("NONCE_BYTES");
        let rest = r.take(r.remaining()).map_err(|e| malformed(&e))?;
        let message = Message::from_bytes(rest).map_err(|e| malformed(&e))?;
        return Ok(Request::Control(ControlRequest { from, nonce, key, message }));
    }
    if magic == MEMBER_MAGIC {
        let (from, key) = authenticate(keys, &mut r, signed, tag)?;
        let nonce: [u8; NONCE_BYTES] =
            r.take(NONCE_BYTES).map_err(|e| malformed(&e))?.try_into().expect("NONCE_BYTES");
        if r.u8().map_err(|e| malformed(&e))? != MEMBER_VERSION {
            return Err(Refusal::Malformed("member query of an unknown version".into()));
        }
        r.finish().map_err(|e| malformed(&e))?;
        return Ok(Request::Member { from, nonce, key });
    }
    if !(REQUEST_BYTES_MIN..=REQUEST_BYTES_MAX).contains(&body.len()) {
        return Err(Refusal::Length(length));
    }
    if magic != REQUEST_MAGIC {
        return Err(Refusal::Malformed("not a transfer request (magic)".into()));
    }
    let (from, key) = authenticate(keys, &mut r, signed, tag)?;
    let round = RoundId {
        session: r.u64().map_err(|e| malformed(&e))?,
        round: r.u32().map_err(|e| malformed(&e))?,
    };
    let ticket = r.u64().map_err(|e| malformed(&e))?;
    let offset = r.u64().map_err(|e| malformed(&e))?;
    let nonce: [u8; NONCE_BYTES] =
        r.take(NONCE_BYTES).map_err(|e| malformed(&e))?.try_into().expect("NONCE_BYTES taken");
    let want = Want::decode(&mut r).map_err(|e| malformed(&e))?;
    r.finish().map_err(|e| malformed(&e))?;
    Ok(Request::Stream(Authenticated {
        request: StreamRequest { from, round, ticket, want, offset },
        nonce,
        key,
    }))
}

/// The framed answer to a control request: the messages, MACed over the request's
/// nonce.
fn encode_control_answer(key: &Key, nonce: &[u8; NONCE_BYTES], messages: &[Message]) -> Vec<u8> {
    let mut body = Vec::new();
    put_u32(&mut body, 0); // the length, set below
    for message in messages {
        let bytes = message.to_bytes();
        put_u32(&mut body, bytes.len() as u32);
        body.extend_from_slice(&bytes);
    }
    let code = mac(key, &[b"control-answer", nonce, &body[4..]]);
    body.extend_from_slice(&code);
    let length = body.len() - 4;
    body[..4].copy_from_slice(&(length as u32).to_le_bytes());
    body
}

fn serve_control(shared: &Shared, stream: &mut DataStream, peer: &str, control: ControlRequest) {
    let ControlRequest { from, nonce, key, message } = control;
    let answers = match shared.source.control(from, message) {
        Some(answers) => answers,
        None => {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            shared.refusal_log.warn(format_args!(
                "replica {}: refused a control message from {peer}: no seeder here",
                shared.me
            ));
            let _ = stream.write_all(&u32::MAX.to_le_bytes());
            return;
        }
    };
    assert!(answers.len() <= CONTROL_ANSWERS_MAX, "{} control answers", answers.len());
    let framed = encode_control_answer(&key, &nonce, &answers);
    if framed.len() - 4 > CONTROL_BYTES_MAX {
        log::error!(
            "replica {}: a control answer of {} bytes is over the bound",
            shared.me,
            framed.len()
        );
        let _ = stream.write_all(&u32::MAX.to_le_bytes());
        return;
    }
    shared.counters.controls.fetch_add(1, Ordering::Relaxed);
    let _ = stream.write_all(&framed);
}

fn serve_member(shared: &Shared, stream: &mut DataStream, key: &Key, nonce: &[u8; NONCE_BYTES]) {
    let Some(report) = shared.source.member_report() else {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        let _ = stream.write_all(&u32::MAX.to_le_bytes());
        return;
    };
    assert!(report.len() <= MEMBER_REPORT_BYTES_MAX, "a member report of {}", report.len());
    let mut body = Vec::with_capacity(4 + report.len() + MAC_BYTES);
    put_u32(&mut body, (report.len() + MAC_BYTES) as u32);
    body.extend_from_slice(&report);
    let code = mac(key, &[b"member-answer", nonce, &report]);
    body.extend_from_slice(&code);
    shared.counters.controls.fetch_add(1, Ordering::Relaxed);
    let _ = stream.write_all(&body);
}

fn encode_answer(key: &Key, nonce: &[u8; NONCE_BYTES], tag: u8, value: u64) -> [u8; ANSWER_BYTES] {
    let mut answer = [0u8; ANSWER_BYTES];
    answer[0] = tag;
    answer[1..9].copy_from_slice(&value.to_le_bytes());
    let code = mac(key, &[b"answer", nonce, &answer[..9]]);
    answer[9..].copy_from_slice(&code);
    answer
}

fn serve_connection(shared: &Shared, mut socket: TcpStream) {
    let peer = socket.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let _ = socket.set_nodelay(true);
    let request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let stream = match &shared.tls {
        None => DataStream::Plain(socket),
        Some(config) => {
            let _ = socket.set_read_timeout(Some(request_timeout));
            let mut first = [0u8; 1];
            let accepted = match socket.peek(&mut first) {
                Ok(1) if first[0] == tls::TLS_HANDSHAKE_RECORD => {
                    tls::accept(&mut socket, config.clone(), request_timeout).map_err(|error| {
                        format!("a connection whose TLS handshake failed: {error}")
                    })
                }
                Ok(1) => {
                    Err("a plaintext connection: TLS is on ([tls] in the cluster config)"
                        .to_string())
                }
                Ok(_) => Err("a connection closed before its TLS handshake".to_string()),
                Err(error) => Err(format!("a connection silent before its TLS handshake: {error}")),
            };
            match accepted {
                Ok(connection) => DataStream::Tls(Box::new(tls::Blocking::new(connection, socket))),
                Err(why) => {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    if !shared.is_stopping() {
                        shared
                            .refusal_log
                            .warn(format_args!("replica {}: refused {why} from {peer}", shared.me));
                    }
                    return;
                }
            }
        }
    };
    serve_stream(shared, stream, &peer);
}

/// Serves one connection's request, its TLS handshake (if any) done.
fn serve_stream(shared: &Shared, mut stream: DataStream, peer: &str) {
    let _ = stream.socket().set_read_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)));
    let _ = stream.socket().set_write_timeout(Some(Duration::from_millis(SEND_TIMEOUT_MS)));
    let Authenticated { request, nonce, key } = match read_request(shared, &mut stream) {
        Ok(Request::Stream(authenticated)) => authenticated,
        Ok(Request::Control(control)) => {
            serve_control(shared, &mut stream, peer, control);
            let _ = stream.socket().shutdown(Shutdown::Both);
            return;
        }
        Ok(Request::Member { nonce, key, .. }) => {
            serve_member(shared, &mut stream, &key, &nonce);
            let _ = stream.socket().shutdown(Shutdown::Both);
            return;
        }
        Err(refusal) => {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            if !shared.is_stopping() {
                shared.refusal_log.warn(format_args!(
                    "replica {}: refused a transfer request from {peer}: {refusal}",
                    shared.me
                ));
            }
            let mut refused = [0u8; ANSWER_BYTES];
            refused[0] = ANSWER_REFUSED;
            let _ = stream.write_all(&refused);
            return;
        }
    };
    #[cfg(test)]
    {
        let mut seen = shared.faults.requests.lock().expect("faults lock");
        if seen.len() == REQUESTS_SEEN_MAX {
            seen.pop_front();
        }
        seen.push_back(request);
    }
    let answer = |stream: &mut DataStream, tag: u8, value: u64| {
        stream.write_all(&encode_answer(&key, &nonce, tag, value))
    };
    let Some(_stream_slot) = Slot::take(&shared.streams, shared.streams_max) else {
        shared.counters.busy.fetch_add(1, Ordering::Relaxed);
        let _ = answer(&mut stream, ANSWER_BUSY, 0);
        return;
    };
    let refuse = |stream: &mut DataStream, why: String| {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        log::warn!("replica {}: refused {request:?} from {peer}: {why}", shared.me);
        let mut refused = [0u8; ANSWER_BYTES];
        refused[0] = ANSWER_REFUSED;
        let _ = stream.write_all(&refused);
    };
    let mut pin: Option<dura_snapshot::ReadPin> = None;
    let (payload, total) = match shared.source.open(&request) {
        Err(error) => return refuse(&mut stream, format!("the source failed: {error}")),
        Ok(Opened::Unavailable(Unavailable::Busy)) => {
            shared.counters.busy.fetch_add(1, Ordering::Relaxed);
            let _ = answer(&mut stream, ANSWER_BUSY, 0);
            return;
        }
        Ok(Opened::Unavailable(reason)) => {
            shared.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            let code = match reason {
                Unavailable::Truncated => 0,
                Unavailable::NotYet => 1,
                Unavailable::Busy => unreachable!("answered above"),
            };
            let _ = answer(&mut stream, ANSWER_UNAVAILABLE, code);
            return;
        }
        Ok(Opened::File { file, start, len }) => {
            // Held while streamed: a checkpoint removed meanwhile is not shrunk under
            // this stream (`dura_snapshot::ReadPin`).
            pin = dura_snapshot::ReadPin::of(&file).ok();
            (Payload::File { file, start }, len)
        }
        Ok(Opened::Memory(bytes)) => {
            let total = bytes.len() as u64;
            (Payload::Memory(bytes), total)
        }
    };
    debug_assert!(pin.is_none() || matches!(payload, Payload::File { .. }));
    if request.offset > total {
        let why = format!("offset {} is past the payload's {total} bytes", request.offset);
        return refuse(&mut stream, why);
    }
    if let Err(error) = answer(&mut stream, ANSWER_OK, total) {
        log::debug!("replica {}: transfer to {peer} ended before its answer: {error}", shared.me);
        return;
    }
    match send_payload(shared, &mut stream, payload, request.offset, total) {
        Ok(true) => {
            shared.counters.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {}
        Err(error) => {
            log::info!("replica {}: stream of {request:?} to {peer} cut: {error}", shared.me);
        }
    }
    let _ = stream.socket().shutdown(Shutdown::Both);
    drop(pin);
}

enum Payload {
    File { file: File, start: u64 },
    Memory(Arc<[u8]>),
}

/// Sends `offset..total` of `payload`, chunk by chunk, each after its tokens. `Ok(false)`
/// when the server stopped (or a test fault cut the stream) first.
fn send_payload(
    shared: &Shared,
    stream: &mut DataStream,
    payload: Payload,
    offset: u64,
    total: u64,
) -> io::Result<bool> {
    assert!(offset <= total, "checked before the answer");
    #[cfg(test)]
    let cut_after = shared.faults.cut_after_bytes.lock().expect("faults lock").take();
    let mut position = offset;
    while position < total {
        if shared.is_stopping() {
            return Ok(false);
        }
        let chunk = (total - position).min(CHUNK_BYTES as u64);
        #[cfg(test)]
        let chunk = match cut_after {
            Some(cut) if position - offset >= cut => {
                log::info!("replica {}: test fault: cut a stream at byte {position}", shared.me);
                return Ok(false);
            }
            Some(cut) => chunk.min(cut - (position - offset)),
            None => chunk,
        };
        let wait = shared.bucket.reserve(chunk);
        if !wait.is_zero() && !shared.pause(wait) {
            return Ok(false);
        }
        match &payload {
            Payload::File { file, start } => {
                let at = start
                    .checked_add(position)
                    .ok_or_else(|| io::Error::other("offset overflow"))?;
                send_file_region(shared, file, at, chunk, stream)?;
            }
            Payload::Memory(bytes) => {
                let from = position as usize;
                stream.write_all(&bytes[from..from + chunk as usize])?;
            }
        }
        position += chunk;
        shared.counters.bytes_sent.fetch_add(chunk, Ordering::Relaxed);
    }
    Ok(true)
}

/// Sends the `len` bytes of `file` at `offset` to `stream` with `sendfile(2)` (page
/// cache to socket, no copy through user space), or with `pread` and `write` where the
/// kernel refuses sendfile for this file, or through TLS. A file shorter than
/// `offset + len` is an `UnexpectedEof` error.
fn send_file_region(
    shared: &Shared,
    file: &File,
    offset: u64,
    len: u64,
    stream: &mut DataStream,
) -> io::Result<()> {
    assert!(len <= CHUNK_BYTES as u64, "one chunk at a time");
    let socket = match stream {
        DataStream::Plain(socket) => socket,
        // The bytes must be encrypted in user space.
        DataStream::Tls(_) => return copy_file_region(file, offset, len as usize, stream),
    };
    let mut at = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::other(format!("offset {offset} is over off_t")))?;
    let mut left = len as usize;
    #[cfg(test)]
    let refuse_sendfile = shared.faults.no_sendfile.load(Ordering::Relaxed);
    #[cfg(not(test))]
    let refuse_sendfile = false;
    while left > 0 {
        let sent = if refuse_sendfile {
            -1
        } else {
            // SAFETY: both descriptors stay open for the call (borrowed from `file` and
            // `socket`), and `at` is an exclusively borrowed `off_t` the kernel reads and
            // advances; sendfile touches no other user memory.
            unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut at, left) }
        };
        if sent > 0 {
            left -= sent as usize;
            continue;
        }
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended {left} bytes before the payload's end"),
            ));
        }
        let error = if refuse_sendfile {
            io::Error::from_raw_os_error(libc::EINVAL)
        } else {
            io::Error::last_os_error()
        };
        match error.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                shared.counters.sendfile_refused.fetch_add(1, Ordering::Relaxed);
                let at = u64::try_from(at).expect("sendfile keeps the offset non-negative");
                return copy_file_region(file, at, left, socket);
            }
            // EAGAIN after the socket's send timeout, EPIPE after a cut: the stream ends.
            _ => return Err(error),
        }
    }
    Ok(())
}

/// The fallback of [`send_file_region`]: `pread` into a buffer, `write` to the socket.
fn copy_file_region(
    file: &File,
    mut offset: u64,
    mut left: usize,
    socket: &mut impl Write,
) -> io::Result<()> {
    let mut buffer = vec![0u8; left.min(COPY_BUFFER_BYTES)];
    while left > 0 {
        let want = left.min(buffer.len());
        let read = file.read_at(&mut buffer[..want], offset)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended {left} bytes before the payload's end"),
            ));
        }
        socket.write_all(&buffer[..read])?;
        offset += read as u64;
        left -= read;
    }
    Ok(())
}

/// Buffer of the `pread`/`write` fallback.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------
// Client

/// One fetch from one seeder: who asks whom for what, from which byte.
#[derive(Clone)]
pub struct FetchRequest {
    /// The seeder asked.
    pub seeder: ReplicaId,
    /// Its transfer address.
    pub addr: SocketAddr,
    /// The asking replica.
    pub me: ReplicaId,
    /// The link key `me` shares with `seeder` ([`ReplicaKeys::link`]).
    pub link_key: Key,
    /// The leecher's round.
    pub round: RoundId,
    /// The leecher's ticket for the fetch.
    pub ticket: u64,
    /// What it fetches.
    pub want: Want,
    /// The first byte wanted (the bytes before it are held already).
    pub offset: u64,
    /// TLS with the seeder (the cluster's `[tls]`); None: plain TCP.
    pub tls: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for FetchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchRequest")
            .field("seeder", &self.seeder)
            .field("addr", &self.addr)
            .field("me", &self.me)
            .field("round", &self.round)
            .field("ticket", &self.ticket)
            .field("want", &self.want)
            .field("offset", &self.offset)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// How hard [`fetch`] tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Attempts in a row that bring no byte before the fetch fails (an attempt that
    /// brings bytes starts the count again, so a long transfer over a flaky link goes
    /// on while it makes progress). At least 1.
    pub attempts_max: u32,
    /// First wait before reconnecting after an attempt that brought nothing; doubled
    /// each time up to `backoff_ms_max`.
    pub backoff_ms_min: u64,
    /// Longest wait before reconnecting.
    pub backoff_ms_max: u64,
    /// Connecting gives up after this long.
    pub connect_timeout_ms: u64,
    /// A connection that brings no byte for this long is dropped (and resumed).
    pub idle_timeout_ms: u64,
    /// A seeder that answers Busy is asked again every [`BUSY_RETRY_MS`] for this long
    /// before the fetch ends with [`StreamOutcome::Busy`].
    pub busy_wait_ms_max: u64,
}

/// Wait between two requests to a seeder that answered Busy.
pub const BUSY_RETRY_MS: u64 = 100;

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            attempts_max: 5,
            backoff_ms_min: 20,
            backoff_ms_max: 1_000,
            connect_timeout_ms: 2_000,
            idle_timeout_ms: 10_000,
            busy_wait_ms_max: 30_000,
        }
    }
}

/// How far a fetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the payload held (the starting offset included).
    pub bytes: u64,
    /// The payload's total length.
    pub total: u64,
}

/// How a [`fetch`] ended.
#[derive(Debug)]
pub enum StreamOutcome {
    /// Every byte up to the total reached the sink; `bytes` is the total length.
    Done {
        /// The payload's total length.
        bytes: u64,
    },
    /// The seeder does not hold it (`Truncated` or `NotYet`).
    Unavailable(Unavailable),
    /// The seeder serves as many streams as it allows.
    Busy,
    /// The stop flag was raised.
    Stopped,
    /// The fetch failed; the error names the seeder.
    Failed(FetchError),
}

/// A failed fetch: from whom, and why.
#[derive(Debug, thiserror::Error)]
#[error("fetch from replica {seeder} at {addr}: {kind}")]
pub struct FetchError {
    /// The seeder.
    pub seeder: ReplicaId,
    /// Its transfer address.
    pub addr: SocketAddr,
    /// What went wrong.
    pub kind: FetchErrorKind,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchErrorKind {
    /// The seeder refused the request (bad MAC, unknown replica, its own error: its
    /// log says which).
    #[error("refused by the seeder (see its log)")]
    Refused,
    /// `attempts` attempts in a row brought no byte.
    #[error("{attempts} attempts in a row brought nothing; last: {last}")]
    Disconnected {
        /// Attempts made in a row.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// The payload's total length changed between two answers.
    #[error("the payload's length changed from {was} to {now} bytes between resumes")]
    TotalChanged {
        /// The length first answered.
        was: u64,
        /// The length answered now.
        now: u64,
    },
    /// The seeder's payload ends before the offset asked.
    #[error("offset {offset} is past the payload's {total} bytes")]
    OffsetPastEnd {
        /// The offset.
        offset: u64,
        /// The payload's length.
        total: u64,
    },
    /// The sink refused bytes.
    #[error("the sink failed: {0}")]
    Sink(io::Error),
}

/// Bytes a fetch reads from its socket at once.
pub const RECEIVE_BUFFER_BYTES: usize = 256 * 1024;

/// How often a blocked read wakes to see the stop flag.
pub const RECEIVE_POLL_MS: u64 = 100;

/// A fresh nonce: unique per call (a process-wide counter, the time and the process id,
/// through an HMAC so it reveals none of them).
fn fresh_nonce(key: &Key) -> [u8; NONCE_BYTES] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let code = mac(
        key,
        &[b"nonce", &count.to_le_bytes(), &time.to_le_bytes(), &std::process::id().to_le_bytes()],
    );
    code[..NONCE_BYTES].try_into().expect("a MAC is longer than a nonce")
}

/// The framed request for `request` from byte `offset`, under the data-path `key`.
fn encode_request(
    request: &FetchRequest,
    key: &Key,
    offset: u64,
    nonce: &[u8; NONCE_BYTES],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + REQUEST_BYTES_MAX);
    put_u32(&mut body, 0); // the length, set below
    body.extend_from_slice(&REQUEST_MAGIC);
    put_u32(&mut body, request.me);
    put_u64(&mut body, request.round.session);
    put_u32(&mut body, request.round.round);
    put_u64(&mut body, request.ticket);
    put_u64(&mut body, offset);
    body.extend_from_slice(nonce);
    request.want.encode(&mut body);
    let code = mac(key, &[&body[4..]]);
    body.extend_from_slice(&code);
    let length = body.len() - 4;
    assert!((REQUEST_BYTES_MIN..=REQUEST_BYTES_MAX).contains(&length), "request of {length}");
    body[..4].copy_from_slice(&(length as u32).to_le_bytes());
    body
}

/// The framed control request carrying `message` from `me`, under the data-path `key`.
fn encode_control_request(
    me: ReplicaId,
    key: &Key,
    nonce: &[u8; NONCE_BYTES],
    message: &Message,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    put_u32(&mut body, 0); // the length, set below
    body.extend_from_slice(&CONTROL_MAGIC);
    put_u32(&mut body, me);
    body.extend_from_slice(nonce);
    body.extend_from_slice(&message.to_bytes());
    let code = mac(key, &[&body[4..]]);
    body.extend_from_slice(&code);
    let length = body.len() - 4;
    assert!(length <= CONTROL_BYTES_MAX, "a control message of {length} bytes");
    body[..4].copy_from_slice(&(length as u32).to_le_bytes());
    body
}

/// Sends one state-transfer control `message` to `seeder` at `addr` on its transfer
/// port and returns the messages it answers with, authenticated with the data-path key
/// from `link_key`. One connection, one exchange; no retry (the leecher's protocol has
/// its own timeouts and asks again). Gives up after `timeout`.
pub fn control_call(
    addr: SocketAddr,
    me: ReplicaId,
    seeder: ReplicaId,
    link_key: &Key,
    message: &Message,
    timeout: Duration,
) -> Result<Vec<Message>, FetchError> {
    control_call_tls(addr, me, seeder, link_key, message, timeout, None)
}

/// [`control_call`], over TLS when `tls` is given (the cluster's `[tls]`: the seeder's
/// certificate must name it).
pub fn control_call_tls(
    addr: SocketAddr,
    me: ReplicaId,
    seeder: ReplicaId,
    link_key: &Key,
    message: &Message,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Vec<Message>, FetchError> {
    assert!(me != seeder, "a replica does not ask itself");
    let fail = |kind| FetchError { seeder, addr, kind };
    let broken = |error: io::Error| {
        fail(FetchErrorKind::Disconnected { attempts: 1, last: error.to_string() })
    };
    let key = datapath_key(link_key);
    let nonce = fresh_nonce(&key);
    let body = encode_control_request(me, &key, &nonce, message);
    let socket = TcpStream::connect_timeout(&addr, timeout).map_err(broken)?;
    socket.set_nodelay(true).map_err(broken)?;
    let mut stream = DataStream::dial(socket, tls, seeder, timeout).map_err(broken)?;
    stream.socket().set_read_timeout(Some(timeout)).map_err(broken)?;
    stream.socket().set_write_timeout(Some(timeout)).map_err(broken)?;
    stream.write_all(&body).map_err(broken)?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(broken)?;
    let length = u32::from_le_bytes(length);
    // `u32::MAX`: the server refused the control message; a request it could not
    // authenticate gets the stream answer `Refused`, whose first bytes read as a length
    // below a MAC's.
    if !(MAC_BYTES..=CONTROL_BYTES_MAX).contains(&(length as usize)) {
        return Err(fail(FetchErrorKind::Refused));
    }
    let mut answer = vec![0u8; length as usize];
    stream.read_exact(&mut answer).map_err(broken)?;
    decode_control_answer(&key, &nonce, &answer).map_err(|refusal| match refusal {
        None => fail(FetchErrorKind::Refused),
        Some(last) => fail(FetchErrorKind::Disconnected { attempts: 1, last }),
    })
}

/// Authenticates and decodes a control answer's body (what follows its length prefix)
/// to the request that carried `nonce`: the messages, or `Err(None)` when its MAC
/// fails, `Err(Some(why))` when it is malformed. Pure: the fuzz target
/// `datapath_control_answer` runs it on any bytes.
fn decode_control_answer(
    key: &Key,
    nonce: &[u8; NONCE_BYTES],
    answer: &[u8],
) -> Result<Vec<Message>, Option<String>> {
    if answer.len() < MAC_BYTES {
        return Err(None);
    }
    let (signed, tag) = answer.split_at(answer.len() - MAC_BYTES);
    if !verify_mac(key, &[b"control-answer", nonce, signed], tag) {
        return Err(None);
    }
    let mut r = Reader::new(signed, "control answer");
    let mut messages = Vec::new();
    let malformed = |e: &dyn fmt::Display| Some(format!("malformed answer: {e}"));
    while r.remaining() > 0 {
        if messages.len() == CONTROL_ANSWERS_MAX {
            return Err(malformed(&"too many messages"));
        }
        let size = r.u32().map_err(|e| malformed(&e))? as usize;
        let bytes = r.take(size).map_err(|e| malformed(&e))?;
        messages.push(Message::from_bytes(bytes).map_err(|e| malformed(&e))?);
    }
    Ok(messages)
}

/// Asks `peer` at `addr` for its member report (the member exchange, see the module
/// docs) and returns the report's bytes, authenticated with the data-path key from
/// `link_key`. One connection, one exchange, no retry; gives up after `timeout`.
pub fn member_call(
    addr: SocketAddr,
    me: ReplicaId,
    peer: ReplicaId,
    link_key: &Key,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Vec<u8>, FetchError> {
    assert!(me != peer, "a replica does not ask itself");
    let fail = |kind| FetchError { seeder: peer, addr, kind };
    let broken = |error: io::Error| {
        fail(FetchErrorKind::Disconnected { attempts: 1, last: error.to_string() })
    };
    let key = datapath_key(link_key);
    let nonce = fresh_nonce(&key);
    let mut body = Vec::with_capacity(64);
    put_u32(&mut body, 0); // the length, set below
    body.extend_from_slice(&MEMBER_MAGIC);
    put_u32(&mut body, me);
    body.extend_from_slice(&nonce);
    body.push(MEMBER_VERSION);
    let code = mac(&key, &[&body[4..]]);
    body.extend_from_slice(&code);
    let length = body.len() - 4;
    assert!((CONTROL_BYTES_MIN..=CONTROL_BYTES_MAX).contains(&length), "member query {length}");
    body[..4].copy_from_slice(&(length as u32).to_le_bytes());
    let socket = TcpStream::connect_timeout(&addr, timeout).map_err(broken)?;
    socket.set_nodelay(true).map_err(broken)?;
    let mut stream = DataStream::dial(socket, tls, peer, timeout).map_err(broken)?;
    stream.socket().set_read_timeout(Some(timeout)).map_err(broken)?;
    stream.socket().set_write_timeout(Some(timeout)).map_err(broken)?;
    stream.write_all(&body).map_err(broken)?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(broken)?;
    let length = u32::from_le_bytes(length) as usize;
    if !(MAC_BYTES..=MEMBER_REPORT_BYTES_MAX + MAC_BYTES).contains(&length) {
        return Err(fail(FetchErrorKind::Refused));
    }
    let mut answer = vec![0u8; length];
    stream.read_exact(&mut answer).map_err(broken)?;
    let (report, tag) = answer.split_at(answer.len() - MAC_BYTES);
    if !verify_mac(&key, &[b"member-answer", &nonce, report], tag) {
        return Err(fail(FetchErrorKind::Refused));
    }
    Ok(report.to_vec())
}

/// What one attempt came to.
enum Attempt {
    /// The fetch is over, one way or the other.
    Over(StreamOutcome),
    /// The connection broke; resume.
    Broken(String),
}

/// Fetches `request.want` from `request.seeder`, handing each byte to `sink` in order
/// from `request.offset`, and `progress` after each read. After a disconnect it
/// reconnects (with backoff while attempts bring nothing) and resumes from the last
/// byte the sink accepted; the total length must not change between answers. Returns
/// when the payload is complete, the seeder refuses, `stop` is raised (within about
/// [`RECEIVE_POLL_MS`] ms), or `options.attempts_max` attempts in a row brought nothing.
///
/// The bytes are not authenticated here: the caller validates them end to end (hash
/// against the f+1-agreed hash) before using them.
pub fn fetch(
    request: &FetchRequest,
    options: &FetchOptions,
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    progress: &mut dyn FnMut(Progress),
    stop: &AtomicBool,
) -> StreamOutcome {
    assert!(options.attempts_max >= 1, "a fetch makes at least one attempt");
    assert!(options.backoff_ms_min <= options.backoff_ms_max, "backoff bounds in order");
    assert!(request.me != request.seeder, "a replica does not fetch from itself");
    let key = datapath_key(&request.link_key);
    let fail = |kind| {
        StreamOutcome::Failed(FetchError { seeder: request.seeder, addr: request.addr, kind })
    };
    let mut position = request.offset;
    let mut total = None;
    let mut fruitless = 0u32;
    let mut backoff_ms = options.backoff_ms_min;
    let mut buffer = vec![0u8; RECEIVE_BUFFER_BYTES];
    // Since when the seeder has answered Busy, in a row.
    let mut busy_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Acquire) {
            return StreamOutcome::Stopped;
        }
        let before = position;
        let outcome = attempt(
            request,
            options,
            &key,
            &mut position,
            &mut total,
            &mut buffer,
            sink,
            progress,
            stop,
        );
        let last = match outcome {
            // The seeder serves its `transfer_streams_max` streams already (the general
            // protocol fetches a checkpoint and several pieces from one provider at once;
            // other leechers share it too): ask again once one ends, for a bounded time,
            // reporting the wait as progress, since the seeder answers (with a MAC).
            // Found on the lent machine with 7 replicas: every provider answered Busy to
            // its own leecher's extra streams and each round ended with no seeder left.
            Attempt::Over(StreamOutcome::Busy)
                if busy_since.get_or_insert_with(Instant::now).elapsed()
                    < Duration::from_millis(options.busy_wait_ms_max) =>
            {
                progress(Progress { bytes: position, total: total.unwrap_or(0) });
                let until = Instant::now() + Duration::from_millis(BUSY_RETRY_MS);
                while Instant::now() < until {
                    if stop.load(Ordering::Acquire) {
                        return StreamOutcome::Stopped;
                    }
                    thread::sleep(Duration::from_millis(RECEIVE_POLL_MS.min(BUSY_RETRY_MS)));
                }
                continue;
            }
            Attempt::Over(outcome) => return outcome,
            Attempt::Broken(last) => last,
        };
        busy_since = None;
        assert!(position >= before, "a fetch never goes back");
        if position > before {
            // Progress: resume at once, and the count of fruitless attempts restarts.
            fruitless = 0;
            backoff_ms = options.backoff_ms_min;
            log::debug!("fetch {request:?}: resuming at byte {position}: {last}");
            continue;
        }
        fruitless += 1;
        if fruitless >= options.attempts_max {
            return fail(FetchErrorKind::Disconnected { attempts: fruitless, last });
        }
        let until = Instant::now() + Duration::from_millis(backoff_ms);
        while Instant::now() < until {
            if stop.load(Ordering::Acquire) {
                return StreamOutcome::Stopped;
            }
            let left = until.saturating_duration_since(Instant::now());
            thread::sleep(left.min(Duration::from_millis(RECEIVE_POLL_MS)));
        }
        backoff_ms = (backoff_ms * 2).min(options.backoff_ms_max);
    }
}

/// One connection: request from `position`, answer, bytes to the sink.
#[allow(clippy::too_many_arguments)]
fn attempt(
    request: &FetchRequest,
    options: &FetchOptions,
    key: &Key,
    position: &mut u64,
    total: &mut Option<u64>,
    buffer: &mut [u8],
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    progress: &mut dyn FnMut(Progress),
    stop: &AtomicBool,
) -> Attempt {
    let failed = |kind| {
        Attempt::Over(StreamOutcome::Failed(FetchError {
            seeder: request.seeder,
            addr: request.addr,
            kind,
        }))
    };
    let connect = Duration::from_millis(options.connect_timeout_ms);
    let socket = match TcpStream::connect_timeout(&request.addr, connect) {
        Ok(socket) => socket,
        Err(error) => return Attempt::Broken(format!("connect: {error}")),
    };
    let _ = socket.set_nodelay(true);
    let mut stream = match DataStream::dial(socket, request.tls.as_ref(), request.seeder, connect) {
        Ok(stream) => stream,
        Err(error) => return Attempt::Broken(format!("TLS handshake: {error}")),
    };
    let _ = stream.socket().set_write_timeout(Some(connect));
    let _ = stream.socket().set_read_timeout(Some(Duration::from_millis(RECEIVE_POLL_MS)));
    let nonce = fresh_nonce(key);
    if let Err(error) = stream.write_all(&encode_request(request, key, *position, &nonce)) {
        return Attempt::Broken(format!("send the request: {error}"));
    }
    let idle = Duration::from_millis(options.idle_timeout_ms);
    let mut answer = [0u8; ANSWER_BYTES];
    let mut filled = 0;
    let mut last_byte = Instant::now();
    while filled < ANSWER_BYTES {
        match read_some(&mut stream, &mut answer[filled..], stop, &mut last_byte, idle) {
            Ok(Some(0)) if filled == 0 => return Attempt::Broken("closed before answering".into()),
            Ok(Some(0)) => return Attempt::Broken("closed inside the answer".into()),
            Ok(Some(n)) => filled += n,
            Ok(None) => return Attempt::Over(StreamOutcome::Stopped),
            Err(error) => return Attempt::Broken(format!("read the answer: {error}")),
        }
        // A refusal carries no MAC, and the seeder closes after its first byte.
        if answer[0] == ANSWER_REFUSED {
            return failed(FetchErrorKind::Refused);
        }
    }
    let answered = match decode_answer(key, &nonce, &answer) {
        Ok(Answer::Ok(length)) => length,
        Ok(Answer::Unavailable(why)) => return Attempt::Over(StreamOutcome::Unavailable(why)),
        Ok(Answer::Busy) => return Attempt::Over(StreamOutcome::Busy),
        Ok(Answer::Refused) => return failed(FetchErrorKind::Refused),
        Err(why) => return Attempt::Broken(why),
    };
    match *total {
        Some(was) if was != answered => {
            return failed(FetchErrorKind::TotalChanged { was, now: answered });
        }
        _ => *total = Some(answered),
    }
    if *position > answered {
        return failed(FetchErrorKind::OffsetPastEnd { offset: *position, total: answered });
    }
    progress(Progress { bytes: *position, total: answered });
    while *position < answered {
        let want = (answered - *position).min(buffer.len() as u64) as usize;
        match read_some(&mut stream, &mut buffer[..want], stop, &mut last_byte, idle) {
            Ok(Some(0)) => {
                return Attempt::Broken(format!("closed at byte {} of {answered}", *position));
            }
            Ok(Some(n)) => {
                if let Err(error) = sink(&buffer[..n]) {
                    return failed(FetchErrorKind::Sink(error));
                }
                *position += n as u64;
                progress(Progress { bytes: *position, total: answered });
            }
            Ok(None) => return Attempt::Over(StreamOutcome::Stopped),
            Err(error) => return Attempt::Broken(format!("read at byte {}: {error}", *position)),
        }
    }
    Attempt::Over(StreamOutcome::Done { bytes: answered })
}

/// A seeder's answer to a stream request, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The payload follows: its total length.
    Ok(u64),
    /// The seeder does not hold what was asked.
    Unavailable(Unavailable),
    /// The seeder serves as many streams as it may.
    Busy,
    /// The seeder refused the request (no MAC on this one).
    Refused,
}

/// Authenticates and decodes an answer to the request that carried `nonce`; an error
/// says why it is not one. Pure: the fuzz target `datapath_answer` runs it on any bytes.
fn decode_answer(
    key: &Key,
    nonce: &[u8; NONCE_BYTES],
    answer: &[u8; ANSWER_BYTES],
) -> Result<Answer, String> {
    if answer[0] == ANSWER_REFUSED {
        return Ok(Answer::Refused);
    }
    let (head, code) = answer.split_at(9);
    if !verify_mac(key, &[b"answer", nonce, head], code) {
        return Err("the answer failed its MAC".into());
    }
    let value = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    match (head[0], value) {
        (ANSWER_OK, length) => Ok(Answer::Ok(length)),
        (ANSWER_UNAVAILABLE, 0) => Ok(Answer::Unavailable(Unavailable::Truncated)),
        (ANSWER_UNAVAILABLE, 1) => Ok(Answer::Unavailable(Unavailable::NotYet)),
        (ANSWER_BUSY, _) => Ok(Answer::Busy),
        (tag, value) => Err(format!("an answer {tag}/{value} of no known kind")),
    }
}

/// One read into `buffer`, waiting through read timeouts: `Ok(None)` when `stop` was
/// raised, `Ok(Some(0))` at the end of the stream, an error when nothing came for
/// `idle`.
fn read_some(
    stream: &mut DataStream,
    buffer: &mut [u8],
    stop: &AtomicBool,
    last_byte: &mut Instant,
    idle: Duration,
) -> io::Result<Option<usize>> {
    assert!(!buffer.is_empty(), "a read of nothing");
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        match stream.read(buffer) {
            Ok(n) => {
                *last_byte = Instant::now();
                return Ok(Some(n));
            }
            Err(error)
                if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                if last_byte.elapsed() >= idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no byte for too long"));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// The data path's pure decoders, for the fuzz targets of `dura-fuzz` (feature
/// `fuzzing`). Each decodes like the server or the fetch does and, where the bytes are
/// accepted, checks that encoding what was decoded gives the same bytes back (panics
/// otherwise). Not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A request body as the server reads it (after the length prefix), with `keys` the
    /// data-path key of each replica by id. True when it was accepted.
    pub fn request(keys: &[Option<Key>], body: &[u8]) -> bool {
        match decode_request(keys, body) {
            Ok(Request::Stream(Authenticated { request, nonce, key })) => {
                let fetch = FetchRequest {
                    seeder: 0,
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    me: request.from,
                    link_key: [0; 32],
                    round: request.round,
                    ticket: request.ticket,
                    want: request.want,
                    offset: 0,
                    tls: None,
                };
                let encoded = encode_request(&fetch, &key, request.offset, &nonce);
                assert_eq!(&encoded[4..], body, "a stream request encodes back to its bytes");
                true
            }
            Ok(Request::Control(ControlRequest { from, nonce, key, message })) => {
                let encoded = encode_control_request(from, &key, &nonce, &message);
                assert_eq!(&encoded[4..], body, "a control request encodes back to its bytes");
                true
            }
            Ok(Request::Member { .. }) => {
                let fixed = 4 + 4 + NONCE_BYTES + 1 + MAC_BYTES;
                assert_eq!(body.len(), fixed, "a member query has one layout");
                true
            }
            Err(_) => false,
        }
    }

    /// An answer to a stream request that carried `nonce`. True when it was accepted.
    pub fn answer(key: &Key, nonce: &[u8; NONCE_BYTES], bytes: &[u8; ANSWER_BYTES]) -> bool {
        let Ok(answer) = decode_answer(key, nonce, bytes) else { return false };
        let (tag, value) = match answer {
            Answer::Refused => return true,
            Answer::Ok(length) => (ANSWER_OK, length),
            Answer::Unavailable(Unavailable::Truncated) => (ANSWER_UNAVAILABLE, 0),
            Answer::Unavailable(Unavailable::NotYet) => (ANSWER_UNAVAILABLE, 1),
            Answer::Unavailable(Unavailable::Busy) => unreachable!("never decoded"),
            Answer::Busy => (ANSWER_BUSY, u64::from_le_bytes(bytes[1..9].try_into().unwrap())),
        };
        assert_eq!(&encode_answer(key, nonce, tag, value), bytes, "an answer encodes back");
        true
    }

    /// The body of a stream request for `want` from `from` (seed inputs).
    pub fn sample_request(key: &Key, from: ReplicaId, want: Want, offset: u64) -> Vec<u8> {
        let fetch = FetchRequest {
            seeder: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            me: from,
            link_key: [0; 32],
            round: RoundId { session: 7, round: 2 },
            ticket: 3,
            want,
            offset: 0,
            tls: None,
        };
        encode_request(&fetch, key, offset, &[5; NONCE_BYTES])[4..].to_vec()
    }

    /// The body of a control request carrying `message` from `from` (seed inputs).
    pub fn sample_control_request(key: &Key, from: ReplicaId, message: &Message) -> Vec<u8> {
        encode_control_request(from, key, &[6; NONCE_BYTES], message)[4..].to_vec()
    }

    /// An answer with `tag` (`0` Ok, `1` Unavailable, `2` Busy, `3` Refused) and
    /// `value` (seed inputs).
    pub fn sample_answer(
        key: &Key,
        nonce: &[u8; NONCE_BYTES],
        tag: u8,
        value: u64,
    ) -> [u8; ANSWER_BYTES] {
        encode_answer(key, nonce, tag, value)
    }

    /// The body of a control answer carrying `messages` (seed inputs).
    pub fn sample_control_answer(
        key: &Key,
        nonce: &[u8; NONCE_BYTES],
        messages: &[Message],
    ) -> Vec<u8> {
        encode_control_answer(key, nonce, messages)[4..].to_vec()
    }

    /// A control answer's body (after its length prefix) to the request that carried
    /// `nonce`. True when it was accepted.
    pub fn control_answer(key: &Key, nonce: &[u8; NONCE_BYTES], body: &[u8]) -> bool {
        let Ok(messages) = decode_control_answer(key, nonce, body) else { return false };
        let encoded = encode_control_answer(key, nonce, &messages);
        assert_eq!(&encoded[4..], body, "a control answer encodes back to its bytes");
        true
    }
}

#[cfg(test)]
mod tests;
