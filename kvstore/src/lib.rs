//! `dura-kvstore`: SCKV-Store, the paper's durable key-value store, as a dura service.
#![forbid(unsafe_code)]
