//! Damaged checkpoint files: every flipped byte and every truncation is caught with a
//! typed error and an offset, and loading falls back to the previous checkpoint.

mod common;

use common::{Chunks, SERVICE, chunks_for, load, write_standard};
use dura_snapshot::format::{FRAME_BYTES, file_name, header_bytes, pad16};
use dura_snapshot::sim::SimDir;
use dura_snapshot::{CheckpointError, CheckpointStore, Corruption, StoreOptions};

/// A store holding the checkpoints after agreements 5 (older) and 10 (newest).
fn two_checkpoints(seed: u64) -> (SimDir, CheckpointStore<SimDir>, Vec<u8>) {
    let dir = SimDir::new(seed);
    let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("open");
    write_standard(&store, 5).expect("write 5");
    write_standard(&store, 10).expect("write 10");
    let bytes = dir.file_bytes(&file_name(10));
    (dir, store, bytes)
}

/// Frame offsets of the standard chunks of `agreement_id`.
fn frame_offsets(agreement_id: u64) -> Vec<(u64, u64)> {
    let engine_len = common::engine_for(agreement_id).len();
    let mut offset = header_bytes(engine_len) as u64;
    let mut frames = Vec::new();
    for (_, payload) in chunks_for(agreement_id) {
        let end = offset + FRAME_BYTES as u64 + pad16(payload.len() as u64);
        frames.push((offset, end));
        offset = end;
    }
    frames
}

/// Checks that the damaged newest checkpoint is refused with an offset inside the file,
/// and that loading falls back to the older one and reports the newest.
fn assert_detected(dir: &SimDir, store: &CheckpointStore<SimDir>, damaged: Vec<u8>, what: &str) {
    let file_len = damaged.len() as u64;
    dir.set_file_bytes(&file_name(10), damaged);
    let error = store.verify(10, SERVICE).expect_err(what);
    assert!(error.corruption().is_some(), "{what}: not a corruption error: {error}");
    let offset = error.offset().expect("an offset");
    assert!(offset <= file_len, "{what}: offset {offset} past the file ({file_len})");
    let message = error.to_string();
    assert!(message.contains(&file_name(10)) && message.contains("offset"), "{message}");

    let loaded = load(store).expect("load").expect("the previous checkpoint");
    assert_eq!(loaded.verified.header.agreement_id, 5, "{what}");
    assert_eq!(loaded.value, chunks_for(5) as Chunks);
    assert_eq!(loaded.skipped.len(), 1, "{what}");
    assert_eq!(loaded.skipped[0].agreement_id, 10);
    assert_eq!(loaded.skipped[0].error.offset(), Some(offset));
}

#[test]
fn every_flipped_byte_is_detected_and_the_previous_checkpoint_loads() {
    let (dir, store, original) = two_checkpoints(1);
    let frames = frame_offsets(10);
    for offset in 0..original.len() {
        for xor in [0x01u8, 0x80, 0xff] {
            let mut damaged = original.clone();
            damaged[offset] ^= xor;
            let what = format!("byte {offset} ^ {xor:#04x}");
            assert_detected(&dir, &store, damaged, &what);
            // A damaged payload byte is blamed on its own chunk's frame.
            let error = store.verify(10, SERVICE).expect_err("damaged");
            if let Some(&(frame, _)) = frames
                .iter()
                .find(|&&(frame, end)| (frame + FRAME_BYTES as u64..end).contains(&(offset as u64)))
            {
                let at = error.offset().expect("offset");
                assert!(at >= frame && at <= offset as u64, "{what}: blamed {at}, frame {frame}");
            }
        }
    }
    dir.set_file_bytes(&file_name(10), original);
    assert_eq!(load(&store).expect("load").expect("some").verified.header.agreement_id, 10);
}

#[test]
fn every_truncation_and_an_extension_is_detected() {
    let (dir, store, original) = two_checkpoints(2);
    for len in 0..original.len() {
        let what = format!("truncated to {len}");
        assert_detected(&dir, &store, original[..len].to_vec(), &what);
        let error = store.verify(10, SERVICE).expect_err("truncated");
        assert!(
            matches!(
                error.corruption(),
                Some(Corruption::Truncated { .. } | Corruption::ChunkCount { .. })
            ),
            "{what}: {error}"
        );
    }
    let mut longer = original.clone();
    longer.extend_from_slice(&[0; 16]);
    assert_detected(&dir, &store, longer, "extended");
    let error = store.verify(10, SERVICE).expect_err("extended");
    assert_eq!(
        error.corruption(),
        Some(Corruption::TrailingBytes { file_bytes: original.len() as u64 + 16 })
    );
    assert_eq!(error.offset(), Some(original.len() as u64));
}

#[test]
fn swapped_chunks_pass_their_checksums_but_not_the_content_hash() {
    let (dir, store, original) = two_checkpoints(3);
    let frames = frame_offsets(10);
    // Two chunks of the same padded length, frames and all, trade places: every frame
    // checksum still holds.
    let (a, b) = (frames[0], frames[3]);
    assert_eq!(a.1 - a.0, b.1 - b.0, "chunks 0 and 3 take the same room");
    let mut swapped = original.clone();
    let (a0, a1, b0, b1) = (a.0 as usize, a.1 as usize, b.0 as usize, b.1 as usize);
    swapped[a0..a1].copy_from_slice(&original[b0..b1]);
    swapped[b0..b1].copy_from_slice(&original[a0..a1]);
    assert_detected(&dir, &store, swapped, "swapped chunks");
    let error = store.verify(10, SERVICE).expect_err("swapped");
    assert!(
        matches!(
            error.corruption(),
            Some(Corruption::ContentBytes { .. } | Corruption::ContentHash)
        ),
        "{error}"
    );
}

#[test]
fn all_corrupt_is_an_error_naming_each_file_and_none_is_not() {
    let (dir, store, original) = two_checkpoints(4);
    let mut damaged = original.clone();
    damaged[0] ^= 1;
    dir.set_file_bytes(&file_name(10), damaged);
    let older = dir.file_bytes(&file_name(5));
    let mut damaged = older.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    dir.set_file_bytes(&file_name(5), damaged);
    let error = load(&store).expect_err("all corrupt");
    match &error {
        CheckpointError::AllInvalid { failures, .. } => {
            let ids: Vec<u64> = failures.iter().map(|f| f.agreement_id).collect();
            assert_eq!(ids, vec![10, 5]);
            assert_eq!(failures[0].error.offset(), Some(0));
            assert!(failures[1].error.offset().is_some());
        }
        other => panic!("unexpected {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&file_name(10)) && message.contains(&file_name(5)), "{message}");

    let empty = CheckpointStore::open(SimDir::new(5), StoreOptions::default()).expect("open");
    assert!(load(&empty).expect("no checkpoint is not an error").is_none());
}
