"""Batched stepping of an auxiliary (transformers) model for many rows at once.

Each engine step, every row that uses an auxiliary model needs that model's next-token logits
for the row's token stream. :class:`AuxModelRunner` advances all its rows with **one** forward
per step, whatever their lengths: the rows' new tokens packed into one sequence (a decoding
row's newest token; a joining row's whole stream, so joining rows are prefilled together and
with the decoding rows), the head computed only at each row's last token, and attention over
each row's own key/value cache (decoding/aux/ragged.py). A row joining or leaving touches no
other row's cache and no row attends over another's length.

A step whose joining rows bring more than :data:`PREFILL_TOKENS` tokens is split into several
forwards of at most that many tokens (or one whole row, if longer), which bounds a step's
activations.

Memory (adapters/aux_memory.py estimates it): each row's cache holds at most its length plus
``HEADROOM`` columns; a row outgrowing it is moved to a larger tensor (that row only, one
tensor held twice for the copy).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, StaticCache

from decoding.pipeline import TokenStream

from .dtypes import AuxDType, cpu_has_native_bf16, dtype_name, resolve_aux_dtype
from .packed import pack_linears, packs
from .ragged import ATTENTION, BATCH_KWARG, HEADROOM, Packed, RowCache, Segment

__all__ = ["HEADROOM", "PREFILL_TOKENS", "AuxModelRunner", "runner_dtype"]

#: Tokens one forward packs at most (a single longer row runs alone).
PREFILL_TOKENS = 2048


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


@dataclass(frozen=True)
class _Work:
    """One row's part of a step: its key, cache and the tokens to run."""

    key: int
    cache: RowCache
    tokens: list[int]


class AuxModelRunner:
    """One auxiliary causal LM, stepped in lockstep with the engine for the rows that use it."""

    def __init__(
        self,
        path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        model: torch.nn.Module | None = None,
        cache_dtype: torch.dtype | None = None,
    ):
        """``model``: an already loaded causal model (with ``config``,
        ``get_output_embeddings()`` and a ``logits_to_keep`` argument, e.g. a copilot) instead
        of loading ``path``; ``cache_dtype``: what its KV caches hold, if not ``dtype`` (the
        attention then runs in it, decoding/aux/ragged.py)."""
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache_dtype = cache_dtype or dtype
        self.config = self.model.config
        self.vocab_size: int = self.model.get_output_embeddings().weight.shape[0]
        if packs(self.device.type, dtype_name(dtype)):
            pack_linears(self.model)
        probe = StaticCache(config=self.config, max_cache_len=1)
        if any(layer.is_sliding for layer in probe.layers):
            raise ValueError(
                f"{path}: sliding-window attention is not supported for auxiliary models"
            )
        self.layers: int = self.config.num_hidden_layers
        head_dim = (
            getattr(self.config, "head_dim", None)
            or self.config.hidden_size // self.config.num_attention_heads
        )
        kv_heads = getattr(self.config, "num_key_value_heads", None) or (
            self.config.num_attention_heads
        )
        self._shape = (self.layers, kv_heads, head_dim)
        # Every attention layer of the model (a copilot's backbone shares its config) calls
        # decoding/aux/ragged.py's function; _forward checks each forward went through it.
        self.config._attn_implementation = ATTENTION
        self.rows: dict[int, RowCache] = {}
        try:
            self.step({0: TokenStream([0, 0], [])})
        except RuntimeError as exc:
            raise ValueError(f"{path}: this model cannot run as an auxiliary model: {exc}") from exc
        self.release(0)

    def release(self, key: int) -> None:
        """Forget a row (its request left the batch) and free its cache."""
        self.rows.pop(key, None)

    @torch.inference_mode()
    def step(
        self,
        streams: Mapping[int, TokenStream],
        inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``[len(streams), vocab]`` for each row's stream, in ``streams``' order.

        ``streams[key]`` is the row's whole token stream so far (prompt then generated tokens);
        between two calls it has usually grown by exactly one token, or not at all (the engine
        prefills a long prompt in chunks and samples, then discards, a token after each: the
        last token runs again); a row that is new, or whose cache matches neither (a preempted
        and resumed request), is prefilled anew.
        Rows not in ``streams`` are released. ``inputs``: extra per-row model inputs for the
        newest token, ``[len(streams), ...]`` in ``streams``' order (a joining row's earlier
        tokens run with zeros in their place).
        """
        for key in [k for k in self.rows if k not in streams]:
            self.release(key)
        work = []
        for key, stream in streams.items():
            cache = self.rows.get(key)
            if cache is not None and cache.cached in (len(stream) - 1, len(stream)):
                # cached == len(stream): the stream has not grown since the row's last step
                # (a chunked prefill's step, whose sampled token the engine discards): its last
                # token runs again, its column overwritten with this step's inputs, instead of
                # the whole stream being prefilled anew at every chunk.
                cache.cached = len(stream) - 1
                work.append(_Work(key, cache, [stream.last]))
                continue
            cache = RowCache(self._shape, self.cache_dtype, self.device)
            self.rows[key] = cache
            work.append(_Work(key, cache, stream.tokens()))
        if not work:
            return torch.empty(0, self.vocab_size, device=self.device)
        for item in work:
            item.cache.reserve(item.cache.cached + len(item.tokens))
        extra = dict(inputs or {})
        outs, done = [], 0
        for chunk in _chunks(work):
            rows = slice(done, done + len(chunk))
            outs.append(self._forward(chunk, {k: v[rows] for k, v in extra.items()}))
            done += len(chunk)
        logits = outs[0] if len(outs) == 1 else torch.cat(outs)
        return logits.float()

    def _forward(self, work: list[_Work], inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One packed forward; logits ``[len(work), vocab]`` at each row's last token."""
        segments, ids, positions, start = [], [], [], 0
        for item in work:
            past = item.cache.cached
            segments.append(Segment(item.cache, past, len(item.tokens), start))
            ids.extend(item.tokens)
            positions.extend(range(past, past + len(item.tokens)))
            start += len(item.tokens)
        batch = Packed(segments, self.layers)
        last = torch.tensor([s.start + s.new - 1 for s in segments], device=self.device)
        # Every row bringing one token (a decode step): row i's token is the sequence's token
        # i, so its inputs are laid out as they are, with no zeros to fill in.
        decoding = batch.tokens == len(segments)
        extra = {}
        for name, values in inputs.items():
            if decoding:
                extra[name] = values.to(self.device).unsqueeze(0)
                continue
            laid = values.new_zeros((1, batch.tokens, *values.shape[1:]))
            laid[0, last] = values.to(self.device)
            extra[name] = laid
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=torch.tensor([positions], device=self.device),
            use_cache=False,
            logits_to_keep=last,
            **{BATCH_KWARG: batch},
            **extra,
        )
        if batch.seen != self.layers:
            raise RuntimeError(
                f"{batch.seen} of its {self.layers} attention layers use transformers' "
                "attention-function interface"
            )
        for item in work:
            item.cache.cached += len(item.tokens)
        return out.logits[0]


def _chunks(work: list[_Work]) -> Iterator[list[_Work]]:
    """``work`` in order, cut into runs of at most :data:`PREFILL_TOKENS` tokens (a longer
    row alone)."""
    chunk: list[_Work] = []
    tokens = 0
    for item in work:
        if chunk and tokens + len(item.tokens) > PREFILL_TOKENS:
            yield chunk
            chunk, tokens = [], 0
        chunk.append(item)
        tokens += len(item.tokens)
    if chunk:
        yield chunk
