//! The engine-owned worker pool.
//!
//! One pool per process, sized once by [`crate::init_threads`]: `n − 1` long-lived workers plus
//! the calling thread. A parallel region ([`parallel_for`]) publishes one job, every participant
//! claims chunks of it from a shared counter, and the caller returns when all are done. There is
//! no per-op spawning and no rayon in the per-token path.
//!
//! Why this shape: on these 2-vCPU machines a dispatch through rayon costs 4–11 µs and a
//! condition-variable wake-up tens of µs, while a token of a small model issues ~100 matmuls.
//! Workers therefore spin briefly on the job counter after finishing a job (the next op usually
//! follows within microseconds) and park after [`SPIN`] without one, so an idle engine costs no
//! CPU. The number of regions is counted ([`regions`]) so `qinfer bench` can report the
//! synchronisation points per token.
//!
//! Regions never nest and never run concurrently: a region opened while another one runs (a
//! nested call, or a second thread such as a parallel test) runs serially on its caller.
//!
//! The caller never waits for a worker that has not started: it claims chunks like any worker,
//! and once every chunk is claimed it waits only for participants still inside a chunk. On a
//! machine shared with other processes a descheduled worker therefore costs nothing but its
//! share of the work (measured here: waiting for every worker cost 70% of decode time under
//! a co-tenant's build). A worker that arrives late finds no chunk left and never touches the
//! job's closure.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins (with `pause`) before it starts yielding.
const SPIN: Duration = Duration::from_micros(30);
/// How long an idle worker keeps polling (yielding between polls) before it parks.
const POLL: Duration = Duration::from_micros(300);

/// The job of one region: a chunk body and the chunk counter.
struct Job {
    /// Lifetime-erased `&(dyn Fn(usize) + Sync)`; valid until the region's caller returns.
    body: *const (dyn Fn(usize) + Sync),
    chunks: usize,
    next: AtomicUsize,
}

struct Shared {
    /// Incremented once per region; workers run a job when they see a new value.
    epoch: AtomicU64,
    /// The current job, written by the dispatcher before the epoch is bumped.
    job: Mutex<Option<Arc<JobCell>>>,
    /// Participants (workers) currently inside the job's chunk loop.
    active: AtomicUsize,
    /// Workers parked on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// A worker's chunk panicked during the current region.
    panicked: AtomicBool,
}

struct JobCell(Job);

// SAFETY: the raw body pointer refers to a `Sync` closure that the dispatching caller keeps
// alive until every chunk is claimed and no participant is inside one.
unsafe impl Send for JobCell {}
// SAFETY: as above; the closure is `Sync`, the counter is atomic.
unsafe impl Sync for JobCell {}

struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// Held for the duration of a region.
    busy: Mutex<()>,
}

static POOL: OnceLock<Pool> = OnceLock::new();
static REGIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

/// Starts the pool with `n` participants (`n − 1` workers). Only the first call has effect;
/// returns the pool's size.
pub(crate) fn start(n: usize) -> usize {
    let pool = POOL.get_or_init(|| {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
        });
        let workers = n.max(1) - 1;
        for i in 0..workers {
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("qinfer-worker-{i}"))
                .spawn(move || worker(&s))
                .expect("cannot start a worker thread");
        }
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    });
    pool.workers + 1
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            spins += 1;
            if spins.is_multiple_of(32) {
                let idle = started.elapsed();
                if idle > POLL {
                    let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                    s.sleepers.fetch_add(1, Ordering::SeqCst);
                    while s.epoch.load(Ordering::SeqCst) == seen {
                        guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                    s.sleepers.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                if idle > SPIN {
                    std::thread::yield_now();
                    continue;
                }
            }
            std::hint::spin_loop();
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = s.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(job) = job {
            // Registered before claiming: the dispatcher, having seen every chunk claimed,
            // waits for `active` to drop to zero.
            s.active.fetch_add(1, Ordering::SeqCst);
            IN_REGION.with(|r| r.set(true));
            if catch_unwind(AssertUnwindSafe(|| run_chunks(&job.0))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
            IN_REGION.with(|r| r.set(false));
            s.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn run_chunks(job: &Job) {
    loop {
        let c = job.next.fetch_add(1, Ordering::SeqCst);
        if c >= job.chunks {
            break;
        }
        // SAFETY: a chunk was claimed, so the dispatcher has not yet seen every chunk claimed
        // and is still inside `parallel_for`, keeping the closure alive until `active` is 0.
        let body = unsafe { &*job.body };
        body(c);
    }
}

/// Number of parallel regions opened so far in this process (synchronisation points).
pub fn regions() -> u64 {
    REGIONS.load(Ordering::Relaxed)
}

/// Runs `body(c)` for every chunk `c < chunks`, spread over the pool; returns when all are done.
/// Chunks are claimed dynamically, so a participant slowed by another process takes fewer.
///
/// Runs serially on the caller when there is one chunk, no pool, or a region already running.
pub fn parallel_for(chunks: usize, body: &(dyn Fn(usize) + Sync)) {
    let serial = || (0..chunks).for_each(body);
    let Some(pool) = POOL.get().filter(|p| p.workers > 0 && chunks > 1) else {
        return serial();
    };
    if IN_REGION.with(Cell::get) {
        return serial();
    }
    let Ok(_busy) = pool.busy.try_lock() else {
        return serial();
    };
    REGIONS.fetch_add(1, Ordering::Relaxed);
    let s = &pool.shared;
    // SAFETY: erases the closure's lifetime; this function does not return (nor unwind) before
    // every chunk is claimed and no participant is inside one (the `active` wait below); a
    // worker arriving later claims nothing and never dereferences the closure.
    let body_static: *const (dyn Fn(usize) + Sync) = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
            body,
        )
    };
    let job = Arc::new(JobCell(Job {
        body: body_static,
        chunks,
        next: AtomicUsize::new(0),
    }));
    *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&job));
    s.epoch.fetch_add(1, Ordering::SeqCst);
    if s.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    IN_REGION.with(|r| r.set(true));
    let mine = catch_unwind(AssertUnwindSafe(|| run_chunks(&job.0)));
    IN_REGION.with(|r| r.set(false));
    // Every chunk is claimed now; wait for the participants still running one.
    let mut spins = 0u32;
    while s.active.load(Ordering::SeqCst) > 0 {
        spins += 1;
        if spins > 1 << 12 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let worker_panicked = s.panicked.swap(false, Ordering::SeqCst);
    if let Err(p) = mine {
        std::panic::resume_unwind(p);
    }
    assert!(!worker_panicked, "a worker thread panicked inside a kernel");
}

/// A raw pointer to an output buffer that chunks of one region write disjoint parts of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SharedMut<T>(*mut T);

// SAFETY: only used inside `parallel_for` regions where every chunk writes a disjoint range.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        SharedMut(s.as_mut_ptr())
    }

    /// The sub-slice `[start, start + len)`.
    ///
    /// # Safety
    /// The range lies inside the buffer this was made from, that buffer outlives the use, and
    /// no other live reference overlaps the range.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// `f(i, chunk)` for every `len`-long chunk of `data` (the last may be shorter), in parallel.
pub fn parallel_chunks_mut<T: Send>(
    data: &mut [T],
    len: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let len = len.max(1);
    let total = data.len();
    let n = total.div_ceil(len);
    let out = SharedMut::new(data);
    parallel_for(n, &|c| {
        let start = c * len;
        let l = len.min(total - start);
        // SAFETY: chunks are disjoint ranges of `data`, which outlives the region.
        f(c, unsafe { out.slice(start, l) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_and_regions_are_counted() {
        start(2);
        let before = regions();
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..50 {
            parallel_for(hits.len(), &|c| {
                hits[c].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        // Other tests may open regions concurrently (or force serial runs); ours count ≤ 50.
        assert!(regions() >= before);
        let mut v = vec![0usize; 103];
        parallel_chunks_mut(&mut v, 10, &|c, s| s.iter_mut().for_each(|x| *x = c));
        assert!(v.iter().enumerate().all(|(i, &c)| c == i / 10));
    }

    #[test]
    fn nested_regions_run_serially() {
        start(2);
        let total = AtomicUsize::new(0);
        parallel_for(4, &|_| {
            parallel_for(4, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 16);
    }
}
