//! `qinfer quantize IN OUT --type TYPE`: write a model as a llama.cpp-compatible GGUF file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qinfer_formats::gguf::{GgufFile, Value, keys};
use qinfer_formats::hf_config::RawConfig;
use qinfer_formats::safetensors::Checkpoint;
use qinfer_model::ModelConfig;
use qinfer_model::export::{Exported, FileType, export_gguf};
use qinfer_model::loader::Loader;
use qinfer_model::names::Naming;

const TYPES_HELP: &str = "\
Types (size of Qwen3.6-27B's text model, 26.9 B parameters, approximate):
  F32      107.6 GB   exact
  BF16      53.8 GB   exact for BF16 checkpoints
  F16       53.8 GB
  Q8_0      28.6 GB   8.5 bits/weight, near-lossless
  Q6_K      22.1 GB   6.6 bits/weight
  Q5_K_M    19.2 GB   Q5_K, with Q6_K for output and the most important attn_v / ffn_down
  Q5_0      18.5 GB
  Q4_K_M    16.5 GB   Q4_K, with Q6_K for output and the most important attn_v / ffn_down,
                      Q5_K for the DeltaNet input projection: the usual choice for 24 GB GPUs
  Q4_0      15.1 GB
  Q3_K_M    13.1 GB   Q3_K, with Q6_K output, Q4_K/Q5_K attn_v, Q4_K DeltaNet input projection
  Q2_K      10.1 GB   Q2_K, with Q6_K output, Q4_K attn_v, Q3_K ffn_down and DeltaNet input;
                      noticeably lossy
Norms, DeltaNet A / dt / conv and the MoE router always stay F32; ssm_alpha / ssm_beta are
Q8_0 in the K mixtures. The MTP head (speculative decoding), when the input has it, is written
too and never below Q8_0. Rows that are not whole 256-value blocks fall back (Q4_K→Q5_0,
Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→IQ4_NL), as llama.cpp does.";

#[derive(Args, Debug)]
#[command(after_help = TYPES_HELP)]
pub struct QuantizeArgs {
    /// Model directory (config.json + safetensors), GGUF file, or a repo id in the HF cache.
    input: PathBuf,
    /// Output GGUF file.
    output: PathBuf,
    /// Output type (see below).
    #[arg(long = "type", value_parser = parse_type)]
    file_type: FileType,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn parse_type(s: &str) -> Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| {
        format!(
            "unknown type {s:?}; one of: {}",
            FileType::ALL.map(FileType::name).join(", ")
        )
    })
}

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    qinfer_cpu::init_threads(args.threads);
    let input = crate::resolve_model(&args.input)?;
    let written = write_gguf(&input, &args.output, args.file_type)?;
    report(&args.output, &written)
}

/// Writes `input` (a resolved model: checkpoint directory or GGUF) as a GGUF of `file_type`
/// at `output`, through a `.partial` file renamed when complete (a failed or interrupted
/// write never leaves a file at `output`).
pub fn write_gguf(input: &Path, output: &Path, file_type: FileType) -> Result<Exported> {
    if output.exists() && std::fs::canonicalize(output).ok() == std::fs::canonicalize(input).ok() {
        bail!("the output would overwrite the input {}", input.display());
    }
    let partial = output.with_extension("gguf.partial");
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = |done: usize, total: usize, name: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    };
    let written = if crate::is_gguf(input) {
        let file = GgufFile::open(input)?;
        let config = qinfer_model::gguf::config_from_gguf(&file)?;
        let extra: Vec<(String, Value)> = file
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer.") || k == qinfer_model::mtp::DRAFT_VOCAB_KEY)
            .cloned()
            .collect();
        export_gguf(
            &partial,
            &file,
            Naming::Gguf,
            &config,
            extra,
            file_type,
            &mut progress,
        )
    } else {
        if input.is_file() {
            bail!(
                "{}: MODEL must be a model directory (config.json + safetensors) or a GGUF file",
                input.display()
            );
        }
        let (config, extra) = checkpoint_metadata(input)?;
        let checkpoint = Checkpoint::open_dir(input)?;
        let prefix = Loader::detect_hf_prefix(&|n| checkpoint.tensors.contains_key(n))?;
        export_gguf(
            &partial,
            &checkpoint,
            Naming::Hf(prefix),
            &config,
            extra,
            file_type,
            &mut progress,
        )
    };
    bar.finish_and_clear();
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e).with_context(|| format!("cannot write {}", output.display()));
        }
    };
    std::fs::rename(&partial, output)?;
    Ok(written)
}

/// A checkpoint directory's model configuration, and the GGUF metadata its tokenizer files
/// give (what a GGUF written from it carries beside the model keys).
pub fn checkpoint_metadata(dir: &Path) -> Result<(ModelConfig, Vec<(String, Value)>)> {
    let raw = RawConfig::from_file(&dir.join("config.json"))?;
    let config =
        ModelConfig::from_hf(&raw).with_context(|| format!("{}/config.json", dir.display()))?;
    let mut extra = text_metadata(dir, &config)?;
    if let Some(ids) = qinfer_model::mtp::draft_vocab_from_dir(dir)? {
        extra.push((
            qinfer_model::mtp::DRAFT_VOCAB_KEY.into(),
            Value::Array(ids.into_iter().map(Value::U32).collect()),
        ));
    }
    Ok((config, extra))
}

/// What `qinfer quantize` prints about a written file.
fn report(output: &Path, written: &Exported) -> Result<()> {
    let types: Vec<String> = written
        .types
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(
        out,
        "wrote {} ({} tensors, {:.2} MiB of tensor data; {}; MTP head: {})",
        output.display(),
        written.tensors,
        written.bytes as f64 / (1u64 << 20) as f64,
        types.join(", "),
        if written.mtp {
            "written"
        } else {
            "not in the input"
        }
    )?;
    Ok(())
}

/// Tokenizer, chat template and special ids from a Hugging Face model directory, as GGUF keys.
fn text_metadata(dir: &Path, config: &ModelConfig) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{}: invalid JSON", path.display()))?;
    let mut md = qinfer_formats::hf_tokenizer::gguf_metadata(&tok, config.vocab, "qwen35")
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?,
        Err(_) => serde_json::Value::Null,
    };
    for (key, field) in [
        (keys::TOKENIZER_EOS_ID, "eos_token"),
        (keys::TOKENIZER_PAD_ID, "pad_token"),
    ] {
        let token = cfg[field]
            .as_str()
            .or_else(|| cfg[field]["content"].as_str());
        if let Some(id) = token.and_then(|t| qinfer_formats::hf_tokenizer::token_id(&tok, t)) {
            md.push((key.into(), Value::U32(id as u32)));
        }
    }
    md.push((keys::TOKENIZER_ADD_BOS.into(), Value::Bool(false)));
    if let Some(t) = qinfer_engine::template::ChatTemplate::from_model_dir(dir)? {
        md.push((
            keys::CHAT_TEMPLATE.into(),
            Value::String(t.source().to_string()),
        ));
    }
    Ok(md)
}
