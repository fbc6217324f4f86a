//! `qinfer`: run Qwen3.5 / Qwen3.6 models on your own machine.
//!
//! Commands and flags here are public interface; the README documents each.

mod bench;
mod chat;
mod fit;
mod generate;
mod inspect;
mod models;
mod pull;
mod quantize;
mod serve;
mod text;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use qinfer_cache::KvType;
use qinfer_engine::sampler::SamplingParams;
use qinfer_model::Qwen35;
use qinfer_model::config::YarnParams;

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
    /// Chat with a model in the terminal (with no MODEL: a built-in demo model).
    Run(chat::RunArgs),
    /// Generate after a prompt given as text (--prompt) or token ids (--ids).
    Generate(generate::GenerateArgs),
    /// Print the logits of every prompt position (top 5), or save them all as .npy.
    Logits(generate::LogitsArgs),
    /// Print the token ids of TEXT as a JSON array.
    Tokenize(text::TokenizeArgs),
    /// Print the prompt the chat template renders for a conversation.
    Render(text::RenderArgs),
    /// Show a model's architecture, layer pattern, parameter count, dtypes and tensor table;
    /// `--devices`: the GPU adapters.
    Inspect(InspectArgs),
    /// Download a model from the Hugging Face Hub into the local cache (resumable):
    /// `REPO` (safetensors), or `REPO:TAG` for one GGUF quant of a GGUF repo.
    Pull(PullArgs),
    /// List the models in the local cache: name (REPO or REPO:TAG), format, size, last use.
    List,
    /// Remove a model from the local cache: a whole repo, or one GGUF quant (REPO:TAG).
    Rm(RmArgs),
    /// Show the models a running `qinfer serve` has loaded (via its HTTP API).
    Ps(PsArgs),
    /// A short summary of a model: architecture, parameters, context, weights, template
    /// features, vision, MTP (`inspect` prints everything).
    Show(ShowArgs),
    /// Write a model as a llama.cpp-compatible GGUF file of a given type.
    Quantize(quantize::QuantizeArgs),
    /// Serve a model over HTTP: OpenAI and Anthropic APIs, continuous batching.
    Serve(serve::ServeArgs),
    /// Measure prompt-processing and generation speed (tokens/s, bandwidth), like llama-bench.
    Bench(bench::BenchArgs),
    /// The memory a model needs at a context (weights, KV cache, DeltaNet state, prompt
    /// cache, activations) against this machine's, and the largest context that fits.
    Fit(fit::FitArgs),
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Model directory, GGUF file, or a Hugging Face repo id in the local cache.
    #[arg(required_unless_present = "devices")]
    model: Option<PathBuf>,
    /// List the GPU adapters instead (what `--device gpu:N` names): kind, API, driver,
    /// buffer limits, memory where the driver reports it, features.
    #[arg(long, conflicts_with = "model")]
    devices: bool,
    /// With --devices: one JSON array.
    #[arg(long, requires = "devices")]
    json: bool,
}

#[derive(Args, Debug)]
struct ShowArgs {
    /// Model directory, GGUF file, or a Hugging Face repo id in the local cache.
    model: PathBuf,
}

#[derive(Args, Debug)]
struct RmArgs {
    /// REPO or REPO:TAG, as `qinfer list` names it.
    model: String,
}

#[derive(Args, Debug)]
struct PsArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The server's API key, if it has one (also QINFER_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
}

#[derive(Args, Debug)]
struct PullArgs {
    /// Repo id, e.g. Qwen/Qwen3.6-27B, or REPO:TAG for one quant of a GGUF repo
    /// (e.g. unsloth/Qwen3.6-27B-GGUF:Q4_K_M; without a tag a GGUF repo's largest quant that
    /// fits the available memory is chosen, and said).
    repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Download every file of the repo, not only what qinfer needs.
    #[arg(long)]
    all: bool,
    /// Convert a safetensors checkpoint to a GGUF of this type in the cache (as `qinfer
    /// quantize` does), then remove the shards; `REPO:TYPE` then names it.
    #[arg(long, value_parser = quantize::parse_type, value_name = "TYPE")]
    quant: Option<qinfer_model::export::FileType>,
    /// With --quant: keep the downloaded shards.
    #[arg(long, requires = "quant")]
    keep: bool,
}

/// Sampling flags shared by `generate` and `run`. Unset flags keep the command's defaults.
#[derive(Args, Debug, Clone, Default)]
pub struct SamplingArgs {
    /// A named preset: thinking, thinking-coding, instruct, instruct-reasoning, greedy.
    #[arg(long)]
    preset: Option<String>,
    /// Temperature; 0 is greedy (argmax).
    #[arg(long, allow_hyphen_values = true)]
    temperature: Option<f32>,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, allow_hyphen_values = true)]
    top_p: Option<f32>,
    /// Drop tokens below P × the top probability (0 = off).
    #[arg(long, allow_hyphen_values = true)]
    min_p: Option<f32>,
    /// Penalty for tokens already generated (OpenAI semantics, -2..2).
    #[arg(long, allow_hyphen_values = true)]
    presence_penalty: Option<f32>,
    /// Penalty per repetition of a generated token (OpenAI semantics, -2..2).
    #[arg(long, allow_hyphen_values = true)]
    frequency_penalty: Option<f32>,
    /// Multiplicative penalty for tokens in the prompt or output (1 = off).
    #[arg(long, allow_hyphen_values = true)]
    repetition_penalty: Option<f32>,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl SamplingArgs {
    /// `base`, then the preset, then each explicit flag.
    pub fn apply(&self, base: SamplingParams) -> Result<SamplingParams> {
        let mut p = match &self.preset {
            Some(name) => SamplingParams {
                seed: base.seed,
                ..SamplingParams::preset(name)?
            },
            None => base,
        };
        if let Some(v) = self.temperature {
            p.temperature = v;
        }
        if let Some(v) = self.top_k {
            p.top_k = v;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.presence_penalty {
            p.presence_penalty = v;
        }
        if let Some(v) = self.frequency_penalty {
            p.frequency_penalty = v;
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        if self.seed.is_some() {
            p.seed = self.seed;
        }
        p.validate()?;
        Ok(p)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => chat::run(a),
        Command::Generate(a) => generate::generate(a),
        Command::Logits(a) => generate::logits(a),
        Command::Tokenize(a) => text::tokenize(a),
        Command::Render(a) => text::render(a),
        Command::Inspect(InspectArgs {
            devices: true,
            json,
            ..
        }) => inspect::devices(json, &mut std::io::stdout().lock()),
        Command::Inspect(InspectArgs { model, .. }) => {
            resolve_model(&model.expect("clap requires MODEL without --devices")).and_then(|m| {
                if is_gguf(&m) {
                    inspect::run_gguf(&m, &mut std::io::stdout().lock())
                } else {
                    inspect::run(&m, &mut std::io::stdout().lock())
                }
            })
        }
        Command::Quantize(a) => quantize::quantize(a),
        Command::Serve(a) => serve::serve(a),
        Command::Bench(a) => bench::run(&a),
        Command::Fit(a) => fit::fit(a),
        Command::Show(a) => resolve_model(&a.model).and_then(|m| {
            models::show(
                &a.model.to_string_lossy(),
                &m,
                &mut std::io::stdout().lock(),
            )
        }),
        Command::List => models::list(
            &qinfer_formats::hf_cache::hub_cache_dir(),
            &mut std::io::stdout().lock(),
        ),
        Command::Rm(a) => models::rm(
            &a.model,
            &qinfer_formats::hf_cache::hub_cache_dir(),
            &mut std::io::stdout().lock(),
        ),
        Command::Ps(a) => {
            let key = a
                .api_key
                .clone()
                .or_else(|| std::env::var("QINFER_API_KEY").ok())
                .filter(|k| !k.is_empty());
            models::ps(
                &format!("{}:{}", a.host, a.port),
                key.as_deref(),
                &mut std::io::stdout().lock(),
            )
        }
        Command::Pull(a) => models::expand_short_name(&a.repo)
            .and_then(|short| {
                let name = short.unwrap_or_else(|| a.repo.clone());
                let o = pull::PullOptions::from_env(&name, &a.revision, a.all);
                match a.quant {
                    Some(ty) => pull::pull_quantized(&o, ty, a.keep),
                    None => pull::pull(&o),
                }
            })
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

/// A path as is, or a repo id (`REPO`, `REPO:TAG`) resolved in the Hugging Face cache (and
/// its use recorded for `qinfer list`).
pub fn resolve_model(arg: &Path) -> Result<PathBuf> {
    let given = arg.to_string_lossy();
    let expanded = if arg.exists() {
        None
    } else {
        models::expand_short_name(&given)?
    };
    let text = expanded.as_deref().unwrap_or(&given);
    let arg = Path::new(text);
    let resolved =
        qinfer_formats::hf_cache::resolve(text, &qinfer_formats::hf_cache::hub_cache_dir())?;
    if !arg.exists() {
        models::touch(text);
    }
    Ok(resolved)
}

/// Whether `path` is a GGUF file (by its magic bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// A model directory (resolved), rejecting other files.
pub fn model_dir(arg: &Path) -> Result<PathBuf> {
    let path = resolve_model(arg)?;
    if path.is_file() {
        anyhow::bail!(
            "{}: MODEL must be a model directory (config.json + safetensors) or a GGUF file",
            path.display()
        );
    }
    Ok(path)
}

/// Whether `arg` names the built-in demo model (`demo`, when no such path exists).
pub fn is_demo(arg: &Path) -> bool {
    arg == Path::new("demo") && !arg.exists()
}

/// The command line's KV cache type: F16, the cheapest type whose greedy output equals
/// `f32`'s on every tiny fixture (Q8_0 and BF16 change it on the Q8_0 GGUF); measurements in
/// docs/PERFORMANCE.md ("KV cache precision"). The library itself defaults to `f32`.
pub const DEFAULT_KV_TYPE: KvType = KvType::F16;

/// How a loaded model runs, shared by every command that loads one: `--kv-type` and the
/// rope scaling (`--rope-scaling yarn --rope-factor F [--rope-original-ctx N]`).
#[derive(Args, Debug, Clone)]
pub struct ModelOptions {
    /// How the attention KV cache stores its rows: f32, bf16, f16 (default) or q8_0 (per row;
    /// rows not a multiple of 32 values store bf16). Also read from QINFER_KV_TYPE.
    #[arg(
        long = "kv-type",
        value_name = "TYPE",
        value_parser = PossibleValuesParser::new(KvType::ALL.map(KvType::name))
            .try_map(|s| s.parse::<KvType>())
    )]
    kv_type: Option<KvType>,
    /// Rope scaling, overriding the model file's: `yarn` (with --rope-factor) extends the
    /// context to F × the native window; `none` turns a file's YaRN off.
    #[arg(long = "rope-scaling", value_name = "TYPE", value_parser = ["yarn", "none"])]
    rope_scaling: Option<String>,
    /// YaRN's factor: the context becomes F × the native window (4 takes Qwen3.6's 262,144
    /// tokens to 1,048,576).
    #[arg(long = "rope-factor", value_name = "F", requires = "rope_scaling")]
    rope_factor: Option<f64>,
    /// YaRN's original (pretraining) context; default: the model's native window.
    #[arg(
        long = "rope-original-ctx",
        value_name = "N",
        requires = "rope_scaling"
    )]
    rope_original_ctx: Option<usize>,
    /// Download MODEL first, as `qinfer pull` does (a repo id, REPO:TAG or a short name; what
    /// the cache already holds is only checked), then run it.
    #[arg(long)]
    pull: bool,
    /// Speculative decoding: `mtp` drafts tokens with the model's multi-token-prediction head
    /// and verifies them in one step (the output is unchanged); `none` decodes one token per
    /// step. Default: `mtp` when the model has an MTP head.
    #[arg(long, value_name = "MODE", value_parser = ["mtp", "none"])]
    draft: Option<String>,
    /// Most draft tokens per step (1 to 15; default 5). The engine drafts fewer, or none, while
    /// the measured acceptance says more would not pay.
    #[arg(long = "draft-max", value_name = "K", value_parser = clap::value_parser!(u8).range(1..=15))]
    draft_max: Option<u8>,
    /// Where the model runs: `cpu`; `gpu` (the best GPU adapter, `gpu:N` the adapter of index
    /// N in `qinfer inspect --devices`); `auto` (default): a hardware GPU when there is one,
    /// else the CPU. Also read from QINFER_DEVICE.
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    device: Option<DeviceChoice>,
    /// A llama.cpp `mmproj` GGUF with the model's vision tower (for a GGUF model; an
    /// `mmproj*.gguf` beside the model file is found without this flag).
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// Images are resized to at least this many pixels (default: the model's processor
    /// settings; Qwen: 65,536 = 256²).
    #[arg(long, value_name = "N")]
    min_pixels: Option<u64>,
    /// Images are resized to at most this many pixels (default: the model's processor
    /// settings; Qwen: 16,777,216 = 4096²): fewer pixels, fewer tokens, a faster tower.
    #[arg(long, value_name = "N")]
    max_pixels: Option<u64>,
}

impl ModelOptions {
    /// `--min-pixels` / `--max-pixels` applied to an image processor's settings.
    pub fn image_pixels(&self, cfg: &mut qinfer_vision::PreprocessConfig) -> Result<()> {
        if let Some(n) = self.min_pixels {
            cfg.min_pixels = n;
        }
        if let Some(n) = self.max_pixels {
            cfg.max_pixels = n;
        }
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("--min-pixels / --max-pixels: {e}"))
    }

    /// The flag, else `QINFER_KV_TYPE`, else [`DEFAULT_KV_TYPE`].
    pub fn resolve(&self) -> Result<KvType> {
        if let Some(t) = self.kv_type {
            return Ok(t);
        }
        match std::env::var("QINFER_KV_TYPE") {
            Ok(v) if !v.is_empty() => v.parse().context("QINFER_KV_TYPE"),
            _ => Ok(DEFAULT_KV_TYPE),
        }
    }

    /// `--draft`, as given.
    pub fn draft_mode(&self) -> Option<&str> {
        self.draft.as_deref()
    }

    /// The speculative-decoding settings asked for (`--draft`, `--draft-max`).
    pub fn draft(&self) -> qinfer_engine::speculative::DraftConfig {
        let mut d = qinfer_engine::speculative::DraftConfig::default();
        if self.draft.as_deref() == Some("none") {
            d = qinfer_engine::speculative::DraftConfig::none();
        } else if let Some(k) = self.draft_max {
            d.max = usize::from(k);
        }
        d
    }

    /// Sets the model's options from the command line: the one place a loaded model is
    /// configured.
    pub fn apply(&self, model: &mut Qwen35) -> Result<()> {
        model.set_kv_type(self.resolve()?);
        if let Some(p) = self.rope_scaling()? {
            model.set_rope_scaling(p)?;
        }
        if let Some(gpu) = self.device()?.open()? {
            check_fits(model, gpu.adapter())?;
            let _ = GPU.set(gpu.clone());
            let bytes = model.weight_bytes() as u64;
            let bar = upload_bar(bytes, gpu.adapter());
            let progress = bar.clone();
            gpu.on_upload(Box::new(move |b| progress.inc(b)));
            let on_gpu = model.clone().with_backend(gpu.clone());
            gpu.on_upload(Box::new(|_| ()));
            bar.finish_and_clear();
            *model = on_gpu.with_context(|| {
                format!("cannot put the model on the GPU {}", gpu.adapter().name)
            })?;
        }
        Ok(())
    }

    /// `--device` as `qinfer fit` reads it: the flag, else the CPU (a plan is for host memory
    /// unless a GPU is named).
    pub fn device_for_fit(&self) -> DeviceChoice {
        self.device.unwrap_or(DeviceChoice::Cpu)
    }

    /// `--device`, else `QINFER_DEVICE`, else `auto`.
    pub fn device(&self) -> Result<DeviceChoice> {
        if let Some(d) = self.device {
            return Ok(d);
        }
        match std::env::var("QINFER_DEVICE") {
            Ok(v) if !v.is_empty() => {
                parse_device(&v).map_err(|e| anyhow::anyhow!("QINFER_DEVICE: {e}"))
            }
            _ => Ok(DeviceChoice::Auto),
        }
    }

    /// With `--pull`, downloads `arg` into the cache unless it is a local path or the demo.
    pub fn fetch(&self, arg: &Path) -> Result<()> {
        // Once per process: a command may resolve its model more than once.
        static PULLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !self.pull
            || arg.exists()
            || is_demo(arg)
            || PULLED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let given = arg.to_string_lossy();
        let name = models::expand_short_name(&given)?.unwrap_or_else(|| given.to_string());
        pull::pull(&pull::PullOptions::from_env(&name, "main", false))?;
        Ok(())
    }

    /// [`ModelOptions::apply`] to a configuration alone (`qinfer fit --weights`).
    pub fn apply_config(&self, config: &mut qinfer_model::ModelConfig) -> Result<()> {
        if let Some(p) = self.rope_scaling()? {
            config.set_rope_scaling(p)?;
        }
        Ok(())
    }

    /// The rope scaling asked for: none (`Ok(None)`: keep the file's), off, or YaRN.
    fn rope_scaling(&self) -> Result<Option<Option<YarnParams>>> {
        Ok(match self.rope_scaling.as_deref() {
            None => None,
            Some("none") => {
                if self.rope_factor.is_some() || self.rope_original_ctx.is_some() {
                    bail!("--rope-factor and --rope-original-ctx go with --rope-scaling yarn");
                }
                Some(None)
            }
            Some(_) => {
                let Some(factor) = self.rope_factor else {
                    bail!(
                        "--rope-scaling yarn needs --rope-factor F (the context becomes F × the native window)"
                    );
                };
                Some(Some(YarnParams {
                    factor: Some(factor),
                    original_ctx: self.rope_original_ctx,
                    ..YarnParams::default()
                }))
            }
        })
    }
}

/// Where a model runs (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// A GPU adapter: the best one, or the one of this index.
    Gpu(Option<usize>),
    /// A hardware GPU when there is one, else the CPU.
    Auto,
}

fn parse_device(s: &str) -> std::result::Result<DeviceChoice, String> {
    match s {
        "cpu" => Ok(DeviceChoice::Cpu),
        "gpu" => Ok(DeviceChoice::Gpu(None)),
        "auto" => Ok(DeviceChoice::Auto),
        _ => match s.strip_prefix("gpu:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(DeviceChoice::Gpu(Some(i))),
            _ => Err(format!(
                "{s:?} is not a device: cpu, gpu, gpu:N (an index of `qinfer inspect --devices`) or auto"
            )),
        },
    }
}

impl DeviceChoice {
    /// The GPU backend this choice asks for; `None`: the CPU. `auto` falls back to the CPU
    /// when no hardware GPU can be opened (saying why on stderr, once).
    pub fn open(self) -> Result<Option<Arc<qinfer_gpu::Gpu>>> {
        use qinfer_gpu::{Gpu, Pick};
        let pick = match self {
            DeviceChoice::Cpu => return Ok(None),
            DeviceChoice::Gpu(None) => Pick::Best,
            DeviceChoice::Gpu(Some(i)) => Pick::Index(i),
            DeviceChoice::Auto => Pick::Hardware,
        };
        match Gpu::open(pick) {
            Ok(g) => Ok(Some(Arc::new(g))),
            Err(qinfer_gpu::GpuError::NoAdapter) if self == DeviceChoice::Auto => Ok(None),
            Err(e) if self == DeviceChoice::Auto => {
                tracing::warn!("--device auto: {e}; running on the CPU");
                Ok(None)
            }
            Err(e) => Err(anyhow::anyhow!("--device {}: {e}", self.name())),
        }
    }

    pub fn name(self) -> String {
        match self {
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Gpu(None) => "gpu".into(),
            DeviceChoice::Gpu(Some(i)) => format!("gpu:{i}"),
            DeviceChoice::Auto => "auto".into(),
        }
    }
}

/// The GPU the model was put on; unset while the model runs on the CPU.
static GPU: std::sync::OnceLock<Arc<qinfer_gpu::Gpu>> = std::sync::OnceLock::new();

/// The GPU the loaded model runs on, if it does.
pub fn model_gpu() -> Option<&'static Arc<qinfer_gpu::Gpu>> {
    GPU.get()
}

/// Where the loaded model's memory comes from: `Some(bytes)` for a GPU that reports its
/// memory (`serve` plans its context against it), `None` for the host (or a GPU that does
/// not say).
pub fn model_device_memory() -> Option<u64> {
    GPU.get().and_then(|g| g.adapter().memory_bytes)
}

/// Refuses a model that cannot run on the GPU at all (its weights, one sequence's state and a
/// 4,096-position KV cache, one step's activations), before uploading anything: the numbers,
/// and what would fit.
fn check_fits(model: &Qwen35, adapter: &qinfer_gpu::AdapterSummary) -> Result<()> {
    let Some(memory) = adapter.memory_bytes else {
        return Ok(());
    };
    let ctx = model.config.max_positions.min(4096);
    let plan = qinfer_engine::plan::MemoryPlan::new(model, ctx, 1, 0, 512);
    if plan.total() <= memory {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    bail!(
        "the model does not fit the GPU {} ({:.2} GB): weights {:.2} GB, KV cache {:.1} KB per \
         position ({:.2} GB at {ctx} positions, {}), DeltaNet state {:.1} MB per sequence, one \
         step's activations {:.2} GB — {:.2} GB in all. A smaller quantization (`qinfer \
         quantize`), --kv-type q8_0, or --device cpu; `qinfer fit` plans other contexts",
        adapter.name,
        gb(memory),
        gb(plan.weights),
        plan.kv_per_token as f64 / 1e3,
        gb(plan.kv_per_seq()),
        model.kv_type().name(),
        plan.state_per_seq as f64 / 1e6,
        gb(plan.activations),
        gb(plan.total()),
    )
}

/// The progress bar of a model's upload to a GPU (hidden when stderr is not a terminal).
fn upload_bar(bytes: u64, adapter: &qinfer_gpu::AdapterSummary) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("weights → {}", adapter.name));
    bar
}

/// Loads a full bundle (weights, tokenizer, template); `demo` is the built-in demo model.
pub fn load_bundle(
    arg: &Path,
    threads: Option<usize>,
    opts: &ModelOptions,
) -> Result<qinfer_engine::generate::ModelBundle> {
    qinfer_cpu::init_threads(threads);
    opts.fetch(arg)?;
    let mut bundle = if is_demo(arg) {
        qinfer_engine::generate::ModelBundle::demo()?
    } else {
        let path = resolve_model(arg)?;
        if is_gguf(&path) {
            qinfer_engine::generate::ModelBundle::load_gguf(&path)
                .with_context(|| format!("cannot load model {}", path.display()))?
        } else {
            let dir = model_dir(arg)?;
            qinfer_engine::generate::ModelBundle::load_dir(&dir)
                .with_context(|| format!("cannot load model {}", dir.display()))?
        }
    };
    if let Some(path) = &opts.mmproj {
        bundle
            .attach_mmproj(path)
            .with_context(|| format!("cannot load the vision tower {}", path.display()))?;
    }
    opts.apply(&mut bundle.model)?;
    if let Some(images) = bundle.images.as_mut() {
        opts.image_pixels(&mut images.preprocess)?;
    }
    bundle.draft = opts.draft();
    if opts.draft.as_deref() == Some("mtp") && !bundle.model.has_mtp() {
        bail!(
            "--draft mtp: {} has no MTP head (its file carries no mtp.* / nextn tensors)",
            arg.display()
        );
    }
    Ok(bundle)
}
