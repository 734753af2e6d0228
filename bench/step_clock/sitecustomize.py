"""A clock around corrigo's logits processor, for bench/step_phases.py only: on the path of the
benchmark's server (``PYTHONPATH``), so that Python imports it at start in every process of
the server, vLLM's engine processes included. When ``adapters.logits_processor`` is imported
(in the engine process that runs the model), its processor's ``update_state``, ``apply`` and
figures ``_send`` are wrapped; each ``apply`` appends one step to a buffer, written every
:data:`FLUSH` steps to ``$CORRIGO_STEP_CLOCK/<pid>.json`` (so a step's own cost is a list
append, and the last steps before the process ends may be missing).

A step's record: ``[start, period, rows, corrected, update, plugins, apply, send, forward,
post]`` (seconds; ``rows``: the batch's rows, ``corrected``: those carrying a correction):

- ``start``: ``time.perf_counter()`` at the start of ``apply`` (CLOCK_MONOTONIC on Linux: the
  benchmark compares it with its runs' start and end);
- ``period``: from the previous ``apply``'s start to this one's (one engine step);
- ``update``: ``update_state`` (the pipeline's add/remove/move and ``prepare``);
- ``plugins``: the plugins' own times, as sent to /metrics;
- ``apply``: the whole ``apply`` (the pipeline, its plugins, the figures' send);
- ``send``: the figures' send alone (adapters/engine_channel.py);
- ``forward``: from the end of ``update_state`` to the start of ``apply`` (vLLM prepares the
  inputs and runs the model);
- ``post``: from the end of the previous ``apply`` to the start of this step's
  ``update_state`` (vLLM samples, hands the outputs on and schedules the next step).
"""

import importlib.abc
import importlib.util
import json
import os
import sys
import time

TARGET = "adapters.logits_processor"
FLUSH = 50


def _install(module) -> None:
    cls = module.CorrigoLogitsProcessor
    folder = os.environ["CORRIGO_STEP_CLOCK"]
    steps: list[list[float]] = []
    marks = {"update_start": 0.0, "update_end": 0.0, "apply_start": 0.0, "apply_end": 0.0}
    sends: list[float] = []
    update_state, apply, send = cls.update_state, cls.apply, cls._send

    def timed_update_state(self, batch_update):
        marks["update_start"] = time.perf_counter()
        try:
            return update_state(self, batch_update)
        finally:
            marks["update_end"] = time.perf_counter()

    def timed_send(self):
        plugins = sum(self._timings.values())
        started = time.perf_counter()
        try:
            return send(self)
        finally:
            sends.append(plugins)
            sends.append(time.perf_counter() - started)

    def timed_apply(self, logits):
        started = time.perf_counter()
        sends.clear()
        try:
            return apply(self, logits)
        finally:
            ended = time.perf_counter()
            previous = marks["apply_start"]
            plugins, sent = sends if sends else (0.0, 0.0)
            steps.append(
                [
                    started,
                    started - previous if previous else 0.0,
                    logits.shape[0],
                    len(self.pipeline.rows),
                    marks["update_end"] - marks["update_start"],
                    plugins,
                    ended - started,
                    sent,
                    started - marks["update_end"],
                    marks["update_start"] - marks["apply_end"] if marks["apply_end"] else 0.0,
                ]
            )
            marks["apply_start"], marks["apply_end"] = started, ended
            if len(steps) % FLUSH == 0:
                with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as out:
                    json.dump(steps, out)

    cls.update_state, cls.apply, cls._send = timed_update_state, timed_apply, timed_send


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the processor once its module has run."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _install(module)

        loader.exec_module = exec_module
        return spec


if os.environ.get("CORRIGO_STEP_CLOCK"):
    sys.meta_path.insert(0, _Finder())
