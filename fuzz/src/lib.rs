//! `dura-fuzz`: fuzz targets for every decoder of dura that takes bytes from outside
//! the process (the network, a disk, a peer's checkpoint), their seed corpora, and a
//! deterministic mutation driver that runs on stable Rust without external tools.
//!
//! Each target in [`targets`] is a plain `fn(&[u8]) -> bool`: it decodes the bytes and,
//! where the decoder accepts them, checks a property that can fail (encoding what was
//! decoded gives the same bytes back, or a state rebuilt from it writes and loads back
//! to the same state). It returns whether the decoder accepted the input. A decoder must
//! never panic, whatever the bytes: a panic is a bug in the decoder. Where a checksum
//! or a MAC guards a decoder, the target runs the bytes twice: as they are (the check
//! must refuse them), and with the checksums or MACs recomputed over them ("fixed up"),
//! so that mutations reach the decoder behind the check.
//!
//! - [`targets::TARGETS`]: name, function and seeds of each target.
//! - [`seeds`]: seed inputs, encoded from real values by the crates' own encoders.
//! - [`mutate`]: the deterministic mutator of the stable driver (`dura-fuzz run`).
//! - [`alloc`]: the global allocator of the fuzz binaries, which bounds every allocation.
//! - The AFL++ build (`fuzz/afl`, a package outside the workspace) runs the same
//!   functions under coverage feedback; README.md "Fuzzing" has the commands.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod alloc;
pub mod mutate;
pub mod seeds;
pub mod targets;

pub use targets::{TARGETS, Target, target};
