"""Per-row key/value caches and the attention over them: rows of any lengths in one forward,
with no padding and no copy of other rows' keys and values when a row joins or leaves.

Each row owns its cache, one tensor ``[layers, 2, kv_heads, capacity, head_dim]`` (keys, then
values) holding its ``cached`` tokens in columns ``[0, cached)``; column ``c`` is position
``c`` of the row's stream, the position RoPE sees. A forward packs every row's new tokens into
one sequence ``[1, N]`` (a decoding row: its newest token; a joining row: its whole stream), so
the projections and MLPs run once over all ``N`` tokens, and :func:`ragged_attention` (the
model's attention function, registered with transformers as :data:`ATTENTION`) writes each
row's new keys and values into its own cache and computes, for each row ``r`` with ``p_r``
cached and ``q_r`` new tokens, exactly::

    out_r = softmax(Q_r K_r^T * scale + causal) V_r,   K_r, V_r = columns [0, p_r + q_r)

over that row's columns only (grouped-query heads without repeating keys and values). A row's
cost is its own length, never the longest row's.

Per layer, the new keys and values of all rows are written with one multi-tensor copy (a
decoding row's one column, a joining row's whole segment) and the queries split in one call;
the attention itself is one SDPA call per row over that row's own columns. One call over all
decoding rows measured slower on a bf16 CPU: it must read every row padded to the longest
(a key mask) and, with per-row tensors, first gather them into one; the per-row calls read
only each row's columns (bench/decode_attention.py, docs/benchmarks.md "Decode attention").

Growth: a row that outgrows its capacity is moved to a tensor ``HEADROOM`` columns longer than
it needs (only that row's cache is copied, about once every ``HEADROOM`` steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

#: The name of :func:`ragged_attention` in transformers' attention registry.
ATTENTION = "corrigo_ragged"
#: The keyword argument carrying a forward's :class:`Packed` batch to the attention layers.
BATCH_KWARG = "corrigo_batch"
#: Extra columns a row's cache gets whenever it is (re)allocated.
HEADROOM = 64


class RowCache:
    """One row's keys and values: ``store[layer, 0]`` keys, ``store[layer, 1]`` values, each
    ``[kv_heads, capacity, head_dim]``; ``cached`` columns are valid."""

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device):
        """``shape``: (layers, kv_heads, head_dim)."""
        self.shape = shape
        self.store = torch.zeros(0, device=device, dtype=dtype)
        self.cached = 0
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pairs: list[torch.Tensor] = []

    @property
    def capacity(self) -> int:
        return self.store.shape[3] if self.store.dim() == 5 else 0

    def reserve(self, columns: int) -> None:
        """Make room for ``columns`` columns, keeping the valid ones."""
        if columns <= self.capacity:
            return
        layers, heads, dim = self.shape
        grown = torch.zeros(
            layers,
            2,
            heads,
            columns + HEADROOM,
            dim,
            device=self.store.device,
            dtype=self.store.dtype,
        )
        if self.cached:
            grown[:, :, :, : self.cached] = self.store[:, :, :, : self.cached]
        self.store = grown
        # Per-layer views made once per allocation, not per step: [1, kv_heads, capacity, dim].
        self._layers = [(layer[0].unsqueeze(0), layer[1].unsqueeze(0)) for layer in grown]
        self._pairs = list(grown.unbind(0))

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``index``, ``[1, kv_heads, capacity, head_dim]`` views."""
        return self._layers[index]

    def pair(self, index: int) -> torch.Tensor:
        """Keys and values of layer ``index`` together, a ``[2, kv_heads, capacity, head_dim]``
        view (one destination for both in a write)."""
        return self._pairs[index]

    @property
    def nbytes(self) -> int:
        return self.store.numel() * self.store.element_size()


@dataclass(frozen=True)
class Segment:
    """One row's part of a packed forward: tokens ``[start, start + new)`` of the sequence are
    positions ``[past, past + new)`` of the row's stream."""

    cache: RowCache
    past: int
    new: int
    start: int


class Packed:
    """What the attention layers of one forward need: its rows' segments, in sequence order.

    A segment of several new tokens is a whole stream (``past == 0``): joining rows are
    prefilled from their first token.
    """

    def __init__(self, segments: Sequence[Segment], layers: int):
        for segment in segments:
            if segment.new > 1 and segment.past:
                raise ValueError("a segment of several tokens must start at position 0")
        self.segments = tuple(segments)
        self.layers = layers
        self.tokens = sum(s.new for s in segments)
        #: Each segment's token count, in order (the split of the packed sequence).
        self.sizes = [s.new for s in segments]
        #: Attention layers this forward went through (checked against ``layers``: a model
        #: whose layers do not call the registered attention function must not run silently).
        self.seen = 0


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface over :class:`RowCache` rows.

    ``query`` ``[1, heads, N, dim]``, ``key``/``value`` ``[1, kv_heads, N, dim]`` (after RoPE)
    for the packed sequence described by ``kwargs[BATCH_KWARG]``; returns ``[1, N, heads, dim]``
    in ``query``'s dtype. The attention runs in the caches' dtype (a copilot's float32 layers
    keep bf16 caches: decoding/copilot/runner.py).
    """
    batch = kwargs.get(BATCH_KWARG)
    if not isinstance(batch, Packed):
        raise RuntimeError(f"{ATTENTION} attention needs a {BATCH_KWARG} batch")
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{ATTENTION} attention does not support {name}")
    if dropout:
        raise ValueError(f"{ATTENTION} attention does not support dropout")
    layer = module.layer_idx
    segments = batch.segments
    computes, dtype = query.dtype, segments[0].cache.store.dtype
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if len(segments) == 1:  # one row: two plain copies cost less than stacking for one
        only = segments[0]
        keys, values = only.cache.layer(layer)
        keys[:, :, only.past : only.past + only.new] = key
        values[:, :, only.past : only.past + only.new] = value
        split: Sequence[torch.Tensor] = (query,)
    else:
        # All rows' new keys and values in one copy: [2, kv_heads, N, dim] split by segment
        # into each row's columns [past, past + new) of this layer.
        new = torch.stack((key[0], value[0])).split(batch.sizes, dim=2)
        torch._foreach_copy_(
            [s.cache.pair(layer)[:, :, s.past : s.past + s.new] for s in segments], list(new)
        )
        split = query.split(batch.sizes, dim=2)
    outs = []
    for segment, queries in zip(segments, split, strict=True):
        keys, values = segment.cache.layer(layer)
        end = segment.past + segment.new
        outs.append(
            F.scaled_dot_product_attention(
                queries,
                keys[:, :, :end],
                values[:, :, :end],
                is_causal=segment.new > 1,  # past == 0 here: top-left alignment is exact
                scale=scaling,
                enable_gqa=True,
            )
        )
    batch.seen += 1
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).to(computes), None


AttentionInterface.register(ATTENTION, ragged_attention)
