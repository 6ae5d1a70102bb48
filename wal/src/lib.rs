//! `dura-wal`: the segmented, checksummed write-ahead log every durability guarantee of
//! dura rests on. See `ARCHITECTURE.md` and the format description in this crate.
