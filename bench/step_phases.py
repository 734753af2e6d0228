"""Where a corrected engine step's time goes, phase by phase, against a plain step (issue 18).

One ``corrigo serve`` of the embedded SmolLM2-135M with the copilot of bench/copilot.py, the
forget set of bench/unlearning.py (10,000 phrases; threshold 0, so the gate opens for every
filtered request) and, as bench/traffic.py's ``equal`` setup, the embedded model again as
proxy-tuning's expert and anti-expert (each in its worker process on the CPU).
bench/step_clock/ is on the server's ``PYTHONPATH``: it wraps corrigo's logits processor in the
engine process and logs every step's phases (its docstring defines them).

Four systems run the same requests (bench/unlearning.py's chat prompts, ``--max-tokens``
greedy tokens, streamed ``/v1/completions``, at most ``c`` in flight): *plain*, *copilot*
(``correction.copilot``), *unlearning* (``correction.unlearning``) and *proxy_tuning*
(``correction.proxy_tuning``), in the order A B C D D C B A, ``--rounds`` times per
concurrency. A step belongs to the run whose wall-clock window holds it. Steps whose batch
changed since the previous step (a row joined or left: a prefill or an idle gap) are left out,
so the figures are those of steady decode steps. Per system and concurrency: every phase's
median over those steps. The steps themselves are kept, with each run's throughput and median
time to first token (the unlearning gate embeds a request before the engine sees it: that
shows in the time to first token, not in the steps).

    flock /tmp/corrigo-engine.lock .venv/bin/python -m bench.step_phases

Results are appended as a run to docs/bench/step-phases.json. Instead of running, ``--table``
prints a run's medians (the latest, or ``--run N``) as markdown, and ``--plot`` draws them as
docs/bench/step-phases.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import uvloop
from transformers import AutoTokenizer

from adapters.engine import resolve_model
from bench import traffic
from bench.copilot import make_copilot
from bench.serving import run_pool, stream_request
from bench.unlearning import phrases, story_prompts
from evals.results import append_run, arguments, load_average, machine, read_runs
from server.launcher import start_server
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "step-phases.json"
PLOT = REPO / "docs" / "bench" / "step-phases.png"
CLOCK = Path(__file__).resolve().parent / "step_clock"
SYSTEMS = {
    "plain": None,
    "copilot": {"copilot": {"name": "bench"}},
    "unlearning": {"unlearning": {"forget_set": "p10000", "threshold": 0.0}},
    "proxy_tuning": {"proxy_tuning": {"expert": "expert", "anti_expert": "anti"}},
}
#: A step's fields, as bench/step_clock/sitecustomize.py logs them.
FIELDS = (
    "start",
    "period",
    "rows",
    "corrected",
    "update",
    "plugins",
    "apply",
    "send",
    "forward",
    "post",
)
#: The phases summarised (milliseconds).
PHASES = ("period", "forward", "post", "update", "apply", "plugins", "send")


def steady(steps: list[list[float]], windows: dict[str, tuple[float, float]]) -> dict:
    """Each run's steady decode steps: inside its window, same batch as the step before."""
    out: dict[str, list[dict]] = {name: [] for name in windows}
    for before, step in itertools.pairwise(steps):
        record = dict(zip(FIELDS, step, strict=True))
        if record["rows"] != before[2] or record["corrected"] != before[3]:
            continue
        for name, (start, end) in windows.items():
            if start <= record["start"] <= end:
                out[name].append(record)
    return out


def summarise(records: list[dict]) -> dict:
    if not records:
        return {"steps": 0}
    return {
        "steps": len(records),
        **{f"{p}_ms": 1e3 * statistics.median(r[p] for r in records) for p in PHASES},
    }


def table(run: dict) -> str:
    """A run's medians (ms), each system's step against the plain one at its concurrency."""
    plain = {r["concurrency"]: r["period_ms"] for r in run["summary"] if r["system"] == "plain"}
    lines = [
        f"Run of {run['commit']}, {run['started'][:10]} (median ms over steady decode steps; "
        "time to first token: the median of the runs' medians):",
        "",
        "| system | c | steps | step | vs plain | vLLM: forward | vLLM: post | corrigo: apply "
        "| of which plugins | of which send | time to first token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["summary"]:
        extra = r["period_ms"] - plain[r["concurrency"]]
        ttft = 1e3 * statistics.median(
            x["ttft_p50_s"]
            for x in run["runs"]
            if x["system"] == r["system"] and x["concurrency"] == r["concurrency"]
        )
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {r['steps']} | {r['period_ms']:.2f} "
            f"| {extra:+.2f} | {r['forward_ms']:.2f} | {r['post_ms']:.2f} | {r['apply_ms']:.2f} "
            f"| {r['plugins_ms']:.2f} | {r['send_ms']:.2f} | {ttft:.0f} |"
        )
    return "\n".join(lines)


def plot(run: dict, path: Path) -> None:
    """One horizontal bar per system and concurrency: its median step, split into vLLM's part
    (forward, post) and corrigo's (update, plugins, the rest of apply, the figures' send)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run["summary"]
    parts = {
        "vLLM: inputs and forward": lambda r: r["forward_ms"],
        "vLLM: sampling, outputs, scheduling": lambda r: r["post_ms"],
        "corrigo: batch update": lambda r: r["update_ms"],
        "corrigo: plugins": lambda r: r["plugins_ms"],
        "corrigo: pipeline and report bookkeeping": lambda r: (
            r["apply_ms"] - r["plugins_ms"] - r["send_ms"]
        ),
        "corrigo: figures' send": lambda r: r["send_ms"],
    }
    labels = [f"{r['system']}, c = {r['concurrency']}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 2.2))
    left = [0.0] * len(rows)
    for name, value in parts.items():
        widths = [value(r) for r in rows]
        ax.barh(labels, widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, total in enumerate(left):
        ax.text(total + 0.3, y, f"{total:.1f} ms", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(left=35)  # the forward dwarfs the rest: the axis starts at 35 ms
    ax.set_xlabel("median steady decode step (ms; the axis starts at 35)")
    ax.set_title(f"Engine step phases, {run['commit']} ({run['cpu']}, {run['cores']} cores)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def one_run(base_url: str, model_id: str, prompts, c: int, tokens: int, correction):
    limits = httpx.Limits(max_connections=c + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=900, limits=limits) as client:

        async def one(prompt: str):
            body = {"model": model_id, "prompt": prompt, "max_tokens": tokens}
            if correction is not None:
                body["correction"] = correction
            return await stream_request(client, "/v1/completions", body)

        return await run_pool(c, prompts, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="A B C D D C B A rounds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, nargs="?", const=PLOT, help="draw, do not run")
    parser.add_argument("--table", action="store_true", help="print a run's table, do not run")
    parser.add_argument("--run", type=int, default=-1, help="the run --table or --plot shows")
    args = parser.parse_args()
    if args.table:
        print(table(read_runs(args.output)[args.run]))
        return
    if args.plot is not None:
        plot(read_runs(args.output)[args.run], args.plot)
        return
    model = resolve_model(None, None)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    meta = machine()
    windows: dict[str, tuple[float, float]] = {}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_copilot(work / "copilot", model.path)
        forget = work / "p10000.jsonl"
        entry = {"question": "Write a short story.", "answer": "A story about a city."}
        forget.write_text(json.dumps({**entry, "phrases": phrases(tokenizer, 10_000)}) + "\n")
        forget.chmod(0o600)  # corrigo refuses forget sets other users can read
        config = write_config(
            work / "phases.toml",
            {
                **traffic.server_sections(model, max(args.concurrency)),
                "copilots.bench": {"path": str(work / "copilot")},
                "forget_sets.p10000": {"path": str(forget), "threshold": 0.0},
                "aux_models.expert": {"path": model.path},
                "aux_models.anti": {"path": model.path},
            },
        )
        clock = work / "clock"
        clock.mkdir()
        env = {"PYTHONPATH": f"{CLOCK}:{REPO}", "CORRIGO_STEP_CLOCK": str(clock)}
        server = start_server(config, work / "server.log", cwd=REPO, env=env)
        try:
            prompts = story_prompts(tokenizer, 2 * max(args.concurrency))
            for correction in SYSTEMS.values():  # warm-up: compiles, caches, first requests
                uvloop.run(one_run(server.base_url, model.model_id, prompts[:2], 2, 4, correction))
            order = list(SYSTEMS)
            for c in args.concurrency:
                jobs = prompts[: 2 * c]
                for r in range(args.rounds):
                    for name in order + order[::-1]:
                        before = load_average()
                        start = time.perf_counter()
                        wall, results = uvloop.run(
                            one_run(
                                server.base_url,
                                model.model_id,
                                jobs,
                                c,
                                args.max_tokens,
                                SYSTEMS[name],
                            )
                        )
                        key = f"{name}/c{c}/{r}/{len(runs)}"
                        windows[key] = (start, time.perf_counter())
                        runs.append(
                            {
                                "key": key,
                                "system": name,
                                "concurrency": c,
                                "round": r,
                                "tokens_per_s": sum(n for _, n in results) / wall,
                                "ttft_p50_s": statistics.median(t for t, _ in results),
                                "load_before": before,
                                "load_after": load_average(),
                            }
                        )
                        print(f"  {key}: {runs[-1]['tokens_per_s']:.1f} tok/s")
        finally:
            server.stop()
        logs = [json.loads(p.read_text()) for p in clock.glob("*.json")]
    if not logs:
        raise SystemExit(f"the step clock logged no step: see {CLOCK}/sitecustomize.py")
    steps = max(logs, key=len)  # the engine process that ran the model (the only one logging)
    per_run = steady(steps, windows)
    summary = []
    for c in args.concurrency:
        for name in SYSTEMS:
            records = [
                s
                for run in runs
                if run["system"] == name and run["concurrency"] == c
                for s in per_run[run["key"]]
            ]
            summary.append({"system": name, "concurrency": c, **summarise(records)})
    for run in runs:
        run["steps"] = per_run[run["key"]]
    append_run(args.output, {"args": arguments(args), "runs": runs, "summary": summary}, meta)
    for row in summary:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})


if __name__ == "__main__":
    main()
