"""What issue 18's two missed targets leave for the code that could still change, on the
machine the results come from: each target's budget, the part of it no implementation of the
correction avoids (measured), what that leaves, and what that code costs now. It reads
committed results files only, at the runs named:

    .venv/bin/python -m bench.floors --phases-runs 4 5 --copilot-run 5 --copilot-step-run 6 \\
        --unlearning-run 7 --gate-run 1

Each figure taken from a step phases run (bench/step_phases.py) is shown for every run named,
one row each: the step's costs move between runs by about as much as the differences here.

Copilot, per engine step at concurrency ``c`` (bench/copilot.py's target: per-token overhead
at most ``TARGET`` x the FLOP share ``s``; ``c`` rows per step, all with the copilot)::

    budget    = TARGET x s x T_plain           T: a steady step (bench/step_phases.py)
    head      = the output head alone, cold    (bench/copilot_step.py --head --cold)
    outside   = T_copilot - T_plain - plugin   the step's extra beyond the plugin's own time
    left      = budget - head - outside        for the plugin's other work
    now       = plugin - head

Unlearning, per wave of ``c`` requests arriving together (bench/unlearning.py: every request
has ``m`` tokens, so the waves finish together; target: throughput at least ``TARGET`` x
plain's, so a wave may take at most ``W / TARGET``)::

    budget    = W x (1 / TARGET - 1)           W: plain's wave (wall time x c / requests)
    gate      = the gate's linear layers for the wave's distinct word pieces at the best
                float32 rate of one thread     (bench/unlearning_gate.py --forward)
    left      = (budget - gate) / (m - 1)      per decode step, for the step's extra and the
                                               rest of the gate
    now       = T_unlearning - T_plain         per decode step (bench/step_phases.py)

Both are lower bounds on what the target needs: the head and the gate's linear layers are
counted at their measured best, nothing else of their step or forward at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench import copilot, unlearning
from bench.copilot_step import COLD, HEAD

BENCH = Path(__file__).resolve().parent.parent / "docs" / "bench"
#: bench/unlearning.py's labels of plain requests and of the 10,000-phrase forget set.
PLAIN, FORGET_SET = "no plugin", "p10000"


def _run(name: str, index: int) -> dict:
    return json.loads((BENCH / name).read_text())["runs"][index]


def _phase(phases: dict, system: str, c: int) -> dict:
    return next(r for r in phases["summary"] if r["system"] == system and r["concurrency"] == c)


def copilot_rows(phases: dict, serving: dict, step: dict) -> list[dict]:
    """The copilot's budget per step at each concurrency of ``serving`` (module docstring)."""
    rows = []
    for entry in serving["summary"]:
        c = entry["concurrency"]
        plain = _phase(phases, "plain", c)["period_ms"]
        corrected = _phase(phases, "copilot", c)
        head = next(
            r["median_ms"] for r in step["summary"] if r["batch"] == c and r["mode"] == HEAD + COLD
        )
        budget = copilot.TARGET * entry["flop_share"] * plain
        outside = corrected["period_ms"] - plain - corrected["plugins_ms"]
        rows.append(
            {
                "concurrency": c,
                "budget_ms": budget,
                "head_ms": head,
                "outside_ms": outside,
                "left_ms": budget - head - outside,
                "now_ms": corrected["plugins_ms"] - head,
            }
        )
    return rows


def unlearning_rows(phases: dict, serving: dict, gate: dict) -> list[dict]:
    """Unlearning's budget per wave and per decode step at each concurrency with a gate
    floor in ``gate`` (module docstring)."""
    steps = serving["args"]["max_tokens"] - 1
    rows = []
    for entry in gate["summary"]:
        if "wave_pieces" not in entry:
            continue
        c = entry["concurrency"]
        wave_s = statistics.median(
            r["wall_s"] * c / r["requests"]
            for r in serving["records"]
            if r["system"] == PLAIN and r["concurrency"] == c
        )
        budget = 1e3 * wave_s * (1 / unlearning.TARGET - 1)
        floor = entry["linear_ms_at_matmul_rate"]
        now = _phase(phases, "unlearning", c)["period_ms"] - _phase(phases, "plain", c)["period_ms"]
        rows.append(
            {
                "concurrency": c,
                "wave_s": wave_s,
                "budget_ms": budget,
                "gate_ms": floor,
                "left_per_step_ms": (budget - floor) / steps,
                "now_per_step_ms": now,
            }
        )
    return rows


#: Each table's columns after the step phases run and ``c``: (header, row key, decimals).
COPILOT_COLUMNS = (
    ("budget", "budget_ms", 2),
    ("head alone, cold", "head_ms", 2),
    ("step's extra outside the plugin", "outside_ms", 2),
    ("left for the plugin's other work", "left_ms", 2),
    ("that work now", "now_ms", 2),
)
UNLEARNING_COLUMNS = (
    ("plain's wave (s)", "wave_s", 2),
    ("budget (ms)", "budget_ms", 1),
    ("gate's linear layers at the best rate (ms)", "gate_ms", 1),
    ("left per decode step (ms)", "left_per_step_ms", 2),
    ("a decode step's extra now (ms)", "now_per_step_ms", 2),
)


def _table(
    title: str, columns: tuple[tuple[str, str, int], ...], rows: list[tuple[int, dict]]
) -> list[str]:
    """A markdown table of ``rows`` (step phases run, row), one line per row."""
    return [
        title,
        "",
        "| step phases run | c | " + " | ".join(header for header, _, _ in columns) + " |",
        "|---:|---:|" + "---:|" * len(columns),
        *(
            f"| {index} | {row['concurrency']} | "
            + " | ".join(f"{row[key]:.{decimals}f}" for _, key, decimals in columns)
            + " |"
            for index, row in rows
        ),
    ]


def _commits(*runs: dict) -> str:
    return ", ".join(dict.fromkeys(run["commit"] for run in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phases-runs", type=int, nargs="+", required=True, help="of step-phases.json"
    )
    parser.add_argument("--copilot-run", type=int, required=True, help="of copilot.json")
    parser.add_argument("--copilot-step-run", type=int, required=True, help="of copilot-step.json")
    parser.add_argument("--unlearning-run", type=int, required=True, help="of unlearning.json")
    parser.add_argument(
        "--gate-run", type=int, required=True, help="of unlearning-gate-forward.json"
    )
    args = parser.parse_args()
    phases = {index: _run("step-phases.json", index) for index in args.phases_runs}
    serving = _run("copilot.json", args.copilot_run)
    step = _run("copilot-step.json", args.copilot_step_run)
    forget = _run("unlearning.json", args.unlearning_run)
    gate = _run("unlearning-gate-forward.json", args.gate_run)
    copilot_table = [(i, r) for i, run in phases.items() for r in copilot_rows(run, serving, step)]
    unlearning_table = [
        (i, r) for i, run in phases.items() for r in unlearning_rows(run, forget, gate)
    ]
    print(
        *_table(
            f"Copilot, per engine step (commits {_commits(*phases.values(), serving, step)}; ms):",
            COPILOT_COLUMNS,
            copilot_table,
        ),
        "",
        *_table(
            "Unlearning with 10,000 phrases, per wave "
            f"(commits {_commits(*phases.values(), forget, gate)}):",
            UNLEARNING_COLUMNS,
            unlearning_table,
        ),
        sep="\n",
    )


if __name__ == "__main__":
    main()
