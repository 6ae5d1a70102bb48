use dura_wal::{Backend, Wal, WalOptions};

#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 1 << 20,
        group_bytes_max: 64 << 10,
        record_bytes_max: 256 << 10,
        backend: Backend::Auto,
        ..WalOptions::default()
    };
    let (w, rec) = Wal::open(dir.path(), options.clone()).unwrap();
    assert!(rec.records.is_empty());
    let mut t = Vec::new();
    for i in 1..=1000u64 {
        t.push(w.append(i, i, &vec![i as u8; (i as usize * 37) % 5000]).unwrap());
        if i % 300 == 0 {
            w.cut_segment(i).unwrap();
        }
    }
    for x in &t {
        x.wait().unwrap();
    }
    println!(
        "closed {:?}",
        w.closed_segments()
            .iter()
            .map(|s| (s.segment_seq, s.first_agreement_id, s.last_agreement_id))
            .collect::<Vec<_>>()
    );
    w.close().unwrap();
    let (w, rec) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(rec.records.len(), 1000);
    for (i, r) in rec.records.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!(r.first_agreement_id, i);
        assert_eq!(r.payload, vec![i as u8; (i as usize * 37) % 5000]);
    }
    println!("{:?}", rec.cut);
    println!(
        "{:?}",
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
    );
    println!("sha {:?}", w.segment_sha256(1).unwrap());
    w.close().unwrap();
}
