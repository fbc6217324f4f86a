//! Time to first token of the last turn of an agent-like conversation, with the prompt cache
//! on and off, on a random-weight model of a real shape (run by `tools/bench_prompt_cache.sh`).
//!
//! The conversation: a system prompt with tool descriptions, then turns of "tool result →
//! short assistant answer" until the history reaches `--history` tokens; the measured turn
//! adds one more tool result. Turns are built from token ids (prompt + generated ids + the
//! next message) so they extend each other exactly, as a trained model's re-rendered history
//! does with `preserve_thinking`.
//!
//! usage: prompt_cache_ttft [--shape 0.8b|demo] [--history TOKENS] [--turns N] [--answer N]

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use qinfer_engine::demo::random_model;
use qinfer_engine::generate::{Flow, GenerateOptions, ModelBundle, Sequence, generate};
use qinfer_engine::parser::ParserOptions;
use qinfer_engine::prompt_cache::{CacheOptions, PromptCache};
use qinfer_engine::sampler::SamplingParams;

/// Qwen3.5-0.8B's shape (hidden 1024, 24 layers of which 6 attention, 16+16 DeltaNet heads
/// of 128, FFN 3584, vocabulary 248,320, tied embeddings).
const SHAPE_0_8B: &str = r#"{
  "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
  "hidden_size": 1024, "num_hidden_layers": 24, "full_attention_interval": 4,
  "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256, "attn_output_gate": true,
  "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
  "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "intermediate_size": 3584,
  "hidden_act": "silu", "vocab_size": 248320, "rms_norm_eps": 1e-6,
  "max_position_embeddings": 262144,
  "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                      "mrope_section": [11, 11, 10], "mrope_interleaved": true},
  "tie_word_embeddings": true
}"#;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = arg("--shape", "0.8b");
    let history: usize = arg("--history", "8192").parse()?;
    let turns: usize = arg("--turns", "10").parse()?;
    let answer: usize = arg("--answer", "16").parse()?;
    let mut out = std::io::stdout().lock();

    let mut bundle = ModelBundle::demo()?;
    if shape == "0.8b" {
        let t = Instant::now();
        bundle.model = random_model(SHAPE_0_8B)?;
        writeln!(
            out,
            "model: 0.8B shape, random BF16 weights ({:.1} s to build)",
            t.elapsed().as_secs_f64()
        )?;
    } else {
        writeln!(out, "model: the demo model")?;
    }
    let enc = |s: &str| bundle.tokenizer.encode(s);
    let opts = |max_tokens| GenerateOptions {
        json_object: false,
        json_schema: None,
        strict_tools: false,
        single_call: false,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens,
        parser: ParserOptions {
            starts_in_reasoning: true,
            tools: Vec::new(),
        },
        ..GenerateOptions::default()
    };

    // A tool result of about `n` tokens.
    let tool_result = |turn: usize, n: usize| -> Result<Vec<u32>, Box<dyn std::error::Error>> {
        let mut text =
            format!("<|im_end|>\n<|im_start|>user\n<tool_response>\n$ ls -l src/ # call {turn}\n");
        let mut ids = enc(&text)?;
        let mut i = 0;
        while ids.len() < n {
            text.push_str(&format!(
                "-rw-r--r-- 1 agent staff {} Nov 24 01:{:02} module_{turn}_{i}.rs\n",
                1000 + 37 * i,
                i % 60
            ));
            i += 1;
            if i % 8 == 0 {
                ids = enc(&text)?;
            }
        }
        text.push_str("</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n");
        Ok(enc(&text)?)
    };
    let mut system = String::from(
        "<|im_start|>system\nYou are a coding agent. Tools: ls(path), cat(path), grep(pattern, path), \
         edit(path, old, new), run(command). Answer with one tool call per turn.\n",
    );
    for i in 0..40 {
        system.push_str(&format!(
            "Rule {i}: keep edits minimal, quote paths exactly, and re-run the tests after change {i}.\n"
        ));
    }
    system.push_str("<|im_end|>\n<|im_start|>user\nFix the failing test in crates/cache.");
    let mut prompt = enc(&system)?;
    let per_turn = history.saturating_sub(prompt.len()) / turns.saturating_sub(1).max(1);

    // Turns 1..N-1 through the cache (and remember the ids so the cold run sees the same).
    let cache = Arc::new(PromptCache::new(
        &bundle.model,
        CacheOptions {
            budget_bytes: usize::MAX,
            snapshot_every: None,
            dir: None,
        },
    ));
    writeln!(
        out,
        "snapshot every {} prefill tokens",
        cache.snapshot_every()
    )?;
    writeln!(out, "turn  prompt  cached  processed  prefill_s")?;
    for turn in 1..turns {
        prompt.extend(tool_result(turn, per_turn.saturating_sub(answer))?);
        let mut seq = Sequence::with_cache(&bundle.model, Arc::clone(&cache));
        let g = generate(&bundle, &mut seq, &prompt, &opts(answer), &mut |_| {
            Flow::Continue
        })?;
        writeln!(
            out,
            "{turn:>4}  {:>6}  {:>6}  {:>9}  {:>9.2}",
            g.prompt_tokens,
            g.reused_tokens,
            g.prompt_tokens - g.reused_tokens,
            g.prefill_time.as_secs_f64(),
        )?;
        out.flush()?;
        prompt.extend(&g.ids);
    }
    prompt.extend(tool_result(turns, 200)?);

    // The measured turn: first token only.
    let ttft = |cached: bool| -> Result<(f64, usize), Box<dyn std::error::Error>> {
        let mut seq = if cached {
            Sequence::with_cache(&bundle.model, Arc::clone(&cache))
        } else {
            Sequence::new(&bundle.model)
        };
        let t = Instant::now();
        let g = generate(&bundle, &mut seq, &prompt, &opts(1), &mut |_| {
            Flow::Continue
        })?;
        Ok((t.elapsed().as_secs_f64(), g.prompt_tokens - g.reused_tokens))
    };
    let (on, on_processed) = ttft(true)?;
    let (off, off_processed) = ttft(false)?;
    let s = cache.stats();
    writeln!(
        out,
        "turn {turns}: prompt {} tokens; TTFT cache on {on:.2} s ({on_processed} tokens processed), \
         cache off {off:.2} s ({off_processed} tokens processed); speed-up {:.1}x",
        prompt.len(),
        off / on.max(1e-9)
    )?;
    writeln!(
        out,
        "cache: {} nodes, {} snapshots, {:.1} MiB; {} lookups, {} hits, {} misses, {} prompt tokens processed of {}",
        s.nodes,
        s.snapshots,
        s.bytes as f64 / (1 << 20) as f64,
        s.lookups,
        s.hits,
        s.misses,
        s.processed_tokens,
        s.prompt_tokens
    )?;
    Ok(())
}
