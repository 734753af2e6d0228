"""Guarded-unlearning throughput with 10,000 forbidden phrases (``--sizes``) vs no plugin.

One ``corrigo serve`` with one forget set per size, each one entry whose explicit phrases
number that many (random 1-3 word phrases over the tokenizer's words, every surface form in
the trie: up to 10 tokenizations per phrase). Every filtered request carries
``correction.unlearning`` with threshold 0, so the gate opens for all of them; the soft filter
runs too. Greedy, ``ignore_eos``, all streamed through /v1/completions. Runs alternate ABBA
(plain, filtered, filtered, plain, ...), ``--pairs`` pairs per concurrency; each pair's ratio
and their median are appended as a run to docs/bench/unlearning.json with the load before and
after each run. Target (issue 18): filtered (the default request) >= 0.95 x plain. A third
system, the same set with the continuation check's semantic part on (``continuation: true``,
off by default; decoding/unlearning/continuation.py), runs in the same interleaved order
(A B C C B A) to show what that check costs in this traffic; it is not the target's system. Each run also records the unlearning plugin's
own time per engine step (``corrigo_plugin_step_seconds``, measured in the engine process).

    flock /tmp/corrigo-engine.lock .venv/bin/python -m bench.unlearning   # c = 1, 8; 5 ABC-CBA rounds
    .venv/bin/python -m bench.unlearning --soft-only       # the soft filter's two strategies

``--gate-cache-pieces N`` serves with the gate's piece cache on (``[limits]
gate_cache_pieces``, off by default; decoding/unlearning/piece_cache.py): the runs repeat
their requests, so after a system's first run every piece is read from the cache.

``--soft-only`` measures, in this process with one torch thread (as in the engine process),
the two ways to run the soft filter: a cached table of every vocabulary token's MiniLM
embedding (a constant penalty vector per request; what corrigo ships) against top-k candidate
checks with a per-token embedding cache.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench.serving import TOPICS, Run, run_pool, stream_request, summarise
from evals.results import append_run, arguments, load_average, machine
from server.launcher import start_server
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "unlearning.json"
#: Throughput with the filters, relative to plain (issue 18).
TARGET = 0.95


def phrases(tokenizer, count: int, seed: int = 0) -> list[str]:
    words = sorted(
        {
            t.strip().lower()
            for t in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            if t.strip().isalpha() and len(t.strip()) >= 4
        }
    )
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        out.setdefault(" ".join(rng.sample(words, rng.randint(1, 3))), None)
    return list(out)


#: Label of the diagnostic system: the continuation check's semantic part on (off by default;
#: run 1 of docs/bench/unlearning.json predates that default and ran ", continuation off").
DIAGNOSTIC = ", continuation on"


def story_prompts(tokenizer, count: int) -> list[str]:
    """``count`` chat-formatted requests for a short story, cycling through the topics."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(count)
    ]


def correction_of(system: str | None) -> dict | None:
    """The request's ``correction`` for a system label (None / "no plugin": plain)."""
    if system is None or system == "no plugin":
        return None
    forget_set = system.removesuffix(DIAGNOSTIC)
    unlearning = {"forget_set": forget_set, "threshold": 0.0}
    if system.endswith(DIAGNOSTIC):
        unlearning["continuation"] = True
    return {"unlearning": unlearning}


def plugin_seconds(base_url: str) -> tuple[float, float]:
    """Seconds and steps the unlearning plugin has taken so far inside the engine's step."""
    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        for sample in family.samples:
            suffix = sample.name.removeprefix("corrigo_plugin_step_seconds")
            if suffix in totals and sample.labels.get("plugin") == "unlearning":
                totals[suffix] = sample.value
    return totals["_sum"], totals["_count"]


async def warm_up(base_url: str, model_id: str, prompt: str, forget_set: str) -> None:
    """One request through the set: compiles its filters (cached in the engine process) and
    proves that they ran (the gate opened and the plugin took steps)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=900) as client:
        body = {"model": model_id, "prompt": prompt, "max_tokens": 4}
        body["correction"] = correction_of(forget_set)
        report = (await client.post("/v1/completions", json=body)).json()["correction"]
        report = report["unlearning"]
        assert report["gate"]["decision"] == "filter" and report["steps"] > 0, report


async def one_run(base_url, model_id, prompts, concurrency, max_tokens, system) -> Run:
    correction = correction_of(system)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=900, limits=limits) as client:

        async def one(prompt: str) -> tuple[float, int]:
            body = {"model": model_id, "prompt": prompt, "max_tokens": max_tokens}
            if correction is not None:
                body["correction"] = correction
            return await stream_request(client, "/v1/completions", body)

        wall, results = await run_pool(concurrency, prompts, one)
    return summarise(system or "no plugin", concurrency, wall, results)


def soft_strategies(tokenizer, sample: int = 2048, rows: int = 8, steps: int = 50) -> str:
    """Time both soft-filter strategies on one torch thread (as in the engine process)."""
    from decoding.unlearning.embeddings import minilm
    from decoding.unlearning.semantic import penalty, similarity

    torch.set_num_threads(1)
    embedder = minilm()
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    words = embedder.encode(["paris", "eiffel", "tower"])

    # Vocabulary table: embed every token text once, then one [vocab] vector per request.
    started = time.perf_counter()
    part = embedder.encode([t.strip() or "." for t in texts[:sample]])
    table_s = (time.perf_counter() - started) * vocab / sample
    table = part.repeat(vocab // sample + 1, 1)[:vocab]  # a stand-in of the right shape
    started = time.perf_counter()
    vector = penalty(similarity(table, words), 0.7, 1.0)
    join_ms = (time.perf_counter() - started) * 1e3
    logits = torch.randn(rows, vocab)
    started = time.perf_counter()
    for _ in range(steps):
        logits -= vector
    table_step_ms = (time.perf_counter() - started) * 1e3 / steps

    # Top-k: each step, embed the top-8 candidates' texts (cached per token) and compare.
    cache: dict[int, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    cold, warm = [], []
    for step in range(steps):
        logits = torch.randn(rows, vocab, generator=gen) * 3
        started = time.perf_counter()
        top = torch.topk(logits, 8, dim=-1).indices
        missing = [t for t in dict.fromkeys(top.reshape(-1).tolist()) if t not in cache]
        if missing:
            for t, e in zip(missing, embedder.encode([texts[t] for t in missing]), strict=True):
                cache[t] = e
        emb = torch.stack([cache[t] for t in top.reshape(-1).tolist()]).reshape(rows, 8, -1)
        sims = (emb @ words.T).amax(dim=-1).clamp_min(0)
        logits.scatter_add_(1, top, -torch.where(sims >= 0.7, torch.inf, sims))
        (cold if step < 5 else warm).append((time.perf_counter() - started) * 1e3)
    return "\n".join(
        [
            "| strategy | one-off cost | per request join | per step (8 rows) |",
            "|---|---:|---:|---:|",
            f"| vocabulary table | {table_s:.0f} s to embed {vocab} token texts "
            f"(extrapolated from {sample}) | {join_ms:.1f} ms | {table_step_ms:.3f} ms |",
            f"| top-8 candidates, cached | none | 0 | {sum(cold) / len(cold):.1f} ms "
            f"(first 5 steps), {sum(warm) / len(warm):.1f} ms (later; random logits, so "
            "mostly cache misses) |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests",
        type=lambda s: dict(tuple(map(int, kv.split(":"))) for kv in s.split(",")),
        default={1: 4, 8: 16},
        help="requests per run by concurrency, e.g. 1:4,8:16 (default 2 x c)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000], help="phrases per set")
    parser.add_argument("--pairs", type=int, default=5, help="ABBA: plain/unlearning pairs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--soft-only", action="store_true")
    parser.add_argument(
        "--gate-cache-pieces",
        type=int,
        default=0,
        help="the server's [limits] gate_cache_pieces (default 0: off, the server's default)",
    )
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from adapters.engine import resolve_model

    model = resolve_model(None, None)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    if args.soft_only:
        print(soft_strategies(tokenizer))
        return
    prompts = story_prompts(tokenizer, max(args.requests.values(), default=16))
    meta = machine()
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for size in args.sizes:
            path = Path(tmp) / f"phrases{size}.jsonl"
            entry = {
                "question": "Write a short story.",
                "answer": "A story about a city.",
                "phrases": phrases(tokenizer, size),
            }
            path.write_text(json.dumps(entry) + "\n")
            path.chmod(0o600)  # corrigo refuses forget sets other users can read
            # The requests' threshold 0 (the gate always opens) and the report's counts.
            sets[f"forget_sets.p{size}"] = {
                "path": str(path),
                "threshold": 0.0,
                "report_detail": True,
            }
        config = write_config(
            Path(tmp) / "bench.toml",
            {
                "model": {"path": model.path, "served_model_name": model.model_id},
                "engine": {"max_model_len": 2048, "enforce_eager": True},
                "server": {"log_level": "warning"},
                "limits": {"gate_cache_pieces": args.gate_cache_pieces},
                **sets,
            },
        )
        server = start_server(config, Path(tmp) / "server.log")
        systems = [None]
        for size in args.sizes:
            systems += [f"p{size}", f"p{size}{DIAGNOSTIC}"]
        try:
            for forget_set in systems[1:]:
                uvloop.run(warm_up(server.base_url, model.model_id, prompts[0], forget_set))
            for c in args.concurrency:
                jobs = prompts[: args.requests.get(c, 2 * c)]
                uvloop.run(one_run(server.base_url, model.model_id, jobs[:c], c, 4, None))
                for pair in range(args.pairs):
                    for forget_set in systems if pair % 2 == 0 else systems[::-1]:
                        before = load_average()
                        seconds, steps = plugin_seconds(server.base_url)
                        run = uvloop.run(
                            one_run(
                                server.base_url,
                                model.model_id,
                                jobs,
                                c,
                                args.max_tokens,
                                forget_set,
                            )
                        )
                        seconds_after, steps_after = plugin_seconds(server.base_url)
                        steps_run = steps_after - steps
                        records.append(
                            {
                                **run.__dict__,
                                "tokens_per_s": run.tokens_per_s,
                                "pair": pair,
                                "load_before": before,
                                "load_after": load_average(),
                                "plugin_steps": steps_run,
                                "plugin_ms_per_step": (
                                    1e3 * (seconds_after - seconds) / steps_run
                                    if steps_run
                                    else 0.0
                                ),
                            }
                        )
                        print(f"  {run.system} c={c} pair {pair}: {run.tokens_per_s:.1f} tok/s")
        finally:
            server.stop()

    summary = []
    for c in args.concurrency:
        for forget_set in systems[1:]:
            ratios = []
            for pair in range(args.pairs):
                tok = {
                    r["system"]: r["tokens_per_s"]
                    for r in records
                    if r["concurrency"] == c and r["pair"] == pair
                }
                ratios.append(tok[forget_set] / tok["no plugin"])
            target = not forget_set.endswith(DIAGNOSTIC)  # the other is diagnostic
            summary.append(
                {
                    "system": forget_set,
                    "concurrency": c,
                    "target": target,
                    "vs_plain_per_pair": ratios,
                    "vs_plain": statistics.median(ratios),
                    "met": statistics.median(ratios) >= TARGET if target else None,
                    "plugin_ms_per_step": statistics.median(
                        r["plugin_ms_per_step"]
                        for r in records
                        if r["concurrency"] == c and r["system"] == forget_set
                    ),
                }
            )
            print(summary[-1])
    append_run(
        args.output,
        {
            "args": arguments(args),
            "records": records,
            "summary": summary,
        },
        meta,
    )


if __name__ == "__main__":
    main()
