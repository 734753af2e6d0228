"""The trained gate: a small classifier over sentence embeddings that decides whether a request
asks about a forget-set entry (GUARD's prompt classifier, in place of a cosine threshold).

For a request chunk ``c`` (:func:`.gate.chunks`) and an entry text ``x`` (question, answer),
with ``u = E(c)`` and ``v = E(x)`` the unit-norm sentence embeddings, the pair's features are::

    phi(c, x) = [u * v, |u - v|, u . v]          (2*dim + 1 values)
    p(c, x)   = sigmoid(W2 relu(W1 phi + b1) + b2)
    p(e)      = max_{c, x in e, x among the K nearest of c} p(c, x)

The gate opens when ``max_e p(e) >= t`` and retrieves the (at most 3) best entries at or above
``t``; ``t`` is chosen on a held-out validation split when the classifier is fitted
(decoding/unlearning/fit_gate.py). Only the ``K`` (:data:`CANDIDATES`) entries nearest to each
chunk by cosine are classified, so a request costs ``pieces * K`` small MLP evaluations on top of
the embeddings the cosine gate computes anyway, whatever the set's size. Pairs, not the
request's embedding alone, so that "the capital of Germany" can be told apart from "the capital
of France" by what differs between the two texts, and one classifier serves every entry.

The fitted gate is saved beside its forget set (:func:`gate_path`), in a versioned file bound to
the embedder (its name and the embeddings of :data:`PROBE_TEXTS`, which another encoder or other
weights do not reproduce) and to the forget set's entries (their digest): a mismatch is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .forget_set import ForgetSet, ForgetSetError
from .gate import MAX_TARGETS, Embedder, GateDecision

FORMAT = "corrigo-unlearning-gate"
VERSION = 1
#: Suffix of the gate file next to the forget-set file.
SUFFIX = ".gate.pt"
#: Entries classified per chunk (the nearest by cosine).
CANDIDATES = 8
#: Hidden units of the MLP.
HIDDEN = 32
#: Texts whose embeddings identify the embedder (its weights, not only its name).
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the boiling point of water at sea level?",
    "Unlearning gates decide which prompts concern a forget set.",
)
#: Least cosine between the stored and the recomputed probe embeddings (float noise across
#: CPUs stays far above it; another model lands far below).
PROBE_AGREEMENT = 0.999


def gate_path(forget_path: str | Path) -> Path:
    """Where the trained gate of the forget set at ``forget_path`` lives."""
    path = Path(forget_path)
    return path.with_name(path.name + SUFFIX)


def embedder_name(embedder: Embedder) -> str:
    return str(getattr(embedder, "name", type(embedder).__qualname__))


def features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``phi`` of paired rows ``u[i], v[i]``: ``[n, 2*dim + 1]``."""
    return torch.cat([u * v, (u - v).abs(), (u * v).sum(-1, keepdim=True)], dim=-1)


class PairClassifier(nn.Module):
    """``p(c, x)`` before the sigmoid, from ``phi(c, x)``."""

    def __init__(self, dim: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.dim = dim
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(2 * dim + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.net(phi)[:, 0]


class EntryTexts:
    """A forget set's entry texts, embedded once: ``matrix [texts, dim]`` and each text's
    entry (``owners``)."""

    def __init__(self, forget_set: ForgetSet, embedder: Embedder) -> None:
        texts, owners = [], []
        for index, entry in enumerate(forget_set.entries):
            for text in entry.gate_texts:
                texts.append(text)
                owners.append(index)
        self.entries = len(forget_set)
        self.matrix = embedder.encode(texts)
        self.owners = torch.tensor(owners)

    def candidates(self, queries: torch.Tensor, k: int = CANDIDATES) -> torch.Tensor:
        """For each query row, the indices of the ``k`` entry texts nearest by cosine
        ``[queries, min(k, texts)]``."""
        sims = queries @ self.matrix.T
        return torch.topk(sims, min(k, sims.shape[1]), dim=-1).indices


def pair_probabilities(
    model: PairClassifier, queries: torch.Tensor, texts: EntryTexts, k: int = CANDIDATES
) -> torch.Tensor:
    """``p(e)`` for every entry ``[entries]``, max over the query rows and their ``k`` nearest
    entry texts (zeros for entries never a candidate)."""
    out = torch.zeros(texts.entries)
    if len(queries) == 0:
        return out
    near = texts.candidates(queries, k)  # [q, k]
    u = queries[:, None, :].expand(-1, near.shape[1], -1).reshape(-1, queries.shape[1])
    v = texts.matrix[near.reshape(-1)]
    with torch.inference_mode():
        p = torch.sigmoid(model(features(u, v)))
    owners = texts.owners[near.reshape(-1)]
    return out.scatter_reduce(0, owners, p, reduce="amax", include_self=False)


class TrainedGate:
    """A fitted classifier over one forget set: the decision for a request's chunks."""

    kind = "classifier"

    def __init__(
        self, forget_set: ForgetSet, embedder: Embedder, model: PairClassifier, threshold: float
    ) -> None:
        self.forget_set = forget_set
        self.embedder = embedder
        self.model = model.eval()
        self.threshold = threshold
        self.texts = EntryTexts(forget_set, embedder)

    def chunk_scores(self, pieces: Sequence[str]) -> torch.Tensor:
        """``p(e)`` for every entry over already split ``pieces``."""
        if not pieces:
            return torch.zeros(len(self.forget_set))
        return pair_probabilities(self.model, self.embedder.encode(list(pieces)), self.texts)

    def decide_chunks(
        self, pieces: Sequence[str], threshold: float | None = None, max_targets: int = MAX_TARGETS
    ) -> GateDecision:
        """The decision at the fitted threshold (``threshold`` is the cosine gate's and is
        ignored: the server refuses a request that moves it for a set with a trained gate)."""
        if not pieces:
            return GateDecision(0.0, (), self.kind)
        return self.decide_embedded(self.embedder.encode(list(pieces)), threshold, max_targets)

    def decide_embedded(
        self,
        embeddings: torch.Tensor,
        threshold: float | None = None,
        max_targets: int = MAX_TARGETS,
    ) -> GateDecision:
        """The decision from the pieces' embeddings ``[pieces, dim]`` (``threshold`` ignored,
        as in :meth:`decide_chunks`)."""
        if len(embeddings) == 0:
            return GateDecision(0.0, (), self.kind)
        scores = pair_probabilities(self.model, embeddings, self.texts)
        top = torch.topk(scores, min(max_targets, len(scores)))
        targets = tuple(
            int(i) for s, i in zip(top.values, top.indices, strict=True) if s >= self.threshold
        )
        return GateDecision(float(scores.max()), tuple(sorted(targets)), self.kind)


def probe_embeddings(embedder: Embedder) -> torch.Tensor:
    return embedder.encode(list(PROBE_TEXTS))


def save_gate(
    path: Path,
    model: PairClassifier,
    threshold: float,
    embedder: Embedder,
    digest: str,
    training: dict[str, Any],
) -> None:
    """Write the gate file (owner-only: it is fitted on the forget set's questions)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "embedder": embedder_name(embedder),
        "probes": probe_embeddings(embedder),
        "forget_set_digest": digest,
        "threshold": float(threshold),
        "dim": model.dim,
        "hidden": model.hidden,
        "state_dict": model.state_dict(),
        "training": training,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        tmp.chmod(0o600)
        torch.save(payload, handle)
    tmp.rename(path)


def load_gate(path: Path, forget_set: ForgetSet, embedder: Embedder, digest: str) -> TrainedGate:
    """The trained gate at ``path`` for ``forget_set`` (whose :func:`.loading.digest` is
    ``digest``); raises :class:`ForgetSetError` for another format or version, another
    embedder, or another set's entries."""
    where = f"forget_sets.{forget_set.name}: {path}"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: pickle, zip and torch errors
        raise ForgetSetError(f"{where}: not a readable gate file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ForgetSetError(f"{where}: not a corrigo unlearning gate file")
    if payload.get("version") != VERSION:
        raise ForgetSetError(
            f"{where}: gate file version {payload.get('version')}, this corrigo reads "
            f"{VERSION}; refit it with 'corrigo unlearning fit-gate'"
        )
    name = embedder_name(embedder)
    if payload["embedder"] != name:
        raise ForgetSetError(
            f"{where}: fitted on embeddings of {payload['embedder']}, the server embeds with "
            f"{name}; refit it with 'corrigo unlearning fit-gate'"
        )
    probes = probe_embeddings(embedder)
    stored = payload["probes"]
    if stored.shape != probes.shape or not bool(
        (torch.nn.functional.cosine_similarity(stored, probes, dim=-1) >= PROBE_AGREEMENT).all()
    ):
        raise ForgetSetError(
            f"{where}: fitted on another embedder's vectors than the server's {name} (other "
            "weights); refit it with 'corrigo unlearning fit-gate'"
        )
    if payload["forget_set_digest"] != digest:
        raise ForgetSetError(
            f"{where}: fitted on other entries than the forget set holds now (edited since); "
            "refit it with 'corrigo unlearning fit-gate'"
        )
    threshold = float(payload["threshold"])
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ForgetSetError(f"{where}: threshold {threshold} outside [0, 1]")
    model = PairClassifier(int(payload["dim"]), int(payload["hidden"]))
    model.load_state_dict(payload["state_dict"])
    return TrainedGate(forget_set, embedder, model, threshold)
