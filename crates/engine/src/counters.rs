//! What the engine loop counts: plain atomics (two latency histograms, and for an MoE model
//! the experts each layer touches per step) that the loop bumps and a reader (the server's
//! `/metrics`) loads at any time. No exposition format here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket upper bounds, seconds.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket upper bounds of the experts a layer touches in one step (MoE models).
pub const EXPERT_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A cumulative histogram over `bounds`.
#[derive(Clone, Debug)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Observations at or below each bound.
    pub counts: Vec<u64>,
    pub count: u64,
    /// The observed values, summed.
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

/// Latency histograms start empty over [`BUCKETS`].
impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&BUCKETS)
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
    /// Speculative decoding: draft tokens proposed by the MTP head, and those the model's
    /// own choice confirmed (each accepted draft is a token that cost no decode step).
    pub drafted_tokens: AtomicU64,
    pub accepted_tokens: AtomicU64,
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
    /// MoE: the mean number of distinct experts a layer ran, per step (none for dense).
    experts: Mutex<Option<Histogram>>,
}

impl Counters {
    pub fn observe_ttft(&self, d: Duration) {
        lock(&self.ttft).observe(d.as_secs_f64());
    }

    pub fn observe_itl(&self, d: Duration) {
        lock(&self.itl).observe(d.as_secs_f64());
    }

    /// One step of an MoE model ran `experts` distinct experts per layer, on average.
    pub fn observe_experts(&self, experts: f64) {
        let mut h = self
            .experts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.get_or_insert_with(|| Histogram::new(&EXPERT_BUCKETS))
            .observe(experts);
    }

    /// Experts per layer per step, once an MoE step has run.
    pub fn experts(&self) -> Option<Histogram> {
        self.experts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
