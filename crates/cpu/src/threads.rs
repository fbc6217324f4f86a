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
