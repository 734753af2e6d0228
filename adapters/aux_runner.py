"""Batched stepping of an auxiliary (transformers) model for many rows at once.

Each engine step, every row that uses an auxiliary model needs that model's next-token logits
for the row's token stream. :class:`AuxModelRunner` keeps one key/value cache for all its rows
and advances them all with **one** batched forward per step, whatever their lengths.

Layout: the rows share a transformers ``StaticCache`` of ``[rows, kv_heads, capacity, head_dim]``
per layer, right-aligned on a common write column ``T``: row ``r`` holds its ``n_r`` cached tokens
in columns ``[T - n_r, T)``, padding on the left, masked out. A decode step writes every row's
newest token at column ``T`` (so the whole batch shares one ``cache_position``, which is what a
static cache supports), with per-row ``position_ids`` ``n_r`` for RoPE. A row that joins is first
prefilled on its own (all its tokens but the last), then the layout is rebuilt around it; the
rebuild also happens when a row leaves or capacity runs out. Steady-state decoding copies no KV.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache

from decoding.pipeline import TokenStream

#: Extra capacity allocated at each rebuild, so a rebuild happens about every this many steps
#: at most when nobody joins or leaves.
_HEADROOM = 64


def forward_pool(models: int, device: torch.device) -> Executor | None:
    """Threads on which auxiliary forwards run ahead of, and beside, the engine's forward.

    Only on the CPU: vLLM's CPU worker binds its thread to the cores it computes on and leaves
    the rest to the front end, so a pool thread widens its affinity to every core the process
    may use, and the forwards overlap the engine's instead of queueing behind it on its core.
    (On a GPU the forwards are kernel launches on the engine's device; nothing to gain.)
    """
    if device.type != "cpu" or models == 0:
        return None

    def use_every_core() -> None:
        # Where affinity cannot be set, the thread keeps its creator's cores.
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))  # 0: this thread only

    return ThreadPoolExecutor(
        max_workers=models, thread_name_prefix="corrigo-aux", initializer=use_every_core
    )


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
        """``model``: an already loaded causal model (with ``config`` and
        ``get_output_embeddings()``, e.g. a copilot) instead of loading ``path``."""
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.model = model.to(device=device, dtype=dtype).eval()
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
                joining[key] = self._prefill(stream.tokens()[:-1])
        if joining or self.batch != len(streams) or self.end >= self.capacity:
            self._rebuild(streams, joining)

        keys = list(streams)
        slots = torch.tensor([self.rows[k].slot for k in keys], device=self.device)
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
        if len(keys) == batch and bool((slots == torch.arange(batch, device=self.device)).all()):
            return logits.float()  # rows in slot order (the usual case): no gather
        return logits[slots].float()

    def _prefill(
        self, tokens: Sequence[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Keys and values of ``tokens`` (one row, positions from 0), or None when empty."""
        if not tokens:
            return None
        cache = DynamicCache(config=self.config)
        ids = torch.tensor([list(tokens)], device=self.device)
        self.model(input_ids=ids, past_key_values=cache, use_cache=True)
        return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]

    def _rebuild(self, streams: Mapping[int, TokenStream], joining: dict) -> None:
        """Lay all rows out afresh: slots 0..n-1, right-aligned on a new end column."""
        lengths = {key: len(stream) - 1 for key, stream in streams.items()}
        end = max(lengths.values(), default=0)
        capacity = end + _HEADROOM
        cache = StaticCache(config=self.config, max_cache_len=capacity)
        heads = self.config.num_key_value_heads
        head_dim = (
            getattr(self.config, "head_dim", None)
            or self.config.hidden_size // self.config.num_attention_heads
        )
        cache.early_initialization(len(streams), heads, head_dim, self.dtype, self.device)
        new_rows: dict[int, _Row] = {}
        for slot, key in enumerate(streams):
            n = lengths[key]
            new_rows[key] = _Row(slot, n)
            if not n:
                continue
            if key in joining:  # from its own prefill: batch 1, columns [0, n)
                keys, values = joining[key]
                source = [(k[0], v[0]) for k, v in zip(keys, values, strict=True)]
            else:  # from the old layout: its slot, columns [old end - n, old end)
                old = self.rows[key].slot
                cols = slice(self.end - n, self.end)
                source = [
                    (layer.keys[old, :, cols], layer.values[old, :, cols])
                    for layer in self.cache.layers
                ]
            for layer, (k, v) in zip(cache.layers, source, strict=True):
                layer.keys[slot, :, end - n : end] = k
                layer.values[slot, :, end - n : end] = v
        for layer in cache.layers:
            layer.cumulative_length.fill_(end)
        self.cache, self.rows, self.end, self.capacity = cache, new_rows, end, capacity
        self.batch = len(new_rows)
