//! `qinfer fit MODEL`: the memory plan of a model at a context, against this machine's memory
//! ([`qinfer_engine::plan`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use qinfer_engine::plan::{MemoryPlan, available_memory};

#[derive(Args, Debug)]
pub struct FitArgs {
    /// Model directory, GGUF file, or a Hugging Face repo id in the local cache; with
    /// --weights, a config.json (or a directory holding one) alone: a model not downloaded.
    model: PathBuf,
    /// Plan from the configuration alone, its weights taken as this `qinfer quantize` type
    /// (its average bits per weight × the parameter count), e.g. Q4_K_M.
    #[arg(long, value_parser = crate::quantize::parse_type, value_name = "TYPE")]
    weights: Option<qinfer_model::export::FileType>,
    /// Context per sequence (default: the model's, YaRN included).
    #[arg(long)]
    ctx: Option<usize>,
    /// Sequences held at once (`serve --max-seqs`).
    #[arg(long, default_value_t = 1)]
    max_seqs: usize,
    /// The prompt cache's RAM budget, GB (`serve --cache-ram`; `run` has none).
    #[arg(long, value_name = "GB", default_value_t = 0.0)]
    cache_ram: f64,
    /// Positions per engine step (`serve --step-tokens`).
    #[arg(long, default_value_t = 512)]
    step_tokens: usize,
    #[command(flatten)]
    model_opts: crate::ModelOptions,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn fit(args: FitArgs) -> Result<()> {
    // Host memory is what `fit` plans against (`--device cpu`, the default here); wgpu does
    // not report a GPU's memory, so a GPU plan is refused rather than guessed.
    let device = match args.model_opts.device_for_fit() {
        crate::DeviceChoice::Cpu => "cpu",
        d => anyhow::bail!(
            "qinfer fit --device {}: fit plans host memory (--device cpu); a GPU's memory is not reported by its driver through wgpu — the weights, KV and state sizes in the table are the same on a GPU",
            d.name()
        ),
    };
    anyhow::ensure!(
        args.cache_ram.is_finite() && args.cache_ram >= 0.0,
        "--cache-ram must be a number of GB, not {}",
        args.cache_ram
    );
    let (config, kv_type, weights) = match args.weights {
        Some(ty) => {
            let path = if args.model.is_dir() {
                args.model.join("config.json")
            } else {
                args.model.clone()
            };
            let raw = qinfer_formats::hf_config::RawConfig::from_file(&path)?;
            let mut config = qinfer_model::ModelConfig::from_hf(&raw)
                .with_context(|| path.display().to_string())?;
            args.model_opts.apply_config(&mut config)?;
            let weights = config.parameter_count() as f64 * ty.bits_per_weight() / 8.0;
            (config, args.model_opts.resolve()?, weights as u64)
        }
        None => {
            let model = if crate::is_demo(&args.model) {
                let mut model = qinfer_engine::demo::demo_model();
                args.model_opts.apply(&mut model)?;
                model
            } else {
                crate::generate::load_model(&args.model, None, &args.model_opts)?.0
            };
            let w = model.weight_bytes() as u64;
            (model.config.clone(), model.kv_type(), w)
        }
    };
    let limit = config.max_positions;
    let ctx = args.ctx.unwrap_or(limit);
    if ctx > limit {
        anyhow::bail!(
            "--ctx {ctx} exceeds the model's context of {limit} tokens{}",
            config.context_hint()
        );
    }
    let plan = MemoryPlan::for_config(
        &config,
        kv_type,
        weights,
        ctx,
        args.max_seqs,
        (args.cache_ram * 1e9) as u64,
        args.step_tokens.max(1),
    );
    let available = available_memory();
    let max_ctx = available.map(|a| plan.max_ctx(a, limit));
    // As stored: a type a layer's rows cannot hold falls back (`KvType::for_width`).
    let kv = kv_type
        .for_width(config.attention.n_kv_heads * config.attention.head_dim)
        .name();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "device": device,
            "ctx": ctx,
            "max_seqs": plan.max_seqs,
            "kv_type": kv,
            "weights_bytes": plan.weights,
            "kv_bytes_per_token": plan.kv_per_token,
            "kv_bytes_per_seq": plan.kv_per_seq(),
            "state_bytes_per_seq": plan.state_per_seq,
            "cache_bytes": plan.cache_budget,
            "activation_bytes": plan.activations,
            "runtime_bytes": plan.runtime,
            "total_bytes": plan.total(),
            "available_bytes": available,
            "fits": available.map(|a| plan.total() <= a),
            "max_ctx": max_ctx,
            "model_ctx": limit,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }

    writeln!(
        out,
        "memory plan at {ctx} tokens × {} sequence(s), {kv} KV cache, on {}",
        plan.max_seqs, device
    )?;
    writeln!(out, "  weights                {:>12}", gib(plan.weights))?;
    writeln!(
        out,
        "  KV cache / sequence    {:>12}  ({} bytes/token)",
        gib(plan.kv_per_seq()),
        plan.kv_per_token
    )?;
    writeln!(
        out,
        "  DeltaNet / sequence    {:>12}",
        gib(plan.state_per_seq)
    )?;
    writeln!(
        out,
        "  prompt cache           {:>12}",
        gib(plan.cache_budget)
    )?;
    writeln!(
        out,
        "  activations            {:>12}",
        gib(plan.activations)
    )?;
    writeln!(out, "  runtime                {:>12}", gib(plan.runtime))?;
    writeln!(out, "  total                  {:>12}", gib(plan.total()))?;
    match (available, max_ctx) {
        (Some(a), Some(m)) => {
            writeln!(
                out,
                "available memory {} (MemAvailable, or QINFER_MEMORY_LIMIT): {}",
                gib(a),
                if plan.total() <= a {
                    "fits"
                } else {
                    "does NOT fit"
                }
            )?;
            writeln!(
                out,
                "largest context that fits: {m} tokens (the model's: {limit})"
            )?;
        }
        _ => writeln!(out, "available memory unknown (set QINFER_MEMORY_LIMIT)")?,
    }
    Ok(())
}
