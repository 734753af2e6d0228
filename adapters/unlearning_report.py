"""Per-request unlearning counts, written by the engine process and read by the server.

The filters run in vLLM's engine-core process; the response and the metrics are made in the
server. The server creates one small shared file of ``SLOTS`` rows ``[steps, tokens_blocked,
tokens_penalized]`` (int64), hands each gated request a free row (``report_slot`` in its
parameters), and reads the row when the response is complete: by then the engine has run
every step of the request. The engine maps the file and adds to the rows (one writer process).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

#: Environment variable naming the shared file (set by the server before the engine starts).
ENV = "_CORRIGO_UNLEARNING_REPORTS"
#: Concurrent gated requests the board tracks; beyond that a request goes without counts.
SLOTS = 4096
FIELDS = ("steps", "tokens_blocked", "tokens_penalized")


def _map(path: Path) -> tuple[mmap.mmap, np.ndarray]:
    with open(path, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), SLOTS * len(FIELDS) * 8)
    return mapped, np.ndarray((SLOTS, len(FIELDS)), dtype=np.int64, buffer=mapped)


class ReportBoard:
    """The server's side: creates the file and hands out slots."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "wb") as f:
            f.truncate(SLOTS * len(FIELDS) * 8)
        self._map, self.array = _map(self.path)
        self._free = list(range(SLOTS - 1, -1, -1))

    def acquire(self) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop()
        self.array[slot] = 0
        return slot

    def release(self, slot: int) -> dict[str, int]:
        """The counts of a finished request; the slot becomes free again."""
        counts = dict(zip(FIELDS, (int(v) for v in self.array[slot]), strict=True))
        self._free.append(slot)
        return counts


class ReportWriter:
    """The engine's side (a :class:`decoding.unlearning.plugin.Reporter`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._map, self.array = _map(Path(path))

    @classmethod
    def from_env(cls) -> ReportWriter | None:
        path = os.environ.get(ENV)
        return cls(path) if path and Path(path).exists() else None

    def add(self, slot: int, steps: int, blocked: int, penalized: int) -> None:
        if 0 <= slot < SLOTS:
            row = self.array[slot]
            row[0] += steps
            row[1] += blocked
            row[2] += penalized
