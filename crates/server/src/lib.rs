//! `qinfer serve`: OpenAI- and Anthropic-compatible HTTP on top of a continuous-batching
//! engine thread.
//!
//! ```text
//! HTTP (axum, tokio workers)                      engine thread (qinfer-engine, owns the model)
//!   openai.rs / anthropic.rs                        scheduler.rs → engine.rs
//!     parse + validate the request (json.rs)          plan tokens per sequence per step
//!     render the chat template, tokenize              Qwen35::step
//!     submit a GenRequest ───── command channel ───▶  Decoder::step per logits row
//!     map Out messages to JSON / SSE ◀── per-request channel ── Out::Token / Done / Failed
//! ```
//!
//! This crate is the only place that knows HTTP and the wire types. The engine knows nothing
//! of it: it sees token ids, [`GenerateOptions`](qinfer_engine::generate::GenerateOptions) and a
//! [`Sink`](qinfer_engine::engine::Sink), which `scheduler.rs` implements for a tokio channel.
//! Dropping the receiving end of that channel (a disconnected client, a dropped handler
//! future) is the cancellation signal.

pub mod anthropic;
pub mod error;
mod images;
pub mod json;
pub mod metrics;
pub mod openai;
pub mod responses;
pub mod scheduler;
mod shared;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use qinfer_engine::generate::ModelBundle;
use qinfer_engine::prompt_cache::{CacheOptions, PromptCache};
use serde_json::json;

use crate::error::{ApiError, Protocol};
use crate::json::{Fields, JsonBody};
use crate::metrics::Metrics;
use crate::scheduler::{Scheduler, SchedulerConfig};

/// How long after the shutdown grace connections still open are kept, for the responses of
/// the requests cut off at its end to be written.
pub const CLOSE_AFTER_GRACE: Duration = Duration::from_millis(500);

/// Everything `qinfer serve` can set.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The model id the server reports (`GET /v1/models`, every response's `model`).
    pub model_name: String,
    /// More names the model is listed under and answers to (`--served-model-name a b`).
    pub aliases: Vec<String>,
    /// Refuse (404) a request naming another model. Off by default: a server serves one
    /// model, so it answers to whatever name a client's default configuration sends.
    pub strict_model_name: bool,
    /// When set, every route but `/health` needs it (Bearer or `x-api-key`).
    pub api_key: Option<String>,
    /// Context length per sequence (prompt + output); at most the model's.
    pub ctx: usize,
    /// Largest request body accepted, bytes.
    pub body_limit: usize,
    /// How long in-flight requests may run after a shutdown signal before they are cancelled.
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers; a connection that sends part
    /// of them and stalls is closed.
    pub header_read_timeout: Duration,
    /// Reasoning budget for requests that set none (guards against endless thinking).
    pub default_reasoning_budget: Option<usize>,
    pub scheduler: SchedulerConfig,
    /// The prompt cache shared by all requests; `None` turns it off.
    pub prompt_cache: Option<CacheOptions>,
    /// Fetch images given as http(s) URLs (`--no-image-urls` turns it off: only inline
    /// images are accepted).
    pub image_urls: bool,
    /// Tests of real agents only (`--test-script-tool-calls`, hidden): the model's answers are
    /// scripted instead of sampled ([`shared::scripted_answer`]).
    pub scripted_tool_calls: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ServerConfig {
    /// Defaults for `bundle`: its full context, no key, 16 sequences.
    pub fn for_bundle(bundle: &ModelBundle, model_name: impl Into<String>) -> Self {
        ServerConfig {
            model_name: model_name.into(),
            aliases: Vec::new(),
            strict_model_name: false,
            api_key: None,
            ctx: bundle.model.config.max_positions,
            body_limit: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            default_reasoning_budget: None,
            scheduler: SchedulerConfig::default(),
            prompt_cache: Some(CacheOptions {
                budget_bytes: DEFAULT_CACHE_BYTES,
                snapshot_every: None,
                dir: None,
            }),
            image_urls: true,
            scripted_tool_calls: None,
        }
    }
}

/// The prompt cache's default RAM budget (`--cache-ram`).
pub const DEFAULT_CACHE_BYTES: usize = 4 << 30;

/// State shared by every handler.
#[derive(Debug)]
pub struct AppState {
    pub bundle: Arc<ModelBundle>,
    pub config: ServerConfig,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    /// The prompt cache, when on.
    pub prompt_cache: Option<Arc<PromptCache>>,
    /// When the server started (the `created` of `/v1/models`).
    pub started: u64,
    /// Longest prompt text, in bytes, that could fit the context: `ctx` tokens of the
    /// tokenizer's longest token. Longer texts are refused before they are tokenized.
    pub prompt_byte_limit: usize,
    /// Requests being rendered and tokenized at once (off the HTTP runtime), at most
    /// [`PLANNING_SLOTS`]: what requests cost before they reach the engine is bounded by that
    /// many bodies, whatever arrives.
    pub planning: tokio::sync::Semaphore,
    /// Ends the shutdown grace at once ([`Server::serve`]): a second Ctrl-C / SIGTERM.
    pub end_grace: tokio::sync::Notify,
    /// Responses stored for `previous_response_id` and `GET /v1/responses/{id}`.
    pub responses: std::sync::Mutex<responses::Store>,
}

/// Requests rendered and tokenized at once.
pub const PLANNING_SLOTS: usize = 2;

pub type Shared = Arc<AppState>;

/// A running server: the engine thread and the shared state.
#[derive(Debug)]
pub struct Server {
    pub state: Shared,
    engine: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts the engine thread for `bundle`.
    pub fn new(bundle: Arc<ModelBundle>, mut config: ServerConfig) -> Self {
        config.ctx = config.ctx.clamp(1, bundle.model.config.max_positions);
        let metrics = Arc::new(Metrics::default());
        let prompt_cache = config
            .prompt_cache
            .clone()
            .map(|opts| Arc::new(PromptCache::new(&bundle.model, opts)));
        if let Some(note) = prompt_cache.as_ref().and_then(|c| c.load_note.as_ref()) {
            tracing::warn!("{note}; starting with an empty prompt cache");
        }
        let (scheduler, engine) = Scheduler::start(
            bundle.clone(),
            config.scheduler.clone(),
            metrics.engine.clone(),
            prompt_cache.clone(),
        );
        let prompt_byte_limit = config
            .ctx
            .saturating_mul(bundle.tokenizer.max_token_bytes());
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Server {
            state: Arc::new(AppState {
                bundle,
                config,
                scheduler,
                metrics,
                prompt_cache,
                started,
                prompt_byte_limit,
                planning: tokio::sync::Semaphore::new(PLANNING_SLOTS),
                end_grace: tokio::sync::Notify::new(),
                responses: std::sync::Mutex::new(responses::Store::default()),
            }),
            engine: Some(engine),
        }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves; then refuses new generations, lets
    /// in-flight ones finish for up to `shutdown_grace`, cancels the rest (they end as cut off:
    /// `length` / `max_tokens`), and returns once every connection is closed and the engine
    /// thread has ended — or, at the latest, [`CLOSE_AFTER_GRACE`] after the grace: a
    /// connection still open then (a half-sent request, a client that stopped reading) is
    /// dropped, so shutdown always completes.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let scheduler = self.state.scheduler.clone();
        let grace = self.state.config.shutdown_grace;
        let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<()>();
        let state = self.state.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            scheduler.drain();
            let stopper = scheduler.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {}
                    _ = state.end_grace.notified() => {}
                }
                tracing::info!("grace period over: cancelling what still runs");
                stopper.stop();
                tokio::time::sleep(CLOSE_AFTER_GRACE).await;
                let _ = deadline_tx.send(());
            });
        };
        let app = self.router();
        let header_timeout = self.state.config.header_read_timeout;
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut signal = std::pin::pin!(signal);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, then accept again.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended");
                        }
                    });
                }
                _ = &mut signal => break,
            }
        }
        drop(listener);
        let result = tokio::select! {
            _ = graceful.shutdown() => Ok(()),
            _ = deadline_rx => {
                tracing::info!("closing the connections still open");
                Ok(())
            }
        };
        self.state.scheduler.stop();
        if let Some(engine) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        }
        if let Some(cache) = self.state.prompt_cache.clone() {
            // The disk tier (`--cache-dir`): a restarted server starts from this file.
            let saved = tokio::task::spawn_blocking(move || cache.save()).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "could not save the prompt cache");
            }
        }
        result
    }

    /// Binds `addr` and serves in a background task (tests, benchmarks). Returns the bound
    /// address and a handle whose `shutdown` stops the server.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, ServerHandle)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = rx.await;
        }));
        Ok((
            local,
            ServerHandle {
                stop: Some(tx),
                task,
            },
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.scheduler.stop();
    }
}

/// Stops a server started with [`Server::spawn`].
#[derive(Debug)]
pub struct ServerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// Signals shutdown and waits for the server to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap_or(Ok(()))
    }
}

fn router(state: Shared) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), log))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Logs each request and counts its response.
async fn log(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    state.metrics.count_response(status);
    tracing::info!(
        %method,
        path,
        status,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// Requires the API key on every route but `/` and `/health`, when one is set.
async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(req).await;
    };
    let open = matches!(req.uri().path(), "/" | "/health");
    if open || presented_key_matches(req.headers(), key) {
        return next.run(req).await;
    }
    let protocol = Protocol::of_path(req.uri().path());
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or invalid API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
    )
    .with_protocol(protocol)
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

fn presented_key_matches(headers: &HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    // Evaluate both so the time taken does not depend on which header was sent.
    let a = bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), key.as_bytes()));
    let b = x_api_key.is_some_and(|x| constant_time_eq(x.as_bytes(), key.as_bytes()));
    a | b
}

/// Compares without an early exit: the time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// A known route asked with another method: a 405 with an error body in the route's protocol.
async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {}", req.uri().path(), req.method()),
    )
    .with_protocol(Protocol::of_path(req.uri().path()))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
    .with_protocol(Protocol::of_path(req.uri().path()))
}

/// `GET /` and `HEAD /`: clients probe the base URL before their first request.
async fn root(State(state): State<Shared>) -> Response {
    axum::Json(json!({"name": "qinfer", "model": state.config.model_name})).into_response()
}

async fn health(State(state): State<Shared>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "model": state.config.model_name,
        "running": state.metrics.engine.running.load(std::sync::atomic::Ordering::Relaxed),
        "queued": state.metrics.engine.queue_depth.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    let mut text = state.metrics.render();
    if let Some(cache) = &state.prompt_cache {
        text.push_str(&metrics::render_prompt_cache(&cache.stats()));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

impl ServerConfig {
    /// Every name the model answers to, the reported one first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.model_name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// Whether a request naming `model` is served (any name, unless strict).
    pub fn serves(&self, model: &str) -> bool {
        !self.strict_model_name || self.names().any(|n| n == model)
    }
}

fn model_object(state: &AppState, id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "object": "model",
        "created": state.started,
        "owned_by": "qinfer",
        "max_model_len": state.config.ctx,
    })
}

async fn models(State(state): State<Shared>) -> Response {
    let data: Vec<_> = state
        .config
        .names()
        .map(|n| model_object(&state, n))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn model_by_id(
    State(state): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if state.config.names().any(|n| n == id) {
        axum::Json(model_object(&state, &id)).into_response()
    } else if state.config.serves(&id) {
        axum::Json(model_object(&state, &state.config.model_name)).into_response()
    } else {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model `{id}` does not exist"),
        );
        e.param = Some("model".into());
        e.into_response()
    }
}

/// `POST /tokenize`: `{"prompt": "text"}` or `{"messages": [...]}` (rendered through the chat
/// template) → `{"tokens": [...], "count": n}`.
async fn tokenize(State(state): State<Shared>, JsonBody(body): JsonBody) -> Response {
    let run = move |state: Shared| -> Result<serde_json::Value, ApiError> {
        let f = Fields::new(&body, "");
        let (text, pending) = if f.get("messages").is_some() {
            let r = openai::render_chat(&state, &body)?;
            (r.text, r.images)
        } else {
            match f.str("prompt")? {
                Some(t) => (t.to_string(), Vec::new()),
                None => return Err(f.missing("prompt")),
            }
        };
        shared::check_prompt_fits(&state, &text)
            .map_err(|e| ApiError::context_exceeded("prompt", e))?;
        let tokens = state
            .bundle
            .tokenizer
            .encode(&text)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
        // Each image counts as the tokens it becomes.
        let read = images::read_all(&state, pending)?;
        let (tokens, placed) = images::place(&state, tokens, read)?;
        Ok(json!({
            "count": tokens.len(),
            "tokens": tokens,
            "image_tokens": placed
                .iter()
                .map(|i| state.bundle.model.vision.as_ref().map_or(0, |t| t.config.tokens_for(i.grid)))
                .sum::<usize>(),
            "max_model_len": state.config.ctx
        }))
    };
    match shared::off_runtime(&state, run).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /detokenize`: `{"tokens": [...]}` → `{"prompt": "text"}`.
async fn detokenize(State(state): State<Shared>, JsonBody(body): JsonBody) -> Response {
    let run = || -> Result<serde_json::Value, ApiError> {
        let f = Fields::new(&body, "");
        let arr = f.array("tokens")?.ok_or_else(|| f.missing("tokens"))?;
        // Every id the model can emit (its embedding may have more rows than the tokenizer
        // has tokens; those decode to nothing).
        let vocab = state
            .bundle
            .model
            .config
            .vocab
            .max(state.bundle.tokenizer.vocab_size());
        let mut ids = Vec::with_capacity(arr.len());
        for (i, v) in arr.iter().enumerate() {
            match v.as_u64() {
                Some(id) if (id as usize) < vocab => ids.push(id as u32),
                _ => {
                    return Err(ApiError::invalid(
                        format!("tokens[{i}]"),
                        format!("`tokens[{i}]` must be a token id below {vocab}, not {v}"),
                    ));
                }
            }
        }
        let text = state
            .bundle
            .tokenizer
            .decode(&ids, false)
            .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
        Ok(json!({"prompt": text}))
    };
    match run() {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
