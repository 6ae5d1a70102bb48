//! The client library: ordered operations against a running cluster.
//!
//! One [`Client`] holds one connection per replica and a driver thread that runs many
//! protocol client sessions ([`crate::protocol::Client`], one outstanding request each)
//! over them. Every call takes an idle session (or opens a new one, up to
//! `sessions_max`), so many threads can share one `Client` and their requests are
//! ordered concurrently. [`Client::invoke`] blocks; [`Client::submit`] returns a
//! [`Pending`] to wait on later or poll. [`Client::submit_blocking`] is for a request
//! the service may answer much later (a blocked read): no request timeout, and its
//! session stays with the returned [`Blocking`], which can send a follow-up from the
//! same client id while the request waits (the service's cancel of it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use dura_core::rng::{GOLDEN_GAMMA, mix64};

use super::net::{Network, Peer, SinkVerdict};
use super::{ClusterConfig, RuntimeError};
use crate::protocol::{Client as ProtocolClient, ClientAction, ClientEvent, Mode, Reply};

/// Requests queued for the driver at most.
pub const COMMAND_QUEUE_MAX: usize = 4_096;
/// How long [`Client::connect`] waits for connections before returning anyway.
pub const CONNECT_WAIT_MAX: Duration = Duration::from_secs(3);
/// Replies queued from the network for the driver at most.
pub const REPLY_QUEUE_MAX: usize = 16_384;

/// How a [`Client`] behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The first client id; sessions use consecutive ids from it. Ids must not be
    /// reused by another client of the same cluster (sequence numbers restart at 1).
    pub client_id_base: u64,
    /// Most sessions (concurrent requests).
    pub sessions_max: usize,
    /// A request not completed in this time fails with [`RuntimeError::Timeout`].
    pub request_timeout: Duration,
}

impl ClientOptions {
    /// Defaults: a random client id base, 256 sessions, 60 s timeout.
    pub fn new() -> Self {
        Self {
            client_id_base: random_client_id_base(),
            sessions_max: 256,
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A client id base unlikely to collide with another process's: time and process id
/// mixed, with the low 24 bits clear for session indices.
pub fn random_client_id_base() -> u64 {
    let nanos =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let x = nanos ^ (u64::from(std::process::id()) << 40) ^ GOLDEN_GAMMA;
    mix64(x) & !super::replica::CLIENT_SESSION_MASK
}

/// What a [`Pending`] resolves to.
type Outcome = Result<Vec<u8>, RuntimeError>;

/// The one-shot slot a request's result travels through, from the driver to the
/// caller. A mutex and a condition variable, not a channel: a channel's receive spins
/// and yields before it sleeps, which with one blocked caller per concurrent request
/// (hundreds in the bench) cost more CPU than the replicas' hashing on a small machine.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
enum SlotState {
    /// No result yet.
    #[default]
    Waiting,
    /// The result, not taken yet.
    Done(Outcome),
    /// The result was taken by [`Pending::try_get`].
    Taken,
}

/// The driver's end of a [`Slot`]: delivers the result once. Dropped without
/// delivering (the driver stopped), it resolves the slot to [`RuntimeError::Shutdown`].
#[derive(Debug)]
struct Completion(Arc<Slot>);

impl Completion {
    fn send(self, outcome: Outcome) {
        self.resolve(outcome);
    }

    fn resolve(&self, outcome: Outcome) {
        let mut state = self.0.state.lock().expect("completion slot lock");
        if matches!(*state, SlotState::Waiting) {
            *state = SlotState::Done(outcome);
            self.0.ready.notify_all();
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.resolve(Err(RuntimeError::Shutdown));
    }
}

struct Invoke {
    operation: Vec<u8>,
    done: Completion,
    /// The [`Blocking`] handle that holds the session, for a blocking request, and
    /// where the driver writes its client id and sequence number when it sends it.
    hold: Option<(u64, RequestIds)>,
}

/// Where the driver writes a blocking request's client id and sequence number.
type RequestIds = Arc<OnceLock<(u64, u64)>>;

/// What a [`Client`] asks its driver.
enum Command {
    /// Order a request (on any session, or a held one for a blocking request).
    Invoke(Invoke),
    /// Send `make(sequence of the held request)` from the session `hold` holds.
    FollowUp { hold: u64, make: FollowUpFn, done: Completion },
    /// The [`Blocking`] handle `hold` is gone: its session is free again, or retired
    /// when a request of it still waits.
    Release { hold: u64 },
}

/// Builds a follow-up's operation from the sequence number of the request it follows.
type FollowUpFn = Box<dyn FnOnce(u64) -> Vec<u8> + Send>;

/// A submitted request; its result arrives once.
#[derive(Debug)]
pub struct Pending {
    slot: Arc<Slot>,
}

impl Pending {
    fn new() -> (Pending, Completion) {
        let slot = Arc::new(Slot::default());
        (Pending { slot: slot.clone() }, Completion(slot))
    }

    /// Blocks until the result arrives ([`RuntimeError::Shutdown`] if the client
    /// stopped first, or the result was already taken by [`Pending::try_get`]).
    pub fn wait(self) -> Result<Vec<u8>, RuntimeError> {
        let mut state = self.slot.state.lock().expect("completion slot lock");
        while matches!(*state, SlotState::Waiting) {
            state = self.slot.ready.wait(state).expect("completion slot lock");
        }
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(outcome) => outcome,
            SlotState::Waiting | SlotState::Taken => Err(RuntimeError::Shutdown),
        }
    }

    /// Waits up to `timeout` for the result: `None` if it has not arrived by then (the
    /// request goes on); the result once, as [`Pending::try_get`] gives it.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<Vec<u8>, RuntimeError>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.slot.state.lock().expect("completion slot lock");
        while matches!(*state, SlotState::Waiting) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.slot.ready.wait_timeout(state, left).expect("completion slot lock").0;
        }
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(outcome) => Some(outcome),
            SlotState::Waiting | SlotState::Taken => Some(Err(RuntimeError::Shutdown)),
        }
    }

    /// The result if it has arrived (once; later calls and [`Pending::wait`] then
    /// return [`RuntimeError::Shutdown`]).
    pub fn try_get(&self) -> Option<Result<Vec<u8>, RuntimeError>> {
        let mut state = self.slot.state.lock().expect("completion slot lock");
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Waiting => {
                *state = SlotState::Waiting;
                None
            }
            SlotState::Done(outcome) => Some(outcome),
            SlotState::Taken => Some(Err(RuntimeError::Shutdown)),
        }
    }
}

/// A connection to the cluster; cheap to share between threads (`&Client` or clone).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: Sender<Command>,
    network: Arc<Network>,
    next_hold: AtomicU64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Invoke(invoke) => {
                write!(f, "Invoke(hold {:?})", invoke.hold.as_ref().map(|(hold, _)| hold))
            }
            Command::FollowUp { hold, .. } => write!(f, "FollowUp(hold {hold})"),
            Command::Release { hold } => write!(f, "Release(hold {hold})"),
        }
    }
}

/// A request submitted with [`Client::submit_blocking`]: it waits for its result as
/// long as the caller does, and holds its session (its client id) until dropped, so a
/// follow-up goes out under the same client id.
#[derive(Debug)]
pub struct Blocking {
    inner: Arc<Inner>,
    hold: u64,
    ids: RequestIds,
    pending: Pending,
}

impl Blocking {
    /// The request's client id and sequence number, once it has been sent.
    pub fn ids(&self) -> Option<(u64, u64)> {
        self.ids.get().copied()
    }

    /// Waits up to `timeout` for the result (see [`Pending::wait_timeout`]).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<Vec<u8>, RuntimeError>> {
        self.pending.wait_timeout(timeout)
    }

    /// The result if it has arrived (see [`Pending::try_get`]).
    pub fn try_get(&self) -> Option<Result<Vec<u8>, RuntimeError>> {
        self.pending.try_get()
    }

    /// Sends `make(s)`, where `s` is this request's sequence number, from the same
    /// client id while this request still waits (the protocol's
    /// [`follow_up`](crate::protocol::Client::follow_up)), or after it if it has
    /// completed meanwhile. The follow-up has the runtime's request timeout. If this
    /// request was still queued for a session, neither is sent: both resolve to
    /// [`RuntimeError::Withdrawn`].
    pub fn follow_up(&self, make: impl FnOnce(u64) -> Vec<u8> + Send + 'static) -> Pending {
        let (pending, done) = Pending::new();
        let command = Command::FollowUp { hold: self.hold, make: Box::new(make), done };
        if let Err(error) = self.inner.commands.send(command)
            && let Command::FollowUp { done, .. } = error.0
        {
            done.send(Err(RuntimeError::Shutdown));
        }
        pending
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        let _ = self.inner.commands.send(Command::Release { hold: self.hold });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.network.stop();
    }
}

impl Client {
    /// Connects to every replica of `config` (in the background; requests wait for
    /// enough connections) with default options.
    pub fn connect(config: &ClusterConfig) -> Result<Client, RuntimeError> {
        Self::connect_with(config, ClientOptions::new())
    }

    /// Like [`Client::connect`] with `options`.
    pub fn connect_with(
        config: &ClusterConfig,
        options: ClientOptions,
    ) -> Result<Client, RuntimeError> {
        config.validate()?;
        assert!(options.sessions_max > 0, "a client needs at least one session");
        let network = Network::with_tls(
            Peer::Client(options.client_id_base),
            config.frame_bytes_max,
            super::tls::load_client(config)?,
        );
        let (reply_tx, reply_rx) = bounded::<Reply>(REPLY_QUEUE_MAX);
        let sink: super::net::FrameSink = Arc::new(move |from, body: &[u8]| {
            let Peer::Replica(replica) = from else { return SinkVerdict::Reject };
            match Reply::from_bytes(body) {
                Ok(reply) if reply.replica == replica => match reply_tx.send(reply) {
                    Ok(()) => SinkVerdict::Continue,
                    Err(_) => SinkVerdict::Closed,
                },
                _ => SinkVerdict::Reject,
            }
        });
        for replica in &config.replicas {
            network
                .keep_dialing(Peer::Replica(replica.id), replica.client_addr()?, sink.clone())
                .map_err(|error| RuntimeError::Net {
                operation: "start dialer",
                peer: replica.host.clone(),
                error,
            })?;
        }
        let (commands, command_rx) = bounded(COMMAND_QUEUE_MAX);
        // Crash mode only: BFT clients broadcast every request already, so every replica
        // holds it and the new leader orders it without the client's help.
        let stall_after =
            (config.mode == Mode::Crash).then(|| Duration::from_millis(config.leader_timeout_ms));
        let mut driver = Driver {
            config: config.clone(),
            options,
            network: network.clone(),
            sessions: Vec::new(),
            idle: Vec::new(),
            by_client_id: HashMap::new(),
            session_floor_ms: 0,
            held: HashMap::new(),
            waiting: VecDeque::new(),
            next_client_id: 0,
            open_sessions: 0,
            regency_hint: 0,
            actions: Vec::new(),
            stall_after,
            last_reply_at: Instant::now(),
        };
        driver.next_client_id = driver.options.client_id_base;
        thread::Builder::new()
            .name("client-driver".into())
            .spawn(move || driver.run(&command_rx, &reply_rx))
            .map_err(|error| RuntimeError::Net {
                operation: "start client driver",
                peer: String::new(),
                error,
            })?;
        let client =
            Client { inner: Arc::new(Inner { commands, network, next_hold: AtomicU64::new(1) }) };
        // Give the dialers a moment so the first request does not wait for a
        // retransmission: all replicas, or all but f after a short grace period.
        let started = Instant::now();
        let n = config.n();
        loop {
            let connected = client.connected_replicas(n);
            let waited = started.elapsed();
            if connected == n as usize
                || (connected >= (n - config.f) as usize && waited >= Duration::from_millis(300))
                || waited >= CONNECT_WAIT_MAX
            {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(client)
    }

    /// Submits `operation` and returns at once.
    pub fn submit(&self, operation: Vec<u8>) -> Pending {
        let (pending, done) = Pending::new();
        self.send_invoke(Invoke { operation, done, hold: None });
        pending
    }

    /// Submits `operation`, which the service may answer much later (it defers it),
    /// and returns at once. Unlike [`Client::submit`] no request timeout applies: the
    /// caller waits as long as it wants ([`Blocking::wait_timeout`]) and may then send a
    /// follow-up under the same client id ([`Blocking::follow_up`]). The session stays
    /// with the handle until it is dropped; dropped while a request of it waits, the
    /// session is retired (its client id never used again).
    pub fn submit_blocking(&self, operation: Vec<u8>) -> Blocking {
        let (pending, done) = Pending::new();
        let hold = self.inner.next_hold.fetch_add(1, Ordering::Relaxed);
        let ids = Arc::new(OnceLock::new());
        self.send_invoke(Invoke { operation, done, hold: Some((hold, ids.clone())) });
        Blocking { inner: self.inner.clone(), hold, ids, pending }
    }

    fn send_invoke(&self, invoke: Invoke) {
        if let Err(error) = self.inner.commands.send(Command::Invoke(invoke))
            && let Command::Invoke(invoke) = error.0
        {
            invoke.done.send(Err(RuntimeError::Shutdown));
        }
    }

    /// Orders `operation` and waits for its result (f+1 matching replies, in both modes:
    /// in crash mode they mean f+1 logs hold it).
    pub fn invoke(&self, operation: Vec<u8>) -> Result<Vec<u8>, RuntimeError> {
        self.submit(operation).wait()
    }

    /// Why replicas refused this client (TLS required, or a certificate error), by
    /// replica id; empty when none did.
    pub fn refusals(&self) -> Vec<(u32, String)> {
        self.inner
            .network
            .refusals()
            .into_iter()
            .filter_map(|(peer, why)| match peer {
                Peer::Replica(id) => Some((id, why)),
                Peer::Client(_) => None,
            })
            .collect()
    }

    /// Number of replicas with an open connection.
    pub fn connected_replicas(&self, n: u32) -> usize {
        (0..n).filter(|id| self.inner.network.is_connected(Peer::Replica(*id))).count()
    }
}

struct Session {
    protocol: ProtocolClient,
    /// The callers waiting for the outstanding requests (at most two: a blocking request
    /// and its follow-up), oldest first.
    waiting: Vec<Waiting>,
    /// The [`Blocking`] handle holding this session, and its request's sequence.
    held: Option<(u64, u64)>,
    retransmit_at: Option<Instant>,
    /// The outstanding request was already broadcast early because no reply came
    /// from anyone (see [`Driver::stall_after`]).
    stall_resent: bool,
    /// The cluster refused one of its requests as expired: retired once idle.
    expired: bool,
}

/// A caller waiting for one outstanding request.
struct Waiting {
    sequence: u64,
    done: Completion,
    started: Instant,
    /// The runtime's request timeout applies (not to a blocking request).
    timed: bool,
}

struct Driver {
    config: ClusterConfig,
    options: ClientOptions,
    network: Arc<Network>,
    sessions: Vec<Option<Session>>,
    idle: Vec<usize>,
    by_client_id: HashMap<u64, usize>,
    /// The lowest session time the cluster said it accepts (an expired session's
    /// refusal): new sessions start at it if this machine's clock is behind it.
    session_floor_ms: u64,
    /// [`Blocking`] handle -> the session it holds.
    held: HashMap<u64, usize>,
    waiting: VecDeque<Invoke>,
    next_client_id: u64,
    open_sessions: usize,
    actions: Vec<ClientAction>,
    /// The highest regency any session learned from an authentic reply: every session
    /// starts its next request there, so a leader learned once is remembered by all.
    regency_hint: u64,
    /// Crash mode: when no reply at all has come for this long (the cluster's
    /// `leader_timeout_ms`, after which followers replace a silent leader), every
    /// request outstanding for as long is broadcast once, before its retransmission
    /// timer (`request_timeout_ms`). A crash-mode request goes to the leader alone, so
    /// after the leader died or stopped no other replica holds it, and the new leader,
    /// elected in about `leader_timeout_ms`, would otherwise have nothing to order until
    /// the clients' timers fired. Replies stopping for every session at once is what a
    /// dead leader looks like; a merely slow one still answers someone, so a loaded
    /// cluster sees no extra traffic.
    stall_after: Option<Duration>,
    /// When the last reply (of any session) arrived.
    last_reply_at: Instant,
}

/// Whether a request started at `started` is stalled at `now`: outstanding for
/// `stall_after` or more while no reply of any session came for as long.
fn stalled(now: Instant, started: Instant, last_reply_at: Instant, stall_after: Duration) -> bool {
    now.saturating_duration_since(started) >= stall_after
        && now.saturating_duration_since(last_reply_at) >= stall_after
}

impl Driver {
    fn run(&mut self, commands: &Receiver<Command>, replies: &Receiver<Reply>) {
        // Timers (retransmission, request timeout) are checked every TIMER_CHECK, not on
        // every event: the check walks all sessions.
        const TIMER_CHECK: Duration = Duration::from_millis(10);
        let mut commands_open = true;
        let mut timers_due_at = Instant::now() + TIMER_CHECK;
        loop {
            let wait = timers_due_at.saturating_duration_since(Instant::now());
            if commands_open {
                select! {
                    recv(commands) -> command => match command {
                        Ok(Command::Invoke(invoke)) => self.start(invoke),
                        Ok(Command::FollowUp { hold, make, done }) => {
                            self.follow_up(hold, make, done)
                        }
                        Ok(Command::Release { hold }) => self.release(hold),
                        Err(_) => commands_open = false,
                    },
                    recv(replies) -> reply => match reply {
                        Ok(reply) => self.on_reply(reply),
                        Err(_) => return,
                    },
                    default(wait) => {}
                }
            } else {
                if self.sessions.iter().flatten().all(|s| s.waiting.is_empty()) {
                    return;
                }
                select! {
                    recv(replies) -> reply => match reply {
                        Ok(reply) => self.on_reply(reply),
                        Err(_) => return,
                    },
                    default(wait) => {}
                }
            }
            // Drain what else is ready without blocking, then handle timers.
            while let Ok(reply) = replies.try_recv() {
                self.on_reply(reply);
            }
            let now = Instant::now();
            if now >= timers_due_at {
                timers_due_at = now + TIMER_CHECK;
                self.on_timers();
            }
        }
    }

    fn start(&mut self, command: Invoke) {
        let index = match self.idle.pop() {
            Some(index) => index,
            None if self.open_sessions < self.options.sessions_max => match self.open_session() {
                Ok(index) => index,
                Err(error) => {
                    command.done.send(Err(error));
                    return;
                }
            },
            None => {
                self.waiting.push_back(command);
                return;
            }
        };
        let session = self.sessions[index].as_mut().expect("idle sessions exist");
        assert!(!session.protocol.is_busy(), "an idle session has nothing outstanding");
        session.protocol.learn_regency(self.regency_hint);
        self.actions.clear();
        let sequence = session
            .protocol
            .invoke(command.operation, &mut self.actions)
            .expect("an idle session is not busy");
        let timed = command.hold.is_none();
        session.waiting.push(Waiting {
            sequence,
            done: command.done,
            started: Instant::now(),
            timed,
        });
        session.stall_resent = false;
        if let Some((hold, ids)) = command.hold {
            let _ = ids.set((session.protocol.id(), sequence));
            session.held = Some((hold, sequence));
            self.held.insert(hold, index);
        }
        self.execute_actions(index);
    }

    fn follow_up(&mut self, hold: u64, make: FollowUpFn, done: Completion) {
        let Some(&index) = self.held.get(&hold) else {
            // Still queued for a session: take it back unsent.
            let queued = |invoke: &Invoke| invoke.hold.as_ref().is_some_and(|(h, _)| *h == hold);
            if let Some(at) = self.waiting.iter().position(queued) {
                let invoke = self.waiting.remove(at).expect("found");
                invoke.done.send(Err(RuntimeError::Withdrawn));
                done.send(Err(RuntimeError::Withdrawn));
            } else {
                done.send(Err(RuntimeError::Shutdown)); // its session was retired
            }
            return;
        };
        let Some(session) = self.sessions[index].as_mut() else {
            done.send(Err(RuntimeError::Shutdown));
            return;
        };
        let (_, held_sequence) = session.held.expect("a held session knows its holder");
        self.actions.clear();
        let operation = make(held_sequence);
        let sent = if session.protocol.is_busy() {
            session.protocol.follow_up(operation, &mut self.actions)
        } else {
            session.protocol.invoke(operation, &mut self.actions)
        };
        match sent {
            Ok(sequence) => {
                session.waiting.push(Waiting {
                    sequence,
                    done,
                    started: Instant::now(),
                    timed: true,
                });
                self.execute_actions(index);
            }
            // A second follow-up while the first waits: refused, nothing sent.
            Err(_) => done.send(Err(RuntimeError::Shutdown)),
        }
    }

    fn release(&mut self, hold: u64) {
        let Some(index) = self.held.remove(&hold) else {
            // Never started (or its session was retired): drop it from the queue.
            self.waiting.retain(|invoke| invoke.hold.as_ref().is_none_or(|(h, _)| *h != hold));
            return;
        };
        let Some(session) = self.sessions[index].as_mut() else { return };
        session.held = None;
        if session.waiting.is_empty() && !session.expired {
            self.idle.push(index);
            self.start_queued();
        } else {
            // A request of it may still be ordered: retire the session and its id.
            self.retire(index, None);
        }
    }

    /// Takes session `index` out of use for good, failing each caller still waiting on
    /// it with `error` (dropped: [`RuntimeError::Shutdown`]).
    fn retire(&mut self, index: usize, error: Option<&dyn Fn() -> RuntimeError>) {
        let Some(session) = self.sessions[index].take() else { return };
        for waiting in session.waiting {
            if let Some(error) = error {
                waiting.done.send(Err(error()));
            }
        }
        if let Some((hold, _)) = session.held {
            self.held.remove(&hold);
        }
        self.idle.retain(|&idle| idle != index);
        self.by_client_id.remove(&session.protocol.id());
        self.open_sessions -= 1;
    }

    fn start_queued(&mut self) {
        while !self.idle.is_empty() || self.open_sessions < self.options.sessions_max {
            let Some(command) = self.waiting.pop_front() else { break };
            self.start(command);
        }
    }

    fn open_session(&mut self) -> Result<usize, RuntimeError> {
        let client_id = self.next_client_id;
        self.next_client_id += 1;
        let keys = self.config.client_keys(client_id)?;
        // Sequence numbers carry the session's time (`dura_core::SEQUENCE_TIME_SHIFT`):
        // this machine's clock, or the time the cluster last said it accepts.
        let now_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let first = dura_core::first_sequence_at(now_ms.max(self.session_floor_ms));
        let protocol = ProtocolClient::new(self.config.client_config(), keys, first);
        let index = self.sessions.len();
        self.sessions.push(Some(Session {
            protocol,
            waiting: Vec::new(),
            held: None,
            retransmit_at: None,
            stall_resent: false,
            expired: false,
        }));
        self.by_client_id.insert(client_id, index);
        self.open_sessions += 1;
        Ok(index)
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(&index) = self.by_client_id.get(&reply.client_id) else { return };
        let Some(session) = self.sessions[index].as_mut() else { return };
        // Unverified here (the session checks the MAC): a forged reply can only delay
        // a stalled request's early broadcast to its own retransmission timer.
        self.last_reply_at = Instant::now();
        self.actions.clear();
        session.protocol.handle(ClientEvent::Reply(reply), &mut self.actions);
        self.regency_hint = self.regency_hint.max(session.protocol.regency_hint());
        self.execute_actions(index);
    }

    fn on_timers(&mut self) {
        self.fail_if_refused();
        let now = Instant::now();
        for index in 0..self.sessions.len() {
            let Some(session) = self.sessions[index].as_mut() else { continue };
            if let Some(waiting) = session.waiting.iter().find(|waiting| {
                waiting.timed && now.duration_since(waiting.started) >= self.options.request_timeout
            }) {
                // Give up on this session: its request may still be ordered later, so
                // the session (and its client id) is retired, never reused.
                let waited_ms = waiting.started.elapsed().as_millis() as u64;
                self.retire(index, Some(&|| RuntimeError::Timeout { waited_ms }));
                continue;
            }
            let stall = self.stall_after.is_some_and(|after| {
                !session.stall_resent
                    && session
                        .waiting
                        .first()
                        .is_some_and(|w| stalled(now, w.started, self.last_reply_at, after))
            });
            if stall || session.retransmit_at.is_some_and(|at| at <= now) {
                session.stall_resent = true;
                session.retransmit_at = None;
                self.actions.clear();
                session.protocol.handle(ClientEvent::TimerFired, &mut self.actions);
                self.execute_actions(index);
            }
        }
        self.start_queued();
    }

    /// When more than f replicas refused this client (TLS on there and off here, or a
    /// certificate from another CA), no request can complete: every waiting one fails
    /// at once with the replicas' reasons instead of timing out.
    fn fail_if_refused(&mut self) {
        let refusals = self.network.refusals();
        if refusals.len() <= self.config.f as usize {
            return;
        }
        let reason = refusals.iter().map(|(_, why)| why.as_str()).collect::<Vec<_>>().join("; ");
        for index in 0..self.sessions.len() {
            if self.sessions[index].as_ref().is_some_and(|session| !session.waiting.is_empty()) {
                self.retire(index, Some(&|| RuntimeError::Refused(reason.clone())));
            }
        }
        for command in self.waiting.drain(..) {
            command.done.send(Err(RuntimeError::Refused(reason.clone())));
        }
    }

    fn execute_actions(&mut self, index: usize) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            let session = self.sessions[index].as_mut().expect("session exists while it acts");
            match action {
                ClientAction::Send { to, request } => {
                    self.network.send(Peer::Replica(to), Arc::from(request.to_bytes()));
                }
                ClientAction::Broadcast { request } => {
                    let frame: Arc<[u8]> = Arc::from(request.to_bytes());
                    for replica in 0..self.config.n() {
                        self.network.send(Peer::Replica(replica), frame.clone());
                    }
                }
                ClientAction::SetTimer { after_ms } => {
                    session.retransmit_at = Some(Instant::now() + Duration::from_millis(after_ms));
                }
                ClientAction::CancelTimer => session.retransmit_at = None,
                ClientAction::Completed { sequence, result } => {
                    if let Some(at) = session.waiting.iter().position(|w| w.sequence == sequence) {
                        session.waiting.remove(at).done.send(Ok(result));
                    }
                    if session.waiting.is_empty() && session.held.is_none() && !session.expired {
                        self.idle.push(index);
                    }
                }
                ClientAction::Expired { sequence, accept_from_ms } => {
                    self.session_floor_ms = self.session_floor_ms.max(accept_from_ms);
                    if let Some(at) = session.waiting.iter().position(|w| w.sequence == sequence) {
                        session.waiting.remove(at).done.send(Err(RuntimeError::SessionExpired));
                    }
                    // Not used again once its other request (a follow-up) is answered:
                    // a new session opens at a session time the cluster accepts.
                    session.expired = true;
                }
            }
        }
        self.actions = actions;
        if self.sessions[index]
            .as_ref()
            .is_some_and(|s| s.expired && s.waiting.is_empty() && s.held.is_none())
        {
            self.retire(index, None);
        }
        if let Some(command) = self.waiting.pop_front() {
            if self.idle.is_empty() {
                self.waiting.push_front(command);
            } else {
                self.start(command);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_stalled_only_when_no_reply_came_for_as_long_as_it_waited() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let after = Duration::from_millis(500);
        // Replies keep coming (a slow leader): never stalled, however old the request.
        assert!(!stalled(at(5_000), at(0), at(4_900), after));
        // Silence for 500 ms, the request as old: stalled.
        assert!(stalled(at(1_000), at(400), at(500), after));
        // Silence, but the request is younger than the bound: not yet.
        assert!(!stalled(at(1_000), at(700), at(0), after));
    }

    #[test]
    fn a_waiting_caller_gets_the_result_sent_from_another_thread() {
        let (pending, done) = Pending::new();
        let sender = thread::spawn(move || done.send(Ok(b"result".to_vec())));
        assert_eq!(pending.wait().expect("delivered"), b"result");
        sender.join().expect("sender thread");
    }

    #[test]
    fn a_completion_dropped_unsent_resolves_to_shutdown() {
        let (pending, done) = Pending::new();
        assert!(pending.try_get().is_none(), "nothing delivered yet");
        drop(done);
        assert!(matches!(pending.wait(), Err(RuntimeError::Shutdown)));
    }

    #[test]
    fn try_get_hands_the_result_out_once_and_a_late_drop_changes_nothing() {
        let (pending, done) = Pending::new();
        done.send(Err(RuntimeError::Timeout { waited_ms: 7 }));
        assert!(matches!(pending.try_get(), Some(Err(RuntimeError::Timeout { waited_ms: 7 }))));
        assert!(matches!(pending.try_get(), Some(Err(RuntimeError::Shutdown))));
    }
}
