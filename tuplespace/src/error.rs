//! The crate's one error type.

use crate::tuple::{ARITY_MAX, FIELD_BYTES_MAX, TUPLE_BYTES_MAX};

/// Everything that can be wrong with input to the tuple space: a malformed or oversize
/// tuple or template, a malformed encoded operation, reply or state, a request the
/// space's bounds refuse, or a typed tuple that does not parse.
///
/// An operation that fails with one of these changes nothing in the space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A tuple or template with no fields.
    #[error("a tuple or template needs at least one field")]
    ArityZero,
    /// A tuple or template with more than [`ARITY_MAX`] fields.
    #[error("{arity} fields is over the bound of {ARITY_MAX}")]
    ArityOverMax {
        /// The number of fields given.
        arity: usize,
    },
    /// A string or byte field longer than [`FIELD_BYTES_MAX`].
    #[error("field {index} has {bytes} bytes, over the bound of {FIELD_BYTES_MAX}")]
    FieldTooLong {
        /// The field's position, from 0.
        index: usize,
        /// Its length in bytes.
        bytes: usize,
    },
    /// A tuple whose fields together are larger than [`TUPLE_BYTES_MAX`].
    #[error("tuple of {bytes} bytes is over the bound of {TUPLE_BYTES_MAX}")]
    TupleTooLarge {
        /// The sum of its fields' payload bytes.
        bytes: usize,
    },
    /// A template that no storable tuple can match: its exact fields alone are larger
    /// than any tuple may be.
    #[error(
        "template can never match: its exact fields take {bytes_min} bytes, \
         more than a tuple may hold ({TUPLE_BYTES_MAX})"
    )]
    TemplateNeverMatches {
        /// The payload bytes of its exact fields.
        bytes_min: usize,
    },
    /// A lease of 0 ms or over [`crate::space::LEASE_MS_MAX`].
    #[error("lease of {lease_ms} ms is outside 1..={max}", max = crate::space::LEASE_MS_MAX)]
    LeaseInvalid {
        /// The lease given.
        lease_ms: u64,
    },
    /// An `rd_all`/`in_all` limit of 0 or over [`crate::space::ALL_LIMIT_MAX`].
    #[error("limit {limit} is outside 1..={max}", max = crate::space::ALL_LIMIT_MAX)]
    LimitInvalid {
        /// The limit given.
        limit: u32,
    },
    /// The client already has [`crate::space::BLOCKED_PER_CLIENT_MAX`] blocked operations.
    #[error(
        "client {client_id} already has {max} blocked operations",
        max = crate::space::BLOCKED_PER_CLIENT_MAX
    )]
    TooManyBlockedForClient {
        /// The client.
        client_id: u64,
    },
    /// The space already holds [`crate::space::BLOCKED_MAX`] blocked operations.
    #[error("the space already holds {max} blocked operations", max = crate::space::BLOCKED_MAX)]
    TooManyBlocked,
    /// A blocking operation whose (client, sequence) is already blocked.
    #[error("request {sequence} of client {client_id} is already blocked")]
    AlreadyBlocked {
        /// The client.
        client_id: u64,
        /// The request's sequence number.
        sequence: u64,
    },
    /// The space already stores [`crate::space::TUPLES_MAX`] tuples.
    #[error("the space already stores {max} tuples", max = crate::space::TUPLES_MAX)]
    SpaceFull,
    /// An encoded operation longer than [`crate::codec::OP_BYTES_MAX`].
    #[error("operation of {bytes} bytes is over the bound of {max}", max = crate::codec::OP_BYTES_MAX)]
    OpTooLarge {
        /// Its length.
        bytes: usize,
    },
    /// The input ended inside something.
    #[error("truncated input: {what} at offset {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where the input ended.
        offset: usize,
    },
    /// An unknown tag byte.
    #[error("unknown {what} tag {tag} at offset {offset}")]
    UnknownTag {
        /// What the tag introduces.
        what: &'static str,
        /// The byte.
        tag: u8,
        /// Where it is.
        offset: usize,
    },
    /// A string field that is not UTF-8.
    #[error("string at offset {offset} is not UTF-8")]
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: usize,
    },
    /// Bytes left after a complete value.
    #[error("{bytes} trailing bytes")]
    Trailing {
        /// How many.
        bytes: usize,
    },
    /// An encoded value that is well-formed byte by byte but breaks a rule (an order, a
    /// relation between fields, a bound).
    #[error("malformed {what} at offset {offset}")]
    Malformed {
        /// The rule broken.
        what: &'static str,
        /// Where.
        offset: usize,
    },
    /// Typed tuple syntax that does not parse.
    #[error("column {column}: {problem}")]
    Parse {
        /// The 1-based column (in characters) where the problem is.
        column: usize,
        /// What is wrong.
        problem: String,
    },
}
