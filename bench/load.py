"""Load: many concurrent streaming clients for a fixed time, plain and corrected requests mixed.

Starts ``corrigo serve`` on the embedded SmolLM2 with a proxy-tuning pair whose expert and
anti-expert are the embedded model itself (a valid correction: the shift is exactly zero, the
work is real), and admission limits below the client count, so some requests are refused with
429 by design. Each client loops for ``--duration`` seconds: a streamed chat completion, plain
or corrected in turn; on 429 it waits the ``Retry-After`` the server sent and goes on. Anything
else that is not a complete stream counts as a failure.

    .venv/bin/python -m bench.load                       # 64 clients, 60 s
    .venv/bin/python -m bench.load --clients 16 --duration 20 --max-running 8 --max-waiting 4

Prints a markdown table and appends the run to docs/bench/load.json (evals/results.py);
``--table docs/bench/load.json`` prints the latest run's table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import uvloop

from bench.serving import TOPICS, save_results
from evals.results import add_table_option, machine, printed_table
from server.launcher import start_server
from server.toml_writer import write_config

CORRECTION = {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": 1.0}}


@dataclass
class Tally:
    ttft: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "corrected": []})
    completed: dict[str, int] = field(default_factory=lambda: {"plain": 0, "corrected": 0})
    tokens: int = 0
    rejected_429: int = 0
    failures: list[str] = field(default_factory=list)


async def client_loop(
    client: httpx.AsyncClient, index: int, model: str, args, deadline: float, tally: Tally
) -> None:
    i = 0
    while time.monotonic() < deadline:
        kind = "corrected" if (index + i) % 2 else "plain"
        i += 1
        body = {
            "model": model,
            "messages": [
                {"role": "user", "content": f"Tell me about {TOPICS[(index + i) % len(TOPICS)]}."}
            ],
            "max_tokens": args.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if kind == "corrected":
            body["correction"] = CORRECTION
        started = time.perf_counter()
        first: float | None = None
        done = False
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code == 429:
                    tally.rejected_429 += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                if r.status_code != 200:
                    tally.failures.append(f"{r.status_code} {(await r.aread())[:200]!r}")
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        tally.failures.append(f"stream error {chunk['error']}")
                        break
                    if first is None and chunk.get("choices"):
                        first = time.perf_counter() - started
                    if chunk.get("usage"):
                        tally.tokens += chunk["usage"]["completion_tokens"]
        except httpx.HTTPError as exc:
            tally.failures.append(f"{type(exc).__name__}: {exc}")
            continue
        if done and first is not None:
            tally.completed[kind] += 1
            tally.ttft[kind].append(first)
        elif done:
            tally.failures.append("stream without tokens")


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory of the server process and of its children (the engine core)."""
    parent = psutil.Process(pid)
    children = parent.children(recursive=True)
    return {
        "server": parent.memory_info().rss / 2**20,
        "engine": sum(c.memory_info().rss for c in children) / 2**20,
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run_load(base_url: str, model: str, args) -> tuple[Tally, float]:
    tally = Tally()
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        started = time.monotonic()
        deadline = started + args.duration
        await asyncio.gather(
            *(client_loop(client, i, model, args, deadline, tally) for i in range(args.clients))
        )
        return tally, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-running", type=int, default=32, help="limits.max_running_requests")
    parser.add_argument("--max-waiting", type=int, default=16, help="limits.max_waiting_requests")
    add_table_option(parser)
    args = parser.parse_args()
    if printed_table(args, table):
        return

    from adapters.engine import resolve_model

    meta = machine()
    model = resolve_model(None, None)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(
            Path(tmp) / "bench.toml",
            {
                "model": {"path": model.path, "served_model_name": model.model_id},
                # No more engine rows than running requests: the auxiliary models' KV caches
                # are sized for them (docs/deployment.md, "Memory budgeting...").
                "engine": {
                    "max_model_len": 2048,
                    "enforce_eager": True,
                    "max_num_seqs": args.max_running,
                },
                "server": {"log_level": "warning"},
                "limits": {
                    "max_running_requests": args.max_running,
                    "max_waiting_requests": args.max_waiting,
                },
                "aux_models.expert": {"path": model.path},
                "aux_models.anti": {"path": model.path},
            },
        )
        server = start_server(config, Path(tmp) / "server.log")
        try:
            warm = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 4,
                    "correction": CORRECTION,
                },
                timeout=300,
            )
            warm.raise_for_status()
            before = rss_mib(server.pid)
            tally, wall = uvloop.run(run_load(server.base_url, model.model_id, args))
            after = rss_mib(server.pid)
        finally:
            server.stop()

    ttft_all = tally.ttft["plain"] + tally.ttft["corrected"]
    completed = sum(tally.completed.values())
    result = {
        "args": vars(args),
        "wall_s": wall,
        "completed": tally.completed,
        "rejected_429": tally.rejected_429,
        "failed": len(tally.failures),
        "failures": tally.failures[:20],
        "output_tok_s": tally.tokens / wall,
        "requests_per_s": completed / wall,
        "ttft_s": {
            kind: {"p50": pct(v, 50), "p99": pct(v, 99)}
            for kind, v in {**tally.ttft, "all": ttft_all}.items()
        },
        "rss_mib": {"before": before, "after": after},
    }
    print("\n" + table(result))
    if tally.failures:
        print("failures:", *tally.failures[:10], sep="\n  ")
    save_results("load", result, meta)


def table(result: dict) -> str:
    """Markdown: one run's requests, refusals, failures, throughput, TTFT and memory."""
    done, ttft, rss = result["completed"], result["ttft_s"], result["rss_mib"]
    before, after = rss["before"], rss["after"]
    lines = [
        "| requests | completed (plain / corrected) | 429 (then retried) | failed | output tok/s "
        "| req/s | TTFT p50 (s) | TTFT p99 (s) | RSS server+engine before -> after (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| all | {sum(done.values())} ({done['plain']} / {done['corrected']}) "
        f"| {result['rejected_429']} | {result['failed']} | {result['output_tok_s']:.1f} "
        f"| {result['requests_per_s']:.2f} | {ttft['all']['p50']:.2f} | {ttft['all']['p99']:.2f} "
        f"| {before['server']:.0f}+{before['engine']:.0f} -> "
        f"{after['server']:.0f}+{after['engine']:.0f} |",
    ]
    for kind in ("plain", "corrected"):
        lines.append(
            f"| {kind} | {done[kind]} | | | | | {ttft[kind]['p50']:.2f} | {ttft[kind]['p99']:.2f} | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
