"""PyTorch reference of the Qwen3.5 / Qwen3.6 multi-token-prediction (MTP) block.

transformers 5.23 has the trunk (`Qwen3_5TextModel`) but no MTP forward, so this module
writes it from the architecture notes (../shared/spec/qwen35-architecture.md section 8),
reusing transformers' own layer classes:

    e  = ZCRMSNorm(embed(t[i+1]); mtp.pre_fc_norm_embedding)
    hh = ZCRMSNorm(h[i];          mtp.pre_fc_norm_hidden)       # h: the trunk's post-norm output
    x  = concat([e, hh]) @ mtp.fc.weight.T                      # embedding first, hidden second
    x  = full-attention decoder layer (mtp.layers.0.*), position i, causal over the MTP slots
    hm = ZCRMSNorm(x; mtp.norm)                                 # the next draft step's h
    logits[i + 2] = hm @ lm_head.T                              # shared with the trunk

Slot i carries (token t[i+1], position i, hidden h[i]); drafting k > 1 tokens feeds `hm` back
as the next slot's hidden state. Used by tools/train_demo.py (training the demo model's head
jointly with its trunk) and tools/make_mtp_reference.py (the tiny fixtures' MTP logits).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen3_5 import modeling_qwen3_5 as M


def full_attention_index(config) -> int:
    """Index of a full-attention layer of `config` (the MTP layer is built like one)."""
    return config.layer_types.index("full_attention")


class Mtp(nn.Module):
    """`mtp.*` of a Qwen3.5 checkpoint (one block, `mtp_num_hidden_layers = 1`)."""

    def __init__(self, config):
        super().__init__()
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.pre_fc_norm_embedding = M.Qwen3_5RMSNorm(h, eps=config.rms_norm_eps)
        self.pre_fc_norm_hidden = M.Qwen3_5RMSNorm(h, eps=config.rms_norm_eps)
        self.layers = nn.ModuleList([M.Qwen3_5DecoderLayer(config, full_attention_index(config))])
        self.norm = M.Qwen3_5RMSNorm(h, eps=config.rms_norm_eps)

    def forward(self, hidden, next_embeds, position_embeddings):
        """hidden, next_embeds: [B, S, H] for S slots; position_embeddings: the trunk's
        rotary (cos, sin) for the slots' positions. Returns the normed output [B, S, H]."""
        x = torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], dim=-1)
        x = self.fc(x)
        s = x.shape[1]
        mask = torch.full((s, s), float("-inf"), dtype=x.dtype).triu(1)[None, None]
        for layer in self.layers:
            x = layer(x, position_embeddings=position_embeddings, attention_mask=mask)
        return self.norm(x)


def positions(s: int, start: int = 0) -> torch.Tensor:
    """Text positions [3, 1, s] for the trunk's rotary embedding (t = h = w = the index)."""
    p = torch.arange(start, start + s)
    return p.view(1, 1, -1).expand(3, 1, -1)
