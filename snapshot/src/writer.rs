//! Writing one checkpoint, streamed chunk by chunk.
//!
//! The file is written under its temporary name: a placeholder header (the real one's
//! length, with zero counts, hash and checksum, so it never validates), then each chunk
//! as it comes. [`CheckpointWriter::finish`] overwrites the header in place with the
//! real one, syncs the file, renames it to its final name, syncs the directory, and only
//! then removes checkpoints beyond the retention. The state is never copied: each chunk
//! is hashed and written from the caller's slice.

use std::sync::atomic::Ordering;

use dura_core::AgreementId;

use crate::dir::{Dir, DirWriter};
use crate::error::{CheckpointError, IoOp, Result};
use crate::format::{
    CHUNK_COUNT_MAX, CheckpointHeader, ContentHasher, ENGINE_BYTES_LIMIT, Frame, PAYLOAD_ALIGN,
    SERVICE_NAME_BYTES_MAX, Section, file_name, pad16, temp_name,
};
use crate::store::{CheckpointStore, Written};

const ZEROS: [u8; PAYLOAD_ALIGN] = [0; PAYLOAD_ALIGN];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Accepting chunks.
    Open,
    /// An error aborted the checkpoint.
    Failed,
    /// Renamed to its final name: nothing of it is temporary any more.
    Done,
}

/// A checkpoint being written; from [`CheckpointStore::begin`].
///
/// Any error aborts the checkpoint: the temporary file is removed if it can be (else the
/// next [`CheckpointStore::open`] removes it) and every later call returns
/// [`CheckpointError::WriterFailed`]. Dropping an unfinished writer aborts it too.
#[derive(Debug)]
pub struct CheckpointWriter<D: Dir> {
    store: CheckpointStore<D>,
    file: Option<D::Writer>,
    state: State,
    temp_name: String,
    header: CheckpointHeader,
    hasher: Option<ContentHasher>,
    /// Bytes written so far (the next chunk's offset), a multiple of 16.
    offset: u64,
}

impl<D: Dir> CheckpointWriter<D> {
    pub(crate) fn begin(
        store: CheckpointStore<D>,
        service: &str,
        agreement_id: AgreementId,
        engine: &[u8],
    ) -> Result<CheckpointWriter<D>> {
        if service.is_empty() || service.len() > SERVICE_NAME_BYTES_MAX {
            return Err(CheckpointError::ServiceName {
                name: service.to_owned(),
                limit: SERVICE_NAME_BYTES_MAX,
            });
        }
        if engine.len() > ENGINE_BYTES_LIMIT {
            return Err(CheckpointError::EngineTooLarge {
                bytes: engine.len(),
                limit: ENGINE_BYTES_LIMIT,
            });
        }
        if store.writing.swap(true, Ordering::AcqRel) {
            return Err(CheckpointError::WriterBusy { dir: store.dir.path().to_path_buf() });
        }
        // From here the writer exists: its Drop clears `writing` on every path.
        let header = CheckpointHeader {
            service: service.to_owned(),
            agreement_id,
            engine: engine.to_vec(),
            chunk_count: 0,
            content_bytes: 0,
            content_sha256: [0; 32],
        };
        let mut writer = CheckpointWriter {
            temp_name: temp_name(agreement_id),
            hasher: Some(ContentHasher::new(service, agreement_id, engine)),
            store,
            file: None,
            state: State::Failed,
            header,
            offset: 0,
        };
        let path = writer.store.dir.file_path(&writer.temp_name);
        let file = writer
            .store
            .dir
            .create(&writer.temp_name)
            .map_err(|e| CheckpointError::io(IoOp::Create, &path, None, e))?;
        writer.file = Some(file);
        writer.state = State::Open;
        let mut placeholder = writer.header.encode();
        // A zero checksum: the placeholder can never pass as a header.
        placeholder[crate::format::HEADER_CHECKSUM_OFFSET..][..8].fill(0);
        writer.write(&placeholder)?;
        Ok(writer)
    }

    /// Appends the next chunk of `section`. Chunks are loaded back in this order.
    pub fn chunk(&mut self, section: Section, payload: &[u8]) -> Result<()> {
        self.check_open()?;
        let limit = self.store.options.chunk_bytes_limit;
        if payload.len() > limit {
            self.abort_after_error();
            return Err(CheckpointError::ChunkTooLarge { bytes: payload.len(), limit });
        }
        if self.header.chunk_count == CHUNK_COUNT_MAX {
            self.abort_after_error();
            return Err(CheckpointError::TooManyChunks { limit: CHUNK_COUNT_MAX });
        }
        let frame = Frame::new(section, payload);
        self.write(&frame.encode())?;
        if !payload.is_empty() {
            self.write(payload)?;
        }
        let padding = (pad16(payload.len() as u64) - payload.len() as u64) as usize;
        if padding > 0 {
            self.write(&ZEROS[..padding])?;
        }
        self.hasher.as_mut().expect("open writer hashes").chunk(section, payload);
        self.header.chunk_count += 1;
        self.header.content_bytes += payload.len() as u64;
        assert!(self.offset.is_multiple_of(PAYLOAD_ALIGN as u64));
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Chunks written so far.
    pub fn chunk_count(&self) -> u64 {
        self.header.chunk_count
    }

    /// Completes the checkpoint: writes the real header, syncs the file, renames it to
    /// `checkpoint-<agreement id, 20 digits>.dck` (atomically replacing a checkpoint of
    /// the same agreement), syncs the directory, then removes checkpoints beyond the
    /// retention: it keeps this one and the `retain - 1` newest older ones (newer ones,
    /// which only a load that skipped them can leave, are left alone), syncing the
    /// directory after each removal.
    ///
    /// An error before the rename leaves the old checkpoints as they were and removes
    /// the temporary file if it can. An error of the directory sync after the rename is
    /// returned: the new checkpoint may or may not survive a crash, the old ones do. An
    /// error of retention is [`CheckpointError::Retention`]: the new one is durable.
    pub fn finish(mut self) -> Result<Written> {
        self.check_open()?;
        let sha = self.hasher.take().expect("open writer hashes").finish();
        self.header.content_sha256 = sha;
        let bytes = self.header.encode();
        let path = self.store.dir.file_path(&self.temp_name);
        let file = self.file.as_mut().expect("open writer has a file");
        if let Err(e) = file.write_at(0, &bytes) {
            self.abort_after_error();
            return Err(CheckpointError::io(IoOp::Write, &path, Some(0), e));
        }
        if let Err(e) = file.sync() {
            self.abort_after_error();
            return Err(CheckpointError::io(IoOp::Sync, &path, None, e));
        }
        drop(self.file.take());
        let agreement_id = self.header.agreement_id;
        let final_name = file_name(agreement_id);
        let dir = self.store.dir.clone();
        if let Err(e) = dir.rename(&self.temp_name, &final_name) {
            self.abort_after_error();
            return Err(CheckpointError::io(IoOp::Rename, &path, None, e));
        }
        self.state = State::Done;
        dir.sync_dir().map_err(|e| CheckpointError::io(IoOp::SyncDir, dir.path(), None, e))?;
        let mut written = Written {
            agreement_id,
            content_sha256: sha,
            file_bytes: self.offset,
            file_name: final_name,
            removed: Vec::new(),
        };
        match self.store.apply_retention(agreement_id) {
            Ok(removed) => {
                written.removed = removed;
                Ok(written)
            }
            Err(source) => Err(CheckpointError::Retention {
                written: Box::new(written),
                source: Box::new(source),
            }),
        }
    }

    /// Abandons the checkpoint and removes its temporary file (best effort, logged).
    pub fn abort(mut self) {
        if self.state == State::Open {
            self.abort_after_error();
        }
    }

    fn check_open(&self) -> Result<()> {
        match self.state {
            State::Open => Ok(()),
            State::Failed | State::Done => Err(CheckpointError::WriterFailed),
        }
    }

    /// Appends `bytes`; aborts the checkpoint on an error.
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("open writer has a file");
        if let Err(e) = file.write_all(bytes) {
            let path = self.store.dir.file_path(&self.temp_name);
            let offset = self.offset;
            self.abort_after_error();
            return Err(CheckpointError::io(IoOp::Write, path, Some(offset), e));
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Marks the writer failed and removes the temporary file if it can. Removal is not
    /// followed by a directory sync: a temporary file that comes back after a crash is
    /// removed by the next open.
    fn abort_after_error(&mut self) {
        assert_eq!(self.state, State::Open, "only an open checkpoint aborts");
        self.state = State::Failed;
        drop(self.file.take());
        if let Err(e) = self.store.dir.remove(&self.temp_name) {
            log::warn!(
                "checkpoints {}: could not remove {} of an aborted checkpoint ({e}); the next open removes it",
                self.store.dir.path().display(),
                self.temp_name
            );
        }
    }
}

impl<D: Dir> Drop for CheckpointWriter<D> {
    fn drop(&mut self) {
        if self.state == State::Open {
            log::warn!(
                "checkpoints {}: checkpoint {} dropped unfinished; aborting it",
                self.store.dir.path().display(),
                self.header.agreement_id
            );
            self.abort_after_error();
        }
        self.store.writing.store(false, Ordering::Release);
    }
}
