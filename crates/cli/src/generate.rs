//! `qinfer generate` and `qinfer logits`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use qinfer_engine::engine::{CacheHook, EngineModel, Request};
use qinfer_engine::generate::{
    FinishReason, Flow, GenerateOptions, Generation, ModelBundle, Sequence,
    generate_with_images as run_generation, run_one,
};
use qinfer_engine::images::{PromptImage, place_images, read_image};
use qinfer_engine::parser::ParserOptions;
use qinfer_engine::sampler::SamplingParams;
use qinfer_formats::gguf::keys;
use qinfer_model::{Qwen35, Rows};

use crate::{SamplingArgs, model_dir};

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Model directory (config.json + *.safetensors), GGUF file, or a Hugging Face repo id in
    /// the local cache.
    model: PathBuf,
    /// Prompt token ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_parser = parse_ids, allow_hyphen_values = true)]
    ids: Ids,
    /// Write float32 logits of shape [T, vocab] to this .npy file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    model_opts: crate::ModelOptions,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model directory (config.json + *.safetensors), or a Hugging Face repo id in the local cache.
    model: PathBuf,
    /// Prompt token ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_parser = parse_ids, allow_hyphen_values = true, conflicts_with = "prompt")]
    ids: Option<Ids>,
    /// Prompt text (raw, or a user message with --chat).
    #[arg(long, required_unless_present = "ids")]
    prompt: Option<String>,
    /// Render --prompt as a user message through the model's chat template.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// An image for the prompt (PNG, JPEG, WebP or GIF; repeat for several). With --chat the
    /// images come first in the user message; a raw --prompt must hold one
    /// `<|vision_start|><|image_pad|><|vision_end|>` per image.
    #[arg(long = "image", value_name = "PATH", requires = "prompt")]
    images: Vec<PathBuf>,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Turn thinking off (with --chat): the template closes the think block in the prompt.
    #[arg(long, requires = "chat")]
    no_think: bool,
    /// Number of tokens to generate (fewer if a stop comes first).
    #[arg(long)]
    max_tokens: usize,
    /// End thinking after this many tokens by forcing `</think>`.
    #[arg(long)]
    reasoning_budget: Option<usize>,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print JSON: {"ids": [...]} (token-id models without a tokenizer), or
    /// {"ids", "text", "reasoning", "tool_calls"}.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    model_opts: crate::ModelOptions,
}

#[derive(Clone, Debug)]
pub struct Ids(pub Vec<u32>);

fn parse_ids(s: &str) -> Result<Ids, String> {
    let ids = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| format!("{p:?} is not a token id (a non-negative integer)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err("no token ids given".into());
    }
    Ok(Ids(ids))
}

/// Loads the model alone (no tokenizer), configured by the command line.
pub fn load_model(
    arg: &Path,
    threads: Option<usize>,
    opts: &crate::ModelOptions,
) -> Result<(Qwen35, PathBuf)> {
    qinfer_cpu::init_threads(threads);
    opts.fetch(arg)?;
    let path = crate::resolve_model(arg)?;
    let (mut model, at) = if crate::is_gguf(&path) {
        let model = Qwen35::load_gguf(&path)
            .with_context(|| format!("cannot load model {}", path.display()))?;
        (model, path)
    } else {
        let dir = model_dir(arg)?;
        let model = Qwen35::load_dir(&dir)
            .with_context(|| format!("cannot load model {}", dir.display()))?;
        (model, dir)
    };
    opts.apply(&mut model)?;
    Ok((model, at))
}

pub fn logits(args: LogitsArgs) -> Result<()> {
    let (model, _) = load_model(&args.model, args.threads, &args.model_opts)?;
    let ids = &args.ids.0;
    let mut state = model.new_state();
    let logits = model.forward(ids, &mut state, Rows::All)?;
    let mut out = std::io::stdout().lock();
    if let Some(path) = &args.out {
        qinfer_formats::npy::write_f32(path, &[logits.rows, logits.cols], &logits.data)?;
        writeln!(
            out,
            "wrote logits [{}, {}] to {}",
            logits.rows,
            logits.cols,
            path.display()
        )?;
        return Ok(());
    }
    for (pos, row) in logits.rows_iter().enumerate() {
        let top: Vec<String> = top_k(row, 5)
            .into_iter()
            .map(|(id, v)| format!("{id} ({v:.4})"))
            .collect();
        writeln!(
            out,
            "{pos:>5}  token {:>7}  top-5: {}",
            ids[pos],
            top.join("  ")
        )?;
    }
    Ok(())
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    // `generate` is greedy unless asked otherwise (reproducible by default).
    let sampling = args.sampling.apply(SamplingParams::default())?;
    if !crate::is_demo(&args.model) {
        args.model_opts.fetch(&args.model)?;
        let path = crate::resolve_model(&args.model)?;
        let has_tokenizer = if crate::is_gguf(&path) {
            qinfer_formats::gguf::GgufFile::open(&path)?
                .get(keys::TOKENIZER_TOKENS)
                .is_some()
        } else {
            model_dir(&args.model)?.join("tokenizer.json").is_file()
        };
        if args.prompt.is_none() && !has_tokenizer {
            return generate_ids_only(&args, sampling);
        }
    }
    let bundle = crate::load_bundle(&args.model, args.threads, &args.model_opts)?;
    let (prompt, starts_in_reasoning) = prompt_ids(&bundle, &args)?;
    let (prompt, images) = if args.images.is_empty() {
        (prompt, Vec::new())
    } else {
        with_images(&bundle, &prompt, &args.images)?
    };
    let opts = GenerateOptions {
        json_object: false,
        json_schema: None,
        strict_tools: false,
        single_call: false,
        sampling,
        max_tokens: args.max_tokens,
        stop_strings: args.sampling.stop.clone(),
        stop_ids: Vec::new(),
        ignore_eos: args.ignore_eos,
        reasoning_budget: args.reasoning_budget,
        parser: ParserOptions {
            starts_in_reasoning,
            tools: Vec::new(),
        },
    };
    let mut seq = Sequence::new(&bundle.model);
    let mut stdout = std::io::stdout().lock();
    let stream = !args.json;
    let result = run_generation(&bundle, &mut seq, &prompt, &images, &opts, &mut |e| {
        if stream {
            let text = match e {
                qinfer_engine::parser::Event::Reasoning(t)
                | qinfer_engine::parser::Event::Content(t) => t.clone(),
                qinfer_engine::parser::Event::ToolCallEnd { raw, .. } => raw.clone(),
                _ => String::new(),
            };
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
        Flow::Continue
    })?;
    if args.json {
        writeln!(stdout, "{}", generation_json(&result))?;
    } else {
        writeln!(stdout)?;
        report(&result)?;
    }
    Ok(())
}

/// The prompt's token ids, and whether the model starts inside a think block.
fn prompt_ids(bundle: &ModelBundle, args: &GenerateArgs) -> Result<(Vec<u32>, bool)> {
    if let Some(ids) = &args.ids {
        let text = bundle.tokenizer.decode(&ids.0, false)?;
        return Ok((ids.0.clone(), text.ends_with("<think>\n")));
    }
    let prompt = args.prompt.as_deref().unwrap_or_default();
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        let mut content: Vec<serde_json::Value> = args
            .images
            .iter()
            .map(|_| serde_json::json!({"type": "image"}))
            .collect();
        content.push(serde_json::json!({"type": "text", "text": prompt}));
        messages.push(serde_json::json!({"role": "user", "content": content}));
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("enable_thinking".into(), (!args.no_think).into());
        bundle
            .template()?
            .render(&qinfer_engine::template::RenderRequest {
                messages: &serde_json::Value::Array(messages),
                tools: None,
                add_generation_prompt: true,
                kwargs: &kwargs,
            })?
    } else {
        prompt.to_string()
    };
    let ids = bundle.tokenizer.encode(&text)?;
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    Ok((ids, text.ends_with("<think>\n")))
}

/// Reads `paths` as the prompt's images and places them at its image-pad tokens.
pub fn with_images(
    bundle: &ModelBundle,
    ids: &[u32],
    paths: &[PathBuf],
) -> Result<(Vec<u32>, Vec<PromptImage>)> {
    let opts = bundle.images.as_ref().with_context(|| {
        format!(
            "{} has no vision tower: it cannot take images (for a GGUF model, give its \
             mmproj file with --mmproj)",
            bundle.name
        )
    })?;
    let mut read = Vec::with_capacity(paths.len());
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        read.push(read_image(&bytes, opts).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?);
    }
    place_images(&bundle.model, ids, read).map_err(|e| anyhow::anyhow!(e))
}

pub fn generation_json(g: &Generation) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = g
        .tool_calls()
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "arguments": c.arguments}))
        .collect();
    serde_json::json!({
        "ids": g.ids,
        "text": g.parsed.content,
        "reasoning": g.parsed.reasoning,
        "tool_calls": calls,
    })
}

fn report(g: &Generation) -> Result<()> {
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "prompt {} tokens ({} reused) in {:.3}s; generated {} tokens in {:.3}s ({:.1} tok/s); finish: {:?}",
        g.prompt_tokens,
        g.reused_tokens,
        g.prefill_time.as_secs_f64(),
        g.ids.len(),
        g.decode_time.as_secs_f64(),
        g.decode_tokens_per_second(),
        g.finish
    )?;
    Ok(())
}

/// Token ids in, token ids out, for models without a tokenizer (the test fixtures).
fn generate_ids_only(args: &GenerateArgs, sampling: SamplingParams) -> Result<()> {
    let (model, dir) = load_model(&args.model, args.threads, &args.model_opts)?;
    let eos = if args.ignore_eos {
        Vec::new()
    } else {
        eos_ids(&dir)?
    };
    let prompt = &args.ids.as_ref().context("--ids is required")?.0;
    let opts = GenerateOptions {
        sampling,
        max_tokens: args.max_tokens,
        stop_ids: eos,
        ..GenerateOptions::default()
    };
    let (ended, summary) = run_one(
        EngineModel::ids_only(&model),
        CacheHook::default(),
        Request::new(prompt.clone(), opts, ()),
        &mut |_| Flow::Continue,
    )?;
    let mut generated = ended.ids;
    // Without a tokenizer there is no text to end: the end-of-sequence id is output too.
    if let FinishReason::Stop(eos) = summary.finish {
        generated.push(eos);
    }
    let (prefill, decode) = (summary.prefill_time, summary.decode_time);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "ids": generated }))?;
    } else {
        let ids: Vec<String> = generated.iter().map(u32::to_string).collect();
        writeln!(out, "{}", ids.join(","))?;
        writeln!(
            std::io::stderr().lock(),
            "prompt {} tokens in {:.3}s; generated {} tokens in {:.3}s ({:.1} tok/s)",
            prompt.len(),
            prefill.as_secs_f64(),
            generated.len(),
            decode.as_secs_f64(),
            generated.len().saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9)
        )?;
    }
    Ok(())
}

/// End-of-sequence ids from `generation_config.json` (none if the file is absent), or from
/// `tokenizer.ggml.eos_token_id` of a GGUF file.
fn eos_ids(dir: &Path) -> Result<Vec<u32>> {
    if crate::is_gguf(dir) {
        let file = qinfer_formats::gguf::GgufFile::open(dir)?;
        return Ok(file
            .get_u32_opt(keys::TOKENIZER_EOS_ID)?
            .into_iter()
            .collect());
    }
    Ok(SamplingParams::eos_ids_from_generation_config(
        &dir.join("generation_config.json"),
    )?)
}

fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}
