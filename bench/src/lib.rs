//! `dura-bench`: the YCSB-like load generator, local cluster launcher, histograms and
//! the paper's experiments.
#![forbid(unsafe_code)]

pub mod wal_bench;
