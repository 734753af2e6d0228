"""What happens to one token: the per-step correction pipeline over a batch of rows.

Each engine step the pipeline gets the raw logits ``[rows, vocab]`` of the whole batch and
applies, in the fixed order of the registry (decoding/registry.py), each per-step plugin to
the rows whose request asked for it::

    proxy-tuning shift -> copilot rectification -> unlearning penalties -> unlearning blocks

then hands the logits back to the engine, which applies its own penalties, temperature, top-p
and sampling.

The engine's masks are final. vLLM sets a token it forbids to ``-inf`` before the logits reach
corrigo (structured-output grammar, ``allowed_token_ids``, ``bad_words``, the ``min_tokens`` stop
mask, in vLLM's sampler and model runner), so the pipeline records which tokens arrive at
``-inf`` and, after the plugins ran, sets them (and any ``NaN`` a plugin produced) to ``-inf``
again: with ``M`` the engine's mask and ``s~`` the plugins' result,

    out_v = -inf            if v in M or s~_v is NaN
    out_v = s~_v            otherwise

No correction, built-in or extra, can revive a token the engine masked. A row that had an
allowed token before the plugins and has none after (e.g. unlearning's bans cover every token a
grammar allows) is *exhausted*: the pipeline forces the row's stop token (``out_stop = 0``, every
other token ``-inf``), so the request ends there, and records it (:data:`FORCED_STOPS`). A plugin sees only its rows, gathered into one tensor, and returns their new
logits; rows without a correction are never touched, and a batch without any costs nothing.

Rows are engine batch slots that requests move between; the pipeline follows the moves and
gives every request a stable ``uid`` for plugins that keep per-request state (KV caches).

A step has two calls: :meth:`CorrectionPipeline.prepare` once the batch is final and before the
engine computes its logits, then :meth:`CorrectionPipeline.apply` with them. ``prepare`` lets a
plugin start work that needs only the token streams (an auxiliary model's forward) so that it
overlaps the engine's own forward; ``apply`` gives the same result whether or not it ran.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .params import CorrectionParams
from .spec import CorrectionSpec


@dataclass(frozen=True)
class TokenStream:
    """A request's tokens so far: its prompt, then what it generated (a live, growing list)."""

    prompt: Sequence[int]
    output: Sequence[int]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def last(self) -> int:
        return self.output[-1] if self.output else self.prompt[-1]

    def tokens(self) -> list[int]:
        return [*self.prompt, *self.output]

    def snapshot(self) -> TokenStream:
        """The stream as it is now, unaffected by tokens the engine appends later."""
        return TokenStream(self.prompt, tuple(self.output))


@dataclass(frozen=True)
class Row:
    """One request in the batch, as plugins see it."""

    uid: int
    spec: CorrectionSpec
    stream: TokenStream
    #: The token that ends the request (the engine's EOS for it), forced when corrections leave
    #: it no allowed token; None: it has none (``ignore_eos`` without stop tokens).
    stop: int | None = None

    def params(self, plugin: str) -> CorrectionParams:
        return self.spec.steps[plugin]


class StepPlugin(ABC):
    """A per-step logits transform. Subclasses state their math in their docstring."""

    #: The correction name this plugin serves (a key of the request's ``correction``).
    name: ClassVar[str]

    def prepare(self, rows: Sequence[Row]) -> None:  # noqa: B027 (most plugins need no head start)
        """The batch for the coming step is final: ``rows`` will be passed to :meth:`apply`
        with their logits, unless the batch changes first. Start work that needs only the
        streams; :meth:`apply` must not depend on it having run."""

    @abstractmethod
    def apply(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        """New logits ``[len(rows), vocab]`` for ``rows``, given theirs (float32, may be
        modified in place)."""

    def release(self, uid: int) -> None:  # noqa: B027 (stateless plugins keep nothing)
        """The request ``uid`` left the batch: free whatever the plugin kept for it."""


#: The name under which the pipeline itself records per-row figures (no correction's name).
PIPELINE = "pipeline"
#: The pipeline's figure: 1 on a step where a row was exhausted and its stop token forced.
FORCED_STOPS = "forced_stops"

#: ``exhausted(rows)``: the rows whose stop token the pipeline forced this step.
Exhausted = Callable[[Sequence[Row]], None]


class EngineMask:
    """Which of a batch's logits the engine set to ``-inf``, read before the plugins run.

    ``where``: ``isneginf(logits)`` ``[rows, vocab]``, or, on the CPU, None where no row has any
    ``-inf`` (a batch without grammars, ``allowed_token_ids``, ``bad_words`` or ``min_tokens``),
    told by one per-row minimum instead of a full boolean mask (on a GPU the mask is cheap and
    asking whether there is one would cost a host sync); ``all_masked``: ``[rows]``, the rows
    whose every token was ``-inf`` (a row's maximum; on the CPU, without a mask, none: a row
    whose minimum is finite has a finite entry, so the usual step makes one pass, not two).
    """

    def __init__(self, logits: torch.Tensor) -> None:
        if logits.device.type != "cpu" or bool(torch.isneginf(logits.amin(dim=-1)).any()):
            self.where = torch.isneginf(logits)
            self.all_masked = torch.isneginf(logits.amax(dim=-1))
        else:
            self.where = None
            self.all_masked = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)


def keep_engine_masks(
    corrected: torch.Tensor, mask: EngineMask, stops: Sequence[int | None]
) -> torch.Tensor:
    """The module docstring's rule, in place on ``corrected`` ``[rows, vocab]``: ``mask`` is
    what the engine masked before the plugins; ``stops`` each row's stop token. Returns which
    rows were exhausted and had their stop token forced (``[rows]`` bool).

    Each pass over ``[rows, vocab]`` costs on the engine's step, so: the engine's mask is
    re-applied only where there is one, a row is exhausted iff its maximum is ``-inf``, and
    ``NaN`` becomes ``-inf`` (infinities kept) only in the rows whose maximum is ``NaN``
    (``amax`` propagates it: a row without one needs no pass), on the CPU; on a GPU, where
    asking would cost a host sync, in one in-place pass over every row.
    """
    if mask.where is not None:
        corrected.masked_fill_(mask.where, -torch.inf)
    if corrected.device.type != "cpu":
        corrected.nan_to_num_(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
        top = corrected.amax(dim=-1)
    else:
        top = corrected.amax(dim=-1)
        nan = torch.isnan(top)
        if bool(nan.any()):
            bad = nan.nonzero()[:, 0]
            rows = corrected[bad].nan_to_num_(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
            corrected[bad] = rows
            top[bad] = rows.amax(dim=-1)
    exhausted = torch.isneginf(top) & ~mask.all_masked
    forced = torch.zeros_like(exhausted)
    if bool(exhausted.any()):
        for i in exhausted.nonzero()[:, 0].tolist():
            stop = stops[i]
            if stop is not None and 0 <= stop < corrected.shape[-1]:
                corrected[i, stop] = 0.0
                forced[i] = True
    return forced


class CorrectionPipeline:
    """Tracks the batch's rows and applies the plugins to them in pipeline order."""

    def __init__(
        self,
        plugins: Mapping[str, StepPlugin],
        observe: Callable[[str, float], None] | None = None,
        exhausted: Exhausted | None = None,
    ) -> None:
        """``plugins`` by correction name, in the order they run on a row (the registry's);
        ``observe(plugin, seconds)``, if given, is told each plugin's time per step;
        ``exhausted(rows)``, if given, the rows whose stop token was forced."""
        self.plugins = list(plugins.items())
        self.rows: dict[int, Row] = {}
        self._uids = itertools.count()
        self._observe = observe
        self._exhausted = exhausted

    # -- batch bookkeeping (engine row indices) --------------------------------------------

    def add(
        self,
        index: int,
        spec: CorrectionSpec,
        prompt: Sequence[int],
        output: Sequence[int],
        stop: int | None = None,
    ) -> None:
        """A request entered slot ``index`` (replacing whatever was there); ``stop`` is the
        token that ends it (see :attr:`Row.stop`)."""
        self.remove(index)
        if any(name in spec.steps for name, _ in self.plugins):
            self.rows[index] = Row(next(self._uids), spec, TokenStream(prompt, output), stop)

    def remove(self, index: int) -> None:
        row = self.rows.pop(index, None)
        if row is not None:
            for _, plugin in self.plugins:
                plugin.release(row.uid)

    def move(self, source: int, target: int, *, swap: bool) -> None:
        """The request in ``source`` now sits in ``target``; with ``swap``, and vice versa.
        Without ``swap`` whatever was in ``target`` is overwritten (it was removed earlier)."""
        moving = self.rows.pop(source, None)
        other = self.rows.pop(target, None)
        if swap and other is not None:
            self.rows[source] = other
        elif other is not None:
            for _, plugin in self.plugins:
                plugin.release(other.uid)
        if moving is not None:
            self.rows[target] = moving

    # -- the step ---------------------------------------------------------------------------

    def _selected(self, name: str) -> list[tuple[int, Row]]:
        """The rows using plugin ``name``, in batch order."""
        return sorted((index, row) for index, row in self.rows.items() if name in row.spec.steps)

    def prepare(self) -> None:
        """The batch is final for the coming step (call before the engine's forward)."""
        if not self.rows:
            return
        for name, plugin in self.plugins:
            selected = self._selected(name)
            if selected:
                plugin.prepare([row for _, row in selected])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        tracked = sorted(self.rows.items())  # every tracked row runs at least one plugin
        whole = len(tracked) == logits.shape[0]
        at = None if whole else torch.tensor([i for i, _ in tracked], device=logits.device)
        mask = EngineMask(logits if at is None else logits[at])
        logits = self._plugins(logits)
        corrected = logits if at is None else logits[at]
        forced = keep_engine_masks(corrected, mask, [row.stop for _, row in tracked])
        if at is not None:
            logits[at] = corrected
        if self._exhausted is not None and bool(forced.any()):
            self._exhausted(
                [row for (_, row), f in zip(tracked, forced.tolist(), strict=True) if f]
            )
        return logits

    def _plugins(self, logits: torch.Tensor) -> torch.Tensor:
        for name, plugin in self.plugins:
            selected = self._selected(name)
            if not selected:
                continue
            started = time.perf_counter()
            rows = [row for _, row in selected]
            if len(selected) == logits.shape[0]:  # every row: no gather, no scatter
                logits = plugin.apply(logits, rows)
            else:
                index = torch.tensor([i for i, _ in selected], device=logits.device)
                logits[index] = plugin.apply(logits[index], rows)
            if self._observe is not None:
                self._observe(name, time.perf_counter() - started)
        return logits
