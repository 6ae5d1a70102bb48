//! `dura-bench wal` at tiny sizes: every figure the report promises is present and sane.

use dura_bench::wal_bench::{WalArgs, measure};
use dura_wal::io::DurabilityMode;

#[test]
fn tiny_wal_bench_reports_every_headline_field_with_sane_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = WalArgs::new(dir.path().to_path_buf());
    // Long enough that a segment roll on a loaded 2-core machine leaves writes in it.
    args.seconds = 0.5;
    args.rounds = 2;
    args.records_in_flight = 32;
    args.mode = Some(DurabilityMode::Fdatasync);
    args.producers = 2;
    args.segment_mib = 1;
    args.group_bytes_max = 256 * 1024;
    let report = measure(&args).expect("wal bench");
    let json = serde_json::to_value(&report).expect("serialize");

    for key in
        ["raw_mb_s", "group_mb_s", "ratio_group_to_raw", "sync_per_record_ops_s", "group_ops_s"]
    {
        let value = json[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {json}"));
        assert!(value > 0.0 && value.is_finite(), "{key} = {value}");
    }
    assert_eq!(json["mode"], "fdatasync");
    assert_eq!(json["modes"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["modes"][0]["round_ratios"].as_array().map(Vec::len), Some(2));
    let mode = &report.modes[0];
    for run in [&mode.sync_per_record, &mode.wal_one_record_per_write, &mode.group] {
        assert!(run.records > 0 && run.writes > 0, "{run:?}");
        let l = &run.latency;
        assert!(l.p50_us > 0.0, "{l:?}");
        assert!(l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.p999_us, "{l:?}");
        assert!(l.p999_us <= l.max_us * 1.001, "{l:?}");
        // Every write is at least one block; the records need their bytes on disk.
        assert!(run.mean_group_bytes >= 4096.0, "{run:?}");
        assert!(run.device_busy_fraction > 0.0 && run.device_busy_fraction.is_finite(), "{run:?}");
        assert!(run.device_bytes >= run.records * 4096, "{run:?}");
    }
    assert_eq!(mode.sync_per_record.mean_group_records, 1.0);
    assert!(mode.group.mean_group_records >= 1.0, "{:?}", mode.group);
    // One record per write: the counted writes carry exactly one record each, except
    // the seals (one 4 KiB write per segment).
    let one = &mode.wal_one_record_per_write;
    assert!(one.mean_group_records <= 1.0 && one.mean_group_records > 0.5, "{one:?}");
    // Group commit never puts more than the records in flight into one write.
    assert!(mode.group.mean_group_records <= 32.0, "{:?}", mode.group);
    // The raw reference was measured at the mean group write size, rounded up to 4 KiB.
    assert_eq!(
        mode.raw.record_bytes,
        (mode.group.mean_group_bytes.ceil() as usize).div_ceil(4096) * 4096
    );
    assert!(mode.raw.record_bytes as f64 >= mode.group.mean_group_bytes);
    assert!(mode.raw.record_bytes.is_multiple_of(4096));
    let expected_ratio = report.group_mb_s / report.raw_mb_s;
    assert!((report.ratio_group_to_raw - expected_ratio).abs() < 1e-9);
    assert_eq!(report.fastest_group_mode, "fdatasync");
    let segments = report.segments.as_ref().expect("segment comparison runs by default");
    assert!(segments.fresh_fallocated.records > 0 && segments.fresh_zeroed.records > 0);
    assert!(segments.fresh_fallocated_to_recycled_ops_ratio > 0.0);
    assert!(json["segments"]["fresh_fallocated"]["latency"]["p999_us"].is_number());

    // The benchmark removed its files.
    assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0);
}

#[test]
fn out_of_range_arguments_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = WalArgs::new(dir.path().to_path_buf());
    args.records_in_flight = 0;
    assert!(measure(&args).is_err());
    let mut args = WalArgs::new(dir.path().to_path_buf());
    args.seconds = -1.0;
    assert!(measure(&args).is_err());
}
