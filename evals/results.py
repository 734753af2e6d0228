"""Results files of benchmarks and evals: every run kept, each with the machine it ran on.

A results file is JSON ``{"runs": [run, ...]}``, oldest first. A rerun appends; nothing is
overwritten, so a table generated from the file can show every run and a figure quoted in the
docs (``docs/...json#/runs/-1/...``, checked by tests/unit/test_doc_figures.py) points at the
run it came from. Each run carries :func:`machine`: the commit, the CPU's bf16 flags (native
bf16 or not changes every ratio between float32 and bf16 work) and the load average around the
run (the machines these run on are often shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from decoding.aux.dtypes import cpu_bf16_flags

REPO = Path(__file__).resolve().parent.parent


def arguments(args: argparse.Namespace) -> dict[str, Any]:
    """A run's command-line arguments as JSON values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def commit() -> str:
    """HEAD's short hash, with ``+dirty`` when the work tree has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    # Docs and earlier results files do not change what is measured.
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs", ":!*.md")
    return head + ("+dirty" if changed else "")


#: CPU flags that decide the engine's dtype and oneDNN's kernels, recorded with every run.
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "flags:")
    words = set(line.split(":", 1)[1].split())
    return [flag for flag in CPU_FLAGS if flag in words]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The keys :func:`machine` and :func:`append_run` add to a run.
MACHINE_KEYS = frozenset(
    {"commit", "commit_note", "started", "cpu", "cores", "bf16_flags", "native_bf16", "cpu_flags"}
    | {"load_average_before", "load_average_after"}
)


def machine() -> dict[str, Any]:
    """Where and when a run happens; call it just before the run starts."""
    flags = cpu_bf16_flags()
    return {
        "commit": commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "bf16_flags": flags,
        "native_bf16": flags is None or bool(flags),
        "cpu_flags": cpu_flags(),
        "load_average_before": load_average(),
    }


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The runs in ``path`` (none when it does not exist)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path} is not a results file ({{'runs': [...]}}); move it aside")
    return data["runs"]


def append_run(path: Path, run: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``run`` (with ``meta`` from :func:`machine` and the load after it) to ``path``.

    Returns every run in the file, the new one last. A run whose results equal the latest
    run's (a page rendered again from the same measurements) is not added twice.
    """
    runs = read_runs(path)
    if runs and {k: v for k, v in runs[-1].items() if k not in MACHINE_KEYS} == json.loads(
        json.dumps(run)
    ):
        return runs
    runs = [*runs, {**meta, "load_average_after": load_average(), **run}]
    write_runs(path, runs)
    return runs


def write_runs(path: Path, runs: list[dict[str, Any]]) -> None:
    """Write ``runs`` as ``path``'s whole content (for a benchmark that saves its run in
    progress after every measurement: the earlier runs it read first, then its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")


#: Where a generated page's hand-written part starts: a rerun regenerates what comes before
#: this line and keeps what follows it (a reading of the results, whose figures cite the
#: results file like any other page's).
BY_HAND = "<!-- by hand: a rerun regenerates what is above this line and keeps what follows -->"


def write_page(path: Path, generated: str) -> None:
    """Write a generated page, keeping the hand-written part of the page already there."""
    kept = ""
    if path.exists() and BY_HAND in (old := path.read_text()):
        kept = old[old.index(BY_HAND) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated.rstrip("\n") + "\n" + ("\n" + kept if kept else ""))


def add_table_option(parser: argparse.ArgumentParser) -> None:
    """``--table JSON``: print the latest run's table of a results file instead of measuring."""
    parser.add_argument(
        "--table", type=Path, metavar="JSON", help="print the latest run's table of a results file"
    )


def printed_table(args: argparse.Namespace, table: Callable[[dict[str, Any]], str]) -> bool:
    """Print ``table(latest run)`` when ``--table`` was given; say whether it was."""
    if args.table is None:
        return False
    print(table(read_runs(args.table)[-1]))
    return True
