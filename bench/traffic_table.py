"""Markdown tables from bench/traffic.py's result files (the tables in docs/benchmarks.md).

.venv/bin/python -m bench.traffic_table docs/bench/traffic-equal.json docs/bench/traffic-small_pair.json
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from evals.results import read_runs


def _median(runs: list[dict], *keys: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        if isinstance(value, (int, float)):
            values.append(value)
    return statistics.median(values) if values else float("nan")


def table(paths: list[Path]) -> str:
    lines = [
        "| set-up | commit | c | plain tok/s | mixed tok/s | corrected share | bound tok/s | mixed / bound "
        "| TTFT p50 / p99 (s) plain, corrected | ITL p50 / p99 (ms) plain, corrected "
        "| load before -> after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for result in (run for path in paths for run in read_runs(path)):
        for row in result["summary"]:
            runs = [
                r
                for r in result["records"]
                if r["setup"] == row["setup"] and r["concurrency"] == row["concurrency"]
            ]
            mixed = [r for r in runs if r["workload"] == "mixed"]
            plain = [r for r in runs if r["workload"] == "plain"]
            ttft = (
                f"{_median(plain, 'plain', 'ttft_p50_s'):.2f} / "
                f"{_median(plain, 'plain', 'ttft_p99_s'):.2f}, "
                f"{_median(mixed, 'corrected', 'ttft_p50_s'):.2f} / "
                f"{_median(mixed, 'corrected', 'ttft_p99_s'):.2f}"
            )
            itl = (
                f"{_median(plain, 'plain', 'itl_p50_ms'):.0f} / "
                f"{_median(plain, 'plain', 'itl_p99_ms'):.0f}, "
                f"{_median(mixed, 'corrected', 'itl_p50_ms'):.0f} / "
                f"{_median(mixed, 'corrected', 'itl_p99_ms'):.0f}"
            )
            load = f"{min(float(r['load_before'][0]) for r in runs):.1f}-" + (
                f"{max(float(r['load_after'][0]) for r in runs):.1f}"
            )
            lines.append(
                f"| {row['setup']} | {result['commit']} | {row['concurrency']} "
                f"| {row['plain_tok_s']:.1f} "
                f"| {row['mixed_tok_s']:.1f} | {row['corrected_token_share']:.2f} "
                f"| {row['bound_tok_s']:.1f} | **{row['vs_bound']:.2f}x** | {ttft} | {itl} "
                f"| {load} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([Path(p) for p in sys.argv[1:]]))
