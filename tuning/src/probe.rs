//! The device probe: synced-write latency and sequential synced bandwidth.
//!
//! Every measurement writes a probe file of its own under the probed directory, named
//! `.dura-probe-<pid>-<n>`, and removes it when done (also on error). Files are prepared
//! with `dura_wal::io::preallocate` and written with `dura_wal::io::synced_write_at`, so
//! the figures are those of the log's own write path without its framing or io_uring.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dura_wal::io::{
    ALIGN_BYTES, AlignedBuf, DurabilityMode, Preallocate, align_up, open_with_mode, preallocate,
    synced_write_at,
};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Result, TuneError};

/// Largest write the probe accepts (one bandwidth record), 64 MiB.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest probe file, 4 GiB: the probe must never fill a disk by a typo.
pub const PROBE_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Most writes in one latency measurement.
pub const LATENCY_WRITES_MAX: usize = 1 << 20;
/// Longest latency the histograms hold (longer samples are clamped to it), 60 s.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// Whether the blocks a write lands on held data before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockState {
    /// Blocks already written (the file was zero-filled and synced first): an overwrite
    /// changes no file-system metadata. How a recycled or pre-zeroed log segment behaves.
    Written,
    /// Blocks reserved by `fallocate` but never written: each first write must also
    /// convert the unwritten extent, a journalled metadata change.
    Fallocated,
}

impl BlockState {
    fn preallocate(self) -> Preallocate {
        match self {
            BlockState::Written => Preallocate::Zeroed,
            BlockState::Fallocated => Preallocate::Fallocate,
        }
    }

    /// The stable name (`written`, `fallocated`).
    pub fn name(self) -> &'static str {
        match self {
            BlockState::Written => "written",
            BlockState::Fallocated => "fallocated",
        }
    }
}

/// What [`probe`] measures and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Modes measured. Latency is measured for all of them; bandwidth only for the durable
    /// ones ([`DurabilityMode::is_durable`]).
    pub modes: Vec<DurabilityMode>,
    /// Size of one latency write, rounded up to [`ALIGN_BYTES`].
    pub latency_write_bytes: usize,
    /// Writes per latency measurement (one per mode and block state), each to the next
    /// block of the file, as a log appends.
    pub latency_writes: usize,
    /// Time bound of one latency measurement: it stops early when this has passed.
    pub latency_time_max: Duration,
    /// Record sizes of the bandwidth table, each rounded up to [`ALIGN_BYTES`].
    pub bandwidth_record_bytes: Vec<usize>,
    /// Bytes written per bandwidth measurement (at least one record).
    pub bandwidth_total_bytes: u64,
    /// Time bound of one bandwidth measurement.
    pub bandwidth_time_max: Duration,
}

impl Default for ProbeOptions {
    /// A probe of a few seconds on an SSD: 256 latency writes and 64 MiB per bandwidth
    /// figure, each measurement bounded to 1 s (latency) or 2 s (bandwidth).
    fn default() -> Self {
        ProbeOptions {
            modes: DurabilityMode::ALL.to_vec(),
            latency_write_bytes: 4096,
            latency_writes: 256,
            latency_time_max: Duration::from_secs(1),
            bandwidth_record_bytes: vec![64 * 1024, 1024 * 1024, 4 * 1024 * 1024],
            bandwidth_total_bytes: 64 * 1024 * 1024,
            bandwidth_time_max: Duration::from_secs(2),
        }
    }
}

impl ProbeOptions {
    fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: String| {
            if ok { Ok(()) } else { Err(TuneError::InvalidOption(what)) }
        };
        check(!self.modes.is_empty(), "no durability mode to probe".into())?;
        check(
            (1..=RECORD_BYTES_MAX).contains(&self.latency_write_bytes),
            format!("latency write of {} bytes", self.latency_write_bytes),
        )?;
        check(
            (1..=LATENCY_WRITES_MAX).contains(&self.latency_writes),
            format!("{} latency writes (1..={LATENCY_WRITES_MAX})", self.latency_writes),
        )?;
        check(
            (align_up(self.latency_write_bytes, ALIGN_BYTES) as u64)
                .saturating_mul(self.latency_writes as u64)
                <= PROBE_FILE_BYTES_MAX,
            "latency probe file larger than PROBE_FILE_BYTES_MAX".into(),
        )?;
        for &record_bytes in &self.bandwidth_record_bytes {
            check(
                (1..=RECORD_BYTES_MAX).contains(&record_bytes),
                format!("bandwidth record of {record_bytes} bytes"),
            )?;
        }
        check(
            self.bandwidth_total_bytes <= PROBE_FILE_BYTES_MAX,
            format!("bandwidth total of {} bytes", self.bandwidth_total_bytes),
        )
    }
}

/// Latency of single synced writes for one mode and block state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyRow {
    /// Durability mode name (`direct-dsync`, ...).
    pub mode: &'static str,
    /// Whether the blocks were written before.
    pub blocks: BlockState,
    /// Bytes per write.
    pub write_bytes: usize,
    /// Writes measured.
    pub writes: u64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// Slowest write, microseconds.
    pub max_us: f64,
}

/// One sequential synced bandwidth measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandwidthSample {
    /// Durability mode name.
    pub mode: &'static str,
    /// Bytes per write (one record).
    pub record_bytes: usize,
    /// Writes made.
    pub writes: u64,
    /// Bytes written (`writes * record_bytes`).
    pub bytes_written: u64,
    /// Wall time of the writes (and their syncs), seconds.
    pub seconds: f64,
    /// Bandwidth in MB/s (10^6 bytes per second).
    pub mb_s: f64,
}

/// Everything [`probe`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    /// The probed directory.
    pub dir: PathBuf,
    /// File system type and device holding `dir`, from `/proc/self/mounts`, when known.
    pub filesystem: Option<String>,
    /// Single-write latency per mode and block state.
    pub latency: Vec<LatencyRow>,
    /// Sequential synced bandwidth per durable mode and record size, into written blocks.
    pub bandwidth: Vec<BandwidthSample>,
    /// Measurements left out, with the reason (e.g. `O_DIRECT` refused by the file system).
    pub skipped: Vec<String>,
}

/// Probes the device under `dir`: for each mode of `options`, the latency of single
/// synced writes into written and into `fallocate`d blocks, then the sequential synced
/// bandwidth (into written blocks) for each record size.
///
/// A mode whose open flags the file system refuses (`O_DIRECT` on tmpfs) is listed in
/// [`ProbeReport::skipped`] instead of failing the probe. Probe files are removed before
/// returning, on success and on error; nothing else in `dir` is touched.
pub fn probe(dir: &Path, options: &ProbeOptions) -> Result<ProbeReport> {
    options.validate()?;
    let mut report = ProbeReport {
        dir: dir.to_path_buf(),
        filesystem: filesystem_of(dir),
        latency: Vec::new(),
        bandwidth: Vec::new(),
        skipped: Vec::new(),
    };
    // Durable modes first: dirty pages left by the never-synced mode would otherwise be
    // written back while the durable ones are measured.
    let mut modes = options.modes.clone();
    modes.sort_by_key(|mode| !mode.is_durable());
    for &mode in &modes {
        for blocks in [BlockState::Written, BlockState::Fallocated] {
            match latency_row(dir, mode, blocks, options)? {
                Ok(row) => report.latency.push(row),
                Err(skip) => report.skipped.push(skip),
            }
        }
    }
    for &mode in modes.iter().filter(|mode| mode.is_durable()) {
        for &record_bytes in &options.bandwidth_record_bytes {
            match bandwidth_sample(
                dir,
                mode,
                record_bytes,
                options.bandwidth_total_bytes,
                Some(options.bandwidth_time_max),
            )? {
                Ok(sample) => report.bandwidth.push(sample),
                Err(skip) => report.skipped.push(skip),
            }
        }
    }
    Ok(report)
}

/// Sequential synced write bandwidth, in MB/s (10^6 bytes per second), of `total_bytes`
/// written as records of `write_bytes` under `mode` into already-written blocks of a
/// probe file in `dir`.
///
/// `write_bytes` is rounded up to [`ALIGN_BYTES`] and `total_bytes` up to a whole number
/// of records (at least one). Only the record writes (and their syncs) are timed, not the
/// zero-filling before. The probe file is removed before returning.
pub fn sequential_synced_bandwidth(
    dir: &Path,
    mode: DurabilityMode,
    write_bytes: usize,
    total_bytes: u64,
) -> Result<f64> {
    Ok(sequential_synced_bandwidth_bounded(dir, mode, write_bytes, total_bytes, None)?.mb_s)
}

/// [`sequential_synced_bandwidth`] with the details, stopping early (after at least one
/// record) once `time_max` has passed.
///
/// Fails with [`TuneError::Io`] when the file system refuses the mode's open flags.
pub fn sequential_synced_bandwidth_bounded(
    dir: &Path,
    mode: DurabilityMode,
    write_bytes: usize,
    total_bytes: u64,
    time_max: Option<Duration>,
) -> Result<BandwidthSample> {
    if !(1..=RECORD_BYTES_MAX).contains(&write_bytes) || total_bytes > PROBE_FILE_BYTES_MAX {
        return Err(TuneError::InvalidOption(format!(
            "bandwidth of {write_bytes}-byte writes over {total_bytes} bytes"
        )));
    }
    match bandwidth_sample(dir, mode, write_bytes, total_bytes, time_max)? {
        Ok(sample) => Ok(sample),
        Err(skip) => {
            Err(TuneError::io("open", dir, 0, io::Error::new(io::ErrorKind::Unsupported, skip)))
        }
    }
}

/// A measurement that could not run on this file system, with the reason.
type Skip = String;

fn latency_row(
    dir: &Path,
    mode: DurabilityMode,
    blocks: BlockState,
    options: &ProbeOptions,
) -> Result<Result<LatencyRow, Skip>> {
    let write_bytes = align_up(options.latency_write_bytes, ALIGN_BYTES);
    let file_bytes = write_bytes as u64 * options.latency_writes as u64;
    let probe_file = ProbeFile::create(dir, file_bytes, blocks.preallocate())?;
    let file = match probe_file.open(mode)? {
        Ok(file) => file,
        Err(skip) => return Ok(Err(format!("latency {mode} {}: {skip}", blocks.name()))),
    };
    let buf = pattern_buf(write_bytes);
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds");
    let started = Instant::now();
    for index in 0..options.latency_writes {
        if index > 0 && started.elapsed() >= options.latency_time_max {
            break;
        }
        let offset = index as u64 * write_bytes as u64;
        let write_started = Instant::now();
        synced_write_at(&file, buf.as_slice(), offset, mode)
            .map_err(|e| TuneError::io("synced write", &probe_file.path, offset, e))?;
        histogram.saturating_record(nanos(write_started.elapsed()).max(1));
    }
    assert!(!histogram.is_empty(), "at least one latency sample");
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(Ok(LatencyRow {
        mode: mode.name(),
        blocks,
        write_bytes,
        writes: histogram.len(),
        p50_us: us(histogram.value_at_quantile(0.50)),
        p90_us: us(histogram.value_at_quantile(0.90)),
        p99_us: us(histogram.value_at_quantile(0.99)),
        mean_us: histogram.mean() / 1000.0,
        max_us: us(histogram.max()),
    }))
}

fn bandwidth_sample(
    dir: &Path,
    mode: DurabilityMode,
    record_bytes: usize,
    total_bytes: u64,
    time_max: Option<Duration>,
) -> Result<Result<BandwidthSample, Skip>> {
    let record_bytes = align_up(record_bytes, ALIGN_BYTES);
    let records = total_bytes.div_ceil(record_bytes as u64).max(1);
    let file_bytes = records * record_bytes as u64;
    let probe_file = ProbeFile::create(dir, file_bytes, Preallocate::Zeroed)?;
    let file = match probe_file.open(mode)? {
        Ok(file) => file,
        Err(skip) => return Ok(Err(format!("bandwidth {mode} {record_bytes} B: {skip}"))),
    };
    let buf = pattern_buf(record_bytes);
    let started = Instant::now();
    let mut writes = 0u64;
    while writes < records {
        if writes > 0 && time_max.is_some_and(|max| started.elapsed() >= max) {
            break;
        }
        let offset = writes * record_bytes as u64;
        synced_write_at(&file, buf.as_slice(), offset, mode)
            .map_err(|e| TuneError::io("synced write", &probe_file.path, offset, e))?;
        writes += 1;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let bytes_written = writes * record_bytes as u64;
    assert!(bytes_written > 0 && bytes_written <= file_bytes);
    Ok(Ok(BandwidthSample {
        mode: mode.name(),
        record_bytes,
        writes,
        bytes_written,
        seconds,
        mb_s: bytes_written as f64 / 1e6 / seconds,
    }))
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// An aligned buffer of `len` bytes filled with a non-zero pattern, so that no layer can
/// recognise the writes as zeros.
fn pattern_buf(len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::with_capacity(len);
    buf.set_len(len);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in buf.as_mut_slice().chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    buf
}

/// A probe file, removed when dropped.
struct ProbeFile {
    path: PathBuf,
}

static PROBE_FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ProbeFile {
    /// Creates a fresh probe file in `dir` of `len_bytes`, prepared as `how` says.
    fn create(dir: &Path, len_bytes: u64, how: Preallocate) -> Result<ProbeFile> {
        assert!(len_bytes <= PROBE_FILE_BYTES_MAX, "probe file of {len_bytes} bytes");
        let number = PROBE_FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".dura-probe-{}-{number}", std::process::id()));
        let probe_file = ProbeFile { path };
        preallocate(&probe_file.path, len_bytes, how)
            .map_err(|e| TuneError::io("preallocate", &probe_file.path, 0, e))?;
        Ok(probe_file)
    }

    /// Opens the file with the flags of `mode`; `Ok(Err(reason))` when the file system
    /// refuses `O_DIRECT`.
    fn open(&self, mode: DurabilityMode) -> Result<Result<File, Skip>> {
        match open_with_mode(&self.path, mode) {
            Ok(file) => Ok(Ok(file)),
            Err(e) if mode.is_direct() && e.raw_os_error() == Some(EINVAL) => {
                Ok(Err(format!("O_DIRECT refused by the file system ({e})")))
            }
            Err(e) => Err(TuneError::io("open", &self.path, 0, e)),
        }
    }
}

/// `EINVAL` on Linux (the `open(2)` answer to O_DIRECT on file systems without it).
const EINVAL: i32 = 22;

impl Drop for ProbeFile {
    fn drop(&mut self) {
        // Best effort: a probe file left behind is named so that it is recognisable.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The file system type and source of the mount holding `dir` (longest mount point
/// that is a prefix of its canonical path), from `/proc/self/mounts`.
fn filesystem_of(dir: &Path) -> Option<String> {
    let canonical = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let mount_point = fields.next()?.replace("\\040", " ");
            let fs_type = fields.next()?;
            canonical
                .starts_with(&mount_point)
                .then(|| (mount_point.len(), format!("{fs_type} on {source} at {mount_point}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, description)| description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_not_zero_and_has_the_requested_length() {
        let buf = pattern_buf(3 * ALIGN_BYTES);
        assert_eq!(buf.len(), 3 * ALIGN_BYTES);
        assert!(buf.as_slice().iter().filter(|&&b| b == 0).count() < ALIGN_BYTES);
    }

    #[test]
    fn invalid_options_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = ProbeOptions { latency_writes: 0, ..ProbeOptions::default() };
        assert!(matches!(probe(dir.path(), &options), Err(TuneError::InvalidOption(_))));
        let options = ProbeOptions { modes: Vec::new(), ..ProbeOptions::default() };
        assert!(matches!(probe(dir.path(), &options), Err(TuneError::InvalidOption(_))));
        assert!(sequential_synced_bandwidth(dir.path(), DurabilityMode::Dsync, 0, 4096).is_err());
    }

    #[test]
    fn filesystem_of_root_is_known() {
        assert!(filesystem_of(Path::new("/")).is_some());
    }
}
