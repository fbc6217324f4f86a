//! Counters, gauges and histograms, rendered in the Prometheus text format for `GET /metrics`.
//!
//! A handful of atomics and two mutex-guarded histograms: the engine thread and the HTTP tasks
//! update them, `/metrics` reads them. No registry crate: the exposition format is a few lines
//! of text, and owning it keeps the dependency set small.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket upper bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
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

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// The server's metrics. Shared by reference between the HTTP side and the engine thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP responses by class.
    pub requests_ok: AtomicU64,
    pub requests_client_error: AtomicU64,
    pub requests_server_error: AtomicU64,
    /// Generation requests accepted by the scheduler.
    pub generations: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected_queue_full: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    /// Prompt tokens actually computed (prefill), cache on or off.
    pub processed_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Engine steps run and the tokens they carried.
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

impl Metrics {
    pub fn observe_ttft(&self, d: Duration) {
        lock(&self.ttft).observe(d.as_secs_f64());
    }

    pub fn observe_itl(&self, d: Duration) {
        lock(&self.itl).observe(d.as_secs_f64());
    }

    /// Counts one HTTP response by its status code.
    pub fn count_response(&self, status: u16) {
        let counter = match status {
            500.. => &self.requests_server_error,
            400..=499 => &self.requests_client_error,
            _ => &self.requests_ok,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP qinfer_http_requests_total HTTP responses by status class.\n\
             # TYPE qinfer_http_requests_total counter\n\
             qinfer_http_requests_total{{class=\"2xx\"}} {}\n\
             qinfer_http_requests_total{{class=\"4xx\"}} {}\n\
             qinfer_http_requests_total{{class=\"5xx\"}} {}",
            get(&self.requests_ok),
            get(&self.requests_client_error),
            get(&self.requests_server_error),
        );
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "qinfer_generation_requests_total",
                "Generation requests accepted by the scheduler.",
                &self.generations,
            ),
            (
                "qinfer_rejected_queue_full_total",
                "Requests refused with 429 because the queue was full.",
                &self.rejected_queue_full,
            ),
            (
                "qinfer_cancelled_requests_total",
                "Sequences freed because their client disconnected.",
                &self.cancelled,
            ),
            (
                "qinfer_prompt_tokens_total",
                "Prompt tokens of accepted requests.",
                &self.prompt_tokens,
            ),
            (
                "qinfer_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache.",
                &self.cached_prompt_tokens,
            ),
            (
                "qinfer_processed_prompt_tokens_total",
                "Prompt tokens computed by prefill (not served from the prefix cache).",
                &self.processed_prompt_tokens,
            ),
            (
                "qinfer_generation_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "qinfer_engine_steps_total",
                "Batched forward steps run.",
                &self.steps,
            ),
            (
                "qinfer_engine_step_tokens_total",
                "Tokens carried by all engine steps.",
                &self.step_tokens,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(value)
            );
        }
        let gauges: [(&str, &str, &AtomicU64); 3] = [
            (
                "qinfer_queue_depth",
                "Requests waiting for a sequence slot.",
                &self.queue_depth,
            ),
            (
                "qinfer_running_sequences",
                "Sequences holding a slot.",
                &self.running,
            ),
            (
                "qinfer_sequence_state_bytes",
                "Bytes of KV and DeltaNet state held by running sequences.",
                &self.state_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                get(value)
            );
        }
        lock(&self.ttft).render(
            &mut out,
            "qinfer_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
        );
        lock(&self.itl).render(
            &mut out,
            "qinfer_inter_token_latency_seconds",
            "Between consecutive generated tokens of one sequence.",
        );
        out
    }
}

/// The prompt cache's counters and gauges, in the exposition format.
pub fn render_prompt_cache(s: &qinfer_cache::CacheStats) -> String {
    let mut out = String::new();
    let counters = [
        (
            "qinfer_prompt_cache_lookups_total",
            "Prompts looked up in the prompt cache.",
            s.lookups,
        ),
        (
            "qinfer_prompt_cache_hits_total",
            "Lookups that resumed past position 0.",
            s.hits,
        ),
        (
            "qinfer_prompt_cache_misses_total",
            "Lookups that recomputed tokens the cache had seen, or found nothing.",
            s.misses,
        ),
        (
            "qinfer_prompt_cache_evictions_total",
            "Cache nodes (KV blocks, snapshots) evicted for the RAM budget.",
            s.evicted_nodes,
        ),
        (
            "qinfer_prompt_cache_snapshots_inserted_total",
            "Gated DeltaNet snapshots stored.",
            s.snapshots_inserted,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let gauges = [
        (
            "qinfer_prompt_cache_bytes",
            "Bytes held by the prompt cache (shared blocks once).",
            s.bytes,
        ),
        (
            "qinfer_prompt_cache_nodes",
            "KV blocks and tails held.",
            s.nodes,
        ),
        (
            "qinfer_prompt_cache_snapshots",
            "Gated DeltaNet snapshots held.",
            s.snapshots,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    out
}

fn lock(h: &Mutex<Histogram>) -> std::sync::MutexGuard<'_, Histogram> {
    // A panic while holding the lock cannot leave a histogram inconsistent in a way that
    // matters for monitoring, so a poisoned lock is used as is.
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
