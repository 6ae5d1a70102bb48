//! `dura-wal`: the segmented, checksummed write-ahead log every durability guarantee of
//! dura rests on. See `ARCHITECTURE.md`.

mod aligned;
pub mod io;
mod sys;
