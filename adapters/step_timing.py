"""Per-step plugin timings: measured by the engine's output rank, sent with each step's figures
over the report channel (adapters/engine_channel.py), and kept here, in the server, as one
histogram per plugin for /metrics (server/metrics.py ``corrigo_plugin_step_seconds``).

Only the output rank runs the plugins (adapters/tensor_parallel.py), so each engine step is
counted once whatever the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

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


class StepHistograms:
    """Per plugin: ``[bucket counts..., +Inf count, sum]`` of its step times."""

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}

    def record(self, timings: Mapping[str, float]) -> None:
        """One step's time of each plugin that ran in it."""
        for plugin, seconds in timings.items():
            row = self._rows.setdefault(str(plugin), np.zeros(len(BUCKETS) + 2))
            row[int(np.searchsorted(BUCKETS, seconds))] += 1  # index len(BUCKETS) is +Inf
            row[-1] += seconds

    def totals(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from ((plugin, row.copy()) for plugin, row in self._rows.items())
