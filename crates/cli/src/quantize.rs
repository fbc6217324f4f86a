//! `qinfer quantize IN OUT --type TYPE`: write a model as a llama.cpp-compatible GGUF file —
//! and, for a multimodal checkpoint, its vision tower as a llama.cpp `mmproj` file beside it
//! (`mmproj-<OUT's stem>.gguf`, which `qinfer` picks up when it loads OUT).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qinfer_formats::gguf::{GgufFile, Value, keys};
use qinfer_formats::hf_config::RawConfig;
use qinfer_formats::safetensors::Checkpoint;
use qinfer_model::ModelConfig;
use qinfer_model::export::{Exported, FileType, GgufExport, ImageNorm, export_gguf};
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
Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→IQ4_NL), as llama.cpp does.
The vision tower of a multimodal checkpoint goes to mmproj-<OUTPUT's stem>.gguf beside OUTPUT
(llama.cpp's mmproj layout): F32 with --type F32, else F16 weights with F32 norms, biases and
position table, as llama.cpp writes them. --no-mmproj skips it.";

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
    /// Do not write the vision tower of a multimodal checkpoint (mmproj-<OUTPUT's stem>.gguf).
    #[arg(long)]
    no_mmproj: bool,
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
    let mmproj = (!args.no_mmproj).then(|| mmproj_path(&args.output));
    let written = write_gguf(&input, &args.output, args.file_type, mmproj.as_deref())?;
    report(&args.output, &written.model, "", Some(written.model.mtp))?;
    match (&mmproj, &written.mmproj) {
        (Some(path), Some(tower)) => report(path, tower, "vision tower, ", None)?,
        _ => {
            let stale = mmproj_path(&args.output);
            if stale.exists() {
                note(&format!(
                    "{} (not written now) is beside the output: loading it picks up that \
                     vision tower",
                    stale.display()
                ));
            }
        }
    }
    Ok(())
}

/// Where the vision tower of a model written at `output` goes: `mmproj-<stem>.gguf` beside it,
/// the one `mmproj*.gguf` that loading `output` picks up.
pub fn mmproj_path(output: &Path) -> PathBuf {
    let stem = output.file_stem().unwrap_or_default().to_string_lossy();
    output.with_file_name(format!("mmproj-{stem}.gguf"))
}

/// What [`write_gguf`] wrote.
#[derive(Debug)]
pub struct Written {
    pub model: Exported,
    /// The vision tower's `mmproj` file, when asked for and the input has a tower.
    pub mmproj: Option<Exported>,
}

/// Writes `input` (a resolved model: checkpoint directory or GGUF) as a GGUF of `file_type`
/// at `output` and, when `mmproj` is given and the input is a checkpoint with a vision tower,
/// the tower as a llama.cpp `mmproj` file there. Each goes through a `.partial` file renamed
/// when both are complete (a failed or interrupted write never leaves a file at either path).
pub fn write_gguf(
    input: &Path,
    output: &Path,
    file_type: FileType,
    mmproj: Option<&Path>,
) -> Result<Written> {
    for out in std::iter::once(output).chain(mmproj) {
        if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(input).ok() {
            bail!("the output would overwrite the input {}", input.display());
        }
    }
    let partial = output.with_extension("gguf.partial");
    let mmproj_partial = mmproj.map(|p| p.with_extension("gguf.partial"));
    let remove_partials = || {
        for p in std::iter::once(&partial).chain(&mmproj_partial) {
            let _ = std::fs::remove_file(p);
        }
    };
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
        .map(|model| Written {
            model,
            mmproj: None,
        })
        .with_context(|| format!("cannot write {}", output.display()))
    } else {
        if input.is_file() {
            bail!(
                "{}: MODEL must be a model directory (config.json + safetensors) or a GGUF file",
                input.display()
            );
        }
        let mmproj = mmproj.zip(mmproj_partial.as_deref());
        export_checkpoint(input, (output, &partial), mmproj, file_type, &mut progress)
    };
    bar.finish_and_clear();
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            remove_partials();
            return Err(e);
        }
    };
    std::fs::rename(&partial, output)?;
    if let (Some(from), Some(to)) = (&mmproj_partial, mmproj)
        && written.mmproj.is_some()
    {
        std::fs::rename(from, to)?;
        warn_other_mmproj(to);
    }
    Ok(written)
}

/// Writes the checkpoint directory `input` as the model file (`output`: its final path and the
/// partial file written) and, when `mmproj` (likewise) is given and the checkpoint has a vision
/// tower, the tower's `mmproj` file.
fn export_checkpoint(
    input: &Path,
    (output, partial): (&Path, &Path),
    mmproj: Option<(&Path, &Path)>,
    file_type: FileType,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Written> {
    let (config, extra) = checkpoint_metadata(input)?;
    let checkpoint = Checkpoint::open_dir(input)?;
    let present = |n: &str| checkpoint.tensors.contains_key(n);
    let naming = Naming::Hf(Loader::detect_hf_prefix(&present)?);
    // The tower's file is planned (its header written) first: a tower the format cannot hold
    // stops the command before the model is written.
    let tower = match (mmproj, &config.vision) {
        (Some((path, tower_partial)), Some(Ok(_))) => {
            let context = || {
                format!(
                    "cannot write the vision tower to {} (--no-mmproj skips it)",
                    path.display()
                )
            };
            let norm = image_norm(input).with_context(context)?;
            GgufExport::create_mmproj(
                tower_partial,
                &present,
                naming,
                &config,
                norm,
                file_type,
                None,
            )
            .with_context(context)?
            .map(|t| (path, t))
        }
        (Some(_), Some(Err(why))) => {
            note(&format!(
                "the checkpoint's vision tower is not written: its vision_config cannot be \
                 used ({why})"
            ));
            None
        }
        _ => None,
    };
    let model = export_gguf(
        partial,
        &checkpoint,
        naming,
        &config,
        extra,
        file_type,
        progress,
    )
    .with_context(|| format!("cannot write {}", output.display()))?;
    let mmproj = tower
        .map(|(path, t)| {
            t.write_all(&checkpoint, progress)
                .with_context(|| format!("cannot write {}", path.display()))
        })
        .transpose()?;
    Ok(Written { model, mmproj })
}

/// The image normalisation of a checkpoint's processor (`preprocessor_config.json`, else
/// Qwen3.5/3.6's), for its `mmproj` file.
fn image_norm(dir: &Path) -> Result<ImageNorm> {
    let config =
        qinfer_engine::images::preprocess_config_in(dir).map_err(|e| anyhow::anyhow!(e))?;
    Ok((config.mean, config.std))
}

/// Loading a model picks up the `mmproj*.gguf` beside it only when it is the only one: says
/// so when `written` has company.
fn warn_other_mmproj(written: &Path) {
    let dir = match written.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let others = qinfer_engine::images::mmproj_files_beside(written)
        .iter()
        .filter(|p| p.file_name() != written.file_name())
        .count();
    if others > 0 {
        note(&format!(
            "{} holds {others} other mmproj*.gguf file(s); loading a model there picks up a \
             vision tower only when it is the one mmproj file (else pass --mmproj {})",
            dir.display(),
            written.display()
        ));
    }
}

/// A line for the user on stderr (stdout reports what was written).
fn note(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "note: {message}");
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

/// What `qinfer quantize` prints about a written file (`what`: after the path, e.g. "vision
/// tower, "), and the MTP head's fate for a model file.
fn report(output: &Path, written: &Exported, what: &str, mtp: Option<bool>) -> Result<()> {
    let types: Vec<String> = written
        .types
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    let mtp = match mtp {
        Some(true) => "; MTP head: written",
        Some(false) => "; MTP head: not in the input",
        None => "",
    };
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(
        out,
        "wrote {} ({what}{} tensors, {:.2} MiB of tensor data; {}{mtp})",
        output.display(),
        written.tensors,
        written.bytes as f64 / (1u64 << 20) as f64,
        types.join(", "),
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
