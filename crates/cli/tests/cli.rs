//! The `qinfer` binary end to end: the public commands, their output formats, and clear
//! errors (exit code 1, a message, no panic) for bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn qinfer(args: &[&str]) -> Output {
    qinfer_with(&[], args)
}

/// `qinfer args` with extra environment variables.
fn qinfer_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("qinfer runs")
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

fn csv(v: &serde_json::Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `qinfer args` with `input` on its stdin; its stdout (it must succeed).
fn run_piped(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn logits_out_writes_the_reference_logits() {
    let name = "tiny-dense-f32";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.npy");
    let model = fixture(name);
    let ids = csv(&reference(name)["short_prompt"]);
    let o = qinfer(&[
        "logits",
        model.to_str().unwrap(),
        "--ids",
        &ids,
        "--out",
        out.to_str().unwrap(),
        // The transformers bound holds for exact KV rows; the default F16 rows move these
        // logits by about 3e-3 (crates/model/tests/kv_type.rs).
        "--kv-type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, got) = qinfer_formats::npy::read_f32(&out).unwrap();
    let (want_shape, want) =
        qinfer_formats::npy::read_f32(&fixture(name).join("logits_short.npy")).unwrap();
    assert_eq!(shape, want_shape);
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-3, "max |Δlogit| {d}");
}

#[test]
fn logits_without_out_prints_top5_per_position() {
    let o = qinfer(&[
        "logits",
        fixture("tiny-moe-f32").to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains("top-5:") && l.matches('(').count() == 5),
        "{text}"
    );
}

/// The references are transformers computing in f32, so the BF16 model runs with f32
/// activations (`QINFER_MATMUL=exact`; by default they are rounded to BF16 as llama.cpp does).
#[test]
fn generate_json_gives_the_reference_greedy_ids() {
    for name in ["tiny-dense-f32", "tiny-moe-bf16"] {
        assert_reference_greedy(name, &[("QINFER_MATMUL", "exact")], &[], name);
    }
}

/// `qinfer generate --json` of fixture `name`'s reference prompt (with `env` and `extra`
/// arguments) gives its reference greedy ids.
fn assert_reference_greedy(name: &str, env: &[(&str, &str)], extra: &[&str], what: &str) {
    let r = reference(name);
    let want = r["greedy_ids"].as_array().unwrap().len().to_string();
    let prompt = csv(&r["greedy_prompt"]);
    let model = fixture(name);
    let mut args = vec![
        "generate",
        model.to_str().unwrap(),
        "--ids",
        &prompt,
        "--max-tokens",
        &want,
        "--temperature",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = qinfer_with(env, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got, serde_json::json!({ "ids": r["greedy_ids"] }), "{what}");
}

/// `--rope-scaling yarn --rope-factor 4 --rope-original-ctx 64` on the plain tiny model gives
/// transformers' greedy ids for the YaRN config (`tools/make_yarn_reference.py`); the flags
/// are checked (yarn needs a factor; the factor needs yarn).
#[test]
fn rope_scaling_flags_give_transformers_yarn() {
    let r = reference("yarn");
    let want = r["greedy_ids"].as_array().unwrap().len().to_string();
    let m = fixture("tiny-dense-f32");
    let m = m.to_str().unwrap();
    let prompt = csv(&r["greedy_prompt"]);
    let args = [
        "generate",
        m,
        "--ids",
        &prompt,
        "--max-tokens",
        &want,
        "--temperature",
        "0",
        "--json",
    ];
    let yarn = [
        "--rope-scaling",
        "yarn",
        "--rope-factor",
        "4",
        "--rope-original-ctx",
        "64",
    ];
    let o = qinfer_with(
        &[("QINFER_MATMUL", "exact")],
        &[&args[..], &yarn[..]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got, serde_json::json!({ "ids": r["greedy_ids"] }));
    let o = qinfer(&[&args[..], &["--rope-scaling", "yarn"]].concat());
    assert!(
        !o.status.success() && stderr(&o).contains("needs --rope-factor"),
        "{}",
        stderr(&o)
    );
    let o = qinfer(&[&args[..], &["--rope-factor", "4"]].concat());
    assert!(
        !o.status.success() && stderr(&o).contains("--rope-scaling"),
        "{}",
        stderr(&o)
    );
}

/// The AVX2 kernel tier, forced through `QINFER_ISA` (with and without AVX-VNNI), against the
/// scalar reference tier on float (F32, BF16 MoE) and Q8_0 weights: the same greedy tokens, and
/// logits equal up to `f32` summation order (the 8-bit activations are rounded identically). On
/// a CPU without AVX2 the forced tier falls back to the reference tier and this compares it
/// with itself. The BF16 model runs in exact mode: by default the reference tier rounds
/// activations to BF16 (llama.cpp's arithmetic, what `vdpbf16ps` does on AVX-512) while the
/// AVX2 tier keeps them in `f32`.
#[test]
fn forced_avx2_tier_agrees_with_the_reference_tier() {
    let dir = tempfile::tempdir().unwrap();
    let q8_ref: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gguf/tiny-dense-q8_0.reference.json")).unwrap(),
    )
    .unwrap();
    let models = [
        (
            fixture("tiny-dense-f32"),
            reference("tiny-dense-f32"),
            "int8",
        ),
        (
            fixture("tiny-moe-bf16"),
            reference("tiny-moe-bf16"),
            "exact",
        ),
        (fixture("gguf/tiny-dense-q8_0.gguf"), q8_ref, "int8"),
    ];
    for (model, r, precision) in &models {
        let m = model.to_str().unwrap();
        let with_tier = |tier: &str, args: &[&str]| {
            let o = Command::new(env!("CARGO_BIN_EXE_qinfer"))
                .args(args)
                .env("QINFER_ISA", tier)
                .env("QINFER_MATMUL", precision)
                .output()
                .expect("qinfer runs");
            assert!(o.status.success(), "{tier}: {}", stderr(&o));
            o.stdout
        };
        let run = |tier: &str| {
            let out = dir.path().join(format!("{tier}.npy"));
            let ids = csv(&r["short_prompt"]);
            let o = out.to_str().unwrap();
            with_tier(tier, &["logits", m, "--ids", &ids, "--out", o]);
            let (_, logits) = qinfer_formats::npy::read_f32(&out).unwrap();
            let prompt = csv(&r["greedy_prompt"]);
            let args = ["generate", m, "--ids", &prompt, "--max-tokens", "16"];
            let greedy = with_tier(
                tier,
                &[&args[..], &["--temperature", "0", "--json"]].concat(),
            );
            (logits, greedy)
        };
        let (want_logits, want_greedy) = run("scalar");
        for tier in ["avx2", "avx2-novnni"] {
            let (logits, greedy) = run(tier);
            let d = logits
                .iter()
                .zip(&want_logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(d <= 1e-3, "{m} {tier}: max |Δlogit| {d}");
            assert_eq!(greedy, want_greedy, "{m} {tier}");
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run = |seed: &str| {
        let o = qinfer(&[
            "generate",
            fixture("tiny-dense-f32").to_str().unwrap(),
            "--ids",
            "5,6,7",
            "--max-tokens",
            "12",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--ignore-eos",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let model = fixture("tiny-dense-f32");
    let m = model.to_str().unwrap();
    let config = model.join("config.json");
    let cases: [(&[&str], &str); 6] = [
        (&["logits", m, "--ids", "1,x"], "\"x\" is not a token id"),
        (&["logits", m, "--ids", "1,99999"], "outside the vocabulary"),
        (&["logits", "/nonexistent", "--ids", "1"], "no such file"),
        (&["logits", m, "--ids", ""], "no token ids"),
        (
            &[
                "generate",
                m,
                "--ids",
                "1",
                "--max-tokens",
                "2",
                "--temperature",
                "-1",
            ],
            "temperature must be",
        ),
        (
            &["logits", config.to_str().unwrap(), "--ids", "1"],
            "model directory",
        ),
    ];
    for (args, want) in cases {
        let o = qinfer(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Hardening: a config error was printed with its cause twice (`…: X: X`). Once now.
#[test]
fn a_config_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-dense-f32");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let text = match config.get_mut("text_config") {
        Some(t) => t,
        None => &mut config,
    };
    text["num_attention_heads"] = 3.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let o = qinfer(&["logits", dir.path().to_str().unwrap(), "--ids", "1"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let cause = "3 query heads are not a multiple of";
    assert_eq!(err.matches(cause).count(), 1, "{err}");
}

/// `qinfer run --session FILE`: the first run saves the conversation; the second resumes it
/// (messages and model state) and processes only what the re-rendered history changed.
#[test]
fn run_session_resumes_a_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("chat.session");
    let session_arg = session.to_str().unwrap();
    let chat = |input: &str| {
        run_piped(
            &[
                "run",
                "--max-tokens",
                "4",
                "--seed",
                "1",
                "--session",
                session_arg,
            ],
            input,
        )
    };
    let first = chat("What is in src?\n");
    assert!(first.contains("0 reused"), "{first}");
    assert!(session.is_file());
    let second = chat("And in tests?\n");
    assert!(
        second.contains("resumed") && second.contains("2 messages"),
        "{second}"
    );
    let reused: usize = second
        .rsplit(" tokens, ")
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a reuse count in {second}"));
    assert!(
        reused > 10,
        "the first prompt is not processed again: {second}"
    );

    std::fs::write(&session, b"QINFSTAT garbage").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(["run", "--session"])
        .arg(&session)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chat.session"), "{}", stderr(&out));
}

/// `qinfer bench` rejects a precision or bandwidth it cannot use, naming the flag, before it
/// loads or runs anything.
#[test]
fn bench_rejects_bad_flags_with_clear_errors() {
    let model = fixture("tiny-dense-f32");
    let m = model.to_str().unwrap();
    for (args, want) in [
        (
            vec!["--bandwidth", "0"],
            "--bandwidth must be a positive number",
        ),
        (
            vec!["--bandwidth", "NaN"],
            "--bandwidth must be a positive number",
        ),
        (
            vec!["--bandwidth=-3"],
            "--bandwidth must be a positive number",
        ),
        (
            vec!["--precision", "fp8"],
            "--precision must be int8 or exact",
        ),
    ] {
        let o = qinfer(&[&["bench", m, "-p", "4", "-n", "0", "-r", "1"], &args[..]].concat());
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
}

/// `--kv-type`: every type runs; a Q8_0 cache gives the reference greedy ids on this fixture
/// (measured, crates/model/tests/kv_type.rs) and `qinfer bench` reports the type; an unknown
/// type is a clap error listing the accepted ones, from the flag or QINFER_KV_TYPE.
#[test]
fn kv_type_flag_selects_the_cache_type_and_rejects_unknown_ones() {
    let name = "tiny-dense-f32";
    let model = fixture(name);
    let m = model.to_str().unwrap();
    let r = reference(name);
    let prompt = csv(&r["greedy_prompt"]);
    let n = r["greedy_ids"].as_array().unwrap().len().to_string();
    for ty in ["f32", "bf16", "f16", "q8_0"] {
        let o = qinfer(&[
            "generate",
            m,
            "--ids",
            &prompt,
            "--max-tokens",
            &n,
            "--json",
            "--ignore-eos",
            "--kv-type",
            ty,
        ]);
        assert!(o.status.success(), "{ty}: {}", stderr(&o));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(got, serde_json::json!({ "ids": r["greedy_ids"] }), "{ty}");
    }
    let o = qinfer(&[
        "bench",
        m,
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "--bandwidth",
        "1",
        "--json",
        "--kv-type",
        "q8_0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kv_type"], "q8_0");
    let o = qinfer(&["logits", m, "--ids", "1,2", "--kv-type", "foo"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("'foo'") && err.contains("--kv-type") && err.contains("f32, bf16, f16, q8_0"),
        "{err}"
    );
    let o = qinfer_with(&[("QINFER_KV_TYPE", "q4")], &["logits", m, "--ids", "1,2"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("QINFER_KV_TYPE") && err.contains("q8_0"),
        "{err}"
    );
    let o = qinfer_with(
        &[("QINFER_KV_TYPE", "q8_0")],
        &["bench", m, "-p", "8", "-n", "0", "-r", "1", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kv_type"], "q8_0", "from the environment");
}

/// `qinfer bench -d 0,100`: pp and tg measured after N tokens of context, one JSON entry and
/// one table row per depth (the sequence at depth 100 holds more state); a depth the context
/// cannot hold is refused naming the limit.
#[test]
fn bench_depth_measures_at_each_context_depth() {
    let m = fixture("tiny-dense-f32");
    let m = m.to_str().unwrap();
    let base = [
        "bench",
        m,
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--bandwidth",
        "50",
    ];
    let o = qinfer(&[&base[..], &["-d", "0,100", "--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = v["depths"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0]["n_depth"].as_u64(), d[1]["n_depth"].as_u64()),
        (Some(0), Some(100))
    );
    for x in d {
        assert!(x["pp_tok_s"].as_f64().unwrap() > 0.0 && x["tg_tok_s"].as_f64().unwrap() > 0.0);
        assert_eq!(x["pp_samples"].as_array().unwrap().len(), 1);
    }
    assert!(d[1]["state_bytes_max"].as_u64() > d[0]["state_bytes_max"].as_u64());
    // A checkpoint directory's size is its safetensors files'.
    let safetensors: u64 = std::fs::read_dir(m)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(safetensors > 0);
    assert_eq!(v["file_bytes"].as_u64(), Some(safetensors));
    assert_eq!(
        v["tg_tok_s"], d[0]["tg_tok_s"],
        "the top-level figures are the first depth's"
    );
    let o = qinfer(&[&base[..], &["-d", "100"]].concat());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| pp8 @ d100 |") && table.contains("| tg4 @ d100 |"),
        "{table}"
    );
    let o = qinfer(&[&base[..], &["-d", "4090"]].concat());
    assert!(
        !o.status.success() && stderr(&o).contains("exceeds the model's context of 4096"),
        "{}",
        stderr(&o)
    );
}

/// `qinfer bench -b 1,4,16`: N sequences decoding together through the engine loop, one row
/// per N; for an MoE model the distinct experts per layer per step grow with the batch (the
/// weights a step reads with them) while one sequence touches exactly `top_k`; a dense model
/// reads the same weights per step whatever N, so its bytes per token fall as 1/N.
#[test]
fn bench_batch_reports_throughput_and_experts_touched() {
    let run = |model: &str| -> serde_json::Value {
        let m = fixture(&format!("gguf/{model}"));
        let o = qinfer(&[
            "bench",
            m.to_str().unwrap(),
            "-p",
            "0",
            "-n",
            "8",
            "-r",
            "1",
            "-b",
            "1,4,16",
            "--bandwidth",
            "50",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let moe = run("tiny-moe-f32.gguf");
    let rows = moe["batch"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let experts: Vec<f64> = rows
        .iter()
        .map(|r| r["experts_per_layer_step"].as_f64().unwrap())
        .collect();
    assert_eq!(experts[0], 2.0, "one sequence: top_k");
    assert!(
        experts[0] < experts[1] && experts[1] < experts[2] && experts[2] <= 8.0,
        "{experts:?}"
    );
    assert!(rows[2]["weight_bytes_per_step"].as_f64() > rows[0]["weight_bytes_per_step"].as_f64());
    for r in rows {
        assert!(r["total_tok_s"].as_f64().unwrap() > 0.0);
    }
    let dense = run("tiny-dense-q8_0.gguf");
    let rows = dense["batch"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["experts_per_layer_step"].is_null()));
    let per_token: Vec<f64> = rows
        .iter()
        .map(|r| r["weight_bytes_per_token"].as_f64().unwrap())
        .collect();
    assert!(
        (per_token[0] / per_token[1] - 4.0).abs() < 1e-9,
        "{per_token:?}"
    );
}

/// `qinfer generate --image` with the demo (whose random vision tower takes images like a
/// real one): the 100×60 image is resized up to the processor's minimum area (352×224: 22×14
/// patches, 77 merged tokens), two images twice that, and what is not an image gets a clear
/// error.
#[test]
fn generate_takes_images() {
    let image = fixture("tiny-vl-f32").join("image_a.png");
    let image = image.to_str().unwrap();
    let base = [
        "generate",
        "demo",
        "--chat",
        "--prompt",
        "What is this?",
        "--max-tokens",
        "2",
    ];
    let prompt_tokens = |o: &Output| -> usize {
        let e = stderr(o);
        let at = e.find("prompt ").unwrap_or_else(|| panic!("{e}")) + "prompt ".len();
        e[at..].split(' ').next().unwrap().parse().unwrap()
    };
    let plain = qinfer(&base);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let one = qinfer(&[&base[..], &["--image", image]].concat());
    assert!(one.status.success(), "{}", stderr(&one));
    let two = qinfer(&[&base[..], &["--image", image, "--image", image]].concat());
    assert!(two.status.success(), "{}", stderr(&two));
    // Each image: <|vision_start|>, 77 pads, <|vision_end|>.
    assert_eq!(prompt_tokens(&one), prompt_tokens(&plain) + 79);
    assert_eq!(prompt_tokens(&two), prompt_tokens(&plain) + 2 * 79);
    // --min-pixels / --max-pixels bound the area: 100×60 within 1024..4096 pixels is 64×32
    // (4×2 patches, 2 tokens).
    let small = qinfer(
        &[
            &base[..],
            &[
                "--image",
                image,
                "--min-pixels",
                "1024",
                "--max-pixels",
                "4096",
            ],
        ]
        .concat(),
    );
    assert!(small.status.success(), "{}", stderr(&small));
    assert_eq!(prompt_tokens(&small), prompt_tokens(&plain) + 4);
    let toml = fixture("../../Cargo.toml");
    let bad = qinfer(&[&base[..], &["--image", toml.to_str().unwrap()]].concat());
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("not a recognised image"),
        "{}",
        stderr(&bad)
    );
}

/// `qinfer run` (demo, input piped): `/image PATH` and a bare image path attach images to the
/// next message, the second turn reuses the first turn's state past its image, and a file that
/// is not an image is refused with a message while the chat goes on.
#[test]
fn run_attaches_images() {
    let a = fixture("tiny-vl-f32").join("image_a.png");
    let b = fixture("tiny-vl-f32").join("image_b.png");
    let toml = fixture("../../Cargo.toml");
    let input = format!(
        "/image {}\nWhat is it?\n{}\nAnd this one?\n/image {}\n",
        a.display(),
        b.display(),
        toml.display()
    );
    let out = run_piped(&["run", "--max-tokens", "4"], &input);
    assert!(out.contains("image_a.png: 77 tokens"), "{out}");
    assert!(out.contains("image_b.png: 65 tokens"), "{out}");
    assert!(out.contains("not a recognised image"), "{out}");
    let reused: Vec<usize> = out
        .lines()
        .filter_map(|l| l.split("tokens, ").nth(2))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(reused.len(), 2, "{out}");
    assert!(
        reused[1] > 80,
        "the second turn reused {}: {out}",
        reused[1]
    );
}

/// `--device gpu` runs the model on the GPU backend (lavapipe in CI) and gives the reference
/// greedy ids, as the CPU does; `--device auto` on a machine with no hardware GPU (a software
/// driver does not count) runs on the CPU; a bad device is named.
#[test]
fn the_device_flag_chooses_the_backend() {
    let list = qinfer(&["inspect", "--devices", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let adapters: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let adapters = adapters.as_array().expect("a JSON array of adapters");
    if adapters.is_empty() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("SKIPPED: --device gpu: no GPU adapter at all");
        }
    } else {
        for a in adapters {
            assert!(a["name"].is_string() && a["kind"].is_string(), "{a}");
            assert!(a["device"].as_str().unwrap().starts_with("gpu:"), "{a}");
        }
        assert_reference_greedy("tiny-moe-bf16", &[], &["--device", "gpu"], "on the GPU");
        let b = qinfer(&[
            "bench", "demo", "--device", "gpu", "-p", "8", "-n", "0", "-r", "1", "--json",
        ]);
        assert!(b.status.success(), "{}", stderr(&b));
        let v: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
        assert!(v["device"].as_str().unwrap().starts_with("gpu "), "{v}");
    }
    if !adapters.iter().any(|a| a["kind"] != "software") {
        let b = qinfer(&["bench", "demo", "-p", "8", "-n", "0", "-r", "1", "--json"]);
        assert!(b.status.success(), "{}", stderr(&b));
        let v: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
        assert!(
            v["device"].as_str().unwrap().starts_with("cpu "),
            "auto: {v}"
        );
    }
    for (bad, says) in [("tpu", "not a device"), ("gpu:99", "no GPU adapter 99")] {
        let o = qinfer(&[
            "generate",
            "demo",
            "--device",
            bad,
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
        ]);
        assert!(!o.status.success(), "--device {bad} accepted");
        assert!(stderr(&o).contains(says), "--device {bad}: {}", stderr(&o));
    }
}
