//! The engine's worker threads.
//!
//! Per-token ops run on the engine-owned pool ([`crate::pool`]), sized once by
//! [`init_threads`]. Load-time work (quantizing a checkpoint) still uses rayon's global pool,
//! sized the same.

use std::sync::OnceLock;

static THREADS: OnceLock<usize> = OnceLock::new();

/// Sizes the worker pool. `None` uses every available CPU. Only the first call has effect;
/// it returns the number of threads in use.
pub fn init_threads(n: Option<usize>) -> usize {
    *THREADS.get_or_init(|| {
        keep_freed_memory();
        let n = n
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // Ignoring the error is right: it only fails if another part of the process already
        // built the global pool, which then stays in use.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
        crate::pool::start(n)
    })
}

/// Number of worker threads in use.
pub fn threads() -> usize {
    init_threads(None)
}

/// Makes glibc's allocator keep freed memory for the next forward pass instead of handing it
/// back to the kernel after every op.
///
/// A prefill allocates and frees tens of megabytes of activations per op. With glibc's
/// defaults, blocks above the (adaptive) mmap threshold are mapped and unmapped each time and
/// the heap top is trimmed as soon as 128 KiB are free, so every op faults its pages in again
/// and zeroes them: on the 0.8B shape that was about a fifth of pp512's CPU time, spent in the
/// kernel, and it serialised the two threads on the page-table lock (pp512 roughly 1.75×
/// faster with this setting on the development machine). Blocks up to 32 MiB (glibc's largest
/// mmap threshold) now come from the heap, which grows in steps of 256 MiB (address space;
/// pages are touched only when used) and is trimmed only above 1 GiB free; the memory retained
/// is the largest working set a forward pass needed, which it needs again. (Without the
/// 256 MiB step, decode measured about 8% slower in the same run.)
/// Other C libraries and platforms are left as they are.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's mallopt(3) parameters.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only adjusts allocator parameters; it is safe to call at any time.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TOP_PAD, 256 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
