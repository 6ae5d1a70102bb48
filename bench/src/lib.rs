//! `dura-bench`: the YCSB-like load generator, local cluster launcher, histograms and
//! the paper's experiments.
//!
//! Layers: [`workload`] generates operations, [`driver`] issues them through each
//! client's [`driver::OpStream`] (closed or open loop) into histograms: a
//! [`target::KvTarget`] under YCSB's generator for the key-value store, or
//! [`tuplespace`]'s workloads for the tuple space. [`results`] writes the result files,
//! [`plot`] and [`compare`] read them back.
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod cluster;
pub mod compare;
pub mod driver;
pub mod experiment;
pub mod failover;
pub mod plot;
pub mod recovery;
pub mod results;
pub mod runner;
pub mod target;
pub mod tuplespace;
pub mod wal_bench;
pub mod workload;
