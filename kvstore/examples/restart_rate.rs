//! How fast a replica restarts from a checkpoint of a large state, against the device's
//! sequential read bandwidth measured by the same program on the same file.
//!
//! Builds a store of `--records` keys with `--value-bytes` values (1 GiB: 262,144 x
//! 4 KiB), writes it as a checkpoint through the engine's writer into `--dir` (timed),
//! then, with the file's pages dropped from the page cache before each (fsynced file,
//! `POSIX_FADV_DONTNEED`), times a plain sequential read of the file in 4 MiB reads and
//! the engine's checkpoint load (validate every chunk, SHA-256 over the content, build a
//! fresh store). Prints both rates and their ratio (the issue's goal: >= 0.5).
//!
//! ```text
//! cargo run --release -p dura-kvstore --example restart_rate -- --records 262144 --value-bytes 4096 --dir /var/tmp/dura-restart
//! ```

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dura_engine::checkpoint::{load_checkpoint, write_checkpoint};
use dura_engine::service::{Executor, Service};
use dura_kvstore::{KvOp, KvStore};
use dura_snapshot::{CheckpointStore, FsDir, StoreOptions};

struct Args {
    records: u64,
    value_bytes: usize,
    dir: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        records: 262_144,
        value_bytes: 4096,
        dir: std::env::temp_dir().join("dura-restart"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => args.records = value.parse().map_err(|e| format!("--records: {e}"))?,
            "--value-bytes" => {
                args.value_bytes = value.parse().map_err(|e| format!("--value-bytes: {e}"))?
            }
            "--dir" => args.dir = PathBuf::from(value),
            other => return Err(format!("unknown flag {other} (--records, --value-bytes, --dir)")),
        }
    }
    Ok(args)
}

/// Drops `path`'s cached pages (the file is synced, so they are clean).
fn drop_cache(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    // SAFETY: a valid open descriptor; fadvise only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    std::fs::create_dir_all(&args.dir)?;
    let started = Instant::now();
    let mut store = KvStore::new();
    let mut value = vec![0u8; args.value_bytes];
    for i in 0..args.records {
        let key = format!("user{i:012}");
        value[..8].copy_from_slice(&i.to_le_bytes());
        store.apply(&KvOp::Put { key: key.as_bytes(), value: &value }.encode()?);
    }
    let state_bytes = args.records * (args.value_bytes as u64 + 16);
    println!(
        "built a store of {} keys x {} B ({:.1} MiB) in {:.2} s",
        args.records,
        args.value_bytes,
        state_bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    let checkpoints = CheckpointStore::open(FsDir::new(&args.dir)?, StoreOptions::default())?;
    let executor = Executor::new(store);
    let started = Instant::now();
    let written = write_checkpoint(&checkpoints, KvStore::NAME, 1, args.records, &executor.view())?;
    let write_s = started.elapsed().as_secs_f64();
    let path = args.dir.join(&written.file_name);
    let mib = written.file_bytes as f64 / (1 << 20) as f64;
    println!(
        "checkpoint written (synced, renamed): {mib:.1} MiB in {write_s:.2} s ({:.0} MiB/s)",
        mib / write_s
    );
    drop(executor);

    drop_cache(&path)?;
    let started = Instant::now();
    let mut file = std::fs::File::open(&path)?;
    let mut buffer = vec![0u8; 4 << 20];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let read_s = started.elapsed().as_secs_f64();
    assert_eq!(read, written.file_bytes);
    let read_rate = mib / read_s;
    println!("sequential read of the file, cold: {read_s:.2} s ({read_rate:.0} MiB/s)");

    drop_cache(&path)?;
    let started = Instant::now();
    let loaded = load_checkpoint(&checkpoints, &KvStore::new())?.ok_or("no checkpoint found")?;
    let load_s = started.elapsed().as_secs_f64();
    let load_rate = mib / load_s;
    assert_eq!(loaded.executor.service().len() as u64, args.records);
    println!(
        "checkpoint load (validate, hash, build the store), cold: {load_s:.2} s ({load_rate:.0} MiB/s)"
    );
    println!("restart rate over sequential read bandwidth: {:.2}", load_rate / read_rate);
    Ok(())
}
