//! `qinfer tokenize` and `qinfer render`: the text pipeline without the weights.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use qinfer_engine::generate::ModelBundle;
use qinfer_engine::template::{ChatTemplate, RenderRequest};
use qinfer_engine::tokenizer::Tokenizer;

use crate::model_dir;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Model directory with tokenizer.json, a repo id in the Hugging Face cache, or `demo`.
    model: PathBuf,
    /// Text to tokenize (special tokens such as <|im_start|> become their single ids).
    text: String,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Model directory with a chat template, a repo id in the Hugging Face cache, or `demo`.
    model: PathBuf,
    /// JSON file: an array of messages, or an object with "messages" (and "tools").
    #[arg(long)]
    messages: PathBuf,
    /// JSON file: an array of tool definitions (OpenAI format).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long)]
    kwargs: Option<String>,
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let path = if crate::is_demo(&args.model) {
        None
    } else {
        Some(crate::resolve_model(&args.model)?)
    };
    let tok = if crate::is_demo(&args.model) {
        ModelBundle::demo_tokenizer()?
    } else if let Some(p) = path.as_ref().filter(|p| crate::is_gguf(p)) {
        qinfer_engine::gguf_text::tokenizer_from_gguf(&qinfer_formats::gguf::GgufFile::open(p)?)?
    } else {
        let dir = model_dir(&args.model)?;
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            bail!("{}: no tokenizer.json", dir.display());
        }
        Tokenizer::from_file(&path)?
    };
    let ids = tok.encode(&args.text)?;
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&ids)?)?;
    Ok(())
}

fn read_json(path: &PathBuf) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

pub fn render(args: RenderArgs) -> Result<()> {
    let template = if crate::is_demo(&args.model) {
        ModelBundle::demo()?
            .template
            .context("the demo model has a chat template")?
    } else {
        let dir = model_dir(&args.model)?;
        ChatTemplate::from_model_dir(&dir)?.with_context(|| {
            format!(
                "{}: no chat template (chat_template.jinja or tokenizer_config.json)",
                dir.display()
            )
        })?
    };
    let doc = read_json(&args.messages)?;
    let (messages, mut tools) = match &doc {
        serde_json::Value::Array(_) => (doc.clone(), None),
        serde_json::Value::Object(o) => (
            o.get("messages")
                .cloned()
                .with_context(|| format!("{}: no \"messages\"", args.messages.display()))?,
            o.get("tools").cloned(),
        ),
        _ => bail!(
            "{}: expected an array of messages or an object with \"messages\"",
            args.messages.display()
        ),
    };
    if let Some(path) = &args.tools {
        tools = Some(read_json(path)?);
    }
    let kwargs = match &args.kwargs {
        Some(k) => {
            match serde_json::from_str::<serde_json::Value>(k).context("--kwargs: invalid JSON")? {
                serde_json::Value::Object(o) => o,
                _ => bail!("--kwargs must be a JSON object"),
            }
        }
        None => serde_json::Map::new(),
    };
    let prompt = template.render(&RenderRequest {
        messages: &messages,
        tools: tools.as_ref(),
        add_generation_prompt: true,
        kwargs: &kwargs,
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(prompt.as_bytes())?;
    out.flush()?;
    Ok(())
}
