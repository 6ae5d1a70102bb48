//! Metrics and health over HTTP: a replica's counters in the Prometheus text format at
//! `GET /metrics`, and whether it is serving at `GET /health`.
//!
//! The stage threads update [`ReplicaMetrics`] with relaxed atomic stores and adds where
//! they already handle the event (no lock, no allocation on the hot path). One server
//! thread per replica ([`serve`]) answers one request per connection, one connection at
//! a time: a scrape is rare and small, and a stuck client holds the thread for at most
//! [`METRICS_IO_TIMEOUT_MS`] before it is cut off. Requests are bounded to
//! [`METRICS_REQUEST_BYTES_MAX`].

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Bytes of one request's head (request line and headers) read at most.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long the server waits for a client to send its request or take the response.
pub const METRICS_IO_TIMEOUT_MS: u64 = 2_000;

// A request line with a short path must fit.
const _: () = assert!(METRICS_REQUEST_BYTES_MAX >= 1024);

/// A replica's counters and gauges, shared between its stage threads (writers) and its
/// metrics server (reader). Every field is a relaxed atomic: a scrape sees each value as
/// of some recent moment, not a consistent snapshot across fields.
#[derive(Debug, Default)]
pub struct ReplicaMetrics {
    agreements_decided: AtomicU64,
    batch_requests_decided: AtomicU64,
    last_decided_agreement_id: AtomicU64,
    regency: AtomicU64,
    leader: AtomicBool,
    recovering: AtomicBool,
    replies_released: AtomicU64,
    replies_held_batches: AtomicU64,
    replies_held_us: AtomicU64,
    log_writes: AtomicU64,
    log_write_bytes: AtomicU64,
    log_write_ns: AtomicU64,
    log_failures: AtomicU64,
    log_truncated_below: AtomicU64,
    checkpoints_started: AtomicU64,
    checkpoints_written: AtomicU64,
    checkpoints_failed: AtomicU64,
    /// Agreement of the checkpoint being written (0: none).
    checkpoint_writing: AtomicU64,
    last_checkpoint_agreement_id: AtomicU64,
    /// Accepted connections open on the client listener (the net stage's own count).
    client_connections: Arc<AtomicUsize>,
    /// Accepted connections open on the replica listener.
    replica_connections: Arc<AtomicUsize>,
}

impl ReplicaMetrics {
    /// The order stage delivered agreement `agreement_id`, a batch of `requests`.
    pub fn record_decided(&self, agreement_id: u64, requests: usize) {
        self.agreements_decided.fetch_add(1, Ordering::Relaxed);
        self.batch_requests_decided.fetch_add(requests as u64, Ordering::Relaxed);
        self.last_decided_agreement_id.fetch_max(agreement_id, Ordering::Relaxed);
    }

    /// The order stage's view of the protocol after handling a round of events.
    pub fn record_order_state(
        &self,
        last_decided: u64,
        regency: u64,
        leader: bool,
        recovering: bool,
    ) {
        self.last_decided_agreement_id.fetch_max(last_decided, Ordering::Relaxed);
        self.regency.store(regency, Ordering::Relaxed);
        self.leader.store(leader, Ordering::Relaxed);
        self.recovering.store(recovering, Ordering::Relaxed);
    }

    /// The regency and whether the protocol was recovering, as the order stage last
    /// recorded them (state transfer's seeders report them to a leecher).
    pub fn regency_view(&self) -> (u64, bool) {
        (self.regency.load(Ordering::Relaxed), self.recovering.load(Ordering::Relaxed))
    }

    /// Whether the protocol was recovering when the order stage last looked.
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Relaxed)
    }

    /// The exec stage released `replies` replies.
    pub fn record_released(&self, replies: usize) {
        self.replies_released.fetch_add(replies as u64, Ordering::Relaxed);
    }

    /// An executed batch's replies waited `held` for the log before release.
    pub fn record_held(&self, held: Duration) {
        self.replies_held_batches.fetch_add(1, Ordering::Relaxed);
        let held_us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.replies_held_us.fetch_add(held_us, Ordering::Relaxed);
    }

    /// The log stage wrote (and synced) one group of `bytes` in `busy`.
    pub fn record_log_group(&self, bytes: u64, busy: Duration) {
        self.log_writes.fetch_add(1, Ordering::Relaxed);
        self.log_write_bytes.fetch_add(bytes, Ordering::Relaxed);
        let busy_ns = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.log_write_ns.fetch_add(busy_ns, Ordering::Relaxed);
    }

    /// A log that groups writes itself reports its totals so far.
    pub fn set_log_writes(&self, stats: dura_wal::WriteStats) {
        self.log_writes.store(stats.writes, Ordering::Relaxed);
        self.log_write_bytes.store(stats.bytes, Ordering::Relaxed);
        let busy_ns = u64::try_from(stats.busy.as_nanos()).unwrap_or(u64::MAX);
        self.log_write_ns.store(busy_ns, Ordering::Relaxed);
    }

    /// The log failed; no reply waiting for it will be released.
    pub fn record_log_failure(&self) {
        self.log_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The log dropped its segments below `below` (after a checkpoint).
    pub fn record_log_truncated(&self, below: u64) {
        self.log_truncated_below.fetch_max(below, Ordering::Relaxed);
    }

    /// A checkpoint of the state at `agreement_id` began.
    pub fn record_checkpoint_started(&self, agreement_id: u64) {
        self.checkpoints_started.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_writing.store(agreement_id, Ordering::Relaxed);
    }

    /// The checkpoint at `agreement_id` is durable.
    pub fn record_checkpoint_written(&self, agreement_id: u64) {
        self.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_writing.store(0, Ordering::Relaxed);
        self.last_checkpoint_agreement_id.fetch_max(agreement_id, Ordering::Relaxed);
    }

    /// A checkpoint failed and was abandoned.
    pub fn record_checkpoint_failed(&self) {
        self.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_writing.store(0, Ordering::Relaxed);
    }

    /// The newest checkpoint found at start (restart from it).
    pub fn set_last_checkpoint(&self, agreement_id: u64) {
        self.last_checkpoint_agreement_id.fetch_max(agreement_id, Ordering::Relaxed);
    }

    /// Checkpoints written so far (for tests and tools).
    pub fn checkpoints_written(&self) -> u64 {
        self.checkpoints_written.load(Ordering::Relaxed)
    }

    /// The counter the client listener keeps of its open connections.
    pub fn client_connections(&self) -> Arc<AtomicUsize> {
        self.client_connections.clone()
    }

    /// The counter the replica listener keeps of its open connections.
    pub fn replica_connections(&self) -> Arc<AtomicUsize> {
        self.replica_connections.clone()
    }

    /// The highest agreement id decided so far (for tests and tools).
    pub fn last_decided_agreement_id(&self) -> u64 {
        self.last_decided_agreement_id.load(Ordering::Relaxed)
    }

    /// Agreements delivered so far (for tests and tools).
    pub fn agreements_decided(&self) -> u64 {
        self.agreements_decided.load(Ordering::Relaxed)
    }

    /// The metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let flag = |value: &AtomicBool| u64::from(value.load(Ordering::Relaxed));
        let seconds = |nanos: u64| nanos as f64 / 1e9;
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            // Writing to a String cannot fail.
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        };
        metric(
            "dura_agreements_decided_total",
            "counter",
            "Agreements this replica delivered as decided.",
            load(&self.agreements_decided).to_string(),
        );
        metric(
            "dura_batch_requests_decided_total",
            "counter",
            "Client requests in the batches this replica delivered as decided.",
            load(&self.batch_requests_decided).to_string(),
        );
        metric(
            "dura_last_decided_agreement_id",
            "gauge",
            "The newest agreement id decided here.",
            load(&self.last_decided_agreement_id).to_string(),
        );
        metric(
            "dura_regency",
            "gauge",
            "The regency (view) this replica is in.",
            load(&self.regency).to_string(),
        );
        metric(
            "dura_leader",
            "gauge",
            "1 when this replica leads its regency.",
            flag(&self.leader).to_string(),
        );
        metric(
            "dura_recovering",
            "gauge",
            "1 while the protocol recovers after a restart.",
            flag(&self.recovering).to_string(),
        );
        metric(
            "dura_replies_released_total",
            "counter",
            "Replies the exec stage released to clients.",
            load(&self.replies_released).to_string(),
        );
        metric(
            "dura_replies_held_batches_total",
            "counter",
            "Executed batches whose replies waited for the log.",
            load(&self.replies_held_batches).to_string(),
        );
        metric(
            "dura_replies_held_seconds_total",
            "counter",
            "Time those replies waited for the log, added up.",
            format!("{:.6}", seconds(load(&self.replies_held_us).saturating_mul(1_000))),
        );
        metric(
            "dura_log_writes_total",
            "counter",
            "Group writes to the log.",
            load(&self.log_writes).to_string(),
        );
        metric(
            "dura_log_write_bytes_total",
            "counter",
            "Bytes written to the log by group writes.",
            load(&self.log_write_bytes).to_string(),
        );
        metric(
            "dura_log_write_seconds_total",
            "counter",
            "Time spent in group writes until durable, added up.",
            format!("{:.6}", seconds(load(&self.log_write_ns))),
        );
        metric(
            "dura_log_failures_total",
            "counter",
            "Times the log failed (the replica stops releasing replies that wait for it).",
            load(&self.log_failures).to_string(),
        );
        metric(
            "dura_log_truncated_below_agreement_id",
            "gauge",
            "The log holds no segment made only of agreements below this one (0: never truncated).",
            load(&self.log_truncated_below).to_string(),
        );
        metric(
            "dura_checkpoints_started_total",
            "counter",
            "Checkpoints this replica began writing.",
            load(&self.checkpoints_started).to_string(),
        );
        metric(
            "dura_checkpoints_written_total",
            "counter",
            "Checkpoints written durably (synced, renamed, directory synced).",
            load(&self.checkpoints_written).to_string(),
        );
        metric(
            "dura_checkpoints_failed_total",
            "counter",
            "Checkpoints abandoned after an error (the log keeps what they would have covered).",
            load(&self.checkpoints_failed).to_string(),
        );
        metric(
            "dura_checkpoint_writing_agreement_id",
            "gauge",
            "Agreement of the checkpoint being written (0: none).",
            load(&self.checkpoint_writing).to_string(),
        );
        metric(
            "dura_last_checkpoint_agreement_id",
            "gauge",
            "Agreement of the newest durable checkpoint (0: none).",
            load(&self.last_checkpoint_agreement_id).to_string(),
        );
        metric(
            "dura_client_connections_open",
            "gauge",
            "Client connections accepted and open (those still in their hello included).",
            self.client_connections.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "dura_replica_connections_accepted_open",
            "gauge",
            "Connections from other replicas accepted and open (this replica dials the others).",
            self.replica_connections.load(Ordering::Relaxed).to_string(),
        );
        out
    }
}

/// What `GET /health` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Running, not recovering: `200 serving`.
    Serving,
    /// The protocol recovers after a restart: `503 recovering`.
    Recovering,
    /// A stage failed or the replica is shutting down: `503 stopped: <reason>`.
    Stopped(String),
}

impl Health {
    fn response(&self) -> Response {
        match self {
            Health::Serving => Response::text(200, "serving\n".into()),
            Health::Recovering => Response::text(503, "recovering\n".into()),
            Health::Stopped(reason) => {
                // One line, whatever the error's message holds.
                let reason = reason.replace(['\r', '\n'], " ");
                Response::text(503, format!("stopped: {reason}\n"))
            }
        }
    }
}

/// A request head that could not be read as `METHOD /path HTTP/1.x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub &'static str);

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, without its query string.
    pub path: &'a str,
}

/// Parses a request head: `head` holds what was read, `complete` says whether it ended
/// with the blank line that closes the headers (false: the client sent too much, or
/// stopped before the end).
pub fn parse_request(head: &[u8], complete: bool) -> Result<RequestLine<'_>, BadRequest> {
    if !complete {
        return Err(BadRequest("request head incomplete or too long"));
    }
    let line_end = head.iter().position(|&b| b == b'\n').ok_or(BadRequest("no request line"))?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| BadRequest("not UTF-8"))?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest("request line is not METHOD TARGET VERSION"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(BadRequest("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(BadRequest("bad target"));
    }
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(BadRequest("not HTTP/1.x"));
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok(RequestLine { method, path })
}

struct Response {
    status: u16,
    body: String,
}

impl Response {
    fn text(status: u16, body: String) -> Self {
        Response { status, body }
    }

    fn write_to(&self, stream: &mut impl Write) -> std::io::Result<()> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(self.body.as_bytes())?;
        stream.flush()
    }
}

/// Reads a request head of at most [`METRICS_REQUEST_BYTES_MAX`] bytes; returns it and
/// whether it ended with its blank line.
fn read_head(stream: &mut impl Read) -> (Vec<u8>, bool) {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return (head, true);
        }
        if head.len() >= METRICS_REQUEST_BYTES_MAX {
            return (head, false);
        }
        let room = (METRICS_REQUEST_BYTES_MAX - head.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) | Err(_) => return (head, false),
            Ok(read) => head.extend_from_slice(&chunk[..read]),
        }
    }
}

fn answer(
    stream: &mut TcpStream,
    metrics: &ReplicaMetrics,
    health: &dyn Fn() -> Health,
) -> std::io::Result<()> {
    let timeout = Some(Duration::from_millis(METRICS_IO_TIMEOUT_MS));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let (head, complete) = read_head(stream);
    let response = match parse_request(&head, complete) {
        Err(BadRequest(why)) => Response::text(400, format!("bad request: {why}\n")),
        Ok(RequestLine { method, .. }) if method != "GET" => {
            Response::text(405, "only GET is served\n".into())
        }
        Ok(RequestLine { path: "/metrics", .. }) => Response::text(200, metrics.render()),
        Ok(RequestLine { path: "/health", .. }) => health().response(),
        Ok(RequestLine { path, .. }) => Response::text(404, format!("no such path: {path}\n")),
    };
    response.write_to(stream)
}

/// Serves `/metrics` and `/health` on `listener` from a thread named `name` until
/// `stopping` returns true (checked after each accepted connection: wake the thread by
/// connecting once). `health` is asked on each `/health` request.
pub fn serve(
    name: String,
    listener: TcpListener,
    metrics: std::sync::Arc<ReplicaMetrics>,
    health: impl Fn() -> Health + Send + 'static,
    stopping: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        for stream in listener.incoming() {
            if stopping() {
                return;
            }
            match stream {
                Ok(mut stream) => {
                    if let Err(error) = answer(&mut stream, &metrics, &health) {
                        log::debug!("metrics: answering a request failed: {error}");
                    }
                }
                Err(error) => {
                    log::warn!("metrics: accept failed: {error}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_get_is_parsed_without_its_query() {
        let line =
            parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", true).expect("parses");
        assert_eq!(line, RequestLine { method: "GET", path: "/metrics" });
        let line = parse_request(b"POST /health HTTP/1.0\n\n", true).expect("parses");
        assert_eq!(line, RequestLine { method: "POST", path: "/health" });
    }

    #[test]
    fn bad_request_heads_are_refused() {
        for (head, complete) in [
            (&b"GET /metrics HTTP/1.1\r\n"[..], false),
            (b"", true),
            (b"\r\n\r\n", true),
            (b"GET /metrics\r\n\r\n", true),
            (b"GET /metrics HTTP/1.1 extra\r\n\r\n", true),
            (b"get /metrics HTTP/1.1\r\n\r\n", true),
            (b"GET metrics HTTP/1.1\r\n\r\n", true),
            (b"GET /metrics HTTP/2\r\n\r\n", true),
            (b"GET /me\x01trics HTTP/1.1\r\n\r\n", true),
            (b"GET /\xffmetrics HTTP/1.1\r\n\r\n", true),
        ] {
            assert!(parse_request(head, complete).is_err(), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn an_oversized_head_is_cut_at_the_bound() {
        let mut input = std::io::Cursor::new(vec![b'a'; METRICS_REQUEST_BYTES_MAX * 2]);
        let (head, complete) = read_head(&mut input);
        assert!(!complete);
        assert_eq!(head.len(), METRICS_REQUEST_BYTES_MAX);
    }

    #[test]
    fn rendered_metrics_are_prometheus_text_lines() {
        let metrics = ReplicaMetrics::default();
        metrics.record_decided(7, 3);
        metrics.record_held(Duration::from_millis(2));
        let text = metrics.render();
        assert!(text.contains("\ndura_agreements_decided_total 1\n"));
        assert!(text.contains("\ndura_last_decided_agreement_id 7\n"));
        assert!(text.contains("\ndura_replies_held_seconds_total 0.002000\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (name, value) = line.split_once(' ').expect("name value");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            value.parse::<f64>().expect("a number");
        }
    }

    #[test]
    fn a_stopped_health_is_one_line() {
        let response = Health::Stopped("log: disk\nfull".into()).response();
        assert_eq!(response.status, 503);
        assert_eq!(response.body, "stopped: log: disk full\n");
    }
}
