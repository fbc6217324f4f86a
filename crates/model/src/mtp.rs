//! The multi-token-prediction (MTP) head of Qwen3.5 / Qwen3.6: one full-attention decoder
//! block that proposes the token after the next one, used as the draft model of speculative
//! decoding.
//!
//! ```text
//! slot i: (hidden h[i] after the trunk's final norm, token t[i+1], position i)
//! x  = RMSNorm(embed[t[i+1]]; enorm) · W_eᵀ + RMSNorm(h[i]; hnorm) · W_hᵀ   (fc = [W_e ‖ W_h])
//! x  = full-attention decoder layer (its own KV cache, one row per slot)
//! hm = RMSNorm(x; norm)                  → the next slot's h when drafting further
//! logits[i + 2] = hm · lm_headᵀ          (the trunk's LM head, or a sub-vocabulary of it)
//! ```
//!
//! The MTP block's KV rows live in a state of their own ([`Qwen35::new_mtp_state`]), one row
//! per slot whose inputs are known; drafted slots past them are dropped again
//! ([`Qwen35::mtp_truncate`]) once the trunk has verified the drafts.

use qinfer_backend::Act;
use qinfer_cache::{LayerSpec, LayerState, SequenceState};
use qinfer_tensor::{Mat, Weight};

use crate::error::{ForwardError, LoadError};
use crate::layers::{attention::Attention, norm::RmsNorm};
use crate::loader::{Loader, TensorId};
use crate::names::{LayerTensor, MtpTensor};
use crate::qwen35::{FeedForward, Qwen35, Rows, per_part};
use crate::{ModelConfig, text_position};

/// The loaded MTP head.
#[derive(Clone, Debug)]
pub struct MtpHead {
    pub embed_norm: RmsNorm,
    pub hidden_norm: RmsNorm,
    /// `fc`'s first `H` columns (the embedding's part), `[H, H]`.
    pub fc_embed: Weight,
    /// `fc`'s last `H` columns (the hidden state's part), `[H, H]`.
    pub fc_hidden: Weight,
    pub input_norm: RmsNorm,
    pub attention: Attention,
    pub post_attention_norm: RmsNorm,
    pub feed_forward: FeedForward,
    pub norm: RmsNorm,
    /// The draft vocabulary: rows of the LM head drafts are chosen from, `[Vd, H]`, and the
    /// token id of each row. `None`: the whole LM head.
    pub draft: Option<(Weight, Vec<u32>)>,
}

impl MtpHead {
    /// Loads block `block` (the decoder's layer count) of `c`'s MTP head.
    pub fn load(ld: &Loader<'_>, c: &ModelConfig, block: usize) -> Result<Self, LoadError> {
        let (h, eps) = (c.hidden, c.rms_norm_eps);
        let id = |t| TensorId::Mtp { block, t };
        let fc = ld.matrix(id(MtpTensor::Fc), h, 2 * h)?;
        let half = |start| {
            fc.cols_range(start, h).ok_or_else(|| LoadError::Shape {
                name: format!(
                    "{} (halves of {} rows are not whole blocks)",
                    ld.name(id(MtpTensor::Fc)),
                    fc.dtype()
                ),
                expected: vec![h, 2 * h],
                got: vec![h, 2 * h],
            })
        };
        let (fc_embed, fc_hidden) = (half(0)?, half(h)?);
        let layer = |t| TensorId::Layer(block, t);
        let (input_norm, attention, post_attention_norm, feed_forward) =
            ld.mtp_layer(block, |ld| -> Result<_, LoadError> {
                let ff = FeedForward::load(ld, block, c)?;
                Ok((
                    RmsNorm::load(ld, layer(LayerTensor::InputNorm), h, eps)?,
                    Attention::load(ld, block, c.attention, h, eps)?,
                    RmsNorm::load(ld, layer(LayerTensor::PostAttentionNorm), h, eps)?,
                    ff,
                ))
            })?;
        Ok(MtpHead {
            embed_norm: RmsNorm::load(ld, id(MtpTensor::EmbedNorm), h, eps)?,
            hidden_norm: RmsNorm::load(ld, id(MtpTensor::HiddenNorm), h, eps)?,
            fc_embed,
            fc_hidden,
            input_norm,
            attention,
            post_attention_norm,
            feed_forward,
            norm: RmsNorm::load(ld, id(MtpTensor::FinalNorm), h, eps)?,
            draft: None,
        })
    }

    /// Every weight matrix of the head (for a backend to prepare).
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Weight> {
        let a = &mut self.attention;
        let mut ws = vec![
            &mut self.fc_embed,
            &mut self.fc_hidden,
            &mut a.q,
            &mut a.k,
            &mut a.v,
            &mut a.o,
        ];
        ws.extend(self.feed_forward.weights_mut());
        if let Some((w, _)) = &mut self.draft {
            ws.push(w);
        }
        ws
    }
}

/// GGUF metadata key of the draft vocabulary (an array of token ids, most likely first).
pub const DRAFT_VOCAB_KEY: &str = "qinfer.draft_vocab";
/// The draft vocabulary beside a Hugging Face checkpoint: a JSON array of token ids.
pub const DRAFT_VOCAB_FILE: &str = "draft_vocab.json";

/// Reads a model directory's [`DRAFT_VOCAB_FILE`], if there is one.
pub fn draft_vocab_from_dir(dir: &std::path::Path) -> Result<Option<Vec<u32>>, LoadError> {
    let path = dir.join(DRAFT_VOCAB_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LoadError::DraftVocab {
                source_name: path.display().to_string(),
                problem: e.to_string(),
            });
        }
    };
    serde_json::from_str::<Vec<u32>>(&text)
        .map(Some)
        .map_err(|e| LoadError::DraftVocab {
            source_name: path.display().to_string(),
            problem: format!("not a JSON array of token ids: {e}"),
        })
}

/// Reads a GGUF file's [`DRAFT_VOCAB_KEY`], if present.
pub fn draft_vocab_from_gguf(
    file: &qinfer_formats::gguf::GgufFile,
) -> Result<Option<Vec<u32>>, LoadError> {
    let Some(v) = file.get(DRAFT_VOCAB_KEY) else {
        return Ok(None);
    };
    let bad = || LoadError::DraftVocab {
        source_name: DRAFT_VOCAB_KEY.into(),
        problem: "not an array of token ids".into(),
    };
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u32>, _>>()
        .map(Some)
}

/// One sequence's part of a [`Qwen35::mtp_step`]: slots `start..start + T`.
#[derive(Debug)]
pub struct MtpSpan<'a> {
    /// `[T, H]`: the hidden state of each slot's position (the trunk's, after its final norm,
    /// or the MTP head's own output when drafting further).
    pub hidden: &'a Mat,
    /// `T` tokens: each slot's next token.
    pub tokens: &'a [u32],
    /// Position of the first slot (text positions). The state holds the slots before it that
    /// it has seen; it need not hold all of them (a sequence restored from the prompt cache
    /// starts its MTP state where the restored part ends).
    pub start: usize,
    /// The MTP head's own state ([`Qwen35::new_mtp_state`]): its KV rows are the slots it
    /// has seen (its position counter is not used: slots carry their positions).
    pub state: &'a mut SequenceState,
    /// Rows that return logits.
    pub logits: Rows,
    /// Logits over the draft vocabulary ([`Qwen35::set_draft_vocab`]) rather than all of it.
    pub draft_vocab: bool,
}

/// What a [`Qwen35::mtp_step`] returns for one span.
#[derive(Clone, Debug)]
pub struct MtpOutput {
    /// `[R, V]` or `[R, Vd]` for the rows [`MtpSpan::logits`] asked for.
    pub logits: Option<Mat>,
    /// `[1, H]`: the last slot's output after the head's norm (the hidden state of the next
    /// draft slot).
    pub hidden: Mat,
}

impl Qwen35 {
    /// Whether the model has an MTP head (loaded from the checkpoint).
    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }

    /// A fresh MTP state: the KV rows of the head's attention layer.
    pub fn new_mtp_state(&self) -> SequenceState {
        let a = self.config.attention;
        let width = a.n_kv_heads * a.head_dim;
        SequenceState::new(&[LayerSpec::Attention {
            kv_width: width,
            kv_type: self.kv_type().for_width(width),
        }])
    }

    /// Drops an MTP state's rows past `rows` (drafted slots the trunk has since replaced).
    pub fn mtp_truncate(&self, state: &mut SequenceState, rows: usize) {
        if let LayerState::Attention(kv) = state.layer_mut(0) {
            kv.truncate(rows);
        }
    }

    /// Restricts drafts to the LM-head rows of `ids` (most likely tokens): each draft step's
    /// head reads `ids.len()` rows instead of the whole vocabulary. Verification always uses
    /// the whole head, so outputs do not change; only the draft's cost and acceptance do.
    pub fn set_draft_vocab(&mut self, ids: &[u32]) -> Result<(), LoadError> {
        if self.mtp.is_none() {
            return Ok(());
        }
        let vocab = self.config.vocab;
        let bad = |problem: String| LoadError::DraftVocab {
            source_name: "given".into(),
            problem,
        };
        if ids.is_empty() {
            return Err(bad("no token ids".into()));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(bad(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        let w = self
            .lm_head
            .gather_rows(ids)
            .ok_or_else(|| bad("rows outside the LM head".into()))?;
        let w = self.backend().prepare(w)?;
        if let Some(mtp) = self.mtp.as_mut() {
            mtp.draft = Some((w, ids.to_vec()));
        }
        Ok(())
    }

    /// The token id of draft-vocabulary row `i` (`i` itself without a draft vocabulary).
    pub fn draft_token(&self, i: usize) -> u32 {
        match self.mtp.as_ref().and_then(|m| m.draft.as_ref()) {
            Some((_, ids)) => ids[i],
            None => i as u32,
        }
    }

    /// Runs the MTP head over each span's slots (all spans' rows stacked through one pass),
    /// appending their KV rows to the spans' MTP states.
    pub fn mtp_step(&self, spans: &mut [MtpSpan<'_>]) -> Result<Vec<MtpOutput>, ForwardError> {
        let Some(mtp) = self.mtp.as_ref() else {
            return Err(ForwardError::NoMtpHead);
        };
        let c = &self.config;
        for s in spans.iter() {
            let t = s.tokens.len();
            if t == 0 {
                return Err(ForwardError::Empty);
            }
            if s.hidden.rows != t || s.hidden.cols != c.hidden {
                return Err(ForwardError::EmbeddingWidth {
                    got: s.hidden.cols,
                    hidden: c.hidden,
                });
            }
            self.check_tokens(s.tokens)?;
            self.check_room(s.start, t)?;
            if s.state.layers().len() != 1
                || !matches!(s.state.layers()[0], LayerState::Attention(_))
            {
                return Err(ForwardError::StateMismatch);
            }
        }
        let be = self.backend();
        let mut bounds = Vec::with_capacity(spans.len());
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        for s in spans.iter() {
            let lo = ids.len();
            ids.extend_from_slice(s.tokens);
            positions.extend((0..s.tokens.len()).map(|i| text_position(s.start + i)));
            bounds.push(lo..ids.len());
        }
        let mut e = be.embed(&self.embed, &ids);
        mtp.embed_norm.forward(be, &mut e);
        let mut hh = per_part(be, &bounds, |i, _| be.upload(spans[i].hidden.clone()));
        mtp.hidden_norm.forward(be, &mut hh);
        let mut x = be.matmul(&e, &mtp.fc_embed);
        be.add(&mut x, &be.matmul(&hh, &mtp.fc_hidden));
        let h = mtp.input_norm.apply(be, &x);
        let angles = self.rope.angles_of(&positions);
        let p = mtp.attention.project(be, &h, &angles);
        let o = per_part(be, &bounds, |i, rows| {
            let LayerState::Attention(kv) = spans[i].state.layer_mut(0) else {
                unreachable!("checked above")
            };
            match rows {
                None => mtp.attention.attend(be, &p.q, &p.k, &p.v, kv),
                Some(b) => {
                    let cut = |m: &Act| be.rows(m, b.clone());
                    mtp.attention
                        .attend(be, &cut(&p.q), &cut(&p.k), &cut(&p.v), kv)
                }
            }
        });
        be.add(&mut x, &mtp.attention.output(be, p.gate, o));
        let h = mtp.post_attention_norm.apply(be, &x);
        be.add(&mut x, &mtp.feed_forward.forward(be, &h));
        // One final norm over every row some span wants (its logit rows, and its last row for
        // the next slot's hidden state), then one matmul per head over the logit rows, as the
        // trunk's head does.
        let mut picks = Vec::new();
        let mut wanted = Vec::with_capacity(spans.len()); // (logit rows in `picks`, last row)
        for (s, b) in spans.iter().zip(&bounds) {
            let want = s.logits.range(b.len());
            let lo = picks.len();
            picks.extend(want.clone().map(|i| b.start + i));
            if want.end != b.len() || want.is_empty() {
                picks.push(b.end - 1);
            }
            wanted.push((lo..lo + want.len(), picks.len() - 1));
        }
        let mut normed = be.gather(&x, &picks);
        mtp.norm.forward(be, &mut normed);
        let host = be.download(normed.clone());
        let mut logits: Vec<Option<Mat>> = vec![None; spans.len()];
        let draft_head = |s: &MtpSpan<'_>| s.draft_vocab && mtp.draft.is_some();
        for draft in [true, false] {
            let members: Vec<usize> = (0..spans.len())
                .filter(|&n| !wanted[n].0.is_empty() && draft_head(&spans[n]) == draft)
                .collect();
            if members.is_empty() {
                continue;
            }
            let rows: Vec<usize> = members.iter().flat_map(|&n| wanted[n].0.clone()).collect();
            let head = match (&mtp.draft, draft) {
                (Some((w, _)), true) => w,
                _ => &self.lm_head,
            };
            let sel = if rows.len() == picks.len() {
                normed.clone()
            } else {
                be.gather(&normed, &rows)
            };
            let out = be.download(be.matmul(&sel, head));
            let mut at = 0;
            for n in members {
                let r = wanted[n].0.len();
                logits[n] = Some(out.rows_range(at, at + r));
                at += r;
            }
        }
        let outs = wanted
            .iter()
            .zip(logits)
            .map(|((_, last), logits)| MtpOutput {
                logits,
                hidden: Mat::from_vec(host.row(*last).to_vec(), 1, c.hidden),
            })
            .collect();
        Ok(outs)
    }
}
