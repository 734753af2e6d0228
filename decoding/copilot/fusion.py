"""Fusing a copilot's rectification ``f`` into the pilot's next-token scores ``s``.

Per row, with weight ``lambda`` (the request's, else the checkpoint's default)::

    "logits":  s~ = s + lambda * f
    "probs":   p = softmax(s);  q = max(p + lambda * f, 0);  s~ = log q - log sum(q)

``f`` is trained to predict ``onehot(target) - p``, a vector in probability units, so
``"probs"`` is the paper's Eq. 8 (``p~ = p + lambda f``); ``"logits"`` is the paper's worked
example (Fig. 4), which adds in logit space. In ``"probs"`` the sum is clamped at 0 (a
probability cannot be negative; a clamped token gets score ``-inf``, i.e. it cannot be
sampled) and renormalised; a row whose clamped sum is 0 keeps its scores. The result is a log
probability, so the engine's temperature, top-p and sampling apply to ``q`` as usual
(temperature ``T`` samples from ``q^(1/T)`` renormalised).
"""

from __future__ import annotations

import torch

from .params import SPACES, Space


class RectificationFusion:
    """One fusion rule, applied to a batch of rows at once."""

    def __init__(self, space: Space) -> None:
        if space not in SPACES:
            raise ValueError(f"fusion space must be one of {SPACES}, got {space!r}")
        self.space = space

    def __call__(
        self,
        scores: torch.Tensor,
        rectification: torch.Tensor,
        lam: torch.Tensor,
        log_probs: torch.Tensor | None = None,
        *,
        in_place: bool = False,
    ) -> torch.Tensor:
        """``scores``, ``rectification``: ``[rows, vocab]``; ``lam``: ``[rows]``;
        ``log_probs``: ``log_softmax(scores)`` in float32 where the caller has it already
        (``"probs"`` needs it). Returns the fused scores (float32): a new tensor, or with
        ``in_place`` and float32 ``scores`` in ``"logits"`` space, ``scores`` itself, overwritten
        with the same values (no new ``[rows, vocab]`` tensor)."""
        lam = lam.to(torch.float32)[:, None]
        rectification = rectification.to(torch.float32)
        if self.space == "logits":
            if in_place and scores.dtype == torch.float32:
                return scores.addcmul_(lam, rectification)
            return torch.addcmul(scores.float(), lam, rectification)
        if log_probs is None:
            log_probs = torch.log_softmax(scores, dim=-1, dtype=torch.float32)
        # Every pass over [rows, vocab] costs on the engine's step: in place from here on.
        fused = log_probs.exp().addcmul_(lam, rectification).clamp_min_(0)
        fused.masked_fill_(torch.isneginf(scores), 0.0)  # p + lambda f would revive them
        total = fused.sum(-1, keepdim=True)
        fused = fused.log_().sub_(total.log())
        ok = total > 0
        if not bool(ok.all()):
            fused = torch.where(ok, fused, scores.float())
        return fused
