//! The seeder's side of state transfer in a running replica: what it answers a
//! recovering replica (the leecher) and the bytes it serves, over the data path
//! ([`super::datapath`]).
//!
//! `dura-transfer`'s [`Seeder`] decides the answers; [`SeederHost`] feeds it what the
//! replica holds (its checkpoint files and the range of its log) and carries out its
//! actions: control answers go back on the same data-path exchange, log pieces are
//! read from the log and hashed ([`dura_transfer::piece_hash`]), checkpoint files and encoded log
//! pieces are streamed by the data server. Streams do not go through the [`Seeder`]'s
//! own bookkeeping: the data server bounds them (`transfer_streams_max`, `Busy`
//! beyond) and answers `Truncated`/`NotYet` from what the host opens.
//!
//! # A log piece on the wire
//!
//! The piece (a, b] is the decided batches of agreements a+1..=b, in order, each as a
//! `u32` little-endian length and the batch's log record ([`encode_batch`], one part):
//! the same bytes whatever the seeder's log framing or segment boundaries, so the
//! leecher's [`decode_piece`] checks the ids are exactly the range and its hash is the
//! [`dura_transfer::piece_hash`] every replica computes from its own log.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dura_core::{AgreementId, Batch, Hash, ReplicaId};
use dura_snapshot::{CheckpointStore, Dir as _, FsDir};
use dura_transfer::{
    CheckpointClaim, Holdings, Message, Piece, PieceHasher, Seeder, SeederAction, SeederConfig,
    SeederEvent, Unavailable, Want,
};

use super::datapath::{CONTROL_ANSWERS_MAX, Opened, StreamRequest, StreamSource};
use crate::durability::DecidedBatch;
use crate::durability::record::{decode_batch, encode_batch};

/// Largest encoded log piece a seeder builds in memory to serve. A piece is at most
/// floor(P/n) requests (the log is cut there), so at the default P and 4 KiB requests
/// about 100 MiB; a bigger one is refused as `Truncated` (with an error line) and the
/// leecher asks elsewhere or for a newer checkpoint.
pub const PIECE_BYTES_MAX: u64 = 1 << 30;

/// Bytes of the length before each batch of a piece.
const PIECE_LENGTH_BYTES: usize = 4;

/// Appends batch `agreement_id` to an encoded piece.
fn push_batch(out: &mut Vec<u8>, agreement_id: AgreementId, batch: &Batch) {
    let start = out.len();
    out.extend_from_slice(&[0u8; PIECE_LENGTH_BYTES]);
    encode_batch(agreement_id, (0, 1), batch, out);
    let length = out.len() - start - PIECE_LENGTH_BYTES;
    let length = u32::try_from(length).expect("a batch record is far below 4 GiB");
    out[start..start + PIECE_LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
}

/// The wire bytes of the piece made of `batches` (consecutive agreements).
pub fn encode_piece(batches: &[DecidedBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    for pair in batches.windows(2) {
        assert_eq!(pair[0].agreement_id + 1, pair[1].agreement_id, "a piece is consecutive");
    }
    for batch in batches {
        push_batch(&mut out, batch.agreement_id, &batch.batch);
    }
    out
}

/// Why a piece's bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The bytes do not frame or decode.
    #[error("log piece ({after}, {up_to}]: malformed at byte {offset}: {what}")]
    Malformed {
        /// First agreement of the range, exclusive.
        after: AgreementId,
        /// Last agreement of the range.
        up_to: AgreementId,
        /// Where.
        offset: usize,
        /// What.
        what: String,
    },
    /// A batch is not the next agreement of the range, or the range ends early.
    #[error("log piece ({after}, {up_to}]: expected agreement {expected}, got {got:?}")]
    OutOfRange {
        /// First agreement of the range, exclusive.
        after: AgreementId,
        /// Last agreement of the range.
        up_to: AgreementId,
        /// The agreement expected next.
        expected: AgreementId,
        /// What came (`None`: the bytes ended).
        got: Option<AgreementId>,
    },
}

/// Decodes the wire bytes of `piece`: exactly its agreements, in order, each once.
pub fn decode_piece(piece: Piece, bytes: &[u8]) -> Result<Vec<DecidedBatch>, PieceError> {
    assert!(piece.after <= piece.up_to, "a piece's range is in order");
    let malformed = |offset: usize, what: String| PieceError::Malformed {
        after: piece.after,
        up_to: piece.up_to,
        offset,
        what,
    };
    let mut batches = Vec::new();
    let mut offset = 0usize;
    // The next agreement: `after + 1`, with no next one past `u64::MAX` (a range that
    // ends there is still decoded, without overflow).
    let mut expected = piece.after.checked_add(1);
    while offset < bytes.len() {
        let Some(length) = bytes.get(offset..offset + PIECE_LENGTH_BYTES) else {
            return Err(malformed(offset, "a length cut short".into()));
        };
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        let body_start = offset + PIECE_LENGTH_BYTES;
        let Some(body) = body_start.checked_add(length).and_then(|end| bytes.get(body_start..end))
        else {
            return Err(malformed(offset, format!("a batch of {length} bytes past the end")));
        };
        let part = decode_batch(body).map_err(|error| malformed(body_start, error.to_string()))?;
        let Some(next) = expected.filter(|&next| next <= piece.up_to) else {
            return Err(PieceError::OutOfRange {
                after: piece.after,
                up_to: piece.up_to,
                expected: piece.up_to.saturating_add(1),
                got: Some(part.agreement_id),
            });
        };
        if part.part_count != 1 || part.agreement_id != next {
            return Err(PieceError::OutOfRange {
                after: piece.after,
                up_to: piece.up_to,
                expected: next,
                got: Some(part.agreement_id),
            });
        }
        batches.push(DecidedBatch::new(part.agreement_id, Arc::new(part.batch)));
        expected = next.checked_add(1);
        offset = body_start + length;
    }
    if batches.len() as u64 != piece.up_to - piece.after {
        return Err(PieceError::OutOfRange {
            after: piece.after,
            up_to: piece.up_to,
            expected: expected.unwrap_or(u64::MAX),
            got: None,
        });
    }
    Ok(batches)
}

/// The canonical hash of `piece` from its batches (`dura_transfer::piece_hash`'s
/// definition, fed with each batch's hash).
pub fn piece_hash_of(piece: Piece, batches: &[DecidedBatch]) -> Result<Hash, PieceError> {
    let mut hasher = PieceHasher::new(piece);
    for batch in batches {
        hasher.push(batch.agreement_id, &batch.batch.hash()).map_err(|_| {
            PieceError::OutOfRange {
                after: piece.after,
                up_to: piece.up_to,
                expected: batch.agreement_id,
                got: Some(batch.agreement_id),
            }
        })?;
    }
    let expected = piece.up_to.saturating_add(1);
    hasher.finish().map_err(|_| PieceError::OutOfRange {
        after: piece.after,
        up_to: piece.up_to,
        expected,
        got: None,
    })
}

/// A replica's decided batches as its log holds them, for serving pieces.
pub trait LogPieces: Send + Sync {
    /// The first agreement the log still holds and the last durable one; `None` when
    /// it holds nothing.
    fn held(&self) -> Option<(AgreementId, AgreementId)>;

    /// The decided batches of (after, up_to], whole and in order, reading at most
    /// `bytes_max` of log; `Truncated` when the log no longer holds the start, `NotYet`
    /// when it does not hold the end yet. Other failures are I/O errors.
    fn read(
        &self,
        after: AgreementId,
        up_to: AgreementId,
        bytes_max: u64,
    ) -> io::Result<Result<Vec<DecidedBatch>, Unavailable>>;
}

/// The batches of `piece` from `log`: none for an empty piece (nothing to read).
pub(crate) fn read_piece(
    log: &dyn LogPieces,
    piece: Piece,
) -> io::Result<Result<Vec<DecidedBatch>, Unavailable>> {
    assert!(piece.after <= piece.up_to, "a piece's range is in order");
    if piece.after == piece.up_to {
        return Ok(Ok(Vec::new()));
    }
    log.read(piece.after, piece.up_to, PIECE_BYTES_MAX)
}

/// A log that serves no pieces (no log, or one that cannot read back): its replica
/// offers its checkpoints only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPieces;

impl LogPieces for NoPieces {
    fn held(&self) -> Option<(AgreementId, AgreementId)> {
        None
    }

    fn read(
        &self,
        _after: AgreementId,
        _up_to: AgreementId,
        _bytes_max: u64,
    ) -> io::Result<Result<Vec<DecidedBatch>, Unavailable>> {
        Ok(Err(Unavailable::Truncated))
    }
}

/// A Byzantine seeder for tests: streams what the source opens with one byte flipped
/// in the middle (a checkpoint file read whole first), answers control messages
/// faithfully.
#[cfg(feature = "fault-hooks")]
pub struct CorruptingSource(pub Arc<dyn StreamSource>);

#[cfg(feature = "fault-hooks")]
impl std::fmt::Debug for CorruptingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CorruptingSource")
    }
}

#[cfg(feature = "fault-hooks")]
impl StreamSource for CorruptingSource {
    fn open(&self, request: &StreamRequest) -> io::Result<Opened> {
        let mut bytes = match self.0.open(request)? {
            Opened::File { file, start, len } => {
                use std::os::unix::fs::FileExt as _;
                let mut bytes = vec![0u8; usize::try_from(len).expect("a test file")];
                file.read_exact_at(&mut bytes, start)?;
                bytes
            }
            Opened::Memory(bytes) => bytes.to_vec(),
            unavailable => return Ok(unavailable),
        };
        if !bytes.is_empty() {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
        }
        Ok(Opened::Memory(Arc::from(bytes)))
    }

    fn control(&self, from: ReplicaId, message: Message) -> Option<Vec<Message>> {
        self.0.control(from, message)
    }

    fn member_report(&self) -> Option<Vec<u8>> {
        self.0.member_report()
    }
}

/// What a replica holds for state transfer: its log's range and its checkpoints with
/// their content hashes (read from each file's validated header; a file removed
/// meanwhile by retention, or damaged, is left out). The runtime's seeder and the
/// simulator's share it.
pub(crate) fn holdings_of<D: dura_snapshot::Dir>(
    me: ReplicaId,
    store: &CheckpointStore<D>,
    log: &dyn LogPieces,
) -> Holdings {
    let mut checkpoints = Vec::new();
    match store.list() {
        Ok(entries) => {
            for entry in entries {
                match store.read_header(entry.agreement_id) {
                    Ok(header) => checkpoints.push(CheckpointClaim {
                        agreement_id: entry.agreement_id,
                        content_hash: header.content_sha256,
                    }),
                    Err(error) => log::debug!(
                        "replica {}: checkpoint {} not offered: {error}",
                        me,
                        entry.file_name
                    ),
                }
            }
        }
        Err(error) => log::warn!("replica {}: listing checkpoints: {error}", me),
    }
    checkpoints.sort_by_key(|claim| claim.agreement_id);
    let (log_first, last_agreement) = match log.held() {
        Some((first, last)) => (first, last),
        None => {
            let newest = checkpoints.last().map_or(0, |claim| claim.agreement_id);
            (newest + 1, newest)
        }
    };
    // The state reaches at least the newest checkpoint even if the log was cut
    // below it.
    let last_agreement =
        last_agreement.max(checkpoints.last().map_or(0, |claim| claim.agreement_id));
    Holdings { last_agreement, log_first: log_first.min(last_agreement + 1), checkpoints }
}

/// The hashes of `pieces` from the log, in order; `Err` when the log does not hold
/// one of them.
pub(crate) fn hash_pieces_of(
    me: ReplicaId,
    log: &dyn LogPieces,
    pieces: &[Piece],
) -> Result<Vec<Hash>, Unavailable> {
    let mut hashes = Vec::with_capacity(pieces.len());
    for &piece in pieces {
        let batches = match read_piece(log, piece) {
            Ok(Ok(batches)) => batches,
            Ok(Err(reason)) => return Err(reason),
            Err(error) => {
                log::error!("replica {}: reading log piece {piece:?}: {error}", me);
                return Err(Unavailable::Truncated);
            }
        };
        match piece_hash_of(piece, &batches) {
            Ok(hash) => hashes.push(hash),
            Err(error) => {
                log::error!("replica {}: its own log piece does not hash: {error}", me);
                return Err(Unavailable::Truncated);
            }
        }
    }
    Ok(hashes)
}

/// Serves state transfer from a replica's checkpoints and log (see the module docs).
pub struct SeederHost {
    me: ReplicaId,
    seeder: Mutex<Seeder>,
    checkpoints: CheckpointStore<FsDir>,
    checkpoints_dir: PathBuf,
    log: Arc<dyn LogPieces>,
    /// The replica's membership, for the member exchange (none: refused).
    member: Option<Arc<super::membership::MemberState>>,
}

impl std::fmt::Debug for SeederHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeederHost")
            .field("me", &self.me)
            .field("checkpoints_dir", &self.checkpoints_dir)
            .finish_non_exhaustive()
    }
}

impl SeederHost {
    /// Replica `me` of `n`, serving the checkpoints of `checkpoints` and the batches of
    /// `log`.
    pub fn new(
        n: usize,
        me: ReplicaId,
        checkpoints: CheckpointStore<FsDir>,
        log: Arc<dyn LogPieces>,
    ) -> Result<SeederHost, dura_transfer::TransferError> {
        let checkpoints_dir = checkpoints.dir().path().to_path_buf();
        let seeder = Seeder::new(SeederConfig::new(n, me), Holdings::empty())?;
        Ok(SeederHost {
            me,
            seeder: Mutex::new(seeder),
            checkpoints,
            checkpoints_dir,
            log,
            member: None,
        })
    }

    /// Answers the member exchange from `member` (with the last agreement it holds).
    pub fn with_member(mut self, member: Arc<super::membership::MemberState>) -> SeederHost {
        self.member = Some(member);
        self
    }

    /// What the replica holds now: its log's range and its checkpoints with their
    /// content hashes (read from each file's validated header; a file removed meanwhile
    /// by retention, or damaged, is left out).
    pub fn holdings(&self) -> Holdings {
        holdings_of(self.me, &self.checkpoints, self.log.as_ref())
    }

    /// The hashes of `pieces` from the log, in order; `Err` when the log does not hold
    /// one of them.
    fn hash_pieces(&self, pieces: &[Piece]) -> Result<Vec<Hash>, Unavailable> {
        hash_pieces_of(self.me, self.log.as_ref(), pieces)
    }
}

impl StreamSource for SeederHost {
    fn open(&self, request: &StreamRequest) -> io::Result<Opened> {
        match request.want {
            Want::Checkpoint { agreement_id } => {
                let name = dura_snapshot::format::file_name(agreement_id);
                match std::fs::File::open(self.checkpoints_dir.join(&name)) {
                    Ok(file) => {
                        let len = file.metadata()?.len();
                        Ok(Opened::File { file, start: 0, len })
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        Ok(Opened::Unavailable(Unavailable::Truncated))
                    }
                    Err(error) => Err(error),
                }
            }
            Want::Log(piece) => match read_piece(self.log.as_ref(), piece)? {
                Ok(batches) => Ok(Opened::Memory(Arc::from(encode_piece(&batches)))),
                Err(reason) => Ok(Opened::Unavailable(reason)),
            },
        }
    }

    fn member_report(&self) -> Option<Vec<u8>> {
        let member = self.member.as_ref()?;
        Some(member.report(self.holdings().last_agreement).encode())
    }

    fn control(&self, from: ReplicaId, message: Message) -> Option<Vec<Message>> {
        let holdings = self.holdings();
        let mut seeder = self.seeder.lock().expect("seeder lock poisoned");
        let mut actions = Vec::new();
        seeder.handle(SeederEvent::Holdings(holdings), &mut actions);
        seeder.handle(SeederEvent::Message { from, msg: message }, &mut actions);
        let mut answers = Vec::new();
        // Hash jobs answer at once: each is a bounded read of the log (pieces are at
        // most `PIECES_MAX`, each at most `PIECE_BYTES_MAX`).
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions.drain(..) {
                match action {
                    SeederAction::Send { to, msg } => {
                        if to == from && answers.len() < CONTROL_ANSWERS_MAX {
                            answers.push(msg);
                        } else {
                            log::warn!(
                                "replica {}: dropped a transfer message for {to}: {msg:?}",
                                self.me
                            );
                        }
                    }
                    SeederAction::HashPieces { job, pieces } => {
                        let result = self.hash_pieces(&pieces);
                        seeder.handle(SeederEvent::PiecesHashed { job, result }, &mut next);
                    }
                    SeederAction::Serve { job, .. } => {
                        // Streams go through the data server, not the control exchange.
                        seeder.handle(SeederEvent::ServeEnded { job }, &mut next);
                    }
                }
            }
            actions = next;
        }
        Some(answers)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use dura_core::KeyRing;
    use dura_snapshot::StoreOptions;
    use dura_transfer::{RoundId, piece_hash};

    use super::*;
    use crate::protocol::ClientRequest;
    use crate::runtime::datapath::{
        DataServer, DataServerConfig, FetchOptions, FetchRequest, MonotonicClock, StreamOutcome,
        control_call, fetch,
    };
    use crate::service::Executor;
    use crate::service::Service as _;
    use crate::sim::kv::KvModel;

    const ROUND: RoundId = RoundId { session: 3, round: 1 };

    fn batch(id: AgreementId) -> DecidedBatch {
        let requests = (0..(id % 3) + 1)
            .map(|i| ClientRequest {
                client_id: id * 10 + i,
                sequence: 1,
                operation: vec![id as u8, i as u8],
                authenticator: vec![[id as u8; 32]],
            })
            .collect();
        DecidedBatch::new(id, Arc::new(Batch { timestamp_ms: 0, requests }))
    }

    /// A log holding agreements `first..=last`, in memory.
    struct MemoryLog {
        batches: Vec<DecidedBatch>,
    }

    impl LogPieces for MemoryLog {
        fn held(&self) -> Option<(AgreementId, AgreementId)> {
            Some((self.batches.first()?.agreement_id, self.batches.last()?.agreement_id))
        }

        fn read(
            &self,
            after: AgreementId,
            up_to: AgreementId,
            _bytes_max: u64,
        ) -> io::Result<Result<Vec<DecidedBatch>, Unavailable>> {
            let Some((first, last)) = self.held() else {
                return Ok(Err(Unavailable::NotYet));
            };
            if up_to > last {
                return Ok(Err(Unavailable::NotYet));
            }
            if after + 1 < first {
                return Ok(Err(Unavailable::Truncated));
            }
            Ok(Ok(self
                .batches
                .iter()
                .filter(|b| b.agreement_id > after && b.agreement_id <= up_to)
                .cloned()
                .collect()))
        }
    }

    /// Found by the fuzz target `transfer_piece` (seed 1, input 2884: the piece
    /// (u64::MAX, u64::MAX] and the bytes `00 02 00 00`): computing the agreement after
    /// `after` overflowed (a panic with overflow checks on). Ranges that end at the
    /// largest agreement id decode and hash without overflow now.
    #[test]
    fn a_piece_at_the_largest_agreement_id_decodes_without_overflow() {
        let max = u64::MAX;
        let empty = Piece { after: max, up_to: max };
        assert!(matches!(
            decode_piece(empty, &[0x00, 0x02, 0x00, 0x00]),
            Err(PieceError::Malformed { offset: 0, .. })
        ));
        assert_eq!(decode_piece(empty, &[]), Ok(vec![]));
        let last = vec![DecidedBatch::new(max, batch(7).batch)];
        let bytes = encode_piece(&last);
        assert!(matches!(
            decode_piece(empty, &bytes),
            Err(PieceError::OutOfRange { expected: u64::MAX, got: Some(u64::MAX), .. })
        ));
        let piece = Piece { after: max - 1, up_to: max };
        assert_eq!(decode_piece(piece, &bytes).expect("decodes"), last);
        let hash = piece_hash_of(piece, &last).expect("hashes");
        assert_eq!(piece_hash(piece, [(max, &last[0].batch.hash())]), Ok(hash));
        assert!(piece_hash_of(empty, &[]).is_ok());
    }

    #[test]
    fn a_piece_decodes_to_exactly_its_batches_and_hashes_as_every_replica_does() {
        let batches: Vec<DecidedBatch> = (5..=9).map(batch).collect();
        let piece = Piece { after: 4, up_to: 9 };
        let bytes = encode_piece(&batches);
        assert_eq!(decode_piece(piece, &bytes).expect("decodes"), batches);
        let hashes: Vec<Hash> = batches.iter().map(|b| b.batch.hash()).collect();
        let expected = piece_hash(piece, (5..=9).zip(hashes.iter())).expect("hash");
        assert_eq!(piece_hash_of(piece, &batches).expect("hash"), expected);
        // Cut anywhere: never decodes.
        for cut in 0..bytes.len() {
            assert!(decode_piece(piece, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A wider or narrower range than the bytes: rejected.
        assert!(matches!(
            decode_piece(Piece { after: 4, up_to: 10 }, &bytes),
            Err(PieceError::OutOfRange { expected: 10, got: None, .. })
        ));
        assert!(matches!(
            decode_piece(Piece { after: 4, up_to: 8 }, &bytes),
            Err(PieceError::OutOfRange { got: Some(9), .. })
        ));
        // Reordered: rejected.
        let mut swapped = batches.clone();
        swapped.swap(1, 2);
        let mut reordered = Vec::new();
        for b in &swapped {
            push_batch(&mut reordered, b.agreement_id, &b.batch);
        }
        assert!(decode_piece(piece, &reordered).is_err());
        // Every flipped byte is caught by the decoder or by the hash.
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            if let Ok(decoded) = decode_piece(piece, &flipped) {
                assert_ne!(piece_hash_of(piece, &decoded).expect("hash"), expected, "byte {at}");
            }
        }
    }

    fn host_with_checkpoint(dir: &std::path::Path, me: ReplicaId) -> (SeederHost, Hash) {
        let store = CheckpointStore::open(FsDir::new(dir).expect("dir"), StoreOptions::default())
            .expect("store");
        let executor = Executor::new(KvModel::default());
        let written =
            crate::checkpoint::write_checkpoint(&store, KvModel::NAME, 10, 12, &executor.view())
                .expect("write");
        let log = Arc::new(MemoryLog { batches: (6..=20).map(batch).collect() });
        let host = SeederHost::new(4, me, store, log).expect("host");
        (host, written.content_sha256)
    }

    #[test]
    fn a_seeder_host_answers_status_and_hashes_from_its_checkpoints_and_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (host, content_hash) = host_with_checkpoint(tmp.path(), 1);
        let holdings = host.holdings();
        assert_eq!((holdings.log_first, holdings.last_agreement), (6, 20));
        assert_eq!(holdings.checkpoints, vec![CheckpointClaim { agreement_id: 10, content_hash }]);
        let answers = host.control(0, Message::Query { round: ROUND }).expect("a seeder answers");
        assert!(
            matches!(answers.as_slice(), [Message::Status { round, status }]
                if *round == ROUND && status.last_agreement == 20),
            "{answers:?}"
        );
        let pieces = vec![Piece { after: 15, up_to: 20 }, Piece { after: 10, up_to: 15 }];
        let answers = host
            .control(
                0,
                Message::HashRequest { round: ROUND, checkpoint: 10, pieces: pieces.clone() },
            )
            .expect("a seeder answers");
        let [Message::Hashes { checkpoint: 10, checkpoint_hash, pieces: hashed, .. }] =
            answers.as_slice()
        else {
            panic!("{answers:?}");
        };
        assert_eq!(*checkpoint_hash, Some(content_hash));
        for (piece, hash) in hashed {
            let batches: Vec<DecidedBatch> = (piece.after + 1..=piece.up_to).map(batch).collect();
            assert_eq!(*hash, piece_hash_of(*piece, &batches).expect("hash"));
        }
        assert_eq!(hashed.iter().map(|(p, _)| *p).collect::<Vec<_>>(), pieces);
    }

    #[test]
    fn a_seeder_host_answers_the_member_exchange_with_its_standing_and_regency_only() {
        use crate::runtime::datapath::member_call;
        use crate::runtime::membership::{MemberState, PeerReport, Standing};
        use crate::runtime::metrics::ReplicaMetrics;

        let tmp = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::new([9; 32], 4);
        let metrics = Arc::new(ReplicaMetrics::default());
        let member = Arc::new(MemberState::new(Standing::Lost, metrics.clone()));
        let serve = |host: SeederHost| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let config = DataServerConfig { me: 0, bytes_per_s_max: 1 << 30, streams_max: 4 };
            DataServer::start(
                listener,
                config,
                &ring.replica_keys(0),
                Arc::new(host),
                Arc::new(MonotonicClock::new()),
            )
            .expect("server")
        };
        let (host, _) = host_with_checkpoint(tmp.path(), 0);
        let mut server = serve(host.with_member(member.clone()));
        let link_key = *ring.replica_keys(2).link(0).expect("link");
        let ask = |addr| {
            member_call(addr, 2, 0, &link_key, Duration::from_secs(5), None)
                .map(|bytes| PeerReport::decode(&bytes).expect("a report"))
        };
        // Starting, its state lost: no regency (it does not serve).
        metrics.record_order_state(0, 5, false, false);
        let report = ask(server.local_addr()).expect("answers");
        assert_eq!(
            report,
            PeerReport {
                standing: Standing::Lost,
                serving: false,
                last_agreement: 20,
                regency: None
            }
        );
        // Serving, not recovering: its regency; recovering: none.
        member.set_standing(Standing::Member);
        member.set_serving();
        assert_eq!(ask(server.local_addr()).expect("answers").regency, Some(5));
        metrics.record_order_state(0, 6, false, true);
        assert_eq!(ask(server.local_addr()).expect("answers").regency, None);
        // A key the server does not share is refused.
        let stranger = *KeyRing::new([8; 32], 4).replica_keys(2).link(0).expect("link");
        assert!(
            member_call(server.local_addr(), 2, 0, &stranger, Duration::from_secs(5), None)
                .is_err()
        );
        server.stop();
        // A host without membership refuses the exchange.
        let other = tempfile::tempdir().expect("tempdir");
        let (host, _) = host_with_checkpoint(other.path(), 0);
        let mut server = serve(host);
        assert!(ask(server.local_addr()).is_err());
        server.stop();
    }

    #[test]
    fn a_seeder_host_serves_its_checkpoint_file_and_pieces_over_the_data_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (host, content_hash) = host_with_checkpoint(tmp.path(), 0);
        let ring = KeyRing::new([9; 32], 4);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        // Streams enough that a request never meets the slot of one whose server thread
        // is still ending (`Busy` has its own test in the data path's).
        let config = DataServerConfig { me: 0, bytes_per_s_max: 1 << 30, streams_max: 16 };
        let mut server = DataServer::start(
            listener,
            config,
            &ring.replica_keys(0),
            Arc::new(host),
            Arc::new(MonotonicClock::new()),
        )
        .expect("server");
        let link_key = *ring.replica_keys(2).link(0).expect("link");
        let answers = control_call(
            server.local_addr(),
            2,
            0,
            &link_key,
            &Message::Query { round: ROUND },
            Duration::from_secs(5),
        )
        .expect("status");
        assert_eq!(answers.len(), 1);
        let request = |want, ticket| FetchRequest {
            seeder: 0,
            addr: server.local_addr(),
            me: 2,
            link_key,
            round: ROUND,
            ticket,
            want,
            offset: 0,
            tls: None,
        };
        let stop = AtomicBool::new(false);
        let fetch_all = |request: &FetchRequest| {
            let mut bytes = Vec::new();
            let outcome = fetch(
                request,
                &FetchOptions::default(),
                &mut |chunk| {
                    bytes.extend_from_slice(chunk);
                    Ok(())
                },
                &mut |_| {},
                &stop,
            );
            (outcome, bytes)
        };
        // The checkpoint: its bytes, put in another directory, validate to the claim
        // before anything decodes them.
        let (outcome, bytes) = fetch_all(&request(Want::Checkpoint { agreement_id: 10 }, 1));
        assert!(matches!(outcome, StreamOutcome::Done { .. }), "{outcome:?}");
        let leecher = tempfile::tempdir().expect("tempdir");
        std::fs::write(leecher.path().join(dura_snapshot::format::file_name(10)), &bytes)
            .expect("write");
        let store = CheckpointStore::open(
            FsDir::new(leecher.path()).expect("dir"),
            StoreOptions::default(),
        )
        .expect("store");
        let verified = store.verify(10, KvModel::NAME).expect("valid");
        assert_eq!(verified.header.content_sha256, content_hash);
        // A piece: exactly its batches.
        let piece = Piece { after: 12, up_to: 17 };
        let (outcome, bytes) = fetch_all(&request(Want::Log(piece), 2));
        assert!(matches!(outcome, StreamOutcome::Done { .. }), "{outcome:?}");
        let expected: Vec<DecidedBatch> = (13..=17).map(batch).collect();
        assert_eq!(decode_piece(piece, &bytes).expect("decodes"), expected);
        // What it does not hold.
        let (outcome, _) = fetch_all(&request(Want::Checkpoint { agreement_id: 4 }, 3));
        assert!(
            matches!(outcome, StreamOutcome::Unavailable(Unavailable::Truncated)),
            "{outcome:?}"
        );
        let (outcome, _) = fetch_all(&request(Want::Log(Piece { after: 2, up_to: 9 }), 4));
        assert!(
            matches!(outcome, StreamOutcome::Unavailable(Unavailable::Truncated)),
            "{outcome:?}"
        );
        let (outcome, _) = fetch_all(&request(Want::Log(Piece { after: 18, up_to: 25 }), 5));
        assert!(matches!(outcome, StreamOutcome::Unavailable(Unavailable::NotYet)), "{outcome:?}");
        server.stop();
    }
}
