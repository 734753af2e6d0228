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
import torch.nn.functional as F
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
        #: Each layer's projections concatenated (:meth:`fuse_projections`), for the packed
        #: backbone; None until fused (training runs the backbone's own layers).
        self.fused: nn.ModuleList | None = None
        #: RoPE's cos and sin of every position below the table's length (:meth:`_rotary`).
        self._rotary_table: tuple[torch.Tensor, torch.Tensor] | None = None

    def fuse_projections(self) -> None:
        """Give the packed backbone each layer's :class:`FusedProjections` (built from the
        current weights: call it once they are loaded, before any dtype cast or packing)."""
        self.fused = nn.ModuleList(FusedProjections(layer) for layer in self.backbone.layers)

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    @property
    def layers_dtype(self) -> torch.dtype:
        """What the backbone computes in (its embeddings and head may hold another dtype)."""
        return self.backbone.norm.weight.dtype

    @property
    def tables_dtype(self) -> torch.dtype:
        """What the vocabulary-size tables hold: ``E``, ``F`` and the head's weight."""
        return self.pilot_embed.weight.dtype

    def tables_to(self, dtype: torch.dtype) -> None:
        """Hold ``E``, ``F`` and the head in ``dtype``, the rest as it is. The tables are nearly
        all of a copilot's bytes (3 x vocab x hidden) and a step reads its rows' parts of ``E``
        and ``F`` and all of the head, so they decide its memory traffic; the decoder layers
        (hidden 128, 2 layers) are a small fraction of the weights but most of a step's
        operations, which on the CPU cost less in float32 (no oneDNN bf16 call per matmul,
        ~25 us against ~3 us for a few rows, and no casts in the norms)."""
        self.backbone.embed_tokens.to(dtype)
        self.pilot_embed.to(dtype)
        self.head.to(dtype)

    def embed(
        self,
        input_ids: torch.Tensor,
        pilot_ids: torch.Tensor | None = None,
        pilot_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``e = E[x] + sum_j q_j F[v_j]``; positions whose ``q`` are all 0 get ``E[x]`` only.
        In the backbone's dtype (the tables' rows are cast to it first, see :meth:`tables_to`)."""
        dtype = self.layers_dtype
        embeds = self.backbone.embed_tokens(input_ids).to(dtype)
        if pilot_ids is not None:
            weights = pilot_probs.to(dtype).unsqueeze(-1)
            embeds = embeds + (self.pilot_embed(pilot_ids).to(dtype) * weights).sum(-2)
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
        logits = self.head(hidden.to(self.tables_dtype))
        return CausalLMOutputWithPast(logits=logits, past_key_values=past)

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
        cos, sin = self._rotary(embeds, position_ids)
        hidden = embeds
        fused = [None] * len(backbone.layers) if self.fused is None else self.fused
        for layer, projections in zip(backbone.layers, fused, strict=True):
            hidden = packed_layer(layer, hidden, cos, sin, batch, projections)
        return rms_norm(backbone.norm, hidden)

    def _rotary(
        self, embeds: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``backbone.rotary_emb(embeds, position_ids)``: on the CPU, for RoPE whose
        frequencies do not depend on the sequence ("default"), rows of a table that function
        computed once for positions ``0..n-1`` (elementwise operations on each position: the
        same values, tests/unit/test_copilot.py), grown when a position reaches its end."""
        rotary = self.backbone.rotary_emb
        if embeds.device.type != "cpu" or rotary.rope_type != "default":
            return rotary(embeds, position_ids=position_ids)  # (a table's growth check syncs)
        table = self._rotary_table
        needed = int(position_ids.max()) + 1
        if table is None or table[0].shape[0] < needed or table[0].dtype != embeds.dtype:
            positions = torch.arange(max(2 * needed, 256), device=embeds.device)[None]
            cos, sin = rotary(embeds, position_ids=positions)
            table = self._rotary_table = (cos[0], sin[0])
        at = position_ids.reshape(-1)
        shape = (*position_ids.shape, table[0].shape[-1])
        return table[0].index_select(0, at).view(shape), table[1].index_select(0, at).view(shape)


def _concatenated(*linears: nn.Linear) -> nn.Linear:
    """One linear layer computing ``linears``' outputs side by side (same input)."""
    biased = [linear.bias is not None for linear in linears]
    if len(set(biased)) != 1:
        raise ValueError("cannot concatenate linear layers with and without a bias")
    weight = torch.cat([linear.weight.detach() for linear in linears])
    joined = nn.Linear(weight.shape[1], weight.shape[0], bias=biased[0])
    joined.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        joined.weight.copy_(weight)
        if joined.bias is not None:
            joined.bias.copy_(torch.cat([linear.bias.detach() for linear in linears]))
    return joined


class FusedProjections(nn.Module):
    """A decoder layer's projections that read the same input, each set as one matmul::

        [q | k | v] = x [W_q; W_k; W_v]^T          [gate | up] = x [W_gate; W_up]^T

    Output column ``j`` is the same dot product of the same input row as in its own layer;
    what the concatenation saves is the fixed cost of three calls (two for the MLP), which on
    the CPU is most of a 128-wide layer's matmul time for a few rows (~25 us per oneDNN bf16
    call, a few us in float32, what the served copilot's layers run in). A kernel may order a
    dot product's sum differently for another output width: oneDNN's packed bf16 kernels gave
    identical values, and tests/unit/test_copilot.py bounds the difference for any kernel."""

    def __init__(self, layer: LlamaDecoderLayer) -> None:
        super().__init__()
        attention, mlp = layer.self_attn, layer.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        self.qkv = _concatenated(*projections)
        self.qkv_sizes = [p.weight.shape[0] for p in projections]
        self.gate_up = _concatenated(mlp.gate_proj, mlp.up_proj)
        self.gate_up_sizes = [mlp.gate_proj.weight.shape[0], mlp.up_proj.weight.shape[0]]


def rms_norm(norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``norm(hidden)`` for transformers' ``LlamaRMSNorm``; in float32 as one ``rms_norm``
    call: the same operations in the same order, ``x * rsqrt(mean(x^2) + eps) * w`` in
    float32 (the module casts to the input dtype before the weight, a no-op in float32), with
    less Python around them. Other dtypes (where that cast rounds) run the module."""
    weight = norm.weight
    if hidden.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(hidden, (hidden.shape[-1],), weight, norm.variance_epsilon)
    return norm(hidden)


def packed_layer(
    layer: LlamaDecoderLayer,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    batch: Packed,
    fused: FusedProjections | None = None,
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

    With ``fused`` (the layer's :class:`FusedProjections`), ``q``, ``k``, ``v`` and ``gate``,
    ``up`` come from one matmul each.
    """
    attention, mlp = layer.self_attn, layer.mlp
    residual = hidden
    hidden = rms_norm(layer.input_layernorm, hidden)
    input_shape = hidden.shape[:-1]
    hidden_shape = (*input_shape, -1, attention.head_dim)
    if fused is None:
        projected = (attention.q_proj(hidden), attention.k_proj(hidden), attention.v_proj(hidden))
    else:
        projected = fused.qkv(hidden).split(fused.qkv_sizes, dim=-1)
    query, key, value = (p.view(hidden_shape).transpose(1, 2) for p in projected)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    out, _ = ragged_attention(
        attention, query, key, value, None, scaling=attention.scaling, **{BATCH_KWARG: batch}
    )
    hidden = attention.o_proj(out.reshape(*input_shape, -1).contiguous())
    hidden = residual + hidden
    residual = hidden
    hidden = rms_norm(layer.post_attention_layernorm, hidden)
    if fused is None:
        return residual + mlp(hidden)
    gate, up = fused.gate_up(hidden).split(fused.gate_up_sizes, dim=-1)
    return residual + mlp.down_proj(mlp.act_fn(gate) * up)
