//! `dura-engine`: the ordering protocol (sans-IO), the durability coordinator and the
//! replica runtime.
//!
//! Layout:
//! - [`protocol`]: the agreement (BFT Mod-SMaRt/VP-Consensus and crash mode) as a state
//!   machine: events in, actions out. No sockets, threads, clocks or randomness.
//! - [`durability`]: the durability coordinator (when a decided batch is logged,
//!   executed, and its replies released) as a state machine, and recovery from a log.
//! - [`sim`]: the deterministic simulator that drives whole clusters under one seed.
//! - [`service`]: the [`service::Service`] trait applications implement, and the
//!   executor with the per-client reply cache.
//!
//! Ids, [`protocol::Mode`] and its quorums, keys and MACs, requests and batches and the
//! `Service` trait are `dura_core`'s; they are re-exported here at their old paths.
//! - [`runtime`]: real replicas: stage threads, TCP transport, durability coordinator.

pub mod checkpoint;
pub mod durability;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod sim;
