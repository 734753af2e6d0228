"""Batched stepping of an auxiliary (transformers) model for many rows at once.

Each engine step, every row that uses an auxiliary model needs that model's next-token logits
for the row's token stream. :class:`AuxModelRunner` keeps one key/value cache for all its rows
and advances them all with **one** batched forward per step, whatever their lengths.

Layout: the rows share a transformers ``StaticCache`` of ``[rows, kv_heads, capacity, head_dim]``
per layer, right-aligned on a common write column ``T``: row ``r`` holds its ``n_r`` cached tokens
in columns ``[T - n_r, T)``, padding on the left, masked out. A decode step writes every row's
newest token at column ``T`` (so the whole batch shares one ``cache_position``, which is what a
static cache supports), with per-row ``position_ids`` ``n_r`` for RoPE. When a row joins or
leaves, or capacity runs out, the layout is rebuilt around the rows; a joining row is then
prefilled on its own (all its tokens but the last, through the model without its head: no
logits) straight into its slot. Steady-state decoding copies no KV.

Memory (adapters/aux_memory.py estimates it): one layout of ``rows x (longest row + HEADROOM)``
columns; a rebuild allocates the new layout a layer at a time and frees each old layer once its
rows are copied, so it holds one layout and one layer, never two layouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache

from decoding.pipeline import TokenStream

from .dtypes import AuxDType, cpu_has_native_bf16, dtype_name, resolve_aux_dtype

#: Extra capacity allocated at each rebuild, so a rebuild happens about every this many steps
#: at most when nobody joins or leaves.
HEADROOM = 64


def runner_dtype(setting: AuxDType, engine_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """What an auxiliary model or copilot declared with ``dtype = setting`` loads in on
    ``device`` beside an engine running ``engine_dtype`` (decoding/aux/dtypes.py)."""
    name = resolve_aux_dtype(
        setting,
        engine_dtype=dtype_name(engine_dtype),
        device_type=device.type,
        native_bf16=cpu_has_native_bf16(),
    )
    return getattr(torch, name)


@dataclass
class _Row:
    slot: int
    cached: int  # tokens of the row's stream held in the cache


class AuxModelRunner:
    """One auxiliary causal LM, stepped in lockstep with the engine for the rows that use it."""

    def __init__(
        self,
        path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        model: torch.nn.Module | None = None,
    ):
        """``model``: an already loaded causal model (with ``config``,
        ``get_output_embeddings()`` and ``get_decoder()``, e.g. a copilot) instead of loading
        ``path``."""
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.model = model.to(device=device, dtype=dtype).eval()
        #: What a prefill runs: the model without its head (no logits for the prompt).
        self.decoder = self.model.get_decoder()
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = self.model.config
        self.vocab_size: int = self.model.get_output_embeddings().weight.shape[0]
        self.rows: dict[int, _Row] = {}
        self.cache: StaticCache | None = None
        self.end = 0  # the write column T
        self.capacity = 0
        self.batch = 0  # rows the cache is laid out for (slots 0..batch-1)
        probe = StaticCache(config=self.config, max_cache_len=1)
        if any(layer.is_sliding for layer in probe.layers):
            raise ValueError(
                f"{path}: sliding-window attention is not supported for auxiliary models"
            )

    def release(self, key: int) -> None:
        """Forget a row (its request left the batch); its cache space is reclaimed at the next
        rebuild, or now when it was the last row."""
        self.rows.pop(key, None)
        if not self.rows:
            self.cache, self.batch, self.end, self.capacity = None, 0, 0, 0

    @torch.inference_mode()
    def step(
        self,
        streams: Mapping[int, TokenStream],
        inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``[len(streams), vocab]`` for each row's stream, in ``streams``' order.

        ``streams[key]`` is the row's whole token stream so far (prompt then generated tokens);
        between two calls it must have grown by exactly one token, unless the row is new.
        Rows not in ``streams`` are released. ``inputs``: extra per-row model inputs for the
        newest token, ``[len(streams), ...]`` in ``streams``' order (zeros for padding slots;
        a joining row's earlier tokens are prefilled without them).
        """
        for key in [k for k in self.rows if k not in streams]:
            self.release(key)
        joining = {}
        for key, stream in streams.items():
            row = self.rows.get(key)
            if row is None or row.cached != len(stream) - 1:
                joining[key] = stream.tokens()[:-1]
        if joining or self.batch != len(streams) or self.end >= self.capacity:
            self._rebuild(streams, joining)

        keys = list(streams)
        # Nothing below reads a tensor back, and the small host-to-device copies wait only for
        # this model's own stream, so on a GPU the forwards of several models are queued on
        # their streams one after another without waiting for each other.
        order = [self.rows[k].slot for k in keys]
        slots = torch.tensor(order, device=self.device)
        lengths = torch.tensor([self.rows[k].cached for k in keys], device=self.device)
        batch = self.batch
        tokens = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        positions = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        tokens[slots, 0] = torch.tensor([streams[k].last for k in keys], device=self.device)
        positions[slots, 0] = lengths
        columns = torch.arange(self.capacity, device=self.device)
        starts = torch.full((batch,), self.end, device=self.device)
        starts[slots] = self.end - lengths
        mask = ((columns >= starts[:, None]) & (columns <= self.end)).long()
        extra = {}
        for name, values in (inputs or {}).items():
            laid = values.new_zeros((batch, 1, *values.shape[1:]))
            laid[slots, 0] = values.to(self.device)
            extra[name] = laid
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=self.cache,
            cache_position=torch.tensor([self.end], device=self.device),
            use_cache=True,
            **extra,
        )
        self.end += 1
        for key in keys:
            self.rows[key].cached += 1
        logits = out.logits[:, -1]
        if order == list(range(batch)):
            return logits.float()  # rows in slot order (the usual case): no gather
        return logits[slots].float()

    def _rebuild(
        self, streams: Mapping[int, TokenStream], joining: Mapping[int, Sequence[int]]
    ) -> None:
        """Lay all rows out afresh: slots 0..n-1, right-aligned on a new end column; rows in
        ``joining`` (their tokens to cache) are prefilled into their slots afterwards."""
        lengths = {key: len(stream) - 1 for key, stream in streams.items()}
        end = max(lengths.values(), default=0)
        capacity = end + HEADROOM
        cache = StaticCache(config=self.config, max_cache_len=capacity)
        heads = self.config.num_key_value_heads
        head_dim = (
            getattr(self.config, "head_dim", None)
            or self.config.hidden_size // self.config.num_attention_heads
        )
        shape = torch.empty(len(streams), heads, 0, head_dim, dtype=self.dtype, device=self.device)
        # (new slot, old slot, cached tokens) of the rows carried over from the old layout.
        kept = [
            (slot, self.rows[key].slot, lengths[key])
            for slot, key in enumerate(streams)
            if key not in joining and lengths[key]
        ]
        old_layers = self.cache.layers if self.cache is not None else [None] * len(cache.layers)
        for layer, old in zip(cache.layers, old_layers, strict=True):
            layer.lazy_initialization(shape, shape)  # allocates this layer only
            for slot, old_slot, n in kept:
                columns = slice(self.end - n, self.end)
                layer.keys[slot, :, end - n : end] = old.keys[old_slot, :, columns]
                layer.values[slot, :, end - n : end] = old.values[old_slot, :, columns]
            if old is not None:
                old.keys = old.values = None  # freed now, not with the whole old layout
            layer.cumulative_length.fill_(end)
        self.cache, self.end, self.capacity = cache, end, capacity
        self.rows = {key: _Row(slot, lengths[key]) for slot, key in enumerate(streams)}
        self.batch = len(self.rows)
        for key, tokens in joining.items():
            if tokens:
                self._prefill(self.rows[key].slot, tokens)

    def _prefill(self, slot: int, tokens: Sequence[int]) -> None:
        """Cache ``tokens`` (one row, positions from 0) in ``slot``'s last ``len(tokens)``
        columns of the layout."""
        cache = DynamicCache(config=self.config)
        ids = torch.tensor([list(tokens)], device=self.device)
        self.decoder(input_ids=ids, past_key_values=cache, use_cache=True)
        columns = slice(self.end - len(tokens), self.end)
        for layer, row in zip(self.cache.layers, cache.layers, strict=True):
            layer.keys[slot, :, columns] = row.keys[0]
            layer.values[slot, :, columns] = row.values[0]
