"""Code of another git revision, imported beside this one and timed against it (a benchmark's
baseline)."""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def module_at(rev: str, path: str, name: str, replace: dict[str, str] | None = None) -> ModuleType:
    """The module ``path`` as it is at git revision ``rev``, imported as ``name`` (a dotted
    name inside the package it belongs to, so that its relative imports resolve there), with
    the source substitutions ``replace`` (to point its imports at other baseline modules)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    for old, new in (replace or {}).items():
        source = source.replace(old, new)
    file = Path(tempfile.mkdtemp()) / Path(path).name
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def time_abba(
    modes: Mapping[str, object],
    batches: Sequence[int],
    repeats: int,
    step_times: Callable[[object, int, int], list[float]],
) -> tuple[list[dict], list[dict]]:
    """Time each mode (this revision's modules, a baseline's) at each batch size in ABBA order:
    ``step_times(modules, batch, repeat)`` gives one repeat's ms per step. Returns every
    repeat's times and the median over all steps of each (batch, mode)."""
    records = []
    for batch in batches:
        order = list(modes)
        for repeat in range(repeats):
            for mode in order if repeat % 2 == 0 else order[::-1]:
                times = step_times(modes[mode], batch, repeat)
                records.append({"batch": batch, "mode": mode, "repeat": repeat, "ms": times})
                print(batch, mode, repeat, f"{statistics.median(times):.2f} ms", flush=True)
    summary = [
        {
            "batch": batch,
            "mode": mode,
            "median_ms": statistics.median(
                t for r in records if r["batch"] == batch and r["mode"] == mode for t in r["ms"]
            ),
        }
        for batch in batches
        for mode in modes
    ]
    return records, summary
