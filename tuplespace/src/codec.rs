//! The binary encoding of operations and replies (and the field and tuple encoding the
//! state encoding shares).
//!
//! All integers are little-endian. Strings and byte strings are a `u32` length and the
//! bytes.
//!
//! - Field: a type tag (1 string, 2 integer, 3 bytes), then a length and bytes, or an
//!   `i64`.
//! - Template field: tag 0 `*`, 1..=3 an exact field as above, 4 `*str`, 5 `*int`,
//!   6 `*bytes`.
//! - Tuple or template: a `u8` arity, then the fields.
//! - Lease: a flag byte (0 none, 1 some), then a `u64` of milliseconds when 1.
//!
//! | tag | operation | fields after the tag |
//! |---|---|---|
//! | 1 | out | tuple, lease |
//! | 2 | rdp | template |
//! | 3 | inp | template |
//! | 4 | rd | template |
//! | 5 | in | template |
//! | 6 | cas | template, tuple, lease |
//! | 7 | replace | template, tuple, lease |
//! | 8 | rd_all | template, `u32` limit |
//! | 9 | in_all | template, `u32` limit |
//! | 10 | count | template |
//! | 11 | renew | template, `u64` lease ms |
//! | 12 | cancel | `u64` sequence of the blocked request |
//!
//! | tag | reply | fields after the tag |
//! |---|---|---|
//! | 0 | ok | |
//! | 1 | tuple | tuple |
//! | 2 | not found | |
//! | 3 | tuples | `u32` count, tuples |
//! | 4 | count | `u64` |
//! | 5 | cancelled | |
//! | 6 | rejected | reason (UTF-8, at most [`REASON_BYTES_MAX`]) |
//!
//! Decoders check every length against its bound before reading or allocating, return
//! an [`Error`] on any malformed input (never panic), and reject trailing bytes. Decoded
//! tuples and templates pass the same checks as [`Tuple::new`] and [`Template::new`].

use crate::Error;
use crate::space::ALL_LIMIT_MAX;
use crate::tuple::{ARITY_MAX, Field, FieldType, TUPLE_BYTES_MAX, Template, TemplateField, Tuple};

/// Most encoded bytes of one tuple or template: arity byte, a tag and length per
/// field, and the payload (a valid template's exact fields fit in [`TUPLE_BYTES_MAX`]).
pub const TUPLE_ENCODED_BYTES_MAX: usize = 1 + ARITY_MAX * (1 + 4) + TUPLE_BYTES_MAX;
/// Most bytes of one encoded operation (`replace`: tag, template, tuple, lease).
pub const OP_BYTES_MAX: usize = 1 + 2 * TUPLE_ENCODED_BYTES_MAX + 9;
/// Most bytes of the reason in a rejected reply; longer reasons are cut.
pub const REASON_BYTES_MAX: usize = 1024;
/// Most bytes of one encoded reply. `rd_all`/`in_all` stop before a reply would pass it.
pub const REPLY_BYTES_MAX: usize = 4 * 1024 * 1024;

// One tuple always fits in a `tuples` reply, so rd_all/in_all never return nothing
// while a match exists.
const _: () = assert!(REPLY_BYTES_MAX >= 1 + 4 + TUPLE_ENCODED_BYTES_MAX);
const _: () = assert!(REPLY_BYTES_MAX >= 1 + 4 + REASON_BYTES_MAX);
const _: () = assert!(OP_BYTES_MAX <= u32::MAX as usize);

const TAG_OUT: u8 = 1;
const TAG_RDP: u8 = 2;
const TAG_INP: u8 = 3;
const TAG_RD: u8 = 4;
const TAG_IN: u8 = 5;
const TAG_CAS: u8 = 6;
const TAG_REPLACE: u8 = 7;
const TAG_RD_ALL: u8 = 8;
const TAG_IN_ALL: u8 = 9;
const TAG_COUNT: u8 = 10;
const TAG_RENEW: u8 = 11;
const TAG_CANCEL: u8 = 12;

const REPLY_OK: u8 = 0;
const REPLY_TUPLE: u8 = 1;
const REPLY_NOT_FOUND: u8 = 2;
const REPLY_TUPLES: u8 = 3;
const REPLY_COUNT: u8 = 4;
const REPLY_CANCELLED: u8 = 5;
const REPLY_REJECTED: u8 = 6;

const FIELD_STR: u8 = 1;
const FIELD_INT: u8 = 2;
const FIELD_BYTES: u8 = 3;
const TEMPLATE_ANY: u8 = 0;
const TEMPLATE_ANY_STR: u8 = 4;
const TEMPLATE_ANY_INT: u8 = 5;
const TEMPLATE_ANY_BYTES: u8 = 6;

/// One operation on the tuple space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `tuple`; with a lease it expires `lease_ms` after the agreed time of this
    /// request.
    Out {
        /// The tuple.
        tuple: Tuple,
        /// Its lease, or `None` to keep it until it is taken.
        lease_ms: Option<u64>,
    },
    /// Read the first match, or answer not found.
    Rdp {
        /// What to match.
        template: Template,
    },
    /// Take the first match, or answer not found.
    Inp {
        /// What to match.
        template: Template,
    },
    /// Read the first match, waiting for one if there is none.
    Rd {
        /// What to match.
        template: Template,
    },
    /// Take the first match, waiting for one if there is none.
    In {
        /// What to match.
        template: Template,
    },
    /// Write `tuple` only if nothing matches `template`; else answer the first match.
    Cas {
        /// What must not exist.
        template: Template,
        /// What to write.
        tuple: Tuple,
        /// The written tuple's lease.
        lease_ms: Option<u64>,
    },
    /// Take the first match of `template` and write `tuple` in its place; nothing if no
    /// match.
    Replace {
        /// What to replace.
        template: Template,
        /// Its replacement.
        tuple: Tuple,
        /// The replacement's lease.
        lease_ms: Option<u64>,
    },
    /// Read up to `limit` matches, first first.
    RdAll {
        /// What to match.
        template: Template,
        /// At most this many (1..=[`ALL_LIMIT_MAX`]).
        limit: u32,
    },
    /// Take up to `limit` matches, first first.
    InAll {
        /// What to match.
        template: Template,
        /// At most this many (1..=[`ALL_LIMIT_MAX`]).
        limit: u32,
    },
    /// Count the matches.
    Count {
        /// What to match.
        template: Template,
    },
    /// Give the first match a lease of `lease_ms` from now (replacing any lease).
    Renew {
        /// What to renew.
        template: Template,
        /// The new lease.
        lease_ms: u64,
    },
    /// Cancel this client's blocked request with `sequence`.
    Cancel {
        /// The blocked request's sequence number.
        sequence: u64,
    },
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done: `out` wrote, `cas` wrote, `cancel` cancelled.
    Ok,
    /// The tuple read, taken, replaced, renewed, or (for `cas`) the one that exists.
    Tuple(Tuple),
    /// No tuple matched (or, for `cancel`, no such blocked request).
    NotFound,
    /// `rd_all`/`in_all`: the matches, first first.
    Tuples(Vec<Tuple>),
    /// `count`: how many matched.
    Count(u64),
    /// A blocked `rd`/`in` that its client cancelled.
    Cancelled,
    /// The request was refused and changed nothing; why.
    Rejected(String),
}

/// Where encoders write: a buffer, or a hash.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for sha2::Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        sha2::Digest::update(self, bytes);
    }
}

pub(crate) fn put_u8(out: &mut impl Sink, v: u8) {
    out.put(&[v]);
}

pub(crate) fn put_u32(out: &mut impl Sink, v: u32) {
    out.put(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut impl Sink, v: u64) {
    out.put(&v.to_le_bytes());
}

fn put_len_bytes(out: &mut impl Sink, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("lengths are bounded far below u32::MAX");
    put_u32(out, len);
    out.put(bytes);
}

fn put_field(out: &mut impl Sink, field: &Field) {
    match field {
        Field::Str(s) => {
            put_u8(out, FIELD_STR);
            put_len_bytes(out, s.as_bytes());
        }
        Field::Int(i) => {
            put_u8(out, FIELD_INT);
            out.put(&i.to_le_bytes());
        }
        Field::Bytes(b) => {
            put_u8(out, FIELD_BYTES);
            put_len_bytes(out, b);
        }
    }
}

fn arity_byte(arity: usize) -> u8 {
    u8::try_from(arity).expect("arity is bounded by ARITY_MAX <= u8::MAX")
}

pub(crate) fn put_tuple(out: &mut impl Sink, tuple: &Tuple) {
    put_u8(out, arity_byte(tuple.arity()));
    for field in tuple.fields() {
        put_field(out, field);
    }
}

pub(crate) fn put_template(out: &mut impl Sink, template: &Template) {
    put_u8(out, arity_byte(template.arity()));
    for field in template.fields() {
        match field {
            TemplateField::Any => put_u8(out, TEMPLATE_ANY),
            TemplateField::AnyOf(FieldType::Str) => put_u8(out, TEMPLATE_ANY_STR),
            TemplateField::AnyOf(FieldType::Int) => put_u8(out, TEMPLATE_ANY_INT),
            TemplateField::AnyOf(FieldType::Bytes) => put_u8(out, TEMPLATE_ANY_BYTES),
            TemplateField::Exact(f) => put_field(out, f),
        }
    }
}

fn put_lease(out: &mut impl Sink, lease_ms: Option<u64>) {
    match lease_ms {
        None => put_u8(out, 0),
        Some(ms) => {
            put_u8(out, 1);
            put_u64(out, ms);
        }
    }
}

/// A bounds-checked cursor over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(Error::Truncated { what, offset: self.bytes.len() });
        }
        let out = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn finish(&self) -> Result<(), Error> {
        match self.remaining() {
            0 => Ok(()),
            bytes => Err(Error::Trailing { bytes }),
        }
    }

    /// A `u32` length, checked against `max` before anything is read or allocated.
    fn len_bytes(
        &mut self,
        max: usize,
        what: &'static str,
        too_long: impl FnOnce(usize) -> Error,
    ) -> Result<&'a [u8], Error> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(too_long(len));
        }
        self.take(len, what)
    }

    fn field_with_tag(&mut self, tag: u8, index: usize) -> Result<Field, Error> {
        let too_long = |bytes| Error::FieldTooLong { index, bytes };
        match tag {
            FIELD_STR => {
                let start = self.offset + 4;
                let b = self.len_bytes(crate::tuple::FIELD_BYTES_MAX, "string", too_long)?;
                let s = std::str::from_utf8(b).map_err(|_| Error::InvalidUtf8 { offset: start })?;
                Ok(Field::Str(s.to_owned()))
            }
            FIELD_INT => Ok(Field::Int(self.u64("integer")? as i64)),
            FIELD_BYTES => {
                let b = self.len_bytes(crate::tuple::FIELD_BYTES_MAX, "bytes", too_long)?;
                Ok(Field::Bytes(b.to_vec()))
            }
            tag => Err(Error::UnknownTag { what: "field", tag, offset: self.offset - 1 }),
        }
    }

    fn arity(&mut self) -> Result<usize, Error> {
        let arity = self.u8("arity")? as usize;
        if arity == 0 {
            return Err(Error::ArityZero);
        }
        if arity > ARITY_MAX {
            return Err(Error::ArityOverMax { arity });
        }
        Ok(arity)
    }

    pub(crate) fn tuple(&mut self) -> Result<Tuple, Error> {
        let arity = self.arity()?;
        let mut fields = Vec::with_capacity(arity);
        for index in 0..arity {
            let tag = self.u8("field tag")?;
            fields.push(self.field_with_tag(tag, index)?);
        }
        Tuple::new(fields)
    }

    pub(crate) fn template(&mut self) -> Result<Template, Error> {
        let arity = self.arity()?;
        let mut fields = Vec::with_capacity(arity);
        for index in 0..arity {
            let field = match self.u8("template field tag")? {
                TEMPLATE_ANY => TemplateField::Any,
                TEMPLATE_ANY_STR => TemplateField::AnyOf(FieldType::Str),
                TEMPLATE_ANY_INT => TemplateField::AnyOf(FieldType::Int),
                TEMPLATE_ANY_BYTES => TemplateField::AnyOf(FieldType::Bytes),
                tag => TemplateField::Exact(self.field_with_tag(tag, index)?),
            };
            fields.push(field);
        }
        Template::new(fields)
    }

    fn lease(&mut self) -> Result<Option<u64>, Error> {
        match self.u8("lease flag")? {
            0 => Ok(None),
            1 => Ok(Some(self.u64("lease")?)),
            tag => Err(Error::UnknownTag { what: "lease flag", tag, offset: self.offset - 1 }),
        }
    }
}

/// Encodes `op`. The result is at most [`OP_BYTES_MAX`] bytes.
pub fn encode_op(op: &Op) -> Vec<u8> {
    let mut out = Vec::new();
    match op {
        Op::Out { tuple, lease_ms } => {
            put_u8(&mut out, TAG_OUT);
            put_tuple(&mut out, tuple);
            put_lease(&mut out, *lease_ms);
        }
        Op::Rdp { template } => {
            put_u8(&mut out, TAG_RDP);
            put_template(&mut out, template);
        }
        Op::Inp { template } => {
            put_u8(&mut out, TAG_INP);
            put_template(&mut out, template);
        }
        Op::Rd { template } => {
            put_u8(&mut out, TAG_RD);
            put_template(&mut out, template);
        }
        Op::In { template } => {
            put_u8(&mut out, TAG_IN);
            put_template(&mut out, template);
        }
        Op::Cas { template, tuple, lease_ms } => {
            put_u8(&mut out, TAG_CAS);
            put_template(&mut out, template);
            put_tuple(&mut out, tuple);
            put_lease(&mut out, *lease_ms);
        }
        Op::Replace { template, tuple, lease_ms } => {
            put_u8(&mut out, TAG_REPLACE);
            put_template(&mut out, template);
            put_tuple(&mut out, tuple);
            put_lease(&mut out, *lease_ms);
        }
        Op::RdAll { template, limit } => {
            put_u8(&mut out, TAG_RD_ALL);
            put_template(&mut out, template);
            put_u32(&mut out, *limit);
        }
        Op::InAll { template, limit } => {
            put_u8(&mut out, TAG_IN_ALL);
            put_template(&mut out, template);
            put_u32(&mut out, *limit);
        }
        Op::Count { template } => {
            put_u8(&mut out, TAG_COUNT);
            put_template(&mut out, template);
        }
        Op::Renew { template, lease_ms } => {
            put_u8(&mut out, TAG_RENEW);
            put_template(&mut out, template);
            put_u64(&mut out, *lease_ms);
        }
        Op::Cancel { sequence } => {
            put_u8(&mut out, TAG_CANCEL);
            put_u64(&mut out, *sequence);
        }
    }
    assert!(out.len() <= OP_BYTES_MAX, "a valid op encodes within OP_BYTES_MAX");
    out
}

/// Whether `bytes` starts as a blocking operation (`rd` or `in`), by its tag alone.
pub fn is_blocking_op(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(&(TAG_RD | TAG_IN)))
}

/// Decodes one operation. Leases and limits are carried as given; their ranges are
/// checked at execution ([`Error::LeaseInvalid`], [`Error::LimitInvalid`]).
pub fn decode_op(bytes: &[u8]) -> Result<Op, Error> {
    if bytes.len() > OP_BYTES_MAX {
        return Err(Error::OpTooLarge { bytes: bytes.len() });
    }
    let mut r = Reader::new(bytes);
    let op = match r.u8("operation tag")? {
        TAG_OUT => Op::Out { tuple: r.tuple()?, lease_ms: r.lease()? },
        TAG_RDP => Op::Rdp { template: r.template()? },
        TAG_INP => Op::Inp { template: r.template()? },
        TAG_RD => Op::Rd { template: r.template()? },
        TAG_IN => Op::In { template: r.template()? },
        TAG_CAS => Op::Cas { template: r.template()?, tuple: r.tuple()?, lease_ms: r.lease()? },
        TAG_REPLACE => {
            Op::Replace { template: r.template()?, tuple: r.tuple()?, lease_ms: r.lease()? }
        }
        TAG_RD_ALL => Op::RdAll { template: r.template()?, limit: r.u32("limit")? },
        TAG_IN_ALL => Op::InAll { template: r.template()?, limit: r.u32("limit")? },
        TAG_COUNT => Op::Count { template: r.template()? },
        TAG_RENEW => Op::Renew { template: r.template()?, lease_ms: r.u64("lease")? },
        TAG_CANCEL => Op::Cancel { sequence: r.u64("sequence")? },
        tag => return Err(Error::UnknownTag { what: "operation", tag, offset: 0 }),
    };
    r.finish()?;
    Ok(op)
}

/// Cuts `reason` to at most [`REASON_BYTES_MAX`] bytes at a character boundary.
fn bounded_reason(reason: &str) -> &str {
    if reason.len() <= REASON_BYTES_MAX {
        return reason;
    }
    let mut end = REASON_BYTES_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Encodes `reply`. A rejected reason over [`REASON_BYTES_MAX`] is cut.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        Reply::Ok => put_u8(&mut out, REPLY_OK),
        Reply::Tuple(t) => {
            put_u8(&mut out, REPLY_TUPLE);
            put_tuple(&mut out, t);
        }
        Reply::NotFound => put_u8(&mut out, REPLY_NOT_FOUND),
        Reply::Tuples(ts) => {
            put_u8(&mut out, REPLY_TUPLES);
            let count = u32::try_from(ts.len()).expect("tuples in a reply are bounded");
            put_u32(&mut out, count);
            for t in ts {
                put_tuple(&mut out, t);
            }
        }
        Reply::Count(n) => {
            put_u8(&mut out, REPLY_COUNT);
            put_u64(&mut out, *n);
        }
        Reply::Cancelled => put_u8(&mut out, REPLY_CANCELLED),
        Reply::Rejected(reason) => {
            put_u8(&mut out, REPLY_REJECTED);
            put_len_bytes(&mut out, bounded_reason(reason).as_bytes());
        }
    }
    out
}

/// Decodes one reply.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, Error> {
    if bytes.len() > REPLY_BYTES_MAX {
        return Err(Error::Malformed { what: "reply over REPLY_BYTES_MAX", offset: 0 });
    }
    let mut r = Reader::new(bytes);
    let reply = match r.u8("reply tag")? {
        REPLY_OK => Reply::Ok,
        REPLY_TUPLE => Reply::Tuple(r.tuple()?),
        REPLY_NOT_FOUND => Reply::NotFound,
        REPLY_TUPLES => {
            let count = r.u32("tuple count")?;
            if count > ALL_LIMIT_MAX {
                return Err(Error::Malformed { what: "tuple count over ALL_LIMIT_MAX", offset: 1 });
            }
            // Every tuple takes at least 3 bytes; never allocate more than the input
            // can hold.
            let mut ts = Vec::with_capacity((count as usize).min(r.remaining() / 3));
            for _ in 0..count {
                ts.push(r.tuple()?);
            }
            Reply::Tuples(ts)
        }
        REPLY_COUNT => Reply::Count(r.u64("count")?),
        REPLY_CANCELLED => Reply::Cancelled,
        REPLY_REJECTED => {
            let start = r.offset() + 4;
            let b = r.len_bytes(REASON_BYTES_MAX, "reason", |_| Error::Malformed {
                what: "reason over REASON_BYTES_MAX",
                offset: 1,
            })?;
            let s = std::str::from_utf8(b).map_err(|_| Error::InvalidUtf8 { offset: start })?;
            Reply::Rejected(s.to_owned())
        }
        tag => return Err(Error::UnknownTag { what: "reply", tag, offset: 0 }),
    };
    r.finish()?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn sample_ops() -> Vec<Op> {
        let t =
            Tuple::new(vec![Field::Str("job".into()), Field::Int(-7), Field::Bytes(vec![0, 1, 2])])
                .unwrap();
        let tpl = Template::new(vec![
            TemplateField::Exact(Field::Str("job".into())),
            TemplateField::AnyOf(FieldType::Int),
            TemplateField::Any,
        ])
        .unwrap();
        vec![
            Op::Out { tuple: t.clone(), lease_ms: None },
            Op::Out { tuple: t.clone(), lease_ms: Some(500) },
            Op::Rdp { template: tpl.clone() },
            Op::Inp { template: tpl.clone() },
            Op::Rd { template: tpl.clone() },
            Op::In { template: tpl.clone() },
            Op::Cas { template: tpl.clone(), tuple: t.clone(), lease_ms: Some(9) },
            Op::Replace { template: tpl.clone(), tuple: t.clone(), lease_ms: None },
            Op::RdAll { template: tpl.clone(), limit: 10 },
            Op::InAll { template: tpl.clone(), limit: 1 },
            Op::Count { template: tpl.clone() },
            Op::Renew { template: tpl, lease_ms: 1000 },
            Op::Cancel { sequence: u64::MAX },
        ]
    }

    fn sample_replies() -> Vec<Reply> {
        let t = Tuple::new(vec![Field::Str("a".into()), Field::Int(1)]).unwrap();
        vec![
            Reply::Ok,
            Reply::Tuple(t.clone()),
            Reply::NotFound,
            Reply::Tuples(vec![]),
            Reply::Tuples(vec![t.clone(), t]),
            Reply::Count(42),
            Reply::Cancelled,
            Reply::Rejected("no".into()),
        ]
    }

    #[test]
    fn every_op_and_reply_round_trips() {
        for op in sample_ops() {
            assert_eq!(decode_op(&encode_op(&op)), Ok(op));
        }
        for reply in sample_replies() {
            assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
        }
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_an_error() {
        for op in sample_ops() {
            let bytes = encode_op(&op);
            for len in 0..bytes.len() {
                assert!(decode_op(&bytes[..len]).is_err(), "{op:?} cut at {len}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(decode_op(&long), Err(Error::Trailing { bytes: 1 }));
        }
        for reply in sample_replies() {
            let bytes = encode_reply(&reply);
            for len in 0..bytes.len() {
                assert!(decode_reply(&bytes[..len]).is_err(), "{reply:?} cut at {len}");
            }
        }
    }

    #[test]
    fn malformed_fields_name_what_is_wrong() {
        // rdp of a 1-field template whose string is not UTF-8.
        let bad_utf8 = [TAG_RDP, 1, FIELD_STR, 1, 0, 0, 0, 0xff];
        assert_eq!(decode_op(&bad_utf8), Err(Error::InvalidUtf8 { offset: 7 }));
        // A length over FIELD_BYTES_MAX is refused before anything is read.
        let huge = [TAG_RDP, 1, FIELD_BYTES, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode_op(&huge),
            Err(Error::FieldTooLong { index: 0, bytes: u32::MAX as usize })
        );
        assert_eq!(decode_op(&[TAG_RDP, 0]), Err(Error::ArityZero));
        assert_eq!(decode_op(&[TAG_RDP, 17]), Err(Error::ArityOverMax { arity: 17 }));
        assert_eq!(
            decode_op(&[TAG_RDP, 1, 9]),
            Err(Error::UnknownTag { what: "field", tag: 9, offset: 2 })
        );
        assert_eq!(
            decode_op(&[99]),
            Err(Error::UnknownTag { what: "operation", tag: 99, offset: 0 })
        );
        assert_eq!(
            decode_op(&vec![0; OP_BYTES_MAX + 1]),
            Err(Error::OpTooLarge { bytes: OP_BYTES_MAX + 1 })
        );
    }

    #[test]
    fn long_rejection_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(REASON_BYTES_MAX);
        let Ok(Reply::Rejected(cut)) = decode_reply(&encode_reply(&Reply::Rejected(reason))) else {
            panic!("a cut reason still decodes");
        };
        assert!(cut.len() <= REASON_BYTES_MAX && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn decoders_never_panic_on_random_truncated_or_mutated_input() {
        let mut rng = Rng::new(0x7e57_c0de);
        let ops: Vec<Vec<u8>> = sample_ops().iter().map(encode_op).collect();
        let replies: Vec<Vec<u8>> = sample_replies().iter().map(encode_reply).collect();
        let state = {
            let mut space = crate::space::TupleSpace::new();
            let ctx = |sequence| crate::space::ExecCtx { client_id: 1, sequence, now_ms: 3 };
            for (sequence, op) in sample_ops().iter().enumerate() {
                space.apply(ctx(sequence as u64), op);
            }
            space.apply(
                ctx(99),
                &Op::In { template: Template::exact(&Tuple::new(vec![Field::Int(0)]).unwrap()) },
            );
            let t = Tuple::new(vec![Field::Str("kept".into()), Field::Bytes(vec![9])]).unwrap();
            space.apply(ctx(100), &Op::Out { tuple: t.clone(), lease_ms: Some(40) });
            space.apply(ctx(101), &Op::Out { tuple: t, lease_ms: None });
            assert!(space.blocked().count() > 0 && space.len() >= 2);
            space.encode_state()
        };
        for round in 0..200_000u32 {
            let mut input = match round % 5 {
                4 => state.clone(),
                0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect::<Vec<u8>>(),
                1 => ops[rng.below(ops.len() as u64) as usize].clone(),
                2 => replies[rng.below(replies.len() as u64) as usize].clone(),
                _ => {
                    // A random tag followed by random small bytes: reaches deeper.
                    let mut v = vec![rng.below(14) as u8, rng.below(4) as u8];
                    v.extend((0..rng.below(40)).map(|_| rng.below(8) as u8));
                    v
                }
            };
            // Mutate a few bytes, then maybe truncate.
            for _ in 0..rng.below(4) {
                if !input.is_empty() {
                    let i = rng.below(input.len() as u64) as usize;
                    input[i] = rng.next() as u8;
                }
            }
            if rng.below(2) == 0 && !input.is_empty() {
                input.truncate(rng.below(input.len() as u64) as usize);
            }
            if let Ok(op) = decode_op(&input) {
                assert_eq!(encode_op(&op), input, "a decoded op re-encodes to its bytes");
            }
            if let Ok(reply) = decode_reply(&input) {
                assert_eq!(encode_reply(&reply), input);
            }
            if let Ok(space) = crate::space::TupleSpace::decode_state(&input) {
                assert_eq!(space.encode_state(), input, "a decoded state re-encodes to its bytes");
            }
        }
    }
}
