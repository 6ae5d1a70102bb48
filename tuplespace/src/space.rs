//! The tuple space as a deterministic state machine.
//!
//! [`TupleSpace::execute`] applies one ordered request at the agreed time in its
//! [`ExecCtx`] and returns every [`Answer`] the request produced: usually one for the
//! request itself, none when it blocked, and more when it released earlier blocked
//! requests. See the crate documentation for the semantics of each operation.
//!
//! # State
//!
//! The logical state is exactly:
//!
//! 1. `now_ms`: the largest agreed time seen, capped at [`NOW_MS_MAX`] (time never
//!    goes back; an older timestamp in a request counts as `now_ms`);
//! 2. the stored tuples, as a sequence in matching order (oldest stored first), each
//!    with its expiry time or none; every expiry is after `now_ms`;
//! 3. the blocked requests, as a sequence in wait order (oldest first), each with its
//!    client, sequence number, kind (`rd` or `in`) and template; none of them matches a
//!    stored tuple.
//!
//! Internal ids only give these sequences their order; their values are not state.
//! [`TupleSpace::encode_state`] writes the sequences by rank, so the bytes, and
//! [`TupleSpace::state_digest`], depend on the logical state alone, not on the history
//! that built it.
//!
//! # State encoding (version 1)
//!
//! Little-endian; tuples and templates as in [`crate::codec`].
//!
//! ```text
//! magic "DTSS" | version u8 = 1 | now_ms u64
//! | tuple count u64 | per tuple, in matching order: lease flag u8 (0, or 1 + expiry u64) | tuple
//! | blocked count u32 | per blocked request, in wait order:
//!     client_id u64 | sequence u64 | kind u8 (0 rd, 1 in) | template
//! ```
//!
//! # Cost
//!
//! Stored tuples are indexed by (arity, first field value), (arity, first field type)
//! and arity, each in insertion order, and by expiry. `out`, and `rdp`/`inp` whose
//! template's first field is exact and whose first candidate matches, are O(log n).
//! A template whose first field is a wildcard, or whose later fields reject many
//! candidates, scans the candidates of its index in order until a match. `out` also
//! offers the tuple to the blocked requests of its arity (at most [`BLOCKED_MAX`]).

use imbl::{OrdMap as BTreeMap, OrdSet as BTreeSet};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::codec::{self, Op, REPLY_BYTES_MAX, Reader, Reply, Sink};
use crate::tuple::{Field, FieldType, Template, TemplateField, Tuple};

/// Longest lease, in milliseconds (30 days).
pub const LEASE_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Largest `rd_all`/`in_all` limit.
pub const ALL_LIMIT_MAX: u32 = 1024;
/// Most blocked requests of one client.
pub const BLOCKED_PER_CLIENT_MAX: usize = 16;
/// Most blocked requests in the space.
pub const BLOCKED_MAX: usize = 4096;
/// Latest agreed time the space takes: a later `now_ms` counts as this, so that a
/// lease end (time + at most [`LEASE_MS_MAX`]) never overflows. About 584 million
/// years after the epoch.
pub const NOW_MS_MAX: u64 = u64::MAX - LEASE_MS_MAX - 1;
/// Most tuples stored; an `out`, `cas` or `replace` that would store more is refused.
pub const TUPLES_MAX: u64 = 1 << 24;

const _: () = assert!(BLOCKED_PER_CLIENT_MAX >= 1 && BLOCKED_PER_CLIENT_MAX <= BLOCKED_MAX);
const _: () = assert!(BLOCKED_MAX <= u32::MAX as usize);
const _: () = assert!(ALL_LIMIT_MAX >= 1);

const STATE_MAGIC: &[u8; 4] = b"DTSS";
const STATE_VERSION: u8 = 1;

/// What the ordering layer agreed about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecCtx {
    /// The client that sent it.
    pub client_id: u64,
    /// The client's sequence number for it.
    pub sequence: u64,
    /// The agreed time of its batch (the leader's timestamp, checked by the others).
    pub now_ms: u64,
}

/// An encoded reply to one request, which may be an earlier one than the request
/// being executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The client the reply goes to.
    pub client_id: u64,
    /// The sequence number of the request it answers.
    pub sequence: u64,
    /// The reply, encoded by [`codec::encode_reply`].
    pub reply: Vec<u8>,
}

/// [`Answer`] before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedAnswer {
    /// The client the reply goes to.
    pub client_id: u64,
    /// The sequence number of the request it answers.
    pub sequence: u64,
    /// The reply.
    pub reply: Reply,
}

/// Whether a blocked request reads or takes the tuple that releases it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitKind {
    /// A blocked `rd`: reads, the tuple stays.
    Rd,
    /// A blocked `in`: takes the tuple.
    In,
}

/// A blocked `rd` or `in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedOp {
    /// Its client.
    pub client_id: u64,
    /// Its sequence number.
    pub sequence: u64,
    /// Read or take.
    pub kind: WaitKind,
    /// What it waits for.
    pub template: Template,
}

#[derive(Debug, Clone)]
pub(crate) struct Stored {
    tuple: Tuple,
    expires_at_ms: Option<u64>,
}

/// The Durable DepSpace service state: stored tuples with their leases, blocked
/// requests, and the agreed time.
///
/// Every map and index is persistent (`imbl`), so a clone is O(1) and shares
/// structure: a checkpoint's view ([`crate::service::TupleSpaceView`]) is taken
/// between two batches without copying the state.
#[derive(Debug, Clone, Default)]
pub struct TupleSpace {
    now_ms: u64,
    next_tuple_id: u64,
    /// tuple id -> tuple; ids grow with insertion, so id order is matching order.
    tuples: BTreeMap<u64, Stored>,
    by_first: BTreeSet<(u8, Field, u64)>,
    by_first_type: BTreeSet<(u8, FieldType, u64)>,
    by_arity: BTreeSet<(u8, u64)>,
    /// (expiry, tuple id) for leased tuples.
    expiry: BTreeSet<(u64, u64)>,
    next_wait_id: u64,
    /// wait id -> blocked request; id order is wait order.
    blocked: BTreeMap<u64, BlockedOp>,
    blocked_by_arity: BTreeSet<(u8, u64)>,
    /// (client, sequence) -> wait id.
    blocked_by_request: BTreeMap<(u64, u64), u64>,
}

fn arity_key(arity: usize) -> u8 {
    u8::try_from(arity).expect("arity is bounded by ARITY_MAX <= u8::MAX")
}

fn check_lease(lease_ms: u64) -> Result<u64, Error> {
    if lease_ms == 0 || lease_ms > LEASE_MS_MAX {
        return Err(Error::LeaseInvalid { lease_ms });
    }
    Ok(lease_ms)
}

fn check_optional_lease(lease_ms: Option<u64>) -> Result<(), Error> {
    lease_ms.map(check_lease).transpose().map(|_| ())
}

fn check_limit(limit: u32) -> Result<usize, Error> {
    if limit == 0 || limit > ALL_LIMIT_MAX {
        return Err(Error::LimitInvalid { limit });
    }
    Ok(limit as usize)
}

/// Encoded size of `tuple` (as in [`codec`]).
fn tuple_encoded_bytes(tuple: &Tuple) -> usize {
    1 + tuple
        .fields()
        .iter()
        .map(|f| match f {
            Field::Int(_) => 1 + 8,
            f => 1 + 4 + f.payload_bytes(),
        })
        .sum::<usize>()
}

impl TupleSpace {
    /// An empty space at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest agreed time seen.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The number of stored tuples.
    pub fn len(&self) -> usize {
        self.tuples.len()
    }

    /// Whether no tuple is stored.
    pub fn is_empty(&self) -> bool {
        self.tuples.is_empty()
    }

    /// The stored tuples in matching order, each with its expiry time.
    pub fn tuples(&self) -> impl Iterator<Item = (&Tuple, Option<u64>)> {
        self.tuples.values().map(|s| (&s.tuple, s.expires_at_ms))
    }

    /// The blocked requests in wait order.
    pub fn blocked(&self) -> impl Iterator<Item = &BlockedOp> {
        self.blocked.values()
    }

    /// Executes one encoded request at the agreed time in `ctx` and returns the
    /// encoded answers: the request's own first (none if it blocked), then the
    /// requests it released, in wait order. A malformed request is answered with a
    /// rejection and changes nothing but the time.
    pub fn execute(&mut self, ctx: ExecCtx, op: &[u8]) -> Vec<Answer> {
        self.execute_typed(ctx, op)
            .into_iter()
            .map(|a| Answer {
                client_id: a.client_id,
                sequence: a.sequence,
                reply: codec::encode_reply(&a.reply),
            })
            .collect()
    }

    /// [`TupleSpace::execute`] with the replies not yet encoded.
    pub fn execute_typed(&mut self, ctx: ExecCtx, op: &[u8]) -> Vec<TypedAnswer> {
        match codec::decode_op(op) {
            Ok(op) => self.apply(ctx, &op),
            Err(e) => {
                self.advance_time(ctx.now_ms);
                vec![rejected(ctx, &e)]
            }
        }
    }

    /// Applies one decoded operation: first the time advances to `ctx.now_ms` (if
    /// later) and expired tuples go, then the operation runs. An operation refused
    /// with an [`Error`] (bad lease or limit, a bound reached) changes nothing else.
    pub fn apply(&mut self, ctx: ExecCtx, op: &Op) -> Vec<TypedAnswer> {
        self.advance_time(ctx.now_ms);
        let mut released = Vec::new();
        match self.apply_checked(ctx, op, &mut released) {
            Ok(own) => {
                let mut answers = Vec::with_capacity(1 + released.len());
                if let Some(reply) = own {
                    answers.push(TypedAnswer {
                        client_id: ctx.client_id,
                        sequence: ctx.sequence,
                        reply,
                    });
                }
                answers.extend(released);
                answers
            }
            Err(e) => {
                assert!(released.is_empty(), "a refused operation releases nothing");
                vec![rejected(ctx, &e)]
            }
        }
    }

    /// Runs `op`; `Ok(None)` when it blocked. Every check that can refuse the
    /// operation comes before its first change.
    fn apply_checked(
        &mut self,
        ctx: ExecCtx,
        op: &Op,
        released: &mut Vec<TypedAnswer>,
    ) -> Result<Option<Reply>, Error> {
        let reply = match op {
            Op::Out { tuple, lease_ms } => {
                check_optional_lease(*lease_ms)?;
                self.check_room()?;
                self.write(tuple.clone(), *lease_ms, released);
                Reply::Ok
            }
            Op::Rdp { template } => match self.first_match(template) {
                Some(id) => Reply::Tuple(self.tuples[&id].tuple.clone()),
                None => Reply::NotFound,
            },
            Op::Inp { template } => match self.first_match(template) {
                Some(id) => Reply::Tuple(self.remove_tuple(id).tuple),
                None => Reply::NotFound,
            },
            Op::Rd { template } | Op::In { template } => {
                let kind = if matches!(op, Op::Rd { .. }) { WaitKind::Rd } else { WaitKind::In };
                match self.first_match(template) {
                    Some(id) if kind == WaitKind::Rd => {
                        Reply::Tuple(self.tuples[&id].tuple.clone())
                    }
                    Some(id) => Reply::Tuple(self.remove_tuple(id).tuple),
                    None => {
                        self.block(ctx, kind, template)?;
                        return Ok(None);
                    }
                }
            }
            Op::Cas { template, tuple, lease_ms } => {
                check_optional_lease(*lease_ms)?;
                match self.first_match(template) {
                    Some(id) => Reply::Tuple(self.tuples[&id].tuple.clone()),
                    None => {
                        self.check_room()?;
                        self.write(tuple.clone(), *lease_ms, released);
                        Reply::Ok
                    }
                }
            }
            Op::Replace { template, tuple, lease_ms } => {
                check_optional_lease(*lease_ms)?;
                match self.first_match(template) {
                    Some(id) => {
                        // Taking one and writing one never needs more room.
                        let old = self.remove_tuple(id).tuple;
                        self.write(tuple.clone(), *lease_ms, released);
                        Reply::Tuple(old)
                    }
                    None => Reply::NotFound,
                }
            }
            Op::RdAll { template, limit } | Op::InAll { template, limit } => {
                let limit = check_limit(*limit)?;
                let ids = self.matches_for_reply(template, limit);
                let tuples = if matches!(op, Op::InAll { .. }) {
                    ids.into_iter().map(|id| self.remove_tuple(id).tuple).collect()
                } else {
                    ids.into_iter().map(|id| self.tuples[&id].tuple.clone()).collect()
                };
                Reply::Tuples(tuples)
            }
            Op::Count { template } => {
                let mut count = 0u64;
                self.for_each_match(template, |_| {
                    count += 1;
                    true
                });
                Reply::Count(count)
            }
            Op::Renew { template, lease_ms } => {
                let lease_ms = check_lease(*lease_ms)?;
                match self.first_match(template) {
                    Some(id) => {
                        let expires_at_ms = self.now_ms + lease_ms;
                        let stored = self.tuples.get_mut(&id).expect("matched id is stored");
                        if let Some(old) = stored.expires_at_ms.replace(expires_at_ms) {
                            let held = self.expiry.remove(&(old, id));
                            assert!(held.is_some(), "expiry index holds the lease");
                        }
                        let reply = Reply::Tuple(stored.tuple.clone());
                        assert!(self.expiry.insert((expires_at_ms, id)).is_none());
                        reply
                    }
                    None => Reply::NotFound,
                }
            }
            Op::Cancel { sequence } => {
                match self.blocked_by_request.get(&(ctx.client_id, *sequence)) {
                    Some(&wait_id) => {
                        let op = self.remove_blocked(wait_id);
                        released.push(TypedAnswer {
                            client_id: op.client_id,
                            sequence: op.sequence,
                            reply: Reply::Cancelled,
                        });
                        Reply::Ok
                    }
                    None => Reply::NotFound,
                }
            }
        };
        Ok(Some(reply))
    }

    /// Moves the time to `now_ms` (capped at [`NOW_MS_MAX`]) if it is later, and removes every tuple whose lease
    /// ends at or before the time.
    fn advance_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms.min(NOW_MS_MAX));
        while let Some(&(expires_at_ms, id)) = self.expiry.get_min() {
            if expires_at_ms > self.now_ms {
                break;
            }
            self.remove_tuple(id);
        }
    }

    fn check_room(&self) -> Result<(), Error> {
        if self.tuples.len() as u64 >= TUPLES_MAX {
            return Err(Error::SpaceFull);
        }
        Ok(())
    }

    /// Offers `tuple` to the blocked requests of its arity in wait order (each
    /// matching `rd` reads it; the first matching `in` takes it), and stores it unless
    /// an `in` took it.
    fn write(&mut self, tuple: Tuple, lease_ms: Option<u64>, released: &mut Vec<TypedAnswer>) {
        let arity = arity_key(tuple.arity());
        let waiting: Vec<u64> = self
            .blocked_by_arity
            .range((arity, 0)..=(arity, u64::MAX))
            .map(|&(_, wait_id)| wait_id)
            .collect();
        for wait_id in waiting {
            if !self.blocked[&wait_id].template.matches(&tuple) {
                continue;
            }
            let op = self.remove_blocked(wait_id);
            released.push(TypedAnswer {
                client_id: op.client_id,
                sequence: op.sequence,
                reply: Reply::Tuple(tuple.clone()),
            });
            if op.kind == WaitKind::In {
                return;
            }
        }
        let expires_at_ms = lease_ms.map(|ms| self.now_ms + ms);
        self.store(tuple, expires_at_ms);
    }

    fn store(&mut self, tuple: Tuple, expires_at_ms: Option<u64>) {
        let id = self.next_tuple_id;
        self.next_tuple_id += 1;
        let arity = arity_key(tuple.arity());
        // Ids are fresh: no index holds this one yet.
        assert!(self.by_first.insert((arity, tuple.first().clone(), id)).is_none());
        assert!(self.by_first_type.insert((arity, tuple.first().field_type(), id)).is_none());
        assert!(self.by_arity.insert((arity, id)).is_none());
        if let Some(e) = expires_at_ms {
            assert!(e > self.now_ms, "a stored lease ends after the time");
            assert!(self.expiry.insert((e, id)).is_none());
        }
        assert!(self.tuples.insert(id, Stored { tuple, expires_at_ms }).is_none());
    }

    fn remove_tuple(&mut self, id: u64) -> Stored {
        let stored = self.tuples.remove(&id).expect("removed tuple id is stored");
        let arity = arity_key(stored.tuple.arity());
        let first = stored.tuple.first();
        // Every index holds every tuple; a miss is a broken invariant.
        assert!(self.by_first.remove(&(arity, first.clone(), id)).is_some());
        assert!(self.by_first_type.remove(&(arity, first.field_type(), id)).is_some());
        assert!(self.by_arity.remove(&(arity, id)).is_some());
        if let Some(e) = stored.expires_at_ms {
            assert!(self.expiry.remove(&(e, id)).is_some());
        }
        stored
    }

    fn block(&mut self, ctx: ExecCtx, kind: WaitKind, template: &Template) -> Result<(), Error> {
        let (client_id, sequence) = (ctx.client_id, ctx.sequence);
        if self.blocked_by_request.contains_key(&(client_id, sequence)) {
            return Err(Error::AlreadyBlocked { client_id, sequence });
        }
        let of_client =
            self.blocked_by_request.range((client_id, 0)..=(client_id, u64::MAX)).count();
        if of_client >= BLOCKED_PER_CLIENT_MAX {
            return Err(Error::TooManyBlockedForClient { client_id });
        }
        if self.blocked.len() >= BLOCKED_MAX {
            return Err(Error::TooManyBlocked);
        }
        self.insert_blocked(BlockedOp { client_id, sequence, kind, template: template.clone() });
        Ok(())
    }

    fn insert_blocked(&mut self, op: BlockedOp) {
        let wait_id = self.next_wait_id;
        self.next_wait_id += 1;
        assert!(self.blocked_by_arity.insert((arity_key(op.template.arity()), wait_id)).is_none());
        let fresh = self.blocked_by_request.insert((op.client_id, op.sequence), wait_id);
        assert!(fresh.is_none(), "one blocked op per request");
        assert!(self.blocked.insert(wait_id, op).is_none());
    }

    fn remove_blocked(&mut self, wait_id: u64) -> BlockedOp {
        let op = self.blocked.remove(&wait_id).expect("removed wait id is blocked");
        assert!(self.blocked_by_arity.remove(&(arity_key(op.template.arity()), wait_id)).is_some());
        assert!(self.blocked_by_request.remove(&(op.client_id, op.sequence)).is_some());
        op
    }

    /// Calls `visit` with the id of every tuple matching `template`, in matching
    /// order, until it returns false.
    fn for_each_match(&self, template: &Template, mut visit: impl FnMut(u64) -> bool) {
        let arity = arity_key(template.arity());
        let mut check = |id: u64| !template.matches(&self.tuples[&id].tuple) || visit(id);
        match template.first() {
            TemplateField::Exact(first) => {
                let range = (arity, first.clone(), 0)..=(arity, first.clone(), u64::MAX);
                for (_, _, id) in self.by_first.range(range) {
                    if !check(*id) {
                        return;
                    }
                }
            }
            TemplateField::AnyOf(t) => {
                for (_, _, id) in self.by_first_type.range((arity, *t, 0)..=(arity, *t, u64::MAX)) {
                    if !check(*id) {
                        return;
                    }
                }
            }
            TemplateField::Any => {
                for (_, id) in self.by_arity.range((arity, 0)..=(arity, u64::MAX)) {
                    if !check(*id) {
                        return;
                    }
                }
            }
        }
    }

    fn first_match(&self, template: &Template) -> Option<u64> {
        let mut found = None;
        self.for_each_match(template, |id| {
            found = Some(id);
            false
        });
        found
    }

    /// The first `limit` matches whose encoded `tuples` reply fits
    /// [`REPLY_BYTES_MAX`].
    fn matches_for_reply(&self, template: &Template, limit: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut reply_bytes = 1 + 4;
        self.for_each_match(template, |id| {
            let bytes = tuple_encoded_bytes(&self.tuples[&id].tuple);
            if reply_bytes + bytes > REPLY_BYTES_MAX {
                return false;
            }
            reply_bytes += bytes;
            ids.push(id);
            ids.len() < limit
        });
        ids
    }

    /// The parts a state view keeps: the time, the stored tuples and the blocked
    /// requests, in O(1) (persistent maps share structure with the space's).
    pub(crate) fn view_parts(&self) -> (u64, BTreeMap<u64, Stored>, BTreeMap<u64, BlockedOp>) {
        (self.now_ms, self.tuples.clone(), self.blocked.clone())
    }

    fn encode_into(&self, out: &mut impl ItemSink) {
        write_state(self.now_ms, &self.tuples, &self.blocked, out);
    }

    /// The canonical encoding of the logical state (see the module docs): equal
    /// logical states give equal bytes, whatever history built them.
    pub fn encode_state(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// SHA-256 of [`TupleSpace::encode_state`], computed without building it.
    pub fn state_digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        self.encode_into(&mut hasher);
        hasher.finalize().into()
    }

    /// Rebuilds a space from [`TupleSpace::encode_state`] bytes, checking everything:
    /// magic and version, every tuple and template, every lease ends after the time,
    /// the bounds on tuples and blocked requests (overall and per client), no request
    /// blocked twice, no blocked request matching a stored tuple, no trailing bytes.
    ///
    /// Cost: rebuilding the indexes is O(n log n); checking that no blocked request
    /// matches is one match per blocked request (a scan of its candidates).
    pub fn decode_state(bytes: &[u8]) -> Result<Self, Error> {
        let mut decoder = StateDecoder::default();
        decoder.feed(bytes)?;
        decoder.finish()
    }
}

/// Where the state encoding goes, item by item: the header, each stored tuple, the
/// blocked count, each blocked request. A chunked writer cuts only between items.
pub(crate) trait ItemSink: Sink {
    /// The item written since the last call is whole.
    fn item_end(&mut self) {}
}

impl ItemSink for Vec<u8> {}
impl ItemSink for Sha256 {}

/// Writes the canonical state encoding (see the module docs) of these parts.
pub(crate) fn write_state(
    now_ms: u64,
    tuples: &BTreeMap<u64, Stored>,
    blocked: &BTreeMap<u64, BlockedOp>,
    out: &mut impl ItemSink,
) {
    out.put(STATE_MAGIC);
    codec::put_u8(out, STATE_VERSION);
    codec::put_u64(out, now_ms);
    codec::put_u64(out, tuples.len() as u64);
    out.item_end();
    for stored in tuples.values() {
        match stored.expires_at_ms {
            None => codec::put_u8(out, 0),
            Some(e) => {
                codec::put_u8(out, 1);
                codec::put_u64(out, e);
            }
        }
        codec::put_tuple(out, &stored.tuple);
        out.item_end();
    }
    let count = u32::try_from(blocked.len()).expect("bounded by BLOCKED_MAX");
    codec::put_u32(out, count);
    out.item_end();
    for op in blocked.values() {
        codec::put_u64(out, op.client_id);
        codec::put_u64(out, op.sequence);
        codec::put_u8(out, if op.kind == WaitKind::Rd { 0 } else { 1 });
        codec::put_template(out, &op.template);
        out.item_end();
    }
}

/// Where a [`StateDecoder`] is in the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum DecodeAt {
    #[default]
    Header,
    Tuples {
        left: u64,
    },
    BlockedCount,
    Blocked {
        left: u32,
    },
    Done,
}

/// Rebuilds a space from the state encoding fed in pieces that each hold whole items
/// (the chunks [`crate::service::TupleSpaceView`] writes, or the whole encoding at
/// once), checking what [`TupleSpace::decode_state`] documents. Error offsets are
/// within the piece being fed.
#[derive(Debug, Default)]
pub(crate) struct StateDecoder {
    space: TupleSpace,
    at: DecodeAt,
    /// Bytes fed so far.
    fed: usize,
}

impl StateDecoder {
    /// Decodes every item in `bytes`; an item cut at the end is an error.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut r = Reader::new(bytes);
        while r.remaining() > 0 {
            self.item(&mut r)?;
        }
        self.fed += bytes.len();
        Ok(())
    }

    fn item(&mut self, r: &mut Reader<'_>) -> Result<(), Error> {
        let space = &mut self.space;
        self.at = match self.at {
            DecodeAt::Header => {
                let offset = r.offset();
                if r.take(4, "state magic")? != STATE_MAGIC {
                    return Err(Error::Malformed { what: "state magic", offset });
                }
                let version = r.u8("state version")?;
                if version != STATE_VERSION {
                    return Err(Error::UnknownTag {
                        what: "state version",
                        tag: version,
                        offset: offset + 4,
                    });
                }
                space.now_ms = r.u64("now_ms")?;
                if space.now_ms > NOW_MS_MAX {
                    return Err(Error::Malformed {
                        what: "now_ms over NOW_MS_MAX",
                        offset: offset + 5,
                    });
                }
                let tuple_count = r.u64("tuple count")?;
                if tuple_count > TUPLES_MAX {
                    return Err(Error::Malformed {
                        what: "tuple count over TUPLES_MAX",
                        offset: offset + 13,
                    });
                }
                if tuple_count == 0 {
                    DecodeAt::BlockedCount
                } else {
                    DecodeAt::Tuples { left: tuple_count }
                }
            }
            DecodeAt::Tuples { left } => {
                let offset = r.offset();
                let expires_at_ms = match r.u8("lease flag")? {
                    0 => None,
                    1 => Some(r.u64("expiry")?),
                    tag => return Err(Error::UnknownTag { what: "lease flag", tag, offset }),
                };
                if expires_at_ms.is_some_and(|e| e <= space.now_ms) {
                    return Err(Error::Malformed {
                        what: "lease ends at or before now_ms",
                        offset,
                    });
                }
                // A lease was set at a time <= now_ms for at most LEASE_MS_MAX.
                if expires_at_ms.is_some_and(|e| e - space.now_ms > LEASE_MS_MAX) {
                    return Err(Error::Malformed {
                        what: "lease ends past now_ms + LEASE_MS_MAX",
                        offset,
                    });
                }
                space.store(r.tuple()?, expires_at_ms);
                if left == 1 { DecodeAt::BlockedCount } else { DecodeAt::Tuples { left: left - 1 } }
            }
            DecodeAt::BlockedCount => {
                let count = r.u32("blocked count")?;
                if count as usize > BLOCKED_MAX {
                    return Err(Error::Malformed {
                        what: "blocked count over BLOCKED_MAX",
                        offset: r.offset() - 4,
                    });
                }
                if count == 0 { DecodeAt::Done } else { DecodeAt::Blocked { left: count } }
            }
            DecodeAt::Blocked { left } => {
                let offset = r.offset();
                let client_id = r.u64("client_id")?;
                let sequence = r.u64("sequence")?;
                let kind = match r.u8("wait kind")? {
                    0 => WaitKind::Rd,
                    1 => WaitKind::In,
                    tag => {
                        return Err(Error::UnknownTag {
                            what: "wait kind",
                            tag,
                            offset: offset + 16,
                        });
                    }
                };
                let template = r.template()?;
                if space.first_match(&template).is_some() {
                    return Err(Error::Malformed {
                        what: "blocked request matches a tuple",
                        offset,
                    });
                }
                let ctx = ExecCtx { client_id, sequence, now_ms: space.now_ms };
                space.block(ctx, kind, &template).map_err(|_| Error::Malformed {
                    what: "blocked request repeated or over its client's bound",
                    offset,
                })?;
                if left == 1 { DecodeAt::Done } else { DecodeAt::Blocked { left: left - 1 } }
            }
            DecodeAt::Done => return Err(Error::Trailing { bytes: r.remaining() }),
        };
        Ok(())
    }

    /// The space, once every item was fed.
    pub(crate) fn finish(self) -> Result<TupleSpace, Error> {
        match self.at {
            DecodeAt::Done => Ok(self.space),
            at => Err(Error::Truncated { what: decode_at_name(at), offset: self.fed }),
        }
    }
}

fn decode_at_name(at: DecodeAt) -> &'static str {
    match at {
        DecodeAt::Header => "state header",
        DecodeAt::Tuples { .. } => "stored tuples",
        DecodeAt::BlockedCount => "blocked count",
        DecodeAt::Blocked { .. } => "blocked requests",
        DecodeAt::Done => "nothing",
    }
}

fn rejected(ctx: ExecCtx, e: &Error) -> TypedAnswer {
    TypedAnswer {
        client_id: ctx.client_id,
        sequence: ctx.sequence,
        reply: Reply::Rejected(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
