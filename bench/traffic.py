"""Realistic traffic for proxy-tuning: Poisson arrivals, ragged lengths, plain and corrected
requests mixed, against the compute bound.

Requests (fixed seed): prompts of uniform 16-512 random token ids (``/v1/completions`` with a
token-id prompt), outputs of uniform 8-256 tokens (greedy, ``ignore_eos``), arriving as a
Poisson process at ``--rate-per-slot`` x the concurrency cap requests/s; at most ``c`` are in
flight (the rest wait client-side, as behind a gateway). Two workloads over the same requests:

- ``plain``: none corrected;
- ``mixed``: a seeded half of them proxy-tuned (``expert`` / ``anti``, alpha 1).

Runs alternate ABBA (plain, mixed, mixed, plain, ...) on one server per set-up:

- ``equal``: base, expert and anti-expert all the embedded SmolLM2-135M;
- ``small_pair``: base SmolLM2-135M, expert and anti-expert its first 4 decoder layers plus
  final norm and tied embeddings/head, the shape evals/proxy_tuning.py builds
  (adapters/proxy_training.py ``cut_layers``); cut, not trained: the cost of a forward does
  not depend on the weights' values.

Compute bound, fixed before any run: a model's FLOPs per token ``F = 2 (non-embedding
parameters + vocab x hidden)`` (the matmuls, the head's included; attention's
length-dependent FLOPs left out). A workload whose corrected requests carry a fraction ``f``
of all tokens (prompt and output) has the bound ``plain tok/s x F_base / (F_base + f
(F_expert + F_anti))``, plain tok/s being the median of the plain runs at the same
concurrency.

    .venv/bin/python -m bench.traffic --setups equal small_pair --concurrency 1 8 32

Each run is appended to docs/bench/traffic.json (or ``--output``; evals/results.py: earlier
runs stay): throughput, TTFT and inter-token latency p50/p99 of plain and corrected requests,
the load average around each measurement, the commit, the CPU's bf16 flags. Run it under the
engine lock (flock /tmp/corrigo-engine.lock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from adapters.aux_memory import model_shape
from adapters.engine import resolve_model
from adapters.proxy_training import cut_layers
from evals.results import load_average, machine, read_runs, write_runs
from server.launcher import start_server
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "traffic.json"
CORRECTION = {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": 1.0}}
SETUPS = ("equal", "small_pair")
#: Decoder layers the small pair keeps (evals/proxy_tuning.py's default ``--anti-layers``).
PAIR_LAYERS = 4


@dataclass(frozen=True)
class Request:
    arrival: float  # seconds after the run's start
    prompt: list[int]
    max_tokens: int
    corrected: bool


@dataclass
class Outcome:
    corrected: bool
    prompt_tokens: int
    tokens: int = 0
    ttft: float = 0.0
    gaps: list[float] = field(default_factory=list)
    done: float = 0.0


def requests(
    count: int, rate: float, seed: int, vocab: int, corrected_share: float = 0.5
) -> list[Request]:
    """``count`` requests, Poisson arrivals at ``rate``/s; a seeded ``corrected_share`` of
    them marked corrected."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for _ in range(count):
        at += rng.expovariate(rate)
        prompt = [rng.randrange(1000, vocab) for _ in range(rng.randint(16, 512))]
        out.append(Request(at, prompt, rng.randint(8, 256), rng.random() < corrected_share))
    return out


def flops_per_token(path: str) -> int:
    """``2 (non-embedding parameters + vocab x hidden)`` of the model at ``path``."""
    shape = model_shape(path)
    config = AutoConfig.from_pretrained(path)
    embeddings = shape.vocab * shape.hidden
    untied = 0 if getattr(config, "tie_word_embeddings", False) else embeddings
    non_embedding = shape.parameters - embeddings - untied
    return 2 * (non_embedding + embeddings)


async def one(
    client, model: str, request: Request, correction: dict | None, start: float
) -> Outcome:
    body = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if correction is not None:
        body["correction"] = correction
    outcome = Outcome(correction is not None, len(request.prompt))
    sent = time.perf_counter()
    last = None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                outcome.tokens = chunk["usage"]["completion_tokens"]
            if not chunk.get("choices"):
                continue
            now = time.perf_counter()
            if last is None:
                outcome.ttft = now - sent
            else:
                outcome.gaps.append(now - last)
            last = now
    outcome.done = time.perf_counter() - start
    if outcome.tokens != request.max_tokens:
        raise RuntimeError(f"got {outcome.tokens} tokens of {request.max_tokens}")
    return outcome


async def run(
    base_url: str,
    model: str,
    reqs: list[Request],
    mixed: bool,
    cap: int,
    correction: dict = CORRECTION,
) -> dict:
    """One run of ``reqs``; with ``mixed``, those marked corrected carry ``correction``."""
    gate = asyncio.Semaphore(cap)
    limits = httpx.Limits(max_connections=cap + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=1800, limits=limits) as client:
        start = time.perf_counter()

        async def scheduled(request: Request) -> Outcome:
            await asyncio.sleep(max(0.0, request.arrival - (time.perf_counter() - start)))
            async with gate:
                chosen = correction if mixed and request.corrected else None
                return await one(client, model, request, chosen, start)

        outcomes = await asyncio.gather(*(scheduled(r) for r in reqs))
    wall = max(o.done for o in outcomes) - reqs[0].arrival
    result = {"wall_s": wall, "output_tok_s": sum(o.tokens for o in outcomes) / wall}
    total = sum(o.prompt_tokens + o.tokens for o in outcomes)
    corrected = [o for o in outcomes if o.corrected]
    result["corrected_token_share"] = sum(o.prompt_tokens + o.tokens for o in corrected) / total
    for kind, group in (
        ("plain", [o for o in outcomes if not o.corrected]),
        ("corrected", corrected),
    ):
        if not group:
            continue
        gaps = sorted(g for o in group for g in o.gaps)
        ttfts = sorted(o.ttft for o in group)
        result[kind] = {
            "requests": len(group),
            "ttft_p50_s": _pct(ttfts, 0.50),
            "ttft_p99_s": _pct(ttfts, 0.99),
            "itl_p50_ms": _pct(gaps, 0.50) * 1e3,
            "itl_p99_ms": _pct(gaps, 0.99) * 1e3,
        }
    return result


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def build_pair(base: str, folder: Path) -> str:
    """SmolLM2's first :data:`PAIR_LAYERS` layers, saved with its tokenizer, at ``folder``."""
    if (folder / "config.json").exists():
        return str(folder)
    model = AutoModelForCausalLM.from_pretrained(base)
    cut_layers(model, PAIR_LAYERS).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return str(folder)


def server_sections(model, max_rows: int) -> dict:
    """The config sections of a benchmark server for ``model`` (eager, up to ``max_rows``
    rows, a fixed KV cache), to which a benchmark adds its corrections' sections."""
    return {
        "model": {"path": model.path, "served_model_name": model.model_id},
        "engine": {
            "max_model_len": 1024,
            "enforce_eager": True,
            "max_num_seqs": max_rows,
            "kv_cache_memory_bytes": 2 << 30,
        },
        "server": {"log_level": "warning"},
        "limits": {"max_running_requests": max_rows},
    }


def bench_setup(setup: str, args, work: Path, meta: dict, records: list[dict]) -> None:
    model = resolve_model(None, None)
    aux = model.path if setup == "equal" else build_pair(model.path, work / "pair")
    flops = {"base": flops_per_token(model.path), "aux": flops_per_token(aux)}
    config = write_config(
        work / f"{setup}.toml",
        {
            **server_sections(model, max(args.concurrency)),
            "aux_models.expert": {"path": aux},
            "aux_models.anti": {"path": aux},
        },
    )
    server = start_server(config, work / f"{setup}.log", cwd=REPO)
    try:
        warm = requests(2, 10.0, 0, 40000)
        uvloop.run(run(server.base_url, model.model_id, warm, True, 2))
        for cap in args.concurrency:
            count = args.requests.get(cap, 2 * cap)
            reqs = requests(count, args.rate_per_slot * cap, args.seed + cap, 40000)
            order = ["plain", "mixed"]
            for repeat in range(args.repeats):
                for workload in order if repeat % 2 == 0 else order[::-1]:
                    before = load_average()
                    result = uvloop.run(
                        run(server.base_url, model.model_id, reqs, workload == "mixed", cap)
                    )
                    record = {
                        "setup": setup,
                        "concurrency": cap,
                        "workload": workload,
                        "repeat": repeat,
                        "requests": count,
                        "load_before": before,
                        "load_after": load_average(),
                        "flops_per_token": flops,
                        **result,
                    }
                    records.append(record)
                    print(json.dumps(record), flush=True)
                    _save(meta, records, args.output)
    finally:
        server.stop()


def summary(records: list[dict]) -> list[dict]:
    """Per set-up and concurrency: medians of plain and mixed tok/s, the bound, the ratio."""
    rows = []
    keys = sorted({(r["setup"], r["concurrency"]) for r in records}, key=lambda k: (k[0], k[1]))
    for setup, cap in keys:
        runs = [r for r in records if r["setup"] == setup and r["concurrency"] == cap]
        plain = [r["output_tok_s"] for r in runs if r["workload"] == "plain"]
        mixed = [r for r in runs if r["workload"] == "mixed"]
        if not plain or not mixed:
            continue
        flops = runs[0]["flops_per_token"]
        share = mixed[0]["corrected_token_share"]
        bound = (
            statistics.median(plain) * flops["base"] / (flops["base"] + share * 2 * flops["aux"])
        )
        got = statistics.median(r["output_tok_s"] for r in mixed)
        rows.append(
            {
                "setup": setup,
                "concurrency": cap,
                "plain_tok_s": statistics.median(plain),
                "mixed_tok_s": got,
                "corrected_token_share": share,
                "bound_tok_s": bound,
                "vs_bound": got / bound,
            }
        )
    return rows


def _save(meta: dict, records: list[dict], output: Path) -> None:
    """This run so far, after the file's earlier runs (``meta["earlier"]``, read at the start)."""
    run = {k: v for k, v in meta.items() if k != "earlier"}
    run |= {"load_average_after": load_average(), "records": records, "summary": summary(records)}
    write_runs(output, [*meta["earlier"], run])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests",
        type=lambda s: dict(tuple(map(int, kv.split(":"))) for kv in s.split(",")),
        default={1: 3, 8: 12, 32: 40},
        help="requests per run by concurrency, e.g. 1:3,8:12,32:40 (default 2 x c)",
    )
    parser.add_argument("--rate-per-slot", type=float, default=0.5, help="arrivals/s per slot")
    parser.add_argument("--repeats", type=int, default=2, help="ABBA: plain/mixed pairs")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    meta = {
        **machine(),
        "args": {k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()},
        "earlier": read_runs(args.output),
    }
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.setups:
            bench_setup(setup, args, Path(tmp), meta, records)
    for row in summary(records):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
