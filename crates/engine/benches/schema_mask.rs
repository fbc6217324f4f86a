//! The cost of structured outputs per token: llguidance's mask over the real Qwen vocabulary
//! (248,077 tokens) for a tool-call-like schema, along a valid answer, and the sampling mask
//! applied to a logits row. `cargo bench -p qinfer-engine --bench schema_mask`; figures in
//! docs/PERFORMANCE.md.

use criterion::{Criterion, criterion_group, criterion_main};
use qinfer_engine::generate::ModelBundle;
use serde_json::json;

fn schema_mask(c: &mut Criterion) {
    let bundle = ModelBundle::demo().unwrap();
    let tok = &bundle.tokenizer;
    let index = tok.schema_index().unwrap();
    let schema = json!({"type": "object", "properties": {
        "path": {"type": "string", "maxLength": 80},
        "line": {"type": "integer", "minimum": 1},
        "kind": {"enum": ["error", "warning", "note"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "ok": {"type": "boolean"}},
        "required": ["path", "line", "kind", "tags", "ok"], "additionalProperties": false});
    let answer = r#"{"path":"crates/server/src/responses.rs","line":412,"kind":"warning","tags":["store","eviction"],"ok":false}"#;
    let ids = tok.encode(answer).unwrap();
    let row = vec![0.5f32; tok.vocab_size()];
    c.bench_function(
        &format!(
            "schema mask: {} tokens of an answer, vocab {}",
            ids.len(),
            tok.vocab_size()
        ),
        |b| {
            b.iter(|| {
                let mut s = index.compile(&schema).unwrap();
                for &id in &ids {
                    std::hint::black_box(s.mask(&row).unwrap());
                    assert!(s.consume(id));
                }
            })
        },
    );
    c.bench_function("schema compile", |b| {
        b.iter(|| std::hint::black_box(index.compile(&schema).unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = schema_mask
}
criterion_main!(benches);
