//! Choosing the next token from logits, and knowing when to stop.
//!
//! Processing order for one step (documented because engines differ, and it changes results):
//!
//! 1. repetition penalty (HF semantics: over prompt **and** generated tokens, a positive logit
//!    is divided by `p`, a negative one multiplied);
//! 2. presence and frequency penalties (OpenAI semantics: over generated tokens only,
//!    `logit -= presence·[count > 0] + frequency·count`);
//! 3. temperature 0 → greedy argmax (lowest id wins ties) and stop here;
//! 4. `logits / temperature`, softmax;
//! 5. top-k, then top-p (smallest set whose mass reaches `p`), then min-p (drop tokens below
//!    `min_p × max probability`), renormalise;
//! 6. draw with a seeded generator: the same seed and inputs give the same tokens.
//!
//! [`StopMatcher`] finds stop strings in streamed text, holding back only the tail that could
//! still become a stop string, so nothing past a stop is ever shown.

use std::collections::HashMap;
use std::path::Path;

/// Why sampling parameters are unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("{name} must be {rule}, got {value}")]
    OutOfRange {
        name: &'static str,
        rule: &'static str,
        value: f64,
    },
    #[error("unknown sampling preset {0:?} (known: {1})")]
    UnknownPreset(String, String),
    #[error("{path}: {why}")]
    GenerationConfig { path: String, why: String },
    #[error(
        "at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_STRING_BYTES} bytes each \
         are accepted: {0}"
    )]
    StopStrings(String),
}

/// Most stop strings one request may set. Matching runs on the engine thread for every
/// generated token, against every stop string, so a request's cost is bounded before it is
/// spent (OpenAI's API allows 4; agents send a handful).
pub const MAX_STOP_STRINGS: usize = 16;
/// Most bytes in one stop string.
pub const MAX_STOP_STRING_BYTES: usize = 256;

/// Whether `stops` is within [`MAX_STOP_STRINGS`] and [`MAX_STOP_STRING_BYTES`].
pub fn check_stop_strings(stops: &[String]) -> Result<(), SamplingError> {
    if stops.len() > MAX_STOP_STRINGS {
        return Err(SamplingError::StopStrings(format!("{} given", stops.len())));
    }
    if let Some((i, s)) = stops
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() > MAX_STOP_STRING_BYTES)
    {
        return Err(SamplingError::StopStrings(format!(
            "stop string {i} is {} bytes",
            s.len()
        )));
    }
    Ok(())
}

/// Sampling parameters of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1 disables.
    pub repetition_penalty: f32,
    /// `None` draws a seed from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// Greedy, no penalties.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

/// Named presets: Qwen's recommended settings for Qwen3.5/3.6 (model card), plus `greedy`.
pub const PRESETS: [(&str, [f32; 6]); 5] = [
    // name: [temperature, top_p, top_k, min_p, presence_penalty, repetition_penalty]
    ("thinking", [1.0, 0.95, 20.0, 0.0, 1.5, 1.0]),
    ("thinking-coding", [0.6, 0.95, 20.0, 0.0, 0.0, 1.0]),
    ("instruct", [0.7, 0.8, 20.0, 0.0, 1.5, 1.0]),
    ("instruct-reasoning", [1.0, 1.0, 40.0, 0.0, 2.0, 1.0]),
    ("greedy", [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
];

impl SamplingParams {
    /// A named preset (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, SamplingError> {
        let (_, [t, p, k, m, pres, rep]) =
            PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                SamplingError::UnknownPreset(name.into(), PRESETS.map(|(n, _)| n).join(", "))
            })?;
        Ok(SamplingParams {
            temperature: *t,
            top_p: *p,
            top_k: *k as usize,
            min_p: *m,
            presence_penalty: *pres,
            repetition_penalty: *rep,
            ..Self::default()
        })
    }

    /// Defaults from a model's `generation_config.json` (`temperature`, `top_k`, `top_p`,
    /// `min_p`, `repetition_penalty`; greedy if `do_sample` is false). Absent file: greedy.
    pub fn from_generation_config(path: &Path) -> Result<Self, SamplingError> {
        let bad = |why: String| SamplingError::GenerationConfig {
            path: path.display().to_string(),
            why,
        };
        let mut p = Self::default();
        if !path.is_file() {
            return Ok(p);
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        if v.get("do_sample").and_then(serde_json::Value::as_bool) == Some(false) {
            return Ok(p);
        }
        p.temperature = num("temperature").unwrap_or(1.0) as f32;
        p.top_k = num("top_k").map_or(0, |k| k.max(0.0) as usize);
        p.top_p = num("top_p").unwrap_or(1.0) as f32;
        p.min_p = num("min_p").unwrap_or(0.0) as f32;
        p.repetition_penalty = num("repetition_penalty").unwrap_or(1.0) as f32;
        p.validate().map_err(|e| bad(e.to_string()))?;
        Ok(p)
    }

    /// End-of-sequence ids from `generation_config.json` (`eos_token_id`: an id or a list);
    /// none when the file is absent.
    pub fn eos_ids_from_generation_config(path: &Path) -> Result<Vec<u32>, SamplingError> {
        let bad = |why: String| SamplingError::GenerationConfig {
            path: path.display().to_string(),
            why,
        };
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let ids: Vec<u64> = match &v["eos_token_id"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Number(n) => n.as_u64().into_iter().collect(),
            serde_json::Value::Array(a) => a.iter().filter_map(serde_json::Value::as_u64).collect(),
            other => {
                return Err(bad(format!(
                    "eos_token_id {other} is not an id or a list of ids"
                )));
            }
        };
        Ok(ids
            .into_iter()
            .filter_map(|i| u32::try_from(i).ok())
            .collect())
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let check = |name, ok: bool, rule, value: f32| {
            if ok {
                Ok(())
            } else {
                Err(SamplingError::OutOfRange {
                    name,
                    rule,
                    value: f64::from(value),
                })
            }
        };
        let t = self.temperature;
        check(
            "temperature",
            t.is_finite() && t >= 0.0,
            "a finite number ≥ 0",
            t,
        )?;
        check(
            "top_p",
            self.top_p > 0.0 && self.top_p <= 1.0,
            "in (0, 1]",
            self.top_p,
        )?;
        check(
            "min_p",
            (0.0..=1.0).contains(&self.min_p),
            "in [0, 1]",
            self.min_p,
        )?;
        let r = self.repetition_penalty;
        check(
            "repetition_penalty",
            r.is_finite() && r > 0.0,
            "a finite number > 0",
            r,
        )?;
        let pp = self.presence_penalty;
        check(
            "presence_penalty",
            pp.is_finite() && (-2.0..=2.0).contains(&pp),
            "in [-2, 2]",
            pp,
        )?;
        let fp = self.frequency_penalty;
        check(
            "frequency_penalty",
            fp.is_finite() && (-2.0..=2.0).contains(&fp),
            "in [-2, 2]",
            fp,
        )?;
        Ok(())
    }
}

/// Samples tokens for one sequence; remembers what it has seen for the penalties.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Counts of generated tokens (presence / frequency penalties).
    generated: HashMap<u32, u32>,
    /// Prompt and generated tokens (repetition penalty).
    seen: HashMap<u32, ()>,
}

impl Sampler {
    /// A sampler for a sequence whose prompt is `prompt`.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Sampler {
            params,
            rng: SplitMix64(seed),
            generated: HashMap::new(),
            seen: prompt.iter().map(|&t| (t, ())).collect(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (`[V]`) and records it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
        {
            // Plain greedy: nothing to change in the row, so no copy of it per token.
            let token = argmax(logits);
            self.record(token);
            return token;
        }
        let mut l = logits.to_vec();
        self.apply_penalties(&mut l);
        let token = if self.params.temperature == 0.0 {
            argmax(&l)
        } else {
            let probs = self.probabilities(&l);
            self.draw(&probs)
        };
        self.record(token);
        token
    }

    /// Records a token chosen elsewhere (e.g. forced by a reasoning budget).
    pub fn record(&mut self, token: u32) {
        *self.generated.entry(token).or_default() += 1;
        self.seen.insert(token, ());
    }

    /// Steps 1–2: penalties, in place.
    pub fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                if let Some(v) = logits.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(v) = logits.get_mut(t as usize) {
                    *v -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// Steps 4–5: the filtered, renormalised distribution (zeros for removed tokens).
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        let p = &self.params;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = logits
            .iter()
            .map(|&v| ((v - max) / p.temperature).exp())
            .collect();
        normalise(&mut probs);
        // Candidates by descending probability (lowest id first on ties).
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut keep = order.len();
        if p.top_k > 0 {
            keep = keep.min(p.top_k);
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            for (i, &t) in order[..keep].iter().enumerate() {
                mass += probs[t];
                if mass >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[order[0]];
            keep = order[..keep]
                .iter()
                .take_while(|&&t| probs[t] >= floor)
                .count()
                .max(1);
        }
        for &t in &order[keep..] {
            probs[t] = 0.0;
        }
        normalise(&mut probs);
        probs
    }

    fn draw(&mut self, probs: &[f32]) -> u32 {
        let mut r = self.rng.next_f64();
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last = i;
                r -= f64::from(p);
                if r < 0.0 {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

fn normalise(p: &mut [f32]) {
    let sum: f32 = p.iter().sum();
    if sum > 0.0 {
        p.iter_mut().for_each(|v| *v /= sum);
    }
}

/// Index of the largest value, lowest index on ties.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// SplitMix64: small, fast, and reproducible across platforms (seeded sampling, the demo
/// model's weights, tests).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Finds stop strings in text that arrives in pieces.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCheck {
    /// Text safe to show; generation goes on.
    Continue(String),
    /// A stop string was found: text before it, and the stop string.
    Stopped { text: String, stop: String },
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> StopCheck {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopCheck::Continue(std::mem::take(&mut self.pending));
        }
        // Earliest stop occurrence wins.
        if let Some((at, stop)) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i)
        {
            let stop = stop.clone();
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return StopCheck::Stopped { text, stop };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if tail.len() < s.len() && s.starts_with(tail) {
                    hold = hold.max(tail.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopCheck::Continue(out)
    }

    /// Text still held back (shown when generation ends for another reason).
    pub fn finish(self) -> String {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            seed: Some(1),
            ..SamplingParams::default()
        };
        f(&mut p);
        p
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    /// Reference values below are computed by hand from the definitions in the module doc.
    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let s = Sampler::new(params(|p| p.repetition_penalty = 2.0), &[0, 1]);
        let mut l = vec![4.0, -4.0, 4.0];
        s.apply_penalties(&mut l);
        assert_eq!(l, vec![2.0, -8.0, 4.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        let mut s = Sampler::new(
            params(|p| {
                p.presence_penalty = 0.5;
                p.frequency_penalty = 0.25;
            }),
            &[2],
        );
        s.record(0);
        s.record(0);
        s.record(1);
        let mut l = vec![1.0, 1.0, 1.0];
        s.apply_penalties(&mut l);
        assert_eq!(l, vec![1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25, 1.0]);
    }

    #[test]
    fn filters_match_hand_computed_distributions() {
        let ln = |v: &[f32]| v.iter().map(|x| x.ln()).collect::<Vec<_>>();
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        let probs =
            |f: fn(&mut SamplingParams)| Sampler::new(params(f), &[]).probabilities(&logits);
        assert!(close(&probs(|_| {}), &[0.1, 0.4, 0.2, 0.3]));
        assert!(close(
            &probs(|p| p.top_k = 2),
            &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0]
        ));
        // top-p 0.65: 0.4 + 0.3 = 0.7 ≥ 0.65 → {1, 3}.
        assert!(close(
            &probs(|p| p.top_p = 0.65),
            &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0]
        ));
        // min-p 0.45: floor 0.18 → {1, 3, 2}.
        assert!(close(
            &probs(|p| p.min_p = 0.45),
            &[0.0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9]
        ));
        // temperature 0.5 squares the odds.
        let sq: f32 = [0.01f32, 0.16, 0.04, 0.09].iter().sum();
        assert!(close(
            &probs(|p| p.temperature = 0.5),
            &[0.01 / sq, 0.16 / sq, 0.04 / sq, 0.09 / sq]
        ));
    }

    #[test]
    fn greedy_takes_the_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::default(), &[]);
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_draws_follow_the_distribution() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| p.seed = Some(seed)), &[]);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        // Empirical frequencies of a 2-token distribution are within 3σ of [0.25, 0.75].
        let two = [0.25f32.ln(), 0.75f32.ln()];
        let mut s = Sampler::new(params(|_| {}), &[]);
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&two) == 1).count() as f64 / n as f64;
        assert!(
            (ones - 0.75).abs() < 3.0 * (0.75f64 * 0.25 / n as f64).sqrt(),
            "{ones}"
        );
    }

    #[test]
    fn presets_and_validation() {
        let t = SamplingParams::preset("thinking").unwrap();
        assert_eq!(
            (t.temperature, t.top_p, t.top_k, t.presence_penalty),
            (1.0, 0.95, 20, 1.5)
        );
        assert!(
            SamplingParams::preset("nope")
                .unwrap_err()
                .to_string()
                .contains("thinking-coding")
        );
        assert!(params(|p| p.top_p = 0.0).validate().is_err());
        assert!(params(|p| p.temperature = f32::NAN).validate().is_err());
        assert!(params(|p| p.presence_penalty = 3.0).validate().is_err());
        for (name, _) in PRESETS {
            SamplingParams::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn generation_config_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation_config.json");
        std::fs::write(
            &path,
            r#"{"do_sample":true,"temperature":0.6,"top_k":20,"top_p":0.95}"#,
        )
        .unwrap();
        let p = SamplingParams::from_generation_config(&path).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.6, 20, 0.95));
        std::fs::write(&path, r#"{"temperature": -1}"#).unwrap();
        assert!(
            SamplingParams::from_generation_config(&path)
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
        assert_eq!(
            SamplingParams::from_generation_config(&dir.path().join("none")).unwrap(),
            SamplingParams::default()
        );
    }

    #[test]
    fn stop_strings_are_found_across_pieces_and_nothing_after_is_shown() {
        let mut m = StopMatcher::new(&["</end>".to_string(), "STOP".to_string()]);
        assert_eq!(m.push("hello </e"), StopCheck::Continue("hello ".into()));
        assert_eq!(m.push("nx"), StopCheck::Continue("</enx".into()));
        assert_eq!(m.push("abc ST"), StopCheck::Continue("abc ".into()));
        assert_eq!(
            m.push("OP tail"),
            StopCheck::Stopped {
                text: "".into(),
                stop: "STOP".into()
            }
        );
        let mut m = StopMatcher::new(&["ab".to_string()]);
        assert_eq!(m.push("xa"), StopCheck::Continue("x".into()));
        assert_eq!(m.finish(), "a");
        let mut none = StopMatcher::new(&[]);
        assert_eq!(none.push("é"), StopCheck::Continue("é".into()));
    }
}
