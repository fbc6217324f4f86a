//! Prompts with images through the engine loop (`tests/fixtures/tiny-vl-f32`, ids only):
//! greedy decoding after two images gives transformers' ids (the engine encodes the images
//! at admission, splices them into the prompt chunks and offsets decode positions), alone and
//! batched with other requests in small prompt chunks; the prompt cache keys image positions
//! by the image's content, so a second turn about the same image resumes past it and gives
//! the cold run's ids, while a different image with the same tokens does not match.

use qinfer_testkit::json_ids as ids;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use qinfer_engine::counters::Counters;
use qinfer_engine::engine::{
    Admission, CacheHook, Ended, Engine, EngineModel, Gone, Out, Request, SchedulerConfig, Sink,
};
use qinfer_engine::generate::GenerateOptions;
use qinfer_engine::images::{PromptImage, expand_image_pads};
use qinfer_engine::prompt_cache::{CacheOptions, PromptCache};
use qinfer_engine::sampler::SamplingParams;
use qinfer_model::Qwen35;
use qinfer_tensor::Mat;

fn fixture() -> PathBuf {
    qinfer_testkit::fixture("tiny-vl-f32")
}

fn model() -> Qwen35 {
    let cpu = qinfer_cpu::Cpu::default().with_precision(qinfer_cpu::MatmulPrecision::Exact);
    Qwen35::load_dir(&fixture())
        .unwrap()
        .with_backend(Arc::new(cpu))
        .unwrap()
}

fn reference() -> serde_json::Value {
    qinfer_testkit::reference("tiny-vl-f32")
}

/// Image `name`'s patches and grid, as transformers' processor made them.
fn pixels(name: &str) -> (Mat, [usize; 3]) {
    let (shape, data) =
        qinfer_formats::npy::read_f32(&fixture().join(format!("pixel_values_{name}.npy"))).unwrap();
    let g = ids(&reference()[format!("grid_thw_{name}")]);
    (
        Mat::from_vec(data, shape[0], shape[1]),
        [g[0] as usize, g[1] as usize, g[2] as usize],
    )
}

/// The fixture's prompt `key` with its pads collapsed to one per image (as a chat template
/// writes them) and expanded again, with the images placed.
fn prompt(model: &Qwen35, key: &str, images: &[(Mat, [usize; 3])]) -> (Vec<u32>, Vec<PromptImage>) {
    let pad = model.vision.as_ref().unwrap().config.image_token;
    let mut collapsed: Vec<u32> = Vec::new();
    for t in ids(&reference()[key]) {
        if !(t == pad && collapsed.last() == Some(&pad)) {
            collapsed.push(t);
        }
    }
    let tower = &model.vision.as_ref().unwrap().config;
    let counts: Vec<usize> = images.iter().map(|(_, g)| tower.tokens_for(*g)).collect();
    let (ids_, starts) = expand_image_pads(&collapsed, pad, &counts).unwrap();
    assert_eq!(ids_, ids(&reference()[key]));
    let placed = images
        .iter()
        .zip(starts)
        .map(|((m, g), s)| PromptImage::new(s, *g, m.clone()))
        .collect();
    (ids_, placed)
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens,
        ..GenerateOptions::default()
    }
}

#[derive(Default)]
struct Record {
    tokens: usize,
    ended: Option<Ended>,
    admission: Option<Admission>,
    failed: Option<String>,
}

#[derive(Clone, Default)]
struct Collect(Rc<RefCell<Record>>);

impl Sink for Collect {
    fn send(&mut self, out: Out) -> Result<(), Gone> {
        match out {
            Out::Failed(m) => self.0.borrow_mut().failed = Some(m),
            Out::Token { .. } => self.0.borrow_mut().tokens += 1,
            Out::Done(_) => {}
        }
        Ok(())
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn admitted(&mut self, a: &Admission) {
        self.0.borrow_mut().admission = Some(a.clone());
    }

    fn ended(&mut self, ended: Ended) {
        self.0.borrow_mut().ended = Some(ended);
    }
}

/// Runs the requests together; per request, its ids (or failure) and cached tokens.
fn run(
    model: &Qwen35,
    cache: Option<&Arc<PromptCache>>,
    chunk: usize,
    requests: Vec<(Vec<u32>, Vec<PromptImage>, usize)>,
) -> Vec<Result<(Vec<u32>, usize), String>> {
    let mut e = Engine::new(
        EngineModel::ids_only(model),
        SchedulerConfig {
            prefill_chunk: chunk,
            ..SchedulerConfig::default()
        },
        CacheHook::new(cache.cloned()),
        Arc::new(Counters::default()),
    );
    let sinks: Vec<Collect> = requests
        .into_iter()
        .map(|(p, images, n)| {
            let sink = Collect::default();
            let mut r = Request::new(p, greedy(n), sink.clone());
            r.images = images;
            e.submit(r);
            sink
        })
        .collect();
    e.run_until_idle();
    sinks
        .iter()
        .map(|s| {
            let r = s.0.borrow();
            match (&r.failed, &r.ended, &r.admission) {
                (Some(m), _, _) => Err(m.clone()),
                (None, Some(e), Some(a)) => Ok((e.ids.clone(), a.cached_tokens)),
                _ => Err("no outcome".into()),
            }
        })
        .collect()
}

#[test]
fn greedy_ids_after_two_images_match_transformers_alone_and_batched() {
    let m = model();
    let want = ids(&reference()["greedy_two"]);
    let (p2, i2) = prompt(&m, "prompt_two", &[pixels("a"), pixels("b")]);
    let (p1, i1) = prompt(&m, "prompt_one", &[pixels("a")]);
    let alone = run(&m, None, 512, vec![(p2.clone(), i2.clone(), 8)]);
    assert_eq!(alone[0].as_ref().unwrap().0, want);
    let one_alone = run(&m, None, 512, vec![(p1.clone(), i1.clone(), 8)]);
    // Chunks of 5 positions cut through both images; three requests share the steps.
    let together = run(
        &m,
        None,
        5,
        vec![
            (p2, i2, 8),
            (vec![5, 6, 7, 8, 9, 10, 11], Vec::new(), 8),
            (p1, i1, 8),
        ],
    );
    assert_eq!(together[0].as_ref().unwrap().0, want);
    assert_eq!(
        together[2].as_ref().unwrap().0,
        one_alone[0].as_ref().unwrap().0
    );
}

#[test]
fn the_prompt_cache_resumes_past_the_same_image_and_not_past_another() {
    let m = model();
    let cache = Arc::new(PromptCache::new(
        &m,
        CacheOptions {
            budget_bytes: 1 << 26,
            snapshot_every: Some(64),
            dir: None,
        },
    ));
    let (p, images) = prompt(&m, "prompt_two", &[pixels("a"), pixels("b")]);
    let first = run(&m, Some(&cache), 512, vec![(p.clone(), images.clone(), 8)]);
    let (answer, cached) = first[0].clone().unwrap();
    assert_eq!(cached, 0);
    // The second turn: the conversation so far and two more tokens.
    let mut turn = p.clone();
    turn.extend(&answer);
    turn.extend([3, 4]);
    let cold = run(&m, None, 512, vec![(turn.clone(), images.clone(), 6)]);
    let warm = run(
        &m,
        Some(&cache),
        512,
        vec![(turn.clone(), images.clone(), 6)],
    );
    let (warm_ids, warm_cached) = warm[0].clone().unwrap();
    assert!(
        warm_cached >= p.len() + answer.len() - 1,
        "resumed at {warm_cached}"
    );
    assert_eq!(warm_ids, cold[0].as_ref().unwrap().0);
    // The same tokens about a different picture (image a's pixels changed) match only the
    // text before it.
    let (mut a, ga) = pixels("a");
    a.data.iter_mut().for_each(|v| *v = -*v);
    let (_, other) = prompt(&m, "prompt_two", &[(a, ga), pixels("b")]);
    let other_run = run(
        &m,
        Some(&cache),
        512,
        vec![(turn.clone(), other.clone(), 6)],
    );
    let (other_ids, other_cached) = other_run[0].clone().unwrap();
    assert!(other_cached <= other[0].start, "resumed at {other_cached}");
    let other_cold = run(&m, None, 512, vec![(turn, other, 6)]);
    assert_eq!(other_ids, other_cold[0].as_ref().unwrap().0);
}

#[test]
fn bad_image_requests_fail_with_a_reason() {
    let m = model();
    let (p, mut images) = prompt(&m, "prompt_one", &[pixels("a")]);
    images[0].start += 1;
    let out = run(&m, None, 512, vec![(p.clone(), images, 4)]);
    assert!(
        out[0].as_ref().unwrap_err().contains("image tokens"),
        "{out:?}"
    );
    let (_, images) = prompt(&m, "prompt_one", &[pixels("a")]);
    let text_model = {
        let cpu = qinfer_cpu::Cpu::default();
        Qwen35::load_dir(&fixture().join("../tiny-dense-f32"))
            .unwrap()
            .with_backend(Arc::new(cpu))
            .unwrap()
    };
    let out = run(&text_model, None, 512, vec![(p, images, 4)]);
    assert!(
        out[0].as_ref().unwrap_err().contains("no vision tower"),
        "{out:?}"
    );
}

/// The tower runs a block per engine step, between the model's steps: a text request admitted
/// with an image request streams tokens while the image is still being encoded, and the image
/// request's answer is what it is alone.
#[test]
fn other_sequences_decode_while_an_image_encodes() {
    let m = model();
    let (p, images) = prompt(&m, "prompt_two", &[pixels("a"), pixels("b")]);
    let mut e = Engine::new(
        EngineModel::ids_only(&m),
        SchedulerConfig::default(),
        CacheHook::default(),
        Arc::new(Counters::default()),
    );
    let (image_sink, text_sink) = (Collect::default(), Collect::default());
    let mut r = Request::new(p, greedy(8), image_sink.clone());
    r.images = images;
    e.submit(r);
    e.submit(Request::new(vec![5, 6, 7], greedy(8), text_sink.clone()));
    // Two images × (2 blocks + the merger) = 6 tower steps, one per engine step.
    for _ in 0..3 {
        e.step();
    }
    assert!(
        text_sink.0.borrow().tokens >= 2,
        "the text request streamed"
    );
    assert_eq!(
        image_sink.0.borrow().tokens,
        0,
        "the image request still waits"
    );
    e.run_until_idle();
    let got = image_sink.0.borrow().ended.as_ref().unwrap().ids.clone();
    assert_eq!(got, ids(&reference()["greedy_two"]));
}
