//! [`TsClient`]: typed Durable DepSpace operations over the runtime's client.
//!
//! Every operation is ordered and answered by f+1 matching replies. `rd` and `in` may
//! block in the space until a matching tuple is written; they go through
//! [`Client::submit_blocking`], which has no request timeout and keeps the request's
//! client id for a follow-up.
//!
//! # A timeout on `rd`/`in`
//!
//! When the caller's timeout passes, the client cancels the blocked request **through
//! ordering**: it sends `cancel(s)` ([`Op::Cancel`]) from the same client id, as the
//! protocol's follow-up of request `s`, and keeps waiting for `s`'s answer beside it.
//! Ordering then decides, and every replica agrees:
//!
//! - the cancel found `s` blocked: `s` is answered `cancelled`, nothing was taken, the
//!   call returns [`TsError::TimedOut`];
//! - `s` was answered before the cancel ran (a tuple written meanwhile): the cancel
//!   answers not found, and the call returns `s`'s tuple. Its answer reaches the
//!   client as any reply does, or, if it was lost on the way, from the replicas'
//!   reply cache: the service defers every `rd`/`in` (see [`dura_tuplespace::service`]) and the
//!   cache keeps a deferred request's answer while the cancel is the client's last
//!   request; the protocol client retransmits `s` as soon as the cancel completes;
//! - `s` was never ordered (the cluster was down for the whole timeout): once the
//!   cancel is ordered, `s` never will be (replicas drop a client's request older than
//!   its last); the cancel answers not found and no answer to `s` comes.
//!
//! The last two look alike to the client until `s`'s answer arrives. It waits
//! [`TsClient::settle`] for it; if none comes, the call returns
//! [`TsError::Unconfirmed`] rather than guess: most likely nothing was taken, but the
//! client cannot prove it. A tuple an `in` took is thus returned, or the caller is told
//! the outcome is unknown; it is never silently dropped.

use std::time::{Duration, Instant};

use dura_engine::runtime::config::OperationBound;
use dura_engine::runtime::{Blocking, Client, ClientOptions, ClusterConfig, RuntimeError};

use dura_tuplespace::codec::{Op, Reply, decode_reply, encode_op};
use dura_tuplespace::tuple::{Template, Tuple};

/// How long [`TsClient`] waits, by default, for a blocked request's answer after its
/// cancel found nothing to cancel (see the module docs).
pub const SETTLE_DEFAULT: Duration = Duration::from_secs(5);

/// Errors of [`TsClient`].
#[derive(Debug, thiserror::Error)]
pub enum TsError {
    /// The cluster could not be reached or did not answer in time.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The operation is longer than this cluster carries; it was not sent.
    #[error("operation of {operation_bytes} bytes is over this cluster's bound of {bound}")]
    TooLarge {
        /// The encoded operation's length.
        operation_bytes: usize,
        /// The cluster's bound and what sets it.
        bound: OperationBound,
    },
    /// The space refused the operation and changed nothing; why.
    #[error("refused by the tuple space: {0}")]
    Rejected(String),
    /// A reply that does not decode.
    #[error("undecodable reply: {0}")]
    Decode(#[from] dura_tuplespace::Error),
    /// The replicas answered something that is not a reply to this operation.
    #[error("unexpected reply: {0:?}")]
    UnexpectedReply(Reply),
    /// `rd`/`in`: the timeout passed and the request was cancelled through ordering
    /// before any tuple matched: nothing was read or taken.
    #[error("timed out after {waited_ms} ms; the request was cancelled, nothing was taken")]
    TimedOut {
        /// From the call to the cancel's answer.
        waited_ms: u64,
    },
    /// `rd`/`in`: the timeout passed, the cancel found no blocked request, and no answer
    /// to the request came within the settle time: it was most likely never ordered
    /// (nothing taken), but an answer lost with the replicas' caches cannot be ruled
    /// out.
    #[error(
        "timed out after {waited_ms} ms; the cancel found no blocked request {sequence} of \
         client {client_id:#x} and no answer to it came: the request was most likely never \
         ordered (nothing taken), but this is not confirmed"
    )]
    Unconfirmed {
        /// The client id of the request.
        client_id: u64,
        /// Its sequence number.
        sequence: u64,
        /// From the call until the client gave up.
        waited_ms: u64,
    },
}

/// What [`TsClient::cas`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Nothing matched the template: the tuple was written.
    Written,
    /// This tuple matched: nothing was written.
    Exists(Tuple),
}

/// A client of a Durable DepSpace cluster. Shareable between threads; concurrent calls
/// are ordered concurrently (each uses its own protocol session).
#[derive(Debug, Clone)]
pub struct TsClient {
    client: Client,
    bound: OperationBound,
    n: u32,
    replies_needed: usize,
    settle: Duration,
}

impl TsClient {
    /// Connects to the cluster of `config`.
    pub fn connect(config: &ClusterConfig) -> Result<TsClient, TsError> {
        Self::connect_with(config, ClientOptions::new())
    }

    /// Connects with explicit options (the request timeout applies to every operation
    /// but a blocking `rd`/`in`, which waits as long as its own timeout says).
    pub fn connect_with(
        config: &ClusterConfig,
        options: ClientOptions,
    ) -> Result<TsClient, TsError> {
        Ok(TsClient {
            client: Client::connect_with(config, options)?,
            bound: config.operation_bound(),
            n: config.n(),
            replies_needed: config.mode.reply_quorum(config.f as usize),
            settle: SETTLE_DEFAULT,
        })
    }

    /// How long a timed-out `rd`/`in` waits for its answer after the cancel found
    /// nothing to cancel (see the module docs).
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// Sets [`TsClient::settle`].
    pub fn with_settle(mut self, settle: Duration) -> TsClient {
        self.settle = settle;
        self
    }

    /// Replicas with an open connection, and how many an answer needs.
    pub fn connected_replicas(&self) -> (usize, usize) {
        (self.client.connected_replicas(self.n), self.replies_needed)
    }

    /// The underlying runtime client.
    pub fn raw(&self) -> &Client {
        &self.client
    }

    fn encode(&self, op: &Op) -> Result<Vec<u8>, TsError> {
        let bytes = encode_op(op);
        if bytes.len() > self.bound.operation_bytes_max {
            return Err(TsError::TooLarge { operation_bytes: bytes.len(), bound: self.bound });
        }
        Ok(bytes)
    }

    fn call(&self, op: &Op) -> Result<Reply, TsError> {
        let bytes = self.encode(op)?;
        match decode_reply(&self.client.invoke(bytes)?)? {
            Reply::Rejected(reason) => Err(TsError::Rejected(reason)),
            reply => Ok(reply),
        }
    }

    /// Writes `tuple`; with a lease it is removed `lease_ms` after the write's agreed
    /// time.
    pub fn out(&self, tuple: &Tuple, lease_ms: Option<u64>) -> Result<(), TsError> {
        match self.call(&Op::Out { tuple: tuple.clone(), lease_ms })? {
            Reply::Ok => Ok(()),
            other => Err(TsError::UnexpectedReply(other)),
        }
    }

    fn maybe_tuple(reply: Reply) -> Result<Option<Tuple>, TsError> {
        match reply {
            Reply::Tuple(tuple) => Ok(Some(tuple)),
            Reply::NotFound => Ok(None),
            other => Err(TsError::UnexpectedReply(other)),
        }
    }

    /// Reads the first tuple matching `template`, if any, without waiting.
    pub fn rdp(&self, template: &Template) -> Result<Option<Tuple>, TsError> {
        Self::maybe_tuple(self.call(&Op::Rdp { template: template.clone() })?)
    }

    /// Takes the first tuple matching `template`, if any, without waiting.
    pub fn inp(&self, template: &Template) -> Result<Option<Tuple>, TsError> {
        Self::maybe_tuple(self.call(&Op::Inp { template: template.clone() })?)
    }

    /// Reads the first tuple matching `template`, waiting for one to be written; with
    /// `timeout`, gives up after it (see the module docs).
    pub fn rd(&self, template: &Template, timeout: Option<Duration>) -> Result<Tuple, TsError> {
        self.blocking(&Op::Rd { template: template.clone() }, timeout)
    }

    /// Takes the first tuple matching `template`, waiting for one to be written; with
    /// `timeout`, gives up after it (see the module docs).
    pub fn in_(&self, template: &Template, timeout: Option<Duration>) -> Result<Tuple, TsError> {
        self.blocking(&Op::In { template: template.clone() }, timeout)
    }

    /// Writes `tuple` if nothing matches `template`; else returns the first match.
    pub fn cas(
        &self,
        template: &Template,
        tuple: &Tuple,
        lease_ms: Option<u64>,
    ) -> Result<CasOutcome, TsError> {
        let op = Op::Cas { template: template.clone(), tuple: tuple.clone(), lease_ms };
        match self.call(&op)? {
            Reply::Ok => Ok(CasOutcome::Written),
            Reply::Tuple(existing) => Ok(CasOutcome::Exists(existing)),
            other => Err(TsError::UnexpectedReply(other)),
        }
    }

    /// Takes the first match of `template` and writes `tuple` in its place: the old
    /// tuple, or `None` (nothing written) when nothing matched.
    pub fn replace(
        &self,
        template: &Template,
        tuple: &Tuple,
        lease_ms: Option<u64>,
    ) -> Result<Option<Tuple>, TsError> {
        let op = Op::Replace { template: template.clone(), tuple: tuple.clone(), lease_ms };
        Self::maybe_tuple(self.call(&op)?)
    }

    /// The number of tuples matching `template`.
    pub fn count(&self, template: &Template) -> Result<u64, TsError> {
        match self.call(&Op::Count { template: template.clone() })? {
            Reply::Count(count) => Ok(count),
            other => Err(TsError::UnexpectedReply(other)),
        }
    }

    fn tuples(reply: Reply) -> Result<Vec<Tuple>, TsError> {
        match reply {
            Reply::Tuples(tuples) => Ok(tuples),
            other => Err(TsError::UnexpectedReply(other)),
        }
    }

    /// Reads up to `limit` matches of `template`, first first.
    pub fn rd_all(&self, template: &Template, limit: u32) -> Result<Vec<Tuple>, TsError> {
        Self::tuples(self.call(&Op::RdAll { template: template.clone(), limit })?)
    }

    /// Takes up to `limit` matches of `template`, first first.
    pub fn in_all(&self, template: &Template, limit: u32) -> Result<Vec<Tuple>, TsError> {
        Self::tuples(self.call(&Op::InAll { template: template.clone(), limit })?)
    }

    /// Gives the first match of `template` a lease of `lease_ms` from now: the renewed
    /// tuple, or `None` when nothing matched.
    pub fn renew(&self, template: &Template, lease_ms: u64) -> Result<Option<Tuple>, TsError> {
        Self::maybe_tuple(self.call(&Op::Renew { template: template.clone(), lease_ms })?)
    }

    fn blocking(&self, op: &Op, timeout: Option<Duration>) -> Result<Tuple, TsError> {
        let started = Instant::now();
        let call = self.client.submit_blocking(self.encode(op)?);
        let outcome = match timeout {
            Some(timeout) => call.wait_timeout(timeout),
            None => loop {
                if let Some(outcome) = call.wait_timeout(Duration::from_secs(3600)) {
                    break Some(outcome);
                }
            },
        };
        match outcome {
            Some(outcome) => Self::blocked_answer(outcome, started),
            None => self.cancel(&call, started),
        }
    }

    /// The answer of a blocking request, as the caller gets it.
    fn blocked_answer(
        outcome: Result<Vec<u8>, RuntimeError>,
        started: Instant,
    ) -> Result<Tuple, TsError> {
        let waited_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Err(RuntimeError::Withdrawn) => Err(TsError::TimedOut { waited_ms }),
            Err(error) => Err(error.into()),
            Ok(bytes) => match decode_reply(&bytes)? {
                Reply::Tuple(tuple) => Ok(tuple),
                Reply::Cancelled => Err(TsError::TimedOut { waited_ms }),
                Reply::Rejected(reason) => Err(TsError::Rejected(reason)),
                other => Err(TsError::UnexpectedReply(other)),
            },
        }
    }

    /// Cancels the blocked request `call` through ordering and returns what ordering
    /// decided (see the module docs).
    fn cancel(&self, call: &Blocking, started: Instant) -> Result<Tuple, TsError> {
        let cancel = call.follow_up(|sequence| encode_op(&Op::Cancel { sequence }));
        let cancelled = cancel.wait();
        let unconfirmed = || {
            let (client_id, sequence) = call.ids().unwrap_or_default();
            TsError::Unconfirmed {
                client_id,
                sequence,
                waited_ms: started.elapsed().as_millis() as u64,
            }
        };
        let waited_ms = || started.elapsed().as_millis() as u64;
        match call.try_get() {
            Some(Ok(bytes)) => return Self::blocked_answer(Ok(bytes), started),
            Some(Err(RuntimeError::Withdrawn)) => {
                return Err(TsError::TimedOut { waited_ms: waited_ms() });
            }
            // The client gave up on the session (the cancel timed out, the cluster
            // refused it): what ordering decided is not known.
            Some(Err(_)) => return Err(unconfirmed()),
            None => {}
        }
        match cancelled {
            Err(RuntimeError::Withdrawn) => Err(TsError::TimedOut { waited_ms: waited_ms() }),
            Err(_) => match call.wait_timeout(self.settle) {
                Some(outcome) => Self::blocked_answer(outcome, started),
                None => Err(unconfirmed()),
            },
            Ok(bytes) => match decode_reply(&bytes)? {
                // It was blocked and is cancelled now: nothing taken.
                Reply::Ok => Err(TsError::TimedOut { waited_ms: waited_ms() }),
                // Answered before the cancel ran, or never ordered.
                Reply::NotFound => match call.wait_timeout(self.settle) {
                    Some(outcome) => Self::blocked_answer(outcome, started),
                    None => Err(unconfirmed()),
                },
                Reply::Rejected(reason) => Err(TsError::Rejected(reason)),
                other => Err(TsError::UnexpectedReply(other)),
            },
        }
    }
}
