//! The checkpoint store: a directory of checkpoint files, their retention, and the
//! validating loader.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use dura_core::{AgreementId, Hash};

use crate::aligned::AlignedBytes;
use crate::dir::{Dir, DirReader};
use crate::error::{BoxError, CheckpointError, Corruption, IoOp, Result};
use crate::format::{
    AGREEMENT_ID_OFFSET, CHUNK_BYTES_LIMIT, CONTENT_SHA256_OFFSET, CheckpointHeader, ContentHasher,
    FRAME_BYTES, Frame, FrameFault, HEADER_FIXED_BYTES, HeaderFault, NameKind, Section,
    classify_name, decode_header, decode_header_bytes, file_name, pad16,
};
use crate::writer::CheckpointWriter;

/// Checkpoints kept by default: the newest and the one before, so a corrupt newest one
/// still leaves a checkpoint to load.
pub const RETAIN_DEFAULT: usize = 2;

/// Most checkpoints a store may be asked to keep.
pub const RETAIN_MAX: usize = 64;

/// Checked chunks a loader's reader thread keeps ready ahead of the visitor at most.
pub const READ_AHEAD_CHUNKS: usize = 2;

/// Options of a [`CheckpointStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Valid checkpoints to keep, `1..=RETAIN_MAX` (see [`CheckpointWriter::finish`]).
    pub retain: usize,
    /// Largest chunk payload written or loaded, `1..=CHUNK_BYTES_LIMIT`. Tests lower it
    /// to exercise the limit with small buffers; a loader refuses a frame over it.
    pub chunk_bytes_limit: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { retain: RETAIN_DEFAULT, chunk_bytes_limit: CHUNK_BYTES_LIMIT }
    }
}

impl StoreOptions {
    fn validate(&self) -> Result<()> {
        if !(1..=RETAIN_MAX).contains(&self.retain) {
            return Err(CheckpointError::InvalidOptions(format!(
                "retain {} is not in 1..={RETAIN_MAX}",
                self.retain
            )));
        }
        if !(1..=CHUNK_BYTES_LIMIT).contains(&self.chunk_bytes_limit) {
            return Err(CheckpointError::InvalidOptions(format!(
                "chunk_bytes_limit {} is not in 1..={CHUNK_BYTES_LIMIT}",
                self.chunk_bytes_limit
            )));
        }
        Ok(())
    }
}

/// A checkpoint in the directory, known by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// The agreement it was taken after.
    pub agreement_id: AgreementId,
    /// Its file name in the directory.
    pub file_name: String,
}

/// What [`CheckpointWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The agreement the checkpoint was taken after.
    pub agreement_id: AgreementId,
    /// SHA-256 of its content (equal on replicas with equal state).
    pub content_sha256: Hash,
    /// Length of the file.
    pub file_bytes: u64,
    /// Name of the file in the directory.
    pub file_name: String,
    /// Older checkpoints removed by retention.
    pub removed: Vec<String>,
}

/// A checkpoint that was fully validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its header (the content hash in it matched the content).
    pub header: CheckpointHeader,
    /// Its file name.
    pub file_name: String,
    /// Length of the file.
    pub file_bytes: u64,
}

/// A checkpoint [`CheckpointStore::load_newest`] tried and could not use.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The agreement from its name.
    pub agreement_id: AgreementId,
    /// Its file name.
    pub file_name: String,
    /// Why (names the file and, for damaged bytes, the offset).
    pub error: CheckpointError,
}

/// The result of [`CheckpointStore::load_newest`].
#[derive(Debug)]
pub struct Loaded<T> {
    /// The checkpoint used.
    pub verified: Verified,
    /// What the caller's builder made of it.
    pub value: T,
    /// Newer checkpoints that failed validation, newest first (to surface as "newest
    /// checkpoint X corrupt at offset Y, used the previous one").
    pub skipped: Vec<Skipped>,
}

/// Receives a checkpoint's chunks during [`CheckpointStore::load_newest`] and builds a
/// value of them (the engine: a fresh service and reply cache).
pub trait ChunkSink {
    /// What is built.
    type Output;

    /// The next chunk; its checksum held. `payload` starts at a 16-aligned address.
    /// Refusing abandons this checkpoint.
    fn chunk(&mut self, section: Section, payload: &[u8]) -> Result<(), BoxError>;

    /// Called only after every chunk and the content hash were validated.
    fn finish(self) -> Result<Self::Output, BoxError>;
}

/// A directory of checkpoints of one replica.
#[derive(Debug, Clone)]
pub struct CheckpointStore<D: Dir> {
    pub(crate) dir: D,
    pub(crate) options: StoreOptions,
    /// Set while a [`CheckpointWriter`] of this store lives.
    pub(crate) writing: Arc<AtomicBool>,
}

impl<D: Dir> CheckpointStore<D> {
    /// Opens the store over `dir`: validates `options`, removes temporary files a crash
    /// left behind (logging each) and syncs the directory if it removed any.
    pub fn open(dir: D, options: StoreOptions) -> Result<CheckpointStore<D>> {
        options.validate()?;
        let names = dir.list().map_err(|e| CheckpointError::io(IoOp::List, dir.path(), None, e))?;
        let mut removed = 0usize;
        for name in names {
            if classify_name(&name) != NameKind::Temp {
                continue;
            }
            log::warn!(
                "checkpoints {}: removing {name}, left by a checkpoint that never finished",
                dir.path().display()
            );
            dir.remove(&name)
                .map_err(|e| CheckpointError::io(IoOp::Remove, dir.file_path(&name), None, e))?;
            removed += 1;
        }
        if removed > 0 {
            dir.sync_dir().map_err(|e| CheckpointError::io(IoOp::SyncDir, dir.path(), None, e))?;
        }
        Ok(CheckpointStore { dir, options, writing: Arc::new(AtomicBool::new(false)) })
    }

    /// The directory.
    pub fn dir(&self) -> &D {
        &self.dir
    }

    /// The options.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// The checkpoints in the directory, newest (highest agreement id) first. Unrelated
    /// files are ignored; a name that looks like a checkpoint's but does not parse is
    /// ignored with a warning.
    pub fn list(&self) -> Result<Vec<CheckpointEntry>> {
        let names = self
            .dir
            .list()
            .map_err(|e| CheckpointError::io(IoOp::List, self.dir.path(), None, e))?;
        let mut entries = Vec::new();
        for name in names {
            match classify_name(&name) {
                NameKind::Checkpoint(agreement_id) => {
                    entries.push(CheckpointEntry { agreement_id, file_name: name })
                }
                NameKind::Malformed => log::warn!(
                    "checkpoints {}: ignoring {name}: not checkpoint-<20 digits>.dck",
                    self.dir.path().display()
                ),
                NameKind::Temp | NameKind::Unrelated => {}
            }
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.agreement_id));
        Ok(entries)
    }

    /// Starts the checkpoint of `service` after `agreement_id`, with the engine's
    /// metadata `engine`. One writer at a time per store ([`CheckpointError::WriterBusy`]).
    pub fn begin(
        &self,
        service: &str,
        agreement_id: AgreementId,
        engine: &[u8],
    ) -> Result<CheckpointWriter<D>> {
        CheckpointWriter::begin(self.clone(), service, agreement_id, engine)
    }

    /// Reads and checks the header of the checkpoint after `agreement_id` (magic,
    /// version, checksum, bounds), nothing else.
    pub fn read_header(&self, agreement_id: AgreementId) -> Result<CheckpointHeader> {
        let opened = self.open_checkpoint(agreement_id, None)?;
        Ok(opened.header)
    }

    /// Validates the whole checkpoint after `agreement_id` of `service` (every check of
    /// a load, the content hash included) without handing out its chunks.
    pub fn verify(&self, agreement_id: AgreementId, service: &str) -> Result<Verified> {
        self.read(agreement_id, service, |_, _| Ok(()))
    }

    /// Reads the checkpoint after `agreement_id` of `service` chunk by chunk: each chunk
    /// is checked, then given to `visit` (its payload 16-aligned). The content hash is
    /// checked at the end: on an error the caller discards what `visit` built.
    pub fn read(
        &self,
        agreement_id: AgreementId,
        service: &str,
        mut visit: impl FnMut(Section, &[u8]) -> Result<(), BoxError>,
    ) -> Result<Verified> {
        let opened = self.open_checkpoint(agreement_id, Some(service))?;
        self.read_chunks(opened, &mut visit)
    }

    /// Loads the newest valid checkpoint of `service`.
    ///
    /// For each checkpoint, newest first, `make` gets its header and returns a fresh
    /// [`ChunkSink`]; the chunks are fed to it as they are validated, and its
    /// [`ChunkSink::finish`] is called once the content hash matched. A checkpoint that
    /// fails (damaged, unreadable, another service, refused by the sink or by `make`)
    /// is logged, reported in [`Loaded::skipped`], and the previous one is tried. A
    /// refusal is [`CheckpointError::Rejected`] at the refused chunk's frame, at offset
    /// 0 when `make` refused the header, at the file's end when `finish` refused.
    ///
    /// `Ok(None)`: there is no checkpoint. [`CheckpointError::AllInvalid`]: there are
    /// some and none is valid. Another error: the directory could not be listed.
    pub fn load_newest<S: ChunkSink>(
        &self,
        service: &str,
        mut make: impl FnMut(&CheckpointHeader) -> Result<S, BoxError>,
    ) -> Result<Option<Loaded<S::Output>>> {
        let entries = self.list()?;
        if entries.is_empty() {
            return Ok(None);
        }
        let mut skipped = Vec::new();
        for entry in entries {
            match self.load_one(&entry, service, &mut make) {
                Ok((verified, value)) => {
                    if !skipped.is_empty() {
                        log::warn!(
                            "checkpoints {}: loaded {} after skipping {} newer one(s)",
                            self.dir.path().display(),
                            entry.file_name,
                            skipped.len()
                        );
                    }
                    return Ok(Some(Loaded { verified, value, skipped }));
                }
                Err(error) => {
                    log::warn!(
                        "checkpoints {}: cannot use {}: {error}",
                        self.dir.path().display(),
                        entry.file_name
                    );
                    skipped.push(Skipped {
                        agreement_id: entry.agreement_id,
                        file_name: entry.file_name,
                        error,
                    });
                }
            }
        }
        Err(CheckpointError::AllInvalid { dir: self.dir.path().to_path_buf(), failures: skipped })
    }

    fn load_one<S: ChunkSink>(
        &self,
        entry: &CheckpointEntry,
        service: &str,
        make: &mut impl FnMut(&CheckpointHeader) -> Result<S, BoxError>,
    ) -> Result<(Verified, S::Output)> {
        assert_eq!(entry.file_name, file_name(entry.agreement_id));
        let opened = self.open_checkpoint(entry.agreement_id, Some(service))?;
        let path = opened.path.clone();
        let mut sink = make(&opened.header).map_err(|source| CheckpointError::Rejected {
            path: path.clone(),
            offset: 0,
            source: Arc::from(source),
        })?;
        let verified =
            self.read_chunks(opened, &mut |section, payload| sink.chunk(section, payload))?;
        let value = sink.finish().map_err(|source| CheckpointError::Rejected {
            path,
            offset: verified.file_bytes,
            source: Arc::from(source),
        })?;
        Ok((verified, value))
    }

    /// Opens the checkpoint after `agreement_id` and validates its header (and the
    /// service, when given).
    fn open_checkpoint(
        &self,
        agreement_id: AgreementId,
        service: Option<&str>,
    ) -> Result<Opened<D::Reader>> {
        let name = &file_name(agreement_id);
        let path = self.dir.file_path(name);
        let mut reader = self
            .dir
            .open_read(name)
            .map_err(|e| CheckpointError::io(IoOp::Open, &path, None, e))?;
        let file_bytes = reader.len_bytes();
        let mut bytes = vec![0u8; HEADER_FIXED_BYTES];
        need(&path, 0, HEADER_FIXED_BYTES as u64, file_bytes)?;
        read_at(&mut reader, &path, 0, &mut bytes)?;
        let header_len =
            decode_header_bytes(&bytes).map_err(|fault| header_corruption(&path, fault))?;
        need(&path, 0, header_len as u64, file_bytes)?;
        bytes.resize(header_len, 0);
        read_at(&mut reader, &path, HEADER_FIXED_BYTES as u64, &mut bytes[HEADER_FIXED_BYTES..])?;
        let header = decode_header(&bytes).map_err(|fault| header_corruption(&path, fault))?;
        assert_eq!(header.encoded_bytes(), header_len);
        if header.agreement_id != agreement_id {
            return Err(CheckpointError::corrupt(
                &path,
                AGREEMENT_ID_OFFSET as u64,
                Corruption::AgreementMismatch { name: agreement_id, header: header.agreement_id },
            ));
        }
        if let Some(expected) = service
            && header.service != expected
        {
            return Err(CheckpointError::ServiceMismatch {
                path,
                expected: expected.to_owned(),
                found: header.service,
            });
        }
        // Every chunk takes at least a frame: a count the file cannot hold is refused
        // before any loop runs on it.
        let frames_max = (file_bytes - header_len as u64) / FRAME_BYTES as u64;
        if header.chunk_count > frames_max {
            return Err(CheckpointError::corrupt(
                &path,
                24,
                Corruption::ChunkCount { chunk_count: header.chunk_count, file_bytes },
            ));
        }
        Ok(Opened { reader, path, file_name: name.to_owned(), file_bytes, header, header_len })
    }

    /// Reads, checks and hands out every chunk, then checks the file's end, the content
    /// length and the content hash.
    /// Reads, checks and hashes the chunks on a reader thread while the caller's
    /// visitor takes the previous ones on this thread (a restart overlaps the disk,
    /// the checksums and the SHA-256 with building the state). At most
    /// [`READ_AHEAD_CHUNKS`] checked chunks wait between the two. The visitor sees each
    /// chunk only after its frame, bounds, padding and checksum held, in file order; the
    /// content hash is compared once every chunk was read.
    fn read_chunks(&self, opened: Opened<D::Reader>, visit: &mut Visitor<'_>) -> Result<Verified> {
        let Opened { mut reader, path, file_name, file_bytes, header, header_len } = opened;
        let limit = self.options.chunk_bytes_limit;
        let (chunks_tx, chunks_rx) =
            std::sync::mpsc::sync_channel::<(Section, AlignedBytes, usize, u64)>(READ_AHEAD_CHUNKS);
        // Buffers go back to the reader for reuse: at most the chunks in flight plus the
        // one being read and the one being visited exist, so the bound is never reached
        // (a buffer that does not fit is dropped).
        let (spare_tx, spare_rx) =
            std::sync::mpsc::sync_channel::<AlignedBytes>(READ_AHEAD_CHUNKS + 2);
        let reader_path = path.clone();
        let header_ref = &header;
        std::thread::scope(|scope| {
            let read = scope.spawn(move || -> Result<()> {
                let path = reader_path;
                let header = header_ref;
                let mut hasher =
                    ContentHasher::new(&header.service, header.agreement_id, &header.engine);
                let mut offset = header_len as u64;
                let mut content_bytes = 0u64;
                for _ in 0..header.chunk_count {
                    need(&path, offset, FRAME_BYTES as u64, file_bytes)?;
                    let mut frame_bytes = [0u8; FRAME_BYTES];
                    read_at(&mut reader, &path, offset, &mut frame_bytes)?;
                    let frame = Frame::decode(&frame_bytes).map_err(|fault| match fault {
                        FrameFault::Section(byte) => {
                            CheckpointError::corrupt(&path, offset, Corruption::Section(byte))
                        }
                        FrameFault::Reserved => {
                            CheckpointError::corrupt(&path, offset + 1, Corruption::FrameReserved)
                        }
                    })?;
                    let payload_bytes = u64::from(frame.payload_bytes);
                    if payload_bytes > limit as u64 {
                        return Err(CheckpointError::corrupt(
                            &path,
                            offset + 4,
                            Corruption::ChunkTooLarge { payload_bytes, limit },
                        ));
                    }
                    let payload_offset = offset + FRAME_BYTES as u64;
                    let padded = pad16(payload_bytes);
                    // Bounded by the limit and by the file before anything is allocated
                    // or read.
                    need(&path, payload_offset, padded, file_bytes)?;
                    let padded = usize::try_from(padded).expect("bounded by the chunk limit");
                    let payload_len = frame.payload_bytes as usize;
                    let mut buffer = spare_rx.try_recv().unwrap_or_default();
                    read_at(&mut reader, &path, payload_offset, buffer.resize(padded))?;
                    let bytes = buffer.as_slice();
                    if let Some(at) = bytes[payload_len..].iter().position(|&b| b != 0) {
                        let at = payload_offset + (payload_len + at) as u64;
                        return Err(CheckpointError::corrupt(&path, at, Corruption::Padding));
                    }
                    let payload = &bytes[..payload_len];
                    let computed = frame.checksum_of(payload);
                    if computed != frame.checksum {
                        return Err(CheckpointError::corrupt(
                            &path,
                            offset,
                            Corruption::ChunkChecksum { stored: frame.checksum, computed },
                        ));
                    }
                    hasher.chunk(frame.section, payload);
                    content_bytes += payload_bytes;
                    if chunks_tx.send((frame.section, buffer, payload_len, offset)).is_err() {
                        // The visitor refused a chunk: its error is the one reported.
                        return Ok(());
                    }
                    offset = payload_offset + padded as u64;
                }
                if offset != file_bytes {
                    return Err(CheckpointError::corrupt(
                        &path,
                        offset,
                        Corruption::TrailingBytes { file_bytes },
                    ));
                }
                if content_bytes != header.content_bytes {
                    return Err(CheckpointError::corrupt(
                        &path,
                        32,
                        Corruption::ContentBytes {
                            header: header.content_bytes,
                            chunks: content_bytes,
                        },
                    ));
                }
                if hasher.finish() != header.content_sha256 {
                    return Err(CheckpointError::corrupt(
                        &path,
                        CONTENT_SHA256_OFFSET as u64,
                        Corruption::ContentHash,
                    ));
                }
                Ok(())
            });
            let mut refused = None;
            for (section, buffer, payload_len, offset) in chunks_rx.iter() {
                if let Err(source) = visit(section, &buffer.as_slice()[..payload_len]) {
                    refused = Some(CheckpointError::Rejected {
                        path: path.clone(),
                        offset,
                        source: Arc::from(source),
                    });
                    break;
                }
                let _ = spare_tx.try_send(buffer);
            }
            // Unblocks a reader waiting to send after a refusal.
            drop(chunks_rx);
            let read = read.join().expect("the checkpoint reader thread panicked");
            match refused {
                Some(error) => Err(error),
                None => read,
            }
        })?;
        Ok(Verified { header, file_name, file_bytes })
    }

    /// Removes checkpoints beyond the retention after `kept` became durable: keeps
    /// `kept` and the `retain - 1` newest older ones, leaves newer ones alone, and syncs
    /// the directory after each removal. Returns the names removed.
    pub(crate) fn apply_retention(&self, kept: AgreementId) -> Result<Vec<String>> {
        let entries = self.list()?;
        assert!(
            entries.iter().any(|entry| entry.agreement_id == kept),
            "retention runs after the new checkpoint is in the directory"
        );
        let older = entries.into_iter().filter(|entry| entry.agreement_id < kept);
        let mut removed = Vec::new();
        for entry in older.skip(self.options.retain - 1) {
            let path = self.dir.file_path(&entry.file_name);
            self.dir
                .remove(&entry.file_name)
                .map_err(|e| CheckpointError::io(IoOp::Remove, &path, None, e))?;
            self.dir
                .sync_dir()
                .map_err(|e| CheckpointError::io(IoOp::SyncDir, self.dir.path(), None, e))?;
            log::debug!("checkpoints {}: removed {}", self.dir.path().display(), entry.file_name);
            removed.push(entry.file_name);
        }
        Ok(removed)
    }
}

/// What the chunk loop hands each validated chunk to.
type Visitor<'a> = dyn FnMut(Section, &[u8]) -> Result<(), BoxError> + 'a;

/// A checkpoint file open for reading, its header validated.
struct Opened<R> {
    reader: R,
    path: std::path::PathBuf,
    file_name: String,
    file_bytes: u64,
    header: CheckpointHeader,
    header_len: usize,
}

/// Fails with [`Corruption::Truncated`] unless `len` bytes at `offset` lie in the file.
fn need(path: &Path, offset: u64, len: u64, file_bytes: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_bytes => Ok(()),
        end => Err(CheckpointError::corrupt(
            path,
            offset,
            Corruption::Truncated { needed: end.unwrap_or(u64::MAX), file_bytes },
        )),
    }
}

fn read_at<R: DirReader>(reader: &mut R, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    reader
        .read_exact_at(offset, buf)
        .map_err(|e| CheckpointError::io(IoOp::Read, path, Some(offset), e))
}

fn header_corruption(path: &Path, fault: HeaderFault) -> CheckpointError {
    let corruption = match fault {
        HeaderFault::Magic => Corruption::Magic,
        HeaderFault::Version(version) => Corruption::Version(version),
        HeaderFault::EngineBytes(bytes) => Corruption::EngineBytes(bytes),
        HeaderFault::Checksum { stored, computed } => {
            Corruption::HeaderChecksum { stored, computed }
        }
        HeaderFault::Field(_, name) => Corruption::HeaderField(name),
    };
    CheckpointError::corrupt(path, fault.offset() as u64, corruption)
}
