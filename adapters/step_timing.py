"""Per-step plugin timings, recorded in the engine process and read by the server's /metrics.

vLLM runs logits processors in its engine-core (or worker) processes, while Prometheus is
scraped from the server process. Each recording process owns one small file under a directory
the server chooses (``$_CORRIGO_STEP_METRICS``), holding a float64 array per plugin of
``[bucket counts..., +Inf count, sum]``, mapped into memory and updated in place (one writer per
file, so no lock); the server's collector sums the files at scrape time.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

#: Environment variable naming the directory (set by the server before the engine starts).
ENV = "_CORRIGO_STEP_METRICS"
#: Upper bounds (seconds) of the per-step plugin time histogram: 0.1 ms .. 2.5 s.
BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class StepTimings:
    """The writer: one per recording process."""

    def __init__(self, plugins: Sequence[str], directory: str | os.PathLike | None = None) -> None:
        self.plugins = list(plugins)
        self.array: np.ndarray | None = None
        directory = directory or os.environ.get(ENV)
        if not directory or not self.plugins:
            return  # nobody reads them: record nothing
        path = Path(directory) / f"{os.getpid()}.bin"
        shape = (len(self.plugins), len(BUCKETS) + 2)
        size = int(np.prod(shape)) * 8
        with open(path, "w+b") as f:
            f.truncate(size)
            self._map = mmap.mmap(f.fileno(), size)
        self.array = np.ndarray(shape, dtype=np.float64, buffer=self._map)
        (Path(directory) / f"{os.getpid()}.plugins").write_text("\n".join(self.plugins))

    def observe(self, plugin: str, seconds: float) -> None:
        if self.array is None:
            return
        row = self.array[self.plugins.index(plugin)]
        row[int(np.searchsorted(BUCKETS, seconds))] += 1  # index len(BUCKETS) is +Inf
        row[-1] += seconds


def read_totals(directory: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Per plugin: summed ``[bucket counts..., +Inf count, sum]`` over every recording process."""
    totals: dict[str, np.ndarray] = {}
    for names_file in Path(directory).glob("*.plugins"):
        data = names_file.with_suffix(".bin")
        try:
            plugins = names_file.read_text().split("\n")
            array = np.fromfile(data, dtype=np.float64).reshape(len(plugins), len(BUCKETS) + 2)
        except (OSError, ValueError):
            continue  # a writer that is just starting
        for plugin, row in zip(plugins, array, strict=True):
            totals[plugin] = totals.get(plugin, 0) + row
    yield from totals.items()
