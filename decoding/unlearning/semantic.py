"""The soft filter: penalise tokens whose text means nearly what a forbidden word means.

With ``T`` the table of every vocabulary token's text embedding (unit norm; zero rows for
tokens without a letter or digit, which are never penalised) and ``w`` a row's forbidden words,
embedded once when the row joins::

    sim(v) = max(0, max_w T[v] . E(w))
    s_v = -inf                 if sim(v) >= delta
    s_v = s_v - lambda*sim(v)  otherwise

``sim`` depends only on the request, so it is computed once per set of retrieved entries and
each step subtracts a constant vector. The alternative, embedding the top-k candidates' texts
each step, was measured slower per step by three orders of magnitude on a CPU
(docs/benchmarks.md); the table's one-off cost (embedding the vocabulary) is cached on disk.
"""

from __future__ import annotations

import torch

#: Default ban threshold on cosine similarity (GUARD's reference range is 0.3-0.7). 0.7: on
#: MiniLM, " Berlin" scores 0.57 and " city" 0.57 against "paris", so 0.5
#: would ban other capitals' names whenever France's capital is forgotten.
DEFAULT_DELTA = 0.7
#: Default penalty weight lambda (GUARD's reimplementation subtracts max_sim itself).
DEFAULT_LAMBDA = 1.0
#: Forbidden words compared with the table at once (bounds the ``[vocab, words]`` product).
_WORDS_PER_CHUNK = 256


def similarity(table: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """``sim(v)`` for every token: ``[vocab]``, clamped at 0 (zeros without words)."""
    sim = torch.zeros(table.shape[0])
    for start in range(0, len(words), _WORDS_PER_CHUNK):
        chunk = words[start : start + _WORDS_PER_CHUNK]
        sim = torch.maximum(sim, (table @ chunk.T).amax(dim=-1))
    return sim


def penalty(sim: torch.Tensor, delta: float, lam: float) -> torch.Tensor:
    """What the filter subtracts from a row's logits each step: ``inf`` (a ban) where
    ``sim >= delta``, ``lambda * sim`` elsewhere."""
    return torch.where(sim >= delta, torch.inf, lam * sim)
