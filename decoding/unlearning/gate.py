"""The gate: does a request concern the forget set, and which entries?

With ``E`` the sentence embedding (unit norm), the request's text split into chunks ``c`` (each
message, each sentence of a longer one, so that a fact hidden in a long context still stands
out; a long message is read by its sentences only, and a long sentence in half-overlapping
windows, since MiniLM reads only the first 256 word pieces of a text) and each entry ``e``
compared through its texts ``x`` (question, answer)::

    score(e) = max_{c, x in e} E(c) . E(x)        score = max_e score(e)

The gate opens when ``score >= threshold``; the retrieved entries are the ``max_targets``
best-scoring ones at or above the threshold. A closed gate means the request decodes unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch

from .forget_set import ForgetSet

#: Default gate threshold (the GUARD reimplementation's p > 0.5).
DEFAULT_THRESHOLD = 0.5
#: How many entries an open gate retrieves at most.
MAX_TARGETS = 3

#: Longest chunk the gate reads whole, in characters (at most ~256 word pieces, MiniLM's input):
#: a longer sentence is also read in windows of this size, half overlapping, so that any
#: passage of up to half this length lies whole in one window.
WINDOW_CHARS = 200

#: Which gate decided: the cosine threshold here, or a trained classifier
#: (decoding/unlearning/classifier.py) where the forget set has one.
GateKind = Literal["cosine", "classifier"]
GATE_KINDS: tuple[GateKind, ...] = get_args(GateKind)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class Embedder(Protocol):
    """A sentence encoder (decoding/unlearning/embeddings.py: MiniLM)."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), dim]`` float32 embeddings of unit norm."""


@dataclass(frozen=True)
class GateDecision:
    score: float
    #: Indices of the retrieved entries; empty when the gate stays closed.
    targets: tuple[int, ...]
    #: The gate that decided (its ``score`` is a cosine or a probability).
    gate: GateKind = "cosine"

    @property
    def opened(self) -> bool:
        return bool(self.targets)


def windows(text: str) -> list[str]:
    """Half-overlapping windows of :data:`WINDOW_CHARS` covering a longer ``text`` (none for a
    short one)."""
    if len(text) <= WINDOW_CHARS:
        return []
    step = WINDOW_CHARS // 2
    return [text[start : start + WINDOW_CHARS] for start in range(0, len(text) - step, step)]


def chunks(texts: Sequence[str]) -> list[str]:
    """Each short text whole, plus its sentences when it has several; a long text's sentences,
    each long one as windows; each distinct chunk once. No chunk is longer than
    :data:`WINDOW_CHARS`: MiniLM would not read past it (and a long text fills a row of the
    packed forward alone: decoding/unlearning/embeddings.py)."""
    out: list[str] = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
        if len(text) <= WINDOW_CHARS:
            out.append(text)
            if len(sentences) > 1:
                out.extend(sentences)
            continue
        for sentence in sentences:
            out.extend(windows(sentence) or [sentence])
    return list(dict.fromkeys(out))


class ForgetGate:
    """A forget set's entries, embedded once, and the decision for a request's texts."""

    kind: GateKind = "cosine"

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
        return self.chunk_scores(chunks(texts))

    def chunk_scores(self, pieces: Sequence[str]) -> torch.Tensor:
        """``score(e)`` for every entry over already split ``pieces`` (:func:`chunks`)."""
        if not pieces:
            return torch.zeros(len(self.forget_set))
        return self.embedded_scores(self.embedder.encode(pieces))

    def embedded_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``score(e)`` for every entry from the pieces' embeddings ``E(c)`` ``[pieces, dim]``
        (zeros for none)."""
        entries = torch.zeros(len(self.forget_set))
        if len(embeddings) == 0:
            return entries
        best = (embeddings @ self.matrix.T).amax(dim=0)  # per entry text
        return entries.scatter_reduce(0, self.owners, best, reduce="amax", include_self=False)

    def decide(
        self, texts: Sequence[str], threshold: float, max_targets: int = MAX_TARGETS
    ) -> GateDecision:
        return self.decide_chunks(chunks(texts), threshold, max_targets)

    def decide_chunks(
        self, pieces: Sequence[str], threshold: float, max_targets: int = MAX_TARGETS
    ) -> GateDecision:
        """The decision over already split ``pieces`` (:func:`chunks`)."""
        if not pieces:  # nothing to judge: closed (the server refuses text it cannot read)
            return GateDecision(0.0, ())
        return self.decide_embedded(self.embedder.encode(pieces), threshold, max_targets)

    def decide_embedded(
        self, embeddings: torch.Tensor, threshold: float, max_targets: int = MAX_TARGETS
    ) -> GateDecision:
        """The decision from the pieces' embeddings ``[pieces, dim]`` (the gate's batcher,
        decoding/unlearning/batcher.py, embeds several requests' pieces at once)."""
        if len(embeddings) == 0:
            return GateDecision(0.0, ())
        scores = self.embedded_scores(embeddings)
        top = torch.topk(scores, min(max_targets, len(scores)))
        targets = tuple(
            int(i) for s, i in zip(top.values, top.indices, strict=True) if s >= threshold
        )
        return GateDecision(float(scores.max()), tuple(sorted(targets)))
