//! `qinfer inspect MODEL`: what a model directory contains, without running it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use qinfer_formats::hf_config::RawConfig;
use qinfer_formats::safetensors::Checkpoint;
use qinfer_model::{FeedForwardConfig, LayerKind, ModelConfig, Qwen35};

/// Prints architecture, layer pattern, parameter count, dtypes and the tensor table.
pub fn run(dir: &Path, out: &mut impl Write) -> Result<()> {
    let config_path = dir.join("config.json");
    let raw = RawConfig::from_file(&config_path)?;
    let config = ModelConfig::from_hf(&raw)
        .with_context(|| format!("{}: unsupported config", config_path.display()))?;
    let checkpoint = Checkpoint::open_dir(dir)?;
    let model = Qwen35::from_checkpoint(config.clone(), &checkpoint)
        .with_context(|| format!("cannot load model {}", dir.display()))?;

    let arch = raw
        .architectures
        .as_deref()
        .and_then(|a| a.first())
        .map_or("-", String::as_str);
    writeln!(out, "model         {}", dir.display())?;
    writeln!(
        out,
        "architecture  {arch} ({}, {:?} config)",
        config.model_type, config.form
    )?;
    let pattern: String = config
        .layers
        .iter()
        .map(|k| match k {
            LayerKind::DeltaNet => 'D',
            LayerKind::Attention => 'A',
        })
        .collect();
    let n_attn = config
        .layers
        .iter()
        .filter(|k| **k == LayerKind::Attention)
        .count();
    writeln!(
        out,
        "layers        {} ({} Gated DeltaNet + {} gated attention): {pattern}",
        config.n_layers(),
        config.n_layers() - n_attn,
        n_attn
    )?;
    writeln!(
        out,
        "hidden        {}   vocab {}   context {}",
        config.hidden, config.vocab, config.max_positions
    )?;
    let a = config.attention;
    writeln!(
        out,
        "attention     {} q / {} kv heads × {}, output gate {}",
        a.n_heads, a.n_kv_heads, a.head_dim, a.output_gate
    )?;
    let d = config.deltanet;
    writeln!(
        out,
        "deltanet      {} k / {} v heads, dk {} dv {}, conv {}",
        d.n_k_heads, d.n_v_heads, d.k_head_dim, d.v_head_dim, d.conv_kernel
    )?;
    let r = config.rope;
    writeln!(
        out,
        "rope          theta {} rotary {} of {} dims, mrope {:?}{}",
        r.theta,
        r.rotary_dim,
        a.head_dim,
        r.mrope_section,
        if r.mrope_interleaved {
            " interleaved"
        } else {
            ""
        }
    )?;
    if let Some(y) = r.yarn {
        writeln!(
            out,
            "yarn          factor {} over {} tokens (context {}), beta {}/{}, attention factor {:.4}",
            y.factor,
            y.original_ctx,
            config.max_positions,
            y.beta_fast,
            y.beta_slow,
            y.attention_factor
        )?;
    }
    match config.feed_forward {
        FeedForwardConfig::Dense { intermediate } => {
            writeln!(out, "ffn           dense SwiGLU {intermediate}")?
        }
        FeedForwardConfig::Moe {
            n_experts,
            top_k,
            expert_intermediate,
            shared_intermediate,
        } => writeln!(
            out,
            "ffn           MoE {n_experts} experts, top-{top_k}, expert {expert_intermediate}, shared {shared_intermediate}"
        )?,
    }
    writeln!(out, "tied lm head  {}", config.tie_embeddings)?;
    writeln!(
        out,
        "parameters    {} (text model){}",
        human_count(model.parameter_count()),
        match config.feed_forward {
            FeedForwardConfig::Moe {
                n_experts, top_k, ..
            } => format!(
                "; {} active per token ({top_k} of {n_experts} experts)",
                human_count(config.active_parameter_count())
            ),
            FeedForwardConfig::Dense { .. } => String::new(),
        }
    )?;
    match (&model.vision, &config.vision) {
        (Some(t), _) => {
            let v = &t.config;
            writeln!(
                out,
                "vision        tower of {} blocks × {}, {} heads, patch {}, {}×{} merge → {}; image token {}",
                v.depth, v.hidden, v.heads, v.patch, v.merge, v.merge, v.out_hidden, v.image_token
            )?;
        }
        (None, Some(Err(why))) => writeln!(out, "vision        not loaded: {why}")?,
        (None, _) => {}
    }
    writeln!(
        out,
        "extras        {} MTP tensors, {} vision tensors not used{}",
        model.extras.mtp.len(),
        model.extras.vision.len(),
        if model.extras.unknown.is_empty() {
            String::new()
        } else {
            format!(", {} unknown", model.extras.unknown.len())
        }
    )?;

    let mut by_dtype: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut total = 0;
    for t in checkpoint.tensors.values() {
        let e = by_dtype.entry(t.dtype.to_string()).or_default();
        e.0 += 1;
        e.1 += t.data.len();
        total += t.data.len();
    }
    let dtypes: Vec<String> = by_dtype
        .iter()
        .map(|(d, (n, b))| format!("{d}: {n} tensors, {}", human_bytes(*b)))
        .collect();
    writeln!(out, "dtypes        {}", dtypes.join("; "))?;
    writeln!(
        out,
        "files         {} ({} in all)",
        checkpoint.files.len(),
        human_bytes(total)
    )?;
    writeln!(out)?;
    let width = checkpoint
        .tensors
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(4);
    writeln!(
        out,
        "{:width$}  {:5}  {:>20}  {:>10}",
        "tensor", "dtype", "shape", "bytes"
    )?;
    for (name, t) in &checkpoint.tensors {
        writeln!(
            out,
            "{name:width$}  {:5}  {:>20}  {:>10}",
            t.dtype.to_string(),
            format!("{:?}", t.shape),
            t.data.len()
        )?;
    }
    Ok(())
}

pub(crate) fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B ({n})", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M ({n})", n as f64 / 1e6),
        n => format!("{n}"),
    }
}

fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Prints a GGUF file's architecture (as qinfer reads it), metadata and tensor table.
pub fn run_gguf(path: &Path, out: &mut impl Write) -> Result<()> {
    use qinfer_formats::gguf::{GgufFile, Value};
    let file = GgufFile::open(path)?;
    writeln!(
        out,
        "model         {} (GGUF v{}, {} file(s))",
        path.display(),
        file.version,
        file.files.len()
    )?;
    match qinfer_model::gguf::config_from_gguf(&file) {
        Ok(c) => {
            let pattern: String = c
                .layers
                .iter()
                .map(|k| if *k == LayerKind::Attention { 'A' } else { 'D' })
                .collect();
            writeln!(
                out,
                "architecture  {} ({} layers: {pattern}), hidden {}, vocab {}",
                c.model_type,
                c.n_layers(),
                c.hidden,
                c.vocab
            )?;
            writeln!(
                out,
                "parameters    {} (text model, from the config)",
                human_count(c.parameter_count())
            )?;
        }
        Err(e) => writeln!(out, "architecture  not runnable by qinfer: {e}")?,
    }
    let mut by_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in &file.tensors {
        let e = by_type.entry(t.type_name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.data.len();
    }
    let total: usize = by_type.values().map(|v| v.1).sum();
    let types: Vec<String> = by_type
        .iter()
        .map(|(d, (n, b))| format!("{d}: {n} tensors, {}", human_bytes(*b)))
        .collect();
    writeln!(out, "types         {}", types.join("; "))?;
    writeln!(out, "size          {}", human_bytes(total))?;
    writeln!(out, "\nmetadata")?;
    for (k, v) in &file.metadata {
        let shown = match v {
            Value::Array(items) if items.len() > 8 => format!("[{} items]", items.len()),
            Value::String(s) if s.len() > 120 => format!(
                "{:?}… ({} bytes)",
                &s[..s.char_indices().nth(100).map_or(s.len(), |(i, _)| i)],
                s.len()
            ),
            other => format!("{other:?}"),
        };
        writeln!(out, "  {k} = {shown}")?;
    }
    writeln!(out)?;
    let width = file.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6);
    writeln!(
        out,
        "{:width$}  {:8}  {:>20}  {:>10}",
        "tensor", "type", "shape", "bytes"
    )?;
    for t in &file.tensors {
        writeln!(
            out,
            "{:width$}  {:8}  {:>20}  {:>10}",
            t.name,
            t.type_name(),
            format!("{:?}", t.shape()),
            t.data.len()
        )?;
    }
    Ok(())
}

/// `qinfer inspect --devices`: the GPU adapters wgpu finds, best first, and which one
/// `--device auto` takes.
pub fn devices(json: bool, out: &mut impl Write) -> Result<()> {
    let all = qinfer_gpu::adapters();
    let auto = all.iter().position(|a| a.kind.is_hardware());
    if json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|a| {
                serde_json::json!({
                    "index": a.index,
                    "device": format!("gpu:{}", a.index),
                    "name": a.name,
                    "kind": a.kind.name(),
                    "api": a.api,
                    "driver": a.driver,
                    "max_binding_bytes": a.max_binding_bytes,
                    "max_buffer_bytes": a.max_buffer_bytes,
                    "memory_bytes": a.memory_bytes,
                    "features": a.features,
                    "auto": Some(a.index) == auto,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(list))?;
        return Ok(());
    }
    if all.is_empty() {
        writeln!(
            out,
            "no GPU adapter found (no Vulkan, Metal or DX12 device); --device auto runs on the CPU"
        )?;
        return Ok(());
    }
    for a in &all {
        let memory = a.memory_bytes.map_or("not reported".to_string(), |b| {
            format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
        });
        writeln!(
            out,
            "gpu:{}  {}  ({} {}, {})",
            a.index,
            a.name,
            a.kind.name(),
            a.api,
            a.driver
        )?;
        writeln!(
            out,
            "        memory {memory}; largest binding {:.0} MiB, buffer {:.0} MiB; features: {}",
            a.max_binding_bytes as f64 / (1u64 << 20) as f64,
            a.max_buffer_bytes as f64 / (1u64 << 20) as f64,
            if a.features.is_empty() {
                "none".to_string()
            } else {
                a.features.join(", ")
            }
        )?;
    }
    match auto {
        Some(i) => writeln!(out, "--device auto takes gpu:{i}")?,
        None => writeln!(
            out,
            "--device auto takes the CPU (no hardware GPU: a software adapter runs only with --device gpu)"
        )?,
    }
    Ok(())
}
