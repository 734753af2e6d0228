"""The copilot network: a small causal transformer that reads the pilot's token stream and,
where it has them, the pilot's next-token distributions, and outputs a vocabulary-size
rectification of the pilot's next-token prediction.

Input at position ``i`` (token ``x_i``)::

    e_i = E[x_i] + sum_{j < k} q_ij * F[v_ij]        (the second term only at pilot positions)

where ``(v_ij, q_ij)`` are the ``k`` most probable tokens of the pilot's distribution
``p_i = softmax(s_i)`` over ``x_{i+1}`` and their probabilities (a sparse image of the pilot's
logits, which are themselves a linear image of its last hidden state: vLLM exposes no hidden
states). ``E`` and ``F`` are ``[vocab, hidden]`` tables. The output ``f_i = W h_i`` is trained
to predict the pilot's error ``onehot(x_{i+1}) - p_i``; ``W`` starts at zero, so an untrained
copilot changes nothing.

Pilot positions are those where the pilot's logits are seen at inference: the processor sees
the logits of the step being sampled only, so ``i >= len(prompt) - 1`` (the last prompt token
and every generated one). Prompt positions before it get the token alone, in training as in
serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb

from ..aux.ragged import BATCH_KWARG, Packed, ragged_attention
from ..topk import topk


@dataclass(frozen=True)
class PilotFeatures:
    """The top-``k`` tokens of the pilot's next-token distribution and their probabilities."""

    ids: torch.Tensor  # [..., k] long
    probs: torch.Tensor  # [..., k] float

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> PilotFeatures:
        return cls.from_log_probs(torch.log_softmax(logits, dim=-1, dtype=torch.float32), k)

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor, k: int) -> PilotFeatures:
        """From ``log_softmax(logits)`` ``[rows, vocab]``: exponentiates the ``k`` chosen
        entries only (found by decoding/topk.py's blocked top-k)."""
        top, ids = topk(log_probs, k)
        return cls(ids, top.exp())


class Copilot(nn.Module):
    """Backbone: a transformers ``LlamaModel`` (so the auxiliary runner's per-row KV caches
    and attention, decoding/aux/ragged.py, drive it like any causal LM); ``top_k``: pilot
    tokens read per position."""

    def __init__(self, config: LlamaConfig, top_k: int) -> None:
        super().__init__()
        self.config = config
        self.top_k = top_k
        self.backbone = LlamaModel(config)
        self.pilot_embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        nn.init.normal_(self.pilot_embed.weight, std=config.initializer_range)
        nn.init.zeros_(self.head.weight)

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def embed(
        self,
        input_ids: torch.Tensor,
        pilot_ids: torch.Tensor | None = None,
        pilot_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``e = E[x] + sum_j q_j F[v_j]``; positions whose ``q`` are all 0 get ``E[x]`` only."""
        embeds = self.backbone.embed_tokens(input_ids)
        if pilot_ids is not None:
            weights = pilot_probs.to(embeds.dtype).unsqueeze(-1)
            embeds = embeds + (self.pilot_embed(pilot_ids) * weights).sum(-2)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        pilot_ids: torch.Tensor | None = None,
        pilot_probs: torch.Tensor | None = None,
        *,
        select: torch.Tensor | None = None,
        logits_to_keep: torch.Tensor | None = None,
        **backbone_kwargs,
    ) -> CausalLMOutputWithPast:
        """Rectifications ``[batch, seq, vocab]`` (as ``logits``, the name the runner reads).

        ``pilot_ids``/``pilot_probs``: ``[batch, seq, k]``, zero probabilities where the pilot
        is not seen. ``select`` (a boolean ``[batch, seq]`` mask) computes the head on those
        positions only, returning ``[positions, vocab]`` (training). ``logits_to_keep`` (indices
        along ``seq``, as transformers' causal LMs take it) computes the head on those positions
        only, returning ``[batch, len(logits_to_keep), vocab]`` (the auxiliary runner). Other
        keyword arguments (cache, masks, positions) go to the backbone.
        """
        embeds = self.embed(input_ids, pilot_ids, pilot_probs)
        if BATCH_KWARG in backbone_kwargs:
            hidden, past = self._packed_backbone(embeds, **backbone_kwargs), None
        else:
            out = self.backbone(inputs_embeds=embeds, **backbone_kwargs)
            hidden, past = out.last_hidden_state, out.past_key_values
        if select is not None:
            hidden = hidden[select]
        if logits_to_keep is not None:
            hidden = hidden[:, logits_to_keep]
        return CausalLMOutputWithPast(logits=self.head(hidden), past_key_values=past)

    def _packed_backbone(
        self, embeds: torch.Tensor, *, position_ids: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """The backbone's layers over the auxiliary runner's packed batch (decoding/aux/ragged.py,
        which keeps every row's keys and values itself): what ``LlamaModel.forward`` computes
        there, without its wrappers (output capturing, config defaults, a cache object and the
        causal mask, which the ragged attention does not read), whose Python per forward is a
        visible share of a 2-layer copilot's step. Each layer runs as :func:`packed_layer`."""
        backbone = self.backbone
        batch = kwargs[BATCH_KWARG]
        cos, sin = backbone.rotary_emb(embeds, position_ids=position_ids)
        hidden = embeds
        for layer in backbone.layers:
            hidden = packed_layer(layer, hidden, cos, sin, batch)
        return backbone.norm(hidden)


def packed_layer(
    layer: LlamaDecoderLayer,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    batch: Packed,
) -> torch.Tensor:
    """``layer(hidden, position_embeddings=(cos, sin), corrigo_batch=batch)`` over a packed
    batch: transformers' ``LlamaDecoderLayer`` and ``LlamaAttention`` forwards, the same
    operations on the same tensors in the same order (so the same values, bit for bit:
    tests/unit/test_copilot.py), with the attention function called directly instead of
    through the module wrappers and the attention registry (their Python per layer: a small
    part of a 2-layer, 128-wide copilot's step, whose time goes mostly to the fixed cost of its
    many small torch operations; docs/benchmarks.md)::

        h = x + o_proj(ragged_attention(rope(q_proj(n1(x))), rope(k_proj(n1(x))), v_proj(n1(x))))
        y = h + down_proj(act(gate_proj(n2(h))) * up_proj(n2(h)))
    """
    attention = layer.self_attn
    residual = hidden
    hidden = layer.input_layernorm(hidden)
    input_shape = hidden.shape[:-1]
    hidden_shape = (*input_shape, -1, attention.head_dim)
    query = attention.q_proj(hidden).view(hidden_shape).transpose(1, 2)
    key = attention.k_proj(hidden).view(hidden_shape).transpose(1, 2)
    value = attention.v_proj(hidden).view(hidden_shape).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    out, _ = ragged_attention(
        attention, query, key, value, None, scaling=attention.scaling, **{BATCH_KWARG: batch}
    )
    hidden = attention.o_proj(out.reshape(*input_shape, -1).contiguous())
    hidden = residual + hidden
    residual = hidden
    hidden = layer.post_attention_layernorm(hidden)
    return residual + layer.mlp(hidden)
