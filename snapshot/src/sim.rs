//! A simulated checkpoint directory behind the [`Dir`] trait, for tests and for the
//! engine's simulator, deterministic from its seed.
//!
//! ## Fault model
//!
//! * Bytes written to a file are volatile until [`DirWriter::sync`] of that file.
//! * A create, rename or remove is volatile until [`Dir::sync_dir`].
//! * [`SimDir::crash`] is a power cut. The directory keeps its entries as of the last
//!   directory sync plus a prefix (length drawn from the seed) of the operations since,
//!   in order, as a journaling file system would. Every surviving file keeps its synced
//!   bytes and a prefix of its unsynced tail cut at a 512-byte boundary (drawn); each
//!   512-byte sector overwritten since the last sync holds its old or its new bytes
//!   (drawn per sector). Files no name reaches are gone. Handles opened before the crash
//!   fail from then on.
//! * Every call of the [`Dir`], [`DirWriter`] and [`DirReader`] methods is one
//!   *operation*, numbered from 0 over the directory's life ([`SimDir::ops`]). A test
//!   arms one fault: [`SimDir::fail_op`] fails one operation by index,
//!   [`SimDir::fail_nth`] the n-th operation of a kind from now,
//!   [`SimDir::halt_at_op`] cuts the power at an operation (it and every later one fail
//!   until [`SimDir::crash`]).
//! * A failed operation returns `EIO`. A failed write lands a drawn prefix of its
//!   sectors (volatile, like any write); a failed directory sync makes a drawn prefix of
//!   the pending operations durable; a failed file sync makes nothing durable; a failed
//!   create, rename, remove, open, read or list changes nothing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use dura_core::rng::Rng;

use crate::dir::{Dir, DirReader, DirWriter};

/// Bytes of a sector: the unit a crash tears files at.
pub const SECTOR_BYTES: usize = 512;

/// Kinds of simulated operations, for [`SimDir::fail_nth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOp {
    /// [`Dir::list`].
    List,
    /// [`Dir::create`].
    Create,
    /// [`Dir::open_read`].
    Open,
    /// [`DirReader::read_exact_at`].
    Read,
    /// [`DirWriter::write_all`] and [`DirWriter::write_at`].
    Write,
    /// [`DirWriter::sync`].
    Sync,
    /// [`Dir::rename`].
    Rename,
    /// [`Dir::remove`].
    Remove,
    /// [`Dir::sync_dir`].
    SyncDir,
}

#[derive(Debug, Default)]
struct Inode {
    /// The bytes now.
    current: Vec<u8>,
    /// The bytes as of the last successful sync.
    synced: Vec<u8>,
}

/// One directory operation not yet made durable: the names it sets (to an inode) or
/// clears, applied together.
type DirChange = Vec<(String, Option<u64>)>;

#[derive(Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    pending: Vec<DirChange>,
    next_inode: u64,
    rng: Rng,
    ops: u64,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    fail_op: Option<u64>,
    fail_nth: Option<(SimOp, u64)>,
    halt_at_op: Option<u64>,
    halted: bool,
}

impl State {
    /// Counts an operation and decides whether it fails.
    fn op(&mut self, kind: SimOp, generation: u64) -> io::Result<()> {
        let index = self.ops;
        self.ops += 1;
        if generation != self.generation {
            return Err(io::Error::other("simulated handle from before a crash"));
        }
        if self.halted || self.halt_at_op == Some(index) {
            self.halted = true;
            return Err(io::Error::other(format!("simulated power cut at operation {index}")));
        }
        if self.fail_op == Some(index) {
            self.fail_op = None;
            return Err(eio(kind, index));
        }
        if let Some((fail_kind, n)) = self.fail_nth
            && fail_kind == kind
        {
            if n == 0 {
                self.fail_nth = None;
                return Err(eio(kind, index));
            }
            self.fail_nth = Some((fail_kind, n - 1));
        }
        Ok(())
    }

    fn apply(names: &mut BTreeMap<String, u64>, change: &DirChange) {
        for (name, inode) in change {
            match inode {
                Some(inode) => names.insert(name.clone(), *inode),
                None => names.remove(name),
            };
        }
    }

    fn change(&mut self, change: DirChange) {
        State::apply(&mut self.names, &change);
        self.pending.push(change);
    }

    /// Makes the first `count` pending operations durable.
    fn make_durable(&mut self, count: usize) {
        assert!(count <= self.pending.len());
        for change in self.pending.drain(..count) {
            State::apply(&mut self.durable_names, &change);
        }
    }

    fn inode(&mut self, inode: u64) -> &mut Inode {
        self.inodes.get_mut(&inode).expect("a live handle's inode exists")
    }

    /// A sector-aligned length in `low..=high` (both ends possible), drawn.
    fn draw_cut(&mut self, low: usize, high: usize) -> usize {
        assert!(low <= high);
        let first = low / SECTOR_BYTES + 1;
        let last = high.div_ceil(SECTOR_BYTES);
        // Candidates: low, every boundary strictly between, high.
        let between = last.saturating_sub(first);
        let pick = self.rng.range(0, between as u64 + 1) as usize;
        if pick == 0 {
            low
        } else if pick > between {
            high
        } else {
            ((first + pick - 1) * SECTOR_BYTES).min(high)
        }
    }

    /// The bytes of an inode after a power cut.
    fn survive(&mut self, inode: u64) -> Vec<u8> {
        let (synced_len, current_len) = {
            let file = &self.inodes[&inode];
            (file.synced.len(), file.current.len())
        };
        assert!(current_len >= synced_len, "files only grow");
        let cut = self.draw_cut(synced_len, current_len);
        let mut out = self.inodes[&inode].current[..cut].to_vec();
        for sector in 0..synced_len.min(cut).div_ceil(SECTOR_BYTES) {
            let start = sector * SECTOR_BYTES;
            let end = (start + SECTOR_BYTES).min(synced_len).min(cut);
            let file = &self.inodes[&inode];
            if file.synced[start..end] != file.current[start..end] && self.rng.below(2) == 0 {
                out[start..end].copy_from_slice(&self.inodes[&inode].synced[start..end]);
            }
        }
        out
    }
}

fn eio(kind: SimOp, index: u64) -> io::Error {
    io::Error::other(format!("simulated EIO on {kind:?} (operation {index})"))
}

/// The simulated directory. Cloning gives another handle to the same directory, so a
/// test keeps one to crash it while a store writes through another.
#[derive(Debug, Clone)]
pub struct SimDir {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl SimDir {
    /// An empty directory whose drawn outcomes come from `seed`.
    pub fn new(seed: u64) -> SimDir {
        SimDir {
            state: Arc::new(Mutex::new(State {
                inodes: BTreeMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending: Vec::new(),
                next_inode: 1,
                rng: Rng::new(seed),
                ops: 0,
                generation: 0,
                fail_op: None,
                fail_nth: None,
                halt_at_op: None,
                halted: false,
            })),
            path: PathBuf::from("/sim/checkpoints"),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("sim dir lock poisoned")
    }

    /// Operations performed so far (the index the next one gets).
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    /// Fails the operation with index `index` with `EIO` (once).
    pub fn fail_op(&self, index: u64) {
        self.state().fail_op = Some(index);
    }

    /// Fails the `n`-th (0-based) operation of `kind` from now with `EIO` (once).
    pub fn fail_nth(&self, kind: SimOp, n: u64) {
        self.state().fail_nth = Some((kind, n));
    }

    /// Cuts the power at the operation with index `index`: it and every later operation
    /// fail until [`crash`](Self::crash).
    pub fn halt_at_op(&self, index: u64) {
        self.state().halt_at_op = Some(index);
    }

    /// True once a halt struck (and until the crash).
    pub fn is_halted(&self) -> bool {
        self.state().halted
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.fail_op = None;
        state.fail_nth = None;
        state.halt_at_op = None;
    }

    /// A power cut and restart (module docs): volatile state is lost as drawn, faults
    /// are disarmed, handles opened before fail.
    pub fn crash(&self) {
        let mut state = self.state();
        let pending = state.pending.len() as u64;
        let keep = state.rng.range(0, pending) as usize;
        state.make_durable(keep);
        state.pending.clear();
        state.names = state.durable_names.clone();
        let live: Vec<u64> = state.names.values().copied().collect();
        let mut inodes = BTreeMap::new();
        for inode in live {
            if inodes.contains_key(&inode) {
                continue;
            }
            let bytes = state.survive(inode);
            inodes.insert(inode, Inode { current: bytes.clone(), synced: bytes });
        }
        state.inodes = inodes;
        state.generation += 1;
        state.halted = false;
        state.fail_op = None;
        state.fail_nth = None;
        state.halt_at_op = None;
    }

    /// Names in the directory now, sorted.
    pub fn names(&self) -> Vec<String> {
        self.state().names.keys().cloned().collect()
    }

    /// The bytes of `name` now (panics if absent: a test's invariant).
    pub fn file_bytes(&self, name: &str) -> Vec<u8> {
        let state = self.state();
        let inode = state.names.get(name).unwrap_or_else(|| panic!("no sim file {name}"));
        state.inodes[inode].current.clone()
    }

    /// Replaces the bytes of `name`, durably (a test's way to damage a file; panics if
    /// absent).
    pub fn set_file_bytes(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.state();
        let inode = *state.names.get(name).unwrap_or_else(|| panic!("no sim file {name}"));
        let file = state.inode(inode);
        file.synced = bytes.clone();
        file.current = bytes;
    }
}

/// A file of [`SimDir`] being written.
#[derive(Debug)]
pub struct SimWriter {
    state: Arc<Mutex<State>>,
    inode: u64,
    generation: u64,
}

impl SimWriter {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("sim dir lock poisoned")
    }

    /// Bytes of a write of `len` that land: all when it succeeded, a drawn prefix when
    /// it failed on a live handle, none after a power cut or from a dead handle.
    fn lands(&self, state: &mut State, result: &io::Result<()>, len: usize) -> usize {
        match result {
            Ok(()) => len,
            Err(_) if self.generation == state.generation && !state.halted => {
                state.draw_cut(0, len)
            }
            Err(_) => 0,
        }
    }
}

impl DirWriter for SimWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        let result = state.op(SimOp::Write, self.generation);
        let lands = self.lands(&mut state, &result, buf.len());
        if lands > 0 {
            state.inode(self.inode).current.extend_from_slice(&buf[..lands]);
        }
        result
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        let result = state.op(SimOp::Write, self.generation);
        let lands = self.lands(&mut state, &result, buf.len());
        if lands > 0 {
            let offset = usize::try_from(offset).expect("sim offsets fit usize");
            let file = state.inode(self.inode);
            assert!(offset + buf.len() <= file.current.len(), "write_at past the written end");
            file.current[offset..offset + lands].copy_from_slice(&buf[..lands]);
        }
        result
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut state = self.state();
        state.op(SimOp::Sync, self.generation)?;
        let file = state.inode(self.inode);
        file.synced = file.current.clone();
        Ok(())
    }
}

/// A file of [`SimDir`] being read.
#[derive(Debug)]
pub struct SimReader {
    state: Arc<Mutex<State>>,
    inode: u64,
    generation: u64,
    len_bytes: u64,
}

impl DirReader for SimReader {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut state = self.state.lock().expect("sim dir lock poisoned");
        state.op(SimOp::Read, self.generation)?;
        let bytes = &state.inode(self.inode).current;
        let start = usize::try_from(offset).ok().filter(|&start| start <= bytes.len());
        let Some(start) = start.filter(|start| bytes.len() - start >= buf.len()) else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        };
        buf.copy_from_slice(&bytes[start..start + buf.len()]);
        Ok(())
    }
}

impl Dir for SimDir {
    type Writer = SimWriter;
    type Reader = SimReader;

    fn path(&self) -> &Path {
        &self.path
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut state = self.state();
        let generation = state.generation;
        state.op(SimOp::List, generation)?;
        Ok(state.names.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<SimWriter> {
        let mut state = self.state();
        let generation = state.generation;
        state.op(SimOp::Create, generation)?;
        let inode = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(inode, Inode::default());
        state.change(vec![(name.to_owned(), Some(inode))]);
        Ok(SimWriter { state: Arc::clone(&self.state), inode, generation })
    }

    fn open_read(&self, name: &str) -> io::Result<SimReader> {
        let mut state = self.state();
        let generation = state.generation;
        state.op(SimOp::Open, generation)?;
        let inode =
            *state.names.get(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let len_bytes = state.inode(inode).current.len() as u64;
        Ok(SimReader { state: Arc::clone(&self.state), inode, generation, len_bytes })
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.state();
        let generation = state.generation;
        state.op(SimOp::Rename, generation)?;
        let inode =
            *state.names.get(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.change(vec![(from.to_owned(), None), (to.to_owned(), Some(inode))]);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state();
        let generation = state.generation;
        state.op(SimOp::Remove, generation)?;
        if !state.names.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        state.change(vec![(name.to_owned(), None)]);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.state();
        let generation = state.generation;
        if let Err(error) = state.op(SimOp::SyncDir, generation) {
            if !state.halted {
                let pending = state.pending.len() as u64;
                let count = state.rng.range(0, pending) as usize;
                state.make_durable(count);
            }
            return Err(error);
        }
        let count = state.pending.len();
        state.make_durable(count);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(dir: &SimDir, name: &str, bytes: &[u8], sync: bool) {
        let mut writer = dir.create(name).expect("create");
        writer.write_all(bytes).expect("write");
        if sync {
            writer.sync().expect("sync");
        }
    }

    #[test]
    fn synced_file_and_synced_directory_survive_a_crash() {
        for seed in 0..50 {
            let dir = SimDir::new(seed);
            write_file(&dir, "a", &[1; 3000], true);
            dir.sync_dir().expect("sync_dir");
            dir.crash();
            assert_eq!(dir.names(), vec!["a".to_owned()]);
            assert_eq!(dir.file_bytes("a"), vec![1; 3000]);
        }
    }

    #[test]
    fn unsynced_tail_is_torn_at_a_sector_boundary_and_overwrites_per_sector() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let dir = SimDir::new(seed);
            let mut writer = dir.create("a").expect("create");
            writer.write_all(&[1; 1000]).expect("write");
            writer.sync().expect("sync");
            dir.sync_dir().expect("sync_dir");
            writer.write_all(&[2; 2000]).expect("write");
            writer.write_at(0, &[3; 1000]).expect("write_at");
            dir.crash();
            let bytes = dir.file_bytes("a");
            assert!(bytes.len() >= 1000);
            assert!(
                bytes.len() == 1000
                    || bytes.len().is_multiple_of(SECTOR_BYTES)
                    || bytes.len() == 3000
            );
            for sector in bytes[..1000].chunks(SECTOR_BYTES) {
                assert!(sector.iter().all(|&b| b == 1) || sector.iter().all(|&b| b == 3));
            }
            assert!(bytes[1000..].iter().all(|&b| b == 2));
            outcomes.insert((bytes.len(), bytes[0], bytes[600]));
        }
        assert!(outcomes.len() > 4, "crashes draw different outcomes: {outcomes:?}");
        assert!(outcomes.iter().any(|&(len, _, _)| len == 1000));
        assert!(outcomes.iter().any(|&(len, _, _)| len == 3000));
    }

    #[test]
    fn unsynced_directory_operations_survive_as_a_prefix() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..100 {
            let dir = SimDir::new(seed);
            write_file(&dir, "a", b"x", true);
            dir.rename("a", "b").expect("rename");
            dir.remove("b").expect("remove");
            dir.crash();
            let names = dir.names();
            assert!(
                names.is_empty() || names == ["a"] || names == ["b"],
                "a prefix of create, rename, remove: {names:?}"
            );
            outcomes.insert(names);
        }
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    }

    #[test]
    fn faults_strike_the_named_operation_and_halt_stops_everything() {
        let dir = SimDir::new(1);
        dir.fail_nth(SimOp::Sync, 1);
        let mut writer = dir.create("a").expect("create");
        writer.write_all(b"abc").expect("write");
        writer.sync().expect("first sync");
        assert!(writer.sync().is_err(), "second sync fails");
        writer.sync().expect("third sync");
        let next = dir.ops();
        dir.fail_op(next + 1);
        dir.sync_dir().expect("op next");
        assert!(dir.list().is_err(), "op next + 1");
        dir.list().expect("op next + 2");
        dir.halt_at_op(dir.ops() + 1);
        dir.sync_dir().expect("before the halt");
        assert!(dir.list().is_err());
        assert!(dir.is_halted());
        assert!(writer.write_all(b"d").is_err());
        dir.crash();
        assert!(writer.write_all(b"d").is_err(), "handles from before the crash are dead");
        assert_eq!(dir.file_bytes("a"), b"abc");
    }
}
