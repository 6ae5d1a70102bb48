//! Writing and loading back: contents, limits, canonical bytes, names, the API's refusals.

mod common;

use common::{Chunks, Collect, SERVICE, chunks_for, engine_for, load, small_limit, write};
use dura_snapshot::format::{FRAME_BYTES, file_name, header_bytes, temp_name};
use dura_snapshot::sim::SimDir;
use dura_snapshot::{
    CheckpointError, CheckpointStore, ContentHasher, Corruption, Dir, DirWriter, FsDir, Section,
    StoreOptions,
};

fn round_trip<D: Dir>(dir: D) {
    let store = CheckpointStore::open(dir, StoreOptions::default()).expect("open");
    assert!(load(&store).expect("load").is_none(), "no checkpoint yet");
    let chunks = chunks_for(9);
    let written = write(&store, 9, &engine_for(9), &chunks).expect("write");
    assert_eq!(written.agreement_id, 9);
    assert_eq!(written.file_name, file_name(9));
    assert!(written.removed.is_empty());

    let loaded = load(&store).expect("load").expect("a checkpoint");
    assert_eq!(loaded.value, chunks);
    assert!(loaded.skipped.is_empty());
    let header = &loaded.verified.header;
    assert_eq!(header.service, SERVICE);
    assert_eq!(header.agreement_id, 9);
    assert_eq!(header.engine, engine_for(9));
    assert_eq!(header.chunk_count, chunks.len() as u64);
    assert_eq!(header.content_bytes, chunks.iter().map(|(_, p)| p.len() as u64).sum::<u64>());
    assert_eq!(header.content_sha256, written.content_sha256);
    assert_eq!(loaded.verified.file_bytes, written.file_bytes);

    // The content hash is the documented one, computable by state transfer.
    let mut hasher = ContentHasher::new(SERVICE, 9, &engine_for(9));
    for (section, payload) in &chunks {
        hasher.chunk(*section, payload);
    }
    assert_eq!(hasher.finish(), written.content_sha256);

    // Header alone, verify without a visitor, and read with a visitor agree.
    assert_eq!(&store.read_header(9).expect("header"), header);
    assert_eq!(&store.verify(9, SERVICE).expect("verify").header, header);
    let mut visited: Chunks = Vec::new();
    store
        .read(9, SERVICE, |section, payload| {
            assert_eq!(payload.as_ptr().addr() % 16, 0);
            visited.push((section, payload.to_vec()));
            Ok(())
        })
        .expect("read");
    assert_eq!(visited, chunks);
}

#[test]
fn round_trip_on_the_simulated_directory() {
    round_trip(SimDir::new(1));
}

#[test]
fn round_trip_on_the_file_system() {
    let tmp = tempfile::tempdir().expect("tempdir");
    round_trip(FsDir::new(tmp.path()).expect("dir"));
}

#[test]
fn empty_state_has_zero_chunks_and_loads() {
    let store = CheckpointStore::open(SimDir::new(2), StoreOptions::default()).expect("open");
    let written = write(&store, 1, &[], &Vec::new()).expect("write");
    assert_eq!(written.file_bytes, header_bytes(0) as u64);
    let loaded = load(&store).expect("load").expect("a checkpoint");
    assert!(loaded.value.is_empty());
    assert_eq!(loaded.verified.header.chunk_count, 0);
    assert!(loaded.verified.header.engine.is_empty());
}

#[test]
fn a_chunk_at_the_limit_is_written_and_one_over_it_aborts_the_checkpoint() {
    let dir = SimDir::new(3);
    let store = CheckpointStore::open(dir.clone(), small_limit(2)).expect("open");
    let at_limit: Chunks = vec![(Section::Service, vec![0x5a; 4096])];
    write(&store, 1, b"", &at_limit).expect("a chunk of exactly the limit");
    assert_eq!(load(&store).expect("load").expect("some").value, at_limit);

    let mut writer = store.begin(SERVICE, 2, b"").expect("begin");
    writer.chunk(Section::Engine, b"fine").expect("small chunk");
    let error = writer.chunk(Section::Service, &[0; 4097]).expect_err("over the limit");
    assert!(matches!(error, CheckpointError::ChunkTooLarge { bytes: 4097, limit: 4096 }));
    assert!(matches!(writer.chunk(Section::Engine, b"x"), Err(CheckpointError::WriterFailed)));
    assert!(matches!(writer.finish(), Err(CheckpointError::WriterFailed)));
    assert_eq!(dir.names(), vec![file_name(1)], "the aborted checkpoint's temp file is gone");
}

#[test]
fn a_loader_refuses_a_frame_over_its_limit_before_reading_it() {
    let dir = SimDir::new(4);
    let big = CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("open");
    write(&big, 1, b"", &vec![(Section::Service, vec![1; 5000])]).expect("write");
    let small = CheckpointStore::open(dir.clone(), small_limit(2)).expect("open");
    let error = small.verify(1, SERVICE).expect_err("over the loader's limit");
    let frame = header_bytes(0) as u64;
    assert_eq!(error.offset(), Some(frame + 4), "{error}");
    assert_eq!(
        error.corruption(),
        Some(Corruption::ChunkTooLarge { payload_bytes: 5000, limit: 4096 })
    );

    // A length within the limit but past the end of the file is refused as truncation.
    let name = file_name(1);
    let mut bytes = dir.file_bytes(&name);
    let at = header_bytes(0) + 4;
    bytes[at..at + 4].copy_from_slice(&(20u32 << 20).to_le_bytes());
    dir.set_file_bytes(&name, bytes);
    let error = big.verify(1, SERVICE).expect_err("past the end");
    assert!(matches!(error.corruption(), Some(Corruption::Truncated { .. })), "{error}");
    assert_eq!(error.offset(), Some(frame + FRAME_BYTES as u64));
}

#[test]
fn equal_chunks_give_byte_identical_files_and_hashes() {
    let a = SimDir::new(5);
    let b = SimDir::new(6);
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = FsDir::new(tmp.path()).expect("dir");
    let chunks = chunks_for(77);
    let written_a = write(
        &CheckpointStore::open(a.clone(), StoreOptions::default()).expect("open"),
        77,
        b"m",
        &chunks,
    )
    .expect("write a");
    let written_b = write(
        &CheckpointStore::open(b.clone(), StoreOptions::default()).expect("open"),
        77,
        b"m",
        &chunks,
    )
    .expect("write b");
    let written_c =
        write(&CheckpointStore::open(c, StoreOptions::default()).expect("open"), 77, b"m", &chunks)
            .expect("write c");
    let bytes_a = a.file_bytes(&written_a.file_name);
    assert_eq!(bytes_a, b.file_bytes(&written_b.file_name));
    assert_eq!(bytes_a, std::fs::read(tmp.path().join(&written_c.file_name)).expect("read"));
    assert_eq!(written_a.content_sha256, written_b.content_sha256);
    assert_eq!(written_a.content_sha256, written_c.content_sha256);

    // Any difference in content changes the hash: a byte, a section, the engine blob.
    let store = CheckpointStore::open(SimDir::new(7), StoreOptions::default()).expect("open");
    let mut other = chunks.clone();
    other[1].1[0] ^= 1;
    assert_ne!(
        write(&store, 77, b"m", &other).expect("w").content_sha256,
        written_a.content_sha256
    );
    let mut other = chunks.clone();
    other[0].0 = Section::Service;
    assert_ne!(
        write(&store, 77, b"m", &other).expect("w").content_sha256,
        written_a.content_sha256
    );
    assert_ne!(
        write(&store, 77, b"n", &chunks).expect("w").content_sha256,
        written_a.content_sha256
    );
}

#[test]
fn writing_the_same_agreement_again_replaces_it() {
    let dir = SimDir::new(8);
    let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("open");
    write(&store, 3, b"first", &chunks_for(1)).expect("first");
    let second = write(&store, 3, b"second", &chunks_for(2)).expect("second");
    assert_eq!(dir.names(), vec![file_name(3)]);
    let loaded = load(&store).expect("load").expect("some");
    assert_eq!(loaded.value, chunks_for(2));
    assert_eq!(loaded.verified.header.engine, b"second");
    assert_eq!(loaded.verified.header.content_sha256, second.content_sha256);
}

#[test]
fn list_is_newest_first_and_ignores_other_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = FsDir::new(tmp.path()).expect("dir");
    let store =
        CheckpointStore::open(dir.clone(), StoreOptions { retain: 5, ..Default::default() })
            .expect("open");
    for agreement_id in [10, 2, 300] {
        common::write_standard(&store, agreement_id).expect("write");
    }
    for name in ["member", "checkpoint-12.dck", "checkpoint-0000000000000000000x.dck", "x.dck"] {
        std::fs::write(tmp.path().join(name), b"junk").expect("junk");
    }
    let ids: Vec<u64> = store.list().expect("list").iter().map(|e| e.agreement_id).collect();
    assert_eq!(ids, vec![300, 10, 2]);
    assert_eq!(load(&store).expect("load").expect("some").verified.header.agreement_id, 300);
}

#[test]
fn open_removes_leftover_temp_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = FsDir::new(tmp.path()).expect("dir");
    let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("open");
    common::write_standard(&store, 4).expect("write");
    let mut leftover = dir.create(&temp_name(5)).expect("create");
    leftover.write_all(b"half a checkpoint").expect("write");
    drop(leftover);
    std::fs::write(tmp.path().join("unrelated"), b"keep me").expect("unrelated");
    CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("reopen");
    let mut names = dir.list().expect("list");
    names.sort();
    assert_eq!(names, vec![file_name(4), "unrelated".to_owned()]);
}

#[test]
fn the_api_refuses_bad_input_clearly() {
    let dir = SimDir::new(9);
    let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("open");
    assert!(matches!(store.begin("", 1, b""), Err(CheckpointError::ServiceName { .. })));
    let long = "s".repeat(65);
    assert!(matches!(store.begin(&long, 1, b""), Err(CheckpointError::ServiceName { .. })));
    let engine = vec![0; (64 << 10) + 1];
    assert!(matches!(
        store.begin(SERVICE, 1, &engine),
        Err(CheckpointError::EngineTooLarge { .. })
    ));
    for options in [
        StoreOptions { retain: 0, ..Default::default() },
        StoreOptions { retain: 65, ..Default::default() },
        StoreOptions { chunk_bytes_limit: 0, ..Default::default() },
        StoreOptions { chunk_bytes_limit: (32 << 20) + 1, ..Default::default() },
    ] {
        let result = CheckpointStore::open(dir.clone(), options);
        assert!(matches!(result, Err(CheckpointError::InvalidOptions(_))), "{options:?}");
    }

    // One writer at a time; dropping it aborts it and frees the store.
    let writer = store.begin(SERVICE, 1, b"").expect("begin");
    assert!(matches!(store.begin(SERVICE, 2, b""), Err(CheckpointError::WriterBusy { .. })));
    assert_eq!(dir.names(), vec![temp_name(1)]);
    drop(writer);
    assert!(dir.names().is_empty(), "a dropped writer removes its temp file");
    store.begin(SERVICE, 2, b"").expect("free again").abort();
    assert!(dir.names().is_empty());
}

#[test]
fn another_services_checkpoint_is_refused_naming_both() {
    let store = CheckpointStore::open(SimDir::new(10), StoreOptions::default()).expect("open");
    common::write_standard(&store, 1).expect("write");
    let error = store.verify(1, "tuplespace").expect_err("other service");
    match &error {
        CheckpointError::ServiceMismatch { expected, found, .. } => {
            assert_eq!(expected, "tuplespace");
            assert_eq!(found, SERVICE);
        }
        other => panic!("unexpected {other}"),
    }
    let message = error.to_string();
    assert!(message.contains("tuplespace") && message.contains("\"kv\""), "{message}");
    assert_eq!(error.offset(), Some(80));
}

#[test]
fn a_misnamed_checkpoint_is_refused() {
    let dir = SimDir::new(12);
    let store = CheckpointStore::open(dir.clone(), StoreOptions::default()).expect("open");
    common::write_standard(&store, 5).expect("write");
    dir.rename(&file_name(5), &file_name(10)).expect("rename");
    let error = store.read_header(10).expect_err("misnamed");
    assert_eq!(error.corruption(), Some(Corruption::AgreementMismatch { name: 10, header: 5 }));
    assert_eq!(error.offset(), Some(16));
    assert!(load(&store).is_err(), "the only checkpoint is misnamed");
}

#[test]
fn a_refusing_builder_falls_back_to_the_previous_checkpoint() {
    let store = CheckpointStore::open(SimDir::new(11), StoreOptions::default()).expect("open");
    common::write_standard(&store, 1).expect("write");
    common::write_standard(&store, 2).expect("write");
    let mut headers = Vec::new();
    let loaded = store
        .load_newest(SERVICE, |header| {
            headers.push(header.agreement_id);
            if header.agreement_id == 2 {
                Err("cannot decode engine metadata".into())
            } else {
                Ok(Collect::default())
            }
        })
        .expect("load")
        .expect("some");
    assert_eq!(headers, vec![2, 1], "a fresh builder per attempt");
    assert_eq!(loaded.verified.header.agreement_id, 1);
    assert_eq!(loaded.skipped.len(), 1);
    assert!(matches!(loaded.skipped[0].error, CheckpointError::Rejected { offset: 0, .. }));
}
