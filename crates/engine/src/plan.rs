//! The memory plan: what a loaded model needs for a context — weights, KV cache and Gated
//! DeltaNet state per sequence, the prompt cache's budget, one engine step's activations — set
//! against the machine's memory (`qinfer fit`; the context `serve` and `run` choose when none
//! is given).
//!
//! Every figure is computed from the model as loaded (its weights' stored bytes, its layers'
//! state specs at the KV type in use), not from a table. Activations are bounded from the
//! widest buffers one step of `step_tokens` positions holds at once; `RUNTIME` covers the
//! program, its tokenizer and the allocator's retained memory (measured: see
//! docs/PERFORMANCE.md, "Memory plan").

use qinfer_cache::{KvType, LayerSpec};
use qinfer_model::config::FeedForwardConfig;
use qinfer_model::{ModelConfig, Qwen35};

/// The process without the model: code, the tokenizer's tables, allocator slack (bytes).
/// Measured: `qinfer bench` of the Qwen3.5-0.8B shape (Q4_K_M GGUF) peaks 45 MB above its
/// weights and state at depth 0, 69 MB at depth 32K.
pub const RUNTIME: u64 = 48 << 20;

/// What one configuration needs, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Every weight as held (tied embedding and LM head once).
    pub weights: u64,
    /// KV cache of one position, every attention layer, keys and values.
    pub kv_per_token: u64,
    /// One sequence's Gated DeltaNet conv windows and recurrent states.
    pub state_per_seq: u64,
    /// Positions per sequence.
    pub ctx: usize,
    /// Sequences held at once.
    pub max_seqs: usize,
    /// The prompt cache's RAM budget.
    pub cache_budget: u64,
    /// One engine step's activations at most.
    pub activations: u64,
    pub runtime: u64,
}

impl MemoryPlan {
    /// The plan for `model` (its KV type as set) at `ctx` positions per sequence, `max_seqs`
    /// sequences, a prompt cache of `cache_budget` bytes and steps of `step_tokens` positions.
    pub fn new(
        model: &Qwen35,
        ctx: usize,
        max_seqs: usize,
        cache_budget: u64,
        step_tokens: usize,
    ) -> Self {
        Self::for_config(
            &model.config,
            model.kv_type(),
            model.weight_bytes() as u64,
            ctx,
            max_seqs,
            cache_budget,
            step_tokens,
        )
    }

    /// The plan for a model described by `config` whose weights take `weights` bytes (a model
    /// not loaded: `qinfer fit --config`).
    pub fn for_config(
        config: &ModelConfig,
        kv_type: KvType,
        weights: u64,
        ctx: usize,
        max_seqs: usize,
        cache_budget: u64,
        step_tokens: usize,
    ) -> Self {
        let (mut kv_per_token, mut state_per_seq) = (0u64, 0u64);
        for spec in config.state_specs(kv_type) {
            match spec {
                LayerSpec::Attention { kv_width, kv_type } => {
                    kv_per_token += 2 * kv_type.row_bytes(kv_width) as u64
                }
                LayerSpec::DeltaNet {
                    conv_channels,
                    conv_kernel,
                    recurrent_len,
                } => {
                    state_per_seq +=
                        4 * (conv_kernel.saturating_sub(1) * conv_channels + recurrent_len) as u64
                }
            }
        }
        MemoryPlan {
            weights,
            kv_per_token,
            state_per_seq,
            ctx,
            max_seqs: max_seqs.max(1),
            cache_budget,
            activations: activation_bytes(config, step_tokens),
            runtime: RUNTIME,
        }
    }

    /// One sequence's KV cache at `ctx`.
    pub fn kv_per_seq(&self) -> u64 {
        self.kv_per_token.saturating_mul(self.ctx as u64)
    }

    /// Everything but the per-sequence memory (saturating: the cache budget comes from the
    /// command line).
    fn fixed(&self) -> u64 {
        self.weights
            .saturating_add(self.cache_budget)
            .saturating_add(self.activations)
            .saturating_add(self.runtime)
    }

    pub fn total(&self) -> u64 {
        let per_seq = self.kv_per_seq().saturating_add(self.state_per_seq);
        self.fixed()
            .saturating_add(per_seq.saturating_mul(self.max_seqs as u64))
    }

    /// The largest context, at most `limit`, whose plan fits in `available` bytes (0 when not
    /// even an empty context does).
    pub fn max_ctx(&self, available: u64, limit: usize) -> usize {
        let seqs = self.max_seqs as u64;
        let Some(left) = available
            .checked_sub(self.fixed())
            .and_then(|l| l.checked_sub(self.state_per_seq.saturating_mul(seqs)))
        else {
            return 0;
        };
        let per_position = self.kv_per_token.saturating_mul(seqs);
        if per_position == 0 {
            return limit;
        }
        usize::try_from(left / per_position).map_or(limit, |n| n.min(limit))
    }
}

/// One step's activations: per position the residual stream and its norms, the widest mixer
/// projection (attention q·gate, k, v or DeltaNet qkv, z, b, a), the feed-forward's gate, up
/// and product (MoE: the routed experts' and the shared one's), in `f32` plus their 8-bit
/// copies; and the logits of one position.
fn activation_bytes(c: &ModelConfig, step_tokens: usize) -> u64 {
    let a = c.attention;
    let d = c.deltanet;
    let q_rows = a.n_heads * a.head_dim * if a.output_gate { 2 } else { 1 };
    let attention = q_rows + 2 * a.n_kv_heads * a.head_dim + a.n_heads * a.head_dim;
    let deltanet = d.conv_dim() + 2 * d.value_dim() + 2 * d.n_v_heads;
    let ffn = match c.feed_forward {
        FeedForwardConfig::Dense { intermediate } => 3 * intermediate,
        FeedForwardConfig::Moe {
            top_k,
            expert_intermediate,
            shared_intermediate,
            n_experts,
            ..
        } => 3 * (top_k * expert_intermediate + shared_intermediate) + n_experts,
    };
    let per_position = (4 * c.hidden + attention.max(deltanet) + ffn) as u64 * 5;
    per_position * step_tokens as u64 + 4 * c.vocab as u64
}

/// The memory a model may take: `QINFER_MEMORY_LIMIT` (bytes) if set, else what the system
/// reports available (`MemAvailable`), if it does.
pub fn available_memory() -> Option<u64> {
    if let Some(v) = std::env::var("QINFER_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(v);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The context to run with when none is asked for: the model's whole context if it fits in
/// `available`, else the largest that does (at least one position). Returns it and whether it
/// had to be cut.
pub fn choose_ctx(plan: &MemoryPlan, available: Option<u64>, limit: usize) -> (usize, bool) {
    match available {
        None => (limit, false),
        Some(a) => {
            let fits = plan.max_ctx(a, limit);
            (fits.max(1), fits < limit)
        }
    }
}
