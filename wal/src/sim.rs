//! A simulated disk behind the [`Storage`] trait, for tests.
//!
//! ## Fault model
//!
//! * A write returns only once it is durable (the durable modes' contract). A crash
//!   ([`SimFaults::crash_at_write`]) strikes during a write: the write lands torn (a
//!   prefix of its 512-byte sectors, or any subset of them) and from then on every
//!   operation of this disk fails, as if the machine were gone. [`SimStorage::reboot`]
//!   gives the disk as it is after the crash.
//! * Directory entries (create, rename, remove) are durable only after
//!   [`Storage::sync_dir`]; a reboot forgets the others. `create_prepared` syncs the
//!   directory itself, as its contract says.
//! * A failed write ([`SimFaults::fail_at_write`] exactly, or
//!   [`SimFaults::write_error_per_million`] from the seed) lands torn like a crashed one,
//!   then returns `EIO`; the disk goes on.
//! * Faults from the seed: a directory sync fails with `EIO` (its changes may or may not
//!   be durable); a read fails with `EIO`.
//! * Writes are numbered from 0 on each boot, in the order they reach the disk; a fault
//!   named by index strikes the same write on every run with the same operations, so a
//!   single-threaded caller (the log's stepped writer) replays exactly from its seed.
//! * Writes can be held at a gate ([`SimStorage::pause_writes`]) to let appends pile up,
//!   and are counted.
//!
//! ## Durable history
//!
//! The disk records every write that completed (returned `Ok`, hence durable) on this
//! boot: its file, offset, length and first [`DURABLE_WRITE_HEAD_BYTES`] bytes as written
//! ([`SimStorage::durable_writes`]). A torn, failed or crashed write is never recorded.
//! [`durable_agreement_max`] reads the log's group headers out of this history, so a
//! simulator's oracle can check that nothing was acknowledged beyond what reached the
//! disk. A reboot carries that maximum over from the boots before.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::format::{GROUP_HEADER_BYTES, GroupHeader, SECTOR_BYTES};
use crate::io::{Preallocate, ZeroPace};
use crate::storage::{Storage, StorageFile};

/// A small deterministic PRNG (SplitMix64) for seeded tests.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, bound)` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `per_million / 1_000_000`.
    pub fn chance(&mut self, per_million: u32) -> bool {
        self.below(1_000_000) < u64::from(per_million)
    }
}

/// Faults to inject, drawn from the disk's seed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// Crash during the write with this index (0-based, counting writes of this boot).
    pub crash_at_write: Option<u64>,
    /// Fail the write with this index (0-based, counting writes of this boot) with `EIO`
    /// after it lands torn; the disk goes on. Exact where
    /// [`write_error_per_million`](Self::write_error_per_million) is drawn from the seed;
    /// a crash at the same index wins.
    pub fail_at_write: Option<u64>,
    /// Probability (per million) that a write fails with `EIO` (after landing torn).
    pub write_error_per_million: u32,
    /// Probability (per million) that a directory sync fails with `EIO`.
    pub sync_dir_error_per_million: u32,
    /// Probability (per million) that a read fails with `EIO`.
    pub read_error_per_million: u32,
    /// Tear crashed writes in any subset of sectors (else only as a prefix).
    pub tear_any_sectors: bool,
}

/// Bytes of each completed write kept in the durable history: a whole group header.
pub const DURABLE_WRITE_HEAD_BYTES: usize = GROUP_HEADER_BYTES;

/// A write that completed (durably) on the simulated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableWrite {
    /// The file written (ids are never reused on a disk; [`SimStorage::file_id`] maps a
    /// name to its id).
    pub file_id: u64,
    /// Byte offset of the write in the file.
    pub offset: u64,
    /// Length of the write in bytes.
    pub len_bytes: u64,
    /// The first bytes written (fewer if the write was shorter), as they were written:
    /// a later write to the same place does not change them.
    pub head: Vec<u8>,
}

#[derive(Debug)]
struct Disk {
    /// The directory as of the last successful sync.
    durable_names: BTreeMap<String, u64>,
    /// The directory now.
    names: BTreeMap<String, u64>,
    /// File contents by file id (writes are durable on return).
    contents: HashMap<u64, Vec<u8>>,
    next_file_id: u64,
    rng: SimRng,
    faults: SimFaults,
    crashed: bool,
    writes: u64,
    paused: bool,
    blocked_writes: u64,
    /// Writes that completed on this boot, in order.
    durable_writes: Vec<DurableWrite>,
    /// [`durable_agreement_max`] of the boots before this one.
    agreement_max_before_boot: Option<u64>,
}

#[derive(Debug)]
struct Shared {
    disk: Mutex<Disk>,
    gate: Condvar,
}

/// The simulated log directory. Cloning gives another handle to the same disk.
#[derive(Debug, Clone)]
pub struct SimStorage {
    shared: Arc<Shared>,
    dir: PathBuf,
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated disk crashed")
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO on {what}"))
}

impl SimStorage {
    /// An empty disk whose faults come from `seed`.
    pub fn new(seed: u64) -> SimStorage {
        SimStorage::from_disk(Disk {
            durable_names: BTreeMap::new(),
            names: BTreeMap::new(),
            contents: HashMap::new(),
            next_file_id: 1,
            rng: SimRng::new(seed),
            faults: SimFaults::default(),
            crashed: false,
            writes: 0,
            paused: false,
            blocked_writes: 0,
            durable_writes: Vec::new(),
            agreement_max_before_boot: None,
        })
    }

    fn from_disk(disk: Disk) -> SimStorage {
        SimStorage {
            shared: Arc::new(Shared { disk: Mutex::new(disk), gate: Condvar::new() }),
            dir: PathBuf::from("/sim"),
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.shared.disk.lock().expect("sim disk lock poisoned")
    }

    /// The faults injected now.
    pub fn faults(&self) -> SimFaults {
        self.disk().faults
    }

    /// Sets the faults to inject from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.disk().faults = faults;
    }

    /// Crashes the disk now (between writes): every later operation fails.
    pub fn crash(&self) {
        self.disk().crashed = true;
    }

    /// True once crashed.
    pub fn is_crashed(&self) -> bool {
        self.disk().crashed
    }

    /// The disk after a crash and restart: file contents as written, directory entries as
    /// of the last directory sync, no faults, write count 0. This handle is crashed
    /// (threads of the old life fail on it); the new handle has a fresh seed.
    ///
    /// The durable history starts empty; [`durable_agreement_max`] of the new handle
    /// still counts what completed before the crash.
    pub fn reboot(&self, seed: u64) -> SimStorage {
        let agreement_max_before_boot = durable_agreement_max(self);
        let mut old = self.disk();
        old.crashed = true;
        old.paused = false;
        self.shared.gate.notify_all();
        let names = old.durable_names.clone();
        let contents = names
            .values()
            .map(|id| (*id, old.contents.get(id).cloned().unwrap_or_default()))
            .collect();
        SimStorage::from_disk(Disk {
            durable_names: names.clone(),
            names,
            contents,
            next_file_id: old.next_file_id,
            rng: SimRng::new(seed),
            faults: SimFaults::default(),
            crashed: false,
            writes: 0,
            paused: false,
            blocked_writes: 0,
            durable_writes: Vec::new(),
            agreement_max_before_boot,
        })
    }

    /// Writes completed or attempted on this boot.
    pub fn write_count(&self) -> u64 {
        self.disk().writes
    }

    /// Holds every later write at a gate until [`resume_writes`](Self::resume_writes).
    pub fn pause_writes(&self) {
        self.disk().paused = true;
    }

    /// Releases the gate.
    pub fn resume_writes(&self) {
        self.disk().paused = false;
        self.shared.gate.notify_all();
    }

    /// Writes waiting at the gate.
    pub fn blocked_writes(&self) -> u64 {
        self.disk().blocked_writes
    }

    /// The contents of `name` (panics if absent: a test invariant).
    pub fn file_bytes(&self, name: &str) -> Vec<u8> {
        let disk = self.disk();
        let id = disk.names.get(name).unwrap_or_else(|| panic!("no sim file {name}"));
        disk.contents[id].clone()
    }

    /// Flips bits of the byte at `offset` of `name` (panics if absent).
    pub fn corrupt_byte(&self, name: &str, offset: usize, xor: u8) {
        let mut disk = self.disk();
        let id = *disk.names.get(name).unwrap_or_else(|| panic!("no sim file {name}"));
        disk.contents.get_mut(&id).expect("contents")[offset] ^= xor;
    }

    /// Names in the directory now.
    pub fn names(&self) -> Vec<String> {
        self.disk().names.keys().cloned().collect()
    }

    /// The id of the file named `name` now, if any (see [`DurableWrite::file_id`]).
    pub fn file_id(&self, name: &str) -> Option<u64> {
        self.disk().names.get(name).copied()
    }

    /// Every write that completed on this boot, oldest first (see the module docs). The
    /// history grows by one entry (about 100 bytes) per completed write until a reboot
    /// (a test tool: simulations reboot often).
    pub fn durable_writes(&self) -> Vec<DurableWrite> {
        self.disk().durable_writes.clone()
    }
}

/// The highest `last_agreement_id` of any log group header (records or seal) that a
/// completed write put on this disk, on this boot or on the boots before it; `None` when
/// no completed write carried a valid group header.
///
/// A simulator's oracle compares it with what the log reported durable: a durable point
/// above it means the log acknowledged something that never reached the disk. Torn,
/// failed and crashed writes, and writes still held at the gate, never count, even when
/// a torn write landed a valid header.
pub fn durable_agreement_max(storage: &SimStorage) -> Option<u64> {
    let disk = storage.disk();
    disk.durable_writes
        .iter()
        .filter_map(|write| GroupHeader::decode(&write.head))
        .map(|header| header.last_agreement_id)
        .chain(disk.agreement_max_before_boot)
        .max()
}

/// A file of [`SimStorage`].
#[derive(Debug)]
pub struct SimFile {
    shared: Arc<Shared>,
    file_id: u64,
}

impl StorageFile for SimFile {
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut disk = self.shared.disk.lock().expect("sim disk lock poisoned");
        if disk.paused && !disk.crashed {
            disk.blocked_writes += 1;
            while disk.paused && !disk.crashed {
                disk = self.shared.gate.wait(disk).expect("sim disk lock poisoned");
            }
            disk.blocked_writes -= 1;
        }
        if disk.crashed {
            return Err(crashed_error());
        }
        let index = disk.writes;
        disk.writes += 1;
        let offset = usize::try_from(offset).expect("sim offsets fit usize");
        let len = disk.contents.get(&self.file_id).map_or(0, Vec::len);
        if offset + buf.len() > len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "sim write past end of file"));
        }
        let crash = disk.faults.crash_at_write == Some(index);
        // The exact fault first: when it strikes, no chance is drawn, so the seeded draws
        // of the other writes stay where they were.
        let fail = !crash
            && (disk.faults.fail_at_write == Some(index)
                || disk.faults.write_error_per_million > 0 && {
                    let p = disk.faults.write_error_per_million;
                    disk.rng.chance(p)
                });
        if !crash && !fail {
            let file = disk.contents.get_mut(&self.file_id).expect("open file has contents");
            file[offset..offset + buf.len()].copy_from_slice(buf);
            let head = buf[..buf.len().min(DURABLE_WRITE_HEAD_BYTES)].to_vec();
            let file_id = self.file_id;
            disk.durable_writes.push(DurableWrite {
                file_id,
                offset: offset as u64,
                len_bytes: buf.len() as u64,
                head,
            });
            return Ok(());
        }
        // Torn: some sectors land, the others keep their old bytes.
        let sectors = buf.len().div_ceil(SECTOR_BYTES);
        let any = disk.faults.tear_any_sectors;
        let prefix = disk.rng.below(sectors as u64 + 1) as usize;
        let mut landed = Vec::with_capacity(sectors);
        for sector in 0..sectors {
            let lands = if any { disk.rng.below(2) == 0 } else { sector < prefix };
            landed.push(lands);
        }
        let file = disk.contents.get_mut(&self.file_id).expect("open file has contents");
        for (sector, lands) in landed.into_iter().enumerate() {
            if lands {
                let start = sector * SECTOR_BYTES;
                let end = (start + SECTOR_BYTES).min(buf.len());
                file[offset + start..offset + end].copy_from_slice(&buf[start..end]);
            }
        }
        if crash {
            disk.crashed = true;
            self.shared.gate.notify_all();
            Err(crashed_error())
        } else {
            Err(eio("write"))
        }
    }

    fn len_bytes(&self) -> io::Result<u64> {
        let disk = self.shared.disk.lock().expect("sim disk lock poisoned");
        if disk.crashed {
            return Err(crashed_error());
        }
        Ok(disk.contents.get(&self.file_id).map_or(0, Vec::len) as u64)
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let disk = self.disk();
        if disk.crashed {
            return Err(crashed_error());
        }
        Ok(disk.names.keys().cloned().collect())
    }

    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut disk = self.disk();
        if disk.crashed {
            return Err(crashed_error());
        }
        let p = disk.faults.read_error_per_million;
        if p > 0 && disk.rng.chance(p) {
            return Err(eio("read"));
        }
        let id = *disk.names.get(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(disk.contents.get(&id).cloned().unwrap_or_default())
    }

    fn open_for_write(&self, name: &str) -> io::Result<SimFile> {
        let disk = self.disk();
        if disk.crashed {
            return Err(crashed_error());
        }
        let file_id =
            *disk.names.get(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(SimFile { shared: Arc::clone(&self.shared), file_id })
    }

    fn create_prepared(
        &self,
        name: &str,
        len_bytes: u64,
        _how: Preallocate,
        _pace: &mut dyn FnMut() -> ZeroPace,
    ) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.crashed {
            return Err(crashed_error());
        }
        let p = disk.faults.write_error_per_million;
        if p > 0 && disk.rng.chance(p) {
            return Err(eio("create"));
        }
        let id = disk.next_file_id;
        disk.next_file_id += 1;
        let len = usize::try_from(len_bytes).expect("sim file fits memory");
        disk.contents.insert(id, vec![0u8; len]);
        disk.names.insert(name.to_owned(), id);
        disk.durable_names = disk.names.clone();
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.crashed {
            return Err(crashed_error());
        }
        let id = disk.names.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        disk.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.crashed {
            return Err(crashed_error());
        }
        disk.names.remove(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.crashed {
            return Err(crashed_error());
        }
        let p = disk.faults.sync_dir_error_per_million;
        if p > 0 && disk.rng.chance(p) {
            if disk.rng.below(2) == 0 {
                disk.durable_names = disk.names.clone();
            }
            return Err(eio("directory sync"));
        }
        disk.durable_names = disk.names.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_tears_the_write_at_a_sector_boundary_and_forgets_unsynced_names() {
        for seed in 0..20 {
            let sim = SimStorage::new(seed);
            sim.create_prepared("a", 8192, Preallocate::Zeroed, &mut || ZeroPace::Go)
                .expect("create");
            sim.set_faults(SimFaults { crash_at_write: Some(0), ..SimFaults::default() });
            sim.rename("a", "b").expect("rename");
            let mut file = sim.open_for_write("b").expect("open");
            assert!(file.write_durable(&[0xff; 4096], 0).is_err());
            assert!(sim.list().is_err(), "crashed disk answers nothing");
            let rebooted = sim.reboot(seed);
            assert_eq!(rebooted.names(), vec!["a".to_owned()], "rename was never synced");
            let bytes = rebooted.file_bytes("a");
            let landed = bytes.iter().take_while(|&&b| b == 0xff).count();
            assert_eq!(landed % SECTOR_BYTES, 0, "tear inside a sector");
            assert!(bytes[landed..].iter().all(|&b| b == 0));
        }
    }
}
