"""``corrigo eval refinement``: pass rates single-shot vs each refinement strategy, and flips.

Every item of a suite (``evals/suites/refinement/*.jsonl``: a prompt and an exact verifier)
is sent to the server once per configuration: ``single`` (the greedy draft alone,
``max_rounds=1``) and each strategy at the same cap on rounds. The verifier is exact, so the
report's truth says whether the draft and the chosen answer are correct; a strategy's pass
rate is the share of items whose chosen answer is, and its flips compare that answer with its
own draft. ``aggregate`` runs as self-consistency: ``max_rounds`` samples, majority answer, no
escalation; ``localize`` scores steps with its default P(True) step verifier. ``--feedback`` adds a configuration ``<strategy>+feedback`` for each strategy that
writes a feedback turn: the same strategy with the verifier's feedback appended to that turn.
Results merge into the results file by suite and configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from decoding.refinement.loop import FLIPS
from decoding.refinement.params import STRATEGIES

from .server import local_server

SUITES_DIR = Path(__file__).parent / "suites" / "refinement"
#: The strategies that write a feedback turn (best_of_n only samples and reranks; aggregate
#: only samples and votes, as it runs here: without escalation).
WITH_FEEDBACK = tuple(s for s in STRATEGIES if s not in ("best_of_n", "aggregate"))
#: max_tokens per candidate, per suite: enough for the answer, short for a 2-core CPU.
MAX_TOKENS = {
    "arithmetic": 16,
    "json_extraction": 40,
    "instructions": 40,
    "python_functions": 80,
    "python_edge_cases": 96,
}
#: Suites whose verifier feedback would hand the model the reference: ``--feedback`` refuses
#: them, since an answer copied from the feedback says nothing about refinement.
FEEDBACK_REVEALS_REFERENCE = {
    "json_extraction": "its schemas pin the answer with `const`, and json_schema feedback "
    "quotes the expected value ('Maria' was expected)",
}
FEEDBACK = "+feedback"


@dataclass(frozen=True)
class Job:
    suite: str
    config: str
    item: dict[str, Any]


def load_suite(name: str) -> list[dict[str, Any]]:
    path = SUITES_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.jsonl"))


def request_body(job: Job, model: str, max_rounds: int, temperature: float) -> dict[str, Any]:
    refinement: dict[str, Any] = {"verifier": job.item["verifier"]}
    if job.config == "single":
        refinement["max_rounds"] = 1
    else:
        strategy, feedback = job.config.removesuffix(FEEDBACK), job.config.endswith(FEEDBACK)
        refinement.update(strategy=strategy, max_rounds=max_rounds, temperature=temperature)
        if strategy == "aggregate":
            # Self-consistency at the same cap: every round is a sample; no escalation.
            refinement["samples"] = max_rounds
        if feedback:
            refinement["feedback"] = True
    return {
        "model": model,
        "messages": [{"role": "user", "content": job.item["prompt"]}],
        "max_tokens": MAX_TOKENS.get(job.suite, 48),
        "temperature": 0.0,
        "seed": 0,
        "correction": {"refinement": refinement},
    }


async def run_jobs(
    base_url: str,
    api_key: str | None,
    jobs: list[Job],
    *,
    max_rounds: int,
    temperature: float,
    concurrency: int,
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        slots = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(jobs), desc="refinement eval", unit="req")

        async def one(job: Job) -> dict[str, Any]:
            async with slots:
                started = time.monotonic()
                body = request_body(job, model, max_rounds, temperature)
                response = await client.post("/v1/chat/completions", json=body)
                bar.update()
            if response.status_code != 200:
                raise RuntimeError(f"{job.suite}/{job.item['id']}: {response.text}")
            payload = response.json()
            report = payload["correction"]["refinement"]
            return {
                "suite": job.suite,
                "config": job.config,
                "id": job.item["id"],
                "draft": report["truth"]["draft"],
                "chosen": report["truth"]["chosen"],
                "flip": report["truth"]["flip"],
                "rounds": report["rounds"],
                "stop_reason": report["stop_reason"],
                "tokens": report["tokens"],
                "seconds": time.monotonic() - started,
                "answer": payload["choices"][0]["message"]["content"],
            }

        try:
            return await asyncio.gather(*(one(job) for job in jobs))
        finally:
            bar.close()


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        cell = out.setdefault(row["suite"], {}).setdefault(
            row["config"],
            {"n": 0, "passed": 0, **dict.fromkeys(FLIPS, 0), "rounds": 0, "tokens": 0},
        )
        cell["n"] += 1
        cell["passed"] += row["chosen"]
        cell["rounds"] += row["rounds"]
        cell["tokens"] += row["tokens"]
        if row["flip"]:
            cell[row["flip"]] += 1
    for configs in out.values():
        for cell in configs.values():
            cell["pass_rate"] = cell["passed"] / cell["n"]
            cell["mean_rounds"] = cell["rounds"] / cell["n"]
            cell["mean_tokens"] = cell["tokens"] / cell["n"]
    return out


def markdown_table(summary: dict[str, dict[str, dict[str, Any]]], configs: list[str]) -> str:
    lines = [
        "| suite | " + " | ".join(configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for suite, cells in summary.items():
        single = cells.get("single", {}).get("pass_rate")
        row = []
        for config in configs:
            cell = cells.get(config)
            if cell is None:
                row.append("—")
                continue
            text = f"{cell['passed']}/{cell['n']} ({cell['pass_rate']:.0%})"
            if config != "single" and single:
                text += f" ×{cell['pass_rate'] / single:.2f}"
            if config != "single":
                text += f", flips +{cell['incorrect_to_correct']}/−{cell['correct_to_incorrect']}"
            row.append(text)
        lines.append(f"| {suite} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cost_table(summary: dict[str, dict[str, dict[str, Any]]], configs: list[str]) -> str:
    """Mean completion tokens (every round, critique and check) and mean rounds per item."""
    lines = [
        "| suite | " + " | ".join(configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for suite, cells in summary.items():
        row = [
            f"{cells[c]['mean_tokens']:.0f} tok, {cells[c]['mean_rounds']:.2g} r"
            if c in cells
            else "—"
            for c in configs
        ]
        lines.append(f"| {suite} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, dict[str, Any]]], configs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(summary)
    width = 0.8 / len(configs)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for i, config in enumerate(configs):
        rates = [summary[s].get(config, {}).get("pass_rate", 0.0) for s in suites]
        xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(suites))]
        ax.bar(xs, rates, width, label=config)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_ylabel("pass rate (exact verifier)")
    ax.set_ylim(0, 1.15)
    ax.set_title("Refinement on SmolLM2-135M-Instruct: single-shot vs strategies (same round cap)")
    ax.legend(fontsize=7, ncols=min(len(configs), 5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "refinement",
        help="pass rate single-shot vs each refinement strategy on the shipped suites",
        description="Pass rates single-shot vs each refinement strategy (same cap on rounds) on the suites shipped in evals/suites/refinement, and flips.",
    )
    parser.add_argument("--base-url", help="a running corrigo server (default: start one)")
    parser.add_argument("--api-key", help="API key for --base-url")
    parser.add_argument(
        "--suites", default=",".join(available_suites()), help="comma-separated suite names"
    )
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="comma-separated strategies (<strategy>+feedback for one with verifier feedback)",
    )
    parser.add_argument("--max-rounds", type=int, default=3, help="the cap on rounds (default 3)")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="temperature after the greedy draft"
    )
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="also run <strategy>+feedback: the verifier's feedback appended to the strategy's turn",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--limit", type=int, help="first N items of each suite")
    parser.add_argument(
        "--out",
        default="docs/evals",
        help="folder for refinement.json and refinement.png (results merge by suite)",
    )


def run(args: argparse.Namespace) -> int:
    suites = [s for s in args.suites.split(",") if s]
    strategies = [s for s in args.strategies.split(",") if s]
    configs = ["single", *strategies]
    if args.feedback:
        configs += [s + FEEDBACK for s in strategies if s in WITH_FEEDBACK]
    if any(c.endswith(FEEDBACK) for c in configs):
        leaking = [s for s in suites if s in FEEDBACK_REVEALS_REFERENCE]
        if leaking:
            raise SystemExit(
                f"--feedback on {', '.join(leaking)} would reveal the reference: "
                + "; ".join(FEEDBACK_REVEALS_REFERENCE[s] for s in leaking)
            )
    jobs = [
        Job(suite, config, item)
        for suite in suites
        for item in load_suite(suite)[: args.limit]
        for config in configs
    ]

    async def go(base_url: str) -> list[dict[str, Any]]:
        return await run_jobs(
            base_url,
            args.api_key,
            jobs,
            max_rounds=args.max_rounds,
            temperature=args.temperature,
            concurrency=args.concurrency,
        )

    started = time.monotonic()
    if args.base_url:
        rows = asyncio.run(go(args.base_url))
    else:
        with local_server(args.max_rounds) as url:
            rows = asyncio.run(go(url))
    elapsed = time.monotonic() - started

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "refinement.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"suites": {}}
    summary = summarise(rows)
    for suite in summary:
        entry = results["suites"].setdefault(suite, {"configs": {}})
        for config, cell in summary[suite].items():
            entry["configs"][config] = {
                "summary": cell,
                "items": [r for r in rows if r["suite"] == suite and r["config"] == config],
                "max_rounds": args.max_rounds,
                "temperature": args.temperature,
                "run_seconds": round(elapsed, 1),
            }
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    merged = {
        s: {c: v["summary"] for c, v in entry["configs"].items()}
        for s, entry in results["suites"].items()
    }
    all_configs = ["single", *STRATEGIES, *(s + FEEDBACK for s in WITH_FEEDBACK)]
    plot(
        merged,
        [c for c in all_configs if any(c in v for v in merged.values())],
        out / "refinement.png",
    )
    shown = [c for c in all_configs if any(c in v for v in merged.values())]
    print(markdown_table(summary, configs))
    print(f"\nAll results in {results_path}:\n")
    print(markdown_table(merged, shown))
    print()
    print(cost_table(merged, shown))
    print(f"\n{len(rows)} requests in {elapsed:.0f} s; results in {results_path}")
    return 0
