"""Copilot rectification (Zou et al. 2025, "Transformer Copilot"), adapted to an engine that
exposes logits but no hidden states: the copilot reads the pilot's top-k, not its hidden states.

Each step, for the rows that ask for copilot ``c`` with weight ``lambda`` and space ``sp``::

    (v, q) = top_k(softmax(s))              the pilot's distribution, as the copilot reads it
    f      = copilot_c(stream, (v, q))      one batched step of c's own KV-cached forward
    s~     = RectificationFusion(sp)(s, f, lambda)

``s`` are the row's scores as they reach this plugin (after proxy-tuning, when the request
also asks for it: the pipeline order is fixed). The copilot's forward for a step needs that
step's pilot logits, which exist only once the engine's forward is done, so unlike
proxy-tuning's auxiliary models it cannot start ahead in :meth:`StepPlugin.prepare`: it runs
in :meth:`apply`, and its time adds to the step's.

A row's earlier positions live in the copilot's KV cache. A request the engine preempts and
later resumes re-enters the batch as a new row, and the copilot re-reads its generated tokens
without the pilot distributions it saw the first time (they are not kept): after a preemption
those positions get tokens alone, as prompt positions do.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch

from ..pipeline import Row, StepPlugin, TokenStream
from .binding import Binding
from .fusion import SPACES, RectificationFusion
from .model import PilotFeatures
from .params import CopilotParams

#: ``observe(rows, mean_abs, max_abs)``: per row, the mean and max over the vocabulary of
#: ``|lambda * f|`` applied this step (adapters/ turn them into the per-request report).
Observer = Callable[[Sequence[Row], torch.Tensor, torch.Tensor], None]


class RectificationSource(Protocol):
    """A copilot stepped in lockstep with the engine (decoding/copilot/runner.py)."""

    top_k: int
    binding: Binding

    def step(
        self, streams: Mapping[int, TokenStream], inputs: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Rectifications ``[len(streams), vocab]`` for each uid's stream, in order, given the
        per-row ``inputs`` (``pilot_ids``, ``pilot_probs``: ``[len(streams), k]``)."""

    def release(self, uid: int) -> None: ...


class CopilotRectification(StepPlugin):
    """Fuses each row's copilot rectification into its scores (see the module docstring)."""

    name = "copilot"

    def __init__(
        self, sources: Mapping[str, RectificationSource], observe: Observer | None = None
    ) -> None:
        self.sources = sources
        self.observe = observe
        self._fusions = {space: RectificationFusion(space) for space in SPACES}

    def apply(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        users: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            users[row.params(self.name).name].append(i)
        for copilot, positions in users.items():
            source = self.sources[copilot]
            # Usually every row asks for the same copilot: then no gather and no scatter.
            every_row = len(positions) == len(rows)
            at = None if every_row else torch.tensor(positions, device=logits.device)
            scores = logits if at is None else logits[at]
            log_probs = torch.log_softmax(scores, dim=-1, dtype=torch.float32)
            features = PilotFeatures.from_log_probs(log_probs, source.top_k)
            streams = {rows[i].uid: rows[i].stream for i in positions}
            inputs = {"pilot_ids": features.ids, "pilot_probs": features.probs}
            rectification = source.step(streams, inputs).to(logits.device)
            vocab = min(scores.shape[-1], rectification.shape[-1])
            if vocab < scores.shape[-1]:  # the engine pads its vocabulary: fuse the real part
                log_probs = None
            params: list[CopilotParams] = [rows[i].params(self.name) for i in positions]
            binding = source.binding
            lam = torch.tensor(
                [binding.default_lambda if p.lambda_ is None else p.lambda_ for p in params],
                device=logits.device,
            )
            spaces = [p.space or binding.space for p in params]
            fused = self._fuse(scores[:, :vocab], rectification[:, :vocab], lam, spaces, log_probs)
            if at is None and vocab == scores.shape[-1]:
                logits = fused.to(logits.dtype)
            elif at is None:
                logits[:, :vocab] = fused.to(logits.dtype)
            else:
                logits[at, :vocab] = fused.to(logits.dtype)
            if self.observe is not None:
                # |lambda * f| = |lambda| * |f|: one pass over the vocabulary for |f| (taken in
                # place in a float32 copy, no second [rows, vocab] tensor), then its mean and
                # max (far cheaper on the CPU than vector_norm's).
                size = rectification[:, :vocab].to(torch.float32, copy=True).abs_()
                weight = lam.abs()
                self.observe(
                    [rows[i] for i in positions], weight * size.mean(-1), weight * size.amax(-1)
                )
        return logits

    def _fuse(
        self,
        scores: torch.Tensor,
        rectification: torch.Tensor,
        lam: torch.Tensor,
        spaces: Sequence[str],
        log_probs: torch.Tensor | None,
    ) -> torch.Tensor:
        """Each row fused in its own space (one batched call per space present)."""
        if len(set(spaces)) == 1:
            # ``scores`` are the plugin's to overwrite (StepPlugin.apply's contract).
            return self._fusions[spaces[0]](scores, rectification, lam, log_probs, in_place=True)
        fused = scores.float().clone()
        for space, fusion in self._fusions.items():
            chosen = torch.tensor([s == space for s in spaces], device=scores.device)
            if chosen.any():
                fused[chosen] = fusion(
                    scores[chosen],
                    rectification[chosen],
                    lam[chosen],
                    None if log_probs is None else log_probs[chosen],
                )
        return fused

    def release(self, uid: int) -> None:
        for source in self.sources.values():
            source.release(uid)
