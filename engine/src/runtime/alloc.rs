//! Process-wide settings of the C allocator for processes that move large frames.
//!
//! A PROPOSE, a log record and a write buffer each hold a whole batch (hundreds of KiB
//! at the bench's 4 KiB requests). glibc serves such blocks with a fresh `mmap` and
//! unmaps them on free, and returns freed heap tops to the kernel past 128 KiB; either
//! way the next batch's buffers fault in and zero fresh pages. Raising both thresholds
//! keeps freed blocks in the heaps for reuse. Measured on the 2-core development
//! machine (BFT n = 4, parallel log, 256 clients, whole `dura-bench run`): page faults
//! per operation 6.2 -> 4.7 (where the remaining faults come from is not pinned down).

use std::sync::OnceLock;

/// Largest block glibc serves from its heaps instead of a fresh mapping: glibc's
/// upper bound for this setting on 64-bit targets, at least one frame of
/// `frame_bytes_max`'s default.
pub const MMAP_THRESHOLD_BYTES: usize = 32 << 20;
/// Free memory at the top of a heap that glibc keeps instead of returning it.
pub const TRIM_THRESHOLD_BYTES: usize = 256 << 20;

/// Applies [`MMAP_THRESHOLD_BYTES`] and [`TRIM_THRESHOLD_BYTES`] to this process's
/// allocator, once (later calls do nothing). Returns whether both settings took;
/// false on a C library without these settings (nothing changes there).
/// [`super::start_replica`] calls it; a client process may too.
pub fn tune_allocator() -> bool {
    static APPLIED: OnceLock<bool> = OnceLock::new();
    *APPLIED.get_or_init(apply)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    let mmap = i32::try_from(MMAP_THRESHOLD_BYTES).expect("threshold fits a C int");
    let trim = i32::try_from(TRIM_THRESHOLD_BYTES).expect("threshold fits a C int");
    // SAFETY: mallopt only changes allocator parameters under the allocator's own lock;
    // it takes no pointer and is safe to call from any thread at any time.
    let mmap_took = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) } == 1;
    // SAFETY: as above.
    let trim_took = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, trim) } == 1;
    if !(mmap_took && trim_took) {
        log::warn!("allocator: mallopt refused (mmap threshold {mmap_took}, trim {trim_took})");
    }
    mmap_took && trim_took
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_takes_on_glibc_and_a_second_call_reports_the_same() {
        let first = tune_allocator();
        assert_eq!(first, cfg!(all(target_os = "linux", target_env = "gnu")));
        assert_eq!(tune_allocator(), first);
        // Large blocks still allocate and free normally.
        let block = vec![7u8; 1 << 20];
        assert_eq!(block.iter().map(|&b| u64::from(b)).sum::<u64>(), 7 << 20);
    }
}
