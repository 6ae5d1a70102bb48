//! Opening a log, and the log writer with group commit.
//!
//! ## Threads
//!
//! * Callers of [`LogWriter::append`] encode their record (header, payload copy,
//!   checksum) straight into the **open group**, an aligned buffer allocated up front. The
//!   open group is the bounded queue: an append blocks only when it holds
//!   `queue_depth_max` records or `group_bytes_max` bytes, or a cut closed it.
//! * The **writer** thread owns the segment file. When its previous write completed it
//!   takes the whole open group (every append that arrived meanwhile), swaps in its own
//!   empty buffer, stamps the group header, pads to 4 KiB and writes the group in ONE
//!   aligned write (io_uring, or `pwrite`). Then it marks those records durable.
//! * The **preparer** thread makes the next segment ready off the hot path: it renames a
//!   recycled spare (stale contents, harmless: see [`crate::format`](mod@crate::format)) or creates a
//!   pre-zeroed file under a temporary name, syncs it, renames it to its segment name and
//!   syncs the directory, then opens it and hands it to the writer.
//!
//! That is [`WriterThreads::Background`], the default. With threads, which appends fall
//! into which group, and so the order and number of storage operations, depend on
//! timing. [`WriterThreads::Stepped`] runs no thread, for the deterministic simulator
//! (one thread, one seed): the owner calls [`LogWriter::write_step`], which does exactly
//! one iteration of the writer (the same code: take the whole open group, write it,
//! seal and roll, publish the durable point). When the writer needs the next segment it
//! prepares it inline, with the same code as the preparer, without zero-fill pacing.
//! Appends never block there: a full open group is [`WalError::GroupFull`], and the owner
//! steps first. [`LogWriter::sync`] and [`LogWriter::close`] step until nothing is left.
//! The same operations then give the same storage operations in the same order, so a
//! seeded [`crate::sim::SimStorage`] replays exactly.
//!
//! ## Reading back
//!
//! A [`LogReader`] ([`LogWriter::reader`]) serves the durable records of a range of
//! agreements from any thread while the writer runs (state transfer): closed segments
//! are read and verified whole; of the active segment only the bytes before the durable
//! point's group end are read, since the bytes after it may be mid-write. The writer
//! publishes where those bytes end together with the durable point, under one lock, and
//! [`LogWriter::delete_below`] takes segments off the list before it renames or removes
//! their files, so a read that loses a segment under its feet knows it was deleted
//! ([`WalError::Truncated`]) rather than damaged.
//!
//! ## Failure
//!
//! Any write or sync error (or a directory sync error while preparing or deleting
//! segments) makes the writer fail permanently: no retry, every pending and later append
//! and every waiting ticket gets [`WalError::WriterFailed`] with the cause, and the
//! durability notification channel disconnects. Both writer modes fail alike; a stepped
//! writer also answers every later [`LogWriter::write_step`] with the same error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::aligned::{AlignedBuf, align_up};
use crate::error::{IoOp, Result, WalError};
use crate::format::{
    BLOCK_BYTES, GROUP_FLAG_SEAL, GROUP_HEADER_BYTES, GroupHeader, RECORD_HEADER_BYTES,
    SEGMENT_BYTES_MIN, encode_record, parse_segment_file_name, parse_spare_file_name, record_bytes,
    segment_file_name, spare_file_name,
};
use crate::fs::{DsyncDecision, FileSystem, choose_durability};
use crate::io::{DurabilityMode, Preallocate, ZeroPace, is_fallocate_unsupported};
use crate::recovery::{
    Chain, LogRecord, ScanWants, SegmentEnd, holds_any_valid_group, scan_segment,
};
use crate::storage::{Backend, FsStorage, Storage, StorageFile};

/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default largest group (one write).
pub const GROUP_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default largest record payload (a batch of 1024 requests of 4 KiB, plus headers).
pub const RECORD_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024 + 64 * 1024;
/// Default bound on records waiting for the next write.
pub const QUEUE_DEPTH_MAX_DEFAULT: usize = 4096;
/// Default number of deleted segments kept for recycling.
pub const SPARE_SEGMENTS_MAX_DEFAULT: usize = 2;

const fn max_usize(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

// The defaults fit together: a segment holds the largest group plus its seal, and sizes
// are whole blocks.
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(GROUP_BYTES_MAX_DEFAULT.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(
    SEGMENT_BYTES_DEFAULT as usize
        >= align_up(
            max_usize(
                GROUP_BYTES_MAX_DEFAULT,
                GROUP_HEADER_BYTES + RECORD_HEADER_BYTES + RECORD_BYTES_MAX_DEFAULT
            ),
            BLOCK_BYTES
        ) + BLOCK_BYTES
);
const _: () = assert!(QUEUE_DEPTH_MAX_DEFAULT <= u32::MAX as usize);

/// Who runs the log writer (see the module docs, "Threads").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriterThreads {
    /// A `wal-writer` thread writes each group as soon as the previous write completed,
    /// and a `wal-prepare` thread makes the next segment ready ahead of time. Appends
    /// block while the open group is full.
    #[default]
    Background,
    /// No threads: the owner drives the writer with [`LogWriter::write_step`]; the next
    /// segment is prepared inline when the writer needs it. Appends never block. For the
    /// deterministic simulator.
    Stepped,
}

/// Options of a log. Sizes are in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// How writes are made durable. [`Wal::open`] may write with
    /// [`DurabilityMode::Fdatasync`] instead where the file system is not trusted to
    /// honour `O_DSYNC` (see [`crate::fs`] and [`trust_dsync`](Self::trust_dsync)).
    pub mode: DurabilityMode,
    /// Keep a `mode` that relies on `O_DSYNC` even on a file system the log does not
    /// trust to honour it ([`crate::fs::FileSystem::dsync_doubt`]), where [`Wal::open`]
    /// otherwise switches to an explicit `fdatasync` after each write. Default `false`.
    /// Only [`Wal::open`] reads it ([`Wal::open_with_storage`] takes the storage as
    /// given).
    pub trust_dsync: bool,
    /// Size of a new segment file (a multiple of 4 KiB; must hold the largest group plus
    /// the seal block).
    pub segment_bytes: u64,
    /// A group (one write) closes when adding a record would exceed this, unless the group
    /// is empty: a single record larger than this still goes out alone.
    pub group_bytes_max: usize,
    /// Largest payload of one record.
    pub record_bytes_max: usize,
    /// Most records waiting for the next write; `append` blocks beyond it.
    pub queue_depth_max: usize,
    /// Write path (real storage only).
    pub backend: Backend,
    /// How new segment files are prepared. Where the file system does not support
    /// `fallocate`, [`Preallocate::Fallocate`] falls back to [`Preallocate::Zeroed`], with
    /// one log line, for the rest of the log's life.
    pub preallocate: Preallocate,
    /// Deleted segments kept (renamed) for recycling instead of being removed.
    pub spare_segments_max: usize,
    /// Background writer threads, or a writer stepped by the owner.
    pub writer: WriterThreads,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            mode: DurabilityMode::default(),
            trust_dsync: false,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            group_bytes_max: GROUP_BYTES_MAX_DEFAULT,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            queue_depth_max: QUEUE_DEPTH_MAX_DEFAULT,
            backend: Backend::default(),
            preallocate: Preallocate::default(),
            spare_segments_max: SPARE_SEGMENTS_MAX_DEFAULT,
            writer: WriterThreads::Background,
        }
    }
}

impl WalOptions {
    /// Capacity of each of the two group buffers.
    pub fn group_buffer_bytes(&self) -> usize {
        align_up(
            self.group_bytes_max.max(GROUP_HEADER_BYTES + record_bytes(self.record_bytes_max)),
            BLOCK_BYTES,
        )
    }

    fn validate(&self) -> Result<()> {
        let fail = |why: String| Err(WalError::InvalidOptions(why));
        if !self.segment_bytes.is_multiple_of(BLOCK_BYTES as u64)
            || self.segment_bytes < SEGMENT_BYTES_MIN as u64
        {
            return fail(format!(
                "segment_bytes {} must be a multiple of {BLOCK_BYTES} and at least {SEGMENT_BYTES_MIN}",
                self.segment_bytes
            ));
        }
        if self.group_bytes_max < GROUP_HEADER_BYTES + RECORD_HEADER_BYTES {
            return fail(format!(
                "group_bytes_max {} is smaller than one header",
                self.group_bytes_max
            ));
        }
        if self.record_bytes_max > crate::format::PAYLOAD_BYTES_LIMIT {
            return fail(format!(
                "record_bytes_max {} exceeds the format's limit",
                self.record_bytes_max
            ));
        }
        if self.queue_depth_max == 0 || self.queue_depth_max > u32::MAX as usize {
            return fail(format!("queue_depth_max {} out of range", self.queue_depth_max));
        }
        let needed = self.group_buffer_bytes() as u64 + BLOCK_BYTES as u64;
        if self.segment_bytes < needed {
            return fail(format!(
                "segment_bytes {} cannot hold the largest group plus the seal ({needed})",
                self.segment_bytes
            ));
        }
        Ok(())
    }
}

/// Where durability stands: every record up to `record_seq` (this writer's numbering,
/// from 1) and every agreement id up to `agreement_id` is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurablePoint {
    /// Records appended through this writer that are durable (0: none yet).
    pub record_seq: u64,
    /// Last agreement id of the last durable record (0: none yet, nor recovered).
    pub agreement_id: u64,
}

/// The tail that opening cut: a torn last write (or a damaged last group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutTail {
    /// Segment holding the cut.
    pub segment_seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// Offset of the group that failed verification; everything from here is dropped.
    pub offset: u64,
    /// What failed.
    pub reason: String,
}

/// What opening found.
#[derive(Debug)]
pub struct Recovered {
    /// Every verified record, in log order, for replay.
    pub records: Vec<LogRecord>,
    /// The torn tail that was cut, if any.
    pub cut: Option<CutTail>,
    /// The closed (sealed) segments found.
    pub closed_segments: Vec<SegmentInfo>,
}

/// A closed segment: sealed, never written again.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Its sequence number.
    pub segment_seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its file name in the log directory.
    pub file_name: String,
    /// First agreement id in it (`None` for a segment without records).
    pub first_agreement_id: Option<u64>,
    /// Last agreement id in it.
    pub last_agreement_id: Option<u64>,
    /// Records in it.
    pub record_count: u64,
    sha256: Arc<OnceLock<[u8; 32]>>,
}

impl SegmentInfo {
    /// The segment's SHA-256 if already computed (see [`LogWriter::segment_sha256`]).
    pub fn sha256_if_computed(&self) -> Option<[u8; 32]> {
        self.sha256.get().copied()
    }
}

/// A handle on one appended record's durability.
#[derive(Debug, Clone)]
pub struct Ticket {
    record_seq: u64,
    last_agreement_id: u64,
    shared: Arc<Shared>,
}

impl Ticket {
    /// This record's number in the writer's numbering (from 1).
    pub fn record_seq(&self) -> u64 {
        self.record_seq
    }

    /// The record's last agreement id.
    pub fn last_agreement_id(&self) -> u64 {
        self.last_agreement_id
    }

    /// Blocks until the record is durable (`Ok`) or the writer failed or closed before
    /// writing it (`Err`).
    ///
    /// With [`WriterThreads::Stepped`] it never blocks: nothing but the owner's
    /// [`LogWriter::write_step`] writes, so waiting would be forever. A record not yet
    /// durable there is [`WalError::WriterMode`]; use [`is_durable`](Self::is_durable), or
    /// [`LogWriter::sync`] first.
    pub fn wait(&self) -> Result<()> {
        let mut state = self.shared.lock();
        loop {
            if state.durable.record_seq >= self.record_seq {
                return Ok(());
            }
            if let Some(error) = &state.failed {
                return Err(WalError::WriterFailed(Arc::clone(error)));
            }
            if state.writer_exited {
                return Err(WalError::Closed);
            }
            if self.shared.writer == WriterThreads::Stepped {
                return Err(WalError::WriterMode {
                    operation: "Ticket::wait on a record not yet durable",
                    writer: WriterThreads::Stepped,
                });
            }
            state = self.shared.durable_cv.wait(state).expect("wal lock poisoned");
        }
    }

    /// Without blocking: `Ok(true)` once durable, `Ok(false)` while pending, `Err` when it
    /// never will be.
    pub fn is_durable(&self) -> Result<bool> {
        let state = self.shared.lock();
        if state.durable.record_seq >= self.record_seq {
            return Ok(true);
        }
        if let Some(error) = &state.failed {
            return Err(WalError::WriterFailed(Arc::clone(error)));
        }
        if state.writer_exited {
            return Err(WalError::Closed);
        }
        Ok(false)
    }
}

/// One group buffer and what is in it.
#[derive(Debug)]
struct Group {
    buf: AlignedBuf,
    record_count: u32,
    first_agreement_id: u64,
    last_agreement_id: u64,
    last_record_seq: u64,
    /// Seal the segment after writing this group.
    cut_after: bool,
}

impl Group {
    fn new(capacity: usize) -> Group {
        let mut group = Group {
            buf: AlignedBuf::with_capacity(capacity),
            record_count: 0,
            first_agreement_id: 0,
            last_agreement_id: 0,
            last_record_seq: 0,
            cut_after: false,
        };
        group.reset();
        group
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.buf.set_len(GROUP_HEADER_BYTES);
        self.record_count = 0;
        self.first_agreement_id = 0;
        self.last_agreement_id = 0;
        self.last_record_seq = 0;
        self.cut_after = false;
    }

    fn has_work(&self) -> bool {
        self.record_count > 0 || self.cut_after
    }
}

#[derive(Debug)]
struct State {
    open: Group,
    next_record_seq: u64,
    chain: Chain,
    /// Cut before the first record whose first agreement id exceeds this.
    pending_cut: Option<u64>,
    durable: DurablePoint,
    failed: Option<Arc<WalError>>,
    closing: bool,
    writer_exited: bool,
    closed_segments: Vec<SegmentInfo>,
    /// The segment being written, as far as it is durable: updated with `durable`, under
    /// the same lock, so a reader sees the two agree. `None` from the moment the writer
    /// sealed a segment (it joined `closed_segments`) until its next write published a
    /// durable point: the next segment holds no durable record meanwhile.
    active: Option<ActiveSegment>,
    spares: Vec<String>,
    next_spare: u64,
}

/// The agreement ids and record count of a segment's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SegmentIds {
    first_agreement_id: Option<u64>,
    last_agreement_id: Option<u64>,
    record_count: u64,
}

/// The durable part of the segment being written: what a [`LogReader`] may read of it.
/// Its file is `segment_file_name(segment_seq)` (names are strict, see
/// [`parse_segment_file_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ActiveSegment {
    segment_seq: u64,
    /// Where its durable groups end (a block boundary): every byte before is a completed
    /// write, never rewritten; the bytes from here on may be mid-write.
    durable_bytes: u64,
    /// Of the records before `durable_bytes`.
    ids: SegmentIds,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Who runs the writer (fixed at open).
    writer: WriterThreads,
    /// The writer waits here for work.
    work_cv: Condvar,
    /// Appenders wait here for room in the open group.
    space_cv: Condvar,
    /// Ticket waiters wait here.
    durable_cv: Condvar,
    /// The writer is inside a write (the preparer holds back its zero-fill).
    writer_busy: AtomicBool,
    /// Writes the writer has started (the preparer zeroes only when this stands still).
    writes_started: AtomicU64,
    /// Group writes completed, their bytes (padding included) and time spent in them.
    writes_done: AtomicU64,
    bytes_written: AtomicU64,
    write_nanos: AtomicU64,
    /// The writer waits for the next segment (the preparer stops zeroing and hands it over).
    segment_wanted: AtomicBool,
    /// The log is closing (the preparer stops).
    stopping: AtomicBool,
    /// The file system refused `fallocate` as unsupported: new segments are zero-filled
    /// instead (see [`prepare_segment`]).
    fallocate_refused: AtomicBool,
    /// Segments prepared since open: new files, recycled spares.
    segments_created: AtomicU64,
    segments_recycled: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("wal lock poisoned")
    }

    fn fail(&self, error: WalError) -> Arc<WalError> {
        let mut state = self.lock();
        let error = state.failed.get_or_insert_with(|| {
            log::error!("wal writer failed permanently: {error}");
            Arc::new(error)
        });
        let error = Arc::clone(error);
        drop(state);
        self.work_cv.notify_all();
        self.space_cv.notify_all();
        self.durable_cv.notify_all();
        error
    }
}

/// Group writes completed by a log's writer ([`LogWriter::write_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Writes (one per group).
    pub writes: u64,
    /// Bytes written, block padding included.
    pub bytes: u64,
    /// Time spent inside the writes (each until it was durable).
    pub busy: Duration,
    /// Segments made ready since open: newly created files, and recycled spares
    /// (appends into already-written blocks).
    pub segments_created: u64,
    /// See `segments_created`.
    pub segments_recycled: u64,
}

impl std::fmt::Display for WriteStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_write =
            |total: f64| if self.writes == 0 { 0.0 } else { total / self.writes as f64 };
        write!(
            f,
            "{} writes, {:.1} MiB ({:.0} KiB each), {:.2} ms per write; segments: {} new, {} \
             recycled",
            self.writes,
            self.bytes as f64 / (1024.0 * 1024.0),
            per_write(self.bytes as f64 / 1024.0),
            per_write(self.busy.as_secs_f64() * 1e3),
            self.segments_created,
            self.segments_recycled,
        )
    }
}

/// The mode a log in `dir` writes with when `configured` was asked for (see
/// [`crate::fs::choose_durability`]); logs the decision when it is not simply the
/// configured mode.
fn durability_on(dir: &Path, configured: DurabilityMode, trust_dsync: bool) -> DurabilityMode {
    let file_system = match FileSystem::of(dir) {
        Ok(file_system) => Some(file_system),
        Err(error) => {
            if configured.relies_on_dsync() {
                log::warn!(
                    "wal {}: cannot tell its file system ({error}); writing with {configured} \
                     as configured",
                    dir.display()
                );
            }
            None
        }
    };
    let choice = choose_durability(file_system, configured, trust_dsync);
    match choice.decision {
        DsyncDecision::FileSystemUnknown => {}
        DsyncDecision::AsConfigured => {
            if let Some(file_system) = file_system {
                log::info!("wal {}: on {file_system}, writing with {configured}", dir.display());
            }
        }
        DsyncDecision::Switched { file_system, why } => log::warn!(
            "wal {}: on {file_system}, which may not honour O_DSYNC ({why}): writing with \
             {} (an explicit fdatasync after each write) instead of {configured}; the \
             option trust_dsync (wal_trust_dsync in a cluster config) keeps {configured}",
            dir.display(),
            choice.mode,
        ),
        DsyncDecision::KeptOnRequest { file_system, why } => log::warn!(
            "wal {}: on {file_system}, which may not honour O_DSYNC ({why}): writing with \
             {configured} all the same, as trust_dsync asks",
            dir.display(),
        ),
    }
    choice.mode
}

/// Entry point: opening a log directory.
#[derive(Debug)]
pub struct Wal;

impl Wal {
    /// Opens (or creates) the log in `dir` on the real file system, verifies every
    /// record, cuts a torn tail, and starts the writer.
    ///
    /// Contract: `Recovered::records` are exactly the records that survive, in order;
    /// every record once reported durable is among them unless the log was corrupted. A
    /// damaged group before the tail is an [`WalError::Corrupt`] naming segment and offset,
    /// and nothing is cut or written then.
    ///
    /// The mode written with is [`WalOptions::mode`], unless it relies on `O_DSYNC` and
    /// the directory's file system is not trusted to honour it: then each write is
    /// followed by an `fdatasync` ([`crate::fs::choose_durability`]), with a log line
    /// saying which file system and why.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(LogWriter<FsStorage>, Recovered)> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::io(IoOp::Create, dir, None, e))?;
        let mode = durability_on(dir, options.mode, options.trust_dsync);
        let storage = FsStorage::new(dir, mode, options.backend)
            .map_err(|e| WalError::io(IoOp::Uring, dir, None, e))?;
        Wal::open_with_storage(storage, WalOptions { mode, ..options })
    }

    /// [`Wal::open`] on any [`Storage`] (the simulated disk in tests).
    pub fn open_with_storage<S: Storage>(
        storage: S,
        options: WalOptions,
    ) -> Result<(LogWriter<S>, Recovered)> {
        options.validate()?;
        let storage = Arc::new(storage);
        let dir = storage.dir().to_path_buf();
        let names = storage.list().map_err(|e| WalError::io(IoOp::List, &dir, None, e))?;
        let mut segments: Vec<(u64, String)> = Vec::new();
        let mut spares: Vec<(u64, String)> = Vec::new();
        for name in names {
            if let Some(seq) = parse_segment_file_name(&name) {
                segments.push((seq, name));
            } else if let Some(n) = parse_spare_file_name(&name) {
                spares.push((n, name));
            } else if name.starts_with("prepare-") && name.ends_with(".tmp") {
                // A segment whose preparation a crash interrupted.
                storage
                    .remove(&name)
                    .map_err(|e| WalError::io(IoOp::Remove, storage.path(&name), None, e))?;
            }
        }
        segments.sort();
        spares.sort();
        for pair in segments.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return Err(WalError::MissingSegment { dir, missing_seq: pair[0].0 + 1 });
            }
        }

        // Verify every segment in order.
        let mut chain = Chain::default();
        let mut records = Vec::new();
        let mut closed_segments = Vec::new();
        // The unsealed segment the log ends in: its sequence number, file name, the offset
        // where its verified groups end, and the ids and count of its records.
        let mut tail: Option<(u64, String, u64, SegmentIds)> = None;
        let mut cut = None;
        let mut index = 0;
        while index < segments.len() {
            let (seq, name) = &segments[index];
            let path = storage.path(name);
            let bytes =
                storage.read_all(name).map_err(|e| WalError::io(IoOp::Read, &path, None, e))?;
            if bytes.len() < SEGMENT_BYTES_MIN {
                return Err(WalError::Corrupt {
                    segment_seq: *seq,
                    path,
                    offset: bytes.len() as u64,
                    reason: "segment file shorter than the minimum".into(),
                });
            }
            let scan =
                scan_segment(&bytes, *seq, &mut chain, ScanWants { payloads: true, sha256: false });
            records.extend(scan.records);
            match scan.end {
                SegmentEnd::Sealed { .. } => {
                    closed_segments.push(SegmentInfo {
                        segment_seq: *seq,
                        path,
                        file_name: name.clone(),
                        first_agreement_id: scan.first_agreement_id,
                        last_agreement_id: scan.last_agreement_id,
                        record_count: scan.record_count,
                        sha256: Arc::new(scan.sha256.map(OnceLock::from).unwrap_or_default()),
                    });
                    index += 1;
                }
                SegmentEnd::Open { offset, damaged, reason } => {
                    if let Some(later) = scan.later_valid_group {
                        return Err(WalError::Corrupt {
                            segment_seq: *seq,
                            path,
                            offset,
                            reason: format!(
                                "{reason}, yet a valid group follows at offset {later}"
                            ),
                        });
                    }
                    // The tail: every later segment must be empty (prepared, never written).
                    for (later_seq, later_name) in &segments[index + 1..] {
                        let later_path = storage.path(later_name);
                        let later_bytes = storage
                            .read_all(later_name)
                            .map_err(|e| WalError::io(IoOp::Read, &later_path, None, e))?;
                        if let Some(at) = holds_any_valid_group(&later_bytes, *later_seq) {
                            return Err(WalError::Corrupt {
                                segment_seq: *seq,
                                path,
                                offset,
                                reason: format!(
                                    "{reason} in an unsealed segment, yet segment {later_seq} holds a valid group at offset {at}"
                                ),
                            });
                        }
                    }
                    if damaged {
                        log::warn!(
                            "wal: cutting torn tail of segment {seq} at offset {offset}: {reason}"
                        );
                        cut = Some(CutTail {
                            segment_seq: *seq,
                            path,
                            offset,
                            reason: reason.to_owned(),
                        });
                    }
                    let ids = SegmentIds {
                        first_agreement_id: scan.first_agreement_id,
                        last_agreement_id: scan.last_agreement_id,
                        record_count: scan.record_count,
                    };
                    tail = Some((*seq, name.clone(), offset, ids));
                    break;
                }
            }
        }
        // Segments after the tail held nothing: recycle them as spares.
        let trailing: Vec<(u64, String)> = match &tail {
            Some((seq, ..)) => segments.iter().filter(|(s, _)| s > seq).cloned().collect(),
            None => Vec::new(),
        };
        let mut next_spare = spares.last().map_or(1, |(n, _)| n + 1);
        let mut spare_names: Vec<String> = spares.into_iter().map(|(_, name)| name).collect();
        for (_, name) in &trailing {
            let spare = spare_file_name(next_spare);
            next_spare += 1;
            storage
                .rename(name, &spare)
                .map_err(|e| WalError::io(IoOp::Rename, storage.path(name), None, e))?;
            spare_names.push(spare);
        }
        if !trailing.is_empty() {
            storage.sync_dir().map_err(|e| WalError::io(IoOp::SyncDir, &dir, None, e))?;
        }

        // The active segment: the tail, or a fresh one after the last sealed segment.
        let fallocate_refused = AtomicBool::new(false);
        let (active_seq, active_name, active_offset, active_ids) = match tail {
            Some(t) => t,
            None => {
                let seq = segments.last().map_or(1, |(s, _)| s + 1);
                let name = prepare_segment(
                    &*storage,
                    &options,
                    &fallocate_refused,
                    seq,
                    &mut spare_names,
                    &mut || ZeroPace::Go,
                )?;
                (seq, name, 0, SegmentIds::default())
            }
        };
        let active_file = storage
            .open_for_write(&active_name)
            .map_err(|e| WalError::io(IoOp::Open, storage.path(&active_name), None, e))?;
        let active_len = active_file
            .len_bytes()
            .map_err(|e| WalError::io(IoOp::Read, storage.path(&active_name), None, e))?;
        let active_has_records = active_offset > 0;
        assert_eq!(active_name, segment_file_name(active_seq), "segment names are strict");
        assert_eq!(
            active_has_records,
            active_ids.record_count > 0,
            "the tail's verified groups hold records exactly when they end past its start"
        );

        let capacity = options.group_buffer_bytes();
        let durable =
            DurablePoint { record_seq: 0, agreement_id: chain.last_agreement_id.unwrap_or(0) };
        let shared = Arc::new(Shared {
            writer: options.writer,
            state: Mutex::new(State {
                open: Group::new(capacity),
                next_record_seq: 1,
                chain,
                pending_cut: None,
                durable,
                failed: None,
                closing: false,
                writer_exited: false,
                closed_segments: closed_segments.clone(),
                active: Some(ActiveSegment {
                    segment_seq: active_seq,
                    durable_bytes: active_offset,
                    ids: active_ids,
                }),
                spares: spare_names,
                next_spare,
            }),
            work_cv: Condvar::new(),
            space_cv: Condvar::new(),
            durable_cv: Condvar::new(),
            writer_busy: AtomicBool::new(false),
            writes_started: AtomicU64::new(0),
            writes_done: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            write_nanos: AtomicU64::new(0),
            segments_created: AtomicU64::new(0),
            segments_recycled: AtomicU64::new(0),
            segment_wanted: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            fallocate_refused,
        });

        let (next_segment, preparer) = match options.writer {
            WriterThreads::Background => {
                let (prepared_tx, prepared_rx) =
                    crossbeam_channel::bounded::<Result<Prepared<S::File>>>(0);
                let storage = Arc::clone(&storage);
                let shared = Arc::clone(&shared);
                let options = options.clone();
                let preparer = thread::Builder::new()
                    .name("wal-prepare".into())
                    .spawn(move || {
                        run_preparer(&*storage, &shared, &options, active_seq + 1, &prepared_tx)
                    })
                    .map_err(|e| WalError::io(IoOp::Create, &dir, None, e))?;
                (NextSegment::FromPreparer(prepared_rx), Some(preparer))
            }
            WriterThreads::Stepped => (NextSegment::Inline(options.clone()), None),
        };
        let (durable_tx, durable_rx) = crossbeam_channel::bounded(1);
        let (writer, stepper) = {
            let storage = Arc::clone(&storage);
            let shared = Arc::clone(&shared);
            let state = WriterState {
                storage,
                shared,
                file: active_file,
                segment_seq: active_seq,
                segment_name: active_name,
                segment_len: active_len,
                offset: active_offset,
                // The tail segment's ids so far (for its SegmentInfo when sealed).
                segment_first_agreement_id: active_ids.first_agreement_id,
                segment_last_agreement_id: active_ids.last_agreement_id,
                segment_record_count: active_ids.record_count,
                segment_has_records: active_has_records,
                next_segment,
                spare: Some(Group::new(capacity)),
                seal_buf: AlignedBuf::with_capacity(BLOCK_BYTES),
                durable_tx,
                durable_rx_drain: durable_rx.clone(),
            };
            match options.writer {
                WriterThreads::Background => {
                    let writer = thread::Builder::new()
                        .name("wal-writer".into())
                        .spawn(move || state.run())
                        .map_err(|e| WalError::io(IoOp::Create, &dir, None, e))?;
                    (Some(writer), None)
                }
                WriterThreads::Stepped => (None, Some(state)),
            }
        };
        let writer = LogWriter {
            storage,
            shared,
            options,
            durable_rx,
            writer,
            preparer,
            stepper: Mutex::new(stepper),
        };
        Ok((writer, Recovered { records, cut, closed_segments }))
    }
}

/// Makes segment `seq` ready under its name: a recycled spare, or a new file prepared as
/// `options.preallocate` says under a temporary name and renamed. The directory is synced.
///
/// Where the file system does not support `fallocate`, [`Preallocate::Fallocate`] is
/// replaced by [`Preallocate::Zeroed`] (the paced zero-fill): the first refusal sets
/// `fallocate_refused` and logs it once; later segments zero-fill without asking again.
fn prepare_segment<S: Storage>(
    storage: &S,
    options: &WalOptions,
    fallocate_refused: &AtomicBool,
    seq: u64,
    spares: &mut Vec<String>,
    pace: &mut dyn FnMut() -> ZeroPace,
) -> Result<String> {
    let name = segment_file_name(seq);
    if let Some(spare) = spares.pop() {
        storage
            .rename(&spare, &name)
            .map_err(|e| WalError::io(IoOp::Rename, storage.path(&spare), None, e))?;
    } else {
        let temp = format!("prepare-{seq:020}.tmp");
        let how = match options.preallocate {
            Preallocate::Fallocate if fallocate_refused.load(Ordering::Acquire) => {
                Preallocate::Zeroed
            }
            how => how,
        };
        match storage.create_prepared(&temp, options.segment_bytes, how, pace) {
            Err(error) if how == Preallocate::Fallocate && is_fallocate_unsupported(&error) => {
                if !fallocate_refused.swap(true, Ordering::AcqRel) {
                    log::warn!(
                        "wal {}: {error}; zero-filling new segments instead (preallocation \
                         {} for the rest of this log)",
                        storage.dir().display(),
                        Preallocate::Zeroed,
                    );
                }
                storage.create_prepared(&temp, options.segment_bytes, Preallocate::Zeroed, pace)
            }
            result => result,
        }
        .map_err(|e| WalError::io(IoOp::Create, storage.path(&temp), None, e))?;
        storage
            .rename(&temp, &name)
            .map_err(|e| WalError::io(IoOp::Rename, storage.path(&temp), None, e))?;
    }
    storage.sync_dir().map_err(|e| WalError::io(IoOp::SyncDir, storage.dir(), None, e))?;
    Ok(name)
}

struct Prepared<F> {
    seq: u64,
    name: String,
    file: F,
    len: u64,
}

/// Makes segment `seq` ready (recycling a kept spare if there is one, see
/// [`prepare_segment`]) and opens it for the writer. Used by the preparer thread, and
/// inline by a stepped writer.
fn prepare_and_open<S: Storage>(
    storage: &S,
    shared: &Shared,
    options: &WalOptions,
    seq: u64,
    pace: &mut dyn FnMut() -> ZeroPace,
) -> Result<Prepared<S::File>> {
    let mut spare = shared.lock().spares.pop().into_iter().collect::<Vec<_>>();
    let counter =
        if spare.is_empty() { &shared.segments_created } else { &shared.segments_recycled };
    let name = prepare_segment(storage, options, &shared.fallocate_refused, seq, &mut spare, pace)?;
    counter.fetch_add(1, Ordering::Relaxed);
    let file = storage
        .open_for_write(&name)
        .map_err(|e| WalError::io(IoOp::Open, storage.path(&name), None, e))?;
    let len =
        file.len_bytes().map_err(|e| WalError::io(IoOp::Read, storage.path(&name), None, e))?;
    Ok(Prepared { seq, name, file, len })
}

/// Where the writer gets its next segment when it seals the current one.
enum NextSegment<F> {
    /// From the `wal-prepare` thread, which prepares it ahead of time.
    FromPreparer(Receiver<Result<Prepared<F>>>),
    /// The writer prepares it itself, when it needs it (stepped mode: no threads).
    Inline(WalOptions),
}

fn run_preparer<S: Storage>(
    storage: &S,
    shared: &Shared,
    options: &WalOptions,
    mut seq: u64,
    prepared_tx: &Sender<Result<Prepared<S::File>>>,
) {
    loop {
        let prepared = {
            // Zero only while the writer is not writing, and stop as soon as the writer
            // needs the segment (the rest stays allocated, reading as zeros) or closes.
            // A chunk goes only when no log write started during the last wait interval.
            let mut writes_seen = shared.writes_started.load(Ordering::Acquire);
            let mut pace = || {
                let writes = shared.writes_started.load(Ordering::Acquire);
                if shared.stopping.load(Ordering::Acquire)
                    || shared.segment_wanted.load(Ordering::Acquire)
                {
                    ZeroPace::Stop
                } else if shared.writer_busy.load(Ordering::Acquire) || writes != writes_seen {
                    writes_seen = writes;
                    ZeroPace::Wait
                } else {
                    ZeroPace::Go
                }
            };
            prepare_and_open(storage, shared, options, seq, &mut pace)
        };
        let failed = prepared.is_err();
        if prepared_tx.send(prepared).is_err() || failed {
            // The writer is gone (closed or failed), or preparing failed: the writer gets
            // the error when it needs the segment.
            return;
        }
        seq += 1;
    }
}

struct WriterState<S: Storage> {
    storage: Arc<S>,
    shared: Arc<Shared>,
    file: S::File,
    segment_seq: u64,
    segment_name: String,
    segment_len: u64,
    offset: u64,
    segment_first_agreement_id: Option<u64>,
    segment_last_agreement_id: Option<u64>,
    segment_record_count: u64,
    segment_has_records: bool,
    next_segment: NextSegment<S::File>,
    /// The empty group buffer swapped in for the open group when the writer takes it;
    /// `None` only while a taken group is being written.
    spare: Option<Group>,
    seal_buf: AlignedBuf,
    durable_tx: Sender<DurablePoint>,
    durable_rx_drain: Receiver<DurablePoint>,
}

impl<S: Storage> std::fmt::Debug for WriterState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterState")
            .field("segment_seq", &self.segment_seq)
            .field("segment_name", &self.segment_name)
            .field("offset", &self.offset)
            .field("segment_record_count", &self.segment_record_count)
            .finish_non_exhaustive()
    }
}

/// Swaps the writer's empty `spare` in for the open group, which has work, and returns
/// the taken group: every append made since the last take goes into one write.
fn take_open_group(spare: &mut Option<Group>, state: &mut State) -> Group {
    assert!(state.open.has_work(), "the writer takes only an open group with work");
    let spare = spare.take().expect("the writer holds its spare group between writes");
    assert!(
        spare.record_count == 0 && !spare.cut_after && spare.buf.len() == GROUP_HEADER_BYTES,
        "the spare group is empty"
    );
    std::mem::replace(&mut state.open, spare)
}

impl<S: Storage> WriterState<S> {
    /// The `wal-writer` thread: waits for work, then does what
    /// [`write_taken`](Self::write_taken) does, until closed with nothing left or failed.
    fn run(mut self) {
        loop {
            let group = {
                let mut state = self.shared.lock();
                while !state.open.has_work() && !state.closing && state.failed.is_none() {
                    state = self.shared.work_cv.wait(state).expect("wal lock poisoned");
                }
                if state.failed.is_some() || !state.open.has_work() {
                    // Failed, or closing with nothing left to write.
                    state.writer_exited = true;
                    drop(state);
                    self.shared.durable_cv.notify_all();
                    self.shared.space_cv.notify_all();
                    return;
                }
                let group = take_open_group(&mut self.spare, &mut state);
                drop(state);
                self.shared.space_cv.notify_all();
                group
            };
            if self.write_taken(group).is_err() {
                return;
            }
        }
    }

    /// One iteration of the writer, shared by both modes, after it took `group` off the
    /// open slot: writes the group (sealing and rolling the segment when it is full or
    /// cut), publishes the new durable point (tickets, notifications) and keeps the
    /// buffer as the next spare. Returns the new durable point if records became durable
    /// (`None` for a group that only carried a cut).
    ///
    /// On a write, sync or preparation error the log fails permanently (see the module
    /// docs) and the error is returned; the writer must not be used again.
    fn write_taken(&mut self, mut group: Group) -> Result<Option<DurablePoint>, Arc<WalError>> {
        match self.write_group(&mut group) {
            Ok(()) => {
                let point = if group.record_count > 0 {
                    let active = self.active_segment();
                    let point = {
                        let mut state = self.shared.lock();
                        assert!(
                            group.last_record_seq > state.durable.record_seq,
                            "durable record numbers strictly increase"
                        );
                        assert!(
                            group.last_agreement_id >= state.durable.agreement_id,
                            "durable agreement ids never go back"
                        );
                        state.durable = DurablePoint {
                            record_seq: group.last_record_seq,
                            agreement_id: group.last_agreement_id,
                        };
                        state.active = Some(active);
                        state.durable
                    };
                    self.shared.durable_cv.notify_all();
                    self.notify(point);
                    Some(point)
                } else {
                    None
                };
                group.reset();
                self.spare = Some(group);
                Ok(point)
            }
            Err(error) => {
                let error = self.shared.fail(error);
                self.shared.lock().writer_exited = true;
                self.shared.durable_cv.notify_all();
                Err(error)
            }
        }
    }

    /// The segment being written as far as it is written: every write before `offset`
    /// completed (durably).
    fn active_segment(&self) -> ActiveSegment {
        ActiveSegment {
            segment_seq: self.segment_seq,
            durable_bytes: self.offset,
            ids: SegmentIds {
                first_agreement_id: self.segment_first_agreement_id,
                last_agreement_id: self.segment_last_agreement_id,
                record_count: self.segment_record_count,
            },
        }
    }

    /// Publishes the newest durable point on the bounded(1) channel, replacing an
    /// unreceived older one, so the receiver always ends up seeing the latest.
    fn notify(&self, point: DurablePoint) {
        if let Err(crossbeam_channel::TrySendError::Full(point)) = self.durable_tx.try_send(point) {
            let _older = self.durable_rx_drain.try_recv();
            // Only the writer sends (its thread, or a stepper holding the writer's
            // mutex), so after draining there is room (or the receiver took the older
            // point meanwhile, which also leaves room).
            let _ = self.durable_tx.try_send(point);
        }
    }

    fn write_group(&mut self, group: &mut Group) -> Result<()> {
        if group.record_count > 0 {
            let records_bytes = group.buf.len() - GROUP_HEADER_BYTES;
            let padded = align_up(group.buf.len(), BLOCK_BYTES) as u64;
            if self.offset + padded > self.segment_len - BLOCK_BYTES as u64 {
                self.seal_and_roll()?;
                if self.offset + padded > self.segment_len - BLOCK_BYTES as u64 {
                    return Err(WalError::InvalidOptions(format!(
                        "segment {} of {} bytes cannot hold a group of {padded} bytes plus the seal",
                        self.segment_seq, self.segment_len
                    )));
                }
            }
            GroupHeader {
                flags: 0,
                record_count: group.record_count,
                segment_seq: self.segment_seq,
                group_offset: self.offset,
                records_bytes: records_bytes as u64,
                first_agreement_id: group.first_agreement_id,
                last_agreement_id: group.last_agreement_id,
            }
            .encode(group.buf.full_mut());
            group.buf.pad_to_alignment();
            assert_eq!(group.buf.len() as u64, padded);
            self.shared.writes_started.fetch_add(1, Ordering::AcqRel);
            self.shared.writer_busy.store(true, Ordering::Release);
            let started = std::time::Instant::now();
            let written = self.file.write_durable(group.buf.as_slice(), self.offset);
            let took = started.elapsed();
            self.shared.writer_busy.store(false, Ordering::Release);
            if written.is_ok() {
                self.shared.writes_done.fetch_add(1, Ordering::Relaxed);
                self.shared.bytes_written.fetch_add(padded, Ordering::Relaxed);
                self.shared.write_nanos.fetch_add(
                    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
            written.map_err(|e| {
                WalError::io(
                    IoOp::Write,
                    self.storage.path(&self.segment_name),
                    Some(self.offset),
                    e,
                )
            })?;
            self.offset += padded;
            self.segment_first_agreement_id.get_or_insert(group.first_agreement_id);
            self.segment_last_agreement_id = Some(group.last_agreement_id);
            self.segment_record_count += u64::from(group.record_count);
            self.segment_has_records = true;
        }
        if group.cut_after && self.segment_has_records {
            self.seal_and_roll()?;
        }
        Ok(())
    }

    /// Writes the seal of the current segment, records it as closed, and switches to the
    /// next segment from the preparer.
    fn seal_and_roll(&mut self) -> Result<()> {
        assert!(self.offset + BLOCK_BYTES as u64 <= self.segment_len);
        self.seal_buf.clear();
        self.seal_buf.extend_zeros(BLOCK_BYTES);
        GroupHeader {
            flags: GROUP_FLAG_SEAL,
            record_count: 0,
            segment_seq: self.segment_seq,
            group_offset: self.offset,
            records_bytes: 0,
            first_agreement_id: self.segment_first_agreement_id.unwrap_or(0),
            last_agreement_id: self.segment_last_agreement_id.unwrap_or(0),
        }
        .encode(self.seal_buf.full_mut());
        self.shared.writes_started.fetch_add(1, Ordering::AcqRel);
        self.shared.writer_busy.store(true, Ordering::Release);
        let written = self.file.write_durable(self.seal_buf.as_slice(), self.offset);
        self.shared.writer_busy.store(false, Ordering::Release);
        written.map_err(|e| {
            WalError::io(IoOp::Write, self.storage.path(&self.segment_name), Some(self.offset), e)
        })?;
        let info = SegmentInfo {
            segment_seq: self.segment_seq,
            path: self.storage.path(&self.segment_name),
            file_name: self.segment_name.clone(),
            first_agreement_id: self.segment_first_agreement_id,
            last_agreement_id: self.segment_last_agreement_id,
            record_count: self.segment_record_count,
            sha256: Arc::new(OnceLock::new()),
        };
        {
            let mut state = self.shared.lock();
            state.closed_segments.push(info);
            // Every durable record of the active segment is in the closed one now.
            state.active = None;
        }
        let next_seq = self.segment_seq + 1;
        let prepared = match &self.next_segment {
            NextSegment::FromPreparer(prepared_rx) => {
                self.shared.segment_wanted.store(true, Ordering::Release);
                let received = match prepared_rx.try_recv() {
                    Ok(prepared) => Ok(prepared),
                    Err(_) => {
                        log::warn!(
                            "wal: segment {next_seq} is not prepared yet; the log waits for it"
                        );
                        prepared_rx.recv()
                    }
                };
                self.shared.segment_wanted.store(false, Ordering::Release);
                match received {
                    Ok(prepared) => prepared?,
                    Err(_) => return Err(WalError::Closed),
                }
            }
            // Synchronously, at full speed: nothing else runs meanwhile.
            NextSegment::Inline(options) => {
                prepare_and_open(&*self.storage, &self.shared, options, next_seq, &mut || {
                    ZeroPace::Go
                })?
            }
        };
        assert_eq!(prepared.seq, self.segment_seq + 1);
        log::debug!("wal: sealed segment {}, writing segment {}", self.segment_seq, prepared.seq);
        self.file = prepared.file;
        self.segment_seq = prepared.seq;
        self.segment_name = prepared.name;
        self.segment_len = prepared.len;
        self.offset = 0;
        self.segment_first_agreement_id = None;
        self.segment_last_agreement_id = None;
        self.segment_record_count = 0;
        self.segment_has_records = false;
        Ok(())
    }
}

/// The log writer handle: append records, learn when they are durable, manage segments.
///
/// Dropping it closes the log as [`close`](Self::close) does, ignoring errors.
#[derive(Debug)]
pub struct LogWriter<S: Storage = FsStorage> {
    storage: Arc<S>,
    shared: Arc<Shared>,
    options: WalOptions,
    durable_rx: Receiver<DurablePoint>,
    writer: Option<JoinHandle<()>>,
    preparer: Option<JoinHandle<()>>,
    /// The stepped writer: `Some` from open until close or failure; always `None` with
    /// background threads. Lock order: this before the shared state.
    stepper: Mutex<Option<WriterState<S>>>,
}

// The handle is shared between threads (an event loop appends, another waits) in both
// writer modes: the stepped writer behind its mutex must not make it `!Send`/`!Sync`.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<LogWriter<FsStorage>>();
    send_and_sync::<LogWriter<crate::sim::SimStorage>>();
    send_and_sync::<LogReader<FsStorage>>();
    send_and_sync::<LogReader<crate::sim::SimStorage>>();
};

/// What one step of a stepped writer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The open group had no work.
    Idle,
    /// It wrote the open group; records became durable up to the point, if any.
    Wrote(Option<DurablePoint>),
}

impl<S: Storage> LogWriter<S> {
    /// Appends a record covering agreement ids `[first_agreement_id, last_agreement_id]`.
    /// Does not wait for the disk: it copies `payload` into the open group and returns a
    /// ticket. It blocks only while the open group is full (bounded queue).
    ///
    /// With [`WriterThreads::Stepped`] it never blocks: when the open group is full (or a
    /// cut closed it) it fails with [`WalError::GroupFull`] and appends nothing; the
    /// owner calls [`write_step`](Self::write_step) and appends again.
    ///
    /// Ids must strictly increase from record to record (`first > previous last`) and
    /// `last >= first`; otherwise [`WalError::AgreementIdOrder`] and nothing is appended.
    /// Fails with [`WalError::WriterFailed`] once the writer failed, and
    /// [`WalError::Closed`] after close.
    ///
    /// "Durable" (the ticket, [`durable_point`](Self::durable_point), the notifications)
    /// means on stable storage under the durable modes; under
    /// [`DurabilityMode::AsyncUnsafe`] it only means written to the page cache.
    pub fn append(
        &self,
        first_agreement_id: u64,
        last_agreement_id: u64,
        payload: &[u8],
    ) -> Result<Ticket> {
        if payload.len() > self.options.record_bytes_max {
            return Err(WalError::RecordTooLarge {
                agreement_id: first_agreement_id,
                payload_bytes: payload.len(),
                record_bytes_max: self.options.record_bytes_max,
            });
        }
        let needed = record_bytes(payload.len());
        let mut state = self.shared.lock();
        loop {
            if let Some(error) = &state.failed {
                return Err(WalError::WriterFailed(Arc::clone(error)));
            }
            if state.closing {
                return Err(WalError::Closed);
            }
            let previous = state.chain.last_agreement_id;
            if last_agreement_id < first_agreement_id
                || previous.is_some_and(|p| first_agreement_id <= p)
            {
                return Err(WalError::AgreementIdOrder {
                    first_agreement_id,
                    last_agreement_id,
                    previous_agreement_id: previous,
                });
            }
            if let Some(cut) = state.pending_cut
                && first_agreement_id > cut
            {
                // Records after the cut point go to the next segment.
                state.pending_cut = None;
                state.open.cut_after = true;
                self.shared.work_cv.notify_one();
            }
            let open = &state.open;
            let fits = !open.cut_after
                && (open.record_count as usize) < self.options.queue_depth_max
                && (open.record_count == 0
                    || open.buf.len() + needed <= self.options.group_bytes_max);
            if fits {
                break;
            }
            if self.options.writer == WriterThreads::Stepped {
                return Err(WalError::GroupFull {
                    record_count: open.record_count,
                    group_bytes: open.buf.len(),
                    record_bytes: needed,
                    closed_by_cut: open.cut_after,
                });
            }
            state = self.shared.space_cv.wait(state).expect("wal lock poisoned");
        }
        let prev_checksum = state.chain.prev_checksum.unwrap_or(0);
        let record_seq = state.next_record_seq;
        let open = &mut state.open;
        let at = open.buf.len();
        assert!(at + needed <= open.buf.capacity());
        let checksum = encode_record(
            &mut open.buf.full_mut()[at..],
            first_agreement_id,
            last_agreement_id,
            prev_checksum,
            payload,
        );
        open.buf.set_len(at + needed);
        if open.record_count == 0 {
            open.first_agreement_id = first_agreement_id;
        }
        open.record_count += 1;
        open.last_agreement_id = last_agreement_id;
        open.last_record_seq = record_seq;
        let wake_writer = open.record_count == 1;
        state.next_record_seq += 1;
        state.chain =
            Chain { prev_checksum: Some(checksum), last_agreement_id: Some(last_agreement_id) };
        if let Some(cut) = state.pending_cut
            && last_agreement_id >= cut
        {
            state.pending_cut = None;
            state.open.cut_after = true;
        }
        drop(state);
        if wake_writer {
            self.shared.work_cv.notify_one();
        }
        Ok(Ticket { record_seq, last_agreement_id, shared: Arc::clone(&self.shared) })
    }

    /// Ends the current segment after the record that covers `after_agreement_id`: the
    /// first record whose first agreement id exceeds it starts a new segment. If that
    /// record is already appended the current segment is sealed right after it; if a
    /// later record is already appended, [`WalError::CutBehind`].
    pub fn cut_segment(&self, after_agreement_id: u64) -> Result<()> {
        let mut state = self.shared.lock();
        if let Some(error) = &state.failed {
            return Err(WalError::WriterFailed(Arc::clone(error)));
        }
        match state.chain.last_agreement_id {
            Some(last) if last > after_agreement_id => {
                return Err(WalError::CutBehind {
                    agreement_id: after_agreement_id,
                    appended_agreement_id: last,
                });
            }
            Some(last) if last == after_agreement_id => {
                state.open.cut_after = true;
                state.pending_cut = None;
                drop(state);
                self.shared.work_cv.notify_one();
            }
            _ => state.pending_cut = Some(after_agreement_id),
        }
        Ok(())
    }

    /// The newest durable point.
    pub fn durable_point(&self) -> DurablePoint {
        self.shared.lock().durable
    }

    /// A channel that receives the newest [`DurablePoint`] after each write completes,
    /// for an event loop to `select!` on. It holds at most one point; an unreceived
    /// point is replaced by the newer one, so the last received point is current. It
    /// disconnects when the writer stops (closed or failed: see [`error`](Self::error)).
    /// Meant for one consumer.
    pub fn durable_notifications(&self) -> Receiver<DurablePoint> {
        self.durable_rx.clone()
    }

    /// What the writer has written so far (group writes, not segment preparation).
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            writes: self.shared.writes_done.load(Ordering::Relaxed),
            bytes: self.shared.bytes_written.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.shared.write_nanos.load(Ordering::Relaxed)),
            segments_created: self.shared.segments_created.load(Ordering::Relaxed),
            segments_recycled: self.shared.segments_recycled.load(Ordering::Relaxed),
        }
    }

    /// The storage the log writes to. For the real one, [`FsStorage::mode`] is the
    /// durability mode in effect, which [`Wal::open`] may have changed from
    /// [`WalOptions::mode`] (see [`crate::fs`]).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Whether new segments are zero-filled because the file system refused `fallocate`
    /// (asked for with [`Preallocate::Fallocate`]).
    pub fn fallocate_refused(&self) -> bool {
        self.shared.fallocate_refused.load(Ordering::Acquire)
    }

    /// The error the writer failed with, if it did.
    pub fn error(&self) -> Option<Arc<WalError>> {
        self.shared.lock().failed.clone()
    }

    /// Blocks until every record appended so far is durable.
    ///
    /// With [`WriterThreads::Stepped`] it writes instead of waiting: it steps (see
    /// [`write_step`](Self::write_step)) until the open group is empty.
    pub fn sync(&self) -> Result<()> {
        if self.options.writer == WriterThreads::Stepped {
            return self.sync_stepped();
        }
        let ticket = {
            let state = self.shared.lock();
            Ticket {
                record_seq: state.next_record_seq - 1,
                last_agreement_id: state.chain.last_agreement_id.unwrap_or(0),
                shared: Arc::clone(&self.shared),
            }
        };
        ticket.wait()
    }

    fn sync_stepped(&self) -> Result<()> {
        let target_record_seq = self.shared.lock().next_record_seq - 1;
        loop {
            {
                let state = self.shared.lock();
                if state.durable.record_seq >= target_record_seq {
                    return Ok(());
                }
                if let Some(error) = &state.failed {
                    return Err(WalError::WriterFailed(Arc::clone(error)));
                }
            }
            if self.step()? == Step::Idle {
                // A step holds the writer until its write completed, so with the open group
                // empty every record appended before is durable.
                let state = self.shared.lock();
                assert!(
                    state.durable.record_seq >= target_record_seq,
                    "stepped writer idle with record {target_record_seq} appended but only {} durable",
                    state.durable.record_seq
                );
                return Ok(());
            }
        }
    }

    /// Drives a [`WriterThreads::Stepped`] writer by one write: takes the whole open
    /// group, if it has work (records, or a cut), and does exactly what one iteration of
    /// the background writer thread does: stamps and writes the group in one write,
    /// sealing the segment and rolling to the next when it is full or cut (preparing the
    /// next segment inline), then publishes the new durable point to tickets,
    /// [`durable_point`](Self::durable_point) and
    /// [`durable_notifications`](Self::durable_notifications).
    ///
    /// Returns the new durable point when records became durable; `None` when the open
    /// group had nothing to write, or only a cut (the segment was sealed, no record
    /// became durable).
    ///
    /// Contract: on `Ok(Some(point))` every record up to `point` is durable (stable
    /// storage under the durable modes). On a write, sync or preparation error the log
    /// fails permanently: [`WalError::WriterFailed`] now and from every later append,
    /// step and sync; the taken records are not durable, and the write may have landed
    /// torn (recovery cuts it). After close: [`WalError::Closed`].
    ///
    /// With [`WriterThreads::Background`] the thread does this: it fails with
    /// [`WalError::WriterMode`] and does nothing.
    pub fn write_step(&self) -> Result<Option<DurablePoint>> {
        Ok(match self.step()? {
            Step::Idle => None,
            Step::Wrote(point) => point,
        })
    }

    fn step(&self) -> Result<Step> {
        if self.options.writer != WriterThreads::Stepped {
            return Err(WalError::WriterMode {
                operation: "LogWriter::write_step",
                writer: self.options.writer,
            });
        }
        let mut slot = self.stepper.lock().expect("wal stepped writer lock poisoned");
        let group = {
            let mut state = self.shared.lock();
            if let Some(error) = &state.failed {
                let error = Arc::clone(error);
                // Failed elsewhere (deleting segments): retire the writer as its thread
                // would, which disconnects the notifications.
                state.writer_exited = true;
                drop(state);
                *slot = None;
                self.shared.durable_cv.notify_all();
                return Err(WalError::WriterFailed(error));
            }
            let Some(writer) = slot.as_mut() else {
                return Err(WalError::Closed);
            };
            if !state.open.has_work() {
                return Ok(Step::Idle);
            }
            take_open_group(&mut writer.spare, &mut state)
        };
        let writer = slot.as_mut().expect("checked above, under the same lock");
        match writer.write_taken(group) {
            Ok(point) => Ok(Step::Wrote(point)),
            Err(error) => {
                // Dropping the writer drops the notification sender: the channel
                // disconnects, as when the writer thread exits.
                *slot = None;
                Err(WalError::WriterFailed(error))
            }
        }
    }

    /// A handle that reads the log's durable agreements back from any thread while this
    /// writer runs (see [`LogReader`]).
    pub fn reader(&self) -> LogReader<S> {
        LogReader { storage: Arc::clone(&self.storage), shared: Arc::clone(&self.shared) }
    }

    /// [`LogReader::held_range`].
    pub fn held_range(&self) -> Option<(u64, u64)> {
        self.reader().held_range()
    }

    /// [`LogReader::read_agreements`].
    pub fn read_agreements(
        &self,
        after: u64,
        up_to: u64,
        bytes_max: u64,
    ) -> Result<Vec<LogRecord>> {
        self.reader().read_agreements(after, up_to, bytes_max)
    }

    /// Snapshot of the closed (sealed) segments, oldest first.
    pub fn closed_segments(&self) -> Vec<SegmentInfo> {
        self.shared.lock().closed_segments.clone()
    }

    /// SHA-256 of closed segment `segment_seq`: over the bytes of its records (headers and
    /// payloads, in order; not group headers or padding), so replicas that logged the same
    /// records agree. Computed once (verifying the segment), then cached.
    pub fn segment_sha256(&self, segment_seq: u64) -> Result<[u8; 32]> {
        let info = self.closed_segment(segment_seq)?;
        if let Some(digest) = info.sha256.get() {
            return Ok(*digest);
        }
        let (_, digest) = read_closed_segment(&*self.storage, &info, false)?;
        Ok(*info.sha256.get_or_init(|| digest))
    }

    /// Reads and verifies the records of closed segment `segment_seq` (for state
    /// transfer). Fails with [`WalError::Corrupt`] if the file no longer verifies.
    pub fn read_segment(&self, segment_seq: u64) -> Result<Vec<LogRecord>> {
        let info = self.closed_segment(segment_seq)?;
        let (records, digest) = read_closed_segment(&*self.storage, &info, true)?;
        let _ = info.sha256.get_or_init(|| digest);
        Ok(records)
    }

    fn closed_segment(&self, segment_seq: u64) -> Result<SegmentInfo> {
        self.shared
            .lock()
            .closed_segments
            .iter()
            .find(|s| s.segment_seq == segment_seq)
            .cloned()
            .ok_or(WalError::NoSuchSegment { segment_seq })
    }

    /// Deletes every closed segment whose last agreement id is below `agreement_id`
    /// (whole segments only; the active segment is never deleted). Up to
    /// `spare_segments_max` of them are renamed to spares for recycling, the others
    /// removed, oldest first, with a directory sync after each, so a crash leaves a
    /// prefix deleted. Returns the deleted sequence numbers.
    ///
    /// A failure (rename, remove, directory sync) fails the writer permanently.
    pub fn delete_below(&self, agreement_id: u64) -> Result<Vec<u64>> {
        let (doomed, mut next_spare, spare_room) = {
            let mut state = self.shared.lock();
            if let Some(error) = &state.failed {
                return Err(WalError::WriterFailed(Arc::clone(error)));
            }
            let (doomed, kept): (Vec<SegmentInfo>, Vec<SegmentInfo>) =
                std::mem::take(&mut state.closed_segments)
                    .into_iter()
                    .partition(|s| s.last_agreement_id.is_none_or(|last| last < agreement_id));
            state.closed_segments = kept;
            let room = self.options.spare_segments_max.saturating_sub(state.spares.len());
            let next = state.next_spare;
            state.next_spare += doomed.len() as u64;
            (doomed, next, room)
        };
        let mut recycled = Vec::new();
        let result = (|| {
            for (i, segment) in doomed.iter().enumerate() {
                if i < spare_room {
                    let spare = spare_file_name(next_spare);
                    next_spare += 1;
                    self.storage
                        .rename(&segment.file_name, &spare)
                        .map_err(|e| WalError::io(IoOp::Rename, &segment.path, None, e))?;
                    recycled.push(spare);
                } else {
                    self.storage
                        .remove(&segment.file_name)
                        .map_err(|e| WalError::io(IoOp::Remove, &segment.path, None, e))?;
                }
                // One sync per segment, oldest first: a crash can leave only a prefix of
                // the doomed segments gone, never a gap in the sequence.
                self.storage
                    .sync_dir()
                    .map_err(|e| WalError::io(IoOp::SyncDir, self.storage.dir(), None, e))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.shared.lock().spares.extend(recycled);
                Ok(doomed.iter().map(|s| s.segment_seq).collect())
            }
            Err(error) => {
                let error = self.shared.fail(error);
                if self.options.writer == WriterThreads::Stepped {
                    // No thread notices the failure: retire the stepped writer here.
                    let retired =
                        self.stepper.lock().expect("wal stepped writer lock poisoned").take();
                    self.shared.lock().writer_exited = true;
                    self.shared.durable_cv.notify_all();
                    drop(retired);
                }
                Err(WalError::WriterFailed(error))
            }
        }
    }

    /// Writes everything appended so far, stops the writer and the preparer, and returns
    /// the writer's error if it failed. Later appends fail with [`WalError::Closed`].
    /// A stepped writer steps until nothing is left, in the caller's thread.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        {
            let mut state = self.shared.lock();
            state.closing = true;
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.work_cv.notify_all();
        self.shared.space_cv.notify_all();
        if self.options.writer == WriterThreads::Stepped {
            // What the writer thread does before it exits: write what is left, then stop.
            // The loop ends: each step empties the open group and closing refuses appends.
            while let Ok(Step::Wrote(_)) = self.step() {}
            let retired = self.stepper.lock().expect("wal stepped writer lock poisoned").take();
            self.shared.lock().writer_exited = true;
            self.shared.durable_cv.notify_all();
            self.shared.space_cv.notify_all();
            // Drops the notification sender: the channel disconnects.
            drop(retired);
        }
        if let Some(writer) = self.writer.take() {
            writer.join().expect("wal writer thread panicked");
        }
        // The writer dropped its end of the prepared-segment channel: the preparer stops.
        if let Some(preparer) = self.preparer.take() {
            preparer.join().expect("wal preparer thread panicked");
        }
        match self.error() {
            Some(error) => Err(WalError::WriterFailed(error)),
            None => Ok(()),
        }
    }
}

/// Reads closed segment `info` and verifies it (every group and record, sealed, the record
/// count it was sealed with); returns its records (payloads only if asked for) and its
/// SHA-256 (see [`LogWriter::segment_sha256`]).
fn read_closed_segment<S: Storage>(
    storage: &S,
    info: &SegmentInfo,
    payloads: bool,
) -> Result<(Vec<LogRecord>, [u8; 32])> {
    let bytes = storage
        .read_all(&info.file_name)
        .map_err(|e| WalError::io(IoOp::Read, &info.path, None, e))?;
    let corrupt = |offset: u64, reason: String| WalError::Corrupt {
        segment_seq: info.segment_seq,
        path: info.path.clone(),
        offset,
        reason,
    };
    if bytes.len() < SEGMENT_BYTES_MIN {
        return Err(corrupt(0, "segment file shorter than the minimum".into()));
    }
    let mut chain = Chain::default();
    let scan =
        scan_segment(&bytes, info.segment_seq, &mut chain, ScanWants { payloads, sha256: true });
    match scan.end {
        SegmentEnd::Sealed { .. } if scan.record_count == info.record_count => {
            Ok((scan.records, scan.sha256.expect("asked for")))
        }
        SegmentEnd::Sealed { offset } => Err(corrupt(offset, "record count changed".into())),
        SegmentEnd::Open { offset, reason, .. } => {
            Err(corrupt(offset, format!("closed segment: {reason}")))
        }
    }
}

/// Reads the durable part of the active segment `active` (the bytes before
/// `durable_bytes`, never a byte after: those may be mid-write) and verifies it: its
/// groups must end exactly there and hold the records the writer counted.
fn read_active_segment<S: Storage>(storage: &S, active: &ActiveSegment) -> Result<Vec<LogRecord>> {
    let name = segment_file_name(active.segment_seq);
    let path = storage.path(&name);
    let durable_bytes = usize::try_from(active.durable_bytes).expect("a segment fits in memory");
    assert!(durable_bytes.is_multiple_of(BLOCK_BYTES), "groups end on block boundaries");
    let mut bytes = storage
        .read_prefix(&name, active.durable_bytes)
        .map_err(|e| WalError::io(IoOp::Read, &path, None, e))?;
    let corrupt = |offset: u64, reason: String| WalError::Corrupt {
        segment_seq: active.segment_seq,
        path: path.clone(),
        offset,
        reason,
    };
    if bytes.len() != durable_bytes {
        return Err(corrupt(
            bytes.len() as u64,
            format!("active segment shorter than its durable part ({durable_bytes} bytes)"),
        ));
    }
    // Zeros after the durable part, and a block for the seal the scanner reserves: the
    // scan stops where the durable groups end and never sees a byte written later.
    bytes.resize((durable_bytes + BLOCK_BYTES).max(SEGMENT_BYTES_MIN), 0);
    let scan = scan_segment(
        &bytes,
        active.segment_seq,
        &mut Chain::default(),
        ScanWants { payloads: true, sha256: false },
    );
    match scan.end {
        SegmentEnd::Open { offset, .. }
            if offset == active.durable_bytes && scan.record_count == active.ids.record_count =>
        {
            assert_eq!(scan.first_agreement_id, active.ids.first_agreement_id);
            assert_eq!(scan.last_agreement_id, active.ids.last_agreement_id);
            Ok(scan.records)
        }
        SegmentEnd::Open { offset, reason, .. } => Err(corrupt(
            offset,
            format!(
                "active segment: {reason} ({} of {} durable records verified, ending at {})",
                scan.record_count, active.ids.record_count, active.durable_bytes
            ),
        )),
        SegmentEnd::Sealed { offset } => {
            Err(corrupt(offset, "active segment: a seal inside its durable part".into()))
        }
    }
}

/// Whether records `[first, last]` (`None` for a segment without records) intersect
/// agreements `(after, up_to]`.
fn intersects(first: Option<u64>, last: Option<u64>, after: u64, up_to: u64) -> bool {
    matches!((first, last), (Some(first), Some(last)) if first <= up_to && last > after)
}

impl State {
    /// The first agreement id of the oldest record the log holds (see
    /// [`LogReader::held_range`]), if it holds any.
    fn first_held_record(&self) -> Option<u64> {
        self.closed_segments
            .iter()
            .find_map(|s| s.first_agreement_id)
            .or_else(|| self.active.and_then(|a| a.ids.first_agreement_id))
    }

    /// The lowest agreement id the log can serve: the first held record's, or one past
    /// the durable point when it holds no record.
    fn first_held(&self) -> u64 {
        self.first_held_record().unwrap_or(self.durable.agreement_id.saturating_add(1))
    }

    /// Whether segment `segment_seq` left the log ([`LogWriter::delete_below`] takes a
    /// segment off the list before it renames or removes its file).
    fn deleted(&self, segment_seq: u64) -> bool {
        !self.closed_segments.iter().any(|s| s.segment_seq == segment_seq)
            && self.active.is_none_or(|a| a.segment_seq != segment_seq)
    }
}

/// A handle for reading a live log's decided agreements back (state transfer), from any
/// thread, while its [`LogWriter`] appends, cuts and deletes segments in another. Cheap
/// to clone (two `Arc`s); obtained with [`LogWriter::reader`]. It reads files only
/// through the [`Storage`] trait, read-only, and keeps working after the writer closed
/// or failed (what was durable stays readable).
#[derive(Debug)]
pub struct LogReader<S: Storage = FsStorage> {
    storage: Arc<S>,
    shared: Arc<Shared>,
}

impl<S: Storage> Clone for LogReader<S> {
    fn clone(&self) -> Self {
        LogReader { storage: Arc::clone(&self.storage), shared: Arc::clone(&self.shared) }
    }
}

impl<S: Storage> LogReader<S> {
    /// The agreements the log holds now: `(first, last)`, where `first` is the first
    /// agreement id of the oldest record the log still holds and `last` the durable
    /// point's agreement id ([`LogWriter::durable_point`]). `None` when it holds no
    /// durable record.
    ///
    /// "Holds" means: the durable records of the closed segments not deleted, and of the
    /// segment being written. [`LogWriter::delete_below`]`(x)` deletes whole segments
    /// only, those whose last agreement id is below `x`, so after it `first` is the first
    /// id of the oldest segment left, which may be well below `x` (those agreements can
    /// still be read). A segment leaves the held range the moment `delete_below` takes it
    /// off the list, before its file is renamed or removed. Records appended but not yet
    /// durable are not held. Agreement ids may have gaps (ids no record covers); the
    /// range says nothing about them.
    pub fn held_range(&self) -> Option<(u64, u64)> {
        let state = self.shared.lock();
        let last = state.durable.agreement_id;
        // A record can sit in a sealed segment a moment before the durable point that
        // covers it is published (a cut right after its write): not held yet.
        state.first_held_record().filter(|&first| first <= last).map(|first| (first, last))
    }

    /// Every durable record whose agreement ids `[first_agreement_id,
    /// last_agreement_id]` intersect `(after, up_to]`, in log order: the "log pieces" of
    /// state transfer. A record may cover several agreements, so the first and last
    /// records returned may cover agreements outside the range (at or below `after`,
    /// above `up_to`); the caller passes the records' payloads on as they are. Ids with
    /// no record (gaps) simply yield nothing.
    ///
    /// Reads the closed segments that intersect the range, each verified as
    /// [`LogWriter::read_segment`] does (setting the digest [`SegmentInfo`] caches, as
    /// that does), and the durable part of the segment being written: the bytes before
    /// the durable point's group end, read through [`Storage::read_prefix`] and scanned
    /// like any segment; the bytes after it may be mid-write and are never looked at, so
    /// no record that is not durable is ever returned. Safe to call from any thread while
    /// the writer appends, cuts and deletes.
    ///
    /// Memory: the records returned hold at most `bytes_max` payload bytes; while a
    /// segment is read, its file (the durable part of the active one) and the copies of
    /// its payloads are held as well.
    ///
    /// Errors (nothing is returned with them):
    /// * [`WalError::NotYetDurable`] when `up_to` is beyond the durable point
    ///   ([`LogWriter::durable_point`]'s agreement id when the read starts);
    /// * [`WalError::Truncated`] when `after + 1` is below the first agreement the log
    ///   holds ([`held_range`](Self::held_range)), or a segment the read needed was
    ///   deleted by [`LogWriter::delete_below`] while it ran;
    /// * [`WalError::RangeTooLarge`] when the records' payloads exceed `bytes_max`
    ///   (checked as each segment is read, before the next one is);
    /// * [`WalError::Io`] or [`WalError::Corrupt`] when a segment still held cannot be
    ///   read or no longer verifies.
    ///
    /// Panics unless `after < up_to`.
    pub fn read_agreements(
        &self,
        after: u64,
        up_to: u64,
        bytes_max: u64,
    ) -> Result<Vec<LogRecord>> {
        assert!(after < up_to, "read_agreements: an empty range ({after}, {up_to}]");
        let asked = after + 1;
        // One snapshot: the durable point, the closed segments and the durable part of
        // the active segment agree with each other (the writer updates them together).
        let (closed, active) = {
            let state = self.shared.lock();
            let durable = state.durable.agreement_id;
            if up_to > durable {
                return Err(WalError::NotYetDurable { up_to, durable });
            }
            let first_held = state.first_held();
            if asked < first_held {
                return Err(WalError::Truncated { first_held, asked });
            }
            let closed: Vec<SegmentInfo> = state
                .closed_segments
                .iter()
                .filter(|s| intersects(s.first_agreement_id, s.last_agreement_id, after, up_to))
                .cloned()
                .collect();
            let active = state.active.filter(|a| {
                intersects(a.ids.first_agreement_id, a.ids.last_agreement_id, after, up_to)
            });
            (closed, active)
        };
        let mut records = Vec::new();
        let mut bytes = 0u64;
        let mut keep = |segment: Vec<LogRecord>, records: &mut Vec<LogRecord>| -> Result<()> {
            for record in segment {
                if record.first_agreement_id > up_to || record.last_agreement_id <= after {
                    continue;
                }
                // Every record up to the snapshot's durable point is durable, and a record
                // starting at or below `up_to` ends at or below it (ids strictly increase).
                bytes += record.payload.len() as u64;
                if bytes > bytes_max {
                    return Err(WalError::RangeTooLarge { bytes, max: bytes_max });
                }
                records.push(record);
            }
            Ok(())
        };
        for info in &closed {
            let segment = match read_closed_segment(&*self.storage, info, true) {
                Ok((segment, digest)) => {
                    let _ = info.sha256.get_or_init(|| digest);
                    segment
                }
                Err(error) => return Err(self.deleted_or(info.segment_seq, asked, error)),
            };
            keep(segment, &mut records)?;
        }
        if let Some(active) = &active {
            let segment = read_active_segment(&*self.storage, active)
                .map_err(|error| self.deleted_or(active.segment_seq, asked, error))?;
            keep(segment, &mut records)?;
        }
        assert!(
            records.windows(2).all(|w| w[0].last_agreement_id < w[1].first_agreement_id),
            "records come back in log order"
        );
        Ok(records)
    }

    /// The error for a segment the read could not read or verify: [`WalError::Truncated`]
    /// if it was deleted meanwhile (its file renamed, removed, or recycled and
    /// overwritten), else `error`.
    fn deleted_or(&self, segment_seq: u64, asked: u64, error: WalError) -> WalError {
        let state = self.shared.lock();
        if state.deleted(segment_seq) {
            WalError::Truncated { first_held: state.first_held(), asked }
        } else {
            error
        }
    }
}

impl<S: Storage> Drop for LogWriter<S> {
    fn drop(&mut self) {
        let stepper_running = self.stepper.get_mut().is_ok_and(|stepper| stepper.is_some());
        if self.writer.is_some() || self.preparer.is_some() || stepper_running {
            let _ = self.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_valid_and_misfits_are_refused() {
        WalOptions::default().validate().expect("defaults");
        let small_segment = WalOptions { segment_bytes: 4 * 1024 * 1024, ..WalOptions::default() };
        assert!(matches!(small_segment.validate(), Err(WalError::InvalidOptions(_))));
        // A 4 MiB segment works with groups and records of up to 1 MiB.
        let fitted = WalOptions {
            record_bytes_max: 1024 * 1024,
            group_bytes_max: 1024 * 1024,
            ..small_segment
        };
        fitted.validate().expect("fitted");
        let unaligned =
            WalOptions { segment_bytes: SEGMENT_BYTES_DEFAULT + 512, ..WalOptions::default() };
        assert!(matches!(unaligned.validate(), Err(WalError::InvalidOptions(_))));
    }
}
