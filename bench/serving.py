"""corrigo vs the same vLLM engine driven directly: streamed output tokens/s and TTFT.

Both sides run the same model, the same engine arguments (corrigo's, logits processor
included), the same prompts and the same sampling, one after the other on this machine (never
two engines at once), interleaved: direct, corrigo, corrigo, direct, ... (``--repeats`` each). "direct" drives ``AsyncLLM.generate`` in-process; "corrigo" is
``corrigo serve`` in a subprocess, driven over HTTP with streaming (SSE) by an asyncio + httpx
client, through /v1/completions (same prompt text as direct) and /v1/chat/completions.

    .venv/bin/python -m bench.serving                      # embedded SmolLM2, c = 1, 8, 32
    .venv/bin/python -m bench.serving --requests 64 --max-tokens 128 --concurrency 1 8

Prints a markdown table and appends the run to docs/bench/serving.json (evals/results.py);
``--table docs/bench/serving.json`` prints the latest run's table (the one in docs/benchmarks.md).

Servers already running (each an OpenAI API serving ``--model``; one at a time, never two
engines on one machine at once) are measured the same way, over HTTP only, and compared with the
first one (bench/gpu_check.sh: ``vllm serve`` then corrigo, on a GPU):

    python -m bench.serving --model M --url vllm=http://127.0.0.1:8001 --out vllm.json
    python -m bench.serving --table vllm.json corrigo.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import httpx
import uvloop

from evals.results import append_run, machine, read_runs
from server.launcher import start_server
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "docs" / "bench"

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
    #: Which repeat of an interleaved (ABBA) benchmark this run belongs to.
    repeat: int = 0

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
            runs.append(summarise(DIRECT, c, wall, results))
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
    return await bench_http("corrigo", base_url, model_id, prompts, messages, args)


async def bench_http(
    system: str,
    base_url: str,
    model_id: str,
    prompts,
    messages,
    args,
    extra_body: dict | None = None,
) -> list[Run]:
    """Streamed completions and chat completions against an OpenAI API at ``base_url``, each
    request's body with ``extra_body`` added (e.g. a ``correction``)."""
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def stream(path: str, body: dict) -> tuple[float, int]:
            body = {**body, **(extra_body or {}), "model": model_id, "max_tokens": args.max_tokens}
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
                (f"{system} /v1/completions", completion, prompts),
                (f"{system} /v1/chat/completions", chat, messages),
            ):
                wall, results = await run_pool(c, jobs, one)
                runs.append(summarise(name, c, wall, results))
                print(f"  {name} c={c}: {runs[-1].tokens_per_s:.1f} tok/s", flush=True)
        return runs


def save_results(name: str, result: dict, meta: dict) -> Path:
    """Append a run (``meta`` from :func:`evals.results.machine`, taken before it) to
    docs/bench/NAME.json (or to NAME itself where it ends in .json); earlier runs stay."""
    path = Path(name) if name.endswith(".json") else RESULTS_DIR / f"{name}.json"
    append_run(path, json.loads(json.dumps(result, default=str)), meta)
    return path


DIRECT = "direct AsyncLLM"


def endpoint(system: str) -> str:
    return system.rsplit(" ", 1)[-1]


def vs_direct(runs: list[Run]) -> Callable[[str], str]:
    """Each system against the direct engine at the same concurrency."""
    return lambda system: DIRECT


def vs_first_server(runs: list[Run]) -> Callable[[str], str]:
    """Each system against the first server's on the same endpoint."""
    first = runs[0].system.rsplit(" ", 1)[0]
    return lambda system: f"{first} {endpoint(system)}"


def table(
    runs: list[Run], baseline: Callable[[str], str] | None = None, label: str = "direct"
) -> str:
    """Markdown: every system's runs at each concurrency (tok/s, in the order run), their min /
    median / max, and the medians of throughput and TTFT p50 over ``baseline(system)``'s at the
    same concurrency (default: the direct engine), named ``label`` in the header."""
    baseline = baseline or vs_direct(runs)
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.system, run.concurrency), []).append(run)

    def median(key: tuple[str, int], field: str) -> float:
        return statistics.median(getattr(r, field) for r in groups[key])

    lines = [
        f"| system | concurrency | output tok/s, each run | min / median / max | vs {label} "
        f"| TTFT p50 (s), median | p50 vs {label} |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    order = sorted(groups, key=lambda k: (k[1], baseline(k[0]) != k[0], k[0]))
    for key in order:
        system, c = key
        base = (baseline(system), c)
        tok = [r.tokens_per_s for r in groups[key]]
        ttft = median(key, "ttft_p50_s")
        lines.append(
            f"| {system} | {c} | {', '.join(f'{t:.1f}' for t in tok)} "
            f"| {min(tok):.1f} / {statistics.median(tok):.1f} / {max(tok):.1f} "
            f"| {statistics.median(tok) / median(base, 'tokens_per_s'):.2f}x "
            f"| {ttft:.3f} | {ttft / median(base, 'ttft_p50_s'):.2f}x |"
        )
    return "\n".join(lines)


def load_runs(path: Path) -> list[Run]:
    """The measurements of the latest run in a results file of :func:`save_results`."""
    names = {f.name for f in fields(Run)}
    return [
        Run(**{k: v for k, v in r.items() if k in names})
        for r in read_runs(path)[-1]["measurements"]
    ]


def chat_workload(tokenizer, count: int) -> tuple[list[str], list[list[dict]]]:
    """``count`` story requests: as chat messages, and as the prompts the chat template makes."""
    messages = [
        [
            {
                "role": "user",
                "content": f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i}).",
            }
        ]
        for i in range(count)
    ]
    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]
    return prompts, messages


def bench_running(args) -> None:
    """``--url``: measure servers that are already running, one after another, over HTTP."""
    from transformers import AutoTokenizer

    prompts, messages = chat_workload(AutoTokenizer.from_pretrained(args.model), args.requests)
    runs: list[Run] = []
    meta = machine()
    for spec in args.url:
        system, _, url = spec.partition("=")
        model_id = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]["id"]
        print(f"{system} ({url}, model {model_id})", flush=True)
        runs += uvloop.run(bench_http(system, url, model_id, prompts, messages, args))
    report = table(runs, vs_first_server(runs), runs[0].system.rsplit(" ", 1)[0])
    print("\n" + report)
    result = {
        "args": vars(args),
        "model": args.model,
        "measurements": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in runs],
    }
    save_results(args.out or "serving-http", result, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--compiled", action="store_true", help="let vLLM compile (default: eager)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per side, interleaved (ABBA); default 2"
    )
    parser.add_argument(
        "--url",
        action="append",
        metavar="NAME=URL",
        help="measure this running server instead (repeatable; needs --model, its folder)",
    )
    parser.add_argument(
        "--out",
        help="with --url: results file, NAME.json or a name under docs/bench/ (default serving-http)",
    )
    parser.add_argument(
        "--table", nargs="+", type=Path, metavar="JSON", help="print the table of saved results"
    )
    args = parser.parse_args()
    if args.table:
        runs = [r for path in args.table for r in load_runs(path)]
        if any(r.system == DIRECT for r in runs):
            print(table(runs))
        else:
            print(table(runs, vs_first_server(runs), runs[0].system.rsplit(" ", 1)[0]))
        return
    if args.url:
        if not args.model:
            parser.error("--url needs --model (the served model's folder: its chat template)")
        bench_running(args)
        return

    from transformers import AutoTokenizer

    from adapters.engine import resolve_model

    meta = machine()
    model = resolve_model(args.model, None)
    engine_settings = {"max_model_len": 2048, "enforce_eager": not args.compiled}
    prompts, messages = chat_workload(AutoTokenizer.from_pretrained(model.path), args.requests)

    def direct() -> list[Run]:
        print(f"{DIRECT} ({model.model_id}, {engine_settings})", flush=True)
        # uvloop on both sides, as in uvicorn (and so in corrigo and `vllm serve`).
        return uvloop.run(bench_direct(model, engine_settings, prompts, args))

    def corrigo() -> list[Run]:
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
                return uvloop.run(
                    bench_corrigo(server.base_url, model.model_id, prompts, messages, args)
                )
            finally:
                server.stop()

    # Interleaved, one engine at a time: direct, corrigo, corrigo, direct, ... so that a
    # drift in the machine's speed (other load) does not favour one side.
    runs: list[Run] = []
    sides = [direct, corrigo]
    for repeat in range(args.repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            runs += [replace(run, repeat=repeat) for run in side()]

    report = table(runs)
    print("\n" + report)
    save_results(
        "serving",
        {
            "args": vars(args),
            "engine": engine_settings,
            "model": model.model_id,
            "measurements": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in runs],
        },
        meta,
    )


if __name__ == "__main__":
    main()
