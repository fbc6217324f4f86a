//! `qinfer run`: chat in the terminal.
//!
//! Streams the answer as it is generated, with reasoning shown dimmed. `/think` and
//! `/nothink` switch thinking, `/reset` starts over, a line ending in `\` (or a `"""` block)
//! continues onto the next line, and Ctrl-C stops the current answer (not the program).
//! Past turns keep their reasoning (`preserve_thinking`), so each turn's prompt extends the
//! previous one and only the new tokens are processed. `/image PATH` (or a line that is just
//! the path of an image file) attaches an image to the next message, for a model with a
//! vision tower.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::Args;
use qinfer_engine::generate::{
    FinishReason, Flow, GenerateOptions, ModelBundle, Sequence, generate_with_images,
};
use qinfer_engine::images::{ReadImage, place_images, read_image};
use qinfer_engine::parser::{Event, ParserOptions};
use qinfer_engine::session;
use qinfer_engine::template::RenderRequest;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::SamplingArgs;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model directory or Hugging Face repo id; without it, a built-in demo model.
    model: Option<PathBuf>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Start with thinking off (toggle with /think and /nothink).
    #[arg(long)]
    no_think: bool,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 8192)]
    max_tokens: usize,
    /// End thinking after this many tokens by forcing `</think>`.
    #[arg(long)]
    reasoning_budget: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print each rendered prompt (dimmed, escaped on one line) before the answer.
    #[arg(long)]
    show_prompt: bool,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    model_opts: crate::ModelOptions,
    /// Keep the conversation in FILE: resume it (messages and model state, nothing processed
    /// again) if FILE exists, and save it after every answer.
    #[arg(long, value_name = "FILE")]
    session: Option<PathBuf>,
}

const HELP: &str = "/think, /nothink  thinking on or off\n/reset            start a new conversation\n\
/image PATH       attach an image to the next message (or type the file's path on its own line)\n\
/exit             quit (or Ctrl-D)\nEnd a line with \\ to continue it; \"\"\" starts and ends a multi-line block.\n\
Ctrl-C stops the current answer.";

pub fn run(args: RunArgs) -> Result<()> {
    let bundle = match &args.model {
        Some(m) => crate::load_bundle(m, args.threads, &args.model_opts)?,
        None => {
            qinfer_cpu::init_threads(args.threads);
            let mut bundle = ModelBundle::demo()?;
            args.model_opts.apply(&mut bundle.model)?;
            if let Some(images) = bundle.images.as_mut() {
                args.model_opts.image_pixels(&mut images.preprocess)?;
            }
            bundle
        }
    };
    bundle.template()?;
    // The model's context if one sequence of it fits the memory, else the largest that does.
    let limit = bundle.model.config.max_positions;
    let plan = qinfer_engine::plan::MemoryPlan::new(&bundle.model, limit, 1, 0, 512);
    let (context, cut) =
        qinfer_engine::plan::choose_ctx(&plan, qinfer_engine::plan::available_memory(), limit);
    if cut {
        writeln!(
            std::io::stderr(),
            "context: {context} tokens, the most that fits the memory (the model's is {limit}; see `qinfer fit`)"
        )?;
    }
    let sampling = args.sampling.apply(bundle.defaults.clone())?;
    let color = std::io::stdout().is_terminal();
    let (dim, reset) = if color {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    };
    let mut out = std::io::stdout().lock();
    if bundle.is_demo {
        writeln!(
            out,
            "{dim}This is qinfer's built-in DEMO model: tiny, with random weights. It shows the whole \
             pipeline (real Qwen tokenizer and chat template) but produces random text.\nTo chat with a \
             real model: `qinfer pull Qwen/Qwen3.6-27B` then `qinfer run Qwen/Qwen3.6-27B`, or \
             `qinfer run /path/to/model-dir`.{reset}"
        )?;
    } else {
        writeln!(
            out,
            "{dim}{} ({} layers){reset}",
            bundle.name,
            bundle.model.config.n_layers()
        )?;
    }
    writeln!(out, "{dim}/help for commands{reset}")?;
    drop(out);

    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))?;
    let mut editor = DefaultEditor::new()?;
    let mut thinking = !args.no_think;
    let mut messages: Vec<serde_json::Value> = Vec::new();
    // Every image of the conversation, in the order the messages show them, and those attached
    // to the next message.
    let mut images: Vec<ReadImage> = Vec::new();
    let mut attached: Vec<ReadImage> = Vec::new();
    let mut seq = Sequence::new(&bundle.model);
    if let Some(path) = args.session.as_deref().filter(|p| p.exists()) {
        let saved = session::load(path, &bundle.model).map_err(anyhow::Error::msg)?;
        messages = saved.messages;
        seq = saved.sequence;
        if let Some(t) = saved.settings.get("thinking").and_then(|t| t.as_bool()) {
            thinking = t;
        }
        writeln!(
            std::io::stdout().lock(),
            "{dim}resumed {}: {} messages, {} tokens (not processed again){reset}",
            path.display(),
            messages.len(),
            seq.tokens.len()
        )?;
    }
    let save = |messages: &[serde_json::Value], seq: &Sequence, thinking: bool| -> Result<()> {
        if let Some(path) = &args.session {
            let settings = serde_json::json!({"thinking": thinking});
            session::save(path, &bundle.model, messages, &settings, seq)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        Ok(())
    };

    loop {
        let Some(input) = read_input(&mut editor)? else {
            break;
        };
        let trimmed = input.trim();
        let mut out = std::io::stdout().lock();
        match trimmed {
            "" => continue,
            "/exit" | "/bye" | "/quit" => break,
            "/help" => {
                writeln!(out, "{HELP}")?;
                continue;
            }
            "/think" | "/nothink" => {
                thinking = trimmed == "/think";
                writeln!(
                    out,
                    "{dim}thinking {}{reset}",
                    if thinking { "on" } else { "off" }
                )?;
                continue;
            }
            "/reset" => {
                messages.clear();
                images.clear();
                attached.clear();
                seq.reset(&bundle.model);
                save(&messages, &seq, thinking)?;
                writeln!(out, "{dim}new conversation{reset}")?;
                continue;
            }
            t if t.starts_with("/image ") || is_image_path(t) => {
                let path = t.strip_prefix("/image ").unwrap_or(t).trim();
                let _ = editor.add_history_entry(trimmed);
                match attach(&bundle, path, args.session.is_some()) {
                    Ok(img) => {
                        let [_, h, w] = img.grid;
                        writeln!(
                            out,
                            "{dim}attached {path}: {} tokens ({h}×{w} patches){reset}",
                            bundle
                                .model
                                .vision
                                .as_ref()
                                .map_or(0, |v| v.config.tokens_for(img.grid))
                        )?;
                        attached.push(img);
                    }
                    Err(e) => writeln!(out, "{e}")?,
                }
                continue;
            }
            t if t.starts_with('/') && !t.contains(' ') => {
                writeln!(out, "unknown command {t}; /help lists them")?;
                continue;
            }
            _ => {}
        }
        let _ = editor.add_history_entry(trimmed);
        let new_images = attached.len();
        if attached.is_empty() {
            messages.push(serde_json::json!({"role": "user", "content": input}));
        } else {
            let mut content: Vec<serde_json::Value> = attached
                .iter()
                .map(|_| serde_json::json!({"type": "image"}))
                .collect();
            content.push(serde_json::json!({"type": "text", "text": input}));
            messages.push(serde_json::json!({"role": "user", "content": content}));
            images.append(&mut attached);
        }
        let mut all = Vec::new();
        if let Some(s) = &args.system {
            all.push(serde_json::json!({"role": "system", "content": s}));
        }
        all.extend(messages.iter().cloned());
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("enable_thinking".into(), thinking.into());
        kwargs.insert("preserve_thinking".into(), true.into());
        let prompt = bundle.template()?.render(&RenderRequest {
            messages: &serde_json::Value::Array(all),
            tools: None,
            add_generation_prompt: true,
            kwargs: &kwargs,
        })?;
        if args.show_prompt {
            writeln!(out, "{dim}prompt: {prompt:?}{reset}")?;
        }
        let ids = bundle.tokenizer.encode(&prompt)?;
        let placed = if images.is_empty() {
            Ok((ids, Vec::new()))
        } else {
            place_images(&bundle.model, &ids, images.clone())
        };
        let (ids, placed) = match placed {
            Ok(p) => p,
            Err(e) => {
                writeln!(out, "{e}")?;
                messages.pop();
                images.truncate(images.len() - new_images);
                continue;
            }
        };
        if ids.len() >= context {
            writeln!(
                out,
                "the conversation ({} tokens) fills the context of {context}; /reset to start over",
                ids.len()
            )?;
            messages.pop();
            images.truncate(images.len() - new_images);
            continue;
        }
        let opts = GenerateOptions {
            json_object: false,
            json_schema: None,
            strict_tools: false,
            single_call: false,
            sampling: sampling.clone(),
            // An answer may use what is left of the context.
            max_tokens: args.max_tokens.min(context - ids.len()),
            stop_strings: args.sampling.stop.clone(),
            stop_ids: Vec::new(),
            ignore_eos: false,
            reasoning_budget: args.reasoning_budget,
            parser: ParserOptions {
                starts_in_reasoning: prompt.ends_with("<think>\n"),
                tools: Vec::new(),
            },
        };
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut in_reasoning = false;
        let result = generate_with_images(&bundle, &mut seq, &ids, &placed, &opts, &mut |e| {
            let (text, reasoning) = match e {
                Event::Reasoning(t) => (t.as_str(), true),
                Event::Content(t) => (t.as_str(), false),
                Event::ToolCallEnd { raw, .. } => (raw.as_str(), false),
                _ => ("", in_reasoning),
            };
            if reasoning != in_reasoning && !text.is_empty() {
                let _ = write!(out, "{}", if reasoning { dim } else { reset });
                if !reasoning {
                    let _ = writeln!(out, "\n");
                }
                in_reasoning = reasoning;
            }
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            if INTERRUPTED.load(Ordering::SeqCst) {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        });
        write!(out, "{reset}")?;
        match result {
            Ok(g) => {
                let note = match &g.finish {
                    FinishReason::Cancelled => " interrupted;",
                    FinishReason::Length => " max tokens reached;",
                    _ => "",
                };
                let drafts = match g.drafts.drafted {
                    0 => String::new(),
                    n => format!("; {} of {n} drafts accepted", g.drafts.accepted),
                };
                writeln!(
                    out,
                    "\n{dim}[{note} {} tokens, {:.1} tok/s; prompt {} tokens, {} reused{drafts}]{reset}",
                    g.ids.len(),
                    g.decode_tokens_per_second(),
                    g.prompt_tokens,
                    g.reused_tokens
                )?;
                messages.push(serde_json::json!({
                    "role": "assistant",
                    "content": g.parsed.content,
                    "reasoning_content": g.parsed.reasoning,
                }));
                save(&messages, &seq, thinking)?;
            }
            Err(e) => {
                writeln!(out, "\nerror: {e}")?;
                messages.pop();
                images.truncate(images.len() - new_images);
            }
        }
    }
    Ok(())
}

/// Whether a line is just the path of an existing image file (as a terminal pastes a dragged
/// file).
fn is_image_path(line: &str) -> bool {
    let p = std::path::Path::new(line.trim_matches(|c| c == '\'' || c == '"'));
    let image = p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["png", "jpg", "jpeg", "webp", "gif"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    });
    image && !line.contains('\n') && p.is_file()
}

/// Reads an image for the next message.
fn attach(bundle: &ModelBundle, path: &str, session: bool) -> Result<ReadImage, String> {
    let path = path.trim_matches(|c| c == '\'' || c == '"');
    let Some(opts) = bundle.images.as_ref() else {
        return Err(format!(
            "{} has no vision tower: it cannot take images (for a GGUF model, give its mmproj \
             file with --mmproj)",
            bundle.name
        ));
    };
    if session {
        return Err(
            "images are not kept in session files yet: run without --session to \
                    send images"
                .into(),
        );
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    read_image(&bytes, opts).map_err(|e| format!("{path}: {e}"))
}

/// One user message: a line, lines joined by a trailing `\`, or a `"""` block. `None` at EOF.
fn read_input(editor: &mut DefaultEditor) -> Result<Option<String>> {
    let mut text = String::new();
    let mut block = false;
    loop {
        let prompt = if text.is_empty() && !block {
            ">>> "
        } else {
            "... "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if line.trim() == "\"\"\"" {
                    if block {
                        return Ok(Some(text));
                    }
                    block = true;
                    continue;
                }
                if block {
                    text.push_str(&line);
                    text.push('\n');
                } else if let Some(head) = line.strip_suffix('\\') {
                    text.push_str(head);
                    text.push('\n');
                } else {
                    text.push_str(&line);
                    return Ok(Some(text));
                }
            }
            Err(ReadlineError::Interrupted) => {
                writeln!(std::io::stdout().lock(), "(Ctrl-D or /exit quits)")?;
                text.clear();
                block = false;
            }
            Err(ReadlineError::Eof) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}
