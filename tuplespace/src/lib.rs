//! `dura-tuplespace`: Durable DepSpace, a tuple space kept by replicated state machine
//! replication, as a deterministic service core.
//!
//! - [`tuple`](mod@tuple): [`Tuple`]s of typed [`Field`]s (string, `i64`, bytes) and [`Template`]s
//!   with wildcards; bounds and matching.
//! - [`space`]: [`TupleSpace`], the state machine: [`TupleSpace::execute`], the
//!   canonical state encoding and its SHA-256 digest.
//! - [`codec`]: the binary encoding of [`Op`]s and [`Reply`]s.
//! - [`parse`]: the typed syntax a person writes, `('job', 7, *)`.
//! - [`service`]: the space as a dura `Service` (checkpoint view and installer).
//!
//! Nothing here does I/O or depends on the engine: the replica, the client (`TsClient`)
//! and the `dura-ts` binary are the `dura-ts` crate (`ts/`), and the simulator runs this
//! state machine as its second service.
//!
//! # Semantics
//!
//! Every operation is ordered: the space executes requests one at a time in the order
//! the replicas agreed, each with its [`ExecCtx`] (client, sequence number, and the
//! agreed time `now_ms` of its batch). Nothing reads a clock, randomness or anything
//! outside the state, so every replica that executes the same requests from the same
//! state gives the same answers and reaches the same state.
//!
//! **Time and leases.** Before each request the space's time becomes
//! `max(time, min(ctx.now_ms, NOW_MS_MAX))` (it never goes back; [`space::NOW_MS_MAX`]
//! keeps lease ends from overflowing) and every tuple whose lease ends at or
//! before that time is removed. A tuple written with a lease of `d` ms (1..=
//! [`space::LEASE_MS_MAX`]) ends at time + `d`; `renew` gives the first match a new lease
//! of `d` from now (also to a tuple that had none). Without a lease a tuple stays until
//! it is taken.
//!
//! **Matching order.** Of several tuples matching a template, the one stored first
//! matches first ("oldest first"). A tuple's place is fixed when it is stored: `renew`
//! keeps it, and `replace` stores the replacement as the newest tuple.
//!
//! **Operations** (the reply after `->`):
//!
//! - `out(t, lease)`: writes `t` -> ok. The write is first offered to blocked requests.
//! - `rdp(p)` / `inp(p)`: reads / takes the first match -> tuple, or -> not found.
//! - `rd(p)` / `in(p)`: as `rdp` / `inp` when something matches; else the request
//!   blocks, with no reply now.
//! - `cas(p, t, lease)`: if nothing matches `p`, writes `t` -> ok; else -> the first
//!   match, writing nothing.
//! - `replace(p, t, lease)`: takes the first match and writes `t` -> the old tuple; or
//!   -> not found, writing nothing.
//! - `rd_all(p, limit)` / `in_all(p, limit)`: reads / takes up to `limit` (1..=
//!   [`space::ALL_LIMIT_MAX`]) matches, first first, stopping before the reply would pass
//!   [`codec::REPLY_BYTES_MAX`] -> tuples.
//! - `count(p)` -> the number of matches.
//! - `renew(p, lease)` -> the renewed tuple, or -> not found.
//! - `cancel(s)`: cancels the same client's blocked request `s` -> ok, and `s` is
//!   answered -> cancelled; or -> not found when no such request is blocked.
//!
//! **Blocking.** Blocked `rd`/`in` requests wait in the order they were executed. A
//! write (`out`, `cas`, `replace`) first offers its tuple to the blocked requests of its
//! arity in that order: each matching `rd` is answered with it, and the first matching
//! `in` is answered with it and takes it, which ends the offer (the tuple is then not
//! stored). This is what executing the waiting requests again, in order, right after the
//! write would give. A client may have [`space::BLOCKED_PER_CLIENT_MAX`] blocked
//! requests, the space [`space::BLOCKED_MAX`]; past either, the request is refused.
//!
//! **Answers.** [`TupleSpace::execute`] returns the answers a request produced: its own
//! first (none when it blocked), then those of the blocked requests it released, in wait
//! order. A blocked request is thus answered by the execution of a later request.
//!
//! **Refusals.** Malformed input (bad encoding, a bound broken, a template that can
//! never match, a lease or limit out of range) and a bound reached are answered with
//! [`Reply::Rejected`] and change nothing but the time, which every ordered request
//! advances.
//!
//! **State.** Stored tuples with their leases, blocked requests, and the time; see
//! [`space`] for its precise definition and its canonical encoding.
#![forbid(unsafe_code)]

pub mod codec;
mod error;
pub mod parse;
pub mod service;
pub mod space;
pub mod tuple;

#[cfg(test)]
mod test_rng;

pub use codec::{Op, Reply, decode_op, decode_reply, encode_op, encode_reply};
pub use error::Error;
pub use parse::{parse_template, parse_tuple};
pub use space::{Answer, BlockedOp, ExecCtx, TupleSpace, TypedAnswer, WaitKind};
pub use tuple::{Field, FieldType, Template, TemplateField, Tuple};
