"""Per-request figures recorded in the engine process and read by the server for the
response's ``correction`` report (the copilot's ``|rectification|``, the unlearning filters'
counts).

The server owns one file of ``SLOTS`` rows of float64, one column per :data:`FIELDS`, mapped
into memory by both processes. For each request that wants a report it takes a free slot,
zeroes it, stamps a fresh generation number and sends ``[slot, generation]`` to the engine in
``vllm_xargs`` (:data:`XARGS_KEY`). The engine adds to the slot each step, only while the slot
still carries that generation (so a late write for an aborted request cannot land in a reused
slot). A step's figures are written before the step's token is sampled, so they are in place by
the time the server sees the last token. Every choice of an ``n > 1`` request shares the slot:
the report covers them all.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: Environment variable naming the slot file (set by the server before the engine starts).
ENV = "_CORRIGO_REQUEST_REPORTS"
#: Key of ``vllm_xargs`` carrying ``[slot, generation]``.
XARGS_KEY = "corrigo_report"
SLOTS = 4096
#: The table's columns: the slot's generation, then each plugin's figures (sums over steps,
#: but ``*_max`` columns, which keep the maximum).
FIELDS = (
    "generation",
    "copilot_steps",
    "copilot_abs_sum",
    "copilot_abs_max",
    "unlearning_steps",
    "tokens_blocked",
    "tokens_penalized",
)
_COLUMN = {name: i for i, name in enumerate(FIELDS)}


def _map(path: Path) -> np.ndarray:
    with open(path, "r+b") as f:
        view = mmap.mmap(f.fileno(), SLOTS * len(FIELDS) * 8)
    return np.ndarray((SLOTS, len(FIELDS)), dtype=np.float64, buffer=view)


class ReportSlots:
    """The server's side: hands out slots and reads them back."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "w+b") as f:
            f.truncate(SLOTS * len(FIELDS) * 8)
        self.table = _map(self.path)
        self._free = list(range(SLOTS - 1, -1, -1))
        self._generations = itertools.count(1)

    def take(self) -> list[int] | None:
        """``[slot, generation]`` for a new request, or None when every slot is in use (the
        request is then served without the figures)."""
        if not self._free:
            return None
        slot, generation = self._free.pop(), next(self._generations)
        self.table[slot] = 0
        self.table[slot, 0] = generation
        return [slot, generation]

    def read(self, ticket: Sequence[int]) -> dict[str, float]:
        """Every field recorded for the ticket's request (zeros once the slot moved on)."""
        row = self.table[ticket[0]]
        if row[0] != ticket[1]:
            return dict.fromkeys(FIELDS[1:], 0.0)
        return {name: float(row[i]) for name, i in _COLUMN.items() if i}

    def give_back(self, ticket: Sequence[int]) -> None:
        self.table[ticket[0], 0] = 0  # no generation: engine writes are ignored from now on
        self._free.append(ticket[0])


class ReportWriter:
    """The engine's side (one per recording process; nothing happens without the server)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        path = path or os.environ.get(ENV)
        self.table = _map(Path(path)) if path else None

    def record(self, tickets: Sequence[Sequence[int]], figures: Mapping[str, np.ndarray]) -> None:
        """One step's figures, one value per ticket in each array: added to their columns,
        or kept as the maximum in ``*_max`` columns."""
        if self.table is None or not tickets:
            return
        ticket = np.asarray(tickets, dtype=np.int64)
        ok = self.table[ticket[:, 0], 0] == ticket[:, 1]
        slots = ticket[ok, 0]
        for name, values in figures.items():
            column = self.table[:, _COLUMN[name]]
            if name.endswith("_max"):
                np.maximum.at(column, slots, np.asarray(values)[ok])
            else:
                np.add.at(column, slots, np.asarray(values)[ok])
