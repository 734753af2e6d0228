"""Proxy-tuning throughput: corrigo proxy-tuned vs plain, and vs the reference loop.

The reference loop is how the authors' code runs proxy-tuning: per request, the base, expert
and anti-expert transformers models are stepped one after another, batch 1, each with its own
KV cache, and requests are served one at a time. corrigo runs the base in vLLM and the two
auxiliary models batched across all proxy-tuned rows inside the engine (decoding/aux/runner.py).

By default all three models are the embedded SmolLM2-135M (the expert and anti-expert are two
separately loaded copies), so the model FLOP ratio of a proxy-tuned step to a plain one is 3 and
the compute bound is plain throughput / 3.

    .venv/bin/python -m bench.proxy_tuning                 # c = 1, 8; 16 requests x 32 tokens
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import torch
import uvloop

from bench.serving import TOPICS, Run, run_pool, save_results, stream_request, summarise
from evals.results import machine
from server.launcher import start_server
from server.toml_writer import write_config


async def bench_server(base_url: str, model_id: str, prompts, args, correction) -> list[Run]:
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=900, limits=limits) as client:

        async def one(prompt: str) -> tuple[float, int]:
            body = {"model": model_id, "prompt": prompt, "max_tokens": args.max_tokens}
            if correction is not None:
                body["correction"] = correction
            return await stream_request(client, "/v1/completions", body)

        name = "corrigo proxy-tuned" if correction else "corrigo plain"
        await one(prompts[0])
        runs = []
        for c in args.concurrency:
            wall, results = await run_pool(c, prompts, one)
            runs.append(summarise(name, c, wall, results))
            print(f"  {name} c={c}: {runs[-1].tokens_per_s:.1f} tok/s", flush=True)
        return runs


def bench_reference(paths: dict[str, str], prompts, args, tokenizer) -> Run:
    """The authors' loop: three HF models, one after another, batch 1, one request at a time."""
    from transformers import AutoModelForCausalLM, DynamicCache

    models = {
        k: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()
        for k, p in paths.items()
    }

    @torch.inference_mode()
    def one(prompt: str) -> tuple[float, int]:
        started = time.perf_counter()
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        caches = {k: DynamicCache(config=m.config) for k, m in models.items()}
        ttft, tokens = None, 0
        for _ in range(args.max_tokens):
            logits = {
                k: m(input_ids=ids, past_key_values=caches[k], use_cache=True).logits[0, -1]
                for k, m in models.items()
            }
            scores = logits["base"] + (logits["expert"] - logits["anti"])[: logits["base"].shape[0]]
            ids = scores.argmax().view(1, 1)
            tokens += 1
            ttft = ttft or time.perf_counter() - started
        return ttft, tokens

    one(prompts[0])
    started = time.perf_counter()
    results = [one(p) for p in prompts]
    run = summarise(
        "reference loop (3 HF models, sequential)", 1, time.perf_counter() - started, results
    )
    print(
        f"  reference: {run.tokens_per_s:.1f} tok/s (torch threads: {torch.get_num_threads()})",
        flush=True,
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    meta = machine()

    from transformers import AutoTokenizer

    from adapters.engine import resolve_model

    model = resolve_model(None, None)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    prompts = [
        tokenizer.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i}).",
                }
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(args.requests)
    ]
    correction = {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": 1.0}}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(
            Path(tmp) / "bench.toml",
            {
                "model": {"path": model.path, "served_model_name": model.model_id},
                # Rows beyond the highest concurrency would only size the auxiliary models'
                # KV caches (docs/deployment.md, "Memory budgeting for auxiliary models").
                "engine": {
                    "max_model_len": 2048,
                    "enforce_eager": True,
                    "max_num_seqs": max(args.concurrency),
                },
                "server": {"log_level": "warning"},
                "aux_models.expert": {"path": model.path},
                "aux_models.anti": {"path": model.path},
            },
        )
        server = start_server(config, Path(tmp) / "server.log")
        try:
            runs = uvloop.run(bench_server(server.base_url, model.model_id, prompts, args, None))
            runs += uvloop.run(
                bench_server(server.base_url, model.model_id, prompts, args, correction)
            )
        finally:
            server.stop()
    reference = bench_reference(
        {"base": model.path, "expert": model.path, "anti": model.path}, prompts, args, tokenizer
    )

    plain = {r.concurrency: r.tokens_per_s for r in runs if r.system == "corrigo plain"}
    lines = [
        "| system | concurrency | output tok/s | vs reference loop | vs compute bound (plain / 3) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in [*runs, reference]:
        bound = plain[max(plain)] / 3 if r.concurrency not in plain else plain[r.concurrency] / 3
        lines.append(
            f"| {r.system} | {r.concurrency} | {r.tokens_per_s:.1f} | "
            f"{r.tokens_per_s / reference.tokens_per_s:.2f}x | {r.tokens_per_s / bound:.2f}x |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    save_results(
        "proxy-tuning",
        {
            "args": vars(args),
            "table": table,
            "measurements": [r.__dict__ for r in [*runs, reference]],
        },
        meta,
    )


if __name__ == "__main__":
    main()
