//! TCP transport: length-prefixed frames, a hello frame naming the peer, one reader and
//! one writer thread per connection.
//!
//! Wire format of every frame: `u32` little-endian body length, then the body. A length
//! above the configured `frame_bytes_max` drops the connection (with a log line) before
//! anything is allocated for it.
//!
//! The first frame on every connection is a hello: `b"DURA"`, a kind byte (replica or
//! client) and the sender's id as `u64` little-endian. Bodies after it are opaque here:
//! the protocol's codec authenticates them (HMAC) with the key of the named sender, so a
//! lying hello only gets its frames rejected. An accepted connection reads its hello on
//! its own thread, within [`HELLO_TIMEOUT_MS`], and a listener holds at most
//! `connections_max` accepted connections at once (see [`Network::serve`]).
//!
//! Writes are batched: each connection has one writer thread draining a bounded queue
//! into a buffered stream and flushing when the queue runs empty, so many small frames
//! leave in few system calls (and, with TLS, in few records).
//!
//! With TLS ([`super::tls`]) a listener runs the handshake before the hello, on the
//! connection's own thread and within the same [`HELLO_TIMEOUT_MS`]; a replica link's
//! certificate must name the replica its hello claims. A plaintext peer of a TLS
//! listener is sent one plaintext frame, [`TLS_REQUIRED_NOTICE`], and closed; a
//! plaintext process that receives it records the refusal ([`Network::refusals`]) so
//! its client can fail with a clear error instead of a timeout.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use rustls::{ClientConfig, ServerConfig};

use super::tls;

/// Frames queued for one connection's writer at most.
pub const WRITE_QUEUE_FRAMES_MAX: usize = 4_096;
/// Bytes buffered by a writer before it writes to the socket anyway.
pub const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// Frames kept per replica while no connection to it is open.
pub const PARKED_FRAMES_MAX: usize = 1_024;
/// How long a sender waits on a full writer queue before dropping the frame.
pub const SEND_BLOCK_MS_MAX: u64 = 2_000;

/// How long an accepted connection has to send its hello before it is closed. The hello
/// is read on the connection's own thread, so a silent peer holds one connection slot
/// for this long and never delays another peer's accept.
pub const HELLO_TIMEOUT_MS: u64 = 5_000;

const HELLO_MAGIC: &[u8; 4] = b"DURA";
/// Bytes of a hello frame's body.
pub const HELLO_BYTES: usize = 4 + 1 + 8;

/// The one plaintext frame a TLS listener sends a plaintext peer before it closes the
/// connection.
pub const TLS_REQUIRED_NOTICE: &[u8] = b"DURA-TLS-REQUIRED: this replica accepts TLS only";

/// A connected socket, plain or after a finished TLS handshake.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over the socket; the handshake is done.
    Tls(TcpStream, Box<rustls::Connection>),
}

impl Transport {
    fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(socket) | Transport::Tls(socket, _) => socket,
        }
    }
}

enum ReadHalf {
    Plain(TcpStream),
    Tls(tls::Reader),
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Plain(socket) => socket.read(buf),
            ReadHalf::Tls(reader) => reader.read(buf),
        }
    }
}

enum WriteHalf {
    Plain(Arc<TcpStream>),
    Tls(tls::Writer),
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(socket) => (&**socket).write(buf),
            WriteHalf::Tls(writer) => writer.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(socket) => (&**socket).flush(),
            WriteHalf::Tls(writer) => writer.flush(),
        }
    }
}

/// Who is on the other end of a connection, from its hello frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A replica, by id.
    Replica(u32),
    /// A client, by id.
    Client(u64),
}

impl Peer {
    /// The hello frame's body that names this peer: `b"DURA"`, a kind byte (`0`
    /// replica, `1` client) and the id as a little-endian `u64`.
    pub fn encode(self) -> [u8; HELLO_BYTES] {
        let mut hello = [0u8; HELLO_BYTES];
        hello[..4].copy_from_slice(HELLO_MAGIC);
        let (kind, id) = match self {
            Peer::Replica(id) => (0u8, u64::from(id)),
            Peer::Client(id) => (1u8, id),
        };
        hello[4] = kind;
        hello[5..].copy_from_slice(&id.to_le_bytes());
        hello
    }

    /// The peer a hello frame's body names; `None` for anything but a well-formed hello
    /// (a replica id must fit a `u32`).
    pub fn decode(body: &[u8]) -> Option<Peer> {
        if body.len() != HELLO_BYTES || &body[..4] != HELLO_MAGIC {
            return None;
        }
        let id = u64::from_le_bytes(body[5..13].try_into().ok()?);
        match body[4] {
            0 => u32::try_from(id).ok().map(Peer::Replica),
            1 => Some(Peer::Client(id)),
            _ => None,
        }
    }
}

/// Reads one frame into `body`, reusing its allocation: on `Ok(Some(length))` the frame
/// is `body[..length]`. The buffer only grows (bytes past `length` are stale), so a
/// steady stream of frames costs no allocation and no zeroing. `Ok(None)` on a clean
/// end of stream before the frame started.
pub fn read_frame(
    reader: &mut impl Read,
    body: &mut Vec<u8>,
    frame_bytes_max: u32,
) -> io::Result<Option<usize>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_le_bytes(length);
    if length > frame_bytes_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {length} bytes is over the bound of {frame_bytes_max}"),
        ));
    }
    let length = length as usize;
    if body.len() < length {
        body.resize(length, 0);
    }
    reader.read_exact(&mut body[..length])?;
    Ok(Some(length))
}

/// Writes one frame (length prefix and body) to `writer`, without flushing.
pub fn write_frame(writer: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let length = u32::try_from(body.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
    writer.write_all(&length.to_le_bytes())?;
    writer.write_all(body)
}

/// What a [`FrameSink`] wants done with the connection after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkVerdict {
    /// Keep reading.
    Continue,
    /// The frame was malformed or failed authentication: drop the connection.
    Reject,
    /// The receiving stage is gone: stop reading.
    Closed,
}

/// Called by a connection's reader thread for every frame, with the peer named by the
/// connection's hello. This is where the net stage decodes and authenticates, in
/// parallel across connections, before handing the result to a stage.
pub type FrameSink = Arc<dyn Fn(Peer, &[u8]) -> SinkVerdict + Send + Sync>;

/// A frame received from a peer (see [`channel_sink`]).
#[derive(Debug)]
pub struct Inbound {
    /// Who sent it (from the connection's hello).
    pub from: Peer,
    /// The frame body.
    pub body: Vec<u8>,
}

/// A sink that forwards raw frames into `channel`.
pub fn channel_sink(channel: Sender<Inbound>) -> FrameSink {
    Arc::new(move |from, body: &[u8]| match channel.send(Inbound { from, body: body.to_vec() }) {
        Ok(()) => SinkVerdict::Continue,
        Err(_) => SinkVerdict::Closed,
    })
}

/// The sending side of one connection.
#[derive(Debug, Clone)]
struct Link {
    generation: u64,
    queue: Sender<Arc<[u8]>>,
    stream: Arc<TcpStream>,
}

/// Every open connection of a process, by peer; shared by the stages that send.
#[derive(Debug)]
pub struct Network {
    links: Mutex<HashMap<Peer, Link>>,
    /// Frames for replicas that had no connection when sent, delivered when one opens
    /// (a peer that is still starting, or reconnecting). Oldest dropped past the bound.
    parked: Mutex<HashMap<Peer, std::collections::VecDeque<Arc<[u8]>>>>,
    generation: AtomicU64,
    stopping: AtomicBool,
    frame_bytes_max: u32,
    me: Peer,
    /// TLS for the connections this process dials; None: plain TCP.
    dial_tls: Option<Arc<ClientConfig>>,
    /// Why a replica refused this process (it requires TLS, or the TLS handshake
    /// failed on a certificate or protocol error), by replica; cleared when a frame
    /// from it arrives. At most one entry per replica.
    refusals: Mutex<HashMap<Peer, String>>,
}

impl Network {
    /// A network with no connection yet, for the process named `me`, on plain TCP.
    pub fn new(me: Peer, frame_bytes_max: u32) -> Arc<Self> {
        Self::with_tls(me, frame_bytes_max, None)
    }

    /// A network whose dialed connections use TLS with `dial_tls` (None: plain TCP).
    /// Listeners choose for themselves ([`Network::serve_counted`]).
    pub fn with_tls(
        me: Peer,
        frame_bytes_max: u32,
        dial_tls: Option<Arc<ClientConfig>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            links: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            frame_bytes_max,
            me,
            dial_tls,
            refusals: Mutex::new(HashMap::new()),
        })
    }

    /// Replicas that refused this process and why (see [`TLS_REQUIRED_NOTICE`]), for a
    /// clear error: a cluster with TLS on, a client without, or certificates from
    /// another CA.
    pub fn refusals(&self) -> Vec<(Peer, String)> {
        let refusals = self.refusals.lock().expect("network lock poisoned");
        let mut list: Vec<_> = refusals.iter().map(|(p, why)| (*p, why.clone())).collect();
        list.sort_by_key(|(peer, _)| format!("{peer:?}"));
        list
    }

    fn record_refusal(&self, peer: Peer, why: String) {
        let mut refusals = self.refusals.lock().expect("network lock poisoned");
        if refusals.get(&peer) != Some(&why) {
            log::error!("{:?}: {why}", self.me);
        }
        refusals.insert(peer, why);
    }

    /// Whether [`Network::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Queues `frame` for `peer`. Returns false (and drops the frame) when its queue
    /// stayed full for [`SEND_BLOCK_MS_MAX`], or there is no connection to a client.
    /// A frame for a replica with no connection is parked (at most
    /// [`PARKED_FRAMES_MAX`] per replica, oldest dropped first) and sent when a
    /// connection to it opens.
    pub fn send(&self, peer: Peer, frame: Arc<[u8]>) -> bool {
        let queue = {
            let links = self.links.lock().expect("network lock poisoned");
            match links.get(&peer) {
                Some(link) => link.queue.clone(),
                None => {
                    if matches!(peer, Peer::Replica(_)) && !self.is_stopping() {
                        let mut parked = self.parked.lock().expect("network lock poisoned");
                        let frames = parked.entry(peer).or_default();
                        if frames.len() >= PARKED_FRAMES_MAX {
                            frames.pop_front();
                        }
                        frames.push_back(frame);
                        return true;
                    }
                    return false;
                }
            }
        };
        match queue.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Disconnected(_)) => false,
            Err(TrySendError::Full(frame)) => {
                if queue.send_timeout(frame, Duration::from_millis(SEND_BLOCK_MS_MAX)).is_ok() {
                    true
                } else {
                    log::warn!("{:?}: send queue to {peer:?} stayed full; frame dropped", self.me);
                    false
                }
            }
        }
    }

    /// Whether a connection to `peer` is registered.
    pub fn is_connected(&self, peer: Peer) -> bool {
        self.links.lock().expect("network lock poisoned").contains_key(&peer)
    }

    /// Closes every connection; reader and writer threads end soon after.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.parked.lock().expect("network lock poisoned").clear();
        let links: Vec<Link> =
            self.links.lock().expect("network lock poisoned").drain().map(|(_, l)| l).collect();
        for link in links {
            let _ = link.stream.shutdown(Shutdown::Both);
        }
    }

    /// Registers `transport` (hello already exchanged) as the link to `peer`, replacing
    /// an older one, and starts its reader and writer threads. Frames read go to
    /// `inbound`. Returns a receiver that is disconnected when the connection ends.
    pub fn attach(
        self: &Arc<Self>,
        peer: Peer,
        transport: Transport,
        inbound: FrameSink,
    ) -> io::Result<Receiver<()>> {
        self.attach_holding(peer, transport, inbound, ())
    }

    /// [`Network::attach`], with `held` kept alive by the reader thread until the
    /// connection ends (an accepted connection's [`ConnectionSlot`]).
    fn attach_holding(
        self: &Arc<Self>,
        peer: Peer,
        transport: Transport,
        inbound: FrameSink,
        held: impl Send + 'static,
    ) -> io::Result<Receiver<()>> {
        transport.socket().set_nodelay(true)?;
        transport.socket().set_read_timeout(None)?;
        transport.socket().set_write_timeout(None)?;
        let is_tls = matches!(transport, Transport::Tls(..));
        let (stream, read_half, write_half) = match transport {
            Transport::Plain(stream) => {
                let read_half = ReadHalf::Plain(stream.try_clone()?);
                let stream = Arc::new(stream);
                (stream.clone(), read_half, WriteHalf::Plain(stream))
            }
            Transport::Tls(stream, connection) => {
                let (reader, writer) = tls::split(*connection, &stream)?;
                (Arc::new(stream), ReadHalf::Tls(reader), WriteHalf::Tls(writer))
            }
        };
        let (queue_tx, queue_rx) = bounded::<Arc<[u8]>>(WRITE_QUEUE_FRAMES_MAX);
        let (closed_tx, closed_rx) = bounded::<()>(0);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut links = self.links.lock().expect("network lock poisoned");
            if self.is_stopping() {
                let _ = stream.shutdown(Shutdown::Both);
                return Err(io::Error::other("network is stopping"));
            }
            // Frames parked while there was no connection go first. The link lock is
            // held, so no newer frame can overtake them.
            if let Some(frames) = self.parked.lock().expect("network lock poisoned").remove(&peer) {
                for frame in frames {
                    let _ = queue_tx.try_send(frame);
                }
            }
            if let Some(old) =
                links.insert(peer, Link { generation, queue: queue_tx, stream: stream.clone() })
            {
                let _ = old.stream.shutdown(Shutdown::Both);
            }
        }
        let writer_stream = stream.clone();
        let me = self.me;
        thread::Builder::new().name(format!("net-w-{peer:?}")).spawn(move || {
            let _closed = closed_tx;
            if let Err(error) = run_writer(write_half, &queue_rx) {
                log::debug!("{me:?}: writer to {peer:?} ended: {error}");
            }
            let _ = writer_stream.shutdown(Shutdown::Both);
        })?;
        let network = self.clone();
        let frame_bytes_max = self.frame_bytes_max;
        thread::Builder::new().name(format!("net-r-{peer:?}")).spawn(move || {
            let _held = held;
            let mut reader = BufReader::with_capacity(WRITE_BUFFER_BYTES, read_half);
            let mut body = Vec::new();
            let mut first = true;
            loop {
                match read_frame(&mut reader, &mut body, frame_bytes_max) {
                    Ok(Some(length)) if first && !is_tls && &body[..length] == TLS_REQUIRED_NOTICE => {
                        network.record_refusal(
                            peer,
                            format!(
                                "{peer:?} requires TLS: its cluster config has a [tls] section, \
                                 and the one this process read has none"
                            ),
                        );
                        break;
                    }
                    Ok(Some(length)) => match inbound(peer, &body[..length]) {
                        SinkVerdict::Continue => {
                            if first {
                                first = false;
                                network.clear_refusal(peer);
                            }
                        }
                        SinkVerdict::Reject => {
                            log::warn!("{me:?}: dropping connection from {peer:?}: a frame failed to decode or authenticate");
                            break;
                        }
                        SinkVerdict::Closed => break,
                    },
                    Ok(None) => break,
                    Err(error) => {
                        if error.kind() == io::ErrorKind::InvalidData {
                            log::warn!("{me:?}: dropping connection from {peer:?}: {error}");
                        } else {
                            log::debug!("{me:?}: connection from {peer:?} ended: {error}");
                        }
                        break;
                    }
                }
            }
            let _ = stream.shutdown(Shutdown::Both);
            network.detach(peer, generation);
        })?;
        Ok(closed_rx)
    }

    fn clear_refusal(&self, peer: Peer) {
        self.refusals.lock().expect("network lock poisoned").remove(&peer);
    }

    fn detach(&self, peer: Peer, generation: u64) {
        let mut links = self.links.lock().expect("network lock poisoned");
        if links.get(&peer).is_some_and(|l| l.generation == generation) {
            links.remove(&peer);
        }
    }

    /// Accepts connections on `listener` until [`Network::stop`]; each one's hello is
    /// read on a thread of its own (within [`HELLO_TIMEOUT_MS`]), so a slow or silent
    /// peer never holds up the next accept. Those whose peer `accept` allows are
    /// attached. At most `connections_max` accepted connections are open at once,
    /// counting those still in their hello: one past it is closed at once, with a log
    /// line, so handshake threads and connection threads are bounded too.
    pub fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        connections_max: usize,
        accept: impl Fn(Peer) -> bool + Send + Sync + 'static,
        inbound: FrameSink,
    ) -> io::Result<thread::JoinHandle<()>> {
        self.serve_counted(listener, connections_max, accept, inbound, Arc::default(), None)
    }

    /// [`Network::serve`], counting the open connections in `open` (which must start at
    /// 0 and is not shared with another listener), for the replica's metrics, and with
    /// TLS when `tls` is given: each connection's handshake comes before its hello, a
    /// plaintext peer is refused, and a replica's certificate must name the replica
    /// its hello claims.
    pub fn serve_counted(
        self: &Arc<Self>,
        listener: TcpListener,
        connections_max: usize,
        accept: impl Fn(Peer) -> bool + Send + Sync + 'static,
        inbound: FrameSink,
        open: Arc<AtomicUsize>,
        tls: Option<Arc<ServerConfig>>,
    ) -> io::Result<thread::JoinHandle<()>> {
        assert!(connections_max > 0, "a listener must accept at least one connection");
        assert_eq!(open.load(Ordering::Relaxed), 0, "a fresh connection count");
        let network = self.clone();
        let local = listener.local_addr()?;
        let accept = Arc::new(accept);
        let mut refused_logged_at: Option<std::time::Instant> = None;
        thread::Builder::new().name(format!("net-accept-{}", local.port())).spawn(move || {
            for stream in listener.incoming() {
                if network.is_stopping() {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Some(slot) = ConnectionSlot::take(&open, connections_max) else {
                    // One line per second at most: a flood of refusals must not become
                    // a flood of log lines.
                    if refused_logged_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        log::warn!(
                            "{:?}: refused a connection on {local} from {}: {connections_max} connections open (connections_max)",
                            network.me,
                            stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
                        );
                        refused_logged_at = Some(std::time::Instant::now());
                    }
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                };
                let handshaker = network.clone();
                let accept = accept.clone();
                let inbound = inbound.clone();
                let tls = tls.clone();
                let spawned = thread::Builder::new()
                    .name(format!("net-hello-{}", local.port()))
                    .spawn(move || {
                        handshaker.handshake(stream, local, &*accept, inbound, slot, tls)
                    });
                if let Err(error) = spawned {
                    log::warn!("{:?}: no thread for a connection on {local}: {error}", network.me);
                }
            }
        })
    }

    /// Reads an accepted connection's hello and attaches it, on the connection's own
    /// thread. `slot` is released when the connection ends, or here if it never opens.
    fn handshake(
        self: &Arc<Self>,
        mut stream: TcpStream,
        local: SocketAddr,
        accept: &(dyn Fn(Peer) -> bool + Send + Sync),
        inbound: FrameSink,
        slot: ConnectionSlot,
        tls: Option<Arc<ServerConfig>>,
    ) {
        let timeout = Duration::from_millis(HELLO_TIMEOUT_MS);
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let from = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let mut body = Vec::new();
        let (transport, peer) = match tls {
            None => {
                let peer = match read_frame(&mut stream, &mut body, HELLO_BYTES as u32) {
                    Ok(Some(length)) => Peer::decode(&body[..length]),
                    _ => None,
                };
                (Transport::Plain(stream), peer)
            }
            Some(config) => {
                let mut first = [0u8; 1];
                match stream.peek(&mut first) {
                    Ok(1) if first[0] == tls::TLS_HANDSHAKE_RECORD => {}
                    Ok(1) => {
                        log::warn!(
                            "{:?}: refused a plaintext connection on {local} from {from}: TLS is on ([tls] in the cluster config)",
                            self.me
                        );
                        let _ = write_frame(&mut stream, TLS_REQUIRED_NOTICE);
                        let _ = stream.shutdown(Shutdown::Write);
                        return;
                    }
                    // Closed, or silent for the whole hello timeout.
                    _ => return,
                }
                let connection = match tls::accept(&mut stream, config, timeout) {
                    Ok(connection) => connection,
                    Err(error) => {
                        log::warn!(
                            "{:?}: refused a connection on {local} from {from}: TLS handshake failed: {error}",
                            self.me
                        );
                        return;
                    }
                };
                let mut connection = Box::new(connection);
                let peer = {
                    let mut tls_stream = tls::Blocking::new(&mut *connection, &mut stream);
                    match read_frame(&mut tls_stream, &mut body, HELLO_BYTES as u32) {
                        Ok(Some(length)) => Peer::decode(&body[..length]),
                        _ => None,
                    }
                };
                if let Some(Peer::Replica(id)) = peer
                    && let Err(why) = tls::check_peer_is_replica(&connection, id)
                {
                    log::warn!(
                        "{:?}: refused a connection on {local} from {from}: its hello claims replica {id}, but its certificate {why}",
                        self.me
                    );
                    return;
                }
                (Transport::Tls(stream, connection), peer)
            }
        };
        let Some(peer) = peer.filter(|p| accept(*p)) else {
            log::warn!(
                "{:?}: refused a connection on {local} from {from} with a bad or missing hello",
                self.me
            );
            return;
        };
        if let Err(error) = self.attach_holding(peer, transport, inbound, slot) {
            log::debug!("{:?}: could not attach {peer:?}: {error}", self.me);
        }
    }

    /// Wakes a thread blocked in [`Network::serve`] on `addr` so it sees the stop flag.
    pub fn wake_listener(addr: SocketAddr) {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
    }

    /// Dials `peer` at `addr` as `me` (with TLS when this network has it: the peer's
    /// certificate must name `peer`), sends the hello. One attempt. A failed TLS
    /// handshake is an error of kind `InvalidData` (a certificate or protocol error)
    /// or of the socket's.
    pub fn dial(&self, peer: Peer, addr: SocketAddr) -> io::Result<Transport> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_nodelay(true)?;
        let Some(config) = &self.dial_tls else {
            write_frame(&mut stream, &self.me.encode())?;
            return Ok(Transport::Plain(stream));
        };
        let Peer::Replica(id) = peer else {
            return Err(io::Error::other("TLS connections are dialed to replicas only"));
        };
        let timeout = Duration::from_millis(HELLO_TIMEOUT_MS);
        let mut connection = tls::connect(&mut stream, config.clone(), id, timeout)?;
        {
            let mut tls_stream = tls::Blocking::new(&mut connection, &mut stream);
            write_frame(&mut tls_stream, &self.me.encode())?;
            tls_stream.flush()?;
        }
        Ok(Transport::Tls(stream, Box::new(connection)))
    }

    /// Keeps a connection to `peer` at `addr` open until [`Network::stop`]: dials,
    /// attaches, waits for it to close, redials with exponential backoff.
    pub fn keep_dialing(
        self: &Arc<Self>,
        peer: Peer,
        addr: SocketAddr,
        inbound: FrameSink,
    ) -> io::Result<thread::JoinHandle<()>> {
        let network = self.clone();
        thread::Builder::new().name(format!("net-dial-{peer:?}")).spawn(move || {
            let mut backoff_ms = 10;
            while !network.is_stopping() {
                let dialed = network.dial(peer, addr);
                if let Err(error) = &dialed
                    && error.kind() == io::ErrorKind::InvalidData
                {
                    network.record_refusal(
                        peer,
                        format!(
                            "TLS handshake with {peer:?} at {addr} failed: {error} (is its \
                             certificate signed by this config's [tls] ca_file, and does it \
                             name {peer:?} as dura-replica-<id>?)"
                        ),
                    );
                }
                match dialed.and_then(|s| network.attach(peer, s, inbound.clone())) {
                    Ok(closed) => {
                        backoff_ms = 10;
                        let _ = closed.recv();
                    }
                    Err(_) => {
                        thread::sleep(Duration::from_millis(backoff_ms));
                        backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
                    }
                }
            }
        })
    }
}

/// One of a listener's `connections_max` places, held from accept until the connection
/// ends; dropping it gives the place back.
#[derive(Debug)]
struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl ConnectionSlot {
    /// A place if fewer than `connections_max` are taken.
    fn take(open: &Arc<AtomicUsize>, connections_max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
            (taken < connections_max).then_some(taken + 1)
        })
        .ok()
        .map(|_| Self { open: open.clone() })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let before = self.open.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a connection slot was given back twice");
    }
}

fn run_writer(stream: WriteHalf, queue: &Receiver<Arc<[u8]>>) -> io::Result<()> {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream);
    while let Ok(frame) = queue.recv() {
        write_frame(&mut writer, &frame)?;
        while let Ok(frame) = queue.try_recv() {
            write_frame(&mut writer, &frame)?;
        }
        writer.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &[7u8; 100]).expect("in memory");
        let mut body = Vec::new();
        let error = read_frame(&mut &wire[..], &mut body, 99).expect_err("over the bound");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(body.is_empty());
        assert_eq!(read_frame(&mut &wire[..], &mut body, 100).expect("fits"), Some(100));
        assert_eq!(body, vec![7u8; 100]);
        // A shorter frame reuses the buffer: only its prefix is the frame.
        let mut short = Vec::new();
        write_frame(&mut short, &[1, 2, 3]).expect("in memory");
        assert_eq!(read_frame(&mut &short[..], &mut body, 100).expect("fits"), Some(3));
        assert_eq!(&body[..3], &[1, 2, 3]);
        assert_eq!(read_frame(&mut &[][..], &mut body, 100).expect("clean end"), None);
    }

    #[test]
    fn hello_decodes_only_well_formed_input() {
        for peer in [Peer::Replica(3), Peer::Client(u64::MAX)] {
            assert_eq!(Peer::decode(&peer.encode()), Some(peer));
        }
        let mut bad = Peer::Replica(1).encode();
        bad[4] = 9;
        assert_eq!(Peer::decode(&bad), None);
        assert_eq!(Peer::decode(b"DURA"), None);
    }

    #[test]
    fn frames_flow_both_ways_and_a_huge_frame_drops_the_connection() {
        let server = Network::new(Peer::Replica(0), 1024);
        let client = Network::new(Peer::Client(9), 1024);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (server_tx, server_rx) = bounded(16);
        let (client_tx, client_rx) = bounded(16);
        server
            .serve(listener, 16, |p| matches!(p, Peer::Client(_)), channel_sink(server_tx))
            .expect("serve");
        let stream = client.dial(Peer::Replica(0), addr).expect("dial");
        let closed =
            client.attach(Peer::Replica(0), stream, channel_sink(client_tx)).expect("attach");
        assert!(client.send(Peer::Replica(0), Arc::from(&b"ping"[..])));
        let got = server_rx.recv_timeout(Duration::from_secs(10)).expect("ping arrives");
        assert_eq!(got.from, Peer::Client(9));
        assert_eq!(got.body, b"ping");
        assert!(server.send(Peer::Client(9), Arc::from(&b"pong"[..])));
        let got = client_rx.recv_timeout(Duration::from_secs(10)).expect("pong arrives");
        assert_eq!(got.body, b"pong");
        // Over the server's bound: it drops the connection.
        assert!(client.send(Peer::Replica(0), Arc::from(vec![0u8; 2048])));
        assert!(closed.recv_timeout(Duration::from_secs(10)).is_err());
        client.stop();
        server.stop();
        Network::wake_listener(addr);
    }

    #[test]
    fn frames_for_a_replica_not_yet_connected_are_delivered_when_it_connects() {
        let sender = Network::new(Peer::Replica(1), 1024);
        let receiver = Network::new(Peer::Replica(0), 1024);
        assert!(sender.send(Peer::Replica(0), Arc::from(&b"early"[..])), "parked, not dropped");
        assert!(
            !sender.send(Peer::Client(5), Arc::from(&b"x"[..])),
            "client frames are not parked"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (rx_tx, rx) = bounded(16);
        receiver
            .serve(listener, 16, |p| p == Peer::Replica(1), channel_sink(rx_tx))
            .expect("serve");
        let (unused_tx, _unused_rx) = bounded(16);
        sender.keep_dialing(Peer::Replica(0), addr, channel_sink(unused_tx)).expect("dial");
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("parked frame arrives");
        assert_eq!((got.from, got.body.as_slice()), (Peer::Replica(1), &b"early"[..]));
        assert!(sender.send(Peer::Replica(0), Arc::from(&b"later"[..])));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("arrives").body, b"later");
        sender.stop();
        receiver.stop();
        Network::wake_listener(addr);
    }

    /// A server that takes clients, and a client of it with id `client`: the client's
    /// frames come out of the returned receiver.
    fn serve_clients(connections_max: usize) -> (Arc<Network>, SocketAddr, Receiver<Inbound>) {
        let server = Network::new(Peer::Replica(0), 1024);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (server_tx, server_rx) = bounded(16);
        server
            .serve(
                listener,
                connections_max,
                |p| matches!(p, Peer::Client(_)),
                channel_sink(server_tx),
            )
            .expect("serve");
        (server, addr, server_rx)
    }

    /// Dials `addr` as client `id`; `None` when the server closed the connection before
    /// the hello was written (a refusal can be that quick).
    fn try_connect_client(id: u64, addr: SocketAddr) -> Option<(Arc<Network>, Receiver<()>)> {
        let client = Network::new(Peer::Client(id), 1024);
        let stream = client.dial(Peer::Replica(0), addr).ok()?;
        let (unused_tx, _unused_rx) = bounded(16);
        let closed = client.attach(Peer::Replica(0), stream, channel_sink(unused_tx)).ok()?;
        Some((client, closed))
    }

    fn connect_client(id: u64, addr: SocketAddr) -> (Arc<Network>, Receiver<()>) {
        try_connect_client(id, addr).expect("connect")
    }

    #[test]
    fn a_peer_that_never_sends_its_hello_does_not_hold_up_the_next_one() {
        let (server, addr, server_rx) = serve_clients(16);
        let started = std::time::Instant::now();
        let _silent = TcpStream::connect(addr).expect("connect without a hello");
        let (client, _closed) = connect_client(7, addr);
        assert!(client.send(Peer::Replica(0), Arc::from(&b"served"[..])));
        let got = server_rx.recv_timeout(Duration::from_secs(10)).expect("frame arrives");
        assert_eq!((got.from, got.body.as_slice()), (Peer::Client(7), &b"served"[..]));
        // Before the fix the accept thread sat in the silent peer's hello until its
        // timeout; now the second client is served long before it.
        assert!(
            started.elapsed() < Duration::from_millis(HELLO_TIMEOUT_MS / 2),
            "served after {:?}",
            started.elapsed()
        );
        client.stop();
        server.stop();
        Network::wake_listener(addr);
    }

    #[test]
    fn connections_past_the_bound_are_refused_until_one_closes() {
        let (server, addr, server_rx) = serve_clients(2);
        let (first, _first_closed) = connect_client(1, addr);
        let silent = TcpStream::connect(addr).expect("a second connection, still in its hello");
        assert!(first.send(Peer::Replica(0), Arc::from(&b"one"[..])));
        assert_eq!(server_rx.recv_timeout(Duration::from_secs(10)).expect("arrives").body, b"one");
        // The third is over the bound: the server closes it without reading.
        if let Some((third, third_closed)) = try_connect_client(3, addr) {
            assert!(
                third_closed.recv_timeout(Duration::from_secs(10)).is_err(),
                "closed by the server"
            );
            third.stop();
        }
        assert!(server_rx.try_recv().is_err());
        // A place frees when a connection ends; a new client gets it.
        drop(silent);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let body = loop {
            assert!(std::time::Instant::now() < deadline, "no place freed");
            let Some((fourth, closed)) = try_connect_client(4, addr) else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            assert!(fourth.send(Peer::Replica(0), Arc::from(&b"four"[..])));
            if let Ok(got) = server_rx.recv_timeout(Duration::from_millis(500)) {
                fourth.stop();
                break got.body;
            }
            let _ = closed.recv_timeout(Duration::from_millis(100));
            fourth.stop();
        };
        assert_eq!(body, b"four");
        for network in [first, server] {
            network.stop();
        }
        Network::wake_listener(addr);
    }

    /// Replica `id`'s TLS settings from a CA's certificate for `names`.
    fn replica_tls(ca: &tls::testing::TestCa, id: u32, names: &[String]) -> tls::ReplicaTls {
        let dir = ca.ca_file.parent().expect("CA dir");
        let mut config = super::super::ClusterConfig::local_with_ports(
            1,
            super::super::Mode::Bft,
            super::super::LogMode::None,
            dir,
            &[7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007],
        );
        ca.secure(&mut config);
        let (cert, key) = ca.issue(&format!("custom-{id}"), names);
        config.replicas[id as usize].tls_cert_file = Some(cert);
        config.replicas[id as usize].tls_key_file = Some(key);
        tls::ReplicaTls::load(&config, id).expect("loads").expect("TLS is on")
    }

    /// Replica 0 listening with TLS for replicas; its frames come out of the receiver.
    fn serve_replicas_with_tls(
        ca: &tls::testing::TestCa,
    ) -> (Arc<Network>, SocketAddr, Receiver<Inbound>) {
        let server_tls = replica_tls(ca, 0, &[tls::replica_name(0)]);
        let server = Network::with_tls(Peer::Replica(0), 1024, Some(server_tls.dial.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (server_tx, server_rx) = bounded(16);
        server
            .serve_counted(
                listener,
                16,
                |p| matches!(p, Peer::Replica(_)),
                channel_sink(server_tx),
                Arc::default(),
                Some(server_tls.peers.clone()),
            )
            .expect("serve");
        (server, addr, server_rx)
    }

    #[test]
    fn a_mutual_tls_link_carries_frames_both_ways_and_batches_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls::testing::TestCa::new(dir.path(), "ca");
        let (server, addr, server_rx) = serve_replicas_with_tls(&ca);
        let client_tls = replica_tls(&ca, 1, &[tls::replica_name(1)]);
        let client = Network::with_tls(Peer::Replica(1), 1024, Some(client_tls.dial));
        let (client_tx, client_rx) = bounded(4096);
        client.keep_dialing(Peer::Replica(0), addr, channel_sink(client_tx)).expect("dial");
        // Many small frames, queued at once: they leave batched, and all arrive in order.
        for i in 0..1000u32 {
            assert!(client.send(Peer::Replica(0), Arc::from(&i.to_le_bytes()[..])));
        }
        for i in 0..1000u32 {
            let got = server_rx.recv_timeout(Duration::from_secs(10)).expect("frame arrives");
            assert_eq!((got.from, got.body.as_slice()), (Peer::Replica(1), &i.to_le_bytes()[..]));
        }
        // A frame larger than a TLS record and than a write chunk, back the other way.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !server.is_connected(Peer::Replica(1)) {
            assert!(std::time::Instant::now() < deadline, "the link registers");
            thread::sleep(Duration::from_millis(5));
        }
        let big: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        assert!(server.send(Peer::Replica(1), Arc::from(big.clone())));
        let got = client_rx.recv_timeout(Duration::from_secs(10)).expect("frame arrives");
        assert_eq!((got.from, got.body), (Peer::Replica(0), big));
        client.stop();
        server.stop();
        Network::wake_listener(addr);
    }

    #[test]
    fn a_peer_with_a_certificate_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls::testing::TestCa::new(dir.path(), "ca");
        let other = tls::testing::TestCa::new(dir.path(), "other-ca");
        let (server, addr, server_rx) = serve_replicas_with_tls(&ca);
        // Its own CA trusts the server, but the server does not trust its certificate.
        let stranger_tls = replica_tls(&other, 1, &[tls::replica_name(1)]);
        let stranger = Network::with_tls(Peer::Replica(1), 1024, Some(stranger_tls.dial));
        let outcome = stranger.dial(Peer::Replica(0), addr);
        let error = outcome.expect_err("the server's certificate is from an unknown CA");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        // Trusting the right CA but holding a certificate of the other: the server ends
        // the handshake and nothing is delivered.
        let mixed = {
            let mut config = super::super::ClusterConfig::local_with_ports(
                1,
                super::super::Mode::Bft,
                super::super::LogMode::None,
                dir.path(),
                &[7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007],
            );
            other.secure(&mut config);
            config.tls.as_mut().expect("on").ca_file = ca.ca_file.clone();
            tls::ReplicaTls::load(&config, 1).expect("loads").expect("on")
        };
        let impostor = Network::with_tls(Peer::Replica(1), 1024, Some(mixed.dial));
        if let Ok(transport) = impostor.dial(Peer::Replica(0), addr) {
            let (unused_tx, _unused_rx) = bounded(16);
            let closed = impostor
                .attach(Peer::Replica(0), transport, channel_sink(unused_tx))
                .expect("attach");
            let _ = impostor.send(Peer::Replica(0), Arc::from(&b"forged"[..]));
            assert!(closed.recv_timeout(Duration::from_secs(10)).is_err(), "closed by the server");
        }
        assert!(server_rx.recv_timeout(Duration::from_millis(300)).is_err(), "nothing delivered");
        for network in [stranger, impostor, server] {
            network.stop();
        }
        Network::wake_listener(addr);
    }

    #[test]
    fn a_replica_certificate_must_name_the_replica_its_hello_claims() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls::testing::TestCa::new(dir.path(), "ca");
        let (server, addr, server_rx) = serve_replicas_with_tls(&ca);
        // Replica 2's certificate, a hello claiming replica 1.
        let tls_2 = replica_tls(&ca, 2, &[tls::replica_name(2)]);
        let liar = Network::with_tls(Peer::Replica(1), 1024, Some(tls_2.dial));
        if let Ok(transport) = liar.dial(Peer::Replica(0), addr) {
            let (unused_tx, _unused_rx) = bounded(16);
            let closed =
                liar.attach(Peer::Replica(0), transport, channel_sink(unused_tx)).expect("attach");
            let _ = liar.send(Peer::Replica(0), Arc::from(&b"as replica 1"[..]));
            assert!(closed.recv_timeout(Duration::from_secs(10)).is_err(), "closed by the server");
        }
        assert!(server_rx.recv_timeout(Duration::from_millis(300)).is_err(), "nothing delivered");
        // A certificate naming only another replica is refused at load.
        let mut config = super::super::ClusterConfig::local_with_ports(
            1,
            super::super::Mode::Bft,
            super::super::LogMode::None,
            dir.path(),
            &[7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007],
        );
        ca.secure(&mut config);
        config.replicas[1].tls_cert_file = config.replicas[2].tls_cert_file.clone();
        config.replicas[1].tls_key_file = config.replicas[2].tls_key_file.clone();
        let error = tls::ReplicaTls::load(&config, 1).expect_err("another replica's certificate");
        assert!(error.to_string().contains("replica[1].tls_cert_file"), "{error}");
        assert!(error.to_string().contains("dura-replica-1"), "{error}");
        liar.stop();
        server.stop();
        Network::wake_listener(addr);
    }

    #[test]
    fn a_plaintext_client_of_a_tls_listener_learns_that_tls_is_required() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls::testing::TestCa::new(dir.path(), "ca");
        let (server, addr, server_rx) = serve_replicas_with_tls(&ca);
        let plain = Network::new(Peer::Replica(1), 1024);
        let (unused_tx, _unused_rx) = bounded(16);
        plain.keep_dialing(Peer::Replica(0), addr, channel_sink(unused_tx)).expect("dial");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let refusals = loop {
            let refusals = plain.refusals();
            if !refusals.is_empty() {
                break refusals;
            }
            assert!(std::time::Instant::now() < deadline, "no refusal recorded");
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(refusals[0].0, Peer::Replica(0));
        assert!(refusals[0].1.contains("requires TLS"), "{}", refusals[0].1);
        assert!(server_rx.try_recv().is_err(), "nothing delivered");
        plain.stop();
        server.stop();
        Network::wake_listener(addr);
    }
}
