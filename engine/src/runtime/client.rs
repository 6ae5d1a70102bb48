//! The client library: ordered operations against a running cluster.
//!
//! One [`Client`] holds one connection per replica and a driver thread that runs many
//! protocol client sessions ([`crate::protocol::Client`], one outstanding request each)
//! over them. Every call takes an idle session (or opens a new one, up to
//! `sessions_max`), so many threads can share one `Client` and their requests are
//! ordered concurrently. [`Client::invoke`] blocks; [`Client::submit`] returns a
//! [`Pending`] to wait on later or poll.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
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
}

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
    commands: Sender<Invoke>,
    network: Arc<Network>,
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
        let client = Client { inner: Arc::new(Inner { commands, network }) };
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
        if let Err(error) = self.inner.commands.send(Invoke { operation, done }) {
            error.0.done.send(Err(RuntimeError::Shutdown));
        }
        pending
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
    /// The caller waiting for the outstanding request, and when it started.
    waiting: Option<(Completion, Instant)>,
    retransmit_at: Option<Instant>,
    /// The outstanding request was already broadcast early because no reply came
    /// from anyone (see [`Driver::stall_after`]).
    stall_resent: bool,
}

struct Driver {
    config: ClusterConfig,
    options: ClientOptions,
    network: Arc<Network>,
    sessions: Vec<Option<Session>>,
    idle: Vec<usize>,
    by_client_id: HashMap<u64, usize>,
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
    fn run(&mut self, commands: &Receiver<Invoke>, replies: &Receiver<Reply>) {
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
                        Ok(command) => self.start(command),
                        Err(_) => commands_open = false,
                    },
                    recv(replies) -> reply => match reply {
                        Ok(reply) => self.on_reply(reply),
                        Err(_) => return,
                    },
                    default(wait) => {}
                }
            } else {
                if self.sessions.iter().flatten().all(|s| s.waiting.is_none()) {
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
        session
            .protocol
            .invoke(command.operation, &mut self.actions)
            .expect("an idle session is not busy");
        session.waiting = Some((command.done, Instant::now()));
        session.stall_resent = false;
        self.execute_actions(index);
    }

    fn open_session(&mut self) -> Result<usize, RuntimeError> {
        let client_id = self.next_client_id;
        self.next_client_id += 1;
        let keys = self.config.client_keys(client_id)?;
        let protocol = ProtocolClient::new(self.config.client_config(), keys, 1);
        let index = self.sessions.len();
        self.sessions.push(Some(Session {
            protocol,
            waiting: None,
            retransmit_at: None,
            stall_resent: false,
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
            if let Some((_, started)) = &session.waiting
                && now.duration_since(*started) >= self.options.request_timeout
            {
                // Give up on this session: its request may still be ordered later, so
                // the session (and its client id) is retired, never reused.
                let (done, started) = session.waiting.take().expect("checked");
                done.send(Err(RuntimeError::Timeout {
                    waited_ms: started.elapsed().as_millis() as u64,
                }));
                self.by_client_id.remove(&session.protocol.id());
                self.sessions[index] = None;
                self.open_sessions -= 1;
                continue;
            }
            let stall = self.stall_after.is_some_and(|after| {
                !session.stall_resent
                    && session.waiting.as_ref().is_some_and(|(_, started)| {
                        stalled(now, *started, self.last_reply_at, after)
                    })
            });
            if stall || session.retransmit_at.is_some_and(|at| at <= now) {
                session.stall_resent = true;
                session.retransmit_at = None;
                self.actions.clear();
                session.protocol.handle(ClientEvent::TimerFired, &mut self.actions);
                self.execute_actions(index);
            }
        }
        while !self.idle.is_empty() || self.open_sessions < self.options.sessions_max {
            let Some(command) = self.waiting.pop_front() else { break };
            self.start(command);
        }
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
            let Some(session) = self.sessions[index].as_mut() else { continue };
            if let Some((done, _)) = session.waiting.take() {
                done.send(Err(RuntimeError::Refused(reason.clone())));
                self.by_client_id.remove(&session.protocol.id());
                self.sessions[index] = None;
                self.open_sessions -= 1;
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
                ClientAction::Completed { result, .. } => {
                    if let Some((done, _)) = session.waiting.take() {
                        done.send(Ok(result));
                    }
                    self.idle.push(index);
                }
            }
        }
        self.actions = actions;
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
