"""Per-request figures recorded in the engine process and read by the server for the
response's ``correction`` report (e.g. the copilot's mean and max ``|rectification|``).

The server owns one file of ``SLOTS`` rows of float64 ``[generation, steps, sum, max]``,
mapped into memory by both processes. For each request that wants a report it takes a free
slot, zeroes it, stamps a fresh generation number and sends ``[slot, generation]`` to the
engine in ``vllm_xargs`` (:data:`XARGS_KEY`). The engine adds to the slot each step, only
while the slot still carries that generation (so a late write for an aborted request cannot
land in a reused slot). A step's figures are written before the step's token is sampled, so
they are in place by the time the server sees the last token. Every choice of an ``n > 1``
request shares the slot: the report covers them all.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Environment variable naming the slot file (set by the server before the engine starts).
ENV = "_CORRIGO_REQUEST_REPORTS"
#: Key of ``vllm_xargs`` carrying ``[slot, generation]``.
XARGS_KEY = "corrigo_report"
SLOTS = 4096
_FIELDS = 4  # generation, steps, sum, max


def _map(path: Path) -> np.ndarray:
    with open(path, "r+b") as f:
        view = mmap.mmap(f.fileno(), SLOTS * _FIELDS * 8)
    return np.ndarray((SLOTS, _FIELDS), dtype=np.float64, buffer=view)


class ReportSlots:
    """The server's side: hands out slots and reads them back."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "w+b") as f:
            f.truncate(SLOTS * _FIELDS * 8)
        self.table = _map(self.path)
        self._free = list(range(SLOTS - 1, -1, -1))
        self._generations = itertools.count(1)

    def take(self) -> list[int] | None:
        """``[slot, generation]`` for a new request, or None when every slot is in use (the
        request is then served without the figures)."""
        if not self._free:
            return None
        slot, generation = self._free.pop(), next(self._generations)
        self.table[slot] = (generation, 0, 0, 0)
        return [slot, generation]

    def read(self, ticket: Sequence[int]) -> dict[str, float | int]:
        """``{"steps", "mean_abs", "max_abs"}`` recorded for the ticket's request."""
        generation, steps, total, top = self.table[ticket[0]]
        if generation != ticket[1] or steps == 0:
            return {"steps": 0, "mean_abs": 0.0, "max_abs": 0.0}
        return {"steps": int(steps), "mean_abs": float(total / steps), "max_abs": float(top)}

    def give_back(self, ticket: Sequence[int]) -> None:
        self.table[ticket[0], 0] = 0  # no generation: engine writes are ignored from now on
        self._free.append(ticket[0])


class ReportWriter:
    """The engine's side (one per recording process; nothing happens without the server)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        path = path or os.environ.get(ENV)
        self.table = _map(Path(path)) if path else None

    def record(self, tickets: Sequence[Sequence[int]], mean: np.ndarray, top: np.ndarray) -> None:
        """One step's figure per ticket (mean and max of ``|change|`` for that row)."""
        if self.table is None or not tickets:
            return
        ticket = np.asarray(tickets, dtype=np.int64)
        ok = self.table[ticket[:, 0], 0] == ticket[:, 1]
        slots = ticket[ok, 0]
        np.add.at(self.table[:, 1], slots, 1)
        np.add.at(self.table[:, 2], slots, mean[ok])
        np.maximum.at(self.table[:, 3], slots, top[ok])
