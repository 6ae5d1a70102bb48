//! The control messages of state transfer and their binary codec.
//!
//! Control messages are small: ids, ranges and hashes. The bulk bytes (checkpoint
//! chunks, log records) travel on the engine's data path, identified by the
//! [`Message::Fetch`] that asked for them; the leecher's engine hashes them as they
//! arrive and reports the hash ([`crate::FetchOutcome`]).
//!
//! Encoding ([`dura_core::codec`]'s conventions): a tag byte, then the fields,
//! little-endian; vectors are prefixed by a u32 count, an optional hash by a 0/1 byte.
//!
//! | tag | message | body |
//! |---:|---|---|
//! | 0 | `Query` | round |
//! | 1 | `Status` | round, last_agreement:u64, log_first:u64, count:u32, (agreement_id:u64, content_hash:32)* |
//! | 2 | `HashRequest` | round, checkpoint:u64, count:u32, (after:u64, up_to:u64)* |
//! | 3 | `Hashes` | round, checkpoint:u64, flag, (content_hash:32 if the flag is 1), count:u32, (after:u64, up_to:u64, hash:32)* |
//! | 4 | `Fetch` | round, ticket:u64, want |
//! | 5 | `Unavailable` | round, asked, reason:u8 (0 truncated, 1 not yet, 2 busy) |
//!
//! round = session:u64, round:u32; want = 0, agreement_id:u64 (a checkpoint) or
//! 1, after:u64, up_to:u64 (a log piece); asked = 0, checkpoint:u64 (a hash request)
//! or 1, ticket:u64, want (a fetch).
//!
//! Decoding never panics and allocates nothing beyond its bounds
//! ([`STATUS_CHECKPOINTS_MAX`], [`PIECES_MAX`]); besides the byte-level checks it
//! enforces each message's rules (checkpoints ascending and inside the log's reach,
//! pieces contiguous from the checkpoint up, a hash present exactly when the checkpoint
//! is not the genesis) and reports a broken one as [`TransferError::Invalid`].

use dura_core::codec::{Reader, put_u32, put_u64};
use dura_core::{AGREEMENT_ID_FIRST, AGREEMENT_ID_NONE, AgreementId, HASH_BYTES, Hash};

use crate::TransferError;

/// Most checkpoints a [`Status`] lists (a replica retains two by default).
pub const STATUS_CHECKPOINTS_MAX: usize = 8;

/// Most log pieces one request names: one per replica at most (the CST seeder at
/// position r sends r pieces).
pub const PIECES_MAX: usize = dura_core::REPLICAS_MAX;

const ROUND_BYTES: usize = 8 + 4;
const PIECE_BYTES: usize = 8 + 8;
const CLAIM_BYTES: usize = 8 + HASH_BYTES;

const _: () = assert!(STATUS_CHECKPOINTS_MAX >= 2, "a replica retains two checkpoints");
const _: () = assert!(PIECES_MAX <= u32::MAX as usize);

/// Which transfer a message belongs to: the leecher's session (a number its engine
/// picks per process start) and its round within it (a restart is a new round).
/// Answers echo it, so the answer to an old round is never taken for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoundId {
    /// Chosen by the leecher's engine, different for each leecher it starts.
    pub session: u64,
    /// From 1, one more for each round of the session.
    pub round: u32,
}

/// A range of agreements (`after`, `up_to`]: the batches of agreements `after + 1`
/// through `up_to`. It may be empty (`after == up_to`) when two replicas checkpointed
/// at the same agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Piece {
    /// The agreement before the first batch (the checkpoint the piece continues).
    pub after: AgreementId,
    /// The last agreement of the piece.
    pub up_to: AgreementId,
}

impl Piece {
    /// The piece (`after`, `up_to`]. Panics if `after > up_to`.
    pub fn new(after: AgreementId, up_to: AgreementId) -> Self {
        assert!(after <= up_to, "a piece ({after}, {up_to}] runs backwards");
        Self { after, up_to }
    }

    /// Batches in the piece.
    pub fn len(&self) -> u64 {
        self.up_to - self.after
    }

    /// True for the empty piece.
    pub fn is_empty(&self) -> bool {
        self.after == self.up_to
    }
}

/// A checkpoint a replica holds: the agreement it is at and its content SHA-256 (the
/// hash `dura-snapshot` writes in the header, over service, agreement, engine blob and
/// chunks, equal on every replica with the same state at that agreement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointClaim {
    /// The state after this agreement.
    pub agreement_id: AgreementId,
    /// Its content hash.
    pub content_hash: Hash,
}

/// What a replica holds, as it answers a [`Message::Query`]: step 2's "last executed
/// agreement", plus what lets the leecher order replicas by freshness and check
/// checkpoint bytes before decoding them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The last agreement in its log (executed and logged).
    pub last_agreement: AgreementId,
    /// The first agreement its log still holds (the log holds `log_first..=last`;
    /// `last + 1` when it holds none).
    pub log_first: AgreementId,
    /// Its checkpoints, oldest first, each at most `last_agreement`.
    pub checkpoints: Vec<CheckpointClaim>,
}

impl Status {
    /// Whether the log holds every agreement of `piece`.
    pub fn log_covers(&self, piece: Piece) -> bool {
        self.log_first <= piece.after.saturating_add(1) && piece.up_to <= self.last_agreement
    }

    /// The claimed content hash of the checkpoint at `agreement_id`, if listed.
    pub fn checkpoint_hash(&self, agreement_id: AgreementId) -> Option<Hash> {
        self.checkpoints
            .iter()
            .find(|claim| claim.agreement_id == agreement_id)
            .map(|claim| claim.content_hash)
    }
}

/// What a fetch asks for on the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Want {
    /// The checkpoint at this agreement (its content: engine blob and chunks).
    Checkpoint {
        /// The agreement it is at.
        agreement_id: AgreementId,
    },
    /// The decided batches of a piece, in agreement order.
    Log(Piece),
}

impl Want {
    /// Bytes of the longest encoding (a log piece: tag, after, up_to).
    pub const ENCODED_BYTES_MAX: usize = 1 + PIECE_BYTES;

    /// Appends the encoding (`0, agreement_id:u64` or `1, after:u64, up_to:u64`) to
    /// `w`: the same bytes a [`Message::Fetch`] carries, so the engine's data path can
    /// name a payload without a codec of its own.
    pub fn encode(&self, w: &mut Vec<u8>) {
        match *self {
            Want::Checkpoint { agreement_id } => {
                w.push(0);
                put_u64(w, agreement_id);
            }
            Want::Log(piece) => {
                w.push(1);
                put_piece(w, piece);
            }
        }
    }

    /// Reads one encoding written by [`Want::encode`] from `r` (a piece that runs
    /// backwards is [`TransferError::Invalid`]); the caller decides whether bytes may
    /// follow.
    pub fn decode(r: &mut Reader<'_>) -> Result<Want, TransferError> {
        match r.u8()? {
            0 => Ok(Want::Checkpoint { agreement_id: r.u64()? }),
            1 => Ok(Want::Log(piece(r)?)),
            _ => Err(r.error().into()),
        }
    }
}

const _: () = assert!(Want::ENCODED_BYTES_MAX == 17);

/// What an [`Message::Unavailable`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Asked {
    /// The [`Message::HashRequest`] of this round naming this checkpoint.
    Hashes {
        /// The request's checkpoint.
        checkpoint: AgreementId,
    },
    /// The [`Message::Fetch`] with this ticket.
    Fetch {
        /// The leecher's ticket for the fetch.
        ticket: u64,
        /// What it asked.
        want: Want,
    },
}

/// Why a seeder refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unavailable {
    /// It no longer holds it (the checkpoint was replaced, the log truncated).
    Truncated,
    /// It does not hold it yet (its log ends before the range).
    NotYet,
    /// It serves as many transfers as it allows itself.
    Busy,
}

/// A control message of state transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Leecher to all (step 2): what do you hold?
    Query {
        /// The leecher's round.
        round: RoundId,
    },
    /// Answer to [`Message::Query`].
    Status {
        /// The round asked.
        round: RoundId,
        /// What the replica holds.
        status: Status,
    },
    /// Leecher to a validator (step 6a): the content hash of your checkpoint at
    /// `checkpoint` and the hashes of these log pieces. `pieces` are contiguous, newest
    /// first, and the last starts at `checkpoint`: together (`checkpoint`, target].
    HashRequest {
        /// The leecher's round.
        round: RoundId,
        /// The checkpoint whose hash is asked (0: the genesis, no hash).
        checkpoint: AgreementId,
        /// L_1 .. L_i, newest first.
        pieces: Vec<Piece>,
    },
    /// Answer to [`Message::HashRequest`]: V_i = (HL_1, ..., HL_i, HC_i).
    Hashes {
        /// The round asked.
        round: RoundId,
        /// The checkpoint asked.
        checkpoint: AgreementId,
        /// Its content hash (`None` exactly for the genesis).
        checkpoint_hash: Option<Hash>,
        /// Each piece asked, in the order asked, with its [`crate::piece_hash`].
        pieces: Vec<(Piece, Hash)>,
    },
    /// Leecher to a seeder, on the data path: send this payload.
    Fetch {
        /// The leecher's round.
        round: RoundId,
        /// The leecher's name for this fetch (unique per leecher): the answer's stream
        /// and refusals carry it, and a duplicate is told from a new request by it.
        ticket: u64,
        /// The payload.
        want: Want,
    },
    /// A seeder refuses a [`Message::HashRequest`] or a [`Message::Fetch`].
    Unavailable {
        /// The round asked.
        round: RoundId,
        /// What it refuses.
        asked: Asked,
        /// Why.
        reason: Unavailable,
    },
}

impl Message {
    /// The round the message belongs to.
    pub fn round(&self) -> RoundId {
        match self {
            Message::Query { round }
            | Message::Status { round, .. }
            | Message::HashRequest { round, .. }
            | Message::Hashes { round, .. }
            | Message::Fetch { round, .. }
            | Message::Unavailable { round, .. } => *round,
        }
    }

    /// Appends the encoding to `w`.
    pub fn encode(&self, w: &mut Vec<u8>) {
        match self {
            Message::Query { round } => {
                w.push(0);
                put_round(w, *round);
            }
            Message::Status { round, status } => {
                assert!(status.checkpoints.len() <= STATUS_CHECKPOINTS_MAX, "status too long");
                w.push(1);
                put_round(w, *round);
                put_u64(w, status.last_agreement);
                put_u64(w, status.log_first);
                put_u32(w, status.checkpoints.len() as u32);
                for claim in &status.checkpoints {
                    put_u64(w, claim.agreement_id);
                    w.extend_from_slice(&claim.content_hash);
                }
            }
            Message::HashRequest { round, checkpoint, pieces } => {
                assert!(pieces.len() <= PIECES_MAX, "too many pieces");
                w.push(2);
                put_round(w, *round);
                put_u64(w, *checkpoint);
                put_u32(w, pieces.len() as u32);
                for piece in pieces {
                    put_piece(w, *piece);
                }
            }
            Message::Hashes { round, checkpoint, checkpoint_hash, pieces } => {
                assert!(pieces.len() <= PIECES_MAX, "too many pieces");
                w.push(3);
                put_round(w, *round);
                put_u64(w, *checkpoint);
                match checkpoint_hash {
                    Some(hash) => {
                        w.push(1);
                        w.extend_from_slice(hash);
                    }
                    None => w.push(0),
                }
                put_u32(w, pieces.len() as u32);
                for (piece, hash) in pieces {
                    put_piece(w, *piece);
                    w.extend_from_slice(hash);
                }
            }
            Message::Fetch { round, ticket, want } => {
                w.push(4);
                put_round(w, *round);
                put_u64(w, *ticket);
                put_want(w, *want);
            }
            Message::Unavailable { round, asked, reason } => {
                w.push(5);
                put_round(w, *round);
                match asked {
                    Asked::Hashes { checkpoint } => {
                        w.push(0);
                        put_u64(w, *checkpoint);
                    }
                    Asked::Fetch { ticket, want } => {
                        w.push(1);
                        put_u64(w, *ticket);
                        put_want(w, *want);
                    }
                }
                w.push(match reason {
                    Unavailable::Truncated => 0,
                    Unavailable::NotYet => 1,
                    Unavailable::Busy => 2,
                });
            }
        }
    }

    /// The encoding alone.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one message encoded by [`Message::to_bytes`]; every byte must be used.
    pub fn from_bytes(bytes: &[u8]) -> Result<Message, TransferError> {
        let mut r = Reader::new(bytes, "transfer message");
        let message = match r.u8()? {
            0 => Message::Query { round: round(&mut r)? },
            1 => {
                let round = round(&mut r)?;
                let last_agreement = r.u64()?;
                let log_first = r.u64()?;
                let count = r.len(STATUS_CHECKPOINTS_MAX, CLAIM_BYTES)?;
                let mut checkpoints = Vec::with_capacity(count);
                for _ in 0..count {
                    checkpoints.push(CheckpointClaim {
                        agreement_id: r.u64()?,
                        content_hash: r.array32()?,
                    });
                }
                let status = Status { last_agreement, log_first, checkpoints };
                check_status(&status)?;
                Message::Status { round, status }
            }
            2 => {
                let round = round(&mut r)?;
                let checkpoint = r.u64()?;
                let count = r.len(PIECES_MAX, PIECE_BYTES)?;
                let mut pieces = Vec::with_capacity(count);
                for _ in 0..count {
                    pieces.push(piece(&mut r)?);
                }
                check_pieces("hash request", checkpoint, &pieces)?;
                Message::HashRequest { round, checkpoint, pieces }
            }
            3 => {
                let round = round(&mut r)?;
                let checkpoint = r.u64()?;
                let checkpoint_hash = if r.flag()? { Some(r.array32()?) } else { None };
                if checkpoint_hash.is_some() != (checkpoint != AGREEMENT_ID_NONE) {
                    return Err(invalid(
                        "hashes",
                        "a checkpoint hash exactly when not the genesis",
                    ));
                }
                let count = r.len(PIECES_MAX, PIECE_BYTES + HASH_BYTES)?;
                let mut pieces = Vec::with_capacity(count);
                for _ in 0..count {
                    let piece = piece(&mut r)?;
                    pieces.push((piece, r.array32()?));
                }
                let ranges: Vec<Piece> = pieces.iter().map(|(piece, _)| *piece).collect();
                check_pieces("hashes", checkpoint, &ranges)?;
                Message::Hashes { round, checkpoint, checkpoint_hash, pieces }
            }
            4 => Message::Fetch { round: round(&mut r)?, ticket: r.u64()?, want: want(&mut r)? },
            5 => {
                let round = round(&mut r)?;
                let asked = match r.u8()? {
                    0 => Asked::Hashes { checkpoint: r.u64()? },
                    1 => Asked::Fetch { ticket: r.u64()?, want: want(&mut r)? },
                    _ => return Err(r.error().into()),
                };
                let reason = match r.u8()? {
                    0 => Unavailable::Truncated,
                    1 => Unavailable::NotYet,
                    2 => Unavailable::Busy,
                    _ => return Err(r.error().into()),
                };
                Message::Unavailable { round, asked, reason }
            }
            _ => return Err(r.error().into()),
        };
        r.finish()?;
        Ok(message)
    }
}

/// The rules a [`Status`] keeps: checkpoints strictly ascending, none beyond the last
/// agreement, and a log that starts at agreement 1 or later and at most one past its end.
pub fn check_status(status: &Status) -> Result<(), TransferError> {
    if status.checkpoints.len() > STATUS_CHECKPOINTS_MAX {
        return Err(invalid("status", "too many checkpoints"));
    }
    if status.log_first < AGREEMENT_ID_FIRST
        || status.log_first > status.last_agreement.saturating_add(1)
    {
        return Err(invalid("status", "the log starts at 1..=last+1"));
    }
    let mut previous = AGREEMENT_ID_NONE;
    for claim in &status.checkpoints {
        if claim.agreement_id <= previous || claim.agreement_id > status.last_agreement {
            return Err(invalid("status", "checkpoints ascending, at agreements 1..=last"));
        }
        previous = claim.agreement_id;
    }
    Ok(())
}

/// The rules a list of pieces keeps: at most [`PIECES_MAX`], at least one, each in
/// order, contiguous newest first, the last starting at `checkpoint`.
pub fn check_pieces(
    what: &'static str,
    checkpoint: AgreementId,
    pieces: &[Piece],
) -> Result<(), TransferError> {
    if pieces.is_empty() || pieces.len() > PIECES_MAX {
        return Err(invalid(what, "1..=PIECES_MAX pieces"));
    }
    for pair in pieces.windows(2) {
        if pair[0].after != pair[1].up_to {
            return Err(invalid(what, "pieces contiguous, newest first"));
        }
    }
    if pieces.iter().any(|piece| piece.after > piece.up_to) {
        return Err(invalid(what, "a piece runs backwards"));
    }
    if pieces.last().map(|piece| piece.after) != Some(checkpoint) {
        return Err(invalid(what, "the oldest piece starts at the checkpoint"));
    }
    Ok(())
}

fn invalid(what: &'static str, rule: &'static str) -> TransferError {
    TransferError::Invalid { what, rule }
}

fn put_round(w: &mut Vec<u8>, round: RoundId) {
    put_u64(w, round.session);
    put_u32(w, round.round);
}

fn put_piece(w: &mut Vec<u8>, piece: Piece) {
    put_u64(w, piece.after);
    put_u64(w, piece.up_to);
}

fn put_want(w: &mut Vec<u8>, want: Want) {
    want.encode(w);
}

fn round(r: &mut Reader<'_>) -> Result<RoundId, TransferError> {
    const _: () = assert!(ROUND_BYTES == 12);
    Ok(RoundId { session: r.u64()?, round: r.u32()? })
}

fn piece(r: &mut Reader<'_>) -> Result<Piece, TransferError> {
    let after = r.u64()?;
    let up_to = r.u64()?;
    if after > up_to {
        return Err(invalid("piece", "after <= up_to"));
    }
    Ok(Piece { after, up_to })
}

fn want(r: &mut Reader<'_>) -> Result<Want, TransferError> {
    Want::decode(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dura_core::rng::Rng;

    const ROUND: RoundId = RoundId { session: 7, round: 3 };

    fn samples() -> Vec<Message> {
        let status = Status {
            last_agreement: 90,
            log_first: 41,
            checkpoints: vec![
                CheckpointClaim { agreement_id: 40, content_hash: [4; 32] },
                CheckpointClaim { agreement_id: 80, content_hash: [8; 32] },
            ],
        };
        let pieces = vec![Piece::new(80, 90), Piece::new(60, 80), Piece::new(60, 60)];
        vec![
            Message::Query { round: ROUND },
            Message::Status { round: ROUND, status },
            Message::Status {
                round: ROUND,
                status: Status { last_agreement: 0, log_first: 1, checkpoints: vec![] },
            },
            Message::HashRequest { round: ROUND, checkpoint: 60, pieces: pieces.clone() },
            Message::Hashes {
                round: ROUND,
                checkpoint: 60,
                checkpoint_hash: Some([6; 32]),
                pieces: pieces.iter().map(|piece| (*piece, [piece.after as u8; 32])).collect(),
            },
            Message::Hashes {
                round: ROUND,
                checkpoint: 0,
                checkpoint_hash: None,
                pieces: vec![(Piece::new(0, 5), [1; 32])],
            },
            Message::Fetch { round: ROUND, ticket: 1, want: Want::Checkpoint { agreement_id: 80 } },
            Message::Fetch { round: ROUND, ticket: 2, want: Want::Log(Piece::new(80, 90)) },
            Message::Unavailable {
                round: ROUND,
                asked: Asked::Hashes { checkpoint: 60 },
                reason: Unavailable::Truncated,
            },
            Message::Unavailable {
                round: ROUND,
                asked: Asked::Fetch { ticket: 3, want: Want::Log(Piece::new(1, 2)) },
                reason: Unavailable::Busy,
            },
            Message::Unavailable {
                round: ROUND,
                asked: Asked::Fetch { ticket: 4, want: Want::Checkpoint { agreement_id: 3 } },
                reason: Unavailable::NotYet,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let bytes = message.to_bytes();
            assert_eq!(Message::from_bytes(&bytes), Ok(message.clone()), "{message:?}");
            assert_eq!(message.round(), ROUND);
        }
    }

    #[test]
    fn a_want_round_trips_alone_within_its_bound_and_rejects_a_backward_piece() {
        for want in [Want::Checkpoint { agreement_id: 42 }, Want::Log(Piece::new(7, 9))] {
            let mut bytes = Vec::new();
            want.encode(&mut bytes);
            assert!(bytes.len() <= Want::ENCODED_BYTES_MAX);
            let mut r = Reader::new(&bytes, "want");
            assert_eq!(Want::decode(&mut r), Ok(want));
            assert_eq!(r.remaining(), 0);
        }
        let mut backward = vec![1];
        put_u64(&mut backward, 9);
        put_u64(&mut backward, 7);
        assert!(Want::decode(&mut Reader::new(&backward, "want")).is_err());
        assert!(Want::decode(&mut Reader::new(&[2, 0], "want")).is_err(), "unknown tag");
    }

    #[test]
    fn every_truncation_and_every_trailing_byte_is_an_error() {
        for message in samples() {
            let bytes = message.to_bytes();
            for cut in 0..bytes.len() {
                assert!(Message::from_bytes(&bytes[..cut]).is_err(), "{message:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::from_bytes(&longer).is_err(), "{message:?} with a trailing byte");
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut rng = Rng::new(5);
        let samples = samples();
        for _ in 0..20_000 {
            // Mostly mutations of real messages, so decoding goes deep.
            let mut bytes = samples[rng.below(samples.len() as u64) as usize].to_bytes();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next_u64() as u8;
            }
            if rng.chance(100) {
                let len = rng.below(64) as usize;
                bytes = rng.bytes(len);
            }
            if let Ok(message) = Message::from_bytes(&bytes) {
                // Whatever decodes re-encodes to the same bytes (one encoding each).
                assert_eq!(message.to_bytes(), bytes);
            }
        }
    }

    #[test]
    fn rules_are_checked_after_the_bytes() {
        let bad_status = |last, log_first, ids: &[u64]| Message::Status {
            round: ROUND,
            status: Status {
                last_agreement: last,
                log_first,
                checkpoints: ids
                    .iter()
                    .map(|&agreement_id| CheckpointClaim { agreement_id, content_hash: [0; 32] })
                    .collect(),
            },
        };
        for message in [
            bad_status(10, 0, &[]),     // the log starts at 1 at the earliest
            bad_status(10, 12, &[]),    // ... and at most one past its end
            bad_status(10, 1, &[5, 5]), // checkpoints strictly ascending
            bad_status(10, 1, &[11]),   // none beyond the last agreement
            bad_status(10, 1, &[0]),    // the genesis is not listed
        ] {
            assert!(
                matches!(
                    Message::from_bytes(&message.to_bytes()),
                    Err(TransferError::Invalid { .. })
                ),
                "{message:?}"
            );
        }
        let request = |checkpoint, pieces: Vec<Piece>| Message::HashRequest {
            round: ROUND,
            checkpoint,
            pieces,
        };
        for message in [
            request(5, vec![]),
            request(5, vec![Piece::new(6, 9)]), // not from the checkpoint
            request(5, vec![Piece::new(7, 9), Piece::new(5, 6)]), // a gap
            request(5, vec![Piece::new(5, 6), Piece::new(6, 9)]), // oldest first
            Message::Hashes {
                round: ROUND,
                checkpoint: 5,
                checkpoint_hash: None, // a checkpoint that is not the genesis has a hash
                pieces: vec![(Piece::new(5, 9), [0; 32])],
            },
            Message::Hashes {
                round: ROUND,
                checkpoint: 0,
                checkpoint_hash: Some([0; 32]),
                pieces: vec![(Piece::new(0, 9), [0; 32])],
            },
        ] {
            assert!(
                matches!(
                    Message::from_bytes(&message.to_bytes()),
                    Err(TransferError::Invalid { .. })
                ),
                "{message:?}"
            );
        }
        // A backwards piece is refused at its own field.
        let mut bytes =
            Message::Fetch { round: ROUND, ticket: 5, want: Want::Log(Piece::new(1, 2)) }
                .to_bytes();
        let len = bytes.len();
        bytes[len - 16..len - 8].copy_from_slice(&3u64.to_le_bytes());
        assert!(matches!(Message::from_bytes(&bytes), Err(TransferError::Invalid { .. })));
    }

    #[test]
    fn counts_beyond_their_bound_are_refused_before_allocation() {
        let mut bytes = vec![2];
        put_round(&mut bytes, ROUND);
        put_u64(&mut bytes, 0);
        put_u32(&mut bytes, PIECES_MAX as u32 + 1);
        bytes.extend(std::iter::repeat_n(0, (PIECES_MAX + 1) * PIECE_BYTES));
        assert!(matches!(Message::from_bytes(&bytes), Err(TransferError::Malformed(_))));
        let mut bytes = vec![1];
        put_round(&mut bytes, ROUND);
        put_u64(&mut bytes, 0);
        put_u64(&mut bytes, 1);
        put_u32(&mut bytes, u32::MAX);
        assert!(matches!(Message::from_bytes(&bytes), Err(TransferError::Malformed(_))));
    }
}
