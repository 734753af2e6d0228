"""The gate: does a request concern the forget set, and which entries?

With ``E`` the sentence embedding (unit norm), the request's text split into chunks ``c`` (each
message, and each sentence of a longer one, so that a fact hidden in a long context still
stands out) and each entry ``e`` compared through its texts ``x`` (question, answer)::

    score(e) = max_{c, x in e} E(c) . E(x)        score = max_e score(e)

The gate opens when ``score >= threshold``; the retrieved entries are the ``max_targets``
best-scoring ones at or above the threshold. A closed gate means the request decodes unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .forget_set import ForgetSet

#: Default gate threshold (DESIGN.md 4.3; the GUARD reimplementation's p > 0.5).
DEFAULT_THRESHOLD = 0.5
#: How many entries an open gate retrieves at most.
MAX_TARGETS = 3

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class Embedder(Protocol):
    """A sentence encoder (adapters/embeddings.py: MiniLM)."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), dim]`` float32 embeddings of unit norm."""


@dataclass(frozen=True)
class GateDecision:
    score: float
    #: Indices of the retrieved entries; empty when the gate stays closed.
    targets: tuple[int, ...]

    @property
    def opened(self) -> bool:
        return bool(self.targets)


def chunks(texts: Sequence[str]) -> list[str]:
    """Each text, plus its sentences when it has several."""
    out: list[str] = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        out.append(text)
        sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
        if len(sentences) > 1:
            out.extend(sentences)
    return out


class ForgetGate:
    """A forget set's entries, embedded once, and the decision for a request's texts."""

    def __init__(self, forget_set: ForgetSet, embedder: Embedder) -> None:
        self.forget_set = forget_set
        self.embedder = embedder
        texts: list[str] = []
        owners: list[int] = []
        for index, entry in enumerate(forget_set.entries):
            for text in entry.gate_texts:
                texts.append(text)
                owners.append(index)
        self.matrix = embedder.encode(texts)  # [texts, dim]
        self.owners = torch.tensor(owners)

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """``score(e)`` for every entry ``e`` (zeros when there is no text)."""
        pieces = chunks(texts)
        entries = torch.zeros(len(self.forget_set))
        if not pieces:
            return entries
        best = (self.embedder.encode(pieces) @ self.matrix.T).amax(dim=0)  # per entry text
        return entries.scatter_reduce(0, self.owners, best, reduce="amax", include_self=False)

    def decide(
        self, texts: Sequence[str], threshold: float, max_targets: int = MAX_TARGETS
    ) -> GateDecision:
        if not chunks(texts):  # nothing to judge (e.g. a token-id prompt): closed
            return GateDecision(0.0, ())
        scores = self.scores(texts)
        top = torch.topk(scores, min(max_targets, len(scores)))
        targets = tuple(
            int(i) for s, i in zip(top.values, top.indices, strict=True) if s >= threshold
        )
        return GateDecision(float(scores.max()), tuple(sorted(targets)))
