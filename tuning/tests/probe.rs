//! The probe runs end to end at tiny sizes and reports sane figures.

use std::time::Duration;

use dura_tuning::{BlockState, DurabilityMode, ProbeOptions, probe, sequential_synced_bandwidth};

fn tiny_options() -> ProbeOptions {
    ProbeOptions {
        modes: DurabilityMode::ALL.to_vec(),
        latency_write_bytes: 4096,
        latency_writes: 8,
        latency_time_max: Duration::from_secs(2),
        bandwidth_record_bytes: vec![64 * 1024, 256 * 1024],
        bandwidth_total_bytes: 512 * 1024,
        bandwidth_time_max: Duration::from_secs(2),
    }
}

#[test]
fn tiny_probe_reports_ordered_percentiles_and_positive_bandwidth_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = tiny_options();
    let report = probe(dir.path(), &options).expect("probe");

    // Every mode and block state is either measured or skipped with a reason.
    assert_eq!(report.latency.len() + report.skipped.len(), 2 * 4 + report.bandwidth_skips());
    assert!(!report.latency.is_empty());
    for row in &report.latency {
        assert!(row.writes >= 1 && row.writes <= 8, "{row:?}");
        assert_eq!(row.write_bytes, 4096);
        assert!(row.p50_us > 0.0, "{row:?}");
        assert!(row.p50_us <= row.p90_us && row.p90_us <= row.p99_us, "{row:?}");
        assert!(row.p99_us <= row.max_us * 1.001, "{row:?}");
    }
    for blocks in [BlockState::Written, BlockState::Fallocated] {
        assert!(report.latency.iter().any(|row| row.blocks == blocks && row.mode == "dsync"));
    }
    // Bandwidth only for the three durable modes.
    assert!(report.bandwidth.iter().all(|s| s.mode != "async-unsafe"));
    assert!(report.bandwidth.len() >= 4, "{:?}", report.bandwidth);
    for sample in &report.bandwidth {
        assert!(sample.mb_s > 0.0 && sample.mb_s.is_finite(), "{sample:?}");
        assert_eq!(sample.bytes_written, sample.writes * sample.record_bytes as u64);
        assert!(sample.bytes_written <= 512 * 1024);
    }
    let json = serde_json::to_value(&report).expect("serialize");
    assert!(json["latency"][0]["p99_us"].is_number());
    assert!(json["bandwidth"][0]["mb_s"].is_number());

    // No probe file is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
    assert!(left.is_empty(), "probe files left: {left:?}");
}

#[test]
fn sequential_bandwidth_of_unaligned_size_rounds_up_and_is_positive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mb_s = sequential_synced_bandwidth(dir.path(), DurabilityMode::Fdatasync, 5000, 40_000)
        .expect("bandwidth");
    assert!(mb_s > 0.0 && mb_s.is_finite());
    assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0);
}

trait BandwidthSkips {
    fn bandwidth_skips(&self) -> usize;
}

impl BandwidthSkips for dura_tuning::ProbeReport {
    fn bandwidth_skips(&self) -> usize {
        self.skipped.iter().filter(|s| s.starts_with("bandwidth")).count()
    }
}
