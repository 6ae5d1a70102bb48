//! A plain single-file log (`write` + `fdatasync`), the runtime's fallback
//! [`LogBackend`] when the segmented `dura-wal` is not used.
//!
//! On-disk format of `replica.log`: a sequence of records, each
//! `u32` payload length, `u64` first agreement id, `u64` last agreement id, the payload,
//! and an xxh3-64 checksum over everything before it in the record; little-endian.
//!
//! Recovery reads records from the start. A record that is incomplete or fails its
//! checksum **at the tail** (nothing valid follows) is a torn write: the file is cut
//! there. Because records are appended strictly in order and synced as groups, only the
//! last group can be torn.
//!
//! Contract: after [`LogBackend::sync`] returns, every record appended before it is on
//! disk (`fdatasync`). An I/O error is returned and the replica stops.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::RuntimeError;
use super::durability::LogBackend;

const HEADER_BYTES: usize = 4 + 8 + 8;
const CHECKSUM_BYTES: usize = 8;
/// Largest record payload accepted (on write and on recovery).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes buffered before they are written to the file.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// One record read back by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// First agreement id it holds.
    pub first_agreement_id: u64,
    /// Last agreement id it holds.
    pub last_agreement_id: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The single-file log.
#[derive(Debug)]
pub struct FileLog {
    file: File,
    path: PathBuf,
    buffer: Vec<u8>,
    /// Bytes of the file that are written (not necessarily synced).
    written_bytes: u64,
}

impl FileLog {
    /// Opens (creating if needed) `dir/replica.log`, reads back every valid record and
    /// cuts a torn tail. Returns the log, positioned for appending, and the records.
    pub fn open(dir: &Path) -> Result<(FileLog, Vec<LogRecord>), RuntimeError> {
        let path = dir.join("replica.log");
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |error| RuntimeError::Io { operation, path, error }
        };
        std::fs::create_dir_all(dir).map_err(io("create log directory", dir))?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open log", &path))?;
        if !existed {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync log directory", dir))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("read log", &path))?;
        let (records, at) = parse_records(&bytes);
        if at < bytes.len() {
            log::warn!(
                "{}: cutting a torn tail of {} bytes at offset {at}",
                path.display(),
                bytes.len() - at
            );
            file.set_len(at as u64).map_err(io("cut torn log tail", &path))?;
            file.sync_all().map_err(io("sync log", &path))?;
        }
        file.seek(SeekFrom::Start(at as u64)).map_err(io("seek log", &path))?;
        Ok((
            FileLog {
                file,
                path,
                buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
                written_bytes: at as u64,
            },
            records,
        ))
    }

    fn write_buffer(&mut self) -> Result<(), RuntimeError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buffer).map_err(|error| RuntimeError::Io {
            operation: "write log",
            path: self.path.clone(),
            error,
        })?;
        self.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

/// The valid records at the start of `bytes`, and where they end (the torn tail, if
/// any, starts there).
fn parse_records(bytes: &[u8]) -> (Vec<LogRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some((record, length)) = parse_record(&bytes[at..]) {
        records.push(record);
        at += length;
    }
    (records, at)
}

/// Appends the encoding of one record to `out`.
fn encode_record(out: &mut Vec<u8>, first: u64, last: u64, payload: &[u8]) {
    assert!(first <= last, "record agreement range is ordered");
    assert!(payload.len() <= RECORD_PAYLOAD_BYTES_MAX, "record payload over the bound");
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(payload);
    let checksum = xxh3_64(&out[start..]);
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// Recovery's parse of `replica.log`, for the fuzz target `file_log` of `dura-fuzz`
/// (feature `fuzzing`). Not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `bytes` as recovery does and checks that the records it keeps encode
    /// back to the bytes before the cut; returns their payloads.
    pub fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let (records, at) = super::parse_records(bytes);
        let mut encoded = Vec::with_capacity(at);
        for record in &records {
            let (first, last) = (record.first_agreement_id, record.last_agreement_id);
            super::encode_record(&mut encoded, first, last, &record.payload);
        }
        assert_eq!(encoded, bytes[..at], "the records kept encode back to their bytes");
        records.into_iter().map(|record| record.payload).collect()
    }

    /// A file log holding records of `payloads` (agreements 1, 2, ...), for seeds.
    pub fn encode(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, payload) in (1..).zip(payloads) {
            super::encode_record(&mut out, id, id, payload);
        }
        out
    }
}

fn parse_record(bytes: &[u8]) -> Option<(LogRecord, usize)> {
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return None;
    }
    let length = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    if length > RECORD_PAYLOAD_BYTES_MAX || bytes.len() < HEADER_BYTES + length + CHECKSUM_BYTES {
        return None;
    }
    let body_end = HEADER_BYTES + length;
    let checksum = u64::from_le_bytes(bytes[body_end..body_end + CHECKSUM_BYTES].try_into().ok()?);
    if xxh3_64(&bytes[..body_end]) != checksum {
        return None;
    }
    let first_agreement_id = u64::from_le_bytes(bytes[4..12].try_into().ok()?);
    let last_agreement_id = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
    if first_agreement_id > last_agreement_id {
        return None;
    }
    let record = LogRecord {
        first_agreement_id,
        last_agreement_id,
        payload: bytes[HEADER_BYTES..body_end].to_vec(),
    };
    Some((record, body_end + CHECKSUM_BYTES))
}

impl LogBackend for FileLog {
    fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> Result<(), RuntimeError> {
        encode_record(&mut self.buffer, first, last, payload);
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RuntimeError> {
        self.write_buffer()?;
        self.file.sync_data().map_err(|error| RuntimeError::Io {
            operation: "fdatasync log",
            path: self.path.clone(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_records_come_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut log, records) = FileLog::open(dir.path()).expect("open");
            assert!(records.is_empty());
            log.append(1, 1, b"one").expect("append");
            log.append(2, 3, b"two-three").expect("append");
            log.sync().expect("sync");
        }
        // Simulate a torn write: half a record at the end.
        let path = dir.path().join("replica.log");
        let mut bytes = std::fs::read(&path).expect("read");
        let whole = bytes.len();
        bytes.extend_from_slice(&[9, 0, 0, 0, 4, 0, 0]);
        std::fs::write(&path, &bytes).expect("write");
        let (mut log, records) = FileLog::open(dir.path()).expect("reopen");
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[1],
            LogRecord {
                first_agreement_id: 2,
                last_agreement_id: 3,
                payload: b"two-three".to_vec()
            }
        );
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), whole as u64);
        log.append(4, 4, b"four").expect("append");
        log.sync().expect("sync");
        drop(log);
        let (_, records) = FileLog::open(dir.path()).expect("reopen");
        assert_eq!(records.iter().map(|r| r.last_agreement_id).collect::<Vec<_>>(), vec![1, 3, 4]);
    }

    #[test]
    fn a_flipped_bit_ends_recovery_at_that_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut log, _) = FileLog::open(dir.path()).expect("open");
            log.append(1, 1, b"first").expect("append");
            log.append(2, 2, b"second").expect("append");
            log.sync().expect("sync");
        }
        let path = dir.path().join("replica.log");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - CHECKSUM_BYTES - 2;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let (_, records) = FileLog::open(dir.path()).expect("reopen");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].payload, b"first");
    }
}

/// [`LogBackend`] over the segmented `dura-wal` log (group commit, io_uring or
/// `pwrite`, O_DIRECT|O_DSYNC by default).
///
/// `dura-wal` needs agreement ids to strictly increase from record to record, so the
/// runtime uses it for whole-batch records (`async`, `batched`, `parallel`); `sync`
/// mode's several records per agreement go to [`FileLog`].
#[derive(Debug)]
pub struct WalLog {
    writer: dura_wal::LogWriter,
    dir: std::path::PathBuf,
}

impl WalLog {
    /// Opens the log in `dir` with `options`; returns it and the recovered records.
    pub fn open(
        dir: &Path,
        options: dura_wal::WalOptions,
    ) -> Result<(WalLog, Vec<LogRecord>), RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|error| RuntimeError::Io {
            operation: "create log directory",
            path: dir.to_path_buf(),
            error,
        })?;
        let (writer, recovered) = dura_wal::Wal::open(dir, options)?;
        if let Some(cut) = &recovered.cut {
            log::warn!(
                "wal {}: cut a torn tail at {} offset {}: {}",
                dir.display(),
                cut.path.display(),
                cut.offset,
                cut.reason
            );
        }
        let records = recovered
            .records
            .into_iter()
            .map(|r| LogRecord {
                first_agreement_id: r.first_agreement_id,
                last_agreement_id: r.last_agreement_id,
                payload: r.payload,
            })
            .collect();
        Ok((WalLog { writer, dir: dir.to_path_buf() }, records))
    }
}

impl Drop for WalLog {
    /// Says what the log wrote, for reading a run's figures from the replica's log.
    fn drop(&mut self) {
        log::info!("wal {}: wrote {}", self.dir.display(), self.writer.write_stats());
    }
}

impl LogBackend for WalLog {
    fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> Result<(), RuntimeError> {
        self.writer.append(first, last, payload).map(drop).map_err(RuntimeError::from)
    }

    fn sync(&mut self) -> Result<(), RuntimeError> {
        self.writer.sync().map_err(RuntimeError::from)
    }

    fn durable_notifications(&self) -> Option<crossbeam_channel::Receiver<dura_wal::DurablePoint>> {
        Some(self.writer.durable_notifications())
    }

    fn write_stats(&self) -> Option<dura_wal::WriteStats> {
        Some(self.writer.write_stats())
    }

    fn cut_segment(&mut self, after: u64) -> Result<(), RuntimeError> {
        self.writer.cut_segment(after).map_err(RuntimeError::from)
    }

    fn truncate_below(&mut self, below: u64) -> Result<(), RuntimeError> {
        self.writer.delete_below(below).map(drop).map_err(RuntimeError::from)
    }

    fn pieces(&self) -> Option<std::sync::Arc<dyn super::transfer::LogPieces>> {
        Some(std::sync::Arc::new(WalPieces(self.writer.reader())))
    }
}

/// The decided batches a live `dura-wal` log holds, read back for state transfer.
#[derive(Debug, Clone)]
pub struct WalPieces<S: dura_wal::Storage = dura_wal::FsStorage>(pub dura_wal::LogReader<S>);

impl<S: dura_wal::Storage + Send + Sync> super::transfer::LogPieces for WalPieces<S> {
    fn held(&self) -> Option<(u64, u64)> {
        self.0.held_range()
    }

    fn read(
        &self,
        after: u64,
        up_to: u64,
        bytes_max: u64,
    ) -> std::io::Result<Result<Vec<crate::durability::DecidedBatch>, dura_transfer::Unavailable>>
    {
        use dura_transfer::Unavailable;
        let records = match self.0.read_agreements(after, up_to, bytes_max) {
            Ok(records) => records,
            Err(dura_wal::WalError::NotYetDurable { .. }) => return Ok(Err(Unavailable::NotYet)),
            Err(dura_wal::WalError::Truncated { .. }) => return Ok(Err(Unavailable::Truncated)),
            Err(error @ dura_wal::WalError::RangeTooLarge { .. }) => {
                log::warn!("log piece ({after}, {up_to}] not served: {error}");
                return Ok(Err(Unavailable::Truncated));
            }
            Err(error) => return Err(std::io::Error::other(error.to_string())),
        };
        let batches = crate::durability::record::reassemble(records.into_iter().map(|r| r.payload))
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let batches: Vec<_> = batches
            .into_iter()
            .filter(|batch| batch.agreement_id > after && batch.agreement_id <= up_to)
            .collect();
        // A log restarted from a checkpoint may hold no record of agreements its
        // checkpoint covers: such a gap is served as not held.
        let whole = batches.first().is_some_and(|b| b.agreement_id == after + 1)
            && batches.last().is_some_and(|b| b.agreement_id == up_to)
            && batches.len() as u64 == up_to - after;
        if !whole {
            return Ok(Err(Unavailable::Truncated));
        }
        Ok(Ok(batches))
    }
}
