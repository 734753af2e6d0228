"""corrigo vs the same vLLM engine driven directly: streamed output tokens/s and TTFT.

Both sides run the same model, the same engine arguments (corrigo's, logits processor
included), the same prompts and the same sampling, one after the other on this machine (never
two engines at once). "direct" drives ``AsyncLLM.generate`` in-process; "corrigo" is
``corrigo serve`` in a subprocess, driven over HTTP with streaming (SSE) by an asyncio + httpx
client, through /v1/completions (same prompt text as direct) and /v1/chat/completions.

    .venv/bin/python -m bench.serving                      # embedded SmolLM2, c = 1, 8, 32
    .venv/bin/python -m bench.serving --requests 64 --max-tokens 128 --concurrency 1 8

Prints a markdown table (the one in docs/benchmarks.md) and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import uvloop

from server.launcher import start_server
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parent.parent

TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "the first snow",
    "a dragon who cannot fly",
    "a city under the sea",
    "an old clock",
    "a secret garden",
    "a space station cook",
    "a talking cat",
    "the last library",
    "a desert train",
    "a friendly ghost",
    "a mountain village",
    "a broken violin",
    "a painter's apprentice",
    "a night market",
]


@dataclass
class Run:
    system: str
    concurrency: int
    requests: int
    output_tokens: int
    wall_s: float
    ttft_p50_s: float
    ttft_p99_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_pool(concurrency: int, jobs: list, one) -> tuple[float, list[tuple[float, int]]]:
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    results: list[tuple[float, int]] = []

    async def worker() -> None:
        while not queue.empty():
            results.append(await one(queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, results


def summarise(system: str, concurrency: int, wall: float, results: list[tuple[float, int]]) -> Run:
    ttfts = [t for t, _ in results]
    return Run(
        system,
        concurrency,
        len(results),
        sum(n for _, n in results),
        wall,
        statistics.median(ttfts),
        percentile(ttfts, 0.99),
    )


# -- direct: AsyncLLM in this process -------------------------------------------------------


async def bench_direct(model, engine_settings, prompts, args) -> list[Run]:
    from adapters.engine import engine_args, start_engine, stop_engine
    from adapters.vllm_compat import RequestOutputKind, SamplingParams

    engine = await asyncio.to_thread(start_engine, engine_args(model, engine_settings))
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=0,
        ignore_eos=True,
        output_kind=RequestOutputKind.DELTA,
    )

    async def one(prompt: str) -> tuple[float, int]:
        started = time.perf_counter()
        ttft, tokens = None, 0
        async for out in engine.generate(prompt, params, request_id=uuid.uuid4().hex):
            n = len(out.outputs[0].token_ids)
            if n and ttft is None:
                ttft = time.perf_counter() - started
            tokens += n
        return ttft, tokens

    try:
        await one(prompts[0])  # warm-up
        runs = []
        for c in args.concurrency:
            wall, results = await run_pool(c, prompts, one)
            runs.append(summarise("direct AsyncLLM", c, wall, results))
            print(f"  direct c={c}: {runs[-1].tokens_per_s:.1f} tok/s", flush=True)
        return runs
    finally:
        stop_engine(engine)


# -- corrigo: the server over HTTP ----------------------------------------------------------


async def stream_request(client: httpx.AsyncClient, path: str, body: dict) -> tuple[float, int]:
    """POST a greedy, full-length streamed request; (time to first token, completion tokens)."""
    body = {
        **body,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if ttft is None:
                ttft = time.perf_counter() - started
            if '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return ttft, tokens


async def bench_corrigo(base_url: str, model_id: str, prompts, messages, args) -> list[Run]:
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def stream(path: str, body: dict) -> tuple[float, int]:
            body = {**body, "model": model_id, "max_tokens": args.max_tokens}
            return await stream_request(client, path, body)

        async def completion(prompt: str):
            return await stream("/v1/completions", {"prompt": prompt})

        async def chat(message: list):
            return await stream("/v1/chat/completions", {"messages": message})

        await completion(prompts[0])
        await chat(messages[0])
        runs = []
        for c in args.concurrency:
            for name, one, jobs in (
                ("corrigo /v1/completions", completion, prompts),
                ("corrigo /v1/chat/completions", chat, messages),
            ):
                wall, results = await run_pool(c, jobs, one)
                runs.append(summarise(name, c, wall, results))
                print(f"  {name} c={c}: {runs[-1].tokens_per_s:.1f} tok/s", flush=True)
        return runs


def save_results(name: str, result: dict) -> Path:
    """Write a benchmark's figures to bench/results/NAME-<time>.json (not committed)."""
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def table(runs: list[Run]) -> str:
    direct = {r.concurrency: r for r in runs if r.system.startswith("direct")}
    lines = [
        "| system | concurrency | output tok/s | vs direct | TTFT p50 (s) | TTFT p99 (s) | p50 vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(
        runs, key=lambda r: (r.concurrency, not r.system.startswith("direct"), r.system)
    ):
        d = direct[r.concurrency]
        lines.append(
            f"| {r.system} | {r.concurrency} | {r.tokens_per_s:.1f} | {r.tokens_per_s / d.tokens_per_s:.2f}x"
            f" | {r.ttft_p50_s:.3f} | {r.ttft_p99_s:.3f} | {r.ttft_p50_s / d.ttft_p50_s:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--compiled", action="store_true", help="let vLLM compile (default: eager)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from adapters.engine import resolve_model

    model = resolve_model(args.model, None)
    engine_settings = {"max_model_len": 2048, "enforce_eager": not args.compiled}
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    messages = [
        [
            {
                "role": "user",
                "content": f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i}).",
            }
        ]
        for i in range(args.requests)
    ]
    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]

    print(f"direct AsyncLLM ({model.model_id}, {engine_settings})", flush=True)
    # uvloop on both sides, as in uvicorn (and so in corrigo and `vllm serve`).
    runs = uvloop.run(bench_direct(model, engine_settings, prompts, args))

    print("corrigo serve", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(
            Path(tmp) / "bench.toml",
            {
                "model": {"path": model.path, "served_model_name": model.model_id},
                "engine": engine_settings,
                "server": {"log_level": "warning"},
            },
        )
        server = start_server(config, Path(tmp) / "server.log")
        try:
            runs += uvloop.run(
                bench_corrigo(server.base_url, model.model_id, prompts, messages, args)
            )
        finally:
            server.stop()

    report = table(runs)
    print("\n" + report)
    save_results(
        "serving",
        {
            "args": vars(args),
            "engine": engine_settings,
            "model": model.model_id,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "runs": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in runs],
            "table": report,
        },
    )


if __name__ == "__main__":
    main()
