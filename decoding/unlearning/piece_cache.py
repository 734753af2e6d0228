"""The gate's embeddings of pieces it has already read, kept for the requests that repeat them.

A piece's embedding ``E(p)`` depends on its text alone, up to the float noise of the packed
batch it was encoded in (decoding/unlearning/embeddings.py: the attention mask keeps padding and
the other texts out; MiniLM's rows differ by about 1e-7 between batches), so a piece seen
before need not be encoded again: ``E(p)`` is looked up by the exact text. Requests repeat
pieces all the time (an application's system prompt, a chat's earlier messages resent with
every turn), and MiniLM's forwards are the gate's whole cost: on one CPU core, roughly half a
millisecond per word piece (bench/unlearning_gate.py).

The cache holds at most ``capacity`` pieces (each at most 200 characters,
decoding/unlearning/gate.py ``WINDOW_CHARS``, and one ``[dim]`` float32 row), dropping the
least recently used first; capacity 0 keeps nothing. It is confined to the gate's one thread
(no lock). It is off unless the operator sets ``[limits] gate_cache_pieces``: a piece read
before is gated faster, so a client timing its own requests could tell that someone sent that
text (docs/security.md), which only a deployment whose clients may know each other's texts
(one tenant) can accept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch


class PieceCache:
    """Least recently used ``piece -> E(piece)`` (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        #: Pieces found and pieces encoded so far (for tests and the benchmark's accounting).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, pieces: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached embeddings of those of ``pieces`` that are cached (each now the most
        recently used)."""
        found: dict[str, torch.Tensor] = {}
        for piece in pieces:
            row = self._rows.get(piece)
            if row is not None:
                self._rows.move_to_end(piece)
                found[piece] = row
        self.hits += len(found)
        self.misses += len(pieces) - len(found)
        return found

    def store(self, pieces: Sequence[str], embeddings: torch.Tensor) -> None:
        """Keep ``embeddings[i]`` as ``E(pieces[i])``, then drop the least recently used
        beyond the capacity."""
        if self.capacity == 0:
            return
        for piece, row in zip(pieces, embeddings, strict=True):
            self._rows[piece] = row.clone()  # not a view: the batch's table can be freed
            self._rows.move_to_end(piece)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()
