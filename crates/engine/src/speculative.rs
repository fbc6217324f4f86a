//! Speculative decoding with the model's MTP head as the draft model.
//!
//! A decoding sequence feeds its pending token followed by `k` drafts in one step (keeping
//! per-position states), and the decoder then walks the `k + 1` logit rows exactly as it
//! would walk `k + 1` plain decode steps: it picks each token from the model's own logits
//! (greedy, or sampled with its own random stream), and the walk goes on only while its pick
//! equals the draft that was fed there. So the output is the plain decoder's, token for
//! token — greedy or sampled with a seed, constraints, penalties and stop strings included —
//! and the drafts only decide how many of those tokens one step yields. The state is then
//! rewound to the last accepted position ([`Qwen35::rewind`]: no recomputation).
//!
//! The MTP head sees every position once its next token is known: prompt positions as the
//! prompt is prefilled (the last [`PREFILL_WINDOW`] of each chunk), generated positions as
//! they are accepted. Its KV rows for drafted slots are dropped after drafting.
//!
//! Draft depth adapts per sequence: the depth `k` that maximises the expected tokens per step
//! (`1 + Σ_{m≤k} Π_{i≤m} a_i`, from the measured acceptance `a_i` at each draft position)
//! over the step's cost relative to a plain decode step — measured ([`StepTimes`]: lone
//! decode steps timed by the tokens they feed, and the MTP head's time per draft), or
//! `1 + DRAFT_COST · k` until measured. When no depth beats a plain step, drafting is off,
//! with a one-token probe every [`PROBE_EVERY`] steps; every [`PLAIN_EVERY`] steps one plain
//! step keeps the baseline timing fresh.

use qinfer_cache::SequenceState;
use qinfer_model::{MtpSpan, Qwen35, Rows};
use qinfer_tensor::Mat;

use crate::sampler::argmax;

/// Whether and how far to draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DraftConfig {
    /// Draft with the MTP head (when the model has one).
    pub mtp: bool,
    /// Most drafts per step (`--draft-max`).
    pub max: usize,
    /// Draft also while other sequences decode in the same step. Off by default: on the CPU
    /// a batched step is already compute-bound in its matmuls and its cost is not measured
    /// per sequence, and drafting there cost throughput (docs/PERFORMANCE.md, "Ninth
    /// session"); a sequence drafts whenever it decodes alone.
    pub in_batches: bool,
}

impl Default for DraftConfig {
    fn default() -> Self {
        DraftConfig {
            mtp: true,
            max: 5,
            in_batches: false,
        }
    }
}

impl DraftConfig {
    /// No drafting.
    pub fn none() -> Self {
        DraftConfig {
            mtp: false,
            max: 0,
            in_batches: false,
        }
    }

    /// Drafting up to `max` tokens, in batches too (tests of batched verification).
    pub fn mtp(max: usize, in_batches: bool) -> Self {
        DraftConfig {
            mtp: true,
            max,
            in_batches,
        }
    }

    /// Most drafts a step may carry: [`qinfer_model::MAX_KEPT_POSITIONS`] − 1.
    pub const LIMIT: usize = qinfer_model::MAX_KEPT_POSITIONS - 1;
}

/// Prompt positions per prefill chunk the MTP head sees (the chunk's last ones). Keeps the
/// hidden rows a long prompt returns bounded; the head's attention then covers the end of a
/// long prompt, which is what drafting the answer needs most.
pub const PREFILL_WINDOW: usize = 1024;

/// Cost of one more drafted-and-verified token relative to a plain decode step (an MTP block
/// forward over the draft vocabulary plus one more row in the verification step).
pub const DRAFT_COST: f64 = 0.2;

/// With drafting off, a one-token draft every this many steps re-measures acceptance.
pub const PROBE_EVERY: u32 = 16;

/// One plain (draft-free) decode step every this many steps, to time the baseline.
pub const PLAIN_EVERY: u32 = 64;

/// Measured costs of speculative steps (seconds, moving averages): lone decode steps by the
/// tokens they fed (`1 + drafts`), and the MTP head's time per draft token. Only steps that
/// ran one decoding sequence and nothing else are timed (a batch's step time is not one
/// sequence's cost).
#[derive(Clone, Debug, Default)]
pub struct StepTimes {
    step: [Option<f64>; DraftConfig::LIMIT + 2],
    draft: Option<f64>,
}

impl StepTimes {
    /// A lone decode step that fed `tokens` took `secs`.
    pub fn observe_step(&mut self, tokens: usize, secs: f64) {
        if let Some(t) = self.step.get_mut(tokens) {
            *t = Some(t.map_or(secs, |t| t + TIME_EMA * (secs - t)));
        }
    }

    /// Drafting took `secs` per draft token (a lone sequence's).
    pub fn observe_draft(&mut self, secs: f64) {
        self.draft = Some(self.draft.map_or(secs, |t| t + TIME_EMA * (secs - t)));
    }

    /// Cost of a step with `k` drafts (drafting included) relative to a plain step; `None`
    /// before a plain step was timed.
    fn cost(&self, k: usize) -> Option<f64> {
        let one = self.step[1]?;
        let verify = self.step[k + 1].unwrap_or(one * (1.0 + DRAFT_COST * k as f64));
        Some((verify + k as f64 * self.draft.unwrap_or(0.0)) / one)
    }
}

/// Weight of the latest observation in the step-time averages.
const TIME_EMA: f64 = 0.2;

/// Weight of the latest observation in the acceptance averages.
const EMA: f64 = 0.1;

/// What a sequence's drafts did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DraftStats {
    /// Verification steps that carried drafts.
    pub steps: usize,
    /// Draft tokens fed, and those accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// Per draft position `m` (0-based): how often a step drafted that deep, and how often
    /// draft `m + 1` was accepted when drafts `1..=m` were (the per-depth acceptance is
    /// `accepted / reached`).
    pub reached: Vec<usize>,
    pub accepted_at: Vec<usize>,
}

impl DraftStats {
    /// Accepted drafts per drafted token.
    pub fn acceptance(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }

    /// Adds another sequence's (or run's) counts.
    pub fn merge(&mut self, o: &DraftStats) {
        self.steps += o.steps;
        self.drafted += o.drafted;
        self.accepted += o.accepted;
        for (v, o) in [
            (&mut self.reached, &o.reached),
            (&mut self.accepted_at, &o.accepted_at),
        ] {
            if v.len() < o.len() {
                v.resize(o.len(), 0);
            }
            for (a, b) in v.iter_mut().zip(o) {
                *a += b;
            }
        }
    }
}

/// A sequence's draft model state.
#[derive(Debug)]
pub struct Drafter {
    /// The MTP head's KV rows: one per slot with known inputs.
    state: SequenceState,
    /// Trunk hidden rows (`[·, H]` flattened) of positions `hidden_start..`, not yet seen by
    /// the MTP head (their next token was not known when they came).
    hidden: Vec<f32>,
    hidden_start: usize,
    /// The drafts to feed after the pending token in the next step.
    pub drafts: Vec<u32>,
    /// `accept[m]`: measured chance that draft `m + 1` is accepted when drafts `1..=m` were.
    accept: Vec<f64>,
    /// Steps since the last draft, while drafting is off.
    idle: u32,
    /// Steps since the last plain one.
    since_plain: u32,
    /// Decode steps so far (the first is plain when no plain step was ever timed).
    steps: u32,
    pub stats: DraftStats,
}

impl Drafter {
    /// A drafter for a sequence whose state holds its first `start` positions (a prompt-cache
    /// hit): the MTP head starts seeing positions there.
    pub fn new(model: &Qwen35, start: usize, max: usize) -> Self {
        Drafter {
            state: model.new_mtp_state(),
            hidden: Vec::new(),
            hidden_start: start,
            drafts: Vec::new(),
            accept: vec![0.7; max],
            idle: 0,
            since_plain: 0,
            steps: 0,
            stats: DraftStats {
                reached: vec![0; max],
                accepted_at: vec![0; max],
                ..DraftStats::default()
            },
        }
    }

    /// Bytes held (MTP KV rows and buffered hidden rows).
    pub fn bytes(&self) -> usize {
        self.state.bytes() + self.hidden.len() * 4
    }

    /// Hidden rows `[R, H]` of the trunk for positions `end − R .. end` (the tail of what a
    /// step computed). Rows before them that never got hidden rows are skipped.
    pub fn push_hidden(&mut self, rows: &Mat, end: usize) {
        let first = end - rows.rows;
        let buffered_end = self.hidden_start + self.hidden.len() / rows.cols.max(1);
        if first != buffered_end {
            // A gap (a long chunk's head beyond the window): start over at `first`.
            self.hidden.clear();
            self.hidden_start = first;
        }
        self.hidden.extend_from_slice(&rows.data);
    }

    /// Records the verification of the last drafts: `accepted` of `drafted` matched.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        let st = &mut self.stats;
        st.steps += 1;
        st.drafted += drafted;
        st.accepted += accepted;
        for m in 0..drafted.min(accepted + 1) {
            let hit = m < accepted;
            st.reached[m] += 1;
            st.accepted_at[m] += usize::from(hit);
            self.accept[m] += EMA * (f64::from(u8::from(hit)) - self.accept[m]);
        }
    }

    /// Drafts to make now: the depth with the most expected tokens per unit of cost (see the
    /// module's notes); while that is none, one every [`PROBE_EVERY`] steps.
    fn depth(&mut self, times: &StepTimes) -> usize {
        self.since_plain += 1;
        self.steps = self.steps.saturating_add(1);
        if self.since_plain >= PLAIN_EVERY || times.step[1].is_none() && self.steps == 1 {
            // A plain step times the baseline (the first one, when nothing was timed yet).
            self.since_plain = 0;
            return 0;
        }
        let (mut chance, mut expected) = (1.0, 1.0);
        let (mut best, mut k) = (1.0, 0);
        for (m, a) in self.accept.iter().enumerate() {
            chance *= a;
            expected += chance;
            let depth = m + 1;
            let cost = times.cost(depth).unwrap_or(1.0 + DRAFT_COST * depth as f64);
            if expected / cost > best {
                (best, k) = (expected / cost, depth);
            }
        }
        if k == 0 && !self.accept.is_empty() {
            self.idle += 1;
            if self.idle >= PROBE_EVERY {
                self.idle = 0;
                return 1;
            }
        }
        k
    }
}

/// One sequence's part of [`propose`]. The tokens known so far (positions `0..len`): the fed
/// ones, then the prompt tokens not yet fed, then the pending token.
#[derive(Debug)]
pub struct ProposeItem<'a> {
    pub drafter: &'a mut Drafter,
    pub fed: &'a [u32],
    pub unfed_prompt: &'a [u32],
    pub pending: Option<u32>,
    /// Draft for the position after the last known token (the sequence is decoding).
    pub draft: bool,
}

impl ProposeItem<'_> {
    fn known(&self) -> usize {
        self.fed.len() + self.unfed_prompt.len() + usize::from(self.pending.is_some())
    }

    fn token(&self, i: usize) -> u32 {
        let (a, b) = (self.fed.len(), self.fed.len() + self.unfed_prompt.len());
        match i {
            i if i < a => self.fed[i],
            i if i < b => self.unfed_prompt[i - a],
            _ => self.pending.expect("inside the known tokens"),
        }
    }
}

/// Runs the MTP head over every buffered position whose next token is known, then drafts for
/// the sequences that want drafts (one batched MTP step per draft depth).
pub fn propose(
    model: &Qwen35,
    items: &mut [ProposeItem<'_>],
    times: &StepTimes,
    in_batches: bool,
) -> Result<(), String> {
    let decoding = items.iter().filter(|it| it.draft).count();
    let may_draft = in_batches || decoding <= 1;
    let h = model.config.hidden;
    // Depth per decoding sequence. A decoding sequence that drafts nothing this step also
    // skips the MTP head: its new rows are dropped (the head's context gets a gap, which
    // costs acceptance later, not correctness), so a sequence not drafting pays nothing.
    // Prompt rows always go through (the head needs the prompt).
    let depths: Vec<usize> = items
        .iter_mut()
        .map(|it| {
            if !it.draft {
                return 0;
            }
            let k = if may_draft {
                it.drafter.depth(times)
            } else {
                0
            };
            if k == 0 {
                it.drafter.hidden.clear();
            }
            k
        })
        .collect();
    // Slots with known inputs, one span per sequence with some.
    let mut ready: Vec<(usize, Mat, Vec<u32>, usize)> = Vec::new();
    for (n, it) in items.iter_mut().enumerate() {
        it.drafter.drafts.clear();
        let (rows, start) = (it.drafter.hidden.len() / h, it.drafter.hidden_start);
        let usable = rows.min(it.known().saturating_sub(start + 1));
        if usable == 0 {
            continue;
        }
        let tokens: Vec<u32> = (start + 1..start + 1 + usable)
            .map(|i| it.token(i))
            .collect();
        let d = &mut *it.drafter;
        let hidden = Mat::from_vec(d.hidden[..usable * h].to_vec(), usable, h);
        ready.push((n, hidden, tokens, start));
        d.hidden.drain(..usable * h);
        d.hidden_start += usable;
    }
    // Drafts only from the slot of the decoding position itself.
    let depths: Vec<usize> = depths
        .iter()
        .zip(items.iter())
        .map(|(&k, it)| {
            let last_seen =
                it.drafter.hidden.is_empty() && it.drafter.hidden_start + 1 == it.known();
            if last_seen { k } else { 0 }
        })
        .collect();
    // Rows the MTP state holds with true inputs, to cut back to after drafting.
    let mut outs: Vec<Option<(Mat, u32, usize)>> = (0..items.len()).map(|_| None).collect();
    let inputs: Vec<MtpInput<'_>> = ready
        .iter()
        .map(|(n, hidden, tokens, start)| MtpInput {
            seq: *n,
            hidden,
            tokens,
            start: *start,
            logits: if depths[*n] > 0 {
                Rows::Last
            } else {
                Rows::None
            },
        })
        .collect();
    for (input, r) in inputs.iter().zip(mtp_pass(model, items, &inputs)?) {
        if let Some(logits) = r.logits {
            let token = model.draft_token(argmax(logits.row(0)) as usize);
            items[input.seq].drafter.drafts.push(token);
            outs[input.seq] = Some((r.hidden, token, input.start + input.tokens.len()));
        }
    }
    let committed: Vec<usize> = items.iter().map(|it| kv_rows(&it.drafter.state)).collect();
    // Further drafts: each sequence's own output as the next slot's hidden state.
    let max_depth = depths.iter().copied().max().unwrap_or(0);
    for m in 1..max_depth {
        let live: Vec<usize> = (0..items.len())
            .filter(|&n| depths[n] > m && outs[n].is_some())
            .collect();
        if live.is_empty() {
            break;
        }
        let slots: Vec<(Mat, [u32; 1], usize)> = live
            .iter()
            .map(|&n| {
                let (hidden, token, pos) = outs[n].take().expect("live");
                (hidden, [token], pos)
            })
            .collect();
        let inputs: Vec<MtpInput<'_>> = live
            .iter()
            .zip(&slots)
            .map(|(&n, (hidden, token, pos))| MtpInput {
                seq: n,
                hidden,
                tokens: token,
                start: *pos,
                logits: Rows::Last,
            })
            .collect();
        for (input, r) in inputs.iter().zip(mtp_pass(model, items, &inputs)?) {
            let logits = r.logits.expect("asked for logits");
            let token = model.draft_token(argmax(logits.row(0)) as usize);
            items[input.seq].drafter.drafts.push(token);
            outs[input.seq] = Some((r.hidden, token, input.start + 1));
        }
    }
    for (it, rows) in items.iter_mut().zip(committed) {
        model.mtp_truncate(&mut it.drafter.state, rows);
    }
    Ok(())
}

fn kv_rows(state: &SequenceState) -> usize {
    match &state.layers()[0] {
        qinfer_cache::LayerState::Attention(kv) => kv.len(),
        qinfer_cache::LayerState::DeltaNet(_) => 0,
    }
}

/// One sequence's slots in an [`mtp_pass`].
struct MtpInput<'a> {
    /// Index of the sequence in the items.
    seq: usize,
    hidden: &'a Mat,
    tokens: &'a [u32],
    start: usize,
    logits: Rows,
}

/// One batched MTP step over `inputs` (at most one per sequence), each against its
/// sequence's MTP state, over the draft vocabulary.
fn mtp_pass(
    model: &Qwen35,
    items: &mut [ProposeItem<'_>],
    inputs: &[MtpInput<'_>],
) -> Result<Vec<qinfer_model::MtpOutput>, String> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let mut states: Vec<Option<&mut SequenceState>> = items
        .iter_mut()
        .map(|it| Some(&mut it.drafter.state))
        .collect();
    let mut spans: Vec<MtpSpan<'_>> = inputs
        .iter()
        .map(|i| MtpSpan {
            hidden: i.hidden,
            tokens: i.tokens,
            start: i.start,
            state: states[i.seq].take().expect("one span per sequence"),
            logits: i.logits,
            draft_vocab: true,
        })
        .collect();
    model.mtp_step(&mut spans).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drafter(max: usize) -> Drafter {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-dense-f32");
        let model = Qwen35::load_dir(&dir).unwrap();
        Drafter::new(&model, 0, max)
    }

    #[test]
    fn depth_follows_measured_acceptance_and_probes_when_off() {
        let mut d = drafter(4);
        let mut t = StepTimes::default();
        // Nothing timed yet: a plain step first.
        assert_eq!(d.depth(&t), 0);
        t.observe_step(1, 0.01);
        // Optimistic start (0.7 per position), unmeasured cost 1 + 0.2 k: depth 3 is best
        // (2.53 tokens for 1.6 steps' cost).
        assert_eq!(d.depth(&t), 3);
        for _ in 0..60 {
            d.observe(4, 4);
        }
        assert_eq!(d.depth(&t), 4);
        // Draft 1 always accepted, draft 2 never: depth 2 at most, then 1.
        for _ in 0..60 {
            d.observe(4, 1);
        }
        assert_eq!(d.depth(&t), 1);
        for _ in 0..60 {
            d.observe(1, 0);
        }
        // Off, with a one-draft probe every PROBE_EVERY steps.
        let depths: Vec<usize> = (0..2 * PROBE_EVERY).map(|_| d.depth(&t)).collect();
        assert_eq!(depths.iter().filter(|&&k| k == 1).count(), 2);
        assert!(depths.iter().all(|&k| k <= 1));
        let st = &d.stats;
        assert_eq!(st.steps, 180);
        assert_eq!(st.reached[0], 180);
        assert_eq!(st.accepted_at[0], 120);
        assert_eq!(st.reached[1], 120);
        assert_eq!(st.accepted_at[1], 60);
    }

    /// Measured costs decide: verification as dear as plain steps per token turns drafting
    /// off even at 70 % acceptance; nearly free verification drafts deep.
    #[test]
    fn depth_follows_measured_step_costs() {
        let mut dear = StepTimes::default();
        let mut cheap = StepTimes::default();
        for n in 1..=5 {
            dear.observe_step(n, 0.01 * n as f64);
            cheap.observe_step(n, 0.01 + 0.0005 * n as f64);
        }
        dear.observe_draft(0.002);
        cheap.observe_draft(0.0005);
        let mut d = drafter(4);
        assert_eq!(d.depth(&dear), 0);
        let mut d = drafter(4);
        assert_eq!(d.depth(&cheap), 4);
        assert_eq!(d.depth(&cheap), 4);
        // Every PLAIN_EVERY steps, one plain step to time the baseline.
        let ks: Vec<usize> = (1..PLAIN_EVERY).map(|_| d.depth(&cheap)).collect();
        assert_eq!(ks.iter().filter(|&&k| k == 0).count(), 1);
    }

    /// In a batch no step is a lone one, so plain steps are never timed: only a sequence's
    /// first step is plain, then the unmeasured cost model drafts.
    #[test]
    fn untimed_batches_still_draft() {
        let mut d = drafter(3);
        let t = StepTimes::default();
        let ks: Vec<usize> = (0..5).map(|_| d.depth(&t)).collect();
        assert_eq!(ks, [0, 3, 3, 3, 3]);
    }

    #[test]
    fn hidden_rows_after_a_gap_start_over() {
        let mut d = drafter(2);
        let h = Mat::zeros(3, 64);
        d.push_hidden(&h, 3);
        assert_eq!((d.hidden_start, d.hidden.len()), (0, 3 * 64));
        d.push_hidden(&h, 6);
        assert_eq!((d.hidden_start, d.hidden.len()), (0, 6 * 64));
        d.push_hidden(&h, 20);
        assert_eq!((d.hidden_start, d.hidden.len()), (17, 3 * 64));
    }
}
