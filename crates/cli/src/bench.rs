//! `qinfer bench`: prompt-processing and generation speed, like `llama-bench`.
//!
//! Each repetition prefills `-p` random tokens into a fresh sequence (one engine step, logits
//! of the last position only), then separately generates `-n` tokens one at a time from a
//! fresh sequence (greedy, no stop, each step computing the full LM head), as `llama-bench`'s
//! `pp` and `tg` tests do. With `-d N` (several: `-d 0,4096,16384`) both tests start from a
//! sequence already holding `N` tokens of context (prefilled once per depth, untimed, and
//! copied for each repetition), as `llama-bench -d` does. Both run through the engine loop that serves every other command. Reported: mean ± standard deviation of tokens/s over `-r` repetitions (after
//! one untimed warm-up of each test), the bytes a decode step reads, the bandwidth that
//! implies, its share of the machine's read bandwidth (measured at start with the same threads
//! unless `--bandwidth` gives it), and the pool's synchronisation points per generated token.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use qinfer_cache::SequenceState;
use qinfer_engine::engine::{CacheHook, Ended, EngineModel, Request, Start, Summary};
use qinfer_engine::generate::{Flow, GenerateOptions, run_one};
use qinfer_engine::speculative::{DraftConfig, DraftStats};
use qinfer_model::Qwen35;
use qinfer_model::config::FeedForwardConfig;
use qinfer_tensor::Weight;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model directory or GGUF file.
    model: PathBuf,
    /// Prompt tokens per prefill test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens generated per generation test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    repetitions: usize,
    /// Worker threads (default: every CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// The machine's memory read bandwidth in GB/s, for the share of the limit (default:
    /// measured at start with the same threads, best of 5 reads of a 1 GiB buffer).
    #[arg(long)]
    bandwidth: Option<f64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Matmul precision: int8 (default) or exact.
    #[arg(long, default_value = "int8")]
    precision: String,
    #[command(flatten)]
    model_opts: crate::ModelOptions,
    /// Context depths: pp and tg measured after N tokens already in the sequence, for each N
    /// given (`-d 0,4096,16384`; default 0).
    #[arg(short = 'd', long = "n-depth", value_delimiter = ',', value_name = "N")]
    depth: Vec<usize>,
    /// Batched decode: N sequences generating `-n` tokens together through the engine loop,
    /// for each N given (`-b 1,4,16`): total and per-sequence tokens/s, and for MoE the mean
    /// distinct experts per layer per step; weight bytes read per step and per token.
    #[arg(short = 'b', long = "batch", value_delimiter = ',', value_name = "N")]
    batch: Vec<usize>,
    /// Images (PNG, JPEG, WebP or GIF) for the vision tower, each `-r` times after one warm-up:
    /// reading + preprocessing and encoding time per image, and the tokens it becomes (a model
    /// directory with a tower; its `preprocessor_config.json`, or the Qwen defaults).
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
}

/// One `--image` measurement.
#[derive(Debug)]
struct ImageRun {
    path: PathBuf,
    /// `(t, h, w)` in patches after the processor's resize.
    grid: [usize; 3],
    tokens: usize,
    /// Seconds per repetition: decode + resize + normalise + patchify, and the tower.
    preprocess: Vec<f64>,
    encode: Vec<f64>,
}

/// Times each `--image` through the processor and the tower.
fn image_runs(args: &BenchArgs, model: &Qwen35, path: &std::path::Path) -> Result<Vec<ImageRun>> {
    if args.images.is_empty() {
        return Ok(Vec::new());
    }
    let tower = model.vision.as_ref().with_context(|| {
        format!(
            "--image: {} has no vision tower (a model directory whose config has one)",
            path.display()
        )
    })?;
    let mut preprocess =
        qinfer_engine::images::preprocess_config_in(path).map_err(|e| anyhow::anyhow!(e))?;
    args.model_opts.image_pixels(&mut preprocess)?;
    let opts = qinfer_engine::images::ImageOptions {
        preprocess,
        limits: qinfer_vision::DecodeLimits::default(),
    };
    let mut out = Vec::new();
    for file in &args.images {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let (mut pre_s, mut enc_s) = (Vec::new(), Vec::new());
        let mut grid = [0; 3];
        for rep in 0..=args.repetitions.max(1) {
            let t0 = Instant::now();
            let img = qinfer_engine::images::read_image(&bytes, &opts)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let t1 = Instant::now();
            let rows = model.encode_image(&img.pixels, img.grid)?;
            let t2 = Instant::now();
            std::hint::black_box(rows);
            grid = img.grid;
            if rep > 0 {
                pre_s.push((t1 - t0).as_secs_f64());
                enc_s.push((t2 - t1).as_secs_f64());
            }
        }
        out.push(ImageRun {
            path: file.clone(),
            grid,
            tokens: tower.config.tokens_for(grid),
            preprocess: pre_s,
            encode: enc_s,
        });
    }
    Ok(out)
}

/// One `--batch` measurement.
#[derive(Debug, Clone)]
struct BatchRun {
    batch: usize,
    total_tok_s: f64,
    total_tok_s_std: f64,
    per_seq_tok_s: f64,
    /// MoE: the mean number of distinct experts a layer ran per step.
    experts_per_layer_step: Option<f64>,
    weight_bytes_per_step: f64,
    weight_bytes_per_token: f64,
}

/// A sink that only counts (the bench reads nothing but the time).
struct Quiet;

impl qinfer_engine::engine::Sink for Quiet {
    fn send(
        &mut self,
        _out: qinfer_engine::engine::Out,
    ) -> Result<(), qinfer_engine::engine::Gone> {
        Ok(())
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// `n` sequences (one-token prompts, pseudo-random so that they differ) generating `n_gen`
/// tokens each, together.
fn run_batch(model: &Qwen35, n: usize, n_gen: usize) -> f64 {
    let prompt = qinfer_model::pseudo_random_tokens(n, model.config.vocab as u32, 0x5EED_0B47);
    let config = qinfer_engine::engine::SchedulerConfig {
        max_seqs: n,
        max_queue: n,
        max_step_tokens: usize::MAX,
        prefill_chunk: usize::MAX,
    };
    let mut engine = qinfer_engine::engine::Engine::new(
        EngineModel::ids_only(model),
        config,
        CacheHook::default(),
        std::sync::Arc::default(),
    );
    for i in 0..n {
        let opts = GenerateOptions {
            max_tokens: n_gen,
            ignore_eos: true,
            ..GenerateOptions::default()
        };
        engine.submit(Request::new(vec![prompt[i]], opts, Quiet));
    }
    let t = Instant::now();
    engine.run_until_idle();
    (n * n_gen) as f64 / t.elapsed().as_secs_f64()
}

/// The `--batch` runs: the engine's decode of N sequences at once.
fn batch_runs(args: &BenchArgs, model: &Qwen35) -> Vec<BatchRun> {
    let n_gen = args.n_gen.max(1);
    args.batch
        .iter()
        .map(|&n| {
            let n = n.max(1);
            let mut samples = Vec::new();
            let mut experts = None;
            for rep in 0..=args.repetitions {
                let before = model.experts_touched();
                let tok_s = run_batch(model, n, n_gen);
                if rep > 0 {
                    samples.push(tok_s);
                    if let (Some((f0, e0)), Some((f1, e1))) = (before, model.experts_touched()) {
                        experts = Some((e1 - e0) as f64 / (f1 - f0).max(1) as f64);
                    }
                }
            }
            let s = stats(&samples);
            let per_step = weight_bytes_per_step(model, experts) as f64;
            BatchRun {
                batch: n,
                total_tok_s: s.mean,
                total_tok_s_std: s.std,
                per_seq_tok_s: s.mean / n as f64,
                experts_per_layer_step: experts,
                weight_bytes_per_step: per_step,
                weight_bytes_per_token: per_step / n as f64,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    mean: f64,
    std: f64,
}

fn stats(xs: &[f64]) -> Stats {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Stats {
        mean,
        std: var.sqrt(),
    }
}

fn bytes(w: &Weight) -> usize {
    w.bytes().len()
}

/// Weight bytes one decode step of one sequence reads (see [`weight_bytes_per_step`]).
fn weight_bytes_per_token(m: &Qwen35) -> usize {
    weight_bytes_per_step(m, None)
}

/// Weight bytes one decode step reads: every matrix once (the LM head included; for MoE the
/// router, the shared expert and `experts` average experts per layer — `top_k` for one
/// sequence), norms and small vectors as `f32`. The embedding contributes one row (it is the
/// LM head's bytes when tied).
fn weight_bytes_per_step(m: &Qwen35, experts: Option<f64>) -> usize {
    let top_k = match m.config.feed_forward {
        FeedForwardConfig::Moe { top_k, .. } => Some(top_k as f64),
        FeedForwardConfig::Dense { .. } => None,
    };
    let held = m.measure(&|w| bytes(w), 4, experts.or(top_k));
    // `measure` counts the embedding whole and a tied LM head not again.
    let embed = if m.config.tie_embeddings {
        0
    } else {
        bytes(&m.embed)
    };
    held - embed + m.embed.row_bytes()
}

/// Bytes of the DeltaNet recurrent and conv state, which a decode step reads and writes.
fn state_bytes(m: &Qwen35) -> usize {
    m.new_state().bytes()
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Prefills `prompt` after the `context` (tokens and the state holding them; none: a fresh
/// sequence), then generates `n` tokens greedily with no stop, through the engine loop
/// (drafting with the MTP head as `draft` says).
fn run_greedy(
    model: &Qwen35,
    context: Option<&(Vec<u32>, SequenceState)>,
    prompt: &[u32],
    n: usize,
    draft: DraftConfig,
) -> Result<(Ended, Summary)> {
    let opts = GenerateOptions {
        max_tokens: n,
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    let request = match context {
        None => Request::new(prompt.to_vec(), opts, ()),
        Some((tokens, state)) => {
            let mut r = Request::new([&tokens[..], prompt].concat(), opts, ());
            r.start = Some(Start {
                state: state.clone(),
                cached: tokens.len(),
            });
            r
        }
    };
    let mut em = EngineModel::ids_only(model);
    em.draft = draft;
    Ok(run_one(em, CacheHook::default(), request, &mut |_| {
        Flow::Continue
    })?)
}

/// `depth` tokens of context and the state holding them (none for depth 0).
fn context_at(model: &Qwen35, depth: usize) -> Result<Option<(Vec<u32>, SequenceState)>> {
    if depth == 0 {
        return Ok(None);
    }
    let tokens = qinfer_model::pseudo_random_tokens(depth, model.config.vocab as u32, 0xD3E9_7A11);
    // A request that brings an empty state of its own hands its sequence back.
    let (ended, _) = run_greedy(
        model,
        Some(&(Vec::new(), model.new_state())),
        &tokens,
        0,
        DraftConfig::none(),
    )?;
    let back = ended
        .sequence
        .context("the depth prefill did not hand its sequence back")?;
    anyhow::ensure!(
        back.tokens == tokens && back.state.pos() == depth,
        "the depth prefill holds {} of {depth} tokens",
        back.state.pos()
    );
    Ok(Some((tokens, back.state)))
}

/// The pp and tg tests at one depth.
#[derive(Debug, Default)]
struct DepthRun {
    depth: usize,
    pp: Vec<f64>,
    tg: Vec<f64>,
    /// Pool synchronisation points per generated token.
    regions_per_token: f64,
    /// The largest sequence state a test held.
    state_max: usize,
    /// `--draft mtp`: tg with drafts, and what the drafts did.
    tg_draft: Vec<f64>,
    drafts: DraftStats,
}

fn depth_run(args: &BenchArgs, model: &Qwen35, prompt: &[u32], depth: usize) -> Result<DepthRun> {
    let context = context_at(model, depth)?;
    let context = context.as_ref();
    let mut run = DepthRun {
        depth,
        ..DepthRun::default()
    };
    if args.n_prompt > 0 {
        for rep in 0..=args.repetitions {
            let t = Instant::now();
            let (ended, _) = run_greedy(model, context, prompt, 0, DraftConfig::none())?;
            let secs = t.elapsed().as_secs_f64();
            run.state_max = run.state_max.max(ended.state_bytes);
            if rep > 0 {
                run.pp.push(args.n_prompt as f64 / secs);
            }
        }
    }
    if args.n_gen > 0 {
        let first = prompt.first().copied().unwrap_or(1);
        for rep in 0..=args.repetitions {
            let regions = qinfer_cpu::pool::regions();
            let t = Instant::now();
            // The one-token prompt's step produces the first of the `n_gen` tokens, so the
            // test runs `n_gen` one-token steps.
            let (ended, _) = run_greedy(model, context, &[first], args.n_gen, DraftConfig::none())?;
            let secs = t.elapsed().as_secs_f64();
            run.state_max = run.state_max.max(ended.state_bytes);
            if rep > 0 {
                run.tg.push(args.n_gen as f64 / secs);
                run.regions_per_token =
                    (qinfer_cpu::pool::regions() - regions) as f64 / args.n_gen as f64;
            }
            if drafting(args, model) {
                let t = Instant::now();
                let (ended, summary) = run_greedy(
                    model,
                    context,
                    &[first],
                    args.n_gen,
                    args.model_opts.draft(),
                )?;
                let secs = t.elapsed().as_secs_f64();
                anyhow::ensure!(
                    ended.ids.len() == args.n_gen,
                    "the drafted run made {} of {} tokens",
                    ended.ids.len(),
                    args.n_gen
                );
                if rep > 0 {
                    run.tg_draft.push(args.n_gen as f64 / secs);
                    run.drafts.merge(&summary.drafts);
                }
            }
        }
    }
    Ok(run)
}

/// Whether the tg tests also run with MTP drafts (`--draft mtp` on a model with the head).
fn drafting(args: &BenchArgs, model: &Qwen35) -> bool {
    args.model_opts.draft_mode() == Some("mtp") && model.has_mtp()
}

/// Cost of a verification step of `k + 1` tokens (per-position states kept, then rewound to
/// one accepted token) relative to a one-token decode step, for `k = 1..=4`: the median over
/// `reps` of each, after a 64-token context. What speculative decoding's speed-up rests on.
fn verify_costs(model: &Qwen35, reps: usize) -> Result<Vec<(usize, f64)>> {
    let vocab = model.config.vocab as u32;
    let context = qinfer_model::pseudo_random_tokens(64, vocab, 0x7E51_F1ED);
    let mut state = model.new_state();
    model.forward(&context, &mut state, qinfer_model::Rows::None)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let tokens = qinfer_model::pseudo_random_tokens(5, vocab, 0x5EED);
    let mut one = Vec::new();
    for _ in 0..reps.max(3) {
        let mut s = state.clone();
        let t = Instant::now();
        model.forward(&tokens[..1], &mut s, qinfer_model::Rows::Last)?;
        one.push(t.elapsed().as_secs_f64());
    }
    let one = median(one);
    let mut out = Vec::new();
    for k in 1..=4 {
        let mut times = Vec::new();
        for _ in 0..reps.max(3) {
            let mut s = state.clone();
            let pos = s.pos();
            let t = Instant::now();
            model.step(&mut [qinfer_model::Span::tokens(&tokens[..k + 1], &mut s)
                .logits(qinfer_model::Rows::All)
                .keep_states(true)])?;
            model.rewind(&mut s, pos + 1)?;
            times.push(t.elapsed().as_secs_f64());
        }
        out.push((k, median(times) / one));
    }
    Ok(out)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let threads = qinfer_cpu::init_threads(args.threads);
    let precision = match args.precision.as_str() {
        "int8" => qinfer_cpu::MatmulPrecision::Int8,
        "exact" => qinfer_cpu::MatmulPrecision::Exact,
        p => anyhow::bail!("--precision must be int8 or exact, not {p}"),
    };
    let cpu = qinfer_cpu::Cpu::from_env().with_precision(precision);
    if let Some(b) = args.bandwidth {
        anyhow::ensure!(
            b.is_finite() && b > 0.0,
            "--bandwidth must be a positive number of GB/s, not {b}"
        );
    }
    args.model_opts.fetch(&args.model)?;
    let demo = crate::is_demo(&args.model);
    let path = &if demo {
        args.model.clone()
    } else {
        crate::resolve_model(&args.model)?
    };
    let started = Instant::now();
    let mut model = if demo {
        Ok(qinfer_engine::demo::demo_model())
    } else if crate::is_gguf(path) {
        Qwen35::load_gguf(path)
    } else {
        Qwen35::load_dir(path)
    }
    .and_then(|m| m.with_backend(std::sync::Arc::new(cpu)))
    .with_context(|| format!("cannot load model {}", path.display()))?;
    args.model_opts.apply(&mut model)?;
    let load_s = started.elapsed().as_secs_f64();
    // The model's size as read: the GGUF file, a checkpoint directory's safetensors files, or
    // (the built-in demo, unpacked in memory) its weights as held.
    let file_bytes: u64 = if demo {
        model.weight_bytes() as u64
    } else if path.is_file() {
        std::fs::metadata(path)?.len()
    } else {
        let mut total = 0u64;
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.path().extension().is_some_and(|e| e == "safetensors") {
                total = total.saturating_add(entry.metadata()?.len());
            }
        }
        total
    };
    let vocab = model.config.vocab as u32;
    // A fixed pseudo-random prompt, the same on every run.
    let prompt = qinfer_model::pseudo_random_tokens(args.n_prompt, vocab, 0x9E37_79B9);

    let depths = if args.depth.is_empty() {
        vec![0]
    } else {
        args.depth.clone()
    };
    if let Some(&d) = depths
        .iter()
        .find(|&&d| d.saturating_add(args.n_prompt.max(args.n_gen)) > model.config.max_positions)
    {
        anyhow::bail!(
            "-d {d} with -p {} / -n {} exceeds the model's context of {} tokens{}",
            args.n_prompt,
            args.n_gen,
            model.config.max_positions,
            model.config.context_hint()
        );
    }
    let runs: Vec<DepthRun> = depths
        .iter()
        .map(|&d| depth_run(args, &model, &prompt, d))
        .collect::<Result<_>>()?;
    // The largest sequence state (KV cache + DeltaNet state) any test held.
    let state_max = runs.iter().map(|r| r.state_max).max().unwrap_or(0);
    let (pp, tg, regions_per_token) = (&runs[0].pp, &runs[0].tg, runs[0].regions_per_token);
    let batches = batch_runs(args, &model);
    let image_runs = image_runs(args, &model, path)?;
    let verify = if args.model_opts.draft_mode() == Some("mtp") {
        verify_costs(&model, args.repetitions.max(5))?
    } else {
        Vec::new()
    };
    let draft_run = drafting(args, &model).then(|| {
        let r = &runs[0];
        let (plain, with) = (stats(&r.tg), stats(&r.tg_draft));
        (plain, with, r.drafts.clone())
    });
    let weight_bytes = weight_bytes_per_token(&model);
    let state = state_bytes(&model);
    // A decode step reads every weight once and reads + writes the recurrent state.
    let bytes_per_token = weight_bytes + 2 * state;
    let pp_s = stats(pp);
    let tg_s = stats(tg);
    let gbs = tg_s.mean * bytes_per_token as f64 / 1e9;
    // Before the bandwidth probe, whose buffer is not the model's.
    let peak = peak_rss_bytes();
    // The memory target: the file plus the largest state held, plus 10 %.
    let rss_limit = (file_bytes as f64 + state_max as f64) * 1.1;
    let (limit, measured) = match args.bandwidth {
        Some(b) => (b, false),
        None if args.n_gen > 0 => match crate::model_gpu() {
            Some(g) => (g.read_bandwidth_gb_s(), true),
            None => (qinfer_cpu::membw::read_bandwidth_gb_s(1 << 30, 5), true),
        },
        None => (f64::NAN, false),
    };
    let share = gbs / limit;
    let isa = format!("{:?}", cpu.isa());
    let device = model.backend().describe();
    // As stored: a Q8_0 request on rows not a multiple of 32 values stores BF16.
    let kv_type = model
        .state_specs()
        .iter()
        .find_map(|s| match *s {
            qinfer_cache::LayerSpec::Attention { kv_type, .. } => Some(kv_type),
            qinfer_cache::LayerSpec::DeltaNet { .. } => None,
        })
        .unwrap_or(model.kv_type());
    let mut out = std::io::stdout().lock();
    if args.json {
        let draft_json = draft_run.as_ref().map(|(plain, with, d)| {
            serde_json::json!({
                "tg_tok_s_plain": plain.mean,
                "tg_tok_s_draft": with.mean,
                "tg_tok_s_draft_std": with.std,
                "speedup": with.mean / plain.mean,
                "acceptance": d.acceptance(),
                "accepted_per_step": d.accepted as f64 / d.steps.max(1) as f64,
                "verification_steps": d.steps,
                "drafted": d.drafted,
                "accepted": d.accepted,
                "acceptance_per_depth": d.reached.iter().zip(&d.accepted_at)
                    .map(|(r, a)| *a as f64 / (*r).max(1) as f64).collect::<Vec<_>>(),
                "reached_per_depth": d.reached,
            })
        });
        let batch_json = batches
            .iter()
            .map(|b| {
                serde_json::json!({
                    "batch": b.batch,
                    "total_tok_s": b.total_tok_s,
                    "total_tok_s_std": b.total_tok_s_std,
                    "per_seq_tok_s": b.per_seq_tok_s,
                    "experts_per_layer_step": b.experts_per_layer_step,
                    "weight_bytes_per_step": b.weight_bytes_per_step,
                    "weight_bytes_per_token": b.weight_bytes_per_token,
                })
            })
            .collect::<Vec<_>>();
        let verify_json = verify
            .iter()
            .map(
                |(k, c)| serde_json::json!({"drafts": k, "tokens": k + 1, "relative_to_decode": c}),
            )
            .collect::<Vec<_>>();
        let images_json = image_runs
            .iter()
            .map(|r| {
                let (p, e) = (stats(&r.preprocess), stats(&r.encode));
                serde_json::json!({
                    "image": r.path.display().to_string(),
                    "grid_thw": r.grid,
                    "tokens": r.tokens,
                    "preprocess_s": p.mean,
                    "preprocess_s_std": p.std,
                    "encode_s": e.mean,
                    "encode_s_std": e.std,
                    "encode_samples": r.encode,
                })
            })
            .collect::<Vec<_>>();
        let v = serde_json::json!({
            "model": path.display().to_string(),
            "dtype": model.dtype().to_string(),
            "file_bytes": file_bytes,
            "params": model.parameter_count(),
            "threads": threads,
            "device": device,
            "isa": isa,
            "precision": args.precision,
            "kv_type": kv_type.name(),
            "load_s": load_s,
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "n_depth": runs[0].depth,
            "repetitions": args.repetitions,
            "pp_tok_s": pp_s.mean,
            "pp_tok_s_std": pp_s.std,
            "pp_samples": pp,
            "tg_tok_s": tg_s.mean,
            "tg_tok_s_std": tg_s.std,
            "tg_samples": tg,
            "weight_bytes_per_token": weight_bytes,
            "state_bytes": state,
            "bytes_per_token": bytes_per_token,
            "tg_bandwidth_gb_s": gbs,
            "bandwidth_limit_gb_s": limit,
            "bandwidth_limit_measured": measured,
            "bandwidth_share": share,
            "sync_points_per_token": regions_per_token,
            "peak_rss_bytes": peak,
            "state_bytes_max": state_max,
            "peak_rss_limit_bytes": rss_limit as u64,
            "depths": runs.iter().map(|r| {
                let (p, t) = (stats(&r.pp), stats(&r.tg));
                serde_json::json!({
                    "n_depth": r.depth,
                    "pp_tok_s": p.mean,
                    "pp_tok_s_std": p.std,
                    "pp_samples": r.pp,
                    "tg_tok_s": t.mean,
                    "tg_tok_s_std": t.std,
                    "tg_samples": r.tg,
                    "state_bytes_max": r.state_max,
                })
            }).collect::<Vec<_>>(),
            "draft": draft_json,
            "verify_cost": verify_json,
            "batch": batch_json,
            "images": images_json,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "model {} ({}, {:.2} GB file, {device}, {} threads, {isa}, {} precision, {kv_type} KV cache), loaded in {load_s:.2} s",
            path.display(),
            model.dtype(),
            file_bytes as f64 / 1e9,
            threads,
            args.precision
        )?;
        writeln!(out, "| test | t/s |")?;
        writeln!(out, "|---|---|")?;
        for r in &runs {
            let at = match r.depth {
                0 => String::new(),
                d => format!(" @ d{d}"),
            };
            let (p, t) = (stats(&r.pp), stats(&r.tg));
            if args.n_prompt > 0 {
                writeln!(
                    out,
                    "| pp{}{at} | {:.2} ± {:.2} |",
                    args.n_prompt, p.mean, p.std
                )?;
            }
            if args.n_gen > 0 {
                writeln!(
                    out,
                    "| tg{}{at} | {:.2} ± {:.2} |",
                    args.n_gen, t.mean, t.std
                )?;
            }
        }
        if args.n_gen > 0 {
            writeln!(
                out,
                "decode reads {:.1} MB/token ({:.1} MB weights + 2 × {:.1} MB state): {gbs:.1} GB/s, {:.0}% of {limit:.1} GB/s ({}); {regions_per_token:.0} sync points/token",
                bytes_per_token as f64 / 1e6,
                weight_bytes as f64 / 1e6,
                state as f64 / 1e6,
                share * 100.0,
                if measured {
                    "measured read bandwidth"
                } else {
                    "--bandwidth"
                }
            )?;
        }
        if let Some((plain, with, d)) = &draft_run {
            writeln!(out)?;
            writeln!(
                out,
                "| tg{} draft mtp | {:.2} ± {:.2} | ×{:.2} against tg without drafts ({:.2}) |",
                args.n_gen,
                with.mean,
                with.std,
                with.mean / plain.mean,
                plain.mean
            )?;
            let per_depth: Vec<String> = d
                .reached
                .iter()
                .zip(&d.accepted_at)
                .enumerate()
                .filter(|(_, (r, _))| **r > 0)
                .map(|(m, (r, a))| format!("{}: {:.2} ({r})", m + 1, *a as f64 / *r as f64))
                .collect();
            writeln!(
                out,
                "drafts: {} drafted, {} accepted ({:.1}%), {:.2} accepted per verification step ({} steps); acceptance per draft position (steps reaching it): {}",
                d.drafted,
                d.accepted,
                d.acceptance() * 100.0,
                d.accepted as f64 / d.steps.max(1) as f64,
                d.steps,
                per_depth.join(", ")
            )?;
        }
        if !verify.is_empty() {
            let v: Vec<String> = verify
                .iter()
                .map(|(k, c)| format!("{} tokens ×{c:.2}", k + 1))
                .collect();
            writeln!(
                out,
                "verification step cost relative to a 1-token decode step: {}",
                v.join(", ")
            )?;
        }
        if !batches.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "| batch (tg{}) | total t/s | per sequence t/s | experts / layer / step | weights MB / step | weights MB / token |",
                args.n_gen.max(1)
            )?;
            writeln!(out, "|---|---|---|---|---|---|")?;
            for b in &batches {
                writeln!(
                    out,
                    "| {} | {:.2} ± {:.2} | {:.2} | {} | {:.1} | {:.1} |",
                    b.batch,
                    b.total_tok_s,
                    b.total_tok_s_std,
                    b.per_seq_tok_s,
                    b.experts_per_layer_step
                        .map_or("- (dense)".to_string(), |e| format!("{e:.1}")),
                    b.weight_bytes_per_step / 1e6,
                    b.weight_bytes_per_token / 1e6,
                )?;
            }
        }
        if !image_runs.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "| image | patches (h × w) | tokens | read + preprocess ms | encode ms |"
            )?;
            writeln!(out, "|---|---|---|---|---|")?;
            for r in &image_runs {
                let (p, e) = (stats(&r.preprocess), stats(&r.encode));
                writeln!(
                    out,
                    "| {} | {} × {} | {} | {:.1} ± {:.1} | {:.1} ± {:.1} |",
                    r.path.display(),
                    r.grid[1],
                    r.grid[2],
                    r.tokens,
                    p.mean * 1e3,
                    p.std * 1e3,
                    e.mean * 1e3,
                    e.std * 1e3,
                )?;
            }
        }
        if let Some(p) = peak {
            writeln!(
                out,
                "peak RSS {:.3} GB = {:.0}% of file + largest state ({:.3} GB + {:.3} GB) + 10%",
                p as f64 / 1e9,
                p as f64 / rss_limit * 100.0,
                file_bytes as f64 / 1e9,
                state_max as f64 / 1e9,
            )?;
        }
    }
    Ok(())
}
