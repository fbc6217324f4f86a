//! `qinfer`: run Qwen3.5 / Qwen3.6 models.
//!
//! Commands (public interface, kept stable):
//! * `qinfer logits MODEL --ids 1,2,3 [--out FILE.npy]`
//! * `qinfer generate MODEL --ids 1,2,3 --max-tokens N [--temperature 0] [--json]`

mod inspect;
mod pull;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use qinfer_model::{LogitsFor, Qwen35};
use qinfer_tensor::Mat;

#[derive(Parser, Debug)]
#[command(
    name = "qinfer",
    version,
    about = "Run Qwen3.5 / Qwen3.6 models on your own machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the logits of every prompt position (top 5), or save them all as .npy.
    Logits(LogitsArgs),
    /// Generate tokens after a prompt of token ids.
    Generate(GenerateArgs),
    /// Show a model's architecture, layer pattern, parameter count, dtypes and tensor table.
    Inspect(InspectArgs),
    /// Download a model from the Hugging Face Hub into the local cache (resumable).
    Pull(PullArgs),
}

#[derive(Args, Debug)]
struct PullArgs {
    /// Repo id, e.g. Qwen/Qwen3.6-27B.
    repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Download every file of the repo, not only what qinfer needs.
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Model directory, or a Hugging Face repo id in the local cache.
    model: PathBuf,
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// Model directory (config.json + *.safetensors), or a Hugging Face repo id
    /// (e.g. Qwen/Qwen3.6-27B) found in the local Hugging Face cache.
    model: PathBuf,
    /// Prompt token ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_parser = parse_ids, allow_hyphen_values = true)]
    ids: Ids,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Write float32 logits of shape [T, vocab] to this .npy file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Number of tokens to generate (fewer if an end-of-sequence token comes first).
    #[arg(long)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy (argmax).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    temperature: f32,
    /// Random seed for temperature > 0.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print {"ids": [...]} (the generated ids only).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug)]
struct Ids(Vec<u32>);

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logits(a) => logits(a),
        Command::Generate(a) => generate(a),
        Command::Inspect(a) => {
            resolve_model(&a.model).and_then(|m| inspect::run(&m, &mut std::io::stdout().lock()))
        }
        Command::Pull(a) => pull::pull(&pull::PullOptions::from_env(&a.repo, &a.revision, a.all))
            .and_then(|dir| {
                writeln!(std::io::stdout().lock(), "{}", dir.display())?;
                Ok(())
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The model and the directory it was loaded from.
fn load(args: &ModelArgs) -> Result<(Qwen35, PathBuf)> {
    qinfer_cpu::init_threads(args.threads);
    let path = &resolve_model(&args.model)?;
    if path.is_file() {
        bail!(
            "{}: MODEL must be a model directory (config.json + safetensors); GGUF files are not supported yet",
            path.display()
        );
    }
    let model =
        Qwen35::load_dir(path).with_context(|| format!("cannot load model {}", path.display()))?;
    Ok((model, path.clone()))
}

/// A path as is, or a repo id resolved in the Hugging Face cache.
fn resolve_model(arg: &Path) -> Result<PathBuf> {
    let text = arg.to_string_lossy();
    Ok(qinfer_formats::hf_cache::resolve(
        &text,
        &qinfer_formats::hf_cache::hub_cache_dir(),
    )?)
}

fn logits(args: LogitsArgs) -> Result<()> {
    let (model, _) = load(&args.model)?;
    let ids = &args.model.ids.0;
    let mut state = model.new_state();
    let logits = model.forward(ids, &mut state, LogitsFor::All)?;
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

fn generate(args: GenerateArgs) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature must be a finite number ≥ 0, got {}",
            args.temperature
        );
    }
    let (model, dir) = load(&args.model)?;
    let eos = if args.ignore_eos {
        Vec::new()
    } else {
        eos_ids(&dir)?
    };
    let prompt = &args.model.ids.0;
    let mut state = model.new_state();
    let mut rng = SplitMix64(args.seed);
    let started = Instant::now();
    let mut logits = model.forward(prompt, &mut state, LogitsFor::Last)?;
    let prefill = started.elapsed();
    let mut generated = Vec::with_capacity(args.max_tokens);
    while generated.len() < args.max_tokens {
        let next = pick(&logits, args.temperature, &mut rng);
        generated.push(next);
        if eos.contains(&next) || generated.len() == args.max_tokens {
            break;
        }
        logits = model.forward(&[next], &mut state, LogitsFor::Last)?;
    }
    let total = started.elapsed();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "ids": generated }))?;
    } else {
        let ids: Vec<String> = generated.iter().map(u32::to_string).collect();
        writeln!(out, "{}", ids.join(","))?;
        let decode = total - prefill;
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
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

/// End-of-sequence ids from `generation_config.json` (none if the file is absent).
fn eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let ids = match &v["eos_token_id"] {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Number(n) => n.as_u64().into_iter().collect(),
        serde_json::Value::Array(a) => a.iter().filter_map(serde_json::Value::as_u64).collect(),
        other => bail!(
            "{}: eos_token_id {other} is not an id or a list of ids",
            path.display()
        ),
    };
    Ok(ids
        .into_iter()
        .filter_map(|i| u32::try_from(i).ok())
        .collect())
}

fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// Greedy at temperature 0 (lowest id wins ties), else a draw from `softmax(logits / T)`.
fn pick(logits: &Mat, temperature: f32, rng: &mut SplitMix64) -> u32 {
    let row = logits.row(logits.rows - 1);
    if temperature == 0.0 {
        return top_k(row, 1)[0].0 as u32;
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = row
        .iter()
        .map(|&v| f64::from((v - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r <= 0.0 {
            return i as u32;
        }
    }
    (row.len() - 1) as u32
}

/// Small deterministic PRNG (SplitMix64) for seeded sampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
