//! `dura-tuning`: probes the storage device under a directory and advises on
//! configuration (checkpoint period, group size).
#![forbid(unsafe_code)]
