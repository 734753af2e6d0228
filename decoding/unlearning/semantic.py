"""The soft filter: penalise candidates whose text means nearly what a forbidden word means.

For a row with forbidden words ``w`` (embedded once when the row joins) and each of its top-k
candidate tokens ``v`` (by logit, after the earlier plugins)::

    sim(v) = max(0, max_w E(text(v)) . E(w))
    s_v = -inf                 if sim(v) >= delta
    s_v = s_v - lambda*sim(v)  otherwise

Only the top-k candidates are checked (GUARD scores its beam candidates likewise): tokens
further down cannot be sampled under usual settings, and embedding the whole vocabulary costs
minutes on a CPU (measured in docs/benchmarks.md). Token embeddings are cached per process, so
after warm-up a step costs one top-k and a few small matrix products. Tokens whose text has no
letter or digit (punctuation, whitespace, special tokens) are never penalised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .gate import Embedder

#: Default ban threshold on cosine similarity (DESIGN.md 4.3 gives 0.3-0.7 as the reference
#: range). 0.7: on MiniLM, " Berlin" scores 0.57 and " city" 0.57 against "paris", so 0.5
#: would ban other capitals' names whenever France's capital is forgotten.
DEFAULT_DELTA = 0.7
#: Default penalty weight lambda (GUARD's reimplementation subtracts max_sim itself).
DEFAULT_LAMBDA = 1.0
#: Candidates checked per row and step.
DEFAULT_TOP_K = 8


class TokenEmbeddings:
    """Embeddings of single-token texts, computed on first sight and kept."""

    def __init__(self, decode: Callable[[int], str], embedder: Embedder) -> None:
        self.decode = decode
        self.embedder = embedder
        self._rows: dict[int, int] = {}
        self._table = torch.zeros(0, 0)

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[*tokens.shape, dim]`` embeddings (zeros for tokens without a letter or digit)."""
        flat = tokens.reshape(-1).tolist()
        missing = list(dict.fromkeys(t for t in flat if t not in self._rows))
        if missing:
            texts = [self.decode(t) for t in missing]
            fresh = self.embedder.encode([t.strip() or "." for t in texts])
            keep = torch.tensor([any(c.isalnum() for c in t) for t in texts])
            fresh = fresh * keep[:, None]
            base = len(self._rows)
            if base + len(fresh) > self._table.shape[0]:  # grow geometrically: amortised O(1)
                grown = torch.zeros(
                    max(2 * self._table.shape[0], base + len(fresh), 1024), fresh.shape[1]
                )
                if base:
                    grown[:base] = self._table[:base]
                self._table = grown
            self._table[base : base + len(fresh)] = fresh
            for offset, token in enumerate(missing):
                self._rows[token] = base + offset
        index = torch.tensor([self._rows[t] for t in flat], dtype=torch.long)
        return self._table[index].reshape(*tokens.shape, -1)


def soft_penalty(
    logits: torch.Tensor,
    words: Sequence[torch.Tensor],
    delta: Sequence[float],
    lam: Sequence[float],
    embeddings: TokenEmbeddings,
    top_k: int = DEFAULT_TOP_K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the filter to ``logits [rows, vocab]`` in place; ``words[i]`` are row i's
    forbidden-word embeddings ``[W_i, dim]``. Returns the logits and, per row, how many of its
    candidates were banned."""
    candidates = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).indices  # [R, k]
    emb = embeddings.lookup(candidates)  # [R, k, d]
    sims = torch.stack(
        [
            (emb[i] @ w.T).amax(dim=-1) if len(w) else emb.new_zeros(emb.shape[1])
            for i, w in enumerate(words)
        ]
    ).clamp_min(0)  # [R, k]; a loop over rows, each one matrix product
    d = torch.tensor(delta, dtype=sims.dtype)[:, None]
    shift = torch.where(sims >= d, torch.inf, torch.tensor(lam, dtype=sims.dtype)[:, None] * sims)
    logits.scatter_add_(1, candidates, -shift.to(logits.dtype))
    return logits, (sims >= d).sum(dim=-1)
