"""Two revisions of corrigo on the same workload, interleaved: is B as fast as A?

Each revision is checked out in its own git worktree and served by ``corrigo serve`` from
there, one server at a time (never two engines on one machine). Runs alternate in ABBA order
(A B, then B A, ...) so that drift in the machine's speed falls on both sides equally, and each
workload is measured the same way as bench/serving.py (streamed /v1/completions and
/v1/chat/completions, greedy, full length):

- ``plain``: no correction (the path every request without one takes);
- ``proxy_tuning``: proxy-tuning with the served model as both expert and anti-expert (alpha 1:
  the output is the plain one, the cost is three models' forwards and the correction's path).

    .venv/bin/python -m bench.ab --a f7d44dd --b HEAD --repeats 3 --concurrency 1 8

Every run is appended to docs/bench/ab-serving.json (with both commits, the CPU's bf16 flags
and the machine), and docs/bench/ab-serving.md is regenerated from that file: per revision,
workload, endpoint and concurrency, every run's tok/s, then min / median / max, and B's median
over A's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import uvloop
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from adapters.engine import resolve_model
from decoding.aux.dtypes import BF16_CPU_FLAGS, cpu_has_native_bf16
from evals.results import load_average
from server.launcher import start_server
from server.toml_writer import write_config

from .serving import bench_http, chat_workload

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "ab-serving.json"
TABLE = REPO / "docs" / "bench" / "ab-serving.md"
WORKLOADS = ("plain", "proxy_tuning")


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return sorted(BF16_CPU_FLAGS & set(flags))


def _sections(model_path: str, workload: str) -> dict:
    sections = {
        "model": {"path": model_path},
        "engine": {"max_model_len": 2048, "enforce_eager": True},
        "server": {"log_level": "warning"},
    }
    if workload == "proxy_tuning":
        sections["aux_models.same"] = {"path": model_path}
    return sections


def _extra_body(workload: str) -> dict | None:
    if workload == "proxy_tuning":
        return {"correction": {"proxy_tuning": {"expert": "same", "anti_expert": "same"}}}
    return None


def measure(tree: Path, label: str, workload: str, model, prompts, messages, args) -> list[dict]:
    """One server from ``tree`` serving ``workload``: its runs."""
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp) / "ab.toml", _sections(model.path, workload))
        server = start_server(config, Path(tmp) / "server.log", cwd=tree)
        try:
            model_id = httpx.get(f"{server.base_url}/v1/models", timeout=60).json()["data"][0]["id"]
            before = load_average()
            runs = uvloop.run(
                bench_http(
                    label, server.base_url, model_id, prompts, messages, args, _extra_body(workload)
                )
            )
            after = load_average()
        finally:
            server.stop()
    return [
        {
            "revision": label,
            "workload": workload,
            "endpoint": r.system.rsplit(" ", 1)[-1],
            "concurrency": r.concurrency,
            "tokens_per_s": r.tokens_per_s,
            "ttft_p50_s": r.ttft_p50_s,
            "wall_s": r.wall_s,
            "load_before": before,
            "load_after": after,
        }
        for r in runs
    ]


def summary(runs: list[dict]) -> list[dict]:
    """Per workload, endpoint and concurrency: each side's median tok/s and B's over A's."""
    out = []
    for workload, endpoint, conc in sorted(
        {(r["workload"], r["endpoint"], r["concurrency"]) for r in runs}
    ):
        medians = {
            side: statistics.median(
                r["tokens_per_s"]
                for r in runs
                if r["revision"] == side
                and (r["workload"], r["endpoint"], r["concurrency"]) == (workload, endpoint, conc)
            )
            for side in ("A", "B")
        }
        out.append(
            {
                "workload": workload,
                "endpoint": endpoint,
                "concurrency": conc,
                "a_median_tok_s": medians["A"],
                "b_median_tok_s": medians["B"],
                "b_over_a": medians["B"] / medians["A"],
            }
        )
    return out


def render(sessions: list[dict]) -> str:
    """The markdown table of every session in the results file."""
    out = [
        "# A/B serving runs (bench/ab.py)",
        "",
        "Generated from ab-serving.json; do not edit.",
        "",
    ]
    for s in sessions:
        out += [
            f"## {s['started']}: A = {s['a']['commit'][:10]} ({s['a']['rev']}), "
            f"B = {s['b']['commit'][:10]} ({s['b']['rev']})",
            "",
            f"Machine: {s['machine']['cpus']} CPUs, {s['machine']['platform']}; native bf16: "
            f"{s['machine']['native_bf16']} ({', '.join(s['machine']['bf16_flags']) or 'no flags'}). "
            f"Order: {' '.join(s['order'])}; {s['args']['requests']} requests of "
            f"{s['args']['max_tokens']} tokens each.",
            "",
            "| workload | endpoint | conc | A runs (tok/s) | A min / median / max | B runs (tok/s) "
            "| B min / median / max | B / A (medians) |",
            "|---|---|---:|---|---|---|---|---:|",
        ]
        keys = sorted({(r["workload"], r["endpoint"], r["concurrency"]) for r in s["runs"]})
        for workload, endpoint, conc in keys:
            cells = []
            medians = []
            for side in ("A", "B"):
                values = [
                    r["tokens_per_s"]
                    for r in s["runs"]
                    if r["revision"] == side
                    and (r["workload"], r["endpoint"], r["concurrency"])
                    == (workload, endpoint, conc)
                ]
                medians.append(statistics.median(values))
                cells += [
                    ", ".join(f"{v:.1f}" for v in values),
                    f"{min(values):.1f} / {medians[-1]:.1f} / {max(values):.1f}",
                ]
            ratio = medians[1] / medians[0]
            out.append(f"| {workload} | {endpoint} | {conc} | {' | '.join(cells)} | {ratio:.3f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, help="revision A (the baseline)")
    parser.add_argument("--b", required=True, help="revision B")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each revision")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--model", help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--table", action="store_true", help="only regenerate the table")
    args = parser.parse_args()
    sessions = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if args.table:
        TABLE.write_text(render(sessions))
        return

    model = resolve_model(args.model, None)
    prompts, messages = chat_workload(AutoTokenizer.from_pretrained(model.path), args.requests)
    work = Path(tempfile.mkdtemp(prefix="corrigo-ab-"))
    trees = {}
    try:
        for side, rev in (("A", args.a), ("B", args.b)):
            trees[side] = work / side
            _git("worktree", "add", "--detach", str(trees[side]), rev)
        # ABBA: A B, B A, A B, ...
        order = [s for i in range(args.repeats) for s in (("A", "B") if i % 2 == 0 else ("B", "A"))]
        session = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "a": {"rev": args.a, "commit": _git("rev-parse", args.a)},
            "b": {"rev": args.b, "commit": _git("rev-parse", args.b)},
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "native_bf16": cpu_has_native_bf16(),
                "bf16_flags": _cpu_flags(),
            },
            "args": {k: v for k, v in vars(args).items() if k != "table"},
            "order": order,
            "runs": [],
        }
        steps = [(side, w) for side in order for w in args.workloads]
        for side, workload in tqdm(steps, desc="A/B runs", unit="server"):
            session["runs"] += measure(trees[side], side, workload, model, prompts, messages, args)
        session["summary"] = summary(session["runs"])
        sessions.append(session)  # appended: earlier sessions stay as they were
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(sessions, indent=1))
        TABLE.write_text(render(sessions))
        print(render([session]))
    finally:
        for tree in trees.values():
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
