"""Benchmark results files: what a run records about the machine, and appending a run to a
results JSON (``{"runs": [...]}``) without overwriting the earlier ones."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: CPU flags that decide the engine's dtype and oneDNN's bf16 kernels.
FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict:
    """The commit (``+dirty`` with uncommitted changes outside docs/bench/), CPU flags, cores,
    time and load now."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        # Results files written by earlier runs do not change what is measured.
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    words = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            words = set(line.split(":", 1)[1].split())
            break
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "cpu_flags": [f for f in FLAGS if f in words],
        "cores": len(os.sched_getaffinity(0)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": load(),
    }


def append_run(path: Path, run: dict) -> dict:
    """Append ``run`` to ``path``'s ``runs`` (created if missing); returns the whole file."""
    data = json.loads(path.read_text()) if path.exists() else {"runs": []}
    data["runs"].append(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data
