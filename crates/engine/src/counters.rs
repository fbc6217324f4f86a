//! What the engine loop counts: plain atomics (and two latency histograms) that the loop bumps
//! and a reader (the server's `/metrics`) loads at any time. No exposition format here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket upper bounds, seconds.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative latency histogram over [`BUCKETS`].
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`].
    pub counts: [u64; BUCKETS.len()],
    pub count: u64,
    /// Seconds, summed.
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// The engine loop's counters and gauges.
#[derive(Debug, Default)]
pub struct Counters {
    /// Generation requests admitted to a sequence slot.
    pub generations: AtomicU64,
    /// Sequences ended because their receiver went away.
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    /// Prompt tokens actually computed (prefill), cache on or off.
    pub processed_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Steps run and the tokens they carried.
    pub steps: AtomicU64,
    pub step_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queue_depth: AtomicU64,
    /// Sequences holding a slot (prefilling or decoding).
    pub running: AtomicU64,
    /// Bytes of per-sequence state held by running sequences.
    pub state_bytes: AtomicU64,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
}

impl Counters {
    pub fn observe_ttft(&self, d: Duration) {
        lock(&self.ttft).observe(d.as_secs_f64());
    }

    pub fn observe_itl(&self, d: Duration) {
        lock(&self.itl).observe(d.as_secs_f64());
    }

    /// Time to first token: from a request's arrival to its first generated token.
    pub fn ttft(&self) -> Histogram {
        lock(&self.ttft).clone()
    }

    /// Inter-token latency: between consecutive generated tokens of one sequence.
    pub fn itl(&self) -> Histogram {
        lock(&self.itl).clone()
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn lock(h: &Mutex<Histogram>) -> std::sync::MutexGuard<'_, Histogram> {
    // A panic while holding the lock cannot leave a histogram inconsistent in a way that
    // matters for monitoring, so a poisoned lock is used as is.
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
