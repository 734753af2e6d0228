"""docs/bench/aux-speed.md, generated from the results files of bench/copilot.py,
bench/copilot_step.py and bench/unlearning.py (every run, every pair, the medians, the load).

    .venv/bin/python -m bench.aux_tables
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "docs" / "bench"
PAGE = BENCH / "aux-speed.md"


def _runs(name: str) -> list[dict]:
    path = BENCH / name
    return json.loads(path.read_text())["runs"] if path.exists() else []


def _load(records: list[dict], run: dict) -> str:
    before = [r["load_before"][0] for r in records] or [run["load_average_before"][0]]
    after = [r["load_after"][0] for r in records] or [run["load_average_after"][0]]
    return f"{min(before):.1f}-{max(after):.1f}"


def _head(run: dict) -> str:
    return (
        f"Run of {run['started']}, commit {run['commit']}, {run['cores']} cores, CPU flags "
        f"{', '.join(run['cpu_flags']) or 'none'}; 1-minute load {run['load_average_before'][0]:.1f} "
        f"before, {run['load_average_after'][0]:.1f} after."
    )


def copilot() -> list[str]:
    out = ["## Copilot: per-token overhead against its FLOP share (bench/copilot.py)", ""]
    for i, run in enumerate(_runs("copilot.json")):
        flops = run["flops_per_token"]
        out += [
            f"### Run {i} ([copilot.json](copilot.json) `/runs/{i}`)",
            "",
            _head(run) + f" FLOPs per token: pilot {flops['pilot'] / 1e6:.0f} M, copilot "
            f"{flops['copilot'] / 1e6:.1f} M.",
            "",
            "| c | plain tok/s per pair | copilot tok/s per pair | overhead per pair | median "
            "overhead | FLOP share | overhead / share | target (<= 1.5x) | copilot ms per "
            "engine step (median) | load |",
            "|---:|---|---|---|---:|---:|---:|---|---:|---|",
        ]
        for row in run["summary"]:
            c = row["concurrency"]
            records = [r for r in run["records"] if r["concurrency"] == c]

            def tok(workload: str, records: list[dict] = records) -> str:
                return ", ".join(
                    f"{r['output_tok_s']:.1f}"
                    for r in sorted(records, key=lambda r: r["pair"])
                    if r["workload"] == workload
                )

            pairs = ", ".join(f"{100 * x:.1f}%" for x in row["overhead_per_pair"])
            plugin = row.get("copilot_ms_per_step")
            out.append(
                f"| {c} | {tok('plain')} | {tok('copilot')} | {pairs} "
                f"| **{100 * row['overhead']:.1f}%** | {100 * row['flop_share']:.1f}% "
                f"| {row['overhead_vs_share']:.2f}x | {'met' if row['met'] else 'missed'} "
                f"| {'-' if plugin is None else f'{plugin:.2f}'} | {_load(records, run)} |"
            )
        out.append("")
    return out


def step_table(name: str, title: str) -> list[str]:
    """Per run of a step benchmark (bench/copilot_step.py, bench/unlearning_step.py): each
    repeat's median ms per step and the median over all steps, per rows and mode."""
    out = [f"## {title}", ""]
    for i, run in enumerate(_runs(name)):
        out += [
            f"### Run {i} ([{name}]({name}) `/runs/{i}`)",
            "",
            _head(run) + f" {run['args']['steps']} decode steps per repeat, "
            f"{run['args']['repeats']} ABBA repeats, one torch thread."
            + (
                " The continuation check's lexical part on (`--continuation`: token texts, "
                "rows following an English passage)."
                if run["args"].get("continuation")
                else ""
            ),
            "",
            "| rows | mode | ms per step, median of each repeat | median |",
            "|---:|---|---|---:|",
        ]
        for row in run["summary"]:
            repeats = [
                statistics.median(r["ms"])
                for r in run["records"]
                if r["batch"] == row["batch"] and r["mode"] == row["mode"]
            ]
            out.append(
                f"| {row['batch']} | {row['mode']} | {', '.join(f'{x:.2f}' for x in repeats)} "
                f"| **{row['median_ms']:.2f}** |"
            )
        out.append("")
    return out


def unlearning() -> list[str]:
    out = ["## Unlearning: throughput against plain (bench/unlearning.py)", ""]
    for i, run in enumerate(_runs("unlearning.json")):
        out += [
            f"### Run {i} ([unlearning.json](unlearning.json) `/runs/{i}`)",
            "",
            _head(run) + f" {run['args']['max_tokens']} tokens per request.",
            "",
            "| set | c | plain tok/s per pair | filtered tok/s per pair | ratio per pair | median "
            "ratio | target (>= 0.95x) | TTFT p50 (s) per pair, plain | TTFT p50 (s) per pair, "
            "filtered | plugin ms per engine step | load |",
            "|---|---:|---|---|---|---:|---|---|---|---:|---|",
        ]
        for row in run["summary"]:
            c = row["concurrency"]
            records = [r for r in run["records"] if r["concurrency"] == c]

            def tok(system: str, key: str = "tokens_per_s", records: list[dict] = records) -> str:
                return ", ".join(
                    f"{r[key]:.1f}" if key == "tokens_per_s" else f"{r[key]:.3f}"
                    for r in sorted(records, key=lambda r: r["pair"])
                    if r["system"] == system
                )

            out.append(
                f"| {row['system']} | {c} | {tok('no plugin')} | {tok(row['system'])} "
                f"| {', '.join(f'{x:.3f}' for x in row['vs_plain_per_pair'])} "
                f"| **{row['vs_plain']:.3f}x** | {_verdict(row)} "
                f"| {tok('no plugin', 'ttft_p50_s')} | {tok(row['system'], 'ttft_p50_s')} "
                f"| {_plugin_ms(row)} | {_load(records, run)} |"
            )
        out.append("")
    return out


def _verdict(row: dict) -> str:
    if not row.get("target", True):
        return "(diagnostic, not the target's system)"
    return "met" if row["met"] else "missed"


def _plugin_ms(row: dict) -> str:
    return f"{row['plugin_ms_per_step']:.2f}" if "plugin_ms_per_step" in row else "not recorded"


def page() -> str:
    return "\n".join(
        [
            "# Auxiliary models, copilot and unlearning at engine speed (issue 18)",
            "",
            "Generated by bench/aux_tables.py from copilot.json, copilot-step.json, unlearning.json "
            "and unlearning-step.json next to it; do not edit.",
            "",
            *copilot(),
            *step_table("copilot-step.json", "Copilot step in isolation (bench/copilot_step.py)"),
            *unlearning(),
            *step_table(
                "unlearning-step.json",
                "Unlearning step in isolation, 10,000 phrases (bench/unlearning_step.py)",
            ),
        ]
    )


if __name__ == "__main__":
    PAGE.write_text(page())
    print(PAGE)
