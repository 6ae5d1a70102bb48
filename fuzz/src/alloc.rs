//! A global allocator that bounds every single allocation, for the fuzz binaries: a
//! decoder that sizes a buffer from a length field it did not bound against the bytes
//! it holds asks for far more than any input could need. Such a request is reported
//! with the target and input being run (from [`Context`]) and the process aborts, which
//! AFL++ counts as a crash and the stable driver's caller sees as a failure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The largest allocation a target may make: inputs are at most
/// [`crate::mutate::INPUT_BYTES_MAX`] (64 KiB) in the stable driver and a few MiB under
/// AFL++, so no decoder needs more than a small multiple of that.
pub const ALLOCATION_BYTES_MAX: usize = 64 << 20;

/// What the fuzz binary is running now, for the report of an allocation over the bound.
#[derive(Debug)]
pub struct Context {
    target: AtomicUsize,
    seed: AtomicU64,
    iteration: AtomicU64,
}

/// The context of this process.
pub static CONTEXT: Context = Context {
    target: AtomicUsize::new(usize::MAX),
    seed: AtomicU64::new(0),
    iteration: AtomicU64::new(0),
};

impl Context {
    /// Records that target `target` (an index into [`crate::TARGETS`]) runs input
    /// `iteration` of the driver's run with `seed`.
    pub fn set(&self, target: usize, seed: u64, iteration: u64) {
        self.target.store(target, Ordering::Relaxed);
        self.seed.store(seed, Ordering::Relaxed);
        self.iteration.store(iteration, Ordering::Relaxed);
    }
}

/// The system allocator, refusing (with a report and an abort) any allocation over
/// [`ALLOCATION_BYTES_MAX`].
#[derive(Debug)]
pub struct Bounded;

#[cold]
fn over_the_bound(bytes: usize) -> ! {
    let target = CONTEXT.target.load(Ordering::Relaxed);
    let name = crate::TARGETS.get(target).map_or("?", |t| t.name);
    let seed = CONTEXT.seed.load(Ordering::Relaxed);
    let iteration = CONTEXT.iteration.load(Ordering::Relaxed);
    // No allocation below: integers and static strings format without one.
    let _ = writeln!(
        std::io::stderr(),
        "FAILED: target {name} asked for an allocation of {bytes} bytes (bound \
         {ALLOCATION_BYTES_MAX}) at input {iteration} of seed {seed}; replay with \
         `dura-fuzz run --target {name} --seed {seed} --iterations {} --dump-last`",
        iteration + 1,
    );
    std::process::abort()
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer
// unchanged, so `System`'s guarantees hold; the only addition is an abort before an
// allocation over the bound is made.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            over_the_bound(layout.size());
        }
        // SAFETY: the caller's guarantees for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            over_the_bound(layout.size());
        }
        // SAFETY: the caller's guarantees for `alloc_zeroed`, passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees for `dealloc`, passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_BYTES_MAX {
            over_the_bound(new_size);
        }
        // SAFETY: the caller's guarantees for `realloc`, passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
