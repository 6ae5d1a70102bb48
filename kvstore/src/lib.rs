//! `dura-kvstore`: SCKV-Store, the paper's durable key-value store, as a dura service.
//!
//! - [`KvStore`]: the service (a sorted map; canonical SHA-256 state digest).
//! - [`ops`]: the binary encoding of operations and replies.
#![forbid(unsafe_code)]

pub mod ops;
pub mod store;

pub use ops::{CodecError, KvOp, KvReply};
pub use store::KvStore;
