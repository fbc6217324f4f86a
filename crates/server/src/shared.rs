//! What the OpenAI and Anthropic routes share: sampling fields, the context check, submitting
//! to the scheduler, ids and timestamps.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use qinfer_engine::generate::GenerateOptions;
use qinfer_engine::sampler::SamplingParams;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, Protocol};
use crate::json::Fields;
use crate::scheduler::{Admission, ChannelSink, GenRequest, Out, RETRY_AFTER, SubmitError};
use crate::{AppState, Shared};

/// Reads the sampling fields both protocols share onto the model's defaults. `names` maps our
/// parameters to the protocol's spelling where it differs.
pub fn sampling(f: &Fields<'_>, base: &SamplingParams) -> Result<SamplingParams, ApiError> {
    let mut p = base.clone();
    if let Some(v) = f.f32("temperature")? {
        p.temperature = v;
    }
    if let Some(v) = f.f32("top_p")? {
        p.top_p = v;
    }
    if let Some(v) = f.usize("top_k")? {
        p.top_k = v;
    } else if let Some(v) = f.f32("top_k")? {
        // -1 means "off" in vLLM's API.
        if v < 0.0 {
            p.top_k = 0;
        }
    }
    if let Some(v) = f.f32("min_p")? {
        p.min_p = v;
    }
    if let Some(v) = f.f32("presence_penalty")? {
        p.presence_penalty = v;
    }
    if let Some(v) = f.f32("frequency_penalty")? {
        p.frequency_penalty = v;
    }
    if let Some(v) = f.f32("repetition_penalty")? {
        p.repetition_penalty = v;
    }
    if let Some(v) = f.seed("seed")? {
        p.seed = Some(v);
    }
    p.validate().map_err(|e| {
        let text = e.to_string();
        let param = [
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ]
        .into_iter()
        .find(|n| text.contains(n))
        .unwrap_or("temperature");
        ApiError::invalid(param, text)
    })?;
    Ok(p)
}

/// Texts longer than this are counted piece by piece before they are tokenized whole.
const COUNT_FIRST_BYTES: usize = 1 << 20;
/// The pieces of that count.
const COUNT_PIECE_BYTES: usize = 64 << 10;

/// Refuses a text that cannot fit the context before the cost of tokenizing it whole is spent:
/// by its length alone (more bytes than `ctx` tokens of the longest token hold), then, for a
/// text over [`COUNT_FIRST_BYTES`], by counting its tokens in pieces of
/// [`COUNT_PIECE_BYTES`] (cut at whitespace) and stopping as soon as they pass the context.
/// Tokenizing costs about 300 bytes of memory per byte of text (measured: 1.0 GB for 3.4 MB), so
/// a prompt is only ever tokenized whole when it holds at most `ctx` tokens.
pub fn check_prompt_fits(state: &AppState, text: &str) -> Result<(), String> {
    let ctx = state.config.ctx;
    if text.len() > state.prompt_byte_limit {
        return Err(format!(
            "the prompt is {} bytes: even at the tokenizer's longest token that is more than the \
             context of {ctx} tokens",
            text.len(),
        ));
    }
    if text.len() <= COUNT_FIRST_BYTES {
        return Ok(());
    }
    let (mut rest, mut counted, mut pieces) = (text, 0usize, 0usize);
    while !rest.is_empty() {
        let mut cut = rest.len().min(COUNT_PIECE_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut < rest.len()
            && let Some(ws) = rest[..cut].rfind(char::is_whitespace)
            && ws > cut / 2
        {
            cut = ws;
        }
        let (piece, tail) = rest.split_at(cut);
        counted += state
            .bundle
            .tokenizer
            .encode(piece)
            .map_err(|e| e.to_string())?
            .len();
        pieces += 1;
        // A cut can split what the whole text would merge: allow two tokens per cut.
        if counted > ctx + 2 * pieces {
            return Err(format!(
                "the prompt is more than {ctx} tokens (its first {} bytes are already {counted}): \
                 it cannot fit the context",
                text.len() - tail.len()
            ));
        }
        rest = tail;
    }
    Ok(())
}

/// Runs `plan` — template rendering and tokenizing, work that grows with the request — on the
/// blocking pool, never on the HTTP runtime's threads (so `/health` and every other route keep
/// answering while a large prompt is tokenized), at most [`crate::PLANNING_SLOTS`] at once. A
/// client that goes away meanwhile never reaches the engine.
pub async fn off_runtime<T: Send + 'static>(
    state: &Shared,
    plan: impl FnOnce(Shared) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = state
        .planning
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || plan(state))
        .await
        .unwrap_or_else(|e| {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("request planning failed: {e}"),
            ))
        })
}

/// The stop strings of field `name`, within the engine's limits (a 400 naming the field).
pub fn stop_strings(f: &Fields<'_>, name: &str) -> Result<Vec<String>, ApiError> {
    let stops = f.strings(name)?;
    qinfer_engine::sampler::check_stop_strings(&stops)
        .map_err(|e| ApiError::invalid(name, format!("`{name}`: {e}")))?;
    Ok(stops)
}

/// The output budget: `requested` if it fits after the prompt (of field `prompt_field`), else
/// a 400 with the numbers.
pub fn max_tokens(
    state: &AppState,
    prompt: usize,
    prompt_field: &str,
    requested: Option<usize>,
    field: &str,
) -> Result<usize, ApiError> {
    let ctx = state.config.ctx;
    if prompt >= ctx {
        return Err(ApiError::invalid(
            prompt_field,
            format!(
                "the prompt is {prompt} tokens, but the context length is {ctx}: at most {} \
                 prompt tokens leave room for one generated token",
                ctx - 1
            ),
        ));
    }
    // `n` comes from the client: any u64 (checked addition, never a wrap past the context).
    match requested {
        None => Ok(ctx - prompt),
        Some(n) if prompt.checked_add(n).is_some_and(|end| end <= ctx) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            field,
            format!(
                "`{field}` is {n}, but the prompt is {prompt} tokens and the context length is \
                 {ctx}: prompt + {field} exceeds it; at most {} new tokens fit",
                ctx - prompt
            ),
        )),
    }
}

/// Submits a generation; the first receiver yields its [`Out`] messages (dropping it cancels),
/// the second is told how the prompt cache served the prompt when the request is admitted.
/// `prompt_text` (the rendered prompt) lets the cache remember the exact ids of prompt +
/// answer.
pub fn submit_tracked(
    state: &AppState,
    prompt: Vec<u32>,
    prompt_text: Option<String>,
    opts: GenerateOptions,
    logprobs: Option<usize>,
    answer_prefix: Option<Vec<u32>>,
    protocol: Protocol,
) -> Result<
    (
        UnboundedReceiver<Out>,
        tokio::sync::oneshot::Receiver<Admission>,
    ),
    ApiError,
> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (admitted_tx, admitted_rx) = tokio::sync::oneshot::channel();
    let mut req = GenRequest::new(
        prompt,
        opts,
        ChannelSink {
            out: tx,
            admitted: Some(admitted_tx),
        },
    );
    req.logprobs = logprobs;
    req.answer_prefix = answer_prefix;
    req.prompt_text = prompt_text;
    match state.scheduler.submit(req) {
        Ok(()) => Ok((rx, admitted_rx)),
        Err(SubmitError::QueueFull) => {
            state
                .metrics
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the server is at capacity ({} running, {} queued); retry later",
                    state.config.scheduler.max_seqs, state.config.scheduler.max_queue
                ),
            )
            .with_protocol(protocol);
            e.retry_after = Some(RETRY_AFTER.as_secs().max(1));
            Err(e)
        }
        Err(SubmitError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
        .with_protocol(protocol)),
    }
}

/// A unique id with a protocol prefix (`chatcmpl-`, `msg_`, ...).
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}{:016x}{n:04x}",
        t ^ (n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    )
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The model check every generation route makes.
pub fn check_model(state: &AppState, f: &Fields<'_>, protocol: Protocol) -> Result<(), ApiError> {
    let model = f
        .required_str("model")
        .map_err(|e| e.with_protocol(protocol))?;
    if model != state.config.model_name {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model `{model}` does not exist; this server serves `{}`",
                state.config.model_name
            ),
        )
        .with_protocol(protocol);
        e.param = Some("model".into());
        return Err(e);
    }
    Ok(())
}

/// Tokenizes a rendered prompt: through the prompt cache when it is on (the ids of remembered
/// answers are kept, see [`qinfer_engine::prompt_cache::PromptCache::encode`]).
pub fn encode_prompt(state: &AppState, text: &str) -> Result<Vec<u32>, String> {
    check_prompt_fits(state, text)?;
    let tok = &state.bundle.tokenizer;
    match &state.prompt_cache {
        Some(c) => c.encode(tok, text),
        None => tok.encode(text),
    }
    .map_err(|e| e.to_string())
}

/// The response header naming why cached prompt tokens were computed again.
pub const CACHE_MISS_HEADER: &str = "x-qinfer-cache-miss";
/// The response header giving the prompt tokens served from the prompt cache.
pub const CACHED_TOKENS_HEADER: &str = "x-qinfer-cached-tokens";

/// Adds the prompt-cache headers of `admission` to `resp`.
pub fn cache_headers(resp: &mut axum::response::Response, admission: Option<&Admission>) {
    let Some(a) = admission else { return };
    let headers = resp.headers_mut();
    if let Ok(v) = axum::http::HeaderValue::from_str(&a.cached_tokens.to_string()) {
        headers.insert(CACHED_TOKENS_HEADER, v);
    }
    if let Some(miss) = &a.miss
        && let Ok(v) = axum::http::HeaderValue::from_str(miss)
    {
        headers.insert(CACHE_MISS_HEADER, v);
    }
}
