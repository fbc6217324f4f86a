//! The engine loop on its own: batching never changes a request's tokens, a request that
//! brings its own state continues it exactly, and a cancelled request frees its slot.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use qinfer_engine::counters::Counters;
use qinfer_engine::engine::{
    CacheHook, Ended, Engine, EngineModel, Gone, Out, Request, SchedulerConfig, Sink, Start,
    Summary,
};
use qinfer_engine::generate::{
    FinishReason, Flow, GenerateOptions, ModelBundle, Sequence, generate, run_one,
};
use qinfer_engine::sampler::SamplingParams;

fn demo() -> &'static ModelBundle {
    static B: OnceLock<ModelBundle> = OnceLock::new();
    B.get_or_init(|| ModelBundle::demo().unwrap())
}

fn prompt(words: usize, topic: &str) -> Vec<u32> {
    let text = format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", {
        (0..words)
            .map(|i| format!("{topic}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    demo().tokenizer.encode(&text).unwrap()
}

fn options(seed: Option<u64>, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams {
            temperature: if seed.is_some() { 0.8 } else { 0.0 },
            seed,
            ..SamplingParams::default()
        },
        max_tokens,
        ..GenerateOptions::default()
    }
}

/// What a request reported, shared with the test.
#[derive(Default)]
struct Record {
    ended: Option<Ended>,
    summary: Option<Summary>,
    tokens: usize,
    /// Report `Gone` once this many tokens have come.
    leave_after: Option<usize>,
}

#[derive(Clone, Default)]
struct Collect(Rc<RefCell<Record>>);

impl Sink for Collect {
    fn send(&mut self, out: Out) -> Result<(), Gone> {
        let mut r = self.0.borrow_mut();
        match out {
            Out::Token { .. } => r.tokens += 1,
            Out::Done(s) => r.summary = Some(s),
            Out::Failed(m) => panic!("request failed: {m}"),
        }
        if r.leave_after.is_some_and(|n| r.tokens >= n) {
            Err(Gone)
        } else {
            Ok(())
        }
    }

    fn is_closed(&self) -> bool {
        let r = self.0.borrow();
        r.leave_after.is_some_and(|n| r.tokens >= n)
    }

    fn ended(&mut self, ended: Ended) {
        self.0.borrow_mut().ended = Some(ended);
    }
}

fn engine(config: SchedulerConfig) -> (Engine<'static, Collect>, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let e = Engine::new(
        demo().engine_model(),
        config,
        CacheHook::default(),
        counters.clone(),
    );
    (e, counters)
}

fn lone(prompt: &[u32], opts: &GenerateOptions) -> Vec<u32> {
    let b = demo();
    let mut seq = Sequence::new(&b.model);
    generate(b, &mut seq, prompt, opts, &mut |_| Flow::Continue)
        .unwrap()
        .ids
}

/// Requests of different lengths, greedy and seeded, run together in small steps (prompt
/// chunks of 64 positions, several sequences per step) produce exactly what each produces
/// alone through `generate`.
#[test]
fn concurrent_requests_equal_sequential_generations() {
    let cases: Vec<(Vec<u32>, GenerateOptions)> = (0..6)
        .map(|i| {
            let p = prompt(10 + 17 * i, ["alpha", "beta", "gamma"][i % 3]);
            let seed = (i % 2 == 1).then_some(i as u64);
            (p, options(seed, 5 + i))
        })
        .collect();
    assert!(
        cases.iter().any(|(p, _)| p.len() > 128),
        "prompts span chunks"
    );
    let (mut e, counters) = engine(SchedulerConfig {
        max_seqs: 4,
        max_queue: 16,
        max_step_tokens: 100,
        prefill_chunk: 64,
    });
    let records: Vec<Collect> = cases
        .iter()
        .map(|(p, opts)| {
            let c = Collect::default();
            e.submit(Request::new(p.clone(), opts.clone(), c.clone()));
            c
        })
        .collect();
    e.run_until_idle();
    for (i, ((p, opts), r)) in cases.iter().zip(&records).enumerate() {
        let r = r.0.borrow();
        let ended = r.ended.as_ref().expect("ended");
        assert_eq!(ended.ids, lone(p, opts), "request {i}");
        assert!(ended.sequence.is_none(), "no state of its own, none back");
    }
    let steps = counters.steps.load(std::sync::atomic::Ordering::Relaxed);
    let lone_steps: usize = cases
        .iter()
        .map(|(p, o)| p.len().div_ceil(64) + o.max_tokens - 1)
        .sum();
    assert!((steps as usize) < lone_steps, "sequences shared steps");
}

/// A request that brings a state (turn 1's sequence, handed back with its last token fed)
/// continues it: turn 2 computes only its new tokens and generates what a cold run of the
/// whole conversation's prompt generates.
#[test]
fn a_request_with_its_own_state_continues_it_exactly() {
    let b = demo();
    let first = prompt(30, "turn");
    let run = |p: &[u32], start: Option<Start>, max: usize| {
        let mut req = Request::new(p.to_vec(), options(None, max), ());
        req.start = start;
        run_one(b.engine_model(), CacheHook::default(), req, &mut |_| {
            Flow::Continue
        })
        .unwrap()
    };
    let (e1, s1) = run(
        &first,
        Some(Start {
            state: b.model.new_state(),
            cached: 0,
        }),
        6,
    );
    assert_eq!(s1.finish, FinishReason::Length);
    let kept = e1.sequence.expect("handed back");
    let mut expected = first.clone();
    expected.extend(&e1.ids);
    assert_eq!(kept.tokens, expected, "the last emitted token was fed");
    assert_eq!(kept.state.pos(), kept.tokens.len());
    assert_eq!(kept.prompt_end.map(|s| s.pos()), Some(first.len()));

    let mut second = kept.tokens.clone();
    second.extend(prompt(5, "more"));
    let cached = kept.tokens.len();
    let (e2, s2) = run(
        &second,
        Some(Start {
            state: kept.state,
            cached,
        }),
        6,
    );
    assert_eq!(s2.cached_tokens, cached);
    let (cold, _) = run(&second, None, 6);
    assert_eq!(e2.ids, cold.ids);
}

/// A request whose receiver leaves is cancelled at once, its slot goes to the next request,
/// and a queued request whose receiver is gone never runs.
#[test]
fn cancellation_frees_the_slot() {
    let (mut e, counters) = engine(SchedulerConfig {
        max_seqs: 1,
        ..SchedulerConfig::default()
    });
    let p = prompt(12, "cancel");
    let leaving = Collect::default();
    leaving.0.borrow_mut().leave_after = Some(2);
    let gone_before = Collect::default();
    gone_before.0.borrow_mut().leave_after = Some(0);
    let staying = Collect::default();
    e.submit(Request::new(p.clone(), options(None, 50), leaving.clone()));
    e.submit(Request::new(
        p.clone(),
        options(None, 50),
        gone_before.clone(),
    ));
    e.submit(Request::new(p.clone(), options(None, 7), staying.clone()));
    e.run_until_idle();

    let r = leaving.0.borrow();
    assert_eq!(r.summary.as_ref().unwrap().finish, FinishReason::Cancelled);
    assert_eq!(r.ended.as_ref().unwrap().ids.len(), 2);
    assert!(gone_before.0.borrow().summary.is_none(), "never admitted");
    let s = staying.0.borrow();
    assert_eq!(s.ended.as_ref().unwrap().ids, lone(&p, &options(None, 7)));
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&counters.cancelled), 2);
    assert_eq!(load(&counters.generations), 2);
    assert_eq!(load(&counters.queue_depth), 0);
    assert_eq!(load(&counters.running), 0);
}

/// Without a tokenizer the loop works on ids alone, and refuses what needs text.
#[test]
fn ids_only_requests_run_and_refuse_text_options() {
    let b = demo();
    let p = prompt(8, "ids");
    let model = qinfer_engine::engine::EngineModel::ids_only(&b.model);
    let (ended, summary) = run_one(
        model,
        CacheHook::default(),
        Request::new(p.clone(), options(None, 4), ()),
        &mut |_| Flow::Continue,
    )
    .unwrap();
    assert_eq!(ended.ids.len(), 4);
    assert_eq!(ended.text, "");
    assert_eq!(summary.finish, FinishReason::Length);
    let mut opts = options(None, 4);
    opts.stop_strings = vec!["x".into()];
    let err = run_one(
        model,
        CacheHook::default(),
        Request::new(p, opts, ()),
        &mut |_| Flow::Continue,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("needs the model's tokenizer"),
        "{err}"
    );
}

/// The engine runs a model on whatever backend it was given, without knowing which: the demo
/// model on the reference backend (a second implementation of the device seam, in plain Rust)
/// generates, through the engine loop and batched with other requests, the tokens it generates
/// on the CPU backend in exact mode (both compute f32 activations from the same BF16
/// weights; greedy ids must match).
#[test]
fn the_engine_runs_a_model_on_another_backend() {
    let on = |backend: Arc<dyn qinfer_backend::Backend>| {
        let mut b = ModelBundle::demo().unwrap();
        b.model = b.model.with_backend(backend).unwrap();
        b
    };
    let exact = qinfer_cpu::Cpu::default().with_precision(qinfer_cpu::MatmulPrecision::Exact);
    let cpu = on(Arc::new(exact));
    let reference = on(Arc::new(qinfer_backend::reference::Reference));
    let prompts = [prompt(6, "alpha"), prompt(40, "beta")];
    let opts = options(None, 6);
    let run = |bundle: &ModelBundle| {
        let mut e = Engine::new(
            bundle.engine_model(),
            SchedulerConfig::default(),
            CacheHook::default(),
            Arc::new(Counters::default()),
        );
        let sinks: Vec<Collect> = prompts
            .iter()
            .map(|p| {
                let sink = Collect::default();
                e.submit(Request::new(p.clone(), opts.clone(), sink.clone()));
                sink
            })
            .collect();
        e.run_until_idle();
        let ids = |c: &Collect| c.0.borrow().ended.as_ref().expect("ended").ids.clone();
        sinks.iter().map(ids).collect::<Vec<_>>()
    };
    assert_eq!(run(&reference), run(&cpu));
}

/// A sink that keeps nothing.
struct Nothing;

impl Sink for Nothing {
    fn send(&mut self, _out: Out) -> Result<(), Gone> {
        Ok(())
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// For an MoE model the loop records, per step, the mean number of distinct experts a layer
/// ran: one observation per step, between `top_k` (one sequence) and the expert count; a
/// dense model records none.
#[test]
fn moe_steps_record_the_experts_they_touch() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-moe-f32");
    let model = qinfer_model::Qwen35::load_dir(&dir).unwrap();
    let counters = Arc::new(Counters::default());
    let mut e = Engine::new(
        EngineModel::ids_only(&model),
        SchedulerConfig {
            max_seqs: 4,
            ..SchedulerConfig::lone()
        },
        CacheHook::default(),
        counters.clone(),
    );
    for p in [3u32, 77, 150, 301] {
        let opts = GenerateOptions {
            max_tokens: 4,
            ignore_eos: true,
            ..GenerateOptions::default()
        };
        e.submit(Request::new(vec![p], opts, Nothing));
    }
    e.run_until_idle();
    let h = counters.experts().expect("an MoE model records experts");
    let steps = counters.steps.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(h.count, steps);
    let mean = h.sum / h.count as f64;
    assert!((2.0..=8.0).contains(&mean), "{mean}");
    assert!(
        mean > 2.0,
        "four sequences together touch more than top-2: {mean}"
    );
    assert_eq!(h.counts.last(), Some(&h.count), "all at most 512");

    let (mut dense, c) = engine(SchedulerConfig::lone());
    dense.submit(
        Request::new(vec![5], GenerateOptions::default(), Nothing).with_sink(Collect::default()),
    );
    dense.run_until_idle();
    assert!(c.experts().is_none());
}
