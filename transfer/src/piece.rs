//! The canonical hash of a log piece, HL in the paper.
//!
//! CST compares the hash of a piece that one replica sends with the hashes other
//! replicas compute over the same range from their own logs, so every replica must
//! compute the same value from the same decided batches, whatever its log's framing or
//! segment boundaries:
//!
//! ```text
//! HL(after, up_to] = SHA-256("dura-cst-log-piece" || after:u64 || up_to:u64
//!                            || for k in after+1..=up_to: k:u64 || batch_hash(k))
//! ```
//!
//! all little-endian, where `batch_hash(k)` is [`dura_core::Batch::hash`] of agreement
//! k's batch (the value's identity in WRITE and ACCEPT, covering every request and its
//! order). A seeder computes it from its log; the leecher's engine computes it over the
//! batches as they arrive, and [`PieceHasher`] refuses batches out of order or a piece
//! that ends early, so a truncated or reordered piece never hashes at all.

use sha2::{Digest, Sha256};

use dura_core::{AgreementId, Hash};

use crate::TransferError;
use crate::message::Piece;

const DOMAIN: &[u8] = b"dura-cst-log-piece";

/// Hashes a piece batch by batch; the batches must be exactly the piece's agreements,
/// in order.
#[derive(Debug, Clone)]
pub struct PieceHasher {
    piece: Piece,
    /// Agreements pushed so far: the next is `after + 1 + pushed` (counted, so that a
    /// range ending at `u64::MAX` hashes without overflow).
    pushed: u64,
    sha: Sha256,
}

impl PieceHasher {
    /// A hasher for `piece`.
    pub fn new(piece: Piece) -> Self {
        let mut sha = Sha256::new();
        sha.update(DOMAIN);
        sha.update(piece.after.to_le_bytes());
        sha.update(piece.up_to.to_le_bytes());
        Self { piece, pushed: 0, sha }
    }

    /// Adds agreement `agreement_id`'s batch hash; it must be the next agreement.
    pub fn push(
        &mut self,
        agreement_id: AgreementId,
        batch_hash: &Hash,
    ) -> Result<(), TransferError> {
        // `pushed <= up_to - after`, so `after + pushed` never overflows.
        let last = self.piece.after + self.pushed;
        if last == self.piece.up_to || agreement_id != last + 1 {
            return Err(TransferError::PieceOutOfOrder {
                after: self.piece.after,
                up_to: self.piece.up_to,
                expected: last.saturating_add(1),
                got: agreement_id,
            });
        }
        self.sha.update(agreement_id.to_le_bytes());
        self.sha.update(batch_hash);
        self.pushed += 1;
        Ok(())
    }

    /// The piece's hash, if every agreement of it was pushed.
    pub fn finish(self) -> Result<Hash, TransferError> {
        if self.pushed != self.piece.up_to - self.piece.after {
            return Err(TransferError::PieceIncomplete {
                after: self.piece.after,
                up_to: self.piece.up_to,
                last: self.piece.after + self.pushed,
            });
        }
        Ok(self.sha.finalize().into())
    }
}

/// [`PieceHasher`] over `(agreement_id, batch_hash)` pairs.
pub fn piece_hash<'a>(
    piece: Piece,
    batches: impl IntoIterator<Item = (AgreementId, &'a Hash)>,
) -> Result<Hash, TransferError> {
    let mut hasher = PieceHasher::new(piece);
    for (agreement_id, batch_hash) in batches {
        hasher.push(agreement_id, batch_hash)?;
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(piece: Piece) -> Vec<(AgreementId, Hash)> {
        (piece.after + 1..=piece.up_to).map(|k| (k, [k as u8; 32])).collect()
    }

    /// The hasher of a range ending at the largest agreement id counts without
    /// overflow (the fuzz target `transfer_piece` found the decoder's twin of this).
    #[test]
    fn a_piece_ending_at_the_largest_agreement_id_hashes_without_overflow() {
        let max = AgreementId::MAX;
        assert!(piece_hash(Piece::new(max, max), []).is_ok());
        let piece = Piece::new(max - 2, max);
        let good = batches(piece);
        assert!(piece_hash(piece, good.iter().map(|(k, h)| (*k, h))).is_ok());
        let mut longer = good.clone();
        longer.push((max, [0; 32]));
        assert_eq!(
            piece_hash(piece, longer.iter().map(|(k, h)| (*k, h))),
            Err(TransferError::PieceOutOfOrder {
                after: max - 2,
                up_to: max,
                expected: max,
                got: max
            })
        );
        assert_eq!(
            piece_hash(piece, good[..1].iter().map(|(k, h)| (*k, h))),
            Err(TransferError::PieceIncomplete { after: max - 2, up_to: max, last: max - 1 })
        );
    }

    #[test]
    fn a_piece_hashes_only_whole_and_in_order() {
        let piece = Piece::new(10, 14);
        let good = batches(piece);
        let hash = piece_hash(piece, good.iter().map(|(k, h)| (*k, h))).expect("whole");
        // The same batches give the same hash; the range is part of it.
        assert_eq!(piece_hash(piece, good.iter().map(|(k, h)| (*k, h))), Ok(hash));
        let mut shifted = good.clone();
        for (k, _) in &mut shifted {
            *k += 1;
        }
        assert_ne!(piece_hash(Piece::new(11, 15), shifted.iter().map(|(k, h)| (*k, h))), Ok(hash));
        // Truncated: the last batch missing.
        assert_eq!(
            piece_hash(piece, good[..3].iter().map(|(k, h)| (*k, h))),
            Err(TransferError::PieceIncomplete { after: 10, up_to: 14, last: 13 })
        );
        // Reordered agreements.
        let mut reordered = good.clone();
        reordered.swap(1, 2);
        assert_eq!(
            piece_hash(piece, reordered.iter().map(|(k, h)| (*k, h))),
            Err(TransferError::PieceOutOfOrder { after: 10, up_to: 14, expected: 12, got: 13 })
        );
        // Reordered contents under the right agreement ids: hashes, differently.
        let mut swapped = good.clone();
        let first = swapped[0].1;
        swapped[0].1 = swapped[1].1;
        swapped[1].1 = first;
        let other = piece_hash(piece, swapped.iter().map(|(k, h)| (*k, h))).expect("whole");
        assert_ne!(other, hash);
        // One batch too many.
        let mut longer = good.clone();
        longer.push((15, [15; 32]));
        assert!(piece_hash(piece, longer.iter().map(|(k, h)| (*k, h))).is_err());
    }

    #[test]
    fn the_empty_piece_has_a_hash_of_its_own() {
        let empty = Piece::new(7, 7);
        let hash = piece_hash(empty, []).expect("empty is whole");
        assert_ne!(Ok(hash), piece_hash(Piece::new(8, 8), []));
        assert!(piece_hash(empty, [(8, &[0; 32])]).is_err());
    }
}
