//! `qinfer serve`: the OpenAI- and Anthropic-compatible server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use qinfer_engine::prompt_cache::CacheOptions;
use qinfer_server::scheduler::SchedulerConfig;
use qinfer_server::{Server, ServerConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model directory, GGUF file, Hugging Face repo id in the local cache, or `demo`.
    model: PathBuf,
    /// Address to bind (localhost by default; use 0.0.0.0 to listen on every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require this key (`Authorization: Bearer KEY` or `x-api-key: KEY`) on every route but
    /// /health. Also read from QINFER_API_KEY (which keeps it out of `ps`).
    #[arg(long)]
    api_key: Option<String>,
    /// Sequences generated at once (continuous batching).
    #[arg(long, default_value_t = 16)]
    max_seqs: usize,
    /// Requests that may wait for a sequence slot; more get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Context length per sequence, prompt + output (default: the model's).
    #[arg(long)]
    ctx: Option<usize>,
    /// Tokens per engine step (decode tokens + prompt chunks).
    #[arg(long, default_value_t = 512)]
    step_tokens: usize,
    /// Prompts are processed in chunks of this many tokens, interleaved with decoding.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Reasoning budget for requests that set none: after this many thinking tokens `</think>`
    /// is inserted and the model answers (guards against endless thinking).
    #[arg(long)]
    max_reasoning_tokens: Option<usize>,
    /// The model's names (default: its directory or file name): the first is reported in
    /// responses, all are listed by /v1/models. Several: `--served-model-name a b` or `a,b`.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    served_model_name: Vec<String>,
    /// Answer 404 to a request naming a model not among --served-model-name (by default any
    /// name is served: one server, one model, whatever name a client's defaults send).
    #[arg(long)]
    strict_model_name: bool,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 32)]
    body_limit_mib: usize,
    /// Do not fetch images given as http(s) URLs (only inline `data:` / base64 images are
    /// accepted; a URL gets a 400).
    #[arg(long)]
    no_image_urls: bool,
    /// Seconds in-flight requests may run after Ctrl-C / SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Worker threads for the model (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    model_opts: crate::ModelOptions,
    /// RAM budget of the prompt cache (KV blocks + Gated DeltaNet snapshots shared by every
    /// request), GB; 0 turns the cache off.
    #[arg(long, value_name = "GB", default_value_t = 4.0)]
    cache_ram: f64,
    /// Keep the prompt cache in DIR across restarts: loaded at start (a damaged file or one
    /// for another model is ignored with a warning), written at shutdown.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
    /// Tests of real agents only: script the model's answers (a JSON object of tool name →
    /// arguments: a request offering one of those tools calls it, one answering a tool result
    /// says `Done.`).
    #[arg(long, hide = true, value_name = "JSON")]
    test_script_tool_calls: Option<String>,
}

/// The model id for `arg`: `qinfer-demo`, or the last path component.
pub fn model_name(arg: &std::path::Path) -> String {
    if crate::is_demo(arg) {
        return "qinfer-demo".into();
    }
    let name = arg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.display().to_string());
    name.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(name)
}

pub fn serve(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let bundle = Arc::new(crate::load_bundle(
        &args.model,
        args.threads,
        &args.model_opts,
    )?);
    let mut names: Vec<String> = args
        .served_model_name
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        names.push(model_name(&args.model));
    }
    let name = names[0].clone();
    let mut config = ServerConfig::for_bundle(&bundle, name.clone());
    config.aliases = names[1..].to_vec();
    config.strict_model_name = args.strict_model_name;
    config.image_urls = !args.no_image_urls;
    config.api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("QINFER_API_KEY").ok())
        .filter(|k| !k.is_empty());
    match args.ctx {
        Some(ctx) => config.ctx = ctx,
        None => {
            // The model's context if it fits the memory with --max-seqs sequences and the
            // prompt cache, else the largest that does.
            // On a GPU: its memory, which the prompt cache (host RAM) does not use.
            let limit = bundle.model.config.max_positions;
            let gpu = crate::model_device_memory();
            let cache = if gpu.is_some() {
                0.0
            } else {
                args.cache_ram.max(0.0)
            };
            let plan = qinfer_engine::plan::MemoryPlan::new(
                &bundle.model,
                limit,
                args.max_seqs,
                (cache * 1e9) as u64,
                args.step_tokens.max(1),
            );
            let available = gpu.or_else(qinfer_engine::plan::available_memory);
            let (ctx, cut) = qinfer_engine::plan::choose_ctx(&plan, available, limit);
            if cut {
                tracing::warn!(
                    ctx,
                    model_ctx = limit,
                    max_seqs = args.max_seqs,
                    available_bytes = available,
                    "the model's context does not fit the memory for --max-seqs sequences: \
                     serving the largest that does (see `qinfer fit`; --ctx sets it)"
                );
            } else {
                tracing::info!(ctx, "context: the model's, which fits the memory");
            }
            config.ctx = ctx;
        }
    }
    config.body_limit = args.body_limit_mib.max(1) * 1024 * 1024;
    config.prompt_cache = (args.cache_ram > 0.0).then(|| CacheOptions {
        budget_bytes: (args.cache_ram * 1e9) as usize,
        snapshot_every: None,
        dir: args.cache_dir.clone(),
    });
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    if let Some(script) = &args.test_script_tool_calls {
        match serde_json::from_str(script) {
            Ok(serde_json::Value::Object(m)) => config.scripted_tool_calls = Some(m),
            _ => anyhow::bail!(
                "--test-script-tool-calls must be a JSON object of tool name → arguments"
            ),
        }
        tracing::warn!("answers are scripted (--test-script-tool-calls): for agent tests only");
    }
    config.default_reasoning_budget = args.max_reasoning_tokens;
    config.scheduler = SchedulerConfig {
        max_seqs: args.max_seqs.max(1),
        max_queue: args.max_queue,
        max_step_tokens: args.step_tokens.max(1),
        prefill_chunk: args.prefill_chunk.max(1),
    };
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (args.host.as_str(), args.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|_| anyhow::anyhow!("cannot resolve --host {}", args.host))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() && config.api_key.is_none() {
            tracing::warn!(
                address = %local,
                "listening beyond this machine without --api-key: anyone who can reach it can use it"
            );
        }
        let server = Server::new(bundle, config);
        // A second Ctrl-C / SIGTERM ends the grace at once: what still runs is cancelled now
        // (reported as cut off) and shutdown completes.
        let state = server.state.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            shutdown_signal().await;
            tracing::info!("second signal: ending the grace");
            state.end_grace.notify_one();
        });
        tracing::info!(
            model = name,
            address = %local,
            max_seqs = args.max_seqs,
            ctx = server.state.config.ctx,
            auth = server.state.config.api_key.is_some(),
            "listening"
        );
        server.serve(listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
