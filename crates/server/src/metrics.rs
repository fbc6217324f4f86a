//! Counters, gauges and histograms, rendered in the Prometheus text format for `GET /metrics`.
//!
//! A handful of atomics and two histograms: the engine thread ([`Counters`]) and the HTTP
//! tasks update them, `/metrics` reads them. No registry crate: the exposition format is a few lines
//! of text, and owning it keeps the dependency set small.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qinfer_engine::counters::{Counters, Histogram};

fn render_histogram(h: &Histogram, out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in h.bounds.iter().zip(&h.counts) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
}

/// The server's metrics: the HTTP side's counters and the engine loop's [`Counters`], which
/// the engine thread bumps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP responses by class.
    pub requests_ok: AtomicU64,
    pub requests_client_error: AtomicU64,
    pub requests_server_error: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected_queue_full: AtomicU64,
    pub engine: Arc<Counters>,
}
impl Metrics {
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
        let e = &*self.engine;
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
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "qinfer_generation_requests_total",
                "Generation requests accepted by the scheduler.",
                &e.generations,
            ),
            (
                "qinfer_rejected_queue_full_total",
                "Requests refused with 429 because the queue was full.",
                &self.rejected_queue_full,
            ),
            (
                "qinfer_cancelled_requests_total",
                "Sequences freed because their client disconnected.",
                &e.cancelled,
            ),
            (
                "qinfer_prompt_tokens_total",
                "Prompt tokens of accepted requests.",
                &e.prompt_tokens,
            ),
            (
                "qinfer_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache.",
                &e.cached_prompt_tokens,
            ),
            (
                "qinfer_processed_prompt_tokens_total",
                "Prompt tokens computed by prefill (not served from the prefix cache).",
                &e.processed_prompt_tokens,
            ),
            (
                "qinfer_generation_tokens_total",
                "Tokens generated.",
                &e.generated_tokens,
            ),
            (
                "qinfer_draft_tokens_total",
                "Speculative decoding: draft tokens proposed by the MTP head and verified.",
                &e.drafted_tokens,
            ),
            (
                "qinfer_draft_accepted_tokens_total",
                "Speculative decoding: draft tokens the model's own choice confirmed.",
                &e.accepted_tokens,
            ),
            (
                "qinfer_engine_steps_total",
                "Batched forward steps run.",
                &e.steps,
            ),
            (
                "qinfer_engine_step_tokens_total",
                "Tokens carried by all engine steps.",
                &e.step_tokens,
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
                &e.queue_depth,
            ),
            (
                "qinfer_running_sequences",
                "Sequences holding a slot.",
                &e.running,
            ),
            (
                "qinfer_sequence_state_bytes",
                "Bytes of KV and DeltaNet state held by running sequences.",
                &e.state_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                get(value)
            );
        }
        render_histogram(
            &e.ttft(),
            &mut out,
            "qinfer_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
        );
        render_histogram(
            &e.itl(),
            &mut out,
            "qinfer_inter_token_latency_seconds",
            "Between consecutive generated tokens of one sequence.",
        );
        if let Some(h) = e.experts() {
            render_histogram(
                &h,
                &mut out,
                "qinfer_moe_experts_per_layer_step",
                "MoE: distinct experts a layer ran in one engine step (mean over layers).",
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The experts histogram is rendered once an MoE step recorded one, in Prometheus's
    /// cumulative buckets; a dense model's metrics do not name it.
    #[test]
    fn experts_histogram_appears_for_moe_steps() {
        let m = Metrics::default();
        assert!(!m.render().contains("qinfer_moe_experts_per_layer_step"));
        m.engine.observe_experts(3.0);
        m.engine.observe_experts(8.0);
        let text = m.render();
        for line in [
            "# TYPE qinfer_moe_experts_per_layer_step histogram",
            "qinfer_moe_experts_per_layer_step_bucket{le=\"2\"} 0",
            "qinfer_moe_experts_per_layer_step_bucket{le=\"4\"} 1",
            "qinfer_moe_experts_per_layer_step_bucket{le=\"8\"} 2",
            "qinfer_moe_experts_per_layer_step_bucket{le=\"+Inf\"} 2",
            "qinfer_moe_experts_per_layer_step_sum 11",
            "qinfer_moe_experts_per_layer_step_count 2",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
